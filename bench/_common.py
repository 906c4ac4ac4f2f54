"""Small helpers shared by the bench scripts (not a test dependency)."""

from __future__ import annotations

import os
import statistics
from pathlib import Path


def proc_io(pid: int) -> dict[str, int]:
    """/proc/<pid>/io counters (write_bytes: what reached the block layer)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/io") as fh:
        for line in fh:
            k, _, v = line.partition(":")
            out[k.strip()] = int(v)
    return out


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    vs = sorted(values)
    if len(vs) == 1:
        return vs[0]
    return statistics.quantiles(vs, n=100, method="inclusive")[max(0, min(98, int(q) - 1))]


def result_line(**figures: float | int) -> str:
    parts = []
    for k, v in figures.items():
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return "RESULT " + " ".join(parts)


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def cpu_note() -> str:
    return f"{os.cpu_count()} cores"
