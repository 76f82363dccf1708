"""`costmodel validate FILE.jsonl`: predicted against measured, per case and per metric."""
from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from ..validate import fit_host_time_factor, host_factor_grid, read_records, validate_records
from .common import HardwareFileOpt, JsonOpt, console, emit_json, library, print_table, progress_bar


def _fmt(metric: str, v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if metric.endswith("bytes"):
        return f"{v / 2**30:.3f} GiB"
    if metric.endswith("seconds") or metric.endswith("per_token"):
        return f"{v * 1e3:.3f} ms"
    return f"{v:.4g}"


def validate(
    files: list[str] = typer.Argument(..., help="JSONL measurement files (SCHEMA.md format)."),
    json_out: bool = JsonOpt,
    calibration: Optional[list[str]] = typer.Option(None, "--calibration", help="Calibration overlay YAML; repeat for several devices (e.g. an H100 and an H200 overlay): each applies to the records of its own device, the others keep the shipped calibration."),
    hardware_file: Optional[list[str]] = HardwareFileOpt,
    max_mape: Optional[float] = typer.Option(None, help="Exit 1 if any metric's mean error exceeds this fraction, or if no measurement was compared at all (every record skipped). A file without records exits 2."),
    host_time_factor: float = typer.Option(1.0, "--host-time-factor", min=0.01,
                                           help="Eager host time of the measuring machine relative to the H100 machines the host constants came from (train and infer records)."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Framework profile YAML (from fit-profile) that times the train records of its framework."),
    node: Optional[str] = typer.Option(None, "--node", help="Time the train records as run on nodes of this spec (e.g. your cluster from calibrate --nccl-tests)."),
    fit_host_factor: bool = typer.Option(False, "--fit-host-factor",
                                         help="Also fit the --host-time-factor that best explains the files' train and infer records (the measuring machine's host speed), per kind."),
    markdown: bool = typer.Option(False, "--markdown",
                                  help="Print the accuracy table of docs/validation.md for FILES instead: per file and metric n, mean and median |error|, on the records that fitted a shipped constant and on the held-out ones (data/validation-splits.yaml)."),
):
    """Predict every record and report predicted against measured with relative errors, and how well
    the predicted step times rank the layouts of each model and device count."""
    lib = library(hardware_file)
    if markdown:
        from ..validation_page import markdown as page

        typer.echo(page(files, lib), nl=False)
        return
    from ..validate import ValidationReport

    cases, skipped, sources = [], [], {}
    per_file = [read_records(f) for f in files]
    if node is not None:
        from ..validate import on_node

        per_file = [on_node(recs, node, lib) for recs in per_file]
    for recs in per_file:
        rep = validate_records(recs, lib, calibration, host_time_factor, profile=profile)
        cases += rep.cases
        skipped += rep.skipped
        sources.update(rep.efficiency)
    report = ValidationReport.of(cases, skipped, sources)  # ranking groups may span files
    summary = report.summary
    fits = _host_factor_fits([r for recs in per_file for r in recs], lib, calibration, progress=not json_out) if fit_host_factor else None
    if json_out:
        out = report.to_dict()
        if fits is not None:
            out["host_factor_fits"] = [f.model_dump(mode="json") for f in fits]
        emit_json(out)
    else:
        t = Table(title="predicted vs measured")
        for c in ("case", "kind", "metric", "measured", "predicted", "error"):
            t.add_column(c, justify="right" if c in ("measured", "predicted", "error") else "left")
        for c in cases:
            err = f"{c.rel_error:+.1%}"
            style = "red" if abs(c.rel_error) > 0.15 else ("yellow" if abs(c.rel_error) > 0.05 else "green")
            t.add_row(c.name, c.kind, c.metric, _fmt(c.metric, c.measured), _fmt(c.metric, c.predicted), Text(err, style=style))
        print_table(t)
        s = Table(title="summary (mean absolute percentage error)")
        for c in ("kind.metric", "n", "mean |error|", "max |error|"):
            s.add_column(c)
        for k, v in summary.items():
            s.add_row(k, str(v.n), f"{v.mape:.1%}", f"{v.max_abs_rel_error:.1%}")
        print_table(s)
        if report.ranking:
            _print_ranking(report)
        for hw, src in sorted(sources.items()):
            console.print(f"efficiency {hw}: {src}", highlight=False)
        for sk in skipped[:5]:
            console.print(Text(f"skipped {sk}", style="dim"), highlight=False)
        if fits is not None:
            _print_fits(fits)
    if max_mape is not None:
        if not cases:  # nothing was compared: a gate that checked nothing must not pass
            from .common import err_console

            err_console.print(f"validate: no measurement was compared with a prediction ({len(skipped)} record"
                              f"{'' if len(skipped) == 1 else 's'} skipped), so --max-mape {max_mape:g} checked nothing",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(1)
        if any(v.mape > max_mape for v in summary.values()):
            raise typer.Exit(1)


def _print_ranking(report) -> None:
    """Per group (model/devices): how well the predicted step times order the measured layouts."""
    t = Table(title="ranking of layouts by step time")
    for c in ("group", "n", "Spearman", "regret"):
        t.add_column(c, justify="left" if c == "group" else "right", overflow="fold")
    for key, g in report.ranking.items():
        t.add_row(key, str(g.n), "-" if g.spearman is None else f"{g.spearman:+.2f}",
                  "-" if g.regret is None else f"{g.regret:.1%}")
    print_table(t)
    s = report.ranking_summary
    med_s = "-" if s.median_spearman is None else f"{s.median_spearman:+.2f}"
    med_r = "-" if s.median_regret is None else f"{s.median_regret:.1%}"
    console.print(f"ranking over {s.groups} groups: median Spearman {med_s}, median regret {med_r}", highlight=False)


def _host_factor_fits(records: list, lib, calibration, progress: bool) -> list:
    kinds = [k for k in ("train", "infer") if any(rec.get("kind") == k for _, rec in records)]
    fits = []
    with progress_bar(disable=not progress) as bar:
        for k in kinds:
            task = bar.add_task(f"host factor, {k} records", total=len(host_factor_grid()))
            fits.append(fit_host_time_factor(records, k, lib, calibration, on_step=lambda: bar.advance(task)))
    return [f for f in fits if f is not None]


def _print_fits(fits: list) -> None:
    if not fits:
        console.print("host factor: no train or infer time metrics to fit")
        return
    t = Table(title="host speed of the measuring machine (best --host-time-factor)")
    for c in ("kind", "n", "factor", "mean |error| at 1.0", "at the factor"):
        t.add_column(c, justify="left" if c == "kind" else "right")
    for f in fits:
        note = " (range end: host time does not explain the error)" if f.at_bound else ""
        t.add_row(f.kind, str(f.n), f"{f.factor:.2f}{note}", f"{f.mape_at_1:.1%}", f"{f.mape_at_factor:.1%}")
    print_table(t)


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
