#!/usr/bin/env python3
"""Which fitted constants can be doubled without any test failing?

    python tools/mutate_constants.py --list                 # the fitted constants it finds
    python tools/mutate_constants.py [--only TEXT] [--ids FILE] [--timeout 300]

Finds the fitted constants: every numeric ``parameters.<name>.value`` of data/frameworks/*.yaml
and data/fitted/*.yaml, the main rates and floors of the calibration overlays
(hardware/calibrated/*.yaml), the serving engines' fitted numbers (data/engines/*.yaml:
``moe_math_efficiency``, ``api_server_s_per_request``, the custom all-reduce's latency and bandwidth per tp), the coefficients of
the scaling laws (data/scaling_laws.yaml), and the module-level numeric constants of costmodel/
whose comment says they were fitted, measured or profiled. For each, in a scratch copy of the
repository outside any ../shared (a plain clone), it multiplies the value by 2 (by 0.5 where 2x
leaves the parameter's bounds) and runs the tests that read it (``pytest -x``; the prediction tests
of DEFAULT_TESTS, ENGINE_TESTS for an engine, test_scaling for a law). It prints one line per
constant: killed (and by which test) or SURVIVED. A survivor is a constant no test checks.

A number it finds that is not fitted to measurements is listed as "not fitted" with the reason and
not mutated: a data parameter whose entry says why in ``not_fitted:`` (a value taken from a paper, a
copy of another profile's value that serves only as a fit's start, an engineering allowance), and
the module constants of NOT_FITTED (settings of an algorithm: a fit's robust scale, a search grid, a
smoothing strength).

Left out of every run: tests/test_golden.py and tests/test_validation_page.py, which fail on ANY
change of a shipped prediction (they pin the numbers to rel 1e-9, not to a measurement): they would
"kill" every mutation and say nothing about whether a test checks the constant against an
independent number. Also left out: test_fuzz and test_benchmarks (robustness and speed, no
accuracy).
"""
from __future__ import annotations

import argparse
import ast
import functools
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORDS = re.compile(r"\b(fitted|fit|measured|profiled)\b", re.I)
# the overlay entries that set predicted times (rates, floors, gaps, the host factor); counts and
# fit diagnostics (records, cv errors) are left alone
OVERLAY_KEYS = (
    "gemm.memory_bytes_per_s", "gemm.kernel_min_s", "gemm.k_half",
    "gemm.dtypes.bf16.flops_per_s", "gemm.dtypes.bf16.call_gap_s", "gemm.dtypes.bf16.call_floor_s",
    "gemm.dtypes.fp32.flops_per_s", "memory.copy.bytes_per_s", "memory.read.bytes_per_s",
    "elementwise.elementwise_add.bytes_per_s", "attention.sdpa_fwd.flops_per_s_max",
    "attention.sdpa_fwd_bwd.flops_per_s_max", "host.h2d_pinned.bytes_per_s", "eager_infer_host_factor",
)
# named constants whose comment does not say "fitted" / "measured" but that are, and ones that do
# but are numerical settings of an algorithm, not of the model
ALSO = {"KERNEL_FLOOR_S", "CUDA_CONTEXT_BYTES", "FRAGMENTATION_FRACTION", "DECODE_SMALL_KERNELS_PER_LAYER",
        "DEFAULT_GEMM_BW_EFFICIENCY", "DEFAULT_COPY_BW_EFFICIENCY", "DEFAULT_READ_BW_EFFICIENCY",
        "DEFAULT_SCALE_OUT_EFFICIENCY", "TREE_BANDWIDTH_FACTOR", "DEFAULT_PUE"}
NOT_FITTED = {
    "RESIDUAL_CHUNK_ELEMENTS": "a memory bound of the residual's distance computation",
    "HOST_FACTOR_STEPS_PER_OCTAVE": "the host-factor search's grid spacing",
    "PRIOR_WEIGHT": "a fit's pull towards its start values",
    "STALL_START_S_PER_OP": "the stall fit's first split of stalled runs",
    "STALL_MIN_RUNS": "the fewest stalled runs the stall fit takes",
    "RESIDUAL_EXACT_LENGTH_OCTAVES": "a smoothing length of the GEMM residual where cross-validation keeps no pair",
    "RESIDUAL_EXACT_PRIOR": "a smoothing strength of the GEMM residual where cross-validation keeps no pair",
    "LATENCY_MIN_RUNS": "the fewest multi-node runs the step-latency fit takes",
    "ROBUST_SCALE": "the relative error where a fit's soft-L1 loss turns linear",
    "STALL_S_PER_MICROBATCH": "the validation page's missed-stall threshold, in no prediction",
    "DEFAULT_Q": "the start of a fit's floor/kernel corner (each overlay fits its own, for all its curves) and the corner of the datasheet defaults",
    "DEFAULT_P": "the start of a fit's compute/memory corner (each overlay fits its own, for its GEMM and attention curves) and the corner of the datasheet defaults' GEMM curve",
    "K_HALF_START": "the start of a fit's k-pipeline ramp (each overlay fits its own k_half)",
}
# the tests that check predictions, the likeliest to fail first (pytest -x stops at the first
# failure); about a minute in all on one core. --tests adds others (test_calibration: minutes).
DEFAULT_TESTS = [f"tests/test_{n}.py" for n in (
    "timing", "memory", "memory_ddp", "dispatch", "validate", "frameworks", "published", "comm", "serving",
    "cluster", "offload", "heldout", "v100_era", "cpu_device")]
# the tests that read data/engines/ (the serving model, the published serve records, serve plans)
ENGINE_TESTS = [f"tests/test_{n}.py" for n in ("serving", "serve_plan", "published", "heldout", "check")]
IGNORE = ["tests/test_validation_page.py", "tests/test_golden.py", "tests/test_fuzz.py", "tests/test_benchmarks.py"]


@dataclass
class Mutation:
    id: str
    file: str  # relative to the repository root
    note: str
    mutate: object  # callable: original text -> mutated text
    halve: object = None  # the same at x0.5, tried when the file refuses x2 (a bounded exponent)
    not_fitted: str | None = None  # why the number is not a fitted constant: listed, not mutated


def _number(text: str) -> float | None:
    try:
        node = ast.parse(text.strip(), mode="eval").body
        v = eval(compile(ast.Expression(node), "<const>", "eval"), {"__builtins__": {}})  # arithmetic only
    except Exception:  # noqa: BLE001
        return None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _yaml_float(v: float) -> str:
    """A float YAML 1.1 reads back as a float (PyYAML takes ``9e-06`` for a string: it wants a dot)."""
    s = repr(float(v))
    mant, e, exp = s.partition("e")
    return f"{mant}.0e{exp}" if e and "." not in mant else s


def framework_mutations() -> list[Mutation]:
    """The ``parameters:`` of the framework profiles and of data/fitted/*.yaml (same schema)."""
    out = []
    for f in sorted((ROOT / "data" / "frameworks").glob("*.yaml")) + sorted((ROOT / "data" / "fitted").glob("*.yaml")):
        params = (yaml.safe_load(f.read_text()) or {}).get("parameters") or {}
        for name, p in params.items():
            if not isinstance(p, dict) or isinstance(p.get("value"), bool) or not isinstance(p.get("value"), (int, float)):
                continue
            v, (lo, hi) = float(p["value"]), (p.get("bounds") or (None, None))
            new_value, note = v * 2, "x2"
            if hi is not None and not (lo <= v * 2 <= hi):
                new_value, note = v * 0.5, "x0.5 (x2 is out of bounds)"
                if not (lo <= v * 0.5 <= hi):  # neither fits: the bound farther away
                    new_value = hi if abs(hi - v) >= abs(v - lo) else lo
                    note = f"-> bound {new_value:g} (x2 and x0.5 are out of bounds)"
            if v == 0:  # doubling changes nothing: the middle of the bounds instead
                new_value = (lo + hi) / 2 if hi is not None else 1.0
                note = f"0 -> {new_value:g}"
            pat = re.compile(rf"(^  {re.escape(name)}:\n(?:(?:    |\s*\n).*\n)*?    value: )(\S+)", re.M)

            def mutate(text, pat=pat, new_value=new_value):
                new, n = pat.subn(lambda m: m.group(1) + _yaml_float(new_value), text, count=1)
                return new if n else None
            prefix = "fitted." if f.parent.name == "fitted" else ""
            out.append(Mutation(f"{prefix}{f.stem}.{name}", str(f.relative_to(ROOT)), note, mutate,
                                not_fitted=str(p["not_fitted"]) if p.get("not_fitted") else None))
    return out


def stall_mutations() -> list[Mutation]:
    """A profile's fitted cluster stall (``cluster_scaling.pipeline_stall``: its time per send, with
    its unit, and its chance's three coefficients)."""
    out = []
    for f in sorted((ROOT / "data" / "frameworks").glob("*.yaml")):
        stall = ((yaml.safe_load(f.read_text()) or {}).get("cluster_scaling") or {}).get("pipeline_stall")
        if not isinstance(stall, dict):
            continue
        for key in stall:
            pat = re.compile(rf"(pipeline_stall:.*?\b{re.escape(key)}: )([-+0-9.eE]+)", re.S)

            def mutate(text, pat=pat):
                new, n = pat.subn(lambda m: m.group(1) + repr(float(m.group(2)) * 2), text, count=1)
                return new if n else None
            out.append(Mutation(f"{f.stem}.pipeline_stall.{key}", str(f.relative_to(ROOT)), "x2", mutate))
    return out


def _leaf_mutator(path: tuple, factor: float = 2.0):
    """Multiply the number at ``path`` (keys and list indices) of a YAML file by ``factor``,
    rewritten by safe_dump (the scratch copy only; a number PyYAML reads as a string, ``6.4e13``,
    is multiplied too)."""
    def mutate(text, path=path):
        d = yaml.safe_load(text)
        n = d
        for k in path[:-1]:
            n = n[k]
        n[path[-1]] = float(n[path[-1]]) * factor
        return yaml.safe_dump(d, sort_keys=False)
    return mutate


def _is_number(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    return isinstance(v, str) and _number(v) is not None and re.fullmatch(r"[-+0-9.eE]+", v.strip()) is not None


def engine_mutations() -> list[Mutation]:
    """The serving engines' fitted numbers: the MoE grouped-GEMM efficiency, the API server's time
    per request and the custom all-reduce's two-point fit per tp (the engines' scheduler defaults are read from their source
    code, not fitted)."""
    out = []
    for f in sorted((ROOT / "data" / "engines").glob("*.yaml")):
        data = yaml.safe_load(f.read_text()) or {}
        rel = str(f.relative_to(ROOT))
        moe = data.get("moe_math_efficiency")
        path = ("moe_math_efficiency", "value") if isinstance(moe, dict) else ("moe_math_efficiency",)
        moe = moe.get("value") if isinstance(moe, dict) else moe
        if _is_number(moe):
            # bounded to [0.05, 1]: halve it where doubling leaves the bounds
            factor, note = (2.0, "x2") if float(moe) * 2 <= 1 else (0.5, "x0.5 (x2 is above 1)")
            out.append(Mutation(f"engine.{f.stem}.moe_math_efficiency", rel, note, _leaf_mutator(path, factor)))
        api = data.get("api_server_s_per_request")
        if isinstance(api, dict) and _is_number(api.get("value")) and api["value"] > 0:
            out.append(Mutation(f"engine.{f.stem}.api_server_s_per_request", rel, "x2",
                                _leaf_mutator(("api_server_s_per_request", "value"))))
        for i, row in enumerate((data.get("custom_allreduce") or {}).get("by_tp") or []):
            for key in ("latency_s", "bytes_per_s"):
                if _is_number(row.get(key)):
                    out.append(Mutation(f"engine.{f.stem}.custom_allreduce.tp{row.get('tp')}.{key}", rel, "x2",
                                        _leaf_mutator(("custom_allreduce", "by_tp", i, key))))
    return out


def scaling_law_mutations() -> list[Mutation]:
    """Every coefficient of every law in data/scaling_laws.yaml (the blocks named by its form and
    its modifiers; anchors that are a paper's table rows are coefficients too)."""
    f = ROOT / "data" / "scaling_laws.yaml"
    if not f.is_file():
        return []
    out = []
    laws = (yaml.safe_load(f.read_text()) or {}).get("laws") or []
    for i, law in enumerate(laws):
        for block, body in law.items():
            if not isinstance(body, dict):
                continue
            for key, v in body.items():
                if _is_number(v):
                    out.append(Mutation(f"law.{law.get('id')}.{block}.{key}", "data/scaling_laws.yaml", "x2",
                                        _leaf_mutator(("laws", i, block, key)),
                                        _leaf_mutator(("laws", i, block, key), 0.5)))
    return out


def overlay_mutations() -> list[Mutation]:
    out = []
    for f in sorted((ROOT / "hardware" / "calibrated").glob("*.yaml")):
        data = yaml.safe_load(f.read_text())
        for key in OVERLAY_KEYS:
            node, parts = data, key.split(".")
            for k in parts[:-1]:
                node = node.get(k) if isinstance(node, dict) else None
            if not isinstance(node, dict) or not isinstance(node.get(parts[-1]), (int, float)):
                continue

            def mutate(text, parts=parts):
                d = yaml.safe_load(text)
                n = d
                for k in parts[:-1]:
                    n = n[k]
                n[parts[-1]] = float(n[parts[-1]]) * 2
                return yaml.safe_dump(d, sort_keys=False)
            out.append(Mutation(f"{f.stem}.{key}", str(f.relative_to(ROOT)), "x2", mutate))
    return out


def module_mutations() -> list[Mutation]:
    out = []
    for f in sorted((ROOT / "costmodel").rglob("*.py")):
        lines = f.read_text().splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"^([A-Z][A-Z0-9_]+)\s*=\s*([^#]+?)\s*(#.*)?$", line)
            if not m or _number(m.group(2)) is None:
                continue
            j, comment = i - 1, [m.group(3) or ""]
            while j >= 0 and lines[j].startswith("#"):
                comment.append(lines[j])
                j -= 1
            # constants declared together share the comment above the first of them
            while j >= 0 and re.match(r"^[A-Z][A-Z0-9_]+\s*=", lines[j]) and not comment[1:]:
                j -= 1
                while j >= 0 and lines[j].startswith("#"):
                    comment.append(lines[j])
                    j -= 1
            name, expr = m.group(1), m.group(2)
            if not (name in ALSO or WORDS.search(" ".join(comment))):
                continue

            def mutate(text, name=name, expr=expr, factor="2"):
                new, n = re.subn(rf"^{name}(\s*)=(\s*){re.escape(expr)}", rf"{name}\1=\2({expr}) * {factor}", text,
                                 count=1, flags=re.M)
                return new if n else None
            out.append(Mutation(f"{f.relative_to(ROOT).with_suffix('').as_posix().replace('/', '.')}.{name}",
                                str(f.relative_to(ROOT)), "x2", mutate, functools.partial(mutate, factor="0.5"),
                                not_fitted=NOT_FITTED.get(name)))
    return out


def discover() -> list[Mutation]:
    return framework_mutations() + stall_mutations() + engine_mutations() + scaling_law_mutations() + overlay_mutations() + module_mutations()


def tests_for(mut: Mutation, default: list[str]) -> list[str]:
    """The test files a mutation runs: the scaling laws are read only by `costmodel scale`
    (test_scaling), the engines only by the serving model (ENGINE_TESTS); the calibration package's
    constants by the prediction tests and `costmodel calibrate`'s (test_calibration): some are fit
    start values, but others shape every shipped overlay's curves (the GEMM's split-k threshold);
    everything else by the prediction tests."""
    if mut.file == "data/scaling_laws.yaml":
        return ["tests/test_scaling.py"]
    if mut.file.startswith("data/engines/"):
        return ENGINE_TESTS
    if mut.file.startswith("costmodel/calibration/"):
        return [*default, "tests/test_calibration.py"]
    return default


def _scratch() -> Path:
    # a short path: some CLI tests read 80-column output that names the file
    d = Path(tempfile.mkdtemp(prefix="m", dir="/tmp" if Path("/tmp").is_dir() else None))
    shutil.copytree(ROOT, d, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", ".ruff_cache"),
                    dirs_exist_ok=True)
    return d


def run_one(mut: Mutation, scratch: Path, tests: list[str], timeout: float) -> tuple[str, str, float]:
    target = scratch / mut.file
    original = target.read_text()
    new = mut.mutate(original)
    if new is None or new == original:
        return "not applied", "", 0.0
    target.write_text(new)
    t0 = time.time()
    try:
        args = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--tb=short", "-rf",
                *[f"--ignore={p}" for p in IGNORE], *tests]
        r = subprocess.run(args, cwd=scratch, capture_output=True, text=True, timeout=timeout)
        failed = re.findall(r"^FAILED (\S+)", r.stdout, re.M)
        if r.returncode == 0:
            return "SURVIVED", "", time.time() - t0
        if not failed:  # nothing ran: the mutated file was refused on load
            errors = re.findall(r"^E\s+(\S.*)$", r.stdout, re.M)
            return "invalid", (errors[0] if errors else r.stdout.strip().splitlines()[-1])[:160], time.time() - t0
        return "killed", failed[0], time.time() - t0
    except subprocess.TimeoutExpired:
        return "timeout", "", time.time() - t0
    finally:
        target.write_text(original)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--list", action="store_true", help="only list the constants found")
    ap.add_argument("--only", default=None, help="only constants whose id contains this")
    ap.add_argument("--ids", default=None, help="only the constants whose ids a file lists, one a line "
                    "(e.g. the SURVIVED lines of an earlier run: the first word after the status)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mutation")
    ap.add_argument("--tests", nargs="*", default=DEFAULT_TESTS, help="test files or directories to run")
    args = ap.parse_args(argv)
    muts = [m for m in discover() if not args.only or args.only in m.id]
    if args.ids:
        wanted = set()
        for line in Path(args.ids).read_text().splitlines():
            words = line.split()
            if words[:2] == ["not", "fitted"] and len(words) > 2:
                wanted.add(words[2])
            elif words:
                wanted.add(words[1] if words[0] in ("SURVIVED", "killed", "invalid", "timeout") and len(words) > 1
                           else words[0])
        muts = [m for m in muts if m.id in wanted]
    unfitted = [m for m in muts if m.not_fitted]
    if args.list:
        for m in muts:
            print(f"{m.id}\t{m.file}\t{'not fitted: ' + m.not_fitted if m.not_fitted else m.note}")
        print(f"{len(muts) - len(unfitted)} fitted constants, {len(unfitted)} not fitted", file=sys.stderr)
        return 0
    for m in unfitted:
        print(f"{'not fitted':11s} {m.id} ({m.not_fitted})", flush=True)
    muts = [m for m in muts if not m.not_fitted]
    scratch = _scratch() if muts else None
    survivors = 0
    try:
        for m in muts:
            status, by, secs = run_one(m, scratch, tests_for(m, args.tests), args.timeout)
            if status == "invalid" and m.halve is not None:  # x2 is refused on load (a fraction above 1): x0.5
                m = Mutation(m.id, m.file, "x0.5 (x2 is refused on load)", m.halve)
                status, by, secs = run_one(m, scratch, tests_for(m, args.tests), args.timeout)
            survivors += status == "SURVIVED"
            print(f"{status:11s} {m.id} ({m.note}){' by ' + by if by else ''} [{secs:.0f} s]", flush=True)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"{survivors} of {len(muts)} mutations failed no test ({len(unfitted)} constants not fitted, not mutated)",
          flush=True)
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
