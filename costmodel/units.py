"""Parse quantities with units from spec strings ("80 GiB", "3.35 TB/s", "989 TFLOP/s").

Everything is converted to SI base units: bytes, bytes/s, FLOP/s, watts, seconds.
Decimal prefixes (k, M, G, T, P, E) are powers of 1000; binary prefixes (Ki, Mi, Gi, Ti, Pi)
powers of 1024, as in IEC 80000-13. Bit rates ("400 Gb/s", "Gbit/s") are divided by 8.
"""
from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator

_DEC = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_BIN = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0}

_NUM = r"(?P<num>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)"
_RE = re.compile(rf"^\s*{_NUM}\s*(?P<unit>\S.*?)?\s*$")


def _split(text: str) -> tuple[float, str]:
    m = _RE.match(text)
    if not m:
        raise ValueError(f"cannot read a number with a unit from {text!r}")
    num = float(m.group("num"))
    if not math.isfinite(num):
        raise ValueError(f"{m.group('num')} in {text!r} is too large to be a number")
    return num, (m.group("unit") or "").strip()


def _finite(value: float, text: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is too large to be a number")
    return value


def _prefix(p: str) -> float:
    if p in _BIN:
        return _BIN[p]
    if p in _DEC:
        return _DEC[p]
    raise ValueError(f"unknown unit prefix {p!r}")


def parse_bytes(text: str) -> float:
    """'80 GiB' -> 85899345920.0; '40 GB' -> 4e10."""
    num, unit = _split(text)
    m = re.fullmatch(r"(Ki|Mi|Gi|Ti|Pi|[kKMGTPE]?)(B|bytes?)", unit)
    if not m:
        raise ValueError(f"expected a size like '80 GiB' or '40 GB', got {text!r}")
    return _finite(num * _prefix(m.group(1)), text)


def parse_bandwidth(text: str) -> float:
    """'3.35 TB/s' -> 3.35e12 bytes/s; '400 Gb/s' (bits) -> 5e10 bytes/s."""
    num, unit = _split(text)
    m = re.fullmatch(r"(Ki|Mi|Gi|Ti|Pi|[kKMGTPE]?)(B|b|bit|byte)(?:/s|ps)", unit)
    if not m:
        raise ValueError(f"expected a bandwidth like '3.35 TB/s' or '400 Gb/s', got {text!r}")
    scale = _prefix(m.group(1))
    if m.group(2) in ("b", "bit"):
        scale /= 8.0
    return _finite(num * scale, text)


def parse_flops(text: str) -> float:
    """'989 TFLOP/s' -> 9.89e14; '1979 TOPS' (integer ops) -> 1.979e15."""
    num, unit = _split(text)
    m = re.fullmatch(r"([kKMGTPE]?)(FLOP/s|FLOPS|flop/s|OP/s|OPS)", unit)
    if not m:
        raise ValueError(f"expected a rate like '989 TFLOP/s' or '1979 TOPS', got {text!r}")
    return _finite(num * _prefix(m.group(1)), text)


def parse_power(text: str) -> float:
    """'700 W' -> 700.0; '10.2 kW' -> 10200.0."""
    num, unit = _split(text)
    m = re.fullmatch(r"([kM]?)W", unit)
    if not m:
        raise ValueError(f"expected a power like '700 W', got {text!r}")
    return _finite(num * _prefix(m.group(1)), text)


def parse_time(text: str) -> float:
    """'5 us' -> 5e-6 seconds."""
    num, unit = _split(text)
    if unit not in _TIME:
        raise ValueError(f"expected a time like '5 us' or '2 ms', got {text!r}")
    return _finite(num * _TIME[unit], text)


def _validator(parse, example: str, allow_zero: bool = True):
    def check(v, info):
        if isinstance(v, bool):
            raise ValueError(f"expected a string with a unit like '{example}'")
        if isinstance(v, (int, float)):
            # Numbers are accepted only from Python callers who already hold base units;
            # YAML specs must spell the unit (a bare number in a spec is a likely mistake):
            # spec loaders validate with context {"units_required": True}.
            if info.context and info.context.get("units_required"):
                raise ValueError(f"a bare number has no unit; write it with one, like '{example}'")
            value = float(v)
        elif isinstance(v, str):
            value = parse(v)
        else:
            raise ValueError(f"expected a string with a unit like '{example}'")
        if not math.isfinite(value):  # "1e308 PB/s" overflows once scaled; inf from Python callers
            raise ValueError(f"{v!r} is not a finite quantity")
        if value < 0 or (value == 0 and not allow_zero):
            raise ValueError(f"must be positive, like '{example}'")
        return value

    return BeforeValidator(check)


Bytes = Annotated[float, _validator(parse_bytes, "80 GiB", allow_zero=False)]
BytesPerSec = Annotated[float, _validator(parse_bandwidth, "3.35 TB/s", allow_zero=False)]
FlopsPerSec = Annotated[float, _validator(parse_flops, "989 TFLOP/s", allow_zero=False)]
Watts = Annotated[float, _validator(parse_power, "700 W", allow_zero=False)]
Seconds = Annotated[float, _validator(parse_time, "5 us")]


def fmt_bytes(n: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def fmt_si(x: float, unit: str) -> str:
    for p, s in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= s:
            return f"{x / s:.3g} {p}{unit}"
    return f"{x:.3g} {unit}"


def fmt_time(s: float) -> str:
    if s >= 86400 * 2:
        return f"{s / 86400:.1f} d"
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.1f} us"
