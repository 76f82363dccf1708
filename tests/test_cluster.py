"""costmodel.cluster (collectives from a measured scale_out.scaling) and `costmodel calibrate
--nccl-tests` (costmodel.bench.nccl_tests reads the logs, costmodel.cluster_fit fits them).

The logs below are synthetic but laid out as nccl-tests prints them (src/common.cu, src/util.cu):
an older release (no program name, PCI id [0x18]) for the all-reduce runs, 2.17 for the
all-gather run. Expected values are worked out by hand from the rows as written."""
import json
import math

import pytest
import yaml

from costmodel import cluster
from costmodel.bench import nccl_tests
from costmodel.bench.nccl_tests import Row
from costmodel.cli.app import main
from costmodel.cluster_fit import device_matches, fit_scaling
from costmodel.errors import InputError
from costmodel.specs import NodeSpec, ScaleOutScaling, load_library, load_spec_file, package_data_dir

AR_1NODE = """\
# nThread 1 nGpus 8 minBytes 8 maxBytes 134217728 step: 8(factor) warmup iters: 5 iters: 20 agg iters: 1 validation: 1 graph: 0
#
# Using devices
#  Rank  0 Group  0 Pid  41200 on gpu-node-01 device  0 [0x18] NVIDIA H100 80GB HBM3
#  Rank  1 Group  0 Pid  41201 on gpu-node-01 device  1 [0x2a] NVIDIA H100 80GB HBM3
#  Rank  2 Group  0 Pid  41202 on gpu-node-01 device  2 [0x3a] NVIDIA H100 80GB HBM3
#  Rank  3 Group  0 Pid  41203 on gpu-node-01 device  3 [0x5d] NVIDIA H100 80GB HBM3
#  Rank  4 Group  0 Pid  41204 on gpu-node-01 device  4 [0x9a] NVIDIA H100 80GB HBM3
#  Rank  5 Group  0 Pid  41205 on gpu-node-01 device  5 [0xab] NVIDIA H100 80GB HBM3
#  Rank  6 Group  0 Pid  41206 on gpu-node-01 device  6 [0xba] NVIDIA H100 80GB HBM3
#  Rank  7 Group  0 Pid  41207 on gpu-node-01 device  7 [0xdb] NVIDIA H100 80GB HBM3
#
#                                                              out-of-place                       in-place          
#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong
#        (B)    (elements)                               (us)  (GB/s)  (GB/s)            (us)  (GB/s)  (GB/s)       
           8             2     float     sum      -1    17.52    0.00    0.00      0    17.70    0.00    0.00      0
          64            16     float     sum      -1    17.31    0.00    0.01      0    17.48    0.00    0.01      0
         512           128     float     sum      -1    17.88    0.03    0.05      0    18.06    0.03    0.05      0
        4096          1024     float     sum      -1    18.40    0.22    0.39      0    18.58    0.22    0.39      0
       32768          8192     float     sum      -1    19.95    1.64    2.87      0    20.15    1.63    2.85      0
      262144         65536     float     sum      -1    26.10   10.04   17.58      0    26.36    9.94   17.40      0
     2097152        524288     float     sum      -1    30.58   68.57  120.00      0    30.89   67.89  118.81      0
    16777216       4194304     float     sum      -1    69.91  240.00  420.00      0    70.60  237.62  415.84      0
   134217728      33554432     float     sum      -1    538.3  249.31  436.30      0    543.7  246.85  431.98      0
# Out of bounds values : 0 OK
# Avg bus bandwidth    : 110.252 
#
"""

AR_4NODES = """\
+ mpirun -np 32 -N 8 --bind-to numa ./build/all_reduce_perf -b 8 -e 128M -f 8 -g 1
gpu-node-01:41200:41200 [0] NCCL INFO Bootstrap : Using ib0:10.0.0.1<0>
gpu-node-01:41200:41200 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB ; OOB ib0:10.0.0.1<0>
# nThread 1 nGpus 1 minBytes 8 maxBytes 134217728 step: 8(factor) warmup iters: 5 iters: 20 agg iters: 1 validation: 1 graph: 0
#
# Using devices
#  Rank  0 Group  0 Pid  41200 on gpu-node-01 device  0 [0x18] NVIDIA H100 80GB HBM3
#  Rank  1 Group  0 Pid  41201 on gpu-node-01 device  1 [0x2a] NVIDIA H100 80GB HBM3
#  Rank  2 Group  0 Pid  41202 on gpu-node-01 device  2 [0x3a] NVIDIA H100 80GB HBM3
#  Rank  3 Group  0 Pid  41203 on gpu-node-01 device  3 [0x5d] NVIDIA H100 80GB HBM3
#  Rank  4 Group  0 Pid  41204 on gpu-node-01 device  4 [0x9a] NVIDIA H100 80GB HBM3
#  Rank  5 Group  0 Pid  41205 on gpu-node-01 device  5 [0xab] NVIDIA H100 80GB HBM3
#  Rank  6 Group  0 Pid  41206 on gpu-node-01 device  6 [0xba] NVIDIA H100 80GB HBM3
#  Rank  7 Group  0 Pid  41207 on gpu-node-01 device  7 [0xdb] NVIDIA H100 80GB HBM3
#  Rank  8 Group  0 Pid  41208 on gpu-node-02 device  0 [0x18] NVIDIA H100 80GB HBM3
#  Rank  9 Group  0 Pid  41209 on gpu-node-02 device  1 [0x2a] NVIDIA H100 80GB HBM3
#  Rank 10 Group  0 Pid  41210 on gpu-node-02 device  2 [0x3a] NVIDIA H100 80GB HBM3
#  Rank 11 Group  0 Pid  41211 on gpu-node-02 device  3 [0x5d] NVIDIA H100 80GB HBM3
#  Rank 12 Group  0 Pid  41212 on gpu-node-02 device  4 [0x9a] NVIDIA H100 80GB HBM3
#  Rank 13 Group  0 Pid  41213 on gpu-node-02 device  5 [0xab] NVIDIA H100 80GB HBM3
#  Rank 14 Group  0 Pid  41214 on gpu-node-02 device  6 [0xba] NVIDIA H100 80GB HBM3
#  Rank 15 Group  0 Pid  41215 on gpu-node-02 device  7 [0xdb] NVIDIA H100 80GB HBM3
#  Rank 16 Group  0 Pid  41216 on gpu-node-03 device  0 [0x18] NVIDIA H100 80GB HBM3
#  Rank 17 Group  0 Pid  41217 on gpu-node-03 device  1 [0x2a] NVIDIA H100 80GB HBM3
#  Rank 18 Group  0 Pid  41218 on gpu-node-03 device  2 [0x3a] NVIDIA H100 80GB HBM3
#  Rank 19 Group  0 Pid  41219 on gpu-node-03 device  3 [0x5d] NVIDIA H100 80GB HBM3
#  Rank 20 Group  0 Pid  41220 on gpu-node-03 device  4 [0x9a] NVIDIA H100 80GB HBM3
#  Rank 21 Group  0 Pid  41221 on gpu-node-03 device  5 [0xab] NVIDIA H100 80GB HBM3
#  Rank 22 Group  0 Pid  41222 on gpu-node-03 device  6 [0xba] NVIDIA H100 80GB HBM3
#  Rank 23 Group  0 Pid  41223 on gpu-node-03 device  7 [0xdb] NVIDIA H100 80GB HBM3
#  Rank 24 Group  0 Pid  41224 on gpu-node-04 device  0 [0x18] NVIDIA H100 80GB HBM3
#  Rank 25 Group  0 Pid  41225 on gpu-node-04 device  1 [0x2a] NVIDIA H100 80GB HBM3
#  Rank 26 Group  0 Pid  41226 on gpu-node-04 device  2 [0x3a] NVIDIA H100 80GB HBM3
#  Rank 27 Group  0 Pid  41227 on gpu-node-04 device  3 [0x5d] NVIDIA H100 80GB HBM3
#  Rank 28 Group  0 Pid  41228 on gpu-node-04 device  4 [0x9a] NVIDIA H100 80GB HBM3
#  Rank 29 Group  0 Pid  41229 on gpu-node-04 device  5 [0xab] NVIDIA H100 80GB HBM3
#  Rank 30 Group  0 Pid  41230 on gpu-node-04 device  6 [0xba] NVIDIA H100 80GB HBM3
#  Rank 31 Group  0 Pid  41231 on gpu-node-04 device  7 [0xdb] NVIDIA H100 80GB HBM3
#
#                                                              out-of-place                       in-place          
#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong
#        (B)    (elements)                               (us)  (GB/s)  (GB/s)            (us)  (GB/s)  (GB/s)       
gpu-node-01:41200:41230 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/IPC
           8             2     float     sum      -1    61.50    0.00    0.00      0    62.12    0.00    0.00      0
          64            16     float     sum      -1    60.20    0.00    0.00      0    60.80    0.00    0.00      0
         512           128     float     sum      -1    63.00    0.01    0.02      0    63.63    0.01    0.02      0
        4096          1024     float     sum      -1    66.30    0.06    0.12      0    66.96    0.06    0.12      0
       32768          8192     float     sum      -1    71.60    0.46    0.89      0    72.32    0.45    0.88      0
      262144         65536     float     sum      -1    88.90    2.95    5.71      0    89.79    2.92    5.66      0
     2097152        524288     float     sum      -1    101.6   20.65   40.00      0    102.6   20.44   39.60      0
    16777216       4194304     float     sum      -1    216.7   77.42  150.00      0    218.9   76.65  148.51      0
   134217728      33554432     float     sum      -1   1625.3   82.58  160.00      0   1641.5   81.76  158.42      0
# Out of bounds values : 0 OK
# Avg bus bandwidth    : 39.4417 
#
"""

AG_2NODES = """\
# nccl-tests version 2.17.6 nccl-headers=22803 nccl-library=22803
# Collective test starting: all_gather_perf
# nThread 1 nGpus 1 minBytes 1024 maxBytes 268435456 step: 8(factor) warmup iters: 5 iters: 20 agg iters: 1 validation: 1 graph: 0 unalign: 0
#
# Using devices
#  Rank  0 Group  0 Pid  41200 on gpu-node-01 device  0 [0000:18:00] NVIDIA H100 80GB HBM3
#  Rank  1 Group  0 Pid  41201 on gpu-node-01 device  1 [0000:2a:00] NVIDIA H100 80GB HBM3
#  Rank  2 Group  0 Pid  41202 on gpu-node-01 device  2 [0000:3a:00] NVIDIA H100 80GB HBM3
#  Rank  3 Group  0 Pid  41203 on gpu-node-01 device  3 [0000:5d:00] NVIDIA H100 80GB HBM3
#  Rank  4 Group  0 Pid  41204 on gpu-node-01 device  4 [0000:9a:00] NVIDIA H100 80GB HBM3
#  Rank  5 Group  0 Pid  41205 on gpu-node-01 device  5 [0000:ab:00] NVIDIA H100 80GB HBM3
#  Rank  6 Group  0 Pid  41206 on gpu-node-01 device  6 [0000:ba:00] NVIDIA H100 80GB HBM3
#  Rank  7 Group  0 Pid  41207 on gpu-node-01 device  7 [0000:db:00] NVIDIA H100 80GB HBM3
#  Rank  8 Group  0 Pid  41208 on gpu-node-02 device  0 [0000:18:00] NVIDIA H100 80GB HBM3
#  Rank  9 Group  0 Pid  41209 on gpu-node-02 device  1 [0000:2a:00] NVIDIA H100 80GB HBM3
#  Rank 10 Group  0 Pid  41210 on gpu-node-02 device  2 [0000:3a:00] NVIDIA H100 80GB HBM3
#  Rank 11 Group  0 Pid  41211 on gpu-node-02 device  3 [0000:5d:00] NVIDIA H100 80GB HBM3
#  Rank 12 Group  0 Pid  41212 on gpu-node-02 device  4 [0000:9a:00] NVIDIA H100 80GB HBM3
#  Rank 13 Group  0 Pid  41213 on gpu-node-02 device  5 [0000:ab:00] NVIDIA H100 80GB HBM3
#  Rank 14 Group  0 Pid  41214 on gpu-node-02 device  6 [0000:ba:00] NVIDIA H100 80GB HBM3
#  Rank 15 Group  0 Pid  41215 on gpu-node-02 device  7 [0000:db:00] NVIDIA H100 80GB HBM3
#
#                                                              out-of-place                       in-place          
#       size         count      type   redop    root     time   algbw   busbw  #wrong     time   algbw   busbw  #wrong 
#        (B)    (elements)                               (us)  (GB/s)  (GB/s)             (us)  (GB/s)  (GB/s)         
        1024            16     float    none      -1    40.10    0.03    0.02       0    40.50    0.03    0.02       0
        8192           128     float    none      -1    42.30    0.19    0.18       0    42.72    0.19    0.18       0
       65536          1024     float    none      -1    41.00    1.60    1.50       0    41.41    1.58    1.48       0
      524288          8192     float    none      -1    48.50   10.81   10.13       0    48.98   10.70   10.03       0
     4194304         65536     float    none      -1    56.17   74.67   70.00       0    56.74   73.93   69.31       0
    33554432        524288     float    none      -1   285.98  117.33  110.00       0   288.84  116.17  108.91       0
   268435456       4194304     float    none      -1  2132.70  125.87  118.00       0  2154.02  124.62  116.83       0
# Out of bounds values : 0 OK
# Avg bus bandwidth    : 44.0421 
#
# Collective test concluded: all_gather_perf
"""

GPU = "NVIDIA H100 80GB HBM3"

# large-message bus bandwidth: median busbw (GB/s) over the rows of the three largest sizes
BW_AR_1 = 420.00e9   # median(120.00, 420.00, 436.30)
BW_AR_4 = 150.00e9   # median(40.00, 150.00, 160.00)
BW_AG_2 = 110.00e9   # median(70.00, 110.00, 118.00)
# step latency of a multi-node log: median over its three smallest sizes of
# (time - bus_factor * size / bus_bandwidth) / ring_steps
# all-reduce, 32 ranks: ring steps min(2 * 31, 2 * log2 32) = 10, bus factor 2 * 31 / 32
LAT_AR_4 = sorted((t * 1e-6 - 2 * 31 / 32 * s / BW_AR_4) / 10 for s, t in ((8, 61.50), (64, 60.20), (512, 63.00)))[1]
# all-gather, 16 ranks: ring steps 15, bus factor 15 / 16
LAT_AG_2 = sorted((t * 1e-6 - 15 / 16 * s / BW_AG_2) / 15 for s, t in ((1024, 40.10), (8192, 42.30), (65536, 41.00)))[1]
STEP_LATENCY = (LAT_AR_4 + LAT_AG_2) / 2  # the median of two logs


def test_hand_values():
    assert LAT_AR_4 == pytest.approx((61.50e-6 - 1.9375 * 8 / 150e9) / 10)        # the 8-byte row is the median
    assert LAT_AG_2 == pytest.approx((41.00e-6 - 0.9375 * 65536 / 110e9) / 15)    # the 64 KiB row is the median
    assert STEP_LATENCY == pytest.approx(4.42304e-6, rel=1e-5)


@pytest.fixture
def logs(tmp_path):
    """The three runs as files: the 1-node all-reduce names its op only in its file name, the
    4-node one on an echoed mpirun line, the all-gather on its 'Collective test starting' line."""
    files = {"allreduce-1node.log": AR_1NODE, "run-4nodes.log": AR_4NODES, "run-ag.txt": AG_2NODES}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return [tmp_path / n for n in files]


# --------------------------------------------------------------------------------- parsing

def test_parse_one_node_all_reduce(logs):
    [run] = nccl_tests.parse_file(logs[0])
    assert run.op == "all_reduce" and run.program is None  # from the file name
    assert (run.ranks, run.nodes, run.ranks_per_node) == (8, 1, 8)
    assert run.hosts == ("gpu-node-01",) and run.gpu == GPU
    assert run.params == {"nThread": 1, "nGpus": 8, "minBytes": 8, "maxBytes": 134217728}
    assert [r.size for r in run.rows] == [8 * 8**i for i in range(9)]
    assert run.rows[0] == Row(size=8, count=2, dtype="float", redop="sum", time_us=17.52, algbw_gbps=0.0, busbw_gbps=0.0,
                              wrong=0)
    assert run.rows[-1] == Row(size=134217728, count=33554432, dtype="float", redop="sum", time_us=538.3,
                               algbw_gbps=249.31, busbw_gbps=436.30, wrong=0)  # out-of-place, not the in-place 543.7
    assert run.avg_busbw_gbps == pytest.approx(110.252)


def test_parse_multi_node_runs(logs):
    [ar] = nccl_tests.parse_file(logs[1])
    assert ar.op == "all_reduce" and ar.program == "all_reduce_perf"  # the echoed mpirun line
    assert (ar.ranks, ar.nodes, ar.ranks_per_host) == (32, 4, (8, 8, 8, 8))
    assert ar.hosts == ("gpu-node-01", "gpu-node-02", "gpu-node-03", "gpu-node-04")
    assert len(ar.rows) == 9 and ar.rows[0].time_us == 61.50 and ar.rows[-1].busbw_gbps == 160.00  # NCCL INFO lines skipped
    [ag] = nccl_tests.parse_file(logs[2])
    assert ag.op == "all_gather" and ag.program == "all_gather_perf" and ag.version == "2.17.6"
    assert (ag.ranks, ag.nodes, ag.gpu) == (16, 2, GPU)
    assert [(r.size, r.count, r.redop, r.time_us, r.busbw_gbps) for r in ag.rows[:2]] == [
        (1024, 16, "none", 40.10, 0.02), (8192, 128, "none", 42.30, 0.18)]
    assert ag.rows[-1].time_us == 2132.70 and ag.rows[-1].busbw_gbps == 118.00


def test_parse_several_runs_in_one_file_and_labelled_lines(tmp_path):
    f = tmp_path / "sweep.log"
    f.write_text(AG_2NODES + AR_4NODES)
    runs = nccl_tests.parse_file(f)
    assert [(r.op, r.ranks, r.nodes, len(r.rows)) for r in runs] == [("all_gather", 16, 2, 7), ("all_reduce", 32, 4, 9)]
    h = tmp_path / "h.log"  # a NAME_SUFFIX build, named only on the mpirun line
    h.write_text(AR_4NODES.replace("all_reduce_perf", "all_reduce_perf_mpi"))
    assert [(r.op, r.program) for r in nccl_tests.parse_file(h)] == [("all_reduce", "all_reduce_perf_mpi")]
    g = tmp_path / "srun-l.log"  # srun --label
    g.write_text("".join(f"0: {line}\n" for line in AG_2NODES.splitlines()))
    [run] = nccl_tests.parse_file(g)
    assert (run.op, run.ranks, run.nodes, len(run.rows)) == ("all_gather", 16, 2, 7)


@pytest.mark.parametrize("name, text, message", [
    ("run.log", AR_1NODE, "names no single collective"),
    ("x.log", "hello\nworld\n", "not an nccl-tests log"),
    ("x.log", "", "not an nccl-tests log"),
    ("all_reduce.log", AR_1NODE.split("#       size")[0], "no result rows"),
    ("all_reduce.log", "\n".join(line for line in AR_1NODE.splitlines() if "Rank" not in line), "no '#  Rank"),
    ("all_reduce.log", AR_1NODE.replace("538.3  249.31  436.30", "538.3  249.31"), "line 24: a result row of 12 columns where the table header has 13"),
    ("all_reduce.log", AR_1NODE.replace("538.3  249.31  436.30", "538.3  249.31    -nan"), "line 24: time and bandwidths"),
    ("all_reduce.log", AR_1NODE.replace("538.3  249.31  436.30", "538.3  249.31  fast"), "line 24: not a result row"),
    ("b.log", AR_4NODES.replace("./build/all_reduce_perf", "./build/broadcast_perf"), "broadcast_perf: not one of"),
    ("all_reduce.log", AR_1NODE.replace("#  Rank  3", "#  Rank  9"), "highest is 9"),
])
def test_parse_bad_input_names_the_file(tmp_path, name, text, message):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(InputError) as exc:
        nccl_tests.parse_file(f)
    assert message in str(exc.value) and str(f) in str(exc.value)


def test_parse_unreadable_and_not_utf8(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        nccl_tests.parse_file(tmp_path / "missing.log")
    f = tmp_path / "all_reduce.log"
    f.write_bytes(AR_1NODE.encode()[:200] + b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match=r"not UTF-8 text \(byte 0xff at line 4\)"):
        nccl_tests.parse_file(f)


# ------------------------------------------------------------------------------------- fit

def test_fit_bandwidth_and_latency(logs):
    fit = fit_scaling(nccl_tests.parse_files(logs))
    table = {(g.op, g.nodes): g for g in fit.groups}
    assert sorted(table) == [("all_gather", 2), ("all_reduce", 1), ("all_reduce", 4)]
    assert table["all_reduce", 1].bus_bandwidth_bytes_per_s == pytest.approx(BW_AR_1)
    assert table["all_reduce", 4].bus_bandwidth_bytes_per_s == pytest.approx(BW_AR_4)
    assert table["all_gather", 2].bus_bandwidth_bytes_per_s == pytest.approx(BW_AG_2)
    assert table["all_reduce", 4].sizes == [2097152, 16777216, 134217728] and table["all_reduce", 4].ranks == 32
    assert table["all_reduce", 1].step_latency_s is None
    assert table["all_reduce", 4].step_latency_s == pytest.approx(LAT_AR_4)
    assert table["all_gather", 2].step_latency_s == pytest.approx(LAT_AG_2)
    assert fit.step_latency_s == pytest.approx(STEP_LATENCY)
    assert (fit.gpu, fit.ranks_per_node) == (GPU, 8)
    assert fit.bus_bandwidth() == {"all_reduce": {1: pytest.approx(BW_AR_1), 4: pytest.approx(BW_AR_4)},
                                   "all_gather": {2: pytest.approx(BW_AG_2)}}
    assert fit.scaling_yaml() == {"step_latency": "4.423 us", "bus_bandwidth": {
        "all_gather": {2: "110 GB/s"}, "all_reduce": {1: "420 GB/s", 4: "150 GB/s"}}}
    assert any("all_gather: measured at 2 nodes only" in w for w in fit.warnings)


def test_fit_leaves_out_an_op_measured_inside_one_node_only(logs, tmp_path):
    one = tmp_path / "allgather-1node.log"  # the op comes from the file name
    one.write_text(AR_1NODE)
    fit = fit_scaling(nccl_tests.parse_files([logs[0], logs[1], one]))
    assert fit.bus_bandwidth() == {"all_reduce": {1: pytest.approx(BW_AR_1), 4: pytest.approx(BW_AR_4)}}
    assert [g.used for g in fit.groups if g.op == "all_gather"] == [False]
    assert any("all_gather: measured only inside one node" in w for w in fit.warnings)
    assert fit.step_latency_s == pytest.approx(LAT_AR_4)


def test_fit_refuses_what_it_cannot_fit(logs, tmp_path):
    with pytest.raises(InputError, match="no log spans several nodes"):
        fit_scaling(nccl_tests.parse_files([logs[0]]))
    one_host = tmp_path / "ag-16.log"  # 16 ranks on one host: 16 per node, the others have 8
    one_host.write_text(AG_2NODES.replace("gpu-node-02", "gpu-node-01"))
    with pytest.raises(InputError, match="16 ranks per node"):
        fit_scaling(nccl_tests.parse_files([logs[1], one_host]))
    other = tmp_path / "a100.log"
    other.write_text(AG_2NODES.replace(GPU, "NVIDIA A100-SXM4-80GB"))
    with pytest.raises(InputError, match="different GPUs"):
        fit_scaling(nccl_tests.parse_files([logs[1], other]))
    with pytest.raises(InputError, match="no nccl-tests logs"):
        fit_scaling([])


@pytest.mark.parametrize("spec_id, gpu, ok", [
    ("h100-sxm", "NVIDIA H100 80GB HBM3", True), ("h100-pcie", "NVIDIA H100 80GB HBM3", False),
    ("h100-pcie", "NVIDIA H100 PCIe", True), ("h200-sxm", "NVIDIA H200", True),
    ("a100-80gb-sxm", "NVIDIA A100-SXM4-80GB", True), ("a100-40gb-sxm", "NVIDIA A100-SXM4-80GB", False),
    ("a100-80gb-pcie", "NVIDIA A100 80GB PCIe", True), ("mi300x", "AMD Instinct MI300X", True),
    ("h100-sxm", "NVIDIA H200", False),
])
def test_device_matches(spec_id, gpu, ok):
    assert device_matches(spec_id, gpu) is ok


# ------------------------------------------------------------------------------ CLI and spec

def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def test_cli_writes_a_node_spec_that_loads_back(capsys, logs, tmp_path):
    out = tmp_path / "cluster.yaml"
    code, stdout, err = run(capsys, "calibrate", "--nccl-tests", *logs, "--out", out, "--json")
    assert code == 0, err
    d = json.loads(stdout)
    assert (d["id"], d["base"], d["out"]) == ("dgx-h100-measured", "dgx-h100", str(out))
    assert d["step_latency_s"] == pytest.approx(STEP_LATENCY)
    assert [(r["op"], r["nodes"], r["ranks"], round(r["bus_bandwidth_gbps"], 6)) for r in d["table"]] == [
        ("all_gather", 2, 16, 110.0), ("all_reduce", 1, 8, 420.0), ("all_reduce", 4, 32, 150.0)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name] + [p.name for p in logs])  # no temp file left

    spec = load_spec_file(out)
    base = load_spec_file(package_data_dir("hardware") / "nodes" / "dgx-h100.yaml")
    assert isinstance(spec, NodeSpec) and spec.id == "dgx-h100-measured"
    assert (spec.device, spec.devices_per_node, spec.scale_up) == (base.device, base.devices_per_node, base.scale_up)
    assert spec.scale_out.bandwidth_per_device_bytes_per_s == base.scale_out.bandwidth_per_device_bytes_per_s
    sc = spec.scale_out.scaling
    assert sc.step_latency_s == pytest.approx(STEP_LATENCY, rel=1e-3)  # written as "4.423 us"
    assert sc.bus_bandwidth == {"all_reduce": {1: pytest.approx(BW_AR_1), 4: pytest.approx(BW_AR_4)},
                                "all_gather": {2: pytest.approx(BW_AG_2)}}
    assert all(p.name in spec.sources["scale_out"] for p in logs)
    raw = yaml.safe_load(out.read_text())
    assert raw["scale_out"]["scaling"]["bus_bandwidth"]["all_reduce"] == {1: "420 GB/s", 4: "150 GB/s"}
    assert "dgx-h100-measured" in load_library([out]).ids()

    # interpolation on the loaded table: log-log between 1 and 4 nodes, the 4-node segment's power law beyond
    slope = math.log(BW_AR_4 / BW_AR_1) / math.log(4)
    assert cluster.bus_bandwidth_at(sc, "all_reduce", 2) == pytest.approx(math.sqrt(BW_AR_1 * BW_AR_4))
    assert cluster.bus_bandwidth_at(sc, "all_reduce", 2) == pytest.approx(BW_AR_1 * 2 ** slope)
    assert cluster.bus_bandwidth_at(sc, "all_reduce", 8) == pytest.approx(BW_AR_4 * 2 ** slope)
    assert cluster.bus_bandwidth_at(sc, "all_reduce", 1) == pytest.approx(BW_AR_1)
    assert cluster.bus_bandwidth_at(sc, "all_gather", 64) == pytest.approx(BW_AG_2)   # one point: flat
    assert cluster.bus_bandwidth_at(sc, "reduce_scatter", 4) == pytest.approx(BW_AG_2)  # all_gather's table
    assert cluster.bus_bandwidth_at(sc, "all_to_all", 4) is None


def test_cli_table_node_and_id(capsys, logs, tmp_path):
    out = tmp_path / "c.yaml"
    code, stdout, err = run(capsys, "calibrate", "--nccl-tests", logs[0], "--nccl-tests", logs[1], "--out", out,
                            "--node", "dgx-a100", "--id", "my-cluster")
    assert code == 0, err
    for text in ("all_reduce", "420.0", "150.0", "6.1 us", "my-cluster", "dgx-a100"):
        assert text in stdout, stdout
    assert "device is a100-80gb-sxm" in err  # a warning, not an error: the user named the node
    spec = load_spec_file(out)
    assert spec.id == "my-cluster" and spec.device == "a100-80gb-sxm"
    assert spec.scale_out.scaling.step_latency_s == pytest.approx(LAT_AR_4, rel=1e-3)


@pytest.mark.parametrize("content", [b"\x00\x01\x02 not a log", b"PK\x03\x04\xff\xfe", b"size count type\n1 2 3\n"])
def test_cli_garbage_file_exits_2_with_one_line(capsys, tmp_path, logs, content):
    bad = tmp_path / "garbage.log"
    bad.write_bytes(content)
    out = tmp_path / "c.yaml"
    code, stdout, err = run(capsys, "calibrate", "--nccl-tests", logs[1], bad, "--out", out)
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and "garbage.log" in err and "Traceback" not in err, err
    assert not out.exists()


def test_cli_refuses_to_overwrite_a_shipped_spec(capsys, logs):
    target = package_data_dir("hardware") / "nodes" / "dgx-h100.yaml"
    before = target.read_bytes()
    code, _, err = run(capsys, "calibrate", "--nccl-tests", *logs, "--out", target)
    assert code == 2 and "refusing to write inside the shipped hardware/ directory" in err
    code, _, err = run(capsys, "calibrate", "--nccl-tests", *logs, "--out", package_data_dir("hardware") / "calibrated" / "x.yaml")
    assert code == 2 and "refusing" in err
    assert target.read_bytes() == before


def test_cli_rejects_mixed_options(capsys, logs, tmp_path):
    code, _, err = run(capsys, "calibrate", logs[1], "--out", tmp_path / "c.yaml")
    assert code == 2 and "unexpected argument" in err
    before = logs[1].read_bytes()
    code, _, err = run(capsys, "calibrate", "--nccl-tests", *logs, "--out", logs[1])
    assert code == 2 and "is one of the --nccl-tests inputs" in err and logs[1].read_bytes() == before
    code, _, err = run(capsys, "calibrate", "--nccl-tests", logs[1], "--check", "--out", tmp_path / "c.yaml")
    assert code == 2 and "--check cannot be combined with --nccl-tests" in err
    code, _, err = run(capsys, "calibrate", "--records", logs[1], "--node", "dgx-h100", "--out", tmp_path / "c.yaml")
    assert code == 2 and "only apply with --nccl-tests" in err
    code, _, err = run(capsys, "calibrate", "--nccl-tests", logs[1], "--id", "Bad Id", "--out", tmp_path / "c.yaml")
    assert code == 2 and "'id'" in err and not (tmp_path / "c.yaml").exists()


# -------------------------------------------------------------------------- costmodel.cluster

TABLE = ScaleOutScaling(step_latency=60e-6, bus_bandwidth={"all_reduce": {1: 436e9, 4: 160e9, 64: 33e9},
                                                           "all_gather": {1: 250e9, 64: 11e9}})


def test_bus_bandwidth_at_interpolates_log_log():
    bw = lambda op, n: cluster.bus_bandwidth_at(TABLE, op, n)  # noqa: E731
    assert bw("all_reduce", 1) == 436e9 and bw("all_reduce", 4) == pytest.approx(160e9)
    assert bw("all_reduce", 64) == pytest.approx(33e9)
    assert bw("all_reduce", 0.5) == 436e9  # flat below the smallest count
    # between two counts: a power law through both; at the geometric middle, the geometric mean
    assert bw("all_reduce", 2) == pytest.approx(math.sqrt(436e9 * 160e9))  # 264.1 GB/s
    assert bw("all_reduce", 16) == pytest.approx(math.sqrt(160e9 * 33e9))  # 72.66 GB/s
    assert bw("all_reduce", 8) == pytest.approx(160e9 * (33 / 160) ** 0.25)  # 8 = 4 * 16 ** (1/4)
    # past the largest count: the last segment's power law (33 GB/s halves... by (33/160) ** (1/4) per doubling)
    assert bw("all_reduce", 128) == pytest.approx(33e9 * (33 / 160) ** 0.25)
    assert bw("all_reduce", 1024) == pytest.approx(33e9 * (33 / 160) ** 1.0)
    assert bw("all_gather", 8) == pytest.approx(250e9 * (11 / 250) ** 0.5)  # 8 = sqrt(64)
    assert bw("allreduce", 2) == bw("all_reduce", 2)  # op aliases
    assert bw("reduce_scatter", 8) == bw("all_gather", 8)  # falls back to all_gather's table
    assert bw("all_to_all", 4) is None and bw("send_recv", 4) is None  # NIC line rate instead


def test_bus_bandwidth_at_never_rises_past_the_last_point():
    rising = ScaleOutScaling(step_latency=1e-6, bus_bandwidth={"all_reduce": {1: 100e9, 2: 200e9}})
    assert cluster.bus_bandwidth_at(rising, "all_reduce", 1.5) == pytest.approx(100e9 * 1.5)  # slope 1 in between
    assert cluster.bus_bandwidth_at(rising, "all_reduce", 8) == 200e9
    single = ScaleOutScaling(step_latency=1e-6, bus_bandwidth={"all_gather": {4: 80e9}})
    assert [cluster.bus_bandwidth_at(single, "all_gather", n) for n in (1, 4, 64)] == [80e9] * 3


@pytest.mark.parametrize("op, world, steps", [
    ("all_reduce", 1, 0), ("all_reduce", 2, 2), ("all_reduce", 3, 4), ("all_reduce", 8, 6), ("all_reduce", 32, 10),
    ("all_reduce", 48, 12), ("all_gather", 8, 7), ("reduce_scatter", 32, 31), ("all_to_all", 16, 15),
    ("broadcast", 4, 3), ("send_recv", 64, 1),
])
def test_ring_steps(op, world, steps):
    # all-reduce: min(ring 2(n - 1), tree 2 ceil(log2 n)); 3 ranks: min(4, 4), 48 ranks: min(94, 12)
    assert cluster.ring_steps(op, world) == steps


def test_collective_time_s():
    nic = 50e9
    # 1 GB all-reduce over 32 ranks on 4 nodes: 10 steps x 60 us + 2 * 31/32 * 1e9 / 160 GB/s
    assert cluster.collective_time_s(TABLE, "all_reduce", 1e9, 32, 4, nic) == pytest.approx(600e-6 + 0.012109375)
    # all-gather over 16 ranks on 2 nodes: 15 x 60 us + 15/16 * 1e8 / (250 * (11/250) ** (1/6)) GB/s
    bw2 = 250e9 * (11 / 250) ** (1 / 6)
    assert cluster.collective_time_s(TABLE, "all_gather", 1e8, 16, 2, nic) == pytest.approx(900e-6 + 15 / 16 * 1e8 / bw2)
    # no table for all-to-all: the NIC line rate; 31 steps
    assert cluster.collective_time_s(TABLE, "all_to_all", 1e8, 32, 4, nic) == pytest.approx(31 * 60e-6 + 31 / 32 * 1e8 / nic)
    # point-to-point: one step, the whole message, no bus factor
    assert cluster.collective_time_s(TABLE, "send_recv", 1e6, 2, 2, nic) == pytest.approx(60e-6 + 1e6 / nic)
