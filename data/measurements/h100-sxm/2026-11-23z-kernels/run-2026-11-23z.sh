#!/bin/bash
# Device run (1x H100): the whole kernel harness again (GEMM, memory, elementwise, SDPA,
# host copies), 5 shuffled rounds, to check the shipped H100 overlay (fitted on run 23e) against
# another machine and day. Writes straight to $OUT.
set -u
cd "$(dirname "$0")/../.."
nvidia-smi > "$OUT/h100-2026-11-23z-smi.txt" 2>&1
timeout 560 python3 -m costmodel.bench.run_gpu --out "$OUT" --tag h100-sxm-2026-11-23z --rounds 5 --no-progress \
    > "$OUT/h100-sxm-2026-11-23z-log.txt" 2>&1
tail -3 "$OUT/h100-sxm-2026-11-23z-log.txt"
ls -la "$OUT"
