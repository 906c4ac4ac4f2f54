"""Supervision: a failure belongs to the part that failed.

A ``CancelledError`` that reaches a device's task while nobody cancelled it (a driver library leaking a
cancelled future of its own, as bleak / dbus-fast can on a timeout: hbldh/bleak-retry-connector#109) is
that driver's failure: logged as a bug, counted, the device in ``error``, restarted with backoff. Only a
cancellation of the task itself (the gateway stopping, the device removed) stops it, promptly.

The drivers here are real :class:`~drivers.base.Driver` kinds (registered for the test), run by the
real :class:`~gateway.devices.DeviceManager` and :class:`~gateway.supervisor.DeviceSupervisor`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

import pytest

import gateway.supervisor
from drivers.aio import cancel_and_wait
from drivers.base import (
    DRIVERS,
    DeviceSpec,
    DeviceStatus,
    Driver,
    DriverContext,
    LinkState,
    Reading,
    ReadingSink,
    TransientDeviceError,
)
from drivers.options import DriverOptions
from drivers.reconnect import Backoff, ConnState, Reconnector, link_state
from gateway.devices import DeviceManager
from gateway.errors import CommandRejected
from gateway.registry import Registry
from tests.helpers import until

LEAK_AFTER_S = 0.05


async def leaked_cancellation() -> None:
    """What bleak does on a D-Bus timeout: await a future that *another* party cancels. The
    ``CancelledError`` reaches the awaiting task although nobody cancelled that task."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    loop.call_later(LEAK_AFTER_S, fut.cancel)
    await fut


class LeakyDriver(Driver):
    """A driver whose library leaks a cancellation out of ``run()``."""

    kind = "test-leaky"
    transport = "test"
    Options = DriverOptions
    runs = 0

    async def run(self) -> None:
        type(self).runs += 1
        self.sink(DeviceStatus(self.device_id, self.clock(), LinkState.CONNECTED))
        await leaked_cancellation()


class LeakyLinkDriver(Driver):
    """A driver built as the real ones are: a :class:`Reconnector` around a session whose library
    leaks a cancellation once connected."""

    kind = "test-leaky-link"
    transport = "test"
    Options = DriverOptions
    runs = 0

    def __init__(self, spec: DeviceSpec, sink: ReadingSink, ctx: DriverContext) -> None:
        super().__init__(spec, sink, ctx)
        self.reconnector = Reconnector(
            f"device {self.device_id}",
            self._session,
            backoff=Backoff(base_s=0.02, cap_s=0.05),
            on_state=self._on_state,
        )

    def _on_state(self, state: ConnState, error: BaseException | None) -> None:
        said = link_state(state, error)
        if said is not None:
            link, reason = said
            self.sink(DeviceStatus(self.device_id, self.clock(), link, reason=reason))

    async def _session(self) -> None:
        self.reconnector.mark_connected()
        await leaked_cancellation()

    async def run(self) -> None:
        type(self).runs += 1
        await self.reconnector.run()


class QuietDriver(Driver):
    """A driver that serves its device until cancelled, as it should."""

    kind = "test-quiet"
    transport = "test"
    Options = DriverOptions

    async def run(self) -> None:
        self.sink(DeviceStatus(self.device_id, self.clock(), LinkState.CONNECTED))
        await asyncio.Event().wait()


@pytest.fixture(autouse=True)
def _kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    for cls in (LeakyDriver, LeakyLinkDriver, QuietDriver):
        monkeypatch.setitem(DRIVERS, cls.kind, f"{__name__}:{cls.__name__}")
    LeakyDriver.runs = LeakyLinkDriver.runs = 0
    monkeypatch.setattr(gateway.supervisor, "RESTART_BASE_S", 0.02)  # restarts within the test
    monkeypatch.setattr(gateway.supervisor, "RESTART_CAP_S", 0.05)


def spec(device_id: str, kind: str) -> DeviceSpec:
    return DeviceSpec(device_id, kind, "test", DriverOptions())


def manager(tmp_path: Path, specs: tuple[DeviceSpec, ...], sink: list[Reading]) -> DeviceManager:
    registry = Registry(tmp_path / "registry.sqlite3")
    dm = DeviceManager(sink.append, registry, specs, DriverContext(state_dir=tmp_path / "devices"))
    dm.start_all()
    return dm


def states(seen: list[Reading], device_id: str, state: LinkState) -> list[DeviceStatus]:
    return [r for r in seen if isinstance(r, DeviceStatus) and r.device_id == device_id and r.state is state]


def test_a_cancellation_leaked_by_a_driver_library_is_its_failure_and_it_restarts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Reading] = []
    dm = manager(tmp_path, (spec("leaky-1", "test-leaky"), spec("quiet-1", "test-quiet")), seen)

    async def go() -> float:
        task = asyncio.create_task(dm.run())
        await until(lambda: len(states(seen, "leaky-1", LinkState.ERROR)) >= 3, 10, "three failures of leaky-1")
        dev_task = dm.tasks["leaky-1"]
        assert not dev_task.done(), "the device's supervisor goes on"
        assert not task.done()
        t0 = time.monotonic()
        task.cancel()  # the gateway stopping: a real cancellation
        with pytest.raises(asyncio.CancelledError):
            await task
        assert dev_task.cancelled()
        return time.monotonic() - t0

    with caplog.at_level(logging.ERROR, logger="gateway.supervisor"):
        stop_s = asyncio.run(go())
    sup = dm.supervisors["leaky-1"]
    assert LeakyDriver.runs >= 3, "restarted after each failure"
    assert sup.failures >= 3 and sup.bugs.count == sup.failures
    assert dm.bugs() == sup.bugs.count, "counted in the daemon's bugs (devices)"
    error = states(seen, "leaky-1", LinkState.ERROR)[0]
    assert error.reason is not None and error.reason.startswith("driver failed: CancelledError")
    assert error.counters["bugs"] >= 1 and error.counters["driver_restarts"] >= 1
    bugs = [r for r in caplog.records if r.levelno == logging.ERROR and "device leaky-1: driver failed" in r.message]
    assert len(bugs) == 1, "the first at ERROR, its repeats rate limited"
    assert bugs[0].exc_info is not None, "with its traceback"
    # the other device was never touched, and the stop is prompt
    assert not states(seen, "quiet-1", LinkState.ERROR) and dm.supervisors["quiet-1"].failures == 0
    assert stop_s < 0.5


def test_a_cancellation_leaked_in_a_reconnector_session_is_a_bug_and_it_reconnects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Reading] = []
    dm = manager(tmp_path, (spec("link-1", "test-leaky-link"),), seen)

    async def go() -> tuple[Reconnector, float]:
        task = asyncio.create_task(dm.run())
        await until(lambda: len(states(seen, "link-1", LinkState.ERROR)) >= 3, 10, "three session failures")
        driver = dm.drivers["link-1"]
        assert isinstance(driver, LeakyLinkDriver)
        t0 = time.monotonic()
        await dm.stop_all()  # as the daemon's stop does
        elapsed = time.monotonic() - t0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return driver.reconnector, elapsed

    with caplog.at_level(logging.ERROR, logger="drivers.reconnect"):
        rc, stop_s = asyncio.run(go())
    sup = dm.supervisors["link-1"]
    assert rc.connects >= 3 and rc.failures >= 3 and rc.bugs.count == rc.failures, "reconnected each time"
    assert sup.failures == 0 and LeakyLinkDriver.runs == 1, "handled in the driver's own reconnector"
    assert sup.bug_count() == rc.bugs.count
    # (rc.last_error is cleared by the reconnect that may come just before the stop: the states say it)
    reasons = [s.reason or "" for s in states(seen, "link-1", LinkState.ERROR)]
    assert reasons and all(r.startswith("internal error: CancelledError") for r in reasons), reasons
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)
    assert rc.state is ConnState.STOPPED and stop_s < 0.5


def test_a_real_cancellation_stops_a_supervised_driver_promptly_and_is_no_failure(tmp_path: Path) -> None:
    seen: list[Reading] = []
    dm = manager(tmp_path, (spec("quiet-1", "test-quiet"),), seen)

    async def go() -> float:
        task = asyncio.create_task(dm.run())
        await until(lambda: states(seen, "quiet-1", LinkState.CONNECTED), 5, "quiet-1 connected")
        dev_task = dm.tasks["quiet-1"]
        t0 = time.monotonic()
        await cancel_and_wait(dev_task, limit_s=2.0)  # the device removed
        elapsed = time.monotonic() - t0
        assert dev_task.cancelled()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return elapsed

    assert asyncio.run(go()) < 0.2
    sup = dm.supervisors["quiet-1"]
    assert sup.failures == 0 and sup.bugs.count == 0 and not states(seen, "quiet-1", LinkState.ERROR)


def test_a_real_cancellation_of_a_reconnector_stops_it_without_a_failure() -> None:
    async def go() -> Reconnector:
        rc: Reconnector

        async def session() -> None:
            rc.mark_connected()
            await asyncio.Event().wait()

        rc = Reconnector("t", session, backoff=Backoff(base_s=0.01, cap_s=0.02))
        task = asyncio.create_task(rc.run())
        await until(lambda: rc.connects == 1, 5, "connected")
        await cancel_and_wait(task, limit_s=1.0)
        assert task.cancelled()
        return rc

    rc = asyncio.run(go())
    assert rc.failures == 0 and rc.bugs.count == 0 and rc.state is ConnState.STOPPED


def test_a_sink_that_fails_on_a_devices_error_state_stops_no_other_device(tmp_path: Path) -> None:
    """The supervisor's own report of a failure: raised out of it, it ended the devices' TaskGroup, the
    SOS receiver's supervisor with it, and then the daemon's."""
    seen: list[Reading] = []

    def sink(reading: Reading) -> None:
        if isinstance(reading, DeviceStatus) and reading.state is LinkState.ERROR:
            raise ValueError("the state message cannot be built")
        seen.append(reading)

    registry = Registry(tmp_path / "registry.sqlite3")
    specs = (spec("leaky-1", "test-leaky"), spec("quiet-1", "test-quiet"))
    dm = DeviceManager(sink, registry, specs, DriverContext(state_dir=tmp_path / "devices"))
    dm.start_all()

    async def go() -> None:
        task = asyncio.create_task(dm.run())
        await until(lambda: task.done() or LeakyDriver.runs >= 3, 10, "leaky-1 restarted twice")
        assert not task.done() and not dm.tasks["quiet-1"].done(), "the other device goes on"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    sup = dm.supervisors["leaky-1"]
    assert sup.failures >= 2 and sup.bugs.count == 2 * sup.failures, "the failure and the lost report counted"


def test_a_state_callback_that_fails_does_not_end_the_reconnect_loop() -> None:
    """The uplink and the SMS modem are a Reconnector each, with nobody above them but the daemon's
    TaskGroup: a bug in reporting a state (outside the session) ended the loop, and the daemon."""

    async def go() -> Reconnector:
        rc: Reconnector

        def on_state(state: ConnState, error: BaseException | None) -> None:
            raise RuntimeError(f"cannot report {state.value}")

        async def session() -> None:
            rc.mark_connected()
            raise TransientDeviceError("link dropped")

        rc = Reconnector("t", session, backoff=Backoff(base_s=0.01, cap_s=0.02), on_state=on_state)
        task = asyncio.create_task(rc.run())
        await until(lambda: task.done() or rc.connects >= 3, 5, "three connections")
        assert not task.done(), "the loop goes on"
        await cancel_and_wait(task, limit_s=1.0)
        assert task.cancelled()
        return rc

    rc = asyncio.run(go())
    assert rc.failures >= 3 and rc.state is ConnState.STOPPED
    assert rc.bugs.count >= 3 * rc.connects, "connecting, connected and backoff reports, each counted"


def test_a_device_listener_that_fails_stops_neither_the_devices_nor_the_other_listeners(tmp_path: Path) -> None:
    """The devices start inside the daemon's TaskGroup and tell their listeners (the pipeline, the
    registry's record): an exception out of one (the review's case: a registry write that failed at the
    start) ended the daemon, the SOS path with it."""
    seen: list[Reading] = []
    told: list[str] = []

    def broken(device_id: str, kind: str) -> None:
        raise sqlite3.OperationalError("database is locked")

    registry = Registry(tmp_path / "registry.sqlite3")
    specs = (spec("quiet-1", "test-quiet"), spec("quiet-2", "test-quiet"))
    dm = DeviceManager(seen.append, registry, specs, DriverContext(state_dir=tmp_path / "devices"))
    dm.on_change.extend([broken, lambda device_id, kind: told.append(device_id)])
    dm.start_all()

    async def go() -> None:
        task = asyncio.create_task(dm.run())
        await until(lambda: task.done() or len(states(seen, "quiet-2", LinkState.CONNECTED)) == 1, 10, "started")
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert told == ["quiet-1", "quiet-2"] and dm.bugs() == 2, "each listener's bug counted, the others told"
    assert states(seen, "quiet-1", LinkState.CONNECTED), "both devices run"


def test_a_device_the_registry_cannot_store_is_refused_and_not_started(tmp_path: Path) -> None:
    """Added at run time, a device is stored before it starts: one that ran unstored was gone after the
    next restart (an SOS button the cloud believed added)."""
    seen: list[Reading] = []
    dm = manager(tmp_path, (), seen)
    other = sqlite3.connect(tmp_path / "registry.sqlite3", isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")  # the registry's write fails (after its busy timeout)
    try:
        with pytest.raises(CommandRejected) as refused:
            dm.add({"id": "quiet-9", "kind": "test-quiet", "transport": "test"})
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert refused.value.code == "unavailable" and "could not be stored" in refused.value.reason
    assert "quiet-9" not in dm.supervisors
    dm.add({"id": "quiet-9", "kind": "test-quiet", "transport": "test"})
    assert "quiet-9" in dm.supervisors and [d["id"] for d in dm.registry.managed_devices()] == ["quiet-9"]


def test_a_device_added_on_a_port_or_address_in_use_is_refused_as_a_conflict(tmp_path: Path) -> None:
    """The cloud must not be able to take the SOS receiver's port, nor the SMS modem's; nor may a
    device's options carry an id, kind or transport of their own (they overrode the checked ones)."""
    registry = Registry(tmp_path / "registry.sqlite3")
    modem = {"serial port /dev/serial/by-id/usb-modem": "the SMS modem"}
    dm = DeviceManager([].append, registry, (), DriverContext(state_dir=tmp_path / "d"), reserved=modem)

    def cms50(dev_id: str, port: str) -> dict[str, object]:
        return {"id": dev_id, "kind": "serial-cms50", "transport": "serial", "options": {"port": port}}

    dm.add(cms50("ox-1", "/dev/serial/by-id/usb-ox"))
    refused = []
    for raw in (
        cms50("ox-2", "/dev/serial/by-id/usb-ox"),
        cms50("ox-3", "/dev/serial/by-id/usb-modem"),
        {"id": "ox-4", "kind": "serial-cms50", "transport": "serial", "options": {"port": "/dev/x", "id": "ox-1"}},
    ):
        with pytest.raises(CommandRejected) as info:
            dm.add(raw)
        refused.append((info.value.code, info.value.key, info.value.reason))
    assert refused[0][:2] == ("conflict", "port") and "device ox-1" in refused[0][2]
    assert refused[1][:2] == ("conflict", "port") and "the SMS modem" in refused[1][2]
    assert refused[2][:2] == ("invalid", "id")
    assert list(dm.supervisors) == ["ox-1"] and [d["id"] for d in registry.managed_devices()] == ["ox-1"]
