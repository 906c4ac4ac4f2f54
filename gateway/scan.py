"""``gatewayctl devices scan`` and ``pair``: what a technician can plug in or pair, without the daemon.

Serial: USB serial adapters from pyserial's listing, with their stable ``/dev/serial/by-id`` path and the
kind we recognise from the USB ids and product string. Bluetooth LE: a bleak scan (BlueZ on the system
bus, or the virtual BlueZ of ``gateway-sim ble`` via ``DBUS_SYSTEM_BUS_ADDRESS``), kinds recognised from
the advertised GATT services.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from serial.tools import list_ports

from drivers.ble import gatt

# 16-bit SIG service UUIDs -> our device kind (see drivers/base.py DRIVERS)
BLE_SERVICE_KINDS: dict[str, str] = {
    "0000180d-0000-1000-8000-00805f9b34fb": "ble-wrist",  # Heart Rate
    "00001822-0000-1000-8000-00805f9b34fb": "ble-wrist",  # Pulse Oximeter
    "00001810-0000-1000-8000-00805f9b34fb": "ble-bp-cuff",  # Blood Pressure
    gatt.RAW_PPG_SERVICE.lower(): "ble-wrist",  # the vendor-neutral raw PPG service (docs/ble.md)
    gatt.SOS_SERVICE.lower(): "ble-sos",  # SOS pendant service (docs/ble.md)
}
# Manufacturer data company id -> kind (pendants that only advertise a press counter)
BLE_COMPANY_KINDS: dict[int, str] = {gatt.SOS_COMPANY_ID: "ble-sos"}
# (vid, pid, product substring or "") -> kind
SERIAL_KINDS: list[tuple[int, int, str, str]] = [
    (0x0403, 0x6001, "RFXtrx", "rfxtrx-sos"),
    (0x0403, 0x6015, "RFXtrx", "rfxtrx-sos"),
    (0x10C4, 0xEA60, "", "serial-cms50"),  # CP210x bridge used by Contec CMS50D+/E
]

Progress = Callable[[str], None]


def _by_id_links() -> dict[str, str]:
    base = "/dev/serial/by-id"
    out = {}
    if os.path.isdir(base):
        for name in os.listdir(base):
            out[os.path.realpath(os.path.join(base, name))] = os.path.join(base, name)
    return out


def serial_devices() -> list[dict[str, Any]]:
    links = _by_id_links()
    found = []
    for info in list_ports.comports():
        if info.vid is None:
            continue
        kind = None
        for vid, pid, product, k in SERIAL_KINDS:
            if info.vid == vid and info.pid == pid and product.lower() in (info.product or "").lower():
                kind = k
                break
        found.append(
            {
                "transport": "serial",
                "address": links.get(os.path.realpath(info.device), info.device),
                "kind": kind,
                "name": info.product or info.description,
                "usb_vid": info.vid,
                "usb_pid": info.pid,
                "usb_serial": info.serial_number,
                "rssi_dbm": None,
            }
        )
    return found


async def _ble_scan(seconds: float, progress: Progress) -> list[dict[str, Any]]:
    from bleak import BleakScanner

    seen: dict[str, dict[str, Any]] = {}

    def on_adv(device: Any, adv: Any) -> None:
        kind = next((BLE_SERVICE_KINDS[u.lower()] for u in adv.service_uuids if u.lower() in BLE_SERVICE_KINDS), None)
        if kind is None:
            kind = next((BLE_COMPANY_KINDS[c] for c in adv.manufacturer_data if c in BLE_COMPANY_KINDS), None)
        seen[device.address] = {
            "transport": "ble",
            "address": device.address,
            "kind": kind,
            "name": adv.local_name or device.name,
            "rssi_dbm": adv.rssi,
        }

    async with BleakScanner(on_adv):
        t0 = asyncio.get_running_loop().time()
        while (elapsed := asyncio.get_running_loop().time() - t0) < seconds:
            progress(f"scanning Bluetooth LE... {elapsed:.0f}/{seconds:.0f} s, {len(seen)} seen")
            await asyncio.sleep(0.5)
    return sorted(seen.values(), key=lambda d: -(d["rssi_dbm"] or -999))


def scan(*, seconds: float, progress: Progress) -> list[dict[str, Any]]:
    progress("listing USB serial devices...")
    found = serial_devices()
    try:
        found += asyncio.run(_ble_scan(seconds, progress))
    except Exception as exc:  # noqa: BLE001 - the BLE stack may be absent; serial results still count
        progress(f"Bluetooth LE scan not possible: {exc}")
        found.append(
            {"transport": "ble", "address": "-", "kind": None, "name": f"BLE scan failed: {exc}", "rssi_dbm": None}
        )
    progress(f"scan done: {len(found)} found")
    return found


async def _pair(address: str, timeout_s: float, progress: Progress) -> dict[str, Any]:
    from bleak import BleakClient, BleakScanner

    progress(f"looking for {address}...")
    device = await BleakScanner.find_device_by_address(address, timeout=min(timeout_s, 20.0))
    if device is None:
        return {"address": address, "paired": False, "detail": "not found: is it awake and in pairing mode?"}
    progress(f"connecting to {address}...")
    async with BleakClient(device, timeout=timeout_s) as client:
        progress(f"pairing with {address}...")
        await client.pair()
        return {"address": address, "paired": True, "detail": "bonded"}


def pair(address: str, *, timeout_s: float, progress: Progress) -> dict[str, Any]:
    try:
        return asyncio.run(_pair(address, timeout_s, progress))
    except Exception as exc:  # noqa: BLE001 - reported to the technician with its reason
        return {"address": address, "paired": False, "detail": f"{type(exc).__name__}: {exc}"}
