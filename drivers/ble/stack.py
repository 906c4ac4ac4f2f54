"""What every BLE driver of the process shares: typed errors for what bleak and BlueZ report, a
budget of simultaneous connections per adapter, one scanner per adapter with a watchdog, and a watch
on BlueZ itself leaving and coming back on the bus.

Why one shared scanner: BlueZ keeps one discovery session per D-Bus client, and bleak uses one D-Bus
connection per event loop for scanning, so a second ``BleakScanner`` of the same process is refused
with ``org.bluez.Error.InProgress``. Drivers therefore never scan themselves: they ask the
:class:`ScanHub` for the device's latest advertisement (a ``BLEDevice`` that ``BleakClient`` connects
to without a scan of its own) and subscribe to its advertisements (SOS presses).

Why a watchdog: a discovery session can die silently (bluetoothd restarted, adapter reset, the
kernel stopping an LE scan), and then nothing is heard again. When nothing at all has been heard for
``watchdog_s`` while someone needs the scanner, it is restarted. BlueZ restarting is also seen
directly (``NameOwnerChanged`` of ``org.bluez``), which restarts the scanner and tells connected
drivers their links are gone (bluetoothd killed without a word never sends ``Connected=False``).
So is the adapter itself (``PropertiesChanged`` of ``org.bluez.Adapter1``): powering it off ends
every discovery session, so ``Powered`` becoming true, or ``Discovering`` becoming false while the
hub scans, restarts discovery at once instead of after the watchdog (an SOS pendant is heard again
within a second or two of the adapter coming back, not after ``watchdog_s``).

Errors are classified by type and by D-Bus error *name* (``org.bluez.Error.InProgress``...), the
part of BlueZ's API that is meant for programs. The one reason string read is BlueZ's documented
``le-connection-abort-by-local`` (the only way BlueZ tells this case apart).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import (
    BleakBluetoothNotAvailableError,
    BleakBluetoothNotAvailableReason,
    BleakDBusError,
    BleakDeviceNotFoundError,
    BleakError,
    BleakGATTProtocolError,
    BleakGATTProtocolErrorCode,
)

from drivers.aio import cancel_and_wait, settle
from drivers.base import DeviceConfigError, DriverError, TransientDeviceError
from drivers.reconnect import Backoff

_retry: Any
try:  # the library Home Assistant uses for exactly this (docs/ble.md, "Connecting")
    import bleak_retry_connector as _retry
except ImportError:  # pragma: no cover - the plain bleak path below is used instead
    _retry = None

log = logging.getLogger(__name__)

_RETRY_ERRORS: tuple[type[BaseException], ...] = (
    (_retry.BleakNotFoundError, _retry.BleakConnectionError, _retry.BleakAbortedError) if _retry is not None else ()
)

# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class BleError(TransientDeviceError):
    """A BLE link or procedure failed; retrying later may succeed."""


class AdapterUnavailable(BleError):
    """No usable adapter: none present, powered off, or BlueZ not on the bus."""


class BluezBusy(BleError):
    """``org.bluez.Error.InProgress``: BlueZ still runs an earlier operation on this device."""


class ConnectionAborted(BleError):
    """The connection attempt was aborted (``le-connection-abort-by-local``: interference, range, or
    the controller out of connection slots)."""


class DeviceNotSeen(BleError):
    """The device is not advertising (away, asleep, out of range)."""


class ConnectTimeout(BleError):
    """Connecting or service discovery took longer than allowed."""


class LinkLost(BleError):
    """The link dropped, or BlueZ went away under it."""


class NotBonded(BleError):
    """The device needs an encrypted (bonded) link and we are not bonded, or the bond was lost."""


class ProcedureFailed(BleError):
    """A GATT procedure (read, write, record transfer) failed or timed out."""


class BluetoothPermissionDenied(DeviceConfigError):
    """BlueZ refused the gateway: the service user needs D-Bus access to org.bluez."""


ERR_IN_PROGRESS = "org.bluez.Error.InProgress"
ERR_NOT_READY = "org.bluez.Error.NotReady"
ERR_FAILED = "org.bluez.Error.Failed"
ERR_AUTH = frozenset(
    {
        "org.bluez.Error.AuthenticationFailed",
        "org.bluez.Error.AuthenticationRejected",
        "org.bluez.Error.AuthenticationCanceled",
        "org.bluez.Error.AuthenticationTimeout",
    }
)
ERR_NO_SERVICE = frozenset(
    {
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
        "org.freedesktop.DBus.Error.NoReply",
        "org.freedesktop.DBus.Error.Disconnected",
    }
)
ERR_ACCESS = frozenset({"org.freedesktop.DBus.Error.AccessDenied", "org.bluez.Error.NotAuthorized"})
ERR_UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"
ABORT_BY_LOCAL = "le-connection-abort-by-local"
AUTH_CODES = frozenset(
    {
        BleakGATTProtocolErrorCode.INSUFFICIENT_AUTHENTICATION,
        BleakGATTProtocolErrorCode.INSUFFICIENT_ENCRYPTION,
        BleakGATTProtocolErrorCode.INSUFFICIENT_ENCRYPTION_KEY_SIZE,
    }
)


def classify(exc: BaseException, what: str) -> DriverError:
    """A typed driver error for an exception out of bleak, dbus-fast or the OS."""
    if isinstance(exc, DriverError):
        return exc
    if _RETRY_ERRORS and isinstance(exc, _RETRY_ERRORS) and exc.__cause__ is not None:
        # bleak-retry-connector gives up with its own error type; the typed cause says what it was.
        if isinstance(exc.__cause__, Exception) and exc.__cause__ is not exc:
            return classify(exc.__cause__, what)
    if isinstance(exc, BleakBluetoothNotAvailableError):
        if exc.reason is BleakBluetoothNotAvailableReason.DENIED_BY_SYSTEM:
            return BluetoothPermissionDenied(f"{what}: BlueZ refused access ({exc}): allow the service user on D-Bus")
        return AdapterUnavailable(f"{what}: {exc}")
    if isinstance(exc, BleakDBusError):
        name = exc.dbus_error
        detail = exc.dbus_error_details or ""
        if name == ERR_IN_PROGRESS:
            return BluezBusy(f"{what}: BlueZ is busy with this device (InProgress)")
        if name == ERR_NOT_READY:
            return AdapterUnavailable(f"{what}: adapter not ready (powered off?)")
        if name in ERR_AUTH:
            return NotBonded(f"{what}: pairing failed ({name.rsplit('.', 1)[-1]})")
        if name in ERR_NO_SERVICE:
            return AdapterUnavailable(f"{what}: BlueZ is not on the bus ({name.rsplit('.', 1)[-1]})")
        if name in ERR_ACCESS:
            return BluetoothPermissionDenied(f"{what}: D-Bus access to BlueZ denied ({name})")
        if name == ERR_UNKNOWN_OBJECT:
            return DeviceNotSeen(f"{what}: BlueZ no longer knows the device")
        if name == ERR_FAILED and detail.startswith(ABORT_BY_LOCAL):
            return ConnectionAborted(f"{what}: connection aborted ({ABORT_BY_LOCAL})")
        return LinkLost(f"{what}: {name.rsplit('.', 1)[-1]} {detail}".rstrip())
    if isinstance(exc, BleakGATTProtocolError):
        if exc.code in AUTH_CODES:
            return NotBonded(f"{what}: the device wants an encrypted link ({exc.code.name.lower()})")
        return ProcedureFailed(f"{what}: ATT error {exc.code.name.lower()}")
    if isinstance(exc, BleakDeviceNotFoundError):
        return DeviceNotSeen(f"{what}: BlueZ does not know the device (not advertising?)")
    if isinstance(exc, TimeoutError):
        return ConnectTimeout(f"{what}: timed out")
    if isinstance(exc, PermissionError):
        return BluetoothPermissionDenied(f"{what}: {exc}")
    if isinstance(exc, BleakError | EOFError | OSError | ConnectionError):
        return LinkLost(f"{what}: {type(exc).__name__}: {exc}")
    return LinkLost(f"{what}: unexpected {type(exc).__name__}: {exc}")


# The exceptions bleak/dbus-fast raise for a failed operation (everything else is a bug to surface).
BLEAK_FAILURES: tuple[type[BaseException], ...] = (BleakError, EOFError, OSError, TimeoutError, AssertionError)


# --------------------------------------------------------------------------------------------------
# Connection budget per adapter
# --------------------------------------------------------------------------------------------------


class ConnectionBudget:
    """At most ``limit`` links at once on one adapter for the whole process. A controller out of
    connection slots fails connects in confusing ways (aborts, timeouts); waiting for a slot is
    cheaper and says what happens. Waiters are served by priority (lower first: SOS before cuffs
    before wrist monitors), then in arrival order."""

    def __init__(self, adapter: str, limit: int) -> None:
        self.adapter = adapter
        self.limit = max(1, limit)
        self.holders: dict[int, str] = {}
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._granted = 0  # waiters woken that have not taken their slot yet
        self.waits = 0

    @property
    def in_use(self) -> int:
        return len(self.holders)

    def waiting(self) -> int:
        return sum(1 for _, _, f in self._waiters if not f.done())

    @contextlib.asynccontextmanager
    async def slot(self, owner: str, priority: int = 5) -> AsyncIterator[None]:
        token = next(self._seq)
        if len(self.holders) + self._granted >= self.limit or self.waiting():
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiters, (priority, token, fut))
            self.waits += 1
            log.debug("device %s: waiting for a connection slot on %s (%d in use)", owner, self.adapter, self.in_use)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    # The slot was handed to us as we were cancelled: pass it on.
                    self._granted -= 1
                    self._wake()
                raise
            self._granted -= 1
        self.holders[token] = owner
        try:
            yield
        finally:
            del self.holders[token]
            self._wake()

    def _wake(self) -> None:
        while self._waiters and len(self.holders) + self._granted < self.limit:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
                self._granted += 1


# --------------------------------------------------------------------------------------------------
# Shared scanner with watchdog
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sighting:
    device: BLEDevice
    adv: AdvertisementData
    at: float  # monotonic
    wall: float  # POSIX time


AdvCallback = Callable[[Sighting], None]


def normalize_address(address: str) -> str:
    return address.strip().upper()


# Discovering=false this soon after our start is the previous session's end being reported, not ours.
ADAPTER_SETTLE_S = 2.0
# The hub's tasks at the last user's exit: the scanner's own stop takes up to 5 s, the watch's 1 s.
STOP_LIMIT_S = 6.0


@dataclass
class HubStats:
    scanner_starts: int = 0
    scanner_errors: int = 0
    watchdog_restarts: int = 0
    bluez_restarts: int = 0
    adapter_restarts: int = 0  # discovery restarted because the adapter was powered on or stopped it
    advertisements: int = 0


class ScanHub:
    """One scanner per adapter shared by every driver of the event loop (see the module docstring).

    ``async with hub.watch(address, callback)`` keeps the scanner running while the block runs and
    calls ``callback(sighting)`` for each advertisement of ``address`` (``"*"`` for every device).
    ``await hub.wait_for(address, newer_than=t)`` returns the first sighting after ``t``.
    """

    def __init__(
        self,
        adapter: str = "",
        *,
        watchdog_s: float = 30.0,
        spawn: Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]] | None = None,
    ) -> None:
        self.adapter = adapter
        self.watchdog_s = watchdog_s
        # Where the hub's tasks run: the BLE stack's TaskGroup (drivers.ble.manager), or plain tasks.
        self._spawn = spawn or _plain_task
        self.sightings: dict[str, Sighting] = {}
        self.stats = HubStats()
        self.generation = 0  # +1 each time BlueZ leaves or joins the bus
        self.moved_at = 0.0  # monotonic time of the last change of BlueZ on the bus
        self.scanning = False
        self._listeners: dict[str, list[AdvCallback]] = {}
        self._users = 0
        self._task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._restart = asyncio.Event()
        self._waiters: dict[str, list[asyncio.Future[Sighting]]] = {}
        self._bluez_changed: list[Callable[[int], None]] = []
        self._last_heard = 0.0
        self._scan_started = 0.0
        self._error_type: type[BaseException] | None = None
        self._watchdog_warned = False

    # -- users ----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def watch(self, address: str = "*", callback: AdvCallback | None = None) -> AsyncIterator[ScanHub]:
        key = "*" if address == "*" else normalize_address(address)
        if callback is not None:
            self._listeners.setdefault(key, []).append(callback)
        self._users += 1
        self._ensure_running()
        try:
            yield self
        finally:
            self._users -= 1
            if callback is not None:
                self._listeners[key].remove(callback)
                if not self._listeners[key]:
                    del self._listeners[key]
            if self._users == 0:
                await self._shutdown()

    def on_bluez_change(self, callback: Callable[[int], None]) -> Callable[[], None]:
        """Call ``callback(generation)`` when BlueZ leaves or joins the bus; returns an unsubscribe."""
        self._bluez_changed.append(callback)
        return lambda: self._bluez_changed.remove(callback)

    def last(self, address: str) -> Sighting | None:
        return self.sightings.get(normalize_address(address))

    async def wait_for(self, address: str, *, newer_than: float = 0.0, limit_s: float | None = None) -> Sighting:
        """The first advertisement of ``address`` received after ``newer_than`` (monotonic)."""
        key = normalize_address(address)
        s = self.sightings.get(key)
        if s is not None and s.at > newer_than:
            return s
        async with asyncio.timeout(limit_s):
            while True:
                fut: asyncio.Future[Sighting] = asyncio.get_running_loop().create_future()
                waiters = self._waiters.setdefault(key, [])
                waiters.append(fut)
                try:
                    s = await fut
                finally:
                    if fut in waiters:
                        waiters.remove(fut)
                    if not waiters:
                        self._waiters.pop(key, None)
                if s.at > newer_than:
                    return s

    # -- scanner --------------------------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = self._spawn(self._run(), f"ble scanner {self.adapter or 'default'}")
        if self._watch_task is None or self._watch_task.done():
            self._watch_task = self._spawn(self._watch_bluez(), "bluez watch")

    async def _shutdown(self) -> None:
        tasks = [t for t in (self._task, self._watch_task) if t is not None]
        self._task = self._watch_task = None
        await cancel_and_wait(*tasks, limit_s=STOP_LIMIT_S)

    def _on_adv(self, device: BLEDevice, adv: AdvertisementData) -> None:
        now = time.monotonic()
        key = normalize_address(device.address)
        s = Sighting(device, adv, now, time.time())
        self.sightings[key] = s
        self._last_heard = now
        self._watchdog_warned = False
        self.stats.advertisements += 1
        for fut in self._waiters.get(key, ()):
            if not fut.done():
                fut.set_result(s)
        for cb in [*self._listeners.get(key, ()), *self._listeners.get("*", ())]:
            cb(s)

    def _log_error(self, exc: BaseException) -> None:
        level = logging.DEBUG if type(exc) is self._error_type else logging.WARNING
        log.log(level, "BLE scanner on %s: %s", self.adapter or "default adapter", exc)
        self._error_type = type(exc)

    async def _run(self) -> None:
        backoff = Backoff(base_s=0.5, cap_s=10.0)
        bluez: dict[str, Any] = {"adapter": self.adapter} if self.adapter else {}
        while True:
            scanner = BleakScanner(self._on_adv, bluez=bluez)  # type: ignore[arg-type]
            try:
                async with asyncio.timeout(10.0):
                    await scanner.start()
            except BLEAK_FAILURES as exc:
                self.stats.scanner_errors += 1
                self._log_error(classify(exc, "start scanning"))
                await self._pause(backoff.next_delay())
                continue
            self.stats.scanner_starts += 1
            self.scanning = True
            self._error_type = None
            started = self._scan_started = time.monotonic()
            self._restart.clear()
            try:
                while True:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.2, self.watchdog_s / 4)):
                            await self._restart.wait()
                    if self._restart.is_set():
                        log.info("BLE scanner on %s: restarting", self.adapter or "default adapter")
                        break
                    silent = time.monotonic() - max(self._last_heard, started)
                    if silent > self.watchdog_s:
                        self.stats.watchdog_restarts += 1
                        # Repeats at DEBUG: a home whose only devices stay connected is silent for days.
                        level = logging.DEBUG if self._watchdog_warned else logging.WARNING
                        self._watchdog_warned = True
                        log.log(
                            level,
                            "BLE scanner on %s: nothing heard for %.0f s, restarting discovery",
                            self.adapter or "default adapter",
                            silent,
                        )
                        break
                    if time.monotonic() - started > 60.0:
                        backoff.reset()
            finally:
                self.scanning = False
                try:
                    async with asyncio.timeout(5.0):
                        await scanner.stop()
                except BLEAK_FAILURES as exc:
                    # A session BlueZ already dropped (restart, power off) cannot be stopped: fine.
                    log.debug("BLE scanner: stop: %s", classify(exc, "stop scanning"))
            await self._pause(backoff.next_delay())

    async def _pause(self, delay_s: float) -> None:
        """The backoff's delay before the next start, cut short by a reason to start now (the adapter
        powered on, BlueZ back on the bus)."""
        self._restart.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await self._restart.wait()

    def _adapter_changed(self, path: str, powered: bool | None, discovering: bool | None) -> None:
        """``PropertiesChanged`` of an adapter (the watch's handler)."""
        if self.adapter and not path.endswith("/" + self.adapter):
            return
        if powered is True:
            why = "powered on"
        elif discovering is False and self.scanning and time.monotonic() - self._scan_started > ADAPTER_SETTLE_S:
            why = "stopped discovering"
        else:
            return
        self.stats.adapter_restarts += 1
        log.info("BLE adapter %s %s: restarting discovery", path.rsplit("/", 1)[-1], why)
        self._restart.set()

    async def _watch_bluez(self) -> None:
        """Follow ``org.bluez`` on the system bus: a restart of bluetoothd ends every link and every
        discovery session, but a killed bluetoothd tells nobody."""
        from dbus_fast import AuthError, BusType, DBusError, Message, MessageType
        from dbus_fast.aio import MessageBus

        backoff = Backoff(base_s=1.0, cap_s=30.0)
        watch_failures: tuple[type[BaseException], ...] = (DBusError, AuthError, *BLEAK_FAILURES)
        owner: str | None = None
        while True:
            bus = MessageBus(bus_type=BusType.SYSTEM)
            try:
                await bus.connect()
                changed = asyncio.Queue[str]()
                bus.add_message_handler(_owner_changes(changed))
                bus.add_message_handler(_adapter_changes(self._adapter_changed))
                rules = (
                    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
                    "member='NameOwnerChanged',arg0='org.bluez'",
                    "type='signal',sender='org.bluez',interface='org.freedesktop.DBus.Properties',"
                    "member='PropertiesChanged',arg0='org.bluez.Adapter1'",
                )
                for rule in rules:
                    await bus.call(
                        Message(
                            destination="org.freedesktop.DBus",
                            path="/org/freedesktop/DBus",
                            interface="org.freedesktop.DBus",
                            member="AddMatch",
                            signature="s",
                            body=[rule],
                        )
                    )
                reply = await bus.call(
                    Message(
                        destination="org.freedesktop.DBus",
                        path="/org/freedesktop/DBus",
                        interface="org.freedesktop.DBus",
                        member="GetNameOwner",
                        signature="s",
                        body=["org.bluez"],
                    )
                )
                ok = reply is not None and reply.message_type == MessageType.METHOD_RETURN
                current = str(reply.body[0]) if ok else ""
                if owner is not None and current != owner:
                    self._bluez_moved(current)
                owner = current
                backoff.reset()
                disconnected = asyncio.ensure_future(_gone(bus))
                try:
                    while True:
                        getter = asyncio.ensure_future(changed.get())
                        done, _ = await asyncio.wait({getter, disconnected}, return_when=asyncio.FIRST_COMPLETED)
                        if getter not in done:
                            getter.cancel()
                            break
                        new = getter.result()
                        if new != owner:
                            owner = new
                            self._bluez_moved(new)
                finally:
                    await cancel_and_wait(disconnected)
            except watch_failures as exc:
                log.debug("BlueZ watch: %s", exc)
            finally:
                bus.disconnect()
                await settle(_gone(bus), 1.0, watch_failures)
            await asyncio.sleep(backoff.next_delay())

    def _bluez_moved(self, new_owner: str) -> None:
        self.generation += 1
        self.moved_at = time.monotonic()
        self.stats.bluez_restarts += 1
        log.warning("BlueZ %s the bus: every BLE link restarts", "joined" if new_owner else "left")
        self._restart.set()
        for cb in list(self._bluez_changed):
            cb(self.generation)


# --------------------------------------------------------------------------------------------------
# Connecting
# --------------------------------------------------------------------------------------------------


async def connect_client(
    device: BLEDevice,
    name: str,
    *,
    pair: bool,
    timeout_s: float,
    disconnected_callback: Callable[[BleakClient], None],
    attempts: int = 2,
) -> BleakClient:
    """A connected :class:`BleakClient` for ``device``.

    With bleak-retry-connector installed (the default), its ``establish_connection`` makes the
    attempt: it reuses a link BlueZ still holds from an earlier session, waits for BlueZ to report
    ``Connected=False`` after ``le-connection-abort-by-local`` before trying again, and backs off per
    error kind. ``attempts`` stays small: the driver's :class:`~drivers.reconnect.Reconnector` owns
    the long-term schedule (backoff with jitter, state reporting). Without the library one plain
    ``connect`` is made. Raises what bleak raises; callers :func:`classify` it.
    """
    async with asyncio.timeout(timeout_s * (attempts + 1)):
        if _retry is not None:
            client: BleakClient = await _retry.establish_connection(
                BleakClient,
                device,
                name,
                disconnected_callback=disconnected_callback,
                max_attempts=attempts,
                use_services_cache=False,
                pair=pair,
                timeout=timeout_s,
            )
            return client
        client = BleakClient(device, disconnected_callback=disconnected_callback, pair=pair, timeout=timeout_s)
        await client.connect()
        return client


async def disconnect_client(client: BleakClient, owner: str) -> None:
    """Disconnect, never raising: a link BlueZ already dropped (or BlueZ itself gone) is fine."""
    try:
        async with asyncio.timeout(5.0):
            await client.disconnect()
    except BLEAK_FAILURES as exc:
        log.debug("device %s: disconnect: %s", owner, classify(exc, "disconnect"))


def _plain_task(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    task = asyncio.get_running_loop().create_task(coro, name=name)
    task.add_done_callback(_report_crash)
    return task


def _report_crash(task: asyncio.Task[None]) -> None:
    """A scanner or watch task must only end by cancellation: anything else is a bug to surface."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped by a bug", task.get_name(), exc_info=task.exception())


def _owner_changes(queue: asyncio.Queue[str]) -> Callable[[Any], bool]:
    """A dbus-fast message handler (one parameter) putting each new owner of ``org.bluez`` on ``queue``."""

    def handler(msg: Any) -> bool:
        if msg.member == "NameOwnerChanged" and msg.body and msg.body[0] == "org.bluez":
            queue.put_nowait(str(msg.body[2]))
        return False

    return handler


def _adapter_changes(callback: Callable[[str, bool | None, bool | None], None]) -> Callable[[Any], bool]:
    """A dbus-fast message handler calling ``callback(path, powered, discovering)`` for each
    ``PropertiesChanged`` of an ``org.bluez.Adapter1`` (None: that property did not change)."""

    def flag(changed: Any, name: str) -> bool | None:
        v = changed.get(name)
        v = getattr(v, "value", v)
        return v if isinstance(v, bool) else None

    def handler(msg: Any) -> bool:
        if msg.member == "PropertiesChanged" and msg.body and msg.body[0] == "org.bluez.Adapter1":
            changed = msg.body[1] if len(msg.body) > 1 and isinstance(msg.body[1], dict) else {}
            callback(str(msg.path), flag(changed, "Powered"), flag(changed, "Discovering"))
        return False

    return handler


def _gone(bus: Any) -> Coroutine[Any, Any, None]:
    """dbus-fast's ``wait_for_disconnect`` (untyped upstream)."""
    coro: Coroutine[Any, Any, None] = bus.wait_for_disconnect()
    return coro


async def close_bleak() -> None:
    """Release bleak's shared BlueZ connection of the running event loop (at shutdown: bleak keeps
    one per loop and only frees it when a new loop asks for one)."""
    try:
        from bleak.backends.bluezdbus import manager as bluez_manager
    except ImportError:  # pragma: no cover - bleak without its BlueZ backend (not Linux)
        return
    loop = asyncio.get_running_loop()
    instances: dict[Any, Any] = bluez_manager._global_instances  # no public API for this
    mgr = instances.pop(loop, None)
    if mgr is None:
        return
    bus = getattr(mgr, "_bus", None)
    watcher = getattr(mgr, "_bus_watcher_task", None)
    if watcher is not None:
        # bleak's watcher takes any end of its bus for BlueZ lost (a WARNING, and every watcher told):
        # ours is a close, so the watcher goes first
        await cancel_and_wait(watcher, limit_s=2.0)
    if bus is not None:
        bus.disconnect()
        await settle(_gone(bus), 2.0, BLEAK_FAILURES)


__all__ = [
    "AdapterUnavailable",
    "BleError",
    "BluetoothPermissionDenied",
    "BluezBusy",
    "ConnectTimeout",
    "ConnectionAborted",
    "ConnectionBudget",
    "DeviceNotSeen",
    "HubStats",
    "LinkLost",
    "NotBonded",
    "ProcedureFailed",
    "ScanHub",
    "Sighting",
    "classify",
    "close_bleak",
    "connect_client",
    "disconnect_client",
]
