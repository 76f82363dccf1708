"""`costmodel validate`: predict every measurement record and report the error.

Reads JSONL records in the format of ``../shared/truth/SCHEMA.md`` (kinds kernel, train,
decode_step, infer) and ``published`` records (data/published/*.jsonl: TFLOP/s per device and
MFU of runs at scale). A record with ``"oom": true`` is a case of metric ``fits`` whose prediction
must be ``false``; a published record with ``measured.fits`` (true or false: a paper's "largest
model that trains" on a setup) is a ``fits`` case whose prediction must equal it. Train and
published records may say where ZeRO-Offload / ZeRO-Infinity put the states:
``"offload": {"optimizer": "none|cpu|nvme", "params": "none|cpu|nvme"}``.

Besides the error of each number, the report says how well the model *ranks* layouts: train and
published records of one model on one device count form a group (``group_key``), and ``ranking``
gives each group's Spearman correlation of predicted against measured step time and the regret of
picking the layout the model predicts fastest.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from .arch import PALM_BLOCK, ModelConfig, load_model
from .bench.records import check_kernel_record
from . import fitted, frameworks
from .errors import InputError, from_validation_error
from .record_schema import check_record
from .inference import decode_step, prefill_time_s
from .memory import CUBLAS_WORKSPACES_BYTES, decode_memory, required_device_bytes
from .roofline import efficiency_for
from .specs import HardwareLibrary, load_library
from .training import estimate_train
from .workload import InferJob, Parallel, TrainJob


class Case(BaseModel):
    name: str
    kind: str
    metric: str
    measured: float | bool
    predicted: float | bool
    rel_error: float
    group: str | None = None  # train / published records: the ranking group, group_key(rec)
    # step_seconds of train / published records: the expected step time the layouts are ranked by
    # (TrainEstimate.expected_step_s; None: the prediction); not written out
    rank_s: float | None = Field(default=None, exclude=True)


class MetricSummary(BaseModel):
    n: int
    mape: float
    max_abs_rel_error: float


class RankingGroup(BaseModel):
    """How well the predicted step times order the layouts of one group (one model, one device count)."""
    n: int  # records with a measured and a predicted step_seconds
    spearman: float | None  # rank correlation, predicted vs measured; None when n < 3 or a side is constant
    regret: float | None  # measured time of the predicted-fastest layout / the measured best - 1


class RankingSummary(BaseModel):
    groups: int
    median_spearman: float | None = None  # over the groups with a Spearman value
    median_regret: float | None = None


class ValidationReport(BaseModel):
    cases: list[Case]
    summary: dict[str, MetricSummary]
    skipped: list[str] = []
    efficiency: dict[str, str] = {}  # hardware id -> efficiency source used (shipped calibration or datasheet)
    ranking: dict[str, RankingGroup] = {}  # group_key -> ranking of its layouts, sorted by model then devices
    ranking_summary: RankingSummary = Field(default_factory=lambda: RankingSummary(groups=0))

    @classmethod
    def of(cls, cases: list[Case], skipped: list[str] | None = None,
           efficiency: dict[str, str] | None = None) -> "ValidationReport":
        """The report of ``cases``: the per-metric summary and the ranking computed from them."""
        rk = ranking(cases)
        return cls(cases=cases, summary=summarize(cases), skipped=skipped or [], efficiency=efficiency or {},
                   ranking=rk, ranking_summary=summarize_ranking(rk))

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


_ARCH_DEFAULTS = {
    "llama": dict(activation="swiglu", norm="rmsnorm", positions="rope"),
    "qwen2": dict(activation="swiglu", norm="rmsnorm", positions="rope", qkv_bias=True),
    "mistral": dict(activation="swiglu", norm="rmsnorm", positions="rope"),
    "mixtral": dict(activation="swiglu", norm="rmsnorm", positions="rope"),
    "gpt2": dict(activation="gelu_new", norm="layernorm", positions="learned", bias=True, tied_embeddings=True),
    "gpt": dict(activation="gelu", norm="layernorm", positions="learned", bias=True, tied_embeddings=True),
    "palm": dict(PALM_BLOCK),  # parallel attention + MLP off one norm, multi-query, no biases (arch.PALM_BLOCK)
}


def model_from_record(m: dict | str, where: str, seq_len: int | None = None) -> ModelConfig:
    """The architecture of a record: an inline dict (SCHEMA.md `model`) or a preset id."""
    if isinstance(m, str):
        return load_model(m)
    if not isinstance(m, dict):
        raise InputError("expected an object or a preset id", file=where, field="model")
    if "layers" not in m:
        if m.get("preset"):
            return load_model(m["preset"])
        raise InputError("needs 'layers', 'hidden', 'heads', 'ffn', 'vocab' or a 'preset' id", file=where, field="model")
    arch = m.get("arch", "llama")
    if arch not in _ARCH_DEFAULTS:
        raise InputError(f"unknown arch {arch!r}; expected one of {', '.join(_ARCH_DEFAULTS)}", file=where, field="model.arch")
    d = dict(_ARCH_DEFAULTS[arch])
    for k in ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "tied_embeddings", "qkv_bias", "bias", "head_dim"):
        if k in m and m[k] is not None:
            d[k] = m[k]
    if m.get("mlp") == "gelu":
        # transformers' GPT2Config defaults to activation_function="gelu_new" (unfused tanh GELU)
        d["activation"] = "gelu_new" if arch == "gpt2" else "gelu"
    elif m.get("mlp") == "swiglu":
        d["activation"] = "swiglu"
    if m.get("norm"):
        d["norm"] = m["norm"]
    if m.get("positions") in ("learned", "rope", "alibi", "none"):
        d["positions"] = m["positions"]
    if d["positions"] == "learned":
        d["max_context"] = m.get("max_context", m.get("n_positions", max(1024, seq_len or 1024)))
    if arch == "mixtral" or m.get("moe_experts"):
        d["moe"] = dict(experts=m["moe_experts"], top_k=m.get("moe_top_k", 2), expert_ffn=m["ffn"])
    kv = d.get("kv_heads", d["heads"])
    d["attention"] = "mha" if kv == d["heads"] else ("mqa" if kv == 1 else "gqa")
    if m.get("params_published") is not None:
        d["published_params"] = m["params_published"]
    d["family"] = arch
    d["id"] = "record-model"
    try:
        return ModelConfig.model_validate(d)
    except ValidationError as exc:
        raise from_validation_error(exc, where) from None


def model_label(m: dict | str | None) -> str | None:
    """A short name for a record's model: the preset id when ``model`` is a string; for an inline
    dict ``<arch>-<layers>L-<hidden>h`` (arch defaulting to llama, as in model_from_record), e.g.
    ``llama-16L-2048h``, or its ``preset`` id when it has no ``layers``. Two inline models that
    differ only in heads, ffn or vocab share a label."""
    if isinstance(m, str):
        return m
    if not isinstance(m, dict):
        return None
    if m.get("layers") is not None and m.get("hidden") is not None:
        return f"{m.get('arch') or 'llama'}-{m['layers']}L-{m['hidden']}h"
    return m.get("preset") or None


def group_key(rec: dict) -> str | None:
    """The ranking group of a train or published record, ``"<model_label>/<devices>"`` (e.g.
    ``llama-16L-2048h/8``); None when the record names no device count."""
    label, devices = model_label(rec.get("model")), rec.get("devices")
    if label is None or devices is None or isinstance(devices, bool):
        return None
    return f"{label}/{devices}"


def _group_sort_key(key: str) -> tuple:
    model, _, devices = key.rpartition("/")
    try:
        return (model, 0, int(devices), "")
    except ValueError:
        return (model, 1, 0, devices)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``; tied values share the mean of the ranks they span."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts  # 0-based first rank of each distinct value
    return (starts + (counts + 1) / 2.0)[inverse.reshape(-1)]


def spearman(predicted, measured) -> float | None:
    """Spearman rank correlation (Pearson's r of the average ranks). None for fewer than 3 pairs or
    when either side is constant."""
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    if p.size < 3 or p.size != m.size:
        return None
    rp, rm = _average_ranks(p), _average_ranks(m)
    rp, rm = rp - rp.mean(), rm - rm.mean()
    den = math.sqrt(float(rp @ rp) * float(rm @ rm))
    if den == 0.0:
        return None
    return max(-1.0, min(1.0, float(rp @ rm) / den))


def ranking(cases: list[Case]) -> dict[str, RankingGroup]:
    """Per group (``Case.group``), how well the predicted ``step_seconds`` order its layouts: ``n``,
    ``spearman`` and ``regret`` (the measured time of the layout predicted fastest, the first in
    case order among equal predictions, over the group's best measured time, minus 1). Layouts are
    ordered by their expected step time (``Case.rank_s``: with a cluster's stall risk weighed in, as
    ``search`` ranks them), else by the prediction. Groups of fewer than 2 cases are left out; keys
    are sorted by model, then device count."""
    groups: dict[str, list[tuple[float, float]]] = {}
    for c in cases:
        if c.group is None or c.metric != "step_seconds" or c.kind not in ("train", "published"):
            continue
        if isinstance(c.measured, bool) or isinstance(c.predicted, bool):
            continue
        if not (math.isfinite(c.measured) and math.isfinite(c.predicted)):
            continue
        groups.setdefault(c.group, []).append((float(c.predicted if c.rank_s is None else c.rank_s), float(c.measured)))
    out: dict[str, RankingGroup] = {}
    for key in sorted(groups, key=_group_sort_key):
        pairs = groups[key]
        if len(pairs) < 2:
            continue
        pred = np.array([p for p, _ in pairs])
        meas = np.array([m for _, m in pairs])
        best = float(meas.min())
        regret = float(meas[int(np.argmin(pred))]) / best - 1.0 if best > 0 else None
        out[key] = RankingGroup(n=len(pairs), spearman=spearman(pred, meas), regret=regret)
    return out


def summarize_ranking(groups: dict[str, RankingGroup]) -> RankingSummary:
    """The number of groups and the medians of their Spearman and regret (None where no group has one)."""
    def med(vals: list) -> float | None:
        vals = [v for v in vals if v is not None]
        return float(np.median(vals)) if vals else None

    return RankingSummary(groups=len(groups), median_spearman=med([g.spearman for g in groups.values()]),
                          median_regret=med([g.regret for g in groups.values()]))


def _parallel(rec: dict) -> Parallel:
    p = rec.get("parallel") or {}
    sharding = p.get("sharding", "none")
    zero = {"none": 0, "full": 3, "optimizer": 1, "grad": 2}.get(sharding, 0)
    if "zero_stage" in p:
        zero = p["zero_stage"]
    tp, pp, cp = p.get("tp") or 1, p.get("pp") or 1, p.get("cp") or 1
    dp = p.get("dp") or max(1, (rec.get("devices") or 1) // (tp * pp * cp))
    return Parallel(tp=tp, pp=pp, dp=dp, cp=cp, ep=p.get("ep") or 1, etp=p.get("etp"),
                    sequence_parallel=bool(p.get("sequence_parallel")), zero_stage=zero,
                    interleave=p.get("interleave") or 1)


def _rel(pred: float, meas: float) -> float:
    return (pred - meas) / meas if meas else 0.0


def train_inputs(rec: dict, lib: HardwareLibrary, where: str, framework: str, profile: str | None,
                 host_time_factor: float = 1.0):
    """(model, device spec, node spec, Parallel, TrainJob) of a train or published record, timed as
    the framework profile ``profile`` (an id or None: the built-in one of base semantics ``framework``)."""
    model = model_from_record(rec.get("model"), where, rec.get("seq_len"))
    spec = lib.device(rec["hardware"])
    node = lib.node_for(rec["node"]) if rec.get("node") else None
    par = _parallel(rec)
    opt = {"adam": "adamw", None: "adamw"}.get(rec.get("optimizer"), rec.get("optimizer"))
    mb = rec.get("micro_batch")
    job = TrainJob(micro_batch=1 if mb is None else mb, seq_len=rec["seq_len"], global_batch=rec.get("global_batch"),
                   precision=rec.get("precision") or "amp-bf16", optimizer=opt,
                   recompute=rec.get("recompute") or "none", attention=rec.get("attention") or "flash",
                   framework=framework, profile=profile,
                   overlap_grad_reduce=bool(rec.get("overlap_grad_reduce", True)),
                   tp_comm_overlap=bool(rec.get("tp_comm_overlap", False)),
                   grad_reduce_in_bf16=bool(rec.get("grad_reduce_in_bf16", False)),
                   moe_enable_deepep=bool(rec.get("moe_enable_deepep", False)),
                   recompute_fraction=rec.get("recompute_fraction") or 1.0, host_time_factor=host_time_factor,
                   offload_optimizer=(rec.get("offload") or {}).get("optimizer") or "none",
                   offload_params=(rec.get("offload") or {}).get("params") or "none")
    job.check_batch(par)
    return model, spec, node, par, job


def _train_cases(rec: dict, lib: HardwareLibrary, where: str, published: bool, calibration: str | None,
                 host_time_factor: float = 1.0, profile: str | None = None) -> list[Case]:
    fw_rec = rec.get("framework")
    if fw_rec is not None and not isinstance(fw_rec, str):
        raise InputError(f"expected a framework name (got {fw_rec!r})", file=where, field="framework")
    if fw_rec and frameworks.is_builtin_name(fw_rec):
        pass  # a shipped profile by its id or an alias (megatron-2019, deepspeed-megatron-2019, ...)
    elif fw_rec and str(fw_rec).lower().startswith("deepspeed"):
        fw_rec = "deepspeed"  # ZeRO semantics (2 + 2 + 12 bytes/param; ZeRO-3 as DeepSpeed 2021 ran it, training.DEEPSPEED_*)
    elif fw_rec and str(fw_rec).lower().startswith("megatron"):
        fw_rec = "megatron"
    prof = frameworks.resolve(fw_rec or None, default="megatron" if published else "pytorch")
    if profile is not None and (fw_rec is None or frameworks.resolve(profile).id == prof.id):
        prof = frameworks.resolve(profile)
    model, spec, node, par, job = train_inputs(
        rec, lib, where, prof.base,
        # a built-in profile of its base's name is timed as that base; any other (torchtitan on
        # PyTorch semantics, megatron-2019 with its kernel_time_factor) as itself
        None if prof.step_model == "builtin" and profile is None and prof.id == prof.base else (profile or prof.id),
        host_time_factor)
    est = estimate_train(model, spec, job, par, node=node, calibration=calibration)
    meas = rec.get("measured") or {}
    name = rec.get("name", "?")
    kind = rec["kind"]
    group = group_key(rec)
    out = []
    if meas.get("oom") or isinstance(meas.get("fits"), bool):
        # ``oom``: the case ran out of memory; ``fits``: a published claim that it trained (or not)
        fits = bool(meas["fits"]) if isinstance(meas.get("fits"), bool) else False
        out.append(Case(name=name, kind=kind, metric="fits", measured=fits, predicted=est.fits,
                        rel_error=0.0 if est.fits == fits else 1.0, group=group))
        if meas.get("oom") or not fits:
            return out
    preds = {
        # allocated after building the model as it is trained: with its wrapper, so under DDP the
        # gradient buckets the wrap allocates (memory.ddp_bucket_bytes), as FSDP's after fully_shard
        "weights_bytes": est.memory.wrapped_bytes + CUBLAS_WORKSPACES_BYTES,
        "steady_bytes": est.memory.steady_bytes,
        "peak_bytes": est.memory.peak_bytes,
        "step_seconds": est.step.total_s,
        # Published TFLOP/s follow the paper's convention: Megatron-LM eq. (3) counts the
        # recompute pass (hardware FLOPs); others count model FLOPs.
        "tflops_per_device": (est.hardware_flops_per_step if str(rec.get("flops_convention", "")).startswith("hardware")
                              else est.model_flops_per_step) / est.step.total_s / est.devices / 1e12,
        "mfu": est.mfu,
        "hfu": est.hfu,
    }
    # only these metrics are compared; other measured fields are context, not metrics (e.g. the DDP
    # records' weights_bytes_before_wrap, bench/train_step.py's read before the wrapper)
    for metric, p in preds.items():
        if metric in meas and isinstance(meas[metric], (int, float)):
            out.append(Case(name=name, kind=kind, metric=metric, measured=float(meas[metric]), predicted=p, rel_error=_rel(p, meas[metric]),
                            group=group, rank_s=est.expected_step_s if metric == "step_seconds" else None))
    return out


def _decode_cases(rec: dict, lib: HardwareLibrary, where: str, calibration: str | None) -> list[Case]:
    model = model_from_record(rec.get("model"), where)
    spec = lib.device(rec["hardware"])
    tp = (rec.get("parallel") or {}).get("tp")
    tp = 1 if tp is None else tp  # null: not given
    job = InferJob(batch=rec["batch"], cuda_graph=True, weight_dtype=rec.get("weight_dtype") or "bf16",
                   kv_dtype=rec.get("kv_dtype") or "bf16")
    ctx = rec["context_len"]
    mem = decode_memory(model, job, ctx, tp)
    meas = rec.get("measured") or {}
    name = rec.get("name", "?")
    if meas.get("oom"):
        fits = required_device_bytes(mem.peak_bytes) <= spec.memory.capacity_bytes
        return [Case(name=name, kind="decode_step", metric="fits", measured=False, predicted=fits, rel_error=0.0 if not fits else 1.0)]
    d = decode_step(model, spec, job, ctx, tp, calibration=calibration)
    step = d.step_s
    layout = rec.get("layout")
    if layout:
        # a multi-chip inference layout (Pope et al. 2022) adds its collectives to the step
        from .comm_bridge import Links
        from .partitioning import layout_comm_s

        node = lib.node_for(rec["node"]) if rec.get("node") else None
        links = Links.from_specs(spec, node, efficiency_for(spec, calibration), queued=True)
        step += layout_comm_s(model, job.batch, tp, str(layout), links)
    preds = {"step_seconds": step, "peak_bytes": mem.peak_bytes, "kv_cache_bytes": mem.kv_cache_bytes}
    return [Case(name=name, kind="decode_step", metric=k, measured=float(meas[k]), predicted=v, rel_error=_rel(v, meas[k]))
            for k, v in preds.items() if isinstance(meas.get(k), (int, float))]


def _infer_cases(rec: dict, lib: HardwareLibrary, where: str, calibration: str | None,
                 host_time_factor: float = 1.0) -> list[Case]:
    model = model_from_record(rec.get("model"), where)
    spec = lib.device(rec["hardware"])
    prompt = rec.get("prompt_len", 128)
    job = InferJob(batch=rec.get("batch", 1), prompt_len=prompt, gen_len=rec.get("gen_len", 128), cuda_graph=False,
                   host_time_factor=host_time_factor)
    meas = rec.get("measured") or {}
    name = rec.get("name", "?")
    # Eager HF generate: bf16 weights + dynamic cache; prefill holds the prompt's activations.
    mem = decode_memory(model, job, prompt + job.gen_len)
    prefill_act = job.batch * prompt * (model.hidden * 2.0 * 6 + model.ffn * 2.0 * 3)
    peak = mem.weights_bytes + mem.kv_cache_bytes + prefill_act + mem.runtime_bytes + job.batch * model.vocab * 4.0
    if meas.get("oom"):
        fits = required_device_bytes(peak) <= spec.memory.capacity_bytes
        return [Case(name=name, kind="infer", metric="fits", measured=False, predicted=fits, rel_error=0.0 if not fits else 1.0)]
    preds = {
        "weights_bytes": mem.weights_bytes,
        "peak_bytes": peak,
        "prefill_seconds": prefill_time_s(model, spec, job, calibration=calibration),
        "decode_seconds_per_token": decode_step(model, spec, job, prompt + job.gen_len // 2, calibration=calibration).step_s,
    }
    return [Case(name=name, kind="infer", metric=k, measured=float(meas[k]), predicted=v, rel_error=_rel(v, meas[k]))
            for k, v in preds.items() if isinstance(meas.get(k), (int, float))]


_SERVE_LOADS = ("batch", "concurrency", "request_rate", "max_load")
_SERVE_METRICS = {"output_tokens_per_s": ("output_tokens_per_s", None), "ttft_seconds": ("ttft_s", "mean"),
                  "itl_seconds": ("itl_s", "mean"), "e2e_seconds": ("e2e_s", "mean")}


def _serve_cases(rec: dict, lib: HardwareLibrary, where: str, calibration: str | None) -> list[Case]:
    """A SCHEMA.md `serve` record: the engine's scheduler under its load (costmodel.serving)."""
    from .serving import estimate_serve

    for f in ("engine", "hardware", "input_len", "output_len"):
        if rec.get(f) is None:
            raise InputError(f"missing required field {f!r}", file=where, field=f)
    loads = [k for k in _SERVE_LOADS if rec.get(k) not in (None, False)]
    if len(loads) != 1:
        raise InputError(f"needs exactly one load of {', '.join(_SERVE_LOADS)} (got {', '.join(loads) or 'none'})",
                         file=where, field="load")
    load = loads[0]
    value = None if load == "max_load" else rec[load]
    if load != "max_load" and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
        raise InputError(f"expected a positive number (got {value!r})", file=where, field=load)
    model = model_from_record(rec.get("model"), where)
    spec = lib.device(rec["hardware"])
    node = lib.node_for(rec["node"]) if rec.get("node") else None
    p = rec.get("parallel") or {}
    tp = p.get("tp") or 1
    ramp = rec.get("ramp") or "burst"  # a closed loop's clients start together unless the record says "steady"
    if ramp not in ("burst", "steady"):
        raise InputError(f"expected 'burst' or 'steady' (got {ramp!r})", file=where, field="ramp")
    ranges = {}
    for f in ("input_len_range", "output_len_range"):
        r = rec.get(f)
        if r is None:
            continue
        if (not isinstance(r, list) or len(r) != 2 or any(isinstance(x, bool) or not isinstance(x, int) for x in r)
                or not 1 <= r[0] <= r[1]):
            raise InputError(f"expected [lo, hi] integers with 1 <= lo <= hi (got {r!r})", file=where, field=f)
        ranges[f] = (r[0], r[1])
    dpa = p.get("dp_attention", False)
    if not isinstance(dpa, bool):
        raise InputError(f"expected true or false (got {dpa!r})", file=where, field="parallel.dp_attention")
    est = estimate_serve(model, spec, tp=tp, input_len=rec["input_len"], output_len=rec["output_len"], load=load,
                         value=value, num_requests=rec.get("num_requests"), engine=str(rec["engine"]).lower(),
                         weight_dtype=rec.get("weight_dtype") or "bf16", kv_dtype=rec.get("kv_dtype") or "bf16",
                         node=node, calibration=calibration, ramp=ramp, ep=int(p.get("ep") or 1), pp=int(p.get("pp") or 1),
                         dp_attention=dpa, **ranges)
    meas = rec.get("measured") or {}
    out = []
    for metric, (attr, stat) in _SERVE_METRICS.items():
        m = meas.get(metric)
        if isinstance(m, (int, float)) and not isinstance(m, bool):
            v = getattr(est, attr)
            pred = float(v[stat] if stat else v)
            out.append(Case(name=rec.get("name", "?"), kind="serve", metric=metric, measured=float(m), predicted=pred,
                            rel_error=_rel(pred, m)))
    return out


# An attention fwd+bwd timed through autograd into leaf tensors (``loss.backward()``, SCHEMA.md's
# sdpa_fwd_bwd) moves more than the fused kernels that our harness times with
# ``torch.autograd.grad`` (and that a model's backward runs): the expanded output gradient made
# contiguous, the fp32 dQ accumulator written and converted, and q, k, v's .grad accumulated.
# Measured on H100: data/frameworks/pytorch.yaml leaf_backward_bytes_per_element.
LEAF_BACKWARD_BYTES_PER_ELEMENT = fitted.value("frameworks/pytorch.yaml", "leaf_backward_bytes_per_element")


def _leaf_backward_extra_s(rec: dict, eff) -> float:
    elems = float(rec["b"]) * rec["h"] * rec["s"] * rec["d"]
    nbytes = LEAF_BACKWARD_BYTES_PER_ELEMENT * elems
    return nbytes / eff.mem_bytes_per_s(nbytes)


# PyTorch's SDPA backend names (torch.nn.attention.SDPBackend) -> the fused-attention kernels a
# calibration or a framework profile names (calibration.efficiency.ATTENTION_BACKENDS)
_SDPA_KERNELS = {"flash": "flash2", "cudnn": "cudnn"}


def _kernel_case(rec: dict, lib: HardwareLibrary, calibration: str | None, effs: dict) -> Case | None:
    op = rec.get("op")
    spec = lib.device(rec["hardware"])
    key = spec.id
    if key not in effs:
        effs[key] = efficiency_for(spec, calibration, shipped=True)
    eff = effs[key]
    # SCHEMA.md: `s` is the time, except for sdpa records where `s` is the sequence and `s_time` the time
    t = rec.get("s_time") if "s_time" in rec else rec.get("s")
    name = f"{op}/{rec['hardware']}"
    if op in ("gemm", "gemm_llm"):
        m, n, k = rec["m"], rec["n"], rec["k"]
        # SCHEMA.md kernel records time isolated calls: the single-call time (kernel + dispatch floor)
        pred = eff.gemm_call_time_s(m, n, k, rec.get("dtype", "bf16"))
        name = f"{op}/{rec.get('dtype')}/{m}x{n}x{k}"
    elif op in ("mem_copy", "mem_read", "sdpa_fwd", "sdpa_fwd_bwd"):
        # an isolated call, as for GEMMs: the kernel plus its family's call gap
        pred = eff.predict_record_s(rec)
        if pred is not None and op == "sdpa_fwd_bwd" and rec.get("backend") != "torch":
            pred += _leaf_backward_extra_s(rec, eff)  # our harness's own records time autograd.grad
        name = f"{op}/{rec['bytes']}" if op.startswith("mem_") else f"{op}/b{rec['b']}h{rec['h']}s{rec['s']}d{rec['d']}"
        if op.startswith("sdpa") and rec.get("sdpa_backend") is not None:
            # a record of one named SDPA kernel (costmodel/bench/sdpa_backends.py): timed as that kernel
            # against the one the calibration measured (training.AttentionBackend); a kernel without a
            # rate of its own (EFFICIENT_ATTENTION) is not predicted
            kernel = _SDPA_KERNELS.get(rec["sdpa_backend"])
            if kernel is None:
                return None
            if pred is not None and getattr(eff, "attention_backend", None) not in (None, kernel):
                from .training import AttentionBackend

                args = (rec["b"], rec["h"], rec["s"], rec["d"], rec.get("causal", True), op == "sdpa_fwd_bwd")
                pred += AttentionBackend(eff, kernel).attention_time_s(*args) - eff.attention_time_s(*args)
            name += f"/{rec['sdpa_backend']}" + ("" if rec.get("causal", True) else "/full")
    elif op in ("h2d_pinned", "d2h_pinned", "h2d_pageable"):
        # the link fitted for this direction and memory kind (latency + bytes / rate); a spec
        # without host-link fits falls back to its host-to-device rate
        pred = eff.predict_record_s(rec)
        if pred is None:
            pred = rec["bytes"] / eff.h2d_bytes_per_s(pinned=op != "h2d_pageable")
        t = t if t is not None else rec["bytes"] / (rec["gbps"] * 1e9)
    elif op == "cpu_gemm":
        # numpy on the machine's host CPU: its BLAS as calibrated there (hardware/calibrated/<id>-host.yaml)
        from .calibration import shipped_host_efficiency

        hkey = f"{spec.id}-host"
        if hkey not in effs:
            effs[hkey] = shipped_host_efficiency(spec.id)
        host = effs[hkey]
        if host is None:
            return None
        n = rec["n"]
        pred = host.gemm_call_time_s(n, n, n, rec.get("dtype", "fp32"))
        name = f"cpu_gemm/{rec.get('dtype', 'fp32')}/{n}^3"
    elif op in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv"):
        from .comm_bridge import Links

        links = Links.from_specs(spec, None, eff)
        world = rec.get("world", 2)
        if op == "send_recv":
            pred = links.p2p_time_s(rec["bytes"], crosses_node=False)
        else:
            pred = links.collective_time_s(op, rec["bytes"], world, intra=True)
        name = f"{op}/w{world}/{rec['bytes']}"
    else:
        return None
    if t is None or pred is None:
        return None
    return Case(name=name, kind="kernel", metric=f"{op}.seconds", measured=float(t), predicted=float(pred), rel_error=_rel(pred, t))


def overlays_by_device(calibration: str | list[str] | tuple[str, ...] | None) -> dict[str, str]:
    """Calibration overlay files by the device each is for (its ``device`` field): every record is
    predicted with the overlay of its own device, the shipped calibration where none is given. Two
    overlays for one device are an InputError."""
    from .specs import read_yaml

    paths = [calibration] if isinstance(calibration, (str, Path)) else list(calibration or [])
    out: dict[str, str] = {}
    for p in paths:
        data = read_yaml(Path(p))
        dev = data.get("device") if isinstance(data, dict) else None
        if not isinstance(dev, str) or not dev:
            raise InputError("missing required field (a hardware id)", file=p, field="device")
        if dev in out:
            raise InputError(f"a second overlay for {dev!r} (the first: {out[dev]}); give one per device", file=p,
                             field="device")
        out[dev] = str(p)
    return out


def validate_records(records: list[tuple[str, dict]], lib: HardwareLibrary | None = None,
                     calibration: str | list[str] | None = None, host_time_factor: float = 1.0,
                     profile: str | None = None) -> ValidationReport:
    """Predict every record. ``calibration``: one overlay file or several, each applied to the
    records of its own device (overlays_by_device). ``profile``: a framework profile (id or YAML
    path) that times the train records of its framework instead of the built-in one.
    ``host_time_factor`` scales the eager host time of train and infer records (the host that
    measured them against the H100 machines the constants came from)."""
    lib = lib or load_library()
    cases: list[Case] = []
    skipped: list[str] = []
    effs: dict = {}
    sources: dict[str, str] = {}
    overlays = overlays_by_device(calibration)
    for where, rec in records:
        kind = rec.get("kind")
        hw = rec.get("hardware")
        calibration = None
        if overlays and isinstance(hw, str):
            try:
                calibration = overlays.get(lib.device(hw).id)
            except InputError:
                pass
        if isinstance(hw, str) and hw not in sources:
            try:
                sources[hw] = getattr(efficiency_for(lib.device(hw), calibration), "source", "?")
            except InputError:
                pass
        unverified = rec.get("unverified") if kind == "published" else None
        if isinstance(unverified, list) and set(map(str, unverified)) & {"model", "parallel", "devices", "seq_len"}:
            skipped.append(f"{where}: published record with unverified {', '.join(sorted(map(str, unverified)))}")
            continue
        check_record(rec, where)  # types and ranges of every field read below (costmodel.record_schema)
        try:
            if kind == "train":
                cases += _train_cases(rec, lib, where, False, calibration, host_time_factor, profile)
            elif kind == "published":
                try:
                    cases += _train_cases(rec, lib, where, True, calibration, profile=profile)
                except InputError as exc:  # e.g. an architecture we do not model (PaLM's parallel block)
                    skipped.append(f"{where}: {exc}")
            elif kind == "decode_step":
                cases += _decode_cases(rec, lib, where, calibration)
            elif kind == "infer":
                cases += _infer_cases(rec, lib, where, calibration, host_time_factor)
            elif kind == "serve":
                cases += _serve_cases(rec, lib, where, calibration)
            elif kind == "kernel":
                check_kernel_record(rec, where)
                c = _kernel_case(rec, lib, calibration, effs)
                if c is None:
                    why = "no host-CPU calibration for " + str(hw) if rec.get("op") == "cpu_gemm" else "not modelled"
                    skipped.append(f"{where}: kernel op {rec.get('op')!r}: {why}")
                else:
                    cases.append(c)
            else:
                raise InputError(f"unknown kind {kind!r}; expected kernel, train, decode_step, infer, serve or published", file=where, field="kind")
        except KeyError as exc:
            raise InputError(f"missing required field {exc.args[0]!r}", file=where, field=str(exc.args[0])) from None
        except ValidationError as exc:  # a record field out of its range or set (TrainJob, InferJob, Parallel)
            raise from_validation_error(exc, where) from None
        except InputError as exc:
            if exc.file is None:  # say which record
                raise InputError(exc.detail, file=where, field=exc.field) from None
            raise
    return ValidationReport.of(cases, skipped, sources)


class HostFactorFit(BaseModel):
    """The eager host speed of the machine that measured a file's ``kind`` records, against the
    machines the host constants came from: the --host-time-factor that fits them best."""
    kind: str  # train or infer
    n: int  # time metrics fitted
    factor: float
    mape_at_1: float  # mean |relative error| at factor 1.0 (the shipped constants as they are)
    mape_at_factor: float
    at_bound: bool  # the best factor is an end of the searched range: the host time does not explain the error


# Host-factor search: a log-spaced grid 0.25 .. 4 in steps of 2^(1/16) (4.4%), the range over which
# measured machines have differed (data/measurements/h100-sxm/2026-11-23ad-hostref/README.md: 0.6-1.65 on H100/H200).
HOST_FACTOR_RANGE = (0.25, 4.0)
HOST_FACTOR_STEPS_PER_OCTAVE = 16
_HOST_TIME_METRICS = ("step_seconds", "prefill_seconds", "decode_seconds_per_token")


def host_factor_grid() -> list[float]:
    """The factors fit_host_time_factor tries: HOST_FACTOR_RANGE, log-spaced, and 1.0 (the error
    before the fit is read there)."""
    lo, hi = HOST_FACTOR_RANGE
    steps = int(round(math.log2(hi / lo) * HOST_FACTOR_STEPS_PER_OCTAVE))
    return sorted({lo * 2 ** (i / HOST_FACTOR_STEPS_PER_OCTAVE) for i in range(steps + 1)} | {1.0})


def fit_host_time_factor(records: list[tuple[str, dict]], kind: str, lib: HardwareLibrary | None = None,
                         calibration: str | list[str] | None = None, on_step=None) -> HostFactorFit | None:
    """The host_time_factor that minimises the mean |relative error| of the time metrics of
    ``kind`` records: the error validate reports (``mape_at_1`` / ``mape_at_factor``), so the fit
    never reports a factor worse than 1.0 (which the grid holds; ties go to the factor nearest 1).
    None when the records have no such metric. ``on_step()`` is called after each factor tried."""
    recs = [(w, r) for w, r in records if r.get("kind") == kind]
    grid = host_factor_grid()
    lib = lib or load_library()
    errs_at: dict[float, list[float]] = {}
    for f in grid:
        cases = validate_records(recs, lib, calibration, f).cases
        errs_at[f] = [c.rel_error for c in cases if c.metric in _HOST_TIME_METRICS and c.measured > 0 and c.predicted > 0]
        if on_step is not None:
            on_step()
        if not errs_at[f]:
            return None
    def mape(f: float) -> float:
        return sum(map(abs, errs_at[f])) / len(errs_at[f])

    best = min(grid, key=lambda f: (mape(f), abs(math.log(f))))
    return HostFactorFit(kind=kind, n=len(errs_at[best]), factor=best, mape_at_1=mape(1.0), mape_at_factor=mape(best),
                         at_bound=best in (grid[0], grid[-1]))


def summarize(cases: list[Case]) -> dict[str, MetricSummary]:
    """Mean and worst absolute relative error per `<kind>.<metric>`."""
    groups: dict[str, list[float]] = {}
    for c in cases:
        groups.setdefault(f"{c.kind}.{c.metric}", []).append(abs(c.rel_error))
    return {k: MetricSummary(n=len(v), mape=sum(v) / len(v), max_abs_rel_error=max(v)) for k, v in sorted(groups.items())}


def on_node(records: list[tuple[str, dict]], node_id: str, lib: HardwareLibrary) -> list[tuple[str, dict]]:
    """The train / published records as if run on nodes ``node_id`` (e.g. a cluster fitted by
    `calibrate --nccl-tests`): their ``node`` replaced; the node's device must be theirs."""
    node = lib.node_for(node_id)
    if node is None:
        raise InputError(f"{node_id!r} is not a node spec (see `costmodel hardware list`)", field="node")
    out = []
    for where, rec in records:
        if rec.get("kind") in ("train", "published"):
            if rec.get("hardware") not in (None, node.device):
                raise InputError(f"ran on {rec.get('hardware')!r}, but node {node_id!r} holds {node.device!r}",
                                 file=where, field="hardware")
            rec = {**rec, "node": node_id}
        out.append((where, rec))
    return out


def read_records(path: str | Path) -> list[tuple[str, dict]]:
    """(``file:line``, record) of every record of a JSONL file. A file with no record (empty, or
    only blank and ``#`` lines) is an InputError: validating it would check nothing."""
    from .bench.records import read_json_objects

    recs = [(f"{path}:{i}", rec) for i, rec in read_json_objects(path)]
    if not recs:
        raise InputError("no records (the file is empty or holds only blank and # lines): nothing to check", file=path)
    return recs


def validate_file(path: str | Path, lib: HardwareLibrary | None = None, calibration: str | list[str] | None = None,
                  host_time_factor: float = 1.0) -> ValidationReport:
    return validate_records(read_records(path), lib, calibration, host_time_factor)
