"""Loaders for the public recordings in ``../shared/data`` (see its README), for bench/ and tests/dsp.

Nothing here is part of the product: the daemon never reads these files. Every loader returns plain
numpy arrays in seconds (and bpm), so the evaluation code does not care which database it reads.

- :func:`load_afdb`: MIT-BIH Atrial Fibrillation Database, reference beats and rhythm episodes.
- :func:`load_nsr`: Normal Sinus Rhythm RR Interval Database record nsr001, read from its WFDB
  annotation file with :func:`read_wfdb_annotations` (our own reader of the MIT format, so the
  project needs no ``wfdb`` package).
- :func:`load_cinc2017`: PhysioNet/CinC Challenge 2017 recordings reduced to RR intervals.
- :func:`load_bidmc`: BIDMC record 01, fingertip PPG and ECG lead II at 125 Hz.
- :func:`load_welltory`: smartphone-camera PPG (irregular frame times) with Polar H10 RR.
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def _find_data_dir() -> Path:
    """``../shared/data`` relative to the project root; from a git worktree nested deeper (e.g.
    ``/work/wt/issue-N``) the nearest ancestor that has ``shared/data/README.md``."""
    root = Path(__file__).resolve().parents[1]
    for up in root.parents:
        cand = up / "shared" / "data"
        if (cand / "README.md").is_file():
            return cand
    return root.parent / "shared" / "data"


DATA_DIR = _find_data_dir()
AFDB_FS = 250.0
BIDMC_FS = 125.0


def data_dir() -> Path:
    return DATA_DIR


def available() -> bool:
    """True when the recordings are present (tests skip with a reason otherwise)."""
    return (DATA_DIR / "README.md").is_file()


# --------------------------------------------------------------------------------------------------
# WFDB annotation files (MIT format), e.g. nsr2db/nsr001.ecg
# --------------------------------------------------------------------------------------------------

# WFDB annotation codes (ecgcodes.h) -> mnemonic, for the codes found in beat annotation files.
# fmt: off
WFDB_CODES: dict[int, str] = {
    0: "NOTQRS", 1: "N", 2: "L", 3: "R", 4: "a", 5: "V", 6: "F", 7: "J", 8: "A", 9: "S", 10: "E",
    11: "j", 12: "/", 13: "Q", 14: "~", 16: "|", 18: "s", 19: "T", 20: "*", 21: "D", 22: '"',
    23: "=", 24: "p", 25: "B", 26: "^", 27: "t", 28: "+", 29: "u", 30: "?", 31: "!", 32: "[",
    33: "]", 34: "e", 35: "n", 36: "@", 37: "x", 38: "f", 39: "(", 40: ")", 41: "r",
}
# fmt: on
# Annotation codes that mark a heart beat (WFDB isqrs()).
WFDB_BEATS = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 25, 30, 34, 35, 38, 41})

_SKIP, _NUM, _SUB, _CHAN, _AUX = 59, 60, 61, 62, 63


@dataclass(frozen=True)
class WfdbAnnotations:
    samples: npt.NDArray[np.int64]
    codes: npt.NDArray[np.int64]
    aux: dict[int, bytes]  # index in ``samples`` -> aux string bytes

    @property
    def symbols(self) -> list[str]:
        return [WFDB_CODES.get(int(c), "?") for c in self.codes]


def read_wfdb_annotations(path: Path) -> WfdbAnnotations:
    """Read a WFDB annotation file in MIT format.

    Each annotation is a 16-bit little-endian word: the top 6 bits are the code A, the low 10 bits
    the time I since the previous annotation in samples. Pseudo-codes: SKIP (59) is followed by a
    32-bit interval stored as two 16-bit little-endian words, high word first ("PDP-11" order);
    NUM/SUB/CHAN (60-62) set fields of the previous annotation; AUX (63) is followed by I bytes of
    text padded to an even length. A zero word ends the file. Reference: WFDB Programmer's Guide,
    annot(5).
    """
    raw = path.read_bytes()
    if len(raw) % 2:
        raw = raw[:-1]
    words = np.frombuffer(raw, dtype="<u2")
    samples: list[int] = []
    codes: list[int] = []
    aux: dict[int, bytes] = {}
    t = 0
    i = 0
    n = len(words)
    while i < n:
        w = int(words[i])
        a, interval = w >> 10, w & 0x3FF
        i += 1
        if a == 0 and interval == 0:
            break
        if a == _SKIP:
            if i + 2 > n:
                break
            hi, lo = int(words[i]), int(words[i + 1])
            skip = (hi << 16) | lo
            if skip >= 1 << 31:
                skip -= 1 << 32
            t += skip
            i += 2
        elif a in (_NUM, _SUB, _CHAN):
            continue
        elif a == _AUX:
            nbytes = interval
            nwords = (nbytes + 1) // 2
            if codes:
                aux[len(codes) - 1] = words[i : i + nwords].tobytes()[:nbytes]
            i += nwords
        else:
            t += interval
            samples.append(t)
            codes.append(a)
    return WfdbAnnotations(np.asarray(samples, dtype=np.int64), np.asarray(codes, dtype=np.int64), aux)


def read_wfdb_header_fs(path: Path) -> float:
    """Sampling frequency from the record line of a WFDB header (``name nsig fs nsamp``)."""
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            fields = line.split()
            return float(fields[2].split("/")[0]) if len(fields) > 2 else 250.0
    raise ValueError(f"{path}: no record line")


# --------------------------------------------------------------------------------------------------
# MIT-BIH AF Database
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RrRecord:
    """Beat times and RR intervals of one long recording, one label per interval."""

    name: str
    beat_times_s: FloatArray  # len n+1
    rr_s: FloatArray  # len n, rr_s[i] = beat_times_s[i+1] - beat_times_s[i]
    af: npt.NDArray[np.bool_]  # per interval: reference rhythm is AF
    rhythm: list[str]  # per interval: reference rhythm label ('N', 'AFIB', 'AFL', 'J', 'SR')


def afdb_records() -> list[str]:
    return sorted(p.name[3:8] for p in (DATA_DIR / "afdb").glob("qrs*.txt.gz"))


def _afdb_rhythms(name: str) -> tuple[npt.NDArray[np.int64], list[str]]:
    starts: list[int] = []
    labels: list[str] = []
    with gzip.open(DATA_DIR / "afdb" / f"atr{name}.txt.gz", "rt") as fh:
        next(fh)  # header
        for line in fh:
            fields = line.split()
            if len(fields) < 3:
                continue
            label = fields[-1]
            if label.startswith("("):
                starts.append(int(fields[1]))
                labels.append(label[1:])
    return np.asarray(starts, dtype=np.int64), labels


def load_afdb(name: str) -> RrRecord:
    """One AFDB record. An interval's rhythm is the rhythm annotated at its ending beat (the beat that
    closes the interval); AF means ``(AFIB``. Atrial flutter (``(AFL``) and junctional rhythm
    (``(J``) count as non-AF, as in Tateno & Glass 2001 and Petrenas et al. 2015."""
    data = np.loadtxt(DATA_DIR / "afdb" / f"qrs{name}.txt.gz", dtype=np.float64, ndmin=2)
    beats = np.unique(data[:, 2].astype(np.int64))
    starts, labels = _afdb_rhythms(name)
    times = beats / AFDB_FS
    rr = np.diff(times)
    idx = np.searchsorted(starts, beats[1:], side="right") - 1
    rhythm = [labels[k] if k >= 0 else "N" for k in idx]
    af = np.array([r == "AFIB" for r in rhythm], dtype=bool)
    return RrRecord(name, times, rr, af, rhythm)


# --------------------------------------------------------------------------------------------------
# NSR2DB nsr001
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BeatRecord:
    name: str
    fs: float
    beat_times_s: FloatArray
    symbols: list[str]

    @property
    def rr_s(self) -> FloatArray:
        return np.diff(self.beat_times_s)


def load_nsr(name: str = "nsr001") -> BeatRecord:
    base = DATA_DIR / "nsr2db" / name
    fs = read_wfdb_header_fs(base.with_suffix(".hea"))
    ann = read_wfdb_annotations(base.with_suffix(".ecg"))
    keep = np.isin(ann.codes, list(WFDB_BEATS))
    syms = [s for s, k in zip(ann.symbols, keep, strict=True) if k]
    return BeatRecord(name, fs, ann.samples[keep] / fs, syms)


# --------------------------------------------------------------------------------------------------
# CinC 2017 (RR intervals)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CincRecord:
    record: str
    label: str  # N, A, O, ~
    rr_s: FloatArray


def load_cinc2017() -> list[CincRecord]:
    out: list[CincRecord] = []
    with gzip.open(DATA_DIR / "cinc2017" / "rr.csv.gz", "rt", newline="") as fh:
        for row in csv.DictReader(fh):
            rr = np.array(row["rr_s"].split(), dtype=np.float64)
            out.append(CincRecord(row["record"], row["label"], rr))
    return out


# --------------------------------------------------------------------------------------------------
# BIDMC record 01
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PpgEcgRecord:
    name: str
    fs: float
    ppg: FloatArray
    ecg: FloatArray


def load_bidmc(record: str = "01") -> PpgEcgRecord:
    path = DATA_DIR / "bidmc" / f"bidmc_{record}_Signals.csv"
    with path.open(newline="") as fh:
        header = [h.strip() for h in next(csv.reader(fh))]
    data = np.genfromtxt(path, delimiter=",", skip_header=1, dtype=np.float64)
    pleth = data[:, header.index("PLETH")]
    ecg = data[:, header.index("II")]
    first = data[0, header.index("Sampling Freq")] if "Sampling Freq" in header else BIDMC_FS
    fs = float(first) if np.isfinite(first) else BIDMC_FS
    return PpgEcgRecord(f"bidmc{record}", fs, pleth, ecg)


def bidmc_records() -> list[str]:
    return sorted(p.name.split("_")[1] for p in (DATA_DIR / "bidmc").glob("bidmc_*_Signals.csv"))


# --------------------------------------------------------------------------------------------------
# Welltory smartphone PPG
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraPpgRecord:
    name: str
    t_s: FloatArray  # frame times, irregular
    r: FloatArray
    g: FloatArray
    b: FloatArray
    rr_ref_s: FloatArray  # chest strap RR, not sample-aligned


def welltory_subjects() -> list[str]:
    return sorted(p.name for p in (DATA_DIR / "welltory_ppg").glob("subject_*") if p.is_dir())


def load_welltory(subject: str) -> CameraPpgRecord:
    base = DATA_DIR / "welltory_ppg" / subject
    with (base / "PPG.csv").open(newline="") as fh:
        header = [h.strip() for h in next(csv.reader(fh))]
    data = np.loadtxt(base / "PPG.csv", delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    col = {name: data[:, header.index(name)] for name in ("time", "R", "G", "B")}
    rr = np.array((base / "RR.txt").read_text().split(), dtype=np.float64) / 1000.0
    t = col["time"] / 1000.0
    order = np.argsort(t, kind="stable")
    t = t[order]
    keep = np.concatenate(([True], np.diff(t) > 0))  # duplicate frame times: keep the first
    sel = order[keep]
    return CameraPpgRecord(subject, t[keep], col["R"][sel], col["G"][sel], col["B"][sel], rr)


# --------------------------------------------------------------------------------------------------
# Wrist PPG during exercise (PhysioNet `wrist`)
# --------------------------------------------------------------------------------------------------

WRIST_FS = 256.0


@dataclass(frozen=True)
class WristRecord:
    """One exercise record on the chest-ECG sample grid (256 Hz in the shared records; ``fs`` is read from
    the file's ``t_s``); NaN where the wrist device lost samples."""

    name: str  # e.g. "s3_run"
    fs: float
    ppg: FloatArray  # raw wrist PPG ("mV" of the EDF, 12-bit steps), NaN where lost
    accel: FloatArray  # (n, 3) wrist acceleration in g, NaN where lost
    beats_s: FloatArray  # ECG R-peak times from the database's beat annotations

    @property
    def subject(self) -> str:
        return self.name.split("_", 1)[0]

    @property
    def activity(self) -> str:
        return self.name.split("_", 1)[1]


def wrist_records() -> list[str]:
    return sorted(p.name.removesuffix(".csv.gz") for p in (DATA_DIR / "wrist_exercise").glob("*.csv.gz"))


def load_wrist(name: str, base: Path | None = None) -> WristRecord:
    """Record ``name`` of ``wrist_exercise`` (or of the folder ``base`` in the same layout)."""
    base = DATA_DIR / "wrist_exercise" if base is None else base
    with gzip.open(base / f"{name}.csv.gz", "rt") as fh:
        header = next(fh).strip().split(",")
        data = np.genfromtxt(fh, delimiter=",", dtype=np.float64, missing_values="", filling_values=np.nan)
    col = {h: data[:, i] for i, h in enumerate(header)}
    beats = np.loadtxt(base / f"{name}.beats.txt", dtype=np.float64, ndmin=1)
    accel = np.column_stack([col["ax"], col["ay"], col["az"]])
    # the rate from the file's own grid (t_s = row / rate, over the whole record: the printed times are
    # rounded), so that a record of the same layout at another rate is read right; the shared ones: 256
    if "t_s" not in col:
        fs = WRIST_FS
    else:
        span = float(col["t_s"][-1] - col["t_s"][0])
        if not span > 0.0:  # an empty first or last time, or times that do not grow
            raise ValueError(f"{name}: t_s does not give a sample rate (first {col['t_s'][0]}, last {col['t_s'][-1]})")
        fs = round((len(data) - 1) / span, 3)
    return WristRecord(name, fs, col["ppg"], accel, np.unique(beats))
