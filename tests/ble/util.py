"""The virtual BlueZ on a private dbus-daemon for one test, and drivers collecting their readings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from drivers.aio import cancel_and_wait
from drivers.base import DeviceSpec, DeviceStatus, Driver, DriverContext, LinkState, Reading, driver_class
from drivers.ble.manager import BleStack
from drivers.ble.stack import close_bleak
from simulators.bluez.bus import PrivateBus
from simulators.bluez.core import Peripheral, VirtualBlueZ


@contextlib.asynccontextmanager
async def virtual_bluez(peripherals: list[Peripheral], **kw: Any) -> AsyncIterator[VirtualBlueZ]:
    """Private bus + virtual BlueZ; bleak of this event loop is pointed at it (and released after)."""
    workdir = Path(tempfile.mkdtemp(prefix="hcb-", dir="/tmp"))  # short: a Unix socket path
    bus = PrivateBus(workdir)
    bus.start()
    old = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address
    sim = VirtualBlueZ(bus.address, peripherals, **kw)
    try:
        await sim.start()
        yield sim
    finally:
        await close_bleak()
        await sim.stop()
        bus.stop()
        if old is None:
            os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
        else:
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = old
        shutil.rmtree(workdir, ignore_errors=True)


class Readings:
    """A driver's sink: everything it emitted, with arrival times."""

    def __init__(self) -> None:
        self.items: list[tuple[float, Reading]] = []

    def __call__(self, reading: Reading) -> None:
        self.items.append((time.monotonic(), reading))

    def of(self, cls: type[Any], device_id: str | None = None) -> list[Any]:
        return [r for _, r in self.items if isinstance(r, cls) and (device_id is None or r.device_id == device_id)]

    def states(self, device_id: str) -> list[DeviceStatus]:
        return [r for r in self.of(DeviceStatus, device_id)]

    def connected_at(self, device_id: str, after: float = 0.0) -> float | None:
        for at, r in self.items:
            if at > after and isinstance(r, DeviceStatus) and r.device_id == device_id:
                if r.state is LinkState.CONNECTED:
                    return at
        return None


def make_driver(
    kind: str,
    device_id: str,
    address: str,
    sink: Readings,
    *,
    ble: BleStack | None = None,
    synchronised: bool = False,
    **options: Any,
) -> Driver:
    """A driver of ``kind`` with its default options but ``address`` and ``options``, on a BLE stack of
    its own unless ``ble`` is given (:func:`running` enters the stacks of the drivers it runs), on a
    gateway clock that is ``synchronised`` or not."""
    cls = driver_class(kind)
    spec = DeviceSpec(device_id, kind, cls.transport, {"address": address, **options})
    ctx = DriverContext(ble=ble if ble is not None else BleStack(), clock_synchronised=lambda: synchronised)
    return cls(spec, sink, ctx)


@contextlib.asynccontextmanager
async def running(*drivers: Driver) -> AsyncIterator[None]:
    """The drivers' ``run`` as tasks, cancelled (and awaited) at the end."""
    stacks = contextlib.AsyncExitStack()
    for ble in {id(d.ctx.ble): d.ctx.ble for d in drivers if d.ctx.ble is not None}.values():
        if not ble.running:
            await stacks.enter_async_context(ble)
    tasks = [asyncio.create_task(d.run(), name=f"driver {d.device_id}") for d in drivers]
    try:
        yield
    finally:
        await cancel_and_wait(*tasks)  # bounded, and a lost cancellation is sent again
        await stacks.aclose()
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
