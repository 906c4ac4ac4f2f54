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

from drivers.base import UnknownDeviceKind, all_kinds, driver_class


def _kind_facts() -> tuple[dict[str, str], dict[int, str], list[tuple[int, int, str, str]]]:
    """What identifies each kind, read from the driver classes of the registry (``Driver.ble_services``,
    ``ble_company_ids``, ``usb_ids``): BLE service UUID -> kind, company id -> kind, and
    (vid, pid, product substring, kind). The first kind to claim a service keeps it."""
    services: dict[str, str] = {}
    companies: dict[int, str] = {}
    usb: list[tuple[int, int, str, str]] = []
    for kind in all_kinds():
        try:
            cls = driver_class(kind)
        except (UnknownDeviceKind, ImportError):
            continue  # a kind whose libraries are missing cannot be recognised, nor used
        for uuid in cls.ble_services:
            services.setdefault(uuid.lower(), kind)
        for company in cls.ble_company_ids:
            companies.setdefault(company, kind)
        usb.extend((vid, pid, product, kind) for vid, pid, product in cls.usb_ids)
    return services, companies, usb


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
    serial_kinds = _kind_facts()[2]
    found = []
    for info in list_ports.comports():
        if info.vid is None:
            continue
        kind = None
        for vid, pid, product, k in serial_kinds:
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
    service_kinds, company_kinds, _ = _kind_facts()

    def on_adv(device: Any, adv: Any) -> None:
        # Service UUIDs, then service data UUIDs (a BTHome device lists 0xFCD2 only as service data).
        uuids = [*adv.service_uuids, *adv.service_data]
        kind = next((service_kinds[u.lower()] for u in uuids if u.lower() in service_kinds), None)
        if kind is None:
            kind = next((company_kinds[c] for c in adv.manufacturer_data if c in company_kinds), None)
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
