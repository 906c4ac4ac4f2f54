"""Beurer BM58/BM65-family blood-pressure protocol with bytes alone.

Vector layout from atbrask/beurer_bm65 (``Measurement``: header, sys-25, dia-25, pulse, month, day,
hours, minutes, year-2000) and babo/bm58 (header 0xAC, 0xA9 = no record, 0xAA -> 0x55).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import FrameError
from drivers.serial import bpm
from drivers.serial.bpm import BpFrameError, BpRecord, encode_record, parse_count, parse_record, record_measurements

# 135/80 mmHg, pulse 72, 2026-11-20 08:05 on the monitor's clock
VECTOR = bytes.fromhex("ac6e37480b1408051a")


def test_record_vector_decodes() -> None:
    rec = parse_record(VECTOR)
    assert rec == BpRecord(135, 80, 72, dt.datetime(2026, 11, 20, 8, 5))
    assert encode_record(rec) == VECTOR
    assert rec.key == "bm58:20261120T0805:135/80/72"


def test_no_record_and_requests() -> None:
    assert parse_record(bytes([0xA9])) is None
    assert bpm.record_request(1) == bytes([0xA3, 0x01])
    assert bpm.PING == b"\xaa" and bpm.COUNT == b"\xa2" and bpm.IDENTIFY == b"\xa4"
    assert parse_count(b"\x3c") == 60
    assert bpm.parse_description(b"Andon Blood Pressure Meter KD001\x00\x00") == "Andon Blood Pressure Meter KD001"


def test_corrupted_records_raise_frame_error() -> None:
    bad = [
        VECTOR[:-1],  # truncated
        b"\x00" + VECTOR[1:],  # wrong header (noise in front shifts everything)
        VECTOR[:1] + bytes([50 - 25, 90 - 25]) + VECTOR[3:],  # diastolic above systolic
        VECTOR[:4] + bytes([13]) + VECTOR[5:],  # month 13
        VECTOR[:4] + bytes([2, 30]) + VECTOR[6:],  # 30 February
        VECTOR[:3] + bytes([251]) + VECTOR[4:],  # pulse 251
    ]
    for data in bad:
        try:
            parse_record(data)
        except BpFrameError as exc:
            assert isinstance(exc, FrameError)
        else:
            raise AssertionError(f"{data.hex()} must not parse")


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=0, max_size=12))
def test_random_replies_are_a_plausible_record_or_a_frame_error(data: bytes) -> None:
    try:
        rec = parse_record(data)
    except BpFrameError:
        return
    if rec is None:
        assert data == b"\xa9"
        return
    assert 50 <= rec.systolic <= 280 and 25 <= rec.diastolic <= 200 and rec.diastolic < rec.systolic
    assert rec.pulse is None or 30 <= rec.pulse <= 250


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40))
def test_random_count_and_description_replies(data: bytes) -> None:
    try:
        assert 0 <= parse_count(data) <= 255
    except BpFrameError:
        assert len(data) != 1
    text = bpm.parse_description(data)
    assert all(0x20 <= ord(c) < 0x7F for c in text)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(50, 280),
    st.integers(25, 200),
    st.integers(30, 250),
    st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2099, 12, 31)),
)
def test_encode_parse_round_trip(sys_: int, dia: int, pulse: int, when: dt.datetime) -> None:
    if dia >= sys_:
        return
    rec = BpRecord(sys_, dia, pulse, when.replace(second=0, microsecond=0))
    assert parse_record(encode_record(rec)) == rec


def test_measurements_carry_original_time_codes_and_identity() -> None:
    rec = parse_record(VECTOR)
    assert rec is not None
    tz = zoneinfo.ZoneInfo("Europe/Berlin")
    ms = record_measurements("bp-1", rec, tz)
    assert [(m.code, m.value, m.unit) for m in ms] == [
        ("8480-6", 135.0, "mm[Hg]"),
        ("8462-4", 80.0, "mm[Hg]"),
        ("8867-4", 72.0, "/min"),
    ]
    expected = dt.datetime(2026, 11, 20, 7, 5, tzinfo=dt.UTC).timestamp()  # 08:05 CET
    assert all(m.captured_at == expected and m.source_id == rec.key and m.method == "device" for m in ms)
