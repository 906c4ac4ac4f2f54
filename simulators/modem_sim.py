"""A cellular modem on a pty that speaks 3GPP TS 27.007 / 27.005 AT commands and "sends" SMS.

It answers what the gateway's modem driver asks (``AT``, ``ATE0``, ``AT+CMEE``, ``AT+CPIN?`` /
``AT+CPIN="..."``, ``AT+CREG?``, ``AT+CEREG?``, ``AT+CSQ``, ``AT+COPS?``, ``AT+CMGF=0``, ``AT+CNMI``,
``AT+CMGS`` with its ``> `` prompt and a PDU ended by Ctrl-Z) with the result codes of the standard,
echo on until ``ATE0`` and errors in the form ``AT+CMEE`` chose (plain, numeric or verbose).

What a test (or the demo) can set at run time: the SIM (``ready``, ``missing``, ``pin`` with its PIN),
the registration (``home``, ``roaming``, ``searching``, ``denied``, ``not_registered``), the signal
(CSQ 0..31 or 99), ``+CMS ERROR`` codes for the next sends, delivery reports (``delivered``,
``failed``, ``none``) and their delay, and unplugging. Every SMS it accepted is in :attr:`sent`
(recipient, decoded text, coding, parts, message references), and with ``--log`` in a JSON-lines
file; concatenated parts are joined into one message.

Command line (``gateway-sim modem --link PATH [--log FILE] [--control FILE]``): commands on stdin
(``sim missing|ready|pin``, ``reg STATE``, ``csq N``, ``cms CODE [N]``, ``report delivered|failed|none
[DELAY_S]``, ``unplug``, ``plug``), and/or a JSON control file re-read when it changes, e.g.
``{"sim": "ready", "registration": "home", "csq": 20, "cms_errors": [38], "report": "delivered",
"report_delay_s": 1}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from drivers.serial import at
from simulators.serialpty import PtyDevice

log = logging.getLogger(__name__)

REG_CODES = {"not_registered": 0, "home": 1, "searching": 2, "denied": 3, "unknown": 4, "roaming": 5}
CTRL_Z, ESC = 0x1A, 0x1B


@dataclass
class SentSms:
    to: str
    text: str
    coding: str
    parts: int
    mrs: list[int]
    at: float


@dataclass
class ModemState:
    sim: str = "ready"  # ready | missing | pin
    pin: str = "1234"
    registration: str = "home"
    csq: int = 20
    operator: str = "SIMNET"
    cms_errors: list[int] = field(default_factory=list)  # injected into the next AT+CMGS, one each
    report: str = "delivered"  # delivered | failed | none
    report_by_number: dict[str, str] = field(default_factory=dict)  # a number's own report outcome
    report_delay_s: float = 0.2
    cmgs_delay_s: float = 0.05  # the network's time to take the message


class ModemSimulator:
    def __init__(
        self,
        link_path: str | os.PathLike[str],
        *,
        sent_log: str | os.PathLike[str] | None = None,
        state: ModemState | None = None,
        model: str = "SIMCOM_SIM7600G-H",
    ) -> None:
        self.dev = PtyDevice(link_path, self._on_bytes)
        self.state = state or ModemState()
        self.model = model
        self.sent_log = Path(sent_log) if sent_log is not None else None
        self.sent: list[SentSms] = []
        self.on_sent: list[Callable[[SentSms], None]] = []  # e.g. the demo prints each SMS
        self.commands: list[str] = []  # every command line received, for tests
        self.echo = True
        self.cmee = 0
        self.cmgf = 1
        self.cnmi_ds = 0
        self.pin_ok = False
        self.mr = 0
        self._buf = bytearray()
        self._pdu_len: int | None = None  # set while the prompt waits for a PDU
        self._partial: dict[tuple[str, int], dict[int, tuple[str, int]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> ModemSimulator:
        await self.dev.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.dev.__aexit__(*exc)

    # -- the line ----------------------------------------------------------------------------------

    def unplug(self) -> None:
        self._reset_session()
        self.dev.unplug()

    def plug(self) -> None:
        self._reset_session()
        self.dev.plug()

    def _reset_session(self) -> None:
        # A modem that loses power forgets ATE0/CMEE/CMGF/CNMI and asks for its PIN again.
        self.echo, self.cmee, self.cmgf, self.cnmi_ds, self.pin_ok = True, 0, 1, 0, False
        self._buf.clear()
        self._pdu_len = None

    def _write(self, text: str) -> None:
        self.dev.write(text.encode())

    def _reply(self, *lines: str) -> None:
        self._write("".join(f"\r\n{line}\r\n" for line in lines))

    def _on_bytes(self, data: bytes) -> None:
        self._buf.extend(data)
        while self._buf:
            if self._pdu_len is not None:
                end = next((i for i, b in enumerate(self._buf) if b in (CTRL_Z, ESC)), None)
                if end is None:
                    return
                pdu = bytes(self._buf[:end]).decode("ascii", "replace").strip()
                cancelled = self._buf[end] == ESC
                del self._buf[: end + 1]
                self._pdu_len = None
                if self.echo:
                    self._write(pdu)
                if cancelled:
                    self._reply("OK")
                else:
                    self._spawn(self._accept_pdu(pdu))
                continue
            cut = next((i for i, b in enumerate(self._buf) if b in (0x0D, 0x0A)), None)
            if cut is None:
                return
            line = bytes(self._buf[:cut]).decode("ascii", "replace").strip()
            del self._buf[: cut + 1]
            if line:
                self._command(line)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _plugged_sim(self) -> str:
        if self.state.sim == "pin" and self.pin_ok:
            return "ready"
        return self.state.sim

    def _registration(self) -> str:
        return self.state.registration if self._plugged_sim() == "ready" else "not_registered"

    def _error(self, family: str, code: int) -> None:
        if self.cmee == 0:
            self._reply("ERROR")
            return
        if self.cmee == 1:
            self._reply(f"+{family.upper()} ERROR: {code}")
            return
        table = at.CME if family == "cme" else at.CMS
        text = table.get(code, (at.CommandError, "unknown"))[1]
        self._reply(f"+{family.upper()} ERROR: {text}")

    def _command(self, line: str) -> None:
        self.commands.append(line)
        if self.echo:
            self._write(line + "\r")
        cmd = line.upper()
        s = self.state
        if not cmd.startswith("AT"):
            self._reply("ERROR")
        elif cmd in ("AT", "ATZ"):
            self._reply("OK")
        elif cmd in ("ATE0", "ATE1"):
            self.echo = cmd == "ATE1"
            self._reply("OK")
        elif cmd.startswith("AT+CMEE="):
            self.cmee = int(cmd.split("=", 1)[1] or 0)
            self._reply("OK")
        elif cmd in ("ATI", "AT+CGMM"):
            self._reply(self.model, "OK")
        elif cmd == "AT+CPIN?":
            sim = self._plugged_sim()
            if sim == "missing":
                self._error("cme", 10)
            else:
                self._reply("+CPIN: " + ("SIM PIN" if sim == "pin" else "READY"), "OK")
        elif cmd.startswith("AT+CPIN="):
            given = line.split("=", 1)[1].strip().strip('"')
            if self._plugged_sim() == "missing":
                self._error("cme", 10)
            elif self._plugged_sim() == "ready":
                self._error("cme", 3)
            elif given == s.pin:
                self.pin_ok = True
                self._reply("OK")
            else:
                self._error("cme", 16)
        elif cmd in ("AT+CREG?", "AT+CEREG?", "AT+CGREG?"):
            if self._plugged_sim() == "missing":
                self._error("cme", 10)
            else:
                self._reply(f"{cmd[2:-1]}: 0,{REG_CODES.get(self._registration(), 4)}", "OK")
        elif cmd == "AT+CSQ":
            self._reply(f"+CSQ: {s.csq},99", "OK")
        elif cmd == "AT+COPS?":
            if at.registered(self._registration()):
                self._reply(f'+COPS: 0,0,"{s.operator}",7', "OK")
            else:
                self._reply("+COPS: 0", "OK")
        elif cmd.startswith("AT+CMGF="):
            self.cmgf = int(cmd.split("=", 1)[1] or 0)
            self._reply("OK")
        elif cmd.startswith("AT+CNMI="):
            fields = cmd.split("=", 1)[1].split(",")
            self.cnmi_ds = int(fields[3]) if len(fields) > 3 and fields[3].isdigit() else 0
            self._reply("OK")
        elif cmd.startswith("AT+CMGS="):
            sim = self._plugged_sim()
            if sim == "missing":
                self._error("cms", 310)
            elif sim == "pin":
                self._error("cms", 311)
            elif self.cmgf != 0:
                self._error("cms", 305)  # we only implement PDU mode
            elif not at.registered(self._registration()):
                self._error("cms", 331)
            else:
                self._pdu_len = int(cmd.split("=", 1)[1])
                self._write("\r\n> ")
        else:
            self._reply("ERROR")

    async def _accept_pdu(self, pdu_hex: str) -> None:
        s = self.state
        await asyncio.sleep(s.cmgs_delay_s)
        if s.cms_errors:
            self._error("cms", s.cms_errors.pop(0))
            return
        try:
            d = at.decode_submit(pdu_hex)
        except at.PduError:
            self._error("cms", 304)
            return
        self.mr = (self.mr + 1) % 256
        mr = self.mr
        self._reply(f"+CMGS: {mr}", "OK")
        self._record(d, mr)
        report = s.report_by_number.get(d.number, s.report)
        if d.status_report and self.cnmi_ds and report != "none":
            self._spawn(self._report_later(mr, d.number, 0x00 if report == "delivered" else 0x41))

    def _record(self, d: at.DecodedSubmit, mr: int) -> None:
        if d.concat is None:
            self._log(SentSms(d.number, d.text, d.coding, 1, [mr], time.time()))
            return
        ref, parts, part = d.concat
        got = self._partial.setdefault((d.number, ref), {})
        got[part] = (d.text, mr)
        if len(got) == parts:
            del self._partial[(d.number, ref)]
            ordered = [got[i] for i in sorted(got)]
            text = "".join(t for t, _ in ordered)
            self._log(SentSms(d.number, text, d.coding, parts, [m for _, m in ordered], time.time()))

    def _log(self, sms: SentSms) -> None:
        self.sent.append(sms)
        for cb in self.on_sent:
            cb(sms)
        log.debug("modem sim: SMS to %s (%d parts)", sms.to, sms.parts)
        if self.sent_log is not None:
            with self.sent_log.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(asdict(sms), ensure_ascii=False) + "\n")

    async def _report_later(self, mr: int, number: str, status: int) -> None:
        await asyncio.sleep(self.state.report_delay_s)
        pdu = at.encode_status_report(mr, number, status)
        self._write(f"\r\n+CDS: {len(pdu) // 2 - 1}\r\n{pdu}\r\n")

    # -- run-time control --------------------------------------------------------------------------

    def apply(self, settings: dict[str, Any]) -> None:
        """Change the state from a dict (the control file, stdin commands)."""
        s = self.state
        for key, value in settings.items():
            if key == "unplugged":
                self.unplug() if value else self.plug()
            elif key == "cms_errors":
                s.cms_errors = [int(v) for v in value]
            elif hasattr(s, key):
                setattr(s, key, type(getattr(s, key))(value))
            else:
                log.warning("modem sim: unknown setting %r", key)


def demo_alarm_section(link: str | os.PathLike[str], *, sms_after_s: float = 5.0) -> str:
    """The ``[alarm]`` section of a generated demo configuration: this simulator at ``link``, two
    made-up numbers, the English text (for ``gateway-sim demo`` and tests)."""
    return f"""
[alarm]
sms_after_s = {sms_after_s}
care_centre = ["+10000000001"]
guardians = ["+10000000002"]
language = "en"
person = "the demo resident"

[alarm.modem]
port = "{link}"
"""


def describe_sms(sms: SentSms) -> str:
    return f"modem -> SMS to {sms.to} ({sms.coding}, {sms.parts} part{'s' if sms.parts > 1 else ''}): {sms.text}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--link", required=True, help="stable path to create, e.g. a by-id style symlink")
    parser.add_argument("--log", help="append every SMS sent (JSON lines: to, text, coding, parts, mrs, at)")
    parser.add_argument("--control", help="a JSON file of settings, re-read when it changes")
    parser.add_argument("--sim", default="ready", choices=["ready", "missing", "pin"])
    parser.add_argument("--pin", default="1234")


def _stdin_command(sim: ModemSimulator, words: list[str]) -> None:
    cmd, args = words[0], words[1:]
    if cmd == "sim" and args:
        sim.apply({"sim": args[0]})
    elif cmd == "reg" and args:
        sim.apply({"registration": args[0]})
    elif cmd == "csq" and args:
        sim.apply({"csq": int(args[0])})
    elif cmd == "cms" and args:
        sim.state.cms_errors += [int(args[0])] * (int(args[1]) if len(args) > 1 else 1)
    elif cmd == "report" and args:
        sim.apply({"report": args[0], **({"report_delay_s": float(args[1])} if len(args) > 1 else {})})
    elif cmd == "unplug":
        sim.unplug()
    elif cmd == "plug":
        sim.plug()


def _read_control(sim: ModemSimulator, path: Path, seen_mtime: float) -> float | None:
    """Apply the control file when it changed since ``seen_mtime``; its new mtime, or None."""
    with contextlib.suppress(FileNotFoundError):
        m = path.stat().st_mtime
        if m != seen_mtime:
            try:
                sim.apply(json.loads(path.read_text()))
                print(f"modem: control {path} applied", flush=True)
            except (ValueError, TypeError) as exc:
                print(f"modem: control {path} not applied: {exc}", flush=True)
            return m
    return None


async def _run(args: argparse.Namespace) -> int:
    state = ModemState(sim=args.sim, pin=args.pin)
    async with ModemSimulator(Path(args.link), sent_log=args.log, state=state) as sim:
        print(f"modem: {sim.model} at {args.link} -> {sim.dev.slave_name}", flush=True)
        sim.on_sent.append(lambda sms: print(describe_sms(sms), flush=True))

        async def control_file(path: Path) -> None:
            mtime = 0.0
            while True:
                m = _read_control(sim, path, mtime)
                mtime = m if m is not None else mtime
                await asyncio.sleep(0.2)

        async def commands() -> None:
            loop = asyncio.get_running_loop()
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line:
                    await asyncio.Event().wait()
                words = line.split()
                if words:
                    _stdin_command(sim, words)
                    print(f"modem: {line.strip()} done", flush=True)

        async with asyncio.TaskGroup() as tg:
            if args.control:
                tg.create_task(control_file(Path(args.control)))
            if sys.stdin is not None and not sys.stdin.isatty():
                tg.create_task(commands())
            tg.create_task(asyncio.Event().wait())
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO)
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 0
