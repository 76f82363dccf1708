"""Diagnostic (and a pageable host-copy check at the end): how the time of one causal flash-attention forward+backward depends on how the
backward is driven (torch only; run as a file on a GPU machine).

SCHEMA.md's sdpa_fwd_bwd record (b16 h16 s1024 d64, H100) took 865 us where this harness's
``torch.autograd.grad(o, (q, k, v), G)`` took 573-680 us on the same kind of card. This times the
usual ways of writing the step, each as an isolated call (sync, event, step, event; median):
  grad      autograd.grad with a given output gradient (the harness's way)
  backward  o.backward(G) into leaf .grad that accumulate (grads kept between calls)
  zero      as backward, with q/k/v.grad set to None before each call
  sum       o.sum().backward() (an expanded, non-contiguous output gradient), grads accumulate
  bshd      inputs laid out (b, s, h, d) and transposed to (b, h, s, d), as a model's projections give them
  fwd       forward only, no grad (for reference)
"""
import json
import statistics
import sys

import torch
import torch.nn.functional as F


def timed(fn, reps=30, warm=5):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    return statistics.median(ts)


def main(out):
    dev, dt = "cuda", torch.bfloat16
    rows = []
    for (b, h, s, d) in [(16, 16, 1024, 64), (8, 32, 1024, 128), (4, 16, 4096, 64), (2, 32, 4096, 128)]:
        q, k, v = (torch.randn(b, h, s, d, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
        G = torch.randn(b, h, s, d, device=dev, dtype=dt)
        qs, ks, vs = (torch.randn(b, s, h, d, device=dev, dtype=dt, requires_grad=True) for _ in range(3))

        def grad():
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            torch.autograd.grad(o, (q, k, v), G)

        def backward():
            F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(G)

        def zero():
            q.grad = k.grad = v.grad = None
            F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(G)

        def summ():
            F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

        def bshd():
            o = F.scaled_dot_product_attention(qs.transpose(1, 2), ks.transpose(1, 2), vs.transpose(1, 2), is_causal=True)
            o.transpose(1, 2).backward(G.transpose(1, 2))

        def fwd():
            with torch.no_grad():
                F.scaled_dot_product_attention(q, k, v, is_causal=True)

        for name, fn in [("fwd", fwd), ("grad", grad), ("backward", backward), ("zero", zero), ("sum", summ), ("bshd", bshd)]:
            t = timed(fn)
            fl = 4 * b * h * s * s * d / 2 * (3.5 if name != "fwd" else 1.0)
            rows.append({"b": b, "h": h, "s": s, "d": d, "variant": name, "s_time": t, "tflops": fl / t / 1e12})
            print(json.dumps(rows[-1]), flush=True)
    # Pageable host-to-device copies of 1 GiB (SCHEMA.md: 16.8 GB/s on the public H100 host; this
    # harness reuses one host buffer): reused buffer, a buffer first-touched just before, a fresh one.
    nb = 2**30
    dev_t = torch.empty(nb, dtype=torch.uint8, device=dev)
    host = torch.randint(0, 255, (nb,), dtype=torch.uint8)
    for name in ("reused", "touched", "fresh"):
        ts = []
        for _ in range(5):
            if name == "fresh":
                h = torch.empty(nb, dtype=torch.uint8)
            elif name == "touched":
                h = torch.empty(nb, dtype=torch.uint8)
                h.fill_(1)
            else:
                h = host
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            dev_t.copy_(h)
            b.record()
            torch.cuda.synchronize()
            ts.append(a.elapsed_time(b) / 1e3)
        t = statistics.median(ts)
        rows.append({"op": "h2d_pageable", "variant": name, "bytes": nb, "s": t, "gbps": nb / t / 1e9})
        print(json.dumps(rows[-1]), flush=True)
    with open(out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
