"""A wrong or unknown key stops the daemon with one line naming file, key, value and what was expected."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.daemon import main as gatewayd_main
from gateway.errors import ConfigError
from tests.helpers import REPO

GOOD = """
[gateway]
id = "gw-1"
data_dir = "/tmp/x"

[uplink]
host = "broker.example.org"

[[devices]]
id = "rfx"
kind = "rfxtrx-sos"
transport = "serial"
port = "/dev/serial/by-id/usb-RFXCOM_RFXtrx433_A1-if00-port0"
buttons = { "a1b2c3" = "sos-1" }
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "gateway.toml"
    p.write_text(text)
    return p


def test_defaults_are_safe(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.uplink.tls is True, "TLS is on unless switched off explicitly"
    assert cfg.uplink.port == 8883
    assert cfg.outbox.max_bytes == 256 * 1024 * 1024
    assert cfg.outbox.commit_interval_ms <= 50
    assert cfg.devices[0].options.buttons == {"a1b2c3": "sos-1"}


def test_plaintext_port_default_follows_tls_false(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD.replace('host = "broker.example.org"', 'host = "b"\ntls = false')))
    assert cfg.uplink.tls is False and cfg.uplink.port == 1883


@pytest.mark.parametrize(
    ("change", "key", "value", "expected"),
    [
        (('port = "/dev', "port = 17\n#"), "devices[0] (rfx).port", "17", "a string"),
        (('host = "broker.example.org"', 'host = "b"\nport = 70000'), "uplink.port", "70000", "1..65535"),
        (('host = "broker.example.org"', 'host = "b"\ntls = "yes"'), "uplink.tls", "'yes'", "true or false"),
        (('host = "broker.example.org"', 'host = "b"\nkeepalive = 1'), "uplink.keepalive", "1", "5..3600"),
        (('id = "gw-1"', 'id = "gw 1!"'), "gateway.id", "'gw 1!'", "matching"),
        (('id = "gw-1"', 'id = "gw-1\\n"'), "gateway.id", "'gw-1\\n'", "matching"),  # a topic level with a line end
        (('kind = "rfxtrx-sos"', 'kind = "toaster"'), "devices[0] (rfx).kind", "'toaster'", "rfxtrx-sos"),
        (('host = "broker.example.org"', 'host = "b"\nhots = 1'), "uplink.hots", "not a known key", "one of"),
        (('data_dir = "/tmp/x"', 'data_dir = "/tmp/x"\ncolour = "red"'), "gateway.colour", "not a known key", ""),
        (
            ('host = "broker.example.org"', 'host = "b"\nca_file = "/nonexistent/ca.pem"'),
            "uplink.ca_file",
            "/nonexistent/ca.pem",
            "existing readable file",
        ),
        (("[[devices]]", "[outbox]\nmax_bytes = 10\n[[devices]]"), "outbox.max_bytes", "10", "bytes"),
    ],
)
def test_a_mistake_gives_one_line_naming_file_key_value_and_expectation(
    tmp_path: Path, change: tuple[str, str], key: str, value: str, expected: str
) -> None:
    path = write(tmp_path, GOOD.replace(*change, 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "\n" not in text
    assert str(path) in text and key in text and value in text and expected in text


def test_gatewayd_prints_the_one_line_and_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('host = "broker.example.org"', 'host = "b"\nport = "8883"'))
    out = subprocess.run(
        [sys.executable, "-m", "gateway.daemon", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert "uplink.port" in lines[0] and "'8883'" in lines[0] and "an integer" in lines[0]


def test_missing_file_and_broken_toml_are_one_line_too(tmp_path: Path) -> None:
    for path, needle in ((tmp_path / "nope.toml", "no such file"), (write(tmp_path, "[gateway\n"), "not valid TOML")):
        out = subprocess.run(
            [sys.executable, "-m", "gateway.daemon", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert out.returncode == 2
        assert "Traceback" not in out.stderr and needle in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_check_mode_validates_the_example_config() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gateway.daemon", "--check", "--config", str(REPO / "config" / "gateway.example.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert "valid" in out.stdout


def test_check_mode_warns_of_tls_material_that_does_not_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "client.key"
    key.write_text("not a key\n")
    cert = tmp_path / "client.pem"
    cert.write_text("not a certificate\n")
    text = GOOD.replace('host = "broker.example.org"', f'host = "b"\ncert_file = "{cert}"\nkey_file = "{key}"', 1)
    # A warning, not a refusal: the unit's ExecStartPre runs it, and the daemon must start (SMS, outbox).
    assert gatewayd_main(["--check", "--config", str(write(tmp_path, text))]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "TLS material cannot be loaded" in err


RULES_OK = """
[rules]
timezone = "Europe/Berlin"
day_start = 06:30:00
no_data_day_s = 3600
[[rules.person]]
id = "anna"
devices = ["rfx"]
[[rules.person.rule]]
id = "spo2-low"
base = "spo2-low"
threshold = 88
"""


def test_rules_section_is_parsed_into_watch_settings_and_person_rules(tmp_path: Path) -> None:
    import datetime as dt

    cfg = load_config(write(tmp_path, GOOD + RULES_OK))
    assert cfg.rules.watch.day_start == dt.time(6, 30) and cfg.rules.watch.no_data_day_s == 3600
    anna = cfg.rules.person_of("rfx")
    assert anna is not None and anna.id == "anna" and anna.rules is not None
    assert anna.rules[0].conditions[0].threshold == 88 and anna.rules[0].hold_s == 60  # the rest from the default
    assert load_config(write(tmp_path, GOOD)).rules.persons == ()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (("no_data_day_s = 3600", "no_data_day_s = 5"), ["no_data_day_s", "5", "60..604800"]),
        (("no_data_day_s = 3600", "no_data_dy_s = 1"), ["rules.no_data_dy_s", "not a known key"]),
        (('timezone = "Europe/Berlin"', 'timezone = "Mars/Olympus"'), ["timezone", "Mars/Olympus"]),
        (('devices = ["rfx"]', 'devices = ["wrist-9"]'), ["rules.person[0] (anna).devices", "wrist-9", "configured"]),
        (("threshold = 88", 'threshold = "low"'), ["rule spo2-low", "threshold", "'low'", "not a number"]),
        (("threshold = 88", "threshold = 88\ncolour = 1"), ["rule spo2-low", "colour", "unknown key"]),
        (("day_start = 06:30:00", 'day_start = "noon"'), ["rules.day_start", "'noon'", "time of day"]),
    ],
)
def test_a_rules_mistake_is_one_line_too(tmp_path: Path, change: tuple[str, str], words: list[str]) -> None:
    path = write(tmp_path, GOOD + RULES_OK.replace(*change, 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text
    for w in words:
        assert w in text, (w, text)


def test_a_wrist_monitors_spo2_calibration_must_be_a_known_model(tmp_path: Path) -> None:
    wrist = '\n[[devices]]\nid = "w1"\nkind = "ble-wrist"\naddress = "AA:BB:CC:DD:EE:FF"\nspo2_calibration = "{}"\n'
    cfg = load_config(write(tmp_path, GOOD + wrist.format("MAX30102")))
    assert cfg.devices[1].options.spo2_calibration == "MAX30102"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD + wrist.format("max30103")))
    assert "devices[1] (w1).spo2_calibration = 'max30103'" in str(info.value) and "max30102" in str(info.value)


def test_the_heart_rate_while_moving_is_a_wrist_option_the_dsp_stream_follows(tmp_path: Path) -> None:
    from gateway.daemon import dsp_stream

    wrist = '\n[[devices]]\nid = "w1"\nkind = "ble-wrist"\naddress = "AA:BB:CC:DD:EE:FF"\n'
    plain = load_config(write(tmp_path, GOOD + wrist)).devices[1].options
    assert plain.hr_while_moving is False and dsp_stream("w1", plain).motion_hr is False
    on = load_config(write(tmp_path, GOOD + wrist + "hr_while_moving = true\n")).devices[1].options
    assert dsp_stream("w1", on).motion_hr is True
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD + wrist + 'hr_while_moving = "yes"\n'))
    assert "hr_while_moving" in str(info.value)
    # a device kind without the option (the serial oximeter) streams without it
    assert dsp_stream("ox", None).motion_hr is False


def test_a_person_may_own_the_buttons_a_receiver_hears_and_the_care_rules_know_it(tmp_path: Path) -> None:
    from gateway.care import CareDesk
    from gateway.messages import Topics
    from gateway.registry import Registry

    cfg = load_config(write(tmp_path, GOOD + RULES_OK.replace('devices = ["rfx"]', 'devices = ["rfx", "sos-1"]')))
    anna = cfg.rules.person_of("sos-1")
    assert anna is not None and anna.id == "anna" and anna.buttons == ("sos-1",)
    assert cfg.rules.person_of("rfx") is anna and "rfx" not in anna.buttons
    registry = Registry(tmp_path / "registry.json")
    desk = CareDesk(cfg.rules, Topics("homecare/v1", "gw"), lambda m: asyncio.Future(), registry)
    try:
        devices = {d["id"]: d for d in desk.engine.snapshot()["devices"]}
        assert devices["sos-1"]["person_id"] == "anna" and devices["sos-1"]["watch_link"] is False
    finally:
        desk.close()
    with pytest.raises(ConfigError, match=r"sos-9.*buttons their receivers hear"):
        load_config(write(tmp_path, GOOD + RULES_OK.replace('devices = ["rfx"]', 'devices = ["rfx", "sos-9"]')))


def test_two_devices_on_one_serial_port_or_ble_address_are_refused(tmp_path: Path) -> None:
    """Both would open it: after a replug whichever reopens first holds its exclusive lock, and the other
    writes its own protocol to the device (the SOS receiver, or the SMS modem)."""
    rfx_port = "/dev/serial/by-id/usb-RFXCOM_RFXtrx433_A1-if00-port0"
    oximeter_on_rfx = GOOD + f'\n[[devices]]\nid = "ox"\nkind = "serial-cms50"\nport = "{rfx_port}"\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, oximeter_on_rfx))
    text = str(info.value)
    assert "devices[1] (ox).port" in text and "device rfx's" in text and info.value.key == "port"

    two_pendants = GOOD + "".join(
        f'\n[[devices]]\nid = "p{i}"\nkind = "ble-sos"\naddress = "{a}"\n'
        for i, a in enumerate(["C0:FF:EE:00:00:01", "c0:ff:ee:00:00:01"])
    )
    with pytest.raises(ConfigError, match=r"\[2\] \(p1\)\.address.*BLE address C0:FF:EE:00:00:01 is device p0's"):
        load_config(write(tmp_path, two_pendants))

    on_the_modem = GOOD.replace("usb-RFXCOM_RFXtrx433_A1-if00-port0", "usb-modem") + (
        '\n[alarm]\ncare_centre = ["+8610000000001"]\n\n[alarm.modem]\nport = "/dev/serial/by-id/usb-modem"\n'
    )
    with pytest.raises(ConfigError, match=r"devices\[0\] \(rfx\)\.port.*the SMS modem's"):
        load_config(write(tmp_path, on_the_modem))
