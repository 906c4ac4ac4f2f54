"""Speed of the gateway's streaming DSP against HeartPy and NeuroKit2, on the same 100 Hz PPG, same run.

Ours: :class:`gateway.dsp.stream.WristStream` fed 1 s Waveform blocks of red/IR/green at 100 Hz, i.e. the
daemon's full per-window work: heart rate + signal quality on a 10 s window every 5 s, SpO2 (ratio of
ratios) on the same window, AF screening of the last 120 s of beats every 60 s, plus buffering.
Peers: HeartPy ``process`` and NeuroKit2 ``ppg_process`` on the same 10 s windows every 5 s (the IR
channel, upright) -- heart rate only, so they do less work than ours.

Real-time factor = seconds of signal / seconds of CPU (``time.process_time``, this process; numpy and
scipy calls here are single-threaded, so it is one core). The signal is the realistic generator's: sinus
rhythm with AF episodes, a desaturation, brief motion. Accuracy in the same run: each method's HR MAE
(bpm) against the generator's ground truth on the windows where ours gave a value (the SQI rejects the
motion windows), so that speed is compared at known accuracy.

Usage: ``python -m bench.dsp_speed [--minutes 30] [--quick] [--motion] [--accel] [--moving] [--repeat N]``
(``--motion``: the generator's accelerometer too, and the stream's motion path on; ``--accel``: the
accelerometer with the motion path off, as the daemon runs a wrist that sends one; ``--repeat``: the
least CPU time of N runs of ours); ends with
``RESULT realtime_factor=... speedup_vs_heartpy=... speedup_vs_neurokit=...``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import waveform_blocks
from bench.dsp_eval_hr import heartpy_rate, neurokit_rate, peers_available
from drivers.base import Waveform
from gateway.dsp.stream import ACCEL, HOP_S, LOINC_HR, WINDOW_S, WristStream
from simulators.ppg import Desaturation, PpgRecording, generate

FS = 100.0


def _recording(minutes: float, seed: int = 1, moving: bool = False) -> tuple[PpgRecording, float]:
    dur = minutes * 60.0
    rec = generate(
        dur,
        fs=FS,
        hr_bpm=72.0,
        seed=seed,
        af_episodes=[(dur * 0.3, dur * 0.6)],
        af_hr_bpm=95.0,
        desaturations=[Desaturation(dur * 0.1, nadir=86.0)],
        motion=[(0.0, dur)] if moving else [(dur * 0.8, dur * 0.8 + 20.0)],
    )
    return rec, dur


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="signal length for ours (default 30 min)")
    ap.add_argument("--peer-minutes", type=float, default=5.0, help="signal length for each peer (default 5)")
    ap.add_argument("--quick", action="store_true", help="5 min for ours, 1 min for the peers")
    ap.add_argument(
        "--motion", action="store_true", help="also send accel_x/y/z and run the motion path (motion_hr=True)"
    )
    ap.add_argument(
        "--accel", action="store_true", help="also send accel_x/y/z, motion path off (the daemon's default)"
    )
    ap.add_argument(
        "--moving",
        action="store_true",
        help="the whole recording moves (with --motion: the tracker on every 2 s hop, the motion path's worst case)",
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="run ours this many times on a fresh stream, keep the least CPU"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.minutes, args.peer_minutes = 5.0, 1.0
    rec, dur = _recording(args.minutes, moving=args.moving)
    channels = {c: getattr(rec, c) for c in ("red", "ir", "green")}
    if args.motion or args.accel:
        channels |= {a: rec.accel[:, k] for k, a in enumerate(ACCEL)}
    blocks = waveform_blocks(Waveform, channels, FS)
    cpu = wall = math.inf
    for _ in range(max(1, args.repeat)):  # the least CPU of several runs: a shared machine only adds time
        stream = WristStream("bench", motion_hr=args.motion)
        out = []
        c0 = time.process_time()
        w0 = time.perf_counter()
        for w in blocks:
            out.extend(stream.push_waveform(w))
        cpu = min(cpu, time.process_time() - c0)
        wall = min(wall, time.perf_counter() - w0)
    rtf = dur / cpu
    windows = stream.counters.windows
    print(f"ours: {dur:.0f} s of 100 Hz red/ir/green in {cpu * 1e3:.1f} ms CPU ({wall * 1e3:.1f} ms wall)")
    print(f"  windows={windows} cpu_per_window_us={cpu / windows * 1e6:.0f} realtime_factor={rtf:.0f}")
    print(f"  emitted: {dict(stream.counters.__dict__)}")

    truth = rec.truth
    ours_hr = {round(m.captured_at - 1.8e9, 3): m.value for m in out if m.code == LOINC_HR}

    # peers on the same windows of the first peer_minutes (upright IR)
    upright = -rec.ir
    peer_dur = min(dur, args.peer_minutes * 60.0)
    ends = np.arange(WINDOW_S, peer_dur + 1e-9, HOP_S)
    res = {"realtime_factor": rtf}
    errs: dict[str, list[float]] = {"ours": []}
    avail = peers_available()
    peers = {"heartpy": heartpy_rate, "neurokit": neurokit_rate}
    peer_rtf: dict[str, float] = {}
    for name, fn in peers.items():
        if not avail["heartpy" if name == "heartpy" else "neurokit2"]:
            print(f"{name}: not installed (pip install heartpy neurokit2)")
            continue
        errs[name] = []
        c0 = time.process_time()
        vals = [fn(upright[round((t - WINDOW_S) * FS) : round(t * FS)], FS) for t in ends]
        pcpu = time.process_time() - c0
        peer_rtf[name] = peer_dur / pcpu
        print(
            f"{name}: {len(ends)} windows, {peer_dur:.0f} s, {pcpu * 1e3:.0f} ms CPU, "
            f"realtime_factor={peer_rtf[name]:.0f}"
        )
        res[f"coverage_{name}"] = sum(v is not None for v in vals) / len(ends) if len(ends) else math.nan
        for t, v in zip(ends, vals, strict=True):
            ours_v = ours_hr.get(round(float(t), 3))
            if ours_v is None or v is None:
                continue
            errs[name].append(abs(v - truth.hr_bpm(t - WINDOW_S, t)))
    res["coverage"] = sum(round(float(t), 3) in ours_hr for t in ends) / len(ends) if len(ends) else math.nan
    for t in ends:
        ours_v = ours_hr.get(round(float(t), 3))
        if ours_v is not None:
            errs["ours"].append(abs(ours_v - truth.hr_bpm(t - WINDOW_S, t)))
    for name, e in errs.items():
        mae = float(np.mean(e)) if e else math.nan
        res["mae" if name == "ours" else f"mae_{name}"] = mae
        print(f"  {name}: HR MAE vs generator truth {mae:.3f} bpm on {len(e)} windows")
    res["speedup_vs_heartpy"] = rtf / peer_rtf["heartpy"] if "heartpy" in peer_rtf else math.nan
    res["speedup_vs_neurokit"] = rtf / peer_rtf["neurokit"] if "neurokit" in peer_rtf else math.nan
    res["cpu_per_window_us"] = cpu / windows * 1e6
    order = ["realtime_factor", "speedup_vs_heartpy", "speedup_vs_neurokit", "cpu_per_window_us", "mae"]
    order += sorted(k for k in res if k.startswith("mae_"))
    order += ["coverage", *sorted(k for k in res if k.startswith("coverage_"))]
    print("RESULT " + " ".join(f"{k}={res[k]:.3f}" for k in order))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
