"""Measurement records checked at the boundary: pydantic models of the fields ``validate`` and
``fit-profile`` read from ``train``, ``published``, ``decode_step`` and ``infer`` records (the
format of ``shared/truth/SCHEMA.md``), as the hardware specs are checked.

A record that passes is used as it is (the dict, unchanged); one that does not raises one
InputError naming ``file:line`` and the field ("measured.step_seconds"), so a wrong type, a zero,
a negative or a boolean never reaches the formulas or becomes a silently skipped metric. Fields the
models do not name (notes, sources, context measurements) are kept and not checked; JSON itself
cannot hold NaN or Infinity here (costmodel.inputs refuses them).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, field_validator

from .errors import from_validation_error

# Counts in records (devices, parallel sizes, batches, lengths): at least 1, at most the int32 range.
MAX_COUNT = 2**31 - 1
Count = Annotated[StrictInt, Field(ge=1, le=MAX_COUNT)]
Hardware = Annotated[StrictStr, Field(min_length=1)]

# The measured metrics validate compares with a prediction (costmodel.validate): each must be a
# positive finite number (a 0 would report 0% error, a boolean is not a measurement); ``oom`` is
# true or false. Other measured fields are context and are not read.
METRICS = ("weights_bytes", "steady_bytes", "peak_bytes", "kv_cache_bytes", "step_seconds", "tflops_per_device",
           "mfu", "hfu", "prefill_seconds", "decode_seconds_per_token")
Positive = Annotated[float, Field(gt=0, strict=True)]  # an int or a float (not a bool or text), > 0


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class Measured(_Record):
    oom: Optional[StrictBool] = None
    # a published "largest model that fits" claim: true where the paper trained the setup (validate
    # compares it with the predicted fit, as ``oom`` the other way)
    fits: Optional[StrictBool] = None
    weights_bytes: Optional[Positive] = None
    steady_bytes: Optional[Positive] = None
    peak_bytes: Optional[Positive] = None
    kv_cache_bytes: Optional[Positive] = None
    step_seconds: Optional[Positive] = None
    tflops_per_device: Optional[Positive] = None
    mfu: Optional[Positive] = None
    hfu: Optional[Positive] = None
    prefill_seconds: Optional[Positive] = None
    decode_seconds_per_token: Optional[Positive] = None


class ParallelRecord(_Record):
    tp: Optional[Count] = None
    pp: Optional[Count] = None
    dp: Optional[Count] = None
    cp: Optional[Count] = None
    ep: Optional[Count] = None
    etp: Optional[Count] = None  # Megatron-core --expert-tensor-parallel-size (default: tp)
    interleave: Optional[Count] = None
    zero_stage: Optional[Annotated[StrictInt, Field(ge=0, le=3)]] = None
    sharding: Optional[Literal["none", "full", "optimizer", "grad"]] = None
    sequence_parallel: Optional[StrictBool] = None


class InlineModel(_Record):
    """A record's inline architecture (SCHEMA.md ``model``): the types of the fields
    costmodel.validate.model_from_record reads; which arch it names is checked there."""

    arch: Optional[StrictStr] = None
    preset: Optional[StrictStr] = None
    layers: Optional[Count] = None
    hidden: Optional[Count] = None
    heads: Optional[Count] = None
    kv_heads: Optional[Count] = None
    head_dim: Optional[Count] = None
    ffn: Optional[Count] = None
    vocab: Optional[Count] = None
    max_context: Optional[Count] = None
    n_positions: Optional[Count] = None
    moe_experts: Optional[Count] = None
    moe_top_k: Optional[Count] = None
    tied_embeddings: Optional[StrictBool] = None
    qkv_bias: Optional[StrictBool] = None
    bias: Optional[StrictBool] = None
    mlp: Optional[StrictStr] = None
    norm: Optional[StrictStr] = None
    positions: Optional[StrictStr] = None


class _Common(_Record):
    kind: StrictStr
    name: Optional[StrictStr] = None
    hardware: Hardware
    model: Any  # a preset id or an inline architecture (costmodel.validate.model_from_record)
    measured: Measured
    framework: Optional[StrictStr] = None
    devices: Optional[Count] = None


    @field_validator("model")
    @classmethod
    def _model(cls, v):
        if isinstance(v, dict):
            InlineModel.model_validate(v)  # errors name model.<field>
            return v
        if not (isinstance(v, str) and v):
            raise ValueError("expected a preset id or an object with the architecture")
        return v


class OffloadRecord(_Record):
    """ZeRO-Offload / ZeRO-Infinity: where the optimizer states and the parameters live."""

    optimizer: Optional[Literal["none", "cpu", "nvme"]] = None
    params: Optional[Literal["none", "cpu", "nvme"]] = None


class TrainRecord(_Common):
    node: Optional[StrictStr] = None
    offload: Optional[OffloadRecord] = None
    parallel: Optional[ParallelRecord] = None
    seq_len: Count
    micro_batch: Optional[Count] = None
    global_batch: Optional[Count] = None
    precision: Optional[StrictStr] = None
    optimizer: Optional[StrictStr] = None
    recompute: Optional[StrictStr] = None
    recompute_fraction: Optional[Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]] = None
    attention: Optional[StrictStr] = None
    overlap_grad_reduce: Optional[StrictBool] = None
    tp_comm_overlap: Optional[StrictBool] = None  # Megatron-LM --tp-comm-overlap
    grad_reduce_in_bf16: Optional[StrictBool] = None  # Megatron-LM --grad-reduce-in-bf16
    moe_enable_deepep: Optional[StrictBool] = None  # Megatron-core --moe-enable-deepep
    flops_convention: Optional[StrictStr] = None
    unverified: Optional[list[StrictStr]] = None


class DecodeRecord(_Common):
    parallel: Optional[ParallelRecord] = None
    batch: Count
    context_len: Count
    node: Optional[StrictStr] = None
    weight_dtype: Optional[Literal["fp32", "bf16", "fp16", "fp8", "int8", "int4"]] = None
    kv_dtype: Optional[Literal["fp32", "bf16", "fp16", "fp8", "int8", "int4"]] = None  # absent: bf16
    layout: Optional[Literal["1d-weight-stationary", "2d-weight-stationary"]] = None


class InferRecord(_Common):
    batch: Optional[Count] = None
    prompt_len: Optional[Count] = None
    gen_len: Optional[Annotated[StrictInt, Field(ge=0, le=MAX_COUNT)]] = None


_MODELS = {"train": TrainRecord, "published": TrainRecord, "decode_step": DecodeRecord, "infer": InferRecord}


def check_record(rec: dict, where: str) -> dict:
    """Raise InputError (at ``where``, e.g. ``file:line``, naming the field) unless ``rec``'s fields
    have the types and ranges its kind needs; return ``rec`` itself. Kinds other than train,
    published, decode_step and infer are left to their own checks (kernel records:
    bench.records.check_kernel_record)."""
    model = _MODELS.get(rec.get("kind")) if isinstance(rec.get("kind"), str) else None
    if model is None:
        return rec
    try:
        model.model_validate(rec)
    except ValidationError as exc:
        raise from_validation_error(exc, where) from None
    return rec


def check_records(records: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    for where, rec in records:
        check_record(rec, where)
    return records

