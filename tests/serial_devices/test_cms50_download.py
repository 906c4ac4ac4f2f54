"""The CMS50 stored-data download always ends: with its last point, after a quiet time without
stored-data packets (live or other packets do not hold it open), or at a deadline sized by the points
the device announced; then what came is kept and live mode starts.

A fake link stands for the port (as in the review's reproduction): it answers the session queries and
sends, during the upload, what each test scripts, every 20 ms.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from drivers.base import DeviceSpec, DriverContext, Measurement, Reading, Waveform
from drivers.serial import cms50
from drivers.serial.cms50 import Cms50Driver
from drivers.serial.port import LinkSilent

TICK_S = 0.02
START = dt.datetime(2024, 5, 6, 1, 2, 3)
KEY = "20240506T010203"
LIVE = cms50.encode_packet(cms50.PT_LIVE, [0x05, 0x40, 0x10, 72, 97, 0xFF, 0xFF])


def stored_packet(points: int = 3) -> bytes:
    pairs = [(95, 64)] * points + [(0, 0)] * (3 - points)
    return cms50.encode_packet(cms50.PT_STORED, [v for pair in pairs for v in pair])


Upload = Callable[[int], bytes]  # tick number since the data request -> bytes sent in that tick


class ScriptedOximeter:
    """A fake SerialLink: one stored session of ``total`` points; during the upload, ``upload``."""

    path = "/dev/fake-cms50"

    def __init__(self, total: int, upload: Upload) -> None:
        self.total = total
        self.upload = upload
        self.q = bytearray()
        self.commands: list[tuple[int, float]] = []  # (command, monotonic time)
        self.upload_tick: int | None = None  # ticks since the last data request; None: not uploading
        self.live = False

    def sent(self, code: int) -> list[float]:
        return [t for c, t in self.commands if c == code]

    def write(self, data: bytes) -> None:
        code = data[2] & 0x7F | (0x80 if data[1] & 1 else 0)
        self.commands.append((code, time.monotonic()))
        s = START
        if code == cms50.CMD_SESSION_COUNT:
            self.q += cms50.encode_packet(cms50.PT_SESSION_COUNT, [0, 1])
        elif code == cms50.CMD_SESSION_TIME:
            self.q += cms50.encode_packet(cms50.PT_DATE, [0, 0, s.year // 100, s.year % 100, s.month, s.day])
            self.q += cms50.encode_packet(cms50.PT_TIME, [0, 0, s.hour, s.minute, s.second, 0])
        elif code == cms50.CMD_SESSION_DURATION:
            raw = self.total * 2
            self.q += cms50.encode_packet(cms50.PT_DURATION, [0, 0, raw & 0xFF, (raw >> 8) & 0xFF, raw >> 16, 0])
        elif code == cms50.CMD_SESSION_DATA:
            self.upload_tick = 0
        elif code == cms50.CMD_STOP_DATA:
            self.upload_tick = None
        elif code == cms50.CMD_START_LIVE:
            self.live = True

    def discard_input(self) -> None:
        self.q.clear()

    async def read(self, timeout_s: float | None = None, *, gather_s: float = 0.0) -> bytes:
        waited = 0.0
        limit = 3600.0 if timeout_s is None else timeout_s
        while True:
            step = min(TICK_S, max(limit - waited, 0.0))
            await asyncio.sleep(step)
            waited += step
            if self.upload_tick is not None:
                self.q += self.upload(self.upload_tick)
                self.upload_tick += 1
            elif self.live:
                self.q += LIVE
            if self.q:
                data = bytes(self.q)
                self.q.clear()
                return data
            if waited >= limit:
                raise LinkSilent(f"{self.path} sent nothing for {limit:g} s")


class QuickCms50(Cms50Driver):
    """The driver with its download times scaled down for a test (same rules)."""

    data_quiet_s = 0.5
    download_margin_s = 0.5
    download_min_rate = 300.0  # 600 points: a 3 s budget with the two above


def driver(tmp_path: Path, got: list[Reading]) -> QuickCms50:
    spec = DeviceSpec("ox-1", "serial-cms50", "serial", {"port": "/dev/null", "timezone": "UTC"})
    ctx = DriverContext(state_dir=tmp_path)
    return QuickCms50(spec, got.append, ctx)


async def serve_until_live(drv: Cms50Driver, link: ScriptedOximeter, limit_s: float = 20.0) -> None:
    task = asyncio.create_task(drv.serve(link))  # type: ignore[arg-type]
    deadline = time.monotonic() + limit_s
    try:
        while not link.sent(cms50.CMD_START_LIVE):
            assert not task.done(), task
            assert time.monotonic() < deadline, f"live mode never started; commands {link.commands}"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # some live data
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def stored_indices(got: list[Reading]) -> list[int]:
    ids = {r.source_id for r in got if isinstance(r, Measurement) and r.source_id is not None}
    return sorted(int(i.rsplit(":", 1)[1]) for i in ids if i is not None)


def live_started_after_data_request(link: ScriptedOximeter) -> float:
    return link.sent(cms50.CMD_START_LIVE)[0] - link.sent(cms50.CMD_SESSION_DATA)[0]


def test_a_device_streaming_live_frames_instead_of_its_upload_goes_live_after_the_quiet_time(
    tmp_path: Path,
) -> None:
    got: list[Reading] = []
    drv = driver(tmp_path, got)
    link = ScriptedOximeter(600, lambda _tick: LIVE * 3)  # never a stored point, never silent
    asyncio.run(serve_until_live(drv, link))
    # Ended by the quiet time (0.5 s without a stored-data packet), long before the 3 s deadline.
    assert live_started_after_data_request(link) < drv.data_quiet_s + 0.5 < drv.download_budget_s(600)
    assert [c for c, _ in link.commands].index(cms50.CMD_STOP_DATA) < [c for c, _ in link.commands].index(
        cms50.CMD_START_LIVE
    )
    c = drv.counters()
    assert (c["short_downloads"], c.get("download_timeouts", 0), c["stored_emitted"]) == (1, 0, 0)
    assert any(isinstance(r, Waveform) for r in got)  # live data flows


def test_a_device_that_never_finishes_its_upload_is_cut_at_the_deadline_keeping_what_came(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="drivers.serial.cms50")
    got: list[Reading] = []
    drv = driver(tmp_path, got)
    budget = drv.download_budget_s(600)
    assert budget == pytest.approx(3.0)
    # One 3-point packet every 0.1 s (30 points/s, 10x slower than assumed), live frames between:
    # never quiet for 0.5 s, never the 600 points.
    link = ScriptedOximeter(600, lambda tick: stored_packet() if tick % 5 == 0 else LIVE)
    asyncio.run(serve_until_live(drv, link))
    assert budget - 0.2 < live_started_after_data_request(link) < budget + 1.0
    kept = stored_indices(got)
    assert 45 <= len(kept) < 600 and kept == list(range(len(kept)))  # in order from the first point
    assert drv.ledger.emitted(KEY) == len(kept)  # the next connection fetches the rest
    c = drv.counters()
    assert (c["download_timeouts"], c["stored_emitted"], c.get("short_downloads", 0)) == (1, 2 * len(kept), 0)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1 and "ox-1" in loud[0].getMessage() and "still downloading" in loud[0].getMessage()

    # The next connection: the same device does the same; counted, but not one more WARNING.
    caplog.clear()
    link2 = ScriptedOximeter(600, lambda tick: stored_packet() if tick % 5 == 0 else LIVE)
    asyncio.run(serve_until_live(drv, link2))
    assert drv.counters()["download_timeouts"] == 2
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r for r in caplog.records if "still downloading" in r.getMessage()]  # at DEBUG


def test_at_the_deadline_a_damaged_upload_keeps_only_the_points_before_the_damage(tmp_path: Path) -> None:
    got: list[Reading] = []
    drv = driver(tmp_path, got)

    def upload(tick: int) -> bytes:
        if tick % 5:
            return LIVE
        n = tick // 5
        return stored_packet()[:4] + stored_packet()[5:] if n == 4 else stored_packet()  # packet 4 loses a byte

    link = ScriptedOximeter(600, upload)
    asyncio.run(serve_until_live(drv, link))
    # Points after a lost byte may be shifted in time: only the 4 packets before it are kept.
    assert stored_indices(got) == list(range(12))
    assert drv.counters()["download_timeouts"] == 1
    assert link.sent(cms50.CMD_SESSION_DATA) and len(link.sent(cms50.CMD_SESSION_DATA)) == 1


def test_a_complete_upload_with_live_frames_between_its_packets_is_kept_whole(tmp_path: Path) -> None:
    got: list[Reading] = []
    drv = driver(tmp_path, got)
    link = ScriptedOximeter(30, lambda tick: stored_packet() + LIVE if tick < 10 else LIVE)
    asyncio.run(serve_until_live(drv, link))
    assert stored_indices(got) == list(range(30))
    assert live_started_after_data_request(link) < 0.5  # ended by its last point, no waiting
    c = drv.counters()
    assert (c.get("download_timeouts", 0), c.get("short_downloads", 0), c["stored_emitted"]) == (0, 0, 60)


def test_the_deadline_grows_with_the_announced_points_and_is_capped() -> None:
    spec = DeviceSpec("ox-1", "serial-cms50", "serial", {"port": "/dev/null"})
    drv = Cms50Driver(spec, lambda _r: None, DriverContext())
    assert drv.download_budget_s(0) == pytest.approx(12.0)  # quiet time + margin
    assert drv.download_budget_s(8 * 3600) == pytest.approx(12.0 + 144.0)  # a night at 200 points/s
    assert drv.download_budget_s(0xFFFFFF // 2) == drv.download_max_s == 900.0  # a corrupted duration
