"""The care desk: the rule engine (gateway/rules) wired into the daemon.

Readings reach the engine from the pipeline after the outbox has them; the engine's transitions
(``raised``, ``escalated``, ``cleared``) become ``alert`` messages in the outbox's alert lane, so an
alert raised while the uplink is down is committed at once and is the first thing sent when the link
returns, with its real capture time. ``reminder`` events stay in the home (a WARNING in the journal
without values, and ``gatewayctl tail``). SOS presses are tracked as external alerts, so the care
centre's ``cmd/alert-ack`` stops their reminders too.

The engine's state is kept in ``care.sqlite3`` beside the registry and the outbox
(:mod:`gateway.carestore`), by what changed: an alert's row when that alert changes (an SOS press
writes one row at the end of the loop iteration that committed it, whatever the number of alerts
already open), the rest of the state (holds in progress, device watch, the cloud's rules) after
transitions, every minute and at stop. So a restart, even a SIGKILL, neither forgets an open alert nor
raises it twice (and if it did, the alert's deterministic ``msg_id`` lets the cloud drop it). Reminders
are scheduled in the engine, not scanned. Time comes from an injectable clock, so tests drive hours of
silence without sleeping; the daemon's is the timeline of gateway/clock.py, which a step of the wall
clock never moves. Readings enter it and events leave it through gateway/rules/timeline.py (alerts
carry wall-clock times).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from drivers.base import ButtonPress, Measurement, Reading, UnknownDeviceKind, driver_class
from drivers.reconnect import BugLog
from gateway import messages
from gateway.carestore import CareStore, CareStoreError
from gateway.config import RulesSection
from gateway.errors import OutboxError
from gateway.messages import Topics
from gateway.outbox import NewMessage
from gateway.registry import Registry
from gateway.rules import AlertEvent, RuleEngine, RuleSpec, SnapshotError, event_on_wall, reading_on_timeline

log = logging.getLogger(__name__)

SNAPSHOT_KEY = "rules_snapshot"  # where the registry kept the whole state before care.sqlite3
STORE_NAME = "care.sqlite3"
SAVE_EVERY_S = 60.0  # rule holds in progress are saved this often
SAVE_DELAY_S = 1.0  # transitions and acks are saved this soon (coalesced: a storm is one write)


class CareDesk:
    """Owns the :class:`RuleEngine` of the gateway. Implements the ``AlertDesk`` and ``RulesTarget``
    protocols of :mod:`gateway.commands` (``cmd/alert-ack``, ``cmd/rules-update``)."""

    def __init__(
        self,
        cfg: RulesSection,
        topics: Topics,
        submit: Callable[[NewMessage], asyncio.Future[int]],
        registry: Registry,
        *,
        clock: Callable[[], float] = time.time,
        wall: Callable[[], float] = time.time,
        step_since: Callable[[float], float] = lambda _at: 0.0,
        store: CareStore | None = None,
    ) -> None:
        self.cfg = cfg
        self.topics = topics
        self.submit = submit
        self.registry = registry
        self.store = store if store is not None else CareStore(registry.path.parent / STORE_NAME)
        self.clock = clock
        self.wall = wall
        # how far the wall clock stepped since it read a time (gateway.clock.Clock.step_since): a reading
        # read just before a step and fed after it enters the timeline where it was read, not the step away
        self.step_since = step_since
        self.engine = self._new_engine()
        self.sent = 0
        self.send_failures = 0
        self.bugs = BugLog()  # failed ticks (gateway status: bugs.care)
        self.reminders: list[AlertEvent] = []  # the last few, for status/tail
        self._dirty = False  # the rest of the state changed (saved every minute, or soon after a transition)
        self._changed: set[str] = set()  # alert ids whose row is to be written
        self._all_alerts = False  # rewrite every alert row (after a restore or a rules update)
        self._last_save = 0.0
        self._save_handle: asyncio.TimerHandle | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._restore()

    def _new_engine(self) -> RuleEngine:
        person_rules: dict[str, Sequence[RuleSpec]] = {p.id: p.rules for p in self.cfg.persons if p.rules is not None}
        engine = RuleEngine(self.cfg.watch, person_rules=person_rules)
        now = self.clock()
        for p in self.cfg.persons:
            for button in p.buttons:  # a receiver's buttons are no [[devices]] of their own: theirs from the start
                engine.set_device(button, now, person_id=p.id, worn=False, watch_link=False)
        return engine

    # -- devices -----------------------------------------------------------------------------------

    def add_device(self, device_id: str, kind: str, now: float | None = None) -> None:
        """A configured device, with its person and whether it is worn. A device given to no person
        belongs to ``default``; it is watched as worn when its driver says it is a wearable."""
        now = self.clock() if now is None else now
        person = self.cfg.person_of(device_id)
        if person is not None:
            worn = device_id in person.worn
        else:
            try:
                worn = driver_class(kind).wearable
            except (UnknownDeviceKind, ImportError):
                worn = False
        self.engine.set_device(device_id, now, person_id=person.id if person else None, worn=worn)
        self._dirty = True

    def remove_device(self, device_id: str) -> None:
        self.engine.remove_device(device_id, self.clock())
        self._dirty = True

    # -- inputs ------------------------------------------------------------------------------------

    def feed(self, reading: Reading) -> None:
        """Every reading, from the pipeline (after the outbox has it). Holds in progress change the
        engine's state: the next tick saves it when a minute has passed since the last save."""
        self._dirty = True
        now = self.clock()
        shift = now - self.wall()
        if not (isinstance(reading, Measurement) and reading.extra.get("stored") is True):  # a device's own clock
            shift += self.step_since(reading.captured_at)
        self._emit(self.engine.feed(reading_on_timeline(reading, shift, now), now))

    def _on_timeline(self, at: float, now: float) -> float:
        """A time read on the gateway's wall clock, on the timeline that reads ``now``: its age kept, moved
        by any step since it was read (a reading or press read just before a step, fed after it)."""
        return at + self.step_since(at) + now - self.wall()

    def sos(self, alert_id: str, device_id: str, at: float) -> None:
        """An SOS press was committed: track it for reminders until the care centre acks it. (The
        pipeline's alert listeners hear call requests too: those are the :meth:`call` desk's.)"""
        if messages.press_role_of(alert_id) != "sos":
            return
        now = self.clock()
        at = self._on_timeline(at, now)
        self.engine.open_external(alert_id, "sos", "critical", device_id, at, now)
        self._touch(alert_id)

    def call(self, press: ButtonPress, drill: bool) -> tuple[str, NewMessage]:
        """A press of a ``call`` button (the pipeline's ``CallDesk``): the call request it opens, or
        the open one of the same person (or button) it adds to, as (alert id, the ``alert`` message to
        commit). The request is tracked until the care centre's ``cmd/alert-ack``, with one reminder
        after ``rules.call_reminder_s``, and its row is saved with the commit."""
        now = self.clock()
        shift = now - self.wall()
        at = self._on_timeline(press.captured_at, now)
        ev = self.engine.call_press(
            messages.call_alert_id(press), press.device_id, press.press_id, at, now, drill=drill
        )
        ev = event_on_wall(ev, shift)
        self._touch(ev.alert_id)
        log.warning(
            "%s: call request %s, press %d%s", press.device_id, ev.alert_id, ev.presses, " (drill)" if drill else ""
        )
        return ev.alert_id, messages.call_alert(self.topics, press, drill=drill, ev=ev)

    def tick(self, *, outbox_fill: float | None = None, uplink_down_since: float | None = None) -> None:
        """The watch: outbox fill, uplink down, silent and disconnected devices, reminders."""
        now = self.clock()
        events: list[AlertEvent] = []
        if outbox_fill is not None:
            events += self.engine.set_outbox_fill(outbox_fill, now)
        events += self.engine.set_uplink_down(uplink_down_since, now)
        self.engine.wall_shift = self.wall() - now  # the daytime window's hours are the wall clock's
        events += self.engine.tick(now)
        self._emit(events)
        if self._dirty and now - self._last_save >= SAVE_EVERY_S:
            self.save()

    async def run(self, status: Callable[[], tuple[float | None, float | None]]) -> None:
        """Tick every ``tick_s``; ``status()`` gives (outbox fill 0..1, uplink down since). Never raises:
        the daemon's TaskGroup holds the SOS path. A failed tick is a bug of the care rules alone
        (logged at ERROR with its traceback, rate limited, counted in ``bugs``); the next tick tries
        again, while readings and SOS presses go on being committed and sent."""
        while True:
            try:
                fill, down_since = status()
                self.tick(outbox_fill=fill, uplink_down_since=down_since)
            except Exception as exc:  # noqa: BLE001 - the care rules never stop the daemon (docstring)
                self.bugs.report(log, "care rules", exc, "tick failed")
            await asyncio.sleep(self.cfg.tick_s)

    # -- AlertDesk / RulesTarget -------------------------------------------------------------------

    def ack(self, alert_id: str, now: float) -> bool:
        ok = self.engine.ack(alert_id, now)
        if ok:
            log.info("alert %s acknowledged by the care centre", alert_id)
            self._touch(alert_id)
        return ok

    def update_rules(self, person_id: str, rules: list[Mapping[str, Any]]) -> Mapping[str, Any]:
        result = self.engine.update_rules(person_id, rules)
        log.info("rules of person %s replaced by the cloud: %s", person_id, ", ".join(result["rules"]))
        self._all_alerts = True  # changed rules change their open alerts' rule summary
        self._save_soon()
        # Clears of removed rules come with the next tick; do it now so the reply follows them.
        self._emit(self.engine.tick(self.clock()))
        return result

    # -- outputs -----------------------------------------------------------------------------------

    def _emit(self, events: Sequence[AlertEvent]) -> None:
        if not events:
            return
        shift = self.clock() - self.wall()
        transitions = False
        for ev in (event_on_wall(e, shift) for e in events):
            self._touch(ev.alert_id)
            where = ev.device_id or "gateway"
            if ev.state == "reminder":
                self.reminders = [*self.reminders[-19:], ev]
                log.warning(
                    "%s: alert %s (%s, %s) still not acknowledged, reminder %d",
                    where,
                    ev.alert_id,
                    ev.kind,
                    ev.severity,
                    ev.reminder,
                )
            else:
                transitions = True
                log.warning("%s: alert %s %s (%s, %s)", where, ev.alert_id, ev.state, ev.kind, ev.severity)
                self.submit(messages.care_alert(self.topics, ev)).add_done_callback(self._sent)
        if transitions:  # rule states and the device watch moved with them
            self._save_soon()

    def _sent(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            self.sent += 1
        elif isinstance(exc, OutboxError):
            self.send_failures += 1
        else:  # nobody declared it possible: a bug, counted (a loop callback's raise would only be logged)
            self.bugs.report(log, "care rules", exc, "an alert's commit failed")

    # -- persistence -------------------------------------------------------------------------------

    def _touch(self, alert_id: str) -> None:
        """An alert changed: its row (and its ``recent`` entry once it closed) is written at the end of
        this loop iteration, after the commit that caused it; many changes in one iteration are one
        transaction. Without a running loop (tests, stop) it is written now."""
        self._changed.add(alert_id)
        if self._flush_handle is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._flush_alerts()
            return
        self._flush_handle = loop.call_soon(self._guarded, self._flush_alerts, "writing changed alerts failed")

    def _alert_rows(self) -> tuple[dict[str, dict[str, Any]], list[str], dict[str, float]]:
        changed, self._changed = self._changed, set()
        rows: dict[str, dict[str, Any]] = {}
        gone: list[str] = []
        recent: dict[str, float] = {}
        try:
            for aid in changed:
                doc = self.engine.alert_state(aid)
                if doc is None:
                    gone.append(aid)
                else:
                    rows[aid] = doc
                at = self.engine.recent_at(aid)
                if at is not None:
                    recent[aid] = at
        except Exception:
            self._changed |= changed  # a bug (counted by the caller): the changes wait for the next write
            raise
        return rows, gone, recent

    def _flush_alerts(self) -> None:
        self._flush_handle = None
        if not self._changed or self._all_alerts:
            return  # everything goes with the next full save
        rows, gone, recent = self._alert_rows()
        if not self.store.write(alerts=rows, gone=gone, recent=recent):
            self._changed |= rows.keys() | set(gone)

    def _save_soon(self) -> None:
        """Save the rest of the state within :data:`SAVE_DELAY_S`, once for any number of changes."""
        self._dirty = True
        if self._save_handle is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.save()
            return
        self._save_handle = loop.call_later(SAVE_DELAY_S, self._guarded, self.save, "saving failed")

    def _guarded(self, fn: Callable[[], None], what: str) -> None:
        """A loop callback of the desk: a bug in it is counted in ``bugs`` (and logged with its
        traceback, rate limited), not only logged by the event loop; the next change schedules it again."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - a bug of the desk's own: counted, the rules carry on
            self.bugs.report(log, "care rules", exc, what)

    def save(self) -> None:
        """Write what changed now (also at stop)."""
        if self._save_handle is not None:
            self._save_handle.cancel()
            self._save_handle = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._dirty and not self._changed and not self._all_alerts:
            return
        replace = self._all_alerts
        if replace:  # everything (after a migration or a rules update): rare, O(open alerts)
            self._changed.clear()
            state: dict[str, Any] | None = self.engine.snapshot()
            assert state is not None
            rows = {str(a["alert_id"]): a for a in state["alerts"]}
            gone: list[str] = []
            recent = {str(k): float(v) for k, v in state["recent"]}
        else:
            rows, gone, recent = self._alert_rows()
            state = self.engine.snapshot(alerts=False) if self._dirty else None
        if self.store.write(alerts=rows, gone=gone, recent=recent, state=state, replace=replace):
            self._dirty = self._all_alerts = False
            self._last_save = self.clock()
        else:
            self._changed |= rows.keys() | set(gone)
            self._all_alerts = replace

    def close(self) -> None:
        """Save and close the store (the daemon's stop)."""
        self.save()
        self.store.close()

    def _restore(self) -> None:
        try:
            snap = self.store.load(self.engine.snapshot(alerts=False))
        except CareStoreError as exc:
            log.warning("care rules: saved state not readable, starting fresh: %s", exc)
            snap = None
        migrated = False
        if snap is None:
            snap = self.registry.get(SNAPSHOT_KEY)  # saved by a gateway before care.sqlite3
            migrated = bool(snap)
        if snap:
            try:
                self.engine.restore(snap, self.clock())
            except SnapshotError as exc:
                log.warning("care rules: saved state not usable, starting fresh: %s", exc)
                self.engine = self._new_engine()
            else:
                n = len(self.engine.open_alerts())
                log.info("care rules: state restored, %d open alerts", n)
        if migrated:
            self._dirty = self._all_alerts = True
            self.save()
            if self._dirty:
                return  # not written: the registry keeps its copy until it is
            log.info("care rules: state moved from the registry to %s", self.store.path)
        if migrated or self.registry.get(SNAPSHOT_KEY) is not None:
            self.registry.delete(SNAPSHOT_KEY)  # in care.sqlite3 now

    def status(self) -> dict[str, Any]:
        c = self.engine.counters()
        now = self.clock()
        shift = now - self.wall()
        open_alerts = self.engine.open_alerts()
        return {
            "open_alerts": [
                {
                    "alert_id": a.alert_id,
                    "kind": a.kind,
                    "severity": a.severity,
                    "device_id": a.device_id,
                    "started_at": messages.rfc3339_ms(a.started_at - shift),
                    "acknowledged": a.acked_at is not None,
                }
                for a in open_alerts
            ],
            # call requests waiting for the care service to phone back (until cmd/alert-ack)
            "calls": [
                {
                    "alert_id": a.alert_id,
                    "device_id": a.device_id,
                    "person_id": a.person_id,
                    "presses": a.presses,
                    "drill": a.drill,
                    "first_press_at": messages.rfc3339_ms(a.started_at - shift),
                    "last_press_at": messages.rfc3339_ms((a.last_press_at or a.raised_at) - shift),
                    "waiting_s": round(now - a.raised_at, 1),
                    "reminded": a.reminders > 0,
                }
                for a in open_alerts
                if a.kind == "call"
            ],
            "counters": dataclasses.asdict(c),
            "alerts_sent": self.sent,
        }
