#!/bin/bash
# Device run (H100): the two selective-recompute + standard-attention steps of 23s again,
# now with the eager causal mask registered for the checkpointed attention function (23s/23u ran
# them unmasked: transformers builds no mask for an attention name its AttentionMaskInterface does
# not know). Writes straight to $OUT.
set -u
cd "$(dirname "$0")/../.."
timeout ${TRAIN_TIMEOUT:-300} python3 costmodel/bench/train_step.py --config data/measurements/h100-sxm/2026-11-23v-train-selective/cases-variants-selective-h100.json \
    --out "$OUT/train-variants-selective-h100.jsonl" --kinds train 2>&1 | grep -v -i warn | tail -20
ls -la "$OUT"
