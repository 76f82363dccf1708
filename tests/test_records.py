"""Measurement records are checked at the boundary (costmodel.record_schema): a wrong type, a zero,
a negative or a boolean where validate or fit-profile reads a number is exit 2 naming file:line
and field, never a silently skipped metric, a 0% error or a traceback (issue 25)."""
import json

import pytest

from costmodel.cli.app import main
from costmodel.cli.common import emit_json

_TRAIN = {"kind": "train", "name": "x", "hardware": "h100-sxm", "devices": 1,
          "model": {"arch": "llama", "layers": 2, "hidden": 256, "heads": 4, "ffn": 688, "vocab": 1000},
          "parallel": {"dp": 1, "tp": 1, "pp": 1, "sharding": "none"}, "micro_batch": 2, "seq_len": 128,
          "precision": "amp-bf16", "recompute": "none", "attention": "flash", "measured": {"step_seconds": 0.01}}
_INFER = {"kind": "infer", "name": "i", "hardware": "h100-sxm", "batch": 1, "prompt_len": 128, "gen_len": 16,
          "model": {"arch": "llama", "layers": 2, "hidden": 256, "heads": 4, "ffn": 688, "vocab": 1000},
          "measured": {"prefill_seconds": 0.01, "decode_seconds_per_token": 0.005}}
_DECODE = {"kind": "decode_step", "name": "d", "hardware": "h100-sxm", "batch": 4, "context_len": 256,
           "model": {"arch": "llama", "layers": 2, "hidden": 256, "heads": 4, "ffn": 688, "vocab": 1000},
           "measured": {"step_seconds": 0.002}}


def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def _file(tmp_path, *recs):
    f = tmp_path / "recs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return f


def _with(rec: dict, dotted: str, value):
    out = json.loads(json.dumps(rec))
    d = out
    *head, last = dotted.split(".")
    for k in head:
        d = d[k]
    d[last] = value
    return out


def _bad(capsys, f, field, *extra):
    for args in ((), ("--json",), ("--max-mape", "0.5")):
        code, out, err = run(capsys, "validate", f, *args)
        assert code == 2 and out == "", (args, out, err)
        line = err.strip()
        assert "\n" not in line and "Traceback" not in err, err
        assert "recs.jsonl:2" in line and f"'{field}'" in line, err
        for e in extra:
            assert e in line, err


def test_good_records_pass(capsys, tmp_path):
    code, out, err = run(capsys, "validate", _file(tmp_path, _TRAIN, _INFER, _DECODE), "--json")
    assert code == 0, err
    assert {c["kind"] for c in json.loads(out)["cases"]} == {"train", "infer", "decode_step"}


@pytest.mark.parametrize("value, says", [(0, "greater than 0"), (-0.5, "greater than 0"), (True, "valid number"),
                                         ("0.01", "valid number"), ([0.01], "valid number"), ({"v": 1}, "valid number")])
@pytest.mark.parametrize("rec, metric", [(_TRAIN, "step_seconds"), (_INFER, "prefill_seconds"), (_DECODE, "step_seconds"),
                                         (_TRAIN, "peak_bytes"), (_INFER, "decode_seconds_per_token")])
def test_measured_values_that_are_not_positive_numbers(capsys, tmp_path, rec, metric, value, says):
    _bad(capsys, _file(tmp_path, rec, _with(rec, f"measured.{metric}", value)), f"measured.{metric}", says)


@pytest.mark.parametrize("rec, field, value", [
    (_TRAIN, "hardware", 5), (_TRAIN, "hardware", ""), (_TRAIN, "parallel", "dp"), (_TRAIN, "measured", [0.01]),
    (_TRAIN, "devices", "8"), (_TRAIN, "devices", 0), (_TRAIN, "seq_len", 128.0), (_TRAIN, "seq_len", None),
    (_TRAIN, "micro_batch", True), (_TRAIN, "parallel.tp", "2"), (_TRAIN, "parallel.dp", 0),
    (_TRAIN, "parallel.sharding", "zero"), (_TRAIN, "parallel.sequence_parallel", "yes"),
    (_TRAIN, "measured.oom", "true"), (_TRAIN, "name", 7), (_TRAIN, "model", 7), (_TRAIN, "framework", 3),
    (_TRAIN, "overlap_grad_reduce", 1), (_TRAIN, "devices", 10**30),
    (_INFER, "batch", "8"), (_INFER, "prompt_len", -1), (_INFER, "gen_len", 1.5),
    (_DECODE, "context_len", None), (_DECODE, "batch", 0), (_DECODE, "parallel", [1]),
])
def test_record_fields_of_the_wrong_type_or_range(capsys, tmp_path, rec, field, value):
    _bad(capsys, _file(tmp_path, rec, _with(rec, field, value)), field)


def test_published_record_field_errors_are_errors_not_skips(capsys, tmp_path):
    pub = dict(_TRAIN, kind="published", measured={"tflops_per_device": 150})
    _bad(capsys, _file(tmp_path, pub, _with(pub, "measured.tflops_per_device", "150")), "measured.tflops_per_device")


def test_an_empty_record_file_exits_2(capsys, tmp_path):
    f = tmp_path / "empty.jsonl"
    for text in ("", "\n\n", "# only a comment\n"):
        f.write_text(text)
        for args in ((), ("--max-mape", "0.1"), ("--json",)):
            code, out, err = run(capsys, "validate", f, *args)
            assert code == 2 and out == "" and "empty.jsonl" in err and "no records" in err, (text, args, err)


def test_a_gate_that_compared_nothing_fails(capsys, tmp_path):
    """Records that are all skipped (not modelled) compare nothing: --max-mape exits 1 saying so."""
    rec = {"kind": "kernel", "op": "cpu_gemm", "n": 512, "s": 1e-3, "tflops": 0.27, "hardware": "h200-sxm"}
    f = _file(tmp_path, rec)
    code, _, err = run(capsys, "validate", f, "--max-mape", "0.5")
    assert code == 1 and "no measurement was compared" in err, err
    code, _, _ = run(capsys, "validate", f)
    assert code == 0


def test_json_output_is_never_bare_nan(capsys):
    emit_json({"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}})
    out = capsys.readouterr().out

    def no(name):
        raise AssertionError(f"bare {name} in JSON output")

    assert json.loads(out, parse_constant=no) == {"a": None, "b": [None, 1.5], "c": {"d": None}}


def test_fit_profile_refuses_bad_records(capsys, tmp_path):
    bad = _with(_TRAIN, "measured.step_seconds", True)
    f = _file(tmp_path, _TRAIN, bad)
    code, _, err = run(capsys, "fit-profile", f, "--framework", "pytorch")
    assert code == 2 and "recs.jsonl:2" in err and "'measured.step_seconds'" in err, err
