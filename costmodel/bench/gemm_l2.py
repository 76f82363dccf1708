"""Diagnostic: does an L2-resident activation speed a GEMM up? (torch only; run on a GPU machine.)

The harness rotates every operand through sets larger than L2, so caches never flatter a kernel.
Inside a training step or a prefill, a GEMM's activation input A was usually just written by the
previous (elementwise) kernel, while its weight B comes from HBM. For each bf16 shape this times
the GEMM alone (CUDA events around it, median of 30) three ways:
  rotate    A and B rotated through sets > L2 (the harness's way)
  act_hot   A rewritten in place by an elementwise kernel just before (as in a step), B rotated
  all_hot   the same A and B every call
and writes one JSON line per shape.

    python3 costmodel/bench/gemm_l2.py OUT.jsonl
"""
import json
import statistics
import sys

import torch

SHAPES = [(4096, 1024, 1024), (4096, 4096, 1024), (4096, 2816, 1024), (8192, 1024, 2816), (4096, 6144, 2048),
          (8192, 11008, 2048), (32768, 2048, 2048), (32768, 6144, 2048), (8192, 4096, 4096), (16384, 14336, 4096)]


def main(out: str) -> None:
    dev = "cuda"
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    rows = []
    for m, n, k in SHAPES:
        per = 2 * (m * k + k * n + m * n)
        ns = max(2, min(32, int(4 * l2 // per) + 2))
        A = [torch.randn(m, k, device=dev, dtype=torch.bfloat16) for _ in range(ns)]
        B = [torch.randn(k, n, device=dev, dtype=torch.bfloat16) for _ in range(ns)]
        C = torch.empty(m, n, device=dev, dtype=torch.bfloat16)
        res = {}
        for mode in ("rotate", "act_hot", "all_hot"):
            ts = []
            for i in range(40):
                j = i % ns
                a = A[0] if mode == "all_hot" else A[j]
                b = B[0] if mode == "all_hot" else B[j]
                if mode == "act_hot":
                    a.mul_(1.0)  # the previous kernel writes the activation
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record()
                torch.mm(a, b, out=C)
                e1.record()
                torch.cuda.synchronize()
                if i >= 10:
                    ts.append(e0.elapsed_time(e1) * 1e-3)
            res[mode] = statistics.median(ts)
        row = {"m": m, "n": n, "k": k, "sets": ns, "l2_bytes": l2, **{f"s_{k_}": v for k_, v in res.items()},
               "tflops": {k_: 2 * m * n * k / v / 1e12 for k_, v in res.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del A, B, C
        torch.cuda.empty_cache()
    with open(out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
