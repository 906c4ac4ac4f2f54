"""The outbox against real SQLite files: acceptance, seq, lanes, budget, durability across reopen."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from gateway.errors import OutboxError
from gateway.outbox import Lane, NewMessage, Outbox, StoredMessage, wire_payload


def msg(lane: Lane, device: str = "d1", n: int = 0, size: int = 40) -> NewMessage:
    body = json.dumps({"msg_id": f"m{n}", "n": n, "pad": "x" * size}).encode()
    return NewMessage(lane, f"t/{lane.name}/{device}", body, device, 1_700_000_000.0 + n)


async def fetch_all(ob: Outbox, lane: Lane) -> list[StoredMessage]:
    return await ob.fetch(lane, 0, 1_000_000)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_committed_messages_get_contiguous_seq_that_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ob.db"

    async def first() -> list[int]:
        async with Outbox(path) as ob:
            runner = asyncio.create_task(ob.run())
            seqs = await asyncio.gather(*(ob.submit(msg(Lane.OBSERVATION, n=i)) for i in range(250)))
            runner.cancel()
            return list(seqs)

    async def second() -> tuple[list[int], list[int]]:
        async with Outbox(path) as ob:
            runner = asyncio.create_task(ob.run())
            more = await asyncio.gather(*(ob.submit(msg(Lane.ALERT, n=i)) for i in range(5)))
            stored = [m.seq for m in await fetch_all(ob, Lane.OBSERVATION)]
            runner.cancel()
            return list(more), stored

    seqs = run(first())
    assert seqs == list(range(1, 251))
    more, stored = run(second())
    assert more == list(range(251, 256)), "seq continues after a restart"
    assert stored == seqs, "everything committed is still there after reopening"


def test_acked_messages_leave_and_seq_never_restarts_even_when_store_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "ob.db"

    async def go() -> list[int]:
        async with Outbox(path) as ob:
            runner = asyncio.create_task(ob.run())
            seqs = await asyncio.gather(*(ob.submit(msg(Lane.OBSERVATION, n=i)) for i in range(10)))
            ob.ack(seqs)
            await ob.put(msg(Lane.OBSERVATION, n=99))  # the next commit carries the deletes
            left = [m.seq for m in await fetch_all(ob, Lane.OBSERVATION)]
            runner.cancel()
            return left

    assert run(go()) == [11]

    async def reopen() -> tuple[int, int]:
        async with Outbox(path) as ob:
            runner = asyncio.create_task(ob.run())
            (await fetch_all(ob, Lane.OBSERVATION))
            ob.ack([11])
            s = await ob.put(msg(Lane.BULK))
            runner.cancel()
            return s, ob.depth_total()

    seq, depth = run(reopen())
    assert seq == 12
    assert depth == 1


def test_lanes_are_fifo_and_independent(tmp_path: Path) -> None:
    async def go() -> dict[Lane, list[int]]:
        async with Outbox(tmp_path / "ob.db") as ob:
            runner = asyncio.create_task(ob.run())
            order = [Lane.BULK, Lane.OBSERVATION, Lane.ALERT, Lane.STATE, Lane.OBSERVATION, Lane.ALERT]
            await asyncio.gather(*(ob.submit(msg(lane, n=i)) for i, lane in enumerate(order)))
            out = {lane: [m.seq for m in await fetch_all(ob, lane)] for lane in Lane}
            after = [m.seq for m in await ob.fetch(Lane.OBSERVATION, 2, 10)]
            runner.cancel()
            assert after == [5]
            return out

    out = run(go())
    assert out[Lane.ALERT] == [3, 6]
    assert out[Lane.OBSERVATION] == [2, 5]
    assert out[Lane.STATE] == [4]
    assert out[Lane.BULK] == [1]


def test_an_alert_commits_at_once_without_waiting_for_the_group_window(tmp_path: Path) -> None:
    async def go() -> tuple[bool, bool]:
        # A group window of 10 minutes: only the alert's own urgency can commit it in time.
        async with Outbox(tmp_path / "ob.db", commit_interval_ms=600_000) as ob:
            runner = asyncio.create_task(ob.run())
            await asyncio.sleep(0.05)
            obs = ob.submit(msg(Lane.OBSERVATION))
            alert = ob.submit(msg(Lane.ALERT, n=1))
            await asyncio.wait_for(alert, 30)
            # The observation queued before it rode in the same transaction.
            both = obs.done() and alert.done()
            # On disk: a second connection sees both rows.
            db = sqlite3.connect(tmp_path / "ob.db")
            rows = db.execute("SELECT COUNT(*) FROM msg").fetchone()[0]
            db.close()
            runner.cancel()
            return both, rows == 2

    both, on_disk = run(go())
    assert both
    assert on_disk


def test_disk_budget_evicts_lowest_lane_oldest_first_and_never_alerts(tmp_path: Path) -> None:
    budget = 60_000

    async def go() -> tuple[Outbox, dict[Lane, list[int]], list[tuple[int, int]]]:
        evicted: list[tuple[int, int]] = []
        async with Outbox(tmp_path / "ob.db", max_bytes=budget) as ob:
            ob.on_evict(evicted.extend)
            runner = asyncio.create_task(ob.run())
            # 100 alerts, 100 observations, 100 bulk: ~3 x 100 x 400 bytes, far over budget.
            for i in range(100):
                await asyncio.gather(
                    ob.submit(msg(Lane.ALERT, n=i, size=300)),
                    ob.submit(msg(Lane.OBSERVATION, n=i, size=300)),
                    ob.submit(msg(Lane.BULK, n=i, size=300)),
                )
            out = {lane: [m.seq for m in await fetch_all(ob, lane)] for lane in Lane}
            runner.cancel()
            return ob, out, evicted

    ob, out, evicted = run(go())
    assert len(out[Lane.ALERT]) == 100, "alerts are never evicted"
    assert out[Lane.BULK] == [], "bulk goes first"
    assert 0 < len(out[Lane.OBSERVATION]) < 100, "then the oldest observations"
    kept_obs = out[Lane.OBSERVATION]
    assert kept_obs == sorted(kept_obs) and kept_obs[-1] == 299, "the newest observations stay"
    assert ob.bytes <= budget or len(out[Lane.OBSERVATION]) == 0
    # Every seq is either still stored or inside a reported eviction range: nothing vanished unsaid.
    stored = {s for seqs in out.values() for s in seqs}
    reported = {s for a, b in evicted for s in range(a, b + 1)}
    assert stored | reported == set(range(1, 301))
    assert not stored & reported
    assert ob.counters.evicted_total == len(reported)


def test_eviction_ranges_and_counters_persist(tmp_path: Path) -> None:
    async def go(n: int) -> tuple[int, list[tuple[int, int]]]:
        async with Outbox(tmp_path / "ob.db", max_bytes=20_000) as ob:
            runner = asyncio.create_task(ob.run())
            await asyncio.gather(*(ob.submit(msg(Lane.BULK, n=i, size=500)) for i in range(n)))
            runner.cancel()
            return ob.counters.evicted_total, list(ob.evicted_ranges)

    total, ranges = run(go(100))
    assert total > 0 and ranges

    async def reopen() -> tuple[int, list[tuple[int, int]]]:
        async with Outbox(tmp_path / "ob.db", max_bytes=20_000) as ob:
            return ob.counters.evicted_total, list(ob.evicted_ranges)

    assert run(reopen()) == (total, ranges)


def test_wire_payload_adds_seq_and_historical_to_the_stored_body() -> None:
    m = StoredMessage(7, Lane.OBSERVATION, "t", b'{"msg_id":"a","v":1}', "d", 0.0, False)
    assert json.loads(wire_payload(m, True)) == {"msg_id": "a", "v": 1, "seq": 7, "historical": True}
    assert json.loads(wire_payload(m, False))["historical"] is False


def test_a_corrupt_store_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ob.db"
    path.write_bytes(b"this is not a database" * 100)

    async def go() -> None:
        async with Outbox(path):
            pass

    with pytest.raises(OutboxError, match=r"ob\.db"):
        run(go())


def test_close_commits_what_is_pending_and_is_safe_twice(tmp_path: Path) -> None:
    async def go() -> None:
        ob = Outbox(tmp_path / "ob.db", commit_interval_ms=600_000)
        await ob.__aenter__()
        fut = ob.submit(msg(Lane.OBSERVATION))
        await ob.close()
        await ob.close()
        assert fut.result() == 1

    run(go())
    db = sqlite3.connect(tmp_path / "ob.db")
    assert db.execute("SELECT seq FROM msg").fetchall() == [(1,)]
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
