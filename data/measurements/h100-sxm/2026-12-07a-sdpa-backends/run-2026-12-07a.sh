#!/bin/sh
# One H100 80GB HBM3 (nvidia-h100-x1), PyTorch 2.11.0+cu130, cuDNN 9.19; ~61 s.
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv > $OUT/smi.txt
PYTHONUNBUFFERED=1 python3 costmodel/bench/sdpa_backends.py $OUT/sdpa-backends.jsonl 2>$OUT/stderr.txt
