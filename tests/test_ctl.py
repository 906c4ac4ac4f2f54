"""gatewayctl against a running gatewayd with simulators; JSON output asserted."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from simulators.broker import Mosquitto
from simulators.rfxtrx_sim import RfxtrxSimulator
from tests.helpers import REPO, Collector, GatewayProcess, gateway_config, rfxtrx_device, until


async def ctl(config: Path, *args: str) -> tuple[int, Any, str]:
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
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    text = out.decode()
    try:
        doc = json.loads(text) if "--json" in args and "tail" not in args else text
    except ValueError:
        doc = text
    assert proc.returncode is not None
    return proc.returncode, doc, err.decode()


def test_cli_against_a_running_daemon(tmp_path: Path, broker: Mosquitto, cloud: Collector) -> None:
    link = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_CLI-if00-port0"
    link2 = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_CLI2-if00-port0"
    config = gateway_config(tmp_path, broker.port, devices=rfxtrx_device(link))
    original = config.read_text()
    gw = GatewayProcess(config)

    async def go() -> None:
        async with RfxtrxSimulator(link) as sim, RfxtrxSimulator(link2) as sim2:
            gw.start()
            try:
                await until(lambda: sim.started, what="daemon up")

                rc, st, _ = await ctl(config, "--json", "status")
                assert rc == 0 and st["uplink"]["state"] == "connected" and st["gateway_id"] == "gw-test"
                rc, text, _ = await ctl(config, "status")
                assert rc == 0 and "uplink    connected" in text and "observation" in text

                rc, devs, _ = await ctl(config, "--json", "devices")
                assert rc == 0 and [(d["id"], d["origin"]) for d in devs["devices"]] == [("rfx", "config")]

                # tail in the background while a press happens
                tail = asyncio.create_task(ctl(config, "--json", "tail", "--seconds", "3"))
                await asyncio.sleep(1.0)
                await sim.press(0xA1B2C3)
                rc, tail_out, _ = await tail
                items = [json.loads(line) for line in tail_out.splitlines() if line.strip()]
                assert rc == 0 and any(i["type"] == "sos" and i["device_id"] == "sos-1" for i in items)

                # drill on, a press is marked, drill off
                rc, d, _ = await ctl(config, "--json", "drill", "--minutes", "1", "--button", "sos-1")
                assert rc == 0 and d["duration_s"] == 60
                await asyncio.sleep(1.1)
                await sim.press(0xA1B2C3)
                await until(lambda: any(a["drill"] for a in cloud.of_type("alert")), what="drill alert")
                rc, _, _ = await ctl(config, "--json", "drill", "--stop")
                assert rc == 0

                # devices add / remove without touching the file
                rc, added, err = await ctl(
                    config,
                    "--json",
                    "devices",
                    "add",
                    "rfx2",
                    "rfxtrx-sos",
                    "-o",
                    f"port={link2}",
                    "-o",
                    "accept_unknown=true",
                )
                assert rc == 0, err
                await until(lambda: sim2.started, what="the added receiver")
                rc, devs, _ = await ctl(config, "--json", "devices")
                assert {d["id"]: d["origin"] for d in devs["devices"]}["rfx2"] == "managed"
                rc, out, _ = await ctl(config, "--json", "devices", "add", "rfx2", "rfxtrx-sos", "-o", f"port={link2}")
                assert rc == 1 and out["code"] == "conflict"
                rc, _, _ = await ctl(config, "--json", "devices", "remove", "rfx2")
                assert rc == 0
                rc, out, _ = await ctl(config, "--json", "devices", "remove", "rfx")
                assert rc == 1 and "configuration file" in out["error"]

                # config set: validated, written keeping comments, applied live
                rc, out, err = await ctl(config, "--json", "config", "set", "uplink.keepalive", "30")
                assert rc == 0, err
                assert out["value"] == 30 and "uplink (reconnecting)" in out["reload"]["applied"]
                assert "keepalive = 30" in config.read_text()
                rc, out, _ = await ctl(config, "--json", "config", "set", "uplink.keepalive", "3")
                assert rc == 2 and "uplink.keepalive" in out["error"] and "5..3600" in out["error"]
                assert "keepalive = 30" in config.read_text(), "a refused value is not written"
                rc, out, _ = await ctl(config, "--json", "config", "set", "devices.rfx.repeat_window_s", "1.5")
                assert rc == 0 and "restarted rfx" in out["reload"]["applied"]
                await until(lambda: sim.started, what="rfx restarted")
                rc, st, _ = await ctl(config, "--json", "status")
                assert st["uplink"]["state"] in ("connected", "connecting", "backoff")

                # socket permissions: 0660, and a user outside root/homecare is refused
                sock = tmp_path / "data" / "control.sock"
                assert stat.S_IMODE(sock.stat().st_mode) == 0o660
                os.chmod(tmp_path, 0o755)
                os.chmod(tmp_path / "data", 0o755)
                if os.geteuid() == 0 and os.access("/usr/bin/python3", os.X_OK):
                    probe = (
                        "import socket, sys\n"
                        "s = socket.socket(socket.AF_UNIX)\n"
                        "try:\n"
                        f"    s.connect({str(sock)!r})\n"
                        "except PermissionError:\n"
                        "    sys.exit(13)\n"
                    )
                    proc = await asyncio.create_subprocess_exec(
                        "/usr/bin/python3", "-c", probe, user=65534, group=65534, extra_groups=[]
                    )
                    assert await proc.wait() == 13, "a user outside root and group homecare is refused"

                # outbox: stats from the daemon, export with the broker down and the daemon stopped
                broker.stop()
                await asyncio.sleep(1.1)
                await sim.press(0xA1B2C3)
                rc, ob, _ = await ctl(config, "--json", "outbox")
                assert rc == 0 and set(ob["depth"]) == {"alert", "observation", "state", "bulk"}
                gw.terminate()
                rc, ob2, _ = await ctl(config, "--json", "outbox", "stats")
                assert rc == 0 and ob2["depth"]["alert"] >= 1, "stats read from disk when the daemon is down"
                export = tmp_path / "export.jsonl"
                rc, ex, _ = await ctl(config, "--json", "outbox", "export", str(export))
                assert rc == 0 and ex["messages"] >= 1
                assert stat.S_IMODE(export.stat().st_mode) == 0o600, "health data: its creator's alone"
                lines = [json.loads(line) for line in export.read_text().splitlines()]
                assert any(m["payload"]["type"] == "alert" and m["payload"]["seq"] > 0 for m in lines)
                rc, _, err = await ctl(config, "outbox", "export", str(export))
                assert rc == 2 and "exists" in err
                rc, out, err = await ctl(config, "--json", "status")
                assert rc == 3 and out["code"] == "daemon_unreachable"
            finally:
                gw.stop_quietly()
                if broker.proc is None:
                    broker.start()

    asyncio.run(go())
    assert "Traceback" not in gw.log()
    assert original != config.read_text()


def test_config_commands_work_without_a_daemon(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2")
    config = gateway_config(tmp_path, 1883, uplink_extra=f'username = "gw"\npassword_file = "{secret}"')
    out = subprocess.run(
        [sys.executable, "-m", "gateway.ctl", "--config", str(config), "--json", "config", "show"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert out.returncode == 0
    shown = json.loads(out.stdout)
    assert shown["uplink"]["password_file"] == str(secret) and "hunter2" not in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "gateway.ctl", "--config", str(config), "config", "validate"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert out.returncode == 0 and "valid" in out.stdout
    config.write_text(config.read_text().replace("keepalive = 10", "keepalive = 'x'"))
    out = subprocess.run(
        [sys.executable, "-m", "gateway.ctl", "--config", str(config), "--json", "config", "validate"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert out.returncode == 1 and "uplink.keepalive" in json.loads(out.stdout)["error"]


def test_scan_lists_what_it_can_without_bluetooth(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, 1883)
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=f"unix:path={tmp_path}/no-bus")
    out = subprocess.run(
        [sys.executable, "-m", "gateway.ctl", "--config", str(config), "--json", "devices", "scan", "--seconds", "1"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)["devices"]
    assert any(d["transport"] == "ble" and "failed" in (d["name"] or "") for d in found)


def test_drill_reports_press_to_broker_and_care_centre_ack_times(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    link = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_DRILL-if00-port0"
    config = gateway_config(tmp_path, broker.port, devices=rfxtrx_device(link))
    gw = GatewayProcess(config)
    centre = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    centre.connect("127.0.0.1", broker.port)
    centre.loop_start()

    async def go() -> dict[str, Any]:
        async with RfxtrxSimulator(link) as sim:
            gw.start()
            try:
                await until(lambda: sim.started, what="daemon up")
                drill = asyncio.create_task(
                    ctl(config, "--json", "drill", "--minutes", "1", "--all-buttons", "--wait", "--ack-timeout", "15")
                )
                await asyncio.sleep(1.5)
                await sim.press(0xA1B2C3)
                alert = (await until(lambda: cloud.of_type("alert"), what="the drill alert"))[0]
                assert alert["drill"] is True
                # The care centre's test subscriber saw it and acknowledges.
                centre.publish(
                    "homecare/v1/gw-test/cmd/alert-ack",
                    json.dumps({"request_id": "drill-ack-1", "alert_id": alert["alert_id"]}),
                    qos=1,
                )
                rc, out, err = await drill
                assert rc == 0, err
                return out  # type: ignore[no-any-return]
            finally:
                gw.stop_quietly()

    try:
        out = asyncio.run(go())
    finally:
        centre.loop_stop()
        centre.disconnect()
    assert "press" in out, out
    press = out["press"]
    assert press["device_id"] == "sos-1"
    assert press["press_to_broker_ms"] is not None and press["press_to_broker_ms"] >= 0
    assert press["press_to_ack_s"] is not None and press["press_to_ack_s"] * 1000 >= press["press_to_broker_ms"]
