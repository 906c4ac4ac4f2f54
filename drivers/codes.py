"""The codes and units readings carry, written once: LOINC observation codes with their UCUM units
(docs/mqtt-contract.md). Drivers, the DSP stage and the care rules all name them from here."""

from __future__ import annotations

from typing import Final

HEART_RATE: Final = "8867-4"  # Heart rate (also a cuff's or oximeter's pulse rate)
SPO2: Final = "59408-5"  # Oxygen saturation in arterial blood by pulse oximetry
SYSTOLIC: Final = "8480-6"  # Systolic blood pressure
DIASTOLIC: Final = "8462-4"  # Diastolic blood pressure
MEAN_ARTERIAL: Final = "8478-0"  # Mean blood pressure

PER_MIN: Final = "/min"
PERCENT: Final = "%"
MMHG: Final = "mm[Hg]"

UNITS: Final = {HEART_RATE: PER_MIN, SPO2: PERCENT, SYSTOLIC: MMHG, DIASTOLIC: MMHG, MEAN_ARTERIAL: MMHG}
"""The UCUM unit of each code."""
