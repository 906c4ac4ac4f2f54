"""Care rules on physiological readings: hold, hysteresis, quality, escalation, storms, spot readings."""

from __future__ import annotations

import json

from drivers.base import Measurement
from gateway import messages
from gateway.rules import SEVERITIES, RuleEngine, WatchSettings
from gateway.rules.defaults import (
    CODE_AF_SCREENING,
    LOINC_DIASTOLIC,
    LOINC_HEART_RATE,
    LOINC_SPO2,
    LOINC_SYSTOLIC,
)
from tests.rules.util import T0, engine, feed_series, meas, spo2_series, states


def test_severities_are_the_contracts() -> None:
    assert SEVERITIES == messages.SEVERITIES


def test_desaturation_that_holds_raises_one_alert_and_clears_after_recovery_with_hysteresis() -> None:
    e = engine()
    # 30 s normal, 120 s at 87 %, 30 s at 91 % (recovered by the threshold, not by the hysteresis),
    # then 120 s at 95 %
    values = [97] * 30 + [87] * 120 + [91] * 30 + [95] * 120
    events = feed_series(e, spo2_series(values))
    assert states(events) == [("spo2_low", "raised"), ("spo2_low", "cleared")]
    raised, cleared = events
    assert raised.severity == "medium"
    assert raised.started_at == T0 + 30  # capture time of the first reading below 90 %
    assert raised.at == T0 + 30 + 60  # after the 60 s hold
    assert raised.alert_id == cleared.alert_id
    assert raised.rule["id"] == "spo2-low" and raised.rule["conditions"][0]["threshold"] == 90.0
    assert {r.code for r in raised.readings} == {LOINC_SPO2}
    assert all(r.value == 87.0 for r in raised.readings)
    assert raised.readings[0].captured_at == T0 + 30
    # not cleared during the 91 % band, cleared 60 s after the first reading at >= 92 %
    assert cleared.at == T0 + 180 + 60
    assert cleared.readings[0].value == 95.0
    assert e.open_alerts() == ()


def test_alert_time_is_capture_time_when_readings_arrive_late() -> None:
    e = engine()
    # an oximeter's stored session downloaded three hours later
    events = feed_series(e, spo2_series([86] * 90, extra={"stored": True}), delay=3 * 3600)
    (raised,) = events
    assert raised.started_at == T0 and raised.at == T0 + 60


def test_short_dip_under_the_duration_raises_nothing() -> None:
    e = engine()
    values = ([97] * 20 + [84] * 59) * 5 + [97] * 20  # dips of 59 s, even below the severe threshold
    assert feed_series(e, spo2_series(values)) == []
    assert e.open_alerts() == ()


def test_low_quality_artefact_raises_nothing() -> None:
    e = engine()
    readings = spo2_series([97] * 10) + spo2_series([70] * 300, start=T0 + 10, quality=0.2)
    assert feed_series(e, readings) == []
    assert e.counters().unusable == 300


def test_low_quality_readings_do_not_clear_an_open_alert() -> None:
    e = engine()
    events = feed_series(e, spo2_series([87] * 70))
    assert states(events) == [("spo2_low", "raised")]
    # good values, but from a signal the rule does not trust
    assert feed_series(e, spo2_series([98] * 300, start=T0 + 70, quality=0.1)) == []
    assert len(e.open_alerts()) == 1
    # they did not bridge the stream either: the alert stays open until good readings hold 60 s
    more = feed_series(e, spo2_series([98] * 61, start=T0 + 370))
    assert states(more) == [("spo2_low", "cleared")]


def test_low_quality_readings_cannot_extend_a_hold_across_a_gap() -> None:
    e = engine()
    readings = (
        spo2_series([87] * 40)
        + spo2_series([87] * 60, start=T0 + 40, quality=0.1)
        + spo2_series([87] * 30, start=T0 + 100)
    )
    # 40 s and 30 s of usable readings separated by 60 s without any: no 60 s hold
    assert feed_series(e, readings) == []


def test_escalation_reraises_once() -> None:
    e = engine()
    values = [88] * 70 + [83] * 200 + [86] * 20 + [83] * 200
    events = feed_series(e, spo2_series(values))
    assert [(ev.state, ev.severity) for ev in events] == [("raised", "medium"), ("escalated", "high")]
    assert events[1].alert_id == events[0].alert_id
    assert events[1].at == T0 + 70 + 60  # the severe level held its own 60 s
    assert min(r.value for r in events[1].readings) == 83.0


def test_severe_from_the_start_raises_at_the_severe_level_and_never_escalates() -> None:
    e = engine()
    events = feed_series(e, spo2_series([80] * 300))
    assert [(ev.state, ev.severity) for ev in events] == [("raised", "high")]


def test_a_storm_of_readings_gives_one_open_alert() -> None:
    e = engine()
    # 10 readings per second for 10 minutes, all far below the threshold
    readings = spo2_series([82] * 6000, step=0.1)
    events = feed_series(e, readings)
    assert [ev.state for ev in events] == ["raised"]
    assert len(e.open_alerts()) == 1


def test_alert_ids_are_deterministic() -> None:
    values = [97] * 5 + [87] * 100 + [97] * 100
    a = feed_series(engine(), spo2_series(values))
    b = feed_series(engine(), spo2_series(values))
    assert [(x.alert_id, x.key) for x in a] == [(y.alert_id, y.key) for y in b]
    assert a[0].key != a[1].key
    # JSON-able for the alert message and the outbox
    json.dumps([x.to_dict() for x in a], allow_nan=False)


def test_readings_out_of_order_are_ignored() -> None:
    e = engine()
    feed_series(e, spo2_series([97] * 100))
    late = meas(LOINC_SPO2, 70, T0 + 50)
    assert e.feed(late, T0 + 101) == []
    assert e.counters().out_of_order == 1


def test_heart_rate_rules_ignore_readings_in_motion() -> None:
    e = engine()
    moving = [meas(LOINC_HEART_RATE, 150, T0 + i, extra={"at_rest": False}) for i in range(300)]
    assert feed_series(e, moving) == []
    resting = [meas(LOINC_HEART_RATE, 150, T0 + 300 + i, extra={"at_rest": True}) for i in range(61)]
    assert states(feed_series(e, resting)) == [("hr_high", "raised")]
    low = engine()
    brady = [meas(LOINC_HEART_RATE, 35, T0 + i) for i in range(61)]
    assert [(ev.kind, ev.severity) for ev in feed_series(low, brady)] == [("hr_low", "high")]


def test_hypertensive_crisis_on_one_cuff_reading_clears_on_a_later_normal_one() -> None:
    e = engine()
    t1 = T0
    first = [
        meas(LOINC_SYSTOLIC, 186, t1, device="cuff-1", quality=None),
        meas(LOINC_DIASTOLIC, 104, t1, device="cuff-1", quality=None),
    ]
    (raised,) = feed_series(e, first)
    assert (raised.kind, raised.state, raised.severity) == ("bp_crisis", "raised", "high")
    assert raised.device_id == "cuff-1" and raised.started_at == t1
    # a reading in the hysteresis band keeps it open; the one after, below 170/110, clears it
    t2, t3 = T0 + 600, T0 + 1200
    band = [
        meas(LOINC_SYSTOLIC, 175, t2, device="cuff-1", quality=None),
        meas(LOINC_DIASTOLIC, 100, t2, device="cuff-1", quality=None),
    ]
    assert feed_series(e, band) == []
    normal = [
        meas(LOINC_DIASTOLIC, 88, t3, device="cuff-1", quality=None),
        meas(LOINC_SYSTOLIC, 142, t3, device="cuff-1", quality=None),
    ]
    (cleared,) = feed_series(e, normal)
    assert cleared.state == "cleared" and cleared.at == t3
    assert {r.code for r in cleared.readings} == {LOINC_SYSTOLIC, LOINC_DIASTOLIC}


def test_diastolic_alone_raises_a_crisis_with_both_values_of_the_reading() -> None:
    e = engine()
    t = T0
    events = feed_series(
        e,
        [
            meas(LOINC_SYSTOLIC, 165, t, device="cuff-1", quality=None),
            meas(LOINC_DIASTOLIC, 123, t, device="cuff-1", quality=None),
        ],
    )
    (raised,) = events
    assert {(r.code, r.value) for r in raised.readings} == {(LOINC_SYSTOLIC, 165.0), (LOINC_DIASTOLIC, 123.0)}


def test_irregular_pulse_flag_from_the_cuff() -> None:
    e = engine()
    flagged = {"irregular_pulse": True}
    readings = [
        meas(code, v, T0, device="cuff-1", quality=None, extra=flagged)
        for code, v in ((LOINC_SYSTOLIC, 132), (LOINC_DIASTOLIC, 84), (LOINC_HEART_RATE, 88))
    ]
    events = feed_series(e, readings)
    assert [(ev.kind, ev.state, ev.severity) for ev in events] == [("irregular_pulse", "raised", "low")]
    assert events[0].readings[0].extra == {"irregular_pulse": True}
    # the next day's reading without the flag clears it
    later = [meas(LOINC_SYSTOLIC, 130, T0 + 86400, device="cuff-1", quality=None)]
    assert states(feed_series(e, later)) == [("irregular_pulse", "cleared")]


def af(t: float, burden: float, label: str, *, quality: float = 0.8) -> Measurement:
    return meas(CODE_AF_SCREENING, burden, t, quality=quality, extra={"label": label, "burden": burden})


def test_af_episode_raises_a_follow_up_with_its_burden() -> None:
    e = engine()
    readings = [af(T0 + 60 * i, 0.0, "sinus") for i in range(60)]
    # then an AF episode: every minute's window is mostly AF
    readings += [af(T0 + 3600 + 60 * i, 0.6, "af") for i in range(60)]
    events = feed_series(e, readings)
    (raised,) = events
    assert (raised.kind, raised.severity) == ("af_followup", "low")
    mean = raised.detail["mean"]
    assert raised.detail["window_s"] == 3600
    assert 0.1 <= mean < 0.6
    assert raised.readings[-1].extra == {"label": "af", "burden": 0.6}
    # the mean is of the last hour, computed at the raise: 0.6 x (AF minutes) / readings in the window
    af_minutes = round((raised.at - (T0 + 3600)) / 60) + 1
    in_window = 60
    assert abs(mean - 0.6 * af_minutes / in_window) < 1e-9


def test_af_screening_without_enough_signal_raises_nothing() -> None:
    e = engine()
    unusable = [af(T0 + 60 * i, 0.9, "insufficient") for i in range(180)]
    unusable += [af(T0 + 10800 + 60 * i, 0.9, "af", quality=0.2) for i in range(180)]
    assert [ev.kind for ev in feed_series(e, unusable)] == ["not_worn"]  # the band's own watch, not AF
    # and an hour of data is needed before any judgement
    short = [af(T0 + 30000 + 60 * i, 0.9, "af") for i in range(59)]
    assert [ev.kind for ev in feed_series(e, short)] == ["not_worn"]  # cleared: good signal again


def test_person_rules_apply_to_their_devices_only() -> None:
    e = RuleEngine(WatchSettings(timezone="UTC"))
    e.set_device("wrist-a", T0, person_id="anna")
    e.set_device("wrist-b", T0, person_id="bert")
    e.update_rules("anna", [{"id": "spo2-low", "base": "spo2-low", "threshold": 88, "severe_threshold": 84}])
    assert [r.id for r in e.rules_for("anna")] == ["spo2-low"]
    a = feed_series(e, spo2_series([89] * 100, device="wrist-a"))
    b = feed_series(e, spo2_series([89] * 100, device="wrist-b"))
    assert a == []  # 89 % is usual for anna (COPD)
    assert [(ev.person_id, ev.device_id, ev.state) for ev in b] == [("bert", "wrist-b", "raised")]


def test_a_recovery_interrupted_by_silence_must_hold_again() -> None:
    e = engine()
    assert states(feed_series(e, spo2_series([87] * 70))) == [("spo2_low", "raised")]
    # 40 s recovered, 60 s without readings (the band was off), 40 s recovered: no 60 s in a row
    readings = spo2_series([96] * 40, start=T0 + 70) + spo2_series([96] * 40, start=T0 + 170)
    assert feed_series(e, readings) == []
    (cleared,) = feed_series(e, spo2_series([96] * 21, start=T0 + 210))
    assert cleared.at == T0 + 170 + 60


def test_af_follow_up_clears_after_hours_of_sinus_rhythm_not_after_one() -> None:
    e = engine()
    readings = [af(T0 + 60 * i, 0.5, "af") for i in range(120)]
    (raised,) = feed_series(e, readings)
    sinus_from = T0 + 7200
    one_hour = [af(sinus_from + 60 * i, 0.0, "sinus") for i in range(120)]
    assert feed_series(e, one_hour) == []
    rest = [af(sinus_from + 7200 + 60 * i, 0.0, "sinus") for i in range(8 * 60)]
    (cleared,) = feed_series(e, rest)
    assert cleared.alert_id == raised.alert_id
    # the hourly mean falls below 0.05 some 54 min into sinus rhythm; then 6 h must pass
    assert sinus_from + 6 * 3600 + 50 * 60 <= cleared.at <= sinus_from + 6 * 3600 + 60 * 60
    assert cleared.detail["mean"] < 0.05
