"""The command line never answers with a traceback, a hang or a silently wrong number (issue 25):
option errors are one line, numbers are finite and in range, a search's work is bounded, an error
in a file a plan points to names the plan and its field, and anything unforeseen is one line
'internal error: ... (please report ...)' with exit 3."""
import json
import time
from pathlib import Path

import pytest

from costmodel.cli.app import INTERNAL_ERROR_EXIT, main

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def one_line(err: str, *parts: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for p in parts:
        assert p in lines[0], (p, err)
    return lines[0]


@pytest.mark.parametrize("args, says", [
    (("train", "llama-110m", "--tp", "x"), "'--tp'"),
    (("train", "llama-110m", "--bogus"), "No such option: --bogus"),
    (("train",), "Missing argument"),
    (("search", "llama-110m", "--global-batch", "eight"), "'--global-batch'"),
    (("hardware", "show"), "Missing argument"),
])
def test_option_errors_are_one_line(capsys, args, says):
    code, out, err = run(capsys, *args)
    assert code == 2 and out == ""
    line = one_line(err, says, "--help")
    assert line.startswith("error:")


def test_help_and_bare_command_still_print_help(capsys):
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0 and "--micro-batch" in out
    code, out, err = run(capsys)
    assert code in (0, 2) and "train" in out + err


@pytest.mark.parametrize("args, field", [
    (("train", "llama-110m", "--host-time-factor", "inf"), "host-time-factor"),
    (("train", "llama-110m", "--host-time-factor", "nan"), "host-time-factor"),
    (("infer", "llama-110m", "--host-time-factor", "nan", "--eager"), "host-time-factor"),
    (("validate", "data/samples/h100-measured.jsonl", "--host-time-factor", "inf"), "host-time-factor"),
    (("train", "llama-110m", "--steps", "1" + "0" * 400), "steps"),
    (("train", "llama-110m", "--devices", "1" + "0" * 30), "devices"),
    (("train", "llama-110m", "--steps", "-5"), "steps"),
    (("train", "llama-110m", "--steps", "0"), "steps"),
    (("train", "llama-110m", "--tokens", "-1e9"), "tokens"),
    (("train", "llama-110m", "--tokens", "nan"), "tokens"),
    (("train", "llama-110m", "--price-per-hour", "-3", "--steps", "10"), "price-per-hour"),
    (("train", "llama-110m", "--pue", "inf", "--steps", "10"), "pue"),
    (("infer", "llama-110m", "--max-tpot-ms", "-1"), "max-tpot-ms"),
    (("infer", "llama-110m", "--max-tpot-ms", "nan"), "max-tpot-ms"),
    (("search", "llama-110m", "--infer", "--max-tpot-ms", "-1"), "max-tpot-ms"),
    (("search", "llama-110m", "--infer", "--max-tpot-ms", "nan"), "max-tpot-ms"),
    (("search", "llama-110m", "--infer", "--max-ttft-ms", "0"), "max-ttft-ms"),
    (("search", "llama-110m", "--infer", "--gen-len", "-1"), "gen-len"),
    (("search", "llama-110m", "--global-batch", "8", "--tokens", "-5"), "tokens"),
    (("search", "llama-110m", "--global-batch", "8", "--steps", "-5"), "steps"),
    (("search", "llama-110m", "--global-batch", "8", "--price-per-hour", "-1"), "price-per-hour"),
    (("search", "llama-110m", "--global-batch", "8", "--devices", "1" + "0" * 30), "devices"),
    (("search", "llama-110m", "--global-batch", "8", "--devices", "8..1" + "0" * 30), "devices"),
    (("search", "llama-110m", "--global-batch", "8", "--devices", "9" * 5000), "devices"),
    (("search", "llama-110m", "--global-batch", "8", "--zero-stage", "7"), "zero-stage"),
    (("search", "llama-110m", "--global-batch", "8", "--tp", "1" + "0" * 20), "tp"),
    (("scale", "--model", "llama-110m", "--tokens", "-5"), "tokens"),
    (("scale", "--budget-flops", "inf"), "budget-flops"),
    # layouts the frameworks cannot build: a model-level check names its field
    (("train", "mixtral-8x7b", "--ep", "3"), "ep"),
    (("train", "mixtral-8x7b", "--tp", "4", "--etp", "3", "--dp", "2"), "etp"),
    # Megatron / Transformer Engine context parallelism cuts the sequence into 2 x cp equal chunks
    (("train", "llama-110m", "--cp", "3", "--seq-len", "2048"), "cp"),
    # one hardware given twice is an error, not the last one silently
    (("train", "llama-110m", "-H", "h100-sxm", "-H", "a100-80gb-sxm"), "hardware"),
    (("infer", "llama-110m", "-H", "h100-sxm", "--hardware", "h200-sxm"), "hardware"),
    (("roofline", "llama-110m", "-H", "h100-sxm", "-H", "h200-sxm"), "hardware"),
])
def test_numbers_out_of_range_exit_2_naming_the_flag(capsys, args, field):
    code, out, err = run(capsys, *args)
    assert code == 2 and out == "", (code, out[-300:], err)
    line = one_line(err)
    assert f"'{field}'" in line or f"'--{field}'" in line, err


@pytest.mark.parametrize("args, field, says", [
    (("train", "llama-110m", "--tp", "2", "--tp", "4"), "tp", "given 2 times"),
    (("train", "llama-110m", "--tp=2", "--tensor-model-parallel-size", "4"), "tp", "given 2 times"),
    (("infer", "llama-110m", "--batch", "1", "--batch", "8", "--batch", "2"), "batch", "given 3 times"),
    (("serve", "llama-110m", "-H", "h100-sxm", "--concurrency", "4", "--concurrency", "8"), "concurrency", "given 2"),
    (("search", "llama-110m", "--global-batch", "8", "--global-batch", "16"), "global-batch", "given 2 times"),
    (("train", "llama-110m", "--tp", "2", "--sequence-parallel", "--no-sequence-parallel"), "sequence-parallel",
     "given both --sequence-parallel and --no-sequence-parallel"),
])
def test_a_one_value_option_given_twice_is_refused(capsys, args, field, says):
    """click keeps the last of a repeated option silently (`--tp 2 --tp 4` ran at tp 4): a
    one-value option (or a switch given both ways) repeated is an error naming it, exit 2."""
    code, out, err = run(capsys, *args)
    assert code == 2 and out == "", (code, out[-300:], err)
    one_line(err, f"'{field}'", says)


@pytest.mark.parametrize("args", [
    ("train", "llama-110m", "--json", "--json"),  # the same switch twice says one thing
    ("search", "llama-110m", "--global-batch", "8", "--devices", "1", "-H", "h100-sxm", "-H", "a100-80gb-sxm",
     "--top", "1", "--json"),  # a list option repeats
])
def test_repeatable_options_still_repeat(capsys, args):
    code, out, err = run(capsys, *args)
    assert code == 0 and "error" not in err, err
    json.loads(out)


def test_a_search_grid_too_large_is_refused_at_once(capsys):
    devices = ",".join(str(i) for i in range(1, 4097))
    mbs = ",".join(str(i) for i in range(1, 65))
    t0 = time.perf_counter()
    code, _, err = run(capsys, "search", "llama3-8b", "--global-batch", "4096", "--devices", devices, "--micro-batch", mbs)
    assert code == 2 and time.perf_counter() - t0 < 10
    one_line(err, "'devices'", "over the limit of 50,000,000", "4096 devices", "64 mb")


def test_a_serving_search_too_large_is_refused_at_once(capsys):
    batches = ",".join(str(i) for i in range(1, 5001))
    t0 = time.perf_counter()
    code, _, err = run(capsys, "search", "llama3-8b", "--infer", "-H", "h100-sxm", "--batch", batches)
    assert code == 2 and time.perf_counter() - t0 < 10
    one_line(err, "'batch'", "over the limit of 20,000")


def test_divisors_of_a_huge_layer_count_are_fast():
    from costmodel.search import _divisors

    t0 = time.perf_counter()
    assert _divisors(10**12)[:4] == [1, 2, 4, 5] and _divisors(10**12)[-1] == 10**12 and len(_divisors(10**12)) == 169
    assert time.perf_counter() - t0 < 5
    assert _divisors(36) == [1, 2, 3, 4, 6, 9, 12, 18, 36] and _divisors(1) == [1] and _divisors(97) == [1, 97]


def test_a_config_with_1e12_layers_is_refused_where_it_is_read(capsys, tmp_path):
    cfg = json.loads((ROOT / "tests" / "fixtures" / "hf" / "llama3-8b.json").read_text())
    cfg["num_hidden_layers"] = 10**12
    p = tmp_path / "deep.json"
    p.write_text(json.dumps(cfg))
    t0 = time.perf_counter()
    code, _, err = run(capsys, "search", p, "--global-batch", "8")
    assert code == 2 and time.perf_counter() - t0 < 10
    one_line(err, "deep.json", "'num_hidden_layers'")


def test_an_unforeseen_error_is_one_line_with_exit_3(capsys, monkeypatch):
    import costmodel.cli.train_cmd as train_cmd

    def broken(*a, **k):
        return 1 / 0

    monkeypatch.setattr(train_cmd, "train", broken)
    code, out, err = run(capsys, "train", "llama-110m")
    assert code == INTERNAL_ERROR_EXIT == 3 and out == ""
    one_line(err, "internal error: ZeroDivisionError", "please report")


def test_interrupt_exits_130_without_traceback(capsys, monkeypatch):
    import costmodel.cli.train_cmd as train_cmd

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cmd, "train", interrupted)
    code, _, err = run(capsys, "train", "llama-110m")
    assert code == 130 and "Traceback" not in err


@pytest.mark.parametrize("field, content, inner", [
    ("model", '{"hidden_size": "4096"}', "field 'hidden_size'"),
    ("calibration", "format: costmodel-calibration/1\nformat: x\n", "duplicate key 'format'"),
    ("hardware_files", "id: x\x00\n", "NUL byte"),
    ("training.profile", "id: p\nid: q\n", "duplicate key 'id'"),
])
def test_an_error_in_a_file_the_plan_points_to_names_the_plan_and_field(capsys, tmp_path, field, content, inner):
    ref = tmp_path / ("ref.json" if field == "model" else "ref.yaml")
    ref.write_text(content)
    plan = {"model": "llama-110m", "hardware": "h100-sxm", "training": {}, "limits": {"min_mfu": 0.1}}
    if field == "hardware_files":
        plan[field] = [ref.name]
    elif field == "training.profile":
        plan["training"]["profile"] = ref.name
    else:
        plan[field] = ref.name
    p = tmp_path / "plan.yaml"
    p.write_text(json.dumps(plan))  # JSON is YAML
    code, _, err = run(capsys, "check", p)
    assert code == 2
    one_line(err, "plan.yaml", f"field '{field}'", ref.name, inner)
