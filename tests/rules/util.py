"""Helpers for the rules tests: an injectable clock and reading builders (no sleeps anywhere)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from drivers.base import Measurement
from gateway.rules import AlertEvent, RuleEngine, WatchSettings
from gateway.rules.defaults import CODE_AF_SCREENING, LOINC_DIASTOLIC, LOINC_HEART_RATE, LOINC_SPO2, LOINC_SYSTOLIC

# 2026-11-24 09:00:00 UTC: a weekday morning, in the day hours of the default watch
T0 = 1795510800.0
UNITS = {
    LOINC_SPO2: "%",
    LOINC_HEART_RATE: "/min",
    LOINC_SYSTOLIC: "mm[Hg]",
    LOINC_DIASTOLIC: "mm[Hg]",
    CODE_AF_SCREENING: "1",
}


@dataclass
class Clock:
    """The engine's time, moved by the test."""

    now: float = T0

    def advance(self, dt: float) -> float:
        self.now += dt
        return self.now


def meas(
    code: str,
    value: float,
    t: float,
    *,
    device: str = "wrist-1",
    quality: float | None = 0.9,
    extra: Mapping[str, Any] | None = None,
) -> Measurement:
    return Measurement(device, code, float(value), UNITS.get(code, "1"), t, quality=quality, extra=dict(extra or {}))


def engine(**settings: Any) -> RuleEngine:
    settings.setdefault("timezone", "UTC")
    e = RuleEngine(WatchSettings(**settings))
    e.set_device("wrist-1", T0 - 1, worn=True)
    e.set_device("cuff-1", T0 - 1)
    return e


def feed_series(e: RuleEngine, items: Iterable[Measurement], *, delay: float = 0.0) -> list[AlertEvent]:
    """Feed readings as they arrive (``now`` = capture time + delay)."""
    out: list[AlertEvent] = []
    for m in items:
        out.extend(e.feed(m, m.captured_at + delay))
    return out


def spo2_series(values: Iterable[float], start: float = T0, step: float = 1.0, **kw: Any) -> list[Measurement]:
    return [meas(LOINC_SPO2, v, start + i * step, **kw) for i, v in enumerate(values)]


def states(events: Iterable[AlertEvent]) -> list[tuple[str, str]]:
    return [(e.kind, e.state) for e in events]
