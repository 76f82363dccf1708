"""costmodel: hardware-aware cost, memory and time calculator for transformer training and inference."""
from .errors import CostModelError, InputError
from .arch import ModelConfig, load_model, list_presets
from .specs import load_library

__version__ = "0.1.0"

__all__ = ["CostModelError", "InputError", "ModelConfig", "load_model", "list_presets", "load_library", "__version__"]
