"""data/published/*.jsonl: published training results at scale. The checks are internal consistency
of the transcription against relations the sources state (aggregate = per-GPU x GPUs, % of peak,
throughput increase, eq. (4) training time, PaLM's MFU from tokens/s, FLOPs per token, days to
train), so a mistyped number fails."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

DIR = Path(__file__).resolve().parents[1] / "data" / "published"
A100_PEAK = 312e12   # Narayanan et al. 2021 sec. 5: "peak device throughput of an A100 GPU with 16-bit precision is 312 teraFLOP/s"
H100_PEAK = 989e12   # H100 SXM dense bf16 (hardware/h100-sxm.yaml: 989.4)
TPU_V4_PEAK = 275e12  # TPU v4 bf16 (PaLM appendix B uses 275 TFLOP/s)


def _load(name: str) -> list[dict]:
    return [json.loads(line) for line in (DIR / name).read_text().splitlines() if line.strip()]


def _all() -> list[dict]:
    """The training records (kind ``published``); pope-2022.jsonl holds decode steps (kind
    ``decode_step``), and serve records have their own checks below."""
    return [r for f in sorted(DIR.glob("*.jsonl")) for r in _load(f.name) if r.get("kind") not in ("serve", "decode_step")]


def _serve() -> list[dict]:
    return [r for f in sorted(DIR.glob("*.jsonl")) for r in _load(f.name) if r.get("kind") == "serve"]


def test_serve_records_are_cited_and_complete():
    from costmodel.validate import model_from_record

    recs = _serve()
    assert len(recs) >= 40
    names = [r["name"] for r in recs]
    assert len(names) == len(set(names))
    for r in recs:
        assert r["source"].startswith("https://"), r["name"]
        assert r["engine"] in ("vllm", "sglang", "tensorrt-llm") and r["hardware"] in ("h100-sxm", "h100-pcie", "h200-sxm")
        par = r["parallel"]
        assert par["tp"] * par.get("pp", 1) == r["devices"], r["name"]
        assert model_from_record(r["model"], r["name"]).heads % par["tp"] == 0
        assert sum(r.get(k) is not None for k in ("batch", "concurrency", "request_rate", "max_load")) == 1
        m = r["measured"]
        assert m and all(v > 0 for v in m.values()), r["name"]
        # a closed loop of c users cannot beat c / TPOT output tokens per second (TTFT only lowers it)
        if r.get("concurrency") and "itl_seconds" in m and "output_tokens_per_s" in m:
            assert m["output_tokens_per_s"] <= 1.05 * r["concurrency"] / m["itl_seconds"], r["name"]


def test_every_record_is_cited_and_consistent():
    recs = _all()
    assert len(recs) >= 35
    names = [r["name"] for r in recs]
    assert len(names) == len(set(names))
    for r in recs:
        assert r["kind"] == "published"
        assert r["source"] and ("arXiv:" in r["source"] or "https://" in r["source"]), r["name"]
        assert r["hardware"] in ("a100-80gb-sxm", "h100-sxm", "tpu-v4", "mi250x", "v100-sxm3-32gb", "v100-sxm3-32gb-h", "b200", "gb200", "h200-sxm")
        assert r["measured"]
        par = r.get("parallel")
        if par and r.get("devices"):
            assert par["tp"] * par.get("cp", 1) * par["pp"] * par["dp"] == r["devices"], r["name"]
        if "unverified" not in r:
            assert r["model"]["layers"] and r["model"]["hidden"] and r["model"]["heads"], r["name"]


def test_presets_match_inline_architecture():
    from costmodel.arch import load_model

    for r in _all():
        m = r["model"]
        if isinstance(m, str):  # a preset id alone: the record is the preset's architecture
            continue
        if m.get("preset") and "unverified" not in r:
            p = load_model(m["preset"])
            assert (p.layers, p.hidden, p.heads, p.ffn) == (m["layers"], m["hidden"], m["heads"], m["ffn"]), r["name"]


def test_megatron_table1_aggregate_and_peak():
    t1 = [r for r in _load("megatron-2021.jsonl") if "/table1/" in r["name"]]
    assert len(t1) == 10
    for r in t1:
        tf = r["measured"]["tflops_per_device"]
        # aggregate PFLOP/s = TFLOP/s per GPU x GPUs (per-GPU figures are rounded to 1 TFLOP/s)
        assert r["measured"]["aggregate_pflops"] == pytest.approx(tf * r["devices"] / 1e3, rel=0.01), r["name"]
        assert r["measured"]["peak_fraction"] == pytest.approx(tf * 1e12 / A100_PEAK, abs=0.006), r["name"]
    last = t1[-1]
    assert (last["devices"], last["measured"]["tflops_per_device"], last["global_batch"]) == (3072, 163, 3072)
    assert (last["parallel"]["tp"], last["parallel"]["pp"], last["parallel"]["dp"]) == (8, 64, 6)


def test_megatron_table2_training_days_eq4():
    # eq. (4): end-to-end time ~ 8 T P / (n X), T = 300e9 tokens
    for r in (r for r in _load("megatron-2021.jsonl") if "/table2/" in r["name"]):
        P = r["model"]["params_published"]
        days = 8 * 300e9 * P / (r["devices"] * r["measured"]["tflops_per_device"] * 1e12) / 86400
        assert days == pytest.approx(r["measured"]["training_days_300b_tokens"], rel=0.05), r["name"]


def test_korthikanti_throughput_increase_and_dp_mfu():
    recs = {r["name"]: r for r in _load("korthikanti-2022.jsonl")}
    increase = {"22b": 0.290, "175b": 0.318, "530b": 0.297, "1t": 0.321}  # Table 5 "Throughput Increase"
    for size, inc in increase.items():
        sel = next(r for n, r in recs.items() if f"/{size}/selective+sp/" in n and "dp8" not in n)
        full = next(r for n, r in recs.items() if f"/{size}/full-recompute/" in n)
        assert full["measured"]["step_seconds"] / sel["measured"]["step_seconds"] - 1 == pytest.approx(inc, abs=0.002)
        assert sel["measured"]["hfu"] >= sel["measured"]["mfu"]
    # sec. 6.3: 8-way data parallelism, 37.83 s -> 39.15 s, MFU 56.0% -> 54.2%
    dp8 = recs["korthikanti-2022/sec6.3/530b/selective+sp/dp8/2240xa100"]
    base = recs["korthikanti-2022/table5/530b/selective+sp/280xa100"]
    assert base["measured"]["mfu"] * base["measured"]["step_seconds"] / dp8["measured"]["step_seconds"] == pytest.approx(
        dp8["measured"]["mfu"], abs=0.002)


def test_palm_mfu_from_tokens_per_second():
    (r,) = _load("palm-2022.jsonl")
    m = r["model"]
    # PaLM appendix B: model FLOPs per token 6N + 12 L H Q T (H heads, Q head dim, T sequence)
    per_token = 6 * m["params_published"] + 12 * m["layers"] * m["heads"] * m["head_dim"] * m["seq"]
    mfu = r["measured"]["tokens_per_s"] * per_token / (r["devices"] * TPU_V4_PEAK)
    assert mfu == pytest.approx(r["measured"]["mfu"], abs=0.002)


def test_palm_540b_validates_within_10_percent():
    """PaLM 540B on 6144 TPU v4 (two pods over the DCN): the PaLM block, the ICI torus and the DCN
    predict the paper's 46.2% MFU within 10%. Its partial rematerialisation (recompute_fraction)
    is the paper's own HFU/MFU ratio, so HFU is off by the same fraction as MFU."""
    from costmodel.validate import validate_file

    rep = validate_file(DIR / "palm-2022.jsonl")
    assert rep.skipped == []
    by = {c.metric: c for c in rep.cases}
    assert set(by) == {"mfu", "hfu"}
    assert abs(by["mfu"].rel_error) < 0.10
    assert by["hfu"].rel_error == pytest.approx(by["mfu"].rel_error, abs=1e-3)
    (r,) = _load("palm-2022.jsonl")
    assert 1 + r["recompute_fraction"] * 1.0831 / 3.2778 == pytest.approx(57.8 / 46.2, abs=0.002)


def test_pope_decode_latency_and_mfu_agree():
    """Pope et al. Table 2: each row's latency and MFU are one measurement: MFU = batch x 64 tokens x
    2N FLOPs per token (N = 540.35B, PaLM's count; attention over 2k positions adds ~1%) over the
    latency and 64 chips x 275 TFLOP/s."""
    recs = _load("pope-2022.jsonl")
    assert len(recs) == 2
    for r in recs:
        assert r["kind"] == "decode_step" and "arXiv:2211.05102" in r["source"]
        meas = r["measured"]
        assert meas["step_seconds"] * 64 == pytest.approx(meas["seconds_per_64_tokens"])
        mfu = r["batch"] * 64 * 2 * 540.35e9 / meas["seconds_per_64_tokens"] / (64 * TPU_V4_PEAK)
        assert mfu == pytest.approx(meas["mfu"], abs=0.01), r["name"]


def test_pope_decode_latencies_validate_within_20_percent():
    """The decode step on a 4x4x4 TPU v4 torus: weights (int8 or bf16) and the batch-sharded KV
    cache from HBM, plus the 2D weight-stationary layout's four collectives per layer
    (costmodel.partitioning) over the torus."""
    from costmodel.validate import validate_file

    rep = validate_file(DIR / "pope-2022.jsonl")
    assert rep.skipped == [] and len(rep.cases) == 2
    for c in rep.cases:
        assert c.metric == "step_seconds" and abs(c.rel_error) < 0.20, (c.name, c.rel_error)


def test_llama3_table4():
    recs = _load("llama3-2024.jsonl")
    assert [(r["devices"], r["parallel"]["cp"], r["measured"]["tflops_per_device"]) for r in recs] == [
        (8192, 1, 430), (16384, 1, 400), (16384, 16, 380)]
    for r in recs:
        assert r["tokens_per_batch"] == pytest.approx(16e6, rel=0.05)  # "16M" tokens per batch
        assert r["measured"]["tflops_per_device"] * 1e12 / H100_PEAK == pytest.approx(r["measured"]["mfu"], abs=0.007)


# --------------------------------------------------------------------------- predictions at scale

def _cases(name: str):
    from costmodel.validate import validate_file

    return validate_file(DIR / name).cases


def test_megatron_zero3_rows_predicted():
    """Narayanan et al. 2021 Table 2, DeepSpeed ZeRO-3 rows (384-2240 A100s): with DeepSpeed 2021's
    blocking list all-gathers of the weights above the persistence threshold and its gradient
    all-reduce (training.DEEPSPEED_*), every row within 15% of the published TFLOP/s and the mean
    within 6%. The step time stays flat from 768 to 1536 GPUs (175B) and 1120 to 2240 (530B), as
    published."""
    rows = {c.name: c for c in _cases("megatron-2021.jsonl") if "zero-3" in c.name and c.metric == "tflops_per_device"}
    assert len(rows) == 6
    errs = [abs(c.rel_error) for c in rows.values()]
    assert max(errs) < 0.15 and sum(errs) / len(errs) < 0.06, errs
    for a, b in (("gpt-175b/768", "gpt-175b/1536"), ("gpt-530b/1120", "gpt-530b/2240")):
        ca = next(c for n, c in rows.items() if a in n)
        cb = next(c for n, c in rows.items() if b in n)
        # TFLOP/s per GPU halves when the GPUs double at a fixed batch: same step time (within 15%)
        assert cb.predicted / ca.predicted == pytest.approx(cb.measured / ca.measured, rel=0.15)


def test_megatron_ptd_p_and_korthikanti_stay_within_5_percent():
    ptdp = [abs(c.rel_error) for c in _cases("megatron-2021.jsonl") if "zero-3" not in c.name]
    assert len(ptdp) == 26 and sum(ptdp) / len(ptdp) < 0.05
    k = [abs(c.rel_error) for c in _cases("korthikanti-2022.jsonl")]
    assert len(k) == 18 and sum(k) / len(k) < 0.05


def test_llama3_405b_rows_predicted():
    """Llama 3 Table 4 (8K-16K H100s, TP8 PP16, CP16 at 131K): with the interleaved schedule of one
    layer per model chunk (V = 8, sec. 3.3.2), Meta's RoCE node (no AWS/EFA scaling table) and
    activation checkpointing only in the 131K stage, TFLOP/s and MFU each within 15% on average,
    no row worse than 20%."""
    cases = _cases("llama3-2024.jsonl")
    for metric in ("tflops_per_device", "mfu"):
        errs = [abs(c.rel_error) for c in cases if c.metric == metric]
        assert len(errs) == 3
        assert sum(errs) / 3 < 0.15 and max(errs) < 0.20, (metric, errs)


# --------------------------------------------------------------------------- H100 results at scale

def _megatron_flops_per_token(m: dict, seq: int) -> float:
    """Megatron-LM's num_floating_point_operations (megatron/training/training.py) per token: full
    attention, gated MLP x 3/2, logits over the (padded) vocabulary, no recompute."""
    L, h, a, g, f, V = m["layers"], m["hidden"], m["heads"], m["kv_heads"], m["ffn"], m["vocab"]
    gated = 1.5 if m["mlp"] == "swiglu" else 1.0
    return 12 * L * h * h * ((1 + g / a + seq / h) + f / h * gated) + 6 * h * V


def test_megatron_lm_h100_weak_scaling_table():
    """Megatron-LM README model table (Megatron-Core r0.8.0, H100): aggregate PFLOP/s = TFLOP/s per
    GPU x GPUs, MFU = TFLOP/s / 989 rounded to 1%, DP 48 throughout, batch split evenly."""
    recs = _load("megatron-lm-h100-2024.jsonl")
    weak = [r for r in recs if "/weak/" in r["name"]]
    assert [r["devices"] for r in weak] == [48, 96, 192, 384, 768, 1536, 2304, 3072, 6144]
    for r in weak:
        tf, p = r["measured"]["tflops_per_device"], r["parallel"]
        assert r["measured"]["aggregate_pflops"] == pytest.approx(tf * r["devices"] / 1e3, abs=0.06), r["name"]
        assert r["measured"]["mfu"] == pytest.approx(tf * 1e12 / H100_PEAK, abs=0.0051), r["name"]
        assert p["dp"] == 48 and r["global_batch"] % p["dp"] == 0 and r["seq_len"] == 4096
        assert p["sequence_parallel"] == (p["tp"] > 1)  # --tp-comm-overlap requires it (arguments.py)
        m = r["model"]
        # the size labels against Megatron-core GPT defaults: L (12 h^2 + 13 h) + 2 V h + s h (4h MLP,
        # biases, LayerNorms, learned positions, untied output layer) rounds to each label but 1.7B
        # (1.754B; the record's notes say so)
        L, h = m["layers"], m["hidden"]
        params = (L * (12 * h * h + 13 * h) + 2 * m["vocab"] * h + m["seq"] * h) / 1e9
        label = m["size_label"].rstrip("B")
        digits = len(label.split(".")[1]) if "." in label else 0
        if label == "1.7":
            assert params == pytest.approx(1.754, abs=0.001)
        else:
            assert round(params, digits) == float(label), r["name"]
        assert {"micro_batch", "parallel.interleave", "precision"} <= set(r["unverified"])
    last = weak[-1]
    assert (last["parallel"]["tp"], last["parallel"]["pp"], last["global_batch"],
            last["measured"]["tflops_per_device"]) == (8, 16, 3072, 459.9)
    strong = [r for r in recs if "/strong/" in r["name"]]
    # 'from 96 H100 GPUs to 4,608 GPUs, using the same batch size of 1,152 ... MFU from 47% to 42%';
    # the layout is inferred, so validate must skip them
    assert [(r["devices"], r["global_batch"], r["measured"]["mfu"]) for r in strong] == [(96, 1152, 0.47), (4608, 1152, 0.42)]
    assert all("parallel" in r["unverified"] for r in strong)


def test_torchtitan_tables():
    """TorchTitan's H100 tables: global batch = local batch x FSDP degree, GPUs = FSDP x TP x PP x
    CP, step time = global tokens / (TPS/GPU x GPUs), and the file's '33% to 39% MFU' of the 1D 8B
    runs without Float8 from torchtitan's FLOPs per token at sequence 8,192."""
    recs = _load("torchtitan-2024.jsonl")
    assert len(recs) == 18
    by_table: dict[str, list[dict]] = {}
    for r in recs:
        by_table.setdefault(r["name"].split("/")[1], []).append(r)
        p = r["parallel"]
        assert r["global_batch"] == r["local_batch"] * p["dp"], r["name"]
        tokens = r["global_batch"] * r["seq_len"]
        assert r["measured"]["step_seconds"] == pytest.approx(
            tokens / (r["measured"]["tokens_per_s_per_device"] * r["devices"]), rel=1e-5), r["name"]
        assert r["framework"] == "torchtitan-2024" and r["node"] == "meta-h100-roce"
    assert {t: len(v) for t, v in by_table.items()} == {"table1": 3, "table2": 4, "table3": 3, "table4": 2,
                                                         "table5": 2, "table6": 4}
    assert [r["measured"]["tokens_per_s_per_device"] for r in by_table["table1"]] == [5762, 6667, 8532]
    assert [r["measured"]["tokens_per_s_per_device"] for r in by_table["table3"]] == [5605, 6514, 8380]
    assert [r["measured"]["tokens_per_s_per_device"] for r in by_table["table4"]] == [829, 876]
    assert [r["measured"]["tokens_per_s_per_device"] for r in by_table["table5"]] == [100, 128]
    for t, per_gpu_seq in (("table2", [3890, 2540, 1071, 548]), ("table6", [76, 47, 31, 16])):
        rows = by_table[t]
        assert [r["measured"]["tokens_per_s_per_device"] for r in rows] == per_gpu_seq
        assert [r["seq_len"] for r in rows] == [32768, 65536, 131072, 262144]
        assert all(r["parallel"]["dp"] * r["parallel"]["cp"] == 8 for r in rows)  # FSDP x CP fills 8 (x TP8 PP8)
    # the sequence length of tables 4 and 5 is only the config default: validate skips them
    assert all("seq_len" in r["unverified"] for t in ("table4", "table5") for r in by_table[t])
    # torchtitan's get_num_flop_per_token: 6 N (input embedding excluded) + 12 l h q t
    m = by_table["table1"][0]["model"]
    h, L, kv = m["hidden"], m["layers"], m["kv_heads"] * (m["hidden"] // m["heads"])
    n = L * (2 * h * h + 2 * h * kv + 3 * h * m["ffn"] + 2 * h) + h + m["vocab"] * h
    flop_per_token = 6 * n + 12 * L * h * m["seq"]
    mfu = {r["name"]: r["measured"]["tokens_per_s_per_device"] * flop_per_token / H100_PEAK
           for t in ("table1", "table3") for r in by_table[t] if r["precision"] != "fp8"}
    assert len(mfu) == 4 and all(0.325 <= v < 0.395 for v in mfu.values()), mfu
    assert (round(100 * min(mfu.values())), round(100 * max(mfu.values()))) == (33, 39)


def test_nemo_24_07_table():
    """NeMo 24.07 FP8 pre-training table (DGX-H100): each row's TFLOP/s over tokens/s is Megatron's
    FLOPs per token within 1.5%, the '10T tokens, 1K GPUs' days are 1e13 / (tokens/s/GPU x 1024 x
    86400) rounded, the layout multiplies out and the virtual stages split the layers evenly."""
    from costmodel.arch import load_model

    recs = _load("nemo-24.07.jsonl")
    assert len(recs) == 12
    for r in recs:
        m, p, meas = r["model"], r["parallel"], r["measured"]
        per_token = meas["tflops_per_device"] * 1e12 / meas["tokens_per_s_per_device"]
        assert per_token == pytest.approx(_megatron_flops_per_token(m, r["seq_len"]), rel=0.015), r["name"]
        assert round(1e13 / (meas["tokens_per_s_per_device"] * 1024 * 86400)) == meas["days_10t_tokens_1k_gpus"], r["name"]
        assert r["global_batch"] % (r["micro_batch"] * p["dp"]) == 0
        if p["interleave"]:
            assert m["layers"] % (p["pp"] * p["interleave"]) == 0, r["name"]
        assert m["vocab"] % (128 * p["tp"]) == 0 and m["vocab"] - m["vocab_unpadded"] < 128 * p["tp"]
        if m.get("preset"):
            pm = load_model(m["preset"])
            assert (pm.layers, pm.hidden, pm.heads, pm.kv_heads, pm.ffn, pm.vocab) == (
                m["layers"], m["hidden"], m["heads"], m["kv_heads"], m["ffn"], m["vocab_unpadded"]), r["name"]
    gpt175 = [r for r in recs if "/gpt3-175b/" in r["name"]]
    assert [(r["devices"], r["measured"]["tflops_per_device"]) for r in gpt175] == [(128, 771), (512, 888)]


def test_megatron_bridge_25_11_table():
    """Megatron-Bridge 25.11 FP8-CS pre-training rows (DGX-H100): step_seconds is the global batch's
    tokens over tokens/s/GPU x GPUs; the table's Model TFLOP/s over tokens/s is Megatron's FLOPs per
    token with causal attention counted at half (the seq / h term halved) within 0.5%; vocabularies
    padded to 128 x TP; the layout multiplies out to the GPUs. Predicted (held out, gradients reduced
    in bf16 as the recipes do): Llama 3 70B on 64 GPUs +0.4%, Llama 3.1 405B on 1,024 GPUs -11.0%."""
    from costmodel.validate import validate_file

    recs = _load("megatron-bridge-25.11.jsonl")
    assert [(r["devices"], r["measured"]["tokens_per_s_per_device"]) for r in recs] == [(64, 1602), (1024, 292)]
    for r in recs:
        m, p, meas = r["model"], r["parallel"], r["measured"]
        assert meas["step_seconds"] == pytest.approx(
            r["global_batch"] * r["seq_len"] / (meas["tokens_per_s_per_device"] * r["devices"]), rel=1e-12)
        L, h, a, g, f, V, s_ = m["layers"], m["hidden"], m["heads"], m["kv_heads"], m["ffn"], m["vocab"], r["seq_len"]
        per_token = 12 * L * h * h * ((1 + g / a + s_ / h / 2) + f / h * 1.5) + 6 * h * V
        assert meas["model_tflops_per_device_causal"] * 1e12 / meas["tokens_per_s_per_device"] == pytest.approx(
            per_token, rel=0.005), r["name"]
        assert p["tp"] * p["pp"] * p["cp"] * p["dp"] == r["devices"]
        assert m["vocab"] % (128 * p["tp"]) == 0 and m["vocab"] - m["vocab_unpadded"] < 128 * p["tp"]
    errs = {c.name.split("/")[1]: c.rel_error for c in validate_file(DIR / "megatron-bridge-25.11.jsonl").cases}
    assert abs(errs["llama3-70b"]) < 0.05 and abs(errs["llama3.1-405b"]) < 0.12, errs


def test_megatron_bridge_25_09_moe_table():
    """Megatron-Bridge 25.09's DGX-H100 MoE rows (force-balanced experts): step_seconds from the
    table's tokens/s/GPU; the layouts multiply out to the GPUs with the experts folded over etp 1.
    Held out: DeepSeek-V3 on 1,024 GPUs with DeepEP (the recipe's dispatcher on H100) +3.8% (+42%
    when every expert's copy crosses the network), Qwen3-235B-A22B on 256 GPUs -6.7%, Qwen3-30B-A3B
    on 16 GPUs -10.2%."""
    from costmodel.validate import validate_file

    recs = _load("megatron-bridge-25.09.jsonl")
    assert [(r["devices"], r["measured"]["tokens_per_s_per_device"]) for r in recs] == [(1024, 1297), (256, 1204), (16, 10494)]
    for r in recs:
        p, meas = r["parallel"], r["measured"]
        assert meas["step_seconds"] == pytest.approx(
            r["global_batch"] * r["seq_len"] / (meas["tokens_per_s_per_device"] * r["devices"]), rel=1e-12)
        assert p["tp"] * p["pp"] * p["cp"] * p["dp"] == r["devices"] and (p["tp"] * p["dp"]) % p["ep"] == 0
    errs = {c.name.split("/")[1]: c.rel_error for c in validate_file(DIR / "megatron-bridge-25.09.jsonl").cases}
    assert abs(errs["deepseek-v3"]) < 0.06 and abs(errs["qwen3-235b-a22b"]) < 0.10 and abs(errs["qwen3-30b-a3b"]) < 0.12, errs


def test_h100_files_validate_and_skip_what_they_should():
    """Every H100 record is predicted except those whose inputs are inferred: the Megatron-LM
    strong-scaling end points (layout) and TorchTitan tables 4-5 (sequence length)."""
    from costmodel.validate import validate_file

    expect = {"megatron-lm-h100-2024.jsonl": (18, 2), "torchtitan-2024.jsonl": (14, 4), "nemo-24.07.jsonl": (12, 0)}
    for name, (n_cases, n_skipped) in expect.items():
        rep = validate_file(DIR / name)
        assert (len(rep.cases), len(rep.skipped)) == (n_cases, n_skipped), name


def test_nemo_automodel_llama3_70b_fsdp_row():
    """NeMo AutoModel's BF16 Llama 3 70B pre-training row on 64 H100s (FSDP2 over dp 32 x cp 2, full
    activation checkpointing, compiled): 18.90 s a step is 128 x 8192 / 64 / 18.90 = 866.77 tokens/s
    per GPU, as the table prints (the step derived from the tokens/s, 18.902 s). Held out (nothing
    is fitted on it): timed as torchtitan's compiled profile the step is 18.2 s, 3.6% fast. The FSDP
    gathers hide behind the recomputed layers, but while they run their NCCL kernels hold SMs the
    compute beside them loses (comm.overlap_interference_s): without that the step was 15.5 s, 18%
    fast."""
    from costmodel.validate import validate_file

    (r,) = _load("nemo-automodel-2025.jsonl")
    p, meas = r["parallel"], r["measured"]
    assert p["dp"] * p["cp"] * p["tp"] * p["pp"] == r["devices"] == 64
    assert 128 * 8192 / 64 / meas["step_seconds"] == pytest.approx(meas["tokens_per_s_per_device"], rel=1e-9)
    assert meas["step_seconds"] == pytest.approx(18.90, abs=0.005)  # the table's step time, rounded
    (case,) = validate_file(DIR / "nemo-automodel-2025.jsonl").cases
    assert -0.10 < case.rel_error < 0.0, case.rel_error


def test_megatron_bridge_25_11_b200_rows():
    """Megatron-Bridge 25.11's DGX-B200 table (FP8-CS): Llama 3 8B on 8 GPUs at 30,624 tokens/s per
    GPU and Llama 3.1 405B on 128 at 661, the layouts of the 25.11 workload configs (8B: dp 8,
    micro-batch 2; 405B: tp 4 pp 8 vp 8 cp 2, dp 2). Timed without a B200 calibration (datasheet
    defaults). With the defaults' attention backward at the leaf-autograd rate (0.14 of peak) both
    were slow, the attention-heavy 8B (8,192 tokens, no tp) 34%; at the kernels' rate (0.24,
    test_default_attention_is_the_h100_kernels_rate) both are within 10%."""
    from costmodel.validate import validate_file

    recs = _load("megatron-bridge-25.11-b200.jsonl")
    assert [(r["devices"], r["measured"]["tokens_per_s_per_device"]) for r in recs] == [(8, 30624), (128, 661)]
    for r in recs:
        p, meas = r["parallel"], r["measured"]
        assert p["tp"] * p["pp"] * p["cp"] * p["dp"] == r["devices"]
        assert meas["step_seconds"] == pytest.approx(r["global_batch"] * 8192 / (meas["tokens_per_s_per_device"] * r["devices"]))
    rep = validate_file(DIR / "megatron-bridge-25.11-b200.jsonl")
    assert rep.efficiency["b200"].startswith("datasheet defaults")
    errs = {c.name.split("/")[1]: c.rel_error for c in rep.cases}
    assert all(abs(e) < 0.10 for e in errs.values()), errs


def test_default_attention_is_the_h100_kernels_rate():
    """The datasheet defaults' flash-attention fractions are an H100's rates at b16 h16 s1024 d64:
    the public file's forward (257 of 989 TFLOP/s) and the shipped H100 calibration's forward +
    backward kernels at that shape, not the public file's forward + backward timed into leaf
    tensors (139 TFLOP/s, which adds the leaf copies and accumulations)."""
    from costmodel.roofline import DEFAULT_ATTENTION_FWD_BWD_FRACTION, DEFAULT_ATTENTION_FWD_FRACTION, efficiency_for
    from costmodel.specs import load_library

    h100 = load_library().device("h100-sxm")
    public = [json.loads(line) for line in (DIR.parent / "samples" / "h100-h200-public.jsonl").open()]
    truth = {r["op"]: r["tflops"] for r in public if r.get("op", "").startswith("sdpa") and
             (r.get("b"), r.get("h"), r.get("s"), r.get("d")) == (16, 16, 1024, 64) and r["hardware"] == "h100-sxm"}
    peak = h100.peak("bf16") / 1e12
    assert DEFAULT_ATTENTION_FWD_FRACTION == pytest.approx(truth["sdpa_fwd"] / peak, abs=0.005)
    kernels = efficiency_for(h100).attention_flops_per_s(16, 16, 1024, 64, True, True) / h100.peak("bf16")
    assert DEFAULT_ATTENTION_FWD_BWD_FRACTION == pytest.approx(kernels, abs=0.005)
    assert truth["sdpa_fwd_bwd"] / peak < DEFAULT_ATTENTION_FWD_BWD_FRACTION - 0.08  # the leaf-timed rate is lower


def test_megatron_bridge_25_11_gb200_row():
    """Megatron-Bridge 25.11's DGX-GB200 table, Llama 3 8B on 8 GPUs (FP8-CS) at 31,508 tokens/s per
    GPU: the recipe of the DGX-B200 row (dp 8, micro-batch 2, 8,192 tokens, whole-iteration CUDA
    graph), on two compute trays of a GB200 NVL72 rack. Held out (added after the datasheet
    defaults were last changed; no GB200 calibration): within 10%."""
    from costmodel.validate import validate_file

    (r,) = _load("megatron-bridge-25.11-gb200.jsonl")
    assert (r["hardware"], r["node"], r["devices"], r["micro_batch"], r["global_batch"]) == ("gb200", "gb200-nvl72", 8, 2, 128)
    assert r["measured"]["step_seconds"] == pytest.approx(128 * 8192 / (31508 * 8))
    rep = validate_file(DIR / "megatron-bridge-25.11-gb200.jsonl")
    assert rep.efficiency["gb200"].startswith("datasheet defaults")
    (case,) = rep.cases
    assert abs(case.rel_error) < 0.10, case.rel_error


def test_torchtitan_trainy_h200_rows():
    """Trainy's torchtitan Llama 3.1 8B on 4 and 8 nodes of 8 H200 (June 2025): FSDP over every GPU,
    local batch 2, 8,192 tokens, compiled, Float8, op-level selective checkpointing, at 10,938 and
    10,753 tokens/s per GPU. Held out on the calibrated H200 with torchtitan-compile: 17-18% fast
    (fast as NeMo AutoModel's FSDP2 row was, test_nemo_automodel_llama3_70b_fsdp_row), within 25%."""
    from costmodel.validate import validate_file

    recs = _load("torchtitan-trainy-h200-2025.jsonl")
    assert [(r["devices"], r["global_batch"], r["measured"]["tokens_per_s_per_device"]) for r in recs] == [
        (32, 64, 10938), (64, 128, 10753)]
    for r in recs:
        assert r["measured"]["step_seconds"] == pytest.approx(r["global_batch"] * 8192 / (
            r["measured"]["tokens_per_s_per_device"] * r["devices"]))
    rep = validate_file(DIR / "torchtitan-trainy-h200-2025.jsonl")
    assert rep.efficiency["h200-sxm"].startswith("calibrated")
    assert all(-0.25 < c.rel_error < -0.10 for c in rep.cases), [c.rel_error for c in rep.cases]
