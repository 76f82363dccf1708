"""Device efficiency: datasheet peaks times efficiency curves, or curves fitted to measurements.

The models never use a datasheet peak as an achieved rate. They ask a :class:`DeviceEfficiency`,
built either from a spec alone (:func:`default_efficiency`: the peaks times default curves) or
from a calibration overlay fitted to kernel records (:func:`fit_overlay`, written by
``costmodel calibrate``, read by :func:`load_overlay`). :func:`shipped_efficiency` uses
``hardware/calibrated/<id>.yaml`` when it exists and the defaults otherwise, and says which in
``DeviceEfficiency.source``.

The kernel time model (one form for GEMMs, memory-bound kernels and attention)::

    t_kernel = t_min + smoothmax_p(W / P, B / BW)     # compute- or memory-bound, smooth corner
    t_stream = smoothmax_q(t_floor, t_kernel)         # queued back to back: host dispatch floor
    t_call   = t_gap + t_stream                       # one isolated call (SCHEMA.md's ``s``)

with ``smoothmax_p(a, b) = (a^p + b^p)^(1/p)``; W is the work in FLOPs, B the fewest bytes
moved. For GEMMs ``P = P_dtype * x / (x + x_half)`` with x = min(m, n): the saturating
efficiency of small tiles (a decode GEMM with m = 1 uses a sliver of each tile). For attention
``W`` counts the causal diagonal blocks (the kernel computes whole ``block`` x ``block`` tiles on
the diagonal) and ``P = P_max * d / (d + d_half)`` (small heads keep the tensor cores less busy);
non-causal kernels run ``noncausal_factor`` times faster per FLOP (no masking). Memory-bound
kernels are ``t_min + B / BW``. Collectives are ``alpha + bytes * busbw_factor / busbw``
(nccl-tests' bus bandwidth convention), per op and world size.

Parameters are fitted by Levenberg-Marquardt on log times (relative errors), with a weak prior
that keeps parameters the data cannot pin near their starting values. Everything is numpy.
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .bench.records import (
    ATTENTION_OPS,
    COLLECTIVE_OPS,
    DTYPE_BYTES,
    ELEMENTWISE_OPS,
    GEMM_OPS,
    HOST_OPS,
    MEM_OPS,
    busbw_factor,
    record_time_s,
    sdpa_flops,
    stream_time_s,
    write_text_atomic,
)
from .errors import InputError

FORMAT = "costmodel-calibration/1"

# ------------------------------------------------------------------------------------------------
# Default efficiency curves (used with a spec's datasheet peaks when no calibration exists).
#
# Sources: data/measurements/h100-sxm-2026-11-23-kernels.jsonl (this harness on an H100 SXM,
# torch 2.11 / CUDA 13.0) and shared/truth/h100-h200-public.jsonl (H100 GEMMs: bf16 8192^3 at
# 773 of 989 TFLOP/s = 0.78, 16384^3 at 694 = 0.70; fp16 0.75; tf32 8192^3 at 401 of 494.5 = 0.81;
# fp32 51.2 of 67 = 0.76; fp8 1362 of 1979 = 0.69; our run: bf16 0.70-0.75, fp8 0.64).
DEFAULT_GEMM_EFFICIENCY = {"fp64": 0.75, "fp32": 0.75, "tf32": 0.75, "bf16": 0.74, "fp16": 0.72, "fp8": 0.64, "int8": 0.64,
                           "int4": 0.5, "fp4": 0.5}
# GEMMs with m = 1..128 tokens stream the weights at 2.5-2.6 TB/s of 3.35 on an H100 (truth file's
# gemm_llm m = 1..128, 8192 -> 28672; our run 2.5-2.6): 0.77 of the datasheet bandwidth.
DEFAULT_GEMM_BW_EFFICIENCY = 0.77
# Large device copies: 3.00 TB/s of 3.35 on an H100 (truth: 4 GiB copy 3005 GB/s; ours 3010): 0.90.
DEFAULT_COPY_BW_EFFICIENCY = 0.90
# Reductions (a read): 3.01-3.06 TB/s of 3.35 at 4 GiB (truth 3011; ours 3063).
DEFAULT_READ_BW_EFFICIENCY = 0.90
# Fused elementwise kernels: add 3.03, gelu 2.83, layernorm 2.03 TB/s of 3.35 at 1 GiB (ours).
DEFAULT_ELEMENTWISE_BW_EFFICIENCY = {"elementwise_add": 0.90, "gelu": 0.85, "layernorm": 0.60}
# Host dispatch and kernel floors of PyTorch eager on an H100 host (ours): a copy kernel queued
# back to back every 7.4 us; a cuBLAS GEMM every 15-25 us (bf16 18 us); one isolated call
# (synchronise, launch, wait) adds 10-25 us; the smallest kernel runs ~3 us.
DEFAULT_LAUNCH_OVERHEAD_S = 7.5e-6
DEFAULT_GEMM_FLOOR_S = 18e-6
DEFAULT_GEMM_GAP_S = 20e-6
DEFAULT_KERNEL_MIN_S = 3e-6
DEFAULT_MEM_GAP_S = 10e-6
# GEMM small-tile saturation: x_half = 16 rows (fit to the H100 LLM-shaped GEMMs).
# Starting value of the fitted k-pipeline ramp k / (k + k_half) (CUTLASS Hopper mainloops stage 64-wide
# k slices; a tile's prologue and epilogue cost a few of them).
K_HALF_START = 64.0
DEFAULT_GEMM_X_HALF = 16.0
# Smooth corners: compute/memory (p) and floor/kernel (q), fitted on the H100 records.
DEFAULT_P = 3.0
DEFAULT_Q = 4.0
# Flash attention (SDPA, bf16) on the H100: causal forward 556-584 TFLOP/s at d=128, s>=4096 and
# 417 at d=64; forward+backward 486-526 at d=128 (ours; truth: d=64, s=1024 fwd 258, fwd+bwd 139).
# Expressed as P_max * d / (d + d_half) of the bf16 peak, with the diagonal-block term below.
DEFAULT_ATTENTION = {
    "sdpa_fwd": {"efficiency_max": 0.84, "head_dim_half": 56.0, "causal_block": 128.0, "noncausal_factor": 1.12},
    "sdpa_fwd_bwd": {"efficiency_max": 0.78, "head_dim_half": 56.0, "causal_block": 128.0, "noncausal_factor": 1.0},
}
# Host links: pinned copies reach 54-55 of 64 GB/s (PCIe 5 x16; truth 54.9/55.1, ours 54.2) = 0.85;
# pageable ones 7.8-16.8 GB/s (truth 16.8, ours 7.8-12.7; a staging copy through pinned memory) = 0.2.
DEFAULT_H2D_PINNED_EFFICIENCY = 0.85
DEFAULT_H2D_PAGEABLE_EFFICIENCY = 0.20
DEFAULT_HOST_LATENCY_S = 10e-6

# Fit settings.
PRIOR_WEIGHT = 0.03  # residual weight of (log parameter - log start): a weak pull, ~3% per e-fold
# Repeatability floor of one record (log-time sigma) in the residual weights: records whose rounds
# agree within ~6% weigh fully, a record whose rounds spread by 50% about a quarter.
SIGMA0 = 0.03
HOLDOUT_FRACTION = 0.25


# ------------------------------------------------------------------------------------------------
def smoothmax(a, b, p: float):
    """(a^p + b^p)^(1/p), elementwise, computed without overflow."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    m = np.maximum(np.maximum(a, b), 1e-300)
    return m * ((a / m) ** p + (b / m) ** p) ** (1.0 / p)


@dataclass(frozen=True)
class Timing:
    """Host-side terms shared by every kernel family."""

    kernel_min_s: float = DEFAULT_KERNEL_MIN_S  # the smallest kernel's GPU time
    gap_s: float = DEFAULT_GEMM_GAP_S  # added to one isolated call (sync, launch, wait)
    floor_s: float = DEFAULT_GEMM_FLOOR_S  # back-to-back calls are never faster than this
    q: float = DEFAULT_Q
    # The host round trip of one isolated call (event, dispatch, event), when fitted apart from the
    # back-to-back launch period ``floor_s``: an isolated call then takes
    # max(call_floor_s, gap_s + t_kernel), the CPU's time or the GPU's start latency plus the kernel.
    call_floor_s: float | None = None

    def stream(self, t_kernel):
        return smoothmax(self.floor_s, t_kernel, self.q)

    def call(self, t_kernel):
        if self.call_floor_s is not None:
            return smoothmax(self.call_floor_s, self.gap_s + np.asarray(t_kernel, dtype=float), self.q)
        return self.gap_s + self.stream(t_kernel)


@dataclass(frozen=True)
class GemmDtype:
    flops_per_s: float  # at the boost clock of a short burst
    timing: Timing
    tile: tuple[int, int] | None = None  # output tile (rows, cols) for wave quantisation, if fitted
    sustained_flops_per_s: float | None = None  # power-limited cap under sustained load (None: no cap)
    wave_exponent: float | None = None  # this dtype's utilisation exponent (None: the curve's)


# A burst of isolated calls (SCHEMA.md records; this harness since 2026-11-23c, and the "ten timed
# products after three warm-ups" of the device notes) reaches its median call after about this many
# kernel durations of load: 3 warm-ups + half of 10 timed calls.
BURST_CALLS_TO_MEDIAN = 8.0
# Sharpness of the onset of power throttling with the load time T: f = 1 / (1 + (tau / T)^n).
# data/measurements/h100-sxm-2026-11-23c-power-trace.json: bf16 8192^3 back to back from idle ran
# at 776-791 TFLOP/s for the first 58 ms and 672-721 after 119 ms (a delayed step, not an exponential).
THROTTLE_SHARPNESS = 4.0
# The power cap is a near-hard ceiling on the rate (the clock is lowered just enough): combined with
# the burst time by a sharp smooth max (exponent 16: +1.3% where the two are within 10%).
POWER_CAP_P = 16.0
DEFAULT_THROTTLE_S = 0.08


# Output tiles tried for wave quantisation (CUTLASS/cuBLAS Hopper kernels use 64..256 x 64..256
# CTA tiles; the fit keeps the one that explains a dtype's records best, or none).
TILE_CANDIDATES = (None, (64, 128), (128, 128), (128, 256), (256, 128), (256, 256))


# Shortest k slice a split-k GEMM gives one CTA. An output of fewer tiles than processors is split
# along k (cuBLAS/CUTLASS split-k, stream-k) only when k is long: measured H100/H200 tf32
# 128x14336x4096 runs memory-bound (84-104 us, ~2.4-2.8 TB/s, so its 56 tiles of 128 x 256 filled
# the 132 SMs), while 1024^3 (32 tiles, k = 1024) ran at the speed of its unsplit tiles.
SPLIT_K_MIN_K = 1024


def wave_utilisation(m, n, tile: tuple[int, int] | None, units: float | None, k=None):
    """Fraction of the processors busy when an m x n output in ``tile`` tiles runs in whole waves
    of ``units`` tiles (the last wave partly empty): tiles / (ceil(tiles / units) * units).
    With ``k``, an output of fewer tiles than processors is first split along k into
    min(floor(units / tiles), floor(k / SPLIT_K_MIN_K)) slices."""
    if tile is None or not units:
        return 1.0
    tiles = np.ceil(np.asarray(m, dtype=float) / tile[0]) * np.ceil(np.asarray(n, dtype=float) / tile[1])
    if k is not None:
        splits = np.maximum(1.0, np.minimum(np.floor(units / tiles), np.floor(np.asarray(k, dtype=float) / SPLIT_K_MIN_K)))
        tiles = tiles * splits
    return tiles / (np.ceil(tiles / units) * units)


def pack_s(m, n, k, elem_bytes, batch, pack_bytes_per_s: float | None):
    """Operand packing of a CPU BLAS GEMM, a serial phase before its compute (Goto & van de Geijn,
    "Anatomy of High-Performance Matrix Multiplication", ACM TOMS 34(3), 2008, sec. 4: panels of A
    and B are copied into contiguous buffers; OpenBLAS's level-3 driver packs each once per call):
    (m k + k n) elements read and written at ``pack_bytes_per_s``. A matrix-vector product (m or
    n = 1) goes to GEMV and packs nothing. On this project's 2-core host (OpenBLAS 0.3.31, fp32,
    n 2048, k 1024) m = 2..8 all took 0.79-0.82 ms, then +21.5 us per row: a fixed ~0.78 ms
    (16 MiB moved) before a 195 GFLOP/s compute."""
    if pack_bytes_per_s is None:
        return 0.0
    packed = 2.0 * elem_bytes * (m * k + k * n) * batch / pack_bytes_per_s
    return np.where(np.minimum(m, n) > 1, packed, 0.0)


def power_limited_s(t_burst, flops, sustained_flops_per_s, p: float, load_s=None, throttle_s: float = DEFAULT_THROTTLE_S):
    """Kernel time once the power controller has lowered the clock: no faster than ``flops`` at the
    sustained rate (a smooth max, so a kernel far under the cap is not slowed). With ``load_s`` (the
    load time before the call), only the throttled fraction 1 / (1 + (throttle_s / load_s)^n) of it."""
    if sustained_flops_per_s is None:
        return t_burst
    t_cap = smoothmax(t_burst, flops / sustained_flops_per_s, POWER_CAP_P)
    if load_s is None:
        return t_cap
    f = 1.0 / (1.0 + (throttle_s / np.maximum(load_s, 1e-12)) ** THROTTLE_SHARPNESS)
    return t_burst + f * (t_cap - t_burst)


# Kernel-smoothed residuals of the GEMM curve (see GemmResidual): candidate length scales in octaves
# of (m, n, k), and candidate shrinkage strengths in units of one full-weight observation. The pair
# is chosen per fit by leave-one-shape-out cross-validation; "no correction" is always a candidate.
RESIDUAL_LENGTHS_OCTAVES = (0.35, 0.5, 0.7, 1.0, 1.4)
RESIDUAL_PRIORS = (0.3, 1.0, 3.0)
# Where no pair beats the curve alone (the misses of neighbouring shapes are not correlated: on the
# H100 records, cuBLAS's kernel choice jumps between neighbours), the correction is kept only at the
# measured shapes themselves: a length of 0.15 octave leaves 0.1% of it at the nearest neighbour of
# the harness grid (2048 -> 2560 cubed is 0.56 octave away), and a shrinkage of 0.1 observation
# keeps ~90% of one full-weight record's miss (a noisy record, of lower weight, is trusted less).
RESIDUAL_EXACT_LENGTH_OCTAVES = 0.15
RESIDUAL_EXACT_PRIOR = 0.1
RESIDUAL_CHUNK_ELEMENTS = 1 << 20  # query x point distances held at once (8 MiB)


@dataclass(frozen=True)
class GemmResidual:
    """What the smooth GEMM curve misses at measured shapes (cuBLAS's kernel choice per shape, wave
    effects the one fitted tile does not describe), carried to nearby shapes by kernel smoothing.

    Each measured shape i of a dtype stores ``num_i = sum w s r`` and ``den_i = sum w s^2`` over its
    records, where r = log(measured / curve) of the record's time, s = d log(record time) /
    d log(kernel time) (0 where the host floor hides the kernel, 1 for a long kernel) and w the
    record weight. The kernel time at (m, n, k) is multiplied by exp(c), with

        c = sum_i K_i num_i / (prior + sum_i K_i den_i),  K_i = exp(-|x - x_i|^2 / (2 l^2)),

    x = log2(m, n, k): a Nadaraya-Watson estimate (Nadaraya 1964; Watson 1964) of the kernel-time
    log residual that shrinks to 0 (the curve alone) farther than ~l octaves from any measured shape.
    """

    length_octaves: float
    prior: float
    points: Mapping[str, tuple]  # dtype -> (x (N, 3) log2 m n k, num (N,), den (N,))

    def log_factor(self, m, n, k, dtype: str):
        pts = self.points.get(dtype)
        if pts is None:
            return 0.0
        x, num, den = pts
        q = np.stack(np.broadcast_arrays(*(np.log2(np.maximum(np.asarray(v, dtype=float), 1.0)) for v in (m, n, k))), axis=-1)
        flat = q.reshape(-1, 3)
        out = np.empty(len(flat))
        step = max(1, RESIDUAL_CHUNK_ELEMENTS // max(1, len(x)))  # bounded memory for large vectorised queries
        for i in range(0, len(flat), step):
            kern = _gauss_kernel(flat[i:i + step], x, self.length_octaves)
            out[i:i + step] = (kern @ num) / (self.prior + kern @ den)
        return out.reshape(q.shape[:-1]) if q.ndim > 1 else float(out[0])


def _gauss_kernel(q: np.ndarray, x: np.ndarray, length: float) -> np.ndarray:
    """exp(-|q_i - x_j|^2 / (2 length^2)) for rows q (Q, 3) and x (N, 3): GemmResidual's weights."""
    d2 = np.maximum(np.sum(q * q, axis=1)[:, None] + np.sum(x * x, axis=1) - 2.0 * (q @ x.T), 0.0)
    return np.exp(-0.5 * d2 / length**2)


@dataclass(frozen=True)
class GemmCurve:
    dtypes: Mapping[str, GemmDtype]
    memory_bytes_per_s: float
    x_half: float = DEFAULT_GEMM_X_HALF
    p: float = DEFAULT_P
    units: float | None = None  # streaming multiprocessors (GPU) for wave quantisation
    throttle_s: float = DEFAULT_THROTTLE_S  # load time after which the power controller lowers the clock
    k_half: float = 0.0  # k-pipeline ramp: each output tile's prologue/epilogue ~ k_half steps of its k loop
    wave_exponent: float = 1.0  # utilisation ** a: tiles of a part-empty last wave run faster (more L2/HBM each)
    pack_bytes_per_s: float | None = None  # CPU BLAS operand packing (None: no packing, as on a GPU)
    residual: GemmResidual | None = None  # measured shapes' misses, smoothed (None: the curve alone)

    def kernel_s(self, m, n, k, dtype: str, batch=1, mode: str = "stream"):
        """GPU time of one GEMM kernel: ``stream`` under sustained load (power-limited), ``burst``
        as the median call of a short burst of isolated calls (throttled only if the burst is long)."""
        d = self.dtypes[dtype]
        m, n, k, batch = (np.asarray(v, dtype=float) for v in (m, n, k, batch))
        e = DTYPE_BYTES[dtype]
        out_e = 2.0 if dtype in ("fp8", "int8") else e
        flops = 2.0 * m * n * k * batch
        nbytes = batch * (e * (m * k + k * n) + out_e * m * n)
        x = np.minimum(m, n)
        a = self.wave_exponent if d.wave_exponent is None else d.wave_exponent
        util = wave_utilisation(m, n, d.tile, self.units, k) ** a
        rate = d.flops_per_s * x / (x + self.x_half) * k / (k + self.k_half) * util
        t = (d.timing.kernel_min_s + pack_s(m, n, k, e, batch, self.pack_bytes_per_s)
             + smoothmax(flops / rate, nbytes / self.memory_bytes_per_s, self.p))
        load = BURST_CALLS_TO_MEDIAN * t if mode == "burst" else None
        t = power_limited_s(t, flops, d.sustained_flops_per_s, self.p, load, self.throttle_s)
        if self.residual is not None:
            t = t * np.exp(self.residual.log_factor(m, n, k, dtype))
        return t


@dataclass(frozen=True)
class BandwidthCurve:
    """``t_kernel = t_min + traffic / bytes_per_s`` (traffic = bytes read + written)."""

    bytes_per_s: float
    timing: Timing

    def kernel_s(self, traffic_bytes):
        return self.timing.kernel_min_s + np.asarray(traffic_bytes, dtype=float) / self.bytes_per_s


@dataclass(frozen=True)
class AttentionCurve:
    flops_per_s_max: float
    head_dim_half: float
    causal_block: float
    noncausal_factor: float
    memory_bytes_per_s: float
    timing: Timing
    p: float = DEFAULT_P

    def kernel_s(self, b, h, s, d, causal, backward: bool):
        b, h, s, d = (np.asarray(v, dtype=float) for v in (b, h, s, d))
        causal = np.asarray(causal, dtype=bool)
        mult = 3.5 if backward else 1.0
        # Work the kernel does: full tiles on the causal diagonal (s * block / 2 extra pairs).
        pairs = np.where(causal, s * (s + self.causal_block) / 2.0, s * s)
        work = 4.0 * b * h * d * pairs * mult
        rate = self.flops_per_s_max * d / (d + self.head_dim_half) * np.where(causal, 1.0, self.noncausal_factor)
        nbytes = 4.0 * b * h * s * d * 2.0 * (2.5 if backward else 1.0)  # q, k, v, o in bf16 (+ grads)
        return self.timing.kernel_min_s + smoothmax(work / rate, nbytes / self.memory_bytes_per_s, self.p)


@dataclass(frozen=True)
class LinkFit:
    """Host copies: ``t = latency + bytes / bytes_per_s``."""

    bytes_per_s: float
    latency_s: float

    def time_s(self, nbytes):
        return self.latency_s + np.asarray(nbytes, dtype=float) / self.bytes_per_s


@dataclass(frozen=True)
class CollectiveFit:
    """``t = alpha + bytes * busbw_factor(op, world) / busbw`` for one op at one world size."""

    alpha_s: float
    busbw_bytes_per_s: float

    def time_s(self, op: str, nbytes, world: int):
        return self.alpha_s + np.asarray(nbytes, dtype=float) * busbw_factor(op, world) / self.busbw_bytes_per_s


# ------------------------------------------------------------------------------------------------
class DeviceEfficiency:
    """Achieved rates of one device. Immutable. Times are seconds, rates per second.

    ``gemm_time_s``, ``mem_bytes_per_s`` and ``attention_flops_per_s`` describe kernels queued
    back to back (as inside a training step): they include the host dispatch floor of each kernel
    family, so callers add no launch overhead for them. ``*_call_time_s`` give one isolated call,
    the convention of SCHEMA.md's kernel records. ``launch_overhead_s`` is the dispatch floor of
    the cheapest kernel, for kernels the caller models itself.
    """

    __slots__ = ("device", "source", "gemm", "copy", "read", "elementwise", "attention", "host", "collectives",
                 "launch_overhead_s", "peaks", "eager_infer_host_factor", "_frozen")

    def __init__(self, *, device: str, source: str, gemm: GemmCurve, copy: BandwidthCurve, read: BandwidthCurve,
                 elementwise: Mapping[str, BandwidthCurve], attention: Mapping[str, AttentionCurve], host: Mapping[str, LinkFit],
                 collectives: Mapping[str, Mapping[int, CollectiveFit]], launch_overhead_s: float, peaks: Mapping[str, float] | None = None,
                 eager_infer_host_factor: float = 1.0):
        s = object.__setattr__
        s(self, "device", device)
        s(self, "source", source)
        s(self, "gemm", gemm)
        s(self, "copy", copy)
        s(self, "read", read)
        s(self, "elementwise", dict(elementwise))
        s(self, "attention", dict(attention))
        s(self, "host", dict(host))
        s(self, "collectives", {op: dict(v) for op, v in collectives.items()})
        s(self, "launch_overhead_s", float(launch_overhead_s))
        s(self, "peaks", dict(peaks or {}))
        # this machine's eager Hugging Face inference host time against the constants of
        # costmodel.inference (fitted on one H100 machine): measured with the GPU's calibration
        s(self, "eager_infer_host_factor", float(eager_infer_host_factor))
        s(self, "_frozen", True)

    def __setattr__(self, name, value):
        raise AttributeError("DeviceEfficiency is immutable")

    def __repr__(self):
        return f"DeviceEfficiency({self.device!r}, source={self.source!r})"

    # ---------------------------------------------------------------- GEMM
    def _dtype(self, dtype: str) -> str:
        if dtype not in self.gemm.dtypes:
            have = ", ".join(sorted(self.gemm.dtypes))
            raise InputError(f"{self.device} has no {dtype} GEMM rate (have: {have})", field="dtype")
        return dtype

    def gemm_time_s(self, m, n, k, dtype: str, batch=1, interleaved: bool = False):
        """Seconds for one GEMM (or a batch of ``batch`` same-shape GEMMs in one kernel), queued
        back to back. Accepts numpy arrays for m, n, k (vectorised). ``interleaved``: the GEMMs
        run in short bursts between memory-bound kernels (a training or prefill step), so the power
        cap that sustained back-to-back GEMMs hit binds only as far as a short burst's does."""
        d = self._dtype(dtype)
        t = self.gemm.dtypes[d].timing.stream(self.gemm.kernel_s(m, n, k, d, batch, mode="burst" if interleaved else "stream"))
        return float(t) if np.ndim(t) == 0 else t

    def gemm_call_time_s(self, m, n, k, dtype: str, batch=1):
        """Seconds for one isolated GEMM call (synchronise, launch, wait), as SCHEMA.md records time."""
        d = self._dtype(dtype)
        t = self.gemm.dtypes[d].timing.call(self.gemm.kernel_s(m, n, k, d, batch, mode="burst"))
        return float(t) if np.ndim(t) == 0 else t

    def gemm_flops_per_s(self, m, n, k, dtype: str, batch=1):
        """Achieved FLOP/s of one GEMM, its memory-bound regime (small m) included."""
        f = 2.0 * np.asarray(m, dtype=float) * n * k * batch / self.gemm_time_s(m, n, k, dtype, batch)
        return float(f) if np.ndim(f) == 0 else f

    # ---------------------------------------------------------------- memory
    def mem_time_s(self, nbytes, kind: str = "copy"):
        """Seconds to stream ``nbytes`` (read + written) through a copy or a read kernel."""
        c = self.copy if kind == "copy" else self.read
        t = c.timing.stream(c.kernel_s(nbytes))
        return float(t) if np.ndim(t) == 0 else t

    def mem_bytes_per_s(self, nbytes, kind: str = "copy"):
        """Achieved streaming bandwidth for a kernel moving ``nbytes`` (read + write counted)."""
        r = np.asarray(nbytes, dtype=float) / self.mem_time_s(nbytes, kind)
        return float(r) if np.ndim(r) == 0 else r

    def elementwise_time_s(self, nbytes, op: str = "elementwise_add"):
        c = self.elementwise.get(op) or self.elementwise.get("elementwise_add") or self.copy
        t = c.timing.stream(c.kernel_s(nbytes))
        return float(t) if np.ndim(t) == 0 else t

    def elementwise_bytes_per_s(self, nbytes, op: str = "elementwise_add"):
        r = np.asarray(nbytes, dtype=float) / self.elementwise_time_s(nbytes, op)
        return float(r) if np.ndim(r) == 0 else r

    # ---------------------------------------------------------------- attention
    def attention_time_s(self, b, h, s, d, causal: bool = True, backward: bool = False):
        c = self.attention.get("sdpa_fwd_bwd" if backward else "sdpa_fwd")
        if c is None:
            raise InputError(f"{self.device} has no attention calibration (run `costmodel calibrate` on a GPU, or give a spec)",
                             field="attention")
        t = c.timing.stream(c.kernel_s(b, h, s, d, causal, backward))
        return float(t) if np.ndim(t) == 0 else t

    def attention_flops_per_s(self, b, h, s, d, causal: bool = True, backward: bool = False):
        """Achieved FLOP/s of flash attention, FLOPs counted as SCHEMA.md does (4bhs^2d, /2 causal,
        x3.5 forward+backward)."""
        f = sdpa_flops(b, h, s, d, causal, backward) / self.attention_time_s(b, h, s, d, causal, backward)
        return float(f) if np.ndim(f) == 0 else f

    # ---------------------------------------------------------------- host link
    def h2d_bytes_per_s(self, pinned: bool = True, nbytes: float | None = None) -> float:
        """Host-to-device bandwidth (asymptotic, or for a copy of ``nbytes``)."""
        f = self.host.get("h2d_pinned" if pinned else "h2d_pageable")
        if f is None:
            raise InputError(f"{self.device} has no host-link calibration", field="host")
        return f.bytes_per_s if nbytes is None else float(nbytes / f.time_s(nbytes))

    def d2h_bytes_per_s(self, pinned: bool = True, nbytes: float | None = None) -> float:
        key = "d2h_pinned" if pinned else "d2h_pageable"
        f = self.host.get(key) or self.host.get("h2d_pinned" if pinned else "h2d_pageable")
        if f is None:
            raise InputError(f"{self.device} has no host-link calibration", field="host")
        return f.bytes_per_s if nbytes is None else float(nbytes / f.time_s(nbytes))

    # ---------------------------------------------------------------- collectives
    def collective_time_s(self, op: str, nbytes: float, world: int) -> float | None:
        """Seconds of one collective on ``world`` devices, ``nbytes`` the whole buffer (nccl-tests
        convention). None when no calibrated fit exists for ``op``. A fit at another world size
        is reused through nccl-tests' bus-bandwidth factor (the nearest world size measured)."""
        fits = self.collectives.get(op)
        if not fits:
            return None
        w = world if world in fits else min(fits, key=lambda x: (abs(x - world), -x))
        t = fits[w].time_s(op, nbytes, world)
        return float(t) if np.ndim(t) == 0 else t

    # ---------------------------------------------------------------- records
    def predict_record_s(self, rec: Mapping[str, Any], stream: bool = False) -> float | None:
        """Predicted seconds for a SCHEMA.md kernel record (isolated call, or back to back)."""
        op = rec.get("op")
        try:
            if op in GEMM_OPS:
                f = self.gemm_time_s if stream else self.gemm_call_time_s
                return float(f(rec["m"], rec["n"], rec["k"], rec["dtype"]))
            if op == "cpu_gemm":
                n = rec["n"]
                return float((self.gemm_time_s if stream else self.gemm_call_time_s)(n, n, n, rec.get("dtype", "fp32")))
            if op in MEM_OPS:
                c = self.copy if op == "mem_copy" else self.read
                traffic = rec["bytes"] * (2 if op == "mem_copy" else 1)
                return float((c.timing.stream if stream else c.timing.call)(c.kernel_s(traffic)))
            if op in ELEMENTWISE_OPS:
                c = self.elementwise.get(op)
                if c is None:
                    return None
                return float((c.timing.stream if stream else c.timing.call)(c.kernel_s(rec["bytes"])))
            if op in ATTENTION_OPS:
                c = self.attention[op]
                t = c.kernel_s(rec["b"], rec["h"], rec["s"], rec["d"], rec.get("causal", True), op == "sdpa_fwd_bwd")
                return float(c.timing.stream(t) if stream else c.timing.call(t))
            if op in HOST_OPS:
                f = self.host.get(op)
                return float(f.time_s(rec["bytes"])) if f else None
            if op in COLLECTIVE_OPS:
                return self.collective_time_s(op, rec["bytes"], int(rec["world"]))
        except (KeyError, InputError):
            return None
        return None


# ------------------------------------------------------------------------------------------------
# Defaults from a spec.

def _spec_peaks(spec) -> dict[str, float]:
    out = {}
    for dt in ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4", "fp4"):
        v = spec.peak_flops.get(dt)
        if v:
            out[dt] = float(v)
    return out


def default_efficiency(spec) -> DeviceEfficiency:
    """Datasheet peaks x the default efficiency curves above (each constant cites its source)."""
    peaks = _spec_peaks(spec)
    bw = float(spec.memory.bandwidth_bytes_per_s)
    gemm_t = Timing(DEFAULT_KERNEL_MIN_S, DEFAULT_GEMM_GAP_S, DEFAULT_GEMM_FLOOR_S, DEFAULT_Q)
    gemm = GemmCurve({dt: GemmDtype(p * DEFAULT_GEMM_EFFICIENCY.get(dt, 0.7), gemm_t) for dt, p in peaks.items()},
                     bw * DEFAULT_GEMM_BW_EFFICIENCY, DEFAULT_GEMM_X_HALF, DEFAULT_P)
    mem_t = Timing(DEFAULT_KERNEL_MIN_S, DEFAULT_MEM_GAP_S, DEFAULT_LAUNCH_OVERHEAD_S, DEFAULT_Q)
    copy = BandwidthCurve(bw * DEFAULT_COPY_BW_EFFICIENCY, mem_t)
    read = BandwidthCurve(bw * DEFAULT_READ_BW_EFFICIENCY, mem_t)
    elem = {op: BandwidthCurve(bw * e, mem_t) for op, e in DEFAULT_ELEMENTWISE_BW_EFFICIENCY.items()}
    half = peaks.get("bf16") or peaks.get("fp16") or peaks.get("fp32")
    att = {op: AttentionCurve(half * a["efficiency_max"], a["head_dim_half"], a["causal_block"], a["noncausal_factor"],
                              bw * DEFAULT_COPY_BW_EFFICIENCY, gemm_t) for op, a in DEFAULT_ATTENTION.items()}
    host = {}
    hl = getattr(spec, "host_link", None)
    link_bw = float(hl.bandwidth_bytes_per_s) if hl is not None else 64e9  # PCIe 5 x16 when unknown
    for op in HOST_OPS:
        eff = DEFAULT_H2D_PINNED_EFFICIENCY if "pinned" in op else DEFAULT_H2D_PAGEABLE_EFFICIENCY
        host[op] = LinkFit(link_bw * eff, DEFAULT_HOST_LATENCY_S)
    return DeviceEfficiency(device=spec.id, source="datasheet defaults", gemm=gemm, copy=copy, read=read, elementwise=elem,
                            attention=att, host=host, collectives={}, launch_overhead_s=DEFAULT_LAUNCH_OVERHEAD_S, peaks=peaks)


# ------------------------------------------------------------------------------------------------
# Fitting.

def _lm(resid, x0: np.ndarray, iters: int = 200, tol: float = 1e-10) -> np.ndarray:
    """Levenberg-Marquardt on a residual vector function, numeric forward-difference Jacobian."""
    x = np.array(x0, dtype=float)
    r = resid(x)
    cost = float(r @ r)
    lam = 1e-3
    for _ in range(iters):
        J = np.empty((r.size, x.size))
        for j in range(x.size):
            h = 1e-6 * max(1.0, abs(x[j]))
            xp = x.copy()
            xp[j] += h
            J[:, j] = (resid(xp) - r) / h
        A = J.T @ J
        g = J.T @ r
        improved = False
        while lam < 1e12:
            try:
                dx = np.linalg.solve(A + lam * (np.diag(np.diag(A)) + 1e-9 * np.eye(x.size)), -g)
            except np.linalg.LinAlgError:
                lam *= 10
                continue
            xn = x + dx
            rn = resid(xn)
            cn = float(rn @ rn)
            if np.isfinite(cn) and cn < cost:
                improved = True
                done = cost - cn < tol * max(cost, 1e-30)
                x, r, cost = xn, rn, cn
                lam = max(lam / 3, 1e-12)
                break
            lam *= 4
        if not improved or done:
            break
    return x


class _Params:
    """Named parameters in log space, with starting values that double as a weak prior."""

    def __init__(self):
        self.names: list[str] = []
        self.start: list[float] = []

    def add(self, name: str, value: float) -> int:
        self.names.append(name)
        self.start.append(math.log(value))
        return len(self.names) - 1

    def x0(self):
        return np.array(self.start)


def _fit(params: _Params, model, obs: np.ndarray, prior: float = PRIOR_WEIGHT, return_cost: bool = False, weights=None,
         init: Mapping[str, float] | None = None):
    """Fit log(model(exp(x))) to log(obs) (residuals times ``weights``); return {name: value}.
    ``init`` (name -> value) starts the search elsewhere than the starting values, which stay the
    prior's centre (a warm start from a neighbouring fit)."""
    x0 = params.x0()
    lobs = np.log(obs)
    wts = np.ones_like(lobs) if weights is None else np.asarray(weights, float)

    def resid(x):
        with np.errstate(all="ignore"):
            pred = model(np.exp(x))
            r = (np.log(np.maximum(pred, 1e-300)) - lobs) * wts
        r = np.where(np.isfinite(r), r, 50.0)
        return np.concatenate([r, prior * (x - x0)])

    xi = x0 if not init else np.array([math.log(init[n]) if n in init else v for n, v in zip(params.names, x0)])
    x = _lm(resid, xi)
    out = {n: float(v) for n, v in zip(params.names, np.exp(x))}
    if return_cost:
        r = resid(x)[: obs.size]
        return out, float(r @ r)
    return out


def _sigma_weight(sig: float) -> float:
    """Weighted least squares: a record of relative sigma ``sig`` weighs SIGMA0 / sqrt(SIGMA0^2 + sig^2)."""
    return SIGMA0 / math.sqrt(SIGMA0**2 + sig**2)


def repeatability_weight(spread) -> float:
    """Residual weight of a record whose rounds spread by ``spread`` ((max - min) / median): a
    measurement that does not repeat pins the curve less (weighted least squares, sigma ~ spread / 2)."""
    if spread is None:
        return 1.0
    return _sigma_weight(float(spread) / 2.0)


# Median absolute deviation to a normal sigma (1 / Phi^-1(3/4); Rousseeuw & Croux 1993).
MAD_TO_SIGMA = 1.4826


def record_weight(r: Mapping[str, Any], stream: bool = False) -> float:
    """Residual weight of one record. With the rounds' times (``s_rounds``), sigma is their median
    absolute deviation: one disturbed round of five (a host hiccup) leaves the kept median sound and
    should not discount the record, as (max - min) would. Otherwise ``repeatability_weight``."""
    rounds = r.get("s_rounds")
    if not stream and isinstance(rounds, list) and len(rounds) >= 3:
        xs = np.asarray(rounds, dtype=float)
        med = float(np.median(xs))
        if med > 0:
            return _sigma_weight(MAD_TO_SIGMA * float(np.median(np.abs(xs - med))) / med)
    return repeatability_weight(r.get("s_stream_spread" if stream else "s_spread"))


def _gemm_obs(records):
    """(m, n, k, dtype, time, is_stream, weight) rows from GEMM records."""
    rows = []
    for r in records:
        if r.get("op") not in GEMM_OPS + ("cpu_gemm",):
            continue
        dt = r.get("dtype", "fp32")
        if dt not in DTYPE_BYTES:
            continue
        m, n, k = (r["n"],) * 3 if r["op"] == "cpu_gemm" else (r["m"], r["n"], r["k"])
        t = record_time_s(r)
        if t:
            rows.append((m, n, k, dt, t, False, record_weight(r)))
        ts = stream_time_s(r)
        if ts:
            rows.append((m, n, k, dt, ts, True, record_weight(r, stream=True)))
    return rows


def _units(records) -> float | None:
    sms = sorted({r.get("sms") for r in records if r.get("op") in GEMM_OPS and r.get("sms")})
    return float(sms[0]) if len(sms) == 1 else None


def fit_gemm(records, peaks: Mapping[str, float] | None = None, mem_bw: float | None = None) -> dict | None:
    """Fit the GEMM curve; where records say how many multiprocessors the device has (``sms``),
    also choose each dtype's output tile for wave quantisation (coordinate search over
    TILE_CANDIDATES, keeping a tile only when it lowers the residual)."""
    rows = _gemm_obs(records)
    if not rows:
        return None
    units = _units(records)
    dtypes = sorted({r[3] for r in rows})
    tiles = {d: None for d in dtypes}
    best = _fit_gemm_tiles(rows, dtypes, tiles, units, peaks, mem_bw)
    if not units:
        # A CPU (no multiprocessor count): keep an operand-packing phase where it explains the records.
        packed = _fit_gemm_tiles(rows, dtypes, tiles, units, peaks, mem_bw, pack=True)
        if packed["_cost"] < best["_cost"] * 0.98:
            best = packed
    if units:
        for _ in range(2):
            changed = False
            for d in dtypes:
                for cand in TILE_CANDIDATES:
                    if cand == tiles[d]:
                        continue
                    trial = dict(tiles)
                    trial[d] = cand
                    res = _fit_gemm_tiles(rows, dtypes, trial, units, peaks, mem_bw, init=best["_x"])
                    if res["_cost"] < best["_cost"] * 0.98:
                        best, tiles, changed = res, trial, True
            if not changed:
                break
    best.pop("_cost")
    best.pop("_x")
    residual = fit_gemm_residual(rows, best)
    if residual:
        best["residual"] = residual
    return best


def _residual_obs(rows, fitted: Mapping[str, Any]):
    """Per GEMM record row: (dtype, (m, n, k), r, s, w), r = log(measured / curve), s = d log(record
    time) / d log(kernel time) under the fitted curve ``fitted`` (a fit_gemm result)."""
    curve = _read_gemm(_Reader("<fit>"), {k: v for k, v in fitted.items() if k != "residual"})
    out = []
    for m, n, k, dt, t, st, w in rows:
        timing = curve.dtypes[dt].timing
        tk = float(curve.kernel_s(m, n, k, dt, mode="stream" if st else "burst"))
        f = timing.stream if st else timing.call
        pred = float(f(tk))
        sens = math.log(float(f(tk * 1.01)) / pred) / math.log(1.01)
        out.append((dt, (m, n, k), math.log(t / pred), sens, w))
    return out


def _residual_points(obs):
    """Sum the observations of each (dtype, shape): {dtype: (x (N, 3), num (N,), den (N,), shapes)}."""
    acc: dict[str, dict[tuple, list[float]]] = {}
    for dt, shape, r, s, w in obs:
        a = acc.setdefault(dt, {}).setdefault(shape, [0.0, 0.0])
        a[0] += w * s * r
        a[1] += w * s * s
    out = {}
    for dt, shapes in acc.items():
        keys = sorted(shapes)
        out[dt] = (np.log2(np.maximum(np.array(keys, float), 1.0)), np.array([shapes[k][0] for k in keys]),
                   np.array([shapes[k][1] for k in keys]), keys)
    return out


def fit_gemm_residual(rows, fitted: Mapping[str, Any]) -> dict | None:
    """The GemmResidual of a GEMM fit (overlay form), its length scale and shrinkage chosen from
    RESIDUAL_LENGTHS_OCTAVES x RESIDUAL_PRIORS by leave-one-shape-out cross-validation (each
    shape's records predicted from the other shapes' residuals). When no pair beats the curve alone
    by 2% in weighted mean |log error|, the correction is kept at the measured shapes only
    (RESIDUAL_EXACT_*): a measured shape is then predicted as measured, any other by the curve."""
    obs = _residual_obs(rows, fitted)
    pts = _residual_points(obs)
    if not pts or sum(len(v[3]) for v in pts.values()) < 4:
        return None
    # each observation's row among the shapes of every dtype, in the order the sums below concatenate them
    dts = sorted(pts)
    row = {(dt, shape): i for i, (dt, shape) in enumerate((dt, shape) for dt in dts for shape in pts[dt][3])}
    gi = np.array([row[(o[0], o[1])] for o in obs])
    r = np.array([o[2] for o in obs])
    s = np.array([o[3] for o in obs])
    w = np.array([o[4] for o in obs])
    base = float(np.sum(w * np.abs(r)) / np.sum(w))
    best = (math.inf, None)
    for length in RESIDUAL_LENGTHS_OCTAVES:
        sums = []
        for dt in dts:
            x, num, den, _ = pts[dt]
            kern = _gauss_kernel(x, x, length)
            np.fill_diagonal(kern, 0.0)  # leave the shape itself out
            sums.append((kern @ num, kern @ den))
        loo_num, loo_den = (np.concatenate(v)[gi] for v in zip(*sums))
        for prior in RESIDUAL_PRIORS:
            cost = float(np.sum(w * np.abs(r - s * loo_num / (prior + loo_den))) / np.sum(w))
            if cost < best[0]:
                best = (cost, (length, prior))
    smoothed = best[0] < base * 0.98
    length, prior = best[1] if smoothed else (RESIDUAL_EXACT_LENGTH_OCTAVES, RESIDUAL_EXACT_PRIOR)
    # cv_mean_abs_log_error: the best smoothing's leave-one-shape-out error, kept or not
    return {"length_octaves": length, "prior": prior, "cv_mean_abs_log_error": best[0], "curve_mean_abs_log_error": base,
            "dtypes": {dt: [[int(a) for a in shape] + [float(nu), float(de)] for shape, nu, de in zip(v[3], v[1], v[2])]
                       for dt, v in pts.items()}}


def _fit_gemm_tiles(rows, dtypes, tiles, units, peaks, mem_bw, init=None, pack: bool = False) -> dict:
    dtypes = sorted({r[3] for r in rows})
    m = np.array([r[0] for r in rows], float)
    n = np.array([r[1] for r in rows], float)
    k = np.array([r[2] for r in rows], float)
    di = np.array([dtypes.index(r[3]) for r in rows])
    t = np.array([r[4] for r in rows], float)
    st = np.array([r[5] for r in rows], bool)
    w = np.array([r[6] for r in rows], float)
    # The sustained (power-limited) rate is fitted only where records time both isolated bursts and
    # back-to-back calls of compute-bound kernels long enough to draw full power (>= 0.5 ms).
    # With both isolated and back-to-back records, the isolated call's host round trip is fitted on
    # its own (Timing.call_floor_s) rather than tied to the back-to-back launch period.
    split_floor = bool(st.any() and (~st).any())
    power = split_floor and bool(np.any(t > 5e-4))
    e = np.array([DTYPE_BYTES[r[3]] for r in rows], float)
    out_e = np.array([2.0 if r[3] in ("fp8", "int8") else DTYPE_BYTES[r[3]] for r in rows], float)
    flops = 2 * m * n * k
    nbytes = e * (m * k + k * n) + out_e * m * n
    # Starting values: the best rate seen per dtype, the best bytes/s of memory-bound shapes.
    P = _Params()
    ip = {}
    for d in dtypes:
        sel = di == dtypes.index(d)
        best = float(np.max(flops[sel] / t[sel]))
        tmin = float(np.min(t[sel]))
        ip[d] = (P.add(f"P_{d}", best), P.add(f"gap_{d}", max(tmin * 0.5, 1e-7)), P.add(f"floor_{d}", max(tmin * 0.6, 1e-7)),
                 P.add(f"S_{d}", best * 0.85) if power else None,
                 P.add(f"cfloor_{d}", max(float(np.min(t[sel & ~st])) if np.any(sel & ~st) else tmin, 1e-7)) if split_floor else None)
    bw0 = mem_bw or float(np.max(nbytes / t))
    i_bw = P.add("bw", bw0)
    i_k0 = P.add("k0", max(float(np.min(t)) * 0.1, 1e-7))
    i_xh = P.add("x_half", 8.0)
    i_kh = P.add("k_half", K_HALF_START)
    # One utilisation exponent per tiled dtype: how much faster the tiles of a part-empty last wave
    # run differs between kernel families (SIMT fp32 is compute-bound, tensor-core tiles share HBM/L2).
    i_wa = {d: P.add(f"wave_{d}", 1.0) for d in dtypes if tiles[d] is not None}
    i_p = P.add("p_minus_1", DEFAULT_P - 1)
    i_q = P.add("q_minus_1", DEFAULT_Q - 1)
    i_tau = P.add("tau", DEFAULT_THROTTLE_S) if power else None
    i_pack = P.add("pack_bw", bw0 / 2) if pack else None

    def model(v):
        Pd = np.array([v[ip[d][0]] for d in dtypes])[di]
        gap = np.array([v[ip[d][1]] for d in dtypes])[di]
        floor = np.array([v[ip[d][2]] for d in dtypes])[di]
        x = np.minimum(m, n)
        wa = np.array([v[i_wa[d]] if d in i_wa else 1.0 for d in dtypes])[di]
        rate = Pd * x / (x + v[i_xh]) * k / (k + v[i_kh]) * util ** wa
        pp = 1 + v[i_p]
        tk = v[i_k0] + smoothmax(flops / rate, nbytes / v[i_bw], pp)
        if pack:
            tk = tk + pack_s(m, n, k, e, 1.0, v[i_pack])
        if power:
            Sd = np.array([v[ip[d][3]] for d in dtypes])[di]
            tk = np.where(st, power_limited_s(tk, flops, Sd, pp),
                          power_limited_s(tk, flops, Sd, pp, BURST_CALLS_TO_MEDIAN * tk, v[i_tau]))
        ts = smoothmax(floor, tk, 1 + v[i_q])
        if split_floor:
            cfl = np.array([v[ip[d][4]] for d in dtypes])[di]
            return np.where(st, ts, smoothmax(cfl, gap + tk, 1 + v[i_q]))
        return np.where(st, ts, gap + ts)

    util = np.ones_like(m)
    for d in dtypes:
        sel = di == dtypes.index(d)
        util[sel] = wave_utilisation(m[sel], n[sel], tiles[d], units, k[sel])
    fit, cost = _fit(P, model, t, return_cost=True, weights=w, init=init)
    res = {"_cost": cost, "_x": fit,
        "memory_bytes_per_s": fit["bw"],
        "kernel_min_s": fit["k0"],
        "x_half": fit["x_half"],
        "k_half": fit["k_half"],
        "p": 1 + fit["p_minus_1"],
        "q": 1 + fit["q_minus_1"],
        "dtypes": {},
    }
    if units:
        res["units"] = units
    if power:
        res["throttle_s"] = fit["tau"]
    if pack:
        res["pack_bytes_per_s"] = fit["pack_bw"]
    for d in dtypes:
        entry = {"flops_per_s": fit[f"P_{d}"], "call_gap_s": fit[f"gap_{d}"], "stream_floor_s": fit[f"floor_{d}"]}
        if split_floor:
            entry["call_floor_s"] = fit[f"cfloor_{d}"]
        if power and fit[f"S_{d}"] < fit[f"P_{d}"]:
            entry["sustained_flops_per_s"] = fit[f"S_{d}"]
        if tiles[d] is not None:
            entry["tile"] = list(tiles[d])
            entry["wave_exponent"] = fit[f"wave_{d}"]
        if peaks and peaks.get(d):
            entry["efficiency"] = fit[f"P_{d}"] / peaks[d]
        entry["records"] = int(np.sum(di == dtypes.index(d)))
        res["dtypes"][d] = entry
    return res


def fit_bandwidth(records, op: str) -> dict | None:
    rows = []
    for r in records:
        if r.get("op") != op or not r.get("bytes"):
            continue
        traffic = r["bytes"] * (2 if op == "mem_copy" else 1)
        t = record_time_s(r)
        if t:
            rows.append((traffic, t, False))
        ts = stream_time_s(r)
        if ts:
            rows.append((traffic, ts, True))
    if len(rows) < 2:
        return None
    B = np.array([r[0] for r in rows], float)
    t = np.array([r[1] for r in rows], float)
    st = np.array([r[2] for r in rows], bool)
    P = _Params()
    i_bw = P.add("bw", float(np.max(B / t)))
    tmin = float(np.min(t))
    i_k0 = P.add("k0", max(tmin * 0.2, 1e-7))
    i_gap = P.add("gap", max(tmin * 0.5, 1e-7))
    i_fl = P.add("floor", max(tmin * 0.6, 1e-7))
    q = DEFAULT_Q

    def model(v):
        ts = smoothmax(v[i_fl], v[i_k0] + B / v[i_bw], q)
        return np.where(st, ts, v[i_gap] + ts)

    f = _fit(P, model, t)
    return {"bytes_per_s": f["bw"], "kernel_min_s": f["k0"], "call_gap_s": f["gap"],
            "stream_floor_s": f["floor"], "records": len({r[0] for r in rows})}


def fit_attention(records, op: str, mem_bw: float, peak: float | None = None) -> dict | None:
    rows = []
    for r in records:
        if r.get("op") != op:
            continue
        base = (r["b"], r["h"], r["s"], r["d"], bool(r.get("causal", True)))
        t = record_time_s(r)
        if t:
            rows.append(base + (t, False))
        ts = stream_time_s(r)
        if ts:
            rows.append(base + (ts, True))
    if len(rows) < 3:
        return None
    b, h, s, d = (np.array([r[i] for r in rows], float) for i in range(4))
    causal = np.array([r[4] for r in rows], bool)
    t = np.array([r[5] for r in rows], float)
    st = np.array([r[6] for r in rows], bool)
    bwd = op == "sdpa_fwd_bwd"
    fl = np.array([sdpa_flops(*r[:4], causal=r[4], backward=bwd) for r in rows])
    P = _Params()
    i_P = P.add("P", float(np.max(fl / t)) * 1.3)
    i_dh = P.add("dh", DEFAULT_ATTENTION[op]["head_dim_half"])
    i_blk = P.add("blk", DEFAULT_ATTENTION[op]["causal_block"])
    i_nc = P.add("nc", 1.1)
    tmin = float(np.min(t))
    i_k0 = P.add("k0", max(tmin * 0.05, 1e-7))
    i_gap = P.add("gap", max(tmin * 0.2, 1e-7))
    i_fl = P.add("floor", max(tmin * 0.3, 1e-7))
    has_nc = bool((~causal).any())

    def model(v):
        c = AttentionCurve(v[i_P], v[i_dh], v[i_blk], v[i_nc] if has_nc else 1.0, mem_bw,
                           Timing(v[i_k0], v[i_gap], v[i_fl], DEFAULT_Q))
        tk = c.kernel_s(b, h, s, d, causal, bwd)
        return np.where(st, c.timing.stream(tk), c.timing.call(tk))

    f = _fit(P, model, t)
    out = {"flops_per_s_max": f["P"], "head_dim_half": f["dh"], "causal_block": f["blk"],
           "noncausal_factor": f["nc"] if has_nc else 1.0, "kernel_min_s": f["k0"], "call_gap_s": f["gap"],
           "stream_floor_s": f["floor"], "records": len({r[:5] for r in rows})}
    if peak:
        out["efficiency_max"] = f["P"] / peak
    return out


def fit_link(records, op: str, latency_s: float = 0.0) -> dict | None:
    """Latency + bytes / bandwidth of one host link from its copy records; a single record gives
    only the bandwidth, with ``latency_s`` taken as known (None if the record is not longer)."""
    rows = [(r["bytes"], record_time_s(r)) for r in records if r.get("op") == op and r.get("bytes") and record_time_s(r)]
    if not rows:
        return None
    B = np.array([r[0] for r in rows], float)
    t = np.array([r[1] for r in rows], float)
    if len(rows) == 1:
        if t[0] <= latency_s:
            return None
        return {"bytes_per_s": float(B[0] / (t[0] - latency_s)), "latency_s": latency_s, "records": 1}
    P = _Params()
    i_bw = P.add("bw", float(np.max(B / t)))
    i_l = P.add("lat", max(float(np.min(t)) * 0.3, 1e-7))
    f = _fit(P, lambda v: v[i_l] + B / v[i_bw], t)
    return {"bytes_per_s": f["bw"], "latency_s": f["lat"], "records": len(rows)}


def fit_collectives(records) -> dict:
    """{op: {world: {alpha_s, busbw_bytes_per_s}}} from collective records (isolated-call times)."""
    out: dict[str, dict[int, dict]] = {}
    groups: dict[tuple[str, int], list] = {}
    for r in records:
        if r.get("op") in COLLECTIVE_OPS and r.get("bytes") and r.get("s") and r.get("world"):
            groups.setdefault((r["op"], int(r["world"])), []).append((float(r["bytes"]), float(r["s"])))
    for (op, w), rows in sorted(groups.items()):
        if len(rows) < 2:
            continue
        B = np.array([r[0] for r in rows])
        t = np.array([r[1] for r in rows])
        f = busbw_factor(op, w)
        P = _Params()
        i_a = P.add("alpha", float(np.min(t)))
        i_b = P.add("busbw", float(np.max(B * f / t)))
        fit = _fit(P, lambda v: v[i_a] + B * f / v[i_b], t)
        out.setdefault(op, {})[w] = {"alpha_s": fit["alpha"], "busbw_bytes_per_s": fit["busbw"], "records": len(rows),
                                     "bytes_range": [int(B.min()), int(B.max())]}
    return out


def fit_overlay(records: list[dict], *, device: str | None = None, spec=None, meta: Mapping[str, Any] | None = None) -> dict:
    """Fit every kernel family present in ``records``; return the overlay as a plain dict."""
    if not records:
        raise InputError("no kernel records to fit", field="records")
    if device is None:
        ids = sorted({r.get("hardware") for r in records if r.get("hardware")})
        device = ids[0] if len(ids) == 1 else (spec.id if spec is not None else "unknown")
    peaks = _spec_peaks(spec) if spec is not None else {}
    ov: dict[str, Any] = {"format": FORMAT, "device": device,
                          "created": _dt.date.today().isoformat()}
    if meta:
        ov["measured"] = dict(meta)
    copy = fit_bandwidth(records, "mem_copy")
    read = fit_bandwidth(records, "mem_read")
    mem = {}
    if copy:
        mem["copy"] = copy
    if read:
        mem["read"] = read
    gemm = fit_gemm(records, peaks)
    if gemm:
        ov["gemm"] = gemm
    if mem:
        ov["memory"] = mem
    elem = {op: f for op in ELEMENTWISE_OPS if (f := fit_bandwidth(records, op))}
    if elem:
        ov["elementwise"] = elem
    mem_bw = (copy or {}).get("bytes_per_s") or (gemm or {}).get("memory_bytes_per_s") or 1e12
    att = {op: f for op in ATTENTION_OPS if (f := fit_attention(records, op, mem_bw, peaks.get("bf16")))}
    if att:
        ov["attention"] = att
    host = {op: f for op in HOST_OPS if (f := fit_link(records, op))}
    if host:
        ov["host"] = host
    coll = fit_collectives(records)
    if coll:
        ov["collectives"] = coll
    floors = [v["stream_floor_s"] for v in mem.values()] + [v["stream_floor_s"] for v in elem.values()]
    if floors:
        ov["launch_overhead_s"] = float(min(floors))
    return _rounded(ov)


def fit_call_gap_offset(overlay: Mapping[str, Any], records: list[dict], spec=None) -> float:
    """One offset (seconds) added to every isolated-call gap of ``overlay`` that best predicts
    ``records`` (isolated calls timed on another host: the gap is host dispatch, sync and event
    latency, which differs between hosts by 10-15 us, while the GPU curves carry over).
    Minimises the mean squared log error over the GEMM and bandwidth records, within -30..+30 us."""
    base = default_efficiency(spec) if spec is not None else None
    recs = [r for r in records if family(r.get("op", "")) in ("gemm", "bandwidth") and r.get("op") != "cpu_gemm" and record_time_s(r)]
    if not recs:
        return 0.0
    meas = np.log([record_time_s(r) for r in recs])

    def cost(delta):
        eff = efficiency_from_overlay(with_call_gap_offset(overlay, delta), "<offset>", base)
        pred = [eff.predict_record_s(r) for r in recs]
        return float(np.mean([(math.log(max(pp, 1e-12)) - m) ** 2 for pp, m in zip(pred, meas) if pp]))

    grid = np.linspace(-30e-6, 30e-6, 61)
    best = min(grid, key=cost)
    fine = np.linspace(best - 1e-6, best + 1e-6, 21)
    return float(min(fine, key=cost))


def reference_host_links(overlay: Mapping[str, Any], records: list[dict]) -> dict[str, dict]:
    """Host-link fits (``host.<op>``) for the host copies among ``records`` (timed on another
    host): the host, not the GPU, sets a copy's rate (a pageable copy is staged through a pinned
    buffer by the CPU: 7-11 GB/s on the machines we ran, 16.8 on the public file's), so where
    reference records time host copies their host's link replaces the one fitted here. One record
    of an op keeps the fitted latency and solves for the bandwidth; several are fitted as usual."""
    have = overlay.get("host") or {}
    fits = {op: fit_link(records, op, float((have.get(op) or {}).get("latency_s", 0.0))) for op in HOST_OPS}
    return {op: f for op, f in fits.items() if f is not None}


def with_call_gap_offset(overlay: Mapping[str, Any], delta_s: float) -> dict:
    """A copy of ``overlay`` with ``delta_s`` added to every ``call_gap_s`` and ``call_floor_s``
    (never below zero): another host's dispatch shifts both the isolated call's start latency and
    its round trip."""
    import copy

    ov = copy.deepcopy(dict(overlay))

    def walk(o):
        if isinstance(o, dict):
            for key in ("call_gap_s", "call_floor_s"):
                if key in o:
                    o[key] = max(0.0, float(o[key]) + delta_s)
            for v in o.values():
                walk(v)

    for key in ("gemm", "memory", "elementwise", "attention"):
        if key in ov:
            walk(ov[key])
    return ov


def _rounded(obj):
    if isinstance(obj, float):
        return float(f"{obj:.5g}")
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------------
# Overlay -> DeviceEfficiency, with field-by-field validation.

class _Reader:
    def __init__(self, file):
        self.file = file

    def mapping(self, data, field):
        if not isinstance(data, dict):
            raise InputError(f"expected a mapping, got {type(data).__name__}", file=self.file, field=field)
        return data

    def num(self, data, key, field, default=None, positive=True):
        if key not in data or data[key] is None:
            if default is not None:
                return default
            raise InputError("missing required field", file=self.file, field=f"{field}.{key}" if field else key)
        v = data[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (v <= 0 if positive else v < 0):
            what = "a positive number" if positive else "a number >= 0"
            hint = ""
            if isinstance(v, str):
                try:
                    float(v)
                    hint = " (YAML 1.1 reads a number like 5e14 as text: write 5.0e+14)"
                except ValueError:
                    pass
            raise InputError(f"expected {what} (got {v!r}){hint}", file=self.file, field=f"{field}.{key}" if field else key)
        return float(v)

    def timing(self, d, field, base: Timing, q=None):
        return Timing(self.num(d, "kernel_min_s", field, base.kernel_min_s, positive=False),
                      self.num(d, "call_gap_s", field, base.gap_s, positive=False),
                      self.num(d, "stream_floor_s", field, base.floor_s, positive=False),
                      q if q is not None else base.q,
                      self.num(d, "call_floor_s", field, positive=False) if d.get("call_floor_s") is not None else None)


def _read_gemm(rd: "_Reader", g: Mapping[str, Any], base_dtypes: Mapping[str, GemmDtype] | None = None) -> GemmCurve:
    """The ``gemm`` section of an overlay (``g``, already a mapping) as a GemmCurve; dtypes it
    lacks come from ``base_dtypes``."""
    file = rd.file
    p = rd.num(g, "p", "gemm", DEFAULT_P)
    q = rd.num(g, "q", "gemm", DEFAULT_Q)
    # One kernel_min_s for every dtype (the gemm section's); each dtype's gaps and floors below.
    t0 = Timing(kernel_min_s=rd.num(g, "kernel_min_s", "gemm", DEFAULT_KERNEL_MIN_S, positive=False))
    dts = rd.mapping(g.get("dtypes"), "gemm.dtypes")
    out = dict(base_dtypes or {})
    for dt, d in dts.items():
        if dt not in DTYPE_BYTES:
            raise InputError(f"unknown dtype {dt!r}", file=file, field=f"gemm.dtypes.{dt}")
        fld = f"gemm.dtypes.{dt}"
        d = rd.mapping(d, fld)
        tile = d.get("tile")
        if tile is not None and not (isinstance(tile, list) and len(tile) == 2 and all(isinstance(x, int) and x > 0 for x in tile)):
            raise InputError(f"expected [rows, cols] of positive integers (got {tile!r})", file=file, field=f"{fld}.tile")
        out[dt] = GemmDtype(rd.num(d, "flops_per_s", fld),
                            rd.timing(d, fld, t0, q),
                            tuple(tile) if tile else None,
                            rd.num(d, "sustained_flops_per_s", fld) if d.get("sustained_flops_per_s") is not None else None,
                            rd.num(d, "wave_exponent", fld, positive=False) if d.get("wave_exponent") is not None else None)
    units = rd.num(g, "units", "gemm") if g.get("units") is not None else None
    residual = _read_residual(rd, g["residual"]) if g.get("residual") is not None else None
    return GemmCurve(out, rd.num(g, "memory_bytes_per_s", "gemm"), rd.num(g, "x_half", "gemm", DEFAULT_GEMM_X_HALF, positive=False), p,
                     units, rd.num(g, "throttle_s", "gemm", DEFAULT_THROTTLE_S), rd.num(g, "k_half", "gemm", 0.0, positive=False),
                     rd.num(g, "wave_exponent", "gemm", 1.0, positive=False),
                     rd.num(g, "pack_bytes_per_s", "gemm") if g.get("pack_bytes_per_s") is not None else None, residual)


def _read_residual(rd: "_Reader", res: object) -> GemmResidual:
    """``gemm.residual``: {length_octaves, prior, dtypes: {dtype: [[m, n, k, num, den], ...]}}."""
    fld = "gemm.residual"
    res = rd.mapping(res, fld)
    points = {}
    for dt, rows in rd.mapping(res.get("dtypes"), f"{fld}.dtypes").items():
        f = f"{fld}.dtypes.{dt}"
        ok = isinstance(rows, list) and rows and all(
            isinstance(row, list) and len(row) == 5 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in row)
            and min(row[:3]) >= 1 and row[4] >= 0 for row in rows)
        if not ok:
            raise InputError("expected a non-empty list of [m, n, k, num, den] (m, n, k >= 1, den >= 0)", file=rd.file, field=f)
        a = np.array(rows, dtype=float)
        points[dt] = (np.log2(a[:, :3]), a[:, 3], a[:, 4])
    return GemmResidual(rd.num(res, "length_octaves", fld), rd.num(res, "prior", fld), points)


def efficiency_from_overlay(data: object, file: str | Path = "<overlay>", base: DeviceEfficiency | None = None) -> DeviceEfficiency:
    """Build a DeviceEfficiency from an overlay mapping; families it lacks come from ``base``."""
    rd = _Reader(str(file))
    data = rd.mapping(data, None)
    fmt = data.get("format")
    if fmt != FORMAT:
        raise InputError(f"expected {FORMAT!r} (got {fmt!r})", file=file, field="format")
    device = data.get("device")
    if not isinstance(device, str) or not device:
        raise InputError("missing required field (a hardware id)", file=file, field="device")
    if base is not None and base.device != device:
        raise InputError(f"overlay is for {device!r}, not {base.device!r}", file=file, field="device")
    gem_t0 = Timing()
    mem_t0 = Timing(DEFAULT_KERNEL_MIN_S, DEFAULT_MEM_GAP_S, DEFAULT_LAUNCH_OVERHEAD_S, DEFAULT_Q)
    # GEMM
    gemm = base.gemm if base else None
    if "gemm" in data:
        gemm = _read_gemm(rd, rd.mapping(data["gemm"], "gemm"), base.gemm.dtypes if base else None)
    # memory
    copy = base.copy if base else None
    read = base.read if base else None
    if "memory" in data:
        mm = rd.mapping(data["memory"], "memory")
        for key in mm:
            if key not in ("copy", "read"):
                raise InputError("unknown memory kernel; expected copy or read", file=file, field=f"memory.{key}")
        if "copy" in mm:
            c = rd.mapping(mm["copy"], "memory.copy")
            copy = BandwidthCurve(rd.num(c, "bytes_per_s", "memory.copy"), rd.timing(c, "memory.copy", mem_t0))
        if "read" in mm:
            c = rd.mapping(mm["read"], "memory.read")
            read = BandwidthCurve(rd.num(c, "bytes_per_s", "memory.read"), rd.timing(c, "memory.read", mem_t0))
    copy = copy or read
    read = read or copy
    note = ""
    if copy is None and base is None and gemm is not None:
        # A GEMM-only overlay (e.g. a host CPU's BLAS, calibrated with --ops gemm): streaming
        # kernels get the bandwidth of the GEMM's own memory-bound regime, and the source says so.
        copy = read = BandwidthCurve(gemm.memory_bytes_per_s, mem_t0)
        note = "; memory from the GEMM fit"
    elem = dict(base.elementwise) if base else {}
    if "elementwise" in data:
        for op, c in rd.mapping(data["elementwise"], "elementwise").items():
            c = rd.mapping(c, f"elementwise.{op}")
            elem[op] = BandwidthCurve(rd.num(c, "bytes_per_s", f"elementwise.{op}"), rd.timing(c, f"elementwise.{op}", mem_t0))
    att = dict(base.attention) if base else {}
    if "attention" in data:
        mem_bw = copy.bytes_per_s if copy else (gemm.memory_bytes_per_s if gemm else 1e12)
        for op, c in rd.mapping(data["attention"], "attention").items():
            if op not in ATTENTION_OPS:
                raise InputError(f"unknown attention kernel; expected one of {', '.join(ATTENTION_OPS)}", file=file, field=f"attention.{op}")
            fld = f"attention.{op}"
            c = rd.mapping(c, fld)
            att[op] = AttentionCurve(rd.num(c, "flops_per_s_max", fld), rd.num(c, "head_dim_half", fld, 0.0, positive=False),
                                     rd.num(c, "causal_block", fld, 0.0, positive=False), rd.num(c, "noncausal_factor", fld, 1.0),
                                     mem_bw, rd.timing(c, fld, gem_t0))
    host = dict(base.host) if base else {}
    if "host" in data:
        for op, c in rd.mapping(data["host"], "host").items():
            if op not in HOST_OPS:
                raise InputError(f"unknown host copy; expected one of {', '.join(HOST_OPS)}", file=file, field=f"host.{op}")
            c = rd.mapping(c, f"host.{op}")
            host[op] = LinkFit(rd.num(c, "bytes_per_s", f"host.{op}"), rd.num(c, "latency_s", f"host.{op}", 0.0, positive=False))
    coll = {op: dict(v) for op, v in (base.collectives if base else {}).items()}
    if "collectives" in data:
        for op, worlds in rd.mapping(data["collectives"], "collectives").items():
            if op not in COLLECTIVE_OPS:
                raise InputError(f"unknown collective; expected one of {', '.join(COLLECTIVE_OPS)}", file=file, field=f"collectives.{op}")
            for w, c in rd.mapping(worlds, f"collectives.{op}").items():
                fld = f"collectives.{op}.{w}"
                try:
                    wi = int(w)
                except (TypeError, ValueError):
                    raise InputError("world size must be an integer", file=file, field=fld) from None
                c = rd.mapping(c, fld)
                coll.setdefault(op, {})[wi] = CollectiveFit(rd.num(c, "alpha_s", fld, positive=False), rd.num(c, "busbw_bytes_per_s", fld))
    launch = rd.num(data, "launch_overhead_s", "", base.launch_overhead_s if base else DEFAULT_LAUNCH_OVERHEAD_S, positive=False) \
        if "launch_overhead_s" in data else (base.launch_overhead_s if base else DEFAULT_LAUNCH_OVERHEAD_S)
    if gemm is None:
        raise InputError("missing required field (no GEMM fit, and no spec to take defaults from)", file=file, field="gemm")
    if copy is None:
        raise InputError("missing required field (no copy/read fit, and no spec to take defaults from)", file=file, field="memory")
    created = data.get("created", "undated")
    host_factor = rd.num(data, "eager_infer_host_factor", "", 1.0) if "eager_infer_host_factor" in data else (
        base.eager_infer_host_factor if base else 1.0)
    return DeviceEfficiency(device=device, source=f"calibrated: {_display_path(file)} ({created}{note})", gemm=gemm, copy=copy, read=read,
                            elementwise=elem, attention=att, host=host, collectives=coll, launch_overhead_s=launch,
                            peaks=base.peaks if base else {}, eager_infer_host_factor=host_factor)


def _display_path(file) -> str:
    """A shipped overlay as ``hardware/calibrated/<id>.yaml``; any other file as given."""
    try:
        from .specs import package_data_dir

        rel = Path(file).resolve().relative_to(package_data_dir("hardware").resolve())
        return str(Path("hardware") / rel)
    except (ValueError, OSError, ImportError):
        return str(file)


def load_overlay(path: str | Path, spec=None) -> DeviceEfficiency:
    """Read an overlay YAML; with ``spec``, families the overlay lacks fall back to the defaults."""
    from .specs import read_yaml

    path = Path(path)
    data = read_yaml(path)
    base = default_efficiency(spec) if spec is not None else None
    return efficiency_from_overlay(data, path, base)


def calibrated_dir() -> Path:
    from .specs import package_data_dir

    return package_data_dir("hardware") / "calibrated"


def shipped_overlay_path(spec_id: str) -> Path | None:
    p = calibrated_dir() / f"{spec_id}.yaml"
    return p if p.is_file() else None


def shipped_host_efficiency(spec_id: str) -> DeviceEfficiency | None:
    """The host CPU of a device's machine, where its BLAS was calibrated there (``costmodel
    calibrate --backend numpy --ops gemm``): ``hardware/calibrated/<id>-host.yaml``, else None."""
    p = shipped_overlay_path(f"{spec_id}-host")
    return load_overlay(p) if p is not None else None


def shipped_efficiency(spec) -> DeviceEfficiency:
    """``hardware/calibrated/<id>.yaml`` over the defaults when it exists, else the defaults."""
    p = shipped_overlay_path(spec.id)
    if p is None:
        return default_efficiency(spec)
    return load_overlay(p, spec)


def efficiency_for(spec, calibration: str | Path | None = None) -> DeviceEfficiency:
    """What commands use: ``--calibration FILE`` when given, else the shipped overlay, else defaults."""
    if calibration:
        return load_overlay(calibration, spec)
    return shipped_efficiency(spec)


# ------------------------------------------------------------------------------------------------
# Writing.

def _protected(path: Path) -> bool:
    """True for paths inside the shipped hardware/ directory, except hardware/calibrated/."""
    from .specs import package_data_dir

    hw = package_data_dir("hardware").resolve()
    p = path.resolve()
    try:
        rel = p.relative_to(hw)
    except ValueError:
        return False
    return not (rel.parts and rel.parts[0] == "calibrated" and len(rel.parts) >= 2)


def dump_overlay(overlay: Mapping[str, Any]) -> str:
    import yaml

    head = ("# costmodel calibration overlay: fitted efficiency curves (see costmodel/calibration.py for the\n"
            "# model). Rates are per second in base units (FLOP/s, bytes/s), times in seconds.\n")
    return head + yaml.safe_dump(_plain(overlay), sort_keys=False, default_flow_style=None, width=110)


def _plain(o):
    if isinstance(o, dict):
        return {str(k) if not isinstance(k, int) else k: _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return o


def check_writable(path: str | Path) -> Path:
    """Raise InputError unless an overlay may be written at ``path``: never inside the shipped
    hardware/ directory (specs are never overwritten), except hardware/calibrated/."""
    path = Path(path)
    if _protected(path):
        raise InputError("refusing to write inside the shipped hardware/ directory (only hardware/calibrated/ holds overlays)",
                         file=path, field="out")
    if path.is_dir():
        raise InputError("is a directory", file=path, field="out")
    if not path.parent.is_dir():
        raise InputError("directory does not exist", file=path, field="out")
    return path


def write_overlay(overlay: Mapping[str, Any], path: str | Path) -> Path:
    """Write atomically (temp file in the same directory, fsync, rename), after check_writable."""
    return write_text_atomic(check_writable(path), dump_overlay(overlay))


# ------------------------------------------------------------------------------------------------
# Held-back check.

FAMILIES = {
    "gemm": GEMM_OPS + ("cpu_gemm",),
    "bandwidth": MEM_OPS + ELEMENTWISE_OPS,
    "attention": ATTENTION_OPS,
    "host": HOST_OPS,
    "collectives": COLLECTIVE_OPS,
}


def family(op: str) -> str | None:
    for f, ops in FAMILIES.items():
        if op in ops:
            return f
    return None


def _series_key(r: dict):
    op = r.get("op")
    if op == "gemm":
        return (op, r.get("dtype"))
    if op == "gemm_llm":
        return (op, r.get("dtype"), r.get("n"), r.get("k"))
    if op in ATTENTION_OPS:
        return (op, r.get("d"), r.get("causal", True))
    if op in COLLECTIVE_OPS:
        return (op, r.get("world"))
    return (op,)


def _size_key(r: dict) -> float:
    op = r.get("op")
    if op in GEMM_OPS:
        return float(r["m"]) * r["n"] * r["k"]
    if op in ATTENTION_OPS:
        return float(r["b"]) * r["h"] * r["s"] ** 2 * r["d"]
    return float(r.get("bytes") or r.get("n") or 0)


def _shape_key(r: dict) -> tuple:
    ks = ("op", "dtype", "m", "n", "k", "bytes", "b", "h", "d", "causal", "world") + (("s",) if r.get("op") in ATTENTION_OPS else ())
    return tuple((k, r.get(k)) for k in ks if k in r)


def split_holdout(records: list[dict], fraction: float = HOLDOUT_FRACTION, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Hold back ``fraction`` of the interior shapes of each series (never its smallest or largest
    size, so held-back shapes are interpolated, as a shape the calibration did not run would be).
    Every record of a held-back shape is held back (repeated runs of one shape stay together)."""
    rng = np.random.default_rng(seed)
    series: dict[tuple, dict[tuple, float]] = {}
    for r in records:
        series.setdefault(_series_key(r), {})[_shape_key(r)] = _size_key(r)
    held: set[tuple] = set()
    for key, shapes in sorted(series.items(), key=lambda kv: str(kv[0])):
        order = sorted(shapes, key=lambda sk: (shapes[sk], str(sk)))
        interior = order[1:-1]
        if len(interior) < 2:
            continue
        k = max(1, int(round(fraction * len(order))))
        k = min(k, (len(interior) + 1) // 2)
        for i in rng.choice(len(interior), size=k, replace=False):
            held.add(interior[int(i)])
    return [r for r in records if _shape_key(r) not in held], [r for r in records if _shape_key(r) in held]


@dataclass
class CheckResult:
    rows: list[dict] = field(default_factory=list)  # op, shape, measured_s, predicted_s, error

    def summary(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for fam in FAMILIES:
            errs = [abs(r["error"]) for r in self.rows if r["family"] == fam]
            if errs:
                out[fam] = {"n": len(errs), "median_abs_error": float(np.median(errs)), "max_abs_error": float(max(errs))}
        return out


def compare(eff: DeviceEfficiency, records: Iterable[dict], stream: bool = False) -> CheckResult:
    """Prediction error of ``eff`` on each record (prediction / measurement - 1)."""
    res = CheckResult()
    for r in records:
        meas = stream_time_s(r) if stream else record_time_s(r)
        if not meas:
            continue
        pred = eff.predict_record_s(r, stream=stream)
        if pred is None:
            continue
        res.rows.append({"op": r["op"], "family": family(r["op"]), "shape": describe(r), "measured_s": meas, "predicted_s": pred,
                         "error": pred / meas - 1.0})
    return res


def describe(r: dict) -> str:
    op = r.get("op")
    if op in GEMM_OPS:
        return f"{r.get('dtype')} {r['m']}x{r['n']}x{r['k']}"
    if op == "cpu_gemm":
        return f"{r.get('dtype', 'fp32')} {r['n']}^3"
    if op in ATTENTION_OPS:
        return f"b{r['b']} h{r['h']} s{r['s']} d{r['d']}{'' if r.get('causal', True) else ' full'}"
    if op in COLLECTIVE_OPS:
        return f"{r['bytes']} B x{r['world']}"
    return f"{r.get('bytes')} B"


def holdout_checks(records: list[dict], *, splits: int, fraction: float = HOLDOUT_FRACTION, seed: int = 0, spec=None,
                   device: str | None = None, on_split=None) -> tuple[CheckResult, CheckResult | None]:
    """``holdout_check`` over ``splits`` random splits (seeds seed .. seed + splits - 1), every
    held-back row kept (tagged with its ``seed``): one split's maximum is a sample of one, and a
    shape held back in several splits is counted in each. ``on_split(i)`` is called after each."""
    iso_all, st_all = CheckResult(), CheckResult()
    for i in range(splits):
        _, iso, st = holdout_check(records, fraction=fraction, seed=seed + i, spec=spec, device=device)
        iso_all.rows += [dict(r, seed=seed + i) for r in iso.rows]
        if st is not None:
            st_all.rows += [dict(r, seed=seed + i) for r in st.rows]
        if on_split is not None:
            on_split(i)
    return iso_all, (st_all if st_all.rows else None)


def holdout_check(records: list[dict], *, fraction: float = HOLDOUT_FRACTION, seed: int = 0, spec=None,
                  device: str | None = None) -> tuple[dict, CheckResult, CheckResult | None]:
    """Fit on all but the held-back shapes; return (overlay fitted on the rest, isolated-call errors,
    back-to-back errors where the records have them)."""
    train, held = split_holdout(records, fraction, seed)
    ov = fit_overlay(train, device=device, spec=spec)
    eff = efficiency_from_overlay(ov, "<held-back fit>", default_efficiency(spec) if spec is not None else None)
    iso = compare(eff, held)
    st = compare(eff, held, stream=True)
    return ov, iso, (st if st.rows else None)
