"""The SMS fallback and call requests (issue 14): SOS only, unless ``[alarm] calls = true``.

Sans-I/O texts and reports first; then the real gatewayd with a two-key RFXtrx pendant and the modem
simulator on ptys, the broker down at the presses."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from gateway.alarm import Case, Recipient, fallback_message, render_text
from gateway.config import AlarmSection
from gateway.messages import Topics
from simulators.broker import Mosquitto
from simulators.modem_sim import ModemSimulator
from simulators.rfxtrx_sim import STATUSES, RfxtrxSimulator
from tests.helpers import Collector, GatewayProcess, gateway_config, until
from tests.test_calls import pendant
from tests.test_sms_fallback import CC, G1, SMS_AFTER_S, alarm_section

T = dt.datetime(2026, 11, 24, 3, 24, 6, tzinfo=dt.UTC).timestamp()


def test_a_call_request_has_its_own_text_and_report() -> None:
    cfg = AlarmSection(
        enabled=True, care_centre=(CC,), language="en", names=(("anna", "Anna Li"),), timezone="UTC", calls=True
    )
    text = render_text(cfg, gateway_id="gw-1", device_id="b1", person_id="anna", at=T, drill=False, kind="call")
    assert text.startswith("Call request: Anna Li pressed the call button b1 at 2026-11-24 03:24")
    assert "emergency" not in text.lower()
    own = dataclasses.replace(cfg, template="{drill}HELP {person} {button} {time} {gateway}")
    assert render_text(own, gateway_id="g", device_id="b1", person_id=None, at=T, drill=False).startswith("HELP")
    assert render_text(own, gateway_id="g", device_id="b1", person_id=None, at=T, drill=True, kind="call").startswith(
        "DRILL - NOT A REAL EMERGENCY. Call request"
    ), "an own template is the SOS text; a call keeps the shipped one"
    zh = dataclasses.replace(cfg, language="zh")
    assert "呼叫请求" in render_text(zh, gateway_id="g", device_id="b1", person_id=None, at=T, drill=False, kind="call")
    case = Case("call-b1-x", "b1", T, False, text, T, [Recipient(CC)], kind="call")
    report = fallback_message(Topics("homecare/v1", "gw-1"), case)
    assert b'"kind":"call"' in report.body and b'"severity":"medium"' in report.body
    assert Case.from_json(case.to_json()) == case


def pendant_and_modem(rfx: Path, modem: Path, *, calls: bool) -> str:
    alarm = alarm_section(modem, language="en").replace("[alarm]\n", f"[alarm]\ncalls = {str(calls).lower()}\n", 1)
    return pendant(rfx) + alarm


def reported_kinds(cloud: Collector) -> set[str]:
    return {a["kind"] for a in cloud.of_type("alert") if "fallback" in a}


@pytest.mark.parametrize("calls", [False, True])
def test_call_presses_go_by_sms_only_when_opted_in(
    tmp_path: Path, broker: Mosquitto, cloud: Collector, calls: bool
) -> None:
    rfx_link = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_AC-if00-port0"
    modem_link = tmp_path / "dev" / "usb-SimTech_SIM7600-if02-port0"
    config = gateway_config(tmp_path, broker.port, devices=pendant_and_modem(rfx_link, modem_link, calls=calls))
    gw = GatewayProcess(config)
    broker.stop()

    async def go() -> ModemSimulator:
        async with RfxtrxSimulator(rfx_link) as rfx, ModemSimulator(modem_link) as modem:
            gw.start()
            try:
                await until(lambda: rfx.started, 20, "the daemon to start the receiver")
                await until(lambda: "AT+CNMI=2,1,0,1,0" in modem.commands, 20, "modem up")
                await rfx.press(0xA1B2C3, repeats=3, gap_s=0.02, status=STATUSES["arm_home"])
                await asyncio.sleep(0.5)
                await rfx.press(0xA1B2C3, repeats=3, gap_s=0.02, status=STATUSES["arm_home"])  # the same request
                await asyncio.sleep(0.5)
                await rfx.press(0xA1B2C3, repeats=3, gap_s=0.02, status=STATUSES["panic"])
                expected = 4 if calls else 2
                await until(lambda: len(modem.sent) >= expected, SMS_AFTER_S + 20, f"{expected} SMS")
                await asyncio.sleep(SMS_AFTER_S + 1.0)  # anything more would be sent by now
                broker.start()
                await until(lambda: len([a for a in cloud.of_type("alert") if "fallback" not in a]) >= 3, 30, "alerts")
                want = {"call", "sos"} if calls else {"sos"}
                await until(lambda: reported_kinds(cloud) >= want, 30, "the fallback reports")
            finally:
                gw.stop_quietly()
        return modem

    modem = asyncio.run(go())
    sos_texts = [s for s in modem.sent if s.text.startswith("SOS: ")]
    call_texts = [s for s in modem.sent if s.text.startswith("Call request: ")]
    assert sorted(s.to for s in sos_texts) == sorted([CC, G1])
    assert sorted(s.to for s in call_texts) == (sorted([CC, G1]) if calls else []), "one round per request"
    assert len(modem.sent) == len(sos_texts) + len(call_texts)
    kinds = sorted(a["kind"] for a in cloud.of_type("alert") if "fallback" not in a)
    assert kinds == ["call", "call", "sos"]
    assert reported_kinds(cloud) == ({"call", "sos"} if calls else {"sos"})
