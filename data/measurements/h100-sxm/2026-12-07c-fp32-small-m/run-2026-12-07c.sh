#!/bin/bash
# Device run (1x H100): fp32 LLM-shaped GEMMs with m = 1..256 rows (the GEMM curve's small-tile half-point).
set -u
cd "$(dirname "$0")/../../../.."
nvidia-smi > "$OUT/h100-sxm-2026-12-07c-smi.txt" 2>&1
python3 -c "import json, platform, torch; print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'device': torch.cuda.get_device_name(0), 'python': platform.python_version()}))" > "$OUT/h100-sxm-2026-12-07c-env.json"
timeout 500 python3 costmodel/bench/gemm_fp32_small_m.py "$OUT/h100-sxm-2026-12-07c-fp32-small-m.jsonl" 2>&1 | tail -40
