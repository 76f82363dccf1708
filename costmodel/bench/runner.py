"""Choose a backend, run its cases under a progress bar, collect and write the records.

Also the GPU-side entry point (``python -m costmodel.bench.run_gpu``), which needs only the
standard library, numpy, torch and (optionally) rich: no pydantic, no typer.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from .records import validate_record, write_jsonl
from .timing import Case

BACKENDS = ("auto", "numpy", "torch", "nccl")


def torch_cuda_available() -> bool:
    """True when torch imports and sees a GPU (imports torch: call only when torch may be used)."""
    try:
        import torch  # noqa: F401
    except Exception:
        return False
    return bool(torch.cuda.is_available())


def resolve_backend(name: str) -> str:
    """``auto`` -> ``torch`` when torch and a GPU are there, else ``numpy``."""
    if name not in BACKENDS:
        from ..errors import InputError

        raise InputError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}", field="backend")
    if name == "auto":
        if os.environ.get("WORLD_SIZE", "1") != "1":
            return "nccl"
        return "torch" if torch_cuda_available() else "numpy"
    return name


def make_bench(backend: str, *, hardware: str | None = None, quick: bool = False, seed: int = 0, dtypes=None,
               clock: str = "wall"):
    backend = resolve_backend(backend)
    if backend == "numpy":
        from .numpy_backend import NumpyBench

        return NumpyBench(hardware=hardware or "cpu-host", quick=quick, seed=seed, clock=clock)
    if clock != "wall":
        from ..errors import InputError

        raise InputError(f"--clock {clock} times CPU work: only with --backend numpy", field="clock")
    if backend == "torch":
        try:
            from .torch_backend import TorchBench

            return TorchBench(hardware=hardware, quick=quick, seed=seed, dtypes=dtypes)
        except ImportError:
            from ..errors import InputError

            raise InputError("backend 'torch' needs PyTorch (pip install torch)", field="backend") from None
    from .dist_backend import DistBench

    return DistBench(hardware=hardware, quick=quick, seed=seed)


def run_cases(cases: list[Case], *, progress: bool = True, out: str | Path | None = None, title: str = "bench",
              stop_on_error: bool = False, log: bool = False) -> tuple[list[dict], list[str]]:
    """Run every case; return (records, errors). Records are appended to ``out`` as they come, so a
    run stopped half-way keeps what it measured. A failing case is reported and skipped."""
    records: list[dict] = []
    errors: list[str] = []
    bar = None
    if progress:
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                           TimeRemainingColumn(), TextColumn("{task.fields[case]}"), console=Console(stderr=True), transient=False)
        except ImportError:
            bar = None
    total = sum(c.weight for c in cases)
    task = None
    if bar is not None:
        bar.start()
        task = bar.add_task(title, total=total, case="")
    try:
        for c in cases:
            if bar is not None:
                bar.update(task, case=c.name)
            try:
                recs = c.run()
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one kernel failing must not lose the others
                if stop_on_error:
                    raise
                errors.append(f"{c.name}: {type(exc).__name__}: {exc}")
                recs = []
            for r in recs:
                probs = validate_record(r)
                if probs:
                    errors.append(f"{c.name}: invalid record: {'; '.join(probs)}")
            recs = [r for r in recs if not validate_record(r)]
            records.extend(recs)
            if out is not None and recs:
                write_jsonl(recs, out, append=True)
            if bar is not None:
                bar.advance(task, c.weight)
            elif log:
                for r in recs:
                    print(f"[{len(records)}] {c.name}: {summarize(r)}", file=sys.stderr, flush=True)
    finally:
        if bar is not None:
            bar.update(task, case="done")
            bar.stop()
    return records, errors


def summarize(r: dict) -> str:
    """One line for a record: its time and rate."""
    t = r.get("s_time", r.get("s"))
    parts = [f"{t * 1e6:.1f} us" if t is not None else ""]
    if r.get("s_stream"):
        parts.append(f"stream {r['s_stream'] * 1e6:.1f} us")
    for k, u in (("tflops", "TFLOP/s"), ("gbps", "GB/s"), ("busbw_gbps", "GB/s bus")):
        if r.get(k) is not None:
            parts.append(f"{r[k]:.4g} {u}")
    return ", ".join(p for p in parts if p)


def _cmd(args: list[str]) -> str | None:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def env_info(backend: str) -> dict:
    """Date, host and library versions, for the provenance of a measurement file."""
    import numpy

    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "backend": backend,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpu": None,
        "cpus": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if backend in ("torch", "nccl"):
        try:
            import torch

            info["torch"] = torch.__version__
            info["cuda"] = torch.version.cuda
            info["hip"] = getattr(torch.version, "hip", None)  # ROCm builds: torch.cuda runs on HIP
            info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
            if torch.cuda.is_available():
                info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                try:
                    v = torch.cuda.nccl.version()
                    info["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
                except Exception:
                    info["nccl"] = None
                if info["hip"]:
                    # ROCm: rocm-smi in place of nvidia-smi (read-only queries as well)
                    smi = _cmd(["rocm-smi", "--showproductname", "--showdriverversion", "--csv"])
                    info["rocm_smi"] = smi.splitlines() if smi else None
                    topo = _cmd(["rocm-smi", "--showtopo"])
                    info["topology"] = topo.splitlines() if topo else None
                else:
                    smi = _cmd(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit",
                                "--format=csv,noheader"])
                    info["nvidia_smi"] = smi.splitlines() if smi else None
                    info["driver"] = smi.splitlines()[0].split(",")[1].strip() if smi else None
                    # read-only: the clock, power and temperature the card is at (METHOD.md: never set them)
                    state = _cmd(["nvidia-smi", "--query-gpu=clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active",
                                  "--format=csv,noheader"])
                    info["gpu_state"] = state.splitlines() if state else None
                    topo = _cmd(["nvidia-smi", "topo", "-m"])
                    info["topology"] = topo.splitlines() if topo else None
        except ImportError:
            pass
    info["env"] = {k: v for k, v in os.environ.items()
                   if k.startswith(("NCCL_", "RCCL_", "TORCH_SYMM", "NVSHMEM_", "CUDA_VISIBLE", "HIP_VISIBLE", "ROCR_VISIBLE"))}
    return info


def main(argv: list[str] | None = None) -> int:
    """GPU-side runner: ``python -m costmodel.bench.run_gpu --out DIR [--tag T] [--quick] ...``.

    Under torchrun (WORLD_SIZE > 1) it runs the collectives; otherwise the single-device kernels.
    """
    p = argparse.ArgumentParser(prog="costmodel.bench.run_gpu", description=__doc__)
    p.add_argument("--out", required=True, help="directory for <tag>-kernels.jsonl and <tag>-env.json")
    p.add_argument("--tag", default="bench")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--hardware", default=None, help="spec id to put in the records (detected when left out)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--ops", default=None, help="comma-separated ops or groups (gemm, sdpa, elementwise, host, collectives)")
    p.add_argument("--dtypes", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every case this many times, each round in a fresh shuffled order; keep the median "
                        "(<tag>-rounds.jsonl keeps every round)")
    p.add_argument("--power-trace", action="store_true", help="also trace per-call GEMM times under sustained load (GPU)")
    a = p.parse_args(argv)
    backend = resolve_backend(a.backend)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    bench = make_bench(backend, hardware=a.hardware, quick=a.quick, dtypes=a.dtypes.split(",") if a.dtypes else None)
    rank = getattr(bench, "rank", 0)
    ops = set(a.ops.split(",")) if a.ops else None
    cases = bench.cases(ops)
    path = out / f"{a.tag}-kernels.jsonl"
    rounds_path = out / f"{a.tag}-rounds.jsonl"
    for p_ in (path, rounds_path):
        if rank == 0 and p_.exists():
            p_.unlink()
    t0 = time.time()
    info0 = env_info(backend) if rank == 0 else {}
    if a.rounds <= 1:
        records, errors = run_cases(cases, progress=(not a.no_progress and rank == 0), out=path if rank == 0 else None,
                                    title=f"{bench.backend} on {bench.device}", log=a.no_progress and rank == 0)
    else:
        import random

        from .records import merge_rounds, write_jsonl

        raw, errors = [], []
        for rnd in range(a.rounds):
            order = list(cases)
            random.Random(1000 + rnd).shuffle(order)  # the same order on every rank
            recs, errs = run_cases(order, progress=(not a.no_progress and rank == 0), out=None,
                                   title=f"{bench.backend} on {bench.device}, round {rnd + 1}/{a.rounds}", log=a.no_progress and rank == 0)
            for r in recs:
                r["round"] = rnd
            raw += recs
            errors += errs
            if rank == 0:
                write_jsonl(recs, rounds_path, append=True)
        records = merge_rounds(raw)
        if rank == 0:
            write_jsonl(records, path)
    if a.power_trace and rank == 0 and hasattr(bench, "power_trace") and getattr(bench, "cuda", False):
        traces = [bench.power_trace(dt, n) for dt, n in (("bf16", 8192), ("fp16", 8192), ("bf16", 4096), ("bf16", 16384))]
        (out / f"{a.tag}-power-trace.json").write_text(json.dumps(traces) + "\n")
    if hasattr(bench, "close"):
        bench.close()
    if rank == 0:
        info = env_info(backend)
        info.update({"hardware": bench.hardware, "device": bench.device, "cases": len(cases), "records": len(records),
                     "errors": errors, "wall_s": round(time.time() - t0, 1), "quick": a.quick,
                     "world": getattr(bench, "world", 1), "rounds": a.rounds, "gpu_state_before": info0.get("gpu_state")})
        (out / f"{a.tag}-env.json").write_text(json.dumps(info, indent=1) + "\n")
        print(f"{len(records)} records from {len(cases)} cases in {time.time() - t0:.0f} s -> {path}", flush=True)
        for e in errors:
            print("ERROR", e, file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
