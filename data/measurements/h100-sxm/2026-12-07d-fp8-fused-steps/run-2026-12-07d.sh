#!/bin/sh
# One H100 80GB HBM3 (nvidia-h100-x1, 700 W), PyTorch 2.11.0+cu130, cuDNN 9.19; ~292 s.
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm,memory.total --format=csv > $OUT/smi.txt
(python costmodel/bench/fused_step.py $OUT/fp8.jsonl --fp8 --budget-s 270 && python costmodel/bench/fused_step.py $OUT/bf16.jsonl --budget-s 220) > $OUT/log.txt 2>&1
