"""Shared CLI plumbing: console, JSON output, hardware/model options."""
from __future__ import annotations

import json
import math
import sys
from typing import TYPE_CHECKING, Any, Optional

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

# `console` (stdout) and `err_console` (stderr): rich consoles made on first use (__getattr__), so a
# command that prints only JSON does not import rich. No markup parsing and no emoji codes: data
# (ids, names, sources, paths, notes) prints as it is, square brackets included ("source[memory]",
# "costmodel[plot]"). Intended style goes through styled(), whose data parts are escaped
# (rich.markup.escape).
_CONSOLES = {"console": dict(markup=False, emoji=False), "err_console": dict(stderr=True, markup=False, emoji=False)}


def __getattr__(name: str):
    if name in _CONSOLES:
        from rich.console import Console

        globals()[name] = con = Console(**_CONSOLES[name])
        return con
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _console(name: str = "console") -> "Console":
    """The module's console of that name (made on first use)."""
    return globals().get(name) or __getattr__(name)

JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables.")
HardwareFileOpt = typer.Option(None, "--hardware-file", help="Extra hardware spec YAML file(s); override shipped ids.")


# On/off switches spelled the same way in every command: `--X` / `--no-X` flags, and, as search
# first took them, `--X on|off|both` (or `--X=on`), rewritten to the flags before parsing ("both":
# neither flag, which is the default where a command searches both).
SWITCHES = ("--sequence-parallel",)
_ON, _OFF, _BOTH = {"on", "true", "yes"}, {"off", "false", "no"}, {"both"}


def normalise_switches(argv: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        name, eq, val = a.partition("=")
        if a == "--":
            return out + argv[i:]
        if name in SWITCHES:
            if not eq and i + 1 < len(argv) and argv[i + 1].lower() in _ON | _OFF | _BOTH:
                val, i = argv[i + 1], i + 1
            elif not eq:
                val = "on"
            v = val.lower()
            if v in _ON:
                out.append(name)
            elif v in _OFF:
                out.append("--no-" + name[2:])
            elif v not in _BOTH:
                out.append(a)  # let the parser say what is wrong
        else:
            out.append(a)
        i += 1
    return out


def emit_json(obj: Any) -> None:
    """Print JSON to stdout (pydantic models, dicts, lists). Always valid JSON: a NaN or infinite
    float (not JSON, though Python's json writes it) is printed as null."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    try:
        text = json.dumps(obj, indent=2, default=_default, allow_nan=False)
    except ValueError:
        plain = json.loads(json.dumps(obj, default=_default))  # not an input file: our own output, NaN kept
        text = json.dumps(_finite_or_null(plain), indent=2, allow_nan=False)
    sys.stdout.write(text + "\n")


def _finite_or_null(o):
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite_or_null(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_finite_or_null(v) for v in o]
    return o


def _default(o):
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def check_plot(path) -> None:
    """--plot's file, checked before any work (costmodel.outputs): never a shipped file, never over
    a file that is not an image, its directory writable."""
    if path is not None:
        from ..outputs import check_output

        check_output(path, "plot", flag="plot")


def wrote_plot(path, json_out: bool = False) -> None:
    """Say where --plot wrote its PNG: on stdout, or stderr under --json (stdout is the JSON)."""
    _console("err_console" if json_out else "console").print(f"wrote plot {path}", highlight=False, soft_wrap=True)


def progress_bar(disable: bool = False):
    """The CLI's progress bar (on stderr, so --json output stays clean): description, bar, done / total, elapsed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=_console("err_console"), disable=disable)


def one_hardware(values: list[str]) -> str:
    """The one hardware id of `serve` without --target-rate, whose -H takes several for a plan;
    given several it is an error naming the flag. (train, infer and roofline take -H once: the
    command line refuses it repeated, cli.app.repeated_option.)"""
    from ..errors import InputError

    ids = [v for v in values if v]
    if len(ids) != 1:
        raise InputError(f"takes one hardware id (got {', '.join(ids) or 'none'}); `search` and `serve --target-rate` "
                         "compare several", field="hardware")
    return ids[0]


def library(hardware_file: Optional[list[str]] = None):
    from ..specs import load_library

    return load_library(hardware_file or [])


def styled(markup: str) -> Text:
    """Text with intended style markup ('[bold]total[/]'). The consoles parse no markup, so data
    (ids, names, sources, file paths, notes) always prints as it is, brackets included; data put
    inside ``markup`` here must go through rich.markup.escape."""
    from rich.text import Text

    return Text.from_markup(markup)


# A text column wraps (at spaces, else folds) to this width before a table is split in two.
WRAP_WIDTH = 28


def fit_tables(table: Table, width: int, keep: int = 1) -> list[Table]:
    """``table`` as one or more tables no wider than ``width``, no value cut: every column wraps
    (overflow 'fold', never '…'), and a table too wide even with its text columns wrapped to
    WRAP_WIDTH is split into several, each repeating the first ``keep`` columns (the row's name or
    rank)."""
    from rich.console import Console

    for col in table.columns:
        col.overflow = "fold"
        col.no_wrap = False
    probe = Console(width=10_000, markup=False, emoji=False, color_system=None)
    ms = [table._measure_column(probe, probe.options, c) for c in table.columns]
    if sum(m.maximum for m in ms) + table._extra_width <= width or len(table.columns) <= keep + 1:
        return [table]
    eff = [min(m.maximum, WRAP_WIDTH) for m in ms]
    head = list(range(keep))
    groups: list[list[int]] = []
    cur: list[int] = []
    for i in range(keep, len(table.columns)):
        trial = head + cur + [i]
        if cur and sum(eff[k] for k in trial) + _subtable(table, trial)._extra_width > width:
            groups.append(cur)
            cur = []
        cur.append(i)
    groups.append(cur)
    out = []
    for n, g in enumerate(groups):
        sub = _subtable(table, head + g)
        if n:
            sub.title = f"{table.title} (continued)" if isinstance(table.title, str) else None
        out.append(sub)
    return out


def print_table(table: Table, keep: int = 1, con: Console | None = None) -> None:
    """Print a table readable at the console's width (fit_tables): pipes and CI logs get 80
    columns, and no value is cut."""
    con = con or _console()
    for t in fit_tables(table, con.width, keep):
        con.print(t)


def _subtable(table: Table, idxs: list[int]) -> Table:
    import copy

    sub = copy.copy(table)
    sub.columns = []
    for j, i in enumerate(idxs):
        col = copy.copy(table.columns[i])
        col._index = j
        sub.columns.append(col)
    return sub
