"""ZeRO-Offload / ZeRO-Infinity: host memory and NVMe per node, and the step time of offloading.

What lives where is costmodel.memory.offload_placement (per device). Here:

- the capacity check: the offloaded bytes of the node's devices against the node's DRAM
  (``dram``) and NVMe (``nvme_drives`` x the drive spec's capacity), with how much it fits or
  does not by (:func:`host_capacity`);
- the time the offload adds to a step (:func:`offload_step_s`): gradients down over PCIe while
  backward runs, DeepSpeed's CPU Adam on the host's cores, optimizer states through NVMe
  overlapped with the CPU step, updated parameters up, and offloaded parameters fetched for every
  forward and backward pass behind the previous layer's compute.

Sources: Ren et al. 2021 (ZeRO-Offload, arXiv:2101.06840) sec. 4 and 5; Rajbhandari et al. 2021
(ZeRO-Infinity, arXiv:2104.07857) sec. 5 and 6.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import frameworks

# DeepSpeed's CPU Adam (deepspeed/ops/csrc/adam/cpu_adam.cpp: AVX-512 / AVX2 loops over tiles,
# OpenMP over the host's cores) is bound by host memory bandwidth: per parameter it reads the fp32
# master, both moments and the gradient and writes master, moments and the compute-dtype copy
# (costmodel.offload.cpu_adam_bytes_per_param). The share of the DRAM peak it reaches lives in the
# DeepSpeed profile (data/frameworks/deepspeed.yaml: cpu_adam_bandwidth_fraction).
_DS = frameworks.builtin_profiles()["deepspeed"]
CPU_ADAM_BANDWIDTH_FRACTION = _DS.value("cpu_adam_bandwidth_fraction")
# Host memory bandwidth per node when the node names no host CPU: two sockets of 8-channel DDR5-4800
# (hardware/cpu-xeon-8480.yaml, 307.2 GB/s each).
DEFAULT_HOST_DRAM_BYTES_PER_S = 2 * 307.2e9


@dataclass
class HostCapacity:
    """Offloaded bytes per node against the node's host memory and NVMe."""

    node: str | None  # the node spec whose capacity is checked
    node_assumed: bool  # no node was given: the first shipped node with the device
    devices_on_node: int
    host_bytes: float  # offloaded to host DRAM, all devices of one node
    host_capacity_bytes: float | None
    nvme_bytes: float
    nvme_capacity_bytes: float | None
    host_fits: bool
    nvme_fits: bool

    @property
    def fits(self) -> bool:
        return self.host_fits and self.nvme_fits

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fits"] = self.fits
        # capacity minus what is offloaded: negative = over by that much (None: no capacity known)
        d["host_spare_bytes"] = None if self.host_capacity_bytes is None else self.host_capacity_bytes - self.host_bytes
        d["nvme_spare_bytes"] = None if self.nvme_capacity_bytes is None else self.nvme_capacity_bytes - self.nvme_bytes
        return d

    def lines(self) -> list[str]:
        """One line per tier in use: what it holds against its capacity, and by how much it fits
        or not."""
        from .units import fmt_bytes

        where = f"node {self.node}" + (" (assumed: no node given)" if self.node_assumed else "") if self.node else "no node spec"
        out = []
        for tier, used, cap in (("host DRAM", self.host_bytes, self.host_capacity_bytes),
                                ("NVMe", self.nvme_bytes, self.nvme_capacity_bytes)):
            if not used:
                continue
            head = f"{tier}: {fmt_bytes(used)} offloaded per node ({self.devices_on_node} devices)"
            if cap is None:
                out.append(f"{head}; {where} gives no {tier} capacity: not checked")
            elif used <= cap:
                out.append(f"{head} of {fmt_bytes(cap)} on {where}: fits with {fmt_bytes(cap - used)} to spare")
            else:
                out.append(f"{head} of {fmt_bytes(cap)} on {where}: does not fit, {fmt_bytes(used - cap)} over")
        return out


def node_for_device(spec, node, lib=None):
    """(node, assumed): the given node, else the first shipped node spec (by id) whose device is
    ``spec``, else (None, False)."""
    if node is not None:
        return node, False
    if lib is None:
        from .specs import load_library

        lib = load_library()
    from .specs import NodeSpec

    for sid in lib.ids():
        s = lib.specs[sid]
        if isinstance(s, NodeSpec) and s.device == spec.id:
            return s, True
    return None, False


def _nvme_drive(node, lib):
    if node is None or not node.nvme or not node.nvme_drives:
        return None
    try:
        return lib.get(node.nvme)
    except Exception:
        return None


def _host_cpu(node, lib):
    if node is None or not node.host_cpu:
        return None
    try:
        return lib.get(node.host_cpu)
    except Exception:
        return None


def host_capacity(off_cpu_per_device: float, off_nvme_per_device: float, devices: int, spec, node,
                  lib=None) -> HostCapacity:
    """The node's host DRAM and NVMe against the offloaded bytes of the devices it holds (each device
    offloads its own shard: ``off_*_per_device`` x min(devices, devices_per_node))."""
    if lib is None:
        from .specs import load_library

        lib = load_library()
    n, assumed = node_for_device(spec, node, lib)
    per_node = min(devices, n.devices_per_node) if n is not None else devices
    host = off_cpu_per_device * per_node
    nvme = off_nvme_per_device * per_node
    host_cap = float(n.dram_bytes) if n is not None and n.dram_bytes else None
    drive = _nvme_drive(n, lib)
    nvme_cap = float(drive.capacity_bytes * n.nvme_drives) if drive is not None else None
    return HostCapacity(node=n.id if n is not None else None, node_assumed=assumed, devices_on_node=per_node,
                        host_bytes=host, host_capacity_bytes=host_cap, nvme_bytes=nvme, nvme_capacity_bytes=nvme_cap,
                        host_fits=not host or host_cap is None or host <= host_cap,
                        nvme_fits=not nvme or nvme_cap is None or nvme <= nvme_cap)


def host_dram_bytes_per_s(node, lib) -> float:
    """Peak DRAM bandwidth of a node's host: its CPU sockets x the CPU spec's memory bandwidth."""
    cpu = _host_cpu(node, lib)
    if cpu is None:
        return DEFAULT_HOST_DRAM_BYTES_PER_S
    return float(cpu.memory.bandwidth_bytes_per_s) * max(1, node.host_cpus)


def nvme_bytes_per_s(node, lib) -> tuple[float, float] | None:
    """(read, write) bandwidth of all of a node's drives together (ZeRO-Infinity streams from the
    drives in parallel: sec. 6.3, DeepSpeed's async I/O library), or None without drives."""
    drive = _nvme_drive(node, lib)
    if drive is None:
        return None
    return float(drive.read_bytes_per_s) * node.nvme_drives, float(drive.write_bytes_per_s) * node.nvme_drives


def cpu_adam_bytes_per_param(st) -> float:
    """Host-memory bytes CPU Adam moves per parameter: reads fp32 master, m, v and the gradient;
    writes master, m, v and the compute-dtype parameter copy sent back to the GPU
    (Ren et al. 2021 fig. 2: g16 in, p16 out; p32, m32, v32 read and written)."""
    master = st.master if st.master else 4.0  # a separate fp32 copy on the host either way
    return 2.0 * (master + st.optimizer) + st.grads + st.weights


def cpu_adam_s(params_on_node, st, node, lib, fraction: float = CPU_ADAM_BANDWIDTH_FRACTION):
    """Seconds of one CPU Adam step over ``params_on_node`` parameters (every device's shard on
    the node) on its host, memory-bandwidth bound (vectorised)."""
    return np.asarray(params_on_node, dtype=float) * cpu_adam_bytes_per_param(st) / (host_dram_bytes_per_s(node, lib) * fraction)


# Megatron-core's hybrid optimizer moves its shard as fp32 both ways: the reduced gradients down
# (decoupled_grad copied to the CPU parameter's dtype) and the updated parameters up.
HYBRID_SHARD_BYTES_PER_PARAM = 4.0


def offload_step_s(st, shard_params, per_node, opt_tier: str, params_tier: str, *, h2d: float, d2h: float,
                   backward_s, compute_s, passes, node, lib, off_opt=None, hybrid: bool = False):
    """(exposed seconds, parts) that offloading adds to one step, per device; vectorised over
    layouts where the arguments are arrays (``off_opt``: bool or array, default ``opt_tier !=
    'none'``).

    Optimizer offload (ZeRO-Offload sec. 4.1-4.2): the gradient shard goes down over PCIe bucket by
    bucket while backward runs, so only what outlasts backward is exposed; the CPU Adam step
    (cpu_adam_s, the node's devices' shards on the node's cores) follows; then the updated
    compute-dtype parameters come up (none when the parameters themselves live off the GPU). With
    the optimizer on NVMe (ZeRO-Infinity sec. 6.3) its states are read and written back through
    the node's drives, pipelined with the CPU step: the slower of the two counts. The one-step
    delayed update (ZeRO-Offload sec. 4.2, an option) is not modelled.

    Megatron-core's hybrid optimizer (``hybrid``: --optimizer-cpu-offload, HybridDeviceOptimizer.step)
    copies the reduced gradient shard down as fp32 once the backward is done, steps on the host and
    copies the updated fp32 shard back up; without --overlap-cpu-optimizer-d2h-h2d (off by default,
    optimizer_config.py) the three run one after the other, none behind the backward.

    Parameter offload (ZeRO-Infinity sec. 6.1-6.2): the device's parameter shard comes up over PCIe
    (from NVMe through host memory: the slower of PCIe and the device's share of the drives) for
    each of ``passes`` passes (forward, backward, and a recompute forward), each layer prefetched
    while the previous one computes: what outlasts ``compute_s`` is exposed. The all-gather of the
    shards over the GPUs is ZeRO-3's own communication, timed elsewhere."""
    if off_opt is None:
        off_opt = opt_tier != "none"
    shard = np.asarray(shard_params, dtype=float)
    zero = np.zeros_like(shard)
    if hybrid:
        grads_down = HYBRID_SHARD_BYTES_PER_PARAM * shard / d2h
        grads_exposed = grads_down
    else:
        grads_down = st.grads * shard / d2h
        grads_exposed = np.maximum(0.0, grads_down - np.asarray(backward_s, dtype=float))
    adam = cpu_adam_s(shard * per_node, st, node, lib)
    nvme_opt = zero
    bw = nvme_bytes_per_s(node, lib) if (opt_tier == "nvme" or params_tier == "nvme") else None
    if opt_tier == "nvme":
        rd, wr = bw if bw is not None else (7e9, 3.8e9)
        state = (st.optimizer + (st.master or 4.0)) * shard * per_node
        nvme_opt = (state + st.grads * shard * per_node) / rd + state / wr  # gradients in, states in and out
    params_up = zero if params_tier != "none" else (HYBRID_SHARD_BYTES_PER_PARAM if hybrid else st.weights) * shard / h2d
    opt = np.where(off_opt, grads_exposed + np.maximum(adam, nvme_opt) + params_up, 0.0)
    fetch = zero
    if params_tier != "none":
        rate = h2d
        if params_tier == "nvme":
            rd = bw[0] if bw is not None else 7e9
            rate = min(h2d, rd / max(1, per_node))
        fetch = np.asarray(passes, dtype=float) * st.weights * shard / rate
    fetch_exposed = np.maximum(0.0, fetch - np.asarray(compute_s, dtype=float))
    parts = dict(grads_down_s=np.where(off_opt, grads_down, 0.0), cpu_adam_s=np.where(off_opt, adam, 0.0),
                 nvme_optimizer_s=np.where(off_opt, nvme_opt, 0.0), params_up_s=np.where(off_opt, params_up, 0.0),
                 params_fetch_s=fetch)
    return opt + fetch_exposed, parts
