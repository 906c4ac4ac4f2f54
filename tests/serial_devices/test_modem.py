"""The modem driver against the AT modem simulator on a real pty."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from drivers.options import OptionError
from drivers.serial import at
from drivers.serial.modem import UNKNOWN_REFERENCE, Modem, ModemOptions, ModemUnavailable
from simulators.modem_sim import ModemSimulator, ModemState
from tests.helpers import until

NUMBER = "+8613800138000"


@contextlib.asynccontextmanager
async def running(tmp_path: Path, state: ModemState, **opts: object) -> AsyncIterator[tuple[ModemSimulator, Modem]]:
    link = tmp_path / "by-id" / "usb-SimTech_SIM7600-if02-port0"
    async with ModemSimulator(link, state=state) as sim:
        options = ModemOptions(port=str(link), poll_s=0.3, command_timeout_s=2.0, **opts)  # type: ignore[arg-type]
        modem = Modem("lte", options)
        task = asyncio.create_task(modem.run())
        try:
            yield sim, modem
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def test_options_are_validated_at_construction() -> None:
    with pytest.raises(OptionError, match="port"):
        ModemOptions()
    with pytest.raises(OptionError, match="baudrate"):
        ModemOptions(port="/dev/x", baudrate=1234)
    with pytest.raises(OptionError, match="validity_h"):
        ModemOptions(port="/dev/x", validity_h=0)
    assert ModemOptions(port="/dev/x", validity_h=24).tp_vp == 0xA7  # 24 hours, 23.040
    assert ModemOptions(port="/dev/x", validity_h=1).tp_vp == 11  # 12 x 5 minutes
    assert ModemOptions(port="/dev/x", validity_h=72).tp_vp == 169  # 3 days (python-gsmmodem's vector)


def test_startup_with_pin_then_gsm7_and_ucs2_sms_with_delivery_reports(tmp_path: Path) -> None:
    pin = tmp_path / "sim-pin"
    pin.write_text("4321\n")
    reports: list[at.StatusReport] = []

    async def go() -> tuple[ModemSimulator, Modem, list[list[int]]]:
        async with running(tmp_path, ModemState(sim="pin", pin="4321", csq=17), pin_file=str(pin)) as (sim, modem):
            modem.on_report.append(reports.append)
            await until(lambda: modem.health.ready, 10, "the modem ready")
            mrs = [
                await modem.send_sms(NUMBER, "SOS: Anna pressed {bedroom}"),
                await modem.send_sms(NUMBER, "紧急" * 40),
            ]
            await until(lambda: len(reports) == 3, 10, "three delivery reports (1 + 2 parts)")
            return sim, modem, mrs

    sim, modem, mrs = asyncio.run(go())
    startup = [c for c in sim.commands if not c.startswith("AT+CMGS")]
    assert startup[:4] == ["AT", "ATE0", "AT+CMEE=2", "AT+CGMM"]
    assert {"AT+CPIN?", 'AT+CPIN="4321"', "AT+CMGF=0", "AT+CNMI=2,1,0,1,0", "AT+CREG?", "AT+CSQ", "AT+COPS?"} <= set(
        startup
    )
    assert [(s.to, s.text, s.coding, s.parts) for s in sim.sent] == [
        (NUMBER, "SOS: Anna pressed {bedroom}", "gsm7", 1),
        (NUMBER, "紧急" * 40, "ucs2", 2),
    ]
    assert sorted(r.message_ref for r in reports) == sorted(mrs[0] + mrs[1])
    h = modem.health
    assert (h.sim, h.registration, h.operator, h.csq, h.dbm, h.sms_sent) == ("ready", "home", "SIMNET", 17, -79, 2)
    assert h.model == "SIMCOM_SIM7600G-H" and h.last_sms_at is not None


def test_sim_missing_not_registered_and_cms_38_are_typed_and_recover(tmp_path: Path) -> None:
    async def go() -> Modem:
        async with running(tmp_path, ModemState(sim="missing")) as (sim, modem):
            await until(lambda: modem.health.present and modem.health.sim == "missing", 10, "SIM missing seen")
            with pytest.raises(at.SimMissing):
                await modem.send_sms(NUMBER, "x")
            sim.state.sim, sim.state.registration = "ready", "searching"
            await until(lambda: modem.health.sim == "ready", 10, "SIM inserted seen by the poll")
            with pytest.raises(at.NotRegistered):
                await modem.send_sms(NUMBER, "x")
            sim.state.registration = "roaming"
            sim.state.cms_errors = [38]
            with pytest.raises(at.NetworkFailure):
                await modem.send_sms(NUMBER, "x")  # the send itself re-checks the registration first
            assert await modem.send_sms(NUMBER, "y")
            assert [s.text for s in sim.sent] == ["y"]
            return modem

    modem = asyncio.run(go())
    assert modem.health.sms_failed == 1 and modem.health.registration == "roaming"
    assert "38" in (modem.health.last_error or "")


def test_a_refused_pin_is_never_entered_twice_nor_shown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pin = tmp_path / "sim-pin"
    pin.write_text("1111")

    async def go() -> tuple[ModemSimulator, Modem]:
        async with running(tmp_path, ModemState(sim="pin", pin="9999"), pin_file=str(pin)) as (sim, modem):
            await until(lambda: modem.health.sim == "wrong_pin", 10, "the PIN refused")
            await asyncio.sleep(1.0)  # three polls
            with pytest.raises(at.WrongPin):
                await modem.send_sms(NUMBER, "x")
            return sim, modem

    sim, modem = asyncio.run(go())
    assert sum(c.startswith("AT+CPIN=") for c in sim.commands) == 1
    # The SIM PIN is a secret: the refusal is reported (health, status, logs) without it.
    assert "AT+CPIN=<redacted>" in (modem.health.last_error or "")
    assert "1111" not in str(modem.health.to_dict())
    assert not [r.getMessage() for r in caplog.records if "1111" in r.getMessage()]


def test_unplugged_modem_fails_fast_and_comes_back(tmp_path: Path) -> None:
    async def go() -> tuple[ModemSimulator, Modem]:
        async with running(tmp_path, ModemState()) as (sim, modem):
            await until(lambda: modem.health.ready, 10, "ready")
            sim.unplug()
            await until(lambda: not modem.health.present, 10, "the unplug seen")
            with pytest.raises(ModemUnavailable):
                await modem.send_sms(NUMBER, "x")
            sim.plug()
            await until(lambda: modem.health.ready, 10, "ready again")
            await modem.send_sms(NUMBER, "back")
            return sim, modem

    sim, modem = asyncio.run(go())
    assert [s.text for s in sim.sent] == ["back"]
    assert modem.reconnector.connects == 2


def _rewrite_replies(sim: ModemSimulator, rewrite: Callable[[str], str]) -> None:
    """The simulator's answer lines through ``rewrite``: a modem whose firmware answers oddly."""
    original = sim._reply

    def reply(*lines: str) -> None:
        original(*(rewrite(line) for line in lines))

    sim._reply = reply  # type: ignore[method-assign]


def test_an_sms_the_network_took_with_an_unreadable_reference_is_sent_not_failed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def go() -> tuple[ModemSimulator, Modem, list[list[int]]]:
        async with running(tmp_path, ModemState()) as (sim, modem):
            await until(lambda: modem.health.ready, 10, "ready")
            # "+CMGS: ²": str.isdigit() is true, int() raised ValueError after the network took the SMS.
            _rewrite_replies(sim, lambda line: "+CMGS: \u00b2" if line.startswith("+CMGS:") else line)
            mrs = [await modem.send_sms(NUMBER, "SOS: Anna pressed bedroom"), await modem.send_sms(NUMBER, "紧急" * 40)]
            assert modem.health.ready  # still the same session
            return sim, modem, mrs

    sim, modem, mrs = asyncio.run(go())
    # Sent, as the network said: a reference that cannot be read, never a failure (the alarm would
    # send the SMS again) nor an exception (the alarm's loop would not record the send).
    assert mrs == [[UNKNOWN_REFERENCE], [UNKNOWN_REFERENCE, UNKNOWN_REFERENCE]]
    assert [(s.text, s.parts) for s in sim.sent] == [("SOS: Anna pressed bedroom", 1), ("紧急" * 40, 2)]
    h = modem.health
    assert (h.sms_sent, h.sms_failed, h.last_error) == (2, 0, None)
    assert modem.reconnector.connects == 1
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "drivers.serial.modem"]
    assert len([m for m in loud if "message reference" in m]) == 3  # one per part
    assert not [m for m in loud if NUMBER.lstrip("+") in m]  # phone numbers at DEBUG only


def test_an_error_code_in_unicode_digits_is_a_typed_failure_and_the_reader_lives_on(tmp_path: Path) -> None:
    async def go() -> tuple[ModemSimulator, Modem]:
        async with running(tmp_path, ModemState()) as (sim, modem):
            await until(lambda: modem.health.ready, 10, "ready")
            _rewrite_replies(sim, lambda line: "+CMS ERROR: \u00b2" if line.startswith("+CMS ERROR") else line)
            sim.state.cms_errors = [38]
            with pytest.raises(at.CommandError):
                await modem.send_sms(NUMBER, "x")
            assert await modem.send_sms(NUMBER, "y")  # same session: the reader did not die on "²"
            await asyncio.sleep(0.7)  # two polls
            assert modem.health.ready
            return sim, modem

    sim, modem = asyncio.run(go())
    assert [s.text for s in sim.sent] == ["y"]
    assert modem.reconnector.connects == 1 and modem.health.sms_failed == 1
