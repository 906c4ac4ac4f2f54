"""A damaged outbox: how soon an SOS is committed, how long the salvage takes, what an SOS waits meanwhile.

An outbox of ``--mb`` MB of waiting observations (1 kB each, as a long outage leaves them) is written,
closed, and two pages in the middle of its table are overwritten with garbage (a worn SD card). Then
the outbox is opened as the daemon opens it (``open_in_run``) with the page cache dropped (``--cold``,
root only: as after the power cut that came with the damage), and, in the same run:

- ``first_sos_ms``: open -> an SOS submitted at the open is committed (in the fresh store);
- ``salvage_s`` and ``salvage_msgs_per_s``: open -> every readable message committed again;
- ``sos_p50_ms`` / ``sos_max_ms``: commit latency of SOS alerts submitted every 100 ms during the
  salvage, against ``idle_p50_ms`` / ``idle_max_ms``: the same after it, on the same store
  (``sos_ratio`` = p50 during / p50 idle);
- ``lost``: the messages not salvaged (those of the damaged pages), with the seqs the record reports
  unreadable (they must agree).

    .venv/bin/python bench/outbox_salvage.py [--mb 64] [--cold]

Ends with ``RESULT first_sos_ms=... salvage_s=... salvage_msgs_per_s=... sos_p50_ms=... sos_max_ms=...
idle_p50_ms=... idle_max_ms=... sos_ratio=... lost=... unreadable_seqs=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import cpu_note, drop_page_cache, fill_outbox, result_line, scratch_dir
from gateway.outbox import Lane, NewMessage, Outbox


def damage(path: Path) -> None:
    """Two pages of the table in the middle of the file, garbage."""
    with sqlite3.connect(path) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = path.read_bytes()
    at = data.index(b'"msg_id": "m', len(data) // 2)
    with path.open("r+b") as f:
        f.seek(at // page_size * page_size)
        f.write(b"\xa5" * (2 * page_size))


def sos(i: int) -> NewMessage:
    return NewMessage(Lane.ALERT, "t/sos", json.dumps({"msg_id": f"sos-{i}"}).encode(), "sos-1", time.time())


async def measure(path: Path, mb: int) -> dict[str, float]:
    async with Outbox(path, max_bytes=(mb + 64) * 2**20, open_in_run=True) as ob:
        t0 = time.monotonic()
        runner = asyncio.create_task(ob.run())
        await ob.submit(sos(0))
        first = time.monotonic() - t0
        during: list[float] = []
        i = 1
        while ob.recovery is None or not ob.recovery.done:
            t = time.monotonic()
            await ob.submit(sos(i))
            during.append(time.monotonic() - t)
            i += 1
            await asyncio.sleep(0.1)
            if time.monotonic() - t0 > 1800:
                raise SystemExit("the salvage did not end within 30 min")
        salvage_s = time.monotonic() - t0
        idle: list[float] = []
        for _ in range(max(20, min(len(during), 100))):
            t = time.monotonic()
            await ob.submit(sos(i))
            idle.append(time.monotonic() - t)
            i += 1
            await asyncio.sleep(0.1)
        rec = ob.recovery
        runner.cancel()
    assert rec is not None
    unreadable = sum(b - a + 1 for a, b in rec.unreadable or [])
    return {
        "first_sos_ms": round(first * 1000, 1),
        "salvage_s": round(salvage_s, 2),
        "salvage_msgs_per_s": round(rec.salvaged / salvage_s),
        "sos_p50_ms": round(statistics.median(during) * 1000, 2) if during else float("nan"),
        "sos_max_ms": round(max(during) * 1000, 2) if during else float("nan"),
        "idle_p50_ms": round(statistics.median(idle) * 1000, 2),
        "idle_max_ms": round(max(idle) * 1000, 2),
        "salvaged": rec.salvaged,
        "unreadable_seqs": unreadable,
        "during_n": len(during),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=64, help="MB of waiting observations in the damaged store")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before the open (root)")
    args = ap.parse_args()
    tmp = scratch_dir("bench-salvage-")
    path = tmp / "outbox.sqlite3"
    n = fill_outbox(path, args.mb)
    damage(path)
    print(f"store: {n} messages, {path.stat().st_size / 1e6:.0f} MB, two pages damaged; {cpu_note()}", flush=True)
    if args.cold and not drop_page_cache():
        raise SystemExit("--cold needs root (it writes /proc/sys/vm/drop_caches)")
    r = asyncio.run(measure(path, args.mb))
    lost = n - int(r["salvaged"])
    print(
        f"first SOS committed {r['first_sos_ms']} ms after the open; salvage {r['salvage_s']} s "
        f"({r['salvage_msgs_per_s']} msgs/s); {r['during_n']} SOS during it: p50 {r['sos_p50_ms']} ms, "
        f"max {r['sos_max_ms']} ms; idle p50 {r['idle_p50_ms']} ms, max {r['idle_max_ms']} ms; "
        f"lost {lost} (record: {r['unreadable_seqs']} seqs unreadable)"
    )
    ratio = r["sos_p50_ms"] / r["idle_p50_ms"] if r["idle_p50_ms"] else float("nan")
    print(
        result_line(
            first_sos_ms=r["first_sos_ms"],
            salvage_s=r["salvage_s"],
            salvage_msgs_per_s=r["salvage_msgs_per_s"],
            sos_p50_ms=r["sos_p50_ms"],
            sos_max_ms=r["sos_max_ms"],
            idle_p50_ms=r["idle_p50_ms"],
            idle_max_ms=r["idle_max_ms"],
            sos_ratio=round(ratio, 2),
            lost=lost,
            unreadable_seqs=int(r["unreadable_seqs"]),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
