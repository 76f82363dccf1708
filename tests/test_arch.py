"""Model presets, parameter counting and Hugging Face config.json import (costmodel.arch).

Every number asserted here comes from outside the code under test: a published total (paper
table, model card, or the element count of the public checkpoint), the measured truth file, or
a hand calculation written out in the test. Never from the code's own output.
"""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from costmodel.arch import from_hf_config, list_presets, load_model, load_preset, models_dir
from costmodel.cli.app import main
from costmodel.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
HF_DIR = Path(__file__).resolve().parent / "fixtures" / "hf"

B = 10**9
M = 10**6

# --------------------------------------------------------------------------- published totals
# id -> (published total, allowed |count - published|, where the figure comes from and why that
# tolerance). Tolerance 0: the exact element count of the public checkpoint (or of the measured
# model) is known. Otherwise the paper gives a rounded figure and the tolerance is half a unit of
# its last printed digit, unless the note says why more is needed.
PUBLISHED: dict[str, tuple[int, int, str]] = {
    # GPT-3, Brown et al. 2020 (arXiv:2005.14165) Table 2.1, "n_params" column.
    "gpt3-125m": (125 * M, M // 2, "125M, rounded to 1M"),
    "gpt3-350m": (350 * M, 6 * M,
                  "'350M' is a nominal size, not a rounding: the same shape at 1024 context is GPT-2 "
                  "medium, 354.8M on HF (OpenAI called it 345M); the 2048-position table adds 1M. "
                  "Tolerance 6M (1.7%)"),
    "gpt3-760m": (760 * M, M // 2, "760M, rounded to 1M"),
    "gpt3-1.3b": (1_300 * M, 50 * M, "1.3B, rounded to 0.1B"),
    "gpt3-2.7b": (2_700 * M, 50 * M, "2.7B, rounded to 0.1B"),
    "gpt3-6.7b": (6_700 * M, 50 * M, "6.7B, rounded to 0.1B"),
    "gpt3-13b": (13 * B, 100 * M,
                 "printed '13.0B', but the table's own d_model 5140 (not divisible by its 40 heads) gives "
                 "12.94B and the usual reading 5120 gives 12.85B: the figure is nominal. Tolerance 0.1B"),
    "gpt3-175b": (175 * B, B // 2,
                  "printed '175.0B'; the exact count of the Table 2.1 shape is the widely quoted 174.6B, so "
                  "the figure is rounded to whole billions. Tolerance 0.5B"),
    # Megatron-LM, Narayanan et al. 2021 (arXiv:2104.04473) Table 1, billions to one decimal.
    "megatron-gpt-1.7b": (1_700 * M, 50 * M, "1.7B, rounded to 0.1B"),
    "megatron-gpt-3.6b": (3_600 * M, 50 * M, "3.6B, rounded to 0.1B"),
    "megatron-gpt-7.5b": (7_500 * M, 50 * M, "7.5B, rounded to 0.1B"),
    "megatron-gpt-18b": (18_400 * M, 50 * M, "18.4B, rounded to 0.1B"),
    "megatron-gpt-39b": (39_100 * M, 50 * M, "39.1B, rounded to 0.1B"),
    "megatron-gpt-76b": (76_100 * M, 50 * M, "76.1B, rounded to 0.1B"),
    "megatron-gpt-145b": (145_600 * M, 50 * M, "145.6B, rounded to 0.1B"),
    "megatron-gpt-310b": (310_100 * M, 50 * M, "310.1B, rounded to 0.1B"),
    "megatron-gpt-530b": (529_600 * M, 50 * M, "529.6B, rounded to 0.1B"),
    "megatron-gpt-1t": (1_008_000 * M, 50 * M, "1008.0B, rounded to 0.1B"),
    # Exact element counts of the public checkpoints (HF safetensors metadata).
    "llama2-7b": (6_738_415_616, 0, "HF checkpoint"),
    "llama2-13b": (13_015_864_320, 0, "HF checkpoint"),
    "llama2-70b": (68_976_648_192, 0, "HF checkpoint"),
    "llama3-8b": (8_030_261_248, 0, "HF checkpoint"),
    "llama3-70b": (70_553_706_496, 0, "HF checkpoint"),
    "llama3.1-8b": (8_030_261_248, 0, "HF checkpoint (same shapes as Llama 3 8B)"),
    "llama3.1-70b": (70_553_706_496, 0, "HF checkpoint (same shapes as Llama 3 70B)"),
    "llama3.1-405b": (405_853_388_800, 0, "HF checkpoint"),
    "mistral-7b": (7_241_732_096, 0, "HF checkpoint"),
    "mixtral-8x7b": (46_702_792_704, 0, "HF checkpoint (published 46.7B)"),
    "mixtral-8x22b": (140_630_071_296, 0, "mistralai HF checkpoint, vocab 32768 (published 141B)"),
    "qwen2.5-7b": (7_615_616_512, 0, "HF checkpoint (model card 7.61B)"),
    "qwen2.5-72b": (72_706_203_648, 0, "HF checkpoint (model card 72.7B)"),
    # Qwen3 MoE model cards (https://huggingface.co/Qwen/Qwen3-30B-A3B, .../Qwen3-235B-A22B), rounded.
    "qwen3-30b-a3b": (30_500 * M, 50 * M, "30.5B, rounded to 0.1B"),
    "qwen3-235b-a22b": (235 * B, B // 2, "235B, rounded to whole billions"),
    "gemma2-9b": (9_241_705_984, 0, "HF checkpoint"),
    "gemma2-27b": (27_227_128_320, 0, "HF checkpoint"),
    "falcon-7b": (6_921_720_704, 0, "unique parameters; HF checkpoint 7,217,189,760 less the stored tied lm_head"),
    "falcon-40b": (41_303_293_952, 0, "unique parameters; HF checkpoint 41,835,970,560 less the stored tied lm_head"),
    "deepseek-v3": (671_026_419_200, 0, "main model of the HF checkpoint, MTP module excluded (published 671B)"),
    # PaLM, Chowdhery et al. 2022 (arXiv:2204.02311) Table 1 / Table 3: "540.35B". The count of
    # Table 1's shape (256k vocabulary, scale-only norms) is 540,356,474,880, 6.5M above the printed
    # figure, which is truncated, not rounded: tolerance 10M (0.002%).
    "palm-540b": (540_350 * M, 10 * M, "540.35B printed (truncated); tolerance 10M"),
    "palm-62b": (62_500 * M, 5 * M, "62.50B, rounded to 0.01B"),
    "palm-8b": (8_630 * M, 5 * M, "8.63B, rounded to 0.01B"),
    # The measured truth file ../shared/truth/h100-h200-public.jsonl, field model.params.
    "llama-110m": (134_105_856, 0, "truth file"),
    "llama-350m": (373_867_520, 0, "truth file"),
    "llama-1.3b": (1_345_423_360, 0, "truth file"),
}


def test_every_preset_has_a_published_count_here():
    on_disk = {p.stem for p in models_dir().glob("*.yaml")}
    assert set(list_presets()) == on_disk
    assert on_disk == set(PUBLISHED), (
        f"presets without an expectation: {sorted(on_disk - set(PUBLISHED))}; "
        f"expected but missing: {sorted(set(PUBLISHED) - on_disk)}"
    )


@pytest.mark.parametrize("pid", sorted(PUBLISHED))
def test_preset_param_count_matches_published(pid):
    published, tol, why = PUBLISHED[pid]
    m = load_preset(pid)
    assert m.id == pid
    assert m.published_params == published, "preset's published_params differs from the cited figure"
    assert m.params_source and m.source
    assert abs(m.params - published) <= tol, f"{pid}: {m.params:,} vs published {published:,} ({why})"
    assert sum(m.param_breakdown().values()) == m.params


def test_rounded_gpt3_and_megatron_figures_round_to_the_printed_value():
    # The printed digits themselves, reproduced by rounding the count the same way.
    assert round(load_preset("gpt3-1.3b").params / 1e8) / 10 == 1.3
    assert round(load_preset("gpt3-2.7b").params / 1e8) / 10 == 2.7
    assert round(load_preset("gpt3-6.7b").params / 1e8) / 10 == 6.7
    assert round(load_preset("gpt3-175b").params / 1e9) == 175
    for pid, printed in [("1.7b", 1.7), ("3.6b", 3.6), ("7.5b", 7.5), ("18b", 18.4), ("39b", 39.1),
                         ("76b", 76.1), ("145b", 145.6), ("310b", 310.1), ("530b", 529.6), ("1t", 1008.0)]:
        assert round(load_preset(f"megatron-gpt-{pid}").params / 1e8) / 10 == printed, pid


# --------------------------------------------------------------------------- hand calculations
@pytest.mark.parametrize("pid,L,h", [("megatron-gpt-1.7b", 24, 2304), ("megatron-gpt-145b", 80, 12288),
                                     ("megatron-gpt-1t", 128, 25600)])
def test_megatron_count_is_the_paper_formula_plus_final_layernorm(pid, L, h):
    # Narayanan et al. 2021 section 5.1: P = 12 l h^2 (1 + 13/(12h) + (V+s)/(12 l h))
    #   = 12 l h^2 + 13 l h + (V + s) h, with V = 51200, s = 2048; the formula leaves out the
    # final LayerNorm (weight and bias: 2h).
    V, s = 51200, 2048
    assert load_preset(pid).params == 12 * L * h * h + 13 * L * h + (V + s) * h + 2 * h


def test_gpt3_175b_by_hand():
    L, h, V, s = 96, 12288, 50257, 2048
    per_layer = (4 * h * h + 4 * h) + (8 * h * h + 5 * h) + 2 * 2 * h  # attn + MLP (with biases) + 2 LayerNorms
    assert load_preset("gpt3-175b").params == L * per_layer + V * h + s * h + 2 * h == 174_604_259_328


def test_llama_110m_by_hand():
    # 12 x (4 h^2 attention + 3 h f SwiGLU + 2 RMSNorm) + embedding + head + final norm
    h, f, V = 768, 2048, 32000
    assert load_preset("llama-110m").params == 12 * (4 * h * h + 3 * h * f + 2 * h) + 2 * V * h + h


def test_falcon_parallel_block_norms_and_tied_head():
    f7 = load_preset("falcon-7b")
    f40 = load_preset("falcon-40b")
    # one LayerNorm (weight + bias) per 7B block, two (ln_attn, ln_mlp) per 40B block, plus ln_f
    assert f7.param_breakdown()["norms"] == 32 * 2 * 4544 + 2 * 4544
    assert f40.param_breakdown()["norms"] == 60 * 2 * 2 * 8192 + 2 * 8192
    # fused query_key_value of the 7B: 4544 -> 71*64 + 2*64 (multi-query)
    assert f7.attention_params() == 4544 * (71 * 64 + 2 * 64) + 4544 * 4544
    # the HF checkpoints store the tied lm_head a second time
    assert f7.params + 65024 * 4544 == 7_217_189_760
    assert f40.params + 65024 * 8192 == 41_835_970_560


def test_palm_540b_block_by_hand():
    """PaLM sec. 2 / Table 1: 118 layers, d_model 18432, 48 query heads of 256 sharing one K/V head,
    SwiGLU MLP of 4 d_model (three 18432 x 73728 matrices), no biases, one scale-only LayerNorm per
    parallel block, 256k shared embeddings; FLOPs per token 6N + 12 L H Q T (appendix B)."""
    from costmodel.arch import palm_model
    from costmodel.flops import train_step_flops

    p = load_preset("palm-540b")
    d, L, H, Q, F, V = 18432, 118, 48, 256, 73728, 256_000
    attn = d * H * Q + 2 * d * Q + H * Q * d  # q, shared k and v, out: no biases
    mlp = 3 * d * F
    assert p.attention == "mqa" and p.parallel_block and p.tied_embeddings and not p.bias
    assert p.layer_params() == attn + mlp + d
    assert p.params == L * (attn + mlp + d) + d + V * d  # + final norm + the one embedding matrix
    # the block builder gives the same model from the shape alone
    assert palm_model("palm-540b", L, d, H, Q, F).params == p.params
    per_token = train_step_flops(p, 1, 2048).model_flops / 2048
    # 6N counts the 2.2M norm scales too, which run no matmul: 13M of 3.28e12 FLOPs (4e-6)
    assert per_token == pytest.approx(6 * p.params + 12 * L * H * Q * 2048, rel=1e-5)
    assert per_token == pytest.approx(6 * (p.params - (L + 1) * d) + 12 * L * H * Q * 2048, rel=1e-12)


def test_gemma2_four_norms_and_head_dim():
    g = load_preset("gemma2-9b")
    assert g.param_breakdown()["norms"] == 42 * 4 * 3584 + 3584
    # q 3584 -> 16 x 256, k and v 3584 -> 8 x 256, o 4096 -> 3584: head_dim is not hidden / heads
    assert g.attention_params() == 3584 * 4096 + 2 * 3584 * 2048 + 4096 * 3584
    assert g.param_breakdown()["lm_head"] == 0


def test_qwen2_qkv_biases():
    q = load_preset("qwen2.5-7b")
    no_bias = q.model_copy(update={"qkv_bias": False})
    assert q.params - no_bias.params == 28 * (3584 + 2 * 4 * 128)


def test_deepseek_v3_mla_and_first_dense_layers_by_hand():
    d = load_preset("deepseek-v3")
    h, n = 7168, 128
    mla = (h * 1536 + 1536 + 1536 * n * 192  # q_a_proj, q_a_layernorm, q_b_proj
           + h * (512 + 64) + 512 + 512 * n * (128 + 128)  # kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj
           + n * 128 * h)  # o_proj
    assert d.attention_params() == mla
    assert d.dense_layers == 3 and d.moe_layers == 58
    assert d.param_breakdown()["mlp_dense"] == 3 * 3 * h * 18432
    assert d.param_breakdown()["moe_router"] == 58 * (256 * h + 256)  # gate weight + e_score_correction_bias
    assert d.param_breakdown()["moe_experts"] == 58 * 256 * 3 * h * 2048
    assert d.param_breakdown()["moe_shared_experts"] == 58 * 3 * h * 2048


# --------------------------------------------------------------------------- active parameters
def test_mixtral_8x7b_active_params():
    # Mistral AI (mixtral-of-experts announcement; Jiang et al. 2024): 12.9B active parameters per token.
    # That figure counts the embedding and the head (without the input embedding it would be 12.75B).
    m = load_preset("mixtral-8x7b")
    assert abs(m.active_params - 12.9 * B) <= 50 * M
    # by hand: total less 6 idle SwiGLU experts in each of 32 layers
    assert m.active_params == 46_702_792_704 - 32 * 6 * 3 * 4096 * 14336


def test_mixtral_8x22b_active_params():
    # Mistral AI: 39B active out of 141B.
    m = load_preset("mixtral-8x22b")
    assert abs(m.active_params - 39 * B) <= B // 2
    assert round(m.params / 1e9) == 141


def test_deepseek_v3_active_params():
    # DeepSeek-V3 report: 37B activated per token; DeepSeek's README_WEIGHTS.md: 36.6B, "including
    # 0.9B for the output head", i.e. the input embedding (a table lookup) is not counted.
    # active_params counts the input embedding, so it is subtracted here to compare.
    d = load_preset("deepseek-v3")
    emb = 129280 * 7168
    assert d.param_breakdown()["embedding"] == emb
    assert abs((d.active_params - emb) - 36.6 * B) <= 50 * M
    assert round((d.active_params - emb) / 1e9) == 37
    # total published as 671B
    assert round(d.params / 1e9) == 671


def test_deepseek_v3_mtp_module_is_excluded():
    # num_nextn_predict_layers: 1 in config.json, but the preset (and the import) describe the main
    # model only: 61 layers, not 62.
    assert load_preset("deepseek-v3").layers == 61
    assert from_hf_config(HF_DIR / "deepseek-v3.json").layers == 61


# --------------------------------------------------------------------------- bad preset files
_GOOD = dict(id="bad-model", layers=4, hidden=256, heads=8, ffn=512, vocab=1000)


def _write(tmp_path, data: dict) -> Path:
    import yaml

    p = tmp_path / "bad-model.yaml"
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    return p


def test_good_minimal_file_loads(tmp_path):
    m = load_model(str(_write(tmp_path, _GOOD)))
    assert m.params == 4 * (4 * 256 * 256 + 3 * 256 * 512 + 2 * 256) + 2 * 1000 * 256 + 256


@pytest.mark.parametrize("update,drop,field,words", [
    ({"kv_heads": 3}, None, "kv_heads", "multiple of kv_heads"),
    ({"moe": {"experts": 4, "top_k": 5, "expert_ffn": 128}}, None, "moe.top_k", "top_k (5) cannot exceed experts (4)"),
    ({}, "layers", "layers", "missing"),
])
def test_bad_preset_rejected_with_field(tmp_path, capsys, update, drop, field, words):
    data = {**_GOOD, **update}
    if drop:
        del data[drop]
    path = _write(tmp_path, data)
    with pytest.raises(InputError) as info:
        load_model(str(path))
    assert info.value.field == field
    assert words in str(info.value)
    assert str(path) in str(info.value)
    # and the CLI turns it into one line on stderr, exit code 2, no traceback
    code, out, err = _run(["model", "show", str(path)], capsys)
    assert code == 2
    assert f"field '{field}'" in err and "Traceback" not in err


# --------------------------------------------------------------------------- CLI
def _run(argv, capsys):
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def test_model_list_json_lists_every_preset(capsys):
    code, out, _ = _run(["model", "list", "--json"], capsys)
    assert code == 0
    rows = json.loads(out)
    assert {r["id"] for r in rows} == set(PUBLISHED)
    by_id = {r["id"]: r for r in rows}
    assert by_id["llama3-8b"]["params"] == 8_030_261_248
    assert by_id["mixtral-8x7b"]["published_params"] == 46_702_792_704


@pytest.mark.parametrize("pid", ["gpt3-175b", "deepseek-v3", "falcon-7b"])
def test_model_show_prints_breakdown_and_published(pid, capsys):
    published = PUBLISHED[pid][0]
    code, out, _ = _run(["model", "show", pid], capsys)
    assert code == 0
    for component in ("embedding", "attention", "norms", "total"):
        assert component in out
    assert "published" in out
    assert f"{published:,}" in out


def test_model_show_json(capsys):
    code, out, _ = _run(["model", "show", "mixtral-8x7b", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["params"] == 46_702_792_704
    assert doc["model"]["published_params"] == 46_702_792_704
    assert doc["params_by_component"]["moe_router"] == 32 * 4096 * 8


# --------------------------------------------------------------------------- Hugging Face config.json
# fixture -> (published count, preset with the same architecture or None)
HF_FIXTURES = {
    "llama3-8b": (8_030_261_248, "llama3-8b"),
    "mixtral-8x7b": (46_702_792_704, "mixtral-8x7b"),
    "qwen2.5-7b": (7_615_616_512, "qwen2.5-7b"),
    "gpt2": (124_439_808, None),  # openai-community/gpt2 on HF (OpenAI: "124M")
    "deepseek-v3": (671_026_419_200, "deepseek-v3"),
    "falcon-7b": (6_921_720_704, "falcon-7b"),
    "falcon-40b": (41_303_293_952, "falcon-40b"),
}

_COUNTED = ("layers", "hidden", "heads", "n_kv_heads", "d_head", "ffn", "activation", "vocab", "tied_embeddings",
            "norm", "norms_per_layer", "qkv_bias", "bias", "mla", "moe")


@pytest.mark.parametrize("name", sorted(HF_FIXTURES))
def test_hf_import_matches_published(name):
    published, preset = HF_FIXTURES[name]
    m = from_hf_config(HF_DIR / f"{name}.json")
    assert m.params == published
    if preset:
        p = load_preset(preset)
        for attr in _COUNTED:
            assert getattr(m, attr) == getattr(p, attr), attr
        assert m.active_params == p.active_params


def test_hf_import_details():
    assert from_hf_config(HF_DIR / "gpt2.json").param_breakdown()["position_embedding"] == 1024 * 768
    assert from_hf_config(HF_DIR / "qwen2.5-7b.json").sliding_window is None  # use_sliding_window: false
    assert from_hf_config(HF_DIR / "mixtral-8x7b.json").moe.top_k == 2
    f40 = from_hf_config(HF_DIR / "falcon-40b.json")
    assert (f40.n_kv_heads, f40.norms_per_layer, f40.parallel_block) == (8, 2, True)


@pytest.mark.parametrize("name", sorted(HF_FIXTURES))
def test_cli_py_model_show_hf_fixture(name, capsys, monkeypatch):
    """`python cli.py model show tests/fixtures/hf/<x>.json`, run in-process through the root cli.py."""
    path = HF_DIR / f"{name}.json"
    monkeypatch.setattr(sys, "argv", ["cli.py", "model", "show", str(path), "--json"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(ROOT / "cli.py"), run_name="__main__")
    assert info.value.code in (0, None)
    doc = json.loads(capsys.readouterr().out)
    assert doc["params"] == HF_FIXTURES[name][0]
    # and the table form
    code, out, _ = _run(["model", "show", str(path)], capsys)
    assert code == 0 and "total" in out and f"{HF_FIXTURES[name][0]:,}" in out


def test_hf_bad_json_is_an_input_error(tmp_path):
    p = tmp_path / "config.json"
    p.write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError):
        from_hf_config(p)
    p.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4}), encoding="utf-8")
    with pytest.raises(InputError) as info:
        from_hf_config(p)
    assert info.value.field == "num_hidden_layers"


def test_a_hugging_face_model_directory_loads_its_config_json(tmp_path, capsys):
    d = tmp_path / "Meta-Llama-3-8B"
    d.mkdir()
    (d / "config.json").write_text((HF_DIR / "llama3-8b.json").read_text())
    m = load_model(str(d))
    ref = from_hf_config(HF_DIR / "llama3-8b.json")
    assert m.params == ref.params and m.id == "meta-llama-3-8b"
    with pytest.raises(SystemExit) as exc:
        main(["train", str(d) + "/", "--json"])
    assert (exc.value.code or 0) == 0, capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="without config.json"):
        load_model(str(empty))


def test_a_hub_id_says_how_to_get_its_config_and_a_typo_gets_did_you_mean(capsys):
    with pytest.raises(InputError) as info:
        load_model("meta-llama/Meta-Llama-3-8B")
    msg = str(info.value)
    assert "Hugging Face hub id" in msg and "config.json" in msg and "llama3-8b" in msg
    with pytest.raises(InputError, match="did you mean llama3-8b"):
        load_model("lama3-8b")
    with pytest.raises(InputError, match="did you mean llama3-70b"):
        load_model("llama3-70")
    with pytest.raises(SystemExit) as exc:
        main(["train", "llama-3-8b"])
    assert exc.value.code == 2 and "did you mean llama3-8b" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(SystemExit) as exc:
        main(["train", "llama-1.3b", "-H", "h100-sm"])
    assert exc.value.code == 2 and "did you mean h100-sxm" in " ".join(capsys.readouterr().err.split())
