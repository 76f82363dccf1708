"""CLI behaviour: exit codes 0/1/2, --json shapes, errors without tracebacks."""
import json

import pytest

from costmodel.cli.app import main


def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def test_validate_json_shape(capsys, truth_file):
    code, out, _ = run(capsys, "validate", str(truth_file), "--json")
    assert code == 0
    d = json.loads(out)
    assert {"name", "kind", "metric", "measured", "predicted", "rel_error"} <= set(d["cases"][0])
    assert {"n", "mape", "max_abs_rel_error"} <= set(d["summary"]["train.peak_bytes"])


def test_validate_oom_record_is_a_fits_case(capsys, tmp_path):
    rec = {"kind": "train", "name": "too-big", "model": {"arch": "llama", "layers": 80, "hidden": 8192, "heads": 64,
           "kv_heads": 8, "ffn": 28672, "vocab": 128256, "tied_embeddings": False}, "hardware": "h100-sxm", "devices": 1,
           "parallel": {"dp": 1, "tp": 1, "pp": 1, "sharding": "none"}, "micro_batch": 1, "seq_len": 2048,
           "precision": "amp-bf16", "optimizer": "adamw", "recompute": "none", "attention": "flash", "measured": {"oom": True}}
    f = tmp_path / "oom.jsonl"
    f.write_text(json.dumps(rec) + "\n")
    code, out, _ = run(capsys, "validate", str(f), "--json")
    case = json.loads(out)["cases"][0]
    assert case["metric"] == "fits" and case["predicted"] is False


def test_train_json_and_fit(capsys):
    code, out, _ = run(capsys, "train", "llama-1.3b", "--micro-batch", "4", "--seq-len", "2048", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["fits"] is True
    assert d["memory"]["peak_bytes"] > d["memory"]["steady_bytes"]


def test_train_and_infer_that_do_not_fit_are_results_exit_0_with_advice(capsys):
    # A computed "does not fit" is a result (exit 0, a clear line, fits false in --json); `check`
    # is where a limit fails with exit 1.
    code, out, _ = run(capsys, "train", "llama2-70b", "--hardware", "h100-sxm")
    assert code == 0
    flat = " ".join(out.split())
    assert "does not fit: needs" in flat and "Try:" in flat and "MFU" in flat
    code, out, _ = run(capsys, "train", "llama2-70b", "--hardware", "h100-sxm", "--json")
    assert code == 0 and json.loads(out)["fits"] is False and json.loads(out)["fix_suggestions"]
    code, out, _ = run(capsys, "infer", "llama2-70b", "--batch", "64")
    assert code == 0 and "does not fit" in out
    code, out, _ = run(capsys, "infer", "llama2-70b", "--batch", "64", "--json")
    assert code == 0 and json.loads(out)["fits"] is False


def test_bad_input_exits_2_without_traceback(capsys):
    code, _, err = run(capsys, "train", "no-such-model")
    assert code == 2
    assert "Traceback" not in err and "no-such-model" in err
    code, _, err = run(capsys, "train", "llama2-7b", "--precision", "fp9")
    assert code == 2 and "precision" in err
    code, _, err = run(capsys, "train", "llama2-7b", "--devices", "6", "--tp", "4")
    assert code == 2 and "devices" in err


@pytest.mark.parametrize("args, field", [
    (("train", "llama-1.3b", "--micro-batch", "0"), "micro-batch"),
    (("train", "llama-1.3b", "--tp", "0"), "tp"),
    (("train", "llama-1.3b", "--pp", "0"), "pp"),
    (("train", "llama-1.3b", "--seq-len", "-4"), "seq-len"),
    (("infer", "llama-1.3b", "--tp", "0"), "tp"),
    (("infer", "llama-1.3b", "--batch", "-1"), "batch"),
    (("search", "llama-1.3b", "--global-batch", "8", "--micro-batch", "0"), "micro-batch"),
    (("search", "llama-1.3b", "--infer", "--batch", "0"), "batch"),
    (("roofline", "llama-1.3b", "--seq-len", "0"), "seq-len"),
])
def test_zero_or_negative_counts_exit_2_naming_the_flag(capsys, args, field):
    """Counts that are divided by (parallel sizes, batches, lengths) were ZeroDivisionError or raw
    pydantic tracebacks at 0 or below (exit 1)."""
    code, _, err = run(capsys, *args)
    assert code == 2 and "Traceback" not in err, err
    assert f"'{field}'" in err, err


def test_bad_record_file(capsys, tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"kind": "train", "name": "x"}\nnot json\n')
    code, _, err = run(capsys, "validate", str(f))
    assert code == 2 and "bad.jsonl" in err


_GOOD_TRAIN = {"kind": "train", "name": "x", "hardware": "h100-sxm", "devices": 1,
               "model": {"arch": "llama", "layers": 2, "hidden": 256, "heads": 4, "ffn": 688, "vocab": 1000},
               "parallel": {"dp": 1, "tp": 1, "pp": 1, "sharding": "none"}, "micro_batch": 2, "seq_len": 128,
               "precision": "amp-bf16", "recompute": "none", "attention": "flash", "measured": {"step_seconds": 0.01}}


@pytest.mark.parametrize("change,field", [
    ({"attention": "foo"}, "attention"), ({"precision": "amp-fp8"}, "precision"), ({"recompute": "some"}, "recompute"),
    ({"micro_batch": 0}, "micro_batch"), ({"global_batch": 3}, "global_batch"), ({"global_batch": -4}, "global_batch"),
])
def test_bad_record_field_names_line_and_field(capsys, tmp_path, change, field):
    """A record whose field is out of range: exit 2, the file and line, the field; no traceback and
    no silent fix (micro_batch 0 used to become 1, global_batch 3 over micro_batch 2 a single step)."""
    f = tmp_path / "recs.jsonl"
    f.write_text(json.dumps(_GOOD_TRAIN) + "\n" + json.dumps(dict(_GOOD_TRAIN, **change)) + "\n")
    code, _, err = run(capsys, "validate", str(f))
    assert code == 2 and "Traceback" not in err, err
    assert "recs.jsonl:2" in err and f"'{field}'" in err, err


def test_infer_json(capsys):
    code, out, _ = run(capsys, "infer", "llama3-8b", "--batch", "8", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["max_batch_that_fits"] >= 8 and d["tpot_s"] > 0


_GOOD_GEMM = {"kind": "kernel", "op": "gemm", "dtype": "bf16", "m": 1024, "n": 1024, "k": 1024, "s": 2e-5, "tflops": 107.4,
              "hardware": "h100-sxm"}


@pytest.mark.parametrize("verb", ["validate", "calibrate"])
@pytest.mark.parametrize("change,field", [
    ({"m": 0}, "m"), ({"s": -1e-5}, "s"), ({"k": "big"}, "k"), ({"dtype": "bf17"}, "dtype"), ({"op": "gemv"}, "op"),
])
def test_bad_kernel_record_names_line_and_field(capsys, tmp_path, verb, change, field):
    """A kernel record with a zero, negative or non-numeric shape or time: exit 2 naming the file,
    line and field (validate printed nan or -100% with exit 0; calibrate raised a math domain error)."""
    f = tmp_path / "k.jsonl"
    f.write_text(json.dumps(_GOOD_GEMM) + "\n" + json.dumps(dict(_GOOD_GEMM, **change)) + "\n")
    args = ("validate", str(f)) if verb == "validate" else ("calibrate", "--records", str(f), "--out", str(tmp_path / "o.yaml"))
    code, _, err = run(capsys, *args)
    assert code == 2 and "Traceback" not in err, err
    assert "k.jsonl" in err and ("k.jsonl:2" in err or "line 2" in err) and f"'{field}'" in err, err


def test_infer_max_tpot_finds_the_largest_batch_not_a_power_of_two(capsys):
    from costmodel.arch import load_model
    from costmodel.inference import _tpot_fn, max_batch
    from costmodel.roofline import efficiency_for
    from costmodel.specs import load_library
    from costmodel.workload import InferJob

    code, out, _ = run(capsys, "infer", "llama3-8b", "--batch", "32", "--prompt-len", "2048", "--gen-len", "256",
                       "--max-tpot-ms", "30", "--json")
    assert code == 0
    d = json.loads(out)
    best = d["best_under_tpot"]
    assert best["batch"] > 128 and best["tpot_s"] <= 0.030
    spec, m = load_library().device("h100-sxm"), load_model("llama3-8b")
    job = InferJob(batch=1, prompt_len=2048, gen_len=256)
    limit = max_batch(m, spec, job, 2048 + 256)
    tpot = _tpot_fn(m, spec, job, 1, None, efficiency_for(spec))
    # the next batch misses the target or does not fit
    assert best["batch"] == limit or tpot(best["batch"] + 1)[0] > 0.030
    # end to end (prefill included) is below decode-only throughput, and both are printed, labelled
    assert best["e2e_tokens_per_s"] < best["tokens_per_s"] and d["e2e_tokens_per_s"] < d["tokens_per_s"]
    code, out, _ = run(capsys, "infer", "llama3-8b", "--batch", "32", "--prompt-len", "2048", "--gen-len", "256",
                       "--max-tpot-ms", "12")
    flat = " ".join(out.split())
    assert "decode only" in flat and "end to end" in flat and "prefill" in flat
    small = json.loads(run(capsys, "infer", "llama3-8b", "--prompt-len", "2048", "--gen-len", "256",
                           "--max-tpot-ms", "12", "--json")[1])["best_under_tpot"]
    assert small["tpot_s"] <= 0.012 and tpot(small["batch"] + 1)[0] > 0.012
    assert small["batch"] & (small["batch"] - 1)  # not a power of two here


def test_megatron_option_names_are_aliases_on_train_and_search(capsys):
    short = ["--tp", "2", "--pp", "2", "--micro-batch", "2", "--global-batch", "64", "--seq-len", "4096"]
    mega = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2", "--micro-batch-size", "2",
            "--global-batch-size", "64", "--seq-length", "4096"]
    outs = []
    for names in (short, mega):
        code, out, err = run(capsys, "train", "llama3-8b", "--hardware", "dgx-h100", "--nodes", "1", *names, "--json")
        assert code == 0, err
        outs.append(json.loads(out))
    assert outs[0]["parallel"] == outs[1]["parallel"] and outs[0]["step"] == outs[1]["step"]
    assert outs[1]["parallel"]["tp"] == 2 and outs[1]["job"]["seq_len"] == 4096 and outs[1]["job"]["global_batch"] == 64
    tops = []
    for names in (short, mega):
        code, out, err = run(capsys, "search", "llama3-8b", "--hardware", "dgx-h100", "--devices", "8", *names,
                             "--top", "3", "--json")
        assert code == 0, err
        tops.append([c["layout"] for c in json.loads(out)["top"]])
    assert tops[0] == tops[1] and all(lay["tp"] == 2 and lay["pp"] == 2 for lay in tops[0])


def test_sequence_parallel_reads_the_same_in_train_and_search(capsys):
    from costmodel.cli.common import normalise_switches

    assert normalise_switches(["search", "m", "--sequence-parallel", "off", "--tp", "2"]) == \
        ["search", "m", "--no-sequence-parallel", "--tp", "2"]
    assert normalise_switches(["x", "--sequence-parallel=on"]) == ["x", "--sequence-parallel"]
    assert normalise_switches(["x", "--sequence-parallel", "both"]) == ["x"]
    assert normalise_switches(["x", "--sequence-parallel", "--tp", "2"]) == ["x", "--sequence-parallel", "--tp", "2"]

    def train_sp(*flag):
        code, out, err = run(capsys, "train", "llama3-8b", "--hardware", "dgx-h100", "--nodes", "1", "--tp", "2", *flag, "--json")
        assert code == 0, err
        return json.loads(out)["parallel"]["sequence_parallel"]

    def search_sp(*flag):
        code, out, err = run(capsys, "search", "llama3-8b", "--hardware", "dgx-h100", "--devices", "8", "--global-batch", "64",
                             "--tp", "2", *flag, "--top", "20", "--json")
        assert code == 0, err
        d = json.loads(out)
        return {c["layout"]["sequence_parallel"] for c in d["top"]}, d["evaluated"]

    for on in (["--sequence-parallel"], ["--sequence-parallel", "on"], ["--sequence-parallel=on"]):
        assert train_sp(*on) is True and search_sp(*on)[0] == {True}
    for off in (["--no-sequence-parallel"], ["--sequence-parallel", "off"], ["--sequence-parallel=off"]):
        assert train_sp(*off) is False and search_sp(*off)[0] == {False}
    n_on, n_off = search_sp("--sequence-parallel")[1], search_sp("--no-sequence-parallel")[1]
    assert train_sp() is False and search_sp()[1] == search_sp("--sequence-parallel", "both")[1] == n_on + n_off
