"""FLOP counts of a decoder-only transformer, per component, forward and backward.

Conventions
- A multiply-add is 2 FLOPs. Backward of a matmul costs twice its forward (grad of input and of
  weight), so training is 3x forward (Kaplan et al. 2020, sec. 2.1; the "6ND" rule).
- *Model* FLOPs (for MFU) count the work the model needs, with attention over the full s x s
  score matrix as in Megatron-LM (Narayanan et al. 2021, eq. 3) and PaLM (Chowdhery et al. 2022,
  appendix B: 6N + 12 L H Q T per token). No recompute.
- *Hardware* FLOPs (for HFU) add what recompute re-executes, and count causal attention as what a
  flash kernel executes (about half the score matrix, blocks above the diagonal are skipped).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .arch import GATED, ModelConfig


@dataclass(frozen=True)
class Gemm:
    """One matmul of a layer: (m x k) @ (k x n), `count` times (e.g. per expert)."""

    name: str
    m: float
    k: int
    n: int
    count: float = 1.0

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.k * self.n * self.count


def layer_gemms(model: ModelConfig, tokens: float, moe_layer: bool) -> list[Gemm]:
    """Forward matmuls of one decoder layer for `tokens` tokens (batch x sequence)."""
    h = model.hidden
    out: list[Gemm] = []
    if model.attention == "mla":
        m = model.mla
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        if m.q_lora_rank:
            out += [Gemm("q_down", tokens, h, m.q_lora_rank), Gemm("q_up", tokens, m.q_lora_rank, model.heads * qk)]
        else:
            out.append(Gemm("q", tokens, h, model.heads * qk))
        out.append(Gemm("kv_down", tokens, h, m.kv_lora_rank + m.qk_rope_head_dim))
        out.append(Gemm("kv_up", tokens, m.kv_lora_rank, model.heads * (m.qk_nope_head_dim + m.v_head_dim)))
        out.append(Gemm("attn_out", tokens, model.heads * m.v_head_dim, h))
    else:
        out.append(Gemm("qkv", tokens, h, model.q_dim + 2 * model.kv_dim))
        out.append(Gemm("attn_out", tokens, model.q_dim, h))
    mats_in = 2 if model.activation in GATED else 1
    if moe_layer and model.moe:
        moe = model.moe
        out.append(Gemm("router", tokens, h, moe.experts))
        routed = tokens * moe.top_k  # token-expert pairs
        out.append(Gemm("expert_in", routed / moe.experts, h, mats_in * moe.expert_ffn, count=moe.experts))
        out.append(Gemm("expert_out", routed / moe.experts, moe.expert_ffn, h, count=moe.experts))
        if moe.shared_experts:
            f = (moe.shared_expert_ffn or moe.expert_ffn) * moe.shared_experts
            out.append(Gemm("shared_in", tokens, h, mats_in * f))
            out.append(Gemm("shared_out", tokens, f, h))
    else:
        out.append(Gemm("mlp_in", tokens, h, mats_in * model.ffn))
        out.append(Gemm("mlp_out", tokens, model.ffn, h))
    return out


def attention_core_flops(model: ModelConfig, batch: float, seq: int, causal: bool, kv_len: int | None = None) -> float:
    """Forward FLOPs of scores (Q K^T) and weighted values (P V) for `batch` sequences.

    Full: 2 * b * s * kv * heads * (d_qk + d_v). Causal self-attention over s == kv executes about
    half (a flash kernel skips blocks above the diagonal): (s + 1) / (2 s) of it. A sliding window
    bounds kv at the window.
    """
    kv = kv_len if kv_len is not None else seq
    if model.sliding_window and model.sliding_window_every == 1:
        kv = min(kv, model.sliding_window)
    if model.attention == "mla":
        d_qk = model.mla.qk_nope_head_dim + model.mla.qk_rope_head_dim
        d_v = model.mla.v_head_dim
    else:
        d_qk = d_v = model.d_head
    full = 2.0 * batch * seq * kv * model.heads * (d_qk + d_v)
    if causal and kv_len is None:
        frac = (seq + 1) / (2.0 * seq) if kv == seq else 1.0 - (kv - 1) / (2.0 * seq)
        return full * frac
    return full


def lm_head_flops(model: ModelConfig, tokens: float) -> float:
    return 2.0 * tokens * model.hidden * model.vocab


@dataclass(frozen=True)
class TrainFlops:
    """FLOPs of one training step (all devices), forward+backward(+recompute)."""

    model_flops: float  # for MFU
    hardware_flops: float  # for HFU
    forward_flops: float  # one forward pass, hardware convention (causal attention)
    by_component: dict[str, float] = field(default_factory=dict)  # model FLOPs by component


def train_step_flops(model: ModelConfig, batch: float, seq: int, recompute: str = "none",
                     attention: str = "flash") -> TrainFlops:
    """FLOPs of forward + backward for `batch` sequences of length `seq`.

    Model FLOPs: 3 x forward, attention non-causal (Megatron-LM / PaLM convention).
    Hardware FLOPs: causal attention as executed (a flash kernel skips the masked half; ``standard``
    attention multiplies the whole s x s score matrix and masks it, Narayanan et al. 2021 eq. (3));
    recompute adds one more forward of the layers ("full") or of the attention core ("selective",
    Korthikanti et al. 2022 sec. 5).
    """
    tokens = batch * seq
    comp = {"attention_proj": 0.0, "attention_core": 0.0, "mlp": 0.0, "moe_router": 0.0, "lm_head": 0.0}
    layers_fwd_hw = 0.0
    core_full = attention_core_flops(model, batch, seq, causal=False)
    core_causal = core_full if attention == "standard" else attention_core_flops(model, batch, seq, causal=True)
    for moe_layer, n in ((False, model.dense_layers), (True, model.moe_layers)):
        if n == 0:
            continue
        for g in layer_gemms(model, tokens, moe_layer):
            key = "attention_proj" if g.name in ("qkv", "attn_out", "q", "q_down", "q_up", "kv_down", "kv_up") else (
                "moe_router" if g.name == "router" else "mlp")
            comp[key] += 3.0 * n * g.flops
            layers_fwd_hw += n * g.flops
    comp["attention_core"] = 3.0 * model.layers * core_full
    layers_fwd_hw += model.layers * core_causal
    comp["lm_head"] = 3.0 * lm_head_flops(model, tokens)
    model_flops = sum(comp.values())
    forward_hw = layers_fwd_hw + lm_head_flops(model, tokens)
    hardware = 3.0 * forward_hw
    if recompute == "full":
        hardware += layers_fwd_hw
    elif recompute == "selective":
        hardware += model.layers * core_causal
    return TrainFlops(model_flops=model_flops, hardware_flops=hardware, forward_flops=forward_hw, by_component=comp)


def megatron_flops_per_iteration(batch: float, seq: int, layers: int, hidden: int, vocab: int) -> float:
    """Narayanan et al. 2021, eq. (3): 96 B s l h^2 (1 + s/(6h) + V/(16 l h)), with full recompute
    (4 forward passes). Without recompute the same count is 3/4 of it (72 B s l h^2 (...))."""
    return 96.0 * batch * seq * layers * hidden**2 * (1.0 + seq / (6.0 * hidden) + vocab / (16.0 * layers * hidden))


def decode_flops_per_token(model: ModelConfig, context: int) -> float:
    """Forward FLOPs for one new token attending to `context` cached positions (active params)."""
    f = 0.0
    for moe_layer, n in ((False, model.dense_layers), (True, model.moe_layers)):
        if n:
            f += n * sum(g.flops for g in layer_gemms(model, 1, moe_layer))
    f += model.layers * attention_core_flops(model, 1, 1, causal=False, kv_len=context)
    return f + lm_head_flops(model, 1)
