#!/bin/bash
# Device run (1x H200): eager HF prefill + decode (`infer`) on models and shapes the
# eager-host constants were not fitted on, on another GPU. Writes straight to $OUT.
set -u
cd "$(dirname "$0")/../.."
timeout 500 python3 costmodel/bench/train_step.py --config data/measurements/h200-sxm/2026-11-23l-infer/cases-infer-h200.json \
    --out "$OUT/infer-h200.jsonl" --kinds infer 2>&1 | grep "^\[\|done\|Error\|error" | tail -20
ls -la "$OUT"
