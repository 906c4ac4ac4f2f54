"""[alarm] and [alarm.modem]: typed, validated in gateway/config.py, one line per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError

BASE = """
[gateway]
id = "gw-1"
data_dir = "/tmp/x"

[uplink]
host = "b"
tls = false
"""
ALARM = """
[alarm]
sms_after_s = 10
care_centre = ["+8610000000001"]
guardians = ["+8613900000001", "13900000002"]
language = "en"
names = { anna = "Anna Li" }

[alarm.modem]
port = "/dev/serial/by-id/usb-modem"
validity_h = 12
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "gateway.toml"
    p.write_text(text)
    return p


def test_a_valid_alarm_section(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE + ALARM)).alarm
    assert cfg.enabled and cfg.sms_after_s == 10.0 and cfg.language == "en"
    assert cfg.recipients == ("+8610000000001", "+8613900000001", "13900000002")  # care centre first
    assert cfg.names == (("anna", "Anna Li"),)
    assert cfg.modem is not None and cfg.modem.port == "/dev/serial/by-id/usb-modem" and cfg.modem.validity_h == 12
    assert cfg.modem.baudrate == 115200 and cfg.max_attempts == 3 and cfg.unavailable_after_s == 3600.0


def test_without_the_section_the_fallback_is_off(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE)).alarm
    assert not cfg.enabled and cfg.modem is None


@pytest.mark.parametrize(
    ("change", "where", "expected"),
    [
        (('"+8610000000001"', '"+86 100-0000"'), "alarm.care_centre", "phone numbers"),
        (('language = "en"', 'language = "fr"'), "alarm.language", '"zh" or "en"'),
        (('language = "en"', 'template = "SOS {person}"'), "alarm.template", "{drill}"),
        (('language = "en"', 'template = "{drill} {nmae} Anna Li"'), "alarm.template", "(not nmae)"),
        (('language = "en"', 'template = "{drill} Anna Li {person:d}"'), "alarm.template", "format spec in {person}"),
        (('language = "en"', 'template = "{drill} Anna Li {person!x}"'), "alarm.template", "conversion in {person}"),
        (('names = { anna = "Anna Li" }', 'names = { anna = "Anna Li", bob = 7 }'), "alarm.names.bob", "a string"),
        (('names = { anna = "Anna Li" }', 'names = "Anna Li"'), "alarm.names", "a table"),
        (("sms_after_s = 10", "sms_after_s = -1"), "alarm.sms_after_s", "0..3600 seconds"),
        (("sms_after_s = 10", "sms_aftr_s = 1"), "alarm.sms_aftr_s", "not a known key"),
        (("validity_h = 12", "baudrate = 1234"), "alarm.modem.baudrate = 1234", "115200"),
        (('port = "/dev/serial/by-id/usb-modem"', 'port = ""'), "alarm.modem.port", "usb_vid"),
        (('port = "/dev/serial/by-id/usb-modem"', 'pin_file = "/nonexistent/pin"'), "alarm.modem.pin_file", "file"),
        (('language = "en"', 'timezone = "Mars/Olympus"'), "alarm.timezone", "IANA time zone"),
        (("validity_h = 12", "validity_h = 12\nspeed = 1"), "alarm.modem.speed", "not a known key"),
    ],
)
def test_mistakes_are_one_line_naming_the_key(
    tmp_path: Path, change: tuple[str, str], where: str, expected: str
) -> None:
    text = BASE + ALARM.replace(*change)
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    msg = str(err.value)
    assert where in msg and expected in msg and "\n" not in msg
    assert "86 100-0000" not in msg, "a phone number is personal data: not in the error either"
    assert "Anna Li" not in msg, "nor is a person's name"


def test_recipients_and_modem_are_required_when_enabled(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one number"):
        load_config(
            write(
                tmp_path,
                BASE
                + ALARM.replace('care_centre = ["+8610000000001"]', "").replace(
                    'guardians = ["+8613900000001", "13900000002"]', ""
                ),
            )
        )
    with pytest.raises(ConfigError, match=r"\[alarm.modem\] is missing"):
        load_config(write(tmp_path, BASE + ALARM.split("[alarm.modem]")[0]))
    off = BASE + "[alarm]\nenabled = false\n"
    assert not load_config(write(tmp_path, off)).alarm.enabled
