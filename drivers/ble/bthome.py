"""BTHome v2 buttons (Shelly BLU Button1 and other BTHome v2 devices with a button): presses read
from passive advertisements, decoded by ``bthome-ble``, the parser Home Assistant uses.

A BTHome device puts its data in the service data of its advertisements under the 16-bit UUID 0xFCD2
(bthome.io/format): a device information byte (encrypted, trigger based, version 2), then objects: the
packet id (0x00), the battery (0x01), a button event (0x3A: press, double_press, triple_press,
long_press, long_double_press, long_triple_press, hold_press), optionally AES-CCM encrypted with a
per-device bind key (the nonce is the MAC, the UUID, the device information byte and a counter; the
4-byte MIC authenticates the packet). The library does all of that decoding; this module decides what a
press is and what the gateway does with it:

- **Repeats.** A button sends each packet several times (the gateway hears some of them), and in beacon
  mode it sends packets without an event in between. A packet whose packet id equals the last one heard
  within :data:`REPEAT_WINDOW_S` is a repeat (the spec's rule: only a new packet id is new data); a
  byte-identical advertisement within the window is one before it even reaches the library. The last
  press's packet id and when it was heard are kept in ``state_path``, so a gateway restarted during the
  repeats raises nothing twice. (The library's own filter forgets a packet id after 4 s and at a
  restart, so it is reset before each advertisement and this module applies the rule.) The window is
  bounded on purpose: a packet id is one byte, and a button heard again after a long silence whose new
  packet happens to carry the stored id must still be a press (the safe side: an SOS is never lost to
  an old packet id; a clock step can at worst raise one press twice). The packet id object is
  optional: without it two presses of one pattern carry the same bytes, so the same events are the
  same press only within :data:`NO_PACKET_ID_REPEAT_S` of the first time they were heard (one
  press's burst of advertisements), a window the repeats do not extend.
- **Roles.** Each event becomes one :class:`~drivers.base.ButtonPress` with ``pattern`` the event's name
  and ``role`` from the device's ``roles`` table (:func:`drivers.options.role_of`: a pattern the table
  does not list is an SOS). ``press_id`` is ``<series>-<n>`` (series: when this device's state began;
  n: presses so far), unique across packet id wraps and restarts.
- **Encryption.** ``bindkey_file`` names a file readable by the service holding the 16-byte key as 32
  hex digits (never in the configuration or a log). An advertisement the key does not decrypt (a wrong
  key, or a damaged packet), an encrypted one with no key configured, and a plaintext one while a key is
  configured (a downgrade, or someone else's button) are refused: counted (``wrong_key``,
  ``no_key``, ``plaintext_refused``), logged at WARNING the first time and at DEBUG after, never a
  press, and the device's state is ``error`` with the reason until a good packet is heard; meanwhile a
  ``bindkey_file`` changed on disk is read again (correcting the file is enough).
- **Battery** from the packets into :class:`~drivers.base.DeviceStatus` (reported when it changes).
- **Presence.** The device is ``connected`` while heard; not heard for ``absent_after_s`` it is
  ``disconnected``. A Shelly BLU Button only sends when pressed unless its beacon mode is on, hence the
  long default.

The pure part is :class:`BthomeDecoder` (advertisement bytes in, a :class:`Decoded` out) and
:class:`PacketTracker` (packet ids and times in, new or repeat out); the driver does the rest.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bleak.backends.device import BLEDevice
from bthome_ble import BTHomeBluetoothDeviceData
from bthome_ble.parser import EncryptionScheme
from habluetooth import BluetoothServiceInfoBleak

from drivers.base import (
    ButtonPress,
    DeviceConfigError,
    DeviceSpec,
    DriverContext,
    LinkState,
    ReadingSink,
    StateFile,
)
from drivers.ble.driver import BleDriver, BleOptions
from drivers.ble.stack import Sighting
from drivers.options import (
    PRESS_PATTERNS,
    DriverOptions,
    absolute_path_or_empty,
    option,
    press_roles_option,
    role_of,
    state_path_option,
)

log = logging.getLogger(__name__)

BTHOME_SERVICE = "0000fcd2-0000-1000-8000-00805f9b34fb"  # BTHome's 16-bit UUID 0xFCD2
REPEAT_WINDOW_S = 30.0  # a packet id heard again within this long is the same packet
# A device without a packet id: the same press events heard within this long of their first
# advertisement are the same press. Neither bthome.io nor Shelly gives the length of a press's burst
# of repeated advertisements; bthome-ble (Home Assistant's parser) bounds it by taking even the same
# packet id for a new packet 4 s after the previous advertisement, and the simulator's burst is 1 s.
# 2 s holds a burst of about a second and its delivery through BlueZ; longer, a second press of the
# same pattern is taken for a repeat (30 s, extended by each repeat, chained presses 20 s apart for
# ever). Measured from the first advertisement, never extended: a burst longer than this raises its
# press twice (the safe side), never swallows the next one.
NO_PACKET_ID_REPEAT_S = 2.0
KEY_HEX_DIGITS = 32


class _LibraryLinesToDebug(logging.Filter):
    """bthome-ble logs every decryption failure and every refused plaintext packet at WARNING, without
    the gateway's device id, for as long as the device sends them. The driver says those itself (the
    first at WARNING, repeats at DEBUG, with the device id), so the library's own lines go to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


logging.getLogger("bthome_ble.parser").addFilter(_LibraryLinesToDebug())


# --------------------------------------------------------------------------------------------------
# Decoding (pure: bytes and times in)
# --------------------------------------------------------------------------------------------------


class Outcome(enum.StrEnum):
    OK = "ok"  # decoded (events, battery, or nothing but a packet id: a beacon)
    WRONG_KEY = "wrong_key"  # encrypted, and the configured key does not decrypt it
    NO_KEY = "no_key"  # encrypted, and no key is configured
    PLAINTEXT_REFUSED = "plaintext_refused"  # plaintext while a key is configured
    UNDECODABLE = "undecodable"  # not BTHome v2, malformed, or refused by the library


REASONS: dict[Outcome, str] = {
    Outcome.WRONG_KEY: "cannot decrypt its advertisements: wrong bind key in bindkey_file (or damaged packets)",
    Outcome.NO_KEY: "its advertisements are encrypted and no bindkey_file is configured",
    Outcome.PLAINTEXT_REFUSED: "plaintext advertisement while a bind key is configured: refused",
}


@dataclass(frozen=True, slots=True)
class Decoded:
    outcome: Outcome
    encrypted: bool = False
    packet_id: int | None = None
    events: tuple[tuple[str, str], ...] = ()  # (button key: "button", "button_1"..., event name)
    battery: int | None = None


class BthomeDecoder:
    """One device's advertisements through bthome-ble's parser (which keeps per-device state: the
    encryption counter for replay protection, whether the key was verified)."""

    def __init__(self, address: str, bindkey: bytes | None) -> None:
        self.address = address
        self.bindkey = bindkey
        self.parser = BTHomeBluetoothDeviceData(bindkey=bindkey)
        self._device = BLEDevice(address, None, None)

    def decode(self, data: bytes, now: float, *, name: str = "", rssi: int = -127) -> Decoded:
        info = BluetoothServiceInfoBleak(
            name or self.address,
            self.address,
            rssi,
            {},
            {BTHOME_SERVICE: data},
            [BTHOME_SERVICE],
            "gateway",
            self._device,
            None,
            False,
            now,
            None,
        )
        p = self.parser
        p.packet_id = None  # the library's filter forgets after 4 s; PacketTracker applies the rule
        p.downgrade_detected = False
        try:
            update = p.update(info)
        except (ValueError, IndexError, KeyError, TypeError, OverflowError) as exc:
            # Malformed service data the library does not catch itself (e.g. an empty one).
            log.debug("%s: bthome-ble refused %s: %s", self.address, data.hex(), exc)
            return Decoded(Outcome.UNDECODABLE)
        encrypted = p.encryption_scheme is EncryptionScheme.BTHOME_BINDKEY
        if p.downgrade_detected:
            return Decoded(Outcome.PLAINTEXT_REFUSED)
        if encrypted and p.decryption_failed:
            return Decoded(Outcome.WRONG_KEY if self.bindkey else Outcome.NO_KEY, encrypted=True)
        events = tuple(sorted((key.key, ev.event_type) for key, ev in update.events.items()))
        packet_id = None if p.packet_id is None else int(p.packet_id)
        if p.last_service_info is not info and not events:
            return Decoded(Outcome.UNDECODABLE, encrypted=encrypted)
        battery: int | None = None
        for key, value in update.entity_values.items():
            if key.key == "battery" and isinstance(value.native_value, int | float):
                battery = int(value.native_value)
        return Decoded(Outcome.OK, encrypted=encrypted, packet_id=packet_id, events=events, battery=battery)


@dataclass
class PacketTracker:
    """Packet ids in, "new packet" or "repeat" out (pure: times are given). ``series`` and ``presses``
    make press ids; ``press_packet`` / ``press_heard_at`` (wall time) are the last press's, kept on disk.

    A new series starts with the first press after every start (the wall second of that press, and
    after the stored series): a press id never depends on the state file being up to date. It did (the
    counter went on from the file), and a file a full disk, a read-only card or a power cut left behind
    gave a later press the id of an earlier one, whose alert the cloud then drops as a repeat."""

    series: int = 0
    presses: int = 0
    press_packet: int | None = None
    press_heard_at: float = 0.0
    last_packet: int | None = None
    last_heard: float = field(default=-1e18)  # monotonic, this run only
    restored: bool = False  # read from the state file: the next press starts a new series
    # A device without packet id: its last press's events and when they were first heard (monotonic,
    # this run only: a restart takes longer than one burst).
    unnumbered: tuple[tuple[str, str], ...] = ()
    unnumbered_at: float = field(default=-1e18)

    def is_repeat(self, packet_id: int, mono: float, wall: float) -> bool:
        if packet_id == self.last_packet and 0.0 <= mono - self.last_heard <= REPEAT_WINDOW_S:
            self.last_heard = mono
            return True
        if self.last_packet is None and packet_id == self.press_packet:
            # The first packet since a restart: the last press's, if heard within the window.
            if 0.0 <= wall - self.press_heard_at <= REPEAT_WINDOW_S:
                self.last_packet, self.last_heard = packet_id, mono
                return True
        self.last_packet, self.last_heard = packet_id, mono
        return False

    def is_repeat_unnumbered(self, events: tuple[tuple[str, str], ...], mono: float) -> bool:
        """A press packet without a packet id: the same events (button, pattern) are a repeat only
        within :data:`NO_PACKET_ID_REPEAT_S` of the first time they were heard. Not extended by the
        repeats: extended, presses of one pattern closer than the window chained for ever. Events,
        not bytes: a device that encrypts each repeat again sends other bytes for the same packet."""
        if events == self.unnumbered and 0.0 <= mono - self.unnumbered_at <= NO_PACKET_ID_REPEAT_S:
            return True
        self.unnumbered, self.unnumbered_at = events, mono
        return False

    def press(self, packet_id: int | None, wall: float) -> str:
        """The press id of a new press (and remember its packet for a restart)."""
        if self.series == 0 or self.restored:
            self.series, self.presses, self.restored = max(int(wall), self.series + 1), 0, False
        self.presses += 1
        self.press_packet, self.press_heard_at = packet_id, wall
        return f"{self.series}-{self.presses}"

    def to_json(self) -> dict[str, Any]:
        return {
            "series": self.series,
            "presses": self.presses,
            "press_packet": self.press_packet,
            "press_heard_at": self.press_heard_at,
        }

    @classmethod
    def from_json(cls, raw: Any) -> PacketTracker:
        if not isinstance(raw, dict):
            return cls()
        series, presses, packet, at = (raw.get(k) for k in ("series", "presses", "press_packet", "press_heard_at"))
        if not (isinstance(series, int) and isinstance(presses, int) and series >= 0 and presses >= 0):
            return cls()
        if not (packet is None or (isinstance(packet, int) and 0 <= packet <= 0xFF)):
            packet = None
        heard = float(at) if isinstance(at, int | float) and not isinstance(at, bool) else 0.0
        return cls(series, presses, packet, heard, restored=True)


def read_bindkey(path: Path) -> bytes:
    """The 16-byte key from ``path`` (32 hex digits, surrounding white space ignored). Only a regular
    file, and only its first bytes, are read (a path sent by the cloud may name /dev/zero or a FIFO).
    Errors say what is wrong with the file, never what is in it, nor how long it is."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise DeviceConfigError(f"bindkey_file {path}: not a regular file")
        with path.open("rb") as fh:
            text = fh.read(KEY_HEX_DIGITS * 4).strip()
    except OSError as exc:
        raise DeviceConfigError(f"bindkey_file {path}: cannot read: {exc.strerror}") from None
    key = _hex_key(text)
    if key is None:
        raise DeviceConfigError(
            f"bindkey_file {path}: expected {KEY_HEX_DIGITS} hex digits (16 bytes) and nothing else"
        )
    return key


def _stamp(path: Path) -> tuple[int, int] | None:
    """When and how the file last changed (modification time, inode), or None when it cannot be seen."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ino


def _hex_key(text: bytes) -> bytes | None:
    if len(text) != KEY_HEX_DIGITS:
        return None
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return key if len(key) == KEY_HEX_DIGITS // 2 else None  # fromhex skips spaces


# --------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)  # no slots: frozen+slots subclasses break super() on 3.11
class BthomeOptions(BleOptions):
    bindkey_file: str = option(
        "",
        check=absolute_path_or_empty,
        describe="an absolute path, or empty",
        refused="bindkey.txt",
        doc="file with the device's 32-hex-digit bind key (encrypted devices); empty: plaintext only",
    )
    roles: dict[str, str] = press_roles_option(PRESS_PATTERNS)
    absent_after_s: float = option(
        86400.0, lo=1, hi=7 * 86400, unit="seconds", doc="not heard: disconnected (beacon mode: a few minutes)"
    )
    state_path: str = state_path_option()


class BthomeButtonDriver(BleDriver):
    """A BTHome v2 button heard in advertisements (no connection). Options: the BLE keys,
    ``bindkey_file``, ``roles``, ``absent_after_s`` (default a day), ``state_path`` (set by the gateway)."""

    kind: ClassVar[str] = "ble-bthome"
    Options: ClassVar[type[DriverOptions]] = BthomeOptions
    summary: ClassVar[str] = "BTHome v2 button (Shelly BLU Button1...): presses in advertisements, optionally encrypted"
    ble_services: ClassVar[tuple[str, ...]] = (BTHOME_SERVICE,)
    priority: ClassVar[int] = 0
    secret_options: ClassVar[tuple[str, ...]] = ("bindkey_file",)

    @classmethod
    def check_secret(cls, option: str, path: Path) -> None:
        read_bindkey(path)

    def __init__(self, spec: DeviceSpec, sink: ReadingSink, ctx: DriverContext) -> None:
        super().__init__(spec, sink, ctx)
        opts = spec.options
        assert isinstance(opts, BthomeOptions)
        self.opts = opts
        self.absent_after_s = opts.absent_after_s
        path = self.state_path(opts.state_path)
        self._state = StateFile(path, self.device_id, "press state") if path is not None else None
        self.tracker = PacketTracker.from_json(self._state.read() if self._state is not None else None)
        self.decoder: BthomeDecoder | None = None
        self.problem: str | None = None
        self._warned: set[Outcome] = set()
        self._last_bytes = b""
        self._last_bytes_at = -1e18
        # The byte filter below applies the packet-id rule to undecoded bytes; not to bytes without
        # a packet id (PacketTracker.is_repeat_unnumbered has their rule).
        self._last_bytes_filtered = True
        self._key_stamp: tuple[int, int] | None = None

    def counters(self) -> Mapping[str, int]:
        merged = dict(super().counters())
        if self.reconnector.bugs.count:
            merged["bugs"] = self.reconnector.bugs.count
        return merged

    # -- key --------------------------------------------------------------------------------------

    def load_key(self) -> bytes | None:
        if not self.opts.bindkey_file:
            return None
        path = Path(self.opts.bindkey_file)
        self._key_stamp = _stamp(path)
        key = read_bindkey(path)
        try:
            mode = path.stat().st_mode
        except OSError:
            mode = 0
        if mode & stat.S_IROTH:
            log.warning("device %s: bindkey_file %s is readable by every user: chmod 600 it", self.device_id, path)
        return key

    def reload_key_if_changed(self) -> None:
        """While the key is refused, a bindkey_file changed on disk is read again (fixing the file is
        enough: a reload of the configuration does not restart a device whose options did not change)."""
        if not self.opts.bindkey_file or self.problem is None:
            return
        if _stamp(Path(self.opts.bindkey_file)) == self._key_stamp:
            return
        try:
            key = self.load_key()
        except DeviceConfigError as exc:
            log.warning("device %s: %s (the key in use stays)", self.device_id, exc)
            return
        log.info("device %s: bindkey_file changed: read again", self.device_id)
        self.decoder = BthomeDecoder(self.address, key)
        self._last_bytes = b""

    async def run(self) -> None:
        self.decoder = BthomeDecoder(self.address, self.load_key())
        await super().run()

    # -- advertisements -----------------------------------------------------------------------------

    def on_advertisement(self, s: Sighting) -> None:
        super().on_advertisement(s)
        self.count("advertisements")
        data = s.adv.service_data.get(BTHOME_SERVICE)
        if data is None:
            self.count("foreign_advertisements")
            return
        try:
            self.on_service_data(bytes(data), s.at, s.wall, name=s.adv.local_name or "", rssi=s.adv.rssi)
        except Exception as exc:  # noqa: BLE001 - a bug (ours or the library's on hostile radio input):
            # reported at ERROR with its traceback and counted, as the supervisor would; this runs in the
            # shared scanner's callback, outside run(), and must not stop the scanner's other listeners.
            self.reconnector.bugs.report(log, f"device {self.device_id}", exc, "advertisement not handled")
            return
        if self._last_reported is None or self._last_reported[0] is LinkState.DISCONNECTED:
            self.report_presence()

    def on_service_data(self, data: bytes, mono: float, wall: float, *, name: str = "", rssi: int = -127) -> None:
        same = data == self._last_bytes and self._last_bytes_filtered
        if same and 0.0 <= mono - self._last_bytes_at <= REPEAT_WINDOW_S:
            self._last_bytes_at = mono
            if self.tracker.last_packet is not None:
                self.tracker.last_heard = mono
            self.count("repeats")
            return
        self._last_bytes, self._last_bytes_at, self._last_bytes_filtered = data, mono, True
        assert self.decoder is not None
        decoded = self.decoder.decode(data, mono, name=name, rssi=rssi)
        if decoded.outcome is Outcome.OK and decoded.packet_id is None:
            self._last_bytes_filtered = False  # decoded again each time: is_repeat_unnumbered decides
        if decoded.outcome is Outcome.UNDECODABLE:
            self.bad_value(ValueError(f"not a BTHome v2 advertisement it could decode ({len(data)} bytes)"))
            return
        if decoded.outcome is not Outcome.OK:
            self.refused(decoded.outcome)
            return
        if self.problem is not None:
            log.info("device %s: advertisements decoded again", self.device_id)
            self.problem = None
            self._warned.clear()
            self.report_presence()
        if decoded.battery is not None and decoded.battery != self.battery:
            self.battery = decoded.battery
            self.report_presence(force=True)
        presses = [(button, ev) for button, ev in decoded.events if ev in PRESS_PATTERNS]
        if decoded.packet_id is not None:
            repeat = self.tracker.is_repeat(decoded.packet_id, mono, wall)
        else:
            # Only press packets are remembered: a beacon between two repeats leaves the second one
            # a repeat.
            repeat = bool(presses) and self.tracker.is_repeat_unnumbered(tuple(presses), mono)
        if repeat:
            self.count("repeats")
            return
        self.count("packets")
        if len(presses) < len(decoded.events):
            self.count("other_events", len(decoded.events) - len(presses))  # hold_release, dimmer...
        if not presses:
            return
        now = self.clock()
        press_id = self.tracker.press(decoded.packet_id, wall)
        for button, pattern in presses:
            self.count("presses")
            role = role_of(self.opts.roles, pattern)
            self.sink(
                ButtonPress(
                    device_id=self.device_id,
                    captured_at=now,
                    press_id=press_id if len(presses) == 1 else f"{press_id}-{button}",
                    extra={
                        "via": "advertisement",
                        "button": button,
                        "packet_id": decoded.packet_id,
                        "encrypted": decoded.encrypted,
                    },
                    role=role,
                    pattern=pattern,
                )
            )
        if self._state is not None:
            self._state.write(self.tracker.to_json())

    def refused(self, outcome: Outcome) -> None:
        """An advertisement refused for its encryption: counted, said once, never a press."""
        self.count(outcome.value)
        reason = REASONS[outcome]
        level = logging.DEBUG if outcome in self._warned else logging.WARNING
        self._warned.add(outcome)
        log.log(level, "device %s: %s", self.device_id, reason)
        if self.problem != reason:
            self.problem = reason
            self.report_presence()

    # -- presence -----------------------------------------------------------------------------------

    def report_presence(self, *, force: bool = False) -> None:
        heard = self.last_seen is not None and time.monotonic() - self.last_seen <= self.absent_after_s
        if not heard:
            since = "since the gateway started" if self.last_seen is None else f"for {self.absent_after_s:.0f} s"
            self.report(LinkState.DISCONNECTED, f"not heard {since}", force=force)
        elif self.problem is not None:
            self.report(LinkState.ERROR, self.problem, force=force)
        else:
            self.report(LinkState.CONNECTED, None, force=force)

    async def run_watched(self) -> None:
        """No connection: the button is "connected" while heard (``error`` while its packets are refused)."""
        try:
            last_report = time.monotonic()
            while True:
                await asyncio.sleep(min(1.0, self.absent_after_s / 4))
                self.reload_key_if_changed()
                now = time.monotonic()
                if now - last_report >= self.status_interval_s:
                    self.report_presence(force=True)
                    last_report = now
                else:
                    self.report_presence()
        finally:
            self.report(LinkState.DISCONNECTED, "gateway stopped")
