"""Device, person and gateway watch: no data, not worn, battery, link, outbox, uplink. Time is driven
by the test (``now`` arguments), never by sleeping."""

from __future__ import annotations

import datetime as dt

from drivers.base import ButtonPress, DeviceStatus, LinkState, Waveform
from gateway.rules import RuleEngine, WatchSettings
from gateway.rules.daytime import daytime_seconds, zone
from gateway.rules.defaults import LOINC_HEART_RATE
from tests.rules.util import T0, Clock, engine, meas, states

H = 3600.0


def utc(y: int, mo: int, d: int, h: int, mi: int = 0) -> float:
    return dt.datetime(y, mo, d, h, mi, tzinfo=dt.UTC).timestamp()


def ticks(e: RuleEngine, start: float, end: float, step: float = 60.0) -> list[tuple[float, str, str]]:
    """Tick every ``step`` seconds like the daemon does; (time, kind, state) of every event."""
    out = []
    t = start
    while t <= end:
        out += [(t, ev.kind, ev.state) for ev in e.tick(t)]
        t += step
    return out


def test_no_data_alert_at_the_configured_time_and_cleared_when_data_returns() -> None:
    e = engine(no_data_day_s=2 * H)
    clock = Clock(T0)
    e.feed(meas(LOINC_HEART_RATE, 70, clock.now), clock.now)
    assert e.tick(clock.advance(2 * H - 1)) == []
    (raised,) = e.tick(clock.advance(1))
    assert (raised.kind, raised.state, raised.severity, raised.device_id) == ("no_data", "raised", "medium", "wrist-1")
    assert raised.started_at == T0 and raised.at == T0 + 2 * H
    assert e.tick(clock.advance(H)) == []  # one alert, not one per tick
    (cleared,) = e.feed(meas(LOINC_HEART_RATE, 72, clock.now), clock.now)
    assert (cleared.alert_id, cleared.state) == (raised.alert_id, "cleared")


def test_no_data_counts_waveforms_as_data_and_other_devices_do_not_count() -> None:
    e = engine(no_data_day_s=2 * H)
    for i in range(5):
        t = T0 + i * H
        e.feed(Waveform("wrist-1", t, 25.0, {"ir": [1.0, 2.0]}), t)
        e.feed(meas(LOINC_HEART_RATE, 70, t, device="cuff-1"), t)
        assert e.tick(t + 1) == []
    # the cuff is not worn: hours of silence are normal for it
    assert [ev.device_id for ev in e.tick(T0 + 20 * H)] == ["wrist-1"]


def test_night_hours_do_not_count_towards_no_data() -> None:
    e = engine(no_data_day_s=2 * H)  # day 07:00-22:00 UTC
    last = utc(2026, 11, 24, 21, 0)
    e.feed(meas(LOINC_HEART_RATE, 70, last), last)
    # 21:00-22:00 is one hour of day; the night is free; the second hour ends at 08:00
    events = ticks(e, last, utc(2026, 11, 25, 9, 0))
    assert events == [(utc(2026, 11, 25, 8, 0), "no_data", "raised")]


def test_the_daytime_window_is_the_wall_clocks_when_the_engines_clock_lags_it() -> None:
    """The daemon's timeline lags the wall clock by 8 h (a step forwards since it began): the readings
    and ticks are on the timeline, the hours of the day are the wall clock's. The same silence as in
    the test above, from 21:00 on the wall clock, raises at 08:00 on the wall clock, not 8 h later."""
    lag = 8 * H
    e = engine(no_data_day_s=2 * H)  # day 07:00-22:00 UTC
    e.wall_shift = lag
    last = utc(2026, 11, 24, 21, 0) - lag
    e.feed(meas(LOINC_HEART_RATE, 70, last), last)
    events = ticks(e, last, utc(2026, 11, 25, 9, 0) - lag)
    assert events == [(utc(2026, 11, 25, 8, 0) - lag, "no_data", "raised")]


def test_a_total_limit_alerts_at_night_too() -> None:
    e = engine(no_data_day_s=2 * H, no_data_total_s=8 * H)
    last = utc(2026, 11, 24, 21, 0)
    e.feed(meas(LOINC_HEART_RATE, 70, last), last)
    events = ticks(e, last, utc(2026, 11, 25, 9, 0))
    assert events == [(utc(2026, 11, 25, 5, 0), "no_data", "raised")]


def test_day_hours_are_local_time() -> None:
    # Berlin is UTC+1 in November: the day 07:00-22:00 local is 06:00-21:00 UTC
    e = engine(timezone="Europe/Berlin", no_data_day_s=2 * H)
    last = utc(2026, 11, 24, 20, 30)  # 21:30 local: half an hour of day left
    e.feed(meas(LOINC_HEART_RATE, 70, last), last)
    events = ticks(e, last, utc(2026, 11, 25, 9, 0))
    assert events == [(utc(2026, 11, 25, 7, 30), "no_data", "raised")]


def test_daytime_seconds() -> None:
    tz = zone("UTC")
    seven, ten_pm = dt.time(7), dt.time(22)
    assert daytime_seconds(utc(2026, 11, 24, 6), utc(2026, 11, 24, 8), seven, ten_pm, tz) == H
    assert daytime_seconds(utc(2026, 11, 24, 21), utc(2026, 11, 26, 8), seven, ten_pm, tz) == (1 + 15 + 1) * H
    # a day window over midnight (night shift: 20:00-04:00)
    assert daytime_seconds(utc(2026, 11, 24, 23), utc(2026, 11, 25, 5), dt.time(20), dt.time(4), tz) == 5 * H
    # a spring-forward night in Berlin (2027-03-28 02:00 -> 03:00) keeps the day at 15 h
    ber = zone("Europe/Berlin")
    day = daytime_seconds(utc(2027, 3, 27, 23), utc(2027, 3, 28, 23), seven, ten_pm, ber)
    assert day == 15 * H


def test_not_worn_by_contact_flag() -> None:
    e = engine(not_worn_s=600)
    off = [meas(LOINC_HEART_RATE, 60, T0 + i, extra={"sensor_contact": False}) for i in range(0, 601, 5)]
    events = [ev for m in off for ev in e.feed(m, m.captured_at)]
    assert [(ev.kind, ev.state, ev.detail["reason"], ev.started_at) for ev in events] == [
        ("not_worn", "raised", "no_contact", T0)
    ]
    on = meas(LOINC_HEART_RATE, 70, T0 + 700, extra={"sensor_contact": True})
    assert states(e.feed(on, T0 + 700)) == [("not_worn", "cleared")]


def test_not_worn_by_persistently_low_quality_but_not_by_a_short_spell() -> None:
    e = engine(not_worn_s=600, not_worn_quality=0.3)
    spell = [meas(LOINC_HEART_RATE, 60, T0 + i, quality=0.1) for i in range(0, 500, 5)]
    spell.append(meas(LOINC_HEART_RATE, 60, T0 + 500, quality=0.8))
    spell += [meas(LOINC_HEART_RATE, 60, T0 + 505 + i, quality=0.1) for i in range(0, 500, 5)]
    assert [ev for m in spell for ev in e.feed(m, m.captured_at)] == []
    long = [meas(LOINC_HEART_RATE, 60, T0 + 1100 + i, quality=0.1) for i in range(0, 700, 5)]
    events = [ev for m in long for ev in e.feed(m, m.captured_at)]
    assert [(ev.kind, ev.detail["reason"]) for ev in events] == [("not_worn", "low_quality")]


def status(t: float, state: LinkState = LinkState.CONNECTED, battery: int | None = None) -> DeviceStatus:
    return DeviceStatus("wrist-1", t, state, battery_percent=battery)


def test_low_battery_early_escalates_near_empty_and_clears_after_charging() -> None:
    e = engine()
    seq = [(25, []), (20, [("raised", "low")]), (12, []), (5, [("escalated", "medium")]), (3, []), (25, [])]
    seq += [(30, [("cleared", "medium")]), (19, [("raised", "low")])]
    for i, (pct, want) in enumerate(seq):
        t = T0 + i * H
        events = e.feed(status(t, battery=pct), t)
        assert [(ev.state, ev.severity) for ev in events] == want, pct
        assert all(ev.kind == "battery_low" and ev.detail["battery_percent"] == pct for ev in events)


def test_low_battery_flag_of_an_sos_button() -> None:
    e = engine()
    low = ButtonPress("sos-1", T0, "p1", extra={"battery_low": True})
    (raised,) = e.feed(low, T0)
    assert (raised.kind, raised.device_id) == ("battery_low", "sos-1")
    assert e.feed(ButtonPress("sos-1", T0 + 10, "p2", extra={"battery_low": True}), T0 + 10) == []
    (cleared,) = e.feed(ButtonPress("sos-1", T0 + 20, "p3", extra={"battery_low": False}), T0 + 20)
    assert cleared.alert_id == raised.alert_id


def test_device_disconnected_for_long() -> None:
    e = engine(disconnected_s=4 * H)
    e.feed(status(T0, LinkState.DISCONNECTED), T0)
    e.feed(status(T0 + 60, LinkState.CONNECTING), T0 + 60)
    e.feed(status(T0 + 120, LinkState.ERROR), T0 + 120)
    # (the wristband is worn: it also gets a "no data" alert on its own schedule)
    assert [ev for ev in e.tick(T0 + 4 * H - 1) if ev.kind == "device_disconnected"] == []
    (raised,) = [ev for ev in e.tick(T0 + 4 * H) if ev.kind == "device_disconnected"]
    assert (raised.severity, raised.started_at) == ("low", T0)
    (cleared,) = e.feed(status(T0 + 5 * H), T0 + 5 * H)
    assert cleared.alert_id == raised.alert_id
    assert e.tick(T0 + 10 * H) == []  # no new alert while it stays connected, even without data


def test_a_short_disconnection_raises_nothing() -> None:
    e = engine(disconnected_s=4 * H)
    e.feed(status(T0, LinkState.DISCONNECTED), T0)
    e.feed(status(T0 + H, LinkState.CONNECTED), T0 + H)
    assert [ev for ev in ticks(e, T0, T0 + 10 * H, 600) if ev[1] == "device_disconnected"] == []


def test_outbox_nearly_full() -> None:
    e = engine()
    steps = [(0.5, []), (0.85, [("raised", "medium")]), (0.9, []), (0.96, [("escalated", "high")])]
    steps += [(0.75, []), (0.69, [("cleared", "high")])]
    for i, (fill, want) in enumerate(steps):
        events = e.set_outbox_fill(fill, T0 + i)
        assert [(ev.state, ev.severity) for ev in events] == want, fill
        assert all(ev.kind == "outbox_full" and ev.device_id is None for ev in events)


def test_uplink_down_for_long_keeps_its_real_start() -> None:
    e = engine(uplink_down_s=1800)
    assert e.set_uplink_down(T0, T0) == []
    assert e.tick(T0 + 1799) == []
    (raised,) = e.tick(T0 + 1800)
    assert (raised.kind, raised.started_at, raised.at, raised.device_id) == ("uplink_down", T0, T0 + 1800, None)
    assert e.tick(T0 + 3600) == []
    (cleared,) = e.set_uplink_down(None, T0 + 4000)
    assert cleared.alert_id == raised.alert_id and cleared.at == T0 + 4000


def test_watch_settings_are_validated() -> None:
    from gateway.rules import RuleSpecError

    bad = [
        {"timezone": "Mars/Olympus"},
        {"battery_low_percent": 40},  # above the clear level
        {"outbox_fill": 0.99},
        {"no_data_day_s": float("nan")},
        {"day_start": dt.time(7), "day_end": dt.time(7)},
        {"not_worn_severity": "critical"},
    ]
    for kwargs in bad:
        try:
            WatchSettings(**kwargs)  # type: ignore[arg-type]
        except RuleSpecError as exc:
            assert exc.code == "invalid" and exc.field is not None
        else:
            raise AssertionError(f"accepted {kwargs}")
