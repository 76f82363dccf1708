#!/bin/bash
# Device run (1x H200): the profiled GPU-bound eager HF prefills of run 23n on an H200
# (does HF's torch.cat run at a fraction of HBM bandwidth, or at a fixed rate?). Writes to $OUT.
set -u
cd "$(dirname "$0")/../.."
timeout 400 python3 costmodel/bench/train_step.py --config data/measurements/h200-sxm/2026-11-23o-gpubound-prefill/cases-infer-gpubound-h200.json \
    --out "$OUT/infer-gpubound-h200.jsonl" --kinds infer 2>&1 | grep "^\[\|done\|Error\|error" | tail -20
ls -la "$OUT"
