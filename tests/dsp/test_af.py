"""AF screening (gateway.dsp.af): synthetic rhythms with known truth, hostile input, and real recordings.

The real-data tests cut excerpts of the MIT-BIH AF Database, nsr2db and CinC 2017 at run time from
``../shared/data`` and skip when it is missing. Their floors sit well below what bench/dsp_eval.py
measures (docs/dsp-af.md), so they catch a broken detector, not noise.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import datasets
from gateway.dsp import af as afmod
from gateway.dsp.af import AfResult, cosen, merge_extra_beats, screen_af
from simulators.ppg import beat_sequence

FloatArray = npt.NDArray[np.float64]


# --- synthetic rhythms ------------------------------------------------------------------------------


def sinus(n: int, rng: np.random.Generator, rr0: float = 0.85) -> FloatArray:
    """Sinus rhythm with respiratory sinus arrhythmia (0.25 Hz, +-4 %), a slow Mayer wave and jitter."""
    out = np.empty(n)
    t = 0.0
    for i in range(n):
        rr = rr0 * (1 + 0.04 * math.sin(2 * math.pi * 0.25 * t) + 0.02 * math.sin(2 * math.pi * 0.1 * t))
        rr *= 1 + 0.01 * rng.standard_normal()
        out[i] = rr
        t += rr
    return out


def af_rr(n: int, rng: np.random.Generator, rr0: float = 0.7, cv: float = 0.2) -> FloatArray:
    """AF: independent intervals (irregularly irregular), bounded by AV-node refractoriness."""
    return np.clip(rr0 * (1 + cv * rng.standard_normal(n)), 0.3, 2 * rr0)


def with_ectopics(rr: FloatArray, every: int, coupling: float = 0.6) -> FloatArray:
    """Premature beat every ``every`` beats: a short interval and a full compensatory pause."""
    out = rr.copy()
    for i in range(every, len(out) - 1, every):
        base = out[i]
        out[i] = coupling * base
        out[i + 1] = (2 - coupling) * base
    return out


def check_invariants(res: AfResult, n: int) -> None:
    assert res.af_mask.shape == (n,)
    assert res.af_mask.dtype == np.bool_
    assert res.score.shape == (n,)
    assert 0.0 <= res.burden <= 1.0
    assert 0.0 <= res.quality <= 1.0
    assert res.label in ("af", "sinus", "other", "insufficient")
    assert res.n_intervals == n
    assert 0 <= res.n_valid <= n
    assert res.af_time_s <= res.duration_s + 1e-9
    assert res.longest_af_s <= res.af_time_s + 1e-9
    if res.label == "insufficient":
        assert res.burden == 0.0 and not res.af_mask.any()
    if not res.af_mask.any():
        assert res.burden == 0.0


# --- rhythms ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("rr0", [0.5, 0.85, 1.2])
def test_sinus_with_variability_is_sinus(seed: int, rr0: float) -> None:
    rr = sinus(300, np.random.default_rng(seed), rr0)
    res = screen_af(rr)
    check_invariants(res, len(rr))
    assert res.label == "sinus"
    assert res.burden == 0.0
    assert res.quality == 1.0


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("rr0", [0.45, 0.7, 1.0, 1.3])
def test_af_random_intervals_is_af(seed: int, rr0: float) -> None:
    rr = af_rr(200, np.random.default_rng(seed), rr0)
    res = screen_af(rr)
    check_invariants(res, len(rr))
    assert res.label == "af"
    assert res.burden >= 0.9
    assert res.longest_af_s >= afmod.AF_EPISODE_S


@pytest.mark.parametrize("seed", range(4))
def test_bigeminy_is_not_af(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 200
    base = sinus(n, rng, 0.8)
    rr = np.where(np.arange(n) % 2 == 0, 0.6 * base, 1.35 * base)  # coupled premature beat, pause
    res = screen_af(rr)
    check_invariants(res, n)
    assert res.label == "other"
    assert res.burden < 0.1


@pytest.mark.parametrize("every", [3, 5, 8])
def test_frequent_ectopics_are_other_not_af(every: int) -> None:
    rr = with_ectopics(sinus(400, np.random.default_rng(every)), every)
    res = screen_af(rr)
    check_invariants(res, len(rr))
    assert res.label == "other"
    assert res.burden < 0.1
    assert res.ectopic_fraction >= afmod.OTHER_ECTOPIC_FRACTION


def test_rare_ectopics_stay_sinus() -> None:
    rr = with_ectopics(sinus(400, np.random.default_rng(7)), 60)
    res = screen_af(rr)
    assert res.label == "sinus"
    assert res.burden == 0.0


def test_simulator_ectopic_rhythm_is_not_af() -> None:
    """The PPG generator's ectopic rhythm (8 % premature beats with compensatory pauses)."""
    beats, af_truth, ect = beat_sequence(300.0, 70.0, "ectopic", np.random.default_rng(3))
    assert not af_truth.any() and ect.any()
    res = screen_af(np.diff(beats))
    assert res.label in ("other", "sinus")
    assert res.burden < 0.1


def test_paroxysm_is_located_in_time() -> None:
    rng = np.random.default_rng(11)
    pre, ep, post = sinus(300, rng), af_rr(300, rng), sinus(300, rng)
    rr = np.concatenate((pre, ep, post))
    truth = np.zeros(len(rr), dtype=bool)
    truth[300:600] = True
    res = screen_af(rr)
    check_invariants(res, len(rr))
    assert res.label == "af"
    se = np.mean(res.af_mask[truth])
    sp = np.mean(~res.af_mask[~truth])
    assert se >= 0.9, se
    assert sp >= 0.95, sp
    assert res.burden == pytest.approx(ep.sum() / rr.sum(), abs=0.05)
    assert res.longest_af_s == pytest.approx(ep.sum(), rel=0.15)


@pytest.mark.parametrize("seed", range(5))
def test_short_paroxysm_of_forty_seconds_is_found(seed: int) -> None:
    """A 60-beat (~40 s) AF episode in sinus rhythm: longer than the 30 s that makes an episode, but
    the paper's averager (alpha = 0.02, a 69-beat kernel) and a single threshold blurred it away."""
    rng = np.random.default_rng(seed)
    pre, ep, post = sinus(200, rng), af_rr(60, rng, 0.65), sinus(200, rng)
    rr = np.concatenate((pre, ep, post))
    res = screen_af(rr)
    assert res.label == "af"
    assert np.mean(res.af_mask[200:260]) >= 0.9
    # the smoothing spreads the edges: bounded, a few seconds of sinus rhythm on each side
    outside = int(res.af_mask[:200].sum() + res.af_mask[260:].sum())
    assert outside <= 40, outside
    assert res.af_mask[:150].sum() == 0 and res.af_mask[310:].sum() == 0


@pytest.mark.parametrize("seed", range(12))
def test_episode_just_longer_than_a_cosen_block_is_kept_whole(seed: int) -> None:
    """120 AF intervals plus the edges the smoothing adds make a stretch just over 128: cut in two
    halves, the second half was mostly the sinus edge, COSEn found it regular and cleared real AF."""
    rng = np.random.default_rng(seed)
    rr = np.concatenate((sinus(60, rng, 0.75), af_rr(120, rng, 0.75), sinus(60, rng, 0.75)))
    res = screen_af(rr)
    assert res.label == "af"
    assert np.mean(res.af_mask[60:180]) >= 0.95


def test_hysteresis_keeps_whole_runs_that_reach_the_high_threshold() -> None:
    o = np.array([0.0, 0.65, 0.7, 0.8, 0.65, 0.0, 0.65, 0.7, 0.65, np.nan, 0.9, 0.5, 0.9])
    got = afmod.hysteresis(o, 0.6, 0.725)
    want = [False, True, True, True, True, False, False, False, False, False, True, False, True]
    assert got.tolist() == want
    # without hysteresis (low >= high) it is a plain threshold
    assert afmod.hysteresis(o, 0.725, 0.725).tolist() == (np.nan_to_num(o) > 0.725).tolist()
    assert not afmod.hysteresis(np.zeros(0), 0.6, 0.725).any()


def test_simulator_af_episode_is_found() -> None:
    beats, af_truth, _ = beat_sequence(600.0, 65.0, "sinus", np.random.default_rng(5), af_episodes=[(200.0, 400.0)])
    res = screen_af(np.diff(beats))
    assert res.label == "af"
    # The averagers blur the edges of a 200 s episode; inside it and far from it the mask is right.
    assert np.mean(res.af_mask[af_truth]) >= 0.7
    assert np.mean(~res.af_mask[~af_truth]) >= 0.9
    ends = beats[1:]
    assert res.af_mask[(ends > 250.0) & (ends < 350.0)].all()
    assert not res.af_mask[(ends < 150.0) | (ends > 450.0)].any()


def test_short_af_window_majority_rule() -> None:
    """A 30 s window (CinC 2017 length) that is all AF is 'af' even though no stretch reaches 30 s."""
    rr = af_rr(45, np.random.default_rng(2), 0.65)
    res = screen_af(rr)
    assert res.duration_s < 2 * afmod.AF_EPISODE_S
    assert res.label == "af"


def test_a_short_stretch_in_a_long_window_is_not_af() -> None:
    """The majority rule is for a short recording. A stream's 120 s window that holds only 25 s of
    irregular beats (the rest of its time unusable) knows nothing of the other 95 s: with ``span_s``
    that time counts against the quality and the window is insufficient. A 41 s series that is
    irregular for 30 s at most (under an episode), 73 % of it, is 'af' as a recording and not as an
    80 s window half covered."""
    rng = np.random.default_rng(7)
    burst = af_rr(38, rng, 0.65)
    assert 20.0 < burst.sum() < 30.0
    assert screen_af(burst).label == "af"
    res = screen_af(burst, span_s=120.0)
    assert res.label == "insufficient"
    assert res.quality == pytest.approx(burst.sum() / 120.0)
    assert res.burden == 0.0
    # a span shorter than the intervals changes nothing
    assert screen_af(burst, span_s=5.0).label == "af"
    rng = np.random.default_rng(1)
    mixed = np.concatenate((sinus(24, rng, 0.7), af_rr(38, rng, 0.65)))
    whole = screen_af(mixed)
    assert 40.0 < whole.duration_s < 60.0 and whole.longest_af_s < afmod.AF_EPISODE_S
    assert whole.burden >= afmod.AF_MAJORITY and whole.label == "af"  # the majority rule
    windowed = screen_af(mixed, span_s=80.0)
    assert windowed.quality >= afmod.MIN_QUALITY
    assert windowed.label != "af"


# --- too little or bad input --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 5, afmod.MIN_INTERVALS - 1])
def test_too_short_is_insufficient(n: int) -> None:
    rr = af_rr(n, np.random.default_rng(0))
    res = screen_af(rr)
    check_invariants(res, n)
    assert res.label == "insufficient"


def test_short_duration_is_insufficient() -> None:
    rr = np.full(30, 0.3)  # 30 intervals but only 9 s
    assert screen_af(rr).label == "insufficient"


def test_artefacts_are_masked_out_and_lower_quality() -> None:
    rng = np.random.default_rng(4)
    rr = af_rr(200, rng)
    bad = [10, 50, 51, 120, 199]
    rr[bad] = [np.nan, 0.0, -1.0, 7.0, np.inf]
    res = screen_af(rr)
    check_invariants(res, len(rr))
    assert not res.af_mask[bad].any()
    assert np.isnan(res.score[[10, 50, 51, 199]]).all()
    assert 0.8 < res.quality < 1.0
    assert 180 <= res.n_valid <= 200 - len(bad)
    assert res.label == "af"


def test_mostly_artefact_is_insufficient() -> None:
    rr = sinus(200, np.random.default_rng(1))
    rr[::3] = np.nan
    rr[1::3] = 9.0
    res = screen_af(rr)
    assert res.quality < afmod.MIN_QUALITY
    assert res.label == "insufficient"


def test_split_beats_are_joined_not_af() -> None:
    """A false detection (T wave) splits an interval in two: joined back, the rhythm stays sinus."""
    rng = np.random.default_rng(9)
    base = sinus(200, rng)
    parts: list[float] = []
    split_at = set(range(5, 200, 7))
    for i, v in enumerate(base):
        if i in split_at:
            parts += [0.35 * v, 0.65 * v]
        else:
            parts.append(v)
    rr = np.asarray(parts)
    assert screen_af(rr, merge_extra=False).label != "sinus"  # the artefacts matter without the rule
    res = screen_af(rr)
    check_invariants(res, len(rr))
    assert res.label == "sinus"
    joined, starts = merge_extra_beats(rr)
    assert len(joined) == len(base)
    np.testing.assert_allclose(joined, base)
    assert starts[0] == 0 and np.all(np.diff(starts) >= 1)


def test_merge_leaves_af_alone() -> None:
    rr = af_rr(500, np.random.default_rng(3))
    joined, _ = merge_extra_beats(rr)
    assert len(joined) >= 0.97 * len(rr)


def test_cosen_separates_random_from_regular() -> None:
    rng = np.random.default_rng(0)
    assert cosen(af_rr(60, rng)) > afmod.COSEN_THRESHOLD
    assert cosen(sinus(60, rng)) < afmod.COSEN_THRESHOLD
    assert math.isnan(cosen(np.array([0.8, 0.9])))


@pytest.mark.parametrize(
    "bad",
    [np.zeros((3, 40)), np.float64(0.8), "0.8 0.9", [[0.8], [0.9]], [object()]],
    ids=["2d", "scalar", "string", "nested", "object"],
)
def test_invalid_input_raises_value_error(bad: object) -> None:
    with pytest.raises(ValueError):
        screen_af(bad)  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.floats(min_value=0.2, max_value=2.0),
        ),
        max_size=400,
    )
)
def test_random_input_never_raises(values: list[float]) -> None:
    res = screen_af(np.asarray(values, dtype=np.float64))
    check_invariants(res, len(values))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(min_value=0.3, max_value=1.6), min_size=20, max_size=300),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_plausible_series_label_is_consistent_with_mask(values: list[float], seed: int) -> None:
    rr = np.asarray(values)
    res = screen_af(rr)
    check_invariants(res, len(rr))
    if res.label == "af":
        assert res.burden > 0
    elif res.label != "insufficient":
        assert res.longest_af_s < afmod.AF_EPISODE_S


# --- real recordings ------------------------------------------------------------------------------------

needs_data = pytest.mark.skipif(not datasets.available(), reason="../shared/data recordings not present")


def _excerpt(name: str, hours: float) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """``hours`` of an AFDB record centred on its first AF onset (so both rhythms are in it)."""
    rec = datasets.load_afdb(name)
    t = rec.beat_times_s[1:]
    onset = t[int(np.argmax(rec.af))]
    lo, hi = np.searchsorted(t, [onset - hours * 1800, onset + hours * 1800])
    return rec.rr_s[lo:hi], rec.af[lo:hi]


@pytest.mark.data
@needs_data
def test_afdb_excerpts_sensitivity_specificity() -> None:
    """Three AFDB excerpts with both rhythms, 2 h each (about 25,000 intervals)."""
    tp = fn = tn = fp = 0
    for name in ("04126", "08378", "04908"):
        rr, ref = _excerpt(name, 2.0)
        assert ref.any() and (~ref).any(), name
        mask = screen_af(rr).af_mask
        tp += int(np.sum(mask & ref))
        fn += int(np.sum(~mask & ref))
        tn += int(np.sum(~mask & ~ref))
        fp += int(np.sum(mask & ~ref))
    se, sp = tp / (tp + fn), tn / (tn + fp)
    assert se >= 0.85, se
    assert sp >= 0.95, sp


@pytest.mark.data
@needs_data
def test_nsr_excerpt_has_no_af() -> None:
    rr = datasets.load_nsr().rr_s[:20_000]  # about 4 h of sinus rhythm
    res = screen_af(rr)
    assert res.burden <= 0.01
    assert res.label == "sinus"


@pytest.mark.data
@needs_data
def test_cinc2017_subset_af_versus_other() -> None:
    """Every 8th CinC 2017 record: AF records mostly 'af', other rhythms mostly not."""
    recs = datasets.load_cinc2017()[::8]
    labels = {"A": [], "O": [], "N": []}  # type: dict[str, list[str]]
    for r in recs:
        if r.label in labels:
            labels[r.label].append(screen_af(r.rr_s).label)
    se = np.mean([x == "af" for x in labels["A"]])
    sp_o = np.mean([x != "af" for x in labels["O"]])
    sp_n = np.mean([x != "af" for x in labels["N"]])
    assert se >= 0.55, se
    assert sp_o >= 0.8, sp_o
    assert sp_n >= 0.85, sp_n


@given(
    st.lists(st.floats(0.2, 3.0) | st.just(math.nan), min_size=1, max_size=12),
    st.integers(1, 11),
    st.sampled_from([0.25, 0.5, 0.75]),
)
def test_row_quantiles_are_numpy_quantiles(values: list[float], width: int, q: float) -> None:
    # the running medians and upper quartiles of the screen: numpy's value, NaN rows included
    rows = np.lib.stride_tricks.sliding_window_view(np.asarray(values * width), width)
    with np.errstate(invalid="ignore"):
        ref = np.quantile(rows, q, axis=1)
    np.testing.assert_array_equal(afmod._row_quantile(rows, q), ref)
