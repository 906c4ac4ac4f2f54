"""The sans-I/O parts of the BLE drivers: SOS press counting and raw PPG block assembly."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.ble import gatt
from drivers.ble.sos import PressTracker
from drivers.ble.wrist import PpgAssembler


def state(counter: int, alarm: bool = True) -> gatt.SosState:
    return gatt.SosState(counter & 0xFFFF, alarm, False, 90)


def test_repeats_are_one_press_and_a_jump_counts_missed_presses() -> None:
    t = PressTracker()
    assert t.update(state(5, alarm=False), 100.0) is None  # first sighting, no alarm: just learn
    p = t.update(state(6), 101.0)
    assert p is not None and (p.press_id, p.presses) == ("100-6", 1)
    assert all(t.update(state(6), 101.0 + i) is None for i in range(20))  # the advert repeats
    p = t.update(state(9), 130.0)
    assert p is not None and (p.press_id, p.presses) == ("100-9", 3)


def test_counter_wraps_and_battery_change_starts_a_series() -> None:
    t = PressTracker(last_counter=0xFFFF, series=7)
    p = t.update(state(0x0001), 10.0)
    assert p is not None and p.presses == 2 and p.press_id == "7-1"
    assert t.update(state(0, alarm=False), 20.0) is None  # new battery: counter 0, no press
    assert t.series == 20
    p = t.update(state(1), 21.0)
    assert p is not None and p.press_id == "20-1"


def test_first_sighting_during_an_alarm_is_a_press_and_state_survives_json() -> None:
    t = PressTracker()
    p = t.update(state(3), 50.0)
    assert p is not None and p.press_id == "50-3"
    again = PressTracker.from_json(t.to_json())
    assert again.update(state(3), 60.0) is None  # a restarted gateway does not raise it twice
    assert PressTracker.from_json({"last_counter": "x", "series": 1}) == PressTracker()


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFF), st.lists(st.tuples(st.integers(0, 5), st.integers(1, 4)), max_size=60))
def test_every_press_is_counted_once_whatever_adverts_are_heard(start: int, steps: list[tuple[int, int]]) -> None:
    """``(presses, repeats)``: the pendant is pressed ``presses`` times (only the last advert heard),
    then its advertisement is heard ``repeats`` times. Total presses reported = total presses made,
    and press ids never repeat."""
    t = PressTracker(last_counter=start, series=1)
    counter, made, reported, ids = start, 0, 0, set()
    for presses, repeats in steps:
        counter = (counter + presses) & 0xFFFF
        made += presses
        for _ in range(repeats):
            p = t.update(state(counter), 5.0)
            if p is not None:
                reported += p.presses
                assert p.press_id not in ids
                ids.add(p.press_id)
    # a counter landing on 0 looks like a new battery: the wrap through 0 is the one lossy case
    if not any(((start + sum(s[0] for s in steps[: i + 1])) & 0xFFFF) == 0 for i in range(len(steps))):
        assert reported == made


def frame(counter: int, n: int, fs: float = 100.0) -> gatt.PpgFrame:
    return gatt.PpgFrame(fs, counter & 0xFFFFFFFF, {"red": tuple(range(n)), "ir": tuple(range(n))})


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.lists(st.integers(1, 12), min_size=1, max_size=120),
    st.lists(st.integers(0, 119), max_size=5),
)
def test_ppg_blocks_cover_every_sample_once_in_order(start: int, sizes: list[int], lost: list[int]) -> None:
    asm = PpgAssembler("w", block_s=0.25)
    counter, t, out, sent, dropped = start, 1000.0, [], 0, 0
    for i, n in enumerate(sizes):
        t += n / 100.0
        if i in lost and 0 < i < len(sizes) - 1:
            dropped += n  # this frame never arrives
        else:
            out += asm.feed(frame(counter, n), t)
            sent += n
        counter += n
    out += asm.flush()
    assert sum(len(w.channels["ir"]) for w in out) == sent
    for a, b in itertools.pairwise(out):
        assert b.first_index >= a.first_index + len(a.channels["ir"])  # ordered, never overlapping
        assert b.captured_at > a.captured_at
    assert out[0].first_index == start
    assert asm.stats.gap_samples == dropped
    assert all(w.fs == 100.0 and set(w.channels) == {"red", "ir"} for w in out)


def test_ppg_stale_frames_are_dropped_and_a_restart_is_followed() -> None:
    asm = PpgAssembler("w", block_s=10.0)
    asm.feed(frame(1000, 10), 1.0)
    asm.feed(frame(1010, 10), 1.1)
    assert asm.feed(frame(1005, 10), 1.2) == [] and asm.stats.stale_frames == 1
    asm.new_session()
    for k in range(4):  # the device rebooted: its counter starts again at 0
        asm.feed(frame(10 * k, 10), 2.0 + 0.1 * k)
    assert asm.stats.restarts == 1
    blocks = asm.flush()
    assert blocks and blocks[-1].first_index == 0 and len(blocks[-1].channels["red"]) == 40
