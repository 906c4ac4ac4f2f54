"""The care-rules engine: readings and clock ticks in, alert events out. No I/O, no asyncio.

Every input carries its time: readings their capture time, everything else an explicit ``now``
(POSIX seconds), so the engine is driven by tests with an injectable clock and replays the same
inputs to the same events (alert ids included). Per reading the work is a few dictionary look-ups
(device -> person -> rules indexed by code -> one state per rule and device): O(1).
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, TypeVar

from drivers.base import BeatIntervals, ButtonPress, DeviceStatus, LinkState, Measurement, Reading, Waveform
from gateway.errors import GatewayError
from gateway.rules.daytime import daytime_seconds, zone
from gateway.rules.defaults import DEFAULT_RULES, DEFAULTS_BY_ID
from gateway.rules.spec import (
    CALL_SEVERITY,
    SEVERITIES,
    RuleSpec,
    RuleSpecError,
    Severity,
    WatchSettings,
    rule_from_dict,
    rules_from_list,
    severity_rank,
)

log = logging.getLogger(__name__)

EventState: TypeAlias = Literal["raised", "escalated", "cleared", "reminder"]
SNAPSHOT_VERSION = 1
GATEWAY = None  # device_id of the gateway's own alerts (outbox, uplink)
_EXTRA_KEYS = ("label", "burden", "irregular_pulse", "sensor_contact", "at_rest", "stored")
_RECENT_LIMIT = 1024
_MAX_ID = 128  # cmd/alert-ack accepts alert ids up to 128 characters


class SnapshotError(GatewayError):
    """A snapshot that :meth:`RuleEngine.restore` cannot read (wrong version, damaged)."""


# --------------------------------------------------------------------------------------------------
# What the engine emits


@dataclass(frozen=True, slots=True)
class ReadingRef:
    """A reading that triggered, escalated or cleared an alert (values included: never log it at INFO)."""

    device_id: str
    code: str
    value: float
    unit: str
    captured_at: float
    quality: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, m: Measurement) -> ReadingRef:
        extra = {k: m.extra[k] for k in _EXTRA_KEYS if k in m.extra and isinstance(m.extra[k], (bool, int, float, str))}
        return cls(m.device_id, m.code, m.value, m.unit, m.captured_at, m.quality, extra)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; ``captured_at`` in POSIX seconds (the alert message formats it as RFC 3339)."""
        d: dict[str, Any] = {
            "device_id": self.device_id,
            "code": self.code,
            "value": self.value,
            "unit": self.unit,
            "captured_at": self.captured_at,
        }
        if self.quality is not None:
            d["quality"] = self.quality
        if self.extra:
            d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReadingRef:
        return cls(
            str(d["device_id"]),
            str(d["code"]),
            float(d["value"]),
            str(d["unit"]),
            float(d["captured_at"]),
            None if d.get("quality") is None else float(d["quality"]),
            dict(d.get("extra", {})),
        )


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One transition of one alert, for the ``alert`` message (docs/mqtt-contract.md).

    - ``alert_id``: deterministic (rule or watch kind, device, start time in ms): the same inputs give
      the same id, so the message's ``msg_id`` can be derived from :attr:`key`; the care centre acks it.
    - ``state``: ``raised`` -> ``escalated`` (at most once) -> ``cleared``; ``reminder`` is local only
      (an open, unacknowledged alert at or above ``WatchSettings.reminder_min_severity``).
    - ``started_at``: when the condition really began (capture time of the first abnormal reading,
      start of the silence...), ``at``: when this transition happened (capture time of the reading
      that caused it, or the ``now`` of :meth:`RuleEngine.tick`). Both POSIX seconds.
    - ``device_id``: ``None`` for the gateway's own alerts (``outbox_full``, ``uplink_down``).
    - ``rule``: JSON-able description of the rule (the spec without its prose, or the watch limits).
    - ``readings``: the readings behind the transition; ``detail``: e.g. ``{"mean": 0.31,
      "window_s": 3600}``, ``{"battery_percent": 12}``, ``{"silent_s": 7300}``, ``{"reason": ...}``.
    - ``presses``: (``call`` requests) how many presses the open request holds so far: a later press
      while it is open is ``raised`` again with a higher count (an update of the same alert id).
    - ``drill``: (``call`` requests) the drill press of a button (gateway/drill.py).
    """

    alert_id: str
    state: EventState
    kind: str
    severity: Severity
    person_id: str | None
    device_id: str | None
    rule: Mapping[str, Any]
    started_at: float
    at: float
    readings: tuple[ReadingRef, ...] = ()
    detail: Mapping[str, Any] = field(default_factory=dict)
    reminder: int = 0  # 1, 2, ... for reminders
    presses: int = 0  # call requests: presses so far (0: not a press alert)
    drill: bool = False

    @property
    def rule_id(self) -> str:
        return str(self.rule.get("id", self.kind))

    @property
    def key(self) -> str:
        """A stable identity of this event (for ``msg_id``): the same on every replay."""
        key = f"{self.alert_id}|{self.state}" + (f"|{self.reminder}" if self.state == "reminder" else "")
        return key + (f"|{self.presses}" if self.presses > 1 and self.state == "raised" else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, times in POSIX seconds (the alert message formats them as RFC 3339)."""
        return {
            "alert_id": self.alert_id,
            "state": self.state,
            "kind": self.kind,
            "severity": self.severity,
            "person_id": self.person_id,
            "device_id": self.device_id,
            "rule": dict(self.rule),
            "started_at": self.started_at,
            "at": self.at,
            "readings": [r.to_dict() for r in self.readings],
            "detail": dict(self.detail),
            "reminder": self.reminder,
            "presses": self.presses,
            "drill": self.drill,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AlertEvent:
        if d["state"] not in ("raised", "escalated", "cleared", "reminder"):
            raise ValueError(f"state {d['state']!r}")
        if d["severity"] not in SEVERITIES:
            raise ValueError(f"severity {d['severity']!r}")
        return cls(
            alert_id=str(d["alert_id"]),
            state=d["state"],
            kind=str(d["kind"]),
            severity=d["severity"],
            person_id=None if d["person_id"] is None else str(d["person_id"]),
            device_id=None if d["device_id"] is None else str(d["device_id"]),
            rule=dict(d["rule"]),
            started_at=float(d["started_at"]),
            at=float(d["at"]),
            readings=tuple(ReadingRef.from_dict(r) for r in d["readings"]),
            detail=dict(d["detail"]),
            reminder=int(d["reminder"]),
            presses=int(d.get("presses", 0)),
            drill=bool(d.get("drill", False)),
        )


@dataclass(frozen=True, slots=True)
class OpenAlert:
    """An open alert as seen from outside (status, gatewayctl)."""

    alert_id: str
    kind: str
    severity: Severity
    person_id: str | None
    device_id: str | None
    rule_id: str
    started_at: float
    raised_at: float
    escalated: bool
    acked_at: float | None
    reminders: int
    external: bool
    presses: int = 0  # call requests: presses so far
    drill: bool = False
    last_press_at: float | None = None  # call requests: engine time of the latest press


# --------------------------------------------------------------------------------------------------
# Internal state


@dataclass(slots=True)
class _Alert:
    alert_id: str
    kind: str
    severity: Severity
    person_id: str | None
    device_id: str | None
    rule: dict[str, Any]
    started_at: float
    raised_at: float  # engine time (now) when raised: reminders count from it
    escalated: bool = False
    acked_at: float | None = None
    next_reminder_at: float | None = None
    reminders: int = 0
    external: bool = False  # raised by the daemon (SOS): closed by ack, never by the engine
    presses: int = 0  # a call request: presses so far
    drill: bool = False
    last_press_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "kind": self.kind,
            "severity": self.severity,
            "person_id": self.person_id,
            "device_id": self.device_id,
            "rule": self.rule,
            "started_at": self.started_at,
            "raised_at": self.raised_at,
            "escalated": self.escalated,
            "acked_at": self.acked_at,
            "next_reminder_at": self.next_reminder_at,
            "reminders": self.reminders,
            "external": self.external,
            "presses": self.presses,
            "drill": self.drill,
            "last_press_at": self.last_press_at,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> _Alert:
        sev = d["severity"]
        if sev not in SEVERITIES:
            raise ValueError(f"severity {sev!r}")
        return cls(
            alert_id=str(d["alert_id"]),
            kind=str(d["kind"]),
            severity=sev,
            person_id=None if d["person_id"] is None else str(d["person_id"]),
            device_id=None if d["device_id"] is None else str(d["device_id"]),
            rule=dict(d["rule"]),
            started_at=float(d["started_at"]),
            raised_at=float(d["raised_at"]),
            escalated=bool(d["escalated"]),
            acked_at=None if d["acked_at"] is None else float(d["acked_at"]),
            next_reminder_at=None if d["next_reminder_at"] is None else float(d["next_reminder_at"]),
            reminders=int(d["reminders"]),
            external=bool(d["external"]),
            # absent in snapshots written before call requests existed
            presses=int(d.get("presses", 0)),
            drill=bool(d.get("drill", False)),
            last_press_at=_opt(d.get("last_press_at")),
        )


# A window's values are kept in at most _BUCKETS + 2 time buckets (sum and count each), never one by one:
# a rule of the cloud may ask for a 7-day window of a reading every few seconds (tens of thousands of
# values per rule and device), and the whole state is snapshotted every minute on the event loop.
_BUCKETS = 120
# Sums are exact integers in units of 2**-64: exact for every value of magnitude 2**-12 (0.000244) or
# more, whatever the order of additions and subtractions, so a mean never drifts over days of a running
# total and a restored window gives the very same mean as the one that was saved.
_FRAC_BITS = 64
_SCALE = float(1 << _FRAC_BITS)


def _fixed(v: float) -> int:
    """``v`` in units of 2**-64: exact when |v| >= 2**-12, rounded towards 0 below (by less than 5.5e-20)."""
    try:
        return int(v * _SCALE)  # a product by a power of two: exact (and a third of as_integer_ratio's cost)
    except OverflowError:  # |v| >= 2**960: an integer already
        return int(v) << _FRAC_BITS


@dataclass(slots=True)
class _Bucket:
    """The usable values of one stretch of ``width`` seconds of capture time (aligned on multiples of it)."""

    total: int  # their sum, in units of 2**-64
    n: int
    last: float  # capture time of the latest
    key: float  # time // width: which stretch


@dataclass(slots=True)
class _Window:
    """The mean of the usable values of the last ``span`` seconds, in bounded state (O(1) per push).

    The values are summed into buckets ``span / _BUCKETS`` wide. A bucket leaves the window once its
    latest value is ``span`` old, so the only imprecision is at the trailing edge: values up to one
    bucket width older than ``span`` still count while their bucket holds a younger one, none ever
    drops early. Values further apart than a bucket width are judged exactly."""

    span: float
    width: float = field(init=False)  # of a bucket
    buckets: deque[_Bucket] = field(default_factory=deque)
    total: int = 0  # sum of the buckets' totals
    n: int = 0
    since: float | None = None  # first value since the stream (re)started

    def __post_init__(self) -> None:
        self.width = self.span / _BUCKETS

    def push(self, t: float, v: float) -> float | None:
        """Add a value (``t`` later than the last one's); the mean of the window once the stream covers
        a whole window, else None."""
        if self.since is None:
            self.since = t
        self._add(_fixed(v), 1, t)
        self._expire(t)
        return self.total / (self.n << _FRAC_BITS) if t - self.since >= self.span else None

    def _add(self, total: int, n: int, t: float) -> None:
        key = t // self.width
        last = self.buckets[-1] if self.buckets else None
        if last is not None and last.key == key:
            last.total += total
            last.n += n
            last.last = t
        else:
            self.buckets.append(_Bucket(total, n, t, key))
        self.total += total
        self.n += n

    def _expire(self, t: float) -> None:
        edge = t - self.span
        while self.buckets and self.buckets[0].last <= edge:
            b = self.buckets.popleft()
            self.total -= b.total
            self.n -= b.n

    def reset(self) -> None:
        self.buckets.clear()
        self.total = self.n = 0
        self.since = None

    def to_dict(self) -> dict[str, Any]:
        return {"buckets": [[b.total, b.n, b.last] for b in self.buckets], "since": self.since}

    def load(self, d: Mapping[str, Any]) -> None:
        """Read :meth:`to_dict`, or the raw values (``items``: ``[[t, v], ...]``) that snapshots kept
        before buckets (a gateway upgraded in the field keeps its windows): either way each piece is
        summed into the bucket of its time, so a window saved with another bucket width is re-bucketed."""
        if "buckets" in d:
            pieces = [(_int(p[0]), _int(p[1]), _number(p[2])) for p in d["buckets"]]
        else:
            pieces = [(_fixed(_number(v)), 1, _number(t)) for t, v in d["items"]]
        self.reset()
        prev = -math.inf
        for total, n, t in pieces:
            if n < 1 or not t > prev:
                raise ValueError("window: expected counts >= 1 in time order")
            self._add(total, n, t)
            prev = t
        if self.buckets:
            self._expire(self.buckets[-1].last)
        self.since = None if d["since"] is None else _number(d["since"])


@dataclass(slots=True)
class _RuleState:
    """Evaluation state of one rule on one device."""

    n: int
    last_at: list[float | None] = field(default_factory=list)
    abnormal: list[bool] = field(default_factory=list)
    severe: list[bool] = field(default_factory=list)
    recovered: list[bool] = field(default_factory=list)
    latest: list[ReadingRef | None] = field(default_factory=list)
    windows: list[_Window | None] = field(default_factory=list)
    last_good_at: float | None = None
    pending_since: float | None = None
    severe_since: float | None = None
    clear_since: float | None = None
    first: ReadingRef | None = None
    worst: ReadingRef | None = None
    worst_score: float = -math.inf
    alert_id: str | None = None

    @classmethod
    def new(cls, rule: RuleSpec) -> _RuleState:
        n = len(rule.conditions)
        return cls(
            n=n,
            last_at=[None] * n,
            abnormal=[False] * n,
            severe=[False] * n,
            recovered=[True] * n,
            latest=[None] * n,
            windows=[None if rule.window_s is None else _Window(rule.window_s) for _ in range(n)],
        )

    def restart(self) -> None:
        """A gap in the stream: no hold runs through it."""
        self.pending_since = self.severe_since = self.clear_since = None
        self.first = self.worst = None
        self.worst_score = -math.inf
        for w in self.windows:
            if w is not None:
                w.reset()

    def to_dict(self) -> dict[str, Any]:
        return {
            "last_at": self.last_at,
            "abnormal": self.abnormal,
            "severe": self.severe,
            "recovered": self.recovered,
            "latest": [None if r is None else r.to_dict() for r in self.latest],
            "windows": [None if w is None else w.to_dict() for w in self.windows],
            "last_good_at": self.last_good_at,
            "pending_since": self.pending_since,
            "severe_since": self.severe_since,
            "clear_since": self.clear_since,
            "first": None if self.first is None else self.first.to_dict(),
            "worst": None if self.worst is None else self.worst.to_dict(),
            "worst_score": None if self.worst_score == -math.inf else self.worst_score,
            "alert_id": self.alert_id,
        }

    @classmethod
    def from_dict(cls, rule: RuleSpec, d: Mapping[str, Any]) -> _RuleState:
        st = cls.new(rule)
        n = st.n

        def opt(x: Any) -> float | None:
            return None if x is None else float(x)

        for name in ("last_at", "abnormal", "severe", "recovered", "latest", "windows"):
            if len(d[name]) != n:
                raise ValueError(f"{name}: expected {n} entries")
        st.last_at = [opt(x) for x in d["last_at"]]
        st.abnormal = [bool(x) for x in d["abnormal"]]
        st.severe = [bool(x) for x in d["severe"]]
        st.recovered = [bool(x) for x in d["recovered"]]
        st.latest = [None if x is None else ReadingRef.from_dict(x) for x in d["latest"]]
        for i, w in enumerate(d["windows"]):
            win = st.windows[i]
            if w is not None and win is not None:
                win.load(w)
        st.last_good_at = opt(d["last_good_at"])
        st.pending_since = opt(d["pending_since"])
        st.severe_since = opt(d["severe_since"])
        st.clear_since = opt(d["clear_since"])
        st.first = None if d["first"] is None else ReadingRef.from_dict(d["first"])
        st.worst = None if d["worst"] is None else ReadingRef.from_dict(d["worst"])
        st.worst_score = -math.inf if d["worst_score"] is None else float(d["worst_score"])
        st.alert_id = None if d["alert_id"] is None else str(d["alert_id"])
        return st


@dataclass(slots=True)
class _Device:
    id: str
    person_id: str
    worn: bool = False
    watch_link: bool = True
    last_data_at: float = 0.0  # engine time of the last data reading (or of registration)
    link_down_since: float | None = None
    contact_off_since: float | None = None
    low_quality_since: float | None = None
    battery_percent: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "person_id": self.person_id,
            "worn": self.worn,
            "watch_link": self.watch_link,
            "last_data_at": self.last_data_at,
            "link_down_since": self.link_down_since,
            "contact_off_since": self.contact_off_since,
            "low_quality_since": self.low_quality_since,
            "battery_percent": self.battery_percent,
        }


@dataclass(frozen=True, slots=True)
class EngineCounters:
    readings: int
    unusable: int
    out_of_order: int
    raised: int
    escalated: int
    cleared: int
    reminders: int
    open: int
    calls_not_joined: int = 0  # call presses that opened a new request: the open one's last press too old


# --------------------------------------------------------------------------------------------------
# The engine


def _ms(t: float) -> int:
    return round(t * 1000)


def _alert_id(*parts: str) -> str:
    aid = "/".join(parts)
    if len(aid) <= _MAX_ID:
        return aid
    digest = hashlib.blake2s(aid.encode(), digest_size=12).hexdigest()
    return f"{parts[0][:64]}/{digest}"


def _summary(rule: RuleSpec) -> dict[str, Any]:
    d = rule.to_dict()
    d.pop("description", None)
    d.pop("source", None)
    return d


class RuleEngine:
    """Care rules and device/person/gateway watch for the people of one gateway.

    ``default_rules`` apply to every person without rules of their own; ``person_rules`` (from the
    config) give a person's whole rule set; :meth:`update_rules` (from the cloud) replaces it and is
    kept in :meth:`snapshot`. Devices not given to :meth:`set_device` belong to ``default_person``.
    """

    def __init__(
        self,
        settings: WatchSettings | None = None,
        *,
        default_rules: Sequence[RuleSpec] = DEFAULT_RULES,
        person_rules: Mapping[str, Sequence[RuleSpec]] | None = None,
        default_person: str = "default",
    ) -> None:
        self.settings = settings or WatchSettings()
        self._tz = zone(self.settings.timezone)
        # the wall clock - the engine's clock, now (the caller's to set before each tick: the daemon's
        # timeline lags the wall clock by any step forwards since it began): the time of day of the
        # daytime window is the wall clock's, while every duration stays on the engine's clock
        self.wall_shift = 0.0
        self.default_person = default_person
        self._default_rules = rules_from_list(list(default_rules), bases=DEFAULTS_BY_ID)
        self._config_rules: dict[str, tuple[RuleSpec, ...]] = {
            p: rules_from_list(list(r), bases=DEFAULTS_BY_ID) for p, r in (person_rules or {}).items()
        }
        self._overrides: dict[str, tuple[RuleSpec, ...]] = {}
        self._index: dict[str, dict[str, tuple[tuple[RuleSpec, int], ...]]] = {}
        self._devices: dict[str, _Device] = {}
        self._states: dict[tuple[str, str, str], _RuleState] = {}
        self._alerts: dict[str, _Alert] = {}
        self._watch: dict[tuple[str, str | None], str] = {}  # (kind, device) -> open alert id
        self._calls: dict[str, str] = {}  # coalescing key (person or button) -> open call request id
        self._recent: OrderedDict[str, float] = OrderedDict()  # closed or acked alert ids
        self._queued: list[AlertEvent] = []
        # (due, alert id) of scheduled reminders, a heap: tick pops what is due instead of visiting every
        # open alert. Entries left by an ack or a reschedule are stale (due != next_reminder_at), skipped.
        self._reminders: list[tuple[float, str]] = []
        self._outbox_fill: float = 0.0
        self._uplink_down_since: float | None = None
        self._n = {"readings": 0, "unusable": 0, "out_of_order": 0, "raised": 0, "escalated": 0, "cleared": 0}
        self._n["reminders"] = 0
        self._n["calls_not_joined"] = 0

    # -- rules --------------------------------------------------------------------------------------

    def rules_for(self, person_id: str) -> tuple[RuleSpec, ...]:
        """The rules in force for a person: the cloud's, else the config's, else the defaults."""
        if person_id in self._overrides:
            return self._overrides[person_id]
        return self._config_rules.get(person_id, self._default_rules)

    def update_rules(self, person_id: str, rules: Sequence[Mapping[str, Any] | RuleSpec]) -> Mapping[str, Any]:
        """Validate and replace a person's rules atomically (the downlink's ``rules-update``).

        Raises :class:`RuleSpecError` (a :class:`~gateway.errors.CommandRejected` with code
        ``invalid``) and changes nothing when any spec is bad. Alerts of rules that are gone are
        cleared (the events come with the next :meth:`tick`); alerts of changed rules stay open and
        clear by the new rule. Returns ``{"person_id", "rules": [ids]}``.
        """
        new = rules_from_list(rules, bases=DEFAULTS_BY_ID)
        self._replace(person_id, self.rules_for(person_id), new)
        self._overrides[person_id] = new
        return {"person_id": person_id, "rules": [r.id for r in new]}

    def reset_rules(self, person_id: str) -> None:
        """Forget the cloud's rules for a person: back to the config's or the defaults."""
        old = self._overrides.pop(person_id, None)
        if old is not None:
            self._replace(person_id, old, self.rules_for(person_id))

    def _replace(self, person_id: str, old_rules: Sequence[RuleSpec], new: Sequence[RuleSpec]) -> None:
        by_id = {r.id: r for r in new}
        old = {r.id: r for r in old_rules}
        for key in [k for k in self._states if k[0] == person_id]:
            _, rule_id, device_id = key
            st = self._states[key]
            rule = by_id.get(rule_id)
            if rule is not None and rule == old.get(rule_id) and rule.applies_to(device_id):
                continue
            del self._states[key]
            if st.alert_id is None:
                continue
            if rule is not None and rule.applies_to(device_id):
                fresh = _RuleState.new(rule)
                fresh.alert_id = st.alert_id
                self._states[key] = fresh
                self._alerts[st.alert_id].rule = _summary(rule)
            else:
                self._queued.append(self._close(st.alert_id, self._last_time(st), {"reason": "rule_removed"}))
        self._index.pop(person_id, None)

    def _last_time(self, st: _RuleState) -> float:
        return max((t for t in st.last_at if t is not None), default=0.0)

    def _rules_by_code(self, person_id: str) -> dict[str, tuple[tuple[RuleSpec, int], ...]]:
        idx = self._index.get(person_id)
        if idx is None:
            built: dict[str, list[tuple[RuleSpec, int]]] = {}
            for rule in self.rules_for(person_id):
                for i, c in enumerate(rule.conditions):
                    built.setdefault(c.code, []).append((rule, i))
            idx = self._index[person_id] = {k: tuple(v) for k, v in built.items()}
        return idx

    # -- devices ------------------------------------------------------------------------------------

    def set_device(
        self, device_id: str, now: float, *, person_id: str | None = None, worn: bool = False, watch_link: bool = True
    ) -> None:
        """Register or update a device: whose it is, whether it is worn (the "no data" and "not worn"
        watch), whether its link is watched. Silence of a new device counts from ``now``."""
        person = person_id or self.default_person
        dev = self._devices.get(device_id)
        if dev is None:
            self._devices[device_id] = _Device(device_id, person, worn, watch_link, last_data_at=now)
            return
        if dev.person_id != person:
            self._drop_device_rules(dev, now, "device_moved")
            dev.person_id = person
        if worn and not dev.worn:
            dev.last_data_at = max(dev.last_data_at, now)  # watched from now on
        dev.worn, dev.watch_link = worn, watch_link
        if not worn:
            for kind in ("no_data", "not_worn"):
                self._queue_clear(kind, device_id, now, "device_not_worn")
        if not watch_link:
            self._queue_clear("device_disconnected", device_id, now, "link_not_watched")

    def remove_device(self, device_id: str, now: float) -> None:
        """Forget a device; its open alerts clear (events with the next :meth:`tick`)."""
        dev = self._devices.pop(device_id, None)
        if dev is None:
            return
        self._drop_device_rules(dev, now, "device_removed")
        for kind, dev_id in [k for k in self._watch if k[1] == device_id]:
            self._queue_clear(kind, dev_id, now, "device_removed")

    def _drop_device_rules(self, dev: _Device, now: float, reason: str) -> None:
        for key in [k for k in self._states if k[0] == dev.person_id and k[2] == dev.id]:
            st = self._states.pop(key)
            if st.alert_id is not None:
                self._queued.append(self._close(st.alert_id, now, {"reason": reason}))

    def _queue_clear(self, kind: str, device_id: str | None, now: float, reason: str) -> None:
        aid = self._watch.pop((kind, device_id), None)
        if aid is not None:
            self._queued.append(self._close(aid, now, {"reason": reason}))

    def _device(self, device_id: str, now: float) -> _Device:
        dev = self._devices.get(device_id)
        if dev is None:
            dev = self._devices[device_id] = _Device(device_id, self.default_person, last_data_at=now)
        return dev

    # -- readings -----------------------------------------------------------------------------------

    def feed(self, reading: Reading, now: float) -> list[AlertEvent]:
        """One reading from the pipeline (any type; waveforms only count as "data seen").

        ``now`` is the engine's clock at arrival; rules use the reading's capture time, so a reading
        downloaded late raises its alert with its real time."""
        dev = self._device(reading.device_id, now)
        out: list[AlertEvent] = []
        if isinstance(reading, DeviceStatus):
            self._status(dev, reading, now, out)
            return out
        self._data_seen(dev, now, out)
        if isinstance(reading, Measurement):
            self._n["readings"] += 1
            self._battery_flag(dev, reading.extra, reading.captured_at, now, out)
            if dev.worn:
                self._wear(dev, reading, now, out)
            for rule, ci in self._rules_by_code(dev.person_id).get(reading.code, ()):
                if rule.applies_to(dev.id):
                    self._evaluate(dev, rule, ci, reading, now, out)
        elif isinstance(reading, ButtonPress):
            self._battery_flag(dev, reading.extra, reading.captured_at, now, out)
        elif not isinstance(reading, (Waveform, BeatIntervals)):  # pragma: no cover - future reading types
            log.debug("device %s: rules ignore %s", dev.id, type(reading).__name__)
        return out

    def _usable(self, rule: RuleSpec, m: Measurement) -> bool:
        if not math.isfinite(m.value):
            return False
        if m.quality is not None and m.quality < rule.min_quality:
            return False
        if rule.rest_only and m.extra.get("at_rest") is False:
            return False
        return m.extra.get("label") != "insufficient"

    def _evaluate(
        self, dev: _Device, rule: RuleSpec, ci: int, m: Measurement, now: float, out: list[AlertEvent]
    ) -> None:
        if not self._usable(rule, m):
            self._n["unusable"] += 1
            return
        key = (dev.person_id, rule.id, dev.id)
        st = self._states.get(key)
        if st is None:
            st = self._states[key] = _RuleState.new(rule)
        t = m.captured_at
        last = st.last_at[ci]
        if last is not None and t <= last:
            self._n["out_of_order"] += 1
            return
        if rule.max_gap_s is not None and st.last_good_at is not None and t - st.last_good_at > rule.max_gap_s:
            st.restart()
        st.last_at[ci] = t
        st.last_good_at = t if st.last_good_at is None else max(st.last_good_at, t)
        cond = rule.conditions[ci]
        value = m.value
        win = st.windows[ci]
        if win is not None:
            mean = win.push(t, m.value)
            if mean is None:
                return  # not a whole window yet: nothing to judge
            value = mean
        ref = ReadingRef.of(m)
        st.latest[ci] = ref
        if cond.op == "flag":
            bad = m.extra.get(cond.flag or "") is True
            st.abnormal[ci], st.severe[ci], st.recovered[ci] = bad, False, not bad
        else:
            bad = cond.abnormal(value)
            st.abnormal[ci], st.severe[ci], st.recovered[ci] = bad, cond.severe(value), cond.recovered(value)
        abnormal, severe, recovered = any(st.abnormal), any(st.severe), all(st.recovered)

        if abnormal:
            if st.pending_since is None:
                st.pending_since, st.first = t, ref
            if bad:
                score = _score(cond.op, value, cond.threshold)
                if score > st.worst_score:
                    st.worst, st.worst_score = ref, score
        else:
            st.pending_since, st.first, st.worst, st.worst_score = None, None, None, -math.inf
        st.severe_since = (t if st.severe_since is None else st.severe_since) if severe else None
        st.clear_since = (t if st.clear_since is None else st.clear_since) if recovered else None
        is_severe = st.severe_since is not None and t - st.severe_since >= rule.hold_s

        if st.alert_id is None:
            if st.pending_since is not None and t - st.pending_since >= rule.hold_s:
                severity = rule.severe_severity if is_severe and rule.severe_severity else rule.severity
                aid = _alert_id(rule.id, dev.id, str(_ms(st.pending_since)))
                alert = _Alert(
                    aid,
                    rule.kind,
                    severity,
                    dev.person_id,
                    dev.id,
                    _summary(rule),
                    st.pending_since,
                    now,
                    escalated=severity != rule.severity,
                )
                st.alert_id = aid
                out.append(self._open(alert, t, self._refs(st, ref), self._detail(rule, value)))
            return
        alert = self._alerts[st.alert_id]
        if st.clear_since is not None and t - st.clear_since >= rule.clear_hold_s:
            out.append(self._close(st.alert_id, t, self._detail(rule, value), self._refs(st, ref, cleared=True)))
            st.alert_id = None
            st.clear_since = None
        elif is_severe and not alert.escalated and rule.severe_severity:
            out.append(
                self._escalate(alert, rule.severe_severity, t, now, self._refs(st, ref), self._detail(rule, value))
            )

    def _refs(self, st: _RuleState, ref: ReadingRef, *, cleared: bool = False) -> tuple[ReadingRef, ...]:
        """The readings behind a transition: the run's first and worst readings and this one, plus the
        other conditions' readings of the same measurement (a cuff's systolic with its diastolic)."""
        picked: list[ReadingRef] = [] if cleared else [r for r in (st.first, st.worst) if r is not None]
        picked.append(ref)
        for other in st.latest:
            if other is not None and other.code != ref.code and abs(other.captured_at - ref.captured_at) <= 1.0:
                picked.append(other)
        seen: set[tuple[str, float]] = set()
        unique = []
        for r in picked:
            if (r.code, r.captured_at) not in seen:
                seen.add((r.code, r.captured_at))
                unique.append(r)
        return tuple(unique)

    @staticmethod
    def _detail(rule: RuleSpec, value: float) -> dict[str, Any]:
        if rule.window_s is None:
            return {}
        return {"mean": value, "window_s": rule.window_s}

    # -- device, person and gateway watch -----------------------------------------------------------

    def _data_seen(self, dev: _Device, now: float, out: list[AlertEvent]) -> None:
        dev.last_data_at = max(dev.last_data_at, now)
        self._clear_watch("no_data", dev.id, now, {}, out)
        if dev.link_down_since is not None:
            dev.link_down_since = None
            self._clear_watch("device_disconnected", dev.id, now, {}, out)

    def _status(self, dev: _Device, s: DeviceStatus, now: float, out: list[AlertEvent]) -> None:
        if s.state in (LinkState.DISCONNECTED, LinkState.ERROR):
            if dev.link_down_since is None:
                dev.link_down_since = s.captured_at
        elif s.state == LinkState.CONNECTED:
            dev.link_down_since = None
            self._clear_watch("device_disconnected", dev.id, s.captured_at, {}, out)
        if s.battery_percent is not None:
            self._battery(dev, s.battery_percent, s.captured_at, now, out)

    def _battery(self, dev: _Device, pct: int, t: float, now: float, out: list[AlertEvent]) -> None:
        w = self.settings
        dev.battery_percent = pct
        detail = {"battery_percent": pct}
        aid = self._watch.get(("battery_low", dev.id))
        if aid is None:
            if pct <= w.battery_low_percent:
                sev = w.battery_critical_severity if pct <= w.battery_critical_percent else w.battery_severity
                out.append(self._raise_watch("battery_low", dev, sev, t, t, now, detail))
                self._alerts[self._watch[("battery_low", dev.id)]].escalated = sev != w.battery_severity
        elif pct >= w.battery_clear_percent:
            self._clear_watch("battery_low", dev.id, t, detail, out)
        elif pct <= w.battery_critical_percent and not self._alerts[aid].escalated:
            out.append(self._escalate(self._alerts[aid], w.battery_critical_severity, t, now, (), detail))

    def _battery_flag(
        self, dev: _Device, extra: Mapping[str, Any], t: float, now: float, out: list[AlertEvent]
    ) -> None:
        flag = extra.get("battery_low")
        if flag is True and ("battery_low", dev.id) not in self._watch:
            out.append(self._raise_watch("battery_low", dev, self.settings.battery_severity, t, t, now, {"flag": True}))
        elif flag is False:
            self._clear_watch("battery_low", dev.id, t, {"flag": False}, out)

    def _wear(self, dev: _Device, m: Measurement, now: float, out: list[AlertEvent]) -> None:
        w, t = self.settings, m.captured_at
        contact = m.extra.get("sensor_contact")
        if contact is False:
            dev.contact_off_since = t if dev.contact_off_since is None else dev.contact_off_since
        elif contact is True:
            dev.contact_off_since = None
        if m.quality is not None:
            if m.quality < w.not_worn_quality:
                dev.low_quality_since = t if dev.low_quality_since is None else dev.low_quality_since
            else:
                dev.low_quality_since = None
        since = [s for s in (dev.contact_off_since, dev.low_quality_since) if s is not None]
        if ("not_worn", dev.id) in self._watch:
            if not since:
                self._clear_watch("not_worn", dev.id, t, {}, out)
        elif since and t - min(since) >= w.not_worn_s:
            reason = "no_contact" if dev.contact_off_since is not None else "low_quality"
            out.append(self._raise_watch("not_worn", dev, w.not_worn_severity, min(since), t, now, {"reason": reason}))

    def set_outbox_fill(self, fraction: float, now: float) -> list[AlertEvent]:
        """The outbox's size as a fraction of its disk budget (call it when it changes, or with tick)."""
        w = self.settings
        out: list[AlertEvent] = []
        if not math.isfinite(fraction):
            return out
        self._outbox_fill = fraction
        detail = {"fill": round(fraction, 4)}
        aid = self._watch.get(("outbox_full", GATEWAY))
        if aid is None:
            if fraction >= w.outbox_fill:
                sev = w.outbox_severe_severity if fraction >= w.outbox_fill_severe else w.outbox_severity
                out.append(self._raise_watch("outbox_full", None, sev, now, now, now, detail))
                self._alerts[self._watch[("outbox_full", GATEWAY)]].escalated = sev != w.outbox_severity
        elif fraction <= w.outbox_fill_clear:
            self._clear_watch("outbox_full", GATEWAY, now, detail, out)
        elif fraction >= w.outbox_fill_severe and not self._alerts[aid].escalated:
            out.append(self._escalate(self._alerts[aid], w.outbox_severe_severity, now, now, (), detail))
        return out

    def set_uplink_down(self, since: float | None, now: float) -> list[AlertEvent]:
        """The uplink is down since ``since`` (``None``: it is up). Raised after
        ``WatchSettings.uplink_down_s``; the events wait in the outbox until the link is back."""
        out: list[AlertEvent] = []
        self._uplink_down_since = since
        if since is None:
            self._clear_watch("uplink_down", GATEWAY, now, {}, out)
        else:
            self._check_uplink(now, out)
        return out

    def _check_uplink(self, now: float, out: list[AlertEvent]) -> None:
        since = self._uplink_down_since
        if since is None or ("uplink_down", GATEWAY) in self._watch:
            return
        if now - since >= self.settings.uplink_down_s:
            detail = {"down_s": round(now - since, 3)}
            out.append(self._raise_watch("uplink_down", None, self.settings.uplink_severity, since, now, now, detail))

    def tick(self, now: float) -> list[AlertEvent]:
        """Time passes: "no data", link and uplink limits, reminders, and events queued by rule or
        device changes. Call it every few seconds; cost O(devices + reminders due)."""
        out, self._queued = self._queued, []
        w = self.settings
        for dev in self._devices.values():
            if dev.worn and ("no_data", dev.id) not in self._watch:
                silent = now - dev.last_data_at
                day = 0.0
                if silent >= w.no_data_day_s:
                    off = self.wall_shift
                    day = daytime_seconds(dev.last_data_at + off, now + off, w.day_start, w.day_end, self._tz)
                total_hit = w.no_data_total_s is not None and silent >= w.no_data_total_s
                if day >= w.no_data_day_s or total_hit:
                    detail = {"silent_s": round(silent, 3), "daytime_silent_s": round(day, 3)}
                    out.append(
                        self._raise_watch("no_data", dev, w.no_data_severity, dev.last_data_at, now, now, detail)
                    )
            if (
                dev.watch_link
                and dev.link_down_since is not None
                and ("device_disconnected", dev.id) not in self._watch
                and now - dev.link_down_since >= w.disconnected_s
            ):
                detail = {"down_s": round(now - dev.link_down_since, 3)}
                out.append(
                    self._raise_watch(
                        "device_disconnected", dev, w.disconnected_severity, dev.link_down_since, now, now, detail
                    )
                )
        self._check_uplink(now, out)
        min_rank = severity_rank(w.reminder_min_severity)
        while self._reminders and self._reminders[0][0] <= now:
            due, aid = heapq.heappop(self._reminders)
            a = self._alerts.get(aid)
            if a is None or a.next_reminder_at != due:
                continue
            if a.kind == "call":  # a call request is reminded once (WatchSettings.call_reminder_s)
                a.reminders += 1
                a.next_reminder_at = None
            elif severity_rank(a.severity) < min_rank:
                continue
            else:
                a.reminders += 1
                a.next_reminder_at = now + w.reminder_interval_s
                heapq.heappush(self._reminders, (a.next_reminder_at, aid))
            self._n["reminders"] += 1
            out.append(self._event(a, "reminder", now, (), {"since_raised_s": round(now - a.raised_at, 3)}))
        return out

    def _watch_rule(self, kind: str) -> dict[str, Any]:
        w = self.settings
        rule: dict[str, Any] = {"id": f"watch.{kind}", "kind": kind}
        if kind == "no_data":
            rule.update(
                day_limit_s=w.no_data_day_s,
                total_limit_s=w.no_data_total_s,
                day=f"{w.day_start.isoformat('minutes')}-{w.day_end.isoformat('minutes')}",
            )
        elif kind == "not_worn":
            rule.update(limit_s=w.not_worn_s, quality_below=w.not_worn_quality)
        elif kind == "battery_low":
            rule.update(low_percent=w.battery_low_percent, critical_percent=w.battery_critical_percent)
        elif kind == "device_disconnected":
            rule.update(limit_s=w.disconnected_s)
        elif kind == "outbox_full":
            rule.update(fill=w.outbox_fill, severe_fill=w.outbox_fill_severe)
        elif kind == "uplink_down":
            rule.update(limit_s=w.uplink_down_s)
        return rule

    def _raise_watch(
        self,
        kind: str,
        dev: _Device | None,
        severity: Severity,
        started_at: float,
        at: float,
        now: float,
        detail: Mapping[str, Any],
    ) -> AlertEvent:
        device_id = None if dev is None else dev.id
        aid = _alert_id(kind, device_id or "gateway", str(_ms(started_at)))
        alert = _Alert(
            aid,
            kind,
            severity,
            None if dev is None else dev.person_id,
            device_id,
            self._watch_rule(kind),
            started_at,
            now,
        )
        self._watch[(kind, device_id)] = aid
        return self._open(alert, at, (), detail)

    def _clear_watch(
        self, kind: str, device_id: str | None, at: float, detail: Mapping[str, Any], out: list[AlertEvent]
    ) -> None:
        aid = self._watch.pop((kind, device_id), None)
        if aid is not None:
            out.append(self._close(aid, at, detail))

    # -- lifecycle ----------------------------------------------------------------------------------

    def _event(
        self, a: _Alert, state: EventState, at: float, readings: tuple[ReadingRef, ...], detail: Mapping[str, Any]
    ) -> AlertEvent:
        return AlertEvent(
            a.alert_id,
            state,
            a.kind,
            a.severity,
            a.person_id,
            a.device_id,
            a.rule,
            a.started_at,
            at,
            readings,
            dict(detail),
            a.reminders if state == "reminder" else 0,
            a.presses,
            a.drill,
        )

    def _schedule(self, a: _Alert, now: float) -> None:
        if a.kind == "call":  # one reminder, call_reminder_s after the first press
            due = a.raised_at + self.settings.call_reminder_s
            a.next_reminder_at = due if a.acked_at is None and a.reminders == 0 else None
        else:
            eligible = a.acked_at is None and severity_rank(a.severity) >= severity_rank(
                self.settings.reminder_min_severity
            )
            a.next_reminder_at = now + self.settings.reminder_interval_s if eligible else None
        if a.next_reminder_at is not None:
            heapq.heappush(self._reminders, (a.next_reminder_at, a.alert_id))

    def _open(self, a: _Alert, at: float, readings: tuple[ReadingRef, ...], detail: Mapping[str, Any]) -> AlertEvent:
        self._alerts[a.alert_id] = a
        self._schedule(a, a.raised_at)
        self._n["raised"] += 1
        log.info("alert %s raised (%s, %s)", a.alert_id, a.kind, a.severity)
        return self._event(a, "raised", at, readings, detail)

    def _escalate(
        self,
        a: _Alert,
        severity: Severity,
        at: float,
        now: float,
        readings: tuple[ReadingRef, ...],
        detail: Mapping[str, Any],
    ) -> AlertEvent:
        a.severity, a.escalated, a.acked_at = severity, True, None  # news: reminders start again
        self._schedule(a, now)
        self._n["escalated"] += 1
        log.info("alert %s escalated to %s", a.alert_id, severity)
        return self._event(a, "escalated", at, readings, detail)

    def _close(
        self, alert_id: str, at: float, detail: Mapping[str, Any], readings: tuple[ReadingRef, ...] = ()
    ) -> AlertEvent:
        a = self._alerts.pop(alert_id)
        self._remember(alert_id, at)
        self._n["cleared"] += 1
        log.info("alert %s cleared", alert_id)
        return self._event(a, "cleared", at, readings, detail)

    def _remember(self, alert_id: str, at: float) -> None:
        self._recent[alert_id] = at
        self._recent.move_to_end(alert_id)
        while len(self._recent) > _RECENT_LIMIT:
            self._recent.popitem(last=False)

    def open_external(
        self,
        alert_id: str,
        kind: str,
        severity: Severity,
        device_id: str | None,
        started_at: float,
        now: float,
        *,
        person_id: str | None = None,
    ) -> None:
        """Track an alert the daemon raised itself (an SOS press) for reminders and :meth:`ack`.
        It stays open until acknowledged. No event: the daemon has sent it already."""
        if alert_id in self._alerts or alert_id in self._recent:
            return
        if person_id is None and device_id is not None and device_id in self._devices:
            person_id = self._devices[device_id].person_id
        a = _Alert(
            alert_id, kind, severity, person_id, device_id, {"id": kind, "kind": kind}, started_at, now, external=True
        )
        self._alerts[alert_id] = a
        self._schedule(a, now)

    def _call_key(self, person_id: str, device_id: str) -> str:
        """Whose call requests coalesce: a person's (every call button given to them), or a button's
        own when it belongs to nobody (two unassigned buttons may be two people)."""
        return f"device:{device_id}" if person_id == self.default_person else f"person:{person_id}"

    def call_press(
        self, alert_id: str, device_id: str, press_id: str, at: float, now: float, *, drill: bool = False
    ) -> AlertEvent:
        """A press of a ``call`` button (the "health butler"), already judged by the daemon's drill
        window. With no call request open for the same person (or the same button, for a button of
        nobody) it opens one with ``alert_id``: ``raised``, severity ``CALL_SEVERITY``, ``presses = 1``,
        one local reminder after ``WatchSettings.call_reminder_s``. While one is open, the press adds
        to it: the event is ``raised`` again for *that* alert id with ``presses`` + 1 (the cloud's
        update of the same request; its key, and so its ``msg_id``, is new). A drill press opens a
        drill request of its own and is never added to, nor adds to, a real one. The request closes
        on :meth:`ack` (``cmd/alert-ack``). ``at`` is the press's capture time."""
        dev = self._device(device_id, now)
        key = self._call_key(dev.person_id, device_id)
        detail: dict[str, Any] = {"press_id": press_id}
        open_id = None if drill else self._calls.get(key)
        a = self._alerts.get(open_id) if open_id is not None else None
        idle = now - (a.last_press_at or a.raised_at) if a is not None else 0.0
        if a is not None and idle >= self.settings.call_coalesce_s:
            # too long since its last press to be the same need: it stays open (until acked), unjoined
            log.info("call request %s: a press %.0f s after its last one opens a new request", a.alert_id, idle)
            self._n["calls_not_joined"] += 1
            a = None
        if a is not None:
            a.presses += 1
            a.last_press_at = now
            if device_id != a.device_id:
                detail["pressed_by"] = device_id
            log.info("call request %s: press %d", a.alert_id, a.presses)
            return self._event(a, "raised", at, (), detail)
        known = self._alerts.get(alert_id)
        if known is not None:  # the same press again (a replay)
            return self._event(known, "raised", at, (), detail)
        rule = {"id": "call", "kind": "call", "reminder_s": self.settings.call_reminder_s}
        a = _Alert(
            alert_id,
            "call",
            CALL_SEVERITY,
            dev.person_id,
            device_id,
            rule,
            at,
            now,
            external=True,
            presses=1,
            drill=drill,
            last_press_at=now,
        )
        if alert_id in self._recent:  # a replay of a press already acknowledged: its message again, nothing opens
            return self._event(a, "raised", at, (), detail)
        if not drill:
            self._calls[key] = alert_id
        self._alerts[alert_id] = a
        self._schedule(a, now)
        self._n["raised"] += 1
        log.info("call request %s raised (%s)%s", alert_id, CALL_SEVERITY, " (drill)" if drill else "")
        return self._event(a, "raised", at, (), detail)

    def ack(self, alert_id: str, now: float) -> bool:
        """The care centre took the alert (``cmd/alert-ack``): no more reminders. An external alert
        (SOS) closes; a rule alert stays open until its condition clears. False: unknown id."""
        a = self._alerts.get(alert_id)
        if a is None:
            return alert_id in self._recent
        if a.acked_at is None:
            a.acked_at = now
        a.next_reminder_at = None
        if a.external:
            del self._alerts[alert_id]
            self._remember(alert_id, now)
            if a.kind == "call":
                self._calls = {k: v for k, v in self._calls.items() if v != alert_id}
        return True

    # -- views --------------------------------------------------------------------------------------

    def open_alerts(self) -> tuple[OpenAlert, ...]:
        return tuple(
            OpenAlert(
                a.alert_id,
                a.kind,
                a.severity,
                a.person_id,
                a.device_id,
                str(a.rule.get("id", a.kind)),
                a.started_at,
                a.raised_at,
                a.escalated,
                a.acked_at,
                a.reminders,
                a.external,
                a.presses,
                a.drill,
                a.last_press_at,
            )
            for a in self._alerts.values()
        )

    def alert_state(self, alert_id: str) -> dict[str, Any] | None:
        """One open alert as :meth:`snapshot` writes it (None: not open), for a store that saves
        alerts one by one instead of the whole snapshot."""
        a = self._alerts.get(alert_id)
        return None if a is None else a.to_dict()

    def recent_at(self, alert_id: str) -> float | None:
        """When a closed or acknowledged alert was remembered (None: not among the recent ones)."""
        return self._recent.get(alert_id)

    def counters(self) -> EngineCounters:
        return EngineCounters(open=len(self._alerts), **self._n)

    # -- persistence --------------------------------------------------------------------------------

    def snapshot(self, *, alerts: bool = True) -> dict[str, Any]:
        """JSON-able state: open alerts, acknowledgements, rule evaluation, device watch and the
        cloud's rule overrides. Save it on every event (and on stop); :meth:`restore` reads it.
        ``alerts=False`` leaves ``alerts`` and ``recent`` empty, for a store that keeps them per alert
        (:meth:`alert_state`, :meth:`recent_at`) and puts them back before :meth:`restore`."""
        return {
            "version": SNAPSHOT_VERSION,
            "overrides": {p: [r.to_dict() for r in rules] for p, rules in self._overrides.items()},
            "alerts": [a.to_dict() for a in self._alerts.values()] if alerts else [],
            "recent": [[k, v] for k, v in self._recent.items()] if alerts else [],
            "watch": [[kind, dev, aid] for (kind, dev), aid in self._watch.items()],
            "states": [
                {"person_id": p, "rule": r, "device_id": d, "spec": self._spec_of(p, r), "state": st.to_dict()}
                for (p, r, d), st in self._states.items()
            ],
            "devices": [d.to_dict() for d in self._devices.values()],
            "uplink_down_since": self._uplink_down_since,
            "outbox_fill": self._outbox_fill,
            "queued": [e.to_dict() for e in self._queued],
        }

    def _spec_of(self, person_id: str, rule_id: str) -> dict[str, Any] | None:
        for r in self.rules_for(person_id):
            if r.id == rule_id:
                return r.to_dict()
        return None

    def restore(self, data: Mapping[str, Any], now: float) -> None:
        """Load a :meth:`snapshot` into a fresh engine (built with the same config).

        Open alerts stay open with their ids, acknowledgements and reminders. Rule states whose rule
        changed in the meantime (new config) keep their open alert and start a fresh evaluation. The
        daemon's own downtime does not count as a device's silence (nobody knows what happened then):
        "no data" counts again from ``now``. A damaged item (an alert, a person's rules, a rule's state)
        is left out with a WARNING and the rest restored. Raises :class:`SnapshotError`, changing
        nothing, when the snapshot as a whole is not one (its version, a list missing)."""
        try:
            r = self._parse_snapshot(data, now)
        except SnapshotError:
            raise
        except _SNAPSHOT_ITEM_ERRORS as exc:
            raise SnapshotError(f"rules snapshot is damaged: {type(exc).__name__}: {exc}") from exc
        self._overrides = r.overrides
        self._index.clear()
        self._alerts = r.alerts
        self._reminders = [(a.next_reminder_at, aid) for aid, a in r.alerts.items() if a.next_reminder_at is not None]
        heapq.heapify(self._reminders)
        self._recent = r.recent
        self._watch = r.watch
        self._calls = {
            self._call_key(a.person_id or self.default_person, a.device_id or ""): aid
            for aid, a in sorted(r.alerts.items(), key=lambda kv: kv[1].raised_at)
            if a.kind == "call" and not a.drill and a.device_id is not None
        }
        self._states = r.states
        self._queued.extend(r.queued)
        self._uplink_down_since = r.uplink_down_since
        self._outbox_fill = r.outbox_fill
        for d in r.devices.values():
            known = self._devices.get(d.id)
            if known is not None:  # registered by the config already: the config says whose and how
                if known.person_id != d.person_id:
                    self._drop_device_rules(d, now, "device_moved")
                d.person_id, d.worn, d.watch_link = known.person_id, known.worn, known.watch_link
            self._devices[d.id] = d

    def _parse_snapshot(self, data: Mapping[str, Any], now: float) -> _Restored:
        if not isinstance(data, Mapping) or data.get("version") != SNAPSHOT_VERSION:
            version = data.get("version") if isinstance(data, Mapping) else None
            raise SnapshotError(f"rules snapshot: unknown version {version!r}")
        # Item by item: one damaged item (a person's rules that no longer validate, such as a kind
        # reserved since they were saved; one alert) is left out with a WARNING, and the rest of the
        # state, open SOS alerts among it, is restored
        overrides = dict(
            _each(
                data["overrides"].items(),
                lambda kv: (str(kv[0]), rules_from_list([rule_from_dict(r) for r in kv[1]], bases=DEFAULTS_BY_ID)),
                "a person's rules",
            )
        )
        alerts = {a.alert_id: a for a in _each(data["alerts"], _Alert.from_dict, "an alert")}
        recent: OrderedDict[str, float] = OrderedDict(
            _each(data["recent"], lambda kv: (str(kv[0]), float(kv[1])), "a recent alert")
        )
        watch = {
            k: aid
            for k, aid in _each(
                data["watch"], lambda w: ((str(w[0]), None if w[1] is None else str(w[1])), str(w[2])), "a watch"
            )
            if aid in alerts
        }
        queued = list(_each(data["queued"], AlertEvent.from_dict, "a queued event"))

        def rules_of(p: str) -> dict[str, RuleSpec]:
            rules = overrides[p] if p in overrides else self._config_rules.get(p, self._default_rules)
            return {r.id: r for r in rules}

        def state_of(s: Any) -> tuple[tuple[str, str, str], _RuleState] | None:
            p, rid, dev_id = str(s["person_id"]), str(s["rule"]), str(s["device_id"])
            rule = rules_of(p).get(rid)
            aid = s["state"]["alert_id"]
            if rule is None or not rule.applies_to(dev_id):
                if aid in alerts:  # the rule is gone (new config): its alert clears on the next tick
                    queued.append(self._event(alerts.pop(aid), "cleared", now, (), {"reason": "rule_removed"}))
                    recent[aid] = now
                return None
            if rule.to_dict() == s["spec"]:
                st = _RuleState.from_dict(rule, s["state"])
            else:  # the rule changed: its open alert stays open and clears by the new rule
                st = _RuleState.new(rule)
                st.alert_id = None if aid is None else str(aid)
            if st.alert_id is not None and st.alert_id not in alerts:
                st.alert_id = None
            return (p, rid, dev_id), st

        states = dict(kv for kv in _each(data["states"], state_of, "a rule's state") if kv is not None)

        def device_of(d: Any) -> _Device:
            dev = _Device(
                id=str(d["id"]),
                person_id=str(d["person_id"]),
                worn=bool(d["worn"]),
                watch_link=bool(d["watch_link"]),
                last_data_at=float(d["last_data_at"]),
                link_down_since=_opt(d["link_down_since"]),
                contact_off_since=_opt(d["contact_off_since"]),
                low_quality_since=_opt(d["low_quality_since"]),
                battery_percent=None if d["battery_percent"] is None else int(d["battery_percent"]),
            )
            if ("no_data", dev.id) not in watch:
                dev.last_data_at = max(dev.last_data_at, now)
            return dev

        devices = {dev.id: dev for dev in _each(data["devices"], device_of, "a device")}
        return _Restored(
            overrides,
            alerts,
            recent,
            watch,
            states,
            devices,
            queued,
            _opt(data["uplink_down_since"]),
            float(data["outbox_fill"]),
        )


@dataclass(slots=True)
class _Restored:
    overrides: dict[str, tuple[RuleSpec, ...]]
    alerts: dict[str, _Alert]
    recent: OrderedDict[str, float]
    watch: dict[tuple[str, str | None], str]
    states: dict[tuple[str, str, str], _RuleState]
    devices: dict[str, _Device]
    queued: list[AlertEvent]
    uplink_down_since: float | None
    outbox_fill: float


_T = TypeVar("_T")
# OverflowError: a stored integer too large for a float (float(10**400)), damage like any other
_SNAPSHOT_ITEM_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError, RuleSpecError)


def _each(items: Iterable[Any], parse: Callable[[Any], _T], what: str) -> Iterator[_T]:
    """``parse`` of each item of a snapshot's list; an item it cannot parse is left out with a WARNING."""
    for item in items:
        try:
            yield parse(item)
        except _SNAPSHOT_ITEM_ERRORS as exc:  # its text may quote a stored value: at DEBUG only
            log.warning("care rules: %s in the saved state is damaged, left out (%s)", what, type(exc).__name__)
            log.debug("care rules: %s left out: %s", what, exc)


def _opt(x: Any) -> float | None:
    return None if x is None else float(x)


def _int(x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError("a window's sum or count is not an integer")
    return x


def _number(x: Any) -> float:
    """A finite number of a snapshot (a value or a capture time)."""
    v = float(x)  # an integer beyond a float's range: OverflowError, a damaged item like any other
    if not math.isfinite(v):
        raise ValueError("not a finite number")
    return v


def _score(op: str, v: float, th: float | None) -> float:
    """How far beyond its threshold a value lies (larger is worse)."""
    if th is None:
        return 0.0
    return th - v if op in ("<", "<=") else v - th


__all__ = [
    "AlertEvent",
    "EngineCounters",
    "EventState",
    "OpenAlert",
    "ReadingRef",
    "RuleEngine",
    "SnapshotError",
]
