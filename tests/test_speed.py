"""The caches behind a fast core: parsed inputs are re-read when their file changes, a remembered
estimate is the one a fresh computation gives and cannot be changed by its caller, and the GEMM
curve evaluated on arrays gives what it gives one shape at a time."""
import os
from pathlib import Path

import numpy as np
import pytest

from costmodel import plan
from costmodel.arch import load_model, models_dir
from costmodel.plan import infer, train
from costmodel.roofline import efficiency_for
from costmodel.specs import load_library

JOB = dict(tp=2, pp=2, global_batch=64, seq_len=4096, micro_batch=1)


def _bump(path: Path, text: str) -> None:
    """Write ``text`` and move the modification time on, as an edit a second later would."""
    st = path.stat()
    path.write_text(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_edited_model_file_is_read_again(tmp_path):
    src = (models_dir() / "llama2-7b.yaml").read_text()
    f = tmp_path / "mine.yaml"
    f.write_text(src)
    a = load_model(str(f))
    assert load_model(str(f)) is a  # unchanged: parsed once
    _bump(f, src.replace("layers: 32", "layers: 16"))
    b = load_model(str(f))
    assert (a.layers, b.layers) == (32, 16)
    # and an estimate made from it is not the remembered one: 16 layers hold about half the weights
    est_a = plan.train(str(f), "dgx-h100", **JOB)
    _bump(f, src)
    est_b = plan.train(str(f), "dgx-h100", **JOB)
    assert est_b.memory.weights_bytes > 1.8 * est_a.memory.weights_bytes


def test_edited_hardware_file_is_read_again(tmp_path):
    from costmodel.specs import package_data_dir

    src = (package_data_dir("hardware") / "h100-sxm.yaml").read_text().replace("id: h100-sxm", "id: my-gpu")
    f = tmp_path / "my-gpu.yaml"
    f.write_text(src)
    cap = load_library([f]).device("my-gpu").memory.capacity_bytes
    assert cap == 81559 * 2**20
    _bump(f, src.replace("capacity: 81559 MiB", "capacity: 40000 MiB"))
    assert load_library([f]).device("my-gpu").memory.capacity_bytes == 40000 * 2**20


def test_remembered_estimate_is_a_fresh_one_and_a_copy():
    first = train("llama2-7b", "dgx-h100", **JOB)
    again = train("llama2-7b", "dgx-h100", **JOB)
    assert again is not first and again.to_dict() == first.to_dict()
    again.notes.append("mine")
    again.parallel["tp"] = 99
    again.memory.weights_bytes = -1.0
    plan._ESTIMATES.clear()
    fresh = train("llama2-7b", "dgx-h100", **JOB)
    third = train("llama2-7b", "dgx-h100", **JOB)
    assert fresh.to_dict() == first.to_dict() == third.to_dict()
    assert "mine" not in third.notes and third.parallel["tp"] == 2 and third.memory.weights_bytes > 0


def test_remembered_infer_matches_a_fresh_one():
    a = infer("llama2-7b", "dgx-h100", batch=4)
    plan.clear_caches()
    b = infer("llama2-7b", "dgx-h100", batch=4)
    c = infer("llama2-7b", "dgx-h100", batch=4)
    assert a.to_dict() == b.to_dict() == c.to_dict()


def test_arguments_of_another_type_are_another_call():
    """2 and 2.0 hash alike; a remembered answer for one must not answer the other (here both are
    valid and give the same estimate, but the key keeps them apart)."""
    train("llama2-7b", "dgx-h100", **JOB)
    n = len(plan._ESTIMATES)
    train("llama2-7b", "dgx-h100", **{**JOB, "seq_len": 4096.0})
    assert len(plan._ESTIMATES) == n + 1


def test_gemm_curve_on_arrays_is_the_curve_per_shape():
    spec = load_library().device("h100-sxm")
    eff = efficiency_for(spec)
    rng = np.random.default_rng(0)
    m, n, k = (rng.integers(1, 20000, 40) for _ in range(3))
    for interleaved in (False, True):
        many = eff.gemm_times_s(m.tolist(), n.tolist(), k.tolist(), "bf16", 1, interleaved)
        one = [eff._gemm_time_s(float(a), float(b), float(c), "bf16", 1, interleaved) for a, b, c in zip(m, n, k)]
        assert np.allclose(many, one, rtol=1e-12, atol=0)
        # and answered from the memo afterwards, as the scalar entry point answers
        assert [eff.gemm_time_s(int(a), int(b), int(c), "bf16", interleaved=interleaved) for a, b, c in zip(m, n, k)] \
            == many.tolist()


def test_unknown_dtype_is_not_remembered():
    from costmodel.errors import InputError

    eff = efficiency_for(load_library().device("h100-sxm"))
    for _ in range(2):
        with pytest.raises(InputError):
            eff.gemm_time_s(128, 128, 128, "int3")


# ----------------------------------------------------------------------------------- search

def test_search_in_chunks_is_the_search_at_once(monkeypatch):
    """The screen in small chunks (and its time tables built once) ranks as one chunk does, number
    for number, and reports its progress up to every layout."""
    import importlib

    S = importlib.import_module("costmodel.search")

    kw = dict(global_batch=256, seq_len=4096, top=5, price_per_hour=2.0)
    S._TIME_MODELS.clear()
    whole = S.search("mixtral-8x7b", ["dgx-h100", "dgx-a100"], "8..64", **kw).to_dict()
    monkeypatch.setattr(S, "SCREEN_CHUNK", 997)
    S._TIME_MODELS.clear()
    calls = []
    chunked = S.search("mixtral-8x7b", ["dgx-h100", "dgx-a100"], "8..64", progress=lambda d, t: calls.append((d, t)),
                       **kw).to_dict()
    for r in (whole, chunked):
        r.pop("seconds")
    assert chunked == whole
    done = [d for d, _ in calls]
    assert len(calls) > 4 and done == sorted(done) and calls[-1] == (whole["evaluated"], whole["evaluated"])


def test_screened_rows_are_the_screen_of_those_rows():
    """What a chunked screen reports for a candidate is what screen() computes for it."""
    import importlib

    S = importlib.import_module("costmodel.search")
    from costmodel.arch import load_model
    from costmodel.workload import TrainJob

    m = load_model("llama2-7b")
    lib = load_library()
    spec, node = lib.device("dgx-h100"), lib.node_for("dgx-h100")
    ax = S._axes(m, [8, 16, 32], 8, 64, 4096)
    ok, _ = S._valid_mask(m, ax, 64, 4096, 8)
    job = TrainJob(micro_batch=1, seq_len=4096, global_batch=64, framework="megatron", profile="megatron")
    c = S._flatten(ax, ok)
    cap = spec.memory.capacity_bytes
    ref = S.screen(m, spec, node, job, ax, c, capacity_bytes=cap)
    scr = S._Screened(m, spec, node, job, ax, ok.shape, np.flatnonzero(ok), None, cap)
    assert np.array_equal(scr.step_s, ref["step_s"]) and np.array_equal(scr.required, ref["required_bytes"])
    rows = [0, len(c) // 2, len(c) - 1]
    got = scr.rows(rows)
    for k in ("step_s", "compute_s", "tp_comm_s", "bubble_s", "peak_bytes", "n_micro"):
        assert np.array_equal(got[k], ref[k][rows]), k


def test_valid_mask_counts_each_rejected_layout_once():
    """The rules evaluated without the recompute and offload axes count what the whole grid would:
    every grid point is valid or rejected by exactly one rule."""
    import importlib

    S = importlib.import_module("costmodel.search")
    from costmodel.arch import load_model

    m = load_model("mixtral-8x7b")
    ax = S._axes(m, [8, 64, 512], 8, 1024, 4096)
    ok, rejected = S._valid_mask(m, ax, 1024, 4096, 8)
    assert ok.shape == ax.shape()
    assert int(ok.sum()) + sum(rejected.values()) == int(np.prod(ax.shape()))
    # the mask does not change along the recompute and offload axes
    rc, off = ax.names.index("rc"), ax.names.index("off")
    assert (ok == ok.take([0], axis=rc)).all() and (ok == ok.take([0], axis=off)).all()


def test_front_candidates_keep_the_pareto_front():
    from costmodel.search import _front_candidates, _pareto_indices

    rng = np.random.default_rng(1)
    devices = np.repeat([8, 16, 32, 64], 500)
    t = np.round(rng.uniform(1, 2, len(devices)), 2)  # rounded: ties
    cost = t * devices * 3.0
    idx = np.flatnonzero(rng.random(len(devices)) < 0.7)
    full = idx[_pareto_indices(t[idx], cost[idx])]
    pre = _front_candidates(t, cost, devices, idx)
    assert len(pre) < len(idx) / 10
    assert np.array_equal(pre[_pareto_indices(t[pre], cost[pre])], full)


def test_a_layers_gemms_go_through_the_curve_in_one_call(monkeypatch):
    """A cold train estimate evaluates the calibrated GEMM curve once per (dtype, mode) for all of a
    layer's shapes (prefetched on arrays), and gives what shape-by-shape evaluation gives."""
    from costmodel import roofline
    from costmodel.calibration import curves

    calls = []
    real = curves.GemmCurve.kernel_s

    def counting(self, m, n, k, *a, **kw):
        calls.append(np.size(m))
        return real(self, m, n, k, *a, **kw)

    monkeypatch.setattr(curves.GemmCurve, "kernel_s", counting)

    def cold():
        plan.clear_caches()
        roofline._SHIPPED_CACHE.clear()  # a fresh efficiency model: nothing memoised
        calls.clear()
        return train("llama2-7b", "dgx-h100", **JOB)

    est = cold()
    layer_calls = [n for n in calls if n > 1]
    assert layer_calls and max(layer_calls) >= 5  # the layer's shapes together
    assert len(calls) <= 8, calls
    monkeypatch.setattr(roofline, "_PREFETCHED", [1])  # shape by shape
    one_by_one = cold()
    assert len(calls) > 8 and all(n == 1 for n in calls)
    assert est.step.total_s == pytest.approx(one_by_one.step.total_s, rel=1e-12)
    assert est.to_dict()["step"] == pytest.approx(one_by_one.to_dict()["step"], rel=1e-12)


def test_edited_profile_is_read_again(tmp_path):
    from costmodel import frameworks

    src = (frameworks.frameworks_dir() / "nanotron.yaml").read_text()
    f = tmp_path / "mine.yaml"
    f.write_text(src)
    a = frameworks.load_profile_file(f)
    assert frameworks.load_profile_file(f) is a
    _bump(f, src + "\n# edited\n")
    b = frameworks.load_profile_file(f)
    assert b is not a and b == a


def test_valid_layouts_found_per_block_are_all_of_them():
    import importlib

    S = importlib.import_module("costmodel.search")
    from costmodel.arch import load_model

    for name, counts, gb in (("mixtral-8x7b", [8, 64, 512], 1024), ("gpt3-175b", [8, 1024, 16384], 1536)):
        m = load_model(name)
        ax = S._axes(m, counts, 8, gb, 4096)
        ok, _ = S._valid_mask(m, ax, gb, 4096, 8)
        assert np.array_equal(S._valid_flat(ax, ok), np.flatnonzero(ok))
    ax = S._axes(m, [64], 8, 1536, 2048, recompute=["full"], offload=[False], sequence_parallel=[True])
    ok, _ = S._valid_mask(m, ax, 1536, 2048, 8)
    assert np.array_equal(S._valid_flat(ax, ok), np.flatnonzero(ok))


@pytest.mark.parametrize("model, hardware, devices, kw", [
    ("llama2-7b", "dgx-h100", "8..64", dict(global_batch=256, seq_len=4096)),
    ("mixtral-8x7b", "h100-sxm", "8..64", dict(global_batch=128, seq_len=4096)),
    ("gpt3-175b", "dgx-a100", "64..512", dict(global_batch=1536, seq_len=2048, framework="deepspeed")),
], ids=["llama2-7b", "mixtral-8x7b", "gpt3-175b-deepspeed"])
def test_search_memory_pass_by_blocks_is_each_candidates_memory(monkeypatch, model, hardware, devices, kw):
    """The search's memory pass evaluates the formulas once per block of its innermost axes
    (recompute, sequence parallelism, offload) and broadcasts over them: the required bytes of
    every candidate are, bit for bit, those of costmodel.memory's formulas on the candidates as
    flat arrays (search._memory_of over every candidate at once)."""
    import importlib

    S = importlib.import_module("costmodel.search")

    screened = []
    orig = S._Screened.__init__

    def keep(self, *a, **k):
        orig(self, *a, **k)
        screened.append(self)

    monkeypatch.setattr(S._Screened, "__init__", keep)
    S.search(model, hardware, devices, top=3, **kw)
    assert screened
    for s in screened:
        assert len(s.flat) > 1000 and 0 < s.fits.sum() < len(s.flat)  # some fit, some do not
        ref = S._memory_of(s.model, s.job, S._flat_of(s.ax, s.shape, s.flat))["required_bytes"]
        assert np.array_equal(s.required, ref)
