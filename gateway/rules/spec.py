"""Typed care-rule specs and watch settings, validated in one place.

A :class:`RuleSpec` is frozen and checked in ``__post_init__``, so a spec that exists is a valid one,
whether it was built in code, read from the config or sent by the cloud (:func:`rule_from_dict`).
Every mistake raises :class:`RuleSpecError` naming the rule, the field and what was expected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import time
from typing import Any, Literal, TypeAlias, cast, get_args

from gateway.errors import CommandRejected

Severity: TypeAlias = Literal["critical", "high", "medium", "low", "info"]
# Highest first; the same order as gateway.messages.SEVERITIES (the contract's alert severities).
SEVERITIES: tuple[Severity, ...] = ("critical", "high", "medium", "low", "info")
_RANK: dict[str, int] = {s: len(SEVERITIES) - i for i, s in enumerate(SEVERITIES)}

Op: TypeAlias = Literal["<", "<=", ">", ">=", "flag"]
OPS: tuple[Op, ...] = get_args(Op)

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
CODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._-]{0,63}$")
FLAG_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_DURATION_S = 7 * 86400.0

# Kinds the engine raises itself (device, person and gateway watch) or the daemon raises (sos):
# a care rule may not take them, so an alert's kind always says who raised it.
WATCH_KINDS = (
    "no_data",
    "not_worn",
    "battery_low",
    "device_disconnected",
    "outbox_full",
    "uplink_down",
)
RESERVED_KINDS = ("sos", "call", *WATCH_KINDS)
# A press of a ``call`` button (the "health butler": staff phone back for an everyday need) is an
# alert of this severity: never critical (that is SOS), never behind the reminder cadence of SOS.
CALL_SEVERITY: Severity = "medium"


def severity_rank(s: Severity) -> int:
    """``info`` = 1 ... ``critical`` = 5: larger is more severe."""
    return _RANK[s]


class RuleSpecError(CommandRejected):
    """A rule spec or a watch setting that cannot be used. ``code`` is ``"invalid"`` so that the
    downlink's ``rules-update`` handler replies with it as is; config loading wraps it in a
    :class:`~gateway.errors.ConfigError`.

    ``rule`` is the rule's id (or its index in the list when it has none), ``field`` the offending
    key, ``reason`` one line saying what was expected."""

    def __init__(self, rule: str | None, field_name: str | None, reason: str) -> None:
        where = " ".join(p for p in (f"rule {rule}" if rule else "", f"field {field_name}" if field_name else "") if p)
        super().__init__("invalid", f"{where}: {reason}" if where else reason)
        self.rule = rule
        self.field = field_name


def _finite(rule: str | None, name: str, value: object, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RuleSpecError(rule, name, f"{value!r} is not a number")
    try:
        v = float(value)
    except OverflowError:  # an integer beyond a float's range (JSON allows 10**400): the sender's mistake
        raise RuleSpecError(rule, name, f"{_shown(value)} is too large for a number") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise RuleSpecError(rule, name, f"{_shown(value)} is not a number in {lo:g}..{hi:g}")
    return v


def _shown(value: int | float) -> str:
    """The value for an error message: a huge integer by its size, not its hundreds of digits (which
    ``repr`` refuses past 4300 anyway)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    return repr(value)


def _severity(rule: str | None, name: str, value: object, *, allow_critical: bool = False) -> Severity:
    if value not in SEVERITIES:
        raise RuleSpecError(rule, name, f"{value!r} is not one of {', '.join(SEVERITIES)}")
    if value == "critical" and not allow_critical:
        raise RuleSpecError(rule, name, "'critical' is reserved for SOS presses")
    return value


@dataclass(frozen=True, slots=True)
class Condition:
    """One test on one quantity. A rule holds when any of its conditions holds.

    ``op`` compares the reading's value with ``threshold`` (``value < threshold`` is abnormal for
    ``"<"``); ``"flag"`` is abnormal when ``Measurement.extra[flag] is True`` (no threshold).
    ``severe_threshold`` (same direction, further out) escalates an open alert. ``hysteresis`` (in
    the quantity's unit) is how far back inside the threshold a value must come to count as
    recovered: for ``"<" 90`` with hysteresis 2, a value of 91 is neither abnormal nor recovered.
    """

    code: str
    op: Op
    threshold: float | None = None
    severe_threshold: float | None = None
    hysteresis: float = 0.0
    flag: str | None = None

    def check(self, rule: str | None) -> None:
        if not isinstance(self.code, str) or not CODE_RE.fullmatch(self.code):
            raise RuleSpecError(rule, "code", f"{self.code!r} is not a LOINC or homecare: code")
        if self.op not in OPS:
            raise RuleSpecError(rule, "op", f"{self.op!r} is not one of {' '.join(OPS)}")
        _finite(rule, "hysteresis", self.hysteresis, 0.0)
        if self.op == "flag":
            if not isinstance(self.flag, str) or not FLAG_RE.fullmatch(self.flag):
                raise RuleSpecError(rule, "flag", f"{self.flag!r}: op 'flag' needs the name of a boolean extra")
            if self.threshold is not None or self.severe_threshold is not None:
                raise RuleSpecError(rule, "threshold", "op 'flag' takes no threshold")
            return
        if self.flag is not None:
            raise RuleSpecError(rule, "flag", f"only op 'flag' takes a flag (op is {self.op!r})")
        if self.threshold is None:
            raise RuleSpecError(rule, "threshold", f"op {self.op!r} needs a threshold")
        _finite(rule, "threshold", self.threshold)
        if self.severe_threshold is not None:
            _finite(rule, "severe_threshold", self.severe_threshold)
            low = self.op in ("<", "<=")
            if (self.severe_threshold >= self.threshold) if low else (self.severe_threshold <= self.threshold):
                side = "below" if low else "above"
                raise RuleSpecError(
                    rule,
                    "severe_threshold",
                    f"{self.severe_threshold:g} must lie {side} the threshold {self.threshold:g} for op {self.op!r}",
                )

    # -- evaluation (hot path: plain comparisons) --------------------------------------------------

    def abnormal(self, v: float) -> bool:
        return _cmp(self.op, v, cast(float, self.threshold))

    def severe(self, v: float) -> bool:
        return self.severe_threshold is not None and _cmp(self.op, v, self.severe_threshold)

    def recovered(self, v: float) -> bool:
        """Back inside the threshold by the hysteresis."""
        th = cast(float, self.threshold)
        return not _cmp(self.op, v, th + self.hysteresis if self.op in ("<", "<=") else th - self.hysteresis)


def _cmp(op: str, v: float, th: float) -> bool:
    if op == "<":
        return v < th
    if op == "<=":
        return v <= th
    if op == ">":
        return v > th
    return v >= th


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """A care rule for one person.

    - ``conditions``: any of them abnormal makes the rule abnormal; the rule is recovered when every
      condition's latest usable reading is recovered.
    - ``hold_s``: the rule must stay abnormal this long (capture time, usable readings only) before
      it raises; 0 raises on one reading (spot measurements such as a cuff's).
    - ``clear_hold_s``: it must stay recovered this long before the alert clears.
    - ``max_gap_s``: usable readings further apart than this restart both holds (a stream that
      stops cannot "hold" a condition through the silence); ``None`` for spot readings.
    - ``window_s``: compare the mean of the usable values of the last ``window_s`` seconds instead of
      each value (AF burden over an hour); the rule is evaluated once the stream covers a window.
      Values up to ``window_s / 120`` older may still count (the window's buckets: docs/rules.md).
    - ``min_quality``: readings whose ``quality`` is below it are not usable: they never raise,
      escalate or clear on their own. ``quality=None`` (the device gives none) is usable.
    - ``rest_only``: readings with ``extra["at_rest"] is False`` are not usable.
    - ``severity`` when raised; ``severe_severity`` once a ``severe_threshold`` has held ``hold_s``
      (an escalation, at most once per alert).
    - ``devices``: the person's devices it applies to (empty: all of them).
    """

    id: str
    kind: str
    conditions: tuple[Condition, ...]
    severity: Severity
    severe_severity: Severity | None = None
    hold_s: float = 0.0
    clear_hold_s: float = 0.0
    max_gap_s: float | None = None
    window_s: float | None = None
    min_quality: float = 0.0
    rest_only: bool = False
    devices: tuple[str, ...] = ()
    description: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        rid = self.id if isinstance(self.id, str) else None
        if not isinstance(self.id, str) or not ID_RE.fullmatch(self.id):
            raise RuleSpecError(None, "id", f"{self.id!r} is not an id ({ID_RE.pattern})")
        if not isinstance(self.kind, str) or not KIND_RE.fullmatch(self.kind):
            raise RuleSpecError(rid, "kind", f"{self.kind!r} is not a kind ({KIND_RE.pattern})")
        if self.kind in RESERVED_KINDS:
            raise RuleSpecError(rid, "kind", f"{self.kind!r} is reserved for the gateway's own alerts")
        if not isinstance(self.conditions, tuple) or not 1 <= len(self.conditions) <= 8:
            raise RuleSpecError(rid, "conditions", "expected 1 to 8 conditions")
        for c in self.conditions:
            if not isinstance(c, Condition):
                raise RuleSpecError(rid, "conditions", f"{c!r} is not a Condition")
            c.check(rid)
        codes = [c.code for c in self.conditions]
        if len(set(codes)) != len(codes):
            raise RuleSpecError(rid, "conditions", "one condition per code")
        _severity(rid, "severity", self.severity)
        has_severe = any(c.severe_threshold is not None for c in self.conditions)
        if self.severe_severity is not None:
            _severity(rid, "severe_severity", self.severe_severity)
            if not has_severe:
                raise RuleSpecError(rid, "severe_severity", "set without any severe_threshold")
            if severity_rank(self.severe_severity) <= severity_rank(self.severity):
                raise RuleSpecError(rid, "severe_severity", f"must be above the severity {self.severity!r}")
        elif has_severe:
            raise RuleSpecError(rid, "severe_severity", "a severe_threshold needs a severe_severity")
        _finite(rid, "hold_s", self.hold_s, 0.0, MAX_DURATION_S)
        _finite(rid, "clear_hold_s", self.clear_hold_s, 0.0, MAX_DURATION_S)
        if self.max_gap_s is not None:
            _finite(rid, "max_gap_s", self.max_gap_s, 0.001, MAX_DURATION_S)
        if self.window_s is not None:
            _finite(rid, "window_s", self.window_s, 1.0, MAX_DURATION_S)
            if any(c.op == "flag" for c in self.conditions):
                raise RuleSpecError(rid, "window_s", "a windowed mean needs numeric conditions, not a flag")
        _finite(rid, "min_quality", self.min_quality, 0.0, 1.0)
        if not isinstance(self.rest_only, bool):
            raise RuleSpecError(rid, "rest_only", f"{self.rest_only!r} is not true/false")
        if not isinstance(self.devices, tuple) or not all(isinstance(d, str) and d for d in self.devices):
            raise RuleSpecError(rid, "devices", "expected a list of device ids")
        for name in ("description", "source"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > 1000:
                raise RuleSpecError(rid, name, "expected text of at most 1000 characters")

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(c.code for c in self.conditions)

    def applies_to(self, device_id: str) -> bool:
        return not self.devices or device_id in self.devices

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON form (what :func:`rule_from_dict` reads back, and the alert's ``rule``)."""
        out: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "conditions": [_condition_dict(c) for c in self.conditions],
            "severity": self.severity,
            "hold_s": self.hold_s,
            "clear_hold_s": self.clear_hold_s,
            "min_quality": self.min_quality,
        }
        if self.severe_severity is not None:
            out["severe_severity"] = self.severe_severity
        if self.max_gap_s is not None:
            out["max_gap_s"] = self.max_gap_s
        if self.window_s is not None:
            out["window_s"] = self.window_s
        if self.rest_only:
            out["rest_only"] = True
        if self.devices:
            out["devices"] = list(self.devices)
        if self.description:
            out["description"] = self.description
        if self.source:
            out["source"] = self.source
        return out


def _condition_dict(c: Condition) -> dict[str, Any]:
    d: dict[str, Any] = {"code": c.code, "op": c.op}
    if c.flag is not None:
        d["flag"] = c.flag
    if c.threshold is not None:
        d["threshold"] = c.threshold
    if c.severe_threshold is not None:
        d["severe_threshold"] = c.severe_threshold
    if c.hysteresis:
        d["hysteresis"] = c.hysteresis
    return d


# --------------------------------------------------------------------------------------------------
# Reading specs from JSON (config, cloud)

_CONDITION_KEYS = frozenset(("code", "op", "threshold", "severe_threshold", "hysteresis", "flag"))
_RULE_KEYS = frozenset(f.name for f in fields(RuleSpec)) | _CONDITION_KEYS | {"base"}


def _condition_from(rule: str | None, d: object) -> Condition:
    if not isinstance(d, Mapping):
        raise RuleSpecError(rule, "conditions", f"{d!r} is not an object")
    unknown = sorted(set(d) - _CONDITION_KEYS)
    if unknown:
        raise RuleSpecError(rule, unknown[0], f"unknown condition key (known: {', '.join(sorted(_CONDITION_KEYS))})")
    if "code" not in d or "op" not in d:
        raise RuleSpecError(rule, "code" if "code" not in d else "op", "missing")
    threshold = d.get("threshold")
    severe = d.get("severe_threshold")
    return Condition(
        code=d["code"],
        op=d["op"],
        threshold=None if threshold is None else _finite(rule, "threshold", threshold),
        severe_threshold=None if severe is None else _finite(rule, "severe_threshold", severe),
        hysteresis=_finite(rule, "hysteresis", d.get("hysteresis", 0.0), 0.0),
        flag=d.get("flag"),
    )


def rule_from_dict(
    d: Mapping[str, Any], *, bases: Mapping[str, RuleSpec] | None = None, index: int | None = None
) -> RuleSpec:
    """A rule from its JSON form.

    Conditions come either as ``"conditions": [{"code", "op", "threshold", ...}, ...]`` or, for one
    condition, as top-level ``code``/``op``/``threshold``/``severe_threshold``/``hysteresis``/``flag``.
    ``"base": "<id>"`` starts from that rule of ``bases`` (the defaults) and changes only the keys
    given, e.g. ``{"id": "spo2-low", "base": "spo2-low", "threshold": 88, "severe_threshold": 84}``
    for a person whose usual saturation is low (COPD). Unknown keys are errors, never ignored.
    """
    label = d.get("id") if isinstance(d, Mapping) and isinstance(d.get("id"), str) else None
    label = label or (f"#{index}" if index is not None else None)
    if not isinstance(d, Mapping):
        raise RuleSpecError(label, None, f"{d!r} is not an object")
    unknown = sorted(set(d) - _RULE_KEYS)
    if unknown:
        raise RuleSpecError(label, unknown[0], "unknown key")
    merged: dict[str, Any] = {}
    if "base" in d:
        base_id = d["base"]
        base = (bases or {}).get(base_id) if isinstance(base_id, str) else None
        if base is None:
            known = ", ".join(sorted(bases or {}))
            raise RuleSpecError(label, "base", f"{base_id!r} is not a default rule (known: {known})")
        merged = base.to_dict()
        top = {k: d[k] for k in _CONDITION_KEYS if k in d}
        if top:
            if len(base.conditions) != 1 or "conditions" in d:
                raise RuleSpecError(label, next(iter(top)), "set conditions as a list for a rule with several")
            merged["conditions"] = [{**merged["conditions"][0], **top}]
    merged.update({k: v for k, v in d.items() if k not in _CONDITION_KEYS and k != "base"})
    if "base" not in d:
        top = {k: d[k] for k in _CONDITION_KEYS if k in d}
        if top and "conditions" in d:
            raise RuleSpecError(label, next(iter(top)), "give either conditions or a top-level condition")
        if top:
            merged["conditions"] = [top]
    for key in ("id", "kind", "severity"):
        if key not in merged:
            raise RuleSpecError(label, key, "missing")
    conds = merged.get("conditions")
    if not isinstance(conds, list) or not conds:
        raise RuleSpecError(label, "conditions", "missing: give conditions or code/op/threshold")
    devices = merged.get("devices", [])
    if not isinstance(devices, list):
        raise RuleSpecError(label, "devices", f"{devices!r} is not a list")
    kwargs: dict[str, Any] = {
        "id": merged["id"],
        "kind": merged["kind"],
        "conditions": tuple(_condition_from(label, c) for c in conds),
        "severity": merged["severity"],
        "severe_severity": merged.get("severe_severity"),
        "devices": tuple(devices),
    }
    for name in ("hold_s", "clear_hold_s", "min_quality"):
        if name in merged:
            kwargs[name] = _finite(label, name, merged[name])
    for name in ("max_gap_s", "window_s"):
        if merged.get(name) is not None:
            kwargs[name] = _finite(label, name, merged[name])
    for name in ("rest_only", "description", "source"):
        if name in merged:
            kwargs[name] = merged[name]
    return RuleSpec(**kwargs)


def rules_from_list(
    items: Sequence[Mapping[str, Any] | RuleSpec], *, bases: Mapping[str, RuleSpec]
) -> tuple[RuleSpec, ...]:
    """Validate a whole rule set: every spec valid and ids unique, or :class:`RuleSpecError`."""
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes)):
        raise RuleSpecError(None, "rules", "expected a list of rules")
    if len(items) > 64:
        raise RuleSpecError(None, "rules", f"{len(items)} rules: at most 64 per person")
    out: list[RuleSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        spec = item if isinstance(item, RuleSpec) else rule_from_dict(item, bases=bases, index=i)
        if spec.id in seen:
            raise RuleSpecError(spec.id, "id", "appears twice")
        seen.add(spec.id)
        out.append(spec)
    return tuple(out)


# --------------------------------------------------------------------------------------------------
# Device, person and gateway watch


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """Thresholds of the gateway's own alerts. Times are seconds; percentages 0..100; fractions 0..1.

    ``day_start``/``day_end`` are local times (``timezone``: an IANA name, ``None`` = the system's
    zone); a window with ``day_start > day_end`` runs over midnight.
    """

    timezone: str | None = None
    day_start: time = time(7, 0)
    day_end: time = time(22, 0)
    # no data from a worn device: daytime seconds of silence (night hours do not count) ...
    no_data_day_s: float = 2 * 3600.0
    # ... and, when set, any silence this long whatever the hour (None: nights never alert alone)
    no_data_total_s: float | None = None
    no_data_severity: Severity = "medium"
    # wristband not worn: contact flag False, or every reading below this quality, for this long
    not_worn_s: float = 600.0
    not_worn_quality: float = 0.3
    not_worn_severity: Severity = "low"
    # battery: raise at or below low, escalate at or below critical, clear at or above clear
    battery_low_percent: int = 20
    battery_critical_percent: int = 5
    battery_clear_percent: int = 30
    battery_severity: Severity = "low"
    battery_critical_severity: Severity = "medium"
    # a device whose link stays disconnected / in error this long
    disconnected_s: float = 4 * 3600.0
    disconnected_severity: Severity = "low"
    # the gateway's outbox, as a fraction of its disk budget
    outbox_fill: float = 0.80
    outbox_fill_severe: float = 0.95
    outbox_fill_clear: float = 0.70
    outbox_severity: Severity = "medium"
    outbox_severe_severity: Severity = "high"
    # the uplink to the broker down this long (raised locally, delivered when the link is back)
    uplink_down_s: float = 1800.0
    uplink_severity: Severity = "medium"
    # local reminders of open, unacknowledged alerts at or above this severity
    reminder_min_severity: Severity = "high"
    reminder_interval_s: float = 300.0
    # an open, unacknowledged call request (a press of a ``call`` button) is reminded once, this long
    # after its first press (whatever reminder_min_severity says: a call is medium)
    call_reminder_s: float = 900.0
    # a call press adds to the open request only this soon after its last press; later it opens a new
    # request (new alert id, its own reminder): a storm or an impatient repeat is minutes, a second need
    # the same afternoon is not an update of the morning's, which stays open until acked
    call_coalesce_s: float = 7200.0

    def __post_init__(self) -> None:
        w = "watch"
        if self.timezone is not None:
            from gateway.rules.daytime import zone

            zone(self.timezone)  # raises RuleSpecError when unknown
        for name in ("day_start", "day_end"):
            if not isinstance(getattr(self, name), time):
                raise RuleSpecError(w, name, "expected a local time of day")
        if self.day_start == self.day_end:
            raise RuleSpecError(w, "day_end", "the day must not be empty")
        _finite(w, "no_data_day_s", self.no_data_day_s, 60.0, MAX_DURATION_S)
        if self.no_data_total_s is not None:
            _finite(w, "no_data_total_s", self.no_data_total_s, 60.0, MAX_DURATION_S)
        _finite(w, "not_worn_s", self.not_worn_s, 1.0, MAX_DURATION_S)
        _finite(w, "not_worn_quality", self.not_worn_quality, 0.0, 1.0)
        for name in ("battery_low_percent", "battery_critical_percent", "battery_clear_percent"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
                raise RuleSpecError(w, name, f"{value!r} is not a percentage 0..100")
        if not self.battery_critical_percent < self.battery_low_percent < self.battery_clear_percent:
            raise RuleSpecError(w, "battery_clear_percent", "expected critical < low < clear")
        _finite(w, "disconnected_s", self.disconnected_s, 1.0, MAX_DURATION_S)
        for name in ("outbox_fill", "outbox_fill_severe", "outbox_fill_clear"):
            _finite(w, name, getattr(self, name), 0.0, 1.0)
        if not self.outbox_fill_clear < self.outbox_fill < self.outbox_fill_severe:
            raise RuleSpecError(w, "outbox_fill", "expected outbox_fill_clear < outbox_fill < outbox_fill_severe")
        _finite(w, "uplink_down_s", self.uplink_down_s, 1.0, MAX_DURATION_S)
        _finite(w, "reminder_interval_s", self.reminder_interval_s, 1.0, MAX_DURATION_S)
        _finite(w, "call_reminder_s", self.call_reminder_s, 1.0, MAX_DURATION_S)
        _finite(w, "call_coalesce_s", self.call_coalesce_s, 1.0, MAX_DURATION_S)
        for f in fields(self):
            if f.name.endswith("severity"):
                _severity(w, f.name, getattr(self, f.name), allow_critical=f.name == "reminder_min_severity")
        if severity_rank(self.battery_critical_severity) <= severity_rank(self.battery_severity):
            raise RuleSpecError(w, "battery_critical_severity", "must be above battery_severity")
        if severity_rank(self.outbox_severe_severity) <= severity_rank(self.outbox_severity):
            raise RuleSpecError(w, "outbox_severe_severity", "must be above outbox_severity")

    def replace(self, **changes: Any) -> WatchSettings:
        return replace(self, **changes)


__all__ = [
    "CALL_SEVERITY",
    "OPS",
    "RESERVED_KINDS",
    "SEVERITIES",
    "WATCH_KINDS",
    "Condition",
    "Op",
    "RuleSpec",
    "RuleSpecError",
    "Severity",
    "WatchSettings",
    "rule_from_dict",
    "rules_from_list",
    "severity_rank",
]
