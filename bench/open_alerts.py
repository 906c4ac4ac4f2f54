"""SOS press -> committed, with many open unacknowledged alerts (issue 15, item 3).

A real ``gatewayd`` with the RFXtrx SOS receiver (simulator on a pty) and the broker unreachable (the
case when the care centre cannot acknowledge). Its care state is seeded with N open, unacknowledged SOS
alerts (default 10,000) through the registry's old whole-state setting, which the daemon migrates (so
the same bench runs on a gateway from before care.sqlite3). Then P presses (default 400) come from 40
pendants in turn (``--new-pendants``: each from a pendant never heard before), one every ``--gap-ms``;
each press is timed from its first radio frame to its row in the outbox (the outbox database is polled
read-only, WAL). The gateway's CPU time (utime + stime) over the presses is divided by their number.
The same run is made with no open alerts first.

    nice -n 10 .venv/bin/python bench/open_alerts.py [--alerts 10000] [--presses 400]

Ends with ``RESULT press_commit_p99_ms=... cpu_ratio=...`` (p99 with N open alerts; ratio of the per-press
CPU with N open alerts to that with none). Figures are noisy on a shared machine: run it twice.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import cpu_s, pct, result_line, scratch_dir
from gateway.care import SNAPSHOT_KEY
from gateway.registry import Registry
from gateway.rules import RuleEngine, WatchSettings
from simulators.broker import free_port
from simulators.rfxtrx_sim import RfxtrxSimulator, security1_frame
from tests.helpers import GatewayProcess, gateway_config, rfxtrx_device, status_via_ctl, wait_for

PENDANTS = 40  # presses rotate over them: a pendant's frames closer than 1 s would be one press


def seed(data: Path, n: int) -> None:
    """N open SOS alerts, as a storm of presses nobody acknowledged leaves them."""
    if n == 0:
        return
    engine = RuleEngine(WatchSettings())
    now = time.time()
    for i in range(n):
        dev = f"storm-{i % 500}"
        engine.open_external(f"sos-{dev}-{i}", "sos", "critical", dev, now - n + i, now)
    data.mkdir(parents=True, exist_ok=True)
    with Registry(data / "registry.json") as reg:
        reg.set(SNAPSHOT_KEY, engine.snapshot())


def alert_seq(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM msg WHERE lane = 0").fetchone()[0])


async def one_run(
    open_alerts: int, presses: int, gap_s: float, new_pendants: bool = False
) -> tuple[list[float], float, float]:
    """Latencies (ms), CPU seconds per press, seconds from exec until the state was restored."""
    tmp = scratch_dir("bench-open-alerts-")
    link = tmp / "usb-RFXCOM_RFXtrx433_OPEN-if00-port0"
    seed(tmp / "data", open_alerts)
    config = gateway_config(tmp, free_port(), devices=rfxtrx_device(link, accept_unknown=True))
    lat: list[float] = []
    async with RfxtrxSimulator(link) as sim:
        gw = GatewayProcess(config, log_level="INFO")
        t_exec = time.monotonic()
        gw.start()
        try:
            await asyncio.to_thread(wait_for, lambda: sim.started, 60, 0.05, "the receiver")
            st = await asyncio.to_thread(wait_for, lambda: status_via_ctl(config), 60, 0.2, "gatewayctl status")
            ready_s = time.monotonic() - t_exec
            restored = len(st["care"]["open_alerts"])
            if restored != open_alerts:
                raise SystemExit(f"the daemon restored {restored} open alerts, not {open_alerts}")
            db = sqlite3.connect(f"file:{tmp / 'data' / 'outbox.sqlite3'}?mode=ro", uri=True)
            await asyncio.sleep(2.0)  # let start-up settle (first tick, migration save)
            cpu0 = cpu_s(gw.pid)
            for k in range(presses):
                before = alert_seq(db)
                sensor = 0x300000 + (k if new_pendants else k % PENDANTS)
                t0 = time.monotonic()
                sim.send_frame(security1_frame(k & 0xFF, sensor))
                deadline = t0 + 10.0
                while alert_seq(db) == before:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"press {k} not committed within 10 s")
                    await asyncio.sleep(0.0005)
                lat.append((time.monotonic() - t0) * 1000)
                await asyncio.sleep(max(0.0, gap_s - (time.monotonic() - t0)))
            cpu_per_press = (cpu_s(gw.pid) - cpu0) / presses
            db.close()
            gw.terminate(30)
        finally:
            gw.stop_quietly()
    if "Traceback" in gw.log():
        raise SystemExit(f"gatewayd logged a traceback, see {gw.logfile}")
    return lat, cpu_per_press, ready_s


async def run(args: argparse.Namespace) -> int:
    figures: dict[int, tuple[list[float], float, float]] = {}
    for n in (0, args.alerts):
        print(f"{n} open alerts: {args.presses} presses, one every {args.gap_ms:.0f} ms ...", flush=True)
        figures[n] = await one_run(n, args.presses, args.gap_ms / 1000, args.new_pendants)
        lat, cpu, ready = figures[n]
        print(
            f"  press -> committed p50 {pct(lat, 50):.1f} ms  p99 {pct(lat, 99):.1f} ms  max {max(lat):.1f} ms;"
            f"  CPU {cpu * 1000:.2f} ms per press; exec -> state restored and answering {ready:.2f} s",
            flush=True,
        )
    base_cpu = figures[0][1]
    lat, cpu, _ = figures[args.alerts]
    ratio = cpu / base_cpu if base_cpu > 0 else float("nan")
    print(f"machine: {os.cpu_count()} cores shared with other work; figures are noisy")
    print(
        result_line(
            press_commit_p99_ms=round(pct(lat, 99), 1),
            cpu_ratio=round(ratio, 2),
            press_commit_p99_ms_no_alerts=round(pct(figures[0][0], 99), 1),
            cpu_ms_per_press=round(cpu * 1000, 2),
            open_alerts=args.alerts,
        )
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alerts", type=int, default=10_000, help="open unacknowledged alerts seeded")
    ap.add_argument("--presses", type=int, default=400)
    ap.add_argument("--gap-ms", type=float, default=50.0, help="time between presses")
    ap.add_argument(
        "--new-pendants", action="store_true", help="every press from a pendant never heard before (the fault run's)"
    )
    return asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
