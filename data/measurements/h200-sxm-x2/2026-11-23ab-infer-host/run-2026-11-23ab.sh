#!/bin/bash
# Device run (2x H200 machine, one GPU): the eager HF `infer` cases of session 6's
# single-H200 run (cases-infer-h200.json) on the two-GPU machine kind, whose host the truth file's
# H200 records come from (the single-H200 machine's host ran eager decode 1.8x faster). To $OUT.
set -u
cd "$(dirname "$0")/../.."
CUDA_VISIBLE_DEVICES=0 timeout 420 python3 costmodel/bench/train_step.py --config data/measurements/h200-sxm/2026-11-23l-infer/cases-infer-h200.json \
    --out "$OUT/infer-h200x2host.jsonl" --kinds infer 2>&1 | grep "^\[\|done\|Error\|error" | tail -20
ls -la "$OUT"
