"""On-device signal processing: heart rate, SpO2, signal quality and AF screening (pure numpy).

No I/O, no daemon imports: every function takes arrays and returns a small frozen dataclass, and never
raises on bad signal (an unusable window gives ``None`` and ``quality = 0``). See docs/dsp.md and
docs/dsp-af.md.

- :func:`estimate_heart_rate` (``ppg, fs`` -> :class:`HeartRate`: ``bpm``, ``beat_times_s``, ``quality``)
- :func:`estimate_spo2` (``red, ir, fs, calibration`` -> :class:`SpO2`: ``percent``, ``ratio``, ``quality``)
- :func:`signal_quality` (-> :class:`SignalQuality`), the SQI both use
- :func:`screen_af` (``rr_s`` -> :class:`AfResult`: ``af_mask``, ``burden``, ``label``, ``quality``)
- :class:`gateway.dsp.stream.WristStream`: the daemon's per-device sliding-window stream.
"""

from __future__ import annotations

import numpy.typing as npt

from gateway.dsp.af import AfResult, screen_af
from gateway.dsp.heart import HeartRate, analyse, estimate_heart_rate
from gateway.dsp.quality import SignalQuality
from gateway.dsp.spo2 import CALIBRATIONS, Calibration, SpO2, estimate_spo2


def signal_quality(
    ppg: npt.ArrayLike,
    fs: float,
    *,
    inverted: bool = False,
    motion: npt.ArrayLike | None = None,
    check_perfusion: bool = False,
) -> SignalQuality:
    """The signal-quality index of one PPG window (see :mod:`gateway.dsp.quality`)."""
    return analyse(ppg, fs, inverted=inverted, motion=motion, check_perfusion=check_perfusion)[0].sqi


__all__ = [
    "CALIBRATIONS",
    "AfResult",
    "Calibration",
    "HeartRate",
    "SignalQuality",
    "SpO2",
    "estimate_heart_rate",
    "estimate_spo2",
    "screen_af",
    "signal_quality",
]
