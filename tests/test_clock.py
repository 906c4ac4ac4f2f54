"""The clock component: the sans-I/O core on samples, the timeline across restarts, the real readers."""

from __future__ import annotations

import time
from pathlib import Path

from gateway.clock import (
    TIMELINE_MARGIN_S,
    Clock,
    ClockCore,
    ClockState,
    Sample,
    SyncVerdict,
    Timeline,
    boottime,
    file_sync,
    kernel_clock_synchronised,
    read_boot_id,
    system_sync,
)
from tests.helpers import Hands


def test_core_sees_steps_both_ways_and_the_first_synchronisation() -> None:
    core = ClockCore()
    assert core.observe(Sample(1000.0, 10.0, False)) == []
    assert core.observe(Sample(1001.0005, 11.0, False)) == [], "a slew of 0.5 ms/s is no step"
    back = core.observe(Sample(1002.0 - 3600, 12.0, False))
    assert [e.kind for e in back] == ["step"] and round(back[0].delta_s) == -3600
    assert not back[0].corrects, "a step of an untrusted clock corrects nothing"
    ev = core.observe(Sample(1003.0 + 7200, 13.0, True))
    assert [e.kind for e in ev] == ["step", "synchronised"]
    assert round(ev[0].delta_s) == 10800 and not ev[0].corrects and ev[1].corrects
    assert ev[1].offset == 1003.0 + 7200 - 13.0
    fwd = core.observe(Sample(1004.0 + 7200 + 86400 * 3, 14.0, True))
    assert [e.kind for e in fwd] == ["step"] and fwd[0].corrects, "a step while synchronised corrects"
    lost = core.observe(Sample(1005.0 + 7200 + 86400 * 3, 15.0, False))
    assert [e.kind for e in lost] == ["lost"] and core.steps == 3


def test_stamp_keeps_the_age_on_the_boot_clock_and_the_state() -> None:
    h = Hands()
    clock = Clock(sync=h.sync, wall=h.wall, boot=h.boot, boot_id="b1")
    clock.sample()
    s = clock.stamp(h.w - 2.0)
    assert (s.boot_id, s.boot_s, s.state) == ("b1", h.b - 2.0, ClockState.UNSYNCED)
    assert clock.stamp(h.w, device_clock=True).state is ClockState.DEVICE
    h.synced = True
    events = clock.sample()
    assert [e.kind for e in events] == ["synchronised"] and clock.synchronised()
    assert clock.stamp(h.w).state is ClockState.SYNCED
    assert clock.status()["synchronised"] is True and clock.status()["source"] == "test"


def test_stamp_puts_a_time_read_before_a_step_on_the_boot_clock_with_the_offset_that_read_it() -> None:
    h = Hands()
    clock = Clock(sync=h.sync, wall=h.wall, boot=h.boot, boot_id="b1")
    clock.sample()
    read, read_boot = h.w, h.b
    h.tick(0.5)
    h.w += 7200  # a step forwards, not sampled yet
    h.tick(0.3)
    late = clock.stamp(read - 0.8)  # read 0.8 s before the step's side of it (frames of a delayed read)
    assert abs(late.boot_s - (read_boot - 0.8)) < 1e-6 and late.state is ClockState.UNSYNCED
    assert abs(clock.stamp(h.w - 0.1).boot_s - (h.b - 0.1)) < 1e-6, "read after the step: today's offset"
    h.synced = True
    assert [e.kind for e in clock.sample()] == ["step", "synchronised"]
    h.tick(1.0)
    stale = clock.stamp(read)  # a window that began before the step, handed over after the clock saw it
    assert abs(stale.boot_s - read_boot) < 1e-6 and stale.state is ClockState.UNSYNCED, "it needs a correction"
    now = clock.stamp(h.w)
    assert abs(now.boot_s - h.b) < 1e-6 and now.state is ClockState.SYNCED
    read, read_boot = h.w, h.b
    h.tick(0.2)
    h.w -= 3600  # a step backwards while synchronised, not sampled yet
    h.tick(0.2)
    s = clock.stamp(read)
    assert abs(s.boot_s - read_boot) < 1e-6 and s.state is ClockState.SYNCED, "the step's correction moves it"
    assert abs(clock.stamp(h.w).boot_s - h.b) < 1e-6
    assert [e.kind for e in clock.sample()] == ["step"]
    s = clock.stamp(read)
    assert abs(s.boot_s - read_boot) < 1e-6 and s.state is ClockState.UNSYNCED
    assert clock.stamp(h.w).state is ClockState.SYNCED
    assert abs(clock.stamp(h.w + 1e6).boot_s - (h.b + 1e6)) < 1e-6, "a time no offset explains: today's"


def test_step_since_moves_a_time_read_before_a_step_onto_todays_wall_clock() -> None:
    h = Hands()
    clock = Clock(sync=h.sync, wall=h.wall, boot=h.boot, boot_id="b1")
    clock.sample()
    read = h.w
    h.tick(0.5)
    assert clock.step_since(read) == 0.0 and clock.step_since(h.w) == 0.0
    h.w += 0.3  # NTP's slew over many samples, then a sample: no step
    clock.sample()
    assert clock.step_since(read) == 0.0
    h.w += 7200  # a step forwards, not sampled yet
    h.tick(0.3)
    assert abs(clock.step_since(read) - 7200) < 1e-6, "read before the step: moved by it"
    assert clock.step_since(h.w - 0.1) == 0.0, "read after it: where it is"
    clock.sample()
    h.tick(1.0)
    assert abs(clock.step_since(read) - 7200) < 1e-6, "the same once the clock has seen the step"
    h.w -= 3600
    clock.sample()
    assert abs(clock.step_since(read) - 3600) < 1e-6, "two steps: both"
    assert clock.step_since(h.w) == 0.0


def test_timeline_never_jumps_with_the_wall_clock_and_continues_in_the_same_boot(tmp_path: Path) -> None:
    h = Hands()
    path = tmp_path / "clock.json"
    tl = Timeline(path, boot_id="b1", wall=h.wall, boot=h.boot)
    t0 = tl.now()
    assert t0 == h.w
    h.tick(10)
    h.w -= 1800  # the wall clock steps back half an hour
    assert tl.now() == t0 + 10
    h.w += 86400 * 3  # and forwards by days
    h.tick(5)
    assert tl.now() == t0 + 15
    tl.save(force=True)
    h.tick(20)
    again = Timeline(path, boot_id="b1", wall=h.wall, boot=h.boot)
    assert again.now() == t0 + 35, "a restart in the same boot continues exactly"


def test_timeline_after_a_new_boot_starts_past_the_last_saved_point_or_at_a_later_wall_clock(tmp_path: Path) -> None:
    h = Hands()
    path = tmp_path / "clock.json"
    tl = Timeline(path, boot_id="b1", wall=h.wall, boot=h.boot)
    last = tl.now()
    tl.save(force=True)
    behind = Hands(wall=h.w - 1800, boot=5.0)  # the power cut: the clock is 30 min behind the last save
    t2 = Timeline(path, boot_id="b2", wall=behind.wall, boot=behind.boot)
    assert t2.now() == last + TIMELINE_MARGIN_S
    ahead = Hands(wall=h.w + 7200, boot=5.0)
    assert Timeline(path, boot_id="b3", wall=ahead.wall, boot=ahead.boot).now() == h.w + 7200
    path.write_text("{not json")
    assert Timeline(path, boot_id="b4", wall=behind.wall, boot=behind.boot).now() == behind.w


def test_real_readers_answer() -> None:
    kernel = kernel_clock_synchronised()
    assert kernel is None or isinstance(kernel[0], bool)
    verdict = system_sync()
    assert verdict.source in ("adjtimex", "timesyncd-flag", "none")
    assert len(read_boot_id()) == 36
    a = boottime()
    time.sleep(0.01)
    assert boottime() > a


def test_file_verdict_is_read_at_every_sample(tmp_path: Path) -> None:
    f = tmp_path / "sync"
    reader = file_sync(f)
    assert reader() == SyncVerdict(False, f"file:{f}"), "no file: not synchronised"
    f.write_text("synced\n")
    assert reader().synchronised
    f.write_text("unsynced")
    assert not reader().synchronised
