"""Start-up: exec of ``gatewayd`` -> SOS receiver open and accepting presses (issue 15, item 2).

A real ``gatewayd`` with the RFXtrx SOS receiver (simulator on a pty) is started ``--starts`` times
(default 10) on the same data directory, as after power cuts, with the broker unreachable (a loopback
port nobody listens on: no network at boot is the normal case). For each start:

- ``sos_ready``: exec -> the receiver's "start receiver" command reached the radio (from then on a
  press is on the line for the daemon);
- ``first_commit``: exec -> a press sent at that moment is a row in the outbox (polled read-only);

then the same number of starts with the broker listening, for ``connected``: exec -> the gateway's
retained ``online`` status reached a subscriber. Medians are reported.

    nice -n 10 .venv/bin/python bench/startup.py [--starts 10] [--devices rfx|all] [--backlog-mb N [--cold]]

``--backlog-mb N`` starts on an outbox holding N MB of waiting readings (a long outage; opening the store
reads it all: its integrity check and the count of what waits); ``--cold`` drops the kernel's page cache
before each start (root only), as after a power cut, so the store is read from the disk.

``--devices all`` adds a CMS50 oximeter on a pty to the configuration (the serial path the DSP follows);
BLE devices need the virtual BlueZ and are measured by bench/device_cpu.py.

Ends with ``RESULT start_to_sos_ready_ms=... start_to_first_commit_ms=... start_to_connected_ms=...``.
The machine is shared: figures are noisy (this runs with nice 10).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import TopicWatch, drop_page_cache, fill_outbox, restartable_port, result_line, scratch_dir
from bench.device_cpu import devices_toml, simulators
from simulators.broker import Mosquitto
from simulators.rfxtrx_sim import RfxtrxSimulator, security1_frame
from tests.helpers import GatewayProcess, gateway_config

GW = "gw-startup"


def alert_seq(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        try:
            return int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM msg WHERE lane = 0").fetchone()[0])
        except sqlite3.OperationalError:  # the daemon is creating the file
            return 0


async def one_start(
    config: Path, sim: RfxtrxSimulator, sensor: int, watch: TopicWatch | None
) -> tuple[float, float | None, float | None]:
    outbox = config.parent / "data" / "outbox.sqlite3"
    before = alert_seq(outbox)
    if watch is not None:
        watch.seen.pop("online", None)
    gw = GatewayProcess(config, log_level="WARNING")
    t0 = time.monotonic()
    gw.start()
    try:
        while not sim.started:
            if not gw.alive():
                raise SystemExit(f"gatewayd exited, see {gw.logfile}")
            if time.monotonic() - t0 > 30:
                raise SystemExit("the receiver was not started within 30 s")
            await asyncio.sleep(0.001)
        ready = time.monotonic() - t0
        sim.send_frame(security1_frame(sensor & 0xFF, sensor))
        commit = None
        while commit is None and time.monotonic() - t0 < 30:
            if alert_seq(outbox) > before:
                commit = time.monotonic() - t0
            else:
                await asyncio.sleep(0.002)
        connected = None
        if watch is not None:
            seen = await asyncio.to_thread(watch.wait, "online", 30.0)
            connected = None if seen is None else seen - t0
        gw.terminate(30)
    finally:
        gw.stop_quietly()
        sim.started = False  # the next start must start it again
    return ready, commit, connected


def median_ms(values: list[float | None]) -> float:
    got = [v for v in values if v is not None]
    return round(statistics.median(got) * 1000, 1) if got else float("nan")


async def run(args: argparse.Namespace) -> int:
    tmp = scratch_dir("bench-startup-")
    port = restartable_port()
    kinds = ("oximeter",) if args.devices == "all" else ()
    budget = f"max_bytes = {(args.backlog_mb + 64) * 2**20}" if args.backlog_mb else ""
    config = gateway_config(tmp, port, gateway_id=GW, devices=devices_toml(tmp, kinds), outbox_extra=budget)
    if args.backlog_mb:
        await asyncio.to_thread(
            fill_outbox, tmp / "data" / "outbox.sqlite3", args.backlog_mb, f"homecare/v1/{GW}/obs/w"
        )
        print(f"outbox prefilled: {(tmp / 'data' / 'outbox.sqlite3').stat().st_size / 1e6:.0f} MB", flush=True)
    if args.cold and not drop_page_cache():
        raise SystemExit("--cold needs root (it writes /proc/sys/vm/drop_caches)")
    offline: list[tuple[float, float | None, float | None]] = []
    online: list[tuple[float, float | None, float | None]] = []
    async with simulators(tmp, kinds) as sims:
        sim = sims.rfx
        for i in range(args.starts):
            if args.cold:
                drop_page_cache()
            offline.append(await one_start(config, sim, 0x400000 + i, None))
            print(f"start {i + 1} (broker unreachable): sos ready {offline[-1][0] * 1000:.0f} ms", flush=True)
        broker = Mosquitto(port=port, workdir=tmp / "broker")
        broker.start()
        watch = TopicWatch(
            port, f"homecare/v1/{GW}/status", lambda _t, doc: "online" if doc.get("state") == "online" else None
        )
        watch.start()
        try:
            for i in range(args.starts):
                if args.cold:
                    drop_page_cache()
                online.append(await one_start(config, sim, 0x500000 + i, watch))
                r = online[-1]
                print(
                    f"start {i + 1} (broker up): sos ready {r[0] * 1000:.0f} ms, connected "
                    f"{(r[2] or float('nan')) * 1000:.0f} ms",
                    flush=True,
                )
        finally:
            watch.stop()
            broker.stop()
    ready = median_ms([r[0] for r in offline])
    commit = median_ms([r[1] for r in offline])
    connected = median_ms([r[2] for r in online])
    print(
        f"medians of {args.starts} starts; devices: {args.devices}; backlog {args.backlog_mb} MB"
        f"{', cold page cache' if args.cold else ''}; shared 2-core machine, nice 10: noisy"
    )
    print(f"sos ready with the broker up: {median_ms([r[0] for r in online])} ms")
    lost = sum(1 for r in offline if r[1] is None)
    print(
        result_line(
            start_to_sos_ready_ms=ready,
            start_to_first_commit_ms=commit,
            start_to_connected_ms=connected,
            presses_not_committed=lost,
        )
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--starts", type=int, default=10)
    ap.add_argument("--devices", choices=("rfx", "all"), default="rfx")
    ap.add_argument("--backlog-mb", type=int, default=0, help="start on an outbox holding this many MB")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each start (root)")
    return asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
