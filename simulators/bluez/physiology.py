"""What the simulated wrist monitor measures: one consistent body behind heart rate, RR intervals,
SpO2 and the raw red/IR/green PPG it streams.

``make_source`` is the one place the wrist monitor gets its data from. By default it streams the
realistic PPG generator of the DSP work (:mod:`simulators.ppg`: heart-rate variability, AF rhythm,
dicrotic pulse, breathing baseline, sensor noise, SpO2 through the ratio of ratios) through
:class:`RealisticSource`; ``realistic=False`` gives the small :class:`PulseModel` below, which has no
numpy in it. The small model is deterministic and physiologically shaped:

- beats with respiratory sinus arrhythmia and random variability, or irregularly irregular intervals
  in ``af`` mode;
- each beat a systolic wave and a smaller diastolic (reflected) wave, baseline wander from breathing;
- red/IR AC/DC ratios that give the configured SpO2 through the usual ratio-of-ratios calibration
  (SpO2 ~ 110 - 25 R), so a gateway-side SpO2 estimate can be checked against the set value.

:class:`WristMotion` adds the wrist's accelerometer (raw, gravity included, in mg as the raw PPG
service's format 2 carries it) and, while the wearer walks, the arm swing of
:func:`simulators.ppg.walking_accel` with its optical artefact on every wavelength; it also gives the
device's own activity flag (at rest only after ``rest_settle_s`` without walking, as a wearable's
classifier would). Walking does not change the heart rate: the source's rate is what the test sets.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field
from typing import Protocol

REST_SETTLE_S = 300.0  # the device's own settling time before it reports "at rest" (as gateway.dsp.activity)


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


def recent_rate(source: PpgSource, t: float, default: float) -> float:
    """Heart rate (/min) of ``source``'s beats in the 5 s up to ``t``; ``default`` with fewer than two."""
    beats = source.beats_between(max(0.0, t - 5.0), t + 1e-9)
    if len(beats) < 2:
        return default
    return 60.0 * (len(beats) - 1) / (beats[-1] - beats[0])


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
        return recent_rate(self, t, self.hr_bpm)

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


class RealisticSource:
    """:func:`simulators.ppg.generate` as an endless, deterministic sample stream.

    The stream is cut in chunks of ``chunk_samples`` (each generated from ``seed`` and its number, a few
    kept in memory), so any sample index can be asked for at any time, as a sensor's counter runs.
    At a seam between chunks a pulse may be cut short; beats closer than half an interval to the
    previous chunk's last beat are not reported. Changing ``hr_bpm``, ``spo2_pct`` or ``af`` applies
    to the chunks generated afterwards.
    """

    def __init__(
        self,
        fs: float = 100.0,
        *,
        hr_bpm: float = 68.0,
        spo2_pct: float = 97.0,
        af: bool = False,
        seed: int = 1,
        chunk_samples: int = 60_000,
    ) -> None:
        self._fs = fs
        self.hr_bpm = hr_bpm
        self.spo2_pct = spo2_pct
        self.af = af
        self.seed = seed
        self.chunk_samples = chunk_samples
        self._chunks: dict[int, tuple[dict[str, list[int]], list[float], list[float]]] = {}

    @property
    def fs(self) -> float:
        return self._fs

    @fs.setter
    def fs(self, value: float) -> None:
        self._fs = value
        self._chunks.clear()  # every sample index means another time now

    def _chunk(self, c: int) -> tuple[dict[str, list[int]], list[float], list[float]]:
        got = self._chunks.get(c)
        if got is not None:
            return got
        from simulators.ppg import generate  # numpy: only when streamed

        rec = generate(
            self.chunk_samples / self.fs,
            fs=self.fs,
            hr_bpm=self.hr_bpm,
            rhythm="af" if self.af else "sinus",
            seed=self.seed * 100_003 + c,
            spo2=self.spo2_pct,
        )
        chans = {name: [round(float(v)) for v in getattr(rec, name)] for name in ("red", "ir", "green")}
        t0 = c * self.chunk_samples / self.fs
        beats = [t0 + float(b) for b in rec.truth.beat_times_s]
        if c > 0:
            prev = self._chunk(c - 1)[1]
            if prev:
                beats = [b for b in beats if b - prev[-1] >= 0.5 * 60.0 / self.hr_bpm]
        spo2 = [float(v) for v in rec.truth.spo2[:: max(1, round(self.fs))]]  # one value per second
        self._chunks[c] = (chans, beats, spo2)
        for old in [k for k in self._chunks if k < c - 2 or k > c + 2]:
            del self._chunks[old]
        return self._chunks[c]

    def samples(self, start: int, n: int) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {"red": [], "ir": [], "green": []}
        k = start
        while k < start + n:
            c, i = divmod(k, self.chunk_samples)
            take = min(start + n - k, self.chunk_samples - i)
            chans = self._chunk(c)[0]
            for name in out:
                out[name].extend(chans[name][i : i + take])
            k += take
        return out

    def beats_between(self, t0: float, t1: float) -> list[float]:
        chunk_s = self.chunk_samples / self.fs
        out: list[float] = []
        for c in range(max(0, int(t0 // chunk_s)), int(max(t0, t1) // chunk_s) + 1):
            out.extend(b for b in self._chunk(c)[1] if t0 <= b < t1)
        return out

    def heart_rate(self, t: float) -> float:
        return recent_rate(self, t, self.hr_bpm)

    def spo2(self, t: float) -> float:
        chunk_s = self.chunk_samples / self.fs
        c = max(0, int(t // chunk_s))
        per_s = self._chunk(c)[2]
        return per_s[min(len(per_s) - 1, max(0, int(t - c * chunk_s)))] if per_s else self.spo2_pct


def make_source(
    fs: float = 100.0,
    *,
    hr_bpm: float = 68.0,
    spo2_pct: float = 97.0,
    af: bool = False,
    seed: int = 1,
    realistic: bool = True,
) -> PpgSource:
    if realistic:
        return RealisticSource(fs, hr_bpm=hr_bpm, spo2_pct=spo2_pct, af=af, seed=seed)
    return PulseModel(fs=fs, hr_bpm=hr_bpm, spo2_pct=spo2_pct, af=af, seed=seed)


def _hash_noise(idx: range, amplitude: float, salt: float) -> list[float]:
    """Deterministic per-index pseudo-noise in [-amplitude, amplitude] (the same sample reads the same)."""
    out = []
    for i in idx:
        x = math.sin(i * 12.9898 + salt * 78.233) * 43758.5453
        out.append(amplitude * (2.0 * (x - math.floor(x)) - 1.0))
    return out


@dataclass
class WristMotion:
    """The wrist's accelerometer and the wearer's walking, for a wrist monitor streaming at ``fs``."""

    fs: float = 100.0
    walking: bool = False
    rest_settle_s: float = REST_SETTLE_S
    cadence_spm: float = 110.0
    _walk_ended: float | None = None  # sensor time the last walk ended (None: never walked)
    _started: bool = False

    def set_walking(self, walking: bool, t: float) -> None:
        if self.walking and not walking:
            self._walk_ended = t
        self.walking = walking
        self._started = True

    def at_rest(self, t: float) -> bool:
        """The device's own activity flag at sensor time ``t``."""
        if self.walking:
            return False
        return self._walk_ended is None or t - self._walk_ended >= self.rest_settle_s

    def apply(self, start: int, n: int, optical: dict[str, list[int]]) -> dict[str, list[int]]:
        """``optical`` samples ``start..start+n-1`` plus ``accel_x/y/z`` (mg); walking adds its artefact."""
        idx = range(start, start + n)
        out = dict(optical)
        if self.walking:
            import numpy as np

            from simulators.ppg import walking_accel, walking_artefact

            t = np.arange(start, start + n, dtype=np.float64) / self.fs
            acc = walking_accel(t, self.cadence_spm)
            art = walking_artefact(acc)
            rel = 0.02 * art  # the generator's perfusion (2 %) times the artefact in pulse amplitudes
            keep = (1.0 - rel).tolist()
            out = {c: [round(v * k) for v, k in zip(vals, keep, strict=True)] for c, vals in optical.items()}
            axes = [acc[:, k].tolist() for k in range(3)]
        else:
            axes = [[0.0] * n, [0.0] * n, [1.0] * n]  # wrist flat, still: gravity on z
        for k, name in enumerate(("accel_x", "accel_y", "accel_z")):
            noise = _hash_noise(idx, 0.005, k + 1.0)
            out[name] = [round(1000.0 * (a + e)) for a, e in zip(axes[k], noise, strict=True)]
        return out
