"""Raw PPG notifications through the virtual BlueZ -> wrist monitor driver -> pipeline -> outbox.

The virtual BlueZ (``gateway-sim ble``, with its private dbus-daemon) runs as its own process with one
wrist monitor streaming raw PPG at ``--rate`` notifications per second (``--per-frame`` samples
each). This process runs what the gateway runs for it: the BLE driver (bleak, dbus-fast), the
pipeline, and the outbox (SQLite WAL, group commit); every Waveform block goes to the outbox's bulk
lane as the contract's ``waveform`` message (the pipeline hands waveforms to the DSP stage; the bench
adds the bulk-lane submission a ``bulk`` upload would make).

Figures: notifications per second received, samples lost (device counter gaps), and CPU per 1,000
notifications of this process (user + system, from ``time.process_time``); the simulator's and the
bus daemon's CPU are printed separately (they stand in for bluetoothd and the radio).

    .venv/bin/python bench/ble_notify.py            # 500 notifications/s for 60 s
    .venv/bin/python bench/ble_notify.py --quick    # 200/s for 10 s

Ends with ``RESULT notify_per_s=... cpu_ms_per_1000=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ADDRESS = "C0:FF:EE:00:00:01"


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


async def run(rate: float, per_frame: int, duration: float, workdir: Path) -> dict[str, float]:
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulators.bluez",
            "--workdir",
            str(workdir / "ble"),
            "--wrist",
            ADDRESS,
            "--ppg-rate",
            str(rate * per_frame),
            "--ppg-per-frame",
            str(per_frame),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sim.stdout is not None
        env: dict[str, str] = {}
        for line in sim.stdout:
            key, _, value = line.strip().partition("=")
            if value:
                env[key] = value
            if line.strip() == "ready":
                break
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = env["DBUS_SYSTEM_BUS_ADDRESS"]

        from drivers.base import DeviceSpec, Waveform
        from drivers.ble.stack import close_bleak
        from drivers.ble.wrist import WristMonitorDriver
        from gateway import messages
        from gateway.messages import Topics
        from gateway.outbox import Outbox
        from gateway.pipeline import Pipeline

        async with Outbox(workdir / "outbox.sqlite3") as outbox:
            topics = Topics("homecare/v1", "bench-gw")
            pipeline = Pipeline(topics, outbox)

            def to_bulk(reading: object) -> None:
                if isinstance(reading, Waveform):
                    outbox.submit(messages.waveform(topics, reading))

            pipeline.on_reading(to_bulk)
            opts = {k: v for k, (_, v) in WristMonitorDriver.options_schema.items()}
            opts.update(address=ADDRESS)
            drv = WristMonitorDriver(DeviceSpec("wrist-bench", "ble-wrist", "ble", opts), pipeline.sink, time.time)
            committer = asyncio.create_task(outbox.run())
            task = asyncio.create_task(drv.run())
            deadline = time.monotonic() + 30
            while drv.ppg.stats.frames < rate and time.monotonic() < deadline:  # one second of stream
                await asyncio.sleep(0.1)
            helpers = [sim.pid, *_children(sim.pid)]
            f0, s0 = drv.ppg.stats.frames, drv.ppg.stats.gap_samples
            c0, h0, t0 = time.process_time(), sum(_cpu_s(p) for p in helpers), time.monotonic()
            await asyncio.sleep(duration)
            c1, h1, t1 = time.process_time(), sum(_cpu_s(p) for p in helpers), time.monotonic()
            f1, s1 = drv.ppg.stats.frames, drv.ppg.stats.gap_samples
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.sleep(0.2)  # the last group commit
            committed = outbox.next_seq - 1
            committer.cancel()
            await asyncio.gather(committer, return_exceptions=True)
            await close_bleak()
        n = f1 - f0
        return {
            "notify_per_s": n / (t1 - t0),
            "cpu_ms_per_1000": (c1 - c0) * 1000.0 / max(1, n) * 1000.0,
            "sim_cpu_ms_per_1000": (h1 - h0) * 1000.0 / max(1, n) * 1000.0,
            "lost_samples": float(s1 - s0),
            "committed_messages": float(committed),
            "notifications": float(n),
        }
    finally:
        sim.terminate()
        sim.wait(timeout=10)
        if sim.stdout is not None:
            sim.stdout.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="notifications per second")
    parser.add_argument("--per-frame", type=int, default=1, help="samples per notification")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured")
    parser.add_argument("--quick", action="store_true", help="200/s for 10 s")
    args = parser.parse_args()
    if args.quick:
        args.rate, args.duration = 200.0, 10.0
    with tempfile.TemporaryDirectory(prefix="hcb-bench-", dir="/tmp") as tmp:
        r = asyncio.run(run(args.rate, args.per_frame, args.duration, Path(tmp)))
    print(
        f"offered {args.rate:.0f} notifications/s x {args.per_frame} sample(s) for {args.duration:.0f} s: "
        f"received {r['notify_per_s']:.1f}/s, {r['lost_samples']:.0f} samples lost, "
        f"{r['committed_messages']:.0f} messages committed; CPU per 1000 notifications: gateway "
        f"{r['cpu_ms_per_1000']:.1f} ms, virtual BlueZ + dbus-daemon {r['sim_cpu_ms_per_1000']:.1f} ms"
    )
    print(
        f"RESULT notify_per_s={r['notify_per_s']:.1f} cpu_ms_per_1000={r['cpu_ms_per_1000']:.1f} "
        f"sim_cpu_ms_per_1000={r['sim_cpu_ms_per_1000']:.1f} lost_samples={r['lost_samples']:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
