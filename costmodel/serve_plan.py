"""Serving capacity planning: how many replicas of which layout and hardware serve a request rate
under latency targets at the lowest price.

For every device and layout (tensor-parallel size, expert parallelism of MoE models, pipeline
stages where the model fits no single node's tensor-parallel group) one replica's largest
sustainable request rate under the targets is found by bisection over Poisson request rates
(costmodel.serving.estimate_serve: p99 TTFT, and p99 TPOT when asked, over a fixed number of
seeded requests; with one seed the arrival times only scale with the rate, so the search is
monotone; the rate is below the replica's max-load request rate, where a queue grows without
bound). The replicas needed are ceil(target rate / that rate) (independent replicas behind a
load balancer that splits the requests evenly); the price is replicas x devices per replica x the
device's price per device-hour (``price_per_hour_usd`` of the hardware spec).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

from .arch import ModelConfig
from .errors import InputError
from .specs import AcceleratorSpec, NodeSpec

# Tensor-parallel sizes tried: powers of two up to one NVLink domain (the node's devices, 8 on a
# plain device id: an HGX/DGX baseboard).
TP_SIZES = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_MAX_TP = 8
PP_SIZES = (2, 4, 8)
# The bisection: the lowest rate tried is this share of the replica's max-load request rate, and
# the search stops when the bracket is narrower than this ratio.
LOWEST_RATE_SHARE = 0.01
RATE_TOLERANCE = 1.02


@dataclass
class Layout:
    tp: int
    pp: int = 1
    ep: int = 1
    dp_attention: bool = False

    @property
    def devices(self) -> int:
        return self.tp * self.pp

    def label(self) -> str:
        return (f"tp{self.tp}" + (f" pp{self.pp}" if self.pp > 1 else "") + (f" ep{self.ep}" if self.ep > 1 else "")
                + (" dpa" if self.dp_attention else ""))


@dataclass
class Candidate:
    hardware: str
    tp: int
    pp: int
    ep: int
    devices_per_replica: int
    dp_attention: bool
    feasible: bool
    max_rate_per_replica: float  # requests/s one replica sustains under the targets (0 when none)
    replicas: int | None = None
    devices: int | None = None
    price_per_device_hour_usd: float | None = None
    usd_per_hour: float | None = None
    usd_per_million_output_tokens: float | None = None  # at the target rate
    rate_per_replica: float | None = None  # the target rate split over the replicas
    ttft_p99_s: float | None = None  # at that rate
    tpot_p99_s: float | None = None
    reason: str = ""

    def label(self) -> str:
        return Layout(self.tp, self.pp, self.ep, self.dp_attention).label()


@dataclass
class ServePlan:
    model_id: str
    engine: str
    target_rate: float
    ttft_p99_s: float
    tpot_p99_s: float | None
    input_len: int
    output_len: int
    num_requests: int
    candidates: list[Candidate]
    best: Candidate | None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.best is not None

    def to_dict(self) -> dict:
        return asdict(self)


def layouts(model: ModelConfig, max_tp: int, tp_sizes: Sequence[int] | None = None) -> list[Layout]:
    """Tensor-parallel sizes dividing the heads up to max_tp (or those of ``tp_sizes`` dividing the
    heads); MoE models also with their experts spread over the TP group (ep = tp), and with
    data-parallel attention besides. Pipeline stages are only tried at the largest TP size."""
    tps = ([t for t in TP_SIZES if t <= max_tp] if tp_sizes is None else sorted(set(tp_sizes)))
    tps = [t for t in tps if model.heads % t == 0]
    out = []
    for t in tps:
        out.append(Layout(t))
        if model.moe is not None and t > 1 and model.moe.experts % t == 0:
            out += [Layout(t, ep=t), Layout(t, ep=t, dp_attention=True)]
    if tps:
        out += [Layout(tps[-1], pp=p) for p in PP_SIZES if p <= model.layers]
    return out


def _meets(est, ttft_p99_s: float, tpot_p99_s: float | None) -> bool:
    if est.ttft_s["p99"] is None or est.ttft_s["p99"] > ttft_p99_s:
        return False
    if tpot_p99_s is not None and est.tpot_s and est.tpot_s["p99"] is not None and est.tpot_s["p99"] > tpot_p99_s:
        return False
    return True


def max_rate_under_targets(run, ttft_p99_s: float, tpot_p99_s: float | None) -> tuple[float, str]:
    """The largest Poisson request rate (requests/s) at which ``run(load, value)`` (an
    estimate_serve of one replica) meets the targets, and why none when it is 0."""
    top = run("max_load", None).requests_per_s
    lo = top * LOWEST_RATE_SHARE
    est = run("request_rate", lo)
    if not _meets(est, ttft_p99_s, tpot_p99_s):
        what = f"p99 TTFT {est.ttft_s['p99'] * 1e3:.0f} ms"
        if tpot_p99_s is not None and est.tpot_s and est.tpot_s["p99"] is not None:
            what += f", p99 TPOT {est.tpot_s['p99'] * 1e3:.1f} ms"
        return 0.0, f"misses the targets even at {lo:.3g} requests/s ({what})"
    hi = top  # the max-load rate itself is not sustained: a queue grows at it however short the run
    while hi / lo > RATE_TOLERANCE:
        mid = math.sqrt(lo * hi)
        if _meets(run("request_rate", mid), ttft_p99_s, tpot_p99_s):
            lo = mid
        else:
            hi = mid
    return lo, ""


def plan_serving(model: ModelConfig, hardware: list[tuple[AcceleratorSpec, NodeSpec | None]], *, target_rate: float,
                 ttft_p99_s: float, tpot_p99_s: float | None = None, input_len: int, output_len: int,
                 engine: str = "vllm", weight_dtype: str = "bf16", kv_dtype: str = "bf16",
                 num_requests: int = 500, calibration: str | None = None, seed: int = 0,
                 only: Layout | None = None, price_per_hour: float | None = None,
                 prefix_hit_rate: float = 0.0, input_len_range: tuple[int, int] | None = None,
                 output_len_range: tuple[int, int] | None = None) -> ServePlan:
    """Every device and layout (``only``: that one layout) with its replicas for ``target_rate``
    requests/s under p99 TTFT ``ttft_p99_s`` (and p99 TPOT ``tpot_p99_s``); ``best``: the feasible
    one at the lowest price per hour (fewest devices where no price is known)."""
    from .serving import estimate_serve

    if not target_rate > 0:
        raise InputError(f"must be > 0 (got {target_rate})", field="target_rate")
    if not ttft_p99_s > 0:
        raise InputError(f"must be > 0 (got {ttft_p99_s * 1e3:g} ms)", field="ttft_p99_ms")
    if tpot_p99_s is not None and not tpot_p99_s > 0:
        raise InputError(f"must be > 0 (got {tpot_p99_s * 1e3:g} ms)", field="tpot_p99_ms")
    if num_requests < 10:
        raise InputError(f"needs at least 10 requests for a p99 (got {num_requests})", field="num_requests")
    cands: list[Candidate] = []
    for spec, node in hardware:
        max_tp = node.devices_per_node if node is not None else DEFAULT_MAX_TP
        price = price_per_hour if price_per_hour is not None else spec.price_per_hour_usd
        todo = [only] if only is not None else layouts(model, max_tp)
        fits_without_pp = False
        for lay in todo:
            if lay.pp > 1 and only is None and fits_without_pp:
                continue  # pipeline stages only where no TP group holds the model

            def run(load, value, lay=lay):
                # the bisection's top is the engine's own max-load rate: a burst also waits for the
                # API server to take every request in (serving.api_server_ready), which a Poisson
                # stream of requests overlaps with the engine's work
                api = 0.0 if load == "max_load" else None
                return estimate_serve(model, spec, tp=lay.tp, pp=lay.pp, ep=lay.ep, input_len=input_len,
                                      output_len=output_len, load=load, value=value, num_requests=num_requests,
                                      engine=engine, weight_dtype=weight_dtype, kv_dtype=kv_dtype, node=node,
                                      calibration=calibration, seed=seed, prefix_hit_rate=prefix_hit_rate,
                                      input_len_range=input_len_range, output_len_range=output_len_range,
                                      dp_attention=lay.dp_attention, api_server_s_per_request=api)

            c = Candidate(hardware=spec.id, tp=lay.tp, pp=lay.pp, ep=lay.ep, dp_attention=lay.dp_attention,
                          devices_per_replica=lay.devices,
                          feasible=False, max_rate_per_replica=0.0, price_per_device_hour_usd=price)
            try:
                rate, why = max_rate_under_targets(run, ttft_p99_s, tpot_p99_s)
            except InputError as exc:
                if only is not None and "does not fit" not in exc.detail:
                    raise
                c.reason = exc.detail
                cands.append(c)
                continue
            if lay.pp == 1:
                fits_without_pp = True
            c.max_rate_per_replica = rate
            if rate <= 0:
                c.reason = why
                cands.append(c)
                continue
            c.feasible = True
            c.replicas = max(1, math.ceil(target_rate / rate * (1 - 1e-9)))
            c.devices = c.replicas * lay.devices
            c.rate_per_replica = target_rate / c.replicas
            at = run("request_rate", c.rate_per_replica)
            c.ttft_p99_s = at.ttft_s["p99"]
            c.tpot_p99_s = at.tpot_s["p99"] if at.tpot_s else None
            if price is not None:
                c.usd_per_hour = c.devices * price
                out_mean = sum(output_len_range) / 2 if output_len_range else output_len
                c.usd_per_million_output_tokens = c.usd_per_hour / (target_rate * out_mean * 3600.0) * 1e6
            cands.append(c)
    ok = [c for c in cands if c.feasible]
    priced = [c for c in ok if c.usd_per_hour is not None]
    notes = []
    if ok and len(priced) < len(ok):
        notes.append("devices without a price (price_per_hour_usd in the hardware spec) are ranked by device count")
    best = None
    if priced:
        best = min(priced, key=lambda c: (c.usd_per_hour, c.devices, -c.max_rate_per_replica))
    elif ok:
        best = min(ok, key=lambda c: (c.devices, -c.max_rate_per_replica))
    return ServePlan(model_id=model.id, engine=engine, target_rate=target_rate, ttft_p99_s=ttft_p99_s,
                     tpot_p99_s=tpot_p99_s, input_len=input_len, output_len=output_len, num_requests=num_requests,
                     candidates=cands, best=best, notes=notes)
