"""The built-in step model's composition (steptime.compose_builtin) on terms given by hand: the
pipeline bubble, the exposed data-parallel reduction, the all-to-alls and ring attention as their
formulas say, and one layout as numbers equal to the same layout as an entry of an array."""
import json

import numpy as np
import pytest

from costmodel import steptime
from costmodel.arch import load_model
from costmodel.plan import train


def _terms(**over):
    t = dict(n_micro=8, layers=4, pp=4, interleave=1, cp=1, full=False,
             g_f=1.0, g_b=2.0, a_f=0.5, a_b=1.0, e_f=0.25, e_b=0.5, recompute_g=0.0, recompute_a=0.0,
             recompute_e=0.0, head_f=0.2, loss_s=0.1,
             tp_layer_s=0.05, ep_call_s=0.0, moe_layers=0.0, cp_f_step_s=0.0, cp_b_step_s=0.0, p2p_mb_s=0.01,
             dp_op_s=3.0, dp_rs_s=0.0, dp_overlap=0.8, zero=0, fsdp_exposed_s=0.0, grad_accum_s=0.0,
             optimizer_s=0.4, offload_s=0.0)
    t.update(over)
    return steptime.BuiltinTerms(**t)


def test_pipeline_bubble_and_parts_by_hand():
    b = steptime.compose_builtin(_terms())
    # one micro-batch through the last stage: 4 layers x 5.25 + head 3 x 0.2 + loss 0.1 = 21.7
    assert b.slot_s == pytest.approx(21.7)
    # + 4 layers x 0.05 of TP collectives and 0.01 of pipeline sends: 21.91; bubble 3 x (21.91 - 0.7)
    assert b.bubble_s == pytest.approx(3 * 21.21)
    assert b.tp_comm_s == pytest.approx(8 * 4 * 0.05)
    assert b.pp_comm_s == pytest.approx(8 * 0.01)
    # backward 4 x (2 + 1 + 0.5) = 14 hides 0.8 of the 3 s reduction: 0.6 exposed
    assert b.dp_comm_exposed_s == pytest.approx(0.6)
    assert b.compute_s == pytest.approx(8 * 4 * 3.0 + 8 * 0.6)
    assert b.total_s == pytest.approx(b.compute_s + b.attention_s + b.elementwise_s + b.tp_comm_s + 0.6
                                      + b.pp_comm_s + b.bubble_s + 0.4)


def test_reduction_longer_than_the_backward_is_exposed_beyond_it():
    # backward 14 s, reduction 20 s: 0.8 of the backward (11.2 s) hides it, 8.8 s remain (not 0.2 x 20)
    b = steptime.compose_builtin(_terms(dp_op_s=20.0))
    assert b.dp_comm_exposed_s == pytest.approx(8.8)


def test_all_to_alls_and_ring_attention_by_hand():
    # 2 MoE layers, full recompute: 6 all-to-alls per layer and micro-batch
    b = steptime.compose_builtin(_terms(ep_call_s=0.01, moe_layers=2.0, full=True,
                                        recompute_g=1.0, recompute_a=0.5, recompute_e=0.25))
    # the re-run forward in its parts: 8 x 4 x (1 GEMM, 0.5 attention, 0.25 elementwise) more
    assert b.compute_s - steptime.compose_builtin(_terms(ep_call_s=0.01, moe_layers=2.0)).compute_s == pytest.approx(8 * 4 * 1.0)
    assert b.ep_comm_s == pytest.approx(8 * 2 * 6 * 0.01)
    # cp 4: 3 exchanges per layer; forward 0.3 against 0.5 / 4 of attention, twice (recompute),
    # backward 0.2 against 1 / 4: 3 x (2 x 0.175 + 0) per layer
    c = steptime.compose_builtin(_terms(cp=4, recompute_a=0.5, cp_f_step_s=0.3,
                                        cp_b_step_s=0.2))
    assert c.cp_comm_s == pytest.approx(8 * 4 * 3 * 2 * 0.175)


def test_one_layout_as_numbers_equals_it_in_an_array():
    one = steptime.compose_builtin(_terms(zero=2, dp_rs_s=1.0))
    grid = steptime.compose_builtin(_terms(zero=np.array([0, 2]), dp_rs_s=np.array([0.0, 1.0]),
                                           full=np.array([True, False]), recompute_g=np.array([1.0, 0.0]),
                                           recompute_a=np.array([0.5, 0.0]), recompute_e=np.array([0.25, 0.0])))
    for name in ("total_s", "bubble_s", "dp_comm_exposed_s", "compute_s", "attention_s"):
        assert float(np.asarray(getattr(grid, name))[1]) == pytest.approx(float(getattr(one, name)), rel=1e-12)
    # ZeRO-2 reduce-scatters the 7 earlier micro-batches too: 7 x max(1 - 0.8 x 14, 0.2 x 1)
    assert one.dp_comm_exposed_s == pytest.approx(0.6 + 7 * 0.2)


def test_pipeline_crossing_nodes():
    # stages outermost: a layout over two nodes puts a stage boundary between them
    assert steptime.pp_crosses_node(4, 16, 8)  # tp 1 x dp 4 per stage, two stages a node
    assert not steptime.pp_crosses_node(4, 8, 8)
    assert not steptime.pp_crosses_node(1, 64, 8)
    assert list(steptime.pp_crosses_node(np.array([2, 8, 1]), np.array([16, 8, 16]), 8)) == [True, False, False]


def test_train_uses_the_crossing_link_for_a_pipeline_over_two_nodes():
    """tp 1, pp 4, dp 4 on 16 GPUs of dgx-h100: its pipeline sends go over the network (NeMo 24.07's
    Llama 2 13B layout), so they take longer than the same sends inside one node (pp 4 dp 2)."""
    two = train("llama2-13b", "dgx-h100", tp=1, pp=4, dp=4, devices=16, global_batch=128, seq_len=4096, micro_batch=1)
    one = train("llama2-13b", "dgx-h100", tp=1, pp=4, dp=2, global_batch=64, seq_len=4096, micro_batch=1)
    per_mb = lambda e: e.step.pp_comm_s / (e.job["global_batch"] / e.job["micro_batch"] / e.parallel["dp"])  # noqa: E731
    assert per_mb(two) > 3 * per_mb(one)
    assert load_model("llama2-13b").layers == 40


def test_expert_node_hit_probability_by_hand():
    """DeepSeek-V3 (256 experts, 8 a token from 4 of 8 groups) over 8 nodes, a group a node: its
    node's group is among the 4 picked with chance C(7, 3) / C(8, 4) = 1/2, and then one of the 8
    experts drawn from the 128 of those groups is among its 32 with 1 - C(96, 8) / C(128, 8).
    Qwen3-235B-A22B (128 experts, 8 a token, no groups) over 4 nodes: 1 - C(96, 8) / C(128, 8)."""
    from math import comb

    dsv3, qwen = load_model("deepseek-v3").moe, load_model("qwen3-235b-a22b").moe
    miss = comb(96, 8) / comb(128, 8)
    assert steptime.expert_node_hit_probability(dsv3, 8) == pytest.approx(0.5 * (1 - miss), rel=1e-12)
    assert steptime.expert_node_hit_probability(qwen, 4) == pytest.approx(1 - miss, rel=1e-12)
    # 16 nodes, a group over two: the node's group picked (4 / 8), then one of 8 drawn from 128 in its 16
    assert steptime.expert_node_hit_probability(dsv3, 16) == pytest.approx(0.5 * (1 - comb(112, 8) / comb(128, 8)))
    # DeepEP's bytes across nodes: (nodes - 1) x P(hit) copies against top_k x (nodes - 1) / nodes
    assert steptime.deepep_wire_share(dsv3, 64, 8) == pytest.approx(8 * 0.5 * (1 - miss) / 8)
    assert steptime.deepep_wire_share(dsv3, 8, 8) == 1.0  # inside one node: NVLink, nothing saved


def test_deepep_takes_a_deepseek_v3_layout_toward_the_published_step():
    """The all-to-alls of DeepSeek-V3 over 8 nodes cost 0.45 of their bytes' time with DeepEP (a
    token once per node), plus the calls' latency; everything else in the step is unchanged."""
    kw = dict(devices=1024, tp=2, sequence_parallel=True, pp=8, interleave=4, ep=64, etp=1, zero_stage=1,
              global_batch=8192, seq_len=4096, micro_batch=1, precision="fp8")
    base = train("deepseek-v3", "dgx-h100", **kw)
    dee = train("deepseek-v3", "dgx-h100", moe_enable_deepep=True, **kw)
    assert 0.45 < dee.step.ep_comm_s / base.step.ep_comm_s < 0.55
    assert dee.step.compute_s == base.step.compute_s and dee.step.tp_comm_s == base.step.tp_comm_s


@pytest.mark.parametrize("cmd", [["train", "llama3-8b", "--moe-enable-deepep"],
                                 ["search", "llama3-8b", "--devices", "8", "--global-batch", "64", "--moe-enable-deepep"]])
def test_deepep_on_a_dense_model_is_refused(cmd, capsys):
    from costmodel.cli.app import main

    with pytest.raises(SystemExit) as exc:
        main(cmd)
    assert exc.value.code == 2 and "moe_enable_deepep" in capsys.readouterr().err


def test_headers_name_the_switches(capsys):
    """train and search name the Megatron-style switches a job sets (TrainJob.switches) in their
    headers and search's JSON: the numbers below them rest on them."""
    from costmodel.cli.app import main

    args = ["--hardware", "dgx-h100", "--global-batch", "1024", "--seq-len", "4096", "--moe-enable-deepep"]
    for cmd in (["train", "mixtral-8x7b", "--devices", "64", "--ep", "8", "--tp", "2", "--zero-stage", "1", *args],
                ["search", "mixtral-8x7b", "--devices", "64", "--top", "1", "--json", *args]):
        with pytest.raises(SystemExit) as exc:
            main(cmd)
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "(DeepEP)" in " ".join(out.split()) if cmd[0] == "train" else json.loads(out)["switches"] == ["DeepEP"]
