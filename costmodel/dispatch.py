"""Kernels an eager Hugging Face decoder layer launches per forward pass, counted from the
modules' code (transformers 5.17: modeling_llama / modeling_qwen2 / modeling_gpt2; PyTorch 2.11
autocast), and the host dispatch they imply relative to a Llama layer, the shape the eager host
constants of costmodel.inference were fitted on.

Eager PyTorch spends its host time per dispatched op (Python module calls, the dispatcher,
autograd nodes, the launch itself), so a layer of half the kernels costs about half the host
time. Profiles (torch.profiler, H100; data/measurements/h100-sxm/2026-11-23i-infer-train-profile/train-profile-h100.diag.jsonl and
infer-h100.diag.jsonl) count, per decoder layer:

| layer (amp training step: CPU ops, fwd+bwd) | count | kernels below |
| --- | --- | --- |
| llama (llama-110m, -350m, -1.3b) | 925-941 | 43 |
| qwen2 (q/k/v biases) | 984 | 46 |
| gpt2 (gpt2-124m, -350m; bias casts under autocast) | 550-556 | 25 |
| llama, pure bf16 vs amp (standard attention) | 962 vs 1074 (x 0.896) | 42 vs 49 |

and for one eager decode token (inference, bf16 weights): llama 193 CPU ops per layer (42
kernels), gpt2 95 (21), Mixtral 8 experts top-2 336.

The training profiles' device kernels per layer and step: gpt2-124m 88, llama-110m 151 (x 0.58;
forward kernels below 25 / 43 = 0.58). Training steps do not use the ratio yet: with the
training host model's negative intercept (costmodel.training.HOST_INTERCEPT_S) it under-predicts
gpt2-124m b2 s512 by 47%, and a refit moves the public file's llama steps from 7.0% to 9.1% mean
error (data/measurements/h100-sxm/2026-11-23ac-infer/README.md).

"""
from __future__ import annotations

from .arch import GATED, ModelConfig

# Kernels per module call, forward, read off the modules' code (and matched to the profiles'
# kernel counts: 42 per llama layer and 21 per gpt2 layer for one decode token).
RMSNORM_KERNELS = 7  # LlamaRMSNorm: to(fp32), pow, mean, + eps, rsqrt, mul, to(dtype) * weight
LAYERNORM_KERNELS = 1  # native_layer_norm
ROPE_KERNELS = 10  # apply_rotary_pos_emb on q and k: x * cos, rotate_half (neg, cat), * sin, add
SDPA_KERNELS = 1  # scaled_dot_product_attention (flash / cuDNN)
EAGER_ATTENTION_KERNELS = 7  # eager_attention_forward: q k^T, * scale, + mask, softmax, to, @ v, contiguous
RESIDUAL_KERNELS = 2  # the two residual adds
KV_CACHE_KERNELS = 2  # DynamicCache.update: torch.cat of k and of v (inference only)
ACTIVATION_KERNELS = {"swiglu": 2, "geglu": 2, "gelu_new": 8, "gelu": 1, "relu": 1, "squared-relu": 2}
# gelu_new (GPT-2's NewGELUActivation) op by op: pow, 3 scalar muls, 2 adds, tanh, mul.

# One eager decode token costs ~5.1 host ops per kernel with no fixed share (llama 193 / 38,
# gpt2 95 / 19 per layer, inference kernels below with the cache update), so a layer's host time
# scales with its kernel count. Measured on both H200 machine kinds (infer-h200.jsonl,
# infer-h200x2host.jsonl: gpt2-350m and llama-1.3b, 24 layers each, hand-written decode loop
# 9.3 / 10.5 ms against 15.2 / 15.3 ms a token): gpt2's layer costs 0.49-0.53 of llama's once the
# per-call share is taken off, as counted. (The one H100 run, infer-h100.jsonl, times gpt2 layers
# like llama ones, but its repeats of one case differ by up to 35%.)
# A Hugging Face MoE layer launches more (Mixtral, 8 experts top-2: 336 CPU ops per decode layer,
# 1.74 x llama's), but the extra ops are index / view bookkeeping: measured eager decode time per
# MoE layer is 0.3-1.1 x a llama layer's (mixtral-8x-small against llama, infer-h100.jsonl and
# infer-h200*.jsonl). So an MoE layer counts as a dense layer of the same attention here.


def layer_kernels(model: ModelConfig, *, autocast: bool, attention: str = "flash", kv_cache: bool = False) -> float:
    """Kernels one eager HF decoder layer launches in a forward pass (see the module docstring).
    ``autocast``: every linear's weight is cast to the compute dtype first (one kernel each, and
    one per bias). ``kv_cache``: a decode or prefill call appends k and v to the dynamic cache."""
    n = model.norms_per_layer * (RMSNORM_KERNELS if model.norm == "rmsnorm" else LAYERNORM_KERNELS)
    fused_qkv = model.bias  # GPT-2's c_attn: one Conv1D (addmm) for q, k and v
    qkv = 1 if fused_qkv else 3
    mlp_linears = 3 if model.activation in GATED else 2
    linears = qkv + 1 + mlp_linears
    n += linears
    if autocast:
        biases = (linears if model.bias else 0) + (3 if model.qkv_bias else 0)
        n += linears + biases
    n += ROPE_KERNELS if model.positions == "rope" else 0
    n += EAGER_ATTENTION_KERNELS if attention == "standard" else SDPA_KERNELS
    n += RESIDUAL_KERNELS
    n += ACTIVATION_KERNELS[model.activation]
    if kv_cache:
        n += KV_CACHE_KERNELS
    return float(n)


# The dense llama layer the host constants are expressed in (RMSNorm, rope, SwiGLU, no biases):
# its kernels per eager forward call with a KV cache.
_LLAMA_INFER_KERNELS = layer_kernels(ModelConfig(id="dispatch-reference", layers=1, hidden=64, heads=1, ffn=128, vocab=8),
                                     autocast=False, kv_cache=True)


def infer_dispatch_ratio(model: ModelConfig) -> float:
    """Host ops of one decoder layer of an eager HF forward call with a KV cache (bf16 weights, no
    autocast), relative to a llama layer's (MoE layers as dense ones: see above)."""
    return layer_kernels(model, autocast=False, kv_cache=True) / _LLAMA_INFER_KERNELS
