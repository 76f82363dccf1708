"""`costmodel model list|show`."""
from __future__ import annotations


import typer
from rich.table import Table

from ..arch import list_presets, load_model, load_preset
from .common import JsonOpt, emit_json, print_table, styled

mdl = typer.Typer(help="List and show model presets.", no_args_is_help=True, rich_markup_mode=None)


@mdl.command("list")
def list_cmd(json_out: bool = JsonOpt):
    """List model presets with their parameter counts."""
    rows = []
    for pid in list_presets():
        m = load_preset(pid)
        rows.append({"id": m.id, "name": m.name, "family": m.family, "params": m.params,
                     "active_params": m.active_params, "published_params": m.published_params})
    if json_out:
        emit_json(rows)
        return
    t = Table(title="Model presets")
    for c in ("id", "name", "family", "params", "active", "published"):
        t.add_column(c, justify="right" if c in ("params", "active", "published") else "left")
    for r in rows:
        t.add_row(r["id"], r["name"], r["family"], f"{r['params'] / 1e9:.3f} B", f"{r['active_params'] / 1e9:.3f} B",
                  f"{r['published_params'] / 1e9:.3f} B" if r["published_params"] else "-")
    print_table(t)


@mdl.command("show")
def show_cmd(
    model: str = typer.Argument(..., help="Preset id or a YAML / Hugging Face config.json file."),
    json_out: bool = JsonOpt,
):
    """Show an architecture and its parameter count by component."""
    m = load_model(model)
    breakdown = m.param_breakdown()
    if json_out:
        emit_json({"model": m.model_dump(mode="json"), "params": m.params, "active_params": m.active_params,
                   "non_embedding_params": m.non_embedding_params, "params_by_component": breakdown})
        return
    t = Table(title=f"{m.id}: {m.name}")
    t.add_column("component")
    t.add_column("parameters", justify="right")
    t.add_column("share", justify="right")
    for k, v in breakdown.items():
        if v:
            t.add_row(k, f"{v:,}", f"{v / m.params:.1%}")
    t.add_row(styled("[bold]total[/]"), styled(f"[bold]{m.params:,}[/]"), "100%")
    if m.moe:
        t.add_row("active per token", f"{m.active_params:,}", f"{m.active_params / m.params:.1%}")
    if m.published_params:
        t.add_row("published", f"{m.published_params:,}", f"{m.params / m.published_params - 1:+.3%} off")
    print_table(t)
    arch = Table(show_header=False, title="architecture")
    for k, v in m.model_dump(exclude_none=True).items():
        if k not in ("id", "published_params"):
            arch.add_row(k, str(v))
    print_table(arch)


def register(app: typer.Typer) -> None:
    app.add_typer(mdl, name="model")
