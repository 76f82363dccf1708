"""The serving scheduler (costmodel.serving), `validate` on serve records and `costmodel serve`."""
import json

import numpy as np
import pytest

from costmodel.errors import InputError
from costmodel.serving import simulate


class LinearCost:
    """A hand-checkable cost: an iteration takes 1 s + 0.1 s per scheduled token."""

    def iteration_s(self, n_tokens, n_logits, ctx_sum, attn_s, decode_only):
        return 1.0 + 0.1 * np.asarray(n_tokens, dtype=float)

    def attn(self, L):
        return 0.0


def test_three_requests_chunked_prefill_by_hand():
    # budget 6 tokens, prompts of 4, 3 tokens out each:
    # it1: r0 prefill 4 + r1 chunk 2 = 6 tokens, 1.6 s (r0's first token at 1.6)
    # it2: r0 decode 1 + r1 last 2 + r2 chunk 3 = 6, 1.6 s -> 3.2 (r1 first token)
    # it3: r0, r1 decode 2 + r2 last 1 = 3, 1.3 s -> 4.5 (r0 done, r2 first token)
    # it4: r1, r2 decode 2, 1.2 s -> 5.7 (r1 done); it5: r2 decode 1, 1.1 s -> 6.8
    r = simulate(LinearCost(), num_requests=3, input_len=4, output_len=3, max_num_seqs=8, token_budget=6,
                 kv_capacity_tokens=1000, block_tokens=1, load="max_load")
    assert np.allclose(r.first_token, [1.6, 3.2, 4.5])
    assert np.allclose(r.finish, [4.5, 5.7, 6.8])
    assert r.iterations == 5
    # time between tokens: r0 1.6, 1.3; r1 1.3, 1.2; r2 1.2, 1.1
    assert np.isclose((r.itl * r.itl_weight).sum() / r.itl_weight.sum(), 7.7 / 6)


def test_whole_prompts_only_by_hand():
    # TensorRT-LLM's default (chunked context off): a prompt is admitted only whole. Budget 6, prompts
    # of 4, 3 tokens out each:
    # it1: r0 prefill 4 (r1 does not fit the 2 left), 1.4 s -> 1.4 (r0's first token)
    # it2: r0 decode 1 + r1 prefill 4 = 5, 1.5 s -> 2.9 (r1 first token; r2 does not fit the 1 left)
    # it3: r0, r1 decode 2 + r2 prefill 4 = 6, 1.6 s -> 4.5 (r0 done, r2 first token)
    # it4: r1, r2 decode 2, 1.2 s -> 5.7 (r1 done); it5: r2 decode 1, 1.1 s -> 6.8
    r = simulate(LinearCost(), num_requests=3, input_len=4, output_len=3, max_num_seqs=8, token_budget=6,
                 kv_capacity_tokens=1000, block_tokens=1, load="max_load", chunked_prefill=False)
    assert np.allclose(r.first_token, [1.4, 2.9, 4.5])
    assert np.allclose(r.finish, [4.5, 5.7, 6.8])
    assert r.iterations == 5
    # a prompt longer than the whole budget still runs, alone, over as many iterations as it needs:
    # it1: r0's first 6 tokens (1.6 s), it2: its last 2 with r1's whole 4 (1.6 s) -> both first at 3.2
    r = simulate(LinearCost(), num_requests=2, input_len=[8, 4], output_len=2, max_num_seqs=8, token_budget=6,
                 kv_capacity_tokens=1000, block_tokens=1, load="max_load", chunked_prefill=False)
    assert np.allclose(r.first_token, [3.2, 3.2])


def test_static_batch_by_hand():
    # batch 2 of 4+3: one prefill of 8 tokens (1.8 s), then two decode steps of 2 tokens (1.2 s each)
    r = simulate(LinearCost(), num_requests=4, input_len=4, output_len=3, max_num_seqs=99, token_budget=2,
                 kv_capacity_tokens=1000, block_tokens=1, load="batch", value=2)
    assert np.allclose(r.first_token, [1.8, 1.8, 6.0, 6.0])
    assert np.allclose(r.finish, [4.2, 4.2, 8.4, 8.4])


def test_running_cap_and_kv_preemption():
    # max 2 running: the third request waits for a finished one
    r = simulate(LinearCost(), num_requests=3, input_len=4, output_len=3, max_num_seqs=2, token_budget=100,
                 kv_capacity_tokens=1000, block_tokens=1, load="max_load")
    # it1: 8 tokens (1.8); it2, it3: 2 decode tokens (1.2 each) -> 4.2 both done; it4: r2 prefill 4 (1.4) -> 5.6
    assert np.allclose(r.finish[:2], 4.2) and np.isclose(r.first_token[2], 5.6)
    # each sequence ends holding 4 + 2 positions (the last token is not cached): 11 cannot hold both
    r = simulate(LinearCost(), num_requests=2, input_len=4, output_len=3, max_num_seqs=8, token_budget=100,
                 kv_capacity_tokens=11, block_tokens=1, load="max_load")
    assert r.preemptions >= 1 and np.all(np.isfinite(r.finish))


def test_one_request_larger_than_the_cache_is_an_input_error():
    with pytest.raises(InputError):
        simulate(LinearCost(), num_requests=1, input_len=10, output_len=10, max_num_seqs=8, token_budget=100,
                 kv_capacity_tokens=16, block_tokens=1)


@pytest.fixture(scope="module")
def h100():
    from costmodel.arch import load_model
    from costmodel.specs import load_library

    return load_model("llama3.1-8b"), load_library().device("h100-sxm")


def test_closed_loop_obeys_littles_law(h100):
    from costmodel.serving import estimate_serve

    est = estimate_serve(*h100, input_len=512, output_len=128, load="concurrency", value=32, num_requests=640)
    # Little's law: requests in flight = throughput x time in system
    assert est.requests_per_s * est.e2e_s["mean"] == pytest.approx(32, rel=0.06)
    assert est.output_tokens_per_s == pytest.approx(est.requests_per_s * 128)
    assert est.ttft_s["p50"] <= est.ttft_s["p99"] and est.itl_s["p50"] <= est.itl_s["p99"]


def test_batch_one_matches_the_decode_step(h100):
    from costmodel.inference import decode_step
    from costmodel.serving import estimate_serve
    from costmodel.workload import InferJob

    model, spec = h100
    est = estimate_serve(model, spec, input_len=1000, output_len=101, load="batch", value=1)
    # one sequence decodes alone: every step is decode_step at batch 1 (graph size 1), its context
    # growing 1001..1100; the mean is within a hair of the step at the middle context
    mid = decode_step(model, spec, InferJob(batch=1, cuda_graph=True), 1050).step_s
    assert est.itl_s["mean"] == pytest.approx(mid, rel=0.01)
    # KV capacity: vLLM's 0.9 of 80 GiB less 15 GiB of weights, 8192 tokens of activations and the CUDA context
    per_tok = 2 * 32 * 8 * 128 * 2
    w = 8.03e9 * 2
    act = 8192 * (4096 * 12 + 14336 * 6)
    expect = (0.9 * 80 * 2**30 - w - act - 0.5 * 2**30) / per_tok
    assert est.kv_cache_tokens == pytest.approx(expect, rel=0.01)


def _serve_rec(**kw):
    rec = {"kind": "serve", "name": "t", "engine": "vllm", "hardware": "h100-sxm", "devices": 1, "parallel": {"tp": 1},
           "model": "llama3.1-8b", "weight_dtype": "bf16", "kv_dtype": "bf16", "input_len": 256, "output_len": 64,
           "concurrency": 4, "num_requests": 16,
           "measured": {"output_tokens_per_s": 500.0, "ttft_seconds": 0.05, "itl_seconds": 0.008, "e2e_seconds": 0.6}}
    rec.update(kw)
    return rec


def test_validate_reports_serve_metrics():
    from costmodel.validate import validate_records

    rep = validate_records([("f.jsonl:1", _serve_rec())])
    assert set(rep.summary) == {"serve.output_tokens_per_s", "serve.ttft_seconds", "serve.itl_seconds", "serve.e2e_seconds"}


@pytest.mark.parametrize("change, field", [({"concurrency": None, "burst": 3}, "load"),
                                           ({"max_load": True}, "load"),
                                           ({"input_len": None}, "input_len"),
                                           ({"concurrency": "many"}, "concurrency"),
                                           ({"ramp": "slow"}, "ramp"),
                                           ({"input_len_range": [900, 800]}, "input_len_range"),
                                           ({"output_len_range": [1, "2"]}, "output_len_range")])
def test_validate_serve_input_errors(change, field):
    from costmodel.validate import validate_records

    with pytest.raises(InputError) as e:
        validate_records([("f.jsonl:7", _serve_rec(**change))])
    assert e.value.file == "f.jsonl:7" and e.value.field == field and "\n" not in str(e.value)


def test_serve_cli(capsys):
    from typer.testing import CliRunner

    from costmodel.cli.app import app

    r = CliRunner().invoke(app, ["serve", "llama3.1-8b", "--request-rate", "4", "--num-requests", "50",
                                 "--input-len", "256", "--output-len", "32", "--engine", "sglang", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["engine"] == "sglang" and d["num_requests"] == 50 and d["itl_s"]["p99"] > 0
    r = CliRunner().invoke(app, ["serve", "llama3.1-8b", "--max-load", "--batch", "2"])
    assert r.exit_code != 0
    r = CliRunner().invoke(app, ["serve", "llama3.1-8b", "--concurrency", "4", "--num-requests", "20",
                                 "--input-len-range", "100:300", "--output-len-range", "8:24", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["input_len_range"] == [100, 300] and d["input_len"] == 200 and d["output_len"] == 16
    from costmodel.cli.app import main

    for bad in ("100", "a:b", "300:100", "0:5"):
        with pytest.raises(SystemExit) as exc:
            main(["serve", "llama3.1-8b", "--max-load", "--input-len-range", bad])
        assert exc.value.code == 2 and "field 'input-len-range'" in capsys.readouterr().err
    # an unknown model is the error named first, before a missing load
    with pytest.raises(SystemExit) as exc:
        main(["serve", "no-such-model"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "field 'model'" in err and len(err.strip().splitlines()) == 1


def test_weight_only_quantized_gemm_reads_packed_bytes():
    from costmodel.roofline import DEQUANT_OVERHEAD, efficiency_for, gemm_op
    from costmodel.specs import load_library

    spec = load_library().device("h100-sxm")
    eff = efficiency_for(spec)
    k, n = 4096, 28672
    t16 = gemm_op(eff, "mlp_in", 1, k, n, elem_bytes=2.0, graph=True).time_s
    rate = eff.mem_bytes_per_s(2.0 * (k + k * n + n))
    for wb in (1.0, 0.5):
        # hand arithmetic: the bf16 kernel less (2 - wb) bytes per weight at the streaming rate, plus
        # 3% of the packed read for dequantization
        expect = t16 - (2.0 - wb) * k * n / rate + DEQUANT_OVERHEAD * wb * k * n / rate
        assert gemm_op(eff, "mlp_in", 1, k, n, elem_bytes=wb, graph=True).time_s == pytest.approx(expect, rel=1e-9)
    # memory-bound decode speeds up with the bytes
    from costmodel.plan import infer

    t = {d: infer("llama3-8b", "h100-sxm", batch=1, weight_dtype=d).tpot_s for d in ("bf16", "int8", "int4")}
    assert t["int4"] < t["int8"] < t["bf16"] and t["bf16"] / t["int8"] > 1.5


def test_custom_allreduce_by_hand_and_nccl_elsewhere():
    from costmodel.arch import load_model
    from costmodel.comm_bridge import Links
    from costmodel.inference import tp_allreduce_s
    from costmodel.roofline import efficiency_for
    from costmodel.serving import load_engine
    from costmodel.specs import load_library

    lib = load_library()
    model = load_model("llama3.1-70b")
    spec = lib.device("h100-sxm")
    eff = efficiency_for(spec)
    links = Links.from_specs(spec, None, eff)
    trt = load_engine("tensorrt-llm", spec, 2).custom_allreduce
    # one decode token at TP2: 8192 x 2 bytes per call; tensorrt-llm.yaml's tp 2 row is
    # 4.0 us + bytes / 66 GB/s; 2 calls per layer, 80 layers
    per_call = 4.0e-6 + 16384 / 6.6e10
    assert tp_allreduce_s(model, links, 2, 1, trt) == pytest.approx(160 * per_call, rel=1e-9)
    nccl = tp_allreduce_s(model, links, 2, 1)
    assert nccl > 3 * tp_allreduce_s(model, links, 2, 1, trt)
    # a prefill chunk of 8192 tokens (128 MiB a call) is past the kernel's 8 MiB: NCCL
    assert tp_allreduce_s(model, links, 2, 8192, trt) == pytest.approx(tp_allreduce_s(model, links, 2, 8192))
    # four PCIe H100s (NVLink bridges join pairs only): NCCL
    pcie = lib.device("h100-pcie")
    lp = Links.from_specs(pcie, None, efficiency_for(pcie))
    assert tp_allreduce_s(model, lp, 4, 1, trt) == pytest.approx(tp_allreduce_s(model, lp, 4, 1))


def _published(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "data" / "published" / "serving-public.jsonl"
    return next(r for r in map(json.loads, path.read_text().splitlines()) if r["name"] == name)


def test_tp2_batch1_time_between_tokens_against_nim():
    # NVIDIA NIM 1.8.0 (TensorRT-LLM), Llama 3.3 70B fp8 on 2 x H100, one user: 18.58 ms published
    from costmodel.validate import validate_records

    rec = _published("nim-1.8.0/llama-3.3-70b-instruct/tp2/1000-1000/c1")
    rep = validate_records([("serving-public.jsonl", rec)])
    itl = next(c for c in rep.cases if c.metric == "itl_seconds")
    assert itl.measured == pytest.approx(0.01867)
    assert abs(itl.rel_error) < 0.15


def test_fp8_w8a8_gemm_bytes_and_math():
    from costmodel.roofline import efficiency_for, gemm_op
    from costmodel.specs import load_library

    spec = load_library().device("h100-sxm")
    eff = efficiency_for(spec)
    k, n = 8192, 28672
    # one token: memory-bound; fp8 reads half the weight bytes: no faster than the bf16 kernel less
    # the streaming time of the k*n + k bytes it does not read (no dequantization: scales sit in the
    # epilogue), and the calibrated fp8 kernel is within 3% of that
    t16 = gemm_op(eff, "mlp_in", 1, k, n, graph=True).time_s
    rate = eff.mem_bytes_per_s(2.0 * (k + k * n + n))
    floor = t16 - (k * n + k) / rate
    t8 = gemm_op(eff, "mlp_in", 1, k, n, "fp8", elem_bytes=1.0, graph=True).time_s
    assert floor <= t8 < 1.03 * floor
    assert 1.8 < t16 / t8 < 2.0
    # 8192 tokens: compute-bound at the calibrated fp8 kernel's rate, well under bf16's
    big16 = gemm_op(eff, "mlp_in", 8192, k, n, graph=True).time_s
    big8 = gemm_op(eff, "mlp_in", 8192, k, n, "fp8", elem_bytes=1.0, graph=True).time_s
    assert big8 == pytest.approx(float(eff.gemm.kernel_s(8192, n, k, "fp8")) - eff.gemm.dtypes["fp8"].timing.kernel_min_s
                                 + __import__("costmodel.roofline", fromlist=["x"]).GRAPH_GEMM_FIXED_S, rel=1e-9)
    assert 1.5 < big16 / big8 < 2.0


def test_expected_active_experts_by_hand():
    from costmodel.inference import expected_active_experts

    assert expected_active_experts(256, 8, 1) == pytest.approx(8.0)
    # 32 tokens: each misses an expert with probability 31/32
    assert expected_active_experts(256, 8, 32) == pytest.approx(256 * (1 - (31 / 32) ** 32))  # 163.3
    assert expected_active_experts(8, 2, 1000) == pytest.approx(8.0)


def test_deepseek_v3_decode_on_8_h200_reads_the_active_experts():
    # the issue's case: 32 sequences, TP8, fp8 weights. Per device and MoE layer the activated experts'
    # weights are 163.3 x 3 x 7168 x (2048 / 8) bytes; 58 MoE layers at 4.8 TB/s take 10.9 ms, a floor.
    # SGLang's published TPOT at 32 users (InferenceX #870, prefill stalls included) is 25.6 ms.
    from costmodel.plan import infer

    floor = 256 * (1 - (31 / 32) ** 32) * 3 * 7168 * 256 * 58 / 4.8e12
    assert floor == pytest.approx(10.9e-3, rel=0.01)
    est = infer("deepseek-v3", "h200-sxm", tp=8, batch=32, weight_dtype="fp8", prompt_len=1024, gen_len=1024)
    assert floor < est.tpot_s < 1.2 * 25.6e-3
    rep_cases = []
    from costmodel.validate import validate_records

    for c in (8, 16, 32, 64):
        rec = _published(f"inferencex-870/deepseek-r1-0528/sglang-0.5.7/tp8/1024-1024/c{c}")
        rep_cases += validate_records([("serving-public.jsonl", rec)]).cases
    itl = [c.rel_error for c in rep_cases if c.metric == "itl_seconds"]
    assert len(itl) == 4 and max(map(abs, itl)) < 0.2


def test_closed_loop_ramps_burst_and_steady():
    # burst: every client starts at t=0 (bench_serving); steady: they start out of phase, spread over
    # one request's lifetime, and the statistics leave the ramp out
    from costmodel.serving import simulate

    r = simulate(LinearCost(), num_requests=9, input_len=4, output_len=3, max_num_seqs=8, token_budget=100,
                 kv_capacity_tokens=1000, block_tokens=1, load="concurrency", value=3, ramp="burst")
    assert np.all(r.arrival[:3] == 0.0)
    r = simulate(LinearCost(), num_requests=9, input_len=4, output_len=3, max_num_seqs=8, token_budget=100,
                 kv_capacity_tokens=1000, block_tokens=1, load="concurrency", value=3, ramp="steady")
    # lifetime estimate: a 4-token prefill iteration (1.4 s) + 3 decode steps of 3 tokens (1.3 s each) = 5.3 s
    assert np.allclose(r.arrival[:3], [0.0, 5.3 / 3, 2 * 5.3 / 3])
    assert np.all(np.diff(r.arrival) >= 0) and np.all(np.isfinite(r.finish))


def test_intake_iterations_delay_a_busy_engines_admission_by_hand():
    # two steady clients, prompts of 4, 10 tokens out: client 1 starts at half of one lifetime
    # (1.4 s prefill + 10 decode steps of 2 tokens at 1.2 s = 13.4 s), t = 6.7 s. Request 0: prefill
    # [0, 1.4], then decode iterations of 1 token, 1.1 s each, ending 2.5, 3.6, 4.7, 5.8, 6.9, 8.0, 9.1.
    # No intake lag: request 1 (arrived during the iteration ending 6.9) prefills with r0's decode
    # in [6.9, 8.4] (5 tokens, 1.5 s): TTFT 1.7 s. Two iterations of lag: it waits for the
    # iterations ending 8.0 and 9.1 and prefills in [9.1, 10.6]: TTFT 3.9 s.
    kw = dict(num_requests=2, input_len=4, output_len=10, max_num_seqs=8, token_budget=100,
              kv_capacity_tokens=1000, block_tokens=1, load="concurrency", value=2, ramp="steady")
    r0 = simulate(LinearCost(), **kw)
    r2 = simulate(LinearCost(), intake_iterations=2, **kw)
    assert np.isclose(r0.arrival[1], 6.7) and np.isclose(r2.arrival[1], 6.7)
    assert np.allclose(r0.first_token - r0.arrival, [1.4, 1.7])
    assert np.allclose(r2.first_token - r2.arrival, [1.4, 3.9])
    # an idle engine takes a request at once: a lone client's TTFT is its prefill either way
    one = dict(kw, num_requests=1, value=1)
    assert np.allclose(simulate(LinearCost(), intake_iterations=2, **one).first_token, [1.4])


def test_a_new_requests_chunk_must_fit_its_kv_blocks_by_hand():
    # vLLM V1's scheduler gives a waiting request its chunk only if the KV blocks for the whole chunk
    # are free (allocate_slots; no shrinking the chunk to the free blocks). Two 4+3 requests, a cache
    # of 7 tokens: r0 prefills (1.4 s) holding 4; its decode steps leave 2, then 1 free, too few for
    # r1's 4-token prompt, so r1 waits for r0 to finish (two decode steps of 1.1 s: 3.6), prefills
    # (1.4 s: first token at 5.0) and decodes twice (7.2). Nothing is preempted.
    r = simulate(LinearCost(), num_requests=2, input_len=4, output_len=3, max_num_seqs=8, token_budget=100,
                 kv_capacity_tokens=7, block_tokens=1, load="max_load")
    assert np.allclose(r.first_token, [1.4, 5.0]) and np.allclose(r.finish, [3.6, 7.2]) and r.preemptions == 0


def test_reserved_output_kv_admits_a_request_only_when_all_its_tokens_fit_by_hand():
    # TensorRT-LLM's GUARANTEED_NO_EVICT: admission holds blocks for prompt + output. Two 4+3 requests
    # (7 tokens each) in a 12-token cache: allocating as tokens come, both prompts fit at once (one
    # 8-token iteration, 1.8 s); reserved, r1 waits for r0 (the timeline of the test above)
    kw = dict(num_requests=2, input_len=4, output_len=3, max_num_seqs=8, token_budget=100, kv_capacity_tokens=12,
              block_tokens=1, load="max_load")
    assert np.allclose(simulate(LinearCost(), **kw).first_token, [1.8, 1.8])
    r = simulate(LinearCost(), reserve_output=True, **kw)
    assert np.allclose(r.first_token, [1.4, 5.0]) and np.allclose(r.finish, [3.6, 7.2]) and r.preemptions == 0


def test_paced_closed_loop_limits_by_hand():
    # requests of two clients sent as a Poisson stream (seeded: the cumulative sum of exponential
    # gaps of default_rng([seed, 2])), request k no earlier than request k - 2 finished.
    kw = dict(num_requests=6, input_len=4, output_len=3, max_num_seqs=8, token_budget=100, kv_capacity_tokens=1000,
              block_tokens=1, load="concurrency", value=2, seed=3)
    # a slow stream (0.01 / s: gaps of ~100 s, each request done in a few s): every request at its Poisson time
    pace = np.cumsum(np.random.default_rng([3, 2]).exponential(100.0, 6))
    r = simulate(LinearCost(), paced_rate=0.01, **kw)
    assert np.allclose(r.arrival, pace)
    # a fast stream: the first two go at ~0, then every request waits for a free client: request k
    # is sent when the (k - 1)-th request to finish does (k >= 2)
    fast = simulate(LinearCost(), paced_rate=1e12, **kw)
    assert np.all(fast.arrival[:2] < 1e-9) and np.allclose(fast.arrival[2:], np.sort(fast.finish)[:4])


def test_steady_closed_loop_obeys_littles_law(h100):
    # the paced steady state: requests/s x mean latency = the clients in flight (Little's law)
    from costmodel.serving import estimate_serve

    est = estimate_serve(*h100, input_len=1000, output_len=200, load="concurrency", value=32, num_requests=640)
    assert est.requests_per_s * est.e2e_s["mean"] == pytest.approx(32, rel=0.1)


def test_api_server_rounds_by_hand():
    # h = 0.5 s a request. Three requests at t=0 form one round: handed over together at 1.5. The
    # one at 1.0 arrived during that round: the next starts at 1.5 and ends at 2.0. The one at 5.0
    # finds the server free: 5.5. A server still busy until 2.0 (after) delays a request at 1.0 to 2.5.
    from costmodel.serving import api_server_ready

    assert np.allclose(api_server_ready(np.array([0.0, 0.0, 0.0, 1.0, 5.0]), 0.5), [1.5, 1.5, 1.5, 2.0, 5.5])
    assert np.allclose(api_server_ready(np.array([1.0]), 0.5, after=2.0), [2.5])
    assert np.allclose(api_server_ready(np.array([0.0, 3.0]), 0.0), [0.0, 3.0])


def test_api_server_time_delays_a_burst_and_a_lone_client_by_hand():
    # the three requests of test_three_requests_chunked_prefill_by_hand, queued at t=0 behind an API
    # server taking 0.5 s each: the engine sees all three at 1.5 and runs the same five iterations
    # from there (first tokens 1.6, 3.2, 4.5 after its start)
    kw = dict(num_requests=3, input_len=4, output_len=3, max_num_seqs=8, token_budget=6, kv_capacity_tokens=1000,
              block_tokens=1, load="max_load")
    r = simulate(LinearCost(), api_server_s=0.5, **kw)
    assert np.allclose(r.first_token, [3.1, 4.7, 6.0]) and np.allclose(r.arrival, 0.0)
    assert np.allclose(r.finish, [6.0, 7.2, 8.3])
    # one client, two requests of 4 + 3 tokens: each waits 0.5 s, prefills in 1.4 s (TTFT 1.9) and
    # decodes two 1.1 s steps; the second is sent when the first finishes (0.5 + 1.4 + 2.2 = 4.1)
    one = dict(kw, num_requests=2, token_budget=100, load="concurrency", value=1, ramp="burst")
    r = simulate(LinearCost(), api_server_s=0.5, **one)
    assert np.allclose(r.arrival, [0.0, 4.1]) and np.allclose(r.first_token - r.arrival, [1.9, 1.9])


def test_api_server_time_against_gpustacks_vllm_bursts():
    # GPUStack's vLLM v0.11.0 max-load runs (data/published/serving-public.jsonl): data/engines/vllm.yaml
    # api_server_s_per_request was fitted on these seven; without it their output tokens/s was 54%
    # and TTFT 33% off on average (128+4-token bursts of 1,000: +164% / +133% and -77% / -66%)
    from costmodel.validate import validate_records
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "data" / "published" / "serving-public.jsonl"
    recs = [r for r in map(json.loads, path.read_text().splitlines()) if r["name"].startswith("gpustack-perflab/")
            and r["engine"] == "vllm"]
    cases = validate_records([("serving-public.jsonl", r) for r in recs]).cases
    err = {m: [abs(c.rel_error) for c in cases if c.metric == m] for m in ("output_tokens_per_s", "ttft_seconds")}
    assert len(err["output_tokens_per_s"]) == 7 and len(err["ttft_seconds"]) == 7
    assert np.mean(err["output_tokens_per_s"]) < 0.15 and np.mean(err["ttft_seconds"]) < 0.15, err
    short = [c for c in cases if "/127-4/" in c.name or "/128-4/" in c.name]
    assert len(short) == 6 and all(abs(c.rel_error) < 0.2 for c in short if c.metric != "itl_seconds")


def test_requests_of_different_lengths_by_hand():
    # prompts of 4 and 2 tokens, 2 and 3 tokens out, all queued at t=0, budget 100:
    # it1: both prompts, 6 tokens, 1.6 s (both first tokens at 1.6); it2: 2 decode tokens, 1.2 s ->
    # 2.8 (r0 has its 2 tokens); it3: r1's last, 1.1 s -> 3.9
    r = simulate(LinearCost(), num_requests=2, input_len=[4, 2], output_len=[2, 3], max_num_seqs=8, token_budget=100,
                 kv_capacity_tokens=1000, block_tokens=1, load="max_load")
    assert np.allclose(r.first_token, [1.6, 1.6]) and np.allclose(r.finish, [2.8, 3.9]) and r.iterations == 3
    # time between tokens: r0 1.2; r1 1.2, 1.1
    assert np.isclose((r.itl * r.itl_weight).sum() / r.itl_weight.sum(), 3.5 / 3)


def test_length_ranges(h100):
    from costmodel.serving import estimate_serve

    kw = dict(input_len=512, output_len=64, load="max_load", num_requests=300)
    fixed = estimate_serve(*h100, **kw)
    # a range of one value is that fixed length
    same = estimate_serve(*h100, input_len_range=(512, 512), output_len_range=(64, 64), **kw)
    assert same.output_tokens_per_s == pytest.approx(fixed.output_tokens_per_s)
    assert same.ttft_s["mean"] == pytest.approx(fixed.ttft_s["mean"])
    est = estimate_serve(*h100, input_len_range=(256, 768), output_len_range=(32, 96), **kw)
    assert est.input_len == 512 and est.output_len == 64 and est.output_len_range == (32, 96)
    # every request counted: output tokens = the drawn lengths' sum (seeded draw, as estimate_serve's)
    rng = np.random.default_rng([0, 1])
    rng.integers(256, 769, 300)
    outs = rng.integers(32, 97, 300)
    assert est.output_tokens_per_s * est.duration_s == pytest.approx(outs.sum())
    with pytest.raises(InputError):
        estimate_serve(*h100, input_len_range=(0, 10), **kw)


def test_data_parallel_attention_by_hand():
    from costmodel.arch import load_model
    from costmodel.inference import decode_step
    from costmodel.serving import estimate_serve
    from costmodel.specs import load_library
    from costmodel.workload import InferJob

    m = load_model("deepseek-v3")
    spec = load_library().device("h200-sxm")
    # DeepSeek-V3's config.json: hidden 7168, 61 layers, 128 heads, q_lora_rank 1536, kv_lora_rank 512,
    # qk_nope_head_dim 128, qk_rope_head_dim 64, v_head_dim 128
    assert (m.hidden, m.layers, m.heads) == (7168, 61, 128)
    assert (m.mla.q_lora_rank, m.mla.kv_lora_rank, m.mla.qk_nope_head_dim, m.mla.qk_rope_head_dim,
            m.mla.v_head_dim) == (1536, 512, 128, 64, 128)
    # attention projections per layer: q_down h x 1536, q_up 1536 x 128 x 192, kv_down h x 576,
    # kv_up 512 x 128 x 256, o 128 x 128 x h
    attn = 61 * (7168 * 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 * 128 * 256 + 128 * 128 * 7168)
    kw = dict(tp=8, ep=8, input_len=1024, output_len=256, load="max_load", num_requests=64, engine="sglang",
              weight_dtype="fp8")
    tp8 = estimate_serve(m, spec, **kw)
    dpa = estimate_serve(m, spec, dp_attention=True, **kw)
    # the attention weights are whole on every device: 7/8 of them more, 1 byte each (fp8)
    assert dpa.weights_bytes_per_device - tp8.weights_bytes_per_device == pytest.approx(attn * 7 / 8)
    # the latent KV (576 values x 61 layers x 2 bytes a token) is whole on one device instead of on all 8
    per_tok = 576 * 61 * 2
    assert tp8.kv_cache_tokens == pytest.approx(tp8.kv_cache_bytes_per_device / per_tok, abs=16)
    assert dpa.kv_cache_tokens == pytest.approx(8 * dpa.kv_cache_bytes_per_device / per_tok, abs=16 * 8)
    # a decode step reads 1/8 of the cache per device (a large batch: bandwidth-bound either way)
    job = InferJob(batch=256, prompt_len=8192, gen_len=256, weight_dtype="fp8", cuda_graph=True)
    a = decode_step(m, spec, job, 8192, 8, ep=8)
    b = decode_step(m, spec, job, 8192, 8, ep=8, dp_attention=True)
    assert b.kv_s == pytest.approx(a.kv_s / 8, rel=0.05)
    with pytest.raises(InputError):
        estimate_serve(m, spec, **{**kw, "tp": 1, "ep": 1}, dp_attention=True)


def test_steady_closed_loop_ttft_is_about_one_iteration(h100):
    # one client in steady state waits for nobody: TTFT is its prefill, the same as a lone request's
    # (an offline static batch), plus the API server's time for its one request
    from costmodel.serving import estimate_serve, load_engine

    one = estimate_serve(*h100, input_len=512, output_len=64, load="batch", value=1)
    st = estimate_serve(*h100, input_len=512, output_len=64, load="concurrency", value=1, num_requests=10,
                        api_server_s_per_request=0.0)
    assert st.ttft_s["mean"] == pytest.approx(one.ttft_s["mean"], rel=0.02)
    h = load_engine("vllm", h100[1]).api_server_s_per_request
    assert h > 0
    st = estimate_serve(*h100, input_len=512, output_len=64, load="concurrency", value=1, num_requests=10)
    assert st.ttft_s["mean"] == pytest.approx(one.ttft_s["mean"] + h, rel=0.02)
    burst = estimate_serve(*h100, input_len=512, output_len=64, load="concurrency", value=64, num_requests=640,
                           ramp="burst")
    steady = estimate_serve(*h100, input_len=512, output_len=64, load="concurrency", value=64, num_requests=640)
    assert steady.ttft_s["mean"] < burst.ttft_s["mean"]


def test_expert_parallel_input_errors_and_effect():
    from costmodel.arch import load_model
    from costmodel.serving import estimate_serve
    from costmodel.specs import load_library

    m = load_model("mixtral-8x7b")
    spec = load_library().device("h100-sxm")
    with pytest.raises(InputError):
        estimate_serve(m, spec, tp=2, ep=4, input_len=128, output_len=16, load="batch", value=1)
    with pytest.raises(InputError):
        estimate_serve(load_model("llama3.1-8b"), spec, tp=2, ep=2, input_len=128, output_len=16, load="batch", value=1)
    # batch 1 routes to 2 of 8 experts: with ep 2 each device holds 4 whole experts and reads ~1 of them
    # (the same bytes as half of 2 experts under tp 2), so decode stays within a few percent
    a = estimate_serve(m, spec, tp=2, input_len=128, output_len=16, load="batch", value=1)
    b = estimate_serve(m, spec, tp=2, ep=2, input_len=128, output_len=16, load="batch", value=1)
    assert b.itl_s["mean"] == pytest.approx(a.itl_s["mean"], rel=0.05)


def test_moe_math_efficiency_slows_only_the_math(tmp_path):
    from costmodel.arch import load_model
    from costmodel.inference import moe_expert_gemms_s
    from costmodel.roofline import efficiency_for
    from costmodel.serving import _fraction
    from costmodel.specs import load_library

    m = load_model("deepseek-v3")
    eff = efficiency_for(load_library().device("h200-sxm"))
    # one token: weight streaming dominates, the math rate does not matter
    a = moe_expert_gemms_s(eff, m, 1, 8, 1, "fp8", 1.0, True)
    assert moe_expert_gemms_s(eff, m, 1, 8, 1, "fp8", 1.0, True, math_efficiency=0.3) == pytest.approx(a)
    # a prefill chunk of 8192 tokens is math-bound: 0.3 of the rate takes close to 1 / 0.3 as long
    big = moe_expert_gemms_s(eff, m, 8192, 8, 1, "fp8", 1.0, True)
    slow = moe_expert_gemms_s(eff, m, 8192, 8, 1, "fp8", 1.0, True, math_efficiency=0.3)
    assert 2.5 < slow / big < 1 / 0.3 + 0.01
    for bad in (0.0, 1.5, "x", True):
        with pytest.raises(InputError):
            _fraction(bad, tmp_path / "e.yaml", "moe_math_efficiency")


def test_cost_and_energy_per_million_tokens_by_hand(h100):
    from costmodel.serving import estimate_serve

    model, spec = h100
    est = estimate_serve(model, spec, input_len=256, output_len=64, load="concurrency", value=8, num_requests=80)
    seconds = 1e6 / est.output_tokens_per_s  # one device
    assert est.usd_per_million_output_tokens == pytest.approx(seconds / 3600 * spec.price_per_hour_usd)
    # TDP 700 W at the wall with PUE 1.58
    assert est.kwh_per_million_output_tokens == pytest.approx(700 * seconds * 1.58 / 3.6e6)


def test_speculative_decoding_by_hand(h100):
    from costmodel.serving import SpeculativeCost, estimate_serve, expected_tokens_per_step

    # Leviathan et al. eq. 1: 1 + a + a^2 + ... + a^k
    assert expected_tokens_per_step(0.85, 1) == pytest.approx(1.85)
    assert expected_tokens_per_step(0.5, 3) == pytest.approx(1 + 0.5 + 0.25 + 0.125)
    assert expected_tokens_per_step(1.0, 4) == 5.0
    # two sequences decode, one token drafted each by a draft costing 1 s + 0.1 s per row: the target
    # verifies 2 + 2 rows (1.4 s), the draft runs once over 2 rows (1.2 s)
    sc = SpeculativeCost(LinearCost(), 1, 32, draft=LinearCost())
    assert float(sc.iteration_s(2, 2, 100, 0.0, True)) == pytest.approx(2.6)
    # one user of an 8B model with an MTP-style draft: each step costs more than a plain decode step
    # but yields 1.85 tokens
    model, spec = h100
    base = estimate_serve(model, spec, input_len=512, output_len=257, load="batch", value=1)
    mtp = estimate_serve(model, spec, input_len=512, output_len=257, load="batch", value=1, spec_decode="mtp")
    assert base.itl_s["mean"] / 1.85 < mtp.itl_s["mean"] < base.itl_s["mean"]
    assert mtp.output_tokens_per_s > base.output_tokens_per_s
    with pytest.raises(InputError):
        estimate_serve(model, spec, input_len=512, output_len=64, load="batch", value=1, spec_decode="draft")


def test_prefix_cache_computes_only_the_uncached_prompt():
    from costmodel.serving import simulate

    # prompts of 10 with 6 cached: one request computes 4 tokens (1.4 s), then 2 decode steps
    r = simulate(LinearCost(), num_requests=1, input_len=10, output_len=3, max_num_seqs=8, token_budget=100,
                 kv_capacity_tokens=1000, block_tokens=1, load="max_load", cached_prefix=6)
    assert r.first_token[0] == pytest.approx(1.4) and r.finish[0] == pytest.approx(1.4 + 2 * 1.1)
    # a token budget of 3: the 4 uncached tokens take two chunks (1.3 s, then 1 + 1 decode-free: 1.1 s)
    r = simulate(LinearCost(), num_requests=1, input_len=10, output_len=1, max_num_seqs=8, token_budget=3,
                 kv_capacity_tokens=1000, block_tokens=1, load="max_load", cached_prefix=6)
    assert r.first_token[0] == pytest.approx(1.3 + 1.1)


def test_prefix_hit_rate_lowers_ttft(h100):
    from costmodel.serving import estimate_serve

    a = estimate_serve(*h100, input_len=4096, output_len=16, load="batch", value=1)
    b = estimate_serve(*h100, input_len=4096, output_len=16, load="batch", value=1, prefix_hit_rate=0.75)
    assert b.ttft_s["mean"] < 0.5 * a.ttft_s["mean"]
    with pytest.raises(InputError):
        estimate_serve(*h100, input_len=64, output_len=16, load="batch", value=1, prefix_hit_rate=1.0)


def test_pipeline_parallel_serving(h100):
    from costmodel.serving import estimate_serve

    model, spec = h100
    one = estimate_serve(model, spec, input_len=512, output_len=128, load="batch", value=1)
    pp2 = estimate_serve(model, spec, input_len=512, output_len=128, load="batch", value=1, pp=2)
    # one request: it passes both stages in turn, so a token takes the whole model's time plus one
    # activation send (8 KiB over NVLink, microseconds); the second stage's engine stays idle
    assert pp2.itl_s["mean"] == pytest.approx(one.itl_s["mean"], rel=0.03) and pp2.itl_s["mean"] > one.itl_s["mean"]
    assert pp2.output_tokens_per_s == pytest.approx(one.output_tokens_per_s, rel=0.03) and pp2.devices == 2
    # each device holds half the layers' weights and KV: the pipeline holds over twice the tokens
    assert pp2.kv_cache_tokens > 2 * one.kv_cache_tokens
    # max load: two micro-batches in flight, each with half the requests: about twice the throughput
    a = estimate_serve(model, spec, input_len=512, output_len=128, load="max_load", num_requests=400)
    b = estimate_serve(model, spec, input_len=512, output_len=128, load="max_load", num_requests=400, pp=2)
    assert 1.6 < b.output_tokens_per_s / a.output_tokens_per_s < 2.1
    with pytest.raises(InputError):
        estimate_serve(model, spec, input_len=512, output_len=128, load="batch", value=1, pp=64)


def test_static_batch_latency_against_vllm_nightly():
    # vLLM's nightly latency test on H200 (batch 8, 32 + 128 tokens, bf16): Llama 3 70B at TP4 2.078 s,
    # Llama 3.1 8B 0.833 s, Mixtral 8x7B at TP2 1.917 s per batch
    from costmodel.validate import validate_records

    for name, measured in (("llama70B_tp4", 2.07753), ("llama8B_tp1", 0.833421), ("mixtral8x7B_tp2", 1.91744)):
        rec = _published(f"vllm-nightly-9515/latency_{name}/h200")
        (case,) = validate_records([("serving-public.jsonl", rec)]).cases
        assert case.measured == pytest.approx(measured) and abs(case.rel_error) < 0.15, name


def test_host_bound_iteration_caps_streamed_tokens(h100):
    # an iteration takes max(GPU time, sampled rows x the host time per row): 100 rows at 76 us are
    # 7.6 ms of host work, above a 1 ms GPU iteration; 5 rows (0.38 ms) leave the GPU time
    from costmodel.serving import HostBoundCost, estimate_serve, load_engine

    class Flat:
        def attn(self, L):
            return 0.0

        def iteration_s(self, n_tokens, n_logits, ctx_sum, attn_s, decode_only):
            return np.full(np.shape(n_logits), 1e-3)

    c = HostBoundCost(Flat(), 76e-6)
    assert c.iteration_s(np.array([100, 5]), np.array([100, 5]), 0, 0.0, True) == pytest.approx([7.6e-3, 1e-3])
    h = load_engine("tensorrt-llm", h100[1]).host_s_per_sequence_step
    assert h > 0
    # every sequence gets at most one token an iteration and an iteration of n of them lasts at least
    # n x h, so output tokens/s <= 1 / h (up to the edges of the steady-state window, which counts the
    # requests sent in it); without the host time the GPU alone runs well past it
    kw = dict(input_len=200, output_len=200, load="concurrency", value=250, num_requests=1500, engine="tensorrt-llm",
              weight_dtype="fp8", kv_dtype="fp8")
    capped = estimate_serve(*h100, **kw)
    free = estimate_serve(*h100, **kw, host_s_per_sequence_step=0.0)
    assert capped.output_tokens_per_s <= 1.02 / h
    assert free.output_tokens_per_s > 1.3 / h
    # a static batch runs offline, without the server
    b = dict(input_len=200, output_len=200, load="batch", value=64, engine="tensorrt-llm")
    assert estimate_serve(*h100, **b).itl_s["mean"] == estimate_serve(*h100, **b, host_s_per_sequence_step=0.0).itl_s["mean"]
