"""Accuracy of the on-device DSP on public recordings (``../shared/data``, see its README).

AF screening (:func:`gateway.dsp.af.screen_af`):

- **AFDB** (MIT-BIH AF Database, 12 ten-hour records, reference beats and cardiologists' rhythm
  labels): per-interval sensitivity and specificity for AF (``(AFIB``; flutter and junctional rhythm
  count as non-AF), pooled over intervals as in Petrenas et al. 2015, and per record. Two ways of
  running the detector: *record* (one call on the whole 10 h record, the detector's own figure, the
  one comparable to the published ones) and *stream* (what the daemon does,
  :class:`gateway.dsp.stream.WristStream`: a 120 s window every 60 s; each interval gets the mask of
  the window that first reports it). In stream mode the window *labels* are scored too (*window*:
  a window with >= 30 s of reference AF should be "af", one with none should not).
  The records are split in two halves by sorted name (even positions: *tune*, odd: *test*). The
  detector's constants come from the papers; the only choices made by looking at data (see
  docs/dsp-af.md) were made on the tune half, so the test half shows how the figures carry over to
  records the choices never saw.
- **NSR** (nsr2db nsr001, about 22 h of sinus rhythm): AF time flagged by the detector, in % of the
  time and in minutes per day; and the share of 120 s stream windows labelled ``"af"``.
- **CinC 2017** (half of the 8,528 short recordings, RR from an automatic QRS detector): record-level
  labels. AF vs not AF: sensitivity (A labelled "af"), specificity against normal (N not labelled
  "af") and against other rhythms (O not labelled "af"), F1 of the AF class. CinC-style three-class
  F1 for N/A/O (our "sinus"/"af"/"other"; "insufficient" counts as the noise class ``~``). Noisy
  ``~`` records are not in the AF/N/O figures; how they were labelled is printed. The same tune/test
  split (alternate records in file order).
- **Heart rate** (BIDMC, smartphone PPG): :func:`bench.dsp_eval_hr.evaluate` when present.
- **Wrist heart rate during exercise** (wrist_exercise, 15 records of walking, running and cycling):
  :func:`bench.dsp_eval_wrist.evaluate`, per subject half (tune / test) and activity: MAE, coverage,
  hold-last MAE and records with a value for ours, the time-domain path without accelerometer,
  HeartPy and NeuroKit2, and the windows' median motion (g).
- **SpO2 on spot recordings of 4-5 s** (the generator: no red/IR recording with a reference is shared):
  :func:`bench.dsp_eval_spo2.evaluate`: coverage of usable recordings, error, per perfusion level down
  to 0.05 %, and false desaturations on the generator's motion cases (``spo2_*``).

Usage::

    .venv/bin/python bench/dsp_eval.py            # everything (about a minute)
    .venv/bin/python bench/dsp_eval.py --quick    # CI scale: first 2 h of AFDB/NSR, 1 in 8 CinC records
    .venv/bin/python bench/dsp_eval.py --ablation # also each addition to Petrenas 2015 switched off
    .venv/bin/python bench/dsp_eval.py --loro     # also leave-one-record-out over the AFDB records
    .venv/bin/python bench/dsp_eval.py --no-wrist # without the wrist exercise part (about 60 s)

Ends with one ``RESULT key=value ...`` line.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import datasets
from bench._common import result_line
from gateway.dsp.af import AfResult, screen_af

STREAM_WINDOW_S = 120.0  # gateway.dsp.stream.AF_WINDOW_S
STREAM_HOP_S = 60.0  # gateway.dsp.stream.AF_HOP_S


@dataclass
class Counts:
    tp: int = 0
    fn: int = 0
    tn: int = 0
    fp: int = 0

    def add(self, pred: npt.NDArray[np.bool_], ref: npt.NDArray[np.bool_]) -> None:
        self.tp += int(np.count_nonzero(pred & ref))
        self.fn += int(np.count_nonzero(~pred & ref))
        self.tn += int(np.count_nonzero(~pred & ~ref))
        self.fp += int(np.count_nonzero(pred & ~ref))

    def __iadd__(self, other: Counts) -> Counts:
        self.tp += other.tp
        self.fn += other.fn
        self.tn += other.tn
        self.fp += other.fp
        return self

    @property
    def se(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def sp(self) -> float:
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else float("nan")


def stream_windows(
    beat_times_s: npt.NDArray[np.float64], rr_s: npt.NDArray[np.float64]
) -> Iterator[tuple[slice, npt.NDArray[np.bool_], AfResult]]:
    """The daemon's AF screens over a recording: a window of STREAM_WINDOW_S every STREAM_HOP_S, the
    first one hop after the recording starts and spanning only the time since (as the stream's cadence,
    gateway.dsp.stream). Yields each window's intervals (identified by their ending beat), which of them
    no earlier window contained (the daemon reports an interval in the first window that has it), and
    the screen."""
    ends = beat_times_s[1:]
    t0 = float(beat_times_s[0])
    t_end = float(ends[-1])
    now = t0 + STREAM_HOP_S
    done_until = t0 - 1.0
    while True:
        lo = int(np.searchsorted(ends, now - STREAM_WINDOW_S, side="left"))
        hi = int(np.searchsorted(ends, now, side="right"))
        if hi > lo:
            span = min(STREAM_WINDOW_S, now - t0)
            yield slice(lo, hi), ends[lo:hi] > done_until, screen_af(rr_s[lo:hi], span_s=span)
        done_until = now
        if now >= t_end:
            break
        now += STREAM_HOP_S


def stream_mask(
    beat_times_s: npt.NDArray[np.float64], rr_s: npt.NDArray[np.float64], ref: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.bool_], Counts]:
    """AF mask as the daemon reports it (:func:`stream_windows`: each interval takes the mask of the
    first window that contains it).

    Also the window labels against the reference: a window with at least 30 s of reference AF should
    be labelled "af", a window without any should not; windows in between are not counted."""
    mask = np.zeros(rr_s.shape[0], dtype=bool)
    windows = Counts()
    for sl, new, res in stream_windows(beat_times_s, rr_s):
        mask[sl][new] = res.af_mask[new]
        ref_af_s = float(rr_s[sl][ref[sl]].sum())
        if ref_af_s >= 30.0 or ref_af_s == 0.0:
            windows.add(np.array([res.label == "af"]), np.array([ref_af_s >= 30.0]))
    return mask, windows


def stream_labels(rr_s: npt.NDArray[np.float64]) -> collections.Counter[str]:
    """Labels of the daemon's AF screens (:func:`stream_windows`) over a series of intervals."""
    times = np.concatenate(([0.0], np.cumsum(rr_s)))
    return collections.Counter(res.label for _, _, res in stream_windows(times, rr_s))


def eval_afdb(quick: bool) -> dict[str, float]:
    names = datasets.afdb_records()
    halves = {"tune": names[0::2], "test": names[1::2]}
    out: dict[str, float] = {}
    print("== AFDB: per-interval AF sensitivity / specificity (reference beats, cardiologists' labels)")
    heads = ("record", "half", "AF int", "non-AF", "Se rec", "Sp rec", "Se str", "Sp str")
    print(" ".join(f"{h:>8}" for h in heads))
    totals = {(h, mode): Counts() for h in halves for mode in ("record", "stream", "window")}
    per_record: list[Counts] = []
    for half, recs in halves.items():
        for name in recs:
            r = datasets.load_afdb(name)
            rr, af, times = r.rr_s, r.af, r.beat_times_s
            if quick:
                keep = int(np.searchsorted(times, times[0] + 7200.0))
                rr, af, times = rr[: keep - 1], af[: keep - 1], times[:keep]
            c_rec, c_str = Counts(), Counts()
            c_rec.add(screen_af(rr).af_mask, af)
            smask, c_win = stream_mask(times, rr, af)
            c_str.add(smask, af)
            totals[(half, "record")] += c_rec
            per_record.append(c_rec)
            totals[(half, "stream")] += c_str
            totals[(half, "window")] += c_win
            print(
                f"{name:>8} {half:>8} {int(af.sum()):8d} {int((~af).sum()):8d} {c_rec.se:8.3f} {c_rec.sp:8.3f}"
                f" {c_str.se:8.3f} {c_str.sp:8.3f}"
            )
    for mode in ("record", "stream", "window"):
        allc = Counts()
        unit = "120 s windows with >= 30 s AF" if mode == "window" else "AF intervals"
        for half in halves:
            c = totals[(half, mode)]
            allc += c
            print(f"  {mode:6} {half:4}: Se {100 * c.se:5.1f} %  Sp {100 * c.sp:5.1f} %  ({c.tp + c.fn} {unit})")
            out[f"afdb_{mode}_{half}_se"] = c.se
            out[f"afdb_{mode}_{half}_sp"] = c.sp
        print(f"  {mode:6} all : Se {100 * allc.se:5.1f} %  Sp {100 * allc.sp:5.1f} %")
        out[f"afdb_{mode}_se"] = allc.se
        out[f"afdb_{mode}_sp"] = allc.sp
    lo_se, lo_sp = record_bootstrap(per_record)
    print(f"  record mode, 95 % bootstrap over records, lower bounds: Se {100 * lo_se:.1f} %, Sp {100 * lo_sp:.1f} %")
    out["afdb_record_se_ci_lo"], out["afdb_record_sp_ci_lo"] = lo_se, lo_sp
    print("  published (full 23-record AFDB): Petrenas 2015 97.1/98.3, Tateno & Glass 2001 94.4/97.2")
    return out


def record_bootstrap(per_record: list[Counts], rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Lower ends of the 95 % percentile-bootstrap intervals of pooled Se and Sp, resampling whole
    records: how far the pooled figures could fall on another sample of records of the same kind
    (one record with many short episodes moves the pooled figure more than thousands of intervals)."""
    counts = np.array([(c.tp, c.fn, c.tn, c.fp) for c in per_record], dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(per_record), size=(rounds, len(per_record)))
    tp, fn, tn, fp = (counts[:, k][picks].sum(axis=1) for k in range(4))
    with np.errstate(invalid="ignore", divide="ignore"):
        se, sp = tp / (tp + fn), tn / (tn + fp)
    return float(np.nanpercentile(se, 2.5)), float(np.nanpercentile(sp, 2.5))


def eval_nsr(quick: bool) -> dict[str, float]:
    rec = datasets.load_nsr()
    rr = rec.rr_s
    if quick:
        rr = rr[: int(np.searchsorted(np.cumsum(rr), 7200.0))]
    res = screen_af(rr)
    hours = float(rr.sum()) / 3600.0
    pct = 100.0 * res.burden
    labels = stream_labels(rr)
    n_windows = sum(labels.values())
    win_af = 100.0 * labels["af"] / n_windows if n_windows else float("nan")
    print(f"== NSR {rec.name}: {hours:.1f} h of sinus rhythm, {len(rr)} intervals")
    print(f"  record: AF time {pct:.3f} % = {pct * 14.4:.1f} min/day; label {res.label}, quality {res.quality:.3f}")
    print(f"  stream: {n_windows} windows of {STREAM_WINDOW_S:.0f} s, labels {dict(labels)}; 'af' in {win_af:.2f} %")
    return {"nsr_af_pct": pct, "nsr_af_min_per_day": pct * 14.4, "nsr_windows_af_pct": win_af}


def _f1(tp: int, n_ref: int, n_pred: int) -> float:
    return 2 * tp / (n_ref + n_pred) if n_ref + n_pred else float("nan")


def eval_cinc(quick: bool) -> dict[str, float]:
    recs = datasets.load_cinc2017()
    if quick:
        recs = recs[::8]
    to_cinc = {"sinus": "N", "af": "A", "other": "O", "insufficient": "~"}
    out: dict[str, float] = {}
    print("== CinC 2017: record-level labels (RR from an automatic QRS detector)")
    for half, sub in (("tune", recs[0::2]), ("test", recs[1::2]), ("all", recs)):
        conf: collections.Counter[tuple[str, str]] = collections.Counter()
        for r in sub:
            conf[(r.label, to_cinc[screen_af(r.rr_s).label])] += 1

        def row(ref: str, conf: collections.Counter[tuple[str, str]] = conf) -> int:
            return sum(conf[(ref, p)] for p in "NAO~")

        def col(pred: str, conf: collections.Counter[tuple[str, str]] = conf) -> int:
            return sum(conf[(r, pred)] for r in "NAO")

        se = conf[("A", "A")] / row("A")
        sp_n = 1 - conf[("N", "A")] / row("N")
        sp_o = 1 - conf[("O", "A")] / row("O")
        f1_af = _f1(conf[("A", "A")], row("A"), col("A"))
        f1_n, f1_o = _f1(conf[("N", "N")], row("N"), col("N")), _f1(conf[("O", "O")], row("O"), col("O"))
        print(f"  {half}: {len(sub)} records")
        print("     ref\\pred  " + " ".join(f"{p:>6}" for p in ("N", "A", "O", "~")))
        for ref in "NAO~":
            print(f"     {ref:9} " + " ".join(f"{conf[(ref, p)]:6d}" for p in "NAO~"))
        print(
            f"     AF Se {100 * se:.1f} %, Sp vs N {100 * sp_n:.1f} %, Sp vs O {100 * sp_o:.1f} %, F1(AF) {f1_af:.3f};"
            f" F1 N {f1_n:.3f} O {f1_o:.3f}, mean F1 (N,A,O) {(f1_n + f1_af + f1_o) / 3:.3f}"
        )
        suffix = "" if half == "all" else f"_{half}"
        out.update(
            {
                f"cinc_af_se{suffix}": se,
                f"cinc_sp_normal{suffix}": sp_n,
                f"cinc_sp_other{suffix}": sp_o,
                f"cinc_af_f1{suffix}": f1_af,
                f"cinc_f1_mean{suffix}": (f1_n + f1_af + f1_o) / 3,
            }
        )
    print("  '~' (too noisy) records: not in Se/Sp/F1; their labels are the '~' row above.")
    return out


def eval_hr(quick: bool) -> dict[str, float]:
    try:
        from bench import dsp_eval_hr
    except ImportError:
        print("== hr: not available (bench/dsp_eval_hr.py missing)")
        return {}
    evaluate: Callable[..., dict[str, float]] = dsp_eval_hr.evaluate
    try:
        figures = evaluate(quick=quick)
    except TypeError:  # an evaluate() without the quick flag
        figures = evaluate()
    print("== hr: " + " ".join(f"{k}={v:.4g}" for k, v in figures.items()))
    return {k: float(v) for k, v in figures.items()}


def eval_spo2(quick: bool) -> dict[str, float]:
    """SpO2 on the generator's spot recordings (bench/dsp_eval_spo2.py)."""
    from bench import dsp_eval_spo2

    figures, reasons = dsp_eval_spo2.evaluate(quick=quick)
    print("== SpO2, spot recordings of 4-5 s (generator)")
    for key in ("coverage", "coverage_all", "coverage_old", "coverage_pi0p05", "mae", "max_err"):
        print(f"  {key:20s} {figures[key]:.3f}")
    print(f"  false desaturations {figures['false_desaturations']:.0f} of {figures['motion_cases']:.0f} motion cases")
    print("  refusals of usable recordings: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    keep = (
        "coverage",
        "coverage_all",
        "coverage_old",
        "coverage_pi0p05",
        "mae",
        "max_err",
        "false_desaturations",
        "false_desaturations_old",
        "false_desaturations_wide",
        "motion_cases_wide",
        "structured_usable",
        "desat_coverage",
        "desat_records",
        "desat_hold_mae",
    )
    return {f"spo2_{k}": figures[k] for k in keep}


def eval_wrist(quick: bool) -> dict[str, float]:
    """Wrist PPG during exercise (bench/dsp_eval_wrist.py): per subject half and activity."""
    from bench import dsp_eval_wrist

    figures, _ = dsp_eval_wrist.evaluate(quick=quick)
    print("== wrist exercise (tune = subjects " + ", ".join(dsp_eval_wrist.TUNE_SUBJECTS) + "; test = the rest)")
    for k in sorted(figures):
        print(f"  {k:56s} {figures[k]:.4g}")
    return {k: v for k, v in figures.items() if not k.endswith("_windows")}


def _variants() -> list[tuple[str, bool, bool, dict[str, float]]]:
    """Each step added to Petrenas 2015 as (title, merge_extra, cosen_veto, module constants); the last
    is screen_af's default."""
    from gateway.dsp import af as afmod

    paper = {"RT_MAX_S": 99.0, "ALPHA": 0.02, "ETA_LOW": afmod.ETA}
    ours = {"RT_MAX_S": afmod.RT_MAX_S, "ALPHA": afmod.ALPHA, "ETA_LOW": afmod.ETA_LOW}
    return [
        ("Petrenas 2015 as published", False, False, paper),
        ("+ rate cap 70 bpm", False, False, {**paper, "RT_MAX_S": ours["RT_MAX_S"]}),
        ("+ rate cap + extra-beat joining", True, False, {**paper, "RT_MAX_S": ours["RT_MAX_S"]}),
        ("+ rate cap + COSEn veto", False, True, {**paper, "RT_MAX_S": ours["RT_MAX_S"]}),
        ("+ cap + joining + veto (previous)", True, True, {**paper, "RT_MAX_S": ours["RT_MAX_S"]}),
        ("previous + alpha 0.04", True, True, {**ours, "ETA_LOW": afmod.ETA}),
        ("previous + hysteresis", True, True, {**ours, "ALPHA": 0.02}),
        ("all (screen_af default)", True, True, ours),
    ]


def eval_loro(quick: bool) -> dict[str, float]:
    """Leave-one-record-out over the AFDB records: for each record, the variant of :func:`_variants`
    (the choices made beyond Petrenas 2015) with the best balanced accuracy (Se + Sp) / 2 pooled over
    the *other* records is chosen, then scored on the left-out record (record mode). Pooled Se/Sp over
    the left-out records, their per-record spread, and the worst record."""
    from gateway.dsp import af as afmod

    names = datasets.afdb_records()
    variants = _variants()
    saved = dict(variants[-1][3])
    table: dict[tuple[int, str], Counts] = {}
    try:
        for vi, (_, merge, veto, consts) in enumerate(variants):
            for key, value in consts.items():
                setattr(afmod, key, value)
            for n in names:
                r = datasets.load_afdb(n)
                rr, af = r.rr_s, r.af
                if quick:
                    keep = int(np.searchsorted(r.beat_times_s, r.beat_times_s[0] + 7200.0))
                    rr, af = rr[: keep - 1], af[: keep - 1]
                c = Counts()
                c.add(screen_af(rr, merge_extra=merge, cosen_veto=veto).af_mask, af)
                table[(vi, n)] = c
    finally:
        for key, value in saved.items():
            setattr(afmod, key, value)

    def balanced(c: Counts) -> float:
        return float(np.nanmean([c.se, c.sp]))

    pooled = Counts()
    rows = []
    print("== AFDB leave-one-record-out (record mode): variant chosen on the other 11, scored on the left-out")
    for n in names:
        scores = []
        for vi in range(len(variants)):
            c = Counts()
            for m in names:
                if m != n:
                    c += table[(vi, m)]
            scores.append(balanced(c))
        best = int(np.argmax(scores))
        held = table[(best, n)]
        pooled += held
        rows.append((n, held))
        print(f"  {n}: chose '{variants[best][0]}'  Se {held.se:.4f}  Sp {held.sp:.4f}  ({held.tp + held.fn} AF int)")
    se = np.array([c.se for _, c in rows])
    sp = np.array([c.sp for _, c in rows])
    worst_sp = rows[int(np.nanargmin(sp))]
    worst_se = rows[int(np.nanargmin(se))]
    print(f"  pooled: Se {100 * pooled.se:.2f} %  Sp {100 * pooled.sp:.2f} %")
    print(
        f"  per record: Se min {np.nanmin(se):.4f} median {np.nanmedian(se):.4f}; Sp min {np.nanmin(sp):.4f}"
        f" median {np.nanmedian(sp):.4f}; worst Sp {worst_sp[0]}, worst Se {worst_se[0]}"
    )
    return {
        "afdb_loro_se": pooled.se,
        "afdb_loro_sp": pooled.sp,
        "afdb_loro_se_min": float(np.nanmin(se)),
        "afdb_loro_se_median": float(np.nanmedian(se)),
        "afdb_loro_sp_min": float(np.nanmin(sp)),
        "afdb_loro_sp_median": float(np.nanmedian(sp)),
        "afdb_loro_worst_sp_record": float(worst_sp[0]),
        "afdb_loro_worst_se_record": float(worst_se[0]),
    }


def ablation(quick: bool) -> None:
    """Each step added to Petrenas 2015, switched off in turn: record-mode AFDB and CinC per half."""
    from gateway.dsp import af as afmod

    names = datasets.afdb_records()
    afdb = {n: datasets.load_afdb(n) for n in names}
    cinc = datasets.load_cinc2017()[:: 8 if quick else 1]
    nsr = datasets.load_nsr().rr_s
    variants = _variants()
    ours = variants[-1][3]
    saved = dict(ours)
    print("== ablation (record mode): AFDB Se/Sp tune|test, CinC AF Se / Sp vs O / Sp vs N tune|test, NSR AF %")
    try:
        for title, merge, veto, consts in variants:
            for key, value in consts.items():
                setattr(afmod, key, value)
            cells = []
            for half in (0, 1):
                c = Counts()
                for n in names[half::2]:
                    c.add(screen_af(afdb[n].rr_s, merge_extra=merge, cosen_veto=veto).af_mask, afdb[n].af)
                cells.append(f"{100 * c.se:5.1f}/{100 * c.sp:5.1f}")
            for half in (0, 1):
                got: dict[str, list[bool]] = {"A": [], "O": [], "N": []}
                for r in cinc[half::2]:
                    if r.label in got:
                        got[r.label].append(screen_af(r.rr_s, merge_extra=merge, cosen_veto=veto).label == "af")
                se, fo, fn = (float(np.mean(got[k])) for k in "AON")
                cells.append(f"{100 * se:5.1f}/{100 * (1 - fo):5.1f}/{100 * (1 - fn):5.1f}")
            nsr_pct = 100 * screen_af(nsr, merge_extra=merge, cosen_veto=veto).burden
            print(f"  {title:34} AFDB {cells[0]} | {cells[1]}   CinC {cells[2]} | {cells[3]}   NSR {nsr_pct:.2f}")
    finally:
        for key, value in saved.items():
            setattr(afmod, key, value)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI scale: 2 h of AFDB/NSR, 1 in 8 CinC records")
    ap.add_argument("--no-hr", action="store_true", help="skip the heart-rate part")
    ap.add_argument("--no-wrist", action="store_true", help="skip the wrist exercise part")
    ap.add_argument("--no-spo2", action="store_true", help="skip the spot SpO2 part")
    ap.add_argument("--ablation", action="store_true", help="also switch each addition to Petrenas 2015 off")
    ap.add_argument("--loro", action="store_true", help="also leave-one-record-out over the AFDB records")
    args = ap.parse_args(argv)
    if not datasets.available():
        print(f"recordings not found in {datasets.data_dir()}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    figures: dict[str, float] = {}
    figures.update(eval_afdb(args.quick))
    figures.update(eval_nsr(args.quick))
    figures.update(eval_cinc(args.quick))
    if args.ablation:
        ablation(args.quick)
    loro = eval_loro(args.quick) if args.loro else {}
    hr = {} if args.no_hr else eval_hr(args.quick)
    wrist = {} if args.no_hr or args.no_wrist else eval_wrist(args.quick)
    spo2 = {} if args.no_spo2 else eval_spo2(args.quick)
    print(f"elapsed {time.perf_counter() - t0:.1f} s")
    keys = {
        "afdb_se": figures["afdb_record_se"],
        "afdb_sp": figures["afdb_record_sp"],
        "afdb_se_test": figures["afdb_record_test_se"],
        "afdb_sp_test": figures["afdb_record_test_sp"],
        "afdb_se_ci_lo": figures["afdb_record_se_ci_lo"],
        "afdb_sp_ci_lo": figures["afdb_record_sp_ci_lo"],
        "afdb_stream_se": figures["afdb_stream_se"],
        "afdb_stream_sp": figures["afdb_stream_sp"],
        "afdb_window_se": figures["afdb_window_se"],
        "afdb_window_sp": figures["afdb_window_sp"],
        "nsr_af_pct": figures["nsr_af_pct"],
        "nsr_af_min_per_day": figures["nsr_af_min_per_day"],
        "nsr_windows_af_pct": figures["nsr_windows_af_pct"],
        "cinc_af_se": figures["cinc_af_se"],
        "cinc_af_f1": figures["cinc_af_f1"],
        "cinc_sp_normal": figures["cinc_sp_normal"],
        "cinc_sp_other": figures["cinc_sp_other"],
        "cinc_sp_other_test": figures["cinc_sp_other_test"],
        "cinc_f1_mean": figures["cinc_f1_mean"],
    }
    keys.update(loro)
    keys.update(hr)
    keys.update(wrist)
    keys.update(spo2)
    print(result_line(**keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
