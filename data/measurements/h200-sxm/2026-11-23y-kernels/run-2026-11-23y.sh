#!/bin/bash
# Device run (1x H200): the whole kernel harness again (GEMM, memory, elementwise, SDPA,
# host copies), 5 shuffled rounds, to check the shipped H200 overlay (fitted on run 23f) against
# another machine and day. Writes straight to $OUT.
set -u
cd "$(dirname "$0")/../.."
nvidia-smi > "$OUT/h200-2026-11-23y-smi.txt" 2>&1
timeout 560 python3 -m costmodel.bench.run_gpu --out "$OUT" --tag h200-sxm-2026-11-23y --rounds 5 --no-progress \
    > "$OUT/h200-sxm-2026-11-23y-log.txt" 2>&1
tail -3 "$OUT/h200-sxm-2026-11-23y-log.txt"
ls -la "$OUT"
