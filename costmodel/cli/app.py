"""The `costmodel` command. Each verb lives in its own module and registers itself here."""
from __future__ import annotations

import functools
import importlib
import inspect
import math
import sys

import typer
from rich.markup import escape

from ..errors import CostModelError, InputError
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
    "serve_cmd",
)

for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"{__package__}.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"{__package__}.{_name}":
            raise
        continue
    _mod.register(app)


# ------------------------------------------------------------------------ numbers on the command line

# Largest whole number a flag takes (devices, sizes, batches, lengths, steps, seeds): the int32 range.
MAX_INT_ARG = 2**31 - 1


def _flag(param: inspect.Parameter) -> str:
    """The flag a command parameter is given with ('--micro-batch'), without the dashes."""
    decls = getattr(param.default, "param_decls", None) or ()
    for d in decls:
        if isinstance(d, str) and d.startswith("--"):
            return d[2:].split("/")[0]
    return param.name.replace("_", "-")


def _check_number(flag: str, value) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int) and abs(value) > MAX_INT_ARG:
        raise InputError(f"{value:.3g} is too large (at most {MAX_INT_ARG})" if abs(value) < 10**300
                         else f"a {len(str(abs(value)))}-digit number is too large (at most {MAX_INT_ARG})", field=flag)
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"expected a finite number (got {value})", field=flag)
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_number(flag, v)


def _numbers_checked(fn):
    """``fn`` (a command) with every number argument checked first: whole numbers within
    MAX_INT_ARG, other numbers finite (typer takes 'inf', 'nan' and 10**400 as they are)."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def command(*args, **kwargs):
        for name, value in sig.bind_partial(*args, **kwargs).arguments.items():
            _check_number(_flag(sig.parameters[name]), value)
        return fn(*args, **kwargs)

    return command


def _guard_commands(typer_app: typer.Typer) -> None:
    for info in typer_app.registered_commands:
        if info.callback is not None and not getattr(info.callback, "_numbers_checked", False):
            info.callback = _numbers_checked(info.callback)
            info.callback._numbers_checked = True
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _guard_commands(group.typer_instance)


_guard_commands(app)


# ------------------------------------------------------------------------ entry point

# Exit status of an error costmodel did not foresee (a bug): not 1 (a check that failed) nor 2 (bad input).
INTERNAL_ERROR_EXIT = 3


def _error(message: str, prefix: str = "error:") -> None:
    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    err_console.print(styled(f"[bold red]{prefix}[/] " + escape(line)), highlight=False, soft_wrap=True)


def _is_usage_error(exc: BaseException) -> bool:
    """A click (or typer's own click) usage or parameter error: bad flag, bad value, missing argument."""
    return hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Exit 0: done (1: a check or limit failed); 2: bad input, as one line naming
    the file, flag or field; 3: an internal error, as one line asking for a report. Never a traceback."""
    from ..specs import pending_notes, reset_notes

    argv = normalise_switches(sys.argv[1:] if argv is None else list(argv))
    reset_notes()
    code = 0
    try:
        rv = app(args=argv, prog_name="costmodel", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
        if code == 130:
            err_console.print("interrupted")
    except CostModelError as exc:
        _error(str(exc))
        code = exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted")
        code = 130
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, no traceback
        if _is_usage_error(exc):
            if type(exc).__name__ == "NoArgsIsHelpError":  # `costmodel` / `costmodel hardware` alone: the help
                exc.show()
            else:
                ctx = getattr(exc, "ctx", None)
                hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
                _error(exc.format_message() + hint)
            code = exc.exit_code
        else:
            detail = " ".join(str(exc).split())
            detail = detail if len(detail) <= 300 else detail[:300] + "..."
            _error(f"{type(exc).__name__}: {detail} (please report this with the command line that caused it)",
                   prefix="internal error:")
            code = INTERNAL_ERROR_EXIT
    finally:
        for note in pending_notes():  # e.g. a user's spec that replaces a shipped one
            err_console.print(styled("[yellow]note:[/] " + escape(note)), highlight=False, soft_wrap=True)
    sys.exit(code)
