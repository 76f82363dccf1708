"""Collectives on a real cluster as it grows: measured bus bandwidth by node count, and the
latency of ring steps that cross the network.

On a real cluster a collective's large-message bus bandwidth falls as its group spans more nodes
(switch hops, congestion, oversubscription, stragglers): the Ultra-Scale Playbook measured
all-reduce bus bandwidth on 8 x H100 nodes at 436 GB/s inside one node, 160 GB/s over 4 nodes and
33 GB/s over 64 (all-gather 250 -> 11 GB/s). An alpha-beta model with the NIC line rate cannot
show that. A node spec's ``scale_out.scaling`` holds what was measured
(``costmodel calibrate --nccl-tests`` fits it from nccl-tests logs):

- ``bus_bandwidth``: per collective, the large-message bus bandwidth (nccl-tests convention,
  doc/PERFORMANCE.md) at each measured node count. Between two counts it is interpolated on
  log-log axes (a power law per segment); past the largest it follows the last segment's power
  law, never rising; below the smallest count it stays at that count's value.
  reduce_scatter falls back to all_gather's table, all_to_all and send_recv to the NIC line rate.
- ``step_latency``: seconds per ring step when the ring crosses nodes. A ring step ends only when
  every rank has passed its chunk on, so each of a ring's steps waits for the network hop (NCCL's
  own tuning model adds the network latency per step: src/graph/tuning.cc, hwLat[NET]).

A collective of ``nbytes`` (nccl-tests buffer convention) over ``world`` ranks on ``nodes`` nodes:

    t = steps(op, world) * step_latency + bus_factor(op, world) * nbytes / bus_bandwidth(op, nodes)

with ring steps 2(world - 1) for all-reduce (or 2 log2(world) for NCCL's tree, whichever is
fewer), world - 1 for all-gather / reduce-scatter / all-to-all and 1 for a point-to-point message.

Some clusters also stall: on the Ultra-Scale Playbook's runs (nanotron, 1-64 nodes of 8 x H100 on
AWS EFA) a run either passed its pipeline activations across nodes at the wire's pace or paid
0.4-0.5 s per cross-node neighbour and pipeline slot, every slot of the run, more often the more
nodes it spanned (1 in 8 runs up to 16 nodes, half at 32, 9 in 10 at 64), while runs whose
pipeline stayed inside a node almost never did. ``pipeline_stall`` holds that as a per-operation
delay and a probability by node count (pipeline_stall_probability); costmodel.steptime decides
which outcome a point estimate reports.
"""
from __future__ import annotations

import math

from .comm import bus_factor, normalize_op

# which measured table stands in for an op the scaling does not list
_FALLBACK = {"reduce_scatter": ("all_gather", "all_reduce"), "all_gather": ("reduce_scatter", "all_reduce"),
             "all_reduce": ("reduce_scatter", "all_gather"), "broadcast": ("all_gather", "all_reduce")}


def _table(scaling, op: str) -> dict[int, float] | None:
    bw = scaling.bus_bandwidth
    if op in bw:
        return bw[op]
    for other in _FALLBACK.get(op, ()):
        if other in bw:
            return bw[other]
    return None


def bus_bandwidth_at(scaling, op: str, nodes: float) -> float | None:
    """Large-message bus bandwidth (bytes/s) of ``op`` over ``nodes`` nodes from the measured
    table (module docstring); None when the scaling has no table for ``op``."""
    table = _table(scaling, normalize_op(op))
    if not table:
        return None
    pts = sorted((int(n), float(b)) for n, b in table.items())
    if nodes <= pts[0][0] or len(pts) == 1:
        return pts[0][1]
    for (n0, b0), (n1, b1) in zip(pts, pts[1:]):
        if nodes <= n1:
            a = math.log(b1 / b0) / math.log(n1 / n0)
            return b0 * (nodes / n0) ** a
    (n0, b0), (n1, b1) = pts[-2], pts[-1]
    a = min(0.0, math.log(b1 / b0) / math.log(n1 / n0))
    return b1 * (nodes / n1) ** a


def ring_steps(op: str, world: int) -> float:
    """Latency steps of one call: 2(n-1) for a ring all-reduce (2 log2 n for a tree, the fewer),
    n-1 for all-gather / reduce-scatter / all-to-all / broadcast, 1 for point-to-point."""
    op = normalize_op(op)
    n = max(1, int(world))
    if op == "send_recv":
        return 1.0
    if op == "all_reduce":
        return float(min(2 * (n - 1), 2 * math.ceil(math.log2(n)))) if n > 1 else 0.0
    return float(n - 1)


def collective_time_s(scaling, op: str, nbytes: float, world: int, nodes: float,
                      nic_bytes_per_s: float) -> float:
    """One call over ``world`` ranks spread over ``nodes`` (> 1) nodes (module docstring).
    ``nic_bytes_per_s``: the per-device line rate, for ops the scaling has no table for."""
    op = normalize_op(op)
    bw = bus_bandwidth_at(scaling, op, nodes)
    if bw is None:
        bw = nic_bytes_per_s
    wire = nbytes * (1.0 if op == "send_recv" else bus_factor(op, world))
    return ring_steps(op, world) * scaling.step_latency_s + wire / bw


def pipeline_stall_probability(stall, nodes):
    """Chance that a run over ``nodes`` nodes stalls its cross-node pipeline sends (module
    docstring): a base rate, plus a logistic onset in log(nodes) that reaches half the remaining
    runs at ``onset_nodes``. Works on arrays."""
    import numpy as np

    n = np.maximum(np.asarray(nodes, dtype=float), 1e-9)
    return stall.base_rate + (1.0 - stall.base_rate) / (1.0 + (stall.onset_nodes / n) ** stall.onset_width)
