"""CMS50 oximeter protocols with bytes alone: public vectors, resynchronisation, random input.

Vector sources (named per test): OSCAR's ``cms50f37_loader.cpp`` (its comments quote raw device
packets), tobac/cms50ew and celiponcio's firmware-4.6 reader (the command bytes), timegrid/CMS50Dplus7
(packet layout and command arguments), atbrask/CMS50Dplus ``unittests.py`` (older 5-byte protocol).
"""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import FrameError, Measurement, Waveform
from drivers.serial import cms50
from drivers.serial.cms50 import (
    Cms50FrameError,
    Cms50Parser,
    Dropped,
    FetchLedger,
    LegacyParser,
    LiveAccumulator,
    LiveSample,
    SessionCount,
    SessionDate,
    SessionDuration,
    SessionTime,
    StoredPoints,
    command,
    decode_frame,
    decode_legacy,
    encode_legacy,
    legacy_encode_download,
    legacy_parse_download,
    session_records,
)
from simulators.cms50_sim import Cms50Simulator

# -- commands ---------------------------------------------------------------------------------------


def test_commands_match_the_bytes_open_clients_send() -> None:
    # tobac/cms50ew cmd_get_live_data and celiponcio's handshake: 7d 81 a1 80 80 80 80 80 80
    assert command(cms50.CMD_START_LIVE) == bytes.fromhex("7d81a1808080808080")
    # tobac/cms50ew: hello2 (a2), session count (a3), session data (a6), keep-alive "session stuff" (af)
    assert command(cms50.CMD_STOP_LIVE) == bytes.fromhex("7d81a2808080808080")
    assert command(cms50.CMD_SESSION_COUNT) == bytes.fromhex("7d81a3808080808080")
    assert command(cms50.CMD_KEEPALIVE) == bytes.fromhex("7d81af808080808080")
    # OSCAR sendCommand(c, c2): the second argument lands in byte 4
    assert command(cms50.CMD_SESSION_DATA, 0, 1) == bytes.fromhex("7d81a6808180808080")
    # timegrid: send_command(0xa6, [user_index=1, storage_segment=1])
    assert command(cms50.CMD_SESSION_DATA, 1, 1) == bytes.fromhex("7d81a6818180808080")


# -- responses quoted in OSCAR's loader ------------------------------------------------------------


def test_oscar_quoted_responses_decode() -> None:
    # "f,80,de,c2,de,c2,de,c2  cms50F data...": three stored points, SpO2 0x5e=94 %, pulse 0x42=66
    assert decode_frame(bytes.fromhex("0f80dec2dec2dec2")) == StoredPoints(((94, 66), (94, 66), (94, 66)))
    # "a,80,80,81": one stored session
    assert decode_frame(bytes.fromhex("0a808081")) == SessionCount(1)
    # "8,80,80,80,a4,81,80,80  // 00, 00, 24, 01, 00, 00": duration 0x124 half-seconds = 146 points
    dur = decode_frame(bytes.fromhex("08808080a4818080"))
    assert dur == SessionDuration(0x124) and isinstance(dur, SessionDuration) and dur.points() == 146
    # "7,80,80,80,94,8e,88,92": session date 20 14 08 18
    assert decode_frame(bytes.fromhex("07808080948e8892")) == SessionDate(2014, 8, 18)
    # "12,80,80,80,82,a6,92,80": session start 02:38:18
    assert decode_frame(bytes.fromhex("1280808082a69280")) == SessionTime(2, 38, 18)
    # "9,80,e1,c4,ce,82  // cms50i data": one point with perfusion index, SpO2 0x61=97, pulse 0x44=68
    assert decode_frame(bytes.fromhex("0980e1c4ce82")) == StoredPoints(((97, 68),))


def test_stored_invalid_markers_and_padding_are_not_numbers() -> None:
    # OSCAR: pulse 0xff is "no reading"; all-zero points pad the last packet
    pkt = cms50.encode_packet(cms50.PT_STORED, [0x7F, 0xFF, 95, 70, 0, 0])
    frame = decode_frame(pkt)
    assert frame == StoredPoints(((None, None), (95, 70)), pad=1)


# -- live (v7) -------------------------------------------------------------------------------------

# Built to satisfy the fixed bits celiponcio's firmware-4.6 reader checks on every live frame
# (byte 1 = e0|flags, byte 2 = 80|beat 40, bytes 7-8 = ff ff): signal 6, pleth 0x32, pulse 0x42, SpO2 0x61.
LIVE = bytes.fromhex("01e086b280c2e1ffff")
LIVE_FINGER_OUT = bytes.fromhex("01e9868080ffffffff")  # probe error, pulse 0xff, SpO2 0x7f


def test_live_vector_decodes_with_flags() -> None:
    s = decode_frame(LIVE)
    assert isinstance(s, LiveSample)
    assert (s.pleth, s.pulse_rate, s.spo2, s.signal, s.perfusion_index) == (50, 66, 97, 6, None)
    assert s.valid and not s.finger_out and not s.searching and not s.beat
    out = decode_frame(LIVE_FINGER_OUT)
    assert isinstance(out, LiveSample)
    assert out.finger_out and not out.valid and out.pulse_rate is None and out.spo2 is None


def test_simulator_live_encoding_round_trips() -> None:
    sample = LiveSample(77, 93, 141, 9, 12, True, False, False, False, True)
    assert decode_frame(Cms50Simulator.encode_live(sample)) == sample
    searching = LiveSample(20, None, None, 2, 0, False, False, True, True, False)
    assert decode_frame(Cms50Simulator.encode_live(searching)) == searching


def test_bad_sync_bits_and_wrong_length_raise_frame_error() -> None:
    for bad in (LIVE[:-1], bytes([0x81]) + LIVE[1:], LIVE[:4] + b"\x05" + LIVE[5:], b"\x15\x80\x80"):
        try:
            decode_frame(bad)
        except Cms50FrameError as exc:
            assert isinstance(exc, FrameError)
        else:
            raise AssertionError(f"{bad.hex()} must not decode")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 17), min_size=1, max_size=40))
def test_parser_splits_a_stream_in_any_chunking(cuts: list[int]) -> None:
    stream = LIVE + bytes.fromhex("0a808081") + LIVE_FINGER_OUT + LIVE
    p = Cms50Parser()
    frames: list[cms50.Frame] = []
    pos = 0
    for n in cuts * 10:
        frames += p.feed(stream[pos : pos + n])
        pos += n
    frames += p.feed(stream[pos:])
    assert frames == [decode_frame(LIVE), SessionCount(1), decode_frame(LIVE_FINGER_OUT), decode_frame(LIVE)]
    assert p.stats.garbage_bytes == 0 and p.stats.bad_frames == 0


def test_parser_resynchronises_after_noise_a_lost_byte_and_an_extra_byte() -> None:
    p = Cms50Parser()
    frames = p.feed(b"\xff\xfe\x81" + LIVE)  # noise (stray sync bytes)
    frames += p.feed(LIVE[:5] + LIVE[6:])  # lost byte: the fragment is cut by the next start byte
    frames += p.feed(LIVE)
    # An extra sync byte inside a packet cannot be seen (the protocol has no checksum): 9 bytes are
    # taken, giving one frame with shifted values (still range-checked), and the tail is garbage.
    frames += p.feed(LIVE[:3] + b"\x99" + LIVE[3:])
    frames += p.feed(LIVE)
    # where bytes were thrown away, the parser says so (a gap marker), so the signal is not joined
    assert [f.nbytes for f in frames if isinstance(f, Dropped)] == [3, 8, 1]
    frames = [f for f in frames if not isinstance(f, Dropped)]
    assert len(frames) == 4 and frames.count(decode_frame(LIVE)) == 3
    _assert_in_range(frames[2])
    assert p.stats.garbage_bytes == 3 + 8 + 1
    assert p.stats.bad_frames == 1


def _assert_in_range(frame: cms50.Frame) -> None:
    if isinstance(frame, LiveSample):
        assert 0 <= frame.pleth <= cms50.PLETH_MAX
        assert frame.spo2 is None or 1 <= frame.spo2 <= 100
        assert frame.pulse_rate is None or 30 <= frame.pulse_rate <= 250
    elif isinstance(frame, StoredPoints):
        for spo2, pr in frame.points:
            assert spo2 is None or 1 <= spo2 <= 100
            assert pr is None or 30 <= pr <= 250


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_and_never_give_out_of_range_values(data: bytes) -> None:
    p = Cms50Parser()
    for frame in p.feed(data) + p.feed(LIVE):
        _assert_in_range(frame)
    lp = LegacyParser()
    for frame in lp.feed(data):
        _assert_in_range(frame)
    try:
        _assert_in_range(decode_frame(data))
    except Cms50FrameError:
        pass
    try:
        _assert_in_range(decode_legacy(data[:5]))
    except Cms50FrameError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60), st.booleans())
def test_random_recording_downloads_parse_in_range_or_raise_frame_error(data: bytes, with_preamble: bool) -> None:
    if with_preamble:
        data = cms50.LEGACY_PREAMBLE + data
    try:
        announced, points = legacy_parse_download(data)
    except Cms50FrameError:
        return
    assert announced >= len(points)
    for spo2, pr in points:
        assert spo2 is None or 1 <= spo2 <= 100
        assert pr is None or 30 <= pr <= 250


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=3)), max_size=30))
def test_valid_frames_with_noise_between_are_all_found(values: list[tuple[int, int, bytes]]) -> None:
    p = Cms50Parser()
    wanted: list[cms50.Frame] = []
    out: list[cms50.Frame] = []
    for pr, spo2, noise in values:
        pkt = cms50.encode_packet(cms50.PT_LIVE, [0x05, 0x40, 0x00, pr, spo2 & 0x7F, 0xFF, 0xFF])
        wanted.append(decode_frame(pkt))
        # noise made of sync bytes only cannot start a packet: every real frame must survive it
        out += p.feed(bytes(b | 0x80 for b in noise) + pkt)
    assert sum(f.nbytes for f in out if isinstance(f, Dropped)) == sum(len(n) for _, _, n in values)
    out = [f for f in out if not isinstance(f, Dropped)]
    assert out == wanted
    for f in out:
        _assert_in_range(f)


# -- older 5-byte protocol (atbrask/CMS50Dplus unittests.py) -----------------------------------------


def test_legacy_vectors() -> None:
    for x in range(16):  # test_LiveData_signalStrength
        assert decode_legacy(bytes([0x80 | x, 0, 0, 0, 0])).signal == x
    assert decode_legacy(bytes([0x80, 0, 0x10, 0, 0])).finger_out  # test_LiveData_probeError
    assert decode_legacy(bytes([0x80, 0, 0x20, 0, 0])).searching  # test_LiveData_searching
    assert decode_legacy(bytes([0x80 | 0x40, 0, 0, 0, 0])).beat  # test_LiveData_beep
    # test_LiveData_pulseRate: the 8th bit of the pulse is bit 6 of byte 3
    s = decode_legacy(bytes([0x80, 0x32, 0x40, 0x10, 0x61]))
    assert (s.pleth, s.pulse_rate, s.spo2) == (50, 144, 97)
    assert encode_legacy(s) == bytes([0x86 & 0x80, 0x32, 0x40, 0x10, 0x61])
    # invalid markers: pulse 0xff, SpO2 0x7f
    none = decode_legacy(bytes([0x80, 0, 0x40, 0x7F, 0x7F]))
    assert none.pulse_rate is None and none.spo2 is None
    for bad in ([0, 0, 0, 0, 0], [0x80, 0x80, 0, 0, 0], [0x80, 0, 0, 0, 0x80]):  # test_LiveData_init_syncbit
        try:
            decode_legacy(bytes(bad))
        except Cms50FrameError:
            continue
        raise AssertionError(bytes(bad).hex())


def test_legacy_parser_resynchronises() -> None:
    frame = bytes([0x86, 0x32, 0x00, 0x48, 0x61])
    p = LegacyParser()
    out = p.feed(b"\x01\x02" + frame + frame[:3] + frame + frame)
    assert [f.nbytes for f in out if isinstance(f, Dropped)] == [2, 3]
    assert [f for f in out if not isinstance(f, Dropped)] == [decode_legacy(frame)] * 3
    assert p.stats.garbage_bytes == 2 + 3 and p.stats.bad_frames == 1


def test_legacy_download_round_trip_and_corruption() -> None:
    # RecordedDataPoint layout (atbrask): [f0 | pulse bit 7, 80 | pulse low 7, spo2]
    points = [(97, 66), (96, 130), (95, 250)]
    data = legacy_encode_download(points)
    assert data.startswith(bytes.fromhex("f28000f28000f28000"))
    assert legacy_parse_download(data) == (3, [(97, 66), (96, 130), (95, 250)])
    broken = bytearray(data)
    broken[-3] = 0x12
    try:
        legacy_parse_download(bytes(broken))
    except Cms50FrameError:
        pass
    else:
        raise AssertionError("a corrupted point must raise")


# -- live stream -> readings -----------------------------------------------------------------------


def _sample(pleth: int, *, finger_out: bool = False, searching: bool = False) -> LiveSample:
    bad = finger_out or searching
    return LiveSample(pleth, None if bad else 96, None if bad else 70, 5, 3, False, finger_out, searching, False, False)


def test_accumulator_blocks_flags_and_rate_limit() -> None:
    acc = LiveAccumulator("oxi", block=60, report_every_s=5.0)
    out: list[Waveform | Measurement] = []
    t0 = 1000.0
    for i in range(600):  # 10 s; frames 200..259 have the finger out
        out += acc.feed(_sample(i % 100, finger_out=200 <= i < 260), t0 + i / 60)
    out += acc.flush()
    waves = [r for r in out if isinstance(r, Waveform)]
    meas = [r for r in out if isinstance(r, Measurement)]
    samples = sum(len(w.channels["pleth"]) for w in waves)
    assert samples == 600 - 60
    assert acc.invalid_frames == 60
    assert all(not (200 <= w.first_index < 260) for w in waves)
    for w in waves:  # each block is contiguous and timed by its index
        assert abs(w.captured_at - (t0 + w.first_index / 60)) < 1e-6
        assert list(w.channels["pleth"]) == [float((w.first_index + k) % 100) for k in range(len(w.channels["pleth"]))]
    assert {m.code for m in meas} == {cms50.LOINC_SPO2, cms50.LOINC_PULSE}
    assert all(m.method == "device" for m in meas)
    spo2_times = [m.captured_at for m in meas if m.code == cms50.LOINC_SPO2]
    assert 2 <= len(spo2_times) <= 3
    assert all(b - a >= 5.0 - 1e-9 for a, b in itertools.pairwise(spo2_times))


def test_accumulator_index_jumps_over_a_gap_in_time() -> None:
    acc = LiveAccumulator("oxi", block=60)
    out: list[Waveform | Measurement] = []
    for i in range(90):
        out += acc.feed(_sample(i % 100), 100.0 + i / 60)
    for i in range(90):  # 3 s later (an unplug): the counter follows the clock
        out += acc.feed(_sample(i % 100), 104.5 + i / 60)
    out += acc.flush()
    waves = [r for r in out if isinstance(r, Waveform)]
    assert [w.first_index for w in waves] == [0, 60, 270, 330]
    assert [len(w.channels["pleth"]) for w in waves] == [60, 30, 60, 30]
    assert abs(waves[2].captured_at - 104.5) < 1e-9


def test_accumulator_reports_a_value_only_after_identical_frames() -> None:
    acc = LiveAccumulator("oxi", report_every_s=0.0, confirm=3)
    good = _sample(10)
    corrupted = LiveSample(10, 57, 71, 5, 3, False, False, False, False, False)  # one bad byte, in range
    frames = [good, good, corrupted, good, good, good, corrupted, good]
    reported = []
    for i, f in enumerate(frames):
        reported += [(i, m.value) for m in acc.feed(f, 10.0 + i / 60) if isinstance(m, Measurement)]
    assert [v for _, v in reported] == [96.0, 70.0]  # only at frame 5, after three identical frames
    assert {i for i, _ in reported} == {5}


def test_accumulator_ends_the_block_where_the_parser_dropped_bytes() -> None:
    acc = LiveAccumulator("oxi", block=60)
    out: list[Waveform | Measurement] = []
    for i in range(30):
        out += acc.feed(_sample(i), 10.0 + i / 60)
    out += acc.gap(9 * 2, frame_len=9)  # two frames lost on the line
    for i in range(32, 60):
        out += acc.feed(_sample(i), 10.0 + i / 60)
    out += acc.flush()
    waves = [w for w in out if isinstance(w, Waveform)]
    assert [(w.first_index, len(w.channels["pleth"])) for w in waves] == [(0, 30), (32, 28)]
    assert waves[1].channels["pleth"][0] == 32.0


def test_accumulator_never_reports_while_searching_or_finger_out() -> None:
    acc = LiveAccumulator("oxi")
    out: list[Waveform | Measurement] = []
    for i in range(300):
        out += acc.feed(_sample(10, searching=i % 2 == 0, finger_out=i % 2 == 1), 50.0 + i / 60)
    assert out == [] and acc.flush() == []


def test_session_records_have_original_times_and_stable_ids(tmp_path: Path) -> None:
    start = dt.datetime(2026, 11, 20, 22, 15, 0, tzinfo=dt.UTC)
    recs = session_records(start, [(97, 60), (None, None), (95, 62)], first_index=10)
    assert [r.captured_at for r in recs] == [start.timestamp() + s for s in (10, 11, 12)]
    assert [r.source_id for r in recs] == [f"cms50:20261120T221500:{i}" for i in (10, 11, 12)]
    ledger = FetchLedger(tmp_path / "ledger.json")
    ledger.mark("20261120T221500", 13)
    again = FetchLedger(tmp_path / "ledger.json")
    again.load()
    assert again.emitted("20261120T221500") == 13 and again.emitted("other") == 0
    (tmp_path / "bad.json").write_text("{not json")
    broken = FetchLedger(tmp_path / "bad.json")
    broken.load()  # a damaged ledger is reported and ignored, never fatal
    assert broken.done == {}


def test_a_wall_clock_step_back_does_not_silence_the_device_values() -> None:
    """The wall clock steps back by 30 minutes while the oximeter streams (a Pi's clock corrected, or a
    restart onto a clock behind): its values keep coming at their rate instead of stopping for 30 min."""
    acc = LiveAccumulator("oxi", block=60, report_every_s=1.0)
    out: list[Waveform | Measurement] = []
    t0 = 1_800_000_000.0
    for i in range(180):  # 3 s at the true time
        out += acc.feed(_sample(i % 100), t0 + i / 60)
    for i in range(180, 360):  # then 3 s on a clock 1800 s behind
        out += acc.feed(_sample(i % 100), t0 - 1800 + i / 60)
    after = [m for m in out if isinstance(m, Measurement) and m.code == cms50.LOINC_SPO2 and m.captured_at < t0]
    assert len(after) >= 2, "values after the step arrive at about one a second"


def test_the_wrist_rate_limiter_survives_a_step_back() -> None:
    from drivers.ble.wrist import RateLimiter

    r = RateLimiter(5.0)
    assert r.due("hr", 1000.0) and not r.due("hr", 1002.0)
    assert r.due("hr", 1000.0 - 1800), "a step back is not 'too soon'"
    assert not r.due("hr", 1000.0 - 1798) and r.due("hr", 1000.0 - 1794)


def test_a_read_that_returns_seconds_of_frames_after_a_stall_keeps_their_times_and_their_order() -> None:
    # The event loop was busy for 3 s: the frames waited in the tty and one read returns them all.
    acc = LiveAccumulator("oxi", block=60, report_every_s=1.0, confirm=1)
    t0 = 5000.0
    out: list[Waveform | Measurement] = []
    for i in range(120):  # 2 s read frame by frame, on time
        out += acc.feed_read([_sample(i % 100)], t0 + i / 60, 5)
    stalled = [_sample(i % 100) for i in range(120, 300)]  # 180 frames: 3 s of signal
    read_at = t0 + 299 / 60
    out += acc.feed_read(stalled, read_at, 5)
    for i in range(300, 420):
        out += acc.feed_read([_sample(i % 100)], t0 + i / 60, 5)
    out += acc.flush()
    spo2 = [m.captured_at for m in out if isinstance(m, Measurement) and m.code == cms50.LOINC_SPO2]
    assert len(spo2) >= 6 and all(b > a for a, b in itertools.pairwise(spo2)), "in order"
    waves = [w for w in out if isinstance(w, Waveform)]
    assert sum(len(w.channels["pleth"]) for w in waves) == 420
    assert all(b.first_index == a.first_index + len(a.channels["pleth"]) for a, b in itertools.pairwise(waves)), (
        "no gap that never was"
    )
    for w in waves:  # every block timed as the device sent it
        assert abs(w.captured_at - (t0 + w.first_index / 60)) < 1e-6
