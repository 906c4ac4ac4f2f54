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
- **Disk full**: a full disk must not cost an SOS. The outbox keeps a reserve file beside the store
  (``<store>.reserve``, :data:`RESERVE_BYTES`) and watches the free space: with less than the reserve's
  size left, it stops growing (a new message evicts the oldest observations, by the same rule and
  report as the budget) and checkpoints its WAL often; a commit that fails with SQLITE_FULL anyway
  releases the reserve and is tried again at once. An alert whose commit fails is kept in memory and
  retried every :data:`COMMIT_RETRY_S` (its future resolves when it is on disk); other messages are
  refused (their future fails). The reserve is made again when the disk has room.
- A message leaves the outbox only through :meth:`Outbox.ack` (the broker's PUBACK), deleted with the
  next commit of new messages or within ``ACK_DELAY_S``: a reading costs one commit, not two.
- **Stream**: a random id made when the store is created (``info.stream``); ``seq`` is contiguous
  within it. A new store (a new SD card) is a new stream whose ``seq`` starts at 1; a store from before
  streams existed gets one at its migration, starting at its next seq (``info.stream_first_seq``).
- **Time**: every message keeps its boot id, its boot-clock capture time and its clock state
  (:class:`gateway.clock.ClockState`) beside ``captured_at``. :meth:`Outbox.request_correction` (the
  clock became synchronised or stepped) rewrites ``captured_at`` of this boot's waiting messages from
  boot-clock time plus the measured offset, in the same transaction as the ``time-correction`` messages
  for those of the boot that were already sent (:meth:`Outbox.note_sent`) with another offset. Those
  transactions are its own (:data:`CORRECTION_CHUNK` seqs each, the time-corrections with the last), after
  the commit of what was pending and with what is submitted meanwhile committed between two: a correction
  that fails never takes an SOS commit with it (it is retried with the next commit), nor does a long one
  hold an SOS for more than a chunk. A message whose time was read before a step
  the clock has seen since (:meth:`gateway.clock.Clock.stamp` says UNSYNCED on a synchronised clock) asks
  for one more correction of its boot, so it is never committed after its boot's correction unmended.

- **Damaged store**: a store SQLite calls damaged (SQLITE_CORRUPT, SQLITE_NOTADB, a failed
  ``quick_check``; a worn SD card), at open or while running (a commit or a read meets a damaged page),
  must not keep the daemon from starting nor an SOS from being committed. It is moved aside
  (``<store>.damaged-<time>``, logged at ERROR) and a fresh store (a new stream whose seqs go on after the
  damaged one's: no ack or cursor of a message of the old store can touch one of the new) is started at
  once; the commit or read that met the damage runs again on it. :meth:`Outbox.run` reads the damaged
  one back (:mod:`gateway.salvage`) and commits what it can again, as it was stored (times, clock state,
  boot), with new seqs: its alerts first, then the rest in seq order, a batch per commit (new messages,
  an SOS, are committed between two). The record
  (:class:`gateway.salvage.Recovery`, ``info.recovery``) survives restarts (the salvage goes on from its
  cursor) and is the status's ``recovered_from``. A replacement while running tells the uplink
  (:meth:`Outbox.on_replaced`: its session's in-flight counts and cursors are the old store's, it starts
  a new one). Should the fresh store not be made (a full disk), the reserve is released and it is tried
  again with each commit, the record kept in memory meanwhile. A salvage not done when its store is
  replaced in turn goes on into the next one (``info.earlier``; the status names the latest). Damaged
  files are never moved over one another. At most one replacement per
  :data:`REPLACE_MIN_S`. Other failures to open (permissions, I/O, a store of a later schema) still
  refuse to start: they are not damage, and the file is left as it is.

- **Opening**: ``async with Outbox(...)`` opens the store (its ``quick_check`` and the count of what waits
  read the whole file: seconds for a full store on an SD card). With ``open_in_run`` (the daemon), it is
  :meth:`Outbox.run` that opens it, so the devices, an SOS receiver first, start listening at once: what
  they submit meanwhile waits in memory, as in any commit window, and is committed when the store is
  open; every other call (fetch, stats) waits for the open (:meth:`Outbox.opened`). Its ``quick_check``
  then runs on a read-only connection of its own beside the commits (the first commit does not wait for
  it; a stop interrupts it); a store it finds damaged is replaced as one found damaged while running, if
  it is still the store in use. A stop during the open waits for it, and commits what was submitted.

All SQLite work runs on one dedicated worker thread (``sqlite3`` blocks on fsync; the event loop must
not); the asyncio side only queues work and awaits results.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

from drivers.reconnect import BugLog
from gateway.clock import CORRECT_TOLERANCE_S, STEP_THRESHOLD_S, Clock, ClockState, boottime, read_boot_id
from gateway.errors import OutboxError
from gateway.salvage import DamagedStore, Recovery, SalvagedRow, StoreUnavailable
from gateway.statedb import is_damage as _is_damage
from gateway.statedb import move_aside

log = logging.getLogger(__name__)

T = TypeVar("T")

ROW_OVERHEAD_BYTES = 64  # per-row cost in the store beyond topic and payload (rowid, columns, index)
ACK_DELAY_S = 1.0  # acked messages wait at most this long for a commit to delete them (see Outbox.ack)
ACK_BATCH = 500  # ... or until this many are waiting (a backlog being drained)
SCHEMA_VERSION = 2  # 2: boot, mono, clock, shift columns; the info table (stream id)
# Disk full (module docstring): the reserve file's size, also the free space under which the outbox stops
# growing. Room for many alert commits, the WAL between checkpoints while low (WAL_CHECKPOINT_LOW_PAGES)
# and the SMS fallback's record, which share the data directory.
RESERVE_BYTES = 8 * 1024 * 1024
DISK_CHECK_S = 5.0  # how often the free space is looked at (statvfs: one system call)
WAL_CHECKPOINT_PAGES = 4000
WAL_CHECKPOINT_LOW_PAGES = 100  # while the disk is low: the WAL restarts from its start this often
REPLACE_MIN_S = 60.0  # a damaged store is replaced while running at most this often
# A damaged file that cannot be opened now (not its damage: another reader of it, an I/O error): tried
# again after this, doubling up to the cap, while the daemon runs
SALVAGE_RETRY_S = 0.5
SALVAGE_RETRY_CAP_S = 60.0
COMMIT_RETRY_S = 1.0  # an alert whose commit failed is tried again this often
MAX_RETRIED_ALERTS = 10_000  # kept in memory for retry at most (beyond: refused, as other messages)
CORRECTION_CHUNK = 20_000  # seqs per transaction of a clock correction (an SOS waits for one at most)


class DiskFull(OutboxError):
    """SQLite said SQLITE_FULL: the disk (or the store's page limit) is full."""


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
    device_clock: bool = False  # captured_at is the device's own clock (a stored record): never corrected


@dataclass(frozen=True, slots=True)
class StoredMessage:
    seq: int
    lane: Lane
    topic: str
    body: bytes
    device_id: str
    captured_at: float  # corrected when ``clock`` is CORRECTED
    retain: bool
    clock: ClockState = ClockState.UNSYNCED
    boot_id: str | None = None  # None: committed before the store kept it (schema 1)
    boot_s: float | None = None  # boot-clock capture time
    shift: float = 0.0  # seconds added to the body's times (captured_at - the body's captured_at)
    stream: str = ""  # of the store it was read from (a replacement may come between its fetch and its send)


@dataclass(frozen=True, slots=True)
class TimeCorrection:
    """Messages of one boot already sent with times off by ``offset_s`` (add it to correct them)."""

    boot_id: str
    offset_s: float
    first_seq: int
    last_seq: int
    count: int


@dataclass
class _SentGroup:
    boot_id: str
    offset: float  # wall - boot clock the group's messages were sent with
    first: int
    last: int
    count: int


@dataclass
class OutboxStats:
    depth: dict[str, int]
    oldest_age_s: dict[str, float | None]  # per lane, of its oldest message (:meth:`Outbox.age_s`)
    bytes: int
    max_bytes: int
    next_seq: int
    evicted_total: int
    evicted_ranges: list[tuple[int, int]]
    commits: int
    stream: str
    stream_first_seq: int


@dataclass
class _Pending:
    msg: NewMessage
    future: asyncio.Future[int]
    boot_id: str | None
    boot_s: float | None
    clock: ClockState
    shift: float = 0.0  # a message salvaged from a damaged store keeps its own


_Stamped = tuple[NewMessage, str | None, float | None, ClockState, float]  # boot id, boot clock, state, shift


class _Damaged(Exception):
    """Internal: the store being opened is damaged (SQLite's words)."""


@dataclass
class _Counters:
    commits: int = 0
    evicted_total: int = 0
    inserted: int = 0
    deleted: int = 0
    fetches: int = 0  # queries of waiting messages (each a round trip to the worker thread)
    commit_failures: int = 0  # commits the store refused (disk full even without the reserve, I/O error)


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
        timebase: Clock | None = None,
        time_correction: Callable[[TimeCorrection], NewMessage] | None = None,
        reserve_bytes: int = RESERVE_BYTES,
        open_in_run: bool = False,
    ) -> None:
        self.path = Path(path)
        # open_in_run: the store is opened by run(), not by ``async with`` (module docstring, "Opening")
        self.open_in_run = open_in_run
        self._opened = asyncio.Event()  # the open ended (self._open_error: how, if it failed)
        self._open_started = False
        self._open_error: OutboxError | None = None
        self.max_bytes = max_bytes
        self.reserve_bytes = reserve_bytes
        self.reserve_path = self.path.with_name(self.path.name + ".reserve")
        self.disk_low = False  # less than reserve_bytes free: the store stops growing
        self.disk_free: int | None = None  # bytes, at the last look
        self._disk_checked = -DISK_CHECK_S  # time.monotonic() of the last look
        self._retry: asyncio.TimerHandle | None = None  # the next try of alerts whose commit failed
        self._failing = False  # the last commit failed (its repeats are logged at DEBUG)
        self.bugs = BugLog()  # errors nobody declared possible (gateway status: bugs.outbox)
        self.commit_interval_s = commit_interval_ms / 1000.0
        self.clock = clock
        self.max_evicted_ranges = max_evicted_ranges
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._db: sqlite3.Connection | None = None
        self._pending: list[_Pending] = []
        self._acked: list[int] = []
        self._acked_set: set[int] = set()
        self._ack_timer: asyncio.TimerHandle | None = None
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
        self._on_recovered: list[Callable[[], None]] = []
        self._on_replaced: list[Callable[[], None]] = []
        self.timebase = timebase
        self.time_correction = time_correction  # builds the time-correction message (gateway.messages)
        self.stream = ""
        self.stream_first_seq = 1
        self._correction: tuple[str, float] | None = None  # (boot id, wall - boot clock) to apply
        self._sent: list[_SentGroup] = []
        self._sent_dirty = False
        self._corrected: dict[str, float] = {}  # boot id -> the offset its messages were corrected to
        self.corrected_total = 0
        self.time_corrections: list[TimeCorrection] = []  # published in this run
        self.recovery: Recovery | None = None  # this store replaced a damaged one (module docstring)
        self.earlier: list[Recovery] = []  # salvages of stores replaced before it, not done yet
        self._salvage_due = False  # a store was replaced while running: start its salvage
        self._replaced_at: float | None = None  # time.monotonic() of the last replacement while running
        self._lost: str | None = None  # a damaged store could not be replaced: why
        self._lost_at = 0.0  # time.monotonic() of the last try to make the fresh store
        self._orphan: Recovery | None = None  # a replacement whose fresh store is not made yet
        self._tg: asyncio.TaskGroup | None = None  # run()'s, for a salvage that starts while running
        self._check_stop = threading.Event()  # ends the integrity check (_integrity_check)

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Outbox:
        if self.timebase is None:
            self.timebase = Clock()
            self.timebase.sample()
        if not self.open_in_run:
            self._start_open()
            await self.opened()
        return self

    def _start_open(self) -> None:
        """Open the store on the worker thread (once). :meth:`opened` says when the thread is done with it,
        whoever waits and whether or not the one who started it was cancelled meanwhile (a stop during a
        long open must still find the store open, and commit what waits, when it closes)."""
        if self._open_started:
            return
        self._open_started = True
        asyncio.get_running_loop().run_in_executor(self._executor, self._open).add_done_callback(self._open_done)

    def _open_done(self, fut: asyncio.Future[None]) -> None:
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled():
            self._open_error = OutboxError(f"{self.path}: the open was cancelled")
        elif isinstance(exc, OutboxError):
            self._open_error = exc
        elif exc is not None:
            self._open_error = OutboxError(f"{self.path}: cannot open the store: {type(exc).__name__}: {exc}")
            self._open_error.__cause__ = exc
        self._opened.set()

    async def opened(self) -> None:
        """Wait until the store is open; raises :class:`OutboxError` if it could not be opened."""
        await self._opened.wait()
        if self._open_error is not None:
            raise self._open_error

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Commit what is pending, then close. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        try:
            if not self._open_started and self._pending:
                self._start_open()  # stopped before run() opened the store: what was accepted goes in
            if self._open_started:
                await self._opened.wait()  # the open's thread is done with it
            if self._open_error is not None:
                for p in self._pending:
                    if not p.future.done():
                        p.future.set_exception(self._open_error)
                self._pending = []
            if self._db is not None:
                await self._flush()
                if self._pending:  # alerts kept for retry, and the store still refuses them
                    log.error("outbox: %d alerts could not be stored before the stop", len(self._pending))
                    for p in self._pending:
                        if not p.future.done():
                            p.future.set_exception(OutboxError("the store refused it until the stop"))
                    self._pending = []
                await self._call(self._close_db)
        finally:
            self._executor.shutdown(wait=True)

    async def flush(self) -> None:
        """Commit what is pending now (the orderly stop does, before anything else can hang); during the
        open, once it is done."""
        if self._closed:
            return
        if self._open_started:
            await self._opened.wait()
        if self._db is not None:
            await self._flush()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._opened.is_set():
            await self.opened()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._guarded, fn, *args)
        finally:
            if self._salvage_due:
                self._begin_salvage()

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        """(Worker thread.) ``fn(*args)``; should SQLite find the open store damaged, it is replaced
        (:meth:`_replace_while_running`) and ``fn`` runs once more, on the fresh store."""
        if self._db is None and self._lost is not None:
            self._retry_fresh()  # raises OutboxError while it still cannot be made
        try:
            return fn(*args)
        except (sqlite3.DatabaseError, OutboxError) as exc:
            if self._db is None or not _is_damage(exc) or not self._replace_while_running(exc):
                raise
        return fn(*args)

    def _retry_fresh(self) -> None:
        """(Worker thread.) No store since a replacement could not make one: try again (at most every
        :data:`COMMIT_RETRY_S`); once made, its salvage starts as any other."""
        now = time.monotonic()
        if now - self._lost_at < COMMIT_RETRY_S:
            raise OutboxError(f"{self.path}: no store since a damaged one could not be replaced: {self._lost}")
        self._lost_at = now
        try:
            self._db = self._create_fresh()
        except OutboxError as exc:
            self._lost = str(exc)
            raise
        log.warning("outbox: a fresh store %s is made at last", self.path)
        self._lost = None
        self._check_disk(force=True)
        self._salvage_due = True

    def _open(self) -> None:
        """Open the store; a damaged one (module docstring, "Damaged store") is moved aside, a fresh one
        started, and the salvage of the damaged one recorded for :meth:`run`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = self._open_db(check=not self.open_in_run)  # open_in_run: run() checks it beside the commits
        except _Damaged as exc:
            self._reset_view()
            db = self._replace(str(exc), None)
        self._db = db
        self._check_disk(force=True)

    def _replace(self, reason: str, known: tuple[str, int] | None) -> sqlite3.Connection:
        """Move the damaged store aside and open a fresh one: a new stream, whose seqs go on after the
        damaged one's (``known``: its stream and last seq; read from the file when None)."""
        aside = move_aside(self.path, reason, "outbox", level=logging.ERROR)
        if known is None:
            try:
                old = DamagedStore(aside)  # its stream and last seq, for the status from the first moment
            except StoreUnavailable as exc:  # read again by the salvage; the fresh stream is new all the same
                log.warning("outbox: the damaged store's stream and last seq cannot be read now: %s", exc)
                stream, last = None, None
            else:
                stream, last = old.stream, old.last_seq
                old.close()
        else:
            stream, last = known
        rec = Recovery(aside=str(aside), at=time.time(), reason=reason, old_stream=stream, old_last_seq=last)
        self._orphan = rec  # until a fresh store holds its record (a full disk may refuse one for a while)
        return self._create_fresh()

    def _create_fresh(self) -> sqlite3.Connection:
        """The fresh store of the replacement :attr:`_orphan`, its record in it. A first failure (the
        damaged file, kept, may fill the disk) releases the disk reserve and tries once more."""
        rec = self._orphan
        assert rec is not None
        for attempt in (1, 2):
            try:
                db = self._open_db(first_seq=(rec.old_last_seq or 0) + 1)
                self.recovery, self._orphan = rec, None
                self._save_recovery(db)
                return db
            except _Damaged as again:
                raise OutboxError(f"{self.path}: even a fresh store is damaged: {again}") from again
            except (OutboxError, sqlite3.Error) as exc:
                if attempt == 2 or not self._release_reserve():
                    raise OutboxError(f"{self.path}: cannot create a fresh store: {exc}") from exc
                self._set_disk_low(True, None)
        raise AssertionError("unreachable")

    def _replace_while_running(self, exc: BaseException) -> bool:
        """(Worker thread.) The open store turned out damaged (a read or a commit failed with
        SQLITE_CORRUPT): replace it by a fresh one whose seqs go on after the last one given, so no ack of
        a message of the damaged store can touch one of the fresh store, nor can a cursor of the uplink
        pass one; its messages are salvaged as at an open. At most once per :data:`REPLACE_MIN_S` (a disk
        that damages every store: the failures are then the callers', as any other)."""
        now = time.monotonic()
        if self._replaced_at is not None and now - self._replaced_at < REPLACE_MIN_S:
            log.warning(
                "outbox: %s found damaged again within %g s, not replaced again yet: %s", self.path, REPLACE_MIN_S, exc
            )
            return False
        self._replaced_at = now
        self._check_stop.set()  # a check of the damaged store still running: its verdict is moot
        known = (self.stream, self.next_seq - 1)
        # a salvage not done yet (the store it filled is the one damaged now) goes on into the next store
        self.earlier = [r for r in (*self.earlier, self.recovery) if r is not None and not r.done]
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()
        self._reset_view()
        try:
            self._db = self._replace(f"while running: {exc}", known)
        except (OutboxError, sqlite3.Error, OSError) as lost:
            self._lost, self._lost_at = str(lost), time.monotonic()
            log.error("outbox: the damaged store could not be replaced (tried again with each commit): %s", lost)
            return False
        self._check_disk(force=True)
        self._salvage_due = True  # on the loop: the salvage starts, the uplink starts a new session
        return True

    def _begin_salvage(self) -> None:
        """A store was replaced while running: its salvage starts (the uplink republishes the status)."""
        self._salvage_due = False
        rec = self.recovery
        if self._tg is not None and rec is not None and not rec.done:
            self._tg.create_task(self._salvage(rec), name="outbox salvage")
        for cb in (*self._on_replaced, *self._on_recovered):
            cb()

    def _reset_view(self) -> None:
        """Forget what a store that turned out damaged half-way through its open put in memory."""
        self.next_seq, self.bytes, self.depth = 1, 0, [0, 0, 0, 0]
        self.lane_devices = [{}, {}, {}, {}]
        self.evicted_ranges, self._sent, self.recovery = [], [], None
        self.counters.evicted_total = 0

    def _open_db(self, first_seq: int = 1, *, check: bool = True) -> sqlite3.Connection:
        """Open the store at :attr:`path` (a new one's seqs start at ``first_seq``; ``check``: its
        ``quick_check`` first); raises :class:`_Damaged` for a damaged file, :class:`OutboxError` for the
        other failures."""
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=OFF")
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            integrity = str(db.execute("PRAGMA quick_check").fetchone()[0]) if check else "ok"
            if integrity != "ok":
                raise _Damaged(f"it failed its integrity check: {integrity[:300]}")
            existed = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'msg'").fetchone() is not None
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
                    size INTEGER NOT NULL,
                    boot TEXT,
                    mono REAL,
                    clock INTEGER NOT NULL DEFAULT 0,
                    shift REAL NOT NULL DEFAULT 0
                );
                CREATE INDEX IF NOT EXISTS msg_lane_seq ON msg(lane, seq);
                CREATE INDEX IF NOT EXISTS msg_lane_device_seq ON msg(lane, device, seq);
                CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                CREATE TABLE IF NOT EXISTS evicted(first INTEGER NOT NULL, last INTEGER NOT NULL,
                                                   lane INTEGER NOT NULL, at REAL NOT NULL);
                CREATE TABLE IF NOT EXISTS info(key TEXT PRIMARY KEY, value TEXT NOT NULL);
                """
            )
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            # Stores of schema 1 never wrote their version: a store with messages and no version is one.
            schema = meta.get("schema", 1 if existed else SCHEMA_VERSION)
            if schema not in (1, SCHEMA_VERSION):
                raise OutboxError(f"{self.path}: schema version {schema} is not {SCHEMA_VERSION}")
            max_seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM msg").fetchone()[0]
            self.next_seq = max(int(meta.get("next_seq", first_seq)), max_seq + 1)
            if schema == 1:
                self._migrate_v1(db)
            info = dict(db.execute("SELECT key, value FROM info").fetchall())
            if "stream" not in info:
                # A new store, or one from before streams: a new stream, starting at the next seq.
                info = {"stream": str(uuid.uuid4()), "stream_first_seq": str(self.next_seq)}
                db.executemany("INSERT OR REPLACE INTO info VALUES (?, ?)", list(info.items()))
                db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
                db.execute("INSERT OR REPLACE INTO meta VALUES ('next_seq', ?)", (self.next_seq,))
                log.info("outbox: new stream %s from seq %s", info["stream"], info["stream_first_seq"])
            self.stream, self.stream_first_seq = info["stream"], int(info["stream_first_seq"])
            # Sends of an earlier boot that was never corrected cannot be corrected any more.
            boot_id = self.timebase.boot_id if self.timebase is not None else ""
            self._sent = [g for g in _sent_groups(info.get("sent", "[]")) if g.boot_id == boot_id]
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
            if "recovery" in info:
                try:
                    self.recovery = Recovery.from_json(info["recovery"])
                    self.earlier = [Recovery.from_dict(r) for r in json.loads(info.get("earlier", "[]"))]
                except (TypeError, ValueError) as exc:
                    log.warning("outbox: the record of an earlier recovery is not readable, dropped: %s", exc)
        except sqlite3.Error as exc:
            if db is not None:
                db.close()
            if _is_damage(exc):
                raise _Damaged(str(exc)) from exc
            raise OutboxError(f"{self.path}: cannot open the store: {exc}") from exc
        except BaseException:
            if db is not None:
                db.close()
            raise
        return db

    def _save_recovery(self, db: sqlite3.Connection | None = None) -> None:
        db = db if db is not None else self._db
        if db is not None and self.recovery is not None:
            earlier = json.dumps([r.to_dict() for r in self.earlier])
            db.executemany(
                "INSERT OR REPLACE INTO info VALUES (?, ?)",
                [("recovery", self.recovery.to_json()), ("earlier", earlier)],
            )

    # -- disk full (module docstring) -----------------------------------------------------------

    def _check_disk(self, force: bool = False) -> None:
        """Look at the free space (at most every DISK_CHECK_S): below the reserve's size the store stops
        growing; with room for two reserves again, it grows again and the reserve is made again."""
        now = time.monotonic()
        if not force and now - self._disk_checked < DISK_CHECK_S:
            return
        self._disk_checked = now
        try:
            st = os.statvfs(self.path.parent)
        except OSError as exc:
            log.debug("outbox: cannot read the free space of %s: %s", self.path.parent, exc)
            return
        free = st.f_bavail * st.f_frsize
        self.disk_free = free
        if free < self.reserve_bytes:
            self._set_disk_low(True, free)
        elif free >= 2 * self.reserve_bytes:
            if not self.reserve_path.exists():
                self._make_reserve()
            self._set_disk_low(False, free)

    def _set_disk_low(self, low: bool, free: int | None) -> None:
        if low == self.disk_low:
            return
        self.disk_low = low
        pages = WAL_CHECKPOINT_LOW_PAGES if low else WAL_CHECKPOINT_PAGES
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute(f"PRAGMA wal_autocheckpoint={pages}")
        if low:
            log.warning(
                "outbox: the disk of %s is nearly full (%s bytes free): the outbox stops growing, new messages "
                "evict the oldest observations (reported as evictions); alerts are never evicted",
                self.path.parent,
                "?" if free is None else free,
            )
        else:
            log.info("outbox: the disk of %s has room again (%d bytes free)", self.path.parent, free or 0)

    def _make_reserve(self) -> None:
        """Write the reserve file (real blocks, not a sparse file: it must free space when deleted)."""
        tmp = self.reserve_path.with_name(self.reserve_path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.reserve_path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.warning("outbox: cannot make the disk reserve %s: %s", self.reserve_path, exc.strerror)

    def _release_reserve(self) -> bool:
        """The disk is full: free the reserve for the commits that matter. True if there was one."""
        try:
            self.reserve_path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("outbox: cannot release the disk reserve %s: %s", self.reserve_path, exc.strerror)
            return False
        log.warning(
            "outbox: the disk of %s is full: released the %d byte reserve", self.path.parent, self.reserve_bytes
        )
        return True

    def _migrate_v1(self, db: sqlite3.Connection) -> None:
        """Schema 1 -> 2: the time columns (unknown for the messages already there: never corrected)."""
        cols = {row[1] for row in db.execute("PRAGMA table_info(msg)")}
        for name, decl in (
            ("boot", "TEXT"),
            ("mono", "REAL"),
            ("clock", "INTEGER NOT NULL DEFAULT 0"),
            ("shift", "REAL NOT NULL DEFAULT 0"),
        ):
            if name not in cols:
                db.execute(f"ALTER TABLE msg ADD COLUMN {name} {decl}")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        log.info("outbox: %s migrated from schema 1 to %d", self.path, SCHEMA_VERSION)

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
        assert self.timebase is not None
        stamp = self.timebase.stamp(msg.captured_at, device_clock=msg.device_clock)
        self._pending.append(_Pending(msg, fut, stamp.boot_id, stamp.boot_s, stamp.state))
        if stamp.state is ClockState.UNSYNCED and self.timebase.synchronised():
            # Read on the wall clock before a step the clock has seen since (its correction may be on disk
            # already): a correction of its boot, after its commit, puts its time right.
            offset = self.timebase.offset()
            if offset is not None:
                self.request_correction(stamp.boot_id, offset)
        if msg.lane is Lane.ALERT:
            self._urgent.set()
        self._wake_committer.set()
        return fut

    async def put(self, msg: NewMessage) -> int:
        """Submit and wait until committed."""
        return await self.submit(msg)

    def ack(self, seqs: Iterable[int]) -> None:
        """The broker has these: delete them with the next commit of new messages, or within
        :data:`ACK_DELAY_S` (:data:`ACK_BATCH` of them at once), so a live reading costs one commit
        (and one fsync), not a second one for its deletion. Until then they stay stored but are never
        fetched again; a kill meanwhile sends them once more (the cloud drops a repeated ``seq``)."""
        for seq in seqs:
            if seq not in self._acked_set:
                self._acked_set.add(seq)
                self._acked.append(seq)
        if len(self._acked) >= ACK_BATCH:
            self._wake_committer.set()
        elif self._acked and self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY_S, self._wake_committer.set)

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after each commit that added messages (the uplink's wake-up)."""
        self._on_commit.append(callback)

    def on_replaced(self, callback: Callable[[], None]) -> None:
        """``callback()`` when a damaged store was replaced while running (its seqs are no one's now)."""
        self._on_replaced.append(callback)

    def on_recovered(self, callback: Callable[[], None]) -> None:
        """``callback()`` once the salvage of a damaged store this one replaced is done."""
        self._on_recovered.append(callback)

    def on_evict(self, callback: Callable[[list[tuple[int, int]]], None]) -> None:
        self._on_evict.append(callback)

    def request_correction(self, boot_id: str, offset: float) -> None:
        """The clock of boot ``boot_id`` is now trustworthy with ``offset`` (wall - boot clock): correct
        this boot's waiting messages in the next commit (see the module docstring)."""
        self._correction = (boot_id, offset)
        self._urgent.set()
        self._wake_committer.set()

    def note_sent(self, msg: StoredMessage) -> None:
        """The uplink published ``msg`` as it is stored: remember with which offset, so a later correction
        of its boot can tell the cloud (a ``time-correction``). Kept with the next commit."""
        if msg.boot_id is None or msg.boot_s is None or msg.clock is ClockState.DEVICE:
            return
        offset = msg.captured_at - msg.boot_s
        for g in self._sent:
            if g.boot_id == msg.boot_id and abs(g.offset - offset) <= STEP_THRESHOLD_S:
                g.first, g.last, g.count = min(g.first, msg.seq), max(g.last, msg.seq), g.count + 1
                break
        else:
            self._sent.append(_SentGroup(msg.boot_id, offset, msg.seq, msg.seq, 1))
        self._sent_dirty = True
        done = self._corrected.get(msg.boot_id)
        if done is not None and abs(done - offset) > STEP_THRESHOLD_S:
            # fetched before the correction, sent after it: one more time-correction covers it
            self.request_correction(msg.boot_id, done)

    # -- the committer task ------------------------------------------------------------------

    async def run(self) -> None:
        """(With ``open_in_run``: open the store first.) Group commits, and the salvage of a damaged
        store this one replaced (if it is not done). Raises :class:`OutboxError` if the store cannot be
        opened (what was submitted meanwhile fails with it)."""
        self._start_open()
        await self.opened()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._salvage_due = False
                for rec in (*self.earlier, self.recovery):
                    if rec is not None and not rec.done:
                        tg.create_task(self._salvage(rec), name="outbox salvage")
                if self.open_in_run:
                    tg.create_task(self._integrity_check(), name="outbox integrity check")
                await self._committer()
        finally:
            self._tg = None

    async def _committer(self) -> None:
        """Wait for work, then for the rest of the window (or not, for an alert), and commit."""
        while True:
            await self._wake_committer.wait()
            if not self._urgent.is_set():
                try:
                    async with asyncio.timeout(self.commit_interval_s):
                        await self._urgent.wait()
                except TimeoutError:
                    pass
            try:
                await self._flush()
            except Exception as exc:  # noqa: BLE001 - the committer never stops (the SOS path): a bug, counted
                self.bugs.report(log, "outbox", exc, "flush failed")
                await asyncio.sleep(COMMIT_RETRY_S)  # not a tight loop should it repeat

    async def _integrity_check(self) -> None:
        """(``open_in_run``) The store's ``quick_check``, on a read-only connection of its own on another
        thread, while the committer already commits: a damaged store is replaced as one found damaged
        while running, if it is still the store in use (a commit may have met the damage first). Never
        raises (a check that cannot run is a WARNING: runtime damage is still caught by the reads and
        commits that meet it); cancelled (the stop), it ends within a few thousand SQLite steps."""
        stream = self.stream
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            log.warning("outbox: the integrity check of %s could not start: %s", self.path, exc)
            return
        # set by the stop, and by a replacement of the store meanwhile (the verdict would be moot, and
        # the check's connection kept the salvage from opening the file: SQLITE_IOERR_SHORT_READ)
        stop = self._check_stop
        db.set_progress_handler(lambda: int(stop.is_set()), 1000)  # non-zero: SQLite interrupts the check
        verdict: str | None = None
        try:
            check = asyncio.get_running_loop().run_in_executor(None, _quick_check, db)
            try:
                verdict = await asyncio.shield(check)
            except asyncio.CancelledError:
                stop.set()
                with contextlib.suppress(sqlite3.Error):
                    await check
                raise
        except sqlite3.Error as exc:
            if _is_damage(exc):
                verdict = str(exc)
            else:
                log.warning("outbox: the integrity check of %s failed to run: %s", self.path, exc)
        finally:
            db.close()
        if verdict is not None and verdict != "ok":
            damage = _Damaged(f"it failed its integrity check: {verdict[:300]}")
            await self._call(self._replace_if_current, stream, damage)

    def _replace_if_current(self, stream: str, exc: _Damaged) -> None:
        """(Worker thread.) The check's verdict, on the store it checked only."""
        if self._db is not None and self.stream == stream:
            self._replace_while_running(exc)
        else:
            log.info("outbox: the integrity check's store %s was replaced already", stream)

    # -- a damaged store's messages, again (module docstring, "Damaged store") -------------------

    async def _salvage(self, rec: Recovery) -> None:
        """Read the damaged store back and commit its messages again: alerts first, then the rest in seq
        order, a batch at a time, each committed before the next is read (an SOS in between waits for
        one batch at most); the record is saved after each batch. Never raises: a bug is counted."""
        store: DamagedStore | None = None
        try:
            store = await self._open_damaged(rec)
            if store is None:
                rec.error = "the damaged file is gone"
            elif store.db is None:  # not a database any more: every seq it may have held is lost
                rec.error = "nothing of it can be read"
                if rec.old_last_seq:
                    rec.note_unreadable([(1, rec.old_last_seq)])
            else:
                await self._salvage_from(store, rec)
        except Exception as exc:  # noqa: BLE001 - the salvage is best effort; the committer goes on
            self.bugs.report(log, "outbox", exc, "salvage of the damaged store failed")
            rec.error = f"internal error: {type(exc).__name__}"
        finally:
            if store is not None:
                await self._call(store.close)
        if self.recovery is not rec and not any(r is rec for r in self.earlier):
            return  # not this store's (a bug: every unfinished record is carried on)
        rec.done = True
        self.earlier = [r for r in self.earlier if r is not rec]
        await self._call(self._save_recovery)
        for cb in self._on_recovered:
            cb()
        lost = sum(b - a + 1 for a, b in rec.unreadable or [])
        log.warning(
            "outbox: salvage of %s done: %d messages sent again in the new stream, %d seqs unreadable, "
            "%d rows not messages, %d refused%s",
            rec.aside,
            rec.salvaged,
            lost,
            rec.invalid,
            rec.refused,
            f" ({rec.error})" if rec.error else "",
        )

    async def _open_damaged(self, rec: Recovery) -> DamagedStore | None:
        """The damaged file, read-only (None: it is gone); tried again, with a backoff up to
        :data:`SALVAGE_RETRY_CAP_S`, for as long as it cannot be opened for a reason that is not its
        damage (its record says why meanwhile; a stop leaves it for the next start)."""
        delay = SALVAGE_RETRY_S
        while True:
            try:
                store = await self._call(_open_damaged, Path(rec.aside))
            except StoreUnavailable as exc:
                level = logging.WARNING if delay == SALVAGE_RETRY_S else logging.DEBUG  # the first try's
                log.log(
                    level,
                    "outbox: salvage waits (tried again in %.1f s, then at most every %g s): %s",
                    delay,
                    SALVAGE_RETRY_CAP_S,
                    exc,
                )
                rec.error = str(exc)
                await asyncio.sleep(delay)
                delay = min(2 * delay, SALVAGE_RETRY_CAP_S)
                continue
            rec.error = None
            return store

    async def _salvage_from(self, store: DamagedStore, rec: Recovery) -> None:
        if not rec.started:
            alerts = await self._call(store.alerts)
            if alerts:
                await self._resubmit(alerts, rec)
            rec.alert_seqs = [r.seq for r in alerts or []]
            rec.started = True
            await self._call(self._save_recovery)
        invalid, unreadable = rec.invalid, list(rec.unreadable or [])
        done = set(rec.alert_seqs or [])  # the alerts the index gave (a stale index may miss some)
        cursor: int | None = rec.cursor
        while cursor is not None:
            rows, cursor = await self._call(store.rows_after, cursor)
            await self._resubmit([r for r in rows if r.seq not in done], rec)
            rec.cursor = cursor if cursor is not None else rec.cursor
            rec.invalid = invalid + store.invalid
            rec.unreadable = unreadable
            rec.note_unreadable(store.unreadable)
            await self._call(self._save_recovery)

    async def _resubmit(self, rows: list[SalvagedRow], rec: Recovery) -> None:
        """Commit ``rows`` in the new store as they were (times, clock state, boot), with new seqs."""
        if not rows:
            return
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[int]] = []
        for r in rows:
            clock = ClockState(r.clock)
            m = NewMessage(
                Lane(r.lane), r.topic, r.body, r.device, r.captured, r.retain, device_clock=clock is ClockState.DEVICE
            )
            fut: asyncio.Future[int] = loop.create_future()
            self._pending.append(_Pending(m, fut, r.boot, r.mono, clock, r.shift))
            futures.append(fut)
            if m.lane is Lane.ALERT:
                self._urgent.set()
        self._wake_committer.set()
        results = await asyncio.gather(*futures, return_exceptions=True)
        ok = sum(isinstance(x, int) for x in results)
        rec.salvaged += ok
        rec.refused += len(results) - ok

    async def _flush(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        self._wake_committer.clear()
        self._urgent.clear()
        pending, self._pending = self._pending, []
        acked, self._acked = self._acked, []
        if pending or acked or self._sent_dirty:
            await self._commit_pending(pending, acked)
        correction, self._correction = self._correction, None
        if correction is not None:
            # Messages submitted while that commit ran may be stamped before the clock event that asked
            # for this correction (still unsynced): on disk first, or the correction would miss them.
            # Whatever is submitted from here on was stamped after it.
            late, self._pending = self._pending, []
            if late:
                await self._commit_pending(late, [])
            await self._commit_correction(*correction)

    async def _commit_pending(self, pending: list[_Pending], acked: list[int]) -> None:
        sent = self._sent_json()
        stamped: list[_Stamped] = [(p.msg, p.boot_id, p.boot_s, p.clock, p.shift) for p in pending]
        try:
            try:
                seqs, evicted = await self._call(self._commit, stamped, acked, sent, None)
            except DiskFull:
                # Released the reserve and stopped growing: the same commit once more, at once.
                await self._call(self._on_disk_full)
                seqs, evicted = await self._call(self._commit, stamped, acked, sent, None)
        except Exception as exc:  # noqa: BLE001 - a bug here must not end the committer, nor the daemon
            if not isinstance(exc, OutboxError):
                self.bugs.report(log, "outbox", exc, "commit failed")
                exc = OutboxError(f"{self.path}: commit failed: internal error: {type(exc).__name__}")
            # The store failed (disk full, I/O error, a bug): these messages are NOT accepted, except the
            # alerts, kept here and tried again every COMMIT_RETRY_S (their future waits). The other
            # submitters learn it through the future; acked seqs are retried with the next commit.
            self._acked = acked + self._acked
            self._sent_dirty = True
            room = MAX_RETRIED_ALERTS - sum(p.msg.lane is Lane.ALERT for p in self._pending)
            retry = [p for p in pending if p.msg.lane is Lane.ALERT and not p.future.done()][: max(0, room)]
            for p in pending:
                if p not in retry and not p.future.done():
                    p.future.set_exception(exc)
            self._pending = retry + self._pending
            if retry and self._retry is None:
                self._retry = asyncio.get_running_loop().call_later(COMMIT_RETRY_S, self._retry_now)
            self.counters.commit_failures += 1
            level = logging.DEBUG if self._failing else logging.ERROR
            log.log(
                level,
                "outbox commit of %d messages failed (%d alerts kept for retry): %s",
                len(pending),
                len(retry),
                exc,
            )
            self._failing = True
            return
        if self._failing:
            self._failing = False
            log.warning("outbox: commits succeed again (%d failed meanwhile)", self.counters.commit_failures)
        for seq in acked:
            self._acked_set.discard(seq)
        for p, seq in zip(pending, seqs, strict=True):
            if not p.future.done():
                p.future.set_result(seq)
        self._committed(bool(pending), evicted)

    def _retry_now(self) -> None:
        self._retry = None
        self._urgent.set()
        self._wake_committer.set()

    def _on_disk_full(self) -> None:
        self._release_reserve()
        self._set_disk_low(True, None)
        self._disk_checked = time.monotonic()

    def _committed(self, added: bool, evicted: list[tuple[int, int]]) -> None:
        if added:
            for wake in self._on_commit:
                wake()
        if evicted:
            for cb in self._on_evict:
                cb(evicted)

    async def _commit_correction(self, boot_id: str, offset: float) -> None:
        """Correct this boot's waiting messages and commit a time-correction per group of its messages
        already sent with another offset, in one transaction."""
        taken = [g for g in self._sent if g.boot_id == boot_id]
        self._sent = [g for g in self._sent if g.boot_id != boot_id]
        self._sent_dirty = True
        corrections = [
            TimeCorrection(g.boot_id, round(offset - g.offset, 3), g.first, g.last, g.count)
            for g in taken
            if abs(offset - g.offset) > CORRECT_TOLERANCE_S
        ]
        assert self.timebase is not None
        stamped: list[_Stamped] = []
        for tc in corrections:
            if self.time_correction is not None:
                m = self.time_correction(tc)
                st = self.timebase.stamp(m.captured_at)
                stamped.append((m, st.boot_id, st.boot_s, st.state, 0.0))
        before = self.corrected_total
        try:
            # A long outage leaves many waiting messages: corrected CORRECTION_CHUNK seqs per transaction,
            # what was submitted meanwhile (an SOS) committed between two, so it never waits for them all.
            # Each chunk is idempotent (a corrected row is not moved again), so a failure retries them all.
            lo = await self._call(self._first_seq) - 1
            while self.next_seq - 1 - lo > CORRECTION_CHUNK:
                await self._call(self._correct_chunk, boot_id, offset, lo, lo + CORRECTION_CHUNK)
                lo += CORRECTION_CHUNK
                if self._pending:
                    late, self._pending = self._pending, []
                    await self._commit_pending(late, [])
            _seqs, evicted = await self._call(self._commit, stamped, [], self._sent_json(), (boot_id, offset, lo))
        except OutboxError as exc:
            self._sent = taken + self._sent
            if self._correction is None:
                self._correction = (boot_id, offset)  # retried with the next commit
            log.error("outbox: clock correction failed (retried with the next commit): %s", exc)
            return
        log.info(
            "outbox: clock correction: %d waiting messages corrected, %d time-corrections for sent ones",
            self.corrected_total - before,
            len(stamped),
        )
        self._corrected[boot_id] = offset
        self.time_corrections = (self.time_corrections + corrections)[-16:]
        self._committed(bool(stamped), evicted)
        if any(g.boot_id == boot_id and abs(g.offset - offset) > STEP_THRESHOLD_S for g in self._sent):
            # sent while the transaction ran (the uplink fetched them before it): as note_sent does after
            # it, one more time-correction covers them; otherwise nothing would ever tell the cloud
            self.request_correction(boot_id, offset)

    def _first_seq(self) -> int:
        db = self._db
        assert db is not None
        return int(db.execute("SELECT COALESCE(MIN(seq), ?) FROM msg", (self.next_seq,)).fetchone()[0])

    def _correct_chunk(self, boot_id: str, offset: float, lo: int, hi: int) -> None:
        """One transaction of a correction: this boot's waiting messages with lo < seq <= hi."""
        db = self._db
        assert db is not None
        try:
            db.execute("BEGIN IMMEDIATE")
            n = self._correct(db, boot_id, offset, lo, hi)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise OutboxError(f"{self.path}: clock correction failed: {exc}") from exc
        self.corrected_total += n
        if self.timebase is not None:
            self.timebase.corrected_messages += n

    def _sent_json(self) -> str | None:
        if not self._sent_dirty:
            return None
        self._sent_dirty = False
        return json.dumps([[g.boot_id, g.offset, g.first, g.last, g.count] for g in self._sent])

    def _commit(
        self,
        stamped: Sequence[_Stamped],
        acked: Sequence[int],
        sent: str | None,
        correction: tuple[str, float, int] | None,  # boot id, offset, the seq after which to correct
    ) -> tuple[list[int], list[tuple[int, int]]]:
        db = self._db
        assert db is not None
        first = self.next_seq
        rows = []
        added = 0
        lane_add = [0, 0, 0, 0]
        dev_add: dict[tuple[int, str], int] = {}
        for i, (m, boot_id, boot_s, clock, shift) in enumerate(stamped):
            size = len(m.body) + len(m.topic) + ROW_OVERHEAD_BYTES
            added += size
            lane_add[m.lane] += 1
            key = (int(m.lane), m.device_id)
            dev_add[key] = dev_add.get(key, 0) + 1
            rows.append(
                (
                    first + i,
                    int(m.lane),
                    m.device_id,
                    m.topic,
                    m.body,
                    m.captured_at,
                    int(m.retain),
                    size,
                    boot_id,
                    boot_s,
                    int(clock),
                    shift,
                )
            )
        next_seq = first + len(rows)
        deleted: list[tuple[int, int, str]] = []
        n_corrected = 0
        self._check_disk()
        # Disk nearly full: no growth (new messages evict the oldest observations, as over budget).
        budget = min(self.max_bytes, self.bytes) if self.disk_low else self.max_bytes
        try:
            db.execute("BEGIN IMMEDIATE")
            if rows:
                db.executemany("INSERT INTO msg VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
                db.execute("INSERT OR REPLACE INTO meta VALUES ('next_seq', ?)", (next_seq,))
            if acked:
                deleted = db.execute(
                    f"DELETE FROM msg WHERE seq IN ({','.join('?' * len(acked))}) RETURNING lane, size, device",
                    acked,
                ).fetchall()
            if correction is not None:
                n_corrected = self._correct(db, *correction)
            if sent is not None:
                db.execute("INSERT OR REPLACE INTO info VALUES ('sent', ?)", (sent,))
            evicted, evicted_rows = self._evict_over_budget(db, self.bytes + added - sum(r[1] for r in deleted), budget)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # a full disk may refuse even that
                    db.execute("ROLLBACK")
            if exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
                raise DiskFull(f"{self.path}: commit failed: {exc}") from exc
            raise OutboxError(f"{self.path}: commit failed: {exc}") from exc
        # Only now, after COMMIT, does the in-memory picture change.
        if correction is not None:
            self.corrected_total += n_corrected
            if self.timebase is not None:
                self.timebase.corrections += 1
                self.timebase.corrected_messages += n_corrected
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

    @staticmethod
    def _correct(db: sqlite3.Connection, boot_id: str, offset: float, lo: int, hi: int | None = None) -> int:
        """Waiting messages of this boot (lo < seq <= hi): captured_at from their boot-clock time plus the
        true offset."""
        cur = db.execute(
            "UPDATE msg SET shift = shift + (mono + :off - captured), captured = mono + :off, clock = :corrected "
            "WHERE seq > :lo AND seq <= :hi AND boot = :boot AND clock != :device AND mono IS NOT NULL "
            "AND (abs(mono + :off - captured) > :tol OR clock = :unsynced)",
            {
                "lo": lo,
                "hi": (1 << 62) if hi is None else hi,
                "off": offset,
                "boot": boot_id,
                "tol": CORRECT_TOLERANCE_S,
                "corrected": int(ClockState.CORRECTED),
                "device": int(ClockState.DEVICE),
                "unsynced": int(ClockState.UNSYNCED),
            },
        )
        return int(cur.rowcount)

    def _evict_over_budget(
        self, db: sqlite3.Connection, projected: int, budget: int
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int, str]]]:
        """Delete the oldest messages of the lowest lanes until under budget. Never alerts."""
        ranges: list[tuple[int, int]] = []
        rows_out: list[tuple[int, int, str]] = []
        if projected <= budget:
            return ranges, rows_out
        excess = projected - budget
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
            if budget < self.max_bytes:  # the disk is nearly full: every commit evicts, said once (DEBUG)
                log.debug("outbox: disk nearly full: evicted %d messages", len(rows_out))
            else:
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
        self.counters.fetches += 1
        if device is None:
            return self._select(lane, "AND seq > ? ORDER BY seq LIMIT ?", after_seq, limit)
        return self._select(lane, "AND device = ? AND seq > ? ORDER BY seq LIMIT ?", device, after_seq, limit)

    def _select(self, lane: int, where: str, *args: object) -> list[StoredMessage]:
        """The messages of ``lane`` that the rest of the query (``where``, with ``args``) selects."""
        db = self._db
        assert db is not None
        cursor = db.execute(
            "SELECT seq, topic, body, device, captured, retain, clock, boot, mono, shift FROM msg WHERE lane = ? "
            + where,
            (lane, *args),
        )
        stream = self.stream
        return [
            StoredMessage(
                seq, Lane(lane), topic, body, dev, captured, bool(retain), ClockState(clock), boot, mono, shift, stream
            )
            for seq, topic, body, dev, captured, retain, clock, boot, mono, shift in cursor
        ]

    def age_s(self, msg: StoredMessage, now_wall: float) -> float:
        """How long ago ``msg`` was captured (:func:`message_age_s`)."""
        tb = self.timebase
        if tb is None:
            return now_wall - msg.captured_at
        return message_age_s(msg, now_wall=now_wall, boot_id=tb.boot_id, boot_s=tb.boot())

    async def stats(self) -> OutboxStats:
        oldest = await self._call(self._oldest)
        now = self.timebase.wall() if self.timebase is not None else time.time()
        return OutboxStats(
            depth={lane.name.lower(): self.depth[lane] for lane in Lane},
            oldest_age_s={
                lane.name.lower(): None if m is None else self.age_s(m, now)
                for lane, m in zip(Lane, oldest, strict=True)
            },
            bytes=self.bytes,
            max_bytes=self.max_bytes,
            next_seq=self.next_seq,
            evicted_total=self.counters.evicted_total,
            evicted_ranges=list(self.evicted_ranges),
            commits=self.counters.commits,
            stream=self.stream,
            stream_first_seq=self.stream_first_seq,
        )

    def _oldest(self) -> list[StoredMessage | None]:
        """The oldest message of each lane (by seq), in :class:`Lane` order."""
        return [next(iter(self._select(int(lane), "ORDER BY seq LIMIT 1")), None) for lane in Lane]

    def depth_total(self) -> int:
        return sum(self.depth)

    def alerts_retrying(self) -> int:
        """Alerts whose commit failed, kept in memory and tried again every COMMIT_RETRY_S."""
        return sum(p.msg.lane is Lane.ALERT for p in self._pending) if self._failing else 0


class Captured(Protocol):
    """What :func:`message_age_s` reads of a message: a :class:`StoredMessage`, or a row of the store."""

    @property
    def captured_at(self) -> float: ...
    @property
    def clock(self) -> ClockState: ...
    @property
    def boot_id(self) -> str | None: ...
    @property
    def boot_s(self) -> float | None: ...


class _CaptureRow(NamedTuple):
    """The time columns of a stored message (:func:`read_summary`)."""

    captured_at: float
    clock: ClockState
    boot_id: str | None
    boot_s: float | None


def message_age_s(msg: Captured, *, now_wall: float, boot_id: str, boot_s: float) -> float:
    """How long ago ``msg`` was captured, now (``now_wall``, ``boot_s`` on the boot clock of boot
    ``boot_id``): on the boot clock for this boot's messages (a step of the wall clock does not make them
    historical, nor hours old in a status), else on the wall clock (a device's own clock, another boot).
    An empty ``boot_id`` (a system without one) cannot tell this boot from another: the wall clock."""
    if not boot_id or msg.boot_id != boot_id or msg.boot_s is None or msg.clock is ClockState.DEVICE:
        return now_wall - msg.captured_at
    return boot_s - msg.boot_s


def read_summary(path: Path, *, timeout_s: float = 5.0, integrity: bool = False) -> dict[str, Any]:
    """Depth and oldest age per lane (:func:`message_age_s`, of the lane's first message as the daemon's
    status gives them), bytes, last seq, evictions and the age of each device's latest message
    (``last_age_s``) of a store file, read-only while the daemon may be writing it or is not running
    (``gatewayctl outbox``, ``gatewayctl doctor``); ``integrity``: add SQLite's ``quick_check`` verdict."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout_s)
    try:
        out: dict[str, Any] = {"integrity": str(db.execute("PRAGMA quick_check").fetchone()[0])} if integrity else {}
        now_wall, now_boot, boot_id = time.time(), boottime(), read_boot_id()
        # A store of schema 1 (not opened by the daemon since the upgrade) has no time columns: its times
        # are the wall clock's
        cols = {row[1] for row in db.execute("PRAGMA table_info(msg)")}
        times = ", ".join(c if c in cols else null for c, null in (("clock", "0"), ("boot", "NULL"), ("mono", "NULL")))

        def age(captured: float, clock: int, boot: str | None, mono: float | None) -> float:
            row = _CaptureRow(float(captured), ClockState(clock), boot, mono)
            return round(message_age_s(row, now_wall=now_wall, boot_id=boot_id, boot_s=now_boot), 1)

        depth = {lane.name.lower(): 0 for lane in Lane}
        oldest: dict[str, float | None] = dict.fromkeys(depth)
        size = 0
        # SQLite gives the bare columns of the row holding the one MIN() or MAX(): a lane's first message
        for lane, n, total, _seq, *first in db.execute(
            f"SELECT lane, COUNT(*), SUM(size), MIN(seq), captured, {times} FROM msg GROUP BY lane"
        ):
            name = Lane(lane).name.lower()
            depth[name], oldest[name] = int(n), age(*first)
            size += int(total)
        last_age = {
            str(dev): age(*last)
            for dev, _seq, *last in db.execute(f"SELECT device, MAX(seq), captured, {times} FROM msg GROUP BY device")
        }
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        ranges = [[int(a), int(b)] for a, b in db.execute("SELECT first, last FROM evicted ORDER BY first")]
        out["recovered"] = None  # the damaged store this one replaced, and its salvage
        with contextlib.suppress(sqlite3.Error, ValueError):  # a store of schema 1 has no info table
            row = db.execute("SELECT value FROM info WHERE key = 'recovery'").fetchone()
            if row is not None:
                rec = Recovery.from_json(row[0])
                out["recovered"] = rec.detail()
        return out | {
            "depth": depth,
            "oldest_age_s": oldest,
            "bytes": size,
            "last_seq": int(meta.get("next_seq", 1)) - 1,
            "evicted_total": int(meta.get("evicted_total", 0)),
            "evicted_ranges": ranges,
            "last_age_s": last_age,
        }
    finally:
        db.close()


def _quick_check(db: sqlite3.Connection) -> str:
    return str(db.execute("PRAGMA quick_check").fetchone()[0])


def _open_damaged(path: Path) -> DamagedStore | None:
    return DamagedStore(path) if path.exists() else None


def _sent_groups(text: str) -> list[_SentGroup]:
    """The stored groups of sent messages; unreadable ones are dropped with a WARNING (their messages
    then get no time-correction, as sends of an earlier boot do not)."""
    try:
        rows = json.loads(text)
        return [_SentGroup(str(b), float(o), int(f), int(la), int(c)) for b, o, f, la, c in rows]
    except (TypeError, ValueError) as exc:
        log.warning("outbox: the record of sent messages is not readable, dropped: %s", exc)
        return []


def _runs(seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous runs of a sorted list of ints: [1,2,3,7,8] -> [(1,3),(7,8)]."""
    out: list[tuple[int, int]] = []
    for s in seqs:
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def wire_payload(msg: StoredMessage, historical: bool, body: bytes | None = None) -> bytes:
    """The bytes sent: the stored JSON body (or ``body``, the corrected one) with ``seq``,
    ``historical``, ``clock`` and ``stream`` (of the store the message was read from) added."""
    # Bodies are built by gateway.messages and always hold at least msg_id, so never "{}".
    b = msg.body if body is None else body
    return b[:-1] + b',"seq":%d,"historical":%s,"clock":"%s","stream":"%s"}' % (
        msg.seq,
        b"true" if historical else b"false",
        msg.clock.wire.encode(),
        msg.stream.encode(),
    )
