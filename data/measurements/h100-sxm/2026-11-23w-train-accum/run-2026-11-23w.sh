#!/bin/bash
# Device run (H100): training steps with gradient accumulation (SCHEMA.md global_batch >
# micro_batch x dp), which no earlier run measured. Writes straight to $OUT.
set -u
cd "$(dirname "$0")/../.."
timeout ${TRAIN_TIMEOUT:-300} python3 costmodel/bench/train_step.py --config data/measurements/h100-sxm/2026-11-23w-train-accum/cases-accum-h100.json \
    --out "$OUT/train-accum-h100.jsonl" --kinds train 2>&1 | grep -v -i warn | tail -20
ls -la "$OUT"
