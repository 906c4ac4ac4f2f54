"""The stream's speed against another commit's, paired: the same signal, the two runs alternating.

On a shared machine the CPU a run gets drifts by 30-50 % over minutes (other sessions, the host), more
than most changes to the DSP, so two ``bench.dsp_speed`` runs minutes apart compare the machine, not the
code. Here two worker processes, one importing ``gateway`` from this checkout and one from ``git archive
<base>`` in a temporary directory, each hold the same recorded blocks (generated once, here, by the
generator of :mod:`bench.dsp_speed`) and run the whole stream over them in turn, round after round: a
round's two runs are seconds apart, and the figure compared is each round's ratio (this tree's real-time
factor over the base's), of which the median is reported. Real-time factor as in ``bench.dsp_speed``
(seconds of signal per second of this process's CPU).

Usage: ``python -m bench.dsp_speed_pair [--base REV] [--rounds N] [--minutes M] [--case CASE ...]``,
cases ``plain`` (red/IR/green), ``accel`` (and the accelerometer, motion path off: the daemon's default
for a wrist that sends one), ``motion`` (motion path on), ``moving`` (motion path on, moving the whole
time: the tracker on every 2 s hop); ends with ``RESULT <case>_ratio=... <case>_rtf=... <case>_base_rtf=...``
(the medians) for every case. The base is ``HEAD`` by default, so that a clean checkout compares with
itself (ratios about 1: the method's own spread).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import waveform_blocks  # before a worker puts its tree first: this tree's, gateway-free

CASES = {  # case: (accelerometer sent, motion path on, moving the whole time)
    "plain": (False, False, False),
    "accel": (True, False, False),
    "motion": (True, True, False),
    "moving": (True, True, True),
}


def _worker(tree: str, signal: str, motion_hr: bool) -> int:
    """Serve runs: for each line on stdin, one fresh stream over the blocks; print the real-time factor."""
    sys.path.insert(0, tree)
    from drivers.base import Waveform
    from gateway.dsp.stream import WristStream

    data = np.load(signal)
    fs = float(data["fs"])
    names = [str(n) for n in data["names"]]
    arrays = [data[n] for n in names]
    blocks = waveform_blocks(Waveform, dict(zip(names, arrays, strict=True)), fs)
    n = len(arrays[0])
    for _ in sys.stdin:
        stream = WristStream("bench", motion_hr=motion_hr)
        c0 = time.process_time()
        for w in blocks:
            stream.push_waveform(w)
        print(n / fs / (time.process_time() - c0), flush=True)
    return 0


def _signal(path: Path, minutes: float, accel: bool, moving: bool) -> None:
    from bench.dsp_speed import FS, _recording
    from gateway.dsp.stream import ACCEL

    rec, _ = _recording(minutes, moving=moving)
    arrays = {c: np.asarray(getattr(rec, c), dtype=np.float64) for c in ("red", "ir", "green")}
    if accel:
        arrays |= {a: np.ascontiguousarray(rec.accel[:, k]) for k, a in enumerate(ACCEL)}
    np.savez(path, fs=FS, names=np.array(list(arrays)), **arrays)


def _archive(rev: str, into: Path) -> None:
    tar = into / "base.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(tar), rev], check=True)
    with tarfile.open(tar) as t:
        t.extractall(into / "tree", filter="data")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="HEAD", help="the commit to compare with (default HEAD)")
    ap.add_argument("--rounds", type=int, default=9, help="rounds per case (default 9)")
    ap.add_argument("--minutes", type=float, default=5.0, help="signal length per run (default 5 min)")
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="cases to run (default all)")
    ap.add_argument("--worker", nargs=3, metavar=("TREE", "SIGNAL", "MOTION"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        tree, signal, motion = args.worker
        return _worker(tree, signal, motion == "1")
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _archive(args.base, work)
        for case in args.case or list(CASES):
            accel, motion_hr, moving = CASES[case]
            signal = work / f"{case}.npz"
            _signal(signal, args.minutes, accel, moving)
            trees = {"this": str(ROOT), "base": str(work / "tree")}
            procs = {
                name: subprocess.Popen(
                    [sys.executable, __file__, "--worker", tree, str(signal), "1" if motion_hr else "0"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for name, tree in trees.items()
            }
            rtf: dict[str, list[float]] = {name: [] for name in trees}
            try:
                for _ in range(max(1, args.rounds)):
                    for name, p in procs.items():
                        assert p.stdin is not None and p.stdout is not None
                        p.stdin.write("run\n")
                        p.stdin.flush()
                        line = p.stdout.readline()
                        if not line:
                            raise SystemExit(f"the {name} worker stopped (case {case})")
                        rtf[name].append(float(line))
            finally:
                for p in procs.values():
                    if p.stdin is not None:
                        p.stdin.close()
                for p in procs.values():
                    try:
                        p.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
            ratios = [a / b for a, b in zip(rtf["this"], rtf["base"], strict=True)]
            result[f"{case}_ratio"] = statistics.median(ratios)
            result[f"{case}_rtf"] = statistics.median(rtf["this"])
            result[f"{case}_base_rtf"] = statistics.median(rtf["base"])
            this, base = rtf["this"], rtf["base"]
            print(
                f"{case}: this tree {min(this):.0f}-{max(this):.0f}x (median {statistics.median(this):.0f}), "
                f"{args.base} {min(base):.0f}-{max(base):.0f}x (median {statistics.median(base):.0f}); "
                f"ratio per round {min(ratios):.3f}-{max(ratios):.3f}, median {statistics.median(ratios):.3f}",
                flush=True,
            )
    print("RESULT " + " ".join(f"{k}={v:.3f}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
