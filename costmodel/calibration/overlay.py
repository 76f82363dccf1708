"""Calibration overlays on disk: reading (every field checked, errors name the file and field), the
shipped overlays, and atomic writing (costmodel.outputs: never over a shipped spec or another
device's overlay)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..bench.records import ATTENTION_OPS, COLLECTIVE_OPS, DTYPE_BYTES, HOST_OPS
from ..errors import InputError
from .curves import (
    AttentionCurve, BandwidthCurve, CollectiveFit, DEFAULT_THROTTLE_S, GemmCurve, GemmDtype,
    GemmResidual, LinkFit, Timing,
)
from .defaults import (
    DEFAULT_KERNEL_MIN_S, DEFAULT_LAUNCH_OVERHEAD_S, DEFAULT_MEM_GAP_S,
    DEFAULT_P, DEFAULT_Q, FORMAT,
)
from .efficiency import ATTENTION_BACKENDS, DeviceEfficiency, default_efficiency

def _rounded(obj):
    if isinstance(obj, float):
        return float(f"{obj:.5g}")
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------------
# Overlay -> DeviceEfficiency, with field-by-field validation.

class _Reader:
    def __init__(self, file):
        self.file = file

    def mapping(self, data, field):
        if not isinstance(data, dict):
            raise InputError(f"expected a mapping, got {type(data).__name__}", file=self.file, field=field)
        return data

    def num(self, data, key, field, default=None, positive=True):
        if key not in data or data[key] is None:
            if default is not None:
                return default
            raise InputError("missing required field", file=self.file, field=f"{field}.{key}" if field else key)
        v = data[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (v <= 0 if positive else v < 0):
            what = "a positive number" if positive else "a number >= 0"
            hint = ""
            if isinstance(v, str):
                try:
                    float(v)
                    hint = " (YAML 1.1 reads a number like 5e14 as text: write 5.0e+14)"
                except ValueError:
                    pass
            raise InputError(f"expected {what} (got {v!r}){hint}", file=self.file, field=f"{field}.{key}" if field else key)
        return float(v)

    def timing(self, d, field, base: Timing, q=None):
        return Timing(self.num(d, "kernel_min_s", field, base.kernel_min_s, positive=False),
                      self.num(d, "call_gap_s", field, base.gap_s, positive=False),
                      self.num(d, "stream_floor_s", field, base.floor_s, positive=False),
                      q if q is not None else self.num(d, "q", field, base.q),
                      self.num(d, "call_floor_s", field, positive=False) if d.get("call_floor_s") is not None else None)


def _read_gemm(rd: "_Reader", g: Mapping[str, Any], base_dtypes: Mapping[str, GemmDtype] | None = None) -> GemmCurve:
    """The ``gemm`` section of an overlay (``g``, already a mapping) as a GemmCurve; dtypes it
    lacks come from ``base_dtypes``."""
    file = rd.file
    p = rd.num(g, "p", "gemm", DEFAULT_P)
    q = rd.num(g, "q", "gemm", DEFAULT_Q)
    # One kernel_min_s for every dtype (the gemm section's); each dtype's gaps and floors below.
    t0 = Timing(kernel_min_s=rd.num(g, "kernel_min_s", "gemm", DEFAULT_KERNEL_MIN_S, positive=False))
    dts = rd.mapping(g.get("dtypes"), "gemm.dtypes")
    out = dict(base_dtypes or {})
    for dt, d in dts.items():
        if dt not in DTYPE_BYTES:
            raise InputError(f"unknown dtype {dt!r}", file=file, field=f"gemm.dtypes.{dt}")
        fld = f"gemm.dtypes.{dt}"
        d = rd.mapping(d, fld)
        tile = d.get("tile")
        if tile is not None and not (isinstance(tile, list) and len(tile) == 2 and all(isinstance(x, int) and x > 0 for x in tile)):
            raise InputError(f"expected [rows, cols] of positive integers (got {tile!r})", file=file, field=f"{fld}.tile")
        out[dt] = GemmDtype(rd.num(d, "flops_per_s", fld),
                            rd.timing(d, fld, t0, q),
                            tuple(tile) if tile else None,
                            rd.num(d, "sustained_flops_per_s", fld) if d.get("sustained_flops_per_s") is not None else None,
                            rd.num(d, "wave_exponent", fld, positive=False) if d.get("wave_exponent") is not None else None)
    units = rd.num(g, "units", "gemm") if g.get("units") is not None else None
    residual = _read_residual(rd, g["residual"]) if g.get("residual") is not None else None
    return GemmCurve(out, rd.num(g, "memory_bytes_per_s", "gemm"), rd.num(g, "x_half", "gemm", 0.0, positive=False), p,
                     units, rd.num(g, "throttle_s", "gemm", DEFAULT_THROTTLE_S), rd.num(g, "k_half", "gemm", 0.0, positive=False),
                     rd.num(g, "wave_exponent", "gemm", 1.0, positive=False),
                     rd.num(g, "pack_bytes_per_s", "gemm") if g.get("pack_bytes_per_s") is not None else None, residual)


def _read_residual(rd: "_Reader", res: object) -> GemmResidual:
    """``gemm.residual``: {length_octaves, prior, dtypes: {dtype: [[m, n, k, num, den], ...]}}."""
    fld = "gemm.residual"
    res = rd.mapping(res, fld)
    points = {}
    for dt, rows in rd.mapping(res.get("dtypes"), f"{fld}.dtypes").items():
        f = f"{fld}.dtypes.{dt}"
        ok = isinstance(rows, list) and rows and all(
            isinstance(row, list) and len(row) == 5 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in row)
            and min(row[:3]) >= 1 and row[4] >= 0 for row in rows)
        if not ok:
            raise InputError("expected a non-empty list of [m, n, k, num, den] (m, n, k >= 1, den >= 0)", file=rd.file, field=f)
        a = np.array(rows, dtype=float)
        points[dt] = (np.log2(a[:, :3]), a[:, 3], a[:, 4])
    return GemmResidual(rd.num(res, "length_octaves", fld), rd.num(res, "prior", fld), points)


def efficiency_from_overlay(data: object, file: str | Path = "<overlay>", base: DeviceEfficiency | None = None) -> DeviceEfficiency:
    """Build a DeviceEfficiency from an overlay mapping; families it lacks come from ``base``."""
    rd = _Reader(str(file))
    data = rd.mapping(data, None)
    fmt = data.get("format")
    if fmt != FORMAT:
        raise InputError(f"expected {FORMAT!r} (got {fmt!r})", file=file, field="format")
    device = data.get("device")
    if not isinstance(device, str) or not device:
        raise InputError("missing required field (a hardware id)", file=file, field="device")
    if base is not None and base.device != device:
        raise InputError(f"overlay is for {device!r}, not {base.device!r}", file=file, field="device")
    gem_t0 = Timing()
    mem_t0 = Timing(DEFAULT_KERNEL_MIN_S, DEFAULT_MEM_GAP_S, DEFAULT_LAUNCH_OVERHEAD_S, DEFAULT_Q)
    # GEMM
    gemm = base.gemm if base else None
    if "gemm" in data:
        gemm = _read_gemm(rd, rd.mapping(data["gemm"], "gemm"), base.gemm.dtypes if base else None)
    # memory
    copy = base.copy if base else None
    read = base.read if base else None
    if "memory" in data:
        mm = rd.mapping(data["memory"], "memory")
        for key in mm:
            if key not in ("copy", "read"):
                raise InputError("unknown memory kernel; expected copy or read", file=file, field=f"memory.{key}")
        if "copy" in mm:
            c = rd.mapping(mm["copy"], "memory.copy")
            copy = BandwidthCurve(rd.num(c, "bytes_per_s", "memory.copy"), rd.timing(c, "memory.copy", mem_t0))
        if "read" in mm:
            c = rd.mapping(mm["read"], "memory.read")
            read = BandwidthCurve(rd.num(c, "bytes_per_s", "memory.read"), rd.timing(c, "memory.read", mem_t0))
    copy = copy or read
    read = read or copy
    note = ""
    if copy is None and base is None and gemm is not None:
        # A GEMM-only overlay (e.g. a host CPU's BLAS, calibrated with --ops gemm): streaming
        # kernels get the bandwidth of the GEMM's own memory-bound regime, and the source says so.
        copy = read = BandwidthCurve(gemm.memory_bytes_per_s, mem_t0)
        note = "; memory from the GEMM fit"
    elem = dict(base.elementwise) if base else {}
    if "elementwise" in data:
        for op, c in rd.mapping(data["elementwise"], "elementwise").items():
            c = rd.mapping(c, f"elementwise.{op}")
            elem[op] = BandwidthCurve(rd.num(c, "bytes_per_s", f"elementwise.{op}"), rd.timing(c, f"elementwise.{op}", mem_t0))
    att = dict(base.attention) if base else {}
    if "attention" in data:
        mem_bw = copy.bytes_per_s if copy else (gemm.memory_bytes_per_s if gemm else 1e12)
        for op, c in rd.mapping(data["attention"], "attention").items():
            if op not in ATTENTION_OPS:
                raise InputError(f"unknown attention kernel; expected one of {', '.join(ATTENTION_OPS)}", file=file, field=f"attention.{op}")
            fld = f"attention.{op}"
            c = rd.mapping(c, fld)
            att[op] = AttentionCurve(rd.num(c, "flops_per_s_max", fld), rd.num(c, "head_dim_half", fld, 0.0, positive=False),
                                     rd.num(c, "causal_block", fld, 0.0, positive=False), rd.num(c, "noncausal_factor", fld, 1.0),
                                     mem_bw, rd.timing(c, fld, gem_t0), rd.num(c, "p", fld, DEFAULT_P))
    host = dict(base.host) if base else {}
    if "host" in data:
        for op, c in rd.mapping(data["host"], "host").items():
            if op not in HOST_OPS:
                raise InputError(f"unknown host copy; expected one of {', '.join(HOST_OPS)}", file=file, field=f"host.{op}")
            c = rd.mapping(c, f"host.{op}")
            host[op] = LinkFit(rd.num(c, "bytes_per_s", f"host.{op}"), rd.num(c, "latency_s", f"host.{op}", 0.0, positive=False))
    coll = {op: dict(v) for op, v in (base.collectives if base else {}).items()}
    if "collectives" in data:
        for op, worlds in rd.mapping(data["collectives"], "collectives").items():
            if op not in COLLECTIVE_OPS:
                raise InputError(f"unknown collective; expected one of {', '.join(COLLECTIVE_OPS)}", file=file, field=f"collectives.{op}")
            for w, c in rd.mapping(worlds, f"collectives.{op}").items():
                fld = f"collectives.{op}.{w}"
                try:
                    wi = int(w)
                except (TypeError, ValueError):
                    raise InputError("world size must be an integer", file=file, field=fld) from None
                c = rd.mapping(c, fld)
                coll.setdefault(op, {})[wi] = CollectiveFit(rd.num(c, "alpha_s", fld, positive=False), rd.num(c, "busbw_bytes_per_s", fld))
    launch = rd.num(data, "launch_overhead_s", "", base.launch_overhead_s if base else DEFAULT_LAUNCH_OVERHEAD_S, positive=False) \
        if "launch_overhead_s" in data else (base.launch_overhead_s if base else DEFAULT_LAUNCH_OVERHEAD_S)
    if gemm is None:
        raise InputError("missing required field (no GEMM fit, and no spec to take defaults from)", file=file, field="gemm")
    if copy is None:
        raise InputError("missing required field (no copy/read fit, and no spec to take defaults from)", file=file, field="memory")
    created = data.get("created", "undated")
    host_factor = rd.num(data, "eager_infer_host_factor", "", 1.0) if "eager_infer_host_factor" in data else (
        base.eager_infer_host_factor if base else 1.0)
    backend = data.get("attention_backend", base.attention_backend if base else None)
    if backend is not None and backend not in ATTENTION_BACKENDS:
        raise InputError(f"expected one of {', '.join(ATTENTION_BACKENDS)} (got {backend!r})", file=file, field="attention_backend")
    return DeviceEfficiency(device=device, source=f"calibrated: {_display_path(file)} ({created}{note})", gemm=gemm, copy=copy, read=read,
                            elementwise=elem, attention=att, host=host, collectives=coll, launch_overhead_s=launch,
                            peaks=base.peaks if base else {}, eager_infer_host_factor=host_factor, attention_backend=backend)


def _display_path(file) -> str:
    """A shipped overlay as ``hardware/calibrated/<id>.yaml``; any other file as given."""
    try:
        from ..specs import package_data_dir

        rel = Path(file).resolve().relative_to(package_data_dir("hardware").resolve())
        return str(Path("hardware") / rel)
    except (ValueError, OSError, ImportError):
        return str(file)


def load_overlay(path: str | Path, spec=None) -> DeviceEfficiency:
    """Read an overlay YAML; with ``spec``, families the overlay lacks fall back to the defaults."""
    from ..specs import read_yaml

    path = Path(path)
    data = read_yaml(path)
    base = default_efficiency(spec) if spec is not None else None
    if (base is not None and getattr(spec, "kind", None) == "cpu" and isinstance(data, dict)
            and data.get("device") == HOST_CPU_DEVICE):
        # `calibrate --backend numpy` without --hardware names the host "cpu-host": its overlay is the
        # host's measured rates, which apply to whichever CPU spec describes that host
        data = dict(data, device=spec.id)
    return efficiency_from_overlay(data, path, base)


# The device id `costmodel bench/calibrate --backend numpy` writes when no --hardware is given.
HOST_CPU_DEVICE = "cpu-host"


def calibrated_dir() -> Path:
    from ..specs import package_data_dir

    return package_data_dir("hardware") / "calibrated"


def shipped_overlay_path(spec_id: str) -> Path | None:
    p = calibrated_dir() / f"{spec_id}.yaml"
    return p if p.is_file() else None


def shipped_host_efficiency(spec_id: str) -> DeviceEfficiency | None:
    """The host CPU of a device's machine, where its BLAS was calibrated there (``costmodel
    calibrate --backend numpy --ops gemm``): ``hardware/calibrated/<id>-host.yaml``, else None."""
    p = shipped_overlay_path(f"{spec_id}-host")
    return load_overlay(p) if p is not None else None


def shipped_efficiency(spec) -> DeviceEfficiency:
    """``hardware/calibrated/<id>.yaml`` over the defaults when it exists, else the defaults."""
    p = shipped_overlay_path(spec.id)
    if p is None:
        return default_efficiency(spec)
    return load_overlay(p, spec)


def efficiency_for(spec, calibration: str | Path | None = None) -> DeviceEfficiency:
    """What commands use: ``--calibration FILE`` when given, else the shipped overlay, else defaults."""
    if calibration:
        return load_overlay(calibration, spec)
    return shipped_efficiency(spec)


# ------------------------------------------------------------------------------------------------
# Writing.

def dump_overlay(overlay: Mapping[str, Any]) -> str:
    import yaml

    head = ("# costmodel calibration overlay: fitted efficiency curves (see costmodel/calibration/ for the\n"
            "# model). Rates are per second in base units (FLOP/s, bytes/s), times in seconds.\n")
    return head + yaml.safe_dump(_plain(overlay), sort_keys=False, default_flow_style=None, width=110)


def _plain(o):
    if isinstance(o, dict):
        return {str(k) if not isinstance(k, int) else k: _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return o


def check_writable(path: str | Path, device: str | None = None, **kw) -> Path:
    """Raise InputError unless an overlay (fitted on ``device``, when known) may be written at
    ``path``: costmodel.outputs.check_output (never over a shipped spec, only hardware/calibrated/
    inside the package, never over a file that is not an overlay or is the overlay of another
    device). ``kw``: check_output's ``inputs``, ``others`` and ``flag``."""
    from ..outputs import check_output

    return check_output(path, "overlay", device=device, **kw)


def write_overlay(overlay: Mapping[str, Any], path: str | Path, **kw) -> Path:
    """Write atomically (temp file in the same directory, fsync, rename), after check_writable
    with the overlay's own device."""
    from ..outputs import write_atomic

    return write_atomic(check_writable(path, overlay.get("device"), **kw), dump_overlay(overlay))
