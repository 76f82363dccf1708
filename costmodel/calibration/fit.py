"""Fitting the curves to kernel records: Levenberg-Marquardt on log times with a weak prior; GEMM,
bandwidth, attention, host links, collectives, a whole overlay, and the host call-gap offset to
reference records."""
from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Mapping

import numpy as np

from ..bench.records import (
    ATTENTION_OPS, COLLECTIVE_OPS, DTYPE_BYTES, ELEMENTWISE_OPS, GEMM_OPS, HOST_OPS,
    busbw_factor, family, record_time_s, sdpa_flops, stream_time_s,
)
from ..errors import InputError
from .curves import (
    AttentionCurve, BURST_CALLS_TO_MEDIAN, DEFAULT_THROTTLE_S, TILE_CANDIDATES, Timing, pack_s,
    power_limited_s, smoothmax, wave_utilisation,
)
from .defaults import DEFAULT_ATTENTION, DEFAULT_P, DEFAULT_Q, FORMAT, K_HALF_START
from .efficiency import _spec_peaks, default_efficiency
from .overlay import _rounded, efficiency_from_overlay
from .residual import fit_gemm_residual

# Fit settings.
PRIOR_WEIGHT = 0.03  # residual weight of (log parameter - log start): a weak pull, ~3% per e-fold
# Repeatability floor of one record (log-time sigma) in the residual weights: records whose rounds
# agree within ~6% weigh fully, a record whose rounds spread by 50% about a quarter.
SIGMA0 = 0.03


# ------------------------------------------------------------------------------------------------
# Fitting.

def _lm(resid, x0: np.ndarray, iters: int = 200, tol: float = 1e-10) -> np.ndarray:
    """Levenberg-Marquardt on a residual vector function, numeric forward-difference Jacobian."""
    x = np.array(x0, dtype=float)
    r = resid(x)
    cost = float(r @ r)
    lam = 1e-3
    for _ in range(iters):
        J = np.empty((r.size, x.size))
        for j in range(x.size):
            h = 1e-6 * max(1.0, abs(x[j]))
            xp = x.copy()
            xp[j] += h
            J[:, j] = (resid(xp) - r) / h
        A = J.T @ J
        g = J.T @ r
        improved = False
        while lam < 1e12:
            try:
                dx = np.linalg.solve(A + lam * (np.diag(np.diag(A)) + 1e-9 * np.eye(x.size)), -g)
            except np.linalg.LinAlgError:
                lam *= 10
                continue
            xn = x + dx
            rn = resid(xn)
            cn = float(rn @ rn)
            if np.isfinite(cn) and cn < cost:
                improved = True
                done = cost - cn < tol * max(cost, 1e-30)
                x, r, cost = xn, rn, cn
                lam = max(lam / 3, 1e-12)
                break
            lam *= 4
        if not improved or done:
            break
    return x


class _Params:
    """Named parameters in log space, with starting values that double as a weak prior."""

    def __init__(self):
        self.names: list[str] = []
        self.start: list[float] = []

    def add(self, name: str, value: float) -> int:
        self.names.append(name)
        self.start.append(math.log(value))
        return len(self.names) - 1

    def x0(self):
        return np.array(self.start)


def _fit(params: _Params, model, obs: np.ndarray, prior: float = PRIOR_WEIGHT, return_cost: bool = False, weights=None,
         init: Mapping[str, float] | None = None):
    """Fit log(model(exp(x))) to log(obs) (residuals times ``weights``); return {name: value}.
    ``init`` (name -> value) starts the search elsewhere than the starting values, which stay the
    prior's centre (a warm start from a neighbouring fit)."""
    x0 = params.x0()
    lobs = np.log(obs)
    wts = np.ones_like(lobs) if weights is None else np.asarray(weights, float)

    def resid(x):
        with np.errstate(all="ignore"):
            pred = model(np.exp(x))
            r = (np.log(np.maximum(pred, 1e-300)) - lobs) * wts
        r = np.where(np.isfinite(r), r, 50.0)
        return np.concatenate([r, prior * (x - x0)])

    xi = x0 if not init else np.array([math.log(init[n]) if n in init else v for n, v in zip(params.names, x0)])
    x = _lm(resid, xi)
    out = {n: float(v) for n, v in zip(params.names, np.exp(x))}
    if return_cost:
        r = resid(x)[: obs.size]
        return out, float(r @ r)
    return out


def _sigma_weight(sig: float) -> float:
    """Weighted least squares: a record of relative sigma ``sig`` weighs SIGMA0 / sqrt(SIGMA0^2 + sig^2)."""
    return SIGMA0 / math.sqrt(SIGMA0**2 + sig**2)


def repeatability_weight(spread) -> float:
    """Residual weight of a record whose rounds spread by ``spread`` ((max - min) / median): a
    measurement that does not repeat pins the curve less (weighted least squares, sigma ~ spread / 2)."""
    if spread is None:
        return 1.0
    return _sigma_weight(float(spread) / 2.0)


# Median absolute deviation to a normal sigma (1 / Phi^-1(3/4); Rousseeuw & Croux 1993).
MAD_TO_SIGMA = 1.4826


def record_weight(r: Mapping[str, Any], stream: bool = False) -> float:
    """Residual weight of one record. With the rounds' times (``s_rounds``), sigma is their median
    absolute deviation: one disturbed round of five (a host hiccup) leaves the kept median sound and
    should not discount the record, as (max - min) would. Otherwise ``repeatability_weight``."""
    rounds = r.get("s_rounds")
    if not stream and isinstance(rounds, list) and len(rounds) >= 3:
        xs = np.asarray(rounds, dtype=float)
        med = float(np.median(xs))
        if med > 0:
            return _sigma_weight(MAD_TO_SIGMA * float(np.median(np.abs(xs - med))) / med)
    return repeatability_weight(r.get("s_stream_spread" if stream else "s_spread"))


def _gemm_obs(records):
    """(m, n, k, dtype, time, is_stream, weight) rows from GEMM records."""
    rows = []
    for r in records:
        if r.get("op") not in GEMM_OPS + ("cpu_gemm",):
            continue
        dt = r.get("dtype", "fp32")
        if dt not in DTYPE_BYTES:
            continue
        m, n, k = (r["n"],) * 3 if r["op"] == "cpu_gemm" else (r["m"], r["n"], r["k"])
        t = record_time_s(r)
        if t:
            rows.append((m, n, k, dt, t, False, record_weight(r)))
        ts = stream_time_s(r)
        if ts:
            rows.append((m, n, k, dt, ts, True, record_weight(r, stream=True)))
    return rows


def _units(records) -> float | None:
    sms = sorted({r.get("sms") for r in records if r.get("op") in GEMM_OPS and r.get("sms")})
    return float(sms[0]) if len(sms) == 1 else None


def fit_gemm(records, peaks: Mapping[str, float] | None = None, mem_bw: float | None = None) -> dict | None:
    """Fit the GEMM curve; where records say how many multiprocessors the device has (``sms``),
    also choose each dtype's output tile for wave quantisation (coordinate search over
    TILE_CANDIDATES, keeping a tile only when it lowers the residual)."""
    rows = _gemm_obs(records)
    if not rows:
        return None
    units = _units(records)
    dtypes = sorted({r[3] for r in rows})
    tiles = {d: None for d in dtypes}
    best = _fit_gemm_tiles(rows, dtypes, tiles, units, peaks, mem_bw)
    if not units:
        # A CPU (no multiprocessor count): keep an operand-packing phase where it explains the records.
        packed = _fit_gemm_tiles(rows, dtypes, tiles, units, peaks, mem_bw, pack=True)
        if packed["_cost"] < best["_cost"] * 0.98:
            best = packed
    if units:
        for _ in range(2):
            changed = False
            for d in dtypes:
                for cand in TILE_CANDIDATES:
                    if cand == tiles[d]:
                        continue
                    trial = dict(tiles)
                    trial[d] = cand
                    res = _fit_gemm_tiles(rows, dtypes, trial, units, peaks, mem_bw, init=best["_x"])
                    if res["_cost"] < best["_cost"] * 0.98:
                        best, tiles, changed = res, trial, True
            if not changed:
                break
    best.pop("_cost")
    best.pop("_x")
    residual = fit_gemm_residual(rows, best)
    if residual:
        best["residual"] = residual
    return best



def _fit_gemm_tiles(rows, dtypes, tiles, units, peaks, mem_bw, init=None, pack: bool = False) -> dict:
    dtypes = sorted({r[3] for r in rows})
    m = np.array([r[0] for r in rows], float)
    n = np.array([r[1] for r in rows], float)
    k = np.array([r[2] for r in rows], float)
    di = np.array([dtypes.index(r[3]) for r in rows])
    t = np.array([r[4] for r in rows], float)
    st = np.array([r[5] for r in rows], bool)
    w = np.array([r[6] for r in rows], float)
    # The sustained (power-limited) rate is fitted only where records time both isolated bursts and
    # back-to-back calls of compute-bound kernels long enough to draw full power (>= 0.5 ms).
    # With both isolated and back-to-back records, the isolated call's host round trip is fitted on
    # its own (Timing.call_floor_s) rather than tied to the back-to-back launch period.
    split_floor = bool(st.any() and (~st).any())
    power = split_floor and bool(np.any(t > 5e-4))
    e = np.array([DTYPE_BYTES[r[3]] for r in rows], float)
    out_e = np.array([2.0 if r[3] in ("fp8", "int8") else DTYPE_BYTES[r[3]] for r in rows], float)
    flops = 2 * m * n * k
    nbytes = e * (m * k + k * n) + out_e * m * n
    # Starting values: the best rate seen per dtype, the best bytes/s of memory-bound shapes.
    P = _Params()
    ip = {}
    for d in dtypes:
        sel = di == dtypes.index(d)
        best = float(np.max(flops[sel] / t[sel]))
        tmin = float(np.min(t[sel]))
        ip[d] = (P.add(f"P_{d}", best), P.add(f"gap_{d}", max(tmin * 0.5, 1e-7)), P.add(f"floor_{d}", max(tmin * 0.6, 1e-7)),
                 P.add(f"S_{d}", best * 0.85) if power else None,
                 P.add(f"cfloor_{d}", max(float(np.min(t[sel & ~st])) if np.any(sel & ~st) else tmin, 1e-7)) if split_floor else None)
    bw0 = mem_bw or float(np.max(nbytes / t))
    i_bw = P.add("bw", bw0)
    i_k0 = P.add("k0", max(float(np.min(t)) * 0.1, 1e-7))
    i_kh = P.add("k_half", K_HALF_START)
    # One utilisation exponent per tiled dtype: how much faster the tiles of a part-empty last wave
    # run differs between kernel families (SIMT fp32 is compute-bound, tensor-core tiles share HBM/L2).
    i_wa = {d: P.add(f"wave_{d}", 1.0) for d in dtypes if tiles[d] is not None}
    i_p = P.add("p_minus_1", DEFAULT_P - 1)
    i_q = P.add("q_minus_1", DEFAULT_Q - 1)
    i_tau = P.add("tau", DEFAULT_THROTTLE_S) if power else None
    i_pack = P.add("pack_bw", bw0 / 2) if pack else None

    def model(v):
        Pd = np.array([v[ip[d][0]] for d in dtypes])[di]
        gap = np.array([v[ip[d][1]] for d in dtypes])[di]
        floor = np.array([v[ip[d][2]] for d in dtypes])[di]
        wa = np.array([v[i_wa[d]] if d in i_wa else 1.0 for d in dtypes])[di]
        rate = Pd * k / (k + v[i_kh]) * util ** wa
        pp = 1 + v[i_p]
        tk = v[i_k0] + smoothmax(flops / rate, nbytes / v[i_bw], pp)
        if pack:
            tk = tk + pack_s(m, n, k, e, 1.0, v[i_pack])
        if power:
            Sd = np.array([v[ip[d][3]] for d in dtypes])[di]
            tk = np.where(st, power_limited_s(tk, flops, Sd, pp),
                          power_limited_s(tk, flops, Sd, pp, BURST_CALLS_TO_MEDIAN * tk, v[i_tau]))
        ts = smoothmax(floor, tk, 1 + v[i_q])
        if split_floor:
            cfl = np.array([v[ip[d][4]] for d in dtypes])[di]
            return np.where(st, ts, smoothmax(cfl, gap + tk, 1 + v[i_q]))
        return np.where(st, ts, gap + ts)

    util = np.ones_like(m)
    for d in dtypes:
        sel = di == dtypes.index(d)
        util[sel] = wave_utilisation(m[sel], n[sel], tiles[d], units, k[sel])
    fit, cost = _fit(P, model, t, return_cost=True, weights=w, init=init)
    res = {"_cost": cost, "_x": fit,
        "memory_bytes_per_s": fit["bw"],
        "kernel_min_s": fit["k0"],
        "k_half": fit["k_half"],
        "p": 1 + fit["p_minus_1"],
        "q": 1 + fit["q_minus_1"],
        "dtypes": {},
    }
    if units:
        res["units"] = units
    if power:
        res["throttle_s"] = fit["tau"]
    if pack:
        res["pack_bytes_per_s"] = fit["pack_bw"]
    for d in dtypes:
        entry = {"flops_per_s": fit[f"P_{d}"], "call_gap_s": fit[f"gap_{d}"], "stream_floor_s": fit[f"floor_{d}"]}
        if split_floor:
            entry["call_floor_s"] = fit[f"cfloor_{d}"]
        if power and fit[f"S_{d}"] < fit[f"P_{d}"]:
            entry["sustained_flops_per_s"] = fit[f"S_{d}"]
        if tiles[d] is not None:
            entry["tile"] = list(tiles[d])
            entry["wave_exponent"] = fit[f"wave_{d}"]
        if peaks and peaks.get(d):
            entry["efficiency"] = fit[f"P_{d}"] / peaks[d]
        entry["records"] = int(np.sum(di == dtypes.index(d)))
        res["dtypes"][d] = entry
    return res


def fit_bandwidth(records, op: str, q: float = DEFAULT_Q) -> dict | None:
    """A streaming kernel's curve: floor, kernel and call gap around ``bytes / rate``, its
    floor/kernel corner ``q`` given (a GEMM fit's: the same corner, pinned there by many shapes,
    where a bandwidth op has a few sizes)."""
    rows = []
    for r in records:
        if r.get("op") != op or not r.get("bytes"):
            continue
        traffic = r["bytes"] * (2 if op == "mem_copy" else 1)
        t = record_time_s(r)
        if t:
            rows.append((traffic, t, False))
        ts = stream_time_s(r)
        if ts:
            rows.append((traffic, ts, True))
    if len(rows) < 2:
        return None
    B = np.array([r[0] for r in rows], float)
    t = np.array([r[1] for r in rows], float)
    st = np.array([r[2] for r in rows], bool)
    P = _Params()
    i_bw = P.add("bw", float(np.max(B / t)))
    tmin = float(np.min(t))
    i_k0 = P.add("k0", max(tmin * 0.2, 1e-7))
    i_gap = P.add("gap", max(tmin * 0.5, 1e-7))
    i_fl = P.add("floor", max(tmin * 0.6, 1e-7))

    def model(v):
        ts = smoothmax(v[i_fl], v[i_k0] + B / v[i_bw], q)
        return np.where(st, ts, v[i_gap] + ts)

    f = _fit(P, model, t)
    return {"bytes_per_s": f["bw"], "kernel_min_s": f["k0"], "call_gap_s": f["gap"],
            "stream_floor_s": f["floor"], "q": q, "records": len({r[0] for r in rows})}


def fit_attention(records, op: str, mem_bw: float, peak: float | None = None, q: float = DEFAULT_Q,
                  p: float = DEFAULT_P) -> dict | None:
    """A fused attention kernel's curve (AttentionCurve), its compute/memory corner ``p`` and
    floor/kernel corner ``q`` given (a GEMM fit's: the same corners, pinned there by many shapes)."""
    rows = []
    for r in records:
        if r.get("op") != op:
            continue
        base = (r["b"], r["h"], r["s"], r["d"], bool(r.get("causal", True)))
        t = record_time_s(r)
        if t:
            rows.append(base + (t, False))
        ts = stream_time_s(r)
        if ts:
            rows.append(base + (ts, True))
    if len(rows) < 3:
        return None
    b, h, s, d = (np.array([r[i] for r in rows], float) for i in range(4))
    causal = np.array([r[4] for r in rows], bool)
    t = np.array([r[5] for r in rows], float)
    st = np.array([r[6] for r in rows], bool)
    bwd = op == "sdpa_fwd_bwd"
    fl = np.array([sdpa_flops(*r[:4], causal=r[4], backward=bwd) for r in rows])
    P = _Params()
    i_P = P.add("P", float(np.max(fl / t)) * 1.3)
    i_dh = P.add("dh", DEFAULT_ATTENTION[op]["head_dim_half"])
    i_blk = P.add("blk", DEFAULT_ATTENTION[op]["causal_block"])
    i_nc = P.add("nc", 1.1)
    tmin = float(np.min(t))
    i_k0 = P.add("k0", max(tmin * 0.05, 1e-7))
    i_gap = P.add("gap", max(tmin * 0.2, 1e-7))
    i_fl = P.add("floor", max(tmin * 0.3, 1e-7))
    has_nc = bool((~causal).any())

    def model(v):
        c = AttentionCurve(v[i_P], v[i_dh], v[i_blk], v[i_nc] if has_nc else 1.0, mem_bw,
                           Timing(v[i_k0], v[i_gap], v[i_fl], q), p)
        tk = c.kernel_s(b, h, s, d, causal, bwd)
        return np.where(st, c.timing.stream(tk), c.timing.call(tk))

    f = _fit(P, model, t)
    out = {"flops_per_s_max": f["P"], "head_dim_half": f["dh"], "causal_block": f["blk"],
           "noncausal_factor": f["nc"] if has_nc else 1.0, "kernel_min_s": f["k0"], "call_gap_s": f["gap"],
           "stream_floor_s": f["floor"], "p": p, "q": q, "records": len({r[:5] for r in rows})}
    if peak:
        out["efficiency_max"] = f["P"] / peak
    return out


def fit_link(records, op: str, latency_s: float = 0.0) -> dict | None:
    """Latency + bytes / bandwidth of one host link from its copy records; a single record gives
    only the bandwidth, with ``latency_s`` taken as known (None if the record is not longer)."""
    rows = [(r["bytes"], record_time_s(r)) for r in records if r.get("op") == op and r.get("bytes") and record_time_s(r)]
    if not rows:
        return None
    B = np.array([r[0] for r in rows], float)
    t = np.array([r[1] for r in rows], float)
    if len(rows) == 1:
        if t[0] <= latency_s:
            return None
        return {"bytes_per_s": float(B[0] / (t[0] - latency_s)), "latency_s": latency_s, "records": 1}
    P = _Params()
    i_bw = P.add("bw", float(np.max(B / t)))
    i_l = P.add("lat", max(float(np.min(t)) * 0.3, 1e-7))
    f = _fit(P, lambda v: v[i_l] + B / v[i_bw], t)
    return {"bytes_per_s": f["bw"], "latency_s": f["lat"], "records": len(rows)}


def fit_collectives(records) -> dict:
    """{op: {world: {alpha_s, busbw_bytes_per_s}}} from collective records (isolated-call times)."""
    out: dict[str, dict[int, dict]] = {}
    groups: dict[tuple[str, int], list] = {}
    for r in records:
        if r.get("op") in COLLECTIVE_OPS and r.get("bytes") and r.get("s") and r.get("world"):
            groups.setdefault((r["op"], int(r["world"])), []).append((float(r["bytes"]), float(r["s"])))
    for (op, w), rows in sorted(groups.items()):
        if len(rows) < 2:
            continue
        B = np.array([r[0] for r in rows])
        t = np.array([r[1] for r in rows])
        f = busbw_factor(op, w)
        P = _Params()
        i_a = P.add("alpha", float(np.min(t)))
        i_b = P.add("busbw", float(np.max(B * f / t)))
        fit = _fit(P, lambda v: v[i_a] + B * f / v[i_b], t)
        out.setdefault(op, {})[w] = {"alpha_s": fit["alpha"], "busbw_bytes_per_s": fit["busbw"], "records": len(rows),
                                     "bytes_range": [int(B.min()), int(B.max())]}
    return out


def fit_overlay(records: list[dict], *, device: str | None = None, spec=None, meta: Mapping[str, Any] | None = None) -> dict:
    """Fit every kernel family present in ``records``; return the overlay as a plain dict."""
    if not records:
        raise InputError("no kernel records to fit", field="records")
    if device is None:
        ids = sorted({r.get("hardware") for r in records if r.get("hardware")})
        device = ids[0] if len(ids) == 1 else (spec.id if spec is not None else "unknown")
    peaks = _spec_peaks(spec) if spec is not None else {}
    ov: dict[str, Any] = {"format": FORMAT, "device": device,
                          "created": _dt.date.today().isoformat()}
    if meta:
        ov["measured"] = dict(meta)
    gemm = fit_gemm(records, peaks)
    # one compute/memory corner p and one floor/kernel corner q per device: the GEMM fit's, where there is one
    q = gemm["q"] if gemm else DEFAULT_Q
    p_corner = gemm["p"] if gemm else DEFAULT_P
    copy = fit_bandwidth(records, "mem_copy", q)
    read = fit_bandwidth(records, "mem_read", q)
    mem = {}
    if copy:
        mem["copy"] = copy
    if read:
        mem["read"] = read
    if gemm:
        ov["gemm"] = gemm
    if mem:
        ov["memory"] = mem
    elem = {op: f for op in ELEMENTWISE_OPS if (f := fit_bandwidth(records, op, q))}
    if elem:
        ov["elementwise"] = elem
    mem_bw = (copy or {}).get("bytes_per_s") or (gemm or {}).get("memory_bytes_per_s") or 1e12
    att = {op: f for op in ATTENTION_OPS if (f := fit_attention(records, op, mem_bw, peaks.get("bf16"), q, p_corner))}
    if att:
        ov["attention"] = att
    host = {op: f for op in HOST_OPS if (f := fit_link(records, op))}
    if host:
        ov["host"] = host
    coll = fit_collectives(records)
    if coll:
        ov["collectives"] = coll
    floors = [v["stream_floor_s"] for v in mem.values()] + [v["stream_floor_s"] for v in elem.values()]
    if floors:
        ov["launch_overhead_s"] = float(min(floors))
    return _rounded(ov)


def fit_call_gap_offset(overlay: Mapping[str, Any], records: list[dict], spec=None) -> float:
    """One offset (seconds) added to every isolated-call gap of ``overlay`` that best predicts
    ``records`` (isolated calls timed on another host: the gap is host dispatch, sync and event
    latency, which differs between hosts by 10-15 us, while the GPU curves carry over).
    Minimises the mean squared log error over the GEMM and bandwidth records, within -30..+30 us."""
    base = default_efficiency(spec) if spec is not None else None
    recs = [r for r in records if family(r.get("op", "")) in ("gemm", "bandwidth") and r.get("op") != "cpu_gemm" and record_time_s(r)]
    if not recs:
        return 0.0
    meas = np.log([record_time_s(r) for r in recs])

    def cost(delta):
        eff = efficiency_from_overlay(with_call_gap_offset(overlay, delta), "<offset>", base)
        pred = [eff.predict_record_s(r) for r in recs]
        return float(np.mean([(math.log(max(pp, 1e-12)) - m) ** 2 for pp, m in zip(pred, meas) if pp]))

    grid = np.linspace(-30e-6, 30e-6, 61)
    best = min(grid, key=cost)
    fine = np.linspace(best - 1e-6, best + 1e-6, 21)
    return float(min(fine, key=cost))


def reference_host_links(overlay: Mapping[str, Any], records: list[dict]) -> dict[str, dict]:
    """Host-link fits (``host.<op>``) for the host copies among ``records`` (timed on another
    host): the host, not the GPU, sets a copy's rate (a pageable copy is staged through a pinned
    buffer by the CPU: 7-11 GB/s on the machines we ran, 16.8 on the public file's), so where
    reference records time host copies their host's link replaces the one fitted here. One record
    of an op keeps the fitted latency and solves for the bandwidth; several are fitted as usual."""
    have = overlay.get("host") or {}
    fits = {op: fit_link(records, op, float((have.get(op) or {}).get("latency_s", 0.0))) for op in HOST_OPS}
    return {op: f for op, f in fits.items() if f is not None}


def with_call_gap_offset(overlay: Mapping[str, Any], delta_s: float) -> dict:
    """A copy of ``overlay`` with ``delta_s`` added to every ``call_gap_s`` and ``call_floor_s``
    (never below zero): another host's dispatch shifts both the isolated call's start latency and
    its round trip."""
    import copy

    ov = copy.deepcopy(dict(overlay))

    def walk(o):
        if isinstance(o, dict):
            for key in ("call_gap_s", "call_floor_s"):
                if key in o:
                    o[key] = max(0.0, float(o[key]) + delta_s)
            for v in o.values():
                walk(v)

    for key in ("gemm", "memory", "elementwise", "attention"):
        if key in ov:
            walk(ov[key])
    return ov
