"""Fuzzing the inputs (issue 25): plans, measurement records, Hugging Face configs, command-line
arguments and hardware specs, each a valid input with one part replaced by something a hostile or
careless user might write (a zero, a negative, a huge or non-finite number, text, a list, a null,
a missing or unknown key, a duplicated line, a NUL byte, bytes that are not UTF-8, a cut file).

Every case must exit 0 or 1 (the input was valid) or 2 with one line naming the file (or the flag)
and never a traceback, an internal error (exit 3) or a hang. The examples are derandomised (the
same in every run, so CI is stable) and few (the whole file runs in about 20 s); set
COSTMODEL_FUZZ_EXAMPLES to run more of them, randomised.
"""
import json
import os
import re
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from costmodel.cli.app import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_MORE = int(os.environ.get("COSTMODEL_FUZZ_EXAMPLES", "0"))


def fuzz(examples: int):
    return settings(max_examples=_MORE or examples, deadline=None, derandomize=not _MORE, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def assert_clean(code, out, err, *, names: str | None = None):
    """Exit 0/1 for a valid input; 2 with one line 'error: ...' naming ``names`` (a file) or some
    quoted field or flag; never a traceback or an internal error."""
    assert "Traceback" not in out + err, err
    assert code in (0, 1, 2), (code, err)
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note:")]
        assert len(lines) == 1 and lines[0].startswith("error:"), err
        if names is not None:
            assert names in lines[0], (names, err)
        else:
            assert re.search(r"'[^']+'", lines[0]), err


# ------------------------------------------------------------------ values and mutations

_SPECIAL_INTS = [0, -1, 1, 2, 3, 7, 2**31, 2**53 + 1, 10**29, -(10**29), 10**31]
WEIRD = st.one_of(
    st.sampled_from(_SPECIAL_INTS),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "0", "-1", "4096", "1e999", "nan", "inf", "80 GiB", "1e999 GiB", "3.35 TB/s", "-5 W",
                     "é", "a" * 200, "x\ny"]),
    st.text(max_size=8),
    st.booleans(),
    st.none(),
    st.lists(st.integers(min_value=-3, max_value=10**6), max_size=3),
    st.dictionaries(st.sampled_from(["a", "tp", "oom", "layers"]), st.integers(-2, 5), max_size=2),
)


def _paths(obj, prefix=()):
    """Every key path of a nested dict (list items as indices)."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append(prefix + (i,))
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def mutated(draw, base: dict):
    """``base`` with one to three changes: a path replaced by a weird value or deleted, or an
    unknown key added."""
    doc = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        how = draw(st.sampled_from(["set", "set", "set", "delete", "add"]))
        path = draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if how == "set":
            parent[path[-1]] = draw(WEIRD)
        elif how == "delete":
            if isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent.pop(path[-1])
        else:
            target = parent if isinstance(parent, dict) else doc
            target[draw(st.sampled_from(["extra", "limits", "kind", "tp", "bogus_key"]))] = draw(WEIRD)
    return doc


@st.composite
def text_damage(draw, text: str) -> bytes:
    """``text`` with one line duplicated, a NUL byte or non-UTF-8 bytes inserted, or cut short."""
    how = draw(st.sampled_from(["dup", "nul", "latin1", "cut", "utf16", "none"]))
    lines = text.splitlines(keepends=True) or [""]
    i = draw(st.integers(0, len(lines) - 1))
    if how == "dup":
        lines.insert(i, lines[i])
        return "".join(lines).encode()
    if how == "nul":
        return ("".join(lines[:i]) + "\x00" + "".join(lines[i:])).encode()
    if how == "latin1":
        return "".join(lines[:i]).encode() + b"\xe9\xff" + "".join(lines[i:]).encode()
    if how == "cut":
        return text.encode()[: draw(st.integers(0, max(len(text) - 1, 0)))]
    if how == "utf16":
        return text.encode("utf-16")
    return text.encode()


def _yaml(doc) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


# ------------------------------------------------------------------ plans

_TRAIN_PLAN = {"name": "fuzz", "model": "llama-110m", "hardware": "h100-sxm", "devices": 2,
               "training": {"tp": 1, "pp": 1, "zero_stage": 1, "micro_batch": 2, "global_batch": 8, "seq_len": 512,
                            "precision": "amp-bf16", "recompute": "none", "framework": "pytorch"},
               "run": {"tokens": 1.0e9, "price_per_hour": 2.5},
               "limits": {"max_memory_fraction": 0.9, "min_mfu": 0.05, "max_step_seconds": 10.0, "max_days": 30.0,
                          "max_cost_usd": 1.0e6}}
_INFER_PLAN = {"model": "llama-110m", "hardware": "h100-sxm",
               "inference": {"tp": 1, "batch": 4, "prompt_len": 256, "gen_len": 32, "weight_dtype": "bf16",
                             "kv_dtype": "bf16", "cuda_graph": True},
               "run": {"tokens": 1.0e6},
               "limits": {"max_ttft_ms": 500.0, "max_tpot_ms": 50.0, "max_memory_fraction": 0.9}}


@fuzz(40)
@given(doc=st.sampled_from([_TRAIN_PLAN, _INFER_PLAN]).flatmap(mutated))
def test_fuzz_plans(capsys, tmp_path, doc):
    p = tmp_path / "plan.yaml"
    p.write_text(_yaml(doc), encoding="utf-8")
    assert_clean(*run(capsys, "check", p, "--no-search", "--json"), names="plan.yaml")


@fuzz(15)
@given(data=st.sampled_from([_TRAIN_PLAN, _INFER_PLAN]).flatmap(lambda d: text_damage(_yaml(d))))
def test_fuzz_plan_bytes(capsys, tmp_path, data):
    p = tmp_path / "plan.yaml"
    p.write_bytes(data)
    assert_clean(*run(capsys, "check", p, "--no-search"), names="plan.yaml")


# ------------------------------------------------------------------ records

_MODEL = {"arch": "llama", "layers": 2, "hidden": 256, "heads": 4, "kv_heads": 2, "ffn": 688, "vocab": 1000}
_RECORDS = [
    {"kind": "train", "name": "t", "hardware": "h100-sxm", "devices": 2, "node": "dgx-h100", "model": _MODEL,
     "parallel": {"dp": 2, "tp": 1, "pp": 1, "sharding": "optimizer", "sequence_parallel": False},
     "micro_batch": 2, "global_batch": 8, "seq_len": 128, "precision": "amp-bf16", "optimizer": "adamw",
     "recompute": "none", "attention": "flash", "framework": "pytorch", "overlap_grad_reduce": True,
     "measured": {"step_seconds": 0.01, "peak_bytes": 3.0e9, "weights_bytes": 1.0e9}},
    {"kind": "published", "name": "p", "hardware": "a100-80gb-sxm", "devices": 8, "node": "dgx-a100",
     "model": {"arch": "gpt", "layers": 4, "hidden": 512, "heads": 8, "ffn": 2048, "vocab": 50257},
     "parallel": {"dp": 2, "tp": 2, "pp": 2, "interleave": None}, "micro_batch": 1, "global_batch": 16,
     "seq_len": 1024, "flops_convention": "hardware", "measured": {"tflops_per_device": 120, "mfu": 0.4}},
    {"kind": "infer", "name": "i", "hardware": "h100-sxm", "batch": 2, "prompt_len": 128, "gen_len": 16,
     "model": _MODEL, "measured": {"prefill_seconds": 0.01, "decode_seconds_per_token": 0.005, "peak_bytes": 2.0e9}},
    {"kind": "decode_step", "name": "d", "hardware": "h200-sxm", "batch": 4, "context_len": 256, "model": _MODEL,
     "parallel": {"tp": 1}, "measured": {"step_seconds": 0.002, "kv_cache_bytes": 1.0e6}},
    {"kind": "kernel", "op": "gemm", "dtype": "bf16", "m": 1024, "n": 1024, "k": 1024, "s": 2e-5, "tflops": 107.4,
     "hardware": "h100-sxm"},
    {"kind": "kernel", "op": "sdpa_fwd", "b": 2, "h": 8, "s": 1024, "d": 64, "s_time": 1e-4, "tflops": 100.0,
     "hardware": "h100-sxm", "dtype": "bf16", "causal": True},
]


@fuzz(60)
@given(rec=st.sampled_from(_RECORDS).flatmap(mutated))
def test_fuzz_records(capsys, tmp_path, rec):
    f = tmp_path / "recs.jsonl"
    f.write_text(json.dumps(_RECORDS[0]) + "\n" + json.dumps(rec) + "\n", encoding="utf-8")  # NaN as JSON's NaN token
    code, out, err = run(capsys, "validate", f, "--json")
    assert_clean(code, out, err, names="recs.jsonl")
    if code == 0:
        json.loads(out, parse_constant=lambda c: pytest.fail(f"bare {c} in --json output"))


@fuzz(15)
@given(data=st.sampled_from(_RECORDS).flatmap(lambda r: text_damage(json.dumps(_RECORDS[0]) + "\n" + json.dumps(r) + "\n")))
def test_fuzz_record_bytes(capsys, tmp_path, data):
    f = tmp_path / "recs.jsonl"
    f.write_bytes(data)
    assert_clean(*run(capsys, "validate", f), names="recs.jsonl")


# ------------------------------------------------------------------ Hugging Face configs

_HF = [json.loads((ROOT / "tests" / "fixtures" / "hf" / f"{n}.json").read_text())
       for n in ("llama3-8b", "deepseek-v3", "gpt2", "mixtral-8x7b", "falcon-40b")]


@fuzz(60)
@given(cfg=st.sampled_from(_HF).flatmap(mutated))
def test_fuzz_hf_configs(capsys, tmp_path, cfg):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg), encoding="utf-8")
    assert_clean(*run(capsys, "model", "show", p, "--json"), names="config.json")


# ------------------------------------------------------------------ hardware specs

_SPECS = [yaml.safe_load((ROOT / "hardware" / f).read_text()) for f in ("h100-sxm.yaml", "nodes/dgx-h100.yaml")]
_SPECS[0]["id"] = "fuzz-gpu"
_SPECS[1]["id"] = "fuzz-node"


@fuzz(40)
@given(spec=st.sampled_from(_SPECS).flatmap(mutated))
def test_fuzz_specs(capsys, tmp_path, spec):
    p = tmp_path / "spec.yaml"
    p.write_text(_yaml(spec), encoding="utf-8")
    hw = spec.get("id") if isinstance(spec.get("id"), str) else "fuzz-gpu"
    code, out, err = run(capsys, "train", "llama-110m", "-H", hw, "--hardware-file", p, "--json")
    if code == 2 and "spec.yaml" not in err:  # the file is fine but names no such id (it was mutated)
        assert_clean(code, out, err)
    else:
        assert_clean(code, out, err, names="spec.yaml" if code == 2 else None)


@fuzz(10)
@given(data=st.sampled_from([_yaml(s) for s in _SPECS]).flatmap(text_damage))
def test_fuzz_spec_bytes(capsys, tmp_path, data):
    p = tmp_path / "spec.yaml"
    p.write_bytes(data)
    assert_clean(*run(capsys, "hardware", "list", "--hardware-file", p), names="spec.yaml")


# ------------------------------------------------------------------ command-line arguments

_ARG_VALUES = st.one_of(st.sampled_from(["0", "-1", "1", "2", "8", "x", "", "1.5", "inf", "-inf", "nan", "1e9", "1e400",
                                         "9" * 40, "-" + "9" * 40, "1,2", "8..16", "on", "both", "h100-sxm", "é"]),
                        st.integers(-(10**12), 10**12).map(str), st.text(max_size=6))
_COMMANDS = [
    (("train", "llama-110m"), ["--tp", "--pp", "--dp", "--devices", "--nodes", "--micro-batch", "--global-batch",
                               "--seq-len", "--zero-stage", "--interleave", "--steps", "--tokens", "--price-per-hour",
                               "--host-time-factor", "--pue", "--power-fraction", "--precision", "--recompute",
                               "--framework", "--hardware"]),
    (("infer", "llama-110m"), ["--tp", "--batch", "--prompt-len", "--gen-len", "--weight-dtype", "--kv-dtype",
                               "--max-tpot-ms", "--host-time-factor", "--hardware"]),
    (("search", "llama-110m", "-H", "h100-sxm", "--devices", "2", "--global-batch", "8", "--top", "1",
      "--recompute", "none", "--offload", "off"),
     ["--devices", "--global-batch", "--seq-len", "--tp", "--pp", "--micro-batch", "--zero-stage", "--tokens",
      "--steps", "--price-per-hour", "--max-memory-fraction", "--top", "--objective", "--interleave"]),
    (("search", "llama-110m", "--infer", "-H", "h100-sxm", "--tp", "1", "--weight-dtype", "bf16", "--kv-dtype", "bf16"),
     ["--batch", "--prompt-len", "--gen-len", "--max-tpot-ms", "--max-ttft-ms", "--price-per-hour", "--objective"]),
    (("roofline", "llama-110m"), ["--micro-batch", "--seq-len", "--dtype", "--hardware"]),
    (("scale", "--hardware", "h100-sxm"), ["--budget-usd", "--budget-flops", "--budget-days", "--devices", "--mfu",
                                           "--price-per-hour", "--served-tokens", "--bits", "--pue"]),
]


@fuzz(60)
@given(cmd=st.sampled_from(_COMMANDS), data=st.data())
def test_fuzz_command_line(capsys, cmd, data):
    base, flags = cmd
    args = list(base)
    for _ in range(data.draw(st.integers(1, 3))):
        args += [data.draw(st.sampled_from(flags)), data.draw(_ARG_VALUES)]
    code, out, err = run(capsys, *args)
    assert_clean(code, out, err)


# ------------------------------------------------------------------ overlays and framework profiles

_OVERLAY = yaml.safe_load((ROOT / "hardware" / "calibrated" / "h100-sxm.yaml").read_text())
_PROFILE = yaml.safe_load((ROOT / "data" / "frameworks" / "megatron.yaml").read_text())


@fuzz(20)
@given(doc=st.just(_OVERLAY).flatmap(mutated))
def test_fuzz_overlays(capsys, tmp_path, doc):
    p = tmp_path / "overlay.yaml"
    p.write_text(_yaml(doc), encoding="utf-8")
    assert_clean(*run(capsys, "train", "llama-110m", "--calibration", p, "--json"), names="overlay.yaml")


@fuzz(20)
@given(doc=st.just(_PROFILE).flatmap(mutated))
def test_fuzz_profiles(capsys, tmp_path, doc):
    p = tmp_path / "profile.yaml"
    p.write_text(_yaml(doc), encoding="utf-8")
    assert_clean(*run(capsys, "train", "llama-110m", "--profile", p, "--json"), names="profile.yaml")
