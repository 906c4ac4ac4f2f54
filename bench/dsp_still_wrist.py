"""The rest path on a still wrist of a moving body, as it is and with the motion cancelled first.

On the wrist exercise records (../shared/data/wrist_exercise) the wrist is at times still enough for the
time-domain path (:func:`gateway.dsp.heart.estimate_heart_rate` with the accelerometer: RMS dynamic
acceleration under :data:`gateway.dsp.quality.MAX_MOTION_G`) while the body pedals. Its beats then pass
the shape gate but are in part made by the motion (docs/dsp.md, "The rest path on a still wrist of a
moving body"). This diagnostic scores, on the rest path's own windows (10 s every 5 s) that are under the
motion limit, two estimates against the ECG (bench/dsp_eval_wrist.reference_rate):

- ``plain``: the rest path as the daemon runs it;
- ``cancelled``: :func:`gateway.dsp.motion.rate_motion_cancelled`, the same estimator on the PPG minus
  its least-squares fit on the accelerometer (three axes and the magnitude, band-passed as the PPG, at
  lags of -0.12..+0.12 s every 40 ms): the accelerometer-referenced canceller of the motion path (Ram et
  al. 2012) at the full rate, before the beats are found. The stream uses it only where the plain
  estimate has no value (docs/dsp.md), so ``cancelled only`` below is what it adds.

Per half (bench/dsp_eval_wrist.TUNE_SUBJECTS): windows each answered, MAE, and how many are more than 4
and 10 bpm off; and the windows by which of the two answered, with the errors of each.

Usage: ``.venv/bin/python -m bench.dsp_still_wrist``. Ends with one ``RESULT`` line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import datasets
from bench._common import result_line
from bench.dsp_eval_wrist import TUNE_SUBJECTS, filled, reference_rate
from gateway.dsp.heart import estimate_heart_rate
from gateway.dsp.motion import rate_motion_cancelled
from gateway.dsp.quality import MAX_MOTION_G, motion_level

WINDOW_S, HOP_S = 10.0, 5.0  # the rest path's windows (gateway.dsp.stream.WINDOW_S, HOP_S)


def main() -> int:
    if not datasets.available():
        print("../shared/data not found", file=sys.stderr)
        return 2
    rows: list[tuple[str, float | None, float | None]] = []  # half, plain error, cancelled error (signed)
    for name in datasets.wrist_records():
        rec = datasets.load_wrist(name)
        half = "tune" if rec.subject in TUNE_SUBJECTS else "test"
        x = filled(rec.ppg)
        acc = np.column_stack([filled(rec.accel[:, i]) for i in range(3)])
        t1 = WINDOW_S
        while t1 <= len(x) / rec.fs:
            a, b = round((t1 - WINDOW_S) * rec.fs), round(t1 * rec.fs)
            ref = reference_rate(rec.beats_s, t1 - WINDOW_S, t1)
            t1 += HOP_S
            if ref is None or not motion_level(acc[a:b]) <= MAX_MOTION_G:
                continue
            p = estimate_heart_rate(x[a:b], rec.fs, motion=acc[a:b]).bpm
            c = rate_motion_cancelled(x[a:b], acc[a:b], rec.fs).bpm
            if p is not None or c is not None:
                rows.append((half, None if p is None else p - ref, None if c is None else c - ref))
    figures: dict[str, float] = {}
    for half in ("tune", "test"):
        mine = [r for r in rows if r[0] == half]
        for i, method in ((1, "plain"), (2, "cancelled")):
            e = np.abs([r[i] for r in mine if r[i] is not None])
            figures[f"{half}_{method}_n"] = float(len(e))
            figures[f"{half}_{method}_mae"] = float(e.mean()) if len(e) else float("nan")
            figures[f"{half}_{method}_over4"] = float(np.sum(e > 4.0))
            figures[f"{half}_{method}_over10"] = float(np.sum(e > 10.0))
            print(
                f"{half} {method:9s}: {len(e):3d} windows, MAE {figures[f'{half}_{method}_mae']:.2f} bpm, "
                f"{int(np.sum(e > 4.0))} over 4, {int(np.sum(e > 10.0))} over 10"
            )
    for label, keep in (
        ("both answered", lambda r: r[1] is not None and r[2] is not None),
        ("plain only", lambda r: r[1] is not None and r[2] is None),
        ("cancelled only", lambda r: r[1] is None and r[2] is not None),
    ):
        sel = [r for r in rows if keep(r)]
        plain = np.abs([r[1] for r in sel if r[1] is not None])
        canc = np.abs([r[2] for r in sel if r[2] is not None])
        key = label.replace(" ", "_")
        figures[f"{key}_n"] = float(len(sel))
        parts = [f"{label}: {len(sel)} windows"]
        if len(plain):
            parts.append(f"plain MAE {plain.mean():.2f}, {int(np.sum(plain > 4.0))} over 4")
            figures[f"{key}_plain_over4"] = float(np.sum(plain > 4.0))
        if len(canc):
            parts.append(f"cancelled MAE {canc.mean():.2f}, {int(np.sum(canc > 4.0))} over 4")
            figures[f"{key}_cancelled_over4"] = float(np.sum(canc > 4.0))
        print("; ".join(parts))
    print(result_line(**figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
