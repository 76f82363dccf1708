"""Calibration: fits recover known parameters, held-back shapes are predicted, overlays are written
atomically and never over shipped specs, bad overlays name the bad field."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from costmodel import calibration as C
from costmodel.bench.records import busbw_factor, read_jsonl
from costmodel.errors import InputError
from costmodel.specs import load_library, package_data_dir

ROOT = Path(__file__).resolve().parents[1]
TRUTH = ROOT.parent / "shared" / "truth" / "h100-h200-public.jsonl"
if not TRUTH.exists():  # a plain clone: the copy shipped in data/samples/
    TRUTH = ROOT / "data" / "samples" / "h100-h200-public.jsonl"
MEAS = ROOT / "data" / "measurements"


@pytest.fixture(scope="module")
def lib():
    return load_library()


def _truth(hw: str, families=("gemm", "bandwidth")):
    if not TRUTH.exists():
        pytest.skip("shared truth file not present")
    return [r for r in read_jsonl(TRUTH) if r.get("hardware") == hw and r["op"] != "cpu_gemm" and C.family(r["op"]) in families]


# ------------------------------------------------------------------ synthetic recovery

def test_gemm_fit_recovers_known_parameters():
    # Records made from known rates: 600 TFLOP/s (bf16), 300 TFLOP/s (tf32), 2.5 TB/s for the
    # memory-bound (small m) regime, a 20 us isolated-call gap and 12 us back-to-back floor.
    P = {"bf16": 600e12, "tf32": 300e12}
    bw, k0, gap, floor = 2.5e12, 4e-6, 20e-6, 12e-6
    true = C.GemmCurve({d: C.GemmDtype(p, C.Timing(k0, gap, floor, 4.0)) for d, p in P.items()}, bw, p=3.0)
    recs = []
    for d in P:
        for n in (256, 512, 1024, 2048, 4096, 8192, 16384):
            t = true.kernel_s(n, n, n, d)
            recs.append({"op": "gemm", "dtype": d, "m": n, "n": n, "k": n, "s": float(gap + C.smoothmax(floor, t, 4.0)),
                         "s_stream": float(C.smoothmax(floor, t, 4.0))})
        for m in (1, 16, 64, 256, 1024, 4096):
            t = true.kernel_s(m, 16384, 8192, d)
            recs.append({"op": "gemm_llm", "dtype": d, "m": m, "n": 16384, "k": 8192, "s": float(gap + C.smoothmax(floor, t, 4.0)),
                         "s_stream": float(C.smoothmax(floor, t, 4.0))})
    fit = C.fit_gemm(recs)
    assert fit["dtypes"]["bf16"]["flops_per_s"] == pytest.approx(600e12, rel=0.03)
    assert fit["dtypes"]["tf32"]["flops_per_s"] == pytest.approx(300e12, rel=0.03)
    assert fit["memory_bytes_per_s"] == pytest.approx(2.5e12, rel=0.05)
    assert fit["dtypes"]["bf16"]["call_gap_s"] == pytest.approx(20e-6, rel=0.1)
    assert fit["dtypes"]["bf16"]["stream_floor_s"] == pytest.approx(12e-6, rel=0.1)


def test_pack_term_by_hand_and_recovered_on_a_cpu():
    # Goto & van de Geijn packing: (m k + k n) fp32 elements read and written; GEMV (m = 1) packs none.
    # 48 x 2048 x 1024 at 20 GB/s: 2 x 4 x (48 x 1024 + 1024 x 2048) / 20e9 = 858.5 us.
    assert C.pack_s(48, 2048, 1024, 4.0, 1, 20e9) == pytest.approx(858.5216e-6)
    assert C.pack_s(1, 2048, 1024, 4.0, 1, 20e9) == 0.0
    assert C.pack_s(48, 2048, 1024, 4.0, 1, None) == 0.0
    # CPU records (no `sms`) made from a known curve with a 30 GB/s packing phase: the fit keeps the
    # phase, recovers its rate and predicts the small-m shapes it left out.
    true = C.GemmCurve({"fp32": C.GemmDtype(190e9, C.Timing(3e-6, 10e-6, 20e-6, 4.0))}, 40e9, p=3.0,
                       pack_bytes_per_s=30e9)
    recs, held = [], []
    for n in (128, 192, 256, 320, 384, 448, 512, 640, 768, 1024):
        recs.append({"op": "gemm", "dtype": "fp32", "m": n, "n": n, "k": n, "s": float(10e-6 + true.kernel_s(n, n, n, "fp32"))})
    for m in (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512):
        r = {"op": "gemm_llm", "dtype": "fp32", "m": m, "n": 2048, "k": 1024,
             "s": float(10e-6 + true.kernel_s(m, 2048, 1024, "fp32"))}
        (held if m in (2, 4, 8, 48) else recs).append(r)
    fit = C.fit_gemm(recs)
    assert fit["pack_bytes_per_s"] == pytest.approx(30e9, rel=0.2)  # trades a little with the prior
    eff = C.efficiency_from_overlay({"format": C.FORMAT, "device": "cpu", "gemm": fit})
    for r in held:  # m = 48 interpolated; m = 2..8 extrapolated below the smallest packed m fitted (16)
        rel = 0.03 if r["m"] == 48 else 0.10
        assert eff.gemm_call_time_s(r["m"], r["n"], r["k"], "fp32") == pytest.approx(r["s"], rel=rel), r["m"]
    # GPU records (with `sms`) never get the phase
    gpu = [dict(r, sms=132) for r in recs]
    assert "pack_bytes_per_s" not in C.fit_gemm(gpu)


def test_bandwidth_fit_recovers_known_parameters():
    # t = 3 us + bytes / 2.8 TB/s, copy records carry the buffer size (traffic is twice that)
    recs = [{"op": "mem_copy", "bytes": b, "s": 3e-6 + 2 * b / 2.8e12} for b in (2**20, 2**24, 2**27, 2**30, 2**32)]
    f = C.fit_bandwidth(recs, "mem_copy")
    assert f["bytes_per_s"] == pytest.approx(2.8e12, rel=0.01)
    assert f["kernel_min_s"] + f["call_gap_s"] == pytest.approx(3e-6, rel=0.1)


def test_collective_fit_recovers_alpha_and_busbw():
    # all-reduce on 4 GPUs: t = 25 us + bytes * 2(n-1)/n / 200 GB/s
    f = busbw_factor("all_reduce", 4)
    recs = [{"op": "all_reduce", "world": 4, "bytes": b, "s": 25e-6 + b * f / 200e9} for b in (2**10, 2**16, 2**20, 2**24, 2**28, 2**30)]
    fit = C.fit_collectives(recs)["all_reduce"][4]
    assert fit["alpha_s"] == pytest.approx(25e-6, rel=0.02)
    assert fit["busbw_bytes_per_s"] == pytest.approx(200e9, rel=0.01)


# ------------------------------------------------------------------ held-back prediction

def test_holdout_on_truth_h100_gemm(lib):
    recs = _truth("h100-sxm")
    train, held = C.split_holdout(recs, 0.25, seed=0)
    assert held and not ({id(r) for r in held} & {id(r) for r in train})
    _, iso, _ = C.holdout_check(recs, spec=lib.device("h100-sxm"), seed=0)
    s = iso.summary()["gemm"]
    # measured: median 6.8%, max 18.7% (seed 0); run-to-run spread of the same shapes is ~5% median
    assert s["median_abs_error"] < 0.10
    assert s["max_abs_error"] < 0.30


def test_shipped_h100_overlay_predicts_truth_records(lib):
    eff = C.shipped_efficiency(lib.device("h100-sxm"))
    assert eff.source.startswith("calibrated:")
    res = C.compare(eff, _truth("h100-sxm")).summary()
    assert res["bandwidth"]["max_abs_error"] < 0.10  # copies and reads 256 MiB..4 GiB
    assert res["gemm"]["median_abs_error"] < 0.10


def test_shipped_h200_collectives_fit_measured_all_reduce(lib):
    eff = C.shipped_efficiency(lib.device("h200-sxm"))
    recs = [r for r in read_jsonl(MEAS / "h200-sxm-x2/2026-11-23-nccl/h200-sxm-2026-11-23-x2-nccl-kernels.jsonl")
            if r["op"] == "all_reduce" and 2**20 <= r["bytes"] <= 2**30]
    assert len(recs) == 6
    for r in recs:
        assert eff.collective_time_s("all_reduce", r["bytes"], 2) == pytest.approx(r["s"], rel=0.15)


def test_defaults_cite_the_truth_gemm_efficiency(lib):
    eff = C.default_efficiency(lib.device("h100-sxm"))
    assert eff.source == "datasheet defaults"
    # the truth file's H100 bf16 8192^3 GEMM: 773 TFLOP/s; defaults must land within 10%
    assert eff.gemm_flops_per_s(8192, 8192, 8192, "bf16") == pytest.approx(773e12, rel=0.10)
    # decode-shaped GEMM (m=1) is memory-bound: the truth file's 2.6 TB/s of weights
    t = eff.gemm_time_s(1, 28672, 8192, "bf16")
    assert 28672 * 8192 * 2 / t == pytest.approx(2.6e12, rel=0.15)
    assert eff.collective_time_s("all_reduce", 2**20, 2) is None


def test_defaults_cite_the_truth_copy_and_read_bandwidth(lib):
    """The datasheet defaults' device copy and read at 4 GiB: the public H100 file measured 3005 and
    3011 GB/s of the 3.35 TB/s datasheet (copy traffic counts the read and the write)."""
    import json

    eff = C.default_efficiency(lib.device("h100-sxm"))
    n = 0
    for line in (ROOT / "data" / "samples" / "h100-h200-public.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("op") in ("mem_copy", "mem_read") and r.get("hardware") == "h100-sxm" and r["bytes"] == 4 * 2**30:
            traffic = r["bytes"] * (2 if r["op"] == "mem_copy" else 1)
            assert traffic / r["s"] == pytest.approx(3.0e12, rel=0.01)  # the measurement cited
            assert eff.predict_record_s(r) == pytest.approx(r["s"], rel=0.05), r["op"]
            n += 1
    assert n == 2


def test_vectorised_gemm_matches_scalar(lib):
    eff = C.shipped_efficiency(lib.device("h100-sxm"))
    m = np.array([1, 64, 512, 4096])
    v = eff.gemm_time_s(m, 4096, 4096, "bf16")
    assert v.shape == (4,)
    for i, mm in enumerate(m):
        assert v[i] == pytest.approx(eff.gemm_time_s(int(mm), 4096, 4096, "bf16"))
    # more tokens never take less time
    assert np.all(np.diff(v) >= 0)


def test_efficiency_is_immutable(lib):
    eff = C.default_efficiency(lib.device("h100-sxm"))
    with pytest.raises(AttributeError):
        eff.launch_overhead_s = 0.0


# ------------------------------------------------------------------ writing

def _overlay():
    recs = [{"op": "mem_copy", "bytes": b, "s": 3e-6 + 2 * b / 2.8e12, "hardware": "h100-sxm"} for b in (2**20, 2**24, 2**28)]
    recs += [{"op": "gemm", "dtype": "bf16", "m": n, "n": n, "k": n, "s": 2e-5 + 2 * n**3 / 7e14, "hardware": "h100-sxm"}
             for n in (512, 1024, 2048, 4096, 8192)]
    return C.fit_overlay(recs)


def test_write_and_load_roundtrip(tmp_path, lib):
    p = C.write_overlay(_overlay(), tmp_path / "o.yaml")
    eff = C.load_overlay(p, lib.device("h100-sxm"))
    assert eff.source.startswith(f"calibrated: {p}")
    assert eff.mem_bytes_per_s(2**32) == pytest.approx(2.8e12, rel=0.02)
    # families the overlay lacks come from the spec's defaults
    assert eff.attention_flops_per_s(1, 32, 8192, 128, True, False) > 0
    assert list(tmp_path.iterdir()) == [p]  # no temp file left behind


def test_write_is_atomic(tmp_path, monkeypatch):
    p = tmp_path / "o.yaml"
    old = C.dump_overlay(_overlay()) + "# the old one\n"  # an overlay of the same device may be replaced
    p.write_text(old)

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        C.write_overlay(_overlay(), p)
    assert p.read_text() == old
    assert list(tmp_path.iterdir()) == [p]


def test_shipped_specs_never_overwritten(tmp_path):
    hw = package_data_dir("hardware")
    before = (hw / "h100-sxm.yaml").read_bytes()
    for target in (hw / "h100-sxm.yaml", hw / "new.yaml", hw / "nodes" / "x.yaml", hw / "calibrated"):
        with pytest.raises(InputError) as e:
            C.write_overlay(_overlay(), target)
        assert e.value.field == "out"
    assert (hw / "h100-sxm.yaml").read_bytes() == before
    C.check_writable(hw / "calibrated" / "some-device.yaml")  # the one place overlays may go


def test_cli_calibrate_refuses_spec_path(capsys):
    from costmodel.cli.app import main

    spec = package_data_dir("hardware") / "h100-sxm.yaml"
    before = spec.read_bytes()
    with pytest.raises(SystemExit) as e:
        main(["calibrate", "--records", str(MEAS / "h100-sxm/2026-11-23b-kernels/h100-sxm-2026-11-23b-kernels.jsonl"), "--out", str(spec)])
    assert e.value.code == 2
    assert "hardware/" in capsys.readouterr().err
    assert spec.read_bytes() == before


def test_cli_calibrate_from_records_with_check(tmp_path, capsys):
    from costmodel.cli.app import main

    out = tmp_path / "h100.yaml"
    with pytest.raises(SystemExit) as e:
        main(["calibrate", "--records", str(MEAS / "h100-sxm/2026-11-23b-kernels/h100-sxm-2026-11-23b-kernels.jsonl"), "--out", str(out), "--check", "--json"])
    assert e.value.code == 0
    res = json.loads(capsys.readouterr().out)
    assert res["check"]["call"]["bandwidth"]["max_abs_error"] < 0.10
    assert res["check"]["call"]["gemm"]["median_abs_error"] < 0.10
    data = yaml.safe_load(out.read_text())
    assert data["device"] == "h100-sxm" and data["format"] == C.FORMAT


# ------------------------------------------------------------------ bad overlays

@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["gemm"]["dtypes"]["bf16"].__setitem__("flops_per_s", -1), "gemm.dtypes.bf16.flops_per_s"),
    (lambda d: d["gemm"]["dtypes"]["bf16"].__setitem__("flops_per_s", "fast"), "gemm.dtypes.bf16.flops_per_s"),
    (lambda d: d["gemm"].pop("memory_bytes_per_s"), "gemm.memory_bytes_per_s"),
    (lambda d: d["memory"]["copy"].__setitem__("bytes_per_s", None), "memory.copy.bytes_per_s"),
    (lambda d: d.__setitem__("format", "v0"), "format"),
    (lambda d: d["gemm"]["dtypes"].__setitem__("bf17", {"flops_per_s": 1.0}), "gemm.dtypes.bf17"),
    (lambda d: d.__setitem__("collectives", {"all_reduce": {"two": {"alpha_s": 1e-5, "busbw_bytes_per_s": 1e11}}}), "collectives.all_reduce.two"),
    (lambda d: d.__setitem__("memory", [1, 2]), "memory"),
    (lambda d: d.__setitem__("eager_infer_host_factor", -0.5), "eager_infer_host_factor"),
    (lambda d: d["gemm"].__setitem__("residual", {"length_octaves": 0.15, "prior": 0.1, "dtypes": {"bf16": [[4096, 4096, 0.1, 1.0]]}}),
     "gemm.residual.dtypes.bf16"),
    (lambda d: d["gemm"].__setitem__("residual", {"length_octaves": 0, "prior": 0.1, "dtypes": {"bf16": [[1, 2, 3, 0.1, 1.0]]}}),
     "gemm.residual.length_octaves"),
    (lambda d: d["gemm"].__setitem__("residual", [1, 2]), "gemm.residual"),
])
def test_bad_overlay_names_field(tmp_path, mutate, field):
    d = json.loads(json.dumps(_overlay()))
    mutate(d)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(InputError) as e:
        C.load_overlay(p)
    assert e.value.field == field
    assert str(p) in str(e.value)


def test_overlay_for_another_device_is_refused(tmp_path, lib):
    p = C.write_overlay(_overlay(), tmp_path / "o.yaml")
    with pytest.raises(InputError) as e:
        C.load_overlay(p, lib.device("h200-sxm"))
    assert e.value.field == "device"


def test_not_yaml_is_input_error(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("gemm: [unclosed\n")
    with pytest.raises(InputError):
        C.load_overlay(p)


# ------------------------------------------------------------------ burst / sustained, held-back on the shipped run

H100_RUN = MEAS / "h100-sxm/2026-11-23e-kernels/h100-sxm-2026-11-23e-kernels.jsonl"


def test_h100_run_heldback_shapes(lib):
    # The shipped H100 overlay's run (5 shuffled rounds per shape): fit on 75% of the shapes,
    # predict the rest. Bandwidth within 10% (issue #5); GEMM median within 6%. The GEMM maximum
    # is left out of the assertion: held-back isolated calls under ~50 us are host-bound, and their
    # own five rounds spread by up to 60% on that VM (s_spread in the records).
    recs = read_jsonl(H100_RUN)
    _, iso, _ = C.holdout_check(recs, spec=lib.device("h100-sxm"), seed=0, device="h100-sxm")
    s = iso.summary()
    assert s["bandwidth"]["max_abs_error"] < 0.10
    assert s["gemm"]["median_abs_error"] < 0.06


def test_overlay_burst_and_sustained_rates_match_power_trace(lib):
    # Independent measurement (not fitted): bf16 8192^3 queued back to back from idle
    # (h100-sxm-2026-11-23c-power-trace.json). Calls 5-30 ms into the load run at the boost clock,
    # calls after 150 ms at the power-limited one. The overlay's isolated-call ("burst") rate and its
    # back-to-back ("sustained") rate must land within 6% of those.
    trace = next(t for t in json.loads((MEAS / "h100-sxm/2026-11-23c-kernels-power/h100-sxm-2026-11-23c-power-trace.json").read_text())
                 if t["dtype"] == "bf16" and t["n"] == 8192)
    t_end = np.cumsum(trace["call_s"])
    tf = np.array(trace["tflops"]) * 1e12
    burst = float(np.median(tf[(t_end > 0.005) & (t_end < 0.030)]))
    sustained = float(np.median(tf[t_end > 0.150]))
    assert sustained < 0.95 * burst  # the clock does drop under sustained load
    eff = C.shipped_efficiency(lib.device("h100-sxm"))
    f = 2 * 8192.0**3
    t_kernel_burst = float(eff.gemm.kernel_s(8192, 8192, 8192, "bf16", mode="burst"))
    assert f / t_kernel_burst == pytest.approx(burst, rel=0.06)
    assert eff.gemm_flops_per_s(8192, 8192, 8192, "bf16") == pytest.approx(sustained, rel=0.06)


def test_call_gap_offset_recovers_a_slower_host():
    # Records of a "reference host" that adds 12 us to every isolated call: the offset fit finds it.
    recs = [{"op": "mem_copy", "bytes": b, "s": 5e-6 + 2 * b / 2.8e12, "hardware": "x"} for b in (2**20, 2**22, 2**24, 2**28, 2**30)]
    recs += [{"op": "gemm", "dtype": "bf16", "m": n, "n": n, "k": n, "s": 15e-6 + 2 * n**3 / 7e14, "hardware": "x"}
             for n in (256, 512, 1024, 2048, 4096, 8192)]
    ov = C.fit_overlay(recs)
    ref = [dict(r, s=r["s"] + 12e-6) for r in recs]
    assert C.fit_call_gap_offset(ov, ref) == pytest.approx(12e-6, abs=1.5e-6)
    assert C.fit_call_gap_offset(ov, recs) == pytest.approx(0.0, abs=1.5e-6)


# ------------------------------------------------------------------ session 4: split-k, host floor, robust weights, host CPU

def test_wave_utilisation_splits_long_k_only():
    # tf32 128 x 14336 x 4096 in 128 x 256 tiles: 1 x 56 = 56 tiles on 132 SMs. k = 4096 allows
    # min(floor(132 / 56), floor(4096 / 1024)) = 2 slices -> 112 busy of 132 = 0.8485; with
    # k = 1024 no split -> 56 / 132 = 0.4242. A full-wave shape is unchanged: 8192^2 in 128^2
    # tiles = 4096 tiles -> ceil(4096 / 132) = 32 waves of 132 = 4224 -> 0.9697.
    assert C.wave_utilisation(128, 14336, (128, 256), 132, 4096) == pytest.approx(112 / 132)
    assert C.wave_utilisation(128, 14336, (128, 256), 132, 1024) == pytest.approx(56 / 132)
    assert C.wave_utilisation(8192, 8192, (128, 128), 132, 8192) == pytest.approx(4096 / 4224)
    assert C.wave_utilisation(8192, 8192, (128, 128), 132) == pytest.approx(4096 / 4224)


def test_isolated_call_floor_apart_from_stream_floor():
    # max(host round trip, start latency + kernel): 20 us round trip, 8 us start latency.
    t = C.Timing(kernel_min_s=1e-6, gap_s=8e-6, floor_s=11e-6, q=64.0, call_floor_s=20e-6)
    assert t.call(2e-6) == pytest.approx(20e-6, rel=0.02)  # a tiny kernel: the host round trip
    assert t.call(40e-6) == pytest.approx(48e-6, rel=0.02)  # a long one: latency + kernel
    assert t.stream(2e-6) == pytest.approx(11e-6, rel=0.02)  # back to back: the launch period
    legacy = C.Timing(kernel_min_s=1e-6, gap_s=8e-6, floor_s=11e-6, q=64.0)
    assert legacy.call(2e-6) == pytest.approx(19e-6, rel=0.02)  # gap + max(floor, kernel)


def test_call_gap_offset_moves_the_call_floor_too():
    ov = {"gemm": {"dtypes": {"bf16": {"call_gap_s": 8e-6, "call_floor_s": 20e-6, "stream_floor_s": 11e-6}}}}
    out = C.with_call_gap_offset(ov, 5e-6)["gemm"]["dtypes"]["bf16"]
    assert out["call_gap_s"] == pytest.approx(13e-6)
    assert out["call_floor_s"] == pytest.approx(25e-6)
    assert out["stream_floor_s"] == pytest.approx(11e-6)  # back-to-back launch period: not a host round trip
    assert C.with_call_gap_offset(ov, -30e-6)["gemm"]["dtypes"]["bf16"]["call_floor_s"] == 0.0


def test_record_weight_is_robust_to_one_disturbed_round():
    # Rounds 20, 20, 21, 19, 100 us: median 20, absolute deviations 0, 0, 1, 1, 80 -> MAD 1 us,
    # sigma = 1.4826 * 1 / 20 = 0.0741 -> weight 0.03 / sqrt(0.03^2 + 0.0741^2) = 0.375.
    # (max - min) / median = 4.05 would give 0.03 / sqrt(0.03^2 + 2.025^2) = 0.0148.
    r = {"s_rounds": [20e-6, 20e-6, 21e-6, 19e-6, 100e-6], "s_spread": 4.05}
    assert C.record_weight(r) == pytest.approx(0.375, rel=0.01)
    assert C.repeatability_weight(4.05) == pytest.approx(0.0148, rel=0.01)
    assert C.record_weight({"s_stream_spread": 0.0}, stream=True) == pytest.approx(1.0)


def test_gemm_only_overlay_loads_and_says_so(tmp_path):
    # A host-CPU calibration run with --ops gemm has no memory kernels: its streaming bandwidth is
    # the GEMM's memory-bound regime, and the source says so.
    eff = C.load_overlay(ROOT / "hardware" / "calibrated" / "h100-sxm-host.yaml")
    assert "memory from the GEMM fit" in eff.source
    assert eff.copy.bytes_per_s == pytest.approx(eff.gemm.memory_bytes_per_s)


def test_cpu_gemm_record_predicted_through_host_calibration(lib):
    # SCHEMA.md's cpu_gemm: numpy fp32 on the H100 machine's 16 host cores. The public file measured
    # n = 4096 at 0.1282 s (1.072 TFLOP/s); our host calibration (data/measurements/
    # h100-sxm/2026-11-23h-gemm-sdpa-host/h100-host-2026-11-23-kernels.jsonl, a 16-core Emerald Rapids VM: 0.93 TFLOP/s at 2048^3, 0.88 at
    # 3072^3) never ran 4096^3. The prediction must land within 20% of that measurement.
    from costmodel.validate import validate_records

    rec = {"kind": "kernel", "op": "cpu_gemm", "dtype": "fp32", "n": 4096, "s": 0.12819900899999936, "threads": 16,
           "hardware": "h100-sxm"}
    rep = validate_records([("truth:1", rec)], lib)
    assert len(rep.cases) == 1 and abs(rep.cases[0].rel_error) < 0.20
    # No host calibration for the H200 machine: skipped, saying why.
    rep = validate_records([("truth:2", dict(rec, hardware="h200-sxm"))], lib)
    assert not rep.cases and "no host-CPU calibration" in rep.skipped[0]


@pytest.mark.parametrize("stat", ["median", "min"])
def test_cli_calibrate_merges_a_rounds_file(tmp_path, capsys, stat):
    """A harness rounds file (one record per case per round) is merged per case before the fit:
    the copy bandwidth then follows the kept round of the largest copy (median or fastest)."""
    import statistics

    from costmodel.cli.app import main

    rounds = [r for r in read_jsonl(MEAS / "h100-sxm/2026-11-23e-kernels/h100-sxm-2026-11-23e-rounds.jsonl") if r["op"] == "mem_copy"]
    assert len({r["round"] for r in rounds}) == 5
    src = tmp_path / "copy-rounds.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rounds))
    big = max(r["bytes"] for r in rounds)
    ts = [r["s"] for r in rounds if r["bytes"] == big]
    kept = min(ts) if stat == "min" else statistics.median(ts)
    out = tmp_path / "copy.yaml"
    with pytest.raises(SystemExit) as e:
        main(["calibrate", "--records", str(src), "--round-stat", stat, "--out", str(out), "--json"])
    assert e.value.code == 0
    res = json.loads(capsys.readouterr().out)
    assert res["records"] == len(rounds) // 5  # one per case
    bw = res["overlay"]["memory"]["copy"]["bytes_per_s"]
    assert bw == pytest.approx(2 * big / kept, rel=0.03)  # read + write of the largest buffer
    assert res["overlay"]["measured"]["round_stat"] == stat


def test_cli_calibrate_rejects_unknown_round_stat(tmp_path, capsys):
    from costmodel.cli.app import main

    with pytest.raises(SystemExit) as e:
        main(["calibrate", "--records", str(MEAS / "h100-sxm/2026-11-23b-kernels/h100-sxm-2026-11-23b-kernels.jsonl"), "--round-stat", "mean",
              "--out", str(tmp_path / "x.yaml")])
    assert e.value.code == 2
    assert "round-stat" in capsys.readouterr().err


def test_validate_times_memory_and_attention_records_as_isolated_calls(lib):
    """SCHEMA.md kernel records time one isolated call, so validate adds the family's call gap to
    the kernel, as for GEMMs. Hand calculation from the shipped H100 overlay's numbers: a 256 MiB
    read is kernel_min + bytes / bytes_per_s, then call_gap + smoothmax(stream_floor, kernel, q)."""
    from costmodel.validate import validate_records

    ov = yaml.safe_load((ROOT / "hardware" / "calibrated" / "h100-sxm.yaml").read_text())
    rd, q = ov["memory"]["read"], ov["gemm"]["q"]
    nbytes = 268435456
    kernel = rd["kernel_min_s"] + nbytes / rd["bytes_per_s"]
    stream = (rd["stream_floor_s"] ** q + kernel**q) ** (1 / q)
    want = rd["call_gap_s"] + stream
    assert want - kernel > 15e-6  # the gap is not negligible at this size
    rec = {"kind": "kernel", "op": "mem_read", "bytes": nbytes, "s": 1.1e-4, "hardware": "h100-sxm"}
    rep = validate_records([("t:1", rec)], lib)
    assert rep.cases[0].predicted == pytest.approx(want, rel=1e-3)
    # attention: the isolated call is the queued kernel time plus the attention call gap
    eff = C.shipped_efficiency(lib.device("h100-sxm"))
    rec = {"kind": "kernel", "op": "sdpa_fwd", "b": 16, "h": 16, "s": 1024, "d": 64, "s_time": 1.3e-4, "hardware": "h100-sxm"}
    queued = eff.attention_time_s(16, 16, 1024, 64, True, False)
    rep = validate_records([("t:2", rec)], lib)
    assert rep.cases[0].predicted == pytest.approx(queued + ov["attention"]["sdpa_fwd"]["call_gap_s"], rel=0.02)


def test_cli_calibrate_check_over_several_splits(tmp_path, capsys):
    """--splits N repeats the held-back check over seeds 0..N-1: every held-back shape of every
    split is reported once per split (the counts follow from split_holdout alone)."""
    from costmodel.cli.app import main

    src = MEAS / "h100-sxm/2026-11-23h-gemm-sdpa-host/h100-host-2026-11-23-kernels.jsonl"
    recs = read_jsonl(src)
    held = [C.split_holdout(recs, seed=i)[1] for i in range(3)]
    want_gemm = sum(1 for h in held for r in h if C.family(r["op"]) == "gemm")
    assert want_gemm > 0 and len({C._shape_key(r) for h in held for r in h}) > len(held[0])  # the splits differ
    out = tmp_path / "host.yaml"
    with pytest.raises(SystemExit) as e:
        main(["calibrate", "--records", str(src), "--out", str(out), "--check", "--splits", "3", "--json"])
    assert e.value.code == 0
    res = json.loads(capsys.readouterr().out)
    assert res["check"]["splits"] == 3 and res["check"]["call"]["gemm"]["n"] == want_gemm
    assert sorted({r["seed"] for r in res["check"]["rows"]}) == [0, 1, 2]
    assert yaml.safe_load(out.read_text())["measured"]["check"]["splits"] == {"n": 3, "first_seed": 0}


def test_reference_host_links_replace_the_fitted_link():
    """A host copy timed on another host sets that host's link (hand calculation): one 1 GiB
    pageable copy at 16.8 GB/s with the fitted 3 us latency gives 2^30 / (t - 3 us) bytes/s; the
    GPU-side sections are left alone, and ops the reference does not time are not returned."""
    ov = {"host": {"h2d_pageable": {"bytes_per_s": 10.7e9, "latency_s": 3e-6}}, "gemm": {"x": 1}}
    t = 2**30 / 16.8e9
    links = C.reference_host_links(ov, [{"kind": "kernel", "op": "h2d_pageable", "bytes": 2**30, "gbps": 16.8}])
    assert set(links) == {"h2d_pageable"}
    assert links["h2d_pageable"]["bytes_per_s"] == pytest.approx(2**30 / (t - 3e-6), rel=1e-9)
    assert links["h2d_pageable"]["latency_s"] == 3e-6
    two = [{"op": "h2d_pinned", "bytes": b, "s": 5e-6 + b / 50e9} for b in (2**20, 2**30)]
    fit = C.reference_host_links(ov, two)["h2d_pinned"]
    assert fit["bytes_per_s"] == pytest.approx(50e9, rel=0.01) and fit["latency_s"] == pytest.approx(5e-6, rel=0.05)


def test_h100_overlay_predicts_held_out_short_k_gemms(lib):
    """36 bf16 LLM-shaped GEMMs with k = 1024-5504 and m = 1k-32k (data/measurements/
    h100-sxm/2026-11-23p-small-k/h100-sxm-2026-11-23p-small-k.jsonl), none of them in the records the shipped H100 overlay was
    fitted on (run 23e: k >= 4096): isolated calls median error 3.2%, 33 of 36 within 10%."""
    recs = read_jsonl(MEAS / "h100-sxm/2026-11-23p-small-k/h100-sxm-2026-11-23p-small-k.jsonl")
    eff = C.efficiency_for(lib.device("h100-sxm"))
    err = np.array([abs(eff.predict_record_s(r) / r["s"] - 1) for r in recs])
    assert len(recs) == 36
    assert np.median(err) < 0.05 and (err < 0.10).sum() >= 30


def test_h100_overlay_predicts_another_days_run():
    """The shipped H100 overlay (fitted on run 23e) against run 23z: the same harness on another
    H100 machine and day, 204 records it never saw. Back to back (the GPU side alone; isolated calls
    carry the truth host's call-gap offset): GEMM median 3.3%, bandwidth 0.9%, attention 4.4%."""
    eff = C.load_overlay(ROOT / "hardware" / "calibrated" / "h100-sxm.yaml")
    recs = read_jsonl(MEAS / "h100-sxm/2026-11-23z-kernels/h100-sxm-2026-11-23z-kernels.jsonl")
    s = C.compare(eff, recs, stream=True).summary()
    assert s["gemm"]["n"] == 138
    assert s["gemm"]["median_abs_error"] < 0.05
    assert s["bandwidth"]["median_abs_error"] < 0.03
    assert s["attention"]["median_abs_error"] < 0.06


# ------------------------------------------------------------------ per-shape residual

def _synthetic_gemm_records(bump):
    """Isolated and back-to-back records of squares 256..16384 (quarter-octave steps) from a known
    curve, each kernel time multiplied by exp(bump(dtype, log2 n))."""
    P = {"bf16": 600e12, "tf32": 300e12}
    gap, floor = 20e-6, 12e-6
    true = C.GemmCurve({d: C.GemmDtype(p, C.Timing(4e-6, gap, floor, 4.0)) for d, p in P.items()}, 2.5e12, p=3.0)
    recs = []
    for d in P:
        for e in np.arange(8, 14.01, 0.25):
            n = int(round(2**e / 64)) * 64
            t = true.kernel_s(n, n, n, d) * np.exp(bump(d, e))
            recs.append({"op": "gemm", "dtype": d, "m": n, "n": n, "k": n, "s": float(gap + C.smoothmax(floor, t, 4.0)),
                         "s_stream": float(C.smoothmax(floor, t, 4.0))})
    return recs


def test_gemm_residual_by_hand():
    # One measured shape 4096^3 with num = 0.2, den = 1.9 and prior 0.1: c = 0.2 / 2.0 = 0.1 there;
    # a shape 1 octave away in each of m, n, k (distance^2 = 3) keeps exp(-3 / (2 * 0.15^2)) ~ 1e-29.
    res = C.GemmResidual(0.15, 0.1, {"bf16": (np.log2([[4096.0, 4096.0, 4096.0]]), np.array([0.2]), np.array([1.9]))})
    assert res.log_factor(4096, 4096, 4096, "bf16") == pytest.approx(0.1)
    assert abs(res.log_factor(8192, 8192, 8192, "bf16")) < 1e-12
    assert res.log_factor(4096, 4096, 4096, "fp16") == 0.0  # no points for this dtype
    vec = res.log_factor(np.array([4096, 8192]), 4096, 4096, "bf16")
    assert vec.shape == (2,) and vec[0] == pytest.approx(0.1)


def test_residual_keeps_one_shapes_kernel_choice_only_there():
    # tf32 2048^3 runs 25% slower than the curve (another cuBLAS kernel), its neighbours do not:
    # a neighbour's miss says nothing about it, so cross-validation keeps the correction at the
    # measured shape (the curve alone elsewhere) and the fit predicts the shape as measured.
    recs = _synthetic_gemm_records(lambda d, e: math.log(1.25) if (d == "tf32" and e == 11) else 0.0)
    fit = C.fit_gemm(recs)
    assert fit["residual"]["length_octaves"] == C.RESIDUAL_EXACT_LENGTH_OCTAVES
    eff = C.efficiency_from_overlay({"format": C.FORMAT, "device": "x", "gemm": fit})
    plain = C.efficiency_from_overlay({"format": C.FORMAT, "device": "x", "gemm": {k: v for k, v in fit.items() if k != "residual"}})
    off = next(r for r in recs if r["dtype"] == "tf32" and r["n"] == 2048)
    assert eff.predict_record_s(off, stream=True) / off["s_stream"] == pytest.approx(1.0, abs=0.04)
    assert plain.predict_record_s(off, stream=True) / off["s_stream"] < 0.88
    # its measured neighbour 2432^3 (a quarter octave away) stays as measured
    near = next(r for r in recs if r["dtype"] == "tf32" and r["n"] == 2432)
    assert eff.predict_record_s(near, stream=True) / near["s_stream"] == pytest.approx(1.0, abs=0.02)


def test_residual_is_smoothed_where_neighbours_agree():
    # A smooth 20% bump over tf32 1k-8k (e.g. a kernel family the one-tile curve cannot express):
    # neighbours predict each other, so cross-validation picks a length of a third of an octave or
    # more, and it beats the curve alone out of sample.
    recs = _synthetic_gemm_records(lambda d, e: 0.2 * math.exp(-0.5 * ((e - 11.5) / 0.6) ** 2) if d == "tf32" else 0.0)
    res = C.fit_gemm(recs)["residual"]
    assert res["length_octaves"] >= 0.35
    assert res["cv_mean_abs_log_error"] < 0.8 * res["curve_mean_abs_log_error"]


def test_h100_overlay_residual_carries_to_another_day():
    """The per-shape residual of the shipped H100 overlay (fitted on run 23e) against run 23z, the
    same 138 GEMM shapes on another H100 machine and day, back to back: mean error 5.4% with the
    curve alone, 4.3% with the residual; shapes off by more than 10%: 23 -> 13 (cuBLAS's kernel
    choice per shape repeats across machines)."""
    ov = yaml.safe_load((ROOT / "hardware" / "calibrated" / "h100-sxm.yaml").read_text())
    plain = dict(ov, gemm={k: v for k, v in ov["gemm"].items() if k != "residual"})
    recs = read_jsonl(MEAS / "h100-sxm/2026-11-23z-kernels/h100-sxm-2026-11-23z-kernels.jsonl")
    errs = {}
    for tag, o in (("residual", ov), ("curve", plain)):
        rows = C.compare(C.efficiency_from_overlay(o), recs, stream=True).rows
        errs[tag] = np.array([abs(r["error"]) for r in rows if r["family"] == "gemm"])
    assert len(errs["residual"]) == 138
    assert errs["residual"].mean() < 0.047 and errs["residual"].mean() < errs["curve"].mean() - 0.007
    assert (errs["residual"] > 0.10).sum() <= 16 < (errs["curve"] > 0.10).sum()


def test_h200_residual_carries_to_another_day(lib):
    """The same on the H200: fitted on run 23f alone, predicting run 23y (another day, the same 138
    GEMM shapes) back to back: mean error 6.9% by the curve alone, 4.6% with the residual; shapes
    off by more than 10%: 24 -> 16."""
    spec = lib.device("h200-sxm")
    ov = C.fit_overlay(read_jsonl(MEAS / "h200-sxm/2026-11-23f-kernels-power/h200-sxm-2026-11-23f-kernels.jsonl"), spec=spec)
    plain = dict(ov, gemm={k: v for k, v in ov["gemm"].items() if k != "residual"})
    recs = read_jsonl(MEAS / "h200-sxm/2026-11-23y-kernels/h200-sxm-2026-11-23y-kernels.jsonl")
    errs = {}
    for tag, o in (("residual", ov), ("curve", plain)):
        rows = C.compare(C.efficiency_from_overlay(o, "<fit>", C.default_efficiency(spec)), recs, stream=True).rows
        errs[tag] = np.array([abs(r["error"]) for r in rows if r["family"] == "gemm"])
    assert len(errs["residual"]) == 138
    assert errs["residual"].mean() < 0.055 and errs["residual"].mean() < errs["curve"].mean() - 0.015
    assert (errs["residual"] > 0.10).sum() <= 19 < (errs["curve"] > 0.10).sum()


def _split_max_errors(path, splits: int = 8) -> list[float]:
    """Largest held-back GEMM or bandwidth error (isolated calls) of each of ``splits`` splits."""
    iso, _ = C.holdout_checks(read_jsonl(path), splits=splits, device="cpu-host")
    return [max(abs(r["error"]) for r in iso.rows if r["seed"] == seed and r["family"] in ("gemm", "bandwidth"))
            for seed in range(splits)]


def test_numpy_quick_grid_meets_the_15_percent_holdout_on_this_host():
    """Issue 5's numpy criterion, on committed quick runs of this project's 2-core host (session 12):
    eight runs of the current quick grid, eight held-back splits each. The old grid (no m = 4, 8,
    24 rows among the LLM-shaped GEMMs) missed by > 15% in 20 of 96 splits of twelve runs made in
    the same hour, mostly m = 16 held back with only m = 32 left to pin OpenBLAS's packing phase.
    The current grid: 2 of 64 splits over 15%, the worst 18.8%, the median 9.7% (17.2% and 9.0% while
    the GEMM fit had a small-output saturation x_half, which took the GEMVs' time from the memory
    rate: the two were not both identified)."""
    d = MEAS / "cpu/2026-11-23-host-quick"
    new = [e for p in sorted(d.glob("run-*.jsonl")) for e in _split_max_errors(p)]
    old = [e for p in sorted(d.glob("old-grid-*.jsonl")) for e in _split_max_errors(p)]
    assert len(new) == 64 and len(old) == 96
    assert sum(e > 0.15 for e in new) <= 2 and max(new) < 0.20
    assert sum(e > 0.15 for e in old) >= 15  # the committed evidence for the grid change


def test_overlay_names_its_attention_kernel():
    """An overlay may state which fused-attention kernel its attention curves measured; a name it
    does not know is an InputError on that field, never a silent default."""
    from costmodel.errors import InputError
    from costmodel.specs import load_library

    spec = load_library().device("h100-sxm")
    base = C.default_efficiency(spec)
    ov = {"format": C.FORMAT, "device": "h100-sxm", "attention_backend": "flash2"}
    assert C.efficiency_from_overlay(ov, "<x>", base).attention_backend == "flash2"
    assert C.efficiency_from_overlay({"format": C.FORMAT, "device": "h100-sxm"}, "<x>", base).attention_backend is None
    with pytest.raises(InputError, match="attention_backend"):
        C.efficiency_from_overlay(dict(ov, attention_backend="flash9"), "<x>", base)
