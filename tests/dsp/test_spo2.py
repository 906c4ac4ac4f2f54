"""SpO2 by the ratio of ratios: the generator's saturation and desaturations, calibration, rejection."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gateway.dsp import CALIBRATIONS, Calibration, estimate_spo2
from gateway.dsp.spo2 import MAX_SE_PCT
from simulators.ppg import CAL_A, CAL_B, Desaturation, generate


def _win(x: np.ndarray, fs: float, t0: float, width: float = 10.0) -> np.ndarray:
    return x[round(t0 * fs) : round((t0 + width) * fs)]


@pytest.mark.parametrize(
    ("spo2", "hr", "seed"), [(99.0, 60.0, 1), (95.0, 75.0, 2), (90.0, 110.0, 3), (82.0, 90.0, 4), (74.0, 50.0, 5)]
)
def test_steady_saturation_is_recovered(spo2: float, hr: float, seed: int) -> None:
    rec = generate(40.0, hr_bpm=hr, spo2=spo2, seed=seed)
    for t0 in (0.0, 10.0, 20.0, 30.0):
        res = estimate_spo2(_win(rec.red, rec.fs, t0), _win(rec.ir, rec.fs, t0), rec.fs)
        assert res.percent is not None, res.sqi
        assert abs(res.percent - spo2) <= 2.0
        assert res.ratio is not None and abs(res.ratio - (CAL_A - spo2) / CAL_B) < 0.1
        assert 0.7 <= res.quality <= 1.0


def test_desaturation_event_is_followed() -> None:
    ev = Desaturation(start_s=20.0, nadir=84.0, fall_s=20.0, hold_s=20.0, rise_s=15.0)
    rec = generate(100.0, hr_bpm=68.0, spo2=97.0, seed=11, desaturations=[ev], af_episodes=())
    got = []
    for t0 in np.arange(0.0, 90.0 + 1e-9, 5.0):
        res = estimate_spo2(_win(rec.red, rec.fs, t0), _win(rec.ir, rec.fs, t0), rec.fs)
        truth = float(np.mean(_win(rec.truth.spo2, rec.fs, t0)))
        assert res.percent is not None
        assert abs(res.percent - truth) <= 2.0, (t0, res.percent, truth)
        got.append(res.percent)
    assert min(got) <= 86.0 and got[0] >= 95.0 and got[-1] >= 95.0


def test_desaturation_in_atrial_fibrillation() -> None:
    rec = generate(60.0, hr_bpm=110.0, rhythm="af", spo2=93.0, seed=12, desaturations=[Desaturation(10.0, nadir=86.0)])
    for t0 in (0.0, 30.0, 50.0):
        res = estimate_spo2(_win(rec.red, rec.fs, t0), _win(rec.ir, rec.fs, t0), rec.fs)
        truth = float(np.mean(_win(rec.truth.spo2, rec.fs, t0)))
        assert res.percent is not None and abs(res.percent - truth) <= 3.0


def test_motion_and_sensor_off_give_no_value() -> None:
    # Motion moves both wavelengths alike (R -> 1, a false "85 %"): the SQI must refuse it.
    rec = generate(60.0, hr_bpm=75.0, spo2=98.0, seed=13, motion=[(5.0, 25.0)], sensor_off=[(35.0, 55.0)])
    for t0 in (8.0, 14.0, 37.0, 44.0):
        res = estimate_spo2(_win(rec.red, rec.fs, t0), _win(rec.ir, rec.fs, t0), rec.fs)
        assert res.percent is None and res.quality == 0.0, (t0, res)
    # the accelerometer vetoes a window whose pulse shape survived a small motion
    small = generate(20.0, hr_bpm=75.0, seed=14, motion=[(0.0, 20.0)], motion_level=0.05)
    red, ir, acc = _win(small.red, small.fs, 0.0), _win(small.ir, small.fs, 0.0), _win(small.accel, small.fs, 0.0)
    assert estimate_spo2(red, ir, small.fs).percent is not None
    res = estimate_spo2(red, ir, small.fs, motion=acc)
    assert res.percent is None and "motion" in res.sqi.reasons


def test_channels_that_disagree_give_no_value() -> None:
    rec = generate(20.0, hr_bpm=70.0, seed=15)
    other = generate(20.0, hr_bpm=97.0, seed=16)  # red from another pulse: not one blood volume
    res = estimate_spo2(_win(other.red, rec.fs, 0.0), _win(rec.ir, rec.fs, 0.0), rec.fs)
    assert res.percent is None


def test_calibration_per_model() -> None:
    rec = generate(20.0, hr_bpm=70.0, spo2=96.0, seed=17)
    red, ir = _win(rec.red, rec.fs, 0.0), _win(rec.ir, rec.fs, 0.0)
    default = estimate_spo2(red, ir, rec.fs)
    assert default.percent is not None and default.ratio is not None
    r = default.ratio
    maxim = estimate_spo2(red, ir, rec.fs, calibration="MAX30102")
    assert maxim.percent is not None and maxim.ratio == pytest.approx(r)
    assert maxim.percent == pytest.approx(min(100.0, -45.060 * r * r + 30.354 * r + 94.845))
    assert estimate_spo2(red, ir, rec.fs, calibration="no-such-model").percent == default.percent
    custom = Calibration("test", (104.0, -17.0, 0.0), "a test curve")
    got = estimate_spo2(red, ir, rec.fs, calibration=custom)
    assert got.percent == pytest.approx(min(100.0, 104.0 - 17.0 * r))
    assert set(CALIBRATIONS) >= {"default", "max30102"} and all(c.source for c in CALIBRATIONS.values())


def test_implausible_ratio_gives_no_value() -> None:
    rec = generate(20.0, hr_bpm=70.0, seed=18)
    red, ir = _win(rec.red, rec.fs, 0.0), _win(rec.ir, rec.fs, 0.0)
    # red pulsating four times as deep as it should: R ~ 2.2 -> "55 %" on the default line is an optics fault
    dc = float(np.mean(red))
    deep = dc + 4.0 * (red - dc)
    res = estimate_spo2(deep, ir, rec.fs, calibration=Calibration("steep", (110.0, -40.0, 0.0), "test"))
    assert res.percent is None and res.ratio is not None and res.ratio > 1.5


@pytest.mark.parametrize(
    ("red", "ir"),
    [
        (np.zeros(1000), np.zeros(1000)),
        (-np.ones(1000), np.ones(1000)),
        (np.ones(1000), np.ones(999)),
        (np.full(1000, np.nan), np.ones(1000)),
        (np.ones(10), np.ones(10)),
    ],
)
def test_degenerate_inputs_give_none(red: np.ndarray, ir: np.ndarray) -> None:
    res = estimate_spo2(red, ir, 100.0)
    assert res.percent is None and res.quality == 0.0


@settings(max_examples=120, deadline=None)
@given(
    n=st.integers(0, 1500),
    data=st.data(),
    fs=st.sampled_from([25.0, 50.0, 100.0, math.nan, 0.0]),
)
def test_random_arrays_never_raise(n: int, data: st.DataObject, fs: float) -> None:
    elems = st.floats(allow_nan=True, allow_infinity=True, width=64)
    red = data.draw(hnp.arrays(np.float64, n, elements=elems))
    ir = data.draw(hnp.arrays(np.float64, data.draw(st.sampled_from([n, max(0, n - 1)])), elements=elems))
    _never_raises(red, ir, fs)


def _never_raises(red: np.ndarray, ir: np.ndarray, fs: float) -> None:
    res = estimate_spo2(red, ir, fs)
    assert 0.0 <= res.quality <= 1.0
    assert res.percent is None or 50.0 <= res.percent <= 100.0


def test_channels_whose_energies_multiply_below_the_smallest_float_give_no_value() -> None:
    # Found by the test above in CI: each energy > 0, their product underflowing to 0.
    tiny = np.zeros(100)
    tiny[0] = 6.15428618e-111
    _never_raises(tiny, tiny.copy(), 25.0)


@pytest.mark.parametrize(("hr", "seed"), [(50.0, 21), (65.0, 22), (90.0, 23), (120.0, 24)])
@pytest.mark.parametrize("perfusion", [0.0005, 0.003, 0.02])
def test_spot_recordings_of_four_to_five_seconds_down_to_005_percent_perfusion(
    hr: float, seed: int, perfusion: float
) -> None:
    for k, (dur, sat) in enumerate([(4.6, 97.0), (4.6, 84.0), (5.0, 72.0)]):
        rec = generate(dur, hr_bpm=hr, spo2=sat, perfusion_index=perfusion, seed=seed * 10 + k)
        res = estimate_spo2(rec.red, rec.ir, rec.fs)
        assert res.percent is not None, (dur, sat, res.sqi.reasons)
        assert abs(res.percent - sat) <= 2.0
        assert res.se_pct is not None and res.se_pct <= MAX_SE_PCT


def test_spot_gate_refuses_what_it_cannot_measure() -> None:
    # two channels that do not share one pulse: the ratio's own error is large
    a, b = generate(4.6, hr_bpm=70.0, seed=31), generate(4.6, hr_bpm=97.0, seed=32)
    res = estimate_spo2(b.red, a.ir, a.fs)
    assert res.percent is None and "imprecise" in res.sqi.reasons and (res.se_pct or 0.0) > MAX_SE_PCT
    # below the 0.02 % perfusion floor: no pulse to measure
    faint = generate(4.6, hr_bpm=70.0, perfusion_index=0.0001, seed=33)
    res = estimate_spo2(faint.red, faint.ir, faint.fs)
    assert res.percent is None and "no-pulse" in res.sqi.reasons
    # a wrist that moves during the spot recording: the accelerometer vetoes it
    for level in (0.5, 4.0):
        moving = generate(4.6, hr_bpm=70.0, seed=34, motion=[(0.0, 5.0)], motion_level=level)
        res = estimate_spo2(moving.red, moving.ir, moving.fs, motion=moving.accel)
        assert res.percent is None and "motion" in res.sqi.reasons
    walking = generate(4.6, hr_bpm=110.0, seed=35, walking=[(0.0, 5.0)])
    assert estimate_spo2(walking.red, walking.ir, walking.fs, motion=walking.accel).percent is None
