"""The daemon's state files read back with values a bug or a half-written disk page could leave in them:
each store opens, the readable part survives, and nothing raises into the daemon's start (which would
leave it, and the SOS path, in a restart loop)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from gateway.carestore import CareStore, CareStoreError
from gateway.outbox import Lane, NewMessage, Outbox
from gateway.registry import DB_NAME, Registry
from gateway.summary import MinuteBin, Pending, Stat
from gateway.summarystore import SummaryStore


def test_a_care_document_that_is_not_an_object_is_a_store_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "care.sqlite3"
    CareStore(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO state VALUES ('engine', '[1, 2]')")
    db.commit()
    db.close()
    store = CareStore(path)
    try:
        with pytest.raises(CareStoreError, match="not an object"):  # the care desk starts fresh on it
            store.load({})
    finally:
        store.close()


def test_a_summary_number_that_is_not_a_number_is_left_out(tmp_path: Path) -> None:
    path = tmp_path / "summary.sqlite3"
    SummaryStore(path, now=1000.0).close()
    db = sqlite3.connect(path)
    db.execute("INSERT OR REPLACE INTO meta VALUES ('alive_at', 'soon')")
    db.commit()
    db.close()
    store = SummaryStore(path, now=2000.0)
    try:
        assert store.meta() == {"created_at": 1000.0}
    finally:
        store.close()


def test_an_unreadable_setting_or_stored_device_is_left_out_and_the_rest_kept(tmp_path: Path) -> None:
    with Registry(tmp_path / DB_NAME) as reg:
        reg.set("drill", {"until": 1.0})
        reg.add_managed({"id": "cuff-1", "kind": "ble-cuff"})
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("INSERT INTO setting VALUES ('broken', '{')")
    db.execute("INSERT INTO managed(id, spec) VALUES ('bad-1', '[]'), ('bad-2', '{')")
    db.commit()
    db.close()
    with Registry(tmp_path / DB_NAME) as reg:
        assert reg.get("drill") == {"until": 1.0} and reg.get("broken") is None
        assert reg.managed_devices() == [{"id": "cuff-1", "kind": "ble-cuff"}]


def test_an_unreadable_record_of_sent_messages_costs_only_their_time_corrections(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"

    async def put() -> int:
        async with Outbox(path) as ob:
            runner = asyncio.create_task(ob.run())
            seq = await ob.put(NewMessage(Lane.ALERT, "t/a", b'{"msg_id":"sos"}', "sos-1", 1_800_000_000.0))
            runner.cancel()
            return seq

    seq = asyncio.run(put())
    db = sqlite3.connect(path)
    db.execute("INSERT OR REPLACE INTO info VALUES ('sent', '[[1, 2]]')")
    db.commit()
    db.close()

    async def reopen() -> list[int]:
        async with Outbox(path) as ob:
            return [m.seq for m in await ob.fetch(Lane.ALERT, 0, 10)]

    assert asyncio.run(reopen()) == [seq], "the waiting SOS is still there"


def test_a_damaged_stored_minute_costs_that_minute_not_the_day_nor_the_saves(tmp_path: Path) -> None:
    path = tmp_path / "summary.sqlite3"
    store = SummaryStore(path, now=0.0)
    try:
        good = MinuteBin(hr=Stat(n=1, total=70.0, lo=70.0, hi=70.0, hist={70: 1}))
        assert store.save(Pending(bins={("anna", "w1", 100): good}), 6001.0)
        store._db.execute("INSERT INTO bin(subject, minute, device, doc) VALUES ('anna', 101, 'w1', '[1]')")
        day = store.day("anna", 0.0, 86400.0)
        assert [(m, d) for m, d, _ in day.bins] == [(100, "w1")], "the damaged minute is left out"
        again = MinuteBin(hr=Stat(n=1, total=72.0, lo=72.0, hi=72.0, hist={72: 1}))
        assert store.save(Pending(bins={("anna", "w1", 101): again}), 6100.0), "a save over it still works"
        (minute,) = [b for m, _, b in store.day("anna", 0.0, 86400.0).bins if m == 101]
        assert minute.hr.n == 1 and minute.hr.total == 72.0
    finally:
        store.close()


def test_a_state_store_that_cannot_be_opened_is_kept_in_memory_and_left_as_it_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not damage (SQLite cannot open the path at all: here a directory stands where the file should be,
    as a wrong permission or a read-only card would): it used to be moved aside like a damaged file. Now
    the path is left as it is, logged at ERROR, and the store works in memory until the next start, so
    the daemon (and the SOS path) starts all the same."""
    path = tmp_path / "care.sqlite3"
    path.mkdir()
    (path / "keep").write_text("a technician's file")
    with caplog.at_level(logging.ERROR, logger="gateway.statedb"):
        store = CareStore(path)
    try:
        assert store.write(alerts={"a1": {"id": "a1"}}, state={"windows": {}}) is True
        assert store.alert_ids() == {"a1"}, "what was written reads back (in memory)"
    finally:
        store.close()
    assert (path / "keep").read_text() == "a technician's file" and not list(tmp_path.glob("care.sqlite3.damaged-*"))
    assert any("kept in memory" in r.getMessage() for r in caplog.records)
