"""Hugging Face config.json files and model presets are checked at the boundary (arch.HFConfig,
strict ModelConfig): a count given as text, a 0, a null where a number is needed or a missing
MLA dimension is exit 2 naming the file and key; no `or` fallback turns a 0 into a default and no
string is repeated into an absurd parameter count (issue 25)."""
import json
from pathlib import Path

import pytest

from costmodel.arch import from_hf_config, load_model
from costmodel.cli.app import main
from costmodel.errors import InputError

HF = Path(__file__).resolve().parent / "fixtures" / "hf"
LLAMA = json.loads((HF / "llama3-8b.json").read_text())
DEEPSEEK = json.loads((HF / "deepseek-v3.json").read_text())


def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def _cfg(tmp_path, base: dict, name="c.json", drop=(), **change):
    d = {k: v for k, v in base.items() if k not in drop}
    d.update(change)
    p = tmp_path / name
    p.write_text(json.dumps(d), encoding="utf-8")
    return p


@pytest.mark.parametrize("drop, change, field", [
    (("intermediate_size",), {"hidden_size": "4096"}, "hidden_size"),
    ((), {"intermediate_size": 0}, "intermediate_size"),
    ((), {"num_key_value_heads": 0}, "num_key_value_heads"),
    ((), {"hidden_size": None}, "hidden_size"),
    ((), {"num_hidden_layers": 10**12}, "num_hidden_layers"),
    ((), {"vocab_size": 128256.0}, "vocab_size"),
    ((), {"num_attention_heads": True}, "num_attention_heads"),
    ((), {"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
    ((), {"max_position_embeddings": 0}, "max_position_embeddings"),
    ((), {"head_dim": -128}, "head_dim"),
    ((), {"sliding_window": 0}, "sliding_window"),
    ((), {"model_type": 5}, "model_type"),
])
def test_bad_hf_values_name_the_key(capsys, tmp_path, drop, change, field):
    p = _cfg(tmp_path, LLAMA, drop=drop, **change)
    with pytest.raises(InputError) as info:
        from_hf_config(p)
    assert info.value.field == field and info.value.file == str(p)
    code, out, err = run(capsys, "train", p)
    assert code == 2 and out == "" and "Traceback" not in err
    assert f"field '{field}'" in err and "c.json" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("missing", ["qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"])
def test_mla_without_its_dimensions(tmp_path, missing):
    p = _cfg(tmp_path, DEEPSEEK, drop=(missing,))
    with pytest.raises(InputError, match="kv_lora_rank") as info:
        from_hf_config(p)
    assert info.value.field == missing


def test_null_means_not_set_and_falls_back_as_transformers_does(tmp_path):
    base = from_hf_config(HF / "llama3-8b.json")
    m = from_hf_config(_cfg(tmp_path, LLAMA, num_key_value_heads=None, intermediate_size=None, head_dim=None,
                            sliding_window=None, max_position_embeddings=None))
    assert m.kv_heads == m.heads and m.ffn == 4 * m.hidden and m.max_context == 2048
    assert (m.layers, m.hidden, m.vocab) == (base.layers, base.hidden, base.vocab)


@pytest.mark.parametrize("name", ["My Model.json", "modèle ü 8b.json", "Qwen2.5_7B (copy).json", "---.json"])
def test_file_names_with_spaces_or_non_ascii_load(tmp_path, capsys, name):
    p = _cfg(tmp_path, LLAMA, name=name)
    m = from_hf_config(p)
    assert m.params == from_hf_config(HF / "llama3-8b.json").params
    code, _, err = run(capsys, "model", "show", p)
    assert code == 0, err


def test_a_hf_model_directory_with_an_odd_name(tmp_path):
    d = tmp_path / "Llama 3 (8B) ü"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(LLAMA))
    m = load_model(str(d))
    assert m.id == "llama-3--8b" and m.params == from_hf_config(HF / "llama3-8b.json").params


def test_preset_yaml_counts_must_be_integers(tmp_path, capsys):
    p = tmp_path / "m.yaml"
    p.write_text("id: tiny\nlayers: '2'\nhidden: 256\nheads: 4\nffn: 688\nvocab: 1000\n")
    code, _, err = run(capsys, "model", "show", p)
    assert code == 2 and "field 'layers'" in err and "m.yaml" in err
    p.write_text("id: tiny\nlayers: 1000000000000\nhidden: 256\nheads: 4\nffn: 688\nvocab: 1000\n")
    code, _, err = run(capsys, "model", "show", p)
    assert code == 2 and "field 'layers'" in err and "less than or equal to 100000" in err


def test_inline_record_model_counts_as_text_are_errors(capsys, tmp_path):
    rec = {"kind": "train", "name": "x", "hardware": "h100-sxm", "devices": 1,
           "model": {"arch": "llama", "layers": 2, "hidden": "256", "heads": 4, "ffn": 688, "vocab": 1000},
           "parallel": {"dp": 1, "tp": 1, "pp": 1, "sharding": "none"}, "micro_batch": 2, "seq_len": 128,
           "measured": {"step_seconds": 0.01}}
    f = tmp_path / "recs.jsonl"
    f.write_text(json.dumps(rec) + "\n")
    code, _, err = run(capsys, "validate", f)
    assert code == 2 and "recs.jsonl:1" in err and "'model.hidden'" in err, err
