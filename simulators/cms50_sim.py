"""A Contec CMS50D+ pulse oximeter on a pty, speaking the v7 protocol (or the older 5-byte one).

v7: it answers the commands the gateway sends (start/stop live 0xA1/0xA2, keep-alive 0xAF, session
count 0xA3, start time 0xA5, duration 0xA4, data 0xA6, stop data 0xA7) and streams 9-byte live packets
at 60 Hz while live mode is on; like the device it stops streaming ``live_timeout_s`` after the last
0xA1/0xAF. Legacy: it streams 5-byte frames at 60 Hz whenever plugged in.

The pleth comes from :func:`pleth_source`, the realistic PPG generator of :mod:`simulators.ppg` (sinus
rhythm with natural variability by default; ``rhythm="af"`` or ``"ectopic"``), at a set heart rate
``hr_bpm``; the exact ground truth (every beat's time) is ``sim.pulse.beat_times_s``, on the timeline of
``sim.pulse.i / FS`` (samples generated so far). Faults: unplug/plug (also behind another pty),
line noise, byte drops and corrupted packets (the protocol has no checksum; "lying" means flipped bits
that break the sync pattern or the values).

Command line (``gateway-sim cms50``): streams until stopped; commands on stdin: ``unplug``, ``plug``,
``noise N``, ``drop RATE``, ``corrupt RATE``, ``finger out|in``, ``hr BPM``, ``spo2 PCT``, ``record S``
(add S seconds of stored recording ending now).
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

from drivers.serial import cms50
from simulators.ppg import PulseStream, Rhythm
from simulators.serialpty import PtyDevice

log = logging.getLogger(__name__)

FS = cms50.SAMPLE_RATE_HZ


def pleth_source(seed: int = 0, rhythm: Rhythm = "sinus") -> PulseStream:
    """The realistic generator's pleth, sample by sample: ``source.next(hr_bpm, fs) -> (0..1, beat)``,
    with the ground-truth beat times in ``source.beat_times_s`` (seconds since the first sample)."""
    return PulseStream(seed, rhythm)


class Cms50Simulator:
    def __init__(
        self,
        link_path: str | os.PathLike[str],
        *,
        protocol: str = "v7",
        hr_bpm: float = 72.0,
        spo2: int = 97,
        seed: int = 0,
        alias_path: str | None = None,
        live_timeout_s: float = 30.0,
        rhythm: Rhythm = "sinus",
    ) -> None:
        if protocol not in ("v7", "legacy"):
            raise ValueError(f"unknown protocol {protocol!r}")
        self.protocol = protocol
        self.dev = PtyDevice(link_path, self._on_bytes, alias_path=alias_path)
        self.hr_bpm = hr_bpm
        self.spo2 = spo2
        self.finger_in = True
        self.searching = False
        self.rng = random.Random(seed)
        self.pulse = pleth_source(seed, rhythm)
        self._pleth = self.pulse.next
        self.live_timeout_s = live_timeout_s
        self.live_until: float | None = None  # v7: streaming until this loop time
        self.drop_rate = 0.0
        self.corrupt_rate = 0.0
        self.frames_sent = 0
        self.sent: list[cms50.LiveSample] = []  # every live frame put on the line (before faults)
        self.keep_sent = True
        self.commands: list[int] = []
        self.session_start: dt.datetime | None = None  # naive device-clock time
        self.session_points: list[tuple[int, int]] = []
        self.data_requests = 0
        self.break_next_upload = False  # drop one byte in the middle of the next stored-data upload
        self.storage_supported = True  # False: a model without recording ignores A3..A7
        self._cmd_parser = cms50.Cms50Parser()
        self._task: asyncio.Task[None] | None = None
        self._upload: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Cms50Simulator:
        await self.dev.__aenter__()
        self._task = asyncio.create_task(self._stream())
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in (self._task, self._upload):
            if task is not None:
                task.cancel()
                await asyncio.wait({task})  # not `suppress(CancelledError)`: that eats our own cancellation too
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        await self.dev.__aexit__(*exc)

    # -- plug -------------------------------------------------------------------------------------

    def unplug(self) -> None:
        self.live_until = None
        self._cmd_parser = cms50.Cms50Parser()
        if self._upload is not None:
            self._upload.cancel()
        self.dev.unplug()

    def plug(self, link_path: str | os.PathLike[str] | None = None) -> None:
        self.dev.plug(link_path)

    # -- faults -----------------------------------------------------------------------------------

    def noise(self, n: int) -> None:
        self.dev.write(bytes(self.rng.randrange(256) for _ in range(n)))

    def _send(self, data: bytes) -> None:
        out = bytearray()
        for b in data:
            if self.drop_rate and self.rng.random() < self.drop_rate:
                continue
            if self.corrupt_rate and self.rng.random() < self.corrupt_rate:
                b ^= 1 << self.rng.randrange(8)
            out.append(b)
        self.dev.write(bytes(out))

    # -- recording --------------------------------------------------------------------------------

    def record(self, seconds: int, *, end: dt.datetime | None = None) -> None:
        """Store ``seconds`` of recording (1 point/s) ending at ``end`` (device clock, naive), as if
        the oximeter recorded while the gateway was away. Extends the current session if contiguous."""
        end = end or dt.datetime.now().replace(microsecond=0)
        start = end - dt.timedelta(seconds=seconds)
        if self.session_start is None or not self.session_points:
            self.session_start = start
        for _ in range(seconds):
            pr = max(30, min(250, round(self.hr_bpm + self.rng.gauss(0, 2))))
            sp = max(70, min(100, round(self.spo2 + self.rng.gauss(0, 1))))
            self.session_points.append((sp, pr))

    # -- frames -----------------------------------------------------------------------------------

    def _sample(self) -> cms50.LiveSample:
        value, beat = self._pleth(self.hr_bpm, FS)
        if not self.finger_in:
            return cms50.LiveSample(0, None, None, 0, 0, False, True, False, False, False)
        if self.searching:
            return cms50.LiveSample(round(value * 100), None, None, 2, 0, False, False, True, False, False)
        pr = round(self.hr_bpm)
        return cms50.LiveSample(
            pleth=round(10 + value * 100),
            spo2=self.spo2,
            pulse_rate=pr,
            signal=6,
            bar=min(15, round(value * 15)),
            beat=beat,
            finger_out=False,
            searching=False,
            searching_too_long=False,
            low_spo2=self.spo2 < 90,
        )

    @staticmethod
    def encode_live(s: cms50.LiveSample) -> bytes:
        d0 = (s.signal & 0x0F) | (0x10 if s.searching_too_long else 0) | (0x20 if s.low_spo2 else 0)
        d0 |= (0x40 if s.beat else 0) | (0x80 if s.finger_out else 0)
        d1 = (s.pleth & 0x7F) | (0x80 if s.searching else 0)
        d2 = s.bar & 0x0F
        pr = 0xFF if s.pulse_rate is None else s.pulse_rate
        spo2 = 0x7F if s.spo2 is None else s.spo2
        return cms50.encode_packet(cms50.PT_LIVE, [d0, d1, d2, pr, spo2, 0xFF, 0xFF])

    def _streaming(self, now: float) -> bool:
        if not self.dev.plugged:
            return False
        if self.protocol == "legacy":
            return True
        return self.live_until is not None and now < self.live_until

    async def _stream(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        sent = 0
        while True:
            await asyncio.sleep(1.0 / FS)
            now = loop.time()
            due = int((now - t0) * FS)
            if due - sent > FS:  # stalled (e.g. a slow test machine): do not burst seconds of data
                sent = due - 1
            chunk = bytearray()
            while sent < due:
                sent += 1
                sample = self._sample()  # the pulse keeps beating while nobody listens
                if self._streaming(now):
                    chunk += self.encode_live(sample) if self.protocol == "v7" else cms50.encode_legacy(sample)
                    self.frames_sent += 1
                    if self.keep_sent:
                        self.sent.append(sample)
            if chunk:
                self._send(bytes(chunk))

    # -- commands ---------------------------------------------------------------------------------

    def _on_bytes(self, data: bytes) -> None:
        if self.protocol != "v7":
            return
        for frame in self._cmd_parser.feed(data):
            if isinstance(frame, cms50.OtherPacket) and frame.ptype == cms50.CMD and frame.data:
                self._command(frame.data[0], frame.data[1:])

    def _command(self, code: int, args: bytes) -> None:
        self.commands.append(code)
        now = asyncio.get_running_loop().time()
        storage = (cms50.CMD_SESSION_COUNT, cms50.CMD_SESSION_TIME, cms50.CMD_SESSION_DURATION, cms50.CMD_SESSION_DATA)
        if not self.storage_supported and code in storage:
            return
        if code in (cms50.CMD_START_LIVE, cms50.CMD_KEEPALIVE):
            if code == cms50.CMD_START_LIVE or self.live_until is not None:
                self.live_until = now + self.live_timeout_s
        elif code == cms50.CMD_STOP_LIVE:
            self.live_until = None
        elif code == cms50.CMD_SESSION_COUNT:
            self._send(cms50.encode_packet(cms50.PT_SESSION_COUNT, [0, 1 if self.session_points else 0]))
        elif code == cms50.CMD_SESSION_TIME and self.session_start is not None:
            s = self.session_start
            self._send(cms50.encode_packet(cms50.PT_DATE, [0, 0, s.year // 100, s.year % 100, s.month, s.day]))
            self._send(cms50.encode_packet(cms50.PT_TIME, [0, 0, s.hour, s.minute, s.second, 0]))
        elif code == cms50.CMD_SESSION_DURATION:
            raw = len(self.session_points) * 2
            self._send(cms50.encode_packet(cms50.PT_DURATION, [0, 0, raw & 0xFF, (raw >> 8) & 0xFF, raw >> 16, 0]))
        elif code == cms50.CMD_SESSION_DATA:
            self.data_requests += 1
            self.live_until = None
            if self._upload is None or self._upload.done():
                self._upload = asyncio.get_running_loop().create_task(self._send_session())
        elif code == cms50.CMD_STOP_DATA:
            if self._upload is not None:
                self._upload.cancel()

    async def _send_session(self) -> None:
        points = list(self.session_points)
        for i in range(0, len(points), 3):
            group = points[i : i + 3]
            group += [(0, 0)] * (3 - len(group))
            packet = cms50.encode_packet(cms50.PT_STORED, [v for pair in group for v in pair])
            if self.break_next_upload and i >= len(points) // 2:
                self.break_next_upload = False
                packet = packet[:4] + packet[5:]
            self._send(packet)
            if i % 300 == 0:
                await asyncio.sleep(0.01)  # ~ the device's pace, and room for the gateway to read


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--link", required=True, help="stable path to create, e.g. a by-id style symlink")
    parser.add_argument("--protocol", choices=["v7", "legacy"], default="v7")
    parser.add_argument("--hr", type=float, default=72.0, help="ground-truth heart rate (bpm)")
    parser.add_argument("--spo2", type=int, default=97)
    parser.add_argument("--stored", type=int, default=0, help="seconds of stored recording to hold at start")
    parser.add_argument("--drop-rate", type=float, default=0.0, help="probability of dropping each byte")
    parser.add_argument("--corrupt-rate", type=float, default=0.0, help="probability of flipping a bit per byte")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rhythm", choices=["sinus", "af", "ectopic"], default="sinus", help="pleth rhythm")


async def _run(args: argparse.Namespace) -> int:
    async with Cms50Simulator(
        Path(args.link), protocol=args.protocol, hr_bpm=args.hr, spo2=args.spo2, seed=args.seed, rhythm=args.rhythm
    ) as sim:
        sim.drop_rate, sim.corrupt_rate = args.drop_rate, args.corrupt_rate
        sim.keep_sent = False  # a long run must not grow without bound
        if args.stored:
            sim.record(args.stored)
        print(f"cms50: oximeter ({args.protocol}) at {args.link} -> {sim.dev.slave_name}", flush=True)
        loop = asyncio.get_running_loop()
        while True:
            if sys.stdin is None or sys.stdin.isatty():
                await asyncio.Event().wait()
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                await asyncio.Event().wait()  # stdin closed: keep streaming
            words = line.split()
            if not words:
                continue
            cmd, arg = words[0], (words[1] if len(words) > 1 else "")
            try:
                if cmd == "unplug":
                    sim.unplug()
                elif cmd == "plug":
                    sim.plug(arg or None)
                elif cmd == "noise":
                    sim.noise(int(arg or 16))
                elif cmd == "drop":
                    sim.drop_rate = float(arg or 0)
                elif cmd == "corrupt":
                    sim.corrupt_rate = float(arg or 0)
                elif cmd == "finger":
                    sim.finger_in = arg != "out"
                elif cmd == "hr":
                    sim.hr_bpm = float(arg)
                elif cmd == "spo2":
                    sim.spo2 = int(arg)
                elif cmd == "record":
                    sim.record(int(arg or 60))
                else:
                    print(f"cms50: unknown command {cmd!r}", flush=True)
                    continue
            except ValueError as exc:
                print(f"cms50: bad argument: {exc}", flush=True)
                continue
            print(f"cms50: {line.strip()} done", flush=True)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO)
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 0
