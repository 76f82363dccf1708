"""Training step time on a device / node / cluster: compute (roofline per operator), exposed
communication, pipeline bubble, optimizer and host overhead, then run totals (days, device-hours,
energy, cost) and MFU / HFU.

MFU = model FLOPs per second / (devices x peak), HFU likewise with hardware FLOPs
(Chowdhery et al. 2022, appendix B; Korthikanti et al. 2022, sec. 6).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from . import comm, comm_bridge, cpu, frameworks, offload, steptime
from .arch import GATED, ModelConfig
from .arrays import where
from .bench.records import sdpa_flops
from .errors import InputError
from .calibration import smoothmax
from .flops import attention_core_flops, layer_gemms, train_step_flops
from .memory import TrainMemory, hybrid_offload, required_device_bytes, stage_params, state_bytes_per_param, train_memory
from .roofline import (attention_op_s, eager_elementwise_bytes_per_s, efficiency_for, gemm_op_s, gemm_ops_s, memory_op_s,
                       prefetch_gemms, sdpa_backend_rates)
from .specs import AcceleratorSpec, NodeSpec
from .workload import Parallel, TrainJob

# The fitted constants of eager PyTorch / Hugging Face steps and of the data-parallel overlap live in
# the framework profiles they describe, each with what it was fitted on and its held-out check:
# data/frameworks/pytorch.yaml (host dispatch per layer and its smooth max with the GPU, FSDP2's
# hooks, HF MoE dispatch, the eager elementwise traffic ratio, autocast casts, DDP's net overlap
# inside an NVLink node) and data/frameworks/megatron.yaml (the bucketed reduction's overlap).
# host time per step = max(0, L x HOST_S_PER_LAYER x (1 + HOST_RECOMPUTE_FACTOR [full]) + HOST_INTERCEPT_S)
# and step = (gpu^p + host^p)^(1/p), p = HOST_GPU_COMBINE_P (HOST_GPU_COMBINE_P_FSDP for FSDP2).
_EAGER = frameworks.builtin_profiles()["pytorch"]
_MEGATRON = frameworks.builtin_profiles()["megatron"]
HOST_S_PER_LAYER = _EAGER.value("host_s_per_layer")
HOST_RECOMPUTE_FACTOR = _EAGER.value("host_recompute_factor")
HOST_INTERCEPT_S = _EAGER.value("host_intercept_s")
HOST_GPU_COMBINE_P = _EAGER.value("host_gpu_combine_p")
HOST_GPU_COMBINE_P_FSDP = _EAGER.value("host_gpu_combine_p_fsdp")
HOST_FSDP_S_PER_LAYER = _EAGER.value("host_fsdp_s_per_layer")
HOST_MOE_LAYER_FACTOR_AMP = _EAGER.value("host_moe_layer_factor_amp")
HOST_MOE_LAYER_FACTOR_BF16 = _EAGER.value("host_moe_layer_factor_bf16")
HF_MOE_DISPATCH_PASSES = _EAGER.value("hf_moe_dispatch_passes")
HF_MOE_AMP_SYNC_S_PER_LAYER = _EAGER.value("hf_moe_amp_sync_s_per_layer")
HF_EAGER_TRAFFIC_RATIO = _EAGER.value("eager_traffic_ratio")
AMP_CAST_BYTES_PER_PARAM = _EAGER.value("amp_cast_bytes_per_param")
DDP_NVLINK_NET_OVERLAP = _EAGER.value("dp_overlap")
# Fraction of the data-parallel gradient reduction hidden behind backward compute when bucketed
# (all but the last bucket; Li et al. 2020, VLDB, sec. 3.2.3), Megatron-LM and DeepSpeed.
DP_OVERLAP_FRACTION = _MEGATRON.value("dp_overlap")


@dataclass
class StepTime:
    compute_s: float
    attention_s: float
    elementwise_s: float
    host_overhead_s: float  # host time not hidden behind GPU work
    tp_comm_s: float
    dp_comm_exposed_s: float
    fsdp_comm_exposed_s: float
    pp_comm_s: float
    bubble_s: float
    optimizer_s: float
    total_s: float
    ep_comm_s: float = 0.0   # expert-parallel all-to-alls (MoE dispatch/combine)
    cp_comm_s: float = 0.0   # context-parallel ring-attention K/V exchange not hidden by attention
    offload_s: float = 0.0   # optimizer / parameter traffic over PCIe to host memory or NVMe

    def parts(self) -> dict[str, float]:
        d = asdict(self)
        d.pop("total_s")
        return d


@dataclass
class TrainEstimate:
    model_id: str
    hardware: str
    devices: int
    parallel: dict
    job: dict
    memory: TrainMemory
    required_bytes: float
    capacity_bytes: float
    fits: bool
    step: StepTime
    tokens_per_step: float
    tokens_per_s: float
    model_flops_per_step: float
    hardware_flops_per_step: float
    mfu: float
    hfu: float
    tflops_per_device: float
    efficiency_source: str
    notes: list[str] = field(default_factory=list)
    framework: str = "pytorch"  # the framework profile that timed the step (costmodel.frameworks)
    # the step's terms where a composed framework profile timed it (costmodel.steptime.StepTerms)
    terms: object = field(default=None, repr=False, compare=False)
    # offloaded bytes per node against the node's host DRAM and NVMe (costmodel.offload.HostCapacity)
    host: dict | None = None
    # where the cluster stalls cross-node pipeline sends (steptime.pipeline_stall): the chance, the
    # seconds a stalled run adds, and whether the step time includes them
    pipeline_stall: dict | None = None

    @property
    def expected_step_s(self) -> float:
        """The mean step time over runs of this layout: the step time where the cluster has no stall
        risk, else the unstalled time plus the stall's chance times its seconds
        (steptime.expected_step_s): what layouts are ranked by."""
        st = self.pipeline_stall
        if not st:
            return self.step.total_s
        return float(steptime.expected_step_s(self.step.total_s, st["stalled_extra_s"] if st["included"] else 0.0,
                                              st["stalled_extra_s"], st["probability"]))

    def to_dict(self) -> dict:
        terms, self.terms = self.terms, None
        try:
            d = asdict(self)
        finally:
            self.terms = terms
        d.pop("terms", None)
        d["memory"] = self.memory.to_dict()
        d["expected_step_s"] = self.expected_step_s
        return d


def elementwise_bytes_per_token(model: ModelConfig, job: TrainJob, amp: bool) -> tuple[float, float]:
    """HBM bytes moved per token and layer by non-matmul kernels in one forward pass, as
    (hidden-wide, sharded): the hidden-wide kernels (norms, residual adds, bias-dropout-add, input
    casts) act on the full b x s x h activations, which every tensor-parallel rank holds unless
    sequence parallelism splits them (Korthikanti et al. 2022, sec. 4.2.2: "layer-norm and dropout
    ... are replicated across the tensor parallel group"); the sharded ones (activation function on
    the ffn, rotary on q/k) act on 1/t of the heads and ffn.

    Eager PyTorch (HF blocks under autocast, fp32 residual stream): RMSNorm 7 kernels (~28h each
    norm), 5 input casts fp32->bf16 (6h each), rotary on q and k (~32 bytes per element), SDPA
    casts, two fp32 residual adds (10h each), SwiGLU silu + mul (10f). Pure bf16 roughly halves
    the fp32 terms. Megatron-style fused kernels (fused norm, bias-dropout-add, swiglu, rope):
    ~ 30h + 8f.
    """
    h, f, kv = model.hidden, model.ffn, model.kv_dim
    mlp = 10.0 * f if model.activation in GATED else 8.0 * f
    if model.activation == "gelu_new":
        # tanh GELU op by op (pow, 3 scalar muls, 2 adds, tanh, mul): ~ 36 bytes per element forward
        mlp = 36.0 * f
    permute = 0.0
    if model.moe:
        mlp = mlp / f * model.moe.expert_ffn * model.moe.top_k
        permute = 16.0 * h * model.moe.top_k  # token permute / unpermute, hidden-wide
        if job.framework == "pytorch":
            # HF's experts gather, sort, weight, unsort and sum every routed copy op by op
            act_bytes = 4.0 if job.precision in ("amp-bf16", "amp-fp16", "fp32") else 2.0
            permute = HF_MOE_DISPATCH_PASSES * act_bytes * h * model.moe.top_k
    if job.framework != "pytorch":
        return 30.0 * h + permute, 0.8 * mlp
    r = HF_EAGER_TRAFFIC_RATIO
    if job.precision == "bf16":
        return r * (90.0 * h) + permute, r * (20.0 * kv + mlp)
    if job.precision == "fp32":
        return r * (110.0 * h) + permute, r * (40.0 * kv + 2.0 * mlp)
    return r * (148.0 * h) + permute, r * (38.0 * kv + mlp)


def te_fp8_bytes_per_token(model: ModelConfig, tp: int, sequence_parallel: bool) -> tuple[float, float]:
    """HBM bytes per token and decoder layer, (forward, backward) on one tensor-parallel rank, that
    Transformer Engine's FP8 GEMMs move beyond a bf16 step (Megatron-LM / NeMo with --fp8; TE
    v1.8, transformer_engine/pytorch/module/linear.py, layernorm_linear.py and base.py
    grad_output_preprocess). Every FP8 GEMM reads FP8 operands in the layout it needs, so TE casts
    (and transposes, for the weight gradient) what the bf16 step hands to the GEMM directly:

    - forward, inputs of the row-parallel linears (attention output, q/t wide; MLP output, f/t):
      fp8_cast_transpose_fused reads 2 bytes and writes the FP8 copy and its transpose (1 + 1);
      under sequence parallelism cast_to_fp8 only (2 + 1) and the transpose in backward (1 + 1);
    - forward, the two LayerNormLinear norms write their output in FP8 (1 byte instead of 2);
    - backward, the output gradients of the column-parallel linears (qkv, (q + 2 kv)/t; MLP input,
      (1 or 2) f/t): fp8_cast_transpose_bgrad_fused, 2 + 1 + 1 bytes; of the row-parallel ones
      (h wide): the same without sequence parallelism, else cast on the rank's h/t share (2 + 1),
      all-gather in FP8 and fp8_transpose of the gathered h (1 + 1);
    - backward, fp8_transpose of the two gathered norm outputs for the weight gradients (1 + 1)
      on h.

    The weights' FP8 casts happen once per step (is_first_microbatch caching), not per token."""
    h, q, kv = model.hidden, model.q_dim, model.kv_dim
    f = model.moe.expert_ffn * model.moe.top_k if model.moe else model.ffn
    f_in = (2 if model.activation in GATED else 1) * f
    row_in = (q + f) / tp
    wide = h / tp if sequence_parallel else h  # a rank's share of a full-width activation
    fwd = (3.0 if sequence_parallel else 4.0) * row_in - 2.0 * 1.0 * wide
    row_grad = (3.0 * h / tp + 2.0 * h) if sequence_parallel else 4.0 * h
    bwd = ((2.0 * row_in if sequence_parallel else 0.0) + 4.0 * (q + 2 * kv + f_in) / tp + 2.0 * row_grad
           + 2.0 * 2.0 * h)
    return fwd, bwd


def float8_dynamic_cast_s(eff, gemms) -> tuple[float, float]:
    """(forward, backward) seconds of the casts of fp8 training with dynamic tensor-wise scales
    (torchao's Float8Linear, torchao/float8/float8_linear.py, as torchtitan's float8 converter
    runs it) for one decoder layer and micro-batch: ``gemms`` are the layer's linear layers as
    (m, k, n, count) on one rank (m tokens, a k x n weight). Each is a kernel over the tensor
    (roofline.memory_op_s: its bytes at the calibrated rate, its launch floor), per call:

    - forward: the input's absolute maximum (read 2 m k) and its scaled cast to e4m3 (read 2 m k,
      write m k); the same for the weight (2 k n, then 3 k n), cast again every call;
    - backward: the output gradient's maximum (2 m n) and cast to e5m2 (3 m n), and three transposed
      copies of fp8 tensors for the two GEMMs that need the other operand layout (Hopper's fp8 GEMM
      takes A row-major, B column-major): the gradient (2 m n: read and write), the weight
      (2 k n) and the input (2 m k).

    Checked against torch.compile'd decoders on one H100 with such linears
    (data/measurements/h100-sxm/2026-12-07d-fp8-fused-steps): Inductor fuses some of these into
    the neighbouring kernels, not every one, and the measured extra kernel time is above this count
    (1.1-1.2x for Llama blocks, 1.5-1.8x for GPT blocks with biases and GELU)."""
    fwd = bwd = 0.0
    for m, k, n, count in gemms:
        fwd += count * (memory_op_s(eff, 2.0 * m * k) + memory_op_s(eff, 3.0 * m * k)
                        + memory_op_s(eff, 2.0 * k * n) + memory_op_s(eff, 3.0 * k * n))
        bwd += count * (memory_op_s(eff, 2.0 * m * n) + memory_op_s(eff, 3.0 * m * n) + memory_op_s(eff, 2.0 * m * n)
                        + memory_op_s(eff, 2.0 * k * n) + memory_op_s(eff, 2.0 * m * k))
    return fwd, bwd


# Bytes per logit of Megatron-LM's vocab_parallel_cross_entropy, forward and backward (cross_entropy_s).
MEGATRON_CE_BYTES_FWD = 38.0
MEGATRON_CE_BYTES_BWD = 14.0
# ... of a fused loss kernel (a profile's settings.loss_kernel "fused"), counted from what it must
# move: forward, the bf16 logits read for the row maximum and read again for the sum of
# exponentials (2 + 2; Inductor's two-pass reduction, an online softmax reads them once);
# backward, read again and the bf16 gradient softmax - one-hot written (2 + 2).
FUSED_CE_BYTES = 8.0


def cross_entropy_s(eff, job: TrainJob, tokens: float, vocab: int, tp: int, prof=None) -> float:
    """Forward + backward time of the loss over ``tokens`` tokens' logits (``vocab / tp`` of them
    per tensor-parallel rank), memory-bound. Megatron-LM's vocab_parallel_cross_entropy
    (megatron/core/tensor_parallel/cross_entropy.py at core_v0.8.0, cross_entropy_loss_fusion off by
    default; nanotron's _ShardedCrossEntropy, parallel/tensor_parallel/functional.py, is a copy of
    it called on the logits cast to fp32), per logit: forward .float() of the bf16 logits
    (2 + 4 bytes), max (4), in-place subtract of the max (4 + 4), in-place exp (4 + 4), sum (4),
    in-place divide into the softmax kept for backward (4 + 4): 38 bytes; backward, the in-place
    multiply by the loss gradient (4 + 4) and autograd's cast of the fp32 gradient back to bf16
    (4 + 2): 14 bytes. Eager PyTorch: two 14-byte passes forward and 1.5 times that backward. A
    composed profile (costmodel.steptime: nanotron) keeps the one 14-byte pass, times 2.5, that its
    fitted elementwise_scale was fitted with. A fused loss kernel (settings.loss_kernel):
    FUSED_CE_BYTES. ``prof``: the framework profile timing the step (default: the job's)."""
    logits = tokens * vocab / tp
    prof = prof if prof is not None else frameworks.resolve(job.profile or job.framework)
    if prof.settings.loss_kernel == "fused":
        return memory_op_s(eff, logits * FUSED_CE_BYTES)
    if job.framework == "pytorch":
        return memory_op_s(eff, logits * (2 + 4 + 4 + 4) * 2) * (1.0 + 1.5)
    if prof.step_model == "composed":
        return memory_op_s(eff, logits * (2 + 4 + 4 + 4)) * (1.0 + 1.5)
    return memory_op_s(eff, logits * (MEGATRON_CE_BYTES_FWD + MEGATRON_CE_BYTES_BWD))


# transformers' eager attention (SCHEMA.md attention "standard" under PyTorch), per element of the
# mb x heads x s x s score matrix: the scale, the causal mask, softmax in fp32 and the casts, each
# way (Megatron's fused scale-mask-softmax does this in one kernel each way). Profiled on H100:
# data/frameworks/pytorch.yaml eager_score_bytes_* (value, bounds, the profile they come from).
EAGER_SCORE_BYTES_FWD = _EAGER.value("eager_score_bytes_fwd")
EAGER_SCORE_BYTES_BWD = _EAGER.value("eager_score_bytes_bwd")


def _standard_attention_times(eff, model: ModelConfig, mb: int, heads: int, s_q: int, s_kv: int, dtype: str,
                              eager: bool = False, max_bytes_per_s: float | None = None):
    """Forward and backward time of attention without a fused (flash) kernel, as Megatron-LM
    (2019-2022) and eager PyTorch run it: two batched GEMMs over the full s_q x s_kv score matrix
    (the causal mask is applied to it, not skipped: Narayanan et al. 2021 eq. (3) counts the full
    16 B s^2 l h), and the score matrix materialised in HBM for the mask + softmax and the dropout.

    Forward: S = Q K^T (s_q x s_kv, k = d) and O = P V (s_q x d, k = s_kv), over mb x heads.
    Backward: dP = dO V^T (s_q x s_kv, k = d), dV = P^T dO (s_kv x d, k = s_q), dQ = dS K and
    dK = dS^T Q (x d, k = s): twice the forward FLOPs. The batched matrices fill the device
    together, so each GEMM is timed as one with mb x heads times the rows.
    Score traffic (2-byte elements): forward writes S, softmax reads S and writes P, dropout reads
    P and writes P' (+ a 1-byte mask), PV reads P': ~ 4 passes; backward ~ 8 (dP, dropout and
    softmax backward read P, P' and dP and write dS). ``eager``: transformers' op-by-op eager
    attention instead (EAGER_SCORE_BYTES_*), no faster than ``max_bytes_per_s``.
    """
    d = model.d_head
    bh = mb * heads
    qk = _gemm(eff, "attn_scores", bh * s_q, d, s_kv, dtype)
    pv = _gemm(eff, "attn_pv", bh * s_q, s_kv, d, dtype)
    kv_grad = _gemm(eff, "attn_kv_grad", bh * s_kv, s_q, d, dtype)
    elems = bh * s_q * s_kv
    fwd_bytes, bwd_bytes = (EAGER_SCORE_BYTES_FWD, EAGER_SCORE_BYTES_BWD) if eager else (8.0, 16.0)
    att_f = qk + pv + memory_op_s(eff, fwd_bytes * elems, max_bytes_per_s=max_bytes_per_s)
    att_b = qk + pv + 2 * kv_grad + memory_op_s(eff, bwd_bytes * elems, max_bytes_per_s=max_bytes_per_s)
    return att_f, att_b


def optimizer_bytes_per_param(job: TrainJob, st) -> float:
    """Bytes an optimizer step moves per parameter of the shard it updates (``st``: the job's
    StateBytesPerParam). AdamW reads param, grad, m, v and writes param, m, v (Loshchilov & Hutter
    2019), + the fp32 master where it is separate; fused: one pass, else two. amp-fp16's dynamic
    loss scaling first checks every gradient for inf/NaN (and unscales it) in place, one read + write
    of each (torch._amp_foreach_non_finite_check_and_unscale_, called by PyTorch's GradScaler and by
    Megatron-LM's MixedPrecisionOptimizer)."""
    b = (st.weights * 2 + st.grads + st.optimizer * 2 + st.master * 2) * (1.0 if job.fused_optimizer else 2.0)
    return b + (2.0 * st.grads if job.precision == "amp-fp16" else 0.0)


def grad_accum_params(params, zero_stage, pp, dp_world):
    """Parameters whose gradients a device accumulates across micro-batches: the shard under
    ZeRO-2/3 / FSDP without pipeline parallelism (each micro-batch's gradients are reduce-scattered,
    then added to the shard), all of its stage otherwise (DDP; FSDP under PP keeps them unsharded
    until the step's last micro-batch). Vectorised."""
    if type(zero_stage) is int and type(pp) is int and type(dp_world) is int:  # one layout: the same, on numbers
        return params / float(dp_world) if (zero_stage >= 2 and pp == 1) else params
    return np.where((np.asarray(zero_stage) >= 2) & (np.asarray(pp) == 1), params / np.asarray(dp_world, dtype=float), params)


def grad_accum_s(eff, job: TrainJob, params, n_micro):
    """Gradient accumulation in eager PyTorch: from the second micro-batch on, autograd's
    AccumulateGrad adds each new gradient to ``.grad`` in place (read both, write one: 3 passes of
    the gradient dtype, fp32 under amp). Megatron-LM fuses it into the weight-gradient GEMM
    (``gradient_accumulation_fusion``). Vectorised over ``params`` / ``n_micro``. Measured
    (data/measurements/h100-sxm/2026-11-23w-train-accum/train-accum-h100.jsonl, llama-1.3b amp-bf16 b2 s2048): 4 micro-batches take
    0.5318 s; 4 x the single step's 0.1395 s less 3 optimizer steps (12.6 ms each, predicted) is
    0.5204 s, leaving 11.4 ms for 3 accumulations, against 3 x 12 B x 1.34e9 / 3.0 TB/s = 16 ms."""
    if job.framework != "pytorch":
        return 0.0
    nbytes = 3.0 * (2.0 if job.precision == "bf16" else 4.0) * np.asarray(params, dtype=float)
    return np.maximum(np.asarray(n_micro, dtype=float) - 1.0, 0.0) * nbytes / eff.mem_bytes_per_s(np.maximum(nbytes, 1.0))


def host_layer_equivalents(model: ModelConfig, job: TrainJob, layers: float) -> float:
    """``layers`` decoder layers of a stage in units of a dense layer's host dispatch time (MoE
    layers count HOST_MOE_LAYER_FACTOR_* each)."""
    if model.moe is None or job.framework != "pytorch":
        return layers
    factor = HOST_MOE_LAYER_FACTOR_AMP if job.precision in ("amp-bf16", "amp-fp16") else HOST_MOE_LAYER_FACTOR_BF16
    moe_share = model.moe_layers / model.layers
    return layers * (1.0 - moe_share + moe_share * factor)


def host_gpu_combine_p(fsdp):
    """Exponent of the smooth max that combines a step's host and GPU time (vectorised over
    ``fsdp``, True where FSDP / ZeRO-3 runs eager PyTorch over several ranks)."""
    return np.where(fsdp, HOST_GPU_COMBINE_P_FSDP, HOST_GPU_COMBINE_P)


def host_dispatch_s(model: ModelConfig, job: TrainJob, n_micro, layers, full, fsdp, host_s_per_layer: float | None = None):
    """Host time of one eager step, clamped at 0 (HOST_* above; works on numpy arrays, as the
    search evaluates it): per micro-batch and layer, a full recompute re-running the forward, the
    intercept, and FSDP2's per-layer hooks where ``fsdp``; times the job's host_time_factor."""
    per_layer = HOST_S_PER_LAYER if host_s_per_layer is None else host_s_per_layer
    host = (n_micro * host_layer_equivalents(model, job, layers) * per_layer
            * (1 + HOST_RECOMPUTE_FACTOR * full) + HOST_INTERCEPT_S)
    return np.maximum(0.0, host + fsdp * n_micro * layers * HOST_FSDP_S_PER_LAYER) * job.host_time_factor


def host_exposed_s(model: ModelConfig, job: TrainJob, n_micro, layers, full, fsdp, gpu_s, experts_fp32: bool,
                   host_s_per_layer: float | None = None):
    """(host time, step time it adds beyond ``gpu_s``) of an eager PyTorch step: host_dispatch_s
    against the GPU time by a smooth max of exponent host_gpu_combine_p (the host runs ahead of the
    GPU except where one starves the other), + the fp32 experts' exposed syncs (moe_sync_exposed_s)
    where ``experts_fp32``. Vectorised, as the search evaluates it."""
    host = host_dispatch_s(model, job, n_micro, layers, full, fsdp, host_s_per_layer)
    p = host_gpu_combine_p(fsdp)
    exposed = smoothmax(gpu_s, host, p) - gpu_s
    if experts_fp32:
        exposed = exposed + moe_sync_exposed_s(model, job, n_micro, layers)
    return host, exposed


def moe_sync_exposed_s(model: ModelConfig, job: TrainJob, n_micro, layers):
    """Step time the fp32 experts' host syncs expose (HF_MOE_AMP_SYNC_S_PER_LAYER) for ``layers``
    decoder layers of a stage, times the job's host_time_factor."""
    return n_micro * model.moe_layers * layers / model.layers * HF_MOE_AMP_SYNC_S_PER_LAYER * job.host_time_factor


def moe_etp_share(model: ModelConfig, tp: int, etp: int) -> float:
    """The share of a layer's tensor-parallel collectives that run over ``etp`` ranks instead of
    ``tp``: the MLP half of the MoE layers where the experts are split over fewer ranks than tp
    (Parallel.etp; with etp 1 the MoE layer works on each rank's sequence-parallel share of the
    tokens, Megatron-core's MoE parallel folding, and runs none). 0 for a parallel block, whose
    attention and MLP share one collective."""
    if model.moe is None or model.moe_layers == 0 or etp == tp or model.parallel_block:
        return 0.0
    return 0.5 * model.moe_layers / model.layers


def tp_layer_comm_s(collective_time_s, model: ModelConfig, act_bytes: float, tp: int, etp: int,
                    devices_per_node: int, sequence_parallel: bool, recompute: str,
                    parallel_block: bool = False) -> float:
    """Tensor-parallel collectives of one decoder layer and micro-batch (comm.tp_layer_collectives,
    each timed by ``collective_time_s(op, nbytes, ranks, intra=True)``, a Links' or a memo of it),
    over tp ranks, the MoE layers' MLP half over the etp ranks that split the experts
    (moe_etp_share). train and search's screen both call it."""
    def over(ranks: int) -> float:
        if ranks <= 1:
            return 0.0
        group = comm.Group(ranks, min(ranks, devices_per_node))
        return sum(c.count * collective_time_s(c.op, c.nbytes, ranks, intra=True)
                   for c in comm.tp_layer_collectives(act_bytes, group, sequence_parallel=sequence_parallel,
                                                      recompute=recompute, parallel_block=parallel_block))
    share = moe_etp_share(model, tp, etp)
    return over(tp) * (1.0 - share) + (share * over(etp) if share else 0.0)


def dp_grad_bytes_per_param(job: TrainJob) -> float:
    """Bytes per parameter the data-parallel gradient reduction moves. Eager PyTorch under amp keeps
    fp32 gradients (4; pure bf16: 2). Megatron-LM reduces its main_grad buffer, fp32 for bf16
    parameters unless --grad-reduce-in-bf16 ("bfloat16 requires gradient accumulation and
    all-reduce to be done in fp32", megatron/training/arguments.py; Megatron-core DDP
    grad_reduce_in_fp32), and in the parameters' dtype for fp16 (2). DeepSpeed reduces in the
    compute dtype (2)."""
    if job.framework == "pytorch":
        return 4.0 if job.precision != "bf16" else 2.0
    if job.framework == "megatron" and job.precision in ("amp-bf16", "bf16", "fp8"):
        return 2.0 if job.grad_reduce_in_bf16 else 4.0  # --grad-reduce-in-bf16: Megatron-core grad_reduce_in_fp32 False
    return 2.0


def dp_collectives(framework: str, zero_stage: int, grad_bytes: float, param_bytes: float) -> list[tuple]:
    """The data-parallel collectives of a step without ZeRO-3 (which gathers unit by unit), as
    (part, op, calls, bytes per call): part "reduction" is what may hide behind the backward,
    "zero2" the reduce-scatter that ZeRO-2 repeats for every earlier micro-batch
    (steptime.zero2_extra_reductions). Megatron-style ZeRO-1/2 reduce-scatter the gradients and all-gather
    the updated parameters (distributed optimizer); PyTorch DDP all-reduces buckets (ddp_buckets);
    the rest all-reduce the whole gradient."""
    if zero_stage >= 1 and framework != "pytorch":
        return [("reduction", "reduce_scatter", 1, grad_bytes), ("reduction", "all_gather", 1, param_bytes),
                ("zero2", "reduce_scatter", 1, grad_bytes)]
    if framework == "pytorch":
        n_b, bucket = ddp_buckets(grad_bytes)
        return [("reduction", "all_reduce", n_b, bucket)]
    return [("reduction", "all_reduce", 1, grad_bytes)]


def dp_overlap_share(job: TrainJob, intra):
    """The share of the data-parallel reduction that may hide behind the backward: none without
    overlap_grad_reduce; PyTorch DDP's where its group sits inside one node (DDP_NVLINK_NET_OVERLAP,
    measured); DP_OVERLAP_FRACTION otherwise. ``intra``: a bool, or an array of them."""
    if not job.overlap_grad_reduce:
        return 0.0
    if job.framework != "pytorch":
        return DP_OVERLAP_FRACTION
    return where(intra, DDP_NVLINK_NET_OVERLAP, DP_OVERLAP_FRACTION)


def ddp_buckets(grad_bytes):
    """(calls, bytes per call) of PyTorch DDP's bucketed gradient all-reduce (comm.DDP_BUCKET_BYTES),
    as equal calls."""
    n = np.maximum(1, np.ceil(np.asarray(grad_bytes, dtype=float) / comm.DDP_BUCKET_BYTES))
    return n, grad_bytes / n


def _cast_params_per_layer(model: ModelConfig) -> float:
    """Mean parameters per decoder layer that autocast casts: all but the routed experts (HF runs
    them in fp32 under amp, see _expert_dtype)."""
    dense = model.layer_params(moe_layer=False)
    if model.moe is None:
        return float(dense)
    moe = model.layer_params(moe_layer=True) - model.moe.experts * model.expert_params()
    return (model.dense_layers * dense + model.moe_layers * moe) / model.layers


def check_megatron_switches(job: TrainJob, prof) -> None:
    """Megatron-LM's --tp-comm-overlap and --grad-reduce-in-bf16 on a job timed as profile ``prof``:
    an InputError where the framework has no such switch (train and search refuse alike)."""
    if job.tp_comm_overlap and (prof.step_model == "composed" or prof.base == "pytorch"):
        raise InputError(f"--tp-comm-overlap is Megatron-LM's (Transformer Engine userbuffers); {prof.id} "
                         + ("carries its own tp_overlap parameter" if prof.step_model == "composed"
                            else "runs tensor-parallel communication between the GEMMs"), field="tp_comm_overlap")
    if job.grad_reduce_in_bf16 and job.framework != "megatron":
        raise InputError(f"--grad-reduce-in-bf16 is Megatron-LM's (its main_grad buffers and data-parallel reduction "
                         f"in bf16); a {job.framework} step reduces gradients in "
                         + ("the compute dtype" if job.framework == "deepspeed" else "their own dtype"),
                         field="grad_reduce_in_bf16")


def check_moe_switches(model: ModelConfig, etp: int | None, moe_enable_deepep: bool) -> None:
    """--expert-tensor-parallel-size and --moe-enable-deepep on ``model``: an InputError (naming the
    field) where it has no experts for them to act on (train and search refuse alike)."""
    if model.moe is not None and model.moe_layers > 0:
        return
    if etp is not None:
        raise InputError(f"etp splits experts; {model.id} has none", field="etp")
    if moe_enable_deepep:
        raise InputError(f"DeepEP dispatches tokens to experts; {model.id} has none", field="moe_enable_deepep")


def head_dtype(dtype: str) -> str:
    """The dtype of the LM head's GEMM in a step whose matmuls run in ``dtype``: fp8 training keeps
    the output layer in bf16. Megatron-core's GPTModel builds it as tensor_parallel.ColumnParallelLinear,
    a plain matmul outside Transformer Engine's fp8_autocast (megatron/core/models/gpt/gpt_model.py:
    a TE layer only with fp8_output_proj under the MXFP8 recipe); torchtitan's float8 converter
    leaves the "output" module out (filter_fqns, torchtitan/components/quantization/float8.md)."""
    return "bf16" if dtype == "fp8" else dtype


def step_dtype(job: TrainJob, spec) -> str:
    """The dtype a training step's matmuls run in (train and search): the precision's, or where the
    device has no such peak (no tf32: a CPU, Volta) fp32 at the fp32 rate, else bf16 / fp16."""
    dtype = {"amp-bf16": "bf16", "bf16": "bf16", "amp-fp16": "fp16", "fp32": "tf32", "fp8": "fp8"}[job.precision]
    if spec.peak_flops.get(dtype) is None:
        dtype = "fp32" if job.precision == "fp32" and spec.peak_flops.fp32 else ("bf16" if spec.peak_flops.bf16 else "fp16")
    return dtype


class SustainedClock:
    """A device's efficiency model whose GEMMs all run at the power-limited clock of back-to-back
    GEMMs (a framework profile's ``settings.gemm_clock: sustained``): every GEMM is timed as
    sustained load, never as an interleaved burst. Everything else is the wrapped model's."""

    def __init__(self, eff):
        self._eff = eff

    def __getattr__(self, name):
        value = getattr(self._eff, name)
        self.__dict__[name] = value  # the wrapped model is immutable: looked up once
        return value

    def gemm_time_s(self, m, n, k, dtype, batch=1, interleaved: bool = False):
        return self._eff.gemm_time_s(m, n, k, dtype, batch, interleaved=False)

    def gemm_times_s(self, m, n, k, dtype, batch=1, interleaved: bool = False):
        return self._eff.gemm_times_s(m, n, k, dtype, batch, interleaved=False)

    def gemm_times_list(self, m, n, k, dtype, batch=1, interleaved: bool = False):
        many = getattr(self._eff, "gemm_times_list", None)
        if many is None:
            return [self._eff.gemm_time_s(*shape, dtype, batch, interleaved=False) for shape in zip(m, n, k)]
        return many(m, n, k, dtype, batch, interleaved=False)


class AttentionBackend:
    """A device's efficiency model whose fused attention is another kernel than the one its
    attention curves measured (a framework profile's ``settings.attention_backend`` against the
    calibration's ``attention_backend``): forward and backward each at roofline.sdpa_backend_rates
    times the measured rate. Everything else is the wrapped model's."""

    def __init__(self, eff, backend: str):
        self._eff = eff
        self._calibrated = eff.attention_backend
        self.attention_backend = backend

    def __getattr__(self, name):
        return getattr(self._eff, name)

    def attention_time_s(self, b, h, s, d, causal: bool = True, backward: bool = False):
        fwd, bwd = sdpa_backend_rates(self._calibrated, self.attention_backend, int(d))
        t_f = self._eff.attention_time_s(b, h, s, d, causal, False)
        if not backward:
            return t_f / fwd
        return t_f / fwd + np.maximum(self._eff.attention_time_s(b, h, s, d, causal, True) - t_f, 0.0) / bwd

    def attention_flops_per_s(self, b, h, s, d, causal: bool = True, backward: bool = False):
        return sdpa_flops(b, h, s, d, causal, backward) / self.attention_time_s(b, h, s, d, causal, backward)


def step_efficiency(spec: AcceleratorSpec, calibration: str | None, prof) -> object:
    """The efficiency model a training step of framework profile ``prof`` runs on: GEMMs at the
    profile's clock, fused attention as the profile's kernel where the calibration names another."""
    eff = efficiency_for(spec, calibration)
    sustained = prof.settings.gemm_clock == "sustained" and hasattr(eff, "gemm_time_s")
    want = prof.settings.attention_backend
    key = (id(eff), sustained, want)
    hit = _STEP_EFFICIENCY.get(key)
    if hit is not None and hit[0] is eff:
        return hit[1]
    base = eff
    if sustained:
        eff = SustainedClock(eff)
    if want is not None and getattr(eff, "attention_backend", None) not in (None, want):
        eff = AttentionBackend(eff, want)
    if len(_STEP_EFFICIENCY) > 256:
        _STEP_EFFICIENCY.clear()
    _STEP_EFFICIENCY[key] = (base, eff)  # (the entry holds the model, so its id is not reused)
    return eff


# The wrapped efficiency models step_efficiency made, per model and profile setting: the wrappers
# hold nothing but the (immutable) model and the setting.
_STEP_EFFICIENCY: dict = {}


def _gemm(eff, name: str, *args, **kw) -> float:
    """Seconds of a GEMM inside a training step (``name``: which one, for the reader): interleaved
    with memory-bound kernels, so it runs at a short
    burst's clock rather than under the sustained power cap of back-to-back GEMMs (profiled: the
    GEMMs of a llama-1.3b b4 s2048 amp step on H200 averaged 778 TFLOP/s, against ~ 690 sustained;
    data/measurements/h200-sxm-x2/2026-11-23j-train-profile/train-profile-h200.diag.jsonl)."""
    return gemm_op_s(eff, *args, interleaved=True, **kw)


def _expert_dtype(model: ModelConfig, job: TrainJob, dtype: str) -> str:
    """Compute dtype of the routed experts' GEMMs.

    Hugging Face transformers 5.x runs MoE experts through ``torch._grouped_mm``, which autocast
    does not cast: under amp the fp32 master weights make it take PyTorch's fp32 fallback, a loop
    of per-expert fp32 GEMMs on the CUDA cores (profiled on H100, transformers 5.17: sm80 FFMA /
    cutlass SIMT sgemm kernels, data/measurements/h100-sxm/2026-11-23i-infer-train-profile/train-profile-h100.diag.jsonl). Megatron-style
    frameworks cast experts like every other GEMM.
    """
    if job.framework == "pytorch" and job.precision in ("amp-bf16", "amp-fp16") and model.moe is not None:
        return "fp32"
    return dtype


def _layer_times(eff, model: ModelConfig, job: TrainJob, par: Parallel, mb: int, seq_dev: int, dtype: str,
                 spec=None, also=()):
    """Forward and backward GPU time of one decoder layer per micro-batch on one device (``spec``:
    the device, for the eager elementwise ceiling of roofline.EAGER_ELEMENTWISE_ELEMENTS_PER_S_PER_SM).
    ``also``: more GEMM shapes (m, k, n, dtype) the caller times next (roofline.gemm_ops_s)."""
    if job.attention == "standard" or cpu.is_cpu(spec):
        # attention's GEMMs too: all of the layer's shapes through the calibrated curve in one call first
        prefetch_gemms(eff, lambda e: _layer_times(e, model, job, par, mb, seq_dev, dtype, spec),
                       key=("layer", id(model), job, par, mb, seq_dev, dtype))
    tokens = mb * seq_dev
    tp = par.tp
    gemm_fwd = gemm_bwd = 0.0
    expert_dtype = _expert_dtype(model, job, dtype)
    n_moe = model.moe_layers
    n_dense = model.dense_layers
    # the layer's GEMMs as (forward, dgrad, wgrad) triples with their weight, timed together below
    gemms, weights = [], []
    for moe_layer, weight in ((False, n_dense / model.layers), (True, n_moe / model.layers)):
        if weight == 0:
            continue
        for g in layer_gemms(model, tokens, moe_layer):
            m = g.m
            k, n = g.k, g.n
            # routed experts are split over etp ranks (Parallel.etp; tp unless set), the rest over tp
            split = par.expert_tp if g.name in ("expert_in", "expert_out") else tp
            if g.name in ("qkv", "mlp_in", "expert_in", "shared_in", "q", "q_up", "kv_up"):
                n = max(1, n // split)
            elif g.name in ("attn_out", "mlp_out", "expert_out", "shared_out"):
                k = max(1, k // split)
            count = g.count
            g_dtype = dtype
            if g.name in ("expert_in", "expert_out"):
                # each of a rank's experts / ep experts gets the tokens of ep ranks; with etp < tp a
                # rank dispatches its sequence-parallel share (tokens / tp), gathered over etp ranks
                count = g.count / par.ep
                if split != tp:
                    m = max(1, round(g.m * par.ep * split / tp))
                elif par.ep > 1:
                    m = g.m * par.ep
                g_dtype = expert_dtype
            # HF blocks run q, k, v (and gate, up) as separate matmuls
            splits = 3 if (g.name == "qkv" and job.framework == "pytorch") else (
                2 if (g.name in ("mlp_in",) and model.activation in GATED and job.framework == "pytorch") else 1)
            for _ in range(splits):
                ns = n // splits if g.name != "qkv" else None
                if g.name == "qkv":
                    for part in (model.q_dim, model.kv_dim, model.kv_dim):
                        part_n = max(1, part // tp)
                        gemms += [(m, k, part_n, dtype, count), (m, part_n, k, dtype, count), (k, m, part_n, dtype, count)]
                        weights.append(weight)
                    break
                gemms += [(m, k, ns, g_dtype, count), (m, ns, k, g_dtype, count), (k, m, ns, g_dtype, count)]
                weights.append(weight)
    # a training step's GEMMs run interleaved with memory-bound kernels (_gemm)
    times = iter(gemm_ops_s(eff, gemms, interleaved=True, also=also))
    for weight in weights:
        f_ = next(times)
        b_ = next(times) + next(times)
        gemm_fwd += weight * f_
        gemm_bwd += weight * b_
    # Context parallelism: each rank's seq/cp queries attend over the whole (causal, load-balanced)
    # sequence, so a rank does 1/cp of the full attention, not the attention of seq/cp tokens.
    heads = max(1, model.heads // tp)
    # pure bf16 steps move 2-byte elements; amp and fp32 ones mostly 4-byte (the fp32 residual stream)
    cap = eager_elementwise_bytes_per_s(spec, 2.0 if job.precision == "bf16" else 4.0) if (
        spec is not None and job.framework == "pytorch") else None
    if cpu.is_cpu(spec) and job.attention != "standard":  # PyTorch's CPU flash kernel runs on the BLAS
        att_f, att_b = cpu.attention_times(eff, mb, heads, seq_dev * par.cp, model.d_head, dtype)
        att_f, att_b = att_f / par.cp, att_b / par.cp
    elif job.attention == "standard":
        att_f, att_b = _standard_attention_times(eff, model, mb, heads, seq_dev, seq_dev * par.cp, dtype,
                                                 eager=job.framework == "pytorch", max_bytes_per_s=cap)
    else:
        core = attention_core_flops(model, mb, seq_dev * par.cp, causal=True) / tp / par.cp
        att_f = attention_op_s(eff, mb, heads, seq_dev, model.d_head, core, False)
        att_b = attention_op_s(eff, mb, heads, seq_dev, model.d_head, 3.5 * core, True) - att_f
    amp = job.precision in ("amp-bf16", "amp-fp16", "fp8")
    wide, sharded = elementwise_bytes_per_token(model, job, amp)
    ew = tokens * (wide / (tp if par.sequence_parallel else 1) + sharded / tp)
    ew_f = memory_op_s(eff, ew, max_bytes_per_s=cap)
    ew_b = 2.0 * ew_f
    prof = frameworks.resolve(job.profile or job.framework)
    if job.precision == "fp8" and prof.settings.fp8_casts == "dynamic-tensorwise":
        # torchao Float8Linear's per-call casts, on the linear layers of this rank (the layer's mix
        # of dense and MoE layers as above)
        f8_f, f8_b = float8_dynamic_cast_s(eff, [(m, k, n, weight * c) for (m, k, n, dt, c), weight
                                                 in zip(gemms[::3], weights)])
        ew_f += f8_f
        ew_b += f8_b
    elif job.precision == "fp8" and job.framework != "pytorch" and prof.step_model == "builtin":
        # Transformer Engine's FP8 casts (Megatron-LM, NeMo)
        f8_f, f8_b = te_fp8_bytes_per_token(model, tp, par.sequence_parallel)
        ew_f += memory_op_s(eff, tokens * f8_f)
        ew_b += memory_op_s(eff, tokens * f8_b)
    if job.framework == "pytorch" and amp:
        cast = AMP_CAST_BYTES_PER_PARAM / 2.0 * _cast_params_per_layer(model) / tp
        cast_t = memory_op_s(eff, cast)
        ew_f += cast_t  # weights cast in forward (again when a recompute re-runs it)
        ew_b += cast_t  # gradients cast back in backward
    kf = kernel_time_factor(prof)
    return gemm_fwd * kf, gemm_bwd * kf, att_f * kf, att_b * kf, ew_f * kf, ew_b * kf


def kernel_time_factor(prof) -> float:
    """How many times the fused Megatron-style step model's kernel time a framework's GPU kernels
    take (the profile's ``kernel_time_factor``; 1 where it names none): the 2019 Megatron-LM code
    ran its layers op by op (data/frameworks/megatron-2019.yaml: 1.6, the measured ratio of the
    same run before and after the v1.0 release's optimizations, Shoeybi et al. 2019 and
    nv-adlr.github.io/MegatronLMV1)."""
    p = prof.parameters.get("kernel_time_factor")
    return 1.0 if p is None else p.value


# DeepSpeed ZeRO-3 as Narayanan et al. 2021 (Table 2) ran it: DeepSpeed v0.3.13-v0.4.0 (March-June
# 2021), deepspeed/runtime/zero/stage3.py and partition_parameters.py of those releases. The
# mechanisms, each from that code:
#
# - Persistent small parameters. Tensors of fewer than `stage3_param_persistence_threshold` elements
#   (constants.py default 1e5) are never partitioned ("avoid tons of latency bound communication"):
#   biases and norm scales stay resident, only the weight matrices are gathered, one call each.
# - Blocking gathers. Each parameter's gather (`_allgather_param`) starts with a
#   torch.cuda.synchronize() and fetch_sub_module synchronizes again before the sub-module runs, so
#   no gather overlaps compute: DeepSpeed's own fix (PR #1188, commit c0eeb69, Oct 2021) says "the
#   async version is not async at all, because each all_gather calls torch.cuda.synchronize()".
# - List collectives. The gather is torch.distributed.all_gather into a list of world-size views;
#   PyTorch's ProcessGroupNCCL (<= 1.10) gathers into a flat temporary and copies it out with one
#   copy_ per rank (the same PR: "the torch.distributed.all_gather will do implicit memcpy at the end
#   of each ncclAllgather"), after DeepSpeed zero-fills the gathered buffer. Per call that adds a
#   per-rank and a per-byte cost beyond NCCL's own time (DEEPSPEED_LIST_GATHER_*).
# - Gradients all-reduced, not reduce-scattered: ZeRO-3's default contiguous_gradients is False
#   (ZERO3_OPTIMIZATION_CONTIGUOUS_GRADIENTS_DEFAULT, True only from v0.4.5), so reduce_ipg_grads
#   takes buffered_reduce_fallback -> allreduce_bucket -> dist.all_reduce of each flattened bucket
#   (flatten copy + copy back), issued when the next parameter's gradient arrives (one bucket of
#   reduce_bucket_size 5e8 elements lags one sub-module) on the reduction stream, where it overlaps
#   that next sub-module's backward until the next fetch synchronizes.
# - Reuse distance. A gathered parameter is kept only if it is used again within
#   `stage3_max_reuse_distance` parameters (default 1e9): under full recompute a weight is released
#   after its recompute forward and gathered again for its backward unless the weights used between
#   (the layer's later sub-modules, in recompute forward and in backward) total less; the layer's
#   last sub-module is always kept.
DEEPSPEED_MAX_REUSE_DISTANCE_PARAMS = 1e9
DEEPSPEED_PARAM_PERSISTENCE_THRESHOLD = 1e5
# The list all-gather's cost beyond NCCL's ring, per call: a copy_ per rank of the flat temporary
# into the output views, and per byte of the gathered buffer (zero-fill, copy-out of the chunks).
# Fitted on Narayanan et al. 2021 Table 2's DeepSpeed rows: data/frameworks/deepspeed.yaml list_gather_*.
DEEPSPEED_LIST_GATHER_S_PER_RANK = frameworks.builtin_profiles()["deepspeed"].value("list_gather_s_per_rank")
DEEPSPEED_LIST_GATHER_S_PER_BYTE = frameworks.builtin_profiles()["deepspeed"].value("list_gather_s_per_byte")


def deepspeed_zero3_modules(model: ModelConfig, tp: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(share of the layer's parameters, gathered) per sub-module of one decoder layer as
    DeepSpeed's hooks fetch them: the weight matrices of Megatron's layer (fused qkv, attention
    output, the MLP's input (gate and up fused) and output; an MoE layer's routed experts count as
    the MLP), in forward order. ``gathered`` is False for a weight under the persistence threshold
    (DEEPSPEED_PARAM_PERSISTENCE_THRESHOLD), which stays resident. The share also stands for the
    sub-module's share of the layer's compute (GEMM FLOPs are proportional to the weights)."""
    sizes = np.array([g.k * g.n * g.count for g in layer_gemms(model, 1.0, False)], dtype=float) / max(1, tp)
    return sizes / sizes.sum(), sizes >= DEEPSPEED_PARAM_PERSISTENCE_THRESHOLD


def deepspeed_zero3_calls_s(collective_s, eff, model: ModelConfig, tp: int, stage_params: float, grad_bytes: float,
                            units: int, world: int, intra: bool, per_node: int) -> tuple[np.ndarray, np.ndarray]:
    """(gather, reduce) seconds of each sub-module of a layer (deepspeed_zero3_modules order) under
    DeepSpeed 2021 ZeRO-3: the list all-gather of its bf16 weights where gathered (NCCL's time plus
    DEEPSPEED_LIST_GATHER_* per rank and byte), and the all-reduce of its gradients with their
    flatten copy and copy back. ``collective_s``: a link's collective_time_s."""
    share, gathered = deepspeed_zero3_modules(model, tp)
    unit_bytes = 2.0 * stage_params / units * share
    gather = np.where(gathered, np.array([collective_s("all_gather", float(b), world, intra=intra, per_node=per_node)
                                          for b in unit_bytes])
                      + world * DEEPSPEED_LIST_GATHER_S_PER_RANK + unit_bytes * DEEPSPEED_LIST_GATHER_S_PER_BYTE, 0.0)
    reduce = np.array([collective_s("all_reduce", float(b), world, intra=intra, per_node=per_node) + memory_op_s(eff, 4.0 * b)
                       for b in grad_bytes / units * share])
    return gather, reduce


def deepspeed_zero3_regather(model: ModelConfig, tp: int, recompute: str) -> np.ndarray:
    """1.0 per sub-module (deepspeed_zero3_modules order) that is gathered again for its backward,
    0.0 where DeepSpeed keeps it (stage3_max_reuse_distance) or never releases it (persistent):
    under full recompute the weights used between a sub-module's recompute forward and its backward
    are the layer's later sub-modules, twice; without recompute the rest of the model lies between,
    re-gathered."""
    share, gathered = deepspeed_zero3_modules(model, tp)
    if recompute != "full":
        return gathered.astype(float)
    layer = float(sum(g.k * g.n * g.count for g in layer_gemms(model, 1.0, False))) / max(1, tp)
    later = np.concatenate([np.cumsum(share[::-1])[::-1][1:], [0.0]]) * layer
    return ((2.0 * later > DEEPSPEED_MAX_REUSE_DISTANCE_PARAMS) & gathered).astype(float)


def deepspeed_zero3_exposed_s(gather_s, reduce_s, fwd_s, bwd_s, recompute_fwd_s, gemm_share, regather,
                              layers, n_micro):
    """(exposed, total) communication seconds of DeepSpeed 2021 ZeRO-3 over a step, vectorised:
    ``gather_s`` / ``reduce_s`` (..., M): one sub-module's parameter gather and gradient reduction;
    ``fwd_s`` / ``bwd_s`` (...): a layer's forward and backward compute, ``recompute_fwd_s`` (...)
    the part of ``bwd_s`` that re-runs the forward under full recompute (0 otherwise). Per layer and
    micro-batch: every gather blocks (forward, recompute forward, and backward where
    ``regather``); the reduction of a sub-module's gradients overlaps the backward compute of the
    next sub-module in backward order (the layer's first, for the previous layer's last)."""
    g = np.asarray(gather_s, dtype=float)
    r = np.asarray(reduce_s, dtype=float)
    share = np.asarray(gemm_share, dtype=float)
    rec = np.asarray(recompute_fwd_s, dtype=float)  # (forward compute overlaps nothing: fwd_s unused)
    back = (np.asarray(bwd_s, dtype=float) - rec)[..., None] * share  # backward proper per sub-module
    gathers = g.sum(axis=-1) * (1.0 + (rec > 0)) + (g * np.asarray(regather, dtype=float)).sum(axis=-1)
    # backward order M-1 .. 0: sub-module j's reduction overlaps sub-module j-1's backward, module
    # 0's the previous layer's module M-1
    # (np.roll(back, 1)[..., j] = back[..., j - 1], wrapping to back[..., M - 1])
    overlap_exposed = np.maximum(0.0, r - np.roll(back, 1, axis=-1)).sum(axis=-1)
    per_layer = gathers + overlap_exposed
    total = layers * n_micro * (gathers + r.sum(axis=-1))
    return layers * n_micro * per_layer, total


def _data_parallel_terms(link, eff, model: ModelConfig, job: TrainJob, par: Parallel, sp, st, grad_bytes: float,
                         layer_times, recompute_f: float, layers: float, n_micro: int):
    """The data-parallel terms of one layout for steptime.compose_builtin: (ZeRO-3 / FSDP
    communication left exposed, the gradient reduction, ZeRO-2's repeated reduce-scatter, the share
    of the reduction that may hide behind the backward)."""
    g_f, g_b, a_f, a_b, e_f, e_b = layer_times
    fsdp_exposed = op_t = rs_t = ovl = 0.0
    dp_world = par.dp * par.cp
    if dp_world <= 1:
        return fsdp_exposed, op_t, rs_t, ovl
    dp_intra = link.dp_intra(par)
    dp_per_node = link.dp_ranks_per_node(par)
    if par.zero_stage >= 3:
        dp_group = link.group(dp_world, dp_intra, dp_per_node)
        units = max(1, int(layers))
        if job.framework == "deepspeed" and par.pp == 1:
            # DeepSpeed ZeRO-3 of 2021 (Narayanan et al.'s Table 2), sub-module by sub-module:
            # blocking list all-gathers of the weights above the persistence threshold,
            # gradients all-reduced lagging one sub-module (DEEPSPEED_* above)
            share = deepspeed_zero3_modules(model, par.tp)[0]
            gather, reduce = deepspeed_zero3_calls_s(link.collective_time_s, eff, model, par.tp, sp.total, grad_bytes,
                                                     units, dp_world, dp_intra, dp_per_node)
            rec = recompute_f if job.recompute == "full" else 0.0
            exposed, _ = deepspeed_zero3_exposed_s(gather, reduce, g_f + a_f + e_f, g_b + a_b + e_b + recompute_f,
                                                   rec, share, deepspeed_zero3_regather(model, par.tp, job.recompute),
                                                   layers, n_micro)
            fsdp_exposed = float(exposed)
        else:
            # FSDP / ZeRO-3, unit by unit: per micro-batch each layer's parameters are
            # all-gathered before its forward and again before its backward, its gradients
            # reduce-scattered after it; the next unit's gather overlaps this unit's compute
            # (prefetch). A unit's link time (comm.ShardedDataParallel) includes the latency of
            # every call, and a group spanning nodes runs over the NICs with its real ranks per
            # node; what is left exposed is comm.fsdp_exposed_s, the search's screen's formula
            # too. Under pipeline parallelism, once per step instead (once_per_step).
            fsdp = comm.ShardedDataParallel(units=units, unit_param_bytes=2.0 * sp.total / units,
                                            unit_grad_bytes=grad_bytes / units, group=dp_group,
                                            once_per_step=par.pp > 1,
                                            time_fn=(lambda op, nbytes: link.collective_time_s(
                                                op, nbytes, dp_world, intra=dp_intra, per_node=dp_per_node))
                                            if link.scaling is not None else None)
            kw = dict(efficiency=link._efficiency(), params=link.params)
            fsdp_exposed = float(comm.fsdp_overlapped_s(
                fsdp.gather_s(link.comm_links, **kw), fsdp.reduce_s(link.comm_links, **kw), g_f + a_f + e_f,
                g_b + a_b + e_b + recompute_f, units, n_micro, par.pp > 1, link.spec.compute_units))
    else:
        for part, op, calls, nbytes in dp_collectives(job.framework, par.zero_stage, grad_bytes, st.weights * sp.total):
            t = float(calls) * link.collective_time_s(op, float(nbytes), dp_world, intra=dp_intra, per_node=dp_per_node)
            if part == "reduction":
                op_t += t
            else:
                rs_t += t
        ovl = dp_overlap_share(job, dp_intra)
    return fsdp_exposed, op_t, rs_t, ovl


def _offload_terms(spec, node, eff, job: TrainJob, par: Parallel, sp, st, layer_times, recompute_f: float,
                   layers: float, n_micro: int, head_s: float, optimizer_t: float, notes: list):
    """ZeRO-Offload / ZeRO-Infinity of one layout (costmodel.offload): (seconds the step adds, the
    optimizer's seconds left on the device, the hardware library where it was read); notes added."""
    if job.offload_optimizer == "none" and job.offload_params == "none":
        return 0.0, optimizer_t, None
    g_f, g_b, a_f, a_b, e_f, e_b = layer_times
    per_layer = g_f + g_b + a_f + a_b + e_f + e_b + recompute_f
    dp_world = par.dp * par.cp
    # ZeRO-Offload / ZeRO-Infinity (costmodel.offload): gradients down behind backward, CPU Adam
    # on the node's cores, NVMe traffic, parameters up / fetched behind compute
    from .specs import load_library

    lib = load_library()
    host_node, _ = offload.node_for_device(spec, node, lib)
    per_node = min(par.devices, host_node.devices_per_node) if host_node is not None else 1
    shard = sp.total / (dp_world if par.zero_stage >= 1 or job.offload_params != "none" else 1)
    passes = n_micro * (2 + (1 if job.recompute == "full" else 0))
    hybrid = hybrid_offload(job)
    offload_t, off_parts = offload.offload_step_s(
        st, shard, per_node, job.offload_optimizer, job.offload_params, h2d=eff.h2d_bytes_per_s(True),
        d2h=getattr(eff, "d2h_bytes_per_s", eff.h2d_bytes_per_s)(True), backward_s=n_micro * layers * (g_b + a_b + e_b + recompute_f),
        compute_s=n_micro * (layers * per_layer + head_s), passes=passes, node=host_node, lib=lib, hybrid=hybrid)
    offload_t = float(offload_t)
    optimizer_t = 0.0 if job.offload_optimizer != "none" else optimizer_t  # the step runs on the host
    if job.offload_optimizer != "none":
        notes.append(f"optimizer offloaded to {job.offload_optimizer} "
                     + ("(Megatron-core --optimizer-cpu-offload): fp32 gradient shard down " if hybrid else "(ZeRO-Offload): gradients down ")
                     + f"{float(off_parts['grads_down_s']):.3g} s " + ("(after backward)" if hybrid else "(behind backward)")
                     + f", CPU Adam {float(off_parts['cpu_adam_s']):.3g} s"
                     + (f", NVMe optimizer states {float(off_parts['nvme_optimizer_s']):.3g} s" if job.offload_optimizer == "nvme" else "")
                     + (f", parameters up {float(off_parts['params_up_s']):.3g} s" if job.offload_params == "none" else ""))
    if job.offload_params != "none" and par.zero_stage < 3 and dp_world > 1:
        notes.append(f"DeepSpeed offloads parameters only under ZeRO-3 (offload_param); at ZeRO stage {par.zero_stage} "
                     f"each of the {dp_world} data-parallel replicas offloads a whole copy here")
    if job.offload_params != "none":
        notes.append(f"parameters offloaded to {job.offload_params} (ZeRO-Infinity): fetched for {passes} passes, "
                     f"{float(off_parts['params_fetch_s']):.3g} s, prefetched behind compute")
    return offload_t, optimizer_t, lib


def _composed_step(prof, model: ModelConfig, spec, job: TrainJob, par: Parallel, node, eff, dtype: str, layer_times,
                   head_s: float, loss_s: float, optimizer_t: float, st, sp, layers: float, builtin: StepTime,
                   notes: list):
    """A composed framework profile's step (costmodel.steptime: its own mechanisms, from its
    parameters) for one layout: (StepTime, its StepTerms, the pipeline stall risk or None); the
    terms it does not model (ZeRO-3 gathers, all-to-alls, ring attention, offload) come from the
    built-in model's ``builtin``; a stall note added."""
    other = builtin.offload_s + builtin.ep_comm_s + builtin.cp_comm_s + builtin.fsdp_comm_exposed_s
    terms = steptime.train_terms(
        model, spec, job, par, node, eff, dtype, layer_times, head_s, loss_s, optimizer_t, other,
        grad_bytes=st.grads * sp.total, param_bytes_gathered=st.weights * sp.total, layers=layers,
        dp_bucket_bytes=prof.settings.dp_bucket_bytes, cluster_scaling=prof.scaling,
        pipeline_balance=prof.settings.pipeline_balance, sharded_grad_sync=prof.settings.sharded_grad_sync,
        selective_recompute=prof.settings.selective_recompute)
    c = steptime.compose(terms, {k: v.value for k, v in prof.parameters.items()}, prof.cluster_step_latency_s,
                         cuda_graphs=prof.settings.cuda_graphs)
    step = StepTime(float(c.compute_s), float(c.attention_s), float(c.elementwise_s), float(c.host_overhead_s),
                    float(c.tp_comm_s), float(c.dp_comm_exposed_s), builtin.fsdp_comm_exposed_s, float(c.pp_comm_s),
                    float(c.bubble_s), float(c.optimizer_s), float(c.total_s), ep_comm_s=builtin.ep_comm_s,
                    cp_comm_s=builtin.cp_comm_s, offload_s=builtin.offload_s)
    note = stall_note(float(c.stall_p), float(c.stall_risk_s), float(c.stall_s), float(c.total_s - c.stall_s),
                      float(terms.nodes))
    if note:
        notes.append(note)
    stall = ({"probability": float(c.stall_p), "stalled_extra_s": float(c.stall_risk_s),
              "included": bool(float(c.stall_s) > 0)} if float(c.stall_risk_s) > 0 else None)
    return step, terms, stall


def estimate_train(model: ModelConfig, spec: AcceleratorSpec, job: TrainJob, par: Parallel,
                   node: NodeSpec | None = None, calibration: str | None = None,
                   host_s_per_layer: float = HOST_S_PER_LAYER, profile=None) -> TrainEstimate:
    """Memory and step time of one layout. ``profile``: a framework profile (costmodel.frameworks;
    an id, a YAML path or a FrameworkProfile) that replaces the job's own (``job.profile``, else
    the built-in profile of ``job.framework``)."""
    prof = frameworks.resolve(profile if profile is not None else (job.profile or job.framework))
    check_megatron_switches(job, prof)
    prof.check_runs([par.zero_stage], [par.interleave], offload=job.offload_optimizer != "none",
                    offload_params=job.offload_params != "none", pipelined=par.pp > 1)
    eff = step_efficiency(spec, calibration, prof)
    dtype = step_dtype(job, spec)
    notes: list[str] = []
    seq_dev = max(1, job.seq_len // par.cp)
    mb = job.micro_batch
    n_micro = job.grad_accum_steps(par)
    sp = stage_params(model, par)
    layers = sp.layers
    tokens_mb = mb * seq_dev
    head = (tokens_mb, model.hidden, max(1, model.vocab // par.tp), head_dtype(dtype))  # the lm_head's GEMM, timed with the layer's
    g_f, g_b, a_f, a_b, e_f, e_b = _layer_times(eff, model, job, par, mb, seq_dev, dtype, spec, also=(head,))
    kf = kernel_time_factor(prof)
    experts_fp32 = _expert_dtype(model, job, dtype) != dtype
    if experts_fp32:
        notes.append("MoE experts at the fp32 rate: Hugging Face's grouped_mm experts are not autocast under amp "
                     "(framework pytorch); --framework megatron casts them")
    head_f = _gemm(eff, "lm_head", *head)
    head_b = 2 * head_f
    loss_t = cross_entropy_s(eff, job, tokens_mb, model.vocab, par.tp, prof)  # forward + backward passes
    head_f, head_b, loss_t = head_f * kf, head_b * kf, loss_t * kf
    # what the recompute policy re-runs of a layer's forward (steptime.recompute_forward_s): all of it,
    # the attention core, or (torchtitan's per-op checkpointing) every second matmul
    selective = prof.settings.selective_recompute
    recompute_f, recompute_f_gemm, recompute_f_attn, recompute_f_ew = steptime.recompute_forward_s(
        job.recompute, job.recompute_fraction, g_f, a_f, e_f, selective, steptime.selective_matmul_share(selective, model))
    # Communication (costmodel.comm through comm_bridge; calls queued inside the step)
    link = comm_bridge.Links.from_specs(spec, node, eff, queued=True)
    act_bytes = tokens_mb * model.hidden * 2.0
    tp_layer = 0.0
    if par.tp > 1:
        # Megatron TP: 2 all-reduces forward + 2 backward per layer (Shoeybi et al. 2019, sec. 3),
        # + 2 when full recompute re-runs the forward; with sequence parallelism all-gather +
        # reduce-scatter pairs of the same volume (Korthikanti et al. 2022, sec. 4.2.2). On the
        # critical path: Megatron-LM issues them synchronously between the GEMMs.
        per = tp_layer_comm_s(link.collective_time_s, model, act_bytes, par.tp, par.expert_tp, link.devices_per_node,
                              par.sequence_parallel, job.recompute, parallel_block=model.parallel_block)
        if job.tp_comm_overlap:
            if not par.sequence_parallel:
                raise InputError("--tp-comm-overlap needs sequence parallelism (Megatron-LM's arguments.py), "
                                 "or no tensor parallelism", field="tp_comm_overlap")
            per = float(steptime.tp_overlap_exposed_s(per, g_f + g_b + recompute_f_gemm, par.tp))
        tp_layer = per
    a2a = f_step = b_step = 0.0
    if par.ep > 1 and model.moe is not None and model.moe_layers > 0:
        a2a = steptime.ep_all_to_all_s(link.collective_time_s, model, act_bytes, par.tp, par.ep, par.expert_tp,
                                       link.devices_per_node, job.moe_enable_deepep)
    if par.cp > 1:
        f_step, b_step = steptime.cp_kv_exchange_s(link.p2p_time_s, model, mb, seq_dev, par.tp, par.cp,
                                                   link.devices_per_node)
    p2p_mb = 0.0
    if par.pp > 1:
        # activation forward + gradient backward per micro-batch and model chunk; Megatron's
        # scatter/gather sends 1/t of it per tensor-parallel rank (Narayanan et al. 2021, sec. 4.1).
        msg = steptime.pp_message_bytes(act_bytes, par.tp, job.framework, par.sequence_parallel)
        p2p_mb = 2.0 * par.interleave * link.p2p_time_s(msg, crosses_node=link.pp_crosses_node(par))
    st = state_bytes_per_param(job, model.hidden)
    grad_bytes = dp_grad_bytes_per_param(job) * sp.total
    dp_world = par.dp * par.cp
    fsdp_exposed, op_t, rs_t, ovl = _data_parallel_terms(link, eff, model, job, par, sp, st, grad_bytes,
                                                         (g_f, g_b, a_f, a_b, e_f, e_b), recompute_f, layers, n_micro)
    # Optimizer over the shard this device updates (optimizer_bytes_per_param).
    o_div = dp_world if par.zero_stage >= 1 else 1
    opt_bytes = optimizer_bytes_per_param(job, st) * sp.total / o_div
    optimizer_t = memory_op_s(eff, opt_bytes) * kf
    offload_t, optimizer_t, lib = _offload_terms(spec, node, eff, job, par, sp, st, (g_f, g_b, a_f, a_b, e_f, e_b),
                                                 recompute_f, layers, n_micro, head_f + head_b, optimizer_t, notes)
    host_fn = None
    if job.framework == "pytorch" and host_s_per_layer > 0:
        def host_fn(gpu_total):
            host, exposed = (float(x) for x in host_exposed_s(
                model, job, n_micro, layers, job.recompute == "full", par.zero_stage >= 3 and par.dp * par.cp > 1,
                gpu_total, experts_fp32, host_s_per_layer))
            if cpu.is_cpu(spec):  # the same cores dispatch and compute: nothing overlaps
                return host
            if host > gpu_total:
                notes.append(f"host-bound: eager PyTorch dispatch ({host * 1e3:.1f} ms) outlasts the GPU work "
                             f"({gpu_total * 1e3:.1f} ms); host speed differs by machine (--host-time-factor, now "
                             f"{job.host_time_factor:g}), and a larger micro-batch or CUDA graphs would hide it")
            return exposed

    full = job.recompute == "full"
    b = steptime.compose_builtin(steptime.BuiltinTerms(
        n_micro=n_micro, layers=layers, pp=par.pp, interleave=par.interleave, cp=par.cp, full=full,
        g_f=g_f, g_b=g_b, a_f=a_f, a_b=a_b, e_f=e_f, e_b=e_b,
        recompute_g=recompute_f_gemm, recompute_a=recompute_f_attn, recompute_e=recompute_f_ew, head_f=head_f, loss_s=loss_t, tp_layer_s=tp_layer, ep_call_s=a2a,
        moe_layers=model.moe_layers * layers / model.layers if model.moe is not None else 0.0,
        cp_f_step_s=f_step, cp_b_step_s=b_step, p2p_mb_s=p2p_mb, dp_op_s=op_t, dp_rs_s=rs_t, dp_overlap=ovl,
        zero=par.zero_stage, fsdp_exposed_s=fsdp_exposed,
        grad_accum_s=float(grad_accum_s(eff, job, grad_accum_params(sp.total, par.zero_stage, par.pp, dp_world), n_micro)),
        optimizer_s=optimizer_t, offload_s=offload_t), host_fn)
    ep_comm, cp_comm = float(b.ep_comm_s), float(b.cp_comm_s)
    total = float(b.total_s)
    step = StepTime(float(b.compute_s), float(b.attention_s), float(b.elementwise_s), float(b.host_overhead_s),
                    float(b.tp_comm_s), float(b.dp_comm_exposed_s), fsdp_exposed, float(b.pp_comm_s), float(b.bubble_s),
                    optimizer_t, total, ep_comm_s=ep_comm, cp_comm_s=cp_comm, offload_s=offload_t)
    terms = stall = None
    if prof.step_model == "composed":
        step, terms, stall = _composed_step(prof, model, spec, job, par, node, eff, dtype, (g_f, g_b, a_f, a_b, e_f, e_b),
                                            head_f + head_b, loss_t, optimizer_t, st, sp, layers, step, notes)
        total = step.total_s

    mem = train_memory(model, job, par)
    gb = job.global_batch_for(par)
    tf = train_step_flops(model, gb, job.seq_len, job.recompute, job.attention, job.recompute_fraction,
                          prof.settings.selective_recompute)
    devices = par.devices
    peak = spec.peak(dtype)
    mfu = tf.model_flops / total / (devices * peak)
    hfu = tf.hardware_flops / total / (devices * peak)
    req = required_device_bytes(mem.peak_bytes)
    cap = spec.memory.capacity_bytes
    host = None
    if mem.offloaded_cpu_bytes or mem.offloaded_nvme_bytes:
        host = offload.host_capacity(mem.offloaded_cpu_bytes, mem.offloaded_nvme_bytes, devices, spec, node, lib)
        notes.extend(host.lines())
    return TrainEstimate(
        model_id=model.id, hardware=spec.id, devices=devices, parallel=par.model_dump(), job=job.model_dump(),
        memory=mem, required_bytes=req, capacity_bytes=cap, fits=req <= cap and (host is None or host.fits), step=step,
        tokens_per_step=gb * job.seq_len, tokens_per_s=gb * job.seq_len / total,
        model_flops_per_step=tf.model_flops, hardware_flops_per_step=tf.hardware_flops, mfu=mfu, hfu=hfu,
        tflops_per_device=tf.model_flops / total / devices / 1e12, efficiency_source=getattr(eff, "source", "?"),
        notes=notes, framework=prof.id, terms=terms, host=host.to_dict() if host is not None else None,
        pipeline_stall=stall,
    )


def stall_note(p: float, risk_s: float, included_s: float, unstalled_s: float, nodes: float) -> str | None:
    """The cross-node pipeline stall risk of a composed estimate (steptime.pipeline_stall), in words."""
    if risk_s <= 0 or p < 0.05:
        return None
    which = (f"the estimate includes it ({unstalled_s:.3g} s without)" if included_s > 0
             else f"the estimate leaves it out ({unstalled_s + risk_s:.3g} s with it)")
    return (f"pipeline stall risk: on this cluster {p:.0%} of runs over {nodes:.0f} nodes stall their cross-node "
            f"pipeline sends, +{risk_s:.3g} s per step; {which}")


def estimate_mfu(model: ModelConfig, spec: AcceleratorSpec, devices: int) -> float:
    """A representative MFU for the scaling-law planner: a 4k-sequence amp-bf16 Megatron-style
    run with tp=8 inside a node and data parallel across, micro-batch 1."""
    tp = 8 if devices >= 8 else 1
    par = Parallel(tp=tp, dp=max(1, devices // tp), sequence_parallel=tp > 1)
    job = TrainJob(micro_batch=1, seq_len=4096, global_batch=max(1, devices // tp) * 16, framework="megatron",
                   recompute="selective")
    return estimate_train(model, spec, job, par).mfu
