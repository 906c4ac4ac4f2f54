"""A realistic wrist/finger PPG generator with ground truth, for the DSP tests and the device simulators.

What it models (each piece is simple, but together they exercise what the gateway's DSP must cope with):

- **Rhythm** (beat-to-beat intervals): ``"sinus"`` with natural heart-rate variability (respiratory sinus
  arrhythmia at the breathing rate, a 0.1 Hz Mayer wave and a little white jitter, ~3-5 % RR variation as
  in resting adults, Task Force of the ESC/NASPE 1996); ``"af"`` with irregularly irregular intervals
  (independent draws, coefficient of variation ~20 %, no respiratory modulation, as in the RR models of
  AF, e.g. Corino et al. 2013); ``"ectopic"``: sinus with premature beats (a short interval followed by a
  compensatory pause). AF can also be confined to episodes within a sinus recording.
- **Pulse shape**: per beat a systolic and a smaller, later diastolic (dicrotic) Gaussian wave, timed after the
  electrical beat by a pulse transit time; a beat after a short interval has a smaller pulse (less filling),
  as seen with AF and premature beats.
- **Optics**: red, infrared and green intensity channels as a sensor reads them (a large DC level and a
  small dip per pulse: more blood absorbs more light). The red/IR modulation ratio follows the SpO2 through
  the same empirical calibration the gateway uses by default (``SpO2 = 110 - 25 R``), so a desaturation event
  is visible to a ratio-of-ratios estimator. ``pleth`` is the upright, normalised 0..1 waveform a fingertip
  oximeter (CMS50) displays.
- **Breathing baseline** wander and slow drift, sensor noise.
- **Motion artefacts**: large band-limited (0.3-6 Hz) disturbances on every channel, with the matching
  3-axis accelerometer trace (in g; gravity plus motion). **Walking**: the periodic wrist acceleration of
  arm swing at the stride frequency (half the step cadence) and the body's bounce at the step frequency,
  with gravity turning with the forearm (:func:`walking_accel`), and a matching optical artefact; the
  heart rate is whatever the caller sets (walking and resting at the same rate is the point of the
  at-rest tests). **Sensor off**: no pulse, ambient-light level and noise only.

Everything is deterministic for a given seed. :func:`generate` returns a whole recording with its ground truth;
:class:`PulseStream` produces the upright pleth sample by sample at a changeable heart rate (the CMS50
simulator streams it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Rhythm = Literal["sinus", "af", "ectopic"]

# Empirical linear calibration SpO2 = A - B * R (the textbook curve, e.g. Webster 1997); the generator and
# gateway.dsp's default calibration share it, so the generator's SpO2 is the SpO2 a calibrated device reads.
CAL_A, CAL_B = 110.0, 25.0

PTT_S = 0.22  # pulse transit time: electrical beat -> systolic peak at the wrist/finger
# DC levels of the raw optical channels (arbitrary ADC units; the ratio of ratios does not depend on them)
DC_LEVEL = {"ir": 60000.0, "red": 45000.0, "green": 30000.0}

# Walking (an average adult at ~4-5 km/h): 110 steps/min, the arm swinging +-20 degrees about the shoulder
# with the wrist 0.55 m from it (one swing per stride, i.e. per two steps), the trunk bouncing about
# 0.25 g at the step frequency with a heel-strike harmonic. Wrist ENMO comes out at ~0.08 g, as on the
# treadmill walks of ../shared/data/wrist_exercise (medians 53-89 mg; 0.1-0.2 g are reported for brisk
# walking, Hildebrand et al. 2014, MSSE 46(9):1816); the at-rest threshold (44.8 mg) is below it.
CADENCE_SPM = 110.0
SWING_RAD = math.radians(20.0)
SWING_RADIUS_M = 0.55
BOUNCE_G = 0.25
G_MS2 = 9.80665
WALK_ARTEFACT = 2.0  # optical artefact per g of swing acceleration, in pulse amplitudes


@dataclass(frozen=True)
class Desaturation:
    """SpO2 falls linearly from baseline to ``nadir`` over ``fall_s``, stays ``hold_s``, recovers over ``rise_s``."""

    start_s: float
    nadir: float = 85.0
    fall_s: float = 20.0
    hold_s: float = 15.0
    rise_s: float = 15.0


@dataclass(frozen=True)
class PpgTruth:
    """Ground truth of a generated recording."""

    beat_times_s: FloatArray  # systolic peak times of every pulse (s from the start)
    rr_s: FloatArray  # intervals between successive beats, len(beat_times_s) - 1
    af_mask: BoolArray  # per interval: inside an AF stretch
    ectopic_mask: BoolArray  # per interval: the short interval of a premature beat
    spo2: FloatArray  # per sample, percent
    motion: BoolArray  # per sample: a motion artefact is present
    sensor_off: BoolArray  # per sample: the sensor is off the skin

    def hr_bpm(self, t0: float = 0.0, t1: float = math.inf) -> float:
        """Mean heart rate over [t0, t1): 60 / mean interval of the beats within."""
        b = self.beat_times_s[(self.beat_times_s >= t0) & (self.beat_times_s < t1)]
        if len(b) < 2:
            return math.nan
        return float(60.0 * (len(b) - 1) / (b[-1] - b[0]))


@dataclass(frozen=True)
class PpgRecording:
    fs: float
    red: FloatArray
    ir: FloatArray
    green: FloatArray
    pleth: FloatArray  # upright, 0..1 (what a fingertip oximeter shows)
    accel: FloatArray  # (n, 3) in g
    truth: PpgTruth
    meta: dict[str, float] = field(default_factory=dict)

    @property
    def t(self) -> FloatArray:
        return np.arange(len(self.ir), dtype=np.float64) / self.fs

    def __len__(self) -> int:
        return len(self.ir)


# --------------------------------------------------------------------------------------------------
# Rhythm
# --------------------------------------------------------------------------------------------------


def _sinus_rr(t: float, rr0: float, rng: np.random.Generator, resp_hz: float, phase: float) -> float:
    rsa = 0.035 * math.sin(2 * math.pi * resp_hz * t)
    mayer = 0.02 * math.sin(2 * math.pi * 0.1 * t + phase)
    return rr0 * (1.0 + rsa + mayer + 0.01 * float(rng.standard_normal()))


def _af_rr(rr0: float, rng: np.random.Generator) -> float:
    # Irregularly irregular: independent intervals, CV ~ 20 %, bounded to physiological limits.
    return float(np.clip(rr0 * (1.0 + 0.2 * rng.standard_normal()), 0.3, 2.0 * rr0))


def beat_sequence(
    duration_s: float,
    hr_bpm: float,
    rhythm: Rhythm,
    rng: np.random.Generator,
    *,
    af_episodes: Sequence[tuple[float, float]] = (),
    ectopic_rate: float = 0.08,
    af_hr_bpm: float | None = None,
    resp_hz: float = 0.25,
) -> tuple[FloatArray, BoolArray, BoolArray]:
    """Electrical beat times over ``duration_s`` (with margins), per-interval AF and ectopic masks."""
    rr0 = 60.0 / hr_bpm
    rr_af = 60.0 / (af_hr_bpm if af_hr_bpm is not None else hr_bpm)
    phase = float(rng.uniform(0, 2 * math.pi))
    beats = [-float(rng.uniform(0.5, 1.5)) * rr0]
    af: list[bool] = []
    ect: list[bool] = []
    pending_pause = 0.0
    while beats[-1] < duration_s + 2.0:
        t = beats[-1]
        in_af = rhythm == "af" or any(a <= t < b for a, b in af_episodes)
        is_ect = False
        if in_af:
            rr = _af_rr(rr_af, rng)
        elif pending_pause:
            rr, pending_pause = pending_pause, 0.0
        else:
            rr = _sinus_rr(t, rr0, rng, resp_hz, phase)
            if rhythm == "ectopic" and rng.random() < ectopic_rate:
                coupling = float(rng.uniform(0.55, 0.7))
                pending_pause = rr * (2.0 - coupling)  # compensatory pause
                rr, is_ect = rr * coupling, True
        beats.append(t + rr)
        af.append(in_af)
        ect.append(is_ect)
    return np.asarray(beats), np.asarray(af, dtype=bool), np.asarray(ect, dtype=bool)


# --------------------------------------------------------------------------------------------------
# Pulse shape
# --------------------------------------------------------------------------------------------------


def pulse(dt: FloatArray, rr: float) -> FloatArray:
    """One pulse (upright, peak ~1) at offsets ``dt`` (s) from its systolic peak; widths scale with sqrt(rr)."""
    s = math.sqrt(max(rr, 0.25))
    systolic = np.exp(-0.5 * (dt / (0.075 * s)) ** 2)
    notch_t = 0.26 * s
    dicrotic = 0.38 * np.exp(-0.5 * ((dt - notch_t) / (0.1 * s)) ** 2)
    # a slow diastolic run-off so the pulse ends smoothly
    runoff = np.where(dt > 0, 0.12 * np.exp(-np.maximum(dt, 0) / (0.35 * s)), 0.12 * np.exp(-0.5 * (dt / 0.05) ** 2))
    out: FloatArray = systolic + dicrotic + runoff
    return out


def _amplitude(prev_rr: float, rr0: float) -> float:
    # Frank-Starling: a short preceding interval fills the ventricle less, a smaller pulse.
    return float(np.clip(0.35 + 0.65 * prev_rr / rr0, 0.3, 1.3))


def _bandlimited_noise(n: int, fs: float, lo: float, hi: float, rng: np.random.Generator) -> FloatArray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / fs)
    spec[(f < lo) | (f > hi)] = 0
    x: FloatArray = np.fft.irfft(spec, n)
    sd = float(np.std(x))
    return x / sd if sd > 0 else x


def _mask(n: int, fs: float, spans: Sequence[tuple[float, float]]) -> BoolArray:
    m = np.zeros(n, dtype=bool)
    for a, b in spans:
        m[max(0, int(a * fs)) : max(0, int(b * fs))] = True
    return m


def walking_accel(t: FloatArray, cadence_spm: float = CADENCE_SPM, phase: float = 0.0) -> FloatArray:
    """Wrist acceleration (n, 3) in g while walking, gravity included (as an accelerometer reads it):
    x along the swing, y across it, z out of the back of the wrist."""
    w = 2.0 * math.pi * cadence_spm / 120.0  # stride (swing) frequency, rad/s
    arg = w * np.asarray(t, dtype=np.float64) + phase
    theta = SWING_RAD * np.sin(arg)
    tangential = -SWING_RADIUS_M * SWING_RAD * w * w / G_MS2 * np.sin(arg)  # r * theta''
    vertical = 1.0 + BOUNCE_G * (np.sin(2.0 * arg) + 0.5 * np.sin(4.0 * arg))  # gravity + bounce, per step
    ax = vertical * np.sin(theta) + tangential
    ay = 0.05 * np.sin(arg + 1.0)
    az = vertical * np.cos(theta)
    return np.column_stack((ax, ay, az))


def walking_artefact(accel: FloatArray) -> FloatArray:
    """The optical artefact of walking (in pulse amplitudes) for a :func:`walking_accel` trace: the
    swing's acceleration presses the sensor and moves venous blood, the same on every wavelength. The
    swing axis averages to zero over a stride, so this works sample by sample (streaming simulators)."""
    return WALK_ARTEFACT * accel[:, 0]


def spo2_trace(n: int, fs: float, baseline: float, events: Sequence[Desaturation]) -> FloatArray:
    t = np.arange(n) / fs
    s = np.full(n, baseline, dtype=np.float64)
    for e in events:
        depth = baseline - e.nadir
        t1, t2, t3 = e.start_s + e.fall_s, e.start_s + e.fall_s + e.hold_s, e.start_s + e.fall_s + e.hold_s + e.rise_s
        drop = np.interp(t, [e.start_s, t1, t2, t3], [0.0, depth, depth, 0.0], left=0.0, right=0.0)
        s = np.minimum(s, baseline - drop)
    return s


def generate(
    duration_s: float,
    *,
    fs: float = 100.0,
    hr_bpm: float = 70.0,
    rhythm: Rhythm = "sinus",
    seed: int = 0,
    spo2: float = 97.0,
    desaturations: Sequence[Desaturation] = (),
    af_episodes: Sequence[tuple[float, float]] = (),
    af_hr_bpm: float | None = None,
    ectopic_rate: float = 0.08,
    motion: Sequence[tuple[float, float]] = (),
    motion_level: float = 4.0,
    walking: Sequence[tuple[float, float]] = (),
    cadence_spm: float = CADENCE_SPM,
    sensor_off: Sequence[tuple[float, float]] = (),
    perfusion_index: float = 0.02,
    noise: float = 0.02,
    resp_hz: float = 0.25,
) -> PpgRecording:
    """A recording of ``duration_s`` at ``fs`` with its ground truth.

    ``motion``, ``walking`` and ``sensor_off`` are (start_s, end_s) spans; ``motion_level`` is the
    artefact's standard deviation in multiples of the pulse amplitude; ``cadence_spm`` the walking
    cadence (steps/min); ``perfusion_index`` is the IR pulse's AC/DC ratio;
    ``noise`` the sensor noise's standard deviation in multiples of the pulse amplitude.
    """
    rng = np.random.default_rng(seed)
    n = round(duration_s * fs)
    t = np.arange(n) / fs
    ebeats, af_mask, ect_mask = beat_sequence(
        duration_s, hr_bpm, rhythm, rng, af_episodes=af_episodes, ectopic_rate=ectopic_rate,
        af_hr_bpm=af_hr_bpm, resp_hz=resp_hz,
    )  # fmt: skip
    peaks = ebeats + PTT_S
    rr0 = 60.0 / hr_bpm
    wave = np.zeros(n)
    for k in range(1, len(peaks)):
        rr = peaks[k] - peaks[k - 1]
        a = _amplitude(rr, rr0)
        nxt = peaks[k + 1] - peaks[k] if k + 1 < len(peaks) else rr
        i0, i1 = max(0, int((peaks[k] - 0.35) * fs)), min(n, int((peaks[k] + 1.6 * max(nxt, rr)) * fs) + 1)
        if i1 <= i0:
            continue
        wave[i0:i1] += a * pulse(t[i0:i1] - peaks[k], rr)
    # beats inside the recording; intervals between them
    inside = (peaks >= 0) & (peaks < duration_s)
    idx = np.flatnonzero(inside)
    beat_times = peaks[idx]
    # interval k (between beat k and k+1) is labelled by the electrical interval that ends at beat k+1
    af_int = af_mask[idx[1:] - 1] if len(idx) > 1 else np.zeros(0, dtype=bool)
    ect_int = ect_mask[idx[1:] - 1] if len(idx) > 1 else np.zeros(0, dtype=bool)

    amp = float(np.percentile(wave, 95) - np.percentile(wave, 5)) or 1.0
    wave = wave / amp
    resp = 0.15 * np.sin(2 * math.pi * resp_hz * t + float(rng.uniform(0, 6.3)))
    drift = 0.3 * _bandlimited_noise(n, fs, 0.005, 0.05, rng) if n > 16 else np.zeros(n)
    moving = _mask(n, fs, motion)
    off = _mask(n, fs, sensor_off)
    art = np.zeros(n)
    accel = np.zeros((n, 3))
    accel[:, 2] = 1.0  # gravity, wrist flat
    accel += 0.005 * rng.standard_normal((n, 3))
    if moving.any():
        for ch in range(3):
            m = _bandlimited_noise(n, fs, 0.3, 6.0, rng)
            accel[:, ch] += np.where(moving, 0.4 * m, 0.0)
            art += np.where(moving, motion_level * m / math.sqrt(3), 0.0)
    walk = _mask(n, fs, walking)
    if walk.any():
        wa = walking_accel(t, cadence_spm, float(rng.uniform(0, 6.3)))
        accel[walk] = wa[walk] + 0.005 * rng.standard_normal((int(walk.sum()), 3))
        art += np.where(walk, walking_artefact(wa), 0.0)

    sat = spo2_trace(n, fs, spo2, desaturations)
    ratio = (CAL_A - sat) / CAL_B
    pi_ir = perfusion_index
    channels: dict[str, FloatArray] = {}
    for name, pi in (("ir", pi_ir), ("red", pi_ir * ratio), ("green", pi_ir * 2.5)):
        dc = DC_LEVEL[name]
        upright = wave + resp + drift + noise * rng.standard_normal(n)
        # motion changes the optical path of every wavelength alike (ratio of ratios -> 1), not the blood's
        x = dc * (1.0 - pi * upright - pi_ir * art)
        ambient = 800.0 + 40.0 * rng.standard_normal(n)
        channels[name] = np.where(off, ambient, x)
    pleth = wave + 0.3 * resp + art + noise * rng.standard_normal(n)
    pleth = np.clip(0.15 + 0.7 * pleth, 0.0, 1.0)
    pleth = np.where(off, 0.02 * np.abs(rng.standard_normal(n)), pleth)
    truth = PpgTruth(
        beat_times_s=beat_times,
        rr_s=np.diff(beat_times),
        af_mask=af_int,
        ectopic_mask=ect_int,
        spo2=sat,
        motion=moving | walk,
        sensor_off=off,
    )
    return PpgRecording(fs, channels["red"], channels["ir"], channels["green"], pleth, accel, truth, {"hr_bpm": hr_bpm})


# --------------------------------------------------------------------------------------------------
# Streaming: one sample at a time, heart rate changeable on the fly (device simulators)
# --------------------------------------------------------------------------------------------------


class PulseStream:
    """The upright 0..1 pleth sample by sample, at a heart rate that may change between calls.

    ``next(hr_bpm, fs) -> (value, beat)`` where ``beat`` is True at the sample nearest a systolic peak;
    :attr:`beat_times_s` keeps the ground-truth peak times (seconds since the first sample).
    """

    def __init__(self, seed: int = 0, rhythm: Rhythm = "sinus", *, noise: float = 0.02, keep: int = 100_000) -> None:
        self.rng = np.random.default_rng(seed)
        self.rhythm: Rhythm = rhythm
        self.noise = noise
        self.keep = keep
        self.i = 0
        self._phase = float(self.rng.uniform(0, 2 * math.pi))
        self._resp_phase = float(self.rng.uniform(0, 2 * math.pi))
        self._peaks: list[tuple[float, float, float]] = []  # (time, rr, amplitude) of scheduled pulses
        self._pending_pause = 0.0
        self.beat_times_s: list[float] = []
        self._announced = 0.0  # peaks before this time were already flagged

    def _schedule(self, upto: float, hr_bpm: float) -> None:
        rr0 = 60.0 / hr_bpm
        if not self._peaks:
            self._peaks.append((0.3, rr0, 1.0))
        while self._peaks[-1][0] < upto:
            t_last = self._peaks[-1][0]
            if self.rhythm == "af":
                rr = _af_rr(rr0, self.rng)
            elif self._pending_pause:
                rr, self._pending_pause = self._pending_pause, 0.0
            else:
                rr = _sinus_rr(t_last, rr0, self.rng, 0.25, self._phase)
                if self.rhythm == "ectopic" and self.rng.random() < 0.08:
                    c = float(self.rng.uniform(0.55, 0.7))
                    self._pending_pause, rr = rr * (2.0 - c), rr * c
            self._peaks.append((t_last + rr, rr, _amplitude(rr, rr0)))
        # forget pulses that can no longer contribute
        while len(self._peaks) > 3 and self._peaks[1][0] < upto - 3.0:
            self._peaks.pop(0)

    def next(self, hr_bpm: float, fs: float) -> tuple[float, bool]:
        t = self.i / fs
        self.i += 1
        self._schedule(t + 2.5, hr_bpm)
        v = 0.0
        beat = False
        for tp, rr, a in self._peaks:
            if -0.35 <= t - tp <= 2.0:
                v += a * float(pulse(np.asarray([t - tp]), rr)[0])
            if self._announced <= tp < t + 0.5 / fs and tp >= t - 0.5 / fs:
                beat = True
                self._announced = tp + 1e-9
                self.beat_times_s.append(tp)
                if len(self.beat_times_s) > self.keep:
                    del self.beat_times_s[: self.keep // 2]
        resp = 0.1 * math.sin(2 * math.pi * 0.25 * t + self._resp_phase)
        v = 0.1 + 0.6 * (v + resp) + self.noise * float(self.rng.standard_normal())
        return min(1.0, max(0.0, v)), beat
