"""Device efficiency: datasheet peaks times efficiency curves, or curves fitted to measurements.

The models never use a datasheet peak as an achieved rate. They ask a :class:`DeviceEfficiency`,
built either from a spec alone (:func:`default_efficiency`: the peaks times default curves) or
from a calibration overlay fitted to kernel records (:func:`fit_overlay`, written by
``costmodel calibrate``, read by :func:`load_overlay`). :func:`shipped_efficiency` uses
``hardware/calibrated/<id>.yaml`` when it exists and the defaults otherwise, and says which in
``DeviceEfficiency.source``.

The kernel time model (one form for GEMMs, memory-bound kernels and attention)::

    t_kernel = t_min + smoothmax_p(W / P, B / BW)     # compute- or memory-bound, smooth corner
    t_stream = smoothmax_q(t_floor, t_kernel)         # queued back to back: host dispatch floor
    t_call   = t_gap + t_stream                       # one isolated call (SCHEMA.md's ``s``)

with ``smoothmax_p(a, b) = (a^p + b^p)^(1/p)``; W is the work in FLOPs, B the fewest bytes
moved. For GEMMs ``P = P_dtype * k / (k + k_half) * u^a``: a short reduction's pipeline fill, and
the wave utilisation u of the output tiles on the device's processors (a small output fills few of
them; a small m is memory-bound first). The fits of the shipped GPU and host curves found no
further small-output saturation x / (x + x_half) (x = min(m, n)) that the records pin, so fits
write none; an overlay may still carry ``x_half``. For attention
``W`` counts the causal diagonal blocks (the kernel computes whole ``block`` x ``block`` tiles on
the diagonal) and ``P = P_max * d / (d + d_half)`` (small heads keep the tensor cores less busy);
non-causal kernels run ``noncausal_factor`` times faster per FLOP (no masking). Memory-bound
kernels are ``t_min + B / BW``. Collectives are ``alpha + bytes * busbw_factor / busbw``
(nccl-tests' bus bandwidth convention), per op and world size.

Parameters are fitted by Levenberg-Marquardt on log times (relative errors), with a weak prior
that keeps parameters the data cannot pin near their starting values. Everything is num

Modules: ``defaults`` (the constants of the default curves), ``curves`` (the time curves),
``efficiency`` (DeviceEfficiency, defaults from a spec), ``fit`` (fitting records), ``residual``
(the GEMM per-shape residual), ``overlay`` (reading, shipping and writing overlays), ``holdout``
(``calibrate --check``). Everything is importable from ``costmodel.calibration``.
"""

from .defaults import *  # noqa: F401,F403  (the package's public names, as one namespace)
from .curves import *  # noqa: F401,F403
from .curves import _gauss_kernel  # noqa: F401
from .efficiency import *  # noqa: F401,F403
from .efficiency import _spec_peaks  # noqa: F401
from .overlay import *  # noqa: F401,F403
from .overlay import _read_gemm, _Reader, _rounded  # noqa: F401

# Fitting (fit, residual) and held-out checks (holdout) are imported on first use of one of their
# names (PEP 562): an estimate reads overlays and evaluates curves, and fits nothing.
_LAZY_MODULES = ("fit", "residual", "holdout")


def __getattr__(name):
    import importlib

    if not name.startswith("__"):
        for mod in _LAZY_MODULES:
            m = importlib.import_module(f"{__name__}.{mod}")
            if hasattr(m, name):
                value = getattr(m, name)
                globals()[name] = value
                return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
