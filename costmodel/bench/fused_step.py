"""Training steps of a fused GPT / Llama decoder on one GPU (torch only; run as a file on a GPU machine).

Megatron-LM, NeMo and torchtitan run a decoder layer as a few fused kernels around the GEMMs and
the attention kernel. This times such a step on one device so that the fused-kernel step model
(the megatron / torchtitan profiles: costmodel.training with ``gemm_clock: sustained``) can be
checked where no framework is installed: each decoder block is ``torch.compile``d (Inductor fuses
the norms, bias + GELU / SwiGLU, residual adds and casts into Triton kernels), attention is SDPA
with its cuDNN kernel (what Transformer Engine picks on Hopper), the LM head's logits are cast to
fp32 and fed to ``F.cross_entropy`` inside a compiled function, and the optimizer is
``torch.optim.AdamW(fused=True)``. Parameters, gradients and optimizer states are bf16 (SCHEMA.md
precision ``bf16``); inputs are random token ids.

Per case: WARMUP steps (compilation happens there), then ITERS steps, each ``grad_accum``
micro-batches of forward + backward (gradients accumulated) and one optimizer step, timed between
``torch.cuda.synchronize()`` calls on the host clock; ``step_seconds`` is their median. PROFILED
more micro-batches run under the profiler and their CUDA kernels are summed by kind (GEMM,
attention, Triton-fused elementwise, other), per micro-batch, into the diagnostics file.

    python costmodel/bench/fused_step.py OUT.jsonl [--budget-s 480] [--large | --large-only] [--fp8]

``--fp8``: the decoder blocks' linear layers run as float8 GEMMs with dynamic tensor-wise scaling,
as torchao's Float8Linear (torchtitan's ``--model.converters float8``) does by default: per call
the input and the weight are scaled by their absolute maximum and cast to e4m3, the output
gradient to e5m2; ``torch._scaled_mm`` multiplies them (fast accumulation in forward only, as
torchao's default GEMM configs), with the transposed copies the backward's two GEMMs need made
inside the compiled block. The LM head stays bf16 (torchtitan filters the "output" module out).
Records say precision ``fp8``.

Records: SCHEMA.md ``train`` (devices 1, sharding none, framework ``torchtitan-compile``, ``fused_note``
saying what ran); OUT.diag.jsonl holds every step time, the kernel breakdown and any error;
OUT-env.json the versions.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

WARMUP, ITERS = 3, 8
PROFILED = 2  # micro-batches under the profiler (kernel sums are per micro-batch)

# (name, arch, layers, hidden, heads, kv_heads, ffn, vocab, seq, micro_batch, grad_accum)
CASES = [
    ("gpt-2048h", "gpt", 4, 2048, 16, 16, 8192, 131072, 4096, 1, 4),
    ("gpt-2048h", "gpt", 8, 2048, 16, 16, 8192, 131072, 4096, 1, 4),
    ("gpt-2048h", "gpt", 24, 2048, 16, 16, 8192, 131072, 4096, 1, 4),  # Megatron-LM's 1.7B (README table)
    ("gpt-4096h", "gpt", 16, 4096, 32, 32, 16384, 131072, 4096, 1, 4),  # half of its 7.1B
    ("gpt-2048h", "gpt", 4, 2048, 16, 16, 8192, 131072, 4096, 2, 2),
    ("gpt-4096h", "gpt", 2, 4096, 32, 32, 16384, 131072, 4096, 1, 4),
    ("gpt-4096h", "gpt", 4, 4096, 32, 32, 16384, 131072, 4096, 1, 4),
    ("llama-4096h", "llama", 2, 4096, 32, 8, 14336, 128256, 4096, 1, 4),
    ("llama-4096h", "llama", 4, 4096, 32, 8, 14336, 128256, 4096, 1, 4),
    ("gpt-6144h", "gpt", 2, 6144, 48, 48, 24576, 50257, 2048, 2, 4),
    ("llama-2048h", "llama", 8, 2048, 16, 16, 8192, 32000, 4096, 2, 4),
]
# --large: whole models that need more than 80 GB with bf16 Adam states (an H200)
LARGE = [
    ("llama-4096h", "llama", 32, 4096, 32, 8, 14336, 128256, 4096, 1, 4),  # Llama 3 8B
    ("llama-4096h", "llama", 32, 4096, 32, 8, 14336, 128256, 8192, 1, 2),
]


def fp8_linear():
    """(x, linear) -> linear(x) as a float8 GEMM with dynamic tensor-wise scales (module docstring)."""
    import torch

    e4m3, e5m2 = torch.float8_e4m3fn, torch.float8_e5m2

    def cast(t, dtype):
        top = torch.finfo(dtype).max
        scale = top / torch.clamp(t.abs().amax().float(), min=1e-12)
        return (t.float() * scale).clamp(-top, top).to(dtype), scale.reciprocal()

    class Fp8Matmul(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):  # x (M, K), w (N, K): x @ w.T
            xq, xs = cast(x, e4m3)
            wq, ws = cast(w, e4m3)
            ctx.save_for_backward(xq, xs, wq, ws)
            return torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16, use_fast_accum=True)

        @staticmethod
        def backward(ctx, go):
            xq, xs, wq, ws = ctx.saved_tensors
            gq, gs = cast(go.contiguous(), e5m2)
            dx = torch._scaled_mm(gq, wq.t().contiguous().t(), scale_a=gs, scale_b=ws, out_dtype=torch.bfloat16)
            dw = torch._scaled_mm(gq.t().contiguous(), xq.t().contiguous().t(), scale_a=gs, scale_b=xs,
                                  out_dtype=torch.bfloat16)
            return dx, dw

    def linear(x, mod):
        y = Fp8Matmul.apply(x.reshape(-1, x.shape[-1]), mod.weight).view(*x.shape[:-1], mod.weight.shape[0])
        return y if mod.bias is None else y + mod.bias

    return linear


def build(arch, layers, hidden, heads, kv_heads, ffn, vocab, fp8=False):
    import torch
    import torch.nn.functional as F
    from torch import nn

    hd = hidden // heads
    lin = fp8_linear() if fp8 else (lambda x, mod: mod(x))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            gpt = arch == "gpt"
            self.n1 = nn.LayerNorm(hidden) if gpt else nn.RMSNorm(hidden, eps=1e-5)
            self.n2 = nn.LayerNorm(hidden) if gpt else nn.RMSNorm(hidden, eps=1e-5)
            self.qkv = nn.Linear(hidden, (heads + 2 * kv_heads) * hd, bias=gpt)
            self.o = nn.Linear(hidden, hidden, bias=gpt)
            self.up = nn.Linear(hidden, ffn if gpt else 2 * ffn, bias=gpt)
            self.down = nn.Linear(ffn, hidden, bias=gpt)

        def forward(self, x, cos, sin):
            b, s, _ = x.shape
            q, k, v = lin(self.n1(x), self.qkv).split([heads * hd, kv_heads * hd, kv_heads * hd], dim=-1)
            q = q.view(b, s, heads, hd).transpose(1, 2)
            k = k.view(b, s, kv_heads, hd).transpose(1, 2)
            v = v.view(b, s, kv_heads, hd).transpose(1, 2)
            if arch == "llama":  # rotary, half-split
                def rot(t):
                    t1, t2 = t[..., : hd // 2], t[..., hd // 2:]
                    return t * cos + torch.cat([-t2, t1], dim=-1) * sin
                q, k = rot(q), rot(k)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kv_heads != heads)
            x = x + lin(a.transpose(1, 2).reshape(b, s, hidden), self.o)
            h = lin(self.n2(x), self.up)
            if arch == "gpt":
                h = F.gelu(h, approximate="tanh")
            else:
                g, u = h.chunk(2, dim=-1)
                h = F.silu(g) * u
            return x + lin(h, self.down)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(vocab, hidden)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.norm = nn.LayerNorm(hidden) if arch == "gpt" else nn.RMSNorm(hidden, eps=1e-5)
            self.head = nn.Linear(hidden, vocab, bias=False)

    m = Model()
    return m, hd


def run_case(case, out, diag, dev_name, fp8=False):
    import torch
    import torch.nn.functional as F

    name, arch, layers, hidden, heads, kv_heads, ffn, vocab, seq, mb, ga = case
    torch.manual_seed(0)
    torch.cuda.empty_cache()
    with torch.device("cuda"):
        model, hd = build(arch, layers, hidden, heads, kv_heads, ffn, vocab, fp8)
    model = model.to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    pos = torch.arange(seq, device="cuda", dtype=torch.float32)
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2, device="cuda", dtype=torch.float32) / hd))
    ang = torch.outer(pos, inv)
    cos = torch.cat([ang.cos(), ang.cos()], -1).to(torch.bfloat16)[None, None]
    sin = torch.cat([ang.sin(), ang.sin()], -1).to(torch.bfloat16)[None, None]
    block_fn = torch.compile(lambda blk, x, c, s: blk(x, c, s))  # one graph for every block (parameters as inputs)

    @torch.compile
    def loss_fn(x, labels):
        logits = model.head(model.norm(x)).float()
        return F.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1))

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, vocab, (mb, seq + 1), device="cuda")
    inp, labels = ids[:, :-1], ids[:, 1:]

    def micro():
        x = model.emb(inp)
        for b in model.blocks:
            x = block_fn(b, x, cos, sin)
        loss = loss_fn(x, labels)
        loss.backward()

    def step():
        for _ in range(ga):
            micro()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = []
    for i in range(WARMUP + ITERS):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        if i >= WARMUP:
            times.append(time.perf_counter() - t0)
    # one micro-batch under the profiler: kernel time by kind
    kinds = {"gemm": 0.0, "attention": 0.0, "triton": 0.0, "other": 0.0}
    torch.cuda.synchronize()
    time.sleep(0.2)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA], acc_events=True) as prof:
        for _ in range(PROFILED):
            micro()
        torch.cuda.synchronize()
    top = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None)
        if t is None:
            t = getattr(e, "cuda_time_total", 0.0)
        t = float(t) * 1e-6 / PROFILED
        if t <= 0:
            continue
        n = e.key.lower()
        if any(s in n for s in ("fmha", "flash", "sdpa", "attn", "attention")):
            k = "attention"
        elif any(s in n for s in ("gemm", "xmma", "cutlass", "nvjet", "s16816", "wgmma", "sm90_", "cublas")):
            k = "gemm"
        elif n.startswith("triton"):
            k = "triton"
        else:
            k = "other"
        kinds[k] += t
        top[e.key[:90]] = round(t, 6)
    opt.zero_grad(set_to_none=True)
    rec = {
        "kind": "train",
        "name": f"fused-{'fp8-' if fp8 else ''}{name}/{layers}L/mb{mb}-ga{ga}-s{seq}",
        "source": "costmodel/bench/fused_step.py (torch.compile'd decoder blocks, cuDNN SDPA, fused AdamW), this project",
        "model": {"arch": "llama" if arch == "llama" else "gpt", "layers": layers, "hidden": hidden, "heads": heads,
                  "kv_heads": kv_heads, "ffn": ffn, "vocab": vocab, "tied_embeddings": False,
                  "mlp": "swiglu" if arch == "llama" else "gelu", "norm": "rmsnorm" if arch == "llama" else "layernorm",
                  "positions": "rope" if arch == "llama" else "learned", "bias": arch == "gpt", "params": int(n_params)},
        "hardware": dev_name, "devices": 1,
        "parallel": {"dp": 1, "tp": 1, "pp": 1, "sharding": "none"},
        "micro_batch": mb, "global_batch": mb * ga, "seq_len": seq, "precision": "fp8" if fp8 else "bf16",
        "optimizer": "adam",
        "recompute": "none", "attention": "flash", "framework": "torchtitan-compile",
        "fused_note": "each decoder block torch.compile'd (Inductor: Triton-fused norms, activations, residuals), "
                      "SDPA (cuDNN fused attention where it takes the inputs), fp32 logits into F.cross_entropy compiled with the head, "
                      "AdamW(fused=True); bf16 parameters, gradients and states"
                      + ("; the blocks' linear layers as float8 GEMMs (torch._scaled_mm) with dynamic tensor-wise "
                         "scales, e4m3 inputs and weights, e5m2 output gradients, as torchao's Float8Linear; "
                         "the LM head bf16" if fp8 else ""),
        "measured": {"step_seconds": statistics.median(times)},
    }
    out.write(json.dumps(rec) + "\n")
    out.flush()
    diag.write(json.dumps({"name": rec["name"], "times": times, "micro_batch_kernels_s": kinds,
                           "top_kernels_s": dict(sorted(top.items(), key=lambda kv: -kv[1])[:25]),
                           "peak_bytes": torch.cuda.max_memory_allocated()}) + "\n")
    diag.flush()
    torch.cuda.reset_peak_memory_stats()


def main(argv=None):
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--budget-s", type=float, default=480.0)
    ap.add_argument("--large", action="store_true", help="also the whole-model cases of LARGE")
    ap.add_argument("--large-only", action="store_true", help="only the whole-model cases of LARGE")
    ap.add_argument("--fp8", action="store_true", help="the blocks' linear layers as float8 GEMMs (module docstring)")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from costmodel.bench.torch_backend import hardware_id_from_name

    # cuDNN's fused attention where it takes the inputs (SDPA prefers it on Hopper), FlashAttention-2
    # where it does not (the profiler's kernel names in the diagnostics say which ran)
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    torch.backends.cuda.enable_math_sdp(False)
    import torch._dynamo
    torch._dynamo.config.cache_size_limit = 64
    try:
        torch._dynamo.config.inline_inbuilt_nn_modules = True
    except AttributeError:
        pass
    dev_name = hardware_id_from_name(torch.cuda.get_device_name())
    stem = a.out.removesuffix(".jsonl")
    with open(stem + "-env.json", "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "cudnn": torch.backends.cudnn.version(), "cuda": torch.version.cuda}, f)
    t0 = time.monotonic()
    with open(a.out, "w") as out, open(stem + ".diag.jsonl", "w") as diag:
        for case in ([] if a.large_only else CASES) + (LARGE if a.large or a.large_only else []):
            if time.monotonic() - t0 > a.budget_s:
                diag.write(json.dumps({"skipped": list(case), "why": "time budget"}) + "\n")
                continue
            try:
                run_case(case, out, diag, dev_name, a.fp8)
            except Exception as exc:  # noqa: BLE001 - a case's failure is data, the run goes on
                diag.write(json.dumps({"case": list(case), "error": f"{type(exc).__name__}: {exc}"[:2000]}) + "\n")
                diag.flush()
                torch.cuda.empty_cache()
            print(f"{case[0]} L{case[2]} mb{case[9]}: {time.monotonic() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
