"""Where each hardware spec comes from is never silent: a user's spec that takes a shipped id is
reported (a note naming its file, and the efficiency source says the shipped calibration applies
to it), two files with one id in one place are an error naming both, and a file given as
COSTMODEL_HARDWARE_PATH is read or refused, never ignored (issue 25)."""
import json
from pathlib import Path

import pytest

from costmodel.cli.app import main
from costmodel.specs import load_library

ROOT = Path(__file__).resolve().parents[1]
H100 = (ROOT / "hardware" / "h100-sxm.yaml").read_text()


def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def mine(tmp_path):
    p = tmp_path / "my-h100.yaml"
    p.write_text(H100.replace("\nprice_per_hour_usd:", "\nprice_per_hour_usd: 9.99 #", 1))
    return p


def test_a_user_spec_with_a_shipped_id_is_reported_with_the_estimate(capsys, mine):
    code, out, err = run(capsys, "train", "llama-110m", "--hardware-file", mine, "--json")
    assert code == 0, err
    d = json.loads(out)
    assert any("my-h100.yaml replaces the shipped hardware/h100-sxm.yaml" in n for n in d["notes"])
    assert "measured on the shipped h100-sxm; spec from" in d["efficiency_source"] and "my-h100.yaml" in d["efficiency_source"]
    assert "note:" not in err  # reported once, with the result
    code, out, _ = run(capsys, "train", "llama-110m", "--hardware-file", mine)
    assert "my-h100.yaml replaces the shipped hardware/h100-sxm.yaml" in _flat(out)
    code, out, _ = run(capsys, "infer", "llama-110m", "--hardware-file", mine, "--json")
    assert any("my-h100.yaml" in n for n in json.loads(out)["notes"])


def test_commands_without_notes_print_it_on_stderr(capsys, mine, monkeypatch):
    code, _, err = run(capsys, "search", "llama-110m", "-H", "h100-sxm", "--devices", "1", "--global-batch", "8",
                       "--top", "1", "--hardware-file", mine, "--json")
    assert code == 0 and "note: hardware 'h100-sxm': the spec in" in _flat(err) and "my-h100.yaml" in err
    monkeypatch.setenv("COSTMODEL_HARDWARE_PATH", str(mine.parent))
    code, _, err = run(capsys, "hardware", "show", "h100-sxm")
    assert code == 0 and "replaces the shipped hardware/h100-sxm.yaml" in _flat(err)


def test_validate_names_the_spec_behind_the_calibration(capsys, mine):
    rec = {"kind": "kernel", "op": "gemm", "dtype": "bf16", "m": 1024, "n": 1024, "k": 1024, "s": 2e-5,
           "tflops": 107.4, "hardware": "h100-sxm"}
    f = mine.parent / "r.jsonl"
    f.write_text(json.dumps(rec) + "\n")
    code, out, _ = run(capsys, "validate", f, "--hardware-file", mine, "--json")
    assert code == 0 and "spec from" in json.loads(out)["efficiency"]["h100-sxm"]
    code, out, _ = run(capsys, "validate", f, "--json")
    assert "spec from" not in json.loads(out)["efficiency"]["h100-sxm"]


def test_the_library_lists_replacements():
    lib = load_library()
    assert lib.replaced == {} and lib.notes("dgx-h100") == []


def test_two_files_with_one_id_in_a_directory(capsys, tmp_path, monkeypatch):
    d = tmp_path / "specs"
    d.mkdir()
    (d / "a.yaml").write_text(H100)
    (d / "sub").mkdir()
    (d / "sub" / "b.yaml").write_text(H100)
    monkeypatch.setenv("COSTMODEL_HARDWARE_PATH", str(d))
    code, _, err = run(capsys, "hardware", "list")
    assert code == 2 and "a.yaml" in err and "b.yaml" in err and "'h100-sxm'" in err and "Traceback" not in err
    monkeypatch.delenv("COSTMODEL_HARDWARE_PATH")
    code, _, err = run(capsys, "train", "llama-110m", "--hardware-file", d / "a.yaml", "--hardware-file", d / "sub" / "b.yaml")
    assert code == 2 and "a.yaml" in err and "b.yaml" in err
    code, _, err = run(capsys, "train", "llama-110m", "--hardware-file", d / "a.yaml", "--hardware-file", d / "a.yaml")
    assert code == 0, err  # the same file twice is one spec


def test_a_spec_file_as_the_path_variable_is_read(capsys, tmp_path, monkeypatch):
    p = tmp_path / "my-gpu.yaml"
    p.write_text(H100.replace("id: h100-sxm", "id: my-gpu"))
    monkeypatch.setenv("COSTMODEL_HARDWARE_PATH", str(p))
    code, out, err = run(capsys, "hardware", "show", "my-gpu")
    assert code == 0 and "my-gpu.yaml" in _flat(out), err
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    monkeypatch.setenv("COSTMODEL_HARDWARE_PATH", str(other))
    code, _, err = run(capsys, "hardware", "list")
    assert code == 2 and "notes.txt" in err and "COSTMODEL_HARDWARE_PATH" in err
