"""The one small driver interface, the typed readings drivers emit, and the registry by device kind.

A driver does I/O only: it opens its transport, turns bytes into the typed readings below and hands
them to a :class:`ReadingSink`. It never imports the daemon (``gateway.daemon``, ``gateway.pipeline``,
``gateway.outbox``...). Decoding lives in pure functions next to the driver (sans-I/O), so it is tested
with bytes alone.

Adding a device kind is one module that subclasses :class:`Driver` (its options a dataclass of
:mod:`drivers.options`, its facts on the class), its simulator, its byte vectors, and one line in
:data:`DRIVERS` (``kind -> "module:Class"``, imported lazily so that a missing optional stack, e.g.
BlueZ's D-Bus libraries, never stops the serial drivers). Kinds from other packages register through the
``homecare_gateway.drivers`` entry-point group (as python-can's interfaces do).

A driver gets the shared services it may use through a :class:`DriverContext` built by the daemon: the
clock, its state directory, the BLE stack; never through globals.
"""

from __future__ import annotations

import abc
import datetime as dt
import enum
import importlib
import importlib.metadata
import json
import logging
import os
import time
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeAlias

from drivers.options import ButtonRole, DriverOptions

if TYPE_CHECKING:
    from drivers.ble.manager import BleStack

# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class DriverError(Exception):
    """Base of every error a driver raises at its boundary."""


class TransientDeviceError(DriverError):
    """The device is away or busy for now (unplugged, out of range, link dropped): retry with backoff."""


class DeviceConfigError(DriverError):
    """Retrying cannot help until someone changes something (permissions, wrong path, bad settings)."""


class FrameError(DriverError):
    """A frame on the wire was malformed. Parsers raise it; drivers count it and resynchronise."""


# --------------------------------------------------------------------------------------------------
# Readings: what drivers emit. Times are POSIX seconds (UTC), float.
# --------------------------------------------------------------------------------------------------

Method: TypeAlias = Literal["device", "gateway"]


@dataclass(frozen=True, slots=True)
class Measurement:
    """One physiological value, with its LOINC code and UCUM unit (see docs/mqtt-contract.md)."""

    device_id: str
    code: str
    value: float
    unit: str
    captured_at: float
    method: Method = "device"
    quality: float | None = None
    # Extra facts for the cloud, e.g. {"irregular_pulse": True} or {"burden": 0.3}; JSON-serialisable.
    extra: Mapping[str, Any] = field(default_factory=dict)
    # A device-given identity of this reading (cuff record sequence number...), used for msg_id.
    source_id: str | None = None


@dataclass(frozen=True, slots=True)
class ButtonPress:
    """A press of a button the person uses to ask for help. ``press_id`` identifies the press (not
    the radio frame), so repeated frames of one press give one alert. ``role`` is what the press asks
    for (set by the driver from the device's config, never guessed: a press the config does not map
    is an SOS); ``pattern`` is how the button was pressed when the device reports it (``press``,
    ``double_press``, ``long_press`` ...; see :data:`drivers.options.PRESS_PATTERNS`)."""

    device_id: str
    captured_at: float
    press_id: str
    extra: Mapping[str, Any] = field(default_factory=dict)
    role: ButtonRole = "sos"  # one of drivers.options.BUTTON_ROLES
    pattern: str | None = None


class LinkState(enum.StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """The device's link and health, published retained on ``device/{id}/state``."""

    device_id: str
    captured_at: float
    state: LinkState
    reason: str | None = None
    battery_percent: int | None = None
    rssi_dbm: int | None = None
    counters: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Waveform:
    """A block of raw samples (PPG...) at a fixed rate, for the DSP stage and the bulk lane."""

    device_id: str
    captured_at: float  # time of the first sample
    fs: float
    channels: Mapping[str, Sequence[float]]  # e.g. {"ir": [...], "red": [...]} or {"pleth": [...]}
    first_index: int = 0  # the device's running sample counter, to detect gaps


@dataclass(frozen=True, slots=True)
class BeatIntervals:
    """Beat-to-beat (RR / inter-beat) intervals in seconds reported by a device."""

    device_id: str
    captured_at: float  # time of the last beat
    rr_s: Sequence[float]


Reading: TypeAlias = Measurement | ButtonPress | DeviceStatus | Waveform | BeatIntervals

ReadingSink: TypeAlias = Callable[[Reading], None]
"""Where a driver hands its readings. Synchronous and non-blocking: the pipeline queues the reading
for the outbox, so a driver is never slowed down by the uplink."""


# --------------------------------------------------------------------------------------------------
# Driver interface
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A configured device as the driver sees it: id, kind, transport and its options, an instance of
    the kind's :attr:`Driver.Options` (a table given here is validated into one, so a spec that exists
    is one its driver accepts; :class:`~drivers.options.OptionError` otherwise)."""

    id: str
    kind: str
    transport: str
    options: DriverOptions

    def __post_init__(self) -> None:
        if not isinstance(self.options, DriverOptions):
            cls = driver_class(self.kind)
            object.__setattr__(self, "options", cls.Options.from_mapping(self.options))


@dataclass(frozen=True, slots=True)
class DriverContext:
    """The shared services a driver may use, built and owned by the daemon (or a test)."""

    clock: Callable[[], float] = time.time  # wall clock for reading times
    state_dir: Path | None = None  # where the driver keeps what must outlive a restart
    ble: BleStack | None = None  # the BLE stack (scanner hubs, connection budgets), for BLE kinds
    # Whether the wall clock is synchronised (gateway.clock): a device's own clock is set only from a
    # synchronised one, never from a Pi's guess after a power cut. False unless told: the safe side.
    clock_synchronised: Callable[[], bool] = lambda: False

    def state_file(self, device_id: str) -> Path | None:
        if self.state_dir is None:
            return None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return self.state_dir / f"{device_id}.json"


class Driver(abc.ABC):
    """Runs one device until cancelled. ``run`` owns the connection and its reconnection
    (see :mod:`drivers.reconnect`): it returns only when cancelled. It never raises for an option
    (they were validated into :attr:`Options`); anything else that escapes it is a bug, which the
    daemon's supervisor reports as the device's ``error`` state and retries.

    The class carries the kind's facts, read by ``gatewayctl devices scan``, ``doctor`` and the docs."""

    kind: ClassVar[str]
    transport: ClassVar[str]
    Options: ClassVar[type[DriverOptions]] = DriverOptions
    # Worn on the body all day (a wristband): the care rules watch it for "no data" and "not worn".
    wearable: ClassVar[bool] = False
    # What the kind is, in a few words, for scan results and docs.
    summary: ClassVar[str] = ""
    # USB (vendor id, product id, product-string substring or "") of adapters this kind comes on.
    usb_ids: ClassVar[tuple[tuple[int, int, str], ...]] = ()
    # BLE GATT service UUIDs (lower case) and manufacturer-data company ids that identify the kind.
    ble_services: ClassVar[tuple[str, ...]] = ()
    ble_company_ids: ClassVar[tuple[int, ...]] = ()
    # Silent for longer than this while connected: doctor warns ("not seen recently"). None: the kind
    # sends only on events (an SOS pendant), so only its link state counts.
    silence_warn_s: ClassVar[float | None] = None
    # Emits waveforms or beat intervals for the gateway's signal processing (the daemon loads it early).
    streams: ClassVar[bool] = False
    # LOINC codes of the measurements it emits (drivers.codes).
    loinc_codes: ClassVar[tuple[str, ...]] = ()
    # Options naming a secret file (a key): doctor checks each is readable by the service only and
    # holds what :meth:`check_secret` expects, before the device first needs it.
    secret_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, spec: DeviceSpec, sink: ReadingSink, ctx: DriverContext) -> None:
        self.spec = spec
        self.sink = sink
        self.ctx = ctx
        self.clock = ctx.clock

    @classmethod
    def buttons_of(cls, options: DriverOptions) -> tuple[str, ...]:
        """The device ids of the buttons this device hears for others (a radio receiver's button
        table): devices of the home too, which ``[[rules.person]] devices`` may give to a person."""
        return ()

    @classmethod
    def check_secret(cls, option: str, path: Path) -> None:
        """Raise :class:`DeviceConfigError` when the secret file ``path`` named by ``option`` (one of
        :attr:`secret_options`) cannot be used; never logs or returns its content."""
        return None  # the kind has no secret to check beyond its file's mode

    @property
    def device_id(self) -> str:
        return self.spec.id

    def state_path(self, configured: str = "") -> Path | None:
        """The file this device keeps its state in: ``configured`` when an option names one, else the
        context's state directory."""
        return Path(configured) if configured else self.ctx.state_file(self.device_id)

    @abc.abstractmethod
    async def run(self) -> None:
        """Connect, read, emit; reconnect on transient errors; return on cancellation."""

    def counters(self) -> Mapping[str, int]:
        """Error and traffic counters for status and ``device/{id}/state``."""
        return {}


# kind -> "module:Class". One line per device kind.
DRIVERS: dict[str, str] = {
    "rfxtrx-sos": "drivers.serial.rfxtrx:RfxtrxSosDriver",
    "serial-cms50": "drivers.serial.cms50:Cms50Driver",
    "serial-cms50-legacy": "drivers.serial.cms50:Cms50LegacyDriver",
    "serial-bp": "drivers.serial.bpm:SerialBpDriver",
    "ble-wrist": "drivers.ble.wrist:WristMonitorDriver",
    "ble-bp-cuff": "drivers.ble.cuff:BpCuffDriver",
    "ble-sos": "drivers.ble.sos:SosPendantDriver",
    "ble-sos-notify": "drivers.ble.sos:SosNotifyDriver",
    "ble-bthome": "drivers.ble.bthome:BthomeButtonDriver",
}


class UnknownDeviceKind(DriverError):
    pass


ENTRY_POINT_GROUP = "homecare_gateway.drivers"


def _entry_point_kinds() -> dict[str, str]:
    """Kinds other packages register (``[project.entry-points."homecare_gateway.drivers"]``)."""
    found: dict[str, str] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in DRIVERS:
            found[ep.name] = ep.value
    return found


def all_kinds() -> dict[str, str]:
    """Every kind this installation knows: the built-in registry and the entry points."""
    return {**DRIVERS, **_entry_point_kinds()}


def driver_class(kind: str) -> type[Driver]:
    target = DRIVERS.get(kind) or _entry_point_kinds().get(kind)
    if target is None:
        raise UnknownDeviceKind(kind)
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise UnknownDeviceKind(f"{kind}: {target} is not a driver class")
    return cls


def device_zone(name: str) -> dt.tzinfo:
    """The time zone of a device's clock: an IANA name, or "" for the gateway's local zone.
    Stored records carry the device's local time; this turns them into real instants. The local zone
    is the system's with its rules (:func:`system_zone`), not the offset of the moment: that froze the
    offset at the driver's start, so a record from the other half of the year (or any after a change
    to or from summer time without a restart) was an hour off."""
    if not name:
        return system_zone()
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise DeviceConfigError(f"unknown timezone {name!r}") from exc


def system_zone() -> dt.tzinfo:
    """The system's time zone with its rules: the IANA name of ``TZ``, of the ``/etc/localtime`` link
    (systemd's timedatectl) or of ``/etc/timezone`` (Debian); else :class:`SystemLocalZone`."""
    names = [os.environ.get("TZ", "").removeprefix(":")]
    try:
        link = os.readlink("/etc/localtime")
        names.append(link.split("zoneinfo/", 1)[1] if "zoneinfo/" in link else "")
    except OSError:
        pass
    try:
        names.append(Path("/etc/timezone").read_text(encoding="ascii", errors="replace").strip())
    except OSError:
        pass
    for candidate in names:
        if candidate and not candidate.startswith("/"):
            try:
                return zoneinfo.ZoneInfo(candidate)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                continue
    return SystemLocalZone()


class SystemLocalZone(dt.tzinfo):
    """The C library's local time, asked per instant (``localtime``/``mktime``): its rules whatever they
    are, for a system whose zone has no IANA name this process can find."""

    def utcoffset(self, d: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(seconds=self._local(d).tm_gmtoff)

    def dst(self, d: dt.datetime | None) -> dt.timedelta | None:
        return dt.timedelta(hours=1) if self._local(d).tm_isdst > 0 else dt.timedelta(0)

    def tzname(self, d: dt.datetime | None) -> str:
        return self._local(d).tm_zone

    def fromutc(self, d: dt.datetime) -> dt.datetime:
        stamp = (d.replace(tzinfo=None) - _EPOCH).total_seconds()
        return d + dt.timedelta(seconds=time.localtime(stamp).tm_gmtoff)

    @staticmethod
    def _local(d: dt.datetime | None) -> time.struct_time:
        if d is None:
            return time.localtime()
        # a wall time of this zone: mktime finds its instant by the zone's rules (-1: it decides summer time)
        return time.localtime(time.mktime((d.year, d.month, d.day, d.hour, d.minute, d.second, 0, 0, -1)))


_EPOCH = dt.datetime(1970, 1, 1)


class StateFile:
    """A small JSON file where a driver keeps what must outlive a restart (records already fetched,
    a pendant's press counter). Written atomically (temp file, rename); a write failure is logged at
    WARNING the first time and at DEBUG while it repeats; a damaged file reads as absent."""

    def __init__(self, path: Path, owner: str, what: str) -> None:
        self.path, self.owner, self.what = path, owner, what
        self._write_failed = False

    def read(self) -> Any:
        """The stored JSON value, or ``None`` when the file is missing or unreadable."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            _log.warning("device %s: cannot read %s %s: %s", self.owner, self.what, self.path, exc)
            return None

    def write(self, value: Any) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(value, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as exc:
            level = logging.DEBUG if self._write_failed else logging.WARNING
            _log.log(level, "device %s: cannot write %s %s: %s", self.owner, self.what, self.path, exc)
            self._write_failed = True
        else:
            self._write_failed = False


_log = logging.getLogger(__name__)
