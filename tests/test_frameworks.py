"""Framework profiles (costmodel.frameworks), the composed step model (costmodel.steptime) and
fit-profile (costmodel.profile_fit)."""
import json
import math

import numpy as np
import pytest

from costmodel import frameworks, profile_fit, steptime, training
from costmodel.errors import InputError
from costmodel.workload import Parallel

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PLAYBOOK = ROOT.parent / "shared" / "truth" / "playbook-public-1b-8b.jsonl"
if not PLAYBOOK.exists():  # a plain clone: the copy shipped in data/samples/
    PLAYBOOK = ROOT / "data" / "samples" / "playbook-public-1b-8b.jsonl"


@pytest.mark.parametrize("name,expected", [("NanoTron", "nanotron"), ("Megatron-LM", "megatron"),
                                           ("megatron_core", "megatron"), ("DeepSpeed", "deepspeed"),
                                           ("PyTorch", "pytorch"), ("TorchTitan", "torchtitan")])
def test_resolve_is_case_insensitive_with_aliases(name, expected):
    assert frameworks.resolve(name).id == expected


def test_unknown_framework_lists_the_known_ones():
    with pytest.raises(InputError) as e:
        frameworks.resolve("jax-maxtext")
    msg = str(e.value)
    for name in ("deepspeed", "megatron", "nanotron", "pytorch", "torchtitan"):
        assert name in msg


def test_the_step_model_reads_its_fitted_constants_from_the_profiles():
    """The eager PyTorch constants and the bucketed overlap are data: the values in
    data/frameworks/pytorch.yaml and megatron.yaml are the ones training.py runs, and each cites
    what it was fitted on (a data file or a paper)."""
    pt = frameworks.resolve("pytorch")
    for name, const in (("host_s_per_layer", "HOST_S_PER_LAYER"), ("host_intercept_s", "HOST_INTERCEPT_S"),
                        ("host_gpu_combine_p", "HOST_GPU_COMBINE_P"), ("eager_traffic_ratio", "HF_EAGER_TRAFFIC_RATIO"),
                        ("amp_cast_bytes_per_param", "AMP_CAST_BYTES_PER_PARAM"), ("dp_overlap", "DDP_NVLINK_NET_OVERLAP")):
        assert getattr(training, const) == pt.value(name)
    assert training.DP_OVERLAP_FRACTION == frameworks.resolve("megatron").value("dp_overlap")
    for prof in frameworks.builtin_profiles().values():
        for name, p in prof.parameters.items():
            assert any(w in p.source for w in ("data/", "shared/truth", "et al.", "arithmetic", "training.", "fit", "value")), (prof.id, name)


def test_profile_values_must_lie_in_their_bounds():
    with pytest.raises(Exception):
        frameworks.ProfileParameter(value=2.0, bounds=(0.0, 1.0), meaning="x", source="y")


def test_composed_profile_needs_every_parameter():
    with pytest.raises(Exception):
        frameworks.FrameworkProfile(id="x", name="x", base="megatron", step_model="composed", description="x",
                                    parameters={})


def _terms(**kw):
    base = dict(n_micro=4.0, pp=2.0, interleave=1.0, tp=4.0, gpu_mb_s=0.10, gemm_mb_s=0.07, attention_mb_s=0.02,
                head_gemm_mb_s=0.0, head_other_mb_s=0.0, tp_intra_mb_s=0.02, tp_cross_wire_mb_s=0.0, tp_cross_steps_mb=0.0, p2p_mb_s=0.001, pp_cross=1.0,
                host_layers_mb=8.0, dp_comm_wire_s=0.05, dp_comm_steps=10.0, dp_window_s=0.04, optimizer_s=0.01,
                other_s=0.0, step_latency_s=1e-4)
    base.update(kw)
    return steptime.StepTerms(**base)


PARAMS = {"compute_scale": 1.2, "elementwise_scale": 1.0, "host_s_per_layer": 0.002, "host_gpu_combine_p": 4.0, "tp_overlap": 0.25,
          "dp_overlap": 0.5, "pp_cross_node_s": 0.001, "pp_cross_node_tp_exponent": 1.0}


def test_compose_by_hand():
    t = _terms()
    c = steptime.compose(t, PARAMS)
    slot = 1.2 * (0.07 + 0.02) + 1.0 * 0.01 + 0.75 * 0.02 + 0.001  # GEMM+attention, elementwise, tp, p2p: 0.134
    host = 8 * (0.002 + 0.001 * 3.0)  # 0.040: (tp - 1)^1 peers
    slot_h = (slot ** 4 + host ** 4) ** 0.25
    pipeline = (4 + 1) * slot_h  # 4 micro-batches + (pp - 1) bubble slots
    dp = 0.05 + 10 * 1e-4  # 0.051
    dp_exposed = dp - min(0.5 * dp, 1.2 * 0.04)
    assert math.isclose(float(c.total_s), pipeline + dp_exposed + 0.01, rel_tol=1e-12)
    assert math.isclose(float(c.bubble_s), slot_h, rel_tol=1e-12)
    assert math.isclose(float(c.dp_comm_exposed_s), dp_exposed, rel_tol=1e-12)
    # a fitted step latency replaces the terms' own
    c2 = steptime.compose(t, PARAMS, step_latency_s=2e-4)
    assert math.isclose(float(c2.total_s - c.total_s), 10 * 1e-4 * 0.5, rel_tol=1e-9)


def test_compose_works_on_arrays_like_on_scalars():
    ts = [_terms(n_micro=float(n), tp=float(tp)) for n, tp in ((1, 1), (4, 2), (16, 8))]
    arr = steptime.compose(steptime.StepTerms.stack(ts), PARAMS).total_s
    one = [float(steptime.compose(t, PARAMS).total_s) for t in ts]
    assert np.allclose(arr, one, rtol=1e-12)


@pytest.mark.parametrize("tp,pp,dp,expected", [
    (4, 2, 2, {"tp_nodes": 1, "dp_per_node": 2, "dp_nodes": 1, "pp_cross": True,  # 16 GPUs: stages on 2 nodes
               "pp_cross_neighbours": 1}),
    (2, 1, 4, {"tp_nodes": 1, "dp_per_node": 4, "dp_nodes": 1, "pp_cross": False, "pp_cross_neighbours": 0}),
    (16, 2, 2, {"tp_nodes": 2, "dp_per_node": 1, "dp_nodes": 2, "pp_cross": True, "pp_cross_neighbours": 1}),
    (1, 2, 32, {"tp_nodes": 1, "dp_per_node": 8, "dp_nodes": 4, "pp_cross": True, "pp_cross_neighbours": 1}),
    (2, 4, 1, {"tp_nodes": 1, "dp_per_node": 1, "dp_nodes": 1, "pp_cross": False,  # 8 GPUs, one node
               "pp_cross_neighbours": 0}),
    # ranks 0-3 stage 0, 4-7 stage 1 (node 0), 8-11 stage 2, 12-15 stage 3 (node 1): one boundary crosses
    (2, 4, 2, {"tp_nodes": 1, "dp_per_node": 2, "dp_nodes": 1, "pp_cross": True, "pp_cross_neighbours": 1}),
    # a node per stage: stages 1 and 2 send both ways across nodes
    (8, 4, 1, {"tp_nodes": 1, "dp_per_node": 1, "dp_nodes": 1, "pp_cross": True, "pp_cross_neighbours": 2}),
])
def test_placement_tp_fastest_then_dp_then_pp(tp, pp, dp, expected):
    assert steptime.placement(Parallel(tp=tp, pp=pp, dp=dp), 8) == expected


def _records(n_layouts=24):
    """Train records of a small llama on 1-4 nodes of dgx-h100 (nanotron), every 2nd layout ZeRO-1."""
    model = {"arch": "llama", "layers": 8, "hidden": 1024, "heads": 16, "kv_heads": 16, "ffn": 4096,
             "vocab": 32000, "tied_embeddings": True}
    out = []
    for devices in (8, 16, 32):
        for tp in (1, 2, 4, 8, 16):
            for pp in (1, 2, 4):
                if devices % (tp * pp):
                    continue
                dp = devices // (tp * pp)
                for mb in (1, 4):
                    if 64 % (mb * dp):
                        continue
                    out.append({"kind": "train", "name": f"d{devices}-tp{tp}-pp{pp}-mb{mb}", "model": model,
                                "hardware": "h100-sxm", "node": "dgx-h100", "devices": devices,
                                "parallel": {"tp": tp, "pp": pp, "dp": dp, "sequence_parallel": tp > 1,
                                             "sharding": "optimizer" if len(out) % 2 else "none"},
                                "micro_batch": mb, "global_batch": 64, "seq_len": 2048, "framework": "nanotron",
                                "measured": {"step_seconds": 1.0}})
    return [(f"r:{i}", r) for i, r in enumerate(out[:n_layouts])]


def test_fit_recovers_known_parameters():
    recs = _records(40)
    prof = frameworks.resolve("nanotron")
    # the fit starts from the cross-node step latency the runs were made with (a start far from it can
    # leave the fit in a local minimum that trades compute_scale against the overlaps)
    prof = prof.model_copy(update={"cluster_step_latency_s": 80e-6})
    runs = profile_fit.run_set(recs, prof)
    true = {"compute_scale": 1.1, "host_s_per_layer": 0.003, "host_gpu_combine_p": 4.72, "tp_overlap": 0.3,
            "dp_overlap": 0.4, "pp_cross_node_s": 0.004, "pp_cross_node_tp_exponent": 0.8}
    runs.measured = profile_fit.predict(runs, prof, true, step_latency_s=80e-6)
    start = prof.with_values({"compute_scale": 1.0, "host_s_per_layer": 0.001, "tp_overlap": 0.1, "dp_overlap": 0.7,
                              "pp_cross_node_s": 0.01, "pp_cross_node_tp_exponent": 1.0})
    res = profile_fit.fit_profile(runs, start, folds=0, prior_weight=0.0)
    assert res.mape < 0.005
    assert res.values["compute_scale"] == pytest.approx(1.1, rel=0.03)
    assert res.values["host_s_per_layer"] == pytest.approx(0.003, rel=0.1)


def test_the_prior_holds_what_few_runs_cannot_pin():
    """Runs that the start profile already predicts exactly leave every parameter at the start (the
    prior and the data agree), although 40 runs of one small model cannot pin all of them."""
    recs = _records(40)
    prof = frameworks.resolve("nanotron")
    # the fit starts from the cross-node step latency the runs were made with (a start far from it can
    # leave the fit in a local minimum that trades compute_scale against the overlaps)
    prof = prof.model_copy(update={"cluster_step_latency_s": 80e-6})
    runs = profile_fit.run_set(recs, prof)
    runs.measured = profile_fit.predict(runs, prof, step_latency_s=prof.cluster_step_latency_s)
    res = profile_fit.fit_profile(runs, prof, folds=0)
    for k, v in res.values.items():
        assert v == pytest.approx(prof.value(k), rel=1e-3, abs=1e-6), k


def test_fit_profile_cli_writes_a_profile_that_validate_uses(tmp_path):
    from typer.testing import CliRunner

    from costmodel.cli.app import app
    from costmodel.validate import read_records, validate_records

    runs = tmp_path / "runs.jsonl"
    recs = _records(100)  # all 69 layouts: fewer leave compute_scale in a valley with the overlaps
    prof = frameworks.resolve("nanotron")
    rs = profile_fit.run_set(recs, prof)
    meas = profile_fit.predict(rs, prof, {"compute_scale": 1.3}) * 1.0
    with runs.open("w") as f:
        for (_, r), m in zip(recs, meas):
            r = dict(r, measured={"step_seconds": float(m)})
            f.write(json.dumps(r) + "\n")
    out = tmp_path / "mine.yaml"
    # no prior: with the shipped values as a prior the fit may trade compute_scale against the
    # other parameters; without it, the synthetic runs' compute_scale must come back
    res = CliRunner().invoke(app, ["fit-profile", str(runs), "--framework", "Nanotron", "--out", str(out),
                                   "--folds", "3", "--prior-weight", "0", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["fit"]["mape"] < 0.02 and data["fit"]["holdout_mape"] < 0.05
    loaded = frameworks.load_profile_file(out)
    assert loaded.step_model == "composed" and loaded.value("compute_scale") == pytest.approx(1.3, rel=0.05)
    rep = validate_records(read_records(runs), profile=str(out))
    errs = [abs(c.rel_error) for c in rep.cases if c.metric == "step_seconds"]
    assert len(errs) == len(recs) and max(errs) < 0.05


def test_fit_profile_drops_the_not_fitted_mark_of_what_it_fits(tmp_path):
    """A start profile may mark a value as not fitted (`not_fitted:`: copied or assumed, so
    tools/mutate_constants.py leaves it out). Once fit-profile has fitted that parameter the mark is
    false: the written profile names the fit as its source and carries no mark; a parameter the fit
    cannot move (equal bounds) keeps its mark."""
    import yaml
    from typer.testing import CliRunner

    from costmodel.cli.app import app

    start = yaml.safe_load((ROOT / "data" / "frameworks" / "nanotron.yaml").read_text())
    start["parameters"]["tp_overlap"]["not_fitted"] = "assumed for this test"
    fixed = start["parameters"]["pp_cross_node_tp_exponent"]
    fixed.update(bounds=[fixed["value"], fixed["value"]], not_fitted="held at its value for this test")
    start_file = tmp_path / "start.yaml"
    start_file.write_text(yaml.safe_dump(start, sort_keys=False))
    runs = tmp_path / "runs.jsonl"
    recs = _records(100)  # all 69 layouts: fewer leave compute_scale in a valley with the overlaps
    prof = frameworks.load_profile_file(start_file)
    meas = profile_fit.predict(profile_fit.run_set(recs, prof), prof, {"tp_overlap": 0.5})
    with runs.open("w") as f:
        for (_, r), m in zip(recs, meas):
            f.write(json.dumps(dict(r, measured={"step_seconds": float(m)})) + "\n")
    out = tmp_path / "mine.yaml"
    res = CliRunner().invoke(app, ["fit-profile", str(runs), "--framework", "nanotron", "--profile", str(start_file),
                                   "--out", str(out), "--folds", "0", "--json"])
    assert res.exit_code == 0, res.output
    written = yaml.safe_load(out.read_text())["parameters"]
    assert "not_fitted" not in written["tp_overlap"] and "fit-profile" in written["tp_overlap"]["source"]
    assert written["pp_cross_node_tp_exponent"]["not_fitted"] == "held at its value for this test"


def _main(capsys, *args):
    from costmodel.cli.app import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code or 0, out.out + out.err


def test_fit_profile_refuses_to_overwrite_shipped_profiles(tmp_path, capsys):
    runs = tmp_path / "runs.jsonl"
    runs.write_text("".join(json.dumps(r) + "\n" for _, r in _records(6)))
    shipped = frameworks.frameworks_dir() / "nanotron.yaml"
    before = shipped.read_bytes()
    code, out = _main(capsys, "fit-profile", str(runs), "--framework", "nanotron", "--out", str(shipped), "--folds", "0")
    assert code == 2 and "refusing to write" in out and len(out.strip().splitlines()) == 1
    assert shipped.read_bytes() == before


def test_unknown_framework_in_a_record_exits_2(tmp_path, capsys):
    r = dict(_records(1)[0][1], framework="maxtext")
    f = tmp_path / "r.jsonl"
    f.write_text(json.dumps(r) + "\n")
    code, out = _main(capsys, "validate", str(f))
    assert code == 2
    assert "unknown framework 'maxtext'" in out and "r.jsonl" in out


@pytest.fixture
def playbook():
    if not PLAYBOOK.exists():
        pytest.skip("../shared/truth is not beside this checkout")
    from costmodel.validate import read_records

    return read_records(PLAYBOOK)


def test_shipped_nanotron_profile_on_the_playbook_runs(playbook):
    """The shipped profile is the fit on this file: refitting moves no parameter much, and the
    error is what the fit reported (data/frameworks/nanotron.yaml, fit:, to its three decimals:
    doubling elementwise_scale, host_gpu_combine_p or dp_overlap moves it by 0.5, 0.3 and 0.1
    points, which the runs barely pin down)."""
    prof = frameworks.resolve("nanotron")
    runs = profile_fit.run_set(playbook, prof)
    pred = profile_fit.predict(runs, prof, step_latency_s=prof.cluster_step_latency_s)
    err = np.abs(pred / runs.measured - 1.0)
    assert float(np.mean(err)) == pytest.approx(prof.fit["mape"], abs=0.0005)
    assert float(np.median(err)) < 0.30
    res = profile_fit.fit_profile(runs, prof, folds=0)
    assert res.mape <= prof.fit["mape"] + 0.002


def test_cuda_graphs_setting_hides_host_dispatch():
    t = _terms()
    eager = steptime.compose(t, PARAMS)
    graphs = steptime.compose(t, PARAMS, cuda_graphs=True)
    # only the pipeline hand-off stalls stay on the host side: 8 layers x 0.001 s x (tp - 1)
    slot = 1.2 * 0.09 + 0.01 + 0.75 * 0.02 + 0.001
    host = 8 * 0.001 * 3.0
    assert float(graphs.host_overhead_s) == pytest.approx(4 * (((slot ** 4 + host ** 4) ** 0.25) - slot))
    assert float(graphs.total_s) < float(eager.total_s)


def test_dp_bucket_setting_counts_calls():
    """The gradient all-reduce is one call per bucket: halving the bucket doubles the calls and so
    the ring steps that pay the cross-node latency."""
    from costmodel.arch import load_model
    from costmodel.specs import load_library
    from costmodel.training import estimate_train
    from costmodel.workload import TrainJob

    lib = load_library()
    m = load_model("llama2-7b")
    par = Parallel(tp=1, pp=1, dp=32, zero_stage=0)
    job = TrainJob(micro_batch=1, seq_len=2048, global_batch=64, framework="megatron")
    prof = frameworks.resolve("nanotron")
    half = prof.model_copy(update={"settings": prof.settings.model_copy(update={"dp_bucket_bytes": prof.settings.dp_bucket_bytes / 2})})
    a = estimate_train(m, lib.device("h100-sxm"), job, par, node=lib.node_for("dgx-h100"), profile=prof).terms
    b = estimate_train(m, lib.device("h100-sxm"), job, par, node=lib.node_for("dgx-h100"), profile=half).terms
    assert b.dp_comm_steps == pytest.approx(2 * a.dp_comm_steps, rel=0.01)


def test_node_option_times_runs_on_your_cluster(tmp_path, capsys):
    """validate / fit-profile --node: the runs' node replaced by a cluster spec the user brings
    (here dgx-h100 with measured scaling 4x slower than the network the nanotron profile was fitted
    on; a node's own measured scaling takes precedence over the profile's): multi-node steps get
    slower, one-node steps do not; a node of another device is refused naming the record."""
    import yaml

    base = yaml.safe_load((ROOT / "hardware" / "nodes" / "dgx-h100.yaml").read_text())
    base["id"] = "my-h100-cluster"
    sc = dict(frameworks.resolve("nanotron").cluster_scaling)  # the network nanotron was fitted on, 4x slower
    sc["bus_bandwidth"] = {op: {n: f"{float(str(v).split()[0]) / 4} GB/s" for n, v in t.items()}
                           for op, t in sc["bus_bandwidth"].items()}
    base["scale_out"]["scaling"] = sc
    spec = tmp_path / "cluster.yaml"
    spec.write_text(yaml.safe_dump(base))
    runs = tmp_path / "runs.jsonl"
    recs = [r for _, r in _records(40) if r["parallel"]["dp"] >= 2]
    runs.write_text("".join(json.dumps(r) + "\n" for r in recs))

    def preds(*extra):
        code, out = _main(capsys, "validate", str(runs), "--json", "--hardware-file", str(spec), *extra)
        assert code == 0, out
        return {c["name"]: c["predicted"] for c in json.loads(out[:out.rindex("}") + 1])["cases"]}

    plain, mine = preds(), preds("--node", "my-h100-cluster")
    multi = [r["name"] for r in recs if r["devices"] > 8]
    one = [r["name"] for r in recs if r["devices"] == 8]
    assert multi and one
    # slower wherever a collective crosses nodes (a 16-GPU tp1 pp2 dp8 run only sends p2p across)
    assert all(mine[n] >= plain[n] * (1 - 1e-12) for n in multi) and sum(mine[n] > plain[n] * 1.01 for n in multi) >= 3
    assert all(mine[n] == pytest.approx(plain[n], rel=1e-12) for n in one)
    code, out = _main(capsys, "validate", str(runs), "--node", "dgx-a100")
    assert code == 2 and "dgx-a100" in out and "a100" in out


def test_tp_overlap_exposed_by_hand():
    """Decomposed TP communication (Wang et al. 2023): of 8 ms of collectives beside 20 ms of GEMMs
    over tp = 4 chunks only the first chunk's 2 ms waits; beside 4 ms of GEMMs each later chunk's
    1 ms GEMM hides 1 ms of its 2 ms: 2 + 3 x 1 = 5 ms."""
    from costmodel import steptime

    assert steptime.tp_overlap_exposed_s(8e-3, 20e-3, 4) == pytest.approx(2e-3)
    assert steptime.tp_overlap_exposed_s(8e-3, 4e-3, 4) == pytest.approx(5e-3)
    assert steptime.tp_overlap_exposed_s(8e-3, 0.0, 1) == pytest.approx(8e-3)


def test_tp_comm_overlap_in_train():
    """--tp-comm-overlap shortens a Megatron step by what it hides, needs sequence parallelism and is
    refused for frameworks that do not have it."""
    import costmodel

    kw = dict(devices=8, tp=8, global_batch=8, seq_len=4096, sequence_parallel=True)
    off = costmodel.train("llama3-8b", "dgx-h100", **kw)
    on = costmodel.train("llama3-8b", "dgx-h100", tp_comm_overlap=True, **kw)
    assert on.step.tp_comm_s < off.step.tp_comm_s / 4  # tp = 8 chunks: about 1/8 left where the GEMMs hide it
    assert on.step.total_s == pytest.approx(off.step.total_s - (off.step.tp_comm_s - on.step.tp_comm_s), rel=1e-9)
    with pytest.raises(InputError, match="sequence parallelism"):
        costmodel.train("llama3-8b", "dgx-h100", devices=8, tp=8, global_batch=8, tp_comm_overlap=True)
    with pytest.raises(InputError, match="pytorch"):
        costmodel.train("llama3-8b", "dgx-h100", framework="pytorch", tp_comm_overlap=True, **kw)


def test_fused_frameworks_run_gemms_at_the_sustained_clock():
    """Fused frameworks time a large GEMM at no more than the device's measured sustained rate
    (hardware/calibrated/h100-sxm.yaml, sustained_flops_per_s), eager PyTorch at the burst clock."""
    from costmodel.roofline import gemm_op
    from costmodel.specs import load_library
    from costmodel.training import step_efficiency

    spec = load_library().device("h100-sxm")
    m = n = k = 8192
    flops = 2.0 * m * n * k
    sustained = gemm_op(step_efficiency(spec, None, frameworks.resolve("megatron")), "g", m, k, n, interleaved=True)
    burst = gemm_op(step_efficiency(spec, None, frameworks.resolve("pytorch")), "g", m, k, n, interleaved=True)
    assert flops / sustained.time_s <= 708.58e12 * 1.001
    assert burst.time_s < sustained.time_s * 0.97


# FlashAttention-3 paper (Shah et al. 2024, arXiv:2407.08608), Fig. 5-6 on H100 SXM5: TFLOP/s of
# FlashAttention-2 and of cuDNN fused attention at sequence 8k
FA3_PAPER_8K = {("fwd", 64): (322, 412), ("fwd", 128): (333, 529), ("bwd", 128): (318, 518)}
SDPA_RUN = Path(__file__).resolve().parents[1] / "data" / "measurements" / "h100-sxm" / "2026-12-07a-sdpa-backends" / \
    "h100-sxm-2026-12-07a-sdpa-backends.jsonl"


def _measured_ratio(pas: str, d: int, s: int) -> float:
    """FlashAttention-2 over cuDNN throughput of SDPA's two kernels on one H100 (run 2026-12-07a),
    causal, forward or backward (forward + backward less forward)."""
    t = {}
    for line in SDPA_RUN.read_text().splitlines():
        r = json.loads(line)
        if r["d"] == d and r["s"] == s and r["causal"]:
            t[(r["op"], r["sdpa_backend"])] = r["s_time"]
    if pas == "fwd":
        return t[("sdpa_fwd", "cudnn")] / t[("sdpa_fwd", "flash")]
    return (t[("sdpa_fwd_bwd", "cudnn")] - t[("sdpa_fwd", "cudnn")]) / (t[("sdpa_fwd_bwd", "flash")] - t[("sdpa_fwd", "flash")])


def test_sdpa_backend_rates_are_the_measured_ratios():
    """FlashAttention-2 against cuDNN on Hopper as measured on the same inputs on one H100 (within 5%
    at 8k tokens: the constants are the median over 4k-32k); the FlashAttention-3 paper's older cuDNN
    gives ratios within 15% of them; the other way round the inverse; the same kernel, or one not
    named, changes nothing."""
    from costmodel.roofline import sdpa_backend_rates

    fwd64, bwd64 = sdpa_backend_rates("cudnn", "flash2", 64)
    fwd128, bwd128 = sdpa_backend_rates("cudnn", "flash2", 128)
    got = {("fwd", 64): fwd64, ("bwd", 64): bwd64, ("fwd", 128): fwd128, ("bwd", 128): bwd128}
    for (pas, d), ratio in got.items():
        assert ratio == pytest.approx(_measured_ratio(pas, d, 8192), rel=0.05), (pas, d)
    for (pas, d), (fa2, cudnn) in FA3_PAPER_8K.items():
        assert got[(pas, d)] == pytest.approx(fa2 / cudnn, rel=0.15), (pas, d)
    back = sdpa_backend_rates("flash2", "cudnn", 128)
    assert back[0] == pytest.approx(1 / fwd128) and back[1] == pytest.approx(1 / bwd128)
    assert sdpa_backend_rates("cudnn", "cudnn", 128) == (1.0, 1.0)
    assert sdpa_backend_rates(None, "flash2", 128) == (1.0, 1.0)
    assert sdpa_backend_rates("cudnn", None, 128) == (1.0, 1.0)
    # between 64 and 128 the ratio moves monotonically from one to the other
    mid = sdpa_backend_rates("cudnn", "flash2", 96)[0]
    assert fwd128 < mid < fwd64


def test_a_flash2_framework_times_attention_at_flash2_speed_on_a_cudnn_calibration():
    """The shipped H100 calibration measured PyTorch 2.11's SDPA (cuDNN); torchtitan as published in
    2024 ran FlashAttention-2: its forward attention at 8k tokens, head dim 128, runs at the measured
    FA2/cuDNN ratio of the calibrated rate, a step's GEMMs unchanged. Current torchtitan (cuDNN) and a
    device calibrated without a named kernel (A100: datasheet defaults) are not rescaled."""
    from costmodel.roofline import gemm_op
    from costmodel.specs import load_library
    from costmodel.training import step_efficiency

    lib = load_library()
    h100 = lib.device("h100-sxm")
    now = step_efficiency(h100, None, frameworks.resolve("torchtitan"))
    y2024 = step_efficiency(h100, None, frameworks.resolve("torchtitan-2024"))
    assert now.attention_backend == "cudnn"
    shape = (1, 32, 8192, 128)
    assert y2024.attention_flops_per_s(*shape) / now.attention_flops_per_s(*shape) == \
        pytest.approx(_measured_ratio("fwd", 128, 8192), rel=0.05)
    # forward + backward: each pass at its own ratio, so the whole between them
    fb = y2024.attention_time_s(*shape, True, True) / now.attention_time_s(*shape, True, True)
    assert 1 / 0.60 < fb < 1 / 0.52
    assert gemm_op(y2024, "g", 8192, 4096, 4096).time_s == gemm_op(now, "g", 8192, 4096, 4096).time_s
    a100 = lib.device("a100-80gb-sxm")
    assert step_efficiency(a100, None, frameworks.resolve("torchtitan-2024")).attention_flops_per_s(*shape) == \
        step_efficiency(a100, None, frameworks.resolve("torchtitan")).attention_flops_per_s(*shape)


def test_validate_times_a_record_as_its_own_profile():
    """A record naming a built-in profile whose base is another framework (torchtitan-2024 on
    PyTorch semantics) is timed as that profile, exactly as `train --framework` times it."""
    import json

    import costmodel
    from costmodel.validate import validate_file

    path = Path(__file__).resolve().parents[1] / "data" / "published" / "torchtitan-2024.jsonl"
    rec = json.loads(path.read_text().splitlines()[0])
    assert rec["framework"] == "torchtitan-2024" and rec["parallel"]["cp"] == 1
    case = next(c for c in validate_file(path).cases if c.name == rec["name"])
    p = rec["parallel"]
    assert p["sharding"] == "full"
    est = costmodel.train(rec["model"]["preset"], rec["node"], devices=rec["devices"], dp=p["dp"], zero_stage=3,
                          global_batch=rec["global_batch"],
                          micro_batch=rec["micro_batch"], seq_len=rec["seq_len"], recompute=rec["recompute"],
                          precision=rec["precision"], framework="torchtitan-2024")
    assert case.predicted == pytest.approx(est.step.total_s, rel=1e-9)


def _one_f_one_b_makespan(fwd: list[float], bwd: list[float], m: int) -> float:
    """Makespan of a 1F1B pipeline schedule (Narayanan et al. 2021, sec. 2.2), simulated op by op:
    stage i runs p - i - 1 warm-up forwards, then one forward and one backward in turn, then the
    remaining backwards; a forward waits for the previous stage's, a backward for the next stage's."""
    p = len(fwd)
    orders = []
    for i in range(p):
        w = min(p - i - 1, m)
        ops, nf = [("F", j) for j in range(w)], w
        for nb in range(m):
            if nf < m:
                ops.append(("F", nf))
                nf += 1
            ops.append(("B", nb))
        orders.append(ops)
    end: dict = {}
    clock = [0.0] * p
    ptr = [0] * p
    while any(ptr[i] < len(orders[i]) for i in range(p)):
        for i in range(p):
            if ptr[i] >= len(orders[i]):
                continue
            kind, j = orders[i][ptr[i]]
            dep = (end.get(("F", i - 1, j)) if i > 0 else 0.0) if kind == "F" else \
                (end.get(("B", i + 1, j)) if i < p - 1 else end.get(("F", i, j)))
            if dep is None:
                continue
            clock[i] = max(clock[i], dep) + (fwd[i] if kind == "F" else bwd[i])
            end[(kind, i, j)] = clock[i]
            ptr[i] += 1
    return max(clock)


@pytest.mark.parametrize("pp,m", [(2, 4), (4, 8), (8, 64)])
def test_pipeline_step_is_the_1f1b_makespan_with_a_heavier_last_stage(pp, m):
    """Every stage runs 1 s forward and 2 s backward per micro-batch; the last also runs the LM
    head and loss (0.5 + 1 s of GEMMs, 0.5 s of elementwise work). The composed step equals the
    makespan of the schedule simulated op by op (every micro-batch through the slowest stage, the
    fill and drain through the others), where charging the bubble at the last stage's time does not."""
    head_gemm, head_other = 1.5, 0.5
    t = _terms(n_micro=float(m), pp=float(pp), gpu_mb_s=3.0 + head_gemm + head_other, gemm_mb_s=3.0 + head_gemm,
               attention_mb_s=0.0, head_gemm_mb_s=head_gemm, head_other_mb_s=head_other, tp_intra_mb_s=0.0,
               p2p_mb_s=0.0, pp_cross=0.0, host_layers_mb=0.0, dp_comm_wire_s=0.0, dp_comm_steps=0.0,
               optimizer_s=0.0)
    p = dict(PARAMS, compute_scale=1.0, elementwise_scale=1.0)
    fwd = [1.0] * (pp - 1) + [1.0 + (head_gemm + head_other) / 3]
    bwd = [2.0] * (pp - 1) + [2.0 + 2 * (head_gemm + head_other) / 3]
    expect = _one_f_one_b_makespan(fwd, bwd, m)
    got = float(steptime.compose(t, p, cuda_graphs=True).total_s)
    assert got == pytest.approx(expect, rel=1e-9)
    assert (m + pp - 1) * 5.0 > expect * 1.01  # the old charge, all p - 1 bubble slots at the last stage's 5 s


def test_nanotron_splits_pipeline_stages_by_compute_cost():
    """nanotron's build_model (models/base.py) hands the blocks embedding (cost 0), decoder layers,
    final norm (0), LM head, fp32 cast and loss (0) to the current rank in order and moves on once
    the running cost exceeds (rank + 1) / pp of the total. Llama 3.2 1B-like (Playbook 1B): a
    layer costs 4 x 2048^2 + 3 x 8192 x 2048 = 2^26, the head 131072 x 2048 = 2^28 = 4 layers, 20
    units in all, 5 per rank at pp4. Rank 0 takes layers 0-5 (the running cost reaches 6 > 5 at
    layer 5), rank 1 layers 6-10 (11 > 10), rank 2 layers 11-15 (16 > 15), rank 3 the norm, head
    and loss alone: 0 layers on the head's stage, 6 on the busiest other, 16 / 3 on average."""
    layer, head = 4 * 2048 * 2048 + 3 * 8192 * 2048, 131072 * 2048
    assert steptime.stage_layers(16, 4, "cost", layer, head) == (0, 6, pytest.approx(16 / 3), False, 3)
    # The Playbook 8B (vocab 131072) at pp16: layer 4 x 4096^2 + 3 x 14336 x 4096 = 243.3M, head
    # 131072 x 4096 = 536.9M = 2.207 layers, 34.207 in all, 2.138 per rank. Rank k hands over after
    # the first layer whose running count exceeds 2.138 (k + 1): rank 0 takes 3 layers, ranks 1-6
    # two each, rank 7 three (17.10 -> 18), ranks 8-14 two (14 ends at 32 < 32.07), so rank 14 also
    # takes the norm and the head; the head's 2.207 carry the count to 34.207 > 32.07, so the fp32
    # cast and the loss go to rank 15, which holds no layer: 2 layers with the head, at most 3 on
    # the 14 other layer stages, 30 / 14 on average, the loss apart.
    layer8, head8 = 4 * 4096 * 4096 + 3 * 14336 * 4096, 131072 * 4096
    assert steptime.stage_layers(32, 16, "cost", layer8, head8) == (2, 3, pytest.approx(30 / 14), True, 14)
    # Megatron-LM's even split: ceil(32 / 3) = 11 on every stage, the head on the last
    assert steptime.stage_layers(32, 3, "even", layer8, head8) == (11, 11, 11.0, False, 2)
    assert steptime.stage_layers(16, 1, "cost", layer, head) == (16, 16, 16.0, False, 0)


def test_pipeline_step_with_cost_balanced_stages_is_the_1f1b_makespan():
    """Stages of 6, 5, 5 layers and one of the LM head alone (the 1B split above), each layer 1 s
    forward and 2 s backward, the head 4 layers' worth of GEMMs (4 + 8 s). The composed step (every
    micro-batch through the slowest stage, the head's 12 s, the fill and drain through each stage
    once) is the 1F1B schedule simulated op by op to within 2%: 31 x 18 + 12 + 3 x 16 = 618 s
    against 606 s, as the busiest stage comes first and its warm-up forwards hide part of the
    fill. The even split's charge (every micro-batch through a 4-layer stage plus the head: 24 s)
    is far off."""
    m, pp = 32, 4
    layers_per_term = 4.0  # the per-layer terms are summed over ceil(16 / 4) = 4 layers
    t = _terms(n_micro=float(m), pp=float(pp), gpu_mb_s=3.0 * layers_per_term + 12.0,
               gemm_mb_s=3.0 * layers_per_term + 12.0, attention_mb_s=0.0, head_gemm_mb_s=12.0, head_other_mb_s=0.0,
               tp_intra_mb_s=0.0, p2p_mb_s=0.0, pp_cross=0.0, host_layers_mb=layers_per_term, dp_comm_wire_s=0.0,
               dp_comm_steps=0.0, optimizer_s=0.0, head_stage_layers=0.0, max_stage_layers=6.0,
               other_stage_layers=16 / 3, layer_stages=3.0)
    p = dict(PARAMS, compute_scale=1.0, elementwise_scale=1.0)
    expect = _one_f_one_b_makespan([6.0, 5.0, 5.0, 4.0], [12.0, 10.0, 10.0, 8.0], m)
    got = float(steptime.compose(t, p, cuda_graphs=True).total_s)
    assert got == pytest.approx(expect, rel=0.02)
    assert got == pytest.approx((m - 1) * 18.0 + 12.0 + 3 * 16.0, rel=1e-9)  # hand sum of the formula
    even = float(steptime.compose(_terms(**{**vars(t), "head_stage_layers": None, "max_stage_layers": None,
                                            "other_stage_layers": None, "layer_stages": None}), p,
                                  cuda_graphs=True).total_s)
    assert even > 1.2 * expect


def test_pipeline_step_with_the_loss_on_a_stage_of_its_own_is_the_1f1b_makespan():
    """The 8B split at pp16 above, shrunk to four stages: three of 3, 2, 2 layers (each 1 s forward,
    2 s backward), the head's stage with 2 layers and the head's GEMMs (1.5 + 3 s), and the loss
    alone on a fifth stage (0.5 + 1 s, plus 0.2 + 0.2 s of logits received and their gradient sent).
    Every micro-batch passes the slowest stage (the head's, 10.5 s), the fill and drain each stage:
    31 x 10.5 + 10.5 + 1.9 + 3 x 7 = 358.9 s, against the simulated schedule's 357.0 s (the busiest
    layer stage first hides part of the fill, as above); keeping the loss on the head's stage
    would charge every micro-batch 1.5 s more."""
    m = 32
    t = _terms(n_micro=float(m), pp=5.0, gpu_mb_s=3.0 * 3 + 4.5 + 1.5, gemm_mb_s=3.0 * 3 + 4.5, attention_mb_s=0.0,
               head_gemm_mb_s=4.5, head_other_mb_s=1.5, tp_intra_mb_s=0.0, p2p_mb_s=0.0, pp_cross=0.0,
               host_layers_mb=3.0, dp_comm_wire_s=0.0, dp_comm_steps=0.0, optimizer_s=0.0, head_stage_layers=2.0,
               max_stage_layers=3.0, other_stage_layers=7 / 3, loss_stage_apart=1.0, loss_p2p_mb_s=0.4,
               layer_stages=3.0)
    p = dict(PARAMS, compute_scale=1.0, elementwise_scale=1.0)
    got = float(steptime.compose(t, p, cuda_graphs=True).total_s)
    assert got == pytest.approx(31 * 10.5 + 10.5 + 1.9 + 3 * 7.0, rel=1e-9)
    expect = _one_f_one_b_makespan([3.0, 2.0, 2.0, 2.0 + 1.5, 0.5 + 0.2], [6.0, 4.0, 4.0, 4.0 + 3.0, 1.0 + 0.2], m)
    assert got == pytest.approx(expect, rel=0.01)
    together = float(steptime.compose(_terms(**{**vars(t), "loss_stage_apart": None, "loss_p2p_mb_s": None}), p,
                                      cuda_graphs=True).total_s)
    assert together > got + 0.9 * 1.5 * m


def test_train_refuses_what_the_framework_cannot_run():
    """nanotron's profile runs ZeRO-0/1 and no interleaved schedule (optim/zero.py shards optimizer
    states only; pipeline_parallel/engine.py has AFAB and 1F1B engines): `train` says so, as `search`
    does, instead of timing a layout the framework has no code for."""
    import costmodel

    kw = dict(devices=16, global_batch=64, seq_len=4096, framework="nanotron")
    with pytest.raises(InputError, match="ZeRO stages 0, 1"):
        costmodel.train("llama3-8b", "dgx-h100", zero_stage=3, **kw)
    with pytest.raises(InputError, match="interleaved"):
        costmodel.train("llama3-8b", "dgx-h100", pp=16, interleave=2, **kw)
    assert costmodel.train("llama3-8b", "dgx-h100", zero_stage=1, **kw).step.total_s > 0


def test_pipeline_stall_reports_the_outcome_of_smaller_expected_relative_error():
    """A 10 s step that a stall makes 20 s: reporting 10 s misses a stalled run by 50% (chance p),
    reporting 20 s misses an unstalled one by 100% (chance 1 - p); 20 s is the better report once
    0.5 p > 1.0 (1 - p), p > 2/3."""
    for p, expect in ((0.6, 0.0), (0.65, 0.0), (0.68, 10.0), (0.9, 10.0)):
        added, risk = steptime.pipeline_stall(10.0, 5.0, 2.0, p)  # 5 slots x 2 s
        assert float(risk) == 10.0
        assert float(added) == expect, p
        # the choice is the one of smaller expected relative error, computed here directly
        miss_a, miss_b = p * 10.0 / 20.0, (1 - p) * 10.0 / 10.0
        assert (float(added) > 0) == (miss_b < miss_a)


def test_expected_step_time_weighs_the_stall_by_its_chance():
    """The mean over runs: a 10 s unstalled step that a stall makes 20 s, with chance 0.3 (left out
    of the point estimate): 10 + 0.3 x 10 = 13 s; with chance 0.9 (reported: 20 s): 20 - 10 + 9 = 19 s."""
    assert float(steptime.expected_step_s(10.0, 0.0, 10.0, 0.3)) == pytest.approx(13.0)
    assert float(steptime.expected_step_s(20.0, 10.0, 10.0, 0.9)) == pytest.approx(19.0)
    assert float(steptime.expected_step_s(7.0, 0.0, 0.0, 0.0)) == 7.0  # no stall risk: the step time


def test_train_and_search_rank_by_the_expected_step_time():
    """Llama 3 8B on 32 nodes (256 H100s), nanotron, two pipeline stages: the shipped cluster stalls
    52% of such runs (0.1316 + 0.8684 / (1 + (34.14 / 32)^3.391)), too few to report the stall, so
    the step time leaves it out and the expected time adds p times it. search ranks by the expected
    time, so a layout of a longer step can rank above one whose stall costs more, and each
    candidate's expected time is train's for the same layout."""
    import costmodel

    res = costmodel.search("llama3-8b", "dgx-h100", 256, global_batch=256, seq_len=4096, framework="nanotron",
                           pp=[2], top=4)
    p = 0.1316 + 0.8684 / (1 + (34.14 / 32) ** 3.391)
    exp = [c.expected_step_s for c in res.top]
    assert exp == sorted(exp)
    for c in res.top:
        st = c.pipeline_stall
        assert st["probability"] == pytest.approx(p, rel=1e-9) and not st["included"]
        assert c.expected_step_s == pytest.approx(c.step_s + p * st["stalled_extra_s"], rel=1e-12)
        lay = c.layout
        est = costmodel.train("llama3-8b", "dgx-h100", devices=256, tp=lay.tp, pp=lay.pp, cp=lay.cp, ep=lay.ep,
                              interleave=lay.interleave, sequence_parallel=lay.sequence_parallel,
                              zero_stage=lay.zero_stage, micro_batch=lay.micro_batch, recompute=lay.recompute,
                              offload_optimizer=lay.offload_optimizer, global_batch=256, seq_len=4096,
                              framework="nanotron")
        assert est.expected_step_s == pytest.approx(c.expected_step_s, rel=1e-12)
    steps = [c.step_s for c in res.top]
    assert steps != sorted(steps)  # a shorter step with a costlier stall ranks lower


def test_search_table_shows_the_expected_step_time_it_ranks_by(capsys):
    """Where a top layout's stall risk makes its expected step time differ from its step time, the
    table shows both (an "expected" column) and says what the layouts are ranked by; elsewhere the
    column is left out."""
    from costmodel.cli.app import main

    args = ["search", "llama3-8b", "-H", "dgx-h100", "--global-batch", "256", "--seq-len", "4096", "--top", "3"]
    with pytest.raises(SystemExit) as e:
        main(args + ["--devices", "256", "--framework", "nanotron", "--pp", "2"])
    assert (e.value.code or 0) == 0
    out = capsys.readouterr().out
    assert "expected" in out and "ranked by their expected step time" in out
    with pytest.raises(SystemExit) as e:
        main(args + ["--devices", "8"])
    assert "expected" not in capsys.readouterr().out


def test_compose_adds_the_stall_to_pipeline_time():
    t = _terms(stall_slot_s=0.5, stall_p=0.99, stall_ops_slot=2.0, nodes=64.0)
    base = steptime.compose(_terms(), PARAMS)
    c = steptime.compose(t, PARAMS)
    slots = 4 + 2 - 1  # micro-batches + pp - 1
    assert float(c.stall_risk_s) == pytest.approx(slots * 0.5)
    assert float(c.total_s - base.total_s) == pytest.approx(slots * 0.5)
    assert float(c.pp_comm_s - base.pp_comm_s) == pytest.approx(slots * 0.5)
    low = steptime.compose(_terms(stall_slot_s=0.5, stall_p=0.2), PARAMS)
    assert float(low.total_s) == pytest.approx(float(base.total_s)) and float(low.stall_s) == 0.0


def test_pipeline_stall_probability_by_node_count():
    from costmodel.cluster import pipeline_stall_probability
    from costmodel.specs import PipelineStall

    st = PipelineStall(seconds_per_op="200 ms", base_rate=0.1, onset_nodes=32, onset_width=4)
    assert st.seconds_per_op_s == pytest.approx(0.2)
    assert float(pipeline_stall_probability(st, 32)) == pytest.approx(0.1 + 0.9 / 2)
    # twice the onset: (1/2)^4 = 1/16 -> 0.1 + 0.9 / (1 + 1/16)
    assert float(pipeline_stall_probability(st, 64)) == pytest.approx(0.1 + 0.9 * 16 / 17)
    assert float(pipeline_stall_probability(st, 1)) == pytest.approx(0.1, abs=1e-5)


def test_fit_pipeline_stall_recovers_a_planted_stall():
    """Runs that stall with a known chance by node count and a known time per cross-node send:
    the fit finds the time exactly (every stalled run carries it) and the chance's onset near
    the planted one."""
    from costmodel.cluster import pipeline_stall_probability
    from costmodel.specs import PipelineStall

    pytest.importorskip("scipy")
    rng = np.random.default_rng(1)
    truth = PipelineStall(seconds_per_op=0.25, base_rate=0.1, onset_nodes=24.0, onset_width=3.0)
    n = 4000
    nodes = rng.choice([1, 2, 4, 8, 16, 32, 64, 128], n).astype(float)
    pp = rng.choice([2.0, 4.0, 8.0], n)
    ops = np.where(nodes > 1, np.where(pp > 2, 4.0, 2.0), 0.0)
    n_micro = rng.choice([4.0, 16.0, 64.0], n)
    unstalled = rng.uniform(1.0, 5.0, n)
    p = np.where(ops > 0, pipeline_stall_probability(truth, nodes), 0.0)
    stalled = rng.random(n) < p
    measured = unstalled * rng.uniform(0.97, 1.03, n) + stalled * 0.25 * ops * (n_micro + pp - 1)
    terms = _terms(n_micro=n_micro, pp=pp, stall_ops_slot=ops, nodes=nodes)
    fit, count = profile_fit.fit_pipeline_stall(terms, measured, unstalled)
    assert count == int(stalled.sum())
    assert fit.seconds_per_op_s == pytest.approx(0.25, rel=0.02)
    assert fit.onset_nodes == pytest.approx(24.0, rel=0.15)
    assert fit.base_rate == pytest.approx(0.1, abs=0.03)
    # too few runs that could stall: no stall fitted
    assert profile_fit.fit_pipeline_stall(_terms(n_micro=n_micro[:3], pp=pp[:3], stall_ops_slot=ops[:3],
                                                 nodes=nodes[:3]), measured[:3], unstalled[:3])[0] is None


def test_train_reports_the_shipped_pipeline_stall():
    """Llama 3 8B over 64 nodes, tp 8 pp 4 dp 16, 32 micro-batches: a stage per node, so middle
    stages send and receive across nodes both ways, 4 operations per slot, 32 + 3 slots at the
    shipped 219.5 ms each (data/frameworks/nanotron.yaml); 64 nodes stall with chance
    0.1316 + 0.8684 / (1 + (34.14 / 64)^3.391) = 0.908, enough to report the stalled time."""
    import costmodel

    est = costmodel.train("llama3-8b", "dgx-h100", devices=512, tp=8, pp=4, global_batch=512, seq_len=4096,
                          micro_batch=1, framework="nanotron")
    st = est.pipeline_stall
    assert st["stalled_extra_s"] == pytest.approx(35 * 4 * 0.2195, rel=1e-9)
    assert st["probability"] == pytest.approx(0.1316 + 0.8684 / (1 + (34.14 / 64) ** 3.391), rel=1e-9)
    assert st["included"] and any("pipeline stall risk" in n for n in est.notes)
    # one node per pipeline stage at 4 nodes: a 13% chance, left out of the step time
    small = costmodel.train("llama3-8b", "dgx-h100", devices=32, tp=8, pp=4, global_batch=512, seq_len=4096,
                            micro_batch=1, framework="nanotron")
    assert not small.pipeline_stall["included"]
    assert small.pipeline_stall["probability"] == pytest.approx(0.1316 + 0.8684 / (1 + (34.14 / 4) ** 3.391))


def test_sixteen_runs_keep_the_cluster_and_carry_to_the_others(playbook):
    """fit-profile on 16 random runs of one model: too few multi-node runs to pin the cluster's
    step latency or the stall's chance by node count (profile_fit.LATENCY_MIN_RUNS,
    STALL_CHANCE_MIN_RUNS), so the start profile's stay, and the fit predicts the model's other
    runs about as well as the profile fitted on all 1,017 (measured: within 4.5 points for these
    three draws; with the latency free, 2 of 12 draws moved it to 360-400 us and missed the others
    by 37-53%)."""
    prof = frameworks.resolve("nanotron")
    runs = profile_fit.run_set(playbook, prof)
    one_b = np.array(["/1B/" in n for n in runs.names])
    idx = np.nonzero(one_b)[0]
    shipped = profile_fit.predict(runs, prof, step_latency_s=prof.cluster_step_latency_s)
    for seed in (0, 3, 4):
        pick = np.random.default_rng(seed).choice(idx, 16, replace=False)
        rest = np.setdiff1d(idx, pick)
        sub = profile_fit.RunSet([runs.names[i] for i in pick], [runs.groups[i] for i in pick], runs.measured[pick],
                                 profile_fit._subset(runs.terms, pick))
        res = profile_fit.fit_profile(sub, prof, folds=0)
        assert not res.latency_fitted and res.step_latency_s == prof.cluster_step_latency_s
        assert res.pipeline_stall is None or res.pipeline_stall["base_rate"] == prof.scaling.pipeline_stall.base_rate
        pred = profile_fit.predict(runs, prof, res.values, res.step_latency_s)
        err = float(np.mean(np.abs(pred[rest] / runs.measured[rest] - 1.0)))
        ref = float(np.mean(np.abs(shipped[rest] / runs.measured[rest] - 1.0)))
        assert err < ref + 0.045, (seed, err, ref)


def test_fused_loss_moves_eight_bytes_a_logit():
    """settings.loss_kernel "fused": the bf16 logits read twice forward (row maximum, sum of
    exponentials) and once backward, the bf16 gradient written once: 8 bytes a logit, against
    Megatron-LM's unfused 38 + 14 (training.cross_entropy_s). At 4096 x 131072 logits both are
    memory-bound, so the times stand as the bytes do."""
    from costmodel.specs import load_library
    from costmodel.training import cross_entropy_s, step_efficiency
    from costmodel.workload import TrainJob

    spec = load_library().device("h100-sxm")
    fused = TrainJob(micro_batch=1, seq_len=4096, global_batch=1, framework="megatron", profile="torchtitan-compile")
    mega = TrainJob(micro_batch=1, seq_len=4096, global_batch=1, framework="megatron")
    t_fused = cross_entropy_s(step_efficiency(spec, None, frameworks.resolve("torchtitan-compile")), fused, 4096, 131072, 1)
    t_mega = cross_entropy_s(step_efficiency(spec, None, frameworks.resolve("megatron")), mega, 4096, 131072, 1)
    assert t_fused / t_mega == pytest.approx(8 / 52, rel=0.02)
    # ~4.3 GB at the H100's HBM rate: about 1.5 ms
    assert 1.2e-3 < t_fused < 2.0e-3


def test_nanotron_zero1_reduces_gradients_in_one_call_after_the_backward():
    """nanotron with fp32 gradient accumulation and ZeRO-1 does not wrap the model in DDP (trainer.py
    make_ddp): its whole fp32 gradient buffer is all-reduced in one call once the backward is done,
    then the parameters all-gathered; without ZeRO, DDP's hook all-reduces bucket by bucket during
    the last backward. Ring steps by hand over 32 ranks on 4 nodes: an all-reduce takes the tree's
    2 log2 32 = 10, an all-gather 31."""
    import math

    from costmodel.arch import load_model
    from costmodel.specs import load_library
    from costmodel.training import estimate_train
    from costmodel.workload import TrainJob

    lib = load_library()
    m = load_model("llama2-7b")
    job = TrainJob(micro_batch=1, seq_len=2048, global_batch=64, **frameworks.job_fields("nanotron"))

    def est(zero):
        return estimate_train(m, lib.device("h100-sxm"), job, Parallel(tp=1, pp=1, dp=32, zero_stage=zero),
                              node=lib.node_for("dgx-h100"), profile=frameworks.resolve("nanotron"))

    z1, z0 = est(1), est(0)
    assert z1.terms.dp_comm_steps == 10 + 31
    assert z1.terms.dp_window_s == 0.0
    lat = frameworks.resolve("nanotron").cluster_step_latency_s
    assert z1.step.dp_comm_exposed_s == pytest.approx(z1.terms.dp_comm_wire_s + 41 * lat, rel=1e-12)
    buckets = math.ceil(2.0 * m.params / (25 * 1024 * 1024))  # bf16 gradients per 25 MiB bucket
    assert z0.terms.dp_comm_steps == pytest.approx(10 * buckets, rel=0.01)
    assert z0.terms.dp_window_s > 0.0
    assert z0.step.dp_comm_exposed_s < z0.terms.dp_comm_wire_s + z0.terms.dp_comm_steps * lat


@pytest.mark.parametrize("framework, per_matmul", [("megatron", False), ("torchtitan", True), ("torchtitan-compile", True)])
def test_selective_recompute_as_the_framework_means_it(framework, per_matmul):
    """--recompute selective re-runs the attention core under Megatron (Korthikanti et al. 2022);
    under torchtitan's per-op checkpointing the attention is saved and every second matmul of a
    block re-runs with the elementwise ops: the step grows by the layers' share of the forward GEMM
    time (flops.every_other_matmul_share) and their elementwise forward, per micro-batch."""
    from costmodel.arch import load_model
    from costmodel.flops import every_other_matmul_share
    from costmodel.specs import load_library
    from costmodel.workload import TrainJob

    lib = load_library()
    spec, m = lib.device("h100-sxm"), load_model("llama3.1-8b")
    par = Parallel(tp=1, pp=1, dp=1)
    jobs = {rc: TrainJob(micro_batch=1, seq_len=4096, global_batch=4, recompute=rc, **frameworks.job_fields(framework))
            for rc in ("none", "selective")}
    none, sel = (training.estimate_train(m, spec, jobs[rc], par) for rc in ("none", "selective"))
    prof = frameworks.resolve(framework)
    assert prof.settings.selective_recompute == ("every-other-matmul" if per_matmul else "attention-core")
    eff = training.step_efficiency(spec, None, prof)
    g_f, _, a_f, _, e_f, _ = training._layer_times(eff, m, jobs["none"], par, 1, 4096, "bf16", spec)
    layers, n_micro = m.layers, 4
    d_compute, d_attention = sel.step.compute_s - none.step.compute_s, sel.step.attention_s - none.step.attention_s
    d_elementwise = sel.step.elementwise_s - none.step.elementwise_s
    if per_matmul:
        assert d_compute == pytest.approx(n_micro * layers * every_other_matmul_share(m) * g_f, rel=1e-9)
        assert d_elementwise == pytest.approx(n_micro * layers * e_f, rel=1e-9) and d_attention == 0.0
    else:
        assert d_attention == pytest.approx(n_micro * layers * a_f, rel=1e-9) and d_compute == 0.0
    # hardware FLOPs count what re-runs: wk, wo and w3 of 32 layers for 4 x 4096 tokens, or the
    # attention core (scores over the full s x s, the model-FLOPs convention)
    from costmodel.flops import attention_core_flops

    redo = (2 * 4 * 4096 * 4096 * (1024 + 4096 + 14336) * 32 if per_matmul
            else 32 * attention_core_flops(m, 4, 4096, causal=False))
    assert sel.hardware_flops_per_step - sel.model_flops_per_step == pytest.approx(redo, rel=1e-9)
    assert sel.mfu < none.mfu
