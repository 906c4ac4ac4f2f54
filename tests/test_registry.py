"""The device registry: SQLite (WAL) written by what changed, durable across a kill mid-write, migrated
once from the TinyDB ``registry.json`` of older gateways."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.registry import DB_NAME, LEGACY_NAME, Registry, RegistryError, read_devices
from tests.helpers import REPO


def _wal_bytes(reg: Registry) -> int:
    wal = Path(f"{reg.path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def _truncate_wal(reg: Registry) -> None:
    reg._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the WAL starts empty: what follows is one write


def test_devices_are_remembered_with_state_changes_only(tmp_path: Path) -> None:
    with Registry(tmp_path / DB_NAME) as reg:
        reg.note_device("rfx", "rfxtrx-sos", state="connected", at=10.0)
        _truncate_wal(reg)
        reg.note_device("rfx", "unknown", state="connected", at=11.0)  # no change: no write
        reg.note_device("rfx", "rfxtrx-sos", at=11.5)
        assert _wal_bytes(reg) == 0
        reg.note_device("rfx", "unknown", state="disconnected", at=12.0)
        assert _wal_bytes(reg) > 0
        reg.set("drill_until", 123.5)
        reg.set("window", {"ids": ("a", "b")})
    with Registry(tmp_path / DB_NAME) as reg:
        dev = reg.device("rfx")
        assert dev is not None
        assert (dev["kind"], dev["state"], dev["state_at"], dev["first_seen"]) == (
            "rfxtrx-sos",
            "disconnected",
            12.0,
            10.0,
        )
        assert reg.get("drill_until") == 123.5
        assert reg.get("window") == {"ids": ["a", "b"]}, "as JSON keeps it, before and after a restart"
        assert reg.get("missing", "dflt") == "dflt"
        reg.delete("drill_until")
        reg.delete("never-set")
    with Registry(tmp_path / DB_NAME) as reg:
        assert reg.get("drill_until") is None


def test_a_new_device_writes_a_few_pages_however_many_are_known(tmp_path: Path) -> None:
    """The TinyDB file was rewritten whole for each new device (O(devices) bytes and two fsyncs)."""
    with Registry(tmp_path / DB_NAME) as reg:
        for i in range(3000):
            reg.note_device(f"pendant-{i:05d}", "rfxtrx-sos", state="connected", at=float(i))
        _truncate_wal(reg)
        reg.note_device("pendant-new", "rfxtrx-sos", state="connected", at=5000.0)
        page = reg._db.execute("PRAGMA page_size").fetchone()[0]
        assert 0 < _wal_bytes(reg) <= 4 * (page + 24) + 32  # frames of a B-tree path, not 3,000 rows
        assert len(reg.all_devices()) == 3001


WRITER = """
import sys
from gateway.registry import Registry
reg = Registry(sys.argv[1])
i = 0
print("ready", flush=True)
while True:
    i += 1
    reg.note_device(f"dev-{i % 50}", "kind", state=f"s{i}", at=float(i))
    print(i, flush=True)
"""


def test_a_kill_during_writes_keeps_every_change_it_returned_from(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        last = 0
        for _ in range(200):  # SIGKILL somewhere after 200 committed changes
            last = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        with Registry(path) as reg:
            assert reg._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            devices = {d["id"]: d for d in reg.all_devices()}
            assert len(devices) == 50
            # every change note_device returned from is on disk
            assert devices[f"dev-{last % 50}"]["state_at"] >= float(last)


class QuickRegistry(Registry):
    BUSY_TIMEOUT_S = 0.05


def test_a_failed_write_leaves_memory_as_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A change that cannot be written raises (a setting, a run-time device: the caller must know), but
    a device's sighting is a record, not a control: it returns False, logged once at WARNING, and is
    written with the next change (it used to raise, and at the daemon's start that ended the daemon)."""
    path = tmp_path / DB_NAME
    with QuickRegistry(path) as reg, caplog.at_level(logging.DEBUG, logger="gateway.statedb"):
        assert reg.note_device("a", "kind-a", state="connected", at=1.0)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock: the registry's write fails
        assert reg.note_device("b", "kind-b", at=2.0) is False
        assert reg.note_device("a", "kind-a", state="disconnected", at=3.0) is False
        levels = [r.levelno for r in caplog.records if "write failed" in r.getMessage()]
        assert levels == [logging.WARNING, logging.DEBUG], "the first failure at WARNING, repeats at DEBUG"
        with pytest.raises(RegistryError):
            reg.set("k", 1)
        with pytest.raises(RegistryError):
            reg.add_managed({"id": "x", "kind": "k"})
        assert reg.device("b") is None and reg.get("k") is None
        dev_a = reg.device("a")
        assert dev_a is not None and dev_a["state"] == "connected", "memory is not ahead of the file"
        other.execute("ROLLBACK")
        other.close()
        assert reg.note_device("a", "kind-a", state="disconnected", at=3.0)  # the same change, now written
    with Registry(path) as again:
        assert [(d["id"], d["state"]) for d in again.all_devices()] == [("a", "disconnected")]
        assert again.managed_devices() == []


def test_a_registry_locked_at_the_start_is_left_as_it_is_and_the_daemon_runs_without_it(tmp_path: Path) -> None:
    """A lock (or a full disk, an I/O error) is no damage: the file used to be moved aside for it, and the
    devices the cloud had added (an SOS button among them) were gone. Now it is left as it is; the
    registry runs in memory, refuses changes of the run-time devices, and the next start has them all."""
    path = tmp_path / DB_NAME
    with QuickRegistry(path) as reg:
        reg.add_managed({"id": "sos-2", "kind": "rfxtrx-sos", "options": {}})
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with QuickRegistry(path) as reg:
            assert reg.unavailable is not None and "locked" in reg.unavailable
            assert reg.managed_devices() == []
            with pytest.raises(RegistryError, match="not available"):
                reg.add_managed({"id": "sos-3", "kind": "rfxtrx-sos", "options": {}})
            assert reg.note_device("rfx", "rfxtrx-sos", state="connected", at=1.0), "sightings in memory"
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert not list(tmp_path.glob(f"{DB_NAME}.damaged-*")), "not moved aside"
    with Registry(path) as again:
        assert again.unavailable is None and [d["id"] for d in again.managed_devices()] == ["sos-2"]


def test_replies_keep_the_latest_and_managed_devices_their_order(tmp_path: Path) -> None:
    class Small(Registry):
        MAX_REPLIES = 3

    with Small(tmp_path / DB_NAME) as reg:
        for i in range(5):
            reg.put_reply(f"req-{i}", {"ok": True, "n": i})
        reg.put_reply("req-3", {"ok": False})  # an update keeps its place
        assert [reg.get_reply(f"req-{i}") for i in range(5)] == [
            None,
            None,
            {"ok": True, "n": 2},
            {"ok": False},
            {"ok": True, "n": 4},
        ]
        reg.add_managed({"id": "cuff", "kind": "ble-bp-cuff", "options": {"address": "C0:FF:EE:00:00:02"}})
        reg.add_managed({"id": "oxi", "kind": "serial-cms50", "options": {}})
        reg.add_managed({"id": "cuff", "kind": "ble-bp-cuff", "options": {"address": "C0:FF:EE:00:00:09"}})
        assert reg.remove_managed("oxi") and not reg.remove_managed("oxi")
        reg.add_managed({"id": "wrist", "kind": "ble-wrist", "options": {}})
    with Registry(tmp_path / DB_NAME) as reg:
        assert [(d["id"], d["options"].get("address")) for d in reg.managed_devices()] == [
            ("cuff", "C0:FF:EE:00:00:09"),
            ("wrist", None),
        ]


def _tinydb_file(path: Path, tables: dict[str, list[dict[str, object]]]) -> None:
    """``registry.json`` as the TinyDB registry wrote it: tables of documents by doc id (a string)."""
    doc = {name: {str(i + 1): d for i, d in enumerate(docs)} for name, docs in tables.items()}
    path.write_text(json.dumps(doc, separators=(",", ":"), sort_keys=True))


OLD = {
    "devices": [
        {"id": "rfx", "kind": "rfxtrx-sos", "first_seen": 10.0, "state": "connected", "state_at": 11.0},
        {"id": "sos-1", "kind": "sos-button", "first_seen": 12.0, "state": None, "state_at": 12.0},
    ],
    "settings": [
        {"key": "drill", "value": {"until": 99.5, "ids": ["a"]}},
        {"key": "rules_snapshot", "value": {"alerts": [{"id": "sos-a-1"}]}},
    ],
    "command_replies": [{"request_id": f"r{i}", "reply": {"ok": True, "i": i}} for i in range(12)],
    "managed_devices": [
        {"id": "wrist", "kind": "ble-wrist", "options": {"address": "C0:FF:EE:00:00:01"}},
        {"id": "cuff", "kind": "ble-bp-cuff", "options": {"address": "C0:FF:EE:00:00:02"}},
    ],
}


def test_registry_json_is_migrated_once_and_kept_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    legacy = tmp_path / LEGACY_NAME
    _tinydb_file(legacy, OLD)
    with caplog.at_level(logging.INFO, logger="gateway.registry"), Registry(legacy) as reg:  # the old path
        assert reg.path == tmp_path / DB_NAME and reg.migrated == 2 + 2 + 12 + 2
        assert {d["id"]: d for d in reg.all_devices()} == {d["id"]: d for d in OLD["devices"]}
        assert reg.get("drill") == {"until": 99.5, "ids": ["a"]}
        assert reg.get("rules_snapshot") == {"alerts": [{"id": "sos-a-1"}]}
        assert reg.get_reply("r0") == {"ok": True, "i": 0} and reg.get_reply("r11") == {"ok": True, "i": 11}
        assert [d["id"] for d in reg.managed_devices()] == ["wrist", "cuff"]
        reg.set("drill", None)
    assert "18 entries moved" in caplog.text
    assert not legacy.exists() and (tmp_path / f"{LEGACY_NAME}.migrated").exists()
    # An old gateway run again writes a registry.json: it is not taken over a second time, and the
    # migrated copy is not overwritten.
    _tinydb_file(legacy, {"devices": [{"id": "late", "kind": "k", "first_seen": 1.0, "state": None, "state_at": 1.0}]})
    with Registry(tmp_path / DB_NAME) as reg:
        assert reg.migrated == 0 and reg.device("late") is None and reg.get("drill") is None
    assert legacy.exists() and "rfx" in (tmp_path / f"{LEGACY_NAME}.migrated").read_text()


def test_a_kill_between_the_migration_and_the_rename_does_not_migrate_twice(tmp_path: Path) -> None:
    legacy = tmp_path / LEGACY_NAME
    _tinydb_file(legacy, OLD)
    with Registry(legacy) as reg:
        reg.set("drill", {"until": 1.0, "ids": []})  # changed after the migration
    os.replace(tmp_path / f"{LEGACY_NAME}.migrated", legacy)  # as if killed before the rename
    with Registry(legacy) as reg:
        assert reg.migrated == 0 and reg.get("drill") == {"until": 1.0, "ids": []}
    assert not legacy.exists() and (tmp_path / f"{LEGACY_NAME}.migrated").exists()


def test_unreadable_files_are_moved_aside_and_the_registry_starts_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    legacy = tmp_path / LEGACY_NAME
    legacy.write_text('{"devices": {"1": {"id": "half')  # torn by an editor, or a disk error
    with caplog.at_level(logging.WARNING), Registry(legacy) as reg:
        assert reg.all_devices() == [] and reg.migrated == 0
        reg.note_device("rfx", "rfxtrx-sos", state="connected", at=1.0)
    assert [p.name.startswith(f"{LEGACY_NAME}.damaged-") for p in tmp_path.iterdir()].count(True) == 1
    assert "unreadable" in caplog.text
    db = tmp_path / DB_NAME
    db.write_bytes(b"this is not an sqlite database" * 200)
    with Registry(db) as reg:
        assert reg.all_devices() == []
        reg.note_device("rfx", "rfxtrx-sos", state="connected", at=2.0)
    assert len(list(tmp_path.glob(f"{DB_NAME}.damaged-*"))) == 1
    assert [d["state_at"] for d in read_devices(db)] == [2.0]


def test_read_devices_reads_the_database_or_an_unmigrated_file(tmp_path: Path) -> None:
    legacy = tmp_path / LEGACY_NAME
    _tinydb_file(legacy, OLD)
    assert sorted(d["id"] for d in read_devices(legacy)) == ["rfx", "sos-1"]  # no database yet
    with Registry(legacy) as reg:
        reg.note_device("new", "ble-wrist", state="connected", at=20.0)
        assert sorted(d["id"] for d in read_devices(legacy)) == ["new", "rfx", "sos-1"]  # while it runs
    assert sorted(d["id"] for d in read_devices(tmp_path / DB_NAME)) == ["new", "rfx", "sos-1"]  # after
    assert read_devices(tmp_path / "elsewhere" / DB_NAME) == []
