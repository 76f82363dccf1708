"""Layout search: every valid training layout of a model on some hardware, evaluated at once.

How it works (stage by stage, as in the rest of the package):

1. enumerate: the axes (devices, tp, pp, virtual stages, cp, ep, ZeRO stage, micro-batch,
   recompute, sequence parallelism, optimizer offload) form a grid; divisibility and batch rules
   are evaluated per axis and broadcast, so invalid layouts are dropped before any arithmetic.
2. screen: memory uses the very formulas of :mod:`costmodel.memory` on arrays
   (:class:`~costmodel.memory.ParallelGrid`); step time composes per-layer operator times,
   collective times and optimizer times that depend on a few axes only, so each is computed once
   per distinct value on its small sub-grid (with the scalar models of training.py /
   comm_bridge.py) and gathered for every candidate.
3. refine: the best candidates of the screen (and the time/cost Pareto front) are re-estimated
   with :func:`costmodel.training.estimate_train`, the one scalar model every command reports,
   and ranked by it. The screen mirrors estimate_train's composition term by term
   (tests/test_search.py checks they agree); anything estimate_train adds beyond the screen
   can change the order only among the refined candidates.

No Python loop runs per candidate: loops run over the distinct values of a few axes.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from . import cluster, comm, comm_bridge, frameworks, steptime
from .comm import divisors as _divisors
from .arch import ModelConfig, load_model
from . import _callable_module
from .errors import InputError, require_positive, require_run
from .flops import train_step_flops
from .memory import (RECOMPUTE_CODES, ParallelGrid, framework_settings, hybrid_offload, peak_of, required_device_bytes, stage_params,
                     state_bytes_per_param, train_memory_terms)
from .roofline import efficiency_for, memory_op, prefetched, prefetch_gemms as _prefetch_gemms
from .specs import AcceleratorSpec, NodeSpec, load_library
from .workload import Parallel, TrainJob

Objective = Literal["step_time", "time_to_train", "cost", "cost_per_token", "mfu", "throughput"]
RECOMPUTE_NAMES = {v: k for k, v in RECOMPUTE_CODES.items()}
# Interleaved (virtual) pipeline stages tried; Megatron-LM needs the layers to split evenly over
# pp * v stages, the input embedding and the loss each counted as a layer where
# --account-for-embedding-in-pipeline-split / --account-for-loss-in-pipeline-split say so
# (megatron/training/arguments.py: layers + 1 or + 2), and the number of micro-batches a multiple of
# pp (megatron/core/pipeline_parallel/schedules.py).
DEFAULT_INTERLEAVE = (1, 2, 3, 4, 6, 8)
DEFAULT_CP = (1, 2, 4, 8)
DEFAULT_ZERO = (0, 1, 2, 3)
DEFAULT_RECOMPUTE = ("none", "selective", "full")
# Candidates re-estimated with the scalar model after the vectorised screen.
REFINE_MIN = 32
# A composed framework profile (costmodel.steptime) times layouts with mechanisms the screen does not
# have: this many times the pool is re-ranked with it.
REFINE_COMPOSED_FACTOR = 4
# Points of the screened time/cost Pareto front re-estimated for the report and the plot.
PARETO_MAX = 24
# Bounds on the work one search may ask for (a clear error naming the limit, not hours or a
# MemoryError): grid points of a training search (the product of the axes; the largest searches in
# the README, DeepSeek-V3 on 8..16384 devices, are ~25 million), serving layouts of an inference
# search (each costs two scalar estimates, ~1 ms), and device counts.
MAX_GRID_POINTS = 50_000_000
MAX_INFER_LAYOUTS = 20_000
MAX_DEVICES = 2**24


# ----------------------------------------------------------------------------------- results

class SearchLayout(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hardware: str
    devices: int
    tp: int
    pp: int
    dp: int
    cp: int
    ep: int
    interleave: int
    sequence_parallel: bool
    zero_stage: int
    micro_batch: int
    grad_accum: int
    recompute: str
    offload_optimizer: str
    etp: int | None = None  # expert tensor parallel where the search set one (Parallel.etp; None: tp)


class SearchCandidate(BaseModel):
    """One ranked layout, with the scalar model's numbers (the same as `costmodel train`)."""

    model_config = ConfigDict(extra="forbid")
    rank: int
    layout: SearchLayout
    step_s: float
    tokens_per_s: float
    mfu: float
    hfu: float  # hardware FLOPs (recompute included) / peak
    tflops_per_device: float  # model FLOPs per second per device (6N-style, no recompute)
    hardware_tflops_per_device: float  # with recompute: Megatron-LM 2021 eq. 3's convention
    peak_bytes: float
    required_bytes: float
    capacity_bytes: float
    memory_fraction: float
    cost_per_million_tokens_usd: float | None
    run_days: float | None
    run_cost_usd: float | None
    step_breakdown_s: dict[str, float]
    memory_breakdown_bytes: dict[str, float]
    screen_step_s: float  # the vectorised screen's estimate (same model, fewer terms)
    # the mean step time over runs of this layout, with the cluster's stall risk weighed in
    # (TrainEstimate.expected_step_s; step_s where there is none): what the objective ranks by
    expected_step_s: float
    # where the cluster stalls cross-node pipeline sends (TrainEstimate.pipeline_stall), for the
    # candidates re-estimated with estimate_train
    pipeline_stall: dict | None = None

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


class SearchResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    hardware: list[str]
    devices: list[int]
    global_batch: int
    seq_len: int
    framework: str = "megatron"  # the framework profile the layouts were timed as
    precision: str = "amp-bf16"
    switches: list[str] = Field(default_factory=list)  # Megatron-style switches set (TrainJob.switches)
    objective: str
    enumerated: int  # grid points, before divisibility rules
    evaluated: int  # layouts whose memory and time were computed
    feasible: int  # of those, the ones that fit in memory
    seconds: float
    rejected: dict[str, int]  # reason -> grid points
    top: list[SearchCandidate]
    pareto: list[SearchCandidate] = Field(default_factory=list)  # step time vs cost per token

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


# ----------------------------------------------------------------------------------- axes

def _pow2_upto(n: int) -> list[int]:
    out, v = [], 1
    while v <= n:
        out.append(v)
        v *= 2
    return out


def device_counts(spec: str | int | Sequence[int]) -> list[int]:
    """`64`, `[8, 16]`, or a range "8..16384" (every power of two in it, and both ends)."""
    shown = repr(spec) if len(repr(spec)) <= 60 else repr(spec)[:60] + "..."
    if isinstance(spec, int):
        counts = [spec]
    elif isinstance(spec, str):
        s = spec.strip()
        try:
            if ".." in s:
                lo_s, hi_s = s.split("..", 1)
                lo, hi = int(lo_s), int(hi_s)
                if lo < 1 or hi < lo:
                    raise ValueError
                if hi > MAX_DEVICES:
                    raise InputError(f"{hi:,} devices is more than costmodel searches (at most {MAX_DEVICES:,})",
                                     field="devices")
                counts = sorted({lo, hi, *(p for p in _pow2_upto(hi) if p >= lo)})
            else:
                counts = [int(x) for x in s.replace(" ", "").split(",") if x]
        except ValueError:
            raise InputError(f"devices {shown}: expected N, N1,N2,... or LO..HI with 1 <= LO <= HI",
                             field="devices") from None
    else:
        counts = [int(x) for x in spec]
    if not counts or any(c < 1 for c in counts):
        raise InputError(f"devices {shown}: expected positive counts", field="devices")
    if max(counts) > MAX_DEVICES:
        raise InputError(f"{max(counts):,} devices is more than costmodel searches (at most {MAX_DEVICES:,})", field="devices")
    return sorted(set(counts))


@dataclass(frozen=True)
class _Axes:
    devices: np.ndarray
    tp: np.ndarray
    pp: np.ndarray
    v: np.ndarray
    cp: np.ndarray
    ep: np.ndarray
    zero: np.ndarray
    mb: np.ndarray
    rc: np.ndarray
    sp: np.ndarray
    off: np.ndarray
    # Megatron-core's expert tensor-parallel size for every candidate (Parallel.etp): None, tp (the
    # default); a number, that many where it divides tp (1: tp folded into ep). Not an axis: a
    # search runs one grid per value. ``etp_folded_only``: this grid only adds the layouts the
    # default grid cannot hold (ep not dividing dp x cp), the search having chosen etp itself.
    etp: int | None = None
    etp_folded_only: bool = False

    names = ("devices", "tp", "pp", "v", "cp", "ep", "zero", "mb", "rc", "sp", "off")

    def etp_of(self, tp):
        """The expert tensor-parallel size of candidates of tensor-parallel size ``tp`` (works on
        arrays; where etp does not divide tp, tp: such candidates are invalid, _valid_mask)."""
        if self.etp is None:
            return tp
        return np.where(np.asarray(tp) % self.etp == 0, self.etp, tp) if np.ndim(tp) else (
            self.etp if int(tp) % self.etp == 0 else int(tp))

    def shape(self) -> tuple[int, ...]:
        return tuple(len(getattr(self, n)) for n in self.names)

    def along(self, name: str) -> np.ndarray:
        """The axis' values shaped to broadcast against the full grid."""
        i = self.names.index(name)
        shape = [1] * len(self.names)
        shape[i] = -1
        return getattr(self, name).reshape(shape)


def scale_up_domain(node) -> int:
    """The devices one tensor-parallel group may span on the scale-up fabric: the node's NVLink / ICI
    domain, which may exceed one host (a GB200 NVL72 rack: 72 GPUs over 4-GPU trays; a TPU pod's
    torus over 4-chip hosts); 8 (an HGX baseboard) without a node spec."""
    return max(node.devices_per_node, node.scale_up.size) if node is not None else 8


def _axes(model: ModelConfig, counts: list[int], devices_per_node: int, global_batch: int, seq_len: int,
          *, tp=None, pp=None, interleave=None, cp=None, ep=None, zero=None, micro_batch=None,
          recompute=None, sequence_parallel=None, offload=None, etp=None, etp_folded_only=False) -> _Axes:
    hi = max(counts)
    # tensor parallelism inside a node's scale-up domain only (its per-layer collectives are exposed)
    tps = tp or [t for t in _pow2_upto(min(hi, max(devices_per_node, 1))) if t <= hi]
    pps = pp or sorted({*_divisors(model.layers), *_pow2_upto(min(hi, model.layers))})
    pps = [p for p in pps if p <= min(hi, model.layers)]
    vs = interleave or list(DEFAULT_INTERLEAVE)
    cps = cp or [c for c in DEFAULT_CP if c <= hi]
    if model.moe:
        eps = ep or [e for e in _divisors(model.moe.experts) if e <= hi]
    else:
        eps = ep or [1]
    zs = zero if zero is not None else list(DEFAULT_ZERO)
    mbs = micro_batch or [m for m in _pow2_upto(min(global_batch, 64))]
    rcs = [RECOMPUTE_CODES[r] for r in (recompute or DEFAULT_RECOMPUTE)]
    sps = sequence_parallel if sequence_parallel is not None else [False, True]
    offs = offload if offload is not None else [False, True]
    as_i = lambda xs: np.asarray(sorted(set(int(x) for x in xs)), dtype=np.int64)  # noqa: E731
    return _Axes(np.asarray(counts, dtype=np.int64), as_i(tps), as_i(pps), as_i(vs), as_i(cps), as_i(eps), as_i(zs),
                 as_i(mbs), as_i(rcs), np.asarray(sorted(set(bool(s) for s in sps))),
                 np.asarray(sorted(set(bool(o) for o in offs))), None if etp is None else int(etp),
                 bool(etp_folded_only))


def _check_grid(ax: _Axes) -> None:
    """InputError when the grid of layouts is larger than MAX_GRID_POINTS, naming its axes."""
    shape = ax.shape()
    n = math.prod(shape)
    if n > MAX_GRID_POINTS:
        sizes = " x ".join(f"{len(getattr(ax, a))} {a}" for a in ax.names if len(getattr(ax, a)) > 1)
        raise InputError(f"the layout grid has {n:,} points ({sizes}), over the limit of {MAX_GRID_POINTS:,}: "
                         "restrict --devices, --micro-batch, --tp, --pp, --interleave, --cp, --ep or --zero-stage",
                         field="devices")


def _valid_mask(model: ModelConfig, ax: _Axes, global_batch: int, seq_len: int, devices_per_node: int,
                tp_comm_overlap: bool = False, pipeline_zero=None):
    """Boolean grid of layouts that satisfy every rule, and grid points rejected per reason
    (the first failed rule counts). ``pipeline_zero``: the ZeRO stages the framework runs beside a
    pipeline (None: any; settings.pipeline_zero_stages)."""
    N, tp, pp, v, cp, ep = (ax.along(n) for n in ("devices", "tp", "pp", "v", "cp", "ep"))
    zero, mb, sp = ax.along("zero"), ax.along("mb"), ax.along("sp")
    mp = tp * pp * cp
    dp = N // mp
    kv = model.n_kv_heads
    rules = [
        ("tp must divide heads (and kv heads, or be a multiple of them)",
         (model.heads % tp == 0) & ((kv % tp == 0) | (tp % kv == 0))),
        ("tp larger than a node's scale-up domain", tp <= max(devices_per_node, 1)),
        ("devices not divisible by tp*pp*cp", N % mp == 0),
        ("interleaving needs pp > 1 and layers (+1, +2: embedding, loss) divisible by pp*v",
         (v == 1) | ((pp > 1) & ((model.layers % (pp * v) == 0) | ((model.layers + 1) % (pp * v) == 0)
                                 | ((model.layers + 2) % (pp * v) == 0)))),
        ("cp must split the sequence in 2*cp chunks", seq_len % (2 * cp) == 0),
        ("ep must divide dp*cp", ((dp * cp) % ep == 0) & (dp >= 1)) if ax.etp is None else
        ("ep x etp must divide tp*dp*cp (etp dividing tp)",
         (tp % ax.etp == 0) & ((tp * dp * cp) % (ep * ax.etp) == 0) & (dp >= 1)),
        ("global batch not divisible by micro-batch x dp", (dp >= 1) & (global_batch % np.maximum(mb * dp, 1) == 0)),
        ("interleaving needs micro-batches divisible by pp",
         (v == 1) | ((global_batch // np.maximum(mb * dp, 1)) % pp == 0)),
        ("duplicate (ZeRO stage without data parallelism)", (zero == 0) | (dp * cp > 1)),
        ("duplicate (sequence parallelism without tp)", (~sp) | (tp > 1)),
        ("--tp-comm-overlap needs sequence parallelism", (not tp_comm_overlap) | sp | (tp == 1)),
    ]
    if pipeline_zero is not None:
        rules.append((f"ZeRO stage not run beside a pipeline (the framework's: {', '.join(map(str, pipeline_zero))})",
                      (pp == 1) | np.isin(zero, list(pipeline_zero))))
    if ax.etp_folded_only:  # what only folding makes possible; the rest is the default grid's
        rules.append(("duplicate (ep divides dp*cp: the default grid's)", (dp * cp) % ep != 0))
    shape = ax.shape()
    # No rule reads the recompute or offload axes: the rules are evaluated on the grid without them
    # (each point there stands for len(rc) * len(off) layouts) and the mask broadcast over them.
    free = [ax.names.index("rc"), ax.names.index("off")]
    reduced = tuple(1 if i in free else n for i, n in enumerate(shape))
    per_point = math.prod(shape[i] for i in free)
    ok = np.ones(reduced, dtype=bool)
    rejected: dict[str, int] = {}
    for reason, cond in rules:
        cond = np.broadcast_to(cond, reduced)
        n = int(np.count_nonzero(ok & ~cond)) * per_point
        if n:
            rejected[reason] = n
        ok &= cond
    return np.broadcast_to(ok, shape), rejected


def _valid_flat(ax: _Axes, ok: np.ndarray) -> np.ndarray:
    """np.flatnonzero(ok) for a mask of _valid_mask (the same along the recompute and offload axes,
    the innermost but sp): found per block of those innermost axes, over the blocks with a valid
    layout only, instead of over the whole grid."""
    rc, sp, off = (ax.names.index(n) for n in ("rc", "sp", "off"))
    if (rc, sp, off) != (len(ax.names) - 3, len(ax.names) - 2, len(ax.names) - 1):
        return np.flatnonzero(ok)
    shape = ok.shape
    n_sp = shape[sp]
    per_sp = ok[..., :1, :, :1].reshape(-1, n_sp)  # each (devices..mb) prefix: which sp are valid
    blocks = np.flatnonzero(per_sp.any(axis=1))
    inner = np.broadcast_to(per_sp[blocks][:, None, :, None], (len(blocks),) + shape[rc:])
    local = np.flatnonzero(inner)
    size = int(np.prod(shape[rc:]))
    return blocks[local // size] * size + local % size


# ----------------------------------------------------------------------------------- tables

def _subgrid_table(fn, *axes: np.ndarray, width: int | None = None, only: np.ndarray | None = None) -> np.ndarray:
    """fn(*values) for every combination of the given axes' values (a small product); a function
    returning `width` numbers fills a trailing axis of that length. ``only``: a mask of the
    combinations wanted (the others are NaN)."""
    shape = tuple(len(a) for a in axes)
    out = np.empty(shape if width is None else shape + (width,), dtype=float)
    todo = np.ndindex(*shape)
    if only is not None:
        out.fill(np.nan)
        todo = (tuple(int(i) for i in idx) for idx in np.argwhere(only))
    for idx in todo:
        out[idx] = fn(*(int(a[i]) if a.dtype != bool else bool(a[i]) for a, i in zip(axes, idx)))
    return out


@dataclass
class _Flat:
    """Valid candidates as flat arrays of axis indices and values."""

    idx: dict[str, np.ndarray]
    val: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.idx["tp"])


def _flatten(ax: _Axes, ok: np.ndarray) -> _Flat:
    return _flat_of(ax, ok.shape, np.flatnonzero(ok))


# ----------------------------------------------------------------------------------- screen

def _dtype_for(job: TrainJob, spec: AcceleratorSpec) -> str:
    from .training import step_dtype

    return step_dtype(job, spec)


def screen(model: ModelConfig, spec: AcceleratorSpec, node: NodeSpec | None, job: TrainJob, ax: _Axes, c: _Flat,
           calibration: str | None = None, capacity_bytes: float | None = None) -> dict[str, np.ndarray]:
    """Memory and step time of every candidate in `c` (arrays), term by term as estimate_train.
    With `capacity_bytes`, step time is computed only for the candidates that fit (inf for the
    rest): memory rejects most of a large space and costs a fraction of the time terms."""
    out = _memory_of(model, job, c)
    keep = np.flatnonzero(out["required_bytes"] <= capacity_bytes) if capacity_bytes is not None else np.arange(len(c))
    return _with_times(out, c, keep, lambda sub: _screen_time(model, spec, node, job, ax, sub, calibration))


def _with_times(out: dict, c: _Flat, sel: np.ndarray, times_of) -> dict:
    """``out`` with the step-time terms of the candidates ``c[sel]`` (``times_of`` on them) and inf
    for the others (those that do not fit)."""
    sub = _Flat({k: a[sel] for k, a in c.idx.items()}, {k: a[sel] for k, a in c.val.items()})
    times = times_of(sub) if len(sub) else {}
    for k in _TIME_KEYS:
        arr = np.full(len(c), np.inf)
        if len(sub):
            arr[sel] = times[k]
        out[k] = arr
    return out


# Candidates screened at once: memory stays bounded (a few dozen arrays of this length) and the
# arrays of one chunk stay in the processor's cache between the screen's many elementwise steps.
SCREEN_CHUNK = 1 << 15


def _flat_of(ax: _Axes, shape: tuple, flat: np.ndarray) -> _Flat:
    """Candidates given by their flat indices in the grid, as _Flat (indices and values per axis;
    and their expert tensor-parallel size, "etp", where the search sets one)."""
    idx = dict(zip(ax.names, np.unravel_index(flat, shape)))
    val = {n: getattr(ax, n)[idx[n]] for n in ax.names}
    if ax.etp is not None:
        val["etp"] = ax.etp_of(val["tp"])
    return _Flat(idx, val)


def _memory_of(model: ModelConfig, job: TrainJob, c: _Flat) -> dict[str, np.ndarray]:
    """Peak and required bytes per device of candidates (the formulas of costmodel.memory on arrays)."""
    v = c.val
    tp, pp, cp, mb, N = v["tp"], v["pp"], v["cp"], v["mb"], v["devices"]
    dp = N // (tp * pp * cp)
    n_micro = job.global_batch // (mb * dp)
    grid = ParallelGrid(tp=tp, pp=pp, dp=dp, cp=cp, ep=v["ep"], sequence_parallel=v["sp"] & (tp > 1),
                        zero_stage=v["zero"], interleave=v["v"], etp=v.get("etp"))
    mem = train_memory_terms(model, job, grid, micro_batch=mb, n_micro=n_micro, recompute=v["rc"],
                             offload_optimizer=v["off"])
    peak = peak_of(mem["candidates"])
    return dict(peak_bytes=peak, required_bytes=required_device_bytes(peak), dp=dp, n_micro=n_micro)


# The innermost axes of the grid, which no layout rule reads but sp (_valid_mask): the memory pass
# evaluates the formulas once per point of the other axes and broadcasts over these.
_INNER_AXES = ("rc", "sp", "off")


def _memory_chunks(model: ModelConfig, job: TrainJob, ax: _Axes, shape: tuple, flat: np.ndarray, chunk: int):
    """(start, stop, candidates' axis indices, required bytes) of the candidates ``flat`` (sorted
    flat grid indices), about ``chunk`` at a time. The memory formulas run on arrays broadcast over
    the innermost axes (_INNER_AXES: a block of them per point of the outer axes that holds a
    candidate), so the terms that do not read those axes are computed once per block; the
    candidates' numbers are then picked from their blocks. The same elementwise formulas on the
    same values as _memory_of on the candidates one by one (identical numbers)."""
    k = len(_INNER_AXES)
    if ax.names[-k:] != _INNER_AXES:  # another order of axes: candidate by candidate
        for a in range(0, len(flat), chunk):
            c = _flat_of(ax, shape, flat[a:a + chunk])
            yield a, min(len(flat), a + chunk), c, _memory_of(model, job, c)["required_bytes"]
        return
    outer, inner = shape[:-k], shape[-k:]
    size = math.prod(inner)
    block_of, local = np.divmod(flat, size)
    # where each block's candidates start in flat (flat is sorted: a block's candidates are adjacent)
    starts = np.flatnonzero(np.concatenate(([True], block_of[1:] != block_of[:-1]))) if len(flat) else np.zeros(0, int)
    blocks = block_of[starts]
    local_idx = np.unravel_index(local, inner)
    inner_vals = []
    for j, name in enumerate(_INNER_AXES):
        shp = [1] * (k + 1)
        shp[j + 1] = -1
        inner_vals.append(getattr(ax, name).reshape(shp))
    per = max(1, chunk // size)
    for s0 in range(0, len(blocks), per):
        s1 = min(len(blocks), s0 + per)
        a, b = int(starts[s0]), int(starts[s1]) if s1 < len(blocks) else len(flat)
        bidx = np.unravel_index(blocks[s0:s1], outer)
        val = {n: getattr(ax, n)[i].reshape((-1,) + (1,) * k) for n, i in zip(ax.names, bidx)}
        val.update(zip(_INNER_AXES, inner_vals))
        if ax.etp is not None:  # as _flat_of sets it
            val["etp"] = ax.etp_of(val["tp"])
        req = _memory_of(model, job, _Flat({}, val))["required_bytes"]
        req = np.broadcast_to(req, (s1 - s0,) + inner).reshape(s1 - s0, size)
        row = np.repeat(np.arange(s1 - s0), np.diff(np.append(starts[s0:s1], b)))
        idx = {n: i[row] for n, i in zip(ax.names, bidx)}
        idx.update((n, i[a:b]) for n, i in zip(_INNER_AXES, local_idx))
        yield a, b, _Flat(idx, {}), req[row, local[a:b]]


class _Screened:
    """One hardware's screen, in chunks of SCREEN_CHUNK candidates: memory for all, then step time
    for those that fit (inf for the rest), from tables of the distinct sub-layouts built once
    (_time_model). Kept per candidate: its grid index, required bytes and step time; the other
    terms are recomputed for the few candidates reported (rows)."""

    def __init__(self, model: ModelConfig, spec, node, job: TrainJob, ax: _Axes, shape: tuple, flat: np.ndarray,
                 calibration, capacity_bytes: float, on_chunk=None):
        self.model, self.job, self.ax, self.shape, self.flat = model, job, ax, shape, flat
        self._kept: dict[int, dict] = {}
        n = len(flat)
        chunk = SCREEN_CHUNK
        self.required = np.empty(n)
        used = np.zeros(tuple(len(getattr(ax, a)) for a in _DP_AXES), dtype=bool)
        used_layers = np.zeros(tuple(len(getattr(ax, a)) for a in _LAYER_AXES), dtype=bool)
        small = max(len(getattr(ax, k)) for k in ax.names) < 256
        kept_idx = []  # the axis indices of the layouts that fit, one byte each (not unravelled again)
        for a, b, c, req in _memory_chunks(model, job, ax, shape, flat, chunk):
            self.required[a:b] = req
            fit = req <= capacity_bytes
            if fit.any():
                fit_idx = {k: i[fit] for k, i in c.idx.items()}
                used[tuple(fit_idx[k] for k in _DP_AXES)] = True
                used_layers[tuple(fit_idx[k] for k in _LAYER_AXES)] = True
                if small:
                    kept_idx.append(np.stack([fit_idx[k] for k in ax.names]).astype(np.uint8))
            if on_chunk is not None:
                on_chunk(b // 2)
        self.fits = self.required <= capacity_bytes
        self.step_s = np.full(n, np.inf)
        self.expected_s = np.full(n, np.inf)  # with the cluster's stall risk weighed in: what candidates are ranked by
        self.times = _time_model(model, spec, node, job, ax, used, calibration, used_layers)
        keep = np.flatnonzero(self.fits)
        kept_idx = np.concatenate(kept_idx, axis=1) if small and kept_idx else None
        tchunk = len(keep) if getattr(self.times, "composed", False) else chunk  # composed: its tables once
        for a in range(0, len(keep), max(tchunk, 1)):
            sel = keep[a:a + tchunk]
            if kept_idx is not None:
                idx = {k: kept_idx[j, a:a + tchunk].astype(np.intp) for j, k in enumerate(ax.names)}
                c = _Flat(idx, {k: getattr(ax, k)[idx[k]] for k in ax.names})
            else:
                c = _flat_of(ax, shape, flat[sel])
            got = self.times(c)
            self.step_s[sel] = got["step_s"]
            self.expected_s[sel] = got["expected_s"]
            if on_chunk is not None:
                on_chunk(n // 2 + (a + len(sel)) * (n - n // 2) // max(len(keep), 1))
        if on_chunk is not None:
            on_chunk(n)

    @property
    def devices(self) -> np.ndarray:
        """Each candidate's device count."""
        if getattr(self, "_devices", None) is None:
            self._devices = self.ax.devices[self.flat // int(np.prod(self.shape[1:]))]
        return self._devices

    def flat_of(self, rows) -> _Flat:
        return _flat_of(self.ax, self.shape, self.flat[np.asarray(rows, dtype=np.int64)])

    def prefetch(self, rows) -> None:
        """rows() of these candidates at once, kept for rows([i]) of each of them."""
        rows = sorted(set(int(i) for i in rows) - set(self._kept))
        if rows:
            got = self.rows(rows)
            for j, i in enumerate(rows):
                self._kept[i] = {k: a[j:j + 1] for k, a in got.items()}

    def rows(self, rows) -> dict[str, np.ndarray]:
        """Everything screen() reports, for the candidates ``rows`` (step time: inf where they do not fit)."""
        if len(rows) == 1 and int(rows[0]) in self._kept:
            return self._kept[int(rows[0])]
        c = self.flat_of(rows)
        out = _memory_of(self.model, self.job, c)
        return _with_times(out, c, self.fits[np.asarray(rows, dtype=np.int64)], self.times)


_TIME_KEYS = ("step_s", "expected_s", "compute_s", "attention_s", "elementwise_s", "host_overhead_s", "tp_comm_s", "dp_comm_exposed_s",
              "fsdp_comm_exposed_s", "pp_comm_s", "bubble_s", "optimizer_s", "ep_comm_s", "cp_comm_s", "offload_s")


def _screen_time(model: ModelConfig, spec: AcceleratorSpec, node: NodeSpec | None, job: TrainJob, ax: _Axes, c: _Flat,
                 calibration: str | None = None) -> dict[str, np.ndarray]:
    return _time_model(model, spec, node, job, ax, _used_points(ax, c), calibration)(c)


_DP_AXES = ("devices", "tp", "pp", "cp", "ep", "zero")


def _used_points(ax: _Axes, c: _Flat, used: np.ndarray | None = None) -> np.ndarray:
    """The (devices, tp, pp, cp, ep, zero) points of the grid that candidates ``c`` use (added to
    ``used``): the data-parallel terms are set up once per point."""
    if used is None:
        used = np.zeros(tuple(len(getattr(ax, n)) for n in _DP_AXES), dtype=bool)
    used[tuple(c.idx[n] for n in _DP_AXES)] = True
    return used


# Time models built (_time_model), by their inputs: a search repeated with the same inputs (a
# notebook, a benchmark, a sweep over objectives) reuses the tables of the distinct sub-layouts.
_TIME_MODELS: dict = {}
MAX_TIME_MODELS = 8


def _time_model(model: ModelConfig, spec: AcceleratorSpec, node: NodeSpec | None, job: TrainJob, ax: _Axes,
                used: np.ndarray, calibration: str | None = None, used_layers: np.ndarray | None = None):
    """_build_time_model, remembered per inputs (the parsed model, spec, node and efficiency model
    by identity, the job, the axes and the sub-layouts used)."""
    import hashlib

    eff = efficiency_for(spec, calibration)
    digest = lambda a: None if a is None else (a.shape, hashlib.blake2b(np.packbits(a).tobytes(), digest_size=16).digest())  # noqa: E731
    try:
        key = (id(model), id(spec), id(node), id(eff), job, tuple(tuple(getattr(ax, n).tolist()) for n in ax.names),
               ax.etp, digest(used), digest(used_layers))
        hit = _TIME_MODELS.get(key)
    except TypeError:  # an input that does not hash: build it
        return _build_time_model(model, spec, node, job, ax, used, calibration, used_layers)
    if hit is not None and all(a is b for a, b in zip(hit[0], (model, spec, node, eff))):
        return hit[1]
    times = _build_time_model(model, spec, node, job, ax, used, calibration, used_layers)
    if len(_TIME_MODELS) >= MAX_TIME_MODELS:
        _TIME_MODELS.clear()
    _TIME_MODELS[key] = ((model, spec, node, eff), times)
    return times


# The axes of the per-layer table (and of its mask of sub-layouts used, used_layers)
_LAYER_AXES = ("tp", "ep", "mb", "cp", "sp")


def _dp_point_table(model: ModelConfig, job: TrainJob, ax: _Axes, used: np.ndarray, link, link_coll, eff, st,
                    stage_total, opt_per_param: float, opt_time):
    """The data-parallel terms of every used (devices, tp, pp, cp, ep, zero) point of the grid
    (_DP_AXES), as training.estimate_train has them for a layout: (table of 7 columns per point
    index: an FSDP unit's gather and reduce-scatter, the gradient reduction, the optimizer step, the
    stage's parameters, whether the group sits in one node, ZeRO-2's repeated reduce-scatter; the
    point's row of the DeepSpeed tables per point index; DeepSpeed ZeRO-3's per-sub-module gathers
    and reductions per row)."""
    from . import training as tr

    grad_per_param = tr.dp_grad_bytes_per_param(job)
    # Data-parallel traffic per used (devices, tp, pp, cp, ep, zero) point: the groups are set up
    # point by point (link.dp_intra / dp_ranks_per_node), the collectives evaluated in one
    # vectorised call per op (_batched_collectives, the bridge's model on arrays).
    shape = used.shape
    points = np.argwhere(used)
    n_pts = len(points)
    opt_pts, P_pts = np.zeros(n_pts), np.zeros(n_pts)
    req: dict[str, list] = {}  # op -> [(point, slot, weight, nbytes, world, intra, per_node)]
    ddp_nvlink = np.zeros(n_pts)  # the group inside one node (training.dp_overlap_share)
    # DeepSpeed ZeRO-3 (training.deepspeed_zero3_exposed_s): per point, each sub-module's gather
    # and gradient all-reduce
    deepspeed = job.framework == "deepspeed"
    n_mod = len(tr.deepspeed_zero3_modules(model)[0])
    ds_gather, ds_reduce = np.zeros((n_pts, n_mod)), np.zeros((n_pts, n_mod))
    for j, idx in enumerate(points):
        N_, tp_, pp_, cp_, ep_, z_ = (int(getattr(ax, n)[i]) for n, i in zip(_DP_AXES, idx))
        dp_ = N_ // (tp_ * pp_ * cp_)
        world = dp_ * cp_
        Pst = stage_total(tp_, pp_, ep_)
        P_pts[j] = Pst
        opt_pts[j] = opt_time(opt_per_param * Pst / (world if z_ >= 1 else 1))
        if world <= 1:
            continue
        par = Parallel(tp=tp_, pp=pp_, dp=dp_, cp=cp_, ep=ep_, zero_stage=z_, etp=ax.etp_of(tp_))
        grad_bytes = grad_per_param * Pst
        g = (world, link.dp_intra(par), link.dp_ranks_per_node(par))
        if z_ >= 3 and deepspeed and pp_ == 1:  # DeepSpeed 2021 ZeRO-3, sub-module by sub-module
            ds_gather[j], ds_reduce[j] = tr.deepspeed_zero3_calls_s(link_coll, eff, model, tp_, Pst, grad_bytes,
                                                                    max(1, -(-model.layers // pp_)), *g)
        elif z_ >= 3:  # slots 0 and 1: gather and reduce-scatter of one FSDP unit (a layer)
            units = max(1, -(-model.layers // pp_))
            req.setdefault("all_gather", []).append((j, 0, 1.0, 2.0 * Pst / units) + g)
            req.setdefault("reduce_scatter", []).append((j, 1, 1.0, grad_bytes / units) + g)
        else:  # slot 2: the DP gradient reduction; slot 3: the reduce-scatter ZeRO-2 repeats
            for part, op, calls, nbytes in tr.dp_collectives(job.framework, z_, grad_bytes, st.weights * Pst):
                req.setdefault(op, []).append((j, 2 if part == "reduction" else 3, float(calls), float(nbytes)) + g)
            ddp_nvlink[j] = g[1]
    slots = np.zeros((n_pts, 4))
    for op, rows in req.items():
        arr = np.array(rows, dtype=float)
        t = _batched_collectives(link, op, arr[:, 3], arr[:, 4].astype(int), arr[:, 5].astype(bool), arr[:, 6].astype(int))
        np.add.at(slots, (arr[:, 0].astype(int), arr[:, 1].astype(int)), arr[:, 2] * t)
    tabs = np.zeros(shape + (7,))
    tabs[tuple(points.T)] = np.column_stack([slots[:, :3], opt_pts, P_pts, ddp_nvlink, slots[:, 3]])
    tabs = tabs.reshape(-1, 7)
    pt_of = np.full(int(np.prod(shape)), -1)
    pt_of[np.ravel_multi_index(tuple(points.T), shape)] = np.arange(n_pts)
    return tabs, pt_of, ds_gather, ds_reduce


def _build_time_model(model: ModelConfig, spec: AcceleratorSpec, node: NodeSpec | None, job: TrainJob, ax: _Axes,
                      used: np.ndarray, calibration: str | None = None, used_layers: np.ndarray | None = None):
    """The step time of candidates as a function of them: the terms that depend on a few axes only
    are computed here, once per distinct sub-layout (per-layer operator times per (tp, ep, mb, cp,
    sp), collectives per their axes, data-parallel terms per ``used`` (devices, tp, pp, cp, ep,
    zero) point); the returned function gathers and composes them for any candidates whose
    data-parallel points are in ``used`` (a chunk at a time, or a handful to report)."""
    from . import training as tr

    prof = frameworks.resolve(job.profile or job.framework)
    eff = tr.step_efficiency(spec, calibration, prof)
    dtype = _dtype_for(job, spec)

    # --- per-layer operator times per (tp, ep, mb, cp): the scalar roofline, once per value
    seq_dev_of = lambda cp_: max(1, job.seq_len // cp_)  # noqa: E731

    def layer(tp_, ep_, mb_, cp_, sp_, eff_=eff):
        par = Parallel(tp=tp_, ep=ep_, dp=ep_, cp=cp_, sequence_parallel=bool(sp_) and tp_ > 1, etp=ax.etp_of(tp_))
        return tr._layer_times(eff_, model, job, par, mb_, seq_dev_of(cp_), dtype, spec)

    # every GEMM shape of every sub-layout through the calibrated curve in one vectorised call first
    _prefetch_gemms(eff, lambda e: _subgrid_table(lambda *a: layer(*a, eff_=e), ax.tp, ax.ep, ax.mb, ax.cp, ax.sp,
                                                  width=6, only=used_layers),
        key=("layers", id(model), job, dtype, id(spec), ax.etp, *(tuple(getattr(ax, n).tolist()) for n in _LAYER_AXES),
             None if used_layers is None else np.packbits(used_layers).tobytes()))
    with prefetched():
        parts_tab = _subgrid_table(layer, ax.tp, ax.ep, ax.mb, ax.cp, ax.sp, width=6, only=used_layers)

    def head_loss(tp_, mb_, cp_):
        tokens_mb = mb_ * seq_dev_of(cp_)
        hf = tr._gemm(eff, "lm_head", tokens_mb, model.hidden, max(1, model.vocab // tp_), tr.head_dtype(dtype))
        return 3 * hf + tr.cross_entropy_s(eff, job, tokens_mb, model.vocab, tp_, prof), hf

    head_tab = _subgrid_table(head_loss, ax.tp, ax.mb, ax.cp, width=2)

    # --- communication: the scalar link models, once per distinct sub-grid value
    try:
        link = comm_bridge.Links.from_specs(spec, node, eff, queued=True)
    except TypeError:  # a bridge without queued calls
        link = comm_bridge.Links.from_specs(spec, node, eff)
    dpn = link.devices_per_node
    rc_name = lambda r: RECOMPUTE_NAMES[int(r)]  # noqa: E731
    link_coll, link_p2p = _memo(link.collective_time_s), _memo(link.p2p_time_s)

    def tp_layer(tp_, mb_, cp_, sp_, rc_):
        """TP collectives of one layer and micro-batch (training.tp_layer_comm_s)."""
        return tr.tp_layer_comm_s(link_coll, model, mb_ * seq_dev_of(cp_) * model.hidden * 2.0, tp_, ax.etp_of(tp_),
                                  dpn, bool(sp_) and tp_ > 1, rc_name(rc_))

    tp_tab = _subgrid_table(tp_layer, ax.tp, ax.mb, ax.cp, ax.sp, ax.rc)

    a2a_tab = None
    if model.moe is not None and model.moe_layers > 0 and np.any(ax.ep > 1):
        def a2a(tp_, ep_, mb_, cp_):
            if ep_ <= 1:
                return 0.0
            return steptime.ep_all_to_all_s(link_coll, model, mb_ * seq_dev_of(cp_) * model.hidden * 2.0, tp_, ep_,
                                            ax.etp_of(tp_), dpn, job.moe_enable_deepep)

        a2a_tab = _subgrid_table(a2a, ax.tp, ax.ep, ax.mb, ax.cp)

    kv_tab = None
    if np.any(ax.cp > 1):
        def kv_steps(tp_, mb_, cp_):
            return steptime.cp_kv_exchange_s(link_p2p, model, mb_, seq_dev_of(cp_), tp_, cp_, dpn)

        kv_tab = _subgrid_table(kv_steps, ax.tp, ax.mb, ax.cp, width=2)

    def p2p_pair(tp_, mb_, cp_, sp_):
        act = mb_ * seq_dev_of(cp_) * model.hidden * 2.0
        msg = steptime.pp_message_bytes(act, tp_, job.framework, bool(sp_) and tp_ > 1)
        return link_p2p(msg, crosses_node=False), link_p2p(msg, crosses_node=True)

    p2p_tab = _subgrid_table(p2p_pair, ax.tp, ax.mb, ax.cp, ax.sp, width=2)

    # data parallel and optimizer: per (devices, tp, pp, cp, ep, zero), only where a candidate is
    st = state_bytes_per_param(job, model.hidden)
    opt_per_param = tr.optimizer_bytes_per_param(job, st)

    stage_total = _memo(lambda tp_, pp_, ep_: float(stage_params(model, Parallel(tp=tp_, pp=pp_, ep=ep_, dp=ep_,
                                                                                   etp=ax.etp_of(tp_))).total))
    opt_time = _memo(lambda nbytes: memory_op(eff, "optimizer", nbytes).time_s)

    tabs, pt_of, ds_gather, ds_reduce = _dp_point_table(model, job, ax, used, link, link_coll, eff, st, stage_total,
                                                         opt_per_param, opt_time)
    shape = used.shape
    deepspeed = job.framework == "deepspeed"
    h2d = eff.h2d_bytes_per_s(True)
    d2h = getattr(eff, "d2h_bytes_per_s", eff.h2d_bytes_per_s)(True)
    host_node = off_lib = None
    if np.any(ax.off):  # ZeRO-Offload's host: the node's CPUs and DRAM (costmodel.offload)
        from . import offload as _off
        from .specs import load_library

        off_lib = load_library()
        host_node, _ = _off.node_for_device(spec, node, off_lib)
    regather = _memo(lambda t_, f_: tr.deepspeed_zero3_regather(model, t_, "full" if f_ else "none"))
    shares = _memo(lambda t_: tr.deepspeed_zero3_modules(model, t_)[0])
    composed_cache: dict = {}

    # Every table of the (tp, ep, mb, cp, sp, rc) sub-layouts as the columns of one, stored column by
    # column, so that a candidate's row of all of them is one index and one gather (numpy's fancy
    # indexing over several index arrays costs far more than the arithmetic that follows it).
    sub_axes = ("tp", "ep", "mb", "cp", "sp", "rc")
    sub_shape = tuple(len(getattr(ax, n)) for n in sub_axes)

    def spread(tab, names):
        """``tab`` (over the axes ``names``, a trailing column axis) over all of sub_axes."""
        shp = [len(getattr(ax, n)) if n in names else 1 for n in sub_axes]
        return np.broadcast_to(tab.reshape(shp + [tab.shape[-1]]), sub_shape + (tab.shape[-1],))

    zeros1 = np.zeros(sub_shape + (1,))
    rc_vals = ax.rc.reshape(1, 1, 1, 1, 1, -1)
    pf = spread(parts_tab, ("tp", "ep", "mb", "cp", "sp"))
    # the recompute share of a layer per (sub-layout, recompute mode): as the candidates' arrays had it
    selective = prof.settings.selective_recompute
    share = steptime.selective_matmul_share(selective, model)
    rec_col = steptime.recompute_forward_s(rc_vals, 1.0, pf[..., 0], pf[..., 2], pf[..., 4], selective, share)[0]
    # (the screen's full recompute re-runs the whole forward: recompute_fraction 1)
    columns = np.concatenate([
        pf, spread(head_tab, ("tp", "mb", "cp")), spread(tp_tab[..., None], ("tp", "mb", "cp", "sp", "rc")),
        spread(a2a_tab[..., None], ("tp", "ep", "mb", "cp")) if a2a_tab is not None else zeros1,
        spread(kv_tab, ("tp", "mb", "cp")) if kv_tab is not None else np.zeros(sub_shape + (2,)),
        spread(p2p_tab, ("tp", "mb", "cp", "sp")), rec_col[..., None]], axis=-1)
    columns = np.ascontiguousarray(columns.reshape(-1, columns.shape[-1]).T)
    dp_columns = np.ascontiguousarray(tabs.T)
    dp_strides = [int(np.prod(shape[i + 1:])) for i in range(len(shape))]

    def times(c: _Flat) -> dict[str, np.ndarray]:
        v = c.val
        tp, pp, cp, mb, N = v["tp"], v["pp"], v["cp"], v["mb"], v["devices"]
        dp = N // (tp * pp * cp)
        full = v["rc"] == 2
        rec_any = v["rc"] != 0
        n_micro = job.global_batch // (mb * dp)
        k = c.idx[sub_axes[0]]
        for n, size in zip(sub_axes[1:], sub_shape[1:]):
            k = k * size + c.idx[n]
        (g_f, g_b, a_f, a_b, e_f, e_b, head_and_loss, head_f, tp_row, a2a_t, f_step, b_step, p2p_in, p2p_out,
         recompute_f) = np.take(columns, k, axis=1)
        loss_t = head_and_loss - 3 * head_f

        layers = -(-model.layers // pp)
        if job.tp_comm_overlap:  # Megatron-LM --tp-comm-overlap (training.estimate_train), with sequence parallelism
            tp_row = steptime.tp_overlap_exposed_s(tp_row, g_f + g_b + np.where(full, g_f, 0.0), v["tp"])
        crosses = steptime.pp_crosses_node(pp, N, dpn)
        p2p_mb = np.where(pp > 1, 2.0 * v["v"] * np.where(crosses, p2p_out, p2p_in), 0.0)

        sub = c.idx[_DP_AXES[0]] * dp_strides[0]
        for n, stride in zip(_DP_AXES[1:], dp_strides[1:]):
            sub = sub + c.idx[n] * stride
        ag_u, rs_u, dp_op, optimizer_t, P, nvl, dp_rs = np.take(dp_columns, sub, axis=1)
        ovl = tr.dp_overlap_share(job, nvl > 0)
        # FSDP unit by unit (comm.fsdp_exposed_s, as training.estimate_train): each unit's gather
        # prefetched behind the previous unit's compute, its reduce-scatter behind the next one's;
        # under pipeline parallelism once per step, without the backward re-gather
        unit_f = g_f + a_f + e_f
        unit_b = g_b + a_b + e_b + recompute_f
        once = pp > 1
        per_step = np.where(once, 1.0, n_micro)
        fsdp_exposed = np.where(ag_u > 0, comm.fsdp_overlapped_s(ag_u, rs_u, unit_f, unit_b, layers, n_micro, once,
                                                                 spec.compute_units), 0.0)
        if deepspeed:
            ds = (v["zero"] >= 3) & (pp == 1) & (dp * cp > 1)
            if np.any(ds):
                jc = pt_of[sub][ds]
                exposed, _ = tr.deepspeed_zero3_exposed_s(
                    ds_gather[jc], ds_reduce[jc], unit_f[ds], unit_b[ds], np.where(full[ds], recompute_f[ds], 0.0),
                    np.array([shares(int(t_)) for t_ in tp[ds]]),
                    np.array([regather(int(t_), bool(f_)) for t_, f_ in zip(tp[ds], full[ds])]), layers[ds], per_step[ds])
                fsdp_exposed = fsdp_exposed.copy()
                fsdp_exposed[ds] = exposed
        backward_time = layers * (g_b + a_b + e_b + recompute_f)
        o_div = np.where(v["zero"] >= 1, dp * cp, 1)
        # ZeRO-Offload (costmodel.offload.offload_step_s, as training.estimate_train): gradient shard
        # down behind backward, CPU Adam on the node's host, compute-dtype parameters up
        offload_t = np.zeros_like(P)
        if np.any(v["off"]):
            from . import offload as _off

            off_per_node = np.minimum(N, host_node.devices_per_node) if host_node is not None else 1
            offload_t, _ = _off.offload_step_s(
                st, P / o_div, off_per_node, job.offload_optimizer if job.offload_optimizer != "none" else "cpu",
                "none", h2d=h2d, d2h=d2h, backward_s=n_micro * backward_time, compute_s=0.0, passes=0,
                node=host_node, lib=off_lib, off_opt=v["off"], hybrid=hybrid_offload(job))
        optimizer_t = np.where(v["off"], 0.0, optimizer_t)  # the optimizer step runs on the host

        host = None
        if job.framework == "pytorch" and tr.HOST_S_PER_LAYER > 0:
            def host(gpu_total):
                return tr.host_exposed_s(model, job, n_micro, layers, full, (v["zero"] >= 3) & (dp * cp > 1),
                                         gpu_total, tr._expert_dtype(model, job, dtype) != dtype)[1]
        _, rec_g, rec_a, rec_e = steptime.recompute_forward_s(v["rc"], 1.0, g_f, a_f, e_f, selective, share)
        b = steptime.compose_builtin(steptime.BuiltinTerms(
            n_micro=n_micro, layers=layers, pp=pp, interleave=v["v"], cp=cp, full=full,
            g_f=g_f, g_b=g_b, a_f=a_f, a_b=a_b, e_f=e_f, e_b=e_b,
            recompute_g=rec_g, recompute_a=rec_a, recompute_e=rec_e, head_f=head_f,
            loss_s=loss_t, tp_layer_s=tp_row, ep_call_s=a2a_t,
            moe_layers=model.moe_layers * layers / model.layers if model.moe is not None else 0.0,
            cp_f_step_s=f_step, cp_b_step_s=b_step, p2p_mb_s=p2p_mb, dp_op_s=dp_op, dp_rs_s=dp_rs, dp_overlap=ovl,
            zero=v["zero"], fsdp_exposed_s=fsdp_exposed,
            grad_accum_s=tr.grad_accum_s(eff, job, tr.grad_accum_params(P, v["zero"], pp, dp * cp), n_micro),
            optimizer_s=optimizer_t, offload_s=offload_t), host)
        if prof.step_model == "composed":
            return _composed_screen(prof, model, job, ax, c, link, st, stage_total, cache=composed_cache, a=dict(
                g_f=g_f, g_b=g_b, a_f=a_f, a_b=a_b, e_f=e_f, e_b=e_b, recompute_f=recompute_f, head_f=head_f,
                head_and_loss=head_and_loss, layers=layers, n_micro=n_micro, full=full, rec_any=rec_any,
                optimizer_t=optimizer_t, other=offload_t + b.ep_comm_s + b.cp_comm_s + fsdp_exposed,
                fsdp_exposed=fsdp_exposed, ep_comm=b.ep_comm_s, cp_comm=b.cp_comm_s, offload_t=offload_t))
        return dict(step_s=b.total_s, expected_s=b.total_s, compute_s=b.compute_s, attention_s=b.attention_s,
                    elementwise_s=b.elementwise_s, host_overhead_s=b.host_overhead_s, tp_comm_s=b.tp_comm_s,
                    dp_comm_exposed_s=b.dp_comm_exposed_s, fsdp_comm_exposed_s=fsdp_exposed, pp_comm_s=b.pp_comm_s,
                    bubble_s=b.bubble_s, optimizer_s=optimizer_t, ep_comm_s=b.ep_comm_s, cp_comm_s=b.cp_comm_s,
                    offload_s=offload_t)

    times.composed = prof.step_model == "composed"
    return times


def _composed_screen(prof, model: ModelConfig, job: TrainJob, ax: _Axes, c: _Flat, link, st, stage_total,
                     a: dict, cache: dict | None = None) -> dict[str, np.ndarray]:
    """The step time of a composed framework profile on the screen's arrays: the terms of
    costmodel.steptime (its tp_layer_comm, pp_p2p, dp_comm and placement, once per distinct
    sub-layout) composed by steptime.compose, the same code that times one layout in train."""

    from . import training as tr

    # ``cache``: the tables of one time model, kept between calls (a search calls this chunk by
    # chunk and then for each candidate it reports)
    cache = {} if cache is None else cache
    if "link" not in cache:
        cache["link"] = replace(link, fallback_scaling=prof.scaling)  # the profile's network where the node has none measured
    link = cache["link"]
    v = c.val
    tp, pp, cp, N = v["tp"], v["pp"], v["cp"], v["devices"]
    layers = a["layers"]
    seq_dev_of = lambda cp_: max(1, job.seq_len // cp_)  # noqa: E731

    def tp_row(tp_, mb_, cp_, sp_, rc_):
        act = mb_ * seq_dev_of(cp_) * model.hidden * 2.0
        etp_ = ax.etp_of(tp_)
        return steptime.tp_layer_comm_split(link, act, tp_, etp_, tr.moe_etp_share(model, tp_, etp_),
                                            bool(sp_) and tp_ > 1, RECOMPUTE_NAMES[int(rc_)])

    if "tp" not in cache:
        cache["tp"] = _subgrid_table(tp_row, ax.tp, ax.mb, ax.cp, ax.sp, ax.rc, width=3)
    tp_i, tp_w, tp_s = cache["tp"][c.idx["tp"], c.idx["mb"], c.idx["cp"], c.idx["sp"], c.idx["rc"]].T

    def p2p_row(tp_, mb_, cp_, sp_):
        act = mb_ * seq_dev_of(cp_) * model.hidden * 2.0
        sp_on = bool(sp_) and tp_ > 1
        return steptime.pp_p2p(link, act, tp_, sp_on, 1, False), steptime.pp_p2p(link, act, tp_, sp_on, 1, True)

    if "p2p" not in cache:
        cache["p2p"] = _subgrid_table(p2p_row, ax.tp, ax.mb, ax.cp, ax.sp, width=2)
    p_in, p_out = cache["p2p"][c.idx["tp"], c.idx["mb"], c.idx["cp"], c.idx["sp"]].T
    pp_cross = steptime.pp_crosses_node(pp, N, link.devices_per_node)  # stages outermost, as steptime.placement
    p2p = np.where(pp > 1, v["v"] * np.where(pp_cross, p_out, p_in), 0.0)

    # data-parallel reduction per (devices, tp, pp, cp, ep, zero) point
    keys = np.stack([N, tp, pp, cp, v["ep"], v["zero"]], axis=1)
    uniq, inv = np.unique(keys, axis=0, return_inverse=True)
    dp_rows = np.zeros((len(uniq), 4))
    dp_done = cache.setdefault("dp", {})
    for j, key in enumerate(uniq.astype(int)):
        key = tuple(int(x) for x in key)
        if key not in dp_done:
            N_, tp_, pp_, cp_, ep_, z_ = key
            par = Parallel(tp=tp_, pp=pp_, dp=N_ // (tp_ * pp_ * cp_), cp=cp_, ep=ep_, zero_stage=z_, etp=ax.etp_of(tp_))
            Pst = stage_total(tp_, pp_, ep_)
            place = steptime.placement(par, link.devices_per_node)
            args = (link, par.dp * par.cp, place["dp_per_node"], z_, st.grads * Pst, st.weights * Pst,
                    prof.settings.dp_bucket_bytes, prof.settings.sharded_grad_sync)
            dp_done[key] = steptime.dp_comm(*args) + steptime.dp_grad_reduction(*args)
        dp_rows[j] = dp_done[key]
    split = {int(q): steptime.stage_layers(model.layers, int(q), prof.settings.pipeline_balance,
                                           *steptime.block_costs(model)) for q in np.unique(pp)}
    stage_split = tuple(np.array([split[int(q)][i] for q in np.ravel(pp)], dtype=float).reshape(np.shape(pp))
                        for i in range(5))
    logits = v["mb"] * np.maximum(1, job.seq_len // cp) * model.vocab / tp * 2.0  # bf16 logits per tp rank
    loss_p2p = np.where(stage_split[3] > 0,
                        2.0 * np.vectorize(lambda b: link.p2p_time_s(float(b), crosses_node=False))(logits), 0.0)
    terms = steptime.layout_terms(
        layers=layers.astype(float), n_micro=a["n_micro"].astype(float), pp=pp.astype(float),
        interleave=v["v"].astype(float), tp=tp.astype(float),
        layer_times=(a["g_f"], a["g_b"], a["a_f"], a["a_b"], a["e_f"], a["e_b"]),
        recompute=(a["recompute_f"], *steptime.recompute_forward_s(
            v["rc"], 1.0, a["g_f"], a["a_f"], a["e_f"], prof.settings.selective_recompute,
            steptime.selective_matmul_share(prof.settings.selective_recompute, model))[1:3]),
        head_s=3 * a["head_f"], loss_s=a["head_and_loss"] - 3 * a["head_f"], tp_split=(tp_i, tp_w, tp_s),
        p2p_mb_s=p2p, pp_cross=pp_cross.astype(float), dp_split=dp_rows[inv.ravel()].T, zero=v["zero"],
        sharded_grad_sync=prof.settings.sharded_grad_sync, stage_split=stage_split, loss_p2p_mb_s=loss_p2p,
        stall=steptime.pipeline_stall_inputs(link, N, pp, v["v"]), optimizer_s=a["optimizer_t"], other_s=a["other"],
        step_latency_s=link.scaling.step_latency_s if link.scaling is not None else 0.0)
    k = steptime.compose(terms, {n: p.value for n, p in prof.parameters.items()}, prof.cluster_step_latency_s,
                         cuda_graphs=prof.settings.cuda_graphs)
    return dict(step_s=k.total_s, expected_s=steptime.expected_step_s(k.total_s, k.stall_s, k.stall_risk_s, k.stall_p),
                compute_s=k.compute_s, attention_s=k.attention_s, elementwise_s=k.elementwise_s,
                host_overhead_s=k.host_overhead_s, tp_comm_s=k.tp_comm_s, dp_comm_exposed_s=k.dp_comm_exposed_s,
                fsdp_comm_exposed_s=a["fsdp_exposed"], pp_comm_s=k.pp_comm_s, bubble_s=k.bubble_s,
                optimizer_s=k.optimizer_s, ep_comm_s=a["ep_comm"], cp_comm_s=a["cp_comm"], offload_s=a["offload_t"])


def _batched_collectives(link, op: str, nbytes: np.ndarray, world: np.ndarray, intra: np.ndarray,
                         per_node: np.ndarray) -> np.ndarray:
    """comm_bridge.Links.collective_time_s on arrays: the same groups (Links.group), the same
    calibrated bandwidth scale for groups inside one scale-up domain, comm.collective_time_s_np
    once per distinct scale instead of once per call."""
    dpn = link.devices_per_node
    per = np.where(intra, np.minimum(world, dpn), np.clip(np.minimum(per_node, world), 1, dpn))
    group_intra = per >= world  # one domain
    eff = link._efficiency() if hasattr(link, "_efficiency") else None
    params = getattr(link, "params", comm.DEFAULT_PARAMS)
    links = link.comm_links
    out = np.zeros(len(nbytes))
    live = (world > 1) & (nbytes > 0)
    scales = np.full(len(nbytes), np.nan)
    if eff is not None:
        for w in np.unique(world[live & group_intra]):
            sc = comm.calibrated_bandwidth_scale(eff, op, int(w), links, params)
            if sc is not None:
                scales[live & group_intra & (world == w)] = sc
    for sc in np.unique(scales[live]):
        sel = live & ((scales == sc) if not np.isnan(sc) else np.isnan(scales))
        out[sel] = comm.collective_time_s_np(op, nbytes[sel], world[sel], per[sel], links, params=params,
                                             efficiency=None if np.isnan(sc) else float(sc))
    scaling = getattr(link, "scaling", None)
    so = getattr(link.node, "scale_out", None) if getattr(link, "node", None) is not None else None
    leaf = so.nodes_per_leaf if (so is not None and so.oversubscription > 1) else None
    if scaling is not None or leaf:  # measured cluster scaling, or a spine past the leaf: the bridge's
        for i in np.flatnonzero(live & ~group_intra):
            nodes = -(-int(world[i]) // int(per[i]))
            if scaling is not None:
                out[i] = params.launch_overhead_s + cluster.collective_time_s(
                    scaling, op, float(nbytes[i]), int(world[i]), nodes, link.inter_bw)
            elif nodes > leaf:
                out[i] = link.collective_time_s(op, float(nbytes[i]), int(world[i]), intra=False, per_node=int(per[i]))
    return out


def _memo(fn):
    """fn memoised on its (hashable) arguments, for one screen."""
    cache: dict = {}

    def wrapped(*args, **kwargs):
        key = (args, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = fn(*args, **kwargs)
        return cache[key]

    return wrapped


# ----------------------------------------------------------------------------------- search

def _objective_values(obj: str, step_s, devices, price, tokens_per_step, mfu):
    """Lower is better."""
    if obj in ("step_time", "time_to_train"):
        return step_s
    if obj in ("cost", "cost_per_token"):
        if price is None:
            raise InputError("objective 'cost' needs a price: the spec has no price_per_hour_usd; pass --price-per-hour",
                             field="price_per_hour")
        return step_s * devices * price / 3600.0 / tokens_per_step
    if obj == "mfu":
        return -mfu
    if obj == "throughput":
        return step_s / tokens_per_step
    raise InputError(f"unknown objective {obj!r}; expected one of step_time, time_to_train, cost, mfu, throughput",
                     field="objective")


def _pareto_indices(t: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats in both time and cost (ascending time)."""
    order = np.lexsort((cost, t))
    c = cost[order]
    best_before = np.concatenate(([np.inf], np.minimum.accumulate(c)[:-1]))
    return order[c < best_before]


def _framework_axes(prof, zero_stage, interleave, offload=None) -> tuple:
    """The ZeRO stages, interleavings and optimizer offloads to enumerate: those given, else every
    stage the framework runs (settings.zero_stages); no interleaving where it has no interleaved
    schedule, no offload where it offloads no optimizer alone (None: the default axis)."""
    if zero_stage is None:
        zero_stage = [z for z in DEFAULT_ZERO if z in prof.settings.zero_stages]
    if interleave is None and not prof.settings.interleaved_pipeline:
        interleave = [1]
    if offload is None and prof.settings.optimizer_offload in ("none", "with-params"):
        offload = [False]  # the search offloads the optimizer alone
    return zero_stage, interleave, offload


def search(model: str | ModelConfig, hardware: str | Sequence[str] = "h100-sxm", devices: str | int | Sequence[int] = 8, *,
           global_batch: int, seq_len: int = 2048, objective: Objective = "step_time", top: int = 10,
           precision: str = "amp-bf16", optimizer: str = "adamw", framework: str | None = None,
           attention: str = "flash", overlap_grad_reduce: bool = True, tp_comm_overlap: bool = False,
           grad_reduce_in_bf16: bool = False, moe_enable_deepep: bool = False, tokens: float | None = None, steps: int | None = None, price_per_hour: float | None = None, max_memory_fraction: float = 1.0,
           tp: Sequence[int] | None = None, pp: Sequence[int] | None = None, interleave: Sequence[int] | None = None,
           cp: Sequence[int] | None = None, ep: Sequence[int] | None = None, zero_stage: Sequence[int] | None = None,
           micro_batch: Sequence[int] | None = None, recompute: Sequence[str] | None = None,
           sequence_parallel: Sequence[bool] | None = None, offload: Sequence[bool] | None = None,
           calibration: str | None = None, hardware_files: list[str] | None = None, refine: bool = True,
           progress=None, profile: str | None = None, etp: int | None = None) -> SearchResult:
    """Every valid layout of `model` on `devices` of each `hardware`, ranked by `objective`,
    computed from each layout's expected step time (its step time, plus, where the cluster stalls
    cross-node pipeline sends, the stall's chance times its seconds: steptime.expected_step_s).

    `devices`: an int, a list, or "LO..HI" (powers of two in the range). The axes default to
    everything sensible (tp up to the node, every pp dividing the layers or a power of two, ...);
    pass lists to restrict them. Returns the top `top` layouts re-estimated with the scalar model.
    `framework` (default frameworks.DEFAULT_FRAMEWORK, as `train`) and `profile` as in plan.train:
    the screen uses the framework's base semantics; where its profile composes the step
    (costmodel.steptime), a larger pool of the screen's best is re-ranked with it.
    `progress`: called as progress(done, total) while the layouts are screened (chunk by chunk, in
    bounded memory): the valid layouts screened so far and in all. `etp`: every layout's expert
    tensor-parallel size (Parallel.etp: 1 folds tp into ep), where it divides tp; None: tp.
    """
    t0 = time.perf_counter()
    m = model if isinstance(model, ModelConfig) else load_model(model)
    if global_batch is None or global_batch < 1:
        raise InputError("global batch must be a positive number of sequences", field="global_batch")
    if seq_len < 1:
        raise InputError("seq_len must be positive", field="seq_len")
    if not 0 < max_memory_fraction <= 1:
        raise InputError(f"max_memory_fraction must be in (0, 1], got {max_memory_fraction}", field="max_memory_fraction")
    if top < 1:
        raise InputError("top must be >= 1", field="top")
    require_run(tokens, steps, price_per_hour)
    require_positive(etp=etp)
    for r in recompute or ():
        if r not in RECOMPUTE_CODES:
            raise InputError(f"recompute {r!r} is not one of none, selective, full", field="recompute")
    from .training import check_megatron_switches, check_moe_switches

    check_moe_switches(m, etp, moe_enable_deepep)
    counts = device_counts(devices)
    hw_ids = [hardware] if isinstance(hardware, str) else list(hardware)
    lib = load_library(hardware_files)
    try:
        job = TrainJob(micro_batch=1, seq_len=seq_len, global_batch=global_batch, precision=precision,
                       optimizer=optimizer, attention=attention, overlap_grad_reduce=overlap_grad_reduce,
                       tp_comm_overlap=tp_comm_overlap, grad_reduce_in_bf16=grad_reduce_in_bf16,
                       moe_enable_deepep=moe_enable_deepep,
                       **frameworks.job_fields(framework if framework is not None or profile is not None
                                               else frameworks.DEFAULT_FRAMEWORK, profile))
    except InputError:
        raise
    except Exception as exc:  # pydantic ValidationError -> a named field
        from .errors import from_validation_error

        raise from_validation_error(exc, file=None) if hasattr(exc, "errors") else exc

    prof = frameworks.resolve(job.profile or job.framework)
    check_megatron_switches(job, prof)
    prof.check_runs(zero_stage or (), interleave or (), zero_field="zero-stage", offload=any(offload or ()),
                    offload_field="offload")
    zero_stage, interleave, offload = _framework_axes(prof, zero_stage, interleave, offload)
    enumerated = evaluated = feasible = 0
    rejected: dict[str, int] = {}
    per_hw = []
    # expert tensor parallelism: the one given, else for a MoE model Megatron's default (tp) and the
    # layouts only folding makes possible (etp 1, ep not dividing dp x cp: ep over tp x dp x cp)
    policies = [(etp, False)] if etp is not None or m.moe is None or m.moe_layers == 0 else [(None, False), (1, True)]
    grids = []  # per hardware (and etp): the valid layouts (checked first, so that progress knows the total)
    for hw in hw_ids:
        spec = lib.device(hw)
        node = lib.node_for(hw)
        dpn = scale_up_domain(node)
        for e, folded_only in policies:
            ax = _axes(m, counts, dpn, global_batch, seq_len, tp=tp, pp=pp, interleave=interleave, cp=cp, ep=ep,
                       zero=zero_stage, micro_batch=micro_batch, recompute=recompute,
                       sequence_parallel=sequence_parallel, offload=offload, etp=e, etp_folded_only=folded_only)
            if folded_only:  # tp = 1 layouts are the default grid's
                ax = replace(ax, tp=ax.tp[ax.tp > 1])
                if len(ax.tp) == 0:
                    continue
            _check_grid(ax)
            ok, rej = _valid_mask(m, ax, global_batch, seq_len, dpn, tp_comm_overlap, prof.settings.pipeline_zero_stages)
            grids.append((hw, spec, node, ax, ok, rej, _valid_flat(ax, ok)))
    total = sum(len(g[-1]) for g in grids)
    done = 0
    tflops = train_step_flops(m, global_batch, seq_len, "none").model_flops
    tokens_per_step = float(global_batch * seq_len)
    for hw, spec, node, ax, ok, rej, flat in grids:
        price = price_per_hour if price_per_hour is not None else spec.price_per_hour_usd
        enumerated += int(ok.size)
        for k, n in rej.items():
            rejected[k] = rejected.get(k, 0) + n
        if len(flat) == 0:
            continue
        cap = spec.memory.capacity_bytes * max_memory_fraction

        def tick(n, base=done):
            if progress:
                progress(base + n, total)

        s = _Screened(m, spec, node, job, ax, ok.shape, flat, calibration, cap, on_chunk=tick)
        done += len(flat)
        evaluated += len(flat)
        fits = s.fits
        nfit = int(fits.sum())
        feasible += nfit
        rejected["memory"] = rejected.get("memory", 0) + len(flat) - nfit
        peak_flops = spec.peak(_dtype_for(job, spec))
        n_dev = s.devices
        # ranked by the expected step time (the stall risk weighed in; the step time elsewhere)
        obj = _objective_values(objective, s.expected_s, n_dev, price, tokens_per_step,
                                tflops / s.expected_s / (n_dev * peak_flops))
        cost_tok = (s.step_s * n_dev * price / 3600.0 / tokens_per_step) if price else None
        per_hw.append((hw, spec, node, price, None, s, fits, obj, cost_tok))

    # choose what to refine: the best screened candidates over all hardware + the Pareto front
    composed = frameworks.resolve(job.profile or job.framework).step_model == "composed"
    cand_rows = []  # (obj, hw index, candidate index)
    pareto_rows = []
    for h, (hw, spec, node, price, c, s, fits, obj, cost_tok) in enumerate(per_hw):
        idx = np.flatnonzero(fits)
        if len(idx) == 0:
            continue
        k = min(len(idx), max(REFINE_MIN, 8 * top) * (REFINE_COMPOSED_FACTOR if composed else 1))
        best = idx[np.argpartition(obj[idx], k - 1)[:k]] if k < len(idx) else idx
        cand_rows += [(float(obj[i]), h, int(i)) for i in best]
        if cost_tok is not None:
            pr = _front_candidates(s.step_s, cost_tok, s.devices, idx)
            pr = pr[_pareto_indices(s.step_s[pr], cost_tok[pr])]
            pareto_rows += [(h, int(i)) for i in pr]
    cand_rows.sort()
    for h, row in enumerate(per_hw):  # the screen's numbers of every candidate to report, at once
        row[5].prefetch([i for _, hh, i in cand_rows if hh == h] + [i for hh, i in pareto_rows if hh == h])
    refined = []
    for _, h, i in cand_rows:
        refined.append(_candidate(m, per_hw[h], i, job, tokens, steps, calibration, refine))
    refined = [r for r in refined if r is not None and r.memory_fraction <= max_memory_fraction]
    refined.sort(key=lambda r: _objective_values(objective, r.expected_step_s, r.layout.devices,
                                                 _price_of(per_hw, r.layout.hardware),
                                                 float(global_batch * seq_len), r.mfu * r.step_s / r.expected_step_s))
    top_list = refined[:top]
    for n, r in enumerate(top_list, 1):
        r.rank = n
    pareto = []
    if pareto_rows:
        if len(pareto_rows) > PARETO_MAX:  # evenly spaced along the front
            keep = np.linspace(0, len(pareto_rows) - 1, PARETO_MAX).round().astype(int)
            pareto_rows = [pareto_rows[k] for k in sorted(set(keep))]
        pc = [_candidate(m, per_hw[h], i, job, tokens, steps, calibration, refine) for h, i in pareto_rows]
        pc = [p for p in pc if p is not None and p.cost_per_million_tokens_usd is not None]
        if pc:
            t_arr = np.array([p.step_s for p in pc])
            c_arr = np.array([p.cost_per_million_tokens_usd for p in pc])
            pareto = [pc[i] for i in _pareto_indices(t_arr, c_arr)]
    return SearchResult(model=m.id, hardware=hw_ids, devices=counts, global_batch=global_batch, seq_len=seq_len,
                        framework=frameworks.label(job), precision=job.precision, switches=job.switches(),
                        objective=objective, enumerated=enumerated, evaluated=evaluated, feasible=feasible,
                        seconds=time.perf_counter() - t0, rejected=rejected, top=top_list, pareto=pareto)


def _front_candidates(step_s: np.ndarray, cost: np.ndarray, devices: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The candidates of ``idx`` (ascending, grouped by device count, as the grid orders them) that
    can be on the time/cost Pareto front: at one device count the cost per token grows with the step
    time, so only the fastest of each count (ties kept) can be; _pareto_indices over them gives the
    front it gives over all of ``idx``, in the same order."""
    if len(idx) == 0:
        return idx
    t, d = step_s[idx], devices[idx]
    starts = np.flatnonzero(np.concatenate(([True], d[1:] != d[:-1])))
    fastest = np.repeat(np.minimum.reduceat(t, starts), np.diff(np.append(starts, len(t))))
    return idx[t <= fastest]


def _price_of(per_hw, hw_id: str):
    for hw, _spec, _node, price, *_ in per_hw:
        if hw == hw_id:
            return price
    return None


def layout_of(hw: str, c: _Flat, i: int, n_micro: int) -> SearchLayout:
    if isinstance(c, _Screened):
        c, i = c.flat_of([i]), 0
    v = c.val
    tp, pp, cp, N = int(v["tp"][i]), int(v["pp"][i]), int(v["cp"][i]), int(v["devices"][i])
    return SearchLayout(hardware=hw, devices=N, tp=tp, pp=pp, dp=N // (tp * pp * cp), cp=cp, ep=int(v["ep"][i]),
                        interleave=int(v["v"][i]), sequence_parallel=bool(v["sp"][i]) and tp > 1,
                        zero_stage=int(v["zero"][i]), micro_batch=int(v["mb"][i]), grad_accum=int(n_micro),
                        recompute=RECOMPUTE_NAMES[int(v["rc"][i])], offload_optimizer="cpu" if v["off"][i] else "none",
                        etp=int(v["etp"][i]) if "etp" in v else None)


def _candidate(m: ModelConfig, hw_row, i: int, job: TrainJob, tokens, steps, calibration, refine: bool):

    hw, spec, node, price, c, s, fits, obj, cost_tok = hw_row
    if isinstance(s, _Screened):  # the one candidate's screen values
        c, s, i = s.flat_of([i]), s.rows([i]), 0
    lay = layout_of(hw, c, i, int(s["n_micro"][i]))
    par = Parallel(tp=lay.tp, pp=lay.pp, dp=lay.dp, cp=lay.cp, ep=lay.ep, sequence_parallel=lay.sequence_parallel,
                   zero_stage=lay.zero_stage, interleave=lay.interleave, etp=lay.etp)
    j = job.model_copy(update=dict(micro_batch=lay.micro_batch, recompute=lay.recompute,
                                   offload_optimizer=lay.offload_optimizer))
    tokens_per_step = float(job.global_batch * job.seq_len)
    if refine:
        est, (breakdown, membd) = _estimate(m, spec, j, par, node, calibration)
        step_s, expected_s = est.step.total_s, est.expected_step_s
        breakdown, membd = dict(breakdown), dict(membd)
        mem = est.memory
        peak, req = mem.peak_bytes, est.required_bytes
        mfu, tflops = est.mfu, est.tflops_per_device
        hfu, hw_tflops = est.hfu, est.hardware_flops_per_step / step_s / lay.devices / 1e12
    else:
        step_s, expected_s = float(s["step_s"][i]), float(s["expected_s"][i])
        breakdown = {k: float(s[k][i]) for k in ("compute_s", "attention_s", "elementwise_s", "host_overhead_s", "tp_comm_s",
                                                 "dp_comm_exposed_s", "fsdp_comm_exposed_s", "pp_comm_s", "bubble_s",
                                                 "optimizer_s", "ep_comm_s", "cp_comm_s", "offload_s")}
        peak, req = float(s["peak_bytes"][i]), float(s["required_bytes"][i])
        membd = {}
        tf = train_step_flops(m, job.global_batch, job.seq_len, lay.recompute, job.attention,
                              selective=framework_settings(job).selective_recompute)
        mfu = tf.model_flops / step_s / (lay.devices * spec.peak(_dtype_for(job, spec)))
        hfu = tf.hardware_flops / step_s / (lay.devices * spec.peak(_dtype_for(job, spec)))
        tflops = tf.model_flops / step_s / lay.devices / 1e12
        hw_tflops = tf.hardware_flops / step_s / lay.devices / 1e12
    cap = spec.memory.capacity_bytes
    n_steps = steps if steps is not None else (int(math.ceil(tokens / tokens_per_step)) if tokens else None)
    run_days = n_steps * step_s / 86400.0 if n_steps else None
    run_cost = n_steps * step_s / 3600.0 * lay.devices * price if (n_steps and price) else None
    return SearchCandidate(
        rank=0, layout=lay, step_s=step_s, tokens_per_s=tokens_per_step / step_s, mfu=mfu, hfu=hfu,
        tflops_per_device=tflops, hardware_tflops_per_device=hw_tflops,
        peak_bytes=peak, required_bytes=req, capacity_bytes=cap, memory_fraction=req / cap,
        cost_per_million_tokens_usd=(step_s * lay.devices * price / 3600.0 / tokens_per_step * 1e6) if price else None,
        run_days=run_days, run_cost_usd=run_cost, step_breakdown_s=breakdown, memory_breakdown_bytes=membd,
        screen_step_s=float(s["step_s"][i]), pipeline_stall=est.pipeline_stall if refine else None,
        expected_step_s=expected_s)


# Refined candidates' estimates, by their inputs (a search repeated, or another objective over the
# same layouts, re-estimates the same candidates): TrainEstimate is only read here.
_REFINED: dict = {}
MAX_REFINED = 4096


def _estimate(m: ModelConfig, spec, job: TrainJob, par: Parallel, node, calibration):
    """estimate_train(m, spec, job, par, node, calibration) and its step and memory breakdowns,
    remembered per inputs (the parsed model, spec and node by identity, the efficiency model in use,
    the job and layout)."""
    from .training import estimate_train

    eff = efficiency_for(spec, calibration)

    def made():
        est = estimate_train(m, spec, job, par, node=node, calibration=calibration)
        membd = {k: v for k, v in est.memory.to_dict().items() if k.endswith("_bytes") and k not in ("peak_bytes",)}
        return est, (est.step.parts(), membd)

    try:
        key = (id(m), id(spec), id(node), id(eff), job, par)
        hit = _REFINED.get(key)
    except TypeError:
        return made()
    if hit is not None and all(a is b for a, b in zip(hit[0], (m, spec, node, eff))):
        return hit[1]
    out = made()
    if len(_REFINED) >= MAX_REFINED:
        _REFINED.clear()
    _REFINED[key] = ((m, spec, node, eff), out)
    return out


def evaluate_grid(model: str | ModelConfig, hardware: str, devices, *, global_batch: int, seq_len: int = 2048,
                  framework: str = "megatron", precision: str = "amp-bf16", attention: str = "flash",
                  calibration: str | None = None, hardware_files: list[str] | None = None,
                  tp_comm_overlap: bool = False, grad_reduce_in_bf16: bool = False, moe_enable_deepep: bool = False,
                  **axes) -> tuple[_Flat, dict[str, np.ndarray]]:
    """The screen's raw arrays for every valid layout (for tests, benchmarks and plots)."""
    m = model if isinstance(model, ModelConfig) else load_model(model)
    lib = load_library(hardware_files)
    spec, node = lib.device(hardware), lib.node_for(hardware)
    dpn = scale_up_domain(node)
    counts = device_counts(devices)
    prof = frameworks.resolve(framework)
    axes["zero"], axes["interleave"], axes["offload"] = _framework_axes(
        prof, axes.get("zero"), axes.get("interleave"), axes.get("offload"))
    ax = _axes(m, counts, dpn, global_batch, seq_len, **axes)
    ok, _ = _valid_mask(m, ax, global_batch, seq_len, dpn, tp_comm_overlap, prof.settings.pipeline_zero_stages)
    c = _flatten(ax, ok)
    job = TrainJob(micro_batch=1, seq_len=seq_len, global_batch=global_batch, precision=precision,
                   attention=attention, tp_comm_overlap=tp_comm_overlap, grad_reduce_in_bf16=grad_reduce_in_bf16,
                   moe_enable_deepep=moe_enable_deepep,
                   **frameworks.job_fields(framework))
    return c, screen(m, spec, node, job, ax, c, calibration)





# ----------------------------------------------------------------------------------- inference

class InferCandidate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: int
    hardware: str
    tp: int
    batch: int
    weight_dtype: str
    kv_dtype: str
    ttft_s: float
    tpot_s: float
    tokens_per_s: float  # decode tokens per second of one replica (tp devices)
    tokens_per_s_per_device: float
    cost_per_million_tokens_usd: float | None
    required_bytes: float
    capacity_bytes: float
    memory_fraction: float


class InferSearchResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    hardware: list[str]
    prompt_len: int
    gen_len: int
    objective: str
    max_ttft_ms: float | None
    max_tpot_ms: float | None
    enumerated: int
    evaluated: int
    feasible: int
    seconds: float
    rejected: dict[str, int]
    top: list[InferCandidate]

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


INFER_DTYPES = ("bf16", "fp8", "int8", "int4")


def search_infer(model: str | ModelConfig, hardware: str | Sequence[str] = "h100-sxm", *, prompt_len: int = 1024,
                 gen_len: int = 256, max_ttft_ms: float | None = None, max_tpot_ms: float | None = None,
                 objective: Literal["throughput", "cost", "tpot"] = "throughput", top: int = 10,
                 tp: Sequence[int] | None = None, batch: Sequence[int] | None = None,
                 weight_dtype: Sequence[str] | None = None, kv_dtype: Sequence[str] | None = None,
                 price_per_hour: float | None = None, max_memory_fraction: float = 1.0,
                 calibration: str | None = None, hardware_files: list[str] | None = None) -> InferSearchResult:
    """Serving layouts (hardware, tp, batch, weight and KV dtypes) ranked by decode throughput per
    device (or cost per token, or TPOT) under TTFT / TPOT targets.

    Memory is linear in the batch (weights + per-sequence KV cache and workspace), so it is
    evaluated for every batch at once from two points per (hardware, tp, dtypes); the decode and
    prefill times of the layouts that fit are the scalar models of costmodel.inference (a serving
    space is hundreds of layouts, not millions)."""
    from .inference import decode_step, prefill_time_s
    from .memory import decode_memory
    from .workload import InferJob

    require_positive(prompt_len=prompt_len, top=top)
    t0 = time.perf_counter()
    m = model if isinstance(model, ModelConfig) else load_model(model)
    if objective not in ("throughput", "cost", "tpot"):
        raise InputError(f"unknown inference objective {objective!r}; expected throughput, cost or tpot", field="objective")
    if not 0 < max_memory_fraction <= 1:
        raise InputError(f"max_memory_fraction must be in (0, 1], got {max_memory_fraction}", field="max_memory_fraction")
    for d in (*(weight_dtype or ()), *(kv_dtype or ())):
        if d not in ("fp32", "bf16", "fp16", "fp8", "int8", "int4"):
            raise InputError(f"dtype {d!r} is not one of fp32, bf16, fp16, fp8, int8, int4", field="dtype")
    for name, target in (("max-ttft-ms", max_ttft_ms), ("max-tpot-ms", max_tpot_ms)):
        if target is not None and not (isinstance(target, (int, float)) and math.isfinite(target) and target > 0):
            raise InputError(f"expected a positive latency target in ms (got {target!r})", field=name)
    require_run(price_per_hour=price_per_hour)
    if not (isinstance(gen_len, int) and gen_len >= 0):
        raise InputError(f"expected a number of generated tokens >= 0 (got {gen_len!r})", field="gen-len")
    lib = load_library(hardware_files)
    hw_ids = [hardware] if isinstance(hardware, str) else list(hardware)
    batches = np.asarray(sorted(set(batch or _pow2_upto(1024))), dtype=np.int64)
    wds, kvs = list(weight_dtype or INFER_DTYPES), list(kv_dtype or ("bf16", "fp8"))
    layouts = sum(len(tp or _pow2_upto(lib.node_for(hw).devices_per_node if lib.node_for(hw) else 8)) for hw in hw_ids) \
        * len(wds) * len(kvs) * len(batches)
    if layouts > MAX_INFER_LAYOUTS:
        raise InputError(f"the serving search has {layouts:,} layouts ({len(batches)} batch sizes x {len(wds)} weight dtypes "
                         f"x {len(kvs)} KV dtypes, over the tp sizes and hardware), over the limit of "
                         f"{MAX_INFER_LAYOUTS:,}: restrict --batch, --tp, --weight-dtype, --kv-dtype or --hardware",
                         field="batch")
    context = prompt_len + gen_len
    mid_ctx = prompt_len + gen_len // 2
    enumerated = evaluated = feasible = 0
    rejected: dict[str, int] = {}
    rows: list[InferCandidate] = []
    for hw in hw_ids:
        spec, node = lib.device(hw), lib.node_for(hw)
        dpn = scale_up_domain(node)
        eff = efficiency_for(spec, calibration)
        price = price_per_hour if price_per_hour is not None else spec.price_per_hour_usd
        cap = spec.memory.capacity_bytes * max_memory_fraction
        link = comm_bridge.Links.from_specs(spec, node, eff)
        for t in (tp or _pow2_upto(dpn)):
            for wd in wds:
                for kd in kvs:
                    enumerated += len(batches)
                    if m.heads % t or (m.n_kv_heads % t and t % m.n_kv_heads):
                        rejected["tp must divide the heads"] = rejected.get("tp must divide the heads", 0) + len(batches)
                        continue
                    job = InferJob(batch=1, prompt_len=prompt_len, gen_len=gen_len, weight_dtype=wd, kv_dtype=kd,
                                   compute_dtype="fp8" if wd == "fp8" and spec.peak_flops.get("fp8") else "bf16")
                    m1 = decode_memory(m, job, context, t).peak_bytes
                    m2 = decode_memory(m, job.model_copy(update={"batch": 2}), context, t).peak_bytes
                    req = required_device_bytes(m1 + (m2 - m1) * (batches - 1))  # linear in the batch
                    fits = req <= cap
                    evaluated += len(batches)
                    rejected["memory"] = rejected.get("memory", 0) + int((~fits).sum())
                    for b, r in zip(batches[fits], req[fits]):
                        j = job.model_copy(update={"batch": int(b)})
                        comm_s = 2 * m.layers * link.collective_time_s("all_reduce", int(b) * m.hidden * 2.0, t) if t > 1 else 0.0
                        tpot = decode_step(m, spec, j, mid_ctx, t, eff=eff).step_s + comm_s
                        ttft = prefill_time_s(m, spec, j, t, eff=eff) + (2 * m.layers * link.collective_time_s(
                            "all_reduce", int(b) * prompt_len * m.hidden * 2.0, t) if t > 1 else 0.0)  # inference._ttft_s
                        if max_tpot_ms is not None and tpot * 1e3 > max_tpot_ms:
                            rejected["TPOT target"] = rejected.get("TPOT target", 0) + 1
                            continue
                        if max_ttft_ms is not None and ttft * 1e3 > max_ttft_ms:
                            rejected["TTFT target"] = rejected.get("TTFT target", 0) + 1
                            continue
                        feasible += 1
                        tps = int(b) / tpot
                        rows.append(InferCandidate(
                            rank=0, hardware=hw, tp=int(t), batch=int(b), weight_dtype=wd, kv_dtype=kd, ttft_s=ttft,
                            tpot_s=tpot, tokens_per_s=tps, tokens_per_s_per_device=tps / t,
                            cost_per_million_tokens_usd=(price * t / 3600.0 / tps * 1e6) if price else None,
                            required_bytes=float(r), capacity_bytes=spec.memory.capacity_bytes,
                            memory_fraction=float(r) / spec.memory.capacity_bytes))
    if objective == "cost":
        if any(r.cost_per_million_tokens_usd is None for r in rows):
            raise InputError("objective 'cost' needs a price: pass --price-per-hour", field="price_per_hour")
        rows.sort(key=lambda r: r.cost_per_million_tokens_usd)
    elif objective == "tpot":
        rows.sort(key=lambda r: r.tpot_s)
    else:
        rows.sort(key=lambda r: -r.tokens_per_s_per_device)
    top_rows = rows[:top]
    for n, r in enumerate(top_rows, 1):
        r.rank = n
    return InferSearchResult(model=m.id, hardware=hw_ids, prompt_len=prompt_len, gen_len=gen_len, objective=objective,
                             max_ttft_ms=max_ttft_ms, max_tpot_ms=max_tpot_ms, enumerated=enumerated, evaluated=evaluated,
                             feasible=feasible, seconds=time.perf_counter() - t0, rejected=rejected, top=top_rows)


class ServeCandidate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: int
    hardware: str
    layout: str  # "tp2", "tp8 ep8 dpa", "tp8 pp2" (serve_plan.Layout.label)
    tp: int
    pp: int
    ep: int
    dp_attention: bool
    devices: int
    weight_dtype: str
    kv_dtype: str
    output_tokens_per_s: float  # one replica (all its devices)
    output_tokens_per_s_per_device: float
    requests_per_s: float
    ttft_mean_s: float
    ttft_p99_s: float
    tpot_mean_s: float | None
    tpot_p99_s: float | None
    usd_per_million_output_tokens: float | None
    kv_cache_tokens: int
    max_load_requests_per_s: float | None  # --request-rate: the replica's max-load rate (the rate must stay below)


class ServeSearchResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    hardware: list[str]
    engine: str
    load: str
    load_value: float | None
    input_len: int
    output_len: int
    num_requests: int
    objective: str
    max_ttft_ms: float | None  # bounds p99 TTFT over the requests
    max_tpot_ms: float | None  # bounds p99 TPOT
    evaluated: int
    feasible: int
    seconds: float
    rejected: dict[str, int]
    top: list[ServeCandidate]

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


SERVE_LOADS = ("request_rate", "concurrency", "max_load")
SERVE_OBJECTIVES = ("throughput", "cost", "ttft", "tpot")
# Requests simulated per layout by default (as serve_plan's bisection): p99s over 500 requests.
SERVE_SEARCH_REQUESTS = 500


def search_serve(model: str | ModelConfig, hardware: str | Sequence[str] = "h100-sxm", *, load: str,
                 value: float | None = None, input_len: int = 1024, output_len: int = 256, engine: str = "vllm",
                 num_requests: int | None = None, max_ttft_ms: float | None = None, max_tpot_ms: float | None = None,
                 objective: str = "throughput", top: int = 10, tp: Sequence[int] | None = None,
                 pp: Sequence[int] | None = None, ep: Sequence[int] | None = None,
                 weight_dtype: Sequence[str] | None = None, kv_dtype: Sequence[str] | None = None,
                 price_per_hour: float | None = None, calibration: str | None = None, seed: int = 0,
                 hardware_files: list[str] | None = None, progress=None) -> ServeSearchResult:
    """Serving layouts (hardware x tp / ep / dp-attention / pp as serve_plan.layouts x weight and
    KV dtypes) under a load (``load`` "request_rate" or "concurrency" with ``value``, or
    "max_load"), each run through costmodel.serving.estimate_serve with ``engine``'s defaults and
    ranked by output tokens/s per device (``objective`` "throughput"), $ per million output tokens
    ("cost"), p99 TTFT ("ttft") or p99 TPOT ("tpot"). ``max_ttft_ms`` / ``max_tpot_ms`` bound the
    p99s over the requests. At a request rate a layout must also sustain it: the rate must be
    below the replica's max-load request rate, where its queue grows without bound (serve_plan).
    Pipeline stages are tried only where no layout of that hardware and dtypes fits without
    (unless ``pp`` asks for them). ``progress(done, total)`` is called after every layout."""
    from .serve_plan import Layout, layouts as plan_layouts
    from .serving import ENGINES, estimate_serve

    t0 = time.perf_counter()
    m = model if isinstance(model, ModelConfig) else load_model(model)
    if load not in SERVE_LOADS:
        raise InputError(f"unknown load {load!r}; expected one of {', '.join(SERVE_LOADS)}", field="load")
    if load == "request_rate" and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise InputError(f"expected a positive number of requests/s (got {value!r})", field="request-rate")
    if load == "concurrency" and not (isinstance(value, (int, float)) and value >= 1 and float(value).is_integer()):
        raise InputError(f"expected an integer >= 1 of requests in flight (got {value!r})", field="concurrency")
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}", field="engine")
    if objective not in SERVE_OBJECTIVES:
        raise InputError(f"unknown serving objective {objective!r}; expected {', '.join(SERVE_OBJECTIVES)}",
                         field="objective")
    for name, v in (("input-len", input_len), ("output-len", output_len), ("top", top)):
        if not (isinstance(v, int) and v >= 1):
            raise InputError(f"expected an integer >= 1 (got {v!r})", field=name)
    if num_requests is None:
        num_requests = max(SERVE_SEARCH_REQUESTS, 10 * int(value)) if load == "concurrency" else SERVE_SEARCH_REQUESTS
    if not (isinstance(num_requests, int) and num_requests >= 10):
        raise InputError(f"needs at least 10 requests for a p99 (got {num_requests!r})", field="num-requests")
    if load == "concurrency" and num_requests < 3 * int(value):
        raise InputError(f"needs at least 3 x concurrency = {3 * int(value)} requests for a steady state "
                         f"(got {num_requests})", field="num-requests")
    for d in (*(weight_dtype or ()), *(kv_dtype or ())):
        if d not in ("fp32", "bf16", "fp16", "fp8", "int8", "int4"):
            raise InputError(f"dtype {d!r} is not one of fp32, bf16, fp16, fp8, int8, int4", field="dtype")
    for name, target in (("max-ttft-ms", max_ttft_ms), ("max-tpot-ms", max_tpot_ms)):
        if target is not None and not (isinstance(target, (int, float)) and math.isfinite(target) and target > 0):
            raise InputError(f"expected a positive latency target in ms (got {target!r})", field=name)
    require_run(price_per_hour=price_per_hour)
    lib = load_library(hardware_files)
    hw_ids = [hardware] if isinstance(hardware, str) else list(hardware)
    wds, kvs = list(weight_dtype or INFER_DTYPES), list(kv_dtype or ("bf16", "fp8"))
    todo = []  # (hardware, weight dtype, KV dtype, layouts)
    rejected: dict[str, int] = {}

    def reject(why: str, n: int = 1) -> None:
        rejected[why] = rejected.get(why, 0) + n

    for hw in hw_ids:
        spec, node = lib.device(hw), lib.node_for(hw)
        lays = plan_layouts(m, scale_up_domain(node), tp_sizes=tp)
        bad = [t for t in set(tp or ()) if m.heads % t]
        if bad:
            reject("tp must divide the heads", len(bad) * len(wds) * len(kvs))
        if pp is not None:  # the stages asked for, at every tp
            tps = sorted({lay.tp for lay in lays})
            lays = [lay for lay in lays if lay.pp == 1] + [Layout(t, p) for t in tps for p in sorted(set(pp))
                                                          if 1 < p <= m.layers]
            lays = [lay for lay in lays if lay.pp in pp]
        if ep is not None:
            lays = [lay for lay in lays if lay.ep in ep]
        for wd in wds:
            for kd in kvs:
                todo.append((hw, spec, node, wd, kd, lays))
    total = sum(len(x[-1]) for x in todo)
    done = evaluated = 0
    rows: list[ServeCandidate] = []
    for hw, spec, node, wd, kd, lays in todo:
        price = price_per_hour if price_per_hour is not None else spec.price_per_hour_usd
        fits_without_pp = False
        for lay in lays:
            done += 1
            if lay.pp > 1 and pp is None and fits_without_pp:  # not tried: a layout fits without
                if progress is not None:
                    progress(done, total)
                continue

            def run(ld, val, lay=lay):
                return estimate_serve(m, spec, tp=lay.tp, pp=lay.pp, ep=lay.ep, input_len=input_len,
                                      output_len=output_len, load=ld, value=val, num_requests=num_requests,
                                      engine=engine, weight_dtype=wd, kv_dtype=kd, node=node, calibration=calibration,
                                      seed=seed, dp_attention=lay.dp_attention)
            try:
                est = run(load, None if load == "max_load" else float(value))
            except InputError as exc:
                if "does not fit" not in exc.detail:
                    raise
                reject("memory")
                if progress is not None:
                    progress(done, total)
                continue
            evaluated += 1
            if lay.pp == 1:
                fits_without_pp = True
            top_rate = None
            if load == "request_rate":
                top_rate = run("max_load", None).requests_per_s
            if progress is not None:
                progress(done, total)
            tpot = est.tpot_s or {}
            if top_rate is not None and value >= top_rate:
                reject("cannot sustain the request rate")
                continue
            if max_ttft_ms is not None and est.ttft_s["p99"] * 1e3 > max_ttft_ms:
                reject("TTFT target")
                continue
            if max_tpot_ms is not None and tpot.get("p99") is not None and tpot["p99"] * 1e3 > max_tpot_ms:
                reject("TPOT target")
                continue
            # the devices for the time they take: price x devices per hour over the output tokens of that hour
            usd = price * est.devices / (est.output_tokens_per_s * 3600.0) * 1e6 if price else None
            rows.append(ServeCandidate(
                rank=0, hardware=hw, layout=lay.label(), tp=lay.tp, pp=lay.pp, ep=lay.ep,
                dp_attention=lay.dp_attention, devices=est.devices, weight_dtype=wd, kv_dtype=kd,
                output_tokens_per_s=est.output_tokens_per_s,
                output_tokens_per_s_per_device=est.output_tokens_per_s_per_device,
                requests_per_s=est.requests_per_s, ttft_mean_s=est.ttft_s["mean"], ttft_p99_s=est.ttft_s["p99"],
                tpot_mean_s=tpot.get("mean"), tpot_p99_s=tpot.get("p99"), usd_per_million_output_tokens=usd,
                kv_cache_tokens=est.kv_cache_tokens, max_load_requests_per_s=top_rate))
    if objective == "cost":
        if any(r.usd_per_million_output_tokens is None for r in rows):
            raise InputError("objective 'cost' needs a price: pass --price-per-hour", field="price_per_hour")
        rows.sort(key=lambda r: (r.usd_per_million_output_tokens, r.ttft_p99_s))
    elif objective == "ttft":
        rows.sort(key=lambda r: (r.ttft_p99_s, -r.output_tokens_per_s_per_device))
    elif objective == "tpot":
        rows.sort(key=lambda r: (r.tpot_p99_s if r.tpot_p99_s is not None else math.inf, r.ttft_p99_s))
    else:
        rows.sort(key=lambda r: (-r.output_tokens_per_s_per_device, r.ttft_p99_s))
    feasible = len(rows)
    top_rows = rows[:top]
    for n, r in enumerate(top_rows, 1):
        r.rank = n
    return ServeSearchResult(model=m.id, hardware=hw_ids, engine=engine, load=load,
                             load_value=None if load == "max_load" else float(value), input_len=input_len,
                             output_len=output_len, num_requests=num_requests, objective=objective,
                             max_ttft_ms=max_ttft_ms, max_tpot_ms=max_tpot_ms, evaluated=evaluated, feasible=feasible,
                             seconds=time.perf_counter() - t0, rejected=rejected, top=top_rows)


# `costmodel.search(...)` is the function above; importing this module rebinds the package attribute
# to the module, so the module is made callable too.
_callable_module(__name__, search)
