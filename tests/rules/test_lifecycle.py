"""Reminders and acknowledgement, rule updates from the cloud, snapshot and restore."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from gateway.errors import CommandRejected
from gateway.rules import DEFAULT_RULES, Condition, RuleEngine, RuleSpec, RuleSpecError, SnapshotError, WatchSettings
from gateway.rules.defaults import LOINC_HEART_RATE, LOINC_SPO2
from tests.rules.util import T0, engine, feed_series, meas, spo2_series, states


def tachycardia(e: RuleEngine, start: float = T0, seconds: int = 61) -> list[Any]:
    return feed_series(e, [meas(LOINC_HEART_RATE, 150, start + i) for i in range(seconds)])


def test_reminders_until_ack() -> None:
    e = engine(reminder_interval_s=300, reminder_min_severity="high")
    (raised,) = tachycardia(e)
    assert raised.severity == "high"
    n = raised.at  # raised while live: engine time = capture time
    assert e.tick(n + 299) == []
    (r1,) = e.tick(n + 300)
    assert (r1.state, r1.alert_id, r1.reminder) == ("reminder", raised.alert_id, 1)
    assert e.tick(n + 599) == []
    (r2,) = e.tick(n + 600)
    assert r2.reminder == 2 and r2.key != r1.key
    assert e.ack(raised.alert_id, n + 650) is True
    assert e.tick(n + 900) == [] and e.tick(n + 3600) == []
    # the alert stays open until its condition clears, and clears as usual
    (alert,) = e.open_alerts()
    assert alert.acked_at == n + 650 and alert.reminders == 2
    recovery = feed_series(e, [meas(LOINC_HEART_RATE, 80, n + 4000 + i) for i in range(61)])
    assert states(recovery) == [("hr_high", "cleared")]
    assert e.ack(raised.alert_id, n + 5000) is True  # a late ack of a cleared alert is not an error


def test_no_reminders_below_the_level_and_escalation_starts_them() -> None:
    e = engine(reminder_interval_s=300, reminder_min_severity="high")
    (raised,) = feed_series(e, spo2_series([88] * 70))
    assert raised.severity == "medium"
    assert e.tick(raised.at + 1000) == []
    assert e.ack(raised.alert_id, raised.at + 1001)
    (esc,) = feed_series(e, spo2_series([83] * 70, start=T0 + 70))
    assert (esc.state, esc.severity) == ("escalated", "high")
    (rem,) = e.tick(esc.at + 300)
    assert rem.state == "reminder"
    assert e.ack(raised.alert_id, esc.at + 301)
    assert e.tick(esc.at + 1000) == []


def test_ack_of_an_unknown_alert() -> None:
    assert engine().ack("spo2-low/wrist-9/1", T0) is False


def test_sos_from_the_daemon_reminds_until_acknowledged() -> None:
    e = engine(reminder_interval_s=60)
    e.open_external("sos-sos-1-p1", "sos", "critical", "sos-1", T0, T0)
    assert [a.alert_id for a in e.open_alerts()] == ["sos-sos-1-p1"]
    assert [ev.reminder for t in (T0 + 60, T0 + 120) for ev in e.tick(t)] == [1, 2]
    assert e.ack("sos-sos-1-p1", T0 + 130)
    assert e.open_alerts() == ()
    assert e.tick(T0 + 1000) == []
    assert e.ack("sos-sos-1-p1", T0 + 131)  # a replayed ack


BAD_RULES: list[tuple[list[Any], str]] = [
    (
        [{"id": "x", "kind": "x", "code": LOINC_SPO2, "op": "<", "threshold": 90, "severity": "high", "colour": 1}],
        "colour",
    ),
    ([{"id": "x", "kind": "x", "code": LOINC_SPO2, "op": "<", "threshold": 90, "severity": "critical"}], "severity"),
    ([{"id": "x", "kind": "x", "code": LOINC_SPO2, "op": "=", "threshold": 90, "severity": "high"}], "op"),
    ([{"id": "x", "kind": "x", "code": LOINC_SPO2, "op": "<", "threshold": math.nan, "severity": "high"}], "threshold"),
    ([{"id": "x", "kind": "x", "code": LOINC_SPO2, "op": "<", "threshold": True, "severity": "high"}], "threshold"),
    ([{"id": "x", "kind": "x", "code": LOINC_SPO2, "op": "<", "severity": "high"}], "threshold"),
    (
        [
            {
                "id": "x",
                "kind": "x",
                "code": LOINC_SPO2,
                "op": "<",
                "threshold": 90,
                "severe_threshold": 95,
                "severity": "medium",
                "severe_severity": "high",
            }
        ],
        "severe_threshold",
    ),
    ([{"id": "x", "kind": "sos", "code": LOINC_SPO2, "op": "<", "threshold": 90, "severity": "high"}], "kind"),
    (
        [{"id": "x", "kind": "x", "code": LOINC_SPO2, "op": "<", "threshold": 90, "severity": "high", "hold_s": -1}],
        "hold_s",
    ),
    (
        [
            {
                "id": "x",
                "kind": "x",
                "code": "8480-6",
                "op": "flag",
                "flag": "irregular_pulse",
                "severity": "low",
                "window_s": 60,
            }
        ],
        "window_s",
    ),
    ([{"id": "x", "base": "no-such-rule"}], "base"),
    # integers beyond a float's range (JSON carries them): refused as invalid, not an OverflowError
    ([{"id": "x", "kind": "x", "code": LOINC_SPO2, "op": "<", "threshold": 10**400, "severity": "high"}], "threshold"),
    (
        [
            {
                "id": "x",
                "kind": "x",
                "code": LOINC_SPO2,
                "op": "<",
                "threshold": 90,
                "severity": "high",
                "hold_s": 10**400,
            }
        ],
        "hold_s",
    ),
    ([{"id": "spo2-low", "base": "spo2-low", "hold_s": -(10**400)}], "hold_s"),
    ([{"id": "spo2-low", "base": "spo2-low", "severe_threshold": 10**400}], "severe_threshold"),
    ([{"id": "x", "code": LOINC_SPO2, "op": "<", "threshold": 90, "severity": "high"}], "kind"),
    ([{"id": "bad id!", "kind": "x", "code": LOINC_SPO2, "op": "<", "threshold": 90, "severity": "high"}], "id"),
    ([{"id": "spo2-low", "base": "spo2-low"}, {"id": "spo2-low", "base": "spo2-low"}], "id"),
    ([{"id": f"r{i}", "base": "spo2-low"} for i in range(65)], "rules"),
    (["not an object"], ""),
]


@pytest.mark.parametrize(("rules", "bad_field"), BAD_RULES)
def test_bad_rules_are_rejected_with_a_typed_error_and_change_nothing(rules: list[Any], bad_field: str) -> None:
    e = engine()
    before = e.rules_for("default")
    with pytest.raises(RuleSpecError) as info:
        e.update_rules("default", rules)
    exc = info.value
    assert isinstance(exc, CommandRejected) and exc.code == "invalid"  # the downlink replies with it as is
    if bad_field:
        assert exc.field == bad_field
        assert bad_field in str(exc)
    assert e.rules_for("default") == before


def test_a_huge_integer_in_a_rule_built_in_code_is_named_not_printed() -> None:
    with pytest.raises(RuleSpecError) as info:
        RuleSpec("x", "x", (Condition(LOINC_SPO2, "<", 10**400),), "high")
    assert info.value.field == "threshold"
    assert str(info.value) == "rule x field threshold: an integer of about 401 digits is too large for a number"
    with pytest.raises(RuleSpecError) as info:
        RuleSpec("x", "x", (Condition(LOINC_SPO2, "<", 90),), "high", hold_s=10**5000)  # repr() refuses it
    assert info.value.field == "hold_s"


def test_update_rules_replaces_atomically_and_clears_alerts_of_removed_rules() -> None:
    e = engine()
    (bp,) = feed_series(e, [meas("8480-6", 190, T0, device="cuff-1", quality=None)])
    (spo2,) = feed_series(e, spo2_series([87] * 70))
    result = e.update_rules(
        "default", [{"id": "spo2-low", "base": "spo2-low", "threshold": 88, "severe_threshold": 84}]
    )
    assert result == {"person_id": "default", "rules": ["spo2-low"]}
    events = e.tick(T0 + 100)
    assert [(ev.alert_id, ev.state, ev.detail.get("reason")) for ev in events] == [
        (bp.alert_id, "cleared", "rule_removed")
    ]
    # the changed SpO2 rule keeps its alert open; it clears by the new rule's recovery (>= 90 %)
    assert [a.alert_id for a in e.open_alerts()] == [spo2.alert_id]
    more = feed_series(e, spo2_series([89] * 100 + [91] * 61, start=T0 + 200))
    assert [(ev.alert_id, ev.state) for ev in more] == [(spo2.alert_id, "cleared")]
    assert more[0].rule["conditions"][0]["threshold"] == 88.0


def test_reset_rules_goes_back_to_the_defaults() -> None:
    e = engine()
    e.update_rules("default", [])
    assert e.rules_for("default") == ()
    assert feed_series(e, spo2_series([80] * 100)) == []
    e.reset_rules("default")
    assert e.rules_for("default") == DEFAULT_RULES
    assert states(feed_series(e, spo2_series([80] * 100, start=T0 + 200))) == [("spo2_low", "raised")]


def roundtrip(e: RuleEngine, now: float, **settings: Any) -> RuleEngine:
    data = json.loads(json.dumps(e.snapshot(), allow_nan=False))
    settings.setdefault("timezone", "UTC")
    fresh = RuleEngine(WatchSettings(**settings))
    fresh.set_device("wrist-1", now, worn=True)
    fresh.set_device("cuff-1", now)
    fresh.restore(data, now)
    return fresh


def test_open_alerts_survive_a_restart() -> None:
    e = engine(reminder_interval_s=300)
    (raised,) = tachycardia(e)
    e.ack(raised.alert_id, T0 + 100)
    (spo2,) = feed_series(e, spo2_series([88] * 70))
    e.update_rules("bert", [{"id": "hr-high", "base": "hr-high", "threshold": 120}])
    before = e.open_alerts()
    restored = roundtrip(e, T0 + 200)
    assert restored.open_alerts() == before
    assert [r.to_dict() for r in restored.rules_for("bert")] == [r.to_dict() for r in e.rules_for("bert")]
    # evaluation resumes where it stopped: the SpO2 escalation and clearing use the same alert id
    events = feed_series(restored, spo2_series([83] * 61, start=T0 + 300))
    assert [(ev.alert_id, ev.state) for ev in events] == [(spo2.alert_id, "escalated")]
    events = feed_series(restored, [meas(LOINC_HEART_RATE, 80, T0 + 300 + i) for i in range(61)])
    assert [(ev.alert_id, ev.state) for ev in events] == [(raised.alert_id, "cleared")]
    # the acknowledgement survived too: no reminder for the acked alert, one for the escalated one
    assert [ev.alert_id for ev in restored.tick(T0 + 361 + 300)] == [spo2.alert_id]


def test_a_hold_in_progress_survives_a_restart() -> None:
    e = engine()
    assert feed_series(e, spo2_series([87] * 40)) == []
    restored = roundtrip(e, T0 + 40)
    (raised,) = feed_series(restored, spo2_series([87] * 21, start=T0 + 40))
    assert raised.started_at == T0 and raised.at == T0 + 60


def test_downtime_of_the_daemon_is_not_silence_of_the_device() -> None:
    e = engine(no_data_day_s=7200)
    e.feed(meas(LOINC_HEART_RATE, 70, T0), T0)
    restored = roundtrip(e, T0 + 3 * 3600, no_data_day_s=7200)
    assert restored.tick(T0 + 3 * 3600 + 1) == []
    assert [ev.kind for ev in restored.tick(T0 + 5 * 3600)] == ["no_data"]


@pytest.mark.parametrize("damage", [lambda d: d.update(version=99), lambda d: d.pop("alerts")])
def test_a_snapshot_that_is_not_one_is_refused_and_changes_nothing(damage: Any) -> None:
    e = engine()
    tachycardia(e)
    data = json.loads(json.dumps(e.snapshot()))
    damage(data)
    fresh = engine()
    with pytest.raises(SnapshotError):
        fresh.restore(data, T0 + 100)
    assert fresh.open_alerts() == () and fresh.snapshot()["states"] == []


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: next(a for a in d["alerts"] if a["kind"] == "hr_high").update(severity="apocalyptic"),
        lambda d: d["overrides"].update(bert=[{"id": "x"}]),
        lambda d: d["overrides"].update(bert=[{"id": "c", "kind": "call"}]),  # a kind reserved since
        lambda d: d["states"][0]["state"].update(abnormal=[True, True, True]),
        lambda d: d["alerts"].append("not an alert"),
    ],
)
def test_a_damaged_item_of_a_snapshot_is_left_out_and_the_open_sos_restored(damage: Any) -> None:
    """One damaged item (an alert, a person's rules, a rule's state) no longer costs the whole state:
    the open SOS alert stays open with its reminders and ack, and the other person's rules stay."""
    e = engine()
    tachycardia(e)
    e.open_external("sos-sos-1-x", "sos", "critical", "sos-1", T0 + 1, T0 + 1)
    e.update_rules("anna", [{"id": "spo2-low", "base": "spo2-low", "threshold": 86, "severe_threshold": 82}])
    data = json.loads(json.dumps(e.snapshot()))
    damage(data)
    fresh = engine()
    fresh.restore(data, T0 + 100)
    assert "sos-sos-1-x" in {a.alert_id for a in fresh.open_alerts()}
    assert "anna" in fresh.snapshot()["overrides"]
    assert fresh.ack("sos-sos-1-x", T0 + 101)
