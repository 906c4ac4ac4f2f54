"""Notifications of a high-rate stream read in blocks from BlueZ's AcquireNotify socket.

BlueZ can hand a characteristic's notifications over a ``SOCK_SEQPACKET`` socket (``AcquireNotify``)
instead of sending one D-Bus signal per notification through dbus-daemon. bleak reads such a socket
one notification per event-loop wakeup; a wrist monitor sending 100 one-sample PPG frames a second
then costs 100 wakeups a second, most of its CPU (issue 15, ``bench/device_cpu.py``,
``bench/wakeup_floor.py``). :class:`AcquiredStream` asks BlueZ for the socket on its own D-Bus
connection (which BlueZ ties the session to: closing it releases the stream) and reads it in blocks:
no sooner than ``gather_s`` after the last read it takes every packet queued, in order (one wakeup
per block). The socket buffer keeps them meanwhile (100 ms of one-sample PPG frames is about 10
packets); nothing is lost, the handler sees each notification once, also those queued when the
session ends.

Only for streams whose latency does not matter and that tolerate what AcquireNotify changes: BlueZ
drops notifications a device sends before the CCC write's response (bleak #1885). Never a button.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Callable

from dbus_fast import AuthError, BusType, DBusError, Message, MessageType
from dbus_fast.aio import MessageBus

from drivers.aio import settle
from drivers.ble.stack import BLEAK_FAILURES, BleError, LinkLost

log = logging.getLogger(__name__)

BLUEZ = "org.bluez"
GATT_CHARACTERISTIC = "org.bluez.GattCharacteristic1"


class AcquireRefused(BleError):
    """BlueZ (or the device) would not hand the notifications over a socket."""


class StreamEnded(LinkLost):
    """The acquired socket closed: the link went down, or BlueZ ended the session."""


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class AcquiredStream:
    """``async with AcquiredStream(path, handler) as s: while True: await s.run_once()``: the
    notifications of the characteristic at D-Bus object ``path`` to ``handler``, ``gather_s`` worth at a
    time. :class:`AcquireRefused` on entering when BlueZ refuses; :meth:`run_once` raises
    :class:`StreamEnded` when the socket closes."""

    def __init__(self, path: str, handler: Callable[[bytes], None], *, gather_s: float = 0.1) -> None:
        self.path = path
        self.handler = handler
        self.gather_s = gather_s
        self.notifications = 0
        self.reads = 0  # wakeups that found packets
        self._drained_at = -math.inf  # event-loop time of the last drain
        self._bus: MessageBus | None = None
        self._sock: socket.socket | None = None

    async def __aenter__(self) -> AcquiredStream:
        failures: tuple[type[BaseException], ...] = (AuthError, DBusError, ValueError, *BLEAK_FAILURES)
        try:
            bus = await MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True).connect()
        except failures as exc:
            raise AcquireRefused(f"no D-Bus connection for AcquireNotify: {exc!r}") from exc
        self._bus = bus
        try:
            reply = await bus.call(
                Message(
                    destination=BLUEZ,
                    path=self.path,
                    interface=GATT_CHARACTERISTIC,
                    member="AcquireNotify",
                    signature="a{sv}",
                    body=[{}],
                )
            )
            if reply is None or reply.message_type is MessageType.ERROR or not reply.unix_fds:
                why = reply.error_name if reply is not None else "no reply"
                raise AcquireRefused(f"AcquireNotify of {self.path}: {why} {reply.body if reply else ''}".strip())
        except failures as exc:
            bus.disconnect()
            self._bus = None
            raise AcquireRefused(f"AcquireNotify of {self.path}: {exc!r}") from exc
        except BaseException:
            bus.disconnect()
            self._bus = None
            raise
        sock = socket.socket(fileno=reply.unix_fds[0])
        sock.setblocking(False)
        self._sock = sock
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sock is not None:
            with contextlib.suppress(StreamEnded):
                self._drain()  # what was queued when the session ended (up to gather_s of it)
            self._sock.close()
            self._sock = None
        if self._bus is not None:
            self._bus.disconnect()
            # closing: a broken socket is nothing to report
            await settle(self._bus.wait_for_disconnect(), 1.0, (OSError, EOFError))  # type: ignore[no-untyped-call]
            self._bus = None

    async def run_once(self) -> None:
        """Hand every queued notification to the handler, no sooner than ``gather_s`` after the last
        time (a stream therefore costs about one wakeup per ``gather_s``); when none is queued, wait
        for one first. :class:`StreamEnded` when the socket closed."""
        sock = self._sock
        assert sock is not None
        loop = asyncio.get_running_loop()
        wait = self._drained_at + self.gather_s - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        if not self._drain():
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(sock.fileno(), _wake, ready)
            try:
                await ready
            finally:
                loop.remove_reader(sock.fileno())
            self._drain()
        self.reads += 1
        self._drained_at = loop.time()

    def _drain(self) -> int:
        """Every queued notification to the handler, in order; how many there were."""
        sock = self._sock
        assert sock is not None
        n = 0
        while True:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                return n
            except OSError as exc:
                raise StreamEnded(f"{self.path}: acquired notifications: {exc.strerror}") from exc
            if not data:
                raise StreamEnded(f"{self.path}: acquired notifications ended")
            self.notifications += 1
            n += 1
            self.handler(data)
