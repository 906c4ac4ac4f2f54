"""Encoders for the characteristic values the simulated peripherals send, written from the GATT
Specification Supplement independently of the gateway's decoders (``drivers.ble.gatt``), so a
misreading of the specification on one side is not silently mirrored on the other."""

from __future__ import annotations

import datetime as dt
import struct

# IEEE 11073 SFLOAT special values (exponent 0).
SFLOAT_NAN = 0x07FF
SFLOAT_NRES = 0x0800
SFLOAT_PLUS_INF = 0x07FE
SFLOAT_MINUS_INF = 0x0802


def sfloat(value: float | None, decimals: int = 0) -> bytes:
    """``value`` as SFLOAT with ``decimals`` digits after the point; None -> NaN."""
    if value is None:
        raw = SFLOAT_NAN
    else:
        mantissa = round(value * 10**decimals)
        exponent = -decimals
        while not -2046 <= mantissa <= 2045:  # keep clear of the special values
            mantissa = round(mantissa / 10)
            exponent += 1
        raw = ((exponent & 0xF) << 12) | (mantissa & 0x0FFF)
    return struct.pack("<H", raw)


def date_time(t: dt.datetime) -> bytes:
    return struct.pack("<HBBBBB", t.year, t.month, t.day, t.hour, t.minute, t.second)


def heart_rate_measurement(
    bpm: int, rr_s: list[float], *, contact: bool | None = True, energy_kj: int | None = None
) -> bytes:
    flags = 0
    body = b""
    if bpm > 255:
        flags |= 0x01
        body += struct.pack("<H", bpm)
    else:
        body += struct.pack("<B", bpm)
    if contact is not None:
        flags |= 0x04 | (0x02 if contact else 0)
    if energy_kj is not None:
        flags |= 0x08
        body += struct.pack("<H", energy_kj)
    if rr_s:
        flags |= 0x10
        body += b"".join(struct.pack("<H", min(0xFFFF, round(rr * 1024))) for rr in rr_s)
    return bytes([flags]) + body


def plx_continuous(spo2: float | None, pr: float | None, *, pai: float | None = None, status: int = 0) -> bytes:
    flags = 0
    body = sfloat(spo2) + sfloat(pr)
    if status:
        flags |= 0x04
        body += struct.pack("<H", status)
    if pai is not None:
        flags |= 0x10
        body += sfloat(pai, 2)
    return bytes([flags]) + body


def plx_features() -> bytes:
    # Supported Features: bit 0 measurement status, bit 1 device and sensor status present: none.
    return struct.pack("<H", 0x0000)


def blood_pressure_measurement(
    systolic: float,
    diastolic: float,
    mean: float,
    *,
    kpa: bool = False,
    timestamp: dt.datetime | None = None,
    pulse: float | None = None,
    user_id: int | None = None,
    status: int | None = None,
) -> bytes:
    flags = 0x01 if kpa else 0x00
    decimals = 1 if kpa else 0
    body = sfloat(systolic, decimals) + sfloat(diastolic, decimals) + sfloat(mean, decimals)
    if timestamp is not None:
        flags |= 0x02
        body += date_time(timestamp)
    if pulse is not None:
        flags |= 0x04
        body += sfloat(pulse)
    if user_id is not None:
        flags |= 0x08
        body += bytes([user_id])
    if status is not None:
        flags |= 0x10
        body += struct.pack("<H", status)
    return bytes([flags]) + body


def intermediate_cuff_pressure(pressure: float) -> bytes:
    return bytes([0x00]) + sfloat(pressure) + sfloat(None) + sfloat(None)


def blood_pressure_feature() -> bytes:
    # body movement, cuff fit, irregular pulse, pulse rate range, measurement position detection
    return struct.pack("<H", 0x001F)


def blood_pressure_record(sequence: int, payload: bytes, record_uuid: int = 0x2A35) -> bytes:
    # Segmentation header: first and last segment (the whole record fits), rolling counter 0.
    return bytes([0x03]) + struct.pack("<HH", sequence & 0xFFFF, record_uuid) + payload


def racp_number_of_records(count: int) -> bytes:
    return bytes([0x05, 0x00]) + struct.pack("<H", count)


def racp_response(request_op: int, code: int) -> bytes:
    return bytes([0x06, 0x00, request_op, code])


def current_time(t: dt.datetime) -> bytes:
    return date_time(t) + bytes([t.isoweekday(), 0, 0])


def parse_current_time(data: bytes) -> dt.datetime:
    if len(data) != 10:
        raise ValueError(f"current time needs 10 bytes, got {len(data)}")
    year, month, day, hour, minute, second = struct.unpack("<HBBBBB", data[:7])
    return dt.datetime(year, month, day, hour, minute, second)


def ppg_frame(counter: int, rate_hz: float, samples: dict[str, list[int]], at_rest: bool | None = None) -> bytes:
    """Raw PPG frame (docs/ble.md): format 1 (version, channel mask, rate in 0.1 Hz, counter, n, int24
    samples), or format 2 when ``samples`` has ``accel_x/y/z`` (int16 mg after each sample's optical
    values, mask bit 3) or an activity flag is given (one more header byte: 0 none, 1 rest, 2 active)."""
    order = ("red", "ir", "green")
    axes = ("accel_x", "accel_y", "accel_z")
    names = [c for c in order if c in samples]
    accel = all(a in samples for a in axes)
    v2 = accel or at_rest is not None
    mask = sum(1 << order.index(c) for c in names) | (0x08 if accel else 0)
    n = len(samples[names[0]])
    out = bytearray(struct.pack("<BBHIB", 0x20 if v2 else 0x10, mask, round(rate_hz * 10), counter & 0xFFFFFFFF, n))
    if v2:
        out.append(0 if at_rest is None else 1 if at_rest else 2)
    for i in range(n):
        for c in names:
            out += (samples[c][i] & 0xFFFFFF).to_bytes(3, "little")
        if accel:
            out += struct.pack("<hhh", *(max(-32768, min(32767, samples[a][i])) for a in axes))
    return bytes(out)


def ppg_feature(rate_hz: float, per_frame: int, accel: bool = False) -> bytes:
    return struct.pack("<BBHBB", 2 if accel else 1, 0x0F if accel else 0x07, round(rate_hz * 10), 22, per_frame)


# BTHome v2's button event codes (bthome.io/format, object 0x3A), by the gateway's pattern names
# (drivers.options.PRESS_PATTERNS): the BTHome button sends them, and the SOS pendant's format 1.1 says
# with them how its latest press was made (docs/ble.md).
BUTTON_EVENT_CODES = {
    "press": 0x01,
    "double_press": 0x02,
    "triple_press": 0x03,
    "long_press": 0x04,
    "long_double_press": 0x05,
    "long_triple_press": 0x06,
    "hold_press": 0x80,
}


def sos_state(
    counter: int, alarm: bool, battery: int | None, battery_low: bool = False, pattern: str | None = None
) -> bytes:
    """Format 1.0 (5 bytes), or 1.1 (6 bytes: the latest press's pattern) when ``pattern`` is given."""
    flags = (0x01 if alarm else 0) | (0x02 if battery_low else 0)
    battery_byte = 0xFF if battery is None else battery
    if pattern is None:
        return struct.pack("<BBHB", 0x10, flags, counter & 0xFFFF, battery_byte)
    return struct.pack("<BBHBB", 0x11, flags, counter & 0xFFFF, battery_byte, BUTTON_EVENT_CODES[pattern])
