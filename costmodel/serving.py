"""Serving under load: an iteration-level model of an engine's scheduler.

As in Vidur (Agrawal et al., MLSys 2024), what the hardware costs per iteration is kept apart from
what the scheduler decides. The cost (:class:`IterationCost`) is the calibrated per-iteration model
of costmodel.inference: decode_step's matmuls (CUDA-graph batch sizes), its KV-cache read over each
sequence's real context, prefill_attention_s for prefill chunks and the tensor-parallel
all-reduces, tabulated once over token counts and interpolated. The scheduler
(:func:`simulate`) does continuous batching with chunked prefill under a token budget per
iteration, a cap on running sequences, a paged KV cache sized from the memory left after the
weights, and preemption (recompute) when the cache is full (Kwon et al. 2023; Agrawal et al. 2024,
Sarathi-Serve).

Every request has the same input and output length. Requests admitted together with the same
progress form a *cohort* (a contiguous range of request ids), so an iteration costs numpy
operations over cohorts, never a Python loop over sequences, and runs of decode-only iterations in
which nothing is admitted, preempted or finished are stepped at once.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .arch import ModelConfig
from .energy import DEFAULT_POWER_FRACTION, DEFAULT_PUE, energy_kwh
from .errors import InputError
from .inference import CustomAllReduce, attention_params, decode_step, prefill_attention_s, tp_allreduce_s
from .memory import CUDA_CONTEXT_BYTES, decode_memory, kv_cache_bytes
from .roofline import efficiency_for, gemm_op
from .specs import AcceleratorSpec, NodeSpec, package_data_dir, read_yaml
from .workload import DTYPE_BYTES, InferJob

ENGINES = ("vllm", "sglang", "tensorrt-llm")
LOADS = ("batch", "concurrency", "request_rate", "max_load")
RAMPS = ("burst", "steady")
GIB = 2**30


@dataclass
class EngineConfig:
    id: str
    max_num_seqs: int  # running sequences at most
    max_tokens_per_iteration: int  # token budget of one iteration (chunked prefill size)
    kv_memory_fraction: float
    kv_memory_basis: str  # "total": of the device's memory (weights, activations, KV); "free": of what is left after them
    block_tokens: int
    mixed_batches: bool  # prefill chunks and decode tokens in one iteration
    cuda_graph_sizes: list[int]
    sources: list[str] = field(default_factory=list)
    custom_allreduce: CustomAllReduce | None = None  # the engine's small-message all-reduce
    moe_math_efficiency: float = 1.0  # its grouped MoE GEMMs' share of a dense GEMM's rate (fitted)
    intake_iterations: float = 0.0  # iterations a busy engine takes to pick up an arrived request (fitted)
    api_server_s_per_request: float = 0.0  # the API server's serial handling of one request (fitted)
    reserve_output: bool = False  # admission holds KV blocks for the prompt and every output token
    host_s_per_sequence_step: float = 0.0  # the server's host time per running sequence per iteration (fitted)
    chunked_prefill: bool = True  # a prompt may be split over iterations; False: admitted whole only


def engines_dir() -> Path:
    return package_data_dir("data") / "engines"


def load_engine(name: str, spec: AcceleratorSpec, tp: int = 1, **overrides) -> EngineConfig:
    """The engine's defaults (data/engines/<name>.yaml) for a device and TP size; ``overrides``
    (non-None) replace fields."""
    path = engines_dir() / f"{name}.yaml"
    if not path.exists():
        raise InputError(f"unknown engine {name!r}; expected one of {', '.join(ENGINES)}", field="engine")
    d = read_yaml(path)
    gib = spec.memory.capacity_bytes / GIB
    tier = next(t for t in d["tiers"] if gib >= t["min_memory_gib"] and spec.id not in t.get("not_devices", ()))
    frac = d["kv_memory_fraction"]
    by_tp = d.get("kv_memory_fraction_by_tp") or {}
    for k in sorted(by_tp):
        if tp >= int(k):
            frac = by_tp[k]
    budget = tier["max_tokens_per_iteration"]
    seqs = tier["max_num_seqs"] or 1 << 30  # null: the KV cache bounds it
    gmax = d["cuda_graph_max_batch"]
    sizes = sorted(set(list(d["cuda_graph_small"]) + list(range(d["cuda_graph_step"], gmax + 1, d["cuda_graph_step"]))))
    cfg = EngineConfig(id=d["id"], max_num_seqs=seqs, max_tokens_per_iteration=budget, kv_memory_fraction=frac,
                       kv_memory_basis=d["kv_memory_basis"], block_tokens=d["block_tokens"],
                       mixed_batches=bool(d["mixed_batches"]), cuda_graph_sizes=sizes, sources=list(d.get("sources", [])),
                       custom_allreduce=_custom_allreduce(d.get("custom_allreduce"), path),
                       moe_math_efficiency=_fraction(d.get("moe_math_efficiency", 1.0), path, "moe_math_efficiency"),
                       intake_iterations=_bounded(d.get("intake_iterations", 0.0), path, "intake_iterations", 0.0, 20.0),
                       reserve_output=_flag(d.get("reserve_output", False), path, "reserve_output"),
                       api_server_s_per_request=_bounded(d.get("api_server_s_per_request", 0.0), path,
                                                         "api_server_s_per_request", 0.0, 0.05),
                       host_s_per_sequence_step=_bounded(d.get("host_s_per_sequence_step", 0.0), path,
                                                         "host_s_per_sequence_step", 0.0, 1e-3),
                       chunked_prefill=_flag(d.get("chunked_prefill", True), path, "chunked_prefill"))
    for k, v in overrides.items():
        if v is not None:
            setattr(cfg, k, v)
    return cfg


def _fraction(v, path: Path, name: str) -> float:
    if isinstance(v, dict):
        v = v.get("value")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.05 <= v <= 1.0:
        raise InputError(f"expected a number in [0.05, 1] (got {v!r})", file=str(path), field=name)
    return float(v)


def _flag(v, path: Path, name: str) -> bool:
    if not isinstance(v, bool):
        raise InputError(f"expected true or false (got {v!r})", file=str(path), field=name)
    return v


def _bounded(v, path: Path, name: str, lo: float, hi: float) -> float:
    if isinstance(v, dict):
        v = v.get("value")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise InputError(f"expected a number in [{lo:g}, {hi:g}] (got {v!r})", file=str(path), field=name)
    return float(v)


def _custom_allreduce(d: dict | None, path: Path) -> CustomAllReduce | None:
    if not d:
        return None
    try:
        rows = tuple(sorted((int(r["tp"]), float(r["latency_s"]), float(r["bytes_per_s"])) for r in d["by_tp"]))
        if not rows or any(r[1] < 0 or r[2] <= 0 for r in rows):
            raise ValueError
        return CustomAllReduce(max_bytes=float(d["max_bytes"]), by_tp=rows)
    except (KeyError, TypeError, ValueError):
        raise InputError("expected max_bytes and by_tp rows of tp, latency_s >= 0, bytes_per_s > 0",
                         file=str(path), field="custom_allreduce") from None


# ---------------------------------------------------------------------------------- cost


def _grid(hi: int, points: int = 40) -> np.ndarray:
    return np.unique(np.concatenate([np.arange(1, 17), np.round(np.geomspace(1, max(hi, 2), points))])).astype(float)


class IterationCost:
    """Seconds of one engine iteration, from costmodel.inference's calibrated pieces:

    body(n)   decode_step's matmuls over n tokens without the LM head, + its small graph kernels
    lm(r)     the LM head over r sampled rows (decode tokens and last prefill chunks)
    kv(c)     decode_step's KV-cache read of c cached positions in all (the read is linear in
              batch x context, so a batch's sum of contexts is what counts)
    attn(L)   prefill_attention_s of one L-token prompt; a chunk from s0 to s1 costs attn(s1) -
              attn(s0) (causal attention of the chunk over its prefix, and the chunk's elementwise)
    comm(n)   tensor-parallel all-reduces over n tokens (tp_allreduce_s, with the engine's custom
              all-reduce for small messages inside an NVLink domain: decode, and prefill chunks)
    Decode-only iterations pad n to the engine's next CUDA-graph batch size.
    """

    def __init__(self, model: ModelConfig, spec: AcceleratorSpec, job: InferJob, tp: int, node: NodeSpec | None,
                 max_tokens: int, max_context_tokens: int, max_prompt: int, graph_sizes: list[int],
                 calibration: str | None = None, custom_allreduce: CustomAllReduce | None = None, ep: int = 1,
                 moe_math_efficiency: float = 1.0, dp_attention: bool = False):
        eff = efficiency_for(spec, calibration)
        self.graph_sizes = np.asarray(graph_sizes or [1], dtype=float)
        links = None
        if tp > 1:
            from .comm_bridge import Links

            links = Links.from_specs(spec, node, eff)
        wbytes = DTYPE_BYTES[job.weight_dtype]
        dtype = job.compute_dtype if spec.peak_flops.get(job.compute_dtype) else "bf16"
        self.n_grid = _grid(max(max_tokens, int(self.graph_sizes.max())))
        body, lm, comm = [], [], []
        for n in self.n_grid:
            d = decode_step(model, spec, job.model_copy(update={"batch": int(n)}), 1, tp, eff=eff, ep=ep,
                            moe_math_efficiency=moe_math_efficiency, dp_attention=dp_attention)
            head = gemm_op(eff, "lm_head", int(n), model.hidden, max(1, model.vocab // tp), dtype, elem_bytes=wbytes,
                           graph=job.cuda_graph).time_s
            body.append(d.weights_s - head + d.small_kernels_s)
            lm.append(head)
            comm.append(tp_allreduce_s(model, links, tp, int(n), custom_allreduce))
        self.body, self.lm, self.comm = np.array(body), np.array(lm), np.array(comm)
        self.c_grid = np.concatenate([[0.0], _grid(max(max_context_tokens, 2), 48)])
        kv = [0.0] + [decode_step(model, spec, job.model_copy(update={"batch": 1}), int(c), tp, eff=eff,
                                  dp_attention=dp_attention).kv_s
                      for c in self.c_grid[1:]]
        self.kv_tab = np.array(kv)
        self.l_grid = np.concatenate([[0.0], _grid(max(max_prompt, 2), 40)])
        attn = [0.0] + [prefill_attention_s(model, spec, job.model_copy(update={"batch": 1, "prompt_len": int(L)}), tp, eff=eff)
                        for L in self.l_grid[1:]]
        self.attn_tab = np.array(attn)

    def _n(self, tab, n):
        return np.interp(n, self.n_grid, tab)

    def pad(self, n):
        """The CUDA-graph batch size a decode-only batch of n runs at (n itself above the largest)."""
        n = np.asarray(n, dtype=float)
        i = np.searchsorted(self.graph_sizes, n)
        return np.where(i < len(self.graph_sizes), self.graph_sizes[np.minimum(i, len(self.graph_sizes) - 1)], n)

    def kv(self, c):
        return np.interp(c, self.c_grid, self.kv_tab)

    def attn(self, L):
        return np.interp(L, self.l_grid, self.attn_tab)

    def iteration_s(self, n_tokens, n_logits, ctx_sum, attn_s, decode_only):
        """Seconds of iterations (numpy-broadcast): n_tokens scheduled, n_logits sampled rows,
        ctx_sum cached positions read by the decode tokens, attn_s of prefill chunks."""
        n = np.where(decode_only, self.pad(n_tokens), n_tokens)
        r = np.where(decode_only, n, n_logits)
        return self._n(self.body, n) + self._n(self.lm, r) + self._n(self.comm, n) + self.kv(ctx_sum) + attn_s


_COST_CACHE: dict = {}
_COST_CACHE_SIZE = 16


def _iteration_cost(model: ModelConfig, spec: AcceleratorSpec, job: InferJob, tp: int, node: NodeSpec | None,
                    **kw) -> IterationCost:
    """IterationCost, kept for the last few distinct arguments: a load sweep (the serving planner's
    rate search) reuses one replica's tables."""
    key = (model.model_dump_json(), spec.model_dump_json(), job.model_dump_json(), tp,
           node.model_dump_json() if node is not None else None,
           repr(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kw.items())))
    cost = _COST_CACHE.get(key)
    if cost is None:
        if len(_COST_CACHE) >= _COST_CACHE_SIZE:
            _COST_CACHE.pop(next(iter(_COST_CACHE)))
        cost = _COST_CACHE[key] = IterationCost(model, spec, job, tp, node, **kw)
    return cost


def expected_tokens_per_step(acceptance: float, draft_tokens: int) -> float:
    """Tokens a sequence gains per verification step of speculative decoding with ``draft_tokens``
    drafted tokens, each accepted with probability ``acceptance`` independently of the others:
    (1 - a^(k+1)) / (1 - a) (Leviathan et al. 2023, "Fast inference from transformers via
    speculative decoding", eq. 1): the accepted prefix plus the target's own next token."""
    a, k = float(acceptance), int(draft_tokens)
    if a >= 1.0:
        return k + 1.0
    return (1.0 - a ** (k + 1)) / (1.0 - a)


# DeepSeek-V3's multi-token-prediction module drafts one token; "the acceptance rate of the second
# token prediction ranges between 85% and 90%" (DeepSeek-V3 technical report, arXiv:2412.19437,
# sec. 5.4.3): 0.85 is the default acceptance of --spec mtp.
MTP_DEFAULT_ACCEPTANCE = 0.85


class SpeculativeCost:
    """An engine iteration with speculative decoding: every sequence that decodes verifies
    ``draft_tokens`` + 1 tokens in one target forward (its rows sampled too), after the draft
    proposed them: ``draft_tokens`` steps of a draft cost over the decoding sequences. The draft is
    the target's multi-token-prediction module (``mtp``: one more decoder layer and the LM head, as
    DeepSeek-V3's MTP module) or a draft model's own decode step (its IterationCost).
    Decoding sequences are approximated by the sampled rows of the iteration (decode tokens plus
    prompts that finish)."""

    def __init__(self, target: IterationCost, draft_tokens: int, layers: int, draft: IterationCost | None = None):
        self.t, self.k, self.layers, self.draft = target, int(draft_tokens), layers, draft

    def attn(self, L):
        return self.t.attn(L)

    def _draft_s(self, n, ctx_sum):
        if self.draft is not None:
            return self.draft.iteration_s(n, n, ctx_sum, 0.0, True)
        t = getattr(self.t, "inner", self.t)  # the IterationCost under a PipelineCost
        return ((t._n(t.body, t.pad(n)) + t._n(t.comm, t.pad(n))) / self.layers + t._n(t.lm, t.pad(n))
                + t.kv(ctx_sum) / self.layers)

    def iteration_s(self, n_tokens, n_logits, ctx_sum, attn_s, decode_only):
        k = self.k
        n_logits = np.asarray(n_logits, dtype=float)
        verify = self.t.iteration_s(np.asarray(n_tokens, dtype=float) + k * n_logits, (k + 1) * n_logits, ctx_sum,
                                    attn_s, decode_only)
        return verify + np.where(n_logits > 0, k * self._draft_s(n_logits, ctx_sum), 0.0)


class PipelineCost:
    """One virtual engine's iteration under pipeline parallelism: the whole model at tp (its stages
    in turn) plus pp - 1 point-to-point sends of the iteration's activations (tokens x hidden, 16-bit)
    between stages (comm_bridge.Links.p2p_time_s: NVLink inside a node, the NIC across)."""

    def __init__(self, inner: IterationCost, model: ModelConfig, spec: AcceleratorSpec, node: NodeSpec | None, tp: int,
                 pp: int, calibration: str | None = None):
        from .comm_bridge import Links

        self.inner, self.pp = inner, pp
        links = Links.from_specs(spec, node, efficiency_for(spec, calibration))
        crosses = tp * pp > links.devices_per_node
        self.p2p = np.array([links.p2p_time_s(n * model.hidden * 2.0, crosses) for n in inner.n_grid])

    def attn(self, L):
        return self.inner.attn(L)

    def iteration_s(self, n_tokens, n_logits, ctx_sum, attn_s, decode_only):
        n = np.where(decode_only, self.inner.pad(n_tokens), n_tokens)
        return (self.inner.iteration_s(n_tokens, n_logits, ctx_sum, attn_s, decode_only)
                + (self.pp - 1) * np.interp(n, self.inner.n_grid, self.p2p))


class HostBoundCost:
    """An iteration no shorter than the server's host work for it: ``per_sequence_s`` for every
    sequence that gets a token (its sampled row: detokenising it and streaming it to its client),
    done beside the GPU's work, so an iteration takes max(GPU time, rows x per_sequence_s). A
    streaming server whose per-token host path is serial caps output tokens/s at 1 / per_sequence_s
    however large the batch (EngineConfig.host_s_per_sequence_step)."""

    def __init__(self, inner, per_sequence_s: float):
        self.inner, self.h = inner, float(per_sequence_s)

    def attn(self, L):
        return self.inner.attn(L)

    def iteration_s(self, n_tokens, n_logits, ctx_sum, attn_s, decode_only):
        t = self.inner.iteration_s(n_tokens, n_logits, ctx_sum, attn_s, decode_only)
        return np.maximum(t, self.h * np.asarray(n_logits, dtype=float))


# ---------------------------------------------------------------------------------- scheduler


@dataclass
class SimResult:
    arrival: np.ndarray
    first_token: np.ndarray
    finish: np.ndarray
    itl: np.ndarray  # duration of each iteration that produced decode tokens
    itl_weight: np.ndarray  # decode tokens it produced
    itl_end: np.ndarray  # when each of those iterations ended
    iterations: int
    preemptions: int


def api_server_ready(arrival: np.ndarray, per_request_s: float, after: float = -np.inf) -> np.ndarray:
    """When requests that reach the API server at ``arrival`` (sorted) are handed to the engine.

    The engines' OpenAI-compatible servers run every request's handler on one asyncio event loop in
    one Python process beside the engine loop (vLLM V1's API server process apart from EngineCore,
    which ``--api-server-count`` scales out; trtllm-serve's FastAPI server over the LLM API): the
    handler parses and validates the request, renders the chat template and tokenizes the prompt
    (``per_request_s``, blocking the loop), then awaits the send to the engine. The loop runs the
    ready handlers in turn, so requests that are waiting when it starts a round are all handled
    before any of their sends runs: the round starts at max(first arrival, end of the previous
    round), takes every request arrived by then, and hands them all over at its end,
    start + count x per_request_s. A lone request waits per_request_s; a burst of N waits N times
    that (the GPUStack max-load runs of 1,000 short requests deliver no first token for the first
    N x per_request_s seconds: their mean TTFT is 56-88% of the run). ``after``: when the server
    is free (the end of the previous round)."""
    a = np.asarray(arrival, dtype=float)
    h = max(0.0, float(per_request_s))
    free = float(after)
    if h == 0.0 or a.size == 0:
        return np.maximum(a, free) if np.isfinite(free) else a.copy()
    ready = np.empty_like(a)
    i, n = 0, a.size
    while i < n:
        start = max(float(a[i]), free)
        j = max(i + 1, int(np.searchsorted(a, start, side="right")))
        free = start + (j - i) * h
        ready[i:j] = free
        i = j
    return ready


def simulate(cost, *, num_requests: int, input_len, output_len, max_num_seqs: int, token_budget: int,
             kv_capacity_tokens: int, block_tokens: int = 16, mixed: bool = True, load: str = "max_load",
             value: float | None = None, seed: int = 0, ramp: str = "burst", cached_prefix: int = 0,
             intake_iterations: float = 0.0, api_server_s: float = 0.0, reserve_output: bool = False,
             paced_rate: float | None = None, chunked_prefill: bool = True) -> SimResult:
    """Run the scheduler over ``num_requests`` requests of ``input_len`` + ``output_len`` tokens.

    Load: ``batch`` (static batches of ``value``: all prefilled together, then decoded together;
    the next batch starts when the last finished), ``concurrency`` (closed loop: ``value`` requests
    in flight), ``request_rate`` (open loop: Poisson arrivals at ``value`` per second, seeded),
    ``max_load`` (all queued at t=0). A closed loop's clients start together (``ramp`` "burst", as
    vLLM's and SGLang's bench_serving start them) or out of phase ("steady", below).
    ``cached_prefix``: prompt tokens of every new request already in the prefix cache (automatic
    prefix caching, vLLM; RadixAttention, SGLang, Zheng et al. 2024): its prefill computes the rest,
    attending over the cached part. Each sequence still holds blocks for its whole context (the
    shared prefix blocks are counted per sequence: a conservative capacity).
    ``intake_iterations``: while the engine runs sequences, a request that arrived becomes
    schedulable only that many decode iterations of the running batch later (the batch's
    decode-only iteration time, prefill chunks left out): the time the server takes to hand a
    request over to a busy engine (EngineConfig.intake_iterations).
    ``api_server_s``: every request first passes the API server, one at a time (api_server_ready);
    the engine sees it only then, and its TTFT counts the wait (EngineConfig.api_server_s_per_request).
    ``paced_rate`` (a closed loop): the clients' requests are sent as a Poisson stream at this rate
    (seeded), request k no earlier than request k - c finished (estimate_serve's steady closed loop).
    ``chunked_prefill`` False (TensorRT-LLM's default): a new prompt is admitted only whole, when it
    fits the iteration's token budget left (one longer than the budget alone in its iteration).
    ``reserve_output``: a request is admitted only when the KV cache has blocks for its whole prompt
    and output, which it holds until it finishes, so nothing is preempted (TensorRT-LLM's
    GUARANTEED_NO_EVICT capacity scheduler); otherwise blocks are taken as tokens come.

    Each iteration (vLLM V1's order): every running decode sequence gets one token, then prefill
    chunks of partly prefilled sequences, then new admissions (first-come first-served) while the
    token budget, the running-sequence cap and the KV cache allow; a new request's chunk (its prompt,
    or the budget left) is scheduled only when the blocks for the whole chunk are free, never cut to
    the free blocks (vLLM V1's Scheduler.schedule: allocate_slots for the chunk, else stop admitting).
    ``mixed`` False (SGLang):
    an iteration with prefill work runs no decode tokens. A sequence's first token comes at the end
    of the iteration that finishes its prompt. When a decode token needs a KV block and none is
    free, the most recently admitted sequences are preempted and later re-prefilled (recompute).
    """
    N = int(num_requests)
    # every request's lengths (``input_len`` / ``output_len``: one int for all, or one per request)
    Ireq = np.broadcast_to(np.asarray(input_len, dtype=np.int64), (N,)) if N > 0 else np.zeros(0, np.int64)
    Oreq = np.broadcast_to(np.asarray(output_len, dtype=np.int64), (N,)) if N > 0 else np.zeros(0, np.int64)
    if N < 1 or min(int(Ireq.min()), int(Oreq.min()), max_num_seqs, token_budget) < 1:
        raise InputError("requests, lengths, running sequences and token budget must be >= 1", field="load")
    I = int(Ireq.max())  # the longest prompt (bounds); the means where a load needs one
    I_mean, O_mean = float(Ireq.mean()), float(Oreq.mean())
    # cohorts hold requests of equal lengths: same_to[a] is the end of the run of ids from a with a's lengths
    change = np.nonzero((np.diff(Ireq) != 0) | (np.diff(Oreq) != 0))[0] + 1
    run_ends = np.append(change, N)
    same_to = run_ends[np.searchsorted(run_ends, np.arange(N), side="right")]
    bs = max(1, int(block_tokens))
    cap_blocks = int(kv_capacity_tokens) // bs
    longest = int((Ireq + Oreq).max())
    if -(-longest // bs) > cap_blocks:
        raise InputError(f"one request of {longest} tokens does not fit the KV cache ({int(kv_capacity_tokens)} tokens)",
                         field="input_len")
    static = load == "batch"
    arrival = np.full(N, np.inf)
    pace = None  # a paced closed loop's Poisson send times
    if load in ("max_load", "batch"):
        arrival[:] = 0.0
        if static:
            max_num_seqs = int(value)
            token_budget = max(token_budget, int(value) * I)  # (the longest prompt: every batch in one iteration)
    elif load == "concurrency" and paced_rate:
        # clients out of phase, as independent streams: their merged requests are a Poisson stream
        # at paced_rate (Palm-Khintchine), except that a request waits for a client to be free
        # (request k is sent no earlier than request k - c finished)
        pace = np.cumsum(np.random.default_rng([seed, 2]).exponential(1.0 / float(paced_rate), N))
        arrival[: min(int(value), N)] = pace[: int(value)]
    elif load == "concurrency" and ramp == "burst":
        arrival[: int(value)] = 0.0
    elif load == "concurrency":
        # A closed-loop benchmark in its steady state: the clients' requests are out of phase (any
        # jitter spreads a common start over the run), so the first one of each client starts at
        # an even share of one request's lifetime (prefill + output_len decode steps of the full
        # batch), and later ones when a request finishes. estimate_serve leaves out this ramp (as
        # benchmarks that measure over stable windows after a warm-up, e.g. NVIDIA's AIPerf).
        c = min(int(value), N)
        Im, Om = int(round(I_mean)), int(round(O_mean))
        life = float(cost.iteration_s(Im, 1, 0, cost.attn(Im), False)) + Om * float(
            cost.iteration_s(c, c, c * (Im + Om // 2), 0.0, True))
        arrival[:c] = np.arange(c) * (life / c)
    elif load == "request_rate":
        rng = np.random.default_rng(seed)
        arrival = np.cumsum(rng.exponential(1.0 / float(value), N))
    else:
        raise InputError(f"unknown load {load!r}; expected one of {', '.join(LOADS)}", field="load")
    conc = int(value) if load == "concurrency" else 0
    h_api = max(0.0, float(api_server_s))
    # when the engine sees each request (inf: not arrived yet)
    ready = np.full(N, np.inf)
    known = int(np.isfinite(arrival).sum())
    ready[:known] = api_server_ready(arrival[:known], h_api)

    def arrive(s0: int, s1: int, t: float, pace=None):  # closed loop: requests s0..s1 sent at t
        arrival[s0:s1] = t if pace is None else np.maximum(t, pace[s0:s1])
        if s1 > s0:
            ready[s0:s1] = api_server_ready(arrival[s0:s1], h_api, float(ready[s0 - 1]) if s0 > 0 else -np.inf)
    cached = max(0, int(cached_prefix))  # per request at most its prompt less one token
    first = np.full(N, np.nan)
    finish = np.full(N, np.nan)
    # cohorts: request ids [lo, hi), ctx = tokens in the KV cache, pf = prompt tokens still to
    # prefill, dec = tokens generated; order = admission order
    lo = np.zeros(0, np.int64); hi = np.zeros(0, np.int64)
    ctx = np.zeros(0, np.int64); pf = np.zeros(0, np.int64); dec = np.zeros(0, np.int64)
    requeue: list[tuple[int, int, int]] = []  # preempted (lo, hi, dec), re-admitted first
    next_req = 0
    done = 0
    now = 0.0
    itl_t: list[np.ndarray] = []
    itl_w: list[np.ndarray] = []
    itl_e: list[np.ndarray] = []
    iters = 0
    preempted = 0
    lag_k = max(0.0, float(intake_iterations))

    def blocks(c):
        return -(-c // bs)

    def held(c, full):  # KV blocks a sequence holds at context c (its whole prompt + output if reserved)
        return blocks(np.maximum(c, full)) if reserve_output else blocks(c)

    while done < N:
        n = hi - lo
        running = int(n.sum())
        lag = 0.0
        if running and lag_k:  # a busy engine's intake: lag_k decode iterations of its running batch
            lag = lag_k * float(cost.iteration_s(running, running, int((n * (ctx + 1)).sum()), 0.0, True))
        seen = now - lag
        avail_new = (int(np.searchsorted(ready, seen, side="right")) - next_req) if next_req < N else 0
        waiting = avail_new + sum(h - l for l, h, _ in requeue)
        if running == 0 and waiting == 0:
            now = max(now, float(ready[next_req]))
            continue
        decoding = pf == 0
        can_admit = waiting > 0 and running < max_num_seqs and (not static or running == 0)
        # ------------------------------------------------ a run of decode-only iterations
        if running and bool(decoding.all()) and not can_admit:
            nd = running
            Oc = Oreq[lo]
            k = int((Oc - dec).min())
            if next_req < N and running < max_num_seqs and not static and np.isfinite(ready[next_req]):
                limit_t = float(ready[next_req]) + lag
            else:
                limit_t = np.inf
            if k > 1:  # KV blocks: the first step that would need more than there are
                j = np.arange(1, k + 1)
                need = (n[:, None] * held(ctx[:, None] + j[None, :], (Ireq[lo] + Oreq[lo])[:, None])).sum(axis=0)
                over = np.nonzero(need > cap_blocks)[0]
                if over.size:
                    k = max(1, int(over[0]))
            j = np.arange(k)
            ctx0 = int((n * (ctx + 1)).sum())
            ts = cost.iteration_s(nd, nd, ctx0 + nd * j, 0.0, True) * np.ones(k)
            if np.isfinite(limit_t):
                cum = now + np.cumsum(ts)
                stop = int(np.searchsorted(cum, limit_t, side="left"))
                if stop < k:
                    k = stop + 1
                    ts = ts[:k]
            if int((n * held(ctx + k, Ireq[lo] + Oreq[lo])).sum()) > cap_blocks:
                k = 1
                ts = ts[:1]
                # fall through to the single-iteration path, which preempts
            else:
                itl_e.append(now + np.cumsum(ts))
                now += float(ts.sum())
                iters += k
                itl_t.append(ts); itl_w.append(np.full(k, nd, dtype=float))
                ctx = ctx + k; dec = dec + k
                fin = dec >= Oc
                if fin.any():
                    for a, b in zip(lo[fin], hi[fin]):
                        finish[a:b] = now
                        cnt = b - a
                        if conc:
                            s0 = conc + done
                            arrive(s0, min(N, s0 + cnt), max(now, float(arrival[min(N, conc) - 1])), pace)
                        done += int(cnt)
                    keep = ~fin
                    lo, hi, ctx, pf, dec = lo[keep], hi[keep], ctx[keep], pf[keep], dec[keep]
                continue
        # ------------------------------------------------ one iteration
        iters += 1
        n = hi - lo
        decoding = pf == 0
        # decode tokens first (not in a prefill iteration of an unmixed engine)
        has_pf_work = bool((~decoding).any()) or can_admit
        run_decode = mixed or not has_pf_work
        if run_decode and decoding.any():
            # preempt the newest cohorts' sequences until every decode token has its block
            while True:
                need = int((n * held(ctx + np.where(decoding, 1, 0), Ireq[lo] + Oreq[lo])).sum())
                if need <= cap_blocks or len(lo) <= 1 and n.sum() <= 1:
                    break
                last = len(lo) - 1
                excess_blocks = need - cap_blocks
                per = max(1, int(blocks(ctx[last] + (1 if decoding[last] else 0))))
                drop = int(min(n[last], -(-excess_blocks // per)))
                requeue.insert(0, (int(hi[last] - drop), int(hi[last]), int(dec[last])))
                preempted += drop
                hi[last] -= drop
                if hi[last] == lo[last]:
                    lo, hi, ctx, pf, dec = lo[:-1], hi[:-1], ctx[:-1], pf[:-1], dec[:-1]
                n = hi - lo
                decoding = pf == 0
        nd = int(n[decoding].sum()) if run_decode else 0
        ctx_sum = int((n[decoding] * (ctx[decoding] + 1)).sum()) if run_decode else 0
        budget = token_budget - nd
        free = cap_blocks - int((n * held(ctx + np.where(decoding & run_decode, 1, 0), Ireq[lo] + Oreq[lo])).sum())
        tokens = nd
        logits = nd
        attn_s = 0.0
        first_done: list[tuple[int, int]] = []
        new_ctx = ctx.copy()
        new_pf = pf.copy()
        # continue partial prefills (cohorts of one sequence)
        for i in np.nonzero(~decoding)[0]:
            if budget <= 0:
                break
            c = int(min(pf[i], budget))
            full_i = int(Ireq[lo[i]] + Oreq[lo[i]])
            grow = int(held(ctx[i] + c, full_i) - held(ctx[i], full_i))
            if grow > free:
                c = max(0, int((blocks(ctx[i]) + free) * bs - ctx[i]))
                c = min(c, int(pf[i]))
                grow = int(held(ctx[i] + c, full_i) - held(ctx[i], full_i))
            if c <= 0:
                continue
            attn_s += float(cost.attn(ctx[i] + c) - cost.attn(ctx[i]))
            budget -= c; free -= grow; tokens += c
            new_ctx[i] += c; new_pf[i] -= c
            if new_pf[i] == 0:
                logits += 1
        # admissions
        add_lo, add_hi, add_ctx, add_pf, add_dec = [], [], [], [], []
        seats = max_num_seqs - running
        avail_new = (int(np.searchsorted(ready, seen, side="right")) - next_req) if next_req < N else 0
        if not (static and running > 0) and (mixed or nd == 0):
            while budget > 0 and seats > 0 and (requeue or avail_new > 0):
                from_rq = bool(requeue)
                if from_rq:
                    a, b, d0 = requeue[0]
                else:
                    a, b, d0 = next_req, next_req + avail_new, 0
                start, L = a, int(Ireq[a]) + d0
                b_same = min(b, int(same_to[a]))  # requests of a's lengths
                pre = min(cached, int(Ireq[a]) - 1) if d0 == 0 else 0  # prompt tokens found in the prefix cache
                Lc = L - pre  # tokens to compute
                full_a = int(Ireq[a] + Oreq[a]) if reserve_output else 0
                per_blocks = int(held(L, full_a))
                full = int(min(b_same - a, seats, budget // Lc, free // per_blocks))
                if full > 0:
                    add_lo.append(a); add_hi.append(a + full); add_ctx.append(L); add_pf.append(0); add_dec.append(d0)
                    if d0 == 0:
                        first_done.append((a, a + full))
                    budget -= full * Lc; free -= full * per_blocks; seats -= full; tokens += full * Lc; logits += full
                    attn_s += full * float(cost.attn(L) - cost.attn(pre))
                    a += full
                c = int(min(budget, Lc))  # vLLM V1: a new request's chunk is scheduled only if its blocks fit
                if int(held(pre + c, full_a)) > free:
                    c = 0
                if not chunked_prefill and not (Lc > token_budget and tokens == nd):
                    c = 0  # whole prompts only (one longer than the budget alone in its iteration)
                if a < b_same and seats > 0 and 0 < c < Lc:  # a chunk of the next prompt
                    add_lo.append(a); add_hi.append(a + 1); add_ctx.append(pre + c); add_pf.append(Lc - c)
                    add_dec.append(d0)
                    budget -= c; free -= int(held(pre + c, full_a)); seats -= 1; tokens += c
                    attn_s += float(cost.attn(pre + c) - cost.attn(pre))
                    a += 1
                if from_rq:
                    if a >= b:
                        requeue.pop(0)
                    else:
                        requeue[0] = (a, b, d0)
                else:
                    next_req += a - start
                    avail_new -= a - start
                if a == start or a < b_same:
                    break
        if tokens == 0:
            # nothing could run (KV full with only partial prefills): free the newest sequence
            last = len(lo) - 1
            requeue.insert(0, (int(hi[last] - 1), int(hi[last]), int(dec[last])))
            preempted += 1
            hi[last] -= 1
            if hi[last] == lo[last]:
                lo, hi, ctx, pf, dec = lo[:-1], hi[:-1], ctx[:-1], pf[:-1], dec[:-1]
            continue
        t = float(cost.iteration_s(tokens, logits, ctx_sum, attn_s, tokens == nd))
        now += t
        if nd:
            itl_t.append(np.array([t])); itl_w.append(np.array([float(nd)])); itl_e.append(np.array([now]))
        # decoders advance
        new_dec = dec.copy()
        if run_decode:
            new_ctx = np.where(decoding, new_ctx + 1, new_ctx)
            new_dec = np.where(decoding, dec + 1, dec)
        # sequences whose prefill ended now emit their first token (a re-prefilled one: its next)
        ended = (~decoding) & (new_pf == 0)
        for i in np.nonzero(ended)[0]:
            if dec[i] == 0:
                first[lo[i]:hi[i]] = now
            new_dec[i] += 1
        lo = np.concatenate([lo, np.array(add_lo, np.int64)])
        hi = np.concatenate([hi, np.array(add_hi, np.int64)])
        ctx = np.concatenate([new_ctx, np.array(add_ctx, np.int64)])
        pf = np.concatenate([new_pf, np.array(add_pf, np.int64)])
        add_dec_arr = np.array(add_dec, np.int64) + (np.array(add_pf, np.int64) == 0)
        dec = np.concatenate([new_dec, add_dec_arr])
        for a, b in first_done:
            first[a:b] = now
        fin = dec >= Oreq[lo]
        if fin.any():
            for a, b in zip(lo[fin], hi[fin]):
                finish[a:b] = now
                cnt = int(b - a)
                if conc:
                    s0 = conc + done
                    arrive(s0, min(N, s0 + cnt), max(now, float(arrival[min(N, conc) - 1])), pace)
                done += cnt
            keep = ~fin
            lo, hi, ctx, pf, dec = lo[keep], hi[keep], ctx[keep], pf[keep], dec[keep]
    return SimResult(arrival=arrival, first_token=first, finish=finish,
                     itl=np.concatenate(itl_t) if itl_t else np.zeros(0),
                     itl_weight=np.concatenate(itl_w) if itl_w else np.zeros(0),
                     itl_end=np.concatenate(itl_e) if itl_e else np.zeros(0), iterations=iters, preemptions=preempted)


# ---------------------------------------------------------------------------------- statistics


def _stats(x: np.ndarray, w: np.ndarray | None = None) -> dict:
    if x.size == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    if w is None:
        p = np.percentile(x, [50, 90, 99])
        return {"mean": float(x.mean()), "p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2])}
    order = np.argsort(x)
    xs, ws = x[order], w[order]
    cw = np.cumsum(ws) / ws.sum()
    q = [float(xs[min(len(xs) - 1, int(np.searchsorted(cw, f)))]) for f in (0.5, 0.9, 0.99)]
    return {"mean": float((x * w).sum() / w.sum()), "p50": q[0], "p90": q[1], "p99": q[2]}


@dataclass
class ServeEstimate:
    model_id: str
    hardware: str
    engine: str
    tp: int
    devices: int
    load: str
    load_value: float | None
    num_requests: int
    input_len: int
    output_len: int
    weight_dtype: str
    kv_dtype: str
    max_num_seqs: int
    max_tokens_per_iteration: int
    kv_cache_tokens: int
    kv_cache_sequences: int  # full-length (input + output) sequences the KV cache holds at once
    weights_bytes_per_device: float
    kv_cache_bytes_per_device: float
    duration_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float
    output_tokens_per_s_per_device: float
    total_tokens_per_s_per_device: float
    requests_per_s: float
    ttft_s: dict
    itl_s: dict
    e2e_s: dict
    iterations: int
    preemptions: int
    tpot_s: dict | None = None  # per request: (latency - TTFT) / (output tokens - 1), as bench_serving's TPOT
    dp_attention: bool = False
    input_len_range: tuple[int, int] | None = None  # lengths drawn uniformly from lo..hi (input_len: their middle)
    output_len_range: tuple[int, int] | None = None
    usd_per_million_output_tokens: float | None = None  # devices x price per device-hour over the run
    kwh_per_million_output_tokens: float | None = None  # at the wall (costmodel.energy: TDP x PUE)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def kv_capacity(model: ModelConfig, spec: AcceleratorSpec, job: InferJob, tp: int, eng: EngineConfig,
                pp: int = 1, dp_attention: bool = False) -> tuple[float, float, int]:
    """(weights bytes, KV-cache bytes per device, KV-cache tokens) under the engine's memory rule.
    Besides the weights, the engine keeps an activation workspace for a forward of its token
    budget (~ 12 bytes per hidden and 6 per FFN element per token, the live tensors of one layer,
    as validate's eager prefill peak counts them) and the CUDA context. With ``pp`` pipeline stages
    each device holds 1/pp of the layers' weights and of every token's KV: the tokens are those the
    whole pipeline holds. With ``dp_attention`` every device holds the whole attention weights and
    the whole KV of its own sequences' tokens: the tokens are those of all tp devices."""
    w = decode_memory(model, job.model_copy(update={"batch": 1}), 1, tp).weights_bytes / pp
    if dp_attention:
        w += attention_params(model) * DTYPE_BYTES[job.weight_dtype] * (1.0 - 1.0 / tp) / pp
    act = eng.max_tokens_per_iteration * (model.hidden * 2.0 * 6 + model.ffn * 2.0 * 3) / tp
    cap = spec.memory.capacity_bytes
    if eng.kv_memory_basis == "free":
        kv = eng.kv_memory_fraction * (cap - w - act - CUDA_CONTEXT_BYTES)
    else:
        kv = eng.kv_memory_fraction * cap - w - act - CUDA_CONTEXT_BYTES
    per_tok = (kv_cache_bytes(model, 1, 1, job.kv_dtype, 1) / tp if dp_attention
               else kv_cache_bytes(model, 1, 1, job.kv_dtype, tp)) / pp
    tokens = int(max(0.0, kv) // per_tok) // eng.block_tokens * eng.block_tokens
    return w, max(0.0, kv), tokens


PACED_LOOP_ROUNDS = 2  # fixed-point rounds of the paced closed loop's rate (2: the rate moves < 2% more)


def _paced_closed_loop(cost, sim: SimResult, c: int, sim_kw: dict) -> SimResult:
    """A closed loop of c >= 2 clients in its steady state, its clients out of phase: by the
    Palm-Khintchine theorem (the superposition of many independent renewal streams tends to a
    Poisson stream) their requests arrive as a Poisson stream, at the rate Little's law gives,
    c / (mean request latency), a request waiting for a free client (simulate's paced_rate). The
    rate starts from ``sim`` (the evenly spaced clients of simulate's "steady" ramp) and is re-solved
    PACED_LOOP_ROUNDS times. Evenly spaced deterministic clients instead fall into lock-step groups
    where prefill is heavy (NIM 1.8.0 Llama 3.3 70B TP2, 5000+500 tokens, 50 clients: TTFT 3.06 s
    evenly spaced, 2.08 s paced, 0.83 s measured; an uncapped Poisson stream gives 0.99 s there but
    overstates time between tokens and throughput, since it lets more than c requests in)."""
    n = int(sim_kw["num_requests"])
    for _ in range(PACED_LOOP_ROUNDS):
        life = float(np.mean((sim.finish - sim.arrival)[c:n - c]))
        sim = simulate(cost, **sim_kw, paced_rate=c / life)
    return sim


def _speculative_cost(cost, model: ModelConfig, spec, job: InferJob, tp: int, node, eng: EngineConfig, calibration,
                      spec_decode: str, spec_tokens: int, spec_acceptance: float, draft_model, *, max_tokens: int,
                      max_context_tokens: int):
    """(the iteration cost with ``spec_tokens`` drafted a step, the expected tokens a step yields):
    the model's MTP module, or a draft model at the same tp with the target's weight dtype
    (SpeculativeCost, expected_tokens_per_step)."""
    draft = None
    if spec_decode == "draft":
        draft = IterationCost(draft_model, spec, job, tp, node, max_tokens=max_tokens,
                              max_context_tokens=max_context_tokens, max_prompt=2, graph_sizes=eng.cuda_graph_sizes,
                              calibration=calibration, custom_allreduce=eng.custom_allreduce)
    return (SpeculativeCost(cost, spec_tokens, model.layers, draft),
            expected_tokens_per_step(spec_acceptance, spec_tokens))


def _measured_window(sim: SimResult, load: str, ramp: str, num_requests: int, c: int, notes: list):
    """What a run's statistics cover: (start, duration, requests done, the requests' slice, the
    inter-token gaps kept). Every request, but for a closed loop in its steady state ("steady"
    ramp): from the first request after the clients' ramp to the last arrival (c requests in flight
    throughout), whose completions are its arrivals; a note added."""
    start = float(np.min(sim.arrival))
    window = (start, float(np.max(sim.finish)) - start, num_requests, slice(0, num_requests),
              np.ones(sim.itl.size, dtype=bool))
    if not (load == "concurrency" and ramp == "steady" and num_requests >= 3 * c):
        return window
    t_a, t_b = float(sim.arrival[c]), float(sim.arrival[num_requests - 1])
    if t_b <= t_a:
        return window
    notes.append(f"closed loop: statistics over its steady state (requests {c + 1} to {num_requests - c}, "
                 f"{t_b - t_a:.3g} s), the clients' ramp and drain left out")
    return t_a, t_b - t_a, num_requests - 1 - c, slice(c, num_requests - c), (sim.itl_end > t_a) & (sim.itl_end <= t_b)


def _length_ranges(input_len_range, output_len_range) -> dict:
    """{"input_len" / "output_len": (lo, hi)} of the ranges given (estimate_serve), each checked."""
    ranges = {}
    for name, rng_ in (("input_len", input_len_range), ("output_len", output_len_range)):
        if rng_ is not None:
            lo_, hi_ = (int(x) for x in rng_)
            if not 1 <= lo_ <= hi_:
                raise InputError(f"expected a range lo:hi with 1 <= lo <= hi (got {lo_}:{hi_})", field=f"{name}_range")
            ranges[name] = (lo_, hi_)
    return ranges


def _check_serve_inputs(model: ModelConfig, *, tp, pp, ep, load, value, ramp, prefix_hit_rate, dp_attention,
                        spec_decode, spec_tokens, spec_acceptance, draft_model):
    """estimate_serve's arguments checked (InputError naming the field); returns the speculative
    acceptance rate (MTP's default where none is given)."""
    if pp < 1 or pp > model.layers:
        raise InputError(f"pp ({pp}) must be between 1 and the model's {model.layers} layers", field="pp")
    if not 0.0 <= prefix_hit_rate < 1.0:
        raise InputError(f"prefix-cache hit rate must be in [0, 1) (got {prefix_hit_rate})", field="prefix_hit_rate")
    if ramp not in RAMPS:
        raise InputError(f"unknown ramp {ramp!r}; expected one of {', '.join(RAMPS)}", field="ramp")
    if load not in LOADS:
        raise InputError(f"unknown load {load!r}; expected one of {', '.join(LOADS)}", field="load")
    if load != "max_load" and (value is None or value <= 0):
        raise InputError(f"--{load.replace('_', '-')} needs a positive value", field=load)
    if model.heads % tp:
        raise InputError(f"tp ({tp}) must divide the model's {model.heads} heads", field="tp")
    if dp_attention and tp < 2:
        raise InputError("data-parallel attention needs tp >= 2 (it spreads the attention over the tp devices)",
                         field="dp_attention")
    if ep < 1 or tp % ep or (ep > 1 and (model.moe is None or model.moe.experts % ep)):
        raise InputError(f"ep ({ep}) must divide tp ({tp}) and the model's experts", field="ep")
    if spec_decode not in (None, "mtp", "draft"):
        raise InputError(f"unknown speculative decoding {spec_decode!r}; expected mtp or draft", field="spec")
    if spec_decode:
        if spec_acceptance is None:
            if spec_decode == "draft":
                raise InputError("a draft model needs its acceptance rate (--spec-acceptance)", field="spec_acceptance")
            spec_acceptance = MTP_DEFAULT_ACCEPTANCE
        if not 0.0 <= spec_acceptance <= 1.0 or spec_tokens < 1:
            raise InputError("acceptance must be in [0, 1] and drafted tokens >= 1", field="spec_acceptance")
        if spec_decode == "draft" and draft_model is None:
            raise InputError("--spec draft needs --draft-model", field="draft_model")
    return spec_acceptance


def estimate_serve(model: ModelConfig, spec: AcceleratorSpec, *, tp: int = 1, input_len: int, output_len: int,
                   load: str, value: float | None = None, num_requests: int | None = None, engine: str = "vllm",
                   weight_dtype: str = "bf16", kv_dtype: str = "bf16", node: NodeSpec | None = None,
                   calibration: str | None = None, seed: int = 0, max_num_seqs: int | None = None,
                   max_tokens_per_iteration: int | None = None, ramp: str = "steady", ep: int = 1,
                   pue: float = DEFAULT_PUE, power_fraction: float = DEFAULT_POWER_FRACTION,
                   spec_decode: str | None = None, spec_tokens: int = 1, spec_acceptance: float | None = None,
                   draft_model: ModelConfig | None = None, prefix_hit_rate: float = 0.0, pp: int = 1,
                   intake_iterations: float | None = None, input_len_range: tuple[int, int] | None = None,
                   output_len_range: tuple[int, int] | None = None, dp_attention: bool = False,
                   api_server_s_per_request: float | None = None,
                   host_s_per_sequence_step: float | None = None) -> ServeEstimate:
    """Serve ``load`` (SCHEMA.md ``serve``) with ``engine``'s defaults. A closed loop (``concurrency``)
    is reported in its steady state (``ramp`` "steady": clients out of phase, ramp and drain left
    out) or as a benchmark that starts every client together and counts every request ("burst").
    ``ep``: expert parallelism inside the tensor-parallel group (SGLang's --ep-size, vLLM's
    --enable-expert-parallel): each of the tp devices holds experts / ep whole experts sliced tp / ep
    ways; the layer's output is combined by the same all-reduce as tensor parallelism.
    ``spec_decode`` "mtp" (the model's multi-token-prediction module) or "draft" (``draft_model``,
    same tp): ``spec_tokens`` drafted per step, each accepted with ``spec_acceptance``
    (SpeculativeCost). A sequence then gains expected_tokens_per_step tokens per iteration: the
    scheduler runs 1 + ceil((output_len - 1) / that) decode steps per request, its KV cache holds
    as many full sequences as it would without, and time between tokens is the iteration time over
    the tokens it yields. ``prefix_hit_rate``: the share of every prompt found in the prefix cache
    (simulate's cached_prefix). ``pp`` pipeline stages of tp devices each (vLLM's pipeline-parallel
    serving: as many micro-batches in flight as stages): the engine runs as pp virtual engines, each
    with 1/pp of the load and of the KV cache, whose iterations pass all stages in turn (the whole
    model's time at tp, plus pp - 1 activation transfers) while the others' fill the other stages;
    throughput is pp times a virtual engine's. ``input_len_range`` / ``output_len_range`` (lo, hi):
    every request's lengths drawn uniformly from those integers (seeded; as bench_serving's random
    dataset with a range ratio), in place of ``input_len`` / ``output_len``. ``dp_attention``:
    data-parallel attention over the tp devices (decode_step, kv_capacity), the scheduler seeing
    one pool of all their requests (balanced over the ranks). ``api_server_s_per_request``: the
    engine's API server's serial time per request (simulate's ``api_server_s``; engine default); a
    static ``batch`` runs offline, without the server. ``host_s_per_sequence_step``: the server's
    host time per sequence per iteration (HostBoundCost; engine default; not for a static batch)."""
    ranges = _length_ranges(input_len_range, output_len_range)
    nominal_in, nominal_out = input_len, output_len
    if "input_len" in ranges:  # the longest bounds the tables and the KV check; the mean is reported
        nominal_in, input_len = int(round(sum(ranges["input_len"]) / 2)), ranges["input_len"][1]
    if "output_len" in ranges:
        nominal_out, output_len = int(round(sum(ranges["output_len"]) / 2)), ranges["output_len"][1]
    spec_acceptance = _check_serve_inputs(model, tp=tp, pp=pp, ep=ep, load=load, value=value, ramp=ramp,
                                          prefix_hit_rate=prefix_hit_rate, dp_attention=dp_attention,
                                          spec_decode=spec_decode, spec_tokens=spec_tokens,
                                          spec_acceptance=spec_acceptance, draft_model=draft_model)
    eng = load_engine(engine, spec, tp, max_num_seqs=max_num_seqs, max_tokens_per_iteration=max_tokens_per_iteration,
                      intake_iterations=intake_iterations, api_server_s_per_request=api_server_s_per_request,
                      host_s_per_sequence_step=host_s_per_sequence_step)
    # fp8 weights on a device with fp8 tensor cores run as FP8 W8A8 (activations quantized on the
    # fly, fp8 math: vLLM's and SGLang's fp8 checkpoints, TensorRT-LLM's fp8 engines); int8 / int4
    # stay weight-only (W8A16 / W4A16)
    compute = "fp8" if weight_dtype == "fp8" and spec.peak_flops.get("fp8") else "bf16"
    job = InferJob(batch=1, prompt_len=input_len, gen_len=output_len, weight_dtype=weight_dtype, kv_dtype=kv_dtype,
                   compute_dtype=compute, cuda_graph=True)
    w, kv_bytes, kv_tokens = kv_capacity(model, spec, job, tp, eng, pp, dp_attention)
    kv_tokens = kv_tokens // pp  # one virtual engine's share
    if spec_decode == "draft":
        # the draft model's weights share the device, and each token's KV holds the draft's too
        wd = decode_memory(draft_model, job.model_copy(update={"batch": 1}), 1, tp).weights_bytes
        per_t = kv_cache_bytes(model, 1, 1, job.kv_dtype, tp)
        per_d = kv_cache_bytes(draft_model, 1, 1, job.kv_dtype, tp)
        kv_bytes = max(0.0, kv_bytes - wd)
        kv_tokens = int(kv_bytes // (per_t + per_d)) // eng.block_tokens * eng.block_tokens
        w += wd
    if kv_tokens < input_len + output_len:
        raise InputError(f"{model.id} does not fit {tp} x {spec.id} with room for one {input_len}+{output_len}-token "
                         f"request ({w / GIB:.1f} GiB of weights per device); try --tp or a smaller --weight-dtype",
                         field="tp")
    if num_requests is None:
        num_requests = {"batch": int(value or 1), "concurrency": int(10 * (value or 1))}.get(load, 1000)
    notes = []
    total_requests, total_value, ve = num_requests, value, pp
    if pp > 1:  # one virtual engine's share of the load (fewer engines busy when the load is smaller)
        if load in ("batch", "concurrency"):
            value = -(-int(value) // pp)
            ve = -(-int(total_value) // int(value))
        elif value is not None:
            value = value / pp
        num_requests = max(1, -(-num_requests // ve))
        notes.append(f"pipeline parallel: {pp} stages, {ve} micro-batches in flight, each a 1/{ve} share of the load")
    seqs = eng.max_num_seqs
    if load == "batch":
        seqs = int(value)
    per_seq = -(-(nominal_in + nominal_out) // eng.block_tokens) * eng.block_tokens
    kv_seqs = kv_tokens // per_seq
    if load == "batch" and kv_seqs < value:
        notes.append(f"the KV cache holds {kv_seqs} full sequences, fewer than the batch: sequences are preempted")
    seqs_bound = min(seqs, 1 << 20)
    cost = _iteration_cost(model, spec, job, tp, node,
                           max_tokens=max(eng.max_tokens_per_iteration, int(value or 0) * input_len if load == "batch" else 0,
                                          min(seqs_bound, kv_seqs + 1)),
                           max_context_tokens=min(kv_tokens, max(seqs_bound, 1) * (input_len + output_len)),
                           max_prompt=input_len + output_len, graph_sizes=eng.cuda_graph_sizes, calibration=calibration,
                           custom_allreduce=eng.custom_allreduce, ep=ep, moe_math_efficiency=eng.moe_math_efficiency,
                           dp_attention=dp_attention)
    if pp > 1:
        cost = PipelineCost(cost, model, spec, node, tp, pp, calibration)
    # every request's lengths
    len_rng = np.random.default_rng([seed, 1])
    I_arr = (len_rng.integers(ranges["input_len"][0], ranges["input_len"][1] + 1, num_requests)
             if "input_len" in ranges else np.full(num_requests, input_len, dtype=np.int64))
    O_arr = (len_rng.integers(ranges["output_len"][0], ranges["output_len"][1] + 1, num_requests)
             if "output_len" in ranges else np.full(num_requests, output_len, dtype=np.int64))
    I_mean, O_mean = float(I_arr.mean()), float(O_arr.mean())
    tau, steps, kv_sim = 1.0, O_arr, kv_tokens
    if spec_decode:
        cost, tau = _speculative_cost(cost, model, spec, job, tp, node, eng, calibration, spec_decode, spec_tokens,
                                      spec_acceptance, draft_model, max_tokens=max(min(seqs_bound, kv_seqs + 1), 16),
                                      max_context_tokens=min(kv_tokens, max(seqs_bound, 1) * (input_len + output_len)))
        steps = 1 + np.ceil((O_arr - 1) / tau).astype(np.int64)
        kv_sim = int(kv_tokens * (I_mean + steps.mean()) / (I_mean + O_mean))
        notes.append(f"speculative decoding ({spec_decode}): {spec_tokens} drafted, acceptance {spec_acceptance:g}, "
                     f"{tau:.2f} tokens per step")
    if load != "batch" and eng.host_s_per_sequence_step > 0:
        cost = HostBoundCost(cost, eng.host_s_per_sequence_step)
        notes.append(f"server host time: {eng.host_s_per_sequence_step * 1e6:.3g} us per sequence per iteration "
                     f"(at most {1.0 / eng.host_s_per_sequence_step:,.0f} streamed tokens/s)")
    sim_kw = dict(num_requests=num_requests, input_len=I_arr, output_len=steps, max_num_seqs=seqs_bound,
                  token_budget=max(eng.max_tokens_per_iteration, 1), kv_capacity_tokens=kv_sim,
                  block_tokens=eng.block_tokens, mixed=eng.mixed_batches, load=load, value=value, seed=seed,
                  chunked_prefill=eng.chunked_prefill,
                  ramp=ramp, cached_prefix=int(round(prefix_hit_rate * I_mean)),
                  intake_iterations=eng.intake_iterations,
                  api_server_s=eng.api_server_s_per_request if load != "batch" else 0.0,
                  reserve_output=eng.reserve_output)
    sim = simulate(cost, **sim_kw)
    c = int(value or 0)
    if load == "concurrency" and ramp == "steady" and c >= 2 and num_requests >= 3 * c:
        sim = _paced_closed_loop(cost, sim, c, sim_kw)
        notes.append("closed loop: the clients out of phase send a Poisson stream of requests at the rate "
                     "Little's law gives (c / mean latency), each waiting for a free client")
    start, duration, done, reqs, itl_keep = _measured_window(sim, load, ramp, num_requests, c, notes)
    out_tok = done * O_mean * ve  # the busy virtual engines together
    tot_tok = done * (I_mean + O_mean) * ve
    devices = tp * pp
    # cost and energy of a million output tokens: the devices for the time they take
    dev_h_per_m = devices * duration / 3600.0 * 1e6 / out_tok
    price = getattr(spec, "price_per_hour_usd", None)
    usd = price * dev_h_per_m if price else None
    kwh = energy_kwh(spec.tdp_w, devices, duration * 1e6 / out_tok, pue=pue, power_fraction=power_fraction)
    if dp_attention:
        notes.append(f"data-parallel attention: each of the {tp} devices runs the attention of its own sequences "
                     "(whole attention weights, whole KV per token); MLP / MoE layers over all tokens")
    if load != "batch" and eng.api_server_s_per_request > 0:
        notes.append(f"API server: {eng.api_server_s_per_request * 1e3:.3g} ms a request before the engine sees it "
                     "(requests arriving together wait for all of them)")
    if sim.preemptions:
        notes.append(f"{sim.preemptions} preemptions (KV cache full): those sequences were re-prefilled")
    return ServeEstimate(
        model_id=model.id, hardware=spec.id, engine=eng.id, tp=tp, devices=devices, load=load, load_value=total_value,
        num_requests=total_requests, input_len=nominal_in, output_len=nominal_out, weight_dtype=weight_dtype,
        kv_dtype=kv_dtype, max_num_seqs=min(eng.max_num_seqs, 1 << 30) if load != "batch" else int(total_value),
        max_tokens_per_iteration=eng.max_tokens_per_iteration, kv_cache_tokens=kv_tokens * pp,
        kv_cache_sequences=kv_seqs * pp,
        weights_bytes_per_device=w, kv_cache_bytes_per_device=kv_bytes, duration_s=duration,
        output_tokens_per_s=out_tok / duration, total_tokens_per_s=tot_tok / duration,
        output_tokens_per_s_per_device=out_tok / duration / devices,
        total_tokens_per_s_per_device=tot_tok / duration / devices, requests_per_s=done * ve / duration, ttft_s=_stats((sim.first_token - sim.arrival)[reqs]),
        itl_s=_stats(sim.itl[itl_keep] / tau, sim.itl_weight[itl_keep]), e2e_s=_stats((sim.finish - sim.arrival)[reqs]),
        tpot_s=_stats(((sim.finish - sim.first_token) / np.maximum(O_arr - 1, 1))[reqs][O_arr[reqs] > 1]),
        iterations=sim.iterations, usd_per_million_output_tokens=usd, kwh_per_million_output_tokens=kwh,
        preemptions=sim.preemptions, notes=notes, dp_attention=dp_attention, input_len_range=ranges.get("input_len"),
        output_len_range=ranges.get("output_len"))
