"""RFXtrx433(E/XL) radio receiver: 433 MHz panic buttons and alarm pendants as SOS presses.

The RFXtrx is a USB serial device (FTDI, 38400 baud 8N1) that decodes many 433 MHz protocols and sends
each radio frame as one binary packet: ``[length, packet_type, subtype, seqnbr, ...]`` where ``length``
counts the bytes after itself. Packet decoding is done by ``RFXtrx.lowlevel.parse`` from pyRFXtrx (the
library Home Assistant uses, pure: bytes in, objects out); the transport, framing, resynchronisation and
press logic are ours (asyncio, no threads).

Start-up follows the RFXtrx SDK as pyRFXtrx does: reset (``0D 00 00 00 00 ...``), wait, drop what
arrived, ``get status`` (``0D 00 00 01 02 ...`` -> a 0x01 status packet), ``start receiver``
(``0D 00 00 03 07 ...`` -> a 0x01 packet with subtype 0x07, "Copyright RFXCOM").

A press is a Security1 packet (type 0x20) whose status is *Panic* (0x06) or *Alarm* (0x02), e.g. from
X10 security remotes, Visonic or Meiantech pendants: an SOS unless ``roles`` says otherwise. A button
with more than one key sends one sensor id with a different status per key (an X10 security remote or a
Meiantech keyfob: *Panic*, *Arm Away*, *Arm Home*, *Disarm*, *Light 1 On* ...), so ``roles`` gives a
role per sensor (``"a1b2c3" = "call"``: its panic/alarm presses are calls) or per sensor and command
(``"a1b2c3/arm_home" = "call"``: that key is a call button, its panic key stays SOS). A command that
``roles`` does not list is what it was before roles existed: panic and alarm are SOS, the others are
not presses. Buttons repeat their frame several times per press; the receiver's ``seqnbr`` counts
received frames, not presses, so frames of the same sensor and command closer than
``repeat_window_s`` to the previous one belong to the same press (:class:`PressDeduper`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from RFXtrx import lowlevel

from drivers.base import ButtonPress, FrameError, TransientDeviceError
from drivers.options import BUTTON_ROLES, DEVICE_ID_RE, ButtonRole, DriverOptions, OptionError, option
from drivers.serial.port import LinkSilent, SerialDriver, SerialLink, SerialOptions

log = logging.getLogger(__name__)

RESET = bytes([0x0D, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00])
GET_STATUS = bytes([0x0D, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00])
START_RECEIVER = bytes([0x0D, 0x00, 0x00, 0x03, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00])

PACKET_STATUS = 0x01
HANDSHAKE_TIMEOUT_S = 10.0  # reset (quiet 0.3 s), status and start receiver each answer well within 1 s
PACKET_SECURITY1 = 0x20
SECURITY1_ALARM = 0x02
SECURITY1_PANIC = 0x06
SOS_STATUSES = frozenset({SECURITY1_ALARM, SECURITY1_PANIC})

# Security1 statuses a key of a remote or pendant sends (RFXtrx SDK; pyRFXtrx's Security1.STATUS), by the
# command name ``roles`` uses. The "delayed" variants (a remote's min/max switch) are the same key.
COMMANDS: Mapping[str, tuple[int, ...]] = {
    "panic": (SECURITY1_PANIC,),
    "alarm": (SECURITY1_ALARM,),
    "arm_away": (0x09, 0x0A),
    "arm_home": (0x0B, 0x0C),
    "disarm": (0x0D,),
    "light1_off": (0x10,),
    "light1_on": (0x11,),
    "light2_off": (0x12,),
    "light2_on": (0x13,),
}
COMMAND_OF: Mapping[int, str] = {status: name for name, statuses in COMMANDS.items() for status in statuses}

# Lengths per packet type of the packets a receiver sends (RFXtrx SDK, RFXtrx.h 9.24: the length byte is
# the size of the type's structure less one). Only these headers start a frame: a length byte followed
# by another type, or by a length its type does not have, is line noise (drop one byte, look again). A
# header of a type missing here would otherwise be taken at its word and swallow what follows (a
# Panic frame ends in ``06 79``: "6 bytes of type 0x79" ate the head of the next repeat, and the next).
_LENGTH_OF: Mapping[int, int] = {
    0x02: 0x04,  # receiver/transmitter message
    0x10: 0x07,  # lighting 1 ... 6
    0x11: 0x0B,
    0x12: 0x08,
    0x13: 0x09,
    0x14: 0x0A,
    0x15: 0x0B,
    0x16: 0x07,  # chime
    0x17: 0x08,  # fan
    0x18: 0x07,  # curtain
    0x19: 0x09,  # blinds
    0x1A: 0x0C,  # RFY
    0x1B: 0x0C,  # Home Confort
    0x1E: 0x0B,  # Funkbus
    PACKET_SECURITY1: 0x08,
    0x21: 0x1C,  # security 2
    0x28: 0x06,  # camera
    0x30: 0x06,  # remotes
    0x40: 0x09,  # thermostats
    0x41: 0x06,
    0x42: 0x08,
    0x43: 0x0C,
    0x48: 0x0C,  # radiator valve
    0x4E: 0x0A,  # BBQ
    0x4F: 0x0A,  # temperature + rain
    0x50: 0x08,  # temperature, humidity, ... weather sensors
    0x51: 0x08,
    0x52: 0x0A,
    0x53: 0x09,
    0x54: 0x0D,
    0x55: 0x0B,
    0x56: 0x10,
    0x57: 0x09,
    0x58: 0x0D,
    0x59: 0x0D,  # current, energy, power, weight
    0x5A: 0x11,
    0x5B: 0x13,
    0x5C: 0x0F,
    0x5D: 0x08,
    0x70: 0x07,  # RFXSensor, RFXMeter, FS20
    0x71: 0x0A,
    0x72: 0x09,
    0x76: 0x1D,  # weather station
    0x77: 0x0A,  # solar
}
KNOWN_LENGTHS: Mapping[int, frozenset[int]] = {
    PACKET_STATUS: frozenset({0x0D, 0x14}),  # interface response (0x0D before SDK 7.00), copyright packet
    0x03: frozenset(range(0x04, 0x25)),  # undecoded RF (the receiver's undecoded mode, which we never set)
    0x60: frozenset({0x11, 0x15}),  # Cartelectronic encoder, TIC and Linky
    **{ptype: frozenset({length}) for ptype, length in _LENGTH_OF.items()},
}
_FRAME_LENGTHS = frozenset().union(*KNOWN_LENGTHS.values())
# Security1 statuses the SDK defines (bit 0x80 is the tamper flag): a frame with another is noise.
SECURITY1_STATUSES = frozenset({*range(0x00, 0x0E), *range(0x10, 0x18)})
SECURITY1_HEADER = bytes([0x08, PACKET_SECURITY1])


class NoHandshake(TransientDeviceError):
    """The device on the port did not answer the RFXtrx start-up in time: retried with backoff, and the
    device's state says why."""


@dataclass
class FramerStats:
    frames: int = 0
    garbage_bytes: int = 0
    stale_partials: int = 0


def _whole_security1(data: bytes) -> bool:
    """Whether ``data`` starts with a complete Security1 frame of a status the SDK defines."""
    return len(data) >= 9 and data[:2] == SECURITY1_HEADER and data[7] & 0x7F in SECURITY1_STATUSES


_NO_FRAME, _MORE = 0, -1  # RfxFramer._frame_at: no frame can start here / one may, its bytes are not all here
_BROKEN, _PARTIAL, _TILES = 0, 1, 2  # RfxFramer._tiling


@dataclass
class RfxFramer:
    """Sans-I/O framing of the RFXtrx byte stream with resynchronisation.

    ``feed(data, now)`` returns the complete packets; ``now`` is a monotonic time (a step of the wall
    clock must not age a partial frame, or keep one young). A length byte means nothing after a noise
    byte, so a frame is taken only where the stream bears it out:

    - its header is one the SDK defines (:data:`KNOWN_LENGTHS`) and, for Security1, so is its status;
      anything else costs one byte, and the next byte is looked at as a header;
    - a Security1 frame starting inside a frame of another type wins: a noise header of another type
      (``24 03``: 36 bytes of "undecoded RF") must not hide the repeats of an SOS press behind it;
    - where two framings of the bytes both hold (a noise ``08 20`` that took the head of a real frame;
      a sensor id holding ``08 20``), the one whose frames fill the buffer exactly wins: at once just
      after noise, else by the bytes to come (a read may end inside a frame), within stale_after_s;
    - a frame followed by bytes that cannot start one is suspect: a frame starting inside it that is
      followed by a possible frame start wins;
    - the receiver writes each radio frame in one piece: a read that starts with a whole Security1
      frame starts a frame, and what was pending before it was not one;
    - a partial frame older than ``stale_after_s`` (its bytes never came: a lost byte, or a noise
      header) costs its first byte and what followed it is framed again. The driver feeds ``b""`` at
      :meth:`stale_at`, so frames a stale partial held back come out within ``stale_after_s``, not at
      the next radio frame, which may be hours away.

    What that buys (the property tests in tests/test_rfxtrx.py): any noise before a burst of k repeats
    of a Security1 frame costs at most one of them, whether the burst comes in one read or a read per
    frame (and then out of those reads, without a stale wait), and also with reads ending anywhere
    inside frames unless the sensor id holds ``08 20``. Noise costs bytes, counted in
    ``stats.garbage_bytes``; a frame complete at the end of a read comes out of that read, except
    while two framings both hold.

    ``trust_replies`` (the start-up, waiting for the receiver's 0x01 replies) takes 0x01 packets as
    they come: a reply whose bytes happen to look like a Security1 frame must not be lost, or the
    receiver never starts.
    """

    stale_after_s: float = 0.5
    trust_replies: bool = False
    stats: FramerStats = field(default_factory=FramerStats)
    _buf: bytearray = field(default_factory=bytearray)
    _partial_since: float | None = None  # when the pending bytes last grew
    _after_noise: bool = True  # no Security1 frame since the start or since noise: we may be out of step

    def pending(self) -> bytes:
        """The bytes of a frame not yet complete."""
        return bytes(self._buf)

    def stale_at(self) -> float | None:
        """When the pending bytes go stale (then ``feed(b"", now)`` frames what they held), or None."""
        if not self._buf or self._partial_since is None:
            return None
        return self._partial_since + self.stale_after_s

    def feed(self, data: bytes, now: float) -> list[bytes]:
        out: list[bytes] = []
        if self._buf and self._partial_since is not None and now - self._partial_since > self.stale_after_s:
            self.stats.stale_partials += 1
            out += self._scan(final=True)
        elif self._buf and not self.trust_replies and _whole_security1(data):
            out += self._scan(final=True)
        if data:
            self._buf.extend(data)
            self._partial_since = now
        out += self._scan(final=False)
        if not self._buf:
            self._partial_since = None
        self.stats.frames += len(out)
        return out

    def _scan(self, *, final: bool) -> list[bytes]:
        """Frame the buffer from its start; ``final``: no more bytes will complete what is here."""
        buf = self._buf
        out: list[bytes] = []
        ends: list[int] | None = None
        p = 0
        while p < len(buf):
            if buf[p] == 0:  # the SDK allows a lone 0x00 (e.g. after reset): skip silently
                p += 1
                continue
            n = self._frame_at(p)
            resync: int | None = None  # where to look next when the frame at p is no frame
            if n == _NO_FRAME:
                resync = p + 1
            elif p + 1 < len(buf) and self._may_hide_security1(buf[p + 1]):
                inner = self._security1_inside(p, final=final)
                if inner == _MORE:
                    break  # wait for the bytes of the Security1 frame that may start inside
                if inner > p:
                    resync = inner
            if resync is None and n == _MORE:
                if not final:
                    break
                resync = p + 1  # its bytes never came: the header was noise, or a byte was lost
            if resync is None and not self._trusted(buf[p + 1]):
                ends = ends or self._tiling(final=final)
                if ends[p] != _TILES:
                    resync = next((q for q in range(p + 1, p + n) if self._frame_at(q) > 0 and ends[q] == _TILES), None)
                    if resync is not None and ends[p] == _PARTIAL and not self._after_noise:
                        break  # both framings hold so far: the next bytes decide
                if resync is None and not self._may_start(p + n):
                    resync = self._followed_inside(p, n)
            if resync is not None:
                self.stats.garbage_bytes += resync - p
                self._after_noise = True
                p = resync
                continue
            out.append(bytes(buf[p : p + n]))
            if buf[p + 1] == PACKET_SECURITY1 or self._trusted(buf[p + 1]):
                self._after_noise = False  # a frame of another type proves little: noise often is one
            p += n
        del buf[:p]
        return out

    def _tiling(self, *, final: bool) -> list[int]:
        """For each offset of the buffer: whether the frames from there fill it to its end exactly
        (:data:`_TILES`), up to a last one still incomplete (:data:`_PARTIAL`), or not (:data:`_BROKEN`)."""
        buf = self._buf
        ends = [_BROKEN] * len(buf) + [_TILES]
        for i in range(len(buf) - 1, -1, -1):
            n = 1 if buf[i] == 0 else self._frame_at(i)
            if n > 0:
                ends[i] = ends[i + n]
            elif n == _MORE and not final:
                ends[i] = _PARTIAL
        return ends

    def _frame_at(self, i: int) -> int:
        """The size of the complete, valid frame starting at ``i``; :data:`_MORE` when one may start
        there but its bytes are not all here; :data:`_NO_FRAME` when none can."""
        buf = self._buf
        if i >= len(buf):
            return _MORE
        length = buf[i]
        if length not in _FRAME_LENGTHS:
            return _NO_FRAME
        if i + 1 >= len(buf):
            return _MORE
        ptype = buf[i + 1]
        if length not in KNOWN_LENGTHS.get(ptype, ()):
            return _NO_FRAME
        if i + length + 1 > len(buf):
            return _MORE
        if ptype == PACKET_SECURITY1 and buf[i + 7] & 0x7F not in SECURITY1_STATUSES:
            return _NO_FRAME
        return length + 1

    def _may_start(self, i: int) -> bool:
        """Whether the bytes at ``i`` may start a frame (or are not here yet)."""
        return i >= len(self._buf) or self._buf[i] == 0 or self._frame_at(i) != _NO_FRAME

    def _trusted(self, ptype: int) -> bool:
        return self.trust_replies and ptype == PACKET_STATUS

    def _may_hide_security1(self, ptype: int) -> bool:
        return ptype != PACKET_SECURITY1 and not self._trusted(ptype)

    def _security1_inside(self, p: int, *, final: bool) -> int:
        """The offset of the first complete, valid Security1 frame starting inside the frame at ``p``;
        ``p`` when there is none; :data:`_MORE` when one may, its bytes not all here (unless ``final``)."""
        buf = self._buf
        stop = min(p + buf[p] + 1, len(buf)) + 1  # its header may end just past the frame
        q = buf.find(SECURITY1_HEADER, p + 1, stop)
        while q != -1:
            n = self._frame_at(q)
            if n > 0:
                return q
            if n == _MORE:
                return p if final else _MORE
            q = buf.find(SECURITY1_HEADER, q + 1, stop)
        return p

    def _followed_inside(self, p: int, n: int) -> int | None:
        """The first frame starting inside the one at ``p`` (of ``n`` bytes) that is complete, valid
        and followed by a possible frame start, or None."""
        for q in range(p + 1, p + n):
            m = self._frame_at(q)
            if m > 0 and self._may_start(q + m):
                return q
        return None


@dataclass(frozen=True, slots=True)
class RadioEvent:
    sensor_id: str  # "a1b2c3": the 24-bit id of the button
    status: int
    subtype: int
    battery_low: bool | None
    rssi: int | None


def decode_packet(packet: bytes) -> RadioEvent | None:
    """Decode one framed packet. ``None`` for packet types that are not security events;
    :class:`FrameError` for a packet that does not decode."""
    if len(packet) < 2 or packet[0] + 1 != len(packet):
        raise FrameError(f"length byte {packet[0] if packet else None} does not match {len(packet)} bytes")
    if packet[1] != PACKET_SECURITY1:
        return None
    pkt = lowlevel.parse(bytearray(packet))
    if not isinstance(pkt, lowlevel.Security1):
        raise FrameError("Security1 packet did not decode")
    battery = pkt.battery
    return RadioEvent(
        sensor_id=f"{pkt.id_combined:06x}",
        status=int(pkt.security1_status),
        subtype=int(pkt.subtype),
        # Battery nibble: 0 = low ... 9 = ok (per RFXtrx SDK); absent for smoke detectors.
        battery_low=None if battery is None else battery <= 1,
        rssi=int(pkt.rssi) if pkt.rssi is not None else None,
    )


@dataclass
class PressDeduper:
    """Frames of one sensor closer than ``repeat_window_s`` to the previous frame are one press.

    ``now`` is a monotonic time: on the wall clock a step back of D seconds would make every press in
    the next D seconds a repeat of the last one (a swallowed SOS), and a step forwards would split the
    frames of one press into two presses."""

    repeat_window_s: float = 1.0
    _last: dict[str, tuple[float, float]] = field(default_factory=dict)  # sensor -> (start, last frame)

    def press(self, sensor_id: str, now: float) -> float | None:
        """The start time of a *new* press (``now``), or None when the frame repeats the current press."""
        prev = self._last.get(sensor_id)
        if prev is not None and now - prev[1] <= self.repeat_window_s:
            self._last[sensor_id] = (prev[0], now)
            return None
        self._last[sensor_id] = (now, now)
        return now


_SENSOR_ID_RE = re.compile(r"[0-9a-fA-F]{1,6}")


def canonical_key(key: str) -> str:
    """A valid ``buttons``/``roles`` key as the driver looks it up: the sensor id written as
    :func:`decode_packet` writes it (6 lower-case hex digits: ``1B2C3`` is sensor ``01b2c3``), any
    ``/command`` kept."""
    sensor, slash, command = key.partition("/")
    return f"{int(sensor, 16):06x}{slash}{command}"


def _key_problem(key: str) -> str | None:
    """A ``sensor`` or ``sensor/command`` key of ``buttons`` and ``roles``."""
    sensor, _, command = key.partition("/")
    if not _SENSOR_ID_RE.fullmatch(sensor) or ("/" in key and command not in COMMANDS):
        return (
            "radio sensor ids (1-6 hex digits), or sensor id/command with a command among "
            f"{', '.join(COMMANDS)} (not {key!r})"
        )
    return None


def _button_table(value: Any) -> str | None:
    """Radio sensor ids (hex, 24 bits), or sensor id/command (one key of a remote) -> device ids."""
    for key, device in value.items():
        problem = _key_problem(key)
        if problem is not None:
            return f"a table of {problem} to device ids"
        if not DEVICE_ID_RE.fullmatch(device):
            return f"a table of radio sensor ids to device ids (letters, digits, _ . -; not {device!r})"
    if len({canonical_key(k) for k in value}) != len(value):  # "1b2c3" and "01B2C3" are one sensor
        return "a table naming each radio sensor id (and command) once"
    return None


def _roles_table(value: Any) -> str | None:
    """``sensor`` or ``sensor/command`` -> ``sos`` | ``call``."""
    for key, role in value.items():
        problem = _key_problem(key)
        if problem is not None:
            return f"a table of {problem} to a role"
        if role not in BUTTON_ROLES:
            return f"roles {' or '.join(BUTTON_ROLES)} (not {role!r} for {key})"
    if len({canonical_key(k) for k in value}) != len(value):
        return "a table naming each sensor id (and command) once"
    return None


@dataclass(frozen=True)  # no slots: frozen+slots subclasses break super() on 3.11
class RfxtrxOptions(SerialOptions):
    # A receiver is silent for days: 0 = no silence timeout.
    silence_timeout_s: float = option(0.0, lo=0, hi=86400, unit="seconds", doc="0: no timeout")
    buttons: dict[str, str] = option(
        {},
        check=_button_table,
        refused={"a1b2c3": "not an id!"},
        doc="radio sensor id (hex) -> device id of the button; sensor id/command -> device id of one key",
    )
    roles: dict[str, str] = option(
        {},
        check=_roles_table,
        describe='a table of radio sensor id (or sensor id/command) -> "sos" or "call"',
        refused={"a1b2c3": "panic"},
        doc="sensor id -> role of its panic/alarm presses, or sensor id/command -> role of that key; "
        "not listed: panic and alarm are SOS, other commands are not presses",
    )
    accept_unknown: bool = option(False, doc="also raise presses of unlisted buttons (as SOS)")
    repeat_window_s: float = option(1.0, lo=0.05, hi=60, unit="seconds", doc="frames closer than this: one press")

    def check_together(self) -> None:
        super().check_together()  # a port or USB ids: without this call a receiver with neither validated
        # Each table passed its own check: from here on (and in the driver) the keys are canonical, so
        # "1b2c3" matches the radio's 01b2c3 (written as given, it never matched: every press of that
        # button was dropped as an unlisted one).
        object.__setattr__(self, "buttons", {canonical_key(k): v for k, v in self.buttons.items()})
        object.__setattr__(self, "roles", {canonical_key(k): v for k, v in self.roles.items()})
        listed = {k.partition("/")[0] for k in self.buttons}
        for key in self.roles:
            if key.partition("/")[0] not in listed:
                raise OptionError("roles", dict(self.roles), f"sensor ids listed in buttons (not {key!r})")
        for key in self.buttons:
            command = key.partition("/")[2]
            if command and COMMANDS[command][0] not in SOS_STATUSES and key not in self.roles:
                # a key other than panic/alarm is a press only with a role: a button that could never press
                raise OptionError("roles", dict(self.roles), f"a role for the key {key} listed in buttons")


class RfxtrxSosDriver(SerialDriver):
    """SOS buttons heard by an RFXtrx receiver.

    Options (:class:`RfxtrxOptions`): the serial keys (``port`` ...), ``buttons`` (a table: radio sensor
    id in hex, any case, leading zeros optional -> device id of the button, e.g.
    ``{ "a1b2c3" = "sos-bedroom" }``, or sensor id/command -> device id of one key, e.g.
    ``{ "0a0b0c/arm_home" = "anna-call" }``), ``roles`` (sensor id
    or sensor id/command -> ``sos`` or ``call``, e.g. ``{ "0a0b0c/arm_home" = "call" }``; unlisted:
    panic and alarm are SOS), ``accept_unknown`` (also raise presses of unlisted buttons, as SOS, as
    ``{receiver id}:{sensor id}``; off by default: a neighbour's pendant must not call our care
    centre), ``repeat_window_s``.
    """

    kind: ClassVar[str] = "rfxtrx-sos"
    Options: ClassVar[type[DriverOptions]] = RfxtrxOptions
    summary: ClassVar[str] = "RFXtrx433 radio receiver for 433 MHz SOS pendants"
    usb_ids: ClassVar[tuple[tuple[int, int, str], ...]] = ((0x0403, 0x6001, "RFXtrx"), (0x0403, 0x6015, "RFXtrx"))
    baudrate: ClassVar[int] = 38400

    @classmethod
    def buttons_of(cls, options: DriverOptions) -> tuple[str, ...]:
        assert isinstance(options, RfxtrxOptions)
        return tuple(dict.fromkeys(options.buttons.values()))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        opts = self.spec.options
        assert isinstance(opts, RfxtrxOptions)
        if not self.silence_timeout_s:
            self.silence_timeout_s = 365 * 86400.0
        self.buttons: dict[str, str] = dict(opts.buttons)  # canonical keys (RfxtrxOptions.check_together)
        self.sensors = {k.partition("/")[0] for k in self.buttons}
        self.roles: dict[str, ButtonRole] = {k: "call" if v == "call" else "sos" for k, v in opts.roles.items()}
        self.accept_unknown = opts.accept_unknown
        self.deduper = PressDeduper(opts.repeat_window_s)
        self.framer = RfxFramer()
        # Durations (the repeat window, stale partial frames) are measured on this clock; the wall
        # clock (self.clock) only dates presses: NTP or a person setting the clock may step it.
        self.monotonic: Callable[[], float] = time.monotonic

    def counters(self) -> Mapping[str, int]:
        merged = dict(super().counters())
        merged["frames"] = self.framer.stats.frames
        merged["garbage_bytes"] = self.framer.stats.garbage_bytes
        merged["stale_partials"] = self.framer.stats.stale_partials
        return merged

    async def _handshake(self, link: SerialLink) -> tuple[list[bytes], bytes]:
        """Reset, get status, start receiver, within HANDSHAKE_TIMEOUT_S (a device that talks but never
        answers as an RFXtrx, another device on the port, would otherwise hold the driver in
        ``connecting`` for ever, reported nowhere). Returns what came after the receiver's reply in the
        same read (whole packets, then the bytes of one still incomplete): presses made the moment the
        receiver started, which the serve loop must not drop."""
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                return await self._handshake_steps(link)
        except TimeoutError:
            raise NoHandshake(
                f"{link.path} did not answer as an RFXtrx within {HANDSHAKE_TIMEOUT_S:g} s (another device there?)"
            ) from None

    async def _handshake_steps(self, link: SerialLink) -> tuple[list[bytes], bytes]:
        link.write(RESET)
        # The SDK asks for 50 ms..1 s of quiet after reset, then a flush of whatever arrived.
        try:
            while True:
                await link.read(timeout_s=0.3)
        except LinkSilent:
            pass  # the quiet period we wanted
        link.discard_input()
        link.write(GET_STATUS)
        await self._await_status(link, 0x02)
        link.write(START_RECEIVER)
        return await self._await_status(link, 0x07)

    async def _await_status(self, link: SerialLink, subtype_cmd: int) -> tuple[list[bytes], bytes]:
        framer = RfxFramer(trust_replies=True)
        while True:
            data = await link.read(timeout_s=3.0)
            packets = framer.feed(data, self.monotonic())
            for i, packet in enumerate(packets):
                if packet[1] == PACKET_STATUS and len(packet) > 4:
                    # 0x01 packets: subtype 0x00 answers a command (cmnd echoed in byte 4),
                    # subtype 0x07 is the copyright string answering "start receiver".
                    if (packet[2] == 0x07 and subtype_cmd == 0x07) or (packet[2] == 0x00 and packet[4] == subtype_cmd):
                        return packets[i + 1 :], framer.pending()

    async def serve(self, link: SerialLink) -> None:
        after_start, partial = await self._handshake(link)
        self.reconnector.mark_connected()
        log.info("device %s: RFXtrx receiver ready on %s", self.device_id, link.path)
        mono, wall = self.monotonic(), self.clock()
        for packet in [*after_start, *self.framer.feed(partial, mono)]:
            self._on_packet(packet, mono, wall)
        while True:
            data = await self._read(link)
            mono, wall = self.monotonic(), self.clock()
            for packet in self.framer.feed(data, mono):
                self._on_packet(packet, mono, wall)

    async def _read(self, link: SerialLink) -> bytes:
        """The next bytes, or ``b""`` once the framer's pending bytes are stale: the frames they hold
        back (the repeats of a press behind a noise header) must come out now, not with the next
        radio frame."""
        stale_at = self.framer.stale_at()
        if stale_at is None:
            return await link.read()
        try:
            # a little past the deadline: the framer's check is "older than", measured after the read
            return await link.read(timeout_s=max(0.0, stale_at - self.monotonic()) + 0.02)
        except LinkSilent:
            return b""

    def _on_packet(self, packet: bytes, mono: float, wall: float) -> None:
        """One framed packet, received at ``mono`` (monotonic, for the repeat window) and ``wall`` (the
        wall clock, which dates the press and makes its id)."""
        try:
            event = decode_packet(packet)
        except FrameError as exc:
            self.count("bad_frames")
            log.debug("device %s: bad frame: %s", self.device_id, exc)
            return
        if event is None:
            self.count("other_packets")
            return
        command = COMMAND_OF.get(event.status)
        role = self.role_of(event.sensor_id, command)
        if command is None or role is None:
            self.count("other_security_events")
            return
        button = self.buttons.get(f"{event.sensor_id}/{command}") or self.buttons.get(event.sensor_id)
        if button is None:
            # An SOS key of a sensor this home lists under another key is never dropped.
            known = role == "sos" and event.sensor_id in self.sensors
            if not self.accept_unknown and not known:
                self.count("unknown_buttons")
                log.debug("device %s: ignored press of unlisted button %s", self.device_id, event.sensor_id)
                return
            button = f"{self.device_id}:{event.sensor_id}"
        # Panic and alarm keep the press identity they had before roles (one key per sensor); another
        # key of the same remote is a press of its own, even in the same second.
        key = event.sensor_id if event.status in SOS_STATUSES else f"{event.sensor_id}-{command}"
        if self.deduper.press(key, mono) is None:
            self.count("repeat_frames")
            return
        self.count("presses" if role == "sos" else "call_presses")
        self.sink(
            ButtonPress(
                device_id=button,
                captured_at=wall,
                press_id=f"{key}-{round(wall * 1000)}",
                extra={
                    "via": self.device_id,
                    "radio_status": command,
                    **({"battery_low": event.battery_low} if event.battery_low is not None else {}),
                },
                role=role,
            )
        )

    def role_of(self, sensor_id: str, command: str | None) -> ButtonRole | None:
        """What a key asks for: its ``roles`` entry (sensor/command, then the sensor's own for panic and
        alarm), else SOS for panic and alarm; None: not a press (another command nobody mapped)."""
        if command is None:
            return None
        role = self.roles.get(f"{sensor_id}/{command}")
        if role is not None:
            return role
        if COMMANDS[command][0] in SOS_STATUSES:
            return self.roles.get(sensor_id, "sos")
        return None
