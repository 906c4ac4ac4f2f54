"""A device clock in the gateway's local zone (``timezone = ""``, the example configuration's) is read
with the zone's rules: a stored record from the other half of the year gets its own offset. It used to
get the offset of the driver's start (a fixed +01:00 in winter: a July record an hour off)."""

from __future__ import annotations

import datetime as dt
import time
import zoneinfo
from collections.abc import Iterator

import pytest

from drivers.base import SystemLocalZone, device_zone

JAN = dt.datetime(2025, 1, 15, 8, 0)
JUL = dt.datetime(2025, 7, 1, 8, 0)


@pytest.fixture
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


def utc(local: dt.datetime, zone: dt.tzinfo) -> dt.datetime:
    return local.replace(tzinfo=zone).astimezone(dt.UTC).replace(tzinfo=None)


@pytest.mark.usefixtures("berlin")
def test_the_local_zone_is_the_system_s_with_its_rules_in_winter_and_in_summer() -> None:
    zone = device_zone("")
    assert zone == zoneinfo.ZoneInfo("Europe/Berlin")
    assert utc(JAN, zone) == dt.datetime(2025, 1, 15, 7, 0) and utc(JUL, zone) == dt.datetime(2025, 7, 1, 6, 0)


@pytest.mark.usefixtures("berlin")
def test_without_a_zone_name_the_c_library_s_rules_are_asked_per_instant() -> None:
    zone = SystemLocalZone()
    assert utc(JAN, zone) == dt.datetime(2025, 1, 15, 7, 0) and utc(JUL, zone) == dt.datetime(2025, 7, 1, 6, 0)
    back = dt.datetime(2025, 7, 1, 6, 0, tzinfo=dt.UTC).astimezone(zone)
    assert back.replace(tzinfo=None) == JUL and back.utcoffset() == dt.timedelta(hours=2)
    assert dt.datetime.fromtimestamp(JAN.replace(tzinfo=dt.UTC).timestamp(), zone).hour == 9
