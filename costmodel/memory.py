"""Per-device memory of training and inference, broken down by what holds it.

Model states follow ZeRO's accounting (Rajbhandari et al. 2020, sec. 3: (2 + 2 + K) bytes per
parameter with K = 12 for mixed-precision Adam) under three framework semantics:

- ``pytorch``: what a plain PyTorch loop allocates (the measured truth's semantics): fp32
  parameters that double as master weights, fp32 .grad created in backward and freed by
  ``zero_grad(set_to_none=True)``, fused AdamW states in the parameter dtype, bf16 weight copies
  made by autocast. DDP adds gradient buckets; FSDP shards parameters, grads and states.
- ``megatron``: Megatron-LM (bf16 parameters, persistent fp32 main-grad buffer, fp32 master +
  Adam states; distributed optimizer = ZeRO-1): 18 bytes/param unsharded
  (megatron/training/theoretical_memory_usage.py), activations per Korthikanti et al. 2022.
- ``deepspeed``: the ZeRO paper's 2 + 2 + 12 bytes/param.

Activation terms are counted from the tensors each operator saves for backward; each term is a
named function so it can be checked against the paper or the framework source it comes from.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from . import fitted
from .arrays import maximum as _maximum, minimum as _minimum, where as _where
from .arch import GATED, ModelConfig
from .workload import DTYPE_BYTES, InferJob, Parallel, TrainJob

# cuBLAS/cuBLASLt workspaces the PyTorch caching allocator holds once forward and backward
# have run: one 32 MiB workspace per (handle, stream) on Hopper (PyTorch's default
# CUBLAS_WORKSPACE_CONFIG ":4096:8" = 8 x 4 MiB; c10/cuda/CUDABlasHandlePool.cpp), for the
# forward thread and the autograd thread, cuBLAS and cuBLASLt: 4 x 32 MiB.
CUBLAS_WORKSPACES_BYTES = 4 * 32 * 2**20
# Memory the CUDA context, kernels and the allocator's fragmentation take outside
# max_memory_allocated(); used only for the fits check and the serving engines' KV budget
# (data/fitted/memory.yaml: value, bounds and how each was measured).
CUDA_CONTEXT_BYTES = fitted.value("fitted/memory.yaml", "cuda_context_bytes")
FRAGMENTATION_FRACTION = fitted.value("fitted/memory.yaml", "fragmentation_fraction")


# The formulas below take a Parallel (Python ints) or a ParallelGrid (numpy arrays, one entry per
# candidate layout of a search), so one set of formulas serves one estimate and a million
# (costmodel.arrays).


@dataclass(frozen=True)
class ParallelGrid:
    """Many parallel layouts at once: the fields of :class:`Parallel` as equal-length arrays."""

    tp: np.ndarray
    pp: np.ndarray
    dp: np.ndarray
    cp: np.ndarray
    ep: np.ndarray
    sequence_parallel: np.ndarray
    zero_stage: np.ndarray
    interleave: np.ndarray
    etp: np.ndarray | None = None  # expert tensor parallel (Parallel.etp); None: tp

    @property
    def devices(self) -> np.ndarray:
        return self.tp * self.pp * self.dp * self.cp

    @property
    def expert_tp(self) -> np.ndarray:
        return self.tp if self.etp is None else self.etp


# ------------------------------------------------------------------------------ model states

@dataclass(frozen=True)
class StateBytesPerParam:
    weights: float
    grads: float
    optimizer: float  # optimizer moments
    master: float  # fp32 master copy where separate from the weights


def optimizer_state_bytes(optimizer: str, state_dtype_bytes: float, hidden: int) -> float:
    """Bytes of optimizer state per parameter.

    AdamW: two moments (Loshchilov & Hutter 2019); adamw-8bit: two 1-byte moments plus block
    scales (Dettmers et al. 2022, block 2048: +2*4/2048); SGD with momentum and Lion: one moment
    (Chen et al. 2023); Adafactor: factored second moment, rows + columns per matrix (Shazeer &
    Stern 2018), ~ 2 x 4 bytes / hidden per parameter for h x h-shaped matrices.
    """
    if optimizer == "adamw":
        return 2 * state_dtype_bytes
    if optimizer == "adamw-bf16":
        return 4.0
    if optimizer == "adamw-8bit":
        return 2.0 + 2 * 4.0 / 2048
    if optimizer in ("sgd", "lion"):
        return state_dtype_bytes
    if optimizer == "adafactor":
        return 2 * 4.0 / hidden
    raise ValueError(optimizer)


def state_bytes_per_param(job: TrainJob, hidden: int) -> StateBytesPerParam:
    key = (job.precision, job.framework, job.optimizer, hidden, job.grad_reduce_in_bf16)
    hit = _STATE_BYTES.get(key)
    if hit is None:
        if len(_STATE_BYTES) > 1024:
            _STATE_BYTES.clear()
        hit = _STATE_BYTES[key] = _state_bytes_per_param(job, hidden)
    return hit


_STATE_BYTES: dict = {}  # (precision, framework, optimizer, hidden, bf16 reduce) -> StateBytesPerParam (frozen)


def _state_bytes_per_param(job: TrainJob, hidden: int) -> StateBytesPerParam:
    p, fw = job.precision, job.framework
    if fw == "pytorch":
        if p in ("fp32", "amp-bf16", "amp-fp16"):
            return StateBytesPerParam(4.0, 4.0, optimizer_state_bytes(job.optimizer, 4.0, hidden), 0.0)
        if p == "bf16":  # everything bf16, AdamW states included (SCHEMA.md)
            return StateBytesPerParam(2.0, 2.0, optimizer_state_bytes(job.optimizer, 2.0, hidden), 0.0)
        # fp8 (Transformer Engine under PyTorch): fp32 master params, fp8 weight copy + scales
        return StateBytesPerParam(4.0 + 1.0, 4.0, optimizer_state_bytes(job.optimizer, 4.0, hidden), 0.0)
    if p == "fp32":
        return StateBytesPerParam(4.0, 4.0, optimizer_state_bytes(job.optimizer, 4.0, hidden), 0.0)
    w = 2.0 + (1.0 if p == "fp8" else 0.0)
    # Megatron accumulates into fp32 main_grad (bf16 under --grad-reduce-in-bf16)
    grads = 4.0 if fw == "megatron" and not job.grad_reduce_in_bf16 else 2.0
    return StateBytesPerParam(w, grads, optimizer_state_bytes(job.optimizer, 4.0, hidden), 4.0)


def model_state_bytes(params: float, job: TrainJob, par: Parallel, hidden: int = 4096) -> dict[str, float]:
    """Weights, gradients, optimizer states and master weights per device for `params`
    parameters on one model-parallel rank, sharded over data parallelism by ZeRO stage:
    stage 1 shards optimizer states (+ master), 2 also gradients, 3 also weights
    (Rajbhandari et al. 2020, fig. 1)."""
    st = state_bytes_per_param(job, hidden)
    n = par.dp * par.cp
    z = par.zero_stage
    return {
        "weights": st.weights * params / _where(z >= 3, n, 1),
        "grads": st.grads * params / _where(z >= 2, n, 1),
        "optimizer": st.optimizer * params / _where(z >= 1, n, 1),
        "master": st.master * params / _where(z >= 1, n, 1),
    }


@dataclass(frozen=True)
class StageParams:
    """Parameters held by the most loaded pipeline stage on one tensor-parallel rank."""

    total: float
    per_layer: float  # one decoder layer (MoE layer where there are any), per device
    layers: int  # decoder layers on the stage
    embedding: float  # input embedding (+ lm head when on the same stage) per device
    lm_head: float


def stage_params(model: ModelConfig, par) -> StageParams:
    """Split layers evenly over pp stages; the first stage also holds the input embedding and
    the last the LM head (Megatron-LM). Matmul weights and embeddings are split over tp, routed
    experts over ep and etp (Parallel.etp: tp unless set), norms are replicated.

    `par` is a :class:`Parallel` or a :class:`ParallelGrid` of numpy arrays (layout search)."""
    if type(par) is Parallel:  # one layout: once per model (frozen) and split
        key = (id(model), par.tp, par.pp, par.ep, par.expert_tp)
        hit = _STAGE_PARAMS.get(key)
        if hit is None or hit[0] is not model:
            if len(_STAGE_PARAMS) > 1024:
                _STAGE_PARAMS.clear()
            hit = _STAGE_PARAMS[key] = (model, _stage_params(model, par))
        return hit[1]
    return _stage_params(model, par)


_STAGE_PARAMS: dict = {}  # (id(model), tp, pp, ep, etp) -> (model, StageParams)


def _stage_params(model: ModelConfig, par) -> StageParams:
    tp = par.tp
    layers = -(-model.layers // par.pp)
    norm = model.norms_per_layer * model.norm_params()
    moe_layer = model.moe is not None and model.moe_layers > 0
    per_layer = (model.layer_params(moe_layer=moe_layer) - norm) / tp + norm
    if moe_layer:
        experts = model.moe.experts * model.expert_params()
        per_layer = per_layer - experts / tp + experts / (par.expert_tp * par.ep)
    emb = (model.vocab * model.hidden + (model.max_context * model.hidden if model.positions == "learned" else 0)) / tp
    head_split = model.vocab * model.hidden / tp
    single = par.pp == 1
    head = _where(single, 0.0 * head_split if model.tied_embeddings else head_split, head_split)
    total = _where(single, layers * per_layer + emb + head + model.norm_params(),
                   layers * per_layer + _maximum(emb, head + model.norm_params()))
    return StageParams(total=total, per_layer=per_layer, layers=layers, embedding=emb, lm_head=head)


# ------------------------------------------------------------------------------ activations

def pytorch_layer_activation_bytes(model: ModelConfig, tokens: float, precision: str) -> float:
    """Bytes one decoder layer saves for backward in eager PyTorch (Hugging Face Llama/GPT-2
    blocks), for `tokens` = micro-batch x sequence on one device, with flash SDPA.

    amp (fp32 residual stream, autocast bf16 matmuls), per token, h = hidden, r = kv_dim / h,
    f = ffn:
      RMSNorm x2: fp32 input + fp32 normalised tensor          2 x 8h
      q, k, v projections each cast their fp32 input to bf16   3 x 2h   (autocast does not cache
                                                                          activation casts)
      SDPA saves bf16 q (cast of the fp32 rotary output), k, v, output   2h + 4rh + 2h
      gate/up projections cast their input                     2 x 2h
      SwiGLU: gate, silu(gate), up, product (bf16)             4 x 2f
      GELU (fused): input, output 2 x 2f; "gelu_new" (HF GPT-2, op by op): input, tanh output,
        1 + tanh, 0.5 x, product                               5 x 2f (16f under amp: see below)
    pure bf16: norms save an fp32 copy of the input plus the bf16 normalised tensor (6h each),
    and q/k/v (gate/up) share one bf16 input.
    fp32: every saved tensor is 4 bytes.
    """
    h, f = model.hidden, model.ffn
    r = model.kv_dim / h
    q = model.q_dim / h
    gated = model.activation in GATED
    ln = model.norm == "layernorm"
    if precision in ("amp-bf16", "amp-fp16", "fp8"):
        norm = 8.0 if not ln else 4.0 + 2.0  # LayerNorm: fp32 input saved, output cast to bf16 once
        if model.family in ("gpt2", "gpt") or model.bias and not gated:
            attn_in = 2.0  # fused c_attn: one cast
        else:
            attn_in = 3 * 2.0 if not ln else 2.0
        sdpa = 2.0 * q + 4.0 * r + 2.0 * q
        mlp_in = (2 * 2.0 if gated else 2.0) if not ln else 2.0
        # gelu_new under autocast: pow is on autocast's fp32 list, so x^3 and everything after it
        # run in fp32: saved x (fp32 cast for pow, 4f), tanh output (4f), 0.5 x (bf16, 2f),
        # 1 + tanh (4f), and c_proj's bf16 cast of the fp32 product (2f) = 16f. Measured (GPT-2
        # 124M / 350M amp steps, data/measurements/h100-sxm/2026-11-23-train-steps/train-steps-h100.jsonl): 5.0-5.7 f-bytes per
        # token and layer above the 10f count. Not explained: pure-bf16 GPT-2 peaks ~ 7f above it.
        act = 8.0 * f if gated else (16.0 * f if model.activation == "gelu_new" else 4.0 * f)
        per_token = 2 * norm + attn_in + sdpa + mlp_in
        per_token = per_token * h + act
    elif precision == "bf16":
        norm = 6.0 if not ln else 2.0
        per_token = (2 * norm + 2.0 + 2.0 * q + 4.0 * r + 2.0 * q + 2.0) * h + (
            8.0 * f if gated else (10.0 * f if model.activation == "gelu_new" else 4.0 * f))
    else:  # fp32
        norm = 8.0 if not ln else 4.0
        per_token = (2 * norm + 4.0 + 4.0 * q + 8.0 * r + 4.0 * q + 4.0) * h + (
            16.0 * f if gated else (20.0 * f if model.activation == "gelu_new" else 8.0 * f))
    if model.moe:
        # Routed experts see top_k copies of each token: the MLP term scales with top_k and the
        # expert ffn; router logits and probabilities (fp32, experts per token) are saved too.
        act_moe = (8.0 if gated else 4.0) * model.moe.expert_ffn * model.moe.top_k
        shared = (8.0 if gated else 4.0) * (model.moe.shared_expert_ffn or model.moe.expert_ffn) * model.moe.shared_experts
        per_token += act_moe + shared - (8.0 * f if gated else 4.0 * f) + 8.0 * model.moe.experts + 2.0 * h * model.moe.top_k
    return tokens * per_token


def korthikanti_layer_activation_bytes(model: ModelConfig, micro_batch: int, seq: int, par: Parallel,
                                       recompute: str, flash: bool, dropout: bool = False) -> float:
    """Korthikanti et al. 2022 (arXiv:2205.05198), sec. 4, per layer, 2-byte activations:
    sbh (10 + 24/t + 5 a s / (h t))  without sequence parallelism,
    sbh/t (34 + 5 a s / h)           with it;  selective recompute drops the 5as/h score terms;
    full recompute keeps only the layer input, 2sbh (/t with sequence parallelism).
    Generalised to GQA and SwiGLU MLPs by counting the same saved tensors; with `dropout` the
    1-byte masks of the paper are included (34 = 11 + 19 + 4 for the GPT MLP of 4h).
    """
    s, b, h, a, t = seq, micro_batch, model.hidden, model.heads, par.tp
    sp_div = _where(par.sequence_parallel, t, 1)
    if recompute == "full":
        return 2.0 * s * b * h / sp_div / par.cp
    f = model.ffn
    q, kv = model.q_dim, model.kv_dim
    # Replicated (not split by tp unless sequence parallel): layernorm inputs 2x2h, qkv input 2h,
    # MLP input 2h, dropout masks 2x h.
    replicated = 4.0 * h + 2.0 * h + 2.0 * h + (2.0 * h if dropout else 0.0)
    # Split by tp: Q, K (2(q+kv)), V (2kv), out-proj input (2q), MLP internals.
    mlp = (3 * 2.0 * f) if model.activation in GATED else (2 * 2.0 * f)
    split = 2.0 * (q + kv) + 2.0 * kv + 2.0 * q + mlp
    scores = 0.0
    if not flash and recompute != "selective":
        scores = (5.0 if dropout else 4.0) * a * s  # softmax output (2) + its input to PV (2) [+ mask 1]
    elif flash:
        scores = 0.0
    per_token = (replicated / sp_div) + (split + scores) / t
    return s * b * per_token / par.cp


def every_other_matmul_activation_bytes(model: ModelConfig, tokens, par) -> float:
    """What one decoder layer keeps for its backward under per-op selective checkpointing as
    torchtitan runs it (every op's output saved but every second matmul's, flops.every_other_matmul_flops),
    for ``tokens`` tokens of a micro-batch on one device, 2-byte (bf16) activations: the block's input
    (h, split by tp under sequence parallelism), the saved matmuls' outputs, wq (q) and wv (kv) and the
    MLP's first input projection w1 (ffn), split by tp, the attention's output (q, split by tp) and,
    with a gated MLP, w2's (h: the row-parallel matmul's partial sum, whole on every tp rank, and its
    reduce-scatter's h / tp under sequence parallelism). wk, wo, w3 (w2 without a gate) and the
    elementwise ops are re-run, not kept. A MoE layer keeps its attention part and the router's
    logits; its experts' grouped matmuls are not among the saved ops (re-run)."""
    h, q, kv, t = model.hidden, model.q_dim, model.kv_dim, par.tp
    sp = np.logical_and(par.sequence_parallel, np.greater(t, 1))  # (numbers or a grid's arrays)
    attention = h / _where(sp, t, 1) + (2.0 * q + kv) / t
    gated = model.activation in GATED
    mlp = model.ffn / t + ((h + _where(sp, h / t, 0.0)) if gated else 0.0)
    per_token = 0.0
    for moe_layer, n in ((False, model.dense_layers), (True, model.moe_layers)):
        if n:
            extra = (model.moe.experts / t) if (moe_layer and model.moe) else mlp
            per_token += n * (attention + extra)
    return 2.0 * tokens * per_token / model.layers


def logits_bytes(model: ModelConfig, tokens: float, tp: int, precision: str, phase: str) -> float:
    """Loss-side buffers for a vocab-sized output (they dominate at large vocab).

    HF causal-LM loss upcasts logits to fp32 and runs log_softmax + nll (transformers
    loss_utils.ForCausalLMLoss). Forward peak: bf16 logits (2) + fp32 copy (4) + log-probs (4) =
    10 bytes per logit; backward start: log-probs (4) + their gradient (4) + logits gradient (4) =
    12 bytes per logit. fp32 training: 8 and 12.
    """
    V = model.vocab / tp
    if phase == "forward":
        per = 8.0 if precision == "fp32" else 10.0
    else:
        per = 12.0
    return tokens * V * per


# ------------------------------------------------------------------------------ training

def ddp_bucket_bytes(params, grad_bytes_per_param: float, par):
    """PyTorch DistributedDataParallel's gradient buckets, allocated when the model is wrapped.

    ``DistributedDataParallel.__init__`` -> ``_ddp_init_helper`` builds a ``dist.Reducer``
    (torch/nn/parallel/distributed.py), whose constructor calls ``Reducer::initialize_buckets``
    (torch/csrc/distributed/c10d/reducer.cpp): each bucket's flat ``bucket.gradients`` tensor is
    ``at::empty`` over the summed numel of its parameters, in the parameters' dtype (fp32 under
    amp; a DDP mixed-precision param dtype is not used here). Together the buckets cover every
    trainable parameter once, so they hold a full gradient's bytes from the wrap on, before any
    step. With ``gradient_as_bucket_view=False`` (the default) each ``.grad`` is a separate tensor
    copied into its bucket view (``Reducer::mark_variable_ready_dense``) and copied back after the
    all-reduce, so the buckets are extra memory that ``zero_grad(set_to_none=True)`` does not free.
    Measured (data/measurements/h200-sxm-x2/2026-11-23k-train-holdout/train-holdout-h200x2.diag.jsonl, 2x H200, PyTorch 2.11):
    after_wrap_bytes - after_build_bytes = 4 B x params exactly for the fp32 llama-350m.

    Only plain data parallelism (ZeRO stage 0) over more than one replica wraps in DDP."""
    return _where((par.dp > 1) & (par.zero_stage == 0), grad_bytes_per_param * params, 0.0)


# ------------------------------------------------------------------------------ offload

# DeepSpeed's gradient bucket while gradients stream to the host: ``reduce_bucket_size`` elements
# (default 5e8, deepspeed/runtime/zero/config.py), double-buffered (stage_1_and_2.py allocates two
# ipg buffers with contiguous_gradients) in the gradient dtype.
OFFLOAD_GRAD_BUCKET_ELEMENTS = 5e8
OFFLOAD_GRAD_BUCKETS = 2
# Layers of offloaded parameters resident on the GPU while they stream: the one computing and the
# one prefetched (ZeRO-Infinity, Rajbhandari et al. 2021 sec. 6.2, overlap-centric design).
OFFLOAD_RESIDENT_LAYERS = 2
# ...but no more than DeepSpeed ZeRO-3 keeps gathered: it releases parameters once
# stage3_max_live_parameters (default 1e9) are resident and prefetches stage3_prefetch_bucket_size
# (default 5e7) ahead (deepspeed/runtime/zero/config.py defaults; DeepSpeed configuration docs,
# "ZeRO optimizations"); a sub-module larger than that (one Linear of a very wide layer) is gathered
# whole (Rajbhandari et al. 2021 sec. 5.1.3: the working memory of the largest operator).
DEEPSPEED_MAX_LIVE_PARAMETERS = 1e9
DEEPSPEED_PREFETCH_BUCKET_PARAMS = 5e7


def offload_placement(st: "StateBytesPerParam", params, weights, optimizer, master, grads, per_layer, off_opt,
                      opt_tier: str, params_tier: str, largest_module: float = 0.0, keep_grads: bool = False,
                      shard_params=0.0) -> dict:
    """Where each model state lives under ZeRO-Offload / ZeRO-Infinity (or Megatron-core's
    hybrid optimizer, ``keep_grads``), per device.

    ZeRO-Offload (Ren et al. 2021, arXiv:2101.06840, sec. 4.1, fig. 2): the fp16 parameters stay on
    the GPU; the gradients (2M), fp32 master (4M) and Adam moments (8M) of the device's ZeRO-2
    partition go to host memory, where the optimizer runs: 14 bytes per parameter of the shard on
    the host, 2 on the GPU (+ the gradient buckets that stream the gradients down).
    ZeRO-Infinity (Rajbhandari et al. 2021, arXiv:2104.07857, sec. 5): with ZeRO-3 the parameters
    (offload_param) may leave too, to host memory or NVMe, and the optimizer states to NVMe
    (offload_optimizer nvme: DeepSpeed's optimizer swapper writes the gradient shard there too, and
    streams states and gradients through host buffers for the CPU step). The GPU
    keeps OFFLOAD_RESIDENT_LAYERS layers of parameters while they stream, at most ZeRO-3's live
    parameters (DEEPSPEED_MAX_LIVE_PARAMETERS, or ``largest_module``'s parameters where one
    sub-module is larger) plus a prefetch bucket.

    Megatron-core's --optimizer-cpu-offload (``keep_grads``; HybridDeviceOptimizer,
    megatron/core/optimizer/cpu_offloading/hybrid_optimizer.py) moves the fp32 master and Adam
    moments of the device's optimizer shard (``shard_params`` parameters) to the host, where the
    reduced gradient shard is copied as fp32 after the backward: the GPU keeps its whole gradient
    buffer.

    ``weights``, ``optimizer``, ``master``, ``grads``: the device's sharded bytes without offload;
    ``off_opt``: bool or array (vectorised over layouts). Returns the on-device weights, optimizer,
    master and grads, and the bytes per device in host memory (``off_cpu``) and on NVMe (``off_nvme``)."""
    states = optimizer + master
    if keep_grads:
        gpu_grads, host_grads = grads, DTYPE_BYTES["fp32"] * shard_params
    else:
        gpu_grads, host_grads = _minimum(grads, OFFLOAD_GRAD_BUCKETS * OFFLOAD_GRAD_BUCKET_ELEMENTS * st.grads), grads
    off_cpu = _where(off_opt, states + host_grads if opt_tier == "cpu" else 0.0, 0.0)
    off_nvme = _where(off_opt, states + host_grads if opt_tier == "nvme" else 0.0, 0.0)
    out = dict(optimizer=_where(off_opt, 0.0, optimizer), master=_where(off_opt, 0.0, master),
               grads=_where(off_opt, gpu_grads, grads), weights=weights)
    if params_tier != "none":
        live = _minimum(per_layer * OFFLOAD_RESIDENT_LAYERS,
                        np.maximum(DEEPSPEED_MAX_LIVE_PARAMETERS, largest_module) + DEEPSPEED_PREFETCH_BUCKET_PARAMS)
        out["weights"] = _minimum(weights, st.weights * live)
        if params_tier == "cpu":
            off_cpu = off_cpu + weights
        else:
            off_nvme = off_nvme + weights
    out["off_cpu"], out["off_nvme"] = off_cpu, off_nvme
    return out


def largest_module_params(model: ModelConfig, tp: int = 1) -> float:
    """Parameters of a model's largest sub-module per tensor-parallel rank, the unit ZeRO-3 gathers
    whole: the MLP's up projection (h x ffn, gated: each of gate and up) or the embedding (V x h)."""
    return max(model.hidden * model.ffn, model.vocab * model.hidden) / np.maximum(1, tp)


def framework_settings(job: TrainJob):
    """The settings of the framework profile that runs ``job`` (frameworks.ProfileSettings)."""
    from . import frameworks

    return frameworks.resolve(job.profile or job.framework).settings


def hybrid_offload(job: TrainJob) -> bool:
    """Whether the job's framework offloads an optimizer as Megatron-core's hybrid optimizer does
    (frameworks.ProfileSettings.optimizer_offload "hybrid-optimizer"), whether or not this job
    offloads one."""
    return framework_settings(job).optimizer_offload == "hybrid-optimizer"


@dataclass
class TrainMemory:
    """Per-device bytes of one training step on the most loaded device."""

    weights_bytes: float
    grads_bytes: float
    optimizer_bytes: float
    master_bytes: float
    grad_buffers_bytes: float  # persistent gradient buffers (DDP buckets, Megatron main_grad)
    wrapped_bytes: float  # allocated once the model is built and wrapped: weights + DDP buckets
    weight_copies_bytes: float  # autocast bf16 casts / FSDP gathered layers at peak
    activations_bytes: float  # saved activations at peak (all in-flight micro-batches)
    logits_bytes: float
    runtime_bytes: float  # cuBLAS workspaces etc. counted by the allocator
    steady_bytes: float  # allocated between steps
    peak_bytes: float  # max allocated during a step (torch.cuda.max_memory_allocated)
    peak_phase: str
    offloaded_cpu_bytes: float = 0.0
    offloaded_nvme_bytes: float = 0.0
    candidates: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def in_flight_microbatches(par: Parallel, n_micro: int) -> float:
    """Activations the first pipeline stage holds under 1F1B: min(pp, m) micro-batches
    (Narayanan et al. 2021 sec. 2.2.1); interleaving adds (pp - 1) / (pp * v) of a stage
    (Korthikanti et al. 2022 sec. 4.2.3)."""
    f = 1.0 * _minimum(par.pp, n_micro)
    f = f * _where(par.interleave > 1, 1.0 + (par.pp - 1) / (par.pp * par.interleave), 1.0)
    return _where(par.pp == 1, 1.0, f)


RECOMPUTE_CODES = {"none": 0, "selective": 1, "full": 2}
PEAK_PHASES = ("forward_loss", "backward_start", "backward_end", "optimizer")


def train_memory_terms(model: ModelConfig, job: TrainJob, par, *, micro_batch=None, n_micro=None,
                       recompute=None, offload_optimizer=None) -> dict:
    """The named terms of per-device training memory and the four peak candidates.

    Scalars for one layout (`par` a :class:`Parallel`), or arrays for many (`par` a
    :class:`ParallelGrid`, with `micro_batch`, `n_micro`, `recompute` (codes of
    RECOMPUTE_CODES) and `offload_optimizer` (bool: the optimizer lives on the host, tier
    ``job.offload_optimizer`` or cpu) given as arrays of the same length).
    """
    mb = job.micro_batch if micro_batch is None else micro_batch
    if n_micro is None:
        n_micro = job.grad_accum_steps(par)
    rc = RECOMPUTE_CODES[job.recompute] if recompute is None else recompute
    full, selective = rc == 2, rc == 1
    off_opt = (job.offload_optimizer != "none") if offload_optimizer is None else offload_optimizer
    off_tier = job.offload_optimizer if job.offload_optimizer != "none" else "cpu"
    pytorch = job.framework == "pytorch"
    amp = job.precision in ("amp-bf16", "amp-fp16", "fp8")

    sp = stage_params(model, par)
    st = state_bytes_per_param(job, model.hidden)
    dp_shard = par.dp * par.cp  # ZeRO shards over every data-parallel replica
    z = par.zero_stage
    P = sp.total
    o_div = _where(z >= 1, dp_shard, 1)
    states = model_state_bytes(P, job, par, model.hidden)
    weights, optimizer, master, grads_full = states["weights"], states["optimizer"], states["master"], states["grads"]
    tokens = mb * job.seq_len / par.cp  # tokens per device per micro-batch (before tp split)
    seq_div = _where(par.sequence_parallel, par.tp, 1)
    fsdp = (z >= 3) & pytorch

    # Gradients: PyTorch creates .grad in backward (freed by zero_grad); Megatron/DeepSpeed keep
    # a persistent gradient buffer; DDP keeps bucket copies of every gradient (gradient_as_bucket_view=False),
    # allocated when the model is wrapped (ddp_bucket_bytes).
    if pytorch:
        persistent_grads = 0.0
        grad_buffers = ddp_bucket_bytes(P, st.grads, par)
    else:
        persistent_grads = grads_full
        grad_buffers = 0.0
    created_grads = grads_full - persistent_grads

    # Offload (ZeRO-Offload / ZeRO-Infinity, offload_placement): optimizer states, fp32 master and
    # the gradient shard leave the device (the GPU keeps gradient buckets only); offloaded
    # parameters leave it too, but for the layers being streamed.
    place = offload_placement(st, P, weights, optimizer, master, grads_full, sp.per_layer, off_opt, off_tier,
                              job.offload_params, largest_module=largest_module_params(model, par.tp),
                              keep_grads=bool(np.any(off_opt)) and hybrid_offload(job),
                              shard_params=P / o_div)
    optimizer, master, weights = place["optimizer"], place["master"], place["weights"]
    persistent_grads = _where(off_opt, place["grads"], persistent_grads)
    created_grads = _where(off_opt, 0.0, created_grads)
    off_cpu, off_nvme = place["off_cpu"], place["off_nvme"]

    runtime = CUBLAS_WORKSPACES_BYTES
    # What the model holds right after it is built and wrapped for training, before the optimizer
    # and the first step: the (sharded) weights plus what the wrapper allocates at construction
    # (DDP's buckets under PyTorch; nothing for the other frameworks' terms here).
    wrapped = weights + grad_buffers
    steady = weights + optimizer + master + persistent_grads + grad_buffers + runtime

    # Activations
    layers = sp.layers
    if pytorch:
        tp_div = _where(par.tp > 1, par.tp / seq_div, 1)
        act_layer = pytorch_layer_activation_bytes(model, tokens / seq_div, job.precision) / tp_div
        if amp:  # FSDP's mixed precision runs the blocks in pure bf16
            act_layer = _where(fsdp, pytorch_layer_activation_bytes(model, tokens / seq_div, "bf16") / tp_div, act_layer)
        fp32_stream = job.precision in ("fp32", "amp-bf16", "amp-fp16")
        ckpt_layer = _where(fsdp, 2.0, 4.0 if fp32_stream else 2.0) * tokens * model.hidden / seq_div
        if job.attention == "standard":
            # transformers' eager attention saves softmax's fp32 output (4 B) and, in 16-bit
            # compute, its cast to bf16/fp16 for the PV product (2 B) per score element
            score_saved = 4.0 + (0.0 if job.precision == "fp32" else 2.0)
            act_layer = act_layer + _where(selective, 0.0, score_saved * model.heads * job.seq_len * tokens / par.tp)
    else:
        act_layer = korthikanti_layer_activation_bytes(model, mb, job.seq_len, par, "none", job.attention == "flash")
        if job.attention != "flash":
            act_layer = _where(selective, korthikanti_layer_activation_bytes(model, mb, job.seq_len, par, "selective", False),
                               act_layer)
        ckpt_layer = korthikanti_layer_activation_bytes(model, mb, job.seq_len, par, "full", True)
    if np.any(selective) and framework_settings(job).selective_recompute == "every-other-matmul":
        # torchtitan's selective checkpointing keeps what its per-op policy saves, not what Megatron's selective recompute keeps
        act_layer = _where(selective, every_other_matmul_activation_bytes(model, tokens, par), act_layer)
    inflight = in_flight_microbatches(par, n_micro)
    saved_all = layers * _where(full, ckpt_layer, act_layer) * inflight
    live_layer = _where(full, act_layer, 0.0)
    score_live = 0.0
    if pytorch and job.attention == "standard":
        # selective recompute of transformers' eager attention: the top layer's re-run forward
        # (fp32 softmax output + its bf16 cast) and its backward (probability gradient in bf16 and
        # fp32, softmax gradient in fp32) beside every saved activation at the start of backward,
        # ~12 B per score element (measured peaks, train-variants-selective-h100.jsonl: +6.3%, -0.7%).
        # Without recompute the same buffers stay within the logits' peak (the measured peaks of the
        # seven such steps are within 2% without the term; with 6 B of it, up to +4.5%).
        score_live = _where(selective, 12.0, 0.0) * model.heads * job.seq_len * tokens / par.tp
    lg_f = logits_bytes(model, tokens, par.tp, job.precision, "forward")
    lg_b = logits_bytes(model, tokens, par.tp, job.precision, "backward")
    # the first stage holds the most activations; the last the logits. Take both, conservatively
    # the logits of one micro-batch.
    lg_pp = _maximum(lg_f, lg_b) / _maximum(1.0, inflight)
    lg_f = _where(par.pp > 1, lg_pp, lg_f)
    lg_b = _where(par.pp > 1, lg_pp, lg_b)

    # Weight copies for compute
    cast_per_param = _where(fsdp, 0.0, 2.0 if (amp and pytorch) else 0.0)
    gathered_layer = (2.0 * sp.per_layer * (1 - 1 / dp_shard) if (amp or job.precision == "bf16") else 4.0 * sp.per_layer)
    w_div = _where(z >= 3, dp_shard, 1)
    cast_all = cast_per_param * (P - sp.embedding) / w_div
    cache_all = _where(fsdp, 2 * gathered_layer, cast_all)  # FSDP: current + prefetched unit
    cache_saved = _where(fsdp, 2 * gathered_layer, _where(full, cast_per_param * sp.lm_head, cast_all))
    acc_grads = _where(n_micro > 1, created_grads, 0.0)  # grads alive during later micro-batches
    # ZeRO-3 / FSDP under pipeline parallelism (comm.ShardedDataParallel.once_per_step): the stage's
    # parameters stay gathered for the whole step and gradients accumulate unsharded (FSDP2 in its
    # fp32 reduce dtype under amp; Megatron's fp32 main_grad) until the last micro-batch's backward.
    pp_fsdp = (z >= 3) & (par.pp > 1)
    gathered_stage = (2.0 if (amp or job.precision == "bf16") else 4.0) * P * (1 - 1 / dp_shard)
    unsharded_grads = (4.0 if amp else st.grads) * P
    cache_all = _where(pp_fsdp, gathered_stage, cache_all)
    cache_saved = _where(pp_fsdp, gathered_stage, cache_saved)
    acc_grads = _where(pp_fsdp & (n_micro > 1), unsharded_grads, acc_grads)
    final_norm_bytes = (10.0 if pytorch else 4.0) * tokens * model.hidden

    cand = {}
    cand["forward_loss"] = steady + acc_grads + cache_all + saved_all + final_norm_bytes + lg_f
    cand["backward_start"] = steady + acc_grads + cache_saved + saved_all + final_norm_bytes + lg_b + score_live
    # Backward sweep, lowest layer (grads of everything above exist, embedding grad still to come)
    grad_l = created_grads * sp.per_layer / P
    bwd_transient = 4.0 * tokens * model.hidden / seq_div * 2  # grad of the residual stream + one input grad
    sweep = steady + _where(pp_fsdp & (n_micro > 1), unsharded_grads, created_grads - grad_l - created_grads * sp.embedding / P)
    sweep = sweep + _where(full, ckpt_layer, act_layer) * inflight + live_layer
    sweep = sweep + _where(fsdp | pp_fsdp, cache_saved, cast_per_param * sp.per_layer) + bwd_transient
    cand["backward_end"] = sweep
    opt_transient = 0.0 if job.fused_optimizer else _where(off_opt, 0.0, 4.0 * P / o_div)  # foreach AdamW temporaries
    cand["optimizer"] = steady + created_grads + opt_transient
    return dict(weights=weights, grads=_where(off_opt, persistent_grads, _maximum(grads_full, acc_grads)), optimizer=optimizer, master=master, grad_buffers=grad_buffers,
                wrapped=wrapped, runtime=runtime, steady=steady, saved_all=saved_all, act_layer=act_layer, live_layer=live_layer,
                cache_all=cache_all, cache_saved=cache_saved, lg_f=lg_f, lg_b=lg_b, off_cpu=off_cpu,
                off_nvme=off_nvme, candidates=cand)


def peak_of(candidates: dict) -> "np.ndarray | float":
    """Elementwise maximum over the peak candidates."""
    vals = [candidates[k] for k in PEAK_PHASES]
    if all(np.ndim(v) == 0 for v in vals):
        return max(vals)
    return np.maximum.reduce(np.broadcast_arrays(*vals))


def train_memory(model: ModelConfig, job: TrainJob, par: Parallel) -> TrainMemory:
    t = train_memory_terms(model, job, par)
    cand = {k: float(v) for k, v in t["candidates"].items()}
    phase = max(cand, key=cand.get)
    at_peak_act = t["saved_all"] if phase in ("forward_loss", "backward_start") else (t["act_layer"] + t["live_layer"])
    return TrainMemory(
        weights_bytes=float(t["weights"]),
        grads_bytes=float(t["grads"]),
        optimizer_bytes=float(t["optimizer"]),
        master_bytes=float(t["master"]),
        grad_buffers_bytes=float(t["grad_buffers"]),
        wrapped_bytes=float(t["wrapped"]),
        weight_copies_bytes=float(t["cache_all"] if phase == "forward_loss" else t["cache_saved"]),
        activations_bytes=float(at_peak_act),
        logits_bytes=float(t["lg_f"] if phase == "forward_loss" else (t["lg_b"] if phase == "backward_start" else 0.0)),
        runtime_bytes=float(t["runtime"]),
        steady_bytes=float(t["steady"]),
        peak_bytes=cand[phase],
        peak_phase=phase,
        offloaded_cpu_bytes=float(t["off_cpu"]),
        offloaded_nvme_bytes=float(t["off_nvme"]),
        candidates=cand,
    )


def required_device_bytes(peak_allocated_bytes: float) -> float:
    """Device memory needed for an allocator peak: + CUDA context + fragmentation margin."""
    return peak_allocated_bytes * (1.0 + FRAGMENTATION_FRACTION) + CUDA_CONTEXT_BYTES


# ------------------------------------------------------------------------------ inference

def kv_cache_bytes(model: ModelConfig, batch: int, context: int, kv_dtype: str = "bf16", tp: int = 1,
                   block_tokens: int | None = None) -> float:
    """KV cache: 2 (K and V) x layers x batch x context x kv_heads x head_dim x bytes.
    MLA caches the compressed latent plus the rotary key: (kv_lora_rank + qk_rope_head_dim) per
    token and layer (DeepSeek-V2, arXiv:2405.04434 table 1). A sliding window caps the context on
    windowed layers. Paged caches round each sequence up to whole blocks (vLLM, Kwon et al. 2023).
    """
    b = DTYPE_BYTES[kv_dtype]
    ctx = context
    if block_tokens:
        ctx = -(-context // block_tokens) * block_tokens
    if model.attention == "mla":
        per_tok_layer = (model.mla.kv_lora_rank + model.mla.qk_rope_head_dim) * b
        return model.layers * batch * ctx * per_tok_layer
    per_tok_layer = 2 * model.kv_dim * b / tp
    if model.sliding_window:
        windowed = model.layers // model.sliding_window_every if model.sliding_window_every > 1 else model.layers
        full = model.layers - windowed
        wctx = min(ctx, model.sliding_window)
        return batch * per_tok_layer * (full * ctx + windowed * wctx)
    return model.layers * batch * ctx * per_tok_layer


def decode_graph_workspace_bytes(model: ModelConfig, batch: int, context: int, act_bytes: float = 2.0) -> float:
    """Intermediates of one decode step captured in a CUDA graph. The graph's private pool keeps
    every intermediate of every layer (no reuse across layers), so per token and layer:
    RMSNorm x2 in fp32 (input copy, square, normalised: 3 x 4h + 2h bf16 out, twice), fused qkv,
    rotary products, attention output, o-proj, residuals (~ 12h bf16), gate/up, act, product (4f +
    2f + 2f); plus attention scores and probabilities over the cache in fp32 (+ bf16 copy):
    heads x context x 10 bytes.
    """
    h, f = model.hidden, model.ffn
    qkv = model.q_dim + 2 * model.kv_dim
    per_layer_tok = 2 * (3 * 4.0 * h + act_bytes * h) + act_bytes * (qkv + 2 * model.q_dim + 6 * h)
    per_layer_tok += act_bytes * (4 * f) if model.activation in GATED else act_bytes * 2 * f
    per_layer_tok += model.heads * context * 10.0
    logits = model.vocab * (act_bytes + 4.0)
    return batch * (model.layers * per_layer_tok + logits)


@dataclass
class InferMemory:
    weights_bytes: float
    kv_cache_bytes: float
    workspace_bytes: float
    runtime_bytes: float
    peak_bytes: float

    def to_dict(self) -> dict:
        return asdict(self)


def decode_memory(model: ModelConfig, job: InferJob, context: int, tp: int = 1) -> InferMemory:
    w, kv, ws, runtime = _decode_terms(model, job, job.batch, context, tp)
    return InferMemory(weights_bytes=w, kv_cache_bytes=kv, workspace_bytes=ws, runtime_bytes=runtime,
                       peak_bytes=w + kv + ws + runtime)


def decode_peak_bytes(model: ModelConfig, job: InferJob, batch: int, context: int, tp: int = 1) -> float:
    """decode_memory's ``peak_bytes`` of ``job`` at another ``batch`` (without copying the job)."""
    w, kv, ws, runtime = _decode_terms(model, job, batch, context, tp)
    return w + kv + ws + runtime


def _decode_terms(model: ModelConfig, job: InferJob, batch: int, context: int, tp: int):
    w = model.params * DTYPE_BYTES[job.weight_dtype] / tp
    kv = kv_cache_bytes(model, batch, context, job.kv_dtype, tp, job.paged_block_tokens)
    ws = decode_graph_workspace_bytes(model, batch, context) / tp
    runtime = CUBLAS_WORKSPACES_BYTES / 2  # one thread, cuBLAS + cuBLASLt
    return w, kv, ws, runtime
