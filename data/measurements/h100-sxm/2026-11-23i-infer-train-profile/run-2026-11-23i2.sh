#!/bin/bash
# Device run, part 2 (H100): the infer cases that part 1's time limit cut off, and two
# part-1 cases again (reproducibility across processes). Writes straight to $OUT.
set -u
cd "$(dirname "$0")/../.."
timeout ${INFER_TIMEOUT:-560} python3 costmodel/bench/train_step.py --config data/measurements/h100-sxm/2026-11-23i-infer-train-profile/cases-infer-h100-part2.json \
    --out "$OUT/h100-2026-11-23i2-infer.jsonl" --kinds infer 2>&1 | grep -v -i warn | tail -40
ls -la "$OUT"
