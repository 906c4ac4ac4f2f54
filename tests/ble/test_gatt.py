"""GATT parsers: the public vectors of the issue (from Nordic's Android BLE Common Library tests), the
IEEE-11073 special values, the simulator's independent encoders against the decoders, and random bytes
into every parser (only GattDecodeError may come out)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import FrameError
from drivers.ble import gatt
from simulators.bluez import profiles


def test_heart_rate_vectors() -> None:
    m = gatt.decode(0x2A37, bytes.fromhex("0055"))
    assert isinstance(m, gatt.HeartRateMeasurement)
    assert (m.heart_rate, m.sensor_contact, m.energy_expended, m.rr_intervals_s) == (85, None, None, ())

    m = gatt.decode("2a37", bytes.fromhex("04ff"))
    assert isinstance(m, gatt.HeartRateMeasurement)
    assert (m.heart_rate, m.sensor_contact) == (255, False)

    m = gatt.decode(gatt.HEART_RATE_MEASUREMENT, bytes.fromhex("1e5532002100"))
    assert isinstance(m, gatt.HeartRateMeasurement)
    assert (m.heart_rate, m.sensor_contact, m.energy_expended) == (85, True, 50)
    assert m.rr_intervals_s == (33 / 1024,)

    m = gatt.decode(0x2A37, bytes.fromhex("1f0101320101000201ffff"))
    assert isinstance(m, gatt.HeartRateMeasurement)
    assert (m.heart_rate, m.energy_expended) == (257, 306)
    assert m.rr_intervals_s == (1 / 1024, 258 / 1024, 65535 / 1024)


def test_heart_rate_invalid_vector_raises_the_parser_error() -> None:
    with pytest.raises(gatt.GattDecodeError, match="RR"):
        gatt.decode(0x2A37, bytes.fromhex("170101"))


def test_blood_pressure_vectors() -> None:
    m = gatt.decode(0x2A35, bytes.fromhex("1e8a00580078000000041114293b3c00012700"))
    assert isinstance(m, gatt.BloodPressureMeasurement)
    assert (m.systolic, m.diastolic, m.mean_arterial_pressure, m.unit) == (138, 88, 120, "mm[Hg]")
    assert (m.pulse_rate, m.user_id) == (60, 1)
    assert m.status == {
        "body_movement_detected",
        "cuff_too_loose",
        "irregular_pulse_detected",
        "improper_measurement_position",
    }
    assert m.timestamp is not None and m.timestamp.as_datetime() is None  # year 0: time not known

    m = gatt.decode(0x2A35, bytes.fromhex("15bdf00b009ff03c001200"))
    assert isinstance(m, gatt.BloodPressureMeasurement)
    assert (m.systolic, m.diastolic, m.mean_arterial_pressure, m.unit) == (18.9, 11.0, 15.9, "kPa")
    assert m.pulse_rate == 60
    assert m.in_mmhg(m.systolic) == pytest.approx(141.8, abs=0.1)


def test_racp_vectors() -> None:
    r = gatt.decode(0x2A52, bytes.fromhex("06000106"))
    assert r == gatt.RacpResponseCode(request_op=1, status="no_records_found") and not r.ok
    assert gatt.decode(0x2A52, bytes.fromhex("05000201")) == gatt.RacpNumberOfRecords(258)
    with pytest.raises(gatt.GattDecodeError):
        gatt.decode(0x2A52, bytes.fromhex("060001ee"))  # reserved response code


@pytest.mark.parametrize("raw", [0x07FF, 0x0800, 0x07FE, 0x0802, 0x0801])
def test_sfloat_special_values_are_no_value(raw: int) -> None:
    assert gatt.decode_sfloat(raw.to_bytes(2, "little")) is None


@pytest.mark.parametrize("raw", [0x007FFFFF, 0x00800000, 0x007FFFFE, 0x00800002, 0x00800001])
def test_float_special_values_are_no_value(raw: int) -> None:
    assert gatt.decode_float(raw.to_bytes(4, "little")) is None


def test_sfloat_and_float_numbers() -> None:
    assert gatt.sfloat(0xF0BD) == 18.9  # mantissa 189, exponent -1
    assert gatt.sfloat(0x0FFF) == -1.0  # mantissa -1 (exponent 0 and not special)
    assert gatt.sfloat(0x2001) == 100.0
    assert gatt.float32(0xFE00_3039) == 123.45
    assert gatt.decode_float(bytes.fromhex("ffffff00")) == -1.0


def test_plx_special_values_become_no_value() -> None:
    m = gatt.decode(0x2A5F, bytes([0x00]) + (0x07FF).to_bytes(2, "little") + (0x0800).to_bytes(2, "little"))
    assert isinstance(m, gatt.PlxMeasurement)
    assert (m.spo2, m.pulse_rate) == (None, None)


def test_simulator_encoders_match_the_decoders() -> None:
    t = dt.datetime(2026, 11, 29, 8, 30, 5)
    m = gatt.decode(0x2A35, profiles.blood_pressure_measurement(131, 84, 100, timestamp=t, pulse=71, user_id=2))
    assert isinstance(m, gatt.BloodPressureMeasurement)
    assert (m.systolic, m.diastolic, m.mean_arterial_pressure, m.pulse_rate, m.user_id) == (131, 84, 100, 71, 2)
    assert m.timestamp is not None and m.timestamp.as_datetime() == t
    rec = gatt.decode(0x2B36, profiles.blood_pressure_record(513, profiles.blood_pressure_measurement(120, 80, 93)))
    assert isinstance(rec, gatt.BloodPressureRecord) and rec.sequence == 513 and rec.measurement is not None
    plx = gatt.decode(0x2A5F, profiles.plx_continuous(97, 64, pai=1.25, status=0x0080))
    assert isinstance(plx, gatt.PlxMeasurement)
    assert (plx.spo2, plx.pulse_rate, plx.pulse_amplitude_index) == (97, 64, 1.25)
    assert plx.status == {"validated_data"}
    ct = gatt.decode(0x2A2B, profiles.current_time(t))
    assert isinstance(ct, gatt.CurrentTime) and ct.timestamp.as_datetime() == t and ct.day_of_week == 7
    assert profiles.parse_current_time(gatt.encode_current_time(t)) == t
    frame = gatt.decode(gatt.RAW_PPG_FRAME, profiles.ppg_frame(2**32 - 1, 100.0, {"red": [1, -2], "ir": [3, 8388607]}))
    assert isinstance(frame, gatt.PpgFrame)
    assert frame.counter == 2**32 - 1 and frame.sample_rate_hz == 100.0
    assert frame.channels == {"red": (1, -2), "ir": (3, 8388607)}
    sos = gatt.decode(gatt.SOS_PRESS, profiles.sos_state(65535, True, 12, True))
    assert sos == gatt.SosState(65535, True, True, 12)
    feat = gatt.decode(gatt.RAW_PPG_FEATURE, profiles.ppg_feature(25.0, 5))
    assert feat == gatt.PpgFeature(("red", "ir", "green"), 25.0, 22, 5)


def test_unknown_uuid_is_not_a_malformed_value() -> None:
    with pytest.raises(gatt.UnknownCharacteristic):
        gatt.decode(0x2A00, b"\x00")
    with pytest.raises(gatt.UnknownCharacteristic):
        gatt.decode("not-a-uuid", b"\x00")


ALL_UUIDS = sorted(gatt.DECODERS)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ALL_UUIDS), st.binary(max_size=40))
def test_random_bytes_raise_only_the_parser_error(uuid: str, data: bytes) -> None:
    try:
        value = gatt.decode(uuid, data)
    except gatt.GattDecodeError as exc:
        assert isinstance(exc, FrameError) and str(exc)
        return
    assert value is not None


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(ALL_UUIDS), st.binary(min_size=1, max_size=12), st.binary(max_size=24))
def test_random_values_with_plausible_flags(uuid: str, head: bytes, tail: bytes) -> None:
    """Longer values whose first byte (flags/version) is often valid reach deeper into each parser."""
    data = bytes([head[0] & 0x1F]) + head[1:] + tail
    try:
        gatt.decode(uuid, data)
    except gatt.GattDecodeError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 0xFFFF))
def test_sfloat_is_a_number_or_no_value(raw: int) -> None:
    value = gatt.decode_sfloat(raw.to_bytes(2, "little"))
    assert value is None or (value == value and abs(value) <= 2047e7)
    assert (value is None) == (raw in gatt.SFLOAT_SPECIAL)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([25.0, 50.0, 100.0, 256.0, 6553.5]),
    st.lists(st.integers(-(2**23), 2**23 - 1), min_size=1, max_size=80),
    st.sets(st.sampled_from(gatt.PPG_CHANNELS), min_size=1),
)
def test_ppg_frames_round_trip(counter: int, fs: float, samples: list[int], names: set[str]) -> None:
    channels = {n: samples for n in names}
    frame = gatt.decode_ppg_frame(gatt.encode_ppg_frame(counter, fs, channels))
    assert frame.counter == counter and frame.sample_rate_hz == fs
    assert frame.channels == {n: tuple(samples) for n in gatt.PPG_CHANNELS if n in names}
