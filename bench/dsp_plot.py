"""A PNG for checking a case by eye: a PPG window with the detected beats, the RR tachogram and the AF mask.

The signal runs through the gateway's own streaming DSP (:class:`gateway.dsp.stream.WristStream`, the
same code the daemon runs), so the beats, rejected windows and AF mask are what the gateway would report.

Sources: the realistic generator (``--rhythm sinus|af|ectopic``, ``--af-from/--af-to`` for an episode,
``--motion-at`` for an artefact), or a BIDMC recording (``--bidmc 01``, fingertip PPG, ../shared/data).

    python -m bench.dsp_plot --out /tmp/case.png --rhythm sinus --af-from 100 --af-to 220 --minutes 5
    python -m bench.dsp_plot --out /tmp/bidmc.png --bidmc 01 --window-at 60

Panels: (1) ``--window-s`` seconds of PPG from ``--window-at`` with the detected systolic peaks (and the
true ones for the generator); (2) the RR tachogram of the whole span from the PPG beats, AF-flagged
intervals in red, the generator's true AF stretches shaded; (3) the stream's heart rate and SpO2 outputs.
matplotlib is a bench extra (``pip install matplotlib``); the daemon never imports it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivers.base import Waveform
from gateway.dsp import estimate_heart_rate, screen_af
from gateway.dsp.stream import LOINC_HR, LOINC_SPO2, WristStream
from simulators.ppg import PpgRecording, generate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="dsp_plot.png")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--rhythm", choices=["sinus", "af", "ectopic"], default="sinus")
    ap.add_argument("--hr", type=float, default=72.0)
    ap.add_argument("--af-from", type=float, default=None)
    ap.add_argument("--af-to", type=float, default=None)
    ap.add_argument("--motion-at", type=float, default=None, help="a 15 s motion artefact from this time")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bidmc", default=None, help="BIDMC record (e.g. 01) instead of the generator")
    ap.add_argument("--window-at", type=float, default=30.0)
    ap.add_argument("--window-s", type=float, default=15.0)
    args = ap.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return 2

    rec: PpgRecording | None = None
    if args.bidmc:
        from bench import datasets

        b = datasets.load_bidmc(args.bidmc)
        fs, x, inverted = b.fs, np.nan_to_num(b.ppg), False
        channels = {"pleth": x}
    else:
        eps = [(args.af_from, args.af_to)] if args.af_from is not None and args.af_to is not None else []
        mot = [(args.motion_at, args.motion_at + 15.0)] if args.motion_at is not None else []
        rec = generate(
            args.minutes * 60.0, hr_bpm=args.hr, rhythm=args.rhythm, seed=args.seed, af_episodes=eps, motion=mot
        )
        fs, x, inverted = rec.fs, rec.ir, True
        channels = {"red": rec.red, "ir": rec.ir, "green": rec.green}
    n = len(x)
    span = n / fs
    stream = WristStream("plot", af_window_s=span + 1.0, af_hop_s=span + 1.0)
    out = []
    blk = round(fs)
    for i in range(0, n, blk):
        w = Waveform("plot", i / fs, fs, {k: tuple(v[i : i + blk].tolist()) for k, v in channels.items()}, i)
        out.extend(stream.push_waveform(w))
    pairs = stream.beat_intervals()
    t_rr = np.array([t for t, _ in pairs])
    rr = np.array([r for _, r in pairs])
    af = screen_af(rr) if len(rr) else None

    fig, ax = plt.subplots(3, 1, figsize=(12, 9), constrained_layout=True)
    a, b_ = round(args.window_at * fs), round((args.window_at + args.window_s) * fs)
    seg = x[a:b_]
    hr = estimate_heart_rate(seg, fs, inverted=inverted)
    t_seg = args.window_at + np.arange(len(seg)) / fs
    sign = -1.0 if inverted else 1.0
    ax[0].plot(t_seg, sign * seg, lw=0.8, color="k", label="PPG (upright)")
    bt = hr.beat_times_s
    idx = np.clip(np.round(bt * fs).astype(int), 0, len(seg) - 1)
    ax[0].plot(args.window_at + bt, sign * seg[idx], "rv", label="detected beats")
    if rec is not None:
        tb = rec.truth.beat_times_s
        tb = tb[(tb >= args.window_at) & (tb < args.window_at + args.window_s)]
        ax[0].vlines(tb, *ax[0].get_ylim(), colors="tab:green", lw=0.6, alpha=0.6, label="true beats")
    bpm = "no value" if hr.bpm is None else f"{hr.bpm:.1f} /min"
    ax[0].set_title(f"PPG window: {bpm}, quality {hr.quality:.2f} {', '.join(hr.sqi.reasons)}")
    ax[0].set_xlabel("s")
    ax[0].legend(loc="upper right", fontsize=8)

    if len(rr):
        ax[1].plot(t_rr, rr, ".-", lw=0.5, ms=3, color="tab:blue", label="RR from PPG beats")
        if af is not None and af.af_mask.any():
            ax[1].plot(t_rr[af.af_mask], rr[af.af_mask], "r.", ms=4, label="AF mask")
        title = f"RR tachogram: AF screen label={af.label}, burden={af.burden:.2f}" if af else "RR tachogram"
        ax[1].set_title(title)
    if rec is not None and rec.truth.af_mask.any():
        ends = rec.truth.beat_times_s[1:]
        m = rec.truth.af_mask
        starts = np.flatnonzero(np.diff(np.r_[0, m.astype(int)]) == 1)
        stops = np.flatnonzero(np.diff(np.r_[m.astype(int), 0]) == -1)
        for s0, s1 in zip(starts, stops, strict=True):
            ax[1].axvspan(ends[s0], ends[s1], color="red", alpha=0.1, label="true AF" if s0 == starts[0] else None)
    ax[1].set_ylabel("s")
    ax[1].legend(loc="upper right", fontsize=8)

    for code, style, label in ((LOINC_HR, "o-", "HR /min"), (LOINC_SPO2, "s-", "SpO2 %")):
        pts = [(m.captured_at, m.value) for m in out if m.code == code]
        if pts:
            ax[2].plot(*zip(*pts, strict=True), style, ms=3, label=label)
    ax[2].set_title(f"Gateway outputs (windows rejected by the SQI: {stream.counters.unusable_windows})")
    ax[2].set_xlabel("s")
    ax[2].legend(loc="upper right", fontsize=8)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    print(
        f"RESULT beats={len(rr)} af_burden={af.burden if af else 0.0:.3f} "
        f"windows={stream.counters.windows} rejected={stream.counters.unusable_windows}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
