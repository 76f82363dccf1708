"""FLOP counts of a decoder-only transformer, per component, forward and backward.

Conventions
- A multiply-add is 2 FLOPs. Backward of a matmul costs twice its forward (grad of input and of
  weight), so training is 3x forward (Kaplan et al. 2020, sec. 2.1; the "6ND" rule).
- One attention convention for both counts: attention over the full s x s score matrix, whatever
  a causal kernel skips, as in PaLM (Chowdhery et al. 2022, appendix B: 6N + 12 L H Q T per token)
  and Korthikanti et al. 2022 (appendix A; Megatron-LM's eq. 3, Narayanan et al. 2021, counts the
  same).
- *Model* FLOPs (for MFU) count the work the model needs: 3 x forward, no recompute.
- *Hardware* FLOPs (for HFU) are the model FLOPs plus what recompute re-executes (PaLM appendix B:
  "HFU adds rematerialisation"), so HFU >= MFU for every input and the two differ by recompute only.
  What a flash kernel actually executes for causal attention (about half the score matrix) is a
  matter of step time: the timing code counts it with ``attention_core_flops(causal=True)``.
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
    """Forward matmuls of one decoder layer for `tokens` tokens (batch x sequence). Remembered per
    model (frozen), token count and layer kind: an estimate asks for the same layer many times."""
    try:
        key = (id(model), type(tokens), tokens, moe_layer)
        hit = _LAYER_GEMMS.get(key)
    except TypeError:  # tokens not hashable (an array): computed
        return _layer_gemms(model, tokens, moe_layer)
    if hit is None or hit[0] is not model:
        if len(_LAYER_GEMMS) > 4096:
            _LAYER_GEMMS.clear()
        hit = _LAYER_GEMMS[key] = (model, _layer_gemms(model, tokens, moe_layer))
    return list(hit[1])


_LAYER_GEMMS: dict = {}  # (id(model), type(tokens), tokens, moe_layer) -> (model, [Gemm])


def _layer_gemms(model: ModelConfig, tokens: float, moe_layer: bool) -> list[Gemm]:
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


def every_other_matmul_flops(model: ModelConfig, tokens: float, moe_layer: bool) -> float:
    """Forward matmul FLOPs of one decoder layer that per-op selective activation checkpointing as
    torchtitan runs it re-executes in the backward: every op's output is saved but every second
    matmul's of a block, the count restarting in each block (torchtitan/distributed/activation_checkpoint.py
    at b5bcd76, SelectiveAC: "Save all compute/comm ops, except every second mm/linear"; the same policy in
    parallelize_llama.py's _save_list at 9dec370 and e7c0cae). A Llama block calls wq, wk, wv, wo, then
    w1, w3, w2 (w2(silu(w1(x)) * w3(x))), or w1, w2 without a gate: wk, wo and w3 (w2) re-run. A MoE
    layer's routed and shared experts (grouped matmuls) and an MLA layer's projections are counted as
    saved: only wk and wo are placed."""
    gated = model.activation in GATED
    out = 0.0
    for g in layer_gemms(model, tokens, moe_layer):
        if g.name == "qkv":  # wq, wk, wv as one matmul here: wk's share
            out += g.flops * model.kv_dim / (model.q_dim + 2 * model.kv_dim)
        elif g.name == "attn_out":
            out += g.flops
        elif g.name == "mlp_in" and gated:  # w1 and w3 as one matmul here: w3's half
            out += g.flops / 2.0
        elif g.name == "mlp_out" and not gated:
            out += g.flops
    return out


def every_other_matmul_share(model: ModelConfig) -> float:
    """every_other_matmul_flops over all of a layer's forward matmul FLOPs, the model's dense and MoE
    layers weighted by their counts: the share of a layer's forward GEMM time that per-op selective
    checkpointing re-runs (timed as that share of the GEMM time: the matmuls' shapes differ little in
    efficiency against the error of the rest)."""
    redo = total = 0.0
    for moe_layer, n in ((False, model.dense_layers), (True, model.moe_layers)):
        if n:
            redo += n * every_other_matmul_flops(model, 1.0, moe_layer)
            total += n * sum(g.flops for g in layer_gemms(model, 1.0, moe_layer))
    return redo / total if total > 0 else 0.0


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
    """FLOPs of one training step (all devices), forward+backward(+recompute), attention counted
    over the full score matrix in every field (the module's convention)."""

    model_flops: float  # for MFU
    hardware_flops: float  # for HFU: model_flops + recompute_flops
    forward_flops: float  # one forward pass
    by_component: dict[str, float] = field(default_factory=dict)  # model FLOPs by component
    recompute_flops: float = 0.0  # what recompute re-executes


def train_step_flops(model: ModelConfig, batch: float, seq: int, recompute: str = "none",
                     attention: str = "flash", recompute_fraction: float = 1.0,
                     selective: str = "attention-core") -> TrainFlops:
    """FLOPs of forward + backward for `batch` sequences of length `seq`.

    Model FLOPs: 3 x forward, attention over the full s x s score matrix (PaLM appendix B,
    Korthikanti et al. 2022 appendix A). Hardware FLOPs: the model FLOPs plus recompute, one more
    forward of the layers ("full") or of the attention core ("selective", Korthikanti et al. 2022
    sec. 5), in the same attention convention; ``selective`` "every-other-matmul": torchtitan's per-op
    selective checkpointing, every second matmul of a block instead (every_other_matmul_flops). ``attention`` (flash or standard) changes how long
    the scores take, not how they are counted, so it does not change either count.
    """
    tokens = batch * seq
    comp = {"attention_proj": 0.0, "attention_core": 0.0, "mlp": 0.0, "moe_router": 0.0, "lm_head": 0.0}
    layers_fwd = 0.0
    core = attention_core_flops(model, batch, seq, causal=False)
    for moe_layer, n in ((False, model.dense_layers), (True, model.moe_layers)):
        if n == 0:
            continue
        for g in layer_gemms(model, tokens, moe_layer):
            key = "attention_proj" if g.name in ("qkv", "attn_out", "q", "q_down", "q_up", "kv_down", "kv_up") else (
                "moe_router" if g.name == "router" else "mlp")
            comp[key] += 3.0 * n * g.flops
            layers_fwd += n * g.flops
    comp["attention_core"] = 3.0 * model.layers * core
    layers_fwd += model.layers * core
    comp["lm_head"] = 3.0 * lm_head_flops(model, tokens)
    model_flops = sum(comp.values())
    forward = layers_fwd + lm_head_flops(model, tokens)
    recompute_flops = 0.0
    if recompute == "full":
        recompute_flops = layers_fwd * recompute_fraction  # a partial policy re-runs part of it
    elif recompute == "selective" and selective == "every-other-matmul":
        recompute_flops = sum(n * every_other_matmul_flops(model, tokens, moe_layer)
                              for moe_layer, n in ((False, model.dense_layers), (True, model.moe_layers)) if n)
    elif recompute == "selective":
        recompute_flops = model.layers * core
    # model + a non-negative term: HFU >= MFU holds exactly, rounding included
    return TrainFlops(model_flops=model_flops, hardware_flops=model_flops + recompute_flops, forward_flops=forward,
                      by_component=comp, recompute_flops=recompute_flops)


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
