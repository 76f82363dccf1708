"""Diagnostic: a GEMM's own time when it runs between memory-bound kernels, as inside a training
step or a prefill, against the harness's isolated calls and back-to-back calls (torch only; GPU).

For each bf16 shape, 60 iterations of each pattern, the GEMM timed alone by CUDA events around it
(median of the last 50):
  isolated     synchronise, GEMM, synchronise (the harness's isolated call)
  back2back    GEMMs queued one after another, no synchronisation
  interleaved  an elementwise pass over a 256 MiB buffer (~0.2 ms), then the GEMM, queued
The SM clock is sampled by nvidia-smi between patterns. One JSON line per shape and pattern.

    python3 costmodel/bench/gemm_interleaved.py OUT.jsonl
"""
import json
import statistics
import subprocess
import sys

import torch

SHAPES = [(4096, 1024, 1024), (4096, 2816, 1024), (32768, 2048, 2048), (32768, 6144, 2048), (8192, 11008, 2048),
          (16384, 14336, 4096)]


def sm_clock() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception as exc:  # diagnostic only
        return f"? ({exc})"


def main(out: str) -> None:
    dev = "cuda"
    buf = torch.randn(64 * 2**20, device=dev)  # 256 MiB fp32
    rows = []
    for m, n, k in SHAPES:
        A = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        B = torch.randn(k, n, device=dev, dtype=torch.bfloat16)
        C = torch.empty(m, n, device=dev, dtype=torch.bfloat16)
        for pattern in ("isolated", "back2back", "interleaved", "isolated"):
            evs = []
            torch.cuda.synchronize()
            for i in range(60):
                if pattern == "interleaved":
                    buf.mul_(1.0000001)
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record()
                torch.mm(A, B, out=C)
                e1.record()
                evs.append((e0, e1))
                if pattern == "isolated":
                    torch.cuda.synchronize()
            torch.cuda.synchronize()
            clock = sm_clock()
            ts = [a.elapsed_time(b) * 1e-3 for a, b in evs[10:]]
            t = statistics.median(ts)
            row = {"m": m, "n": n, "k": k, "pattern": pattern, "s": t, "tflops": 2 * m * n * k / t / 1e12,
                   "s_min": min(ts), "clock_after": clock}
            rows.append(row)
            print(json.dumps(row), flush=True)
        del A, B, C
    with open(out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
