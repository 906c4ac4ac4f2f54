"""Opening the daemon's small SQLite state files (care rules, daily summary): WAL, ``synchronous=NORMAL``
(a power cut may lose the last transaction, never corrupt the file), checked at open.

A file SQLite cannot read is moved aside (``<name>.damaged-<time>``, with its ``-wal`` and ``-shm``) with
a WARNING and a fresh one started: such state must never keep the daemon, and with it the SOS path, from
starting."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

from gateway.errors import GatewayError

log = logging.getLogger(__name__)


def open_state_db(path: Path, schema: str, what: str, error: type[GatewayError]) -> sqlite3.Connection:
    """Open (or create) ``path`` with ``schema`` (CREATE ... IF NOT EXISTS statements); ``what`` names it
    in messages ("care state"); ``error`` is raised when even a fresh file cannot be made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _open(path, schema)
    except sqlite3.DatabaseError as exc:
        aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
        log.warning("%s %s is damaged (%s): moved to %s, starting fresh", what, path, exc, aside)
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{path}{suffix}")
            if src.exists():
                os.replace(src, f"{aside}{suffix}")
        try:
            return _open(path, schema)
        except sqlite3.Error as exc2:
            raise error(f"{path}: cannot create the {what} database: {exc2}") from exc2
    except sqlite3.Error as exc:
        raise error(f"{path}: cannot open the {what} database: {exc}") from exc


def _open(path: Path, schema: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("quick_check failed")
        db.executescript(schema)
    except BaseException:
        db.close()
        raise
    return db
