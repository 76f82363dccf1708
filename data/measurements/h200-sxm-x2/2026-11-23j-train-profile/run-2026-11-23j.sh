#!/bin/bash
# Device run (2x H200): profiled DDP / FSDP2 and single-GPU GPU-bound train steps
# (kernel time by operator, NCCL kernel time, host op counts). Writes straight to $OUT.
set -u
cd "$(dirname "$0")/../.."
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$OUT/h200x2-2026-11-23j-smi.txt" 2>&1
NCCL_NVLS_ENABLE=0 timeout 300 torchrun --nproc_per_node 2 costmodel/bench/train_step.py \
    --config data/measurements/h200-sxm-x2/2026-11-23j-train-profile/cases-profile-h200x2.json --out "$OUT/h200x2-2026-11-23j-profile.jsonl" --kinds train 2>&1 \
    | grep -v -i warn | grep -v "^\s*$" | tail -20
timeout 200 python3 costmodel/bench/train_step.py --config data/measurements/h200-sxm-x2/2026-11-23j-train-profile/cases-profile-h200x2.json \
    --out "$OUT/h200x1-2026-11-23j-profile.jsonl" --kinds train 2>&1 | grep -v -i warn | tail -10
ls -la "$OUT"
