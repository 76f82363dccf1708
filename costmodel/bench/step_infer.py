"""`infer` cases of costmodel/bench/train_step.py: Hugging Face prefill and eager greedy
`generate()` with a dynamic KV cache (SCHEMA.md kind `infer`)."""
from __future__ import annotations

import statistics
import time
import warnings

import torch

if __package__:
    from .step_device import Dev, framework_string, profile_summary
    from .step_models import default_dtype, hf_model, model_record
else:  # run from a file path (see train_step.py): this folder is on sys.path
    from step_device import Dev, framework_string, profile_summary
    from step_models import default_dtype, hf_model, model_record

INFER_GEN_LEN = 128
INFER_REPEATS = 3


def run_infer(case: dict, spec: dict, dev: Dev, dist_info: dict, diag: dict):
    """HF prefill + eager greedy decode with a dynamic KV cache (SCHEMA.md kind ``infer``).

    Model in bf16 (``use_cache=True``, sdpa). ``prefill_seconds`` = median host-clock time (between
    synchronisations) of one forward over the prompt with a fresh DynamicCache and logits for the
    last position only; ``decode_seconds_per_token`` = (generate(gen_len) - generate(1)) /
    (gen_len - 1), medians of INFER_REPEATS greedy ``model.generate`` calls with min_new_tokens =
    max_new_tokens (no early stop); ``peak_bytes`` = max_memory_allocated over one generate(gen_len)
    call after the model was built (the first, which also warms the allocator; not timed);
    ``weights_bytes`` = allocated after building.
    The diag file keeps every time and a hand loop (forward per token, no host sync) for comparison.
    """
    B, P = int(case["batch"]), int(case["prompt_len"])
    G = int(case.get("gen_len", INFER_GEN_LEN))
    reps = int(case.get("repeats", INFER_REPEATS))
    cls, cfg = hf_model(spec, P + G)
    cfg.use_cache = True
    dev.empty_cache()
    diag["baseline_bytes"] = dev.allocated()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with dev.device, default_dtype(torch.bfloat16):
            model = cls(cfg)
    model.eval()
    if case.get("experts_implementation"):
        model.set_experts_implementation(case["experts_implementation"])
    diag["experts_implementation"] = getattr(model.config, "_experts_implementation", None)
    params = sum(p.numel() for p in model.parameters())
    dev.sync()
    weights = dev.allocated()
    gen = torch.Generator(device="cpu").manual_seed(4321)
    ids = torch.randint(0, spec["vocab"], (B, P), generator=gen).to(dev.device)
    mask = torch.ones_like(ids)
    from transformers import DynamicCache

    def timed(fn):
        dev.sync()
        t0 = time.perf_counter()
        out = fn()
        dev.sync()
        return time.perf_counter() - t0, out

    def prefill():
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask, past_key_values=DynamicCache(config=model.config),
                         use_cache=True, logits_to_keep=1)

    def generate(n):
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, use_cache=True, pad_token_id=0)

    def hand_loop():
        with torch.no_grad():
            out = prefill()
            cache = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            m = mask
            for _ in range(G - 1):
                m = torch.cat([m, torch.ones_like(nxt)], dim=1)
                out = model(input_ids=nxt, attention_mask=m, past_key_values=cache, use_cache=True, logits_to_keep=1)
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            return nxt

    # warm-up (kernels, cuBLAS handles, and the caching allocator's blocks for every cache size:
    # the first generate(G) of a process runs several times slower, growing the pool)
    prefill()
    dev.sync()
    dev.reset_peak()
    t_first, out = timed(lambda: generate(G))
    peak = dev.peak()
    if out.shape[1] != P + G:
        raise RuntimeError(f"generate returned {out.shape[1] - P} new tokens, expected {G}")
    t_pre = [timed(prefill)[0] for _ in range(max(reps, 5))]
    t_g1 = [timed(lambda: generate(1))[0] for _ in range(reps)]
    t_gn = [timed(lambda: generate(G))[0] for _ in range(reps)]
    t_hand = [timed(hand_loop)[0] for _ in range(max(1, reps - 1))]
    diag["generate_first_s"] = t_first
    if case.get("profile"):
        with torch.no_grad():
            o = prefill()
            cache, nxt = o.past_key_values, o.logits[:, -1].argmax(-1, keepdim=True)
            m1 = torch.cat([mask, torch.ones_like(nxt)], dim=1)
            model(input_ids=nxt, attention_mask=m1, past_key_values=cache, use_cache=True, logits_to_keep=1)
            m2 = torch.cat([m1, torch.ones_like(nxt)], dim=1)
            diag["profile_decode_token"] = profile_summary(
                lambda: model(input_ids=nxt, attention_mask=m2, past_key_values=cache, use_cache=True,
                              logits_to_keep=1), dev)
            diag["profile_prefill"] = profile_summary(prefill, dev)
        del o, cache
    med = statistics.median
    per_tok = (med(t_gn) - med(t_g1)) / (G - 1)
    diag.update({"prefill_times_s": t_pre, "generate1_times_s": t_g1, "generate_times_s": t_gn,
                 "hand_loop_times_s": t_hand,
                 "hand_loop_per_token_s": (med(t_hand) - med(t_pre)) / (G - 1),
                 "gen_len": G})
    rec = infer_record(case, dist_info, model_record(spec, params),
                       {"weights_bytes": int(weights), "peak_bytes": int(peak),
                        "prefill_seconds": float(med(t_pre)), "decode_seconds_per_token": float(per_tok)})
    return rec


def infer_record(case: dict, dist_info: dict, model: dict, measured: dict) -> dict:
    return {
        "kind": "infer", "name": case["name"], "hardware": dist_info["hardware"], "devices": 1,
        "batch": int(case["batch"]), "prompt_len": int(case["prompt_len"]),
        "gen_len": int(case.get("gen_len", INFER_GEN_LEN)), "weights_dtype": "bf16",
        "framework": framework_string().replace(", fused AdamW", "") + ", generate (greedy, DynamicCache)",
        "model": model, "measured": measured,
    }
