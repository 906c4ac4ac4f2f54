"""Messages per second through the real outbox and uplink, against raw paho QoS 1, same broker, same run.

Gateway path, per message: accepted (submit) -> committed (SQLite WAL, fsync per group commit) ->
published (paho, in-flight window) -> PUBACKed -> deleted. Peer: raw paho-mqtt publishing the same
payloads at QoS 1 with 100 in flight (its own loop thread), nothing stored, at most 10,000 awaiting their
PUBACK. Both against one local Mosquitto, alternately, several rounds; the median of each is reported.

    .venv/bin/python bench/uplink_throughput.py [--messages 100000] [--rounds 3] [--quick]

Ends with ``RESULT ratio=... gateway_msg_s=... paho_msg_s=... disk_bytes_per_msg=... rss_mb=...``.
``disk_bytes_per_msg`` is this process's /proc write_bytes during the gateway runs divided by messages;
``rss_mb`` its peak RSS (the benchmark process holds the gateway path and the peer).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bench._common import paho_publish, peak_rss_mb, proc_io, result_line
from drivers.base import Measurement
from gateway.config import UplinkSection
from gateway.messages import Topics, observation
from gateway.outbox import Outbox
from gateway.uplink import Uplink
from simulators.broker import Mosquitto

TOPICS = Topics("homecare/v1", "gw-bench")


def payloads(n: int) -> list[tuple[str, bytes, object]]:
    t0 = time.time()
    out = []
    for i in range(n):
        m = observation(
            TOPICS, Measurement(f"wrist-{i % 4}", "8867-4", 60.0 + i % 50, "/min", t0 + i * 0.01, quality=0.93)
        )
        out.append((m.topic, m.body[:-1] + b',"seq":%d,"historical":false}' % (i + 1), m))
    return out


async def gateway_run(port: int, msgs: list[tuple[str, bytes, object]], workdir: Path) -> float:
    async with Outbox(workdir / "outbox.sqlite3", max_bytes=2 << 30) as ob:
        up = Uplink(UplinkSection(host="127.0.0.1", port=port, tls=False, inflight_window=200), "gw-bench", ob)
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(ob.run()), tg.create_task(up.run())]
            while up.state.value != "connected":
                await asyncio.sleep(0.01)
            t0 = time.perf_counter()
            futs = []
            for i, (_, _, m) in enumerate(msgs):
                futs.append(ob.submit(m))  # type: ignore[arg-type]
                if i % 2000 == 1999:
                    await asyncio.sleep(0)  # a producer that yields, as drivers do
            await asyncio.gather(*futs)
            while ob.depth_total() > 0 or up.acked < len(msgs):
                await asyncio.sleep(0.002)
            elapsed = time.perf_counter() - t0
            for t in tasks:
                t.cancel()
    return len(msgs) / elapsed


def paho_run(port: int, msgs: list[tuple[str, bytes, object]]) -> float:
    return len(msgs) / paho_publish(port, ((t, p) for t, p, _ in msgs), len(msgs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="10,000 messages, 1 round (CI)")
    args = ap.parse_args()
    if args.quick:
        args.messages, args.rounds = 10_000, 1
    msgs = payloads(args.messages)
    size = sum(len(p) for _, p, _ in msgs) / len(msgs)
    print(f"{args.messages} messages of ~{size:.0f} bytes, {args.rounds} rounds, {os.cpu_count()} cores")
    ours, theirs = [], []
    written = 0
    with tempfile.TemporaryDirectory(prefix="bench-uplink-") as tmp, Mosquitto(workdir=Path(tmp) / "broker") as broker:
        for r in range(args.rounds):
            before = proc_io(os.getpid())["write_bytes"]
            rate = asyncio.run(gateway_run(broker.port, msgs, Path(tmp) / f"gw{r}"))
            written += proc_io(os.getpid())["write_bytes"] - before
            ours.append(rate)
            theirs.append(paho_run(broker.port, msgs))
            print(f"round {r + 1}: gateway {ours[-1]:8.0f} msg/s   raw paho QoS1 {theirs[-1]:8.0f} msg/s")
    g, p = statistics.median(ours), statistics.median(theirs)
    per_msg = written / (args.messages * args.rounds)
    print(f"median: gateway {g:.0f} msg/s (accepted -> committed -> PUBACKed -> deleted), paho {p:.0f} msg/s")
    print(
        result_line(
            ratio=g / p,
            gateway_msg_s=round(g),
            paho_msg_s=round(p),
            disk_bytes_per_msg=round(per_msg),
            rss_mb=round(peak_rss_mb(os.getpid()), 1),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
