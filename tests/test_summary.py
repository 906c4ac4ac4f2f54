"""The daily summary (issue 14 part 3): a generated day through the real pipeline and outbox, every
figure against the generator's truth, computed here from the generator's own definitions; the summary
day, the schedule across clock steps and restarts, containment of failures.

The day (Asia/Shanghai, summary at 20:00: the window is 20:00 the evening before to 20:00) is built
minute by minute from a profile whose figures are known by construction: heart rate and SpO2 every
5 s from a wrist monitor, AF screens once a minute, three cuff readings, presses, alerts, battery and
link changes, readings of poor quality and out of range that must not count, a not-worn hour and a
half-hour out of range.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import json
import math
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drivers import codes
from drivers.base import ButtonPress, DeviceStatus, LinkState, Measurement, Reading
from gateway import messages
from gateway.clock import Clock
from gateway.config import parse_config
from gateway.contract import validator
from gateway.errors import ConfigError
from gateway.messages import Topics
from gateway.outbox import Outbox
from gateway.pipeline import Pipeline
from gateway.rules.engine import AlertEvent
from gateway.summary import (
    CODE_AF,
    RESTING_WINDOW_MIN,
    MinuteBin,
    Schedule,
    due_dates,
    format_text,
)
from gateway.summarydesk import SummaryDesk, build
from gateway.summarystore import SummaryStore
from tests.helpers import Hands

ZONE = "Asia/Shanghai"
TZ = zoneinfo.ZoneInfo(ZONE)
DATE = dt.date(2026, 11, 24)
START = dt.datetime(2026, 11, 23, 20, 0, tzinfo=TZ).timestamp()
END = START + 86400.0
TOPICS = Topics("homecare/v1", "gw-1")

CONFIG = f"""
[gateway]
id = "gw-1"
data_dir = "/tmp/unused"

[uplink]
host = "127.0.0.1"
tls = false

[[devices]]
id = "wrist-1"
kind = "ble-wrist"
address = "C0:FF:EE:00:00:01"

[[devices]]
id = "cuff-1"
kind = "ble-bp-cuff"
address = "C0:FF:EE:00:00:02"

[[devices]]
id = "sos-1"
kind = "ble-sos"
address = "C0:FF:EE:00:00:03"

[[devices]]
id = "sos-2"
kind = "ble-sos"
address = "C0:FF:EE:00:00:04"

[rules]
[[rules.person]]
id = "anna"
devices = ["wrist-1", "cuff-1", "sos-1"]
worn = ["wrist-1"]

[summary]
at = "20:00"
timezone = "{ZONE}"
retention_days = 7
"""

# -- the generator -------------------------------------------------------------------------------

NOT_WORN = range(1000, 1060)  # minutes of the window with the wristband off (connected, no data)
AWAY = range(1200, 1230)  # minutes with the wristband out of range (disconnected)
WALK = range(900, 960)  # brisk walk: moving, heart rate high
DEEP_SLEEP = range(300, 360)  # the lowest heart rate of the day, at rest
NIGHT = range(180, 660)
# per-reading offsets within a minute (12 readings, 5 s apart): zero mean, not on whole units
OFFSETS = (-1.3, -0.9, -0.6, -0.2, 0.2, 0.6, 0.9, 1.3, -0.4, 0.4, -0.1, 0.1)
SPO2_87 = range(400, 410)
SPO2_89 = range(410, 420)
HALF_DIP_MINUTE = 420  # half of its readings at 89.5 %
AF_MINUTES = {*range(200, 240), *range(246, 256), 800, 802}  # 800/802 with a sinus screen between: one episode
OTHER_MINUTES = range(500, 520)
BP = ((7 * 60 + 30, 131.0, 84.0, 100.0), (12 * 60 + 10, 125.0, 80.0, 95.0), (19 * 60, 128.0, 82.0, 97.0))


def minute_at(i: int, second: float = 0.0) -> float:
    return START + i * 60 + second


def hr_base(i: int) -> float:
    if i in DEEP_SLEEP:
        return 52.0
    if i in NIGHT:
        return 57.0
    if i in WALK:
        return 121.0
    return 72.0 + 6.0 * math.sin(i / 37.0)


def spo2_value(i: int, k: int) -> float:
    if i in SPO2_87:
        return 87.0
    if i in SPO2_89:
        return 89.0
    if i == HALF_DIP_MINUTE and k < 6:
        return 89.5
    return 96.0 + OFFSETS[k] * 0.7


def local(hhmm: int, day: dt.date = DATE) -> float:
    return dt.datetime.combine(day, dt.time(hhmm // 60, hhmm % 60), TZ).timestamp()


def call_press(device_id: str, at: float, press_id: str) -> ButtonPress:
    """A press of a "call the health butler" button."""
    return ButtonPress(device_id, at, press_id, role="call")


@dataclass
class Day:
    readings: list[Reading] = field(default_factory=list)
    hr: list[float] = field(default_factory=list)  # what must count
    spo2: list[float] = field(default_factory=list)
    af: list[tuple[float, bool]] = field(default_factory=list)  # (burden, label af)
    drills: list[ButtonPress] = field(default_factory=list)
    calls: list[ButtonPress] = field(default_factory=list)


def generate_day() -> Day:
    day = Day()
    r = day.readings
    w = "wrist-1"
    r.append(DeviceStatus(w, START - 3600, LinkState.CONNECTED, battery_percent=90))
    battery = {100: 85, 700: 60, 1300: 55, 1400: 57}
    for i in range(1440):
        if i == AWAY.start:
            r.append(DeviceStatus(w, minute_at(i), LinkState.DISCONNECTED, reason="out of range"))
        if i == AWAY.stop:
            r.append(DeviceStatus(w, minute_at(i), LinkState.CONNECTED, battery_percent=58))
        if i in battery:
            r.append(DeviceStatus(w, minute_at(i, 1), LinkState.CONNECTED, battery_percent=battery[i]))
        if i in NOT_WORN or i in AWAY:
            continue
        for k in range(12):
            t = minute_at(i, 5 * k + 2)
            hr = round(hr_base(i) + OFFSETS[k], 2)
            extra: dict[str, Any] = {"at_rest": i not in WALK}
            r.append(Measurement(w, codes.HEART_RATE, hr, "/min", t, "gateway", 0.9, extra))
            day.hr.append(hr)
            sp = round(spo2_value(i, k), 2)
            r.append(Measurement(w, codes.SPO2, sp, "%", t, "gateway", 0.8))
            day.spo2.append(sp)
        if i in range(300, 310):  # a motion artefact the DSP let through with a poor quality: not counted
            r.append(Measurement(w, codes.HEART_RATE, 190.0, "/min", minute_at(i, 59), "gateway", 0.2))
        if i == 333:  # a value no heart makes: not counted
            r.append(Measurement(w, codes.HEART_RATE, 300.0, "/min", minute_at(i, 59.5), "device", None))
        if i in AF_MINUTES:
            label, burden = "af", 0.8
        elif i in OTHER_MINUTES:
            label, burden = "other", 0.05
        else:
            label, burden = "sinus", 0.0
        r.append(Measurement(w, CODE_AF, burden, "1", minute_at(i, 30), "gateway", 0.9, {"label": label}))
        day.af.append((burden, label == "af"))
    for n, (hhmm, sys_, dia, mean) in enumerate(BP):
        t = local(hhmm)
        for code, v in ((codes.SYSTOLIC, sys_), (codes.DIASTOLIC, dia), (codes.MEAN_ARTERIAL, mean)):
            r.append(Measurement("cuff-1", code, v, "mm[Hg]", t, "device", None, {"stored": True}, f"rec-{n}"))
    r.append(ButtonPress("sos-1", local(9 * 60 + 15), "p-1"))
    r.append(ButtonPress("sos-1", local(9 * 60 + 15) + 0.5, "p-1"))  # the same press again: counted once
    drill = ButtonPress("sos-1", local(16 * 60 + 40), "p-2")
    r.append(drill)
    day.drills.append(drill)
    r.append(ButtonPress("sos-1", START - 60, "p-0"))  # the day before: not this summary's
    r.append(ButtonPress("sos-1", END + 60, "p-9"))  # the next day: not this summary's
    for n, hhmm in enumerate((10 * 60, 10 * 60 + 5)):
        day.calls.append(call_press("sos-1", local(hhmm), f"c-{n}"))
    r.sort(key=lambda x: x.captured_at)
    return day


def care_alerts() -> list[AlertEvent]:
    def ev(kind: str, state: str, device: str | None, at: float, person: str | None = "anna") -> AlertEvent:
        return AlertEvent(f"{kind}-{device}-{round(at)}", state, kind, "medium", person, device, {}, at, at)  # type: ignore[arg-type]

    t = minute_at(402)
    return [
        ev("spo2_low", "raised", "wrist-1", t),
        dataclasses.replace(ev("spo2_low", "escalated", "wrist-1", t), at=t + 60),  # same alert: not counted
        dataclasses.replace(ev("spo2_low", "cleared", "wrist-1", t), at=t + 900),
        ev("hr_high", "raised", "wrist-1", minute_at(930)),
        ev("not_worn", "raised", "wrist-1", minute_at(1010)),
        ev("uplink_down", "raised", None, minute_at(1100), None),  # the gateway's own: nobody's health
        ev("hr_high", "raised", "wrist-1", END + 10),  # tomorrow's
    ]


# -- the truth, from the generator's definitions -------------------------------------------------


def truth(day: Day) -> dict[str, Any]:
    hr = np.array(day.hr)
    spo2 = np.array(day.spo2)
    worn = 1440 - len(NOT_WORN) - len(AWAY)
    af_minutes = sorted(AF_MINUTES)
    episodes = 1
    for a, b in itertools.pairwise(af_minutes):
        episodes += b - a > 3
    return {
        "hr_min": float(hr.min()),
        "hr_median": float(np.median(hr)),
        "hr_max": float(hr.max()),
        # the deep-sleep hour at rest is the lowest 30 minutes: its mean, offsets cancel
        "hr_resting": 52.0,
        "spo2_min": 87.0,
        "spo2_median": float(np.median(spo2)),
        "below_90": len(SPO2_87) + len(SPO2_89) + 0.5,
        "below_88": float(len(SPO2_87)),
        "bp": [(s, d) for _, s, d, _ in BP],
        "bp_mean": (sum(s for _, s, _, _ in BP) / 3, sum(d for _, _, d, _ in BP) / 3),
        "af_screened": worn,
        "af_burden": sum(b for b, _ in day.af) / len(day.af),
        "af_episodes": episodes,
        "wear_minutes": worn,
        "wear_share": worn / 1440,
        "connected_s": 86400.0 - len(AWAY) * 60,
        "battery_last": 57,
        "battery_min": 55,
        "presses": {"sos": 1, "call": 2, "drill": 1},
        "alerts": {"call": 1, "hr_high": 1, "not_worn": 1, "sos": 1, "spo2_low": 1},  # 2 call presses, 1 request
        "hr_minutes": worn,
        "rejected": {"low_quality": 10, "implausible": 1},
    }


# -- running it ----------------------------------------------------------------------------------


class Wall:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def config(tmp: Path, text: str = CONFIG) -> Any:
    import tomllib

    return parse_config(tomllib.loads(text.replace("/tmp/unused", str(tmp / "data"))), tmp / "gateway.toml")


async def run_day(tmp: Path, day: Day) -> tuple[SummaryDesk, Wall]:
    cfg = config(tmp)
    wall = Wall(START)  # the store begins with the day
    async with Outbox(tmp / "outbox.sqlite3") as ob:
        committer = asyncio.create_task(ob.run())
        pipeline = Pipeline(TOPICS, ob, clock=wall)
        store = SummaryStore(tmp / "summary.sqlite3", now=wall())
        desk = SummaryDesk(
            cfg,
            TOPICS,
            pipeline.submit,
            store,
            wall=wall,
            is_drill=lambda alert_id: alert_id in pipeline.drill.drill_alerts,
        )
        pipeline.on_alert(desk.press_alert)
        pipeline.on_reading(desk.feed)
        care_submit = desk.tap(pipeline.submit)
        alerts = sorted(care_alerts(), key=lambda e: e.at)
        calls = list(day.calls)
        last_save = wall()
        for reading in day.readings:
            wall.t = max(wall.t, reading.captured_at)
            while alerts and alerts[0].at <= wall.t:
                care_submit(messages.care_alert(TOPICS, alerts.pop(0)))
            while calls and calls[0].captured_at <= wall.t:
                # as the pipeline of issue 14 part 1 does: the alert listeners hear the call request's id
                # (the second press joins the request the first opened), then the press reaches feed
                desk.press_alert(f"call-sos-1-{day.calls[0].press_id}", "sos-1", calls[0].captured_at)
                desk.feed(calls.pop(0))
            if reading in day.drills:
                pipeline.drill.open(wall.t - 1, 600, ["sos-1"])
            pipeline.sink(reading)
            if wall.t - last_save >= 30:
                desk.save()
                last_save = wall.t
                await asyncio.sleep(0)
        wall.t = END + 1
        for ev in alerts:
            care_submit(messages.care_alert(TOPICS, ev))
        submitted = desk.check()
        # the person; the button nobody was given has its own summary only on a day it gave anything
        assert sorted(submitted) == [("anna", DATE)]
        await ob.flush()
        await asyncio.sleep(0.1)
        committer.cancel()
        return desk, wall


@pytest.fixture(scope="module")
def day() -> Day:
    return generate_day()


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory, day: Day) -> Iterator[tuple[SummaryDesk, dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("day")
    desk, _wall = asyncio.run(run_day(tmp, day))
    body = build(desk.store, desk.schedule, desk.subjects, "anna", DATE, END + 1)["summary"]
    yield desk, body
    desk.close()


def test_every_figure_of_a_generated_day_matches_the_truth(
    day: Day, result: tuple[SummaryDesk, dict[str, Any]]
) -> None:
    _desk, s = result
    t = truth(day)
    wrist0 = next(d for d in s["devices"] if d["device_id"] == "wrist-1")
    rows = [
        ("hr min /min", s["heart_rate"]["min"], t["hr_min"]),
        ("hr median /min", s["heart_rate"]["median"], t["hr_median"]),
        ("hr max /min", s["heart_rate"]["max"], t["hr_max"]),
        ("hr resting /min", s["heart_rate"]["resting"], t["hr_resting"]),
        ("spo2 min %", s["spo2"]["min"], t["spo2_min"]),
        ("spo2 median %", s["spo2"]["median"], t["spo2_median"]),
        ("spo2 min below 90", s["spo2"]["minutes_below_90"], t["below_90"]),
        ("spo2 min below 88", s["spo2"]["minutes_below_88"], t["below_88"]),
        ("bp readings", [(r["systolic"], r["diastolic"]) for r in s["blood_pressure"]["readings"]], t["bp"]),
        ("bp mean", s["blood_pressure"]["mean"], t["bp_mean"]),
        ("af screened min", s["af"]["screened_minutes"], t["af_screened"]),
        ("af burden", s["af"]["burden"], round(t["af_burden"], 4)),
        ("af episodes", s["af"]["episodes"], t["af_episodes"]),
        ("wear min / share", (s["wear"][0]["minutes"], s["wear"][0]["share"]), (t["wear_minutes"], t["wear_share"])),
        ("presses", s["presses"], t["presses"]),
        ("alerts", s["alerts"], t["alerts"]),
        ("battery last/min %", (wrist0["battery_last"], wrist0["battery_min"]), (t["battery_last"], t["battery_min"])),
        ("connected s", wrist0["connected_s"], t["connected_s"]),
        ("rejected", s["rejected"], t["rejected"]),
    ]
    for name, got, want in rows:
        print(f"FIGURE {name:<20} summary={got}  truth={want}")
    hr, sp, bp, af = s["heart_rate"], s["spo2"], s["blood_pressure"], s["af"]
    assert hr["min"] == pytest.approx(t["hr_min"], abs=0.05)
    assert hr["max"] == pytest.approx(t["hr_max"], abs=0.05)  # the 190 of poor quality and the 300 do not count
    assert abs(hr["median"] - t["hr_median"]) <= 0.5  # the documented bound of the 1-unit histogram
    assert hr["resting"] == pytest.approx(t["hr_resting"], abs=0.05)
    assert hr["minutes"] == t["hr_minutes"] and hr["share"] == pytest.approx(t["wear_share"], abs=1e-4)
    assert hr["readings"] == len(day.hr)
    assert sp["min"] == pytest.approx(t["spo2_min"])
    assert abs(sp["median"] - t["spo2_median"]) <= 0.5
    assert sp["minutes_below_90"] == pytest.approx(t["below_90"])
    assert sp["minutes_below_88"] == pytest.approx(t["below_88"])
    assert [(r["systolic"], r["diastolic"]) for r in bp["readings"]] == t["bp"]
    assert bp["count"] == 3
    assert (bp["mean"]["systolic"], bp["mean"]["diastolic"]) == pytest.approx(t["bp_mean"], abs=0.05)
    assert all("mean_arterial" in r for r in bp["readings"])
    assert af["screened_minutes"] == t["af_screened"]
    assert af["burden"] == pytest.approx(t["af_burden"], abs=1e-4)
    assert af["episodes"] == t["af_episodes"] == 3
    assert [w["device_id"] for w in s["wear"]] == ["wrist-1"]
    assert s["wear"][0]["minutes"] == t["wear_minutes"]
    assert s["wear"][0]["share"] == pytest.approx(t["wear_share"], abs=1e-4)
    assert s["presses"] == t["presses"]
    assert s["alerts"] == t["alerts"]
    wrist = next(d for d in s["devices"] if d["device_id"] == "wrist-1")
    assert wrist["battery_last"] == t["battery_last"] and wrist["battery_min"] == t["battery_min"]
    assert wrist["connected_s"] == pytest.approx(t["connected_s"], abs=1.0)
    assert s["rejected"] == t["rejected"]


def test_the_message_is_the_contracts_and_its_msg_id_is_the_person_and_the_date(
    result: tuple[SummaryDesk, dict[str, Any]],
) -> None:
    desk, s = result
    wire = {**s, "seq": 1, "historical": True, "clock": "synced", "stream": "s-1"}
    errors = [e.message for e in validator("summary").iter_errors(wire)]
    assert not errors, errors
    assert s["msg_id"] == messages.msg_id("gw-1", "summary", "anna", "2026-11-24")
    assert s["person_id"] == "anna" and s["date"] == "2026-11-24" and s["timezone"] == ZONE
    assert s["period"] == {"start": "2026-11-23T12:00:00.000Z", "end": "2026-11-24T12:00:00.000Z", "partial": False}
    assert desk.store.sent_msg_id("anna", DATE) == s["msg_id"]
    assert desk.topic("anna") == "homecare/v1/gw-1/summary/anna"


def test_the_text_is_for_a_family_member(result: tuple[SummaryDesk, dict[str, Any]]) -> None:
    _desk, s = result
    text = format_text(s, TZ)
    print(text)
    assert "Daily summary for anna, 2026-11-24: Mon 23 Nov 20:00 to Tue 24 Nov 20:00 (Asia/Shanghai)" in text
    assert "resting 52 /min" in text
    assert "20.5 min below 90 %" in text and "10 min below 88 %" in text
    assert "07:30 131/84" in text and "average 128/82 mm Hg" in text
    assert "3 episodes" in text
    assert "SOS pressed 1, call pressed 2 (and 1 drill)" in text
    assert "battery 57 % (lowest 55 %)" in text


# -- the summary day and the schedule ------------------------------------------------------------


def test_the_day_ends_at_the_summary_time_and_clock_changes_make_it_23_or_25_hours() -> None:
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    sch = Schedule(dt.time(20, 0), berlin)
    a, b = sch.window(dt.date(2026, 3, 29))  # clocks go forward that night
    assert b - a == 23 * 3600
    a, b = sch.window(dt.date(2026, 10, 25))  # ...and back
    assert b - a == 25 * 3600
    t = dt.datetime(2026, 6, 1, 19, 59, 59, tzinfo=berlin).timestamp()
    assert sch.date_of(t) == dt.date(2026, 6, 1)
    assert sch.date_of(t + 1) == dt.date(2026, 6, 2)
    midnight = Schedule(dt.time(0, 0), berlin)
    assert midnight.date_of(t) == dt.date(2026, 6, 1)  # a calendar day is labelled with its own date
    a, b = midnight.window(dt.date(2026, 6, 1))
    assert (a, b) == (
        dt.datetime(2026, 6, 1, tzinfo=berlin).timestamp(),
        dt.datetime(2026, 6, 2, tzinfo=berlin).timestamp(),
    )


def test_due_dates_catch_up_after_an_outage_and_never_repeat_a_sent_day() -> None:
    sch = Schedule(dt.time(20, 0), TZ)
    created = local(10 * 60, dt.date(2026, 11, 20))
    assert due_dates(sch, local(19 * 60 + 59, dt.date(2026, 11, 20)), created, (), keep_days=7) == []
    assert due_dates(sch, local(20 * 60, dt.date(2026, 11, 20)), created, (), keep_days=7) == [dt.date(2026, 11, 20)]
    # off from the 21st to the 24th at 09:00: every day missed, oldest first, and none sent twice
    now = local(9 * 60, dt.date(2026, 11, 24))
    sent = {dt.date(2026, 11, 20)}
    assert due_dates(sch, now, created, sent, keep_days=7) == [dt.date(2026, 11, d) for d in (21, 22, 23)]
    assert due_dates(sch, now, created, sent, keep_days=2) == [dt.date(2026, 11, d) for d in (22, 23)]


async def _desk_with(tmp: Path, wall: Wall, synced: list[bool]) -> tuple[SummaryDesk, list[Any], Outbox]:
    ob = Outbox(tmp / "outbox.sqlite3")
    await ob.__aenter__()
    store = SummaryStore(tmp / "summary.sqlite3", now=wall())
    desk = SummaryDesk(config(tmp), TOPICS, ob.submit, store, wall=wall, synchronised=lambda: synced[0])
    return desk, [], ob


def test_clock_steps_never_give_two_summaries_for_a_date_nor_none(tmp_path: Path) -> None:
    async def go() -> None:
        wall = Wall(local(12 * 60, dt.date(2026, 11, 23)))
        synced = [True]
        desk, _, ob = await _desk_with(tmp_path, wall, synced)
        committer = asyncio.create_task(ob.run())
        desk.feed(Measurement("wrist-1", codes.HEART_RATE, 70.0, "/min", wall.t, "gateway", 0.9))
        wall.t = local(20 * 60 + 1, dt.date(2026, 11, 23))
        first = desk.check()
        assert ("anna", dt.date(2026, 11, 23)) in first
        assert desk.check() == []  # in flight: not again
        await ob.flush()
        await asyncio.sleep(0.05)
        assert desk.store.sent_dates("anna") == {dt.date(2026, 11, 23)}
        wall.t -= 3 * 3600  # the clock steps back over the summary time
        assert desk.check() == []
        wall.t += 3 * 3600
        assert desk.check() == []  # and forwards again: still sent once
        # an unsynchronised clock past the next summary time waits (it may be wrong)...
        synced[0] = False
        wall.t = local(20 * 60 + 5, dt.date(2026, 11, 24))
        assert desk.check() == []
        # ...until it is synchronised, or the grace is over
        synced[0] = True
        assert {d for _, d in desk.check()} == {dt.date(2026, 11, 24)}
        committer.cancel()
        await ob.close()
        desk.close()

    asyncio.run(go())


def test_a_restart_sends_the_day_that_ended_while_the_gateway_was_off_and_not_the_others(tmp_path: Path) -> None:
    async def go() -> None:
        wall = Wall(local(12 * 60, dt.date(2026, 11, 23)))
        desk, _, ob = await _desk_with(tmp_path, wall, [True])
        committer = asyncio.create_task(ob.run())
        desk.feed(DeviceStatus("wrist-1", wall.t, LinkState.CONNECTED, battery_percent=80))
        desk.save()  # the gateway's last sign of life
        committer.cancel()
        await ob.close()
        desk.close()
        wall.t = local(21 * 60, dt.date(2026, 11, 23))  # back an hour after the summary time
        desk, _, ob = await _desk_with(tmp_path, wall, [True])
        committer = asyncio.create_task(ob.run())
        assert ("anna", dt.date(2026, 11, 23)) in desk.check()
        await ob.flush()
        await asyncio.sleep(0.05)
        s = build(desk.store, desk.schedule, desk.subjects, "anna", dt.date(2026, 11, 23), wall.t)["summary"]
        wrist = next(d for d in s["devices"] if d["device_id"] == "wrist-1")
        assert wrist["connected_s"] == 0.0  # connected when the gateway died: unknown since, not counted
        committer.cancel()
        await ob.close()
        desk.close()

    asyncio.run(go())


def test_an_aggregation_failure_is_counted_and_never_stops_a_reading(tmp_path: Path) -> None:
    async def go() -> None:
        wall = Wall(START)
        desk, _, ob = await _desk_with(tmp_path, wall, [True])
        committer = asyncio.create_task(ob.run())
        pipeline = Pipeline(TOPICS, ob, clock=wall)
        pipeline.on_reading(desk.feed)
        seen: list[Reading] = []
        pipeline.on_reading(seen.append)

        class Broken(MinuteBin):
            def add_hr(self, v: float, at_rest: bool) -> None:
                raise RuntimeError("broken aggregate")

        desk.agg._bin = lambda *a: Broken()  # type: ignore[method-assign]
        m = Measurement("wrist-1", codes.HEART_RATE, 70.0, "/min", START, "gateway", 0.9)
        press = ButtonPress("sos-1", START + 1, "p-1")
        pipeline.sink(m)
        pipeline.sink(m)
        pipeline.sink(press)
        await ob.flush()
        assert seen == [m, m, press]
        assert desk.bugs.count == 2 and pipeline.bugs.count == 0
        assert ob.depth_total() == 3  # both readings and the SOS committed
        committer.cancel()
        await ob.close()
        desk.close()

    asyncio.run(go())


def test_bins_round_trip_and_merge() -> None:
    a, b = MinuteBin(), MinuteBin()
    for v in (70.2, 71.6):
        a.add_hr(v, True)
    b.add_hr(90.0, False)
    b.add_spo2(87.5)
    a.merge(MinuteBin.loads(b.dumps()))
    c = MinuteBin.loads(a.dumps())
    assert (c.hr.n, c.hr.lo, c.hr.hi, c.rest_n, c.hr.hist) == (3, 70.2, 90.0, 2, {70: 1, 72: 1, 90: 1})
    assert (c.spo2.n, c.below) == (1, [1, 1])
    assert RESTING_WINDOW_MIN == 30


def test_summary_config_is_validated_in_one_place(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert cfg.summary.at == dt.time(20, 0) and cfg.summary.timezone == ZONE and cfg.summary.retention_days == 7
    for bad, key in (('at = "25:00"', "summary.at"), ('timezone = "Mars/Base"', "summary.timezone")):
        text = CONFIG.replace('at = "20:00"', bad) if "at" in bad else CONFIG.replace(f'timezone = "{ZONE}"', bad)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            config(tmp_path, text)
    with pytest.raises(ConfigError, match="retention_days"):
        config(tmp_path, CONFIG.replace("retention_days = 7", "retention_days = 0"))


# -- gatewayctl report, the daemon not running: from the store -------------------------------------


def _ctl(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    import os
    import subprocess
    import sys

    from tests.helpers import REPO

    return subprocess.run(
        [sys.executable, "-m", "gateway.ctl", "--config", str(tmp / "gateway.toml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def ctl_day(tmp_path_factory: pytest.TempPathFactory, result: tuple[SummaryDesk, dict[str, Any]]) -> Path:
    """The generated day's store as a gateway's data directory, with its configuration."""
    import shutil

    desk, _body = result
    tmp = tmp_path_factory.mktemp("ctl")
    desk.save()
    (tmp / "data").mkdir()
    shutil.copy(desk.store.path, tmp / "data" / "summary.sqlite3")
    for suffix in ("-wal", "-shm"):
        src = Path(f"{desk.store.path}{suffix}")
        if src.exists():
            shutil.copy(src, tmp / "data" / f"summary.sqlite3{suffix}")
    (tmp / "gateway.toml").write_text(CONFIG.replace("/tmp/unused", str(tmp / "data")))
    return tmp


def test_report_reads_the_store_when_the_daemon_is_down_text_json_and_png(
    ctl_day: Path, result: tuple[SummaryDesk, dict[str, Any]]
) -> None:
    _desk, body = result
    out = _ctl(ctl_day, "report", "--date", "2026-11-24", "--person", "anna", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["msg_id"] == body["msg_id"]
    for key in ("heart_rate", "spo2", "blood_pressure", "af", "wear", "presses", "alerts", "rejected"):
        assert doc[key] == body[key], key
    out = _ctl(ctl_day, "report", "--date", "2026-11-24")
    assert out.returncode == 0, out.stderr
    assert "Daily summary for anna, 2026-11-24" in out.stdout and "sos-2" not in out.stdout
    png = ctl_day / "anna.png"
    out = _ctl(ctl_day, "report", "--date", "2026-11-24", "--person", "anna", "--png", str(png))
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    out = _ctl(ctl_day, "report", "--date", "24.11.2026")
    assert out.returncode == 2 and "expected YYYY-MM-DD" in out.stderr


def test_report_png_without_matplotlib_says_how_to_get_it(ctl_day: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "blocked" / "matplotlib"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('matplotlib is not installed here')\n")
    out = _ctl(
        ctl_day,
        "report",
        "--date",
        "2026-11-24",
        "--person",
        "anna",
        "--png",
        str(tmp_path / "x.png"),
        env={"PYTHONPATH": str(tmp_path / "blocked")},
    )
    assert out.returncode == 2, out.stderr
    assert "pip install 'homecare-gateway[report]'" in out.stderr
    assert not (tmp_path / "x.png").exists()


def test_the_contracts_example_is_valid_and_matches_the_generated_day(
    result: tuple[SummaryDesk, dict[str, Any]],
) -> None:
    from tests.helpers import REPO

    text = (REPO / "docs" / "mqtt-contract.md").read_text()
    section = text.split("## Daily summary", 1)[1]
    example = json.loads(section.split("```json", 1)[1].split("```", 1)[0])
    errors = [e.message for e in validator("summary").iter_errors(example)]
    assert not errors, errors
    _desk, body = result
    for key in ("heart_rate", "spo2", "blood_pressure", "af", "presses", "alerts", "rejected"):
        assert example[key] == body[key], key  # the example is this test's day, as the gateway summarised it


def test_a_damaged_summary_store_is_moved_aside_and_the_summary_starts_fresh(tmp_path: Path) -> None:
    from gateway.summarydesk import attach_summary

    cfg = config(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "summary.sqlite3").write_bytes(b"not a database, a torn write" * 200)
    desk = attach_summary(cfg, TOPICS, lambda m: asyncio.get_event_loop().create_future(), data, wall=Wall(START))
    assert desk is not None
    desk.feed(Measurement("wrist-1", codes.HEART_RATE, 64.0, "/min", START + 5, "gateway", 0.9))
    desk.save()
    s = build(desk.store, desk.schedule, desk.subjects, "anna", DATE, START + 60)["summary"]
    assert s["heart_rate"]["readings"] == 1 and s["period"]["partial"] is True
    assert list(data.glob("summary.sqlite3.damaged-*"))
    desk.close()
    off = attach_summary(config(tmp_path, CONFIG.replace('at = "20:00"', 'at = "20:00"\nenabled = false')), TOPICS,
                         lambda m: asyncio.get_event_loop().create_future(), data)  # fmt: skip
    assert off is None


def test_a_device_of_nobody_has_a_summary_on_the_days_it_gave_anything(tmp_path: Path) -> None:
    async def go() -> None:
        wall = Wall(local(12 * 60, dt.date(2026, 11, 23)))
        desk, _, ob = await _desk_with(tmp_path, wall, [True])
        committer = asyncio.create_task(ob.run())
        wall.t = local(20 * 60 + 1, dt.date(2026, 11, 23))
        assert desk.check() == [("anna", dt.date(2026, 11, 23))]
        desk.feed(ButtonPress("sos-2", wall.t + 60, "p-7"))
        wall.t = local(20 * 60 + 1, dt.date(2026, 11, 24))
        assert sorted(desk.check()) == [("anna", dt.date(2026, 11, 24)), ("sos-2", dt.date(2026, 11, 24))]
        await ob.flush()
        await asyncio.sleep(0.05)
        s = build(desk.store, desk.schedule, desk.subjects, "sos-2", dt.date(2026, 11, 24), wall.t)["summary"]
        assert s["person_id"] is None and s["device_id"] == "sos-2" and s["presses"]["sos"] == 1
        assert desk.topic("sos-2") == "homecare/v1/gw-1/summary/sos-2"
        committer.cancel()
        await ob.close()
        desk.close()

    asyncio.run(go())


def test_readings_of_an_unsynchronised_clock_move_with_its_correction(tmp_path: Path) -> None:
    """A Pi without a real-time clock boots on the time it last saved: what the gateway stamps until
    the clock is synchronised is moved in the aggregate as the outbox moves the same readings."""

    async def go() -> None:
        behind = 3 * 3600.0  # the boot clock's wall time is 3 h behind the truth
        true_t = local(12 * 60, dt.date(2026, 11, 23))
        wall = Wall(true_t - behind)
        synced, mono = [False], [0.0]
        ob = Outbox(tmp_path / "outbox.sqlite3")
        await ob.__aenter__()
        store = SummaryStore(tmp_path / "summary.sqlite3", now=wall())
        offset = [1000.0]  # wall - boot clock, as stamped
        desk = SummaryDesk(
            config(tmp_path),
            TOPICS,
            ob.submit,
            store,
            wall=wall,
            synchronised=lambda: synced[0],
            offset=lambda: offset[0],
            monotonic=lambda: mono[0],
        )
        desk.feed(Measurement("wrist-1", codes.HEART_RATE, 70.0, "/min", wall.t, "gateway", 0.9))
        # a cuff's stored record carries the cuff's own clock: never moved
        stored = Measurement("cuff-1", codes.SYSTOLIC, 128.0, "mm[Hg]", true_t - 600, "device", None,
                             extra={"stored": True})  # fmt: skip
        desk.feed(stored)
        desk.feed(ButtonPress("sos-1", wall.t + 5, "p-1"))
        desk.save()
        assert desk._held  # waiting for the correction, not yet in the store

        # the clock is set: the truth is 3 h later than what was stamped
        synced[0] = True
        wall.t = true_t + 60
        offset[0] += behind
        desk.correct(offset[0])
        desk.feed(Measurement("wrist-1", codes.HEART_RATE, 80.0, "/min", wall.t, "gateway", 0.9))
        desk.save()
        day = desk.store.day("anna", true_t - 3600, true_t + 3600)
        hr_minutes = sorted(m for m, dev, _ in day.bins if dev == "wrist-1")
        assert hr_minutes == [int(true_t // 60), int((true_t + 60) // 60)]
        assert [e.at for e in day.events if e.kind == "press"] == [true_t + 5]
        assert [bp.at for bp in day.bp] == [true_t - 600]

        # no correction in UNSYNCED_GRACE_S (a home without time service): counted as stamped
        synced[0] = False
        desk.feed(Measurement("wrist-1", codes.HEART_RATE, 75.0, "/min", wall.t + 120, "gateway", 0.9))
        mono[0] += 3 * 3600
        desk.save()
        assert not desk._held
        day = desk.store.day("anna", true_t - 3600, true_t + 3600)
        assert int((wall.t + 120) // 60) in {m for m, _, _ in day.bins}
        await ob.close()
        desk.close()

    asyncio.run(go())


def test_a_reading_read_before_a_clock_step_and_fed_after_it_counts_where_it_was_read(tmp_path: Path) -> None:
    """A reading whose time was read just before the wall clock stepped (a Pi's first NTP sync) reaches
    the summary after the step: it counts at its true time, as the outbox stamps it, not the step away."""

    async def go() -> None:
        behind = 3 * 3600.0  # the Pi booted 3 h behind the truth
        true_t = local(12 * 60, dt.date(2026, 11, 23))
        h = Hands(wall=true_t - behind)
        clock = Clock(sync=h.sync, wall=h.wall, boot=h.boot, boot_id="b1")
        clock.sample()
        ob = Outbox(tmp_path / "outbox.sqlite3")
        await ob.__aenter__()
        store = SummaryStore(tmp_path / "summary.sqlite3", now=h.wall())
        desk = SummaryDesk(
            config(tmp_path),
            TOPICS,
            ob.submit,
            store,
            wall=h.wall,
            synchronised=clock.synchronised,
            offset=lambda: h.wall() - h.boot(),
            step_since=clock.step_since,
        )
        read = h.w  # a heart rate and a press, read just before the step
        h.tick(0.5)
        h.w += behind  # the step to the truth, not sampled yet: the reading waits with today's offset
        desk.feed(Measurement("wrist-1", codes.HEART_RATE, 70.0, "/min", read, "gateway", 0.9))
        h.synced = True
        assert [e.kind for e in clock.sample()] == ["step", "synchronised"]
        offset = clock.offset()
        assert offset is not None
        desk.correct(offset)
        desk.feed(ButtonPress("sos-1", read + 0.2, "p-1"))  # after the clock saw the step: counted at once
        desk.save()
        day = desk.store.day("anna", true_t - 2 * behind, true_t + 3600)
        assert sorted(m for m, dev, _ in day.bins if dev == "wrist-1") == [int(true_t // 60)]
        assert [e.at for e in day.events if e.kind == "press"] == [pytest.approx(true_t + 0.2)]
        await ob.close()
        desk.close()

    asyncio.run(go())
