"""Standard GATT characteristic values, decoded by pure functions (bytes in, typed values out, no I/O).

One registry, :func:`decode`, keyed by characteristic UUID (a 16-bit int such as ``0x2A37``, a short
string ``"2a37"`` or the full 128-bit string). Every decoder raises :class:`GattDecodeError` (a
:class:`~drivers.base.FrameError`) with the reason for input that is malformed; it never returns a
guess. IEEE-11073 SFLOAT/FLOAT special values (NaN, NRes, +INF, -INF, reserved) decode to ``None``
("no value"), never to a number.

Field layouts follow the Bluetooth SIG GATT Specification Supplement: Heart Rate Measurement (0x2A37),
PLX Spot-Check (0x2A5E) and Continuous (0x2A5F) Measurement, Blood Pressure Measurement (0x2A35),
Intermediate Cuff Pressure (0x2A36), Blood Pressure Feature (0x2A49), Blood Pressure Record (0x2B36,
BPS 1.1), Battery Level (0x2A19), Current Time (0x2A2B) and Record Access Control Point (0x2A52)
responses. All multi-byte fields are little-endian.

The vendor-neutral raw PPG service (no SIG profile exists) is specified in ``docs/ble.md``; its frame
and feature characteristics are decoded here too.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from drivers.base import FrameError


class GattDecodeError(FrameError):
    """A characteristic value that its specification does not allow (too short, trailing bytes,
    flag and length disagree, values out of range)."""


class UnknownCharacteristic(LookupError):
    """No decoder is registered for this UUID (not a malformed value: a value we do not read)."""


BASE_UUID_SUFFIX: Final = "-0000-1000-8000-00805f9b34fb"


def uuid16(short: int) -> str:
    """The full 128-bit form of a 16-bit (or 32-bit) SIG UUID, lower case."""
    if not 0 <= short <= 0xFFFFFFFF:
        raise ValueError(f"UUID {short:#x} out of range")
    return f"{short:08x}{BASE_UUID_SUFFIX}"


def normalize_uuid(uuid: int | str) -> str:
    """``0x2A37``, ``"2a37"``, ``"0x2A37"``, ``"00002a37-0000-1000-8000-00805f9b34fb"`` -> the full form."""
    if isinstance(uuid, int):
        return uuid16(uuid)
    text = uuid.strip().lower()
    if text.startswith("0x"):
        text = text[2:]
    if len(text) in (4, 8) and all(c in "0123456789abcdef" for c in text):
        return uuid16(int(text, 16))
    if len(text) == 36 and text.count("-") == 4:
        return text
    raise ValueError(f"not a UUID: {uuid!r}")


# Characteristic and service UUIDs used by the drivers and the virtual BlueZ.
HEART_RATE_SERVICE: Final = uuid16(0x180D)
HEART_RATE_MEASUREMENT: Final = uuid16(0x2A37)
BODY_SENSOR_LOCATION: Final = uuid16(0x2A38)
PULSE_OXIMETER_SERVICE: Final = uuid16(0x1822)
PLX_SPOT_CHECK: Final = uuid16(0x2A5E)
PLX_CONTINUOUS: Final = uuid16(0x2A5F)
PLX_FEATURES: Final = uuid16(0x2A60)
BLOOD_PRESSURE_SERVICE: Final = uuid16(0x1810)
BLOOD_PRESSURE_MEASUREMENT: Final = uuid16(0x2A35)
INTERMEDIATE_CUFF_PRESSURE: Final = uuid16(0x2A36)
BLOOD_PRESSURE_FEATURE: Final = uuid16(0x2A49)
BLOOD_PRESSURE_RECORD: Final = uuid16(0x2B36)
RECORD_ACCESS_CONTROL_POINT: Final = uuid16(0x2A52)
BATTERY_SERVICE: Final = uuid16(0x180F)
BATTERY_LEVEL: Final = uuid16(0x2A19)
CURRENT_TIME_SERVICE: Final = uuid16(0x1805)
CURRENT_TIME: Final = uuid16(0x2A2B)
DEVICE_INFORMATION_SERVICE: Final = uuid16(0x180A)
MANUFACTURER_NAME: Final = uuid16(0x2A29)
MODEL_NUMBER: Final = uuid16(0x2A24)
CCCD: Final = uuid16(0x2902)

# Vendor-neutral services of this project (docs/ble.md). One random base, the 16 bits after the
# first hex group name the attribute.
_VENDOR = "-3e85-4d92-9610-86a2c84b5daa"
RAW_PPG_SERVICE: Final = "79310001" + _VENDOR
RAW_PPG_FRAME: Final = "79310002" + _VENDOR
RAW_PPG_FEATURE: Final = "79310003" + _VENDOR
SOS_SERVICE: Final = "79310010" + _VENDOR
SOS_PRESS: Final = "79310011" + _VENDOR

# Bluetooth SIG company id 0xFFFF: "for internal use / testing" until a device maker ships the
# pendant under its own id (docs/ble.md, SOS advertisement).
SOS_COMPANY_ID: Final = 0xFFFF


# --------------------------------------------------------------------------------------------------
# Reading helpers
# --------------------------------------------------------------------------------------------------


class _Reader:
    """Walks a value field by field; every read checks the length."""

    __slots__ = ("data", "name", "pos")

    def __init__(self, data: bytes | bytearray | memoryview, name: str) -> None:
        self.data = bytes(data)
        self.name = name
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise GattDecodeError(
                f"{self.name}: {what} needs {n} byte(s) at offset {self.pos}, only {len(self.data) - self.pos} left"
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "little")

    def u24(self, what: str) -> int:
        return int.from_bytes(self.take(3, what), "little")

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "little")

    def sfloat(self, what: str) -> float | None:
        return sfloat(self.u16(what))

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk

    def end(self) -> None:
        if self.pos != len(self.data):
            raise GattDecodeError(f"{self.name}: {len(self.data) - self.pos} unexpected trailing byte(s)")


# --------------------------------------------------------------------------------------------------
# IEEE 11073-20601 SFLOAT (16 bit) and FLOAT (32 bit)
# --------------------------------------------------------------------------------------------------

# Special values: NaN, NRes (not at this resolution), +INF, -INF, reserved. All are "no value".
SFLOAT_SPECIAL: Final = frozenset({0x07FF, 0x0800, 0x07FE, 0x0802, 0x0801})
FLOAT_SPECIAL: Final = frozenset({0x007FFFFF, 0x00800000, 0x007FFFFE, 0x00800002, 0x00800001})


def _scaled(mantissa: int, exponent: int) -> float:
    value = mantissa * (10.0**exponent)
    # 189 * 10**-1 is 18.900000000000002 in binary floating point: round to the digits the
    # device sent, so decoded values compare equal to what is on the display.
    return round(value, -exponent) if exponent < 0 else value


def sfloat(raw: int) -> float | None:
    """A 16-bit SFLOAT: 4-bit signed exponent, 12-bit signed mantissa. ``None`` for special values."""
    if not 0 <= raw <= 0xFFFF:
        raise ValueError(f"SFLOAT raw value {raw:#x} is not 16 bits")
    if raw in SFLOAT_SPECIAL:
        return None
    mantissa = raw & 0x0FFF
    if mantissa >= 0x0800:
        mantissa -= 0x1000
    exponent = raw >> 12
    if exponent >= 0x8:
        exponent -= 0x10
    return _scaled(mantissa, exponent)


def float32(raw: int) -> float | None:
    """A 32-bit FLOAT: 8-bit signed exponent, 24-bit signed mantissa. ``None`` for special values."""
    if not 0 <= raw <= 0xFFFFFFFF:
        raise ValueError(f"FLOAT raw value {raw:#x} is not 32 bits")
    if raw in FLOAT_SPECIAL:
        return None
    mantissa = raw & 0xFFFFFF
    if mantissa >= 0x800000:
        mantissa -= 0x1000000
    exponent = raw >> 24
    if exponent >= 0x80:
        exponent -= 0x100
    return _scaled(mantissa, exponent)


def decode_sfloat(data: bytes | bytearray | memoryview) -> float | None:
    if len(data) != 2:
        raise GattDecodeError(f"SFLOAT: {len(data)} bytes, expected 2")
    return sfloat(int.from_bytes(data, "little"))


def decode_float(data: bytes | bytearray | memoryview) -> float | None:
    if len(data) != 4:
        raise GattDecodeError(f"FLOAT: {len(data)} bytes, expected 4")
    return float32(int.from_bytes(data, "little"))


# --------------------------------------------------------------------------------------------------
# Date Time (0x2A08 layout, embedded in several characteristics)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DateTime:
    """A GATT Date Time. 0 in year, month or day means "not known"."""

    year: int
    month: int
    day: int
    hours: int
    minutes: int
    seconds: int

    def as_datetime(self) -> dt.datetime | None:
        """A naive ``datetime`` on the device's clock, or ``None`` when the date is not fully known."""
        if self.year == 0 or self.month == 0 or self.day == 0:
            return None
        try:
            return dt.datetime(self.year, self.month, self.day, self.hours, self.minutes, self.seconds)
        except ValueError:
            return None  # e.g. 31 February: kept as fields, not as a time

    @classmethod
    def from_datetime(cls, t: dt.datetime) -> DateTime:
        return cls(t.year, t.month, t.day, t.hour, t.minute, t.second)

    def encode(self) -> bytes:
        return self.year.to_bytes(2, "little") + bytes([self.month, self.day, self.hours, self.minutes, self.seconds])


def _date_time(r: _Reader) -> DateTime:
    year = r.u16("year")
    month, day, hours, minutes, seconds = r.take(5, "date time")
    if year != 0 and not 1582 <= year <= 9999:
        raise GattDecodeError(f"{r.name}: year {year} outside 1582..9999")
    if month > 12:
        raise GattDecodeError(f"{r.name}: month {month} outside 0..12")
    if day > 31:
        raise GattDecodeError(f"{r.name}: day {day} outside 0..31")
    if hours > 23 or minutes > 59 or seconds > 59:
        raise GattDecodeError(f"{r.name}: time {hours}:{minutes}:{seconds} out of range")
    return DateTime(year, month, day, hours, minutes, seconds)


def _named_flags(value: int, names: Mapping[int, str]) -> frozenset[str]:
    return frozenset(name for bit, name in names.items() if value & (1 << bit))


# --------------------------------------------------------------------------------------------------
# Heart Rate Measurement (0x2A37)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeartRateMeasurement:
    heart_rate: int  # /min
    sensor_contact: bool | None  # None: the sensor does not report contact
    energy_expended: int | None  # kJ since the last reset
    rr_intervals_s: tuple[float, ...]  # oldest first, resolution 1/1024 s


def decode_heart_rate_measurement(data: bytes | bytearray | memoryview) -> HeartRateMeasurement:
    r = _Reader(data, "heart rate measurement")
    flags = r.u8("flags")
    heart_rate = r.u16("heart rate (uint16)") if flags & 0x01 else r.u8("heart rate (uint8)")
    contact_supported = bool(flags & 0x04)
    sensor_contact = bool(flags & 0x02) if contact_supported else None
    energy = r.u16("energy expended") if flags & 0x08 else None
    rr: list[float] = []
    if flags & 0x10:
        if r.remaining() == 0:
            raise GattDecodeError("heart rate measurement: RR-interval flag set but no RR interval present")
        if r.remaining() % 2:
            raise GattDecodeError("heart rate measurement: RR intervals need 2 bytes each, odd length left")
        while r.remaining():
            rr.append(r.u16("RR interval") / 1024.0)
    r.end()
    return HeartRateMeasurement(heart_rate, sensor_contact, energy, tuple(rr))


# --------------------------------------------------------------------------------------------------
# Pulse oximetry: PLX Spot-Check (0x2A5E) and Continuous (0x2A5F)
# --------------------------------------------------------------------------------------------------

PLX_MEASUREMENT_STATUS: Final[Mapping[int, str]] = {
    5: "measurement_ongoing",
    6: "early_estimated_data",
    7: "validated_data",
    8: "fully_qualified_data",
    9: "data_from_measurement_storage",
    10: "data_for_demonstration",
    11: "data_for_testing",
    12: "calibration_ongoing",
    13: "measurement_unavailable",
    14: "questionable_measurement_detected",
    15: "invalid_measurement_detected",
}
PLX_DEVICE_SENSOR_STATUS: Final[Mapping[int, str]] = {
    0: "extended_display_update_ongoing",
    1: "equipment_malfunction_detected",
    2: "signal_processing_irregularity_detected",
    3: "inadequate_signal_detected",
    4: "poor_signal_detected",
    5: "low_perfusion_detected",
    6: "erratic_signal_detected",
    7: "nonpulsatile_signal_detected",
    8: "questionable_pulse_detected",
    9: "signal_analysis_ongoing",
    10: "sensor_interference_detected",
    11: "sensor_unconnected_to_user",
    12: "unknown_sensor_connected",
    13: "sensor_displaced",
    14: "sensor_malfunctioning",
    15: "sensor_disconnected",
}
# Status flags that make a reading unusable: the driver drops such values.
PLX_UNUSABLE: Final = frozenset(
    {
        "measurement_unavailable",
        "invalid_measurement_detected",
        "calibration_ongoing",
        "equipment_malfunction_detected",
        "sensor_unconnected_to_user",
        "sensor_disconnected",
        "sensor_malfunctioning",
        "data_for_demonstration",
        "data_for_testing",
    }
)


@dataclass(frozen=True, slots=True)
class PlxMeasurement:
    spo2: float | None  # %
    pulse_rate: float | None  # /min
    status: frozenset[str] = frozenset()
    pulse_amplitude_index: float | None = None  # %
    timestamp: DateTime | None = None  # spot-check only
    spo2_fast: float | None = None  # continuous only, optional
    pulse_rate_fast: float | None = None
    spo2_slow: float | None = None
    pulse_rate_slow: float | None = None
    device_clock_not_set: bool = False
    continuous: bool = True


def _check_spo2(value: float | None, name: str) -> float | None:
    if value is not None and not 0.0 <= value <= 100.0:
        raise GattDecodeError(f"{name}: SpO2 {value} outside 0..100 %")
    return value


def _check_pr(value: float | None, name: str) -> float | None:
    if value is not None and not 0.0 <= value <= 400.0:
        raise GattDecodeError(f"{name}: pulse rate {value} outside 0..400 /min")
    return value


def _plx_status(r: _Reader, meas: bool, dev: bool) -> frozenset[str]:
    names: set[str] = set()
    if meas:
        names |= _named_flags(r.u16("measurement status"), PLX_MEASUREMENT_STATUS)
    if dev:
        names |= _named_flags(r.u24("device and sensor status"), PLX_DEVICE_SENSOR_STATUS)
    return frozenset(names)


def decode_plx_continuous(data: bytes | bytearray | memoryview) -> PlxMeasurement:
    name = "PLX continuous measurement"
    r = _Reader(data, name)
    flags = r.u8("flags")
    spo2 = _check_spo2(r.sfloat("SpO2PR-Normal SpO2"), name)
    pr = _check_pr(r.sfloat("SpO2PR-Normal PR"), name)
    fast_spo2 = fast_pr = slow_spo2 = slow_pr = None
    if flags & 0x01:
        fast_spo2 = _check_spo2(r.sfloat("SpO2PR-Fast SpO2"), name)
        fast_pr = _check_pr(r.sfloat("SpO2PR-Fast PR"), name)
    if flags & 0x02:
        slow_spo2 = _check_spo2(r.sfloat("SpO2PR-Slow SpO2"), name)
        slow_pr = _check_pr(r.sfloat("SpO2PR-Slow PR"), name)
    status = _plx_status(r, bool(flags & 0x04), bool(flags & 0x08))
    pai = r.sfloat("pulse amplitude index") if flags & 0x10 else None
    r.end()
    return PlxMeasurement(
        spo2=spo2,
        pulse_rate=pr,
        status=status,
        pulse_amplitude_index=pai,
        spo2_fast=fast_spo2,
        pulse_rate_fast=fast_pr,
        spo2_slow=slow_spo2,
        pulse_rate_slow=slow_pr,
        continuous=True,
    )


def decode_plx_spot_check(data: bytes | bytearray | memoryview) -> PlxMeasurement:
    name = "PLX spot-check measurement"
    r = _Reader(data, name)
    flags = r.u8("flags")
    spo2 = _check_spo2(r.sfloat("SpO2"), name)
    pr = _check_pr(r.sfloat("PR"), name)
    timestamp = _date_time(r) if flags & 0x01 else None
    status = _plx_status(r, bool(flags & 0x02), bool(flags & 0x04))
    pai = r.sfloat("pulse amplitude index") if flags & 0x08 else None
    r.end()
    return PlxMeasurement(
        spo2=spo2,
        pulse_rate=pr,
        status=status,
        pulse_amplitude_index=pai,
        timestamp=timestamp,
        device_clock_not_set=bool(flags & 0x10),
        continuous=False,
    )


# --------------------------------------------------------------------------------------------------
# Blood pressure: Measurement (0x2A35), Intermediate Cuff Pressure (0x2A36), Feature (0x2A49),
# Record (0x2B36)
# --------------------------------------------------------------------------------------------------

UNIT_MMHG: Final = "mm[Hg]"
UNIT_KPA: Final = "kPa"
KPA_TO_MMHG: Final = 7.500615758  # 1 kPa = 1000 Pa / 133.322387415 Pa


class PulseRateRange(enum.StrEnum):
    WITHIN_RANGE = "within_range"
    EXCEEDS_UPPER_LIMIT = "exceeds_upper_limit"
    LESS_THAN_LOWER_LIMIT = "less_than_lower_limit"


BP_STATUS: Final[Mapping[int, str]] = {
    0: "body_movement_detected",
    1: "cuff_too_loose",
    2: "irregular_pulse_detected",
    5: "improper_measurement_position",
}


def _bp_status(raw: int, name: str) -> frozenset[str]:
    names = set(_named_flags(raw, BP_STATUS))
    rng = (raw >> 3) & 0x3
    if rng == 1:
        names.add("pulse_rate_exceeds_upper_limit")
    elif rng == 2:
        names.add("pulse_rate_less_than_lower_limit")
    elif rng == 3:
        raise GattDecodeError(f"{name}: pulse rate range detection value 3 is reserved")
    return frozenset(names)


@dataclass(frozen=True, slots=True)
class BloodPressureMeasurement:
    systolic: float | None
    diastolic: float | None
    mean_arterial_pressure: float | None
    unit: str  # UNIT_MMHG or UNIT_KPA, as the cuff sent it
    timestamp: DateTime | None = None
    pulse_rate: float | None = None  # /min
    user_id: int | None = None  # 0xFF: unknown user
    status: frozenset[str] = frozenset()

    def in_mmhg(self, value: float | None) -> float | None:
        if value is None or self.unit == UNIT_MMHG:
            return value
        return round(value * KPA_TO_MMHG, 1)


@dataclass(frozen=True, slots=True)
class IntermediateCuffPressure:
    cuff_pressure: float | None
    unit: str
    timestamp: DateTime | None = None
    pulse_rate: float | None = None
    user_id: int | None = None
    status: frozenset[str] = frozenset()


def _bp_common(
    r: _Reader, flags: int
) -> tuple[str, float | None, float | None, float | None, DateTime | None, float | None, int | None, frozenset[str]]:
    unit = UNIT_KPA if flags & 0x01 else UNIT_MMHG
    a = r.sfloat("systolic")
    b = r.sfloat("diastolic")
    c = r.sfloat("mean arterial pressure")
    timestamp = _date_time(r) if flags & 0x02 else None
    pulse = _check_pr(r.sfloat("pulse rate"), r.name) if flags & 0x04 else None
    user = r.u8("user id") if flags & 0x08 else None
    status = _bp_status(r.u16("measurement status"), r.name) if flags & 0x10 else frozenset()
    r.end()
    limit = 40.0 if unit == UNIT_KPA else 300.0
    for label, value in (("systolic", a), ("diastolic", b), ("mean arterial pressure", c)):
        if value is not None and not 0.0 <= value <= limit:
            raise GattDecodeError(f"{r.name}: {label} {value} {unit} outside 0..{limit:g}")
    return unit, a, b, c, timestamp, pulse, user, status


def decode_blood_pressure_measurement(data: bytes | bytearray | memoryview) -> BloodPressureMeasurement:
    r = _Reader(data, "blood pressure measurement")
    flags = r.u8("flags")
    unit, sys_, dia, mean, ts, pulse, user, status = _bp_common(r, flags)
    return BloodPressureMeasurement(sys_, dia, mean, unit, ts, pulse, user, status)


def decode_intermediate_cuff_pressure(data: bytes | bytearray | memoryview) -> IntermediateCuffPressure:
    r = _Reader(data, "intermediate cuff pressure")
    flags = r.u8("flags")
    # Same layout as the measurement; the current cuff pressure travels in the systolic field and
    # the other two fields are NaN.
    unit, cuff, _, _, ts, pulse, user, status = _bp_common(r, flags)
    return IntermediateCuffPressure(cuff, unit, ts, pulse, user, status)


BP_FEATURES: Final[Mapping[int, str]] = {
    0: "body_movement_detection",
    1: "cuff_fit_detection",
    2: "irregular_pulse_detection",
    3: "pulse_rate_range_detection",
    4: "measurement_position_detection",
    5: "multiple_bond",
    6: "e2e_crc",
    7: "user_data_service",
    8: "user_facing_time",
}


@dataclass(frozen=True, slots=True)
class BloodPressureFeature:
    features: frozenset[str]


def decode_blood_pressure_feature(data: bytes | bytearray | memoryview) -> BloodPressureFeature:
    r = _Reader(data, "blood pressure feature")
    raw = r.u16("features")
    r.end()
    return BloodPressureFeature(_named_flags(raw, BP_FEATURES))


@dataclass(frozen=True, slots=True)
class BloodPressureRecord:
    """A stored record (BPS 1.1 Blood Pressure Record). ``measurement`` is decoded when the record is
    complete in one segment and holds a Blood Pressure Measurement."""

    sequence: int  # per user, 0..65535, wraps
    record_uuid: str
    first_segment: bool
    last_segment: bool
    segment_counter: int
    payload: bytes
    measurement: BloodPressureMeasurement | None = None


def decode_blood_pressure_record(data: bytes | bytearray | memoryview, *, e2e_crc: bool = False) -> BloodPressureRecord:
    r = _Reader(data, "blood pressure record")
    header = r.u8("segmentation header")
    sequence = r.u16("sequence number")
    record_uuid = uuid16(r.u16("UUID"))
    payload = r.rest()
    if e2e_crc:
        if len(payload) < 2:
            raise GattDecodeError("blood pressure record: E2E-CRC announced but value too short")
        payload = payload[:-2]  # (checked by the caller that knows the whole record)
    if not payload:
        raise GattDecodeError("blood pressure record: no recorded characteristic")
    first, last = bool(header & 0x01), bool(header & 0x02)
    measurement = None
    if first and last and record_uuid == BLOOD_PRESSURE_MEASUREMENT:
        measurement = decode_blood_pressure_measurement(payload)
    return BloodPressureRecord(sequence, record_uuid, first, last, header >> 2, payload, measurement)


# --------------------------------------------------------------------------------------------------
# Battery Level (0x2A19), Current Time (0x2A2B)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatteryLevel:
    percent: int


def decode_battery_level(data: bytes | bytearray | memoryview) -> BatteryLevel:
    r = _Reader(data, "battery level")
    level = r.u8("level")
    r.end()
    if level > 100:
        raise GattDecodeError(f"battery level: {level} % is more than 100")
    return BatteryLevel(level)


ADJUST_REASONS: Final[Mapping[int, str]] = {
    0: "manual_time_update",
    1: "external_reference_time_update",
    2: "change_of_time_zone",
    3: "change_of_dst",
}


@dataclass(frozen=True, slots=True)
class CurrentTime:
    timestamp: DateTime
    day_of_week: int | None  # 1 = Monday .. 7 = Sunday; None: not known
    fractions256: int
    adjust_reason: frozenset[str] = field(default_factory=frozenset)


def decode_current_time(data: bytes | bytearray | memoryview) -> CurrentTime:
    r = _Reader(data, "current time")
    timestamp = _date_time(r)
    dow = r.u8("day of week")
    if dow > 7:
        raise GattDecodeError(f"current time: day of week {dow} outside 0..7")
    fractions = r.u8("fractions256")
    reason = r.u8("adjust reason")
    r.end()
    return CurrentTime(timestamp, dow or None, fractions, _named_flags(reason, ADJUST_REASONS))


def encode_current_time(t: dt.datetime, *, reason: frozenset[str] = frozenset({"manual_time_update"})) -> bytes:
    """The 10-byte Current Time value to write to a device's clock (its local time)."""
    fractions = min(255, int(t.microsecond * 256 / 1_000_000))
    bits = sum(1 << bit for bit, name in ADJUST_REASONS.items() if name in reason)
    return DateTime.from_datetime(t).encode() + bytes([t.isoweekday(), fractions, bits])


# --------------------------------------------------------------------------------------------------
# Record Access Control Point (0x2A52)
# --------------------------------------------------------------------------------------------------


class RacpOp(enum.IntEnum):
    REPORT_STORED_RECORDS = 0x01
    DELETE_STORED_RECORDS = 0x02
    ABORT_OPERATION = 0x03
    REPORT_NUMBER_OF_STORED_RECORDS = 0x04
    NUMBER_OF_STORED_RECORDS_RESPONSE = 0x05
    RESPONSE_CODE = 0x06


class RacpOperator(enum.IntEnum):
    NULL = 0x00
    ALL_RECORDS = 0x01
    LESS_THAN_OR_EQUAL = 0x02
    GREATER_THAN_OR_EQUAL = 0x03
    WITHIN_RANGE = 0x04
    FIRST_RECORD = 0x05
    LAST_RECORD = 0x06


RACP_FILTER_SEQUENCE_NUMBER: Final = 0x01

RACP_RESPONSE_CODES: Final[Mapping[int, str]] = {
    0x01: "success",
    0x02: "op_code_not_supported",
    0x03: "invalid_operator",
    0x04: "operator_not_supported",
    0x05: "invalid_operand",
    0x06: "no_records_found",
    0x07: "abort_unsuccessful",
    0x08: "procedure_not_completed",
    0x09: "operand_not_supported",
}


@dataclass(frozen=True, slots=True)
class RacpNumberOfRecords:
    count: int


@dataclass(frozen=True, slots=True)
class RacpResponseCode:
    request_op: int  # the op code of the request this answers
    status: str  # one of RACP_RESPONSE_CODES' names

    @property
    def ok(self) -> bool:
        return self.status == "success"


RacpResponse: TypeAlias = RacpNumberOfRecords | RacpResponseCode


def decode_racp_response(data: bytes | bytearray | memoryview) -> RacpResponse:
    r = _Reader(data, "record access control point")
    op = r.u8("op code")
    operator = r.u8("operator")
    if operator != RacpOperator.NULL:
        raise GattDecodeError(f"record access control point: response operator {operator:#04x}, expected 0x00")
    if op == RacpOp.NUMBER_OF_STORED_RECORDS_RESPONSE:
        count = r.u16("number of records")
        r.end()
        return RacpNumberOfRecords(count)
    if op == RacpOp.RESPONSE_CODE:
        request = r.u8("request op code")
        code = r.u8("response code value")
        r.end()
        if code not in RACP_RESPONSE_CODES:
            raise GattDecodeError(f"record access control point: response code {code:#04x} is reserved")
        return RacpResponseCode(request, RACP_RESPONSE_CODES[code])
    raise GattDecodeError(f"record access control point: op code {op:#04x} is not a response")


def racp_request(op: RacpOp, operator: RacpOperator = RacpOperator.NULL, operand: bytes = b"") -> bytes:
    return bytes([op, operator]) + operand


def racp_report_from_sequence(first_sequence: int) -> bytes:
    """ "Report stored records with sequence number >= ``first_sequence``"."""
    return racp_request(
        RacpOp.REPORT_STORED_RECORDS,
        RacpOperator.GREATER_THAN_OR_EQUAL,
        bytes([RACP_FILTER_SEQUENCE_NUMBER]) + (first_sequence & 0xFFFF).to_bytes(2, "little"),
    )


# --------------------------------------------------------------------------------------------------
# Raw PPG (vendor-neutral, docs/ble.md)
# --------------------------------------------------------------------------------------------------

PPG_CHANNELS: Final = ("red", "ir", "green")  # bit 0, 1, 2 of the channel mask, and the sample order
# Format 2 adds bit 3 of the mask: 3-axis acceleration (int16 in mg, after the optical samples), and an
# activity byte (the device's own classification). Format 1 frames are still read.
PPG_ACCEL_CHANNELS: Final = ("accel_x", "accel_y", "accel_z")
PPG_ACCEL_BIT: Final = 0x08
PPG_FORMAT_VERSION: Final = 1
PPG_FORMAT_VERSION_MOTION: Final = 2
PPG_HEADER_LEN: Final = 9  # format 1; format 2 has one more byte (activity)
PPG_ACTIVITY: Final[Mapping[int, bool | None]] = {0: None, 1: True, 2: False}  # -> at_rest


@dataclass(frozen=True, slots=True)
class PpgFrame:
    """One notification of the raw PPG stream."""

    sample_rate_hz: float
    counter: int  # the device's running sample counter of the first sample (uint32, wraps)
    # channel name -> raw samples: optical ADC counts (signed 24 bit); ``accel_x/y/z`` in mg (int16)
    channels: Mapping[str, tuple[int, ...]]
    at_rest: bool | None = None  # the device's own activity flag (format 2); None: not reported

    @property
    def n_samples(self) -> int:
        return len(next(iter(self.channels.values()))) if self.channels else 0


def _s24(b: bytes, i: int) -> int:
    v = b[i] | (b[i + 1] << 8) | (b[i + 2] << 16)
    return v - 0x1000000 if v & 0x800000 else v


def _s16(b: bytes, i: int) -> int:
    v = b[i] | (b[i + 1] << 8)
    return v - 0x10000 if v & 0x8000 else v


def decode_ppg_frame(data: bytes | bytearray | memoryview) -> PpgFrame:
    r = _Reader(data, "raw PPG frame")
    header = r.u8("version")
    version = header >> 4
    if version not in (PPG_FORMAT_VERSION, PPG_FORMAT_VERSION_MOTION):
        raise GattDecodeError(
            f"raw PPG frame: format version {version}, this gateway reads {PPG_FORMAT_VERSION} and "
            f"{PPG_FORMAT_VERSION_MOTION}"
        )
    if header & 0x0F:
        raise GattDecodeError("raw PPG frame: reserved bits set in the version byte")
    mask = r.u8("channel mask")
    allowed = 0x0F if version == PPG_FORMAT_VERSION_MOTION else 0x07
    if mask & 0x07 == 0 or mask & ~allowed:
        raise GattDecodeError(
            f"raw PPG frame: channel mask {mask:#04x} (bits 0-2, at least one"
            + (", bit 3 acceleration)" if version == PPG_FORMAT_VERSION_MOTION else ")")
        )
    rate_dhz = r.u16("sample rate")
    if rate_dhz == 0:
        raise GattDecodeError("raw PPG frame: sample rate 0")
    counter = r.u32("sample counter")
    n = r.u8("samples per channel")
    if n == 0:
        raise GattDecodeError("raw PPG frame: no samples")
    at_rest = None
    if version == PPG_FORMAT_VERSION_MOTION:
        activity = r.u8("activity")
        if activity not in PPG_ACTIVITY:
            raise GattDecodeError(f"raw PPG frame: activity {activity} (0 not reported, 1 at rest, 2 active)")
        at_rest = PPG_ACTIVITY[activity]
    names = [name for bit, name in enumerate(PPG_CHANNELS) if mask & (1 << bit)]
    accel = bool(mask & PPG_ACCEL_BIT)
    stride = 3 * len(names) + (6 if accel else 0)
    body = r.take(stride * n, "samples")
    r.end()
    channels = {name: tuple(_s24(body, i * stride + 3 * k) for i in range(n)) for k, name in enumerate(names)}
    if accel:
        off = 3 * len(names)
        for k, name in enumerate(PPG_ACCEL_CHANNELS):
            channels[name] = tuple(_s16(body, i * stride + off + 2 * k) for i in range(n))
    return PpgFrame(rate_dhz / 10.0, counter, channels, at_rest)


def encode_ppg_frame(
    counter: int,
    sample_rate_hz: float,
    channels: Mapping[str, list[int] | tuple[int, ...]],
    *,
    at_rest: bool | None = None,
) -> bytes:
    """The frame a device sends (used by the simulator and by firmware tests): format 1 for optical
    channels alone, format 2 with ``accel_x/y/z`` (mg) or an activity flag."""
    names = [name for name in PPG_CHANNELS if name in channels]
    accel = [name for name in PPG_ACCEL_CHANNELS if name in channels]
    if not names or len(names) + len(accel) != len(channels) or len(accel) not in (0, 3):
        raise ValueError(f"channels: a non-empty subset of {PPG_CHANNELS}, and all or none of {PPG_ACCEL_CHANNELS}")
    n = len(channels[names[0]])
    if not 1 <= n <= 255 or any(len(channels[c]) != n for c in channels):
        raise ValueError("every channel needs the same number of samples, 1..255")
    motion = bool(accel) or at_rest is not None
    mask = sum(1 << PPG_CHANNELS.index(c) for c in names) | (PPG_ACCEL_BIT if accel else 0)
    out = bytearray([(PPG_FORMAT_VERSION_MOTION if motion else PPG_FORMAT_VERSION) << 4, mask])
    out += round(sample_rate_hz * 10).to_bytes(2, "little")
    out += (counter & 0xFFFFFFFF).to_bytes(4, "little")
    out.append(n)
    if motion:
        out.append({None: 0, True: 1, False: 2}[at_rest])
    for i in range(n):
        for c in names:
            out += (int(channels[c][i]) & 0xFFFFFF).to_bytes(3, "little")
        for c in accel:
            out += (int(channels[c][i]) & 0xFFFF).to_bytes(2, "little")
    return bytes(out)


@dataclass(frozen=True, slots=True)
class PpgFeature:
    channels: tuple[str, ...]
    sample_rate_hz: float
    adc_bits: int
    max_samples_per_frame: int


def decode_ppg_feature(data: bytes | bytearray | memoryview) -> PpgFeature:
    r = _Reader(data, "raw PPG feature")
    version = r.u8("version")
    if version not in (PPG_FORMAT_VERSION, PPG_FORMAT_VERSION_MOTION):
        raise GattDecodeError(
            f"raw PPG feature: version {version}, expected {PPG_FORMAT_VERSION} or {PPG_FORMAT_VERSION_MOTION}"
        )
    mask = r.u8("channels")
    if mask & 0x07 == 0 or mask & ~(0x0F if version == PPG_FORMAT_VERSION_MOTION else 0x07):
        raise GattDecodeError(f"raw PPG feature: channel mask {mask:#04x}")
    rate = r.u16("sample rate")
    bits = r.u8("ADC bits")
    per_frame = r.u8("max samples per frame")
    r.end()
    if rate == 0 or not 1 <= bits <= 24 or per_frame == 0:
        raise GattDecodeError("raw PPG feature: zero rate or frame size, or ADC bits outside 1..24")
    names = tuple(name for bit, name in enumerate(PPG_CHANNELS) if mask & (1 << bit))
    if mask & PPG_ACCEL_BIT:
        names += PPG_ACCEL_CHANNELS
    return PpgFeature(names, rate / 10.0, bits, per_frame)


# --------------------------------------------------------------------------------------------------
# SOS pendant press (advertisement manufacturer data and the notify characteristic, docs/ble.md)
# --------------------------------------------------------------------------------------------------


# How the latest press was made (format 1.1, byte 5): BTHome v2's button event codes, by the names of
# drivers.options.PRESS_PATTERNS. 0x00: the pendant did not tell.
SOS_PATTERNS: Final[Mapping[int, str]] = {
    0x01: "press",
    0x02: "double_press",
    0x03: "triple_press",
    0x04: "long_press",
    0x05: "long_double_press",
    0x06: "long_triple_press",
    0x80: "hold_press",
}


@dataclass(frozen=True, slots=True)
class SosState:
    press_counter: int  # uint16, +1 per press, wraps; survives sleep, not a battery change
    alarm_active: bool  # a press happened in the last ~30 s
    battery_low: bool
    battery_percent: int | None
    pattern: str | None = None  # how the latest press was made (format 1.1), None: not told


def decode_sos_state(data: bytes | bytearray | memoryview) -> SosState:
    r = _Reader(data, "SOS state")
    version = r.u8("version")
    if version >> 4 != 1:
        raise GattDecodeError(f"SOS state: format version {version >> 4}, expected 1")
    if version & 0x0F > 1:
        raise GattDecodeError(f"SOS state: format revision 1.{version & 0x0F}, expected 1.0 or 1.1")
    flags = r.u8("flags")
    if flags & ~0x03:
        raise GattDecodeError(f"SOS state: reserved flag bits {flags:#04x}")
    counter = r.u16("press counter")
    battery = r.u8("battery")
    pattern: str | None = None
    if version & 0x0F == 1:  # 1.1: the pattern of the latest press follows
        code = r.u8("press pattern")
        if code and code not in SOS_PATTERNS:
            raise GattDecodeError(f"SOS state: press pattern {code:#04x} is not a known one")
        pattern = SOS_PATTERNS.get(code)
    r.end()
    if battery != 0xFF and battery > 100:
        raise GattDecodeError(f"SOS state: battery {battery} % is more than 100")
    return SosState(counter, bool(flags & 0x01), bool(flags & 0x02), None if battery == 0xFF else battery, pattern)


def encode_sos_state(state: SosState) -> bytes:
    """Format 1.0 (5 bytes) without a pattern, 1.1 (6 bytes) with one."""
    flags = (0x01 if state.alarm_active else 0) | (0x02 if state.battery_low else 0)
    battery = 0xFF if state.battery_percent is None else state.battery_percent
    version = 0x10 if state.pattern is None else 0x11
    head = bytes([version, flags]) + (state.press_counter & 0xFFFF).to_bytes(2, "little")
    if state.pattern is None:
        return head + bytes([battery])
    code = next(c for c, name in SOS_PATTERNS.items() if name == state.pattern)
    return head + bytes([battery, code])


# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------

Decoded: TypeAlias = (
    HeartRateMeasurement
    | PlxMeasurement
    | BloodPressureMeasurement
    | IntermediateCuffPressure
    | BloodPressureFeature
    | BloodPressureRecord
    | BatteryLevel
    | CurrentTime
    | RacpNumberOfRecords
    | RacpResponseCode
    | PpgFrame
    | PpgFeature
    | SosState
)

DECODERS: Final[Mapping[str, Callable[[bytes | bytearray | memoryview], Decoded]]] = {
    HEART_RATE_MEASUREMENT: decode_heart_rate_measurement,
    PLX_SPOT_CHECK: decode_plx_spot_check,
    PLX_CONTINUOUS: decode_plx_continuous,
    BLOOD_PRESSURE_MEASUREMENT: decode_blood_pressure_measurement,
    INTERMEDIATE_CUFF_PRESSURE: decode_intermediate_cuff_pressure,
    BLOOD_PRESSURE_FEATURE: decode_blood_pressure_feature,
    BLOOD_PRESSURE_RECORD: decode_blood_pressure_record,
    BATTERY_LEVEL: decode_battery_level,
    CURRENT_TIME: decode_current_time,
    RECORD_ACCESS_CONTROL_POINT: decode_racp_response,
    RAW_PPG_FRAME: decode_ppg_frame,
    RAW_PPG_FEATURE: decode_ppg_feature,
    SOS_PRESS: decode_sos_state,
}


def decode(uuid: int | str, data: bytes | bytearray | memoryview) -> Decoded:
    """Decode the value of characteristic ``uuid``. Raises :class:`GattDecodeError` for a malformed
    value and :class:`UnknownCharacteristic` for a UUID without a decoder."""
    try:
        key = normalize_uuid(uuid)
    except ValueError as exc:
        raise UnknownCharacteristic(str(exc)) from None
    decoder = DECODERS.get(key)
    if decoder is None:
        raise UnknownCharacteristic(f"no decoder for characteristic {key}")
    return decoder(data)
