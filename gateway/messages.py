"""Readings -> uplink messages of the cloud contract (docs/mqtt-contract.md).

Pure functions: no I/O. Each message body is a JSON object with the contract's common fields except
``seq``, ``historical``, ``clock`` and ``stream``, which the uplink adds when it sends (see
:func:`gateway.outbox.wire_payload`); a body whose times the outbox corrected is rewritten by
:func:`corrected_body` first (``msg_id`` never changes: it is the identity given at commit).

``msg_id`` is deterministic: a UUIDv5 of the gateway id, the message type, the device and the reading's
own identity (capture time, code, the device's record number or press id), so a retry, a replay after
a crash, or the same cuff record fetched twice carries the same ``msg_id`` and the cloud drops the
duplicate.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from drivers.base import ButtonPress, DeviceStatus, Measurement, Waveform
from gateway.outbox import Lane, NewMessage, StoredMessage, TimeCorrection
from gateway.rules.engine import AlertEvent
from gateway.rules.spec import CALL_SEVERITY

MSG_NAMESPACE = uuid.UUID("6f1c8f0e-4a52-5b7e-9d3c-2a8e5b0c1d47")

# Alert severities, highest first. SOS is the only "critical" one.
SEVERITIES = ("critical", "high", "medium", "low", "info")


def rfc3339_ms(t: float) -> str:
    """POSIX seconds -> ``2026-11-24T03:04:05.123Z``."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_rfc3339(text: str) -> float:
    """``2026-11-24T03:04:05.123Z`` -> POSIX seconds."""
    return datetime.fromisoformat(text).timestamp()


def msg_id(gateway_id: str, kind: str, device_id: str, key: str) -> str:
    return str(uuid.uuid5(MSG_NAMESPACE, f"{gateway_id}|{kind}|{device_id}|{key}"))


def _dumps(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str
    gateway_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.gateway_id}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def alert(self) -> str:
        return f"{self.base}/alert"

    def obs(self, device_id: str) -> str:
        return f"{self.base}/obs/{device_id}"

    def device_state(self, device_id: str) -> str:
        return f"{self.base}/device/{device_id}/state"

    def bulk(self, device_id: str) -> str:
        return f"{self.base}/bulk/{device_id}"

    @property
    def time_correction(self) -> str:
        return f"{self.base}/time-correction"

    @property
    def cmd(self) -> str:
        return f"{self.base}/cmd/#"


def _common(gateway_id: str, kind: str, device_id: str, captured_at: float, key: str) -> dict[str, Any]:
    return {
        "msg_id": msg_id(gateway_id, kind, device_id, key),
        "gateway_id": gateway_id,
        "device_id": device_id,
        "type": kind,
        "captured_at": rfc3339_ms(captured_at),
    }


def observation(topics: Topics, m: Measurement) -> NewMessage:
    key = f"{m.code}|{round(m.captured_at * 1000)}|{m.method}|{m.source_id or ''}"
    body = _common(topics.gateway_id, "observation", m.device_id, m.captured_at, key)
    body.update(code=m.code, value=m.value, unit=m.unit, quality=m.quality, method=m.method)
    if m.extra:
        body["extra"] = dict(m.extra)
    # A stored record's time is the device's own clock: the gateway never corrects it.
    stored = m.extra.get("stored") is True
    return NewMessage(
        Lane.OBSERVATION, topics.obs(m.device_id), _dumps(body), m.device_id, m.captured_at, device_clock=stored
    )


SOS_PREFIX = "sos-"
CALL_PREFIX = "call-"


def sos_alert_id(press: ButtonPress) -> str:
    """The id the care centre acknowledges (``cmd/alert-ack``)."""
    return f"{SOS_PREFIX}{press.device_id}-{press.press_id}"


def call_alert_id(press: ButtonPress) -> str:
    """The id a call request opened by this press gets (a later press of an open request keeps the
    request's id: gateway/rules, ``RuleEngine.call_press``)."""
    return f"{CALL_PREFIX}{press.device_id}-{press.press_id}"


def press_role_of(alert_id: str) -> str | None:
    """``sos`` or ``call`` for the alert id of a button press, None for any other alert."""
    if alert_id.startswith(SOS_PREFIX):
        return "sos"
    if alert_id.startswith(CALL_PREFIX):
        return "call"
    return None


def sos_alert(topics: Topics, press: ButtonPress, *, drill: bool) -> NewMessage:
    body = _common(topics.gateway_id, "alert", press.device_id, press.captured_at, f"sos|{press.press_id}")
    body.update(
        kind="sos",
        severity="critical",
        state="raised",
        drill=drill,
        press_id=press.press_id,
        alert_id=sos_alert_id(press),
    )
    if press.pattern is not None:
        body["pattern"] = press.pattern
    if press.extra:
        body["extra"] = dict(press.extra)
    return NewMessage(Lane.ALERT, topics.alert, _dumps(body), press.device_id, press.captured_at)


def care_alert(topics: Topics, ev: AlertEvent) -> NewMessage:
    """One transition (raised, escalated, cleared) of a care-rule or watch alert (gateway/rules).
    ``captured_at`` is when the transition happened (capture time of the reading that completed the
    hold, or the watch's clock), ``started_at`` when the condition began. Gateway alerts
    (``outbox_full``, ``uplink_down``) carry the gateway id as ``device_id``."""
    body = _care_body(topics, ev)
    return NewMessage(Lane.ALERT, topics.alert, _dumps(body), body["device_id"], ev.at)


def call_alert(topics: Topics, press: ButtonPress, *, drill: bool, ev: AlertEvent | None = None) -> NewMessage:
    """A press of a ``call`` button: the call request's event ``ev`` from the rule engine (``raised``
    with ``presses`` 1, or again with a higher count while the request is open), or, without one (the
    care desk failed), a request of this press alone, so a press is never lost. ``captured_at`` is
    this press, ``started_at`` the request's first press, ``press_id`` this press."""
    if ev is None:
        ev = AlertEvent(
            call_alert_id(press),
            "raised",
            "call",
            CALL_SEVERITY,
            None,
            press.device_id,
            {"id": "call", "kind": "call"},
            press.captured_at,
            press.captured_at,
            detail={"press_id": press.press_id},
            presses=1,
            drill=drill,
        )
    body = _care_body(topics, ev)
    body["press_id"] = press.press_id
    detail = body.get("detail")
    if isinstance(detail, dict):
        detail.pop("press_id", None)  # the message's own press_id says it
        if not detail:
            del body["detail"]
    if press.pattern is not None:
        body["pattern"] = press.pattern
    if press.extra:
        body["extra"] = dict(press.extra)
    return NewMessage(Lane.ALERT, topics.alert, _dumps(body), body["device_id"], ev.at)


def _care_body(topics: Topics, ev: AlertEvent) -> dict[str, Any]:
    if ev.state == "reminder":
        raise ValueError("reminders are local, not contract messages")
    device = ev.device_id or topics.gateway_id
    body = _common(topics.gateway_id, "alert", device, ev.at, ev.key)
    body.update(
        kind=ev.kind,
        severity=ev.severity,
        state=ev.state,
        drill=ev.drill,
        alert_id=ev.alert_id,
        started_at=rfc3339_ms(ev.started_at),
        rule=dict(ev.rule),
        readings=[{**r.to_dict(), "captured_at": rfc3339_ms(r.captured_at)} for r in ev.readings],
    )
    if ev.person_id is not None:
        body["person_id"] = ev.person_id
    if ev.presses:
        body["presses"] = ev.presses
    if ev.detail:
        body["detail"] = dict(ev.detail)
    return body


def device_state(topics: Topics, s: DeviceStatus) -> NewMessage:
    key = f"{s.state.value}|{round(s.captured_at * 1000)}"
    body = _common(topics.gateway_id, "device_state", s.device_id, s.captured_at, key)
    body.update(state=s.state.value, reason=s.reason)
    if s.battery_percent is not None:
        body["battery_percent"] = s.battery_percent
    if s.rssi_dbm is not None:
        body["rssi_dbm"] = s.rssi_dbm
    if s.counters:
        body["counters"] = dict(s.counters)
    return NewMessage(
        Lane.STATE, topics.device_state(s.device_id), _dumps(body), s.device_id, s.captured_at, retain=True
    )


def waveform(topics: Topics, w: Waveform) -> NewMessage:
    key = f"{w.first_index}|{round(w.captured_at * 1000)}"
    body = _common(topics.gateway_id, "waveform", w.device_id, w.captured_at, key)
    body.update(fs=w.fs, first_index=w.first_index, channels={k: list(v) for k, v in w.channels.items()})
    return NewMessage(Lane.BULK, topics.bulk(w.device_id), _dumps(body), w.device_id, w.captured_at)


def time_correction(topics: Topics, tc: TimeCorrection, at: float) -> NewMessage:
    """Messages of one boot that were sent before the clock could be trusted: add ``offset_s`` to
    their times (docs/mqtt-contract.md, "time-correction")."""
    key = f"{tc.boot_id}|{tc.first_seq}|{tc.last_seq}|{round(tc.offset_s * 1000)}"
    body = _common(topics.gateway_id, "time_correction", topics.gateway_id, at, key)
    body.update(boot_id=tc.boot_id, offset_s=tc.offset_s, first_seq=tc.first_seq, last_seq=tc.last_seq, count=tc.count)
    return NewMessage(Lane.STATE, topics.time_correction, _dumps(body), topics.gateway_id, at)


def corrected_body(msg: StoredMessage) -> bytes:
    """The stored body with its times moved by ``msg.shift``: ``captured_at``, and ``started_at`` and
    the readings' times of an alert when they fall in the same boot (at or after its start on the clock
    the message was captured with; earlier ones were stamped by another boot's clock)."""
    if msg.shift == 0.0:
        return msg.body
    doc = json.loads(msg.body)
    if not isinstance(doc, dict):
        raise ValueError("the stored body is not a JSON object")
    doc["captured_at"] = rfc3339_ms(msg.captured_at)
    boot_start = msg.captured_at - msg.shift - (msg.boot_s or 0.0)

    def move(text: str) -> str:
        t = parse_rfc3339(text)
        return rfc3339_ms(t + msg.shift) if t >= boot_start else text

    if isinstance(doc.get("started_at"), str):
        doc["started_at"] = move(doc["started_at"])
    for r in doc.get("readings", ()):
        if isinstance(r, dict) and isinstance(r.get("captured_at"), str):
            r["captured_at"] = move(r["captured_at"])
    return _dumps(doc)
