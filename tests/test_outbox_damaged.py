"""A damaged outbox (a worn SD card): the daemon starts on a fresh store, and what can be read of the
damaged one is committed again. Real SQLite files damaged page by page, a real daemon, a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gateway import outbox as outbox_mod
from gateway.outbox import Lane, NewMessage, Outbox, StoredMessage, read_summary
from gateway.salvage import DamagedStore, Recovery
from simulators.broker import Mosquitto, free_port
from simulators.rfxtrx_sim import RfxtrxSimulator
from tests.helpers import REPO, Collector, GatewayProcess, gateway_config, rfxtrx_device, status_via_ctl, until
from tests.test_outbox_disk_full import fill, small_disk

N = 3000
COLUMNS = "seq, lane, device, topic, body, captured, boot, mono, clock"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def body(i: int) -> bytes:
    return json.dumps({"msg_id": f"m{i}", "i": i, "pad": "x" * 200}).encode()


def write_store(path: Path, n: int = N) -> list[tuple[Any, ...]]:
    """``n`` messages (an alert every 1000, from the first), committed; returns their rows as stored."""

    async def go() -> None:
        async with Outbox(path) as ob:
            runner = asyncio.create_task(ob.run())
            futs = []
            for i in range(n):
                lane = Lane.ALERT if i % 1000 == 0 else Lane.OBSERVATION
                futs.append(ob.submit(NewMessage(lane, f"t/d{i % 3}", body(i), f"d{i % 3}", time.time() - n + i)))
            await asyncio.gather(*futs)
            runner.cancel()

    run(go())
    db = sqlite3.connect(path)
    try:
        return db.execute(f"SELECT {COLUMNS} FROM msg ORDER BY seq").fetchall()
    finally:
        db.close()


def damage_page_of(path: Path, marker: bytes) -> int:
    """Overwrite the page of the file holding ``marker`` (and the next) with garbage; returns its number."""
    db = sqlite3.connect(path)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    data = bytearray(path.read_bytes())
    at = data.index(marker)
    page = at // page_size
    data[page * page_size : (page + 2) * page_size] = b"\xa5" * (2 * page_size)
    path.write_bytes(bytes(data))
    return page + 1


def damage_root_of(path: Path, index: str) -> None:
    """Overwrite the root page of ``index`` (a small index: its only page) with garbage."""
    db = sqlite3.connect(path)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (index,)).fetchone()[0]
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    with path.open("r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * page_size)


def damage_middle_leaf_of(path: Path, index: str) -> None:
    """Overwrite a leaf page of ``index`` from the middle of it (read by no query the test makes), found
    through its root, an interior page (SQLite's file format: a 12-byte header, then the cell pointers,
    each cell starting with its child's page number)."""
    db = sqlite3.connect(path)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (index,)).fetchone()[0]
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = path.read_bytes()
    page = data[(root - 1) * page_size : root * page_size]
    assert page[0] == 0x02, "the root of the index is an interior page"
    cells = int.from_bytes(page[3:5], "big")
    cell = int.from_bytes(page[12 + 2 * (cells // 2) : 14 + 2 * (cells // 2)], "big")
    leaf = int.from_bytes(page[cell : cell + 4], "big")
    with path.open("r+b") as f:
        f.seek((leaf - 1) * page_size)
        f.write(b"\xa5" * page_size)


def stored(path: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute(f"SELECT {COLUMNS} FROM msg ORDER BY seq").fetchall()
    finally:
        db.close()


async def salvaged(path: Path, before_run: Any = None) -> tuple[Outbox, StoredMessage]:
    """Open ``path`` (damaged), submit an SOS at once, run until the salvage is done; the outbox closed."""
    async with Outbox(path) as ob:
        if before_run is not None:
            before_run(ob)
        runner = asyncio.create_task(ob.run())
        sos = ob.submit(NewMessage(Lane.ALERT, "t/sos", b'{"msg_id": "sos-now"}', "sos-1", time.time()))
        async with asyncio.timeout(10):
            assert await sos >= 1
        await until(lambda: ob.recovery is not None and ob.recovery.done, 30, "the salvage done")
        first = (await ob.fetch(Lane.ALERT, 0, 1))[0]
        runner.cancel()
    return ob, first


def test_a_damaged_store_is_moved_aside_and_what_can_be_read_is_committed_again(tmp_path: Path) -> None:
    """Two pages of the table are garbage (SQLite: "database disk image is malformed"). Before, the outbox
    refused to open and the daemon, with its SOS path, did not start. Now the file is moved aside, a fresh
    store (a new stream) takes an SOS at once, and every message outside the damaged pages is committed
    again as it was stored (body, times, clock state, boot), the alerts first; the seqs that could not be
    read are reported, and they are exactly the messages missing."""
    path = tmp_path / "outbox.sqlite3"
    before = write_store(path)
    old_stream = DamagedStore(path).stream
    damage_page_of(path, b'"msg_id": "m1500"')
    with pytest.raises(sqlite3.DatabaseError):
        db = sqlite3.connect(path)
        try:
            assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        finally:
            db.close()

    ob, first_alert = run(salvaged(path))
    rec = ob.recovery
    assert rec is not None and rec.done and rec.error is None
    aside = Path(rec.aside)
    assert aside.exists() and aside.name.startswith("outbox.sqlite3.damaged-")
    assert rec.old_stream == old_stream and rec.old_last_seq == N and ob.stream != old_stream
    after = stored(path)
    by_id = {json.loads(r[4])["msg_id"]: r for r in after}
    assert "sos-now" in by_id, "the SOS submitted at the open is committed"
    lost = {s for a, b in rec.unreadable or [] for s in range(a, b + 1)}
    assert 1501 in lost and 0 < len(lost) < 200, rec.unreadable
    kept = [r for r in before if r[0] not in lost]
    assert rec.salvaged == len(kept) and rec.invalid == 0 and rec.refused == 0
    assert len(after) == len(kept) + 1
    for seq, lane, device, topic, b, captured, boot, mono, clock in kept:
        new = by_id[json.loads(b)["msg_id"]]
        assert new[1:] == (lane, device, topic, b, captured, boot, mono, clock), f"seq {seq} not as stored"
    # the alerts came first (through the lane index): the salvaged ones hold the lowest seqs of the store
    alert_seqs = sorted(r[0] for r in after if r[1] == Lane.ALERT and json.loads(r[4])["msg_id"] != "sos-now")
    assert len(alert_seqs) == 3 and max(alert_seqs) < min(r[0] for r in after if r[1] == Lane.OBSERVATION)
    assert first_alert.lane is Lane.ALERT

    # a restart: the record is kept, nothing is salvaged twice, the summary tools see it
    async def reopen() -> tuple[Recovery | None, int]:
        async with Outbox(path) as again:
            runner = asyncio.create_task(again.run())
            await asyncio.sleep(0.3)
            runner.cancel()
            return again.recovery, again.depth_total()

    rec2, depth = run(reopen())
    assert rec2 is not None and rec2.done and rec2.salvaged == rec.salvaged and depth == len(after)
    summary = read_summary(path)["recovered"]
    assert summary["stream"] == old_stream and summary["salvaged"] == rec.salvaged and summary["aside"] == rec.aside


def test_the_salvage_steps_over_exactly_what_cannot_be_read(tmp_path: Path) -> None:
    """Twelve pages in a row are garbage: every message SQLite can still read by its seq is salvaged (the
    step over a damaged stretch doubled its probe and jumped past readable rows: 112 lost of 2856)."""
    path = tmp_path / "outbox.sqlite3"
    write_store(path)
    db = sqlite3.connect(path)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    data = bytearray(path.read_bytes())
    page = data.index(b'"msg_id": "m1200"') // page_size
    data[page * page_size : (page + 12) * page_size] = b"\xa5" * (12 * page_size)
    path.write_bytes(bytes(data))
    readable = 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    for seq in range(1, N + 1):
        try:
            readable += db.execute("SELECT body FROM msg NOT INDEXED WHERE seq = ?", (seq,)).fetchone() is not None
        except sqlite3.DatabaseError:
            pass
    db.close()
    assert 2000 < readable < N

    ob, _first = run(salvaged(path))
    assert ob.recovery is not None and ob.recovery.salvaged == readable, (ob.recovery.salvaged, readable)
    lost = sum(b - a + 1 for a, b in ob.recovery.unreadable or [])
    assert lost == N - readable


def test_a_second_replacement_during_a_salvage_carries_the_first_salvage_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fresh store is found damaged in its turn while the first salvage runs: the first salvage goes
    on into the next store from its cursor, and the second damaged file (the SOS and what was salvaged
    so far) is salvaged too: every message reaches the last store (the review found half of them lost)."""
    path = tmp_path / "outbox.sqlite3"
    write_store(path)
    damage_root_of(path, "msg_lane_device_seq")
    monkeypatch.setattr(outbox_mod, "REPLACE_MIN_S", 0.0)
    real_rows_after = DamagedStore.rows_after

    def slow_rows_after(self: DamagedStore, seq: int, limit: int = 500) -> Any:
        time.sleep(0.05)
        return real_rows_after(self, seq, limit)

    monkeypatch.setattr(DamagedStore, "rows_after", slow_rows_after)

    async def go() -> Outbox:
        async with Outbox(path) as ob:
            runner = asyncio.create_task(ob.run())
            sos = ob.submit(NewMessage(Lane.ALERT, "t/sos", b'{"msg_id": "sos-now"}', "sos-1", time.time()))
            async with asyncio.timeout(10):
                await sos
            await until(lambda: ob.recovery is not None and 500 <= ob.recovery.cursor < 2500, 20, "half way")
            first = ob.recovery
            await ob._call(ob._replace_while_running, outbox_mod._Damaged("found damaged in its turn"))
            assert ob.recovery is not first and any(r is first for r in ob.earlier)
            await until(lambda: first.done and ob.recovery is not None and ob.recovery.done, 30, "both salvages")
            assert not ob.earlier
            runner.cancel()
            return ob

    run(go())
    ids = {json.loads(r[4])["msg_id"] for r in stored(path)}
    assert ids == {"sos-now", *(f"m{i}" for i in range(N))}
    asides = [p for p in tmp_path.glob("outbox.sqlite3.damaged-*") if not p.name.endswith(("-wal", "-shm"))]
    assert len(asides) == 2, "the second damaged file never over the first"


def test_a_file_that_is_not_a_database_any_more_gives_a_fresh_store_at_once(tmp_path: Path) -> None:
    """The first page is garbage (SQLite: "file is not a database"): nothing can be read back, which the
    record says; the SOS is committed all the same."""
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(b"this is not a database" * 500)
    ob, first_alert = run(salvaged(path))
    rec = ob.recovery
    assert rec is not None and rec.done and rec.salvaged == 0 and rec.old_stream is None and rec.old_last_seq is None
    assert "not a database" in rec.reason
    assert json.loads(first_alert.body)["msg_id"] == "sos-now"
    assert Path(rec.aside).read_bytes().startswith(b"this is not a database")


def test_a_salvage_interrupted_by_a_restart_goes_on_where_it_was(tmp_path: Path) -> None:
    """The record is saved after each batch: a daemon stopped in the middle goes on from the cursor (the
    alerts already salvaged are not salvaged twice)."""
    path = tmp_path / "outbox.sqlite3"
    before = write_store(path)
    damage_root_of(path, "msg_lane_device_seq")  # an index damaged: the table itself reads whole
    cut = 2000

    def stopped_at_the_cut(ob: Outbox) -> None:
        assert ob.recovery is not None
        # as if the first run had salvaged the alerts and the table up to seq `cut`, then stopped
        ob.recovery.started, ob.recovery.cursor = True, cut
        ob.recovery.alert_seqs = [r[0] for r in before if r[1] == Lane.ALERT]
        ob.recovery.salvaged = 3 + sum(1 for r in before if r[0] <= cut and r[1] != Lane.ALERT)

    ob, _first = run(salvaged(path, stopped_at_the_cut))
    rec = ob.recovery
    assert rec is not None and rec.done and not rec.unreadable
    ids = [json.loads(r[4])["msg_id"] for r in stored(path)]
    expected = [f"m{r[0] - 1}" for r in before if r[0] > cut and r[1] != Lane.ALERT]
    assert sorted(i for i in ids if i != "sos-now") == sorted(expected), "only what was after the cursor"
    assert rec.salvaged == 3 + sum(1 for r in before if r[1] != Lane.ALERT)


def test_a_store_damaged_while_running_is_replaced_and_the_sos_committed_at_once(tmp_path: Path) -> None:
    """The SD card damages pages under the running daemon. Before, every commit then failed ("database
    disk image is malformed": the acked seqs' leaf page could not be read): the SOS was kept in memory and
    retried every second, for ever, and no reading was accepted any more. Now the first commit to meet
    the damage replaces the store: the same commit goes to a fresh one at once, whose seqs go on after the
    damaged one's (no ack or cursor of the uplink can touch them), and the rest is salvaged as at an open."""
    path = tmp_path / "outbox.sqlite3"
    n = 20_000  # 20 MB: the oldest pages are long out of SQLite's page cache

    async def go() -> tuple[Outbox, int, list[StoredMessage]]:
        async with Outbox(path) as ob:
            runner = asyncio.create_task(ob.run())
            futs = [
                ob.submit(NewMessage(Lane.OBSERVATION, "t/d", body(i) + b" " * 700, "d", time.time())) for i in range(n)
            ]
            assert (await asyncio.gather(*futs))[-1] == n
            old_stream = ob.stream
            fetched = await ob.fetch(Lane.OBSERVATION, 0, 1)  # sent after the replacement (below)
            db = sqlite3.connect(path)  # the pages on disk, not in the WAL
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.close()
            damage_page_of(path, b'"msg_id": "m5"')
            ob.ack(range(1, 11))  # their delete reads the damaged page
            sos = ob.submit(NewMessage(Lane.ALERT, "t/sos", b'{"msg_id": "sos-now"}', "sos-1", time.time()))
            async with asyncio.timeout(10):
                seq = await sos
            await until(lambda: ob.recovery is not None and ob.recovery.done, 60, "the salvage done")
            assert ob.recovery is not None and ob.recovery.old_stream == old_stream != ob.stream
            # what was read from the damaged store goes out under its stream, what is read now under the new
            assert fetched[0].stream == old_stream
            first = await ob.fetch(Lane.ALERT, 0, 10)
            assert first[0].stream == ob.stream
            runner.cancel()
            return ob, seq, first

    ob, seq, alerts = run(go())
    rec = ob.recovery
    assert rec is not None and rec.old_last_seq == n and "while running" in rec.reason
    assert seq == n + 1 and ob.stream_first_seq == n + 1, "the fresh stream goes on after the damaged one"
    assert [json.loads(m.body)["msg_id"] for m in alerts] == ["sos-now"]
    lost = {s for a, b in rec.unreadable or [] for s in range(a, b + 1)}
    assert 6 in lost and len(lost) < 100
    ids = [json.loads(r[4])["msg_id"] for r in stored(path) if r[1] == Lane.OBSERVATION]
    assert sorted(ids) == sorted(f"m{i}" for i in range(n) if i + 1 not in lost), "the acked ones too (redelivery)"
    assert min(r[0] for r in stored(path)) > n
    assert rec.salvaged == n - len(lost)


def test_the_daemon_s_outbox_checks_the_store_beside_the_first_commits_and_replaces_it_if_damaged(
    tmp_path: Path,
) -> None:
    """With ``open_in_run`` (the daemon) the integrity check reads the whole store on its own connection
    while the committer commits: the SOS is committed before the check's verdict, and the damage it finds
    (an index page, which no commit here reads) replaces the store as at an open."""
    path = tmp_path / "outbox.sqlite3"
    before = write_store(path)
    damage_middle_leaf_of(path, "msg_lane_seq")  # neither the open nor a commit of an alert reads it

    async def go() -> tuple[Outbox, int, bool]:
        async with Outbox(path, open_in_run=True) as ob:
            runner = asyncio.create_task(ob.run())
            sos = ob.submit(NewMessage(Lane.ALERT, "t/sos", b'{"msg_id": "sos-now"}', "sos-1", time.time()))
            async with asyncio.timeout(10):
                seq = await sos
            await until(lambda: ob.recovery is not None and ob.recovery.done, 30, "the check's replacement")
            runner.cancel()
            return ob, seq, True

    ob, seq, _ = run(go())
    rec = ob.recovery
    assert rec is not None and "integrity check" in rec.reason and not rec.unreadable
    assert seq == N + 1, "committed in the store as it was, before the check's verdict"
    ids = sorted(json.loads(r[4])["msg_id"] for r in stored(path))
    assert ids == sorted(["sos-now", *(f"m{r[0] - 1}" for r in before)]), "everything, the SOS too, salvaged"
    assert rec.salvaged == N + 1 and ob.stream_first_seq == N + 2


def test_the_check_s_verdict_never_replaces_a_store_that_replaced_the_one_it_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The integrity check reads the file it opened; should a read meet the damage first and replace the
    store, the check's late verdict (damaged) is about the old file: it must not move the fresh store,
    with the SOS and everything salvaged into it, aside (the review found it did)."""
    path = tmp_path / "outbox.sqlite3"
    write_store(path)
    damage_middle_leaf_of(path, "msg_lane_seq")
    gate, checked = threading.Event(), threading.Event()
    real_check = outbox_mod._quick_check

    def late_check(db: sqlite3.Connection) -> str:
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # the check has the old file open
        assert gate.wait(20)
        try:
            return real_check(db)
        finally:
            checked.set()

    monkeypatch.setattr(outbox_mod, "_quick_check", late_check)
    monkeypatch.setattr(outbox_mod, "REPLACE_MIN_S", 0.0)  # the verdict may come long after (a big store)

    async def go() -> Outbox:
        async with Outbox(path, open_in_run=True) as ob:
            runner = asyncio.create_task(ob.run())
            await ob.opened()
            first = ob.stream
            await ob.fetch(Lane.OBSERVATION, 0, 3000)  # reads the damaged leaf: replaced at once
            assert ob.recovery is not None and ob.stream != first
            gate.set()  # the check, still on the old file, goes on (and is stopped: its verdict is moot)
            await until(checked.is_set, 20, "the check's end on the old file")
            await until(lambda: ob.recovery is not None and ob.recovery.done, 30, "the salvage")
            # a verdict that was in before the stop (the check finished first): about the old store only
            await ob._call(ob._replace_if_current, first, outbox_mod._Damaged("it failed its integrity check"))
            runner.cancel()
            return ob

    ob = run(go())
    asides = [p.name for p in tmp_path.glob("outbox.sqlite3.damaged-*") if not p.name.endswith(("-wal", "-shm"))]
    assert len(asides) == 1, asides
    assert ob.recovery is not None and ob.recovery.salvaged > 0
    assert len(stored(path)) == ob.recovery.salvaged, "the fresh store kept what was salvaged into it"


def test_a_replacement_while_running_starts_a_new_uplink_session_and_the_sos_arrives(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    """The uplink's session counts what it has in flight and where it fetched up to, in the old store's
    seqs: after a replacement while running it starts a new session from the fresh store (the review
    found an SOS in the fresh store could wait behind the old store's in-flight alerts)."""
    from drivers.base import ButtonPress
    from drivers.reconnect import ConnState
    from tests.test_uplink import gateway, plain

    async def go() -> tuple[int, int]:
        async with gateway(tmp_path, plain(broker.port)) as (ob, up, pl):
            await until(lambda: up.state is ConnState.CONNECTED, what="connected")
            assert broker.proc is not None
            broker.proc.send_signal(signal.SIGSTOP)  # frozen: nothing is acked, the old rows stay (in flight)
            try:
                connects = await damaged_under_the_session(ob, up)
                pl.sink(ButtonPress("sos-1", time.time(), "after-the-damage"))
                await until(lambda: ob.recovery is not None, 10, "the store replaced")
            finally:
                broker.proc.send_signal(signal.SIGCONT)
            await until(lambda: up.reconnector.connects > connects, 30, "a new uplink session")
            await until(lambda: [a for a in cloud.of_type("alert") if a["device_id"] == "sos-1"], 20, "the SOS")
            return connects, up.reconnector.connects

    async def damaged_under_the_session(ob: Outbox, up: Any) -> int:
        """Readings in flight to the frozen broker, then the store found damaged (as a commit or a read
        meeting a damaged page does: that detection is tested above, here it is the uplink's turn)."""
        futs = [
            ob.submit(NewMessage(Lane.OBSERVATION, "t/d", body(i) + b" " * 700, "d", time.time())) for i in range(2_000)
        ]
        await asyncio.gather(*futs)
        connects = up.reconnector.connects
        assert await ob._call(ob._replace_while_running, outbox_mod._Damaged("database disk image is malformed"))
        return int(connects)

    before, after = run(go())
    assert after > before
    sos = [a for a in cloud.of_type("alert") if a["device_id"] == "sos-1"]
    assert len(sos) == 1 and sos[0]["seq"] > 2_000


# -- the daemon ---------------------------------------------------------------------------------


def test_the_daemon_starts_on_a_damaged_outbox_sends_what_it_held_and_a_new_sos(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    """An SOS pressed while the broker was away waits in the outbox; the SD card then damages the store.
    The daemon (before: "failed its integrity check", exit 1 at every start) starts, the waiting SOS
    reaches the cloud with its msg_id, a new press does too, and the retained status says which stream
    was replaced and how much of it came back; ``gatewayctl doctor`` warns about the SD card."""
    link = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_DMG-if00-port0"
    data = tmp_path / "data"

    async def press_offline() -> None:
        config = gateway_config(tmp_path, free_port(), devices=rfxtrx_device(link))  # no broker there
        gw = GatewayProcess(config)
        async with RfxtrxSimulator(link) as sim:
            gw.start()
            try:
                await until(lambda: sim.started, 20, "the daemon to start the receiver")
                await sim.press(0xA1B2C3, repeats=3, gap_s=0.03)
                await until(
                    lambda: (st := status_via_ctl(config)) is not None and st["outbox"]["depth"]["alert"] == 1,
                    20,
                    "the SOS committed",
                )
                gw.terminate()
            finally:
                gw.stop_quietly()

    run(press_offline())
    waiting = [json.loads(r[4])["msg_id"] for r in stored(data / "outbox.sqlite3") if r[1] == Lane.ALERT]
    assert len(waiting) == 1
    damage_root_of(data / "outbox.sqlite3", "msg_lane_device_seq")

    config = gateway_config(tmp_path, broker.port, devices=rfxtrx_device(link))
    gw = GatewayProcess(config)

    async def restart() -> dict[str, Any]:
        async with RfxtrxSimulator(link) as sim:
            gw.start()
            try:
                await until(lambda: sim.started, 20, "the daemon to start the receiver on a damaged store")
                await until(lambda: [a for a in cloud.of_type("alert") if a["msg_id"] == waiting[0]], 20, "the old SOS")
                await sim.press(0xA1B2C3, repeats=3, gap_s=0.03)
                await until(lambda: len(cloud.of_type("alert")) >= 2, 20, "the new SOS")
                st = await until(lambda: status_via_ctl(config), 20, "the status")
            finally:
                gw.stop_quietly()
            return st  # type: ignore[no-any-return]

    status = run(restart())
    alerts = cloud.of_type("alert")
    assert alerts[0]["msg_id"] == waiting[0] and len({a["msg_id"] for a in alerts}) == 2
    rec = status["outbox"]["recovered"]
    assert rec["done"] and rec["salvaged"] >= 1 and rec["unreadable_ranges"] == [] and rec["stream"]
    assert alerts[0]["stream"] != rec["stream"], "sent again in the new stream"
    retained = [d for _, t, d, r in cloud.poll() if t.endswith("/status") and d["state"] == "online"]
    assert retained and retained[-1]["recovered_from"]["stream"] == rec["stream"]
    assert retained[-1]["recovered_from"]["done"], "published again when the salvage was done"
    assert "failed its integrity check" in gw.log() or "malformed" in gw.log()

    doctor = subprocess.run(
        [sys.executable, "-m", "gateway.ctl", "--config", str(config), "--json", "doctor"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    found = {f["id"]: f for f in json.loads(doctor.stdout)["findings"]}
    assert found["outbox"]["status"] == "warn" and "damaged" in found["outbox"]["message"], found["outbox"]
    assert rec["aside"] in found["outbox"]["message"]


def test_a_fresh_store_a_full_disk_refuses_is_made_when_there_is_room_and_the_sos_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store is found damaged while running on a disk another program filled to the last block, and
    the released reserve is too small for a fresh store: no store at all for a while. The SOS pressed then
    is kept in memory and tried again (not failed); once the disk has room, the fresh store is made, the
    SOS committed in it, and the damaged store salvaged into it."""
    monkeypatch.setattr(outbox_mod, "DISK_CHECK_S", 0.0)
    n = 2000

    async def go(disk: Path) -> dict[str, Any]:
        async with Outbox(disk / "outbox.sqlite3", reserve_bytes=8192) as ob:
            runner = asyncio.create_task(ob.run())
            try:
                futs = [ob.submit(NewMessage(Lane.OBSERVATION, "t/d", body(i), "d", time.time())) for i in range(n)]
                assert (await asyncio.gather(*futs))[-1] == n
                old_stream = ob.stream
                db = sqlite3.connect(ob.path)
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                db.close()
                damage_page_of(ob.path, b'"msg_id": "m5"')
                fill(disk / "syslog")
                ob.ack(range(1, 11))  # their delete reads the damaged page: the replacement cannot be made
                await until(lambda: ob._lost is not None, 10, "the fresh store refused by the full disk")
                sos = ob.submit(NewMessage(Lane.ALERT, "t/sos", b'{"msg_id": "sos-now"}', "sos-1", time.time()))
                await asyncio.sleep(2.5 * outbox_mod.COMMIT_RETRY_S)
                waiting = (sos.done(), ob.alerts_retrying())
                (disk / "syslog").unlink()
                async with asyncio.timeout(10 * outbox_mod.COMMIT_RETRY_S):
                    seq = await sos
                await until(lambda: ob.recovery is not None and ob.recovery.done, 30, "the salvage done")
                return {
                    "waiting": waiting,
                    "seq": seq,
                    "streams": (old_stream, ob.stream),
                    "alerts": [json.loads(m.body)["msg_id"] for m in await ob.fetch(Lane.ALERT, 0, 10)],
                    "rec": ob.recovery,
                    "stored": stored(ob.path),
                }
            finally:
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)

    with small_disk(tmp_path / "disk", "8m") as disk:
        r = run(go(disk))
    assert r["waiting"] == (False, 1), "the SOS waits in memory while there is no store, not failed"
    assert r["seq"] == n + 1 and r["alerts"] == ["sos-now"], "committed in the fresh store, after the old seqs"
    old, new = r["streams"]
    rec = r["rec"]
    assert old != new and rec.old_stream == old and rec.old_last_seq == n
    lost = {s for a, b in rec.unreadable or [] for s in range(a, b + 1)}
    ids = [json.loads(row[4])["msg_id"] for row in r["stored"] if row[1] == Lane.OBSERVATION]
    assert 6 in lost and sorted(ids) == sorted(f"m{i}" for i in range(n) if i + 1 not in lost)


def test_a_stop_interrupts_the_integrity_check_instead_of_waiting_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check of a big store on an SD card reads the whole file (seconds): a stop must not wait for it.
    The stop sets the check's progress handler, and SQLite interrupts the check (SQLITE_INTERRUPT)."""
    path = tmp_path / "outbox.sqlite3"
    write_store(path, 30_000)
    started, stopping = threading.Event(), threading.Event()
    outcome: list[object] = []
    real_check = outbox_mod._quick_check

    def check_at_the_stop(db: sqlite3.Connection) -> str:
        started.set()
        assert stopping.wait(20)  # the whole check runs after the stop began
        try:
            verdict = real_check(db)
        except sqlite3.Error as exc:
            outcome.append(exc)
            raise
        outcome.append(verdict)
        return verdict

    monkeypatch.setattr(outbox_mod, "_quick_check", check_at_the_stop)

    async def go() -> BaseException | None:
        async with Outbox(path, open_in_run=True) as ob:
            runner = asyncio.create_task(ob.run())
            await until(started.is_set, 20, "the check started")
            runner.cancel()
            stopping.set()
            done = await asyncio.gather(runner, return_exceptions=True)
            return done[0] if isinstance(done[0], BaseException) else None

    assert isinstance(run(go()), asyncio.CancelledError)
    assert len(outcome) == 1 and isinstance(outcome[0], sqlite3.OperationalError), outcome
    assert outcome[0].sqlite_errorcode == sqlite3.SQLITE_INTERRUPT


def test_a_damaged_file_that_cannot_be_opened_for_a_moment_is_salvaged_when_it_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen in a full run: the salvage opened the damaged file the moment the store that used it closed,
    and SQLite answered SQLITE_IOERR_SHORT_READ. That was read as "not a database: nothing to read", and
    the salvage ended with nothing salvaged and nothing reported lost. Now an error that is not damage
    (here a real lock of another connection on the file) makes the salvage wait and try again."""
    path = tmp_path / "outbox.sqlite3"
    before = write_store(path)
    damage_middle_leaf_of(path, "msg_lane_seq")
    monkeypatch.setattr(outbox_mod, "SALVAGE_RETRY_S", 0.05)
    real_open = outbox_mod._open_damaged
    refused: list[str] = []

    def locked_at_first(aside: Path) -> DamagedStore | None:
        if refused:
            return real_open(aside)
        lock = sqlite3.connect(aside, timeout=0)
        lock.execute("PRAGMA locking_mode=EXCLUSIVE")
        lock.execute("BEGIN EXCLUSIVE")
        try:
            return real_open(aside)
        except Exception as exc:
            refused.append(type(exc).__name__)
            raise
        finally:
            lock.close()

    monkeypatch.setattr(outbox_mod, "_open_damaged", locked_at_first)

    async def go() -> Outbox:
        async with Outbox(path, open_in_run=True) as ob:
            runner = asyncio.create_task(ob.run())
            await ob.opened()
            await ob.fetch(Lane.OBSERVATION, 0, 3000)  # reads the damaged leaf: replaced, salvaged
            await until(lambda: ob.recovery is not None and ob.recovery.done, 30, "the salvage")
            runner.cancel()
            return ob

    ob = run(go())
    assert refused == ["StoreUnavailable"], "the first open met the lock"
    rec = ob.recovery
    assert rec is not None and rec.error is None and rec.salvaged == len(before) and not rec.unreadable
