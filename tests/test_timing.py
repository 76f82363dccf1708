"""Step-time and decode-time models against the public H100 measurements and published runs."""
import pytest

from costmodel.plan import train
from costmodel.validate import validate_file


def test_public_step_times(truth_file):
    rep = validate_file(truth_file)
    assert rep.summary["train.step_seconds"].mape < 0.10
    assert rep.summary["decode_step.step_seconds"].mape < 0.10


def test_gpt3_175b_breakdown_sums_to_total():
    est = train("gpt3-175b", "dgx-a100", nodes=128, tp=8, pp=8, global_batch=1536)
    assert sum(est.step.parts().values()) == pytest.approx(est.step.total_s, rel=1e-9)
    # Narayanan et al. 2021 table 1: GPT-3 175B on 1024 A100s at 140 TFLOP/s per GPU (44.7% of 312).
    # Uncalibrated A100 defaults must land within 15% of it.
    assert est.tflops_per_device == pytest.approx(140, rel=0.15)
    assert est.fits


def test_decode_is_bandwidth_bound_at_batch_1():
    from costmodel.plan import infer

    est = infer("llama2-7b", "h100-sxm", batch=1, prompt_len=512, gen_len=128)
    # 13.5 GB of bf16 weights at <= 3.35 TB/s: no faster than 4.0 ms per token
    assert est.tpot_s > 13.48e9 / 3.35e12
    assert est.tpot_s < 3 * 13.48e9 / 3.35e12
