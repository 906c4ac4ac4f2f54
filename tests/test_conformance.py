"""The driver contract, checked for every registered kind in the same way (as python-can's back-to-back
tests check every interface): a kind is run through its simulator at the lowest layer (bytes on a pty,
BlueZ's D-Bus API) and must

- start and stop twice (a fresh driver each time), reporting ``connected`` and then ``disconnected``
  ("gateway stopped") on each run, and ending promptly when cancelled;
- end promptly when cancelled while still connecting (the device not there);
- report the unplug and the replug (``disconnected``, then ``connected`` again) without a restart;
- survive garbage on the line (or a malformed value over the air): counted, still connected, no bug.

Every kind of ``drivers.base.DRIVERS`` needs a rig here (one class: how its simulator is started,
unplugged, replugged and fed garbage); a new kind without one fails :func:`test_every_kind_has_a_rig`.
Its options are checked value by value in tests/test_options.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from drivers.base import DRIVERS, DeviceSpec, DeviceStatus, Driver, DriverContext, LinkState, driver_class
from drivers.ble import gatt
from drivers.ble.manager import BleStack
from simulators.bluez.bthome import BthomeButton
from simulators.bluez.core import Peripheral
from simulators.bluez.peripherals import BpCuff, SosPendant, WristMonitor
from simulators.bp_sim import BpSimulator
from simulators.cms50_sim import Cms50Simulator
from simulators.rfxtrx_sim import RfxtrxSimulator
from tests.ble.util import Readings, virtual_bluez
from tests.helpers import until

STOP_WITHIN_S = 3.0
ADDRESS = "C0:FF:EE:00:00:42"


class Rig:
    """One kind's simulated device. Subclasses set ``kind`` and implement the four actions."""

    kind: ClassVar[str]
    garbage_counter: ClassVar[str] = "bad_values"
    connect_timeout_s: ClassVar[float] = 20.0

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def options(self) -> dict[str, Any]:
        raise NotImplementedError

    def context(self) -> DriverContext:
        return DriverContext(state_dir=self.tmp / "state")

    def running(self) -> contextlib.AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    async def unplug(self) -> None:
        raise NotImplementedError

    async def plug(self) -> None:
        raise NotImplementedError

    async def garbage(self) -> None:
        raise NotImplementedError


class SerialRig(Rig):
    sim: Any

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.link = tmp / "dev" / f"usb-{self.kind}-if00-port0"

    def options(self) -> dict[str, Any]:
        return {"port": str(self.link)}

    async def unplug(self) -> None:
        self.sim.unplug()

    async def plug(self) -> None:
        self.sim.plug()


class RfxtrxRig(SerialRig):
    kind = "rfxtrx-sos"
    garbage_counter = "garbage_bytes"

    def options(self) -> dict[str, Any]:
        return {**super().options(), "buttons": {"a1b2c3": "sos-1"}}

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with RfxtrxSimulator(self.link) as self.sim:
            yield

    async def garbage(self) -> None:
        self.sim.noise(64, random.Random(1))


class Cms50Rig(SerialRig):
    kind = "serial-cms50"
    protocol = "v7"
    garbage_counter = "garbage_bytes"

    def options(self) -> dict[str, Any]:
        return {**super().options(), "timezone": "UTC"}

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with Cms50Simulator(self.link, protocol=self.protocol, seed=2) as self.sim:
            yield

    async def garbage(self) -> None:
        self.sim.noise(64)


class Cms50LegacyRig(Cms50Rig):
    kind = "serial-cms50-legacy"
    protocol = "legacy"


class SerialBpRig(SerialRig):
    kind = "serial-bp"
    garbage_counter = "bad_frames"

    def options(self) -> dict[str, Any]:
        return {**super().options(), "timezone": "UTC", "poll_interval_s": 0.3}

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with BpSimulator(self.link) as self.sim:
            yield

    async def garbage(self) -> None:
        self.sim.noise_before_reply = 7  # line noise in front of the next answers
        await asyncio.sleep(1.0)
        self.sim.noise_before_reply = 0


class BleRig(Rig):
    peripheral: Peripheral

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.ble = BleStack()
        self.peripheral = self.make()

    def make(self) -> Peripheral:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return {"address": ADDRESS, "backoff_cap_s": 1.0, "find_timeout_s": 5.0}

    def context(self) -> DriverContext:
        return DriverContext(state_dir=self.tmp / "state", ble=self.ble)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with virtual_bluez([self.peripheral], supervision_timeout_s=0.5) as self.bluez, self.ble:
            yield

    async def unplug(self) -> None:
        await self.bluez.out_of_range(ADDRESS)

    async def plug(self) -> None:
        self.bluez.in_range(ADDRESS)


class WristRig(BleRig):
    kind = "ble-wrist"

    def make(self) -> Peripheral:
        return WristMonitor(ADDRESS)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "ppg": False}

    async def garbage(self) -> None:
        # flags say "RR intervals present", then nothing: a malformed Heart Rate Measurement
        await self.peripheral.notify(self.peripheral.characteristic(gatt.HEART_RATE_MEASUREMENT), b"\x10")


class CuffRig(BleRig):
    kind = "ble-bp-cuff"

    def make(self) -> Peripheral:
        return BpCuff(ADDRESS, records=0, always_advertise=True)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "timezone": "UTC"}

    async def garbage(self) -> None:
        await self.peripheral.notify(self.peripheral.characteristic(gatt.BLOOD_PRESSURE_MEASUREMENT), b"\x00\x01")


class SosRig(BleRig):
    kind = "ble-sos"

    def make(self) -> Peripheral:
        return SosPendant(ADDRESS)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "absent_after_s": 2.0}

    async def garbage(self) -> None:
        pendant = self.peripheral
        real = pendant.manufacturer_data
        pendant.manufacturer_data = lambda: {gatt.SOS_COMPANY_ID: b"\x01"}  # type: ignore[method-assign]
        await asyncio.sleep(1.0)
        pendant.manufacturer_data = real  # type: ignore[method-assign]


class SosNotifyRig(BleRig):
    kind = "ble-sos-notify"

    def make(self) -> Peripheral:
        return SosPendant(ADDRESS, notify=True)

    async def garbage(self) -> None:
        await self.peripheral.notify(self.peripheral.characteristic(gatt.SOS_PRESS), b"\x01")


class BthomeRig(BleRig):
    kind = "ble-bthome"

    def make(self) -> Peripheral:
        return BthomeButton(ADDRESS)  # in beacon mode: heard every second between presses

    def options(self) -> dict[str, Any]:
        return {**super().options(), "absent_after_s": 2.0}

    async def garbage(self) -> None:
        await self.peripheral.command("garbage", {"seconds": 1.0})
        await asyncio.sleep(1.0)


RIGS: dict[str, type[Rig]] = {
    r.kind: r
    for r in (RfxtrxRig, Cms50Rig, Cms50LegacyRig, SerialBpRig, WristRig, CuffRig, SosRig, SosNotifyRig, BthomeRig)
}


def test_every_kind_has_a_rig() -> None:
    missing = sorted(set(DRIVERS) - set(RIGS))
    assert not missing, f"kinds without a conformance rig in tests/test_conformance.py: {missing}"


def _driver(rig: Rig, sink: Readings) -> Driver:
    cls = driver_class(rig.kind)
    return cls(DeviceSpec("dev-1", rig.kind, cls.transport, rig.options()), sink, rig.context())


def _states(sink: Readings) -> list[DeviceStatus]:
    return sink.states("dev-1")


async def _connected(sink: Readings, after: int, timeout: float) -> None:
    await until(lambda: any(s.state is LinkState.CONNECTED for s in _states(sink)[after:]), timeout, "connected")


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    async with asyncio.timeout(STOP_WITHIN_S):
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def _serving(rig: Rig, sink: Readings) -> AsyncIterator[Driver]:
    """A driver of the rig's kind running and connected; stopped (promptly) at the end."""
    drv = _driver(rig, sink)
    task = asyncio.create_task(drv.run())
    try:
        await _connected(sink, 0, rig.connect_timeout_s)
        yield drv
        _no_bugs(drv)
    finally:
        await _stop(task)


def _no_bugs(driver: Driver) -> None:
    counters = driver.counters()
    assert counters.get("bugs", 0) == 0, counters
    reconnector = getattr(driver, "reconnector", None)
    assert reconnector is None or reconnector.bugs.count == 0, "an error nobody declared transient"


@pytest.mark.parametrize("kind", sorted(RIGS))
def test_start_and_stop_twice_reporting_each_transition(tmp_path: Path, kind: str) -> None:
    rig = RIGS[kind](tmp_path)
    sink = Readings()

    async def go() -> None:
        async with rig.running():
            for _ in range(2):
                before = len(_states(sink))
                drv = _driver(rig, sink)
                task = asyncio.create_task(drv.run())
                await _connected(sink, before, rig.connect_timeout_s)
                await _stop(task)
                last = _states(sink)[-1]
                assert last.state is LinkState.DISCONNECTED and last.reason == "gateway stopped", last
                _no_bugs(drv)

    asyncio.run(go())


@pytest.mark.parametrize("kind", sorted(RIGS))
def test_cancel_while_connecting_ends_promptly(tmp_path: Path, kind: str) -> None:
    rig = RIGS[kind](tmp_path)
    sink = Readings()

    async def go() -> None:
        async with rig.running():
            await rig.unplug()
            drv = _driver(rig, sink)
            task = asyncio.create_task(drv.run())
            await asyncio.sleep(0.5)
            await _stop(task)
            assert not any(s.state is LinkState.CONNECTED for s in _states(sink))
            _no_bugs(drv)

    asyncio.run(go())


@pytest.mark.parametrize("kind", sorted(RIGS))
def test_unplug_and_replug_are_reported_and_the_link_comes_back(tmp_path: Path, kind: str) -> None:
    rig = RIGS[kind](tmp_path)
    sink = Readings()

    async def go() -> None:
        async with rig.running(), _serving(rig, sink):
            mark = len(_states(sink))
            await rig.unplug()
            await until(
                lambda: any(s.state is LinkState.DISCONNECTED for s in _states(sink)[mark:]), 90, "disconnected"
            )
            mark = len(_states(sink))
            await rig.plug()
            await _connected(sink, mark, 60)

    asyncio.run(go())


@pytest.mark.parametrize("kind", sorted(RIGS))
def test_garbage_is_counted_and_the_link_stays_up(tmp_path: Path, kind: str) -> None:
    rig = RIGS[kind](tmp_path)
    sink = Readings()

    async def go() -> None:
        async with rig.running(), _serving(rig, sink) as drv:
            await asyncio.sleep(0.5)
            mark = len(_states(sink))
            await rig.garbage()
            await until(lambda: drv.counters().get(rig.garbage_counter, 0) > 0, 20, rig.garbage_counter)
            await asyncio.sleep(0.5)
            assert not [s for s in _states(sink)[mark:] if s.state is not LinkState.CONNECTED]

    asyncio.run(go())
