"""Microbenchmark harness: numpy quick runs give valid SCHEMA.md records, the NVMe scratch file is
always removed, the package imports neither torch nor pydantic, GPU tests skip cleanly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from costmodel.bench import make_bench, run_cases
from costmodel.bench.nvme import BLOCK_BYTES, nvme_records
from costmodel.bench.records import busbw_factor, read_jsonl, sdpa_flops, validate_record
from costmodel.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def test_import_pulls_in_neither_torch_nor_pydantic():
    code = "import sys, costmodel.bench, costmodel.bench.runner; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pydantic')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_numpy_quick_subset_gives_valid_records(tmp_path):
    bench = make_bench("numpy", quick=True)
    cases = bench.cases()
    pick = [c for c in cases if c.name in ("gemm fp32 128x128x128", "gemm fp32 256x256x256")]
    pick += [c for c in cases if c.op in ("mem_copy", "mem_read", "elementwise_add")][:3]
    assert len(pick) == 5
    out = tmp_path / "k.jsonl"
    records, errors = run_cases(pick, progress=False, out=out)
    assert errors == []
    assert len(records) == 5
    assert read_jsonl(out) == records  # the JSONL holds exactly what was returned
    for r in records:
        assert validate_record(r) == [], r
        assert r["hardware"] == "cpu-host" and r["backend"] == "numpy"
    g = [r for r in records if r["op"] == "gemm"]
    for r in g:  # tflops is 2mnk / s, counted independently here
        assert r["tflops"] == pytest.approx(2 * r["m"] * r["n"] * r["k"] / r["s"] / 1e12, rel=1e-9)
    copy = next(r for r in records if r["op"] == "mem_copy")
    assert copy["gbps"] == pytest.approx(2 * copy["bytes"] / copy["s"] / 1e9, rel=1e-9)  # read + write
    # buffers are sized past the last-level cache, so this is DRAM: well under 1 TB/s on any host
    assert 0.1 < copy["gbps"] < 1000


def test_failing_case_is_reported_not_fatal():
    from costmodel.bench.timing import Case

    def boom():
        raise RuntimeError("kaput")

    ok = Case("ok", "mem_copy", lambda: [{"kind": "kernel", "op": "mem_copy", "bytes": 8, "s": 1.0, "gbps": 1e-8, "hardware": "x"}])
    recs, errs = run_cases([Case("bad", "gemm", boom), ok], progress=False)
    assert len(recs) == 1 and len(errs) == 1 and "kaput" in errs[0]


def test_record_helpers_match_published_conventions():
    # nccl-tests PERFORMANCE.md: all-reduce bus factor 2(n-1)/n, all-gather (n-1)/n
    assert busbw_factor("all_reduce", 8) == pytest.approx(1.75)
    assert busbw_factor("all_gather", 2) == pytest.approx(0.5)
    assert busbw_factor("send_recv", 2) == 1.0
    # SCHEMA.md's truth record: sdpa_fwd b16 h16 s1024 d64 at 257.52 TFLOP/s took 133.42 us
    f = sdpa_flops(16, 16, 1024, 64, causal=True)
    assert f / 1.3342399895191194e-04 / 1e12 == pytest.approx(257.5229, rel=1e-5)
    assert sdpa_flops(16, 16, 1024, 64, causal=True, backward=True) / 8.652799725532531e-04 / 1e12 == pytest.approx(138.98, rel=1e-4)
    assert validate_record({"kind": "kernel", "op": "gemm", "dtype": "bf16", "m": 1, "n": 1, "k": 1, "s": -1, "tflops": 1, "hardware": "h"})


def test_truth_file_kernel_records_validate():
    truth = ROOT.parent / "shared" / "truth" / "h100-h200-public.jsonl"
    if not truth.exists():  # a plain clone: the copy shipped in data/samples/
        truth = ROOT / "data" / "samples" / "h100-h200-public.jsonl"
    recs = read_jsonl(truth)
    assert recs and all(validate_record(r) == [] for r in recs)


def test_nvme_scratch_file_removed(tmp_path):
    p = tmp_path / "scratch.bin"
    recs = nvme_records(p, total_bytes=2 * BLOCK_BYTES, repeats=1, hardware="host")
    assert not p.exists()
    assert [r["op"] for r in recs] == ["nvme_write", "nvme_read"]
    for r in recs:
        assert validate_record(r) == []
        assert r["bytes"] == 2 * BLOCK_BYTES


def test_nvme_refuses_existing_file_and_keeps_it(tmp_path):
    p = tmp_path / "precious.bin"
    p.write_bytes(b"keep me")
    with pytest.raises(InputError) as e:
        nvme_records(p, total_bytes=BLOCK_BYTES, repeats=1)
    assert e.value.field == "scratch"
    assert p.read_bytes() == b"keep me"


def test_nvme_scratch_removed_on_interrupt(tmp_path):
    p = tmp_path / "scratch.bin"

    def tick():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        nvme_records(p, total_bytes=BLOCK_BYTES, repeats=2, tick=tick)
    assert not p.exists()


def test_nvme_scratch_removed_on_sigterm(tmp_path):
    p = tmp_path / "scratch.bin"
    code = (
        "import time, sys; from costmodel.bench.nvme import nvme_records\n"
        f"nvme_records({str(p)!r}, total_bytes=8*2**20, repeats=50, tick=lambda: time.sleep(0.5))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE)
    try:
        t0 = time.time()
        while not p.exists() and time.time() - t0 < 20:
            time.sleep(0.05)
        assert p.exists(), "the benchmark never created its scratch file"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not p.exists()


def test_cli_bench_numpy(tmp_path, capsys):
    from costmodel.cli.app import main

    out = tmp_path / "k.jsonl"
    with pytest.raises(SystemExit) as e:
        main(["bench", "--backend", "numpy", "--quick", "--ops", "mem_read", "--out", str(out), "--json"])
    assert e.value.code == 0
    payload = json.loads(capsys.readouterr().out)
    recs = read_jsonl(out)
    assert payload["records"] == len(recs) > 0
    assert all(r["op"] == "mem_read" for r in recs)


def test_cli_bench_unknown_backend_is_input_error(tmp_path, capsys):
    from costmodel.cli.app import main

    with pytest.raises(SystemExit) as e:
        main(["bench", "--backend", "cuda9", "--out", str(tmp_path / "k.jsonl")])
    assert e.value.code == 2
    assert "backend" in capsys.readouterr().err


def _cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch


@pytest.mark.gpu
def test_torch_gpu_gemm_and_copy():
    _cuda()
    bench = make_bench("torch", quick=True)
    cases = [c for c in bench.cases({"gemm", "mem_copy"}) if c.name in ("gemm bf16 2048x2048x2048", "mem_copy 64 MiB")]
    recs, errs = run_cases(cases, progress=False)
    assert errs == [] and len(recs) == 2
    for r in recs:
        assert validate_record(r) == [] and r["s_stream"] > 0


@pytest.mark.gpu
def test_torch_gpu_sdpa():
    _cuda()
    bench = make_bench("torch", quick=True)
    cases = [c for c in bench.cases({"sdpa"})][:2]
    recs, errs = run_cases(cases, progress=False)
    assert errs == [] and all(validate_record(r) == [] for r in recs)


@pytest.mark.skipif(os.environ.get("WORLD_SIZE", "1") == "1", reason="collectives run under torchrun")
@pytest.mark.gpu
def test_nccl_collectives_under_torchrun():
    _cuda()
    bench = make_bench("nccl", quick=True)
    recs, errs = run_cases(bench.cases({"all_reduce"}, sizes=[2**20]), progress=False)
    bench.close()
    assert errs == []


def test_merge_rounds_keeps_the_median_and_the_spread():
    from costmodel.bench.records import merge_rounds

    base = {"kind": "kernel", "op": "gemm", "dtype": "bf16", "m": 64, "n": 64, "k": 64, "hardware": "x"}
    f = 2 * 64**3
    rounds = [dict(base, s=s, s_stream=ss, tflops=f / s / 1e12, round=i) for i, (s, ss) in enumerate(((1e-5, 4e-6), (2e-5, 5e-6), (1e-4, 6e-6)))]
    other = dict(base, m=128, s=3e-5, s_stream=1e-5, tflops=1.0, round=0)
    out = merge_rounds(rounds + [other])
    assert len(out) == 2
    r = next(x for x in out if x["m"] == 64)
    assert r["s"] == 2e-5 and r["s_stream"] == 5e-6 and r["rounds"] == 3
    assert r["s_spread"] == pytest.approx((1e-4 - 1e-5) / 2e-5)  # (max - min) / median = 4.5
    assert r["tflops"] == pytest.approx(f / 2e-5 / 1e12)  # the rate of the median time
    assert "round" not in r and validate_record(r) == []
    # a shared host keeps the fastest round (interference only adds time); the spread is unchanged
    fast = next(x for x in merge_rounds(rounds, stat="min") if x["m"] == 64)
    assert fast["s"] == 1e-5 and fast["s_stream"] == 4e-6 and fast["round_stat"] == "min"
    assert fast["tflops"] == pytest.approx(f / 1e-5 / 1e12)
    assert fast["s_spread"] == pytest.approx(4.5)
    assert make_bench("numpy", quick=True).round_stat == "min"


def test_fit_host_without_scipy_says_which_extra_in_one_line(monkeypatch, capsys):
    # scipy is the `fit` extra (pyproject.toml), not a dependency of the calculator
    from costmodel.bench import fit_host

    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    assert fit_host.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'costmodel[fit]'" in err and "scipy" in err


# --------------------------------------------------------------------------- ROCm path

@pytest.mark.parametrize("name,spec_id", [
    ("AMD Instinct MI250X", "mi250x"),            # rocm-smi / torch on Frontier (one GCD per device)
    ("AMD Instinct MI250X/MI250", "mi250x"),      # the name older ROCm releases report
    ("AMD Instinct MI300X", "mi300x"),
    ("NVIDIA H100 80GB HBM3", "h100-sxm"),
    ("NVIDIA H100 PCIe", "h100-pcie"),
    ("NVIDIA H200", "h200-sxm"),
    ("NVIDIA A100-SXM4-80GB", "a100-80gb-sxm"),
    ("NVIDIA A100-SXM4-40GB", "a100-40gb-sxm"),
    ("NVIDIA A100 80GB PCIe", "a100-80gb-pcie"),
])
def test_device_names_map_to_shipped_spec_ids(name, spec_id):
    from costmodel.bench.torch_backend import hardware_id_from_name
    from costmodel.specs import load_library

    assert hardware_id_from_name(name) == spec_id
    assert spec_id in load_library().ids()


def test_rocm_build_is_detected_and_queried_with_rocm_smi(monkeypatch):
    """A ROCm build of PyTorch sets torch.version.hip and leaves torch.version.cuda None; the same
    torch.cuda calls work. env_info then asks rocm-smi, never nvidia-smi."""
    import types

    from costmodel.bench import runner
    from costmodel.bench.torch_backend import gpu_runtime

    fake = types.SimpleNamespace(
        __version__="2.5.1+rocm6.2", version=types.SimpleNamespace(cuda=None, hip="6.2.41133"),
        backends=types.SimpleNamespace(cudnn=types.SimpleNamespace(is_available=lambda: False)),
        cuda=types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 2,
                                   get_device_name=lambda i=0: "AMD Instinct MI250X",
                                   nccl=types.SimpleNamespace(version=lambda: (2, 20, 5))))
    assert gpu_runtime(fake) == {"runtime": "rocm", "hip": "6.2.41133", "cuda": None}
    calls = []
    monkeypatch.setitem(sys.modules, "torch", fake)
    monkeypatch.setattr(runner, "_cmd", lambda args: calls.append(args[0]) or "")
    info = runner.env_info("torch")
    assert info["hip"] == "6.2.41133" and info["cuda"] is None
    assert info["gpus"] == ["AMD Instinct MI250X"] * 2 and info["nccl"] == "2.20.5"  # RCCL's version
    assert calls and set(calls) == {"rocm-smi"}
