#!/bin/bash
# Device run (1x H100): the eager HF `infer` cases the two H200 machine kinds ran
# (cases-infer-h200.json), plus gpt2-124m / llama-110m and repeats of gpt2-350m and llama-1.3b at
# the end: does this H100 machine's host time a gpt2 layer at ~0.5 of a llama layer, as both H200
# machines and the profiles' op counts do, or at ~1.0 as run 23i's infer-h100.jsonl did? To $OUT.
set -u
cd "$(dirname "$0")/../.."
nvidia-smi > "$OUT/h100-2026-11-23ac-smi.txt" 2>&1
timeout 540 python3 costmodel/bench/train_step.py --config data/measurements/h100-sxm/2026-11-23ac-infer/cases-infer-h100-ac.json \
    --out "$OUT/infer-h100-ac.jsonl" --kinds infer 2>&1 | grep "^\[\|done\|Error\|error" | tail -20
ls -la "$OUT"
