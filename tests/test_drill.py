"""Drills cannot hide an emergency (gateway.drill), and stale cloud commands are refused (gateway.downlink)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from drivers.base import ButtonPress
from gateway.clock import Clock, Timeline
from gateway.commands import DrillLog
from gateway.config import load_config
from gateway.ctl import call as ctl_call
from gateway.downlink import Downlink
from gateway.drill import MAX_DRILL_S, DrillWindow
from gateway.messages import Topics, rfc3339_ms
from gateway.outbox import Outbox
from gateway.pipeline import Pipeline
from simulators.broker import Mosquitto
from simulators.rfxtrx_sim import RfxtrxSimulator
from tests.helpers import Cloud, Collector, GatewayProcess, Hands, gateway_config, rfxtrx_device, until
from tests.test_downlink import handled


def test_first_press_of_each_named_button_is_the_drill_and_every_other_press_is_real() -> None:
    w = DrillWindow()
    w.open(1000.0, 600, ["sos-hall", "sos-bed"])
    assert w.judge("a1", "sos-hall", 1001.0) is True
    assert w.judge("a2", "sos-hall", 1004.0) is False, "a second press 3 s later is real"
    assert w.judge("a3", "sos-kitchen", 1005.0) is False, "a button the care centre did not name is real"
    assert w.waiting_for() == ["sos-bed"]
    assert w.judge("a4", "sos-bed", 1010.0) is True
    assert not w.active(1010.5), "the window ends when every named button has pressed"
    assert w.judge("a5", "sos-bed", 1011.0) is False
    assert set(w.drill_alerts) == {"a1", "a4"}


def test_the_window_ends_at_its_time_and_lasts_at_most_30_minutes() -> None:
    w = DrillWindow()
    w.open(0.0, 7200, ["sos-1"])
    assert w.until == MAX_DRILL_S
    assert w.judge("a1", "sos-1", MAX_DRILL_S + 1.0) is False
    every = DrillWindow()
    every.open(0.0, 60, None)  # every button: said explicitly by the command
    assert every.judge("b1", "x", 1.0) and every.judge("b2", "y", 2.0)
    assert not every.judge("b3", "x", 3.0), "even with every button named, a second press is real"
    assert not every.judge("b4", "z", 61.0)
    assert every.waiting_for() is None


def test_a_stored_window_survives_a_restart_and_garbage_opens_none() -> None:
    w = DrillWindow()
    w.open(100.0, 300, ["a", "b"])
    w.judge("x", "a", 101.0)
    again = DrillWindow.from_json(json.loads(json.dumps(w.to_json())))
    assert again.active(102.0) and again.waiting_for() == ["b"]
    assert not again.judge("y", "a", 103.0)
    for junk in (None, 5, {"until": "soon"}, {"until": 1e12, "started": 0, "buttons": "all", "pressed": []}):
        assert not DrillWindow.from_json(junk).active(1.0)


def test_a_stored_window_never_lasts_longer_than_a_drill_may_nor_opens_late() -> None:
    """A stored window longer than MAX_DRILL_S ends MAX_DRILL_S after its start. One stored by a release
    that kept it on the wall clock, read on a timeline 2 h behind the wall clock, has not started yet: it is
    not active now, so the daemon does not restore it (a drill is never opened 2 h late). One stored on
    the timeline is read as it is."""
    long = DrillWindow.from_json({"until": 1e12, "started": 100.0, "buttons": None, "pressed": []})
    assert long.until == 100.0 + MAX_DRILL_S and not long.active(100.0 + MAX_DRILL_S + 1)
    wall = 1_800_000_000.0
    now = wall - 7200  # the timeline
    legacy = {"until": wall + 200, "started": wall - 100, "buttons": ["a", "b"], "pressed": ["a"]}
    assert not DrillWindow.from_json(legacy).active(now)
    fresh = DrillWindow()
    fresh.open(now - 100, 300, ["a", "b"])
    again = DrillWindow.from_json(json.loads(json.dumps(fresh.to_json())))
    assert again.active(now) and (again.started, again.until) == (fresh.started, fresh.until)


class _Store:
    def __init__(self) -> None:
        self.replies: dict[str, dict[str, Any]] = {}

    def get_reply(self, request_id: str) -> dict[str, Any] | None:
        return self.replies.get(request_id)

    def put_reply(self, request_id: str, reply: Any) -> None:
        self.replies[request_id] = dict(reply)


def _downlink(now: float, synchronised: bool, calls: list[str]) -> Downlink:
    async def status(_args: Any) -> dict[str, Any]:
        calls.append("status")
        return {}

    async def broken(_args: Any) -> dict[str, Any]:
        raise AttributeError("'NoneType' object has no attribute 'x'")

    return Downlink(
        "gw-1",
        {"status": status, "drill": broken},
        _Store(),
        clock=lambda: now,
        clock_synchronised=lambda: synchronised,
        max_age_s=300,
    )


def test_a_command_older_than_max_age_by_a_synchronised_clock_is_refused_as_expired() -> None:
    now = 1_800_000_000.0
    calls: list[str] = []

    async def go() -> list[dict[str, Any]]:
        dl = _downlink(now, True, calls)
        out = []
        for rid, sent in (("fresh", now - 10), ("stale", now - 3600), ("none", None)):
            body: dict[str, Any] = {"request_id": rid}
            if sent is not None:
                body["sent_at"] = rfc3339_ms(sent)
            out.append((await handled(dl, "status", json.dumps(body).encode()))[1])
        unsynced = _downlink(now, False, calls)
        stale = {"request_id": "stale-2", "sent_at": rfc3339_ms(now - 3600)}
        out.append((await handled(unsynced, "status", json.dumps(stale).encode()))[1])
        bad = {"request_id": "bad-time", "sent_at": "yesterday"}
        out.append((await handled(dl, "status", json.dumps(bad).encode()))[1])
        return out

    fresh, stale, none, unsynced, bad = asyncio.run(go())
    assert fresh["ok"] and none["ok"]
    assert not stale["ok"] and stale["error"]["code"] == "expired" and stale["error"]["key"] == "sent_at"
    assert unsynced["ok"], "with the clock not synchronised the age cannot be judged"
    assert not bad["ok"] and bad["error"]["code"] == "invalid"
    assert calls == ["status", "status", "status"]


def test_a_bug_in_a_command_handler_is_replied_as_failed_and_counted() -> None:
    async def go() -> dict[str, Any]:
        dl = _downlink(0.0, False, [])
        reply = (await handled(dl, "drill", json.dumps({"request_id": "d1", "buttons": ["x"]}).encode()))[1]
        assert dl.bugs.count == 1
        return reply

    reply = asyncio.run(go())
    assert not reply["ok"] and reply["error"]["code"] == "failed"
    assert "AttributeError" in reply["error"]["reason"]


def test_journal_lines_carry_the_syslog_priority_of_their_level() -> None:
    import logging

    from gateway.daemon import JournalFormatter

    fmt = JournalFormatter()
    expected = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
    for level, prio in expected.items():
        record = logging.LogRecord("gateway.pipeline", level, __file__, 1, "device %s: SOS press", ("sos-1",), None)
        assert fmt.format(record) == f"<{prio}>gateway.pipeline: device sos-1: SOS press"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = fmt.format(record).splitlines()
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines), "a traceback stays at its priority"


def test_the_units_stop_timeout_is_just_above_the_daemons_own_limit() -> None:
    from pathlib import Path

    from gateway.daemon import STOP_LIMIT_S

    unit = (Path(__file__).resolve().parents[1] / "systemd" / "gatewayd.service").read_text()
    line = next(line for line in unit.splitlines() if line.startswith("TimeoutStopSec="))
    value = float(line.removeprefix("TimeoutStopSec=").removesuffix("s"))
    assert STOP_LIMIT_S < value <= STOP_LIMIT_S + 2


# -- a drill of a call button (issue 14): its first press is a drill call request ------------------------


def test_a_drill_of_a_call_button_end_to_end(tmp_path: Path, broker: Mosquitto, cloud: Collector) -> None:
    """Real gatewayd, a real pty receiver with an SOS sensor and a call sensor: the drill names the call
    button; its first press is a drill call request (timed to the broker and to the ack), its second a
    real request of its own, and the SOS button's press a real SOS."""
    link = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_DRILL-if00-port0"
    buttons = {"a1b2c3": "sos-1", "d4e5f6": "call-1"}
    devices = rfxtrx_device(link, buttons, roles={"d4e5f6": "call"}, extra="repeat_window_s = 0.3")
    config = gateway_config(tmp_path, broker.port, devices=devices)
    gw = GatewayProcess(config)
    downlink = Cloud(broker.port, "homecare/v1/gw-test")
    socket_path = load_config(config).gateway.socket_path

    def calls() -> list[dict[str, Any]]:
        return sorted((a for a in cloud.of_type("alert") if a["kind"] == "call"), key=lambda a: a["seq"])

    async def go() -> dict[str, Any]:
        async with RfxtrxSimulator(link) as sim:
            gw.start()
            try:
                await until(lambda: sim.started, 20, "the daemon to start the receiver")
                opened = await asyncio.to_thread(ctl_call, socket_path, "drill", duration_s=60, buttons=["call-1"])
                assert opened["buttons"] == ["call-1"]
                await sim.press(0xD4E5F6, repeats=3, gap_s=0.02)
                await until(lambda: calls(), 20, "the drill call at the cloud")
                await asyncio.sleep(0.4)
                await sim.press(0xD4E5F6, repeats=3, gap_s=0.02)
                await until(lambda: len(calls()) == 2, 20, "the real call at the cloud")
                await sim.press(0xA1B2C3, repeats=3, gap_s=0.02)
                await until(lambda: [a for a in cloud.of_type("alert") if a["kind"] == "sos"], 20, "the SOS")
                _, ack = await asyncio.to_thread(
                    downlink.ask, "alert-ack", {"request_id": "ack-drill", "alert_id": calls()[0]["alert_id"]}
                )
                assert ack["ok"] is True
                report: dict[str, Any] = await asyncio.to_thread(ctl_call, socket_path, "drill-report")
                gw.terminate()
            finally:
                gw.stop_quietly()
                downlink.close()
        return report

    report = asyncio.run(go())
    drill, real = calls()
    (sos,) = [a for a in cloud.of_type("alert") if a["kind"] == "sos"]
    assert (drill["drill"], drill["presses"], drill["device_id"]) == (True, 1, "call-1")
    assert (real["drill"], real["presses"]) == (False, 1) and real["alert_id"] != drill["alert_id"]
    assert sos["drill"] is False
    (timed,) = report["presses"]
    assert timed["alert_id"] == drill["alert_id"]
    assert timed["press_to_broker_ms"] is not None and timed["press_to_ack_s"] is not None


def test_a_clock_step_back_inside_a_drill_window_does_not_make_it_last_longer(tmp_path: Path) -> None:
    """The window runs on the daemon's timeline: a wall clock stepping 10 min back in the middle of a
    15 min drill leaves its end where it was, so a press 100 s after that end is real (on the wall clock
    the window would have had 500 s left); a press inside it is still the drill press."""
    h = Hands(1_800_000_000.0, 100.0)
    clock = Clock(sync=h.sync, wall=h.wall, boot=h.boot, boot_id="b")
    clock.sample()
    timeline = Timeline(None, boot_id="b", wall=h.wall, boot=h.boot)

    async def go() -> Pipeline:
        async with Outbox(tmp_path / "outbox.sqlite3") as ob:
            p = Pipeline(Topics("homecare/v1", "gw"), ob, drill_time=lambda t: clock.to_timeline(t, timeline()))
            p.drill.open(timeline(), 900, ["sos-1", "sos-2"])
            h.tick(100)
            h.w -= 600  # the step back, seen by the clock
            clock.sample()
            h.tick(100)
            p.sink(ButtonPress("sos-1", h.wall(), "p-1"))  # 200 s into the drill
            h.tick(800)
            p.sink(ButtonPress("sos-2", h.wall(), "p-2"))  # 1,000 s: the drill ended 100 s ago
            await ob.flush()
        return p

    p = asyncio.run(go())
    assert set(p.drill.drill_alerts) == {"sos-sos-1-p-1"}, "the first press is the drill's, the second real"
    assert p.counters.sos_presses == 2


def test_a_drill_press_is_timed_on_the_timeline_when_the_wall_clock_steps_before_its_ack() -> None:
    """The drill log's press-to-broker and press-to-ack durations come from the daemon's timeline: a wall
    clock stepping an hour ahead between the press and the care centre's ack adds nothing to them; the
    report shows the press on the wall clock of the report (an hour later, as an SOS's fallback report does)."""
    h = Hands(1_800_000_000.0, 100.0)
    clock = Clock(sync=h.sync, wall=h.wall, boot=h.boot, boot_id="b")
    clock.sample()
    timeline = Timeline(None, boot_id="b", wall=h.wall, boot=h.boot)
    log = DrillLog()
    pressed = h.wall()
    h.tick(0.25)
    log.pressed("a-1", "sos-1", clock.to_timeline(pressed, timeline()))
    h.tick(0.15)
    log.delivered("a-1", timeline())
    h.w += 3600  # the step, seen by the clock
    clock.sample()
    h.tick(20.0)
    log.acknowledged("a-1", timeline())
    (report,) = (p.report(timeline() - h.wall()) for p in log.presses.values())
    assert report["press_to_broker_ms"] == pytest.approx(400.0, abs=1.0)
    assert report["press_to_ack_s"] == pytest.approx(20.4, abs=0.01)
    assert report["pressed_at"] == rfc3339_ms(pressed + 3600), "on the wall clock of the report, as the SOS reports"
