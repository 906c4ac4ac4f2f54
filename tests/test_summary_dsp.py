"""The daily summary fed by the gateway's own DSP: a generated wrist PPG (simulators/ppg.py: sinus, an AF
episode, a desaturation, with its ground truth) through the real pipeline and WristStream; the summary's
figures against the generator's truth."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

from drivers.base import Waveform
from gateway.outbox import Outbox
from gateway.pipeline import Pipeline
from gateway.summarydesk import SummaryDesk, build
from gateway.summarystore import SummaryStore
from simulators.ppg import Desaturation, generate
from tests.test_summary import DATE, START, TOPICS, Wall, config

FS = 50.0
T0 = START + 3600.0  # 21:00 local, inside the summary day
AF = (120.0, 360.0)
DESAT = Desaturation(start_s=400.0, nadir=86.0, fall_s=10.0, hold_s=30.0, rise_s=10.0)


def test_dsp_values_reach_the_summary_and_match_the_generators_truth(tmp_path: Path) -> None:
    from gateway.dsp.stream import WristStream

    rec = generate(480.0, fs=FS, hr_bpm=68.0, af_episodes=[AF], desaturations=[DESAT], seed=11)
    wall = Wall(T0)

    async def go() -> dict[str, Any]:
        async with Outbox(tmp_path / "outbox.sqlite3") as ob:
            committer = asyncio.create_task(ob.run())
            pipeline = Pipeline(TOPICS, ob, clock=wall, dsp_factory=lambda dev: WristStream(dev))
            store = SummaryStore(tmp_path / "s.sqlite3")
            desk = SummaryDesk(config(tmp_path), TOPICS, pipeline.submit, store, wall=wall)
            pipeline.on_reading(desk.feed)
            n = int(FS)
            for i in range(0, len(rec) - n + 1, n):
                wall.t = T0 + (i + n) / FS
                block = {"red": rec.red[i : i + n].tolist(), "ir": rec.ir[i : i + n].tolist()}
                pipeline.sink(Waveform("wrist-1", T0 + i / FS, FS, block, first_index=i))
            await ob.flush()
            committer.cancel()
            desk.save()
            body: dict[str, Any] = build(desk.store, desk.schedule, desk.subjects, "anna", DATE, wall.t)["summary"]
            desk.close()
            return body

    s = asyncio.run(go())
    truth = rec.truth
    # what the DSP estimates: the mean rate over its 10-s windows, every 5 s
    hr_truth = [truth.hr_bpm(t - 10.0, t) for t in np.arange(10.0, 480.0, 5.0)]
    below_90_truth = float(np.sum(truth.spo2 < 90.0)) / FS / 60.0
    print(
        f"summary hr median {s['heart_rate']['median']} truth {np.median(hr_truth):.1f}; "
        f"spo2 min {s['spo2']['min']} truth {truth.spo2.min():.1f}; "
        f"below 90 {s['spo2']['minutes_below_90']} min truth {below_90_truth:.2f}; "
        f"af episodes {s['af']['episodes']} truth 1, burden {s['af']['burden']} "
        f"truth share {(AF[1] - AF[0]) / 480:.2f}, stretches {s['af']['stretches']}"
    )
    assert abs(s["heart_rate"]["median"] - float(np.median(hr_truth))) <= 3.0
    assert s["heart_rate"]["minutes"] >= 7
    assert abs(s["spo2"]["min"] - DESAT.nadir) <= 2.5
    assert abs(s["spo2"]["minutes_below_90"] - below_90_truth) <= 0.5
    assert s["af"]["episodes"] == 1
    assert abs(s["af"]["burden"] - (AF[1] - AF[0]) / 480.0) <= 0.15
    (stretch,) = s["af"]["stretches"]
    start = dt.datetime.fromisoformat(stretch["start"]).timestamp() - T0
    end = dt.datetime.fromisoformat(stretch["end"]).timestamp() - T0
    assert start < AF[1] and end > AF[0]  # the screens found the episode where it was
    assert s["af"]["screened_minutes"] >= 5
