#!/bin/bash
# Device run (1x H100): GEMM time with rotated vs L2-resident activations.
set -u
cd "$(dirname "$0")/../.."
timeout 300 python3 costmodel/bench/gemm_l2.py "$OUT/h100-sxm-2026-11-23q-gemm-l2.jsonl" 2>&1 | tail -12
