"""The `costmodel` command. Each verb lives in its own module and registers itself there; a
command's module (and what it imports: numpy, pydantic, the calibration code) is imported only when
that command runs, so `costmodel --help` and `costmodel hardware list` start quickly."""
from __future__ import annotations

import functools
import importlib
import inspect
import math
import os
import sys

import typer
from typer.core import TyperCommand, TyperGroup

from ..errors import CostModelError, InputError

_SETTINGS = dict(
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

# Each command, in the order `costmodel --help` lists them, with the module that registers it and
# the first paragraph of its help (what --help shows without importing the module). A new command
# goes here and in _COMMAND_MODULES; tests/test_cli_lazy.py checks that this table matches the
# commands the modules register.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train_cmd", "Memory per device and step time for a model on a layout; says when it does not fit (a "
              "result: exit 0; `costmodel check` fails on limits)."),
    "infer": ("infer_cmd", "Weights + KV cache per device, prefill (TTFT) and decode (TPOT) time, throughput vs batch; "
              "says when it does not fit (a result: exit 0; `costmodel check` fails on limits)."),
    "validate": ("validate_cmd", "Predict every record and report predicted against measured with relative errors, "
                 "and how well the predicted step times rank the layouts of each model and device count."),
    "roofline": ("roofline_cmd", "Forward operators of one layer: FLOPs, bytes, arithmetic intensity, bound and time."),
    "bench": ("bench_cmd", "Run microbenchmarks on this machine and write raw kernel records (JSONL)."),
    "calibrate": ("bench_cmd", "Fit a calibration overlay (efficiency curves per op and dtype, collective "
                  "alpha/beta); or, with --nccl-tests LOG [LOG]..., a cluster's measured scale-out scaling, "
                  "written as a node spec."),
    "search": ("search_cmd", "Search every layout (tp, pp, interleave, dp, cp, ep, ZeRO, micro-batch, recompute, "
               "sequence parallelism, offload) on the hardware; print the best that fit and why the rest were "
               "rejected."),
    "check": ("check_cmd", "Check plans (model, hardware, job, limits) against the predictions; suggest the nearest "
              "passing layout when a limit fails."),
    "scale": ("scale_cmd", "Compute-optimal model size, tokens and loss for a budget, with time, energy and cost."),
    "fit-profile": ("fit_profile_cmd", "Fit a framework profile to your measured steps; prints the fit and a "
                    "held-out error."),
    "serve": ("serve_cmd", "Throughput, TTFT, time between tokens and request latency of an engine under a load."),
    "hardware": ("hardware_cmd", "List and show hardware specs."),
    "model": ("model_cmd", "List and show model presets."),
}


class _Listed:
    """A command as --help lists it, before its module is imported."""

    hidden = False

    def __init__(self, help_text: str):
        self.help_text = help_text

    def get_short_help_str(self, limit: int = 45) -> str:
        from typer._click.utils import make_default_short_help

        return make_default_short_help(self.help_text, limit)


class LazyGroup(TyperGroup):
    """The root command: its subcommands are built from their modules on first use."""

    def list_commands(self, ctx) -> list[str]:
        return [n for n in COMMANDS if n in self.commands or _module_exists(COMMANDS[n][0])]

    def get_command(self, ctx, cmd_name: str):
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self._load(COMMANDS[cmd_name][0])
        return self.commands.get(cmd_name)

    def _load(self, module: str) -> None:
        sub = typer.Typer(**_SETTINGS)
        _register(sub, module)
        _guard_commands(sub)
        for name, cmd in typer.main.get_group(sub).commands.items():
            self.commands.setdefault(name, cmd)

    def resolve_command(self, ctx, args):
        # as TyperGroup.resolve_command, suggesting from every command, loaded or not
        from difflib import get_close_matches

        from typer._click.exceptions import UsageError

        try:
            return self._click_resolve_command(ctx, args)
        except UsageError as e:
            matches = get_close_matches(args[0], self.list_commands(ctx)) if self.suggest_commands and args else []
            if matches:
                e.message = f"{e.message.rstrip('.')}. Did you mean {', '.join(f'{m!r}' for m in matches)}?"
            raise

    def format_commands(self, ctx, formatter) -> None:
        # as TyperGroup.format_commands, from the COMMANDS table: listing does not import
        listed = {n: self.commands.get(n) or _Listed(COMMANDS[n][1]) for n in self.list_commands(ctx)}
        rows = [(n, c) for n, c in listed.items() if not c.hidden]
        if rows:
            limit = formatter.width - 6 - max(len(n) for n, _ in rows)
            with formatter.section("Commands"):
                formatter.write_dl([(n, c.get_short_help_str(limit)) for n, c in rows])


def _module_exists(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(f"{__package__}.{module}") is not None


def _register(typer_app: typer.Typer, module: str) -> bool:
    try:
        mod = importlib.import_module(f"{__package__}.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.{module}":
            raise
        return False
    mod.register(typer_app)
    return True


@functools.lru_cache(maxsize=1)
def _root():
    """The root click group that main() runs (subcommands loaded on first use)."""
    return typer.main.get_group(typer.Typer(cls=LazyGroup, **_SETTINGS))


def _full_app() -> typer.Typer:
    """Every command registered on one Typer app (imports every command module)."""
    full = typer.Typer(**_SETTINGS)
    for name in _COMMAND_MODULES:
        _register(full, name)
    _guard_commands(full)
    return full


def __getattr__(name):
    # `app`: the whole Typer application, built on first use (for typer.testing.CliRunner and
    # introspection); the command line itself goes through main() and the lazy root
    if name == "app":
        globals()["app"] = value = _full_app()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def repeated_option(command, ctx, args: list[str]) -> InputError | None:
    """The error for an option of ``command`` that takes one value given more than once in ``args``
    (``--tp 2 --tp 4``; a switch given both ways, ``--sp --no-sp``), else None. click keeps the last
    such value silently; a list option (``-H a -H b``) may repeat. Arguments click cannot parse are
    left to click's own error."""
    try:
        _, _, order = command.make_parser(ctx).parse_args(args=list(args))
    except Exception:  # noqa: BLE001 - click reports its own parse errors when the command parses
        return None
    seen: dict[str, int] = {}
    for param in order:
        if getattr(param, "param_type_name", "") == "option" and not param.multiple and not param.count:
            seen[param.name] = seen.get(param.name, 0) + 1
    for param in command.params:
        n = seen.get(param.name, 0)
        if n < 2:
            continue
        used = [a.partition("=")[0] for a in args if a.partition("=")[0] in param.opts]
        # as the user spelled it, a short flag (-H) by its long name
        flag = used[0] if used and used[0].startswith("--") else max(param.opts, key=len)
        if param.is_flag:
            on = [a for a in args if a in param.opts]
            off = [a for a in args if a in param.secondary_opts]
            if on and off:
                return InputError(f"given both {on[0]} and {off[0]}; give one", field=flag.lstrip("-"))
            continue  # the same switch twice says the same thing
        return InputError(f"given {n} times; it takes one value", field=flag.lstrip("-"))
    return None


class _OnceCommand(TyperCommand):
    """A command whose one-value options are refused when repeated (repeated_option)."""

    def parse_args(self, ctx, args):
        if not ctx.resilient_parsing:
            err = repeated_option(self, ctx, args)
            if err is not None:
                raise err
        return super().parse_args(ctx, args)


def _guard_commands(typer_app: typer.Typer) -> None:
    for info in typer_app.registered_commands:
        if info.callback is not None and not getattr(info.callback, "_numbers_checked", False):
            info.callback = _numbers_checked(info.callback)
            info.callback._numbers_checked = True
        if info.cls in (None, TyperCommand):
            info.cls = _OnceCommand
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _guard_commands(group.typer_instance)


# ------------------------------------------------------------------------ entry point

# Exit status of an error costmodel did not foresee (a bug): not 1 (a check that failed) nor 2 (bad input).
INTERNAL_ERROR_EXIT = 3


def _error(message: str, prefix: str = "error:") -> None:
    from rich.markup import escape

    from .common import err_console, styled

    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    err_console.print(styled(f"[bold red]{prefix}[/] " + escape(line)), highlight=False, soft_wrap=True)


def _is_usage_error(exc: BaseException) -> bool:
    """A click (or typer's own click) usage or parameter error: bad flag, bad value, missing argument."""
    return hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Exit 0: done (1: a check or limit failed); 2: bad input, as one line naming
    the file, flag or field; 3: an internal error, as one line asking for a report. Never a traceback."""
    from .common import normalise_switches

    if "numpy" not in sys.modules:
        # numpy's OpenBLAS starts a thread per core when imported, and they spin while idle; no
        # command's arrays are large enough for a threaded BLAS call to gain, and on a busy machine
        # those threads take the CPU from the command (train PRESET: ~0.1 s of CPU). A value the
        # environment sets is kept.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    argv = normalise_switches(sys.argv[1:] if argv is None else list(argv))
    _reset_notes()
    code = 0
    try:
        rv = _root().main(args=argv, prog_name="costmodel", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
        if code == 130:
            _interrupted()
    except CostModelError as exc:
        _error(str(exc))
        code = exc.exit_code
    except KeyboardInterrupt:
        _interrupted()
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
        for note in _pending_notes():  # e.g. a user's spec that replaces a shipped one
            from rich.markup import escape

            from .common import err_console, styled

            err_console.print(styled("[yellow]note:[/] " + escape(note)), highlight=False, soft_wrap=True)
    sys.exit(code)


def _interrupted() -> None:
    from .common import err_console

    err_console.print("interrupted")


def _reset_notes() -> None:
    specs = sys.modules.get("costmodel.specs")  # notes come only from specs loaded: none if never imported
    if specs is not None:
        specs.reset_notes()


def _pending_notes() -> list[str]:
    specs = sys.modules.get("costmodel.specs")
    return specs.pending_notes() if specs is not None else []
