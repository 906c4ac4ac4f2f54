"""The base of every BLE device driver: find the device through the shared scanner, take a slot of
the adapter's connection budget, connect (bleak-retry-connector), let the device kind set up its
subscriptions, serve until the link ends, and report the link on ``device/{id}/state``.

The per-device state machine is :class:`drivers.reconnect.Reconnector` (``connecting`` ->
``connected`` -> ``backoff`` ...), with full-jitter backoff capped at ``backoff_cap_s`` so that a
device that comes back is reconnected well within 30 s. Errors are typed
(:mod:`drivers.ble.stack`): a link that ends for any reason raises a :class:`~drivers.ble.stack.BleError`
subclass, never a bleak or D-Bus exception.

State reports (:class:`drivers.base.DeviceStatus`) carry the battery level, the RSSI of the last
advertisement, and in ``counters`` the link counters and ``last_seen_age_s`` (seconds between the
last advertisement or notification and the report). They are sent on every change of state and
every ``status_interval_s`` while connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic

from drivers.aio import cancel_and_wait
from drivers.base import DeviceConfigError, DeviceSpec, DeviceStatus, Driver, DriverContext, LinkState, ReadingSink
from drivers.ble import gatt
from drivers.ble.acquired import AcquiredStream, AcquireRefused, StreamEnded
from drivers.ble.stack import (
    BLEAK_FAILURES,
    DeviceNotSeen,
    LinkLost,
    ScanHub,
    Sighting,
    classify,
    connect_client,
    disconnect_client,
    normalize_address,
)
from drivers.options import DriverOptions, option
from drivers.reconnect import Backoff, ConnState, Reconnector, link_state

log = logging.getLogger(__name__)

ACQUIRE_TRUST_S = 5.0  # an acquired stream that ends sooner with nothing read: that device gets StartNotify
ADDRESS_RE = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")


@dataclass(frozen=True)  # no slots: frozen+slots subclasses break super() on 3.11
class BleOptions(DriverOptions):
    """Keys common to every BLE device (see config/gateway.example.toml)."""

    address: str = option(pattern=ADDRESS_RE.pattern, describe="six hex bytes, e.g. C0:FF:EE:00:00:01", refused="nope")
    adapter: str = option("", pattern=r"(hci[0-9]{1,2})?", describe='"hci0", "hci1"..., or "" for the first')
    max_connections: int = option(5, lo=1, hi=16, doc="simultaneous links on that adapter, for the whole gateway")
    watchdog_s: float = option(30.0, lo=1, hi=3600, unit="seconds", doc="nothing heard: restart discovery")
    find_timeout_s: float = option(30.0, lo=1, hi=600, unit="seconds", doc="wait for an advertisement")
    connect_timeout_s: float = option(20.0, lo=1, hi=300, unit="seconds", doc="one connection attempt")
    backoff_cap_s: float = option(8.0, lo=0.5, hi=600, unit="seconds", doc="reconnect delay cap")
    status_interval_s: float = option(300.0, lo=1, hi=86400, unit="seconds", doc="state report while connected")

    def claims(self) -> dict[str, str]:
        return {f"BLE address {self.address.upper()}": "address"}

    def normalized_address(self) -> str:
        return normalize_address(self.address)


NotifyHandler = Callable[[bytes], None]


class BleDriver(Driver):
    """Connected BLE devices. Subclasses implement :meth:`setup` (subscribe, read, fetch) and may
    override :meth:`serve` (default: report state periodically until the link ends)."""

    transport: ClassVar[str] = "ble"
    Options: ClassVar[type[DriverOptions]] = BleOptions
    priority: ClassVar[int] = 5  # connection budget: lower first (SOS 0, cuffs 1, wrist monitors 2)
    pair: ClassVar[bool] = False  # pair (bond) on connect when not bonded yet
    # Characteristics read through AcquireNotify (a socket) when BlueZ offers it, instead of one D-Bus
    # signal per notification: the raw PPG stream (100 notifications a second at one sample each) cost
    # most of a wrist monitor's CPU in D-Bus decoding (issue 15). Only streams that tolerate it: with
    # AcquireNotify BlueZ drops notifications a device sends before the CCC write's response (bleak
    # #1885, why bleak 3.0.2 went back to StartNotify by default), so never a button's or a cuff's
    # characteristic; a PPG frame lost that way shows as a counter gap.
    acquire_notify: ClassVar[frozenset[str]] = frozenset({gatt.RAW_PPG_FRAME})

    def __init__(self, spec: DeviceSpec, sink: ReadingSink, ctx: DriverContext) -> None:
        super().__init__(spec, sink, ctx)
        opts = spec.options
        assert isinstance(opts, BleOptions)
        self.address = opts.normalized_address()
        self.adapter = opts.adapter
        self.max_connections = opts.max_connections
        self.watchdog_s = opts.watchdog_s
        self.find_timeout_s = opts.find_timeout_s
        self.connect_timeout_s = opts.connect_timeout_s
        self.status_interval_s = opts.status_interval_s
        self.reconnector = Reconnector(
            f"device {spec.id}",
            self._session,
            backoff=Backoff(base_s=0.5, cap_s=opts.backoff_cap_s),
            config_retry_s=30.0,
            stable_after_s=10.0,
            on_state=self._on_state,
        )
        self.battery: int | None = None
        self.rssi: int | None = None
        self.last_seen: float | None = None  # monotonic
        self.hub: ScanHub | None = None
        self.client: BleakClient | None = None
        self._counters: dict[str, int] = {}
        self._last_reported: tuple[LinkState, str | None] | None = None
        self._link_lost = asyncio.Event()
        self._acquired = contextlib.AsyncExitStack()  # this session's acquired notification streams
        self._acquire_broken: set[str] = set()  # characteristics whose AcquireNotify failed at once

    # -- counters and state ---------------------------------------------------------------------

    def count(self, name: str, n: int = 1) -> None:
        self._counters[name] = self._counters.get(name, 0) + n

    def bad_value(self, exc: Exception) -> None:
        """A characteristic value or advertisement the parser refused: counted, logged at DEBUG
        (a noisy device must not flood the journal), never fatal."""
        self.count("bad_values")
        log.debug("device %s: %s", self.device_id, exc)

    def counters(self) -> Mapping[str, int]:
        merged = dict(self._counters)
        merged["connects"] = self.reconnector.connects
        merged["disconnects"] = self.reconnector.unexpected_disconnects
        merged["failures"] = self.reconnector.failures
        if self.last_seen is not None:
            merged["last_seen_age_s"] = max(0, round(time.monotonic() - self.last_seen))
        return merged

    def seen(self) -> None:
        self.last_seen = time.monotonic()

    def report(self, state: LinkState, reason: str | None, *, force: bool = False) -> None:
        if not force and (state, reason) == self._last_reported:
            return
        self._last_reported = (state, reason)
        self.sink(
            DeviceStatus(
                device_id=self.device_id,
                captured_at=self.clock(),
                state=state,
                reason=reason,
                battery_percent=self.battery,
                rssi_dbm=self.rssi,
                counters=self.counters(),
            )
        )

    def _on_state(self, state: ConnState, error: BaseException | None) -> None:
        said = link_state(state, error)
        if said is not None:
            self.report(*said)

    # -- advertisements -------------------------------------------------------------------------

    def on_advertisement(self, s: Sighting) -> None:
        """Every advertisement of this device (the SOS pendant reads its press counter here)."""
        self.rssi = s.adv.rssi
        self.seen()

    # -- running --------------------------------------------------------------------------------

    async def run(self) -> None:
        ble = self.ctx.ble
        if ble is None:
            raise DeviceConfigError("this gateway runs without its Bluetooth LE stack: restart it to add BLE devices")
        self.hub = ble.hub(self.adapter, watchdog_s=self.watchdog_s)
        async with self.hub.watch(self.address, self.on_advertisement):
            unsubscribe = self.hub.on_bluez_change(lambda _generation: self._link_lost.set())
            try:
                await self.run_watched()
            finally:
                unsubscribe()

    async def run_watched(self) -> None:
        """Runs while the scanner watches this device (connected kinds: the reconnect loop)."""
        await self.reconnector.run()

    async def find(self) -> Sighting:
        """A recent advertisement of the device (younger than 5 s and than BlueZ's last restart)."""
        assert self.hub is not None
        newer_than = max(time.monotonic() - 5.0, self.hub.moved_at)
        try:
            return await self.hub.wait_for(self.address, newer_than=newer_than, limit_s=self.find_timeout_s)
        except TimeoutError:
            raise DeviceNotSeen(f"{self.address} not heard for {self.find_timeout_s:.0f} s") from None

    async def _session(self) -> None:
        assert self.hub is not None
        sighting = await self.find()
        assert self.ctx.ble is not None
        budget = self.ctx.ble.budget(self.adapter, self.max_connections)
        async with budget.slot(self.device_id, self.priority):
            self._link_lost = asyncio.Event()
            lost = self._link_lost

            def on_disconnect(_client: BleakClient) -> None:
                lost.set()

            try:
                client = await connect_client(
                    sighting.device,
                    self.device_id,
                    pair=self.pair,
                    timeout_s=self.connect_timeout_s,
                    disconnected_callback=on_disconnect,
                )
            except BLEAK_FAILURES as exc:
                raise classify(exc, f"connect {self.address}") from exc
            self.client = client
            self._acquired = contextlib.AsyncExitStack()
            try:
                await self._setup_unless_lost(client, lost)
                self.seen()
                self.reconnector.mark_connected()
                log.info("device %s: connected to %s", self.device_id, self.address)
                await self._serve_until_lost(client, lost)
            finally:
                self.client = None
                await self._acquired.aclose()  # the acquired streams' readers, sockets and D-Bus links
                await self.teardown()
                await disconnect_client(client, self.device_id)

    async def _setup_unless_lost(self, client: BleakClient, lost: asyncio.Event) -> None:
        """:meth:`setup`, abandoned when the link drops meanwhile (a record transfer cut short)."""
        setting_up = asyncio.ensure_future(self.setup(client))
        waiting = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait({setting_up, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(setting_up, waiting)
        if lost.is_set() or setting_up.cancelled():
            raise LinkLost(f"{self.address}: link lost during set-up")
        exc = setting_up.exception()
        if exc is not None:
            if isinstance(exc, BLEAK_FAILURES):
                raise classify(exc, f"set up {self.address}") from exc
            raise exc

    async def _serve_until_lost(self, client: BleakClient, lost: asyncio.Event) -> None:
        serving = asyncio.ensure_future(self.serve(client))
        waiting = asyncio.ensure_future(lost.wait())
        try:
            done, _ = await asyncio.wait({serving, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(serving, waiting)
        if serving in done and not serving.cancelled():
            exc = serving.exception()
            if exc is not None:
                if isinstance(exc, BLEAK_FAILURES):
                    raise classify(exc, f"serve {self.address}") from exc
                raise exc
        raise LinkLost(f"{self.address}: link lost")

    # -- for subclasses ---------------------------------------------------------------------------

    async def setup(self, client: BleakClient) -> None:
        """Subscribe, read, fetch: the link counts as up when this returns."""

    async def teardown(self) -> None:
        """The link ended (flush partial blocks...)."""

    async def serve(self, client: BleakClient) -> None:
        """While connected: periodic state reports (battery, RSSI). Returns never; the link ending
        cancels it."""
        while True:
            await asyncio.sleep(self.status_interval_s)
            self.report(LinkState.CONNECTED, None, force=True)

    async def subscribe(self, client: BleakClient, uuid: str, handler: NotifyHandler) -> bool:
        """Notifications of ``uuid`` to ``handler`` (bytes in); False when the device lacks it."""
        char = client.services.get_characteristic(uuid)
        if char is None:
            return False

        def callback(_char: BleakGATTCharacteristic, data: bytearray) -> None:
            self.seen()
            handler(bytes(data))

        obj = getattr(char, "obj", None)  # BlueZ: (D-Bus object path, properties)
        if uuid in self.acquire_notify and uuid not in self._acquire_broken and isinstance(obj, tuple):
            if "NotifyAcquired" in obj[1] and await self._acquire(str(obj[0]), uuid, handler):
                return True
        await client.start_notify(char, callback)
        return True

    async def _acquire(self, path: str, uuid: str, handler: NotifyHandler) -> bool:
        """Read ``uuid``'s notifications from BlueZ's AcquireNotify socket in blocks
        (:mod:`drivers.ble.acquired`) for the rest of the session; False when BlueZ refuses."""
        stream = AcquiredStream(path, handler)
        try:
            await self._acquired.enter_async_context(stream)
        except AcquireRefused as exc:
            self.count("acquire_notify_refused")
            log.debug("device %s: %s", self.device_id, exc)
            return False
        lost = self._link_lost
        started = time.monotonic()

        async def reading() -> None:
            try:
                while True:
                    before = stream.notifications
                    await stream.run_once()
                    self.count("acquired_reads")
                    if stream.notifications > before:
                        self.seen()
            except StreamEnded as exc:
                if stream.notifications == 0 and time.monotonic() - started < ACQUIRE_TRUST_S:
                    # Closed at once with nothing read (bleak #1885): this device gets StartNotify.
                    self._acquire_broken.add(uuid)
                    self.count("acquire_notify_broken")
                log.debug("device %s: %s", self.device_id, exc)
                lost.set()

        task = asyncio.create_task(reading(), name=f"acquired {uuid} {self.device_id}")
        self._acquired.push_async_callback(cancel_and_wait, task)
        return True

    async def read_battery(self, client: BleakClient) -> None:
        char = client.services.get_characteristic(gatt.BATTERY_LEVEL)
        if char is None:
            return
        try:
            self.on_battery(bytes(await client.read_gatt_char(char)))
        except BLEAK_FAILURES as exc:
            self.count("read_failures")
            log.debug("device %s: battery read: %s", self.device_id, classify(exc, "read battery"))
        if "notify" in char.properties:
            await self.subscribe(client, gatt.BATTERY_LEVEL, self.on_battery)

    def on_battery(self, data: bytes) -> None:
        try:
            level = gatt.decode_battery_level(data).percent
        except gatt.GattDecodeError as exc:
            self.bad_value(exc)
            return
        if level != self.battery:
            self.battery = level
            if self._last_reported is not None and self._last_reported[0] is LinkState.CONNECTED:
                self.report(LinkState.CONNECTED, None, force=True)
