"""Soak: gatewayd with every device kind for hours, broker outages, a press a minute (issue 15, item 6).

A real ``gatewayd`` with the RFXtrx receiver and a CMS50 oximeter on ptys, and through the virtual
BlueZ a wrist monitor streaming raw PPG at 100 Hz, a blood-pressure cuff (a reading every
``--cuff-every-min``) and an SOS pendant. The broker (Mosquitto, persistent) is stopped for
``--outage-s`` every ``--outage-every-min``; an SOS press comes every minute (RFXtrx and BLE pendant in
turn). The cloud is a persistent-session subscriber checking every message against the contract.

Every ``--sample-s``: gatewayd's RSS and PSS (/proc/PID/smaps_rollup), open file descriptors, the
outbox file's size (with its WAL) and depth. At the end (broker up, outbox drained): every press must
have reached the cloud as an alert, and every seq the gateway assigned must have reached it or be
reported evicted.

    nice -n 10 .venv/bin/python bench/soak.py --hours 1
    .venv/bin/python bench/soak.py --minutes 5          # CI scale: outage and cuff intervals shrink
                                                         # to fit (at least two outages)

Ends with ``RESULT rss_growth_mb_per_h=... fd_growth=... lost=... loop_max_lag_ms=...`` (growth:
least-squares slope of RSS after the first 20 % of the run; fds: last sample minus the one at 20 %; lost:
presses not at the cloud plus seqs neither delivered nor reported evicted; loop: the longest the event
loop woke late, gateway/loopwatch.py).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import memory_mb, open_fds, restartable_port, result_line, scratch_dir
from bench.device_cpu import Devices, devices_toml, simulators
from simulators.broker import Mosquitto
from simulators.rfxtrx_sim import security1_frame
from simulators.viewer import Viewer
from tests.helpers import Collector, GatewayProcess, gateway_config, status_via_ctl, wait_for

GW = "gw-soak"
KINDS = ("wrist", "oximeter", "cuff", "pendant")


def slope_per_h(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return float("nan")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return float(statistics.linear_regression(xs, ys).slope) * 3600


async def press(sims: Devices, k: int) -> str:
    """One SOS press; returns the alert's device id as the cloud will see it."""
    if k % 2 == 0 or sims.pendant is None:
        sensor = 0x600000 + k
        for i in range(3):
            sims.rfx.send_frame(security1_frame(i, sensor))
            await asyncio.sleep(0.02)
        return f"rfx:{sensor:06x}"
    await sims.pendant.press()
    return "sos-ble"


async def run(args: argparse.Namespace) -> int:
    total_s = args.hours * 3600 if args.hours else args.minutes * 60
    outage_every = min(args.outage_every_min * 60, total_s / 3)
    outage_s = min(args.outage_s, outage_every / 4)
    cuff_every = min(args.cuff_every_min * 60, total_s / 4)
    sample_s = min(args.sample_s, total_s / 20)
    print(
        f"soak {total_s / 60:.0f} min: outage {outage_s:.0f} s every {outage_every / 60:.1f} min, press every 60 s, "
        f"cuff every {cuff_every / 60:.1f} min, samples every {sample_s:.0f} s",
        flush=True,
    )
    tmp = scratch_dir("bench-soak-")
    port = restartable_port()
    broker = Mosquitto(port=port, workdir=tmp / "broker", persistence=True)
    broker.workdir.mkdir(parents=True, exist_ok=True)
    broker.start()
    viewer = Viewer("127.0.0.1", port, session_id=f"soak-cloud-{port}")
    viewer.client.reconnect_delay_set(0.05, 0.5)
    viewer.start()
    cloud = Collector(viewer)
    config = gateway_config(tmp, port, gateway_id=GW, devices=devices_toml(tmp, KINDS))
    outbox = tmp / "data" / "outbox.sqlite3"
    samples: list[tuple[float, float, float, int, int, int]] = []  # t, rss, pss, fds, outbox bytes, depth
    pressed: list[str] = []
    outages = 0
    up_at = 0.0
    try:
        async with simulators(tmp, KINDS) as sims:
            gw = GatewayProcess(config, log_level="WARNING")
            gw.start()
            try:
                await asyncio.to_thread(wait_for, lambda: status_via_ctl(config), 60, 0.5, "gatewayd")
                t0 = time.monotonic()
                next_press, next_cuff, next_sample = t0 + 5, t0 + 10, t0
                next_outage = t0 + outage_every
                while (now := time.monotonic()) < t0 + total_s:
                    if now >= next_outage:
                        broker.stop()
                        outages += 1
                        print(f"{(now - t0) / 60:6.1f} min: broker down for {outage_s:.0f} s", flush=True)
                        next_outage += outage_every
                        up_at = now + outage_s
                    elif broker.proc is None and now >= up_at:
                        broker.start()
                        print(f"{(now - t0) / 60:6.1f} min: broker back", flush=True)
                    if now >= next_press:
                        pressed.append(await press(sims, len(pressed)))
                        next_press += 60.0
                    if sims.cuff is not None and now >= next_cuff:
                        await sims.cuff.measure()
                        next_cuff += cuff_every
                    if now >= next_sample:
                        mem = memory_mb(gw.pid)
                        size = sum(p.stat().st_size for p in (outbox, Path(f"{outbox}-wal")) if p.exists())
                        st = await asyncio.to_thread(status_via_ctl, config) or {}
                        depth = sum(st.get("outbox", {}).get("depth", {}).values())
                        link = st.get("uplink", {}).get("state", "?")
                        samples.append((now - t0, mem["rss"], mem["pss"], open_fds(gw.pid), size, depth))
                        print(
                            f"{(now - t0) / 60:6.1f} min: RSS {mem['rss']:6.1f} MB  PSS {mem['pss']:6.1f} MB  "
                            f"fds {samples[-1][3]:3d}  outbox {size / 1e6:6.2f} MB, {depth} waiting, uplink {link}",
                            flush=True,
                        )
                        next_sample += sample_s
                    await asyncio.sleep(0.2)
                if broker.proc is None:
                    broker.start()
                # drained: nothing waiting, every press at the cloud (or 120 s)
                deadline = time.monotonic() + 120
                final: dict = {}  # type: ignore[type-arg]
                while time.monotonic() < deadline:
                    final = await asyncio.to_thread(status_via_ctl, config) or {}
                    alerts = {d.get("device_id") for d in cloud.of_type("alert") if d.get("kind") == "sos"}
                    if final and sum(final["outbox"]["depth"].values()) == 0 and set(pressed) <= alerts:
                        break
                    await asyncio.sleep(1.0)
                gw.terminate(30)
            finally:
                gw.stop_quietly()
    finally:
        viewer.stop()
        broker.stop()
    if "Traceback" in gw.log():
        print(f"gatewayd logged a traceback, see {gw.logfile}")
    sos_at_cloud = [d.get("device_id") for d in cloud.of_type("alert") if d.get("kind") == "sos"]
    missing_presses = sum(1 for dev in set(pressed) if pressed.count(dev) > sos_at_cloud.count(dev))
    last_seq = final.get("outbox", {}).get("last_seq", 0) if final else 0
    evicted = final.get("outbox", {}).get("evicted_total", 0) if final else 0
    seqs = cloud.seqs()
    missing_seqs = max(0, last_seq - evicted - len({s for s in seqs if s <= last_seq}))
    warm = [s for s in samples if s[0] >= 0.2 * total_s] or samples
    rss_growth = slope_per_h([(s[0], s[1]) for s in warm])
    pss_growth = slope_per_h([(s[0], s[2]) for s in warm])
    fd_growth = warm[-1][3] - warm[0][3] if warm else 0
    print(
        f"{len(pressed)} presses ({missing_presses} not at the cloud), {outages} outages; seqs 1..{last_seq}: "
        f"{len(seqs)} at the cloud, {evicted} evicted, {missing_seqs} missing; contract violations "
        f"{len(viewer.invalid)}"
    )
    if samples:
        print(
            f"RSS {samples[0][1]:.1f} -> {samples[-1][1]:.1f} MB, PSS {samples[0][2]:.1f} -> {samples[-1][2]:.1f} MB, "
            f"fds {samples[0][3]} -> {samples[-1][3]}; growth after warm-up: RSS {rss_growth:.2f} MB/h, "
            f"PSS {pss_growth:.2f} MB/h"
        )
    loop = final.get("loop", {}) if final else {}
    print(
        f"event loop (gateway/loopwatch.py): longest lateness {loop.get('max_lag_ms', float('nan'))} ms, "
        f"{loop.get('stalls', '?')} stalls of {loop.get('stall_ms', '?')} ms or more"
    )
    print("machine: 2 cores shared with other work; a short run's slope is mostly noise")
    print(
        result_line(
            rss_growth_mb_per_h=round(rss_growth, 2),
            pss_growth_mb_per_h=round(pss_growth, 2),
            fd_growth=fd_growth,
            lost=missing_presses + missing_seqs,
            presses=len(pressed),
            outages=outages,
            rss_mb_end=round(samples[-1][1], 1) if samples else float("nan"),
            pss_mb_end=round(samples[-1][2], 1) if samples else float("nan"),
            loop_max_lag_ms=loop.get("max_lag_ms", float("nan")),
            loop_stalls=loop.get("stalls", -1),
        )
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=0.0, help="duration in hours (overrides --minutes)")
    ap.add_argument("--minutes", type=float, default=8.0, help="duration in minutes (default fits in 10)")
    ap.add_argument("--outage-every-min", type=float, default=10.0)
    ap.add_argument("--outage-s", type=float, default=60.0)
    ap.add_argument("--cuff-every-min", type=float, default=30.0)
    ap.add_argument("--sample-s", type=float, default=60.0)
    return asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
