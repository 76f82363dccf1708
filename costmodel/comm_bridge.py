"""Links between the devices of a layout, and collective times over them.

Every collective and point-to-point time comes from ``costmodel.comm`` (alpha-beta ring, tree and
hierarchical models, fitted on the truth file's NCCL records): a group is ``comm.Group(size,
per_domain)``, so groups that span nodes use the scale-out network with their real ranks per node.
A calibrated device efficiency (``DeviceEfficiency.collective_time_s``) is passed to comm as its
``efficiency``: its large-message bus bandwidth replaces the default achieved fraction for groups
inside one scale-up domain, the per-call overhead stays comm's.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import cluster, comm
from .specs import AcceleratorSpec, NodeSpec

# When no node spec is named: one 400 Gb/s NIC per device (50 GB/s, the NDR InfiniBand of DGX
# H100 / HGX H200 nodes: NVIDIA DGX H100 user guide, 8x ConnectX-7 400 Gb/s) and 8 devices per
# scale-up domain (an HGX baseboard).
DEFAULT_INTER_BYTES_PER_S = 50e9
DEFAULT_INTER_LATENCY_S = 5e-6
DEFAULT_DEVICES_PER_NODE = 8
# A device without NVLink talks to its peers over its host link; 16 GB/s = PCIe 4.0 x16 when the
# spec does not give one (PCI-SIG: 16 GT/s x 16 lanes, 128b/130b).
DEFAULT_HOST_LINK_BYTES_PER_S = 16e9


# Per-call overhead of a collective queued inside a training step, where the host has run ahead
# and the call waits only for its kernel's start: NCCL's base latency of a ring call with the
# Simple protocol, 8.4 us (NCCL src/graph/tuning.cc, baseLat[Ring][Simple]). The 59 us of
# comm.DEFAULT_LAUNCH_OVERHEAD_S is an isolated eager call timed by CUDA events (truth file); the
# host's share of issuing calls in eager PyTorch is in training.py's fitted host time.
QUEUED_LAUNCH_OVERHEAD_S = 8.4e-6
QUEUED_PARAMS = comm.CommParams(launch_overhead_s=QUEUED_LAUNCH_OVERHEAD_S)


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
    torus: tuple[int, ...] = ()  # sides of a torus scale-up domain (TPU ICI), comm.torus_shape

    # comm.CommParams of the calls: isolated calls (the truth file's kernel records) by default;
    # ``from_specs(..., queued=True)`` for calls queued inside a training step (QUEUED_PARAMS).
    params: comm.CommParams = comm.DEFAULT_PARAMS
    # measured scale-out scaling to use where the node spec has none of its own (a framework
    # profile's ``cluster_scaling``: the network it was fitted on)
    fallback_scaling: object = None

    @classmethod
    def from_specs(cls, spec: AcceleratorSpec, node: NodeSpec | None, eff, queued: bool = False) -> "Links":
        links = cls._from_specs(spec, node, eff)
        if queued:
            links.params = QUEUED_PARAMS
        return links

    @classmethod
    def _from_specs(cls, spec: AcceleratorSpec, node: NodeSpec | None, eff) -> "Links":
        if node is not None:
            intra_bw, intra_lat = node.scale_up.bandwidth_bytes_per_s, node.scale_up.latency_s
            so = node.scale_out
            inter_bw = so.bandwidth_per_device_bytes_per_s if so else DEFAULT_INTER_BYTES_PER_S
            inter_lat = so.latency_s if so else DEFAULT_INTER_LATENCY_S
            # the scale-up domain may span hosts (a TPU pod's ICI: 4 chips per host, thousands per
            # torus): collectives see the domain, not the host
            dpn = max(node.devices_per_node, node.scale_up.size)
        else:
            su = spec.scale_up if (spec.scale_up is not None and spec.scale_up.topology != "none") else None
            intra_bw = su.bandwidth_bytes_per_s if su else (
                spec.host_link.bandwidth_bytes_per_s if spec.host_link else DEFAULT_HOST_LINK_BYTES_PER_S)
            intra_lat = su.latency_s if su else DEFAULT_INTER_LATENCY_S
            inter_bw, inter_lat = DEFAULT_INTER_BYTES_PER_S, DEFAULT_INTER_LATENCY_S
            dpn = DEFAULT_DEVICES_PER_NODE
        torus = comm.torus_shape(node.scale_up) if node is not None else ()
        return cls(intra_bw, intra_lat, inter_bw, inter_lat, dpn, node, spec, eff, torus=torus)

    @property
    def comm_links(self) -> comm.Links:
        return comm.Links(intra_bytes_per_s=self.intra_bw, domain_size=self.devices_per_node,
                          intra_latency_s=self.intra_lat, inter_bytes_per_s=self.inter_bw,
                          inter_latency_s=self.inter_lat, name=getattr(self.node or self.spec, "id", ""),
                          torus=self.torus)

    def dp_ranks_per_node(self, par) -> int:
        """Ranks of one data-parallel group inside a node: model-parallel ranks are packed
        first (Megatron's rank order tp -> cp -> dp -> pp)."""
        return max(1, min(par.dp * par.cp, self.devices_per_node // max(1, par.tp * par.cp)))

    def dp_intra(self, par) -> bool:
        return par.tp * par.pp * par.dp * par.cp <= self.devices_per_node

    def pp_crosses_node(self, par) -> bool:
        from .steptime import pp_crosses_node

        return bool(pp_crosses_node(par.pp, par.devices, self.devices_per_node))

    def group(self, world: int, intra: bool = True, per_node: int | None = None) -> comm.Group:
        """``world`` ranks; inside one node (``intra``) or ``per_node`` of them in each node."""
        world = int(world)
        if intra:
            per = min(world, self.devices_per_node)
        else:
            per = max(1, min(world, int(per_node or 1), self.devices_per_node))
        return comm.Group(world, per)

    @property
    def scaling(self):
        """The node's measured scale-out behaviour (specs.ScaleOutScaling), else the fallback, or None."""
        so = getattr(self.node, "scale_out", None) if self.node is not None else None
        return getattr(so, "scaling", None) or self.fallback_scaling

    def _efficiency(self):
        return self.eff if hasattr(self.eff, "collective_time_s") else None

    def collective_time_s(self, op: str, nbytes: float, world: int, intra: bool = True, per_node: int | None = None) -> float:
        """One collective of ``nbytes`` (nccl-tests buffer convention) over ``world`` ranks."""
        if world <= 1 or nbytes <= 0:
            return 0.0
        g = self.group(world, intra, per_node)
        nodes = -(-g.size // max(1, g.per_domain))
        if nodes > 1 and self.scaling is not None:
            # a group across nodes of a cluster whose scaling was measured (costmodel.cluster)
            return self.params.launch_overhead_s + cluster.collective_time_s(
                self.scaling, op, float(nbytes), g.size, nodes, self.inter_bw)
        return comm.collective_time_s(op, float(nbytes), g, self._links_for(nodes, g.per_domain),
                                      efficiency=self._efficiency(), params=self.params)

    def intra_bw_for(self, ranks: int) -> float:
        """Per-device scale-up bandwidth a group with ``ranks`` ranks in one domain gets, by the
        fabric's topology (RCCL behaves as NCCL does, on AMD's topologies):

        - ``full-mesh`` (MI300X: every GPU has one xGMI link to each of the other 7): RCCL runs one
          ring per link, each hop a direct link (AMD ROCm blog "MI300X RCCL and xGMI"), so a group of
          n ranks uses n - 1 of a device's links: (n - 1) / links of the spec's bandwidth.
        - multi-die packages (MI250X, ``package_bandwidth``): a group inside one package uses the
          dies' own links; a ring that leaves the package runs at its slowest hop (``bandwidth``).
        - otherwise (NVSwitch, torus, ring) the domain's bandwidth."""
        ranks = max(1, int(ranks))
        su = self.node.scale_up if self.node is not None else self.spec.scale_up
        topo = getattr(su, "topology", "switch")
        pkg = getattr(su, "package_bandwidth_bytes_per_s", None) if self.node is not None else None
        if pkg and 1 < ranks <= max(1, self.spec.dies_per_package):
            return float(pkg)
        if topo == "full-mesh":
            links = (self.spec.scale_up.links if self.spec.scale_up is not None and self.spec.scale_up.links else
                     max(1, self.devices_per_node - 1))
            return self.intra_bw * min(ranks - 1, links) / links if ranks > 1 else self.intra_bw
        return self.intra_bw

    def _links_for(self, nodes: int, ranks_per_domain: int | None = None) -> comm.Links:
        """The links a group over ``nodes`` nodes sees: past a leaf switch (scale_out.nodes_per_leaf)
        its cross-node bandwidth is the spine's, 1 / oversubscription of the line rate; inside a
        domain, the bandwidth its ``ranks_per_domain`` ranks get from the fabric (intra_bw_for)."""
        cache = self.__dict__.setdefault("_links_cache", {})  # (the fields it reads are never changed)
        hit = cache.get((nodes, ranks_per_domain))
        if hit is None:
            hit = cache[(nodes, ranks_per_domain)] = self._links_for_uncached(nodes, ranks_per_domain)
        return hit

    def _links_for_uncached(self, nodes: int, ranks_per_domain: int | None) -> comm.Links:
        from dataclasses import replace

        links = self.comm_links
        if ranks_per_domain is not None:
            bw = self.intra_bw_for(ranks_per_domain)
            if bw != links.intra_bytes_per_s:
                links = replace(links, intra_bytes_per_s=bw)
        so = getattr(self.node, "scale_out", None) if self.node is not None else None
        if so is not None and so.nodes_per_leaf and nodes > so.nodes_per_leaf and so.oversubscription > 1:
            links = replace(links, inter_bytes_per_s=self.inter_bw / so.oversubscription)
        return links

    def p2p_time_s(self, nbytes: float, crosses_node: bool) -> float:
        """One point-to-point message (comm's send/recv model: launch overhead, one link latency,
        bytes over the direct-copy bandwidth of NVLink or the NIC)."""
        if nbytes <= 0:
            return 0.0
        pair = comm.Group(2, 1 if crosses_node else 2)
        if crosses_node and self.scaling is not None:
            return self.params.launch_overhead_s + cluster.collective_time_s(
                self.scaling, "send_recv", float(nbytes), 2, 2, self.inter_bw)
        return comm.collective_time_s("send_recv", float(nbytes), pair, self._links_for(pair.domains, pair.per_domain),
                                      efficiency=self._efficiency(), params=self.params)
