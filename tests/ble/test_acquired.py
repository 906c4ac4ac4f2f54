"""A high-rate stream read from BlueZ's AcquireNotify socket in blocks (drivers/ble/acquired.py): the
wrist monitor's one-sample PPG notifications arrive every one, in order, in far fewer reads than
notifications, through the real bleak/dbus-fast stack and the virtual BlueZ; characteristics not
meant for it keep StartNotify."""

from __future__ import annotations

import asyncio
import itertools
import time

from drivers.base import Measurement, Waveform
from drivers.ble.driver import BleDriver
from drivers.ble.wrist import WristMonitorDriver
from simulators.bluez.peripherals import WristMonitor
from tests.ble.util import Readings, make_driver, running, virtual_bluez
from tests.helpers import until

WRIST = "C0:FF:EE:00:00:01"


def test_ppg_notifications_are_read_in_blocks_with_none_lost_and_heart_rate_keeps_start_notify() -> None:
    wrist = WristMonitor(WRIST, ppg_rate_hz=100.0, ppg_per_frame=1)
    readings = Readings()
    drv = make_driver("ble-wrist", "wrist-1", WRIST, readings, report_every_s=1.0)
    assert isinstance(drv, WristMonitorDriver)
    gather = 0.1  # drivers.ble.acquired.AcquiredStream's default

    async def go() -> tuple[float, int]:
        async with virtual_bluez([wrist]):
            async with running(drv):
                await until(lambda: drv.counters().get("acquired_reads", 0) > 0, 20, "the acquired stream")
                t0, r0 = time.monotonic(), drv.counters()["acquired_reads"]
                await asyncio.sleep(4.0)
                elapsed, reads = time.monotonic() - t0, drv.counters()["acquired_reads"] - r0
        return elapsed, reads

    elapsed, reads = asyncio.run(go())
    blocks = readings.of(Waveform, "wrist-1")
    samples = sum(len(w.channels["ir"]) for w in blocks)
    # Every frame sent is in a block, once, in order: also those queued when the driver stopped.
    assert blocks[0].first_index == wrist.first_counter_sent
    assert samples == wrist.frames_sent, (samples, wrist.frames_sent)
    assert all(b.first_index == a.first_index + len(a.channels["ir"]) for a, b in itertools.pairwise(blocks))
    assert drv.ppg.stats.gap_samples == 0 and drv.ppg.stats.stale_frames == 0
    # Blocks, not notifications: at most one read per gather interval (about 10 frames each).
    assert reads <= elapsed / gather + 1 and wrist.frames_sent > 10 * reads
    assert "acquire_notify_refused" not in drv.counters()
    # The heart-rate and SpO2 characteristics are not in acquire_notify: they still notify by D-Bus.
    assert BleDriver.acquire_notify == frozenset({"79310002-3e85-4d92-9610-86a2c84b5daa"})
    assert len([m for m in readings.of(Measurement, "wrist-1") if m.code == "8867-4"]) >= 2
