"""The shipped hardware spec library and the spec loader's error handling.

Numbers asserted here come from datasheets, papers or hand calculation (units x clocks x
per-clock throughput), never from the specs' own values read back.
"""
from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from costmodel.cli.app import main  # noqa: E402
from costmodel.errors import InputError  # noqa: E402
from costmodel.specs import (  # noqa: E402
    AcceleratorSpec,
    HardwareLibrary,
    NodeSpec,
    load_library,
    load_spec_file,
    package_data_dir,
    parse_spec,
)

HW_DIR = ROOT / "hardware"

REQUIRED = {
    "a100-40gb-sxm": "gpu", "a100-80gb-sxm": "gpu", "a100-80gb-pcie": "gpu", "h100-sxm": "gpu",
    "h100-pcie": "gpu", "h200-sxm": "gpu", "b200": "gpu", "gb200": "gpu", "mi250x": "gpu", "mi300x": "gpu",
    "tpu-v4": "tpu", "tpu-v5e": "tpu", "tpu-v5p": "tpu",
    "cpu-epyc-9654": "cpu", "cpu-xeon-8480": "cpu", "nvme-gen4": "nvme", "nvme-gen5": "nvme",
    "dgx-a100": "node", "dgx-h100": "node", "hgx-h200": "node", "dgx-b200": "node", "gb200-nvl72": "node", "frontier-node": "node",
    "tpu-v4-pod-slice": "node", "server-8x-a100-80gb-pcie": "node", "tpu-v4-pod": "node", "mi300x-node": "node", "tpu-v5p-pod": "node", "tpu-v4-4x4x4": "node", "tpu-v5e-pod": "node",
}

GB, GiB, MiB, T = 1e9, 2.0**30, 2.0**20, 1e12


@pytest.fixture(autouse=True)
def _no_user_hardware_path(monkeypatch):
    monkeypatch.delenv("COSTMODEL_HARDWARE_PATH", raising=False)


@pytest.fixture(scope="module")
def lib():
    return load_library()


def run_cli(args, capsys):
    """Run `costmodel ARGS` in-process; return (exit code, stdout, stderr)."""
    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ============================================================== the shipped library loads

def test_shipped_specs_live_in_the_checkout():
    assert package_data_dir("hardware").resolve() == HW_DIR.resolve()


@pytest.mark.parametrize("spec_id, kind", sorted(REQUIRED.items()))
def test_every_required_id_loads(lib, spec_id, kind):
    spec = lib.get(spec_id)
    assert spec.id == spec_id
    assert spec.kind == kind
    assert spec.sources


def test_every_shipped_file_loads_on_its_own_and_is_named_after_its_id():
    files = sorted(HW_DIR.rglob("*.yaml"))
    assert len(files) >= len(REQUIRED)
    for f in files:
        if "calibrated" in f.relative_to(HW_DIR).parts:
            continue
        spec = load_spec_file(f)
        assert spec.id == f.stem, f


def test_node_references_resolve(lib):
    lib.check_references()  # raises InputError on a dangling device/cpu/nvme id
    for spec_id in ("dgx-a100", "dgx-h100", "hgx-h200", "frontier-node", "tpu-v4-pod-slice", "server-8x-a100-80gb-pcie"):
        node = lib.node_for(spec_id)
        assert isinstance(node, NodeSpec)
        assert isinstance(lib.device(spec_id), AcceleratorSpec)


def test_shipped_index_reads_what_parsing_reads():
    """A library parses a shipped spec when it is first asked for; until then its id, kind and a
    node's references come from the file's top-level lines (specs._unparsed). For every shipped
    file they must be what the parsed spec says (and every file must be read that way, or the
    library parses it at once)."""
    from costmodel.specs import _unparsed

    for f in sorted(HW_DIR.rglob("*.yaml")):
        if "calibrated" in f.relative_to(HW_DIR).parts:
            continue
        entry = _unparsed(f)
        assert entry is not None, f
        spec = load_spec_file(f)
        assert (entry.id, entry.kind) == (spec.id, spec.kind), f
        assert entry.refs == {k: getattr(spec, k, None) for k in ("device", "host_cpu", "nvme")}, f


def test_library_parses_only_the_specs_it_is_asked_for():
    from costmodel.specs import _Unparsed

    lib = HardwareLibrary()
    assert lib.ids() == sorted(p.stem for p in HW_DIR.rglob("*.yaml") if "calibrated" not in p.relative_to(HW_DIR).parts)
    assert all(type(v) is _Unparsed for v in lib.specs._d.values())
    assert lib.device("dgx-h100").id == "h100-sxm"  # a node and its device
    parsed = {k for k, v in lib.specs._d.items() if type(v) is not _Unparsed}
    assert parsed == {"dgx-h100", "h100-sxm"}
    assert lib.copy().node_for("dgx-h100") is lib.node_for("dgx-h100")  # the same frozen spec


def test_index_leaves_unplain_fields_to_the_parser(tmp_path):
    """A file whose id, kind or references are not plain one-line values is parsed, not indexed."""
    from costmodel.specs import _unparsed

    gpu = yaml.safe_dump(_good_gpu(), sort_keys=False)
    assert _unparsed(_write(tmp_path, "plain", gpu)).id == "test-gpu"
    for name, text in (("quoted", gpu.replace("id: test-gpu", 'id: "test-gpu"')),
                       ("twice", gpu + "id: other\n"),
                       ("nulls", gpu.replace("kind: gpu", "kind: gpu\nnvme: null")),
                       ("flow", gpu.replace("id: test-gpu", "id: {a: 1}")),
                       ("no-kind", gpu.replace("kind: gpu\n", ""))):
        assert _unparsed(_write(tmp_path, name, text)) is None, name


def test_user_spec_of_another_kind_breaks_a_shipped_nodes_reference(tmp_path, monkeypatch):
    """check_references reads the shipped nodes' references unparsed: a user's file that takes a
    shipped device's id with another kind leaves the nodes built on it pointing at a CPU: an error naming one."""
    cpu = _mutate(_good_cpu(), ["id"], "h100-sxm")
    monkeypatch.setenv("COSTMODEL_HARDWARE_PATH", str(_write(tmp_path, "h100-sxm", cpu).parent))
    with pytest.raises(InputError, match="refers to 'h100-sxm', which is not a known gpu/tpu spec") as exc:
        load_library()
    assert "hardware/nodes/" in str(exc.value) and "device" in str(exc.value)


def test_cli_hardware_list_json_lists_every_required_id(capsys):
    code, out, err = run_cli(["hardware", "list", "--json"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    ids = {r["id"] for r in rows}
    assert set(REQUIRED) <= ids
    kinds = {r["id"]: r["kind"] for r in rows}
    assert all(kinds[i] == k for i, k in REQUIRED.items())


def test_cli_hardware_list_kind_filter(capsys):
    code, out, _ = run_cli(["hardware", "list", "--kind", "tpu", "--json"], capsys)
    assert code == 0
    assert {r["id"] for r in json.loads(out)} >= {"tpu-v4", "tpu-v5e", "tpu-v5p"}
    assert {r["kind"] for r in json.loads(out)} == {"tpu"}


def test_cli_hardware_show_json(capsys):
    code, out, _ = run_cli(["hardware", "show", "mi250x", "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["dies_per_package"] == 2
    assert data["memory"]["capacity_bytes"] == 64 * GiB


def test_priced_specs_cite_their_price(lib):
    for spec in lib.specs.values():
        if spec.price_per_hour_usd is not None:
            assert {"price_per_hour_usd", "all"} & set(spec.sources), spec.id


def test_every_accelerator_cites_every_group(lib):
    for spec in lib.specs.values():
        if isinstance(spec, AcceleratorSpec):
            for key in ("memory", "peak_flops", "tdp"):
                assert key in spec.sources, (spec.id, key)
            if spec.sparse_flops is not None:
                assert "sparse_flops" in spec.sources, spec.id


# ============================================== datasheet figures, checked by hand arithmetic

def test_a100_dense_bf16_from_sm_count_and_clock(lib):
    # 108 SMs x 4 Tensor Cores x 256 dense FP16 FMA/clk x 2 FLOP x 1.41 GHz = 311.9 TFLOP/s
    expected = 108 * 4 * 256 * 2 * 1.41e9
    for spec_id in ("a100-40gb-sxm", "a100-80gb-sxm", "a100-80gb-pcie"):
        dev = lib.device(spec_id)
        assert dev.peak("bf16") == pytest.approx(expected, rel=2e-3)
        assert dev.peak("fp16") == pytest.approx(expected, rel=2e-3)
        assert dev.peak("tf32") == pytest.approx(expected / 2, rel=2e-3)
        assert dev.peak("int8") == pytest.approx(2 * expected, rel=2e-3)


def test_h100_sxm_dense_bf16_from_sm_count_and_clock(lib):
    # Hopper whitepaper: 132 SMs x 4096 dense FP16 FLOP/clk x 1830 MHz = 989.4 TFLOP/s
    expected = 132 * 4096 * 1.83e9
    for spec_id in ("h100-sxm", "h200-sxm"):
        dev = lib.device(spec_id)
        assert dev.peak("bf16") == pytest.approx(expected, rel=1e-3)
        assert dev.peak("fp8") == pytest.approx(2 * expected, rel=1e-3)


def test_h100_fp32_from_cuda_cores_and_boost_clock(lib):
    # 132 SMs x 128 FP32 cores x 2 FLOP x 1.98 GHz = 66.9 TFLOP/s
    assert lib.device("h100-sxm").peak("fp32") == pytest.approx(132 * 128 * 2 * 1.98e9, rel=1e-3)


def test_h200_has_h100_sxm_compute_and_more_memory(lib):
    h100, h200 = lib.device("h100-sxm"), lib.device("h200-sxm")
    assert h200.peak_flops == h100.peak_flops
    assert h200.sparse_flops == h100.sparse_flops
    assert h200.memory.capacity_bytes == 143771 * MiB   # nvidia-smi total on H200
    assert h100.memory.capacity_bytes == 81559 * MiB    # nvidia-smi total on H100 80GB HBM3
    assert h200.memory.bandwidth_bytes_per_s == pytest.approx(4.8e12)


def test_memory_capacities_match_what_the_driver_reports(lib):
    assert lib.device("a100-40gb-sxm").memory.capacity_bytes == 40960 * MiB
    assert lib.device("a100-80gb-sxm").memory.capacity_bytes == 81920 * MiB
    assert lib.device("a100-80gb-pcie").memory.capacity_bytes == 81920 * MiB
    assert lib.device("h100-pcie").memory.capacity_bytes == 81559 * MiB
    assert lib.device("mi300x").memory.capacity_bytes == 205822885888   # rocm-smi VRAM total, bytes
    # rocm-smi reports 68702699520 B per MI250X GCD: 64 GiB less 16 MiB
    assert lib.device("mi250x").memory.capacity_bytes == pytest.approx(68702699520, rel=1e-3)


def test_mi250x_is_per_gcd_and_doubles_to_the_package_datasheet(lib):
    gcd = lib.device("mi250x")
    assert gcd.dies_per_package == 2
    pkg = gcd.dies_per_package
    # AMD MI250X datasheet, per package: 383 TFLOP/s bf16/fp16, 95.7 TFLOP/s fp64 matrix,
    # 128 GB HBM2e, 3.2 TB/s, 500 W
    assert pkg * gcd.peak("bf16") == pytest.approx(383e12, rel=1e-3)
    assert pkg * gcd.peak("fp64") == pytest.approx(95.7e12, rel=2e-3)
    assert pkg * gcd.memory.capacity_bytes == 128 * GiB
    assert pkg * gcd.memory.bandwidth_bytes_per_s == pytest.approx(3.2e12)
    assert pkg * gcd.tdp_w == 500
    # and from first principles: 110 CUs per GCD x 1024 bf16 FLOP/clk x 1.7 GHz
    assert gcd.peak("bf16") == pytest.approx(110 * 1024 * 1.7e9, rel=1e-3)
    assert gcd.sparse_flops is None  # CDNA 2 has no structured sparsity
    assert gcd.peak_flops.tf32 is None


def test_mi300x_dense_bf16_from_cu_count_and_clock(lib):
    # 304 CUs x 2048 dense FP16 FLOP/clk x 2.1 GHz = 1307.4 TFLOP/s
    dev = lib.device("mi300x")
    assert dev.peak("bf16") == pytest.approx(304 * 2048 * 2.1e9, rel=1e-3)
    assert dev.scale_up.topology == "full-mesh"
    assert dev.scale_up.bandwidth_bytes_per_s == pytest.approx(7 * 64e9)   # 7 xGMI links x 64 GB/s


@pytest.mark.parametrize("spec_id", ["a100-40gb-sxm", "a100-80gb-sxm", "a100-80gb-pcie", "h100-sxm", "h100-pcie", "h200-sxm", "b200",
                                     "mi300x"])
def test_sparse_peaks_are_twice_dense(lib, spec_id):
    dev = lib.device(spec_id)
    assert dev.sparse_flops is not None
    for dtype in ("tf32", "bf16", "fp16", "fp8", "int8", "int4"):
        s = getattr(dev.sparse_flops, dtype)
        if s is not None:
            assert s == pytest.approx(2 * dev.peak(dtype), rel=2e-3), dtype


def test_dense_not_sparse_in_peak_flops(lib):
    # If a sparse datasheet figure slipped into peak_flops these would double.
    assert lib.device("a100-80gb-sxm").peak("bf16") < 400 * T
    assert lib.device("h100-sxm").peak("bf16") < 1000 * T
    assert lib.device("h100-pcie").peak("bf16") < 800 * T
    assert lib.device("mi300x").peak("bf16") < 1400 * T


def test_tpu_pod_totals_match_googles_pod_figures(lib):
    v4, v5e, v5p = lib.device("tpu-v4"), lib.device("tpu-v5e"), lib.device("tpu-v5p")
    # v4: 4096 chips x 275 TFLOP/s = 1.126 EFLOP/s ("1.1 exaflops" per pod)
    assert 4096 * v4.peak("bf16") == pytest.approx(1.1e18, rel=0.03)
    # v5e: 256 chips x 197 TFLOP/s = 50.4 PFLOP/s (Google: 50.63 PFLOPs per pod)
    assert 256 * v5e.peak("bf16") == pytest.approx(50.63e15, rel=0.01)
    # v5e: 256 chips x 200 GB/s one-way ICI = 51.2 TB/s, Google's all-reduce bandwidth per pod
    assert 256 * v5e.scale_up.bandwidth_bytes_per_s == pytest.approx(51.2e12)
    # v5p: 1200 GB/s bidirectional ICI per chip = 600 GB/s per direction = 4800 Gb/s
    assert v5p.scale_up.bandwidth_bytes_per_s == pytest.approx(4800e9 / 8)
    assert v5p.peak("int8") == pytest.approx(2 * v5p.peak("bf16"))


def test_tpus_use_ici_tori(lib):
    expect = {"tpu-v4": ("torus-3d", 6), "tpu-v5e": ("torus-2d", 4), "tpu-v5p": ("torus-3d", 6)}
    for spec_id, (topology, links) in expect.items():
        dev = lib.device(spec_id)
        assert dev.kind == "tpu"
        assert dev.scale_up.topology == topology
        assert dev.scale_up.links == links
        assert dev.sparse_flops is None


def test_cpu_peaks_from_cores_clock_and_width(lib):
    epyc, xeon = lib.get("cpu-epyc-9654"), lib.get("cpu-xeon-8480")
    # EPYC 9654: 96 cores x 2.4 GHz x 16 FP64 FLOP/cycle; 12 x DDR5-4800 x 8 B
    assert epyc.peak_flops.fp64 == pytest.approx(96 * 2.4e9 * 16, rel=2e-3)
    assert epyc.memory.bandwidth_bytes_per_s == pytest.approx(12 * 4800e6 * 8)
    # Xeon 8480+: 56 cores x 2.0 GHz x 1024 AMX bf16 FLOP/cycle; 8 x DDR5-4800 x 8 B
    assert xeon.peak_flops.bf16 == pytest.approx(56 * 2.0e9 * 1024, rel=2e-3)
    assert xeon.memory.bandwidth_bytes_per_s == pytest.approx(8 * 4800e6 * 8)


def test_nvme_within_pcie_link_ceiling(lib):
    # PCIe x4: gen4 16 GT/s x 4 / 8 = 8 GB/s, gen5 16 GB/s (raw, per direction)
    for spec_id, ceiling in (("nvme-gen4", 8e9), ("nvme-gen5", 16e9)):
        nvme = lib.get(spec_id)
        assert 0 < nvme.write_bytes_per_s <= nvme.read_bytes_per_s < ceiling


# ================================================================================ nodes

def test_frontier_node_is_eight_gcd_ranks(lib):
    node = lib.node_for("frontier-node")
    gcd = lib.device("frontier-node")
    assert gcd.id == "mi250x"
    assert node.devices_per_node == 4 * gcd.dies_per_package == 8
    # 4 Slingshot-11 NICs x 200 Gb/s = 100 GB/s per node, over 8 GCDs = 12.5 GB/s each
    assert node.scale_out.bandwidth_per_device_bytes_per_s == pytest.approx(4 * 200e9 / 8 / 8)
    assert node.scale_up.size == 8
    # ring across packages is bounded by one 50 GB/s xGMI link (OLCF: 50-100 GB/s across packages)
    assert 50e9 <= node.scale_up.bandwidth_bytes_per_s <= 100e9


def test_nvidia_nodes(lib):
    a100 = lib.node_for("dgx-a100")
    assert (a100.device, a100.devices_per_node) == ("a100-80gb-sxm", 8)
    assert a100.scale_out.bandwidth_per_device_bytes_per_s == pytest.approx(200e9 / 8)   # HDR 200 Gb/s
    assert a100.scale_up.bandwidth_bytes_per_s == pytest.approx(600e9 / 2)              # NVLink 3
    h200 = lib.node_for("hgx-h200")
    assert (h200.device, h200.devices_per_node) == ("h200-sxm", 8)
    assert h200.scale_out.bandwidth_per_device_bytes_per_s == pytest.approx(400e9 / 8)
    assert h200.scale_up.bandwidth_bytes_per_s == pytest.approx(900e9 / 2)              # NVLink 4
    assert lib.node_for("dgx-h100").scale_out.bandwidth_per_device_bytes_per_s == pytest.approx(50e9)


def test_b200_from_nvidias_per_gpu_table_and_the_driver(lib):
    """HGX B200's per-GPU figures (NVIDIA's GB200 NVL72 / HGX B200 specification table): FP4 18,
    FP8 9, BF16 4.5 PFLOPS with sparsity (dense half), 180 GB HBM3e at 7.7 TB/s, 1,000 W, NVLink 5
    at 1.8 TB/s; the driver's 148 SMs and 183359 MiB; 7680 bits x 3996 MHz x 2 = 7.67 TB/s."""
    b = lib.device("b200")
    assert b.peak("bf16") == pytest.approx(4.5e15 / 2) and b.peak("fp8") == pytest.approx(9e15 / 2)
    assert b.peak("fp4") == pytest.approx(18e15 / 2)
    assert b.memory.capacity_bytes == 183359 * MiB
    assert b.memory.bandwidth_bytes_per_s == pytest.approx(7680 / 8 * 3996e6 * 2, rel=0.005)
    assert (b.tdp_w, b.compute_units) == (1000, 148)
    assert b.scale_up.bandwidth_bytes_per_s == pytest.approx(1.8e12 / 2)
    node = lib.node_for("dgx-b200")
    assert (node.device, node.devices_per_node) == ("b200", 8)
    assert node.scale_out.bandwidth_per_device_bytes_per_s == pytest.approx(400e9 / 8)
    assert node.scale_up.bandwidth_bytes_per_s * 2 * 8 == pytest.approx(14.4e12)  # the datasheet's NVLink total


def test_gb200_is_the_nvl72_rack_per_gpu(lib):
    """GB200 NVL72's per-rack figures (NVIDIA's specification table) over its 72 GPUs: BF16 360,
    FP8 720, FP4 1,440 PFLOPS with sparsity (dense half), 13.4 TB HBM3e at 576 TB/s, NVLink 130
    TB/s; one NVLink domain of 72 GPUs over compute trays of 4 (2 superchips), one 400 Gb/s NIC per
    GPU; NVLink-C2C 900 GB/s bidirectional per superchip, shared by its 2 GPUs."""
    g = lib.device("gb200")
    assert g.peak("bf16") == pytest.approx(360e15 / 72 / 2) and g.peak("fp8") == pytest.approx(720e15 / 72 / 2)
    assert g.peak("fp4") == pytest.approx(1440e15 / 72 / 2)
    assert g.memory.capacity_bytes == pytest.approx(13.4e12 / 72, rel=0.001)  # 186 GB
    assert g.memory.bandwidth_bytes_per_s == pytest.approx(576e12 / 72)
    assert g.scale_up.bandwidth_bytes_per_s * 2 * 72 == pytest.approx(130e12, rel=0.005)
    assert g.host_link.bandwidth_bytes_per_s == pytest.approx(900e9 / 2 / 2)
    rack = lib.node_for("gb200-nvl72")
    assert (rack.device, rack.devices_per_node, rack.scale_up.size) == ("gb200", 4, 72)
    assert rack.scale_out.bandwidth_per_device_bytes_per_s == pytest.approx(400e9 / 8)


def test_pcie_server_has_no_nvlink(lib):
    node = lib.node_for("server-8x-a100-80gb-pcie")
    assert node.device == "a100-80gb-pcie"
    # PCIe 4.0 x16 per direction: 16 GT/s x 16 lanes / 8 = 32 GB/s, an order below NVLink 3
    assert node.scale_up.bandwidth_bytes_per_s <= 16e9 * 16 / 8
    assert node.scale_up.size == node.devices_per_node == 8


def test_tpu_v4_pod_slice(lib):
    node = lib.node_for("tpu-v4-pod-slice")
    assert node.devices_per_node == 4
    assert node.scale_up.size == 4096
    assert node.scale_up.topology == "torus-3d"
    assert lib.device("tpu-v4-pod-slice").id == "tpu-v4"


def test_tpu_v4_pod_as_palm_used_it(lib):
    """PaLM sec. 4: pods of 3072 chips on 768 hosts; the cross-pod exchange ran as a burst of 81 Tbps
    over the 1536 hosts of two pods: 81e12 / 1536 / 4 chips = 13.2 Gb/s per chip."""
    node = lib.node_for("tpu-v4-pod")
    assert node.scale_up.size == 768 * 4 and node.devices_per_node == 4
    assert node.scale_up.topology == "torus-3d"
    assert node.scale_up.bandwidth_bytes_per_s == pytest.approx(6 * 50e9)  # 6 ICI links of 50 GB/s
    assert node.scale_out.bandwidth_per_device_bytes_per_s * 8 == pytest.approx(81e12 / 1536 / 4, rel=0.02)
    from costmodel.comm_bridge import Links

    links = Links.from_specs(lib.device("tpu-v4"), node, None)
    assert links.devices_per_node == 3072  # collectives see the ICI domain, not the 4-chip host
    assert sorted(links.torus) == [12, 16, 16]
    # PaLM's cross-pod gradient exchange: one chip per pod pairs up over the DCN (ring of 2 moves S)
    from costmodel.comm import DEFAULT_LAUNCH_OVERHEAD_S, DEFAULT_SCALE_OUT_EFFICIENCY

    t = links.collective_time_s("all_reduce", GiB, 2, intra=False, per_node=1)
    wire = GiB / (13e9 / 8 * DEFAULT_SCALE_OUT_EFFICIENCY)
    assert t == pytest.approx(DEFAULT_LAUNCH_OVERHEAD_S + wire, rel=0.01)
    assert t > 50 * links.collective_time_s("all_reduce", GiB, 2)  # the same pair over ICI: 60x faster


def test_tpu_v5p_pod_torus_all_reduce_by_hand(lib):
    """8960 chips = 16 x 20 x 28; 6 ICI links of 100 GB/s per direction. A 1 GiB all-reduce over the
    whole pod, all three dimensions at once: 2 passes of (n-1)/n x 1 GiB over 6 link directions at
    0.9 of the line rate, plus 2 x (15 + 19 + 27) ring steps of 5 us and the call overhead."""
    from costmodel.comm import DEFAULT_LAUNCH_OVERHEAD_S, ICI_EFFICIENCY
    from costmodel.comm_bridge import Links

    node = lib.node_for("tpu-v5p-pod")
    assert node.scale_up.size == 16 * 20 * 28 == 8960
    links = Links.from_specs(lib.device("tpu-v5p"), node, None)
    wire = 2 * (8959 / 8960) * GiB / (6 * 100e9 * ICI_EFFICIENCY)
    lat = 2 * (15 + 19 + 27) * 5e-6
    assert links.collective_time_s("all_reduce", GiB, 8960) == pytest.approx(wire + lat + DEFAULT_LAUNCH_OVERHEAD_S)


def test_tpu_v5e_pod_is_a_2d_torus(lib):
    """256 chips = 16 x 16, 4 ports of 50 GB/s: a 1 GiB all-gather over the pod moves 255/256 GiB
    over the 4 link directions of both dimensions at once."""
    from costmodel.comm import ICI_EFFICIENCY
    from costmodel.comm_bridge import Links

    links = Links.from_specs(lib.device("tpu-v5e"), lib.node_for("tpu-v5e-pod"), None)
    links.intra_lat = 0.0
    links.params = links.params.__class__(launch_overhead_s=0.0)
    assert links.torus == (16, 16)
    assert links.collective_time_s("all_gather", GiB, 256) == pytest.approx(
        255 / 256 * GiB / (4 * 50e9 * ICI_EFFICIENCY))


def test_node_prices_are_devices_times_device_price(lib):
    for spec in lib.specs.values():
        if isinstance(spec, NodeSpec) and spec.price_per_hour_usd is not None:
            dev = lib.device(spec.id)
            assert dev.price_per_hour_usd is not None, spec.id
            assert spec.price_per_hour_usd == pytest.approx(spec.devices_per_node * dev.price_per_hour_usd, abs=0.01), spec.id


# ======================================================================== bad input

def _good_gpu() -> dict:
    return {
        "id": "test-gpu", "name": "Test GPU", "vendor": "test", "kind": "gpu",
        "memory": {"capacity": "80 GiB", "bandwidth": "3 TB/s"},
        "peak_flops": {"bf16": "900 TFLOP/s", "fp16": "900 TFLOP/s"},
        "sparse_flops": {"bf16": "1800 TFLOP/s"},
        "tdp": "700 W",
        "sources": {"memory": "datasheet", "peak_flops": "datasheet", "tdp": "datasheet"},
    }


def _good_node() -> dict:
    return {
        "id": "test-node", "name": "Test node", "vendor": "test", "kind": "node",
        "device": "h100-sxm", "devices_per_node": 8,
        "scale_up": {"size": 8, "bandwidth": "450 GB/s"},
        "sources": {"all": "datasheet"},
    }


def _good_cpu() -> dict:
    return {
        "id": "test-cpu", "name": "Test CPU", "vendor": "test", "kind": "cpu", "cores": 64, "threads": 128,
        "memory": {"capacity": "1 TiB", "bandwidth": "400 GB/s"}, "peak_flops": {"fp64": "3 TFLOP/s"},
        "tdp": "300 W", "sources": {"all": "datasheet"},
    }


def _mutate(base, path, value):
    data = copy.deepcopy(base)
    *parents, last = path
    d = data
    for p in parents:
        d = d[p]
    if value is _DELETE:
        del d[last]
    else:
        d[last] = value
    return data


_DELETE = object()

# (case name, YAML text or data, expected field attribute or None, substrings the message must hold)
BAD_SPECS = [
    ("missing-field", _mutate(_good_gpu(), ["memory"], _DELETE), "memory", ["missing required field"]),
    ("missing-nested-field", _mutate(_good_gpu(), ["memory", "bandwidth"], _DELETE), "memory.bandwidth", ["missing"]),
    ("missing-kind", _mutate(_good_gpu(), ["kind"], _DELETE), "kind", ["missing"]),
    ("wrong-unit", _mutate(_good_gpu(), ["memory", "capacity"], "80 GHz"), "memory.capacity", ["80 GHz"]),
    ("bandwidth-as-size", _mutate(_good_gpu(), ["memory", "bandwidth"], "3 TB"), "memory.bandwidth", ["3 TB"]),
    ("negative-bandwidth", _mutate(_good_gpu(), ["memory", "bandwidth"], "-3 TB/s"), "memory.bandwidth", ["positive"]),
    ("zero-capacity", _mutate(_good_gpu(), ["memory", "capacity"], "0 GiB"), "memory.capacity", ["positive"]),
    ("bare-number", _mutate(_good_gpu(), ["memory", "capacity"], 80), "memory.capacity", ["bare number", "80 GiB"]),
    ("bare-number-flops", _mutate(_good_gpu(), ["peak_flops", "bf16"], 9e14), "peak_flops.bf16", ["bare number"]),
    ("unknown-prefix", _mutate(_good_gpu(), ["memory", "capacity"], "80 QiB"), "memory.capacity", ["80 QiB"]),
    ("unknown-kind", _mutate(_good_gpu(), ["kind"], "fpga"), "kind", ["fpga", "gpu, tpu, cpu, nvme, node"]),
    ("unknown-extra-field", _mutate(_good_gpu(), ["memroy_type"], "HBM3"), "memroy_type", ["Extra inputs"]),
    ("unknown-dtype", _mutate(_good_gpu(), ["peak_flops", "bfloat16"], "900 TFLOP/s"), "peak_flops.bfloat16", ["Extra inputs"]),
    ("wrong-type-int", _mutate(_good_gpu(), ["dies_per_package"], "two"), "dies_per_package", ["integer"]),
    ("wrong-type-mapping", _mutate(_good_gpu(), ["memory"], "80 GiB"), "memory", ["dictionary"]),
    ("wrong-type-id", _mutate(_good_gpu(), ["id"], 100), "id", ["string"]),
    ("bad-id-pattern", _mutate(_good_gpu(), ["id"], "My GPU"), "id", ["pattern"]),
    ("bad-topology", _mutate(_good_gpu(), ["scale_up"], {"name": "x", "bandwidth": "1 GB/s", "topology": "hypercube"}), "scale_up.topology", ["hypercube"]),
    ("no-matmul-dtype", _mutate(_good_gpu(), ["peak_flops"], {"fp64": "60 TFLOP/s"}), "peak_flops", ["bf16, fp16, fp32"]),
    ("sparse-below-dense", _mutate(_good_gpu(), ["sparse_flops", "bf16"], "450 TFLOP/s"), "sparse_flops", ["bf16", "below the dense peak"]),
    ("threads-below-cores", _mutate(_good_cpu(), ["threads"], 32), "threads", ["fewer than the 64 cores"]),
    ("domain-size-inconsistent", _mutate(_good_node(), ["scale_up", "size"], 3), "scale_up", ["devices_per_node (8)"]),
    ("zero-devices-per-node", _mutate(_good_node(), ["devices_per_node"], 0), "devices_per_node", ["greater than or equal to 1"]),
    ("non-mapping-top-level", "- h100-sxm\n- a100-80gb-sxm\n", None, ["mapping"]),
    ("empty-file", "", None, ["mapping"]),
    ("yaml-syntax-error", "id: test-gpu\nmemory: {capacity: 80 GiB\nkind: gpu\n", None, ["not valid YAML", "line"]),
    ("yaml-bad-indent", "id: test-gpu\n  kind: gpu\n", None, ["not valid YAML", "line 2"]),
    ("yaml-python-tag", "!!python/object/apply:os.system ['echo pwned']\n", None, ["not valid YAML"]),
]


def _write(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
    return path


def test_good_fixtures_are_valid(tmp_path):
    for name, data in (("gpu", _good_gpu()), ("node", _good_node()), ("cpu", _good_cpu())):
        load_spec_file(_write(tmp_path, name, data))


@pytest.mark.parametrize("case, content, field, needles", BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_is_an_input_error_naming_file_and_field(tmp_path, case, content, field, needles):
    path = _write(tmp_path, case, content)
    with pytest.raises(InputError) as info:
        load_spec_file(path)
    err = info.value
    msg = str(err)
    assert err.file == str(path)
    assert str(path) in msg
    assert err.field == field
    if field is not None:
        assert f"field '{field}'" in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


@pytest.mark.parametrize("case, content, field, needles", BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_through_cli_exits_2(tmp_path, capsys, case, content, field, needles):
    path = _write(tmp_path, case, content)
    code, out, err = run_cli(["hardware", "list", "--json", "--hardware-file", str(path)], capsys)
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    flat = " ".join(err.split())  # rich may break long lines
    assert path.name in flat
    if field is not None:
        assert field in flat
    assert needles[0] in flat


def test_node_referring_to_unknown_device(tmp_path, capsys):
    path = _write(tmp_path, "orphan-node", _mutate(_good_node(), ["device"], "h900-sxm"))
    load_spec_file(path)  # the file on its own is well-formed
    with pytest.raises(InputError) as info:
        load_library([path])
    assert info.value.file == str(path)
    assert info.value.field == "device"
    assert "h900-sxm" in str(info.value)
    code, _, err = run_cli(["hardware", "list", "--hardware-file", str(path)], capsys)
    assert code == 2
    flat = " ".join(err.split())
    assert path.name in flat and "device" in flat and "h900-sxm" in flat


@pytest.mark.parametrize("field, ref", [("host_cpu", "cpu-xeon-9999"), ("nvme", "h100-sxm")])
def test_node_referring_to_unknown_or_wrong_kind_cpu_or_nvme(tmp_path, field, ref):
    path = _write(tmp_path, f"bad-{field}", _mutate(_good_node(), [field], ref))
    with pytest.raises(InputError) as info:
        load_library([path])
    assert info.value.field == field
    assert info.value.file == str(path)


def test_missing_hardware_file_is_an_input_error(tmp_path, capsys):
    code, _, err = run_cli(["hardware", "list", "--hardware-file", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2
    assert "nope.yaml" in " ".join(err.split())


def test_unknown_hardware_id_is_exit_2(capsys):
    code, _, err = run_cli(["hardware", "show", "h900-sxm"], capsys)
    assert code == 2
    assert "h900-sxm" in err


# ========================================================= user specs override shipped ids

def test_costmodel_hardware_path_overrides_shipped_id(tmp_path, monkeypatch, capsys):
    user = _mutate(_good_gpu(), ["id"], "h100-sxm")
    user["name"] = "My throttled H100"
    user["tdp"] = "500 W"
    user["price_per_hour_usd"] = 1.5
    user["sources"]["price_per_hour_usd"] = "my contract"
    spec_file = _write(tmp_path, "h100-sxm", user)
    monkeypatch.setenv("COSTMODEL_HARDWARE_PATH", str(tmp_path))

    lib = HardwareLibrary()
    spec = lib.get("h100-sxm")
    assert spec.name == "My throttled H100"
    assert spec.tdp_w == 500.0
    assert lib.files["h100-sxm"] == spec_file
    assert "a100-80gb-sxm" in lib.specs  # shipped specs are still there

    code, out, _ = run_cli(["hardware", "show", "h100-sxm", "--json"], capsys)
    assert code == 0
    assert json.loads(out)["price_per_hour_usd"] == 1.5

    # --hardware-file comes after COSTMODEL_HARDWARE_PATH and wins over it
    user["name"] = "From --hardware-file"
    other = tmp_path.parent / f"{tmp_path.name}-other"  # not inside the path directory: one id twice there is an error
    other.mkdir()
    extra = _write(other, "h100-sxm", user)
    code, out, _ = run_cli(["hardware", "show", "h100-sxm", "--json", "--hardware-file", str(extra)], capsys)
    assert code == 0
    assert json.loads(out)["name"] == "From --hardware-file"


def test_costmodel_hardware_path_with_bad_user_spec_names_it(tmp_path, monkeypatch, capsys):
    _write(tmp_path, "broken", _mutate(_good_gpu(), ["memory", "capacity"], "80 GHz"))
    monkeypatch.setenv("COSTMODEL_HARDWARE_PATH", str(tmp_path))
    code, _, err = run_cli(["hardware", "list"], capsys)
    assert code == 2
    flat = " ".join(err.split())
    assert "broken.yaml" in flat and "memory.capacity" in flat


def test_costmodel_hardware_path_missing_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COSTMODEL_HARDWARE_PATH", str(tmp_path / "does-not-exist"))
    code, _, err = run_cli(["hardware", "list"], capsys)
    assert code == 2
    assert "does-not-exist" in " ".join(err.split())


# ================================================================== YAML is read safely

_UNSAFE = re.compile(r"yaml\.(load|load_all|full_load|full_load_all|unsafe_load|unsafe_load_all)\s*\(|Loader\s*=\s*yaml\.(Loader|FullLoader|UnsafeLoader)")


def test_package_never_uses_unsafe_yaml_loading():
    files = sorted((ROOT / "costmodel").rglob("*.py")) + [ROOT / "cli.py"]
    offenders = []
    for f in files:
        for lineno, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if _UNSAFE.search(line):
                offenders.append(f"{f.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not offenders, "use yaml.safe_load / costmodel.specs.read_yaml:\n" + "\n".join(offenders)


def test_unsafe_pattern_catches_yaml_load():
    assert _UNSAFE.search("data = yaml.load(text)")
    assert _UNSAFE.search("yaml.load(f, Loader=yaml.FullLoader)")
    assert not _UNSAFE.search("data = yaml.safe_load(text)")


def test_shipped_specs_hold_no_python_tags():
    for f in HW_DIR.rglob("*.y*ml"):
        assert "!!python" not in f.read_text(encoding="utf-8"), f


def test_hardware_list_shows_a_cpus_memory_as_the_platform_maximum(capsys, monkeypatch):
    from costmodel.cli import common

    monkeypatch.setattr(common.console, "width", 200)
    code, out, _ = run_cli(["hardware", "list", "--kind", "cpu", "--json"], capsys)
    rows = {r["id"]: r for r in json.loads(out)}
    assert "memory_bytes" not in rows["cpu-epyc-9654"] and rows["cpu-epyc-9654"]["max_memory_bytes"] == 6 * 2**40
    code, out, _ = run_cli(["hardware", "list"], capsys)
    flat = " ".join(out.split())
    assert "max 6.00 TiB" in flat and "not memory installed" in flat
    code, out, _ = run_cli(["hardware", "show", "cpu-epyc-9654"], capsys)
    assert "platform maximum" in " ".join(out.split())


# ============================================ sources: required of shipped specs, not of users'

def _l40s() -> dict:
    """A minimal user spec, as a newcomer writes one: no sources."""
    return {"id": "l40s", "name": "NVIDIA L40S", "vendor": "nvidia", "kind": "gpu",
            "memory": {"capacity": "48 GB", "bandwidth": "864 GB/s"}, "peak_flops": {"bf16": "362 TFLOP/s"},
            "tdp": "350 W"}


def test_a_users_spec_loads_without_sources_marked_unsourced(tmp_path, capsys):
    path = _write(tmp_path, "l40s", _l40s())
    spec = load_spec_file(path)
    assert spec.sources == {} and spec.unsourced() == ["memory", "peak_flops", "tdp"]
    assert load_spec_file(_write(tmp_path, "part", _mutate(_l40s(), ["sources"], {"memory": "datasheet"}))).unsourced() == ["peak_flops", "tdp"]
    code, out, err = run_cli(["train", "llama-1.3b", "-H", "l40s", "--hardware-file", str(path), "--json"], capsys)
    assert code == 0, err
    code, out, _ = run_cli(["hardware", "show", "l40s", "--hardware-file", str(path), "--json"], capsys)
    assert json.loads(out)["unsourced"] == ["memory", "peak_flops", "tdp"]
    code, out, _ = run_cli(["hardware", "show", "l40s", "--hardware-file", str(path)], capsys)
    assert "unsourced" in out and "memory, peak_flops, tdp" in " ".join(out.split())
    code, out, _ = run_cli(["hardware", "list", "--hardware-file", str(path)], capsys)
    assert "unsourced (user files without citations): l40s" in " ".join(out.split())


@pytest.mark.parametrize("case, data, needles", [
    ("missing-source", _mutate(_good_gpu(), ["sources", "memory"], _DELETE), ["'memory'", "sources"]),
    ("empty-sources", _mutate(_good_gpu(), ["sources"], {}), ["'memory', 'peak_flops', 'tdp'", "sources"]),
    ("no-sources", _mutate(_good_gpu(), ["sources"], _DELETE), ["'memory', 'peak_flops', 'tdp'", "sources"]),
])
def test_a_shipped_spec_must_cite_every_figure_all_reported_at_once(case, data, needles):
    with pytest.raises(InputError) as info:
        parse_spec(data, "hardware/test-gpu.yaml", require_sources=True)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))
    assert parse_spec(data, "my.yaml").id == "test-gpu"  # a user's file loads


def test_every_problem_of_a_spec_is_reported_at_once(tmp_path, capsys):
    bad = _mutate(_mutate(_mutate(_l40s(), ["memory", "capacity"], 48), ["tdp"], _DELETE), ["peak_flops", "bfloat16"], "1 TFLOP/s")
    path = _write(tmp_path, "l40s-bad", bad)
    with pytest.raises(InputError) as info:
        load_spec_file(path)
    msg = str(info.value)
    assert info.value.field == "memory.capacity"
    for needle in ("field 'memory.capacity'", "bare number", "field 'peak_flops.bfloat16'", "field 'tdp': missing required field"):
        assert needle in msg, (needle, msg)
    code, _, err = run_cli(["hardware", "list", "--hardware-file", str(path)], capsys)
    flat = " ".join(err.split())
    assert code == 2 and "memory.capacity" in flat and "peak_flops.bfloat16" in flat and "'tdp'" in flat
