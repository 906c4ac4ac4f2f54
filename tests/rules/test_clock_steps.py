"""The rules on the clock's timeline: a step of the wall clock either way, and a restart onto a clock that
is behind the last reading (issue 13). The engine is fed as the care desk feeds it: readings moved onto
the timeline, events moved back onto the wall clock."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from drivers.base import ButtonPress, Reading
from gateway.care import CareDesk
from gateway.clock import Clock, Timeline
from gateway.config import RulesSection
from gateway.messages import Topics, rfc3339_ms
from gateway.outbox import NewMessage
from gateway.registry import Registry
from gateway.rules import AlertEvent, RuleEngine, WatchSettings, event_on_wall, reading_on_timeline
from gateway.rules.defaults import LOINC_SPO2
from tests.helpers import Hands
from tests.rules.util import T0, meas


class Desk:
    """The care desk's way of driving the engine (gateway/care.py), on a timeline."""

    def __init__(self, engine: RuleEngine, timeline: Timeline, hands: Hands) -> None:
        self.e, self.tl, self.h = engine, timeline, hands

    def shift(self) -> float:
        return self.tl.now() - self.h.wall()

    def feed(self, r: Reading) -> list[AlertEvent]:
        return [
            event_on_wall(ev, self.shift()) for ev in self.e.feed(reading_on_timeline(r, self.shift()), self.tl.now())
        ]

    def tick(self, *, uplink_down_since: float | None = None) -> list[AlertEvent]:
        now = self.tl.now()
        evs = self.e.set_uplink_down(uplink_down_since, now) + self.e.tick(now)
        return [event_on_wall(ev, self.shift()) for ev in evs]


def new_engine(h: Hands) -> RuleEngine:
    e = RuleEngine(WatchSettings(timezone="UTC", no_data_day_s=3600.0, uplink_down_s=600.0))
    e.set_device("wrist-1", h.wall(), worn=True)
    return e


def desaturation(desk: Desk, h: Hands, seconds: int, value: float = 82.0) -> list[AlertEvent]:
    out: list[AlertEvent] = []
    for _ in range(seconds):
        h.tick(1.0)
        out += desk.feed(meas(LOINC_SPO2, value, h.wall()))
    return out


def saved_engine_and_timeline(tmp_path: Path, h: Hands) -> tuple[dict[str, object], Path]:
    path = tmp_path / "clock.json"
    tl = Timeline(path, boot_id="boot-1", wall=h.wall, boot=h.boot)
    desk = Desk(new_engine(h), tl, h)
    assert desaturation(desk, h, 120, value=97.0) == []
    tl.save(force=True)
    return desk.e.snapshot(), path


def test_after_a_restart_on_a_clock_30_min_behind_a_desaturation_raises_spo2_low(tmp_path: Path) -> None:
    for boot_id in ("boot-1", "boot-2"):  # the daemon restarted, or the whole gateway rebooted
        h = Hands(T0, 30.0)
        snap, path = saved_engine_and_timeline(tmp_path, h)
        last_reading = h.wall()
        h.w -= 1800.0  # the clock is now half an hour behind the last reading
        if boot_id == "boot-2":
            h.b = 20.0
        tl = Timeline(path, boot_id=boot_id, wall=h.wall, boot=h.boot)
        e = new_engine(h)
        e.restore(snap, tl.now())
        desk = Desk(e, tl, h)
        events = desaturation(desk, h, 300)
        raised = [ev for ev in events if ev.state == "raised"]
        assert [ev.kind for ev in raised] == ["spo2_low"], boot_id
        assert e.counters().out_of_order == 0, boot_id
        # the alert keeps the wall clock's times (the outbox corrects them once the clock is synchronised)
        assert raised[0].started_at < last_reading and abs(raised[0].at - (raised[0].started_at + 60)) < 1.5


def test_a_step_backwards_keeps_readings_in_order_and_holds_running(tmp_path: Path) -> None:
    h = Hands(T0, 30.0)
    desk = Desk(new_engine(h), Timeline(None, boot_id="b", wall=h.wall, boot=h.boot), h)
    first = desaturation(desk, h, 30)
    h.w -= 7200.0  # two hours back, in the middle of the hold
    second = desaturation(desk, h, 40)
    assert first == [] and [ev.kind for ev in second if ev.state == "raised"] == ["spo2_low"]
    assert desk.e.counters().out_of_order == 0
    ev = next(ev for ev in second if ev.state == "raised")
    assert abs(ev.at - h.wall() + 10) < 1.5, "the transition carries the wall clock's time at that moment"


def test_a_step_forwards_by_days_fires_no_watch_reminder_or_escalation_by_itself(tmp_path: Path) -> None:
    h = Hands(T0, 30.0)
    desk = Desk(new_engine(h), Timeline(None, boot_id="b", wall=h.wall, boot=h.boot), h)
    raised = desaturation(desk, h, 70)
    assert [ev.kind for ev in raised if ev.state == "raised"] == ["spo2_low"]
    down_since = desk.tl.now()
    assert desk.tick(uplink_down_since=down_since) == []
    h.w += 3 * 86400.0  # the clock jumps three days ahead
    h.tick(5.0)
    assert desk.tick(uplink_down_since=down_since) == [], "no no_data, uplink_down, reminder or escalation"
    assert [ev.kind for ev in desaturation(desk, h, 5)] == [], "live readings continue the running alert"
    h.tick(3700.0)  # real silence still counts, and so does real time for reminders
    later = desk.tick(uplink_down_since=down_since)
    assert {ev.kind for ev in later if ev.state == "raised"} == {"no_data", "uplink_down"}
    assert [ev.kind for ev in later if ev.state == "reminder"] == ["spo2_low"]


def _no_alert(_msg: NewMessage) -> asyncio.Future[int]:
    raise AssertionError("no care alert expected")


def care_desk(tmp_path: Path) -> tuple[Hands, Clock, Timeline, CareDesk]:
    """The daemon's care desk on hands: its timeline, and the clock whose steps it follows."""
    h = Hands(T0, 30.0)
    clock = Clock(sync=h.sync, wall=h.wall, boot=h.boot, boot_id="b")
    clock.sample()
    tl = Timeline(None, boot_id="b", wall=h.wall, boot=h.boot)
    desk = CareDesk(
        RulesSection(),
        Topics("homecare/v1", "gw"),
        _no_alert,
        Registry(tmp_path / "registry.json"),
        clock=tl,
        wall=h.wall,
        step_since=clock.step_since,
    )
    return h, clock, tl, desk


def test_the_care_desk_puts_what_was_read_just_before_a_step_where_it_was_read(tmp_path: Path) -> None:
    """The daemon's care desk, on the clock's timeline: a reading and an SOS press whose times were read
    just before the wall clock stepped, and that reach the desk after it (seen by the clock or not yet),
    enter the timeline where they were read, not the step away (where they would be out of order, and
    the press two hours old)."""
    h, clock, tl, desk = care_desk(tmp_path)
    for _ in range(30):
        h.tick(1.0)
        desk.feed(meas(LOINC_SPO2, 97.0, h.wall()))
    read = h.wall()
    h.tick(0.5)
    h.w += 7200.0  # a step forwards, not sampled yet
    desk.feed(meas(LOINC_SPO2, 97.0, read + 0.1))
    desk.sos("sos-p-1", "p", read + 0.2)
    clock.sample()
    h.tick(0.5)
    desk.feed(meas(LOINC_SPO2, 97.0, read + 0.3))  # after the clock saw the step
    desk.feed(meas(LOINC_SPO2, 97.0, h.wall()))
    counters = desk.engine.counters()
    assert counters.readings == 33 and counters.out_of_order == 0
    (sos,) = desk.engine.open_alerts()
    assert abs(sos.started_at - (tl.now() - 0.8)) < 1e-6, "the press on the timeline where it was read"
    desk.close()


def test_a_call_request_read_just_before_a_step_starts_when_it_was_pressed(tmp_path: Path) -> None:
    """A call button's press read just before the wall clock stepped 2 h ahead, and a second press
    10 s later: the request's start is the first press on the clock of after the step, not 2 h before
    its presses."""
    h, clock, _tl, desk = care_desk(tmp_path)
    read = h.wall()
    h.tick(0.5)
    h.w += 7200.0  # not sampled yet
    first, _ = desk.call(ButtonPress("pendant", read, "p1", role="call"), False)
    clock.sample()
    h.tick(10.0)
    second, msg = desk.call(ButtonPress("pendant", h.wall(), "p2", role="call"), False)
    body = json.loads(msg.body)
    assert second == first and body["presses"] == 2
    assert body["started_at"] == rfc3339_ms(read + 7200.0)
    desk.close()
