"""FLOP counts against independent formulas: Megatron-LM eq. 3, the 6ND rule with PaLM's
attention term."""
import pytest

from costmodel.arch import load_model
from costmodel.flops import attention_core_flops, megatron_flops_per_iteration, train_step_flops


def test_gpt3_175b_matches_megatron_eq3():
    # Narayanan et al. 2021 eq. (3) with full recompute is 4 forward passes; model FLOPs are 3.
    m = load_model("gpt3-175b")
    f = train_step_flops(m, 1536, 2048, "none")
    ref = megatron_flops_per_iteration(1536, 2048, 96, 12288, m.vocab) * 3 / 4
    assert f.model_flops == pytest.approx(ref, rel=0.01)


def test_full_recompute_adds_one_forward_of_the_layers():
    m = load_model("llama2-7b")
    none = train_step_flops(m, 8, 4096, "none")
    full = train_step_flops(m, 8, 4096, "full")
    lm_head_fwd = 2 * 8 * 4096 * m.hidden * m.vocab
    assert full.hardware_flops - none.hardware_flops == pytest.approx(none.forward_flops - lm_head_fwd, rel=1e-9)
    assert full.model_flops == none.model_flops


def test_palm_6n_plus_attention_rule():
    # PaLM appendix B: 6N + 12 L H Q T FLOPs per token (N non-embedding params, full attention).
    m = load_model("llama2-7b")
    s, b = 4096, 1
    f = train_step_flops(m, b, s, "none")
    n_matmul = m.params - m.param_breakdown()["embedding"] - m.param_breakdown()["norms"]
    per_token = 6 * n_matmul + 12 * m.layers * m.hidden * s
    assert f.model_flops / (b * s) == pytest.approx(per_token, rel=0.001)


def test_causal_flash_executes_about_half_the_scores():
    m = load_model("llama2-7b")
    full = attention_core_flops(m, 1, 4096, causal=False)
    causal = attention_core_flops(m, 1, 4096, causal=True)
    assert causal / full == pytest.approx(0.5, abs=0.001)


def test_standard_attention_counts_the_whole_score_matrix_as_executed():
    # Materialised (standard) attention multiplies all s x s scores and masks them; flash skips the
    # masked half. Hardware FLOPs differ by the causal half of 4 b s^2 h d per layer and pass
    # (3 passes, + 1 forward again under selective recompute); model FLOPs do not differ.
    m = load_model("llama-1.3b")
    b, s = 2, 2048
    half = m.layers * 4 * b * s * s * m.hidden / 2
    for rc, passes in (("none", 3), ("selective", 4)):
        flash = train_step_flops(m, b, s, rc)
        std = train_step_flops(m, b, s, rc, "standard")
        assert std.model_flops == flash.model_flops
        assert std.hardware_flops - flash.hardware_flops == pytest.approx(passes * half, rel=0.02)
