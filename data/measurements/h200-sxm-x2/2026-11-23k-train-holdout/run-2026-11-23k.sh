#!/bin/bash
# Device run (2x H200): held-out DDP / FSDP2 steps for models and shapes the DDP/FSDP
# terms were not derived from, and the same steps on one GPU. Writes straight to $OUT.
set -u
cd "$(dirname "$0")/../.."
NCCL_NVLS_ENABLE=0 timeout 330 torchrun --nproc_per_node 2 costmodel/bench/train_step.py \
    --config data/measurements/h200-sxm-x2/2026-11-23k-train-holdout/cases-holdout-h200x2.json --out "$OUT/train-holdout-h200x2.jsonl" --kinds train 2>&1 \
    | grep "^\[\|done\|Error\|error" | tail -20
timeout 150 python3 costmodel/bench/train_step.py --config data/measurements/h200-sxm-x2/2026-11-23k-train-holdout/cases-holdout-h200x2.json \
    --out "$OUT/train-holdout-h200x1.jsonl" --kinds train 2>&1 | grep "^\[\|done\|Error\|error" | tail -10
ls -la "$OUT"
