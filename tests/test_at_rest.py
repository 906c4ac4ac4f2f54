"""At rest (issue 14 part 4): heart-rate readings carry ``extra["at_rest"]`` from the wrist's accelerometer
(gateway.dsp.activity) or the device's own activity flag (raw PPG frame format 2, drivers/ble/wrist.py),
so the ``rest_only`` rules (hr_high, hr_low) ignore a walk at the same heart rate as a tachycardia at rest.

Generator walking and resting segments at the same heart rate through the real WristStream and the real
rules engine; the frame format and its assembly; the virtual BlueZ wrist walking then sitting, through
unmodified bleak and gatewayd as a process to the cloud."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from drivers.base import Measurement, Waveform
from drivers.ble import gatt
from drivers.ble.wrist import PpgAssembler
from gateway.dsp.activity import REST_SETTLE_S, SEDENTARY_ENMO_G, RestTracker, enmo, peak_epoch_enmo
from gateway.dsp.stream import LOINC_HR, WINDOW_S, WristStream
from gateway.rules.defaults import LOINC_HEART_RATE
from simulators.bluez import profiles
from simulators.bluez.peripherals import WristMonitor
from simulators.bluez.physiology import WristMotion, make_source
from simulators.broker import Mosquitto
from simulators.ppg import PpgRecording, generate
from tests.ble.util import virtual_bluez
from tests.helpers import Collector, GatewayProcess, gateway_config, until
from tests.rules.util import T0, engine, feed_series, states

FS = 50.0
WALK_END_S = 120.0
HR = 135.0  # a brisk walk's rate, above hr_high's 130 /min


def _blocks(rec: PpgRecording, *, accel: bool = True) -> Iterator[Waveform]:
    n = round(rec.fs)
    for i in range(0, len(rec), n):
        ch = {c: getattr(rec, c)[i : i + n].tolist() for c in ("ir", "red")}
        if accel:
            ch.update({f"accel_{a}": rec.accel[i : i + n, k].tolist() for k, a in enumerate("xyz")})
        yield Waveform("wrist-1", T0 + i / rec.fs, rec.fs, ch, first_index=i)


def _hr(stream: WristStream, rec: PpgRecording, *, accel: bool = True) -> list[Measurement]:
    return [m for w in _blocks(rec, accel=accel) for m in stream.push_waveform(w) if m.code == LOINC_HR]


@pytest.fixture(scope="module")
def walk_then_rest() -> PpgRecording:
    # 2 min of walking, then 8 min sitting, at the same heart rate throughout
    return generate(600.0, fs=FS, hr_bpm=HR, walking=[(0.0, WALK_END_S)], seed=14)


def test_enmo_separates_walking_from_rest_with_the_published_cut_point(walk_then_rest: PpgRecording) -> None:
    rec = walk_then_rest
    n = round(10 * FS)
    walking = [enmo(rec.accel[i : i + n]) for i in range(0, round(WALK_END_S * FS) - n, n)]
    resting = [enmo(rec.accel[i : i + n]) for i in range(round(WALK_END_S * FS), len(rec) - n, n)]
    assert all(e is not None and e > SEDENTARY_ENMO_G for e in walking)
    assert all(e is not None and e < 0.2 * SEDENTARY_ENMO_G for e in resting)
    still = rec.accel[-n:]
    assert enmo(still - still.mean(axis=0)) is None  # gravity removed upstream: cannot tell
    assert enmo(still[:, :2]) is None and enmo(np.full((n, 3), math.nan)) is None


def test_rest_tracker_waits_for_the_settling_time_and_survives_a_clock_step() -> None:
    still = np.tile([0.0, 0.0, 1.0], (100, 1))
    moving = still + np.column_stack((np.zeros(100), np.zeros(100), 0.3 * np.sin(np.arange(100))))
    tr = RestTracker(settle_s=60.0)
    assert tr.update(still, 10.0, 10.0) is True  # a stream that starts still: at rest
    assert tr.update(moving, 10.0, 20.0) is False
    assert tr.update(still, 10.0, 79.0) is False and tr.update(still, 10.0, 80.0) is True
    assert tr.update(moving, 10.0, 100.0) is False
    assert tr.update(still, 10.0, 50.0) is False  # the clock went back: counted from now
    assert tr.update(still, 10.0, 109.0) is False and tr.update(still, 10.0, 110.0) is True
    # a window that moved in one of its 5 s epochs is active, though its mean is below the cut-point
    half = np.concatenate((still[:70], moving[:30]))  # 10 s at 10 Hz: the last 3 s moved
    assert (enmo(half) or 0.0) < SEDENTARY_ENMO_G <= (peak_epoch_enmo(half, 10.0) or 0.0)
    assert RestTracker().update(half, 10.0, 0.0) is False


def test_hr_high_is_raised_only_at_rest_for_the_same_heart_rate(walk_then_rest: PpgRecording) -> None:
    rec = walk_then_rest
    hr = _hr(WristStream("wrist-1", motion_hr=True), rec)
    walk = [m for m in hr if m.captured_at <= T0 + WALK_END_S]
    settling = [m for m in hr if T0 + WALK_END_S + 10 < m.captured_at < T0 + WALK_END_S + REST_SETTLE_S]
    # the last active window is the last one that still holds walking (its end: up to a window later)
    rest = [m for m in hr if m.captured_at >= T0 + WALK_END_S + WINDOW_S + REST_SETTLE_S]
    # readings while walking (the accelerometer-aided path) and after it, all near the set rate
    assert len(walk) >= 20 and len(settling) >= 50 and len(rest) >= 30
    assert all(m.extra["at_rest"] is False for m in walk + settling)
    assert all(m.extra["at_rest"] is True for m in rest)
    assert np.median([m.value for m in walk]) == pytest.approx(HR, abs=3)
    assert all(abs(m.value - HR) < 5 for m in settling + rest)
    events = feed_series(engine(), hr)
    assert states(events) == [("hr_high", "raised")]
    # raised after the rest's settling time plus the rule's 60 s hold, not during or right after the walk
    assert events[0].at >= T0 + WALK_END_S + REST_SETTLE_S + 60
    assert all(r.extra.get("at_rest") is True for r in events[0].readings)

    # the same recording without the accelerometer: unmarked, so every reading counts as at rest and
    # the same rate raises hr_high within a minute or two of stopping (what the marking prevents)
    unmarked = _hr(WristStream("wrist-1"), rec, accel=False)
    assert unmarked and all("at_rest" not in m.extra for m in unmarked)
    early = feed_series(engine(), unmarked)
    assert states(early) == [("hr_high", "raised")] and early[0].at < T0 + WALK_END_S + 180


def test_ppg_frame_format_2_carries_acceleration_and_activity_and_format_1_still_reads() -> None:
    src, motion = make_source(100.0, hr_bpm=HR), WristMotion(100.0)
    motion.set_walking(True, 0.0)
    samples = motion.apply(300, 12, src.samples(300, 12))
    for at_rest in (None, True, False):
        data = gatt.encode_ppg_frame(300, 100.0, samples, at_rest=at_rest)
        assert data == profiles.ppg_frame(300, 100.0, samples, at_rest)  # device and gateway agree
        frame = gatt.decode_ppg_frame(data)
        assert data[0] == 0x20 and frame.at_rest is at_rest
        assert frame.channels == {k: tuple(v) for k, v in samples.items()}
    v1 = gatt.decode_ppg_frame(profiles.ppg_frame(5, 25.0, {"ir": [1, 2], "green": [3, -4]}))
    assert v1.at_rest is None and set(v1.channels) == {"ir", "green"}
    good = bytearray(gatt.encode_ppg_frame(1, 100.0, samples, at_rest=True))
    for offset, value, why in ((9, 3, "activity 3"), (1, 0x08, "channel mask"), (0, 0x30, "format version 3")):
        bad = bytearray(good)
        bad[offset] = value
        with pytest.raises(gatt.GattDecodeError, match=why):
            gatt.decode_ppg_frame(bytes(bad))
    v1_with_accel = bytearray(gatt.encode_ppg_frame(1, 100.0, {"ir": [1]}))
    v1_with_accel[1] |= gatt.PPG_ACCEL_BIT
    with pytest.raises(gatt.GattDecodeError, match="channel mask"):
        gatt.decode_ppg_frame(bytes(v1_with_accel))
    with pytest.raises(gatt.GattDecodeError):
        gatt.decode_ppg_frame(good[:-1])
    asm = PpgAssembler("wrist-1", block_s=0.1)
    blocks = asm.feed(gatt.decode_ppg_frame(bytes(good)), 100.0)
    assert blocks and blocks[0].channels["accel_x"][0] == samples["accel_x"][0] / 1000.0  # mg -> g


WRIST = "C0:FF:EE:00:00:14"


def test_the_stream_gives_its_verdict_for_a_device_computed_heart_rate(walk_then_rest: PpgRecording) -> None:
    stream = WristStream("wrist-1")
    assert stream.at_rest(T0) is None  # nothing analysed yet
    _hr(stream, walk_then_rest)
    end = T0 + len(walk_then_rest) / FS
    assert stream.at_rest(end) is True and stream.at_rest(end - 1.0) is True
    assert stream.at_rest(end + 60.0) is None  # stale: the stream stopped
    walking = WristStream("wrist-1")
    _hr(walking, generate(60.0, fs=FS, hr_bpm=HR, walking=[(0.0, 60.0)], seed=15))
    assert walking.at_rest(T0 + 60.0) is False
    unmarked = WristStream("wrist-1")
    _hr(unmarked, walk_then_rest, accel=False)
    assert unmarked.at_rest(end) is None


def test_gatewayd_publishes_at_rest_on_the_wrist_heart_rate(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    """Virtual BlueZ wrist (walking, then sitting) -> gatewayd as a process -> Mosquitto -> the cloud, whose
    subscriber checks every message against the contract's schemas."""
    wrist = WristMonitor(WRIST, ppg_per_frame=10, hr_bpm=HR, accel=True)
    assert wrist.motion is not None
    wrist.motion.rest_settle_s = 3.0  # the device's own settling; the gateway keeps its 5 min
    devices = f'[[devices]]\nid = "wrist-1"\nkind = "ble-wrist"\ntransport = "ble"\naddress = "{WRIST}"\n'
    gw = GatewayProcess(gateway_config(tmp_path, broker.port, devices=devices))

    def hr(method: str) -> list[dict[str, Any]]:
        obs = cloud.of_type("observation")
        return [o for o in obs if o.get("code") == LOINC_HEART_RATE and o.get("method") == method]

    def device_flag(flag: bool) -> bool:
        return any(o.get("extra", {}).get("at_rest") is flag for o in hr("device"))

    async def go() -> None:
        async with virtual_bluez([wrist]):
            await wrist.command("set", {"walking": True})
            gw.start()  # inherits DBUS_SYSTEM_BUS_ADDRESS of the virtual BlueZ
            try:
                await until(lambda: device_flag(False), 40, "walking")
                await asyncio.sleep(8.0)
                await wrist.command("set", {"walking": False})
                await until(lambda: device_flag(True), 20, "sitting")
                await until(lambda: hr("gateway"), 25, "the gateway's own heart rate")
            finally:
                gw.stop_quietly()

    asyncio.run(go())
    gateway = hr("gateway")
    # sitting, but within the gateway's 5 min of settling after the walk: not a resting heart rate yet
    assert all(o["extra"]["at_rest"] is False and abs(o["value"] - HR) < 5 for o in gateway)
    assert not cloud.of_type("alert")


@settings(max_examples=150, deadline=None)
@given(
    accel=hnp.arrays(
        np.float64, st.tuples(st.integers(0, 60), st.integers(1, 4)), elements=st.floats(allow_nan=True, width=64)
    ),
    fs=st.sampled_from([10.0, 100.0, 0.0, math.nan]),
    t=st.floats(allow_nan=True, allow_infinity=True),
)
def test_any_acceleration_gives_a_verdict_or_none_never_an_error(accel: np.ndarray, fs: float, t: float) -> None:
    verdict = RestTracker().update(accel, fs, t)
    assert verdict is None or isinstance(verdict, bool)
    if accel.ndim != 2 or accel.shape[1] != 3 or not np.all(np.isfinite(accel)):
        assert verdict is None


def test_the_pipeline_marks_a_heart_rate_the_device_computed_with_its_streams_verdict(
    tmp_path: Path, walk_then_rest: PpgRecording
) -> None:
    """A wrist that sends acceleration but no activity flag: the heart rate it computed itself is
    marked by the gateway's own verdict (walking: not at rest; sitting long enough: at rest); a
    heart rate of a device without a stream, or one that carries its own flag, is left as it is."""
    from gateway.messages import Topics
    from gateway.outbox import Outbox
    from gateway.pipeline import Pipeline

    async def go() -> list[Measurement]:
        async with Outbox(tmp_path / "outbox.sqlite3") as outbox:
            runner = asyncio.create_task(outbox.run())
            pipeline = Pipeline(Topics("homecare/v1", "gw-1"), outbox, dsp_factory=lambda dev: WristStream(dev))
            seen: list[Measurement] = []
            pipeline.on_reading(lambda r: seen.append(r) if isinstance(r, Measurement) else None)

            def device_hr(device: str, at: float, **extra: Any) -> None:
                pipeline.sink(Measurement(device, LOINC_HEART_RATE, HR, "/min", at, "device", extra=extra))

            for w in _blocks(walk_then_rest):
                pipeline.sink(w)
                at = w.captured_at + 1.0
                if abs(at - (T0 + 100.0)) < 0.5 or abs(at - (T0 + 590.0)) < 0.5:
                    device_hr("wrist-1", at)
            device_hr("cuff-1", T0 + 590.0)  # no stream: nothing to judge by
            device_hr("wrist-1", T0 + 590.5, at_rest=False)  # the device's own flag wins
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            return [m for m in seen if m.method == "device"]

    walking, sitting, cuff, flagged = asyncio.run(go())
    assert walking.extra.get("at_rest") is False, walking
    assert sitting.extra.get("at_rest") is True, sitting
    assert "at_rest" not in cuff.extra
    assert flagged.extra["at_rest"] is False
