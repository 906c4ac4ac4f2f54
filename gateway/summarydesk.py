"""The daily summary in the daemon: fed by the pipeline, kept in summary.sqlite3, published through the outbox.

- **Fed** by :meth:`SummaryDesk.feed`, a pipeline reading listener (after the outbox has the reading,
  after the DSP: the gateway-computed values arrive here as the measurements the pipeline publishes),
  and by :meth:`SummaryDesk.tap`, which wraps the care desk's ``submit`` to see the alerts it raises.
  Per reading a few dict operations (gateway/summary.py); the deltas are saved every
  :data:`SAVE_EVERY_S` in one transaction. A failure here is the summary's alone: counted in
  ``bugs`` and logged (ERROR with traceback, rate limited by :class:`~drivers.reconnect.BugLog`), and
  the reading carries on to every other listener; the SOS path never waits for, or depends on, it.
- **Scheduled** on two clocks: the wait is ``asyncio.sleep`` (the loop's monotonic clock), at most
  :data:`SAVE_EVERY_S` long, so a step of the wall clock is noticed within it; *which* summaries are
  due is decided from the wall clock in local time (:func:`gateway.summary.due_dates`) against the
  ``sent`` table: a day whose summary the outbox committed is never sent again, whatever the clock
  does; a day that ended while the gateway was off (or its clock behind) is sent when it is back.
  The wall clock must be synchronised, or the day must have ended :data:`UNSYNCED_GRACE_S` ago by an
  unsynchronised one (a Pi without network time still sends, later), so a Pi that booted on a stale
  clock never labels a summary with the wrong date.
- **Published** as a ``summary`` message on ``summary/{person_id}`` (the device id for a device of no
  person) in the outbox's observation lane, ``captured_at`` = the end of the day: sent as soon as the
  uplink can, ``historical`` when that is after an outage, once: its ``msg_id`` comes from the subject
  and the date, so a re-send (``gatewayctl report --send``, or a crash between the outbox's commit and
  the ``sent`` row) is a duplicate the cloud drops.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from drivers.base import ButtonPress, DeviceStatus, Measurement, Reading, UnknownDeviceKind, driver_class
from drivers.reconnect import BugLog
from gateway import messages
from gateway.config import Config
from gateway.errors import CommandRejected, OutboxError
from gateway.messages import Topics
from gateway.outbox import Lane, NewMessage
from gateway.summary import (
    Aggregator,
    Event,
    Schedule,
    compute,
    due_dates,
    dumps,
    local_zone,
    series,
    summary_body,
    zone_name,
)
from gateway.summarystore import STORE_NAME, SummaryStore, SummaryStoreError

log = logging.getLogger(__name__)

SAVE_EVERY_S = 30.0  # deltas saved (and the schedule looked at) this often at the most
UNSYNCED_GRACE_S = 2 * 3600.0  # an unsynchronised clock sends a day's summary this long after its end
PRUNE_EVERY_S = 3600.0

Submit = Callable[[NewMessage], "asyncio.Future[int]"]


def schedule_of(cfg: Config) -> Schedule:
    tz = cfg.summary.timezone
    return Schedule(cfg.summary.at, local_zone(tz), zone_name(tz))


class Subjects:
    """Who a device's data belongs to: its person (``[[rules.person]]``), or the device itself; which
    subjects have a summary every day (:attr:`configured`), and their worn devices."""

    def __init__(self, cfg: Config) -> None:
        self.gateway_id = cfg.gateway.id
        self.persons = {p.id for p in cfg.rules.persons}
        self._owner = {d: p.id for p in cfg.rules.persons for d in p.devices}
        self.wearables: dict[str, tuple[str, ...]] = {p.id: p.worn for p in cfg.rules.persons}
        for d in cfg.devices:
            if d.id not in self._owner:
                self.wearables[d.id] = (d.id,) if _wearable(d.kind) else ()
        # every day: each person, and each worn device of nobody (its "not worn" is worth a summary);
        # other devices of nobody (a cuff, a button, a receiver) on the days they gave anything
        self.configured = sorted(self.persons | {d for d, worn in self.wearables.items() if worn})

    def of(self, device_id: str) -> str:
        return self._owner.get(device_id, device_id)

    def of_press(self, button: str, via: object) -> str:
        """A press: its button's person; a radio button (not a configured device itself) belongs to the
        person of the receiver it came through (``extra["via"]``), if one is listed; else itself."""
        if button in self._owner or not isinstance(via, str):
            return self.of(button)
        return self._owner.get(via, button)

    def person_id(self, subject: str) -> str | None:
        return subject if subject in self.persons else None


def _wearable(kind: str) -> bool:
    try:
        return driver_class(kind).wearable
    except (UnknownDeviceKind, ImportError):
        return False


def build(
    store: SummaryStore,
    schedule: Schedule,
    subjects: Subjects,
    subject: str,
    date: dt.date,
    until: float,
    *,
    link_until: float | None = None,
    with_series: bool = False,
) -> dict[str, Any]:
    """The summary of ``subject`` for ``date`` from the store, as of ``until`` (the daemon and
    ``gatewayctl report`` with the daemon down both build it here)."""
    start, end = schedule.window(date)
    until = min(end, until)
    data = store.day(subject, start, end)
    figures = compute(data, start, end, until, wearables=subjects.wearables.get(subject, ()), link_until=link_until)
    body = summary_body(
        gateway_id=subjects.gateway_id,
        subject=subject,
        person_id=subjects.person_id(subject),
        date=date,
        zone=schedule.zone_label,
        start=start,
        end=end,
        until=until,
        figures=figures,
    )
    out: dict[str, Any] = {"summary": body}
    if with_series:
        out["series"] = series(data, start, until)
    return out


def subjects_of_day(store: SummaryStore, schedule: Schedule, subjects: Subjects, date: dt.date) -> list[str]:
    start, end = schedule.window(date)
    return sorted(set(subjects.configured) | store.subjects(start, end))


class SummaryDesk:
    def __init__(
        self,
        cfg: Config,
        topics: Topics,
        submit: Submit,
        store: SummaryStore,
        *,
        wall: Callable[[], float] = time.time,
        synchronised: Callable[[], bool] = lambda: True,
        is_drill: Callable[[str], bool] = lambda _alert_id: False,
        offset: Callable[[], float] | None = None,
        step_since: Callable[[float], float] = lambda _at: 0.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.topics = topics
        self.submit = submit
        self.store = store
        self.wall = wall
        self.synchronised = synchronised
        self.is_drill = is_drill
        self.schedule = schedule_of(cfg)
        self.subjects = Subjects(cfg)
        self.keep_days = cfg.summary.retention_days
        self.agg = Aggregator()
        self.agg.link_state = store.last_links()
        self.bugs = BugLog()
        self.sent = 0
        self.send_failures = 0
        self.store_failures = 0
        self._in_flight: set[tuple[str, dt.date]] = set()
        self._done: set[dt.date] = set()  # days whose every summary was committed (not looked at again)
        self._unrecorded: set[tuple[str, dt.date]] = set()  # committed, but the sent row failed to write
        self._alerted: dict[str, str] = {}  # button -> the alert id its press just raised (press_alert)
        self._last_prune = -math.inf
        self._store_warned = False
        # While the wall clock is not synchronised, what the gateway's clock stamped waits here, by the
        # clock's offset (wall - boot clock) when it came: a correction (:meth:`correct`) moves it as
        # the outbox moves the same readings; if none comes in UNSYNCED_GRACE_S, or a summary or a
        # report needs it first, it counts at the time it has (:meth:`release`).
        self.offset = offset
        # how far the wall clock stepped since it read a time (gateway.clock.Clock.step_since): a reading
        # read just before a step and fed after it counts where it was read (on today's clock), as the
        # outbox stamps it, not the step away; and waits (above) with today's offset, which it then has
        self.step_since = step_since
        self.monotonic = monotonic
        self._held: dict[float, Aggregator] = {}
        self._held_since: float | None = None

    def topic(self, subject: str) -> str:
        return f"{self.topics.base}/summary/{subject}"

    # -- inputs ----------------------------------------------------------------------------------

    def feed(self, reading: Reading) -> None:
        """Every reading, from the pipeline (after the outbox has it). Never raises."""
        try:
            self._feed(reading)
        except Exception as exc:  # noqa: BLE001 - the summary never costs a reading (module docstring)
            self.bugs.report(log, f"device {reading.device_id}", exc, "daily summary aggregation failed")

    def _target(self, device_clock: bool = False) -> Aggregator:
        """Where a reading goes: the aggregate, or (stamped by an unsynchronised gateway clock) the
        held part of its clock offset."""
        if device_clock or self.offset is None or self.synchronised():
            return self.agg
        off = round(self.offset(), 1)
        held = self._held.get(off)
        if held is None:
            held = self._held[off] = Aggregator()
            held.link_state = self.agg.link_state  # one device state, wherever its changes wait
            if self._held_since is None:
                self._held_since = self.monotonic()
        return held

    def correct(self, offset: float) -> None:
        """The clock became trustworthy (a correcting ClockEvent, as the outbox gets): what waits is
        moved by the difference between the true offset and the one it was stamped with."""
        self._merge_held(offset)

    def release(self) -> None:
        """What waits for a correction counts at the time it has (no correction came in time)."""
        self._merge_held(None)

    def _merge_held(self, offset: float | None) -> None:
        for off, held in self._held.items():
            pending = held.take()
            if pending and offset is not None:
                log.info("daily summary: readings of an unsynchronised clock moved by %.0f s", offset - off)
                pending = pending.shifted(offset - off)
            if pending:
                self.agg.restore(pending)
        self._held.clear()
        self._held_since = None

    def _feed(self, r: Reading) -> None:
        match r:
            case Measurement():
                subject = self.subjects.of(r.device_id)
                stored = r.extra.get("stored") is True  # a stored record: the device's own clock
                at = r.captured_at if stored else r.captured_at + self.step_since(r.captured_at)
                agg = self._target(device_clock=stored)
                agg.measurement(subject, r.device_id, r.code, float(r.value), r.quality, at, r.extra)
            case ButtonPress():
                subject = self.subjects.of_press(r.device_id, r.extra.get("via"))
                role = r.role
                alert_id = self._alerted.pop(r.device_id, None)
                if alert_id is None and role == "sos":
                    alert_id = messages.sos_alert_id(r)
                drill = alert_id is not None and self.is_drill(alert_id)
                name = "drill" if drill else role
                agg = self._target()
                at = r.captured_at + self.step_since(r.captured_at)
                agg.event(f"press|{r.device_id}|{r.press_id}", subject, Event(r.device_id, at, "press", name))
                if alert_id is not None and not drill:
                    # an alert per SOS press; a call press adds to an open request: one alert per request id
                    alert = Event(r.device_id, at, "alert", role)
                    agg.event(f"alert|{alert_id}", subject, alert)
            case DeviceStatus():
                subject = self.subjects.of(r.device_id)
                at = r.captured_at + self.step_since(r.captured_at)
                self._target().link(subject, r.device_id, at, r.state.value, r.battery_percent)
            case _:
                return

    def press_alert(self, alert_id: str, device_id: str, _at: float) -> None:
        """The pipeline's alert listener: the alert a press raised (or joined), seen just before the
        press itself reaches :meth:`feed`, which counts it for the press's person."""
        self._alerted[device_id] = alert_id

    def tap(self, submit: Submit) -> Submit:
        """``submit`` that also notes the alerts it carries (the care desk's: care rules, watch)."""

        def tapped(msg: NewMessage) -> asyncio.Future[int]:
            fut = submit(msg)
            if msg.lane is Lane.ALERT:
                try:
                    self._alert(msg.body)
                except Exception as exc:  # noqa: BLE001 - never costs the alert (module docstring)
                    self.bugs.report(log, f"device {msg.device_id}", exc, "daily summary alert count failed")
            return fut

        return tapped

    def _alert(self, body: bytes) -> None:
        doc = json.loads(body)
        if doc.get("state") != "raised" or doc.get("drill"):
            return
        device = str(doc["device_id"])
        if device == self.topics.gateway_id:
            return  # the gateway's own alerts (outbox_full, uplink_down) are nobody's health
        subject = str(doc["person_id"]) if doc.get("person_id") in self.subjects.persons else self.subjects.of(device)
        at = messages.parse_rfc3339(doc["captured_at"])
        self._target().event(f"alert|{doc['alert_id']}", subject, Event(device, at, "alert", str(doc["kind"])))

    # -- saving ----------------------------------------------------------------------------------

    def save(self) -> None:
        if self._held_since is not None and self.monotonic() - self._held_since >= UNSYNCED_GRACE_S:
            self.release()
        pending = self.agg.take()
        if pending and not self.store.save(pending, self.wall()):
            self.store_failures += 1
            self.agg.restore(pending)

    # -- publishing ------------------------------------------------------------------------------

    def check(self) -> list[tuple[str, dt.date]]:
        """Publish what is due (see the module docstring); the (subject, date) submitted."""
        self.save()
        now = self.wall()
        synced = self.synchronised()
        first_at = self.store.meta().get("created_at", now)
        out: list[tuple[str, dt.date]] = []
        candidates = due_dates(self.schedule, now, first_at, self._done, keep_days=self.keep_days)
        for date in candidates:
            if not synced and now < self.schedule.end(date) + UNSYNCED_GRACE_S:
                continue
            pending = False
            for subject in subjects_of_day(self.store, self.schedule, self.subjects, date):
                if date in self.store.sent_dates(subject) or (subject, date) in self._unrecorded:
                    continue
                pending = True
                if (subject, date) not in self._in_flight:
                    self.publish(subject, date)
                    out.append((subject, date))
            if not pending:
                self._done.add(date)
        if now - self._last_prune >= PRUNE_EVERY_S:
            self._last_prune = now
            self.store.prune(now - self.keep_days * 86400.0)
        return out

    def publish(self, subject: str, date: dt.date, *, until: float | None = None) -> dict[str, Any]:
        """Build and submit one summary to the outbox (the final one when ``until`` is None or past the
        day's end; a partial one, with its own msg_id, otherwise)."""
        self.release()
        self.save()
        now = self.wall()
        end = self.schedule.end(date)
        final = until is None or until >= end
        cut = end if final else min(now, end)
        body: dict[str, Any] = build(self.store, self.schedule, self.subjects, subject, date, cut)["summary"]
        msg = NewMessage(Lane.OBSERVATION, self.topic(subject), dumps(body), str(body["device_id"]), min(now, end))
        fut = self.submit(msg)
        if final:
            self._in_flight.add((subject, date))
            fut.add_done_callback(functools.partial(self._committed, subject, date, str(body["msg_id"])))
        log.info("summary of %s for %s handed to the outbox%s", subject, date, "" if final else " (partial)")
        return body

    def _committed(self, subject: str, date: dt.date, msg_id: str, fut: asyncio.Future[int]) -> None:
        self._in_flight.discard((subject, date))
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            self.sent += 1
            try:
                self.store.mark_sent(subject, date, msg_id, self.wall())
            except sqlite3.Error as err:  # not sent again by this run; after a restart, a duplicate at worst
                self._unrecorded.add((subject, date))
                log.warning("daily summary: the summary of %s for %s is not recorded as sent: %s", subject, date, err)
        elif isinstance(exc, OutboxError):
            self.send_failures += 1  # tried again at the next check
        else:
            raise exc

    async def run(self) -> None:
        """Save and publish until cancelled. Never raises: the daemon's TaskGroup holds the SOS path."""
        while True:
            try:
                self.check()
            except (SummaryStoreError, sqlite3.Error) as exc:
                level = logging.DEBUG if self._store_warned else logging.WARNING
                log.log(level, "daily summary: %s", exc)
                self._store_warned = True
            except Exception as exc:  # noqa: BLE001 - the summary never stops the daemon (module docstring)
                self.bugs.report(log, "daily summary", exc, "scheduling failed")
            await asyncio.sleep(self._sleep_s())

    def _sleep_s(self) -> float:
        now = self.wall()
        next_end = self.schedule.end(self.schedule.date_of(now))
        return max(0.05, min(SAVE_EVERY_S, next_end - now + 0.01))

    # -- the control socket (gatewayctl report) ----------------------------------------------------

    async def report(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """``{"date": "YYYY-MM-DD"?, "person": ID?, "send": bool?, "series": bool?}``: the summaries of
        that day (default: the day in progress, so far), optionally published now."""
        try:
            return self._report(args)
        except (SummaryStoreError, sqlite3.Error) as exc:
            raise CommandRejected("unavailable", str(exc)) from None

    def _report(self, args: Mapping[str, Any]) -> dict[str, Any]:
        now = self.wall()
        date = _date_arg(args.get("date"), self.schedule.date_of(now))
        self.release()
        self.save()
        person = args.get("person")
        if person is not None and not isinstance(person, str):
            raise CommandRejected("invalid", "person: expected a person or device id")
        names = [person] if person else subjects_of_day(self.store, self.schedule, self.subjects, date)
        out = []
        for subject in names:
            if args.get("send"):
                self.publish(subject, date, until=now)
            out.append(
                build(
                    self.store, self.schedule, self.subjects, subject, date, now, with_series=bool(args.get("series"))
                )
            )
        return {"timezone": self.schedule.zone_label, "summaries": out, "sent": bool(args.get("send"))}

    def status(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "send_failures": self.send_failures,
            "store_failures": self.store_failures,
            "bugs": self.bugs.count,
        }

    def close(self) -> None:
        self.release()
        self.save()
        self.store.close()


def _date_arg(value: Any, default: dt.date) -> dt.date:
    if value is None:
        return default
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise CommandRejected("invalid", f"date {value!r}: expected YYYY-MM-DD") from None


def attach_summary(
    cfg: Config,
    topics: Topics,
    submit: Submit,
    data_dir: Path,
    *,
    wall: Callable[[], float] = time.time,
    synchronised: Callable[[], bool] = lambda: True,
    drill_alerts: Callable[[], Mapping[str, Any]] | None = None,
    offset: Callable[[], float] | None = None,
    step_since: Callable[[float], float] = lambda _at: 0.0,
) -> SummaryDesk | None:
    """The daemon's summary desk (None with ``[summary] enabled = false``). The caller hooks
    :meth:`SummaryDesk.feed` to the pipeline's readings, :meth:`SummaryDesk.press_alert` to its alerts,
    and wraps the care desk's submit in :meth:`SummaryDesk.tap`."""
    if not cfg.summary.enabled:
        return None
    drills = drill_alerts

    def is_drill(alert_id: str) -> bool:
        return drills is not None and alert_id in drills()

    try:
        store = SummaryStore(data_dir / STORE_NAME, now=wall())
        return SummaryDesk(
            cfg,
            topics,
            submit,
            store,
            wall=wall,
            synchronised=synchronised,
            is_drill=is_drill,
            offset=offset,
            step_since=step_since,
        )
    except (SummaryStoreError, sqlite3.Error, OSError) as exc:  # never keeps the SOS path from starting
        log.warning("daily summary off: %s", exc)
        return None
