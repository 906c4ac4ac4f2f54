"""Backlog drain: N observations buffered while the broker is down, then the broker comes back.

A real ``gatewayd`` process with the RFXtrx SOS receiver attached (simulator on a pty). Its outbox is
filled with N observations (default 1,000,000) while the broker is down; then the broker starts and we
measure the seconds until the outbox is empty, and the SOS press-to-broker latency of presses made
during the drain (one every 250 ms, from the moment the gateway is connected again) and afterwards
when idle. Latency = time the cloud subscriber gets the alert minus the time the press's first radio
frame left the simulated receiver (both on this process's monotonic clock).

    .venv/bin/python bench/backlog_drain.py [--messages 1000000] [--quick]

Before that, in the same run, raw paho-mqtt publishes the same N rows (read from the same file, in seq
order, QoS 1, 100 in flight) to the same broker: ``drain_ratio`` = our drain seconds / raw paho seconds
(paho deletes nothing and keeps no state: the cost of the outbox is the difference).

Ends with ``RESULT drain_s=... drain_ratio=... paho_drain_s=... sos_p50_ms=... sos_p99_ms=...
sos_idle_p99_ms=... rss_mb=... disk_bytes_per_msg=...`` (rss: gatewayd's peak RSS; disk: gatewayd's
write_bytes during the drain per drained message, i.e. the cost of deleting what the broker acknowledged).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bench._common import TopicWatch, paho_publish, pct, peak_rss_mb, proc_io, result_line, scratch_dir
from drivers.base import Measurement
from gateway.messages import Topics, observation
from gateway.outbox import Outbox
from simulators.broker import Mosquitto, free_port
from simulators.rfxtrx_sim import RfxtrxSimulator, security1_frame
from tests.helpers import GatewayProcess, gateway_config, rfxtrx_device, status_via_ctl

GW = "gw-drain"


async def fill(path: Path, n: int) -> None:
    topics = Topics("homecare/v1", GW)
    t0 = time.time() - 3600  # captured an hour ago: the drain sends them as historical
    async with Outbox(path, max_bytes=4 << 30) as ob:
        runner = asyncio.create_task(ob.run())
        batch = 20_000
        for start in range(0, n, batch):
            futs = [
                ob.submit(
                    observation(
                        topics,
                        Measurement(f"wrist-{i % 3}", "8867-4", 60.0 + i % 40, "/min", t0 + i * 0.003, quality=0.9),
                    )
                )
                for i in range(start, min(n, start + batch))
            ]
            await asyncio.gather(*futs)
        runner.cancel()


def raw_paho_drain(port: int, outbox: Path, n: int) -> float:
    """Seconds for raw paho to publish the outbox's rows at QoS 1 and get every PUBACK: the same
    topics and bodies the gateway will drain, read in seq order from the file (read-only)."""
    db = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT seq, topic, body FROM msg ORDER BY seq")
        msgs = ((topic, bytes(body[:-1]) + b',"seq":%d,"historical":true}' % seq) for seq, topic, body in rows)
        return paho_publish(port, msgs, n, client_id="paho-drain")
    finally:
        db.close()


async def run(args: argparse.Namespace) -> int:
    tmp = scratch_dir("bench-drain-")
    data = tmp / "data"
    data.mkdir()
    link = tmp / "usb-RFXCOM_RFXtrx433_BENCH-if00-port0"
    port = free_port()
    print(f"filling the outbox with {args.messages} observations ...", flush=True)
    t = time.perf_counter()
    await fill(data / "outbox.sqlite3", args.messages)
    print(f"  filled in {time.perf_counter() - t:.1f} s", flush=True)
    config = gateway_config(
        tmp,
        port,
        gateway_id=GW,
        devices=rfxtrx_device(link, accept_unknown=True),
        outbox_extra=f"max_bytes = {4 << 30}",
    )
    lat_drain: list[float] = []
    lat_idle: list[float] = []
    broker = Mosquitto(port=port, workdir=tmp / "broker")
    print(f"raw paho drains the same {args.messages} messages ...", flush=True)
    broker.start()
    try:
        paho_s = raw_paho_drain(port, data / "outbox.sqlite3", args.messages)
    finally:
        broker.stop()
    print(f"  raw paho: {paho_s:.1f} s ({args.messages / paho_s:.0f} msg/s)", flush=True)
    async with RfxtrxSimulator(link) as sim:
        gw = GatewayProcess(config, log_level="ERROR")
        gw.start()
        try:
            while not sim.started:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            sensor = [0x200000]

            async def press() -> tuple[str, float]:
                sensor[0] += 1
                t_press = time.monotonic()  # the first frame is the press; its repeats follow
                for _ in range(3):
                    sim.send_frame(security1_frame(0, sensor[0]))
                    await asyncio.sleep(0.01)
                return f"rfx:{sensor[0]:06x}", t_press

            watch = TopicWatch(port, f"homecare/v1/{GW}/alert", lambda _t, doc: str(doc["device_id"]))
            broker.start()
            watch.start()
            io0 = proc_io(gw.pid)["write_bytes"]
            t0 = time.monotonic()
            # Presses are timed once the gateway is back online: the reconnect (backoff) is measured apart.
            while ((await asyncio.to_thread(status_via_ctl, config)) or {}).get("uplink", {}).get(
                "state"
            ) != "connected":
                await asyncio.sleep(0.02)
            reconnect_s = time.monotonic() - t0
            pending: list[tuple[str, float]] = []
            drained_at = None
            last_poll = 0.0
            while drained_at is None:
                pending.append(await press())
                await asyncio.sleep(0.25)
                if time.monotonic() - last_poll > 1.0:
                    last_poll = time.monotonic()
                    st = (await asyncio.to_thread(status_via_ctl, config)) or {}
                    depth = st.get("outbox", {}).get("depth", {})
                    if depth and sum(depth.values()) == 0:
                        drained_at = time.monotonic()
                if time.monotonic() - t0 > args.timeout:
                    print("drain did not finish in time", flush=True)
                    break
            drain_s = (drained_at or time.monotonic()) - t0
            written = proc_io(gw.pid)["write_bytes"] - io0
            for dev, t_press in pending:
                t_seen = await asyncio.to_thread(watch.wait, dev, 10.0)
                if t_seen is not None:
                    lat_drain.append((t_seen - t_press) * 1000)
            for _ in range(args.idle_presses):
                dev, t_press = await press()
                t_seen = await asyncio.to_thread(watch.wait, dev, 10.0)
                if t_seen is not None:
                    lat_idle.append((t_seen - t_press) * 1000)
                await asyncio.sleep(0.1)
            rss = peak_rss_mb(gw.pid)
        finally:
            gw.stop_quietly()
            broker.stop()
    lost = len(pending) + args.idle_presses - len(lat_drain) - len(lat_idle)
    print(f"reconnect after the broker came back: {reconnect_s:.2f} s (backoff cap 0.5 s)")
    print(f"drain of {args.messages} observations: {drain_s:.1f} s ({args.messages / drain_s:.0f} msg/s)")
    print(f"raw paho, same messages from the same file, nothing deleted: {paho_s:.1f} s")
    print(
        f"SOS during drain: n={len(lat_drain)} p50 {pct(lat_drain, 50):.1f} ms  p99 {pct(lat_drain, 99):.1f} ms"
        f"  max {max(lat_drain, default=float('nan')):.1f} ms"
    )
    print(f"SOS idle:         n={len(lat_idle)} p50 {pct(lat_idle, 50):.1f} ms  p99 {pct(lat_idle, 99):.1f} ms")
    print(f"presses not seen at the broker within 10 s: {lost}")
    print(
        f"gatewayd peak RSS {rss:.1f} MB; disk writes during drain {written / max(1, args.messages):.0f} bytes/message"
    )
    print(
        result_line(
            drain_s=round(drain_s, 1),
            drain_ratio=round(drain_s / paho_s, 2),
            paho_drain_s=round(paho_s, 1),
            sos_p50_ms=round(pct(lat_drain, 50), 1),
            sos_p99_ms=round(pct(lat_drain, 99), 1),
            sos_idle_p99_ms=round(pct(lat_idle, 99), 1),
            rss_mb=round(rss, 1),
            disk_bytes_per_msg=round(written / max(1, args.messages)),
            lost_presses=lost,
        )
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--idle-presses", type=int, default=40)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--quick", action="store_true", help="50,000 observations (CI)")
    args = ap.parse_args()
    if args.quick:
        args.messages, args.idle_presses = 50_000, 20
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
