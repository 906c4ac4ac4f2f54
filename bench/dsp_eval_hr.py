"""Heart-rate accuracy of gateway.dsp on real PPG, against the ECG / chest strap, next to HeartPy and NeuroKit2.

Recordings (../shared/data, see its README):

- **BIDMC** record(s): fingertip PPG at 125 Hz with ECG lead II. Reference: R peaks of lead II found by a
  Pan-Tompkins style detector below (band-pass 5-15 Hz, derivative, square, 150 ms integration, adaptive
  threshold, peak refined on the ECG), cross-checked against NeuroKit2's ECG detector when installed
  (``bidmc_ref_agreement``: fraction of our R peaks within 50 ms of one of NeuroKit2's).
- **Welltory** smartphone-camera finger PPG (~30 frames/s, irregular timing) with Polar H10 RR. The frames
  are resampled to a uniform 30 Hz by linear interpolation; the colour channel is chosen per recording as
  the one with the largest fraction of its power in the heart-rate band (0.7-3.5 Hz) and inverted (a camera
  sees a pulse as a darkening). The Polar series starts with the recording (its total length matches the
  video to within ~2 s); beat times are its cumulative sum.

The same prepared signal goes to all three methods. Windows of 10 s every 5 s; the reference rate of a
window is 60 / mean of the reference intervals that end inside it; a window whose reference has an
implausible interval (< 0.25 s or > 2.5 s: lead off, missed R peaks) is not scored. For each method: MAE (bpm) on the
windows where *our* SQI gave a value (``*_mae``, the same windows for all three), and on every window the
method answered (``*_mae_all``); ``*_coverage`` is the fraction of windows with a value, ``*_records`` the
fraction of recordings with at least one value, and ``*_hold_mae`` the error a display holding its last
value would show (every scored window after the recording's first value). Peers: HeartPy
``process(x, fs)['bpm']``; NeuroKit2 ``ppg_process(x, fs)`` mean ``PPG_Rate``. A peer that raises on a
window gives no value there.

Is a difference between two methods more than chance? ``*_mae_diff_<peer>`` is our MAE minus the peer's on
the windows both answered (negative: ours is better), with a paired 95 % bootstrap confidence interval
``*_mae_diff_<peer>_ci_lo`` .. ``_ci_hi``: the windows are resampled with replacement, the same windows
for both methods (paired: a window that is hard for everyone cancels out), in moving blocks of
:data:`BLOCK_WINDOWS` consecutive windows (Kuensch 1989), because windows 10 s long every 5 s share half
their samples and their errors are not independent; percentile interval of :data:`BOOTSTRAP_N`
resamples, fixed seed. An interval that contains 0 means the recordings do not tell the two apart.

Usage: ``python -m bench.dsp_eval_hr [--quick]``; ends with one ``RESULT`` line. ``evaluate(quick)`` is
called by bench/dsp_eval.py. ``--quick`` uses the first 120 s of BIDMC and 4 Welltory recordings.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import signal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import datasets
from gateway.dsp import estimate_heart_rate

FloatArray = datasets.FloatArray
WINDOW_S, STEP_S = 10.0, 5.0
CAMERA_FS = 30.0
BOOTSTRAP_N = 10_000
BLOCK_WINDOWS = math.ceil(WINDOW_S / STEP_S)  # windows that share samples go into one block


# --------------------------------------------------------------------------------------------------
# Reference: ECG R peaks
# --------------------------------------------------------------------------------------------------


def ecg_r_peaks(ecg: FloatArray, fs: float) -> FloatArray:
    """R-peak times (s) of an ECG lead: Pan & Tompkins 1985 style, simplified (one adaptive threshold)."""
    x = np.nan_to_num(np.asarray(ecg, dtype=np.float64))
    sos = signal.butter(2, [5.0, 15.0], btype="bandpass", fs=fs, output="sos")
    y = signal.sosfiltfilt(sos, x)
    d = np.gradient(y) ** 2
    w = max(1, round(0.15 * fs))
    integ = np.convolve(d, np.ones(w) / w, mode="same")
    # adaptive threshold: 30 % of the local (5 s) 98th percentile
    seg = round(5 * fs)
    thr = np.empty_like(integ)
    for s in range(0, len(integ), seg):
        thr[s : s + seg] = 0.3 * np.percentile(integ[max(0, s - seg) : s + 2 * seg], 98)
    peaks, _ = signal.find_peaks(integ, height=thr, distance=round(0.25 * fs))
    # refine: the largest |band-passed ECG| within 80 ms before the integrator's peak (its delay)
    out = []
    h = round(0.08 * fs)
    for p in peaks:
        a, b = max(0, p - 2 * h), min(len(y), p + h)
        out.append(a + int(np.argmax(np.abs(y[a:b]))))
    return np.unique(np.asarray(out, dtype=np.float64)) / fs


def reference_rate(beats_s: FloatArray, t0: float, t1: float) -> float | None:
    ends = (beats_s[1:] > t0) & (beats_s[1:] <= t1)
    rr = np.diff(beats_s)[ends]
    if len(rr) < 3 or not np.all((rr > 0.25) & (rr < 2.5)):
        return None  # the reference itself has a gap (lead off, missed R peaks): no trustworthy rate
    return 60.0 / float(np.mean(rr))


# --------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------


def ours(x: FloatArray, fs: float) -> float | None:
    return estimate_heart_rate(x, fs).bpm


def _quiet() -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def heartpy_rate(x: FloatArray, fs: float) -> float | None:
    import heartpy as hp  # type: ignore[import-untyped]

    with _quiet():
        try:
            _, m = hp.process(x, sample_rate=fs)
        except Exception:  # noqa: BLE001 - HeartPy signals a bad window by raising; no value then
            return None
    v = float(m.get("bpm", math.nan))
    return v if math.isfinite(v) and v > 0 else None


def neurokit_rate(x: FloatArray, fs: float) -> float | None:
    import neurokit2 as nk  # type: ignore[import-untyped]

    with _quiet():
        try:
            sig, _ = nk.ppg_process(x, sampling_rate=round(fs))
        except Exception:  # noqa: BLE001 - a peer failing on a window gives no value there
            return None
    v = float(np.nanmean(sig["PPG_Rate"].to_numpy()))
    return v if math.isfinite(v) and v > 0 else None


def peers_available() -> dict[str, bool]:
    found = {}
    for name in ("heartpy", "neurokit2"):
        try:
            __import__(name)
            found[name] = True
        except ImportError:
            found[name] = False
    return found


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    ref: list[float] = field(default_factory=list)
    est: dict[str, list[float | None]] = field(default_factory=dict)
    # coverage as a display sees it: the error of the last value shown (per recording), and which
    # recordings got any value at all
    hold_err: dict[str, list[float]] = field(default_factory=dict)
    records: dict[str, list[bool]] = field(default_factory=dict)
    _last: dict[str, float] = field(default_factory=dict)

    def start_record(self) -> None:
        self._last = {}
        for vals in self.records.values():
            vals.append(False)

    def add(self, ref: float, values: dict[str, float | None]) -> None:
        self.ref.append(ref)
        for k, v in values.items():
            self.est.setdefault(k, []).append(v)
            rec = self.records.setdefault(k, [False])
            if v is not None:
                self._last[k] = v
                rec[-1] = True
            if k in self._last:
                self.hold_err.setdefault(k, []).append(abs(self._last[k] - ref))

    def figures(self, prefix: str) -> dict[str, float]:
        ref = np.asarray(self.ref)
        out: dict[str, float] = {f"{prefix}_windows": float(len(ref))}
        ours_ok = np.asarray([v is not None for v in self.est.get("ours", [])], dtype=bool)
        for k, vals in self.est.items():
            got = np.asarray([math.nan if v is None else v for v in vals])
            ok = np.isfinite(got)
            suffix = "" if k == "ours" else f"_{k}"
            same = ok & ours_ok
            out[f"{prefix}_mae{suffix}"] = float(np.mean(np.abs(got[same] - ref[same]))) if same.any() else math.nan
            out[f"{prefix}_mae{suffix}_all"] = float(np.mean(np.abs(got[ok] - ref[ok]))) if ok.any() else math.nan
            out[f"{prefix}_coverage{suffix}"] = float(np.mean(ok)) if len(ok) else math.nan
            hold = self.hold_err.get(k, [])
            out[f"{prefix}_hold_mae{suffix}"] = float(np.mean(hold)) if hold else math.nan
            out[f"{prefix}_records{suffix}"] = float(np.mean(self.records.get(k, [False])))
            if k != "ours":
                err_ours = np.abs(np.asarray([math.nan if v is None else v for v in self.est["ours"]]) - ref)
                diff, lo, hi = paired_diff_ci(err_ours[same], np.abs(got - ref)[same])
                out[f"{prefix}_mae_diff{suffix}"] = diff
                out[f"{prefix}_mae_diff{suffix}_ci_lo"] = lo
                out[f"{prefix}_mae_diff{suffix}_ci_hi"] = hi
        return out


def paired_diff_ci(err_a: FloatArray, err_b: FloatArray, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``err_a - err_b`` (absolute errors of two methods on the same windows, in time order) and
    its 95 % moving-block bootstrap percentile interval (blocks of :data:`BLOCK_WINDOWS` windows)."""
    d = np.asarray(err_a, dtype=np.float64) - np.asarray(err_b, dtype=np.float64)
    n = len(d)
    if n == 0:
        return math.nan, math.nan, math.nan
    b = min(BLOCK_WINDOWS, n)
    # mean of each moving block, then resample ceil(n / b) blocks per replicate (equal-size blocks, so
    # the replicate's mean is the mean of its block means)
    block_means = np.convolve(d, np.ones(b) / b, mode="valid")
    k = math.ceil(n / b)
    rng = np.random.default_rng(seed)
    reps = block_means[rng.integers(0, len(block_means), size=(BOOTSTRAP_N, k))].mean(axis=1)
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return float(np.mean(d)), float(lo), float(hi)


def _windows(duration_s: float) -> Iterator[tuple[float, float]]:
    t = 0.0
    while t + WINDOW_S <= duration_s + 1e-9:
        yield t, t + WINDOW_S
        t += STEP_S


def _methods() -> dict[str, Callable[[FloatArray, float], float | None]]:
    avail = peers_available()
    m: dict[str, Callable[[FloatArray, float], float | None]] = {"ours": ours}
    if avail["heartpy"]:
        m["heartpy"] = heartpy_rate
    if avail["neurokit2"]:
        m["neurokit"] = neurokit_rate
    return m


def _run(
    x: FloatArray, fs: float, beats: FloatArray, tally: Tally, methods: dict[str, Callable[..., float | None]]
) -> None:
    tally.start_record()
    for t0, t1 in _windows(len(x) / fs):
        ref = reference_rate(beats, t0, t1)
        if ref is None:
            continue
        w = x[round(t0 * fs) : round(t1 * fs)]
        tally.add(ref, {k: f(w, fs) for k, f in methods.items()})


def ref_agreement(beats: FloatArray, ecg: FloatArray, fs: float) -> float:
    try:
        import neurokit2 as nk
    except ImportError:
        return math.nan
    with _quiet():
        _, info = nk.ecg_peaks(ecg, sampling_rate=round(fs))
    theirs = np.asarray(info["ECG_R_Peaks"], dtype=np.float64) / fs
    if len(theirs) == 0 or len(beats) == 0:
        return 0.0
    j = np.clip(np.searchsorted(theirs, beats), 1, len(theirs) - 1)
    near = np.minimum(np.abs(theirs[j] - beats), np.abs(theirs[j - 1] - beats))
    return float(np.mean(near <= 0.05))


def camera_signal(rec: datasets.CameraPpgRecord) -> tuple[FloatArray, float]:
    """Uniformly resampled, inverted camera PPG of the colour channel with the most heart-band power."""
    t = rec.t_s - rec.t_s[0]
    grid = np.arange(0.0, t[-1], 1.0 / CAMERA_FS)
    best, best_frac = None, -1.0
    for ch in (rec.r, rec.g, rec.b):
        u = np.interp(grid, t, ch)
        if np.ptp(u) == 0:
            continue
        f, p = signal.welch(u - u.mean(), fs=CAMERA_FS, nperseg=min(len(u), 512))
        band = (f >= 0.7) & (f <= 3.5)
        frac = float(p[band].sum() / p[f > 0.1].sum()) if p[f > 0.1].sum() > 0 else 0.0
        if frac > best_frac:
            best, best_frac = u, frac
    assert best is not None
    return -best, CAMERA_FS


def evaluate(quick: bool = False) -> dict[str, float]:
    """HR MAE (bpm) of ours, HeartPy and NeuroKit2 on BIDMC and Welltory, same windows, same run."""
    methods = _methods()
    res: dict[str, float] = {}
    bidmc = Tally()
    agree = []
    for name in datasets.bidmc_records():
        rec = datasets.load_bidmc(name)
        n = round(120 * rec.fs) if quick else len(rec.ppg)
        ppg, ecg = np.nan_to_num(rec.ppg[:n]), np.nan_to_num(rec.ecg[:n])
        beats = ecg_r_peaks(ecg, rec.fs)
        agree.append(ref_agreement(beats, ecg, rec.fs))
        _run(ppg, rec.fs, beats, bidmc, methods)
    res.update(bidmc.figures("bidmc"))
    res["bidmc_ref_agreement"] = float(np.mean(agree)) if agree else math.nan
    well = Tally()
    subjects = datasets.welltory_subjects()[: 4 if quick else None]
    for s in subjects:
        cam = datasets.load_welltory(s)
        x, fs = camera_signal(cam)
        beats = np.concatenate(([0.0], np.cumsum(cam.rr_ref_s)))
        _run(x, fs, beats, well, methods)
    res.update(well.figures("welltory"))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="120 s of BIDMC and 4 Welltory recordings")
    args = ap.parse_args(argv)
    if not datasets.available():
        print("../shared/data not found", file=sys.stderr)
        return 2
    print("peers:", peers_available())
    res = evaluate(args.quick)
    for k in sorted(res):
        print(f"  {k:32s} {res[k]:.3f}")
    keys = [k for k in sorted(res) if not k.endswith("_windows")]
    print("RESULT " + " ".join(f"{k}={res[k]:.3f}" for k in keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
