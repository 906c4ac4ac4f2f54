"""Readings from drivers -> (DSP) -> rules -> outbox. The only place drivers' output enters the daemon.

:meth:`Pipeline.sink` is the :data:`drivers.base.ReadingSink` every driver gets: synchronous and
non-blocking. It turns each reading into a contract message and submits it to the outbox's next group
commit (an SOS commits at once). Waveforms and beat intervals go through the device's DSP stream
(``gateway.dsp``) when it is available, which returns gateway-computed measurements.

Nothing after the outbox hand-over can stop a reading, above all an SOS: a DSP stream or a listener
(the care rules, ``tail``) that raises is a bug, logged at ERROR with its traceback (rate limited),
counted in ``bugs``, and the other listeners and the driver carry on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from drivers import codes
from drivers.base import BeatIntervals, ButtonPress, DeviceStatus, Measurement, Reading, Waveform
from drivers.reconnect import BugLog
from gateway import messages
from gateway.drill import DrillWindow
from gateway.errors import OutboxError
from gateway.messages import Topics
from gateway.outbox import NewMessage, Outbox

log = logging.getLogger(__name__)


class CallDesk(Protocol):
    """Who turns a press of a ``call`` button into its call request (gateway.care.CareDesk.call):
    (alert id, the ``alert`` message to commit)."""

    def call(self, press: ButtonPress, drill: bool) -> tuple[str, NewMessage]: ...


class DspStream(Protocol):
    """What the pipeline needs of a per-device DSP stream (gateway.dsp.stream)."""

    def push_waveform(self, w: Waveform) -> list[Measurement]: ...

    def push_rr(self, b: BeatIntervals) -> list[Measurement]: ...

    def at_rest(self, t: float) -> bool | None: ...


@dataclass
class DeviceInfo:
    id: str
    kind: str
    state: str = "unknown"
    reason: str | None = None
    last_seen: float | None = None  # time.monotonic() when the gateway last got a reading (not its capture time)
    readings: int = 0
    counters: dict[str, int] = field(default_factory=dict)


@dataclass
class PipelineCounters:
    accepted: int = 0
    commit_failures: int = 0
    sos_presses: int = 0
    call_presses: int = 0
    unknown_readings: int = 0


class Pipeline:
    def __init__(
        self,
        topics: Topics,
        outbox: Outbox,
        *,
        clock: Callable[[], float] = time.time,
        dsp_factory: Callable[[str], DspStream] | None = None,
        send_waveforms: bool = False,
        drill_time: Callable[[float], float] = lambda t: t,
    ) -> None:
        self.topics = topics
        self.outbox = outbox
        self.clock = clock
        self.dsp_factory = dsp_factory
        self.send_waveforms = send_waveforms  # raw blocks to the cloud's bulk lane as well
        self.devices: dict[str, DeviceInfo] = {}
        self.counters = PipelineCounters()
        self._dsp: dict[str, DspStream] = {}
        self.drill = DrillWindow()  # which presses are rehearsals (gateway.drill)
        # a press's wall time on the drill window's clock: in the daemon the rules' timeline, which a
        # step of the wall clock never moves (a step back inside the window would make it last longer)
        self.drill_time = drill_time
        self.bugs = BugLog()
        self._listeners: list[Callable[[Reading], None]] = []
        self._alert_listeners: list[Callable[[str, str, float], None]] = []
        self.calls: CallDesk | None = None  # call requests (the care desk); None: each press alone

    def add_device(self, device_id: str, kind: str) -> None:
        self.devices.setdefault(device_id, DeviceInfo(device_id, kind))

    def on_reading(self, listener: Callable[[Reading], None]) -> None:
        """Observe every reading (tail, rules). Listeners must not block."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Reading], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def on_alert(self, listener: Callable[[str, str, float], None]) -> None:
        """Called with (alert_id, device_id, captured_at) for every alert raised (the alert desk)."""
        self._alert_listeners.append(listener)

    # -- the sink ---------------------------------------------------------------------------------

    def sink(self, reading: Reading) -> None:
        info = self.devices.get(reading.device_id)
        if info is None:
            info = self.devices[reading.device_id] = DeviceInfo(reading.device_id, "unknown")
        if not isinstance(reading, DeviceStatus):
            info.last_seen = time.monotonic()  # a stored reading's capture may be yesterday's; a step moves neither
            info.readings += 1
        match reading:
            case ButtonPress(role="call"):
                self._call(reading)
            case ButtonPress():
                self.counters.sos_presses += 1
                alert_id = messages.sos_alert_id(reading)
                drill = self.drill.judge(alert_id, reading.device_id, self.drill_time(reading.captured_at))
                log.warning("device %s: SOS press%s", reading.device_id, " (drill)" if drill else "")
                msg = messages.sos_alert(self.topics, reading, drill=drill)
                self.submit(msg)
                for on_alert in self._alert_listeners:
                    self._guarded(reading, "alert listener", on_alert, alert_id, reading.device_id, reading.captured_at)
            case Measurement():
                reading = self._mark_rest(reading)
                self.submit(messages.observation(self.topics, reading))
            case DeviceStatus():
                info.state, info.reason = reading.state.value, reading.reason
                info.counters = dict(reading.counters)
                if reading.state.value == "connected":
                    log.info("device %s: connected", reading.device_id)
                else:
                    log.info("device %s: %s (%s)", reading.device_id, reading.state.value, reading.reason)
                self.submit(messages.device_state(self.topics, reading))
            case Waveform():
                if self.send_waveforms:
                    self.submit(messages.waveform(self.topics, reading))
                for m in self._stream(reading.device_id, lambda s: s.push_waveform(reading)):
                    self.sink(m)
            case BeatIntervals():
                for m in self._stream(reading.device_id, lambda s: s.push_rr(reading)):
                    self.sink(m)
            case _:
                self.counters.unknown_readings += 1
                log.warning("device %s: unknown reading type %s", reading.device_id, type(reading).__name__)
        # After the reading is with the outbox: an SOS commit is never delayed by a listener.
        for listener in self._listeners:
            self._guarded(reading, "reading listener", listener, reading)

    def _call(self, press: ButtonPress) -> None:
        """A ``call`` press: committed at once in the alert lane like an SOS, as its call request (or
        one more press of the open one). Should the care desk fail, the press goes out alone."""
        self.counters.call_presses += 1
        alert_id = messages.call_alert_id(press)
        drill = self.drill.judge(alert_id, press.device_id, self.drill_time(press.captured_at))
        msg: NewMessage | None = None
        if self.calls is not None:
            try:
                alert_id, msg = self.calls.call(press, drill)
            except Exception as exc:  # noqa: BLE001 - a bug of the care desk must not lose the press (docstring)
                self.bugs.report(log, f"device {press.device_id}", exc, "call request")
        if msg is None:
            log.warning("device %s: call press%s", press.device_id, " (drill)" if drill else "")
            msg = messages.call_alert(self.topics, press, drill=drill)
        self.submit(msg)
        for on_alert in self._alert_listeners:
            self._guarded(press, "alert listener", on_alert, alert_id, press.device_id, press.captured_at)

    def _mark_rest(self, m: Measurement) -> Measurement:
        """A heart rate the device computed itself, without its own activity flag: marked ``at_rest``
        with the verdict of the same device's DSP stream when the device sends acceleration (gateway/dsp,
        "At rest"); unmarked otherwise, as documented (docs/rules.md)."""
        if m.code != codes.HEART_RATE or m.method != "device" or "at_rest" in m.extra:
            return m
        stream = self._dsp.get(m.device_id)
        if stream is None:
            return m
        try:
            verdict = stream.at_rest(m.captured_at)
        except Exception as exc:  # noqa: BLE001 - a DSP bug costs the mark, never the reading (docstring)
            self.bugs.report(log, f"device {m.device_id}", exc, "at-rest verdict failed")
            return m
        if verdict is None:
            return m
        return dataclasses.replace(m, extra={**m.extra, "at_rest": verdict})

    def _guarded(self, reading: Reading, what: str, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - a listener's bug must not stop the readings (docstring)
            self.bugs.report(log, f"device {reading.device_id}", exc, what)

    def _stream(self, device_id: str, push: Callable[[DspStream], list[Measurement]]) -> list[Measurement]:
        if self.dsp_factory is None:
            return []
        try:
            stream = self._dsp.get(device_id)
            if stream is None:
                stream = self._dsp[device_id] = self.dsp_factory(device_id)
            return push(stream)
        except Exception as exc:  # noqa: BLE001 - a DSP bug costs that window, never the readings (docstring)
            self.bugs.report(log, f"device {device_id}", exc, "signal processing failed")
            self._dsp.pop(device_id, None)  # a fresh stream next time
            return []

    def submit(self, msg: NewMessage) -> asyncio.Future[int]:
        """Hand a message to the outbox's next commit (readings here; care alerts from gateway.care)."""
        fut = self.outbox.submit(msg)
        fut.add_done_callback(self._committed)
        return fut

    def _committed(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            self.counters.accepted += 1
        elif isinstance(exc, OutboxError):
            self.counters.commit_failures += 1
        else:
            raise exc
