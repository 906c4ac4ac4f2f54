"""BTHome v2 buttons (ble-bthome): the spec's encryption vector, what bthome-ble decodes of what the
simulator's independent encoder wrote, packet-id repeats as properties, and the driver through real
bleak, real dbus-fast and a real dbus-daemon with the virtual BlueZ: every event type to its role,
repeats suppressed by packet id (also across a driver restart), encrypted with the right key, refused
with a wrong one (counted, logged once, no press, the device next to it unaffected), battery; and
gatewayd end to end with a real Mosquitto: an encrypted long press becomes one SOS alert."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from drivers.base import ButtonPress, DeviceConfigError, DeviceStatus, LinkState
from drivers.ble.bthome import (
    BTHOME_SERVICE,
    NO_PACKET_ID_REPEAT_S,
    REPEAT_WINDOW_S,
    BthomeButtonDriver,
    BthomeDecoder,
    Outcome,
    PacketTracker,
    read_bindkey,
)
from drivers.ble.stack import Sighting
from simulators.bluez.bthome import BthomeButton, objects, service_data
from simulators.bluez.peripherals import SosPendant
from simulators.bluez.profiles import BUTTON_EVENT_CODES
from simulators.broker import Mosquitto
from tests.ble.util import Readings, make_driver, running, virtual_bluez
from tests.helpers import Collector, GatewayProcess, gateway_config, until

BUTTON = "C0:FF:EE:00:00:10"
SOS = "C0:FF:EE:00:00:03"
KEY = bytes.fromhex("5a3c6f0e9b8d7c6a5f4e3d2c1b0a9988")
OTHER_KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
ROLES = {"press": "call", "long_press": "sos"}  # double_press and the rest are not listed: SOS


def key_file(tmp_path: Path, key: bytes = KEY, name: str = "bthome.key") -> Path:
    path = tmp_path / name
    path.write_text(key.hex() + "\n")
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------------------------------
# Bytes alone
# --------------------------------------------------------------------------------------------------


def test_encoder_matches_the_spec_encryption_vector() -> None:
    # The example of bthome.io/encryption (also in ble_monitor's and bthome-ble's tests): temperature
    # 25.06 and humidity 50.55 from MAC 54:48:E6:8F:80:A5, counter bytes 00 11 22 33, key 231d...b932.
    sealed = service_data(
        bytes.fromhex("02CA0903BF13"),
        mac="54:48:E6:8F:80:A5",
        key=bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932"),
        counter=int.from_bytes(bytes.fromhex("00112233"), "little"),
        trigger=False,
    )
    assert sealed == bytes.fromhex("41a47266c95f730011223378237214")


@pytest.mark.parametrize("encrypted", [False, True])
def test_bthome_ble_decodes_every_event_battery_and_packet_id_of_the_simulator(encrypted: bool) -> None:
    key = KEY if encrypted else None
    decoder = BthomeDecoder(BUTTON, key)
    for i, event in enumerate(BUTTON_EVENT_CODES):
        data = service_data(objects(10 + i, 60 + i, event), mac=BUTTON, key=key, counter=100 + i)
        d = decoder.decode(data, float(i))
        assert d.outcome is Outcome.OK and d.encrypted is encrypted
        assert (d.packet_id, d.events, d.battery) == (10 + i, (("button", event),), 60 + i)
    beacon = decoder.decode(service_data(objects(99, 55), mac=BUTTON, key=key, counter=200), 20.0)
    assert (beacon.outcome, beacon.packet_id, beacon.events, beacon.battery) == (Outcome.OK, 99, (), 55)


def test_refused_advertisements_say_why() -> None:
    sealed = service_data(objects(1, 80, "press"), mac=BUTTON, key=KEY, counter=7)
    plain = service_data(objects(2, 80, "press"), mac=BUTTON)
    assert BthomeDecoder(BUTTON, OTHER_KEY).decode(sealed, 0.0).outcome is Outcome.WRONG_KEY
    assert BthomeDecoder(BUTTON, None).decode(sealed, 0.0).outcome is Outcome.NO_KEY
    assert BthomeDecoder(BUTTON, KEY).decode(plain, 0.0).outcome is Outcome.PLAINTEXT_REFUSED
    # The nonce holds the MAC: the right key on another device's address does not decrypt either.
    assert BthomeDecoder("C0:FF:EE:00:00:11", KEY).decode(sealed, 0.0).outcome is Outcome.WRONG_KEY
    for bad in (b"", b"\x44", b"\x44\x3a", b"\x64\x00\x01", bytes([0x44, 0xFF, 0x01])):
        assert BthomeDecoder(BUTTON, None).decode(bad, 0.0).outcome is Outcome.UNDECODABLE, bad.hex()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.booleans())
def test_random_service_data_never_raises(data: bytes, with_key: bool) -> None:
    d = BthomeDecoder(BUTTON, KEY if with_key else None).decode(data, 0.0)
    assert d.outcome in Outcome
    assert all(ev in BUTTON_EVENT_CODES or ev == "hold_release" for _, ev in d.events)


def test_packet_tracker_repeats_window_and_restart() -> None:
    t = PacketTracker()
    assert not t.is_repeat(5, 0.0, 1000.0)
    assert t.is_repeat(5, 0.5, 1000.5) and t.is_repeat(5, 20.0, 1020.0) and t.is_repeat(5, 45.0, 1045.0)
    assert not t.is_repeat(5, 45.0 + REPEAT_WINDOW_S + 1, 2000.0), "the same id after a long silence is new"
    assert not t.is_repeat(6, 100.0, 2100.0)
    assert t.press(6, 2100.0) == "2100-1"
    # A restart: the last press's packet heard again within the window is a repeat, not later.
    again = PacketTracker.from_json(t.to_json())
    assert again.is_repeat(6, 0.0, 2110.0)
    late = PacketTracker.from_json(t.to_json())
    assert not late.is_repeat(6, 0.0, 2100.0 + REPEAT_WINDOW_S + 5)
    assert late.press(7, 2200.0) == "2200-1", "a new series after a restart"
    assert late.press(8, 2300.0) == "2200-2", "press ids go on in the series of this run"
    # A state file a full disk or a power cut left behind: a later run never reuses an earlier id.
    stale = PacketTracker.from_json(t.to_json())
    assert stale.press(7, 2100.0) == "2101-1", "after the stored series even on a clock set back"
    assert late.to_json()["series"] == 2200 and "restored" not in late.to_json()
    for damaged in (None, [], {"series": "x"}, {"series": -1, "presses": 0}, "text"):
        assert PacketTracker.from_json(damaged) == PacketTracker()
    assert PacketTracker.from_json({"series": 5, "presses": 2, "press_packet": 999}).press_packet is None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(1, 8), st.floats(0.0, 2.0), st.floats(0.0, 3 * REPEAT_WINDOW_S)),
        min_size=1,
        max_size=40,
    )
)
def test_a_packet_is_new_when_its_id_moved_on_or_after_a_silence_longer_than_the_window(
    packets: list[tuple[int, int, float, float]],
) -> None:
    # (packet id step, times heard, spacing of its repeats, silence before it). Step 0 is a device that
    # sent the same id again (a wrap, a restart of the device): new only after a silence past the window.
    assume(all(abs(silence - REPEAT_WINDOW_S) > 1e-6 for *_, silence in packets))  # not on the boundary
    tracker, mono, packet_id = PacketTracker(), 0.0, 0
    for i, (step, times, spacing, silence) in enumerate(packets):
        packet_id = (packet_id + step) & 0xFF
        expected_new = i == 0 or step != 0 or silence > REPEAT_WINDOW_S
        mono += silence
        verdicts = []
        for j in range(times):
            mono += spacing if j else 0.0  # the silence counts from the last time it was heard
            verdicts.append(not tracker.is_repeat(packet_id, mono, 1e9 + mono))
        assert verdicts == [expected_new] + [False] * (times - 1), (i, step, silence)


PRESS = (("button", "press"),)


def test_without_a_packet_id_the_same_press_is_a_repeat_only_within_one_burst() -> None:
    t = PacketTracker()
    assert not t.is_repeat_unnumbered(PRESS, 0.0)
    burst = [t.is_repeat_unnumbered(PRESS, k * 0.03) for k in range(1, int(NO_PACKET_ID_REPEAT_S / 0.03))]
    assert all(burst), "one press's burst of advertisements"
    assert not t.is_repeat_unnumbered(PRESS, NO_PACKET_ID_REPEAT_S + 0.1), "the window is not extended by repeats"
    # Presses of one pattern 10 s apart, then 25 s: each a press (they chained with a 30 s window).
    t = PacketTracker()
    assert [t.is_repeat_unnumbered(PRESS, at) for at in (0.0, 0.5, 10.0, 10.5, 35.0, 35.5, 55.0)] == [
        False,
        True,
        False,
        True,
        False,
        True,
        False,
    ]
    # Another pattern is another press at once; a clock going back is not a repeat.
    assert not t.is_repeat_unnumbered((("button", "long_press"),), 55.1)
    assert not t.is_repeat_unnumbered(PRESS, 55.2) and not t.is_repeat_unnumbered(PRESS, 50.0)


def _plain_driver(readings: Readings) -> BthomeButtonDriver:
    drv = make_driver("ble-bthome", "bt-1", BUTTON, readings)
    assert isinstance(drv, BthomeButtonDriver)
    drv.decoder = BthomeDecoder(BUTTON, None)
    return drv


def test_a_button_without_packet_id_pressed_again_is_a_press_each_time() -> None:
    press = bytes.fromhex("40 0164 3a01")  # v2, plaintext; battery 100 %; button: press. No packet id
    readings = Readings()
    drv = _plain_driver(readings)
    for start in (0.0, 10.0, 35.0):  # three presses, each advertised for 1 s every 30 ms
        for k in range(34):
            drv.on_service_data(press, 100.0 + start + k * 0.03, 1e9 + start)
    presses: list[ButtonPress] = readings.of(ButtonPress)
    assert len(presses) == 3 and len({p.press_id for p in presses}) == 3
    assert all(p.pattern == "press" and p.extra["packet_id"] is None for p in presses)
    assert drv.counters()["repeats"] == 3 * 33
    # A beacon (no event) heard between two repeats of a press leaves the second one a repeat.
    readings = Readings()
    drv = _plain_driver(readings)
    for at, data in ((0.0, press), (0.3, bytes.fromhex("40 0164")), (0.6, press)):
        drv.on_service_data(data, 100.0 + at, 1e9 + at)
    assert len(readings.of(ButtonPress)) == 1 and drv.counters()["repeats"] == 1
    # A device with a packet id keeps the spec's rule: the same id within 30 s is the same packet.
    numbered = service_data(objects(7, 100, "press"), mac=BUTTON)
    readings = Readings()
    drv = _plain_driver(readings)
    for at in (0.0, 5.0, 20.0):
        drv.on_service_data(numbered, 100.0 + at, 1e9 + at)
    assert len(readings.of(ButtonPress)) == 1


def test_bindkey_file_errors_name_the_file_never_its_content(tmp_path: Path) -> None:
    assert read_bindkey(key_file(tmp_path)) == KEY
    short = tmp_path / "short.key"
    short.write_text("5a3c6f0e9b8d7c6a5f4e3d2c1b0a99")
    notes = tmp_path / "notes.key"
    notes.write_text("my key is secret-secret-secret!!")
    spaced = tmp_path / "spaced.key"
    spaced.write_text("5a3c 6f0e 9b8d 7c6a 5f4e 3d2c 1b")
    cases = (
        (short, "expected 32 hex digits"),
        (notes, "expected 32 hex digits"),
        (spaced, "expected 32 hex digits"),
        (tmp_path / "none", "cannot read"),
        (tmp_path, "not a regular file"),
        (Path("/dev/zero"), "not a regular file"),  # a path from the cloud must not make the gateway read forever
    )
    for path, expected in cases:
        with pytest.raises(DeviceConfigError) as info:
            read_bindkey(path)
        text = str(info.value)
        assert str(path) in text and expected in text, text
        assert "5a3c6f" not in text and "secret" not in text and "characters" not in text


def test_a_missing_bindkey_file_stops_the_driver_with_a_configuration_error(tmp_path: Path) -> None:
    readings = Readings()
    drv = make_driver("ble-bthome", "bt-1", BUTTON, readings, bindkey_file=str(tmp_path / "absent.key"))
    with pytest.raises(DeviceConfigError, match=r"bindkey_file .*absent\.key: cannot read"):
        asyncio.run(drv.run())


def test_a_bug_while_handling_an_advertisement_is_reported_and_counted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    readings = Readings()
    drv = make_driver("ble-bthome", "bt-1", BUTTON, readings)
    assert isinstance(drv, BthomeButtonDriver)
    drv.decoder = BthomeDecoder(BUTTON, None)

    def broken(*_args: object, **_kw: object) -> None:
        raise RuntimeError("a parser bug")

    monkeypatch.setattr(drv.decoder, "decode", broken)
    adv = AdvertisementData(
        None, {}, {BTHOME_SERVICE: service_data(objects(1, 50, "press"), mac=BUTTON)}, [], -60, -60, ()
    )
    for i in range(3):
        drv.on_advertisement(Sighting(BLEDevice(BUTTON, None, None), adv, float(i), 1000.0 + i))  # never raises
        drv._last_bytes = b""  # not a byte-identical repeat: decoded each time
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "bt-1" in errors[0].getMessage() and errors[0].exc_info is not None
    assert drv.counters()["bugs"] == 3 and not readings.of(ButtonPress)


# --------------------------------------------------------------------------------------------------
# Through the virtual BlueZ and unmodified bleak
# --------------------------------------------------------------------------------------------------


async def _press(button: BthomeButton, readings: Readings, event: str, n: int) -> None:
    button.press(event)
    await until(lambda: len(readings.of(ButtonPress)) == n, 5, f"press {n} ({event})")
    await asyncio.sleep(button.burst_s + 0.1)  # the repeats of the press


def test_every_event_type_to_its_role_repeats_suppressed_and_battery(tmp_path: Path) -> None:
    button = BthomeButton(BUTTON, battery=77, burst_s=0.4)  # beacon mode: a packet a second between presses
    readings = Readings()
    drv = make_driver("ble-bthome", "bt-1", BUTTON, readings, roles=ROLES, state_path=str(tmp_path / "bt.json"))

    async def go() -> None:
        async with virtual_bluez([button]), running(drv):
            await until(lambda: readings.connected_at("bt-1"), 10, "the button heard")
            for n, event in enumerate(BUTTON_EVENT_CODES, 1):
                await _press(button, readings, event, n)
            await button.command("set", {"battery": 15})
            await until(lambda: readings.states("bt-1")[-1].battery_percent == 15, 5, "the new battery level")

    asyncio.run(go())
    presses: list[ButtonPress] = readings.of(ButtonPress)
    assert [p.pattern for p in presses] == list(BUTTON_EVENT_CODES), "one press per event, repeats suppressed"
    roles = {p.pattern: p.role for p in presses}
    assert roles == {e: ("call" if e == "press" else "sos") for e in BUTTON_EVENT_CODES}
    assert [p.extra["packet_id"] for p in presses] == [i["packet_id"] for i in button.presses]
    assert len({p.press_id for p in presses}) == len(presses)
    assert not any(p.extra["encrypted"] for p in presses)
    counters = drv.counters()
    assert counters["repeats"] > 2 * len(presses), counters  # every burst was heard more than once
    assert counters["packets"] > len(presses), "beacons between presses are packets without an event"
    assert counters.get("bad_values", 0) == 0 and counters["presses"] == len(presses)
    states: list[DeviceStatus] = readings.states("bt-1")
    assert any(s.battery_percent == 77 for s in states) and states[-1].state is LinkState.DISCONNECTED


class UnnumberedButton(BthomeButton):
    """A BTHome button that sends no packet id (object 0x00 is optional; DIY and some other makers'
    devices leave it out): two presses of one pattern are byte-identical."""

    def _beacon(self) -> None:
        self.current = self._seal(objects(None, self.battery))

    def press(self, event: str = "press") -> dict[str, Any]:
        info = super().press(event)
        self.press_payload = objects(None, self.battery, event)
        self.current = self._seal(self.press_payload)
        return {**info, "packet_id": None}


def test_a_button_without_packet_id_raises_every_press(tmp_path: Path) -> None:
    button = UnnumberedButton(BUTTON, beacon_interval_s=None, burst_s=1.0)
    readings = Readings()
    drv = make_driver("ble-bthome", "bt-1", BUTTON, readings, roles=ROLES, state_path=str(tmp_path / "bt.json"))

    async def go() -> None:
        async with virtual_bluez([button]), running(drv):
            await until(lambda: drv.decoder is not None, 5, "started")
            for n in (1, 2, 3):
                button.press("long_press")
                await until(lambda n=n: len(readings.of(ButtonPress)) == n, 5, f"press {n}")
                await asyncio.sleep(NO_PACKET_ID_REPEAT_S + 0.5)  # the burst, and past the window

    asyncio.run(go())
    presses: list[ButtonPress] = readings.of(ButtonPress)
    assert [(p.pattern, p.role, p.extra["packet_id"]) for p in presses] == [("long_press", "sos", None)] * 3
    assert len({p.press_id for p in presses}) == 3
    assert drv.counters()["repeats"] > 3, "each burst heard more than once, and one press each"


def test_a_restart_during_the_repeats_raises_nothing_twice(tmp_path: Path) -> None:
    # Out of beacon mode (a Shelly BLU Button's default): it only sends when pressed, for 3 s.
    button = BthomeButton(BUTTON, beacon_interval_s=None, burst_s=3.0, key=KEY, reencrypt_repeats=True)
    state = str(tmp_path / "bt.json")
    keyf = str(key_file(tmp_path))
    first, second = Readings(), Readings()
    drv1 = make_driver("ble-bthome", "bt-1", BUTTON, first, state_path=state, bindkey_file=keyf)
    drivers = [drv1]

    async def go() -> None:
        async with virtual_bluez([button]):
            async with running(drv1):
                await until(lambda: first.connected_at("bt-1") is None and drv1.decoder is not None, 5, "started")
                button.press("long_press")
                await until(lambda: len(first.of(ButtonPress)) == 1, 5, "the press")
                await asyncio.sleep(0.3)
            # The gateway restarted (a new driver reads the state file): the press is still being repeated.
            drv2 = make_driver("ble-bthome", "bt-1", BUTTON, second, state_path=state, bindkey_file=keyf)
            drivers.append(drv2)
            async with running(drv2):
                await until(lambda: drv2.counters().get("repeats", 0) >= 5, 5, "repeats after the restart")
                await asyncio.sleep(max(0.0, button.burst_s - 0.5))
                assert not second.of(ButtonPress), "the restarted driver raised the same press again"
                button.press("press")
                await until(lambda: len(second.of(ButtonPress)) == 1, 5, "the next press")

    asyncio.run(go())
    (p1,) = first.of(ButtonPress)
    (p2,) = second.of(ButtonPress)
    assert (p1.pattern, p1.role, p2.pattern, p2.role) == ("long_press", "sos", "press", "sos")  # no roles: SOS
    assert p1.extra["encrypted"] and p2.extra["encrypted"]
    series1, n1 = p1.press_id.split("-")
    series2, n2 = p2.press_id.split("-")
    assert int(series2) > int(series1) and (int(n1), int(n2)) == (1, 1), "the restart's presses: a new series"
    assert all(d.counters().get("wrong_key", 0) == 0 for d in drivers) and len(drivers) == 2


def test_encrypted_with_the_right_key_and_refused_with_a_wrong_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = BthomeButton(BUTTON, key=KEY, burst_s=0.4, reencrypt_repeats=True)
    wrong = BthomeButton("C0:FF:EE:00:00:12", key=KEY, burst_s=0.4)
    pendant = SosPendant(SOS)
    readings = Readings()
    ok = make_driver("ble-bthome", "bt-ok", BUTTON, readings, roles=ROLES, bindkey_file=str(key_file(tmp_path)))
    ble = ok.ctx.ble
    bad = make_driver(
        "ble-bthome",
        "bt-bad",
        wrong.address,
        readings,
        ble=ble,
        roles=ROLES,
        bindkey_file=str(key_file(tmp_path, OTHER_KEY, "other.key")),
    )
    sos = make_driver("ble-sos", "sos-1", SOS, readings, ble=ble, state_path=str(tmp_path / "sos.json"))
    caplog.set_level(logging.DEBUG)

    async def go() -> None:
        async with virtual_bluez([good, wrong, pendant]), running(ok, bad, sos):
            await until(lambda: readings.connected_at("bt-ok") and readings.connected_at("sos-1"), 10, "heard")
            await until(lambda: bad.counters().get("wrong_key", 0) >= 1, 10, "the wrong key noticed")
            for event in ("press", "long_press", "press"):
                good.press(event)
                wrong.press(event)
                await asyncio.sleep(good.burst_s + 0.2)
            await pendant.press()
            await until(lambda: len(readings.of(ButtonPress, "sos-1")) == 1, 5, "the pendant's press")
            await until(lambda: len(readings.of(ButtonPress, "bt-ok")) == 3, 5, "the good button's presses")
            refused.extend(readings.of(ButtonPress, "bt-bad"))
            wrong_keys.append(bad.counters()["wrong_key"])
            # The technician fixes the key file: read again by itself, the button's next press counts.
            key_file(tmp_path, KEY, "fixed.key").replace(tmp_path / "other.key")
            await until(lambda: readings.states("bt-bad")[-1].state is LinkState.CONNECTED, 10, "the fixed key")
            wrong.press("long_press")
            await until(lambda: len(readings.of(ButtonPress, "bt-bad")) == 1, 5, "a press with the fixed key")

    refused: list[ButtonPress] = []
    wrong_keys: list[int] = []
    asyncio.run(go())
    good_presses: list[ButtonPress] = readings.of(ButtonPress, "bt-ok")
    assert [(p.pattern, p.role) for p in good_presses] == [("press", "call"), ("long_press", "sos"), ("press", "call")]
    assert all(p.extra["encrypted"] for p in good_presses) and ok.counters()["repeats"] > 3
    assert ok.counters().get("wrong_key", 0) == 0
    # The wrong key: no press, counted per packet (3 presses and the beacons), one WARNING, then DEBUG.
    assert not refused
    assert wrong_keys[0] >= 4, wrong_keys
    ours = ("drivers", "bthome_ble")  # (bleak says at WARNING that the test's private bus went away)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith(ours)]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert warnings[0].name == "drivers.ble.bthome" and "bt-bad" in warnings[0].getMessage()
    assert "wrong bind key" in warnings[0].getMessage()
    assert any(r.name == "bthome_ble.parser" and "Decryption failed" in r.getMessage() for r in caplog.records)
    assert KEY.hex() not in caplog.text and OTHER_KEY.hex() not in caplog.text
    bad_states = [s for s in readings.states("bt-bad") if s.state is LinkState.ERROR]
    assert bad_states and "wrong bind key" in (bad_states[0].reason or "")
    assert not [s for s in readings.states("bt-ok") if s.state is LinkState.ERROR]
    (sos_press,) = readings.of(ButtonPress, "sos-1")
    assert sos_press.role == "sos", "the device beside the refused one is unaffected"
    (fixed,) = readings.of(ButtonPress, "bt-bad")
    assert (fixed.pattern, fixed.role, fixed.extra["encrypted"]) == ("long_press", "sos", True)
    assert any("bindkey_file changed" in r.getMessage() for r in caplog.records if r.name == "drivers.ble.bthome")


# --------------------------------------------------------------------------------------------------
# gatewayd end to end
# --------------------------------------------------------------------------------------------------


def _state_of(cloud: Collector, device_id: str) -> str | None:
    states = [s["state"] for s in cloud.of_type("device_state") if s["device_id"] == device_id]
    return states[-1] if states else None


def test_gatewayd_raises_one_sos_for_an_encrypted_long_press(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    button = BthomeButton(BUTTON, key=KEY, burst_s=1.0)
    keyf = key_file(tmp_path)
    devices = f"""
[[devices]]
id = "bt-1"
kind = "ble-bthome"
transport = "ble"
address = "{BUTTON}"
bindkey_file = "{keyf}"
roles = {{ press = "call", long_press = "sos" }}
"""
    gw = GatewayProcess(gateway_config(tmp_path, broker.port, devices=devices))

    latency: list[float] = []

    async def go() -> None:
        async with virtual_bluez([button]):
            gw.start()  # inherits DBUS_SYSTEM_BUS_ADDRESS of the virtual BlueZ
            try:
                await until(
                    lambda: any(
                        s["device_id"] == "bt-1" and s["state"] == "connected" for s in cloud.of_type("device_state")
                    ),
                    30,
                    "the button heard by gatewayd",
                )
                info = button.press("long_press")
                await until(lambda: cloud.of_type("alert"), 20, "the alert at the cloud")
                latency.append(time.monotonic() - info["pressed_mono"])
                await asyncio.sleep(button.burst_s + 0.5)  # every repeat of the press has arrived by now
                assert gw.proc is not None
                gw.proc.send_signal(signal.SIGTERM)
                await until(lambda: not gw.alive(), 15, "gatewayd to stop")
                gw.terminate()
            finally:
                gw.stop_quietly()

    asyncio.run(go())
    print(f"\nBTHome long press -> SOS alert at the cloud: {latency[0] * 1000:.0f} ms")
    alerts = cloud.of_type("alert")
    assert len(alerts) == 1, "one press, many advertisements: one alert"
    a = alerts[0]
    assert (a["kind"], a["severity"], a["device_id"], a["historical"]) == ("sos", "critical", "bt-1", False)
    assert a["extra"]["encrypted"] is True and a["extra"]["packet_id"] == button.presses[0]["packet_id"]
    states = [s for s in cloud.of_type("device_state") if s["device_id"] == "bt-1"]
    assert states and states[-1]["battery_percent"] == 90
    log = gw.log()
    assert "Traceback" not in log and KEY.hex() not in log
