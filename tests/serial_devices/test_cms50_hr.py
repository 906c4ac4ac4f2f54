"""CMS50 pty simulator streaming the realistic PPG generator -> CMS50 driver -> WristStream: the gateway's
heart rate is within 2 bpm of the generator's ground truth (issue 5's oximeter test, issue 3's stream).

Only the USB socket is fake; the driver, port layer, parser and the DSP stream run unmodified. Sinus rhythm
(with its natural variability): in AF the "true" rate of a 10 s window depends on which edge beat falls
inside it by up to ~5 bpm, so AF accuracy is tested on whole-beat windows in tests/dsp instead."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from drivers.base import DeviceSpec, DriverContext, Measurement, Reading, Waveform
from drivers.serial.cms50 import Cms50Driver
from gateway.dsp.stream import LOINC_HR, WINDOW_S, WristStream
from simulators.cms50_sim import FS, Cms50Simulator
from tests.serial_devices.test_serial_pty import _stop, _wait


@pytest.mark.parametrize(("hr", "rhythm", "seed"), [(58.0, "sinus", 31), (104.0, "sinus", 32)])
def test_cms50_waveform_gives_the_generators_heart_rate(tmp_path: Path, hr: float, rhythm: str, seed: int) -> None:
    link = tmp_path / "by-id" / "usb-Silicon_Labs_CP2102_USB_to_UART_Bridge_Controller_0042-if00-port0"
    stream = WristStream("ox-1")
    got: list[tuple[Measurement, float]] = []  # gateway HR and the simulator's time when it came out
    device_values: list[Measurement] = []
    sim_holder: list[Cms50Simulator] = []

    def sink(r: Reading) -> None:
        if isinstance(r, Waveform):
            for m in stream.push_waveform(r):
                if m.code == LOINC_HR:
                    got.append((m, sim_holder[0].pulse.i / FS))
        elif isinstance(r, Measurement):
            device_values.append(r)

    async def go() -> None:
        async with Cms50Simulator(link, hr_bpm=hr, spo2=95, seed=seed, rhythm=rhythm) as sim:  # type: ignore[arg-type]
            sim_holder.append(sim)
            spec = DeviceSpec("ox-1", "serial-cms50", "serial", {"port": str(link), "report_every_s": 1.0})
            task = asyncio.create_task(Cms50Driver(spec, sink, DriverContext()).run())
            await _wait(lambda: len(got) >= 2, timeout=40.0, what="two gateway heart rates")
            await _stop(task)

    asyncio.run(go())
    beats = np.asarray(sim_holder[0].pulse.beat_times_s)
    for m, t_sim in got:
        assert m.method == "gateway" and m.unit == "/min" and m.device_id == "ox-1"
        # the window ends at the last frame the driver received: at most a few frames before t_sim
        b = beats[(beats > t_sim - WINDOW_S - 0.2) & (beats <= t_sim - 0.2)]
        truth = 60.0 / float(np.mean(np.diff(b)))
        assert abs(m.value - truth) <= 2.0, (m.value, truth)
    # the device's own values pass through untouched, as method="device"
    assert device_values and all(d.method == "device" for d in device_values)
