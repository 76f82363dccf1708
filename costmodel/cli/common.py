"""Shared CLI plumbing: console, JSON output, hardware/model options."""
from __future__ import annotations

import json
import sys
from typing import Any, Optional

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables.")
HardwareFileOpt = typer.Option(None, "--hardware-file", help="Extra hardware spec YAML file(s); override shipped ids.")


def emit_json(obj: Any) -> None:
    """Print JSON to stdout (pydantic models, dicts, lists)."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    sys.stdout.write(json.dumps(obj, indent=2, default=_default) + "\n")


def _default(o):
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def progress_bar(disable: bool = False):
    """The CLI's progress bar (on stderr, so --json output stays clean): description, bar, done / total, elapsed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console, disable=disable)


def library(hardware_file: Optional[list[str]] = None):
    from ..specs import load_library

    return load_library(hardware_file or [])
