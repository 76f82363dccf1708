"""One training step (PyTorch, fp32, eager) and one decode step (numpy, fp32) of a small Llama-style
model on the host CPU, written as SCHEMA.md train / decode_step records.

The model is written out here (no transformers): RMSNorm, rotary positions, q/k/v/o projections,
scaled_dot_product_attention (causal; PyTorch's CPU flash kernel), SwiGLU MLP, untied LM head,
cross-entropy over every position, fused AdamW. Decode: one new token per sequence with a static
KV cache of `context_len` positions (keys and values written in place), then the LM head and an
argmax, in numpy (numpy_decode). Run it pinned to one core, with one thread (the numpy calibration is run the same way):

    OMP_NUM_THREADS=1 taskset -c 1 python measure.py --out records.jsonl
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

CFG = dict(layers=8, hidden=512, heads=8, kv_heads=8, ffn=1536, vocab=8192)


class Block(torch.nn.Module):
    def __init__(self, h, heads, ffn):
        super().__init__()
        self.heads, self.d = heads, h // heads
        self.n1 = torch.nn.RMSNorm(h, eps=1e-6)
        self.n2 = torch.nn.RMSNorm(h, eps=1e-6)
        self.q = torch.nn.Linear(h, h, bias=False)
        self.k = torch.nn.Linear(h, h, bias=False)
        self.v = torch.nn.Linear(h, h, bias=False)
        self.o = torch.nn.Linear(h, h, bias=False)
        self.gate = torch.nn.Linear(h, ffn, bias=False)
        self.up = torch.nn.Linear(h, ffn, bias=False)
        self.down = torch.nn.Linear(ffn, h, bias=False)

    def _split(self, x):
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.d).transpose(1, 2)

    def forward(self, x, cos, sin, cache=None, pos=None):
        y = self.n1(x)
        q, k, v = self._split(self.q(y)), self._split(self.k(y)), self._split(self.v(y))
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if cache is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            kc, vc = cache
            kc[:, :, pos:pos + 1] = k
            vc[:, :, pos:pos + 1] = v
            a = F.scaled_dot_product_attention(q, kc[:, :, :pos + 1], vc[:, :, :pos + 1])
        b, _, s, _ = a.shape
        x = x + self.o(a.transpose(1, 2).reshape(b, s, -1))
        y = self.n2(x)
        return x + self.down(F.silu(self.gate(y)) * self.up(y))


def rope(x, cos, sin):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Model(torch.nn.Module):
    def __init__(self, layers, hidden, heads, kv_heads, ffn, vocab):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, hidden)
        self.blocks = torch.nn.ModuleList(Block(hidden, heads, ffn) for _ in range(layers))
        self.norm = torch.nn.RMSNorm(hidden, eps=1e-6)
        self.head = torch.nn.Linear(hidden, vocab, bias=False)
        d = hidden // heads
        inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
        t = torch.arange(8192).float()[:, None] * inv[None]
        emb = torch.cat((t, t), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, ids, caches=None, pos=None):
        x = self.emb(ids)
        s = ids.shape[1]
        if caches is None:
            cos, sin = self.cos[:s], self.sin[:s]
            for blk in self.blocks:
                x = blk(x, cos, sin)
        else:
            cos, sin = self.cos[pos:pos + 1], self.sin[pos:pos + 1]
            for blk, c in zip(self.blocks, caches):
                x = blk(x, cos, sin, c, pos)
        return self.head(self.norm(x))


def timed(fn, warmup, reps):
    """(wall seconds, thread CPU seconds) of ``reps`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(time.thread_time() - c)
        wall.append(time.perf_counter() - t)
    return wall, cpu


def rounds(fn, warmup, reps, n_rounds):
    """Per-round medians of ``reps`` timed calls, ``n_rounds`` rounds, as (wall, CPU) lists."""
    wall, cpu = [], []
    for i in range(n_rounds):
        w, c = timed(fn, warmup if i == 0 else 1, reps)
        wall.append(statistics.median(w))
        cpu.append(statistics.median(c))
    return wall, cpu


def measured(r):
    """The step's time on its core: the thread's CPU time (one thread does all the work), the
    fastest round's median. On this shared 2-core host other processes take the core for a large and
    changing share of the wall time (load average 3-6 while measured); the thread's CPU time counts
    only the time it ran, as the calibration's fastest round does. Wall times are kept beside it."""
    wall, cpu = r
    return dict(step_seconds=min(cpu), round_medians_cpu=cpu, round_medians_wall=wall,
                spread_cpu=max(cpu) / min(cpu) - 1, stat="thread CPU time, min over rounds of the round median")


def numpy_decode(m: Model, context_len: int, reps: int, n_rounds: int) -> list[float]:
    """Seconds of one decode step (batch 1) of the same model in numpy, fp32: per layer RMSNorm,
    q/k/v matrix-vector products, rotary on q and k, the new key and value written into a static
    cache of ``context_len`` positions, attention over the cache (scores, softmax, weighted sum),
    output projection, residual, RMSNorm, gate/up, SiLU x up, down, residual; then the final norm,
    the LM head and an argmax. Weights are the torch model's, transposed to (in, out) and contiguous."""
    W = [{k: getattr(b, k).weight.detach().numpy().T.copy() for k in ("q", "k", "v", "o", "gate", "up", "down")}
         | {"n1": b.n1.weight.detach().numpy().copy(), "n2": b.n2.weight.detach().numpy().copy()} for b in m.blocks]
    emb = m.emb.weight.detach().numpy().copy()
    head = m.head.weight.detach().numpy().T.copy()
    norm = m.norm.weight.detach().numpy().copy()
    heads, d = CFG["heads"], CFG["hidden"] // CFG["heads"]
    rng = np.random.default_rng(0)
    K = [rng.standard_normal((heads, context_len, d), dtype=np.float32) for _ in W]
    V = [rng.standard_normal((heads, context_len, d), dtype=np.float32) for _ in W]
    pos = context_len - 1
    cos, sin = m.cos[pos].numpy(), m.sin[pos].numpy()

    def rms(x, w):
        return x * (1.0 / np.sqrt(np.mean(x * x) + 1e-6)) * w

    def rope(x):  # (heads, d)
        h = d // 2
        return x * cos + np.concatenate((-x[:, h:], x[:, :h]), axis=1) * sin

    def step(tok=7):
        x = emb[tok][None, :]
        for w, kc, vc in zip(W, K, V):
            y = rms(x, w["n1"])
            q = rope((y @ w["q"]).reshape(heads, d))
            kc[:, pos] = rope((y @ w["k"]).reshape(heads, d))
            vc[:, pos] = (y @ w["v"]).reshape(heads, d)
            s = np.matmul(kc, q[:, :, None])[:, :, 0] * (1.0 / math.sqrt(d))  # (heads, ctx); a Python float keeps fp32
            p = np.exp(s - s.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            a = np.matmul(p[:, None, :], vc)[:, 0, :]  # (heads, d)
            x = x + a.reshape(1, -1) @ w["o"]
            y = rms(x, w["n2"])
            g = y @ w["gate"]
            x = x + ((g / (1.0 + np.exp(-g))) * (y @ w["up"])) @ w["down"]
        assert x.dtype == np.float32  # an np.float64 scalar would turn the step to fp64 (NEP 50)
        return int(np.argmax(rms(x, norm) @ head))

    return rounds(step, 10, reps, n_rounds)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--context-len", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5, help="timed training steps per round (decode: 20x)")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    torch.manual_seed(0)
    m = Model(**CFG)
    params = sum(p.numel() for p in m.parameters())
    model_rec = dict(arch="llama", **CFG, tied_embeddings=False, params=params)
    env = dict(torch=torch.__version__, threads=torch.get_num_threads(), python=platform.python_version(),
               cpu=platform.processor() or platform.machine(), affinity=sorted(os.sched_getaffinity(0)),
               blas="MKL" if "mkl" in torch.__config__.show().lower() else "?")
    try:
        env["cpu_model"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    out = []
    # training step
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, CFG["vocab"], (a.micro_batch, a.seq_len + 1))

    def step():
        logits = m(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, CFG["vocab"]), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    ts = rounds(step, 3, a.reps, a.rounds)
    out.append(dict(kind="train", name=f"cpu-host/llama-8L-512h/train-b{a.micro_batch}-s{a.seq_len}", model=model_rec,
                    hardware="cpu-epyc-9654", devices=1, parallel=dict(dp=1, tp=1, pp=1, sharding="none"),
                    micro_batch=a.micro_batch, seq_len=a.seq_len, precision="fp32", optimizer="adamw", recompute="none",
                    attention="flash", framework="pytorch",
                    measured=measured(ts), environment=env))
    # decode step, in numpy (the BLAS that `costmodel calibrate --backend numpy` measures): PyTorch's
    # MKL matrix-vector products ran at ~5 GB/s on this AMD host against OpenBLAS's ~20 GB/s
    ts = numpy_decode(m, a.context_len, a.reps * 20, a.rounds)
    out.append(dict(kind="decode_step", name=f"cpu-host/llama-8L-512h/decode-b1-ctx{a.context_len}", model=model_rec,
                    hardware="cpu-epyc-9654", devices=1, batch=1, context_len=a.context_len, weight_dtype="fp32",
                    kv_dtype="fp32", framework="numpy",
                    measured=measured(ts), environment=dict(env, numpy=np.__version__)))
    with open(a.out, "a") as f:
        for r in out:
            f.write(json.dumps(r) + "\n")
    for r in out:
        mm = r["measured"]
        print(r["name"], "%.4f s CPU (round medians CPU %s; wall %s)" % (
            mm["step_seconds"], " ".join("%.4f" % x for x in mm["round_medians_cpu"]),
            " ".join("%.4f" % x for x in mm["round_medians_wall"])))


if __name__ == "__main__":
    sys.exit(main())
