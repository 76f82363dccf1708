"""The held-back check of ``costmodel calibrate --check``: hold back a fraction of the measured
shapes, fit the rest, report the held-back error."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from ..bench.records import ATTENTION_OPS, COLLECTIVE_OPS, FAMILIES, GEMM_OPS, family, record_time_s, stream_time_s
from .efficiency import DeviceEfficiency, default_efficiency
from .fit import fit_overlay
from .overlay import efficiency_from_overlay

HOLDOUT_FRACTION = 0.25  # shapes held back per series by --check


# ------------------------------------------------------------------------------------------------
# Held-back check.

def _series_key(r: dict):
    op = r.get("op")
    if op == "gemm":
        return (op, r.get("dtype"))
    if op == "gemm_llm":
        return (op, r.get("dtype"), r.get("n"), r.get("k"))
    if op in ATTENTION_OPS:
        return (op, r.get("d"), r.get("causal", True))
    if op in COLLECTIVE_OPS:
        return (op, r.get("world"))
    return (op,)


def _size_key(r: dict) -> float:
    op = r.get("op")
    if op in GEMM_OPS:
        return float(r["m"]) * r["n"] * r["k"]
    if op in ATTENTION_OPS:
        return float(r["b"]) * r["h"] * r["s"] ** 2 * r["d"]
    return float(r.get("bytes") or r.get("n") or 0)


def _shape_key(r: dict) -> tuple:
    ks = ("op", "dtype", "m", "n", "k", "bytes", "b", "h", "d", "causal", "world") + (("s",) if r.get("op") in ATTENTION_OPS else ())
    return tuple((k, r.get(k)) for k in ks if k in r)


def split_holdout(records: list[dict], fraction: float = HOLDOUT_FRACTION, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Hold back ``fraction`` of the interior shapes of each series (never its smallest or largest
    size, so held-back shapes are interpolated, as a shape the calibration did not run would be).
    Every record of a held-back shape is held back (repeated runs of one shape stay together)."""
    rng = np.random.default_rng(seed)
    series: dict[tuple, dict[tuple, float]] = {}
    for r in records:
        series.setdefault(_series_key(r), {})[_shape_key(r)] = _size_key(r)
    held: set[tuple] = set()
    for key, shapes in sorted(series.items(), key=lambda kv: str(kv[0])):
        order = sorted(shapes, key=lambda sk: (shapes[sk], str(sk)))
        interior = order[1:-1]
        if len(interior) < 2:
            continue
        k = max(1, int(round(fraction * len(order))))
        k = min(k, (len(interior) + 1) // 2)
        for i in rng.choice(len(interior), size=k, replace=False):
            held.add(interior[int(i)])
    return [r for r in records if _shape_key(r) not in held], [r for r in records if _shape_key(r) in held]


@dataclass
class CheckResult:
    rows: list[dict] = field(default_factory=list)  # op, shape, measured_s, predicted_s, error

    def summary(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for fam in FAMILIES:
            errs = [abs(r["error"]) for r in self.rows if r["family"] == fam]
            if errs:
                out[fam] = {"n": len(errs), "median_abs_error": float(np.median(errs)), "max_abs_error": float(max(errs))}
        return out


def compare(eff: DeviceEfficiency, records: Iterable[dict], stream: bool = False) -> CheckResult:
    """Prediction error of ``eff`` on each record (prediction / measurement - 1)."""
    res = CheckResult()
    for r in records:
        meas = stream_time_s(r) if stream else record_time_s(r)
        if not meas:
            continue
        pred = eff.predict_record_s(r, stream=stream)
        if pred is None:
            continue
        res.rows.append({"op": r["op"], "family": family(r["op"]), "shape": describe(r), "measured_s": meas, "predicted_s": pred,
                         "error": pred / meas - 1.0})
    return res


def describe(r: dict) -> str:
    op = r.get("op")
    if op in GEMM_OPS:
        return f"{r.get('dtype')} {r['m']}x{r['n']}x{r['k']}"
    if op == "cpu_gemm":
        return f"{r.get('dtype', 'fp32')} {r['n']}^3"
    if op in ATTENTION_OPS:
        return f"b{r['b']} h{r['h']} s{r['s']} d{r['d']}{'' if r.get('causal', True) else ' full'}"
    if op in COLLECTIVE_OPS:
        return f"{r['bytes']} B x{r['world']}"
    return f"{r.get('bytes')} B"


def holdout_checks(records: list[dict], *, splits: int, fraction: float = HOLDOUT_FRACTION, seed: int = 0, spec=None,
                   device: str | None = None, on_split=None) -> tuple[CheckResult, CheckResult | None]:
    """``holdout_check`` over ``splits`` random splits (seeds seed .. seed + splits - 1), every
    held-back row kept (tagged with its ``seed``): one split's maximum is a sample of one, and a
    shape held back in several splits is counted in each. ``on_split(i)`` is called after each."""
    iso_all, st_all = CheckResult(), CheckResult()
    for i in range(splits):
        _, iso, st = holdout_check(records, fraction=fraction, seed=seed + i, spec=spec, device=device)
        iso_all.rows += [dict(r, seed=seed + i) for r in iso.rows]
        if st is not None:
            st_all.rows += [dict(r, seed=seed + i) for r in st.rows]
        if on_split is not None:
            on_split(i)
    return iso_all, (st_all if st_all.rows else None)


def holdout_check(records: list[dict], *, fraction: float = HOLDOUT_FRACTION, seed: int = 0, spec=None,
                  device: str | None = None) -> tuple[dict, CheckResult, CheckResult | None]:
    """Fit on all but the held-back shapes; return (overlay fitted on the rest, isolated-call errors,
    back-to-back errors where the records have them)."""
    train, held = split_holdout(records, fraction, seed)
    ov = fit_overlay(train, device=device, spec=spec)
    eff = efficiency_from_overlay(ov, "<held-back fit>", default_efficiency(spec) if spec is not None else None)
    iso = compare(eff, held)
    st = compare(eff, held, stream=True)
    return ov, iso, (st if st.rows else None)
