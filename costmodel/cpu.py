"""A CPU as the device of a training step or a decode step (``-H cpu-*``).

The step models of costmodel.training and costmodel.inference run unchanged on a CPU spec with
its efficiency (datasheet peaks x the default curves, or ``calibrate --backend numpy`` measured on
the host and given as ``--calibration``): GEMMs at the calibrated BLAS rate (AMX / AVX-512 bf16
peaks where the spec has them and no calibration says otherwise), memory-bound kernels at the
measured DRAM bandwidth. What differs from a GPU, and lives here:

- attention: PyTorch's CPU flash kernel (aten/src/ATen/native/cpu/FlashAttentionKernel.cpp) runs
  its q-block x kv-block products on the BLAS (cpublas::gemm), skipping blocks above the causal
  diagonal, so it is timed as GEMMs at the BLAS rate (:func:`attention_times`);
- the host is the device: Python's dispatch time adds to the step instead of hiding behind a
  GPU's queue (training.estimate_train);
- decode has no CUDA graph: each small op costs the calibrated per-call overhead
  (``launch_overhead_s``), and no GPU host-time constants apply (inference.decode_step).
"""
from __future__ import annotations


def is_cpu(spec) -> bool:
    return getattr(spec, "kind", None) == "cpu"


def attention_times(eff, mb: int, heads: int, s: int, d: int, dtype: str) -> tuple[float, float]:
    """(forward, backward) seconds of causal attention of ``mb`` x ``heads`` sequences of ``s``
    tokens and head size ``d`` on a CPU: forward S = Q K^T and O = P V over the lower triangle
    (2 x 2 s^2 d / 2 FLOPs per head), at the BLAS rate of an (s x d) by (d x s) product, the
    mb x heads of them as one (mb heads s x d) by (d x s) product; backward recomputes S and runs dV, dP, dQ and dK: 5 products against the forward's 2
    (FlashAttention-2, Dao 2023, sec. 3.1-3.2)."""
    bh = mb * heads
    flops_fwd = 2.0 * 2.0 * s * s * d / 2.0 * bh
    rate = eff.gemm_flops_per_s(bh * s, s, d, dtype)
    fwd = flops_fwd / rate
    return fwd, 2.5 * fwd


def op_overhead_s(eff) -> float:
    """Seconds one small op costs on a CPU: the efficiency's launch overhead, which a host's numpy
    calibration pins with a 4 KiB elementwise add (one numpy call; bench.numpy_backend)."""
    return float(eff.launch_overhead_s)


def stream_s(eff, nbytes: float) -> float:
    """Seconds to read ``nbytes`` from DRAM at the calibrated read bandwidth (asymptotic: the numpy
    benchmark measures buffers of 2-16x the last-level cache only, so its fitted per-call floors are
    not a small read's cost; the call itself is an op, op_overhead_s)."""
    read = getattr(eff, "read", None)
    bw = getattr(read, "bytes_per_s", None) or eff.mem_bytes_per_s(max(nbytes, 1.0))
    return nbytes / bw
