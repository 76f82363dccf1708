#!/bin/bash
# Device run (1x H100): the whole kernel harness (GEMM, memory, elementwise, SDPA, host
# copies), 5 shuffled rounds, with the fp16/fp8/tf32 LLM-shaped GEMMs on the bf16 series' m grid
# (m = 16..8192, 9 points instead of 4). Writes straight to $OUT.
set -u
cd "$(dirname "$0")/../.."
nvidia-smi > "$OUT/h100-2026-11-23m-smi.txt" 2>&1
timeout 560 python3 -m costmodel.bench.run_gpu --out "$OUT" --tag h100-sxm-2026-11-23m --rounds 5 --no-progress \
    > "$OUT/h100-sxm-2026-11-23m-log.txt" 2>&1
tail -3 "$OUT/h100-sxm-2026-11-23m-log.txt"
ls -la "$OUT"
