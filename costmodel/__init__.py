"""costmodel: hardware-aware cost, memory and time calculator for transformer training and inference."""
from .errors import CostModelError, InputError

__version__ = "0.1.0"

__all__ = ["CostModelError", "InputError", "ModelConfig", "load_model", "list_presets", "load_library",
           "train", "infer", "check", "search", "validate_file", "__version__"]

# Imported on first use (PEP 562), so that `costmodel.bench`'s GPU-side runner works on a machine
# with numpy and torch but without pydantic.
_LAZY = {"ModelConfig": ".arch", "load_model": ".arch", "list_presets": ".arch", "load_library": ".specs",
         "train": ".plan", "infer": ".plan", "check": ".check", "search": ".search", "validate_file": ".validate"}


def _callable_module(module_name: str, fn) -> None:
    """Make module `module_name` callable as `fn`: `costmodel.check` / `costmodel.search` are
    functions, but importing the submodule of the same name rebinds the package attribute to the
    module; a callable module keeps both spellings working."""
    import sys
    import types

    class _CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return fn(*args, **kwargs)

    sys.modules[module_name].__class__ = _CallableModule


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
