#!/bin/sh
# Two rounds of: a quick numpy calibration of the host (one core, one thread, timed by the thread's
# CPU time: the host is shared), then the training
# and decode steps on the same core. Run from the repository root's venv (costmodel's numpy) with
# torch installed beside it (a scratch venv: TORCH_PY), e.g.
#   TORCH_PY=/tmp/venv/bin/python sh data/measurements/cpu/2026-12-07a-host-train-decode/run.sh OUTDIR
set -e
OUT=${1:-.}
HERE=$(dirname "$0")
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
for i in 1 2; do
  echo "round $i start $(date -u +%FT%TZ) $(cat /proc/loadavg)" >> "$OUT/log.txt"
  taskset -c 1 python cli.py calibrate --backend numpy --quick --clock thread --hardware cpu-epyc-9654 --no-progress \
    --save-records "$OUT/calibration-$i.jsonl" --out "$OUT/calibration-$i.yaml" >> "$OUT/log.txt" 2>&1
  taskset -c 1 "$TORCH_PY" "$HERE/measure.py" --out "$OUT/records-$i.jsonl" >> "$OUT/log.txt" 2>&1
  echo "round $i end $(date -u +%FT%TZ) $(cat /proc/loadavg)" >> "$OUT/log.txt"
done
