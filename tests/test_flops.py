"""FLOP counts against independent formulas: Megatron-LM eq. 3, the 6ND rule with PaLM's
attention term; one attention convention for model and hardware FLOPs (HFU >= MFU)."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import costmodel
from costmodel.arch import list_presets, load_model
from costmodel.cli.app import main
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


def test_attention_kernel_changes_neither_count():
    # One convention (PaLM appendix B, Korthikanti et al. 2022 appendix A): the full s x s score
    # matrix in model and hardware FLOPs alike, whether a flash kernel skips the masked half or
    # standard attention multiplies it; recompute is the only difference between the two counts.
    m = load_model("llama-1.3b")
    b, s = 2, 2048
    core = m.layers * 4 * b * s * s * m.hidden  # one forward of the scores and values, full matrix
    for rc, extra in (("none", 0.0), ("selective", core)):
        flash = train_step_flops(m, b, s, rc)
        std = train_step_flops(m, b, s, rc, "standard")
        assert std.model_flops == flash.model_flops and std.hardware_flops == flash.hardware_flops
        assert flash.hardware_flops - flash.model_flops == pytest.approx(extra, rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(preset=st.sampled_from(list_presets()), batch=st.integers(1, 4096), seq=st.integers(1, 1 << 21),
       recompute=st.sampled_from(["none", "selective", "full"]), attention=st.sampled_from(["flash", "standard"]))
def test_hardware_flops_never_below_model_flops(preset, batch, seq, recompute, attention):
    f = train_step_flops(load_model(preset), batch, seq, recompute, attention)
    assert f.hardware_flops >= f.model_flops > 0


@settings(max_examples=25, deadline=None)
@given(preset=st.sampled_from(["llama-1.3b", "llama3-8b", "gpt3-1.3b", "mixtral-8x7b", "gemma2-9b", "deepseek-v3"]),
       seq=st.sampled_from([128, 2048, 8192, 131072, 1_000_000]), mb=st.integers(1, 8),
       recompute=st.sampled_from(["none", "selective", "full"]), attention=st.sampled_from(["flash", "standard"]))
def test_hfu_never_below_mfu(preset, seq, mb, recompute, attention):
    est = costmodel.train(preset, "h100-sxm", micro_batch=mb, seq_len=seq, recompute=recompute, attention=attention)
    assert est.hfu >= est.mfu > 0


def test_issue_cases_hfu_at_least_mfu_and_long_sequence_warned(capsys):
    est = costmodel.train("gpt3-175b", "dgx-a100", nodes=128, tp=8, pp=8, global_batch=1536)
    assert est.hfu >= est.mfu
    long = costmodel.train("llama3-8b", seq_len=1_000_000)
    assert long.hfu >= long.mfu
    assert any("max_context" in n and "8,192" in n for n in long.notes)
    assert not any("max_context" in n for n in costmodel.train("llama3-8b", seq_len=8192).notes)
    assert any("max_context" in n for n in costmodel.infer("llama3-8b", prompt_len=8000, gen_len=512).notes)
    with pytest.raises(SystemExit):
        main(["train", "llama3-8b", "--seq-len", "1000000"])
    out = " ".join(capsys.readouterr().out.split())
    assert "note: --seq-len 1,000,000 exceeds llama3-8b's max_context 8,192" in out


def test_partial_recompute_fraction():
    """A partial rematerialisation policy re-runs a share f of each layer's forward: f x the full
    policy's recompute FLOPs, and on one device f x its extra step time."""
    from costmodel.arch import load_model
    from costmodel.flops import train_step_flops
    from costmodel.specs import load_library
    from costmodel.training import estimate_train
    from costmodel.workload import Parallel, TrainJob

    m = load_model("llama-1.3b")
    full = train_step_flops(m, 4, 2048, "full")
    part = train_step_flops(m, 4, 2048, "full", recompute_fraction=0.76)
    assert part.model_flops == full.model_flops
    assert part.recompute_flops == pytest.approx(0.76 * full.recompute_flops)
    spec = load_library().device("h100-sxm")

    def step(**kw):
        job = TrainJob(micro_batch=4, seq_len=2048, framework="megatron", **kw)
        return estimate_train(m, spec, job, Parallel()).step.total_s

    none, f1, f076 = step(recompute="none"), step(recompute="full"), step(recompute="full", recompute_fraction=0.76)
    assert f076 - none == pytest.approx(0.76 * (f1 - none), rel=0.01)


def test_every_other_matmul_share_by_hand():
    """torchtitan's per-op selective checkpointing re-runs every second matmul of a block: of a
    Llama block's wq, wk, wv, wo, w1, w3, w2 the wk, wo and w3; of a GELU block's wq, wk, wv, wo,
    w1, w2 the wk, wo and w2. Its hardware FLOPs count those forwards again."""
    from costmodel.flops import every_other_matmul_share

    m = load_model("llama3.1-8b")  # hidden 4096, q 4096, kv 8 x 128 = 1024, ffn 14336
    assert every_other_matmul_share(m) == pytest.approx((1024 + 4096 + 14336) / (4096 + 2 * 1024 + 4096 + 3 * 14336))
    g = load_model("gpt3-175b")  # kv = q = h, ffn 4h: (h + h + 4h) / (4h + 8h)
    assert every_other_matmul_share(g) == pytest.approx(0.5)
    tf = train_step_flops(m, 4, 2048, "selective", selective="every-other-matmul")
    assert tf.recompute_flops == pytest.approx(32 * 2 * 4 * 2048 * 4096 * (1024 + 4096 + 14336))
    assert train_step_flops(m, 4, 2048, "selective").recompute_flops == pytest.approx(
        32 * attention_core_flops(m, 4, 2048, causal=False))
