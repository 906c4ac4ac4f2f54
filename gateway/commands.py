"""What the gateway can be asked to do, shared by the cloud downlink and the local control socket.

Each handler takes the validated arguments and returns a JSON-able result, or raises
:class:`~gateway.downlink.CommandRejected` with a code and a reason. Handlers change only the gateway's
own state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from drivers.base import BeatIntervals, ButtonPress, DeviceStatus, Measurement, Reading, Waveform
from gateway.devices import DeviceManager
from gateway.downlink import Handler
from gateway.drill import DEFAULT_DRILL_S, MAX_DRILL_S, DrillWindow
from gateway.errors import CommandRejected
from gateway.messages import rfc3339_ms
from gateway.pipeline import Pipeline
from gateway.registry import Registry


class AlertDesk(Protocol):
    """Open alerts that the care centre can acknowledge (the rules engine implements it)."""

    def ack(self, alert_id: str, now: float) -> bool: ...


@dataclass
class SimpleAlertDesk:
    """Until rules are configured: alerts known by id, acknowledged once."""

    open: dict[str, float] = field(default_factory=dict)
    acked: dict[str, float] = field(default_factory=dict)

    def ack(self, alert_id: str, now: float) -> bool:
        if alert_id in self.acked:
            return True
        if alert_id not in self.open:
            return False
        self.acked[alert_id] = now
        self.open.pop(alert_id)
        return True


@dataclass
class DrillPress:
    alert_id: str
    device_id: str
    # on the daemon's timeline, which a step of the wall clock never moves: the press, when the broker
    # acknowledged its alert (PUBACK), when the care centre did (cmd/alert-ack)
    pressed_at: float
    at_broker: float | None = None
    acked: float | None = None

    def report(self, shift: float = 0.0) -> dict[str, Any]:
        """``shift``: the timeline - the wall clock, now (the report gives the press on the wall clock)."""
        return {
            "alert_id": self.alert_id,
            "device_id": self.device_id,
            "pressed_at": rfc3339_ms(self.pressed_at - shift),
            "press_to_broker_ms": None
            if self.at_broker is None
            else round((self.at_broker - self.pressed_at) * 1000, 1),
            "press_to_ack_s": None if self.acked is None else round(self.acked - self.pressed_at, 3),
        }


@dataclass
class DrillLog:
    """Presses made during drills, with how long each took to reach the broker and the care centre."""

    presses: dict[str, DrillPress] = field(default_factory=dict)
    limit: int = 100

    def pressed(self, alert_id: str, device_id: str, at: float) -> None:
        """A drill press, captured at ``at`` on the timeline."""
        self.presses[alert_id] = DrillPress(alert_id, device_id, at)
        while len(self.presses) > self.limit:
            self.presses.pop(next(iter(self.presses)))

    def delivered(self, alert_id: str, at: float) -> None:
        p = self.presses.get(alert_id)
        if p is not None and p.at_broker is None:
            p.at_broker = at

    def acknowledged(self, alert_id: str, at: float) -> None:
        p = self.presses.get(alert_id)
        if p is not None and p.acked is None:
            p.acked = at


class RulesTarget(Protocol):
    def update_rules(self, person_id: str, rules: list[Mapping[str, Any]]) -> Mapping[str, Any]: ...


class Commands:
    def __init__(
        self,
        *,
        status: Callable[[], Awaitable[dict[str, Any]]],
        pipeline: Pipeline,
        devices: DeviceManager,
        registry: Registry,
        alerts: AlertDesk,
        rules: RulesTarget | None = None,
        clock: Callable[[], float] = time.time,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._status = status
        self.pipeline = pipeline
        self.devices = devices
        self.registry = registry
        self.alerts = alerts
        self.rules = rules
        # the drill window's, the drill log's durations' and the care rules' clock (the daemon's timeline,
        # which a step of the wall clock never moves), and the wall clock of the replies
        self.clock = clock
        self.wall = wall
        self.drills = DrillLog()

    def restore(self) -> None:
        """State that outlives a restart: the drill window."""
        window = DrillWindow.from_json(self.registry.get("drill"))
        if window.active(self.clock()):
            self.pipeline.drill = window

    def _save_drill(self) -> None:
        self.registry.set("drill", self.pipeline.drill.to_json())

    # -- handlers ------------------------------------------------------------------------------

    async def status(self, _args: Mapping[str, Any]) -> dict[str, Any]:
        return await self._status()

    async def drill(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Open a drill window for the named buttons (``buttons``), or for every button only when
        ``all_buttons`` is true; see :mod:`gateway.drill`."""
        duration = args.get("duration_s", DEFAULT_DRILL_S)
        if not isinstance(duration, int) or isinstance(duration, bool) or not 10 <= duration <= MAX_DRILL_S:
            raise CommandRejected(
                "invalid", f"duration_s = {duration!r}: expected 10..{MAX_DRILL_S} seconds", key="duration_s"
            )
        buttons = args.get("buttons")
        every = args.get("all_buttons") is True
        if buttons is not None and every:
            raise CommandRejected("invalid", "name the buttons, or say all_buttons, not both", key="buttons")
        if buttons is None and not every:
            raise CommandRejected(
                "invalid", "name the buttons under test (buttons), or say all_buttons = true", key="buttons"
            )
        named: list[str] | None = None
        if buttons is not None:
            if not isinstance(buttons, list) or not buttons or not all(isinstance(b, str) for b in buttons):
                raise CommandRejected("invalid", f"buttons = {buttons!r}: expected device ids", key="buttons")
            named = sorted(set(buttons))
        now = self.clock()
        self.pipeline.drill.open(now, duration, named)
        self._save_drill()
        shift = now - self.wall()
        until = self.pipeline.drill.until
        return {
            "drill_from": rfc3339_ms(now - shift),
            "drill_until": rfc3339_ms(until - shift),
            "duration_s": duration,
            "buttons": named if named is not None else "all",
        }

    async def drill_stop(self, _args: Mapping[str, Any]) -> dict[str, Any]:
        self.pipeline.drill.close()
        self._save_drill()
        return {"stopped": True}

    async def alert_ack(self, args: Mapping[str, Any]) -> dict[str, Any]:
        alert_id = str(args["alert_id"])
        if not self.alerts.ack(alert_id, self.clock()):
            raise CommandRejected("not_found", f"no open alert {alert_id}")
        self.drills.acknowledged(alert_id, self.clock())
        return {"alert_id": alert_id, "acknowledged": True}

    async def drill_report(self, _args: Mapping[str, Any]) -> dict[str, Any]:
        window = self.pipeline.drill
        now = self.clock()
        active = window.active(now)
        shift = now - self.wall()
        return {
            "drill_until": rfc3339_ms(window.until - shift) if active else None,
            "waiting_for": window.waiting_for() if active else None,
            "presses": [p.report(shift) for p in self.drills.presses.values()],
        }

    async def device_add(self, args: Mapping[str, Any]) -> dict[str, Any]:
        spec = self.devices.add(args["device"])
        return {"device": {"id": spec.id, "kind": spec.kind, "transport": spec.transport}}

    async def device_remove(self, args: Mapping[str, Any]) -> dict[str, Any]:
        await self.devices.remove(str(args["device_id"]))
        return {"device_id": args["device_id"], "removed": True}

    async def devices_list(self, _args: Mapping[str, Any]) -> dict[str, Any]:
        status = await self._status()
        origin = {d: self.devices.origin(d) for d in self.devices.drivers}
        for d in status["devices"]:
            d["origin"] = origin.get(d["id"], "seen")
        return {"devices": status["devices"]}

    async def rules_update(self, args: Mapping[str, Any]) -> dict[str, Any]:
        if self.rules is None:
            raise CommandRejected("failed", "care rules are not available on this gateway")
        return dict(self.rules.update_rules(str(args["person_id"]), list(args["rules"])))

    async def tail(self, args: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Live readings and alerts, for a technician's terminal (values included: this is not a log)."""
        queue: asyncio.Queue[Reading] = asyncio.Queue(maxsize=1000)
        dropped = [0]

        def listen(reading: Reading) -> None:
            if isinstance(reading, (Waveform, BeatIntervals)) and not args.get("raw"):
                return
            try:
                queue.put_nowait(reading)
            except asyncio.QueueFull:
                dropped[0] += 1

        self.pipeline.on_reading(listen)

        async def stream() -> AsyncIterator[dict[str, Any]]:
            try:
                while True:
                    reading = await queue.get()
                    item = reading_summary(reading)
                    if dropped[0]:
                        item["dropped_before"], dropped[0] = dropped[0], 0
                    yield item
            finally:
                self.pipeline.remove_listener(listen)

        return stream()

    # -- tables --------------------------------------------------------------------------------

    def downlink_handlers(self) -> dict[str, Handler]:
        return {
            "status": self.status,
            "drill": self.drill,
            "alert-ack": self.alert_ack,
            "device-add": self.device_add,
            "device-remove": self.device_remove,
            "rules-update": self.rules_update,
        }


def reading_summary(reading: Reading) -> dict[str, Any]:
    base: dict[str, Any] = {"device_id": reading.device_id, "captured_at": rfc3339_ms(reading.captured_at)}
    match reading:
        case Measurement():
            base.update(
                type="observation",
                code=reading.code,
                value=reading.value,
                unit=reading.unit,
                method=reading.method,
                quality=reading.quality,
            )
        case ButtonPress():
            base.update(type=reading.role, press_id=reading.press_id, pattern=reading.pattern)
        case DeviceStatus():
            base.update(type="device_state", state=reading.state.value, reason=reading.reason)
        case Waveform():
            base.update(type="waveform", fs=reading.fs, samples=sum(len(v) for v in reading.channels.values()))
        case BeatIntervals():
            base.update(type="rr", intervals=len(reading.rr_s))
    return base
