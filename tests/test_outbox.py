"""The outbox against real SQLite files: acceptance, seq, lanes, budget, durability across reopen."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gateway import outbox as outbox_mod
from gateway.clock import Clock, ClockState
from gateway.errors import OutboxError
from gateway.messages import Topics, corrected_body, rfc3339_ms, time_correction
from gateway.outbox import Lane, NewMessage, Outbox, StoredMessage, message_age_s, read_summary, wire_payload
from tests.helpers import Hands, until, write_outbox_behind


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


def test_an_ack_is_deleted_with_the_next_commit_of_new_messages_or_soon_after(tmp_path: Path) -> None:
    """A live reading a second costs one commit each (its deletion rides on the next one), and an ack
    with nothing after it is still deleted within ACK_DELAY_S; acked messages are never fetched again."""
    from gateway.outbox import ACK_DELAY_S

    async def go() -> None:
        async with Outbox(tmp_path / "ob.db") as ob:
            runner = asyncio.create_task(ob.run())
            first = await ob.submit(msg(Lane.OBSERVATION, n=0))
            commits = ob.counters.commits
            for n in range(1, 6):
                ob.ack([first])
                assert [m.seq for m in await fetch_all(ob, Lane.OBSERVATION)] == [], "acked: not fetched again"
                first = await ob.submit(msg(Lane.OBSERVATION, n=n))
                assert ob.depth_total() == 1 and ob.counters.deleted == n
            assert ob.counters.commits == commits + 5, "one commit per reading, deletions included"
            ob.ack([first])
            await asyncio.sleep(ACK_DELAY_S / 4)
            assert ob.counters.commits == commits + 5 and ob.depth_total() == 1, "no commit for the ack alone yet"
            for _ in range(100):
                if ob.depth_total() == 0:
                    break
                await asyncio.sleep(ACK_DELAY_S / 20)
            assert ob.depth_total() == 0 and ob.counters.deleted == 6 and ob.counters.commits == commits + 6
            runner.cancel()
        with sqlite3.connect(tmp_path / "ob.db") as db:
            assert db.execute("SELECT count(*) FROM msg").fetchone()[0] == 0

    run(go())


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
            async with asyncio.timeout(30):
                await alert
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


def test_wire_payload_adds_seq_historical_clock_and_stream_to_the_stored_body() -> None:
    m = StoredMessage(
        7, Lane.OBSERVATION, "t", b'{"msg_id":"a","v":1}', "d", 0.0, False, ClockState.CORRECTED, stream="s1"
    )
    assert json.loads(wire_payload(m, True)) == {
        "msg_id": "a",
        "v": 1,
        "seq": 7,
        "historical": True,
        "clock": "corrected",
        "stream": "s1",
    }
    assert json.loads(wire_payload(m, False))["historical"] is False


def test_a_store_of_a_later_schema_is_refused_with_a_clear_error_and_left_as_it_is(tmp_path: Path) -> None:
    """A store written by a later release (a downgrade): not damaged, so not moved aside (a damaged one is:
    tests/test_outbox_damaged.py); refused, naming the file and both versions."""
    path = tmp_path / "ob.db"

    async def make() -> None:
        async with Outbox(path):
            pass

    run(make())
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = 99 WHERE key = 'schema'")
    db.commit()
    db.close()
    with pytest.raises(OutboxError, match=r"ob\.db: schema version 99 is not 2"):
        run(make())
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm"))) == [
        "ob.db",
        "ob.db.reserve",
    ]


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


# -- stream and time ------------------------------------------------------------------------------


def test_a_new_store_is_a_new_stream_and_a_reopened_one_keeps_its_stream(tmp_path: Path) -> None:
    async def one(path: Path) -> tuple[str, int, list[int]]:
        async with Outbox(path) as ob:
            runner = asyncio.create_task(ob.run())
            seqs = await asyncio.gather(*(ob.submit(msg(Lane.OBSERVATION, n=i)) for i in range(3)))
            runner.cancel()
            return ob.stream, ob.stream_first_seq, list(seqs)

    s1, first1, seqs1 = run(one(tmp_path / "ob.db"))
    s1b, first1b, seqs1b = run(one(tmp_path / "ob.db"))
    (tmp_path / "ob.db").unlink()
    s2, first2, seqs2 = run(one(tmp_path / "ob.db"))
    assert s1 == s1b and first1 == first1b == 1 and seqs1b == [4, 5, 6]
    assert s2 != s1 and first2 == 1 and seqs2 == [1, 2, 3], "a new store: a new stream, seq from 1"


def test_a_schema_1_store_is_migrated_keeps_its_messages_and_starts_a_stream_at_its_next_seq(tmp_path: Path) -> None:
    path = tmp_path / "ob.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE msg(seq INTEGER PRIMARY KEY, lane INTEGER NOT NULL, device TEXT NOT NULL, topic TEXT NOT NULL,
                         body BLOB NOT NULL, captured REAL NOT NULL, retain INTEGER NOT NULL, size INTEGER NOT NULL);
        CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        CREATE TABLE evicted(first INTEGER NOT NULL, last INTEGER NOT NULL, lane INTEGER NOT NULL, at REAL NOT NULL);
        INSERT INTO msg VALUES (41, 1, 'd1', 't/o', CAST('{"msg_id":"old"}' AS BLOB), 1700000000.0, 0, 80);
        INSERT INTO meta VALUES ('next_seq', 42);
        """
    )
    db.commit()
    db.close()

    async def go() -> tuple[str, int, list[StoredMessage], int]:
        async with Outbox(path) as ob:
            runner = asyncio.create_task(ob.run())
            ob.request_correction(ob.timebase.boot_id if ob.timebase else "", 5.0)
            seq = await ob.submit(msg(Lane.OBSERVATION, n=1))
            rows = await fetch_all(ob, Lane.OBSERVATION)
            runner.cancel()
            return ob.stream, ob.stream_first_seq, rows, seq

    stream, first, rows, seq = run(go())
    assert stream and first == 42 and seq == 42
    old = rows[0]
    assert (old.seq, old.body, old.boot_id, old.clock) == (41, b'{"msg_id":"old"}', None, ClockState.UNSYNCED)
    assert old.captured_at == 1700000000.0, "a message without a boot-clock time is never corrected"
    db = sqlite3.connect(path)
    assert dict(db.execute("SELECT key, value FROM meta").fetchall())["schema"] == 2
    db.close()


def test_a_correction_fixes_waiting_times_and_reports_the_sent_ones_in_one_time_correction(tmp_path: Path) -> None:
    h = Hands(1_800_000_000.0 - 7200, 50.0)  # two hours behind the truth
    clock = Clock(sync=h.sync, wall=h.wall, boot=h.boot, boot_id="boot-1")
    clock.sample()
    topics = Topics("hc", "gw")
    truth: dict[int, float] = {}

    async def go() -> tuple[list[StoredMessage], list[StoredMessage], Outbox]:
        async with Outbox(
            tmp_path / "ob.db", timebase=clock, time_correction=lambda tc: time_correction(topics, tc, h.wall())
        ) as ob:
            runner = asyncio.create_task(ob.run())
            for i in range(6):
                body = json.dumps({"msg_id": f"m{i}", "captured_at": rfc3339_ms(h.wall())}).encode()
                if i == 5:  # an alert whose condition began two seconds earlier, in this boot
                    body = json.dumps(
                        {"msg_id": "a", "captured_at": rfc3339_ms(h.wall()), "started_at": rfc3339_ms(h.wall() - 2)}
                    ).encode()
                seq = await ob.put(NewMessage(Lane.OBSERVATION, "t/o", body, "d1", h.wall()))
                truth[seq] = h.w + 7200
                h.tick(1.0)
            stored = await ob.put(
                NewMessage(Lane.OBSERVATION, "t/o", b'{"msg_id":"s"}', "cuff", h.wall() - 600, device_clock=True)
            )
            first = await fetch_all(ob, Lane.OBSERVATION)
            for m in first[:3]:  # published before the clock could be trusted
                ob.note_sent(m)
            ob.ack([first[0].seq])
            h.w, h.synced = h.w + 7200, True  # the step to the truth, with the verdict
            for ev in clock.sample():
                if ev.corrects:
                    ob.request_correction(clock.boot_id, ev.offset)
            await until_flushed(ob)
            after = await fetch_all(ob, Lane.OBSERVATION)
            tcs = await fetch_all(ob, Lane.STATE)
            runner.cancel()
            assert stored in [m.seq for m in after]
            return after, tcs, ob

    after, tcs, ob = run(go())
    by_seq = {m.seq: m for m in after}
    for seq in range(2, 6 + 1):
        m = by_seq[seq]
        assert m.clock is ClockState.CORRECTED and abs(m.captured_at - truth[seq]) < 0.01
        assert abs(m.shift - 7200) < 0.01
    cuff = next(m for m in after if m.device_id == "cuff")
    assert cuff.clock is ClockState.DEVICE and cuff.shift == 0.0, "a device clock's time is never moved"
    doc = json.loads(corrected_body(by_seq[6]))
    assert doc["msg_id"] == "a" and doc["captured_at"] == rfc3339_ms(truth[6])
    assert doc["started_at"] == rfc3339_ms(truth[6] - 2), "started_at in the same boot moves with it"
    assert len(tcs) == 1
    tc = json.loads(tcs[0].body)
    assert (tc["type"], tc["boot_id"], tc["first_seq"], tc["last_seq"], tc["count"]) == (
        "time_correction",
        "boot-1",
        1,
        3,
        3,
    )
    assert abs(tc["offset_s"] - 7200) < 0.01 and tcs[0].clock is ClockState.SYNCED
    assert clock.corrected_messages == 5 and ob.time_corrections[0].first_seq == 1


def test_readings_read_before_the_step_and_committed_after_it_are_corrected_to_their_true_time(
    tmp_path: Path,
) -> None:
    """The wall clock steps between a reading's capture time and its stamp: a driver read its time, then
    the step came before the pipeline handed it over (the flaky faketime test: a reading stamped 0.88 s
    after its capture, the step in between, was "corrected" to two hours behind), or a signal window
    that began before the step ends after the clock saw it. Each is corrected to its true time."""
    truth_offset = 1_800_000_000.0 - 50.0
    h = Hands(truth_offset + 50.0 - 7200, 50.0)  # two hours behind the truth
    clock = Clock(sync=h.sync, wall=h.wall, boot=h.boot, boot_id="boot-1")
    clock.sample()
    topics = Topics("hc", "gw")
    boot_at: dict[str, float] = {}

    def reading(name: str, captured_at: float) -> NewMessage:
        body = json.dumps({"msg_id": name, "captured_at": rfc3339_ms(captured_at)}).encode()
        return NewMessage(Lane.OBSERVATION, "t/o", body, "oxi", captured_at)

    async def go() -> list[StoredMessage]:
        async with Outbox(
            tmp_path / "ob.db", timebase=clock, time_correction=lambda tc: time_correction(topics, tc, h.wall())
        ) as ob:
            runner = asyncio.create_task(ob.run())
            boot_at["before"] = h.b
            await ob.put(reading("before", h.wall()))
            h.tick(0.5)
            raced, boot_at["raced"] = h.wall(), h.b  # the driver reads the time...
            window, boot_at["window"] = h.wall() - 4.0, h.b - 4.0  # ...a signal window ends earlier
            h.tick(0.4)
            h.w, h.synced = h.w + 7200, True  # ...the step, before the clock's next sample...
            await ob.put(reading("raced", raced))  # ...and only then the hand-over
            h.tick(0.2)
            for ev in clock.sample():
                if ev.corrects:
                    ob.request_correction(clock.boot_id, ev.offset)
            await ob.put(reading("after", h.wall()))
            boot_at["after"] = h.b
            await until(lambda: clock.corrections >= 1, timeout=5.0, what="the step's correction")
            assert clock.corrections == 1
            await ob.put(reading("window", window))  # after the correction is on disk
            await until(lambda: clock.corrections >= 2, timeout=5.0, what="the window's own correction")
            rows = await fetch_all(ob, Lane.OBSERVATION)
            runner.cancel()
            return rows

    rows = {json.loads(m.body)["msg_id"]: m for m in run(go())}
    for name in ("before", "raced", "window"):
        m = rows[name]
        assert m.boot_s is not None and abs(m.boot_s - boot_at[name]) < 0.01, (name, m.boot_s, boot_at[name])
        assert m.clock is ClockState.CORRECTED and abs(m.captured_at - (boot_at[name] + truth_offset)) < 0.01, (
            name,
            m.clock,
            m.captured_at - (boot_at[name] + truth_offset),
        )
        assert json.loads(corrected_body(m))["captured_at"] == rfc3339_ms(boot_at[name] + truth_offset)
    after = rows["after"]
    assert after.clock is ClockState.SYNCED and abs(after.captured_at - (boot_at["after"] + truth_offset)) < 0.01


async def until_flushed(ob: Outbox) -> None:
    for _ in range(200):
        if ob.time_corrections:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the correction was not committed")


def test_sends_before_a_restart_and_sends_of_rows_fetched_before_the_correction_get_a_time_correction(
    tmp_path: Path,
) -> None:
    h = Hands(1_800_000_000.0 - 3600, 50.0)  # an hour behind
    topics = Topics("hc", "gw")

    def outbox(clock: Clock) -> Outbox:
        return Outbox(tmp_path / "ob.db", timebase=clock, time_correction=lambda tc: time_correction(topics, tc, h.w))

    async def before_restart() -> None:
        clock = Clock(sync=h.sync, wall=h.wall, boot=h.boot, boot_id="boot-1")
        clock.sample()
        async with outbox(clock) as ob:
            runner = asyncio.create_task(ob.run())
            for i in range(3):
                await ob.put(msg(Lane.OBSERVATION, n=i))
            rows = await fetch_all(ob, Lane.OBSERVATION)
            for m in rows:
                ob.note_sent(m)
            ob.ack([m.seq for m in rows])  # they left: only the time-correction can fix them now
            await ob.put(msg(Lane.OBSERVATION, n=9))
            runner.cancel()

    async def after_restart() -> list[dict[str, object]]:
        clock = Clock(sync=h.sync, wall=h.wall, boot=h.boot, boot_id="boot-1")
        clock.sample()
        async with outbox(clock) as ob:
            runner = asyncio.create_task(ob.run())
            stale = await fetch_all(ob, Lane.OBSERVATION)  # fetched before the correction...
            h.w, h.synced = h.w + 3600, True
            for ev in clock.sample():
                if ev.corrects:
                    ob.request_correction("boot-1", ev.offset)
            await until_flushed(ob)
            for m in stale:  # ...and published after it, with the old time
                ob.note_sent(m)
            for _ in range(200):
                if len(ob.time_corrections) >= 2:
                    break
                await asyncio.sleep(0.01)
            tcs = [json.loads(m.body) for m in await fetch_all(ob, Lane.STATE)]
            runner.cancel()
            return tcs

    run(before_restart())
    tcs = run(after_restart())
    assert [(t["first_seq"], t["last_seq"], t["count"]) for t in tcs] == [(1, 3, 3), (4, 4, 1)]
    assert all(abs(float(str(t["offset_s"])) - 3600) < 0.01 for t in tcs)


def test_corrected_body_leaves_times_of_an_earlier_boot_and_refuses_a_body_it_did_not_write() -> None:
    body = json.dumps(
        {"msg_id": "a", "captured_at": rfc3339_ms(1000.0), "started_at": rfc3339_ms(400.0), "readings": []}
    ).encode()
    # captured at 1000 on a clock whose boot began at 900 (boot clock 100), moved by +50 s
    m = StoredMessage(3, Lane.ALERT, "t", body, "d", 1050.0, False, ClockState.CORRECTED, "b", 100.0, 50.0)
    doc = json.loads(corrected_body(m))
    assert doc["captured_at"] == rfc3339_ms(1050.0) and doc["started_at"] == rfc3339_ms(400.0)
    with pytest.raises(ValueError):
        corrected_body(StoredMessage(4, Lane.ALERT, "t", b"[1]", "d", 1.0, False, ClockState.CORRECTED, "b", 0.0, 1.0))


class _SendDuringTheCorrection(Outbox):
    """The uplink publishes a message it fetched before the correction while the correction's
    transaction runs (the helper's race: the broker came back in the same 10 ms as the clock's step)."""

    racing: list[StoredMessage] = []

    async def _call(self, fn: Any, *args: Any) -> Any:
        if self.racing and getattr(fn, "__name__", "") == "_commit" and args[-1] is not None:
            for m in self.racing:
                self.note_sent(m)
            self.racing = []
        return await super()._call(fn, *args)


def test_messages_sent_while_a_correction_commits_get_a_time_correction_too(tmp_path: Path) -> None:
    h = Hands(1_800_000_000.0 - 7200, 50.0)  # two hours behind
    topics = Topics("hc", "gw")

    async def go() -> list[dict[str, Any]]:
        clock = Clock(sync=h.sync, wall=h.wall, boot=h.boot, boot_id="boot-1")
        clock.sample()
        tc = lambda c: time_correction(topics, c, h.w)  # noqa: E731
        async with _SendDuringTheCorrection(tmp_path / "ob.db", timebase=clock, time_correction=tc) as ob:
            runner = asyncio.create_task(ob.run())
            for i in range(3):
                await ob.put(msg(Lane.ALERT if i == 0 else Lane.OBSERVATION, n=i))  # an SOS among them
            ob.racing = await fetch_all(ob, Lane.ALERT) + await fetch_all(ob, Lane.OBSERVATION)
            h.w, h.synced = h.w + 7200, True
            for ev in clock.sample():
                if ev.corrects:
                    ob.request_correction("boot-1", ev.offset)
            await until(lambda: ob.time_corrections, timeout=5.0, what="the time-correction of what was sent")
            tcs = [json.loads(m.body) for m in await fetch_all(ob, Lane.STATE)]
            runner.cancel()
            return tcs

    tcs = run(go())
    assert [(t["first_seq"], t["last_seq"], t["count"]) for t in tcs] == [(1, 3, 3)]
    assert abs(float(tcs[0]["offset_s"]) - 7200) < 0.01


def test_the_offline_summary_ages_this_boots_messages_on_the_boot_clock_and_others_on_the_wall(tmp_path: Path) -> None:
    """``gatewayctl outbox`` and ``doctor`` with the daemon stopped: a store written in this boot on a wall
    clock two hours behind (it has stepped to the truth since) waited seconds, not two hours; a reading
    of a device's own clock and a message of another boot are aged on the wall clock."""
    path = tmp_path / "ob.db"
    behind = 7200.0
    write_outbox_behind(
        path,
        behind,
        [
            (Lane.OBSERVATION, "t/o", "d1", 3.0, False),
            (Lane.STATE, "t/s", "cuff", 600.0, True),
            # later in the lane, captured earlier (a stored record): the lane's first message is the one aged
            (Lane.OBSERVATION, "t/o", "cuff", 900.0, True),
        ],
    )
    db = sqlite3.connect(path)  # a message of an earlier boot, its wall time a day old
    db.execute(
        "INSERT INTO msg VALUES (100, 3, 'd2', 't/b', CAST('{}' AS BLOB), ?, 0, 2, 'earlier-boot', 5.0, 1, 0)",
        (time.time() - 86400,),
    )
    db.commit()
    db.close()
    summary = read_summary(path)
    ages = summary["oldest_age_s"]
    assert 3.0 <= ages["observation"] < 60.0, ages  # not 7,203 s: the wall clock stepped since
    assert behind + 600 <= ages["state"] < behind + 660, ages  # the device's clock: its age on today's wall
    assert 86400 <= ages["bulk"] < 86460 and ages["alert"] is None, ages
    last = summary["last_age_s"]  # each device's latest message, as the doctor reads it
    assert 3.0 <= last["d1"] < 60.0 and behind + 900 <= last["cuff"] < behind + 960, last


def test_a_system_without_a_boot_id_ages_every_message_on_the_wall_clock() -> None:
    """An empty boot id cannot tell this boot's messages from an earlier boot's: their boot-clock times
    may be of another boot, so the wall clock ages them."""
    m = StoredMessage(1, Lane.OBSERVATION, "t", b"{}", "d", 1000.0, False, ClockState.SYNCED, "", 50.0)
    assert message_age_s(m, now_wall=1010.0, boot_id="", boot_s=9000.0) == 10.0
    mine = StoredMessage(1, Lane.OBSERVATION, "t", b"{}", "d", 1000.0, False, ClockState.SYNCED, "b1", 50.0)
    assert message_age_s(mine, now_wall=8210.0, boot_id="b1", boot_s=60.0) == 10.0


def test_an_sos_during_a_long_correction_waits_for_one_chunk_of_it_not_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first clock sync after a long outage corrects every waiting message: an SOS pressed meanwhile
    is committed between two chunks of it, not after the last."""
    monkeypatch.setattr(outbox_mod, "CORRECTION_CHUNK", 5_000)
    waiting = 100_000
    h = Hands(1_800_000_000.0 - 7200, 50.0)  # two hours behind the truth
    clock = Clock(sync=h.sync, wall=h.wall, boot=h.boot, boot_id="boot-1")
    clock.sample()

    async def go() -> tuple[int, int, int]:
        async with Outbox(tmp_path / "ob.db", timebase=clock) as ob:
            runner = asyncio.create_task(ob.run())
            try:
                await ob.put(msg(Lane.OBSERVATION, n=0))
                db = ob._db
                assert db is not None
                rows = [
                    (seq, 1, "d1", "t/o", b"{}", h.wall(), 0, 70, "boot-1", h.boot(), int(ClockState.UNSYNCED), 0.0)
                    for seq in range(2, waiting + 2)
                ]  # the outage's readings, written straight into the store (as many commits would)

                def insert() -> None:
                    db.execute("BEGIN")
                    db.executemany("INSERT INTO msg VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
                    db.execute("COMMIT")

                await ob._call(insert)
                ob.next_seq = waiting + 2
                h.w, h.synced = h.w + 7200, True  # the step to the truth, with the verdict
                for ev in clock.sample():
                    if ev.corrects:
                        ob.request_correction(clock.boot_id, ev.offset)
                await until(lambda: ob.corrected_total > 0, 30, "the correction under way")
                seq = await ob.submit(msg(Lane.ALERT, n=1))
                at_sos = ob.corrected_total
                await until(lambda: clock.corrections == 1, 60, "the correction's end")
                return seq, at_sos, ob.corrected_total
            finally:
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)

    seq, at_sos, total = run(go())
    assert seq == waiting + 2 and total > waiting
    assert at_sos < total, "the SOS was committed before the correction's last chunk"


def test_a_stop_during_a_long_open_still_commits_what_was_submitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's outbox opens in run() (open_in_run) while the devices already submit. A stop while the
    open was still reading the store cancelled run(): the outbox then took itself as opened without a
    store, close() committed nothing and the SOS submitted meanwhile was lost. Now close() waits for the
    open's thread and commits it."""
    gate = threading.Event()
    real_open = Outbox._open

    def slow_open(self: Outbox) -> None:
        assert gate.wait(10)
        real_open(self)

    monkeypatch.setattr(Outbox, "_open", slow_open)

    async def go() -> int:
        ob = Outbox(tmp_path / "ob.db", open_in_run=True)
        await ob.__aenter__()
        runner = asyncio.create_task(ob.run())
        sos = ob.submit(msg(Lane.ALERT))
        await asyncio.sleep(0.1)
        runner.cancel()  # the stop, while the store is still being opened
        with pytest.raises(asyncio.CancelledError):
            await runner
        asyncio.get_running_loop().call_later(0.3, gate.set)
        await ob.flush()  # as the daemon's orderly stop does
        await ob.close()
        return sos.result()

    assert run(go()) == 1
    db = sqlite3.connect(tmp_path / "ob.db")
    assert db.execute("SELECT lane FROM msg").fetchall() == [(0,)]
    db.close()
