"""What is being run: the parallel layout and the training / inference job.

Names follow Megatron-LM where it has them (tp, pp, dp, micro/global batch).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import InputError

Precision = Literal["fp32", "amp-bf16", "amp-fp16", "bf16", "fp8"]
Optimizer = Literal["adamw", "adamw-bf16", "adamw-8bit", "sgd", "adafactor", "lion"]
Recompute = Literal["none", "selective", "full"]
Framework = Literal["pytorch", "megatron", "deepspeed"]


class Parallel(BaseModel):
    """A parallel layout. devices = tp * pp * dp * cp (expert parallelism lives inside dp, or inside
    tp * dp * cp where etp folds tensor-parallel ranks into it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tp: int = Field(default=1, ge=1)
    pp: int = Field(default=1, ge=1)
    dp: int = Field(default=1, ge=1)
    cp: int = Field(default=1, ge=1)  # context parallel (ring attention)
    ep: int = Field(default=1, ge=1)  # expert parallel (see etp)
    sequence_parallel: bool = False
    zero_stage: int = Field(default=0, ge=0, le=3)  # 3 = FSDP full sharding
    interleave: int = Field(default=1, ge=1)  # virtual pipeline stages per device
    # Megatron-core --expert-tensor-parallel-size: the tensor-parallel ranks that split each expert;
    # None: tp (Megatron's default), so expert parallelism lives inside dp * cp. A smaller etp folds
    # tensor-parallel ranks into the expert-parallel group ("MoE parallel folding", Megatron-core
    # 0.10+: the expert layers' ranks are laid out etp, ep, expert-dp over a stage's tp * cp * dp):
    # ep * etp must divide tp * dp * cp. With etp 1 each rank dispatches its own sequence-parallel
    # share of the tokens and the MoE layer runs no tensor-parallel collectives.
    etp: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _ep(self):
        etp = self.tp if self.etp is None else self.etp
        if self.tp % etp:
            raise ValueError(f"etp: etp ({etp}) must divide tp ({self.tp})")
        if self.etp is None or self.etp == self.tp:
            if (self.dp * self.cp) % self.ep:
                fold = [e for e in range(self.tp - 1, 0, -1)  # the largest etp < tp that would fit
                        if self.tp % e == 0 and (self.tp * self.dp * self.cp) % (self.ep * e) == 0]
                hint = f"; with etp {fold[0]} (--expert-tensor-parallel-size) it may span tp*dp*cp" if fold else ""
                raise ValueError(f"ep: ep ({self.ep}) must divide dp*cp ({self.dp * self.cp}){hint}")
        elif (self.tp * self.dp * self.cp) % (self.ep * etp):
            raise ValueError(f"ep: ep x etp ({self.ep} x {etp}) must divide tp*dp*cp ({self.tp * self.dp * self.cp})")
        if self.sequence_parallel and self.tp == 1:
            object.__setattr__(self, "sequence_parallel", False)
        return self

    @property
    def expert_tp(self) -> int:
        """The tensor-parallel ranks that split each expert (etp; tp where not set)."""
        return self.tp if self.etp is None else self.etp

    @property
    def devices(self) -> int:
        return self.tp * self.pp * self.dp * self.cp


class TrainJob(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    micro_batch: int = Field(default=1, ge=1)
    seq_len: int = Field(default=2048, ge=1)
    global_batch: int | None = Field(default=None, ge=1)  # None: micro_batch * dp (no accumulation)
    precision: Precision = "amp-bf16"
    optimizer: Optimizer = "adamw"
    recompute: Recompute = "none"
    # Under recompute "full": the share of each layer's forward that backward re-runs. 1: every op
    # (Megatron's full recompute); less for a partial rematerialisation policy that saves some
    # outputs (PaLM's: HFU 57.8% against MFU 46.2%, Chowdhery et al. 2022 appendix B). Memory is
    # still counted as for full recompute (the layer inputs only), a lower bound.
    recompute_fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    attention: Literal["flash", "standard"] = "flash"
    framework: Framework = "pytorch"
    # The framework profile (costmodel.frameworks: data/frameworks/<id>.yaml, or a profile YAML's
    # path) whose mechanism parameters time the step; None: the built-in profile of ``framework``.
    profile: str | None = None
    offload_optimizer: Literal["none", "cpu", "nvme"] = "none"
    offload_params: Literal["none", "cpu", "nvme"] = "none"
    fused_optimizer: bool = True
    # Data-parallel gradient reduction overlapped with backward (PyTorch DDP buckets, Megatron-core
    # --overlap-grad-reduce). False: reduced after the last backward, fully exposed, as Megatron-LM's
    # local DDP did in 2021-2022 (training.py: allreduce_gradients() after forward_backward_func).
    overlap_grad_reduce: bool = True
    # Megatron-LM --tp-comm-overlap (Transformer Engine userbuffers): each sequence-parallel
    # all-gather / reduce-scatter is split into tp chunks pipelined with the GEMM it feeds or
    # follows (steptime.tp_overlap_exposed_s). Needs sequence parallelism, as in Megatron-LM.
    tp_comm_overlap: bool = False
    # Megatron-LM --grad-reduce-in-bf16 (Megatron-core DDP grad_reduce_in_fp32 False; Megatron-Bridge's
    # and NeMo's performance recipes set it): the main_grad buffers accumulate and the data-parallel
    # reduction runs in bf16, 2 bytes a parameter, where Megatron otherwise keeps and reduces fp32
    # gradients for bf16 / fp8 training (memory.state_bytes_per_param, training.dp_grad_bytes_per_param)
    grad_reduce_in_bf16: bool = False
    # Megatron-core --moe-enable-deepep (the flex token dispatcher with the DeepEP backend): MoE
    # tokens cross the network once per node that holds one of their experts and are forwarded
    # over NVLink there (steptime.deepep_wire_share), instead of once per expert
    moe_enable_deepep: bool = False
    # Eager PyTorch's host (Python + dispatcher) time relative to the hosts the step model's host
    # constants were fitted on (training.HOST_*: H100 machines). Host speed differs by machine: the
    # same host-bound steps ran up to 1.3x apart on our device hosts (data/measurements/README.md).
    host_time_factor: float = Field(default=1.0, gt=0)

    def global_batch_for(self, par: Parallel) -> int:
        return self.global_batch or self.micro_batch * par.dp

    def check_batch(self, par: Parallel) -> None:
        """InputError unless the global batch splits into whole micro-batches on every replica."""
        gb = self.global_batch_for(par)
        if gb % (self.micro_batch * par.dp):
            raise InputError(f"global batch {gb} is not a multiple of micro_batch x dp = {self.micro_batch * par.dp}",
                             field="global_batch")

    def switches(self) -> list[str]:
        """The Megatron-style switches this job sets, as the train and search headers name them."""
        return [name for on, name in ((self.tp_comm_overlap, "tp-comm-overlap"),
                                      (self.grad_reduce_in_bf16, "grad-reduce bf16"),
                                      (self.moe_enable_deepep, "DeepEP")) if on]

    def grad_accum_steps(self, par: Parallel) -> int:
        gb = self.global_batch_for(par)
        return max(1, gb // (self.micro_batch * par.dp))


class InferJob(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    batch: int = Field(default=1, ge=1)
    prompt_len: int = Field(default=1024, ge=1)
    gen_len: int = Field(default=128, ge=0)
    weight_dtype: Literal["fp32", "bf16", "fp16", "fp8", "int8", "int4"] = "bf16"
    kv_dtype: Literal["fp32", "bf16", "fp16", "fp8", "int8", "int4"] = "bf16"
    compute_dtype: Literal["bf16", "fp16", "fp8", "fp32"] = "bf16"
    cuda_graph: bool = True
    paged_block_tokens: int | None = Field(default=None, ge=1)  # paged KV cache block size
    # Eager (cuda_graph False) host time relative to the host inference.EAGER_HOST_* were fitted on
    # (an H100 machine); the one-H200 machine we measured ran eager decode ~1.8x faster (0.55).
    host_time_factor: float = Field(default=1.0, gt=0)


DTYPE_BYTES = {"fp32": 4.0, "tf32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5, "fp4": 0.5}
