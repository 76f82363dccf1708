"""Every input file goes through costmodel.inputs: whatever a plan, spec, overlay, profile, preset,
HF config or record file holds, reading it returns data or exits 2 with one line naming the file
(and the key or line), never a traceback and never silently something else (issue 25)."""
import json
import re
from pathlib import Path

import pytest

from costmodel import inputs
from costmodel.cli.app import main
from costmodel.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def one_line(err: str, *parts: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    for p in parts:
        assert p in lines[0], (p, err)
    return lines[0]


_PLAN = "model: llama3-8b\nhardware: h100-sxm\ndevices: 8\ntraining: {zero_stage: 1, global_batch: 64}\nlimits: {min_mfu: 0.1}\n"
_SPEC = (ROOT / "hardware" / "h100-sxm.yaml").read_text()
_PROFILE = (ROOT / "data" / "frameworks" / "pytorch.yaml").read_text()
_OVERLAY = (ROOT / "hardware" / "calibrated" / "h100-sxm.yaml").read_text()


def _args(kind: str, f: Path):
    """The command that reads ``f`` as a file of ``kind``."""
    return {"plan": ("check", f),
            "spec": ("hardware", "list", "--hardware-file", f),
            "profile": ("train", "llama-110m", "--profile", f),
            "overlay": ("train", "llama-110m", "--calibration", f),
            "preset": ("model", "show", f),
            "laws": ("scale", "--law-file", f, "--list-laws"),
            "hf": ("model", "show", f),
            "records": ("validate", f)}[kind]


_GOOD = {"plan": _PLAN, "spec": _SPEC, "profile": _PROFILE, "overlay": _OVERLAY,
         "preset": (ROOT / "data" / "models" / "llama-110m.yaml").read_text(),
         "laws": (ROOT / "data" / "scaling_laws.yaml").read_text(),
         "hf": (ROOT / "tests" / "fixtures" / "hf" / "llama3-8b.json").read_text(),
         "records": (ROOT / "data" / "samples" / "h100-measured.jsonl").read_text()}
_SUFFIX = {"hf": ".json", "records": ".jsonl"}
KINDS = list(_GOOD)


@pytest.mark.parametrize("kind", KINDS)
def test_the_good_files_read(kind, tmp_path, capsys):
    f = tmp_path / f"good{_SUFFIX.get(kind, '.yaml')}"
    f.write_text(_GOOD[kind])
    code, _, err = run(capsys, *_args(kind, f))
    assert code in (0, 1), err


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad, says", [
    (b"\x00\x01\x02\xff\xfe" * 50, "NUL byte"),
    ("model: caf\u00e9\n".encode("latin-1"), "not UTF-8 text"),
    ("model: x\nhardware: y\n".encode("utf-16"), "UTF-16"),
    (b"", None),  # empty: each kind says what it lacks
])
def test_binary_latin1_utf16_and_empty_files(kind, bad, says, tmp_path, capsys):
    f = tmp_path / f"bad{_SUFFIX.get(kind, '.yaml')}"
    f.write_bytes(bad)
    if says is None and kind == "records":
        pytest.skip("an empty record file: tests/test_records.py::test_an_empty_record_file_exits_2")
    code, _, err = run(capsys, *_args(kind, f))
    assert code == 2
    one_line(err, f.name, *([says] if says else []))


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in ("hf", "records")])
def test_a_nul_byte_in_yaml_is_one_line(kind, tmp_path, capsys):
    f = tmp_path / "nul.yaml"
    f.write_text(_GOOD[kind].replace("\n", "\n\x00", 1))
    code, _, err = run(capsys, *_args(kind, f))
    assert code == 2
    one_line(err, "nul.yaml", "NUL byte (line 2)")


def test_duplicate_keys_are_errors_in_every_yaml(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text("model: gpt-17\nmodel: llama3-8b\nhardware: h100-sxm\ntraining: {}\nlimits: {min_mfu: 0.1}\n")
    code, _, err = run(capsys, "check", plan)
    assert code == 2
    one_line(err, "plan.yaml", "duplicate key 'model' (first at line 1)", "line 2")
    plan.write_text(_PLAN + "limits: {max_memory_fraction: 0.5}\n")
    code, _, err = run(capsys, "check", plan)
    assert code == 2
    one_line(err, "duplicate key 'limits'")
    for kind in ("spec", "profile", "overlay", "preset", "laws"):
        text = _GOOD[kind]
        first = re.search(r"^(\w+):.*$", text, re.M).group(0)
        f = tmp_path / f"dup-{kind}.yaml"
        f.write_text(text + first + "\n")
        code, _, err = run(capsys, *_args(kind, f))
        assert code == 2, kind
        one_line(err, f.name, "duplicate key")
    # nested keys too, and YAML merge keys (<<) are not duplicates
    assert inputs.parse_yaml("a: &x {p: 1}\nb: {<<: *x, p: 2}\n") == {"a": {"p": 1}, "b": {"p": 2}}
    with pytest.raises(InputError, match="duplicate key 'p'"):
        inputs.parse_yaml("a: {p: 1, p: 2}\n")


@pytest.mark.parametrize("value, field, says", [
    (".inf", "run.tokens", ".inf is not a finite number"),
    (".nan", "run.tokens", ".nan is not a finite number"),
    ("1.0e+400", "run.tokens", "not a finite number"),
    ("1" + "0" * 400, "run.tokens", "integer of 401 digits is too large"),
])
def test_non_finite_and_huge_numbers_name_the_key(value, field, says, tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text(_PLAN + f"run: {{tokens: {value}}}\n")
    code, _, err = run(capsys, "check", plan)
    assert code == 2
    one_line(err, "plan.yaml", f"field '{field}'", says)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999", "9" * 5000])
def test_json_non_numbers_name_the_line_and_key(token, tmp_path, capsys):
    f = tmp_path / "r.jsonl"
    f.write_text('{"kind": "train", "measured": {"step_seconds": ' + token + "}}\n")
    code, out, err = run(capsys, "validate", f, "--json")
    assert code == 2 and out == ""
    one_line(err, "r.jsonl:1", "field 'measured.step_seconds'")
    hf = tmp_path / "c.json"
    hf.write_text('{"hidden_size": ' + token + "}")
    code, _, err = run(capsys, "model", "show", hf)
    assert code == 2
    one_line(err, "c.json", "field 'hidden_size'")


@pytest.mark.parametrize("kind", KINDS)
def test_deep_nesting_is_refused_without_recursion_error(kind, tmp_path, capsys):
    f = tmp_path / f"deep{_SUFFIX.get(kind, '.yaml')}"
    n = 20000
    if kind in ("hf", "records"):
        f.write_text('{"a": ' + "[" * n + "]" * n + "}\n")
    else:
        f.write_text("a: " + "[" * n + "]" * n + "\n")
    code, _, err = run(capsys, *_args(kind, f))
    assert code == 2
    one_line(err, f.name, "nested")


@pytest.mark.parametrize("kind", KINDS)
def test_oversized_files_are_refused_before_reading(kind, tmp_path, capsys):
    limit = inputs.MAX_RECORDS_BYTES if kind == "records" else inputs.MAX_DOCUMENT_BYTES
    f = tmp_path / f"big{_SUFFIX.get(kind, '.yaml')}"
    f.write_text(_GOOD[kind])
    with open(f, "r+b") as fh:
        fh.truncate(limit + 1)  # sparse: refused on its size, never read
    code, _, err = run(capsys, *_args(kind, f))
    assert code == 2
    one_line(err, f.name, "files of this kind are read up to")


def test_a_50_mb_plan_is_refused_at_once(tmp_path, capsys):
    import time

    plan = tmp_path / "huge.yaml"
    with open(plan, "w") as fh:
        fh.write(_PLAN)
        fh.write("# " + "x" * (50 * 2**20) + "\n")
    t0 = time.perf_counter()
    code, _, err = run(capsys, "check", plan)
    assert code == 2 and time.perf_counter() - t0 < 5
    one_line(err, "huge.yaml", "50 MiB", "4 MiB")


def test_a_directory_as_an_input_file(tmp_path, capsys):
    code, _, err = run(capsys, "validate", tmp_path)
    assert code == 2
    one_line(err, "is a directory")


def test_utf8_byte_order_mark_is_fine():
    assert inputs.parse_json(inputs.decode_text(b'\xef\xbb\xbf{"a": 1}', "f.json"), "f.json") == {"a": 1}


def test_the_package_reads_yaml_only_through_costmodel_inputs():
    offenders = []
    for f in sorted((ROOT / "costmodel").rglob("*.py")):
        if f.name == "inputs.py":
            continue
        for lineno, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"yaml\.(safe_load|load)\s*\(|json\.loads?\((?!.*# not an input file)", line):
                offenders.append(f"{f.relative_to(ROOT)}:{lineno}: {line.strip()}")
    allowed = ("costmodel/bench/",)  # the GPU-side harness reads its own run configs
    offenders = [o for o in offenders if not o.startswith(allowed)]
    assert not offenders, "read input files with costmodel.inputs:\n" + "\n".join(offenders)


def test_units_that_overflow_are_errors(tmp_path, capsys):
    spec = tmp_path / "big.yaml"
    spec.write_text(_SPEC.replace("id: h100-sxm", "id: big-h100").replace("capacity: 81559 MiB", 'capacity: "1e999 GiB"'))
    assert "1e999" in spec.read_text()
    code, _, err = run(capsys, "hardware", "show", "big-h100", "--hardware-file", spec)
    assert code == 2
    one_line(err, "big.yaml", "field 'memory.capacity'", "too large")
    from costmodel.units import parse_bandwidth, parse_bytes

    with pytest.raises(ValueError, match="too large"):
        parse_bytes("1e308 PiB")
    with pytest.raises(ValueError, match="too large"):
        parse_bandwidth("1e999 GB/s")
    assert json.dumps(parse_bytes("80 GiB")) == "85899345920.0"
