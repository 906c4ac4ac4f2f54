"""The CMS50 driver reads its 60 frames a second in blocks (``SerialLink.read(gather_s=...)``), not frame
by frame: over a real pty, no byte and no frame is lost, frames cut anywhere by the line (or by a read)
are put back together, and the samples keep their index and their time, 1/60 s apart.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable
from pathlib import Path

from drivers.base import DeviceSpec, DriverContext, Reading, Waveform
from drivers.serial.cms50 import Cms50Driver, LiveSample
from drivers.serial.port import SerialLink
from simulators.cms50_sim import Cms50Simulator
from simulators.serialpty import PtyDevice

FS = 60.0


def _sample(i: int) -> LiveSample:
    return LiveSample(
        pleth=10 + i % 100,
        spo2=97,
        pulse_rate=70,
        signal=6,
        bar=3,
        beat=i % 50 == 0,
        finger_out=False,
        searching=False,
        searching_too_long=False,
        low_spo2=False,
    )


def _cut(data: bytes, rng: random.Random, most: int = 13) -> list[bytes]:
    """``data`` in pieces of 1..``most`` bytes: frame boundaries fall anywhere in them."""
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, most)
        out.append(data[i : i + n])
        i += n
    return out


async def _play(dev: PtyDevice, pieces: list[bytes], per_s: float) -> None:
    """Write ``pieces`` at ``per_s`` pieces a second, paced by the clock (a late one catches up)."""
    t0 = time.monotonic()
    for k, piece in enumerate(pieces):
        delay = t0 + k / per_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        assert dev.write(piece)


def test_block_reads_return_every_byte_and_wake_at_most_once_per_block(tmp_path: Path) -> None:
    link_path = tmp_path / "by-id" / "usb-oximeter"
    frames = b"".join(Cms50Simulator.encode_live(_sample(i)) for i in range(90))  # 1.5 s of frames
    pieces = _cut(frames, random.Random(1))
    gather = 0.1

    async def go() -> tuple[list[bytes], float, int]:
        async with PtyDevice(link_path) as dev:
            async with SerialLink(str(link_path), 115200, silence_timeout_s=5.0) as link:
                writer = asyncio.create_task(_play(dev, pieces, per_s=len(pieces) / 1.5))
                got: list[bytes] = []
                t0 = time.monotonic()
                while sum(map(len, got)) < len(frames):
                    got.append(await link.read(gather_s=gather))
                elapsed = time.monotonic() - t0
                await writer
                return got, elapsed, link.reads

    got, elapsed, reads = asyncio.run(go())
    assert b"".join(got) == frames  # nothing lost, nothing repeated, in order
    # Each read returns no sooner than ``gather`` after the previous one: blocks, not pieces.
    assert reads == len(got) <= elapsed / gather + 1 < len(pieces) / 4
    assert max(map(len, got)) > 13  # a read held more than one piece of the line


def test_a_burst_larger_than_a_block_is_read_whole(tmp_path: Path) -> None:
    """A device that sends seconds of frames at once (a stalled loop, a stored-data upload): one
    gathered read may not hold them all, the next reads do, and nothing is dropped."""
    link_path = tmp_path / "by-id" / "usb-oximeter"
    frames = b"".join(Cms50Simulator.encode_live(_sample(i)) for i in range(400))  # 3.6 kB

    async def go() -> bytes:
        async with PtyDevice(link_path) as dev:
            async with SerialLink(str(link_path), 115200, silence_timeout_s=5.0) as link:
                got = b""
                for piece in _cut(frames, random.Random(2), most=1000):
                    assert dev.write(piece)
                    got += await link.read(gather_s=0.1)
                while len(got) < len(frames):
                    got += await link.read(gather_s=0.1)
                return got

    assert asyncio.run(go()) == frames


async def _wait(pred: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def test_driver_loses_no_frame_split_across_block_reads_and_times_them_one_by_one(tmp_path: Path) -> None:
    """The driver over a pty whose line cuts frames anywhere: every frame sent after the driver's
    start-up (it discards what was buffered before) arrives once, in order, in contiguous blocks,
    and each sample's time is its index at 60 Hz from a start near the first frame's arrival."""
    link_path = tmp_path / "by-id" / "usb-oximeter"
    n = 240  # 4 s of frames
    frames = [Cms50Simulator.encode_live(_sample(i)) for i in range(n)]
    pieces = _cut(b"".join(frames), random.Random(3))
    got: list[Reading] = []
    spec = DeviceSpec("oxi-1", "serial-cms50", "serial", {"port": str(link_path), "download_stored": False})

    async def go() -> tuple[float, Cms50Driver]:
        async with PtyDevice(link_path) as dev:
            drv = Cms50Driver(spec, got.append, DriverContext())
            task = asyncio.create_task(drv.run())
            await asyncio.sleep(0.5)  # the driver is past its stop-live + discard
            t_first = time.time()
            await _play(dev, pieces, per_s=len(pieces) / (n / FS))
            await _wait(lambda: drv.counters()["frames"] >= n, 5.0, "every frame")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return t_first, drv

    t_first, drv = asyncio.run(go())
    waves = [r for r in got if isinstance(r, Waveform)]
    pleth = [v for w in waves for v in w.channels["pleth"]]
    assert pleth == [float(_sample(i).pleth) for i in range(n)]
    assert drv.counters()["garbage_bytes"] == 0 and drv.counters()["bad_frames"] == 0
    assert waves[0].first_index == 0
    assert all(b.first_index == a.first_index + len(a.channels["pleth"]) for a, b in itertools.pairwise(waves))
    # One time base for the whole run: block k starts at the first sample's time + its index / fs.
    t0 = waves[0].captured_at
    assert all(abs(w.captured_at - (t0 + w.first_index / FS)) < 1e-6 for w in waves)
    # The first sample is timed by its arrival (within a block read and a loaded machine's delay),
    # not by the end of the block it was read in.
    assert t_first - 0.05 <= t0 <= t_first + 0.5
