"""Unit parsing and formatting. Every expected value is computed by hand from the definition of
the unit (IEC 80000-13 binary prefixes, SI decimal prefixes, 8 bits per byte), never copied from
the code's output."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from costmodel.units import (  # noqa: E402
    Bytes,
    BytesPerSec,
    FlopsPerSec,
    Seconds,
    Watts,
    fmt_bytes,
    fmt_si,
    fmt_time,
    parse_bandwidth,
    parse_bytes,
    parse_flops,
    parse_power,
    parse_time,
)


# ------------------------------------------------------------------------------- bytes

@pytest.mark.parametrize(
    "text, expected",
    [
        ("80 GiB", 80 * 2**30),            # 85,899,345,920 B
        ("40 GB", 40 * 10**9),
        ("1 KiB", 1024),
        ("1 kB", 1000),
        ("512 MiB", 512 * 2**20),
        ("81559 MiB", 81559 * 1048576),    # H100 as nvidia-smi reports it: 85,520,809,984 B
        ("1.5 TiB", 1.5 * 2**40),
        ("3.84 TB", 3.84e12),
        ("2 PiB", 2 * 2**50),
        ("7 B", 7),
        ("64 bytes", 64),
        ("  16GiB  ", 16 * 2**30),         # no space between number and unit, padding ignored
        ("1e3 MB", 1e9),                   # scientific notation
        (".5 GiB", 2**29),
    ],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == pytest.approx(expected, rel=1e-15)


def test_binary_and_decimal_prefixes_differ_by_hand_computed_ratio():
    # 1 GiB / 1 GB = 2**30 / 10**9 = 1.073741824
    assert parse_bytes("1 GiB") / parse_bytes("1 GB") == pytest.approx(1.073741824, rel=1e-15)


@pytest.mark.parametrize("text", ["80 GHz", "80", "80 Gb", "GiB", "80 GiB/s", "eighty GiB", "80 XB", ""])
def test_parse_bytes_rejects(text):
    with pytest.raises(ValueError):
        parse_bytes(text)


# ---------------------------------------------------------------------------- bandwidth

@pytest.mark.parametrize(
    "text, expected",
    [
        ("400 Gb/s", 5e10),          # 400e9 bits / 8 = 50 GB/s
        ("200 Gb/s", 2.5e10),
        ("100 Gbit/s", 1.25e10),
        ("4800 Gbps", 6e11),         # TPU v5p ICI, per direction: 600 GB/s
        ("3.35 TB/s", 3.35e12),
        ("900 GB/s", 9e11),
        ("1 GiB/s", 2**30),
        ("2575 GiB/s", 2575 * 2**30),  # = 2.765e12 B/s, Google's two ways of writing v5p HBM bandwidth
        ("7000 MB/s", 7e9),
        ("10 Mbps", 1.25e6),
        ("1 kB/s", 1000),
    ],
)
def test_parse_bandwidth(text, expected):
    assert parse_bandwidth(text) == pytest.approx(expected, rel=1e-15)


def test_tpu_v5p_hbm_bandwidth_two_spellings_agree():
    # Google's v5p table gives 2765 GBps in one version and 2575 GiBps in another:
    # 2575 * 2**30 = 2.7649e12, within 0.01 % of 2.765e12.
    assert parse_bandwidth("2575 GiB/s") == pytest.approx(parse_bandwidth("2765 GB/s"), rel=1e-4)


@pytest.mark.parametrize("text", ["3 TB", "400 Gb", "5 GHz", "fast", "3 TFLOP/s", "12 GB/min"])
def test_parse_bandwidth_rejects(text):
    with pytest.raises(ValueError):
        parse_bandwidth(text)


# -------------------------------------------------------------------------------- flops

@pytest.mark.parametrize(
    "text, expected",
    [
        ("989.4 TFLOP/s", 9.894e14),
        ("1979 TOPS", 1.979e15),
        ("2 PFLOP/s", 2e15),
        ("19.5 TFLOPS", 1.95e13),
        ("275 TOPS", 2.75e14),
        ("1 GFLOP/s", 1e9),
        ("3 OP/s", 3.0),
    ],
)
def test_parse_flops(text, expected):
    assert parse_flops(text) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("text", ["989 TB/s", "989 T", "989", "1 TiFLOP/s"])
def test_parse_flops_rejects(text):
    with pytest.raises(ValueError):
        parse_flops(text)


# ----------------------------------------------------------------------- power and time

@pytest.mark.parametrize("text, expected", [("700 W", 700.0), ("10.2 kW", 10200.0), ("1.5 MW", 1.5e6)])
def test_parse_power(text, expected):
    assert parse_power(text) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize(
    "text, expected",
    [("5 us", 5e-6), ("5 µs", 5e-6), ("2 ms", 2e-3), ("3 ns", 3e-9), ("1 s", 1.0), ("1.5 min", 90.0), ("2 h", 7200.0)],
)
def test_parse_time(text, expected):
    assert parse_time(text) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("parse, text", [(parse_power, "700"), (parse_power, "700 J"), (parse_time, "5"), (parse_time, "5 days")])
def test_parse_power_and_time_reject(parse, text):
    with pytest.raises(ValueError):
        parse(text)


# ------------------------------------------------------------- pydantic quantity types

def test_quantity_types_parse_strings_to_base_units():
    assert TypeAdapter(Bytes).validate_python("80 GiB") == 80 * 2**30
    assert TypeAdapter(BytesPerSec).validate_python("400 Gb/s") == 5e10
    assert TypeAdapter(FlopsPerSec).validate_python("312 TFLOP/s") == pytest.approx(3.12e14, rel=1e-15)
    assert TypeAdapter(Watts).validate_python("400 W") == 400.0
    assert TypeAdapter(Seconds).validate_python("5 us") == pytest.approx(5e-6, rel=1e-15)


def test_python_callers_may_pass_base_unit_numbers():
    assert TypeAdapter(Bytes).validate_python(1024) == 1024.0
    assert TypeAdapter(BytesPerSec).validate_python(5e10) == 5e10


def test_bare_numbers_rejected_when_units_required():
    # Spec loaders validate with this context: a bare 80 could be GB, GiB or bytes.
    with pytest.raises(ValidationError, match="bare number"):
        TypeAdapter(Bytes).validate_python(80, context={"units_required": True})


@pytest.mark.parametrize(
    "typ, text",
    [(Bytes, "-80 GiB"), (Bytes, "0 GiB"), (BytesPerSec, "-5 TB/s"), (BytesPerSec, "0 GB/s"),
     (FlopsPerSec, "0 TFLOP/s"), (Watts, "-1 W"), (Seconds, "-2 us")],
)
def test_negative_and_zero_quantities_rejected(typ, text):
    with pytest.raises(ValidationError, match="positive"):
        TypeAdapter(typ).validate_python(text)


def test_zero_latency_allowed():
    assert TypeAdapter(Seconds).validate_python("0 us") == 0.0


@pytest.mark.parametrize("value", [True, None, [80], {"v": 80}])
def test_non_string_non_number_rejected(value):
    with pytest.raises(ValidationError):
        TypeAdapter(Bytes).validate_python(value)


# ------------------------------------------------------------------------- formatting

def test_fmt_bytes():
    assert fmt_bytes(80 * 2**30) == "80.00 GiB"
    assert fmt_bytes(1.5 * 2**40) == "1.50 TiB"
    assert fmt_bytes(512) == "512 B"
    assert fmt_bytes(3 * 2**20) == "3.00 MiB"


def test_fmt_si():
    assert fmt_si(3.35e12, "B/s") == "3.35 TB/s"
    assert fmt_si(9.894e14, "FLOP/s") == "989 TFLOP/s"
    assert fmt_si(5e10, "B/s") == "50 GB/s"
    assert fmt_si(12.0, "W") == "12 W"


def test_fmt_time():
    assert fmt_time(5e-6) == "5.0 us"
    assert fmt_time(2.5e-3) == "2.500 ms"
    assert fmt_time(1.25) == "1.250 s"
    assert fmt_time(90) == "1.5 min"
    assert fmt_time(7200) == "2.00 h"
    assert fmt_time(3 * 86400) == "3.0 d"
