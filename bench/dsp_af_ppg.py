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

Then the care rule the screens feed (``af_followup`` of :mod:`gateway.rules.defaults`: the mean burden of
an hour's screens, an hour without a gap over 15 min): ``--rule-minutes`` of AF with the last 0.4 and 0.5
of every minute moving, through the stream into the real :class:`gateway.rules.engine.RuleEngine`; per
duty, the screens emitted, the longest time without one, and when the rule raised (``never``).

Synthetic PPG only: real wrist PPG in AF is not in ``../shared/data``; real wrist PPG in sinus rhythm is
(``bench/dsp_eval_wrist.py``, ``*_af_false``).

Usage: ``.venv/bin/python -m bench.dsp_af_ppg [--seeds 3] [--minutes 10] [--rule-minutes 75]``. Ends
with one ``RESULT`` line: ``af_found_<duty>`` (the share of AF screens labelled ``af``),
``sinus_false_<duty>`` (sinus screens labelled ``af``), ``*_insufficient_<duty>``, and for the rule
``rule_screens_<duty>``, ``rule_max_gap_s_<duty>``, ``rule_raised_min_<duty>`` (-1: never).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import result_line
from drivers.base import Measurement, Waveform
from gateway.dsp.stream import CODE_AF, WristStream
from gateway.rules.engine import RuleEngine
from gateway.rules.spec import WatchSettings
from simulators.ppg import generate

DUTIES = (0.0, 0.25, 0.4, 0.5, 0.6)
T0 = 1_800_000_000.0


def screened(minutes: float, af: bool, duty: float, seed: int) -> tuple[list[Measurement], WristStream]:
    """The stream's AF screens over one generated recording, and the stream (its counters)."""
    dur = 60.0 * minutes
    motion = [(t + 60.0 * (1.0 - duty), t + 60.0) for t in np.arange(0.0, dur, 60.0).tolist()] if duty else []
    episodes = [(0.0, dur)] if af else []
    rec = generate(dur, hr_bpm=72.0, seed=seed, af_episodes=episodes, af_hr_bpm=100.0, motion=motion)
    s = WristStream("w1")
    out: list[Measurement] = []
    n = round(rec.fs)
    for i in range(0, len(rec), n):
        ch = {c: getattr(rec, c)[i : i + n] for c in ("red", "ir", "green")}
        out.extend(
            m for m in s.push_waveform(Waveform("w1", T0 + i / rec.fs, rec.fs, ch, first_index=i)) if m.code == CODE_AF
        )
    return out, s


def screens(minutes: float, af: bool, duty: float, seed: int) -> Counter[str]:
    """The labels of the stream's AF screens over one generated recording, ``insufficient`` included."""
    out, s = screened(minutes, af, duty, seed)
    got = Counter(str(m.extra["label"]) for m in out)
    got["insufficient"] = s.counters.reasons.get("af-insufficient", 0)
    return got


def rule_case(minutes: float, duty: float, seed: int) -> tuple[int, float, float]:
    """AF all along, the last ``duty`` of every minute moving: the screens emitted, the longest time
    without one (s, from the start), and the minute the ``af_followup`` rule raised (-1: never)."""
    out, _ = screened(minutes, True, duty, seed)
    eng = RuleEngine(WatchSettings(timezone="UTC"))
    raised = -1.0
    for m in out:
        for e in eng.feed(m, m.captured_at):
            if e.kind == "af_followup" and e.state == "raised" and raised < 0:
                raised = (e.at - T0) / 60.0
    times = [T0] + [m.captured_at for m in out] + [T0 + 60.0 * minutes]
    return len(out), float(np.max(np.diff(times))), raised


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rule-minutes", type=float, default=75.0)
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
    print(f"af_followup over {args.rule_minutes:.0f} min of AF (seed 100): screens / longest without one / raised")
    for duty in (0.4, 0.5):
        n, gap, raised = rule_case(args.rule_minutes, duty, 100)
        when = f"at minute {raised:.0f}" if raised >= 0 else "never"
        print(f"{duty:8.2f}     {n:4d} screens / {gap:5.0f} s / {when}")
        key = f"{duty:g}".replace(".", "p")
        figures[f"rule_screens_{key}"] = float(n)
        figures[f"rule_max_gap_s_{key}"] = gap
        figures[f"rule_raised_min_{key}"] = raised
    print(result_line(**figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
