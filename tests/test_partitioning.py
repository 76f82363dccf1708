"""Inference layouts (Pope et al. 2022, sec. 3.2): the collectives a weight-stationary layout adds
per layer, checked by hand."""
from __future__ import annotations

import pytest

from costmodel.arch import load_model
from costmodel.errors import InputError
from costmodel.partitioning import layer_collectives, layout_comm_s, mesh_2d, per_chip_volume_bytes

E, F = 18432, 73728  # PaLM 540B


def test_2d_mesh_minimises_the_per_chip_volume():
    # E / x + F / yz over x * yz = 64: x = 4 gives 4608 + 4608; x = 2 or 8 give 11520
    assert mesh_2d(64, E, F) == (4, 16)
    assert mesh_2d(256, E, F) == (8, 32)  # sqrt(256 E / F) = 8


def test_2d_weight_stationary_collectives_by_hand():
    palm = load_model("palm-540b")  # parallel block: one set of collectives per layer
    B = 64
    got = layer_collectives(palm, B, 64, "2d-weight-stationary")
    e_x, f_yz = B * E / 4 * 2, B * F / 16 * 2  # bf16 activations
    assert sorted(got) == sorted([("all_gather", e_x, 16, 1), ("reduce_scatter", e_x, 16, 1),
                                  ("reduce_scatter", f_yz, 4, 1), ("all_gather", f_yz, 4, 1)])
    vol = 2 * (e_x * 15 / 16 + f_yz * 3 / 4)
    assert per_chip_volume_bytes(palm, B, 64, "2d-weight-stationary") == pytest.approx(vol)
    # the 1D layout moves B E per collective whatever the chip count: more than 2D at 64 chips
    assert per_chip_volume_bytes(palm, B, 64, "1d-weight-stationary") == pytest.approx(2 * B * E * 2 * 63 / 64)
    assert per_chip_volume_bytes(palm, B, 64, "1d-weight-stationary") > vol
    # a sequential block (attention, then MLP) runs two sets
    seq = load_model("llama2-70b")
    assert {c[3] for c in layer_collectives(seq, B, 64, "2d-weight-stationary")} == {2}
    with pytest.raises(InputError):
        layer_collectives(palm, B, 64, "3d")


def test_layout_time_on_a_torus_by_hand():
    """On a 4x4x4 torus at 300 GB/s per chip (6 links of 50 GB/s, 0.9 achieved), no latency: the
    yz collectives use 2 dimensions at once (4 link directions), the x ones one dimension (2)."""
    from costmodel.comm import ICI_EFFICIENCY, CommParams
    from costmodel.comm_bridge import Links
    from costmodel.specs import load_library

    lib = load_library()
    node = lib.node_for("tpu-v4-4x4x4")
    links = Links.from_specs(lib.device("tpu-v4"), node, None)
    assert links.torus == (4, 4, 4)
    links.intra_lat = 0.0  # the bandwidth terms alone
    links.params = CommParams(launch_overhead_s=0.0)
    palm = load_model("palm-540b")
    b = 50e9 * ICI_EFFICIENCY
    e_x, f_yz = 64 * E / 4 * 2, 64 * F / 16 * 2
    per_layer = 2 * (15 / 16 * e_x / (4 * b)) + 2 * (3 / 4 * f_yz / (2 * b))
    assert layout_comm_s(palm, 64, 64, "2d-weight-stationary", links) == pytest.approx(118 * per_layer, rel=1e-6)
