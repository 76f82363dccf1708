"""Golden output: `costmodel validate --json` over every shipped record file it reads
(data/published/*.jsonl, data/samples/*.jsonl, data/measurements/**/*.jsonl) and, when the checkout
sits beside it, over ../shared/truth/*.jsonl, compared number by number (relative 1e-9) with the
outputs stored in tests/fixtures/golden/. It holds every printed number still while the code is
made faster or reorganised.

A change that moves model numbers on purpose (a new mechanism, a refitted constant, a new record
file) must regenerate the fixtures, from the repository root, and say so in its commit:

    python tests/test_golden.py

The files validate rejects (kernel-less diagnostics, unknown hardware) are not part of the golden.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRUTH_DIR = ROOT.parent / "shared" / "truth"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "golden"
SHIPPED = FIXTURES / "validate-shipped.json"
TRUTH = FIXTURES / "validate-truth.json"
REL = 1e-9


def shipped_files() -> list[Path]:
    data = ROOT / "data"
    files = sorted((data / "published").glob("*.jsonl")) + sorted((data / "samples").glob("*.jsonl"))
    return files + sorted((data / "measurements").rglob("*.jsonl"))


def truth_files() -> list[Path]:
    return sorted(TRUTH_DIR.glob("*.jsonl")) if TRUTH_DIR.is_dir() else []


def validate_json(path: Path) -> tuple[int, object]:
    """`costmodel validate --json PATH`, run in this process: (exit code, parsed JSON or None)."""
    from costmodel.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["validate", "--json", str(path)])
        except SystemExit as exc:
            code = exc.code or 0
    return code, (json.loads(out.getvalue()) if code == 0 else None)


def _key(path: Path, base: Path) -> str:
    return path.relative_to(base).as_posix()


def _relative(obj, prefix: str):
    """``obj`` with ``prefix`` (the checkout's absolute path) cut from its strings: messages name
    record files by path, and a clone elsewhere must compare equal."""
    if isinstance(obj, str):
        return obj.replace(prefix, "")
    if isinstance(obj, dict):
        return {k: _relative(v, prefix) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relative(v, prefix) for v in obj]
    return obj


def collect(files: list[Path], base: Path) -> dict:
    """{relative path: validate's JSON} for the files validate reads (exit 0), paths relative to
    ``base``."""
    outs = {}
    for f in files:
        code, out = validate_json(f)
        if code == 0:
            outs[_key(f, base)] = _relative(out, str(base) + "/")
    return outs


def diff(a, b, where: str = "") -> list[str]:
    """Where `a` and `b` differ: numbers beyond a relative REL, anything else by equality."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None or isinstance(a, str) or isinstance(b, str):
        return [] if a == b else [f"{where}: {a!r} != {b!r}"]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if a == b or (math.isnan(a) and math.isnan(b)):
            return []
        return [] if math.isclose(a, b, rel_tol=REL, abs_tol=0.0) else [f"{where}: {a!r} != {b!r}"]
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}: key {k!r} only in one" for k in sorted(set(a) ^ set(b))]
        for k in a.keys() & b.keys():
            out += diff(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff(x, y, f"{where}[{i}]")]
    return [f"{where}: {type(a).__name__} != {type(b).__name__}"]


def _check(files: list[Path], base: Path, fixture: Path) -> None:
    want = json.loads(fixture.read_text())
    have = collect(files, base)
    assert sorted(have) == sorted(want), "the set of record files validate reads changed: regenerate the golden " \
                                         "(python tests/test_golden.py)"
    problems = []
    for name in sorted(want):
        problems += diff(have[name], want[name], name)
    assert not problems, f"{len(problems)} numbers moved (regenerate with python tests/test_golden.py if on " \
                         "purpose):\n" + "\n".join(problems[:20])


def test_validate_golden_shipped_records():
    _check(shipped_files(), ROOT, SHIPPED)


def test_validate_golden_shared_truth():
    files = truth_files()
    if not files or not TRUTH.exists():
        pytest.skip("../shared/truth is not beside this checkout")
    _check(files, TRUTH_DIR, TRUTH)


def test_diff_finds_a_moved_number():
    assert diff({"a": [1.0, "x"]}, {"a": [1.0 + 1e-12, "x"]}) == []
    assert diff({"a": [1.0, "x"]}, {"a": [1.0 + 1e-6, "x"]})
    assert diff({"a": 1}, {"b": 1})


def _write(path: Path, outs: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(outs, indent=1, sort_keys=True, allow_nan=True) + "\n")


if __name__ == "__main__":  # python tests/test_golden.py: regenerate the fixtures
    sys.path.insert(0, str(ROOT))
    _write(SHIPPED, collect(shipped_files(), ROOT))
    print(f"wrote {SHIPPED.relative_to(ROOT)}")
    if truth_files():
        _write(TRUTH, collect(truth_files(), TRUTH_DIR))
        print(f"wrote {TRUTH.relative_to(ROOT)}")
