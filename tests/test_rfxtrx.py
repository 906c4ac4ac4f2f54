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
from drivers.serial.rfxtrx import (
    KNOWN_LENGTHS,
    PressDeduper,
    RfxFramer,
    RfxtrxOptions,
    RfxtrxSosDriver,
    decode_packet,
)
from simulators import rfxtrx_sim
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


# -- noise before a burst: the repeats of one press (the SOS path audit) ----------------------------------


def _found(frames: list[bytes], burst: list[bytes]) -> int:
    return len(set(frames) & set(burst))


def test_one_noise_byte_before_a_burst_costs_no_repeat() -> None:
    """The reviewer's case: 0x10 read as a header of the unknown type 0x08 (16 bytes) took the head of
    the next repeat, and so on through the burst: 0 of 5 frames. Now only SDK headers start a frame,
    and no single byte before a burst costs a frame, in one read or in a read per frame."""
    assert RfxFramer().feed(b"\x10" + PANIC * 5, 0) == [PANIC] * 5
    for noise in range(256):
        assert RfxFramer().feed(bytes([noise]) + PANIC * 5, 0) == [PANIC] * 5, hex(noise)
        f = RfxFramer()
        out = f.feed(bytes([noise]) + PANIC, 0.0)
        for i in range(1, 5):
            out += f.feed(PANIC, 0.1 * i)  # real repeats, 0.1 s apart: never stale
        assert out == [PANIC] * 5, hex(noise)


def test_noise_headers_that_would_swallow_repeats() -> None:
    """One case per rule of the framer (RfxFramer's docstring)."""
    # a noise header of another type, 36 bytes of "undecoded RF": the Security1 frames inside it win
    assert RfxFramer().feed(b"\x24\x03" + PANIC * 3, 0) == [PANIC] * 3
    # a noise 08 20 took the head of the first repeat: the frame followed by 06 79 (no frame) loses
    assert RfxFramer().feed(b"\x08\x20" + PANIC * 3, 0) == [PANIC] * 3
    # a frame that lost its last byte, then the burst at once: the truncated one costs only itself
    assert RfxFramer().feed(PANIC[:-1] + PANIC * 3, 0) == [PANIC] * 3
    # a sensor id holding 08 20 (0x0820c3) after noise: two framings hold, the one filling the read wins
    burst = [security1_frame(seq, 0x0820C3) for seq in range(1, 6)]
    assert RfxFramer().feed(bytes.fromhex("08 20 00 00 00") + b"".join(burst), 0) == burst
    # two bytes lost in one read, in the first repeat and the third: each costs only its own frame
    burst = [security1_frame(seq, 0xA1B2C3) for seq in range(1, 4)]
    stream = b"".join(burst)
    assert RfxFramer().feed(stream[:8] + stream[9:20] + stream[21:], 0) == [burst[1]]


def test_a_read_that_starts_with_a_whole_frame_is_in_step() -> None:
    """The receiver writes each radio frame in one piece, so a read starting with a whole Security1
    frame tells the framer where frames start: the repeats of a press after noise come out with the
    reads, not a stale_after_s after the last one."""
    before = security1_frame(9, 0xD4E5F6)  # the framer was in step
    burst = [security1_frame(seq, 0xA10820) for seq in range(1, 4)]  # an id holding 08 20
    f = RfxFramer()
    assert f.feed(before + bytes.fromhex("08 20 9e 9b") + burst[0], 0.0) == [before]
    assert f.feed(burst[1], 0.1) == burst[:2]
    assert f.feed(burst[2], 0.2) == burst[2:]


def test_a_stale_partial_gives_up_the_frames_it_held() -> None:
    """Where both framings hold until more bytes come, none may come: the frames come out when the
    pending bytes go stale (the driver feeds b"" then), not with the next radio frame hours later."""
    first = security1_frame(1, 0xA1B2C3)  # a frame of another sensor: the framer was in step
    burst = [security1_frame(2, 0x0820C3), security1_frame(3, 0x0820C3)]
    f = RfxFramer(stale_after_s=0.5)
    assert f.feed(first + bytes.fromhex("08 20 00 00 00") + b"".join(burst), 10.0) == [first]
    assert f.stale_at() == 10.5
    assert f.feed(b"", 10.4) == []
    assert f.feed(b"", 10.6) == burst
    assert f.stale_at() is None and f.stats.stale_partials == 1


_HEADERS = [bytes([length, ptype]) for ptype, lengths in KNOWN_LENGTHS.items() for length in sorted(lengths)]


@st.composite
def _noise_and_burst(draw: st.DrawFn, *, id_without_0820: bool = False) -> tuple[bytes, list[bytes]]:
    """Noise (random bytes, SDK headers, pieces of the frame: what a lost or corrupted byte leaves)
    and the burst of one press: k repeats of a Security1 panic/alarm frame, numbered by the receiver."""
    ident = draw(st.binary(min_size=3, max_size=3))
    if id_without_0820:
        ident = ident.replace(b"\x08\x20", b"\x08\x21")
    head = [draw(st.integers(0, 255)) for _ in range(2)]  # subtype, first sequence number
    status, rssi_battery = draw(st.sampled_from([0x02, 0x06, 0x82, 0x86])), draw(st.integers(0, 255))
    k = draw(st.integers(2, 8))
    burst = [bytes([0x08, 0x20, head[0], (head[1] + i) & 0xFF, *ident, status, rssi_battery]) for i in range(k)]
    pieces = st.one_of(
        st.binary(min_size=1, max_size=4),
        st.sampled_from(_HEADERS),
        st.integers(1, 8).map(lambda n: burst[0][:n]),
        st.integers(1, 8).map(lambda n: burst[0][n:]),
    )
    noise = b"".join(draw(st.lists(pieces, max_size=20)))[:64]
    return noise, burst


def _deliver(f: RfxFramer, noise: bytes, burst: list[bytes], reads: str, cuts: list[int]) -> list[bytes]:
    """Feed noise + burst in one read, one read per frame (0.1 s apart, as a receiver sends them), or
    a read per frame with reads also ending at ``cuts`` (16 ms on: an FTDI latency-timer split);
    then a quiet stale_after_s."""
    stream = noise + b"".join(burst)
    out: list[bytes] = []
    if reads == "one read":
        out += f.feed(stream, 0.0)
    else:
        ends = {len(noise) + 9 * i for i in range(1, len(burst))} | {len(stream)}
        if reads == "split too":
            ends |= {c % len(stream) for c in cuts if c % len(stream)}
        t, start = 0.0, 0
        for end in sorted(ends):
            out += f.feed(stream[start:end], t)
            t += 0.1 if (end - len(noise)) % 9 == 0 else 0.016
            start = end
    return out + f.feed(b"", 60.0)


@settings(max_examples=400, deadline=None)
@given(_noise_and_burst(), st.sampled_from(["one read", "a read per frame"]))
def test_noise_before_a_burst_costs_at_most_one_repeat(case: tuple[bytes, list[bytes]], reads: str) -> None:
    """The guarantee (RfxFramer): any noise of up to 64 bytes before k repeats of a Security1 frame,
    whatever the sensor id, costs at most one of them: a noise Security1 header can take the head of
    the first repeat and no more, since its frame ends inside that repeat; a noise header of another
    type loses to the Security1 frames inside it; and the framing the bytes after it bear out wins."""
    noise, burst = case
    assert _found(_deliver(RfxFramer(), noise, burst, reads, []), burst) >= len(burst) - 1
    if reads == "a read per frame":  # and on time: out of the reads themselves, no stale wait
        f = RfxFramer()
        out = f.feed(noise + burst[0], 0.0)
        for i, frame in enumerate(burst[1:], 1):
            out += f.feed(frame, 0.1 * i)
        assert _found(out, burst) >= len(burst) - 1


@settings(max_examples=300, deadline=None)
@given(_noise_and_burst(id_without_0820=True), st.lists(st.integers(1, 200), max_size=4))
def test_noise_before_a_burst_split_anywhere_costs_at_most_one_repeat(
    case: tuple[bytes, list[bytes]], cuts: list[int]
) -> None:
    """Reads ending inside frames too: the same bound, for sensor ids without the bytes 08 20 (with
    them a frame read in two pieces after noise can leave the framer out of step until the next read
    that starts with a whole frame)."""
    noise, burst = case
    assert _found(_deliver(RfxFramer(), noise, burst, "split too", cuts), burst) >= len(burst) - 1


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


# -- the driver: held-back frames, sensor ids without their leading zero, wall-clock steps ---------------


def test_frames_a_stale_partial_held_come_out_without_another_byte(tmp_path: Path) -> None:
    """The frames a pending partial holds back (test_a_stale_partial_gives_up_the_frames_it_held) come
    out within the framer's stale_after_s although the receiver sends nothing more; the serve loop
    used to wait for the next radio frame, which may be hours away."""
    link = tmp_path / "by-id" / "usb-RFXCOM_RFXtrx433_T4-if00-port0"
    got: list[Reading] = []

    async def go() -> float:
        async with RfxtrxSimulator(link) as sim:
            buttons = {"a1b2c3": "sos-1", "0820c3": "sos-2"}
            spec = DeviceSpec("rfx", "rfxtrx-sos", "serial", {"port": str(link), "buttons": buttons})
            drv = RfxtrxSosDriver(spec, got.append, DriverContext())
            task = asyncio.create_task(drv.run())
            try:
                await _wait(lambda: sim.started)
                await asyncio.sleep(0.1)
                noise = bytes.fromhex("08 20 00 00 00")
                frames = [security1_frame(1, 0xA1B2C3), security1_frame(2, 0x0820C3), security1_frame(3, 0x0820C3)]
                sent = time.monotonic()
                sim.send_frame(frames[0] + noise + frames[1] + frames[2])
                await _wait(lambda: sum(isinstance(r, ButtonPress) for r in got) >= 2, timeout=3.0)
                return time.monotonic() - sent
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    took = asyncio.run(go())
    assert [r.device_id for r in got if isinstance(r, ButtonPress)] == ["sos-1", "sos-2"]
    assert took < 2.0


def test_a_sensor_id_without_its_leading_zero_is_the_sensor() -> None:
    """``buttons = { "1b2c3" = ... }`` validated (1-6 hex digits) but never matched the radio's
    "01b2c3": every press of that button was dropped as an unlisted one. The keys are canonical."""
    opts = RfxtrxOptions.from_mapping(
        {
            "port": "/dev/x",
            "buttons": {"1B2C3": "sos-bedroom", "a0b0c/arm_home": "anna-call", "d4e5f6": "kitchen"},
            "roles": {"1b2c3": "sos", "0A0B0C/arm_home": "call"},
        }
    )
    assert opts.buttons == {"01b2c3": "sos-bedroom", "0a0b0c/arm_home": "anna-call", "d4e5f6": "kitchen"}
    assert opts.roles == {"01b2c3": "sos", "0a0b0c/arm_home": "call"}
    for buttons in ({"1b2c3": "a", "01B2C3": "b"}, {"0a0b0c/arm_home": "a", "A0B0C/arm_home": "b"}):
        with pytest.raises(OptionError) as exc:  # one sensor (and key), written two ways
            RfxtrxOptions.from_mapping({"port": "/dev/x", "buttons": buttons})
        assert exc.value.key == "buttons" and "once" in str(exc.value)
    with pytest.raises(OptionError) as exc:  # neither a port nor USB ids: refused like any serial device
        RfxtrxOptions.from_mapping({"buttons": {"a1b2c3": "a"}})
    assert exc.value.key == "port"

    got: list[Reading] = []
    drv = RfxtrxSosDriver(DeviceSpec("rfx", "rfxtrx-sos", "serial", opts), got.append, DriverContext())
    drv._on_packet(security1_frame(1, 0x01B2C3), 100.0, 1.7e9)
    drv._on_packet(security1_frame(2, 0x0A0B0C, status=STATUSES["arm_home"]), 100.0, 1.7e9)
    presses = [r for r in got if isinstance(r, ButtonPress)]
    assert [(p.device_id, p.role) for p in presses] == [("sos-bedroom", "sos"), ("anna-call", "call")]
    assert presses[0].press_id == f"01b2c3-{round(1.7e9 * 1000)}"
    assert "unknown_buttons" not in drv.counters()


def test_a_wall_clock_step_neither_swallows_nor_splits_a_press(tmp_path: Path) -> None:
    """The repeat window is measured on the monotonic clock. On the wall clock (the daemon's
    DriverContext.clock) a step back of D seconds made the first press within D of the last a
    "repeat", dropped; a step forwards inside a burst made its later frames a second press. The wall
    clock still dates each press and makes its id."""
    link = tmp_path / "by-id" / "usb-RFXCOM_RFXtrx433_T5-if00-port0"
    got: list[Reading] = []
    offset = [0.0]

    def presses() -> list[ButtonPress]:
        return [r for r in got if isinstance(r, ButtonPress)]

    async def go() -> RfxtrxSosDriver:
        async with RfxtrxSimulator(link) as sim:
            spec = DeviceSpec("rfx", "rfxtrx-sos", "serial", {"port": str(link), "buttons": {"a1b2c3": "sos-1"}})
            drv = RfxtrxSosDriver(spec, got.append, DriverContext(clock=lambda: time.time() + offset[0]))
            task = asyncio.create_task(drv.run())
            try:
                await _wait(lambda: sim.started)
                await sim.press(0xA1B2C3, repeats=2, gap_s=0.05)
                await _wait(lambda: len(presses()) == 1)
                await asyncio.sleep(1.2)  # past the repeat window
                offset[0] = -3600.0  # NTP steps the clock back an hour
                await sim.press(0xA1B2C3, repeats=2, gap_s=0.05)
                await _wait(lambda: len(presses()) == 2)
                await asyncio.sleep(1.2)
                sim.send_frame(security1_frame(sim._next_seq(), 0xA1B2C3))
                await _wait(lambda: len(presses()) == 3)
                offset[0] = 0.0  # and forwards again, between two repeats of one press
                await asyncio.sleep(0.1)
                sim.send_frame(security1_frame(sim._next_seq(), 0xA1B2C3))
                await _wait(lambda: drv.counters().get("repeat_frames", 0) >= 3)
                await asyncio.sleep(1.2)
                await sim.press(0xA1B2C3, repeats=1)
                await _wait(lambda: len(presses()) == 4)
                await asyncio.sleep(0.2)
                return drv
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    drv = asyncio.run(go())
    p = presses()
    assert len(p) == 4 and drv.counters()["repeat_frames"] == 3
    assert abs(p[1].captured_at + 3600 - time.time()) < 30  # dated by the (stepped) wall clock
    assert p[1].captured_at < p[0].captured_at and len({x.press_id for x in p}) == 4


# A 0x14 status reply (SDK 7.00 and later) whose firmware version and mode bytes read "08 20" followed by
# a Security1-shaped run (its "status" byte 0x00 is a valid one).
STATUS_REPLY_WITH_A_RUN = bytes.fromhex("14 01 00 01 02 53 08 20 00 2f 00 01 03") + bytes(8)


def test_the_receivers_replies_are_taken_as_they_come_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the receiver runs, a Security1 frame inside a frame of another type wins (a noise header
    must not hide an SOS); the start-up waits for the receiver's own replies, which must not lose to
    a run of their bytes that looks like a Security1 frame, or this receiver would never start."""
    assert RfxFramer().feed(STATUS_REPLY_WITH_A_RUN, 0) != [STATUS_REPLY_WITH_A_RUN]
    assert RfxFramer(trust_replies=True).feed(STATUS_REPLY_WITH_A_RUN, 0) == [STATUS_REPLY_WITH_A_RUN]
    monkeypatch.setattr(rfxtrx_sim, "STATUS_REPLY", STATUS_REPLY_WITH_A_RUN)
    monkeypatch.setattr(rfxtrx, "HANDSHAKE_TIMEOUT_S", 2.0)
    link = tmp_path / "by-id" / "usb-RFXCOM_RFXtrx433_T6-if00-port0"
    got: list[Reading] = []

    async def go() -> None:
        async with RfxtrxSimulator(link) as sim:
            spec = DeviceSpec("rfx", "rfxtrx-sos", "serial", {"port": str(link), "buttons": {"a1b2c3": "sos-1"}})
            task = asyncio.create_task(RfxtrxSosDriver(spec, got.append, DriverContext()).run())
            try:
                await _wait(lambda: sim.started, timeout=1.5)
                await sim.press(0xA1B2C3, repeats=2, gap_s=0.02)
                await _wait(lambda: any(isinstance(r, ButtonPress) for r in got))
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())
    assert [r.device_id for r in got if isinstance(r, ButtonPress)] == ["sos-1"]
