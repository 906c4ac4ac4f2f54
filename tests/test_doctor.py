"""``gatewayctl doctor`` against real parts: a healthy gateway, a broker with an expired certificate,
Bluetooth without an adapter (or powered off, or no BlueZ at all), a full outbox disk budget, and a
serial port the service user may not open. Each diagnosis is asserted in words and status."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import grp
import json
import os
import pty
import pwd
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import doctor
from gateway.config import load_config
from gateway.outbox import Lane, NewMessage, Outbox
from simulators.bluez.bus import PrivateBus
from simulators.bluez.control import ControlClient
from simulators.broker import Mosquitto, TlsFiles
from simulators.rfxtrx_sim import RfxtrxSimulator
from tests import test_care
from tests.helpers import (
    REPO,
    GatewayProcess,
    gateway_config,
    make_pki,
    rfxtrx_device,
    status_via_ctl,
    until,
    write_outbox_behind,
)


def run_doctor(config: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[int, Any, str]:
    out = subprocess.run(
        [sys.executable, "-m", "gateway.ctl", "--config", str(config), *extra, "doctor"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=dict(os.environ, **(env or {})),
    )
    doc = json.loads(out.stdout) if "--json" in extra else out.stdout
    return out.returncode, doc, out.stderr


def by_id(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["id"]: f for f in report["findings"]}


@contextlib.contextmanager
def virtual_bluez(workdir: Path, *args: str) -> Iterator[tuple[str, Path]]:
    """``gateway-sim ble`` as a process: (bus address, control socket)."""
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.bluez", "--workdir", str(workdir), "--sos", "C0:FF:EE:00:00:03", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line.strip())
            if line.strip() == "ready":
                break
        env = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("device"))
        yield env["DBUS_SYSTEM_BUS_ADDRESS"], Path(env["BLE_SIM_CONTROL"])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def tls_broker(tmp_path: Path, pki: dict[str, Path]) -> Mosquitto:
    b = Mosquitto(
        workdir=tmp_path / "tlsbroker",
        tls=TlsFiles(pki["ca"], pki["server_cert"], pki["server_key"], require_certificate=True),
    )
    b.start()
    return b


def tls_lines(pki: dict[str, Path]) -> str:
    return f'ca_file = "{pki["ca"]}"\ncert_file = "{pki["client_cert"]}"\nkey_file = "{pki["client_key"]}"'


def test_a_healthy_gateway_is_all_ok(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    broker = tls_broker(tmp_path, pki)
    link = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_DOC-if00-port0"
    config = gateway_config(
        tmp_path,
        broker.port,
        tls=True,
        devices=rfxtrx_device(link),
        uplink_extra=tls_lines(pki),
        outbox_extra=f"max_bytes = {8 * 1024 * 1024}",
    )
    gw = GatewayProcess(config)

    async def go() -> tuple[tuple[int, Any, str], tuple[int, Any, str]]:
        async with RfxtrxSimulator(link) as sim:
            gw.start()
            try:
                await until(lambda: sim.started, what="daemon up")
                await until(lambda: _uplink_connected(config), what="uplink connected over mutual TLS")
                with virtual_bluez(tmp_path / "ble") as (bus, _control):
                    env = {"DBUS_SYSTEM_BUS_ADDRESS": bus}
                    as_json = await asyncio.to_thread(run_doctor, config, "--json", env=env)
                    as_text = await asyncio.to_thread(run_doctor, config, env=env)
                return as_json, as_text
            finally:
                gw.stop_quietly()

    try:
        (rc, report, err), (rc_text, text, _) = asyncio.run(go())
    finally:
        broker.kill()
    found = by_id(report)
    expected = {
        "config",
        "daemon",
        "clock",
        "disk",
        "outbox",
        "secrets",
        "bluez",
        "serial.rfx",
        "cert.ca",
        "cert.client",
        "broker.dns",
        "broker.tcp",
        "broker.tls",
        "cert.server",
        "device.rfx",
    }
    assert expected <= set(found), sorted(found)
    not_ok = {fid: f["message"] for fid, f in found.items() if f["status"] != "ok" and fid != "clock"}
    assert not not_ok, not_ok
    # the clock of a shared test machine may or may not be synchronised; the doctor says how it decided
    assert found["clock"]["status"] in ("ok", "warn") and found["clock"]["details"]["method"]
    assert rc == report["exit_code"] == (0 if found["clock"]["status"] == "ok" else 1)
    assert report["counts"]["fail"] == 0
    assert "connected to the broker" in found["daemon"]["message"]
    assert "powered on" in found["bluez"]["message"] and "hci0" in found["bluez"]["message"]
    assert "with the gateway's client certificate" in found["broker.tls"]["message"]
    assert 27 <= found["cert.server"]["details"]["days_left"] <= 30
    assert found["cert.server"]["details"]["subject"] == "localhost"
    assert 27 <= found["cert.client"]["details"]["days_left"] <= 30
    assert found["device.rfx"]["details"]["source"] == "daemon" and "connected" in found["device.rfx"]["message"]
    assert found["outbox"]["details"]["integrity"] == "ok"
    # progress goes to stderr, so --json stays clean
    assert "TLS handshake" in err
    assert rc_text == rc and "broker.tls" in text and "0 failures" in text


def _uplink_connected(config: Path) -> bool:
    status = status_via_ctl(config)
    return status is not None and status["uplink"]["state"] == "connected"


def test_an_expired_broker_certificate_is_diagnosed(tmp_path: Path) -> None:
    good = make_pki(tmp_path / "good")
    bad = make_pki(tmp_path / "bad", expired=True)
    # the broker's certificate and key expired; the gateway's own (client) certificate is valid
    pki = {**bad, "client_cert": good["client_cert"], "client_key": good["client_key"]}
    broker = Mosquitto(
        workdir=tmp_path / "tlsbroker",
        tls=TlsFiles(bad["ca"], bad["server_cert"], bad["server_key"], require_certificate=False),
    )
    broker.start()
    config = gateway_config(tmp_path, broker.port, tls=True, uplink_extra=tls_lines(pki))
    try:
        rc, report, _ = run_doctor(config, "--json", env={"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent"})
        rc_text, text, _ = run_doctor(config, env={"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent"})
    finally:
        broker.kill()
    found = by_id(report)
    assert rc == 2 and report["exit_code"] == 2
    assert found["broker.tcp"]["status"] == "ok"
    tls = found["broker.tls"]
    assert tls["status"] == "fail" and "expired certificate" in tls["message"]
    assert tls["details"]["verify_code"] == 10
    server = found["cert.server"]
    assert (
        server["status"] == "fail" and "broker's certificate" in server["message"] and "expired on" in server["message"]
    )
    assert server["details"]["days_left"] < 0 and "(yesterday)" in server["message"]
    assert "platform operator" in server["action"]
    # the gateway's own certificate and CA are fine: the doctor does not blame them
    assert found["cert.client"]["status"] == "ok" and found["cert.ca"]["status"] == "ok"
    # no daemon ran with this configuration
    assert found["daemon"]["status"] == "fail" and "does not answer" in found["daemon"]["message"]
    assert rc_text == 2 and "FAIL  broker.tls" in text and "expired" in text


def test_a_missing_adapter_is_diagnosed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = gateway_config(tmp_path, 1883)
    wrist = '[[devices]]\nid = "wrist-1"\nkind = "ble-wrist"\naddress = "C0:FF:EE:00:00:01"\n'
    (tmp_path / "ble-config").mkdir()
    with_ble = load_config(gateway_config(tmp_path / "ble-config", 1883, devices=wrist))
    with virtual_bluez(tmp_path / "ble", "--adapters", "0") as (bus, _control):
        rc, report, _ = run_doctor(config, "--json", env={"DBUS_SYSTEM_BUS_ADDRESS": bus})
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus)
        needed = doctor.check_bluez(with_ble)
    # with a Bluetooth device configured, no adapter is a failure naming the device
    assert (
        needed.status is doctor.Status.FAIL and "wrist-1" in needed.message and "no Bluetooth adapter" in needed.message
    )
    bluez = by_id(report)["bluez"]
    # no Bluetooth device is configured: a warning (nothing could be paired), not a failure
    assert bluez["status"] == "warn"
    assert "no Bluetooth adapter" in bluez["message"] and "none can be paired" in bluez["message"]
    assert "rfkill" in bluez["action"] and "disable-bt" in bluez["action"]
    assert bluez["details"]["bus"] == bus and rc == 2  # the daemon is not running either


def test_an_adapter_powered_off_and_bluez_not_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(gateway_config(tmp_path, 1883))
    with virtual_bluez(tmp_path / "ble") as (bus, control):
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus)
        assert doctor.check_bluez(cfg).status is doctor.Status.OK
        ControlClient(control).call("power_off", adapter="hci0")
        off = doctor.check_bluez(cfg)
        assert off.status is doctor.Status.WARN and "hci0" in off.message and "powered off" in off.message
        assert "bluetoothctl power on" in off.action
    with PrivateBus(tmp_path / "bus") as private:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", private.address)
        gone = doctor.check_bluez(cfg)
    assert gone.status is doctor.Status.WARN and "not running" in gone.message
    assert "systemctl enable --now bluetooth" in gone.action
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    nobus = doctor.check_bluez(cfg)
    assert nobus.status is doctor.Status.WARN and "system bus" in nobus.message


async def _fill(path: Path, max_bytes: int, alert_age_s: float | None = None) -> None:
    async with Outbox(path, max_bytes=max_bytes, commit_interval_ms=5) as ob:
        runner = asyncio.ensure_future(ob.run())
        try:
            now = time.time()
            if alert_age_s is not None:
                body = json.dumps({"type": "alert", "kind": "sos"}).encode()
                await ob.put(NewMessage(Lane.ALERT, "t/alert", body, "sos-1", now - alert_age_s))
            body = json.dumps({"type": "waveform", "samples": "x" * 900}).encode()
            futures = [ob.submit(NewMessage(Lane.BULK, "t/bulk", body, "wrist-1", now - 60 + i)) for i in range(1400)]
            await asyncio.gather(*futures)
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


def test_a_full_outbox_disk_budget_is_diagnosed(tmp_path: Path) -> None:
    mib = 1024 * 1024
    config = gateway_config(tmp_path, 1883, outbox_extra=f"max_bytes = {mib}")
    asyncio.run(_fill(tmp_path / "data" / "outbox.sqlite3", mib))
    rc, report, _ = run_doctor(config, "--json")
    outbox = by_id(report)["outbox"]
    assert rc == 2
    assert outbox["status"] == "fail"
    assert "outbox is full" in outbox["message"] and "dropped" in outbox["message"]
    assert "SOS alerts are never dropped" in outbox["message"]
    assert "gatewayctl outbox export" in outbox["action"]
    assert outbox["details"]["evicted_total"] > 0
    assert outbox["details"]["bytes"] >= 0.95 * mib and outbox["details"]["integrity"] == "ok"


def test_an_sos_waiting_undelivered_is_a_failure(tmp_path: Path) -> None:
    cfg = load_config(gateway_config(tmp_path, 1883, outbox_extra=f"max_bytes = {64 * 1024 * 1024}"))
    asyncio.run(_fill(tmp_path / "data" / "outbox.sqlite3", cfg.outbox.max_bytes, alert_age_s=600))
    f = doctor.check_outbox(cfg, None)
    assert f.status is doctor.Status.FAIL and "SOS alert has waited 10 min" in f.message
    # a healthy, nearly empty outbox
    tmp2 = tmp_path / "b"
    tmp2.mkdir()
    cfg2 = load_config(gateway_config(tmp2, 1883))
    asyncio.run(_fill(tmp2 / "data" / "outbox.sqlite3", cfg2.outbox.max_bytes))
    ok = doctor.check_outbox(cfg2, None)
    assert ok.status is doctor.Status.OK and "nothing was ever dropped" in ok.message
    # a corrupt store
    (tmp2 / "data" / "outbox.sqlite3").write_bytes(b"not a database" * 100)
    bad = doctor.check_outbox(cfg2, None)
    assert bad.status is doctor.Status.FAIL and "cannot be opened" in bad.message


def test_with_the_daemon_stopped_a_reading_stored_before_a_clock_step_is_not_a_silent_device(tmp_path: Path) -> None:
    """The doctor without the daemon reads a device's last reading from the outbox: written in this boot
    on a wall clock 3 days behind (the clock has stepped to the truth since), the oximeter's reading of
    a moment ago is a moment ago, not "3 days" (beyond its 24 h silence limit)."""
    cfg = load_config(gateway_config(tmp_path, 1883, devices=test_care.oximeter(tmp_path / "oxi")))
    store = cfg.gateway.data_dir / "outbox.sqlite3"
    write_outbox_behind(store, 3 * 86400.0, [(Lane.OBSERVATION, "t/o", "oxi", 5.0, False)])
    (f,) = doctor.check_devices(cfg, None)
    assert f.details["source"] == "registry+outbox"
    assert 5.0 <= f.details["last_seen_age_s"] < 60.0, f.details
    assert "not sent a reading recently" not in f.message, f.message


def test_a_serial_port_the_service_user_may_not_open(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to hand data_dir to another user")
    with contextlib.suppress(KeyError):
        pwd.getpwnam(doctor.SERVICE_USER)
        pytest.skip(f"the real service user {doctor.SERVICE_USER} exists on this machine")
    nobody = pwd.getpwnam("nobody")
    master, slave = pty.openpty()
    try:
        tty = os.ttyname(slave)
        os.chmod(tty, 0o660)
        link = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_PERM-if00-port0"
        link.parent.mkdir()
        link.symlink_to(tty)
        cfg = load_config(gateway_config(tmp_path, 1883, devices=rfxtrx_device(link)))
        (tmp_path / "data").mkdir()
        os.chown(tmp_path / "data", nobody.pw_uid, nobody.pw_gid)  # the daemon's user owns its data_dir
        [finding] = doctor.check_serial(cfg)
        assert finding.id == "serial.rfx" and finding.status is doctor.Status.FAIL
        group = finding.details["group"]
        assert f"belongs to group {group}" in finding.message and "nobody" in finding.message
        assert f"usermod -aG {group} nobody" in finding.action
        # unplugged
        link.unlink()
        [gone] = doctor.check_serial(cfg)
        assert gone.status is doctor.Status.FAIL and "not plugged in" in gone.message
        assert "gatewayctl devices scan" in gone.action
    finally:
        os.close(master)
        os.close(slave)


def test_certificate_dates_match_a_full_x509_parser(tmp_path: Path) -> None:
    from cryptography import x509

    for name, expired in (("a", False), ("b", True)):
        pki = make_pki(tmp_path / name, expired=expired)
        for key in ("ca", "server_cert", "client_cert"):
            ref = x509.load_pem_x509_certificate(pki[key].read_bytes())
            [mine] = doctor.read_pem_certificates(pki[key])
            assert mine.not_after == ref.not_valid_after_utc.replace(microsecond=0)
            assert mine.not_before == ref.not_valid_before_utc.replace(microsecond=0)
            assert mine.subject == ref.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    now = dt.datetime.now(dt.UTC)
    soon = doctor.CertInfo("broker", now - dt.timedelta(days=300), now + dt.timedelta(days=10, hours=1))
    f = doctor.judge_certificate("server", soon, "x")
    assert f.status is doctor.Status.WARN and "expires in 10 days" in f.message
    early = doctor.CertInfo("gw", now + dt.timedelta(days=2), now + dt.timedelta(days=300))
    f = doctor.judge_certificate("client", early, "x")
    assert f.status is doctor.Status.FAIL and "clock is probably wrong" in f.message


def test_an_unusable_configuration_is_reported_and_the_rest_skipped(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.toml"
    bad.write_text('[gateway]\nid = "gw"\n[uplink]\nhost = "h"\nport = "8883"\n')
    rc, report, _ = run_doctor(bad, "--json")
    found = by_id(report)
    assert rc == 2 and found["config"]["status"] == "fail"
    assert "uplink.port" in found["config"]["message"] and "config validate" in found["config"]["action"]
    assert found["outbox"]["status"] == "skip" and found["daemon"]["status"] == "skip"


def test_the_sim_pin_is_a_secret_and_technicians_may_not_read_secrets(tmp_path: Path) -> None:
    pin = tmp_path / "sim-pin"
    pin.write_text("1234\n")
    alarm = f"""
[alarm]
care_centre = ["+8610000000001"]

[alarm.modem]
port = "/dev/serial/by-id/usb-modem"
pin_file = "{pin}"
"""
    cfg = load_config(gateway_config(tmp_path, 1883, extra=alarm))

    def finding() -> doctor.Finding:
        (f,) = [f for f in doctor.check_secrets(cfg) if f.id == "secrets"]
        return f

    pin.chmod(0o644)
    loose = finding()
    assert loose.status is doctor.Status.FAIL and "alarm.modem.pin_file" in loose.message
    pin.chmod(0o640)
    if os.geteuid() == 0:
        # readable by a group of people (the technicians' homecare, here nogroup): not a secret any more
        os.chown(pin, -1, grp.getgrnam("nogroup").gr_gid)
        shared = finding()
        assert shared.status is doctor.Status.FAIL and "the group nogroup" in shared.message
        os.chown(pin, -1, 0)
    assert finding().status is doctor.Status.OK
    assert "1234" not in str(doctor.check_secrets(cfg))


def test_a_devices_secret_key_file_is_checked_before_the_device_needs_it(tmp_path: Path) -> None:
    key = tmp_path / "bindkey.txt"
    device = f'''
[[devices]]
id = "button-1"
kind = "ble-bthome"
address = "AA:BB:CC:DD:EE:01"
bindkey_file = "{key}"
'''
    cfg = load_config(gateway_config(tmp_path, 1883, devices=device))

    def secrets() -> list[doctor.Finding]:
        return [f for f in doctor.check_secrets(cfg) if f.id == "secrets"]

    (missing,) = secrets()  # the file is not there yet: the device would go to error at its start
    assert missing.status is doctor.Status.FAIL and "devices[0] (button-1).bindkey_file" in missing.message
    key.write_text("0123456789abcdef0123456789abcdef\n")
    key.chmod(0o644)
    (loose,) = secrets()
    assert loose.status is doctor.Status.FAIL and "every user" in loose.message
    key.chmod(0o600)
    (ok,) = secrets()
    assert ok.status is doctor.Status.OK
    key.write_text("not a key")
    (bad,) = secrets()
    assert bad.status is doctor.Status.FAIL and "hex digits" in bad.message and "not a key" not in bad.message
