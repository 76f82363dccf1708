"""The kernel time curves of a calibrated device: GEMM (with wave quantisation, power cap and the
per-shape residual), bandwidth, attention, host links and collectives."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..bench.records import DTYPE_BYTES, busbw_factor
from .defaults import (
    DEFAULT_GEMM_FLOOR_S, DEFAULT_GEMM_GAP_S, DEFAULT_KERNEL_MIN_S, DEFAULT_P,
    DEFAULT_Q,
)

# ------------------------------------------------------------------------------------------------
_PY = (int, float, np.float64)  # one number: the curves below take it without making arrays


def smoothmax(a, b, p: float):
    """(a^p + b^p)^(1/p), elementwise, computed without overflow."""
    if type(a) in _PY and type(b) in _PY and type(p) in _PY and a >= 0 and b >= 0 and (a > 0 or b > 0):
        m = max(a, b, 1e-300)  # one pair of numbers, as below
        return m * ((a / m) ** p + (b / m) ** p) ** (1.0 / p)
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
# data/measurements/h100-sxm/2026-11-23c-kernels-power/h100-sxm-2026-11-23c-power-trace.json: bf16 8192^3 back to back from idle ran
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
# the 132 SMs), while 1024^3 (32 tiles, k = 1024) ran at the speed of its unsplit tiles; fp32
# 32..128 x 4096 x 4096 (1-32 tiles, run 2026-12-07c) ran at the speed of a four-way split (a two-way
# one predicts them 13-29% slow). Set by hand from these shapes, which bound it to
# 512 < SPLIT_K_MIN_K <= 1024 (1024^3 unsplit, k = 4096 split in 4).
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
# Both are settings of `costmodel calibrate`'s residual, chosen by this arithmetic, not fitted; an
# overlay carries the pair it was built with (gemm.residual).
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
        if type(m) is np.ndarray and m.ndim == 1 and type(n) is np.ndarray and type(k) is np.ndarray \
                and m.shape == n.shape == k.shape and 0 < len(m) <= RESIDUAL_CHUNK_ELEMENTS // max(1, len(x)):
            # one vector of shapes, in one chunk (a layer's GEMMs): the same sums with fewer array calls
            q = np.log2(np.maximum(np.array((m, n, k)), 1.0))  # (3, Q)
            kern = _gauss_kernel_t(q, x, self.length_octaves)
            return (kern @ num) / (self.prior + kern @ den)
        mnk = [np.asarray(v, dtype=float) for v in (m, n, k)]
        if not mnk[0].shape == mnk[1].shape == mnk[2].shape:
            mnk = np.broadcast_arrays(*mnk)
        q = np.log2(np.maximum(np.stack(mnk, axis=-1), 1.0))
        flat = q.reshape(-1, 3)
        out = np.empty(len(flat))
        step = max(1, RESIDUAL_CHUNK_ELEMENTS // max(1, len(x)))  # bounded memory for large vectorised queries
        for i in range(0, len(flat), step):
            kern = _gauss_kernel(flat[i:i + step], x, self.length_octaves)
            out[i:i + step] = (kern @ num) / (self.prior + kern @ den)
        return out.reshape(q.shape[:-1]) if q.ndim > 1 else float(out[0])


_SQUARED_NORMS: dict = {}  # id(x) -> (x, |x_j|^2): a residual's points are fixed once fitted


def _gauss_kernel(q: np.ndarray, x: np.ndarray, length: float) -> np.ndarray:
    """exp(-|q_i - x_j|^2 / (2 length^2)) for rows q (Q, 3) and x (N, 3): GemmResidual's weights."""
    hit = _SQUARED_NORMS.get(id(x))
    if hit is None or hit[0] is not x:
        if len(_SQUARED_NORMS) > 256:
            _SQUARED_NORMS.clear()
        hit = _SQUARED_NORMS[id(x)] = (x, np.sum(x * x, axis=1))
    d2 = np.maximum(np.sum(q * q, axis=1)[:, None] + hit[1] - 2.0 * (q @ x.T), 0.0)
    return np.exp(-0.5 * d2 / length**2)


def _gauss_kernel_t(qt: np.ndarray, x: np.ndarray, length: float) -> np.ndarray:
    """_gauss_kernel of the rows of ``qt.T`` ((3, Q) columns, as log_factor builds them): the same
    squared distances, |q|^2 + |x|^2 - 2 q.x, with x's norms and transpose kept per point set."""
    hit = _SQUARED_NORMS.get(id(x))
    if hit is None or hit[0] is not x or len(hit) < 3:
        if len(_SQUARED_NORMS) > 256:
            _SQUARED_NORMS.clear()
        hit = _SQUARED_NORMS[id(x)] = (x, np.sum(x * x, axis=1), np.ascontiguousarray(x.T))
    q2 = qt * qt
    d2 = np.maximum((q2[0] + q2[1] + q2[2])[:, None] + hit[1] - 2.0 * (qt.T @ hit[2]), 0.0)
    return np.exp(-0.5 * d2 / length**2)


@dataclass(frozen=True)
class GemmCurve:
    dtypes: Mapping[str, GemmDtype]
    memory_bytes_per_s: float
    x_half: float = 0.0  # a small-output saturation x / (x + x_half); fits no longer write one
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
        m, n, k = (np.asarray(v, dtype=float) for v in (m, n, k))
        one = type(batch) in (int, float) and batch == 1  # a batch of one multiplies nothing (exactly)
        e = DTYPE_BYTES[dtype]
        out_e = 2.0 if dtype in ("fp8", "int8") else e
        if one:
            flops = 2.0 * m * n * k
            nbytes = e * (m * k + k * n) + out_e * m * n
        else:
            batch = np.asarray(batch, dtype=float)
            flops = 2.0 * m * n * k * batch
            nbytes = batch * (e * (m * k + k * n) + out_e * m * n)
        rate = d.flops_per_s * k / (k + self.k_half)
        if self.x_half:  # an older overlay's small-output saturation (fits write none)
            x = np.minimum(m, n)
            rate = rate * x / (x + self.x_half)
        if d.tile is not None and self.units:  # (wave_utilisation is 1 otherwise)
            rate = rate * wave_utilisation(m, n, d.tile, self.units, k) ** (
                self.wave_exponent if d.wave_exponent is None else d.wave_exponent)
        t = smoothmax(flops / rate, nbytes / self.memory_bytes_per_s, self.p)
        if self.pack_bytes_per_s is not None:  # (pack_s is 0 otherwise)
            t = d.timing.kernel_min_s + pack_s(m, n, k, e, batch, self.pack_bytes_per_s) + t
        else:
            t = d.timing.kernel_min_s + t
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
        if type(traffic_bytes) not in _PY:
            traffic_bytes = np.asarray(traffic_bytes, dtype=float)
        return self.timing.kernel_min_s + traffic_bytes / self.bytes_per_s


def _if(cond: bool, a, b):
    """np.where of one condition."""
    return a if cond else b


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
        if type(b) in _PY and type(h) in _PY and type(s) in _PY and type(d) in _PY and type(causal) is bool:
            b, h, s, d = float(b), float(h), float(s), float(d)  # one shape: the same formulas on numbers
            where = _if
        else:
            b, h, s, d = (np.asarray(v, dtype=float) for v in (b, h, s, d))
            causal = np.asarray(causal, dtype=bool)
            where = np.where
        mult = 3.5 if backward else 1.0
        # Work the kernel does: full tiles on the causal diagonal (s * block / 2 extra pairs).
        pairs = where(causal, s * (s + self.causal_block) / 2.0, s * s)
        work = 4.0 * b * h * d * pairs * mult
        rate = self.flops_per_s_max * d / (d + self.head_dim_half) * where(causal, 1.0, self.noncausal_factor)
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
        if type(nbytes) not in _PY:
            nbytes = np.asarray(nbytes, dtype=float)
        return self.alpha_s + nbytes * busbw_factor(op, world) / self.busbw_bytes_per_s
