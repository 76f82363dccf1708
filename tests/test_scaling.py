"""Scaling-law planning (costmodel/scaling.py, `costmodel scale`).

Expected numbers come from the papers' own tables or from hand calculation shown beside
each assertion, never from the code's output.
"""
from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest

from costmodel import scaling as sc
from costmodel.cli.app import main
from costmodel.errors import InputError
from costmodel.specs import load_library


@pytest.fixture(scope="module")
def laws():
    return sc.load_laws()


@pytest.fixture(scope="module")
def h100():
    return load_library().device("h100-sxm")


def _rel(a, b):
    return abs(a - b) / abs(b)


# ------------------------------------------------------------------ FLOPs = 6ND

def test_gpt3_training_flops(laws):
    # Brown et al. 2020 (GPT-3), Table D.1: 175B parameters on 300B tokens = 3.14e23 FLOPs.
    p = sc.plan_for_model(laws["besiroglu"], laws, 175e9, tokens=300e9)
    assert _rel(p.allocation.train_flops, 3.14e23) < 0.01


def test_one_trillion_params_on_twenty_trillion_tokens(laws):
    # Published figure: a 1T-parameter model on 20T tokens needs ~1.2e26 FLOPs (120 million
    # exaFLOPs); 6 * 1e12 * 20e12 = 1.2e26 by hand.
    p = sc.plan_for_model(laws["chinchilla-1"], laws, 1e12, tokens=20e12)
    assert _rel(p.allocation.train_flops, 1.2e26) < 1e-9


def test_architecture_flops_exceed_6n_for_long_context():
    # PaLM appendix B: 6N + 12 L H Q T. Llama 2 7B (32 layers, 32 heads of 128, T = 4096):
    # attention term 12 * 32 * 32 * 128 * 4096 = 6.44e9 FLOPs per token on top of 6N.
    from costmodel.arch import load_preset

    m = load_preset("llama2-7b")
    fpt = sc.training_flops_per_token(m, 4096)
    b = m.param_breakdown()
    n_matmul = m.params - b["embedding"]  # untied: lm_head stays, input lookup goes
    assert fpt == pytest.approx(6 * n_matmul + 12 * 32 * 32 * 128 * 4096, rel=1e-12)


# ------------------------------------------------------------------ Chinchilla

GOPHER_FLOPS = 5.76e23  # Hoffmann et al. 2022 Table 3: Gopher's budget, 1 "Gopher unit"


def test_chinchilla_70b_at_gophers_budget(laws):
    # Hoffmann et al. 2022: Chinchilla, 70B parameters on 1.4T tokens, uses Gopher's compute;
    # Table 3 (approach 1) lists 67B / 1.5T for 5.76e23 FLOPs. Paper rounding: 67B-70B, 1.4T-1.5T.
    a = sc.compute_optimal(laws["chinchilla-1"], laws, GOPHER_FLOPS)
    assert 66e9 <= a.params <= 71e9
    assert 1.35e12 <= a.tokens <= 1.55e12
    # The Besiroglu et al. refit lands on the same model (their abstract: consistent with approaches 1-2).
    b = sc.compute_optimal(laws["besiroglu"], laws, GOPHER_FLOPS)
    assert 66e9 <= b.params <= 74e9
    assert 1.3e12 <= b.tokens <= 1.5e12


def test_chinchilla_approach1_one_trillion_row(laws):
    # Hoffmann Table 3: 1 trillion parameters at 1.27e26 FLOPs on 21.2T tokens (the 1B row fixes
    # the prefactor, so this row is an independent check).
    a = sc.compute_optimal(laws["chinchilla-1"], laws, 1.27e26)
    assert _rel(a.params, 1e12) < 0.03
    assert _rel(a.tokens, 21.2e12) < 0.03


def test_chinchilla_approach2_table_a3(laws):
    # Hoffmann Table A3 (approach 2): 67B parameters at 6.88e23 FLOPs, 1.7T tokens.
    a = sc.compute_optimal(laws["chinchilla-2"], laws, 6.88e23)
    assert _rel(a.params, 67e9) < 0.05
    assert _rel(a.tokens, 1.7e12) < 0.05


def test_chinchilla_approach3_tex_table_a3(laws):
    # Hoffmann Table A3 (approach 3): 67B parameters need 1.71e24 FLOPs and 4.1T tokens.
    law = laws["chinchilla-3-tex"]
    p = law.parametric
    c = 6 * (67e9 / p.g) ** (1 / p.a_exponent)  # invert N = G (C/6)^a
    assert _rel(c, 1.71e24) < 0.05
    a = sc.compute_optimal(law, laws, 1.71e24)
    assert _rel(a.params, 67e9) < 0.03
    assert _rel(a.tokens, 4.1e12) < 0.08


@pytest.mark.parametrize("flops", [1e21, GOPHER_FLOPS, 1e25])
def test_twenty_tokens_per_parameter(laws, flops):
    # Hoffmann et al. 2022 (Table 3 ratios 20.0-21.6): ~20 tokens per parameter when compute-optimal.
    for lid in ("chinchilla-1", "besiroglu"):
        r = sc.compute_optimal(laws[lid], laws, flops).tokens_per_param
        assert 15 <= r <= 25, (lid, r)


def test_chinchilla_approach3_loss_at_70b(laws):
    # Hoffmann eq. 10 by hand: 1.69 + 406.4 / (70e9)^0.34 + 410.7 / (1.4e12)^0.28
    #   ln 70e9 = 24.97176, x0.34 = 8.49040, e^ = 4866.3 -> 0.08351
    #   ln 1.4e12 = 27.96749, x0.28 = 7.83090, e^ = 2516.9 -> 0.16318
    #   L = 1.69 + 0.08351 + 0.16318 = 1.93669
    loss = sc.predict_loss(laws["chinchilla-3"], laws, 70e9, 1.4e12)
    assert loss == pytest.approx(1.93669, abs=2e-4)


def test_refit_and_tex_approach3_losses_at_70b(laws):
    # Besiroglu et al. 2024's refit of approach 3 by hand: 1.8172 + 482.01 / (70e9)^0.3478 + 2085.43 / (1.4e12)^0.3658
    #   ln 70e9 = 24.97176, x0.3478 = 8.68518, e^ = 5914.6 -> 0.08149
    #   ln 1.4e12 = 27.96749, x0.3658 = 10.23051, e^ = 27736.6 -> 0.07519
    #   L = 1.8172 + 0.08149 + 0.07519 = 1.97388
    assert sc.predict_loss(laws["besiroglu"], laws, 70e9, 1.4e12) == pytest.approx(1.97388, abs=2e-4)
    # Hoffmann approach 3 with the unrounded constants of the paper's TeX source:
    #   E = e^0.5267228 = 1.69337, A = e^6.0073404 = 406.40, B = e^6.0179186 = 410.72
    #   70e9^0.3391708 = 4768.0 -> 0.08523; 1.4e12^0.2849083 = 2887.6 -> 0.14224
    #   L = 1.69337 + 0.08523 + 0.14224 = 1.92084
    assert sc.predict_loss(laws["chinchilla-3-tex"], laws, 70e9, 1.4e12) == pytest.approx(1.92084, abs=2e-4)
    # Sardana et al. minimise cost on that same unrounded surface (their section 2).
    assert sc.predict_loss(laws["sardana"], laws, 70e9, 1.4e12) == pytest.approx(1.92084, abs=2e-4)


def test_porian_allocation_meets_hoffmanns_one_trillion_row(laws):
    # Porian et al. 2024 find "excellent agreement" with Hoffmann (a ~ 0.5); the law's prefactor is
    # anchored on Hoffmann Table 3's 1B row, so the 1T row (1.27e26 FLOPs, 21.2T tokens) checks it.
    a = sc.compute_optimal(laws["porian"], laws, 1.27e26)
    assert _rel(a.params, 1e12) < 0.03
    assert _rel(a.tokens, 21.2e12) < 0.03


def test_printed_approach3_is_far_from_twenty_tokens(laws):
    # Besiroglu et al. 2024: the printed (rounded) approach-3 constants put the optimum far
    # above 20 tokens/param; a = beta/(alpha+beta) = 0.28/0.62 = 0.4516.
    law = laws["chinchilla-3"]
    assert law.parametric.a_exponent == pytest.approx(0.28 / 0.62)
    assert sc.compute_optimal(law, laws, GOPHER_FLOPS).tokens_per_param > 60


# ------------------------------------------------------------------ Kaplan

def test_kaplan_compute_optimal_exponent(laws):
    # Kaplan et al. 2020 eq. 6.1 / Table 6: N_opt = 1.3e9 * C_min^0.73 (C in PF-days).
    law = laws["kaplan"]
    n1 = sc.compute_optimal(law, laws, 1e21).params
    n2 = sc.compute_optimal(law, laws, 1e24).params
    assert math.log(n2 / n1) / math.log(1e3) == pytest.approx(0.73, abs=1e-9)
    assert sc.compute_optimal(law, laws, 8.64e19).params == pytest.approx(1.3e9, rel=1e-9)


def test_kaplan_critical_batch(laws):
    # Kaplan eq. 1.4: B_crit = 2e8 / L^(1/0.21); at L = 3: 3^4.7619 = 187.1 -> 1.069e6 tokens
    # ("~1-2 million tokens at convergence").
    assert sc.kaplan_critical_batch_tokens(laws["kaplan"], 3.0) == pytest.approx(1.069e6, rel=2e-3)


def test_kaplan_loss_matches_eq_1_5(laws):
    # Eq. 1.5 with Table 2 at N = 1e9, D = 1e10 by hand:
    # (6.4e13/1e9)^(0.076/0.103) = 64000^0.73786 = e^(11.0666*0.73786) = e^8.1655 = 3517.5
    # + 1.8e13/1e10 = 1800 -> 5317.5^0.103 = e^(8.5787*0.103) = e^0.88361 = 2.4196
    assert sc.predict_loss(laws["kaplan"], laws, 1e9, 1e10) == pytest.approx(2.4196, abs=2e-3)


# ------------------------------------------------------------------ monotonic behaviour

@pytest.mark.parametrize("cond", [sc.Conditions(), sc.Conditions(unique_tokens=1e11, served_tokens=1e12)])
def test_more_budget_never_shrinks_model_or_raises_loss(laws, cond):
    budgets = np.logspace(19, 27, 17)
    for law in laws.values():
        prev_n, prev_l = 0.0, math.inf
        for c in budgets:
            a = sc.compute_optimal(law, laws, float(c), cond)
            assert a.params >= prev_n * (1 - 1e-6), (law.id, c)
            assert a.loss <= prev_l + 1e-9, (law.id, c)
            prev_n, prev_l = a.params, a.loss


# ------------------------------------------------------------------ Muennighoff, Sardana, Kumar, Tao

def test_muennighoff_readme_examples(laws):
    # huggingface/datablations README "Parametric Fit": scaling_law(6.34e9, 242e9, 25e9) =
    # 2.2256440889984477 and scaling_law(8.67e9, 178e9, 25e9) = 2.2269634075087867.
    law = laws["muennighoff"]
    cond = sc.Conditions(unique_tokens=25e9)
    assert sc.predict_loss(law, laws, 6.34e9, 242e9, cond) == pytest.approx(2.2256440889984477, abs=1e-6)
    assert sc.predict_loss(law, laws, 8.67e9, 178e9, cond) == pytest.approx(2.2269634075087867, abs=1e-6)
    # Same README, optimal_allocation at the compute of 8.67B x 178B: "227B tokens, 9.1 epochs, 6.8B parameters".
    a = sc.compute_optimal(law, laws, 6 * 8.67e9 * 178e9, cond)
    assert a.params == pytest.approx(6.8e9, rel=0.03)
    assert a.tokens == pytest.approx(227e9, rel=0.03)
    assert a.extras["epochs"] == pytest.approx(9.1, rel=0.03)


def test_repeated_data_is_worth_less(laws):
    # Muennighoff et al. 2023: up to ~4 epochs cost little; many more epochs cost a lot.
    law = laws["muennighoff"]
    fresh = sc.predict_loss(law, laws, 2e9, 100e9)
    four = sc.predict_loss(law, laws, 2e9, 100e9, sc.Conditions(unique_tokens=25e9))
    forty = sc.predict_loss(law, laws, 2e9, 100e9, sc.Conditions(unique_tokens=2.5e9))
    assert fresh < four < forty
    assert four - fresh < 0.01 < forty - fresh


def test_sardana_figure1(laws):
    # Sardana et al. 2024 Figure 1: a 13B Chinchilla-optimal model with 2T tokens of inference
    # demand is better trained as a ~7B model on more data, saving 1.7e22 FLOPs (17%).
    law = laws["sardana"]
    p = law.parametric
    c13 = 6 * (13e9 / p.g) ** (1 / p.a_exponent)
    base = sc.compute_optimal(law, laws, c13)
    assert base.params == pytest.approx(13e9, rel=1e-6)
    base_total = 6 * base.params * base.tokens + 2 * base.params * 2e12
    best = sc.sardana_min_total_flops(law, base.loss, 2e12)
    saving = base_total - (best.train_flops + best.serving_flops)
    assert 6.5e9 <= best.params <= 7.5e9
    assert saving == pytest.approx(1.7e22, rel=0.1)
    assert saving / base_total == pytest.approx(0.17, abs=0.015)


def test_sardana_budget_mode_shrinks_the_model(laws):
    law = laws["sardana"]
    plain = sc.compute_optimal(law, laws, 1e23)
    served = sc.compute_optimal(law, laws, 1e23, sc.Conditions(served_tokens=5e12))
    assert served.params < plain.params
    # Budget identity: 6 N D + 2 N D_inf = C (serve_weight 1).
    assert 6 * served.params * served.tokens + 2 * served.params * 5e12 == pytest.approx(1e23, rel=1e-9)


def test_kumar_effective_parameters(laws):
    # Kumar et al. 2024 eq. 4 with gamma_w = 2.6745, gamma_a = 2.2102, gamma_kv = 0.9578:
    # 4-bit weights, 16-bit activations and KV: (1 - e^-1.4956)(1 - e^-7.2392)(1 - e^-16.705)
    # = 0.77588 * 0.99928 * 1.0000 = 0.77532.
    law = laws["kumar"]
    f = sc.precision_factor(law.precision, sc.Conditions(bits_w=4, bits_a=16, bits_kv=16))
    assert f == pytest.approx(0.77532, abs=2e-4)
    # Lower training precision at the same compute: a bigger model is compute-optimal (Kumar sec. 4.3).
    n16 = sc.compute_optimal(law, laws, 1e23, sc.Conditions(bits_w=16, bits_a=16, bits_kv=16)).params
    n4 = sc.compute_optimal(law, laws, 1e23, sc.Conditions(bits_w=4, bits_a=4, bits_kv=4)).params
    assert n4 > n16


def test_kumar_surface_and_kv_precision(laws):
    # Kumar et al.'s N_eff on the Besiroglu surface (the law's notes), 16-bit weights, activations
    # and KV cache: (1 - e^-5.98243)(1 - e^-7.23916)(1 - e^-16.7050) = 0.99748 * 0.99928 * 1 = 0.99676
    #   N_eff = 70e9 * 0.99676 = 69.773e9, ^0.3478 = 5907.9 -> 482.01 / 5907.9 = 0.08159
    #   L = 1.8172 + 0.08159 + 0.07519 (the token term of the Besiroglu check above) = 1.97398
    assert sc.predict_loss(laws["kumar"], laws, 70e9, 1.4e12) == pytest.approx(1.97398, abs=2e-4)
    # A 2-bit KV cache: 1 - e^(-2 / 0.9578) = 1 - e^-2.08812 = 0.87608, times 0.99748 * 0.99928 = 0.87324
    f = sc.precision_factor(laws["kumar"].precision, sc.Conditions(bits_w=16, bits_a=16, bits_kv=2))
    assert f == pytest.approx(0.87324, abs=2e-4)


def test_tao_approach1_allocation_by_hand(laws):
    # sail-sg/scaling-with-vocab optimal_Nv_predict.py at C = 1e21 FLOPs:
    #   N_nv = e^-2.4846510 * (1e21)^0.5 = 0.083355 * 3.16228e10 = 2.6359e9
    #   N_v = e^-1.5890313 * (1e21)^0.4163623 = 0.20412 * e^(48.3543 * 0.4163623 = 20.1329) = 0.20412 * 5.5412e8 = 1.1311e8
    a = sc.compute_optimal(laws["tao"], laws, 1e21)
    assert a.extras["non_vocab_params"] == pytest.approx(2.6359e9, rel=1e-3)
    assert a.extras["vocab_params"] == pytest.approx(1.1311e8, rel=2e-3)


def test_tao_llama2_70b_vocabulary(laws):
    # Tao et al. 2024 abstract: Llama2-70B's optimal vocabulary is at least 216K (it uses 32K).
    # Non-vocabulary parameters by hand: 70e9 - 2 * 32000 * 8192 = 69.48e9; width 8192.
    v = sc.tao_optimal_vocab(laws["tao"], 70e9 - 2 * 32000 * 8192, 8192)
    assert 216e3 <= v["vocab_size"] <= 260e3


# ------------------------------------------------------------------ hardware, budgets, serving

def test_budget_to_time_energy_cost(laws, h100):
    # $1e6 at $2.00/device-hour = 500,000 device-hours; at 40% of 989.4 TFLOP/s:
    # C = 5e5 * 3600 * 989.4e12 * 0.4 = 7.1237e23 FLOPs. On 1024 devices: 488.28 h.
    # Energy = 5e5 h * 0.700 kW * PUE 1.58 = 553,000 kWh.
    hw = sc.make_hardware(h100, 1024, mfu=0.4, price_per_hour=2.0)
    plan = sc.plan_from_budget(laws["besiroglu"], laws, sc.Budget("usd", 1e6), hw)
    assert plan.budget_flops == pytest.approx(7.1237e23, rel=1e-4)
    assert plan.device_hours == pytest.approx(5e5, rel=1e-9)
    assert plan.train_time_s / 3600 == pytest.approx(488.28, rel=1e-4)
    assert plan.energy_kwh == pytest.approx(553_000, rel=1e-9)
    assert plan.cost_usd == pytest.approx(1e6, rel=1e-9)
    days = sc.budget_to_flops(sc.Budget("days", 10), hw)
    assert days == pytest.approx(10 * 86400 * 1024 * 989.4e12 * 0.4, rel=1e-4)


def test_cost_per_million_served_tokens(laws, h100):
    # 70B model, serving utilisation 0.25: 989.4e12 * 0.25 / (2 * 70e9) = 1766.8 tokens/s/device;
    # at $2.00/h: 2 / 3600 / 1766.8 * 1e6 = $0.3144 per million tokens.
    hw = sc.make_hardware(h100, 8, mfu=0.4, price_per_hour=2.0, serving_mfu=0.25)
    plan = sc.plan_for_model(laws["besiroglu"], laws, 70e9, tokens=1.4e12, hw=hw)
    assert plan.cost_per_million_served_usd == pytest.approx(0.3144, rel=1e-3)


def test_serving_roofline_default(h100):
    # H100 SXM bf16: ridge 989.4e12 / 3.35e12 = 295.3 FLOP/B; batch 64 bf16 -> 64 FLOP/B -> 21.67%.
    util, how = sc.serving_utilisation(h100, "bf16", 64)
    assert util == pytest.approx(64 / (989.4e12 / 3.35e12), rel=1e-9)
    assert "roofline" in how
    assert sc.serving_utilisation(h100, "bf16", 4096)[0] == sc.SERVING_MFU_CAP


def test_achieved_flops_fallback_and_training_module(h100, monkeypatch):
    monkeypatch.setitem(sys.modules, "costmodel.training", None)  # import fails
    t = sc.achieved_flops_per_device(None, h100, 64)
    assert t.mfu == sc.DEFAULT_MFU == 0.40
    assert "Dubey" in t.source and t.flops_per_device == pytest.approx(0.4 * 989.4e12)

    fake = types.ModuleType("costmodel.training")
    fake.estimate_mfu = lambda model, spec, devices: 0.5
    monkeypatch.setitem(sys.modules, "costmodel.training", fake)
    from costmodel.arch import load_preset

    t = sc.achieved_flops_per_device(load_preset("llama2-7b"), h100, 64)
    assert t.mfu == 0.5 and t.source == "costmodel.training.estimate_mfu"

    def bad(model, spec):
        return 0.5

    fake.estimate_mfu = bad  # signature mismatch -> named fallback, not a crash
    t = sc.achieved_flops_per_device(load_preset("llama2-7b"), h100, 64)
    assert t.mfu == 0.40 and "failed" in t.source


def test_usd_budget_without_price_is_input_error(laws, h100):
    hw = sc.make_hardware(h100.model_copy(update={"price_per_hour_usd": None}), 8, mfu=0.4)
    with pytest.raises(InputError, match="price"):
        sc.plan_from_budget(laws["besiroglu"], laws, sc.Budget("usd", 1e6), hw)


# ------------------------------------------------------------------ user law files

def test_user_law_file(tmp_path, laws):
    f = tmp_path / "mine.yaml"
    f.write_text(
        "laws:\n"
        "  - id: mine\n    name: Mine\n    form: parametric\n"
        "    source: my own fit on my own data, 2025\n"
        "    parametric: {E: 1.5, A: 400, B: 400, alpha: 0.3, beta: 0.3}\n"
    )
    all_laws = sc.load_laws([f])
    a = sc.compute_optimal(all_laws["mine"], all_laws, 1e22)
    # alpha = beta, A = B: G = 1, N = (C/6)^0.5 = (1e22/6)^0.5 = 4.0825e10.
    assert a.params == pytest.approx(4.0825e10, rel=1e-4)
    assert "besiroglu" in all_laws


def test_bad_law_file_names_file_and_field(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("laws:\n  - id: broken\n    name: B\n    form: parametric\n    source: a source of some length\n"
                 "    parametric: {E: 1.5, A: 400, B: 400, alpha: 0.3}\n")
    with pytest.raises(InputError) as e:
        sc.load_laws([f])
    assert e.value.file == str(f) and e.value.field == "laws[broken].parametric.beta"
    g = tmp_path / "ref.yaml"
    g.write_text("laws:\n  - id: p\n    name: P\n    form: power\n    source: a source of some length\n"
                 "    power: {a: 0.5, anchor_params: 1e9, anchor_flops: 1e20, loss_law: nowhere}\n")
    with pytest.raises(InputError) as e:
        sc.load_laws([g])
    assert e.value.field == "laws[p].power.loss_law"


# ------------------------------------------------------------------ CLI

def _run(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.mark.parametrize("law_id", sorted(sc.load_laws()))
def test_cli_each_law_json(capsys, law_id):
    code, out, _ = _run(capsys, "scale", "--budget-usd", "1e6", "--hardware", "h100-sxm", "--law", law_id,
                        "--price-per-hour", "2.5", "--json")
    assert code in (0, None)
    plan = json.loads(out)["plans"][0]
    assert plan["law"] == law_id
    assert plan["params"] > 1e9 and plan["tokens"] > 1e10 and plan["predicted_loss"] > 0
    assert plan["cost_usd"] == pytest.approx(1e6, rel=1e-6)
    assert plan["device_hours"] == pytest.approx(4e5, rel=1e-6)  # $1e6 / $2.5
    assert plan["hardware"]["devices"] == 1024 and plan["energy_kwh"] > 0
    assert plan["hardware"]["mfu_source"]


def test_cli_all_laws_table(capsys):
    code, out, _ = _run(capsys, "scale", "--budget-usd", "1e6", "--hardware", "h100-sxm", "--law", "all")
    assert code in (0, None)
    for lid in ("kaplan", "chinchilla-3", "besiroglu", "sardana", "tao"):
        assert lid in out


def test_cli_node_resolves_and_reverse_mode(capsys):
    code, out, _ = _run(capsys, "scale", "--model", "llama2-7b", "--tokens", "2e12", "--hardware", "dgx-h100",
                        "--devices", "64", "--json")
    assert code in (0, None)
    plan = json.loads(out)["plans"][0]
    assert plan["hardware"]["device"] == "h100-sxm"
    assert plan["tokens"] == 2e12 and plan["params"] == pytest.approx(6.738e9, rel=1e-3)


def test_cli_bad_input_exits_2(capsys):
    code, _, err = _run(capsys, "scale", "--budget-usd", "1e6", "--hardware", "h100-sxm", "--law", "nope")
    assert code == 2 and "unknown law" in err
    code, _, err = _run(capsys, "scale", "--budget-usd", "1e6", "--budget-flops", "1e20", "--hardware", "h100-sxm")
    assert code == 2
    code, _, err = _run(capsys, "scale", "--budget-usd", "1e6")
    assert code == 2 and "hardware" in err


def test_cli_plot(capsys, tmp_path):
    target = tmp_path / "iso.png"
    code, _, err = _run(capsys, "scale", "--budget-usd", "1e6", "--hardware", "h100-sxm", "--plot", str(target))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert code == 2 and "matplotlib" in err
        return
    assert code in (0, None) and target.stat().st_size > 1000


def test_train_and_scale_share_one_energy_model(laws, h100, capsys):
    # One model (costmodel/energy.py): devices x time x TDP x power fraction x PUE, with the same
    # defaults in `train` and `scale`, printed with the result in both.
    from costmodel import energy

    with pytest.raises(SystemExit) as exc:
        main(["train", "llama-1.3b", "--micro-batch", "4", "--steps", "1000", "--json"])
    assert (exc.value.code or 0) == 0
    run = json.loads(capsys.readouterr().out)["run"]
    # by hand: 0.700 kW (H100 SXM TDP) x 1.0 x PUE 1.58 = 1.106 kWh per device-hour
    assert run["energy_kwh"] == pytest.approx(run["device_hours"] * 0.700 * 1.58, rel=1e-9)
    assert run["energy_kwh"] == pytest.approx(energy.energy_kwh(h100.tdp_w, 1, run["seconds"]), rel=1e-12)
    assert (run["pue"], run["power_fraction"]) == (sc.DEFAULT_PUE, sc.DEFAULT_POWER_FRACTION)
    hw = sc.make_hardware(h100, 1, mfu=0.4, price_per_hour=2.0)
    plan = sc.plan_from_budget(laws["besiroglu"], laws, sc.Budget("usd", 1e4), hw)
    assert plan.energy_kwh == pytest.approx(plan.device_hours * 0.700 * 1.58, rel=1e-9)
    # the same job (one H100 for the same time) uses the same energy in both
    assert run["energy_kwh"] / run["seconds"] == pytest.approx(plan.energy_kwh / plan.train_time_s, rel=1e-12)
    with pytest.raises(SystemExit):
        main(["train", "llama-1.3b", "--micro-batch", "4", "--steps", "1000", "--pue", "1.1", "--power-fraction", "0.8"])
    out = " ".join(capsys.readouterr().out.split())
    assert "energy = TDP 700 W x 0.8 x PUE 1.1" in out
    with pytest.raises(SystemExit):
        main(["train", "llama-1.3b", "--micro-batch", "4", "--steps", "1000"])
    train_out = " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["scale", "--budget-usd", "1e6", "--hardware", "h100-sxm"])
    scale_out = " ".join(capsys.readouterr().out.split())
    for out in (train_out, scale_out):
        assert "energy = TDP 700 W x 1 x PUE 1.58" in out and "Uptime Institute 2023" in out
