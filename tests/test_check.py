"""`costmodel check` and costmodel.check: plan files against limits, exit codes, JUnit, the
nearest passing layout, and the --plot outputs. Expected numbers are derived by hand (ZeRO /
Megatron bytes per parameter, Korthikanti full-recompute activations, the HF loss buffers), and
neighbours are re-evaluated with the plain estimators, never copied from check's output."""
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

import costmodel
from costmodel.cli.app import main
from costmodel.plan import infer, train

ROOT = Path(__file__).resolve().parents[1]
PLANS = sorted((ROOT / "plans").glob("*.yaml"))
FIXTURES = ROOT / "tests" / "fixtures" / "plans"
TOO_BIG = FIXTURES / "too-big.yaml"
INVALID = FIXTURES / "invalid.yaml"

GIB = 2**30
MIB = 2**20
# Llama 2 7B (HF config: 32 layers, hidden 4096, ffn 11008, vocab 32000, untied embeddings,
# RMSNorm): 4h^2 attention + 3hf SwiGLU MLP + 2 norms per layer, embedding + head, final norm.
L, H, F, V = 32, 4096, 11008, 32000
LLAMA2_7B_PARAMS = L * (4 * H * H + 3 * H * F + 2 * H) + 2 * V * H + H
H100_BYTES = 81559 * MIB  # nvidia-smi total of an H100 SXM 80GB
H200_BYTES = 143771 * MIB  # nvidia-smi total of an H200 SXM
# What the CUDA context and allocator fragmentation add to max_memory_allocated (the fits rule
# documented in costmodel/memory.py): +3% and 0.5 GiB.
FRAG, CONTEXT_BYTES = 0.03, 0.5 * GIB


def run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def write_plan(tmp_path, data, name="plan.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_params_hand_count_matches_published():
    assert LLAMA2_7B_PARAMS == 6_738_415_616  # Touvron et al. 2023 / HF checkpoint


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.name)
def test_shipped_plans_fit(plan, capsys):
    code, out, err = run(["check", str(plan)], capsys)
    assert code == 0, out + err
    assert "every limit holds" in out


def test_shipped_plans_cover_training_and_inference():
    kinds = {("training" in yaml.safe_load(p.read_text())) for p in PLANS}
    assert kinds == {True, False} and len(PLANS) >= 2


def test_unexpanded_glob_is_expanded(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, out, _ = run(["check", "plans/*.yaml", "--json"], capsys)
    assert code == 0
    assert len(json.loads(out)) == len(PLANS)


def test_too_big_fails_on_memory(capsys):
    """DDP keeps 4 (fp32 params) + 4 (grads) + 8 (Adam moments) = 16 bytes per parameter on every
    GPU: that alone is > 1.3 x an H100, so the fraction must exceed the limit."""
    code, out, err = run(["check", str(TOO_BIG), "--json"], capsys)
    assert code == 1, err
    (res,) = json.loads(out)
    assert not res["ok"] and res["file"].endswith("too-big.yaml")
    (c,) = res["checks"]
    assert c["limit"] == "max_memory_fraction" and not c["passed"] and c["value"] == 0.9
    states_only = (16 * LLAMA2_7B_PARAMS * (1 + FRAG) + CONTEXT_BYTES) / H100_BYTES
    assert states_only > 1.3
    assert c["predicted"] >= states_only
    assert c["margin"] < 0 and c["missed_by"] == pytest.approx(c["predicted"] - 0.9)


def test_too_big_table_names_the_limit_and_the_miss(capsys):
    code, out, _ = run(["check", str(TOO_BIG)], capsys)
    assert code == 1
    assert "max_memory_fraction" in out and "missed by" in out and "limit 0.9" in out
    assert "nearest passing layout" in out


def _megatron_single_h200(limit):
    return {"model": "llama2-7b", "hardware": "h200-sxm",
            "training": {"framework": "megatron", "micro_batch": 1, "seq_len": 4096, "recompute": "full"},
            "limits": {"max_memory_fraction": limit}}


def hand_fraction_megatron_h200():
    """Megatron-LM on one H200, llama2-7b, micro-batch 1 x 4096, full recompute. Peak at the
    start of backward:
      18 bytes/param (bf16 weights 2 + fp32 main grads 4 + fp32 master 4 + Adam 8)
      + 4 x 32 MiB cuBLAS workspaces
      + layer inputs kept by full recompute: L x 2sbh (Korthikanti et al. 2022, sec. 4.3)
      + fp32 final-norm output 4sbh
      + loss buffers at backward start: 12 bytes per logit (log-probs, their grad, logits grad)
    required = peak x 1.03 + 0.5 GiB."""
    s = b = 1
    s = 4096
    peak = 18 * LLAMA2_7B_PARAMS + 4 * 32 * MIB + L * 2 * s * b * H + 4 * s * b * H + 12 * s * b * V
    return (peak * (1 + FRAG) + CONTEXT_BYTES) / H200_BYTES


def test_memory_limit_just_below_hand_fraction_fails(tmp_path, capsys):
    frac = hand_fraction_megatron_h200()
    assert 0.8 < frac < 0.9  # 121 GB of states + ~2.7 GB of activations and loss on 150.8 GB
    below = write_plan(tmp_path, _megatron_single_h200(round(frac * 0.99, 4)), "below.yaml")
    above = write_plan(tmp_path, _megatron_single_h200(round(frac * 1.01, 4)), "above.yaml")
    code, out, err = run(["check", str(below), "--no-search"], capsys)
    assert code == 1, err
    assert "max_memory_fraction" in out and "FAIL" in out
    code, out, err = run(["check", str(above), "--json"], capsys)
    assert code == 0, err
    (res,) = json.loads(out)
    assert res["checks"][0]["predicted"] == pytest.approx(frac, rel=0.01)


def test_invalid_plan_exits_2_naming_file_and_field(capsys):
    code, out, err = run(["check", str(INVALID)], capsys)
    assert code == 2
    assert "invalid.yaml" in err and "training.recompute" in err and "selective" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("change, field, words", [
    ({"model": "no-such-model"}, "model", "unknown model preset"),
    ({"hardware": "no-such-gpu"}, "hardware", "unknown hardware id"),
    ({"training": {"zero": 3}}, "training.zero", "zero_stage"),
    ({"limits": {"max_memory_fraction": 1.5}}, "limits.max_memory_fraction", "less than or equal to 1"),
    ({"limits": {"max_ttft_ms": 100}}, "limits.max_ttft_ms", "inference plans only"),
    ({"limits": {}}, "limits", "no limit given"),
    ({"limits": {"max_days": 3}}, "limits.max_days", "run.steps or run.tokens"),
    ({"training": {"tp": 3}}, "devices", "tp*pp*cp"),
    ({"inference": {"batch": 1}}, "training", "exactly one"),
    ({"training": {"ep": 3}}, "training.ep", "ep (3) must divide"),
])
def test_bad_plans_exit_2(tmp_path, capsys, change, field, words):
    data = {"model": "llama2-7b", "hardware": "dgx-h100", "nodes": 1,
            "training": {"zero_stage": 3, "micro_batch": 1, "seq_len": 4096}, "limits": {"max_memory_fraction": 0.9}}
    data.update(change)
    p = write_plan(tmp_path, data)
    code, _, err = run(["check", str(p)], capsys)
    assert code == 2, err
    assert str(p) in err and f"field '{field}'" in err and words in err, err


def test_not_a_mapping_and_missing_file(tmp_path, capsys):
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    code, _, err = run(["check", str(p)], capsys)
    assert code == 2 and "list.yaml" in err
    code, _, err = run(["check", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "does not exist" in err


def _limits_in(path):
    return len([v for v in yaml.safe_load(path.read_text())["limits"].values() if v is not None])


def test_junit_counts(tmp_path, capsys):
    report = tmp_path / "report.xml"
    files = [str(p) for p in PLANS] + [str(TOO_BIG)]
    code, _, _ = run(["check", *files, "--junit", str(report)], capsys)
    assert code == 1
    suite = ET.parse(report).getroot()
    assert suite.tag == "testsuite"
    cases = suite.findall("testcase")
    expected = sum(_limits_in(Path(f)) for f in files)
    assert len(cases) == expected == int(suite.get("tests"))
    failed = [c for c in cases if c.find("failure") is not None]
    assert len(failed) == 1 == int(suite.get("failures"))
    assert failed[0].get("name") == "max_memory_fraction"
    assert "too-big" in failed[0].get("classname")
    assert "missed by" in failed[0].find("failure").get("message")


def test_junit_with_an_invalid_plan_is_an_error(tmp_path, capsys):
    report = tmp_path / "report.xml"
    code, _, err = run(["check", str(PLANS[0]), str(INVALID), "--junit", str(report)], capsys)
    assert code == 2 and "training.recompute" in err
    suite = ET.parse(report).getroot()
    assert int(suite.get("errors")) == 1
    assert len(suite.findall("testcase")) == _limits_in(PLANS[0]) + 1


def test_nearest_passing_really_passes_and_is_nearest(capsys):
    code, out, _ = run(["check", str(TOO_BIG), "--json"], capsys)
    assert code == 1
    nb = json.loads(out)[0]["nearest_passing"]
    assert nb is not None
    lay = nb["layout"]
    # The global batch (64) and the devices (8) are kept.
    assert lay["global_batch"] == 64 and lay["tp"] * lay["pp"] * lay["cp"] * lay["dp"] == 8
    kw = {k: lay[k] for k in ("tp", "pp", "cp", "zero_stage", "micro_batch", "global_batch", "seq_len",
                              "recompute", "framework", "offload_optimizer")}
    est = train("llama2-7b", "dgx-h100", nodes=1, **kw)
    assert est.required_bytes / est.capacity_bytes <= 0.9
    # No single change of the plan passes (so two changes is the fewest): re-evaluated here.
    base = dict(tp=1, pp=1, zero_stage=0, micro_batch=4, global_batch=64, seq_len=4096, recompute="none",
                framework="pytorch", offload_optimizer="none")
    singles = [{"zero_stage": z} for z in (1, 2, 3)] + [{"recompute": r} for r in ("selective", "full")] + \
        [{"micro_batch": m} for m in (1, 2, 8)] + [{"tp": 2}, {"pp": 2}, {"offload_optimizer": "cpu"}]
    for upd in singles:
        e = train("llama2-7b", "dgx-h100", nodes=1, **{**base, **upd})
        assert e.required_bytes / e.capacity_bytes > 0.9, upd
    assert len(nb["changes"]) == 2


def test_inference_tpot_failure_and_neighbour(tmp_path, capsys):
    """A per-token latency limit below the batch-16 decode step fails; the suggested neighbour
    meets it when re-run through costmodel.plan.infer."""
    base = infer("llama3-8b", "h100-sxm", batch=16, prompt_len=1024, gen_len=256)
    limit_ms = round(base.tpot_s * 1e3 * 0.97, 3)
    p = write_plan(tmp_path, {"model": "llama3-8b", "hardware": "h100-sxm",
                              "inference": {"batch": 16, "prompt_len": 1024, "gen_len": 256},
                              "limits": {"max_tpot_ms": limit_ms}})
    code, out, _ = run(["check", str(p), "--json"], capsys)
    assert code == 1
    res = json.loads(out)[0]
    assert res["checks"][0]["limit"] == "max_tpot_ms" and not res["checks"][0]["passed"]
    nb = res["nearest_passing"]
    assert nb is not None and len(nb["changes"]) == 1
    lay = nb["layout"]
    e = infer("llama3-8b", "h100-sxm", **{k: lay[k] for k in ("tp", "batch", "prompt_len", "gen_len", "weight_dtype", "kv_dtype")})
    assert e.tpot_s * 1e3 <= limit_ms


def test_run_cost_and_days_by_hand(capsys):
    """Megatron plan: 5000 steps x step time on 8 GPUs at the spec's $2.99 per GPU-hour."""
    plan = ROOT / "plans" / "llama2-7b-megatron-8xh100.yaml"
    data = yaml.safe_load(plan.read_text())
    data["limits"].update({"max_cost_usd": 1e9, "max_days": 1e6})
    res = costmodel.check(data)
    est = train("llama2-7b", "dgx-h100", nodes=1, tp=2, sequence_parallel=True, zero_stage=1, micro_batch=1,
                global_batch=64, seq_len=4096, recompute="selective", framework="megatron")
    secs = 5000 * est.step.total_s
    assert res.predicted["max_days"] == pytest.approx(secs / 86400)
    assert res.predicted["max_cost_usd"] == pytest.approx(secs / 3600 * 8 * 2.99)
    assert res.predicted["min_tokens_per_s"] == pytest.approx(64 * 4096 / est.step.total_s)


def test_library_entry_point():
    res = costmodel.check(PLANS[0])
    assert res.ok and res.nearest_passing is None
    d = res.to_dict()
    assert d["ok"] is True and {"file", "checks", "nearest_passing"} <= set(d)
    assert all({"limit", "value", "predicted", "passed", "margin"} <= set(c) for c in d["checks"])
    # a mapping works too, and a bad one raises InputError (not a pydantic error)
    with pytest.raises(costmodel.InputError) as exc:
        costmodel.check({"model": "llama2-7b", "training": {}, "limits": {"min_mfu": 2}})
    assert exc.value.field == "limits.min_mfu"


# ------------------------------------------------------------------------------ --plot

def test_plot_without_matplotlib_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code, _, err = run(["train", "llama-110m", "--plot", str(tmp_path / "t.png")], capsys)
    assert code == 2
    assert "pip install 'costmodel[plot]'" in err and "plot" in err
    assert not (tmp_path / "t.png").exists()


@pytest.mark.parametrize("args", [
    ["roofline", "llama3-8b", "--seq-len", "4096"],
    ["train", "llama2-7b", "-H", "dgx-h100", "--nodes", "1", "--zero-stage", "3", "--micro-batch", "2", "--seq-len", "4096"],
    ["infer", "llama3-8b", "--batch", "16", "--prompt-len", "1024", "--gen-len", "256"],
], ids=["roofline", "train", "infer"])
def test_plots_written(tmp_path, capsys, args):
    pytest.importorskip("matplotlib")
    out = tmp_path / "p.png"
    code, _, err = run([*args, "--plot", str(out)], capsys)
    assert code == 0, err
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_train_plot_written_when_it_does_not_fit(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "big.png"
    code, _, _ = run(["train", "llama2-7b", "--seq-len", "4096", "--plot", str(out)], capsys)
    assert code == 0 and out.exists()  # "does not fit" is a result


def test_search_plot_from_a_result_shaped_object(tmp_path):
    pytest.importorskip("matplotlib")
    from types import SimpleNamespace as NS

    from costmodel.plots import search_plot

    lay = NS(tp=2, pp=1, dp=4, cp=1, zero_stage=1, micro_batch=1, recompute="selective")
    cands = [NS(layout=lay, step_s=s, cost_per_million_tokens_usd=c, mfu=0.4) for s, c in ((3.0, 0.08), (3.5, 0.07))]
    res = NS(model="llama2-7b", global_batch=64, seq_len=4096, top=cands, pareto=cands)
    out = search_plot(res, tmp_path / "s.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(costmodel.InputError):
        search_plot(NS(model="m", global_batch=1, seq_len=1, top=[], pareto=[]), tmp_path / "e.png")


def test_a_one_node_plan_names_devices_and_nodes_apart(capsys):
    # "training on 8 x dgx-h100" read as eight nodes: the devices are H100s, the node is one DGX
    plan = ROOT / "plans" / "llama2-7b-fsdp-8xh100.yaml"
    res = costmodel.check(plan, search=False)
    assert (res.devices, res.device, res.nodes) == (8, "h100-sxm", 1)
    code, out, _ = run(["check", str(plan), "--no-search"], capsys)
    flat = " ".join(out.split())
    assert code == 0 and "training on 8 x h100-sxm (1 dgx-h100 node)" in flat and "8 x dgx-h100" not in flat
    serve = costmodel.check(ROOT / "plans" / "llama3-8b-serve-h100.yaml", search=False)
    assert serve.nodes is None and serve.where == "1 x h100-sxm"


def test_plot_says_where_it_wrote(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    for args in (["train", "llama-1.3b"], ["infer", "llama-1.3b"], ["roofline", "llama-1.3b"],
                 ["search", "llama-1.3b", "--global-batch", "64", "--top", "2"],
                 ["scale", "--budget-usd", "1e5", "--hardware", "h100-sxm"]):
        png = tmp_path / f"{args[0]} plot.png"
        code, out, err = run([*args, "--plot", str(png)], capsys)
        assert code == 0 and png.exists()
        assert f"wrote plot {png}" in out, (args, out[-300:])
        code, out, err = run([*args, "--plot", str(png), "--json"], capsys)
        assert f"wrote plot {png}" in err and json.loads(out)


def test_search_plot_labels_tell_layouts_apart_and_its_pareto_line_shows(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from types import SimpleNamespace as NS

    from costmodel import plots

    base = dict(hardware="dgx-h100", devices=8, tp=2, pp=2, dp=2, cp=1, ep=1, interleave=1, sequence_parallel=False,
                zero_stage=1, micro_batch=1, grad_accum=4, recompute="none", offload_optimizer="none")
    variants = [base, {**base, "sequence_parallel": True}, {**base, "offload_optimizer": "cpu"},
                {**base, "interleave": 2}, {**base, "recompute": "selective"}, {**base, "recompute": "full"}]
    labels = [plots.layout_label(NS(**v)) for v in variants]
    assert len(set(labels)) == len(labels), labels
    res = costmodel.search("llama3-70b", "dgx-h100", "8..64", global_batch=512, seq_len=4096, top=20)
    keyed = {}
    for c in res.top:
        key = c.layout.model_dump(exclude={"hardware", "devices", "grad_accum"})
        keyed.setdefault(plots.layout_label(c.layout), set()).add(tuple(sorted(key.items())))
    assert all(len(v) == 1 for v in keyed.values()), keyed
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, plt, path: figs.append(fig) or Path(path))
    plots.search_plot(res, tmp_path / "s.png")
    ax = figs[0].axes[0]
    legend = ax.get_legend()
    (handle,) = [h for h, t in zip(legend.legend_handles, legend.get_texts()) if t.get_text().startswith("Pareto front")]
    (front,) = [ln for ln in ax.lines if ln.get_label().startswith("Pareto front")]
    dots = max(c.get_zorder() for c in ax.collections)
    # drawn above the layouts' dots (the front's layouts are among them and hid it), a solid line
    for ln in (handle, front):
        assert ln.get_visible() and ln.get_linestyle() == "-" and ln.get_linewidth() >= 2
    assert front.get_zorder() > dots


def test_plan_on_a_stalling_cluster_carries_the_stall_note(tmp_path, capsys):
    """A nanotron plan over 64 nodes with its pipeline across nodes: the profile's cluster stalls
    such runs 91% of the time (0.1316 + 0.8684 / (1 + (34.14 / 64)^3.391)); the check says so in
    its notes, in the JSON and under the table, whether or not the step time includes it."""
    plan = {"name": "nanotron 64 nodes", "model": "llama2-7b", "hardware": "dgx-h100", "nodes": 64,
            "training": {"tp": 2, "pp": 4, "sequence_parallel": True, "zero_stage": 1, "micro_batch": 1,
                         "global_batch": 512, "seq_len": 4096, "framework": "nanotron"},
            "limits": {"max_memory_fraction": 0.9}}
    f = tmp_path / "plan.yaml"
    f.write_text(yaml.safe_dump(plan))
    res = costmodel.check(f, search=False)
    stall = [n for n in res.notes if n.startswith("pipeline stall risk")]
    assert len(stall) == 1 and "91% of runs over 64 nodes" in stall[0]
    assert stall[0] in res.to_dict()["notes"]
    with pytest.raises(SystemExit) as e:
        main(["check", str(f), "--no-search"])
    assert e.value.code in (None, 0)
    assert "pipeline stall risk" in capsys.readouterr().out
