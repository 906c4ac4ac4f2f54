"""BlueZ's D-Bus API (``org.bluez.Adapter1``, ``Device1``, ``GattService1``, ``GattCharacteristic1``,
``GattDescriptor1``, ``AgentManager1``) as dbus-fast service interfaces.

They are thin: every method and property delegates to the model in :mod:`simulators.bluez.core`,
which holds the state that outlives one export (a service restart exports fresh interfaces for the
same adapters and bonded devices). ``ObjectManager.GetManagedObjects`` at ``/`` and the
``InterfacesAdded``/``InterfacesRemoved`` signals come from dbus-fast's own object manager.

The property and method names and signatures are BlueZ's (doc/org.bluez.*.rst, BlueZ 5.7x).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from dbus_fast import PropertyAccess, Variant
from dbus_fast.annotations import (
    DBusBool,
    DBusBytes,
    DBusDict,
    DBusInt16,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt16,
    DBusUInt32,
    DBusUnixFd,
)
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

if TYPE_CHECKING:
    from simulators.bluez.core import Adapter, DeviceObj, GattChar, GattDesc, GattSvc, VirtualBlueZ

DBusStrList = Annotated[list[str], DBusSignature("as")]
DBusObjectPathList = Annotated[list[str], DBusSignature("ao")]
DBusManufacturerData = Annotated[dict[int, Variant], DBusSignature("a{qv}")]
DBusFdMtu = Annotated[tuple[int, int], DBusSignature("hq")]

_ = (DBusUnixFd,)  # part of DBusFdMtu's signature; imported for readers looking for the fd type


class AgentManager1(ServiceInterface):
    """Pairing agents: recorded, never called (the virtual peripherals pair "just works")."""

    def __init__(self, sim: VirtualBlueZ) -> None:
        super().__init__("org.bluez.AgentManager1")
        self.sim = sim

    @dbus_method()
    def RegisterAgent(self, agent: DBusObjectPath, capability: DBusStr):
        self.sim.agents[agent] = capability

    @dbus_method()
    def UnregisterAgent(self, agent: DBusObjectPath):
        self.sim.agents.pop(agent, None)

    @dbus_method()
    def RequestDefaultAgent(self, agent: DBusObjectPath):
        self.sim.default_agent = agent


class Adapter1(ServiceInterface):
    def __init__(self, sim: VirtualBlueZ, adapter: Adapter) -> None:
        super().__init__("org.bluez.Adapter1")
        self.sim = sim
        self.a = adapter

    @dbus_method()
    def StartDiscovery(self):
        self.sim.start_discovery(self.a, self.sim.current_sender)

    @dbus_method()
    def StopDiscovery(self):
        self.sim.stop_discovery(self.a, self.sim.current_sender)

    @dbus_method()
    def SetDiscoveryFilter(self, properties: DBusDict):
        self.sim.set_discovery_filter(self.a, self.sim.current_sender, properties)

    @dbus_method()
    def GetDiscoveryFilters(self) -> DBusStrList:
        return ["UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData", "Discoverable", "Pattern"]

    @dbus_method()
    async def RemoveDevice(self, device: DBusObjectPath):
        await self.sim.remove_device(self.a, device)

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> DBusStr:
        return self.a.address

    @dbus_property(access=PropertyAccess.READ)
    def AddressType(self) -> DBusStr:
        return "public"

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> DBusStr:
        return self.a.alias

    @dbus_property()
    def Alias(self) -> DBusStr:
        return self.a.alias

    @Alias.setter  # type: ignore[no-redef]
    def Alias(self, value: DBusStr):
        self.a.alias = value

    @dbus_property(access=PropertyAccess.READ)
    def Class(self) -> DBusUInt32:
        return 0x000000

    @dbus_property()
    def Powered(self) -> DBusBool:
        return self.a.powered

    @Powered.setter  # type: ignore[no-redef]
    def Powered(self, value: DBusBool):
        self.sim.set_powered(self.a, bool(value))

    @dbus_property(access=PropertyAccess.READ)
    def PowerState(self) -> DBusStr:
        return "on" if self.a.powered else "off"

    @dbus_property()
    def Discoverable(self) -> DBusBool:
        return False

    @Discoverable.setter  # type: ignore[no-redef]
    def Discoverable(self, value: DBusBool):
        pass

    @dbus_property()
    def Pairable(self) -> DBusBool:
        return True

    @Pairable.setter  # type: ignore[no-redef]
    def Pairable(self, value: DBusBool):
        pass

    @dbus_property(access=PropertyAccess.READ)
    def Discovering(self) -> DBusBool:
        return self.a.discovering

    @dbus_property(access=PropertyAccess.READ)
    def UUIDs(self) -> DBusStrList:
        return []

    @dbus_property(access=PropertyAccess.READ)
    def Modalias(self) -> DBusStr:
        return "usb:v1D6Bp0246d0548"

    @dbus_property(access=PropertyAccess.READ)
    def Roles(self) -> DBusStrList:
        return ["central", "peripheral"]


class Device1(ServiceInterface):
    def __init__(self, sim: VirtualBlueZ, dev: DeviceObj) -> None:
        super().__init__("org.bluez.Device1")
        self.sim = sim
        self.d = dev

    @dbus_method()
    async def Connect(self):
        await self.sim.connect(self.d)

    @dbus_method()
    async def Disconnect(self):
        await self.sim.disconnect(self.d)

    @dbus_method()
    async def Pair(self):
        await self.sim.pair(self.d)

    @dbus_method()
    def CancelPairing(self):
        pass

    @dbus_method()
    async def ConnectProfile(self, uuid: DBusStr):
        await self.sim.connect(self.d)

    @dbus_method()
    async def DisconnectProfile(self, uuid: DBusStr):
        pass

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> DBusStr:
        return self.d.peripheral.address

    @dbus_property(access=PropertyAccess.READ)
    def AddressType(self) -> DBusStr:
        return self.d.peripheral.address_type

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> DBusStr:
        return self.d.peripheral.name

    @dbus_property()
    def Alias(self) -> DBusStr:
        return self.d.alias or self.d.peripheral.name

    @Alias.setter  # type: ignore[no-redef]
    def Alias(self, value: DBusStr):
        self.d.alias = value

    @dbus_property(access=PropertyAccess.READ)
    def Paired(self) -> DBusBool:
        return self.d.paired

    @dbus_property(access=PropertyAccess.READ)
    def Bonded(self) -> DBusBool:
        return self.d.paired

    @dbus_property()
    def Trusted(self) -> DBusBool:
        return self.d.trusted

    @Trusted.setter  # type: ignore[no-redef]
    def Trusted(self, value: DBusBool):
        self.d.trusted = bool(value)

    @dbus_property()
    def Blocked(self) -> DBusBool:
        return False

    @Blocked.setter  # type: ignore[no-redef]
    def Blocked(self, value: DBusBool):
        pass

    @dbus_property(access=PropertyAccess.READ)
    def LegacyPairing(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ)
    def RSSI(self) -> DBusInt16:
        return self.d.rssi

    @dbus_property(access=PropertyAccess.READ)
    def TxPower(self) -> DBusInt16:
        return self.d.peripheral.tx_power

    @dbus_property(access=PropertyAccess.READ)
    def Connected(self) -> DBusBool:
        return self.d.connected

    @dbus_property(access=PropertyAccess.READ)
    def UUIDs(self) -> DBusStrList:
        return list(self.d.uuids)

    @dbus_property(access=PropertyAccess.READ)
    def Adapter(self) -> DBusObjectPath:
        return self.d.adapter.path

    @dbus_property(access=PropertyAccess.READ)
    def ManufacturerData(self) -> DBusManufacturerData:
        return {k: Variant("ay", v) for k, v in self.d.manufacturer_data.items()}

    @dbus_property(access=PropertyAccess.READ)
    def ServiceData(self) -> DBusDict:
        return {k: Variant("ay", v) for k, v in self.d.service_data.items()}

    @dbus_property(access=PropertyAccess.READ)
    def ServicesResolved(self) -> DBusBool:
        return self.d.services_resolved

    @dbus_property(access=PropertyAccess.READ)
    def AdvertisingFlags(self) -> DBusBytes:
        return bytes([0x06])  # LE general discoverable, BR/EDR not supported


class GattService1(ServiceInterface):
    def __init__(self, svc: GattSvc) -> None:
        super().__init__("org.bluez.GattService1")
        self.s = svc

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self.s.service.uuid

    @dbus_property(access=PropertyAccess.READ)
    def Device(self) -> DBusObjectPath:
        return self.s.dev.path

    @dbus_property(access=PropertyAccess.READ)
    def Primary(self) -> DBusBool:
        return self.s.service.primary

    @dbus_property(access=PropertyAccess.READ)
    def Includes(self) -> DBusObjectPathList:
        return []

    @dbus_property(access=PropertyAccess.READ)
    def Handle(self) -> DBusUInt16:
        return self.s.service.handle


class GattCharacteristic1(ServiceInterface):
    def __init__(self, sim: VirtualBlueZ, char: GattChar) -> None:
        super().__init__("org.bluez.GattCharacteristic1")
        self.sim = sim
        self.c = char

    @dbus_method()
    async def ReadValue(self, options: DBusDict) -> DBusBytes:
        return await self.sim.read_char(self.c)

    @dbus_method()
    async def WriteValue(self, value: DBusBytes, options: DBusDict):
        await self.sim.write_char(self.c, bytes(value), options)

    @dbus_method()
    def StartNotify(self):
        self.sim.start_notify(self.c, self.sim.current_sender)

    @dbus_method()
    def StopNotify(self):
        self.sim.stop_notify(self.c, self.sim.current_sender)

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self.c.char.uuid

    @dbus_property(access=PropertyAccess.READ)
    def Service(self) -> DBusObjectPath:
        return self.c.svc.path

    @dbus_property(access=PropertyAccess.READ)
    def Value(self) -> DBusBytes:
        return self.c.char.value

    @dbus_property(access=PropertyAccess.READ)
    def Notifying(self) -> DBusBool:
        return self.c.notifying

    @dbus_property(access=PropertyAccess.READ)
    def Flags(self) -> DBusStrList:
        return list(self.c.char.flags)

    @dbus_property(access=PropertyAccess.READ)
    def Handle(self) -> DBusUInt16:
        return self.c.char.handle + 1

    @dbus_property(access=PropertyAccess.READ)
    def MTU(self) -> DBusUInt16:
        return self.c.dev.mtu


class AcquirableGattCharacteristic1(GattCharacteristic1):
    """A characteristic that also offers ``AcquireNotify`` (BlueZ adds ``NotifyAcquired``)."""

    @dbus_method()
    async def AcquireNotify(self, options: DBusDict) -> DBusFdMtu:
        return await self.sim.acquire_notify(self.c, self.sim.current_sender)

    @dbus_property(access=PropertyAccess.READ)
    def NotifyAcquired(self) -> DBusBool:
        return self.c.acquired is not None


class GattDescriptor1(ServiceInterface):
    def __init__(self, sim: VirtualBlueZ, desc: GattDesc) -> None:
        super().__init__("org.bluez.GattDescriptor1")
        self.sim = sim
        self.g = desc

    @dbus_method()
    async def ReadValue(self, options: DBusDict) -> DBusBytes:
        return await self.sim.read_desc(self.g)

    @dbus_method()
    async def WriteValue(self, value: DBusBytes, options: DBusDict):
        await self.sim.write_desc(self.g, bytes(value))

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self.g.desc.uuid

    @dbus_property(access=PropertyAccess.READ)
    def Characteristic(self) -> DBusObjectPath:
        return self.g.char.path

    @dbus_property(access=PropertyAccess.READ)
    def Value(self) -> DBusBytes:
        return self.g.desc.value

    @dbus_property(access=PropertyAccess.READ)
    def Flags(self) -> DBusStrList:
        return list(self.g.desc.flags)

    @dbus_property(access=PropertyAccess.READ)
    def Handle(self) -> DBusUInt16:
        return self.g.desc.handle


def variant_dict(props: dict[str, tuple[str, Any]]) -> dict[str, Variant]:
    return {k: Variant(sig, v) for k, (sig, v) in props.items()}
