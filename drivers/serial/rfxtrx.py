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
from collections.abc import Mapping
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

# Lengths the SDK defines, per packet type (the first byte of a packet). A length byte that does not
# match its type is line noise: drop one byte and look again.
KNOWN_LENGTHS: Mapping[int, frozenset[int]] = {
    0x01: frozenset({0x0D, 0x14}),  # interface status / copyright response
    0x02: frozenset({0x04}),  # receiver/transmitter message (ack)
    0x03: frozenset(range(0x04, 0x25)),  # undecoded RF
    0x10: frozenset({0x07}),
    0x11: frozenset({0x0B}),
    0x13: frozenset({0x09}),
    0x14: frozenset({0x0A}),
    0x20: frozenset({0x08}),
    0x50: frozenset({0x08}),
    0x52: frozenset({0x0A}),
}
MIN_LEN, MAX_LEN = 0x04, 0x24


class NoHandshake(TransientDeviceError):
    """The device on the port did not answer the RFXtrx start-up in time: retried with backoff, and the
    device's state says why."""


@dataclass
class FramerStats:
    frames: int = 0
    garbage_bytes: int = 0
    stale_partials: int = 0


@dataclass
class RfxFramer:
    """Sans-I/O framing of the RFXtrx byte stream with resynchronisation.

    ``feed(data, now)`` returns the complete packets. A partial packet older than ``stale_after_s``
    (a byte lost on the line) is dropped, so one lost byte costs one packet, never the stream.
    """

    stale_after_s: float = 0.5
    stats: FramerStats = field(default_factory=FramerStats)
    _buf: bytearray = field(default_factory=bytearray)
    _partial_since: float | None = None

    def pending(self) -> bytes:
        """The bytes of a frame not yet complete."""
        return bytes(self._buf)

    def feed(self, data: bytes, now: float) -> list[bytes]:
        if self._buf and self._partial_since is not None and now - self._partial_since > self.stale_after_s:
            self.stats.stale_partials += 1
            self.stats.garbage_bytes += len(self._buf)
            self._buf.clear()
        self._buf.extend(data)
        out: list[bytes] = []
        buf = self._buf
        while buf:
            length = buf[0]
            if length == 0:  # the SDK allows a lone 0x00 (e.g. after reset): skip silently
                del buf[0]
                continue
            if not MIN_LEN <= length <= MAX_LEN:
                del buf[0]
                self.stats.garbage_bytes += 1
                continue
            if len(buf) < 2:
                break
            allowed = KNOWN_LENGTHS.get(buf[1])
            if allowed is not None and length not in allowed:
                del buf[0]
                self.stats.garbage_bytes += 1
                continue
            if len(buf) < length + 1:
                break
            out.append(bytes(buf[: length + 1]))
            del buf[: length + 1]
        self.stats.frames += len(out)
        self._partial_since = now if buf else None
        return out


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
    """Frames of one sensor closer than ``repeat_window_s`` to the previous frame are one press."""

    repeat_window_s: float = 1.0
    _last: dict[str, tuple[float, float]] = field(default_factory=dict)  # sensor -> (start, last frame)

    def press(self, sensor_id: str, now: float) -> float | None:
        """The start time of a *new* press, or None when the frame repeats the current press."""
        prev = self._last.get(sensor_id)
        if prev is not None and now - prev[1] <= self.repeat_window_s:
            self._last[sensor_id] = (prev[0], now)
            return None
        self._last[sensor_id] = (now, now)
        return now


_SENSOR_ID_RE = re.compile(r"[0-9a-fA-F]{1,6}")


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
    if len({k.lower() for k in value}) != len(value):
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
    if len({k.lower() for k in value}) != len(value):
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
        listed = {k.partition("/")[0].lower() for k in self.buttons}
        for key in self.roles:
            if key.partition("/")[0].lower() not in listed:
                raise OptionError("roles", dict(self.roles), f"sensor ids listed in buttons (not {key!r})")
        roles = {k.lower() for k in self.roles}
        for key in self.buttons:
            command = key.partition("/")[2]
            if command and COMMANDS[command][0] not in SOS_STATUSES and key.lower() not in roles:
                # a key other than panic/alarm is a press only with a role: a button that could never press
                raise OptionError("roles", dict(self.roles), f"a role for the key {key} listed in buttons")


class RfxtrxSosDriver(SerialDriver):
    """SOS buttons heard by an RFXtrx receiver.

    Options (:class:`RfxtrxOptions`): the serial keys (``port`` ...), ``buttons`` (a table: radio sensor
    id in hex -> device id of the button, e.g. ``{ "a1b2c3" = "sos-bedroom" }``, or sensor id/command ->
    device id of one key, e.g. ``{ "0a0b0c/arm_home" = "anna-call" }``), ``roles`` (sensor id
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
        self.buttons: dict[str, str] = {k.lower(): v for k, v in opts.buttons.items()}
        self.sensors = {k.partition("/")[0] for k in self.buttons}
        self.roles: dict[str, ButtonRole] = {k.lower(): "call" if v == "call" else "sos" for k, v in opts.roles.items()}
        self.accept_unknown = opts.accept_unknown
        self.deduper = PressDeduper(opts.repeat_window_s)
        self.framer = RfxFramer()

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
        framer = RfxFramer()
        while True:
            data = await link.read(timeout_s=3.0)
            packets = framer.feed(data, self.clock())
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
        now = self.clock()
        for packet in [*after_start, *self.framer.feed(partial, now)]:
            self._on_packet(packet, now)
        while True:
            data = await link.read()
            now = self.clock()
            for packet in self.framer.feed(data, now):
                self._on_packet(packet, now)

    def _on_packet(self, packet: bytes, now: float) -> None:
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
        start = self.deduper.press(key, now)
        if start is None:
            self.count("repeat_frames")
            return
        self.count("presses" if role == "sos" else "call_presses")
        self.sink(
            ButtonPress(
                device_id=button,
                captured_at=start,
                press_id=f"{key}-{round(start * 1000)}",
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
