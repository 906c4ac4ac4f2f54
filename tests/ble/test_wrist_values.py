"""The wrist monitor's values go through the same plausibility windows as the serial devices'
(drivers/plausible.py): a value no body gives is counted, never emitted as a number. Before, a PLX
SpO2 of 0 % or a uint16 heart rate of 65535 /min reached the rules and the cloud as readings."""

from __future__ import annotations

from drivers import codes
from drivers.base import Measurement
from drivers.ble.wrist import RateLimiter, WristMonitorDriver
from tests.ble.util import Readings, make_driver

WRIST = "C0:FF:EE:00:00:09"


def wrist() -> tuple[WristMonitorDriver, Readings]:
    seen = Readings()
    drv = make_driver("ble-wrist", "wrist-1", WRIST, seen, status_interval_s=1.0)
    assert isinstance(drv, WristMonitorDriver)
    drv.has_hrs = True
    return drv, seen


def values(seen: Readings, code: str) -> list[float]:
    return [m.value for m in seen.of(Measurement) if m.code == code]


def test_a_heart_rate_no_body_gives_is_counted_and_not_emitted() -> None:
    drv, seen = wrist()
    drv.on_heart_rate(bytes.fromhex("01ffff"))  # uint16 flag: 65535 /min
    drv.on_heart_rate(bytes.fromhex("0014"))  # 20 /min
    drv.on_heart_rate(bytes.fromhex("0000"))  # 0: the sensor's "no value yet", not a fault
    assert values(seen, codes.HEART_RATE) == [] and drv.counters()["out_of_range"] == 2
    drv.limiter = RateLimiter(0.0)  # every value due
    drv.on_heart_rate(bytes.fromhex("0048"))  # 72 /min
    assert values(seen, codes.HEART_RATE) == [72.0]


def test_an_spo2_of_zero_or_a_pulse_beyond_250_is_not_a_reading() -> None:
    drv, seen = wrist()
    drv.has_hrs = False
    drv.limiter = RateLimiter(0.0)
    drv.on_plx(bytes.fromhex("0000004800"))  # SpO2 0 % (no value), pulse 72: the pulse alone
    drv.on_plx(bytes.fromhex("0062002c01"))  # 98 %, pulse 300 /min (the decoder allows 0-400): the SpO2 alone
    drv.on_plx(bytes.fromhex("0061004800"))  # 97 %, 72 /min
    assert values(seen, codes.SPO2) == [98.0, 97.0]
    assert values(seen, codes.HEART_RATE) == [72.0, 72.0]
    assert drv.counters()["out_of_range"] == 1
