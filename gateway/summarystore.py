"""The daily summary's aggregates on disk: ``summary.sqlite3`` (WAL) beside the outbox and the care store.

Written by what was fed since the last save (:class:`gateway.summary.Pending`), one transaction per save:
a minute bin already on disk is merged with its delta (a reading that arrives late, a stored cuff
record, lands in its own minute), a blood-pressure reading is one row per (device, time) whose
systolic, diastolic and mean fill in as their readings come, presses and alerts are one row per key
(a repeat is ignored), link changes one row each. ``sent`` records the summaries the outbox has
committed, by (subject, date): never two for one date. ``meta`` keeps when the store began and the
gateway's last sign of life (so a device that was connected when the gateway died does not count as
connected while it was off). Rows older than ``retention_days`` are deleted (:meth:`prune`): the
size is bounded (at most 1440 bins per device and day).

Like the care store, a file SQLite cannot read is moved aside and a fresh one started: the summary must
never keep the daemon, and with it the SOS path, from starting. Readers (``gatewayctl report`` while
the daemon runs) open it read-only (:func:`open_readonly`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
import time
from pathlib import Path

from gateway.errors import GatewayError
from gateway.statedb import WriteHealth, open_state_db
from gateway.summary import BpReading, DayData, Event, LinkChange, MinuteBin, Pending

log = logging.getLogger(__name__)

STORE_NAME = "summary.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bin(subject TEXT NOT NULL, minute INTEGER NOT NULL, device TEXT NOT NULL,
                               doc TEXT NOT NULL, PRIMARY KEY(subject, minute, device)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS bin_minute ON bin(minute);
CREATE TABLE IF NOT EXISTS bp(device TEXT NOT NULL, ms INTEGER NOT NULL, subject TEXT NOT NULL,
                              systolic REAL, diastolic REAL, mean_arterial REAL, PRIMARY KEY(device, ms));
CREATE INDEX IF NOT EXISTS bp_subject ON bp(subject, ms);
CREATE TABLE IF NOT EXISTS event(key TEXT PRIMARY KEY, subject TEXT NOT NULL, device TEXT NOT NULL,
                                 at REAL NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS event_subject ON event(subject, at);
CREATE TABLE IF NOT EXISTS link(device TEXT NOT NULL, at REAL NOT NULL, subject TEXT NOT NULL,
                                state TEXT NOT NULL, battery INTEGER);
CREATE INDEX IF NOT EXISTS link_device ON link(device, at);
CREATE TABLE IF NOT EXISTS sent(subject TEXT NOT NULL, date TEXT NOT NULL, msg_id TEXT NOT NULL,
                                at REAL NOT NULL, PRIMARY KEY(subject, date));
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value REAL NOT NULL);
"""


def _stored_bin(doc: str, device: str) -> MinuteBin | None:
    """A stored minute; None (with a WARNING) when it is damaged: that minute is lost, not the day."""
    try:
        return MinuteBin.loads(doc)
    except ValueError:
        log.warning("summary store: a stored minute of device %s is damaged, left out", device)
        return None


class SummaryStoreError(GatewayError):
    """The summary store cannot be opened or read."""


class SummaryStore:
    def __init__(self, path: str | os.PathLike[str], *, now: float | None = None) -> None:
        self.path = Path(path)
        self._health = WriteHealth("summary store", self.path)
        self._db = open_state_db(self.path, _SCHEMA, "summary store", SummaryStoreError)
        t = time.time() if now is None else now
        meta = self.meta()
        if "created_at" not in meta:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('created_at', ?)", (t,))
        alive = meta.get("alive_at")
        if alive is not None:
            self._gateway_was_down(alive)

    def close(self) -> None:
        self._db.close()

    def _gateway_was_down(self, alive_at: float) -> None:
        """Devices connected at the gateway's last sign of life: their state from then is unknown."""
        rows = self._db.execute(
            "SELECT l.device, l.subject, l.state FROM link l JOIN"
            " (SELECT device, MAX(at) AS at FROM link GROUP BY device) m ON l.device = m.device AND l.at = m.at"
        ).fetchall()
        down = [(d, alive_at, s) for d, s, state in rows if state == "connected"]
        if down:
            self._db.executemany(
                "INSERT INTO link(device, at, subject, state, battery) VALUES (?, ?, ?, 'unknown', NULL)", down
            )

    # -- reading --------------------------------------------------------------------------------------

    def meta(self) -> dict[str, float]:
        """The store's numbers (``created_at``, ``alive_at``); one that is not a number is left out."""
        out: dict[str, float] = {}
        for k, v in self._db.execute("SELECT key, value FROM meta"):
            try:
                out[str(k)] = float(v)
            except (TypeError, ValueError):
                log.warning("summary store: %s is not a number, ignored", k)
        return out

    def last_links(self) -> dict[str, tuple[str, int | None]]:
        """Each device's last stored (state, battery level)."""
        out: dict[str, tuple[str, int | None]] = {}
        for device, state, battery in self._db.execute("SELECT device, state, battery FROM link ORDER BY at"):
            prev = out.get(device)
            out[device] = (state, battery if battery is not None else (prev[1] if prev else None))
        return out

    def subjects(self, start: float, end: float) -> set[str]:
        """Subjects with any aggregate in [start, end)."""
        q = (
            "SELECT subject FROM bin WHERE minute >= ? AND minute < ?"
            " UNION SELECT subject FROM bp WHERE ms >= ? AND ms < ?"
            " UNION SELECT subject FROM event WHERE at >= ? AND at < ?"
            " UNION SELECT subject FROM link WHERE at >= ? AND at < ?"
        )
        args = (start // 60, -(-end // 60), start * 1000, end * 1000, start, end, start, end)
        return {s for (s,) in self._db.execute(q, args)}

    def day(self, subject: str, start: float, end: float) -> DayData:
        db = self._db
        try:
            bins = [
                (int(m), str(d), b)
                for m, d, doc in db.execute(
                    "SELECT minute, device, doc FROM bin WHERE subject = ? AND minute >= ? AND minute < ?",
                    (subject, start // 60, -(-end // 60)),
                )
                if (b := _stored_bin(doc, d)) is not None
            ]
            bp = [
                BpReading(d, ms / 1000.0, s, di, ma)
                for d, ms, s, di, ma in db.execute(
                    "SELECT device, ms, systolic, diastolic, mean_arterial FROM bp"
                    " WHERE subject = ? AND ms >= ? AND ms < ? ORDER BY ms",
                    (subject, start * 1000, end * 1000),
                )
            ]
            events = [
                Event(d, at, k, n)
                for d, at, k, n in db.execute(
                    "SELECT device, at, kind, name FROM event WHERE subject = ? AND at >= ? AND at < ?",
                    (subject, start, end),
                )
            ]
            devices = [d for (d,) in db.execute("SELECT DISTINCT device FROM link WHERE subject = ?", (subject,))]
            links: list[LinkChange] = []
            for dev in devices:
                before = db.execute(
                    "SELECT at, state, battery FROM link WHERE device = ? AND at < ? ORDER BY at DESC LIMIT 1",
                    (dev, start),
                ).fetchall()
                inside = db.execute(
                    "SELECT at, state, battery FROM link WHERE device = ? AND at >= ? AND at < ? ORDER BY at",
                    (dev, start, end),
                ).fetchall()
                links += [LinkChange(dev, at, st, bat) for at, st, bat in before + inside]
        except (sqlite3.Error, ValueError, TypeError) as exc:
            raise SummaryStoreError(f"{self.path}: summary store not readable: {exc}") from exc
        return DayData(bins, bp, events, links)

    def sent_dates(self, subject: str) -> set[dt.date]:
        return {
            dt.date.fromisoformat(d) for (d,) in self._db.execute("SELECT date FROM sent WHERE subject = ?", (subject,))
        }

    def sent_msg_id(self, subject: str, date: dt.date) -> str | None:
        row = self._db.execute(
            "SELECT msg_id FROM sent WHERE subject = ? AND date = ?", (subject, date.isoformat())
        ).fetchone()
        return None if row is None else str(row[0])

    # -- writing --------------------------------------------------------------------------------------

    def save(self, p: Pending, now: float) -> bool:
        """One transaction with everything in ``p``. False when it failed (logged: WARNING once, then
        DEBUG; the caller keeps ``p`` and tries again with the next save)."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                for (subject, device, minute), delta in p.bins.items():
                    row = db.execute(
                        "SELECT doc FROM bin WHERE subject = ? AND minute = ? AND device = ?", (subject, minute, device)
                    ).fetchone()
                    merged = None if row is None else _stored_bin(row[0], device)
                    if merged is not None:
                        merged.merge(delta)
                        delta = merged  # a damaged stored minute is replaced by the new one
                    db.execute(
                        "INSERT OR REPLACE INTO bin(subject, minute, device, doc) VALUES (?, ?, ?, ?)",
                        (subject, minute, device, delta.dumps()),
                    )
                db.executemany(
                    "INSERT INTO bp(device, ms, subject, systolic, diastolic, mean_arterial) VALUES (?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT(device, ms) DO UPDATE SET systolic = coalesce(excluded.systolic, systolic),"
                    " diastolic = coalesce(excluded.diastolic, diastolic),"
                    " mean_arterial = coalesce(excluded.mean_arterial, mean_arterial)",
                    [(dev, ms, *row) for (dev, ms), row in p.bp.items()],
                )
                db.executemany(
                    "INSERT OR IGNORE INTO event(key, subject, device, at, kind, name) VALUES (?, ?, ?, ?, ?, ?)",
                    [(k, s, e.device_id, e.at, e.kind, e.name) for k, (s, e) in p.events.items()],
                )
                db.executemany(
                    "INSERT INTO link(device, at, subject, state, battery) VALUES (?, ?, ?, ?, ?)",
                    [(c.device_id, c.at, s, c.state, c.battery) for s, c in p.links],
                )
                db.execute("INSERT OR REPLACE INTO meta VALUES ('alive_at', ?)", (now,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except (sqlite3.Error, ValueError) as exc:
            return self._health.failed(exc)
        return self._health.worked()

    def mark_sent(self, subject: str, date: dt.date, msg_id: str, at: float) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO sent(subject, date, msg_id, at) VALUES (?, ?, ?, ?)",
            (subject, date.isoformat(), msg_id, at),
        )

    def prune(self, before: float) -> None:
        """Forget aggregates older than ``before`` (retention); each device keeps its last link row."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM bin WHERE minute < ?", (before // 60,))
            db.execute("DELETE FROM bp WHERE ms < ?", (before * 1000,))
            db.execute("DELETE FROM event WHERE at < ?", (before,))
            db.execute(
                "DELETE FROM link WHERE at < ? AND rowid NOT IN (SELECT MAX(rowid) FROM link GROUP BY device)",
                (before,),
            )
            db.execute("DELETE FROM sent WHERE at < ?", (before - 3 * 86400.0,))  # after the dates it guards
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def open_readonly(path: Path) -> SummaryStore:
    """The store as ``gatewayctl report`` reads it beside a running daemon (no writes, no repair)."""
    if not path.exists():
        raise SummaryStoreError(f"{path}: no summary store here (is data_dir right? has gatewayd run?)")
    store = SummaryStore.__new__(SummaryStore)
    store.path = path
    store._health = WriteHealth("summary store", path)
    try:
        store._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        store._db.execute("SELECT 1 FROM meta LIMIT 1")
    except sqlite3.Error as exc:
        raise SummaryStoreError(f"{path}: cannot read the summary store: {exc}") from exc
    return store
