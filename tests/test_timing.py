"""Step-time and decode-time models against the public H100 measurements and published runs."""
from pathlib import Path

import pytest

from costmodel.plan import train
from costmodel.validate import validate_file


def test_public_step_times(truth_file):
    rep = validate_file(truth_file)
    assert rep.summary["train.step_seconds"].mape < 0.10
    assert rep.summary["decode_step.step_seconds"].mape < 0.10


def test_gpt3_175b_breakdown_sums_to_total():
    est = train("gpt3-175b", "dgx-a100", nodes=128, tp=8, pp=8, global_batch=1536)
    assert sum(est.step.parts().values()) == pytest.approx(est.step.total_s, rel=1e-9)
    # Narayanan et al. 2021 sec. 5.1 (eq. 4 example): GPT-3 175B on 1024 A100s at X = 140 TFLOP/s
    # per GPU (44.7% of 312; X taken from Table 1's 1024-GPU row). Uncalibrated A100 defaults must
    # land within 15% of it.
    assert est.tflops_per_device == pytest.approx(140, rel=0.15)
    assert est.fits


def test_decode_is_bandwidth_bound_at_batch_1():
    from costmodel.plan import infer

    est = infer("llama2-7b", "h100-sxm", batch=1, prompt_len=512, gen_len=128)
    # 13.5 GB of bf16 weights at <= 3.35 TB/s: no faster than 4.0 ms per token
    assert est.tpot_s > 13.48e9 / 3.35e12
    assert est.tpot_s < 3 * 13.48e9 / 3.35e12


def test_throughput_curve_is_each_batch_estimated_alone():
    """infer's throughput curve (made when first read) holds, at every power-of-two batch up to the
    largest that fits, the TPOT and TTFT an estimate at that batch gives on its own, and
    batch x gen / (TTFT + gen x TPOT) as its end-to-end rate."""
    from costmodel.plan import infer

    est = infer("llama2-7b", "h100-sxm", batch=3, prompt_len=700, gen_len=64)
    mb = est.max_batch_that_fits
    curve = est.to_dict()["throughput_curve"]
    assert [p["batch"] for p in curve] == [1 << i for i in range(mb.bit_length())]
    for p in curve:
        alone = infer("llama2-7b", "h100-sxm", batch=p["batch"], prompt_len=700, gen_len=64)
        assert p["tpot_s"] == pytest.approx(alone.tpot_s, rel=1e-12)
        assert p["tokens_per_s"] == pytest.approx(p["batch"] / alone.tpot_s, rel=1e-12)
        assert p["e2e_tokens_per_s"] == pytest.approx(
            p["batch"] * 64 / (alone.ttft_s + 64 * alone.tpot_s), rel=1e-12)
    assert est.throughput_curve is est.throughput_curve  # made once


def test_step_models_say_which_efficiency_they_used():
    # A device with a shipped overlay (hardware/calibrated/h100-sxm.yaml) uses it by default and says
    # so; one without (A100) uses the datasheet curves.
    est = train("llama-1.3b", "h100-sxm", micro_batch=4, seq_len=2048)
    assert est.efficiency_source.startswith("calibrated:") and "h100-sxm.yaml" in est.efficiency_source
    assert train("llama-1.3b", "a100-80gb-sxm", micro_batch=4, seq_len=2048).efficiency_source == "datasheet defaults"
    from costmodel.plan import infer

    assert infer("llama3-8b", "h200-sxm", batch=1, prompt_len=128, gen_len=16).efficiency_source.startswith("calibrated:")


PUBLISHED = Path(__file__).resolve().parent.parent / "data" / "published"


def test_megatron_2021_ptd_p_throughput():
    """Narayanan et al. 2021 Tables 1 and 2 (PTD-P rows; data/published/megatron-2021.jsonl): the
    per-GPU TFLOP/s of every published tensor+pipeline+data layout, predicted with the A100
    datasheet defaults: mean error under 6%, none worse than 15%."""
    rep = validate_file(PUBLISHED / "megatron-2021.jsonl")
    errs = [abs(c.rel_error) for c in rep.cases if c.metric == "tflops_per_device" and "zero-3" not in c.name]
    assert len(errs) == 16
    assert sum(errs) / len(errs) < 0.06
    assert max(errs) < 0.15


def test_korthikanti_2022_step_times():
    """Korthikanti et al. 2022 Table 5 / sec. 6.3 (sequence parallelism, selective and full
    recompute, 22B-1T on A100s): step seconds within 6% on average, none worse than 10%."""
    rep = validate_file(PUBLISHED / "korthikanti-2022.jsonl")
    assert rep.summary["published.step_seconds"].mape < 0.06
    assert rep.summary["published.step_seconds"].max_abs_rel_error < 0.10


def _a100_layer(tp, sp, attention="flash", mb=1, seq=2048):
    from costmodel import training as tr
    from costmodel.arch import load_model
    from costmodel.roofline import efficiency_for
    from costmodel.specs import load_library
    from costmodel.workload import Parallel, TrainJob

    m = load_model("gpt3-175b")
    eff = efficiency_for(load_library().device("a100-80gb-sxm"))
    job = TrainJob(seq_len=seq, precision="amp-fp16", framework="megatron", attention=attention)
    return m, eff, tr._layer_times(eff, m, job, Parallel(tp=tp, sequence_parallel=sp), mb, seq, "fp16")


def test_norms_and_dropout_are_replicated_without_sequence_parallelism():
    """Korthikanti et al. 2022 sec. 4.2.2: without sequence parallelism every tensor-parallel rank
    runs layer-norm, dropout and the residual adds on the whole b x s x h activation; with it,
    1/t of it. Megatron-style kernels move ~30h bytes per token on the hidden-wide ops and
    0.8 x 8f on GELU (training.elementwise_bytes_per_token)."""
    m, eff, (*_, e_f, _e_b) = _a100_layer(8, False)
    _, _, (*_, e_f_sp, _) = _a100_layer(8, True)
    bw = eff.mem_bytes_per_s
    tokens = 2048
    wide, sharded = 30 * m.hidden * tokens, 0.8 * 8 * m.ffn * tokens / 8
    assert e_f == pytest.approx((wide + sharded) / bw(wide + sharded), rel=1e-9)
    assert e_f_sp == pytest.approx((wide / 8 + sharded) / bw(wide / 8 + sharded), rel=1e-9)
    assert e_f > 4 * e_f_sp


def test_transformer_engine_fp8_casts():
    """FP8 steps under Megatron-LM / NeMo move Transformer Engine's casts and transposes on top of
    the bf16 elementwise traffic (training.te_fp8_bytes_per_token), by hand for a GELU layer
    (q = kv = h, f = 4h). Without sequence parallelism, forward: cast + transpose of the two
    row-parallel inputs, 4 x (h + 4h), less the two norms' outputs written in 1 byte, 2h: 18h;
    backward: cast + transpose of the column-parallel output gradients, 4 x (3h + 4h), of the two
    row-parallel ones, 2 x 4h, and transposes of the two norm outputs, 2 x 2h: 40h. Under sequence
    parallelism at t = 8, forward 3 x 5h/8 - 2h/8 = 13h/8; backward the deferred transposes
    2 x 5h/8, the column gradients 4 x 7h/8, the row gradients 2 x (3h/8 + 2h) and the norm
    transposes 4h: 13.5h. Eager PyTorch gets none of it (its fp8 is not Transformer Engine's)."""
    from costmodel import training as tr
    from costmodel.arch import load_model
    from costmodel.roofline import efficiency_for, memory_op
    from costmodel.specs import load_library
    from costmodel.workload import Parallel, TrainJob

    m = load_model("gpt3-175b")
    h = m.hidden
    assert (m.q_dim, m.kv_dim, m.ffn) == (h, h, 4 * h)
    assert tr.te_fp8_bytes_per_token(m, 1, False) == pytest.approx((18 * h, 40 * h), rel=1e-12)
    assert tr.te_fp8_bytes_per_token(m, 8, True) == pytest.approx((13 * h / 8, 13.5 * h), rel=1e-12)
    spec = load_library().device("h100-sxm")
    eff = efficiency_for(spec)
    seq, tokens = 2048, 2048
    par = Parallel(tp=8, sequence_parallel=True)

    def times(precision, framework="megatron"):
        job = TrainJob(seq_len=seq, precision=precision, framework=framework)
        return tr._layer_times(eff, m, job, par, 1, seq, "fp8", spec)

    *_, e_f8, e_b8 = times("fp8")
    *_, e_f16, e_b16 = times("amp-bf16")
    assert e_f8 - e_f16 == pytest.approx(memory_op(eff, "fp8_casts", tokens * 13 * h / 8).time_s, rel=1e-9)
    assert e_b8 - e_b16 == pytest.approx(memory_op(eff, "fp8_casts_bwd", tokens * 13.5 * h).time_s, rel=1e-9)
    assert times("fp8", "pytorch")[4:] == times("amp-bf16", "pytorch")[4:]


def test_fp8_steps_keep_the_lm_head_in_bf16():
    """Megatron-core's output layer is a plain ColumnParallelLinear outside Transformer Engine's
    fp8 autocast, and torchtitan's float8 conversion leaves the "output" module out: an fp8 step's
    LM head runs at the bf16 rate. So doubling the vocabulary adds the same GEMM time to an fp8
    step as to a bf16 one (the decoder layers' fp8 GEMMs do not change), and less than an fp8
    head would add."""
    from costmodel.arch import load_model
    from costmodel.roofline import efficiency_for, gemm_op_s
    from costmodel.specs import load_library
    from costmodel.training import estimate_train
    from costmodel.workload import Parallel, TrainJob

    spec = load_library().device("h100-sxm")
    base = load_model("llama3-8b")
    par = Parallel(tp=1, dp=1)

    def head_added(precision):
        t = [estimate_train(base.model_copy(update={"vocab": v}), spec,
                            TrainJob(seq_len=4096, global_batch=1, precision=precision, framework="megatron"),
                            par).step.compute_s for v in (base.vocab, 2 * base.vocab)]
        return t[1] - t[0]

    eff = efficiency_for(spec)
    # forward and backward (twice the forward), at Megatron's sustained clock (gemm_clock: sustained)
    bf16_head = 3 * (gemm_op_s(eff, 4096, base.hidden, 2 * base.vocab, "bf16")
                     - gemm_op_s(eff, 4096, base.hidden, base.vocab, "bf16"))
    assert head_added("fp8") == pytest.approx(head_added("amp-bf16"), rel=1e-9)
    assert head_added("fp8") == pytest.approx(bf16_head, rel=1e-9)


def test_float8_dynamic_casts_by_hand():
    """torchao's dynamic tensor-wise recipe per linear and call (training.float8_dynamic_cast_s):
    forward, the input's maximum (2 m k bytes) and cast (3 m k), the weight's (2 k n, 3 k n);
    backward, the gradient's maximum (2 m n), cast (3 m n) and transposed copy (2 m n), and
    transposed copies of the weight (2 k n) and the input (2 m k). At 8192 x 8192 x 8192 every one
    of these kernels streams 128-384 MiB, so each takes its bytes over the streaming rate; and a
    torchtitan fp8 step counts them where Megatron's counts Transformer Engine's."""
    from costmodel import training as tr
    from costmodel.arch import load_model
    from costmodel.roofline import efficiency_for, memory_op_s
    from costmodel.specs import load_library
    from costmodel.workload import Parallel, TrainJob

    spec = load_library().device("h100-sxm")
    eff = efficiency_for(spec)
    e = 8192.0 ** 2
    fwd, bwd = tr.float8_dynamic_cast_s(eff, [(8192, 8192, 8192, 2.0)])
    assert fwd == pytest.approx(2 * (2 * memory_op_s(eff, 2 * e) + 2 * memory_op_s(eff, 3 * e)), rel=1e-12)
    assert bwd == pytest.approx(2 * (4 * memory_op_s(eff, 2 * e) + memory_op_s(eff, 3 * e)), rel=1e-12)
    rate = eff.mem_bytes_per_s(3 * e)
    assert fwd == pytest.approx(2 * 10 * e / rate, rel=0.05) and bwd == pytest.approx(2 * 11 * e / rate, rel=0.05)

    m = load_model("llama3-8b")
    par = Parallel(tp=1)

    def elementwise(framework, precision):
        job = TrainJob(seq_len=4096, precision=precision, framework="megatron", profile=framework)
        return sum(tr._layer_times(eff, m, job, par, 1, 4096, "fp8", spec)[4:])

    h, f, kv = m.hidden, m.ffn, m.kv_dim
    # q, k and v as three linears (torchtitan's wq, wk, wv; the step model times them apart), the
    # attention output, the gate and up projections together, the down projection
    lin = [(4096, h, h, 1.0), (4096, h, kv, 1.0), (4096, h, kv, 1.0), (4096, h, h, 1.0), (4096, h, 2 * f, 1.0),
           (4096, f, h, 1.0)]
    titan = elementwise("torchtitan-compile", "fp8") - elementwise("torchtitan-compile", "amp-bf16")
    assert titan == pytest.approx(sum(tr.float8_dynamic_cast_s(eff, lin)), rel=1e-9)
    te = elementwise("megatron", "fp8") - elementwise("megatron", "amp-bf16")
    assert te == pytest.approx(memory_op_s(eff, 4096 * tr.te_fp8_bytes_per_token(m, 1, False)[0])
                               + memory_op_s(eff, 4096 * tr.te_fp8_bytes_per_token(m, 1, False)[1]), rel=1e-9)


def test_megatron_cross_entropy_passes():
    """Megatron-LM's vocab_parallel_cross_entropy moves 38 bytes per logit forward (fp32 cast
    2 + 4, max 4, subtract 4 + 4, exp 4 + 4, sum 4, divide 4 + 4) and 14 backward (multiply
    4 + 4, cast back to bf16 4 + 2): 52 per logit, on V / t logits per token and rank; eager
    PyTorch keeps its 2 x 14 bytes forward and 1.5 times that backward, and the composed nanotron
    profile the 14 x 2.5 its parameters were fitted with."""
    from costmodel import training as tr
    from costmodel.roofline import efficiency_for, memory_op
    from costmodel.specs import load_library
    from costmodel.workload import TrainJob

    eff = efficiency_for(load_library().device("h100-sxm"))
    tokens, vocab, tp = 4096, 131072, 2
    logits = tokens * vocab / tp
    for fw in ("megatron", "deepspeed"):
        assert tr.cross_entropy_s(eff, TrainJob(framework=fw), tokens, vocab, tp) == pytest.approx(
            memory_op(eff, "loss", 52 * logits).time_s, rel=1e-12), fw
    assert tr.cross_entropy_s(eff, TrainJob(framework="pytorch"), tokens, vocab, tp) == pytest.approx(
        2.5 * memory_op(eff, "loss", 28 * logits).time_s, rel=1e-12)
    assert tr.cross_entropy_s(eff, TrainJob(framework="megatron", profile="nanotron"), tokens, vocab, tp) == (
        pytest.approx(2.5 * memory_op(eff, "loss", 14 * logits).time_s, rel=1e-12))


def test_standard_attention_runs_the_full_score_matrix():
    """Without a fused kernel the causal mask is applied to the full s x s scores, so attention's
    GEMM FLOPs are the full 4 b h s^2 d forward (Narayanan et al. 2021 eq. 3 counts 16 B s^2 l h
    over the 4 passes), and the s x s scores are materialised: time grows ~ s^2 at a fixed token
    count, unlike flash attention's causal half."""
    _, _, t1 = _a100_layer(8, False, "standard", mb=2, seq=2048)
    _, _, t2 = _a100_layer(8, False, "standard", mb=1, seq=4096)
    a_f1, a_f2 = t1[2], t2[2]
    assert a_f2 / a_f1 == pytest.approx(2.0, rel=0.1)  # same tokens, twice the keys per query
    # hand calculation of the forward at mb 2, s 2048, 96 / 8 = 12 heads of d 128: S = Q K^T and
    # O = P V over 24 (batch x head) matrices, plus 4 passes over the 2-byte scores
    m, eff, _ = _a100_layer(8, False)
    bh, s, d = 2 * 12, 2048, 128
    gemms = eff.gemm_time_s(bh * s, s, d, "fp16") + eff.gemm_time_s(bh * s, d, s, "fp16")
    traffic = 4 * 2.0 * bh * s * s
    assert a_f1 == pytest.approx(gemms + traffic / eff.mem_bytes_per_s(traffic), rel=1e-9)
    assert 2 * 2 * bh * s * s * d * 2 / gemms < 312e12  # full (non-causal) FLOPs below peak
    # backward: 4 GEMMs of the forward's size (dP, dV, dQ, dK) and twice the score traffic
    assert 1.5 < t1[3] / a_f1 < 2.2


def test_default_gemm_wave_quantisation_uses_the_spec_compute_units():
    """128 x 128 output tiles in waves of the spec's SMs (A100: 108): 108 tiles fill one wave;
    109 need two waves of which 109/216 is busy, rate x (109/216) ** 0.5 (roofline.WAVE_EXPONENT).
    The rate itself is checked against measurements: the datasheet-default model's bf16 8192^3
    GEMM on an H100 against this project's H100 runs 23m and 23z (isolated and back-to-back calls:
    694-772 TFLOP/s), which the default's 0.78 of peak (read off the public file) never saw."""
    import json

    from costmodel.roofline import _DefaultEfficiency
    from costmodel.specs import load_library

    h100 = _DefaultEfficiency(load_library().device("h100-sxm"))
    predicted = h100.gemm_flops_per_s(8192, 8192, 8192, "bf16")
    rates = []
    for run in ("h100-sxm/2026-11-23m-kernels/h100-sxm-2026-11-23m-kernels.jsonl",
                "h100-sxm/2026-11-23z-kernels/h100-sxm-2026-11-23z-kernels.jsonl"):
        for line in (MEASUREMENTS / run).read_text().splitlines():
            r = json.loads(line)
            if r["op"] == "gemm" and r["dtype"] == "bf16" and r["m"] == r["n"] == r["k"] == 8192:
                rates += [2 * 8192**3 / r["s"], 2 * 8192**3 / r["s_stream"]]
    assert len(rates) == 4 and 690e12 < min(rates) and max(rates) < 780e12
    for measured in rates:
        assert abs(predicted / measured - 1) < 0.10, (predicted, measured)
    a100 = _DefaultEfficiency(load_library().device("a100-80gb-sxm"))
    k = 8192
    full = a100.gemm_flops_per_s(128 * 108, 128, k, "fp16")
    over = a100.gemm_flops_per_s(128 * 109, 128, k, "fp16")
    assert over / full == pytest.approx((109 / 216) ** 0.5, rel=1e-9)
    tpu = _DefaultEfficiency(load_library().device("tpu-v4"))  # no compute_units: no quantisation
    assert tpu.gemm_flops_per_s(128 * 109, 128, k) == pytest.approx(tpu.gemm_flops_per_s(128 * 108, 128, k), rel=1e-9)


def test_grad_reduce_overlap():
    """Bucketed DDP hides DP_OVERLAP_FRACTION of the gradient all-reduce behind backward (at least
    the last bucket stays exposed); Megatron-LM 2021's local DDP reduces after backward, all exposed."""
    from costmodel import training as tr

    kw = dict(devices=64, tp=8, pp=1, global_batch=64, micro_batch=1, precision="amp-fp16", framework="megatron")
    ovl = train("llama2-13b", "dgx-a100", **kw)
    seq = train("llama2-13b", "dgx-a100", overlap_grad_reduce=False, **kw)
    op = seq.step.dp_comm_exposed_s
    assert op > 0
    # overlapped: max(op - f x backward of the last micro-batch, (1 - f) x op), never below the last bucket
    assert op * (1 - tr.DP_OVERLAP_FRACTION) * (1 - 1e-9) <= ovl.step.dp_comm_exposed_s < op
    assert seq.step.total_s - ovl.step.total_s == pytest.approx(op - ovl.step.dp_comm_exposed_s, rel=1e-9)


MEASUREMENTS = Path(__file__).resolve().parent.parent / "data" / "measurements"
GPUBOUND = {"h100": "h100-sxm/2026-11-23n-gemm-kernels-gpubound-prefill/infer-gpubound-h100",
            "h200": "h200-sxm/2026-11-23o-gpubound-prefill/infer-gpubound-h200"}


def test_hf_mixtral_train_steps_against_measurements():
    """Mixtral (8 experts, top-2) training steps measured through transformers 5.17 on H100 and
    H200 (data/measurements/*/2026-11-23-train-steps/train-steps-*.jsonl, train-profile-h100.jsonl). Before the experts'
    fp32 fallback under amp, their dispatch traffic and host ops were modelled, every one of these
    was predicted 17-74% too fast. The worst now is the host-bound b1 step of the profile run
    (-18%), a day whose host ran ~30% slower than the public file's on the same llama case."""
    errs = {}
    for f in ("h100-sxm/2026-11-23-train-steps/train-steps-h100.jsonl", "h200-sxm-x2/2026-11-23-train-steps/train-steps-h200x2.jsonl", "h100-sxm/2026-11-23i-infer-train-profile/train-profile-h100.jsonl"):
        for c in validate_file(MEASUREMENTS / f).cases:
            if c.metric == "step_seconds" and c.name.startswith("mixtral"):
                errs[f + ":" + c.name] = c.rel_error
    assert len(errs) == 7
    assert max(abs(e) for e in errs.values()) < 0.20, errs
    assert sum(abs(e) for e in errs.values()) / len(errs) < 0.10, errs


def test_amp_experts_run_at_the_fp32_rate():
    # Under amp, HF's grouped_mm experts run fp32 (profiled: FFMA / SIMT sgemm kernels). For the
    # same job in pure bf16 the experts' GEMMs must be much faster: H100 dense bf16 989 vs fp32 67
    # TFLOP/s on the datasheet, so at least 3x even after the efficiency curves.
    from costmodel.arch import ModelConfig, MoEConfig
    from costmodel.specs import HardwareLibrary
    from costmodel.training import _layer_times
    from costmodel.roofline import efficiency_for
    from costmodel.workload import Parallel, TrainJob

    spec = HardwareLibrary().device("h100-sxm")
    eff = efficiency_for(spec, None)
    moe = ModelConfig(id="m", layers=8, hidden=1024, heads=16, kv_heads=4, ffn=2816, vocab=32000,
                      moe=MoEConfig(experts=8, top_k=2, expert_ffn=2816))
    dense = moe.model_copy(update={"moe": None})
    par = Parallel()
    t = {}
    for prec in ("amp-bf16", "bf16"):
        job = TrainJob(micro_batch=4, seq_len=1024, precision=prec)
        t[prec] = _layer_times(eff, moe, job, par, 4, 1024, "bf16")[0] - _layer_times(eff, dense, job, par, 4, 1024, "bf16")[0]
    assert t["amp-bf16"] > 3 * t["bf16"]


def test_eager_hf_infer_against_measurements():
    """21 eager transformers prefill + decode measurements on H100 (data/measurements/h100-sxm/2026-11-23i-infer-train-profile/infer-h100.jsonl).
    Host-bound calls there vary +-25% between repeats, so the bar is the mean. The earlier model
    (2.2 ms of host per layer, a hard max) predicted prefill 74% too slow on average."""
    rep = validate_file(MEASUREMENTS / "h100-sxm/2026-11-23i-infer-train-profile/infer-h100.jsonl")
    assert rep.summary["infer.prefill_seconds"].mape < 0.20
    assert rep.summary["infer.decode_seconds_per_token"].mape < 0.20
    big = [c for c in rep.cases if c.metric == "prefill_seconds" and c.measured > 0.2]
    assert len(big) == 2 and all(abs(c.rel_error) < 0.25 for c in big)  # GPU-bound prefills


def test_gpu_bound_eager_prefill_on_h100_and_h200_against_measurements():
    """The same four GPU-bound eager HF prefills (16-32k tokens) measured on an H100 and on an H200
    (infer-gpubound-*.jsonl of data/measurements/h100-sxm/2026-11-23n-*/ and h200-sxm/2026-11-23o-*/; the H200 file adds llama-3b). Before eager
    prefill GEMMs ran at the burst clock and HF's torch.cat and bf16 elementwise kernels were
    modelled at their issue-bound rates: H100 -8..0%, H200 -16..-4% (the H200's HBM advantage was
    credited to kernels that do not get it)."""
    for gpu, n in (("h100", 4), ("h200", 5)):
        rep = validate_file(MEASUREMENTS / f"{GPUBOUND[gpu]}.jsonl")
        cases = [c for c in rep.cases if c.metric == "prefill_seconds"]
        assert len(cases) == n
        for c in cases:
            assert abs(c.rel_error) < 0.10, (gpu, c.name, c.rel_error)


def test_eager_cat_and_elementwise_rates_from_profiles():
    """The rates behind the eager prefill terms, from the kernels profiled in those prefills:
    torch.cat's traffic (4 bytes per element of q and of k, v, and the cache's k, v) over its
    kernel time is within 15% of EAGER_CAT_BYTES_PER_S_PER_SM x 132 on both GPUs, and the bf16
    mul/add/copy kernels of each prefill ran at most 1.2x faster on the H200 than on the H100
    (where the harness's vectorised copies gain 1.43x, hardware/calibrated/*.yaml)."""
    import json

    from costmodel.roofline import EAGER_CAT_BYTES_PER_S_PER_SM
    from costmodel.validate import model_from_record

    ew = {}
    for gpu in ("h100", "h200"):
        recs = {json.loads(x)["name"]: json.loads(x) for x in
                (MEASUREMENTS / f"{GPUBOUND[gpu]}.jsonl").read_text().splitlines()}
        for line in (MEASUREMENTS / f"{GPUBOUND[gpu]}.diag.jsonl").read_text().splitlines():
            d = json.loads(line)
            prof = d.get("profile_prefill")
            if not prof:
                continue
            rec = recs[d["name"]]
            m = model_from_record(rec["model"], d["name"], rec["prompt_len"])
            ops = {t["op"]: t["self_device_us"] * 1e-6 for t in prof["top_device"] if t["op"].startswith("aten::")}
            nbytes = m.layers * rec["batch"] * rec["prompt_len"] * 4 * (m.q_dim + 3 * m.kv_dim)
            assert abs(nbytes / ops["aten::cat"] / (132 * EAGER_CAT_BYTES_PER_S_PER_SM) - 1) < 0.15, (gpu, d["name"])
            ew[(gpu, d["name"])] = ops["aten::mul"] + ops["aten::add"] + ops["aten::copy_"]
    both = [name for gpu, name in ew if gpu == "h100" and ("h200", name) in ew]
    assert len(both) == 4
    for name in both:
        assert 1.0 < ew[("h100", name)] / ew[("h200", name)] < 1.2, name


def test_host_time_factor_accounts_for_a_faster_host():
    """The one-H200 machine ran eager HF decode ~1.8x faster than the H100 machine the eager host
    constants were fitted on (data/measurements/h200-sxm/2026-11-23l-infer/infer-h200.jsonl). The user's host factor multiplies
    the machine's (the shipped H200 calibration's 0.6): 0.55 / 0.6 on top of it gives the 0.55 that
    fits this file best, mean decode error under 15%. It leaves CUDA-graph serving (no host term)
    alone, and scales only the host part of a train step."""
    fast = validate_file(MEASUREMENTS / "h200-sxm/2026-11-23l-infer/infer-h200.jsonl", host_time_factor=0.55 / 0.6)
    assert fast.summary["infer.decode_seconds_per_token"].mape < 0.15
    import costmodel

    graph = [costmodel.infer("llama-1.3b", "h100-sxm", batch=8, host_time_factor=f).to_dict()["tpot_s"] for f in (1.0, 0.5)]
    assert graph[0] == graph[1]
    eager = [costmodel.infer("llama-1.3b", "h100-sxm", batch=8, cuda_graph=False, host_time_factor=f).to_dict()["tpot_s"]
             for f in (1.0, 0.5)]
    assert eager[1] < 0.8 * eager[0]
    steps = [costmodel.train("llama-1.3b", "h100-sxm", micro_batch=1, seq_len=1024, framework="pytorch",
                             host_time_factor=f).step for f in (1.0, 0.5)]
    assert steps[1].host_overhead_s < steps[0].host_overhead_s
    assert steps[1].compute_s == steps[0].compute_s and steps[1].elementwise_s == steps[0].elementwise_s


def test_graph_decode_step_same_error_on_h100_and_h200():
    """The same CUDA-graph decode step (llama-1.3b b8 ctx2049, our harness) on an H100 and an H200
    (data/measurements/h100-sxm/2026-11-23-train-steps/train-steps-h100.jsonl, train-steps-h200x2.jsonl): the H100 and H200 dies are
    the same, so a graph GEMM's fixed time is too. With each calibration's own fitted kernel_min_s
    (4.04 vs 0.95 us) the errors were -13% and -21%; with GRAPH_GEMM_FIXED_S within 2 points."""
    err = {}
    for f in ("h100-sxm/2026-11-23-train-steps/train-steps-h100.jsonl", "h200-sxm-x2/2026-11-23-train-steps/train-steps-h200x2.jsonl"):
        for c in validate_file(MEASUREMENTS / f).cases:
            if c.name == "llama-1.3b/b8/ctx2049" and c.metric == "step_seconds":
                err[f] = c.rel_error
    assert len(err) == 2
    assert abs(err["h100-sxm/2026-11-23-train-steps/train-steps-h100.jsonl"] - err["h200-sxm-x2/2026-11-23-train-steps/train-steps-h200x2.jsonl"]) < 0.02


def test_ddp_and_fsdp_on_two_h200_against_measurements():
    """The 10 two-GPU records of data/measurements/h200-sxm-x2/2026-11-23-train-steps/train-steps-h200x2.jsonl (DDP and FSDP2 over
    NVLink). Before bucketed DDP all-reduces without net overlap and FSDP2's per-layer host hooks
    were modelled: DDP b4 -16% / -18%, FSDP b1 -32% / -33%, mean 16%."""
    cases = [c for c in validate_file(MEASUREMENTS / "h200-sxm-x2/2026-11-23-train-steps/train-steps-h200x2.jsonl").cases
             if c.metric == "step_seconds" and "/dp2-" in c.name]
    assert len(cases) == 10
    assert sum(abs(c.rel_error) for c in cases) / len(cases) < 0.10
    for c in cases:
        if "/b4/" in c.name or "fsdp/b1" in c.name:  # GPU-bound DDP, host-bound FSDP
            assert abs(c.rel_error) < 0.12, (c.name, c.rel_error)


def test_attention_fwd_bwd_into_leaf_grads_against_measurements():
    """SCHEMA.md's sdpa_fwd_bwd (autograd into leaf tensors) against o.sum().backward() measured at
    four shapes on H100 (data/measurements/h100-sxm/2026-11-23h-gemm-sdpa-host/h100-sxm-2026-11-23h-sdpa-variants.jsonl) and the public
    record (-34% before the leaf-gradient traffic was modelled)."""
    import json

    from costmodel.roofline import efficiency_for
    from costmodel.specs import load_library
    from costmodel.validate import _leaf_backward_extra_s

    eff = efficiency_for(load_library().device("h100-sxm"), None, shipped=True)
    n = 0
    for line in (MEASUREMENTS / "h100-sxm/2026-11-23h-gemm-sdpa-host/h100-sxm-2026-11-23h-sdpa-variants.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("variant") != "sum":
            continue
        rec = {"op": "sdpa_fwd_bwd", "b": r["b"], "h": r["h"], "s": r["s"], "d": r["d"]}
        pred = eff.predict_record_s(rec) + _leaf_backward_extra_s(rec, eff)
        assert abs(pred / r["s_time"] - 1) < 0.15, (rec, pred, r["s_time"])
        n += 1
    assert n == 4


def test_public_attention_fwd_bwd(truth_file):
    rep = validate_file(truth_file)
    assert rep.summary["kernel.sdpa_fwd_bwd.seconds"].mape < 0.20


def test_held_out_h200_steps():
    """Steps measured after the DDP / FSDP2 / HF-eager terms were fixed, on models and shapes none
    of their constants came from (data/measurements/h200-sxm-x2/2026-11-23k-train-holdout/): 14.2% and 9.8%
    mean error with the session-start model."""
    for f, bar in (("h200-sxm-x2/2026-11-23k-train-holdout/train-holdout-h200x2.jsonl", 0.08), ("h200-sxm-x2/2026-11-23k-train-holdout/train-holdout-h200x1.jsonl", 0.08)):
        rep = validate_file(MEASUREMENTS / f)
        s = rep.summary["train.step_seconds"]
        assert s.n in (5, 10) and s.mape < bar and s.max_abs_rel_error < 0.15, (f, s)


def test_standard_attention_and_fp16_steps():
    """SCHEMA.md variants measured on H100 (run 23s, data/measurements/h100-sxm/2026-11-23s-train-variants/train-variants-h100.jsonl):
    transformers' eager (standard) attention was -15..-39% in step time and -10..-20% in peak
    memory before its score traffic (EAGER_SCORE_BYTES_*, from the profile of one of these seven
    steps) and its saved fp32 softmax output were modelled; amp-fp16 with GradScaler."""
    from costmodel.validate import read_records, validate_records

    recs = read_records(MEASUREMENTS / "h100-sxm/2026-11-23s-train-variants/train-variants-h100.jsonl")
    std = [(w, r) for w, r in recs if r.get("attention") == "standard" and r["recompute"] == "none"]
    fp16 = [(w, r) for w, r in recs if r["precision"] == "amp-fp16" and "350m" not in r["name"]]  # 350m: host-bound
    assert len(std) == 7 and len(fp16) == 4
    for group, step_bar in ((std, 0.08), (fp16, 0.10)):
        for c in validate_records(group).cases:
            if c.metric == "step_seconds":
                assert abs(c.rel_error) < step_bar, (c.name, c.rel_error)
            if c.metric == "peak_bytes":
                assert abs(c.rel_error) < 0.03, (c.name, c.rel_error)
    # selective recompute of standard attention (run 23v, with the causal mask)
    for c in validate_records(read_records(MEASUREMENTS / "h100-sxm/2026-11-23v-train-selective/train-variants-selective-h100.jsonl")).cases:
        if c.metric in ("step_seconds", "peak_bytes"):
            assert abs(c.rel_error) < 0.08, (c.name, c.metric, c.rel_error)
    # the same steps on one H200 (run 23u), which no constant came from; GPT-2's LM head and fused
    # LayerNorm (data/measurements/h100-sxm/2026-11-23n-gemm-kernels-gpubound-prefill/README.md) are not modelled
    recs = read_records(MEASUREMENTS / "h200-sxm/2026-11-23u-train-variants/train-variants-h200.jsonl")
    std = [(w, r) for w, r in recs if r.get("attention") == "standard" and r["recompute"] == "none"
           and r["model"]["arch"] != "gpt2"]
    assert len(std) == 6
    for c in validate_records(std).cases:
        if c.metric == "step_seconds":
            assert abs(c.rel_error) < 0.12, (c.name, c.rel_error)
        if c.metric == "peak_bytes":
            assert abs(c.rel_error) < 0.03, (c.name, c.rel_error)


def test_gradient_accumulation_steps():
    """Gradient accumulation (SCHEMA.md global_batch > micro_batch x dp; run 23w on H100,
    data/measurements/h100-sxm/2026-11-23w-train-accum/train-accum-h100.jsonl). Memory needs nothing new: peaks within 3%. Time: that
    day's host ran faster than the truth file's (fit_host fits it one host-speed factor, 0.634, with
    the host constants unchanged); with it the eight steps are within 11% (26% mean, 67% max
    without it), the per-micro-batch host model holding across 1-8 micro-batches."""
    from costmodel.validate import read_records, validate_records

    recs = read_records(MEASUREMENTS / "h100-sxm/2026-11-23w-train-accum/train-accum-h100.jsonl")
    assert sum(1 for _, r in recs if r.get("global_batch")) == 7
    rep = validate_records(recs, host_time_factor=0.634)
    assert rep.summary["train.peak_bytes"].max_abs_rel_error < 0.03
    s = rep.summary["train.step_seconds"]
    assert s.mape < 0.07 and s.max_abs_rel_error < 0.11, s


def test_two_h200_variants():
    """2x H200 (run 23x): DDP with accumulation, standard attention and amp-fp16 peaks within 3% and
    GPU-bound llama-1.3b steps within 10%; FSDP peaks without accumulation within 3% (the
    accumulation cases kept gradients unsynchronised, which the model does not assume)."""
    from costmodel.validate import read_records, validate_records

    recs = read_records(MEASUREMENTS / "h200-sxm-x2/2026-11-23x-train-variants/train-variants-h200x2.jsonl")
    assert len(recs) == 10
    for c in validate_records(recs).cases:
        if c.metric == "peak_bytes" and not ("fsdp" in c.name and "/gb" in c.name):
            assert abs(c.rel_error) < 0.03, (c.name, c.rel_error)
        if c.metric == "step_seconds" and c.name.startswith("llama-1.3b") and "ddp" in c.name:
            assert abs(c.rel_error) < 0.10, (c.name, c.rel_error)


def test_fsdp_accumulation_syncing_every_micro_batch():
    """FSDP2 with gradient accumulation and a reduce-scatter every micro-batch (run 23aa, 2x H200):
    the model's semantics, with peaks within 2% (a no-sync run keeps unsharded gradients instead)."""
    from costmodel.validate import read_records, validate_records

    recs = read_records(MEASUREMENTS / "h200-sxm-x2/2026-11-23aa-fsdp-accum/train-fsdp-accum-h200x2.jsonl")
    peaks = [c for c in validate_records(recs).cases if c.metric == "peak_bytes"]
    assert len(peaks) == 6 and max(abs(c.rel_error) for c in peaks) < 0.02


def test_h200_machines_eager_infer_host():
    """Eager HF inference on both H200 machine kinds (session 6's single-H200 machine, run 23ab on the
    two-H200 one, whose host the truth file's H200 records come from) ran its host work ~1.7x faster
    than the H100 machine the eager constants were fitted on. The shipped H200 calibration carries that
    machine's factor (eager_infer_host_factor 0.6, chosen on these files): decode mean error 93% and
    79% without it."""
    from costmodel.calibration import shipped_efficiency
    from costmodel.specs import load_library

    assert shipped_efficiency(load_library().device("h200-sxm")).eager_infer_host_factor == pytest.approx(0.6)
    for f in ("h200-sxm/2026-11-23l-infer/infer-h200.jsonl", "h200-sxm-x2/2026-11-23ab-infer-host/infer-h200x2host.jsonl"):
        s = validate_file(MEASUREMENTS / f).summary
        assert s["infer.decode_seconds_per_token"].mape < 0.22, f
        assert s["infer.prefill_seconds"].mape < 0.18, f


def test_expert_tensor_parallel_one_drops_the_moe_layers_tp_collectives():
    """With etp 1 a MoE layer works on each rank's sequence-parallel share of the tokens: of a
    layer's tensor-parallel collectives (an all-gather and a reduce-scatter around attention and
    around the MLP) only attention's remain, so a model whose every layer is MoE (Qwen3-30B-A3B)
    spends exactly half the time on them. The expert-parallel group of ranks one apart (etp 1)
    stays inside a node where the default's, tp = 2 apart, does not (ep 8 x 2 > 8 GPUs)."""
    kw = dict(devices=16, tp=2, pp=1, ep=8, sequence_parallel=True, micro_batch=1, global_batch=16, seq_len=4096,
              precision="amp-bf16", framework="megatron")
    folded = train("qwen3-30b-a3b", "dgx-h100", etp=1, **kw)
    default = train("qwen3-30b-a3b", "dgx-h100", **kw)
    assert folded.step.tp_comm_s == pytest.approx(0.5 * default.step.tp_comm_s, rel=1e-12)
    assert 0 < folded.step.ep_comm_s < default.step.ep_comm_s
    assert folded.parallel["etp"] == 1 and default.parallel["etp"] is None
