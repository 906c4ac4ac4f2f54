"""Reconnection as its own component, shared by serial, BLE and the MQTT uplink.

- :class:`Backoff`: exponential backoff with *full jitter* and a cap (AWS architecture blog,
  "Exponential Backoff and Jitter"): delay = uniform(0, min(cap, base * 2**attempt)). A fleet that lost
  its broker at the same instant spreads its reconnects over the whole window instead of knocking
  together.
- :class:`ConnState`: the state enum every connection reports.
- :func:`classify`: errors by *type*, never by message: transient (retry with backoff),
  configuration (retry slowly, and say what to fix), or a bug: an error nobody declared transient (an
  ``AttributeError``, an ``AssertionError``) is logged at ERROR with its traceback (:class:`BugLog`,
  rate limited, never silenced), counted, reported as the ``error`` state, and retried with backoff.
  A ``CancelledError`` that reaches a task nobody cancelled (``Task.cancelling() == 0``: a library
  leaked a cancelled future of its own) is such a bug too; only a cancellation of our task stops.
- :class:`Reconnector`: drives one ``connect-and-serve`` coroutine forever, with states, backoff,
  the expected/unexpected distinction, and a reset of the backoff after a connection that lasted.

No I/O here and no import of the daemon; time and randomness are injectable for tests.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from drivers.aio import cancelling
from drivers.base import DeviceConfigError, FrameError, LinkState, TransientDeviceError

log = logging.getLogger(__name__)


class ConnState(enum.StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    STOPPED = "stopped"


def link_state(state: ConnState, error: BaseException | None) -> tuple[LinkState, str | None] | None:
    """What a device's ``device/{id}/state`` says for a reconnector state (``None``: nothing to say
    yet, e.g. while connecting): connected, disconnected, or error for a configuration error."""
    if state in (ConnState.CONNECTING, ConnState.IDLE):
        return None
    if state is ConnState.CONNECTED:
        link = LinkState.CONNECTED
    elif error is not None and classify(error) is not ErrorClass.TRANSIENT:
        link = LinkState.ERROR
    else:
        link = LinkState.DISCONNECTED
    if error is not None and classify(error) is ErrorClass.BUG:
        reason: str | None = f"internal error: {describe(error)}"
    else:
        reason = str(error) if error is not None else ("gateway stopped" if state is ConnState.STOPPED else None)
    return link, reason


class ErrorClass(enum.StrEnum):
    TRANSIENT = "transient"
    CONFIGURATION = "configuration"
    BUG = "bug"


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientDeviceError,  # the transports' own: unplugged, out of range, broker away...
    FrameError,
    OSError,
    TimeoutError,
    EOFError,
)
"""Errors known to be weather: the link or the device, not our code."""


def classify(exc: BaseException) -> ErrorClass:
    """Configuration when retrying cannot help, transient when the error is of a kind known to pass,
    and a bug for everything else."""
    if isinstance(exc, DeviceConfigError | PermissionError):
        return ErrorClass.CONFIGURATION
    if isinstance(exc, TRANSIENT_ERRORS):
        return ErrorClass.TRANSIENT
    return ErrorClass.BUG


def describe(exc: BaseException) -> str:
    """``Type: message`` of an error, for a state's reason; a stray ``CancelledError`` (one that
    reached a task nobody cancelled) says so, having no message of its own."""
    if isinstance(exc, asyncio.CancelledError) and not str(exc):
        return "CancelledError: a cancellation nobody asked for (leaked by a library)"
    return f"{type(exc).__name__}: {exc}"


class BugLog:
    """Logs bugs at ERROR with their traceback: the first of each kind (type and place) at once, then
    at most one per ``every_s`` with how many were seen meanwhile (the rest at DEBUG). Rate limited,
    never silenced: a bug in a loop must not fill the journal, nor go unseen."""

    def __init__(self, every_s: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self.count = 0
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # kind -> (logged at, repeats since)

    def report(self, logger: logging.Logger, owner: str, exc: BaseException, what: str = "bug") -> None:
        self.count += 1
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        key = (type(exc).__name__, where)
        now = self.clock()
        last = self._last.get(key)
        if last is None or now - last[0] >= self.every_s:
            more = f" ({last[1]} more since the last report)" if last is not None and last[1] else ""
            logger.error("%s: %s: %s%s", owner, what, describe(exc), more, exc_info=exc)
            self._last[key] = (now, 0)
        else:
            self._last[key] = (last[0], last[1] + 1)
            logger.debug("%s: %s again: %s: %s", owner, what, type(exc).__name__, exc)


@dataclass
class Backoff:
    """Full-jitter exponential backoff. ``next_delay()`` grows the attempt counter; ``reset()`` after
    a connection that held for ``stable_after_s``."""

    base_s: float = 0.5
    cap_s: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def ceiling(self) -> float:
        return min(self.cap_s, self.base_s * float(2 ** min(self.attempt, 30)))

    def next_delay(self) -> float:
        delay = float(self.rng.uniform(0.0, self.ceiling()))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


Sleep = Callable[[float], Awaitable[None]]


class Reconnector:
    """Run ``session()`` again and again: it connects, serves until the link ends, and returns
    (expected end, e.g. the peer closed cleanly) or raises (unexpected). Between sessions wait a
    backoff delay. Configuration errors use ``config_retry_s`` (slow, fixed) and are reported once.

    ``on_state(state, error)`` is called on every change, for ``device/{id}/state`` and status.
    """

    def __init__(
        self,
        name: str,
        session: Callable[[], Awaitable[None]],
        *,
        backoff: Backoff | None = None,
        config_retry_s: float = 30.0,
        stable_after_s: float = 10.0,
        on_state: Callable[[ConnState, BaseException | None], None] | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.name = name
        self._session = session
        self.backoff = backoff or Backoff()
        self.config_retry_s = config_retry_s
        self.stable_after_s = stable_after_s
        self._on_state = on_state
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self._sleep = sleep
        self.state = ConnState.IDLE
        self.connects = 0
        self.failures = 0
        self.unexpected_disconnects = 0
        self.bugs = BugLog()
        self.last_error: BaseException | None = None
        self._connected_at: float | None = None
        self._last_error_type: type[BaseException] | None = None

    def set_state(self, state: ConnState, error: BaseException | None = None) -> None:
        self.state = state
        if self._on_state is not None:
            # A bug in reporting the state (building a device's state message) is the report's: raised
            # here, outside the session, it would end the reconnect loop (the uplink, the SMS modem).
            try:
                self._on_state(state, error)
            except Exception as exc:  # noqa: BLE001 - the link goes on (comment above)
                self.bugs.report(log, self.name, exc, f"{state.value} state not reported")

    def mark_connected(self) -> None:
        """Called by the session once the link is really up (port open, MQTT CONNACK...)."""
        self.connects += 1
        self._connected_at = self._clock()
        self.last_error = None
        self._last_error_type = None
        self.set_state(ConnState.CONNECTED)

    def _log_failure(self, exc: BaseException, kind: ErrorClass) -> None:
        if kind is ErrorClass.BUG:
            self.bugs.report(log, self.name, exc)
            return
        # First failure of a kind at WARNING, its repeats at DEBUG: a device unplugged for a week
        # must not fill the journal.
        level = logging.DEBUG if type(exc) is self._last_error_type else logging.WARNING
        log.log(level, "%s: %s error: %s", self.name, kind.value, exc)
        self._last_error_type = type(exc)

    async def run(self) -> None:
        try:
            while True:
                self._connected_at = None
                self.set_state(ConnState.CONNECTING)
                error: BaseException | None = None
                try:
                    await self._session()
                except asyncio.CancelledError as exc:
                    if cancelling():
                        raise  # asked to stop
                    # Nobody cancelled this task: a library leaked a cancelled future of its own (bleak
                    # on a D-Bus timeout, hbldh/bleak-retry-connector#109). Re-raised, it would end the
                    # connection for good, uncounted: it is a failure of the session, a bug.
                    error = exc
                except Exception as exc:
                    if cancelling():
                        # Asked to stop while the session failed (or swallowed the cancellation):
                        # stop, never reconnect.
                        raise asyncio.CancelledError from exc
                    error = exc
                connected_at = self._connected_at
                if connected_at is not None and self._clock() - connected_at >= self.stable_after_s:
                    self.backoff.reset()
                if error is None:
                    # Expected end (peer closed cleanly): reconnect promptly but still with backoff.
                    log.debug("%s: session ended", self.name)
                    delay = self.backoff.next_delay()
                else:
                    self.failures += 1
                    self.last_error = error
                    if connected_at is not None:
                        self.unexpected_disconnects += 1
                    kind = classify(error)
                    self._log_failure(error, kind)
                    delay = self.config_retry_s if kind is ErrorClass.CONFIGURATION else self.backoff.next_delay()
                self.set_state(ConnState.BACKOFF, error)
                await self._sleep(delay)
        finally:
            self.set_state(ConnState.STOPPED)
