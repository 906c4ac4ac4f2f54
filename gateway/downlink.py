"""Downlink commands from the cloud: ``{prefix}/{gateway_id}/cmd/{name}`` -> ``cmd-result/{request_id}``.

Every command is treated as hostile until proven otherwise, in this order:

1. size: more than :data:`MAX_COMMAND_BYTES` is rejected (``too_large``) without parsing;
2. JSON object with a ``request_id`` matching the contract's pattern (else ``malformed``, replied on
   ``cmd-result/_invalid``);
3. rate limit: a token bucket (``rate_limited``);
4. replay: a request id seen before gets its stored reply again (``replayed: true``), never a second
   execution (idempotent by request id);
5. the command's JSON Schema from the contract (``gateway/schemas/commands``), compiled once with
   fastjsonschema (``unknown_command`` / ``invalid`` with the schema's reason);
6. age: a command whose ``sent_at`` is older than ``max_age_s`` by a synchronised clock is refused
   (``expired``), so a cloud's late retry never acts at a surprising time (a drill opened hours late);
   with the clock not synchronised the age cannot be judged and the command is taken;
7. the handler, which raises :class:`CommandRejected` with a code, a reason and the key at fault for
   what it refuses. Anything else it raises is a bug: logged at ERROR with its traceback, counted, and
   replied as ``failed``; never a crash, never a command left without a reply.

Handlers only change the gateway's own state (its registry, rules, drill window, devices); nothing here
runs a shell or touches a path the command names.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol

import fastjsonschema

from drivers.reconnect import BugLog
from gateway.errors import CommandRejected
from gateway.messages import rfc3339_ms

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 16 * 1024
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
INVALID_TOPIC_ID = "_invalid"
COMMANDS = ("status", "drill", "alert-ack", "device-add", "device-remove", "rules-update")


def parse_rfc3339(text: str) -> float:
    """``2026-11-24T03:04:05.123Z`` (or with an offset) -> POSIX seconds; ValueError otherwise."""
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return parsed.timestamp()


Handler = Callable[[Mapping[str, Any]], Awaitable[Mapping[str, Any]]]


class ReplayStore(Protocol):
    def get_reply(self, request_id: str) -> dict[str, Any] | None: ...

    def put_reply(self, request_id: str, reply: Mapping[str, Any]) -> None: ...


@dataclass
class TokenBucket:
    capacity: float
    refill_per_s: float
    tokens: float = -1.0
    last: float = 0.0

    def take(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.last = self.capacity, now
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.refill_per_s)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def load_validators() -> dict[str, Callable[[Any], Any]]:
    out = {}
    base = resources.files("gateway").joinpath("schemas", "commands")
    for name in COMMANDS:
        schema = json.loads(base.joinpath(f"{name}.json").read_text(encoding="utf-8"))
        out[name] = fastjsonschema.compile(schema)
    return out


@dataclass
class DownlinkCounters:
    received: int = 0
    executed: int = 0
    replayed: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


class Downlink:
    def __init__(
        self,
        gateway_id: str,
        handlers: Mapping[str, Handler],
        store: ReplayStore,
        *,
        clock: Callable[[], float] = time.time,
        clock_synchronised: Callable[[], bool] = lambda: False,
        max_age_s: float = 300.0,
        burst: int = 20,
        per_minute: float = 20.0,
    ) -> None:
        self.gateway_id = gateway_id
        self.handlers = dict(handlers)
        self.store = store
        self.clock = clock
        self.clock_synchronised = clock_synchronised
        self.max_age_s = max_age_s
        self.bugs = BugLog()
        self.bucket = TokenBucket(burst, per_minute / 60.0)
        self.validators = load_validators()
        self.counters = DownlinkCounters()

    def _reply(self, request_id: str, command: str, **body: Any) -> dict[str, Any]:
        return {
            "request_id": request_id,
            "command": command,
            "gateway_id": self.gateway_id,
            "at": rfc3339_ms(self.clock()),
            **body,
        }

    def _reject(
        self, request_id: str, command: str, code: str, reason: str, key: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        self.counters.rejected[code] = self.counters.rejected.get(code, 0) + 1
        log.warning("downlink: %r rejected (%s): %s", command[:40], code, reason[:200])
        error = {"code": code, "reason": reason, **({"key": key} if key else {})}
        return request_id, self._reply(request_id, command, ok=False, error=error)

    def _expired(self, args: Mapping[str, Any]) -> str | None:
        """Why the command is too old to act on, or None."""
        sent_at = args.get("sent_at")
        if sent_at is None:
            return None
        try:
            sent = parse_rfc3339(str(sent_at))
        except ValueError:
            raise CommandRejected(
                "invalid", f"sent_at = {sent_at!r}: expected an RFC 3339 time", key="sent_at"
            ) from None
        age = self.clock() - sent
        if not self.clock_synchronised():
            return None
        if age > self.max_age_s:
            return f"sent {age:.0f} s ago, more than the {self.max_age_s:g} s a command stays valid"
        if -age > self.max_age_s:
            # Never expiring otherwise: both clocks are synchronised, so this one is not a skew.
            raise CommandRejected(
                "invalid",
                f"sent_at is {-age:.0f} s ahead of the gateway's synchronised clock (more than {self.max_age_s:g} s)",
                key="sent_at",
            )
        return None

    async def handle(self, command: str, payload: bytes) -> tuple[str, dict[str, Any]]:
        """Process one command message. Returns the request id to reply to and the reply body; never
        raises (a bug anywhere in the handling is logged, counted and replied as ``failed``)."""
        self.counters.received += 1
        command = command[:64]
        try:
            return await self._handle(command, payload)
        except Exception as exc:  # noqa: BLE001 - a bug outside the handler: ERROR with traceback, counted, replied
            self.bugs.report(log, "downlink", exc, f"{command!r} failed")
            return self._reject(INVALID_TOPIC_ID, command, "failed", f"internal error: {type(exc).__name__}")

    async def _handle(self, command: str, payload: bytes) -> tuple[str, dict[str, Any]]:
        if len(payload) > MAX_COMMAND_BYTES:
            return self._reject(
                INVALID_TOPIC_ID,
                command,
                "too_large",
                f"{len(payload)} bytes is over the {MAX_COMMAND_BYTES} byte limit",
            )
        try:
            doc = json.loads(payload)
        except RecursionError:
            return self._reject(INVALID_TOPIC_ID, command, "malformed", "not JSON: nested too deeply")
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError both
            return self._reject(INVALID_TOPIC_ID, command, "malformed", f"not JSON: {exc}")
        if not isinstance(doc, dict):
            return self._reject(INVALID_TOPIC_ID, command, "malformed", "a command is a JSON object")
        request_id = doc.get("request_id")
        if not isinstance(request_id, str) or not REQUEST_ID_RE.fullmatch(request_id):
            return self._reject(
                INVALID_TOPIC_ID, command, "malformed", f"request_id must match {REQUEST_ID_RE.pattern}"
            )
        if not self.bucket.take(self.clock()):
            return self._reject(request_id, command, "rate_limited", "too many commands: retry later")
        stored = self.store.get_reply(request_id)
        if stored is not None and stored.get("command") != command:
            # Not a replay: another command under a used id. Refused, and the stored reply kept.
            return self._reject(
                request_id,
                command,
                "conflict",
                f"request_id {request_id} was used by {str(stored.get('command'))[:64]!r}: use a new one",
                key="request_id",
            )
        if stored is not None:
            self.counters.replayed += 1
            return request_id, {**stored, "replayed": True}
        validate = self.validators.get(command)
        handler = self.handlers.get(command)
        if validate is None or handler is None:
            rid, reply = self._reject(
                request_id,
                command,
                "unknown_command",
                f"unknown command {command!r}; known: {', '.join(sorted(self.handlers))}",
            )
            self.store.put_reply(request_id, reply)
            return rid, reply
        try:
            args = validate(doc)
        except fastjsonschema.JsonSchemaException as exc:
            rid, reply = self._reject(request_id, command, "invalid", str(exc))
            self.store.put_reply(request_id, reply)
            return rid, reply
        try:
            expired = self._expired(args)
            if expired is not None:
                raise CommandRejected("expired", expired, key="sent_at")
            result = await handler(args)
        except CommandRejected as exc:
            rid, reply = self._reject(request_id, command, exc.code, exc.reason, exc.key)
            self.store.put_reply(request_id, reply)
            return rid, reply
        except Exception as exc:  # noqa: BLE001 - a bug in a handler: ERROR with traceback, counted, replied
            self.bugs.report(log, "downlink", exc, f"{command} failed")
            rid, reply = self._reject(request_id, command, "failed", f"internal error: {type(exc).__name__}")
            self.store.put_reply(request_id, reply)
            return rid, reply
        self.counters.executed += 1
        log.info("downlink: %s %s executed", command, request_id)
        reply = self._reply(request_id, command, ok=True, result=dict(result))
        self.store.put_reply(request_id, reply)
        return request_id, reply
