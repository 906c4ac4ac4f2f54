"""Serial blood-pressure monitor: the Beurer BM58 / BM65 family (Andon KD001-based upper-arm monitors,
also sold under other brands), read over its USB cable (a PL2303 USB-serial bridge).

Protocol (request/response, 4800 baud 8N1, no framing or checksum), as implemented independently by:

- atbrask/beurer_bm65 ``beurer_bm65.py`` (Asbjørn Brask),
- babo/bm58 and curzon01/bm58 ``bm58.py`` (Norbert Richter),
- DaveDavenport/BPM ``source/bpm.cc`` (Qball Cow; "any device based on Andon Blood Pressure Meter KD001").

=============  ==========================================  ============================================
host sends     device answers                              meaning
=============  ==========================================  ============================================
``AA``         ``55``                                      attention / ping
``A4``         ASCII device description (up to 32 bytes)   identify
``A2``         one byte *n*                                number of stored records
``A3 i``       9 bytes ``AC s d p MM DD hh mm YY``, or     record *i* (1-based): systolic ``s + 25``,
               ``A9``                                      diastolic ``d + 25`` mmHg, pulse ``p`` /min,
                                                           device local time 20YY-MM-DD hh:mm; ``A9``:
                                                           no such record
=============  ==========================================  ============================================

The monitor keeps its last readings (60 per user on the BM58) and answers only while switched to its
PC mode with the cable in, so "silent" is its normal state between sessions: the driver pings every
``poll_interval_s`` and reports the link as disconnected while nobody answers. Records carry no
sequence number: a record's identity is its content (time, values), which is also its
``Measurement.source_id`` so that a re-download after an outage produces the same msg_ids; a ledger
(in memory, and in ``state_path`` when set) makes the driver emit each record exactly once.

The parsing functions are sans-I/O; :class:`SerialBpDriver` does the talking.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from drivers import codes, plausible
from drivers.base import FrameError, Measurement, device_zone
from drivers.options import DriverOptions, option, state_path_option, timezone_option
from drivers.reconnect import Backoff
from drivers.serial.cms50 import FetchLedger
from drivers.serial.port import LinkSilent, SerialDriver, SerialLink, SerialOptions

log = logging.getLogger(__name__)

LOINC_SYSTOLIC = codes.SYSTOLIC
LOINC_DIASTOLIC = codes.DIASTOLIC
LOINC_PULSE = codes.HEART_RATE
UNIT_PRESSURE = "mm[Hg]"
UNIT_PULSE = "/min"

PING = bytes([0xAA])
PONG = 0x55
IDENTIFY = bytes([0xA4])
COUNT = bytes([0xA2])
RECORD = 0xA3
RECORD_HEADER = 0xAC
NO_RECORD = 0xA9
RECORD_LEN = 9
OFFSET = 25  # systolic and diastolic are sent minus 25


class BpFrameError(FrameError):
    """A reply that is not what the protocol allows (wrong header, impossible values or date)."""


@dataclass(frozen=True, slots=True)
class BpRecord:
    systolic: int
    diastolic: int
    pulse: int | None
    taken: dt.datetime  # naive, the monitor's local clock (minute resolution)

    @property
    def key(self) -> str:
        """Stable identity of the record: its time and values."""
        pulse = "-" if self.pulse is None else str(self.pulse)
        return f"bm58:{self.taken:%Y%m%dT%H%M}:{self.systolic}/{self.diastolic}/{pulse}"


def encode_record(rec: BpRecord) -> bytes:
    """The 9 bytes the monitor sends for ``rec`` (simulator and vectors)."""
    t = rec.taken
    return bytes(
        [
            RECORD_HEADER,
            rec.systolic - OFFSET,
            rec.diastolic - OFFSET,
            0 if rec.pulse is None else rec.pulse,
            t.month,
            t.day,
            t.hour,
            t.minute,
            t.year - 2000,
        ]
    )


def parse_record(data: bytes) -> BpRecord | None:
    """A reply to ``A3 i``: the record, or None for ``A9`` (no such record). :class:`BpFrameError`
    for anything else, including values outside the plausibility windows."""
    if len(data) == 1 and data[0] == NO_RECORD:
        return None
    if len(data) != RECORD_LEN:
        raise BpFrameError(f"record reply has {len(data)} bytes, expected {RECORD_LEN}")
    header, s, d, p, month, day, hour, minute, year = data
    if header != RECORD_HEADER:
        raise BpFrameError(f"record header {header:#04x}, expected {RECORD_HEADER:#04x}")
    systolic, diastolic = s + OFFSET, d + OFFSET
    if not plausible.blood_pressure_ok(systolic, diastolic):  # drivers/plausible.py
        raise BpFrameError(f"implausible pressures {systolic}/{diastolic}")
    if p != 0 and not plausible.pulse_ok(p):
        raise BpFrameError(f"implausible pulse {p}")
    try:
        taken = dt.datetime(2000 + year, month, day, hour, minute)
    except ValueError as exc:
        raise BpFrameError(f"record time is not a date: {exc}") from exc
    return BpRecord(systolic, diastolic, p or None, taken)


def parse_count(data: bytes) -> int:
    if len(data) != 1:
        raise BpFrameError(f"count reply has {len(data)} bytes, expected 1")
    return data[0]


def parse_description(data: bytes) -> str:
    """The identify reply: printable ASCII (the monitor pads with NULs or spaces)."""
    return bytes(b for b in data if 0x20 <= b < 0x7F).decode("ascii").strip()


def record_request(index: int) -> bytes:
    if not 1 <= index <= 0xFF:
        raise ValueError(f"record index {index} out of 1..255")
    return bytes([RECORD, index])


def record_measurements(device_id: str, rec: BpRecord, tz: dt.tzinfo) -> list[Measurement]:
    """The readings of one record, at its original capture time, all with the record's identity."""
    at = rec.taken.replace(tzinfo=tz).timestamp()
    values: list[tuple[str, int, str]] = [
        (LOINC_SYSTOLIC, rec.systolic, UNIT_PRESSURE),
        (LOINC_DIASTOLIC, rec.diastolic, UNIT_PRESSURE),
    ]
    if rec.pulse is not None:
        values.append((LOINC_PULSE, rec.pulse, UNIT_PULSE))
    return [
        Measurement(
            device_id=device_id,
            code=code,
            value=float(value),
            unit=unit,
            captured_at=at,
            method="device",
            extra={"stored": True},
            source_id=rec.key,
        )
        for code, value, unit in values
    ]


@dataclass(frozen=True)  # no slots: frozen+slots subclasses break super() on 3.11
class SerialBpOptions(SerialOptions):
    poll_interval_s: float = option(30.0, lo=0.1, hi=86400, unit="seconds", doc="how often to look for new records")
    timezone: str = timezone_option()
    state_path: str = state_path_option()
    retries: int = option(3, lo=1, hi=20, doc="reads per record until two agree")


class SerialBpDriver(SerialDriver):
    """Beurer BM58/BM65-family monitor on a USB-serial cable.

    Options: the serial keys, ``poll_interval_s`` (how often to look for new records, default 30),
    ``timezone`` (IANA name of the monitor's clock; default the gateway's), ``state_path`` (ledger of
    records already emitted, survives restarts), ``retries`` (per record, default 3; each record is
    read until two reads in a row agree, at most 2 x ``retries`` times).
    """

    kind: ClassVar[str] = "serial-bp"
    Options: ClassVar[type[DriverOptions]] = SerialBpOptions
    summary: ClassVar[str] = "blood-pressure monitor on a USB-serial cable (Beurer BM58/BM65 family)"
    silence_warn_s: ClassVar[float | None] = 3 * 24 * 3600.0
    loinc_codes: ClassVar[tuple[str, ...]] = (codes.SYSTOLIC, codes.DIASTOLIC, codes.HEART_RATE)
    baudrate: ClassVar[int] = 4800
    reply_timeout_s: ClassVar[float] = 1.0
    quiet_s: ClassVar[float] = 0.15  # no byte for this long ends a variable-length reply
    reconnect_cap_s: ClassVar[float] = 3.0  # see Cms50Driver: back within 5 s even after a long unplug

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        opts = self.spec.options
        assert isinstance(opts, SerialBpOptions)
        self.poll_interval_s = opts.poll_interval_s
        self.tz = device_zone(opts.timezone)
        self.ledger = FetchLedger(self.state_path(opts.state_path), max_entries=1024, owner=self.device_id)
        self.ledger.load()
        self.retries = opts.retries
        self.description: str | None = None
        self.records_emitted = 0
        self.reconnector.backoff = Backoff(base_s=0.25, cap_s=self.reconnect_cap_s)

    def counters(self) -> Mapping[str, int]:
        merged = dict(super().counters())
        merged["records_emitted"] = self.records_emitted
        return merged

    async def _reply(self, link: SerialLink, request: bytes, want: int, *, early: int | None = None) -> bytes:
        """Send ``request`` (after dropping stale input) and read ``want`` bytes, or one byte equal to
        ``early``. Raises :class:`LinkSilent` when the monitor does not answer in time."""
        link.discard_input()
        link.write(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reply_timeout_s
        buf = bytearray()
        while True:
            if early is not None and buf[:1] == bytes([early]):
                return bytes(buf[:1])
            if len(buf) >= want:
                return bytes(buf[:want])
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise LinkSilent(f"{link.path}: no complete answer to {request.hex()} ({len(buf)} of {want} bytes)")
            buf += await link.read(timeout_s=remaining)

    async def _identify(self, link: SerialLink) -> str:
        link.discard_input()
        link.write(IDENTIFY)
        buf = bytearray()
        try:
            buf += await link.read(timeout_s=self.reply_timeout_s)
            while len(buf) < 64:
                buf += await link.read(timeout_s=self.quiet_s)
        except LinkSilent:
            pass  # the end of a variable-length reply
        return parse_description(bytes(buf))

    async def _ping(self, link: SerialLink) -> None:
        try:
            reply = await self._reply(link, PING, 1)
        except LinkSilent as exc:
            raise LinkSilent(f"{link.path}: the monitor does not answer (off, or not in PC mode?)") from exc
        for _ in range(self.retries):
            if reply[0] == PONG:
                return
            self.count("bad_frames")  # line noise in front of the answer: ask again
            reply = await self._reply(link, PING, 1)
        if reply[0] != PONG:
            raise LinkSilent(f"{link.path}: answered {reply.hex()} to attention, expected 55")

    async def _count(self, link: SerialLink) -> int:
        """The number of stored records, confirmed by two identical answers (a flipped bit would make
        the driver ask for records that do not exist, or miss some until the next poll)."""
        last: int | None = None
        for _ in range(2 * self.retries):
            n = parse_count(await self._reply(link, COUNT, 1))
            if n == last:
                return n
            if last is not None:
                self.count("disagreeing_reads")
            last = n
        raise LinkSilent(f"{link.path}: the record count does not settle")

    async def _fetch(self, link: SerialLink, index: int) -> BpRecord | None:
        """Record ``index``, confirmed by two identical reads in a row: the protocol has no checksum,
        and a flipped bit can still give plausible values (which would then be emitted, and the true
        record a second time under another identity). None for "no such record" or unreadable."""
        have_last = False
        last: BpRecord | None = None
        silent: LinkSilent | None = None
        for _ in range(2 * self.retries):
            try:
                rec = parse_record(await self._reply(link, record_request(index), RECORD_LEN, early=NO_RECORD))
            except BpFrameError as exc:
                self.count("bad_frames")
                log.debug("device %s: record %d: %s", self.device_id, index, exc)
                have_last = False
                continue
            except LinkSilent as exc:
                self.count("timeouts")
                silent, have_last = exc, False
                continue
            if have_last and rec == last:
                return rec
            if have_last:
                self.count("disagreeing_reads")
            have_last, last = True, rec
        if silent is not None and not have_last:
            raise silent
        self.count("unreadable_records")
        log.warning("device %s: record %d unreadable after %d tries", self.device_id, index, 2 * self.retries)
        return None

    async def poll(self, link: SerialLink) -> int:
        """Read every stored record and emit those not emitted before. Returns how many were new."""
        count = await self._count(link)
        new = 0
        try:
            for index in range(1, count + 1):
                rec = await self._fetch(link, index)
                if rec is None or self.ledger.emitted(rec.key):
                    continue
                for m in record_measurements(self.device_id, rec, self.tz):
                    self.sink(m)
                self.ledger.mark(rec.key, 1, save=False)
                self.records_emitted += 1
                new += 1
        finally:
            if new:
                self.ledger.save()
                log.info("device %s: %d new blood-pressure records", self.device_id, new)
        return new

    async def serve(self, link: SerialLink) -> None:
        await self._ping(link)
        self.description = await self._identify(link)
        self.reconnector.mark_connected()
        log.info("device %s: blood-pressure monitor %r on %s", self.device_id, self.description, link.path)
        while True:
            await self.poll(link)
            await asyncio.sleep(self.poll_interval_s)
            await self._ping(link)
