"""ZeRO-Offload / ZeRO-Infinity: what lives where, host DRAM and NVMe per node, the CPU Adam step,
and the papers' largest trainable model on a V100 (Ren et al. 2021; Rajbhandari et al. 2021)."""
import json

import pytest

from costmodel import offload
from costmodel.cli.app import main
from costmodel.memory import OFFLOAD_GRAD_BUCKET_ELEMENTS, OFFLOAD_GRAD_BUCKETS, state_bytes_per_param, train_memory
from costmodel.specs import load_library
from costmodel.training import estimate_train
from costmodel.validate import model_from_record
from costmodel.workload import Parallel, TrainJob


def gpt(layers, hidden, heads=32):
    return model_from_record({"arch": "gpt", "layers": layers, "hidden": hidden, "heads": heads, "kv_heads": heads,
                              "ffn": 4 * hidden, "vocab": 50304, "seq": 1024, "tied_embeddings": True, "mlp": "gelu",
                              "norm": "layernorm", "positions": "learned", "bias": True}, "test", 1024)


def _job(**kw):
    base = dict(micro_batch=1, seq_len=1024, precision="amp-fp16", recompute="full", attention="standard",
                framework="deepspeed")
    base.update(kw)
    return TrainJob(**base)


def test_zero_offload_placement_2_bytes_on_gpu_14_on_host():
    # Ren et al. 2021 fig. 2: p16 (2M) stays on the GPU; g16 (2M), p32 (4M), m32 and v32 (8M) go to
    # the host. One GPU, so the device holds the whole model.
    m = gpt(50, 4096)
    mem = train_memory(m, _job(offload_optimizer="cpu"), Parallel(zero_stage=2))
    P = m.params
    assert mem.weights_bytes == pytest.approx(2.0 * P, rel=1e-9)
    assert mem.optimizer_bytes == 0 and mem.master_bytes == 0
    assert mem.grads_bytes == pytest.approx(OFFLOAD_GRAD_BUCKETS * OFFLOAD_GRAD_BUCKET_ELEMENTS * 2.0)  # buckets only
    assert mem.offloaded_cpu_bytes == pytest.approx((2.0 + 4.0 + 8.0) * P, rel=1e-9)
    assert mem.offloaded_nvme_bytes == 0


def test_zero_infinity_placement_sharded_over_dp_and_nvme():
    m = gpt(50, 4096)
    dp = 16
    job = _job(offload_optimizer="nvme", offload_params="cpu")
    mem = train_memory(m, job, Parallel(dp=dp, zero_stage=3))
    P = m.params
    # per device: its 1/16 of the fp16 parameters in host memory; the gradients, fp32 master and
    # moments of that shard on NVMe (DeepSpeed swaps the gradients out with the optimizer states)
    assert mem.offloaded_cpu_bytes == pytest.approx(2.0 * P / dp, rel=1e-9)
    assert mem.offloaded_nvme_bytes == pytest.approx((2.0 + 12.0) * P / dp, rel=1e-9)
    # the GPU keeps two layers of parameters while they stream
    assert mem.weights_bytes == pytest.approx(2 * 2.0 * m.layer_params(), rel=0.01)


def test_issue_70b_gradients_leave_the_gpu():
    """`train llama3-70b --zero-stage 3 --offload-optimizer cpu --offload-params cpu --framework
    deepspeed` used to keep 131 GiB of gradients on the GPU and not fit."""
    from costmodel.plan import train

    est = train("llama3-70b", "h100-sxm", zero_stage=3, offload_optimizer="cpu", offload_params="cpu", framework="deepspeed")
    assert est.memory.grads_bytes <= OFFLOAD_GRAD_BUCKETS * OFFLOAD_GRAD_BUCKET_ELEMENTS * 2.0
    assert est.fits
    # no node given: the host memory of the first node spec with an H100 SXM is checked, and said so
    assert est.host["node"] == "dgx-h100" and est.host["node_assumed"]
    P = est.memory.offloaded_cpu_bytes / (2.0 + 2.0 + 12.0)  # parameters, gradients, optimizer on the host
    assert P == pytest.approx(70.55e9, rel=0.01)
    assert any("host DRAM" in n and "fits with" in n for n in est.notes)


def test_issue_405b_host_memory_is_checked(capsys):
    """`train llama3.1-405b -H dgx-h100 --nodes 1 --offload-params cpu` puts 2 bytes x 405B per GPU
    (no ZeRO-3: every replica its own copy) x 8 GPUs in a node with 2 TiB of DRAM."""
    with pytest.raises(SystemExit) as exc:
        main(["train", "llama3.1-405b", "-H", "dgx-h100", "--nodes", "1", "--offload-params", "cpu", "--json"])
    assert exc.value.code == 0  # "does not fit" is a result
    d = json.loads(capsys.readouterr().out)
    host = d["host"]
    params = 405.85e9  # llama3.1-405b's parameter count (model show), hand-rounded
    assert host["host_bytes"] == pytest.approx(8 * 2.0 * params, rel=0.005)
    assert host["host_capacity_bytes"] == 2 * 2**40
    assert host["host_spare_bytes"] == pytest.approx(2 * 2**40 - 8 * 2.0 * params, rel=0.005)
    assert host["host_fits"] is False and d["fits"] is False
    with pytest.raises(SystemExit):
        main(["train", "llama3.1-405b", "-H", "dgx-h100", "--nodes", "1", "--offload-params", "cpu"])
    out = " ".join(capsys.readouterr().out.split())
    assert "host DRAM" in out and "does not fit" in out and "TiB over" in out


def test_nvme_capacity_per_node():
    # 1T parameters (128 layers x 25600) on one DGX-2, everything on NVMe: 16 B per parameter
    # (fp16 parameters and gradients, fp32 master and two moments), ZeRO-Infinity's single-node 1T
    lib = load_library()
    m = gpt(128, 25600, 160)
    node = lib.node_for("dgx-2")
    est = estimate_train(m, lib.device("dgx-2"), _job(offload_optimizer="nvme", offload_params="nvme"),
                         Parallel(dp=16, zero_stage=3), node=node)
    P = m.params
    assert est.host["nvme_bytes"] == pytest.approx(16.0 * P, rel=1e-6)
    assert est.host["nvme_capacity_bytes"] == pytest.approx(8 * 3.84e12)
    assert est.host["host_bytes"] == 0
    assert est.host["nvme_fits"] and est.host["host_fits"]
    # 3T parameters do not fit on the drives: 16 B x 3e12 = 48 TB > 30.7 TB
    big = gpt(384, 25600, 160)
    est = estimate_train(big, lib.device("dgx-2"), _job(offload_optimizer="nvme", offload_params="nvme"),
                         Parallel(dp=16, zero_stage=3), node=node)
    assert not est.host["nvme_fits"] and not est.fits
    assert est.host["nvme_spare_bytes"] == pytest.approx(8 * 3.84e12 - 16.0 * big.params, rel=1e-6)


def test_cpu_adam_is_host_memory_bound():
    # 10B parameters on a DGX-2's two Xeon 8168 (6 x DDR4-2666 = 128 GB/s each): 28 bytes per
    # parameter (4 reads + 4 writes of 4-byte states, a 2-byte gradient in, a 2-byte parameter out)
    lib = load_library()
    st = state_bytes_per_param(_job(), 4096)
    assert offload.cpu_adam_bytes_per_param(st) == 28.0
    t = offload.cpu_adam_s(10e9, st, lib.node_for("dgx-2"), lib)
    assert t == pytest.approx(10e9 * 28 / (2 * 128e9 * offload.CPU_ADAM_BANDWIDTH_FRACTION))


def test_offload_time_overlaps_gradients_with_backward():
    lib = load_library()
    st = state_bytes_per_param(_job(), 4096)
    node = lib.node_for("dgx-2")
    kw = dict(h2d=12e9, d2h=12e9, compute_s=0.0, passes=0, node=node, lib=lib)
    t_long, parts = offload.offload_step_s(st, 1e9, 1, "cpu", "none", backward_s=10.0, **kw)
    # 2 GB of gradients down take 0.17 s, hidden behind 10 s of backward; CPU Adam + 2 GB up remain
    assert float(t_long) == pytest.approx(float(parts["cpu_adam_s"]) + 2e9 / 12e9)
    t_short, _ = offload.offload_step_s(st, 1e9, 1, "cpu", "none", backward_s=0.0, **kw)
    assert float(t_short) - float(t_long) == pytest.approx(2e9 / 12e9)


@pytest.mark.parametrize("layers,fits", [(64, True), (74, False)])
def test_zero_offload_largest_model_on_one_v100(layers, fits):
    """ZeRO-Offload trains 'models with over 13 billion parameters on a single GPU' (Ren et al. 2021,
    abstract; a 32 GB V100 of a DGX-2): 13.1B (64 layers of 4096, the 10B tutorial model's width)
    fits, the next size of the family, 15.1B (74 layers), does not."""
    lib = load_library()
    m = gpt(layers, 4096)
    assert m.params / 1e9 == pytest.approx(13.1 if fits else 15.1, abs=0.05)
    est = estimate_train(m, lib.device("dgx-2"), _job(offload_optimizer="cpu"), Parallel(zero_stage=2),
                         node=lib.node_for("dgx-2"))
    assert est.fits is fits
    assert est.host["host_fits"]  # the host is never the limit here: 14 B x 15B = 212 GB of 1.5 TB


def test_megatron_optimizer_offload_keeps_the_gradient_buffer():
    """Megatron-core's --optimizer-cpu-offload (HybridDeviceOptimizer) moves the fp32 master and Adam
    moments of the distributed optimizer's shard to the host and copies the reduced fp32 gradient
    shard there after the backward; the GPU keeps its whole fp32 gradient buffer. Llama 3 8B on 8
    GPUs, ZeRO-1: 4 bytes of gradient per parameter stay on the GPU; (4 master + 8 moments + 4
    gradient) / 8 = 2 bytes per parameter go to each GPU's host share. DeepSpeed's ZeRO-Offload
    streams the gradients down instead and keeps two 5e8-element buckets."""
    from costmodel.arch import load_model
    from costmodel.plan import train

    P = load_model("llama3-8b").params
    kw = dict(devices=8, zero_stage=1, global_batch=8, micro_batch=1, seq_len=4096, offload_optimizer="cpu")
    mg = train("llama3-8b", "dgx-h100", framework="megatron", **kw)
    assert mg.memory.grads_bytes == pytest.approx(4.0 * P, rel=1e-9)
    assert mg.memory.optimizer_bytes == 0 and mg.memory.master_bytes == 0
    assert mg.memory.offloaded_cpu_bytes == pytest.approx((4.0 + 8.0 + 4.0) * P / 8, rel=1e-9)
    # the fp32 shard down and back up, one after the other, none behind the backward
    parts = [n for n in mg.notes if "--optimizer-cpu-offload" in n]
    assert parts and "after backward" in parts[0]
    ds = train("llama3-8b", "dgx-h100", framework="deepspeed", **kw)
    assert ds.memory.grads_bytes == pytest.approx(OFFLOAD_GRAD_BUCKETS * OFFLOAD_GRAD_BUCKET_ELEMENTS * 2.0, rel=1e-9)


def test_offload_refused_where_the_framework_has_none(capsys):
    """nanotron steps its optimizer on the GPU only: --offload-optimizer is refused (exit 2, the
    field named) and search enumerates no offloaded layouts for it."""
    from costmodel.search import search

    with pytest.raises(SystemExit) as exc:
        main(["train", "llama3-8b", "--framework", "nanotron", "--offload-optimizer", "cpu"])
    assert exc.value.code == 2
    assert "offload_optimizer" in capsys.readouterr().err
    res = search("llama3-8b", "dgx-h100", 8, global_batch=64, seq_len=4096, framework="nanotron", top=50)
    assert res.top and not any(c.layout.offload_optimizer != "none" for c in res.top)
    with pytest.raises(SystemExit) as exc:
        main(["search", "llama3-8b", "--framework", "nanotron", "--global-batch", "64", "--offload", "on"])
    assert exc.value.code == 2


def test_what_torchtitan_and_deepspeed_run(capsys):
    """torchtitan offloads its optimizer only with its FSDP2-sharded parameters (CPUOffloadPolicy)
    and runs DDP or FSDP (ZeRO 0 or 3); DeepSpeed's PipelineEngine runs 1F1B only and refuses ZeRO-2/3
    beside a pipeline. train refuses the rest (exit 2), search never proposes it."""
    from costmodel.plan import train
    from costmodel.search import search

    for argv in (["train", "llama3-8b", "--framework", "torchtitan", "--offload-optimizer", "cpu"],
                 ["train", "llama3-8b", "--framework", "torchtitan", "--zero-stage", "1"],
                 ["train", "llama3-8b", "--framework", "deepspeed", "--pp", "2", "--zero-stage", "2"],
                 ["train", "llama3-8b", "--framework", "deepspeed", "--pp", "2", "--interleave", "2"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: field") and "\n" == err[-1] and err.count("\n") == 1, err
    est = train("llama3-8b", "dgx-h100", framework="torchtitan", zero_stage=3, offload_optimizer="cpu",
                offload_params="cpu")
    assert est.memory.offloaded_cpu_bytes > 0
    for fw in ("torchtitan", "deepspeed"):
        res = search("llama3-70b", "dgx-h100", 64, global_batch=512, seq_len=4096, framework=fw, top=200)
        lays = [c.layout for c in res.top]
        assert lays
        if fw == "torchtitan":
            assert {lay.zero_stage for lay in lays} <= {0, 3} and all(lay.offload_optimizer == "none" for lay in lays)
        else:
            assert all(lay.interleave == 1 for lay in lays)
            assert not any(lay.pp > 1 and lay.zero_stage >= 2 for lay in lays)
