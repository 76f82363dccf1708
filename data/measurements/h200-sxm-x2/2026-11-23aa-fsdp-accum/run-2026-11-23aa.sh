#!/bin/bash
# Device run (2x H200, NVLink): FSDP2 gradient accumulation with the harness default (a
# reduce-scatter every micro-batch), DDP references first (checks the garbage-collection fix). To $OUT.
set -u
cd "$(dirname "$0")/../.."
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$OUT/h200x2-2026-11-23aa-smi.txt" 2>&1
NCCL_NVLS_ENABLE=0 timeout ${TRAIN_TIMEOUT:-420} torchrun --nproc_per_node 2 costmodel/bench/train_step.py \
    --config data/measurements/h200-sxm-x2/2026-11-23aa-fsdp-accum/cases-fsdp-accum-h200x2.json --out "$OUT/train-fsdp-accum-h200x2.jsonl" --kinds train 2>&1 \
    | grep "^\[\|done\|Error\|error" | tail -30
ls -la "$OUT"
