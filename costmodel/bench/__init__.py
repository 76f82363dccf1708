"""Microbenchmark harness: measure the local device and write SCHEMA.md ``kernel`` records.

Backends: ``numpy`` (host CPU, always there), ``torch`` (CUDA/ROCm GPU or PyTorch's CPU path) and
``nccl`` (torch.distributed collectives, under torchrun). Neither torch nor pydantic is imported
when this package is imported: torch only inside the torch backends, when they are used.

    from costmodel.bench import make_bench, run_cases
    bench = make_bench("numpy", quick=True)
    records, errors = run_cases(bench.cases(), progress=False)
"""
from .records import read_jsonl, validate_record, write_jsonl

_RUNNER = ("env_info", "make_bench", "resolve_backend", "run_cases")


def __getattr__(name):
    # the runner (and its timing helpers) is imported when a benchmark is run, not when the models
    # read record constants from costmodel.bench.records
    if name in _RUNNER:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["make_bench", "run_cases", "resolve_backend", "env_info", "read_jsonl", "write_jsonl", "validate_record"]
