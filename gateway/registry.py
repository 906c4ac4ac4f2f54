"""The small device registry and settings: SQLite (WAL) beside the outbox, written by what changed.

What it keeps: devices seen (kind, first seen, last link state), settings (the drill window...), the
replies of downlink requests (idempotency, the latest :attr:`Registry.MAX_REPLIES`) and the devices added at
run time (``gatewayctl devices add`` or the cloud). Readings never go here (the outbox is for them).

Every change is one small transaction (a row inserted or updated), whatever the number of devices
known: the TinyDB JSON file it replaces was rewritten whole, and fsynced twice, for every new device.
``synchronous=FULL``: a change the daemon made survives a power cut, as the atomic JSON file did.
The registry is read from memory (this process is the only writer); a write that fails raises
:class:`RegistryError` and leaves memory as the file is.

``registry.json`` (the TinyDB file of older gateways) is migrated once, in the transaction that creates
the database, and then renamed ``registry.json.migrated`` (kept for a downgrade or a technician's
eyes). A registry file SQLite finds damaged, or a JSON file that does not parse, is moved aside with a
WARNING and the registry starts empty: it must never keep the daemon, and with it the SOS path, from
starting. A registry that cannot be opened for another reason (a lock, a full disk, an I/O or
permission error) is left as it is, and the daemon runs without it until the next start
(:attr:`Registry.unavailable`, logged at ERROR): the configured devices run, the devices added at run time
do not, and none can be added or removed (refused as ``unavailable``), rather than throwing away the
devices it keeps for a fault that is not in the file.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError
from gateway.statedb import Damaged, WriteHealth, in_memory, move_aside, open_store

log = logging.getLogger(__name__)

DB_NAME = "registry.sqlite3"
LEGACY_NAME = "registry.json"  # TinyDB, before the registry moved to SQLite
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS device(
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, first_seen REAL, state TEXT, state_at REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS setting(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reply(n INTEGER PRIMARY KEY, request_id TEXT NOT NULL UNIQUE, reply TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS managed(n INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, spec TEXT NOT NULL);
"""

_DEVICE_FIELDS = ("id", "kind", "first_seen", "state", "state_at")


class RegistryError(GatewayError):
    """The registry cannot be opened or a change cannot be written."""


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)


def db_path(path: str | os.PathLike[str]) -> Path:
    """The database file for ``path``: itself, or ``registry.sqlite3`` beside it when ``path`` names
    the old ``registry.json`` (callers from before the move pass that)."""
    p = Path(path)
    return p.with_name(DB_NAME) if p.suffix == ".json" else p


def _legacy_tables(path: Path) -> dict[str, list[dict[str, Any]]] | None:
    """The documents of a TinyDB file by table, in insertion (doc id) order; None when there is no
    file; ``{}`` (after moving it aside) when it does not parse."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        raw = json.loads(text) if text.strip() else {}
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        tables: dict[str, list[dict[str, Any]]] = {}
        for name, table in raw.items():
            if not isinstance(table, dict):
                raise ValueError(f"table {name!r} is not an object")
            docs = sorted(table.items(), key=lambda kv: int(kv[0]))
            tables[name] = [dict(doc) for _, doc in docs if isinstance(doc, dict)]
    except ValueError as exc:
        move_aside(path, f"not a TinyDB file: {exc}", "registry")
        return {}
    return tables


class Registry:
    """Devices the gateway knows, with kind, first/last seen and last link state; settings; downlink
    replies; devices added at run time. ``path``: the database file (``registry.sqlite3`` in the data
    directory; the old ``registry.json`` path names it too)."""

    MAX_REPLIES = 1000
    BUSY_TIMEOUT_S = 1.0  # no other writer exists; a lock held longer is a fault, reported as one

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = db_path(path)
        self.legacy_path = self.path.with_name(LEGACY_NAME)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.migrated = 0  # documents taken over from registry.json by this open
        self.health = WriteHealth("registry", self.path)  # the devices-seen record's writes (note_device)
        self.unavailable: str | None = None  # why the registry could not be opened (module docstring)
        try:
            self._db = open_store(self.path, self._open, RegistryError, "registry")
        except RegistryError as exc:
            log.error(
                "registry: %s; running without it until the next start: devices added at run time are not "
                "started, and none can be added or removed",
                exc,
            )
            self.unavailable = str(exc)
            self._db = in_memory(_SCHEMA)
        kept = Path(f"{self.legacy_path}.migrated")
        if self.legacy_path.exists() and not kept.exists():
            if self._db.execute("SELECT 1 FROM meta WHERE key = 'migrated'").fetchone():
                os.replace(self.legacy_path, kept)  # killed between the migration's commit and the rename
        rows = self._db.execute(f"SELECT {', '.join(_DEVICE_FIELDS)} FROM device")
        self._devices = {row[0]: dict(zip(_DEVICE_FIELDS, row, strict=True)) for row in rows}
        self._settings = {}
        for k, v in self._db.execute("SELECT key, value FROM setting"):
            try:
                self._settings[k] = json.loads(v)
            except (TypeError, ValueError):
                log.warning("registry: setting %s is not readable, ignored", k)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise Damaged("quick_check failed")
            db.execute("BEGIN IMMEDIATE")
            try:
                fresh = not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone()
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(stmt)
                if fresh:
                    db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                    tables = _legacy_tables(self.legacy_path)
                    if tables is not None:
                        self.migrated = self._migrate(db, tables)
                        db.execute("INSERT INTO meta VALUES ('migrated', ?)", (_dumps(time.time()),))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except BaseException:
            db.close()
            raise
        if self.migrated or (fresh and self.legacy_path.exists()):
            os.replace(self.legacy_path, f"{self.legacy_path}.migrated")
            log.info("registry: %d entries moved from %s to %s", self.migrated, self.legacy_path, self.path)
        return db

    @staticmethod
    def _migrate(db: sqlite3.Connection, tables: Mapping[str, list[dict[str, Any]]]) -> int:
        n = 0
        for doc in tables.get("devices", []):
            if isinstance(doc.get("id"), str):
                row = [doc.get(f) for f in _DEVICE_FIELDS]
                row[1] = row[1] if isinstance(row[1], str) else "unknown"
                db.execute("INSERT OR REPLACE INTO device VALUES (?, ?, ?, ?, ?)", row)
                n += 1
        for doc in tables.get("settings", []):
            if isinstance(doc.get("key"), str):
                db.execute("INSERT OR REPLACE INTO setting VALUES (?, ?)", (doc["key"], _dumps(doc.get("value"))))
                n += 1
        for doc in tables.get("command_replies", [])[-Registry.MAX_REPLIES :]:
            if isinstance(doc.get("request_id"), str):
                db.execute(
                    "INSERT OR REPLACE INTO reply(request_id, reply) VALUES (?, ?)",
                    (doc["request_id"], _dumps(doc.get("reply"))),
                )
                n += 1
        for doc in tables.get("managed_devices", []):
            if isinstance(doc.get("id"), str):
                db.execute("INSERT OR REPLACE INTO managed(id, spec) VALUES (?, ?)", (doc["id"], _dumps(doc)))
                n += 1
        return n

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction; :class:`RegistryError` (and nothing written) when it fails. Callers change
        their in-memory copy after it, so memory is never ahead of the file."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise RegistryError(f"{self.path}: registry write failed: {exc}") from exc

    # -- devices seen ---------------------------------------------------------------------------------

    def note_device(self, device_id: str, kind: str, *, state: str | None = None, at: float | None = None) -> bool:
        """Record a device and its state. Writes only when something changed (not per reading). A record,
        not a control: a write that fails (a full disk, a lock) is logged by :attr:`health` and left out of
        memory too, so the next change writes it; it never raises (a device starts, a press goes on,
        whether or not its sighting could be written). Returns whether the record is written."""
        try:
            self._note_device(device_id, kind, state, at if at is not None else time.time())
        except RegistryError as exc:
            return self.health.failed(exc)
        return self.health.worked()

    def _note_device(self, device_id: str, kind: str, state: str | None, now: float) -> None:
        current = self._devices.get(device_id)
        if current is None:
            doc = {"id": device_id, "kind": kind, "first_seen": now, "state": state, "state_at": now}
            with self._write() as db:
                db.execute("INSERT OR REPLACE INTO device VALUES (?, ?, ?, ?, ?)", [doc[f] for f in _DEVICE_FIELDS])
            self._devices[device_id] = doc
            return
        changes: dict[str, Any] = {}
        if kind != "unknown" and current.get("kind") != kind:
            changes["kind"] = kind
        if state is not None and current.get("state") != state:
            changes.update(state=state, state_at=now)
        if changes:
            sets = ", ".join(f"{k} = ?" for k in changes)  # keys from the fixed set above
            with self._write() as db:
                db.execute(f"UPDATE device SET {sets} WHERE id = ?", [*changes.values(), device_id])
            current.update(changes)

    def device(self, device_id: str) -> dict[str, Any] | None:
        doc = self._devices.get(device_id)
        return dict(doc) if doc is not None else None

    def all_devices(self) -> list[dict[str, Any]]:
        return [dict(d) for d in self._devices.values()]

    # -- downlink idempotency: the reply of every request id, the latest MAX_REPLIES kept -------------

    def get_reply(self, request_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT reply FROM reply WHERE request_id = ?", (request_id,)).fetchone()
        return dict(json.loads(row[0])) if row is not None else None

    def put_reply(self, request_id: str, reply: Mapping[str, Any]) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO reply(request_id, reply) VALUES (?, ?)"
                " ON CONFLICT(request_id) DO UPDATE SET reply = excluded.reply",
                (request_id, _dumps(dict(reply))),
            )
            db.execute(
                "DELETE FROM reply WHERE n <= (SELECT n FROM reply ORDER BY n DESC LIMIT 1 OFFSET ?)",
                (self.MAX_REPLIES,),
            )

    # -- devices added at run time (gatewayctl or the cloud), on top of the configuration file --------

    def managed_devices(self) -> list[dict[str, Any]]:
        """The devices added at run time; a stored spec that is not a JSON object is left out with a
        WARNING (it is kept, for a person to look at)."""
        out = []
        try:
            rows = self._db.execute("SELECT id, spec FROM managed ORDER BY n").fetchall()
        except sqlite3.Error as exc:  # an unreadable page: the configured devices start all the same
            log.error("registry: the devices added at run time cannot be read, not started: %s", exc)
            return []
        for dev_id, spec in rows:
            try:
                doc = json.loads(spec)
            except (TypeError, ValueError):
                doc = None
            if isinstance(doc, dict):
                out.append(doc)
            else:
                log.warning("device %s: stored device is not readable, not started", dev_id)
        return out

    def _writable(self) -> None:
        """Refuse a change of the run-time devices while the registry is unavailable (module docstring)."""
        if self.unavailable is not None:
            raise RegistryError(f"the registry is not available: {self.unavailable}")

    def add_managed(self, spec: Mapping[str, Any]) -> None:
        self._writable()
        with self._write() as db:
            db.execute(
                "INSERT INTO managed(id, spec) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET spec = excluded.spec",
                (spec["id"], _dumps(dict(spec))),
            )

    def remove_managed(self, device_id: str) -> bool:
        self._writable()
        with self._write() as db:
            return db.execute("DELETE FROM managed WHERE id = ?", (device_id,)).rowcount > 0

    # -- settings -------------------------------------------------------------------------------------

    def set(self, key: str, value: Any) -> None:
        text = _dumps(value)
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO setting VALUES (?, ?)", (key, text))
        self._settings[key] = json.loads(text)  # what a reopen would read (tuples become lists...)

    def get(self, key: str, default: Any = None) -> Any:
        return self._settings.get(key, default)

    def delete(self, key: str) -> None:
        if key not in self._settings:
            return
        with self._write() as db:
            db.execute("DELETE FROM setting WHERE key = ?", (key,))
        del self._settings[key]


def read_devices(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The devices of the registry at ``path`` (see :func:`db_path`) read-only, for ``doctor`` while the
    daemon is not running: from the database, or from ``registry.json`` when it was never migrated;
    ``[]`` when neither can be read."""
    db_file = db_path(path)
    if db_file.exists():
        # A reader who may not write the directory cannot create the WAL index SQLite wants; with the
        # daemon stopped (its WAL checkpointed and gone) the file alone is the whole truth.
        for mode in ("ro", "ro&immutable=1"):
            try:
                db = sqlite3.connect(f"file:{db_file}?mode={mode}", uri=True)
                try:
                    rows = db.execute(f"SELECT {', '.join(_DEVICE_FIELDS)} FROM device").fetchall()
                finally:
                    db.close()
            except sqlite3.Error:
                continue
            return [dict(zip(_DEVICE_FIELDS, row, strict=True)) for row in rows]
        return []
    legacy = db_file.with_name(LEGACY_NAME)
    try:
        raw = json.loads(legacy.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    table = raw.get("devices", {}) if isinstance(raw, dict) else {}
    return [dict(v) for v in table.values() if isinstance(v, dict)] if isinstance(table, dict) else []
