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


def test_step_models_say_which_efficiency_they_used():
    # A device with a shipped overlay (hardware/calibrated/h100-sxm.yaml) uses it by default and says
    # so; one without (A100) uses the datasheet curves.
    est = train("llama-1.3b", "h100-sxm", micro_batch=4, seq_len=2048)
    assert est.efficiency_source.startswith("calibrated:") and "h100-sxm.yaml" in est.efficiency_source
    assert train("llama-1.3b", "a100-80gb-sxm", micro_batch=4, seq_len=2048).efficiency_source == "datasheet defaults"
    from costmodel.plan import infer

    assert infer("llama3-8b", "h200-sxm", batch=1, prompt_len=128, gen_len=16).efficiency_source.startswith("calibrated:")
