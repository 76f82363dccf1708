"""`costmodel fit-profile RUNS.jsonl --framework NAME --out my.yaml`: fit a framework profile's
few bounded parameters to measured training steps (costmodel.profile_fit)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import HardwareFileOpt, JsonOpt, console, emit_json, library, print_table


def fit_profile_cmd(
    files: list[str] = typer.Argument(..., help="JSONL files of measured train steps (SCHEMA.md `train` records)."),
    framework: str = typer.Option(..., "--framework", help="The framework that ran them (pytorch, megatron, deepspeed, torchtitan, nanotron)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the fitted profile YAML here (atomically); use it with --profile."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Start from this profile YAML instead of the built-in one."),
    profile_id: Optional[str] = typer.Option(None, "--id", help="Id of the written profile (default: <framework>-fitted)."),
    folds: int = typer.Option(5, "--folds", min=0, help="k-fold held-out error (0 or 1: none)."),
    fit_latency: bool = typer.Option(True, "--fit-latency/--no-fit-latency",
                                     help="Also fit the cluster's cross-node ring step latency (off when nccl-tests logs pinned it)."),
    prior_weight: float = typer.Option(1.0, "--prior-weight", min=0.0,
                                       help="How strongly the start profile holds (a parameter moved across its whole range costs as much as one run missed by this fraction; 0: no prior)."),
    node: Optional[str] = typer.Option(None, "--node", help="The runs ran on nodes of this spec (e.g. your cluster from calibrate --nccl-tests, with --hardware-file)."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="Calibration overlay YAML."),
    json_out: bool = JsonOpt,
    hardware_file: Optional[list[str]] = HardwareFileOpt,
):
    """Fit a framework profile to your measured steps; prints the fit and a held-out error."""
    from .. import frameworks, profile_fit
    from ..errors import InputError
    from ..validate import read_records

    inputs = [*(("files", f) for f in files), ("profile", profile), ("calibration", calibration),
              *(("hardware-file", h) for h in hardware_file or [])]
    if out is not None:  # before the fit: a path it may not write is an error now, not after the work
        from ..outputs import check_output

        check_output(out, "profile", inputs=inputs)
    base = frameworks.resolve(framework)
    start = frameworks.composed_start(frameworks.load_profile_file(profile) if profile else base)
    from ..record_schema import check_record

    _unverified = {"model", "parallel", "devices", "seq_len"}
    recs = [r for f in files for r in read_records(f)
            if r[1].get("kind") in ("train", "published")
            and not (r[1].get("kind") == "published" and isinstance(r[1].get("unverified"), list)
                     and set(map(str, r[1]["unverified"])) & _unverified)]
    for where, rec in recs:
        check_record(rec, where)
    recs = [r for r in recs if frameworks.resolve(r[1].get("framework") or "pytorch").id == base.id]
    if not recs:
        raise InputError(f"no train records of framework {base.id!r} in {', '.join(files)}", field="framework")
    lib = library(hardware_file)
    if node is not None:
        from ..validate import on_node

        recs = on_node(recs, node, lib)
    runs = profile_fit.run_set(recs, start, lib, calibration)
    res = profile_fit.fit_profile(runs, start, fit_latency=fit_latency, folds=folds, prior_weight=prior_weight)
    src = f"fitted by costmodel fit-profile on {', '.join(Path(f).name for f in files)} ({res.n} runs)"
    fitted = start.with_values(res.values, fit={"files": [str(f) for f in files], **res.summary()})
    fitted = fitted.model_copy(update={
        "id": profile_id or f"{base.id}-fitted",
        "parameters": {k: (p.model_copy(update={"source": src, "not_fitted": None}) if k in res.values else p)
                       for k, p in fitted.parameters.items()},
        "cluster_step_latency_s": res.step_latency_s})
    if res.pipeline_stall is not None and fitted.cluster_scaling is not None:  # the network the runs ran on
        fitted = fitted.model_copy(update={"cluster_scaling": {
            **fitted.cluster_scaling, "pipeline_stall": {k: round(v, 4) for k, v in res.pipeline_stall.items()}}})
    if out is not None:
        write_profile(fitted, out, inputs=inputs)
    if json_out:
        emit_json({"profile": fitted.model_dump(mode="json"), "fit": res.summary(), "out": str(out) if out else None})
        return
    t = Table(title=f"{base.id}: {res.n} runs")
    for c in ("parameter", "start", "fitted", "bounds"):
        t.add_column(c, justify="left" if c == "parameter" else "right")
    for k, p in fitted.parameters.items():
        t.add_row(k, f"{start.parameters[k].value:.4g}", f"{p.value:.4g}", f"{p.bounds[0]:g}..{p.bounds[1]:g}")
    if res.step_latency_s is not None:
        t.add_row("cluster step latency", "", f"{res.step_latency_s * 1e6:.1f} us",
                  "" if res.latency_fitted else "kept")
    print_table(t)
    if res.pipeline_stall is not None:
        st = res.pipeline_stall
        console.print(f"pipeline stall: {res.stalled} runs stalled, {st['seconds_per_op'] * 1e3:.0f} ms per cross-node "
                      f"send; chance {st['base_rate']:.0%}, half the rest at {st['onset_nodes']:.0f} nodes "
                      f"(width {st['onset_width']:.2g})")
        if start.cluster_scaling is None:  # no network in the profile: it belongs to the node's
            flow = ", ".join(f"{k}: {v:.4g}" for k, v in st.items())
            console.print(f"the profile names no cluster: add `pipeline_stall: {{{flow}}}` under your node "
                          "spec's scale_out.scaling to use it")
    hold = f", {res.folds}-fold held-out {res.holdout_mape:.1%}" if res.holdout_mape is not None else ""
    console.print(f"step time mean |error| {res.mape_before:.1%} at the start -> {res.mape:.1%} fitted "
                  f"(median {res.median_ape:.1%}){hold}")
    if out is not None:
        console.print(f"wrote {out}: use it with --profile {out}")


def write_profile(profile, path: Path, **kw) -> Path:
    """Write a profile YAML atomically; never over a shipped profile or spec, nor over a file that
    is not a profile (costmodel.outputs). ``kw``: check_output's ``inputs`` and ``others``."""
    import yaml

    from ..outputs import check_output, write_atomic

    check_output(path, "profile", **kw)
    data = profile.model_dump(mode="json", exclude_none=True)
    head = "# costmodel framework profile (costmodel/frameworks.py, costmodel/steptime.py), fitted by fit-profile\n"
    return write_atomic(path, head + yaml.safe_dump(data, sort_keys=False, width=110))


def register(app: typer.Typer) -> None:
    app.command("fit-profile")(fit_profile_cmd)
