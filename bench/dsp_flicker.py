"""Mains light on a moving wrist: is 100 Hz flicker read as a pulse by the motion path?

Light flickering at 100 Hz (the lamps of a 50 Hz grid) on a 128 or 256 Hz device folds to 2.4 Hz (144
/min) when the motion path decimates to ~25 Hz (gateway/dsp/motion.py, ``decimated``; docs/dsp.md, step
1). Each scene is the daemon's own :class:`gateway.dsp.stream.WristStream` (``motion_hr=True``) fed 1 s
Waveform blocks of ``pleth`` and ``accel_x/y/z``: a walking arm (swing at 0.9 Hz, its step at 1.8 Hz)
and, on the PPG, a 100 Hz sine ``--amplitudes`` times the pulse's fundamental, sensor noise of 0.1 of
it, and either a pulse at 95 /min (fundamental + second harmonic) or none (a watch off the wrist).

Figures per rate and amplitude, over the motion path's windows (8 s every 2 s): ``pulseless_144_*``, the
share of a pulseless wrist's windows that get a heart rate within 5 /min of 144 (every one false);
``pulseless_any_*``, any value at all; ``pulse_right_*``, the share of a pulsing wrist's windows with a
value within 3 /min of 95. Amplitude 0 is the scene without flicker.

Usage: ``python -m bench.dsp_flicker [--seconds 90] [--amplitudes 0,1,3,10,30,100,300]``. Ends with one
``RESULT`` line.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import result_line
from drivers.base import Waveform
from gateway.dsp.stream import ACCEL, LOINC_HR, WristStream

RATES_HZ = (128.0, 256.0)
PULSE_BPM = 95.0
ALIAS_BPM = 144.0  # 100 Hz folded at 25.6 Hz: 100 - 4 x 25.6 = -2.4 Hz


def scene(fs: float, seconds: float, flicker: float, pulse: bool, seed: int) -> tuple[int, list[float]]:
    """The number of motion windows and the heart rates the stream gave for one scene."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * fs)) / fs
    swing = 0.9
    acc = np.column_stack(
        (
            0.3 * np.sin(2 * math.pi * swing * t),
            0.2 * np.sin(4 * math.pi * swing * t + 0.5),
            1.0 + 0.1 * np.sin(4 * math.pi * swing * t),
        )
    ) + 0.01 * rng.standard_normal((len(t), 3))
    hr = PULSE_BPM / 60.0
    ppg = 1000.0 + flicker * np.sin(2 * math.pi * 100.0 * t + 0.3) + 0.1 * rng.standard_normal(len(t))
    if pulse:
        ppg += np.sin(2 * math.pi * hr * t) + 0.4 * np.sin(4 * math.pi * hr * t + 1.0)
    stream = WristStream("flicker", motion_hr=True)
    step = round(fs)
    values: list[float] = []
    for i in range(0, len(t), step):
        ch = {"pleth": ppg[i : i + step]}
        ch.update({a: acc[i : i + step, k] for k, a in enumerate(ACCEL)})
        for m in stream.push_waveform(Waveform("flicker", i / fs, fs, ch, first_index=i)):
            if m.code == LOINC_HR and m.extra.get("method") == "spectral":
                values.append(float(m.value))
    return stream.counters.motion_windows, values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=90.0, help="length of each scene (default 90 s)")
    ap.add_argument("--amplitudes", default="0,1,3,10,30,100,300", help="flicker / pulse amplitude ratios")
    args = ap.parse_args(argv)
    amps = [float(a) for a in args.amplitudes.split(",")]
    figures: dict[str, float] = {}
    for fs in RATES_HZ:
        for amp in amps:
            key = f"fs{fs:.0f}_x{amp:g}"
            n, off = scene(fs, args.seconds, amp, False, seed=int(fs))
            n_on, on = scene(fs, args.seconds, amp, True, seed=int(fs) + 1)
            figures[f"pulseless_144_{key}"] = sum(abs(v - ALIAS_BPM) < 5.0 for v in off) / max(1, n)
            figures[f"pulseless_any_{key}"] = len(off) / max(1, n)
            figures[f"pulse_right_{key}"] = sum(abs(v - PULSE_BPM) < 3.0 for v in on) / max(1, n_on)
            print(
                f"  {fs:.0f} Hz, flicker {amp:g} x the pulse: pulseless {len(off)}/{n} windows with a value "
                f"({sum(abs(v - ALIAS_BPM) < 5.0 for v in off)} at 144 /min); with a pulse "
                f"{sum(abs(v - PULSE_BPM) < 3.0 for v in on)}/{n_on} right"
            )
    print(result_line(**figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
