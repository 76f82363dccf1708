"""Elementwise helpers for formulas that take one layout (Python numbers) or a grid of layouts
(numpy arrays, one entry per candidate): Python's own operations on numbers, numpy's on arrays, so
one formula serves one estimate at the speed of plain arithmetic and a million at numpy's."""
from __future__ import annotations

import numpy as np

_PY = (bool, int, float)  # Python scalars: one layout, taken without asking numpy


def scalar(x) -> bool:
    return type(x) in _PY or np.ndim(x) == 0


def where(cond, a, b):
    """`a if cond else b`, elementwise when `cond` is an array."""
    if scalar(cond):
        return a if cond else b
    return np.where(cond, a, b)


def maximum(a, b):
    if scalar(a) and scalar(b):
        return max(a, b)
    return np.maximum(a, b)


def minimum(a, b):
    if scalar(a) and scalar(b):
        return min(a, b)
    return np.minimum(a, b)
