"""Serving capacity plans: `costmodel serve --target-rate` (costmodel.serve_plan) and `check` plans
with a `serve:` section. The rate search is checked against a closed form, and the replicas, prices
and percentiles against re-runs of estimate_serve and hand arithmetic, never copied from the plan."""
import json
import math
from types import SimpleNamespace

import pytest
import yaml

from costmodel.cli.app import main
from costmodel.serve_plan import Layout, layouts, max_rate_under_targets, plan_serving

H100_PRICE = 2.99  # USD per device-hour, hardware/h100-sxm.yaml (Lambda 8x H100 SXM list price)


def run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def fake_run(capacity: float, base_s: float):
    """A replica whose p99 TTFT follows an M/M/1-like curve: base / (1 - rate / capacity), and
    whose max-load request rate is the capacity."""

    def run(load, value):
        rate = capacity if load == "max_load" else value
        ttft = base_s / (1.0 - rate / capacity) if rate < capacity else float("inf")
        return SimpleNamespace(requests_per_s=capacity, ttft_s={"p99": ttft}, tpot_s={"p99": 0.01})

    return run


def test_rate_search_against_the_closed_form():
    # 10 ms / (1 - r / 100) <= 50 ms  <=>  r <= 100 (1 - 10 / 50) = 80 requests/s
    rate, why = max_rate_under_targets(fake_run(100.0, 0.010), 0.050, None)
    assert why == "" and 80.0 / 1.02 <= rate <= 80.0
    # a p99 TPOT target above what the replica does changes nothing; one below it rules it out
    assert max_rate_under_targets(fake_run(100.0, 0.010), 0.050, 0.02)[0] == rate
    rate, why = max_rate_under_targets(fake_run(100.0, 0.010), 0.050, 0.005)
    assert rate == 0.0 and "TPOT" in why
    # 10 ms already at the lowest rate: a 9 ms target cannot be met at any rate
    rate, why = max_rate_under_targets(fake_run(100.0, 0.010), 0.009, None)
    assert rate == 0.0 and "even at" in why


def test_layouts_of_dense_and_moe_models():
    from costmodel.arch import load_model

    dense = layouts(load_model("llama3.1-70b"), 8)
    assert [(x.tp, x.pp, x.ep) for x in dense if x.pp == 1] == [(1, 1, 1), (2, 1, 1), (4, 1, 1), (8, 1, 1)]
    assert {x.pp for x in dense} == {1, 2, 4, 8} and all(x.tp == 8 for x in dense if x.pp > 1)
    moe = layouts(load_model("mixtral-8x7b"), 8)
    assert (8, 1, 8) in [(x.tp, x.pp, x.ep) for x in moe] and (2, 1, 2) in [(x.tp, x.pp, x.ep) for x in moe]
    assert [(x.tp, x.ep) for x in moe if x.dp_attention] == [(2, 2), (4, 4), (8, 8)]
    assert not any(x.dp_attention for x in dense)


@pytest.fixture(scope="module")
def small_plan():
    from costmodel.arch import load_model
    from costmodel.specs import load_library

    lib = load_library()
    model = load_model("llama3.1-8b")
    spec = lib.device("h100-sxm")
    plan = plan_serving(model, [(spec, lib.node_for("h100-sxm"))], target_rate=150.0, ttft_p99_s=0.1,
                        input_len=512, output_len=64, num_requests=200, only=Layout(1))
    return model, spec, plan


def test_replicas_and_price_by_hand(small_plan):
    from costmodel.serving import estimate_serve

    model, spec, plan = small_plan
    c = plan.best
    assert plan.ok and c is plan.candidates[0] and c.feasible
    # the rate found meets the target when re-run, and 3% more misses it (the search's bracket is 2%)
    kw = dict(input_len=512, output_len=64, load="request_rate", num_requests=200)
    assert estimate_serve(model, spec, value=c.max_rate_per_replica, **kw).ttft_s["p99"] <= 0.1
    assert estimate_serve(model, spec, value=c.max_rate_per_replica * 1.03, **kw).ttft_s["p99"] > 0.1
    # replicas = ceil(R / per-replica rate), one device each, priced per device-hour
    assert c.replicas == math.ceil(150.0 / c.max_rate_per_replica) and c.replicas > 1
    assert c.devices == c.replicas
    assert c.usd_per_hour == pytest.approx(c.replicas * H100_PRICE)
    # $ per million output tokens: an hour of the replicas over an hour's output at 150 requests/s x 64 tokens
    assert c.usd_per_million_output_tokens == pytest.approx(c.replicas * H100_PRICE / (150 * 64 * 3600) * 1e6)
    # the percentiles reported are those at the target rate split over the replicas
    at = estimate_serve(model, spec, value=150.0 / c.replicas, **kw)
    assert c.ttft_p99_s == pytest.approx(at.ttft_s["p99"]) and c.ttft_p99_s <= 0.1


def test_tpot_is_per_request_decode_time(small_plan):
    from costmodel.serving import estimate_serve

    model, spec, _ = small_plan
    est = estimate_serve(model, spec, input_len=512, output_len=64, load="batch", value=1)
    # one request alone: (latency - TTFT) / 63 tokens is its time between tokens
    assert est.tpot_s["mean"] == pytest.approx((est.e2e_s["mean"] - est.ttft_s["mean"]) / 63)
    assert est.tpot_s["mean"] == pytest.approx(est.itl_s["mean"], rel=1e-6)


def test_cli_plans_across_hardware_and_exits_1_when_nothing_meets(capsys):
    args = ["serve", "llama3.1-8b", "--target-rate", "20", "--ttft-p99-ms", "400", "--tp", "1",
            "-H", "h100-sxm,a100-80gb-sxm", "--input-len", "512", "--output-len", "64", "--num-requests", "200"]
    code, out, err = run(args + ["--json"], capsys)
    assert code == 0, out + err
    d = json.loads(out)
    ok = [c for c in d["candidates"] if c["feasible"]]
    assert {c["hardware"] for c in d["candidates"]} == {"h100-sxm", "a100-80gb-sxm"}
    # the cheapest feasible one, each priced at replicas x its device's price per device-hour
    assert d["best"]["usd_per_hour"] == min(c["usd_per_hour"] for c in ok)
    for c in ok:
        assert c["replicas"] == math.ceil(20 / c["max_rate_per_replica"])
        assert c["usd_per_hour"] == pytest.approx(c["replicas"] * c["price_per_device_hour_usd"])
    # -H repeated is the same plan as -H with commas (the last -H alone used to be planned)
    rep = ["-H" if a == "-H" else ("h100-sxm" if a == "h100-sxm,a100-80gb-sxm" else a) for a in args] + ["-H", "a100-80gb-sxm"]
    code2, out2, _ = run(rep + ["--json"], capsys)
    assert code2 == 0 and json.loads(out2)["candidates"] == d["candidates"]
    code, out, err = run(args, capsys)
    assert code == 0 and "cheapest:" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    # one serving run is on one hardware: two are refused, naming the flag
    code, _, err = run(["serve", "llama3.1-8b", "--batch", "2", "-H", "h100-sxm", "-H", "a100-80gb-sxm"], capsys)
    assert code == 2 and "'hardware'" in err
    # a 1 ms TTFT cannot be met: exit 1, and the reason is printed
    code, out, err = run(["serve", "llama3.1-8b", "--target-rate", "5", "--ttft-p99-ms", "1", "--tp", "1",
                          "--input-len", "512", "--output-len", "16", "--num-requests", "50"], capsys)
    assert code == 1 and "no layout meets the targets" in out
    # planning takes no load of its own, and needs both targets
    assert run(["serve", "llama3.1-8b", "--target-rate", "5", "--ttft-p99-ms", "100", "--concurrency", "4"], capsys)[0] == 2
    code, _, err = run(["serve", "llama3.1-8b", "--target-rate", "5"], capsys)
    assert code == 2 and "ttft-p99-ms" in err


def _serve_plan(tmp_path, **serve):
    data = {"model": "llama3.1-8b", "hardware": "h100-sxm",
            "serve": {"engine": "vllm", "input_len": 512, "output_len": 64, "num_requests": 200, **serve},
            "run": {"tokens": 1.0e8},
            "limits": {"max_ttft_p99_ms": 250, "min_tokens_per_s": 500, "max_cost_usd": 1000}}
    p = tmp_path / "serve.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_check_serve_plan_against_estimate_serve(tmp_path, capsys):
    from costmodel.arch import load_model
    from costmodel.serving import estimate_serve
    from costmodel.specs import load_library

    est = estimate_serve(load_model("llama3.1-8b"), load_library().device("h100-sxm"), input_len=512, output_len=64,
                         load="request_rate", value=10.0, num_requests=200)
    code, out, err = run(["check", str(_serve_plan(tmp_path, request_rate=10)), "--json"], capsys)
    assert code == 0, out + err
    r = json.loads(out)[0]
    assert r["kind"] == "serve" and r["ok"] and r["devices"] == 1
    assert r["predicted"]["max_ttft_p99_ms"] == pytest.approx(est.ttft_s["p99"] * 1e3)
    assert r["predicted"]["min_tokens_per_s"] == pytest.approx(est.output_tokens_per_s)
    # 1e8 output tokens at that rate, one device at $2.99 an hour
    assert r["predicted"]["max_cost_usd"] == pytest.approx(1e8 / est.output_tokens_per_s / 3600 * H100_PRICE)
    # far past what one H100 serves: the p99 TTFT target is missed, exit 1
    code, out, _ = run(["check", str(_serve_plan(tmp_path, request_rate=200))], capsys)
    assert code == 1 and "max_ttft_p99_ms" in out and "FAIL" in out


def test_failing_serve_plan_names_the_nearest_passing_layout_under_its_load(tmp_path, capsys):
    """A serve plan that misses p99 TPOT at its request rate: the nearest passing layout (one knob:
    tp doubled, fp8 KV cache, fp8 or int8 weights) is, among the one-knob layouts whose p99 TPOT
    (estimate_serve under the same load) holds, the one with the shortest mean TPOT."""
    from costmodel.arch import load_model
    from costmodel.serving import estimate_serve
    from costmodel.specs import load_library

    m, spec = load_model("llama3.1-8b"), load_library().device("h100-sxm")

    def est(**kw):
        return estimate_serve(m, spec, input_len=512, output_len=64, load="request_rate", value=10.0,
                              num_requests=200, **kw)

    base = est()
    limit = 0.8 * base.tpot_s["p99"] * 1e3
    ones = {(k, v): est(**{k: v}) for k, v in (("tp", 2), ("kv_dtype", "fp8"), ("weight_dtype", "fp8"),
                                               ("weight_dtype", "int8"))}
    ok = {kv: e for kv, e in ones.items() if e.tpot_s["p99"] * 1e3 <= limit and e.ttft_s["p99"] * 1e3 <= 250}
    assert ok and len(ok) < len(ones)  # the limit tells the neighbours apart
    (knob, to), best = min(ok.items(), key=lambda kv: kv[1].tpot_s["mean"])
    plan = _serve_plan(tmp_path, request_rate=10)
    data = yaml.safe_load(plan.read_text())
    data["limits"] = {"max_ttft_p99_ms": 250, "max_tpot_p99_ms": limit}
    plan.write_text(yaml.safe_dump(data))
    code, out, _ = run(["check", str(plan), "--json"], capsys)
    r = json.loads(out)[0]
    assert code == 1 and not r["ok"] and r["searched"] >= len(ones)
    nb = r["nearest_passing"]
    assert nb["changes"] == {knob: {"from": {"tp": 1}.get(knob, "bf16"), "to": to}}
    assert nb["step_s"] == pytest.approx(best.tpot_s["mean"], rel=1e-9)
    got = {c["limit"]: c["predicted"] for c in nb["checks"]}
    assert got["max_tpot_p99_ms"] == pytest.approx(best.tpot_s["p99"] * 1e3, rel=1e-9)
    code, out, _ = run(["check", str(plan)], capsys)
    assert code == 1 and "nearest passing layout (1 change)" in " ".join(out.split())


@pytest.mark.parametrize("serve,field", [({"request_rate": 5, "concurrency": 4}, "serve.load"), ({}, "serve.load"),
                                         ({"request_rate": 5, "engine": "tgi"}, "serve.engine")])
def test_bad_serve_plans_exit_2(tmp_path, capsys, serve, field):
    code, _, err = run(["check", str(_serve_plan(tmp_path, **serve))], capsys)
    assert code == 2 and f"field '{field}'" in err


def test_serve_only_limits_are_refused_elsewhere(tmp_path, capsys):
    data = {"model": "llama3.1-8b", "hardware": "h100-sxm", "inference": {"batch": 1},
            "limits": {"max_ttft_p99_ms": 100}}
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(data))
    code, _, err = run(["check", str(p)], capsys)
    assert code == 2 and "limits.max_ttft_p99_ms" in err and "serve plans only" in err
