#!/bin/bash
# Device run (2x H200, NVLink): DDP / FSDP2 steps with gradient accumulation, standard
# attention and amp-fp16, against DDP / FSDP2 references from the same run. Writes to $OUT.
set -u
cd "$(dirname "$0")/../.."
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$OUT/h200x2-2026-11-23x-smi.txt" 2>&1
NCCL_NVLS_ENABLE=0 timeout ${TRAIN_TIMEOUT:-420} torchrun --nproc_per_node 2 costmodel/bench/train_step.py \
    --config data/measurements/h200-sxm-x2/2026-11-23x-train-variants/cases-variants-h200x2.json --out "$OUT/train-variants-h200x2.jsonl" --kinds train 2>&1 \
    | grep "^\[\|done\|Error\|error" | tail -30
ls -la "$OUT"
