"""Speed benchmarks (pytest-benchmark). The suite runs them once with --benchmark-disable (see
pyproject.toml addopts) so they stay correct; `python -m pytest tests/test_benchmarks.py
--benchmark-enable` measures them (and checks each goal, _goal), and `--benchmark-autosave` /
`--benchmark-compare` track regressions. They are not timed asserts of the ordinary suite.
The goals are for an idle machine: on a loaded one, compare against a baseline run beside them."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from costmodel.plan import infer, train
from costmodel.search import search

ROOT = Path(__file__).resolve().parents[1]
GPT3 = dict(global_batch=1536, seq_len=2048, top=5)
# Issue #23: layouts screened per second of one core, on datasheet (dgx-a100) and calibrated (dgx-h100) hardware
SEARCH_LAYOUTS_PER_S = 2.5e6


def _goal(benchmark, seconds, stat="max"):
    """The goal holds where the benchmark is measured (--benchmark-enable): its slowest round (or
    another statistic: the median for calls of microseconds, whose slowest round is a scheduler's)."""
    benchmark.extra_info["goal_s"] = seconds
    if not benchmark.disabled:
        assert getattr(benchmark.stats.stats, stat) < seconds


@pytest.mark.parametrize("hardware", ["dgx-a100", "dgx-h100"])
def test_bench_search_175b_all_scales(benchmark, hardware):
    """Issues #6 and #23: every layout of GPT-3 175B on 8 to 16384 GPUs, at 2.5 million layouts per
    second (the screened layouts over the search's wall time)."""
    res = benchmark(search, "gpt3-175b", hardware, "8..16384", **GPT3)
    assert res.evaluated > 100_000 and res.top
    benchmark.extra_info["evaluated"] = res.evaluated
    benchmark.extra_info["layouts_per_s"] = res.evaluated / res.seconds
    _goal(benchmark, res.evaluated / SEARCH_LAYOUTS_PER_S, stat="median")


def test_bench_search_mixtral_all_scales(benchmark):
    """Issue #23: mixtral-8x7b on dgx-h100 over 8..16384 devices (1.6 million layouts) under 1.5 s."""
    res = benchmark.pedantic(search, args=("mixtral-8x7b", "dgx-h100", "8..16384"),
                             kwargs=dict(global_batch=1024, seq_len=4096, top=5), rounds=3, iterations=1)
    assert res.evaluated > 1_000_000 and res.top
    benchmark.extra_info["layouts_per_s"] = res.evaluated / res.seconds
    _goal(benchmark, 1.5)


WIDE = (("gpt3-175b", ["dgx-a100", "dgx-h100", "hgx-h200"], "8..16384"), GPT3)


def test_bench_search_three_node_kinds(benchmark):
    """Issue #23: the wide search (three node kinds, 1.7 million layouts) under 2 s."""
    res = benchmark.pedantic(search, args=WIDE[0], kwargs=WIDE[1], rounds=3, iterations=1)
    assert res.evaluated > 1_500_000 and len(res.hardware) == 3
    _goal(benchmark, 2.0)


def test_search_memory_is_bounded():
    """Issue #23: the wide search peaks under 300 MB of allocations (numpy's arrays included): the
    screen keeps a few numbers per layout and works in chunks."""
    import tracemalloc

    tracemalloc.start()
    try:
        res = search(*WIDE[0], **WIDE[1])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res.evaluated > 1_500_000
    assert peak < 300e6, f"{peak / 1e6:.0f} MB"


def test_bench_single_train_estimate(benchmark):
    """Issue #23: one train call on a preset at most 0.1 ms (warm: its inputs parsed, its estimate
    remembered; llm-analysis takes ~0.2 ms on the same job)."""
    est = benchmark(train, "llama2-7b", "dgx-h100", tp=2, pp=2, global_batch=64, seq_len=4096, micro_batch=1)
    assert est.step.total_s > 0
    _goal(benchmark, 0.1e-3, stat="median")


def test_bench_single_infer_estimate(benchmark):
    """Issue #23: one infer call on a preset at most 0.2 ms (warm)."""
    est = benchmark(infer, "llama2-7b", "dgx-h100")
    assert est.tpot_s > 0
    _goal(benchmark, 0.2e-3, stat="median")


def test_bench_twice_as_fast_as_llm_analysis(benchmark):
    """Issue #23: one train and one infer call at least twice as fast as llm-analysis's on the same
    jobs, measured side by side in one run (tools/compare_llm_analysis.py, which says how). Not a
    dependency: LLM_ANALYSIS_PYTHON names an interpreter that has llm-analysis installed (skipped
    without it). The goal is held on repeated calls (the estimate remembered); the computed and
    first-time calls' ratios are recorded beside it (``ratio_*_computed``, ``ratio_*_first``): the
    issue asks the same of a first-time call, not met yet (docs/usage.md, Speed)."""
    import importlib.util

    py = os.environ.get("LLM_ANALYSIS_PYTHON")
    if not py:
        pytest.skip("LLM_ANALYSIS_PYTHON (an interpreter with llm-analysis installed) is not set")
    spec = importlib.util.spec_from_file_location("compare_llm_analysis", ROOT / "tools" / "compare_llm_analysis.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    res = benchmark.pedantic(tool.compare, args=(py,), kwargs=dict(rounds=3, calls=100), rounds=1, iterations=1)
    benchmark.extra_info.update(res["seconds_per_call"])
    benchmark.extra_info.update({f"ratio_{k}": v for k, v in res["llm_analysis_over_costmodel"].items()})
    assert all(v > 0 for v in res["seconds_per_call"].values())
    if not benchmark.disabled:
        assert res["llm_analysis_over_costmodel"]["train"] >= 2 and res["llm_analysis_over_costmodel"]["infer"] >= 2, res


def test_bench_train_estimate_not_remembered(benchmark):
    """The estimate itself, computed every time (inputs parsed and GEMM times memoised, the estimate
    not remembered): what a sweep over layouts pays per new layout."""
    from costmodel import plan

    def fresh():
        plan._ESTIMATES.clear()
        return train("llama2-7b", "dgx-h100", tp=2, pp=2, global_batch=64, seq_len=4096, micro_batch=1)

    assert benchmark(fresh).step.total_s > 0


def test_bench_train_estimate_first_time(benchmark):
    """Issue #23: a first-time train estimate at most 0.1 ms (median): the sequence one token shorter
    every round, so that neither the estimate nor any of its GEMM shapes has been seen (inputs
    parsed; what a sweep over sequence lengths or micro-batches pays per point). Not met yet: on the
    development host (load 1.2-1.4) 0.28 ms fastest, 0.30-0.34 ms median (docs/usage.md, Speed; llm-analysis ~0.17 ms)."""
    import itertools

    new = itertools.count(1)
    est = benchmark(lambda: train("llama2-7b", "dgx-h100", tp=2, pp=2, global_batch=64, seq_len=4096 - next(new),
                                  micro_batch=1))
    assert est.step.total_s > 0 and est.job["seq_len"] < 4096
    _goal(benchmark, 0.1e-3, stat="median")


def test_bench_infer_estimate_first_time(benchmark):
    """Issue #23: a first-time infer estimate at most 0.2 ms (median): the prompt one token longer
    every round (no estimate seen before). On the development host (load ~0.7): 0.11 ms fastest,
    0.18 ms median, the throughput curve made only when it is read (docs/usage.md, Speed;
    llm-analysis ~0.19 ms)."""
    import itertools

    new = itertools.count(1)
    est = benchmark(lambda: infer("llama2-7b", "h100-sxm", prompt_len=512 + next(new), gen_len=128))
    assert est.tpot_s > 0 and est.job["prompt_len"] > 512
    _goal(benchmark, 0.2e-3, stat="median")


@pytest.mark.parametrize("args, goal", [(["--help"], 0.25), (["hardware", "list", "--json"], 0.25),
                                        (["train", "llama2-7b"], 0.35)], ids=["help", "hardware-list", "train"])
def test_bench_cli_start(benchmark, args, goal):
    """Issue #23: the command line's wall time from a cold process (an idle machine's goals). As an
    installed package runs: its modules' bytecode cached (the warm-up round writes it, even where
    PYTHONDONTWRITEBYTECODE is set in the environment that runs the tests)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    run = lambda: subprocess.run([sys.executable, "cli.py", *args], cwd=ROOT, capture_output=True, timeout=60, env=env)  # noqa: E731
    res = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    assert res.returncode == 0, res.stderr
    _goal(benchmark, goal, stat="median")


PLAYBOOK = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "truth" / "playbook-public-1b-8b.jsonl"
if not PLAYBOOK.exists():  # a plain clone: the copy shipped in data/samples/
    PLAYBOOK = __import__("pathlib").Path(__file__).resolve().parents[1] / "data" / "samples" / "playbook-public-1b-8b.jsonl"


def _playbook_records():
    import pytest

    from costmodel.validate import read_records

    if not PLAYBOOK.exists():
        pytest.skip("../shared/truth is not beside this checkout")
    return read_records(PLAYBOOK)


def test_bench_validate_playbook(benchmark):
    """Issue #22's goal: `validate` on the 1,017-run Playbook file under 10 s on the 2-core host."""
    from costmodel.validate import validate_records

    recs = _playbook_records()
    rep = benchmark.pedantic(validate_records, args=(recs,), rounds=1, iterations=1)
    assert len(rep.cases) == len(recs)
    _goal(benchmark, 10.0)


def test_bench_fit_profile_100_runs(benchmark):
    """Issue #22's goal: fit-profile on 100 runs (with a 5-fold held-out error) under 30 s."""
    import numpy as np

    from costmodel import frameworks, profile_fit

    recs = _playbook_records()
    pick = np.random.default_rng(0).choice(len(recs), 100, replace=False)
    sub = [recs[i] for i in sorted(pick)]
    prof = frameworks.resolve("nanotron")

    def fit():
        return profile_fit.fit_profile(profile_fit.run_set(sub, prof), prof, folds=5)

    res = benchmark.pedantic(fit, rounds=1, iterations=1)
    assert res.n == 100 and res.holdout_mape is not None
    _goal(benchmark, 30.0)


def test_bench_serve_max_load_30k(benchmark):
    """Issue #27's goal: the scheduler over 30,000 requests at max load under 1 s."""
    from costmodel.arch import load_model
    from costmodel.serving import estimate_serve
    from costmodel.specs import load_library

    model, spec = load_model("llama3.1-8b"), load_library().device("h100-sxm")
    est = benchmark.pedantic(estimate_serve, args=(model, spec),
                             kwargs=dict(input_len=1000, output_len=128, load="max_load", num_requests=30_000),
                             rounds=1, iterations=1)
    assert est.num_requests == 30_000 and est.output_tokens_per_s > 0
    _goal(benchmark, 1.0)
