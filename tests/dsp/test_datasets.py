"""The bench's loader of wrist exercise records (bench/datasets.py) on a record written here."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from bench import datasets


def _write(base: Path, name: str, fs: float, n: int) -> None:
    rows = ["t_s,ppg,ax,ay,az,ecg"]
    for i in range(n):
        ppg = "" if i == 3 else f"{1000 + i}"  # a sample the wrist device lost: an empty field
        rows.append(f"{i / fs:.6f},{ppg},0.01,0.02,{1 + i / 1000:.4f},5")
    with gzip.open(base / f"{name}.csv.gz", "wt") as fh:
        fh.write("\n".join(rows) + "\n")
    (base / f"{name}.beats.txt").write_text("0.5\n1.5\n1.0\n")


def test_the_rate_comes_from_the_records_own_time_column(tmp_path: Path) -> None:
    _write(tmp_path, "s1_run", 125.0, 500)
    rec = datasets.load_wrist("s1_run", tmp_path)
    assert rec.fs == 125.0 and rec.subject == "s1" and rec.activity == "run"
    assert len(rec.ppg) == 500 and np.isnan(rec.ppg[3]) and rec.ppg[4] == 1004.0
    assert rec.accel.shape == (500, 3) and rec.accel[10, 2] == 1.01
    assert rec.beats_s.tolist() == [0.5, 1.0, 1.5]  # sorted
    _write(tmp_path, "s1_walk", 256.0, 1000)
    assert datasets.load_wrist("s1_walk", tmp_path).fs == 256.0


def test_a_record_whose_times_give_no_rate_is_refused_by_name(tmp_path: Path) -> None:
    _write(tmp_path, "s1_bike", 125.0, 50)
    with gzip.open(tmp_path / "s1_bike.csv.gz", "rt") as fh:
        lines = fh.read().splitlines()
    lines[-1] = "," + lines[-1].split(",", 1)[1]  # the last time is empty
    with gzip.open(tmp_path / "s1_bike.csv.gz", "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="s1_bike: t_s"):
        datasets.load_wrist("s1_bike", tmp_path)
