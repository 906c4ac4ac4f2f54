"""The modem simulator over a real pty, driven with raw AT bytes and the sans-I/O parser."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from drivers.serial import at
from drivers.serial.at import AtParser, Final, Prompt, Urc
from drivers.serial.port import SerialLink
from simulators.modem_sim import ModemSimulator, describe_sms


async def command(link: SerialLink, p: AtParser, line: str, *, prompt: bool = False) -> list[at.AtEvent]:
    p.command_sent(line, prompt=prompt)
    link.write(line.encode() + b"\r")
    events: list[at.AtEvent] = []
    while not any(isinstance(e, (Final, Prompt)) for e in events):
        events += p.feed(await link.read(timeout_s=5))
    return events


def test_simulator_answers_sends_and_reports(tmp_path: Path) -> None:
    path = tmp_path / "by-id" / "usb-SimTech_SIM7600-if02-port0"
    log = tmp_path / "sent.jsonl"
    shown: list[str] = []

    async def go() -> tuple[ModemSimulator, list[at.AtEvent]]:
        async with ModemSimulator(path, sent_log=log) as sim:
            sim.state.sim = "pin"
            sim.on_sent.append(lambda sms: shown.append(describe_sms(sms)))
            async with SerialLink(str(path), 115200, silence_timeout_s=5) as link:
                p = AtParser()
                assert (await command(link, p, "AT"))[-1] == Final(True)  # echo on: dropped by the parser
                assert (await command(link, p, "ATE0"))[-1] == Final(True)
                await command(link, p, "AT+CMEE=2")
                (ev,) = await command(link, p, "AT+CPIN?")
                assert isinstance(ev, Final) and ev.lines == ("+CPIN: SIM PIN",)
                (ev,) = await command(link, p, 'AT+CPIN="0000"')
                assert isinstance(ev, Final) and isinstance(ev.error, at.WrongPin)
                (ev,) = await command(link, p, 'AT+CPIN="1234"')
                assert ev == Final(True)
                (ev,) = await command(link, p, "AT+CREG?")
                assert isinstance(ev, Final) and at.parse_reg(at.response_value(ev.lines, "+CREG") or "") == "home"
                await command(link, p, "AT+CMGF=0")
                await command(link, p, "AT+CNMI=2,1,0,1,0")
                pdus = at.encode_sms("+8613800138000", "紧急呼叫" * 20)
                mrs = []
                for cmgs, body in at.iter_parts(pdus):
                    assert await command(link, p, cmgs, prompt=True) == [Prompt()]
                    p.pending = cmgs
                    link.write(body.encode())
                    events: list[at.AtEvent] = []
                    while not any(isinstance(e, Final) for e in events):
                        events += p.feed(await link.read(timeout_s=5))
                    final = events[-1]
                    assert isinstance(final, Final) and final.ok
                    mrs.append(int(at.response_value(final.lines, "+CMGS") or -1))
                sim.state.cms_errors = [38]
                cmgs, body = next(at.iter_parts(at.encode_sms("+8613800138000", "x")))
                await command(link, p, cmgs, prompt=True)
                p.pending = cmgs
                link.write(body.encode())
                urcs: list[at.AtEvent] = []
                while not any(isinstance(e, Final) for e in urcs):
                    urcs += p.feed(await link.read(timeout_s=5))
                final = urcs[-1]
                assert isinstance(final, Final) and isinstance(final.error, at.NetworkFailure)
                while sum(isinstance(e, Urc) for e in urcs) < 2:
                    urcs += p.feed(await link.read(timeout_s=5))
                reports = [at.decode_status_report(e.pdu or "") for e in urcs if isinstance(e, Urc)]
                assert sorted(r.message_ref for r in reports) == sorted(mrs)
                assert all(r.delivered for r in reports)
            return sim, urcs

    sim, _ = asyncio.run(go())
    assert [(s.to, s.text, s.coding, s.parts) for s in sim.sent] == [("+8613800138000", "紧急呼叫" * 20, "ucs2", 2)]
    assert shown == ["modem -> SMS to +8613800138000 (ucs2, 2 parts): " + "紧急呼叫" * 20]
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert logged[0]["text"] == "紧急呼叫" * 20 and logged[0]["to"] == "+8613800138000"


def test_run_time_control_from_a_file_and_stdin_words(tmp_path: Path) -> None:
    from simulators.modem_sim import _read_control, _stdin_command

    async def go() -> ModemSimulator:
        async with ModemSimulator(tmp_path / "modem") as sim:
            control = tmp_path / "control.json"
            assert _read_control(sim, control, 0.0) is None  # no file yet: nothing changes
            control.write_text(json.dumps({"sim": "missing", "csq": 5, "cms_errors": [38, 21], "report": "failed"}))
            mtime = _read_control(sim, control, 0.0)
            assert mtime is not None and _read_control(sim, control, mtime) is None  # unchanged: not re-applied
            _stdin_command(sim, ["reg", "searching"])
            _stdin_command(sim, ["cms", "42", "2"])
            _stdin_command(sim, ["report", "none", "3"])
            _stdin_command(sim, ["unplug"])
            assert not sim.dev.plugged
            _stdin_command(sim, ["plug"])
            return sim

    sim = asyncio.run(go())
    s = sim.state
    assert (s.sim, s.csq, s.registration, s.report, s.report_delay_s) == ("missing", 5, "searching", "none", 3.0)
    assert s.cms_errors == [38, 21, 42, 42]
