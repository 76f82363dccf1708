#!/bin/bash
# Device run (H100): torch.profiler summaries of standard-attention (transformers eager)
# and amp-fp16 steps, with a flash reference, to split the step time by operator. Writes to $OUT.
set -u
cd "$(dirname "$0")/../.."
timeout ${TRAIN_TIMEOUT:-300} python3 costmodel/bench/train_step.py --config data/measurements/h100-sxm/2026-11-23t-train-variants-profile/cases-variants-profile-h100.json \
    --out "$OUT/train-variants-profile-h100.jsonl" --kinds train 2>&1 | grep -v -i warn | tail -20
ls -la "$OUT"
