"""Is the wearer at rest? Physical activity from a wrist accelerometer, for the ``rest_only`` care rules.

Resting heart-rate limits (NEWS2's >= 131 /min, bradycardia < 40 /min) are for a person at rest; a brisk
walk at 135 /min is not tachycardia. Heart-rate readings computed from a device that sends acceleration
carry ``extra["at_rest"]`` from this module (docs/dsp.md, "At rest"):

- **Activity metric**: ENMO, the Euclidean norm of the raw acceleration minus one g, negative values set
  to zero, averaged per epoch of :data:`EPOCH_S` = 5 s (van Hees et al. 2013, PLoS ONE 8(4):e61691; 5 s
  is GGIR's default epoch); a window is active when any of its epochs is (a 10 s window half of which
  was a walk is not "at rest"). It needs the raw
  acceleration *with* gravity, in g, as every accelerometer measures it; a stream whose mean norm is
  below :data:`MIN_GRAVITY_G` has had gravity removed (a "linear acceleration" output) and is not
  classified (:func:`enmo` gives ``None``).
- **Threshold**: :data:`SEDENTARY_ENMO_G` = 44.8 mg, the sedentary / light-activity cut-point for
  adults with a non-dominant-wrist accelerometer of Hildebrand et al. 2017 (Scand J Med Sci Sports
  27(12):1814-1823; ActiGraph GT3X+, 45.8 mg for the GENEActiv); the physical-activity literature's
  standard cut-point for this metric and placement (also GGIR's). Not fitted on this project's data.
- **Settling**: a resting heart rate is one measured after 5 minutes of rest (the measurement convention
  of the 2018 ESC/ESH hypertension guidelines, Williams et al., Eur Heart J 39:3021, which have heart rate
  taken with office blood pressure after 5 min seated; heart rate is still elevated in the minutes after
  exercise, Cole et al. 1999, NEJM 341:1351). A window is at rest only when it is sedentary *and* no
  window of the last :data:`REST_SETTLE_S` was active. Movement seen before a gap in the stream still
  counts (time is the readings' own); a stream that starts still is at rest from its first window (what
  happened before it is not known, and "unknown" must not hold back an alarm for five minutes after
  every reconnection).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import numpy.typing as npt

SEDENTARY_ENMO_G = 0.0448  # Hildebrand et al. 2017: adults, non-dominant wrist, ActiGraph
REST_SETTLE_S = 300.0  # 5 min of rest before a resting heart rate (ESC/ESH 2018 measurement convention)
EPOCH_S = 5.0  # ENMO epoch (GGIR's default short epoch)
MIN_GRAVITY_G = 0.5  # a raw accelerometer at rest reads ~1 g; far below: gravity was removed upstream
MAX_PLAUSIBLE_G = 1e3  # no wrist accelerometer reads a thousand g: a broken channel


def _norm(accel: npt.ArrayLike) -> npt.NDArray[np.float64] | None:
    a = np.asarray(accel, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3 or a.shape[0] < 1:
        return None
    norm: npt.NDArray[np.float64] = np.sqrt(np.einsum("ij,ij->i", a, a))
    # a NaN or an infinity anywhere makes the mean NaN or infinite, which the range refuses
    if not MIN_GRAVITY_G <= float(norm.mean()) <= MAX_PLAUSIBLE_G:
        return None
    return norm


def enmo(accel: npt.ArrayLike) -> float | None:
    """Mean of max(0, |a| - 1 g) over the window, in g; ``None`` when it cannot be computed (not a
    3-axis (n, 3) array in g with gravity, non-finite or absurd values)."""
    norm = _norm(accel)
    return None if norm is None else float(np.maximum(norm - 1.0, 0.0).mean())


def peak_epoch_enmo(accel: npt.ArrayLike, fs: float) -> float | None:
    """The largest ENMO of the window's epochs (:data:`EPOCH_S`, split evenly), in g; ``None`` as
    :func:`enmo`."""
    norm = _norm(accel)
    if norm is None or not (math.isfinite(fs) and fs > 0):
        return None
    pieces = max(1, math.ceil(len(norm) / (EPOCH_S * fs) - 1e-9))
    excess = np.maximum(norm - 1.0, 0.0)
    size, longer = divmod(len(excess), pieces)  # split as np.array_split does: the first ones one longer
    bounds = [i * size + min(i, longer) for i in range(pieces + 1)]
    return max(float(excess[a:b].mean()) for a, b in itertools.pairwise(bounds))


class RestTracker:
    """At rest or not, window by window, for one device stream (cheap: one comparison per window)."""

    def __init__(self, threshold_g: float = SEDENTARY_ENMO_G, settle_s: float = REST_SETTLE_S) -> None:
        self.threshold_g = threshold_g
        self.settle_s = settle_s
        self._last_active: float | None = None  # end time of the last active window

    def update(self, accel: npt.ArrayLike, fs: float, t_end: float) -> bool | None:
        """Classify the window (sampled at ``fs``) ending at ``t_end`` (seconds, the readings' clock):
        ``True`` at rest, ``False`` active or settling after activity, ``None`` when the acceleration
        cannot tell."""
        e = peak_epoch_enmo(accel, fs)
        if e is None or not math.isfinite(t_end):
            return None
        if e >= self.threshold_g:
            self._last_active = t_end
            return False
        last = self._last_active
        if last is None:
            return True
        if t_end < last:  # the clock went back: the activity was "just now"
            self._last_active = t_end
            return False
        return t_end - last >= self.settle_s
