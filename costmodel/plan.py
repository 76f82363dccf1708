"""Resolve user inputs (preset, hardware id, layout flags) into typed objects and estimates.

The library entry points the CLI and the Python API share. No printing here.
"""
from __future__ import annotations

import copy
import dataclasses

from pydantic import ValidationError

from . import frameworks
from .arch import load_model
from .errors import InputError, from_validation_error, require_positive
from .inputs import file_key, one_look
from .specs import claim_notes, library_origin, load_library
from .training import TrainEstimate, check_moe_switches, estimate_train
from .workload import InferJob, Parallel, TrainJob


# ------------------------------------------------------------------------ estimates already made

# An estimate is a pure function of its arguments and of the input files it read (the model preset
# or file, the hardware specs, a calibration overlay, a framework profile), so a call repeated with
# the same arguments while those files are unchanged gets a copy of the estimate made before. Keyed
# by the arguments as given; each entry remembers the versions of its inputs (the parsed objects,
# which the input caches replace when a file changes, and the overlay's and profile's file keys).
_ESTIMATES: dict = {}
MAX_ESTIMATES = 4096


def clear_caches() -> None:
    """Forget remembered estimates and parsed inputs (for code that changes the model's constants
    at run time, e.g. a sensitivity study patching a module; files edited on disk are noticed without it)."""
    import sys

    from . import arch, comm, flops, inputs, memory, specs, training

    _ESTIMATES.clear()
    _PARALLELS.clear()
    inputs._PARSED.clear()
    specs._LIBRARIES.clear()
    flops._LAYER_GEMMS.clear()
    memory._STAGE_PARAMS.clear()
    memory._STATE_BYTES.clear()
    arch._PARAMS.clear()
    training._STEP_EFFICIENCY.clear()
    comm._BANDWIDTH_SCALES.clear()
    inference = sys.modules.get("costmodel.inference")
    if inference is not None:
        inference._DECODE_WEIGHTS.clear()
        inference._PREFILL_GEMMS.clear()
        inference._DENSE_SHAPES.clear()
    search = sys.modules.get("costmodel.search")
    if search is not None:
        search._TIME_MODELS.clear()
        search._REFINED.clear()


def _plain(v):
    """A hashable stand-in for an argument, its type included (2 and 2.0 and True are not one key)."""
    return tuple(_plain(x) for x in v) if isinstance(v, (list, tuple)) else (type(v), v)


def _input_versions(args: tuple, kwargs: dict) -> tuple:
    model = args[0] if args else kwargs["model"]
    return (library_origin(kwargs.get("hardware_files")), load_model(model), file_key(kwargs["calibration"]) if kwargs.get("calibration") else None,
            file_key(kwargs["profile"]) if kwargs.get("profile") else None)


def _same(a: tuple, b: tuple) -> bool:
    return all(x is y or x == y for x, y in zip(a, b))


_FIELD_NAMES: dict = {}  # estimate class -> its dataclass fields' names


def _copy(obj):
    """copy.copy of a record: a plain dataclass instance (its __dict__, no copy hooks of its own)
    without going through __reduce_ex__."""
    cls = type(obj)
    if cls.__reduce_ex__ is object.__reduce_ex__ and getattr(cls, "__copy__", None) is None and hasattr(obj, "__dict__") \
            and not hasattr(cls, "__slots__"):
        new = object.__new__(cls)
        new.__dict__.update(obj.__dict__)
        return new
    return copy.copy(obj)


def _fresh(est):
    """A copy of an estimate that its caller may change without changing the remembered one: its
    lists and dicts copied, and the records it holds (memory, step) copied one level down."""
    names = _FIELD_NAMES.get(type(est))
    if names is None:
        names = _FIELD_NAMES[type(est)] = tuple(f.name for f in dataclasses.fields(est))
    out = _copy(est)
    d = getattr(out, "__dict__", None)
    if d is not None and len(d) == len(names):  # a plain dataclass instance: its fields are its __dict__
        for name, v in d.items():
            t = type(v)
            if t in _LEAVES:
                continue
            if isinstance(v, list):
                d[name] = [dict(x) if isinstance(x, dict) else x for x in v]
            elif isinstance(v, dict):
                d[name] = dict(v)
            elif hasattr(t, "__dataclass_fields__"):  # a dataclass instance
                d[name] = _copy(v)
        return out
    for name in names:
        v = getattr(out, name)
        if isinstance(v, list):
            v = [dict(x) if isinstance(x, dict) else x for x in v]
        elif isinstance(v, dict):
            v = dict(v)
        elif hasattr(type(v), "__dataclass_fields__"):  # a dataclass instance
            v = _copy(v)
        else:
            continue
        object.__setattr__(out, name, v)
    return out


_LEAVES = frozenset((str, int, float, bool, type(None)))  # field values _fresh leaves as they are


def _remembered(fn):
    """``fn`` (train, infer) answered from _ESTIMATES when called again with the same arguments
    and unchanged inputs. Any problem in the lookup falls through to ``fn``, which reports it."""
    import functools

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with one_look():  # the estimate's input files looked at once
            return remembered(*args, **kwargs)

    def remembered(*args, **kwargs):
        try:
            key = (fn.__name__, _plain(args), tuple(sorted((k, _plain(v)) for k, v in kwargs.items())))
            hit = _ESTIMATES.get(key)
        except TypeError:  # an argument that is not hashable: no memo
            return fn(*args, **kwargs)
        if hit is not None:
            try:
                ok = _same(_input_versions(args, kwargs), hit[0])
            except Exception:  # noqa: BLE001 - fn reports it, in its own order
                ok = False
            if ok:
                claim_notes(hit[1].notes)
                return _fresh(hit[1])
        est = fn(*args, **kwargs)
        try:
            versions = _input_versions(args, kwargs)
        except Exception:  # noqa: BLE001
            return est
        if len(_ESTIMATES) >= MAX_ESTIMATES:
            _ESTIMATES.clear()
        _ESTIMATES[key] = (versions, _fresh(est))
        return est

    return call


@_remembered
def train(model: str, hardware: str = "h100-sxm", *, devices: int | None = None, nodes: int | None = None,
          tp: int = 1, pp: int = 1, dp: int | None = None, cp: int = 1, ep: int = 1, sequence_parallel: bool = False,
          zero_stage: int = 0, interleave: int = 1, micro_batch: int = 1, seq_len: int = 2048,
          global_batch: int | None = None, precision: str = "amp-bf16", optimizer: str = "adamw",
          recompute: str = "none", attention: str = "flash", framework: str | None = None,
          overlap_grad_reduce: bool = True, tp_comm_overlap: bool = False, offload_optimizer: str = "none", offload_params: str = "none", calibration: str | None = None,
          hardware_files: list[str] | None = None, host_time_factor: float = 1.0,
          profile: str | None = None, grad_reduce_in_bf16: bool = False, etp: int | None = None,
          moe_enable_deepep: bool = False) -> TrainEstimate:
    """Estimate one training step. `hardware` is a device id or a node id; `nodes` multiplies a
    node's devices. dp defaults to devices / (tp * pp * cp). `framework`: a framework name
    (costmodel.frameworks, case-insensitive; default frameworks.DEFAULT_FRAMEWORK); `profile`: a
    framework profile YAML (e.g. from fit-profile) that times the step instead of the built-in.
    `etp`: Megatron-core's expert tensor-parallel size (Parallel.etp; default tp)."""
    require_positive(devices=devices, nodes=nodes, tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, interleave=interleave, etp=etp,
                     micro_batch=micro_batch, seq_len=seq_len, global_batch=global_batch)
    lib = load_library(hardware_files)
    spec = lib.device(hardware)
    node = lib.node_for(hardware)
    if node is None and nodes:
        raise InputError(f"--nodes needs a node spec (e.g. dgx-h100), got device {hardware!r}", field="nodes")
    if devices is None:
        devices = (nodes or 1) * node.devices_per_node if node else (tp * pp * cp * (dp or 1))
    per = tp * pp * cp
    if devices % per:
        raise InputError(f"devices ({devices}) must be a multiple of tp*pp*cp ({per})", field="devices")
    dp = dp or devices // per
    if dp * per != devices:
        raise InputError(f"tp*pp*cp*dp = {dp * per} but devices = {devices}", field="dp")
    fw = frameworks.job_fields(framework if framework is not None or profile is not None
                               else frameworks.DEFAULT_FRAMEWORK, profile)
    try:
        par = _parallel(tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, sequence_parallel=sequence_parallel, zero_stage=zero_stage,
                        interleave=interleave, etp=etp)
        job = TrainJob(micro_batch=micro_batch, seq_len=seq_len, global_batch=global_batch, precision=precision,
                       optimizer=optimizer, recompute=recompute, attention=attention, **fw,
                       overlap_grad_reduce=overlap_grad_reduce, tp_comm_overlap=tp_comm_overlap,
                       grad_reduce_in_bf16=grad_reduce_in_bf16, moe_enable_deepep=moe_enable_deepep,
                       offload_optimizer=offload_optimizer,
                       offload_params=offload_params, host_time_factor=host_time_factor)
    except ValidationError as exc:
        raise from_validation_error(exc, None) from None
    job.check_batch(par)
    m = load_model(model)
    if m.heads % tp:
        raise InputError(f"tp ({tp}) must divide the model's {m.heads} heads", field="tp")
    if pp > m.layers:
        raise InputError(f"pp ({pp}) exceeds the model's {m.layers} layers", field="pp")
    if cp > 1 and seq_len % (2 * cp):
        # Megatron-core / Transformer Engine context parallelism splits the sequence into 2 x cp
        # chunks, each rank taking one from each end (load-balanced causal attention)
        raise InputError(f"cp ({cp}) must split the {seq_len}-token sequence into 2 x cp = {2 * cp} equal chunks",
                         field="cp")
    check_moe_switches(m, etp, moe_enable_deepep)
    est = estimate_train(m, spec, job, par, node=node, calibration=calibration)
    est.notes.extend(context_notes(m, seq_len, "--seq-len"))
    est.notes.extend(_spec_notes(lib, hardware))
    return est


def _parallel(**fields) -> Parallel:
    """Parallel(**fields), one validated object per set of fields as given (it is frozen)."""
    try:
        key = tuple((k, _plain(v)) for k, v in fields.items())
        hit = _PARALLELS.get(key)
    except TypeError:  # (not hashable: validated, and refused, by Parallel)
        return Parallel(**fields)
    if hit is None:
        if len(_PARALLELS) >= 1024:
            _PARALLELS.clear()
        hit = _PARALLELS[key] = Parallel(**fields)
    return hit


_PARALLELS: dict = {}


def _spec_notes(lib, hardware: str) -> list[str]:
    """Notes on specs that replace another file's (a user's spec with a shipped id): reported with
    the estimate (and not again by the CLI)."""
    notes = lib.notes(hardware)
    claim_notes(notes)
    return notes


def context_notes(model, tokens: int, what: str) -> list[str]:
    """A warning when a sequence is longer than the model was trained for (``max_context``): the
    estimate still counts it, but the model would need its positions extended (RoPE scaling,
    continued pre-training) to use it."""
    if tokens <= model.max_context:
        return []
    return [f"{what} {tokens:,} exceeds {model.id}'s max_context {model.max_context:,}: the numbers assume the "
            "model runs at that length (positions extended, e.g. RoPE scaling), which it was not trained for"]


@_remembered
def infer(model: str, hardware: str = "h100-sxm", *, tp: int = 1, batch: int = 1, prompt_len: int = 1024,
          gen_len: int = 128, weight_dtype: str = "bf16", kv_dtype: str = "bf16", cuda_graph: bool = True,
          calibration: str | None = None, hardware_files: list[str] | None = None, host_time_factor: float = 1.0):
    require_positive(tp=tp, batch=batch, prompt_len=prompt_len)
    lib = load_library(hardware_files)
    spec = lib.device(hardware)
    node = lib.node_for(hardware)
    m = load_model(model)
    if m.n_kv_heads % tp and tp % m.n_kv_heads:
        raise InputError(f"tp ({tp}) does not split the model's {m.n_kv_heads} kv heads", field="tp")
    try:
        job = InferJob(batch=batch, prompt_len=prompt_len, gen_len=gen_len, weight_dtype=weight_dtype, kv_dtype=kv_dtype,
                       cuda_graph=cuda_graph, compute_dtype="fp8" if weight_dtype == "fp8" else "bf16",
                       host_time_factor=host_time_factor)
    except ValidationError as exc:
        raise from_validation_error(exc, None) from None
    estimate_infer = _ESTIMATE_INFER[0] or _import_estimate_infer()  # imported by the command that uses it (train does not)
    est = estimate_infer(m, spec, job, tp=tp, node=node, calibration=calibration)
    est.notes.extend(context_notes(m, prompt_len + gen_len, "--prompt-len + --gen-len"))
    est.notes.extend(_spec_notes(lib, hardware))
    return est


_ESTIMATE_INFER: list = [None]  # costmodel.inference.estimate_infer, once imported


def _import_estimate_infer():
    from .inference import estimate_infer

    _ESTIMATE_INFER[0] = estimate_infer
    return estimate_infer


def largest_batch_under_tpot(model: str, hardware: str = "h100-sxm", *, max_tpot_s: float, tp: int = 1,
                             prompt_len: int = 1024, gen_len: int = 128, weight_dtype: str = "bf16", kv_dtype: str = "bf16",
                             cuda_graph: bool = True, calibration: str | None = None,
                             hardware_files: list[str] | None = None, host_time_factor: float = 1.0) -> dict | None:
    """The largest serving batch whose time per output token meets ``max_tpot_s`` and that fits
    (costmodel.inference.largest_batch_under_tpot), with its decode-only and end-to-end throughput;
    None when even batch 1 misses the target or does not fit."""
    from .inference import largest_batch_under_tpot as _largest

    if not max_tpot_s > 0:
        raise InputError(f"expected a positive per-token latency target (got {max_tpot_s * 1e3:g} ms)", field="max-tpot-ms")
    est_job = dict(tp=tp, batch=1, prompt_len=prompt_len, gen_len=gen_len, weight_dtype=weight_dtype, kv_dtype=kv_dtype,
                   cuda_graph=cuda_graph, calibration=calibration, hardware_files=hardware_files,
                   host_time_factor=host_time_factor)
    est = infer(model, hardware, **est_job)  # validates the inputs as infer does
    lib = load_library(hardware_files)
    job = InferJob.model_validate(est.job)
    return _largest(load_model(model), lib.device(hardware), job, max_tpot_s, tp=tp, node=lib.node_for(hardware),
                    calibration=calibration)


def fix_suggestions(est: TrainEstimate) -> list[str]:
    """Knobs that would make a layout that does not fit fit, from the memory breakdown."""
    mem = est.memory
    over = est.required_bytes - est.capacity_bytes
    tips = []
    par, job = est.parallel, est.job
    runs = frameworks.resolve(job.get("profile") or job["framework"]).settings
    if mem.optimizer_bytes + mem.master_bytes > over and par["zero_stage"] < 1 and par["dp"] > 1:
        tips.append(f"--zero-stage 1 shards {(mem.optimizer_bytes + mem.master_bytes) / 2**30:.1f} GiB of optimizer state over dp={par['dp']}")
    if par["zero_stage"] < 3 and par["dp"] > 1 and 3 in runs.zero_stages:
        tips.append("--zero-stage 3 (FSDP) shards weights, gradients and optimizer states")
    if job["recompute"] != "full" and mem.activations_bytes > 0.2 * over:
        tips.append("--recompute full keeps only each layer's input for backward")
    if job["micro_batch"] > 1:
        tips.append("a smaller --micro-batch (with gradient accumulation) cuts activations proportionally")
    tips.append("more --tp / --pp splits weights and activations over more devices")
    if job["offload_optimizer"] == "none" and runs.optimizer_offload != "none":
        tips.append("--offload-optimizer cpu moves optimizer states to host DRAM ("
                    + ("Megatron-core --optimizer-cpu-offload" if runs.optimizer_offload == "hybrid-optimizer" else "ZeRO-Offload") + ")")
    return tips
