"""The `costmodel` command. Each verb lives in its own module and registers itself here."""
from __future__ import annotations

import importlib
import sys

import typer
from rich.markup import escape

from ..errors import CostModelError
from .common import err_console, normalise_switches, styled

app = typer.Typer(
    name="costmodel",
    help="Hardware-aware cost, memory and time calculator for transformer training and inference.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # click's own help formatter: whole option names at any width (rich's help table cuts them at
    # 80 columns) and help text printed as written ("costmodel[plot]", not markup)
    rich_markup_mode=None,
)

# Modules that define `register(app)`. A module that is not there yet is skipped.
_COMMAND_MODULES = (
    "hardware_cmd",
    "model_cmd",
    "train_cmd",
    "infer_cmd",
    "validate_cmd",
    "roofline_cmd",
    "bench_cmd",
    "search_cmd",
    "check_cmd",
    "scale_cmd",
    "fit_profile_cmd",
)

for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"{__package__}.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"{__package__}.{_name}":
            raise
        continue
    _mod.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors print one line and exit 2, never a traceback."""
    from ..specs import pending_notes, reset_notes

    argv = normalise_switches(sys.argv[1:] if argv is None else list(argv))
    reset_notes()
    try:
        app(args=argv, standalone_mode=True)
    except CostModelError as exc:
        err_console.print(styled("[bold red]error:[/] " + escape(str(exc))), highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    finally:
        for note in pending_notes():  # e.g. a user's spec that replaces a shipped one
            err_console.print(styled("[yellow]note:[/] " + escape(note)), highlight=False, soft_wrap=True)
