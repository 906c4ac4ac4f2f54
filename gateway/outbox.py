"""The outbox: the gateway's only buffer, SQLite in WAL mode.

Contract (docs/mqtt-contract.md, "Delivery"):

- **Accepted = committed.** :meth:`Outbox.submit` returns a future that resolves to the message's
  ``seq`` once its transaction is on disk (``synchronous=FULL``: the WAL is fsynced at each commit).
  Commits are grouped, at most ``commit_interval_ms`` (<= 50 ms) apart; an alert triggers a commit at
  once. A power cut loses at most the window not yet committed, never a committed message, and SQLite's
  WAL never leaves a torn store.
- **seq** is gateway-wide, +1 per committed message, persisted with the message in the same
  transaction (``meta.next_seq``), so a gap seen by the cloud is a loss or a reported eviction.
- **Lanes**: alert (0) > observation (1) > device state (2) > bulk (3). Fetching is FIFO by seq within
  a lane, or within a lane and device (:meth:`Outbox.fetch_device`), so per-device order always holds.
- **Disk budget** (``max_bytes``): when over budget, the oldest messages of the lowest non-empty lane
  are evicted first; alerts are never evicted. Evicted ``seq`` ranges are recorded and reported in
  ``status`` so the cloud can tell an eviction from a loss.
- A message leaves the outbox only through :meth:`Outbox.ack` (the broker's PUBACK).

All SQLite work runs on one dedicated worker thread (``sqlite3`` blocks on fsync; the event loop must
not); the asyncio side only queues work and awaits results.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import OutboxError

log = logging.getLogger(__name__)

T = TypeVar("T")

ROW_OVERHEAD_BYTES = 64  # per-row cost in the store beyond topic and payload (rowid, columns, index)
SCHEMA_VERSION = 1


class Lane(enum.IntEnum):
    ALERT = 0
    OBSERVATION = 1
    STATE = 2
    BULK = 3


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to commit. ``body`` is a JSON object without ``seq`` and ``historical``: the
    uplink adds both when it sends (``seq`` is only known at commit)."""

    lane: Lane
    topic: str
    body: bytes
    device_id: str
    captured_at: float
    retain: bool = False


@dataclass(frozen=True, slots=True)
class StoredMessage:
    seq: int
    lane: Lane
    topic: str
    body: bytes
    device_id: str
    captured_at: float
    retain: bool


@dataclass
class OutboxStats:
    depth: dict[str, int]
    oldest_captured_at: dict[str, float | None]
    bytes: int
    max_bytes: int
    next_seq: int
    evicted_total: int
    evicted_ranges: list[tuple[int, int]]
    commits: int


@dataclass
class _Pending:
    msg: NewMessage
    future: asyncio.Future[int]


@dataclass
class _Counters:
    commits: int = 0
    evicted_total: int = 0
    inserted: int = 0
    deleted: int = 0


class Outbox:
    """Use as ``async with Outbox(path, ...) as ob:``, and run :meth:`run` in the owner's TaskGroup."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int = 256 * 1024 * 1024,
        commit_interval_ms: int = 50,
        clock: Callable[[], float] = time.time,
        max_evicted_ranges: int = 64,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.commit_interval_s = commit_interval_ms / 1000.0
        self.clock = clock
        self.max_evicted_ranges = max_evicted_ranges
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._db: sqlite3.Connection | None = None
        self._pending: list[_Pending] = []
        self._acked: list[int] = []
        self._acked_set: set[int] = set()
        self._urgent = asyncio.Event()
        self._wake_committer = asyncio.Event()
        self._on_commit: list[Callable[[], None]] = []
        self.next_seq = 1
        self.bytes = 0
        self.depth = [0, 0, 0, 0]
        # messages stored per lane and device (in flight included), for per-device fair draining
        self.lane_devices: list[dict[str, int]] = [{}, {}, {}, {}]
        self.counters = _Counters()
        self.evicted_ranges: list[tuple[int, int]] = []
        self._closed = False
        self._on_evict: list[Callable[[list[tuple[int, int]]], None]] = []

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Outbox:
        await self._call(self._open)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Commit what is pending, then close. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._db is not None:
                await self._flush()
                await self._call(self._close_db)
        finally:
            self._executor.shutdown(wait=True)

    async def flush(self) -> None:
        """Commit what is pending now (the orderly stop does, before anything else can hang)."""
        if not self._closed and self._db is not None:
            await self._flush()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=OFF")
            db.execute("PRAGMA wal_autocheckpoint=4000")
            integrity = db.execute("PRAGMA quick_check").fetchone()[0]
            if integrity != "ok":
                raise OutboxError(f"{self.path}: store failed its integrity check: {integrity}")
            db.executescript(
                """
                CREATE TABLE IF NOT EXISTS msg(
                    seq INTEGER PRIMARY KEY,
                    lane INTEGER NOT NULL,
                    device TEXT NOT NULL,
                    topic TEXT NOT NULL,
                    body BLOB NOT NULL,
                    captured REAL NOT NULL,
                    retain INTEGER NOT NULL,
                    size INTEGER NOT NULL
                );
                CREATE INDEX IF NOT EXISTS msg_lane_seq ON msg(lane, seq);
                CREATE INDEX IF NOT EXISTS msg_lane_device_seq ON msg(lane, device, seq);
                CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                CREATE TABLE IF NOT EXISTS evicted(first INTEGER NOT NULL, last INTEGER NOT NULL,
                                                   lane INTEGER NOT NULL, at REAL NOT NULL);
                """
            )
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("schema", SCHEMA_VERSION) != SCHEMA_VERSION:
                raise OutboxError(f"{self.path}: schema version {meta['schema']} is not {SCHEMA_VERSION}")
            max_seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM msg").fetchone()[0]
            self.next_seq = max(int(meta.get("next_seq", 1)), max_seq + 1)
            self.counters.evicted_total = int(meta.get("evicted_total", 0))
            for lane, device, count, size in db.execute(
                "SELECT lane, device, COUNT(*), SUM(size) FROM msg GROUP BY lane, device"
            ):
                self.depth[lane] += count
                self.lane_devices[lane][device] = count
                self.bytes += size
            self.evicted_ranges = [
                (a, b)
                for a, b in db.execute(
                    "SELECT first, last FROM evicted ORDER BY first DESC LIMIT ?", (self.max_evicted_ranges,)
                ).fetchall()[::-1]
            ]
        except sqlite3.Error as exc:
            raise OutboxError(f"{self.path}: cannot open the store: {exc}") from exc
        self._db = db

    def _close_db(self) -> None:
        if self._db is not None:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                log.debug("checkpoint at close failed", exc_info=True)
            self._db.close()
            self._db = None

    # -- accepting ---------------------------------------------------------------------------

    def submit(self, msg: NewMessage) -> asyncio.Future[int]:
        """Queue ``msg`` for the next group commit; the future gives its ``seq`` once on disk."""
        if self._closed:
            raise OutboxError("outbox is closed")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(msg, fut))
        if msg.lane is Lane.ALERT:
            self._urgent.set()
        self._wake_committer.set()
        return fut

    async def put(self, msg: NewMessage) -> int:
        """Submit and wait until committed."""
        return await self.submit(msg)

    def ack(self, seqs: Iterable[int]) -> None:
        """The broker has these: delete them in the next commit."""
        for seq in seqs:
            if seq not in self._acked_set:
                self._acked_set.add(seq)
                self._acked.append(seq)
        if self._acked:
            self._wake_committer.set()

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after each commit that added messages (the uplink's wake-up)."""
        self._on_commit.append(callback)

    def on_evict(self, callback: Callable[[list[tuple[int, int]]], None]) -> None:
        self._on_evict.append(callback)

    # -- the committer task ------------------------------------------------------------------

    async def run(self) -> None:
        """Group commits: wait for work, then for the rest of the window (or not, for an alert)."""
        while True:
            await self._wake_committer.wait()
            if not self._urgent.is_set():
                try:
                    async with asyncio.timeout(self.commit_interval_s):
                        await self._urgent.wait()
                except TimeoutError:
                    pass
            await self._flush()

    async def _flush(self) -> None:
        self._wake_committer.clear()
        self._urgent.clear()
        pending, self._pending = self._pending, []
        acked, self._acked = self._acked, []
        if not pending and not acked:
            return
        try:
            seqs, evicted = await self._call(self._commit, [p.msg for p in pending], acked)
        except OutboxError as exc:
            # The store failed (disk full, I/O error): these messages are NOT accepted. Their
            # submitters learn it through the future; acked seqs are retried with the next commit.
            self._acked = acked + self._acked
            for p in pending:
                if not p.future.done():
                    p.future.set_exception(exc)
            log.error("outbox commit of %d messages failed: %s", len(pending), exc)
            return
        for seq in acked:
            self._acked_set.discard(seq)
        for p, seq in zip(pending, seqs, strict=True):
            if not p.future.done():
                p.future.set_result(seq)
        if pending:
            for wake in self._on_commit:
                wake()
        if evicted:
            for cb in self._on_evict:
                cb(evicted)

    def _commit(self, msgs: Sequence[NewMessage], acked: Sequence[int]) -> tuple[list[int], list[tuple[int, int]]]:
        db = self._db
        assert db is not None
        first = self.next_seq
        rows = []
        added = 0
        lane_add = [0, 0, 0, 0]
        dev_add: dict[tuple[int, str], int] = {}
        for i, m in enumerate(msgs):
            size = len(m.body) + len(m.topic) + ROW_OVERHEAD_BYTES
            added += size
            lane_add[m.lane] += 1
            key = (int(m.lane), m.device_id)
            dev_add[key] = dev_add.get(key, 0) + 1
            rows.append((first + i, int(m.lane), m.device_id, m.topic, m.body, m.captured_at, int(m.retain), size))
        next_seq = first + len(msgs)
        deleted: list[tuple[int, int, str]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            if rows:
                db.executemany("INSERT INTO msg VALUES (?,?,?,?,?,?,?,?)", rows)
                db.execute("INSERT OR REPLACE INTO meta VALUES ('next_seq', ?)", (next_seq,))
            if acked:
                deleted = db.execute(
                    f"DELETE FROM msg WHERE seq IN ({','.join('?' * len(acked))}) RETURNING lane, size, device",
                    acked,
                ).fetchall()
            evicted, evicted_rows = self._evict_over_budget(db, self.bytes + added - sum(r[1] for r in deleted))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise OutboxError(f"{self.path}: commit failed: {exc}") from exc
        # Only now, after COMMIT, does the in-memory picture change.
        self.next_seq = next_seq
        self.bytes += added
        for lane in range(4):
            self.depth[lane] += lane_add[lane]
        for (lane, device), n in dev_add.items():
            self.lane_devices[lane][device] = self.lane_devices[lane].get(device, 0) + n
        for lane, size, device in [*deleted, *evicted_rows]:
            self.depth[lane] -= 1
            self.bytes -= size
            left = self.lane_devices[lane].get(device, 1) - 1
            if left > 0:
                self.lane_devices[lane][device] = left
            else:
                self.lane_devices[lane].pop(device, None)
        self.counters.commits += 1
        self.counters.inserted += len(rows)
        self.counters.deleted += len(deleted)
        if evicted:
            self.counters.evicted_total += len(evicted_rows)
            self.evicted_ranges = (self.evicted_ranges + evicted)[-self.max_evicted_ranges :]
        return list(range(first, next_seq)), evicted

    def _evict_over_budget(
        self, db: sqlite3.Connection, projected: int
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int, str]]]:
        """Delete the oldest messages of the lowest lanes until under budget. Never alerts."""
        ranges: list[tuple[int, int]] = []
        rows_out: list[tuple[int, int, str]] = []
        if projected <= self.max_bytes:
            return ranges, rows_out
        excess = projected - self.max_bytes
        now = self.clock()
        for lane in (Lane.BULK, Lane.STATE, Lane.OBSERVATION):
            while excess > 0:
                batch = db.execute(
                    "SELECT seq, size, device FROM msg WHERE lane = ? ORDER BY seq LIMIT 2000", (int(lane),)
                ).fetchall()
                if not batch:
                    break
                take = []
                for seq, size, device in batch:
                    if excess <= 0:
                        break
                    take.append(seq)
                    excess -= size
                    rows_out.append((int(lane), size, device))
                db.executemany("DELETE FROM msg WHERE seq = ?", [(s,) for s in take])
                for a, b in _runs(take):
                    db.execute("INSERT INTO evicted VALUES (?,?,?,?)", (a, b, int(lane), now))
                    ranges.append((a, b))
            if excess <= 0:
                break
        if rows_out:
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('evicted_total', ?)",
                (self.counters.evicted_total + len(rows_out),),
            )
            db.execute(
                "DELETE FROM evicted WHERE rowid NOT IN (SELECT rowid FROM evicted ORDER BY first DESC LIMIT ?)",
                (self.max_evicted_ranges,),
            )
            log.warning("outbox over its %d byte budget: evicted %d messages", self.max_bytes, len(rows_out))
        return sorted(ranges), rows_out

    # -- reading for the uplink --------------------------------------------------------------

    async def fetch(self, lane: Lane, after_seq: int, limit: int) -> list[StoredMessage]:
        """The next messages of ``lane`` with seq > ``after_seq``, oldest first, not yet acked."""
        if limit <= 0:
            return []
        rows = await self._call(self._fetch, int(lane), after_seq, limit)
        acked = self._acked_set
        return [r for r in rows if r.seq not in acked]

    async def fetch_device(self, lane: Lane, device_id: str, after_seq: int, limit: int) -> list[StoredMessage]:
        """Like :meth:`fetch`, for one device's messages of a lane."""
        if limit <= 0:
            return []
        rows = await self._call(self._fetch, int(lane), after_seq, limit, device_id)
        acked = self._acked_set
        return [r for r in rows if r.seq not in acked]

    def pending_devices(self, lane: Lane) -> list[str]:
        """Devices with messages stored in ``lane`` (in flight included)."""
        return list(self.lane_devices[lane])

    def _fetch(self, lane: int, after_seq: int, limit: int, device: str | None = None) -> list[StoredMessage]:
        db = self._db
        assert db is not None
        if device is None:
            cursor = db.execute(
                "SELECT seq, topic, body, device, captured, retain FROM msg "
                "WHERE lane = ? AND seq > ? ORDER BY seq LIMIT ?",
                (lane, after_seq, limit),
            )
        else:
            cursor = db.execute(
                "SELECT seq, topic, body, device, captured, retain FROM msg "
                "WHERE lane = ? AND device = ? AND seq > ? ORDER BY seq LIMIT ?",
                (lane, device, after_seq, limit),
            )
        return [
            StoredMessage(seq, Lane(lane), topic, body, dev, captured, bool(retain))
            for seq, topic, body, dev, captured, retain in cursor
        ]

    async def stats(self) -> OutboxStats:
        oldest = await self._call(self._oldest)
        return OutboxStats(
            depth={lane.name.lower(): self.depth[lane] for lane in Lane},
            oldest_captured_at={lane.name.lower(): oldest[lane] for lane in Lane},
            bytes=self.bytes,
            max_bytes=self.max_bytes,
            next_seq=self.next_seq,
            evicted_total=self.counters.evicted_total,
            evicted_ranges=list(self.evicted_ranges),
            commits=self.counters.commits,
        )

    def _oldest(self) -> list[float | None]:
        db = self._db
        assert db is not None
        out: list[float | None] = []
        for lane in Lane:
            row = db.execute("SELECT captured FROM msg WHERE lane = ? ORDER BY seq LIMIT 1", (int(lane),)).fetchone()
            out.append(row[0] if row else None)
        return out

    def depth_total(self) -> int:
        return sum(self.depth)


def _runs(seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous runs of a sorted list of ints: [1,2,3,7,8] -> [(1,3),(7,8)]."""
    out: list[tuple[int, int]] = []
    for s in seqs:
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def wire_payload(msg: StoredMessage, historical: bool) -> bytes:
    """The bytes sent: the stored JSON body with ``seq`` and ``historical`` added."""
    # Bodies are built by gateway.messages and always hold at least msg_id, so never "{}".
    return msg.body[:-1] + b',"seq":%d,"historical":%s}' % (msg.seq, b"true" if historical else b"false")
