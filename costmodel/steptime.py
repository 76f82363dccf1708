"""Step time of a training layout as named terms and one composition, for frameworks whose profile
says ``step_model: composed`` (``costmodel.frameworks``).

The terms (:class:`StepTerms`) are what the hardware and the layout cost, independent of the
framework's mechanism parameters: GPU kernel time of one micro-batch through one pipeline stage,
tensor-parallel and pipeline traffic per micro-batch (inside a node, and across nodes as wire
time plus ring steps), the data-parallel gradient reduction, the optimizer. The composition
(:func:`compose`) applies the profile's parameters. Every field may be a numpy array (one entry
per layout or per measured run), so one code path times one layout, a grid of layouts, or the
runs a profile is fitted to (``costmodel.profile_fit``).

Composition, per optimizer step (1F1B pipeline, Narayanan et al. 2021, sec. 2.2):

    slot     = compute_scale x (gemm_mb + attention_mb)       GEMM and attention kernels of one micro-batch
             + elementwise_scale x elementwise_mb             memory-bound kernels (fusion: passes per layer)
             + (1 - tp_overlap) x (tp_intra_mb + tp_cross_mb) tensor-parallel collectives not hidden
             + p2p_mb                                         pipeline sends (wire time)
    host     = host_layers_mb x (host_s_per_layer             eager dispatch per decoder layer
             + pp_cross x pp_cross_node_s x (tp - 1) ^ pp_cross_node_tp_exponent)
                                                              host stalls where pipeline stages
                                                              talk across nodes (per tp peer)
    slot'    = smoothmax_p(slot, host)                        host and GPU overlap but for the slower
    head'    = slot' of the stage holding the LM head and loss, with its own decoder layers
    stage'   = slot' of the most loaded stage without the head
    other'   = slot' of the mean stage without the head
    loss'    = the loss and the logits' sends where the loss sits on a stage of its own, else 0
    pipeline = (n_micro - 1) x max(head', stage', loss')      micro-batches through the slowest stage,
             + head' + loss' + s / v x other'                 plus the fill and drain through all of them
                                                              (s: the other stages that hold layers, pp - 1
                                                              unless the loss sits apart)

The decoder layers of each stage (``stage_layers``): an even split (Megatron-LM), or nanotron's
split by compute cost, where the LM head counts as vocab x hidden (models/base.py build_model).
    dp       = dp_comm - min(dp_overlap x dp_comm, dp_window) data-parallel reduction not hidden
    step     = pipeline + dp + optimizer + other
             + (n_micro + pp - 1) x stall_slot                where the cluster stalls cross-node pipeline
                                                              sends and a stall is the likelier error
                                                              (pipeline_stall, costmodel.cluster)

where the cross-node collective times are ``steps x step_latency + wire`` (costmodel.cluster), so
a fit may move the cluster's step latency with the framework's parameters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from . import comm
from .arrays import maximum, scalar, where
from .calibration import smoothmax
from .flops import every_other_matmul_share
from .memory import RECOMPUTE_CODES


@dataclass
class StepTerms:
    n_micro: object  # micro-batches per step
    pp: object
    interleave: object
    tp: object
    gpu_mb_s: object  # GPU kernels of one micro-batch through one stage (forward, backward, recompute, head)
    gemm_mb_s: object  # of which GEMMs
    attention_mb_s: object  # of which attention cores
    head_gemm_mb_s: object  # of the GEMMs, the last stage's LM head (forward and backward)
    head_other_mb_s: object  # of the rest, the last stage's loss (softmax cross-entropy, forward and backward)
    tp_intra_mb_s: object  # tensor-parallel collectives inside a node, per micro-batch
    tp_cross_wire_mb_s: object  # tensor-parallel collectives across nodes: wire time per micro-batch
    tp_cross_steps_mb: object  # ... and their ring steps across the network per micro-batch
    p2p_mb_s: object  # pipeline sends per micro-batch (forward activation + backward gradient)
    pp_cross: object  # 1 where neighbouring pipeline stages sit on different nodes
    host_layers_mb: object  # decoder layers a stage dispatches per micro-batch
    dp_comm_wire_s: object  # data-parallel gradient reduction (+ parameter all-gather): wire + intra time
    dp_comm_steps: object  # ... ring steps across the network
    dp_window_s: object  # backward of the last micro-batch, which the reduction can hide behind
    optimizer_s: object
    other_s: object  # offload traffic and other un-overlapped terms
    step_latency_s: object  # the cluster's cross-node ring step latency the wire/step split used
    # decoder layers of the stage holding the LM head, of the most loaded other stage, and the mean
    # of the other stages (stage_layers); None: host_layers_mb each (the per-layer terms' stage)
    head_stage_layers: object = None
    max_stage_layers: object = None
    other_stage_layers: object = None
    # 1 where the fp32 cast and loss of the logits run on a stage of their own (nanotron's split),
    # the bf16 logits and their gradient sent to it per micro-batch, and the stages that hold
    # decoder layers but not the head; None: 0, 0 and pp - 1
    loss_stage_apart: object = None
    loss_p2p_mb_s: object = None
    layer_stages: object = None
    # where the cluster stalls cross-node pipeline sends (specs.PipelineStall): the time a stalled
    # run adds per pipeline slot (2 sends or receives per cross-node neighbour of the busiest stage,
    # pipeline_cross_neighbours) and the chance a run of this many nodes stalls; None: no stalls
    stall_slot_s: object = None
    stall_p: object = None
    stall_ops_slot: object = 0.0  # cross-node pipeline sends and receives of the busiest stage per slot
    nodes: object = 1.0  # nodes the run spans

    @classmethod
    def stack(cls, terms: list["StepTerms"]) -> "StepTerms":
        """Terms of many layouts as arrays (one entry each)."""
        defaults = {"loss_stage_apart": lambda t: 0.0, "loss_p2p_mb_s": lambda t: 0.0,
                    "stall_slot_s": lambda t: 0.0, "stall_p": lambda t: 0.0,
                    "layer_stages": lambda t: float(t.pp) - 1.0}

        def val(t, name):
            v = getattr(t, name)
            return float(v if v is not None else defaults.get(name, lambda t: t.host_layers_mb)(t))
        return cls(**{f.name: np.array([val(t, f.name) for t in terms]) for f in fields(cls)})


@dataclass
class ComposedStep:
    total_s: object
    compute_s: object
    attention_s: object
    elementwise_s: object
    host_overhead_s: object
    tp_comm_s: object
    pp_comm_s: object
    bubble_s: object
    dp_comm_exposed_s: object
    optimizer_s: object
    other_s: object
    stall_s: object = 0.0  # of pp_comm_s and total_s: the cross-node pipeline stall reported (pipeline_stall)
    stall_risk_s: object = 0.0  # what a stalled run adds, reported or not
    stall_p: object = 0.0  # the chance a run of this layout on this cluster stalls


def pipeline_stall(total_s, slots, stall_slot_s, p):
    """The stall a point estimate reports: (added seconds, seconds a stalled run adds). A run either
    stalls (every slot ``stall_slot_s`` longer, costmodel.cluster) or does not, so no single time is
    right for both; the estimate reports the outcome of the smaller expected relative error, the
    error costmodel's accuracy is read in. Reporting the unstalled time a misses a stalled run b by
    (b - a) / b, with chance p; reporting b misses an unstalled run by (b - a) / a, with chance
    1 - p; so b where p a > (1 - p) b. (At p = 0.5 the expected-time estimate a + p (b - a) would
    miss either run by half the stall; the median flips to b at any p > 0.5, however large b / a.)"""
    risk = np.asarray(slots, dtype=float) * np.asarray(stall_slot_s, dtype=float)
    p = np.asarray(p, dtype=float)
    a = np.asarray(total_s, dtype=float)
    return np.where((risk > 0) & (p * a > (1.0 - p) * (a + risk)), risk, 0.0), risk


def expected_step_s(total_s, stall_s, stall_risk_s, stall_p):
    """The mean step time over runs of a layout that stalls with chance ``stall_p`` (what a planner
    weighs layouts by; pipeline_stall's point estimate reports one outcome): the unstalled time plus
    p times the stall, ``total_s - stall_s + stall_p * stall_risk_s``."""
    return (np.asarray(total_s, dtype=float) - np.asarray(stall_s, dtype=float)
            + np.asarray(stall_p, dtype=float) * np.asarray(stall_risk_s, dtype=float))


def compose(t: StepTerms, p: dict[str, float], step_latency_s=None, cuda_graphs: bool = False) -> ComposedStep:
    """Step time from the terms and a composed profile's parameter values ``p`` (module docstring).
    ``step_latency_s`` replaces the cluster's cross-node step latency (a fit moves it);
    ``cuda_graphs``: the profile replays the step as CUDA graphs, so no host dispatch is exposed."""
    lat = t.step_latency_s if step_latency_s is None else step_latency_s
    c = p["compute_scale"]
    tp = np.asarray(t.tp, dtype=float)
    tp_cross = np.asarray(t.tp_cross_wire_mb_s) + np.asarray(t.tp_cross_steps_mb) * lat
    tp_mb = (1.0 - p["tp_overlap"]) * (np.asarray(t.tp_intra_mb_s) + tp_cross)
    e = p["elementwise_scale"]
    gemm_att = np.asarray(t.gemm_mb_s) + np.asarray(t.attention_mb_s)
    head_gemm, loss = np.asarray(t.head_gemm_mb_s), np.asarray(t.head_other_mb_s)
    ew_mb = np.asarray(t.gpu_mb_s) - gemm_att
    p2p = np.asarray(t.p2p_mb_s)
    handoff = np.asarray(t.pp_cross) * p["pp_cross_node_s"] * np.maximum(tp - 1.0, 0.0) ** p["pp_cross_node_tp_exponent"]
    host_layer = (0.0 if cuda_graphs else p["host_s_per_layer"]) + handoff
    L = np.asarray(t.host_layers_mb, dtype=float)  # the layers the per-layer terms were summed over
    layer_work = c * (gemm_att - head_gemm) + e * (ew_mb - loss) + tp_mb  # those L layers' GPU time
    apart = 0.0 if t.loss_stage_apart is None else np.asarray(t.loss_stage_apart, dtype=float)
    head_part = c * head_gemm + (1.0 - apart) * e * loss
    # a stage of the cast and loss alone: no decoder layer to dispatch, the logits received and their
    # gradient sent back (loss_p2p_mb_s)
    loss_stage = apart * (e * loss + (0.0 if t.loss_p2p_mb_s is None else np.asarray(t.loss_p2p_mb_s)) + p2p)

    def stage_slot(n_layers, with_head):
        """(GPU time, GPU and host combined) of a stage of ``n_layers`` decoder layers."""
        if n_layers is None:
            n_layers, share = L, 1.0
        else:
            n_layers = np.asarray(n_layers, dtype=float)
            share = np.divide(n_layers, L, out=np.ones(np.broadcast(n_layers, L).shape), where=L > 0)
        gpu = share * layer_work + (head_part if with_head else 0.0) + p2p
        return gpu, smoothmax(gpu, n_layers * host_layer, p["host_gpu_combine_p"])

    slot, slot_h = stage_slot(t.head_stage_layers, True)  # the head's stage
    _, stage_h = stage_slot(t.max_stage_layers, False)
    _, other_h = stage_slot(t.other_stage_layers, False)
    n = np.asarray(t.n_micro, dtype=float)
    # 1F1B with stages of unequal time: every micro-batch passes the slowest stage, the fill and
    # drain pass every stage once (pipeline_fill_drain_s)
    slowest = np.maximum(np.maximum(slot_h, np.where(np.asarray(t.pp) > 1, stage_h, 0.0)), loss_stage)
    others = np.asarray(t.pp, dtype=float) - 1.0 if t.layer_stages is None else np.asarray(t.layer_stages, dtype=float)
    bubble_slots = others / np.asarray(t.interleave, dtype=float)
    pipeline = (n - 1.0) * slowest + slot_h + loss_stage + bubble_slots * other_h
    bubble = pipeline - n * slot_h
    dp = np.asarray(t.dp_comm_wire_s) + np.asarray(t.dp_comm_steps) * lat
    dp_exposed = dp - np.minimum(p["dp_overlap"] * dp, c * np.asarray(t.dp_window_s))  # window: backward kernels
    total = pipeline + dp_exposed + np.asarray(t.optimizer_s) + np.asarray(t.other_s)
    stall = risk = stall_p = 0.0
    if t.stall_slot_s is not None:
        stall_p = np.asarray(t.stall_p, dtype=float)
        stall, risk = pipeline_stall(total, n + np.asarray(t.pp, dtype=float) - 1.0, t.stall_slot_s, stall_p)
        total = total + stall
    gemm = c * n * np.asarray(t.gemm_mb_s)
    att = c * n * np.asarray(t.attention_mb_s)
    return ComposedStep(
        total_s=total, compute_s=gemm, attention_s=att,
        elementwise_s=e * n * ew_mb, host_overhead_s=n * (slot_h - slot),
        tp_comm_s=n * tp_mb, pp_comm_s=n * p2p + stall, bubble_s=bubble,
        dp_comm_exposed_s=dp_exposed, optimizer_s=np.asarray(t.optimizer_s), other_s=np.asarray(t.other_s),
        stall_s=stall, stall_risk_s=risk, stall_p=stall_p)


def block_costs(model) -> tuple[float, float]:
    """nanotron's compute cost of a decoder layer and of the LM head (models/llama.py
    get_block_compute_costs): 4 heads d_head hidden + 3 ffn hidden, and vocab hidden."""
    return 4.0 * model.q_dim * model.hidden + 3.0 * model.ffn * model.hidden, float(model.vocab * model.hidden)


def stage_layers(layers: int, pp: int, balance: str = "even", layer_cost: float = 1.0,
                 head_cost: float = 0.0) -> tuple[int, int, float, bool, int]:
    """Decoder layers per pipeline stage: (on the stage holding the LM head, on the most loaded
    other stage, mean of the other stages that hold layers, whether the fp32 cast and loss of the
    logits sit on a later stage of their own, how many stages besides the head's hold layers).
    "even": ceil(layers / pp) each (Megatron-LM splits layers evenly; the head and loss ride on
    the last stage). "cost": nanotron's build_model (models/base.py): the pipeline blocks in
    order (embedding cost 0, each decoder layer ``layer_cost``, final norm 0, the LM head
    ``head_cost``, the fp32 cast and the loss 0) go to the current rank, which moves on once the
    running cost exceeds (rank + 1) / pp of the total; the costs are models/llama.py
    get_block_compute_costs: 4 heads d_head h + 3 ffn h per layer, vocab h for the head. The
    head's stage may then hold fewer layers (or none) than the others, and the head's own cost
    can carry the running cost past its rank's share, so the cast and loss go to the next rank."""
    if pp <= 1:
        return layers, layers, float(layers), False, 0
    if balance == "even":
        per = -(-layers // pp)
        return per, per, float(per), False, pp - 1
    costs = [0.0] + [float(layer_cost)] * layers + [0.0, float(head_cost), 0.0, 0.0]
    cum = np.cumsum(costs)
    thresholds = [cum[-1] * ((r + 1) / pp) for r in range(pp)]
    owner = []
    rank = 0
    for c in cum:
        owner.append(rank)
        if c > thresholds[rank] and rank < pp - 1:
            rank += 1
    head_rank, cast_rank = owner[layers + 2], owner[layers + 3]
    counts = [0] * pp
    for r in owner[1:layers + 1]:
        counts[r] += 1
    others = [n for r, n in enumerate(counts) if r != head_rank and n > 0]
    return (counts[head_rank], max(others, default=0), float(np.mean(others)) if others else 0.0,
            cast_rank != head_rank, len(others))


def placement(par, devices_per_node: int) -> dict:
    """Where a layout's groups sit, with tensor parallelism fastest, then context, data and
    pipeline parallelism (nanotron's ParallelContext: ranks reshaped to (ep, pp, dp, cp, tp);
    Megatron's default order tp-cp-dp-pp is the same for these): the nodes a tp group spans, the
    data-parallel ranks per node and nodes, and whether pipeline neighbours cross nodes."""
    dpn = max(1, int(devices_per_node))
    tp, cp, dp, pp = par.tp, par.cp, par.dp, par.pp
    tp_nodes = -(-tp // dpn)
    dp_world = dp * cp
    stride = tp  # a data-parallel (x context) group's stride
    dp_per_node = 1 if stride >= dpn else max(1, min(dp_world, dpn // stride))
    dp_nodes = -(-dp_world // dp_per_node)
    pp_cross = bool(pp_crosses_node(pp, tp * cp * dp * pp, dpn))
    return {"tp_nodes": tp_nodes, "dp_per_node": dp_per_node, "dp_nodes": dp_nodes, "pp_cross": pp_cross,
            "pp_cross_neighbours": int(pipeline_cross_neighbours(tp * cp * dp, pp, dpn))}


def pipeline_cross_neighbours(stage_ranks, pp, devices_per_node):
    """Pipeline neighbours on other nodes of the stage with the most (0, 1 or 2), stages outermost
    (placement): a stage's ``stage_ranks`` = tp cp dp ranks are consecutive and rank r sends to
    r + stage_ranks. A stage of a node or more sends every boundary across nodes, so middle stages
    have two such neighbours; smaller stages pack devices_per_node / stage_ranks to a node, and only
    the boundary between two nodes' stages crosses, at most one per stage. Works on arrays."""
    g = np.asarray(stage_ranks, dtype=float)
    pp = np.asarray(pp, dtype=float)
    spans = g >= devices_per_node
    k = np.where(spans, np.where(pp >= 3, 2, 1), np.where(g * pp > devices_per_node, 1, 0))
    return np.where(pp > 1, k, 0)


def _cross_split(link, op: str, nbytes: float, world: int, per_node: int) -> tuple[float, float]:
    """(time without the cross-node step latency, cross-node ring steps) of one collective; inside
    a node or without measured cluster scaling the whole time is the first."""
    from . import cluster

    nodes = -(-world // max(1, per_node))
    t = link.collective_time_s(op, nbytes, world, intra=nodes == 1, per_node=per_node)
    if nodes > 1 and link.scaling is not None:
        steps = cluster.ring_steps(op, world)
        return t - steps * link.scaling.step_latency_s, steps
    return t, 0.0


def tp_layer_comm(link, act_bytes: float, tp: int, sequence_parallel: bool, recompute: str) -> tuple[float, float, float]:
    """Tensor-parallel collectives of one decoder layer and micro-batch (comm.tp_layer_collectives):
    (time inside a node, wire time across nodes, ring steps across nodes)."""
    if tp <= 1:
        return 0.0, 0.0, 0.0
    per_node = min(tp, link.devices_per_node)
    intra = wire = steps = 0.0
    for c in comm.tp_layer_collectives(act_bytes, comm.Group(tp, per_node), sequence_parallel=sequence_parallel,
                                       recompute=recompute):
        t, n = _cross_split(link, c.op, c.nbytes, tp, per_node)
        if tp > link.devices_per_node:
            wire += c.count * t
            steps += c.count * n
        else:
            intra += c.count * t
    return intra, wire, steps


def tp_layer_comm_split(link, act_bytes: float, tp: int, etp: int, share: float, sequence_parallel: bool,
                        recompute: str) -> tuple[float, float, float]:
    """tp_layer_comm where a ``share`` of a layer's collectives (training.moe_etp_share: the MoE
    layers' MLP half) runs over the etp ranks that split the experts instead of tp (none for etp 1)."""
    full = tp_layer_comm(link, act_bytes, tp, sequence_parallel, recompute)
    if not share:
        return full
    part = tp_layer_comm(link, act_bytes, etp, sequence_parallel and etp > 1, recompute) if etp > 1 else (0.0, 0.0, 0.0)
    return tuple((1.0 - share) * a + share * b for a, b in zip(full, part))


def tp_overlap_exposed_s(comm_s, gemm_s, tp):
    """Exposed time of a layer's tensor-parallel communication ``comm_s`` when each collective is
    decomposed into ``tp`` chunks pipelined with its GEMM (``gemm_s`` of GEMM time in the same
    passes): the first chunk's communication waits, each later chunk hides behind the previous
    chunk's GEMM, and what a chunk's communication exceeds its GEMM by is exposed: c/tp +
    (tp - 1)/tp * max(0, c - g). Wang et al. 2023 (ASPLOS, "Overlap Communication with Dependent
    Computation via Decomposition in Large Deep Learning Models"), sec. 4; Megatron-LM's
    --tp-comm-overlap (Transformer Engine userbuffers) runs it for the sequence-parallel
    all-gathers and reduce-scatters."""
    tp = np.maximum(np.asarray(tp, dtype=float), 1.0)
    return comm_s / tp + (tp - 1.0) / tp * np.maximum(0.0, comm_s - gemm_s)


def pp_crosses_node(pp, devices, devices_per_node):
    """Whether pipeline neighbours sit on different nodes somewhere along the pipeline: with the
    stages outermost (Megatron-LM's tp-cp-dp-pp rank order, nanotron's) a layout over more than one
    node puts a stage boundary between nodes, and every micro-batch passes it. Works on arrays."""
    return (pp > 1) & (devices > devices_per_node)


def pp_p2p(link, act_bytes: float, tp: int, sequence_parallel: bool, interleave: int, crosses: bool) -> float:
    """Pipeline sends of one micro-batch: the forward activation and the backward gradient, a
    tensor-parallel rank's 1/tp of it under sequence parallelism, once per model chunk."""
    msg = act_bytes / tp if sequence_parallel else act_bytes
    return 2.0 * interleave * link.p2p_time_s(msg, crosses_node=crosses)


def dp_comm(link, dp_world: int, per_node: int, zero_stage: int, grad_bytes: float, param_bytes: float,
            bucket_bytes: float, sharded_sync: str = "buckets") -> tuple[float, float]:
    """The step's data-parallel reduction: (time without cross-node step latency, ring steps).
    Gradients are all-reduced bucket by bucket (``bucket_bytes`` of compute-dtype gradients per
    call, PyTorch DDP's 25 MiB by default: nanotron reduces its fp32 accumulators through a DDP
    hook, one call per bucket); under ZeRO-1 the updated parameters are all-gathered in one call.
    ZeRO-2 reduce-scatters the buckets instead; ZeRO-3 / FSDP is timed unit by unit elsewhere.
    ``sharded_sync`` "after-backward" (frameworks.ProfileSettings.sharded_grad_sync): under ZeRO-1
    the whole gradient buffer is all-reduced in one call after the backward."""
    if dp_world <= 1:
        return 0.0, 0.0
    if zero_stage >= 3:
        return 0.0, 0.0  # FSDP / ZeRO-3 gathers and reduces unit by unit (training.py's ShardedDataParallel)
    wire, steps = dp_grad_reduction(link, dp_world, per_node, zero_stage, grad_bytes, param_bytes, bucket_bytes,
                                    sharded_sync)
    if zero_stage >= 1:
        t, n = _cross_split(link, "all_gather", param_bytes, dp_world, per_node)
        wire += t
        steps += n
    return wire, steps


def dp_grad_reduction(link, dp_world: int, per_node: int, zero_stage: int, grad_bytes: float, param_bytes: float,
                      bucket_bytes: float, sharded_sync: str = "buckets") -> tuple[float, float]:
    """The gradient reduction of dp_comm alone (its buckets' all-reduces, or reduce-scatters under
    ZeRO-2), which ZeRO-2 makes every micro-batch (zero2_extra_reductions)."""
    if dp_world <= 1 or zero_stage >= 3:
        return 0.0, 0.0
    if zero_stage == 1 and sharded_sync == "after-backward":
        return _cross_split(link, "all_reduce", grad_bytes, dp_world, per_node)
    n_buckets = max(1.0, float(np.ceil(param_bytes / bucket_bytes)))
    t, n = _cross_split(link, "reduce_scatter" if zero_stage == 2 else "all_reduce", grad_bytes / n_buckets,
                        dp_world, per_node)
    return n_buckets * t, n_buckets * n


def zero2_extra_reductions(zero_stage, n_micro):
    """Gradient reductions a step makes beyond the one at the accumulation boundary (numbers for one
    layout, arrays for many): ZeRO-2 keeps only its shard of the gradients between micro-batches, so
    every micro-batch's gradients are reduce-scattered in its backward (DeepSpeed,
    runtime/zero/stage_1_and_2.py, reduce_ready_partitions_and_remove_grads: "if
    self.partition_gradients or self.is_gradient_accumulation_boundary"), n_micro - 1 more than
    ZeRO-0/1, which accumulate the full gradients locally (the memory model's unsharded gradients)
    and reduce them once. ZeRO-3 / FSDP is timed unit by unit elsewhere."""
    if scalar(zero_stage) and scalar(n_micro):
        return max(float(n_micro) - 1.0, 0.0) if zero_stage == 2 else 0.0
    return np.where(np.asarray(zero_stage) == 2, np.maximum(np.asarray(n_micro, dtype=float) - 1.0, 0.0), 0.0)


def dp_hidden(zero_stage, sharded_sync: str):
    """1 where the gradient reduction can hide behind the last backward, 0 where it runs after it
    (``sharded_sync`` "after-backward" under ZeRO-1). Numbers for one layout, arrays for many."""
    if sharded_sync != "after-backward":
        return 1.0
    if scalar(zero_stage):
        return 0.0 if zero_stage == 1 else 1.0
    return np.where(np.asarray(zero_stage) == 1, 0.0, 1.0)


def layout_terms(*, layers, n_micro, pp, interleave, tp, layer_times, recompute, head_s, loss_s, tp_split, p2p_mb_s,
                 pp_cross, dp_split, zero, sharded_grad_sync, stage_split, loss_p2p_mb_s, stall, optimizer_s, other_s,
                 step_latency_s) -> StepTerms:
    """StepTerms of one layout (numbers) or of many (arrays), from what the hardware and layout cost:
    ``layer_times`` (training._layer_times: forward/backward GEMM, attention and elementwise time of
    one layer and micro-batch); ``recompute`` the forward a recompute re-runs per layer, as (all of
    it, its GEMMs, its attention); ``head_s`` / ``loss_s`` the LM head's GEMMs and the loss per
    micro-batch; ``tp_split`` one layer's TP collectives (tp_layer_comm_split); ``p2p_mb_s`` the
    pipeline sends of a micro-batch; ``dp_split`` the data-parallel reduction and its reduce-scatter
    as (wire, steps, wire, steps) (dp_comm + dp_grad_reduction: ZeRO-2 repeats the latter every
    earlier micro-batch); ``stage_split`` stage_layers's five numbers; ``stall``
    pipeline_stall_inputs's four. train_terms (one layout) and the search's screen (arrays) both
    build their terms here."""
    g_f, g_b, a_f, a_b, e_f, e_b = layer_times
    rec_f, rec_g, rec_a = recompute
    tp_i, tp_w, tp_s = tp_split
    dp_w, dp_s, rs_w, rs_s = dp_split
    head_l, max_l, other_l, apart, n_layer_stages = stage_split
    extra = zero2_extra_reductions(zero, n_micro)  # ZeRO-2: every micro-batch's gradients reduce-scattered
    hidden = dp_hidden(zero, sharded_grad_sync)
    stall_slot, stall_p, stall_ops, nodes = stall
    return StepTerms(
        stall_slot_s=stall_slot, stall_p=stall_p, stall_ops_slot=stall_ops, nodes=nodes,
        head_stage_layers=head_l, max_stage_layers=max_l, other_stage_layers=other_l, loss_stage_apart=apart,
        loss_p2p_mb_s=loss_p2p_mb_s, layer_stages=n_layer_stages, n_micro=n_micro, pp=pp, interleave=interleave, tp=tp,
        gpu_mb_s=layers * (g_f + g_b + a_f + a_b + e_f + e_b + rec_f) + head_s + loss_s,
        gemm_mb_s=layers * (g_f + g_b + rec_g) + head_s, attention_mb_s=layers * (a_f + a_b + rec_a),
        head_gemm_mb_s=head_s, head_other_mb_s=loss_s,
        tp_intra_mb_s=layers * tp_i, tp_cross_wire_mb_s=layers * tp_w, tp_cross_steps_mb=layers * tp_s,
        p2p_mb_s=p2p_mb_s, pp_cross=pp_cross, host_layers_mb=layers,
        dp_comm_wire_s=dp_w + extra * rs_w, dp_comm_steps=dp_s + extra * rs_s,
        dp_window_s=hidden * (1.0 + extra) * layers * (g_b + a_b + e_b + rec_f),
        optimizer_s=optimizer_s, other_s=other_s, step_latency_s=step_latency_s)


def selective_matmul_share(selective: str, model) -> float:
    """The share of a layer's forward GEMM time a framework's selective recompute re-runs: every
    second matmul's (flops.every_other_matmul_share) under "every-other-matmul", none otherwise."""
    return every_other_matmul_share(model) if selective == "every-other-matmul" else 0.0


def recompute_forward_s(mode, rf, g_f, a_f, e_f, selective: str = "attention-core", matmul_share=0.0):
    """The forward a recompute policy re-runs per layer and micro-batch, as (all of it, its GEMMs, its
    attention, its elementwise kernels); ``mode`` a recompute name or memory.RECOMPUTE_CODES code
    (arrays of codes for many layouts). "full": ``rf`` of the whole forward (TrainJob.recompute_fraction); "selective" as the
    framework means it (ProfileSettings.selective_recompute): the attention core (Korthikanti et al.
    2022), or every second matmul of a block, ``matmul_share`` of the GEMM time
    (flops.every_other_matmul_share), with the elementwise ops around them (torchtitan)."""
    code = RECOMPUTE_CODES.get(mode, 0) if isinstance(mode, str) else mode
    per_matmul = selective == "every-other-matmul"
    if scalar(code):  # one layout (or one mode for all): the branch taken
        if code == 2:
            return rf * (g_f + a_f + e_f), rf * g_f, rf * a_f, rf * e_f
        if code == 1:
            return ((matmul_share * g_f + e_f, matmul_share * g_f, 0.0 * a_f, e_f) if per_matmul
                    else (a_f, 0.0 * g_f, a_f, 0.0 * e_f))
        return 0.0 * g_f, 0.0 * g_f, 0.0 * a_f, 0.0 * e_f
    full, sel = np.equal(code, 2), np.equal(code, 1)
    sel_parts = ((matmul_share * g_f + e_f, matmul_share * g_f, 0.0, e_f) if per_matmul else (a_f, 0.0, a_f, 0.0))
    return tuple(np.where(full, rf * x, np.where(sel, y, 0.0)) for x, y in zip((g_f + a_f + e_f, g_f, a_f, e_f), sel_parts))


def train_terms(model, spec, job, par, node, eff, dtype: str, layer_times, head_s: float, loss_s: float,
                optimizer_s: float, other_s: float, grad_bytes: float, param_bytes_gathered: float,
                layers: float, dp_bucket_bytes: float = comm.DDP_BUCKET_BYTES, cluster_scaling=None,
                pipeline_balance: str = "even", sharded_grad_sync: str = "buckets",
                selective_recompute: str = "attention-core") -> StepTerms:
    """The terms of one layout (module docstring, layout_terms). ``layer_times``:
    training._layer_times's forward/backward GEMM, attention and elementwise time of one layer and
    micro-batch; ``selective_recompute`` what the framework's selective recompute re-runs
    (recompute_forward_s)."""
    from . import comm_bridge
    from .training import moe_etp_share

    g_f, g_b, a_f, a_b, e_f, e_b = layer_times
    recompute = recompute_forward_s(job.recompute, job.recompute_fraction, g_f, a_f, e_f, selective_recompute,
                                    selective_matmul_share(selective_recompute, model))[:3]
    link = comm_bridge.Links.from_specs(spec, node, eff, queued=True)
    link.fallback_scaling = cluster_scaling  # the profile's network where the node has none measured
    place = placement(par, link.devices_per_node)
    act = job.micro_batch * max(1, job.seq_len // par.cp) * model.hidden * 2.0
    tp_split = tp_layer_comm_split(link, act, par.tp, par.expert_tp, moe_etp_share(model, par.tp, par.expert_tp),
                                   par.sequence_parallel, job.recompute)
    p2p = pp_p2p(link, act, par.tp, par.sequence_parallel, par.interleave, place["pp_cross"]) if par.pp > 1 else 0.0
    dp_args = (link, par.dp * par.cp, place["dp_per_node"], par.zero_stage, grad_bytes, param_bytes_gathered,
               dp_bucket_bytes, sharded_grad_sync)
    n_micro = float(job.grad_accum_steps(par))
    rs = dp_grad_reduction(*dp_args) if par.zero_stage == 2 and n_micro > 1 else (0.0, 0.0)
    head_l, max_l, other_l, apart, n_layer_stages = stage_layers(model.layers, par.pp, pipeline_balance,
                                                                 *block_costs(model))
    logits = job.micro_batch * max(1, job.seq_len // par.cp) * model.vocab / par.tp * 2.0  # bf16, per tp rank
    loss_p2p = 2.0 * link.p2p_time_s(logits, crosses_node=False) if apart else 0.0  # adjacent ranks share a node
    return layout_terms(
        layers=float(layers), n_micro=n_micro, pp=float(par.pp), interleave=float(par.interleave), tp=float(par.tp),
        layer_times=layer_times, recompute=recompute, head_s=head_s, loss_s=loss_s, tp_split=tp_split, p2p_mb_s=p2p,
        pp_cross=1.0 if place["pp_cross"] else 0.0, dp_split=(*dp_comm(*dp_args), *rs), zero=par.zero_stage,
        sharded_grad_sync=sharded_grad_sync,
        stage_split=(float(head_l), float(max_l), other_l, 1.0 if apart else 0.0, float(n_layer_stages)),
        loss_p2p_mb_s=loss_p2p, stall=pipeline_stall_inputs(link, par.devices, par.pp, par.interleave),
        optimizer_s=optimizer_s, other_s=other_s,
        step_latency_s=link.scaling.step_latency_s if link.scaling is not None else 0.0)


def pipeline_stall_inputs(link, devices, pp, interleave):
    """StepTerms' stall fields of layouts of ``devices`` in ``pp`` stages (stages outermost) of
    ``interleave`` virtual stages each, on ``link``'s cluster: (stall_slot_s, stall_p,
    stall_ops_slot, nodes). Two sends or receives per cross-node neighbour of the busiest stage
    (pipeline_cross_neighbours), times the virtual stages: an interleaved schedule crosses v times
    per slot. Works on arrays; numbers for one layout."""
    dpn = link.devices_per_node
    ops = 2.0 * pipeline_cross_neighbours(np.asarray(devices) // np.asarray(pp), pp, dpn) * interleave
    nodes = np.ceil(np.asarray(devices, dtype=float) / dpn)
    if np.ndim(ops) == 0:
        ops, nodes = float(ops), float(nodes)
    slot, p = pipeline_stall_terms(getattr(link.scaling, "pipeline_stall", None), ops, nodes)
    return slot, p, ops, nodes


def pipeline_stall_terms(stall, ops_slot, nodes):
    """(seconds a stalled run adds per pipeline slot, chance of a stall) on a cluster whose
    scaling measured stalls (``stall``, a specs.PipelineStall; None: (None, None)): ``ops_slot``
    cross-node sends and receives of the busiest stage per slot (two per cross-node neighbour,
    1F1B's activation one way and its gradient back, times the virtual stages of an interleaved
    schedule), runs over ``nodes`` nodes. Works on arrays."""
    if stall is None:
        return None, None
    from . import cluster

    ops = np.asarray(ops_slot, dtype=float)
    return ops * stall.seconds_per_op_s, np.where(ops > 0, cluster.pipeline_stall_probability(stall, nodes), 0.0)


# ------------------------------------------------------------------------------------------------
# The built-in step model (profiles of ``step_model: builtin``: Megatron-LM, DeepSpeed, PyTorch):
# fixed overlap constants instead of fitted parameters. Its terms are per decoder layer and
# micro-batch or per call; compose_builtin sums them into the step, for one layout (numbers: train)
# or for a grid (arrays: the search's screen), with the same formulas.
#
#     slot     = layers x (g_f + g_b + a_f + a_b + e_f + e_b + recompute_f) + head + loss
#              + layers x tp_layer + ep + cp + p2p                 one micro-batch through the last stage
#     bubble   = (pp - 1) / v x (slot - head - loss)               1F1B fill and drain (Narayanan et al. 2021)
#     dp       = max(op - overlap x backward, (1 - overlap) x op)  gradient reduction behind the backward
#     step     = compute + attention + elementwise + host + n_micro x (tp + ep + cp + p2p) + bubble
#              + dp + fsdp + optimizer + offload


@dataclass
class BuiltinTerms:
    """What the built-in step model composes (numbers for one layout, arrays for a grid)."""
    n_micro: object
    layers: object  # decoder layers of the (last) pipeline stage
    pp: object
    interleave: object
    cp: object
    full: object  # full recompute (bool)
    # one decoder layer and micro-batch (training._layer_times): forward / backward GEMMs,
    # attention, elementwise kernels, and the forward a recompute re-runs
    g_f: object
    g_b: object
    a_f: object
    a_b: object
    e_f: object
    e_b: object
    # the forward a recompute re-runs, in its parts (recompute_forward_s): GEMMs, attention and
    # elementwise kernels (recompute_f, their sum)
    recompute_g: object
    recompute_a: object
    recompute_e: object
    head_f: object  # the LM head's forward GEMM (its backward is twice that)
    loss_s: object  # cross entropy, forward and backward
    tp_layer_s: object  # tensor-parallel collectives of one layer and micro-batch, after any overlap
    ep_call_s: object  # one expert-parallel all-to-all (0 without ep)
    moe_layers: object  # MoE layers of the stage
    cp_f_step_s: object  # one ring-attention K/V exchange forward, and backward (0 without cp)
    cp_b_step_s: object
    p2p_mb_s: object  # pipeline sends of one micro-batch (0 without pp)
    dp_op_s: object  # the data-parallel gradient reduction (+ parameter gather under ZeRO-1/2)
    dp_rs_s: object  # its reduce-scatter, which ZeRO-2 repeats every micro-batch
    dp_overlap: object  # the share of dp_op_s that may hide behind the backward
    zero: object  # ZeRO stage
    fsdp_exposed_s: object  # ZeRO-3 / FSDP communication left exposed
    grad_accum_s: object  # eager gradient accumulation (training.grad_accum_s)
    optimizer_s: object
    offload_s: object


    @property
    def recompute_f(self):
        """The forward a recompute re-runs per layer and micro-batch."""
        return self.recompute_g + self.recompute_a + self.recompute_e

    @property
    def rec_any(self):
        """Whether a recompute re-runs the attention (full, or Megatron's selective)."""
        return self.recompute_a > 0


@dataclass
class BuiltinStep:
    total_s: object
    compute_s: object
    attention_s: object
    elementwise_s: object
    host_overhead_s: object
    tp_comm_s: object
    dp_comm_exposed_s: object
    fsdp_comm_exposed_s: object
    pp_comm_s: object
    bubble_s: object
    optimizer_s: object
    ep_comm_s: object
    cp_comm_s: object
    offload_s: object
    slot_s: object  # GPU time of one micro-batch through the last stage


def ep_comm_s(n_micro, moe_layers, full, call_s):
    """Expert-parallel all-to-alls of a step: dispatch + combine per MoE layer, forward and backward,
    and the forward again under full recompute (GShard, Lepikhin et al. 2020, sec. 3.2)."""
    return n_micro * moe_layers * (4 + 2 * full) * call_s


def cp_comm_s(n_micro, layers, cp, rec_any, f_step_s, b_step_s, a_f, a_b):
    """Context parallelism's ring attention (Liu et al. 2023; Megatron-core context_parallel): per
    layer cp - 1 exchanges of the local K and V block forward (twice where a recompute re-runs the
    attention), K, V and their gradients backward; exchange i overlaps the attention of step i - 1,
    and what exceeds that attention is exposed."""
    fwd_passes = where(rec_any, 2.0, 1.0)
    return n_micro * layers * ((cp - 1) * (fwd_passes * maximum(0.0, f_step_s - a_f / cp)
                                           + maximum(0.0, b_step_s - a_b / cp)))


def pipeline_bubble_s(pp, interleave, slot_s, head_and_loss_s):
    """1F1B bubble (p - 1) / (v m) of the ideal time (Narayanan et al. 2021, sec. 2.2): p - 1
    micro-batch slots of one chunk each, with their communication. The stages are not equal: the
    last also runs the LM head and loss; every micro-batch passes that slowest stage, the fill and
    drain pass the others once, so the p - 1 bubble slots are stages without the head."""
    return (pp - 1) / interleave * (slot_s - head_and_loss_s)


def dp_exposed_s(op_s, rs_s, overlap, backward_s, zero, n_micro):
    """The data-parallel reduction left on the critical path: ``overlap`` of it may hide behind the
    backward, none of it beyond the backward's length; ZeRO-2 also reduce-scatters the earlier
    micro-batches' gradients, each behind its own backward (zero2_extra_reductions)."""
    exposed = maximum(op_s - overlap * backward_s, (1 - overlap) * op_s)
    return exposed + zero2_extra_reductions(zero, n_micro) * maximum(rs_s - overlap * backward_s, (1 - overlap) * rs_s)


def expert_node_hit_probability(moe, nodes: int) -> float:
    """The chance that one token's top_k routed experts include one held on a given node, with
    the experts in consecutive blocks over ``nodes`` nodes (Megatron-core places expert e on EP rank
    e // (experts / ep)) and routing balanced over the experts a token may use (force-balanced, as
    the published MoE benchmarks run it): 1 - C(pool - here, k) / C(pool, k), ``here`` of the
    token's candidate ``pool`` on the node. Under group-limited routing (MoEConfig.router_groups)
    the pool is the router_group_topk groups the token picks, each group equally likely: with whole
    groups on a node, averaged over how many of them were picked (hypergeometric); with a group over
    several nodes, the node's block counts only when its group was picked."""
    E, k, N = moe.experts, moe.top_k, int(nodes)
    if N <= 1:
        return 1.0
    here = E / N

    def miss(pool, part):  # C(pool - part, k) / C(pool, k): none of k drawn from pool lands in part
        pool, part = int(round(pool)), int(round(part))
        return math.comb(pool - part, k) / math.comb(pool, k) if pool - part >= k else 0.0

    R, G = moe.router_groups, moe.router_group_topk
    if R is None or E % N:
        return 1.0 - miss(E, here)
    pool = G * E / R
    if R % N == 0:  # g whole groups a node
        g = R // N
        return sum(math.comb(g, j) * math.comb(R - g, G - j) / math.comb(R, G) * (1.0 - miss(pool, j * E / R))
                   for j in range(1, min(g, G) + 1))
    if N % R == 0:  # a group over N / R nodes
        return G / R * (1.0 - miss(pool, here))
    return 1.0 - miss(E, here)  # groups and nodes not aligned: as if any expert


def deepep_wire_share(moe, ep: int, ep_per_node: int) -> float:
    """DeepEP's bytes across nodes against a per-expert all-to-all's (DeepSeek-AI 2025, DeepEP's
    "normal" kernels; arXiv:2412.19437 sec. 3.2.2): a token goes once to each other node that holds
    one of its experts and is forwarded over NVLink there, so a rank sends (nodes - 1) x P(node hit)
    copies across nodes (expert_node_hit_probability) where a per-expert exchange sends top_k x
    (nodes - 1) / nodes. 1 where the group stays in one node or does not fill its nodes evenly."""
    if ep_per_node <= 0 or ep % ep_per_node or ep // ep_per_node <= 1:
        return 1.0
    nodes = ep // ep_per_node
    return nodes * expert_node_hit_probability(moe, nodes) / moe.top_k


def ep_all_to_all_s(collective_s, model, act_bytes, tp, ep, etp, devices_per_node, deepep: bool = False):
    """One expert-parallel all-to-all (dispatch or combine; ep_comm_s counts them): a micro-batch's
    tokens x top_k x hidden in the compute dtype (``act_bytes`` = tokens x hidden x 2), a tensor-
    parallel rank's 1/tp of it, over ``ep`` ranks. Megatron-core lays the expert ranks out etp, ep,
    expert-dp, so the group's ranks sit ``etp`` apart (etp: tp unless set, Parallel.etp).
    ``deepep``: DeepEP's dispatcher (Megatron-core --moe-enable-deepep / the flex dispatcher), one
    copy of a token per node across the network (deepep_wire_share scales the bytes: the NIC, 9x
    slower than NVLink, bounds the exchange; the forwarding inside nodes is left out).
    ``collective_s``: a link's collective_time_s."""
    per_node = max(1, min(ep, devices_per_node // etp))
    intra = ep * etp <= devices_per_node
    nbytes = act_bytes / tp * model.moe.top_k
    if deepep and not intra:
        nbytes = nbytes * deepep_wire_share(model.moe, ep, per_node)
    return collective_s("all_to_all", nbytes, ep, intra=intra, per_node=per_node)


def cp_kv_exchange_s(p2p_s, model, micro_batch, seq_dev, tp, cp, devices_per_node):
    """(forward, backward) time of one ring-attention step's exchange (cp_comm_s): the local K and V
    block forward, K, V and their gradients backward, across nodes where the cp group leaves one.
    ``p2p_s``: a link's p2p_time_s."""
    kv_block = 2.0 * micro_batch * seq_dev * model.kv_dim / tp * 2.0
    cross = tp * cp > devices_per_node
    return p2p_s(kv_block, crosses_node=cross), p2p_s(2.0 * kv_block, crosses_node=cross)


def pp_message_bytes(act_bytes, tp, framework: str, sequence_parallel):
    """Bytes one tensor-parallel rank sends a pipeline neighbour per micro-batch and direction:
    Megatron's scatter/gather sends 1/tp of the activation per rank (Narayanan et al. 2021, sec.
    4.1), as does any framework under sequence parallelism; eager PyTorch without it sends all."""
    return act_bytes / tp if (framework != "pytorch" or sequence_parallel) else act_bytes


def compose_builtin(t: BuiltinTerms, host=None) -> BuiltinStep:
    """The built-in step model's step time from its terms (the section comment above). ``host``:
    a function of the step's GPU time giving the host dispatch time it exposes (eager PyTorch,
    training.host_exposed_s), or None where fused kernels hide it."""
    n, L = t.n_micro, t.layers
    head_and_loss = 3 * t.head_f + t.loss_s
    per_layer = t.g_f + t.g_b + t.a_f + t.a_b + t.e_f + t.e_b + t.recompute_f
    t_mb = L * per_layer + head_and_loss
    tp_comm = L * t.tp_layer_s * n
    ep_comm = ep_comm_s(n, t.moe_layers, t.full, t.ep_call_s)
    cp_comm = cp_comm_s(n, L, t.cp, t.rec_any, t.cp_f_step_s, t.cp_b_step_s, t.a_f, t.a_b)
    pp_comm = n * t.p2p_mb_s
    slot = t_mb + (tp_comm + ep_comm + cp_comm) / n + t.p2p_mb_s
    bubble = pipeline_bubble_s(t.pp, t.interleave, slot, head_and_loss)
    backward = L * (t.g_b + t.a_b + t.e_b + t.recompute_f)
    dp = dp_exposed_s(t.dp_op_s, t.dp_rs_s, t.dp_overlap, backward, t.zero, n)
    compute = n * L * (t.g_f + t.g_b) + n * 3 * t.head_f + n * L * t.recompute_g
    attention = n * L * (t.a_f + t.a_b + t.recompute_a)
    elementwise = n * (L * (t.e_f + t.e_b + t.recompute_e) + t.loss_s) + t.grad_accum_s
    gpu = compute + attention + elementwise + t.optimizer_s
    host_exposed = 0.0 if host is None else host(gpu)
    total = (compute + attention + elementwise + host_exposed + tp_comm + dp + t.fsdp_exposed_s + pp_comm
             + bubble + t.optimizer_s + ep_comm + cp_comm + t.offload_s)
    return BuiltinStep(total, compute, attention, elementwise, host_exposed, tp_comm, dp, t.fsdp_exposed_s, pp_comm,
                       bubble, t.optimizer_s, ep_comm, cp_comm, t.offload_s, t_mb)
