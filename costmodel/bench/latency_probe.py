"""Isolated-call latency of small kernels after different preconditions (GPU, torch).

    python3 -m costmodel.bench.latency_probe --out DIR

Why: isolated calls of host-bound kernels (a 512^3 GEMM, a 1 MiB reduction) took either ~20 us or
~31 us per burst in the 2026-11-23d/e/f runs, and the truth file's H100 host took ~31-35 us. Each
burst (3 warm-ups + 10 isolated calls, median) is taken after one precondition: nothing, an idle
sleep of 1/10/50 ms, 30 ms of a one-block spin kernel, or 30 ms of a heavy GEMM. Writes
latency-probe.json (every burst median and every call) and prints quartiles per precondition.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--bursts", type=int, default=30)
    a = p.parse_args(argv)
    dev = torch.device("cuda")
    A = torch.randn(512, 512, device=dev, dtype=torch.bfloat16)
    B = torch.randn(512, 512, device=dev, dtype=torch.bfloat16)
    C = torch.empty(512, 512, device=dev, dtype=torch.bfloat16)
    X = torch.randn(2**18, device=dev)
    H1 = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    H2 = torch.empty_like(H1)
    ops = {"gemm_bf16_512": lambda: torch.mm(A, B, out=C), "sum_1MiB": lambda: X.sum()}

    def heavy():
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.03:
            torch.mm(H1, H1, out=H2)
            torch.cuda.synchronize()

    pre = {
        "none": lambda: None,
        "idle_1ms": lambda: time.sleep(0.001),
        "idle_10ms": lambda: time.sleep(0.01),
        "idle_50ms": lambda: time.sleep(0.05),
        "spin_30ms": lambda: (torch.cuda._sleep(int(0.03 * 1.98e9)), torch.cuda.synchronize()),
        "heavy_30ms": heavy,
    }
    for f in ops.values():
        for _ in range(20):
            f()
    torch.cuda.synchronize()
    out = []
    for rnd in range(a.bursts):
        for pname, pf in pre.items():
            for oname, f in ops.items():
                pf()
                for _ in range(3):
                    f()
                calls = []
                for _ in range(10):
                    torch.cuda.synchronize()
                    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    h0 = time.perf_counter()
                    e0.record()
                    f()
                    e1.record()
                    torch.cuda.synchronize()
                    calls.append((e0.elapsed_time(e1) / 1e3, time.perf_counter() - h0))
                out.append({"round": rnd, "pre": pname, "op": oname, "event_s": [c[0] for c in calls], "host_s": [c[1] for c in calls],
                            "median_event_s": statistics.median(c[0] for c in calls)})
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "latency-probe.json").write_text(json.dumps(out) + "\n")
    for oname in ops:
        for pname in pre:
            ms = sorted(r["median_event_s"] * 1e6 for r in out if r["op"] == oname and r["pre"] == pname)
            q = [ms[int(i * (len(ms) - 1))] for i in (0, 0.25, 0.5, 0.75, 1)]
            print(f"{oname:14s} {pname:11s} burst medians us: " + " ".join(f"{x:6.1f}" for x in q))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
