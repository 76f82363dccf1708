#!/usr/bin/env python3
"""Measure LLM training steps and decode steps on a GPU, writing truth records.

Standalone: imports only torch, transformers, numpy and the standard library, so that it runs on
a GPU machine that has no pydantic. Run it as a file path there (the package ``costmodel``'s
``__init__`` imports pydantic):

    python3 costmodel/bench/train_step.py --config CASES.json --out OUT.jsonl
    torchrun --nproc_per_node 2 costmodel/bench/train_step.py --config CASES.json --out OUT.jsonl

``python3 -m costmodel.bench.train_step`` works too where costmodel's own dependencies are installed.

Records follow shared/truth/SCHEMA.md (kinds ``train``, ``decode_step`` and ``infer``). Beside OUT.jsonl the
script writes OUT.diag.jsonl (one line per case: the case as given, every step time, memory at
each stage, errors, comparison with ``expect`` values) and OUT.env.json (versions, driver, GPU).

Method for ``train`` (one optimizer step of a decoder LM with next-token cross-entropy):
  * model built from a transformers config (LlamaForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel,
    MixtralForCausalLM) with attn_implementation="sdpa", no dropout, use_cache=False, directly on
    the GPU (``with torch.device("cuda")``), in fp32 for ``amp-bf16`` and in bf16 for ``bf16``;
  * ``weights_bytes`` = torch.cuda.memory_allocated() after building the model as it is trained:
    after ``fully_shard`` for FSDP, after the DDP wrapper for DDP (whose constructor allocates the
    gradient buckets, 4 bytes/param under amp); DDP records also keep the figure before the wrapper
    as ``weights_bytes_before_wrap``;
  * torch.optim.AdamW(fused=True), lr 1e-4; optimizer states take the parameters' dtype;
  * a step: forward under torch.autocast("cuda", bfloat16) with ``labels=input_ids`` (random
    token ids, HF shifts them: next-token CE over the whole sequence), ``loss.backward()``,
    ``optimizer.step()``, ``optimizer.zero_grad(set_to_none=True)``; by default the model's output
    object is dropped before backward (``--hold-outputs yes`` keeps it, with its logits, until the
    step ends; ``auto`` measures both on the cases that carry ``expect`` values and keeps the
    closer one for the rest);
  * recompute ``full``: model.gradient_checkpointing_enable(use_reentrant=False);
  * WARMUP steps (3), then ``steady_bytes`` = memory_allocated() (after zero_grad), then
    reset_peak_memory_stats(), one step, ``peak_bytes`` = max_memory_allocated(); then ITERS (10)
    steps each timed on the host clock between torch.cuda.synchronize() calls (plus a barrier before
    each under torchrun): ``step_seconds`` = their median;
  * several GPUs (torchrun): DDP (sharding ``none``, default bucket settings) or FSDP2
    ``fully_shard`` on every decoder layer and the root with
    MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32) (sharding ``full``); memory figures
    are rank 0's, step time is rank 0's median;
  * an out-of-memory error anywhere in a case gives ``"measured": {"oom": true}``.
All cases of one run share one process, as a sweep would: allocations that outlive a case
(cuBLAS workspaces held by the caching allocator) show in later cases' figures (the diag file
gives ``baseline_bytes``, memory allocated before the case's model was built).

Method for ``decode_step`` (llama-style models only): a hand-written bf16 decoder step with a static
KV cache of ``context_len`` positions (filled with random values; the new token is written at the
last position), fused QKV and gate/up projections, SDPA over the whole cache, final norm, LM head
and argmax, captured in one CUDA graph; ``step_seconds`` = median of CUDA-event timed replays,
``peak_bytes`` = max_memory_allocated over the whole case (weights, cache, capture, replays),
``kv_cache_bytes`` = the cache's size.

Config file (JSON):
  {"models": {"llama-1.3b": {"arch": "llama", "layers": 24, "hidden": 2048, "heads": 16,
                             "kv_heads": 16, "ffn": 5504, "vocab": 32000,
                             "tied_embeddings": false}, ...},
   "defaults": {"precision": "amp-bf16", "recompute": "none", ...},
   "cases": [{"kind": "train", "model": "llama-1.3b", "micro_batch": 4, "seq_len": 1024,
              "precision": "amp-bf16", "recompute": "none", "devices": 1, "sharding": "none",
              "expect": {"peak_bytes": ...}},
             {"kind": "decode_step", "model": "llama-1.3b", "batch": 8, "context_len": 2049}]}
Model fields: arch (llama | qwen2 | gpt2 | mixtral), layers, hidden, heads, kv_heads, ffn, vocab,
tied_embeddings, and moe_experts / moe_top_k for mixtral, max_positions for gpt2 (default 1024).
A case runs only where its ``devices`` (default 1) equals the number of processes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings

import numpy as np  # noqa: F401  (allowed dependency; kept for parity with the GPU image)
import torch
import transformers

WARMUP_STEPS = 3
TIMED_STEPS = 10
DECODE_WARMUP_REPLAYS = 5
DECODE_TIMED_REPLAYS = 30

ARCH_FIELDS = {
    # mlp / norm / positions as SCHEMA.md names them per architecture
    "llama": {"mlp": "swiglu", "norm": "rmsnorm", "positions": "rope"},
    "qwen2": {"mlp": "swiglu", "norm": "rmsnorm", "positions": "rope", "qkv_bias": True},
    "gpt2": {"mlp": "gelu", "norm": "layernorm", "positions": "learned", "bias": True},
    "mixtral": {"mlp": "swiglu", "norm": "rmsnorm", "positions": "rope"},
}


# ----------------------------------------------------------------------------- device helpers


class Dev:
    """Device-dependent calls, so that the logic can be exercised on a CPU."""

    def __init__(self, kind: str, local_rank: int):
        self.kind = kind
        if kind == "cuda":
            torch.cuda.set_device(local_rank)
            self.device = torch.device("cuda", local_rank)
        else:
            self.device = torch.device("cpu")

    def sync(self):
        if self.kind == "cuda":
            torch.cuda.synchronize()

    def allocated(self) -> int:
        return int(torch.cuda.memory_allocated()) if self.kind == "cuda" else 0

    def peak(self) -> int:
        return int(torch.cuda.max_memory_allocated()) if self.kind == "cuda" else 0

    def reset_peak(self):
        if self.kind == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def empty_cache(self):
        gc.collect()
        if self.kind == "cuda":
            torch.cuda.empty_cache()

    def autocast(self, dtype=None):
        return torch.autocast(self.kind, dtype=dtype or torch.bfloat16)


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    msg = str(exc)
    return "out of memory" in msg.lower() or "CUDA_ERROR_OUT_OF_MEMORY" in msg


def hardware_id(dev: Dev) -> str:
    if dev.kind != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name()
    if "H200" in name:
        return "h200-sxm"
    if "H100" in name:
        return "h100-pcie" if "PCIe" in name else "h100-sxm"
    # ROCm builds run torch.cuda on HIP: 'AMD Instinct MI250X' is one GCD (the per-GCD mi250x spec)
    if "MI300X" in name:
        return "mi300x"
    if "MI250X" in name:
        return "mi250x"
    return name.lower().replace(" ", "-")


def environment(dev: Dev, world: int) -> dict:
    env = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "hip_runtime": getattr(torch.version, "hip", None),  # set on ROCm builds (torch.cuda runs on HIP)
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "world_size": world,
        "host": platform.node(),
        "kernel": platform.release(),
        "env_NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE"),
    }
    if dev.kind == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_count"] = torch.cuda.device_count()
        props = torch.cuda.get_device_properties(0)
        env["gpu_total_memory_bytes"] = int(props.total_memory)
        env["sm_count"] = props.multi_processor_count
        env["cudnn"] = torch.backends.cudnn.version()
        try:
            v = torch.cuda.nccl.version()
            env["nccl"] = ".".join(str(x) for x in v) if isinstance(v, tuple) else str(v)
        except Exception as e:  # noqa: BLE001
            env["nccl"] = f"unknown ({e})"
        try:
            q = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            env["nvidia_smi"] = q.stdout.strip().splitlines()
            env["driver"] = q.stdout.strip().splitlines()[0].split(",")[1].strip()
        except Exception as e:  # noqa: BLE001
            env["driver"] = f"unknown ({e})"
    return env


def framework_string(extra: str = "") -> str:
    tv = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    hv = ".".join(transformers.__version__.split(".")[:2])
    s = f"pytorch-{tv} transformers-{hv} sdpa, fused AdamW"
    return s + (", " + extra if extra else "")


# ----------------------------------------------------------------------------- model building


# SCHEMA.md `attention`: flash = PyTorch SDPA (flash backend), standard = materialised scores
# (transformers' "eager" attention: QK^T, softmax in fp32, PV).
ATTN_IMPLEMENTATIONS = {"flash": "sdpa", "standard": "eager"}
_REGISTERED: set[str] = set()


def selective_attention(attention: str) -> str:
    """Register (once) and name a transformers attention function that checkpoints the attention
    core of ``attention`` (SCHEMA.md recompute ``selective``: only the attention core is recomputed
    in backward, Korthikanti et al. 2022 sec. 5), through transformers' AttentionInterface."""
    from torch.utils.checkpoint import checkpoint
    from transformers import AttentionInterface

    name = f"ckpt_{ATTN_IMPLEMENTATIONS[attention]}"
    if name in _REGISTERED:
        return name
    if attention == "flash":
        from transformers.integrations.sdpa_attention import sdpa_attention_forward as core
    else:
        from transformers.models.llama.modeling_llama import eager_attention_forward as core

    def wrapped(module, query, key, value, attention_mask, **kwargs):
        def run(q, k, v, m):
            return core(module, q, k, v, m, **kwargs)
        return checkpoint(run, query, key, value, attention_mask, use_reentrant=False)

    AttentionInterface.register(name, wrapped)
    # and the mask of the wrapped implementation: transformers builds no mask at all for a name its
    # AttentionMaskInterface does not know (eager attention would then run unmasked)
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    base = ATTN_IMPLEMENTATIONS[attention]
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    _REGISTERED.add(name)
    return name


def hf_model(spec: dict, seq_len: int, attention: str = "flash", recompute: str = "none"):
    """(model class, config) for a model spec."""
    arch = spec["arch"]
    impl = selective_attention(attention) if recompute == "selective" else ATTN_IMPLEMENTATIONS[attention]
    common = dict(attn_implementation=impl, use_cache=False,
                  tie_word_embeddings=bool(spec.get("tied_embeddings", arch == "gpt2")))
    if arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel
        n_pos = int(spec.get("max_positions", 1024))
        if seq_len > n_pos:
            raise ValueError(f"gpt2 seq_len {seq_len} > max_positions {n_pos}")
        ffn = spec.get("ffn", 4 * spec["hidden"])
        cfg = GPT2Config(vocab_size=spec["vocab"], n_positions=n_pos, n_embd=spec["hidden"],
                         n_layer=spec["layers"], n_head=spec["heads"], n_inner=ffn,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
        return GPT2LMHeadModel, cfg
    kw = dict(vocab_size=spec["vocab"], hidden_size=spec["hidden"], intermediate_size=spec["ffn"],
              num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"],
              num_key_value_heads=spec.get("kv_heads", spec["heads"]),
              max_position_embeddings=max(4096, seq_len), attention_dropout=0.0, **common)
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM
        return LlamaForCausalLM, LlamaConfig(rms_norm_eps=1e-5, **kw)
    if arch == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM
        return Qwen2ForCausalLM, Qwen2Config(rms_norm_eps=1e-6, use_sliding_window=False, **kw)
    if arch == "mixtral":
        from transformers import MixtralConfig, MixtralForCausalLM
        return MixtralForCausalLM, MixtralConfig(
            num_local_experts=spec["moe_experts"], num_experts_per_tok=spec["moe_top_k"],
            output_router_logits=False, rms_norm_eps=1e-5, **kw)
    raise ValueError(f"unknown arch {arch!r}")


def model_record(spec: dict, params: int) -> dict:
    arch = spec["arch"]
    rec = {
        "arch": arch, "layers": spec["layers"], "hidden": spec["hidden"], "heads": spec["heads"],
        "kv_heads": spec.get("kv_heads", spec["heads"]),
        "ffn": spec.get("ffn", 4 * spec["hidden"]), "vocab": spec["vocab"],
        "tied_embeddings": bool(spec.get("tied_embeddings", arch == "gpt2")), "params": int(params),
    }
    rec.update(ARCH_FIELDS[arch])
    if arch == "mixtral":
        rec["moe_experts"] = spec["moe_experts"]
        rec["moe_top_k"] = spec["moe_top_k"]
    return rec


@contextlib.contextmanager
def default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def decoder_layers(model):
    if hasattr(model, "model") and hasattr(model.model, "layers"):
        return list(model.model.layers)
    if hasattr(model, "transformer") and hasattr(model.transformer, "h"):
        return list(model.transformer.h)
    raise ValueError("cannot find decoder layers")


# ----------------------------------------------------------------------------- train case


def release(state: dict):
    """Free parameter, gradient and optimizer-state storage of a finished case.

    Deleting the Python objects is not enough after DDP: on the H200 pair (torch 2.11) the
    parameters of a DDP-wrapped model outlived ``del`` and ``gc.collect()`` until well into the
    next case, inflating that case's ``weights_bytes``; emptying the storages frees them whoever
    still holds the Parameter objects.
    """
    opt, model = state.pop("opt", None), state.pop("model", None)
    if opt is not None:
        opt.state.clear()
    if model is not None:
        for p in model.parameters():
            p.grad = None
            try:
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)
            except Exception:  # noqa: BLE001  (e.g. DTensor parameters under FSDP2)
                pass


def run_train(case: dict, spec: dict, dev: Dev, dist_info: dict, hold_outputs: bool, diag: dict):
    """The case's record; OOM and other errors propagate to the caller."""
    state: dict = {}
    try:
        return _train_body(case, spec, dev, dist_info, hold_outputs, diag, state)
    finally:
        release(state)


def _train_body(case, spec, dev, dist_info, hold_outputs, diag, state):
    world = dist_info["world"]
    precision = case.get("precision", "amp-bf16")
    recompute = case.get("recompute", "none")
    sharding = case.get("sharding", "none")
    mb, seq = int(case["micro_batch"]), int(case["seq_len"])
    warmup = int(case.get("warmup", WARMUP_STEPS))
    iters = int(case.get("iters", TIMED_STEPS))
    attention = case.get("attention", "flash")
    if precision not in ("amp-bf16", "amp-fp16", "bf16"):
        raise ValueError(f"precision {precision!r} not supported (amp-bf16, amp-fp16, bf16)")
    if recompute not in ("none", "selective", "full"):
        raise ValueError(f"recompute {recompute!r} not supported (none, selective, full)")
    if attention not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attention {attention!r} not supported (flash, standard)")

    cls, cfg = hf_model(spec, seq, attention, recompute)
    pdtype = torch.bfloat16 if precision == "bf16" else torch.float32
    # amp-fp16: fp16 autocast with dynamic loss scaling (torch.amp.GradScaler; with the fused
    # AdamW it unscales inside the optimizer kernel, after a non-finite check of every gradient)
    cast = torch.float16 if precision == "amp-fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler(dev.kind) if precision == "amp-fp16" else None
    # collect the previous case first: a DDP module's reducer (gradient buckets) sits in reference
    # cycles that outlive its case until the garbage collector runs (run 23x: 3.9 GiB still allocated
    # when an FSDP case after a DDP one started, counted in its weights_bytes)
    dev.empty_cache()
    diag["baseline_bytes"] = dev.allocated()
    if diag["baseline_bytes"] > 512 * 2**20:
        diag["warning"] = "more than 512 MiB allocated before the model was built: a leftover"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with dev.device, default_dtype(pdtype):
            model = cls(cfg)
    state["model"] = model
    model.train()
    params = sum(p.numel() for p in model.parameters())
    if case.get("experts_implementation"):
        model.set_experts_implementation(case["experts_implementation"])
    diag["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    diag["experts_implementation"] = getattr(model.config, "_experts_implementation", None)
    diag["param_dtypes"] = sorted({str(p.dtype) for p in model.parameters()})
    dev.sync()
    diag["after_build_bytes"] = dev.allocated()
    if recompute == "full":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    diag["gradient_checkpointing"] = bool(getattr(model, "is_gradient_checkpointing", False))

    extra = ""
    weights_bytes = dev.allocated()
    before_wrap = None  # DDP: weights_bytes_before_wrap, allocated before the wrapper
    if world > 1:
        if sharding == "none":
            from torch.nn.parallel import DistributedDataParallel as DDP
            model = DDP(model, device_ids=[dev.device.index] if dev.kind == "cuda" else None)
            extra = "DDP"
            # weights_bytes is the model as it is trained, so as wrapped (as the truth records read
            # it, and as FSDP's is read after fully_shard): the constructor has allocated DDP's
            # gradient buckets; the same read as diag["after_wrap_bytes"]
            dev.sync()
            before_wrap, weights_bytes = weights_bytes, dev.allocated()
        elif sharding == "full":
            try:
                from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
            except ImportError:  # older torch
                from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            for layer in decoder_layers(model):
                fully_shard(layer, mp_policy=mp)
            fully_shard(model, mp_policy=mp)
            dev.empty_cache()
            weights_bytes = dev.allocated()
            extra = "FSDP2 fully_shard (param bf16, reduce fp32)"
        else:
            raise ValueError(f"sharding {sharding!r} not supported (none, full)")
        dev.sync()
        diag["after_wrap_bytes"] = dev.allocated()

    try:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        diag["optimizer"] = "AdamW fused"
    except Exception as e:  # noqa: BLE001  (fused unsupported for this param type)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
        diag["optimizer"] = f"AdamW foreach (fused failed: {e})"
        extra = (extra + ", " if extra else "") + "foreach AdamW"
    state["opt"] = opt

    gen = torch.Generator(device="cpu").manual_seed(1234 + dist_info["rank"])
    ids = torch.randint(0, spec["vocab"], (mb, seq), generator=gen).to(dev.device)
    # SCHEMA.md global_batch: sequences per optimizer step over all ranks; more than micro_batch x
    # dp means gradient accumulation over `accum` micro-batches, the loss divided by accum. DDP
    # all-reduces on the last only (no_sync, as its docs recommend); FSDP2 reduce-scatters every
    # micro-batch (its default, and torchtitan's), unless the case sets "fsdp_sync": "last"
    # (set_requires_gradient_sync: unsharded gradients accumulate instead; run 23x measured so).
    gb = int(case.get("global_batch") or mb * world)
    if gb % (mb * world):
        raise ValueError(f"global_batch {gb} is not a multiple of micro_batch x dp = {mb * world}")
    accum = gb // (mb * world)
    diag["grad_accum"] = accum

    def micro(last: bool):
        sync = contextlib.nullcontext()
        if world > 1 and sharding == "none" and not last:
            sync = model.no_sync()
        elif world > 1 and sharding == "full" and case.get("fsdp_sync") == "last":
            model.set_requires_gradient_sync(last)
        with sync:
            with dev.autocast(cast):
                out = model(input_ids=ids, labels=ids)
            loss = out.loss if accum == 1 else out.loss / accum
            loss = loss if scaler is None else scaler.scale(loss)
            if not hold_outputs:
                del out
            loss.backward()

    def step():
        for i in range(accum):
            micro(i == accum - 1)
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()
        opt.zero_grad(set_to_none=True)

    barrier = dist_info["barrier"]
    for _ in range(warmup):
        step()
    dev.sync()
    barrier()
    steady = dev.allocated()
    dev.reset_peak()
    step()
    dev.sync()
    peak = dev.peak()
    times = []
    for _ in range(iters):
        barrier()
        dev.sync()
        t0 = time.perf_counter()
        step()
        dev.sync()
        times.append(time.perf_counter() - t0)
    diag["step_times_s"] = times
    diag["loss_last"] = None
    if case.get("profile"):
        diag["profile"] = profile_summary(step, dev)
    measured = {"weights_bytes": int(weights_bytes),
                **({"weights_bytes_before_wrap": int(before_wrap)} if before_wrap is not None else {}),
                "steady_bytes": int(steady),
                "peak_bytes": int(peak), "step_seconds": float(statistics.median(times))}
    rec = {
        "kind": "train",
        "name": case["name"],
        "model": model_record(spec, params),
        "hardware": dist_info["hardware"],
        "devices": world,
        "parallel": {"dp": world, "tp": 1, "pp": 1, "sharding": sharding},
        "micro_batch": mb,
        **({"global_batch": gb} if accum > 1 else {}),
        "seq_len": seq,
        "precision": precision,
        "optimizer": "adamw",
        "recompute": recompute,
        "attention": attention,
        "framework": framework_string(extra) + (", GradScaler" if scaler is not None else "")
        + (", gradients synchronised on the last micro-batch only" if accum > 1 and world > 1 and (
            sharding == "none" or case.get("fsdp_sync") == "last") else "")
        + (", eager attention" if attention == "standard" else ""),
        "measured": measured,
    }
    del opt, model, ids
    return rec


def train_skeleton(case, spec, dist_info):
    """Record fields known without building anything (used for OOM records)."""
    world = dist_info["world"]
    rec = {
        "kind": "train", "name": case["name"], "model": None, "hardware": dist_info["hardware"],
        "devices": world,
        "parallel": {"dp": world, "tp": 1, "pp": 1, "sharding": case.get("sharding", "none")},
        "micro_batch": int(case["micro_batch"]), "seq_len": int(case["seq_len"]),
        **({"global_batch": int(case["global_batch"])} if case.get("global_batch") else {}),
        "precision": case.get("precision", "amp-bf16"), "optimizer": "adamw",
        "recompute": case.get("recompute", "none"), "attention": case.get("attention", "flash"),
        "framework": framework_string({"none": "DDP", "full": "FSDP2 fully_shard (param bf16, reduce fp32)"}
                                      .get(case.get("sharding", "none"), "") if world > 1 else ""),
        "measured": {"oom": True},
    }
    return rec


def count_params(spec: dict, seq_len: int) -> int:
    """Exact parameter count, from a model built on the meta device."""
    cls, cfg = hf_model(spec, seq_len)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            m = cls(cfg)
    n = sum(p.numel() for p in m.parameters())
    del m
    return int(n)


# ----------------------------------------------------------------------------- decode case


def decode_params(spec: dict) -> int:
    """Parameter count of the llama decode model (equal to LlamaForCausalLM's)."""
    L, h, H, F, V = spec["layers"], spec["hidden"], spec["heads"], spec["ffn"], spec["vocab"]
    KV, d = spec.get("kv_heads", H), h // H
    per_layer = 2 * h + (H + 2 * KV) * d * h + H * d * h + 3 * h * F
    return V * h * (1 if spec.get("tied_embeddings", False) else 2) + h + L * per_layer


def rms_norm(x, w, eps=1e-5):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


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
    del g, nxt, kcache, vcache, layers, emb, head
    return rec


# ----------------------------------------------------------------------------- profile


def profile_summary(fn, dev: Dev, top: int = 40) -> dict:
    """One call of ``fn`` under torch.profiler: wall time, summed device-kernel time, CPU-op counts
    and the top operators by self device time and by self CPU time (diagnostic only)."""
    from torch.profiler import ProfilerActivity, profile
    dev.sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.kind == "cuda" else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        fn()
        dev.sync()
        wall = time.perf_counter() - t0
    ka = prof.key_averages()

    def dev_us(e):
        return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))

    rows = [{"op": e.key, "count": int(e.count), "self_device_us": dev_us(e),
             "self_cpu_us": float(e.self_cpu_time_total)} for e in ka]
    kernels = [e for e in prof.events() if str(getattr(e, "device_type", "")).endswith("CUDA")]
    return {
        "wall_s": wall,
        "device_self_us_total": sum(r["self_device_us"] for r in rows),
        "device_kernels": len(kernels),
        "cpu_ops": sum(r["count"] for r in rows if not r["op"].startswith("cuda")),
        "top_device": sorted(rows, key=lambda r: -r["self_device_us"])[:top],
        "top_cpu": sorted(rows, key=lambda r: -r["self_cpu_us"])[:top],
    }


# ----------------------------------------------------------------------------- infer case

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
    del model, out, ids
    return rec


def infer_record(case: dict, dist_info: dict, model: dict, measured: dict) -> dict:
    return {
        "kind": "infer", "name": case["name"], "hardware": dist_info["hardware"], "devices": 1,
        "batch": int(case["batch"]), "prompt_len": int(case["prompt_len"]),
        "gen_len": int(case.get("gen_len", INFER_GEN_LEN)), "weights_dtype": "bf16",
        "framework": framework_string().replace(", fused AdamW", "") + ", generate (greedy, DynamicCache)",
        "model": model, "measured": measured,
    }


# ----------------------------------------------------------------------------- driver


def case_name(case: dict, world: int) -> str:
    if case.get("name"):
        return case["name"]
    if case["kind"] == "decode_step":
        return f"{case['model']}/b{case['batch']}/ctx{case['context_len']}"
    if case["kind"] == "infer":
        return f"{case['model']}/infer/b{case['batch']}/p{case['prompt_len']}"
    par = ""
    if world > 1:
        par = f"/dp{world}-{'ddp' if case.get('sharding', 'none') == 'none' else 'fsdp'}"
    att = "/standard" if case.get("attention", "flash") == "standard" else ""
    gb = f"/gb{case['global_batch']}" if case.get("global_batch") else ""
    return (f"{case['model']}/{case.get('precision', 'amp-bf16')}{par}/b{case['micro_batch']}{gb}"
            f"/s{case['seq_len']}/{case.get('recompute', 'none')}{att}")


def compare(rec: dict, expect: dict) -> dict:
    out = {}
    meas = rec.get("measured", {})
    for k, v in expect.items():
        if k in meas and isinstance(v, (int, float)) and v:
            out[k] = {"measured": meas[k], "expected": v, "ratio": meas[k] / v}
    return out


class Writer:
    def __init__(self, out: str, rank: int):
        self.rank = rank
        base = out[:-len(".jsonl")] if out.endswith(".jsonl") else out
        self.out, self.diag, self.env = out, base + ".diag.jsonl", base + ".env.json"
        if rank == 0:
            d = os.path.dirname(os.path.abspath(out))
            os.makedirs(d, exist_ok=True)

    def _append(self, path, obj):
        if self.rank != 0:
            return
        with open(path, "a") as f:
            f.write(json.dumps(obj) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def record(self, rec):
        self._append(self.out, rec)

    def diagnostic(self, d):
        self._append(self.diag, d)

    def environment(self, env):
        if self.rank == 0:
            with open(self.env, "w") as f:
                json.dump(env, f, indent=1)


def run_case(case, spec, dev, dist_info, hold_outputs, writer, write_record=True):
    diag = {"name": case["name"], "case": case, "hold_outputs": hold_outputs}
    t0 = time.perf_counter()
    rec = None
    err = None
    try:
        if case["kind"] == "train":
            rec = run_train(case, spec, dev, dist_info, hold_outputs, diag)
        elif case["kind"] == "decode_step":
            rec = run_decode(case, spec, dev, dist_info, diag)
        elif case["kind"] == "infer":
            rec = run_infer(case, spec, dev, dist_info, diag)
        else:
            raise ValueError(f"unknown kind {case['kind']!r}")
    except Exception as e:  # noqa: BLE001
        if is_oom(e):
            err = "oom"
            diag["oom_message"] = str(e).splitlines()[0][:300]
        else:
            err = "error"
            diag["error"] = traceback.format_exc()[-3000:]
    # release everything the case left (traceback frames are gone once the except block ended)
    dev.empty_cache()
    if err == "oom":
        if case["kind"] == "train":
            rec = train_skeleton(case, spec, dist_info)
            try:
                rec["model"] = model_record(spec, count_params(spec, int(case["seq_len"])))
            except Exception as e:  # noqa: BLE001
                diag["param_count_error"] = str(e)
        elif case["kind"] == "infer":
            rec = infer_record(case, dist_info, model_record(spec, count_params(spec, int(case["prompt_len"]))),
                               {"oom": True})
        else:
            rec = {"kind": "decode_step", "name": case["name"], "hardware": dist_info["hardware"],
                   "devices": 1, "batch": int(case["batch"]), "context_len": int(case["context_len"]),
                   "weights_dtype": "bf16", "kv_dtype": "bf16",
                   "framework": framework_string().split(" transformers")[0]
                   + " static KV cache, whole step in one CUDA graph",
                   "model": model_record(spec, decode_params(spec)), "measured": {"oom": True}}
    diag["wall_s"] = time.perf_counter() - t0
    diag["after_case_bytes"] = dev.allocated()
    if rec is not None and case.get("expect"):
        diag["compare"] = compare(rec, case["expect"])
    if rec is not None and write_record:
        writer.record(rec)
    if rec is not None:
        diag["record"] = rec
    writer.diagnostic(diag)
    if dist_info["rank"] == 0:
        m = rec["measured"] if rec else {"error": True}
        short = " ".join(f"{k}={v / 2**30:.3f}GiB" if k.endswith("_bytes") else f"{k}={v:.4g}"
                         if isinstance(v, float) else f"{k}={v}" for k, v in m.items())
        print(f"[{diag['wall_s']:6.1f}s] {case['name']} hold={int(hold_outputs)}: {short}", flush=True)
        if err == "error":
            print(diag["error"], flush=True)
        for k, c in diag.get("compare", {}).items():
            print(f"      vs public {k}: measured {c['measured']} expected {c['expected']} "
                  f"ratio {c['ratio']:.4f}", flush=True)
    return rec, diag


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="JSON file: models, defaults, cases")
    ap.add_argument("--out", required=True, help="records are appended here (JSON lines)")
    ap.add_argument("--only", default=None, help="run only cases whose name contains this")
    ap.add_argument("--kinds", default="train,decode_step,infer", help="comma list of kinds to run")
    ap.add_argument("--hold-outputs", choices=["no", "yes", "auto"], default="no",
                    help="keep the forward's output object alive until the step ends")
    ap.add_argument("--hardware", default=None, help="override the hardware id")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cpu only to exercise the logic (memory figures read 0)")
    args = ap.parse_args(argv)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = Dev(args.device, local_rank)
    barrier = (lambda: None)
    if world > 1:
        import torch.distributed as dist
        backend = "nccl" if args.device == "cuda" else "gloo"
        kw = {"device_id": dev.device} if args.device == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=300), **kw)

        def barrier():
            dist.barrier()

    dist_info = {"world": world, "rank": rank, "barrier": barrier,
                 "hardware": args.hardware or hardware_id(dev)}
    writer = Writer(args.out, rank)
    env = environment(dev, world)
    env["argv"] = sys.argv
    writer.environment(env)
    if rank == 0:
        print(json.dumps(env), flush=True)

    with open(args.config) as f:
        config = json.load(f)
    models = config.get("models", {})
    defaults = config.get("defaults", {})
    kinds = set(args.kinds.split(","))
    cases = []
    for c in config["cases"]:
        case = dict(defaults)
        case.update(c)
        case.setdefault("kind", "train")
        if int(case.get("devices", 1)) != world or case["kind"] not in kinds:
            continue
        case["name"] = case_name(case, world)
        if args.only and args.only not in case["name"]:
            continue
        spec = case["model"] if isinstance(case["model"], dict) else models[case["model"]]
        cases.append((case, spec))

    hold = args.hold_outputs == "yes"
    if args.hold_outputs == "auto":
        refs = [(c, s) for c, s in cases if c.get("expect") and c["kind"] == "train"]
        err = {False: 0.0, True: 0.0}
        results = {}
        for c, s in refs:
            for h in (False, True):
                rec, _ = run_case(c, s, dev, dist_info, h, writer, write_record=False)
                results[(c["name"], h)] = rec
                if rec and "peak_bytes" in rec["measured"]:
                    for k in ("peak_bytes", "steady_bytes"):
                        if k in c["expect"]:
                            err[h] += abs(rec["measured"][k] / c["expect"][k] - 1.0)
        hold = err[True] < err[False]
        if rank == 0:
            print(f"auto hold-outputs: relative error sum no={err[False]:.4f} yes={err[True]:.4f}"
                  f" -> {'yes' if hold else 'no'}", flush=True)
        env["hold_outputs_auto"] = {"error_no": err[False], "error_yes": err[True], "chosen": hold}
        writer.environment(env)
        for c, s in refs:
            rec = results[(c["name"], hold)]
            if rec is not None:
                writer.record(rec)
        done = {c["name"] for c, _ in refs}
        cases = [(c, s) for c, s in cases if c["name"] not in done]

    for case, spec in cases:
        run_case(case, spec, dev, dist_info, hold, writer)

    if world > 1:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        print("done", flush=True)


if __name__ == "__main__":
    main()
