"""PyTorch DDP's gradient buckets: allocated when the model is wrapped (Reducer::initialize_buckets,
torch/csrc/distributed/c10d/reducer.cpp), one flat buffer per bucket in the parameters' dtype, so a
wrapped amp model holds 4 B/param of fp32 weights + 4 B/param of fp32 buckets, and they persist
between steps (gradient_as_bucket_view=False, the default)."""
import json
from pathlib import Path

import numpy as np
import pytest

from costmodel.arch import load_model
from costmodel.memory import (CUBLAS_WORKSPACES_BYTES, ParallelGrid, ddp_bucket_bytes, stage_params, train_memory,
                              train_memory_terms)
from costmodel.validate import read_records, validate_records
from costmodel.workload import Parallel, TrainJob

# data/measurements/h200-sxm-x2/2026-11-23-train-steps/train-steps-h200x2.jsonl, "llama-1.3b/amp-bf16/dp2-ddp/b1/s2048/none" (rank 0 of
# 2x H200, PyTorch 2.11, the run's first case: nothing left over from an earlier case). The harness
# (costmodel/bench/train_step.py) read weights_bytes before the DDP wrapper when it ran; that figure
# is now the record's weights_bytes_before_wrap (= after_build_bytes in train-steps-h200x2.diag.jsonl),
# and weights_bytes is the same line's after_wrap_bytes, memory_allocated() right after
# DistributedDataParallel(model) (data/measurements/h100-sxm/2026-11-23-train-steps/README.md, 2026-12-07).
DDP_RECORD = {
    "kind": "train", "name": "llama-1.3b/amp-bf16/dp2-ddp/b1/s2048/none",
    "model": {"arch": "llama", "layers": 24, "hidden": 2048, "heads": 16, "kv_heads": 16, "ffn": 5504, "vocab": 32000,
              "tied_embeddings": False, "params": 1345423360, "mlp": "swiglu", "norm": "rmsnorm", "positions": "rope"},
    "hardware": "h200-sxm", "devices": 2, "parallel": {"dp": 2, "tp": 1, "pp": 1, "sharding": "none"},
    "micro_batch": 1, "seq_len": 2048, "precision": "amp-bf16", "optimizer": "adamw", "recompute": "none",
    "attention": "flash", "framework": "pytorch-2.11 transformers-5.17 sdpa, fused AdamW, DDP",
    "measured": {"weights_bytes": 10838885376, "weights_bytes_before_wrap": 5457191936,
                 "steady_bytes": 21867551744, "peak_bytes": 30937112576, "step_seconds": 0.09343279800000204},
    "source": "costmodel/bench/train_step.py, 2x H200 (NV18), 2026-11-23",
}
AFTER_BUILD_BYTES = 5457191936
AFTER_WRAP_BYTES = 10838885376
MEASUREMENTS = Path(__file__).resolve().parent.parent / "data" / "measurements"
AMP = TrainJob(micro_batch=1, seq_len=2048, precision="amp-bf16", framework="pytorch")


def test_wrap_holds_fp32_weights_plus_fp32_buckets():
    m = load_model("llama-1.3b")
    P = stage_params(m, Parallel(dp=2)).total
    assert P == 1345423360  # the preset's parameter count is the measured model's
    mem = train_memory(m, AMP, Parallel(dp=2))
    assert mem.weights_bytes == 4.0 * P
    assert mem.grad_buffers_bytes == 4.0 * P
    assert mem.wrapped_bytes == (4.0 + 4.0) * P  # 10.76 GB: twice the fp32 parameters
    # the buckets stay allocated between steps: in the steady state beside weights and AdamW states
    assert mem.steady_bytes == pytest.approx((4.0 + 4.0 + 8.0) * P + CUBLAS_WORKSPACES_BYTES)
    # bf16 parameters get bf16 buckets
    bf16 = train_memory(m, TrainJob(micro_batch=1, seq_len=2048, precision="bf16", framework="pytorch"), Parallel(dp=2))
    assert bf16.wrapped_bytes == (2.0 + 2.0) * P


def test_no_buckets_without_ddp():
    m = load_model("llama-1.3b")
    P = stage_params(m, Parallel()).total
    one = train_memory(m, AMP, Parallel())
    assert one.grad_buffers_bytes == 0.0 and one.wrapped_bytes == one.weights_bytes == 4.0 * P
    fsdp = train_memory(m, AMP, Parallel(dp=2, zero_stage=3))  # sharded weights, no DDP reducer
    assert fsdp.wrapped_bytes == fsdp.weights_bytes == pytest.approx(4.0 * P / 2)
    meg = train_memory(m, TrainJob(micro_batch=1, seq_len=2048, precision="amp-bf16", framework="megatron"), Parallel(dp=2))
    assert meg.wrapped_bytes == meg.weights_bytes  # other frameworks unchanged
    assert ddp_bucket_bytes(P, 4.0, Parallel(dp=4, zero_stage=1)) == 0.0


def test_layout_search_arrays_agree_with_one_layout():
    m = load_model("llama-1.3b")
    grid = ParallelGrid(tp=np.array([1, 1, 1, 2]), pp=np.array([1, 1, 1, 1]), dp=np.array([1, 2, 2, 2]),
                        cp=np.array([1, 1, 1, 1]), ep=np.array([1, 1, 1, 1]),
                        sequence_parallel=np.array([False] * 4), zero_stage=np.array([0, 0, 3, 0]),
                        interleave=np.array([1, 1, 1, 1]))
    t = train_memory_terms(m, AMP, grid, micro_batch=np.array([1] * 4), n_micro=np.array([1] * 4),
                           recompute=np.array([0] * 4), offload_optimizer=np.array([False] * 4))
    for i, par in enumerate([Parallel(), Parallel(dp=2), Parallel(dp=2, zero_stage=3), Parallel(tp=2, dp=2)]):
        one = train_memory(m, AMP, par)
        assert t["wrapped"][i] == pytest.approx(one.wrapped_bytes)
        assert t["steady"][i] == pytest.approx(one.steady_bytes)


def test_ddp_record_weights_after_wrap():
    """The measured wrap added exactly the buckets' 4 B/param; the predicted weights_bytes (model as
    wrapped + cuBLAS workspaces) is within 1% of the record's weights_bytes (memory_allocated() after
    the wrap), and the part before the wrap within 2% of its weights_bytes_before_wrap, which
    validate does not report as a metric."""
    P = DDP_RECORD["model"]["params"]
    assert AFTER_WRAP_BYTES - AFTER_BUILD_BYTES == 4 * P
    assert DDP_RECORD["measured"]["weights_bytes"] == AFTER_WRAP_BYTES
    assert DDP_RECORD["measured"]["weights_bytes_before_wrap"] == AFTER_BUILD_BYTES
    # the inline copy is the committed line
    committed = {r["name"]: r for _, r in read_records(MEASUREMENTS / "h200-sxm-x2/2026-11-23-train-steps/train-steps-h200x2.jsonl")}
    assert committed[DDP_RECORD["name"]] == DDP_RECORD
    cases = {c.metric: c for c in validate_records([("inline", DDP_RECORD)]).cases}
    assert set(cases) == {"weights_bytes", "steady_bytes", "peak_bytes", "step_seconds"}  # not weights_bytes_before_wrap
    pred = cases["weights_bytes"].predicted
    assert pred == pytest.approx(8.0 * P + CUBLAS_WORKSPACES_BYTES)
    assert cases["weights_bytes"].measured == AFTER_WRAP_BYTES
    assert abs(cases["weights_bytes"].rel_error) < 0.01  # +0.5% (a first case: no cuBLAS workspaces yet)
    assert abs((pred - 4.0 * P) / AFTER_BUILD_BYTES - 1) < 0.02  # +1.1%
    # the buckets persist: steady and peak carry them and stay within 2% of the measurement
    assert abs(cases["steady_bytes"].rel_error) < 0.02
    assert abs(cases["peak_bytes"].rel_error) < 0.02


DDP_FILES = ("h200-sxm-x2/2026-11-23-train-steps/train-steps-h200x2.jsonl", "h200-sxm-x2/2026-11-23k-train-holdout/train-holdout-h200x2.jsonl", "h200-sxm-x2/2026-11-23j-train-profile/train-profile-h200x2.jsonl",
             "h200-sxm-x2/2026-11-23x-train-variants/train-variants-h200x2.jsonl", "h200-sxm-x2/2026-11-23aa-fsdp-accum/train-fsdp-accum-h200x2.jsonl")


def test_committed_ddp_records_weights_within_2pct_of_after_wrap():
    """Every DDP record of data/measurements/ keeps the harness's before-wrap figure as
    weights_bytes_before_wrap; the 12 whose case started clean (diag baseline_bytes <= 512 MiB, the
    harness's leftover threshold) carry weights_bytes = the diag line's after_wrap_bytes, and the
    prediction is within 2% of it. The 6 measured over a previous case's leftovers have none."""
    with_wrap = without = 0
    for f in DDP_FILES:
        diag = {d["name"]: d for d in map(json.loads, (MEASUREMENTS / f.replace(".jsonl", ".diag.jsonl"))
                                          .read_text().splitlines())}
        recs = [(w, r) for w, r in read_records(MEASUREMENTS / f)
                if r.get("kind") == "train" and r["devices"] > 1 and r["parallel"]["sharding"] == "none"]
        cases = {c.name: c for c in validate_records(recs).cases if c.metric == "weights_bytes"}
        for _, r in recs:
            m, d = r["measured"], diag[r["name"]]
            assert "weights_bytes_before_wrap" in m
            clean = d["baseline_bytes"] <= 512 * 2**20 and "warning" not in d
            if not clean:
                assert "weights_bytes" not in m and r["name"] not in cases, (f, r["name"])
                without += 1
                continue
            assert m["weights_bytes"] == d["after_wrap_bytes"] and m["weights_bytes_before_wrap"] == d["after_build_bytes"]
            c = cases[r["name"]]
            assert c.measured == d["after_wrap_bytes"]
            assert abs(c.rel_error) < 0.02, (f, r["name"], c.rel_error)
            with_wrap += 1
    assert (with_wrap, without) == (12, 6)
