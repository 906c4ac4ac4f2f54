"""The second path of an SOS: SMS through a cellular modem when the internet path fails.

An SOS press is committed to the outbox and sent to the broker as always. This module watches it (and,
when ``[alarm] calls = true``, a call request, the first press of it, the same way with its own text):

- the press happened while the uplink was down, or the uplink goes down before the broker's PUBACK,
  or no PUBACK arrived within ``alarm.sms_after_s`` (default 30 s): the alert goes by SMS to every
  configured recipient, care-centre numbers first, then guardians, once per alert, with a text from a
  template naming the person, the button, the time and the gateway (``drill`` stated plainly);
- each recipient is retried with backoff until a delivery report says delivered, or
  ``max_attempts`` SMS were accepted by the network without one, or ``retry_for_s`` has passed;
  failures of the path itself (modem away, SIM missing, no network, network congestion) are retried
  without counting, as they send nothing;
- a later acknowledgement of the alert through the cloud (``cmd/alert-ack``) stops further SMS;
- every attempt and its outcome is recorded durably (``<data_dir>/alarm.sqlite3``), and when the link
  is up the alert is reported again with ``fallback: [{via: "sms", to, at, status}]`` (same
  ``alert_id``; a later report lists every attempt so far and supersedes the earlier one); a record
  that cannot be written (a full disk) never holds an SMS back: the attempts wait in memory for a save
  that works;
- a restart in the middle keeps every attempt: an SMS being handed to the modem at the crash is
  recorded ``interrupted`` and retried; a recipient with a delivery report is never sent again;
- ``modem_unavailable``: a watch alert when the fallback path has been unable to send for
  ``unavailable_after_s`` (default 1 h), cleared when it can again.

:class:`AlarmPolicy` is the sans-I/O core (events and ``now`` in, :class:`SendSms` / report actions
out, times on the runner's clock so a restart can resume). :class:`SmsFallback` is the thin async
runner: the modem, the SQLite record, the outbox messages, and the hooks the daemon calls
(:func:`attach_sms_fallback`). In the daemon its clock is the rules' timeline (gateway/clock.py), which a
step of the wall clock never moves: a press enters it as the care desk's readings do, and the times
of a report leave it onto the wall clock of the moment, so that no step, forwards or back, makes a
press look older or younger than it is (a first NTP sync six hours ahead gave every recipient up).
Phone numbers are personal data: logged at DEBUG only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import logging
import sqlite3
import string
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from drivers.base import TransientDeviceError, device_zone
from drivers.reconnect import BugLog, ConnState
from drivers.serial import at
from drivers.serial.modem import Modem, ModemHealth, ModemUnavailable
from gateway import messages
from gateway.config import AlarmSection, Config
from gateway.drill import DrillWindow
from gateway.errors import GatewayError
from gateway.messages import Topics
from gateway.outbox import Lane, NewMessage, StoredMessage
from gateway.rules import event_on_wall
from gateway.rules.engine import AlertEvent
from gateway.rules.spec import CALL_SEVERITY
from gateway.statedb import open_state_db

log = logging.getLogger(__name__)

# -- texts ------------------------------------------------------------------------------------------

TEMPLATES: Mapping[str, str] = {
    "en": (
        "{drill}SOS: {person} pressed the emergency button {button} at {time}. Gateway {gateway} could not "
        "reach the care centre over the internet. Please call or go there now."
    ),
    # Chinese punctuation is full width: it is the text, not a typo.
    "zh": (
        "{drill}紧急呼叫：{person}于{time}按下了紧急按钮（{button}）。"  # noqa: RUF001
        "网关{gateway}无法通过互联网联系护理中心，请立即致电或前往。"  # noqa: RUF001
    ),
}
# A call request (a press of a "call" button: the care service phones back; not an emergency).
CALL_TEMPLATES: Mapping[str, str] = {
    "en": (
        "{drill}Call request: {person} pressed the call button {button} at {time} and asks the care service "
        "to phone back. Gateway {gateway} could not reach the care service over the internet."
    ),
    "zh": (
        "{drill}呼叫请求：{person}于{time}按下了呼叫按钮（{button}），请护理服务人员回电。"  # noqa: RUF001
        "网关{gateway}无法通过互联网联系护理服务中心。"
    ),
}
DRILL_PREFIX: Mapping[str, str] = {
    "en": "DRILL - NOT A REAL EMERGENCY. ",
    "zh": "【演练，不是真实紧急情况】",  # noqa: RUF001
}
RESIDENT: Mapping[str, str] = {"en": "the resident", "zh": "住户"}
FIELDS = frozenset({"drill", "person", "button", "time", "gateway"})


# What a trial render fills in (check_template): one of each kind the daemon can pass, the drill prefix set.
_SAMPLE = {"drill": DRILL_PREFIX["en"], "person": "Anna", "button": "bed", "time": "2026-11-24 03:24", "gateway": "gw"}


def check_template(template: str) -> str | None:
    """What is wrong with an own template (None: fine): only plain ``{field}`` of :data:`FIELDS`, with
    ``{drill}``; no format spec (``{person:d}``), conversion (``{person!r}``), index or attribute. A trial
    render with sample values must then work, so that a template that passes cannot fail at a press.
    The answer names the problem, never the template's text (it may name a person)."""
    try:
        parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        return f"a text with {{fields}} ({exc})"
    names = {f for f, _, _ in parsed}
    plain = {f for f in names if f.isidentifier()}
    unknown, odd = sorted(plain - FIELDS), len(names - plain)
    if unknown or odd:
        # an unknown name is a typo worth naming; anything else ({}, {0}, {person[0]}) is only counted
        if odd:
            unknown.append(f"{odd} that {'are not plain names' if odd > 1 else 'is not a plain name'}")
        return f"a text using only the fields {', '.join(sorted(FIELDS))} (not {' and '.join(unknown)})"
    if "drill" not in names:
        return "a text with {drill} (a drill must say so)"
    extras = [
        f"{what} in {', '.join(f'{{{f}}}' for f in fields)}"
        for what, fields in (
            ("a format spec", sorted({f for f, spec, _ in parsed if spec})),
            ("a conversion", sorted({f for f, _, conv in parsed if conv is not None})),
        )
        if fields
    ]
    if extras:
        return f"a text with plain fields only, as {{person}} ({'; '.join(extras)})"
    try:
        template.format(**_SAMPLE)
    except Exception as exc:  # noqa: BLE001 - whatever it is, the text could fail at a press: refused
        return f"a text that can be filled in ({type(exc).__name__})"
    return None


def render_text(
    cfg: AlarmSection,
    *,
    gateway_id: str,
    device_id: str,
    person_id: str | None,
    at: float,
    drill: bool,
    kind: str = "sos",
    own: bool = True,
) -> str:
    """The SMS: ``template`` (or the shipped text of ``language``) for an SOS, the shipped call text
    for a call request (``kind = "call"``). ``own = False``: the shipped text even with a ``template``."""
    names = dict(cfg.names)
    lang = cfg.language
    when = dt.datetime.fromtimestamp(at, device_zone(cfg.timezone))
    template = CALL_TEMPLATES[lang] if kind == "call" else ((cfg.template if own else None) or TEMPLATES[lang])
    return template.format(
        drill=DRILL_PREFIX[lang] if drill else "",
        person=(names.get(person_id, person_id) if person_id else cfg.person) or RESIDENT[lang],
        button=names.get(device_id, device_id),
        time=when.strftime("%Y-%m-%d %H:%M"),
        gateway=gateway_id,
    )


# -- the core ---------------------------------------------------------------------------------------

AttemptStatus = Literal["sending", "sent", "delivered", "failed", "no_report", "interrupted"]
RecipientState = Literal["waiting", "due", "sending", "awaiting_report", "delivered", "gave_up", "stopped"]
CaseState = Literal["watching", "active", "done"]
ErrorKind = Literal["path", "recipient"]


@dataclass
class Attempt:
    id: int
    to: str
    at: float
    status: AttemptStatus = "sending"
    mrs: list[int] = field(default_factory=list)
    error: str | None = None
    report_by: float | None = None  # when a delivery report is due (the policy's clock)

    def report(self, shift: float = 0.0) -> dict[str, Any]:
        """For the cloud: ``shift`` = the policy's clock - the wall clock, now."""
        at_ = messages.rfc3339_ms(self.at - shift)
        item: dict[str, Any] = {"via": "sms", "to": self.to, "at": at_, "status": self.status}
        if self.error:
            item["error"] = self.error
        return item


@dataclass
class Recipient:
    to: str
    state: RecipientState = "waiting"
    next_at: float = 0.0
    counted: int = 0  # SMS the network accepted without a delivery report
    path_failures: int = 0


@dataclass
class Case:
    alert_id: str
    device_id: str
    pressed_at: float
    drill: bool
    text: str
    due_at: float
    recipients: list[Recipient]
    state: CaseState = "watching"
    attempts: list[Attempt] = field(default_factory=list)
    at_broker: float | None = None
    acked_at: float | None = None
    version: int = 0  # +1 per change of an attempt: what the cloud report carries
    reported: int = 0
    kind: str = "sos"  # or "call" (a call request, with [alarm] calls = true)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @staticmethod
    def from_json(text: str) -> Case:
        """A stored case; :class:`ValueError` for anything the policy could not run on (a missing or
        unknown field, a time that is not a number, an attempt to nobody of the case)."""
        try:
            d = json.loads(text)
            d["recipients"] = [Recipient(**r) for r in d["recipients"]]
            d["attempts"] = [Attempt(**a) for a in d["attempts"]]
            case = Case(**d)
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"not a stored case: {exc}") from exc
        times = [case.pressed_at, case.due_at, *(r.next_at for r in case.recipients), *(a.at for a in case.attempts)]
        times += [t for t in (case.at_broker, case.acked_at, *(a.report_by for a in case.attempts)) if t is not None]
        if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in times):
            raise ValueError("a time that is not a number")
        if not {a.to for a in case.attempts} <= {r.to for r in case.recipients}:
            raise ValueError("an attempt to a number that is not a recipient")
        return case


@dataclass(frozen=True, slots=True)
class SendSms:
    attempt_id: int
    alert_id: str
    to: str
    text: str


@dataclass(frozen=True, slots=True)
class WatchChange:
    """The ``modem_unavailable`` watch alert is raised or cleared."""

    state: Literal["raised", "cleared"]
    since: float
    at: float


Action = SendSms | WatchChange


class AlarmPolicy:
    """The decisions, without I/O. All times are POSIX-like seconds on the runner's clock (a restart
    resumes from the record; :class:`SmsFallback`); a deadline further away than it can legitimately be
    (a clock that stepped back) is pulled in, so a step of that clock can delay an SMS by at most one
    retry interval."""

    def __init__(self, cfg: AlarmSection, *, next_attempt_id: int = 1) -> None:
        self.cfg = cfg
        self.cases: dict[str, Case] = {}
        self.dirty: set[str] = set()
        self.next_attempt_id = next_attempt_id
        self.modem_ready = False
        self.down_since: float | None = None
        self.watch_raised = False
        self.sending: int | None = None  # the attempt handed to the modem (one at a time)

    # -- inputs ------------------------------------------------------------------------------------

    def sos(
        self,
        alert_id: str,
        device_id: str,
        pressed_at: float,
        drill: bool,
        text: str,
        now: float,
        uplink_up: bool,
        kind: str = "sos",
    ) -> None:
        """A press to watch (an SOS, or a call request's first press): once per alert id."""
        if alert_id in self.cases:
            return
        due = pressed_at + self.cfg.sms_after_s if uplink_up else now
        self.cases[alert_id] = Case(
            alert_id,
            device_id,
            pressed_at,
            drill,
            text,
            min(due, now + self.cfg.sms_after_s),
            [Recipient(n) for n in self.cfg.recipients],
            kind=kind,
        )
        self.dirty.add(alert_id)

    def at_broker(self, alert_id: str, now: float) -> None:
        case = self.cases.get(alert_id)
        if case is None or case.at_broker is not None:
            return
        case.at_broker = now
        if case.state == "watching":
            case.state = "done"  # the internet path worked in time: no SMS
        self.dirty.add(alert_id)

    def uplink_down(self, now: float) -> None:
        """The link is down: a PUBACK cannot come, so waiting for one only delays the SMS."""
        for case in self.cases.values():
            if case.state == "watching" and case.due_at > now:
                case.due_at = now
                self.dirty.add(case.alert_id)

    def acked(self, alert_id: str, now: float) -> None:
        case = self.cases.get(alert_id)
        if case is None or case.acked_at is not None:
            return
        case.acked_at = now
        if case.state == "watching":
            case.state = "done"
        for r in case.recipients:
            if r.state in ("waiting", "due"):
                r.state = "stopped"
        self._maybe_done(case)
        self.dirty.add(alert_id)

    def set_modem_ready(self, ready: bool, now: float) -> list[Action]:
        self.modem_ready = ready
        out: list[Action] = []
        if ready:
            for case in self.cases.values():  # the path is back: what waited for it goes now
                for r in case.recipients:
                    if case.state == "active" and r.state == "due" and r.path_failures:
                        r.next_at = min(r.next_at, now)
            if self.watch_raised:
                self.watch_raised = False
                out.append(WatchChange("cleared", self.down_since or now, now))
            self.down_since = None
        elif self.down_since is None:
            self.down_since = now
        return out

    def sent(self, attempt_id: int, mrs: list[int], now: float, *, expect_report: bool) -> None:
        case, attempt, rcp = self._find(attempt_id)
        self.sending = None
        if attempt is None or case is None or rcp is None:
            return
        attempt.mrs = mrs
        if expect_report:
            attempt.status = "sent"
            attempt.report_by = now + self.cfg.report_timeout_s
            rcp.state = "awaiting_report"
        else:
            attempt.status = "sent"
            rcp.state = "delivered"  # without delivery reports, the network's acceptance is all we learn
        self._maybe_done(case)
        self._changed(case)

    def failed(self, attempt_id: int, error: str, kind: ErrorKind, now: float) -> None:
        case, attempt, rcp = self._find(attempt_id)
        self.sending = None
        if attempt is None or case is None or rcp is None:
            return
        attempt.status, attempt.error = "failed", error
        if kind == "recipient":
            rcp.state = "gave_up"
        else:
            rcp.path_failures += 1
            self._retry(case, rcp, now, rcp.path_failures)
        self._changed(case)

    def report(self, mr: int, delivered: bool, final: bool, now: float, *, to: str | None = None) -> None:
        """A delivery report (+CDS) for message reference ``mr`` (8 bits: it wraps, so the report's
        recipient ``to`` must match too when given). For a text in several parts, the first part
        reported delivered makes the recipient delivered: it names the person and the button."""
        for case in self.cases.values():
            for attempt in reversed(case.attempts):
                if attempt.status not in ("sent", "no_report") or mr not in attempt.mrs:
                    continue
                if to is not None and not same_number(to, attempt.to):
                    continue
                rcp = next(r for r in case.recipients if r.to == attempt.to)
                if attempt.status == "no_report" and not delivered:
                    return  # already counted as failed when its report was overdue
                if delivered:  # (a late report still counts: that recipient has it)
                    attempt.status = "delivered"
                    rcp.state = "delivered"
                elif final:
                    attempt.status, attempt.error = "failed", "not delivered (status report)"
                    rcp.counted += 1
                    self._retry(case, rcp, now, rcp.counted)
                else:
                    return  # the SMSC is still trying: keep waiting
                self._maybe_done(case)
                self._changed(case)
                return

    # -- time --------------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        out: list[Action] = []
        if (
            not self.modem_ready
            and not self.watch_raised
            and self.down_since is not None
            and now - self.down_since >= self.cfg.unavailable_after_s
        ):
            self.watch_raised = True
            out.append(WatchChange("raised", self.down_since, now))
        for case in self.cases.values():
            if case.state == "watching":
                case.due_at = min(case.due_at, now + self.cfg.sms_after_s)
                if now >= case.due_at:
                    case.state = "active"
                    for r in case.recipients:
                        r.state, r.next_at = "due", now
                    self.dirty.add(case.alert_id)
            if case.state != "active":
                continue
            for attempt in case.attempts:
                if attempt.status != "sent" or attempt.report_by is None:
                    continue
                # as due_at and next_at: a record's times ahead of this clock (a record from before the
                # timeline, read on one that lags the wall clock) never make a wait longer than its bound
                attempt.report_by = min(attempt.report_by, now + self.cfg.report_timeout_s)
                if now >= attempt.report_by:
                    attempt.status = "no_report"
                    rcp = next(r for r in case.recipients if r.to == attempt.to)
                    if rcp.state == "awaiting_report":
                        rcp.counted += 1
                        self._retry(case, rcp, now, rcp.counted)
                    self._changed(case)
            for r in case.recipients:
                if r.state == "due" and now - case.pressed_at > self.cfg.retry_for_s:
                    r.state = "gave_up"
                    self.dirty.add(case.alert_id)
            self._maybe_done(case)
        if self.sending is None:
            pick = self._next_due(now)
            if pick is not None:
                out.append(pick)
        return out

    def _next_due(self, now: float) -> SendSms | None:
        best: tuple[float, float, int, Case, Recipient] | None = None
        for case in self.cases.values():
            if case.state != "active" or case.acked_at is not None:
                continue
            for i, r in enumerate(case.recipients):
                if r.state != "due":
                    continue
                if r.path_failures and not self.modem_ready:
                    continue  # it failed for want of a path: wait for the modem (ready pulls it in)
                r.next_at = min(r.next_at, now + self.cfg.retry_cap_s)
                if r.next_at > now:
                    continue
                key = (r.next_at, case.pressed_at, i, case, r)
                if best is None or key[:3] < best[:3]:
                    best = key
        if best is None:
            return None
        case, r = best[3], best[4]
        attempt = Attempt(self.next_attempt_id, r.to, now)
        self.next_attempt_id += 1
        case.attempts.append(attempt)
        r.state = "sending"
        self.sending = attempt.id
        self._changed(case)
        return SendSms(attempt.id, case.alert_id, r.to, case.text)

    # -- helpers -----------------------------------------------------------------------------------

    def _retry(self, case: Case, rcp: Recipient, now: float, n: int) -> None:
        if rcp.counted >= self.cfg.max_attempts or case.acked_at is not None:
            rcp.state = "gave_up" if case.acked_at is None else "stopped"
        else:
            rcp.state = "due"
            rcp.next_at = now + min(self.cfg.retry_cap_s, self.cfg.retry_base_s * 2 ** max(0, n - 1))
        self._maybe_done(case)

    def _maybe_done(self, case: Case) -> None:
        if case.state == "active" and all(r.state in ("delivered", "gave_up", "stopped") for r in case.recipients):
            case.state = "done"

    def _changed(self, case: Case) -> None:
        case.version += 1
        self.dirty.add(case.alert_id)

    def _find(self, attempt_id: int) -> tuple[Case | None, Attempt | None, Recipient | None]:
        for case in self.cases.values():
            for a in case.attempts:
                if a.id == attempt_id:
                    return case, a, next(r for r in case.recipients if r.to == a.to)
        return None, None, None

    def interrupt(self, now: float) -> None:
        """The send in flight will not report back (the runner failed under it): ``interrupted``, and
        its recipient is due again."""
        if self.sending is None:
            return
        case, attempt, rcp = self._find(self.sending)
        self.sending = None
        if case is not None and attempt is not None and rcp is not None and attempt.status == "sending":
            attempt.status = "interrupted"
            if rcp.state == "sending":
                rcp.state, rcp.next_at = "due", now
            self._changed(case)

    def restore(self, cases: Iterable[Case], now: float) -> None:
        """After a restart: an attempt that was being handed to the modem is ``interrupted`` (we cannot
        know whether it left) and its recipient is due again; everything else resumes as recorded."""
        for case in cases:
            for a in case.attempts:
                self.next_attempt_id = max(self.next_attempt_id, a.id + 1)
                if a.status == "sending":
                    a.status = "interrupted"
                    rcp = next(r for r in case.recipients if r.to == a.to)
                    if rcp.state == "sending":
                        rcp.state, rcp.next_at = "due", now
                    case.version += 1
                    self.dirty.add(case.alert_id)
            self.cases[case.alert_id] = case

    def unreported(self) -> list[Case]:
        return [c for c in self.cases.values() if c.version > c.reported and c.attempts]


def same_number(a: str, b: str) -> bool:
    """The same phone, written internationally or nationally (+86 138... / 138...): the last nine
    digits agree (a status report gives the number as the network writes it)."""
    da, db = "".join(c for c in a if c.isdigit()), "".join(c for c in b if c.isdigit())
    n = min(9, len(da), len(db))
    return n > 0 and da[-n:] == db[-n:]


# -- the record -------------------------------------------------------------------------------------


_ALARM_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (alert_id TEXT PRIMARY KEY, open INTEGER, body TEXT);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


class AlarmStoreError(GatewayError):
    """The SMS fallback's record cannot be opened even as a fresh file."""


class AlarmStore:
    """``<data_dir>/alarm.sqlite3``: one row per alert (its whole case as JSON) and the watch state.
    ``synchronous=FULL``: an attempt is on disk before its SMS is handed to the modem."""

    def __init__(self, path: Path) -> None:
        # a file SQLite cannot read is moved aside and a fresh one started (gateway.statedb): a damaged
        # record must never keep the daemon, and with it the SOS path, from starting
        self.path = path
        self.db = open_state_db(path, _ALARM_SCHEMA, "sms fallback record", AlarmStoreError, synchronous="FULL")

    def save(self, cases: Iterable[Case]) -> None:
        self.save_rows(self.rows(cases))

    @staticmethod
    def rows(cases: Iterable[Case]) -> list[tuple[str, int, str]]:
        """The rows of ``cases`` as they are now (taken on the event loop, written on another thread)."""
        return [(c.alert_id, int(c.state != "done" or c.version > c.reported), c.to_json()) for c in cases]

    def save_rows(self, rows: list[tuple[str, int, str]], watch: dict[str, Any] | None = None) -> None:
        """One transaction (``synchronous=FULL``: on disk when it returns): ``rows``, and the watch state."""
        if not rows and watch is None:
            return
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO cases VALUES (?, ?, ?)", rows)
            if watch is not None:
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", ("watch", json.dumps(watch)))

    def has(self, alert_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM cases WHERE alert_id = ?", (alert_id,)).fetchone() is not None

    def open_cases(self) -> list[Case]:
        """The open cases; a row that is not a readable case is skipped with a WARNING (and stays
        stored, for a person to look at)."""
        out = []
        for alert_id, body in self.db.execute("SELECT alert_id, body FROM cases WHERE open = 1"):
            try:
                out.append(Case.from_json(body))
            except ValueError as exc:
                log.warning("sms fallback: stored alert %s is unreadable, not restored: %s", alert_id, exc)
        return out

    def get_meta(self, key: str) -> Any:
        """A stored value; None when there is none or it is not JSON."""
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        try:
            return json.loads(row[0]) if row else None
        except (TypeError, ValueError):
            log.warning("sms fallback: stored %s is unreadable, ignored", key)
            return None

    def close(self) -> None:
        self.db.close()


# -- the runner -------------------------------------------------------------------------------------


def classify(exc: BaseException) -> ErrorKind:
    """Whose fault: the path (retry without counting) or the recipient's number (stop for them)."""
    if isinstance(exc, (at.RecipientRejected, at.PduError)):
        return "recipient"
    return "path"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, at.ModemError):
        return exc.reason
    if isinstance(exc, ModemUnavailable):
        return "modem_unavailable"
    if isinstance(exc, at.PduError):
        return "bad_number"
    return type(exc).__name__


class SmsSender(Protocol):
    health: ModemHealth
    on_report: list[Callable[[at.StatusReport], None]]

    async def send_sms(self, number: str, text: str) -> list[int]: ...

    async def run(self) -> None: ...


TICK_S = 0.2
RESTART_S = 5.0
STORE_RETRY_S = 5.0  # a record that cannot be written is tried again this often (and before every SMS)
# What a write of the record raises when the disk under it fails or is full: never a reason not to send.
STORE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, OSError, AlarmStoreError)


class SmsFallback:
    """The runner: owns the modem, the record and the policy; the daemon calls :meth:`on_sos`,
    :meth:`on_delivered`, :meth:`on_ack`; everything else happens in :meth:`run`."""

    def __init__(
        self,
        cfg: AlarmSection,
        topics: Topics,
        data_dir: Path,
        submit: Callable[[NewMessage], asyncio.Future[int]],
        uplink_up: Callable[[], bool],
        *,
        modem: SmsSender | None = None,
        person_of: Callable[[str], str | None] = lambda _d: None,
        is_drill: Callable[[str, float], bool] = lambda _a, _t: False,
        clock: Callable[[], float] = time.time,
        wall: Callable[[], float] = time.time,
        step_since: Callable[[float], float] = lambda _at: 0.0,
    ) -> None:
        assert cfg.modem is not None or modem is not None
        self.cfg = cfg
        self.topics = topics
        self.submit = submit
        self.uplink_up = uplink_up
        self.person_of = person_of
        self.is_drill = is_drill
        # the policy's clock (the daemon's timeline, never stepping), the wall clock, and how far the wall
        # clock stepped since it read a time (gateway.clock.Clock.step_since)
        self.clock = clock
        self.wall = wall
        self.step_since = step_since
        self.modem: SmsSender = modem if modem is not None else Modem("modem", cfg.modem)  # type: ignore[arg-type]
        self.modem.on_report.append(self._on_report)
        self.store = AlarmStore(data_dir / "alarm.sqlite3")
        self.policy = AlarmPolicy(cfg)
        now = clock()
        self.policy.restore(self.store.open_cases(), now)
        watch = self.store.get_meta("watch")
        since = watch.get("since") if isinstance(watch, dict) else None
        # a raised watch without a readable start is raised from now
        self.policy.watch_raised = isinstance(watch, dict) and watch.get("raised") is True
        self.policy.down_since = float(since) if self.policy.watch_raised and isinstance(since, int | float) else now
        self._inbox: deque[Callable[[], None]] = deque()
        self._wake = asyncio.Event()
        self._reporting: set[str] = set()
        self._failing = False  # the first failed SMS of a run is a WARNING, its repeats DEBUG
        self.counters = {
            "sos_watched": 0,
            "calls_watched": 0,
            "sms_attempts": 0,
            "sms_failed": 0,
            "reports_sent": 0,
            "template_fallbacks": 0,  # an own template that did not render: the shipped text went
            "store_failures": 0,  # writes of the record that failed (a full disk): the SMS went all the same
        }
        self.bugs = BugLog()
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sms-record")  # the record's writes
        self._store_failing = False  # the first failed write of a run is a WARNING, its repeats DEBUG
        self._store_retry_at = 0.0  # (time.monotonic) no write before, unless an SMS is about to go
        self._unsaved_watch: dict[str, Any] | None = None
        n = len(self.policy.cases)
        if n:
            log.info("sms fallback: %d alerts restored from %s", n, self.store.path)

    # -- hooks (synchronous, never raise into the caller: the SOS path must not notice us) ---------

    def on_sos(self, alert_id: str, device_id: str, pressed_at: float) -> None:
        """A press was committed (the pipeline's alert listener): an SOS always, a call request's
        only with ``[alarm] calls = true``; further presses of an open request change nothing."""
        kind = messages.press_role_of(alert_id)
        if kind is None or (kind == "call" and not self.cfg.calls):
            return
        up = self.uplink_up()
        drill = self.is_drill(alert_id, pressed_at)
        pressed_at += self.step_since(pressed_at)  # read just before a step: when it was, on today's clock
        on_clock = pressed_at + self.shift()
        self._post(lambda: self._sos(alert_id, device_id, pressed_at, on_clock, drill, up, kind))

    def shift(self) -> float:
        """The policy's clock - the wall clock, now (0 in tests without a timeline)."""
        return self.clock() - self.wall()

    def on_delivered(self, msg: StoredMessage) -> None:
        try:
            alert_id = json.loads(msg.body).get("alert_id")
        except ValueError:
            return
        if isinstance(alert_id, str) and alert_id in self.policy.cases:
            self._post(lambda: self.policy.at_broker(alert_id, self.clock()))

    def on_ack(self, alert_id: str) -> None:
        self._post(lambda: self.policy.acked(alert_id, self.clock()))

    def _post(self, fn: Callable[[], None]) -> None:
        self._inbox.append(fn)
        self._wake.set()

    def _on_report(self, r: at.StatusReport) -> None:
        self._post(lambda: self.policy.report(r.message_ref, r.delivered, r.final, self.clock(), to=r.number))

    def _sos(
        self, alert_id: str, device_id: str, pressed_at: float, on_clock: float, drill: bool, up: bool, kind: str
    ) -> None:
        """``pressed_at`` on the wall clock (the text's time), ``on_clock`` on the policy's."""
        if alert_id in self.policy.cases or (kind == "call" and self._stored(alert_id)):
            return  # a further press of a call request already watched (its case may be closed)
        text = self._text(device_id, pressed_at, drill, kind)
        self.counters["calls_watched" if kind == "call" else "sos_watched"] += 1
        self.policy.sos(alert_id, device_id, on_clock, drill, text, self.clock(), up, kind)

    def _stored(self, alert_id: str) -> bool:
        """Whether the record has the alert; a record that cannot be read has none (an SMS twice at worst)."""
        try:
            return self.store.has(alert_id)
        except STORE_ERRORS as exc:
            self._store_failed(exc, f"call request {alert_id} taken as new", "read")
            return False

    def _text(self, device_id: str, pressed_at: float, drill: bool, kind: str) -> str:
        """The SMS of a press. An own template that fails to render (check_template should have
        refused it: a bug) gives the shipped text of the language instead, logged at ERROR (rate
        limited) and counted: the press is sent all the same."""
        render = functools.partial(
            render_text,
            self.cfg,
            gateway_id=self.topics.gateway_id,
            device_id=device_id,
            person_id=self.person_of(device_id),
            at=pressed_at,
            drill=drill,
            kind=kind,
        )
        if kind == "call" or not self.cfg.template:
            return render()
        try:
            return render()
        except Exception as exc:  # noqa: BLE001 - a broken own text must not stop the SOS: the shipped one goes
            self.counters["template_fallbacks"] += 1
            self.bugs.report(log, "sms fallback", exc, "the own template failed, the shipped text is sent")
            return render(own=False)

    # -- the loop ----------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._modem_supervised(), name="sms modem")
                tg.create_task(self._supervised(), name="sms fallback")
        finally:
            try:
                await self._save(force=True)  # at the stop (a second cancellation leaves it to the thread)
            finally:
                self._io.shutdown(wait=True)
                self.store.close()

    async def _supervised(self) -> None:
        """The second path must never take the first one down: a failure of the fallback (a bug) is
        logged with its traceback and the loop starts again, while the daemon goes on committing and
        sending SOS alerts. A record that cannot be written (a full disk) is not such a failure: the
        SMS go on and the record is written later (:meth:`_save`)."""
        while True:
            try:
                await self._loop()
            except Exception as exc:  # noqa: BLE001 - isolation of the SOS primary path: a bug, counted
                self.bugs.report(log, "sms fallback", exc, f"failed; starting again in {RESTART_S:g} s")
                self.policy.interrupt(self.clock())
                await asyncio.sleep(RESTART_S)

    async def _modem_supervised(self) -> None:
        """The modem's link (its reconnector classifies and retries every failure of a session) under
        the same guard: a bug in the link itself (its backoff, its state reports) must end neither the
        fallback nor the daemon; it is counted and the link starts again after ``RESTART_S``."""
        while True:
            try:
                await self.modem.run()
                raise RuntimeError("the modem's link ended by itself")  # it never should
            except Exception as exc:  # noqa: BLE001 - the second path keeps its modem: a bug, counted
                what = f"its modem's link failed; starting again in {RESTART_S:g} s"
                self.bugs.report(log, "sms fallback", exc, what)
                await asyncio.sleep(RESTART_S)

    async def _loop(self) -> None:
        was_up: bool | None = None
        was_ready: bool | None = None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await self._wake.wait()
            self._wake.clear()
            now = self.clock()
            while self._inbox:
                self._inbox.popleft()()
            up = self.uplink_up()
            if not up and was_up is not False:
                self.policy.uplink_down(now)
            was_up = up
            ready = self.modem.health.ready
            actions: list[Action] = []
            if ready != was_ready:
                actions += self.policy.set_modem_ready(ready, now)
                was_ready = ready
            actions += self.policy.tick(now)
            # write-ahead: the attempt is on disk before the modem gets it (or, on a full disk, in memory)
            await self._save(force=any(isinstance(a, SendSms) for a in actions))
            for action in actions:
                if isinstance(action, WatchChange):
                    self._watch(action)
                else:
                    await self._send(action)
            if up:
                self._report()

    async def _send(self, a: SendSms) -> None:
        self.counters["sms_attempts"] += 1
        log.debug("sms fallback: alert %s: SMS to %s", a.alert_id, a.to)
        try:
            mrs = await self.modem.send_sms(a.to, a.text)
        except (at.ModemError, TransientDeviceError, at.PduError) as exc:
            self.counters["sms_failed"] += 1
            kind = classify(exc)
            log.log(
                logging.DEBUG if self._failing else logging.WARNING,
                "sms fallback: alert %s: an SMS failed (%s), %s",
                a.alert_id,
                _reason(exc),
                "retrying later" if kind == "path" else "not retrying this recipient",
            )
            self.policy.failed(a.attempt_id, _reason(exc), kind, self.clock())
            self._failing = True
        else:
            self._failing = False
            log.warning("sms fallback: alert %s: SMS handed to the network (%d parts)", a.alert_id, len(mrs))
            self.policy.sent(a.attempt_id, mrs, self.clock(), expect_report=self._expect_reports())
        await self._save()

    def _expect_reports(self) -> bool:
        return self.cfg.modem.delivery_reports if self.cfg.modem is not None else True

    async def _save(self, *, force: bool = False) -> None:
        """Write the changed cases, on the record's own thread (its fsync on a slow SD card must not hold
        the event loop, and with it the devices and the uplink, during an alarm); the loop waits for it
        (write-ahead: the attempt is on disk before its SMS goes). A write that fails (a full disk) never
        holds an SMS back: the changes stay in memory (``policy.dirty``) and are written by a later save,
        tried at most every ``STORE_RETRY_S`` while writes fail, and always when ``force`` (an SMS is
        about to go)."""
        if not self.policy.dirty and self._unsaved_watch is None:
            return
        if self._store_failing and not force and time.monotonic() < self._store_retry_at:
            return
        taken, cases, rows, watch = self._changes()
        if not rows and watch is None:
            self.policy.dirty -= taken  # ids of cases no longer in memory: nothing to write
            return
        error = await asyncio.get_running_loop().run_in_executor(self._io, self._write, rows, watch)
        self._written(taken, cases, rows, watch, error)

    def _changes(self) -> tuple[set[str], list[Case], list[tuple[str, int, str]], dict[str, Any] | None]:
        """What a save writes, taken now on the loop: the dirty ids, their cases, their rows, the watch."""
        taken = set(self.policy.dirty)
        cases = [self.policy.cases[a] for a in taken if a in self.policy.cases]
        return taken, cases, AlarmStore.rows(cases), self._unsaved_watch

    def _write(self, rows: list[tuple[str, int, str]], watch: dict[str, Any] | None) -> Exception | None:
        """(The record's thread.) The write; how it failed, if it did."""
        try:
            self.store.save_rows(rows, watch)
        except STORE_ERRORS as exc:
            return exc
        return None

    def _written(
        self,
        taken: set[str],
        cases: list[Case],
        rows: list[tuple[str, int, str]],
        watch: dict[str, Any] | None,
        error: Exception | None,
    ) -> None:
        """(The loop.) After a write: forget what was written, or note the failure."""
        if error is not None:
            devices = sorted({c.device_id for c in cases})
            what = f"the SMS attempts of device {', '.join(devices)}" if devices else "the watch state"
            self._store_failed(error, f"{what} kept in memory and written later")
            return
        # What changed while the write ran (a report's outcome, from a future's callback) stays dirty for the
        # next save: only the cases whose row is still the one written are clean.
        written = {row[0]: row for row in rows}
        now = {row[0]: row for row in AlarmStore.rows(c for c in cases if c.alert_id in self.policy.dirty)}
        self.policy.dirty -= {a for a in taken if a not in written or now.get(a) == written[a]}
        if watch is not None and self._unsaved_watch is watch:
            self._unsaved_watch = None
        if self._store_failing:
            log.info("sms fallback: its record %s is written again", self.store.path)
            self._store_failing = False
        for c in cases:  # closed and reported: nothing more will happen to it in memory
            done = c.state == "done" and c.version <= c.reported
            if done and c.alert_id not in self._reporting and c.alert_id not in self.policy.dirty:
                self.policy.cases.pop(c.alert_id, None)

    # -- to the cloud ------------------------------------------------------------------------------

    def _report(self) -> None:
        for case in self.policy.unreported():
            if case.alert_id in self._reporting:
                continue
            version = case.version
            fut = self.submit(fallback_message(self.topics, case, self.shift()))
            self._reporting.add(case.alert_id)
            fut.add_done_callback(functools.partial(self._reported, case, version))

    def _reported(self, case: Case, version: int, fut: asyncio.Future[int]) -> None:
        self._reporting.discard(case.alert_id)
        if fut.cancelled() or fut.exception() is not None:
            return  # still unreported: the next loop tries again
        case.reported = max(case.reported, version)
        self.counters["reports_sent"] += 1
        self.policy.dirty.add(case.alert_id)

    def bug_count(self) -> int:
        """Bugs of the fallback (a template that failed at a press) and of its modem's link."""
        modem = self.modem.reconnector.bugs.count if isinstance(self.modem, Modem) else 0
        return self.bugs.count + modem

    def _store_failed(self, exc: Exception, then: str, verb: str = "written") -> None:
        """A storage failure: counted, WARNING the first time (DEBUG while it lasts); ``then``, what
        follows, names the device or the alert, never a phone number or the text."""
        self.counters["store_failures"] += 1
        self._store_retry_at = time.monotonic() + STORE_RETRY_S
        log.log(
            logging.DEBUG if self._store_failing else logging.WARNING,
            "sms fallback: its record %s cannot be %s (%s): %s; the SMS go on",
            self.store.path,
            verb,
            exc,
            then,
        )
        self._store_failing = True

    def _watch(self, w: WatchChange) -> None:
        # written with the next save, within a tick (a failed write keeps it for the one after)
        self._unsaved_watch = {"raised": w.state == "raised", "since": w.since}
        self._wake.set()
        ev = AlertEvent(
            alert_id=f"modem_unavailable/{self.topics.gateway_id}/{round(w.since * 1000)}",
            state=w.state,
            kind="modem_unavailable",
            severity="high",
            person_id=None,
            device_id=None,
            rule={"id": "modem_unavailable", "unavailable_after_s": self.cfg.unavailable_after_s},
            started_at=w.since,
            at=w.at,
            detail={"down_s": round(w.at - w.since, 1), **self._health_detail()},
        )
        ev = event_on_wall(ev, self.shift())  # the alert id keeps the policy's clock: the same raised and cleared
        log.warning(
            "sms fallback: the SMS path %s (watch alert modem_unavailable)",
            "is down" if w.state == "raised" else "is back",
        )
        self.submit(messages.care_alert(self.topics, ev))

    def _health_detail(self) -> dict[str, Any]:
        h = self.modem.health
        return {"present": h.present, "sim": h.sim, "registration": h.registration}

    # -- status ------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        h = self.modem.health.to_dict()
        if h.get("last_sms_at") is not None:
            h["last_sms_at"] = messages.rfc3339_ms(h["last_sms_at"])
        open_cases = [c for c in self.policy.cases.values() if c.state != "done"]
        return {
            "enabled": True,
            "modem": h,
            "sms_after_s": self.cfg.sms_after_s,
            "recipients": len(self.cfg.recipients),
            "open": [
                {
                    "alert_id": c.alert_id,
                    "kind": c.kind,
                    "state": c.state,
                    "delivered": sum(r.state == "delivered" for r in c.recipients),
                    "attempts": len(c.attempts),
                }
                for c in open_cases
            ],
            "unavailable_since": (
                messages.rfc3339_ms(self.policy.down_since - self.shift()) if self.policy.down_since else None
            ),
            "watch_raised": self.policy.watch_raised,
            "store_failing": self._store_failing,
            "counters": dict(self.counters),
        }


def describe_status(st: Mapping[str, Any]) -> list[str]:
    """The ``sms fallback`` lines of ``gatewayctl status`` (from :meth:`SmsFallback.status`)."""
    m = st["modem"]
    signal = f"CSQ {m['csq']} ({m['dbm']} dBm)" if m.get("csq") is not None else "signal unknown"
    state = "ready" if m["ready"] else ("not present" if not m["present"] else "cannot send")
    lines = [
        f"sms       {state}: SIM {m['sim']}, network {m['registration']}, operator {m['operator'] or '-'}, {signal}",
        f"          last SMS {m['last_sms_at'] or 'never'}, sent {m['sms_sent']}, failed {m['sms_failed']}, "
        f"{st['recipients']} recipients, after {st['sms_after_s']:g} s without PUBACK",
    ]
    if m.get("last_error") and not m["ready"]:
        lines.append(f"          last error: {m['last_error']}")
    if st.get("store_failing"):
        lines.append("          record not writable (disk full?): SMS go on, attempts kept in memory")
    for c in st["open"]:
        lines.append(f"          alert {c['alert_id']}: {c['state']}, {c['attempts']} SMS, {c['delivered']} delivered")
    return lines


def fallback_message(topics: Topics, case: Case, shift: float = 0.0) -> NewMessage:
    """The alert again, with what the second path did: every attempt so far (docs/mqtt-contract.md).
    ``shift``: the policy's clock - the wall clock, now (the message carries wall-clock times)."""
    at_ = max((a.at for a in case.attempts), default=case.pressed_at) - shift
    body = {
        "msg_id": messages.msg_id(
            topics.gateway_id, "alert", case.device_id, f"sos-fallback|{case.alert_id}|{case.version}"
        ),
        "gateway_id": topics.gateway_id,
        "device_id": case.device_id,
        "type": "alert",
        "captured_at": messages.rfc3339_ms(at_),
        "kind": case.kind,
        "severity": CALL_SEVERITY if case.kind == "call" else "critical",
        "state": "raised",
        "drill": case.drill,
        "alert_id": case.alert_id,
        "started_at": messages.rfc3339_ms(case.pressed_at - shift),
        "fallback": [a.report(shift) for a in case.attempts],
    }
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return NewMessage(Lane.ALERT, topics.alert, data, case.device_id, at_)


# -- wiring -----------------------------------------------------------------------------------------


class _AckDesk(Protocol):
    def ack(self, alert_id: str, now: float) -> bool: ...


class AckTap:
    """Wraps the alert desk ``cmd/alert-ack`` reaches: the ack goes on as before, and the fallback
    hears of it (so it stops sending)."""

    def __init__(self, inner: _AckDesk, on_ack: Callable[[str], None]) -> None:
        self.inner, self.on_ack = inner, on_ack

    def ack(self, alert_id: str, now: float) -> bool:
        ok = self.inner.ack(alert_id, now)
        if ok:
            self.on_ack(alert_id)
        return ok


class _Pipeline(Protocol):
    def on_alert(self, listener: Callable[[str, str, float], None]) -> None: ...

    @property
    def drill(self) -> DrillWindow: ...

    def submit(self, msg: NewMessage) -> asyncio.Future[int]: ...


class _Uplink(Protocol):
    @property
    def state(self) -> ConnState: ...

    on_alert_delivered: list[Callable[[StoredMessage], None]]


class _Commands(Protocol):
    alerts: Any


def attach_sms_fallback(
    cfg: Config,
    topics: Topics,
    pipeline: _Pipeline,
    uplink: _Uplink,
    commands: _Commands,
    *,
    clock: Callable[[], float] = time.time,
    step_since: Callable[[float], float] = lambda _at: 0.0,
) -> SmsFallback | None:
    """The daemon's one call: build the fallback from ``[alarm]`` (None when it is off) and hook it to
    SOS alerts (``pipeline.on_alert``), PUBACKs (``uplink.on_alert_delivered``), acks (the commands'
    alert desk) and the uplink state. The caller runs :meth:`SmsFallback.run` in its TaskGroup.
    ``clock``, ``step_since``: the daemon's timeline and its clock's (see :class:`SmsFallback`)."""
    if not cfg.alarm.enabled:
        return None

    def person_of(device_id: str) -> str | None:
        person = cfg.rules.person_of(device_id)
        return person.id if person is not None else None

    fallback = SmsFallback(
        cfg.alarm,
        topics,
        cfg.gateway.data_dir,
        pipeline.submit,
        lambda: uplink.state is ConnState.CONNECTED,
        person_of=person_of,
        # as the pipeline judged the press (the same flag as the alert's `drill`)
        is_drill=lambda alert_id, _at: alert_id in pipeline.drill.drill_alerts,
        clock=clock,
        step_since=step_since,
    )
    pipeline.on_alert(fallback.on_sos)  # SOS presses, and call requests when [alarm] calls = true
    uplink.on_alert_delivered.append(fallback.on_delivered)
    commands.alerts = AckTap(commands.alerts, fallback.on_ack)
    return fallback
