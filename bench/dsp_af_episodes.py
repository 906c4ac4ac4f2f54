"""How short an AF episode the screen finds: detection probability by episode length and heart rate.

The AFDB figures (bench/dsp_eval.py) pool intervals, so long episodes dominate them; a clinician asks
instead "will a 1-minute episode be reported?". This script answers on the synthetic generator
(:func:`simulators.ppg.beat_sequence`: sinus rhythm with respiratory arrhythmia, AF with ~20 % RR
scatter), since no public recording has enough short episodes of known length. Each case is one AF
episode in the middle of 10 minutes of sinus rhythm at the same mean rate, over ``--seeds`` seeds.

Two ways of reporting, with the daemon's windows (:func:`bench.dsp_eval.stream_windows`): *found* = at
least one 120 s window (every 60 s) is labelled ``"af"``; *coverage* = fraction of the episode's intervals
inside the screen's AF mask (each interval from the first window that reports it); *false* = sinus
intervals inside the mask, per episode (the edges the smoothing spreads).

Usage: ``.venv/bin/python bench/dsp_af_episodes.py [--seeds 20]``. Synthetic RR only (no PPG beat
detection), so these are upper bounds for a wrist. Ends with one ``RESULT`` line: ``found_<L>s`` for
each length L pooled over the rates.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import result_line
from bench.dsp_eval import stream_windows
from simulators.ppg import beat_sequence

LENGTHS_S = (20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0)
RATES_BPM = (60.0, 80.0, 110.0)
TOTAL_S = 600.0


def one_case(length_s: float, hr_bpm: float, seed: int) -> tuple[bool, float, int]:
    start = (TOTAL_S - length_s) / 2
    beats, truth, _ = beat_sequence(
        TOTAL_S, hr_bpm, "sinus", np.random.default_rng(seed), af_episodes=[(start, start + length_s)]
    )
    rr = np.diff(beats)
    truth = truth[: len(rr)]
    mask = np.zeros(len(rr), dtype=bool)
    found = False
    for sl, new, res in stream_windows(beats, rr):
        found |= res.label == "af"
        mask[sl][new] = res.af_mask[new]
    coverage = float(np.mean(mask[truth])) if truth.any() else float("nan")
    return found, coverage, int(np.count_nonzero(mask & ~truth))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20)
    args = ap.parse_args(argv)
    print(f"one AF episode in {TOTAL_S:.0f} s of sinus rhythm, {args.seeds} seeds a cell; found % / coverage % / false")
    print("length   " + "".join(f"{r:>22.0f}/min" for r in RATES_BPM))
    figures: dict[str, float] = {}
    for length in LENGTHS_S:
        cells = []
        found_all: list[bool] = []
        for rate in RATES_BPM:
            got = [one_case(length, rate, seed) for seed in range(args.seeds)]
            found = [g[0] for g in got]
            found_all.extend(found)
            cov = float(np.mean([g[1] for g in got]))
            false = float(np.mean([g[2] for g in got]))
            cells.append(f"{100 * np.mean(found):8.0f} / {100 * cov:5.1f} / {false:5.1f}")
        print(f"{length:5.0f} s " + "".join(f"{c:>26}" for c in cells))
        figures[f"found_{length:.0f}s"] = float(np.mean(found_all))
    print(result_line(**figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
