"""Heart rate and beat times from a PPG window.

Method (all steps O(n), no allocation beyond a few arrays of the window's size):

1. Zero-phase Butterworth band-pass 0.5-8 Hz, order 2 (:mod:`gateway.dsp.filters`; keeps the
   systolic upstroke, removes breathing baseline and high-frequency noise).
2. Systolic peak detection by two event-related moving averages, Elgendi et al. 2013, "Systolic peak
   detection in acceleration photoplethysmograms measured from emergency responders in tropical
   conditions", PLoS ONE 8(10):e76585: the clipped, squared signal's 111 ms moving average is compared
   with its 667 ms moving average plus an offset of 2 % of its mean; each block where the short one is
   above, at least 111 ms long, holds one systolic peak (its maximum).
3. Clean-up: two peaks closer than a refractory 0.25 s keep the larger one; a peak smaller than a
   quarter of the median peak (a dicrotic wave or a noise blip) is dropped. Peak times are refined to a
   fraction of a sample by parabolic interpolation.
4. Quality (:mod:`gateway.dsp.quality`): a window that is not usable gives ``bpm = None``.
5. Rate: 60 over the mean of the inter-beat intervals, excluding intervals that are clearly a missed
   beat (> 1.7 x the median) or an extra one (< 0.45 x the median), and their neighbours when more than
   20 % off the median (the misplaced beat of the same artefact); a mean, not a median, so that an
   irregular rhythm (AF) gives its true average rate as an ECG would count it. Beats are timed at their
   steepest upstroke (:func:`beat_fiducials`); a beat whose upstroke the window's start cut off is timed
   from its systolic peak instead (timing it at the window's first sample biased the rate upwards).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from gateway.dsp.filters import butter_bandpass_sos, sosfilt, sosfilt_zi
from gateway.dsp.quality import SignalQuality, assess, median_of

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

MIN_WINDOW_S = 4.0
MIN_FS = 10.0
MAX_ABS_SAMPLE = 1e12  # no sensor gives this; and the squares of the filters and spectra must not overflow
BAND_HZ = (0.5, 8.0)
REFRACTORY_S = 0.25

_EMPTY = np.zeros(0, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class HeartRate:
    bpm: float | None  # None: the window is unusable (see quality.reasons)
    beat_times_s: FloatArray  # systolic peak times from the window's first sample (all detected beats)
    quality: float  # 0..1
    sqi: SignalQuality = field(default_factory=lambda: SignalQuality(0.0, False, ("empty",)))

    @property
    def ibi_s(self) -> FloatArray:
        d: FloatArray = np.diff(self.beat_times_s)
        return d


@lru_cache(maxsize=32)
def bandpass_sos(fs: float, lo: float = BAND_HZ[0], hi: float = BAND_HZ[1]) -> tuple[FloatArray, FloatArray]:
    """Second-order sections of the order-2 Butterworth band-pass and their step-response initial
    state (cached per rate: designing the filter costs more than running it on a window)."""
    hi = min(hi, 0.45 * fs)
    sos = butter_bandpass_sos(2, lo, hi, fs)
    zi = sosfilt_zi(sos)
    return sos, zi


def bandpass(x: FloatArray, fs: float) -> FloatArray:
    """Zero-phase band-pass: the same result as ``scipy.signal.sosfiltfilt`` (odd extension of 3 x
    (2 x sections + 1) samples, initial state scaled to the first sample), without its per-call filter
    analysis, which dominates on 10 s windows."""
    sos, zi = bandpass_sos(fs)
    n = len(x)
    pad = min(3 * (2 * len(sos) + 1), n - 1)
    if pad < 1:
        return x - float(np.mean(x)) if n else x
    ext = np.concatenate((2 * x[0] - x[pad:0:-1], x, 2 * x[-1] - x[-2 : -pad - 2 : -1]))
    y = sosfilt(sos, ext, zi * ext[0])[::-1]
    y = sosfilt(sos, y, zi * y[0])
    out: FloatArray = y[::-1][pad : pad + n]
    return out


@lru_cache(maxsize=32)
def _average_bounds(n: int, w: int) -> tuple[IntArray, IntArray, FloatArray]:
    """For :func:`_moving_average` of width ``w`` (odd) on ``n`` samples: each output's first and one-past-
    last input, and their count (the same for every window of a stream)."""
    h = w // 2
    hi = np.minimum(np.arange(n) + h + 1, n)
    lo = np.maximum(np.arange(n) - h, 0)
    count = (hi - lo).astype(np.float64)
    for arr in (hi, lo, count):
        arr.flags.writeable = False
    return hi, lo, count


def _moving_average(x: FloatArray, w: int) -> FloatArray:
    """Centred moving average of width ``w`` (odd), same length, shrinking at the edges."""
    hi, lo, count = _average_bounds(len(x), max(1, w | 1))
    c = np.concatenate(([0.0], np.cumsum(x)))
    out: FloatArray = (c[hi] - c[lo]) / count
    return out


def detect_peaks(y: FloatArray, fs: float) -> IntArray:
    """Systolic peaks (sample indices) in a band-passed, upright PPG ``y`` (Elgendi 2013 + clean-up)."""
    n = len(y)
    if n < 3:
        return np.zeros(0, dtype=np.intp)
    sq = np.square(np.maximum(y, 0.0))
    w1, w2 = round(0.111 * fs), round(0.667 * fs)
    ma_peak = _moving_average(sq, w1)
    ma_beat = _moving_average(sq, w2)
    above = ma_peak > ma_beat + 0.02 * float(np.mean(sq))
    d = np.diff(above.astype(np.int8))
    starts = np.flatnonzero(d == 1) + 1
    ends = np.flatnonzero(d == -1) + 1
    if above[0]:
        starts = np.concatenate(([0], starts))
    if above[-1]:
        ends = np.concatenate((ends, [n]))
    long_enough = (ends - starts) >= max(1, w1)
    starts, ends = starts[long_enough], ends[long_enough]
    if len(starts) == 0:
        return np.zeros(0, dtype=np.intp)
    # argmax within each block, vectorised with reduceat on the block-wise maxima
    peaks = np.empty(len(starts), dtype=np.intp)
    for k in range(len(starts)):  # blocks are few (one per beat); this loop is cheap
        a, b = int(starts[k]), int(ends[k])
        peaks[k] = a + int(np.argmax(y[a:b]))
    # refractory: keep the larger of two peaks closer than REFRACTORY_S
    ref = REFRACTORY_S * fs
    keep: list[int] = []
    for p in peaks.tolist():
        if keep and p - keep[-1] < ref:
            if y[p] > y[keep[-1]]:
                keep[-1] = p
            continue
        keep.append(p)
    out = np.asarray(keep, dtype=np.intp)
    if len(out) >= 3:
        amp = y[out]
        out = out[amp >= 0.25 * median_of(amp)]
    return out


def refine(y: FloatArray, peaks: IntArray) -> FloatArray:
    """Sub-sample peak positions by parabolic interpolation over the peak and its two neighbours."""
    p = peaks[(peaks > 0) & (peaks < len(y) - 1)]
    pos = peaks.astype(np.float64)
    if len(p) == 0:
        return pos
    a, b, c = y[p - 1], y[p], y[p + 1]
    den = a - 2 * b + c
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(den < 0, 0.5 * (a - c) / den, 0.0)
    inner = (peaks > 0) & (peaks < len(y) - 1)
    pos[inner] += np.clip(off, -0.5, 0.5)
    return pos


def upslope_times(y: FloatArray, peaks: IntArray, fs: float) -> FloatArray:
    """Sub-sample index of the steepest upstroke before each systolic peak (within 0.3 s): a sharper
    fiducial than the rounded systolic maximum (Peralta et al. 2019, Physiol Meas 40:025007, found the
    maximum-slope and tangent-intersection points the most precise PPG beat markers).

    NaN for a beat whose steepest upstroke is not inside the window: when the largest slope found is at
    the window's first or last slope sample, the upstroke was cut by the window's edge and the true
    maximum lies outside it (the first beat of a window that starts on an upstroke); its time would be
    the window's edge, not the beat's, and the interval to it would be wrong."""
    if len(peaks) == 0:
        return peaks.astype(np.float64)
    dy = np.diff(y)
    back = max(2, round(0.3 * fs))
    lo = np.maximum(peaks - back, 0)
    idx = lo[:, None] + np.arange(back)[None, :]
    valid = idx < np.minimum(peaks, len(dy))[:, None]
    seg = np.where(valid, dy[np.minimum(idx, len(dy) - 1)], -np.inf)
    k = np.argmax(seg, axis=1)
    m = lo + k  # dy[m] is the slope between samples m and m+1
    pos: FloatArray = m.astype(np.float64) + 0.5
    inner = (m > 0) & (m < len(dy) - 1) & (peaks > 0)
    mi = m[inner]
    a, b, c = dy[mi - 1], dy[mi], dy[mi + 1]
    den = a - 2 * b + c
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(den < 0, 0.5 * (a - c) / den, 0.0)
    pos[inner] += np.clip(off, -0.5, 0.5)
    pos[~inner] = np.nan
    return pos


def beat_fiducials(y: FloatArray, peaks: IntArray, fs: float, pk: FloatArray) -> FloatArray:
    """Beat times (sub-sample index) for the rate: the steepest upstroke (:func:`upslope_times`); for a
    beat whose upstroke the window's start cut off, its systolic peak (``pk``, from :func:`refine`) minus
    the window's median peak-to-upstroke delay, so that it still bounds its interval without the edge's
    bias; NaN for a beat whose systolic maximum is itself at the window's edge (not located)."""
    up = upslope_times(y, peaks, fs)
    cut = np.isnan(up)
    if cut.any() and not cut.all():
        located = cut & (peaks > 0) & (peaks < len(y) - 1)
        up[located] = pk[located] - median_of(pk[~cut] - up[~cut])
    return up


def rate_from_intervals(ibi_s: FloatArray) -> float | None:
    """Mean rate (/min) over the intervals that are neither a missed nor an extra beat."""
    if len(ibi_s) == 0:
        return None
    med = median_of(ibi_s)
    good = (ibi_s > 0.45 * med) & (ibi_s < 1.7 * med)
    # next to a missed or extra beat, an interval more than 20 % off the median is part of the same
    # artefact (a misplaced beat), not a beat of its own (the 20 % rule of the HRV Task Force 1996)
    bad = ~good
    near = np.zeros_like(bad)
    near[1:] |= bad[:-1]
    near[:-1] |= bad[1:]
    good &= ~(near & (np.abs(ibi_s - med) > 0.2 * med))
    ok = ibi_s[good]
    if len(ok) < max(2, len(ibi_s) // 2):
        return None
    return 60.0 / float(np.mean(ok))


def clean_window(ppg: npt.ArrayLike, fs: float) -> tuple[FloatArray, str | None]:
    if not (math.isfinite(fs) and fs >= MIN_FS):
        return _EMPTY, "bad-rate"
    try:
        x = np.asarray(ppg, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return _EMPTY, "not-numeric"
    if len(x) < MIN_WINDOW_S * fs:
        return x, "too-short"
    if not np.all(np.isfinite(x)):
        return x, "not-finite"
    if float(np.max(np.abs(x))) > MAX_ABS_SAMPLE:
        return x, "out-of-range"
    if float(np.ptp(x)) == 0.0:
        return x, "flat"
    return x, None


def refused(why: str, *, motion_g: float | None = None) -> tuple[HeartRate, FloatArray]:
    """What :func:`analyse` gives for a window it does not analyse: no rate, quality 0, the reason."""
    return HeartRate(None, _EMPTY, 0.0, SignalQuality(0.0, False, (why,), motion_g=motion_g)), _EMPTY


def analyse(
    ppg: npt.ArrayLike,
    fs: float,
    *,
    inverted: bool = False,
    motion: npt.ArrayLike | None = None,
    check_perfusion: bool = False,
    motion_g: float | None = None,
) -> tuple[HeartRate, FloatArray]:
    """:func:`estimate_heart_rate` plus the band-passed, upright window (for SpO2 and plots);
    ``motion_g``: ``motion``'s :func:`~gateway.dsp.quality.motion_level` when the caller has it."""
    x, why = clean_window(ppg, fs)
    if why is not None:
        return refused(why)
    y = bandpass(x - float(np.mean(x)), fs)
    if inverted:
        y = -y
    peaks = detect_peaks(y, fs)
    q = assess(y, peaks, fs, raw=x, check_perfusion=check_perfusion, motion=motion, motion_g=motion_g)
    peak_pos = refine(y, peaks)
    times = peak_pos / fs
    bpm = None
    if q.usable:
        ibi = np.diff(beat_fiducials(y, peaks, fs, peak_pos) / fs)
        bpm = rate_from_intervals(ibi[np.isfinite(ibi)])  # no interval to a beat cut by the edge
    if bpm is not None and not 30.0 <= bpm <= 220.0:
        bpm = None
    if bpm is None and q.usable:
        q = SignalQuality(
            0.0, False, ("irregular-detection",), q.template_corr, q.motion_g, q.perfusion_index, q.template_corr_loo
        )
    return HeartRate(bpm, times, q.score, q), y


def estimate_heart_rate(
    ppg: npt.ArrayLike,
    fs: float,
    *,
    inverted: bool = False,
    motion: npt.ArrayLike | None = None,
    check_perfusion: bool = False,
) -> HeartRate:
    """Heart rate of one PPG window (at least :data:`MIN_WINDOW_S` seconds; 8-10 s is typical).

    ``ppg`` is upright (more blood = larger value, as a pleth display) unless ``inverted`` (raw optical
    intensity, where a pulse is a dip). ``motion`` is the accelerometer over the same window ((n, 3) or
    (n,), in g), if the device has one. ``check_perfusion`` enables the AC/DC test for raw intensities.
    Never raises on bad data: an unusable window gives ``bpm = None`` and ``quality = 0``."""
    return analyse(ppg, fs, inverted=inverted, motion=motion, check_perfusion=check_perfusion)[0]
