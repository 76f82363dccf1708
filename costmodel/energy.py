"""Energy of a run at the wall: one model for `train` and `scale`.

    energy = devices x time x TDP x power fraction x PUE

- Board power: the device's TDP (rated board power) for every device-hour, as the published
  carbon accounts of large training runs count it (BLOOM: Luccioni et al. 2023, "Estimating the
  Carbon Footprint of BLOOM, a 176B Parameter Language Model", JMLR 2023: 400 W per A100 for every
  GPU-hour; Llama 2: Touvron et al. 2023, sec. 2.2.1, "peak power capacity per GPU device").
  Dense training runs close to it, so 1.0 is an upper estimate of the GPUs' draw; pass
  ``power_fraction`` (``--power-fraction``) for a measured one. Host CPUs, memory and network are not counted.
- Facility: PUE 1.58, the industry-average annual PUE of 2023 (Uptime Institute Global Data Center
  Survey 2023). Hyperscale sites report ~1.1 (Patterson et al. 2021, "Carbon Emissions and Large
  Neural Network Training", Google's 1.10); pass ``pue`` (``--pue``).
"""
from __future__ import annotations

from .errors import InputError

DEFAULT_PUE = 1.58
DEFAULT_POWER_FRACTION = 1.0
SOURCE = ("TDP for every device-hour (BLOOM, Luccioni et al. 2023; Llama 2, Touvron et al. 2023) x PUE 1.58 "
          "(Uptime Institute 2023 industry average)")


def check_energy_inputs(pue: float, power_fraction: float) -> None:
    if not pue >= 1:
        raise InputError(f"PUE is total facility power over IT power and cannot be below 1, got {pue}", field="pue")
    if not 0 < power_fraction <= 1.5:
        raise InputError(f"power fraction of TDP must be in (0, 1.5], got {power_fraction}", field="power_fraction")


def energy_kwh(tdp_w: float, devices: float, seconds: float, pue: float = DEFAULT_PUE,
               power_fraction: float = DEFAULT_POWER_FRACTION) -> float:
    """Energy at the wall in kWh: devices x seconds x TDP x power fraction x PUE."""
    return tdp_w * power_fraction * devices * seconds * pue / 3.6e6


def describe(tdp_w: float, pue: float = DEFAULT_PUE, power_fraction: float = DEFAULT_POWER_FRACTION) -> str:
    """The energy model with its numbers, printed beside the result: 'TDP 700 W x 1 x PUE 1.58'."""
    defaults = pue == DEFAULT_PUE and power_fraction == DEFAULT_POWER_FRACTION
    return (f"energy = TDP {tdp_w:.0f} W x {power_fraction:g} x PUE {pue:g} per device-hour"
            + (f" ({SOURCE}; --pue, --power-fraction)" if defaults else " (--pue, --power-fraction)"))
