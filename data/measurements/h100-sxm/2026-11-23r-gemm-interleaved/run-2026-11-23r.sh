#!/bin/bash
# Device run (1x H100): a GEMM's own time isolated, back to back, and between memory-bound kernels.
set -u
cd "$(dirname "$0")/../.."
timeout 300 python3 costmodel/bench/gemm_interleaved.py "$OUT/h100-sxm-2026-11-23r-gemm-interleaved.jsonl" 2>&1 | tail -30
