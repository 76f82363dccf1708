"""User-facing errors. The CLI turns these into a one-line message and exit code 2.

Never raise AssertionError or let a pydantic ValidationError escape to the user: wrap it
in :class:`InputError`, which names the file, the field and what was expected.
"""
from __future__ import annotations

import re
from pathlib import Path


class CostModelError(Exception):
    """Base class for errors costmodel reports to the user."""

    exit_code = 2


class InputError(CostModelError):
    """Bad user input: a spec, preset, plan or flag that cannot be used as given."""

    def __init__(self, message: str, *, file: str | Path | None = None, field: str | None = None):
        self.file = str(file) if file is not None else None
        self.field = field
        self.detail = message
        where = []
        if self.file:
            where.append(self.file)
        if field:
            where.append(f"field '{field}'")
        prefix = ": ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


def from_validation_error(exc, file: str | Path | None, drop_first: tuple[str, ...] = ()) -> InputError:
    """Convert a pydantic ValidationError into one InputError that names every bad field: the
    first is the error's ``field``, the others follow in the message ("; also field 'x': ...").
    ``drop_first``: location tags to drop when they come first (a discriminated union's kind)."""
    errs = exc.errors()
    if not errs:
        return InputError(str(exc), file=file)
    items = []
    for e in errs:
        parts = [str(p) for p in e.get("loc", ()) if not str(p).startswith("function-")]
        if parts and parts[0] in drop_first:
            parts = parts[1:]
        msg = e.get("msg", "invalid value").removeprefix("Value error, ")
        inp = e.get("input")
        if e.get("type") == "missing":
            msg = "missing required field"
        elif inp is not None and not isinstance(inp, (dict, list)):
            msg = f"{msg} (got {inp!r})"
        field = ".".join(parts) or None
        named = re.match(r"([a-z_][a-z0-9_]*): (.+)", msg, re.S) if field is None else None
        if named:  # a model-level check names its field first ("ep: ep (3) must divide ...")
            field, msg = named.group(1), named.group(2)
        items.append((field, msg))
    field, msg = items[0]
    rest = [f"field '{f}': {m}" if f else m for f, m in items[1:]]
    if rest:
        msg += "; also " + "; ".join(rest)
    return InputError(msg, file=file, field=field)


def require_positive(**values) -> None:
    """Raise InputError for the first of ``values`` (name -> number or None) that is not >= 1;
    None means "not given" and passes. Counts (parallel sizes, batch, lengths) are checked before
    they are divided by, so a zero is a named error, not a ZeroDivisionError."""
    for name, v in values.items():
        if v is not None and not (isinstance(v, (int, float)) and v >= 1):
            raise InputError(f"expected a positive count (got {v!r})", field=name.replace("_", "-"))


def require_run(tokens=None, steps=None, price_per_hour=None) -> None:
    """A run's length and price, where given: a positive finite number of tokens, a positive whole
    number of steps, a finite price >= 0 per device-hour (a negative one gave negative days and
    dollars)."""
    import math

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if tokens is not None and not (number(tokens) and tokens > 0):
        raise InputError(f"expected a positive number of tokens (got {tokens!r})", field="tokens")
    if steps is not None and not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
        raise InputError(f"expected a positive number of steps (got {steps!r})", field="steps")
    if price_per_hour is not None and not (number(price_per_hour) and price_per_hour >= 0):
        raise InputError(f"expected a price >= 0 per device-hour (got {price_per_hour!r})", field="price-per-hour")
