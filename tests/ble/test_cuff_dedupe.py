"""Cuff measurements without a timestamp: known by their values alone, so never ledgered across time.
Before, a cuff that sends no timestamp had tomorrow's 120/80 (pulse 70) dropped as a duplicate of
today's, for good (the ledger is persisted). Now only the second copy of one measurement on the same
connection is a repeat: its live indication and its stored record, within one record transfer."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import types
from pathlib import Path
from typing import Any

import pytest

from drivers import codes
from drivers.base import DeviceSpec, DriverContext, Measurement, Reading
from drivers.ble import cuff as cuff_module
from drivers.ble.cuff import BpCuffDriver
from simulators.bluez import profiles

ADDRESS = "C0:FF:EE:00:00:02"
NO_TIME = bytes.fromhex("04 7800 5000 5d00 4600")  # the review's: 120/80 MAP 93, pulse 70, no timestamp
DAY_S = 86400.0


def make(tmp_path: Path, clock: list[float], got: list[Reading]) -> BpCuffDriver:
    spec = DeviceSpec("cuff", "ble-bp-cuff", "ble", {"address": ADDRESS, "state_path": str(tmp_path / "cuff.json")})
    return BpCuffDriver(spec, got.append, DriverContext(clock=lambda: clock[0]))


def systolic(got: list[Reading]) -> list[Measurement]:
    return [r for r in got if isinstance(r, Measurement) and r.code == codes.SYSTOLIC]


def record(sequence: int, payload: bytes = NO_TIME) -> bytes:
    return profiles.blood_pressure_record(sequence, payload)


class FakeTime:
    """``time`` as drivers.ble.cuff sees it: a monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def mono(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(cuff_module, "time", types.SimpleNamespace(monotonic=fake.monotonic), raising=False)
    return fake


def test_the_same_values_without_a_timestamp_a_day_apart_are_two_readings(tmp_path: Path, mono: FakeTime) -> None:
    clock = [1_700_000_000.0]
    got: list[Reading] = []
    drv = make(tmp_path, clock, got)
    drv.on_measurement(NO_TIME)  # Monday's reading
    clock[0] += DAY_S
    mono.now += DAY_S
    drv.on_measurement(NO_TIME)  # Tuesday's, same values
    assert [m.captured_at for m in systolic(got)] == [1_700_000_000.0, 1_700_000_000.0 + DAY_S]
    assert drv.counters()["measurements_emitted"] == 2 and "duplicate_measurements" not in drv.counters()
    # Nothing by value alone reaches the ledger: after a restart the same values are a reading again.
    drv.ledger.save()
    assert "bps:no-time" not in (tmp_path / "cuff.json").read_text()
    clock[0] += DAY_S
    again = make(tmp_path, clock, got)
    again.on_measurement(NO_TIME)
    assert len(systolic(got)) == 3


def test_a_ledger_written_before_forgets_its_value_only_entries(tmp_path: Path, mono: FakeTime) -> None:
    stamped = "bps:20260301T071500:120.0/80.0/None:1"
    old: dict[str, Any] = {"bps:no-time:120.0/80.0/70.0:None": 1, stamped: 1, "rec:7:20260301T071500": 1}
    (tmp_path / "cuff.json").write_text(json.dumps(old))
    got: list[Reading] = []
    drv = make(tmp_path, [1_700_000_000.0], got)
    assert set(drv.ledger.done) == {stamped, "rec:7:20260301T071500"}
    drv.on_measurement(NO_TIME)
    assert len(systolic(got)) == 1


def test_the_live_copy_and_the_stored_record_of_one_unstamped_measurement_are_one_reading(
    tmp_path: Path, mono: FakeTime
) -> None:
    got: list[Reading] = []
    drv = make(tmp_path, [1_700_000_000.0], got)
    drv.on_measurement(NO_TIME)  # the live indication
    mono.now += 5.0
    drv.on_record(record(5))  # the same measurement in this connection's record transfer
    assert len(systolic(got)) == 1 and drv.counters()["duplicate_records"] == 1
    # Each copy pairs with one other only: a second stored record with the same values is a reading.
    drv.on_record(record(6))
    assert len(systolic(got)) == 2
    # A record is still known by its sequence number, across connections and restarts.
    drv.ledger.save()
    again = make(tmp_path, [1_700_000_000.0 + DAY_S], got)
    again.on_record(record(5))
    again.on_record(record(6))
    assert len(systolic(got)) == 2 and again.counters()["duplicate_records"] == 2
    assert again._next_sequence() == 7


def test_two_unstamped_copies_through_one_characteristic_are_two_readings(tmp_path: Path, mono: FakeTime) -> None:
    got: list[Reading] = []
    drv = make(tmp_path, [1_700_000_000.0], got)
    drv.on_measurement(NO_TIME)  # an older cuff uploading its memory as indications:
    drv.on_measurement(NO_TIME)  # two measurements with the same values
    assert len(systolic(got)) == 2


def test_a_copy_only_pairs_within_one_record_transfer_and_on_the_same_connection(
    tmp_path: Path, mono: FakeTime
) -> None:
    got: list[Reading] = []
    drv = make(tmp_path, [1_700_000_000.0], got)
    drv.on_record(record(1))
    mono.now += drv.racp_timeout_s + 1.0  # the cuff stayed connected: a new measurement, same values
    drv.on_measurement(NO_TIME)
    assert len(systolic(got)) == 2

    class Services:
        def get_characteristic(self, _uuid: str) -> None:
            return None

    class Client:
        services = Services()

    drv.on_measurement(NO_TIME)  # a third, unpaired
    asyncio.run(drv.setup(Client()))  # type: ignore[arg-type]  # a new connection
    drv.on_record(record(2))  # not a copy of the last connection's live indication
    assert len(systolic(got)) == 4


def test_timestamped_measurements_are_still_deduplicated_across_connections(tmp_path: Path, mono: FakeTime) -> None:
    t = dt.datetime(2026, 3, 1, 7, 15, 0)
    stamped = profiles.blood_pressure_measurement(120, 80, 93, timestamp=t, pulse=70, user_id=1)
    got: list[Reading] = []
    drv = make(tmp_path, [1_700_000_000.0], got)
    drv.on_measurement(stamped)
    mono.now += DAY_S
    drv.on_measurement(stamped)  # a cuff repeating it on another connection
    drv.on_record(record(3, stamped))  # and as a stored record
    assert len(systolic(got)) == 1
    assert drv.counters()["duplicate_measurements"] == 1 and drv.counters()["duplicate_records"] == 1


def test_a_pressure_no_cuff_measures_is_counted_and_not_a_reading(tmp_path: Path, mono: FakeTime) -> None:
    """The same plausibility windows as the serial cuff's (drivers/plausible.py): 0/0 mmHg, or a
    diastolic above the systolic, is a decoding no body gives; a pulse of 0 is the cuff's "no value"."""
    clock = [1_700_000_000.0]
    got: list[Reading] = []
    drv = make(tmp_path, clock, got)
    drv.on_measurement(bytes.fromhex("04 0000 0000 0000 0000"))  # 0/0 mmHg
    drv.on_measurement(bytes.fromhex("04 5000 7800 5d00 4600"))  # 80/120: inverted
    assert systolic(got) == [] and drv.counters()["out_of_range"] == 2
    drv.on_measurement(bytes.fromhex("04 7800 5000 5d00 0000"))  # 120/80, pulse 0: the pressures alone
    pulses = [r for r in got if isinstance(r, Measurement) and r.code == codes.HEART_RATE]
    assert [m.value for m in systolic(got)] == [120.0] and pulses == []
