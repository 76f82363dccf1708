"""costmodel.validate's ranking: per model and device count, how well the predicted step times
order the measured layouts (Spearman, and the regret of taking the predicted fastest)."""
import json
import math

import pytest

from costmodel.cli.app import main
from costmodel.validate import Case, group_key, model_label, ranking, spearman, summarize_ranking


def _cases(pred, meas, group="m/8", kind="train"):
    return [Case(name=f"c{i}", kind=kind, metric="step_seconds", measured=m, predicted=p, rel_error=(p - m) / m, group=group)
            for i, (p, m) in enumerate(zip(pred, meas))]


def test_one_swap_of_four_layouts():
    """Predicted order swaps the two fastest: ranks d = (1, -1, 0, 0), so Spearman = 1 - 6*2/(4*15)
    = 0.8; the predicted fastest (c1) measured 1.25 s against the best 1.0 s: regret 0.25."""
    cases = _cases(pred=[0.6, 0.5, 2.0, 5.0], meas=[1.0, 1.25, 3.0, 4.0])
    g = ranking(cases)["m/8"]
    assert g.n == 4
    assert g.spearman == pytest.approx(1 - 6 * 2 / (4 * (4 ** 2 - 1))) == pytest.approx(0.8)
    assert g.regret == pytest.approx(0.25)


def test_layouts_are_ranked_by_their_expected_step_time_where_given():
    """A pipelined layout predicted 1.0 s but 1.5 s expected (a stall risk) and a flat one predicted
    and expected 1.2 s; the pipelined run stalled (3.0 s measured), the flat one took 1.2 s. Ranked
    by the expected times the pick is the flat layout (regret 0); by the predictions, the pipelined
    one (regret 3.0 / 1.2 - 1 = 1.5)."""
    cases = _cases(pred=[1.0, 1.2], meas=[3.0, 1.2])
    assert ranking(cases)["m/8"].regret == pytest.approx(1.5)
    cases[0].rank_s, cases[1].rank_s = 1.5, 1.2
    assert ranking(cases)["m/8"].regret == 0.0
    assert "rank_s" not in cases[0].model_dump()  # not written out


def test_perfect_and_reversed_order():
    assert ranking(_cases([1, 2, 3], [10, 20, 30]))["m/8"].spearman == pytest.approx(1.0)
    g = ranking(_cases([3, 2, 1], [10, 20, 30]))["m/8"]
    assert g.spearman == pytest.approx(-1.0)
    assert g.regret == pytest.approx(30 / 10 - 1)


def test_ties_take_average_ranks_and_the_first_predicted_fastest():
    """Predicted (1, 1, 2, 3): ranks (1.5, 1.5, 3, 4); measured (2, 1, 3, 4): ranks (2, 1, 3, 4).
    Centred: (-1, -1, .5, 1.5) and (-.5, -1.5, .5, 1.5); r = 4.5 / sqrt(4.5 * 5) = sqrt(0.9).
    The tie in prediction goes to the first case: c0, measured 2 against the best 1: regret 1."""
    g = ranking(_cases(pred=[1.0, 1.0, 2.0, 3.0], meas=[2.0, 1.0, 3.0, 4.0]))["m/8"]
    assert g.spearman == pytest.approx(math.sqrt(0.9))
    assert g.regret == pytest.approx(1.0)
    # the same layouts in the other file order: c0 is now the measured best
    g = ranking(_cases(pred=[1.0, 1.0, 2.0, 3.0], meas=[1.0, 2.0, 3.0, 4.0]))["m/8"]
    assert g.spearman == pytest.approx(math.sqrt(0.9))
    assert g.regret == 0.0


def test_constant_side_or_too_few_gives_no_spearman():
    assert ranking(_cases([1, 2, 3], [5, 5, 5]))["m/8"].spearman is None
    g = ranking(_cases([4, 4, 4], [5, 6, 7]))["m/8"]
    assert g.spearman is None and g.regret == 0.0  # the first of the equal predictions is the best
    g = ranking(_cases([1, 2], [2, 1]))["m/8"]
    assert g.n == 2 and g.spearman is None and g.regret == pytest.approx(1.0)
    assert spearman([1, 2], [1, 2]) is None


def test_groups_and_what_is_left_out():
    cases = (_cases([1, 2, 3], [1, 2, 3], group="b/16") + _cases([1, 2], [1, 2], group="b/8")
             + _cases([1], [1], group="a/8")  # n < 2: left out
             + _cases([1, 2, 3], [1, 2, 3], group="a/128", kind="published"))
    cases += [Case(name="x", kind="train", metric="peak_bytes", measured=1.0, predicted=2.0, rel_error=1.0, group="c/8"),
              Case(name="y", kind="train", metric="step_seconds", measured=1.0, predicted=2.0, rel_error=1.0),
              Case(name="y", kind="train", metric="step_seconds", measured=2.0, predicted=1.0, rel_error=-.5),
              Case(name="o", kind="train", metric="fits", measured=False, predicted=True, rel_error=1.0, group="b/8")]
    r = ranking(cases)
    assert list(r) == ["a/128", "b/8", "b/16"]  # by model, then device count as a number
    assert [g.n for g in r.values()] == [3, 2, 3]
    s = summarize_ranking(r)
    assert s.groups == 3 and s.median_spearman == pytest.approx(1.0) and s.median_regret == 0.0
    empty = summarize_ranking({})
    assert empty.groups == 0 and empty.median_spearman is None and empty.median_regret is None


def test_group_key():
    m = {"arch": "llama", "layers": 16, "hidden": 2048, "heads": 32, "ffn": 8192, "vocab": 131072}
    assert group_key({"model": m, "devices": 8}) == "llama-16L-2048h/8"
    assert model_label({k: v for k, v in m.items() if k != "arch"}) == "llama-16L-2048h"  # llama by default
    assert model_label({"arch": "gpt", "layers": 24, "hidden": 2304, "preset": "megatron-gpt-1.7b"}) == "gpt-24L-2304h"
    assert model_label({"preset": "gpt3-175b"}) == "gpt3-175b"
    assert group_key({"model": "llama3-8b", "devices": 64}) == "llama3-8b/64"
    assert group_key({"model": "llama3-8b", "devices": None}) is None


# Five records of ../shared/truth/playbook-public-1b-8b.jsonl (nanotron, Ultra-Scale Playbook):
# three layouts of the 1B model on 8 H100s, two on 16.
_MODEL_1B = {"arch": "llama", "layers": 16, "hidden": 2048, "heads": 32, "kv_heads": 32, "ffn": 8192, "vocab": 131072,
             "tied_embeddings": True, "mlp": "swiglu", "norm": "rmsnorm", "positions": "rope"}
_LAYOUTS = [  # devices, dp, tp, pp, sharding, sequence_parallel, micro_batch, measured step_seconds
    (8, 8, 1, 1, "none", False, 2, 3.2645627863951976),
    (8, 4, 1, 2, "optimizer", False, 4, 3.3699357570001522),
    (8, 4, 2, 1, "none", True, 8, 3.483349566747236),
    (16, 16, 1, 1, "optimizer", False, 2, 1.6873404665624094),
    (16, 4, 4, 1, "none", True, 16, 1.8827579807351706),
]


def _playbook_records():
    for dev, dp, tp, pp, sharding, sp, mb, t in _LAYOUTS:
        yield {"kind": "train", "name": f"nanotron-playbook/1B/{dev}_GPUS/dp-{dp}_tp-{tp}_pp-{pp}_mbz-{mb}",
               "model": _MODEL_1B, "hardware": "h100-sxm", "node": "dgx-h100", "devices": dev,
               "parallel": {"dp": dp, "tp": tp, "pp": pp, "sharding": sharding, "sequence_parallel": sp},
               "micro_batch": mb, "global_batch": 256, "seq_len": 4096, "precision": "amp-bf16", "optimizer": "adam",
               "recompute": "none", "attention": "flash", "framework": "nanotron", "overlap_grad_reduce": True,
               "measured": {"step_seconds": t, "tokens_per_s_per_device": 256 * 4096 / t / dev}}


def _run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code or 0, out.out


@pytest.fixture
def playbook_file(tmp_path):
    f = tmp_path / "playbook.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in _playbook_records()))
    return f


def test_cli_json_has_the_ranking(capsys, playbook_file):
    code, out = _run(capsys, "validate", str(playbook_file), "--json")
    assert code == 0
    d = json.loads(out)
    assert list(d["ranking"]) == ["llama-16L-2048h/8", "llama-16L-2048h/16"]
    assert d["ranking"]["llama-16L-2048h/8"]["n"] == 3 and d["ranking"]["llama-16L-2048h/16"]["n"] == 2
    for g in d["ranking"].values():
        assert {"n", "spearman", "regret"} <= set(g)
        assert g["regret"] >= 0
    assert d["ranking"]["llama-16L-2048h/16"]["spearman"] is None  # n < 3
    assert d["ranking_summary"]["groups"] == 2
    assert {"median_spearman", "median_regret"} <= set(d["ranking_summary"])
    assert {c["group"] for c in d["cases"]} == {"llama-16L-2048h/8", "llama-16L-2048h/16"}


def test_cli_table_prints_the_ranking(capsys, playbook_file, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out = _run(capsys, "validate", str(playbook_file))
    assert code == 0
    assert "llama-16L-2048h/8" in out and "Spearman" in out and "median regret" in out
    assert out.index("llama-16L-2048h/8 ") < out.index("llama-16L-2048h/16")


def test_cli_no_ranking_table_without_groups(capsys, tmp_path):
    rec = next(_playbook_records())
    f = tmp_path / "one.jsonl"
    f.write_text(json.dumps(rec) + "\n")
    code, out = _run(capsys, "validate", str(f))
    assert code == 0 and "Spearman" not in out
    code, out = _run(capsys, "validate", str(f), "--json")
    d = json.loads(out)
    assert d["ranking"] == {} and d["ranking_summary"] == {"groups": 0, "median_spearman": None, "median_regret": None}
