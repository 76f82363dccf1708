"""Fitted constants read from data (costmodel/fitted.py): the formula modules' names hold the data
entries' values, and a bad entry is one InputError naming the file and field. Accuracy checks of
the constants themselves are in test_heldout.py and the prediction tests; tests/test_docs.py checks
that every entry names its source."""
import pytest


def test_the_formula_modules_read_the_data_entries():
    """The module names kept for call sites hold the values of the data entries."""
    from costmodel import comm, fitted, inference, memory, roofline, training, validate

    for mod, name, rel, key in (
            (roofline, "KERNEL_FLOOR_S", "fitted/kernels.yaml", "kernel_floor_s"),
            (roofline, "GRAPH_GEMM_FIXED_S", "fitted/kernels.yaml", "graph_gemm_fixed_s"),
            (inference, "GRAPH_KERNEL_FLOOR_S", "fitted/kernels.yaml", "graph_kernel_floor_s"),
            (inference, "EAGER_HOST_CALL_S", "frameworks/pytorch.yaml", "infer_host_call_s"),
            (training, "EAGER_SCORE_BYTES_FWD", "frameworks/pytorch.yaml", "eager_score_bytes_fwd"),
            (training, "DEEPSPEED_LIST_GATHER_S_PER_RANK", "frameworks/deepspeed.yaml", "list_gather_s_per_rank"),
            (comm, "DEFAULT_RING_EFFICIENCY", "fitted/nccl.yaml", "ring_efficiency"),
            (memory, "CUDA_CONTEXT_BYTES", "fitted/memory.yaml", "cuda_context_bytes"),
            (validate, "LEAF_BACKWARD_BYTES_PER_ELEMENT", "frameworks/pytorch.yaml", "leaf_backward_bytes_per_element")):
        assert getattr(mod, name) == fitted.value(rel, key), name


def test_a_fitted_file_outside_its_bounds_is_one_input_error(tmp_path, monkeypatch):
    from costmodel import fitted, specs
    from costmodel.errors import InputError

    (tmp_path / "fitted").mkdir()
    (tmp_path / "fitted" / "x.yaml").write_text(
        "parameters:\n  a:\n    value: 3.0\n    bounds: [0.0, 1.0]\n    meaning: m\n    source: s\n")
    monkeypatch.setitem(specs._DATA_DIRS, "data", tmp_path)
    fitted.parameters.cache_clear()
    try:
        with pytest.raises(InputError, match="parameters.a.bounds"):
            fitted.value("fitted/x.yaml", "a")
    finally:
        fitted.parameters.cache_clear()


