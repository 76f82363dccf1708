"""Training step time on a device / node / cluster: compute (roofline per operator), exposed
communication, pipeline bubble, optimizer and host overhead, then run totals (days, device-hours,
energy, cost) and MFU / HFU.

MFU = model FLOPs per second / (devices x peak), HFU likewise with hardware FLOPs
(Chowdhery et al. 2022, appendix B; Korthikanti et al. 2022, sec. 6).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from . import comm_bridge
from .arch import GATED, ModelConfig
from .flops import attention_core_flops, layer_gemms, train_step_flops
from .memory import TrainMemory, required_device_bytes, stage_params, state_bytes_per_param, train_memory
from .roofline import attention_op, efficiency_for, gemm_op, memory_op
from .specs import AcceleratorSpec, NodeSpec
from .workload import DTYPE_BYTES, Parallel, TrainJob

# Host-side dispatch of eager PyTorch (Python + dispatcher + autograd + autocast, ~ 150 ops per
# decoder layer forward+backward). Fitted on the public H100 file's 24 training steps together
# with the GPU roofline (scripts: costmodel/validate.py; mean error 5% on that file):
# host time per step = max(0, L x HOST_S_PER_LAYER x (1 + HOST_RECOMPUTE_FACTOR [full]) + HOST_INTERCEPT_S)
# and step = (gpu^p + host^p)^(1/p): a smooth max, since the host runs ahead of the GPU except
# where one of them starves the other. The intercept is negative: the first layers' dispatch
# overlaps the previous step's optimizer kernels. Host-specific: override for another host.
HOST_S_PER_LAYER = 5.39e-3
HOST_RECOMPUTE_FACTOR = 0.567
HOST_INTERCEPT_S = -26.3e-3
HOST_GPU_COMBINE_P = 8.56
# Fraction of the data-parallel gradient reduction hidden behind backward compute when
# bucketed (PyTorch DDP overlaps all but the last bucket; Li et al. 2020, VLDB, sec. 3.2.3).
DP_OVERLAP_FRACTION = 0.8
# Average power as a fraction of TDP during training (H100 at ~ 0.75-0.85 of 700 W under
# sustained GEMM load: NVIDIA DGX H100 system power 10.2 kW max for 8 GPUs + host).
POWER_FRACTION_OF_TDP = 0.8
# Data-centre PUE (Patterson et al. 2021, "Carbon emissions and large neural network training": 1.1 for
# Google, ~1.5 industry average); used for energy at the wall.
DEFAULT_PUE = 1.1


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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["memory"] = self.memory.to_dict()
        return d


def elementwise_bytes_per_token(model: ModelConfig, job: TrainJob, amp: bool) -> float:
    """HBM bytes moved per token and layer by non-matmul kernels in one forward pass.

    Eager PyTorch (HF blocks under autocast, fp32 residual stream): RMSNorm 7 kernels (~28h each
    norm), 5 input casts fp32->bf16 (6h each), rotary on q and k (~32 bytes per element), SDPA
    casts, two fp32 residual adds (10h each), SwiGLU silu + mul (10f). Pure bf16 roughly halves
    the fp32 terms. Megatron-style fused kernels (fused norm, bias-dropout-add, swiglu, rope):
    ~ 30h + 8f.
    """
    h, f, kv = model.hidden, model.ffn, model.kv_dim
    mlp = 10.0 * f if model.activation in GATED else 8.0 * f
    if model.moe:
        mlp = mlp / f * model.moe.expert_ffn * model.moe.top_k + 16.0 * h * model.moe.top_k  # + permute
    if job.framework != "pytorch":
        return 30.0 * h + 0.8 * mlp
    if job.precision == "bf16":
        return 90.0 * h + 20.0 * kv + mlp
    if job.precision == "fp32":
        return 110.0 * h + 40.0 * kv + 2.0 * mlp
    return 148.0 * h + 38.0 * kv + mlp


def _layer_times(eff, model: ModelConfig, job: TrainJob, par: Parallel, mb: int, seq_dev: int, dtype: str):
    """Forward and backward GPU time of one decoder layer per micro-batch on one device."""
    tokens = mb * seq_dev
    tp = par.tp
    fwd = bwd = 0.0
    gemm_fwd = gemm_bwd = 0.0
    n_moe = model.moe_layers
    n_dense = model.dense_layers
    for moe_layer, weight in ((False, n_dense / model.layers), (True, n_moe / model.layers)):
        if weight == 0:
            continue
        for g in layer_gemms(model, tokens, moe_layer):
            m = g.m
            k, n = g.k, g.n
            if g.name in ("qkv", "mlp_in", "expert_in", "shared_in", "q", "q_up", "kv_up"):
                n = max(1, n // tp)
            elif g.name in ("attn_out", "mlp_out", "expert_out", "shared_out"):
                k = max(1, k // tp)
            count = g.count
            if g.name in ("expert_in", "expert_out"):
                count = g.count / par.ep
                m = g.m * par.ep if par.ep > 1 else g.m
            # HF blocks run q, k, v (and gate, up) as separate matmuls
            splits = 3 if (g.name == "qkv" and job.framework == "pytorch") else (
                2 if (g.name in ("mlp_in",) and model.activation in GATED and job.framework == "pytorch") else 1)
            for _ in range(splits):
                ns = n // splits if g.name != "qkv" else None
                if g.name == "qkv":
                    for part in (model.q_dim, model.kv_dim, model.kv_dim):
                        part_n = max(1, part // tp)
                        f_ = gemm_op(eff, g.name, m, k, part_n, dtype, count).time_s
                        b_ = gemm_op(eff, g.name + "_dgrad", m, part_n, k, dtype, count).time_s + gemm_op(
                            eff, g.name + "_wgrad", k, m, part_n, dtype, count).time_s
                        gemm_fwd += weight * f_
                        gemm_bwd += weight * b_
                    break
                f_ = gemm_op(eff, g.name, m, k, ns, dtype, count).time_s
                b_ = gemm_op(eff, g.name + "_dgrad", m, ns, k, dtype, count).time_s + gemm_op(
                    eff, g.name + "_wgrad", k, m, ns, dtype, count).time_s
                gemm_fwd += weight * f_
                gemm_bwd += weight * b_
    core = attention_core_flops(model, mb, seq_dev, causal=True) / tp
    heads = max(1, model.heads // tp)
    att_f = attention_op(eff, "attn", mb, heads, seq_dev, model.d_head, core, False).time_s
    att_b = attention_op(eff, "attn_bwd", mb, heads, seq_dev, model.d_head, 3.5 * core, True).time_s - att_f
    if job.attention == "standard":
        # materialised scores: write + read the bf16 b*h*s*s matrix several times (softmax, PV)
        sc = 2.0 * mb * heads * seq_dev * seq_dev
        att_f += memory_op(eff, "scores", 4 * sc).time_s
        att_b += memory_op(eff, "scores_bwd", 8 * sc).time_s
    amp = job.precision in ("amp-bf16", "amp-fp16", "fp8")
    ew = elementwise_bytes_per_token(model, job, amp) * tokens / (tp if par.sequence_parallel or tp > 1 else 1)
    ew_f = memory_op(eff, "elementwise", ew).time_s
    ew_b = 2.0 * ew_f
    return gemm_fwd, gemm_bwd, att_f, att_b, ew_f, ew_b


def estimate_train(model: ModelConfig, spec: AcceleratorSpec, job: TrainJob, par: Parallel,
                   node: NodeSpec | None = None, calibration: str | None = None,
                   host_s_per_layer: float = HOST_S_PER_LAYER) -> TrainEstimate:
    eff = efficiency_for(spec, calibration)
    dtype = {"amp-bf16": "bf16", "bf16": "bf16", "amp-fp16": "fp16", "fp32": "tf32", "fp8": "fp8"}[job.precision]
    if spec.peak_flops.get(dtype) is None:
        dtype = "bf16" if spec.peak_flops.bf16 else "fp16"
    notes: list[str] = []
    seq_dev = max(1, job.seq_len // par.cp)
    mb = job.micro_batch
    n_micro = job.grad_accum_steps(par)
    sp = stage_params(model, par)
    layers = sp.layers
    g_f, g_b, a_f, a_b, e_f, e_b = _layer_times(eff, model, job, par, mb, seq_dev, dtype)
    tokens_mb = mb * seq_dev
    head_f = gemm_op(eff, "lm_head", tokens_mb, model.hidden, max(1, model.vocab // par.tp), dtype).time_s
    head_b = 2 * head_f
    loss_bytes = tokens_mb * model.vocab / par.tp * (2 + 4 + 4 + 4) * (2 if job.framework == "pytorch" else 1)
    loss_t = memory_op(eff, "loss", loss_bytes).time_s * (1.0 + 1.5)  # forward + backward passes
    recompute_f = 0.0
    if job.recompute == "full":
        recompute_f = g_f + a_f + e_f
    elif job.recompute == "selective":
        recompute_f = a_f
    per_layer = g_f + g_b + a_f + a_b + e_f + e_b + recompute_f
    gpu_mb = layers * per_layer + head_f + head_b + loss_t  # the last stage also runs the head
    # Host dispatch: eager PyTorch issues every op from Python; if the GPU work per op is short,
    # the host is the bottleneck. Megatron-style fused kernels make the host negligible.
    t_mb = gpu_mb
    host_exposed = 0.0
    # Communication
    link = comm_bridge.Links.from_specs(spec, node, eff)
    act_bytes = tokens_mb * model.hidden * 2.0
    tp_comm = 0.0
    if par.tp > 1:
        # Megatron TP: 2 all-reduces forward + 2 backward per layer (Shoeybi et al. 2019, sec. 3);
        # with sequence parallelism all-gather + reduce-scatter pairs of the same total volume.
        per = link.collective_time_s("all_reduce", act_bytes, par.tp, intra=True)
        n_coll = 4 + (2 if job.recompute == "full" else 0)
        tp_comm = layers * n_coll * per * n_micro
    pp_comm = 0.0
    if par.pp > 1:
        p2p = link.p2p_time_s(act_bytes / (par.tp if par.sequence_parallel else 1), crosses_node=link.pp_crosses_node(par))
        pp_comm = 2 * n_micro * p2p * par.interleave
    bubble = 0.0
    if par.pp > 1:
        # 1F1B bubble (p - 1) / (v m) of the ideal time (Narayanan et al. 2021, sec. 2.2)
        bubble = (par.pp - 1) / par.interleave * (t_mb + (tp_comm / n_micro if n_micro else 0))
    st = state_bytes_per_param(job, model.hidden)
    grad_bytes = 4.0 * sp.total if job.framework == "pytorch" and job.precision != "bf16" else 2.0 * sp.total
    dp_exposed = fsdp_exposed = 0.0
    dp_world = par.dp * par.cp
    if dp_world > 1:
        if par.zero_stage >= 3:
            # FSDP/ZeRO-3: all-gather bf16 params in forward and backward, reduce-scatter grads.
            ag = link.collective_time_s("all_gather", 2.0 * sp.total, dp_world, intra=link.dp_intra(par), per_node=link.dp_ranks_per_node(par))
            rs = link.collective_time_s("reduce_scatter", grad_bytes, dp_world, intra=link.dp_intra(par), per_node=link.dp_ranks_per_node(par))
            total = (2 * ag + rs) * n_micro
            compute = n_micro * t_mb
            fsdp_exposed = max(total - compute * DP_OVERLAP_FRACTION, total * (1 - DP_OVERLAP_FRACTION))
        else:
            op_t = link.collective_time_s("all_reduce", grad_bytes, dp_world, intra=link.dp_intra(par), per_node=link.dp_ranks_per_node(par))
            if par.zero_stage >= 1 and job.framework != "pytorch":
                op_t = link.collective_time_s("reduce_scatter", grad_bytes, dp_world, intra=link.dp_intra(par), per_node=link.dp_ranks_per_node(par)) + \
                    link.collective_time_s("all_gather", st.weights * sp.total, dp_world, intra=link.dp_intra(par), per_node=link.dp_ranks_per_node(par))
            backward_time = layers * (g_b + a_b + e_b)
            dp_exposed = max(op_t - DP_OVERLAP_FRACTION * backward_time, (1 - DP_OVERLAP_FRACTION) * op_t)
    # Optimizer: AdamW reads param, grad, m, v and writes param, m, v (Loshchilov & Hutter 2019);
    # fused: one pass over 7 tensors of the state dtype (+ master where separate).
    o_div = dp_world if par.zero_stage >= 1 else 1
    opt_bytes = (st.weights * 2 + st.grads + st.optimizer * 2 + st.master * 2) * sp.total / o_div
    if not job.fused_optimizer:
        opt_bytes *= 2.0
    optimizer_t = memory_op(eff, "optimizer", opt_bytes).time_s
    if job.offload_optimizer != "none":
        h2d = eff.h2d_bytes_per_s(True)
        optimizer_t += 2 * grad_bytes / o_div / h2d
        notes.append("optimizer offloaded: gradients down and parameters up over the host link each step")
    compute_s = n_micro * layers * (g_f + g_b) + n_micro * (head_f + head_b) + (n_micro * layers * (g_f if job.recompute == "full" else 0.0))
    attention_s = n_micro * layers * (a_f + a_b + (a_f if job.recompute != "none" else 0.0))
    elementwise_s = n_micro * (layers * (e_f + e_b + (e_f if job.recompute == "full" else 0.0)) + loss_t)
    gpu_total = compute_s + attention_s + elementwise_s + optimizer_t
    if job.framework == "pytorch" and host_s_per_layer > 0:
        host = n_micro * layers * host_s_per_layer * (1 + HOST_RECOMPUTE_FACTOR * (job.recompute == "full")) + HOST_INTERCEPT_S
        host = max(0.0, host)
        p = HOST_GPU_COMBINE_P
        host_exposed = (gpu_total**p + host**p) ** (1 / p) - gpu_total
    total = compute_s + attention_s + elementwise_s + host_exposed + tp_comm + dp_exposed + fsdp_exposed + pp_comm + bubble + optimizer_t
    step = StepTime(compute_s, attention_s, elementwise_s, host_exposed, tp_comm, dp_exposed, fsdp_exposed,
                    pp_comm, bubble, optimizer_t, total)

    mem = train_memory(model, job, par)
    gb = job.global_batch_for(par)
    tf = train_step_flops(model, gb, job.seq_len, job.recompute)
    devices = par.devices
    peak = spec.peak(dtype)
    mfu = tf.model_flops / total / (devices * peak)
    hfu = tf.hardware_flops / total / (devices * peak)
    req = required_device_bytes(mem.peak_bytes)
    cap = spec.memory.capacity_bytes
    return TrainEstimate(
        model_id=model.id, hardware=spec.id, devices=devices, parallel=par.model_dump(), job=job.model_dump(),
        memory=mem, required_bytes=req, capacity_bytes=cap, fits=req <= cap, step=step,
        tokens_per_step=gb * job.seq_len, tokens_per_s=gb * job.seq_len / total,
        model_flops_per_step=tf.model_flops, hardware_flops_per_step=tf.hardware_flops, mfu=mfu, hfu=hfu,
        tflops_per_device=tf.model_flops / total / devices / 1e12, efficiency_source=getattr(eff, "source", "?"),
        notes=notes,
    )


def estimate_mfu(model: ModelConfig, spec: AcceleratorSpec, devices: int) -> float:
    """A representative MFU for the scaling-law planner: a 4k-sequence amp-bf16 Megatron-style
    run with tp=8 inside a node and data parallel across, micro-batch 1."""
    tp = 8 if devices >= 8 else 1
    par = Parallel(tp=tp, dp=max(1, devices // tp), sequence_parallel=tp > 1)
    job = TrainJob(micro_batch=1, seq_len=4096, global_batch=max(1, devices // tp) * 16, framework="megatron",
                   recompute="selective")
    return estimate_train(model, spec, job, par).mfu
