"""Capacity checks: a plan file (model, hardware, job, limits) checked against the predictions.

A plan names what is run and the limits it must hold (memory headroom, MFU, step time, latency,
cost, wall-clock days, throughput). :func:`check_plan` predicts every limited quantity with the
scalar estimators of :mod:`costmodel.plan`, reports each limit with its margin, and when one
fails searches the neighbourhood of the plan's layout (one or two knobs changed) for the nearest
layout that passes. Pure functions over pydantic models; no printing (the CLI is
``costmodel/cli/check_cmd.py``).

Plan format (YAML; exactly one of ``training`` / ``inference`` / ``serve``)::

    model: llama2-7b            # preset id, preset YAML or HF config.json (relative to the plan)
    hardware: dgx-h100          # device or node id
    nodes: 1                    # or devices: 8 (training only)
    training: {zero_stage: 3, micro_batch: 2, global_batch: 64, seq_len: 4096}
    run: {tokens: 2.0e10, price_per_hour: 2.99}
    limits: {max_memory_fraction: 0.9, min_mfu: 0.35, max_step_seconds: 5}

A ``serve`` plan runs an engine under a load (costmodel.serving.estimate_serve, as `costmodel
serve`) and can demand latency percentiles at that load::

    serve: {engine: vllm, tp: 1, input_len: 1024, output_len: 256, request_rate: 10}
    limits: {max_ttft_p99_ms: 500, max_tpot_p99_ms: 30, min_tokens_per_s: 2000}
"""
from __future__ import annotations

import glob
import itertools
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import _callable_module
from .errors import InputError, from_validation_error
from .workload import Optimizer, Precision, Recompute

Dtype = Literal["fp32", "bf16", "fp16", "fp8", "int8", "int4"]
Offload = Literal["none", "cpu", "nvme"]

# Largest tensor-parallel size the inference neighbourhood search tries on a plain device id:
# one NVLink domain of an HGX/DGX baseboard (8 GPUs; NVIDIA DGX H100 user guide). Node specs
# use their own devices_per_node.
MAX_TP_WITHOUT_NODE = 8
# Largest count a plan takes (sizes, batches, lengths, steps, devices): the int32 range, as the CLI.
MAX_COUNT = 2**31 - 1
# Seconds per day, for max_days.
SECONDS_PER_DAY = 86400.0


# ------------------------------------------------------------------------------ plan schema

class TrainingSection(BaseModel):
    """The training job and its layout; names and defaults as `costmodel train`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    tp: int = Field(default=1, ge=1, le=MAX_COUNT)
    pp: int = Field(default=1, ge=1, le=MAX_COUNT)
    dp: Optional[int] = Field(default=None, ge=1, le=MAX_COUNT)
    cp: int = Field(default=1, ge=1, le=MAX_COUNT)
    ep: int = Field(default=1, ge=1, le=MAX_COUNT)
    etp: Optional[int] = Field(default=None, ge=1, le=MAX_COUNT)  # expert tensor parallel (default: tp)
    sequence_parallel: bool = False
    zero_stage: int = Field(default=0, ge=0, le=3)
    interleave: int = Field(default=1, ge=1, le=MAX_COUNT)
    micro_batch: int = Field(default=1, ge=1, le=MAX_COUNT)
    global_batch: Optional[int] = Field(default=None, ge=1, le=MAX_COUNT)
    seq_len: int = Field(default=2048, ge=1, le=MAX_COUNT)
    precision: Precision = "amp-bf16"
    optimizer: Optimizer = "adamw"
    recompute: Recompute = "none"
    attention: Literal["flash", "standard"] = "flash"
    framework: Optional[str] = None  # a framework name (costmodel.frameworks), any case
    profile: Optional[str] = None  # a framework profile YAML, relative to the plan
    overlap_grad_reduce: bool = True
    tp_comm_overlap: bool = False  # Megatron-LM --tp-comm-overlap (needs sequence_parallel)
    grad_reduce_in_bf16: bool = False  # Megatron-LM --grad-reduce-in-bf16
    moe_enable_deepep: bool = False  # Megatron-core --moe-enable-deepep (MoE all-to-alls through DeepEP)
    offload_optimizer: Offload = "none"
    offload_params: Offload = "none"
    host_time_factor: float = Field(default=1.0, gt=0)  # eager host time vs the fitted H100 machines


class InferenceSection(BaseModel):
    """The serving job; names and defaults as `costmodel infer`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    tp: int = Field(default=1, ge=1, le=MAX_COUNT)
    batch: int = Field(default=1, ge=1, le=MAX_COUNT)
    prompt_len: int = Field(default=1024, ge=1, le=MAX_COUNT)
    gen_len: int = Field(default=128, ge=1, le=MAX_COUNT)
    weight_dtype: Dtype = "bf16"
    kv_dtype: Dtype = "bf16"
    cuda_graph: bool = True
    host_time_factor: float = Field(default=1.0, gt=0)  # eager host time vs the fitted H100 machine


class ServeSection(BaseModel):
    """An engine serving a load; names and defaults as `costmodel serve`. Exactly one load:
    request_rate (Poisson, requests/s), concurrency (closed loop) or max_load."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    engine: Literal["vllm", "sglang", "tensorrt-llm"] = "vllm"
    tp: int = Field(default=1, ge=1, le=MAX_COUNT)
    pp: int = Field(default=1, ge=1, le=MAX_COUNT)
    ep: int = Field(default=1, ge=1, le=MAX_COUNT)
    dp_attention: bool = False
    input_len: int = Field(default=1024, ge=1, le=MAX_COUNT)
    output_len: int = Field(default=128, ge=1, le=MAX_COUNT)
    input_len_range: Optional[tuple[int, int]] = None  # lengths drawn uniformly from lo..hi, in place of input_len
    output_len_range: Optional[tuple[int, int]] = None
    request_rate: Optional[float] = Field(default=None, gt=0)
    concurrency: Optional[int] = Field(default=None, ge=1, le=MAX_COUNT)
    max_load: bool = False
    num_requests: Optional[int] = Field(default=None, ge=1, le=MAX_COUNT)
    weight_dtype: Dtype = "bf16"
    kv_dtype: Dtype = "bf16"
    prefix_hit_rate: float = Field(default=0.0, ge=0, lt=1)
    seed: int = 0

    def load(self) -> tuple[str, Optional[float]]:
        given = [k for k in ("request_rate", "concurrency", "max_load") if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise InputError("give exactly one load: request_rate, concurrency or max_load: true", field="load")
        k = given[0]
        return k, (None if k == "max_load" else float(getattr(self, k)))


class RunSection(BaseModel):
    """Length and price of the whole run. Training: steps or tokens (trained); inference: tokens
    (generated). price_per_hour is USD per device-hour (default: the device spec's)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    steps: Optional[int] = Field(default=None, ge=1, le=MAX_COUNT)
    tokens: Optional[float] = Field(default=None, gt=0)
    price_per_hour: Optional[float] = Field(default=None, ge=0)


class Limits(BaseModel):
    """What must hold. max_* are upper bounds, min_* lower bounds."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    max_memory_fraction: Optional[float] = Field(default=None, gt=0, le=1)  # of device capacity
    min_mfu: Optional[float] = Field(default=None, gt=0, le=1)
    max_step_seconds: Optional[float] = Field(default=None, gt=0)
    max_ttft_ms: Optional[float] = Field(default=None, gt=0)
    max_tpot_ms: Optional[float] = Field(default=None, gt=0)
    max_ttft_p99_ms: Optional[float] = Field(default=None, gt=0)  # serve plans: p99 over the requests
    max_tpot_p99_ms: Optional[float] = Field(default=None, gt=0)
    max_cost_usd: Optional[float] = Field(default=None, gt=0)
    max_days: Optional[float] = Field(default=None, gt=0)
    min_tokens_per_s: Optional[float] = Field(default=None, gt=0)


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: Optional[str] = None
    model: str = Field(min_length=1)
    hardware: str = Field(default="h100-sxm", min_length=1)
    nodes: Optional[int] = Field(default=None, ge=1, le=MAX_COUNT)
    devices: Optional[int] = Field(default=None, ge=1, le=MAX_COUNT)
    training: Optional[TrainingSection] = None
    inference: Optional[InferenceSection] = None
    serve: Optional[ServeSection] = None
    run: RunSection = Field(default_factory=RunSection)
    limits: Limits
    calibration: Optional[str] = None
    hardware_files: list[str] = Field(default_factory=list)

    @property
    def kind(self) -> str:
        if self.training is not None:
            return "training"
        return "serve" if self.serve is not None else "inference"

    @property
    def section(self):
        return self.training if self.training is not None else self.serve if self.serve is not None else self.inference


_SECTIONS = {"training": TrainingSection, "inference": InferenceSection, "serve": ServeSection, "run": RunSection,
             "limits": Limits}

# Limit name -> (the plan kinds it applies to, direction, unit shown to people). In serve plans
# max_ttft_ms / max_tpot_ms are means over the requests, min_tokens_per_s counts output tokens.
LIMITS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "max_memory_fraction": (("training", "inference"), "max", "of capacity"),
    "min_mfu": (("training",), "min", ""),
    "max_step_seconds": (("training",), "max", "s"),
    "max_ttft_ms": (("serve", "inference"), "max", "ms"),
    "max_tpot_ms": (("serve", "inference"), "max", "ms"),
    "max_ttft_p99_ms": (("serve",), "max", "ms"),
    "max_tpot_p99_ms": (("serve",), "max", "ms"),
    "max_cost_usd": (("training", "inference", "serve"), "max", "USD"),
    "max_days": (("training", "inference", "serve"), "max", "days"),
    "min_tokens_per_s": (("training", "inference", "serve"), "min", "tokens/s"),
}


# ------------------------------------------------------------------------------ results

class LimitCheck(BaseModel):
    limit: str
    value: float  # the limit as written in the plan
    predicted: float
    passed: bool
    margin: float  # relative headroom: (limit - predicted) / limit for max_*, (predicted - limit) / limit for min_*; < 0 missed
    missed_by: float = 0.0  # absolute amount by which the limit is missed (0 when it holds)
    unit: str = ""


class Neighbour(BaseModel):
    """A layout near the plan's: which knobs changed (from -> to), the full job section, and
    its checks."""

    changes: dict[str, dict[str, Any]]
    layout: dict[str, Any]
    checks: list[LimitCheck]
    step_s: float  # training step time or inference time per output token


class CheckResult(BaseModel):
    file: Optional[str] = None
    name: Optional[str] = None
    kind: Literal["training", "inference", "serve"]
    model: str
    hardware: str  # the plan's hardware id: a device or a node spec
    devices: int
    device: Optional[str] = None  # the accelerator id the devices are
    nodes: Optional[float] = None  # devices / devices per node when `hardware` is a node spec
    ok: bool
    checks: list[LimitCheck]
    predicted: dict[str, Optional[float]]  # every quantity a limit can name, predicted
    nearest_passing: Optional[Neighbour] = None
    searched: int = 0  # neighbour layouts evaluated
    notes: list[str] = []  # the estimate's notes (a cluster's pipeline stall risk, host-bound steps, ...)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    @property
    def where(self) -> str:
        """What the job runs on, devices and nodes apart: '8 x h100-sxm (1 dgx-h100 node)'."""
        dev = f"{self.devices} x {self.device or self.hardware}"
        if self.nodes is None:
            return dev
        if self.nodes < 1:
            return f"{dev} (of one {self.hardware} node)"
        return f"{dev} ({self.nodes:g} {self.hardware} node{'' if self.nodes == 1 else 's'})"

    @property
    def failed(self) -> list[LimitCheck]:
        return [c for c in self.checks if not c.passed]


# ------------------------------------------------------------------------------ loading

def _err(field: str, message: str, file) -> InputError:
    return InputError(message, file=file, field=field)


def parse_plan(data: object, file: str | Path | None = None) -> Plan:
    """Validate a plan mapping; every problem is an InputError naming the file and field."""
    where = file if file is not None else "<plan>"
    if not isinstance(data, dict):
        raise InputError("expected a mapping with model, hardware, training or inference, and limits", file=where)
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "extra_forbidden":
            loc = [str(p) for p in first.get("loc", ())]
            section = _SECTIONS.get(loc[0]) if len(loc) > 1 else Plan
            if section is not None:
                raise InputError(f"unknown field; expected one of {', '.join(section.model_fields)}",
                                 file=where, field=".".join(loc)) from None
        raise from_validation_error(exc, where) from None
    if sum(x is not None for x in (plan.training, plan.inference, plan.serve)) != 1:
        raise _err("training", "give exactly one of 'training', 'inference' or 'serve'", where)
    limits = {k: v for k, v in plan.limits.model_dump().items() if v is not None}
    if not limits:
        raise _err("limits", f"no limit given; expected one or more of {', '.join(LIMITS)}", where)
    for name in limits:
        applies = LIMITS[name][0]
        if plan.kind not in applies:
            ok = ", ".join(k for k, v in LIMITS.items() if plan.kind in v[0])
            raise _err(f"limits.{name}", f"applies to {' and '.join(k + ' plans' for k in applies)} only; {plan.kind} plans take {ok}", where)
    if plan.run.steps is not None and plan.run.tokens is not None:
        raise _err("run.steps", "give run.steps or run.tokens, not both", where)
    if plan.serve is not None:
        try:
            plan.serve.load()
        except InputError as exc:
            raise _err("serve.load", exc.detail, where) from None
    if plan.kind in ("inference", "serve"):
        if plan.run.steps is not None:
            raise _err("run.steps", "inference runs are measured in generated tokens: use run.tokens", where)
        for f in ("nodes", "devices"):
            if getattr(plan, f) is not None:
                raise _err(f, f"{plan.kind} plans use {plan.kind}.tp devices; remove this field", where)
    for name in ("max_cost_usd", "max_days"):
        if name in limits and plan.run.steps is None and plan.run.tokens is None:
            raise _err(f"limits.{name}", "needs the run length: run.steps or run.tokens", where)
    return plan


def load_plan(path: str | Path) -> Plan:
    from .specs import read_yaml

    path = Path(path)
    if not path.is_file():
        raise InputError("plan file does not exist", file=path)
    return parse_plan(read_yaml(path), path)


def expand_paths(patterns: list[str]) -> list[Path]:
    """Plan paths as given; a pattern the shell did not expand (quoted, or Windows) is globbed."""
    out: list[Path] = []
    for pat in patterns:
        if not Path(pat).exists() and any(c in pat for c in "*?["):
            hits = sorted(glob.glob(pat))
            if not hits:
                raise InputError("no plan file matches this pattern", file=pat)
            out += [Path(h) for h in hits]
        else:
            out.append(Path(pat))
    return out


def _resolve(ref: str, base: Path | None) -> str:
    """A file reference in a plan is relative to the plan's directory (ids are left alone)."""
    p = Path(ref)
    if base is None or p.is_absolute() or p.suffix not in (".json", ".yaml", ".yml"):
        return ref
    cand = base / p
    return str(cand) if cand.exists() or not p.exists() else ref


# ------------------------------------------------------------------------------ evaluation

def _referenced_field(plan: Plan, base: Path | None, file: str) -> str | None:
    """The plan field that points to ``file`` (model, calibration, hardware_files,
    training.profile), or None when the plan names no such file."""
    refs = [("model", plan.model), ("calibration", plan.calibration)]
    refs += [("hardware_files", f) for f in plan.hardware_files]
    if plan.training is not None:
        refs.append(("training.profile", plan.training.profile))
    try:
        target = Path(file).resolve()
    except (OSError, ValueError):
        return None
    for field, ref in refs:
        if not ref:
            continue
        try:
            p = Path(_resolve(ref, base)).resolve()
        except (OSError, ValueError):
            continue
        if target == p or target.parent == p:  # a model directory: its config.json
            return field
    return None


def _hardware_files(plan: Plan, base: Path | None, extra: list[str] | None) -> list[str]:
    return [_resolve(f, base) for f in plan.hardware_files] + list(extra or [])


def _train_kwargs(plan: Plan, sec: TrainingSection) -> dict:
    return sec.model_dump()


def _evaluate_training(plan: Plan, sec: TrainingSection, ctx: dict, devices: int | None = None):
    from .plan import train

    kw = _train_kwargs(plan, sec)
    if kw.get("profile"):
        kw["profile"] = _resolve(kw["profile"], ctx.get("base"))
    est = train(ctx["model"], plan.hardware, devices=devices if devices is not None else plan.devices,
                nodes=None if devices is not None else plan.nodes, calibration=ctx["calibration"],
                hardware_files=ctx["hardware_files"], **kw)
    price = plan.run.price_per_hour if plan.run.price_per_hour is not None else ctx["spec"].price_per_hour_usd
    steps = plan.run.steps if plan.run.steps is not None else (
        max(1, int(plan.run.tokens // est.tokens_per_step)) if plan.run.tokens else None)
    seconds = steps * est.step.total_s if steps else None
    device_hours = seconds / 3600.0 * est.devices if seconds is not None else None
    pred = {
        "max_memory_fraction": est.required_bytes / est.capacity_bytes,
        "min_mfu": est.mfu,
        "max_step_seconds": est.step.total_s,
        "max_days": seconds / SECONDS_PER_DAY if seconds is not None else None,
        "max_cost_usd": device_hours * price if (device_hours is not None and price is not None) else None,
        "min_tokens_per_s": est.tokens_per_s,
    }
    return est, pred, est.step.total_s


def _evaluate_inference(plan: Plan, sec: InferenceSection, ctx: dict):
    from .plan import infer

    est = infer(ctx["model"], plan.hardware, calibration=ctx["calibration"], hardware_files=ctx["hardware_files"],
                **sec.model_dump())
    price = plan.run.price_per_hour if plan.run.price_per_hour is not None else ctx["spec"].price_per_hour_usd
    seconds = None
    if plan.run.tokens:
        # Batches of `batch` requests: prefill (TTFT) then gen_len decode steps (TPOT) each.
        batches = plan.run.tokens / (sec.batch * sec.gen_len)
        seconds = batches * (est.ttft_s + sec.gen_len * est.tpot_s)
    device_hours = seconds / 3600.0 * sec.tp if seconds is not None else None
    pred = {
        "max_memory_fraction": est.required_bytes / est.capacity_bytes,
        "max_ttft_ms": est.ttft_s * 1e3,
        "max_tpot_ms": est.tpot_s * 1e3,
        "max_days": seconds / SECONDS_PER_DAY if seconds is not None else None,
        "max_cost_usd": device_hours * price if (device_hours is not None and price is not None) else None,
        "min_tokens_per_s": est.tokens_per_s,
    }
    return est, pred, est.tpot_s


def _evaluate_serve(plan: Plan, sec: ServeSection, ctx: dict):
    """A serve plan: the engine under its load (costmodel.serving.estimate_serve)."""
    from .arch import load_model
    from .serving import estimate_serve

    load, value = sec.load()
    est = estimate_serve(load_model(ctx["model"]), ctx["spec"], tp=sec.tp, pp=sec.pp, ep=sec.ep,
                         input_len=sec.input_len, output_len=sec.output_len, load=load, value=value,
                         num_requests=sec.num_requests, engine=sec.engine, weight_dtype=sec.weight_dtype,
                         kv_dtype=sec.kv_dtype, node=ctx["node"], calibration=ctx["calibration"], seed=sec.seed,
                         prefix_hit_rate=sec.prefix_hit_rate, input_len_range=sec.input_len_range,
                         output_len_range=sec.output_len_range, dp_attention=sec.dp_attention)
    price = plan.run.price_per_hour if plan.run.price_per_hour is not None else ctx["spec"].price_per_hour_usd
    seconds = plan.run.tokens / est.output_tokens_per_s if plan.run.tokens else None
    device_hours = seconds / 3600.0 * est.devices if seconds is not None else None
    tpot = est.tpot_s or {}
    pred = {
        "max_ttft_ms": est.ttft_s["mean"] * 1e3,
        "max_tpot_ms": tpot["mean"] * 1e3 if tpot.get("mean") is not None else None,
        "max_ttft_p99_ms": est.ttft_s["p99"] * 1e3,
        "max_tpot_p99_ms": tpot["p99"] * 1e3 if tpot.get("p99") is not None else None,
        "max_days": seconds / SECONDS_PER_DAY if seconds is not None else None,
        "max_cost_usd": device_hours * price if (device_hours is not None and price is not None) else None,
        "min_tokens_per_s": est.output_tokens_per_s,
    }
    return est, pred, tpot.get("mean") or est.itl_s["mean"] or 0.0


def _checks(limits: Limits, pred: dict, file=None) -> list[LimitCheck]:
    out = []
    for name, value in limits.model_dump().items():
        if value is None:
            continue
        p = pred.get(name)
        if p is None:
            if name == "max_cost_usd":
                raise InputError("the device spec has no price: set run.price_per_hour", file=file, field="run.price_per_hour")
            raise InputError("cannot be predicted for this plan", file=file, field=f"limits.{name}")
        direction, unit = LIMITS[name][1], LIMITS[name][2]
        if direction == "max":
            passed = p <= value
            margin = (value - p) / value
        else:
            passed = p >= value
            margin = (p - value) / value
        out.append(LimitCheck(limit=name, value=value, predicted=p, passed=passed, margin=margin,
                              missed_by=0.0 if passed else abs(p - value), unit=unit))
    return out


def _context(plan: Plan, base: Path | None, hardware_files: list[str] | None) -> dict:
    from .arch import load_model
    from .specs import load_library

    files = _hardware_files(plan, base, hardware_files)
    lib = load_library(files)
    spec = lib.device(plan.hardware)
    node = lib.node_for(plan.hardware)
    model_ref = _resolve(plan.model, base)
    load_model(model_ref)  # unknown ids fail here, before any search
    return {"model": model_ref, "spec": spec, "node": node, "hardware_files": files, "base": base,
            "calibration": _resolve(plan.calibration, base) if plan.calibration else None}


# ------------------------------------------------------------------------------ neighbourhood

def training_moves(sec: TrainingSection, devices: int) -> dict[str, list[dict]]:
    """One-knob changes of a training layout, grouped by knob. Devices and the global batch
    stay fixed (dp follows from devices / (tp pp cp)); the micro-batch moves change gradient
    accumulation, not the global batch."""
    moves: dict[str, list[dict]] = {}
    moves["zero_stage"] = [{"zero_stage": z} for z in range(4) if z != sec.zero_stage]
    moves["recompute"] = [{"recompute": r} for r in ("none", "selective", "full") if r != sec.recompute]
    mb = []
    m = sec.micro_batch // 2
    while m >= 1:
        mb.append({"micro_batch": m})
        m //= 2
    mb.append({"micro_batch": sec.micro_batch * 2})
    moves["micro_batch"] = mb
    for knob in ("tp", "pp"):
        cur = getattr(sec, knob)
        opts = []
        if devices % (cur * 2) == 0:
            opts.append({knob: cur * 2})
        if cur > 1:
            opts.append({knob: cur // 2})
        moves[knob] = opts
    moves["offload_optimizer"] = [{"offload_optimizer": "cpu"}] if sec.offload_optimizer == "none" else [{"offload_optimizer": "none"}]
    return {k: v for k, v in moves.items() if v}


def inference_moves(sec: InferenceSection, max_tp: int) -> dict[str, list[dict]]:
    """One-knob changes of a serving setup: tp doubled/halved, batch halved/doubled, fp8 KV cache,
    fp8/int8 weights."""
    moves: dict[str, list[dict]] = {}
    tp = []
    if sec.tp * 2 <= max_tp:
        tp.append({"tp": sec.tp * 2})
    if sec.tp > 1:
        tp.append({"tp": sec.tp // 2})
    moves["tp"] = tp
    b = []
    x = sec.batch // 2
    while x >= 1:
        b.append({"batch": x})
        x //= 2
    b += [{"batch": sec.batch * 2}, {"batch": sec.batch * 4}]
    moves["batch"] = b
    wide = ("fp32", "bf16", "fp16")
    moves["kv_dtype"] = [{"kv_dtype": "fp8"}] if sec.kv_dtype in wide else []
    moves["weight_dtype"] = [{"weight_dtype": d} for d in ("fp8", "int8")] if sec.weight_dtype in wide else []
    return {k: v for k, v in moves.items() if v}


def serve_moves(sec: ServeSection, max_tp: int) -> dict[str, list[dict]]:
    """One-knob changes of an engine's layout under the plan's own load (the load is what the plan
    demands, so it stays): tp doubled/halved (experts spread over the TP group stay so), fp8 KV
    cache, fp8/int8 weights."""
    moves: dict[str, list[dict]] = {}
    spread = sec.ep > 1 and sec.ep == sec.tp
    tp = [t for t in (sec.tp * 2, sec.tp // 2) if 1 <= t <= max_tp and t != sec.tp]
    moves["tp"] = [{"tp": t, **({"ep": t} if spread else {})} for t in tp]
    wide = ("fp32", "bf16", "fp16")
    moves["kv_dtype"] = [{"kv_dtype": "fp8"}] if sec.kv_dtype in wide else []
    moves["weight_dtype"] = [{"weight_dtype": d} for d in ("fp8", "int8")] if sec.weight_dtype in wide else []
    return {k: v for k, v in moves.items() if v}


def _candidates(moves: dict[str, list[dict]], max_changes: int):
    """Combinations of moves on distinct knobs, fewest changes first."""
    knobs = list(moves)
    for n in range(1, max_changes + 1):
        batch = []
        for combo in itertools.combinations(knobs, n):
            for picks in itertools.product(*(moves[k] for k in combo)):
                upd: dict = {}
                for p in picks:
                    upd.update(p)
                batch.append(upd)
        yield n, batch


def nearest_passing(plan: Plan, ctx: dict, devices: int, global_batch: int | None, framework: str | None,
                    max_changes: int = 2, file=None) -> tuple[Optional[Neighbour], int]:
    """The passing neighbour with the fewest changed knobs (ties: shortest step / per-token
    time), and how many neighbours were evaluated. Neighbours that are not valid layouts
    (e.g. tp not dividing the heads) are skipped."""
    if plan.training is not None:
        base = plan.training
        moves = training_moves(base, devices)
    else:
        base = plan.inference if plan.inference is not None else plan.serve
        node = ctx["node"]
        max_tp = node.devices_per_node if node is not None else MAX_TP_WITHOUT_NODE
        moves = inference_moves(base, max_tp) if plan.inference is not None else serve_moves(base, max_tp)
    evaluated = 0
    for _n, batch in _candidates(moves, max_changes):
        passing: list[Neighbour] = []
        for upd in batch:
            if plan.training is not None:
                fixed = {"dp": None, "global_batch": global_batch, "framework": framework}
                sec = base.model_copy(update={**fixed, **upd})
            else:
                sec = base.model_copy(update=upd)
            evaluated += 1
            try:
                if plan.training is not None:
                    _est, pred, step_s = _evaluate_training(plan, sec, ctx, devices=devices)
                elif plan.serve is not None:
                    _est, pred, step_s = _evaluate_serve(plan, sec, ctx)
                else:
                    _est, pred, step_s = _evaluate_inference(plan, sec, ctx)
                checks = _checks(plan.limits, pred, file)
            except (InputError, ValidationError):
                continue  # not a valid layout (e.g. tp not dividing the heads, ep not dividing dp)
            if all(c.passed for c in checks):
                changes = {k: {"from": getattr(base, k), "to": v} for k, v in upd.items()
                           if not (k == "ep" and "tp" in upd)}  # ep follows tp: one knob
                layout = sec.model_dump()
                if plan.training is not None:
                    layout["dp"] = devices // (sec.tp * sec.pp * sec.cp)
                passing.append(Neighbour(changes=changes, layout=layout, checks=checks, step_s=step_s))
        if passing:
            return min(passing, key=lambda nb: nb.step_s), evaluated
    return None, evaluated


# ------------------------------------------------------------------------------ entry points

def check_plan(plan: Plan, file: str | Path | None = None, *, search: bool = True, max_changes: int = 2,
               hardware_files: list[str] | None = None) -> CheckResult:
    """Predict every limited quantity of a validated plan and check the limits; when one fails
    (and `search`), find the nearest passing layout. Input problems raise InputError naming
    `file`."""
    base = Path(file).resolve().parent if file is not None else None
    where = str(file) if file is not None else None
    try:
        ctx = _context(plan, base, hardware_files)
        if plan.training is not None:
            est, pred, _ = _evaluate_training(plan, plan.training, ctx)
            devices = est.devices
            gb = int(round(est.tokens_per_step / plan.training.seq_len))
            framework = plan.training.framework  # neighbours keep the plan's framework (and profile)
        elif plan.serve is not None:
            est, pred, _ = _evaluate_serve(plan, plan.serve, ctx)
            devices, gb, framework = est.devices, None, None
        else:
            est, pred, _ = _evaluate_inference(plan, plan.inference, ctx)
            devices, gb, framework = plan.inference.tp, None, None
        checks = _checks(plan.limits, pred, where)
    except ValidationError as exc:  # the layout's own consistency rules (workload.Parallel)
        err = from_validation_error(exc, where)
        field = f"{plan.kind}.{err.field}" if err.field else plan.kind
        raise InputError(err.detail, file=where if where is not None else "<plan>", field=field) from None
    except InputError as exc:
        if exc.file is not None and where is not None:
            ref = _referenced_field(plan, base, exc.file)
            if ref is not None:  # a file the plan points to: name the plan and its field too
                raise InputError(str(exc), file=where, field=ref) from None
        if exc.file is not None or where is None:
            raise
        field = exc.field or plan.kind  # a layout's own consistency rule (workload.Parallel) names no field
        if field not in ("model", "hardware", "nodes", "devices") and "." not in field and field != plan.kind:
            section = plan.section
            if field in type(section).model_fields:
                field = f"{plan.kind}.{field}"
        raise InputError(exc.detail, file=where, field=field) from None
    ok = all(c.passed for c in checks)
    nb, n_eval = (None, 0)
    if not ok and search:
        nb, n_eval = nearest_passing(plan, ctx, devices, gb, framework, max_changes, where)
    node = ctx["node"]
    return CheckResult(file=where, name=plan.name, kind=plan.kind, model=plan.model, hardware=plan.hardware,
                       devices=devices, device=ctx["spec"].id,
                       nodes=devices / node.devices_per_node if node is not None else None, ok=ok, checks=checks, predicted=pred, nearest_passing=nb, searched=n_eval,
                       notes=list(getattr(est, "notes", None) or []))


def check(path_or_plan: Union[str, Path, dict, Plan], *, search: bool = True,
          hardware_files: list[str] | None = None) -> CheckResult:
    """Check one plan: a path to a plan YAML, a plan mapping, or a Plan. Returns the
    CheckResult (``.ok``, ``.checks``, ``.nearest_passing``, ``.to_dict()``); bad input raises
    costmodel.InputError."""
    if isinstance(path_or_plan, Plan):
        return check_plan(path_or_plan, search=search, hardware_files=hardware_files)
    if isinstance(path_or_plan, dict):
        return check_plan(parse_plan(path_or_plan), search=search, hardware_files=hardware_files)
    path = Path(path_or_plan)
    return check_plan(load_plan(path), path, search=search, hardware_files=hardware_files)


def check_files(paths: list[str | Path], *, search: bool = True, hardware_files: list[str] | None = None
                ) -> list[CheckResult | InputError]:
    """Check several plan files; a plan with bad input yields its InputError in its place."""
    out: list[CheckResult | InputError] = []
    for p in paths:
        try:
            out.append(check(p, search=search, hardware_files=hardware_files))
        except InputError as exc:
            if exc.file is None:
                exc = InputError(exc.detail, file=p, field=exc.field)
            out.append(exc)
    return out


# ------------------------------------------------------------------------------ reports

def describe_failure(c: LimitCheck) -> str:
    """'max_memory_fraction: predicted 1.37 > limit 0.9 (missed by 0.47, 52%)'."""
    op = ">" if LIMITS[c.limit][1] == "max" else "<"
    return (f"{c.limit}: predicted {_fmt(c.predicted)} {op} limit {_fmt(c.value)} "
            f"(missed by {_fmt(c.missed_by)}{(' ' + c.unit) if c.unit and c.unit != 'of capacity' else ''}, "
            f"{abs(c.margin):.1%})")


def describe_changes(nb: Neighbour) -> str:
    return ", ".join(f"{k} {v['from']} -> {v['to']}" for k, v in nb.changes.items())


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.3g}"
    return f"{x:.4g}" if abs(x) < 10 else f"{x:,.1f}"


def junit_xml(results: list[CheckResult | InputError], paths: list[str | Path] | None = None) -> str:
    """JUnit XML: one testsuite, one testcase per plan x limit (a failure per missed limit);
    a plan that could not be read is one testcase with an error."""
    import xml.etree.ElementTree as ET

    suite = ET.Element("testsuite", name="costmodel check")
    tests = failures = errors = 0
    for i, r in enumerate(results):
        if isinstance(r, InputError):
            src = r.file or (str(paths[i]) if paths else f"plan {i + 1}")
            tc = ET.SubElement(suite, "testcase", classname=_classname(src), name=r.field or "plan")
            e = ET.SubElement(tc, "error", message=str(r), type="InputError")
            e.text = str(r)
            tests += 1
            errors += 1
            continue
        cls = _classname(r.file or r.name or f"plan {i + 1}")
        for c in r.checks:
            tc = ET.SubElement(suite, "testcase", classname=cls, name=c.limit)
            tests += 1
            if not c.passed:
                failures += 1
                msg = describe_failure(c)
                f = ET.SubElement(tc, "failure", message=msg, type="LimitExceeded")
                text = msg
                if r.nearest_passing is not None:
                    text += f"\nnearest passing layout: {describe_changes(r.nearest_passing)}"
                f.text = text
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def _classname(src: str) -> str:
    p = Path(src)
    return str(p.with_suffix("")).replace("\\", "/").replace("/", ".").lstrip(".") if p.suffix else src


# `costmodel.check(...)` is the function above; importing this module rebinds the package attribute
# to the module, so the module is made callable too.
_callable_module(__name__, check)
