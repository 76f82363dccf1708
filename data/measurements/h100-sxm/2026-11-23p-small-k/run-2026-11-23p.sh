#!/bin/bash
# Device run (1x H100): bf16 LLM-shaped GEMMs with k = 1024-5504 (the k ramp's short end).
set -u
cd "$(dirname "$0")/../.."
timeout 400 python3 costmodel/bench/gemm_small_k.py "$OUT/h100-sxm-2026-11-23p-small-k.jsonl" 2>&1 | tail -40
