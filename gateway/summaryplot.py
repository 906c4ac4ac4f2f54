"""The day of a daily summary drawn (``gatewayctl report --png FILE``): heart rate and SpO2 over the day,
blood-pressure points, AF stretches, wear gaps. Needs matplotlib, the optional extra ``report``
(``pip install 'homecare-gateway[report]'``); the daemon never imports this module."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError

WEAR_GAP_S = 300.0  # no worn minute for this long is drawn as a wear gap


class PlotUnavailable(GatewayError):
    """matplotlib is not installed."""


def wear_gaps(worn: Sequence[float], start: float, until: float) -> list[tuple[float, float]]:
    """Spans of at least :data:`WEAR_GAP_S` without a worn minute (``worn``: minute starts, sorted)."""
    gaps: list[tuple[float, float]] = []
    prev = start
    for t in [*worn, until]:
        if t - prev >= WEAR_GAP_S:
            gaps.append((prev, t))
        prev = max(prev, t + 60.0)
    return gaps


def draw(summary: Mapping[str, Any], series: Mapping[str, Any], zone: dt.tzinfo, path: Path) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.dates import DateFormatter
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotUnavailable(
            f"--png needs matplotlib ({exc}): install the optional extra, pip install 'homecare-gateway[report]'"
        ) from None

    def when(t: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(t, zone)

    def parse(text: str) -> float:
        return dt.datetime.fromisoformat(text).timestamp()

    period = summary["period"]
    start, end = parse(period["start"]), parse(period["end"])
    until = parse(period["until"]) if period.get("until") else end
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    hr_ax, sp_ax, bp_ax = fig.subplots(3, 1, sharex=True, height_ratios=(3, 2, 2))
    who = summary["person_id"] or summary["subject"]
    fig.suptitle(f"{who}: {summary['date']} ({summary['timezone']})")
    gaps = wear_gaps(series["worn"], start, until)
    for ax in (hr_ax, sp_ax, bp_ax):
        for k, (a, b) in enumerate(gaps):
            label = "not worn / no data" if ax is hr_ax and k == 0 else None
            ax.axvspan(when(a), when(b), color="0.85", lw=0, label=label)
        ax.grid(True, alpha=0.3)
    for s in summary["af"]["stretches"]:
        hr_ax.axvspan(when(parse(s["start"])), when(parse(s["end"])), color="tab:red", alpha=0.25, lw=0)
    if series["hr"]:
        hr_ax.plot([when(t) for t, _ in series["hr"]], [v for _, v in series["hr"]], ".", ms=2, color="tab:blue")
    if summary["heart_rate"]["resting"] is not None:
        hr_ax.axhline(summary["heart_rate"]["resting"], color="tab:green", lw=1, label="resting")
    if summary["af"]["stretches"]:
        hr_ax.axvspan(when(start), when(start), color="tab:red", alpha=0.25, label="possible AF")
    hr_ax.set_ylabel("heart rate (/min)")
    hr_ax.legend(loc="upper right", fontsize="small")
    if series["spo2"]:
        sp_ax.plot([when(t) for t, _ in series["spo2"]], [v for _, v in series["spo2"]], ".", ms=2, color="tab:purple")
    for level, style in ((90, "--"), (88, ":")):
        sp_ax.axhline(level, color="tab:orange", ls=style, lw=1)
    sp_ax.set_ylabel("SpO2 (%)")
    bp = summary["blood_pressure"]["readings"]
    if bp:
        times = [when(parse(r["at"])) for r in bp]
        bp_ax.vlines(times, [r["diastolic"] for r in bp], [r["systolic"] for r in bp], color="0.5")
        bp_ax.plot(times, [r["systolic"] for r in bp], "v", color="tab:red", label="systolic")
        bp_ax.plot(times, [r["diastolic"] for r in bp], "^", color="tab:blue", label="diastolic")
        bp_ax.legend(loc="upper right", fontsize="small")
    bp_ax.set_ylabel("blood pressure (mm Hg)")
    bp_ax.set_xlim(when(start), when(end))
    bp_ax.xaxis.set_major_formatter(DateFormatter("%H:%M", tz=zone))  # type: ignore[no-untyped-call]
    fig.savefig(path, format="png", dpi=100)
