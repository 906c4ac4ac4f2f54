"""Plausibility windows of the physiological values drivers emit, one place for every transport.

A value outside its window is a corrupted byte, a device's own "no value" marker (0, 0xFF, 0x7FF...)
or a decoding the spec allows but no body produces (a uint16 heart rate of 65535): it is never emitted
as a number, only counted (``out_of_range``). The windows are the measuring ranges of the devices this
project reads, not clinical limits: a dangerous value inside them is the rules' business.

- Pulse / heart rate 30-250 /min: the CMS50D+ user manual's pulse range, and the Omron/Beurer cuffs'
  (40-180) inside it.
- SpO2 1-100 %: 0 is the "no value" of every oximeter here; accuracy is stated from 70 %.
- Blood pressure: systolic 50-280, diastolic 25-200 mmHg, diastolic below systolic (cuffs measure
  0-300 mmHg; below 50 systolic no cuff gives a reading, and an inverted pair is a decoding error).
"""

from __future__ import annotations

PULSE_PER_MIN = (30.0, 250.0)
SPO2_PERCENT = (1.0, 100.0)
SYSTOLIC_MMHG = (50.0, 280.0)
DIASTOLIC_MMHG = (25.0, 200.0)


def _within(value: float, window: tuple[float, float]) -> bool:
    return window[0] <= value <= window[1]


def pulse_ok(value: float) -> bool:
    return _within(value, PULSE_PER_MIN)


def spo2_ok(value: float) -> bool:
    return _within(value, SPO2_PERCENT)


def blood_pressure_ok(systolic: float, diastolic: float) -> bool:
    return _within(systolic, SYSTOLIC_MMHG) and _within(diastolic, DIASTOLIC_MMHG) and diastolic < systolic
