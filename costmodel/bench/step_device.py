"""The measuring device for costmodel/bench/train_step.py: device calls that also run on a CPU,
out-of-memory detection, the hardware id, the environment record and torch.profiler summaries.
Standalone like train_step.py: torch, transformers, numpy and the standard library only."""
from __future__ import annotations

import datetime
import gc
import os
import platform
import subprocess
import time

import numpy as np
import torch
import transformers


class Dev:
    """Device-dependent calls, so that the logic can be exercised on a CPU."""

    def __init__(self, kind: str, local_rank: int):
        self.kind = kind
        if kind == "cuda":
            torch.cuda.set_device(local_rank)
            self.device = torch.device("cuda", local_rank)
        else:
            self.device = torch.device("cpu")

    def sync(self):
        if self.kind == "cuda":
            torch.cuda.synchronize()

    def allocated(self) -> int:
        return int(torch.cuda.memory_allocated()) if self.kind == "cuda" else 0

    def peak(self) -> int:
        return int(torch.cuda.max_memory_allocated()) if self.kind == "cuda" else 0

    def reset_peak(self):
        if self.kind == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def empty_cache(self):
        gc.collect()
        if self.kind == "cuda":
            torch.cuda.empty_cache()

    def autocast(self, dtype=None):
        return torch.autocast(self.kind, dtype=dtype or torch.bfloat16)


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    msg = str(exc)
    return "out of memory" in msg.lower() or "CUDA_ERROR_OUT_OF_MEMORY" in msg


def hardware_id(dev: Dev) -> str:
    if dev.kind != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name()
    if "H200" in name:
        return "h200-sxm"
    if "H100" in name:
        return "h100-pcie" if "PCIe" in name else "h100-sxm"
    # ROCm builds run torch.cuda on HIP: 'AMD Instinct MI250X' is one GCD (the per-GCD mi250x spec)
    if "MI300X" in name:
        return "mi300x"
    if "MI250X" in name:
        return "mi250x"
    return name.lower().replace(" ", "-")


def environment(dev: Dev, world: int) -> dict:
    env = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "hip_runtime": getattr(torch.version, "hip", None),  # set on ROCm builds (torch.cuda runs on HIP)
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "world_size": world,
        "host": platform.node(),
        "kernel": platform.release(),
        "env_NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE"),
    }
    if dev.kind == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_count"] = torch.cuda.device_count()
        props = torch.cuda.get_device_properties(0)
        env["gpu_total_memory_bytes"] = int(props.total_memory)
        env["sm_count"] = props.multi_processor_count
        env["cudnn"] = torch.backends.cudnn.version()
        try:
            v = torch.cuda.nccl.version()
            env["nccl"] = ".".join(str(x) for x in v) if isinstance(v, tuple) else str(v)
        except Exception as e:  # noqa: BLE001
            env["nccl"] = f"unknown ({e})"
        try:
            q = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            env["nvidia_smi"] = q.stdout.strip().splitlines()
            env["driver"] = q.stdout.strip().splitlines()[0].split(",")[1].strip()
        except Exception as e:  # noqa: BLE001
            env["driver"] = f"unknown ({e})"
    return env


def framework_string(extra: str = "") -> str:
    tv = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    hv = ".".join(transformers.__version__.split(".")[:2])
    s = f"pytorch-{tv} transformers-{hv} sdpa, fused AdamW"
    return s + (", " + extra if extra else "")


def profile_summary(fn, dev: Dev, top: int = 40) -> dict:
    """One call of ``fn`` under torch.profiler: wall time, summed device-kernel time, CPU-op counts
    and the top operators by self device time and by self CPU time (diagnostic only)."""
    from torch.profiler import ProfilerActivity, profile
    dev.sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.kind == "cuda" else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        fn()
        dev.sync()
        wall = time.perf_counter() - t0
    ka = prof.key_averages()

    def dev_us(e):
        return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))

    rows = [{"op": e.key, "count": int(e.count), "self_device_us": dev_us(e),
             "self_cpu_us": float(e.self_cpu_time_total)} for e in ka]
    kernels = [e for e in prof.events() if str(getattr(e, "device_type", "")).endswith("CUDA")]
    return {
        "wall_s": wall,
        "device_self_us_total": sum(r["self_device_us"] for r in rows),
        "device_kernels": len(kernels),
        "cpu_ops": sum(r["count"] for r in rows if not r["op"].startswith("cuda")),
        "top_device": sorted(rows, key=lambda r: -r["self_device_us"])[:top],
        "top_cpu": sorted(rows, key=lambda r: -r["self_cpu_us"])[:top],
    }
