#!/bin/bash
# Device run (1x H100): (1) the cuBLAS kernel (tile) behind every GEMM shape of the
# harness grid; (2) profiled GPU-bound eager HF prefills (batch x prompt >= 16k tokens), where the
# model predicts 8-14% fast. Writes straight to $OUT.
set -u
cd "$(dirname "$0")/../.."
timeout 200 python3 costmodel/bench/gemm_kernels.py "$OUT/h100-sxm-2026-11-23n-gemm-kernels.jsonl" > "$OUT/gemm-kernels-log.txt" 2>&1
tail -2 "$OUT/gemm-kernels-log.txt"
timeout 350 python3 costmodel/bench/train_step.py --config data/measurements/h100-sxm/2026-11-23n-gemm-kernels-gpubound-prefill/cases-infer-gpubound-h100.json \
    --out "$OUT/infer-gpubound-h100.jsonl" --kinds infer 2>&1 | grep "^\[\|done\|Error\|error" | tail -20
ls -la "$OUT"
