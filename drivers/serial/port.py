"""Serial port management shared by every serial driver.

- Devices are configured by a *stable identity*, never by ``ttyUSBn``: a ``/dev/serial/by-id/...``
  path (udev keeps it across unplug/replug and USB sockets), or USB ``vid:pid`` plus serial number,
  matched against pyserial's port listing. :func:`resolve_port` finds the current tty each time the
  driver (re)connects.
- Opening errors are classified by type: missing device and busy port are transient (retry with
  backoff); permission denied is a configuration error that names the group the service user needs.
- :class:`SerialLink` reads without threads: the tty's fd is watched by the event loop. A device that
  sends nothing for ``silence_timeout_s`` counts as disconnected.
- :class:`SerialDriver` is the base of serial drivers: it runs ``serve(link)`` under a
  :class:`~drivers.reconnect.Reconnector` and publishes link state changes as
  :class:`~drivers.base.DeviceStatus` readings.
"""

from __future__ import annotations

import asyncio
import errno
import grp
import logging
import math
import os
import stat
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

import serial
from serial.tools import list_ports

from drivers.base import (
    DeviceConfigError,
    DeviceSpec,
    DeviceStatus,
    Driver,
    DriverContext,
    LinkState,
    ReadingSink,
    TransientDeviceError,
)
from drivers.options import DriverOptions, OptionError, absolute_path_or_empty, option
from drivers.reconnect import Backoff, ConnState, Reconnector, link_state

log = logging.getLogger(__name__)


class PortMissing(TransientDeviceError):
    """No device answers to the configured identity right now (unplugged)."""


class PortBusy(TransientDeviceError):
    """Another process holds the port."""


class PortPermissionDenied(DeviceConfigError):
    """The service user may not open the port."""


class LinkSilent(TransientDeviceError):
    """The device sent nothing for longer than its silence timeout."""


class LinkLost(TransientDeviceError):
    """Read or write failed: the device went away."""


@dataclass(frozen=True, slots=True)
class PortIdentity:
    """How a serial device is found. ``path`` (ideally ``/dev/serial/by-id/...``) or USB ids."""

    path: str | None = None
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None

    def describe(self) -> str:
        if self.path is not None:
            return self.path
        parts = [f"{self.vid or 0:04x}:{self.pid or 0:04x}"]
        if self.serial_number:
            parts.append(f"serial {self.serial_number}")
        return " ".join(parts)


@dataclass(frozen=True)  # no slots: frozen+slots subclasses break super() on 3.11
class SerialOptions(DriverOptions):
    """Transport keys common to every serial device (see config/gateway.example.toml)."""

    port: str = option(
        "",
        check=absolute_path_or_empty,
        describe="an absolute path, or empty",
        refused="ttyUSB0",
        doc="stable path, ideally /dev/serial/by-id/...",
    )
    usb_vid: int = option(-1, lo=-1, hi=0xFFFF, doc="USB vendor id (-1: match by port)")
    usb_pid: int = option(-1, lo=-1, hi=0xFFFF, doc="USB product id (-1: match by port)")
    usb_serial: str = option("", pattern=r"[\x20-\x7e]{0,64}", describe="up to 64 printable characters")
    silence_timeout_s: float = option(
        30.0, lo=0.5, hi=86400, unit="seconds", doc="nothing received for this long: the link is lost"
    )

    def check_together(self) -> None:
        if not self.port and (self.usb_vid < 0 or self.usb_pid < 0):
            raise OptionError("port", self.port, "a /dev/serial/by-id path, or usb_vid and usb_pid")

    def claims(self) -> dict[str, str]:
        if self.port:
            out = {f"serial port {self.port}": "port"}
            real = os.path.realpath(self.port)  # a by-id link and the tty it names are one port
            if real != self.port and os.path.exists(real):
                out[f"serial port {real}"] = "port"
            return out
        serial = f" serial {self.usb_serial}" if self.usb_serial else ""
        return {f"USB device {self.usb_vid:04x}:{self.usb_pid:04x}{serial}": "usb_vid"}

    def identity(self) -> PortIdentity:
        return PortIdentity(
            path=self.port or None,
            vid=self.usb_vid if self.usb_vid >= 0 else None,
            pid=self.usb_pid if self.usb_pid >= 0 else None,
            serial_number=self.usb_serial or None,
        )


def resolve_port(identity: PortIdentity) -> str:
    """The tty behind the identity right now, or :class:`PortMissing`."""
    if identity.path is not None:
        if os.path.exists(identity.path):  # follows the by-id symlink
            return identity.path
        raise PortMissing(f"{identity.path} does not exist (device unplugged?)")
    for info in list_ports.comports():
        if info.vid != identity.vid or info.pid != identity.pid:
            continue
        if identity.serial_number is not None and info.serial_number != identity.serial_number:
            continue
        return str(info.device)
    raise PortMissing(f"no USB serial device {identity.describe()} is plugged in")


def _group_hint(path: str) -> str:
    try:
        gid = os.stat(path).st_gid
        return grp.getgrgid(gid).gr_name
    except (OSError, KeyError):
        return "dialout"


def open_serial(path: str, baudrate: int) -> serial.Serial:
    """Open ``path`` exclusively, non-blocking, raw. Errors become typed driver errors."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as exc:
        raise PortMissing(f"{path} disappeared") from exc
    except PermissionError as exc:
        raise PortPermissionDenied(f"cannot see {path}: {exc.strerror}") from exc
    real = os.path.realpath(path)
    if not stat.S_ISCHR(mode) or not real.startswith("/dev/"):
        # A hostile or mistaken configuration must not make the gateway open arbitrary files.
        raise DeviceConfigError(f"{path} is not a serial device (it resolves to {real})")
    try:
        port = serial.Serial(path, baudrate=baudrate, timeout=0, write_timeout=0, exclusive=True)
    except serial.SerialException as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else None
        code = exc.errno if isinstance(exc.errno, int) else (cause.errno if cause else None)
        if code in (errno.EACCES, errno.EPERM):
            group = _group_hint(path)
            raise PortPermissionDenied(f"permission denied on {path}: add the service user to group '{group}'") from exc
        if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
            raise PortMissing(f"{path} went away while opening") from exc
        if code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK) or "lock" in type(exc).__name__.lower():
            raise PortBusy(f"{path} is busy (held by another process)") from exc
        if code is None:
            # pyserial reports a failed flock() without errno; the port exists, so someone holds it.
            raise PortBusy(f"{path} is busy or could not be locked") from exc
        raise LinkLost(f"cannot open {path}: {exc}") from exc
    if not os.isatty(port.fd):
        port.close()
        raise DeviceConfigError(f"{path} is not a terminal device")
    return port


READ_SIZE = 65536  # more than the kernel's tty read buffer (4 KiB): one read empties it


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class SerialLink:
    """An open serial port read through the event loop (no threads)."""

    def __init__(self, path: str, baudrate: int, *, silence_timeout_s: float) -> None:
        self.path = path
        self.baudrate = baudrate
        self.silence_timeout_s = silence_timeout_s
        self._port: serial.Serial | None = None
        self.bytes_in = 0
        self.reads = 0  # reads that returned bytes (wakeups of the reader)
        self._returned_at = -math.inf  # event-loop time the last read returned bytes

    async def __aenter__(self) -> SerialLink:
        self._port = open_serial(self.path, self.baudrate)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._port is not None:
            try:
                self._port.close()
            except (OSError, serial.SerialException):
                log.debug("closing %s failed", self.path, exc_info=True)
            self._port = None

    @property
    def fd(self) -> int:
        if self._port is None or self._port.fd is None:
            raise LinkLost(f"{self.path} is closed")
        fd: int = self._port.fd
        return fd

    def write(self, data: bytes) -> None:
        try:
            os.write(self.fd, data)
        except OSError as exc:
            raise LinkLost(f"write to {self.path} failed: {exc.strerror}") from exc

    def discard_input(self) -> None:
        """Drop what is buffered (e.g. after a device reset)."""
        while True:
            try:
                if not os.read(self.fd, 4096):
                    return
            except BlockingIOError:
                return
            except OSError as exc:
                raise LinkLost(f"read from {self.path} failed: {exc.strerror}") from exc

    async def read(self, timeout_s: float | None = None, *, gather_s: float = 0.0) -> bytes:
        """The next chunk of bytes. Raises :class:`LinkSilent` after the silence timeout and
        :class:`LinkLost` when the device goes away.

        ``gather_s`` > 0 reads in blocks: a read returns no sooner than ``gather_s`` after the
        previous one returned, with everything that arrived meanwhile, so a device streaming small
        frames wakes the event loop about ``1 / gather_s`` times a second instead of once a frame.
        The bytes wait in the kernel's tty buffer (4 KiB, plus the driver's flip buffers: 100 ms at
        115200 baud is 1.2 KB); only streams whose latency does not matter use it (never an SOS
        receiver)."""
        fd = self.fd
        loop = asyncio.get_running_loop()
        timeout = self.silence_timeout_s if timeout_s is None else timeout_s
        if gather_s > 0:
            wait = self._returned_at + gather_s - loop.time()
            if wait > 0:
                await asyncio.sleep(min(wait, timeout))
        woke = False
        while True:
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                data = b""
            except OSError as exc:
                raise LinkLost(f"read from {self.path} failed: {exc.strerror}") from exc
            if data:
                self.bytes_in += len(data)
                self.reads += 1
                self._returned_at = loop.time()
                return data
            if woke:
                # A tty in raw mode with VMIN=0 reads b"" when idle, so emptiness alone means
                # nothing; "readable" followed by no data is a hang-up (as pyserial concludes too).
                raise LinkLost(f"{self.path} closed (device unplugged?)")
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _wake, ready)
            try:
                async with asyncio.timeout(timeout):
                    await ready
            except TimeoutError:
                raise LinkSilent(f"{self.path} sent nothing for {timeout:g} s") from None
            finally:
                loop.remove_reader(fd)
            woke = True

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            yield await self.read()


class SerialDriver(Driver):
    """Base of serial drivers: resolve the port by identity, open it, ``serve`` it, reconnect."""

    transport: ClassVar[str] = "serial"
    Options: ClassVar[type[DriverOptions]] = SerialOptions
    baudrate: ClassVar[int] = 9600

    def __init__(self, spec: DeviceSpec, sink: ReadingSink, ctx: DriverContext) -> None:
        super().__init__(spec, sink, ctx)
        opts = spec.options
        assert isinstance(opts, SerialOptions)
        self.identity = opts.identity()
        self.silence_timeout_s = opts.silence_timeout_s
        self.reconnector = Reconnector(
            f"device {spec.id}",
            self._session,
            backoff=Backoff(base_s=0.25, cap_s=30.0),
            config_retry_s=30.0,
            on_state=self._on_state,
        )
        self._counters: dict[str, int] = {}
        self._last_reported: tuple[LinkState, str | None] | None = None

    def count(self, name: str, n: int = 1) -> None:
        self._counters[name] = self._counters.get(name, 0) + n

    def counters(self) -> Mapping[str, int]:
        merged = dict(self._counters)
        merged["connects"] = self.reconnector.connects
        merged["disconnects"] = self.reconnector.unexpected_disconnects
        return merged

    def _on_state(self, state: ConnState, error: BaseException | None) -> None:
        said = link_state(state, error)
        if said is None:
            return
        link, reason = said
        if (link, reason) == self._last_reported:
            return
        self._last_reported = (link, reason)
        self.sink(
            DeviceStatus(
                device_id=self.device_id,
                captured_at=self.clock(),
                state=link,
                reason=reason,
                counters=self.counters(),
            )
        )

    async def _session(self) -> None:
        path = resolve_port(self.identity)
        async with SerialLink(path, self.baudrate, silence_timeout_s=self.silence_timeout_s) as link:
            log.debug("device %s: opened %s", self.device_id, path)
            await self.serve(link)

    async def serve(self, link: SerialLink) -> None:
        """Handshake, then read until the link fails. Call ``self.reconnector.mark_connected()``
        once the device has answered."""
        raise NotImplementedError

    async def run(self) -> None:
        await self.reconnector.run()
