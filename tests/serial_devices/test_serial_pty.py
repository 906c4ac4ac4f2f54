"""The CMS50 oximeter and the BM58-family BP monitor drivers over real ptys through pyserial.

Only the USB socket is fake (:class:`simulators.serialpty.PtyDevice`); the drivers, the port layer,
the reconnection and the parsers run unmodified.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import signal

from drivers.base import DeviceSpec, DeviceStatus, DriverContext, LinkState, Measurement, Reading, Waveform
from drivers.reconnect import Backoff
from drivers.serial import cms50
from drivers.serial.bpm import SerialBpDriver
from drivers.serial.cms50 import Cms50Driver, Cms50LegacyDriver
from simulators.bp_sim import BpSimulator
from simulators.cms50_sim import Cms50Simulator


async def _wait(pred: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def _waiting_at_cap(backoff: Backoff) -> bool:
    """The last delay the reconnector drew was drawn at the backoff's cap."""
    return backoff.attempt > 0 and backoff.base_s * 2 ** (backoff.attempt - 1) >= backoff.cap_s


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _waves(got: list[Reading]) -> list[Waveform]:
    return [r for r in got if isinstance(r, Waveform)]


def _pleth(got: list[Reading]) -> list[float]:
    return [v for w in _waves(got) for v in w.channels["pleth"]]


def _peak_rate_bpm(x: list[float], fs: float) -> float:
    """Heart rate from the pleth by peak intervals (gateway.dsp is not in the tree yet; when it is,
    its estimator should replace this)."""
    b, a = signal.butter(2, [0.5 / (fs / 2), 5.0 / (fs / 2)], "bandpass")
    y = signal.filtfilt(b, a, np.asarray(x, dtype=float))
    peaks, _ = signal.find_peaks(y, distance=int(fs * 0.33), prominence=0.5 * float(np.std(y)))
    return float(60.0 * fs / np.median(np.diff(peaks)))


def _spec(kind: str, link: Path, **opts: object) -> DeviceSpec:
    return DeviceSpec("dev-1", kind, "serial", {"port": str(link), **opts})


def test_cms50_live_stream_is_parsed_exactly_and_gives_the_true_heart_rate(tmp_path: Path) -> None:
    link = tmp_path / "by-id" / "usb-Silicon_Labs_CP2102_USB_to_UART_Bridge_Controller_0001-if00-port0"
    got: list[Reading] = []

    async def go() -> tuple[Cms50Simulator, Cms50Driver]:
        async with Cms50Simulator(link, hr_bpm=73.0, spo2=96, seed=3) as sim:
            drv = Cms50Driver(_spec("serial-cms50", link, report_every_s=1.0), got.append, DriverContext())
            task = asyncio.create_task(drv.run())
            await _wait(lambda: len(_pleth(got)) >= 60 * 9, timeout=20.0, what="9 s of pleth")
            await _stop(task)
            return sim, drv

    sim, drv = asyncio.run(go())
    received = _pleth(got)
    sent = [float(s.pleth) for s in sim.sent]
    # Exactly what the device sent, in order, nothing lost or invented (a few frames may be in flight).
    assert received == sent[: len(received)] and len(sent) - len(received) < 30
    waves = _waves(got)
    assert waves[0].first_index == 0 and all(w.fs == 60.0 for w in waves)
    assert all(b.first_index == a.first_index + len(a.channels["pleth"]) for a, b in itertools.pairwise(waves))
    meas = [r for r in got if isinstance(r, Measurement)]
    assert {(m.code, m.value, m.unit) for m in meas} == {("59408-5", 96.0, "%"), ("8867-4", 73.0, "/min")}
    assert all(m.method == "device" and m.source_id is None for m in meas)
    assert abs(_peak_rate_bpm(received, 60.0) - sim.hr_bpm) <= 2.0
    c = drv.counters()
    assert c["frames"] == len(received) + 1 and c["garbage_bytes"] == 0  # + the session-count reply
    assert c["garbage_bytes"] == 0 and c["bad_frames"] == 0
    assert cms50.CMD_START_LIVE in sim.commands and sim.commands.count(cms50.CMD_SESSION_DATA) == 0


def test_cms50_faults_never_crash_or_produce_out_of_range_readings(tmp_path: Path) -> None:
    link = tmp_path / "by-id" / "usb-oximeter"
    got: list[Reading] = []

    async def go() -> Cms50Driver:
        async with Cms50Simulator(link, hr_bpm=88.0, spo2=94, seed=5) as sim:
            drv = Cms50Driver(_spec("serial-cms50", link, report_every_s=0.0), got.append, DriverContext())
            task = asyncio.create_task(drv.run())
            await _wait(lambda: len(_pleth(got)) >= 60, what="first second")
            sim.finger_in = False
            await asyncio.sleep(1.0)
            n_meas = sum(isinstance(r, Measurement) for r in got)
            await asyncio.sleep(1.0)
            # finger out: the device's values are flagged, none may become a number
            assert sum(isinstance(r, Measurement) for r in got) == n_meas
            sim.finger_in = True
            # Lost bytes only: every block the driver emits must be an unbroken run of what was sent.
            sim.drop_rate = 0.03
            drops_from = len(got)
            await asyncio.sleep(1.5)
            sim.drop_rate = 0.0
            await asyncio.sleep(0.3)
            sent = [float(s.pleth) for s in sim.sent]
            blocks = [list(w.channels["pleth"]) for w in _waves(got[drops_from:])]
            assert len(blocks) > 3  # the drops cut the stream into blocks
            for b in blocks:
                assert any(sent[k : k + len(b)] == b for k in range(len(sent) - len(b) + 1))
            sim.drop_rate, sim.corrupt_rate = 0.02, 0.02
            for _ in range(10):
                sim.noise(100)
                await asyncio.sleep(0.2)
            sim.drop_rate = sim.corrupt_rate = 0.0
            clean_from = len(got)
            await _wait(lambda: len(_pleth(got[clean_from:])) >= 120, what="clean stream again")
            await _stop(task)
            return drv

    drv = asyncio.run(go())
    c = drv.counters()
    assert c["garbage_bytes"] > 0 and c["bad_frames"] > 0 and c["invalid_frames"] >= 60
    assert c["connects"] == 1  # noise is resynchronised, never a reconnect
    for r in got:
        if isinstance(r, Measurement):
            # in range, and never a corrupted value: only the simulator's truth gets through
            assert r.value == (94.0 if r.code == cms50.LOINC_SPO2 else 88.0)
        if isinstance(r, Waveform):
            assert all(0 <= v <= 127 for v in r.channels["pleth"])


def test_cms50_unplug_replug_on_the_same_and_on_another_tty(tmp_path: Path) -> None:
    link = tmp_path / "by-id" / "usb-oximeter"
    got: list[Reading] = []

    async def go() -> tuple[Cms50Driver, list[float]]:
        async with Cms50Simulator(link, seed=7) as sim:
            drv = Cms50Driver(_spec("serial-cms50", link), got.append, DriverContext())
            task = asyncio.create_task(drv.run())
            await _wait(lambda: len(_pleth(got)) >= 60, what="stream")
            recovered: list[float] = []
            for another_tty in (False, True):
                first_tty = sim.dev.slave_name
                sim.unplug()
                await _wait(
                    lambda: isinstance(got[-1], DeviceStatus) and got[-1].state is LinkState.DISCONNECTED,
                    what="disconnected state",
                )
                blocker = os.openpty() if another_tty else None  # takes the freed /dev/pts/N
                if another_tty:
                    # The second unplug is long enough for the reconnect backoff to reach its cap: the
                    # driver is in a wait drawn at the cap when the device comes back.
                    await _wait(lambda: _waiting_at_cap(drv.reconnector.backoff), 15.0, "the backoff at its cap")
                else:
                    await asyncio.sleep(0.5)
                sim.plug()
                if another_tty:
                    assert sim.dev.slave_name != first_tty
                t_back = time.monotonic()
                mark = len(got)

                def back(m: int = mark) -> bool:
                    return len(_pleth(got[m:])) >= 10

                await _wait(back, timeout=5.0, what="stream back within 5 s")
                recovered.append(time.monotonic() - t_back)
                for fd in blocker or ():
                    os.close(fd)
            await _stop(task)
            return drv, recovered

    drv, recovered = asyncio.run(go())
    assert len(recovered) == 2
    states = [r.state for r in got if isinstance(r, DeviceStatus)]
    assert states.count(LinkState.CONNECTED) == 3
    assert states[:2] == [LinkState.CONNECTED, LinkState.DISCONNECTED]
    assert drv.counters()["connects"] == 3 and drv.counters()["disconnects"] == 2


def test_cms50_stored_recording_is_fetched_exactly_once_with_original_times(tmp_path: Path) -> None:
    link = tmp_path / "by-id" / "usb-oximeter"
    ledger = tmp_path / "cms50-ledger.json"
    end = dt.datetime(2026, 11, 23, 22, 0, 0)
    got: list[Reading] = []

    def stored() -> list[Measurement]:
        return [r for r in got if isinstance(r, Measurement) and r.source_id is not None]

    async def go() -> Cms50Simulator:
        async with Cms50Simulator(link, hr_bpm=64.0, spo2=95, seed=11) as sim:
            sim.record(45, end=end)  # recorded while the gateway was away
            sim.break_next_upload = True  # a byte lost mid-download: the whole download is asked again
            opts = {"timezone": "UTC", "state_path": str(ledger)}
            drv = Cms50Driver(_spec("serial-cms50", link, **opts), got.append, DriverContext())
            task = asyncio.create_task(drv.run())
            await _wait(lambda: len(stored()) >= 90 and len(_pleth(got)) >= 30, what="first download")
            sim.unplug()  # an outage: the oximeter goes on recording
            sim.record(15, end=end + dt.timedelta(seconds=15))
            await asyncio.sleep(0.5)
            sim.plug()
            await _wait(lambda: len(stored()) >= 120, what="the new part of the recording")
            await asyncio.sleep(1.0)  # nothing more may come
            await _stop(task)
            # A restart of the gateway with the same ledger: nothing is fetched again.
            requests_before = sim.data_requests
            mark = len(got)
            drv2 = Cms50Driver(_spec("serial-cms50", link, **opts), got.append, DriverContext())
            task2 = asyncio.create_task(drv2.run())
            await _wait(lambda: len(_pleth(got[mark:])) >= 60, what="second driver streaming")
            await _stop(task2)
            assert sim.data_requests == requests_before
            return sim

    sim = asyncio.run(go())
    recs = stored()
    per_id = Counter(m.source_id for m in recs)
    assert len(per_id) == 60 and set(per_id.values()) == {2}  # SpO2 + pulse per point, once
    start = (end - dt.timedelta(seconds=45)).replace(tzinfo=dt.UTC).timestamp()
    for m in recs:
        assert m.source_id is not None
        i = int(m.source_id.rsplit(":", 1)[1])
        assert m.captured_at == start + i
        spo2, pr = sim.session_points[i]
        assert m.value == (spo2 if m.code == cms50.LOINC_SPO2 else pr)
    assert sim.data_requests == 3  # first download damaged and repeated, then the outage's new part


def test_cms50_model_without_storage_still_streams(tmp_path: Path) -> None:
    link = tmp_path / "by-id" / "usb-oximeter"
    got: list[Reading] = []

    async def go() -> Cms50Driver:
        async with Cms50Simulator(link) as sim:
            sim.storage_supported = False
            drv = Cms50Driver(_spec("serial-cms50", link), got.append, DriverContext())
            task = asyncio.create_task(drv.run())
            await _wait(lambda: len(_pleth(got)) >= 60, what="live data without storage")
            await _stop(task)
            return drv

    drv = asyncio.run(go())
    c = drv.counters()
    assert c["storage_unanswered"] == 1 and c["connects"] == 1 and c["stored_emitted"] == 0
    states = [r.state for r in got if isinstance(r, DeviceStatus)]
    assert states[0] is LinkState.CONNECTED


def test_cms50_legacy_protocol_stream(tmp_path: Path) -> None:
    link = tmp_path / "by-id" / "usb-Prolific_old_cms50"
    got: list[Reading] = []

    async def go() -> Cms50Simulator:
        async with Cms50Simulator(link, protocol="legacy", hr_bpm=58.0, spo2=98) as sim:
            drv = Cms50LegacyDriver(_spec("serial-cms50-legacy", link, report_every_s=1.0), got.append, DriverContext())
            task = asyncio.create_task(drv.run())
            await _wait(lambda: len(_pleth(got)) >= 120, what="legacy stream")
            await _stop(task)
            return sim

    sim = asyncio.run(go())
    received = _pleth(got)
    sent = [float(s.pleth) for s in sim.sent]
    # The legacy device streams before the port is opened: the driver's first frame is somewhere in it.
    start = next(i for i in range(len(sent)) if sent[i : i + len(received)] == received)
    assert start >= 0
    meas = {(m.code, m.value) for m in got if isinstance(m, Measurement)}
    assert meas == {("59408-5", 98.0), ("8867-4", 58.0)}


def test_bp_records_fetched_exactly_once_across_outage_faults_and_restart(tmp_path: Path) -> None:
    link = tmp_path / "by-id" / "usb-Prolific_Technology_Inc._USB-Serial_Controller-if00-port0"
    ledger = tmp_path / "bp-ledger.json"
    got: list[Reading] = []
    base = dt.datetime(2026, 11, 20, 8, 0)

    def records() -> list[Measurement]:
        return [r for r in got if isinstance(r, Measurement)]

    async def go() -> tuple[BpSimulator, int]:
        async with BpSimulator(link, seed=2) as sim:
            taken = [sim.measure(taken=base + dt.timedelta(hours=h)) for h in range(3)]
            opts = {"timezone": "UTC", "state_path": str(ledger), "poll_interval_s": 0.3}
            drv = SerialBpDriver(_spec("serial-bp", link, **opts), got.append, DriverContext())
            task = asyncio.create_task(drv.run())
            await _wait(lambda: len(records()) >= 9, what="stored records")
            sim.unplug()  # outage: two readings are taken meanwhile
            taken += [sim.measure(taken=base + dt.timedelta(days=1, hours=h)) for h in range(2)]
            await asyncio.sleep(0.5)
            sim.corrupt_rate, sim.noise_before_reply = 0.05, 7  # a noisy line after the replug
            sim.plug()
            await _wait(lambda: len(records()) >= 15, timeout=5.0, what="records within 5 s of the replug")
            assert drv.reconnector.connects == 2  # the noisy line cost retries, not a reconnect
            sim.corrupt_rate = 0.0
            await asyncio.sleep(1.0)  # polls go on; nothing may be emitted twice
            await _stop(task)
            mark = len(got)
            drv2 = SerialBpDriver(_spec("serial-bp", link, **opts), got.append, DriverContext())
            task2 = asyncio.create_task(drv2.run())
            await _wait(lambda: drv2.reconnector.connects == 1 and len(sim.requests) > 0, what="restart")
            await asyncio.sleep(1.0)
            await _stop(task2)
            assert not any(isinstance(r, Measurement) for r in got[mark:])
            return sim, drv.counters()["records_emitted"]

    sim, emitted = asyncio.run(go())
    assert emitted == 5
    ms = records()
    by_id = Counter(m.source_id for m in ms)
    assert len(by_id) == 5 and set(by_id.values()) == {3}
    for rec in sim.records:
        mine = {m.code: m for m in ms if m.source_id == rec.key}
        assert mine["8480-6"].value == rec.systolic and mine["8462-4"].value == rec.diastolic
        assert mine["8867-4"].value == rec.pulse
        assert mine["8480-6"].captured_at == rec.taken.replace(tzinfo=dt.UTC).timestamp()


def test_bp_monitor_that_does_not_answer_is_disconnected_until_it_does(tmp_path: Path) -> None:
    link = tmp_path / "by-id" / "usb-bp"
    got: list[Reading] = []

    async def go() -> None:
        async with BpSimulator(link) as sim:
            sim.silent = True  # cable in, monitor not in PC mode
            sim.measure()
            drv = SerialBpDriver(_spec("serial-bp", link, poll_interval_s=0.5), got.append, DriverContext())
            task = asyncio.create_task(drv.run())
            await _wait(lambda: any(isinstance(r, DeviceStatus) for r in got), what="a state")
            first = next(r for r in got if isinstance(r, DeviceStatus))
            assert first.state is LinkState.DISCONNECTED and first.reason and "does not answer" in first.reason
            sim.silent = False
            await _wait(lambda: any(isinstance(r, Measurement) for r in got), timeout=15.0, what="records")
            await _stop(task)

    asyncio.run(go())
    states = [r.state for r in got if isinstance(r, DeviceStatus)]
    assert LinkState.CONNECTED in states and LinkState.ERROR not in states
