"""Fused-attention kernels against each other on this GPU (torch only; run as a file on a GPU machine).

PyTorch's scaled_dot_product_attention picks one of several kernels (``torch.nn.attention.SDPBackend``):
FLASH_ATTENTION (FlashAttention-2, bundled), CUDNN_ATTENTION (cuDNN's fused attention) and
EFFICIENT_ATTENTION (xFormers' memory-efficient kernel). Which one a framework runs changes its
attention time (FlashAttention-3, Shah et al. 2024, Fig. 5-6: FlashAttention-2 at ~0.6 of cuDNN on
H100 at head dim 128). This times each backend on the same inputs, forward alone and forward +
backward, causal and not, at head dims 64 and 128 over sequence lengths 512..32k with
batch x sequence = 16k tokens and heads x head dim = 2048 (the FlashAttention-3 paper's sizes),
bf16 on random data. Each time is the median of isolated calls (sync, event, call, event) after
warm-up, as SCHEMA.md's kernel records are (``backend: torch``: this harness, forward + backward
through ``torch.autograd.grad``); the records add ``sdpa_backend`` (the kernel), ``causal`` and
``sdpa_default`` (the kernel SDPA picks by itself for these inputs, found with the profiler).

    python -m costmodel.bench.sdpa_backends OUT.jsonl
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _default_backend(q, k, v, causal: bool) -> str:
    """The kernel SDPA chooses without a backend context, read from the profiler's kernel names."""
    import torch
    import torch.nn.functional as F

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        torch.cuda.synchronize()
    names = " ".join(e.name.lower() for e in prof.events())
    for key, label in (("cudnn", "cudnn"), ("flash", "flash"), ("fmha", "efficient"), ("efficient", "efficient"),
                       ("cutlass", "efficient")):
        if key in names:
            return label
    return "other"


def main(out_path: str, budget_s: float = 420.0) -> None:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file: the checkout's package
    from costmodel.bench.sdpa_variants import timed
    from costmodel.bench.torch_backend import hardware_id_from_name
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev, dt = "cuda", torch.bfloat16
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "cudnn": torch.backends.cudnn.version(), "cuda": torch.version.cuda}
    t0 = time.monotonic()
    with open(out_path.removesuffix(".jsonl") + "-env.json", "w") as f:
        json.dump(env, f)
    with open(out_path, "w") as out:
        for d in (128, 64):
            h = 2048 // d
            for s in (512, 1024, 2048, 4096, 8192, 16384, 32768):
                if time.monotonic() - t0 > budget_s:
                    break
                b = max(1, 16384 // s)
                q, k, v = (torch.randn(b, h, s, d, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
                g = torch.randn(b, h, s, d, device=dev, dtype=dt)
                for causal in (True, False):
                    with torch.no_grad():
                        default = _default_backend(q, k, v, causal)
                    flops = 4.0 * b * h * s * s * d / (2.0 if causal else 1.0)
                    for name, be in backends.items():
                        try:
                            with sdpa_kernel([be]):
                                def fwd(q=q, k=k, v=v, causal=causal):
                                    with torch.no_grad():
                                        F.scaled_dot_product_attention(q, k, v, is_causal=causal)

                                def fwd_bwd(q=q, k=k, v=v, g=g, causal=causal):
                                    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                                    torch.autograd.grad(o, (q, k, v), g)

                                reps = 20 if s <= 8192 else 8
                                tf = timed(fwd, reps, warm=3)
                                tfb = timed(fwd_bwd, reps, warm=3)
                        except RuntimeError as exc:  # backend not available for these inputs
                            print(json.dumps({"unavailable": name, "b": b, "h": h, "s": s, "d": d, "causal": causal,
                                              "error": str(exc).splitlines()[0][:200]}), file=sys.stderr)
                            continue
                        for op, t, f in (("sdpa_fwd", tf, flops), ("sdpa_fwd_bwd", tfb, 3.5 * flops)):
                            out.write(json.dumps({"kind": "kernel", "op": op, "b": b, "h": h, "s": s, "d": d,
                                                  "causal": causal, "backend": "torch", "sdpa_backend": name,
                                                  "sdpa_default": default,
                                                  "s_time": t, "tflops": f / t / 1e12,
                                                  "hardware": hardware_id_from_name(env["device"])}) + "\n")
                        out.flush()
                del q, k, v, g
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main(sys.argv[1])
