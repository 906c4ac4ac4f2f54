"""Signal-quality index (SQI) for PPG: is this window good enough to give a value at all?

A window is *usable* only when all of these hold (each is a published, widely used PPG SQI):

- **Beat-shape consistency** (template matching; Li & Clifford 2012, Orphanidou et al. 2015,
  IEEE JBHI 19(3):832): each detected pulse is correlated with the window's average pulse; the mean
  correlation must reach :data:`MIN_TEMPLATE_CORR`. Correlation ignores amplitude, so the smaller pulses
  of atrial fibrillation or premature beats keep their score; motion and noise do not.
- **Physiological feasibility** (Orphanidou et al. 2015): at least :data:`MIN_BEATS` beats, heart rate in
  30-220 /min, no gap between beats longer than :data:`MAX_GAP_S`, and beats present up to both ends of the
  window (a pulse that disappears half-way is a loose sensor).
- **No flat line** (a saturated or disconnected sensor): no run of identical samples longer than
  :data:`MAX_FLAT_S`.
- **Perfusion** (raw intensity channels only): the pulsatile part must be between :data:`MIN_PERFUSION`
  and :data:`MAX_PERFUSION` of the DC level. Below, there is no pulse under the sensor (off the skin, or
  too loose); above, the light reaching the photodiode is ambient light or the sensor is moving.
- **Accelerometer** (when the device sends motion): the dynamic acceleration (gravity removed) must stay
  below :data:`MAX_MOTION_G` RMS; wrist motion of that size corrupts PPG far more than it shows in the
  pulse shape (e.g. Zhang et al. 2015, IEEE TBME 62(2):522, TROIKA).

``score`` (0..1) is the template correlation mapped to 0..1 and zeroed when a rule fails; ``reasons``
names every failed rule (for counters and debugging, never logged with values at INFO).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

MIN_TEMPLATE_CORR = 0.86  # Orphanidou et al. 2015 (their threshold for an acceptable beat-shape agreement)
MIN_BEATS = 4
MIN_HR_BPM, MAX_HR_BPM = 30.0, 220.0
MAX_GAP_S = 3.0  # Orphanidou et al. 2015: no RR above 3 s in a usable window
MAX_EDGE_S = 2.5  # first/last beat at most this far from the window's ends
MAX_FLAT_S = 0.5
MIN_PERFUSION, MAX_PERFUSION = 0.0005, 0.25  # AC/DC, 0.05 % .. 25 %
MAX_MOTION_G = 0.08  # RMS of dynamic acceleration, in g
# The refusals that concern the beats a time-domain detector found (their shape, count, spacing, rate) or
# the window's motion, not the sensor: a method that reads the rate off the spectrum may still answer
# such a window (gateway.dsp.stream). A flat line or a perfusion outside its limits says that no pulse
# reaches the sensor at all, whatever reads it, and so does a reason not listed here.
BEAT_REASONS = frozenset({"motion", "too-few-beats", "rate-out-of-range", "gap", "shape", "irregular-detection"})


@dataclass(frozen=True, slots=True)
class SignalQuality:
    score: float  # 0..1; 0 when unusable
    usable: bool
    reasons: tuple[str, ...] = ()
    template_corr: float = 0.0
    motion_g: float | None = None
    perfusion_index: float | None = None
    template_corr_loo: float = 0.0  # the leave-one-out template correlation (SpO2's shape rule)


def median_of(x: npt.ArrayLike) -> float:
    """``np.median`` of a window's few values (its beats' intervals or amplitudes: a dozen or two), by
    sorting a list: the same value, without the general median's cost (several numpy calls, ten times
    the sort at this size). NaN for no values; the values must not be NaN."""
    v = sorted(np.asarray(x, dtype=np.float64).ravel().tolist())
    n = len(v)
    if n == 0:
        return math.nan
    h = n // 2
    return v[h] if n % 2 else 0.5 * (v[h - 1] + v[h])


def clip01(v: float) -> float:
    """``v`` clipped to 0..1 (NaN stays NaN, as with ``np.clip``)."""
    return min(max(v, 0.0), 1.0)


def template_correlations(y: FloatArray, peaks: IntArray, fs: float) -> tuple[float, float]:
    """Mean correlation of each pulse (around its systolic peak) with the window's average pulse, and
    the same with the average of the *other* pulses (leave-one-out: no self-correlation; with only 3-5
    pulses in a window each is a quarter or more of its own template, which lets an artefact pass).
    One pass over the pulses for both; (0, 0) with fewer than 3 whole pulses."""
    if len(peaks) < 3:
        return 0.0, 0.0
    ibi = median_of(np.diff(peaks))
    before, after = max(1, int(0.3 * ibi)), max(2, int(0.55 * ibi))
    keep = peaks[(peaks - before >= 0) & (peaks + after < len(y))]
    if len(keep) < 3:
        return 0.0, 0.0
    idx = keep[:, None] + np.arange(-before, after)[None, :]
    beats = y[idx]
    beats = beats - beats.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.einsum("ij,ij->i", beats, beats))
    total = beats.sum(axis=0)
    template = total / len(beats)
    tn = float(np.sqrt(template @ template))
    if tn == 0.0 or not np.all(norms > 0):
        return 0.0, 0.0
    dots = beats @ total  # beat . sum of all beats
    corr = (dots / len(beats)) / (norms * tn)
    # the others' sum is total - beat: its dot with the beat and its norm follow from the same sums
    other_dot = dots - norms * norms
    other_norm2 = np.maximum(float(total @ total) - 2.0 * dots + norms * norms, 0.0)
    on = np.sqrt(other_norm2)
    loo = np.where(on > 0, other_dot / (norms * np.where(on > 0, on, 1.0)), 0.0)
    return clip01(float(np.mean(corr))), clip01(float(np.mean(loo)))


def template_correlation(y: FloatArray, peaks: IntArray, fs: float, *, leave_one_out: bool = False) -> float:
    """:func:`template_correlations`' first figure, or its leave-one-out one."""
    corr, loo = template_correlations(y, peaks, fs)
    return loo if leave_one_out else corr


def longest_flat_run(x: FloatArray) -> int:
    """Length of the longest run of identical consecutive samples."""
    if len(x) < 2:
        return len(x)
    change = np.flatnonzero(np.diff(x) != 0)
    edges = np.concatenate(([-1], change, [len(x) - 1]))
    return int(np.max(np.diff(edges)))


def motion_level(accel: npt.ArrayLike) -> float:
    """RMS of the dynamic acceleration (each axis minus its mean), in the accelerometer's unit (g).

    ``accel`` is (n, 3) or (n,) (a magnitude or a single axis)."""
    a = np.asarray(accel, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    # NaN propagates through the maximum and inf is above the limit: one pass checks all three
    if a.ndim != 2 or a.shape[0] < 2 or not float(np.abs(a).max()) <= 1e6:
        return float("inf")  # no accelerometer reads a million g: a broken channel is not "at rest"
    dyn = a - a.sum(axis=0) / a.shape[0]  # the mean, as np.mean computes it, without its wrapper's cost
    return float(np.sqrt(np.einsum("ij,ij->", dyn, dyn) / a.shape[0]))


def perfusion_index(raw: FloatArray, ac: FloatArray) -> float:
    """Pulsatile amplitude over DC (mean of the raw signal). The amplitude is the peak-to-peak of a
    sine with the band-passed signal's RMS (2 sqrt(2) RMS): robust to a few spikes, and cheap."""
    dc = float(np.mean(raw))
    if not dc > 0:
        return 0.0
    return float(2.0 * np.sqrt(2.0) * np.sqrt(np.mean(ac * ac)) / dc)


def assess(
    y: FloatArray,
    peaks: IntArray,
    fs: float,
    *,
    raw: FloatArray | None = None,
    check_perfusion: bool = False,
    motion: npt.ArrayLike | None = None,
    motion_g: float | None = None,
    min_beats: int = MIN_BEATS,
    min_perfusion: float = MIN_PERFUSION,
    leave_one_out: bool = False,
) -> SignalQuality:
    """Quality of a band-passed PPG window ``y`` with detected systolic ``peaks`` (sample indices).

    ``raw`` is the unfiltered window (flat-line check; perfusion when ``check_perfusion``: only for raw
    optical intensities with a meaningful DC level, not for a device's already normalised pleth).
    ``motion``: the accelerometer over the window, or ``motion_g``: its :func:`motion_level` when the
    caller has it already. ``min_beats`` and ``min_perfusion``: the heart rate's limits by default; SpO2
    has its own (:mod:`gateway.dsp.spo2`)."""
    reasons: list[str] = []
    n = len(y)
    if raw is not None and longest_flat_run(raw) > MAX_FLAT_S * fs:
        reasons.append("flat")
    pi: float | None = None
    if raw is not None and check_perfusion:
        pi = perfusion_index(raw, y)
        if pi < min_perfusion:
            reasons.append("no-pulse")
        elif pi > MAX_PERFUSION:
            reasons.append("ambient-light")
    mg = motion_level(motion) if motion_g is None and motion is not None else motion_g
    if mg is not None and not mg <= MAX_MOTION_G:
        reasons.append("motion")
    if len(peaks) < max(3, min_beats):
        reasons.append("too-few-beats")
    else:
        ibi = np.diff(peaks) / fs
        hr = 60.0 / median_of(ibi)
        if not MIN_HR_BPM <= hr <= MAX_HR_BPM:
            reasons.append("rate-out-of-range")
        if float(np.max(ibi)) > MAX_GAP_S:
            reasons.append("gap")
        edge = MAX_EDGE_S * fs
        if peaks[0] > edge or (n - 1 - peaks[-1]) > edge:
            reasons.append("gap")
    corr, loo = template_correlations(y, peaks, fs)
    if (loo if leave_one_out else corr) < MIN_TEMPLATE_CORR:
        reasons.append("shape")
    score = clip01((corr - 0.5) / 0.5)
    usable = not reasons
    return SignalQuality(score if usable else 0.0, usable, tuple(dict.fromkeys(reasons)), corr, mg, pi, loo)
