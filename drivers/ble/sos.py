"""BLE SOS pendants: a press seen in advertisements, or notified over a connection.

The pendant format (docs/ble.md, "SOS pendant") carries a 16-bit press counter that goes up by one
per press and an "alarm active" flag, in the manufacturer data of every advertisement (company id
``gatt.SOS_COMPANY_ID``) or in the value of the SOS state characteristic. A pendant repeats its
advertisement many times per press and the gateway hears only some of them, so a press is a
*change of the counter*, never a frame:

- repeats of the same counter are the same press (one alert);
- a counter that moved by ``k`` means ``k`` presses, some of whose advertisements were missed: one
  alert for the latest, with ``presses = k``;
- a counter that went back (a new battery starts it at 0) starts a new series; a first sighting
  with the alarm flag set is a press (the gateway restarted during an alarm).

``press_id`` is ``<series>-<counter>`` (series: when the gateway first saw this counter series), stable
across repeats, and across gateway restarts because the tracker's state is kept in ``state_path``.
The pure part is :class:`PressTracker`.

Roles: a pendant of format 1.1 says how its latest press was made (``press``, ``double_press``,
``long_press`` ...); ``roles`` maps those patterns to ``sos`` or ``call`` (e.g. ``{ press = "call",
long_press = "sos" }``). A pattern the table does not list, and every press of a format 1.0 pendant, is
an SOS. When advertisements were missed (the counter moved by more than one) only the latest press's
pattern is known: if it is a call, the missed presses are reported as one SOS first (one of them may
have been an emergency), unless ``roles`` makes every pattern a call (the pendant cannot send an SOS).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from bleak import BleakClient

from drivers.base import ButtonPress, DeviceSpec, DriverContext, LinkState, ReadingSink, StateFile
from drivers.ble import gatt
from drivers.ble.driver import BleDriver, BleOptions
from drivers.ble.stack import Sighting
from drivers.options import PRESS_PATTERNS, DriverOptions, option, press_roles_option, role_of, state_path_option

log = logging.getLogger(__name__)

MAX_JUMP = 1000  # more presses than this between two sightings is not believable: a new series


@dataclass(frozen=True, slots=True)
class Press:
    press_id: str
    counter: int
    presses: int  # presses since the last one seen (1, or more when advertisements were missed)
    pattern: str | None = None  # how the latest of them was made (format 1.1), None: not told


@dataclass
class PressTracker:
    """Press counter values in, presses out (pure: time is given by the caller)."""

    last_counter: int | None = None
    series: int = 0

    def update(self, state: gatt.SosState, now: float) -> Press | None:
        counter = state.press_counter
        if self.last_counter is None:
            self.last_counter, self.series = counter, int(now)
            return Press(f"{self.series}-{counter}", counter, 1, state.pattern) if state.alarm_active else None
        delta = (counter - self.last_counter) % 0x10000
        if delta == 0:
            return None
        self.last_counter = counter
        if delta <= MAX_JUMP and counter != 0:
            return Press(f"{self.series}-{counter}", counter, delta, state.pattern)
        # The counter went back (battery change) or jumped beyond belief: a new series.
        self.series = int(now)
        return Press(f"{self.series}-{counter}", counter, 1, state.pattern) if state.alarm_active else None

    def to_json(self) -> dict[str, Any]:
        return {"last_counter": self.last_counter, "series": self.series}

    @classmethod
    def from_json(cls, raw: Any) -> PressTracker:
        if not isinstance(raw, dict):
            return cls()
        last, series = raw.get("last_counter"), raw.get("series")
        if not (last is None or (isinstance(last, int) and 0 <= last <= 0xFFFF)) or not isinstance(series, int):
            return cls()
        return cls(last, series)


@dataclass(frozen=True)  # no slots: frozen+slots subclasses break super() on 3.11
class PendantOptions(BleOptions):
    state_path: str = state_path_option()
    roles: dict[str, str] = press_roles_option()


@dataclass(frozen=True)  # no slots: frozen+slots subclasses break super() on 3.11
class AdvertisingPendantOptions(PendantOptions):
    absent_after_s: float = option(60.0, lo=1, hi=86400, unit="seconds", doc="not heard: disconnected")


class _PendantDriver(BleDriver):
    """The press logic both pendant kinds share."""

    priority: ClassVar[int] = 0
    Options: ClassVar[type[DriverOptions]] = PendantOptions

    def __init__(self, spec: DeviceSpec, sink: ReadingSink, ctx: DriverContext) -> None:
        super().__init__(spec, sink, ctx)
        opts = spec.options
        assert isinstance(opts, PendantOptions)
        self.press_state_path = self.state_path(opts.state_path)
        path = self.press_state_path
        self._state = StateFile(path, self.device_id, "press state") if path is not None else None
        self.tracker = self.load_tracker()
        self.roles = dict(opts.roles)
        # a pendant whose every pattern is a call cannot send an SOS: its missed presses are calls too
        self.can_sos = any(role_of(self.roles, p) == "sos" for p in PRESS_PATTERNS)

    def load_tracker(self) -> PressTracker:
        raw = self._state.read() if self._state is not None else None
        if raw is None:
            return PressTracker()
        try:
            return PressTracker.from_json(raw)
        except ValueError as exc:
            log.warning("device %s: cannot read press state %s: %s", self.device_id, self.press_state_path, exc)
            return PressTracker()

    def save_tracker(self) -> None:
        if self._state is not None:
            self._state.write(self.tracker.to_json())

    def on_state_value(self, data: bytes, via: str) -> None:
        try:
            state = gatt.decode_sos_state(data)
        except gatt.GattDecodeError as exc:
            self.bad_value(exc)
            return
        if state.battery_percent is not None:
            self.battery = state.battery_percent
        now = self.clock()
        before = self.tracker.to_json()
        press = self.tracker.update(state, now)
        if press is not None:
            self.count("presses")
            if press.presses > 1:
                self.count("missed_presses", press.presses - 1)
            role = role_of(self.roles, press.pattern)
            extra = {"via": via, "battery_low": state.battery_low}
            presses = press.presses
            if role == "call" and presses > 1 and self.can_sos:
                # the missed presses' patterns are unknown: one of them may have been an SOS
                self.sink(
                    ButtonPress(
                        device_id=self.device_id,
                        captured_at=now,
                        press_id=f"{press.press_id}-missed",
                        extra={**extra, "presses": presses - 1, "missed": True},
                    )
                )
                presses = 1
            self.sink(
                ButtonPress(
                    device_id=self.device_id,
                    captured_at=now,
                    press_id=press.press_id,
                    extra={**extra, "presses": presses},
                    role=role,
                    pattern=press.pattern,
                )
            )
        elif state.alarm_active:
            self.count("repeats")
        if self.tracker.to_json() != before:
            self.save_tracker()


class SosPendantDriver(_PendantDriver):
    """A pendant that only advertises. Options: the BLE keys, ``absent_after_s`` (not heard for this
    long: reported disconnected, default 60), ``state_path`` (set by the gateway)."""

    kind: ClassVar[str] = "ble-sos"
    Options: ClassVar[type[DriverOptions]] = AdvertisingPendantOptions
    summary: ClassVar[str] = "Bluetooth LE SOS pendant that advertises its press counter"
    ble_services: ClassVar[tuple[str, ...]] = (gatt.SOS_SERVICE.lower(),)
    ble_company_ids: ClassVar[tuple[int, ...]] = (gatt.SOS_COMPANY_ID,)

    def __init__(self, spec: DeviceSpec, sink: ReadingSink, ctx: DriverContext) -> None:
        super().__init__(spec, sink, ctx)
        opts = spec.options
        assert isinstance(opts, AdvertisingPendantOptions)
        self.absent_after_s = opts.absent_after_s

    def on_advertisement(self, s: Sighting) -> None:
        super().on_advertisement(s)
        self.count("advertisements")
        data = s.adv.manufacturer_data.get(gatt.SOS_COMPANY_ID)
        if data is None:
            self.count("foreign_advertisements")
            return
        self.on_state_value(bytes(data), "advertisement")
        if self._last_reported is None or self._last_reported[0] is not LinkState.CONNECTED:
            self.report(LinkState.CONNECTED, None)

    async def run_watched(self) -> None:
        """No connection: the pendant is "connected" while it is heard."""
        try:
            last_report = time.monotonic()
            while True:
                await asyncio.sleep(min(1.0, self.absent_after_s / 4))
                now = time.monotonic()
                heard = self.last_seen is not None and now - self.last_seen <= self.absent_after_s
                if not heard and (self._last_reported is None or self._last_reported[0] is LinkState.CONNECTED):
                    self.report(LinkState.DISCONNECTED, f"not heard for {self.absent_after_s:.0f} s")
                elif heard and now - last_report >= self.status_interval_s:
                    self.report(LinkState.CONNECTED, None, force=True)
                    last_report = now
        finally:
            self.report(LinkState.DISCONNECTED, "gateway stopped")


class SosNotifyDriver(_PendantDriver):
    """A pendant that needs a connection and notifies its state characteristic."""

    kind: ClassVar[str] = "ble-sos-notify"
    summary: ClassVar[str] = "Bluetooth LE SOS pendant that notifies over a connection"

    async def setup(self, client: BleakClient) -> None:
        # The current value first: a press made while the link was down is a counter that moved.
        self.on_state_value(bytes(await client.read_gatt_char(gatt.SOS_PRESS)), "reconnect")
        await self.subscribe(client, gatt.SOS_PRESS, lambda data: self.on_state_value(data, "notification"))
        await self.read_battery(client)
