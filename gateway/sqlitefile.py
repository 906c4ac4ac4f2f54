"""Opening the gateway's small SQLite stores (the registry, the care state): a file SQLite cannot read
is moved aside and a fresh one started, because no store may keep the daemon, and with it the SOS
path, from starting."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from gateway.errors import GatewayError

log = logging.getLogger(__name__)


def move_aside(path: Path, why: str, what: str) -> Path:
    """Rename ``path`` and its WAL files to ``<name>.damaged-<time>``, with a WARNING naming ``what``."""
    aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
    log.warning("%s %s is unreadable (%s): moved to %s, starting fresh", what, path, why, aside)
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.replace(src, f"{aside}{suffix}")
    return aside


def open_store(
    path: Path, open_db: Callable[[], sqlite3.Connection], error: type[GatewayError], what: str
) -> sqlite3.Connection:
    """``open_db()``; when it finds the file damaged, the file is moved aside (:func:`move_aside`) and
    ``open_db()`` runs again on a fresh one. Other SQLite failures raise ``error``."""
    try:
        return open_db()
    except sqlite3.DatabaseError as exc:
        move_aside(path, str(exc), what)
        try:
            return open_db()
        except sqlite3.Error as exc2:
            raise error(f"{path}: cannot create the {what}: {exc2}") from exc2
    except sqlite3.Error as exc:
        raise error(f"{path}: cannot open the {what}: {exc}") from exc
