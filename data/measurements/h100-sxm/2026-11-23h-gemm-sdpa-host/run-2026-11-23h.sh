set -x
O=/tmp/o; mkdir -p $O
nvidia-smi > $O/nvidia-smi.txt 2>&1; lscpu > $O/h100-host-lscpu.txt 2>&1
timeout 360 python3 -m costmodel.bench.run_gpu --out $O --tag h100-sxm-2026-11-23h --ops gemm --rounds 9 --no-progress > $O/h100-sxm-2026-11-23h-log.txt 2>&1
tail -2 $O/h100-sxm-2026-11-23h-log.txt
timeout 60 python3 costmodel/bench/sdpa_variants.py $O/h100-sxm-2026-11-23h-sdpa-variants.jsonl > $O/sdpa-variants-log.txt 2>&1
tail -3 $O/sdpa-variants-log.txt
timeout 150 python3 -m costmodel.bench.run_gpu --backend numpy --out $O --tag h100-host-2026-11-23 --rounds 3 --no-progress --hardware h100-sxm-host > $O/h100-host-2026-11-23-log.txt 2>&1
tail -2 $O/h100-host-2026-11-23-log.txt
tar czf $OUT/run-h.tgz -C $O .
ls -la $O
