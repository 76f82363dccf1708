#!/bin/bash
# Device run (1x H100): how fast is this machine's host against the truth file's H100
# machine, measured by the public file's host-bound training steps (llama-110m / llama-350m b1-b4
# s1024), interleaved with eager HF `infer` cases in one process (train x5, infer x4, train x2,
# infer x4, train x5)? The ratio refers the eager-inference host constants (fitted on session 6's
# machine) to the truth machine, as fit_host's SAME_DAY_HOST does for training. To $OUT.
set -u
cd "$(dirname "$0")/../.."
nvidia-smi > "$OUT/h100-2026-11-23ad-smi.txt" 2>&1
timeout 560 python3 costmodel/bench/train_step.py --config data/measurements/h100-sxm/2026-11-23ad-hostref/cases-hostref-h100-ad.json \
    --out "$OUT/hostref-h100-ad.jsonl" 2>&1 | grep "^\[\|done\|Error\|error" | tail -30
ls -la "$OUT"
