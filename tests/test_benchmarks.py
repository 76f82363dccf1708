"""Speed benchmarks (pytest-benchmark). The suite runs them once with --benchmark-disable (see
pyproject.toml addopts) so they stay correct; `python -m pytest tests/test_benchmarks.py
--benchmark-enable` measures them, and `--benchmark-autosave` / `--benchmark-compare` track
regressions. They are not timed asserts."""
from costmodel.plan import train
from costmodel.search import search


def test_bench_search_175b_all_scales(benchmark):
    """Issue #6's speed goal: every layout of GPT-3 175B on 8 to 16384 GPUs."""
    res = benchmark(search, "gpt3-175b", "dgx-a100", "8..16384", global_batch=1536, seq_len=2048, top=5)
    assert res.evaluated > 100_000 and res.top
    benchmark.extra_info["evaluated"] = res.evaluated
    benchmark.extra_info["layouts_per_s"] = res.evaluated / res.seconds


def test_bench_single_train_estimate(benchmark):
    est = benchmark(train, "llama2-7b", "dgx-h100", tp=2, pp=2, global_batch=64, seq_len=4096, micro_batch=1)
    assert est.step.total_s > 0
