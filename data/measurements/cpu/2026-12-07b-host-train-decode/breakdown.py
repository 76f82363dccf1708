"""Where measure.py's numpy decode step spends its time: the same step with the thread's CPU time
summed over the weight matrix-vector products, over attention (scores, softmax, weighted sum) and
the rest (norms, rotary, cache writes, SiLU, residuals, Python). Run as measure.py is:

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 taskset -c 1 python breakdown.py
"""
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import measure  # noqa: E402
torch.manual_seed(0)
m = measure.Model(**measure.CFG)
CFG = measure.CFG
W = [{k: getattr(b, k).weight.detach().numpy().T.copy() for k in ("q", "k", "v", "o", "gate", "up", "down")}
     | {"n1": b.n1.weight.detach().numpy().copy(), "n2": b.n2.weight.detach().numpy().copy()} for b in m.blocks]
emb = m.emb.weight.detach().numpy().copy()
head = m.head.weight.detach().numpy().T.copy()
norm = m.norm.weight.detach().numpy().copy()
heads, d = CFG["heads"], CFG["hidden"] // CFG["heads"]
context_len = 256
rng = np.random.default_rng(0)
K = [rng.standard_normal((heads, context_len, d), dtype=np.float32) for _ in W]
V = [rng.standard_normal((heads, context_len, d), dtype=np.float32) for _ in W]
pos = context_len - 1
cos, sin = m.cos[pos].numpy(), m.sin[pos].numpy()
T = time.thread_time
acc = {"mm": 0.0, "att": 0.0}
def rms(x, w):
    return x * (1.0 / np.sqrt(np.mean(x * x) + 1e-6)) * w
def rope(x):
    h = d // 2
    return x * cos + np.concatenate((-x[:, h:], x[:, :h]), axis=1) * sin
def mm(a, b):
    t = T(); r = a @ b; acc["mm"] += T() - t; return r
def step(tok=7):
    x = emb[tok][None, :]
    for w, kc, vc in zip(W, K, V):
        y = rms(x, w["n1"])
        q = rope(mm(y, w["q"]).reshape(heads, d))
        kc[:, pos] = rope(mm(y, w["k"]).reshape(heads, d))
        vc[:, pos] = mm(y, w["v"]).reshape(heads, d)
        t = T()
        s = np.matmul(kc, q[:, :, None])[:, :, 0] * (1.0 / math.sqrt(d))
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        a = np.matmul(p[:, None, :], vc)[:, 0, :]
        acc["att"] += T() - t
        x = x + mm(a.reshape(1, -1), w["o"])
        y = rms(x, w["n2"])
        g = mm(y, w["gate"])
        x = x + mm((g / (1.0 + np.exp(-g))) * mm(y, w["up"]), w["down"])
    return int(np.argmax(mm(rms(x, norm), head)))
for _ in range(10): step()
tot = []; mms = []; atts = []
for _ in range(200):
    acc["mm"] = acc["att"] = 0.0
    t = T(); step(); tot.append(T() - t); mms.append(acc["mm"]); atts.append(acc["att"])
print("step %.3f ms, matmuls %.3f ms, attention %.3f ms, rest %.3f ms" % tuple(1e3 * statistics.median(v) for v in (tot, mms, atts, [a - b - c for a, b, c in zip(tot, mms, atts)])))
