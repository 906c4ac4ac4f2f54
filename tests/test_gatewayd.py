"""gatewayd as a real process: RFXtrx simulator on a pty -> daemon -> real Mosquitto -> cloud subscriber."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from gateway.daemon import Daemon
from gateway.outbox import Outbox
from simulators.broker import Mosquitto
from simulators.rfxtrx_sim import RfxtrxSimulator
from tests.helpers import REPO, Collector, GatewayProcess, gateway_config, outbox_meta, rfxtrx_device, until


async def ctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.ctl",
        "--config",
        str(config),
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


def test_sos_press_end_to_end_status_and_orderly_stop(tmp_path: Path, broker: Mosquitto, cloud: Collector) -> None:
    link = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_E2E-if00-port0"
    config = gateway_config(tmp_path, broker.port, devices=rfxtrx_device(link))
    gw = GatewayProcess(config)

    async def go() -> tuple[dict[str, Any], str, float]:
        async with RfxtrxSimulator(link) as sim:
            gw.start()
            try:
                await until(lambda: sim.started, 20, "the daemon to start the receiver")
                await sim.press(0xA1B2C3, repeats=6, gap_s=0.03)
                await until(lambda: cloud.of_type("alert"), 20, "the SOS alert at the cloud")
                await asyncio.sleep(1.2)  # any stray repeat would have arrived by now
                st = await ctl(config, "--json", "status")
                assert st.returncode == 0, st.stderr
                human = await ctl(config, "status")
                assert human.returncode == 0, human.stderr
                stop_s = gw.terminate()
            finally:
                gw.stop_quietly()
            return json.loads(st.stdout), human.stdout, stop_s

    status, human, stop_s = asyncio.run(go())
    alerts = cloud.of_type("alert")
    assert len(alerts) == 1, "six radio frames of one press are one alert"
    a = alerts[0]
    assert (a["kind"], a["severity"], a["drill"], a["device_id"]) == ("sos", "critical", False, "sos-1")
    assert a["gateway_id"] == "gw-test" and a["historical"] is False
    states = cloud.of_type("device_state")
    assert states and states[0]["device_id"] == "rfx" and states[0]["state"] == "connected"

    result = status
    assert result["uplink"]["state"] == "connected"
    assert set(result["outbox"]["depth"]) == {"alert", "observation", "state", "bulk"}
    assert result["outbox"]["last_seq"] >= 2
    devices = {d["id"]: d for d in result["devices"]}
    assert devices["rfx"]["state"] == "connected" and devices["rfx"]["counters"]["presses"] == 1
    assert devices["sos-1"]["last_seen"] is not None
    assert "uplink" in human and "connected" in human and "sos-1" in human

    assert stop_s < 5.0, f"SIGTERM took {stop_s:.1f} s"
    assert gw.proc is not None and gw.proc.returncode == 0
    log = gw.log()
    assert "Traceback" not in log
    # Orderly stop: the retained status says offline, and what was accepted is on disk.
    statuses = [d for _, t, d, _ in cloud.poll() if t.endswith("/status")]
    assert statuses[-1]["state"] == "offline"
    db = sqlite3.connect(tmp_path / "data" / "outbox.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


def test_gatewayd_killed_repeatedly_under_load_loses_no_committed_seq(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    link = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_KILL-if00-port0"
    config = gateway_config(tmp_path, broker.port, devices=rfxtrx_device(link, accept_unknown=True))
    kills = 5

    async def go() -> tuple[int, int]:
        async with RfxtrxSimulator(link) as sim:
            pressing = True
            sensor = [0x100000]

            async def presser() -> None:
                # A press of a new button every ~5 ms: each is its own SOS alert, committed with fsync.
                while pressing:
                    sensor[0] += 1
                    sim.send_frame(
                        bytes(
                            [
                                0x08,
                                0x20,
                                0x02,
                                0x00,
                                sensor[0] >> 16,
                                (sensor[0] >> 8) & 0xFF,
                                sensor[0] & 0xFF,
                                0x06,
                                0x79,
                            ]
                        )
                    )
                    await asyncio.sleep(0.005)

            task = asyncio.create_task(presser())
            for i in range(kills):
                gw = GatewayProcess(config)
                gw.start()
                await until(lambda: sim.started, 20, f"start #{i}")
                await asyncio.sleep(0.8 + 0.3 * i)
                gw.kill()  # SIGKILL mid-stream: no chance to flush anything
                sim.started = False
                db = sqlite3.connect(tmp_path / "data" / "outbox.sqlite3")
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok", f"store damaged after kill #{i}"
                db.close()
            pressing = False
            await task
            gw = GatewayProcess(config)
            gw.start()
            await until(lambda: sim.started, 20, "final start")
            committed = outbox_meta(tmp_path / "data")["next_seq"] - 1
            await until(lambda: cloud.seqs() >= set(range(1, committed + 1)), 60, "every committed seq")
            gw.terminate()
            return committed, outbox_meta(tmp_path / "data")["next_seq"] - 1

    committed_before_final, committed_total = asyncio.run(go())
    received = cloud.seqs()
    assert committed_before_final > 200, "the load was real"
    assert set(range(1, committed_before_final + 1)) <= received
    # Nothing but committed seqs ever appears, and each seq means one message (duplicates share msg_id).
    assert max(received) <= committed_total
    by_seq: dict[int, str] = {}
    for d in cloud.data():
        assert by_seq.setdefault(d["seq"], d["msg_id"]) == d["msg_id"]
    wills = [d for _, t, d, _ in cloud.poll() if t.endswith("/status") and d["state"] == "offline"]
    assert len(wills) >= kills, "the broker published the will after each kill"


def test_gatewayctl_without_a_daemon_says_so(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, 1)
    out = subprocess.run(
        [sys.executable, "-m", "gateway.ctl", "--config", str(config), "status"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert out.returncode == 3
    assert "is gatewayd running" in out.stderr


def test_systemd_notify_ready_watchdog_status_and_stopping(tmp_path: Path, broker: Mosquitto) -> None:
    """Type=notify: the sd_notify datagrams systemd would receive, on a socket of our own."""
    import os
    import socket

    sock_path = tmp_path / "notify.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(str(sock_path))
    srv.settimeout(0.2)
    config = gateway_config(tmp_path, broker.port)
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="400000")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.daemon", "--config", str(config)],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    got: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sum("WATCHDOG=1" in m for m in got) < 3:
            try:
                got.append(srv.recv(4096).decode())
            except TimeoutError:
                pass
        proc.terminate()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("STOPPING=1" in m for m in got):
            try:
                got.append(srv.recv(4096).decode())
            except TimeoutError:
                pass
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        assert proc.stderr is not None
        proc.stderr.close()
        srv.close()
    ready = [i for i, m in enumerate(got) if "READY=1" in m]
    assert ready, got
    assert sum("WATCHDOG=1" in m for m in got) >= 3, "the watchdog is fed while running"
    assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for m in got)
    assert any("STOPPING=1" in m for m in got), "an orderly stop says so"


def test_the_sos_receiver_listens_while_the_outbox_is_still_being_opened(
    tmp_path: Path, broker: Mosquitto, cloud: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening the outbox reads the whole store (quick_check, the count of what waits): seconds for a full
    one on an SD card. The receiver was started only after it, so a press in those seconds was on the air
    for nobody. Now the receiver starts at once and the press waits in memory until the store is open.
    The open is held back here (the daemon in this process: the real open, made to wait for the test)."""
    link = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_OPEN-if00-port0"
    config = gateway_config(tmp_path, broker.port, devices=rfxtrx_device(link))
    gate = threading.Event()
    real_open = Outbox._open

    def slow_open(self: Outbox) -> None:
        assert gate.wait(30), "the test never let the open go on"
        real_open(self)

    monkeypatch.setattr(Outbox, "_open", slow_open)

    async def go() -> tuple[int, bool]:
        daemon = Daemon(load_config(config))
        task = asyncio.create_task(daemon.run())
        try:
            async with RfxtrxSimulator(link) as sim:
                await until(lambda: sim.started or task.done(), 20, "the receiver started, the outbox still shut")
                assert not task.done() and daemon.outbox is not None
                await sim.press(0xA1B2C3, repeats=3, gap_s=0.03)
                await until(lambda: daemon.outbox is not None and daemon.outbox._pending, 10, "the press waiting")
                waiting_before_open = len(daemon.outbox._pending)
                db_closed = daemon.outbox._db is None
                gate.set()
                await until(lambda: cloud.of_type("alert"), 20, "the SOS at the cloud once the store is open")
        finally:
            gate.set()
            daemon.request_stop()
            async with asyncio.timeout(15):
                await task
        return waiting_before_open, db_closed

    waiting, db_closed = asyncio.run(go())
    assert waiting >= 1 and db_closed, "the press was taken while the store was not open yet"
    alerts = cloud.of_type("alert")
    assert len(alerts) == 1 and alerts[0]["device_id"] == "sos-1" and alerts[0]["seq"] >= 1
