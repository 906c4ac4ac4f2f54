"""A simulated peripheral's GATT database: services, characteristics and descriptors with their
handles, flags and behaviour (what a read returns, what a write does).

Handles are allocated the way a real GATT server lays them out (service declaration, then per
characteristic its declaration, value and descriptors), and the virtual BlueZ names its D-Bus
objects after them exactly as bluetoothd does (``service000c/char000d/desc000f``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

CCCD_UUID = "00002902-0000-1000-8000-00805f9b34fb"


class AttError(Exception):
    """An ATT error response; BlueZ reports it as ``org.bluez.Error.Failed: Operation failed with ATT
    error: 0x..`` (which bleak turns into ``BleakGATTProtocolError``)."""

    INSUFFICIENT_AUTHENTICATION = 0x05
    REQUEST_NOT_SUPPORTED = 0x06
    INVALID_ATTRIBUTE_LENGTH = 0x0D
    INSUFFICIENT_ENCRYPTION = 0x0F
    VALUE_NOT_ALLOWED = 0x13
    CCCD_IMPROPERLY_CONFIGURED = 0xFD
    PROCEDURE_IN_PROGRESS = 0xFE

    def __init__(self, code: int, text: str = "") -> None:
        super().__init__(text or f"ATT error {code:#04x}")
        self.code = code


Reader = Callable[[], bytes]
Writer = Callable[[bytes], Awaitable[None] | None]
Subscriber = Callable[[bool], None]


@dataclass(eq=False)
class Descriptor:
    uuid: str
    flags: list[str] = field(default_factory=lambda: ["read"])
    value: bytes = b""
    handle: int = 0


@dataclass(eq=False)
class Characteristic:
    uuid: str
    flags: list[str]
    value: bytes = b""
    read: Reader | None = None  # computes the value of a read; default: ``value``
    write: Writer | None = None
    on_subscribe: Subscriber | None = None  # notifications/indications enabled (True) or disabled
    secure: bool = False  # needs an encrypted (bonded) link
    acquirable: bool = False  # AcquireNotify offered (BlueZ: NotifyAcquired property present)
    descriptors: list[Descriptor] = field(default_factory=list)
    handle: int = 0  # declaration handle; the value handle is handle + 1
    subscribed: bool = False  # the peer enabled notifications/indications (CCCD)

    @property
    def notifies(self) -> bool:
        return "notify" in self.flags or "indicate" in self.flags


@dataclass(eq=False)
class Service:
    uuid: str
    characteristics: list[Characteristic]
    primary: bool = True
    handle: int = 0


def assign_handles(services: list[Service], first: int = 0x000C) -> None:
    """Lay the database out as a GATT server does, leaving room for GAP/GATT below ``first``."""
    h = first
    for svc in services:
        svc.handle = h
        h += 1
        for char in svc.characteristics:
            if char.notifies and not any(d.uuid == CCCD_UUID for d in char.descriptors):
                char.descriptors.append(Descriptor(CCCD_UUID, ["read", "write"], b"\x00\x00"))
            char.handle = h
            h += 2  # declaration + value
            for desc in char.descriptors:
                desc.handle = h
                h += 1
