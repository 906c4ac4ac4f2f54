"""AF screening from PPG beats when part of every minute is unusable: what the wrist's screen reports.

The daemon screens the beats it finds in the PPG (:class:`gateway.dsp.stream.WristStream`: a 120 s window
every 60 s). Only usable windows give beats, so when the wearer moves, a screen holds beats from part of
its window. A screen reports a label only when at least :data:`gateway.dsp.af.MIN_QUALITY` of its
window's time is covered by plausible intervals (``screen_af(..., span_s=...)``); otherwise it is
``insufficient`` and emits nothing (the AF rule reads only the screens it gets). Here each case is
``--minutes`` of generated wrist PPG (:func:`simulators.ppg.generate`, red/IR/green at its default rate)
in AF all along, or in sinus rhythm, with the last ``duty`` of every minute moving (the generator's motion
artefact), over ``--seeds`` seeds. Per duty: how many screens said ``af``, how many said something else,
and how many were insufficient.

Synthetic PPG only: real wrist PPG in AF is not in ``../shared/data``; real wrist PPG in sinus rhythm is
(``bench/dsp_eval_wrist.py``, ``*_af_false``).

Usage: ``.venv/bin/python -m bench.dsp_af_ppg [--seeds 3] [--minutes 10]``. Ends with one ``RESULT`` line:
``af_found_<duty>`` (the share of AF screens labelled ``af``), ``sinus_false_<duty>`` (sinus screens
labelled ``af``), ``*_insufficient_<duty>``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import result_line
from drivers.base import Waveform
from gateway.dsp.stream import CODE_AF, WristStream
from simulators.ppg import generate

DUTIES = (0.0, 0.25, 0.4, 0.5, 0.6)
T0 = 1_800_000_000.0


def screens(minutes: float, af: bool, duty: float, seed: int) -> Counter[str]:
    """The labels of the stream's AF screens over one generated recording, ``insufficient`` included."""
    dur = 60.0 * minutes
    motion = [(t + 60.0 * (1.0 - duty), t + 60.0) for t in np.arange(0.0, dur, 60.0).tolist()] if duty else []
    episodes = [(0.0, dur)] if af else []
    rec = generate(dur, hr_bpm=72.0, seed=seed, af_episodes=episodes, af_hr_bpm=100.0, motion=motion)
    s = WristStream("w1")
    got: Counter[str] = Counter()
    n = round(rec.fs)
    for i in range(0, len(rec), n):
        ch = {c: getattr(rec, c)[i : i + n] for c in ("red", "ir", "green")}
        for m in s.push_waveform(Waveform("w1", T0 + i / rec.fs, rec.fs, ch, first_index=i)):
            if m.code == CODE_AF:
                got[str(m.extra["label"])] += 1
    got["insufficient"] = s.counters.reasons.get("af-insufficient", 0)
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--minutes", type=float, default=10.0)
    args = ap.parse_args(argv)
    print(f"{args.minutes:.0f} min of generated PPG, {args.seeds} seeds a cell; screens: af / not af / insufficient")
    print("moving share   AF all along          sinus rhythm")
    figures: dict[str, float] = {}
    for duty in DUTIES:
        cells = []
        for af in (True, False):
            c: Counter[str] = Counter()
            for seed in range(args.seeds):
                c.update(screens(args.minutes, af, duty, 100 + seed + (0 if af else 1000)))
            total = max(1, sum(c.values()))
            other = total - c["af"] - c["insufficient"]
            cells.append(f"{c['af']:4d} / {other:4d} / {c['insufficient']:4d}")
            key = f"{'af_found' if af else 'sinus_false'}_{duty:g}".replace(".", "p")
            figures[key] = c["af"] / total
            figures[f"{'af' if af else 'sinus'}_insufficient_{duty:g}".replace(".", "p")] = c["insufficient"] / total
        print(f"{duty:8.2f}     {cells[0]:>20}  {cells[1]:>20}")
    print(result_line(**figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
