"""RFXtrx receiver: framing and decoding with bytes alone, then the driver over a real pty."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import ButtonPress, DeviceSpec, DeviceStatus, DriverContext, FrameError, LinkState, Reading
from drivers.options import OptionError
from drivers.serial import rfxtrx
from drivers.serial.rfxtrx import PressDeduper, RfxFramer, RfxtrxOptions, RfxtrxSosDriver, decode_packet
from simulators.rfxtrx_sim import COPYRIGHT_REPLY, STATUS_REPLY, STATUSES, RfxtrxSimulator, security1_frame
from simulators.serialpty import PtyDevice

# A Security1 "Panic" from an X10 security remote, id 0xA1B2C3, battery ok, rssi 7
# (byte layout per the RFXtrx SDK and pyRFXtrx's Security1.load_receive).
PANIC = bytes.fromhex("08 20 02 05 a1 b2 c3 06 79")


def test_security1_panic_vector_decodes() -> None:
    ev = decode_packet(PANIC)
    assert ev is not None
    assert (ev.sensor_id, ev.status, ev.battery_low, ev.rssi) == ("a1b2c3", 0x06, False, 7)
    low_batt = bytes.fromhex("08 20 02 05 a1 b2 c3 02 70")
    ev2 = decode_packet(low_batt)
    assert ev2 is not None and ev2.status == 0x02 and ev2.battery_low is True


def test_non_security_packets_are_not_events_and_bad_lengths_are_errors() -> None:
    assert decode_packet(STATUS_REPLY) is None
    assert decode_packet(COPYRIGHT_REPLY) is None
    try:
        decode_packet(PANIC[:-1])
    except FrameError:
        pass
    else:
        raise AssertionError("a truncated packet must raise FrameError")


def test_framer_splits_a_stream_arriving_in_pieces() -> None:
    f = RfxFramer()
    stream = STATUS_REPLY + PANIC + PANIC
    out: list[bytes] = []
    for i in range(0, len(stream), 3):
        out += f.feed(stream[i : i + 3], now=0.0)
    assert out == [STATUS_REPLY, PANIC, PANIC]
    assert f.stats.garbage_bytes == 0


def test_framer_resynchronises_after_garbage_and_a_lost_byte() -> None:
    f = RfxFramer(stale_after_s=0.5)
    out = f.feed(b"\xff\xfe\x99\x00" + PANIC, now=0.0)
    assert out == [PANIC]
    assert f.stats.garbage_bytes == 3
    # A frame that lost its last byte: the partial is dropped once it is stale, the next frame is whole.
    assert f.feed(PANIC[:-1], now=1.0) == []
    assert f.feed(PANIC, now=2.0) == [PANIC]
    assert f.stats.stale_partials == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=40))
def test_random_bytes_never_raise_and_never_hide_a_following_frame(noise: bytes, tail_noise: bytes) -> None:
    f = RfxFramer(stale_after_s=0.5)
    frames = f.feed(noise, now=0.0)
    for fr in frames:
        try:
            decode_packet(fr)
        except FrameError:
            pass
    # After a quiet gap the receiver's next frame is always found.
    frames = f.feed(PANIC, now=5.0) + f.feed(tail_noise, now=5.0)
    assert PANIC in frames


def test_repeated_frames_of_one_press_are_one_press() -> None:
    d = PressDeduper(repeat_window_s=1.0)
    assert d.press("a", 0.0) == 0.0
    assert d.press("a", 0.2) is None
    assert d.press("a", 0.9) is None  # chained repeats
    assert d.press("b", 0.95) == 0.95  # another button is another press
    assert d.press("a", 2.5) == 2.5  # a new press


async def _wait(pred, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


def test_driver_over_a_pty_presses_noise_and_replug_on_another_tty(tmp_path: Path) -> None:
    link = tmp_path / "by-id" / "usb-RFXCOM_RFXtrx433_T1-if00-port0"
    got: list[Reading] = []

    async def go() -> RfxtrxSosDriver:
        async with RfxtrxSimulator(link) as sim:
            spec = DeviceSpec("rfx", "rfxtrx-sos", "serial", {"port": str(link), "buttons": {"a1b2c3": "sos-1"}})
            drv = RfxtrxSosDriver(spec, got.append, DriverContext())
            task = asyncio.create_task(drv.run())
            await _wait(lambda: sim.started)
            await sim.press(0xA1B2C3, repeats=5, gap_s=0.02)
            await _wait(lambda: any(isinstance(r, ButtonPress) for r in got))
            sim.noise(300)
            sim.truncated(0xA1B2C3)
            await asyncio.sleep(0.7)  # the truncated frame goes stale
            await sim.press(0xD4E5F6)  # an unlisted button: ignored, counted
            await asyncio.sleep(1.1)
            await sim.press(0xA1B2C3, repeats=3, gap_s=0.02)
            await _wait(lambda: sum(isinstance(r, ButtonPress) for r in got) >= 2)
            first_tty = sim.dev.slave_name
            # Unplug, keep another pty busy so the device comes back on a different /dev/pts/N.
            sim.unplug()
            await _wait(lambda: any(isinstance(r, DeviceStatus) and r.state is LinkState.DISCONNECTED for r in got))
            # /dev/pts/N is free once the driver has closed its end too; then a blocker takes it
            await _wait(lambda: not os.path.exists(first_tty))
            blocker = os.openpty()
            sim.plug()
            assert sim.dev.slave_name != first_tty
            t_back = time.monotonic()
            await _wait(lambda: sim.started, timeout=10.0)
            recovered_s = time.monotonic() - t_back
            await asyncio.sleep(1.1)  # presses closer than the repeat window would be one press
            await sim.press(0xA1B2C3)
            await _wait(lambda: sum(isinstance(r, ButtonPress) for r in got) >= 3)
            for fd in blocker:
                os.close(fd)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert recovered_s < 5.0, "reopened within 5 s of the device being back"
            return drv

    drv = asyncio.run(go())
    presses = [r for r in got if isinstance(r, ButtonPress)]
    assert [p.device_id for p in presses] == ["sos-1", "sos-1", "sos-1"]
    assert len({p.press_id for p in presses}) == 3
    c = drv.counters()
    assert c["unknown_buttons"] >= 1
    assert c["repeat_frames"] >= 4 + 2
    assert c["garbage_bytes"] > 0
    assert c["connects"] == 2
    states = [r.state for r in got if isinstance(r, DeviceStatus)]
    assert states[0] is LinkState.CONNECTED and LinkState.DISCONNECTED in states and states[-1] is not LinkState.ERROR


def test_frame_builder_matches_the_vector() -> None:
    assert security1_frame(5, 0xA1B2C3) == PANIC


def test_a_press_in_the_same_read_as_the_receivers_start_reply_is_not_dropped(tmp_path: Path) -> None:
    """A press the instant the receiver starts (after a power cut, the person was already pressing):
    its frame and the copyright reply arrive in one read; the handshake used to discard the frame."""
    link = tmp_path / "by-id" / "usb-RFXCOM_RFXtrx433_T2-if00-port0"
    got: list[Reading] = []

    async def go() -> None:
        async with RfxtrxSimulator(link) as sim:
            answer = sim.dev.on_bytes
            assert answer is not None

            def reply_then_press(data: bytes) -> None:
                was = sim.started
                answer(data)
                if sim.started and not was:  # the copyright reply is written: the frame follows it
                    half = security1_frame(9, 0xA1B2C3)
                    sim.send_frame(security1_frame(1, 0xA1B2C3) + half[:5])
                    sim.dev.write(half[5:])

            sim.dev.on_bytes = reply_then_press
            spec = DeviceSpec("rfx", "rfxtrx-sos", "serial", {"port": str(link), "buttons": {"a1b2c3": "sos-1"}})
            drv = RfxtrxSosDriver(spec, got.append, DriverContext())
            task = asyncio.create_task(drv.run())
            try:
                await _wait(lambda: any(isinstance(r, ButtonPress) for r in got))
                await asyncio.sleep(0.2)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            assert drv.counters()["repeat_frames"] == 1, "the split frame after it was read too"

    asyncio.run(go())
    assert [r.device_id for r in got if isinstance(r, ButtonPress)] == ["sos-1"]


def test_a_device_that_talks_but_never_answers_as_an_rfxtrx_is_reported_not_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another device on the port (a GPS printing NMEA every 0.2 s): the start-up gives up within its
    deadline, the device's state says why, and it is tried again."""
    monkeypatch.setattr(rfxtrx, "HANDSHAKE_TIMEOUT_S", 1.5)
    link = tmp_path / "by-id" / "usb-RFXCOM_RFXtrx433_T3-if00-port0"
    got: list[Reading] = []

    async def go() -> None:
        async with PtyDevice(link) as dev:

            async def chatter() -> None:
                while True:
                    dev.write(b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n")
                    await asyncio.sleep(0.2)

            talker = asyncio.create_task(chatter())
            spec = DeviceSpec("rfx", "rfxtrx-sos", "serial", {"port": str(link), "buttons": {"a1b2c3": "sos-1"}})
            drv = RfxtrxSosDriver(spec, got.append, DriverContext())
            task = asyncio.create_task(drv.run())
            try:
                await _wait(lambda: [r for r in got if isinstance(r, DeviceStatus)], timeout=10.0)
            finally:
                task.cancel()
                talker.cancel()
                await asyncio.gather(task, talker, return_exceptions=True)

    asyncio.run(go())
    (state, *_) = [r for r in got if isinstance(r, DeviceStatus)]
    assert state.state is LinkState.DISCONNECTED and "did not answer as an RFXtrx" in (state.reason or "")


# -- roles (issue 14): a two-key pendant, and a sensor that is a call button ------------------------------


def test_roles_are_validated_in_the_options() -> None:
    ok = RfxtrxOptions.from_mapping(
        {"port": "/dev/x", "buttons": {"A1B2C3": "anna"}, "roles": {"a1b2c3/arm_home": "call", "A1B2C3": "sos"}}
    )
    assert ok.roles["a1b2c3/arm_home"] == "call"
    bad: list[tuple[dict[str, object], str]] = [
        ({"a1b2c3": "panic"}, "sos or call"),
        ({"a1b2c3/reboot": "call"}, "command among panic"),
        ({"zz": "call"}, "sensor ids"),
        ({"d4e5f6": "call"}, "listed in buttons"),
        ({"a1b2c3": "call", "A1B2C3": "sos"}, "once"),
        ({"a1b2c3": 1}, "table"),
    ]
    for roles, expected in bad:
        with pytest.raises(OptionError) as exc:
            RfxtrxOptions.from_mapping({"port": "/dev/x", "buttons": {"a1b2c3": "anna"}, "roles": roles})
        assert exc.value.key == "roles" and expected in str(exc.value), (roles, str(exc.value))


def test_role_of_each_key_and_nothing_guessed() -> None:
    spec = DeviceSpec(
        "rfx",
        "rfxtrx-sos",
        "serial",
        {
            "port": "/dev/x",
            "buttons": {"a1b2c3": "anna", "d4e5f6": "kitchen", "0a0b0c": "old"},
            "roles": {"a1b2c3/arm_home": "call", "d4e5f6": "call"},
        },
    )
    drv = RfxtrxSosDriver(spec, lambda _r: None, DriverContext())
    assert drv.role_of("a1b2c3", "panic") == "sos"  # the panic key of the two-key pendant: unmapped, SOS
    assert drv.role_of("a1b2c3", "arm_home") == "call"
    assert drv.role_of("a1b2c3", "disarm") is None  # another key nobody mapped: not a press, as before
    assert drv.role_of("d4e5f6", "panic") == drv.role_of("d4e5f6", "alarm") == "call"
    assert drv.role_of("0a0b0c", "panic") == "sos"  # the old form: every panic/alarm is an SOS
    assert drv.role_of("0a0b0c", None) is None


def test_keys_of_one_remote_may_be_buttons_of_their_own() -> None:
    opts = {"port": "/dev/x", "buttons": {"a1b2c3": "anna-sos", "a1b2c3/arm_home": "anna-call"}}
    RfxtrxOptions.from_mapping({**opts, "roles": {"a1b2c3/arm_home": "call"}})
    with pytest.raises(OptionError) as exc:  # a key other than panic/alarm without a role could never press
        RfxtrxOptions.from_mapping(opts)
    assert exc.value.key == "roles" and "a1b2c3/arm_home" in str(exc.value)
    with pytest.raises(OptionError) as exc:
        RfxtrxOptions.from_mapping({"port": "/dev/x", "buttons": {"a1b2c3/reboot": "x"}})
    assert exc.value.key == "buttons"


def test_a_two_key_pendant_and_a_call_sensor_over_a_pty(tmp_path: Path) -> None:
    """An X10 security remote as a two-key pendant (panic = SOS, arm home = call), a second sensor whose
    panic is a call, and a remote of which only the call key is listed (under a device id of its own):
    each key is its own press, even within the repeat window of the other, and the panic key of a
    sensor this home knows is never dropped."""
    link = tmp_path / "by-id" / "usb-RFXCOM_RFXtrx433_T3-if00-port0"
    got: list[Reading] = []

    async def go() -> RfxtrxSosDriver:
        async with RfxtrxSimulator(link) as sim:
            options = {
                "port": str(link),
                "buttons": {"a1b2c3": "pendant-anna", "d4e5f6": "call-kitchen", "0a0b0c/arm_home": "bob-call"},
                "roles": {"a1b2c3/arm_home": "call", "d4e5f6": "call", "0a0b0c/arm_home": "call"},
            }
            drv = RfxtrxSosDriver(DeviceSpec("rfx", "rfxtrx-sos", "serial", options), got.append, DriverContext())
            task = asyncio.create_task(drv.run())
            try:
                await _wait(lambda: sim.started)
                await sim.press(0xA1B2C3, repeats=3, gap_s=0.02, status=STATUSES["arm_home"])
                await sim.press(0xA1B2C3, repeats=3, gap_s=0.02, status=STATUSES["panic"])
                await sim.press(0xA1B2C3, repeats=2, gap_s=0.02, status=STATUSES["disarm"])  # unmapped key
                await sim.press(0xD4E5F6, repeats=3, gap_s=0.02)
                await sim.press(0x0A0B0C, repeats=3, gap_s=0.02, status=STATUSES["arm_home"])
                await sim.press(0x0A0B0C, repeats=3, gap_s=0.02, status=STATUSES["panic"])
                await _wait(lambda: sum(isinstance(r, ButtonPress) for r in got) >= 5)
                await asyncio.sleep(0.3)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            return drv

    drv = asyncio.run(go())
    presses = [r for r in got if isinstance(r, ButtonPress)]
    assert [(p.device_id, p.role, p.extra["radio_status"]) for p in presses] == [
        ("pendant-anna", "call", "arm_home"),
        ("pendant-anna", "sos", "panic"),
        ("call-kitchen", "call", "panic"),
        ("bob-call", "call", "arm_home"),
        ("rfx:0a0b0c", "sos", "panic"),  # its panic key is not listed: an SOS all the same
    ]
    assert len({p.press_id for p in presses}) == 5
    c = drv.counters()
    assert (c["presses"], c["call_presses"]) == (2, 3)
    assert c["other_security_events"] == 2  # the disarm key's frames
