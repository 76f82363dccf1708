#!/bin/bash
# Device run (H100): HF prefill + eager decode (`infer` records) and profiled train steps
# (op counts, kernel time vs wall) for the host-overhead and MoE models. Writes straight to $OUT.
set -u
cd "$(dirname "$0")/../.."
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$OUT/h100-2026-11-23i-smi.txt" 2>&1
timeout ${INFER_TIMEOUT:-330} python3 costmodel/bench/train_step.py --config data/measurements/h100-sxm/2026-11-23i-infer-train-profile/cases-infer-profile-h100.json \
    --out "$OUT/h100-2026-11-23i-infer.jsonl" --kinds infer 2>&1 | grep -v -i warn | tail -40
timeout ${TRAIN_TIMEOUT:-200} python3 costmodel/bench/train_step.py --config data/measurements/h100-sxm/2026-11-23i-infer-train-profile/cases-infer-profile-h100.json \
    --out "$OUT/h100-2026-11-23i-train.jsonl" --kinds train 2>&1 | grep -v -i warn | tail -30
ls -la "$OUT"
