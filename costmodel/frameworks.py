"""Framework profiles: how a training framework runs a step, as data (``data/frameworks/*.yaml``).

A profile names the framework's base semantics (``base``: which memory and kernel model applies:
``pytorch`` = eager PyTorch / Hugging Face, ``megatron`` = Megatron-style fused kernels with fp32
gradient buffers, ``deepspeed`` = ZeRO's 2 + 2 + 12 bytes per parameter) and the parameters of the
mechanisms that set its step time. Every parameter is physical (a time, a fraction, an exponent),
has bounds that ``costmodel fit-profile`` keeps it in, and cites where its value comes from.

``step_model: composed`` profiles are timed by ``costmodel.steptime`` from their parameters;
``builtin`` ones by the step model of ``costmodel.training`` (whose constants their YAML lists
for reference; a test keeps the two equal).

Names are matched case-insensitively, with the aliases a profile lists (``Megatron-LM``,
``megatron-core``); an unknown name is an InputError listing the known ones.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import InputError, from_validation_error


class ProfileParameter(BaseModel):
    """One mechanism parameter: its value, the bounds a fit keeps it in, its unit and where the
    value comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    value: float
    bounds: tuple[float, float]
    unit: str = ""
    meaning: str
    source: str
    # set where the value was not fitted to measurements (a value taken from a paper, a copy of another
    # profile's value that serves as a fit's start, an engineering allowance): why, in a few words.
    # tools/mutate_constants.py reports such a parameter as "not fitted" instead of testing it.
    not_fitted: Optional[str] = None

    @model_validator(mode="after")
    def _in_bounds(self):
        lo, hi = self.bounds
        if not lo <= hi:
            raise ValueError(f"bounds {self.bounds} are not ordered")
        if not lo <= self.value <= hi:
            raise ValueError(f"value {self.value} lies outside its bounds {self.bounds}")
        return self


# The parameters a composed step model reads (costmodel.steptime), with their neutral values: a
# composed profile must give each of them.
COMPOSED_PARAMETERS = ("compute_scale", "elementwise_scale", "host_s_per_layer", "host_gpu_combine_p", "tp_overlap",
                       "dp_overlap", "pp_cross_node_s", "pp_cross_node_tp_exponent")


class ProfileSettings(BaseModel):
    """How a framework runs, as discrete choices (not fitted): read by costmodel.steptime."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # gradients reduced bucket by bucket, one collective per bucket of this many compute-dtype
    # gradient bytes (PyTorch DDP's bucket_cap_mb = 25 MiB, comm.DDP_BUCKET_BYTES)
    dp_bucket_bytes: float = Field(default=25 * 1024 * 1024, gt=0)
    # the step replayed as CUDA graphs: no per-op host dispatch on the critical path
    cuda_graphs: bool = False
    # what the framework can run: `search` enumerates only these (ZeRO stages; virtual pipeline
    # stages of an interleaved 1F1B schedule)
    zero_stages: tuple[int, ...] = (0, 1, 2, 3)
    interleaved_pipeline: bool = True
    # the clock a step's GEMMs run at (costmodel.calibration.curves.power_limited_s): "burst" where
    # they come in short bursts between memory-bound kernels and host gaps, so the power cap of
    # back-to-back GEMMs binds only as far as a short burst's does (eager PyTorch: profiled, the
    # GEMMs of a llama-1.3b amp step on H200 averaged 778 TFLOP/s against ~690 sustained,
    # data/measurements/h200-sxm-x2/2026-11-23j-train-profile/train-profile-h200.diag.jsonl); "sustained" where fused kernels keep the
    # tensor cores busy back to back and the device runs at its power-limited clock (the
    # calibration's sustained_flops_per_s; on H100 run 23r the clock fell from 1770-1980 MHz to
    # 1455-1500 MHz as the run heated the GPU from 102 to 655 W,
    # data/measurements/h100-sxm/2026-11-23r-gemm-interleaved/). A device without a measured
    # sustained rate is the same under both.
    gemm_clock: Literal["burst", "sustained"] = "burst"
    # the fused-attention kernel the framework runs ("cudnn": cuDNN fused attention, as PyTorch >= 2.11
    # SDPA and Transformer Engine pick on Hopper; "flash2": FlashAttention-2, the flash-attn package or
    # PyTorch SDPA's flash backend); None: whichever the device's calibration measured.
    # training.step_efficiency times attention as this kernel where the calibration names another.
    attention_backend: Optional[Literal["cudnn", "flash2"]] = None
    # how decoder layers are split over pipeline stages (costmodel.steptime.stage_layers): "even"
    # (Megatron-LM: layers / pp each, the LM head on the last stage), "cost" (nanotron: blocks in
    # order until each stage holds 1/pp of the compute cost, the LM head counted as vocab x hidden)
    pipeline_balance: Literal["even", "cost"] = "even"
    # the loss kernel (training.cross_entropy_s): None, the base framework's own (Megatron-LM's
    # unfused vocab-parallel cross-entropy, eager PyTorch's log_softmax + nll_loss); "fused", one
    # kernel each way over the bf16 logits (a torch.compile'd loss, Liger's or TE's fused
    # cross-entropy)
    loss_kernel: Optional[Literal["fused"]] = None
    # how fp8 training casts the linear layers' operands (training._layer_times): None, the base
    # framework's own ("megatron": Transformer Engine's fused cast-transposes, the weights cast once
    # per step, training.te_fp8_bytes_per_token; "pytorch": none counted); "dynamic-tensorwise",
    # torchao's Float8Linear as torchtitan's float8 converter runs it: every call scales the input and
    # the weight by their absolute maximum and casts them, the output gradient likewise, with the
    # transposed copies its backward GEMMs need (training.float8_dynamic_cast_s)
    fp8_casts: Optional[Literal["dynamic-tensorwise"]] = None
    # how gradients are reduced where the optimizer state alone is sharded (ZeRO-1): "buckets", bucket by
    # bucket during the last micro-batch's backward (DDP's hooks, Megatron's and DeepSpeed's
    # overlapped reduction); "after-backward", the whole gradient buffer in one call once the backward
    # is done, none of it hidden (nanotron with fp32 gradient accumulation and ZeRO-1 does not wrap
    # the model in DDP, trainer.py make_ddp, and all-reduces its contiguous fp32 gradient buffer in
    # sync_gradients_across_dp)
    sharded_grad_sync: Literal["buckets", "after-backward"] = "buckets"
    # how the optimizer runs on the host (--offload-optimizer; costmodel.memory.offload_placement,
    # costmodel.offload.offload_step_s): "zero-offload", DeepSpeed's ZeRO-Offload (Ren et al. 2021
    # sec. 4.1): the gradients stream down bucket by bucket during the backward, the GPU keeps two
    # buckets; "hybrid-optimizer", Megatron-core's --optimizer-cpu-offload
    # (megatron/core/optimizer/cpu_offloading/hybrid_optimizer.py): the fp32 master and Adam moments
    # live on the host, the GPU keeps its whole gradient buffer and the reduced gradient shard is
    # copied down once the backward is done; "with-params": only together with the parameters under
    # ZeRO-3 (FSDP2's CPUOffloadPolicy: sharded parameters, gradients and the optimizer step on the
    # host; timed as ZeRO-Infinity's parameter and optimizer offload); "none": no optimizer offload
    optimizer_offload: Literal["zero-offload", "hybrid-optimizer", "with-params", "none"] = "zero-offload"
    # the ZeRO stages the framework runs together with pipeline parallelism (None: every one it runs;
    # DeepSpeed's PipelineEngine refuses ZeRO-2 and ZeRO-3)
    pipeline_zero_stages: Optional[tuple[int, ...]] = None
    # what --recompute selective re-runs in the backward (steptime.recompute_forward_s): "attention-core",
    # Korthikanti et al. 2022's selective recompute (Megatron-LM, NeMo: the attention's softmax core);
    # "every-other-matmul", torchtitan's per-op selective checkpointing (activation_checkpoint mode
    # selective, option "op"): every op's output saved but every second matmul's of a block, which
    # re-run with the elementwise ops around them (flops.every_other_matmul_flops); the activations
    # kept are what that policy saves (memory.every_other_matmul_activation_bytes)
    selective_recompute: Literal["attention-core", "every-other-matmul"] = "attention-core"


class FrameworkProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    name: str
    aliases: list[str] = Field(default_factory=list)
    base: Literal["pytorch", "megatron", "deepspeed"]
    step_model: Literal["builtin", "composed"] = "builtin"
    description: str
    parameters: dict[str, ProfileParameter] = Field(default_factory=dict)
    settings: ProfileSettings = Field(default_factory=ProfileSettings)
    # The network the profile was fitted on, as measured (specs.ScaleOutScaling: bus bandwidth by
    # node count, ring step latency): used across nodes where the node spec has no measured
    # scaling of its own (a cluster from `calibrate --nccl-tests` takes precedence).
    cluster_scaling: dict | None = None
    # the cross-node ring step latency fitted with the profile where no nccl-tests logs pinned the
    # cluster's (costmodel.cluster); replaces the scaling's step_latency
    cluster_step_latency_s: float | None = Field(default=None, gt=0)
    fit: dict | None = None  # how the values were fitted (file, records, errors), written by fit-profile

    def check_runs(self, zero_stages, interleaves=(), zero_field: str = "zero_stage", offload: bool = False,
                   offload_field: str = "offload_optimizer", offload_params: bool = False, pipelined: bool = False) -> None:
        """InputError where a layout asks for a ZeRO stage (alone or beside a pipeline,
        ``pipelined``), an interleaved pipeline schedule or an optimizer offload this framework has no
        code for (``settings.zero_stages``, ``settings.pipeline_zero_stages``,
        ``settings.interleaved_pipeline``, ``settings.optimizer_offload``); ``train`` checks its one
        layout, ``search`` the stages, interleavings and offload it is told to try (the stages beside a
        pipeline are a rule of its grid)."""
        bad = sorted({int(z) for z in zero_stages} - set(self.settings.zero_stages))
        if bad:
            raise InputError(f"{self.id} runs ZeRO stages {', '.join(map(str, self.settings.zero_stages))} only "
                             f"(its profile's settings.zero_stages), not {', '.join(map(str, bad))}", field=zero_field)
        if not self.settings.interleaved_pipeline and any(int(v) > 1 for v in interleaves):
            raise InputError(f"{self.id} has no interleaved pipeline schedule (its profile's settings.interleaved_pipeline)",
                             field="interleave")
        with_pp = self.settings.pipeline_zero_stages
        bad = sorted({int(z) for z in zero_stages} - set(with_pp)) if pipelined and with_pp is not None else []
        if bad:
            raise InputError(f"with pipeline parallelism {self.id} runs ZeRO stages {', '.join(map(str, with_pp))} only "
                             f"(its profile's settings.pipeline_zero_stages), not {', '.join(map(str, bad))}",
                             field=zero_field)
        how = self.settings.optimizer_offload
        if offload and how == "none":
            raise InputError(f"{self.id} has no optimizer offload (its profile's settings.optimizer_offload)",
                             field=offload_field)
        if offload and how == "with-params" and not (offload_params and all(int(z) == 3 for z in zero_stages)):
            raise InputError(f"{self.id} offloads its optimizer only with its parameters under ZeRO-3 (FSDP2's "
                             "CPUOffloadPolicy; its profile's settings.optimizer_offload): add --offload-params cpu "
                             "and --zero-stage 3", field=offload_field)

    @property
    def scaling(self):
        """``cluster_scaling`` as a specs.ScaleOutScaling (None when the profile names none)."""
        if self.cluster_scaling is None:
            return None
        from .specs import ScaleOutScaling

        return ScaleOutScaling.model_validate(self.cluster_scaling)

    @model_validator(mode="after")
    def _complete(self):
        if self.cluster_scaling is not None:
            from .specs import ScaleOutScaling

            ScaleOutScaling.model_validate(self.cluster_scaling)  # its units and fields, checked once
        if self.step_model == "composed":
            missing = [p for p in COMPOSED_PARAMETERS if p not in self.parameters]
            if missing:
                raise ValueError(f"a composed profile needs parameters {', '.join(missing)}")
        return self

    def value(self, name: str) -> float:
        return self.parameters[name].value

    def with_values(self, values: dict[str, float], fit: dict | None = None) -> "FrameworkProfile":
        params = {k: p.model_copy(update={"value": float(values.get(k, p.value))}) for k, p in self.parameters.items()}
        return self.model_copy(update={"parameters": params, "fit": fit if fit is not None else self.fit})


def frameworks_dir() -> Path:
    from .specs import package_data_dir

    return package_data_dir("data") / "frameworks"


def load_profile_file(path: str | Path) -> FrameworkProfile:
    """A framework profile YAML, parsed once per version of the file (FrameworkProfile is frozen)."""
    from .inputs import cached_by_file

    path = Path(path)
    return cached_by_file("profile", path, lambda: _parse_profile_file(path))


def _parse_profile_file(path: Path) -> FrameworkProfile:
    from .inputs import load_yaml

    data = load_yaml(path)
    if not isinstance(data, dict):
        raise InputError("expected a mapping (a framework profile)", file=path)
    try:
        return FrameworkProfile.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, path) from None


@functools.lru_cache(maxsize=1)
def builtin_profiles() -> dict[str, FrameworkProfile]:
    out: dict[str, FrameworkProfile] = {}
    for f in sorted(frameworks_dir().glob("*.yaml")):
        prof = load_profile_file(f)
        out[prof.id] = prof
    return out


def known_names() -> list[str]:
    return sorted(builtin_profiles())


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def resolve(name: str | None, default: str = "megatron") -> FrameworkProfile:
    """The built-in profile called ``name`` (case-insensitive, aliases included; None: ``default``).
    A path to a profile YAML (``--profile``-style) also works."""
    if name is None:
        name = default
    if isinstance(name, FrameworkProfile):
        return name
    profiles = builtin_profiles()
    hit = _RESOLVED.get(name) if isinstance(name, str) else None
    if hit is not None and hit[0] is profiles:
        return hit[1]
    prof = _resolve(name, profiles)
    if isinstance(name, str) and not name.endswith((".yaml", ".yml")) and profiles.get(prof.id) is prof:  # built-in
        if len(_RESOLVED) >= 256:
            _RESOLVED.clear()
        _RESOLVED[name] = (profiles, prof)
    return prof


# name -> (the built-in profiles it was resolved among, the profile): a name resolved once
_RESOLVED: dict = {}


def _resolve(name, profiles: dict) -> FrameworkProfile:
    key = _key(str(name))
    names = [(n, prof) for prof in profiles.values() for n in [prof.id, *(_key(a) for a in prof.aliases)]]
    for n, prof in names:
        if key == n:
            return prof
    # a name with a version or details after it ("pytorch-2.11 transformers-5.17", "deepspeed 0.14")
    for n, prof in sorted(names, key=lambda x: -len(x[0])):
        if key.startswith(n) and not key[len(n)].isalpha():
            return prof
    if str(name).endswith((".yaml", ".yml")) and Path(name).is_file():
        return load_profile_file(name)
    raise InputError(f"unknown framework {name!r}; known: {', '.join(known_names())}", field="framework")


def is_builtin_name(name: str) -> bool:
    """Whether ``name`` is exactly a shipped profile's id or one of its aliases (no version suffix)."""
    key = _key(str(name))
    return any(key == n for prof in builtin_profiles().values() for n in [prof.id, *(_key(a) for a in prof.aliases)])


# The framework `train`, `search` and `check` assume when none is named (every output says which).
DEFAULT_FRAMEWORK = "megatron"


def job_fields(framework: str | None = None, profile: str | None = None) -> dict:
    """TrainJob's ``framework`` (base semantics) and ``profile`` for a framework name and an
    optional profile YAML that replaces the built-in profile: a profile file names its own base."""
    if profile is not None:
        prof = load_profile_file(profile)
        if framework is not None and resolve(framework).base != prof.base:
            raise InputError(f"profile {profile} is for a {prof.base}-based framework, not {framework!r}",
                             field="profile")
        return {"framework": prof.base, "profile": str(profile)}
    prof = resolve(framework)
    return {"framework": prof.base, "profile": prof.id}


def label(job) -> str:
    """The framework a job is timed as, for headers: the profile id (or file), else the base."""
    prof = job.profile or job.framework
    return Path(prof).name if str(prof).endswith((".yaml", ".yml")) else str(prof)

# Where a composed fit of a built-in profile starts, and the bounds it keeps (the nanotron profile's
# meanings, neutral values: the roofline as is, no host, no hand-off stalls).
_TEMPLATE = {
    "compute_scale": (1.0, (0.7, 1.5), "", "GEMM and attention kernel time relative to the calibrated roofline"),
    "elementwise_scale": (1.0, (0.5, 6.0), "", "memory passes of the non-matmul kernels relative to Megatron's fused count (kernel fusion)"),
    "host_s_per_layer": (0.0, (0.0, 0.01), "s", "host dispatch time of one decoder layer's forward and backward per micro-batch"),
    "host_gpu_combine_p": (4.72, (2.0, 12.0), "", "exponent of the smooth max of host and GPU time per micro-batch"),
    "tp_overlap": (0.0, (0.0, 0.95), "", "share of tensor-parallel collective time hidden behind GEMMs"),
    "dp_overlap": (0.8, (0.0, 1.0), "", "share of the data-parallel gradient reduction hidden behind the last micro-batch's backward"),
    "pp_cross_node_s": (0.0, (0.0, 0.05), "s", "host time per decoder layer and micro-batch lost where pipeline neighbours sit on other nodes, for one tensor-parallel peer"),
    "pp_cross_node_tp_exponent": (1.0, (0.0, 1.5), "", "how that loss grows with the tensor-parallel peers (tp - 1) of a rank"),
}


def composed_start(profile: FrameworkProfile) -> FrameworkProfile:
    """``profile`` itself when composed; else a composed profile of the same framework and base
    semantics, at the template's neutral values, for fit-profile to start from."""
    if profile.step_model == "composed":
        return profile
    params = {}
    for k, (v, b, unit, meaning) in _TEMPLATE.items():
        v = profile.parameters[k].value if k in profile.parameters and b[0] <= profile.parameters[k].value <= b[1] else v
        params[k] = ProfileParameter(value=v, bounds=b, unit=unit, meaning=meaning,
                                     source=f"start value (profile {profile.id})")
    return FrameworkProfile(id=profile.id, name=profile.name, aliases=profile.aliases, base=profile.base,
                            step_model="composed", description=profile.description, parameters=params,
                            settings=profile.settings)
