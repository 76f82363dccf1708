"""Fitted constants, read from data: the ``parameters:`` of a YAML file under ``data/``.

A constant fitted to measurements describes the hardware, host or framework it was measured on,
not the model, so it lives in data next to what it was fitted on, in the schema of the framework
profiles (``costmodel.frameworks.ProfileParameter``): ``value``, ``bounds`` (the range a refit keeps
it in), ``unit``, ``meaning`` and ``source`` (the measurement file or paper it was fitted on, and
its fit / held-out error); an entry whose value is not fitted (an allowance, a copy) says why in
``not_fitted``. Framework-specific constants sit in ``data/frameworks/<id>.yaml``,
device-wide kernel and collective defaults in ``data/fitted/*.yaml``. The formula modules keep
their module-level names (``roofline.KERNEL_FLOOR_S = fitted.value(...)``), read once per process.
"""
from __future__ import annotations

import functools
import math

from .errors import InputError

_FIELDS = ("value", "bounds", "meaning", "source")


@functools.lru_cache(maxsize=None)
def parameters(relpath: str) -> dict[str, dict]:
    """The ``parameters`` mapping of ``data/<relpath>``, each entry checked: a finite number
    ``value`` inside its ``bounds`` [lo, hi], and a ``meaning`` and ``source``."""
    from .specs import package_data_dir, read_yaml

    path = package_data_dir("data") / relpath
    data = read_yaml(path)
    params = data.get("parameters") if isinstance(data, dict) else None
    if not isinstance(params, dict):
        raise InputError("expected a mapping of fitted constants", file=path, field="parameters")
    for name, p in params.items():
        field = f"parameters.{name}"
        if not isinstance(p, dict) or any(k not in p for k in _FIELDS):
            raise InputError(f"expected the fields {', '.join(_FIELDS)}", file=path, field=field)
        v, b = p["value"], p["bounds"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError(f"expected a finite number, got {v!r}", file=path, field=f"{field}.value")
        if (not isinstance(b, (list, tuple)) or len(b) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in b) or not b[0] <= v <= b[1]):
            raise InputError(f"expected bounds [lo, hi] around the value {v}, got {b!r}", file=path, field=f"{field}.bounds")
        if not str(p["source"]).strip():
            raise InputError("expected where the value was fitted or measured", file=path, field=f"{field}.source")
        if "not_fitted" in p and not (isinstance(p["not_fitted"], str) and p["not_fitted"].strip()):
            raise InputError("expected why the value is not fitted, in words", file=path, field=f"{field}.not_fitted")
    return params


def value(relpath: str, name: str) -> float:
    """One fitted constant: ``parameters.<name>.value`` of ``data/<relpath>``."""
    params = parameters(relpath)
    if name not in params:
        raise InputError(f"missing fitted constant {name!r}", file=relpath, field=f"parameters.{name}")
    return float(params[name]["value"])
