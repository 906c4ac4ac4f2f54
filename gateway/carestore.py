"""The care rules' state on disk: SQLite (WAL) beside the outbox, saved by what changed.

The rule engine's snapshot has two parts of very different size and rhythm:

- **open alerts** (and the recently closed or acknowledged ids that make a repeated ``cmd/alert-ack``
  idempotent): one row each, written when that alert changes (raised, escalated, reminded, acked,
  cleared). A press adds one row, whatever the number of alerts already open.
- **the rest** (rule evaluation, device watch, the cloud's rule overrides, queued events): one JSON
  document, bounded by devices x rules, written after transitions and every minute.

``synchronous=NORMAL`` in WAL mode: a commit survives the process being killed (SIGKILL, OOM); a power
cut may lose the last commits, which only costs a reminder or re-raises an alert with the same
deterministic id. The SOS messages themselves are in the outbox, which syncs fully.

The file used to be a TinyDB setting (``rules_snapshot`` in ``registry.json``, every open alert
rewritten and fsynced on every save): :class:`gateway.care.CareDesk` migrates it once.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError
from gateway.statedb import WriteHealth, open_state_db

log = logging.getLogger(__name__)

RECENT_KEEP = 1024  # as many as the engine remembers (gateway.rules.engine._RECENT_LIMIT)
_TRIM_SLACK = 256  # trim the recent table when it holds this many more


class CareStoreError(GatewayError):
    """The care state file cannot be opened or written."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS alert(id TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS recent(id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS state(key TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID;
"""


def _dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False)


class CareStore:
    """Open (or create) the care state database at ``path``. A file SQLite cannot read is moved aside
    (``<name>.damaged-<time>``) with a WARNING and a fresh one started: the care state must never keep
    the daemon, and with it the SOS path, from starting."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._health = WriteHealth("care state", self.path)
        self._db = open_state_db(self.path, _SCHEMA, "care state", CareStoreError)
        self._recent_rows = self._db.execute("SELECT count(*) FROM recent").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> CareStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading --------------------------------------------------------------------------------------

    def load(self, empty: Mapping[str, Any]) -> dict[str, Any] | None:
        """The engine's snapshot as :meth:`gateway.rules.RuleEngine.restore` reads it, or None when
        nothing was ever saved. ``empty`` (a fresh engine's ``snapshot(alerts=False)``) stands for the
        rest of the state when only alert rows were written before a kill. Raises
        :class:`CareStoreError` when a row is not a JSON object."""
        try:
            row = self._db.execute("SELECT doc FROM state WHERE key = 'engine'").fetchone()
            alerts = [json.loads(doc) for (doc,) in self._db.execute("SELECT doc FROM alert")]
            recent = [[aid, at] for aid, at in self._db.execute("SELECT id, at FROM recent ORDER BY rowid")]
            if row is None and not alerts and not recent:
                return None
            snap: dict[str, Any] = dict(empty) if row is None else json.loads(row[0])
            if not isinstance(snap, dict) or not all(isinstance(a, dict) for a in alerts):
                raise ValueError("a stored document is not an object")
        except (sqlite3.Error, ValueError) as exc:
            raise CareStoreError(f"{self.path}: care state not readable: {exc}") from exc
        snap["alerts"], snap["recent"] = alerts, recent
        return snap

    def alert_ids(self) -> set[str]:
        return {aid for (aid,) in self._db.execute("SELECT id FROM alert")}

    # -- writing --------------------------------------------------------------------------------------

    def write(
        self,
        *,
        alerts: Mapping[str, Mapping[str, Any]] | None = None,
        gone: Iterable[str] = (),
        recent: Mapping[str, float] | None = None,
        state: Mapping[str, Any] | None = None,
        replace: bool = False,
    ) -> bool:
        """One transaction: upsert ``alerts`` (id -> :meth:`RuleEngine.alert_state`), delete the ids in
        ``gone``, remember ``recent`` ids, replace the rest of the snapshot with ``state`` (a
        ``snapshot(alerts=False)``). ``replace``: ``alerts`` and ``recent`` are the whole sets (after a
        migration or a rules update). Returns False when the write failed (logged: WARNING once, then DEBUG; the
        caller keeps its changes and tries again with the next save)."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if replace:
                    self._db.execute("DELETE FROM alert")
                    self._db.execute("DELETE FROM recent")
                    self._recent_rows = 0
                if alerts:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO alert(id, doc) VALUES (?, ?)",
                        [(aid, _dumps(doc)) for aid, doc in alerts.items()],
                    )
                self._db.executemany("DELETE FROM alert WHERE id = ?", [(aid,) for aid in gone])
                if recent:
                    # REPLACE gives the row a new rowid: the table's order is the engine's (oldest first)
                    self._db.executemany("INSERT OR REPLACE INTO recent(id, at) VALUES (?, ?)", list(recent.items()))
                    self._recent_rows += len(recent)
                    if self._recent_rows > RECENT_KEEP + _TRIM_SLACK:
                        self._db.execute(
                            "DELETE FROM recent WHERE rowid NOT IN"
                            " (SELECT rowid FROM recent ORDER BY rowid DESC LIMIT ?)",
                            (RECENT_KEEP,),
                        )
                        self._recent_rows = self._db.execute("SELECT count(*) FROM recent").fetchone()[0]
                if state is not None:
                    doc = {k: v for k, v in state.items() if k not in ("alerts", "recent")}
                    self._db.execute("INSERT OR REPLACE INTO state(key, doc) VALUES ('engine', ?)", (_dumps(doc),))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except (sqlite3.Error, ValueError) as exc:
            return self._health.failed(exc)
        return self._health.worked()
