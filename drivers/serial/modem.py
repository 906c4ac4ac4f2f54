"""A cellular modem that sends SMS: the second path of the alarm (gateway/alarm.py).

Not a reading-emitting device like the other drivers: it is a service the alarm policy calls
(:meth:`Modem.send_sms`), with delivery reports as callbacks (:attr:`Modem.on_report`) and a health
snapshot (:attr:`Modem.health`) for status and ``doctor``. Transport and reconnection are the ones
every serial device uses: a stable port identity (:func:`drivers.serial.port.resolve_port`), a
:class:`~drivers.serial.port.SerialLink` read by the event loop, a
:class:`~drivers.reconnect.Reconnector` with backoff.

Target dialect: 3GPP TS 27.007 / 27.005 as spoken by SIMCom SIM7600, Quectel EC25 and Huawei E3372
(in its serial "stick" mode), on their AT port. Start-up: ``AT`` (until it answers), ``ATE0``,
``AT+CMEE=2`` (verbose errors), ``AT+CPIN?`` (and ``AT+CPIN="..."`` from the PIN file, tried once:
a refused PIN is never tried again, so the SIM is not driven into PUK), ``AT+CMGF=0`` (PDU mode:
see :mod:`drivers.serial.at`), ``AT+CNMI=2,1,0,1,0`` (delivery reports as ``+CDS`` URCs),
``AT+CREG?`` / ``AT+CEREG?``, ``AT+CSQ``, ``AT+COPS?``; then the SIM, registration and signal are
polled every ``poll_s``. A modem without SIM or network stays connected (it answers) and says so in
its health; :meth:`Modem.send_sms` then fails at once with the typed error.

Phone numbers are personal data: they are logged at DEBUG only.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from drivers.aio import cancel_and_wait
from drivers.base import TransientDeviceError
from drivers.options import absolute_path_or_empty, option
from drivers.reconnect import Backoff, ConnState, Reconnector
from drivers.serial import at
from drivers.serial.port import LinkLost, SerialLink, SerialOptions, resolve_port

log = logging.getLogger(__name__)

T = TypeVar("T")

PIN_RE = re.compile(r"^[0-9]{4,8}$")
# In the references send_sms returns: a part the network took (its OK came) whose ``+CMGS: <mr>`` could
# not be read. Never equal to a delivery report's TP-MR (0..255), so no report is matched to it.
UNKNOWN_REFERENCE = -1
BAUDRATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)


class ModemUnavailable(TransientDeviceError):
    """The modem is not connected right now (unplugged, not answering)."""


def _baudrate(value: Any) -> str | None:
    return None if value in BAUDRATES else "one of " + ", ".join(map(str, BAUDRATES))


@dataclass(frozen=True)  # no slots: frozen+slots subclasses break super() on 3.11
class ModemOptions(SerialOptions):
    """Everything the modem service is configured with (``[alarm.modem]``): the serial keys of every
    serial device (``port`` or ``usb_vid`` + ``usb_pid``...) and the modem's own, validated at
    construction like a device kind's options (:class:`~drivers.options.OptionError` naming the key)."""

    baudrate: int = option(115200, check=_baudrate, refused=1234, doc="the AT interface's speed")
    pin_file: str = option(
        "",
        check=absolute_path_or_empty,
        describe="an absolute path, or empty",
        refused="pin.txt",
        doc="the SIM PIN, in a file readable by the service only",
    )
    command_timeout_s: float = option(5.0, lo=0.05, hi=3600, unit="seconds", doc="one AT command")
    sms_timeout_s: float = option(60.0, lo=0.05, hi=3600, unit="seconds", doc="AT+CMGS waits for the network")
    poll_s: float = option(30.0, lo=0.05, hi=3600, unit="seconds", doc="SIM, registration, signal")
    delivery_reports: bool = option(True, doc="ask the SMSC for a status report (TP-SRR) and route +CDS")
    validity_h: int = option(24, lo=1, hi=24 * 7, unit="hours", doc="how long the SMSC keeps trying")

    @property
    def tp_vp(self) -> int:
        """TP-VP (relative, 23.040 9.2.3.12.1) for ``validity_h``."""
        if self.validity_h <= 12:
            return self.validity_h * 12 - 1  # 5-minute steps
        if self.validity_h <= 24:
            return 143 + (self.validity_h - 12) * 2  # 30-minute steps after 12 h
        return 166 + -(-self.validity_h // 24)  # days


@dataclass
class ModemHealth:
    """What status and ``doctor`` show. ``sim``: ready, missing, pin_required, puk_required, wrong_pin,
    failure, unknown. ``registration``: home, roaming, searching, denied, not_registered, unknown."""

    present: bool = False
    sim: str = "unknown"
    registration: str = "unknown"
    operator: str | None = None
    csq: int | None = None
    dbm: int | None = None
    model: str | None = None
    last_sms_at: float | None = None  # wall time of the last SMS the network accepted
    last_error: str | None = None
    sms_sent: int = 0
    sms_failed: int = 0
    reports: int = 0

    @property
    def ready(self) -> bool:
        return self.present and self.sim == "ready" and at.registered(self.registration)

    def to_dict(self) -> dict[str, Any]:
        return {
            "present": self.present,
            "ready": self.ready,
            "sim": self.sim,
            "registration": self.registration,
            "operator": self.operator,
            "csq": self.csq,
            "dbm": self.dbm,
            "model": self.model,
            "last_sms_at": self.last_sms_at,
            "last_error": self.last_error,
            "sms_sent": self.sms_sent,
            "sms_failed": self.sms_failed,
            "reports": self.reports,
        }


_SIM_ERRORS: dict[type[at.ModemError], str] = {
    at.SimMissing: "missing",
    at.SimPinRequired: "pin_required",
    at.SimPukRequired: "puk_required",
    at.WrongPin: "wrong_pin",
    at.SimFailure: "failure",
    at.SimBusy: "unknown",
}


@dataclass
class _Session:
    link: SerialLink
    parser: at.AtParser = field(default_factory=at.AtParser)
    waiter: asyncio.Future[at.Final | at.Prompt] | None = None


class Modem:
    """One modem. ``run()`` owns the port until cancelled; :meth:`send_sms` may be called at any time
    (it fails fast with :class:`ModemUnavailable` or the SIM/network error while the modem cannot send)."""

    def __init__(self, name: str, options: ModemOptions, *, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.options = options
        self.clock = clock
        self.health = ModemHealth()
        self.on_report: list[Callable[[at.StatusReport], None]] = []
        self.on_change: list[Callable[[ModemHealth], None]] = []  # health changed (ready or not)
        self.reconnector = Reconnector(
            f"modem {name}",
            self._session,
            backoff=Backoff(base_s=0.25, cap_s=30.0),
            config_retry_s=30.0,
            on_state=self._on_state,
        )
        self._s: _Session | None = None
        self._lock = asyncio.Lock()
        self._concat_ref = random.randrange(256)
        self._refused_pin: str | None = None  # never enter the same refused PIN twice
        self._last_ready: bool | None = None

    # -- public ------------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.reconnector.run()

    async def send_sms(self, number: str, text: str) -> list[int]:
        """Send one text (one or several concatenated parts). Returns the message reference of each
        part (delivery reports name them); :data:`UNKNOWN_REFERENCE` for a part the network accepted
        with a reference that cannot be read (it is sent: only its delivery report cannot be matched).
        Raises :class:`ModemUnavailable`, the typed :class:`~drivers.serial.at.ModemError` of the SIM
        or network, or :class:`~drivers.serial.at.PduError` for a number that cannot be encoded."""
        pdus = at.encode_sms(
            number,
            text,
            reference=self._next_ref(),
            status_report=self.options.delivery_reports,
            validity=self.options.tp_vp,
        )
        async with self._lock:
            s = self._s
            if s is None or not self.health.present:
                raise ModemUnavailable(f"modem {self.name} is not connected")
            if self.health.sim != "ready":
                await self._check_sim(s)
            if not at.registered(self.health.registration):
                await self._check_registration(s)
            if self.health.sim != "ready":
                raise _sim_error(self.health.sim)
            if not at.registered(self.health.registration):
                raise at.NotRegistered(f"modem {self.name}: not registered ({self.health.registration})")
            mrs: list[int] = []
            try:
                for part, (cmgs, body) in enumerate(at.iter_parts(pdus), start=1):
                    ev = await self._command(s, cmgs, prompt=True)
                    if isinstance(ev, at.Final):
                        raise ev.error or at.CommandError(f"{cmgs}: no prompt")
                    s.parser.pending = cmgs
                    final = await self._send_raw(s, body, self.options.sms_timeout_s, cmgs)
                    if not isinstance(final, at.Final) or not final.ok:
                        raise (final.error if isinstance(final, at.Final) else None) or at.CommandError(cmgs)
                    mr = at.message_reference(final.lines)
                    if mr is None:
                        # The OK says the network took this part: failing the send now would make the
                        # alarm send the SMS again. Only its delivery report will go unmatched.
                        log.warning(
                            "modem %s: part %d of %d of an SMS accepted without a readable message reference",
                            self.name,
                            part,
                            len(pdus),
                        )
                    mrs.append(UNKNOWN_REFERENCE if mr is None else mr)
            except at.ModemError as exc:
                self.health.sms_failed += 1
                self.health.last_error = str(exc)
                log.debug("modem %s: SMS to %s failed: %s", self.name, number, exc)
                raise
            self.health.sms_sent += 1
            self.health.last_sms_at = time.time()
            log.debug("modem %s: SMS to %s accepted, references %s", self.name, number, mrs)
            return mrs

    # -- session -----------------------------------------------------------------------------------

    def _next_ref(self) -> int:
        self._concat_ref = (self._concat_ref + 1) % 256
        return self._concat_ref

    def _on_state(self, state: ConnState, error: BaseException | None) -> None:
        if state is not ConnState.CONNECTED:
            self.health.present = False
            if error is not None:
                self.health.last_error = str(error)
            self._changed()

    def _changed(self) -> None:
        ready = self.health.ready
        if ready != self._last_ready:
            self._last_ready = ready
            if ready:
                log.info("modem %s: ready (%s, %s)", self.name, self.health.operator, self.health.registration)
            elif self.health.present:
                log.warning(
                    "modem %s: cannot send SMS (SIM %s, network %s)",
                    self.name,
                    self.health.sim,
                    self.health.registration,
                )
            for cb in self.on_change:
                cb(self.health)

    async def _session(self) -> None:
        path = resolve_port(self.options.identity())
        # A modem is quiet for hours between polls: the poll is the liveness check, not silence.
        async with SerialLink(path, self.options.baudrate, silence_timeout_s=365 * 86400.0) as link:
            s = _Session(link)
            reader = asyncio.create_task(self._read_loop(s), name=f"modem {self.name} reader")
            try:
                await self._race(reader, self._startup(s))
                self._s = s
                self.health.present = True
                self.reconnector.mark_connected()
                self._changed()
                while True:
                    await self._race(reader, asyncio.sleep(self.options.poll_s))
                    await self._race(reader, self._poll(s))
            finally:
                self._s = None
                self.health.present = False
                await cancel_and_wait(reader)
                if s.waiter is not None and not s.waiter.done():
                    s.waiter.set_exception(ModemUnavailable(f"modem {self.name}: link closed"))

    async def _race(self, reader: asyncio.Task[None], coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` while the reader lives; the reader's failure (unplug) ends it."""
        task: asyncio.Task[T] = asyncio.create_task(coro)
        try:
            await asyncio.wait({reader, task}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task.done():
            return task.result()
        await cancel_and_wait(task)
        exc = reader.exception()
        raise exc if exc is not None else ModemUnavailable(f"modem {self.name}: reader ended")

    async def _read_loop(self, s: _Session) -> None:
        try:
            while True:
                data = await s.link.read()
                for ev in s.parser.feed(data):
                    if isinstance(ev, at.Urc):
                        self._urc(ev)
                    elif s.waiter is not None and not s.waiter.done():
                        s.waiter.set_result(ev)
        except Exception as exc:
            if s.waiter is not None and not s.waiter.done():
                s.waiter.set_exception(ModemUnavailable(f"modem {self.name}: {exc}"))
            raise

    def _urc(self, ev: at.Urc) -> None:
        if ev.name == "+CDS" and ev.pdu is not None:
            try:
                report = at.decode_status_report(ev.pdu)
            except at.PduError as exc:
                log.debug("modem %s: undecodable delivery report: %s", self.name, exc)
                return
            self.health.reports += 1
            log.debug("modem %s: delivery report for %d: status %#x", self.name, report.message_ref, report.status)
            for cb in self.on_report:
                cb(report)
        elif ev.name in ("+CREG", "+CEREG"):
            self.health.registration = at.parse_reg(ev.value)
            self._changed()
        elif ev.name == "+CPIN":
            self.health.sim = "ready" if ev.value.upper() == "READY" else "unknown"
            self._changed()
        else:
            log.debug("modem %s: unsolicited %s", self.name, ev.name)

    async def _command(
        self, s: _Session, line: str, *, prompt: bool = False, limit_s: float | None = None
    ) -> at.Final | at.Prompt:
        s.parser.command_sent(line, prompt=prompt)
        return await self._send_raw(s, line + "\r", limit_s or self.options.command_timeout_s, at.shown(line))

    async def _send_raw(self, s: _Session, text: str, limit_s: float, what: str) -> at.Final | at.Prompt:
        fut: asyncio.Future[at.Final | at.Prompt] = asyncio.get_running_loop().create_future()
        s.waiter = fut
        try:
            try:
                s.link.write(text.encode("ascii"))
            except LinkLost as exc:
                raise ModemUnavailable(f"modem {self.name}: {exc}") from exc
            async with asyncio.timeout(limit_s):
                ev = await fut
        except TimeoutError:
            s.parser.pending = None
            if what.startswith("AT+CMGS"):
                s.link.write(b"\x1b")  # leave the PDU prompt, should the modem still be in it
            raise at.CommandTimeout(f"modem {self.name}: no answer to {what} within {limit_s:g} s") from None
        finally:
            s.waiter = None
        return ev

    async def _ok(self, s: _Session, line: str) -> at.Final:
        ev = await self._command(s, line)
        if isinstance(ev, at.Final) and not ev.ok:
            raise ev.error or at.CommandError(at.shown(line))
        assert isinstance(ev, at.Final)
        return ev

    async def _startup(self, s: _Session) -> None:
        for attempt in range(5):
            try:
                await self._command(s, "AT", limit_s=1.0)
                break
            except at.CommandTimeout:
                if attempt == 4:
                    raise
                s.link.write(b"\x1b\r")  # a modem left in the CMGS prompt by a previous session
        await self._ok(s, "ATE0")
        await self._ok(s, "AT+CMEE=2")
        try:
            ev = await self._ok(s, "AT+CGMM")
            self.health.model = ev.lines[0] if ev.lines else None
        except at.CommandError:
            self.health.model = None
        # ``present`` is set by _session once the session can send: set here, ``ready`` (present, SIM
        # and network from the last session) was true before send_sms could use the link
        await self._check_sim(s)
        await self._check_registration(s)
        log.info(
            "modem %s: %s on %s, SIM %s, network %s",
            self.name,
            self.health.model or "modem",
            s.link.path,
            self.health.sim,
            self.health.registration,
        )

    async def _poll(self, s: _Session) -> None:
        async with self._lock:
            if self.health.sim != "ready":
                await self._check_sim(s)
            await self._check_registration(s)
        self._changed()

    async def _check_sim(self, s: _Session) -> None:
        try:
            ev = await self._ok(s, "AT+CPIN?")
            state = (at.response_value(ev.lines, "+CPIN") or "").upper()
        except at.ModemError as exc:
            sim = _SIM_ERRORS.get(type(exc))
            if sim is None:
                raise
            self.health.sim = sim
            self.health.last_error = str(exc)
            return
        if state == "READY":
            self._sim_ready()
            await self._sms_setup(s)
        elif state == "SIM PIN":
            self.health.sim = "pin_required"
            await self._enter_pin(s)
        elif state == "SIM PUK":
            self.health.sim = "puk_required"
        else:
            self.health.sim = "unknown"

    def _sim_ready(self) -> None:
        self.health.sim = "ready"

    async def _enter_pin(self, s: _Session) -> None:
        pin = self._read_pin()
        if pin is None:
            return  # nothing to try: the health says pin_required, last_error why
        if pin == self._refused_pin:
            self.health.sim = "wrong_pin"
            return
        try:
            await self._ok(s, f'AT+CPIN="{pin}"')
        except at.WrongPin as exc:
            self._refused_pin = pin
            self.health.sim = "wrong_pin"
            self.health.last_error = str(exc)
            log.warning(
                "modem %s: the SIM refused the PIN of %s; not trying it again", self.name, self.options.pin_file
            )
            return
        self._refused_pin = None
        self._sim_ready()
        await self._sms_setup(s)

    def _read_pin(self) -> str | None:
        path = Path(self.options.pin_file) if self.options.pin_file else None
        if path is None:
            if self.health.last_error != "SIM PIN required and no pin_file configured":
                log.warning("modem %s: the SIM asks for a PIN and no pin_file is configured", self.name)
            self.health.last_error = "SIM PIN required and no pin_file configured"
            return None
        try:
            pin = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            self.health.last_error = f"cannot read the PIN file {path}: {exc}"
            log.warning("modem %s: %s", self.name, self.health.last_error)
            return None
        if not PIN_RE.fullmatch(pin):
            self.health.last_error = f"the PIN file {path} does not hold 4 to 8 digits"
            log.warning("modem %s: %s", self.name, self.health.last_error)
            return None
        return pin

    async def _sms_setup(self, s: _Session) -> None:
        await self._ok(s, "AT+CMGF=0")
        if self.options.delivery_reports:
            try:
                await self._ok(s, "AT+CNMI=2,1,0,1,0")
            except at.CommandError as exc:
                log.warning("modem %s: delivery reports not available: %s", self.name, exc)

    async def _check_registration(self, s: _Session) -> None:
        if self.health.sim != "ready":
            self.health.registration = "not_registered"
            return
        best = "unknown"
        for cmd, prefix in (("AT+CREG?", "+CREG"), ("AT+CEREG?", "+CEREG")):
            try:
                ev = await self._ok(s, cmd)
            except at.CommandError:
                continue  # a 2G-only modem has no +CEREG
            state = at.parse_reg(at.response_value(ev.lines, prefix) or "")
            if at.registered(state):
                best = state
                break
            if best == "unknown":
                best = state
        self.health.registration = best
        ev = await self._ok(s, "AT+CSQ")
        self.health.csq, self.health.dbm = at.parse_csq(at.response_value(ev.lines, "+CSQ") or "")
        ev = await self._ok(s, "AT+COPS?")
        self.health.operator = at.parse_cops(at.response_value(ev.lines, "+COPS") or "")


def _sim_error(sim: str) -> at.ModemError:
    cls = {
        "missing": at.SimMissing,
        "pin_required": at.SimPinRequired,
        "puk_required": at.SimPukRequired,
        "wrong_pin": at.WrongPin,
        "failure": at.SimFailure,
    }.get(sim, at.SimFailure)
    return cls(f"SIM {sim.replace('_', ' ')}")
