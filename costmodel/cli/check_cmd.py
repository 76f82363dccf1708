"""`costmodel check PLAN.yaml ...`: capacity checks for CI. Exit 0 when every limit of every
plan holds, 1 when one fails (with the nearest layout that would pass), 2 on bad input."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..check import CheckResult, check_files, describe_changes, describe_failure, expand_paths, junit_xml
from ..errors import InputError
from .common import HardwareFileOpt, JsonOpt, console, emit_json, err_console, print_table, styled


def check_cmd(
    plans: list[str] = typer.Argument(..., help="Plan YAML file(s); a glob such as plans/*.yaml works."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Write a JUnit XML report (one testcase per plan x limit), atomically; an existing file is replaced only if it is a JUnit report."),
    search: bool = typer.Option(True, "--search/--no-search", help="Search nearby layouts when a limit fails."),
    json_out: bool = JsonOpt,
    hardware_file: Optional[list[str]] = HardwareFileOpt,
):
    """Check plans (model, hardware, job, limits) against the predictions; suggest the nearest
    passing layout when a limit fails."""
    from ..outputs import check_output, write_output

    paths = expand_paths(plans)
    guard = dict(flag="junit", inputs=[*(("plans", p) for p in paths), *(("hardware-file", h) for h in hardware_file or [])])
    if junit is not None:  # before the checks: never over a plan or a file that is not a report
        check_output(junit, "junit", **guard)
    results = check_files(paths, search=search, hardware_files=hardware_file)
    if junit is not None:
        try:
            write_output(junit, junit_xml(results, paths), "junit", **guard)
        except OSError as exc:
            raise InputError(f"cannot write the JUnit report: {exc.strerror}", file=junit, field="junit") from None
    if json_out:
        emit_json([r.to_dict() if isinstance(r, CheckResult) else
                   {"file": r.file, "ok": False, "error": str(r), "field": r.field} for r in results])
    else:
        for r in results:
            if isinstance(r, CheckResult):
                _render(r)
    errors = [r for r in results if isinstance(r, InputError)]
    for e in errors:
        err_console.print(styled(f"[bold red]error:[/] {escape(str(e))}"), highlight=False, soft_wrap=True)
    if errors:
        raise typer.Exit(2)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


def _render(r: CheckResult) -> None:
    title = f"{r.file or r.name or 'plan'}: {r.model} {r.kind} on {r.where}"
    t = Table(title=title)
    for c in ("limit", "limit value", "predicted", "margin", ""):
        t.add_column(c, justify="left" if c in ("limit", "") else "right")
    for c in r.checks:
        t.add_row(c.limit, _num(c.value), _num(c.predicted), f"{c.margin:+.1%}",
                  styled("[green]pass[/]" if c.passed else "[bold red]FAIL[/]"))
    print_table(t)
    for note in r.notes:
        console.print(f"note: {escape(note)}", highlight=False)
    if r.ok:
        console.print(styled(f"[green]ok[/] {escape(r.file or r.name or 'plan')}: every limit holds"), highlight=False)
        return
    for c in r.failed:
        console.print(styled(f"[bold red]failed[/] {escape(describe_failure(c))}"), highlight=False)
    nb = r.nearest_passing
    if nb is not None:
        what = "step" if r.kind == "training" else "per-token time"
        console.print(styled(f"nearest passing layout ({len(nb.changes)} change{'s' if len(nb.changes) > 1 else ''}): "
                             f"[bold]{escape(describe_changes(nb))}[/] ({what} {nb.step_s * 1e3:,.1f} ms; "
                             + escape(", ".join(f"{c.limit} {_num(c.predicted)}" for c in nb.checks)) + ")"), highlight=False)
    elif r.kind == "serve":
        if r.searched:
            console.print(f"no layout within two changes passes under this load ({r.searched} tried)", highlight=False)
        console.print(f"every layout under a load: costmodel search {escape(r.model)} --infer --request-rate R -H a "
                      f"-H b; replicas that meet p99 targets: costmodel serve {escape(r.model)} --target-rate R "
                      "--ttft-p99-ms X -H a,b", highlight=False)
    elif r.searched:
        console.print(f"no layout within two changes passes ({r.searched} tried): change the hardware, "
                      "the number of devices or the limits", highlight=False)


def _num(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.3g}"
    return f"{x:.3g}" if abs(x) < 10 else f"{x:,.1f}"


def register(app: typer.Typer) -> None:
    app.command("check")(check_cmd)
