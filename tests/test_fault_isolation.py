"""Nothing outside the SOS path can break it, tried as a cloud platform and a device maker would: a real
gatewayd, a real Mosquitto, the RFXtrx receiver on a pty.

- every option of every registered kind, sent by ``cmd/device-add`` with a value of the right type the
  kind must refuse: ``ok: false`` naming the key, nothing stored, the daemon alive, an SOS press
  delivered afterwards, and a restart that comes up;
- a driver with a bug (a test-only kind registered through the ``homecare_gateway.drivers`` entry
  points, as a third-party package would): its device in ``error`` with the bug counted and logged at
  ERROR with its traceback, restarted with backoff; the other devices and the SOS path unaffected.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import textwrap
import time
from pathlib import Path
from typing import Any

from gateway.daemon import STOP_LIMIT_S
from simulators.broker import Mosquitto
from simulators.rfxtrx_sim import RfxtrxSimulator
from tests.helpers import (
    Cloud,
    Collector,
    GatewayProcess,
    gateway_config,
    rfxtrx_device,
    status_via_ctl,
    until,
    wait_for,
)
from tests.test_doctor import by_id as findings_by_id
from tests.test_doctor import run_doctor
from tests.test_options import minimal, refused_cases

GW = "gw-test"
BASE = f"homecare/v1/{GW}"
NO_BUS = {"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent"}  # doctor: no BlueZ to ask
MANY_COMMANDS = "[downlink]\nrate_burst = 1000\nrate_per_minute = 6000\n"


def test_hostile_device_add_for_every_kind_and_option_is_refused_by_key(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    link = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_HOSTILE-if00-port0"
    config = gateway_config(tmp_path, broker.port, devices=rfxtrx_device(link), extra=MANY_COMMANDS)
    gw = GatewayProcess(config)
    platform = Cloud(broker.port, BASE)
    cases = refused_cases()
    missing_address = ("ble-wrist", "address", None)  # the "no address at all"
    replies: list[tuple[tuple[str, str, Any], dict[str, Any]]] = []

    def onlines() -> int:
        return sum(1 for _, t, doc, _ in cloud.poll() if t == f"{BASE}/status" and doc.get("state") == "online")

    async def go() -> None:
        async with RfxtrxSimulator(link) as sim:
            gw.start()
            try:
                await until(lambda: sim.started, 20, "the receiver open")
                await until(lambda: onlines() == 1, what="online")
                await asyncio.sleep(0.3)  # subscribed to cmd/+ right after the birth message
                for i, (kind, key, value) in enumerate([*cases, missing_address]):
                    options = {**minimal(kind), key: value}
                    if value is None:
                        del options[key]
                    device = {"id": f"bad-{i}", "kind": kind, "options": options}
                    _, r = await asyncio.to_thread(
                        platform.ask, "device-add", {"request_id": f"h-{i}", "device": device}
                    )
                    replies.append(((kind, key, value), r))
                assert gw.alive(), gw.log()[-2000:]
                await sim.press(0xA1B2C3)
                await until(lambda: cloud.of_type("alert"), 20, "an SOS after the hostile commands")
                gw.terminate()
                # A restart comes up (nothing hostile was stored) and the SOS path works again.
                sim.started = False
                gw.start()
                await until(lambda: sim.started, 20, "the receiver open again")
                await until(lambda: onlines() == 2, 20, "online again after the restart")
                assert gw.alive(), gw.log()[-2000:]
                await sim.press(0xA1B2C3)
                await until(lambda: len(cloud.of_type("alert")) >= 2, 20, "an SOS after the restart")
                status = await asyncio.to_thread(status_via_ctl, config)
                assert status is not None
                assert not [d for d in status["devices"] if d["id"].startswith("bad-")], "nothing hostile stored"
            finally:
                gw.stop_quietly()
                platform.close()

    asyncio.run(go())
    assert len(replies) == len(cases) + 1
    for (kind, key, value), r in replies:
        assert r["ok"] is False, (kind, key, value, r)
        assert r["error"]["code"] == "invalid" and r["error"].get("key") == key, (kind, key, r)
        assert key in r["error"]["reason"], r
    assert "Traceback" not in gw.log()


FAULTY_KIND = '''
"""A test-only device kind with a bug: it raises AttributeError from run() soon after it starts."""
import asyncio
from dataclasses import dataclass

from drivers.base import Driver, DeviceStatus, LinkState
from drivers.options import DriverOptions, option


@dataclass(frozen=True)
class FaultyOptions(DriverOptions):
    fail_after_s: float = option(0.3, lo=0, hi=60, unit="seconds")


class FaultyDriver(Driver):
    kind = "test-faulty"
    transport = "test"
    Options = FaultyOptions
    summary = "a driver with a bug, for the fault-isolation test"

    async def run(self) -> None:
        self.sink(DeviceStatus(self.device_id, self.clock(), LinkState.CONNECTED))
        await asyncio.sleep(self.spec.options.fail_after_s)
        port = None
        port.read()  # the bug
'''


STUCK_KIND = '''
"""A test-only device kind that ignores its cancellation (a driver blocked in a library that swallows it)."""
import asyncio
from dataclasses import dataclass

from drivers.base import Driver
from drivers.options import DriverOptions


@dataclass(frozen=True)
class StuckOptions(DriverOptions):
    pass


class StuckDriver(Driver):
    kind = "test-stuck"
    transport = "test"
    Options = StuckOptions
    summary = "a driver that never stops, for the stop-deadline test"

    async def run(self) -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass  # the bug: it will not stop
'''


BLOCKING_KIND = '''
"""A test-only device kind that blocks the event loop (a blocking library call in async code)."""
import asyncio
import time
from dataclasses import dataclass

from drivers.base import Driver
from drivers.options import DriverOptions


@dataclass(frozen=True)
class BlockingOptions(DriverOptions):
    pass


class BlockingDriver(Driver):
    kind = "test-blocking"
    transport = "test"
    Options = BlockingOptions
    summary = "a driver that blocks the event loop for 1.5 s every 4 s, for the loop watch test"

    async def run(self) -> None:
        while True:
            await asyncio.sleep(2.5)
            time.sleep(1.5)  # the bug: every part of the daemon waits for it
'''


LEAKY_KIND = '''
"""A test-only device kind whose library leaks a cancellation: it awaits a future someone else cancels (as
bleak / dbus-fast can on a timeout), so a CancelledError reaches a task nobody cancelled."""
import asyncio
from dataclasses import dataclass

from drivers.base import Driver, DeviceStatus, LinkState
from drivers.options import DriverOptions


@dataclass(frozen=True)
class LeakyOptions(DriverOptions):
    pass


class LeakyDriver(Driver):
    kind = "test-leaky"
    transport = "test"
    Options = LeakyOptions
    summary = "a driver whose library leaks a cancellation, for the fault-isolation test"

    async def run(self) -> None:
        self.sink(DeviceStatus(self.device_id, self.clock(), LinkState.CONNECTED))
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.call_later(0.3, fut.cancel)  # the library's own timeout, cancelling its own future
        await fut
'''


def _faulty_plugin(root: Path) -> Path:
    """A package registering the kind through the entry points, as a device maker's package would."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "faulty_kind.py").write_text(textwrap.dedent(FAULTY_KIND))
    (root / "stuck_kind.py").write_text(textwrap.dedent(STUCK_KIND))
    (root / "leaky_kind.py").write_text(textwrap.dedent(LEAKY_KIND))
    (root / "blocking_kind.py").write_text(textwrap.dedent(BLOCKING_KIND))
    info = root / "faulty_kind-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: faulty-kind\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[homecare_gateway.drivers]\ntest-faulty = faulty_kind:FaultyDriver\ntest-stuck = stuck_kind:StuckDriver\n"
        "test-leaky = leaky_kind:LeakyDriver\ntest-blocking = blocking_kind:BlockingDriver\n"
    )
    return root


def test_a_driver_bug_is_its_devices_error_and_the_sos_path_carries_on(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    link = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_BUG-if00-port0"
    faulty = '\n[[devices]]\nid = "buggy-1"\nkind = "test-faulty"\ntransport = "test"\n'
    config = gateway_config(tmp_path, broker.port, devices=rfxtrx_device(link) + faulty)
    plugin = _faulty_plugin(tmp_path / "plugin")
    env = {"PYTHONPATH": str(plugin)}
    gw = GatewayProcess(config, env=env)

    def states(device_id: str) -> list[dict[str, Any]]:
        return [doc for _, topic, doc, _ in cloud.poll() if topic == f"{BASE}/device/{device_id}/state"]

    async def go() -> dict[str, Any]:
        async with RfxtrxSimulator(link) as sim:
            gw.start()
            try:
                await until(lambda: sim.started, 20, "the receiver open")
                errors = await until(
                    lambda: [s for s in states("buggy-1") if s["state"] == "error"], 20, "the buggy device in error"
                )
                assert "AttributeError" in errors[0]["reason"]
                # restarted with backoff: it connects again and fails again
                await until(lambda: len([s for s in states("buggy-1") if s["state"] == "error"]) >= 2, 20, "a retry")
                await sim.press(0xA1B2C3)
                await until(lambda: cloud.of_type("alert"), 20, "the SOS while the buggy driver fails")
                status = await asyncio.to_thread(status_via_ctl, config, env)
                assert status is not None
                assert gw.alive()
                return status
            finally:
                gw.stop_quietly()

    status = asyncio.run(go())
    assert status["bugs"]["devices"] >= 2 and status["bugs"]["total"] >= status["bugs"]["devices"]
    by_id = {d["id"]: d for d in status["devices"]}
    assert by_id["buggy-1"]["counters"]["bugs"] >= 2
    assert by_id["rfx"]["state"] == "connected", "the other device carries on"
    log = gw.log()
    assert log.count("ERROR gateway.supervisor: device buggy-1: driver failed: AttributeError") == 1, (
        "the first bug at ERROR, its repeats rate limited"
    )
    assert "Traceback" in log and "port.read()" in log
    assert json.dumps(status).count("buggy-1") >= 1


def test_a_cancellation_leaked_by_a_driver_library_is_its_devices_error_and_it_restarts(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    """A CancelledError out of a driver that nobody cancelled used to end its device for good, unseen
    (the supervisor re-raised it; a TaskGroup ignores a child that ends cancelled)."""
    link = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_LEAK-if00-port0"
    leaky = '\n[[devices]]\nid = "leaky-1"\nkind = "test-leaky"\ntransport = "test"\n'
    config = gateway_config(tmp_path, broker.port, devices=rfxtrx_device(link) + leaky)
    env = {"PYTHONPATH": str(_faulty_plugin(tmp_path / "plugin"))}
    gw = GatewayProcess(config, env=env)

    def errors() -> list[dict[str, Any]]:
        topic = f"{BASE}/device/leaky-1/state"
        return [doc for _, t, doc, _ in cloud.poll() if t == topic and doc["state"] == "error"]

    async def go() -> dict[str, Any]:
        async with RfxtrxSimulator(link) as sim:
            gw.start()
            try:
                await until(lambda: sim.started, 20, "the receiver open")
                await until(lambda: len(errors()) >= 2, 20, "the leaky device in error, restarted, in error again")
                await sim.press(0xA1B2C3)
                await until(lambda: cloud.of_type("alert"), 20, "the SOS while the leaky driver fails")
                status = await asyncio.to_thread(status_via_ctl, config, env)
                assert status is not None
                assert gw.alive()
                assert gw.terminate() < STOP_LIMIT_S and gw.proc is not None
                assert gw.proc.returncode == 0, "an orderly stop, not held up by the restarting device"
                return status
            finally:
                gw.stop_quietly()

    status = asyncio.run(go())
    assert errors()[0]["reason"].startswith("driver failed: CancelledError")
    assert status["bugs"]["devices"] >= 2
    by_id = {d["id"]: d for d in status["devices"]}
    assert by_id["leaky-1"]["counters"]["driver_restarts"] >= 2
    assert by_id["rfx"]["state"] == "connected", "the other device carries on"
    log = gw.log()
    assert log.count("ERROR gateway.supervisor: device leaky-1: driver failed: CancelledError") == 1
    assert "Traceback" in log and "await fut" in log
    assert "stop did not finish" not in log


def _stuck_gateway(tmp_path: Path, broker: Mosquitto, link: Path) -> tuple[GatewayProcess, Path]:
    stuck = '\n[[devices]]\nid = "stuck-1"\nkind = "test-stuck"\ntransport = "test"\n'
    config = gateway_config(tmp_path, broker.port, devices=rfxtrx_device(link) + stuck)
    return GatewayProcess(config, env={"PYTHONPATH": str(_faulty_plugin(tmp_path / "plugin"))}), config


def test_a_part_that_will_not_stop_cannot_hold_the_stop_past_its_limit(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    link = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_STUCK-if00-port0"
    gw, _ = _stuck_gateway(tmp_path, broker, link)

    async def go() -> tuple[float, int]:
        async with RfxtrxSimulator(link) as sim:
            gw.start()
            try:
                await until(lambda: sim.started, 20, "the receiver open")
                await sim.press(0xA1B2C3)
                await until(lambda: cloud.of_type("alert"), 20, "the SOS")
                await asyncio.sleep(1.2)
                await sim.press(0xA1B2C3)  # pressed just before the stop: must be committed
                await asyncio.sleep(0.2)
                assert gw.proc is not None
                t0 = time.monotonic()
                gw.proc.send_signal(signal.SIGTERM)
                await until(lambda: not gw.alive(), 3 * STOP_LIMIT_S, "gatewayd to exit")
                return time.monotonic() - t0, gw.reap()
            finally:
                gw.stop_quietly()

    elapsed, code = asyncio.run(go())
    print(f"\nstopped {elapsed:.2f} s after SIGTERM with a driver that ignores cancellation (exit {code})")
    assert elapsed <= STOP_LIMIT_S
    log = gw.log()
    assert "device stuck-1 did not end within" in log and "stop did not finish" in log
    assert code == 1, "a stop cut short by its deadline says so in the exit status"
    db = sqlite3.connect(tmp_path / "data" / "outbox.sqlite3")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        bodies = [json.loads(b) for (b,) in db.execute("SELECT body FROM msg")]
    finally:
        db.close()
    alerts = {a["alert_id"] for a in cloud.of_type("alert")} | {b["alert_id"] for b in bodies if b["type"] == "alert"}
    assert len(alerts) == 2, "both presses reached the cloud or the disk"


def test_a_second_sigterm_exits_at_once(tmp_path: Path, broker: Mosquitto, cloud: Collector) -> None:
    link = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_TWICE-if00-port0"
    gw, _ = _stuck_gateway(tmp_path, broker, link)

    async def go() -> float:
        async with RfxtrxSimulator(link) as sim:
            gw.start()
            try:
                await until(lambda: sim.started, 20, "the receiver open")
                assert gw.proc is not None
                gw.proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                t0 = time.monotonic()
                gw.proc.send_signal(signal.SIGTERM)
                await until(lambda: not gw.alive(), 3 * STOP_LIMIT_S, "gatewayd to exit")
                elapsed = time.monotonic() - t0
                gw.reap()
                return elapsed
            finally:
                gw.stop_quietly()

    elapsed = asyncio.run(go())
    print(f"\nexited {elapsed:.2f} s after the second SIGTERM")
    assert "second stop request: exiting now" in gw.log()
    assert "stop did not finish" not in gw.log(), "it left before the deadline"
    assert elapsed < STOP_LIMIT_S - 1.0


def test_a_stored_device_that_no_longer_validates_is_reported_and_skipped(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    """As an older gateway (or a hand-edited registry) could have stored: the home still starts, the SOS
    path works, and status, gatewayctl and doctor name the device and why."""
    from gateway.registry import Registry

    link = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_STORED-if00-port0"
    config = gateway_config(tmp_path, broker.port, devices=rfxtrx_device(link))
    (tmp_path / "data").mkdir()
    with Registry(tmp_path / "data" / "registry.json") as reg:
        reg.add_managed({"id": "bp-mars", "kind": "serial-bp", "options": {"port": "/dev/x", "timezone": "Mars/Base"}})
        reg.add_managed({"id": "gone-1", "kind": "no-such-kind", "options": {}})
    gw = GatewayProcess(config)

    async def go() -> dict[str, Any]:
        async with RfxtrxSimulator(link) as sim:
            gw.start()
            try:
                await until(lambda: sim.started, 20, "the receiver open despite the bad stored devices")
                await sim.press(0xA1B2C3)
                await until(lambda: cloud.of_type("alert"), 20, "the SOS")
                status = await asyncio.to_thread(status_via_ctl, config)
                assert status is not None
                return status
            finally:
                gw.stop_quietly()

    status = asyncio.run(go())
    by_id = {d["id"]: d for d in status["devices"]}
    assert by_id["bp-mars"]["state"] == "error" and "timezone = 'Mars/Base'" in by_id["bp-mars"]["reason"]
    assert by_id["gone-1"]["state"] == "error" and "kind" in by_id["gone-1"]["reason"]
    log = gw.log()
    assert "ERROR gateway.devices: device bp-mars: stored device no longer valid, not started" in log


def test_a_driver_that_blocks_the_event_loop_is_seen_and_the_sos_still_arrives(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    """A blocking call in a driver's async code stops every part of the daemon while it lasts: the SOS
    waits behind it, and nothing in the device's own state shows it. The loop watch (gateway/loopwatch.py)
    sees the daemon wake late and says so: ``loop.stalls`` in the status, one WARNING in the log."""
    link = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_BLOCK-if00-port0"
    blocking = '\n[[devices]]\nid = "blocking-1"\nkind = "test-blocking"\ntransport = "test"\n'
    config = gateway_config(tmp_path, broker.port, devices=rfxtrx_device(link) + blocking)
    env = {"PYTHONPATH": str(_faulty_plugin(tmp_path / "plugin"))}
    gw = GatewayProcess(config, env=env)

    async def go() -> dict[str, Any]:
        async with RfxtrxSimulator(link) as sim:
            gw.start()
            try:
                await until(lambda: sim.started, 20, "the receiver open")

                def stalled() -> dict[str, Any] | None:
                    st = status_via_ctl(config, env)
                    return st if st is not None and st["loop"]["stalls"] >= 2 else None

                await asyncio.to_thread(wait_for, stalled, 30, 0.5, "two stalls in the status")
                await sim.press(0xA1B2C3)
                await until(lambda: cloud.of_type("alert"), 20, "the SOS while the driver blocks the loop")
                status = await asyncio.to_thread(status_via_ctl, config, env)
                assert status is not None and gw.alive()
                _, report, _ = await asyncio.to_thread(run_doctor, config, "--json", env={**env, **NO_BUS})
                return {**status, "doctor": findings_by_id(report)["daemon"]}
            finally:
                gw.stop_quietly()

    status = asyncio.run(go())
    doctor = status["doctor"]
    assert doctor["status"] == "warn" and "event loop was blocked" in doctor["message"], doctor
    loop = status["loop"]
    assert loop["stalls"] >= 2 and loop["max_lag_ms"] >= loop["stall_ms"] and loop["last_stall_ms"] is not None
    log = gw.log()
    assert log.count("WARNING gateway.loopwatch: event loop: blocked") == 1, "the first stall at WARNING only"
    by_id = {d["id"]: d for d in status["devices"]}
    assert by_id["rfx"]["state"] == "connected"
