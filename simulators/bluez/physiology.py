"""What the simulated wrist monitor measures: one consistent body behind heart rate, RR intervals,
SpO2 and the raw red/IR/green PPG it streams.

``make_source`` is the one place the wrist monitor gets its data from; the realistic PPG generator
of the DSP work (``simulators/ppg.py``) can replace :class:`PulseModel` behind it without touching the
peripheral. The model here is small but deterministic and physiologically shaped:

- beats with respiratory sinus arrhythmia and random variability, or irregularly irregular intervals
  in ``af`` mode;
- each beat a systolic wave and a smaller diastolic (reflected) wave, baseline wander from breathing;
- red/IR AC/DC ratios that give the configured SpO2 through the usual ratio-of-ratios calibration
  (SpO2 ~ 110 - 25 R), so a gateway-side SpO2 estimate can be checked against the set value.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field
from typing import Protocol


class PpgSource(Protocol):
    fs: float

    def samples(self, start: int, n: int) -> dict[str, list[int]]:
        """Raw ADC samples ``start .. start+n-1`` of every channel (deterministic per index)."""

    def beats_between(self, t0: float, t1: float) -> list[float]:
        """Beat times in ``[t0, t1)`` (seconds since the sensor started)."""

    def heart_rate(self, t: float) -> float:
        """Heart rate (/min) around time ``t``."""

    def spo2(self, t: float) -> float:
        """SpO2 (%) around time ``t``."""


@dataclass
class PulseModel:
    fs: float = 100.0
    hr_bpm: float = 68.0
    spo2_pct: float = 97.0
    af: bool = False
    seed: int = 1
    resp_rate_hz: float = 0.25
    _beats: list[float] = field(default_factory=list)
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._beats = [0.3]

    def _extend(self, until: float) -> None:
        while self._beats[-1] < until + 3.0:
            t = self._beats[-1]
            mean = 60.0 / self.hr_bpm
            if self.af:
                rr = mean * self._rng.uniform(0.6, 1.4)
            else:
                rsa = 0.04 * math.sin(2 * math.pi * self.resp_rate_hz * t)
                rr = mean * (1.0 + rsa + self._rng.gauss(0.0, 0.02))
            self._beats.append(t + max(0.3, rr))

    def beats_between(self, t0: float, t1: float) -> list[float]:
        self._extend(t1)
        lo = bisect.bisect_left(self._beats, t0)
        hi = bisect.bisect_left(self._beats, t1)
        return self._beats[lo:hi]

    def heart_rate(self, t: float) -> float:
        beats = self.beats_between(max(0.0, t - 5.0), t + 1e-9)
        if len(beats) < 2:
            return self.hr_bpm
        return 60.0 * (len(beats) - 1) / (beats[-1] - beats[0])

    def spo2(self, t: float) -> float:
        return self.spo2_pct + 0.3 * math.sin(2 * math.pi * t / 60.0)

    def _pulse(self, t: float) -> float:
        """Normalised pulsatile component (0..~1) at time ``t``."""
        self._extend(t)
        i = bisect.bisect_right(self._beats, t)
        value = 0.0
        for b in self._beats[max(0, i - 2) : i]:
            dt = t - b
            value += math.exp(-(((dt - 0.12) / 0.055) ** 2)) + 0.35 * math.exp(-(((dt - 0.36) / 0.08) ** 2))
        return value

    def samples(self, start: int, n: int) -> dict[str, list[int]]:
        r = (110.0 - self.spo2_pct) / 25.0  # ratio of ratios for the set SpO2
        dc = {"ir": 120_000.0, "red": 90_000.0, "green": 60_000.0}
        ac_ir = 0.012  # perfusion index 1.2 %
        ac = {"ir": ac_ir, "red": ac_ir * r, "green": 0.03}
        out: dict[str, list[int]] = {c: [] for c in ("red", "ir", "green")}
        for k in range(start, start + n):
            t = k / self.fs
            p = self._pulse(t)
            wander = 0.004 * math.sin(2 * math.pi * self.resp_rate_hz * t)
            for c in out:
                # Light absorbed rises with blood volume: the detector signal dips at each beat.
                out[c].append(round(dc[c] * (1.0 + wander - ac[c] * p)))
        return out


def make_source(
    fs: float = 100.0, *, hr_bpm: float = 68.0, spo2_pct: float = 97.0, af: bool = False, seed: int = 1
) -> PpgSource:
    return PulseModel(fs=fs, hr_bpm=hr_bpm, spo2_pct=spo2_pct, af=af, seed=seed)
