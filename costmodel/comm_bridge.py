"""Links between the devices of a layout, and collective times over them.

Uses costmodel.comm (alpha-beta ring/tree/hierarchical models) when available; a calibrated
device efficiency's own collective fit wins for intra-node groups it covers.
"""
from __future__ import annotations

from dataclasses import dataclass

from .specs import AcceleratorSpec, NodeSpec

# Fraction of nominal link bandwidth NCCL reaches on large messages (nccl-tests busbw on
# H100/H200 NVLink4: ~ 360-370 of 450 GB/s, NVIDIA NCCL performance notes); used only if
# costmodel.comm is unavailable.
LINK_EFFICIENCY = 0.8


@dataclass
class Links:
    intra_bw: float  # per device per direction, bytes/s
    intra_lat: float
    inter_bw: float
    inter_lat: float
    devices_per_node: int
    node: NodeSpec | None
    spec: AcceleratorSpec
    eff: object

    @classmethod
    def from_specs(cls, spec: AcceleratorSpec, node: NodeSpec | None, eff) -> "Links":
        if node is not None:
            intra_bw, intra_lat = node.scale_up.bandwidth_bytes_per_s, node.scale_up.latency_s
            so = node.scale_out
            inter_bw = so.bandwidth_per_device_bytes_per_s if so else 12.5e9
            inter_lat = so.latency_s if so else 10e-6
            dpn = node.devices_per_node
        else:
            su = spec.scale_up
            intra_bw = su.bandwidth_bytes_per_s if su else (spec.host_link.bandwidth_bytes_per_s if spec.host_link else 16e9)
            intra_lat = su.latency_s if su else 5e-6
            inter_bw, inter_lat = 50e9, 5e-6  # 400 Gb/s NIC per device when no node is named
            dpn = 8
        return cls(intra_bw, intra_lat, inter_bw, inter_lat, dpn, node, spec, eff)

    def dp_ranks_per_node(self, par) -> int:
        """Ranks of one data-parallel group inside a node: model-parallel ranks are packed
        first (Megatron's rank order tp -> cp -> dp -> pp)."""
        return max(1, min(par.dp * par.cp, self.devices_per_node // max(1, par.tp * par.cp)))

    def dp_intra(self, par) -> bool:
        return par.tp * par.pp * par.dp * par.cp <= self.devices_per_node

    def pp_crosses_node(self, par) -> bool:
        return par.tp * par.pp > self.devices_per_node or par.tp * par.dp * par.cp >= self.devices_per_node

    def collective_time_s(self, op: str, nbytes: float, world: int, intra: bool = True, per_node: int | None = None) -> float:
        if world <= 1 or nbytes <= 0:
            return 0.0
        if intra and world <= self.devices_per_node and hasattr(self.eff, "collective_time_s"):
            t = self.eff.collective_time_s(op, nbytes, world)
            if t is not None:
                return t
        try:
            from . import comm  # noqa: F401
            t = _comm_time(op, nbytes, world, self, intra, per_node)
            if t is not None:
                return t
        except ImportError:
            pass
        return _ring_time(op, nbytes, world, self, intra)

    def p2p_time_s(self, nbytes: float, crosses_node: bool) -> float:
        bw = (self.inter_bw if crosses_node else self.intra_bw) * LINK_EFFICIENCY
        lat = self.inter_lat if crosses_node else self.intra_lat
        return lat + nbytes / bw


def _ring_time(op: str, nbytes: float, n: int, links: Links, intra: bool) -> float:
    """Ring collectives (Thakur et al. 2005; nccl-tests PERFORMANCE.md bus-bandwidth factors):
    all-reduce moves 2(n-1)/n of the buffer per device, all-gather / reduce-scatter / all-to-all
    (n-1)/n. Across nodes the slowest link (the NIC) bounds a flat ring; a hierarchical
    reduce-scatter inside the node first divides the inter-node volume by devices per node."""
    factor = {"all_reduce": 2.0, "all_gather": 1.0, "reduce_scatter": 1.0, "all_to_all": 1.0, "broadcast": 1.0}.get(op, 1.0)
    steps = factor * (n - 1)
    if intra or n <= links.devices_per_node:
        bw, lat = links.intra_bw * LINK_EFFICIENCY, links.intra_lat
        return steps * lat + factor * (n - 1) / n * nbytes / bw
    local = links.devices_per_node
    nodes = n / local
    t_intra = factor * (local - 1) / local * nbytes / (links.intra_bw * LINK_EFFICIENCY) + factor * (local - 1) * links.intra_lat
    t_inter = factor * (nodes - 1) / nodes * nbytes / (links.inter_bw * LINK_EFFICIENCY) + factor * (nodes - 1) * links.inter_lat
    if op == "all_to_all":
        return (n - local) / n * nbytes / (links.inter_bw * LINK_EFFICIENCY) + t_intra
    return t_intra + t_inter


def _comm_time(op, nbytes, world, links: Links, intra: bool, per_node: int | None = None):
    from . import comm

    fn = getattr(comm, "collective_time_s", None)
    group_cls = getattr(comm, "Group", None)
    if fn is None or group_cls is None:
        return None
    try:
        if intra:
            per_node = world
        else:
            per_node = max(1, min(world, per_node or 1))
        group = group_cls(size=world, per_domain=per_node) if _has_field(group_cls, "per_domain") else group_cls(world)
        return float(fn(op, nbytes, group, links.node or links.spec))
    except Exception:  # comm's API differs: fall back to the ring model
        return None


def _has_field(cls, name: str) -> bool:
    return name in getattr(cls, "model_fields", {}) or name in getattr(cls, "__dataclass_fields__", {})
