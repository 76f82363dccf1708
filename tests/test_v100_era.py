"""V100-era training (2019-2021): the 2019 Megatron-LM code's kernel time, checked on Megatron-LM's
and ZeRO-Offload's published throughputs on V100s (data/published/megatron-lm-2019.jsonl,
zero-offload-2021.jsonl)."""
import json
from pathlib import Path

import pytest

from costmodel import frameworks
from costmodel.specs import load_library
from costmodel.training import estimate_train, kernel_time_factor
from costmodel.validate import model_from_record, train_inputs, validate_file

ROOT = Path(__file__).resolve().parents[1]
MEGATRON_2019 = ROOT / "data" / "published" / "megatron-lm-2019.jsonl"
ZERO_OFFLOAD = ROOT / "data" / "published" / "zero-offload-2021.jsonl"


def _records(path):
    return {r["name"]: r for r in (json.loads(line) for line in path.read_text().splitlines() if line.strip())}


def test_kernel_time_factor_is_the_published_ratio_of_the_same_run():
    """1.2B GPT-2, batch 8, one DGX-2H V100: 39 TFLOP/s under the 2019 code (Shoeybi et al. 2019),
    62.4 under v1.0 (the ADLR post): the 2019 code's kernels took 62.4 / 39 = 1.600 times as long."""
    recs = _records(MEGATRON_2019)
    old = recs["megatron-lm-2019/gpt2-1.2b/1xv100"]
    new = recs["megatron-lm-v1.0/gpt2-1.2b/1xv100"]
    assert old["model"] == new["model"] and old["micro_batch"] == new["micro_batch"] == 8
    assert old["hardware"] == new["hardware"]
    ratio = new["measured"]["tflops_per_device"] / old["measured"]["tflops_per_device"]
    assert ratio == pytest.approx(1.6, abs=0.005)
    for pid in ("megatron-2019", "deepspeed-megatron-2019"):
        assert kernel_time_factor(frameworks.resolve(pid)) == pytest.approx(ratio, abs=0.005)
    # every other shipped profile runs the fused step model unchanged
    for prof in frameworks.builtin_profiles().values():
        if prof.id not in ("megatron-2019", "deepspeed-megatron-2019"):
            assert kernel_time_factor(prof) == 1.0


def test_the_factor_scales_kernels_not_offload_or_communication():
    """ZeRO-Offload's 10B on one V100: the GPU kernel terms grow by 1.6, the offload term (PCIe and
    CPU Adam on the host) is the deepspeed profile's to the digit."""
    lib = load_library()
    rec = _records(ZERO_OFFLOAD)["zero-offload-2021/10b/1xv100"]
    out = {}
    for pid in ("deepspeed", "deepspeed-megatron-2019"):
        model, spec, node, par, job = train_inputs(rec, lib, "test", "deepspeed", None if pid == "deepspeed" else pid)
        out[pid] = estimate_train(model, spec, job, par, node=node).step
    a, b = out["deepspeed"], out["deepspeed-megatron-2019"]
    for term in ("compute_s", "attention_s", "elementwise_s"):
        assert getattr(b, term) == pytest.approx(1.6 * getattr(a, term), rel=1e-9), term
    assert b.offload_s == pytest.approx(a.offload_s, rel=1e-12) and a.offload_s > 1.0


def test_megatron_2019_records_within_10_percent():
    """The two fit records (the 1.2B pair) and the held-out 8.3B on 512 V100s (15.1 PFLOP/s)."""
    cases = {c.name: c for c in validate_file(MEGATRON_2019).cases}
    assert set(cases) == set(_records(MEGATRON_2019))
    for name, c in cases.items():
        assert abs(c.rel_error) < 0.10, (name, c.predicted, c.measured)


def test_zero_offload_10b_within_20_percent():
    """Ren et al. 2021: 40 TFLOP/s for the 10B GPT-2 on one V100 with ZeRO-Offload (the issue's
    target: within 20%). Without the 2019 kernels' factor it was predicted at ~59 (+48%)."""
    cases = {(c.name, c.metric): c for c in validate_file(ZERO_OFFLOAD).cases}
    c = cases[("zero-offload-2021/10b/1xv100", "tflops_per_device")]
    assert c.measured == 40
    assert abs(c.rel_error) < 0.20, c.predicted


def test_dgx_2h_gpu_differs_from_the_dgx_2_one_in_peak_and_power_only():
    lib = load_library()
    h, base = lib.device("v100-sxm3-32gb-h"), lib.device("v100-sxm3-32gb")
    assert h.peak("fp16") == pytest.approx(2.1e15 / 16, rel=0.01)  # DGX-2H: 2.1 PFLOP/s over 16 GPUs
    # the papers' own peak: 39 TFLOP/s is 30% and 62.4 is 48% of it
    assert 39e12 / h.peak("fp16") == pytest.approx(0.30, abs=0.005)
    assert 62.4e12 / h.peak("fp16") == pytest.approx(0.48, abs=0.005)
    assert h.memory == base.memory and h.compute_units == base.compute_units and h.tdp_w > base.tdp_w
    node = lib.node_for("dgx-2h")
    assert node.device == h.id and node.devices_per_node == 16
    m = model_from_record(_records(MEGATRON_2019)["megatron-lm-2019/gpt2-1.2b/1xv100"]["model"], "test", 1024)
    assert m.params / 1e9 == pytest.approx(1.2, abs=0.05)


ZERO_INFINITY = ROOT / "data" / "published" / "zero-infinity-2021.jsonl"


def _infinity_estimate(layers):
    lib = load_library()
    rec = dict(_records(ZERO_INFINITY)["zero-infinity-2021/1t-largest/1xdgx-2"])
    rec["model"] = dict(rec["model"], layers=layers)
    model, spec, node, par, job = train_inputs(rec, lib, "test", "deepspeed", "deepspeed-megatron-2019")
    return model, estimate_train(model, spec, job, par, node=node)


@pytest.mark.parametrize("layers,fits", [(128, True), (256, False)])
def test_zero_infinity_1t_fits_one_dgx_2_and_2t_does_not(layers, fits):
    """ZeRO-Infinity fine-tunes a 1T model on one DGX-2 (parameters and optimizer states on NVMe);
    the next size, 2T, needs 16 bytes x 2.01e12 = 32.2 TB of NVMe against the node's 8 x 3.84 TB."""
    model, est = _infinity_estimate(layers)
    assert model.params / 1e12 == pytest.approx(1.0 if fits else 2.0, abs=0.03)
    nvme = est.host["nvme_bytes"]
    assert nvme == pytest.approx(16.0 * model.params, rel=0.01)  # 2 (fp16 params) + 2 (grads) + 12 (Adam)
    assert est.host["nvme_capacity_bytes"] == pytest.approx(8 * 3.84e12)
    assert est.fits is fits
    assert est.host["nvme_fits"] is fits


def test_zero3_gpu_working_set_is_the_largest_module_not_two_layers():
    """A 1T layer holds 12 x 25600^2 = 7.9e9 parameters; DeepSpeed keeps at most
    stage3_max_live_parameters (1e9) gathered, or the largest sub-module (the 25600 x 102400 MLP
    projection, 2.62e9) + a 5e7 prefetch bucket: 5.34 GB of fp16 weights, not two layers' 31.5 GB."""
    model, est = _infinity_estimate(128)
    assert est.memory.weights_bytes == pytest.approx(2.0 * (25600 * 102400 + 5e7), rel=1e-9)
