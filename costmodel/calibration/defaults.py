"""Default efficiency constants (a spec's datasheet peaks times these when no calibration exists) and
the overlay format tag."""
from __future__ import annotations




FORMAT = "costmodel-calibration/1"

# ------------------------------------------------------------------------------------------------
# Default efficiency curves (used with a spec's datasheet peaks when no calibration exists).
#
# Sources: data/measurements/h100-sxm/2026-11-23a-kernels/h100-sxm-2026-11-23-kernels.jsonl (this harness on an H100 SXM,
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
# Starting value of the k-pipeline ramp k / (k + k_half) that each GEMM fit fits (CUTLASS Hopper
# mainloops stage 64-wide k slices; a tile's prologue and epilogue cost a few of them); not fitted itself.
K_HALF_START = 64.0
# Smooth corners: compute/memory (p) and floor/kernel (q). A fit's GEMM curve fits its own p and q
# from these starts; its bandwidth, elementwise and attention curves take the GEMM's q, and its
# attention curves the GEMM's p (fit.fit_overlay: one corner of each per device, pinned by the many
# GEMM shapes; the shipped fits find p 2.9 / q 13.1 on the H100, 2.1 / 2.4 on the H200, 1.7 / 5.7 on
# the H100's host CPU). DEFAULT_P and DEFAULT_Q are the starts of those fits and the corners of the
# datasheet defaults' curves, not fitted themselves.
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
