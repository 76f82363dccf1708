"""DeviceEfficiency: the achieved rates the models ask for, and the defaults built from a spec's
peaks."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..bench.records import (
    ATTENTION_OPS, COLLECTIVE_OPS, ELEMENTWISE_OPS, GEMM_OPS, HOST_OPS, MEM_OPS, sdpa_flops,
)
from ..errors import InputError
from .curves import AttentionCurve, BandwidthCurve, CollectiveFit, GemmCurve, GemmDtype, LinkFit, Timing
from .defaults import (
    DEFAULT_ATTENTION, DEFAULT_COPY_BW_EFFICIENCY, DEFAULT_ELEMENTWISE_BW_EFFICIENCY,
    DEFAULT_GEMM_BW_EFFICIENCY, DEFAULT_GEMM_EFFICIENCY, DEFAULT_GEMM_FLOOR_S, DEFAULT_GEMM_GAP_S,
    DEFAULT_H2D_PAGEABLE_EFFICIENCY, DEFAULT_H2D_PINNED_EFFICIENCY,
    DEFAULT_HOST_LATENCY_S, DEFAULT_KERNEL_MIN_S, DEFAULT_LAUNCH_OVERHEAD_S, DEFAULT_MEM_GAP_S,
    DEFAULT_P, DEFAULT_Q, DEFAULT_READ_BW_EFFICIENCY,
)

_SCALAR = (int, float)
# Distinct GEMM queries remembered per device model before the memo starts again (~150 B each).
MEMO_MAX_SHAPES = 200_000
# Fused-attention kernels a calibration or a framework can name (roofline.sdpa_backend_rate):
# "cudnn" (cuDNN's fused flash attention: PyTorch SDPA's CUDNN_ATTENTION backend, Transformer
# Engine's FusedAttention) and "flash2" (FlashAttention-2: the flash-attn package, PyTorch SDPA's
# FLASH_ATTENTION backend).
ATTENTION_BACKENDS = ("cudnn", "flash2")


def _number(t):
    """A 0-d result as a float, an array as it is."""
    if type(t) is float:
        return t
    if type(t) is np.ndarray:
        return float(t) if t.ndim == 0 else t
    return float(t) if np.ndim(t) == 0 else t


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
                 "launch_overhead_s", "peaks", "eager_infer_host_factor", "attention_backend", "_frozen", "_memo")

    def __init__(self, *, device: str, source: str, gemm: GemmCurve, copy: BandwidthCurve, read: BandwidthCurve,
                 elementwise: Mapping[str, BandwidthCurve], attention: Mapping[str, AttentionCurve], host: Mapping[str, LinkFit],
                 collectives: Mapping[str, Mapping[int, CollectiveFit]], launch_overhead_s: float, peaks: Mapping[str, float] | None = None,
                 eager_infer_host_factor: float = 1.0, attention_backend: str | None = None):
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
        # the fused-attention kernel the attention curves measured (ATTENTION_BACKENDS; None: not
        # stated), so a framework that runs another one can be timed against it
        s(self, "attention_backend", attention_backend)
        # GEMM times already computed, per distinct (shape, dtype, batch, mode): the curves are pure
        # functions of these, so a step or a search evaluates each distinct shape once
        s(self, "_memo", {})
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
        cap that sustained back-to-back GEMMs hit binds only as far as a short burst's does.
        A shape asked for before is answered from the memo (see gemm_times_s)."""
        if type(m) in _SCALAR and type(n) in _SCALAR and type(k) in _SCALAR and type(batch) in _SCALAR:
            hit = self._memo.get((m, n, k, dtype, batch, interleaved))
            if hit is not None:
                return hit
            return float(self.gemm_times_s([m], [n], [k], dtype, batch, interleaved)[0])
        return self._gemm_time_s(m, n, k, dtype, batch, interleaved)

    def _gemm_time_s(self, m, n, k, dtype: str, batch=1, interleaved: bool = False):
        d = self._dtype(dtype)
        t = self.gemm.dtypes[d].timing.stream(self.gemm.kernel_s(m, n, k, d, batch, mode="burst" if interleaved else "stream"))
        return _number(t)

    def gemm_times_s(self, m, n, k, dtype: str, batch=1, interleaved: bool = False) -> np.ndarray:
        """gemm_time_s of many shapes (sequences m, n, k of one length; ``batch`` a scalar) through
        the curve in one vectorised call: the shapes not in the memo are evaluated together, and
        remembered."""
        return np.array(self.gemm_times_list(m, n, k, dtype, batch, interleaved), dtype=float)

    def gemm_times_list(self, m, n, k, dtype: str, batch=1, interleaved: bool = False) -> list[float]:
        """gemm_times_s as a list of floats (the shapes in the memo looked up without numpy)."""
        memo = self._memo
        tail = (dtype, batch, interleaved)
        out = [memo.get(shape + tail) for shape in zip(m, n, k)]
        if None not in out:
            return out
        miss: dict = {}
        for i, (shape, v) in enumerate(zip(zip(m, n, k), out)):
            if v is None:  # each distinct missing shape once
                miss.setdefault(shape, []).append(i)
        cols = np.array(list(miss), dtype=float).T
        t = np.atleast_1d(self._gemm_time_s(cols[0], cols[1], cols[2], dtype, batch, interleaved)).tolist()
        if len(memo) > MEMO_MAX_SHAPES:
            memo.clear()
        for (shape, idx), ti in zip(miss.items(), t):
            memo[shape + tail] = ti
            for i in idx:
                out[i] = ti
        return out

    def gemm_kernel_s(self, m, n, k, dtype: str) -> float:
        """GPU time of one GEMM kernel under sustained load (GemmCurve.kernel_s, ``stream``) for
        one shape, without the host floor: from the memo after the first time."""
        key = ("kernel", m, n, k, dtype)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = float(self.gemm.kernel_s(m, n, k, dtype))
        return hit

    def gemm_call_time_s(self, m, n, k, dtype: str, batch=1):
        """Seconds for one isolated GEMM call (synchronise, launch, wait), as SCHEMA.md records time."""
        d = self._dtype(dtype)
        t = self.gemm.dtypes[d].timing.call(self.gemm.kernel_s(m, n, k, d, batch, mode="burst"))
        return _number(t)

    def gemm_flops_per_s(self, m, n, k, dtype: str, batch=1):
        """Achieved FLOP/s of one GEMM, its memory-bound regime (small m) included."""
        if type(m) in _SCALAR and type(n) in _SCALAR and type(k) in _SCALAR and type(batch) in _SCALAR:
            return 2.0 * float(m) * n * k * batch / self.gemm_time_s(m, n, k, dtype, batch)  # as below, one shape
        f = 2.0 * np.asarray(m, dtype=float) * n * k * batch / self.gemm_time_s(m, n, k, dtype, batch)
        return _number(f)

    # ---------------------------------------------------------------- memory
    def mem_time_s(self, nbytes, kind: str = "copy"):
        """Seconds to stream ``nbytes`` (read + written) through a copy or a read kernel."""
        if type(nbytes) in _SCALAR:
            key = ("mem", nbytes, kind)
            hit = self._memo.get(key)
            if hit is None:
                hit = self._memo[key] = self._mem_time_s(nbytes, kind)
            return hit
        return self._mem_time_s(nbytes, kind)

    def _mem_time_s(self, nbytes, kind: str = "copy"):
        c = self.copy if kind == "copy" else self.read
        t = c.timing.stream(c.kernel_s(nbytes))
        return _number(t)

    def mem_bytes_per_s(self, nbytes, kind: str = "copy"):
        """Achieved streaming bandwidth for a kernel moving ``nbytes`` (read + write counted)."""
        if type(nbytes) in _SCALAR:
            return float(nbytes) / self.mem_time_s(nbytes, kind)
        r = np.asarray(nbytes, dtype=float) / self.mem_time_s(nbytes, kind)
        return _number(r)

    def elementwise_time_s(self, nbytes, op: str = "elementwise_add"):
        c = self.elementwise.get(op) or self.elementwise.get("elementwise_add") or self.copy
        t = c.timing.stream(c.kernel_s(nbytes))
        return _number(t)

    def elementwise_bytes_per_s(self, nbytes, op: str = "elementwise_add"):
        r = np.asarray(nbytes, dtype=float) / self.elementwise_time_s(nbytes, op)
        return _number(r)

    # ---------------------------------------------------------------- attention
    def attention_time_s(self, b, h, s, d, causal: bool = True, backward: bool = False):
        if type(b) in _SCALAR and type(h) in _SCALAR and type(s) in _SCALAR and type(d) in _SCALAR:
            key = ("attention", b, h, s, d, causal, backward)
            hit = self._memo.get(key)
            if hit is None:
                hit = self._memo[key] = self._attention_time_s(b, h, s, d, causal, backward)
            return hit
        return self._attention_time_s(b, h, s, d, causal, backward)

    def _attention_time_s(self, b, h, s, d, causal: bool = True, backward: bool = False):
        c = self.attention.get("sdpa_fwd_bwd" if backward else "sdpa_fwd")
        if c is None:
            raise InputError(f"{self.device} has no attention calibration (run `costmodel calibrate` on a GPU, or give a spec)",
                             field="attention")
        t = c.timing.stream(c.kernel_s(b, h, s, d, causal, backward))
        return _number(t)

    def attention_flops_per_s(self, b, h, s, d, causal: bool = True, backward: bool = False):
        """Achieved FLOP/s of flash attention, FLOPs counted as SCHEMA.md does (4bhs^2d, /2 causal,
        x3.5 forward+backward)."""
        f = sdpa_flops(b, h, s, d, causal, backward) / self.attention_time_s(b, h, s, d, causal, backward)
        return _number(f)

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
        return _number(t)

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
                     bw * DEFAULT_GEMM_BW_EFFICIENCY, 0.0, DEFAULT_P)
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
