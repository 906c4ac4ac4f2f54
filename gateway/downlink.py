"""Downlink commands from the cloud: ``{prefix}/{gateway_id}/cmd/{name}`` -> ``cmd-result/{request_id}``.

Every command is treated as hostile until proven otherwise, in this order:

1. size: more than :data:`MAX_COMMAND_BYTES` is rejected (``too_large``) without parsing;
2. JSON object with a ``request_id`` matching the contract's pattern (else ``malformed``, replied on
   ``cmd-result/_invalid``). Malformed input (this and 1.) has a budget of its own, a token bucket of
   ``malformed_burst`` then ``malformed_per_minute``: past it a malformed message is dropped without a
   reply (counted in ``dropped``). The first malformed message of a run is logged at WARNING, the rest of
   the run (replied or dropped) at DEBUG; the run ends with the next well-formed command (INFO, with how
   many there were). A budget of its own, not the commands' bucket: a flood of garbage (a cloud's bug)
   must not cost the care centre's next ``alert-ack`` its token;
3. rate limit: a token bucket (``rate_limited``; the first of a run at WARNING, the rest at DEBUG);
4. replay: a request id seen before gets its stored reply again (``replayed: true``), never a second
   execution (idempotent by request id). A duplicate that arrives while the first is still executing
   (a handler that awaits) waits for the first's reply and gets it the same way;
5. the command's JSON Schema from the contract (``gateway/schemas/commands``), compiled once with
   fastjsonschema (``unknown_command`` / ``invalid`` with the schema's reason);
6. age: a command whose ``sent_at`` is older than ``max_age_s`` by a synchronised clock is refused
   (``expired``), so a cloud's late retry never acts at a surprising time (a drill opened hours late);
   with the clock not synchronised the age cannot be judged and the command is taken;
7. the handler, which raises :class:`CommandRejected` with a code, a reason and the key at fault for
   what it refuses. Anything else it raises is a bug: logged at ERROR with its traceback, counted, and
   replied as ``failed``; never a crash, never a command left without a reply.

Both token buckets measure durations on ``time.monotonic`` (``rate_clock``): a step of the wall clock
neither refills nor empties them. ``clock`` is the wall clock, for the replies' ``at`` and the age.

Handlers only change the gateway's own state (its registry, rules, drill window, devices); nothing here
runs a shell or touches a path the command names.
"""

from __future__ import annotations

import asyncio
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
from gateway.errors import CommandRejected, GatewayError
from gateway.messages import rfc3339_ms

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 16 * 1024
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
INVALID_TOPIC_ID = "_invalid"
COMMANDS = ("status", "drill", "alert-ack", "device-add", "device-remove", "rules-update")
# The budget of malformed input (too large, not JSON, no valid request_id): replied up to this many at
# once, then this many a minute; the rest dropped without a reply.
MALFORMED_BURST = 10
MALFORMED_PER_MINUTE = 10.0

Outcome = tuple[str, dict[str, Any]]  # the request id to reply to (cmd-result/{it}) and the reply


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
    """``capacity`` tokens at once, refilled at ``refill_per_s``. Durations are measured on ``clock``,
    monotonic unless a test injects one: on the wall clock a step forwards would refill the bucket
    and a step back would empty it for as long as the step."""

    capacity: float
    refill_per_s: float
    clock: Callable[[], float] = time.monotonic
    tokens: float = -1.0
    last: float = 0.0

    def take(self) -> bool:
        now = self.clock()
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
    dropped: int = 0  # malformed messages past their budget: no reply


class Downlink:
    def __init__(
        self,
        gateway_id: str,
        handlers: Mapping[str, Handler],
        store: ReplayStore,
        *,
        clock: Callable[[], float] = time.time,
        rate_clock: Callable[[], float] = time.monotonic,
        clock_synchronised: Callable[[], bool] = lambda: False,
        max_age_s: float = 300.0,
        burst: int = 20,
        per_minute: float = 20.0,
        malformed_burst: int = MALFORMED_BURST,
        malformed_per_minute: float = MALFORMED_PER_MINUTE,
    ) -> None:
        self.gateway_id = gateway_id
        self.handlers = dict(handlers)
        self.store = store
        self.clock = clock  # the wall clock: replies' "at", a command's age
        self.clock_synchronised = clock_synchronised
        self.max_age_s = max_age_s
        self.bugs = BugLog()
        self.bucket = TokenBucket(burst, per_minute / 60.0, rate_clock)
        self.malformed_bucket = TokenBucket(malformed_burst, malformed_per_minute / 60.0, rate_clock)
        self.validators = load_validators()
        self.counters = DownlinkCounters()
        # request id -> (command, its reply once done) of the commands executing now
        self._running: dict[str, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        self._malformed_run = 0  # malformed messages since the last well-formed one
        self._malformed_run_dropped = 0  # of which dropped without a reply
        self._limited_run = 0  # rate_limited replies since the last command taken

    def _reply(self, request_id: str, command: str, **body: Any) -> dict[str, Any]:
        return {
            "request_id": request_id,
            "command": command,
            "gateway_id": self.gateway_id,
            "at": rfc3339_ms(self.clock()),
            **body,
        }

    def _reject(
        self,
        request_id: str,
        command: str,
        code: str,
        reason: str,
        key: str | None = None,
        *,
        level: int = logging.WARNING,
        note: str = "",
    ) -> Outcome:
        self.counters.rejected[code] = self.counters.rejected.get(code, 0) + 1
        log.log(level, "downlink: %r rejected (%s): %s%s", command[:40], code, reason[:200], note)
        error = {"code": code, "reason": reason, **({"key": key} if key else {})}
        return request_id, self._reply(request_id, command, ok=False, error=error)

    def _malformed(self, command: str, code: str, reason: str) -> Outcome | None:
        """Malformed input, from its own budget: replied on ``_invalid`` while there is budget, else
        dropped (None). The first of a run at WARNING, its repeats at DEBUG."""
        first = self._malformed_run == 0
        self._malformed_run += 1
        level = logging.WARNING if first else logging.DEBUG
        if not self.malformed_bucket.take():
            self.counters.dropped += 1
            self._malformed_run_dropped += 1
            log.log(
                level,
                "downlink: %r dropped without a reply (%s, over the budget of malformed commands): %s",
                command[:40],
                code,
                reason[:200],
            )
            return None
        note = " (further malformed commands at DEBUG until a well-formed one)" if first else ""
        return self._reject(INVALID_TOPIC_ID, command, code, reason, level=level, note=note)

    def _well_formed(self) -> None:
        """A well-formed command: the run of malformed ones (if any) is over."""
        if self._malformed_run > 1:
            log.info(
                "downlink: a well-formed command after %d malformed ones (%d of them dropped without a reply)",
                self._malformed_run,
                self._malformed_run_dropped,
            )
        self._malformed_run = self._malformed_run_dropped = 0

    def _rate_limited(self, request_id: str, command: str) -> Outcome:
        first = self._limited_run == 0
        self._limited_run += 1
        return self._reject(
            request_id,
            command,
            "rate_limited",
            "too many commands: retry later",
            level=logging.WARNING if first else logging.DEBUG,
            note=" (further ones at DEBUG until a command is taken)" if first else "",
        )

    def _taken(self) -> None:
        """A command got its token: the run of rate_limited ones (if any) is over."""
        if self._limited_run > 1:
            log.info("downlink: a command taken after %d refused as rate_limited", self._limited_run)
        self._limited_run = 0

    def _conflict(self, request_id: str, command: str, used_by: str) -> Outcome:
        # Not a replay: another command under a used id. Refused, and the first's reply kept.
        return self._reject(
            request_id,
            command,
            "conflict",
            f"request_id {request_id} was used by {used_by[:64]!r}: use a new one",
            key="request_id",
        )

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

    async def receive(self, command: str, payload: bytes) -> Outcome | None:
        """Process one command message. Returns the request id to reply to and the reply body, or None
        for a message dropped without a reply (malformed, past its budget); never raises (a bug anywhere
        in the handling is logged, counted and replied as ``failed``)."""
        self.counters.received += 1
        command = command[:64]
        try:
            return await self._receive(command, payload)
        except Exception as exc:  # noqa: BLE001 - a bug outside the handler: ERROR with traceback, counted, replied
            self.bugs.report(log, "downlink", exc, f"{command!r} failed")
            return self._reject(INVALID_TOPIC_ID, command, "failed", f"internal error: {type(exc).__name__}")

    async def _receive(self, command: str, payload: bytes) -> Outcome | None:
        if len(payload) > MAX_COMMAND_BYTES:
            return self._malformed(
                command, "too_large", f"{len(payload)} bytes is over the {MAX_COMMAND_BYTES} byte limit"
            )
        try:
            doc = json.loads(payload)
        except RecursionError:
            return self._malformed(command, "malformed", "not JSON: nested too deeply")
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError both
            return self._malformed(command, "malformed", f"not JSON: {exc}")
        if not isinstance(doc, dict):
            return self._malformed(command, "malformed", "a command is a JSON object")
        request_id = doc.get("request_id")
        if not isinstance(request_id, str) or not REQUEST_ID_RE.fullmatch(request_id):
            return self._malformed(command, "malformed", f"request_id must match {REQUEST_ID_RE.pattern}")
        self._well_formed()
        if not self.bucket.take():
            return self._rate_limited(request_id, command)
        self._taken()
        return await self._once(request_id, command, doc)

    async def _once(self, request_id: str, command: str, doc: dict[str, Any]) -> Outcome:
        """Execute the command unless its request id was seen: then the first one's reply, stored, or
        awaited while the first still executes (its handler awaits), with ``replayed: true``."""
        while True:
            running = self._running.get(request_id)
            if running is None:
                break
            used_by, done = running
            if used_by != command:
                return self._conflict(request_id, command, used_by)
            await asyncio.wait([done])  # a cancel of this duplicate's task is not one of the first's
            if not done.cancelled():
                self.counters.replayed += 1
                return request_id, {**done.result(), "replayed": True}
            # The first ended without a reply (cancelled, or a fault outside its handler): nothing was
            # stored, so this one is looked at as if the first never came.
        stored = self.store.get_reply(request_id)
        if stored is not None and stored.get("command") != command:
            return self._conflict(request_id, command, str(stored.get("command")))
        if stored is not None:
            self.counters.replayed += 1
            return request_id, {**stored, "replayed": True}
        done = asyncio.get_running_loop().create_future()
        self._running[request_id] = (command, done)
        try:
            reply = await self._execute(request_id, command, doc)
            done.set_result(reply)  # before the store: if it fails, the duplicates waiting now still get this reply
            try:
                self.store.put_reply(request_id, reply)
            except GatewayError as exc:  # the registry cannot be written (a full disk): the reply still goes
                log.warning(
                    "downlink: %s %s: reply not stored (a retry would run it again): %s", command, request_id, exc
                )
            return request_id, reply
        finally:
            del self._running[request_id]
            if not done.done():
                done.cancel()

    async def _execute(self, request_id: str, command: str, doc: dict[str, Any]) -> dict[str, Any]:
        """The reply to a command seen the first time (stored by the caller)."""
        validate = self.validators.get(command)
        handler = self.handlers.get(command)
        if validate is None or handler is None:
            return self._reject(
                request_id,
                command,
                "unknown_command",
                f"unknown command {command!r}; known: {', '.join(sorted(self.handlers))}",
            )[1]
        try:
            args = validate(doc)
        except fastjsonschema.JsonSchemaException as exc:
            return self._reject(request_id, command, "invalid", str(exc))[1]
        try:
            expired = self._expired(args)
            if expired is not None:
                raise CommandRejected("expired", expired, key="sent_at")
            result = await handler(args)
        except CommandRejected as exc:
            return self._reject(request_id, command, exc.code, exc.reason, exc.key)[1]
        except Exception as exc:  # noqa: BLE001 - a bug in a handler: ERROR with traceback, counted, replied
            self.bugs.report(log, "downlink", exc, f"{command} failed")
            return self._reject(request_id, command, "failed", f"internal error: {type(exc).__name__}")[1]
        self.counters.executed += 1
        log.info("downlink: %s %s executed", command, request_id)
        return self._reply(request_id, command, ok=True, result=dict(result))
