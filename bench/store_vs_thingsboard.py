"""The outbox against ThingsBoard IoT Gateway 3.8.5's SQLite storage, on one put -> get -> delete workload.

    .venv/bin/python bench/store_vs_thingsboard.py [--quick] [--messages N] [--runs R] [--dir PARENT]

Needs the ``bench`` extra's ``thingsboard-gateway==3.8.5`` (exit code 2 with a message when missing).

**Workload** (identical for both, same process, same payloads): N observations (default 100,000;
``--quick``: 10,000) of 320 bytes of JSON each (a blood-pressure observation as
``gateway.messages.observation`` builds it; ThingsBoard's storage gets the same JSON text), then

1. *put*: in batches of 1,000 (``--batch``), the way each gateway feeds its store: ours
   ``Outbox.submit`` without waiting between batches (as ``gateway.pipeline`` does), theirs
   ``SQLiteEventStorage.put`` one message at a time (as ``TBGatewayService`` does). The phase ends
   when every put is *acknowledged*: ours when every future has resolved (committed and fsynced),
   theirs when the last ``put()`` has returned ``True``.
2. *get + delete*: read packs and delete each after its "delivery" (counting it), until every
   message has been delivered and the store is empty. Each side in its own normal mode: ours
   ``fetch(OBSERVATION, cursor, 200)`` (the uplink's default in-flight window) then ``ack(seqs)``
   (deleted by the next group commit); theirs ``get_event_pack()`` (``max_read_records_count``
   1,000, its default) then ``event_pack_processing_done()`` (deletes and commits at once). When
   theirs has nothing to read yet (its writer thread is behind), we poll every 1 ms, not its
   gateway's ``minPackSendDelayMS`` of 50 ms, which only favours it.

``ops/s = N / (time from the first put to the moment the last delete is committed)``: one operation
is one message's whole put -> get -> delete cycle, counted the same way for both. Each side runs
``--runs`` times (default 5), alternating which goes first, each on a fresh store that idles a random
0.2-0.4 s before the clock starts (work then arrives at a random point of their writer thread's idle
sleep, as in a running gateway); the medians are compared. Deliveries of a message already delivered
are counted as duplicates (theirs produces some: a prefetched pack can be handed out again after its
deletion).
``RESULT ratio`` is ours / theirs.

**Durability at acknowledgement**, checked by this script, not assumed:

- *Ours*: ``submit()``'s future resolves after ``COMMIT`` on a connection with
  ``journal_mode=WAL, synchronous=FULL``: SQLite fsyncs the WAL at every commit. The script kills a
  child process (``os._exit``) the instant its last future resolves and counts the rows left on
  disk, reads ``PRAGMA synchronous`` off the live connection, and (when ``strace`` is available)
  counts the child's fsync/fdatasync calls.
- *Theirs*: ``put()`` only appends to an in-memory ``queue.Queue``; a ``Database`` thread later
  takes up to ``writing_batch_size`` messages (waiting up to 100 ms to fill a batch) and commits
  on a connection with ``synchronous=NORMAL``, which in WAL mode does not fsync at commit (only at
  checkpoints): even committed rows can be lost at a power cut. The same kill test shows how many
  acknowledged messages a process crash loses.

**Two more facts measured** (``thingsboard_gateway/storage/sqlite/database.py``, 3.8.5):

- *Full store drops new data*: with ``size_limit`` 1 MB and ``max_db_amount`` 2 (and the size
  check period shortened to 1 s through ``StorageSettings(..., enable_validation=False)``, else it
  is at least a minute), ``put()`` returns ``False`` once two files are full: new messages, an SOS
  alert included, are refused while the oldest stay (its gateway retries 4 times, then logs an
  error and drops). Ours evicts the oldest of the lowest lane and never evicts an alert.
- *TTL purge*: rows are written with ``timestamp = int(time() * 1000)`` (ms) but
  ``delete_data_lte`` deletes ``timestamp <= now - days`` in *seconds*, so rows 30 days old are
  not deleted; a control with the same rows' timestamps in seconds is deleted, which shows the
  purge ran. Its schedule test (``now - last >= last + period``, in ms) passes once per thread
  start: with a 1 s period, old (seconds-unit) rows inserted while it runs are never purged.

Temporary files go under a fresh temporary directory (``--dir`` sets its parent), removed at exit.
Ends with ``RESULT ratio=... ours_ops_s=... theirs_ops_s=... ours_durable_at_ack=1
theirs_durable_at_ack=0|1``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import result_line
from drivers.base import ButtonPress, Measurement
from gateway.errors import OutboxError
from gateway.messages import Topics, observation, sos_alert
from gateway.outbox import Lane, NewMessage, Outbox

TB_VERSION = "3.8.5"
GW = "gw-bench"
OUR_PACK = 200  # gateway.config: inflight_window default
THEIR_PACK = 1000  # StorageSettings: max_read_records_count default
THEIR_POLL_S = 0.001  # nothing to read yet: poll again after (its gateway waits minPackSendDelayMS, 50 ms)
STALL_S = 30.0  # no progress for this long: give up on a run (a store lost messages)


# -- payloads --------------------------------------------------------------------------------


def make_messages(n: int, start: int = 0) -> list[NewMessage]:
    """N blood-pressure observations (~300 bytes of JSON each), all distinct (numbered from ``start``)."""
    topics = Topics("homecare/v1", GW)
    t0 = 1_760_000_000.0
    return [
        observation(
            topics,
            Measurement(
                f"bp-cuff-{i % 4}",
                "8480-6",
                float(110 + i % 50),
                "mm[Hg]",
                t0 + i * 0.5,
                quality=0.95,
                extra={"irregular_pulse": i % 17 == 0, "cuff_record": i, "arm": "left", "posture": "sitting"},
                source_id=str(i),
            ),
        )
        for i in range(start, start + n)
    ]


def sos_message() -> NewMessage:
    return sos_alert(Topics("homecare/v1", GW), ButtonPress("sos-button-1", time.time(), "press-1"), drill=False)


# -- ThingsBoard's storage, used through its public class as its gateway does ----------------------


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


def load_thingsboard() -> SimpleNamespace | None:
    """Their storage classes and a logger like the one their gateway passes (a TbLogger: the storage
    calls ``log.trace``), or None when the package is missing."""
    try:
        from importlib.metadata import version

        from thingsboard_gateway.storage.sqlite.database import Database
        from thingsboard_gateway.storage.sqlite.sqlite_event_storage import SQLiteEventStorage
        from thingsboard_gateway.storage.sqlite.storage_settings import StorageSettings
        from thingsboard_gateway.tb_utility.tb_logger import TbLogger
    except ImportError:
        return None
    logging.setLoggerClass(logging.Logger)  # their tb_logger module makes TbLogger the default class
    log = TbLogger("storage")
    log.setLevel(logging.WARNING)
    log.propagate = False
    counter = _Counter()
    log.addHandler(counter)
    return SimpleNamespace(
        SQLiteEventStorage=SQLiteEventStorage,
        StorageSettings=StorageSettings,
        Database=Database,
        log=log,
        warnings=counter.records,
        version=version("thingsboard-gateway"),
    )


def tb_config(data_dir: Path, **overrides: Any) -> dict[str, Any]:
    """Their gateway's storage section (type sqlite); defaults as StorageSettings has them."""
    cfg: dict[str, Any] = {
        "type": "sqlite",
        "data_file_path": str(data_dir) + "/",
        "messages_ttl_check_in_hours": 1,
        "messages_ttl_in_days": 7,
        "max_read_records_count": THEIR_PACK,
        "writing_batch_size": 1000,
        "size_limit": 1024,
        "max_db_amount": 10,
        "oversize_check_period": 1,
    }
    cfg.update(overrides)
    return cfg


def tb_open(tb: SimpleNamespace, config: Any) -> Any:
    return tb.SQLiteEventStorage(config, tb.log, threading.Event())


def tb_close(tb: SimpleNamespace, storage: Any) -> None:
    with contextlib.suppress(AttributeError):  # stop() fails when it has no write database left
        storage.stop()
    for t in threading.enumerate():
        if isinstance(t, tb.Database):
            t.join(timeout=5)


def tb_rows(data_dir: Path, where: str = "1", args: tuple[Any, ...] = ()) -> int:
    """Rows on disk in all their database files, through a separate connection."""
    total = 0
    for f in sorted(data_dir.glob("*.db")):
        con = sqlite3.connect(f)
        try:
            total += con.execute(f"SELECT COUNT(*) FROM messages WHERE {where}", args).fetchone()[0]
        except sqlite3.OperationalError:
            pass  # no table yet
        finally:
            con.close()
    return total


def tb_writer_db(storage: Any) -> Any:
    return storage._SQLiteEventStorage__write_database  # name-mangled private attribute, read only


def wait_until(cond: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


# -- one timed run per side ----------------------------------------------------------------------


@dataclass
class Run:
    put_s: float
    total_s: float
    delivered: int  # distinct messages delivered
    duplicates: int  # deliveries of a message already delivered
    rejected: int

    def ops_s(self, n: int) -> float:
        return n / self.total_s


async def _ours(msgs: list[NewMessage], path: Path, batch: int, pack: int, settle_s: float) -> Run:
    n = len(msgs)
    async with Outbox(path, commit_interval_ms=50) as ob:
        runner = asyncio.create_task(ob.run())
        gc.collect()
        await asyncio.sleep(settle_s)
        t0 = time.perf_counter()
        futs: list[asyncio.Future[int]] = []
        for i in range(0, n, batch):
            futs.extend(ob.submit(m) for m in msgs[i : i + batch])
            await asyncio.sleep(0)
        for fut in futs:  # acknowledged = every future resolved (they resolve in commit order)
            if not fut.done():
                with contextlib.suppress(OutboxError):
                    await fut
        t_put = time.perf_counter()
        rejected = sum(1 for fut in futs if fut.exception() is not None)
        cursor = 0
        seen: set[int] = set()
        deliveries = 0
        last_progress = time.monotonic()
        while len(seen) < n - rejected or ob.depth_total() > 0:
            rows = await ob.fetch(Lane.OBSERVATION, cursor, pack)
            if rows:
                deliveries += len(rows)  # "delivery"
                seen.update(r.seq for r in rows)
                cursor = rows[-1].seq
                ob.ack(r.seq for r in rows)
                last_progress = time.monotonic()
            else:
                await asyncio.sleep(0.001)  # the last acks' commit
                if time.monotonic() - last_progress > STALL_S:
                    break
        t_end = time.perf_counter()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    return Run(t_put - t0, t_end - t0, len(seen), deliveries - len(seen), rejected)


def run_ours(msgs: list[NewMessage], root: Path, tag: str, batch: int, pack: int, settle_s: float) -> Run:
    d = root / f"ours-{tag}"
    try:
        return asyncio.run(_ours(msgs, d / "outbox.db", batch, pack, settle_s))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run_theirs(
    tb: SimpleNamespace, payloads: list[str], root: Path, tag: str, batch: int, pack: int, settle_s: float
) -> Run:
    d = root / f"theirs-{tag}"
    n = len(payloads)
    storage = tb_open(tb, tb_config(d, max_read_records_count=pack))
    try:
        gc.collect()
        time.sleep(settle_s)
        t0 = time.perf_counter()
        rejected = 0
        for i in range(0, n, batch):
            for p in payloads[i : i + batch]:
                if not storage.put(p):
                    rejected += 1
        t_put = time.perf_counter()
        seen: set[str] = set()
        deliveries = 0
        last_progress = time.monotonic()
        # Until all delivered; a pack's delete is committed inside event_pack_processing_done().
        while len(seen) < n - rejected:
            events = storage.get_event_pack()
            if events:
                deliveries += len(events)  # "delivery"
                seen.update(events)
                storage.event_pack_processing_done()
                last_progress = time.monotonic()
            else:
                time.sleep(THEIR_POLL_S)  # its writer thread has not committed more yet
                if time.monotonic() - last_progress > STALL_S:
                    break
        t_end = time.perf_counter()
        left = storage.len()
        if left:
            print(f"  theirs-{tag}: {left} messages left in the store after the run", flush=True)
        return Run(t_put - t0, t_end - t0, len(seen), deliveries - len(seen), rejected)
    finally:
        tb_close(tb, storage)
        shutil.rmtree(d, ignore_errors=True)


# -- durability at acknowledgement: child processes killed (os._exit) at a chosen moment -------------
# mode "ack": the instant every put is acknowledged; "committed": once every message is committed
# (theirs; for ours the two are the same moment); "idle": right after opening the store (the fsync baseline).


async def _probe_ours(d: Path, k: int, mode: str) -> None:
    async with Outbox(d / "outbox.db", commit_interval_ms=50) as ob:
        asyncio.create_task(ob.run())  # noqa: RUF006 - the process ends below
        if mode != "idle":
            futs = [ob.submit(m) for m in make_messages(k)]
            await asyncio.gather(*futs)
        print(ob.counters.commits, flush=True)
        os._exit(0)


def _probe_theirs(tb: SimpleNamespace, d: Path, k: int, mode: str) -> None:
    from thingsboard_gateway.storage.sqlite.database_connector import DatabaseConnector

    commits = [0]
    commit = DatabaseConnector.commit

    def counting_commit(self: Any) -> Any:  # counts, changes nothing
        ok = commit(self)
        commits[0] += bool(ok)
        return ok

    DatabaseConnector.commit = counting_commit
    storage = tb_open(tb, tb_config(d))
    if mode == "idle":
        time.sleep(0.5)
    else:
        payloads = [m.body.decode() for m in make_messages(k)]
        if not all(storage.put(p) for p in payloads):
            os._exit(3)
        if mode == "committed" and not wait_until(lambda: tb_rows(d) == k, 30):
            os._exit(4)
    print(commits[0], flush=True)
    os._exit(0)


def probe_child(side: str, mode: str, d: Path, k: int) -> None:
    if side == "ours":
        asyncio.run(_probe_ours(d, k, mode))
    else:
        tb = load_thingsboard()
        assert tb is not None
        _probe_theirs(tb, d, k, mode)


@dataclass
class Probe:
    rows: int  # messages on disk after the kill
    commits: int  # commits the child made
    syncs: int | None  # its fsync + fdatasync calls (None: no strace)


def crash_probe(side: str, mode: str, root: Path, k: int, strace: bool) -> Probe:
    d = root / f"probe-{side}-{mode}"
    d.mkdir()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe-child", side, mode, str(d), str(k)]
    if strace:
        cmd = ["strace", "-f", "-qq", "-c", "-e", "trace=fsync,fdatasync", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"probe {side} {mode} failed ({out.returncode}): {out.stderr[-2000:]}")
    syncs = None
    if strace:
        pattern = r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?f(?:data)?sync$"
        syncs = sum(int(m.group(1)) for m in re.finditer(pattern, out.stderr, re.M))
    if side == "ours":
        con = sqlite3.connect(d / "outbox.db")
        rows = con.execute("SELECT COUNT(*) FROM msg").fetchone()[0]
        con.close()
    else:
        rows = tb_rows(d)
    shutil.rmtree(d, ignore_errors=True)
    return Probe(rows, int(out.stdout.split()[-1]), syncs)


async def _ours_pragmas(d: Path) -> tuple[str, int]:
    async with Outbox(d / "outbox.db") as ob:
        db = ob._db  # private, read only: the live connection's settings
        assert db is not None
        return db.execute("PRAGMA journal_mode").fetchone()[0], db.execute("PRAGMA synchronous").fetchone()[0]


def their_pragmas(tb: SimpleNamespace, root: Path) -> tuple[str, int, float]:
    """journal mode, synchronous, and ms from the last put() returning to its rows being committed."""
    d = root / "pragma-theirs"
    storage = tb_open(tb, tb_config(d))
    try:
        con = tb_writer_db(storage).db.connection
        mode, sync = con.execute("PRAGMA journal_mode").fetchone()[0], con.execute("PRAGMA synchronous").fetchone()[0]
        payloads = [m.body.decode() for m in make_messages(100)]
        for p in payloads:
            storage.put(p)
        t = time.perf_counter()
        wait_until(lambda: tb_rows(d) == len(payloads), 5)
        lag_ms = (time.perf_counter() - t) * 1000
        return mode, sync, lag_ms
    finally:
        tb_close(tb, storage)


# -- their full-store and TTL behaviour ----------------------------------------------------------


async def our_full_store(root: Path) -> dict[str, Any]:
    """10,000 observations and then an SOS alert into an outbox with a 1 MB budget."""
    d = root / "full-ours"
    try:
        async with Outbox(d / "outbox.db", max_bytes=1_000_000) as ob:
            runner = asyncio.create_task(ob.run())
            futs = [ob.submit(m) for m in make_messages(10_000)]
            futs.append(ob.submit(sos_message()))
            results = await asyncio.gather(*futs, return_exceptions=True)
            alerts = await ob.fetch(Lane.ALERT, 0, 10)
            stats = await ob.stats()
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        return {
            "submitted": len(futs),
            "accepted": sum(1 for r in results if isinstance(r, int)),
            "sos_stored": sum(1 for a in alerts if a.seq == results[-1]),
            "evicted": stats.evicted_total,
            "ranges": stats.evicted_ranges,
        }
    finally:
        shutil.rmtree(d, ignore_errors=True)


def their_full_store(tb: SimpleNamespace, root: Path) -> dict[str, Any]:
    d = root / "full-theirs"
    settings = tb.StorageSettings(
        tb_config(d, size_limit=1, max_db_amount=2, oversize_check_period=1 / 60), enable_validation=False
    )
    storage = tb_open(tb, settings)
    oldest = make_messages(1)[0].body.decode()
    accepted = refused = 0
    try:
        storage.put(oldest)
        for chunk in range(40):
            for p in (m.body.decode() for m in make_messages(5000, 1 + chunk * 5000)):
                if storage.put(p):
                    accepted += 1
                else:
                    refused += 1
            if refused:
                break
            wait_until(lambda: storage.write_queue.empty(), 10)
            time.sleep(1.2)  # its size check period, shortened to 1 s
        sos = sos_message().body.decode()
        sos_ok = bool(storage.put(sos))
        time.sleep(0.3)
        return {
            "accepted": accepted + 1,
            "refused": refused,
            "sos_put": sos_ok,
            "stored": tb_rows(d),
            "sos_stored": tb_rows(d, "message = ?", (sos,)),
            "oldest_stored": tb_rows(d, "message = ?", (oldest,)),
            "files": len(list(d.glob("*.db"))),
            "bytes": sum(f.stat().st_size for f in d.iterdir()),
        }
    finally:
        tb_close(tb, storage)
        shutil.rmtree(d, ignore_errors=True)


def their_ttl(tb: SimpleNamespace, root: Path) -> dict[str, Any]:
    """Rows 30 days old against messages_ttl_in_days=7: (a) in the unit they are written (ms),
    purge at thread start; (b) control, the same rows in seconds; (c) seconds-unit rows made old
    while running with a nominal 1 s check period."""
    d = root / "ttl-theirs"
    k = 500
    month_s = 30 * 86400
    out: dict[str, Any] = {"rows": k}
    payloads = [m.body.decode() for m in make_messages(k)]
    storage = tb_open(tb, tb_config(d))
    try:
        for p in payloads:
            storage.put(p)
        wait_until(lambda: tb_rows(d) == k, 10)
    finally:
        tb_close(tb, storage)
    db = d / "data.db"

    def sql(stmt: str) -> Any:
        con = sqlite3.connect(db)
        try:
            row = con.execute(stmt).fetchone()
            con.commit()
            return row
        finally:
            con.close()

    out["stored_ts"], out["now_s"] = sql("SELECT MAX(timestamp) FROM messages")[0], time.time()
    sql(f"UPDATE messages SET timestamp = timestamp - {month_s * 1000}")  # 30 days old, in ms
    storage = tb_open(tb, tb_config(d))
    time.sleep(1.0)
    out["left_ms_unit"] = tb_rows(d)
    tb_close(tb, storage)
    sql("UPDATE messages SET timestamp = timestamp / 1000")  # the same age, in seconds
    storage = tb_open(tb, tb_config(d))
    time.sleep(1.0)
    out["left_s_unit"] = tb_rows(d)
    try:
        for p in payloads:
            storage.put(p)
        wait_until(lambda: tb_rows(d) == k, 10)
        sql(f"UPDATE messages SET timestamp = {int(time.time()) - month_s}")
    finally:
        tb_close(tb, storage)
    storage = tb_open(tb, tb_config(d, messages_ttl_check_in_hours=1 / 3600))
    try:
        time.sleep(1.0)  # the purge at thread start ran and removed the old rows; now add new ones
        for p in payloads:
            storage.put(p)
        wait_until(lambda: tb_rows(d) == k, 10)
        sql(f"UPDATE messages SET timestamp = {int(time.time()) - month_s}")
        time.sleep(3.0)  # three nominal check periods
        out["left_periodic"] = tb_rows(d)
    finally:
        tb_close(tb, storage)
        shutil.rmtree(d, ignore_errors=True)
    return out


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--quick", action="store_true", help="10,000 messages (CI)")
    p.add_argument("--runs", type=int, default=5, help="runs per side, alternated; medians compared")
    p.add_argument("--batch", type=int, default=1000, help="messages put per batch")
    p.add_argument("--our-pack", type=int, default=OUR_PACK)
    p.add_argument("--their-pack", type=int, default=THEIR_PACK)
    p.add_argument("--dir", type=Path, default=None, help="parent of the temporary directory")
    p.add_argument("--probe-child", nargs=4, metavar=("SIDE", "MODE", "DIR", "K"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe_child:
        side, mode, d, k = args.probe_child
        probe_child(side, mode, Path(d), int(k))
        return 0

    logging.basicConfig(level=logging.WARNING, format="  log: %(name)s: %(message)s")
    tb = load_thingsboard()
    if tb is None:
        print(
            f"thingsboard-gateway is not installed: `.venv/bin/pip install thingsboard-gateway=={TB_VERSION}` "
            "(the project's `bench` extra)",
            file=sys.stderr,
        )
        return 2
    if tb.version != TB_VERSION:
        print(f"warning: thingsboard-gateway {tb.version} installed; the facts below are for {TB_VERSION}")
    n = 10_000 if args.quick else args.messages
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-store-tb-", dir=args.dir))
    try:
        return _bench(tb, args, n, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _bench(tb: SimpleNamespace, args: argparse.Namespace, n: int, root: Path) -> int:
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(root)], capture_output=True, text=True, check=False)
    print(
        f"thingsboard-gateway {tb.version}, SQLite {sqlite3.sqlite_version}, {os.cpu_count()} cores, "
        f"temp dir {root} ({fs.stdout.strip() or '?'})",
        flush=True,
    )

    # Durability at acknowledgement.
    k = 2000
    ours_mode, ours_sync = asyncio.run(_ours_pragmas(root / "pragma-ours"))
    their_mode, their_sync, their_lag_ms = their_pragmas(tb, root)
    ours_kill = crash_probe("ours", "ack", root, k, False)
    their_kill = crash_probe("theirs", "ack", root, k, False)
    sync_names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    print("\ndurability at acknowledgement:")
    print(
        f"  ours:   journal_mode={ours_mode} synchronous={sync_names.get(ours_sync, ours_sync)}; process killed "
        f"the instant all {k} puts were acknowledged: {ours_kill.rows}/{k} on disk"
    )
    print(
        f"  theirs: journal_mode={their_mode} synchronous={sync_names.get(their_sync, their_sync)}; process "
        f"killed the instant all {k} puts were acknowledged: {their_kill.rows}/{k} on disk; "
        f"(100 puts returned, all committed {their_lag_ms:.0f} ms later)"
    )
    if shutil.which("strace") is None:
        print("  (no strace: fsync calls not counted)")
    else:
        try:
            syncs = {
                (side, mode): crash_probe(side, mode, root, k, True)
                for side, mode in (("ours", "idle"), ("ours", "ack"), ("theirs", "idle"), ("theirs", "committed"))
            }
            for side, mode in (("ours", "ack"), ("theirs", "committed")):
                done, idle = syncs[(side, mode)], syncs[(side, "idle")]
                assert done.syncs is not None and idle.syncs is not None
                print(
                    f"  {side + ':':7} fsync+fdatasync calls to commit {done.rows} messages, beyond opening the "
                    f"store: {done.syncs - idle.syncs} in {done.commits - idle.commits} commits"
                )
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"  (strace failed, fsync calls not counted: {str(exc)[:200]})")
    # Durable at ack: every acknowledged message survived the kill, and commits are fsynced.
    ours_durable = int(ours_kill.rows == k and ours_sync >= 2)
    theirs_durable = int(their_kill.rows == k and their_sync >= 2)

    # Full stores, and their TTL purge.
    ours_full = asyncio.run(our_full_store(root))
    print(
        f"\nours, full store (max_bytes 1 MB): {ours_full['accepted']}/{ours_full['submitted']} accepted, "
        f"SOS alert included and stored: {ours_full['sos_stored']}; {ours_full['evicted']} oldest observations "
        f"evicted and reported as seq ranges {ours_full['ranges']}"
    )
    full = their_full_store(tb, root)
    print(
        f"theirs, full store (size_limit 1 MB x max_db_amount 2): {full['accepted']} accepted, then put() "
        f"refused {full['refused']} new messages; SOS alert put() -> {full['sos_put']}, stored: "
        f"{full['sos_stored']}; oldest message still stored: {full['oldest_stored']}; "
        f"{full['stored']} rows in {full['files']} files ({full['bytes'] / 1e6:.1f} MB)"
    )
    ttl = their_ttl(tb, root)
    print(
        f"theirs, TTL purge (messages_ttl_in_days 7, {ttl['rows']} rows 30 days old): rows are written with "
        f"timestamp {ttl['stored_ts']} (now is {ttl['now_s']:.0f} s, so ms); purge at start left "
        f"{ttl['left_ms_unit']}/{ttl['rows']} (ms, as written), control left {ttl['left_s_unit']}/{ttl['rows']} "
        f"(same rows in seconds); with a 1 s check period, old rows added while running: "
        f"{ttl['left_periodic']}/{ttl['rows']} left after 3 s"
    )

    # The timed workload.
    print(
        f"\nworkload: {n} observations of {len(make_messages(1)[0].body)} bytes, put in batches of "
        f"{args.batch}, read in packs (ours {args.our_pack}, theirs {args.their_pack}), deleted after delivery; "
        f"{args.runs} runs per side, alternated",
        flush=True,
    )
    ours_runs: list[Run] = []
    their_runs: list[Run] = []
    rng = random.Random(20261124)
    for r in range(args.runs):
        order = ("ours", "theirs") if r % 2 == 0 else ("theirs", "ours")
        for side in order:
            # The store idles a random 0.2-0.4 s before the clock starts, so the work arrives at a random
            # point of its idle cycle (theirs: a writer thread that sleeps 0.1-0.2 s at a time), as in a
            # gateway that has been running.
            settle_s = rng.uniform(0.2, 0.4)
            if side == "ours":
                msgs = make_messages(n)
                run = run_ours(msgs, root, str(r), args.batch, args.our_pack, settle_s)
                del msgs
                ours_runs.append(run)
            else:
                payloads = [m.body.decode() for m in make_messages(n)]
                run = run_theirs(tb, payloads, root, str(r), args.batch, args.their_pack, settle_s)
                del payloads
                their_runs.append(run)
            print(
                f"  run {r} {side:6}: put {run.put_s:6.2f} s, total {run.total_s:6.2f} s, "
                f"{run.ops_s(n):8.0f} ops/s, delivered {run.delivered} (+{run.duplicates} duplicates), "
                f"refused {run.rejected}",
                flush=True,
            )

    def med(runs: list[Run], f: Callable[[Run], float]) -> float:
        return statistics.median(f(x) for x in runs)

    ours_ops = med(ours_runs, lambda x: x.ops_s(n))
    theirs_ops = med(their_runs, lambda x: x.ops_s(n))
    print(f"\n{'store':52} {'ack durable':>11} {'put s':>7} {'total s':>8} {'ops/s':>8} {'lost':>5} {'dups':>5}")
    for name, runs, durable, ops in (
        ("ours: Outbox (WAL, synchronous=FULL, group commit)", ours_runs, ours_durable, ours_ops),
        (f"theirs: TB SQLiteEventStorage {tb.version} (queue+thread)", their_runs, theirs_durable, theirs_ops),
    ):
        lost = max(n - x.delivered - x.rejected for x in runs)
        dups = max(x.duplicates for x in runs)
        print(
            f"{name:52} {durable:>11} {med(runs, lambda x: x.put_s):7.2f} {med(runs, lambda x: x.total_s):8.2f} "
            f"{ops:8.0f} {lost:5} {dups:5}"
        )
    print(
        "(medians; ops/s = messages through put -> get -> delete per second of the whole cycle; lost and dups:"
        " the worst run's messages never delivered and deliveries of an already delivered message)"
    )
    print(
        result_line(
            ratio=round(ours_ops / theirs_ops, 3),
            ours_ops_s=round(ours_ops),
            theirs_ops_s=round(theirs_ops),
            ours_durable_at_ack=ours_durable,
            theirs_durable_at_ack=theirs_durable,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
