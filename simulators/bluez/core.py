"""The virtual BlueZ: adapters, the device objects bluetoothd keeps for what it heard, links to
simulated peripherals, GATT objects while connected, notifications, and fault injection.

It behaves the way bleak expects bluetoothd to (see docs/ble.md for what was checked):

- ``org.bluez`` on the bus given, ``ObjectManager`` at ``/``, objects named exactly as bluetoothd names
  them (``/org/bluez/hci0/dev_AA_BB_CC_DD_EE_FF/service000c/char000d/desc000f``);
- discovery sessions per D-Bus client (a second ``StartDiscovery`` from the same client is
  ``InProgress``, a client that leaves the bus loses its session), advertisement reports only after
  the ``StartDiscovery`` reply, devices that stop advertising are forgotten after
  ``temporary_timeout_s`` unless bonded;
- on ``Connect``: ``Connected=True``, ``InterfacesAdded`` for the GATT objects, ``ServicesResolved=True``,
  then the reply; ``le-connection-abort-by-local`` comes with ``Connected`` true then false, as
  bluetoothd does (bleak waits for it before retrying);
- notifications as ``PropertiesChanged`` of ``Value`` after ``StartNotify``, or over a
  ``SOCK_SEQPACKET`` after ``AcquireNotify``; the service waits for its socket to be writable rather
  than letting dbus-fast fail on a full buffer.

Faults on command: link drop, ``Connect`` failing (abort or InProgress), slow service discovery, a
device out of range and back, adapter powered off, and the whole service restarting (gracefully, or
crashing without a word).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dbus_fast import BusType, DBusError, Message, MessageType, NameFlag, RequestNameReply, Variant
from dbus_fast.aio import MessageBus

from simulators.bluez import dbus_api
from simulators.bluez.gattdb import AttError, Characteristic, Descriptor, Service, assign_handles

log = logging.getLogger(__name__)

BLUEZ = "org.bluez"
ERR_FAILED = "org.bluez.Error.Failed"
ERR_IN_PROGRESS = "org.bluez.Error.InProgress"
ERR_NOT_READY = "org.bluez.Error.NotReady"
ERR_NOT_CONNECTED = "org.bluez.Error.NotConnected"
ERR_ALREADY_CONNECTED = "org.bluez.Error.AlreadyConnected"
ERR_ALREADY_EXISTS = "org.bluez.Error.AlreadyExists"
ERR_DOES_NOT_EXIST = "org.bluez.Error.DoesNotExist"
ERR_NOT_SUPPORTED = "org.bluez.Error.NotSupported"
ERR_NOT_PERMITTED = "org.bluez.Error.NotPermitted"
ERR_AUTH_FAILED = "org.bluez.Error.AuthenticationFailed"
ERR_AUTH_REJECTED = "org.bluez.Error.AuthenticationRejected"
ABORT_BY_LOCAL = "le-connection-abort-by-local"
PROPS = "org.freedesktop.DBus.Properties"


def dev_path(adapter_path: str, address: str) -> str:
    return f"{adapter_path}/dev_{address.upper().replace(':', '_')}"


# --------------------------------------------------------------------------------------------------
# Peripherals (the simulated radio side)
# --------------------------------------------------------------------------------------------------


@dataclass
class Faults:
    """Faults armed on one peripheral, consumed by the next operations."""

    connect: list[str] = field(default_factory=list)  # "abort" | "inprogress", one per Connect
    discovery_delay_s: list[float] = field(default_factory=list)  # one per successful Connect
    drop_after_records: int | None = None  # link drops after this many stored records were sent

    def take_connect(self) -> str | None:
        return self.connect.pop(0) if self.connect else None

    def take_discovery_delay(self) -> float | None:
        return self.discovery_delay_s.pop(0) if self.discovery_delay_s else None


class Peripheral:
    """Base of the simulated devices: identity, advertising, GATT database, behaviour hooks."""

    kind = "peripheral"

    def __init__(
        self,
        address: str,
        name: str,
        *,
        rssi: int = -60,
        tx_power: int = 0,
        adv_interval_s: float = 0.2,
        address_type: str = "public",
    ) -> None:
        self.address = address.upper()
        self.name = name
        self.rssi = rssi
        self.tx_power = tx_power
        self.adv_interval_s = adv_interval_s
        self.address_type = address_type
        self.in_range = True
        self.connectable = True
        self.require_bond = False
        self.pairable = True
        self.bonds: set[str] = set()  # adapter addresses this peripheral keeps keys for
        self.link: DeviceObj | None = None
        self.faults = Faults()
        self.sim: VirtualBlueZ | None = None
        self.services: list[Service] = self.build_gatt()
        assign_handles(self.services)
        self.kick = asyncio.Event()
        self.counters: dict[str, int] = {}

    # -- overridable ---------------------------------------------------------------------------
    def build_gatt(self) -> list[Service]:
        return []

    def advertising(self) -> bool:
        """Whether the device advertises right now (before range is considered)."""
        return self.link is None

    def adv_interval(self) -> float:
        return self.adv_interval_s

    def service_uuids(self) -> list[str]:
        return []

    def manufacturer_data(self) -> dict[int, bytes]:
        return {}

    def service_data(self) -> dict[str, bytes]:
        return {}

    def on_connected(self) -> None:
        """The link is up and its services resolved."""

    def on_disconnected(self) -> None:
        """The link went down (either side)."""

    def status(self) -> dict[str, Any]:
        return {}

    async def command(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        raise ValueError(f"{self.kind} {self.address} does not understand {op!r}")

    # -- helpers for subclasses ----------------------------------------------------------------
    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def characteristic(self, uuid: str) -> Characteristic:
        for svc in self.services:
            for char in svc.characteristics:
                if char.uuid == uuid:
                    return char
        raise KeyError(uuid)

    async def notify(self, char: Characteristic, value: bytes) -> bool:
        """Send a notification/indication to the connected central; False when nobody listens."""
        char.value = value
        if self.sim is None or self.link is None or not char.subscribed:
            return False
        return await self.sim.send_value(self.link, char, value)

    def reachable(self) -> bool:
        return self.in_range and self.connectable

    def wake(self) -> None:
        self.kick.set()


# --------------------------------------------------------------------------------------------------
# BlueZ-side objects
# --------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Adapter:
    name: str
    address: str
    max_connections: int = 5
    powered: bool = True
    alias: str = ""
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)  # sender -> discovery filter
    filters: dict[str, dict[str, Any]] = field(default_factory=dict)
    devices: dict[str, DeviceObj] = field(default_factory=dict)  # by peripheral address
    iface: dbus_api.Adapter1 | None = None

    @property
    def path(self) -> str:
        return f"/org/bluez/{self.name}"

    @property
    def discovering(self) -> bool:
        return self.powered and bool(self.sessions)

    def connected_count(self) -> int:
        return sum(1 for d in self.devices.values() if d.connected or d.connecting)


@dataclass(eq=False)
class AcquiredSession:
    sock: socket.socket
    sender: str
    mtu: int


@dataclass(eq=False)
class GattSvc:
    dev: DeviceObj
    service: Service
    path: str
    iface: dbus_api.GattService1 | None = None


@dataclass(eq=False)
class GattChar:
    dev: DeviceObj
    svc: GattSvc
    char: Characteristic
    path: str
    iface: dbus_api.GattCharacteristic1 | None = None
    sessions: set[str] = field(default_factory=set)  # StartNotify clients
    acquired: AcquiredSession | None = None
    descs: list[GattDesc] = field(default_factory=list)

    @property
    def notifying(self) -> bool:
        return bool(self.sessions) or self.acquired is not None


@dataclass(eq=False)
class GattDesc:
    char: GattChar
    desc: Descriptor
    path: str
    iface: dbus_api.GattDescriptor1 | None = None


@dataclass(eq=False)
class DeviceObj:
    """What bluetoothd keeps about one remote device on one adapter."""

    adapter: Adapter
    peripheral: Peripheral
    rssi: int = -127
    last_seen: float = 0.0
    paired: bool = False
    trusted: bool = False
    alias: str = ""
    connected: bool = False
    connecting: bool = False
    services_resolved: bool = False
    manufacturer_data: dict[int, bytes] = field(default_factory=dict)
    service_data: dict[str, bytes] = field(default_factory=dict)
    uuids: list[str] = field(default_factory=list)
    mtu: int = 247
    iface: dbus_api.Device1 | None = None
    gatt: list[GattSvc] = field(default_factory=list)
    chars: dict[int, GattChar] = field(default_factory=dict)  # by declaration handle
    cancel: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def path(self) -> str:
        return dev_path(self.adapter.path, self.peripheral.address)


def _sock_writable(sock: socket.socket) -> bool:
    p = select.poll()
    p.register(sock.fileno(), select.POLLOUT)
    return bool(p.poll(0))


# --------------------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------------------


class VirtualBlueZ:
    """Owns ``org.bluez`` on ``bus_address``. ``await start()``, ``await stop()``; faults and device
    commands are methods (the control socket calls them)."""

    def __init__(
        self,
        bus_address: str,
        peripherals: list[Peripheral],
        *,
        adapters: int = 1,
        max_connections: int = 5,
        temporary_timeout_s: float = 30.0,
        discovery_delay_s: float = 0.02,
        page_timeout_s: float = 5.0,
        supervision_timeout_s: float = 1.0,
        seed: int = 7,
    ) -> None:
        self.bus_address = bus_address
        self.adapters = [
            Adapter(f"hci{i}", f"00:1A:7D:DA:71:{i:02X}", max_connections=max_connections, alias=f"virtual-hci{i}")
            for i in range(adapters)
        ]
        self.peripherals: dict[str, Peripheral] = {}
        self.temporary_timeout_s = temporary_timeout_s
        self.discovery_delay_s = discovery_delay_s
        self.page_timeout_s = page_timeout_s
        self.supervision_timeout_s = supervision_timeout_s
        self.rng = random.Random(seed)
        self.bus: MessageBus | None = None
        self.current_sender = ""
        self.agents: dict[str, str] = {}
        self.default_agent: str | None = None
        self.up = False
        self.restarts = 0
        self.notifications_sent = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._agent_iface: dbus_api.AgentManager1 | None = None
        for p in peripherals:
            self.add_peripheral(p)

    # -- lifecycle ------------------------------------------------------------------------------

    def add_peripheral(self, p: Peripheral) -> None:
        p.sim = self
        self.peripherals[p.address] = p
        if self.up:
            self._spawn(self._advertise(p), f"adv {p.address}")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("virtual BlueZ task %s failed", task.get_name(), exc_info=task.exception())

    async def start(self) -> None:
        await self._bring_up()
        for p in self.peripherals.values():
            self._spawn(self._advertise(p), f"adv {p.address}")
        self._spawn(self._expire_devices(), "expire")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for a in self.adapters:
            for d in list(a.devices.values()):
                self._close_acquired(d)
        await self._take_down(graceful=False)

    async def _bring_up(self) -> None:
        bus = MessageBus(bus_address=self.bus_address, bus_type=BusType.SYSTEM, negotiate_unix_fd=True)
        await bus.connect()
        bus.add_message_handler(self._on_message)
        reply = await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=["type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged'"],
            )
        )
        assert reply is not None and reply.message_type == MessageType.METHOD_RETURN, reply
        self.bus = bus
        self._agent_iface = dbus_api.AgentManager1(self)
        bus.export("/org/bluez", self._agent_iface)
        for a in self.adapters:
            a.sessions.clear()
            a.filters.clear()
            a.iface = dbus_api.Adapter1(self, a)
            bus.export(a.path, a.iface)
            # bluetoothd loads bonded devices from its storage at start; others are forgotten.
            for addr, d in list(a.devices.items()):
                if d.paired:
                    d.connected = d.connecting = d.services_resolved = False
                    d.rssi = -127
                    self._export_device(d)
                else:
                    del a.devices[addr]
        name_reply = await bus.request_name(BLUEZ, NameFlag.DO_NOT_QUEUE)
        if name_reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            bus.disconnect()
            raise RuntimeError(f"cannot own {BLUEZ} on {self.bus_address}: {name_reply}")
        self.up = True
        log.info("virtual BlueZ up on %s with %d adapter(s)", self.bus_address, len(self.adapters))

    async def _take_down(self, *, graceful: bool) -> None:
        bus = self.bus
        if bus is None:
            self.up = False
            return
        for a in self.adapters:
            for d in list(a.devices.values()):
                if graceful:
                    # bluetoothd disconnects its devices on the way out: Connected=False is seen.
                    await self._link_down(d, "service stopping")
                else:
                    self._drop_link_state(d)
        self.up = False
        for a in self.adapters:
            if graceful:
                for d in list(a.devices.values()):
                    self._unexport_device(d)
                if a.iface is not None:
                    bus.unexport(a.path, a.iface)
            a.iface = None
            for d in a.devices.values():
                d.iface = None
        if graceful:
            with contextlib.suppress(Exception):
                await bus.release_name(BLUEZ)
        self.bus = None
        bus.disconnect()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await bus.wait_for_disconnect()

    async def restart(self, down_s: float = 2.0, graceful: bool = True) -> None:
        """bluetoothd restarting: gone from the bus for ``down_s``, back with adapters and bonds."""
        self.restarts += 1
        log.info("virtual BlueZ: restarting (%s), down %.1f s", "graceful" if graceful else "crash", down_s)
        await self._take_down(graceful=graceful)
        await asyncio.sleep(down_s)
        await self._bring_up()

    # -- D-Bus plumbing -------------------------------------------------------------------------

    def _on_message(self, msg: Message) -> bool:
        if msg.message_type == MessageType.METHOD_CALL:
            # Methods that act per client (discovery and notify sessions) read the caller from here;
            # they are synchronous, so it is still this message's sender when they run.
            self.current_sender = msg.sender or ""
        elif msg.message_type == MessageType.SIGNAL and msg.member == "NameOwnerChanged":
            name, old, new = msg.body
            if old and not new and name.startswith(":"):
                self._client_gone(name)
        return False

    def _client_gone(self, sender: str) -> None:
        for a in self.adapters:
            if a.sessions.pop(sender, None) is not None and not a.sessions:
                self._emit(a.iface, {"Discovering": a.discovering})
            a.filters.pop(sender, None)
            for d in a.devices.values():
                for gc in d.chars.values():
                    if sender in gc.sessions:
                        gc.sessions.discard(sender)
                        self._notify_state_changed(gc)

    def _emit(self, iface: Any, changed: dict[str, Any]) -> None:
        if iface is not None and self.bus is not None and self.up:
            iface.emit_properties_changed(changed)

    async def wait_writable(self) -> None:
        """dbus-fast treats a full socket during a send as fatal: before a burst of signals, wait
        until its queue is empty and the socket has room."""
        bus = self.bus
        if bus is None:
            return
        writer = getattr(bus, "_writer", None)
        sock = getattr(bus, "_sock", None)
        while self.bus is bus and bus.connected:
            busy = writer is not None and (writer.messages or writer.buf is not None)
            if not busy and (sock is None or _sock_writable(sock)):
                return
            await asyncio.sleep(0.001)

    def _export(self, path: str, iface: Any) -> None:
        if self.bus is not None and self.up:
            self.bus.export(path, iface)

    def _unexport(self, path: str, iface: Any) -> None:
        if self.bus is not None and iface is not None:
            self.bus.unexport(path, iface)

    def _export_device(self, d: DeviceObj) -> None:
        if d.iface is None and self.bus is not None:
            d.iface = dbus_api.Device1(self, d)
            self.bus.export(d.path, d.iface)

    def _unexport_device(self, d: DeviceObj) -> None:
        self._unexport_gatt(d)
        if d.iface is not None:
            self._unexport(d.path, d.iface)
            d.iface = None

    # -- discovery ------------------------------------------------------------------------------

    def start_discovery(self, a: Adapter, sender: str) -> None:
        if not a.powered:
            raise DBusError(ERR_NOT_READY, "Resource Not Ready")
        if sender in a.sessions:
            raise DBusError(ERR_IN_PROGRESS, "Operation already in progress")
        was = a.discovering
        a.sessions[sender] = a.filters.get(sender, {})
        if not was:
            self._emit(a.iface, {"Discovering": True})
        # Reports only after the StartDiscovery reply (sent when this method returns).
        asyncio.get_running_loop().call_soon(self._report_all, a)

    def stop_discovery(self, a: Adapter, sender: str) -> None:
        if not a.powered:
            raise DBusError(ERR_NOT_READY, "Resource Not Ready")
        if a.sessions.pop(sender, None) is None:
            raise DBusError(ERR_FAILED, "No discovery started")
        if not a.sessions:
            self._emit(a.iface, {"Discovering": False})

    def set_discovery_filter(self, a: Adapter, sender: str, props: dict[str, Variant]) -> None:
        if not a.powered:
            raise DBusError(ERR_NOT_READY, "Resource Not Ready")
        a.filters[sender] = {k: v.value for k, v in props.items()}

    def _passes_filter(self, a: Adapter, p: Peripheral) -> bool:
        # A device is reported when any session's filter lets it through (bluetoothd merges them).
        for flt in a.sessions.values():
            uuids = [u.lower() for u in flt.get("UUIDs", [])]
            if not uuids or set(uuids) & {u.lower() for u in p.service_uuids()}:
                return True
        return False

    def _report_all(self, a: Adapter) -> None:
        for p in self.peripherals.values():
            if p.in_range and p.advertising():
                self._report(a, p)

    def _report(self, a: Adapter, p: Peripheral) -> None:
        if not (self.up and a.powered and a.sessions) or not self._passes_filter(a, p):
            return
        d = a.devices.get(p.address)
        rssi = p.rssi + self.rng.randint(-3, 3)
        mfr, sdata, uuids = p.manufacturer_data(), p.service_data(), p.service_uuids()
        if d is None:
            d = DeviceObj(a, p)
            a.devices[p.address] = d
        d.last_seen = time.monotonic()
        if d.iface is None:
            d.rssi, d.manufacturer_data, d.service_data, d.uuids = rssi, mfr, sdata, uuids
            self._export_device(d)
            return
        changed: dict[str, Any] = {}
        if rssi == d.rssi:
            rssi += 1  # an advertisement always moves RSSI a little: keep it a report
        d.rssi = rssi
        changed["RSSI"] = rssi
        if mfr != d.manufacturer_data:
            d.manufacturer_data = mfr
            changed["ManufacturerData"] = {k: Variant("ay", v) for k, v in mfr.items()}
        if sdata != d.service_data:
            d.service_data = sdata
            changed["ServiceData"] = {k: Variant("ay", v) for k, v in sdata.items()}
        if uuids != d.uuids:
            d.uuids = uuids
            changed["UUIDs"] = uuids
        self._emit(d.iface, changed)

    async def _advertise(self, p: Peripheral) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows the stop's cancellation when the
            # kick comes in the same loop step, and stop() then waits for this loop for ever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(p.adv_interval()):
                    await p.kick.wait()
            p.kick.clear()
            if not (self.up and p.in_range and p.advertising()):
                continue
            for a in self.adapters:
                self._report(a, p)

    async def _expire_devices(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.temporary_timeout_s / 4))
            if not self.up:
                continue
            now = time.monotonic()
            for a in self.adapters:
                for addr, d in list(a.devices.items()):
                    if d.paired or d.connected or d.connecting:
                        continue
                    if now - d.last_seen > self.temporary_timeout_s:
                        self._unexport_device(d)
                        del a.devices[addr]

    async def remove_device(self, a: Adapter, path: str) -> None:
        for addr, d in list(a.devices.items()):
            if d.path == path and d.iface is not None:
                if d.connected:
                    await self._link_down(d, "device removed")
                d.paired = False
                d.peripheral.bonds.discard(a.address)
                self._unexport_device(d)
                del a.devices[addr]
                return
        raise DBusError(ERR_DOES_NOT_EXIST, "Does Not Exist")

    # -- connections ----------------------------------------------------------------------------

    def _adapter_ready(self, a: Adapter) -> None:
        if not self.up or not a.powered:
            raise DBusError(ERR_NOT_READY, "Resource Not Ready")

    async def _abort(self, d: DeviceObj, reason: str = ABORT_BY_LOCAL) -> None:
        """bluetoothd's le-connection-abort-by-local: the link came up and went at once."""
        self._emit(d.iface, {"Connected": True})
        await asyncio.sleep(0.02)
        self._emit(d.iface, {"Connected": False})
        raise DBusError(ERR_FAILED, reason)

    async def _wait_cancel(self, d: DeviceObj, seconds: float) -> bool:
        """Sleep ``seconds``; True when a Disconnect cancelled the pending connection meanwhile."""
        try:
            async with asyncio.timeout(seconds):
                await d.cancel.wait()
        except TimeoutError:
            return False
        return True

    async def connect(self, d: DeviceObj) -> None:
        a, p = d.adapter, d.peripheral
        self._adapter_ready(a)
        if d.connected:
            raise DBusError(ERR_ALREADY_CONNECTED, "Already Connected")
        if d.connecting:
            raise DBusError(ERR_IN_PROGRESS, "In Progress")
        fault = p.faults.take_connect()
        if fault == "inprogress":
            p.count("connect_inprogress")
            raise DBusError(ERR_IN_PROGRESS, "In Progress")
        if fault == "abort":
            p.count("connect_aborted")
            await self._abort(d)
        if a.connected_count() >= a.max_connections:
            p.count("connect_no_slot")
            await self._abort(d)
        d.connecting = True
        d.cancel = asyncio.Event()
        try:
            # Paging: wait for the peripheral to be in range and free, as the controller would.
            deadline = time.monotonic() + self.page_timeout_s
            while not (p.reachable() and p.link is None and a.powered and self.up):
                if await self._wait_cancel(d, 0.05):
                    raise DBusError(ERR_FAILED, "Operation was cancelled")
                if time.monotonic() > deadline:
                    p.count("connect_timeout")
                    d.connecting = False
                    await self._abort(d)
            d.connected = True
            p.link = d
            self._emit(d.iface, {"Connected": True})
            delay = p.faults.take_discovery_delay()
            if await self._wait_cancel(d, self.discovery_delay_s if delay is None else delay):
                raise DBusError(ERR_FAILED, "Operation was cancelled")
            if not d.connected:
                raise DBusError(ERR_FAILED, "Connection lost during service discovery")
            if d.paired and a.address not in p.bonds:
                # The peripheral lost its keys (reset by the user): encryption fails, link drops.
                p.count("key_missing")
                await self._link_down(d, "key missing")
                raise DBusError(ERR_AUTH_FAILED, "Authentication Failed (key missing)")
            self._export_gatt(d)
            d.services_resolved = True
            self._emit(d.iface, {"ServicesResolved": True})
            p.count("connects")
            p.on_connected()
        except BaseException:
            if d.connected and not d.services_resolved:
                await self._link_down(d, "connect failed")
            raise
        finally:
            d.connecting = False

    async def disconnect(self, d: DeviceObj) -> None:
        if d.connecting:
            d.cancel.set()
            return
        if not d.connected:
            return  # bluetoothd answers a Disconnect of a device that is not connected with success
        await self._link_down(d, "local disconnect")

    async def pair(self, d: DeviceObj) -> None:
        a, p = d.adapter, d.peripheral
        self._adapter_ready(a)
        if d.paired:
            raise DBusError(ERR_ALREADY_EXISTS, "Already Exists")
        if not d.connected:
            await self.connect(d)
        if not p.pairable:
            raise DBusError(ERR_AUTH_REJECTED, "Authentication Rejected")
        await asyncio.sleep(0.05)  # SMP exchange
        if not d.connected:
            raise DBusError(ERR_AUTH_FAILED, "Authentication Failed")
        d.paired = True
        p.bonds.add(a.address)
        p.count("pairings")
        self._emit(d.iface, {"Paired": True, "Bonded": True})

    def _drop_link_state(self, d: DeviceObj) -> None:
        p = d.peripheral
        was = d.connected
        d.connected = False
        d.services_resolved = False
        d.cancel.set()
        self._close_acquired(d)
        for gc in d.chars.values():
            gc.sessions.clear()
            if gc.char.subscribed:
                gc.char.subscribed = False
                if gc.char.on_subscribe is not None:
                    gc.char.on_subscribe(False)
        if p.link is d:
            p.link = None
            if was:
                p.on_disconnected()

    async def _link_down(self, d: DeviceObj, reason: str) -> None:
        if not d.connected and not d.connecting:
            return
        log.debug("link %s down: %s", d.path, reason)
        resolved = d.services_resolved
        self._drop_link_state(d)
        if resolved:
            self._emit(d.iface, {"ServicesResolved": False})
        self._emit(d.iface, {"Connected": False})
        self._unexport_gatt(d)

    def _export_gatt(self, d: DeviceObj) -> None:
        d.gatt.clear()
        d.chars.clear()
        for svc in d.peripheral.services:
            gs = GattSvc(d, svc, f"{d.path}/service{svc.handle:04x}")
            gs.iface = dbus_api.GattService1(gs)
            self._export(gs.path, gs.iface)
            d.gatt.append(gs)
            for char in svc.characteristics:
                gc = GattChar(d, gs, char, f"{gs.path}/char{char.handle:04x}")
                cls = dbus_api.AcquirableGattCharacteristic1 if char.acquirable else dbus_api.GattCharacteristic1
                gc.iface = cls(self, gc)
                self._export(gc.path, gc.iface)
                d.chars[char.handle] = gc
                for desc in char.descriptors:
                    gd = GattDesc(gc, desc, f"{gc.path}/desc{desc.handle:04x}")
                    gd.iface = dbus_api.GattDescriptor1(self, gd)
                    self._export(gd.path, gd.iface)
                    gc.descs.append(gd)

    def _unexport_gatt(self, d: DeviceObj) -> None:
        if self.bus is None:
            d.gatt.clear()
            d.chars.clear()
            return
        for gc in d.chars.values():
            for gd in gc.descs:
                self._unexport(gd.path, gd.iface)
            self._unexport(gc.path, gc.iface)
        for gs in d.gatt:
            self._unexport(gs.path, gs.iface)
        d.gatt.clear()
        d.chars.clear()

    # -- GATT operations ------------------------------------------------------------------------

    def _check_link(self, gc: GattChar, secure: bool) -> None:
        d = gc.dev
        if not d.connected or d.peripheral.link is not d:
            raise DBusError(ERR_FAILED, "Not connected")
        if secure and not d.paired:
            # bluetoothd reports the ATT error of the peer; bleak maps it to INSUFFICIENT_AUTHENTICATION.
            raise DBusError(ERR_FAILED, f"Operation failed with ATT error: {AttError.INSUFFICIENT_AUTHENTICATION:#04x}")

    @staticmethod
    def _att(exc: AttError) -> DBusError:
        return DBusError(ERR_FAILED, f"Operation failed with ATT error: {exc.code:#04x}")

    async def read_char(self, gc: GattChar) -> bytes:
        self._check_link(gc, gc.char.secure)
        if "read" not in gc.char.flags:
            raise DBusError(ERR_NOT_PERMITTED, "Read not permitted")
        try:
            value = gc.char.read() if gc.char.read is not None else gc.char.value
        except AttError as exc:
            raise self._att(exc) from None
        gc.char.value = value
        return value

    async def write_char(self, gc: GattChar, value: bytes, options: dict[str, Variant]) -> None:
        self._check_link(gc, gc.char.secure)
        if not {"write", "write-without-response"} & set(gc.char.flags):
            raise DBusError(ERR_NOT_PERMITTED, "Write not permitted")
        if gc.char.write is None:
            gc.char.value = value
            return
        try:
            result = gc.char.write(value)
            if result is not None:
                await result
        except AttError as exc:
            raise self._att(exc) from None

    async def read_desc(self, gd: GattDesc) -> bytes:
        self._check_link(gd.char, False)
        if gd.desc.uuid.startswith("00002902"):
            flags = 0x0001 if "notify" in gd.char.char.flags else 0x0002
            return (flags if gd.char.notifying else 0).to_bytes(2, "little")
        return gd.desc.value

    async def write_desc(self, gd: GattDesc, value: bytes) -> None:
        self._check_link(gd.char, False)
        if gd.desc.uuid.startswith("00002902"):
            # bluetoothd does not let clients write the CCCD: StartNotify is the way.
            raise DBusError(ERR_NOT_PERMITTED, "Write not permitted")
        gd.desc.value = value

    def _notify_state_changed(self, gc: GattChar) -> None:
        on = gc.notifying
        self._emit(gc.iface, {"Notifying": on})
        if on != gc.char.subscribed:
            gc.char.subscribed = on
            if gc.char.on_subscribe is not None:
                gc.char.on_subscribe(on)

    def start_notify(self, gc: GattChar, sender: str) -> None:
        self._check_link(gc, gc.char.secure)
        if not gc.char.notifies:
            raise DBusError(ERR_NOT_SUPPORTED, "Operation is not supported")
        if gc.acquired is not None:
            raise DBusError(ERR_NOT_PERMITTED, "Notify acquired")
        if sender in gc.sessions:
            return  # bluetoothd answers success to a repeated StartNotify of the same client
        gc.sessions.add(sender)
        self._notify_state_changed(gc)

    def stop_notify(self, gc: GattChar, sender: str) -> None:
        if sender not in gc.sessions:
            raise DBusError(ERR_FAILED, "No notify session started")
        gc.sessions.discard(sender)
        self._notify_state_changed(gc)

    async def acquire_notify(self, gc: GattChar, sender: str) -> tuple[int, int]:
        self._check_link(gc, gc.char.secure)
        if "notify" not in gc.char.flags:
            raise DBusError(ERR_NOT_SUPPORTED, "Operation is not supported")
        if gc.acquired is not None or gc.sessions:
            raise DBusError(ERR_NOT_PERMITTED, "Notify already acquired or started")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        gc.acquired = AcquiredSession(ours, sender, gc.dev.mtu)
        self._emit(gc.iface, {"NotifyAcquired": True})
        self._notify_state_changed(gc)
        fd = theirs.detach()
        # Our copy of the peer's end is closed once the reply that carries it has left.
        self._spawn(self._close_after_send(fd), "close acquired fd")
        return fd, gc.dev.mtu

    async def _close_after_send(self, fd: int) -> None:
        await asyncio.sleep(0)
        await self.wait_writable()
        await asyncio.sleep(0.05)
        os.close(fd)

    def _close_acquired(self, d: DeviceObj) -> None:
        for gc in d.chars.values():
            if gc.acquired is not None:
                gc.acquired.sock.close()
                gc.acquired = None

    async def send_value(self, d: DeviceObj, char: Characteristic, value: bytes) -> bool:
        """Deliver one notification/indication of ``char`` to the client(s) of link ``d``."""
        gc = d.chars.get(char.handle)
        if gc is None or not d.connected:
            return False
        if gc.acquired is not None:
            sess = gc.acquired
            while True:
                try:
                    sess.sock.send(value)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.001)
                except OSError:
                    # The client closed its end: the acquired session is over.
                    sess.sock.close()
                    gc.acquired = None
                    self._emit(gc.iface, {"NotifyAcquired": False})
                    self._notify_state_changed(gc)
                    return False
            self.notifications_sent += 1
            return True
        if not gc.sessions or self.bus is None:
            return False
        await self.wait_writable()
        bus = self.bus
        if bus is None or not d.connected or d.chars.get(char.handle) is not gc:
            return False
        bus.send(
            Message.new_signal(
                gc.path,
                PROPS,
                "PropertiesChanged",
                "sa{sv}as",
                ["org.bluez.GattCharacteristic1", {"Value": Variant("ay", value)}, []],
            )
        )
        self.notifications_sent += 1
        return True

    # -- faults ---------------------------------------------------------------------------------

    def peripheral(self, address: str) -> Peripheral:
        try:
            return self.peripherals[address.upper()]
        except KeyError:
            raise ValueError(f"no simulated device {address}") from None

    def adapter(self, name: str) -> Adapter:
        for a in self.adapters:
            if a.name == name:
                return a
        raise ValueError(f"no adapter {name}")

    async def drop_link(self, address: str) -> bool:
        p = self.peripheral(address)
        if p.link is None:
            return False
        await self._link_down(p.link, "link lost")
        return True

    async def out_of_range(self, address: str, duration_s: float | None = None) -> None:
        p = self.peripheral(address)
        p.in_range = False
        if p.link is not None:
            link = p.link

            async def supervision() -> None:
                await asyncio.sleep(self.supervision_timeout_s)
                if not p.in_range and p.link is link:
                    await self._link_down(link, "supervision timeout")

            self._spawn(supervision(), f"supervision {address}")
        if duration_s is not None:

            async def back() -> None:
                await asyncio.sleep(duration_s)
                self.in_range(address)

            self._spawn(back(), f"back in range {address}")

    def in_range(self, address: str) -> None:
        p = self.peripheral(address)
        p.in_range = True
        p.wake()

    def set_powered(self, a: Adapter, on: bool) -> None:
        if a.powered == on:
            return
        if not on:
            for d in list(a.devices.values()):
                if d.connected or d.connecting:
                    self._spawn(self._link_down(d, "adapter powered off"), f"power off {d.path}")
            a.sessions.clear()
        a.powered = on
        self._emit(a.iface, {"Powered": on, "PowerState": "on" if on else "off", "Discovering": a.discovering})

    async def power_cycle(self, adapter: str, off_s: float) -> None:
        a = self.adapter(adapter)
        self.set_powered(a, False)
        await asyncio.sleep(off_s)
        self.set_powered(a, True)

    # -- status -----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "up": self.up,
            "bus": self.bus_address,
            "restarts": self.restarts,
            "notifications_sent": self.notifications_sent,
            "adapters": [
                {
                    "name": a.name,
                    "address": a.address,
                    "powered": a.powered,
                    "discovering": a.discovering,
                    "sessions": len(a.sessions),
                    "connections": a.connected_count(),
                    "max_connections": a.max_connections,
                }
                for a in self.adapters
            ],
            "devices": [
                {
                    "address": p.address,
                    "kind": p.kind,
                    "name": p.name,
                    "in_range": p.in_range,
                    "connected": p.link is not None and p.link.connected,
                    "adapter": p.link.adapter.name if p.link is not None else None,
                    "paired_on": sorted(a.name for a in self.adapters if (d := a.devices.get(p.address)) and d.paired),
                    "bonds": sorted(p.bonds),
                    "counters": dict(p.counters),
                    **p.status(),
                }
                for p in self.peripherals.values()
            ],
        }


Command = Callable[..., Any]
