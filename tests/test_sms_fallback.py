"""The SMS fallback end to end: RFXtrx and modem simulators on real ptys, the real daemon, a real
Mosquitto, and the cloud subscriber checking the contract."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.serial import at
from drivers.serial.modem import ModemOptions
from gateway import alarm, messages
from gateway.alarm import AlarmStore, Attempt, Case, Recipient, SendSms, SmsFallback
from gateway.clock import Clock, Timeline
from gateway.config import AlarmSection
from gateway.ctl import call as ctl_call
from gateway.messages import Topics
from gateway.outbox import NewMessage
from simulators.broker import Mosquitto
from simulators.modem_sim import ModemSimulator, ModemState
from simulators.rfxtrx_sim import RfxtrxSimulator
from tests.helpers import REPO, Collector, GatewayProcess, Hands, gateway_config, rfxtrx_device, until

CC, G1 = "+8610000000001", "+8613900000001"
SMS_AFTER_S = 2.0


def alarm_section(modem: Path, *, language: str = "zh", **keys: float) -> str:
    settings = {"retry_base_s": 0.5, "retry_cap_s": 2.0, "report_timeout_s": 30.0, **keys}
    lines = "\n".join(f"{k} = {v}" for k, v in settings.items())
    return f"""
[alarm]
sms_after_s = {SMS_AFTER_S}
care_centre = ["{CC}"]
guardians = ["{G1}"]
language = "{language}"
names = {{ "sos-1" = "bedroom" }}
person = "Anna"
timezone = "UTC"
{lines}

[alarm.modem]
port = "{modem}"
poll_s = 0.5
command_timeout_s = 2.0
"""


class Rig:
    def __init__(self, tmp_path: Path, broker: Mosquitto, **alarm: Any) -> None:
        self.rfx_link = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_SMS-if00-port0"
        self.modem_link = tmp_path / "dev" / "usb-SimTech_SIM7600-if02-port0"
        self.config = gateway_config(
            tmp_path,
            broker.port,
            devices=rfxtrx_device(self.rfx_link),
            outbox_extra="",
        )
        text = self.config.read_text().replace("[outbox]", "[outbox]", 1)
        self.config.write_text(text + alarm_section(self.modem_link, **alarm))
        self.gw = GatewayProcess(self.config, log_level="DEBUG")

    @contextlib.asynccontextmanager
    async def running(self, state: ModemState | None = None) -> AsyncIterator[tuple[RfxtrxSimulator, ModemSimulator]]:
        async with RfxtrxSimulator(self.rfx_link) as rfx, ModemSimulator(self.modem_link, state=state) as modem:
            self.gw.start()
            try:
                await until(lambda: rfx.started, 20, "the daemon to start the receiver")
                await until(lambda: "AT+CNMI=2,1,0,1,0" in modem.commands or modem.state.sim != "ready", 20, "modem up")
                yield rfx, modem
            finally:
                self.gw.stop_quietly()

    async def status(self) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.ctl", "--config", str(self.config), "--json", "status",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
        )  # fmt: skip
        async with asyncio.timeout(30):
            out, _ = await proc.communicate()
        result: dict[str, Any] = json.loads(out)
        return result


def ctl_run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.ctl", "--config", str(config), *args],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip


def fallback_reports(cloud: Collector) -> list[dict[str, Any]]:
    return [a for a in cloud.of_type("alert") if "fallback" in a]


def test_broker_down_sos_goes_by_sms_once_per_recipient_in_ucs2_then_reported(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    rig = Rig(tmp_path, broker, language="zh")
    broker.stop()

    async def go() -> tuple[ModemSimulator, float, float]:
        async with rig.running() as (rfx, modem):
            t_press = time.monotonic()
            await rfx.press(0xA1B2C3, repeats=4, gap_s=0.03)
            await until(lambda: len(modem.sent) >= 2, SMS_AFTER_S + 15, "an SMS to each recipient")
            t_sms = time.monotonic()
            await asyncio.sleep(2.0)  # delivery reports arrive; nothing more may be sent
            st = await rig.status()
            broker.start()
            await until(lambda: fallback_reports(cloud), 30, "the fallback report at the cloud")
            return modem, t_sms - t_press, st["alarm"]

    modem, took_s, alarm = asyncio.run(go())
    assert [s.to for s in modem.sent] == [CC, G1], "exactly one SMS per recipient, care centre first"
    assert took_s < SMS_AFTER_S + 10
    for s in modem.sent:
        assert s.coding == "ucs2"
        assert s.text.startswith("紧急呼叫：Anna于") and "（bedroom）" in s.text and "gw-test" in s.text  # noqa: RUF001
        assert "演练" not in s.text
    assert alarm["modem"]["ready"] and alarm["modem"]["operator"] == "SIMNET" and alarm["modem"]["sms_sent"] == 2
    sos = [a for a in cloud.of_type("alert") if a["kind"] == "sos" and "fallback" not in a]
    assert len(sos) == 1, "the SOS itself reaches the broker when it is back"
    last = fallback_reports(cloud)[-1]
    assert last["alert_id"] == sos[0]["alert_id"] and last["drill"] is False
    assert [(f["via"], f["to"], f["status"]) for f in last["fallback"]] == [
        ("sms", CC, "delivered"),
        ("sms", G1, "delivered"),
    ]
    log = rig.gw.log()
    assert "Traceback" not in log
    info_up = "\n".join(line for line in log.splitlines() if " DEBUG " not in line)
    assert CC not in info_up and G1 not in info_up, "phone numbers only at DEBUG"


def test_broker_up_means_no_sms(tmp_path: Path, broker: Mosquitto, cloud: Collector) -> None:
    rig = Rig(tmp_path, broker)

    async def go() -> ModemSimulator:
        async with rig.running() as (rfx, modem):
            await rfx.press(0xA1B2C3)
            await until(lambda: cloud.of_type("alert"), 20, "the SOS at the cloud")
            await asyncio.sleep(SMS_AFTER_S + 2.0)
            return modem

    modem = asyncio.run(go())
    assert modem.sent == []
    assert not [c for c in modem.commands if c.startswith("AT+CMGS")]
    assert not fallback_reports(cloud)


def test_modem_unplugged_at_the_press_then_back_and_cms_38_retried_drill_in_gsm7(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    rig = Rig(tmp_path, broker, language="en")

    async def go() -> tuple[ModemSimulator, dict[str, Any]]:
        async with rig.running() as (rfx, modem):
            drill_args = ("drill", "--minutes", "1", "--button", "sos-1")
            drill = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.ctl", "--config", str(rig.config), *drill_args,
                stdout=subprocess.DEVNULL, cwd=REPO,
            )  # fmt: skip
            assert await drill.wait() == 0
            broker.stop()
            modem.unplug()
            await rfx.press(0xA1B2C3)
            await asyncio.sleep(SMS_AFTER_S + 1.5)  # the fallback tries, the modem is away
            st = (await rig.status())["alarm"]
            assert st["modem"]["present"] is False and st["open"], st
            modem.state.cms_errors = [38]  # the first send after the return meets a network failure
            modem.plug()
            await until(lambda: len(modem.sent) >= 2, 20, "both SMS once the modem is back")
            broker.start()
            await until(
                lambda: fallback_reports(cloud) and len(fallback_reports(cloud)[-1]["fallback"]) >= 5, 30, "report"
            )
            await until(
                lambda: fallback_reports(cloud)[-1]["fallback"][-1]["status"] == "delivered", 30, "final report"
            )
            return modem, fallback_reports(cloud)[-1]

    modem, report = asyncio.run(go())
    assert sorted(s.to for s in modem.sent) == sorted([CC, G1]), "one SMS each (the CMS 38 retry may come second)"
    for s in modem.sent:
        assert s.coding == "gsm7" and s.parts == 2  # the English text is longer than 160 characters
        assert s.text.startswith("DRILL - NOT A REAL EMERGENCY. SOS: Anna pressed the emergency button bedroom at ")
    statuses = [(f["to"], f["status"], f.get("error")) for f in report["fallback"]]
    assert (CC, "failed", "modem_unavailable") in statuses and (G1, "failed", "modem_unavailable") in statuses
    assert (CC, "failed", "network_failure") in statuses or (G1, "failed", "network_failure") in statuses
    assert sorted(s for s in statuses if s[1] == "delivered") == [(CC, "delivered", None), (G1, "delivered", None)]
    assert report["drill"] is True
    sos = [a for a in cloud.of_type("alert") if a["kind"] == "sos" and "fallback" not in a]
    assert len(sos) == 1 and sos[0]["drill"] is True, "the SOS reached MQTT although the modem was away"


def test_sim_missing_and_not_registered_are_clear_in_status_and_retried(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    rig = Rig(tmp_path, broker)
    broker.stop()

    async def go() -> tuple[ModemSimulator, list[dict[str, Any]]]:
        seen: list[dict[str, Any]] = []
        async with rig.running(ModemState(sim="missing")) as (rfx, modem):
            await rfx.press(0xA1B2C3)
            await asyncio.sleep(SMS_AFTER_S + 1.0)
            seen.append((await rig.status())["alarm"]["modem"])
            human = await asyncio.to_thread(ctl_run, rig.config, "status")
            assert "sms       cannot send: SIM missing" in human.stdout, human.stdout
            found = await asyncio.to_thread(ctl_run, rig.config, "--json", "doctor")
            modem_check = next(f for f in json.loads(found.stdout)["findings"] if f["id"] == "modem")
            assert modem_check["status"] == "fail" and "SIM missing" in modem_check["message"], modem_check
            assert "Insert the SIM" in modem_check["action"]
            modem.state.sim, modem.state.registration = "ready", "searching"
            await asyncio.sleep(1.5)
            seen.append((await rig.status())["alarm"]["modem"])
            assert modem.sent == []
            modem.state.registration = "home"
            await until(lambda: len(modem.sent) >= 2, 20, "the SMS once registered")
        return modem, seen

    modem, seen = asyncio.run(go())
    assert (seen[0]["present"], seen[0]["sim"], seen[0]["ready"]) == (True, "missing", False)
    assert (seen[1]["sim"], seen[1]["registration"], seen[1]["ready"]) == ("ready", "searching", False)
    assert [s.to for s in modem.sent] == [CC, G1]


def test_restart_in_the_middle_of_retries_no_duplicate_and_no_lost_attempt(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    rig = Rig(tmp_path, broker, max_attempts=6, report_timeout_s=1.0)
    broker.stop()
    # the care centre's phone reports delivery; the guardian's phone is off (no report ever)
    state = ModemState(report_by_number={G1: "none"})

    async def go() -> tuple[ModemSimulator, dict[str, Any]]:
        async with RfxtrxSimulator(rig.rfx_link) as rfx, ModemSimulator(rig.modem_link, state=state) as modem:
            rig.gw.start()
            await until(lambda: rfx.started, 20, "receiver")
            await rfx.press(0xA1B2C3)
            await until(lambda: sum(s.to == G1 for s in modem.sent) >= 2, 30, "the guardian retried")
            rig.gw.kill()  # no orderly stop: as a power cut
            before = len(modem.sent)
            rig.gw = GatewayProcess(rig.config, log_level="DEBUG")
            rig.gw.start()
            try:
                await until(lambda: len(modem.sent) >= before + 1, 30, "the retries go on after the restart")
                await asyncio.sleep(1.0)
                broker.start()
                await until(lambda: fallback_reports(cloud), 30, "the report")
                await asyncio.sleep(1.0)
            finally:
                rig.gw.stop_quietly()
            return modem, fallback_reports(cloud)[-1]

    modem, report = asyncio.run(go())
    assert sum(s.to == CC for s in modem.sent) == 1, "no duplicate to the recipient with a delivery report"
    to_g1 = [f for f in report["fallback"] if f["to"] == G1]
    handed = [f for f in to_g1 if f["status"] in ("sent", "no_report", "interrupted", "sending")]
    assert sum(s.to == G1 for s in modem.sent) <= len(handed), "every SMS the modem sent is in the record"
    assert [f["status"] for f in report["fallback"] if f["to"] == CC] == ["delivered"]


def test_the_sans_io_text_fits_what_the_modem_logged() -> None:
    # the same PDU path the daemon uses, for a text with GSM extension characters
    text = "SOS [bedroom] {Anna} ~ 5 €"
    (pdu,) = at.encode_sms(CC, text)
    assert at.decode_submit(pdu.hex).text == text


def test_broker_frozen_puback_late_means_sms(tmp_path: Path, broker: Mosquitto, cloud: Collector) -> None:
    """The broker's process stopped (SIGSTOP): the TCP link stays up, the uplink still says connected,
    but no PUBACK comes: the SMS leaves sms_after_s after the press."""
    rig = Rig(tmp_path, broker, language="en")

    async def go() -> tuple[ModemSimulator, float]:
        async with rig.running() as (rfx, modem):
            await until(lambda: cloud.of_type("device_state"), 20, "the uplink up")
            assert broker.proc is not None
            broker.proc.send_signal(signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                await rfx.press(0xA1B2C3)
                await until(lambda: len(modem.sent) >= 2, SMS_AFTER_S + 15, "the SMS")
                took = time.monotonic() - t0
            finally:
                broker.proc.send_signal(signal.SIGCONT)
            await until(lambda: fallback_reports(cloud), 30, "the report once the broker runs again")
            return modem, took

    modem, took = asyncio.run(go())
    assert [s.to for s in modem.sent] == [CC, G1]
    assert took >= SMS_AFTER_S - 0.2, "not before sms_after_s: the link looked up"


def test_an_ack_stops_further_sms(tmp_path: Path, broker: Mosquitto, cloud: Collector) -> None:
    rig = Rig(tmp_path, broker, max_attempts=10, report_timeout_s=0.5)
    broker.stop()
    state = ModemState(report_by_number={G1: "none"})  # the guardian's phone is off: retried

    async def go() -> tuple[ModemSimulator, int]:
        async with rig.running(state) as (rfx, modem):
            await rfx.press(0xA1B2C3)
            await until(lambda: sum(s.to == G1 for s in modem.sent) >= 2, 30, "the guardian retried")
            alert_id = (await rig.status())["alarm"]["open"][0]["alert_id"]
            sock = rig.config.parent / "data" / "control.sock"
            await asyncio.to_thread(ctl_call, sock, "alert-ack", alert_id=alert_id)
            await asyncio.sleep(0.5)  # one send may have been in flight
            n = len(modem.sent)
            await asyncio.sleep(4.0)  # several retry intervals
            return modem, n

    modem, n_at_ack = asyncio.run(go())
    assert len(modem.sent) == n_at_ack, "no SMS after the care centre's acknowledgement"
    assert sum(s.to == CC for s in modem.sent) == 1


def test_modem_unavailable_watch_is_raised_and_cleared(tmp_path: Path, broker: Mosquitto, cloud: Collector) -> None:
    rig = Rig(tmp_path, broker, unavailable_after_s=1.0)

    def watch(state: str) -> list[dict[str, Any]]:
        return [a for a in cloud.of_type("alert") if a["kind"] == "modem_unavailable" and a["state"] == state]

    async def go() -> ModemSimulator:
        async with rig.running(ModemState(sim="missing")) as (_rfx, modem):
            await until(lambda: watch("raised"), 20, "modem_unavailable raised")
            modem.state.sim = "ready"
            await until(lambda: watch("cleared"), 20, "modem_unavailable cleared")
            return modem

    asyncio.run(go())
    raised, cleared = watch("raised")[0], watch("cleared")[0]
    assert raised["alert_id"] == cleared["alert_id"] and raised["device_id"] == "gw-test"
    assert raised["severity"] == "high" and raised["detail"]["sim"] == "missing"


@pytest.mark.parametrize("step_h", [7.0, -2.0])
def test_a_clock_step_while_an_sms_waits_for_its_retry_neither_gives_up_nor_delays_it(
    tmp_path: Path, step_h: float
) -> None:
    """The fallback in the test's loop, the real modem driver on a pty, the daemon's clocks on hands: an
    SOS press meets an unplugged modem, then the wall clock steps (a first NTP sync 7 h ahead, beyond
    ``retry_for_s``; or 2 h back) before the modem returns. Both SMS still go at the next retry, and the
    report carries the press and the attempts on the wall clock of after the step."""
    h = Hands(1_800_000_000.0, 100.0)
    clock = Clock(sync=h.sync, wall=h.wall, boot=h.boot, boot_id="b")
    clock.sample()
    timeline = Timeline(None, boot_id="b", wall=h.wall, boot=h.boot)
    link = tmp_path / "modem"
    cfg = AlarmSection(
        enabled=True, sms_after_s=SMS_AFTER_S, care_centre=(CC,), guardians=(G1,), language="en", timezone="UTC",
        retry_base_s=0.5, retry_cap_s=2.0, report_timeout_s=30.0,
        modem=ModemOptions(port=str(link), poll_s=0.3, command_timeout_s=2.0),  # type: ignore[arg-type]
    )  # fmt: skip
    sent: list[NewMessage] = []
    up = [False]

    def submit(msg: NewMessage) -> asyncio.Future[int]:
        sent.append(msg)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        fut.set_result(len(sent))
        return fut

    async def go() -> ModemSimulator:
        async with ModemSimulator(link) as modem:
            fallback = SmsFallback(
                cfg, Topics("homecare/v1", "gw"), tmp_path, submit, lambda: up[0],
                clock=timeline, wall=h.wall, step_since=clock.step_since,
            )  # fmt: skip
            runner = asyncio.create_task(fallback.run())
            try:
                await until(lambda: fallback.modem.health.ready, 20, "the modem ready")
                modem.unplug()
                await until(lambda: not fallback.modem.health.ready, 20, "the modem gone")
                pressed = h.wall()
                fallback.on_sos("sos-b-1", "b", pressed)
                case = lambda: fallback.policy.cases.get("sos-b-1")  # noqa: E731
                await until(lambda: (c := case()) is not None and c.attempts, 20, "an attempt without the modem")
                h.w += step_h * 3600  # the step, seen by the clock
                clock.sample()
                modem.plug()
                h.tick(3.0)  # past the longest retry interval (retry_cap_s)
                await until(lambda: len(modem.sent) >= 2, 20, "both SMS once the modem is back")
                up[0] = True
                await until(lambda: sent, 20, "the report")
            finally:
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await runner
            report = json.loads(sent[-1].body)
            assert report["started_at"] == messages.rfc3339_ms(pressed + step_h * 3600)
            times = [messages.parse_rfc3339(f["at"]) for f in report["fallback"]]
            assert all(pressed + step_h * 3600 <= t <= h.wall() for t in times), (times, h.wall())
            return modem

    modem = asyncio.run(go())
    assert sorted(s.to for s in modem.sent) == sorted([CC, G1])


def test_a_record_with_times_ahead_of_the_timeline_waits_no_longer_than_its_bounds(tmp_path: Path) -> None:
    """A record whose times are 2 h ahead of the daemon's timeline (one from before the fallback moved
    onto the timeline, kept on the wall clock, read where the timeline lags the wall clock by a step):
    its due SMS goes within ``retry_cap_s`` and a missing delivery report is given up within
    ``report_timeout_s``, not 2 h later. A record on the timeline is read as it is (the times are never
    moved: a record of either kind cannot be told apart, and moving the wrong one back by 2 h would give
    its recipients up at the first tick)."""
    h = Hands(1_800_000_000.0, 100.0)
    timeline = Timeline(None, boot_id="b", wall=h.wall, boot=h.boot)
    h.w += 7200  # the step: the timeline does not follow it
    w = h.wall()
    old = AlarmStore(tmp_path / "alarm.sqlite3")
    case = Case(
        "sos-b-1", "b", w - 10, False, "SOS", w + 5, [Recipient(CC, "due", w + 60), Recipient(G1, "awaiting_report")],
        "active", [Attempt(1, G1, w - 2, "sent", report_by=w + 30)],
    )  # fmt: skip
    old.save([case])
    old.close()
    cfg = AlarmSection(enabled=True, care_centre=(CC,), guardians=(G1,), modem=ModemOptions(port=str(tmp_path / "m")))
    fallback = SmsFallback(
        cfg, Topics("homecare/v1", "gw"), tmp_path, lambda m: asyncio.Future(), lambda: False,
        clock=timeline, wall=h.wall,
    )  # fmt: skip
    try:
        policy = fallback.policy
        policy.modem_ready = True
        restored = policy.cases["sos-b-1"]
        assert restored.pressed_at == w - 10, "read as stored"
        now = timeline()
        policy.tick(now)
        latest = now + max(cfg.retry_cap_s, cfg.report_timeout_s)
        assert restored.recipients[0].next_at <= now + cfg.retry_cap_s and restored.attempts[0].report_by is not None
        assert restored.attempts[0].report_by <= now + cfg.report_timeout_s
        sends = [a for a in policy.tick(latest) if isinstance(a, SendSms)]
        assert [s.to for s in sends] == [CC], "the due SMS goes at its bound, not 2 h later"
        assert restored.attempts[0].status == "no_report"
    finally:
        fallback.store.close()


# -- the fallback in the test's loop (the real modem driver on a pty), for faults of its own ------------


def in_loop_cfg(link: Path, **keys: Any) -> AlarmSection:
    return AlarmSection(
        enabled=True, sms_after_s=SMS_AFTER_S, care_centre=(CC,), guardians=(G1,), language="en", timezone="UTC",
        person="Anna", retry_base_s=0.5, retry_cap_s=2.0, report_timeout_s=30.0,
        modem=ModemOptions(port=str(link), poll_s=0.3, command_timeout_s=2.0),  # type: ignore[arg-type]
        **keys,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def fallback_in_loop(
    tmp_path: Path, cfg: AlarmSection, before_run: Any = None
) -> AsyncIterator[tuple[SmsFallback, ModemSimulator]]:
    """The fallback running with the uplink down (a press goes by SMS at once) on ``cfg``'s modem port;
    ``before_run(fallback)`` is called before it runs."""
    assert cfg.modem is not None
    async with ModemSimulator(Path(cfg.modem.port)) as modem:
        fallback = SmsFallback(cfg, Topics("homecare/v1", "gw"), tmp_path, lambda m: asyncio.Future(), lambda: False)
        if before_run is not None:
            before_run(fallback)
        runner = asyncio.create_task(fallback.run())
        try:
            await until(lambda: fallback.modem.health.ready, 20, "the modem ready")
            yield fallback, modem
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


def test_an_own_template_that_fails_at_the_press_sends_the_shipped_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A template the check would refuse now (a format spec), as a release before the fix let through:
    render_text raised inside the fallback, the case was never made and no SMS left, at every press.
    Now the shipped text of the language goes, with one ERROR for the bug and a counter."""
    cfg = in_loop_cfg(tmp_path / "modem", template="{drill}SOS {person:d} {button}")

    async def go() -> tuple[ModemSimulator, dict[str, Any]]:
        async with fallback_in_loop(tmp_path, cfg) as (fallback, modem):
            fallback.on_sos("sos-bedroom-1", "bedroom", time.time())
            await until(lambda: len(modem.sent) >= 2, 15, "the SMS of the first press")
            fallback.on_sos("sos-bedroom-2", "bedroom", time.time())
            await until(lambda: len(modem.sent) >= 4, 15, "the SMS of the second press")
            return modem, fallback.status()

    with caplog.at_level(logging.DEBUG, logger="gateway.alarm"):
        modem, st = asyncio.run(go())
    assert [s.to for s in modem.sent] == [CC, G1, CC, G1]
    for s in modem.sent:
        assert s.text.startswith("SOS: Anna pressed the emergency button bedroom at "), s.text
    assert st["counters"]["template_fallbacks"] == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, "the bug is logged at ERROR once, not at every press"
    assert "shipped text" in errors[0].getMessage() and "{person:d}" not in errors[0].getMessage()


def test_a_full_disk_under_the_record_does_not_hold_the_sos_sms_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The data disk is full: the write-ahead record of an attempt raised SQLITE_FULL before the SMS went
    to the modem, the supervised loop started again every 5 s and failed the same way: no SMS while the
    disk stayed full. Now both SMS go, the attempts are kept in memory, the failure is one WARNING naming
    the device (never a number or the text) and counted, and the record is written once there is room.

    The full disk is SQLite's own SQLITE_FULL: the record is a file of 512-byte pages (made so before the
    fallback opens it) and its connection may not grow it by a page (``PRAGMA max_page_count``), so the
    first case (longer than a page) cannot be written."""
    monkeypatch.setattr(alarm, "STORE_RETRY_S", 0.5, raising=False)  # how soon a failed write is retried
    cfg = in_loop_cfg(tmp_path / "modem")
    made = sqlite3.connect(tmp_path / "alarm.sqlite3")
    made.execute("PRAGMA page_size = 512")
    made.execute("VACUUM")
    made.close()

    def fill_the_disk(fallback: SmsFallback) -> None:
        db = fallback.store.db
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        assert db.execute(f"PRAGMA max_page_count = {pages}").fetchone()[0] == pages

    async def go() -> tuple[ModemSimulator, dict[str, Any], list[Case]]:
        async with fallback_in_loop(tmp_path, cfg, fill_the_disk) as (fallback, modem):
            fallback.on_sos("sos-bedroom-1", "bedroom", time.time())
            await until(lambda: len(modem.sent) >= 2, 15, "both SMS with the disk full")
            await asyncio.sleep(0.5)  # the delivery reports, and saves that fail again
            st = fallback.status()
            assert not fallback.store.has("sos-bedroom-1"), "the disk was full: nothing could be written"
            fallback.store.db.execute("PRAGMA max_page_count = 1000000")  # room again
            stored = await until(lambda: fallback.store.open_cases(), 15, "the record written once there is room")
            # (the write is on the record's thread: the loop notes it worked just after it is on disk)
            await until(lambda: not fallback.status()["store_failing"], 5, "the write noted as working")
            return modem, st, stored

    with caplog.at_level(logging.DEBUG, logger="gateway.alarm"):
        modem, st, stored = asyncio.run(go())
    assert [s.to for s in modem.sent] == [CC, G1], "one SMS each, while the disk was full"
    assert st["store_failing"] and st["counters"]["store_failures"] >= 1 and st["counters"]["sms_attempts"] == 2
    assert [(a.to, a.status) for a in stored[0].attempts] == [(CC, "delivered"), (G1, "delivered")]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "record" in r.getMessage()]
    assert len(warned) == 1, "WARNING once, repeats at DEBUG"
    assert "database or disk is full" in warned[0] and "device bedroom" in warned[0]
    above_debug = "\n".join(r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG)
    assert CC not in above_debug and G1 not in above_debug and "pressed the emergency button" not in above_debug
    assert any("written again" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


def test_a_bug_in_the_modem_link_is_counted_and_the_link_started_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The modem's link ran as a bare task beside the fallback's supervised loop: a bug in the link itself
    (here its failure report raising once, after the modem was unplugged) failed the fallback's TaskGroup,
    ended the fallback and, with it, the daemon's TaskGroup. Now it is logged at ERROR with its traceback,
    counted in the fallback's bugs, and the link starts again: an SOS after the modem is back goes by SMS."""
    monkeypatch.setattr(alarm, "RESTART_S", 0.3)
    cfg = in_loop_cfg(tmp_path / "modem")

    async def go() -> tuple[ModemSimulator, int]:
        async with fallback_in_loop(tmp_path, cfg) as (fallback, modem):
            assert isinstance(fallback.modem, alarm.Modem)
            reconnector = fallback.modem.reconnector
            real = reconnector._log_failure
            broken: list[BaseException] = []

            def log_failure(exc: BaseException, kind: Any) -> None:
                if not broken:
                    broken.append(exc)
                    raise KeyError("a bug in the link's own failure report")
                real(exc, kind)

            monkeypatch.setattr(reconnector, "_log_failure", log_failure)
            modem.unplug()
            await until(lambda: fallback.bug_count() >= 1, 15, "the link's bug counted")
            modem.plug()
            await until(lambda: fallback.modem.health.ready, 20, "the modem ready again")
            fallback.on_sos("sos-bedroom-1", "bedroom", time.time())
            await until(lambda: len(modem.sent) >= 2, 15, "the SMS of the press")
            return modem, fallback.bug_count()

    with caplog.at_level(logging.DEBUG, logger="gateway.alarm"):
        modem, bugs = asyncio.run(go())
    assert [s.to for s in modem.sent] == [CC, G1]
    assert bugs == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "modem's link failed" in errors[0].getMessage() and errors[0].exc_info


def test_the_record_is_written_off_the_event_loop_and_still_before_the_sms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record is ``synchronous=FULL``: each write waits for an fsync, tens to hundreds of ms on an SD
    card, and it ran on the event loop, holding the devices, the outbox's committer and the uplink during
    an alarm. Now it runs on the record's own thread: here each write waits until the event loop has run a
    callback scheduled when the write began (on the loop's thread that could never happen: the write would
    fail), and the attempt is on disk before its SMS reaches the modem (write-ahead kept)."""
    cfg = in_loop_cfg(tmp_path / "modem")
    real = AlarmStore.save_rows
    writes: list[tuple[bool, int]] = []
    sent_at_write: list[int] = []

    async def go() -> ModemSimulator:
        loop = asyncio.get_running_loop()
        async with fallback_in_loop(tmp_path, cfg) as (fallback, modem):

            def save_rows(store: AlarmStore, rows: list[tuple[str, int, str]], watch: Any = None) -> None:
                ran = threading.Event()
                loop.call_soon_threadsafe(ran.set)
                writes.append((ran.wait(5), len(rows)))  # a slow disk, during which the loop goes on
                sent_at_write.append(len(modem.sent))
                real(store, rows, watch)

            monkeypatch.setattr(AlarmStore, "save_rows", save_rows)
            fallback.on_sos("sos-bedroom-1", "bedroom", time.time())
            await until(lambda: len(modem.sent) >= 2, 15, "both SMS")
            return modem

    modem = asyncio.run(go())
    assert [s.to for s in modem.sent] == [CC, G1]
    assert writes and all(ran for ran, _ in writes), f"a write held the event loop: {writes}"
    assert sent_at_write[0] == 0, "the first attempt was written before any SMS went"
