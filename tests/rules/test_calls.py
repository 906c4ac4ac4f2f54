"""Call requests (issue 14): a press of a ``call`` button on the engine's injectable time.

Coalescing of repeated presses, the one reminder after ``call_reminder_s``, the ack, drills, and the
state across a snapshot/restore."""

from __future__ import annotations

import json

import pytest

from gateway.rules import AlertEvent, RuleEngine, RuleSpecError, WatchSettings
from tests.rules.util import T0, engine


def press(e: RuleEngine, n: int, t: float, device: str = "call-1", *, drill: bool = False) -> AlertEvent:
    return e.call_press(f"call-{device}-p{n}", device, f"p{n}", t, t, drill=drill)


def test_a_call_press_opens_a_medium_request_and_repeats_add_to_it() -> None:
    e = engine()
    first = press(e, 1, T0)
    assert (first.kind, first.state, first.severity, first.presses) == ("call", "raised", "medium", 1)
    assert first.alert_id == "call-call-1-p1" and first.started_at == T0
    second = press(e, 2, T0 + 20)
    third = press(e, 3, T0 + 45)
    # the same request, more presses: an update of the same alert id, each with its own key (msg_id)
    assert {second.alert_id, third.alert_id} == {first.alert_id}
    assert (second.presses, third.presses) == (2, 3)
    assert (second.at, second.started_at) == (T0 + 20, T0)
    assert len({first.key, second.key, third.key}) == 3
    (open_call,) = e.open_alerts()
    assert (open_call.kind, open_call.presses, open_call.last_press_at) == ("call", 3, T0 + 45)
    assert e.counters().raised == 1


def test_one_reminder_after_call_reminder_s_and_none_after_it() -> None:
    e = engine(call_reminder_s=600, reminder_interval_s=60)
    first = press(e, 1, T0)
    press(e, 2, T0 + 300)  # a further press does not move or add a reminder
    assert e.tick(T0 + 599) == []
    (rem,) = e.tick(T0 + 600)
    assert (rem.state, rem.alert_id, rem.reminder, rem.kind) == ("reminder", first.alert_id, 1, "call")
    assert e.tick(T0 + 660) == [] and e.tick(T0 + 6000) == []  # not the SOS cadence
    (open_call,) = e.open_alerts()
    assert open_call.reminders == 1


def test_the_ack_closes_the_request_and_the_next_press_opens_a_new_one() -> None:
    e = engine(call_reminder_s=600)
    first = press(e, 1, T0)
    assert e.ack(first.alert_id, T0 + 100) is True
    assert e.open_alerts() == ()
    assert e.tick(T0 + 700) == []  # no reminder after the ack
    again = press(e, 2, T0 + 800)
    assert again.alert_id == "call-call-1-p2" and again.presses == 1
    assert e.ack(first.alert_id, T0 + 900) is True  # a replayed ack


def test_an_sos_beside_an_open_call_is_its_own_alert_with_its_own_cadence() -> None:
    e = engine(call_reminder_s=600, reminder_interval_s=60)
    press(e, 1, T0)
    e.open_external("sos-sos-1-x", "sos", "critical", "sos-1", T0 + 1, T0 + 1)
    press(e, 2, T0 + 2)
    kinds = sorted((a.kind, a.presses) for a in e.open_alerts())
    assert kinds == [("call", 2), ("sos", 0)]
    reminders = [(ev.kind, ev.reminder) for t in range(60, 661, 60) for ev in e.tick(T0 + 1 + t)]
    assert reminders.count(("call", 1)) == 1
    assert [r for k, r in reminders if k == "sos"] == list(range(1, 12))


def test_presses_coalesce_per_person_and_per_button_of_nobody() -> None:
    e = engine()
    e.set_device("anna-bed", T0, person_id="anna")
    e.set_device("anna-kitchen", T0, person_id="anna")
    a = press(e, 1, T0, "anna-bed")
    b = press(e, 2, T0 + 5, "anna-kitchen")
    assert b.alert_id == a.alert_id and b.presses == 2 and b.device_id == "anna-bed"
    assert b.detail["pressed_by"] == "anna-kitchen"
    # two buttons of nobody may be two people: each its own request
    x = press(e, 3, T0, "hall")
    y = press(e, 4, T0 + 1, "porch")
    assert x.alert_id != y.alert_id and (x.presses, y.presses) == (1, 1)


def test_a_drill_press_is_its_own_request_and_never_hides_a_real_one() -> None:
    e = engine()
    real = press(e, 1, T0)
    drill = press(e, 2, T0 + 5, drill=True)
    assert drill.alert_id != real.alert_id and drill.drill and drill.presses == 1
    after = press(e, 3, T0 + 10)
    assert after.alert_id == real.alert_id and not after.drill and after.presses == 2
    e.ack(real.alert_id, T0 + 20)
    # with only the drill request open, a real press opens a real request
    fresh = press(e, 4, T0 + 30)
    assert fresh.alert_id not in (real.alert_id, drill.alert_id) and not fresh.drill


def test_a_replayed_press_gives_the_same_message_and_opens_nothing() -> None:
    e = engine()
    first = press(e, 1, T0)
    e.ack(first.alert_id, T0 + 1)
    replay = e.call_press(first.alert_id, "call-1", "p1", T0, T0 + 2)
    assert replay.key == first.key and e.open_alerts() == ()


def test_open_requests_survive_a_restart_and_keep_coalescing() -> None:
    e = engine(call_reminder_s=600)
    first = press(e, 1, T0)
    press(e, 2, T0 + 10)
    snap = json.loads(json.dumps(e.snapshot()))
    e2 = engine(call_reminder_s=600)
    e2.restore(snap, T0 + 100)
    (restored,) = e2.open_alerts()
    assert (restored.alert_id, restored.presses, restored.kind) == (first.alert_id, 2, "call")
    third = press(e2, 3, T0 + 200)
    assert third.alert_id == first.alert_id and third.presses == 3
    (rem,) = e2.tick(T0 + 600)
    assert rem.alert_id == first.alert_id
    assert e2.ack(first.alert_id, T0 + 700) and e2.open_alerts() == ()


def test_snapshots_from_before_call_requests_still_restore() -> None:
    e = engine()
    e.open_external("sos-a-1", "sos", "critical", "a", T0, T0)
    snap = json.loads(json.dumps(e.snapshot()))
    for a in snap["alerts"]:
        for key in ("presses", "drill", "last_press_at"):
            del a[key]
    e2 = engine()
    e2.restore(snap, T0 + 1)
    (a,) = e2.open_alerts()
    assert (a.kind, a.presses, a.drill) == ("sos", 0, False)


@pytest.mark.parametrize("bad", [0, -5, float("nan"), "900", True])
def test_call_reminder_s_is_validated(bad: object) -> None:
    with pytest.raises(RuleSpecError) as exc:
        WatchSettings(call_reminder_s=bad)  # type: ignore[arg-type]
    assert exc.value.field == "call_reminder_s"


def test_a_rule_may_not_take_the_kind_call() -> None:
    with pytest.raises(RuleSpecError):
        e = engine()
        e.update_rules(
            "anna", [{"id": "x", "kind": "call", "code": "8867-4", "op": ">", "threshold": 1, "severity": "low"}]
        )


def test_a_press_long_after_the_requests_last_one_opens_a_new_request() -> None:
    e = engine(call_coalesce_s=3600)
    first = press(e, 1, T0)
    joined = press(e, 2, T0 + 3000)  # within the window of the last press: the same request
    assert (joined.alert_id, joined.presses) == (first.alert_id, 2)
    # the window runs from the last press, not the first
    again = press(e, 3, T0 + 3000 + 3500)
    assert (again.alert_id, again.presses) == (first.alert_id, 3)
    later = press(e, 4, T0 + 3000 + 3500 + 3600)
    assert later.alert_id != first.alert_id and later.presses == 1 and later.state == "raised"
    # the old request stays open until the care centre acks it; the next press joins the new one
    assert {a.alert_id for a in e.open_alerts()} == {first.alert_id, later.alert_id}
    assert press(e, 5, T0 + 3000 + 3500 + 3700).alert_id == later.alert_id
    assert e.counters().calls_not_joined == 1
    assert e.ack(first.alert_id, T0 + 20000)
    assert {a.alert_id for a in e.open_alerts()} == {later.alert_id}
    with pytest.raises(RuleSpecError):
        WatchSettings(call_coalesce_s=0)
