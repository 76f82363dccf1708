#!/bin/sh
# One H100 80GB HBM3 (nvidia-h100-x1, 700 W), PyTorch 2.11.0+cu130, cuDNN 9.19; ~113 s.
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm,memory.total --format=csv > $OUT/smi.txt
python costmodel/bench/fused_step.py $OUT/fused.jsonl --budget-s 500
