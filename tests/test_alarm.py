"""The SMS fallback's policy, sans-I/O: events and times in, SMS to send out."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.serial.modem import ModemOptions
from gateway.alarm import (
    AlarmPolicy,
    AlarmStore,
    Case,
    SendSms,
    SmsFallback,
    WatchChange,
    check_template,
    render_text,
    same_number,
)
from gateway.config import AlarmSection
from gateway.messages import Topics
from gateway.outbox import NewMessage

CC, CC2, G1 = "+8610000000001", "+8610000000002", "+8613900000001"
CFG = AlarmSection(
    enabled=True,
    sms_after_s=30.0,
    care_centre=(CC, CC2),
    guardians=(G1,),
    max_attempts=3,
    retry_base_s=10.0,
    retry_cap_s=100.0,
    report_timeout_s=60.0,
    unavailable_after_s=3600.0,
)
T0 = 1_800_000_000.0


def policy(cfg: AlarmSection = CFG, ready: bool = True) -> AlarmPolicy:
    p = AlarmPolicy(cfg)
    p.set_modem_ready(ready, T0)
    return p


def sends(actions: list[object]) -> list[SendSms]:
    return [a for a in actions if isinstance(a, SendSms)]


def drain(p: AlarmPolicy, now: float, *, mr_from: int = 1) -> list[SendSms]:
    """Tick and answer every send with an accepted SMS, until nothing is due at ``now``."""
    out: list[SendSms] = []
    mr = mr_from
    while True:
        got = sends(p.tick(now))
        if not got:
            return out
        for s in got:
            p.sent(s.attempt_id, [mr], now, expect_report=True)
            mr += 1
        out += got


def test_puback_in_time_means_no_sms() -> None:
    p = policy()
    p.sos("sos-a", "sos-1", T0, False, "text", T0, uplink_up=True)
    assert drain(p, T0 + 5) == []
    p.at_broker("sos-a", T0 + 6)
    assert drain(p, T0 + 3600) == []
    assert p.cases["sos-a"].state == "done" and not p.cases["sos-a"].attempts


def test_no_puback_within_sms_after_s_sends_once_to_each_recipient_care_centre_first() -> None:
    p = policy()
    p.sos("sos-a", "sos-1", T0, False, "text", T0, uplink_up=True)
    assert drain(p, T0 + 29.9) == []
    sent = drain(p, T0 + 30)
    assert [s.to for s in sent] == [CC, CC2, G1]
    assert len({s.attempt_id for s in sent}) == 3
    p.at_broker("sos-a", T0 + 31)  # a late PUBACK does not stop what started (the family was told)
    for mr in (1, 2, 3):
        p.report(mr, True, True, T0 + 40)
    assert drain(p, T0 + 10_000) == []
    case = p.cases["sos-a"]
    assert case.state == "done" and [a.status for a in case.attempts] == ["delivered"] * 3


def test_press_while_the_uplink_is_down_or_the_link_dropping_sends_at_once() -> None:
    p = policy()
    p.sos("sos-a", "sos-1", T0, False, "text", T0, uplink_up=False)
    first = sends(p.tick(T0))
    assert [s.to for s in first] == [CC]  # one at a time: the modem sends one SMS at a time
    p.sos("sos-b", "sos-1", T0 + 1, False, "text", T0 + 1, uplink_up=True)
    p.uplink_down(T0 + 2)
    p.sent(first[0].attempt_id, [1], T0 + 2, expect_report=True)
    sent = drain(p, T0 + 2, mr_from=2)
    assert [(s.alert_id, s.to) for s in sent] == [
        ("sos-a", CC2),
        ("sos-a", G1),
        ("sos-b", CC),
        ("sos-b", CC2),
        ("sos-b", G1),
    ]


def test_failed_and_missing_reports_retry_with_backoff_up_to_the_limit() -> None:
    cfg = dataclasses.replace(CFG, care_centre=(CC,), guardians=())
    p = policy(cfg)
    p.sos("sos-a", "sos-1", T0, False, "text", T0, uplink_up=False)
    (s1,) = drain(p, T0)
    p.report(1, False, False, T0 + 1)  # the SMSC still tries: nothing changes
    assert drain(p, T0 + 50) == []
    p.report(1, False, True, T0 + 5)  # final failure: counted, retried after retry_base_s
    assert drain(p, T0 + 14) == []
    (s2,) = drain(p, T0 + 15, mr_from=2)
    # no report within report_timeout_s: counted, retried after 2 x retry_base_s
    assert drain(p, T0 + 15 + 60 - 1) == []
    assert drain(p, T0 + 15 + 60) == []  # the timeout itself only schedules the retry
    p.report(2, False, True, T0 + 80)  # a late failure report of an overdue SMS counts once only
    (s3,) = drain(p, T0 + 15 + 60 + 20, mr_from=3)
    p.report(3, False, True, T0 + 100)
    assert drain(p, T0 + 100_000) == []  # three SMS accepted without delivery: gave up
    case = p.cases["sos-a"]
    assert [a.status for a in case.attempts] == ["failed", "no_report", "failed"]
    assert case.recipients[0].state == "gave_up" and case.state == "done"
    assert s1.to == s2.to == s3.to == CC


def test_an_ack_stops_further_sms_but_not_what_is_in_flight() -> None:
    p = policy()
    p.sos("sos-a", "sos-1", T0, False, "text", T0, uplink_up=False)
    (s1,) = sends(p.tick(T0))
    p.acked("sos-a", T0 + 1)
    p.sent(s1.attempt_id, [1], T0 + 2, expect_report=True)
    assert drain(p, T0 + 10_000) == []
    case = p.cases["sos-a"]
    # the in-flight SMS is followed to its end (no report: overdue), then nobody is tried again
    assert [r.state for r in case.recipients] == ["stopped", "stopped", "stopped"]
    assert [a.status for a in case.attempts] == ["no_report"]


def test_path_failures_do_not_count_and_wait_for_the_modem() -> None:
    cfg = dataclasses.replace(CFG, care_centre=(CC,), guardians=(), max_attempts=1)
    p = policy(cfg, ready=False)
    p.sos("sos-a", "sos-1", T0, False, "text", T0, uplink_up=False)
    (s1,) = sends(p.tick(T0))  # the first try is made (and recorded) even with the modem away
    p.failed(s1.attempt_id, "modem_unavailable", "path", T0)
    assert sends(p.tick(T0 + 5000)) == []  # no retry storm while the modem is away
    p.set_modem_ready(True, T0 + 5001)
    (s2,) = sends(p.tick(T0 + 5001))  # the modem is back: at once
    p.failed(s2.attempt_id, "network_failure", "path", T0 + 5001)  # +CMS ERROR 38: not counted either
    assert sends(p.tick(T0 + 5001 + 9)) == []
    (s3,) = sends(p.tick(T0 + 5001 + 20))
    p.sent(s3.attempt_id, [9], T0 + 5030, expect_report=True)
    p.report(9, True, True, T0 + 5031)
    case = p.cases["sos-a"]
    assert [a.status for a in case.attempts] == ["failed", "failed", "delivered"]
    assert [a.error for a in case.attempts] == ["modem_unavailable", "network_failure", None]


def test_a_bad_number_stops_for_that_recipient_only() -> None:
    p = policy()
    p.sos("sos-a", "sos-1", T0, False, "text", T0, uplink_up=False)
    (s1,) = sends(p.tick(T0))
    p.failed(s1.attempt_id, "recipient_rejected", "recipient", T0)
    sent = drain(p, T0)
    assert [s.to for s in sent] == [CC2, G1]
    assert drain(p, T0 + 10_000) == []


def test_restart_mid_retries_no_duplicate_to_the_delivered_and_no_lost_attempt(tmp_path: Path) -> None:
    p = policy()
    p.sos("sos-a", "sos-1", T0, False, "text", T0, uplink_up=False)
    (s1,) = sends(p.tick(T0))
    p.sent(s1.attempt_id, [1], T0, expect_report=True)
    (s2,) = sends(p.tick(T0))
    p.sent(s2.attempt_id, [2], T0, expect_report=True)
    p.report(1, True, True, T0 + 1)  # CC delivered
    (s3,) = sends(p.tick(T0 + 2))  # G1 being handed to the modem ... and the daemon dies here
    store = AlarmStore(tmp_path / "alarm.sqlite3")
    store.save(p.cases.values())
    store.close()

    store = AlarmStore(tmp_path / "alarm.sqlite3")
    q = policy()
    q.restore(store.open_cases(), T0 + 30)
    store.close()
    case = q.cases["sos-a"]
    assert [a.status for a in case.attempts] == ["delivered", "sent", "interrupted"]
    after = drain(q, T0 + 30, mr_from=50)
    assert [s.to for s in after] == [G1], "the interrupted one again; the delivered one never"
    assert after[0].attempt_id > s3.attempt_id, "attempt ids are not reused after a restart"
    q.report(2, True, True, T0 + 31)  # CC2's report arrives after the restart: still matched
    q.report(50, True, True, T0 + 32)
    assert q.cases["sos-a"].state == "done"
    assert s1.to == CC and s2.to == CC2


def test_a_damaged_record_never_keeps_the_fallback_from_starting(tmp_path: Path) -> None:
    """A record SQLite cannot read is moved aside and a fresh one started; in a readable one, a row that
    is not a case (a field missing, a time that is text, JSON that is not an object) is skipped and
    the good case next to it restored; an unreadable watch is no watch."""
    path = tmp_path / "alarm.sqlite3"
    path.write_bytes(b"not a database" * 100)
    fresh = AlarmStore(path)
    assert fresh.open_cases() == [] and list(tmp_path.glob("alarm.sqlite3.damaged-*"))
    p = policy()
    p.sos("sos-a", "sos-1", T0, False, "text", T0, uplink_up=False)
    fresh.save(p.cases.values())
    good = p.cases["sos-a"].to_json()
    bad_time = good.replace(f'"pressed_at": {T0}', '"pressed_at": "soon"')
    assert bad_time != good
    rows = [("sos-b", '{"alert_id": "sos-b"}'), ("sos-c", bad_time), ("sos-d", "[1, 2]"), ("sos-e", "{")]
    fresh.db.executemany("INSERT INTO cases VALUES (?, 1, ?)", rows)
    fresh.save_rows([], watch={"raised": True})
    fresh.db.execute("INSERT OR REPLACE INTO meta VALUES ('other', '{')")
    assert [c.alert_id for c in fresh.open_cases()] == ["sos-a"]
    assert fresh.get_meta("other") is None and fresh.get_meta("watch") == {"raised": True}
    fresh.close()
    cfg = dataclasses.replace(CFG, modem=ModemOptions(port=str(tmp_path / "modem")))  # never opened here
    fallback = SmsFallback(cfg, Topics("homecare/v1", "gw"), tmp_path, _no_submit, lambda: False, clock=lambda: T0 + 5)
    try:  # the whole start: the good case, and the watch raised from now (its start unreadable)
        assert list(fallback.policy.cases) == ["sos-a"]
        assert fallback.policy.watch_raised and fallback.policy.down_since == T0 + 5
    finally:
        fallback.store.close()


def _no_submit(_msg: NewMessage) -> asyncio.Future[int]:
    raise AssertionError("nothing is submitted at start")


def test_a_report_names_its_recipient_so_a_wrapped_reference_does_not_mislead() -> None:
    p = policy()
    p.sos("sos-a", "sos-1", T0, False, "text", T0, uplink_up=False)
    (s1,) = sends(p.tick(T0))
    p.sent(s1.attempt_id, [7], T0, expect_report=True)
    p.report(7, True, True, T0 + 1, to="+8613999999999")  # TP-MR 7 of another recipient
    assert p.cases["sos-a"].attempts[0].status == "sent"
    p.report(7, True, True, T0 + 2, to="010" + CC[-8:])  # the network writes it nationally
    assert p.cases["sos-a"].attempts[0].status == "delivered"
    assert same_number("+8613800138000", "13800138000") and not same_number("+8613800138000", "13800138001")


def test_case_record_round_trips() -> None:
    p = policy()
    p.sos("sos-a", "sos-1", T0, True, "文本", T0, uplink_up=False)
    drain(p, T0)
    c = p.cases["sos-a"]
    again = Case.from_json(c.to_json())
    assert again == c


def test_the_modem_unavailable_watch() -> None:
    p = AlarmPolicy(CFG)
    assert p.set_modem_ready(False, T0) == []
    assert p.tick(T0 + 3599) == []
    (w,) = [a for a in p.tick(T0 + 3600) if isinstance(a, WatchChange)]
    assert (w.state, w.since) == ("raised", T0)
    assert [a for a in p.tick(T0 + 7200) if isinstance(a, WatchChange)] == []  # raised once
    (c,) = p.set_modem_ready(True, T0 + 7300)
    assert isinstance(c, WatchChange) and c.state == "cleared"


def test_a_clock_stepped_back_delays_by_at_most_one_interval() -> None:
    p = policy()
    p.sos("sos-a", "sos-1", T0, False, "text", T0, uplink_up=True)
    # the wall clock jumps back a day: the 30 s deadline is pulled in, not pushed a day away
    back = T0 - 86400
    assert sends(p.tick(back)) == []
    assert [s.to for s in sends(p.tick(back + 30))] == [CC]


def test_texts_name_person_button_time_gateway_and_say_drill() -> None:
    cfg = dataclasses.replace(CFG, language="en", names=(("anna", "Anna Li"), ("sos-1", "bedroom")), timezone="UTC")
    t = dt.datetime(2026, 11, 24, 3, 24, 6, tzinfo=dt.UTC).timestamp()
    text = render_text(cfg, gateway_id="gw-1", device_id="sos-1", person_id="anna", at=t, drill=False)
    assert text.startswith("SOS: Anna Li pressed the emergency button bedroom at 2026-11-24 03:24.")
    assert "gw-1" in text and "DRILL" not in text
    drill = render_text(cfg, gateway_id="gw-1", device_id="sos-1", person_id="anna", at=t, drill=True)
    assert drill.startswith("DRILL - NOT A REAL EMERGENCY. SOS: Anna Li")
    zh = dataclasses.replace(cfg, language="zh", timezone="Asia/Shanghai", names=())
    text = render_text(zh, gateway_id="gw-1", device_id="sos-1", person_id=None, at=t, drill=True)
    assert text.startswith("【演练，不是真实紧急情况】紧急呼叫：住户于2026-11-24 11:24按下了紧急按钮（sos-1）")  # noqa: RUF001


@pytest.mark.parametrize(
    ("template", "problem"),
    [("{drill}SOS {person} {button} {time} {gateway}", None), ("SOS {person}", "{drill}"), ("{drill}{phone}", "only")],
)
def test_own_templates_are_checked(template: str, problem: str | None) -> None:
    got = check_template(template)
    assert (got is None) if problem is None else (got is not None and problem in got)


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{drill} Anna Li {person:d}", "a format spec in {person}"),
        ("{drill} Anna Li {person!x}", "a conversion in {person}"),
        ("{drill} Anna Li {person!r}", "a conversion in {person}"),
        ("{drill:>99999999999999999999} Anna Li", "a format spec in {drill}"),
        ("{drill} Anna Li {time:%H:%M}", "a format spec in {time}"),
        ("{drill} Anna Li {button:{person}}", "a format spec in {button}"),
        ("{drill} Anna Li {person[0]}", "1 that is not a plain name"),
        ("{drill} Anna Li {} {0}", "2 that are not plain names"),
    ],
)
def test_an_own_template_with_anything_but_plain_fields_is_refused_without_being_quoted(
    template: str, problem: str
) -> None:
    """A format spec, a conversion, an index or a position: each raised (ValueError, KeyError,
    IndexError, MemoryError) at the press, after the check had passed it. Now refused by name; the
    template (which may name a person) is not repeated."""
    got = check_template(template)
    assert got is not None and problem in got, got
    assert "Anna Li" not in got and "%H" not in got and "9999" not in got


def test_a_template_the_check_passes_renders() -> None:
    cfg = dataclasses.replace(CFG, language="en", template="{drill}SOS {person:} {button} {time} {gateway}")
    assert check_template(cfg.template or "") is None
    text = render_text(cfg, gateway_id="gw-1", device_id="sos-1", person_id=None, at=T0, drill=True)
    assert text.startswith("DRILL - NOT A REAL EMERGENCY. SOS the resident sos-1 ")


ops = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.floats(0, 120)),
        st.tuples(st.just("sent"), st.booleans()),
        st.tuples(st.just("failed"), st.sampled_from(["path", "recipient"])),
        st.tuples(st.just("report"), st.integers(0, 12), st.booleans(), st.booleans()),
        st.tuples(st.just("ack"), st.integers(0, 1)),
        st.tuples(st.just("ready"), st.booleans()),
        st.tuples(st.just("restart"), st.just(0)),
        st.tuples(st.just("sos"), st.booleans()),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_invariants_under_any_sequence_of_events(seq: list[tuple[object, ...]]) -> None:
    """Whatever happens: one SMS in flight at most, never an SMS to a recipient with a delivery
    report, never one after the ack, at most max_attempts counted per recipient, attempts not reused."""
    p = policy()
    now = T0
    mr = 0
    in_flight: SendSms | None = None
    alerts: list[str] = []
    acked: set[str] = set()
    ids: set[int] = set()
    for op in seq:
        kind = op[0]
        if kind == "sos":
            alert = f"sos-{len(alerts)}"
            alerts.append(alert)
            p.sos(alert, "sos-1", now, False, "t", now, uplink_up=bool(op[1]))
        elif kind == "tick":
            now += float(op[1])  # type: ignore[arg-type]
            for s in sends(p.tick(now)):
                assert in_flight is None, "two SMS in flight"
                case = p.cases[s.alert_id]
                rcp = next(r for r in case.recipients if r.to == s.to)
                assert not any(a.status == "delivered" for a in case.attempts if a.to == s.to), "resent to delivered"
                assert s.alert_id not in acked, "sent after the ack"
                assert rcp.counted < CFG.max_attempts
                assert s.attempt_id not in ids
                ids.add(s.attempt_id)
                in_flight = s
        elif kind == "sent" and in_flight is not None:
            mr += 1
            p.sent(in_flight.attempt_id, [mr % 13], now, expect_report=bool(op[1]))
            in_flight = None
        elif kind == "failed" and in_flight is not None:
            p.failed(in_flight.attempt_id, "x", op[1], now)  # type: ignore[arg-type]
            in_flight = None
        elif kind == "report":
            p.report(int(op[1]), bool(op[2]), bool(op[3]), now)  # type: ignore[call-overload]
        elif kind == "ack" and alerts:
            alert = alerts[int(op[1]) % len(alerts)]  # type: ignore[call-overload]
            p.acked(alert, now)
            acked.add(alert)
        elif kind == "ready":
            p.set_modem_ready(bool(op[1]), now)
        elif kind == "restart":
            cases = [Case.from_json(c.to_json()) for c in p.cases.values()]
            ready = p.modem_ready
            p = AlarmPolicy(CFG)
            p.set_modem_ready(ready, now)
            p.restore(cases, now)
            assert all(a.status != "sending" for c in p.cases.values() for a in c.attempts)
            in_flight = None
        for c in p.cases.values():
            for r in c.recipients:
                assert r.counted <= CFG.max_attempts


def test_a_report_outcome_during_a_write_of_the_record_is_written_with_the_next(tmp_path: Path) -> None:
    """The record is written on its own thread while the loop goes on: the outbox's future of a fallback
    report may resolve meanwhile and mark the case reported. The save then cleaned every id it had taken,
    that one too: memory said reported, disk did not (the review's experiment), and a restart reported the
    case again. Now the case stays dirty and the next save writes it."""
    cfg = dataclasses.replace(CFG, modem=ModemOptions(port=str(tmp_path / "modem")))  # never opened here
    fallback = SmsFallback(cfg, Topics("homecare/v1", "gw"), tmp_path, _no_submit, lambda: False, clock=lambda: T0)
    fallback.policy.sos("sos-a", "sos-1", T0, False, "text", T0, uplink_up=False)
    case = fallback.policy.cases["sos-a"]
    case.version = 2  # two attempts changed: a report of version 2 is on its way
    real_write = fallback._write

    async def go() -> set[str]:
        loop = asyncio.get_running_loop()
        reported = threading.Event()

        def report_meanwhile() -> None:
            fut: asyncio.Future[int] = loop.create_future()
            fut.set_result(7)
            fallback._reporting.add(case.alert_id)
            fallback._reported(case, case.version, fut)  # the outbox committed the report
            reported.set()

        def write(rows: list[tuple[str, int, str]], watch: object) -> Exception | None:
            loop.call_soon_threadsafe(report_meanwhile)
            assert reported.wait(5)
            return real_write(rows, watch)  # type: ignore[arg-type]

        fallback._write = write  # type: ignore[method-assign]
        await fallback._save(force=True)
        dirty_after = set(fallback.policy.dirty)
        fallback._write = real_write  # type: ignore[method-assign]
        await fallback._save(force=True)
        return dirty_after

    try:
        dirty_after = asyncio.run(go())
        assert dirty_after == {"sos-a"}, "the change made during the write waits for the next save"
        (stored,) = fallback.store.open_cases()
        assert stored.reported == case.version == case.reported == 2
    finally:
        fallback._io.shutdown()
        fallback.store.close()
