"""Inference layouts of a transformer over a slice of chips, and the collectives they add per step.

Pope et al., "Efficiently Scaling Transformer Inference", MLSys 2023, arXiv:2211.05102, sec. 3.2,
Figure 2: the feedforward weights (and, in PaLM's parallel block, the attention projections beside
them) stay on the chips where they live ("weight-stationary") and the activations move.

``2d-weight-stationary`` (sec. 3.2.2): the n chips form a mesh of ``x`` by ``yz`` (a torus
dimension, and the other two). A weight of E x F is split over both: each chip holds an
(E / x) x (F / yz) block. Per layer and step, with B L tokens of width E (hidden) and F (the MLP
width), every chip takes part in four collectives:

- all-gather over the ``yz`` chips of its row, of the input activations B L E / x (output buffer);
- reduce-scatter over the ``x`` chips of its column, of the partial sums B L F / yz (input buffer);
- all-gather over ``x`` of the activated hidden B L F / yz, for the output projection;
- reduce-scatter over ``yz`` of the output partial sums B L E / x.

The per-chip volume is ~ 2 B L (E / x + F / yz): it shrinks as sqrt(n) with the mesh, the paper's
point against the 1D layout's fixed 2 B L E. In a parallel block (PaLM) attention's projections
ride the same collectives (sec. 3.5: "parallel ... reduces the communication ... to one set per
layer"). ``1d-weight-stationary`` (sec. 3.2.1): F split over all n chips; an all-gather of B L E
and a reduce-scatter of B L E over all n chips per layer.

Times come from the scale-up fabric's collective model (on a TPU slice, the torus:
costmodel.comm.torus_collective_time_s), so they include each ring step's latency, which
dominates at small batch.
"""
from __future__ import annotations

from .arch import ModelConfig
from .errors import InputError

LAYOUTS = ("1d-weight-stationary", "2d-weight-stationary")


def mesh_2d(n: int, hidden: int, ffn: int) -> tuple[int, int]:
    """(x, yz) with x * yz = n minimising the per-chip volume E / x + F / yz (Pope et al. sec.
    3.2.2: x = sqrt(n E / F)), x a divisor of n."""
    best = None
    for x in range(1, n + 1):
        if n % x:
            continue
        cost = hidden / x + ffn / (n // x)
        if best is None or cost < best[0] - 1e-12:
            best = (cost, x)
    x = best[1]
    return x, n // x


def layer_collectives(model: ModelConfig, tokens: float, chips: int, layout: str, act_bytes: float = 2.0
                      ) -> list[tuple[str, float, int, int]]:
    """The collectives one layer adds for ``tokens`` (B x L) tokens on ``chips`` chips:
    (op, nbytes in the nccl-tests buffer convention, group size, repeat count)."""
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}", field="layout")
    E, F = model.hidden, model.ffn
    sets = 1 if model.parallel_block else 2  # attention and MLP each run one set unless side by side
    if chips <= 1:
        return []
    if layout == "1d-weight-stationary":
        b = tokens * E * act_bytes
        return [("all_gather", b, chips, sets), ("reduce_scatter", b, chips, sets)]
    x, yz = mesh_2d(chips, E, F)
    e_x = tokens * E / x * act_bytes
    f_yz = tokens * F / yz * act_bytes
    out = []
    if yz > 1:
        out += [("all_gather", e_x, yz, sets), ("reduce_scatter", e_x, yz, sets)]
    if x > 1:
        out += [("reduce_scatter", f_yz, x, sets), ("all_gather", f_yz, x, sets)]
    return out


def layout_comm_s(model: ModelConfig, tokens: float, chips: int, layout: str, links, act_bytes: float = 2.0) -> float:
    """Seconds of the layout's collectives for one forward pass of ``tokens`` tokens through every
    layer. ``links``: a comm_bridge.Links of the slice (its scale-up domain holds the chips)."""
    per_layer = 0.0
    for op, nbytes, group, count in layer_collectives(model, tokens, chips, layout, act_bytes):
        per_layer += count * links.collective_time_s(op, nbytes, group, intra=True)
    return model.layers * per_layer


def per_chip_volume_bytes(model: ModelConfig, tokens: float, chips: int, layout: str, act_bytes: float = 2.0) -> float:
    """What one chip sends per layer (ring convention: (g - 1) / g of each buffer)."""
    return sum(count * nbytes * (g - 1) / g
               for _, nbytes, g, count in layer_collectives(model, tokens, chips, layout, act_bytes))
