"""CPUs as devices: `train`, `infer` and `serve` on `cpu-*` specs, AMX / AVX-512 rates, the
memory-bound decode, and the host's numpy calibration against steps measured on this machine."""
import json
from pathlib import Path

import pytest

from costmodel import plan
from costmodel.arch import load_model
from costmodel.cli.app import main
from costmodel.inference import decode_step
from costmodel.specs import load_library
from costmodel.workload import InferJob

ROOT = Path(__file__).resolve().parents[1]
# two rounds of (numpy calibration, steps) on one core; records.jsonl / calibration.yaml keep each
# case's least-disturbed round (combine.py)
RUN = ROOT / "data" / "measurements" / "cpu" / "2026-12-07b-host-train-decode"


def test_train_on_a_cpu_uses_amx_for_bf16_and_avx512_for_fp32():
    kw = dict(micro_batch=4, seq_len=512, framework="megatron")
    bf16 = plan.train("llama-350m", "cpu-xeon-8480", precision="bf16", **kw)
    fp32 = plan.train("llama-350m", "cpu-xeon-8480", precision="fp32", **kw)
    xeon = load_library().get("cpu-xeon-8480")
    # MFU is against the peak of the dtype the GEMMs run in: AMX bf16 (114.7 T), AVX-512 fp32 (7.17 T)
    assert bf16.mfu == pytest.approx(bf16.model_flops_per_step / bf16.step.total_s / xeon.peak_flops.bf16)
    assert fp32.mfu == pytest.approx(fp32.model_flops_per_step / fp32.step.total_s / xeon.peak_flops.fp32)
    # the matmuls of the same step: at the datasheet-default efficiency the ratio of the peaks, 16x
    assert fp32.step.compute_s / bf16.step.compute_s == pytest.approx(114.7 / 7.17, rel=0.1)
    assert bf16.fits and fp32.fits


def test_decode_on_a_cpu_is_memory_bound():
    """llama3.1-8b in bf16 on one Xeon 8480 socket: every step reads 16.06 GB of weights over 8
    channels of DDR5-4800 (307.2 GB/s): at least 52.3 ms a token, and no more than that over the
    datasheet-default streaming efficiency (0.9 of the bandwidth, roofline._DefaultEfficiency)."""
    m = load_model("llama3.1-8b")
    spec = load_library().device("cpu-xeon-8480")
    d = decode_step(m, spec, InferJob(batch=1), context=1024)
    floor = m.params * 2.0 / 307.2e9
    assert floor == pytest.approx(52.3e-3, rel=0.01)
    assert floor < d.step_s < floor / 0.9 * 1.1
    assert d.bound.startswith("weights bandwidth")
    assert d.host_s == 0.0


def test_infer_and_serve_answer_on_a_cpu(capsys):
    est = plan.infer("llama3.1-8b", "cpu-xeon-8480", batch=1, prompt_len=512, gen_len=64)
    assert est.fits and est.decode_bound.startswith("weights bandwidth")
    with pytest.raises(SystemExit) as exc:
        main(["serve", "llama3.1-8b", "-H", "cpu-xeon-8480", "--batch", "1", "--input-len", "128", "--output-len", "64",
              "--json"])
    assert exc.value.code == 0
    d = json.loads(capsys.readouterr().out)
    # the serving simulation's time between tokens is the decode step of the same device model
    itl = d["itl_s"]["mean"]
    assert itl == pytest.approx(est.tpot_s, rel=0.15)
    # and by hand: one request reads its 8.03e9 bf16 weights from DRAM every token, 16.06 GB at
    # 8 x DDR5-4800 = 307.2 GB/s is 52.3 ms; at the default 0.9 of the bandwidth 58.1 ms
    floor = 8.03e9 * 2 / 307.2e9
    assert floor < itl < floor / 0.9 * 1.1


def test_a_numpy_host_overlay_applies_to_a_cpu_spec(tmp_path):
    """`calibrate --backend numpy` without --hardware writes device 'cpu-host'; --calibration takes
    it for the host's CPU spec (and a GPU still refuses it)."""
    src = (RUN / "calibration.yaml").read_text()
    assert "device: cpu-epyc-9654" in src
    f = tmp_path / "host.yaml"
    f.write_text(src.replace("device: cpu-epyc-9654", "device: cpu-host"))
    a = plan.infer("llama-110m", "cpu-epyc-9654", weight_dtype="fp32", calibration=str(RUN / "calibration.yaml"))
    b = plan.infer("llama-110m", "cpu-epyc-9654", weight_dtype="fp32", calibration=str(f))
    assert a.tpot_s == pytest.approx(b.tpot_s)
    from costmodel.errors import InputError

    with pytest.raises(InputError):
        plan.infer("llama-110m", "h100-sxm", calibration=str(f))


def test_measured_cpu_steps_within_25_percent_with_the_host_calibration():
    """The training step (PyTorch, fp32) and decode step (numpy, fp32) of a 35.7M-parameter
    Llama-style model measured on this project's host, one core (data/measurements/cpu/), predicted
    with the numpy calibration taken on the same core in the same minutes."""
    from costmodel.validate import validate_file

    rep = validate_file(RUN / "records.jsonl", calibration=str(RUN / "calibration.yaml"))
    got = sorted((c.kind, c.metric) for c in rep.cases)
    assert got == [("decode_step", "step_seconds"), ("train", "step_seconds")]
    for c in rep.cases:
        assert abs(c.rel_error) < 0.25, (c.name, c.predicted, c.measured)


def test_decode_matvec_benchmarks_overflow_the_last_level_cache():
    """A decode streams every weight matrix from DRAM; the numpy bench's matrix-vector shapes rotate
    enough distinct sets to overflow the last-level cache three times (16 sets of a 1 MiB matrix
    would sit in a 32 MiB cache)."""
    from costmodel.bench import make_bench

    bench = make_bench("numpy", quick=True)
    bench.llc = 32 * 2**20  # this project's host
    # 3 x 32 MiB over (512 + 512 x 512 + 512) x 4 bytes = 95.6: 96 sets; a 512 x 1536 one: 32
    assert bench.gemm_sets("gemm_llm", 1, 512, 512, "fp32") == 96
    assert bench.gemm_sets("gemm_llm", 1, 1536, 512, "fp32") == 32
    assert bench.gemm_sets("gemm_llm", 1, 512, 1536, "fp32") == 32
    # square GEMMs keep their 16 (compute-bound; their operands are re-read from cache anyway)
    assert bench.gemm_sets("gemm", 256, 256, 256, "fp32") == 16


def test_bench_clock_is_checked(tmp_path, capsys):
    """--clock takes wall or thread; a bad value is one line and exit 2, before anything is measured."""
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--backend", "numpy", "--quick", "--clock", "cpu", "--out", str(tmp_path / "k.jsonl")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--clock 'cpu': expected wall or thread" in err and "Traceback" not in err
    assert not (tmp_path / "k.jsonl").exists()


def test_thread_clock_leaves_out_time_the_thread_did_not_run():
    """The thread clock counts the calling thread's CPU time: a 20 ms sleep (the core given to other
    processes) costs ~0 on it and >= 20 ms of wall time; the records say which clock timed them."""
    import time

    from costmodel.bench import make_bench
    from costmodel.bench.timing import time_host

    kw = dict(warmup=0, budget_s=0.0, min_reps=3, max_reps=3)
    assert time_host(lambda i: time.sleep(0.02), 1, **kw).median_s >= 0.02
    assert time_host(lambda i: time.sleep(0.02), 1, clock=time.thread_time, **kw).median_s < 0.005
    bench = make_bench("numpy", quick=True, clock="thread")
    case = next(c for c in bench.cases({"elementwise_add"}) if c.name == "elementwise_add 4 KiB")
    (rec,) = case.run()
    assert rec["clock"] == "thread" and rec["bytes"] == 3 * 4096 and rec["s"] > 0


def test_train_table_on_a_cpu_names_no_cuda_runtime(capsys):
    """A CPU step's memory table speaks of the CPU's runtime, not of CUDA or cuBLAS."""
    with pytest.raises(SystemExit) as exc:
        main(["train", "llama-350m", "-H", "cpu-xeon-8480", "--micro-batch", "2", "--seq-len", "512"])
    out = capsys.readouterr().out
    assert (exc.value.code or 0) == 0
    assert "CUDA" not in out and "cuBLAS" not in out and "BLAS workspaces" in out
