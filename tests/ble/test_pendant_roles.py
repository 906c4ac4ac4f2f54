"""BLE pendant press patterns and roles (issue 14), through the virtual BlueZ and unmodified bleak.

A format 1.1 pendant tells how its latest press was made; ``roles`` makes ``press`` a call and
``long_press`` an SOS. A pattern not listed, and every press of a format 1.0 pendant, is an SOS; missed
advertisements before a call are reported as an SOS first. End to end, the real gatewayd turns them into
call requests (coalesced per person) and SOS alerts at the cloud, and an ack closes the request."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from drivers.base import ButtonPress
from drivers.ble import gatt
from drivers.options import OptionError
from simulators.bluez.peripherals import SosPendant
from simulators.broker import Mosquitto
from tests.ble.util import Readings, make_driver, running, virtual_bluez
from tests.helpers import Cloud, Collector, GatewayProcess, gateway_config, until

SOS = "C0:FF:EE:00:00:03"
ROLES = {"press": "call", "long_press": "sos"}


def test_the_pattern_byte_is_a_compatible_extension_of_the_format() -> None:
    old = bytes([0x10, 0x01, 0x07, 0x00, 0x50])
    assert gatt.decode_sos_state(old) == gatt.SosState(7, True, False, 80, None)
    new = gatt.SosState(8, True, False, 80, "long_press")
    data = gatt.encode_sos_state(new)
    assert data == bytes([0x11, 0x01, 0x08, 0x00, 0x50, 0x04]) and gatt.decode_sos_state(data) == new
    assert gatt.encode_sos_state(gatt.decode_sos_state(old)) == old
    assert gatt.decode_sos_state(bytes([0x11, 0x01, 0x08, 0x00, 0x50, 0x00])).pattern is None  # not told
    for bad in (old + b"\x01", data[:-1], bytes([0x11, 0x01, 0x08, 0x00, 0x50, 0x07]), bytes([0x12, 0, 0, 0, 0, 1])):
        with pytest.raises(gatt.GattDecodeError):
            gatt.decode_sos_state(bad)


def test_roles_are_validated() -> None:
    with pytest.raises(OptionError) as exc:
        make_driver("ble-sos", "p", SOS, Readings(), roles={"press": "butler"})
    assert exc.value.key == "roles"
    with pytest.raises(OptionError):
        make_driver("ble-sos", "p", SOS, Readings(), roles={"squeeze": "call"})


def test_patterns_map_to_roles_and_nothing_is_guessed(tmp_path: Path) -> None:
    pendant = SosPendant(SOS)
    readings = Readings()
    drv = make_driver("ble-sos", "pendant", SOS, readings, state_path=str(tmp_path / "p.json"), roles=ROLES)

    def presses() -> list[ButtonPress]:
        return list(readings.of(ButtonPress))

    async def go() -> None:
        async with virtual_bluez([pendant]) as sim, running(drv):
            await until(lambda: readings.connected_at("pendant"), 10, "the pendant heard")
            await pendant.press()  # format 1.0: no pattern, an SOS as ever
            await until(lambda: len(presses()) == 1, 5, "the 1.0 press")
            for i, pattern in enumerate(("press", "long_press", "double_press"), start=2):
                await asyncio.sleep(0.4)
                await pendant.press(pattern)
                await until(lambda i=i: len(presses()) == i, 5, f"the {pattern}")
            await asyncio.sleep(0.4)
            # two presses out of earshot, then a call heard: the missed ones may have been an SOS
            await sim.out_of_range(SOS)
            await pendant.press("long_press")
            await pendant.press("press")
            sim.in_range(SOS)
            await until(lambda: len(presses()) == 6, 5, "the missed presses and the call")

    asyncio.run(go())
    got = [(p.role, p.pattern, p.extra["presses"]) for p in presses()]
    assert got == [
        ("sos", None, 1),
        ("call", "press", 1),
        ("sos", "long_press", 1),
        ("sos", "double_press", 1),  # not in roles: SOS
        ("sos", None, 1),  # the missed one, reported first
        ("call", "press", 1),
    ]
    assert presses()[4].extra["missed"] is True and presses()[4].press_id == presses()[5].press_id + "-missed"


def test_a_pendant_whose_every_pattern_is_a_call_reports_missed_presses_as_calls(tmp_path: Path) -> None:
    pendant = SosPendant(SOS)
    readings = Readings()
    every = {p: "call" for p in ("press", "double_press", "triple_press", "long_press")}
    every |= {"long_double_press": "call", "long_triple_press": "call", "hold_press": "call"}
    drv = make_driver("ble-sos", "butler", SOS, readings, state_path=str(tmp_path / "b.json"), roles=every)

    async def go() -> None:
        async with virtual_bluez([pendant]) as sim, running(drv):
            await until(lambda: readings.connected_at("butler"), 10, "the pendant heard")
            await pendant.press("press")
            await until(lambda: readings.of(ButtonPress), 5, "the first press")
            await asyncio.sleep(0.4)
            await sim.out_of_range(SOS)
            await pendant.press("press")
            await pendant.press("double_press")
            sim.in_range(SOS)
            await until(lambda: len(readings.of(ButtonPress)) == 2, 5, "the missed presses")

    asyncio.run(go())
    got = [(p.role, p.pattern, p.extra["presses"]) for p in readings.of(ButtonPress)]
    assert got == [("call", "press", 1), ("call", "double_press", 2)]


DEVICES = f"""
[[devices]]
id = "pendant-anna"
kind = "ble-sos"
transport = "ble"
address = "{SOS}"
roles = {{ press = "call", long_press = "sos" }}

[rules]
tick_s = 0.1
call_reminder_s = 600

[[rules.person]]
id = "anna"
devices = ["pendant-anna"]
"""


def _alerts(cloud: Collector, kind: str) -> list[dict[str, Any]]:
    return sorted((a for a in cloud.of_type("alert") if a["kind"] == kind), key=lambda a: a["seq"])


def test_call_and_sos_presses_of_a_ble_pendant_end_to_end(tmp_path: Path, broker: Mosquitto, cloud: Collector) -> None:
    pendant = SosPendant(SOS)
    config = gateway_config(tmp_path, broker.port, devices=DEVICES)
    gw = GatewayProcess(config)
    downlink = Cloud(broker.port, "homecare/v1/gw-test")

    async def go() -> dict[str, Any]:
        async with virtual_bluez([pendant]):
            gw.start()  # inherits DBUS_SYSTEM_BUS_ADDRESS of the virtual BlueZ
            try:
                await until(lambda: cloud.of_type("device_state"), 30, "the pendant heard by gatewayd")
                await pendant.press("press")
                await until(lambda: _alerts(cloud, "call"), 20, "the call at the cloud")
                await asyncio.sleep(0.5)
                await pendant.press("press")
                await until(lambda: len(_alerts(cloud, "call")) == 2, 20, "the second call press")
                await asyncio.sleep(0.5)
                await pendant.press("long_press")
                await until(lambda: _alerts(cloud, "sos"), 20, "the SOS at the cloud")
                call_id = _alerts(cloud, "call")[0]["alert_id"]
                _, ack = await asyncio.to_thread(downlink.ask, "alert-ack", {"request_id": "a1", "alert_id": call_id})
                await asyncio.sleep(0.5)
                await pendant.press("press")
                await until(lambda: len(_alerts(cloud, "call")) == 3, 20, "a new call request")
                await asyncio.sleep(1.0)  # repeated advertisements would arrive by now
                assert gw.proc is not None
                gw.proc.send_signal(signal.SIGTERM)  # without blocking the loop the virtual BlueZ runs on
                await until(lambda: not gw.alive(), 15, "gatewayd to stop")
                gw.terminate()
            finally:
                gw.stop_quietly()
                downlink.close()
        return ack

    ack = asyncio.run(go())
    assert ack["ok"] is True
    first, second, fresh = _alerts(cloud, "call")
    (sos,) = _alerts(cloud, "sos")
    assert (first["severity"], first["pattern"], first["person_id"], first["presses"]) == ("medium", "press", "anna", 1)
    assert second["alert_id"] == first["alert_id"] and second["presses"] == 2
    assert fresh["alert_id"] != first["alert_id"] and fresh["presses"] == 1
    assert (sos["severity"], sos["pattern"], sos["device_id"]) == ("critical", "long_press", "pendant-anna")
    assert "Traceback" not in gw.log()
