"""The GEMM curve's per-shape residual (GemmResidual): what the fitted curve misses at each measured
shape, and its smoothing length chosen by leave-one-shape-out cross-validation."""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from .curves import (
    RESIDUAL_EXACT_LENGTH_OCTAVES, RESIDUAL_EXACT_PRIOR, RESIDUAL_LENGTHS_OCTAVES, RESIDUAL_PRIORS,
    _gauss_kernel,
)
from .overlay import _Reader, _read_gemm

def _residual_obs(rows, fitted: Mapping[str, Any]):
    """Per GEMM record row: (dtype, (m, n, k), r, s, w), r = log(measured / curve), s = d log(record
    time) / d log(kernel time) under the fitted curve ``fitted`` (a fit_gemm result)."""
    curve = _read_gemm(_Reader("<fit>"), {k: v for k, v in fitted.items() if k != "residual"})
    out = []
    for m, n, k, dt, t, st, w in rows:
        timing = curve.dtypes[dt].timing
        tk = float(curve.kernel_s(m, n, k, dt, mode="stream" if st else "burst"))
        f = timing.stream if st else timing.call
        pred = float(f(tk))
        sens = math.log(float(f(tk * 1.01)) / pred) / math.log(1.01)
        out.append((dt, (m, n, k), math.log(t / pred), sens, w))
    return out


def _residual_points(obs):
    """Sum the observations of each (dtype, shape): {dtype: (x (N, 3), num (N,), den (N,), shapes)}."""
    acc: dict[str, dict[tuple, list[float]]] = {}
    for dt, shape, r, s, w in obs:
        a = acc.setdefault(dt, {}).setdefault(shape, [0.0, 0.0])
        a[0] += w * s * r
        a[1] += w * s * s
    out = {}
    for dt, shapes in acc.items():
        keys = sorted(shapes)
        out[dt] = (np.log2(np.maximum(np.array(keys, float), 1.0)), np.array([shapes[k][0] for k in keys]),
                   np.array([shapes[k][1] for k in keys]), keys)
    return out


def fit_gemm_residual(rows, fitted: Mapping[str, Any]) -> dict | None:
    """The GemmResidual of a GEMM fit (overlay form), its length scale and shrinkage chosen from
    RESIDUAL_LENGTHS_OCTAVES x RESIDUAL_PRIORS by leave-one-shape-out cross-validation (each
    shape's records predicted from the other shapes' residuals). When no pair beats the curve alone
    by 2% in weighted mean |log error|, the correction is kept at the measured shapes only
    (RESIDUAL_EXACT_*): a measured shape is then predicted as measured, any other by the curve."""
    obs = _residual_obs(rows, fitted)
    pts = _residual_points(obs)
    if not pts or sum(len(v[3]) for v in pts.values()) < 4:
        return None
    # each observation's row among the shapes of every dtype, in the order the sums below concatenate them
    dts = sorted(pts)
    row = {(dt, shape): i for i, (dt, shape) in enumerate((dt, shape) for dt in dts for shape in pts[dt][3])}
    gi = np.array([row[(o[0], o[1])] for o in obs])
    r = np.array([o[2] for o in obs])
    s = np.array([o[3] for o in obs])
    w = np.array([o[4] for o in obs])
    base = float(np.sum(w * np.abs(r)) / np.sum(w))
    best = (math.inf, None)
    for length in RESIDUAL_LENGTHS_OCTAVES:
        sums = []
        for dt in dts:
            x, num, den, _ = pts[dt]
            kern = _gauss_kernel(x, x, length)
            np.fill_diagonal(kern, 0.0)  # leave the shape itself out
            sums.append((kern @ num, kern @ den))
        loo_num, loo_den = (np.concatenate(v)[gi] for v in zip(*sums))
        for prior in RESIDUAL_PRIORS:
            cost = float(np.sum(w * np.abs(r - s * loo_num / (prior + loo_den))) / np.sum(w))
            if cost < best[0]:
                best = (cost, (length, prior))
    smoothed = best[0] < base * 0.98
    length, prior = best[1] if smoothed else (RESIDUAL_EXACT_LENGTH_OCTAVES, RESIDUAL_EXACT_PRIOR)
    # cv_mean_abs_log_error: the best smoothing's leave-one-shape-out error, kept or not
    return {"length_octaves": length, "prior": prior, "cv_mean_abs_log_error": best[0], "curve_mean_abs_log_error": base,
            "dtypes": {dt: [[int(a) for a in shape] + [float(nu), float(de)] for shape, nu, de in zip(v[3], v[1], v[2])]
                       for dt, v in pts.items()}}
