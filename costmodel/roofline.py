"""Roofline time of operators: time = max(FLOPs / achieved FLOP/s, bytes / achieved bandwidth)
+ launch overhead (Williams, Waterman & Patterson 2009).

"Achieved" comes from a :class:`DeviceEfficiency` (costmodel.calibration): the spec's peaks times
efficiency curves, fitted on the device when a calibration overlay exists, datasheet defaults
otherwise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import fitted
from .inputs import stat as _stat
from .specs import AcceleratorSpec

# Fitted kernel-timing constants (value, bounds, meaning and the measurement each was fitted on):
# data/fitted/kernels.yaml and data/frameworks/pytorch.yaml (eager PyTorch's kernels).
# Smallest time of one kernel launched back to back in a stream or a CUDA graph.
KERNEL_FLOOR_S = fitted.value("fitted/kernels.yaml", "kernel_floor_s")
# Eager PyTorch's elementwise kernels are bound by the multiprocessors' instruction issue per
# element as well as by HBM (bf16 ran only 1.10-1.17x faster on H200 than on H100).
EAGER_ELEMENTWISE_ELEMENTS_PER_S_PER_SM = fitted.value("frameworks/pytorch.yaml", "eager_elementwise_elements_per_s_per_sm")
# torch.cat of transposed (non-contiguous) views (HF rotate_half, DynamicCache.update): an
# issue-bound rate per multiprocessor, not a fraction of HBM bandwidth.
EAGER_CAT_BYTES_PER_S_PER_SM = fitted.value("frameworks/pytorch.yaml", "eager_cat_bytes_per_s_per_sm")
# Fixed time of one GEMM kernel launched from a CUDA graph (grid launch, pipeline fill, epilogue
# drain) on top of its streaming time, for every device.
GRAPH_GEMM_FIXED_S = fitted.value("fitted/kernels.yaml", "graph_gemm_fixed_s")
# Output tile of the default GEMM curve's wave quantisation: 128 x 128 (the common CUTLASS/cuBLAS
# tile for large 16-bit GEMMs on Ampere and Hopper), spread over the spec's compute_units.
GEMM_TILE = 128
# A part-empty last wave costs less than a full one (its tiles get more L2/HBM bandwidth each, and
# cuBLAS picks split-k / other tiles for such shapes): rate ~ utilisation ** WAVE_EXPONENT.
WAVE_EXPONENT = fitted.value("fitted/kernels.yaml", "wave_exponent")


# The datasheet-default GEMM plateau (measured on H100). A spec's own published figure
# (AcceleratorSpec.gemm_efficiency) replaces it.
DEFAULT_GEMM_PLATEAU = fitted.value("fitted/kernels.yaml", "default_gemm_plateau")


# FlashAttention-2 against cuDNN fused attention on Hopper (data/fitted/kernels.yaml: measured on one
# H100, data/measurements/h100-sxm/2026-12-07a-sdpa-backends; the FlashAttention-3 paper's Fig. 5-6
# agree within ~12%), forward and backward, at head dimensions 64 and 128.
_FLASH2_VS_CUDNN = {(pas, d): fitted.value("fitted/kernels.yaml", f"flash2_vs_cudnn_{pas}_d{d}")
                    for pas in ("fwd", "bwd") for d in (64, 128)}


def sdpa_backend_rates(calibrated: str | None, wanted: str | None, head_dim: int) -> tuple[float, float]:
    """Forward and backward attention throughput of fused-attention kernel ``wanted`` over the
    kernel ``calibrated`` that a device's attention curves measured (each "cudnn" or "flash2";
    either None, or both the same: (1, 1)). Between head dimensions 64 and 128 the ratio is
    interpolated in log2 of the head dimension, and held beyond them."""
    if calibrated is None or wanted is None or calibrated == wanted:
        return 1.0, 1.0
    x = min(max((math.log2(max(head_dim, 1)) - 6.0), 0.0), 1.0)  # 0 at d = 64, 1 at d = 128
    fwd, bwd = ((1.0 - x) * _FLASH2_VS_CUDNN[(p, 64)] + x * _FLASH2_VS_CUDNN[(p, 128)] for p in ("fwd", "bwd"))
    return (fwd, bwd) if wanted == "flash2" else (1.0 / fwd, 1.0 / bwd)


# Flash attention on a device without a calibration, as fractions of its bf16 peak, at the one shape
# measured on an H100 SXM (b16 h16 s1024 d64, causal; FLOPs as SCHEMA.md counts them). Forward: the
# public file's 257 of 989 TFLOP/s. Forward + backward: the kernels a model's backward runs, 235
# TFLOP/s in the shipped H100 calibration at that shape, not the public file's 139 TFLOP/s, which is
# timed through autograd into leaf tensors (loss.backward()) and so adds copies and gradient
# accumulations no training step runs (validate.LEAF_BACKWARD_BYTES_PER_ELEMENT).
DEFAULT_ATTENTION_FWD_FRACTION = 0.26
DEFAULT_ATTENTION_FWD_BWD_FRACTION = 0.24


class _DefaultEfficiency:
    """Fallback when costmodel.calibration is not importable: fixed fractions of the peaks.

    GEMM: 78% of dense peak for large shapes (the public H100 file: 773 of 989 TFLOP/s at 8192^3),
    less for part-empty waves of tiles and short reductions (gemm_flops_per_s); streaming bandwidth 90% of the datasheet
    (3.0 of 3.35 TB/s measured copies), halved for ~1 MB transfers.
    """

    source = "datasheet defaults"
    launch_overhead_s = KERNEL_FLOOR_S

    def __init__(self, spec: AcceleratorSpec):
        self.spec = spec

    def gemm_flops_per_s(self, m, n, k, dtype="bf16"):
        """0.78 x peak x wave utilisation ** WAVE_EXPONENT: output tiles of 128 x 128 run in waves of the spec's
        compute_units (108 SMs on A100, 132 on H100 SXM; none when the spec names none), and a
        ramp in k for short reductions (pipeline fill, k / (k + 256))."""
        peak = self.spec.peak(dtype if self.spec.peak_flops.get(dtype) else "bf16")
        util = 1.0
        units = self.spec.compute_units
        if units:
            tiles = math.ceil(m / GEMM_TILE) * math.ceil(n / GEMM_TILE)
            util = (tiles / (math.ceil(tiles / units) * units)) ** WAVE_EXPONENT
        plateau = self.spec.gemm_efficiency or DEFAULT_GEMM_PLATEAU
        return peak * plateau * util * k / (k + 256)

    def gemm_time_s(self, m, n, k, dtype="bf16", batch=1, interleaved: bool = False):  # no power model here
        flops = 2.0 * m * n * k * batch
        t_c = flops / self.gemm_flops_per_s(m, n, k, dtype)
        b = 2.0 * (m * k + k * n + m * n) * batch
        return max(t_c, b / self.mem_bytes_per_s(b))

    def mem_bytes_per_s(self, nbytes):
        bw = self.spec.memory.bandwidth_bytes_per_s * 0.9
        return bw * nbytes / (nbytes + 2e6)

    def attention_flops_per_s(self, b, h, s, d, causal=True, backward=False):
        pf = self.spec.peak_flops
        peak = pf.get("bf16") or pf.get("fp16") or self.spec.peak("fp32")  # Volta has no bf16
        return peak * (DEFAULT_ATTENTION_FWD_BWD_FRACTION if backward else DEFAULT_ATTENTION_FWD_FRACTION)

    def h2d_bytes_per_s(self, pinned=True):
        link = self.spec.host_link.bandwidth_bytes_per_s if self.spec.host_link else 32e9
        return link * (0.85 if pinned else 0.26)

    def collective_time_s(self, op, nbytes, world):
        return None


def efficiency_for(spec: AcceleratorSpec, calibration: str | None = None, shipped: bool = True):
    """The efficiency model for a device: a given overlay file, else (with ``shipped``, the default)
    the shipped calibration ``hardware/calibrated/<id>.yaml`` when one exists for the device, else
    datasheet defaults. ``.source`` says which ("calibrated: <file> (<date>)" or "datasheet defaults").

    The step-time models' host-overhead and kernel-floor constants (training.HOST_*,
    inference.DECODE_*) were fitted together with the shipped H100/H200 calibrations.
    """
    if calibration:
        from . import calibration as cal
        from .inputs import cached_by_file

        # an overlay read once per version of its file and spec (specs are frozen and cached, so
        # the same spec is the same object; the entry holds it, so its id is not reused)
        return cached_by_file("overlay", calibration, lambda: (spec, cal.load_overlay(calibration, spec) if _takes_spec(
            cal.load_overlay) else cal.load_overlay(calibration)), id(spec))[1]
    if shipped:
        try:
            cal = _CALIBRATION[0] or _calibration()

            path = _shipped_overlay(spec.id)
            if path is None:
                return _default_efficiency(spec)  # the datasheet curves below (as before calibration existed)
            st = _stat(path) or path.stat()  # (the latter raises what stat() met)
            key = (spec.id, str(path), st.st_mtime_ns, id(spec))
            hit = _SHIPPED_CACHE.get(key)
            eff = hit[1] if hit is not None and hit[0] is spec else None
            if eff is None:
                file = getattr(spec, "file", None)
                eff = cal.load_overlay(path, spec)
                if file is not None and not _is_shipped(file):
                    # a user's spec took the shipped id: the shipped calibration (measured on the shipped
                    # part) applies to it, and the source says so and names the spec's file
                    eff = cal.DeviceEfficiency(**{k: getattr(eff, k) for k in _EFF_FIELDS},
                                               source=f"{eff.source}, measured on the shipped {spec.id}; spec from {file}")
                _SHIPPED_CACHE[key] = (spec, eff)
            return eff
        except (ImportError, AttributeError):
            pass
    return _DefaultEfficiency(spec)


_CALIBRATION: list = [None]  # costmodel.calibration, once imported (not at this module's import)


def _calibration():
    from . import calibration

    _CALIBRATION[0] = calibration
    return calibration


def _default_efficiency(spec) -> _DefaultEfficiency:
    """_DefaultEfficiency(spec), one per spec object (it holds nothing else)."""
    hit = _DEFAULT_CACHE.get(id(spec))
    if hit is None or hit.spec is not spec:
        if len(_DEFAULT_CACHE) > 256:
            _DEFAULT_CACHE.clear()
        hit = _DEFAULT_CACHE[id(spec)] = _DefaultEfficiency(spec)
    return hit


_DEFAULT_CACHE: dict = {}
# Shipped overlays read once per (device, overlay version, spec): DeviceEfficiency is immutable,
# specs are frozen (an edited spec file is a new spec object, and the entry holds the old one).
_SHIPPED_CACHE: dict = {}
_SHIPPED_OVERLAYS: dict = {}


def _shipped_overlay(spec_id: str):
    """The shipped calibration overlay of a device id (None: there is none), looked up once."""
    if spec_id not in _SHIPPED_OVERLAYS:
        from . import calibration as cal

        _SHIPPED_OVERLAYS[spec_id] = cal.shipped_overlay_path(spec_id)
    return _SHIPPED_OVERLAYS[spec_id]
_EFF_FIELDS = ("device", "gemm", "copy", "read", "elementwise", "attention", "host", "collectives", "launch_overhead_s",
               "peaks", "eager_infer_host_factor", "attention_backend")


def _is_shipped(path) -> bool:
    from .specs import is_shipped

    return is_shipped(path)


def _takes_spec(fn) -> bool:
    import inspect

    try:
        return len(inspect.signature(fn).parameters) >= 2
    except (TypeError, ValueError):
        return False


class _GemmRecorder:
    """Stands in for a DeviceEfficiency while a table is built once only to learn the GEMM shapes
    it asks for (their times are dummies; every other query goes to the real model)."""

    def __init__(self, eff):
        self._eff = eff
        self.queries: dict[tuple, set] = {}  # (dtype, batch, interleaved) -> {(m, n, k)}

    def gemm_time_s(self, m, n, k, dtype: str, batch=1, interleaved: bool = False):
        self.queries.setdefault((dtype, batch, interleaved), set()).add((m, n, k))
        return 1.0

    def gemm_flops_per_s(self, m, n, k, dtype: str, batch=1):
        self.gemm_time_s(m, n, k, dtype, batch)
        return 1.0

    def __getattr__(self, name):
        return getattr(self._eff, name)


def recording(eff) -> bool:
    """Whether ``eff`` only records the GEMM shapes a build asks for (its times are dummies: a
    caller that remembers results must not keep them)."""
    return isinstance(eff, _GemmRecorder)


_PREFETCHED = [0]


class prefetched:
    """``with prefetched():`` builds whose GEMM shapes were prefetched by the caller (a search's
    whole table at once) skip their own prefetch."""

    def __enter__(self):
        _PREFETCHED[0] += 1

    def __exit__(self, *exc):
        _PREFETCHED[0] -= 1
        return False


def prefetch_gemms(eff, build, key) -> None:
    """Evaluate every GEMM shape ``build(eff)`` would ask for through the calibrated curve in one
    vectorised call per dtype (DeviceEfficiency.gemm_times_s, which remembers them), so that the
    real ``build`` finds them all answered. Once per ``key`` and efficiency model."""
    memo = getattr(eff, "_memo", None)
    if isinstance(eff, _GemmRecorder) or _PREFETCHED[0]:  # inside a build being recorded, or already prefetched
        return
    try:
        if not hasattr(eff, "gemm_times_s") or memo is None or ("prefetched", key) in memo:
            return
    except TypeError:  # a key that does not hash: no prefetch (the real pass still evaluates each shape once)
        return
    rec = _GemmRecorder(eff)
    try:
        build(rec)
        for (dtype, batch, interleaved), shapes in rec.queries.items():
            m, n, k = zip(*sorted(shapes))
            eff.gemm_times_s(m, n, k, dtype, batch, interleaved)
    except Exception:  # noqa: BLE001 - the real pass meets the same problem and reports it
        return
    memo[("prefetched", key)] = True


@dataclass(frozen=True)
class OpTime:
    name: str
    kind: str  # gemm | attention | memory | other
    flops: float
    bytes: float
    time_s: float
    bound: str  # compute | memory | latency
    count: float = 1.0

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else float("inf")


def _graph_kernel_s(eff, kind: str, *args):
    """GPU time of a kernel launched from a CUDA graph: the calibrated kernel curve without the
    eager host-dispatch floor (None when the efficiency model has no separate kernel curve)."""
    try:
        if kind == "gemm":
            m, n, k, dtype = args
            # the fitted fixed time of a GEMM kernel is ill-determined where isolated calls sit on
            # the host floor: 4.04 us on H100, 0.95 us on H200 (the same GH100 die and clocks,
            # hardware/calibrated/*.yaml); a graph-launched GEMM gets GRAPH_GEMM_FIXED_S instead
            fixed = eff.gemm.dtypes[dtype].timing.kernel_min_s
            return eff.gemm_kernel_s(m, n, k, dtype) - fixed + GRAPH_GEMM_FIXED_S
        return float(eff.copy.kernel_s(args[0]))
    except (AttributeError, KeyError):
        return None


# Weight-only quantized GEMMs (W8A16, W4A16) dequantize their packed weights in registers and then
# run 16-bit tensor-core math: the weight read shrinks with the bytes, and the dequantization
# costs a little on top. MARLIN (Frantar et al. 2024, arXiv:2408.11743, fig. 1 and sec. 5) reaches
# ~3.9x of the ideal 4x speedup of 4-bit weights over fp16 at batch 1-16: ~ 3% of the quantized
# read's time, taken here for int8 and int4 alike.
DEQUANT_OVERHEAD = 0.03


def gemm_op(eff, name: str, m: float, k: int, n: int, dtype: str = "bf16", count: float = 1.0,
            elem_bytes: float = 2.0, graph: bool = False, interleaved: bool = False) -> OpTime:
    """A GEMM of m x k by k x n. ``elem_bytes`` is the weights' storage (2 for 16-bit); below 2 (int8,
    int4 weight-only) the k x n weight read costs its packed bytes: the calibrated 16-bit kernel time
    less the streaming time of the bytes not read, no faster than its math at a large GEMM's
    rate, plus DEQUANT_OVERHEAD
    of the packed read. Activations and outputs stay 16-bit."""
    m_i = max(1, int(round(m)))
    flops = 2.0 * m_i * k * n
    act_bytes = 2.0 if elem_bytes < 2.0 else elem_bytes
    nbytes = act_bytes * (m_i * k + m_i * n) + elem_bytes * k * n
    t = _gemm_kernel_s(eff, m_i, k, n, dtype, elem_bytes, graph, interleaved, flops)
    t_mem = nbytes / eff.mem_bytes_per_s(nbytes)
    t_cmp = flops / eff.gemm_flops_per_s(m_i, n, k, dtype)
    bound = "compute" if t_cmp >= t_mem else "memory"
    t = max(t, KERNEL_FLOOR_S)
    if t <= KERNEL_FLOOR_S * 1.0001:
        bound = "latency"
    return OpTime(name, "gemm", flops * count, nbytes * count, t * count, bound, count)


def gemm_op_s(eff, m: float, k: int, n: int, dtype: str = "bf16", count: float = 1.0, elem_bytes: float = 2.0,
              graph: bool = False, interleaved: bool = False) -> float:
    """gemm_op's ``time_s`` alone, for callers that only add times: without its compute- or
    memory-bound label, which costs a second evaluation of the calibrated curve per shape."""
    m_i = max(1, int(round(m)))
    t = _gemm_kernel_s(eff, m_i, k, n, dtype, elem_bytes, graph, interleaved, 2.0 * m_i * k * n)
    return max(t, KERNEL_FLOOR_S) * count


def gemm_ops_s(eff, gemms, interleaved: bool = False, also=()) -> list[float]:
    """gemm_op_s of many 16-bit GEMMs ``gemms`` ((m, k, n, dtype, count) each, not launched from a
    graph), in order: their distinct shapes through the calibrated curve in one vectorised call
    per dtype (DeviceEfficiency.gemm_times_list). ``also``: more (m, k, n, dtype) shapes evaluated in
    the same call, for the caller's later gemm_op_s (their times are remembered, not returned)."""
    many = getattr(eff, "gemm_times_list", None)
    if many is None or isinstance(eff, _GemmRecorder) or _PREFETCHED[0]:
        # one shape at a time (a recorder learns each; under `prefetched` the caller evaluated them)
        return [gemm_op_s(eff, m, k, n, d, c, interleaved=interleaved) for m, k, n, d, c in gemms]
    rows = (*gemms, *also) if also else gemms
    if not rows:
        return []
    floor = KERNEL_FLOOR_S
    d = rows[0][3]
    if all(g[3] == d for g in rows):  # one dtype (the common case): one call, shapes as they come
        ms = [m if type(m) is int and m > 0 else max(1, int(round(m))) for m, *_ in rows]
        times = many(ms, [g[2] for g in rows], [g[1] for g in rows], d, 1, interleaved)
        return [max(t, floor) * g[4] for t, g in zip(times, gemms)]
    keys = [(m if type(m) is int and m > 0 else max(1, int(round(m))), n, k, d) for m, k, n, d, *_ in gemms]
    if also:
        keys += [(m if type(m) is int and m > 0 else max(1, int(round(m))), n, k, d) for m, k, n, d, *_ in also]
    distinct = dict.fromkeys(keys)
    times = {}
    for d in {key[3] for key in distinct}:
        sh = [key for key in distinct if key[3] == d]
        m, n, k, _ = zip(*sh)
        times.update(zip(sh, many(m, n, k, d, 1, interleaved)))
    return [max(times[key], floor) * g[4] for key, g in zip(keys, gemms)]


def _gemm_kernel_s(eff, m_i: int, k: int, n: int, dtype: str, elem_bytes: float, graph: bool, interleaved: bool,
                   flops: float) -> float:
    """The time of one GEMM of gemm_op, before the kernel floor."""
    t = (_graph_kernel_s(eff, "gemm", m_i, n, k, dtype) if graph else None) or eff.gemm_time_s(
        m_i, n, k, dtype, interleaved=interleaved)
    if dtype == "fp8" and elem_bytes <= 1.0:
        t = _w8a8_s(eff, t, m_i, k, n, graph, interleaved)
    elif elem_bytes < 2.0:
        full = 2.0 * (m_i * k + k * n + m_i * n)
        rate = eff.mem_bytes_per_s(full)
        saved = (2.0 - elem_bytes) * k * n / rate
        packed = elem_bytes * k * n / rate
        math_s = flops / eff.gemm_flops_per_s(max(m_i, 4096), n, k, dtype)  # the math at a large GEMM's rate
        t = max(t - saved, math_s) + DEQUANT_OVERHEAD * packed
    return t


def _w8a8_s(eff, t_fp8: float, m: int, k: int, n: int, graph: bool, interleaved: bool) -> float:
    """An FP8 W8A8 GEMM (fp8 weights and activations, fp8 tensor-core math, 16-bit output; scales
    applied in the epilogue): the calibrated fp8 kernel time ``t_fp8``, but no less than reading its
    bytes: where the 16-bit GEMM of this shape is memory-bound (its flops per byte under the
    calibrated ridge point, large-GEMM rate over streaming rate), the calibrated 16-bit kernel time
    less the streaming time of the weight and input bytes fp8 does not read (one per element, as the
    weight-only path above); elsewhere the fp8 bytes at the streaming rate. (The shipped H100 / H200
    fp8 curves sit within 2% above that floor at one token.)"""
    nbytes = 1.0 * (m * k + k * n) + 2.0 * m * n
    full = 2.0 * (m * k + k * n + m * n)
    rate = eff.mem_bytes_per_s(full)
    ridge = eff.gemm_flops_per_s(4096, 4096, 4096, "bf16") / eff.mem_bytes_per_s(1e9)  # flop per byte
    if 2.0 * m * k * n / full < ridge:  # below the roofline's ridge point: memory-bound
        t16 = ((_graph_kernel_s(eff, "gemm", m, n, k, "bf16") if graph else None)
               or eff.gemm_time_s(m, n, k, "bf16", interleaved=interleaved))
        floor = t16 - (m * k + k * n) / rate
    else:
        floor = nbytes / rate
    return max(t_fp8, floor)


def gpu_units(spec) -> int | None:
    """The multiprocessors of a GPU spec (the EAGER_* rates are per SM); None for other devices or
    where the spec does not say."""
    if getattr(spec, "kind", "gpu") != "gpu":
        return None
    return getattr(spec, "compute_units", None) or None


def eager_elementwise_bytes_per_s(spec, elem_bytes: float) -> float | None:
    """Ceiling on the traffic rate of eager PyTorch's op-by-op elementwise kernels of ``elem_bytes``
    bytes per element on a GPU (EAGER_ELEMENTWISE_ELEMENTS_PER_S_PER_SM); None without gpu_units."""
    units = gpu_units(spec)
    return units * EAGER_ELEMENTWISE_ELEMENTS_PER_S_PER_SM * elem_bytes if units else None


def memory_op(eff, name: str, nbytes: float, count: float = 1.0, flops: float = 0.0, graph: bool = False,
              max_bytes_per_s: float | None = None) -> OpTime:
    t = _memory_kernel_s(eff, nbytes, graph, max_bytes_per_s)
    bound = "memory" if t > KERNEL_FLOOR_S * 1.0001 else "latency"
    return OpTime(name, "memory", flops * count, nbytes * count, t * count, bound, count)


def memory_op_s(eff, nbytes: float, count: float = 1.0, graph: bool = False, max_bytes_per_s: float | None = None) -> float:
    """memory_op's ``time_s`` alone, for callers that only add times (no OpTime record built)."""
    return _memory_kernel_s(eff, nbytes, graph, max_bytes_per_s) * count


def _memory_kernel_s(eff, nbytes: float, graph: bool, max_bytes_per_s: float | None) -> float:
    """The time of one memory-bound kernel of memory_op."""
    tg = _graph_kernel_s(eff, "mem", max(nbytes, 1.0)) if graph else None
    t = max(tg if tg is not None else nbytes / eff.mem_bytes_per_s(max(nbytes, 1.0)), KERNEL_FLOOR_S)
    if max_bytes_per_s:
        t = max(t, nbytes / max_bytes_per_s)
    return t


def attention_op(eff, name: str, b: int, heads: int, s: int, d: int, flops: float, backward: bool) -> OpTime:
    t = attention_op_s(eff, b, heads, s, d, flops, backward)
    nbytes = 2.0 * 4 * b * heads * s * d * (2 if backward else 1)
    return OpTime(name, "attention", flops, nbytes, t, "compute", 1.0)


def attention_op_s(eff, b: int, heads: int, s: int, d: int, flops: float, backward: bool) -> float:
    """attention_op's ``time_s`` alone (no OpTime record built)."""
    rate = eff.attention_flops_per_s(b, heads, s, d, True, backward)
    return max(flops / rate, KERNEL_FLOOR_S)
