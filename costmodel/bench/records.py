"""Kernel records in the ``kind: kernel`` format of ``shared/truth/SCHEMA.md``, and their bookkeeping.

One JSON object per line. Field names follow SCHEMA.md (``s`` is seconds, except for ``sdpa_*``
records, where ``s`` is the sequence length and ``s_time`` the seconds; ``gbps`` is 1e9 bytes/s,
``tflops`` 1e12 FLOP/s). This harness adds a few fields SCHEMA.md does not forbid:

- ``s_stream``: seconds per call when calls are queued back to back (no launch gap);
  ``s`` is the median of isolated calls (synchronise, event, call, event), as in SCHEMA.md.
- ``backend`` (numpy / torch / nccl), ``device`` (the name the runtime reports), ``repeats``.
- ops this harness adds: ``elementwise_add``, ``gelu``, ``layernorm`` (``bytes`` = read + written),
  ``nvme_read``, ``nvme_write``, ``d2h_pageable``.

Only the standard library is imported here, so the GPU-side runner needs no pydantic.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

GEMM_OPS = ("gemm", "gemm_llm")
MEM_OPS = ("mem_copy", "mem_read")
ELEMENTWISE_OPS = ("elementwise_add", "gelu", "layernorm")
HOST_OPS = ("h2d_pinned", "d2h_pinned", "h2d_pageable", "d2h_pageable")
ATTENTION_OPS = ("sdpa_fwd", "sdpa_fwd_bwd")
NVME_OPS = ("nvme_read", "nvme_write")
COLLECTIVE_OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")

# The op families a calibration fits and reports by (calibration.holdout groups its errors so).
FAMILIES = {
    "gemm": GEMM_OPS + ("cpu_gemm",),
    "bandwidth": MEM_OPS + ELEMENTWISE_OPS,
    "attention": ATTENTION_OPS,
    "host": HOST_OPS,
    "collectives": COLLECTIVE_OPS,
}


def family(op: str) -> str | None:
    """The family of ``op`` (a FAMILIES key), None for an op no calibration fits."""
    for f, ops in FAMILIES.items():
        if op in ops:
            return f
    return None


# Bytes per element of each dtype name used in records.
DTYPE_BYTES = {"fp64": 8, "fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}

# Forward+backward FLOPs of flash attention as a multiple of the forward FLOPs: SCHEMA.md counts
# 3.5x (backward = 2.5x forward: five matmuls of the forward's size, one of them the recompute of
# the scores; FlashAttention-2 paper, Dao 2023, section 4 benchmark convention).
SDPA_FWD_BWD_FACTOR = 3.5


def gemm_flops(m: float, n: float, k: float, batch: float = 1) -> float:
    """2mnk multiply-adds counted as two FLOPs each."""
    return 2.0 * m * n * k * batch


def gemm_bytes(m: float, n: float, k: float, dtype: str, batch: float = 1) -> float:
    """Fewest bytes a GEMM moves: A (m x k) and B (k x n) read once, C (m x n) written once.

    fp8 GEMMs write their output in bf16 (torch._scaled_mm with out_dtype=bf16)."""
    e = DTYPE_BYTES[dtype]
    out_e = 2 if dtype in ("fp8", "int8") else e
    return batch * (e * (m * k + k * n) + out_e * m * n)


def sdpa_flops(b: int, h: int, s: int, d: int, causal: bool = True, backward: bool = False) -> float:
    """SCHEMA.md's count: 4*b*h*s^2*d forward (QK^T and PV), halved when causal, x3.5 fwd+bwd."""
    f = 4.0 * b * h * s * s * d
    if causal:
        f /= 2.0
    return f * (SDPA_FWD_BWD_FACTOR if backward else 1.0)


def busbw_factor(op: str, world: int) -> float:
    """nccl-tests 'bus bandwidth' factor (docs/PERFORMANCE.md of NVIDIA/nccl-tests):
    all_reduce 2(n-1)/n; all_gather, reduce_scatter, all_to_all (n-1)/n; send/recv 1."""
    n = max(int(world), 1)
    if op == "all_reduce":
        return 2.0 * (n - 1) / n
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) / n
    return 1.0


def record_time_s(rec: dict) -> float | None:
    """Seconds of one isolated call: ``s_time`` for attention records (``s`` is a length there)."""
    if rec.get("op") in ATTENTION_OPS:
        v = rec.get("s_time")
    else:
        v = rec.get("s")
    if v is None and rec.get("op") in HOST_OPS and rec.get("gbps") and rec.get("bytes"):
        v = rec["bytes"] / (rec["gbps"] * 1e9)  # the truth file gives host copies as gbps only
    return float(v) if v is not None else None


def stream_time_s(rec: dict) -> float | None:
    v = rec.get("s_stream")
    return float(v) if v is not None else None


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def record_problems(rec: dict, rates: bool = True) -> list[tuple[str, str]]:
    """(field, problem) for one kernel record, per SCHEMA.md's format (empty when it is valid).
    ``rates=False`` checks only what a prediction needs (the shape and the time), not the derived
    rates (``tflops``, ``gbps``, ...) a harness writes beside the time."""
    probs: list[tuple[str, str]] = []
    if rec.get("kind") != "kernel":
        probs.append(("kind", "must be 'kernel'"))
    op = rec.get("op")
    if not isinstance(op, str):
        return probs + [("op", "missing")]
    if not isinstance(rec.get("hardware"), str) or not rec.get("hardware"):
        probs.append(("hardware", "missing"))
    need: tuple[str, ...]
    rate: tuple[str, ...] = ()
    dtype = rec.get("dtype")
    if op in GEMM_OPS:
        need, rate = ("m", "n", "k", "s"), ("tflops",)
        if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
            probs.append(("dtype", f"{dtype!r} unknown; expected one of {', '.join(DTYPE_BYTES)}"))
    elif op == "cpu_gemm":
        need, rate = ("n", "s"), ("tflops",)
        if dtype is not None and (not isinstance(dtype, str) or dtype not in DTYPE_BYTES):
            probs.append(("dtype", f"{dtype!r} unknown; expected one of {', '.join(DTYPE_BYTES)}"))
    elif op in MEM_OPS + ELEMENTWISE_OPS + NVME_OPS:
        need, rate = ("bytes", "s"), ("gbps",)
    elif op in HOST_OPS:
        need, rate = ("bytes",), ("gbps",)
        if not rates and not (_finite_positive(rec.get("s")) or _finite_positive(rec.get("gbps"))):
            probs.append(("gbps", f"a host copy needs a positive s or gbps (got {rec.get('gbps')!r})"))
    elif op in ATTENTION_OPS:
        need, rate = ("b", "h", "s", "d", "s_time"), ("tflops",)
        if "causal" in rec and not isinstance(rec["causal"], bool):
            probs.append(("causal", f"expected true or false (got {rec['causal']!r})"))
    elif op in COLLECTIVE_OPS:
        need, rate = ("bytes", "s", "world"), (("gbps",) if op == "send_recv" else ("algbw_gbps", "busbw_gbps"))
    else:
        return probs + [("op", f"{op!r} unknown")]
    for f in need + (rate if rates else ()):
        if not _finite_positive(rec.get(f)):
            probs.append((f, f"must be a positive number (got {rec.get(f)!r})"))
    return probs


def check_kernel_record(rec: dict, where: str) -> None:
    """Raise InputError (at ``where``, e.g. ``file:line``) naming the first field a prediction of
    kernel record ``rec`` cannot use (record_problems with rates=False)."""
    probs = record_problems(rec, rates=False)
    if probs:
        from ..errors import InputError

        f, p = probs[0]
        raise InputError(f"kernel record ({rec.get('op')!r}): {f} {p}", file=where, field=f)


def validate_record(rec: dict) -> list[str]:
    """Problems with one record (empty list when it is valid), per SCHEMA.md's kernel format."""
    return [f"{f} {p}" for f, p in record_problems(rec)]


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` to `path` atomically: a temp file in the same directory, fsync, rename
    (costmodel.outputs.write_atomic; callers that write user-named outputs check them first with
    costmodel.outputs.check_output)."""
    from ..outputs import write_atomic

    return write_atomic(path, text)


def write_jsonl(records: Iterable[dict], path: str | Path, append: bool = False) -> Path:
    """Write records one per line; a fresh file is written atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(r, sort_keys=False) + "\n" for r in records)
    if append:
        with open(path, "a", encoding="utf-8") as f:
            f.write(lines)
        return path
    return write_text_atomic(path, lines)


# Fields that carry a measurement (everything else in a record names the case).
_MEASURED = ("s_stream", "tflops", "gbps", "gbps_stream", "algbw_gbps", "busbw_gbps", "repeats", "check_rel_err", "round",
             "s_spread", "rounds", "s_rounds", "s_stream_spread")
_RATES = ("tflops", "gbps", "algbw_gbps", "busbw_gbps")


def case_key(rec: dict) -> tuple:
    """What identifies a record's case (op, shape, dtype, ...), measurements left out."""
    time_f = "s_time" if rec.get("op") in ATTENTION_OPS else "s"
    return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in rec.items() if k not in _MEASURED and k != time_f))


def merge_rounds(records: list[dict], stat: str = "median") -> list[dict]:
    """One record per case from several rounds of the same cases: the median (``stat="min"``: the
    fastest) of the rounds' times (``s`` or ``s_time``, and ``s_stream``), rates recomputed from
    it, ``rounds``, ``round_stat`` and ``s_spread`` ((max - min) / median of the rounds' times, the
    run-to-run spread) added.

    ``min`` is for a shared host: other processes only ever add time, so the least-disturbed
    round's median is the best estimate of the kernel itself (Python's ``timeit`` documentation:
    "the lowest value gives a lower bound for how fast your machine can run the given code
    snippet; higher values in the result vector are typically not caused by variability in
    Python's speed, but by other processes interfering with your timing accuracy")."""
    import statistics

    if stat not in ("median", "min"):
        raise ValueError(f"round statistic {stat!r}: expected median or min")
    pick = min if stat == "min" else (lambda xs: float(statistics.median(xs)))

    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(case_key(r), []).append(r)
    out = []
    for rs in groups.values():
        first = dict(rs[0])
        tf = "s_time" if first.get("op") in ATTENTION_OPS else "s"
        ts = [r[tf] for r in rs if r.get(tf)]
        if not ts:
            continue
        kept = float(pick(ts))
        for rate in _RATES:
            if first.get(rate):
                first[rate] = first[rate] * first[tf] / kept
        first[tf] = kept
        ss = [r["s_stream"] for r in rs if r.get("s_stream")]
        if ss:
            first["s_stream"] = float(pick(ss))
            first["s_stream_spread"] = (max(ss) - min(ss)) / float(statistics.median(ss))
            if first.get("gbps_stream"):
                first["gbps_stream"] = rs[0]["gbps_stream"] * rs[0]["s_stream"] / first["s_stream"]
        first.pop("round", None)
        first["rounds"] = len(ts)
        first["round_stat"] = stat
        first["s_rounds"] = [float(f"{t:.6g}") for t in ts]
        first["s_spread"] = (max(ts) - min(ts)) / float(statistics.median(ts))
        out.append(first)
    return out


def read_json_objects(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, object) for every JSON object line of a JSONL file; blank and ``#`` lines are
    skipped. Raises InputError naming the file and line on anything else."""
    from ..inputs import read_jsonl as _read  # the shared reader: size limit, UTF-8, no NaN

    return _read(path)


def read_jsonl(path: str | Path) -> list[dict]:
    """Kernel records of a JSONL file (other kinds are skipped). Raises InputError on bad lines,
    and on a kernel record without the shape or time its op needs (naming the line and field)."""
    out = []
    for i, rec in read_json_objects(path):
        if rec.get("kind") == "kernel":
            check_kernel_record(rec, f"{path}:{i}")
            out.append(rec)
    return out
