"""Atrial-fibrillation screening on RR / inter-beat intervals (pure numpy, no I/O).

Core: the low-complexity detector of Petrenas, Marozas and Sörnmo, "Low-complexity detection of atrial
fibrillation in continuous long-term monitoring", Computers in Biology and Medicine 65:184-191 (2015),
published on the full MIT-BIH AF Database with sensitivity 97.1 % and specificity 98.3 %. Its four
stages, with the paper's constants:

1. *Ectopic-beat filter*: a 3-beat running median of the RR series, ``r_m``. A single premature beat
   (short-long pair) disappears from ``r_m``; the irregularity of AF does not.
2. *RR irregularity*: in an ``N = 8`` interval window, the fraction ``M`` of the 28 interval pairs of
   ``r_m`` that differ by at least ``gamma = 0.03`` s, smoothed by a forward-backward exponential
   averager (``alpha = 0.02``) and divided by the equally smoothed RR trend ``r_t`` (seconds), so that
   the same beat-to-beat scatter counts more at high heart rates: ``I = M_t / r_t``.
3. *Bigeminy suppression*: ``B = (sum r_m / sum r - 1)^2`` over the same window, smoothed like ``M``.
   In bigeminy (short-long-short-long) the running median swaps short and long intervals, so the sums
   agree and ``B`` is near 0; in AF they differ.
4. *Signal fusion*: ``O = I`` where ``B_t >= delta = 2e-4``, else ``O = B_t`` (tiny); an interval is AF
   when ``O > eta = 0.725``.

Changes to the paper (docs/dsp-af.md has the measured effect of each, ``bench/dsp_eval.py --ablation``):

- the averager is twice as fast (``alpha = 0.04``, see :data:`ALPHA`) and the threshold has
  hysteresis (:data:`ETA_LOW`): episodes of 30 s to a few minutes were blurred away or cut short;
- the irregularity window is centred on the interval instead of trailing it (a screen works on a
  buffered window, so it need not be causal, and a centred window does not lag the onset), and the
  averagers start from the mean of their first samples instead of 0 (short windows are not biased);
- ``r_t`` is capped at :data:`RT_MAX_S` (70 bpm): uncapped, ``M_t / r_t`` missed AF below ~65 bpm;
- *artefacts*: an interval split in two by a false beat detection is joined back
  (:func:`merge_extra_beats`); intervals outside ``[RR_MIN_S, RR_MAX_S]`` or not finite are removed;
- *COSEn veto*: an AF stretch whose coefficient of sample entropy (Lake & Moorman 2011) is below
  :data:`COSEN_THRESHOLD` is not random enough to be AF (regular tachycardia, rate changes, ectopic
  patterns) and is cleared (:func:`cosen`).

On top of the per-interval mask, :func:`screen_af` gives the whole window a *label*:

- ``"insufficient"``: fewer than :data:`MIN_INTERVALS` plausible intervals, less than
  :data:`MIN_DURATION_S` of them, or less than :data:`MIN_QUALITY` of the window plausible;
- ``"af"``: an AF stretch of at least :data:`AF_EPISODE_S` (the 30 s that makes an AF episode in the
  2020 ESC guidelines, Hindricks et al., Eur Heart J 42:373-498), or, in a window shorter than twice
  that, AF in at least half of it;
- ``"other"``: not AF but irregular: at least :data:`OTHER_ECTOPIC_FRACTION` of the intervals deviate
  more than 20 % from their local median (the usual 20 % rule of RR editing, reviewed by Peltola,
  Front Physiol 3:148, 2012): frequent ectopic beats, bigeminy, trigeminy; or the irregularity detector
  fired on at least :data:`OTHER_VETOED_FRACTION` of the time and COSEn vetoed it;
- ``"sinus"``: otherwise (regular rhythm with normal variability).

The result carries the figures behind the decision so that a clinician or developer can check it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from gateway.dsp.filters import lfilter

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
AfLabel = Literal["af", "sinus", "other", "insufficient"]

# --- Petrenas et al. 2015, Table/Section 2 (values as published) -----------------------------------
WINDOW_N = 8
"""Intervals in the irregularity window (Petrenas 2015: N = 8, the 'low-complexity' setting)."""
GAMMA_S = 0.03
"""Two intervals differ when ``|r_i - r_j| >= 0.03 s`` (Petrenas 2015, gamma)."""
ALPHA = 0.04
"""Exponential averager coefficient. Petrenas 2015 has 0.02; applied forward and backward (zero
phase) that is a smoothing kernel 2 ln 2 / alpha = 69 beats wide at half height, longer than the
30-s AF episode of the guidelines at usual rates (30-60 beats at 60-120 bpm), so such episodes never
reached ``eta``. 0.04 halves the kernel to 35 beats. Checked on the tune half (docs/dsp-af.md)."""
DELTA = 2e-4
"""Bigeminy-suppression threshold on ``B_t`` (Petrenas 2015, delta)."""
ETA = 0.725
"""Detection threshold on the fused decision signal ``O`` (Petrenas 2015, eta; units 1/s): a stretch
is AF only where ``O`` exceeds it somewhere."""
ETA_LOW = 0.6
"""Lower (hysteresis) threshold: an AF stretch found with :data:`ETA` extends as far as ``O`` stays
above this (Canny's hysteresis thresholding). The smoothing spreads an episode's edges; a single
threshold cut them off, which cost most of the sensitivity on paroxysms of a few minutes. Not in
Petrenas 2015. 0.45 to 0.6 gave the same sensitivity on the tune half (docs/dsp-af.md); the highest
is kept because next to an episode (where the smoothed bigeminy gate is open) sinus rhythm with a
+-4 % respiratory arrhythmia at 70 bpm scores 0.47-0.55, and a lower threshold swallowed it."""
AVERAGER_INIT_N = 50
"""The averagers start from the mean of the first 50 samples of their input (the time constant of the
paper's averager), not from 0, so short windows are not biased. Kept at 50 when ``alpha`` changed:
starting from 1/alpha = 25 samples cost 0.7 points of CinC specificity against other rhythms on the
tune half."""
RT_MAX_S = 0.85
"""Cap on the RR trend ``r_t`` that divides the irregularity, seconds (70 bpm). Not in Petrenas 2015:
there ``I = M_t / r_t`` also *penalises* slow rhythms, and AF at 60 bpm with 20 % RR scatter (rate-
controlled AF, common in treated older people) never reached ``eta``. Chosen among 0.85 / 1.0 / none
on the tune half of AFDB and CinC 2017 (docs/dsp-af.md)."""

# --- Plausibility and labelling (sources in the module docstring) ----------------------------------
RR_MIN_S = 0.25
"""Shortest plausible RR interval: 240 bpm. Shorter ones are double detections / artefacts."""
RR_MAX_S = 2.5
"""Longest plausible RR interval: 24 bpm. Longer ones are missed beats or gaps in the stream."""
MIN_INTERVALS = 2 * WINDOW_N
"""Plausible intervals needed for a label: two full detector windows."""
MIN_DURATION_S = 10.0
"""Plausible signal needed for a label, seconds (the shortest CinC 2017 recordings are 9 s)."""
MIN_QUALITY = 0.5
"""Fraction of the window (by time) that must be plausible for a label."""
AF_EPISODE_S = 30.0
"""An AF stretch this long makes the label ``"af"`` (ESC 2020 / HRS 2017 episode definition)."""
AF_MAJORITY = 0.5
"""In windows shorter than ``2 * AF_EPISODE_S``: label ``"af"`` when this fraction of the time is AF."""
ECTOPIC_DEVIATION = 0.2
"""An interval deviating more than 20 % from its local median is ectopic (the 20 % rule, Peltola 2012)."""
ECTOPIC_MEDIAN_N = 5
"""Beats in the running median used by the 20 % rule (the interval and two on each side)."""
OTHER_ECTOPIC_FRACTION = 0.1
"""Non-AF window with at least 10 % ectopic intervals is ``"other"``. A premature beat makes two
deviating intervals (the short one and the pause), so this is about one premature beat in 20: a 5 %
burden, within the range clinicians call frequent ectopy. Checked on the tune half of CinC 2017."""
EXTRA_SHORT = 0.75
"""Extra-beat rule: one of the two intervals is shorter than 75 % of the reference (our choice among
0.7 / 0.75 / 0.8 on the tune half of CinC 2017; the three differed by < 1 point)."""
EXTRA_TOL = 0.2
"""Extra-beat rule: the two intervals add up to the reference within 20 % (the 20 % rule again)."""
EXTRA_REF_N = 11
"""Extra-beat rule: intervals in the reference window (an 11-beat window as in Lipponen & Tarvainen)."""
COSEN_THRESHOLD = -1.4
"""COSEn above which a segment is AF (Lake & Moorman 2011: -1.4 on 12-beat segments)."""
COSEN_R0_S = 0.03
"""COSEn initial tolerance, seconds (Lake & Moorman 2011: 30 ms)."""
COSEN_R_STEP_S = 0.01
"""COSEn tolerance increment when there are too few matches (Lake & Moorman 2011: 10 ms)."""
COSEN_R_MAX_S = 0.3
"""Largest COSEn tolerance tried, seconds (beyond it the segment is taken as maximally irregular)."""
COSEN_MIN_MATCHES = 5
"""Matches of length m + 1 needed before SampEn is trusted (Lake & Moorman 2011: 5)."""
COSEN_MIN_N = 12
"""Shortest segment for COSEn: 12 beats, the segment length of Lake & Moorman 2011."""
COSEN_BLOCK_N = 128
"""Block length for COSEn: a longer AF run is judged in blocks of 128 to 255 intervals (bounded cost,
local veto). Never shorter than 128: a run just over it cut in halves left a half made mostly of the
sinus edges the smoothing adds, and COSEn cleared the real AF with them."""
OTHER_VETOED_FRACTION = 0.25
"""Non-AF window where the irregularity detector fired on at least this fraction of the time but
COSEn vetoed it (irregular, but not random like AF) is ``"other"``."""


@dataclass(frozen=True)
class AfResult:
    """Outcome of :func:`screen_af` for one window of RR intervals."""

    af_mask: BoolArray
    """One bool per input interval: the interval lies inside a suspected AF stretch."""
    burden: float
    """Fraction of the plausible time (sum of plausible RR) spent in AF, 0..1 (0 when insufficient)."""
    label: AfLabel
    quality: float
    """Fraction of the window's time covered by plausible intervals, 0..1."""
    n_intervals: int
    n_valid: int
    duration_s: float
    """Sum of the plausible intervals, seconds."""
    af_time_s: float
    longest_af_s: float
    """Longest run of consecutive AF intervals, seconds."""
    ectopic_fraction: float
    """Fraction of plausible intervals deviating > 20 % from their local median."""
    vetoed_fraction: float
    """Fraction of the plausible time the irregularity detector flagged but COSEn found not random."""
    score: FloatArray
    """The fused decision signal ``O`` per input interval (NaN for implausible intervals)."""


def _exp_average_fb(x: FloatArray, alpha: float) -> FloatArray:
    """Forward-backward exponential averager ``y(n) = (1 - alpha) y(n-1) + alpha x(n)`` (zero phase).

    Each pass starts from the mean of the first :data:`AVERAGER_INIT_N` samples of its input rather
    than from 0, so short series are not pulled towards zero at their ends."""
    b = np.array([alpha])
    a = np.array([1.0, alpha - 1.0])
    head = AVERAGER_INIT_N

    def one_pass(v: FloatArray) -> FloatArray:
        zi = np.array([(1.0 - alpha) * float(np.mean(v[:head]))])
        return lfilter(b, a, v, zi)

    return one_pass(one_pass(x)[::-1])[::-1]


def _row_quantile(windows: npt.NDArray[np.float64], q: float) -> FloatArray:
    """Each row's ``q`` quantile, as ``np.quantile(windows, q, axis=1)`` gives it (linear interpolation;
    NaN for a row with a NaN), from one sort of the rows: numpy's general quantile costs 5-7 x more on
    these short rows (a screen's 150 windows of 3-11 intervals)."""
    s = np.sort(windows, axis=1)  # NaN sorts last
    k = q * (s.shape[1] - 1)
    lo = int(k)
    t = k - lo
    a, b = s[:, lo], s[:, min(lo + 1, s.shape[1] - 1)]
    # numpy's interpolation, written from the nearer neighbour
    out: FloatArray = b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t
    out[np.isnan(s[:, -1])] = np.nan
    return out


def _running_median(x: FloatArray, width: int) -> FloatArray:
    """Centred running median with edge replication (width odd)."""
    half = width // 2
    padded = np.concatenate((np.repeat(x[:1], half), x, np.repeat(x[-1:], half)))
    return _row_quantile(sliding_window_view(padded, width), 0.5)


def _centred_windows(x: FloatArray, n: int) -> npt.NDArray[np.float64]:
    """Windows of ``n`` samples around each sample (n even: n/2 before, n/2 - 1 after), edges replicated."""
    before, after = n // 2, n - n // 2 - 1
    padded = np.concatenate((np.repeat(x[:1], before), x, np.repeat(x[-1:], after)))
    return sliding_window_view(padded, n)


def _pair_irregularity(windows: npt.NDArray[np.float64], gamma: float) -> FloatArray:
    """Fraction of the ``n (n-1) / 2`` interval pairs in each window differing by at least ``gamma``."""
    n = windows.shape[1]
    iu, ju = np.triu_indices(n, k=1)
    diff = np.abs(windows[:, iu] - windows[:, ju])
    return np.asarray(np.count_nonzero(diff >= gamma, axis=1) / len(iu), dtype=np.float64)


def af_decision(rr_s: FloatArray) -> FloatArray:
    """Petrenas 2015 fused decision signal ``O`` (1/s) for a clean (all plausible) RR series, seconds.

    ``O > ETA`` marks an interval as irregular like AF. Needs at least one interval."""
    r = np.asarray(rr_s, dtype=np.float64)
    r_m = _running_median(r, 3)
    r_t = np.minimum(_exp_average_fb(r, ALPHA), RT_MAX_S)
    m = _pair_irregularity(_centred_windows(r_m, WINDOW_N), GAMMA_S)
    irregularity = _exp_average_fb(m, ALPHA) / r_t
    sums_m = _centred_windows(r_m, WINDOW_N).sum(axis=1)
    sums = _centred_windows(r, WINDOW_N).sum(axis=1)
    b_t = _exp_average_fb((sums_m / sums - 1.0) ** 2, ALPHA)
    return np.asarray(np.where(b_t >= DELTA, irregularity, b_t), dtype=np.float64)


def hysteresis(o: FloatArray, low: float, high: float) -> BoolArray:
    """Hysteresis threshold: the runs of ``o > low`` that reach ``o > high`` somewhere (NaN is below
    both). The high threshold decides *whether* there is an episode, the low one *how far* it
    reaches, so the blurred edges of an episode the smoothing has spread out are not cut off."""
    if o.shape[0] == 0:
        return np.zeros(0, dtype=np.bool_)
    with np.errstate(invalid="ignore"):
        above = o > min(low, high)
        strong = o > high
    start = above & ~np.concatenate(([False], above[:-1]))
    run = np.cumsum(start) * above  # 0 outside a run, k inside the k-th run
    hit = np.bincount(run[strong], minlength=int(run.max()) + 1) > 0
    hit[0] = False
    return np.asarray(hit[run], dtype=np.bool_)


def merge_extra_beats(rr_s: FloatArray) -> tuple[FloatArray, npt.NDArray[np.intp]]:
    """Join pairs of intervals split by a false beat detection (a T wave, a motion spike).

    A pair ``rr[i], rr[i+1]`` is joined when one of them is shorter than :data:`EXTRA_SHORT` times the
    local reference and their sum is within :data:`EXTRA_TOL` of it: the "extra beat" rule of the
    HRV artefact-correction literature (Berntson et al., Psychophysiology 27:586-598, 1990; Lipponen &
    Tarvainen, J Med Eng Technol 43:173-181, 2019). The reference is the upper quartile of the
    :data:`EXTRA_REF_N` intervals around ``i``: robust even when every other beat is false (a median
    would then be one of the short halves). Returns the joined series and, for each of its intervals,
    the index of the input interval it starts with."""
    n = int(rr_s.shape[0])
    if n < 2:
        return rr_s.copy(), np.arange(n, dtype=np.intp)
    half = EXTRA_REF_N // 2
    padded = np.concatenate((np.repeat(rr_s[:1], half), rr_s, np.repeat(rr_s[-1:], half)))
    with np.errstate(invalid="ignore", over="ignore"):  # NaN marks intervals that must not be joined
        ref = _row_quantile(sliding_window_view(padded, 2 * half + 1), 0.75)
        pair = rr_s[:-1] + rr_s[1:]
        shortest = np.minimum(rr_s[:-1], rr_s[1:])
        candidate = (shortest < EXTRA_SHORT * ref[:-1]) & (np.abs(pair - ref[:-1]) <= EXTRA_TOL * ref[:-1])
    if not candidate.any():
        return rr_s.copy(), np.arange(n, dtype=np.intp)
    out: list[float] = []
    starts: list[int] = []
    i = 0
    while i < n:
        starts.append(i)
        if i + 1 < n and candidate[i]:
            out.append(float(pair[i]))
            i += 2
        else:
            out.append(float(rr_s[i]))
            i += 1
    return np.asarray(out, dtype=np.float64), np.asarray(starts, dtype=np.intp)


def cosen(rr_s: FloatArray) -> float:
    """Coefficient of sample entropy (Lake & Moorman, Am J Physiol Heart Circ Physiol 300:H319-H325,
    2011): ``SampEn(m=1, r) + ln(2 r) - ln(mean RR)``, with ``r`` starting at 30 ms and growing by 10 ms
    until at least 5 matches of length 2 are found (our reading of their minimum-match rule for short
    series). NaN when the series is too short or no tolerance up to :data:`COSEN_R_MAX_S` gives 5
    matches (a series that irregular is kept as AF by the veto)."""
    x = np.asarray(rr_s, dtype=np.float64)
    n = int(x.shape[0])
    if n < 3:
        return float("nan")
    d1 = np.abs(x[:-1, None] - x[None, :-1])  # template length m = 1 (first n-1 points)
    d2 = np.maximum(d1, np.abs(x[1:, None] - x[None, 1:]))  # length m + 1 = 2
    iu = np.triu_indices(n - 1, k=1)
    d1u, d2u = d1[iu], d2[iu]
    r = COSEN_R0_S
    while r <= COSEN_R_MAX_S + 1e-12:
        a = int(np.count_nonzero(d2u <= r))
        if a >= COSEN_MIN_MATCHES:
            b = int(np.count_nonzero(d1u <= r))
            return float(-np.log(a / b) + np.log(2 * r) - np.log(np.mean(x)))
        r += COSEN_R_STEP_S
    return float("nan")


def _cosen_veto(clean: FloatArray, af: BoolArray) -> BoolArray:
    """Clear AF stretches whose RR series is not random enough to be AF (COSEn below threshold).

    Each run of AF intervals is cut in blocks of :data:`COSEN_BLOCK_N` to twice that (shorter runs
    are widened to :data:`COSEN_MIN_N` intervals around their centre); a block whose COSEn is below
    :data:`COSEN_THRESHOLD` is not AF: regular tachycardia, rate changes, ectopic patterns."""
    out = af.copy()
    if not af.any():
        return out
    n = int(clean.shape[0])
    edges = np.diff(np.concatenate(([0], af.astype(np.int8), [0])))
    for start, end in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        nblocks = max(1, int(end - start) // COSEN_BLOCK_N)
        bounds = np.linspace(start, end, nblocks + 1).round().astype(int)
        for b0, b1 in itertools.pairwise(bounds):
            lo, hi = int(b0), int(b1)
            if hi - lo < COSEN_MIN_N:
                mid = (lo + hi) // 2
                lo = max(0, min(mid - COSEN_MIN_N // 2, n - COSEN_MIN_N))
                hi = min(n, lo + COSEN_MIN_N)
            value = cosen(clean[lo:hi])  # NaN: too few matches even at the widest tolerance, keep
            if np.isfinite(value) and value < COSEN_THRESHOLD:
                out[int(b0) : int(b1)] = False
    return out


def _longest_run(mask: BoolArray, weights: FloatArray) -> float:
    """Largest sum of ``weights`` over a run of consecutive True in ``mask``."""
    if not mask.any():
        return 0.0
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    csum = np.concatenate(([0.0], np.cumsum(weights)))
    return float(np.max(csum[ends] - csum[starts]))


def screen_af(
    rr_s: npt.ArrayLike, *, merge_extra: bool = True, cosen_veto: bool = True, span_s: float | None = None
) -> AfResult:
    """Screen a window of successive RR / inter-beat intervals (seconds) for atrial fibrillation.

    Steps: intervals split by a false beat detection are joined (:func:`merge_extra_beats`, skipped
    with ``merge_extra=False``); then non-finite intervals and intervals outside
    ``[RR_MIN_S, RR_MAX_S]`` are artefacts: they get ``af_mask = False``, do not count towards
    ``burden``, and lower ``quality``; the detector runs on the remaining intervals joined together.
    ``span_s``: the time the window spans when its intervals may cover only part of it (a stream's
    120 s window, which holds beats only from the stretches where the sensor gave usable ones). The
    time no interval covers counts against ``quality`` (:data:`MIN_QUALITY` of the window, by time,
    must be plausible), and the majority rule (:data:`AF_MAJORITY`) applies only when the span is
    shorter than ``2 * AF_EPISODE_S``: in a longer window, a short stretch of irregular beats says
    nothing about the rest of it, and the label ``"af"`` needs an AF stretch of :data:`AF_EPISODE_S`,
    the episode of the guidelines. Default: the time the intervals themselves span (a recording).
    Raises ``ValueError`` only when ``rr_s`` is not a one-dimensional sequence of numbers.
    """
    try:
        rr = np.asarray(rr_s, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"rr_s must be a 1-D sequence of numbers: {exc}") from exc
    if rr.ndim != 1:
        raise ValueError(f"rr_s must be one-dimensional, got shape {rr.shape}")
    n = int(rr.shape[0])
    with np.errstate(invalid="ignore"):
        sized = np.isfinite(rr) & (rr > 0)
        too_long = sized & (rr > RR_MAX_S)
    # Only sized intervals no longer than RR_MAX_S may be joined; the others are NaN here, so the
    # extra-beat rule never joins across them.
    work = np.where(sized & ~too_long, rr, np.nan)
    if merge_extra and n >= 2:
        joined, starts = merge_extra_beats(work)
        group = np.zeros(n, dtype=np.intp)
        group[starts[1:]] = 1
        owner = np.cumsum(group)  # owner[k]: the joined interval input k belongs to
    else:
        joined, owner = work, np.arange(n, dtype=np.intp)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(joined) & (joined >= RR_MIN_S) & (joined <= RR_MAX_S)
        too_short = np.isfinite(joined) & (joined < RR_MIN_S)
    clean = joined[valid]
    n_valid = int(clean.shape[0])
    duration = float(clean.sum())
    # Time the window spans: plausible intervals plus the implausible ones we can size (capped so one
    # absurd value does not hide a whole window of good data), plus a mean interval per unsized one.
    bad_time = float(joined[too_short].sum()) + RR_MAX_S * int(np.count_nonzero(too_long))
    n_unsized = n - int(np.count_nonzero(sized))
    mean_rr = duration / n_valid if n_valid else 1.0
    total = duration + bad_time + n_unsized * mean_rr
    if span_s is not None and span_s > total:
        total = span_s  # the time no interval covers is of unknown rhythm, not plausible
    quality = duration / total if total > 0 else 0.0

    o_joined = np.full(joined.shape[0], np.nan)
    af_joined = np.zeros(joined.shape[0], dtype=bool)

    def per_input() -> tuple[BoolArray, FloatArray]:
        return af_joined[owner], o_joined[owner]

    if n_valid < MIN_INTERVALS or duration < MIN_DURATION_S or quality < MIN_QUALITY:
        if n_valid >= 1:
            o_joined[valid] = af_decision(clean)
        mask, score = per_input()
        return AfResult(mask, 0.0, "insufficient", quality, n, n_valid, duration, 0.0, 0.0, 0.0, 0.0, score)

    o = af_decision(clean)
    irregular = hysteresis(o, ETA_LOW, ETA)
    af_clean = _cosen_veto(clean, irregular) if cosen_veto else irregular
    o_joined[valid] = o
    af_joined[valid] = af_clean
    mask, score = per_input()
    af_time = float(clean[af_clean].sum())
    burden = af_time / duration
    longest = _longest_run(af_clean, clean)

    local = _running_median(clean, ECTOPIC_MEDIAN_N)
    ectopic_fraction = float(np.mean(np.abs(clean - local) > ECTOPIC_DEVIATION * local))
    vetoed_fraction = float(clean[irregular & ~af_clean].sum() / duration)

    label: AfLabel
    span = duration if span_s is None or not span_s > duration else span_s
    if longest >= AF_EPISODE_S or (span < 2 * AF_EPISODE_S and burden >= AF_MAJORITY):
        label = "af"
    elif ectopic_fraction >= OTHER_ECTOPIC_FRACTION or vetoed_fraction >= OTHER_VETOED_FRACTION:
        label = "other"
    else:
        label = "sinus"
    return AfResult(
        af_mask=mask,
        burden=burden,
        label=label,
        quality=quality,
        n_intervals=n,
        n_valid=n_valid,
        duration_s=duration,
        af_time_s=af_time,
        longest_af_s=longest,
        ectopic_fraction=ectopic_fraction,
        vetoed_fraction=vetoed_fraction,
        score=score,
    )
