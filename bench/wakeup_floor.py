"""What one event-loop wakeup costs on this machine, with no work in it: the floor under a device that
makes gatewayd wake for every small message (a BLE notification, a serial frame).

A child process writes a 20-byte packet on a ``SOCK_SEQPACKET`` socket pair (what BlueZ's AcquireNotify
hands over) ``--rate`` times a second; this process reads each one from an asyncio reader callback and
does nothing else. Its CPU time (user + system, ``getrusage``) per packet is the price of a wakeup.

    nice -n 10 .venv/bin/python bench/wakeup_floor.py [--rate 100] [--seconds 20]

Ends with ``RESULT us_per_wakeup=... core_pct=... rate_per_s=...``. The machine is shared: run twice.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import result_line


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def writer(sock: socket.socket, rate: float, seconds: float) -> None:
    t0 = time.monotonic()
    k = 0
    while time.monotonic() < t0 + seconds:
        k += 1
        sock.send(b"x" * 20)
        delay = t0 + k / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)


async def measure(rate: float, seconds: float) -> tuple[float, int, float]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # the "device"
        ours.close()
        try:
            writer(theirs, rate, seconds + 1.5)
        finally:
            os._exit(0)
    theirs.close()
    ours.setblocking(False)
    loop = asyncio.get_running_loop()
    got = [0]

    def on_readable() -> None:
        try:
            ours.recv(1024)
            got[0] += 1
        except BlockingIOError:
            pass

    loop.add_reader(ours.fileno(), on_readable)
    try:
        await asyncio.sleep(0.5)  # settled
        c0, n0, t0 = cpu_s(), got[0], time.monotonic()
        await asyncio.sleep(seconds)
        c1, n1, t1 = cpu_s(), got[0], time.monotonic()
    finally:
        loop.remove_reader(ours.fileno())
        ours.close()
        await asyncio.to_thread(os.waitpid, pid, 0)
    return c1 - c0, n1 - n0, t1 - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=100.0, help="packets (wakeups) a second")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured time")
    args = ap.parse_args()
    cpu, n, elapsed = asyncio.run(measure(args.rate, args.seconds))
    us = cpu / max(n, 1) * 1e6
    print(f"{n} wakeups in {elapsed:.1f} s: {cpu * 1000:.0f} ms of CPU, {us:.0f} us each")
    print("machine: 2 cores shared with other agents; the figure is noisy")
    print(result_line(us_per_wakeup=round(us), core_pct=round(100 * cpu / elapsed, 2), rate_per_s=round(n / elapsed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
