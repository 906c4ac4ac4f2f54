"""WristStream: cadence, channels, gaps, artefacts, AF screening from PPG beats and device RR."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import datasets
from drivers.base import BeatIntervals, Measurement, Waveform
from gateway.dsp.stream import AF_HOP_S, AF_WINDOW_S, CODE_AF, HOP_S, LOINC_HR, LOINC_SPO2, WINDOW_S, WristStream
from simulators.ppg import Desaturation, PpgRecording, generate

T0 = 1_800_000_000.0


def _blocks(
    rec: PpgRecording, channels: tuple[str, ...], block_s: float = 1.0, *, skip: tuple[float, float] | None = None
) -> Iterator[Waveform]:
    n = round(block_s * rec.fs)
    for i in range(0, len(rec), n):
        if skip is not None and skip[0] * rec.fs <= i < skip[1] * rec.fs:
            continue
        ch = {c: getattr(rec, c)[i : i + n].tolist() for c in channels}
        yield Waveform("w1", T0 + i / rec.fs, rec.fs, ch, first_index=i)


def _feed(stream: WristStream, blocks: Iterator[Waveform]) -> list[Measurement]:
    out: list[Measurement] = []
    for w in blocks:
        out.extend(stream.push_waveform(w))
    return out


def _codes(ms: list[Measurement], code: str) -> list[Measurement]:
    return [m for m in ms if m.code == code]


def test_cadence_codes_and_values_on_a_wrist_stream() -> None:
    rec = generate(130.0, hr_bpm=76.0, spo2=96.0, seed=21)
    s = WristStream("w1")
    out = _feed(s, _blocks(rec, ("red", "ir", "green")))
    hr, sp, af = _codes(out, LOINC_HR), _codes(out, LOINC_SPO2), _codes(out, CODE_AF)
    # first window full at 10 s, then one every 5 s: 10, 15, ..., 130
    assert [round(m.captured_at - T0, 6) for m in hr] == [WINDOW_S + HOP_S * k for k in range(len(hr))]
    assert len(hr) == int((130 - WINDOW_S) / HOP_S) + 1
    assert [m.captured_at for m in sp] == [m.captured_at for m in hr]
    for m in hr:
        t1 = m.captured_at - T0
        assert m.unit == "/min" and m.method == "gateway" and m.device_id == "w1"
        assert abs(m.value - rec.truth.hr_bpm(t1 - WINDOW_S, t1)) <= 2.0
        assert m.quality is not None and 0.7 <= m.quality <= 1.0
    for m in sp:
        assert m.unit == "%" and m.method == "gateway" and abs(m.value - 96.0) <= 2.0
    # AF screening at the 60 s cadence, sinus rhythm: label sinus, no burden
    assert len(af) == 2 and [round(m.captured_at - T0) for m in af] == [61, 121]
    for m in af:
        assert m.unit == "1" and m.method == "gateway" and m.value == 0.0
        assert m.extra["label"] == "sinus" and m.extra["window_s"] == 120.0 and m.extra["source"] == "ppg"
        assert m.extra["n_intervals"] >= 60
    assert s.counters.unusable_windows == 0 and s.counters.gaps == 0


def test_blocks_that_do_not_divide_the_hop_keep_the_cadence() -> None:
    """102-sample blocks at 102.4 Hz: a hop (512 samples for 5 s, 205 for the motion path's 2 s) is not a
    whole number of blocks. Its remainder carries over, so windows come every 5 s and 2 s on average, not
    every 6 s and 3 s (a hop reset to 0 at each window, as before, rounded every hop up to whole blocks)."""
    fs = 102.4
    rec = generate(160.0, hr_bpm=76.0, fs=fs, seed=23)
    s = WristStream("w1", motion_hr=True)
    rng = np.random.default_rng(23)
    acc = np.column_stack((np.zeros(len(rec)), np.zeros(len(rec)), np.ones(len(rec)))) + 0.3 * rng.standard_normal(
        (len(rec), 3)
    )
    for i in range(0, len(rec), 102):
        ch = {"ir": rec.ir[i : i + 102].tolist(), "red": rec.red[i : i + 102].tolist()}
        ch.update({a: acc[i : i + 102, k].tolist() for k, a in enumerate(("accel_x", "accel_y", "accel_z"))})
        s.push_waveform(Waveform("w1", T0 + i / fs, fs, ch, first_index=i))
    # 160 s: time-domain windows at 10, 15, ..., 160 s; motion windows at 8, 10, ..., 160 s (+-1 block)
    assert abs(s.counters.windows - (int((160 - WINDOW_S) / HOP_S) + 1)) <= 1, s.counters
    assert abs(s.counters.motion_windows - (int((160 - 8.0) / 2.0) + 1)) <= 1, s.counters


def test_oximeter_pleth_gives_heart_rate_but_no_spo2() -> None:
    rec = generate(40.0, hr_bpm=64.0, fs=60.0, seed=22)
    s = WristStream("ox")
    out = _feed(s, _blocks(rec, ("pleth",), block_s=1.0))
    assert _codes(out, LOINC_HR) and not _codes(out, LOINC_SPO2)
    for m in _codes(out, LOINC_HR):
        t1 = m.captured_at - T0
        assert abs(m.value - rec.truth.hr_bpm(t1 - WINDOW_S, t1)) <= 2.0


def test_desaturation_is_streamed() -> None:
    rec = generate(90.0, hr_bpm=70.0, spo2=97.0, seed=23, desaturations=[Desaturation(20.0, nadir=85.0, hold_s=20)])
    out = _feed(WristStream("w1"), _blocks(rec, ("red", "ir")))
    sp = _codes(out, LOINC_SPO2)
    assert len(sp) == 17
    for m in sp:
        i1 = round((m.captured_at - T0) * rec.fs)
        assert abs(m.value - float(np.mean(rec.truth.spo2[i1 - 1000 : i1]))) <= 2.0
    assert min(m.value for m in sp) <= 87.0


def test_af_is_screened_from_ppg_beats() -> None:
    rec = generate(200.0, hr_bpm=72.0, seed=24, af_episodes=[(0.0, 200.0)], af_hr_bpm=105.0)
    out = _feed(WristStream("w1"), _blocks(rec, ("red", "ir", "green")))
    af = _codes(out, CODE_AF)
    assert len(af) == 3
    assert all(m.extra["label"] == "af" and m.value >= 0.8 for m in af[1:])  # a full 2-minute window of AF
    assert af[0].extra["label"] == "af"


@pytest.mark.data
@pytest.mark.skipif(not datasets.available(), reason="../shared/data recordings not present")
def test_a_few_usable_seconds_of_wrist_ppg_in_sinus_rhythm_are_not_screened_as_af() -> None:
    """Real wrist PPG on an exercise bike, sinus rhythm by the ECG (bench/dsp_eval_wrist): the wrist is
    still enough for a few windows' beats, which a pedalling body makes irregular. A 120 s screen that
    holds 12-13 s of them said 'af' with a burden of 1 (the majority rule of a short recording); it now
    counts the window's other time as unknown and says nothing, or not 'af'."""
    from bench.dsp_eval_wrist import stream_values

    for name in ("s2_high_resistance_bike", "s6_low_resistance_bike"):
        labels: list[str] = []
        reasons: dict[str, int] = {}
        stream_values(datasets.load_wrist(name), af_labels=labels, reasons=reasons)
        assert "af" not in labels, (name, labels)
        assert reasons.get("af-insufficient", 0) > 0, name  # screened, and found too little to say


@pytest.mark.data
@pytest.mark.skipif(not datasets.available(), reason="../shared/data recordings not present")
def test_still_windows_of_a_pedalling_wrist_get_values_with_the_motion_cancelled() -> None:
    """Real wrist PPG on an exercise bike (bench/dsp_eval_wrist's records, default stream): where the
    rest path refuses a still window's beats, the motion-cancelled estimate answers some, each within
    3.5 bpm of the ECG (s2_high_resistance_bike: 9 windows, the rest path's own 4 values there include
    two 26 and 31 bpm low)."""
    from bench.dsp_eval_wrist import record_blocks, reference_rate

    rec = datasets.load_wrist("s2_high_resistance_bike")
    s = WristStream(rec.name)
    got = [m for w in record_blocks(rec) for m in _codes(s.push_waveform(w), LOINC_HR)]
    rescued = [m for m in got if m.extra.get("motion_cancelled")]
    assert len(rescued) >= 5
    for m in rescued:
        ref = reference_rate(rec.beats_s, m.captured_at - WINDOW_S, m.captured_at)
        assert ref is not None and abs(m.value - ref) < 3.5, (m.captured_at, m.value, ref)


def test_artefacts_emit_nothing_and_break_the_beat_chain() -> None:
    rec = generate(140.0, hr_bpm=80.0, seed=25, motion=[(30.0, 55.0)], sensor_off=[(80.0, 100.0)])
    s = WristStream("w1")
    out = _feed(s, _blocks(rec, ("red", "ir", "green")))
    for m in out:
        if m.code in (LOINC_HR, LOINC_SPO2):
            t1 = m.captured_at - T0
            win = slice(round((t1 - WINDOW_S) * rec.fs), round(t1 * rec.fs))
            assert not rec.truth.motion[win].any() and not rec.truth.sensor_off[win].any(), t1
    assert s.counters.unusable_windows >= 8
    # no beat interval spans an artefact: every PPG interval is a true one
    rr = np.array([r for _, r in s.beat_intervals()])
    assert np.isnan(rr).any()
    finite = rr[np.isfinite(rr)]
    assert finite.min() > 0.5 and finite.max() < 1.0  # 80 /min sinus: 0.75 s +- variability


def test_a_gap_in_the_sample_counter_restarts_the_window() -> None:
    rec = generate(60.0, hr_bpm=70.0, seed=26)
    s = WristStream("w1")
    out = _feed(s, _blocks(rec, ("ir", "red"), skip=(20.0, 23.0)))
    hr = [round(m.captured_at - T0, 6) for m in _codes(out, LOINC_HR)]
    assert s.counters.gaps == 1
    # 10, 15, 20 before the gap; after it the window refills from 23 s: 33, 38, ...
    assert hr[:3] == [10.0, 15.0, 20.0] and hr[3] == 33.0
    assert all(abs(b - a - HOP_S) < 1e-6 for a, b in itertools.pairwise(hr[3:]))


def test_device_rr_feeds_af_screening_and_wins_over_ppg() -> None:
    af = generate(130.0, hr_bpm=100.0, rhythm="af", seed=27)
    s = WristStream("w1")
    out: list[Measurement] = []
    beats = af.truth.beat_times_s
    for k in range(1, len(beats), 2):  # a notification every two beats, like BLE HRS
        rr = np.diff(beats[max(0, k - 2) : k + 1]).tolist()
        out.extend(s.push_rr(BeatIntervals("w1", T0 + float(beats[k]), rr)))
    res = _codes(out, CODE_AF)
    assert len(res) == 2 and all(m.extra["source"] == "device" for m in res)
    assert res[-1].extra["label"] == "af" and res[-1].value >= 0.8
    sinus = generate(130.0, hr_bpm=62.0, seed=28)
    s2 = WristStream("w2")
    out2: list[Measurement] = []
    for k, t in enumerate(sinus.truth.beat_times_s[1:], start=1):
        out2.extend(s2.push_rr(BeatIntervals("w2", T0 + float(t), [float(sinus.truth.rr_s[k - 1])])))
    res2 = _codes(out2, CODE_AF)
    assert res2 and all(m.extra["label"] == "sinus" and m.value == 0.0 for m in res2)


def test_a_device_sending_too_few_rr_for_a_label_leaves_the_screen_to_the_ppg() -> None:
    """A device that puts RR in only a few notifications (5 intervals at the start of every minute, too
    few for a label) while its PPG covers every window: the screen falls back to the PPG's beats
    instead of staying insufficient on the device's."""
    rec = generate(300.0, hr_bpm=72.0, seed=29, af_episodes=[(0.0, 300.0)], af_hr_bpm=100.0)
    s = WristStream("w1")
    out: list[Measurement] = []
    n = round(rec.fs)
    for i in range(0, len(rec), n):
        t = i / rec.fs
        ch = {c: getattr(rec, c)[i : i + n].tolist() for c in ("red", "ir", "green")}
        out.extend(s.push_waveform(Waveform("w1", T0 + t, rec.fs, ch, first_index=i)))
        if round(t) % 60 == 5:
            for k in range(5):
                out.extend(s.push_rr(BeatIntervals("w1", T0 + t + 0.1 * k, [0.6 + 0.05 * k])))
    af = _codes(out, CODE_AF)
    assert len(af) == 4
    assert all(m.extra["source"] == "ppg" and m.extra["label"] == "af" for m in af)


def test_the_clock_going_back_drops_the_beats_timed_after_it() -> None:
    """Five minutes of AF from the device, then the clock steps back an hour and the rhythm is sinus:
    the screens after the step hold only beats of the new timeline (before, the AF beats timed an hour
    ahead stayed in the window and every screen said 'af' on the sinus rhythm)."""
    rng = np.random.default_rng(0)
    s = WristStream("w1")
    out: list[Measurement] = []
    for start, af in ((0.0, True), (-3600.0, False)):
        t = start
        while t < start + 300.0:
            r = float(rng.uniform(0.45, 1.1)) if af else 0.8 + float(rng.normal(0.0, 0.01))
            t += r
            out.extend(s.push_rr(BeatIntervals("w1", T0 + t, [r])))
    before = [m for m in _codes(out, CODE_AF) if m.captured_at > T0]
    after = [m for m in _codes(out, CODE_AF) if m.captured_at < T0]
    assert before and all(m.extra["label"] == "af" for m in before)
    assert len(after) >= 3 and all(m.extra["label"] == "sinus" for m in after)
    assert all(m.extra["n_intervals"] <= AF_WINDOW_S / 0.75 for m in after)  # one window of 0.8 s beats


def test_after_a_long_disconnection_the_af_cadence_starts_again() -> None:
    """Five minutes without data (the wrist out of range): the first screen after it spans the time
    since the data came back, as the stream's very first does, and is not refused for the window's
    minutes before that."""
    rec = generate(900.0, hr_bpm=72.0, seed=6)
    s = WristStream("w1")
    out: list[Measurement] = []
    n = round(rec.fs)
    for i in range(0, len(rec), n):
        t = i / rec.fs
        if 300.0 <= t < 600.0:
            continue
        ch = {c: getattr(rec, c)[i : i + n].tolist() for c in ("red", "ir", "green")}
        out.extend(s.push_waveform(Waveform("w1", T0 + t, rec.fs, ch, first_index=i)))
    after = [m.captured_at - T0 for m in _codes(out, CODE_AF) if m.captured_at - T0 > 600.0]
    assert after and after[0] <= 600.0 + AF_HOP_S + 2.0
    assert "af-insufficient" not in s.counters.reasons


def test_device_rr_gap_is_not_an_interval() -> None:
    s = WristStream("w1")
    t = T0
    for _ in range(60):
        t += 0.8
        s.push_rr(BeatIntervals("w1", t, [0.8]))
    t += 30.0  # 30 s without notifications (out of range)
    s.push_rr(BeatIntervals("w1", t, [0.8]))
    rr = [r for _, r in s.beat_intervals("device")]
    assert sum(math.isnan(r) for r in rr) == 1 and max(r for r in rr if not math.isnan(r)) == 0.8


def test_motion_channels_mark_at_rest() -> None:
    rec = generate(30.0, hr_bpm=70.0, seed=29)
    s = WristStream("w1")
    out: list[Measurement] = []
    for w in _blocks(rec, ("ir", "red")):
        i = w.first_index
        n = len(w.channels["ir"])
        acc = {f"accel_{a}": rec.accel[i : i + n, k].tolist() for k, a in enumerate("xyz")}
        out.extend(s.push_waveform(Waveform(w.device_id, w.captured_at, w.fs, {**w.channels, **acc}, w.first_index)))
    hr = _codes(out, LOINC_HR)
    assert hr and all(m.extra["at_rest"] is True for m in hr)


@pytest.mark.parametrize(
    "w",
    [
        Waveform("w1", T0, 0.0, {"ir": [1.0] * 100}),
        Waveform("w1", T0, math.nan, {"ir": [1.0] * 100}),
        Waveform("w1", math.nan, 100.0, {"ir": [1.0] * 100}),
        Waveform("w1", T0, 100.0, {}),
        Waveform("w1", T0, 100.0, {"temperature": [36.0] * 100}),
        Waveform("w1", T0, 100.0, {"ir": [1.0] * 100, "red": [1.0] * 99}),
        Waveform("w1", T0, 100.0, {"ir": []}),
    ],
)
def test_unusable_blocks_are_counted_not_raised(w: Waveform) -> None:
    s = WristStream("w1")
    assert s.push_waveform(w) == [] and s.counters.rejected_blocks == 1


@settings(max_examples=80, deadline=None)
@given(
    blocks=st.lists(
        st.tuples(
            st.integers(-5, 400),  # first_index jitter
            st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=300),
            st.sampled_from([25.0, 60.0, 100.0]),
            st.sampled_from([("pleth",), ("ir",), ("red", "ir"), ("green",), ("red", "ir", "green")]),
        ),
        max_size=12,
    ),
    rrs=st.lists(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4), max_size=20),
)
def test_random_streams_never_raise(
    blocks: list[tuple[int, list[float], float, tuple[str, ...]]], rrs: list[list[float]]
) -> None:
    s = WristStream("w1")
    t = T0
    index = 0
    for jitter, values, fs, names in blocks:
        ch = {c: values for c in names}
        for m in s.push_waveform(Waveform("w1", t, fs, ch, first_index=index + jitter)):
            assert math.isfinite(m.value) and m.method == "gateway"
        index += jitter + len(values)
        t += max(len(values), 1) / fs
    for rr in rrs:
        t += 1.0
        for m in s.push_rr(BeatIntervals("w1", t, rr)):
            assert 0.0 <= m.value <= 1.0


def test_af_cadence_constant_is_documented() -> None:
    assert AF_HOP_S == 60.0 and HOP_S == 5.0 and WINDOW_S == 10.0


def test_a_gap_bridged_next_to_a_non_finite_sample_warns_of_nothing() -> None:
    # found by test_random_streams_never_raise: inf - inf in the interpolation raised a RuntimeWarning
    s = WristStream("w1")
    s.push_waveform(Waveform("w1", T0, 25.0, {"pleth": [1.0, math.inf]}, first_index=0))
    assert s.push_waveform(Waveform("w1", T0 + 0.12, 25.0, {"pleth": [0.0, 1.0]}, first_index=3)) == []
    assert s.counters.bridged == 1
