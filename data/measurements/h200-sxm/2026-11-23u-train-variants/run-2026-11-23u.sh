#!/bin/bash
# Device run (1x H200): training-step variants SCHEMA.md describes that no earlier run
# measured: amp-fp16 with GradScaler, standard (materialised, transformers "eager") attention and
# selective recompute (attention core checkpointed), with flash/amp-bf16 references from the same
# run. Writes straight to $OUT.
set -u
cd "$(dirname "$0")/../.."
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$OUT/h200-2026-11-23u-smi.txt" 2>&1
timeout ${TRAIN_TIMEOUT:-420} python3 costmodel/bench/train_step.py --config data/measurements/h100-sxm/2026-11-23s-train-variants/cases-variants-h100.json \
    --out "$OUT/train-variants-h200.jsonl" --kinds train 2>&1 | grep -v -i warn | tail -40
ls -la "$OUT"
