"""`decode_step` cases of costmodel/bench/train_step.py: a hand-written bf16 llama decode step with a
static KV cache, captured in one CUDA graph (method in train_step.py's docstring)."""
from __future__ import annotations

import statistics
import time

import torch

if __package__:
    from .step_device import Dev, framework_string
    from .step_models import decode_params, model_record, rms_norm
else:  # run from a file path (see train_step.py): this folder is on sys.path
    from step_device import Dev, framework_string
    from step_models import decode_params, model_record, rms_norm

DECODE_WARMUP_REPLAYS = 5
DECODE_TIMED_REPLAYS = 30


def run_decode(case: dict, spec: dict, dev: Dev, dist_info: dict, diag: dict):
    if spec["arch"] != "llama":
        raise ValueError("decode_step supports arch llama only")
    B, ctx = int(case["batch"]), int(case["context_len"])
    L, h, H = spec["layers"], spec["hidden"], spec["heads"]
    KV = spec.get("kv_heads", H)
    d = h // H
    F, V = spec["ffn"], spec["vocab"]
    tied = bool(spec.get("tied_embeddings", False))
    bf = torch.bfloat16
    cuda = dev.device
    dev.empty_cache()
    diag["baseline_bytes"] = dev.allocated()
    dev.reset_peak()
    torch.manual_seed(0)

    def w(*shape):
        return torch.empty(*shape, dtype=bf, device=cuda).normal_(0.0, 0.02)

    def ones(n):
        return torch.ones(n, dtype=bf, device=cuda)

    emb = w(V, h)
    layers = []
    for _ in range(L):
        layers.append({
            "ln1": ones(h), "wqkv": w((H + 2 * KV) * d, h), "wo": w(h, H * d),
            "ln2": ones(h), "wgu": w(2 * F, h), "wd": w(h, F),
        })
    lnf = ones(h)
    head = emb if tied else w(V, h)
    params = emb.numel() + (0 if tied else head.numel()) + lnf.numel() + sum(
        t.numel() for lay in layers for t in lay.values())
    if params != decode_params(spec):
        raise RuntimeError("decode parameter count mismatch")
    dev.sync()
    diag["after_weights_bytes"] = dev.allocated()
    kcache = [w(B, KV, ctx, d) for _ in range(L)]
    vcache = [w(B, KV, ctx, d) for _ in range(L)]
    kv_bytes = sum(t.numel() * t.element_size() for t in kcache + vcache)
    pos = ctx - 1
    inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, device=cuda, dtype=torch.float32) / d))
    ang = pos * inv
    cos = torch.cat([ang.cos(), ang.cos()]).to(bf)
    sin = torch.cat([ang.sin(), ang.sin()]).to(bf)
    tok = torch.randint(0, V, (B,), device=cuda)

    def rope(x):
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    def fwd():
        x = emb[tok]  # [B, h]
        for li, lay in enumerate(layers):
            a = rms_norm(x, lay["ln1"])
            qkv = a @ lay["wqkv"].t()
            q, k, v = qkv.split([H * d, KV * d, KV * d], dim=-1)
            q = rope(q.view(B, H, 1, d))
            k = rope(k.view(B, KV, 1, d))
            kcache[li][:, :, pos: pos + 1].copy_(k)
            vcache[li][:, :, pos: pos + 1].copy_(v.view(B, KV, 1, d))
            o = torch.nn.functional.scaled_dot_product_attention(
                q, kcache[li], vcache[li], enable_gqa=(KV != H))
            x = x + o.reshape(B, H * d) @ lay["wo"].t()
            m = rms_norm(x, lay["ln2"])
            g, u = (m @ lay["wgu"].t()).chunk(2, dim=-1)
            x = x + (torch.nn.functional.silu(g) * u) @ lay["wd"].t()
        logits = rms_norm(x, lnf) @ head.t()
        return logits.argmax(-1)

    if dev.kind != "cuda":  # logic check only: eager, host-timed
        times = []
        with torch.no_grad():
            for _ in range(3):
                t0 = time.perf_counter()
                nxt = fwd()
                times.append(time.perf_counter() - t0)
        g = None
    else:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s), torch.no_grad():
            for _ in range(3):
                fwd()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(g):
            nxt = fwd()
        for _ in range(DECODE_WARMUP_REPLAYS):
            g.replay()
        dev.sync()
        times = []
        for _ in range(DECODE_TIMED_REPLAYS):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            g.replay()
            e1.record()
            e1.synchronize()
            times.append(e0.elapsed_time(e1) / 1000.0)
    peak = dev.peak()
    diag["step_times_s"] = times
    diag["next_token_sample"] = nxt[:4].tolist()
    rec = {
        "kind": "decode_step", "name": case["name"], "hardware": dist_info["hardware"], "devices": 1,
        "batch": B, "context_len": ctx, "weights_dtype": "bf16", "kv_dtype": "bf16",
        "framework": framework_string().split(" transformers")[0]
        + " static KV cache, whole step in one CUDA graph",
        "model": model_record(spec, params),
        "measured": {"peak_bytes": int(peak), "step_seconds": float(statistics.median(times)),
                     "kv_cache_bytes": int(kv_bytes)},
    }
    return rec
