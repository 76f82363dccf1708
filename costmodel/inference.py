"""Inference time and memory: prefill (TTFT), decode per token (TPOT), throughput versus batch.

Decode is a read of every active weight plus the KV cache per step, against bandwidth, versus the
matmul work of `batch` tokens (Pope et al. 2022, "Efficiently scaling transformer inference",
sec. 2; Kwon et al. 2023 for the paged KV cache).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

from . import fitted
from .arch import GATED, ModelConfig
from .calibration import smoothmax
from .cpu import attention_times as cpu_attention_times, is_cpu, op_overhead_s as cpu_op_overhead_s, stream_s as cpu_stream_s
from .dispatch import infer_dispatch_ratio
from .flops import attention_core_flops, layer_gemms
from .memory import InferMemory, decode_memory, decode_peak_bytes, kv_cache_bytes, required_device_bytes
from .roofline import (EAGER_CAT_BYTES_PER_S_PER_SM, KERNEL_FLOOR_S, attention_op_s, eager_elementwise_bytes_per_s,
                       efficiency_for, gemm_op_s, gemm_ops_s, gpu_units, memory_op_s, prefetch_gemms, recording)
from .specs import AcceleratorSpec, NodeSpec
from .training import elementwise_bytes_per_token
from .workload import DTYPE_BYTES, InferJob, TrainJob

# Kernels per decoder layer in a decode step besides the matmuls, HF-style Llama block captured
# in one CUDA graph: 2 RMSNorms of 7 ops, rotary on q and k (6), KV-cache writes (2), attention
# (1), residual adds (2), silu and mul (2) = 27, ~ 24 once fused qkv / gate-up remove splits.
DECODE_SMALL_KERNELS_PER_LAYER = 24
# Kernel-to-kernel time of back-to-back graph-launched kernels on Hopper (~ 2 us; CUDA graphs
# remove the CPU launch but not the grid launch and drain); fitted with the count above
# (data/fitted/kernels.yaml: value, bounds and what it was fitted on).
GRAPH_KERNEL_FLOOR_S = fitted.value("fitted/kernels.yaml", "graph_kernel_floor_s")
# Eager (no CUDA graph) Hugging Face forward, one call: host time = EAGER_HOST_CALL_S +
# layers x EAGER_HOST_S_PER_LAYER x (the layer's kernels / a llama layer's: costmodel.dispatch),
# plus EAGER_GENERATE_TOKEN_S per decoded token for generate()'s own work. The host and the GPU
# overlap within a call: time = (gpu^p + host^p)^(1/p), p = EAGER_COMBINE_P. Fitted on one H100
# host (data/frameworks/pytorch.yaml infer_*: value, bounds, the fit and its held-out errors);
# host-specific: --host-time-factor rescales them.
EAGER_HOST_CALL_S = fitted.value("frameworks/pytorch.yaml", "infer_host_call_s")
EAGER_HOST_S_PER_LAYER = fitted.value("frameworks/pytorch.yaml", "infer_host_s_per_layer")
EAGER_GENERATE_TOKEN_S = fitted.value("frameworks/pytorch.yaml", "infer_generate_token_s")
EAGER_COMBINE_P = fitted.value("frameworks/pytorch.yaml", "infer_host_gpu_combine_p")
# HF's DynamicCache appends each step's keys and values with torch.cat: the whole cache is read
# and written once more per step besides attention's read (data/frameworks/pytorch.yaml).
DYNAMIC_CACHE_TRAFFIC = fitted.value("frameworks/pytorch.yaml", "dynamic_cache_traffic")


@dataclass
class DecodeEstimate:
    step_s: float
    weights_s: float
    kv_s: float
    small_kernels_s: float
    host_s: float
    tokens_per_s: float
    bound: str


def _gemm_dtype(job: InferJob, spec: AcceleratorSpec) -> str:
    d = job.compute_dtype
    if is_cpu(spec) and job.weight_dtype == "fp32":  # an fp32 model on a CPU computes in fp32
        return "fp32"
    return d if spec.peak_flops.get(d) else "bf16"


def _tp_shape(name: str, k: int, n: int, tp: int) -> tuple[int, int]:
    """Megatron TP split of a layer matmul: column-parallel (qkv, MLP in) split n, row-parallel k."""
    if name in ("qkv", "mlp_in", "expert_in", "shared_in"):
        return k, max(1, n // tp)
    return max(1, k // tp), n


def expected_active_experts(experts: int, top_k: int, tokens: float) -> float:
    """Expected number of distinct experts ``tokens`` tokens route to when each picks ``top_k`` of
    ``experts`` uniformly at random (balanced routing, as auxiliary losses / bias terms aim at):
    an expert is missed by one token with probability 1 - k/E, by all with (1 - k/E)^tokens, so
    E * (1 - (1 - k/E)^tokens) (occupancy of E bins; Fedus et al. 2022 sec. 2.2 for the balance)."""
    if tokens <= 0:
        return 0.0
    return experts * (1.0 - (1.0 - top_k / experts) ** tokens)


# Rows of one expert's block in a grouped MoE GEMM: each expert's routed tokens are padded to a
# multiple of it (16, the smallest BLOCK_SIZE_M of Triton fused_moe's configs, vllm/model_executor/
# layers/fused_moe/configs/*.json), so a decode step does at least 16 rows of math per active expert.
MOE_BLOCK_ROWS = 16


def moe_expert_gemms_s(eff, model: ModelConfig, tokens: float, tp: int, ep: int, dtype: str, elem_bytes: float,
                       graph: bool, interleaved: bool = False, math_efficiency: float = 1.0) -> float:
    """One MoE layer's routed-expert GEMMs (gate/up and down) on one device as serving engines run
    them: one grouped GEMM kernel each (vLLM / SGLang fused_moe, TensorRT-LLM's MoE plugin, DeepGEMM
    grouped), over the experts this device holds that the batch activates, with no per-expert launch.
    Expert parallelism over ``ep`` devices places experts / ep whole experts on each; the rest of the
    tensor-parallel group (tp / ep) splits each expert's intermediate size. A grouped GEMM streams the
    activated experts' weights once and does the math of all routed rows, each expert's rows padded
    to MOE_BLOCK_ROWS: max(bytes at the streaming rate, flops at a large GEMM's rate of that width),
    plus one kernel's fixed time (the 16-bit / fp8 curves' time at one row less its streaming time).
    The grouped kernels reach ``math_efficiency`` of that rate (an engine's fitted
    ``moe_math_efficiency``, data/engines/*.yaml; 1 without one)."""
    moe = model.moe
    mats_in = 2 if model.activation in GATED else 1
    local = moe.experts / ep
    shard = max(1, tp // ep)
    f = max(1, moe.expert_ffn // shard)
    # routed rows reaching this device: all token-expert pairs / ep (balanced)
    rows = tokens * moe.top_k / ep
    active = min(local, expected_active_experts(moe.experts, moe.top_k, tokens) / ep)
    t = 0.0
    for k, n in ((model.hidden, mats_in * f), (f, model.hidden)):
        act = 1.0 if dtype == "fp8" else 2.0
        wbytes = active * elem_bytes * k * n
        nbytes = wbytes + rows * k * act + rows * n * 2.0
        t_mem = nbytes / eff.mem_bytes_per_s(nbytes)
        padded = active * math.ceil(rows / active / MOE_BLOCK_ROWS) * MOE_BLOCK_ROWS if active > 0 else 0.0
        m = max(4096, int(round(padded)))  # the math at a large GEMM's rate, as gemm_op's weight-only path
        t_math = 2.0 * padded * k * n / (eff.gemm_flops_per_s(m, n, k, dtype) * math_efficiency)
        one = gemm_op_s(eff, 1, k, n, dtype, elem_bytes=elem_bytes, graph=graph, interleaved=interleaved)
        one_bytes = elem_bytes * k * n + 2.0 * (k + n)
        fixed = max(0.0, one - one_bytes / eff.mem_bytes_per_s(one_bytes))
        t += max(t_mem, t_math) + fixed
    return t


ATTENTION_GEMMS = ("q_down", "q_up", "q", "kv_down", "kv_up", "qkv", "attn_out")


def attention_params(model: ModelConfig) -> float:
    """Parameters of the attention projections of all layers (layer_gemms' attention matmuls)."""
    return model.layers * sum(g.k * g.n * g.count for g in layer_gemms(model, 1, False) if g.name in ATTENTION_GEMMS)


def decode_step(model: ModelConfig, spec: AcceleratorSpec, job: InferJob, context: int, tp: int = 1,
                calibration: str | None = None, eff=None, ep: int = 1, moe_math_efficiency: float = 1.0,
                dp_attention: bool = False) -> DecodeEstimate:
    """One decode step: `batch` new tokens, each attending to `context` cached positions. MoE layers'
    routed experts run as grouped GEMMs over the experts the batch activates (moe_expert_gemms_s),
    over ``ep``-way expert parallelism. ``dp_attention``: data-parallel attention over the tp ranks
    (SGLang's --enable-dp-attention): each rank runs the attention of its own 1/tp of the sequences
    with the whole attention weights (replicated) and reads only their KV cache, whole per token;
    the MLP / MoE layers stay tensor (and expert) parallel over all tokens, gathered from the ranks
    and scattered back (all-gather + reduce-scatter: the bytes of the all-reduce they replace)."""
    eff = eff or efficiency_for(spec, calibration)
    if is_cpu(spec):  # no CUDA graph on a CPU: every op is a call (costmodel.cpu)
        job = job.model_copy(update={"cuda_graph": False})
    b = job.batch
    wbytes = DTYPE_BYTES[job.weight_dtype]
    dtype = _gemm_dtype(job, spec)
    weights_t = _decode_weights_s(eff, model, b, tp, ep, dtype, wbytes, job.cuda_graph, dp_attention, moe_math_efficiency)
    if dp_attention:  # this rank's 1/tp of the sequences, whole KV per token
        kv = kv_cache_bytes(model, b, context, job.kv_dtype, 1) / tp / model.layers
    else:
        kv = kv_cache_bytes(model, b, context, job.kv_dtype, tp) / model.layers
    if not job.cuda_graph and not is_cpu(spec):  # a CPU decode is taken with a static cache
        kv *= DYNAMIC_CACHE_TRAFFIC
    kv_t = model.layers * memory_op_s(eff, kv, graph=job.cuda_graph)
    floor = GRAPH_KERNEL_FLOOR_S if job.cuda_graph else KERNEL_FLOOR_S
    if is_cpu(spec):  # the cache streamed from DRAM; a small op costs one call (costmodel.cpu)
        kv_t = model.layers * cpu_stream_s(eff, kv)
        floor = cpu_op_overhead_s(eff)
    small = (model.layers * DECODE_SMALL_KERNELS_PER_LAYER + 3) * floor
    gpu = weights_t + kv_t + small
    # eager host time: Hugging Face generate on a GPU's host (EAGER_*); on a CPU the calls above are the step
    host = 0.0 if (job.cuda_graph or is_cpu(spec)) else (eager_host_s(model) + EAGER_GENERATE_TOKEN_S) * eager_host_factor(eff, job)
    step = _combine(gpu, host)
    bound = "host" if host > gpu else ("kv-cache bandwidth" if kv_t > weights_t else "weights bandwidth / matmul")
    return DecodeEstimate(step, weights_t, kv_t, small, host, b / step, bound)


# Decode steps' weight-streaming and matmul time, remembered per efficiency model, model and the
# arguments it depends on (not the context): a sweep over prompt lengths times the same batches.
_DECODE_WEIGHTS: dict = {}


def _decode_weights_s(eff, model: ModelConfig, b, tp: int, ep: int, dtype: str, wbytes: float, graph: bool,
                      dp_attention: bool, moe_math_efficiency: float) -> float:
    """decode_step's GEMMs (every layer's, MoE experts as grouped GEMMs under a graph, and the logits)."""
    if recording(eff):
        return _decode_weights(eff, model, b, tp, ep, dtype, wbytes, graph, dp_attention, moe_math_efficiency)
    try:
        key = (id(eff), id(model), type(b), b, tp, ep, dtype, wbytes, graph, dp_attention, moe_math_efficiency)
        hit = _DECODE_WEIGHTS.get(key)
    except TypeError:  # an argument that does not hash: computed
        return _decode_weights(eff, model, b, tp, ep, dtype, wbytes, graph, dp_attention, moe_math_efficiency)
    if hit is None or hit[0] is not eff or hit[1] is not model:
        if len(_DECODE_WEIGHTS) > 4096:
            _DECODE_WEIGHTS.clear()
        hit = _DECODE_WEIGHTS[key] = (eff, model, _decode_weights(eff, model, b, tp, ep, dtype, wbytes, graph,
                                                                  dp_attention, moe_math_efficiency))
    return hit[2]


def _decode_weights(eff, model: ModelConfig, b, tp: int, ep: int, dtype: str, wbytes: float, graph: bool,
                    dp_attention: bool, moe_math_efficiency: float) -> float:
    weights_t = 0.0
    for moe_layer, n in ((False, model.dense_layers), (True, model.moe_layers)):
        if n == 0:
            continue
        for g in layer_gemms(model, b, moe_layer):
            count, m = g.count, g.m
            if g.name in ("expert_in", "expert_out"):
                if graph:  # a fused engine: grouped GEMMs
                    if g.name == "expert_in":
                        weights_t += n * moe_expert_gemms_s(eff, model, b, tp, ep, dtype, wbytes, True,
                                                            math_efficiency=moe_math_efficiency)
                    continue
                # eager Hugging Face: a loop over the experts touched, one GEMM each
                touched = min(model.moe.experts, b * model.moe.top_k)
                count, m = touched, max(1.0, b * model.moe.top_k / touched)
            if dp_attention and g.name in ATTENTION_GEMMS:  # this rank's share of the tokens, whole weights
                weights_t += n * gemm_op_s(eff, max(1.0, m / tp), g.k, g.n, dtype, count, elem_bytes=wbytes,
                                           graph=graph)
                continue
            k, nn = _tp_shape(g.name, g.k, g.n, tp)
            weights_t += n * gemm_op_s(eff, m, k, nn, dtype, count, elem_bytes=wbytes, graph=graph)
    weights_t += gemm_op_s(eff, b, model.hidden, max(1, model.vocab // tp), dtype, elem_bytes=wbytes, graph=graph)
    return weights_t


def eager_host_factor(eff, job: InferJob) -> float:
    """Scale on the eager host time: the job's host_time_factor (the user's knob) times the machine's
    own, where its calibration measured one (``eager_infer_host_factor`` of the overlay)."""
    return job.host_time_factor * eff.eager_infer_host_factor


def _prefill_layer_gemms(model: ModelConfig, tokens: int, tp: int) -> list:
    """(layers of the kind, GEMM, k, n under tp) of every GEMM of a prefill's decoder layers, once per
    model (frozen), token count and tp."""
    try:
        key = (id(model), type(tokens), tokens, tp)
        hit = _PREFILL_GEMMS.get(key)
    except TypeError:  # (not hashable: computed)
        key = hit = None
    if hit is None or hit[0] is not model:
        out = [(n, g, *_tp_shape(g.name, g.k, g.n, tp))
               for moe_layer, n in ((False, model.dense_layers), (True, model.moe_layers)) if n != 0
               for g in layer_gemms(model, tokens, moe_layer)]
        if key is None:
            return out
        if len(_PREFILL_GEMMS) > 4096:
            _PREFILL_GEMMS.clear()
        hit = _PREFILL_GEMMS[key] = (model, out)
    return hit[1]


_PREFILL_GEMMS: dict = {}  # (id(model), type(tokens), tokens, tp) -> (model, [(layers, Gemm, k, n)])


def _dense_layer_shapes(model: ModelConfig, tp: int) -> list | None:
    """(k, n) under tp of each GEMM of a dense model's decoder layer, in layer_gemms' order, where
    each is one GEMM (count 1) over all of the layer's tokens (m): a prefill of any length has these
    shapes. None for a model with MoE layers. Once per model (frozen) and tp."""
    if model.moe is not None:
        return None
    key = (id(model), tp)
    hit = _DENSE_SHAPES.get(key)
    if hit is None or hit[0] is not model:
        if len(_DENSE_SHAPES) > 1024:
            _DENSE_SHAPES.clear()
        gemms = layer_gemms(model, 1, False)
        shapes = [_tp_shape(g.name, g.k, g.n, tp) for g in gemms] if all(g.m == 1 and g.count == 1.0 for g in gemms) else None
        hit = _DENSE_SHAPES[key] = (model, shapes)
    return hit[1]


_DENSE_SHAPES: dict = {}  # (id(model), tp) -> (model, [(k, n)])


def _prefetch_prefills(eff, model: ModelConfig, spec: AcceleratorSpec, jobs, tp: int) -> bool:
    """The GEMM shapes of prefill_time_s over ``jobs`` through the calibrated curve at once
    (roofline.gemm_ops_s), for a dense model on a GPU; False where it does not (the caller records them)."""
    layer = _dense_layer_shapes(model, tp)
    if layer is None or is_cpu(spec) or not hasattr(eff, "gemm_times_list"):
        return False
    shapes: dict[bool, list] = {False: [], True: []}  # interleaved -> (m, k, n, dtype)
    for job in jobs:
        dtype = _gemm_dtype(job, spec)
        tokens = job.batch * job.prompt_len
        shapes[not job.cuda_graph] += [(tokens, k, nn, dtype) for k, nn in layer]
        shapes[False].append((job.batch, model.hidden, model.vocab // tp, dtype))  # the logits
    for interleaved, also in shapes.items():
        if also:
            gemm_ops_s(eff, (), interleaved=interleaved, also=also)
    return True


def prefill_time_s(model: ModelConfig, spec: AcceleratorSpec, job: InferJob, tp: int = 1,
                   calibration: str | None = None, eff=None) -> float:
    """Forward pass over the prompt (batch x prompt_len tokens): matmuls, causal flash attention,
    elementwise kernels, logits of the last position; eager host overhead bounds small prompts."""
    eff = eff or efficiency_for(spec, calibration)
    b, s = job.batch, job.prompt_len
    tokens = b * s
    dtype = _gemm_dtype(job, spec)
    t = 0.0
    # (layers, name, m, k, n, count) of each GEMM of the layers; a dense model's from one list for any prompt
    dense = _dense_layer_shapes(model, tp)
    if dense is not None:
        layer = [(model.dense_layers, "", tokens, k, nn, 1.0) for k, nn in dense]
    else:
        layer = [(n, g.name, g.m, k, nn, g.count) for n, g, k, nn in _prefill_layer_gemms(model, tokens, tp)]
    grouped = ("expert_in", "expert_out") if job.cuda_graph else ()  # a fused engine: grouped GEMMs
    # Eager HF prefill interleaves its GEMMs with as much elementwise time (profiled GPU-bound
    # prefills on H100: GEMMs 36-57% of device time, data/measurements/h100-sxm/2026-11-23n-gemm-kernels-gpubound-prefill/infer-gpubound-h100.diag.jsonl;
    # they ran at 101 ms where the sustained rate gives 115 for llama-1.3b b32 p1024), so they
    # run at a short burst's clock as in a training step (training._gemm); a fused serving
    # prefill (CUDA graph) is GEMMs back to back, under the sustained power cap.
    # (gemm_ops_s: each gemm_op_s of these 16-bit GEMMs, looked up together)
    timed = [(m, k, nn, dtype, count) for _, name, m, k, nn, count in layer if name not in grouped]
    logits = (b, model.hidden, model.vocab // tp, dtype)  # the last position's logits, never interleaved
    if job.cuda_graph:  # (the layers' GEMMs are not either: in the same call)
        timed.append((*logits, 1.0))
    times = iter(gemm_ops_s(eff, timed, interleaved=not job.cuda_graph))
    for n, name, *_ in layer:
        if name in grouped:
            if name == "expert_in":
                t += n * moe_expert_gemms_s(eff, model, tokens, tp, 1, dtype, 2.0, False)
            continue
        t += n * next(times)
    logits_s = next(times) if job.cuda_graph else gemm_op_s(eff, *logits)
    if is_cpu(spec):  # attention on the BLAS, op-by-op elementwise traffic, no GPU host model (costmodel.cpu)
        att_f, _ = cpu_attention_times(eff, b, max(1, model.heads // tp), s, model.d_head, dtype)
        wide, sharded = elementwise_bytes_per_token(model, TrainJob(precision="fp32" if dtype == "fp32" else "bf16"), amp=False)
        t += model.layers * (att_f + memory_op_s(eff, tokens * (wide + sharded / tp)))
        return t + logits_s
    if job.cuda_graph:
        t += prefill_attention_s(model, spec, job, tp, eff=eff)
        t += logits_s
        return t
    core = attention_core_flops(model, b, s, causal=True) / tp
    t += model.layers * attention_op_s(eff, b, max(1, model.heads // tp), s, model.d_head, core, False)
    # the HF block op by op in bf16: the same forward traffic as a bf16 HF training step
    wide, sharded = elementwise_bytes_per_token(model, TrainJob(precision="bf16"), amp=False)
    ew = tokens * (wide + sharded / tp)
    t += model.layers * eager_cat_excess_s(eff, spec, model, tokens, tp)
    cap = eager_elementwise_bytes_per_s(spec, 2.0)  # bf16 elements
    t += model.layers * memory_op_s(eff, ew, max_bytes_per_s=cap)
    t += logits_s
    return _combine(t, eager_host_s(model) * eager_host_factor(eff, job))


def prefill_attention_s(model: ModelConfig, spec: AcceleratorSpec, job: InferJob, tp: int = 1,
                        calibration: str | None = None, eff=None) -> float:
    """The part of a fused (CUDA-graph / serving) prefill of ``batch x prompt_len`` tokens that is not
    a matmul: causal flash attention and the fused elementwise kernels (prefill_time_s's terms)."""
    eff = eff or efficiency_for(spec, calibration)
    b, s = job.batch, job.prompt_len
    tokens = b * s
    core = attention_core_flops(model, b, s, causal=True) / tp
    t = model.layers * attention_op_s(eff, b, max(1, model.heads // tp), s, model.d_head, core, False)
    # fused serving kernels (norm, rotary, activation): ~ 40 bytes per hidden element
    ew = tokens * (40.0 * model.hidden + (6.0 * model.ffn if model.activation in GATED else 4.0 * model.ffn)) / tp
    return t + model.layers * memory_op_s(eff, ew)


@dataclass(frozen=True)
class CustomAllReduce:
    """An engine's own all-reduce for small messages inside one NVLink domain (vLLM's
    custom_all_reduce, TensorRT-LLM's and SGLang's one-shot / two-shot kernels): each rank reads its
    peers' buffers over NVLink peer-to-peer and reduces in one kernel, without NCCL's protocol
    rounds. Time of one call: latency(tp) + bytes / bytes_per_s(tp), for messages up to
    ``max_bytes`` on a switched NVLink domain (or two GPUs joined by NVLink); NCCL otherwise.
    The per-tp constants live in the engine YAML (data/engines/*.yaml, ``custom_allreduce``)."""
    max_bytes: float
    by_tp: tuple  # ((tp, latency_s, bytes_per_s), ...) ascending in tp

    def applies(self, links, tp: int, nbytes: float) -> bool:
        su = getattr(links.spec, "scale_up", None)
        if su is None or su.topology == "none" or tp > links.devices_per_node:
            return False
        if su.topology != "switch" and tp > 2:
            return False
        return nbytes <= self.max_bytes

    def call_s(self, tp: int, nbytes: float) -> float:
        row = self.by_tp[0]
        for r in self.by_tp:
            if tp >= r[0]:
                row = r
        return row[1] + nbytes / row[2]


def tp_allreduce_s(model: ModelConfig, links, tp: int, tokens: int, custom: CustomAllReduce | None = None) -> float:
    """Tensor-parallel communication of one forward over ``tokens`` tokens: 2 all-reduces of
    tokens x hidden bf16 activations per layer (Megatron TP, Shoeybi et al. 2019); 0 without links.
    With an engine's ``custom`` all-reduce, messages it takes (small, inside an NVLink domain) cost
    its latency and rate instead of NCCL's."""
    if links is None or tp <= 1:
        return 0.0
    nbytes = tokens * model.hidden * 2.0
    per_call = links.collective_time_s("all_reduce", nbytes, tp)
    if custom is not None and custom.applies(links, tp, nbytes):
        # the engines switch to NCCL where their kernel stops paying: the faster of the two
        per_call = min(per_call, custom.call_s(tp, nbytes))
    return 2 * model.layers * per_call


def eager_cat_excess_s(eff, spec: AcceleratorSpec, model: ModelConfig, tokens: float, tp: int = 1) -> float:
    """Time one eager HF layer's torch.cat calls (rotate_half on q and k, DynamicCache.update
    appending k and v: 4 bytes read + written per element) take beyond their traffic at the eager
    bf16 elementwise rate, which training.elementwise_bytes_per_token already counts them at
    (roofline.EAGER_CAT_BYTES_PER_S_PER_SM)."""
    units = gpu_units(spec)
    if not units:
        return 0.0
    nbytes = tokens * 4.0 * (model.q_dim + 3 * model.kv_dim) / tp
    rate = min(eff.mem_bytes_per_s(max(nbytes, 1.0)), eager_elementwise_bytes_per_s(spec, 2.0))
    return max(0.0, nbytes / (units * EAGER_CAT_BYTES_PER_S_PER_SM) - nbytes / rate)


def eager_host_s(model: ModelConfig) -> float:
    """Host time of one eager HF forward call (see EAGER_HOST_*), its layers weighed by the kernels
    they launch against a llama layer's (costmodel.dispatch.infer_dispatch_ratio)."""
    return EAGER_HOST_CALL_S + model.layers * EAGER_HOST_S_PER_LAYER * infer_dispatch_ratio(model)


def _combine(gpu_s: float, host_s: float) -> float:
    if host_s <= 0.0:
        return gpu_s
    return float(smoothmax(gpu_s, host_s, EAGER_COMBINE_P))


@dataclass
class InferEstimate:
    model_id: str
    hardware: str
    tp: int
    job: dict
    memory: InferMemory
    required_bytes: float
    capacity_bytes: float
    fits: bool
    ttft_s: float
    tpot_s: float
    decode_bound: str
    tokens_per_s: float
    max_batch_that_fits: int
    efficiency_source: str
    # the throughput curve (batch, tpot_s, tokens_per_s, e2e_tokens_per_s at batches 1, 2, 4, ... up
    # to the largest that fits): a list, or a function that makes it when it is first read (most
    # callers never read it, and it costs a prefill and a decode step per batch)
    curve: list[dict] | Callable[[], list[dict]] = field(default_factory=list, repr=False, compare=False)
    eager_host_factor: float | None = None  # scale on eager host time (job x machine); None under a CUDA graph
    e2e_tokens_per_s: float = 0.0  # output tokens per second of the whole batch, prefill included
    notes: list[str] = field(default_factory=list)

    @property
    def throughput_curve(self) -> list[dict]:
        if callable(self.curve):
            self.curve = self.curve()
        return self.curve

    def to_dict(self) -> dict:
        curve = self.throughput_curve
        d = {}
        for k, v in asdict(self).items():
            d["throughput_curve" if k == "curve" else k] = curve if k == "curve" else v
        d["memory"] = self.memory.to_dict()
        return d


def max_batch(model: ModelConfig, spec: AcceleratorSpec, job: InferJob, context: int, tp: int = 1) -> int:
    """Largest batch whose weights + KV cache + workspace fit (0 if even batch 1 does not)."""
    cap = spec.memory.capacity_bytes

    def need(batch: int) -> float:
        return required_device_bytes(decode_peak_bytes(model, job, batch, context, tp))

    # Memory grows with the batch by about the same bytes per sequence: the batch that this rate from
    # batches 1 and 2 gives, where it fits and one more does not (the search below finds the same).
    one = need(1)
    if one > cap:
        return 0
    per = need(2) - one
    if per > 0:
        guess = 1 + int((cap - one) // per)
        if guess < 1 << 20 and need(guess) <= cap < need(guess + 1):
            return guess
    lo, hi = 0, 1
    while required_device_bytes(decode_peak_bytes(model, job, hi, context, tp)) <= cap:
        lo, hi = hi, hi * 2
        if hi > 1 << 20:
            return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if required_device_bytes(decode_peak_bytes(model, job, mid, context, tp)) <= cap:
            lo = mid
        else:
            hi = mid
    return lo


def _tpot_fn(model: ModelConfig, spec: AcceleratorSpec, job: InferJob, tp: int, node: NodeSpec | None, eff,
             jobs: dict | None = None):
    """batch -> time per output token as the estimate reports it: one decode step at the middle of
    the generation (prompt + gen/2 cached positions) plus the tensor-parallel all-reduces.
    ``jobs``: the job at some batches, made already ({batch: job})."""
    mid_ctx = job.prompt_len + job.gen_len // 2
    links = None
    if tp > 1:
        from .comm_bridge import Links
        links = Links.from_specs(spec, node, eff)

    def tp_comm_s(batch: int) -> float:
        return tp_allreduce_s(model, links, tp, batch)

    def tpot(batch: int):
        j = jobs.get(batch) if jobs else None
        d = decode_step(model, spec, j or job.model_copy(update={"batch": batch}), mid_ctx, tp, eff=eff)
        return d.step_s + tp_comm_s(batch), d

    return tpot


def _ttft_s(model: ModelConfig, spec: AcceleratorSpec, job: InferJob, tp: int, node: NodeSpec | None, eff) -> float:
    """Time to first token: the prefill forward plus, under tensor parallelism, its all-reduces over
    the batch's prompt tokens (2 per layer, tp_allreduce_s)."""
    t = prefill_time_s(model, spec, job, tp, eff=eff)
    if tp > 1:
        from .comm_bridge import Links

        t += tp_allreduce_s(model, Links.from_specs(spec, node, eff), tp, job.batch * job.prompt_len)
    return t


def end_to_end_tokens_per_s(batch: int, gen_len: int, ttft_s: float, tpot_s: float) -> float:
    """Output tokens per second of a whole request batch, prefill included: batch x gen_len over
    TTFT + gen_len x TPOT (decode-only throughput is batch / TPOT)."""
    return batch * gen_len / (ttft_s + gen_len * tpot_s)


def estimate_infer(model: ModelConfig, spec: AcceleratorSpec, job: InferJob, tp: int = 1,
                   node: NodeSpec | None = None, calibration: str | None = None) -> InferEstimate:
    eff = efficiency_for(spec, calibration)
    context = job.prompt_len + job.gen_len
    mem = decode_memory(model, job, context, tp)
    req = required_device_bytes(mem.peak_bytes)
    mb = max_batch(model, spec, job, context, tp)
    curve_batches = [1 << i for i in range(max(1, mb).bit_length())]  # 1, 2, 4, ... <= max(1, mb)

    # the job at each batch of the estimate (the curve's made with it)
    batches = sorted({job.batch, *curve_batches})
    jobs = {job.batch: job}

    def job_at(b: int) -> InferJob:
        if b not in jobs:
            jobs[b] = job.model_copy(update={"batch": b})
        return jobs[b]
    mid_ctx = job.prompt_len + job.gen_len // 2

    def prefill_shapes(e):  # the prefill below, for its GEMM shapes
        prefill_time_s(model, spec, job, tp, eff=e)

    def decode_shapes(e):  # the decode steps below and the curve's: their GEMM shapes do not depend on the context
        for b in batches:
            decode_step(model, spec, job_at(b), mid_ctx, tp, eff=e)

    # all of the estimate's GEMM shapes through the calibrated curve in one vectorised call first
    # (the decode steps' once per batches and job apart from its lengths)
    if not _prefetch_prefills(eff, model, spec, [job], tp):
        prefetch_gemms(eff, prefill_shapes, key=("infer", id(model), id(spec), job, tp, mb))
    prefetch_gemms(eff, decode_shapes, key=("decode", id(model), id(spec), tuple(
        v for k, v in job if k not in ("prompt_len", "gen_len")), tp, tuple(batches)))
    ttft = _ttft_s(model, spec, job, tp, node, eff)
    tpot_of = _tpot_fn(model, spec, job, tp, node, eff, jobs)
    tpot, d = tpot_of(job.batch)

    def curve() -> list[dict]:  # made when first read (InferEstimate.throughput_curve)
        others = [job_at(b) for b in curve_batches if b != job.batch]
        _prefetch_prefills(eff, model, spec, others, tp)
        out = []
        for bsz in curve_batches:
            st = tpot if bsz == job.batch else tpot_of(bsz)[0]
            pre = ttft if bsz == job.batch else _ttft_s(model, spec, job_at(bsz), tp, node, eff)
            out.append({"batch": bsz, "tpot_s": st, "tokens_per_s": bsz / st,
                        "e2e_tokens_per_s": end_to_end_tokens_per_s(bsz, job.gen_len, pre, st)})
        return out
    return InferEstimate(model_id=model.id, hardware=spec.id, tp=tp, job=job.model_dump(), memory=mem, required_bytes=req,
                         capacity_bytes=spec.memory.capacity_bytes, fits=req <= spec.memory.capacity_bytes,
                         ttft_s=ttft, tpot_s=tpot, decode_bound=d.bound, tokens_per_s=job.batch / tpot,
                         max_batch_that_fits=mb, efficiency_source=getattr(eff, "source", "?"), curve=curve,
                         eager_host_factor=None if job.cuda_graph else eager_host_factor(eff, job),
                         e2e_tokens_per_s=end_to_end_tokens_per_s(job.batch, job.gen_len, ttft, tpot))


def largest_batch_under_tpot(model: ModelConfig, spec: AcceleratorSpec, job: InferJob, max_tpot_s: float, tp: int = 1,
                             node: NodeSpec | None = None, calibration: str | None = None) -> dict | None:
    """The largest batch that fits in memory and whose TPOT (as ``estimate_infer`` reports it) is at
    most ``max_tpot_s``, by bisection between 1 and the memory limit (TPOT grows with the batch);
    None when batch 1 misses the target or does not fit. Returns batch, tpot_s, decode-only
    tokens_per_s, ttft_s and end-to-end e2e_tokens_per_s (prefill included)."""
    eff = efficiency_for(spec, calibration)
    tpot_of = _tpot_fn(model, spec, job, tp, node, eff)
    hi = max_batch(model, spec, job, job.prompt_len + job.gen_len, tp)
    if hi < 1 or tpot_of(1)[0] > max_tpot_s:
        return None
    lo = 1  # meets the target
    if tpot_of(hi)[0] <= max_tpot_s:
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if tpot_of(mid)[0] <= max_tpot_s:
            lo = mid
        else:
            hi = mid
    tpot = tpot_of(lo)[0]
    ttft = _ttft_s(model, spec, job.model_copy(update={"batch": lo}), tp, node, eff)
    return {"batch": lo, "tpot_s": tpot, "tokens_per_s": lo / tpot, "ttft_s": ttft,
            "e2e_tokens_per_s": end_to_end_tokens_per_s(lo, job.gen_len, ttft, tpot)}


def best_batch_under_latency(model: ModelConfig, spec: AcceleratorSpec, job: InferJob, max_tpot_s: float, tp: int = 1) -> int:
    """Largest batch (up to the memory limit) whose TPOT stays under `max_tpot_s` (0 if none)."""
    best = largest_batch_under_tpot(model, spec, job, max_tpot_s, tp)
    return best["batch"] if best else 0
