"""Property-based tests: whatever the readings, ticks, acks, restarts and rule changes, the alert stream
stays well formed: one open alert per condition, no clear without a raise, one escalation at most."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.base import ButtonPress, DeviceStatus, LinkState, Measurement
from gateway.rules import WATCH_KINDS, AlertEvent, RuleEngine, WatchSettings, severity_rank
from gateway.rules.defaults import CODE_AF_SCREENING, LOINC_DIASTOLIC, LOINC_HEART_RATE, LOINC_SPO2, LOINC_SYSTOLIC
from tests.rules.util import T0, UNITS

VALUES = {
    LOINC_SPO2: [70, 84, 86, 89, 90, 91, 92, 97],
    LOINC_HEART_RATE: [30, 39, 42, 46, 80, 128, 131, 140],
    LOINC_SYSTOLIC: [120, 169, 175, 180, 200],
    LOINC_DIASTOLIC: [80, 109, 115, 120, 130],
    CODE_AF_SCREENING: [0.0, 0.04, 0.08, 0.1, 0.5, 1.0],
}

measurement = st.tuples(
    st.just("m"),
    st.sampled_from(["wrist-1", "wrist-2", "cuff-1"]),
    st.sampled_from(sorted(VALUES)),
    st.integers(0, 7),
    st.sampled_from([None, 0.1, 0.4, 0.6, 0.95]),
    st.sampled_from([0.0, 0.5, 1.0, 1.0, 1.0, 5.0, 20.0, 120.0]),  # time step
    st.sampled_from([0.0, 0.0, 0.0, 3.0, 400.0]),  # capture delay (late or out of order)
    st.fixed_dictionaries(
        {},
        optional={
            "irregular_pulse": st.booleans(),
            "at_rest": st.booleans(),
            "sensor_contact": st.booleans(),
            "label": st.sampled_from(["af", "sinus", "other", "insufficient"]),
        },
    ),
)
burst = st.tuples(st.just("burst"), st.sampled_from(["wrist-1", "wrist-2"]), st.integers(0, 7), st.integers(1, 150))
tick = st.tuples(st.just("tick"), st.sampled_from([1.0, 60.0, 300.0, 3600.0, 4 * 3600.0]))
status = st.tuples(
    st.just("status"),
    st.sampled_from(["wrist-1", "cuff-1"]),
    st.sampled_from(list(LinkState)),
    st.sampled_from([None, 3, 15, 22, 50]),
)
sos = st.tuples(st.just("sos"), st.booleans())
outbox = st.tuples(st.just("outbox"), st.sampled_from([0.1, 0.69, 0.75, 0.85, 0.97]))
uplink = st.tuples(st.just("uplink"), st.booleans())
ack = st.tuples(st.just("ack"), st.integers(0, 5))
restart = st.tuples(st.just("restart"))
rules = st.tuples(st.just("rules"), st.integers(0, 2))
ops = st.lists(
    st.one_of(measurement, measurement, measurement, burst, tick, status, sos, outbox, uplink, ack, restart, rules),
    max_size=80,
)

RULE_SETS: list[list[dict[str, Any]]] = [
    [{"id": "spo2-low", "base": "spo2-low", "threshold": 88, "severe_threshold": 84}],
    [],
    [{"id": "hr-high", "base": "hr-high", "hold_s": 5, "clear_hold_s": 0}, {"id": "bp-crisis", "base": "bp-crisis"}],
]


def new_engine(now: float) -> RuleEngine:
    e = RuleEngine(WatchSettings(timezone="UTC", reminder_interval_s=120, reminder_min_severity="medium"))
    e.set_device("wrist-1", now, worn=True)
    e.set_device("wrist-2", now, person_id="bert", worn=True)
    e.set_device("cuff-1", now)
    return e


def run(script: Sequence[tuple[Any, ...]], *, restarts: bool = True) -> tuple[RuleEngine, list[AlertEvent]]:
    now = T0
    e = new_engine(now)
    events: list[AlertEvent] = []
    sos_n = 0
    for op in script:
        kind = op[0]
        if kind == "m":
            _, dev, code, vi, quality, step, delay, extra = op
            now += step
            values = VALUES[code]
            m = Measurement(
                dev, code, float(values[vi % len(values)]), UNITS[code], now - delay, quality=quality, extra=extra
            )
            events += e.feed(m, now)
        elif kind == "burst":  # a long run of one value, 1 reading per second
            _, dev, vi, n = op
            for _ in range(n):
                now += 1.0
                events += e.feed(
                    Measurement(dev, LOINC_SPO2, float(VALUES[LOINC_SPO2][vi]), "%", now, quality=0.9), now
                )
        elif kind == "tick":
            now += op[1]
            events += e.tick(now)
        elif kind == "status":
            now += 1.0
            events += e.feed(DeviceStatus(op[1], now, op[2], battery_percent=op[3]), now)
        elif kind == "sos":
            now += 1.0
            sos_n += 1
            events += e.feed(ButtonPress("sos-1", now, f"p{sos_n}", extra={"battery_low": op[1]}), now)
            e.open_external(f"sos-{sos_n}", "sos", "critical", "sos-1", now, now)
        elif kind == "outbox":
            now += 1.0
            events += e.set_outbox_fill(op[1], now)
        elif kind == "uplink":
            now += 1.0
            events += e.set_uplink_down(now - 10.0 if op[1] else None, now)
        elif kind == "ack":
            open_ids = [a.alert_id for a in e.open_alerts()]
            if open_ids:
                assert e.ack(open_ids[op[1] % len(open_ids)], now)
        elif kind == "restart" and restarts:
            data = json.loads(json.dumps(e.snapshot(), allow_nan=False))
            e = new_engine(now)
            e.restore(data, now)
        elif kind == "rules":
            e.update_rules("bert", RULE_SETS[op[1]])
            events += e.tick(now)
    events += e.tick(now)
    return e, events


def check_stream(e: RuleEngine, events: Sequence[AlertEvent]) -> None:
    open_by_id: dict[str, AlertEvent] = {}
    closed: set[str] = set()
    escalated: set[str] = set()
    open_conditions: dict[tuple[str | None, str | None, str, str], str] = {}
    for ev in events:
        cond = (ev.person_id, ev.device_id, ev.kind, ev.rule_id)
        assert ev.alert_id not in closed, f"event after clear: {ev}"
        if ev.state == "raised":
            assert ev.alert_id not in open_by_id, f"raised twice: {ev}"
            assert cond not in open_conditions, f"second open alert for {cond}: {ev}"
            assert ev.started_at <= ev.at
            open_by_id[ev.alert_id] = ev
            open_conditions[cond] = ev.alert_id
        elif ev.state == "escalated":
            assert ev.alert_id in open_by_id, f"escalation without raise: {ev}"
            assert ev.alert_id not in escalated, f"escalated twice: {ev}"
            assert severity_rank(ev.severity) > severity_rank(open_by_id[ev.alert_id].severity)
            escalated.add(ev.alert_id)
        elif ev.state == "cleared":
            assert ev.alert_id in open_by_id, f"clear without raise: {ev}"
            del open_by_id[ev.alert_id]
            del open_conditions[cond]
            closed.add(ev.alert_id)
        else:
            assert ev.state == "reminder"
            assert ev.alert_id in open_by_id or ev.kind == "sos"
    still_open = {a.alert_id for a in e.open_alerts() if not a.external}
    assert still_open == set(open_by_id)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_random_sequences_keep_the_alert_stream_well_formed(script: list[tuple[Any, ...]]) -> None:
    e, events = run(script)
    check_stream(e, events)


def vitals(events: Sequence[AlertEvent]) -> list[tuple[str, str, float, str]]:
    """The care-rule events (not the watch's, whose silence clock restarts with the daemon)."""
    return [
        (ev.alert_id, ev.state, ev.at, ev.severity)
        for ev in events
        if ev.state != "reminder" and ev.kind not in WATCH_KINDS
    ]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(measurement, measurement, burst, tick, restart), max_size=60))
def test_a_restart_changes_no_care_rule_decision(script: list[tuple[Any, ...]]) -> None:
    _, with_restarts = run(script)
    _, without = run(script, restarts=False)
    assert vitals(with_restarts) == vitals(without)
