"""End to end: virtual BlueZ -> gatewayd (a real process, only DBUS_SYSTEM_BUS_ADDRESS changed) -> real
Mosquitto -> cloud subscriber. An SOS pendant's press becomes one committed alert; a cuff's stored
records arrive as historical observations."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path

from simulators.bluez.peripherals import BpCuff, SosPendant
from simulators.broker import Mosquitto
from tests.ble.util import virtual_bluez
from tests.helpers import Collector, GatewayProcess, gateway_config, until

SOS = "C0:FF:EE:00:00:03"
CUFF = "C0:FF:EE:00:00:02"

DEVICES = f"""
[[devices]]
id = "sos-ble"
kind = "ble-sos"
transport = "ble"
address = "{SOS}"

[[devices]]
id = "cuff-ble"
kind = "ble-bp-cuff"
transport = "ble"
address = "{CUFF}"
timezone = "UTC"
"""


def _next_seq(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
    return int(row[0]) if row else 1


def test_sos_advertisement_to_committed_alert_and_cuff_records(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    pendant = SosPendant(SOS)
    cuff = BpCuff(CUFF, records=2, always_advertise=True)
    config = gateway_config(tmp_path, broker.port, devices=DEVICES)
    gw = GatewayProcess(config)

    async def go() -> tuple[float, float, int]:
        async with virtual_bluez([pendant, cuff]):
            gw.start()  # inherits DBUS_SYSTEM_BUS_ADDRESS of the virtual BlueZ
            try:
                await until(lambda: cloud.of_type("device_state"), 30, "the pendant heard by gatewayd")
                await until(lambda: len(cloud.of_type("observation")) >= 8, 40, "the cuff's stored records")
                db = sqlite3.connect(tmp_path / "data" / "outbox.sqlite3")
                try:
                    await asyncio.sleep(1.0)  # let the start-up state messages settle
                    before = _next_seq(db)
                    info = await pendant.press()
                    # The commit is seen when next_seq moves (in the same transaction as the row).
                    while _next_seq(db) == before:
                        await asyncio.sleep(0.0005)
                    committed = time.monotonic() - info["pressed_mono"]
                finally:
                    db.close()
                await until(lambda: cloud.of_type("alert"), 20, "the alert at the cloud")
                at_cloud = time.monotonic() - info["pressed_mono"]
                await asyncio.sleep(1.5)  # repeated advertisements of the press would arrive by now
                # SIGTERM without blocking the loop: the virtual BlueZ serves the daemon's disconnects.
                assert gw.proc is not None
                gw.proc.send_signal(signal.SIGTERM)
                await until(lambda: not gw.alive(), 15, "gatewayd to stop")
                gw.terminate()  # reaps it and closes its log
            finally:
                gw.stop_quietly()
            return committed, at_cloud, before

    committed, at_cloud, seq = asyncio.run(go())
    print(f"\nSOS press -> alert committed {committed * 1000:.1f} ms, at the cloud {at_cloud * 1000:.1f} ms")
    alerts = cloud.of_type("alert")
    assert len(alerts) == 1, "one press, many advertisements: one alert"
    a = alerts[0]
    assert (a["kind"], a["device_id"], a["historical"]) == ("sos", "sos-ble", False)
    assert a["seq"] == seq, "the first message committed after the press is its alert"
    assert a["extra"]["via"] == "advertisement"
    assert committed < 0.25, "generous bound (the issue asks 50 ms; 3-7 ms measured here): see the print"
    obs = [o for o in cloud.of_type("observation") if o["device_id"] == "cuff-ble"]
    assert len(obs) == 8 and all(o["historical"] for o in obs), "records taken hours ago are historical"
    states = {s["device_id"]: s for s in cloud.of_type("device_state")}
    assert states["sos-ble"]["battery_percent"] == 95 and "rssi_dbm" in states["sos-ble"]
    assert "Traceback" not in gw.log()
