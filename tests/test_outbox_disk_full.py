"""The outbox when the disk fills up: on a real, small tmpfs (mounted for the test: CI runs as root), and
with SQLite's own SQLITE_FULL (``max_page_count``) for a store that refuses every commit. An SOS is
committed whatever the observations cost, and an alert the store refuses waits for it, not lost."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import outbox as outbox_mod
from gateway.errors import OutboxError
from gateway.outbox import Lane, NewMessage, Outbox

MiB = 1024 * 1024


def msg(lane: Lane, n: int, size: int = 900) -> NewMessage:
    body = json.dumps({"msg_id": f"m{n}", "n": n, "pad": "x" * size}).encode()
    return NewMessage(lane, f"t/{lane.name}/d1", body, "d1", 1_700_000_000.0 + n)


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(path: Path) -> int:
    """Write ``path`` until the disk is full (another program's logs): the bytes written."""
    n = 0
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as fh:
        while True:
            try:
                n += fh.write(chunk) or 0
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    return n


async def settle(futures: list[asyncio.Future[int]]) -> tuple[int, int]:
    """(committed, refused) of ``futures``; any other outcome fails the test."""
    done = await asyncio.gather(*futures, return_exceptions=True)
    refused = [d for d in done if isinstance(d, BaseException)]
    assert all(isinstance(d, OutboxError) for d in refused), refused
    return len(done) - len(refused), len(refused)


def test_a_disk_filled_by_another_program_costs_observations_never_the_sos(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_mod, "DISK_CHECK_S", 0.0)  # look at the free space at every commit

    async def go(disk: Path) -> dict[str, object]:
        async with Outbox(disk / "outbox.sqlite3", reserve_bytes=2 * MiB) as ob:
            runner = asyncio.create_task(ob.run())
            try:
                made = ob.reserve_path.stat().st_size
                before = await settle([ob.submit(msg(Lane.OBSERVATION, i)) for i in range(600)])
                filler = fill(disk / "syslog")  # the rest of the disk, to the last block
                during = [ob.submit(msg(Lane.OBSERVATION, 1000 + i)) for i in range(400)]
                sos = ob.submit(msg(Lane.ALERT, 5000, size=200))
                after = [ob.submit(msg(Lane.OBSERVATION, 2000 + i)) for i in range(400)]
                async with asyncio.timeout(10):
                    sos_seq = await sos
                committed = await settle(during + after)
                low = (ob.disk_low, ob.reserve_path.exists())
                alerts = [m.seq for m in await ob.fetch(Lane.ALERT, 0, 10)]
                evicted = ob.counters.evicted_total
                (disk / "syslog").unlink()  # the disk has room again: the reserve comes back
                await ob.put(msg(Lane.OBSERVATION, 9000))
                return {
                    "made": made,
                    "before": before,
                    "filler": filler,
                    "sos": sos_seq,
                    "alerts": alerts,
                    "committed": committed,
                    "low": low,
                    "evicted": evicted,
                    "again": (ob.disk_low, ob.reserve_path.exists()),
                }
            finally:
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)

    with small_disk(tmp_path / "disk", "12m") as disk:
        r = asyncio.run(go(disk))
    assert r["made"] == 2 * MiB and r["before"] == (600, 0)
    assert isinstance(r["filler"], int) and r["filler"] > 0
    assert r["alerts"] == [r["sos"]], "the SOS is committed on a full disk"
    assert r["low"] == (True, False), "the store stopped growing and released its reserve"
    assert isinstance(r["evicted"], int) and r["evicted"] > 0, "observations made room, reported as evicted"
    assert r["again"] == (False, True), "with room again, it grows again and the reserve is back"


def test_an_alert_the_store_refuses_waits_in_memory_until_it_is_stored(tmp_path: Path) -> None:
    async def go() -> tuple[int, int, int, list[int]]:
        async with Outbox(tmp_path / "outbox.sqlite3", reserve_bytes=64 * 1024) as ob:
            runner = asyncio.create_task(ob.run())
            try:
                await ob.put(msg(Lane.ALERT, 0))  # nothing evictable: alerts only
                db = ob._db
                assert db is not None
                pages = (await ob._call(lambda: db.execute("PRAGMA page_count").fetchone()))[0]
                # SQLite's own SQLITE_FULL: the store may not grow by one page (reserve or not)
                await ob._call(db.execute, f"PRAGMA max_page_count={pages}")
                observations = [ob.submit(msg(Lane.OBSERVATION, 1 + i)) for i in range(50)]
                sos = ob.submit(msg(Lane.ALERT, 100, size=5000))  # needs pages of its own
                committed, refused = await settle(observations)
                await asyncio.sleep(2.5 * outbox_mod.COMMIT_RETRY_S)  # two retries, refused too
                assert not sos.done() and ob.alerts_retrying() == 1, "kept for retry, not failed"
                await ob._call(db.execute, "PRAGMA max_page_count=1073741823")
                async with asyncio.timeout(5 * outbox_mod.COMMIT_RETRY_S):
                    seq = await sos
                alerts = [m.seq for m in await ob.fetch(Lane.ALERT, 0, 10)]
                return committed, refused, seq, alerts
            finally:
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)

    committed, refused, seq, alerts = asyncio.run(go())
    assert refused >= 1 and committed + refused == 50, "observations are refused (their submitters learn it)"
    assert alerts == [1, seq], "the alert is on disk once the store takes it"


def test_a_bug_in_a_commit_costs_that_commit_never_the_committer_nor_the_alert(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault nobody declared (here a KeyError injected into the commit) is counted; the alert of that
    commit is tried again and stored, and the committer goes on with the next messages."""
    real = Outbox._commit
    faults = [KeyError("injected")]

    def commit(self: Outbox, *args: object) -> object:
        if faults:
            raise faults.pop()
        return real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Outbox, "_commit", commit)

    async def go() -> tuple[tuple[int, int], int, int, list[int], int]:
        async with Outbox(tmp_path / "outbox.sqlite3", reserve_bytes=64 * 1024) as ob:
            runner = asyncio.create_task(ob.run())
            try:
                first = [ob.submit(msg(Lane.OBSERVATION, i)) for i in range(5)]
                sos = ob.submit(msg(Lane.ALERT, 100))
                refused = await settle(first)
                async with asyncio.timeout(5 * outbox_mod.COMMIT_RETRY_S):
                    seq = await sos
                later = await ob.put(msg(Lane.OBSERVATION, 200))
                alerts = [m.seq for m in await ob.fetch(Lane.ALERT, 0, 10)]
                return refused, seq, later, alerts, ob.bugs.count
            finally:
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)

    refused, seq, later, alerts, bugs = asyncio.run(go())
    assert refused == (0, 5), "the observations of the failed commit are refused (their submitters learn it)"
    assert alerts == [seq] and later > seq, "the alert is stored on the retry, and commits go on"
    assert bugs == 1
