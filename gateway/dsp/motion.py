"""Heart rate from wrist PPG while the arm moves: accelerometer-aided spectral tracking.

When the wrist moves, the PPG's strongest periodicity is often the arm swing or the step, not the pulse,
and the time-domain path (:mod:`gateway.dsp.heart`) either refuses the window or counts the swing. This
module estimates the pulse frequency in the spectrum instead, in four steps per window (8 s every 2 s,
:data:`WINDOW_S`, :data:`HOP_S`, as in the IEEE SPC 2015 data and the methods below):

1. **Band-pass.** PPG, each accelerometer axis and the acceleration's magnitude are decimated to about
   25 Hz by three-fold block means (a CIC decimator's filter, :func:`decimated`) and band-passed
   (0.5-4 Hz, the same numpy Butterworth as the time-domain path).
2. **Motion cancellation** (the accelerometer-referenced noise canceller of the adaptive-filter methods,
   e.g. Ram et al. 2012, IEEE TIM 61(5):1445, solved per window): the PPG is regressed on the four motion
   channels at lags of -:data:`CANCEL_LAG_S`..+:data:`CANCEL_LAG_S` (an FIR filter per channel, least
   squares over the window) and the fit is subtracted. What is left is the part of the PPG that no
   linear filter of the arm's motion explains. A pulse at the very frequency of a motion line is
   removed with it; the tracker then coasts on its bounded slope (step 4).
3. **Spectra and the Wiener gain** (Temko 2017, "Accurate heart rate monitoring during physical
   exercises using PPG", IEEE TBME 64(9):2016, the WFPV method): the cancelled PPG and each axis are
   Hann-windowed and zero-padded to :data:`NFFT` points (0.73 bpm bins at 25 Hz), each power spectrum
   normalised to its maximum in :data:`HR_RANGE_BPM`; PPG and acceleration spectra are averaged over the
   previous windows (weight :data:`SPECTRUM_MEMORY` on the past), and the current PPG spectrum is
   filtered by ``W = P / (P + sum_axes A_axis)`` (a gain on the amplitude spectrum, so the power spectrum
   is multiplied by ``W**2``), except near the current track (TROIKA's rule: the accelerometer
   explaining a line does not mean the pulse left it). Only bins near a spectral peak count.
4. **Tracking with a bounded rate change** (the spectral peak tracking of TROIKA, Zhang et al. 2015, IEEE
   TBME 62(2):522, written as a causal max-product (Viterbi) recursion over frequency bins): each bin
   keeps the score of the best frequency path ending there; from one window to the next a path may move
   by at most :data:`MAX_SLOPE_BPM_S` x the time between them; old evidence decays by
   :data:`EVIDENCE_DECAY` per window so that a wrong start is left within ~10 windows. The estimate is the
   best-scoring bin (refined by parabolic interpolation of the filtered spectrum).

**A value needs two things.** The **confidence** (0..1, the value's quality) is the score margin between
the winning path and the best path more than :data:`RIVAL_BPM` away, in units of one window's full
evidence (:data:`EVIDENCE_FLOOR`): low when two frequencies compete. It must reach :data:`MIN_CONFIDENCE`
(chosen on the tuning half of the wrist exercise recordings by the rule in docs/dsp.md). And the window
itself must hold a **periodic line at the tracked rate** (:func:`line_at`: a cell-averaging CFAR test on
the cancelled PPG's periodogram, within one Fourier bin of the estimate, at :data:`LINE_TEST_ALPHA`). The
margin is the track's memory; the line is this window's evidence: without it a moving wrist with no
pulse under the sensor got values from the memory and the motion's residue. When the wrist is still, the
stream uses the time-domain path and :meth:`MotionHrTracker.seed` re-centres the track on its value;
where that path refuses a still window, the tracker may answer it too, if the track was confirmed lately
and the window holds a line at all (:func:`significant_lines`; docs/dsp.md, "Still windows").

Pure and streaming: a :class:`MotionHrTracker` holds the few arrays of state for one device; no I/O.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from gateway.dsp.filters import sos_response, sosfilt
from gateway.dsp.heart import BAND_HZ as HEART_BAND_HZ
from gateway.dsp.heart import MAX_ABS_SAMPLE, HeartRate, bandpass_sos, clean_window, estimate_heart_rate, refused
from gateway.dsp.quality import clip01, motion_level

FloatArray = npt.NDArray[np.float64]

WINDOW_S = 8.0
HOP_S = 2.0
BAND_HZ = (0.5, 4.0)  # 30-240 /min: the heart-rate range with margin for the filter's edges
HR_RANGE_BPM = (40.0, 220.0)
SPECTRUM_FS = 25.0  # decimate to about this rate before the FFT (the pulse is below 4 Hz)
NFFT = 2048
SPECTRUM_MEMORY = 0.5  # weight of the past in the averaged spectra the Wiener gain uses (Temko 2017)
# Heart-rate kinetics: at the onset of exercise heart rate approaches its new level with a time constant
# of roughly 30 s or more in healthy adults (e.g. Hagberg et al. 1980, J Appl Physiol 48:218); a step of
# 90 /min (rest to a hard effort) therefore changes by at most ~3 /min per second.
MAX_SLOPE_BPM_S = 3.0
EVIDENCE_DECAY = 0.9
# how long a track is kept without a window: after a longer pause (or when time goes back) it starts
# afresh; the stream also trusts a track on still windows only this long after its last confirmation
TRACK_MEMORY_S = 60.0
EVIDENCE_FLOOR = 1e-3  # emission = log(floor + normalised filtered power): a bin with no power costs 6.9
RIVAL_BPM = 10.0
# TROIKA's rule for a pulse on a motion line: within the rate the track can reach in one hop, the
# Wiener gain is not applied (the accelerometer explaining that line does not mean the pulse left it)
PROTECT_BPM = MAX_SLOPE_BPM_S * HOP_S
# the motion canceller's taps: -3..3 samples at ~25 Hz, i.e. +-0.12 s (chosen on the tuning half among
# +-0.08, 0.12 and 0.2 s by the rule of docs/dsp.md); 4 channels x 7 taps = 28 coefficients against
# the ~200 samples of an 8 s window, so the fit cannot absorb much of the pulse (28/200 of white noise)
CANCEL_LAG_S = 0.12
MIN_CONFIDENCE = 0.55  # the tuning rule of docs/dsp.md (bench/dsp_eval_wrist.py --choose), tuning half only
# The test for a periodic line (line_ratios): at the tracked rate for every value (line_at, Bonferroni
# over the ordinates within one bin of it), and anywhere in the band for a still window to feed the track
# (significant_lines, over all the ordinates): the conventional 1 % significance, as the SpO2 residual test's;
# each ordinate against the mean of the Fourier bins 2..6 away on either side: a cell-averaging CFAR
# detector (Finn & Johnson 1968) with one guard bin (an untapered window's line falls within +-1 bin) and
# ten training bins (F(2, 20) under the null), local enough (+-45 /min at 8 s) that a sloped noise
# spectrum is level there
LINE_TEST_ALPHA = 0.01
LINE_GUARD_BINS, LINE_TRAINING_BINS = 1, 5
# training bins only where the band-pass passes at least this share of the power (|H|^4, both passes).
# Its -3 dB corners (30 and 240 /min) give 1/4, and at 8 s the Fourier bins fall on the corners, so with
# 1/4 itself rounding decided: at 25.6 Hz with 204 samples (a 128 or 256 Hz device) the bin at 240.9 /min
# got 0.244 and the test ended at 210.8 /min; with 205 samples the bin at 29.97 got 0.249 and it started
# at 59.9. Below the low corner the response falls fast (22.5 /min: 0.04), above the high one slowly
# (247.5 /min: 0.12-0.21), so 1/8 admits one more bin at the bottom's corner and about three at the top,
# where dividing by the response magnifies a line's leakage into its background by at most 8 x
LINE_MIN_RESPONSE = 1.0 / 8.0
MIN_WINDOW_S = 6.0


@dataclass(frozen=True, slots=True)
class MotionHr:
    bpm: float | None  # None: refused, see ``refused``
    confidence: float  # 0..1
    candidate_bpm: float | None  # the tracked frequency, also when refused (for evaluation)
    motion_g: float  # RMS dynamic acceleration of the window
    # whether the window holds a periodic line within one Fourier bin of the tracked rate (line_at): a
    # value needs one; None: not asked (no rate was tracked in this window)
    significant: bool | None = None
    # why there is no value (a counter's name), None when there is one: "unusable" (too short, not
    # finite, beyond heart.MAX_ABS_SAMPLE, flat: nothing changed), "no-periodic-line" (a still window
    # with no line anywhere, or with no confirmed track: it fed nothing), "no-spectral-peak" (nothing to
    # track; the averaged spectra took the window in), "no-line-at-rate" (no line at the tracked rate,
    # whatever the confidence), "low-confidence"
    refused: str | None = None

    def __post_init__(self) -> None:
        if (self.bpm is None) == (self.refused is None):
            raise ValueError("a MotionHr has either a value or the reason it has none")


@lru_cache(maxsize=8)
def _spectrum_setup(fs: float) -> tuple[int, FloatArray, npt.NDArray[np.bool_]]:
    q = max(1, int(fs // SPECTRUM_FS))
    f_bpm: FloatArray = np.asarray(np.fft.rfftfreq(NFFT, q / fs) * 60.0, dtype=np.float64)
    band = (f_bpm >= HR_RANGE_BPM[0]) & (f_bpm <= HR_RANGE_BPM[1])
    f_bpm.flags.writeable = band.flags.writeable = False  # shared by every window at this rate
    return q, f_bpm, band


def _filtfilt(x: FloatArray, fs: float, band: tuple[float, float] = BAND_HZ) -> FloatArray:
    """Zero-phase band-pass ``band`` (:data:`BAND_HZ`) of the columns of ``x`` (n, c): forward-backward
    with odd extension, as heart.bandpass does one column. (Per window the stream applies the motion
    path's as the matrix of :func:`_bandpass_matrix`.)"""
    sos, zi1 = bandpass_sos(fs, *band)
    zi = zi1[:, :, None]
    pad = min(3 * (2 * len(sos) + 1), len(x) - 1)
    ext = np.concatenate((2 * x[:1] - x[pad:0:-1], x, 2 * x[-1:] - x[-2 : -pad - 2 : -1]))
    y = sosfilt(sos, ext, zi * ext[0])[::-1]
    y = sosfilt(sos, y, zi * y[0])[::-1]
    out: FloatArray = y[pad : pad + len(x)]
    return out


@lru_cache(maxsize=8)
def _bandpass_matrix(m: int, fs_d: float) -> FloatArray:
    """The (m, m) matrix of "remove the mean, then :func:`_filtfilt`" on m samples at ``fs_d``: both are
    linear (the odd extension and the initial states too), so one matrix product does the work of the
    two filter passes on every channel of a window at once, ~2.6 x faster at 200 samples. Built by running
    the filter on the columns of the centring matrix, so it is that filter, to rounding."""
    centre = np.eye(m) - 1.0 / m
    out: FloatArray = _filtfilt(centre, fs_d)
    out.flags.writeable = False  # shared by every window of this length and rate
    return out


@lru_cache(maxsize=8)
def _decimation_kernel(q: int) -> FloatArray:
    """(3, q): the three-fold block mean's kernel (the box of q samples convolved with itself twice: 3q - 2
    taps), centred on a block and split over that block and its two neighbours (a zero at either end
    fills the 3q)."""
    box = np.ones(q)
    h = np.convolve(np.convolve(box, box), box)
    out: FloatArray = np.concatenate(([0.0], h / h.sum(), [0.0])).reshape(3, q)
    out.flags.writeable = False
    return out


def decimated(channels: FloatArray, q: int) -> FloatArray:
    """The columns of ``channels`` (n, k) low-passed by a three-fold block mean of q samples (the filter of
    a cascaded integrator-comb decimator of order 3, Hogenauer 1981, IEEE TASSP 29(2):155) and taken once
    per block, each output centred on its block: the m = n // q blocks give m - 2 outputs, the first and
    the last block only lending their samples to their neighbours' (the last n % q samples are left
    out). Only whole kernels: an output at the edge made from repeated edge samples would carry about
    16 % of one unfiltered sample, and with it whatever the filter is there to remove. ``q`` = 1: the
    input itself.

    Why three-fold: one block mean (a sinc response) has its nulls at the multiples of the new rate fs/q,
    around which lies everything that folds into the pulse band, but beside them it passes -12 to -15
    dB at worst, and -21 / -30 dB at 144 /min, where light flickering at 100 Hz (mains) on a 128 / 256 Hz
    device folds. Three-fold: -36 to -45 dB at worst (device rates 50-256 Hz; at 4 Hz from a multiple of
    fs/q) and -62 / -91 dB at 144 /min, for an amplitude droop to 0.88-0.94 at 4 Hz, a slope the line
    test's local background absorbs. No decimator helps where the device's own sampling folds the light
    into the band (100 Hz sampled at 51.2 or 102.4 Hz lands on 144 /min): that is the sensor's ambient
    light rejection's job."""
    if q == 1:
        return channels
    m = channels.shape[0] // q
    if m < 3:
        return channels[:0]
    h3 = _decimation_kernel(q)
    # each block's weighted sums for its role as left neighbour, centre and right neighbour: (3, m, k)
    p = np.tensordot(h3, channels[: m * q].reshape(m, q, channels.shape[1]), axes=([1], [1]))
    out: FloatArray = p[0, :-2] + p[1, 1:-1] + p[2, 2:]
    return out


def bandpassed(channels: FloatArray, fs: float) -> tuple[FloatArray, float]:
    """The columns of ``channels`` (n, k) decimated to about :data:`SPECTRUM_FS` (:func:`decimated`: the
    band of interest ends at 4 Hz, far below the ~12 Hz of the new Nyquist), centred and band-passed
    :data:`BAND_HZ`; and the new rate. Decimating first makes the band-pass run on 4-10 x fewer
    samples. Fewer than three blocks of input give no samples (:func:`decimated`)."""
    q, _, _ = _spectrum_setup(fs)
    fs_d = fs / q
    dec = decimated(channels, q)
    if dec.shape[0] == 0:
        return dec, fs_d  # shorter than one whole kernel (three blocks): nothing to filter
    out: FloatArray = _bandpass_matrix(dec.shape[0], fs_d) @ dec
    return out, fs_d


def cancel_motion(ppg: FloatArray, motion: FloatArray, lags: int) -> FloatArray:
    """The part of ``ppg`` (m,) that no linear filter of the ``motion`` channels (m, c) explains: the
    least-squares (Wiener-Hopf) solution over the window of an FIR filter with taps at ``-lags..lags``
    samples on every channel, subtracted. The accelerometer-referenced noise canceller of the adaptive
    filtering methods (e.g. Ram et al. 2012, IEEE TIM 61(5):1445; Schack et al. 2017, EUSIPCO), solved
    per window instead of adapted sample by sample: no state to diverge, the same answer for the same
    window."""
    m = motion.shape[0]
    padded = np.concatenate((np.repeat(motion[:1], lags, axis=0), motion, np.repeat(motion[-1:], lags, axis=0)))
    regressors = np.concatenate([padded[lags + k : lags + k + m] for k in range(-lags, lags + 1)], axis=1)
    gram = regressors.T @ regressors
    scale = float(np.trace(gram))
    if regressors.shape[1] >= m or not scale > 0.0:
        return ppg
    # the normal equations, with a ridge of 1e-9 of the mean regressor power so that a channel that
    # repeats another (a still axis, the magnitude of one-axis motion) cannot make them singular
    gram.flat[:: len(gram) + 1] += 1e-9 * scale / len(gram)  # the diagonal
    coef = np.linalg.solve(gram, regressors.T @ ppg)
    out: FloatArray = ppg - regressors @ coef
    return out


def cancelled(ppg: FloatArray, accel: FloatArray, fs: float) -> tuple[FloatArray, FloatArray, float]:
    """Steps 1 and 2 of the module docstring for one window: the band-passed channels (PPG, each axis of
    ``accel`` (n, k) in g, the acceleration's magnitude) at the decimated rate, the PPG with the motion
    cancelled, and that rate."""
    mag = np.sqrt(np.einsum("ij,ij->i", accel, accel))[:, None]
    bp, fs_d = bandpassed(np.column_stack((ppg, accel, mag)), fs)
    return bp, cancel_motion(bp[:, 0], bp[:, 1:], max(1, round(CANCEL_LAG_S * fs_d))), fs_d


REST_LAG_STEP_S = 1.0 / SPECTRUM_FS  # the rest canceller's lag step: the motion path's (one decimated sample, 40 ms)
# the rest canceller runs only on this much band-passed (0.5-8 Hz) acceleration, RMS over the axes, in g:
# a wrist accelerometer's own noise there is 0.3-2 mg (MEMS noise densities of 100-700 ug/sqrt(Hz) over
# 7.5 Hz), a pedalling body under a still wrist 40-57 mg on the wrist records; 10 mg is five times the
# noisiest sensor's floor, not a value read off the records (any floor from about 5 to 40 mg gives the
# same values there)
REST_MIN_MOTION_G = 0.010


def circular_fit(y: FloatArray, motion: FloatArray, lags: npt.NDArray[np.intp]) -> FloatArray:
    """The least-squares fit of ``y`` (n,) on the channels of ``motion`` (n, c) shifted circularly by each
    of ``lags`` (samples): the normal equations of the ``c * len(lags)`` regressors ``roll(motion[:, j],
    k)`` built from the channels' circular correlations by FFT (a few FFTs of n instead of an n x 64
    least-squares problem: about 0.8 ms for 10 s at 256 Hz against 15 ms), with the same ridge as
    :func:`cancel_motion`. Returns the fitted part of ``y``; no fit (zeros) when there are as many
    regressors as samples or more, or nothing to fit on."""
    n, c = motion.shape
    nl = len(lags)
    if n == 0 or c == 0 or nl == 0:
        return np.zeros(n)
    f = np.fft.rfft(motion, axis=0)
    # r[tau, j, l] = sum_t motion[t, j] motion[t + tau, l];  ry[tau, j] = sum_t motion[t, j] y[t + tau]
    r = np.fft.irfft(np.conj(f)[:, :, None] * f[:, None, :], n, axis=0)
    ry = np.fft.irfft(np.conj(f) * np.fft.rfft(y)[:, None], n, axis=0)
    # regressor (j, k) at t is motion[t - k, j]: their products are r[(k - k'), j, j'], with y ry[k, j]
    d = np.mod(lags[:, None] - lags[None, :], n)
    gram = r[d].transpose(2, 0, 3, 1).reshape(c * nl, c * nl)
    rhs = ry[np.mod(lags, n)].T.reshape(c * nl)
    scale = float(np.trace(gram))
    if c * nl >= n or not scale > 0.0:
        return np.zeros(n)
    gram.flat[:: len(gram) + 1] += 1e-9 * scale / len(gram)
    coef = np.linalg.solve(gram, rhs).reshape(c, nl)
    kernel = np.zeros((n, c))
    np.add.at(kernel, (np.mod(lags, n)[None, :].repeat(c, axis=0), np.arange(c)[:, None].repeat(nl, axis=1)), coef)
    out: FloatArray = np.fft.irfft(np.sum(f * np.fft.rfft(kernel, axis=0), axis=1), n)
    return out


def rate_motion_cancelled(ppg: npt.ArrayLike, accel: npt.ArrayLike, fs: float, *, inverted: bool = False) -> HeartRate:
    """The time-domain estimate (:func:`gateway.dsp.heart.estimate_heart_rate`) of a still window's PPG
    with the motion cancelled first: the band-passed PPG (0.5-8 Hz, the time-domain path's band) minus
    its least-squares fit on the band-passed accelerometer axes and magnitude at lags of
    -:data:`CANCEL_LAG_S`..+:data:`CANCEL_LAG_S` every :data:`REST_LAG_STEP_S` (:func:`circular_fit`),
    at the device's own rate, then the estimator (which band-passes it once more: both the fit and the
    second pass are needed for its figures, docs/dsp.md). For a still wrist on a moving body (a
    cyclist's hands on the handlebars), whose beats the motion makes in part. Only where there is motion
    to cancel: the band-passed acceleration must reach :data:`REST_MIN_MOTION_G` RMS, or the window is
    refused ``no-motion`` (a fit on the accelerometer's own noise removes part of any signal by chance
    and re-rolls the shape gate on a smoother one: a watch on a table got values). The full rate and
    band keep the beat-shape gate's power (on the decimated 0.5-4 Hz of :func:`cancelled` it passed
    noise and a flickering light as pulses). ``accel`` (n, k) in g over the same window. Never raises on
    bad data: the PPG is checked as the time-domain path checks it (:func:`gateway.dsp.heart.clean_window`),
    the acceleration refused when not numeric, not matching, not finite or beyond 1e6 g (as
    :func:`~gateway.dsp.quality.motion_level`)."""
    x, why = clean_window(ppg, fs)  # the PPG's checks are the time-domain path's own
    if why is not None:
        return refused(why)[0]
    try:
        a = np.asarray(accel, dtype=np.float64)
    except (TypeError, ValueError):
        return refused("not-numeric")[0]
    if a.ndim != 2 or a.shape[0] != len(x) or a.shape[1] == 0:
        return refused("too-short")[0]
    if not np.all(np.isfinite(a)):
        return refused("not-finite")[0]
    if float(np.max(np.abs(a))) > 1e6:
        return refused("out-of-range")[0]
    mag = np.sqrt(np.einsum("ij,ij->i", a, a))
    channels = np.column_stack((x, a, mag))
    both = _filtfilt(channels - channels.mean(axis=0), fs, HEART_BAND_HZ)  # every column at once
    y, motion = both[:, 0], both[:, 1:]
    axes = motion[:, :-1]  # the band-passed axes, without the magnitude
    if not float(np.sqrt(np.mean(np.einsum("ij,ij->i", axes, axes)))) >= REST_MIN_MOTION_G:
        return refused("no-motion")[0]
    # lags symmetric about 0: every REST_LAG_STEP_S out to CANCEL_LAG_S on either side
    step = max(1, round(REST_LAG_STEP_S * fs))
    k = max(0, int(CANCEL_LAG_S * fs // step))
    lags = step * np.arange(-k, k + 1, dtype=np.intp)
    clean = y - circular_fit(y, motion, lags)
    return estimate_heart_rate(-clean if inverted else clean, fs)


def spectrum_bins(fs: float) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """The frequencies (bpm) of :func:`power_spectra`'s bins for a window sampled at ``fs`` (before
    decimation), and the mask of those in :data:`HR_RANGE_BPM`."""
    _, f_bpm, band = _spectrum_setup(fs)
    return f_bpm, band


@lru_cache(maxsize=8)
def _hann(m: int) -> FloatArray:
    w: FloatArray = np.hanning(m)
    w.flags.writeable = False
    return w


def power_spectra(rows: FloatArray) -> FloatArray:
    """Power spectra of the rows of ``rows`` (k, m): Hann-windowed and zero-padded to :data:`NFFT`."""
    f = np.fft.rfft(rows * _hann(rows.shape[1]), NFFT, axis=1)
    p: FloatArray = f.real**2 + f.imag**2
    return p


@dataclass(frozen=True, slots=True)
class _LineTest:
    """The line test's constants for one window length and rate (:func:`_line_test_setup`)."""

    cols: slice  # the periodogram's ordinates used: those tested and their training bins
    inverse_response: FloatArray  # 1 / the band-pass's power response over ``cols`` (|H|^4: both passes)
    tested: npt.NDArray[np.intp]  # the ordinates tested, as indices into ``cols``
    bpm: FloatArray  # their rates, ascending
    rates: tuple[float, ...]  # the same, for bisect
    average: FloatArray  # (tested, cols): the mean of each one's training bins
    training: FloatArray  # J, the number of each one's training bins
    critical: FloatArray  # each one's critical ratio at LINE_TEST_ALPHA over all the tested ones
    # row n - 1: each one's critical ratio at LINE_TEST_ALPHA / n (a question about n of them), n <= 8
    local_critical: FloatArray


@lru_cache(maxsize=8)
def _line_test_setup(m: int, fs_d: float) -> _LineTest:
    """For the line test on m samples at ``fs_d``, on the periodogram zero-padded to 2m (the Fourier bins
    and the midpoints between them): the ordinates tested (those in :data:`HR_RANGE_BPM` with two pairs
    of training bins or more: 52.5-217.5 /min at 8 s and 25 Hz, 60-220 at 6 s), the matrix that
    averages each one's training bins (Fourier bins only: independent of each other), and the critical
    ratio at :data:`LINE_TEST_ALPHA` shared by all the tested ones (Bonferroni, which needs no
    independence between them). Only the ordinates between the first and the last training bin are
    kept: outside the passband the response is near zero, and dividing by it would overflow."""
    f = np.fft.rfftfreq(2 * m, 1.0 / fs_d)
    sos, _ = bandpass_sos(fs_d, *BAND_HZ)
    response: FloatArray = np.abs(sos_response(sos, f, fs_d)) ** 4
    bpm: FloatArray = np.asarray(f * 60.0, dtype=np.float64)
    # training bins: Fourier bins (even indices here) in the band-pass's passband (LINE_MIN_RESPONSE)
    usable = set(np.flatnonzero(response >= LINE_MIN_RESPONSE * response.max()).tolist()) & set(range(0, len(f), 2))
    lo, hi = 2 * (LINE_GUARD_BINS + 1), 2 * (LINE_GUARD_BINS + LINE_TRAINING_BINS)
    candidates = np.flatnonzero((bpm >= HR_RANGE_BPM[0]) & (bpm <= HR_RANGE_BPM[1]))
    trains: list[tuple[int, list[int]]] = []
    for q in candidates.tolist():
        # in pairs on either side, so that the mean of a sloped noise spectrum is its level at q: one-sided
        # training at the band's low edge, where the filter's slope meets the PPG's falling spectrum,
        # passed brown noise there in a few % of windows. At least two pairs, or q is not tested: with one
        # (F(2, 4), critical ratio 43 at 0.2 %) a clean pulse at 45-50 /min passed in 3-9 of 27 windows
        near = [d for d in range(lo, hi + 1 + q % 2) if (d - q % 2) % 2 == 0]
        train = [j for d in near for j in (q - d, q + d) if q - d in usable and q + d in usable]
        if len(train) >= 4:
            trains.append((q, train))
    first = min((min(t) for _, t in trains), default=0)
    last = max((max(t) for _, t in trains), default=-1)
    cols = slice(first, last + 1)
    tested = np.array([q - first for q, _ in trains], dtype=np.intp)
    average = np.zeros((len(trains), last + 1 - first))
    training = np.array([len(t) for _, t in trains], dtype=np.float64)
    for i, (_, train) in enumerate(trains):
        average[i, [j - first for j in train]] = 1.0 / len(train)
    # P(F(2, 2J) > x) = (1 + x / J)^-J for J training bins (each ordinate chi2_2 under the null)
    critical = _critical(training, LINE_TEST_ALPHA / max(1, len(trains)))
    local = np.array([_critical(training, LINE_TEST_ALPHA / n) for n in range(1, 9)]).reshape(8, len(trains))
    rates = bpm[cols][tested]
    out = _LineTest(
        cols, 1.0 / response[cols], tested, rates, tuple(rates.tolist()), average, training, critical, local
    )
    for arr in (out.inverse_response, out.tested, out.bpm, out.average, out.training, out.critical, local):
        arr.flags.writeable = False
    return out


def _critical(training: FloatArray, alpha: float) -> FloatArray:
    """The ratio an ordinate must exceed against the mean of its J training bins at level ``alpha``:
    the upper ``alpha`` point of F(2, 2J), whose survival is ``(1 + x/J)^-J``."""
    out: FloatArray = training * (alpha ** (-1.0 / training) - 1.0)
    return out


def line_ratios(y: FloatArray, fs_d: float) -> tuple[_LineTest, FloatArray]:
    """The line test's statistic for the band-passed window ``y`` (at ``fs_d``): each tested ordinate of
    the untapered periodogram, at the Fourier bins and midway between them (so that a line between two
    bins is not split between them), divided by the band-pass's power response, over the mean of its
    training bins. Under a noise spectrum that is smooth over +-45 /min the ratio is F(2, 2J)."""
    setup = _line_test_setup(len(y), fs_d)
    f = np.fft.rfft(y, 2 * len(y))[setup.cols]
    p = (f.real**2 + f.imag**2) * setup.inverse_response
    # a window of zeros has no background and no line: 0 / tiny = 0
    ratio: FloatArray = p[setup.tested] / np.maximum(setup.average @ p, 1e-300)
    return setup, ratio


def significant_lines(y: FloatArray, fs_d: float) -> FloatArray:
    """The rates (bpm) of the periodic lines of the band-passed window ``y`` (at ``fs_d``) in
    :data:`HR_RANGE_BPM` that stand out of their local background (:func:`line_ratios`) at
    :data:`LINE_TEST_ALPHA` over all the ordinates tested together (Bonferroni); empty when none does.
    The question "is there a line at all?". A pulse's harmonic may stand out too."""
    setup, ratio = line_ratios(y, fs_d)
    out: FloatArray = setup.bpm[ratio > setup.critical]
    return out


def line_at(setup: _LineTest, ratio: FloatArray, rate_bpm: float, width_bpm: float) -> bool:
    """Whether a periodic line stands out within ``width_bpm`` of ``rate_bpm`` at
    :data:`LINE_TEST_ALPHA` over the ordinates there (Bonferroni over those only: the question is about
    the tracked rate, not about the whole band). ``setup, ratio``: :func:`line_ratios`."""
    lo = bisect_left(setup.rates, rate_bpm - width_bpm)
    hi = bisect_right(setup.rates, rate_bpm + width_bpm)
    n = hi - lo
    if n <= 0:
        return False
    critical = setup.local_critical[n - 1, lo:hi] if n <= 8 else _critical(setup.training[lo:hi], LINE_TEST_ALPHA / n)
    return bool(np.any(ratio[lo:hi] > critical))


def _near_peaks(clean: FloatArray) -> npt.NDArray[np.bool_]:
    """Bins within 2 of a local maximum: only spectral peaks count as evidence, so that a slope running
    into the range's edge (the PPG's low-frequency power leaking past the band-pass: breathing, a
    pedalling rhythm below 40 /min) is not taken for a line."""
    is_peak = np.zeros(len(clean), dtype=bool)
    is_peak[1:-1] = (clean[1:-1] >= clean[:-2]) & (clean[1:-1] >= clean[2:])
    near = is_peak.copy()
    for sh in (1, 2):
        near[sh:] |= is_peak[:-sh]
        near[:-sh] |= is_peak[sh:]
    return near


def _window_max(x: FloatArray, r: int) -> FloatArray:
    """``out[i] = max(x[i - r : i + r + 1])`` (nothing beyond the ends) by doubling: log2(2r + 1)
    maxima of whole arrays instead of one of 2r + 1 strided columns."""
    w = 2 * r + 1
    m = np.concatenate((np.full(r, -np.inf), x, np.full(r, -np.inf)))
    span = 1
    while span * 2 <= w:
        m = np.maximum(m[:-span], m[span:])  # m[i] = max of span * 2 values from i
        span *= 2
    n = len(x)
    out: FloatArray = np.maximum(m[:n], m[w - span : w - span + n])
    return out


class MotionHrTracker:
    """The spectral tracker of one device's stream (see the module docstring). Not thread-safe."""

    def __init__(self, min_confidence: float | None = None) -> None:
        self.min_confidence = MIN_CONFIDENCE if min_confidence is None else min_confidence
        self.reset()

    def reset(self) -> None:
        self._fs = 0.0
        self._score: FloatArray | None = None
        self._t: float | None = None
        self._avg_ppg: FloatArray | None = None
        self._avg_acc: FloatArray | None = None
        self._est: float | None = None
        self._confirmed: float | None = None  # when the track was last confirmed (seed, confirm)

    def _setup(self, fs: float) -> None:
        if fs != self._fs:
            self.reset()
            self._fs = fs
            _, f_bpm, band = _spectrum_setup(fs)
            self._f = f_bpm[band]
            self._band = band
            self._df = float(f_bpm[1] - f_bpm[0])

    def seed(self, bpm: float, t: float, fs: float) -> None:
        """Centre the track on a rate found another way (the time-domain path at rest) at time ``t``."""
        self._setup(fs)
        width = 3.0  # /min: the rest path's error is well below this (BIDMC 0.2, smartphone 0.9)
        e = np.log(EVIDENCE_FLOOR + np.exp(-0.5 * ((self._f - bpm) / width) ** 2))
        self._score = e / (1.0 - EVIDENCE_DECAY)  # as if seen for ever: a steady state of the recursion
        self._t = t
        self._est = bpm  # the track's estimate: the Wiener gain spares its band, a still line must be near it
        self._confirmed = t

    def confirm(self, t: float) -> None:
        """The track's value at ``t`` was taken (a moving window's value): the track is confirmed."""
        self._confirmed = t

    def confirmed(self, t: float, fs: float) -> bool:
        """Whether a window ending at ``t`` sampled at ``fs`` would continue a track confirmed
        (:meth:`seed`, :meth:`confirm`) within :data:`TRACK_MEMORY_S` before ``t``: not after a reset, and
        not when that window would itself start the track afresh (a new rate, or time gone back)."""
        c = self._confirmed
        return c is not None and fs == self._fs and (self._t is None or t >= self._t) and 0.0 <= t - c <= TRACK_MEMORY_S

    def update(
        self,
        ppg: npt.ArrayLike,
        accel: npt.ArrayLike,
        fs: float,
        t: float,
        *,
        motion_g: float | None = None,
        test_line: bool = False,
    ) -> MotionHr:
        """One window ending at stream time ``t`` (s): ``ppg`` (n,), ``accel`` (n, 3) in g;
        ``motion_g``: the window's :func:`~gateway.dsp.quality.motion_level` when the caller has it;
        ``test_line``: a still window, which feeds the track only when the track is :meth:`confirmed` and
        it holds a line somewhere (:func:`significant_lines`). Any window gets a value only when its
        confidence reaches ``min_confidence`` and a line stands out within one Fourier bin of the new
        estimate (:func:`line_at`, ``significant``)."""
        x = np.asarray(ppg, dtype=np.float64).ravel()
        a = np.asarray(accel, dtype=np.float64)
        if a.ndim == 1:
            a = a[:, None]
        mg = motion_g if motion_g is not None else (motion_level(a) if len(a) else math.inf)
        # NaN propagates through min and max, and an infinity is one of them: two passes check range (as
        # the time-domain path's, so that no square overflows), finiteness and flatness together
        lo, hi = (float(x.min()), float(x.max())) if len(x) else (math.nan, math.nan)
        ok = (
            math.isfinite(fs)
            and len(x) >= MIN_WINDOW_S * fs
            and a.shape[0] == len(x)
            and -MAX_ABS_SAMPLE <= lo < hi <= MAX_ABS_SAMPLE  # NaN fails every comparison
            and np.all(np.isfinite(a))
            and math.isfinite(mg)
        )
        if not ok:
            return MotionHr(None, 0.0, None, mg, None, "unusable")
        self._setup(fs)
        fresh = self._score is None or self._t is None or not 0.0 <= t - self._t <= TRACK_MEMORY_S
        if fresh:
            # a clock that went back, or a pause over TRACK_MEMORY_S: nothing of the old track is kept, its
            # score, the averaged spectra and the estimate whose band the Wiener gain spares
            self._score = self._avg_ppg = self._avg_acc = self._est = self._confirmed = None
        bp, y, fs_d = cancelled(x, a, fs)
        setup, ratio = line_ratios(y, fs_d)
        line_bin = 60.0 * fs_d / len(y)  # one Fourier bin of the window, /min: 7.5 at 8 s
        if test_line and (self._confirmed is None or not np.any(ratio > setup.critical)):
            # a still window without any line (significant_lines), or with no confirmed track (the caller
            # checks confirmed(), and a fresh start just cleared it): it feeds nothing and gets no value.
            # Requiring the line near the track's estimate as well (against a flickering light pulling the
            # track within its 60 s) cost the tuning half 0.4 bpm of hold-last and 1.7 points of coverage
            return MotionHr(None, 0.0, None, mg, None, "no-periodic-line")
        spectra = power_spectra(np.vstack((y[None, :], bp[:, 1 : 1 + a.shape[1]].T)))[:, self._band]
        peak = np.maximum(spectra.max(axis=1, keepdims=True), 1e-300)
        norm = spectra / peak
        p_now, acc_now = norm[0], norm[1:].sum(axis=0)

        m = SPECTRUM_MEMORY
        self._avg_ppg = p_now if self._avg_ppg is None else m * self._avg_ppg + (1 - m) * p_now
        self._avg_acc = acc_now if self._avg_acc is None else m * self._avg_acc + (1 - m) * acc_now
        gain = self._avg_ppg / (self._avg_ppg + self._avg_acc + 1e-12)
        if self._est is not None:
            # near the track the gain fades to 1, smoothly (a hard edge would make false peaks there)
            beyond = np.maximum(np.abs(self._f - self._est) - PROTECT_BPM, 0.0)
            gain = np.maximum(gain, np.exp(-0.5 * (beyond / (2 * self._df)) ** 2))
        clean = p_now * gain * gain  # the gain filters the amplitude spectrum: power gets its square
        evidence = np.where(_near_peaks(clean), clean, 0.0)
        top = float(evidence.max())
        if not top > 0.0:  # no power, or no spectral peak at all (a bare slope): nothing to track
            return MotionHr(None, 0.0, None, mg, None, "no-spectral-peak")
        emission = np.log(EVIDENCE_FLOOR + evidence / top)
        # a window ending when a seed was taken (the stream's time-domain value at that moment) builds on
        # the seed with one bin of reach (dt = 0 is not fresh)
        if self._score is None or self._t is None:
            self._score = emission
        else:
            reach = max(1, round(MAX_SLOPE_BPM_S * (t - self._t) / self._df))
            best = _window_max(self._score, reach)
            self._score = EVIDENCE_DECAY * best + emission
        self._t = t
        k = int(np.argmax(self._score))
        bpm = float(self._f[k])
        if 0 < k < len(clean) - 1:
            y0, y1, y2 = clean[k - 1], clean[k], clean[k + 1]
            den = y0 - 2 * y1 + y2
            if den < 0:
                bpm += min(max(float(0.5 * (y0 - y2) / den), -0.5), 0.5) * self._df
        self._est = bpm
        # the best score more than RIVAL_BPM away, on either side (the bins are evenly spaced)
        lo = int(np.searchsorted(self._f, self._f[k] - RIVAL_BPM, side="left"))
        hi = int(np.searchsorted(self._f, self._f[k] + RIVAL_BPM, side="right"))
        sides = np.concatenate((self._score[:lo], self._score[hi:]))
        rival = float(sides.max()) if len(sides) else -math.inf
        margin = float(self._score[k]) - rival
        conf = clip01(margin / -math.log(EVIDENCE_FLOOR))
        # a value needs a periodic line at the tracked rate, within one Fourier bin of it (the 8 s window's
        # resolution), moving or still: the score's margin alone gave a pulseless moving wrist (a watch in
        # a bag) a value in a third of its windows; the margin is the memory's, the line this window's
        significant = line_at(setup, ratio, bpm, line_bin)
        refused = None if significant else "no-line-at-rate"
        if refused is None and conf < self.min_confidence:
            refused = "low-confidence"
        return MotionHr(None if refused else bpm, conf, bpm, mg, significant, refused)
