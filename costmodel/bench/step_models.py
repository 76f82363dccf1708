"""Models for costmodel/bench/train_step.py: Hugging Face transformers models built from a case's
model spec (SCHEMA.md fields), the record's `model` field, exact parameter counts, and the
helpers of the hand-written decode step. Standalone like train_step.py."""
from __future__ import annotations

import contextlib
import warnings

import torch


ARCH_FIELDS = {
    # mlp / norm / positions as SCHEMA.md names them per architecture
    "llama": {"mlp": "swiglu", "norm": "rmsnorm", "positions": "rope"},
    "qwen2": {"mlp": "swiglu", "norm": "rmsnorm", "positions": "rope", "qkv_bias": True},
    "gpt2": {"mlp": "gelu", "norm": "layernorm", "positions": "learned", "bias": True},
    "mixtral": {"mlp": "swiglu", "norm": "rmsnorm", "positions": "rope"},
}


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


def decode_params(spec: dict) -> int:
    """Parameter count of the llama decode model (equal to LlamaForCausalLM's)."""
    L, h, H, F, V = spec["layers"], spec["hidden"], spec["heads"], spec["ffn"], spec["vocab"]
    KV, d = spec.get("kv_heads", H), h // H
    per_layer = 2 * h + (H + 2 * KV) * d * h + H * d * h + 3 * h * F
    return V * h * (1 if spec.get("tied_embeddings", False) else 2) + h + L * per_layer


def rms_norm(x, w, eps=1e-5):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w
