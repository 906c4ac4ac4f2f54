"""Opening the daemon's small SQLite state files (care rules, daily summary, the SMS fallback's record,
the device registry).

:func:`open_state_db`: WAL, ``synchronous=NORMAL`` by default (a power cut may lose the last transaction,
never corrupt the file; ``FULL`` for the SMS fallback's record), checked at open; the registry opens its
own way through :func:`open_store`.

A file SQLite finds damaged is moved aside (``<name>.damaged-<time>``, with its ``-wal`` and ``-shm``)
with a WARNING and a fresh one started: such state must never keep the daemon, and with it the SOS path,
from starting. A file that cannot be opened for another reason (locked, a full disk, an I/O or permission
error) is never moved aside (:func:`open_store` raises): the state stores, and the registry, then keep
their state in memory until the next start (:func:`in_memory`)."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from gateway.errors import GatewayError

log = logging.getLogger(__name__)


def move_aside(path: Path, why: str, what: str, *, level: int = logging.WARNING) -> Path:
    """Rename ``path`` and its WAL files to ``<name>.damaged-<time>``, logged at ``level`` naming ``what``."""
    stamp = int(time.time())
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while any(Path(f"{aside}{suffix}").exists() for suffix in ("", "-wal", "-shm")):
        n += 1  # a second one within the second: never over the first (it may still be being read)
        aside = path.with_name(f"{path.name}.damaged-{stamp}.{n}")
    log.log(level, "%s %s is damaged (%s): moved to %s, starting fresh", what, path, why, aside)
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.replace(src, f"{aside}{suffix}")
    return aside


class Damaged(sqlite3.DatabaseError):
    """The file opened but failed its ``quick_check``."""


def is_damage(exc: BaseException | None) -> bool:
    """Whether SQLite said the file is damaged (SQLITE_CORRUPT, SQLITE_NOTADB, a failed quick_check),
    here or in a cause. Not a lock, a full disk, an I/O or permission error: those say nothing about the
    file's content, and moving it aside for them would throw good state away."""
    while exc is not None:
        if isinstance(exc, Damaged):
            return True
        code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.Error) else None
        if code is not None and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            return True
        exc = exc.__cause__
    return False


def open_store(
    path: Path, open_db: Callable[[], sqlite3.Connection], error: type[GatewayError], what: str
) -> sqlite3.Connection:
    """``open_db()``; when it finds the file damaged (:func:`is_damage`), the file is moved aside
    (:func:`move_aside`) and ``open_db()`` runs again on a fresh one. Other SQLite failures (a lock, a
    full disk, an I/O or permission error) raise ``error`` and leave the file as it is."""
    try:
        return open_db()
    except sqlite3.Error as exc:
        if not is_damage(exc):
            raise error(f"{path}: cannot open the {what} database: {exc}") from exc
        move_aside(path, str(exc), what)
        try:
            return open_db()
        except sqlite3.Error as exc2:
            raise error(f"{path}: cannot create the {what} database: {exc2}") from exc2


def open_state_db(
    path: Path, schema: str, what: str, error: type[GatewayError], *, synchronous: str = "NORMAL"
) -> sqlite3.Connection:
    """Open (or create) ``path`` with ``schema`` (CREATE ... IF NOT EXISTS statements), WAL, checked;
    ``what`` names it in messages ("care state"); ``synchronous``: ``FULL`` where a transaction must be
    on disk before what follows it (the SMS fallback's attempts). A damaged file is moved aside
    (:func:`open_store`). One that cannot be opened for another reason (a lock, a full disk, an I/O or
    permission error) is left as it is and the state is kept in memory until the next start, logged at
    ERROR: such state must never keep the daemon, and with it the SOS path, from starting, nor be thrown
    away for a fault that is not in it. ``error`` is raised only if even that fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return open_store(path, lambda: _open(path, schema, synchronous), error, what)
    except GatewayError as exc:
        log.error("%s: kept in memory until the next start, nothing of it saved: %s", what, exc)
        try:
            return in_memory(schema)
        except sqlite3.Error as exc2:
            raise error(f"{path}: cannot open the {what} database even in memory: {exc2}") from exc2


def in_memory(schema: str) -> sqlite3.Connection:
    """A database of ``schema`` in memory: the stand-in for a file that cannot be opened (it is left as
    it is for the next start)."""
    db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    db.executescript(schema)
    return db


def _open(path: Path, schema: str, synchronous: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise Damaged("quick_check failed")
        db.executescript(schema)
    except BaseException:
        db.close()
        raise
    return db


class WriteHealth:
    """Whether a store's writes work, logged as the guide asks: the first failure at WARNING, repeats at
    DEBUG, the recovery at INFO. The caller keeps what it could not write for its next save."""

    def __init__(self, what: str, path: Path) -> None:
        self.what, self.path = what, path
        self.failing = False

    def failed(self, exc: BaseException) -> bool:
        """Note a failed write; returns False (the save's result)."""
        level = logging.DEBUG if self.failing else logging.WARNING
        log.log(level, "%s %s: write failed, kept in memory for the next save: %s", self.what, self.path, exc)
        self.failing = True
        return False

    def worked(self) -> bool:
        """Note a write that worked; returns True (the save's result)."""
        if self.failing:
            log.info("%s %s: writes work again", self.what, self.path)
            self.failing = False
        return True
