"""Communication model: alpha-beta costs of collectives on a node's links, and the traffic of
training layouts.

Cost model
----------
Hockney's alpha-beta model (R. Hockney, "The communication challenge for MPP", Parallel
Computing 20(3), 1994): a message of ``b`` bytes over a link costs ``alpha + b / beta``. A
collective is a sequence of steps; its time is

    t = launch_overhead + sum(step latencies) + wire_bytes_per_device / achieved_bandwidth

where ``wire_bytes_per_device`` is what the busiest link of one device carries in one direction
(the nccl-tests "bus bandwidth" view, below) and ``achieved_bandwidth`` is the nominal
per-direction bandwidth of the spec times an achievable fraction (``CommParams``).

Byte convention (nccl-tests, doc/PERFORMANCE.md; SCHEMA.md of the truth records): ``nbytes`` is
the full buffer: the all-reduce buffer, the all-gather *output*, the reduce-scatter *input*, the
all-to-all buffer of one rank (it keeps 1/n and sends (n-1)/n), the broadcast buffer, the
point-to-point message.

Bus-bandwidth factors (nccl-tests doc/PERFORMANCE.md, "Bus bandwidth"): busbw = algbw * factor,
all-reduce 2(n-1)/n, all-gather and reduce-scatter (n-1)/n, all-to-all (n-1)/n, broadcast and
point-to-point 1. The factor times ``nbytes`` is the per-device wire traffic of a ring, so an
op's bandwidth term is ``bus_factor(op, n) * nbytes / bandwidth``.

Algorithms
----------
``ring``          NCCL's rings (Patarasuk & Yuan, "Bandwidth optimal all-reduce algorithms for
                  clusters of workstations", JPDC 2009). Inside one scale-up domain every step
                  runs at the scale-up bandwidth. A ring over several domains crosses the
                  scale-out network; NCCL builds one ring per NIC ("channels"), so the group's L
                  ranks in a domain drive L NICs: bandwidth min(scale-up, L x NIC).
``flat_ring``     the textbook single ring: every step waits for the slowest link it crosses
                  (one NIC when the ring leaves the domain). Kept as the naive baseline.
``tree``          double binary tree (P. Sanders, J. Speck, J. L. Traeff, "Two-tree algorithms
                  for full bandwidth broadcast, reduction and scan", Parallel Computing 35(12),
                  2009; NCCL 2.4): logarithmic latency, 2 x buffer per device for all-reduce at
                  90% of the ring bandwidth (NCCL src/graph/tuning.cc: tree busBw *= 0.9).
                  All-gather / reduce-scatter use recursive doubling / halving (R. Thakur,
                  R. Rabenseifner, W. Gropp, "Optimization of collective communication operations
                  in MPICH", IJHPCA 19(1), 2005), the logarithmic algorithm NCCL calls PAT.
``hierarchical``  intra scale-up domain, then across domains over the scale-out network (the L
                  ranks of a domain each carry 1/L of the buffer over their own NIC), then intra
                  again: reduce-scatter / all-reduce / all-gather for all-reduce (the 2D scheme of
                  Jia et al. 2018, arXiv:1807.11205; Horovod's hierarchical all-reduce). Phases
                  run one after the other.
``auto``          the cheapest of the above, as NCCL's tuner picks the algorithm of least modelled
                  time per call (NCCL src/graph/tuning.cc, ncclTopoGetAlgoTime).

All-to-all is a direct pairwise exchange for every algorithm (NCCL implements it as grouped
send/recv; Thakur et al. 2005 pairwise exchange): intra-domain and cross-domain parts move
concurrently on their own links. Point-to-point is one message.

Defaults (``DEFAULT_PARAMS``) were fitted on the truth file's 2 x H200 NVLink records (PyTorch
2.11 eager ``torch.distributed`` with NCCL 2.28, sizes 1 MiB..1 GiB): a per-call overhead and an
achieved fraction of the NVLink bandwidth, one for ring-pipelined collectives and one for direct
copies. See ``DEFAULT_*`` below for the numbers and ``tests/test_comm.py`` for the error table.

Calibration: ``collective_time_s(..., efficiency=obj)`` accepts an object with
``collective_time_s(op, nbytes, world) -> float | None`` (``costmodel.calibration.DeviceEfficiency``)
and, for groups inside one scale-up domain, takes its large-message bus bandwidth as the achieved
bandwidth (``calibrated_bandwidth_scale``); the per-call overhead stays the model's.

Everything here is a pure function of sizes in bytes and the link description.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal, Protocol

import numpy as np

from . import fitted
from .errors import InputError

Op = Literal["all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast", "send_recv"]
Algorithm = Literal["auto", "ring", "flat_ring", "tree", "hierarchical"]
OPS: tuple[str, ...] = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast", "send_recv")
ALGORITHMS: tuple[str, ...] = ("ring", "flat_ring", "tree", "hierarchical")
_AUTO_SET = ("ring", "tree", "hierarchical")  # flat_ring is never cheaper than ring
_CANONICAL_OPS = frozenset(OPS)

_ALIASES = {
    "allreduce": "all_reduce", "all_reduce": "all_reduce", "ar": "all_reduce",
    "allgather": "all_gather", "all_gather": "all_gather", "ag": "all_gather",
    "reducescatter": "reduce_scatter", "reduce_scatter": "reduce_scatter", "rs": "reduce_scatter",
    "alltoall": "all_to_all", "all_to_all": "all_to_all", "a2a": "all_to_all",
    "broadcast": "broadcast", "bcast": "broadcast",
    "send_recv": "send_recv", "sendrecv": "send_recv", "p2p": "send_recv", "send": "send_recv",
}

# --------------------------------------------------------------------------- named constants

# Per-call overhead of one collective issued from PyTorch eager mode (torch.distributed on NCCL),
# as seen by CUDA events around the call: kernel launch, NCCL's proxy and the wait for the
# peer's kernel. NCCL's own model is baseLat 6.8-8.4 us plus per-step hwLat (NCCL
# src/graph/tuning.cc) and nccl-tests shows ~10-20 us on NVLink: the rest is the framework. Inside
# a training step, where the CPU runs ahead of the GPU, much of it can hide; pass
# CommParams(launch_overhead_s=...) to model that. Fitted together with the two efficiencies below
# on the public file's 2 x H200 NCCL records: data/fitted/nccl.yaml (value, bounds, the fit).
DEFAULT_LAUNCH_OVERHEAD_S = fitted.value("fitted/nccl.yaml", "launch_overhead_s")

# Achieved fraction of the nominal per-direction scale-up bandwidth for ring-pipelined
# collectives (all-reduce, all-gather, reduce-scatter, broadcast); upper reference: NCCL reaches
# ~370 of 450 GB/s (0.82) on 8 x H100 with NCCL_ALGO=Ring ("protocol overhead ~20%", S. Jeaugey,
# https://github.com/NVIDIA/nccl-tests/issues/212).
DEFAULT_RING_EFFICIENCY = fitted.value("fitted/nccl.yaml", "ring_efficiency")

# Achieved fraction for direct copies (all-to-all, send/recv): one copy per peer, no reduction
# and no ring pipeline.
DEFAULT_P2P_EFFICIENCY = fitted.value("fitted/nccl.yaml", "p2p_efficiency")

# Achieved fraction of the scale-out NIC line rate. Source: "For NDR @ 400Gbps you should see
# 46-48GB/s per NIC" (D. Addison, NVIDIA, https://github.com/NVIDIA/nccl-tests/issues/290):
# 46 / 50 = 0.92.
DEFAULT_SCALE_OUT_EFFICIENCY = 0.92

# Double binary trees reach 90% of the ring's bus bandwidth (NCCL src/graph/tuning.cc,
# ncclTopoTuneModel: "if (a == NCCL_ALGO_TREE) busBw = std::min(busBw*.9, maxTreeBw)").
TREE_BANDWIDTH_FACTOR = 0.9

# PyTorch DistributedDataParallel's default gradient bucket: bucket_cap_mb=25 (S. Li et al.,
# "PyTorch Distributed: Experiences on Accelerating Data Parallel Training", VLDB 2020, sec. 3.2.3;
# torch.nn.parallel.DistributedDataParallel docs). The MB there is MiB (25 * 1024 * 1024).
DDP_BUCKET_BYTES = 25 * 1024 * 1024

# Default per-step latencies when a spec gives none: NVLink ~2 us and InfiniBand ~5 us, the
# defaults of costmodel.specs.LinkSpec / ScaleOutNetwork.
_DEFAULT_INTRA_LATENCY_S = 2e-6
_DEFAULT_INTER_LATENCY_S = 5e-6

# Per-step latency of NCCL's ring with the Simple protocol (the one it picks for the MiB..GiB
# messages of gradient and parameter collectives): 3.4 us per step over NVLink, 9.6 us per step
# that crosses the network. Source: NCCL src/graph/tuning.cc (2.7-2.8, the NCCL of Megatron-LM
# 2021), hwLat[NVLINK][Ring][Simple] = 3.4 and hwLat[NET][Ring][Simple] = 9.6 us; the model adds
# (nsteps - nInterSteps) x intra + nInterSteps x inter per call. A step of a ring that spans
# scale-up domains costs at least these (or the spec's link latency if larger); rings inside one
# domain keep the spec latency, with which DEFAULT_LAUNCH_OVERHEAD_S was fitted.
NCCL_RING_STEP_NVLINK_S = 3.4e-6
NCCL_RING_STEP_NET_S = 9.6e-6

# NCCL runs all-gather and reduce-scatter as rings only when a communicator has several ranks per
# node: tuning.cc (2.7-2.8) skips every other algorithm for them ("if (coll != ncclCollAllReduce
# && a != NCCL_ALGO_RING) continue;"); the logarithmic PAT algorithm of NCCL 2.23+ is used only
# with one rank per node (NCCL 2.23 release notes: "PAT ... for 1 GPU per node"). ``auto`` follows
# that: recursive doubling ("tree") and the hierarchical variant only for one rank per domain.


@dataclass(frozen=True)
class CommParams:
    """The few named parameters of the model (see the DEFAULT_* constants for their sources)."""

    launch_overhead_s: float = DEFAULT_LAUNCH_OVERHEAD_S
    ring_efficiency: float = DEFAULT_RING_EFFICIENCY
    p2p_efficiency: float = DEFAULT_P2P_EFFICIENCY
    scale_out_efficiency: float = DEFAULT_SCALE_OUT_EFFICIENCY
    ring_step_intra_s: float = NCCL_RING_STEP_NVLINK_S  # floor of a ring step's latency inside a domain
    ring_step_inter_s: float = NCCL_RING_STEP_NET_S     # ... and across domains

    def __post_init__(self):
        if self.launch_overhead_s < 0:
            raise InputError(f"launch_overhead_s must be >= 0, got {self.launch_overhead_s}", field="launch_overhead_s")
        if self.ring_step_intra_s < 0 or self.ring_step_inter_s < 0:
            raise InputError("ring step latencies must be >= 0", field="ring_step_intra_s")
        for name in ("ring_efficiency", "p2p_efficiency", "scale_out_efficiency"):
            v = getattr(self, name)
            if not (0 < v <= 1):
                raise InputError(f"{name} must be in (0, 1], got {v}", field=name)


DEFAULT_PARAMS = CommParams()


# --------------------------------------------------------------------------- links and groups

@dataclass(frozen=True)
class Links:
    """What a collective needs to know about the hardware: two levels of links.

    ``intra_*``: the scale-up domain (NVLink/NVSwitch, Infinity Fabric, ICI), bandwidth per device
    per direction; ``domain_size`` devices share it. ``inter_*``: the scale-out network, bandwidth
    per device per direction (a device's share of the node's NICs); None for a lone domain.
    """

    intra_bytes_per_s: float
    domain_size: int
    intra_latency_s: float = _DEFAULT_INTRA_LATENCY_S
    inter_bytes_per_s: float | None = None
    inter_latency_s: float = _DEFAULT_INTER_LATENCY_S
    name: str = ""
    # A torus scale-up domain (TPU ICI): its side lengths, e.g. (16, 16, 12) for a 3072-chip TPU v4
    # pod; empty for a switched or ring fabric. Groups inside it use torus_collective_time_s.
    torus: tuple[int, ...] = ()

    def __post_init__(self):
        if any(int(d) != d or d < 1 for d in self.torus):
            raise InputError(f"torus sides must be positive integers, got {self.torus}", field="torus")
        if not self.intra_bytes_per_s > 0:
            raise InputError(f"intra bandwidth must be positive, got {self.intra_bytes_per_s}", field="intra_bytes_per_s")
        if self.domain_size < 1:
            raise InputError(f"domain_size must be >= 1, got {self.domain_size}", field="domain_size")
        if self.inter_bytes_per_s is not None and not self.inter_bytes_per_s > 0:
            raise InputError(f"inter bandwidth must be positive, got {self.inter_bytes_per_s}", field="inter_bytes_per_s")
        if self.intra_latency_s < 0 or self.inter_latency_s < 0:
            raise InputError("latencies must be >= 0", field="latency")

    @classmethod
    def from_spec(cls, spec, *, domain_size: int | None = None) -> "Links":
        """From a ``NodeSpec`` (scale_up + scale_out) or an ``AcceleratorSpec`` (scale_up link, or
        the host link when the device has no scale-up fabric: peers then talk over PCIe). An
        accelerator alone does not say how many devices share its fabric: ``domain_size``
        (default 8, an HGX baseboard) and no scale-out network."""
        from .specs import AcceleratorSpec, NodeSpec

        if isinstance(spec, NodeSpec):
            if domain_size is not None:
                raise InputError("a node spec fixes its scale-up domain size; domain_size is for accelerator specs", field="domain_size")
            so = spec.scale_out
            return cls(intra_bytes_per_s=spec.scale_up.bandwidth_bytes_per_s, domain_size=spec.scale_up.size,
                       intra_latency_s=spec.scale_up.latency_s,
                       inter_bytes_per_s=so.bandwidth_per_device_bytes_per_s if so else None,
                       inter_latency_s=so.latency_s if so else _DEFAULT_INTER_LATENCY_S, name=spec.id,
                       torus=torus_shape(spec.scale_up))
        if isinstance(spec, AcceleratorSpec):
            size = domain_size or 8
            if spec.scale_up is not None and spec.scale_up.topology != "none":
                return cls(intra_bytes_per_s=spec.scale_up.bandwidth_bytes_per_s, domain_size=size,
                           intra_latency_s=spec.scale_up.latency_s, name=spec.id)
            if spec.host_link is not None:
                return cls(intra_bytes_per_s=spec.host_link.bandwidth_bytes_per_s, domain_size=size,
                           intra_latency_s=_DEFAULT_INTER_LATENCY_S, name=f"{spec.id} (PCIe)")
            raise InputError(f"{spec.id} has neither scale_up nor host_link; cannot model communication", field="scale_up")
        raise InputError(f"expected a node or accelerator spec, got {type(spec).__name__}")


def as_links(node_or_links) -> Links:
    return node_or_links if isinstance(node_or_links, Links) else Links.from_spec(node_or_links)


@dataclass(frozen=True)
class Group:
    """A communicator: ``size`` ranks, ``per_domain`` of them in each scale-up domain it spans.

    ``Group(8, 8)``: a tensor-parallel group inside one DGX. ``Group(16, 1)``: a data-parallel
    group with one rank per node. :meth:`strided` derives ``per_domain`` from the distance between
    consecutive ranks of the group in the global rank order: with tp varying fastest (Megatron,
    Llama 3's [TP, CP, PP, DP]) a tp group has stride 1, a cp group stride tp, a pp group stride
    tp*cp and a dp group stride tp*cp*pp.
    """

    size: int
    per_domain: int

    def __post_init__(self):
        if int(self.size) != self.size or self.size < 1:
            raise InputError(f"group size must be a positive integer, got {self.size}", field="size")
        if int(self.per_domain) != self.per_domain or not (1 <= self.per_domain <= self.size):
            raise InputError(f"per_domain must be an integer in 1..{self.size}, got {self.per_domain}", field="per_domain")

    @property
    def domains(self) -> int:
        return -(-self.size // self.per_domain)

    @property
    def intra(self) -> bool:
        return self.domains == 1

    @classmethod
    def strided(cls, size: int, stride: int, domain_size: int) -> "Group":
        """Ranks r0, r0+stride, ... r0+(size-1)*stride with domains of ``domain_size`` consecutive
        global ranks: ``per_domain = clamp(domain_size // stride, 1, size)``."""
        if stride < 1 or domain_size < 1:
            raise InputError(f"stride and domain_size must be >= 1 (got {stride}, {domain_size})", field="stride")
        return cls(int(size), int(max(1, min(size, domain_size // stride))))

    @classmethod
    def on(cls, size: int, node_or_links, stride: int = 1) -> "Group":
        return cls.strided(size, stride, as_links(node_or_links).domain_size)


class CollectiveCalibration(Protocol):  # costmodel.calibration.DeviceEfficiency
    def collective_time_s(self, op: str, nbytes: float, world: int) -> float | None: ...


def normalize_op(op: str) -> str:
    if op in _CANONICAL_OPS:
        return op
    key = str(op).strip().lower().replace("-", "_").replace(" ", "_")
    if key in _ALIASES:
        return _ALIASES[key]
    if key.replace("_", "") in _ALIASES:
        return _ALIASES[key.replace("_", "")]
    raise InputError(f"unknown collective {op!r}; expected one of {', '.join(OPS)}", field="op")


def bus_factor(op: str, n: int | np.ndarray):
    """nccl-tests busbw / algbw (doc/PERFORMANCE.md): all-reduce 2(n-1)/n, all-gather,
    reduce-scatter and all-to-all (n-1)/n, broadcast and send/recv 1."""
    op = normalize_op(op)
    n = np.asarray(n, dtype=float)
    if op == "all_reduce":
        f = 2.0 * (n - 1.0) / n
    elif op in ("all_gather", "reduce_scatter", "all_to_all"):
        f = (n - 1.0) / n
    else:
        f = np.ones_like(n)
    return float(f) if f.ndim == 0 else f


# --------------------------------------------------------------------------- torus (TPU ICI)
#
# A TPU slice is a 2D (v5e) or 3D (v4, v5p) torus: every chip has 2 ICI links per dimension, one
# to each neighbour (TPU v4: 6 links per chip, 4x4x4 cubes joined into tori by optical circuit
# switches; Jouppi et al., "TPU v4: An Optically Reconfigurable Supercomputer for Machine Learning
# with Hardware Support for Embeddings", ISCA 2023, arXiv:2304.01433, sec. 2). A group of chips
# occupies a sub-torus of ``dims`` (torus_group_dims). Collectives run as dimension-ordered
# bidirectional rings: a reduce-scatter reduces along the first dimension over both of its links
# (each direction carries half the data), then the 1/d_1 shard left along the second, and so on;
# an all-gather runs the same phases in reverse; an all-reduce is the two. Splitting the buffer
# into one part per dimension, each part visiting the dimensions in a rotated order, keeps every
# dimension's links busy at once (the 2-D gradient summation of Kumar et al., "Scale MLPerf-0.6
# models on Google TPU-v3 Pods", arXiv:1909.09756, sec. 3.3: "both dimensions simultaneously"):
# the wire time is then the total traffic over all 2m link directions. Both are computed; the
# model takes the faster, as XLA picks its collective schedule.

# Achieved fraction of the ICI link rate: Google quotes 1.1 PB/s of all-reduce bandwidth for a
# 4096-chip TPU v4 pod (https://cloud.google.com/tpu/docs/v4), 270 GB/s per chip against 6 x 50
# GB/s of links: 0.9.
ICI_EFFICIENCY = 0.9


def torus_shape(scale_up) -> tuple[int, ...]:
    """The sides of a scale-up domain with a torus topology (``ScaleUpDomain.shape`` when given,
    else the most cubic factorisation of its size into 3 or 2 sides); () for other topologies."""
    topo = getattr(scale_up, "topology", "")
    if not str(topo).startswith("torus"):
        return ()
    shape = getattr(scale_up, "shape", None)
    if shape:
        return tuple(int(x) for x in shape)
    k = 3 if topo == "torus-3d" else 2
    return _cubic_factors(int(scale_up.size), k)


def divisors(n: int) -> list[int]:
    """The divisors of ``n`` (trial division up to sqrt(n)), ascending."""
    small, large = [], []
    d = 1
    while d * d <= n:
        if n % d == 0:
            small.append(d)
            if d * d != n:
                large.append(n // d)
        d += 1
    return small + large[::-1]


def _cubic_factors(n: int, k: int) -> tuple[int, ...]:
    """``n`` as ``k`` integer factors, as equal as possible (least spread), largest first."""
    if k <= 1 or n <= 1:
        return (max(1, n),) + (1,) * max(0, k - 1)
    divs = divisors(n)
    best = None
    for d in divs:
        if d ** k > n * (1 + 1e-9) and best is not None:
            break
        rest = _cubic_factors(n // d, k - 1) if k > 2 else (n // d,)
        cand = tuple(sorted((d,) + rest, reverse=True))
        if best is None or (cand[0] - cand[-1]) < (best[0] - best[-1]):
            best = cand
    return best


def torus_group_dims(size: int, torus: tuple[int, ...]) -> tuple[int, ...]:
    """The sub-torus a group of ``size`` chips occupies: the sides taken longest first, each the
    largest divisor of what is left that fits the side (12 on a 16x16x12 pod: (12,); 256: (16, 16);
    3072: (16, 16, 12)). Sides of 1 are dropped; a size the torus cannot hold keeps its remainder
    as a last side."""
    left, out = int(size), []
    for side in sorted(torus, reverse=True):
        if left <= 1:
            break
        d = max(x for x in divisors(left) if x <= side)
        if d > 1:
            out.append(d)
            left //= d
    if left > 1:
        out.append(left)
    return tuple(out)


def torus_collective_time_s(op: str, nbytes: float, dims: tuple[int, ...], link_bytes_per_s: float,
                            hop_latency_s: float, *, efficiency: float = ICI_EFFICIENCY,
                            launch_overhead_s: float = 0.0) -> float:
    """One collective of ``nbytes`` (nccl-tests buffer convention) over a sub-torus of ``dims``
    (section comment above): bidirectional rings per dimension, dimension-ordered, or all
    dimensions at once on split buffers, whichever is faster. ``link_bytes_per_s``: one ICI link,
    one direction. All-to-all and point-to-point cross the dimensions one hop at a time."""
    op = normalize_op(op)
    dims = tuple(int(d) for d in dims if d > 1)
    n = int(np.prod(dims)) if dims else 1
    if n <= 1 or nbytes <= 0:
        return 0.0
    b = link_bytes_per_s * efficiency
    if op == "send_recv":
        return launch_overhead_s + hop_latency_s + nbytes / b
    if op == "all_to_all":
        # each chip sends (n-1)/n of its buffer; on a torus the average message travels n_i/4 hops
        # per dimension, so the bisection carries sum_i d_i / 4 x the traffic over 2m directions
        hops = sum(d / 4.0 for d in dims)
        wire = (n - 1.0) / n * nbytes * max(1.0, hops) / (2.0 * len(dims) * b)
        return launch_overhead_s + sum(d - 1 for d in dims) * hop_latency_s + wire
    passes = 2.0 if op == "all_reduce" else 1.0  # reduce-scatter then all-gather
    if op == "broadcast":
        passes = 1.0
    # dimension-ordered: phase i moves (d_i - 1)/d_i of what is left over 2 links (both directions)
    seq, left = 0.0, float(nbytes)
    for d in dims:
        seq += (d - 1.0) / d * left / (2.0 * b)
        left /= d
    if op == "broadcast":
        seq = float(nbytes) / (2.0 * b)
    # all dimensions at once: the whole traffic over every link of the group's dimensions
    conc = bus_factor("all_gather", n) * nbytes / (2.0 * len(dims) * b) if op != "broadcast" else seq
    steps = passes * sum(d - 1 for d in dims)
    return launch_overhead_s + steps * hop_latency_s + passes * min(seq, conc)


# --------------------------------------------------------------------------- vectorised core

def _log2c(x):
    return np.ceil(np.log2(np.maximum(x, 1.0)))


def _ring_bw(B_up, B_out, N, L, multi: bool):
    if B_out is None:
        return B_up
    across = np.minimum(B_up, L * B_out) if multi else np.minimum(B_up, B_out)
    return np.where(N > 1, across, B_up)


def _terms(op: str, S, n, L, links: Links, params: CommParams, scale: float) -> dict[str, np.ndarray]:
    """Modelled time of each algorithm (launch overhead included), as arrays broadcast together."""
    S = np.asarray(S, dtype=float)
    n = np.asarray(n, dtype=float)
    L = np.minimum(np.asarray(L, dtype=float), n)
    N = np.ceil(n / L)
    au, ao = links.intra_latency_s, links.inter_latency_s
    Bu_r = links.intra_bytes_per_s * params.ring_efficiency * scale
    Bu_p = links.intra_bytes_per_s * params.p2p_efficiency * scale
    Bo = None if links.inter_bytes_per_s is None else links.inter_bytes_per_s * params.scale_out_efficiency * scale
    o = params.launch_overhead_s
    multi = N > 1
    if Bo is None and np.any(multi):
        raise InputError(f"the group spans {int(np.max(N))} scale-up domains but {links.name or 'the links'} "
                         "have no scale-out network", field="scale_out")
    Bo_ = Bo if Bo is not None else np.inf

    # a step of a ring that spans domains costs at least NCCL's per-step latency (NCCL_RING_STEP_*);
    # rings inside one domain keep the spec's latency, with which the launch overhead was fitted.
    au_ring = np.where(multi, max(au, params.ring_step_intra_s), au)
    ao_ring = max(ao, params.ring_step_inter_s)

    def ring_lat(steps, inter_steps):
        inter_steps = np.where(multi, inter_steps, 0.0)
        return (steps - inter_steps) * au_ring + inter_steps * ao_ring

    def tree_lat(depth_factor):  # depth_factor: 2 for reduce+broadcast, 1 for one pass
        return depth_factor * (_log2c(L) * au + np.where(multi, _log2c(N) * ao, 0.0))

    B_ring = _ring_bw(Bu_r, Bo, N, L, multi=True)
    B_flat = _ring_bw(Bu_r, Bo, N, L, multi=False)
    out: dict[str, np.ndarray] = {}

    if op in ("all_to_all", "send_recv"):
        if op == "all_to_all":
            intra_b = (L - 1.0) / n * S
            inter_b = (n - L) / n * S
            bw = np.maximum(intra_b / Bu_p, np.where(multi, inter_b / Bo_, 0.0))
            lat = (L - 1.0) * au + (n - L) * ao  # pairwise exchange: one message per peer
        else:
            bw = S / np.where(multi, np.minimum(Bu_p, Bo_), Bu_p)
            lat = np.where(multi, ao, au)
        t = o + lat + bw
        return {a: t for a in ALGORITHMS}

    if op == "all_reduce":
        steps, inter = 2.0 * (n - 1.0), 2.0 * (N - 1.0)
        wire = 2.0 * (n - 1.0) / n * S
        out["ring"] = o + ring_lat(steps, inter) + wire / B_ring
        out["flat_ring"] = o + ring_lat(steps, inter) + wire / B_flat
        out["tree"] = o + tree_lat(2.0) + 2.0 * S / (TREE_BANDWIDTH_FACTOR * B_ring)
        # hierarchical: RS intra (S over L) + AR inter (S/L over N, best of ring/tree) + AG intra
        intra = 2.0 * ((L - 1.0) * au + (L - 1.0) / L * S / Bu_r)
        Sx = S / L
        inter_ring = 2.0 * (N - 1.0) * ao + 2.0 * (N - 1.0) / N * Sx / Bo_
        inter_tree = 2.0 * _log2c(N) * ao + 2.0 * Sx / (TREE_BANDWIDTH_FACTOR * Bo_)
        hier = o + intra + np.minimum(inter_ring, inter_tree)
        out["hierarchical"] = np.where(multi, hier, out["ring"])
    elif op in ("all_gather", "reduce_scatter"):
        steps, inter = n - 1.0, N - 1.0
        wire = (n - 1.0) / n * S
        out["ring"] = o + ring_lat(steps, inter) + wire / B_ring
        out["flat_ring"] = o + ring_lat(steps, inter) + wire / B_flat
        # recursive doubling / halving: log2 L steps inside, log2 N across; the cross-domain
        # steps move (N-1)/N of the buffer over one NIC.
        rd_bw = (L - 1.0) / n * S / Bu_r + np.where(multi, (N - 1.0) / N * S / Bo_, 0.0)
        out["tree"] = o + tree_lat(1.0) + rd_bw
        Sx = S / L
        inter_ring = (N - 1.0) * ao + (N - 1.0) / N * Sx / Bo_
        inter_rd = _log2c(N) * ao + (N - 1.0) / N * Sx / Bo_
        hier = o + (L - 1.0) * au + (L - 1.0) / L * S / Bu_r + np.minimum(inter_ring, inter_rd)
        out["hierarchical"] = np.where(multi, hier, out["ring"])
        # what NCCL picks: rings only for several ranks per domain across domains (see the notes
        # above NCCL_RING_STEP_*); each algorithm's own time stays reported as modelled.
        ring_only = multi & (L > 1)
        out["auto"] = np.where(ring_only, out["ring"], np.minimum.reduce([out[a] for a in _AUTO_SET]))
    elif op == "broadcast":
        steps, inter = n - 1.0, N - 1.0
        out["ring"] = o + ring_lat(steps, inter) + S / B_ring  # pipelined chain
        out["flat_ring"] = o + ring_lat(steps, inter) + S / B_flat
        out["tree"] = o + tree_lat(1.0) + S / (TREE_BANDWIDTH_FACTOR * B_ring)
        # scatter inside the root's domain, broadcast S/L across domains, all-gather inside.
        Sx = S / L
        inter = np.minimum((N - 1.0) * ao + Sx / Bo_, _log2c(N) * ao + Sx / (TREE_BANDWIDTH_FACTOR * Bo_))
        hier = o + 2.0 * ((L - 1.0) * au + (L - 1.0) / L * S / Bu_r) + inter
        out["hierarchical"] = np.where(multi, hier, out["ring"])
    else:  # pragma: no cover - normalize_op guards this
        raise InputError(f"unknown collective {op!r}", field="op")
    return out


def _select(terms: dict[str, np.ndarray], algorithm: str) -> np.ndarray:
    if algorithm == "auto":
        if "auto" in terms:
            return terms["auto"]
        return np.minimum.reduce([terms[a] for a in _AUTO_SET])
    if algorithm not in ALGORITHMS:
        raise InputError(f"unknown algorithm {algorithm!r}; expected auto, {', '.join(ALGORITHMS)}", field="algorithm")
    return terms[algorithm]


def _check_sizes(nbytes, n, L):
    if np.any(np.asarray(nbytes) < 0):
        raise InputError("nbytes must be >= 0", field="nbytes")
    if np.any(np.asarray(n) < 1):
        raise InputError("group size must be >= 1", field="size")
    if np.any(np.asarray(L) < 1):
        raise InputError("per_domain must be >= 1", field="per_domain")


def collective_time_s_np(op: str, nbytes, group_size, per_domain, node_or_links, *, algorithm: str = "auto",
                         params: CommParams = DEFAULT_PARAMS, efficiency: float | None = None) -> np.ndarray:
    """Vectorised :func:`collective_time_s`: ``nbytes``, ``group_size`` and ``per_domain`` are
    arrays (or scalars) broadcast together; returns seconds with their broadcast shape.

    For layout searches over millions of candidates: no Python loop, a few dozen numpy
    ufunc calls per op. ``efficiency`` (a float) scales every achieved bandwidth; calibration
    objects are not consulted here (use the scalar function for those).
    """
    op = normalize_op(op)
    links = as_links(node_or_links)
    n = np.asarray(group_size, dtype=float)
    L = np.asarray(per_domain, dtype=float)
    _check_sizes(nbytes, n, L)
    scale = 1.0 if efficiency is None else float(efficiency)
    if not scale > 0:
        raise InputError(f"efficiency must be positive, got {efficiency}", field="efficiency")
    t = _select(_terms(op, nbytes, n, L, links, params, scale), algorithm)
    single = np.broadcast_to(n <= 1, np.shape(t))
    return np.where(single, 0.0, t)


def _send_recv_s(nbytes: float, crosses: bool, links: Links, params: CommParams, scale: float) -> float:
    """_terms' ``send_recv`` time of one message between 2 ranks, in scalar arithmetic (the same
    operations in the same order as the vectorised core): launch overhead, one link latency, and
    the bytes over the direct-copy bandwidth (the slower of NVLink's and the NIC's when the pair
    spans two domains)."""
    bw = links.intra_bytes_per_s * params.p2p_efficiency * scale
    if crosses:
        bw = min(bw, links.inter_bytes_per_s * params.scale_out_efficiency * scale)
    return params.launch_overhead_s + (links.inter_latency_s if crosses else links.intra_latency_s) + nbytes / bw


def _all_reduce_one_domain_s(nbytes: float, size: int, links: Links, params: CommParams, scale: float) -> float:
    """_terms' ``all_reduce`` time, NCCL's pick (the fastest of ring and tree; hierarchical is the
    ring inside one domain), for a group inside one scale-up domain, in scalar arithmetic (the same
    operations in the same order as the vectorised core)."""
    n = float(size)
    au = links.intra_latency_s
    bw = links.intra_bytes_per_s * params.ring_efficiency * scale
    o = params.launch_overhead_s
    steps = 2.0 * (n - 1.0)
    wire = 2.0 * (n - 1.0) / n * nbytes
    ring = o + ((steps - 0.0) * au + 0.0 * max(links.inter_latency_s, params.ring_step_inter_s)) + wire / bw
    tree = o + 2.0 * (math.ceil(math.log2(max(n, 1.0))) * au + 0.0) + 2.0 * nbytes / (TREE_BANDWIDTH_FACTOR * bw)
    return min(ring, tree)


def collective_times_by_algorithm(op: str, nbytes: float, group: Group, node_or_links, *,
                                  params: CommParams = DEFAULT_PARAMS) -> dict[str, float]:
    """Each algorithm's modelled time (for reports and tests)."""
    op = normalize_op(op)
    if group.size <= 1:
        return {a: 0.0 for a in ALGORITHMS}
    terms = _terms(op, float(nbytes), group.size, group.per_domain, as_links(node_or_links), params, 1.0)
    return {a: float(terms[a]) for a in ALGORITHMS}


def collective_time_s(op: str, nbytes: float, group: Group, node_or_links, *, algorithm: str = "auto",
                      efficiency: "float | CollectiveCalibration | None" = None,
                      params: CommParams = DEFAULT_PARAMS) -> float:
    """Seconds for one collective of ``nbytes`` (nccl-tests buffer convention) over ``group``.

    ``node_or_links``: a ``NodeSpec``, an ``AcceleratorSpec`` or :class:`Links`.
    ``efficiency``: None (the defaults in ``params``); a float that scales every achieved
    bandwidth; or a calibration object with ``collective_time_s(op, nbytes, world)``, whose
    large-message bus bandwidth sets the achieved bandwidth of a group inside one scale-up domain
    (:func:`calibrated_bandwidth_scale`; the launch overhead stays ``params``').
    """
    op = normalize_op(op)
    if nbytes < 0:
        raise InputError(f"nbytes must be >= 0, got {nbytes}", field="nbytes")
    if not isinstance(group, Group):
        raise InputError(f"expected a Group, got {type(group).__name__}", field="group")
    if group.size <= 1:
        return 0.0
    if op == "send_recv" and group.size != 2:
        raise InputError(f"send_recv is between 2 ranks; got a group of {group.size}", field="size")
    links = as_links(node_or_links)
    if links.torus and group.intra:
        # inside a torus domain (TPU ICI): 2 links per dimension share the per-chip bandwidth
        link_bw = links.intra_bytes_per_s / (2.0 * len(links.torus))
        eff = ICI_EFFICIENCY * (float(efficiency) if isinstance(efficiency, (int, float)) else 1.0)
        return torus_collective_time_s(op, float(nbytes), torus_group_dims(group.size, links.torus), link_bw,
                                       links.intra_latency_s, efficiency=eff,
                                       launch_overhead_s=params.launch_overhead_s)
    scale = None
    if efficiency is not None and hasattr(efficiency, "collective_time_s"):
        if group.intra:
            scale = calibrated_bandwidth_scale(efficiency, op, group.size, links, params)
    elif efficiency is not None:
        scale = float(efficiency)
    if op == "send_recv" and algorithm == "auto" and (scale is None or scale > 0) and (
            group.per_domain > 1 or links.inter_bytes_per_s is not None):
        return _send_recv_s(float(nbytes), group.per_domain == 1, links, params, 1.0 if scale is None else scale)
    if op == "all_reduce" and algorithm == "auto" and (scale is None or scale > 0) and group.per_domain == group.size:
        return _all_reduce_one_domain_s(float(nbytes), group.size, links, params, 1.0 if scale is None else scale)
    return float(collective_time_s_np(op, float(nbytes), group.size, group.per_domain, links,
                                      algorithm=algorithm, params=params, efficiency=scale))


# Sizes at which a calibration's large-message bandwidth is read: the marginal bus bandwidth
# between 256 MiB and 1 GiB, where the per-call overhead is < 10% of the time (truth 2 x H200:
# 1 GiB calls take 1.7-3.3 ms against a ~60 us floor).
_CAL_SIZES_BYTES = (256 * 2**20, 2**30)


def calibrated_bandwidth_scale(calibration, op: str, world: int, node_or_links,
                               params: CommParams = DEFAULT_PARAMS) -> float | None:
    """Bandwidth scale taken from a calibration object (``collective_time_s(op, nbytes, world)``):
    its marginal bus bandwidth between two large sizes over the model's achieved bandwidth for the
    op's class (ring or direct copy). Only the bandwidth is taken: the per-call overhead stays
    ``params.launch_overhead_s`` (calibration overlays fitted on one harness carry that harness's
    floor; the truth file's isolated calls sit near 60 us, the overlay's fit near 33 us). None when
    the calibration has no fit for ``op``."""
    op = normalize_op(op)
    links = as_links(node_or_links)
    frac = params.p2p_efficiency if op in ("all_to_all", "send_recv") else params.ring_efficiency
    try:
        key = (id(calibration), op, world, links.intra_bytes_per_s, frac)
        hit = _BANDWIDTH_SCALES.get(key)
    except TypeError:  # (a world that does not hash: computed)
        key = hit = None
    if hit is not None and hit[0] is calibration:
        return hit[1]
    scale = _calibrated_bandwidth_scale(calibration, op, world, links.intra_bytes_per_s * frac)
    if key is not None:
        if len(_BANDWIDTH_SCALES) > 4096:
            _BANDWIDTH_SCALES.clear()
        _BANDWIDTH_SCALES[key] = (calibration, scale)  # (the entry holds the calibration: its id is not reused)
    return scale


# calibrated_bandwidth_scale's results per calibration object (immutable), op, world and nominal rate
_BANDWIDTH_SCALES: dict = {}


def _calibrated_bandwidth_scale(calibration, op: str, world, nominal: float) -> float | None:
    s1, s2 = _CAL_SIZES_BYTES
    t1 = calibration.collective_time_s(op, float(s1), int(world))
    t2 = calibration.collective_time_s(op, float(s2), int(world))
    if t1 is None or t2 is None or not float(t2) > float(t1):
        return None
    busbw = bus_factor(op, world) * (s2 - s1) / (float(t2) - float(t1))
    return float(busbw / nominal)


def busbw_bytes_per_s(op: str, nbytes: float, n: int, seconds: float) -> float:
    """Bus bandwidth in the nccl-tests convention from a time (for comparing with records)."""
    return bus_factor(op, n) * nbytes / seconds


def predict_kernel_record(record: dict, node_or_links, **kw) -> float | None:
    """Predicted seconds for a truth-file ``kernel`` record of a collective (SCHEMA.md: ``op``,
    ``bytes`` = the full buffer, ``world`` GPUs of one host), or None for other ops."""
    try:
        op = normalize_op(record.get("op", ""))
    except InputError:
        return None
    world = int(record.get("world", 1))
    links = as_links(node_or_links)
    group = Group(world, min(world, links.domain_size))
    return collective_time_s(op, float(record["bytes"]), group, links, **kw)


# --------------------------------------------------------------------------- training traffic

@dataclass(frozen=True)
class Collective:
    """One kind of call in a layout's traffic: ``count`` calls of ``op`` on ``nbytes`` over ``group``."""

    op: str
    nbytes: float
    group: Group
    count: float = 1.0
    what: str = ""

    def time_s(self, node_or_links, **kw) -> float:
        return self.count * collective_time_s(self.op, self.nbytes, self.group, node_or_links, **kw)

    @property
    def wire_bytes_per_device(self) -> float:
        """Bytes one device sends (ring view) for all ``count`` calls."""
        return self.count * bus_factor(self.op, self.group.size) * self.nbytes if self.group.size > 1 else 0.0


def traffic_time_s(items: Iterable[Collective], node_or_links, **kw) -> float:
    """Total time of a list of calls, issued one after another."""
    links = as_links(node_or_links)
    return sum(c.time_s(links, **kw) for c in items)


@dataclass(frozen=True)
class CommTime:
    total_s: float     # all calls back to back
    exposed_s: float   # what is left on the critical path after overlap with compute
    calls: int


def dp_grad_buckets(grad_bytes: float, group: Group, *, bucket_bytes: float = DDP_BUCKET_BYTES) -> list[Collective]:
    """DDP gradient all-reduce in buckets (Li et al., VLDB 2020): ``grad_bytes`` = gradient bytes
    of one replica (e.g. 4 x params for fp32 grads) in full buckets plus one remainder."""
    if grad_bytes < 0 or bucket_bytes <= 0:
        raise InputError("grad_bytes must be >= 0 and bucket_bytes > 0", field="bucket_bytes")
    full = math.floor(grad_bytes / bucket_bytes)
    rest = grad_bytes - full * bucket_bytes
    out = []
    if full:
        out.append(Collective("all_reduce", bucket_bytes, group, full, "dp grad bucket"))
    if rest > 0:
        out.append(Collective("all_reduce", rest, group, 1, "dp grad bucket (last)"))
    return out


def dp_grad_sync_time_s(grad_bytes: float, group: Group, node_or_links, *, bucket_bytes: float = DDP_BUCKET_BYTES,
                        overlap_fraction: float = 0.0, **kw) -> CommTime:
    """Gradient all-reduce of data parallelism, bucketed, with ``overlap_fraction`` of it hidden
    behind the backward pass (PyTorch DDP launches a bucket's all-reduce as soon as its gradients
    are ready; Li et al. 2020, sec. 3.2.3). The last bucket is reduced after the last gradient is
    produced, so it is always exposed."""
    if not 0.0 <= overlap_fraction <= 1.0:
        raise InputError(f"overlap_fraction must be in [0, 1], got {overlap_fraction}", field="overlap_fraction")
    items = dp_grad_buckets(grad_bytes, group, bucket_bytes=bucket_bytes)
    if not items or group.size <= 1:
        return CommTime(0.0, 0.0, 0)
    links = as_links(node_or_links)
    total = traffic_time_s(items, links, **kw)
    last = items[-1].time_s(links, **kw) / items[-1].count
    exposed = max((1.0 - overlap_fraction) * total, last)
    return CommTime(total, min(exposed, total), int(sum(c.count for c in items)))


def zero_collectives(param_bytes: float, grad_bytes: float, group: Group, *, stage: int = 3,
                     micro_batches: int = 1, reshard_after_forward: bool = True) -> list[Collective]:
    """Per-step collectives of ZeRO / FSDP over the data-parallel ``group`` (Rajbhandari et al.,
    "ZeRO", SC 2020, sec. 7: stages 1-2 move 2 x params per step (reduce-scatter of gradients +
    all-gather of updated parameters, the same volume as an all-reduce); stage 3 moves 3 x
    (parameters all-gathered for forward and again for backward, gradients reduce-scattered).

    ``param_bytes``: the gathered parameters in their compute dtype (2 x params for bf16);
    ``grad_bytes``: the gradients as reduced (4 x params for fp32 reduction). Stage 3 / FSDP
    gathers per micro-batch (``micro_batches``) and reduce-scatters per micro-batch (FSDP without
    ``no_sync``); ``reshard_after_forward=False`` (FSDP SHARD_GRAD_OP, ZeRO-2-like) gathers once.
    """
    if stage not in (1, 2, 3):
        raise InputError(f"ZeRO stage must be 1, 2 or 3, got {stage}", field="stage")
    if micro_batches < 1:
        raise InputError(f"micro_batches must be >= 1, got {micro_batches}", field="micro_batches")
    if stage in (1, 2):
        return [Collective("reduce_scatter", grad_bytes, group, 1, "zero grad reduce-scatter"),
                Collective("all_gather", param_bytes, group, 1, "zero param all-gather")]
    gathers = (2 if reshard_after_forward else 1) * micro_batches
    return [Collective("all_gather", param_bytes, group, gathers, "fsdp param all-gather (fwd+bwd)"),
            Collective("reduce_scatter", grad_bytes, group, micro_batches, "fsdp grad reduce-scatter")]


def tp_layer_collectives(activation_bytes: float, group: Group, *, sequence_parallel: bool = False,
                         recompute: str = "none", parallel_block: bool = False) -> list[Collective]:
    """Tensor-parallel collectives of one transformer layer for one micro-batch.

    ``activation_bytes``: the layer's input/output activation, b x s x h x dtype bytes (the full,
    unsharded tensor). Megatron-LM (Shoeybi et al. 2019, arXiv:1909.08053, sec. 3, the f and g
    operators): 2 all-reduces in forward (after attention and after the MLP) and 2 in backward.
    With sequence parallelism (Korthikanti et al. 2022, arXiv:2205.05198, sec. 4.2.2) each
    all-reduce becomes an all-gather before and a reduce-scatter after the block: 2 + 2 in
    forward, 2 + 2 in backward, the same bytes on the wire. Full recompute re-runs the forward's
    collectives in backward; selective recompute (attention core only) adds none.

    ``parallel_block``: attention and MLP side by side off one norm (GPT-J, PaLM: y = x +
    Attention(LN(x)) + MLP(LN(x)), Chowdhery et al. 2022 sec. 2): the two row-parallel outputs are
    summed before one all-reduce, and in backward the two branches' input gradients are summed
    before one: 1 collective per pass instead of 2.
    """
    if recompute not in ("none", "selective", "full"):
        raise InputError(f"recompute must be none, selective or full, got {recompute!r}", field="recompute")
    fwd_passes = 2.0 if recompute == "full" else 1.0
    per = 1 if parallel_block else 2
    if sequence_parallel:
        return [Collective("all_gather", activation_bytes, group, per * (fwd_passes + 1), "sp all-gather"),
                Collective("reduce_scatter", activation_bytes, group, per * (fwd_passes + 1), "sp reduce-scatter")]
    return [Collective("all_reduce", activation_bytes, group, per * (fwd_passes + 1), "tp all-reduce")]


def pp_p2p_per_microbatch(activation_bytes: float, tp: int = 1, *, scatter_gather: bool = True,
                          interleave: int = 1) -> float:
    """Bytes one device sends to the next pipeline stage per micro-batch, forward activation plus
    backward gradient, b x s x h x dtype each. With Megatron's scatter/gather optimisation each of
    the t tensor-parallel ranks sends 1/t (Narayanan et al. 2021, arXiv:2104.04473, sec. 4.1:
    "reduced to bsh/t"); with an interleaved schedule of v model chunks per device a micro-batch
    crosses v times as many stage boundaries (sec. 2.2.2: "the amount of communication also
    increases by v")."""
    if tp < 1 or interleave < 1:
        raise InputError("tp and interleave must be >= 1", field="interleave")
    per = activation_bytes / tp if scatter_gather else activation_bytes
    return 2.0 * per * interleave


def pp_p2p_time_s(activation_bytes: float, node_or_links, *, crosses_domains: bool = True, tp: int = 1,
                  scatter_gather: bool = True, interleave: int = 1, **kw) -> float:
    """Time of one micro-batch's pipeline sends from one stage to the next: the forward
    activation and the backward gradient, each ``activation_bytes / tp`` with scatter/gather
    (see :func:`pp_p2p_per_microbatch`), ``interleave`` times."""
    per_message = pp_p2p_per_microbatch(activation_bytes, tp, scatter_gather=scatter_gather) / 2.0
    pair = Group(2, 1 if crosses_domains else 2)
    return 2.0 * interleave * collective_time_s("send_recv", per_message, pair, node_or_links, **kw)


def moe_all_to_all(token_bytes: float, group: Group, *, top_k: int = 1, capacity_factor: float = 1.0,
                   layers: int = 1) -> list[Collective]:
    """Expert-parallel all-to-alls: 2 per MoE layer in forward (dispatch, combine) and 2 in
    backward (GShard, Lepikhin et al. 2020, arXiv:2006.16668, sec. 3.2; Switch Transformer, Fedus
    et al. 2021, arXiv:2101.03961, sec. 2.2). ``token_bytes``: one rank's tokens x hidden x dtype;
    each token goes to ``top_k`` experts, buffers padded to ``capacity_factor``."""
    if top_k < 1 or capacity_factor <= 0 or layers < 0:
        raise InputError("top_k >= 1, capacity_factor > 0 and layers >= 0 required", field="top_k")
    nbytes = token_bytes * top_k * capacity_factor
    return [Collective("all_to_all", nbytes, group, 4 * layers, "moe dispatch/combine (2 fwd + 2 bwd)")]


def cp_ring_attention(kv_block_bytes: float, group: Group, *, layers: int = 1) -> list[Collective]:
    """Context parallelism with ring attention (H. Liu et al., "Ring Attention with Blockwise
    Transformers", arXiv:2310.01889; Megatron-LM context_parallel): each layer's forward passes
    the local K and V block (``kv_block_bytes`` = 2 x b x s/cp x kv_dim x dtype) around the ring,
    cp - 1 send/recv steps; backward passes K, V and their gradients (2 x the bytes). Modelled as
    point-to-point calls between neighbours, overlapped with the blockwise attention compute by
    the caller."""
    cp = group.size
    if cp <= 1:
        return []
    pair = Group(2, 2 if group.intra else 1)
    return [Collective("send_recv", kv_block_bytes, pair, (cp - 1) * layers, "cp ring kv (fwd)"),
            Collective("send_recv", 2.0 * kv_block_bytes, pair, (cp - 1) * layers, "cp ring kv + dkv (bwd)")]


def pipeline_bubble_fraction(pp: int, micro_batches: int, interleave: int = 1) -> float:
    """Pipeline bubble as a fraction of the ideal (bubble-free) compute time: (p-1)/m for GPipe and
    1F1B (PipeDream-Flush), (p-1)/(v m) with v interleaved model chunks per device (Narayanan et
    al. 2021, arXiv:2104.04473, sec. 2.2.1-2.2.2). The bubble's share of the whole step is
    b / (1 + b)."""
    if pp < 1 or micro_batches < 1 or interleave < 1:
        raise InputError("pp, micro_batches and interleave must be >= 1", field="micro_batches")
    return (pp - 1) / (interleave * micro_batches)


def pipeline_bubble_fraction_np(pp, micro_batches, interleave=1):
    pp, m, v = (np.asarray(x, dtype=float) for x in (pp, micro_batches, interleave))
    return (pp - 1.0) / (v * m)


# --------------------------------------------------------------------------- overlap with compute

# Parameter all-gathers FSDP keeps in flight ahead of the unit that computes: FSDP2 prefetches
# one unit ahead in forward and backward (PyTorch FSDP2 docs, "implicit prefetching":
# the all-gather of the next module is issued on a separate stream while the current one
# computes; fully_shard(..., reshard_after_forward=True) default); FSDP1 BACKWARD_PRE likewise.
FSDP_PREFETCH_UNITS = 1


def overlap_units_time_s(compute_s, pre_s, post_s, *, prefetch: int = FSDP_PREFETCH_UNITS) -> tuple[float, float]:
    """Elapsed time of units computed in order on one stream while one communication stream
    carries, for each unit, a collective that must finish before it computes (``pre``: FSDP's
    parameter all-gather) and one issued when it has computed (``post``: its gradient
    reduce-scatter). The communication stream runs its calls one at a time in issue order
    (NCCL kernels of one communicator serialise). ``prefetch`` = how many units ahead a ``pre``
    call may be issued: unit i's is issued when unit i - prefetch starts computing (0: when unit
    i - 1 has finished, no overlap of gathers). Returns (elapsed, communication time).

    A two-stage pipeline (Hockney-style resources, as in the FSDP paper's overlap analysis:
    Zhao et al., "PyTorch FSDP", VLDB 2023, sec. 3.3): the steady state runs at
    max(compute, pre + post) per unit, plus the first gather and the last reduce-scatter.
    """
    c = [float(x) for x in compute_s]
    pre = [float(x) for x in pre_s]
    post = [float(x) for x in post_s]
    n = len(c)
    if not (len(pre) == len(post) == n):
        raise InputError("compute_s, pre_s and post_s must have the same length", field="compute_s")
    if prefetch < 0:
        raise InputError(f"prefetch must be >= 0, got {prefetch}", field="prefetch")
    comm_free = 0.0
    comp_free = 0.0
    pre_end = [0.0] * n

    def issue(t: float, d: float) -> float:
        nonlocal comm_free
        if d <= 0.0:
            return t
        comm_free = max(comm_free, t) + d
        return comm_free

    if prefetch >= 1:
        for j in range(min(prefetch, n)):
            pre_end[j] = issue(0.0, pre[j])
    elif n:
        pre_end[0] = issue(0.0, pre[0])
    for i in range(n):
        start = max(comp_free, pre_end[i])
        if prefetch >= 1 and i + prefetch < n:
            pre_end[i + prefetch] = issue(start, pre[i + prefetch])
        comp_free = start + c[i]
        issue(comp_free, post[i])
        if prefetch == 0 and i + 1 < n:
            pre_end[i + 1] = issue(comp_free, pre[i + 1])
    return max(comp_free, comm_free), sum(pre) + sum(post)


def fsdp_exposed_s(gather_s, reduce_s, fwd_s, bwd_s, units, micro_batches, once_per_step):
    """FSDP / ZeRO-3 communication left exposed by a step of equal units (vectorised): the closed
    form of overlap_units_time_s with one unit of prefetch, as ShardedDataParallel.step runs it.
    Each micro-batch: ``units`` forwards of ``fwd_s`` after gathers of ``gather_s``, then as many
    backwards of ``bwd_s``, each after a re-gather and followed by a reduce-scatter of ``reduce_s``
    on the one communication stream. With A, R, F, B those four times and U units, the recurrence
    s(j+1) = s(j) + max(c(j), post(j-1) + pre(j+1)) of the units' start times gives

        one micro-batch  e1 = A + (U-1) max(F, A) + max(F, A) + max(B, A) + (U-2) max(B, R+A) + max(R, B) + R
        each further one d  = max(B, R+A) + max(F, R+A) + (U-2) max(F, A) + max(F, A) + max(B, A) + (U-2) max(B, R+A)

    (U = 1: e1 = A + max(F, A) + B + R, d = max(B, A) + max(F, R+A)), and the exposed time
    min(m U (2A + R), max(0, e1 + (m-1) d - m U (F + B))). ``once_per_step`` (under pipeline
    parallelism: gathered once, no backward re-gather, ShardedDataParallel.once_per_step):
    e1 = A + (U-1) max(F, A) + F + max(U B + R, B + U R) against U (F + B), at most U (A + R)."""
    A, R, F, B = (np.asarray(x, dtype=float) for x in (gather_s, reduce_s, fwd_s, bwd_s))
    U = np.asarray(units, dtype=float)
    m = np.asarray(micro_batches, dtype=float)
    mx = np.maximum
    one = U == 1
    e1 = np.where(one, A + mx(F, A) + B + R,
                  A + U * mx(F, A) + mx(B, A) + (U - 2) * mx(B, R + A) + mx(R, B) + R)
    d = np.where(one, mx(B, A) + mx(F, R + A),
                 mx(B, R + A) + mx(F, R + A) + (U - 1) * mx(F, A) + mx(B, A) + (U - 2) * mx(B, R + A))
    each = np.minimum(m * U * (2 * A + R), mx(0.0, e1 + (m - 1) * d - m * U * (F + B)))
    once = np.minimum(U * (A + R), mx(0.0, A + (U - 1) * mx(F, A) + F + mx(U * B + R, B + U * R) - U * (F + B)))
    return np.where(once_per_step, once, each)


# NCCL's collective kernels run on the GPU's SMs: a collective that overlaps compute holds its CTAs'
# SMs, so the compute beside it runs on the rest. Profiled on an H100 (132 SMs) overlapping a GEMM
# with an FSDP-style prefetch all-gather: the ncclAllGather kernel held 24 blocks (NVIDIA developer
# forum, "Compute-Communication Overlap Causes Severe GEMM Performance Degradation because of Tail
# Effect", https://forums.developer.nvidia.com/t/compute-communication-overlap-causes-severe-gemm-performance-degradation-because-of-tail-effect/337991).
# A count, not fitted; the SMs are the device spec's compute_units.
NCCL_OVERLAP_CTAS = 24


def overlap_slowdown(compute_units) -> float:
    """f / (1 - f), f = NCCL_OVERLAP_CTAS / the device's SMs: the compute time a second of hidden
    collective adds (0 where the device names no SM count, compute_units None)."""
    if not compute_units:
        return 0.0
    f = min(NCCL_OVERLAP_CTAS / float(compute_units), 0.5)
    return f / (1.0 - f)


def overlap_interference_s(hidden_s, compute_units):
    """Compute time added while collectives run hidden behind it (vectorised): the compute of that
    window runs on the SMs the collective's NCCL_OVERLAP_CTAS leave, f = CTAs / SMs of the device,
    so it takes 1 / (1 - f) as long: ``hidden_s`` x f / (1 - f) (overlap_slowdown)."""
    return np.maximum(np.asarray(hidden_s, dtype=float), 0.0) * overlap_slowdown(compute_units)


def fsdp_overlapped_s(gather_s, reduce_s, fwd_s, bwd_s, units, micro_batches, once_per_step, compute_units=None):
    """FSDP / ZeRO-3 communication's cost to a step (vectorised): what fsdp_exposed_s leaves
    exposed, plus the compute its hidden part slows (overlap_interference_s). The step's traffic is
    m U (2A + R) per step (U (A + R) ``once_per_step``), of which the exposed time is not hidden."""
    A, R = (np.asarray(x, dtype=float) for x in (gather_s, reduce_s))
    U = np.asarray(units, dtype=float)
    m = np.asarray(micro_batches, dtype=float)
    exposed = fsdp_exposed_s(A, R, fwd_s, bwd_s, U, m, once_per_step)
    total = np.where(once_per_step, U * (A + R), m * U * (2 * A + R))
    return exposed + overlap_interference_s(total - exposed, compute_units)


@dataclass(frozen=True)
class ShardedDataParallel:
    """Per-step communication of ZeRO-3 / FSDP over the data-parallel group, unit by unit.

    ``units`` FSDP units (one per decoder layer: FSDP2 ``fully_shard`` per block, Llama 3,
    torchtitan) each hold ``unit_param_bytes`` of gathered parameters (compute dtype) and
    ``unit_grad_bytes`` of gradients as reduced. Per micro-batch: an all-gather per unit in
    forward, again in backward when parameters are resharded after forward (ZeRO-3, FSDP
    FULL_SHARD; Rajbhandari et al. 2020 sec. 7: 3 x params per step), and a reduce-scatter per
    unit in backward (FSDP reduce-scatters every micro-batch unless gradient sync is disabled;
    ZeRO-3 partitions gradients as they are produced). ``calls_per_unit`` splits a unit's traffic
    into that many collectives (DeepSpeed ZeRO-3 of 2021 gathered parameter by parameter), each
    paying its own latency.

    ``once_per_step``: under pipeline parallelism the gathers and reduce-scatters run once per
    step, not per micro-batch: the stage keeps its parameters gathered (torchtitan's default
    ``reshard_after_forward=False`` with PP, "to avoid per-microbatch all-gathers, which can be
    expensive and non-overlapped") and accumulates unsharded gradients, reduce-scattered in the
    last micro-batch's backward (torch.distributed.pipelining's stage: "accumulate gradients on
    previous steps and reduce them on the last step"). The step then pays one forward of gathers
    and one backward of reduce-scatters, overlapped unit by unit as above."""

    units: int
    unit_param_bytes: float
    unit_grad_bytes: float
    group: Group
    reshard_after_forward: bool = True
    calls_per_unit: int = 1
    prefetch: int = FSDP_PREFETCH_UNITS
    once_per_step: bool = False
    backward_gathers: int = 1  # gathers per unit in backward when resharded (2: the recompute's own)
    # (op, nbytes) -> seconds of one call over ``group``, replacing this module's model (the
    # bridge's, so that groups across nodes of a cluster with measured scaling use it)
    time_fn: object = None

    def _call_s(self, op: str, nbytes: float, links, **kw) -> float:
        if self.time_fn is not None:
            return float(self.time_fn(op, nbytes))
        return collective_time_s(op, nbytes, self.group, links, **kw)

    def gather_s(self, links, **kw) -> float:
        k = max(1, int(self.calls_per_unit))
        return k * self._call_s("all_gather", self.unit_param_bytes / k, links, **kw)

    def reduce_s(self, links, **kw) -> float:
        k = max(1, int(self.calls_per_unit))
        return k * self._call_s("reduce_scatter", self.unit_grad_bytes / k, links, **kw)

    def step(self, fwd_compute_s: float, bwd_compute_s: float, micro_batches: int, links, **kw) -> CommTime:
        """Communication of one optimizer step with ``fwd_compute_s`` / ``bwd_compute_s`` of
        compute per unit and micro-batch: total time of the calls and what of it is left on the
        critical path after overlap (:func:`overlap_units_time_s`)."""
        if self.group.size <= 1 or self.units <= 0:
            return CommTime(0.0, 0.0, 0)
        if micro_batches < 1:
            raise InputError(f"micro_batches must be >= 1, got {micro_batches}", field="micro_batches")
        links = as_links(links)
        ag = self.gather_s(links, **kw)
        rs = self.reduce_s(links, **kw)
        U = int(self.units)
        reshard = self.reshard_after_forward and not self.once_per_step
        one_c = [fwd_compute_s] * U + [bwd_compute_s] * U
        bg = max(1, int(self.backward_gathers)) if reshard else 0
        one_pre = [ag] * U + [bg * ag] * U
        one_post = [0.0] * U + [rs] * U
        k = max(1, int(self.calls_per_unit))
        calls_mb = k * U * (2 + bg)
        if self.once_per_step:
            # first micro-batch's forward gathers, last one's backward reduce-scatters: the
            # exposed part is that of one micro-batch with every collective of the step.
            e1, c1 = overlap_units_time_s(one_c, one_pre, one_post, prefetch=self.prefetch)
            exposed = min(c1, max(0.0, e1 - U * (fwd_compute_s + bwd_compute_s)))
            return CommTime(c1, exposed, calls_mb)

        def run(m):
            return overlap_units_time_s(one_c * m, one_pre * m, one_post * m, prefetch=self.prefetch)

        e1, c1 = run(1)
        if micro_batches == 1:
            elapsed, total = e1, c1
        else:  # steady state from two micro-batches, extrapolated (each adds the same)
            e2, c2 = run(2)
            elapsed = e1 + (micro_batches - 1) * (e2 - e1)
            total = c1 * micro_batches
        compute = micro_batches * U * (fwd_compute_s + bwd_compute_s)
        exposed = min(total, max(0.0, elapsed - compute))
        return CommTime(total, exposed, calls_mb * micro_batches)
