"""A simulated BTHome v2 button (a Shelly BLU Button1 or any BTHome v2 device with a button), for the
virtual BlueZ: passive advertisements only, service data under the 16-bit UUID 0xFCD2.

The encoder here is written from the BTHome v2 format (bthome.io/format, bthome.io/encryption), not
from the parser the gateway uses (bthome-ble), so the gateway's driver is tested on what an independent
encoder wrote:

- the *device information* byte: bit 0 encrypted, bit 2 trigger based (a button that only sends on a
  press), bits 5-7 the BTHome version (2);
- then objects, each an object id and its value, in ascending id order: ``0x00`` packet id (uint8,
  +1 per new packet; the same id means the same packet repeated), ``0x01`` battery (uint8, %),
  ``0x3A`` button event (uint8: ``0x01`` press, ``0x02`` double, ``0x03`` triple, ``0x04`` long,
  ``0x05`` long double, ``0x06`` long triple, ``0x80`` hold);
- encrypted: the objects are AES-128-CCM encrypted (no associated data, 4-byte MIC) with the nonce
  MAC (6 bytes, as written) + UUID16 little-endian (``d2 fc``) + the device information byte + the
  counter (uint32 little-endian); the advertisement carries device info, ciphertext, counter, MIC.

Behaviour: a press makes a new packet (new packet id, the event, the battery) that is repeated for
``burst_s`` every ``burst_interval_s`` (byte-identical repeats, as a real button re-sends one frame;
``reencrypt_repeats`` encrypts each repeat again with a new counter, so only the packet id tells a
repeat); between presses, in *beacon mode*, a packet with a new packet id and the battery, without
an event, every ``beacon_interval_s`` (``None``: silent between presses, as a Shelly BLU Button out
of beacon mode).
"""

from __future__ import annotations

import time
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from simulators.bluez.core import Peripheral
from simulators.bluez.profiles import BUTTON_EVENT_CODES

BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
BTHOME_UUID16_LE = b"\xd2\xfc"

OBJ_PACKET_ID = 0x00
OBJ_BATTERY = 0x01
OBJ_BUTTON = 0x3A


INFO_ENCRYPTED = 0x01
INFO_TRIGGER = 0x04
INFO_VERSION_2 = 2 << 5


def objects(packet_id: int | None, battery: int | None = None, event: str | None = None) -> bytes:
    """BTHome v2 objects in ascending object id order."""
    out = b""
    if packet_id is not None:
        out += bytes([OBJ_PACKET_ID, packet_id & 0xFF])
    if battery is not None:
        out += bytes([OBJ_BATTERY, battery])
    if event is not None:
        out += bytes([OBJ_BUTTON, BUTTON_EVENT_CODES[event]])
    return out


def service_data(
    payload: bytes, *, mac: str, key: bytes | None = None, counter: int = 0, trigger: bool = True
) -> bytes:
    """The 0xFCD2 service data carrying ``payload`` (objects), encrypted when ``key`` is given."""
    info = INFO_VERSION_2 | (INFO_TRIGGER if trigger else 0) | (INFO_ENCRYPTED if key is not None else 0)
    if key is None:
        return bytes([info]) + payload
    count = (counter & 0xFFFFFFFF).to_bytes(4, "little")
    nonce = bytes.fromhex(mac.replace(":", "")) + BTHOME_UUID16_LE + bytes([info]) + count
    sealed = AESCCM(key, tag_length=4).encrypt(nonce, payload, None)
    return bytes([info]) + sealed[:-4] + count + sealed[-4:]


class BthomeButton(Peripheral):
    """A BTHome v2 button that only advertises (see the module docstring)."""

    kind = "bthome"

    def __init__(
        self,
        address: str,
        name: str = "HC BTHome",
        *,
        key: bytes | None = None,
        battery: int = 90,
        packet_id: int = 0,
        counter: int = 1,
        beacon_interval_s: float | None = 1.0,
        burst_interval_s: float = 0.03,
        burst_s: float = 1.0,
        reencrypt_repeats: bool = False,
        **kw: Any,
    ) -> None:
        self.key = key
        self.battery = battery
        self.packet_id = packet_id & 0xFF
        self.counter = counter
        self.beacon_interval_s = beacon_interval_s
        self.burst_interval_s = burst_interval_s
        self.burst_s = burst_s
        self.reencrypt_repeats = reencrypt_repeats
        self.last_press = -1e9
        self.garbage_until = -1e9
        self.press_payload = b""
        self.current = b""
        self.presses: list[dict[str, Any]] = []
        self.sent = 0
        super().__init__(address, name, adv_interval_s=beacon_interval_s or 1.0, **kw)
        self.connectable = False
        self._beacon()

    # -- packets --------------------------------------------------------------------------------

    def _seal(self, payload: bytes) -> bytes:
        self.counter = (self.counter + 1) & 0xFFFFFFFF
        return service_data(payload, mac=self.address, key=self.key, counter=self.counter)

    def _next_packet_id(self) -> int:
        self.packet_id = (self.packet_id + 1) & 0xFF
        return self.packet_id

    def _beacon(self) -> None:
        self.current = self._seal(objects(self._next_packet_id(), self.battery))

    def bursting(self) -> bool:
        return time.monotonic() - self.last_press < self.burst_s

    # -- advertising ----------------------------------------------------------------------------

    def advertising(self) -> bool:
        return self.bursting() or self.beacon_interval_s is not None or time.monotonic() < self.garbage_until

    def adv_interval(self) -> float:
        return self.burst_interval_s if self.bursting() else (self.beacon_interval_s or 1.0)

    def service_data(self) -> dict[str, bytes]:
        self.sent += 1
        if time.monotonic() < self.garbage_until:
            return {BTHOME_UUID: bytes([INFO_VERSION_2 | INFO_TRIGGER, OBJ_BUTTON])}  # an object cut short
        if self.bursting():
            if self.reencrypt_repeats and self.key is not None:
                self.current = self._seal(self.press_payload)
        elif self.beacon_interval_s is not None and self.sent > 1:
            self._beacon()
        return {BTHOME_UUID: self.current}

    # -- behaviour ------------------------------------------------------------------------------

    def press(self, event: str = "press") -> dict[str, Any]:
        if event not in BUTTON_EVENT_CODES:
            raise ValueError(f"event must be one of {', '.join(BUTTON_EVENT_CODES)}")
        self.press_payload = objects(self._next_packet_id(), self.battery, event)
        self.current = self._seal(self.press_payload)
        self.last_press = time.monotonic()
        self.sent = 0
        info = {
            "event": event,
            "packet_id": self.packet_id,
            "counter": self.counter,
            "pressed_at": time.time(),
            "pressed_mono": self.last_press,
        }
        self.presses.append(info)
        self.wake()
        return info

    def status(self) -> dict[str, Any]:
        return {
            "packet_id": self.packet_id,
            "counter": self.counter,
            "battery": self.battery,
            "encrypted": self.key is not None,
            "presses": len(self.presses),
        }

    async def command(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if op == "press":
            return self.press(str(args.get("event", "press")))
        if op == "set":
            if "battery" in args:
                self.battery = int(args["battery"])
            if "key" in args:
                self.key = bytes.fromhex(str(args["key"])) if args["key"] else None
            return {"ok": True}
        if op == "garbage":
            # A malformed advertisement for ``seconds`` (a damaged frame, a buggy firmware).
            self.garbage_until = time.monotonic() + float(args.get("seconds", 1.0))
            self.wake()
            return {"ok": True}
        return await super().command(op, args)
