"""Bounded shutdown, as on every system shutdown: bluetoothd, the system bus, the network and the USB
devices go away around the same second as gatewayd is told to stop. A real gatewayd with an RFXtrx
receiver and an oximeter on ptys, a BLE pendant and cuff on the virtual BlueZ of a private bus, and a
real Mosquitto: all of them vanish in the same second as the SIGTERM.

The exit is bounded by the daemon itself (an orderly stop, or its stop deadline): the 5 s asserted here
is the daemon's own limit (``gateway.daemon.STOP_LIMIT_S``), a behaviour, not a speed figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

from gateway.daemon import STOP_LIMIT_S
from simulators.bluez.bus import PrivateBus
from simulators.bluez.core import VirtualBlueZ
from simulators.bluez.peripherals import BpCuff, SosPendant
from simulators.broker import Mosquitto
from simulators.cms50_sim import Cms50Simulator
from simulators.rfxtrx_sim import RfxtrxSimulator
from tests.helpers import Collector, GatewayProcess, gateway_config, rfxtrx_device, until

SOS = "C0:FF:EE:00:00:03"
CUFF = "C0:FF:EE:00:00:02"


def devices(ox_link: Path) -> str:
    return f"""
[[devices]]
id = "ox"
kind = "serial-cms50"
port = "{ox_link}"
report_every_s = 1.0

[[devices]]
id = "sos-ble"
kind = "ble-sos"
address = "{SOS}"

[[devices]]
id = "cuff-ble"
kind = "ble-bp-cuff"
address = "{CUFF}"
timezone = "UTC"
"""


def test_sigterm_while_bluez_broker_and_ports_vanish_exits_in_time_with_everything_committed(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    rfx_link = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_STOP-if00-port0"
    ox_link = tmp_path / "dev" / "usb-Contec_CMS50-STOP-if00-port0"
    config = gateway_config(tmp_path, broker.port, devices=rfxtrx_device(rfx_link) + devices(ox_link))
    workdir = Path(tempfile.mkdtemp(prefix="hcs-", dir="/tmp"))  # short: a Unix socket path
    bus = PrivateBus(workdir)
    bus.start()
    gw = GatewayProcess(config, env={"DBUS_SYSTEM_BUS_ADDRESS": bus.address})
    pendant = SosPendant(SOS)

    async def go() -> tuple[float, int | None]:
        bluez = VirtualBlueZ(bus.address, [pendant, BpCuff(CUFF, records=1, always_advertise=True)])
        await bluez.start()
        try:
            async with RfxtrxSimulator(rfx_link) as rfx, Cms50Simulator(ox_link, seed=11) as ox:
                gw.start()
                await until(lambda: rfx.started, 30, "the receiver open")
                await until(
                    lambda: [s for s in cloud.of_type("device_state") if s["device_id"] == "sos-ble"], 30, "BLE"
                )
                await until(lambda: [o for o in cloud.of_type("observation") if o["device_id"] == "ox"], 30, "oximeter")
                await rfx.press(0xA1B2C3)
                await pendant.press()
                await until(lambda: len(cloud.of_type("alert")) >= 2, 20, "both presses delivered")
                # The last press is made as the world ends: it must be committed even so. (A second
                # apart from the first: frames closer than the receiver's repeat window are one press.)
                await asyncio.sleep(1.2)
                assert await rfx.press(0xA1B2C3, repeats=1), "the last press reached the line"
                await asyncio.sleep(0.3)
                t0 = time.monotonic()
                broker.kill()
                rfx.unplug()
                ox.unplug()
                await bluez.stop()
                bus.stop()
                assert gw.proc is not None
                gw.proc.send_signal(signal.SIGTERM)
                await until(lambda: not gw.alive(), 3 * STOP_LIMIT_S, "gatewayd to exit")
                return time.monotonic() - t0, gw.reap()
        finally:
            gw.stop_quietly()
            await bluez.stop()
            bus.stop()
            shutil.rmtree(workdir, ignore_errors=True)

    elapsed, code = asyncio.run(go())
    print(f"\nstopped {elapsed:.2f} s after everything vanished (exit code {code})")
    assert elapsed <= STOP_LIMIT_S, gw.log()[-3000:]
    log = gw.log()
    assert "stop did not finish" not in log, "the orderly stop ended by itself, the deadline was not needed"
    assert code == 0, log[-3000:]
    db = sqlite3.connect(tmp_path / "data" / "outbox.sqlite3")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = [json.loads(body) for (body,) in db.execute("SELECT body FROM msg ORDER BY seq")]
    finally:
        db.close()
    at_cloud = {a["alert_id"] for a in cloud.of_type("alert")}
    on_disk = {m["alert_id"] for m in stored if m.get("type") == "alert"}
    assert len(at_cloud | on_disk) == 3, "every press accepted reached the cloud or is on disk"
    states = [m for m in stored if m.get("type") == "device_state" and m.get("reason") == "gateway stopped"]
    assert {s["device_id"] for s in states} >= {"rfx", "ox"}, "the devices' last words were committed too"
    assert not any(p for p in os.listdir(tmp_path / "data") if p.endswith(".tmp"))


def test_a_stop_during_a_tls_handshake_that_never_ends_exits_in_time(tmp_path: Path) -> None:
    """A broker address that accepts TCP and then says nothing (a captive portal, a half-dead proxy):
    paho's TLS handshake waits its keepalive. The connect ran in the default executor, which asyncio.run
    joins at the end, so a SIGTERM then took as long as the handshake, past systemd's stop timeout."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(server.accept()[0])  # and never a byte back

    threading.Thread(target=accept, daemon=True).start()
    config = gateway_config(tmp_path, server.getsockname()[1], tls=True)  # keepalive = 10 s
    gw = GatewayProcess(config)
    try:
        gw.start()
        deadline = time.monotonic() + 20
        while not accepted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert accepted, "the gateway connected to the silent broker"
        time.sleep(1.0)  # well inside the handshake
        took = gw.terminate()
        assert gw.proc is not None and gw.proc.returncode == 0, "an orderly stop"
        assert took < STOP_LIMIT_S, f"exited {took:.1f} s after SIGTERM"
    finally:
        gw.stop_quietly()
        server.close()
        for s in accepted:
            s.close()
