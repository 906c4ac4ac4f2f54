"""A Beurer BM58-style blood-pressure monitor on a pty (the protocol of :mod:`drivers.serial.bpm`).

It answers ``AA`` with ``55``, ``A4`` with its description, ``A2`` with the number of stored records
and ``A3 i`` with record *i* (or ``A9``). ``measure()`` adds a reading taken "now" on the monitor's clock,
as the person at home does while the gateway may be away. Faults: unplug/plug (also behind another
pty), ``silent`` (the monitor is off / not in PC mode), line noise before replies, dropped bytes and
corrupted replies (the protocol has no checksum, so "lying" means a wrong header or impossible values,
which the driver must reject and re-request).

Command line (``gateway-sim bp``): commands on stdin: ``measure [SYS DIA PULSE]``, ``unplug``, ``plug``,
``silent on|off``, ``noise N``, ``drop RATE``, ``corrupt RATE``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import random
import sys
from pathlib import Path

from drivers.serial import bpm
from simulators.serialpty import PtyDevice

log = logging.getLogger(__name__)

DESCRIPTION = b"Andon Blood Pressure Meter KD001"  # 32 bytes, like the reply the clients read


class BpSimulator:
    def __init__(
        self,
        link_path: str | os.PathLike[str],
        *,
        capacity: int = 60,
        seed: int = 0,
        alias_path: str | None = None,
    ) -> None:
        self.dev = PtyDevice(link_path, self._on_bytes, alias_path=alias_path)
        self.records: list[bpm.BpRecord] = []  # index 0 = record 1 = newest, like a memory display
        self.capacity = capacity
        self.rng = random.Random(seed)
        self.silent = False
        self.drop_rate = 0.0
        self.corrupt_rate = 0.0
        self.noise_before_reply = 0
        self.requests: list[bytes] = []
        self._pending = bytearray()

    async def __aenter__(self) -> BpSimulator:
        await self.dev.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.dev.__aexit__(*exc)

    def unplug(self) -> None:
        self._pending.clear()
        self.dev.unplug()

    def plug(self, link_path: str | os.PathLike[str] | None = None) -> None:
        self.dev.plug(link_path)

    def measure(
        self,
        systolic: int | None = None,
        diastolic: int | None = None,
        pulse: int | None = None,
        *,
        taken: dt.datetime | None = None,
    ) -> bpm.BpRecord:
        """Take a reading now (device clock, minute resolution) and store it."""
        taken = (taken or dt.datetime.now()).replace(second=0, microsecond=0)
        systolic = systolic if systolic is not None else self.rng.randint(110, 150)
        diastolic = diastolic if diastolic is not None else self.rng.randint(65, min(95, systolic - 20))
        pulse = pulse if pulse is not None else self.rng.randint(55, 90)
        rec = bpm.BpRecord(systolic, diastolic, pulse, taken)
        self.records.insert(0, rec)
        del self.records[self.capacity :]
        return rec

    def _reply(self, data: bytes, *, corruptible: bool = True) -> None:
        out = bytearray(self.rng.randrange(256) for _ in range(self.noise_before_reply))
        self.noise_before_reply = 0  # one burst of line noise, in front of the next reply
        for b in data:
            if self.drop_rate and self.rng.random() < self.drop_rate:
                continue
            if corruptible and self.corrupt_rate and self.rng.random() < self.corrupt_rate:
                b ^= 1 << self.rng.randrange(8)
            out.append(b)
        self.dev.write(bytes(out))

    def _on_bytes(self, data: bytes) -> None:
        self._pending += data
        while self._pending:
            if self.silent:
                self._pending.clear()
                return
            op = self._pending[0]
            if op == bpm.RECORD:
                if len(self._pending) < 2:
                    return
                index = self._pending[1]
                self.requests.append(bytes(self._pending[:2]))
                del self._pending[:2]
                if 1 <= index <= len(self.records):
                    self._reply(bpm.encode_record(self.records[index - 1]))
                else:
                    self._reply(bytes([bpm.NO_RECORD]))
                continue
            self.requests.append(bytes([op]))
            del self._pending[0]
            if op == bpm.PING[0]:
                self._reply(bytes([bpm.PONG]))
            elif op == bpm.IDENTIFY[0]:
                self._reply(DESCRIPTION, corruptible=False)
            elif op == bpm.COUNT[0]:
                self._reply(bytes([len(self.records)]))
            # anything else: ignored, like the firmware


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--link", required=True, help="stable path to create, e.g. a by-id style symlink")
    parser.add_argument("--records", type=int, default=3, help="readings stored at start")
    parser.add_argument("--every", type=float, default=0.0, help="take a reading every N seconds")
    parser.add_argument("--drop-rate", type=float, default=0.0)
    parser.add_argument("--corrupt-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)


async def _run(args: argparse.Namespace) -> int:
    async with BpSimulator(Path(args.link), seed=args.seed) as sim:
        sim.drop_rate, sim.corrupt_rate = args.drop_rate, args.corrupt_rate
        now = dt.datetime.now()
        for i in range(args.records, 0, -1):
            sim.measure(taken=now - dt.timedelta(hours=i))
        print(f"bp: monitor at {args.link} -> {sim.dev.slave_name} ({len(sim.records)} records)", flush=True)

        async def schedule() -> None:
            while args.every > 0:
                await asyncio.sleep(args.every)
                sim.measure()
                print("bp: measured", flush=True)
            await asyncio.Event().wait()

        async def commands() -> None:
            loop = asyncio.get_running_loop()
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line:
                    await asyncio.Event().wait()
                words = line.split()
                if not words:
                    continue
                cmd, rest = words[0], words[1:]
                try:
                    if cmd == "measure":
                        values = [int(w) for w in rest[:3]] + [None] * (3 - len(rest[:3]))
                        sim.measure(values[0], values[1], values[2])
                    elif cmd == "unplug":
                        sim.unplug()
                    elif cmd == "plug":
                        sim.plug(rest[0] if rest else None)
                    elif cmd == "silent":
                        sim.silent = not rest or rest[0] == "on"
                    elif cmd == "noise":
                        sim.noise_before_reply = int(rest[0]) if rest else 4
                    elif cmd == "drop":
                        sim.drop_rate = float(rest[0]) if rest else 0.0
                    elif cmd == "corrupt":
                        sim.corrupt_rate = float(rest[0]) if rest else 0.0
                    else:
                        print(f"bp: unknown command {cmd!r}", flush=True)
                        continue
                except ValueError as exc:
                    print(f"bp: bad argument: {exc}", flush=True)
                    continue
                print(f"bp: {line.strip()} done", flush=True)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(schedule())
            if sys.stdin is not None and not sys.stdin.isatty():
                tg.create_task(commands())
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO)
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 0
