"""SpO2 from red and infrared PPG by the ratio of ratios.

Method (the principle of every pulse oximeter, Aoyagi 1974; Webster, *Design of Pulse Oximeters*, 1997,
ch. 4): oxygenated and deoxygenated haemoglobin absorb red (660 nm) and infrared (~900 nm) light
differently, so the pulsatile fraction of each channel, AC/DC, changes with the saturation:

    R = (AC_red / DC_red) / (AC_ir / DC_ir)

- DC: the window's mean of the raw intensity.
- AC: the 0.5-8 Hz band-passed signal. Instead of peak-to-trough amplitudes per beat, the AC ratio is
  the least-squares slope of band-passed red on band-passed IR over the whole window (the "ratio by
  regression" of e.g. the Nellcor / Masimo literature and Maxim AN6845): it uses every sample, so it is
  far less noisy than single-beat amplitudes, and it is insensitive to the pulse's shape.
- SpO2 = calibration(R), a polynomial in R specific to the sensor's LEDs and optics (:data:`CALIBRATIONS`).

Quality: the window must pass the PPG signal-quality index on the IR channel (:mod:`gateway.dsp.quality`,
with the perfusion and, when given, the accelerometer checks), and the two channels' pulses must agree
(correlation of band-passed red and IR at least :data:`MIN_CHANNEL_CORR`): motion moves both channels
together but not in the blood's ratio, and is the classic cause of false desaturations. A saturation
outside :data:`PLAUSIBLE` is an optical failure (ambient light, a loose sensor), not a reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gateway.dsp.heart import HeartRate, analyse, bandpass, clean_window
from gateway.dsp.quality import SignalQuality

FloatArray = npt.NDArray[np.float64]

MIN_CHANNEL_CORR = 0.9
PLAUSIBLE = (50.0, 102.0)  # outside: no value; within, clipped to 100


@dataclass(frozen=True, slots=True)
class Calibration:
    """``SpO2 = c0 + c1 R + c2 R^2`` (percent) for one sensor model."""

    name: str
    coeffs: tuple[float, float, float]
    source: str

    def __call__(self, r: float) -> float:
        c0, c1, c2 = self.coeffs
        return c0 + c1 * r + c2 * r * r


CALIBRATIONS: dict[str, Calibration] = {
    "default": Calibration(
        "default",
        (110.0, -25.0, 0.0),
        "empirical linear curve SpO2 = 110 - 25 R (Webster 1997; the usual textbook approximation of "
        "transmission-mode oximeter calibration, close to the Beer-Lambert curve between 70 and 100 %)",
    ),
    "max30102": Calibration(
        "max30102",
        (94.845, 30.354, -45.060),
        "Maxim Integrated MAX30102/MAX30101 reference design (RD117 firmware, algorithm.cpp): "
        "SpO2 = -45.060 R^2 + 30.354 R + 94.845",
    ),
    "max30100": Calibration(
        "max30100",
        (110.0, -25.0, 0.0),
        "MAX30100 (no vendor curve published; the linear textbook curve, as in open drivers)",
    ),
}
"""Per sensor model; a device's configured model picks its curve, unknown models use ``"default"``.
A device model's curve should come from its maker or from a desaturation study against arterial blood
gas (ISO 80601-2-61); the defaults above give trends, not clinical accuracy, for an uncalibrated sensor."""


def calibration_for(model: str | Calibration | None) -> Calibration:
    if isinstance(model, Calibration):
        return model
    if model is None:
        return CALIBRATIONS["default"]
    return CALIBRATIONS.get(model.lower(), CALIBRATIONS["default"])


@dataclass(frozen=True, slots=True)
class SpO2:
    percent: float | None  # None: unusable window
    ratio: float | None  # R, the ratio of ratios (None when it could not be formed)
    quality: float  # 0..1
    sqi: SignalQuality = field(default_factory=lambda: SignalQuality(0.0, False, ("empty",)))
    channel_corr: float = 0.0


def estimate_spo2(
    red: npt.ArrayLike,
    ir: npt.ArrayLike,
    fs: float,
    calibration: str | Calibration | None = None,
    *,
    motion: npt.ArrayLike | None = None,
) -> SpO2:
    """SpO2 of one window of raw red and IR intensities (same length and rate; a pulse is a dip, as the
    photodiode reads it). ``calibration``: a :class:`Calibration`, a model name in :data:`CALIBRATIONS`,
    or None for the default. Never raises on bad data: unusable gives ``percent = None``."""
    cal = calibration_for(calibration)
    r, why_r = clean_window(red, fs)
    i, why_i = clean_window(ir, fs)
    why = why_r or why_i
    if why is None and len(r) != len(i):
        why = "length-mismatch"
    if why is None and not (float(np.mean(r)) > 0 and float(np.mean(i)) > 0):
        why = "no-light"
    if why is not None:
        return SpO2(None, None, 0.0, SignalQuality(0.0, False, (why,)))
    hr, y_ir = analyse(i, fs, inverted=True, motion=motion, check_perfusion=True)
    return spo2_from(r, i, fs, cal, hr, y_ir)


def spo2_from(r: FloatArray, i: FloatArray, fs: float, cal: Calibration, hr: HeartRate, y_ir: FloatArray) -> SpO2:
    """SpO2 from clean raw windows and the IR channel's analysis (:func:`gateway.dsp.heart.analyse` with
    ``inverted=True, check_perfusion=True``), so a stream analyses the IR channel once for both values."""
    if len(y_ir) != len(i) or len(r) != len(i) or not (float(np.mean(r)) > 0 and float(np.mean(i)) > 0):
        return SpO2(None, None, 0.0, hr.sqi)
    y_red = -bandpass(r - float(np.mean(r)), fs)
    den = float(y_ir @ y_ir)
    nr = float(y_red @ y_red)
    if not (den > 0 and nr > 0 and np.isfinite(den) and np.isfinite(nr)):
        return SpO2(None, None, 0.0, hr.sqi)
    slope = float(y_red @ y_ir) / den
    corr = float(y_red @ y_ir) / float(np.sqrt(den * nr))
    ratio = slope * float(np.mean(i)) / float(np.mean(r))
    sqi = hr.sqi
    if hr.bpm is None:
        return SpO2(None, ratio, 0.0, sqi, corr)
    if corr < MIN_CHANNEL_CORR:
        sqi = SignalQuality(0.0, False, ("channels-disagree",), sqi.template_corr, sqi.motion_g, sqi.perfusion_index)
        return SpO2(None, ratio, 0.0, sqi, corr)
    pct = cal(ratio)
    if not PLAUSIBLE[0] <= pct <= PLAUSIBLE[1]:
        sqi = SignalQuality(0.0, False, ("implausible",), sqi.template_corr, sqi.motion_g, sqi.perfusion_index)
        return SpO2(None, ratio, 0.0, sqi, corr)
    return SpO2(min(pct, 100.0), ratio, min(sqi.score, corr), sqi, corr)
