"""Fit a composed framework profile's few bounded parameters to measured training steps.

Every run's terms (costmodel.steptime.StepTerms: what the hardware and the layout cost) are
computed once; the fit then composes them for each trial of parameters, on arrays, so hundreds of
runs and hundreds of trials take seconds. The objective is the error a user reads, predicted /
measured - 1, under a robust soft-L1 loss (nearly the mean absolute relative error): a run that
stalled for reasons outside the model (a hung network, a straggler: it is then measured several
times slower than its layout's physics) counts little more than a run missed by 100%, and does not
drag every parameter. (Fitting log errors instead lets such runs pull the compute scale up by
15%: on the Playbook file median error 24.6% against 17.9%.) The solver is
scipy.optimize.least_squares (trust-region reflective, within the bounds).

Besides the profile's parameters the fit may move the cluster's cross-node ring step latency
(``cluster.step_latency``), where no nccl-tests logs pinned it.

Where the runs show the cluster stalling its cross-node pipeline sends (specs.PipelineStall:
whole runs slower by the same time per cross-node send in every pipeline slot), the parameters are
fitted on the model without stalls first; the stall's time per send is then the median excess per
send of the runs that stalled, and its chance by node count a maximum-likelihood fit of which runs
stalled (fit_pipeline_stall).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from . import frameworks, steptime
from .errors import InputError

STEP_LATENCY = "cluster.step_latency"
STEP_LATENCY_BOUNDS = (2e-6, 5e-3)
# The step latency is fitted only from at least this many runs over more than one node; with fewer
# the start's stays (fitted to 16 random Playbook runs of one model it moved from 79 us to 360-400
# us in 2 of 12 draws, and the model's other runs were then predicted at 37-53% against 20-29%)
LATENCY_MIN_RUNS = 50
# The step latency is a scale spanning decades: the fit moves its logarithm, so its prior counts a
# move by a factor (x5 costs as much as a run missed by ln 5 / ln(5e-3 / 2e-6) = 21%), not by
# seconds across the bounds' width (where x5 from 80 us would cost 6%: 16 runs then moved it to
# 400 us).
# The soft-L1 loss turns from quadratic to linear at this relative error.
ROBUST_SCALE = 0.1
# The start profile as a prior: each parameter's move, in units of its bounds' width, counts as a run
# missed by PRIOR_WEIGHT x that fraction. A handful of runs then moves only what they pin down (16
# runs cannot identify nine parameters: fitted to 16 random Playbook runs of one model from the shipped
# profile, the other runs are predicted at 32-39% mean error with it, 39-41% at weight 0.3, and 45-49%
# from neutral values without it); hundreds of runs outweigh the prior.
PRIOR_WEIGHT = 1.0
# A run counts as stalled where it is slower than the model without stalls by more than half the
# stall's time per cross-node pipeline send and receive (this to start, then half the fitted time).
# On the Playbook's runs the excess per send is 0.2-0.25 s on the runs that stalled and within
# +-0.05 s on the others.
STALL_START_S_PER_OP = 0.1
# at least this many stalled runs, and runs that could stall, before a stall's time is fitted
STALL_MIN_RUNS = 5
# ... and this many runs that could stall, over at least STALL_MIN_NODE_COUNTS node counts, before
# its chance by node count is (three coefficients); with fewer the start profile's chance stays (16
# random Playbook runs of one model, 7 of them stalled, put the base rate at 0.33 where the 1,017
# runs put it at 0.13)
STALL_CHANCE_MIN_RUNS = 100
STALL_MIN_NODE_COUNTS = 3
# bounds of the stall chance's fit (specs.PipelineStall)
STALL_BOUNDS = {"base_rate": (0.0, 0.5), "onset_nodes": (1.0, 1e4), "onset_width": (0.5, 20.0)}


@dataclass
class RunSet:
    """The measured runs of one framework and their terms."""

    names: list[str]
    groups: list[str]  # "<model>/<devices>", for ranking
    measured: np.ndarray
    terms: steptime.StepTerms


@dataclass
class FitResult:
    values: dict[str, float]
    step_latency_s: float | None
    n: int
    mape: float  # mean |relative error| on the runs fitted
    median_ape: float
    mape_before: float
    holdout_mape: float | None = None  # k-fold: each run predicted by a fit that did not see it
    folds: int = 0
    predicted: np.ndarray | None = field(default=None, repr=False)
    pipeline_stall: dict | None = None  # specs.PipelineStall's fields, where the runs show stalls
    stalled: int = 0  # runs counted as stalled
    latency_fitted: bool = False  # step_latency_s fitted (else the start profile's, or None)

    def summary(self) -> dict:
        return {"n": self.n, "mape": self.mape, "median_ape": self.median_ape, "mape_before": self.mape_before,
                "holdout_mape": self.holdout_mape, "folds": self.folds, "values": self.values,
                "step_latency_s": self.step_latency_s, "latency_fitted": self.latency_fitted,
                "pipeline_stall": self.pipeline_stall,
                "stalled_runs": self.stalled}


def run_set(records: list[tuple[str, dict]], profile: frameworks.FrameworkProfile, lib=None,
            calibration: str | None = None) -> RunSet:
    """Terms of every train record with a measured step time, timed as ``profile``'s framework."""
    from .specs import load_library
    from .training import estimate_train
    from .validate import group_key, train_inputs

    lib = lib or load_library()
    names, groups, meas, terms = [], [], [], []
    for where, rec in records:
        if rec.get("kind") not in ("train", "published"):
            continue
        from .record_schema import check_record

        check_record(rec, where)  # a wrong type or range is an error naming the line, not a skipped run
        m = (rec.get("measured") or {}).get("step_seconds")
        if not isinstance(m, (int, float)) or isinstance(m, bool) or not math.isfinite(m) or m <= 0:
            continue
        try:
            model, spec, node, par, job = train_inputs(
                rec, lib, where, profile.base, profile.id if profile.id in frameworks.builtin_profiles() else None)
        except KeyError as exc:
            raise InputError(f"missing required field {exc.args[0]!r}", file=where, field=str(exc.args[0])) from None
        est = estimate_train(model, spec, job, par, node=node, calibration=calibration, profile=profile)
        names.append(rec.get("name", where))
        groups.append(group_key(rec))
        meas.append(float(m))
        terms.append(est.terms)
    if not terms:
        raise InputError("no train records with a measured step_seconds to fit", field="measured.step_seconds")
    return RunSet(names, groups, np.array(meas), steptime.StepTerms.stack(terms))


def _free(profile: frameworks.FrameworkProfile, fit_latency: bool) -> list[str]:
    names = [k for k in frameworks.COMPOSED_PARAMETERS
             if profile.parameters[k].bounds[0] < profile.parameters[k].bounds[1]]
    return names + ([STEP_LATENCY] if fit_latency else [])


def predict(runs: RunSet, profile: frameworks.FrameworkProfile, values: dict[str, float] | None = None,
            step_latency_s: float | None = None, terms: steptime.StepTerms | None = None) -> np.ndarray:
    p = {k: v.value for k, v in profile.parameters.items()}
    p.update(values or {})
    t = runs.terms if terms is None else terms
    return np.asarray(steptime.compose(t, p, step_latency_s, profile.settings.cuda_graphs).total_s, dtype=float)


def without_stall(terms: steptime.StepTerms) -> steptime.StepTerms:
    return replace(terms, stall_slot_s=None, stall_p=None)


def with_stall(terms: steptime.StepTerms, stall) -> steptime.StepTerms:
    """``terms`` on a cluster of pipeline stall ``stall`` (a specs.PipelineStall, or None: none)."""
    slot_s, p = steptime.pipeline_stall_terms(stall, terms.stall_ops_slot, terms.nodes)
    return replace(terms, stall_slot_s=slot_s, stall_p=p)


def _subset(terms: steptime.StepTerms, idx: np.ndarray) -> steptime.StepTerms:
    return steptime.StepTerms(**{k: (v[idx] if isinstance(v, np.ndarray) else v) for k, v in vars(terms).items()})


def fit_pipeline_stall(terms: steptime.StepTerms, measured: np.ndarray, unstalled: np.ndarray, start=None):
    """(specs.PipelineStall or None, stalled runs) from runs' measured steps and their prediction
    without stalls (module docstring). None where fewer than STALL_MIN_RUNS runs stalled or could;
    the chance by node count is ``start``'s (a specs.PipelineStall) where too few runs pin it down
    (STALL_CHANCE_MIN_RUNS), and then None without a start."""
    from scipy.optimize import minimize

    from .specs import PipelineStall

    ops = np.broadcast_to(np.asarray(terms.stall_ops_slot, dtype=float), measured.shape)
    slots = np.asarray(terms.n_micro, dtype=float) + np.asarray(terms.pp, dtype=float) - 1.0
    can = ops > 0
    if can.sum() < STALL_MIN_RUNS:
        return None, 0
    per_op = np.where(can, (measured - unstalled) / np.maximum(slots * ops, 1e-30), 0.0)
    stalled = can & (per_op > STALL_START_S_PER_OP)
    for _ in range(5):  # the split settles in two or three rounds
        if stalled.sum() < STALL_MIN_RUNS:
            return None, int(stalled.sum())
        delta = float(np.median(per_op[stalled]))
        new = can & (per_op > 0.5 * delta)
        if np.array_equal(new, stalled):
            break
        stalled = new
    nodes = np.broadcast_to(np.asarray(terms.nodes, dtype=float), measured.shape)[can]
    if can.sum() < STALL_CHANCE_MIN_RUNS or len(np.unique(nodes)) < STALL_MIN_NODE_COUNTS:
        if start is None:
            return None, int(stalled.sum())
        return start.model_copy(update={"seconds_per_op_s": delta}), int(stalled.sum())
    y = stalled[can].astype(float)
    (b_lo, b_hi), (n_lo, n_hi), (w_lo, w_hi) = (STALL_BOUNDS[k] for k in ("base_rate", "onset_nodes", "onset_width"))

    def nll(x):
        base, log_onset, width = x
        p = base + (1.0 - base) / (1.0 + np.exp(width * (log_onset - np.log(nodes))))
        p = np.clip(p, 1e-9, 1.0 - 1e-9)
        return -float(np.sum(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))

    x0 = np.array([min(max(y.mean() / 2, b_lo), b_hi * 0.9), np.log(np.median(nodes[y > 0])), 2.0])
    res = minimize(nll, x0, method="L-BFGS-B", bounds=[(b_lo, b_hi), (np.log(n_lo), np.log(n_hi)), (w_lo, w_hi)])
    base, log_onset, width = (float(v) for v in res.x)
    return PipelineStall(seconds_per_op=delta, base_rate=base, onset_nodes=float(np.exp(log_onset)),
                         onset_width=width), int(stalled.sum())


def _solve(runs: RunSet, idx: np.ndarray, profile, free: list[str], x0: np.ndarray, lo, hi,
           prior_weight: float = PRIOR_WEIGHT):
    from scipy.optimize import least_squares

    sub = without_stall(_subset(runs.terms, idx))
    meas = runs.measured[idx]
    width = np.maximum(hi - lo, 1e-30)

    def resid(x):
        vals = dict(zip(free, x))
        lat = vals.pop(STEP_LATENCY, None)
        lat = profile.cluster_step_latency_s if lat is None else math.exp(lat)
        pred = np.asarray(steptime.compose(sub, {**{k: v.value for k, v in profile.parameters.items()}, **vals},
                                           lat, profile.settings.cuda_graphs).total_s, dtype=float)
        return np.concatenate([pred / meas - 1.0, prior_weight * (x - x0) / width])

    # scale each parameter to its bounds so one trust region suits them all
    res = least_squares(resid, x0, bounds=(lo, hi), loss="soft_l1", f_scale=ROBUST_SCALE, x_scale="jac",
                        max_nfev=400)
    return res.x


def fit_profile(runs: RunSet, profile: frameworks.FrameworkProfile, fit_latency: bool = True,
                folds: int = 5, seed: int = 0, prior_weight: float = PRIOR_WEIGHT) -> FitResult:
    """Fit the profile's free parameters (and the cluster step latency) to ``runs``; ``folds``
    > 1 also reports a k-fold held-out error (each run predicted by a fit without it).
    ``prior_weight``: how strongly the start profile holds (PRIOR_WEIGHT; 0: not at all)."""
    try:
        import scipy  # noqa: F401
    except ImportError:
        raise InputError("fit-profile needs scipy: pip install 'costmodel[fit]'", field="scipy") from None
    multi_node = int(np.sum(np.broadcast_to(np.asarray(runs.terms.nodes, dtype=float), runs.measured.shape) > 1))
    fit_latency = fit_latency and multi_node >= LATENCY_MIN_RUNS
    free = _free(profile, fit_latency)
    lat0 = float(np.median(runs.terms.step_latency_s)) if fit_latency else None
    if fit_latency and lat0 <= 0:
        free.remove(STEP_LATENCY)
        lat0 = None
    log_bounds = tuple(math.log(b) for b in STEP_LATENCY_BOUNDS)
    x0 = np.array([profile.parameters[k].value if k != STEP_LATENCY else math.log(lat0) for k in free], dtype=float)
    lo = np.array([profile.parameters[k].bounds[0] if k != STEP_LATENCY else log_bounds[0] for k in free])
    hi = np.array([profile.parameters[k].bounds[1] if k != STEP_LATENCY else log_bounds[1] for k in free])
    x0 = np.clip(x0, lo, hi)
    all_idx = np.arange(len(runs.measured))
    before = predict(runs, profile)
    bare = without_stall(runs.terms)
    start_stall = getattr(profile.scaling, "pipeline_stall", None) if profile.scaling is not None else None

    def fit_on(idx):
        """(values, step latency, pipeline stall, stalled runs) fitted on runs ``idx``."""
        x = _solve(runs, idx, profile, free, x0, lo, hi, prior_weight)
        v = dict(zip(free, (float(q) for q in x)))
        lt = v.pop(STEP_LATENCY, None)
        lt = profile.cluster_step_latency_s if lt is None else math.exp(lt)  # not fitted: the start's
        sub = _subset(bare, idx)
        stall, n_stalled = fit_pipeline_stall(sub, runs.measured[idx], predict(runs, profile, v, lt, sub), start_stall)
        return v, lt, stall, n_stalled

    def stall_terms(stall):  # too few runs to fit a stall: the start's (runs.terms) stays
        return runs.terms if stall is None else with_stall(runs.terms, stall)

    vals, lat, stall, n_stalled = fit_on(all_idx)
    pred = predict(runs, profile, vals, lat, stall_terms(stall))
    err = np.abs(pred / runs.measured - 1.0)
    holdout = None
    k = min(folds, len(all_idx))
    if k >= 2:
        rng = np.random.default_rng(seed)
        order = rng.permutation(all_idx)
        out = np.empty_like(runs.measured)
        for f in range(k):
            test = order[f::k]
            train = np.setdiff1d(all_idx, test)
            vf, lf, sf, _ = fit_on(train)
            out[test] = predict(runs, profile, vf, lf, stall_terms(sf))[test]
        holdout = float(np.mean(np.abs(out / runs.measured - 1.0)))
    return FitResult(values=vals, step_latency_s=lat, n=len(all_idx), mape=float(err.mean()),
                     median_ape=float(np.median(err)), mape_before=float(np.mean(np.abs(before / runs.measured - 1.0))),
                     holdout_mape=holdout, folds=k if k >= 2 else 0, predicted=pred,
                     pipeline_stall=None if stall is None else stall.model_dump(by_alias=True), stalled=n_stalled,
                     latency_fitted=fit_latency)
