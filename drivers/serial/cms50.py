"""Contec CMS50D+/CMS50E/CMS50F family USB pulse oximeters: live pleth waveform, SpO2, pulse rate and
the stored-recording download.

Contec publishes no protocol document; the facts below come from open implementations that agree with
each other (we read them and wrote our own code):

- OSCAR/SleepyHead ``oscar/SleepLib/loader_plugins/cms50f37_loader.cpp`` (Mark Watkins): the command
  packet ``7D 81 cc 80 80 80 80 80 80``, the response table by type, session count/date/time/duration
  and the 0x0F stored-data packets (3 points of SpO2 + pulse), the "high byte" bit restoration.
- timegrid/CMS50Dplus7 ``cms50dplus7.py`` (after Contec's "Communication Protocol of Pulse Oximeter
  V7.0"): the generic packet ``[type, high byte, 7 data bytes]``, the 0x01 real-time packet fields,
  start/stop real-time (0xA1/0xA2), keep-alive (0xAF), storage start/stop (0xA6 user segment / 0xA7),
  invalid markers (pulse 0xFF, SpO2 0x7F, PI 0xFFFF), 1 s between stored points.
- celiponcio/oximeter-CMS50Dplus-v4.6 ``cms50Dplus_thread.py`` and the patrick-samy gist for firmware
  4.6 (115200 8N1, 9-byte live frames at 60 Hz, finger-out/searching bits, fixed 0xFF PI bytes).
- atbrask/CMS50Dplus ``cms50dplus.py`` and the "CMS-P" dumpers for the *older* protocol of CMS50D/E
  firmware < 4.x: 19200 baud, a continuous stream of 5-byte frames whose first byte alone has bit 7 set;
  recorded data by ``F5 F5`` (preamble ``F2 80 00`` x3, a 3-byte length, 3-byte records, ``F6 F6 F6``
  to stop). That download carries no start time, so the driver does not use it (pure helpers only).

Framing, new protocol ("v7"): every packet starts with a byte whose bit 7 is clear (the type); every
following byte has bit 7 set (sync). Byte 1 is the *high byte*: its bit *i* is bit 7 of data byte *i*.
Length is fixed per type. A byte with bit 7 clear always starts a packet, so one lost or extra byte
costs at most one packet: the parser drops the fragment, counts it and goes on.

Everything here up to :class:`Cms50Driver` is sans-I/O (bytes in, typed frames out).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

from drivers import codes, plausible
from drivers.aio import cancel_and_wait
from drivers.base import FrameError, Measurement, StateFile, Waveform, device_zone
from drivers.options import DriverOptions, option, state_path_option, timezone_option
from drivers.reconnect import Backoff
from drivers.serial.port import LinkSilent, SerialDriver, SerialLink, SerialOptions

log = logging.getLogger(__name__)

LOINC_SPO2 = codes.SPO2
LOINC_PULSE = codes.HEART_RATE
UNIT_SPO2 = "%"
UNIT_PULSE = "/min"

SAMPLE_RATE_HZ = 60.0  # live frames per second on both protocols
STORED_INTERVAL_S = 1.0  # one stored point per second (timegrid; OSCAR imports them at 1 Hz)

# Plausibility windows (drivers/plausible.py, from the CMS50D+ user manual). The device says "invalid"
# with 0x7F / 0xFF / 0; anything else outside them is a corrupted byte and is never emitted as a number.
SPO2_ACCURATE_FROM = 70  # accuracy is stated for 70-100 %
PLETH_MAX = 127


class Cms50FrameError(FrameError):
    """A CMS50 packet that does not decode (bad sync bits, wrong length, unknown type)."""


# --------------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveSample:
    """One live frame (60 per second). ``spo2``/``pulse_rate`` are None when the device marks them
    invalid or they are out of range."""

    pleth: int  # 0..127, arbitrary units
    spo2: int | None
    pulse_rate: int | None
    signal: int  # 0..15 signal strength
    bar: int  # 0..15 pulse bar graph
    beat: bool  # the device's beep/heartbeat marker
    finger_out: bool  # "probe error": no finger / probe unplugged
    searching: bool  # looking for a pulse: values not yet meaningful
    searching_too_long: bool
    low_spo2: bool  # "SpO2 dropping" alarm bit
    perfusion_index: int | None = None  # raw PI (v7 only), None when invalid/absent

    @property
    def valid(self) -> bool:
        """True when the waveform and values are meaningful (finger in, pulse found)."""
        return not (self.finger_out or self.searching)


@dataclass(frozen=True, slots=True)
class StoredPoints:
    """A 0x0F (or 0x09) storage packet: up to three 1-second points, (spo2, pulse) each None when
    invalid. ``pad`` counts all-zero filler points (after the end of the recording)."""

    points: tuple[tuple[int | None, int | None], ...]
    pad: int = 0


@dataclass(frozen=True, slots=True)
class SessionCount:
    count: int


@dataclass(frozen=True, slots=True)
class SessionDate:
    year: int
    month: int
    day: int


@dataclass(frozen=True, slots=True)
class SessionTime:
    hour: int
    minute: int
    second: int


@dataclass(frozen=True, slots=True)
class SessionDuration:
    raw: int  # in 1/2 s on CMS50D+/E/F (1/4 s on CMS50I/H, per OSCAR)

    def points(self, divisor: int = 2) -> int:
        return self.raw // divisor


@dataclass(frozen=True, slots=True)
class DeviceText:
    """Model (0x02) or vendor (0x03) string segments."""

    ptype: int
    text: str


@dataclass(frozen=True, slots=True)
class OtherPacket:
    """A well-formed packet we do not interpret (acks 0x0B/0x0C, notices 0x0D...)."""

    ptype: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Dropped:
    """Marks where the parser threw bytes away (noise, a broken packet): ``nbytes`` were lost there,
    so whatever follows is not contiguous with what came before."""

    nbytes: int


Frame: TypeAlias = (
    LiveSample
    | StoredPoints
    | SessionCount
    | SessionDate
    | SessionTime
    | SessionDuration
    | DeviceText
    | OtherPacket
    | Dropped
)


def _dropped(out: list[Frame], n: int) -> None:
    if out and isinstance(out[-1], Dropped):
        out[-1] = Dropped(out[-1].nbytes + n)
    else:
        out.append(Dropped(n))


# --------------------------------------------------------------------------------------------------
# New protocol (v7): packet codec
# --------------------------------------------------------------------------------------------------

CMD = 0x7D
CMD_START_LIVE = 0xA1
CMD_STOP_LIVE = 0xA2
CMD_SESSION_COUNT = 0xA3
CMD_SESSION_DURATION = 0xA4
CMD_SESSION_TIME = 0xA5  # answered by a 0x07 (date) and a 0x12 (time) packet
CMD_SESSION_DATA = 0xA6
CMD_STOP_DATA = 0xA7
CMD_MODEL = 0xA8
CMD_VENDOR = 0xA9
CMD_KEEPALIVE = 0xAF

PT_LIVE = 0x01
PT_MODEL = 0x02
PT_VENDOR = 0x03
PT_DATE = 0x07
PT_DURATION = 0x08
PT_STORED_PI = 0x09
PT_SESSION_COUNT = 0x0A
PT_STORED = 0x0F
PT_TIME = 0x12

# Total packet length by type (type byte + high byte + data), after OSCAR's table; 0x01 from the
# live-mode implementations; 0x7D is the host's command packet (echo/loopback). 0x0D has no known
# fixed length and is skipped as a fragment.
PACKET_LENGTHS: Mapping[int, int] = {
    0x01: 9,
    0x02: 9,
    0x03: 9,
    0x04: 9,
    0x05: 9,
    0x06: 4,
    0x07: 8,
    0x08: 8,
    0x09: 6,
    0x0A: 4,
    0x0B: 4,
    0x0C: 2,
    0x0E: 3,
    0x0F: 8,
    0x10: 3,
    0x11: 9,
    0x12: 8,
    0x13: 9,
    0x14: 9,
    0x7D: 9,
}


def encode_packet(ptype: int, data: Sequence[int]) -> bytes:
    """``[type, high byte, data...]`` with the sync bits set (used for commands and by the simulator)."""
    if not 0 <= ptype <= 0x7F:
        raise ValueError(f"packet type {ptype:#x} must have bit 7 clear")
    if len(data) > 7:
        raise ValueError("at most 7 data bytes")
    high = 0x80
    out = bytearray([ptype, 0])
    for i, b in enumerate(data):
        if not 0 <= b <= 0xFF:
            raise ValueError(f"data byte {b} out of range")
        if b & 0x80:
            high |= 1 << i
        out.append(0x80 | (b & 0x7F))
    out[1] = high
    return bytes(out)


def command(code: int, *args: int) -> bytes:
    """A host command: ``7D 81 cc 80 80 80 80 80 80`` for ``command(0xA1)``."""
    data = [code, *args]
    return encode_packet(CMD, data + [0] * (7 - len(data)))


def decode_packet(packet: bytes) -> tuple[int, bytes]:
    """``(type, data with bit 7 restored)``; :class:`Cms50FrameError` when the sync bits are wrong."""
    if len(packet) < 2:
        raise Cms50FrameError(f"packet of {len(packet)} bytes is too short")
    ptype = packet[0]
    if ptype & 0x80:
        raise Cms50FrameError(f"type byte {ptype:#04x} has the sync bit set")
    if any(not (b & 0x80) for b in packet[1:]):
        raise Cms50FrameError("a data byte lacks its sync bit")
    expected = PACKET_LENGTHS.get(ptype)
    if expected is None:
        raise Cms50FrameError(f"unknown packet type {ptype:#04x}")
    if len(packet) != expected:
        raise Cms50FrameError(f"type {ptype:#04x} packet has {len(packet)} bytes, expected {expected}")
    high = packet[1]
    data = bytes((b & 0x7F) | (0x80 if high & (1 << i) else 0) for i, b in enumerate(packet[2:]))
    return ptype, data


def _spo2(value: int) -> int | None:
    return value if plausible.spo2_ok(value) else None


def _pulse(value: int) -> int | None:
    return value if plausible.pulse_ok(value) else None


def decode_frame(packet: bytes) -> Frame:
    """One framed v7 packet to a typed frame."""
    ptype, d = decode_packet(packet)
    if ptype == PT_LIVE:
        pi = d[5] | (d[6] << 8)
        return LiveSample(
            pleth=d[1] & 0x7F,
            spo2=_spo2(d[4]),
            pulse_rate=_pulse(d[3]),
            signal=d[0] & 0x0F,
            bar=d[2] & 0x0F,
            beat=bool(d[0] & 0x40),
            finger_out=bool(d[0] & 0x80),
            searching=bool(d[1] & 0x80),
            searching_too_long=bool(d[0] & 0x10),
            low_spo2=bool(d[0] & 0x20),
            perfusion_index=None if pi == 0xFFFF or not d[2] & 0x10 else pi,
        )
    if ptype in (PT_STORED, PT_STORED_PI):
        pairs = [(d[0], d[1]), (d[2], d[3]), (d[4], d[5])] if ptype == PT_STORED else [(d[0], d[1])]
        points: list[tuple[int | None, int | None]] = []
        pad = 0
        for spo2, pr in pairs:
            if spo2 == 0 and pr == 0:
                pad += 1
                continue
            points.append((_spo2(spo2), _pulse(pr)))
        return StoredPoints(tuple(points), pad)
    if ptype == PT_SESSION_COUNT:
        return SessionCount(d[1])
    if ptype == PT_DATE:
        year, month, day = d[2] * 100 + d[3], d[4], d[5]
        if not (1 <= month <= 12 and 1 <= day <= 31 and 2000 <= year <= 2099):
            raise Cms50FrameError(f"session date {year}-{month}-{day} is not a date")
        return SessionDate(year, month, day)
    if ptype == PT_TIME:
        hour, minute, second = d[2], d[3], d[4]
        if not (hour < 24 and minute < 60 and second < 60):
            raise Cms50FrameError(f"session time {hour}:{minute}:{second} is not a time")
        return SessionTime(hour, minute, second)
    if ptype == PT_DURATION:
        return SessionDuration(d[2] | (d[3] << 8) | (d[4] << 16))
    if ptype in (PT_MODEL, PT_VENDOR):
        text = bytes(b for b in d if 0x20 <= b < 0x7F).decode("ascii").strip()
        return DeviceText(ptype, text)
    return OtherPacket(ptype, d)


@dataclass
class ParserStats:
    frames: int = 0
    garbage_bytes: int = 0
    bad_frames: int = 0
    out_of_range: int = 0  # values neither valid nor the device's own "invalid" marker


@dataclass
class Cms50Parser:
    """Sans-I/O parser of the v7 byte stream: ``feed(bytes) -> list[Frame]``. Never raises; bad input
    is dropped and counted in :attr:`stats`."""

    stats: ParserStats = field(default_factory=ParserStats)
    _buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        buf = self._buf
        buf.extend(data)
        while buf:
            if buf[0] & 0x80:
                # Not a packet start: a stray sync byte (line noise or the tail of a broken packet).
                i = 1
                while i < len(buf) and buf[i] & 0x80:
                    i += 1
                self.stats.garbage_bytes += i
                _dropped(out, i)
                del buf[:i]
                continue
            length = PACKET_LENGTHS.get(buf[0])
            if length is None:
                self.stats.garbage_bytes += 1
                _dropped(out, 1)
                del buf[0]
                continue
            # Look for an early start byte: the packet was cut short (a byte was lost).
            end = min(length, len(buf))
            cut = next((i for i in range(1, end) if not buf[i] & 0x80), None)
            if cut is not None:
                self.stats.bad_frames += 1
                self.stats.garbage_bytes += cut
                _dropped(out, cut)
                del buf[:cut]
                continue
            if len(buf) < length:
                break
            packet = bytes(buf[:length])
            del buf[:length]
            try:
                frame = decode_frame(packet)
            except Cms50FrameError:
                self.stats.bad_frames += 1  # counted here, reported by the driver with its device id
                _dropped(out, len(packet))
                continue
            self._count_range(packet, frame)
            self.stats.frames += 1
            out.append(frame)
        return out

    def _count_range(self, packet: bytes, frame: Frame) -> None:
        if isinstance(frame, LiveSample):
            _, d = decode_packet(packet)
            if frame.spo2 is None and d[4] not in (0, 0x7F):
                self.stats.out_of_range += 1
            if frame.pulse_rate is None and d[3] not in (0, 0xFF):
                self.stats.out_of_range += 1


# --------------------------------------------------------------------------------------------------
# Older protocol (CMS50D/E firmware before 4.x, 19200 baud): 5-byte frames
# --------------------------------------------------------------------------------------------------


def encode_legacy(sample: LiveSample) -> bytes:
    """The 5-byte frame of the older protocol (for the simulator and vectors)."""
    pr = 0xFF if sample.pulse_rate is None else sample.pulse_rate
    spo2 = 0x7F if sample.spo2 is None else sample.spo2
    b0 = 0x80 | (sample.signal & 0x0F)
    b0 |= 0x10 if sample.searching_too_long else 0
    b0 |= 0x20 if sample.low_spo2 else 0
    b0 |= 0x40 if sample.beat else 0
    b2 = (sample.bar & 0x0F) | (0x10 if sample.finger_out else 0) | (0x20 if sample.searching else 0)
    b2 |= (pr & 0x80) >> 1
    return bytes([b0, sample.pleth & 0x7F, b2, pr & 0x7F, spo2 & 0x7F])


def decode_legacy(frame: bytes) -> LiveSample:
    if len(frame) != 5:
        raise Cms50FrameError(f"legacy frame has {len(frame)} bytes, expected 5")
    if not frame[0] & 0x80 or any(b & 0x80 for b in frame[1:]):
        raise Cms50FrameError("legacy frame sync bits are wrong")
    b0, b1, b2, b3, b4 = frame
    pr = ((b2 & 0x40) << 1) | (b3 & 0x7F)
    return LiveSample(
        pleth=b1 & 0x7F,
        spo2=_spo2(b4 & 0x7F),
        pulse_rate=_pulse(pr),
        signal=b0 & 0x0F,
        bar=b2 & 0x0F,
        beat=bool(b0 & 0x40),
        finger_out=bool(b2 & 0x10),
        searching=bool(b2 & 0x20),
        searching_too_long=bool(b0 & 0x10),
        low_spo2=bool(b0 & 0x20),
    )


@dataclass
class LegacyParser:
    """Sans-I/O parser of the older 5-byte stream. Never raises; counts what it drops."""

    stats: ParserStats = field(default_factory=ParserStats)
    _buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        buf = self._buf
        buf.extend(data)
        while buf:
            if not buf[0] & 0x80:
                self.stats.garbage_bytes += 1
                _dropped(out, 1)
                del buf[0]
                continue
            end = min(5, len(buf))
            cut = next((i for i in range(1, end) if buf[i] & 0x80), None)
            if cut is not None:
                self.stats.bad_frames += 1
                self.stats.garbage_bytes += cut
                _dropped(out, cut)
                del buf[:cut]
                continue
            if len(buf) < 5:
                break
            frame = bytes(buf[:5])
            del buf[:5]
            sample = decode_legacy(frame)  # the checks above make this total
            pr = ((frame[2] & 0x40) << 1) | frame[3]
            if sample.pulse_rate is None and pr not in (0, 0xFF):
                self.stats.out_of_range += 1
            if sample.spo2 is None and frame[4] not in (0, 0x7F):
                self.stats.out_of_range += 1
            self.stats.frames += 1
            out.append(sample)
        return out


LEGACY_DOWNLOAD = bytes([0xF5, 0xF5])
LEGACY_STOP = bytes([0xF6, 0xF6, 0xF6])
LEGACY_PREAMBLE = bytes([0xF2, 0x80, 0x00]) * 3


def legacy_parse_download(data: bytes) -> tuple[int, list[tuple[int | None, int | None]]]:
    """Parse a complete older-protocol recording download (after ``F5 F5``): the number of points the
    header announces and the (spo2, pulse) points received. Times are not in the data: point *i* is
    ``start + i`` seconds, with ``start`` known only to the user."""
    start = data.find(LEGACY_PREAMBLE)
    if start < 0:
        raise Cms50FrameError("no recording preamble")
    pos = start + len(LEGACY_PREAMBLE)
    if len(data) < pos + 3:
        raise Cms50FrameError("recording header is truncated")
    la, lb, lc = data[pos : pos + 3]
    if not la & 0x80 or not lb & 0x80 or lc & 0x80:
        raise Cms50FrameError("corrupted recording length")
    length = (((la & 0x7F) << 14) | ((lb & 0x7F) << 7) | lc) + 1
    if length % 3:
        raise Cms50FrameError(f"recording length {length} is not a multiple of 3")
    body = data[pos + 3 : pos + 3 + length]
    points: list[tuple[int | None, int | None]] = []
    for i in range(0, len(body) - len(body) % 3, 3):
        b0, b1, b2 = body[i : i + 3]
        if b0 & 0xFE != 0xF0 or not b1 & 0x80 or b2 & 0x80:
            raise Cms50FrameError(f"recording point {i // 3} is corrupted")
        points.append((_spo2(b2 & 0x7F), _pulse(((b0 & 0x01) << 7) | (b1 & 0x7F))))
    return length // 3, points


def legacy_encode_download(points: Sequence[tuple[int, int]]) -> bytes:
    """The device's answer to ``F5 F5`` for ``points`` of (spo2, pulse) (simulator and vectors)."""
    length = len(points) * 3 - 1
    header = bytes([0x80 | ((length >> 14) & 0x7F), 0x80 | ((length >> 7) & 0x7F), length & 0x7F])
    body = bytearray()
    for spo2, pr in points:
        body += bytes([0xF0 | ((pr >> 7) & 1), 0x80 | (pr & 0x7F), spo2 & 0x7F])
    return LEGACY_PREAMBLE + header + bytes(body)


# --------------------------------------------------------------------------------------------------
# Stored sessions: pure bookkeeping of what was already fetched
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One stored point with its original capture time and a stable identity for dedupe."""

    source_id: str
    captured_at: float
    spo2: int | None
    pulse_rate: int | None


def session_records(
    start: dt.datetime, points: Sequence[tuple[int | None, int | None]], *, first_index: int = 0
) -> list[StoredRecord]:
    """Records of a session that started at ``start`` (aware datetime); point *i* is ``i`` seconds later.
    ``source_id`` is ``cms50:{start ISO}:{i}``, stable across downloads of the same session."""
    t0 = start.timestamp()
    key = start.strftime("%Y%m%dT%H%M%S")
    return [
        StoredRecord(f"cms50:{key}:{first_index + i}", t0 + (first_index + i) * STORED_INTERVAL_S, spo2, pr)
        for i, (spo2, pr) in enumerate(points)
    ]


@dataclass
class FetchLedger:
    """Which stored records were already emitted: ``{key: count emitted}`` (for a session: its start
    key and the number of points; for a single record: its key and 1). Kept in memory and, when
    ``path`` is set, in a small JSON file written atomically, so a restart of the gateway does not emit
    a recording twice (the msg_id built from ``source_id`` dedupes whatever slips through)."""

    path: Path | None = None
    max_entries: int = 64
    owner: str = ""  # the device id, for log lines
    done: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._file = StateFile(self.path, self.owner, "stored-record ledger") if self.path is not None else None

    def load(self) -> None:
        raw = self._file.read() if self._file is not None else None
        if isinstance(raw, dict):
            self.done = {str(k): v for k, v in raw.items() if isinstance(v, int)}

    def save(self) -> None:
        # (the msg_id still dedupes a record re-emitted after a failed write)
        if self._file is not None:
            self._file.write(self.done)

    def emitted(self, key: str) -> int:
        return self.done.get(key, 0)

    def mark(self, key: str, count: int, *, save: bool = True) -> None:
        if count > self.done.get(key, 0):
            self.done[key] = count
            # Keep the ledger small; keys start with the record time, so the oldest go first.
            if len(self.done) > self.max_entries:
                for old in sorted(self.done)[: len(self.done) - self.max_entries]:
                    del self.done[old]
            if save:
                self.save()


# --------------------------------------------------------------------------------------------------
# Live stream -> readings: pure accumulator
# --------------------------------------------------------------------------------------------------


@dataclass
class LiveAccumulator:
    """Turns live samples into Waveform blocks and (rate-limited) device Measurements. Pure: time is
    given by the caller. Samples are timed by their index at ``fs`` from an anchor, re-anchored when
    the arrival clock drifts by more than ``max_drift_s`` (a gap, a stall)."""

    device_id: str
    fs: float = SAMPLE_RATE_HZ
    block: int = 60
    report_every_s: float = 5.0
    max_drift_s: float = 1.0
    index: int = 0  # running count of frames received (the "device counter")
    _anchor_t: float | None = None
    _anchor_i: int = 0
    _samples: list[float] = field(default_factory=list)
    _block_start: int = 0
    _last_report: float | None = None
    invalid_frames: int = 0
    # The device repeats its SpO2/pulse in every frame and updates them about once a second; a value
    # is reported only after ``confirm`` identical frames in a row, so one corrupted byte (no
    # checksum) never becomes a reading.
    confirm: int = 3
    _run_values: tuple[int | None, int | None] | None = None
    _run_length: int = 0

    def _time_of(self, i: int) -> float:
        assert self._anchor_t is not None
        return self._anchor_t + (i - self._anchor_i) / self.fs

    def feed(self, sample: LiveSample, now: float) -> list[Waveform | Measurement]:
        out: list[Waveform | Measurement] = []
        i = self.index
        if self._anchor_t is not None and abs(self._time_of(i) - now) > self.max_drift_s:
            # A gap (unplug, stall) or drift: re-anchor. The index jumps by the missed time, so a gap
            # in ``first_index`` is a gap in the signal, as with the device's own counter.
            out.extend(self.flush())
            i = max(i, self._anchor_i + round((now - self._anchor_t) * self.fs))
            self._anchor_t, self._anchor_i = now, i
        elif self._anchor_t is None:
            self._anchor_t, self._anchor_i = now, i
        self.index = i + 1
        if not sample.valid:
            self.invalid_frames += 1
            self._run_values, self._run_length = None, 0
            out.extend(self.flush())
            return out
        if not self._samples:
            self._block_start = i
        elif i != self._block_start + len(self._samples):
            out.extend(self.flush())
            self._block_start = i
        self._samples.append(float(sample.pleth))
        if len(self._samples) >= self.block:
            out.extend(self.flush())
        values = (sample.spo2, sample.pulse_rate)
        if values == self._run_values:
            self._run_length += 1
        else:
            self._run_values, self._run_length = values, 1
        t = self._time_of(i)
        # A time before the last report means the wall clock stepped back (or the samples were
        # re-anchored): report now, or the device would stay silent for as long as the step.
        last = self._last_report
        due = last is None or t - last >= self.report_every_s or t < last
        if due and self._run_length >= self.confirm:
            readings = self._values(sample, t)
            if readings:
                out.extend(readings)
                self._last_report = t
        return out

    def feed_read(self, frames: Sequence[Frame], now: float, frame_len: int) -> list[Waveform | Measurement]:
        """The frames of one read from the port, which returned at ``now``. The device sends a frame
        every ``1/fs`` s, so when the gateway fell behind (a busy event loop, a slow SD card) and one
        read returns many of them, the earlier ones arrived earlier: the k-th of n live frames is fed
        with ``now - (n - 1 - k) / fs``. Feeding them all at ``now`` would first move the time base
        forwards by the stall (a gap that never was) and then back (readings out of order)."""
        out: list[Waveform | Measurement] = []
        n = sum(1 for f in frames if isinstance(f, LiveSample))
        k = 0
        for frame in frames:
            if isinstance(frame, LiveSample):
                k += 1
                out.extend(self.feed(frame, now - (n - k) / self.fs))
            elif isinstance(frame, Dropped):
                out.extend(self.gap(frame.nbytes, frame_len))
        return out

    def _values(self, sample: LiveSample, t: float) -> list[Waveform | Measurement]:
        out: list[Waveform | Measurement] = []
        extra: dict[str, Any] = {"signal": sample.signal}
        if sample.spo2 is not None:
            spo2_extra = dict(extra)
            if sample.spo2 < SPO2_ACCURATE_FROM:
                spo2_extra["below_accuracy_range"] = True
            if sample.low_spo2:
                spo2_extra["device_low_spo2_alarm"] = True
            out.append(self._measurement(LOINC_SPO2, sample.spo2, UNIT_SPO2, t, spo2_extra))
        if sample.pulse_rate is not None:
            out.append(self._measurement(LOINC_PULSE, sample.pulse_rate, UNIT_PULSE, t, extra))
        return out

    def gap(self, nbytes: int, frame_len: int) -> list[Waveform | Measurement]:
        """The parser dropped ``nbytes``: end the block there and count the frames they held, so the
        next block's ``first_index`` shows the gap instead of hiding it in a "contiguous" block."""
        self._run_values, self._run_length = None, 0
        out = self.flush()
        if self._anchor_t is not None:
            self.index += max(1, round(nbytes / frame_len))
        return out

    def _measurement(self, code: str, value: int, unit: str, t: float, extra: Mapping[str, Any]) -> Measurement:
        return Measurement(
            device_id=self.device_id,
            code=code,
            value=float(value),
            unit=unit,
            captured_at=t,
            method="device",
            extra=extra,
        )

    def flush(self) -> list[Waveform | Measurement]:
        if not self._samples:
            return []
        wf = Waveform(
            device_id=self.device_id,
            captured_at=self._time_of(self._block_start),
            fs=self.fs,
            channels={"pleth": tuple(self._samples)},
            first_index=self._block_start,
        )
        self._samples = []
        return [wf]


# --------------------------------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Fetched:
    """One stored-data transfer: the points (at most the expected number), how many of them came
    before the parser first dropped bytes, and whether the download's deadline ended it."""

    points: list[tuple[int | None, int | None]]
    clean: int
    overdue: bool


@dataclass(frozen=True)  # no slots: frozen+slots subclasses break super() on 3.11
class Cms50Options(SerialOptions):
    silence_timeout_s: float = option(10.0, lo=0.5, hi=86400, unit="seconds", doc="no frame for this long: lost")
    download_stored: bool = option(True, doc="fetch the stored session on connect")
    timezone: str = timezone_option()
    state_path: str = state_path_option()
    report_every_s: float = option(5.0, lo=0, hi=3600, unit="seconds", doc="device SpO2/pulse at most this often")
    user: int = option(1, lo=1, hi=255, doc="stored-data user index")
    duration_divisor: int = option(2, lo=1, hi=16, doc="firmware-dependent unit of the stored duration")


class Cms50Driver(SerialDriver):
    """CMS50D+ (firmware 4.6+), CMS50E/F and relatives speaking the newer ("v7") protocol at 115200.

    On connect: stop live mode, ask for the stored session (count, start time, duration) and download
    the points not yet emitted (with their original times), then start live mode and keep it alive
    (0xAF every ``keepalive_s``; the device stops streaming about 30 s after the last one). The
    download ends with its last point, after ``data_quiet_s`` without a stored-data packet, or at a
    deadline sized by the expected points (:meth:`download_budget_s`): then what came is kept (the
    next connection fetches the rest), counted in ``download_timeouts``, and live mode starts.

    Options: the serial keys, ``download_stored`` (default true), ``timezone`` (IANA name of the
    device's clock, default the gateway's), ``state_path`` (ledger file of fetched sessions),
    ``report_every_s`` (device SpO2/pulse at most this often), ``user`` (stored-data user index).
    """

    kind: ClassVar[str] = "serial-cms50"
    baudrate: ClassVar[int] = 115200
    protocol: ClassVar[str] = "v7"
    Options: ClassVar[type[DriverOptions]] = Cms50Options
    summary: ClassVar[str] = "Contec CMS50D+/E/F pulse oximeter (USB serial)"
    usb_ids: ClassVar[tuple[tuple[int, int, str], ...]] = ((0x10C4, 0xEA60, ""),)  # CP210x bridge
    silence_warn_s: ClassVar[float | None] = 24 * 3600.0
    streams: ClassVar[bool] = True
    loinc_codes: ClassVar[tuple[str, ...]] = (codes.SPO2, codes.HEART_RATE)
    keepalive_s: ClassVar[float] = 5.0
    # The port layer's backoff grows to 30 s; after a long unplug that would delay the oximeter's
    # return by up to 30 s. Probing a missing by-id path is free, so cap it to stay "back within 5 s".
    reconnect_cap_s: ClassVar[float] = 3.0
    reply_timeout_s: ClassVar[float] = 2.0
    # A download ends when no stored-data packet came for this long (live or other packets do not
    # count: a device that streams them instead of its upload must not hold the download open).
    data_quiet_s: ClassVar[float] = 2.0
    download_attempts: ClassVar[int] = 3
    # And, whatever the device sends, by an overall deadline (all attempts together): the expected
    # points at ``download_min_rate`` plus ``download_margin_s``, at most ``download_max_s``. The line
    # carries 11520 bytes/s at 115200 8N1: 1440 0x0F packets (8 bytes, 3 points) = 4320 points/s, or
    # 1920 points/s of 0x09 packets (6 bytes, 1 point); the simulator uploads at the pty's speed. No
    # source gives the device's own pace, so the deadline allows one ~10x below the slower line rate
    # (an 8-hour night, 28800 points: 144 s). The margin covers the start of the upload, a retry and a
    # busy Pi; the cap, a duration field (24 bits) claiming months: two days of points fit under it.
    download_min_rate: ClassVar[float] = 200.0  # stored points per second
    download_margin_s: ClassVar[float] = 10.0
    download_max_s: ClassVar[float] = 900.0
    frame_len: ClassVar[int] = PACKET_LENGTHS[PT_LIVE]
    # Live frames (60 a second) and stored data are read in blocks of this much time, not frame by
    # frame: 10 wakeups a second instead of 60-120. Nothing here is latency-critical (the oximeter
    # is no SOS path; its readings are committed with the next group commit anyway).
    read_block_s: ClassVar[float] = 0.1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        opts = self.spec.options
        assert isinstance(opts, Cms50Options)
        self.download_stored = opts.download_stored
        self.tz = device_zone(opts.timezone)
        self.ledger = FetchLedger(self.state_path(opts.state_path), owner=self.device_id)
        self.ledger.load()
        self.report_every_s = opts.report_every_s
        self.user = opts.user
        self.duration_divisor = opts.duration_divisor
        self.parser: Cms50Parser | LegacyParser = Cms50Parser() if self.protocol == "v7" else LegacyParser()
        self.live = LiveAccumulator(self.device_id, report_every_s=self.report_every_s)
        self.stored_emitted = 0
        self._answered = False
        self._overdue_warned = False  # WARNING for the first overdue download, DEBUG after (counted)
        self.reconnector.backoff = Backoff(base_s=0.25, cap_s=self.reconnect_cap_s)

    def counters(self) -> Mapping[str, int]:
        merged = dict(super().counters())
        st = self.parser.stats
        merged.update(
            frames=st.frames,
            garbage_bytes=st.garbage_bytes,
            bad_frames=st.bad_frames,
            out_of_range=st.out_of_range,
            invalid_frames=self.live.invalid_frames,
            stored_emitted=self.stored_emitted,
        )
        return merged

    # -- requests -----------------------------------------------------------------------------------

    async def _frames(self, link: SerialLink, timeout_s: float, *, gather_s: float = 0.0) -> list[Frame]:
        return self.parser.feed(await link.read(timeout_s=timeout_s, gather_s=gather_s))

    async def _ask(self, link: SerialLink, cmd: bytes, *want: type) -> list[Frame]:
        """Send ``cmd`` and return the first frame of each wanted type, in the order asked (other
        frames are ignored). :class:`LinkSilent` when the device does not answer in time."""
        link.write(cmd)
        got: dict[type, Frame] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reply_timeout_s
        while len(got) < len(want):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise LinkSilent(f"{link.path}: no answer to command {cmd[2]:#04x}")
            for f in await self._frames(link, remaining):
                if type(f) in want:
                    got.setdefault(type(f), f)
        return [got[t] for t in want]

    async def _download(self, link: SerialLink) -> None:
        (count,) = await self._ask(link, command(CMD_SESSION_COUNT), SessionCount)
        assert isinstance(count, SessionCount)
        self._mark_answered()
        if count.count == 0:
            return
        date, tod = await self._ask(link, command(CMD_SESSION_TIME, self.user, 1), SessionDate, SessionTime)
        assert isinstance(date, SessionDate) and isinstance(tod, SessionTime)
        (dur,) = await self._ask(link, command(CMD_SESSION_DURATION, self.user, 1), SessionDuration)
        assert isinstance(dur, SessionDuration)
        try:
            start = dt.datetime(date.year, date.month, date.day, tod.hour, tod.minute, tod.second, tzinfo=self.tz)
        except ValueError as exc:
            self.count("bad_sessions")
            log.warning("device %s: stored session has an impossible start time: %s", self.device_id, exc)
            return
        total = dur.points(self.duration_divisor)
        key = start.strftime("%Y%m%dT%H%M%S")
        done = self.ledger.emitted(key)
        if total <= done:
            log.debug("device %s: stored session %s already fetched (%d points)", self.device_id, key, done)
            return
        st = self.parser.stats
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.download_budget_s(total)  # the loop's clock: monotonic
        for _ in range(self.download_attempts):
            before = (st.bad_frames, st.garbage_bytes)
            got = await self._fetch_points(link, total, deadline)
            damaged = (st.bad_frames, st.garbage_bytes) != before
            if got.overdue or (damaged and loop.time() >= deadline):
                # Out of time, no other try: keep what came, up to the first dropped bytes (the
                # points before them are in order from the first; after them, times may be shifted).
                points = got.points[: got.clean] if damaged else got.points
                self._download_overdue(key, len(points), total)
                break
            if not damaged:
                points = got.points
                break
            # Stored points carry no index: one lost packet would shift every later point's time.
            self.count("download_retries")
            log.debug("device %s: stored-data download was damaged, asking again", self.device_id)
        else:
            self.count("downloads_discarded")
            log.warning(
                "device %s: stored data arrived damaged %d times; will retry later",
                self.device_id,
                self.download_attempts,
            )
            return
        new = session_records(start, points[done:], first_index=done)
        for rec in new:
            self._emit_stored(rec)
        self.ledger.mark(key, done + len(new))
        log.info("device %s: fetched %d stored points of session %s", self.device_id, len(new), key)

    def download_budget_s(self, total: int) -> float:
        """How long the download of ``total`` stored points may take, all attempts together."""
        expected = total / self.download_min_rate
        return min(self.download_max_s, self.data_quiet_s + self.download_margin_s + expected)

    async def _fetch_points(self, link: SerialLink, total: int, deadline: float) -> _Fetched:
        """Ask for the stored points; read until ``total`` came, no stored-data packet came for
        ``data_quiet_s``, or the loop's (monotonic) clock reaches ``deadline``."""
        loop = asyncio.get_running_loop()
        link.write(command(CMD_SESSION_DATA, self.user, 1))
        points: list[tuple[int | None, int | None]] = []
        clean: int | None = None  # points that came before the parser first dropped bytes
        last_stored = loop.time()
        while len(points) < total:
            wait = min(last_stored + self.data_quiet_s, deadline) - loop.time()
            if wait <= 0:
                break
            try:
                frames = await self._frames(link, wait, gather_s=self.read_block_s)
            except LinkSilent:
                continue  # not one byte for ``wait``: the check above ends it
            for f in frames:
                if isinstance(f, StoredPoints):
                    points.extend(f.points)
                    last_stored = loop.time()
                elif isinstance(f, Dropped) and clean is None:
                    clean = len(points)
        link.write(command(CMD_STOP_DATA))
        overdue = len(points) < total and loop.time() >= deadline
        if len(points) < total and not overdue:
            self.count("short_downloads")
            log.debug("device %s: download stopped at %d of %d points", self.device_id, len(points), total)
        return _Fetched(points[:total], min(total, len(points) if clean is None else clean), overdue)

    def _download_overdue(self, key: str, kept: int, total: int) -> None:
        self.count("download_timeouts")
        # Once at WARNING: a device that does this does it on every connection.
        level = logging.DEBUG if self._overdue_warned else logging.WARNING
        self._overdue_warned = True
        log.log(
            level,
            "device %s: stored session %s still downloading after %.0f s; keeping %d of %d points, starting live data",
            self.device_id,
            key,
            self.download_budget_s(total),
            kept,
            total,
        )

    def _emit_stored(self, rec: StoredRecord) -> None:
        for code, value, unit in ((LOINC_SPO2, rec.spo2, UNIT_SPO2), (LOINC_PULSE, rec.pulse_rate, UNIT_PULSE)):
            if value is None:
                continue
            self.sink(
                Measurement(
                    device_id=self.device_id,
                    code=code,
                    value=float(value),
                    unit=unit,
                    captured_at=rec.captured_at,
                    method="device",
                    extra={"stored": True},
                    source_id=rec.source_id,
                )
            )
            self.stored_emitted += 1

    # -- live ---------------------------------------------------------------------------------------

    async def serve(self, link: SerialLink) -> None:
        self._answered = False
        link.write(command(CMD_STOP_LIVE))
        await asyncio.sleep(0.05)
        link.discard_input()
        if self.download_stored:
            try:
                await self._download(link)
            except LinkSilent as exc:
                # Models without storage (or a busy one) do not answer: live data still matters more.
                self.count("storage_unanswered")
                log.debug("device %s: stored-data request unanswered: %s", self.device_id, exc)
        link.write(command(CMD_START_LIVE))
        await self._stream(link, keepalive=True)

    def _mark_answered(self) -> None:
        if not self._answered:
            self._answered = True
            self.reconnector.mark_connected()

    async def _stream(self, link: SerialLink, *, keepalive: bool) -> None:
        """Read live frames until the link fails; the device counts as connected at its first frame
        (or its first answer to a command)."""
        pinger = asyncio.create_task(self._keepalive(link)) if keepalive else None
        try:
            while True:
                data = await link.read(gather_s=self.read_block_s)
                now = self.clock()
                frames = self.parser.feed(data)
                if any(isinstance(f, LiveSample) for f in frames):
                    self._mark_answered()
                for reading in self.live.feed_read(frames, now, self.frame_len):
                    self.sink(reading)
        finally:
            if pinger is not None:
                # A LinkLost of the pinger is the same loss the read loop reports.
                await cancel_and_wait(pinger)
            for reading in self.live.flush():
                self.sink(reading)

    async def _keepalive(self, link: SerialLink) -> None:
        while True:
            await asyncio.sleep(self.keepalive_s)
            link.write(command(CMD_KEEPALIVE))


class Cms50LegacyDriver(Cms50Driver):
    """CMS50D/E with the older firmware: 19200 baud, a continuous 5-byte stream, no commands needed.
    Its recording download has no start time, so it is not used (see :func:`legacy_parse_download`).

    Contec's older firmware talks 19200 8O1 (odd parity, per atbrask); :func:`open_serial` opens 8N1,
    so on real hardware the port layer must pass ``parity="O"`` (see docs/serial-devices.md)."""

    kind: ClassVar[str] = "serial-cms50-legacy"
    summary: ClassVar[str] = "Contec CMS50D/E pulse oximeter, older firmware (USB serial, 19200 baud)"
    usb_ids: ClassVar[tuple[tuple[int, int, str], ...]] = ()  # same bridge as serial-cms50: chosen by hand
    baudrate: ClassVar[int] = 19200
    protocol: ClassVar[str] = "legacy"
    frame_len: ClassVar[int] = 5
    parity: ClassVar[str] = "O"  # for the port layer once it opens ports with a parity (see above)

    async def serve(self, link: SerialLink) -> None:
        # The older firmware streams by itself, without commands.
        self._answered = False
        await self._stream(link, keepalive=False)
