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

Quality gate (docs/dsp.md, "SpO2 quality gate"), for spot recordings of 4-5 s as for the stream's 10 s:

- the IR channel passes the PPG signal-quality index (:mod:`gateway.dsp.quality`: beat shape, rate,
  gaps, flat line, ambient light and, when given, the accelerometer), with SpO2's own two limits:
  :data:`MIN_BEATS` = 3 pulses (the fewest the beat-shape template can be formed from; a 4.6 s spot
  recording at 45 /min holds three) and the perfusion floor :data:`MIN_PERFUSION` = 0.02 %, the lowest
  pulse amplitude at which a commercial oximeter specifies its SpO2 accuracy (Masimo SET, "low
  perfusion: 0.02 %"). Motion moves both channels together but not in the blood's ratio (R -> 1, a false
  "85 %"), the classic false desaturation: the shape and accelerometer checks are what stop it;
- the ratio is *precise enough*: the window's own standard error of the SpO2 (the regression slope's
  error with the band-passed signal's effective number of independent samples, 2 x bandwidth x duration,
  through the calibration's slope) is at most :data:`MAX_SE_PCT` = 1 %, a third of the 3 % Arms that
  FDA's 2013 pulse-oximeter guidance (and ISO 80601-2-61) asks of a device: the window's noise then
  adds at most a ninth of the allowed error variance. This replaces a fixed channel-correlation limit
  (0.9): the correlation a given noise leaves depends on the window's length, the error does not; two
  channels that do not share one pulse give a large error and are refused (``"imprecise"``);
- the residual must be *sensor noise* (:func:`residual_is_noise`): the red and IR pulses of one
  heartbeat have the same shape and timing, so red minus the blood's ratio times IR (the ratio free to
  drift linearly over the window, as in a desaturation: :func:`unexplained`) leaves noise only. A
  second source with a ratio of its own, motion moving both wavelengths alike (R ~ 1) or venous blood,
  leaves a residual at the pulse's own frequencies; the white-noise error above then undercounts it.
  Tested at :data:`NOISE_TEST_ALPHA` = 1 % (the conventional significance: one clean window in a
  hundred is flagged, which only changes how its error is counted); when rejected, the standard error
  is the slope's error for a serially correlated residual (:func:`slope_variance`, Bartlett 1935),
  under the same 1 % limit (``"structured-residual"``);
- a saturation outside :data:`PLAUSIBLE` is an optical failure (ambient light, a loose sensor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from gateway.dsp.filters import sos_response
from gateway.dsp.heart import BAND_HZ, HeartRate, analyse, bandpass, bandpass_sos, clean_window
from gateway.dsp.quality import MIN_TEMPLATE_CORR, SignalQuality, assess

FloatArray = npt.NDArray[np.float64]

MIN_BEATS = 3  # the fewest pulses a beat-shape template is formed from
MIN_PERFUSION = 0.0002  # 0.02 % AC/DC: Masimo SET's low-perfusion specification
MAX_SE_PCT = 1.0  # the window's standard error of SpO2: a third of FDA 2013's 3 % Arms
PLAUSIBLE = (50.0, 102.0)  # outside: no value; within, clipped to 100
NOISE_TEST_ALPHA = 0.01  # significance of "the residual is not sensor noise" (its false-alarm rate)
_Z_ALPHA = 2.3263  # the standard normal's one-sided quantile at 1 - NOISE_TEST_ALPHA
# the heart rate's refusals SpO2's own limits may overturn; any other refusal holds for SpO2 too (the
# other rules are the same, and the leave-one-out template is the stricter one)
_RELAXED = frozenset({"too-few-beats", "no-pulse", "irregular-detection"})


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
    se_pct: float | None = None  # the window's standard error of the SpO2 (percentage points)
    structured: bool = False  # the residual red - R ir is not sensor noise: a second source (motion)


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
    return spo2_from(r, i, fs, cal, hr, y_ir, motion=motion)


def unexplained(y_red: FloatArray, y_ir: FloatArray) -> FloatArray:
    """What of the band-passed red the blood's ratio does not explain: the residual of red regressed
    on IR and on IR times time, i.e. ``red - (R0 + R1 t) ir`` with the ratio free to drift linearly
    over the window (a desaturation or a recovery changes R within a window; that is the blood's
    ratio still, not a second source). Zeros when the two regressors are degenerate."""
    n = len(y_ir)
    z = (np.arange(n) - (n - 1) / 2.0) / max(n, 1) * y_ir
    xx, xz, zz = float(y_ir @ y_ir), float(y_ir @ z), float(z @ z)
    xy, zy = float(y_ir @ y_red), float(z @ y_red)
    det = xx * zz - xz * xz
    if not (det > 0 and math.isfinite(det)):
        b = xy / xx if xx > 0 else 0.0
        out: FloatArray = y_red - b * y_ir
        return out
    b0 = (xy * zz - xz * zy) / det
    b1 = (xx * zy - xz * xy) / det
    out = y_red - b0 * y_ir - b1 * z
    return out


def slope_variance(x: FloatArray, e: FloatArray) -> float:
    """Variance of the least-squares slope through the origin of ``y = b x + e`` when the residual
    ``e`` is serially correlated: ``sum_k C_x(k) C_e(k) / N / (x.x)^2``, with ``C`` the lag sums
    (autocovariance times N) of the regressor and of the residual, over every lag (Bartlett 1935;
    Bayley & Hammersley 1946), from the two zero-padded periodograms. A white residual gives
    ``var(e) / x.x``."""
    n = len(x)
    den = float(x @ x)
    if n < 2 or not den > 0:
        return math.inf
    m = 1 << (2 * n - 1).bit_length()  # zero-padded: the circular lag sums are the linear ones
    px = np.abs(np.fft.rfft(x, m)) ** 2
    pe = np.abs(np.fft.rfft(e, m)) ** 2
    w = np.full(len(px), 2.0)
    w[0] = 1.0
    if m % 2 == 0:
        w[-1] = 1.0
    lag_sum = float(np.sum(w * px * pe)) / m  # sum over k of C_x(k) C_e(k), by Parseval
    return max(lag_sum, 0.0) / n / (den * den)


@lru_cache(maxsize=32)
def _null_spectrum(n: int, fs: float) -> tuple[FloatArray, FloatArray, FloatArray]:
    """The Hann taper of ``n`` samples, the expected tapered periodogram of white noise after
    :func:`gateway.dsp.heart.bandpass` (up to scale) and the correlation of neighbouring bins'
    powers. The order-2 Butterworth run forward and backward has the power response ``|H|^4``; its
    inverse transform is the noise's autocovariance ``g(k)``, and the tapered window sees
    ``sum_k r(k) g(k) e^(-i 2 pi f k)`` with ``r`` the taper's autocorrelation (leakage included)."""
    taper = np.hanning(n + 2)[1:-1]  # no zero end points: every sample counts a little
    sos, _ = bandpass_sos(fs)
    fine = 1 << (8 * n).bit_length()  # long enough for the filter's autocovariance to die out
    h = sos_response(sos, np.fft.rfftfreq(fine, 1.0 / fs), fs)
    acov = np.fft.irfft(np.abs(h) ** 4, fine)[:n]
    r = np.fft.irfft(np.abs(np.fft.rfft(taper, 2 * n)) ** 2, 2 * n)[:n]  # the taper's autocorrelation
    k = np.arange(n)
    folded = r * acov + r[(n - k) % n] * acov[(n - k) % n]  # lags k and k - n fall on the same bin
    folded[0] = r[0] * acov[0]
    expected = np.maximum(np.fft.rfft(folded).real, 0.0)
    # white noise through the taper: neighbouring DFT coefficients correlate by W2(d) / W2(0), W2 the
    # transform of taper^2; the powers by its square
    w2 = np.fft.rfft(taper * taper)
    rho2 = np.abs(w2[:4] / w2[0]) ** 2
    for arr in (taper, expected, rho2):
        arr.flags.writeable = False
    return taper, expected, rho2


def residual_is_noise(x: FloatArray, e: FloatArray, fs: float) -> bool:
    """Test of the null hypothesis "the regression residual ``e`` is white sensor noise after the
    band-pass", against a residual whose power sits where the pulse ``x``'s does.

    Statistic: the residual's power weighted by the pulse's, ``T = sum P_x P_e / sum P_x E[P_e]``, with
    Hann-tapered periodograms (the taper keeps the band-pass's start and end transients and the short
    window's leakage out of the comparison) and ``E[P_e]`` the band-passed noise's expected tapered
    periodogram scaled to the residual's power: mean 1 under the null. There T is a weighted sum of
    ``chi2_2 / 2`` bin powers (correlated between neighbours by the taper), taken as ``chi2_nu / nu``
    with Satterthwaite's (1946) ``nu = 2 / var``, and compared with its upper quantile at
    :data:`NOISE_TEST_ALPHA` (Wilson & Hilferty 1931). True: not rejected."""
    n = len(x)
    taper, g, rho2 = _null_spectrum(n, fs)
    px = np.abs(np.fft.rfft(x * taper)) ** 2
    pe = np.abs(np.fft.rfft(e * taper)) ** 2
    weight = px * g
    total_w, total_g, total_e = float(np.sum(weight)), float(np.sum(g)), float(np.sum(pe))
    if not (total_w > 0 and total_g > 0 and total_e > 0):
        return True  # no residual at all: nothing but the pulse
    t = float(px @ pe) / (total_e / total_g * total_w)
    a = weight / total_w
    var = float(a @ a) + 2.0 * sum(float(rho2[d] * (a[d:] @ a[:-d])) for d in range(1, len(rho2)))
    nu = 2.0 / var
    k = 2.0 / (9.0 * nu)
    critical = (1.0 - k + _Z_ALPHA * math.sqrt(k)) ** 3  # chi2_nu's quantile / nu
    return t <= critical


def _failed(sqi: SignalQuality, why: str) -> SignalQuality:
    return replace(sqi, score=0.0, usable=False, reasons=(why,))


def spo2_from(
    r: FloatArray,
    i: FloatArray,
    fs: float,
    cal: Calibration,
    hr: HeartRate,
    y_ir: FloatArray,
    *,
    motion: npt.ArrayLike | None = None,
) -> SpO2:
    """SpO2 from clean raw windows and the IR channel's analysis (:func:`gateway.dsp.heart.analyse` with
    ``inverted=True, check_perfusion=True``), so a stream analyses the IR channel once for both values.
    ``motion``: the accelerometer window the analysis was given (re-checked when the heart rate's
    stricter limits refused the window)."""
    if len(y_ir) != len(i) or len(r) != len(i):
        return SpO2(None, None, 0.0, hr.sqi)
    dc_r, dc_i = float(np.mean(r)), float(np.mean(i))
    if not (dc_r > 0 and dc_i > 0):
        return SpO2(None, None, 0.0, hr.sqi)
    y_red = -bandpass(r - dc_r, fs)
    den = float(y_ir @ y_ir)
    nr = float(y_red @ y_red)
    norm = float(np.sqrt(den)) * float(np.sqrt(nr))  # not sqrt(den * nr): that product can underflow to 0
    if not (den > 0 and nr > 0 and norm > 0 and np.isfinite(den) and np.isfinite(nr)):
        return SpO2(None, None, 0.0, hr.sqi)
    cross = float(y_red @ y_ir)
    slope = cross / den
    corr = cross / norm
    scale = dc_i / dc_r
    ratio = slope * scale
    # SpO2's own limits (3 beats, 0.02 % perfusion, leave-one-out beat template) on the IR analysis
    sqi = hr.sqi
    if sqi.usable:
        # every other rule passed with the heart rate's stricter limits: only the template is left
        if sqi.template_corr_loo < MIN_TEMPLATE_CORR:
            sqi = _failed(sqi, "shape")
    elif set(sqi.reasons) <= _RELAXED:
        peaks = np.unique(np.clip(np.round(hr.beat_times_s * fs).astype(np.intp), 0, len(i) - 1))
        sqi = assess(
            y_ir,
            peaks,
            fs,
            raw=i,
            check_perfusion=True,
            motion=motion,
            motion_g=sqi.motion_g,  # the analysis measured it, when it had the motion
            min_beats=MIN_BEATS,
            min_perfusion=MIN_PERFUSION,
            leave_one_out=True,
        )
    if not sqi.usable:
        return SpO2(None, ratio, 0.0, sqi, corr)
    resid = unexplained(y_red, y_ir)
    structured = not residual_is_noise(y_ir, resid, fs)
    if structured:  # a second source: the residual's lags carry the error (Bartlett)
        se_ratio = math.sqrt(slope_variance(y_ir, resid)) * scale
    else:  # white band-limited residual: 2 B T independent samples
        band = max(min(BAND_HZ[1], fs / 2.0) - BAND_HZ[0], 0.1)
        n_eff = max(2.0, min(float(len(i)), 2.0 * band * len(i) / fs))
        se_ratio = math.sqrt(max(nr - slope * cross, 0.0) / den / n_eff) * scale
    c1, c2 = cal.coeffs[1], cal.coeffs[2]
    se_pct = abs(c1 + 2.0 * c2 * ratio) * se_ratio
    if not se_pct <= MAX_SE_PCT:
        why = "structured-residual" if structured else "imprecise"
        return SpO2(None, ratio, 0.0, _failed(sqi, why), corr, se_pct, structured)
    pct = cal(ratio)
    if not PLAUSIBLE[0] <= pct <= PLAUSIBLE[1]:
        return SpO2(None, ratio, 0.0, _failed(sqi, "implausible"), corr, se_pct, structured)
    return SpO2(min(pct, 100.0), ratio, min(sqi.score, max(corr, 0.0)), sqi, corr, se_pct, structured)
