"""BLE SOS pendants: a press seen in advertisements, or notified over a connection.

The pendant format (docs/ble.md, "SOS pendant") carries a 16-bit press counter that goes up by one
per press and an "alarm active" flag, in the manufacturer data of every advertisement (company id
``gatt.SOS_COMPANY_ID``) or in the value of the SOS state characteristic. A pendant repeats its
advertisement many times per press and the gateway hears only some of them, so a press is a
*change of the counter*, never a frame:

- repeats of the same counter are the same press (one alert);
- a counter that moved by ``k`` means ``k`` presses, some of whose advertisements were missed: one
  alert for the latest, with ``presses = k``;
- a counter that went back (a new battery starts it at 0) starts a new series; a counter ``k > 0``
  there means ``k`` presses since the new battery, raised whatever the alarm flag says (the flag
  only lasts ~30 s: a pendant heard again later, out of range or a gateway restarting meanwhile,
  would otherwise lose them); a first sighting with the alarm flag set is a press (the gateway
  restarted during an alarm);
- the same counter with the alarm flag set is the same press only while that press's flag can still
  be on: within :data:`SAME_PRESS_S` of when the gateway first heard the counter, and if the flag was
  not heard cleared since (it never comes back without a press, and a press moves the counter).
  Otherwise it is a press of a new series whose counter came back to the stored value (one test
  press at installation, a new battery, one test press by the caregiver). A double alert is
  possible only if a pendant's flag outlasts ``SAME_PRESS_S`` or the wall clock steps across a
  gateway restart; a press is lost only when a new battery's presses bring the counter back to
  exactly the stored value and the pendant is heard only after its flag cleared (the format holds
  nothing else to tell it by).

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
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bleak import BleakClient

from drivers.base import ButtonPress, DeviceSpec, DriverContext, LinkState, ReadingSink, StateFile
from drivers.ble import gatt
from drivers.ble.driver import BleDriver, BleOptions
from drivers.ble.stack import Sighting
from drivers.options import PRESS_PATTERNS, DriverOptions, option, press_roles_option, role_of, state_path_option

log = logging.getLogger(__name__)

MAX_JUMP = 1000  # more presses than this between two sightings is not believable: a new series
# The alarm flag is "a press in the last ~30 s" (docs/ble.md): the flag of the press the gateway first
# heard at t can still be heard until t + 30 s at the latest. Half as much again as a margin for a
# pendant whose "~30 s" is longer, so that one press heard continuously never alerts twice; past it,
# the flag is a newer press (kept short: a new series landing on the stored counter within it, and
# heard with nothing in between, is the one press this rule loses).
SAME_PRESS_S = 45.0


@dataclass(frozen=True, slots=True)
class Press:
    press_id: str
    counter: int
    presses: int  # presses since the last one seen (1, or more when advertisements were missed)
    pattern: str | None = None  # how the latest of them was made (format 1.1), None: not told


@dataclass
class PressTracker:
    """Press counter values in, presses out (pure: times are given by the caller).

    ``counter_since`` (wall time, kept on disk) and ``since_mono`` (monotonic, this run only) say when
    the gateway first heard ``last_counter``; ``alarm_heard`` is the flag of the last state heard.
    Both only serve to tell a repeat of the same counter with the alarm flag set from a press of a
    new series (the module docstring). Defaults are the safe side for a state file of an earlier
    version: heard long ago (the epoch), flag not known to have cleared."""

    last_counter: int | None = None
    series: int = 0
    counter_since: float = 0.0
    alarm_heard: bool = True
    since_mono: float | None = field(default=None, compare=False)

    def update(self, state: gatt.SosState, now: float, mono: float | None = None) -> Press | None:
        """``now``: wall time (series, and the only clock across a restart); ``mono``: monotonic time
        for durations within this run (default ``now``)."""
        mono = now if mono is None else mono
        counter, alarm = state.press_counter, state.alarm_active
        if self.last_counter is None:
            self._heard(counter, alarm, now, mono)
            self._new_series(now)
            return self._press(counter, 1, state) if alarm else None
        delta = (counter - self.last_counter) % 0x10000
        if delta == 0:
            # The flag of the press already raised, or of a newer one whose counter came back here.
            newer = alarm and (not self.alarm_heard or not self._same_press(now, mono))
            self.alarm_heard = alarm
            if not newer:
                return None
            self._heard(counter, alarm, now, mono)
            self._new_series(now)
            return self._press(counter, _since_new_battery(counter), state)
        self._heard(counter, alarm, now, mono)
        if delta <= MAX_JUMP and counter != 0:
            return self._press(counter, delta, state)
        # The counter went back (battery change) or jumped beyond belief: a new series.
        self._new_series(now)
        if counter != 0:
            # k presses since the new battery, raised whatever the flag says: it lasts ~30 s, and a
            # pendant heard again later (out of range, gateway restarting, reconnecting) lost them.
            return self._press(counter, _since_new_battery(counter), state)
        # 0: a new battery not pressed yet, or a wrap through 0 (a press only while its flag is on).
        return self._press(counter, 1, state) if alarm else None

    def _same_press(self, now: float, mono: float) -> bool:
        """Could the alarm flag heard now still be that of the press first heard with this counter?"""
        if self.since_mono is not None:
            elapsed = mono - self.since_mono
        else:
            # Restored from disk: wall time is all there is. A clock step either way (a Pi without an
            # RTC sets its clock at boot) falls outside the window: at worst one press raised twice.
            elapsed = now - self.counter_since
            if 0.0 <= elapsed <= SAME_PRESS_S:
                self.since_mono = mono - elapsed  # monotonic from here on
        return 0.0 <= elapsed <= SAME_PRESS_S

    def _heard(self, counter: int, alarm: bool, now: float, mono: float) -> None:
        self.last_counter, self.alarm_heard = counter, alarm
        self.counter_since, self.since_mono = now, mono

    def _new_series(self, now: float) -> None:
        # After the previous series even on a clock set back: a press id is never given twice (the
        # cloud would drop the second alert as a repeat).
        self.series = max(int(now), self.series + 1)

    def _press(self, counter: int, presses: int, state: gatt.SosState) -> Press:
        return Press(f"{self.series}-{counter}", counter, presses, state.pattern)

    def to_json(self) -> dict[str, Any]:
        return {
            "last_counter": self.last_counter,
            "series": self.series,
            "counter_since": self.counter_since,
            "alarm": self.alarm_heard,
        }

    @classmethod
    def from_json(cls, raw: Any) -> PressTracker:
        if not isinstance(raw, dict):
            return cls()
        last, series = raw.get("last_counter"), raw.get("series")
        if not (last is None or (isinstance(last, int) and 0 <= last <= 0xFFFF)) or not isinstance(series, int):
            return cls()
        since, alarm = raw.get("counter_since"), raw.get("alarm")
        # Missing (an earlier version's file) or damaged: the safe side, as the defaults.
        if not (isinstance(since, int | float) and not isinstance(since, bool) and math.isfinite(since)):
            since = 0.0
        return cls(last, series, float(since), alarm if isinstance(alarm, bool) else True)


def _since_new_battery(counter: int) -> int:
    """Presses a new series' counter stands for (it restarts at 0 with a new battery); one when the
    counter is not believable as a count."""
    return counter if 0 < counter <= MAX_JUMP else 1


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

    def on_state_value(self, data: bytes, via: str, mono: float | None = None) -> bool:
        """One SOS state (``mono``: when it was heard, default now); False when it does not decode."""
        try:
            state = gatt.decode_sos_state(data)
        except gatt.GattDecodeError as exc:
            self.bad_value(exc)
            return False
        if state.battery_percent is not None:
            self.battery = state.battery_percent
        now = self.clock()
        before = self.tracker.to_json()
        press = self.tracker.update(state, now, time.monotonic() if mono is None else mono)
        if self.tracker.series != before["series"] and before["last_counter"] is not None:
            log.info(
                "device %s: press counter %s -> %d (alarm %s): a new series (a new battery)",
                self.device_id,
                before["last_counter"],
                state.press_counter,
                "on" if state.alarm_active else "off",
            )
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
        return True


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
        self.on_state_value(bytes(data), "advertisement", s.at)
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
        # Subscribed first, then the current value read (a press made while the link was down is a
        # counter that moved). Read first, a press between the read and the subscription was in
        # neither: unseen until the next press.
        notified = False

        def on_notification(data: bytes) -> None:
            nonlocal notified
            notified = self.on_state_value(data, "notification") or notified

        await self.subscribe(client, gatt.SOS_PRESS, on_notification)
        value = bytes(await client.read_gatt_char(gatt.SOS_PRESS))
        # A notification handled meanwhile makes the value read redundant, and it may be older: the
        # notification of a press made just after the read is handled as the bus's messages are read,
        # this coroutine resumes with the value read only on a later turn of the loop, and that older
        # value would look like a counter that went back (a new battery: a false new series of
        # presses). Every press since the subscription is notified, and its counter counts the ones
        # before it.
        if not notified:
            self.on_state_value(value, "reconnect")
        await self.read_battery(client)
