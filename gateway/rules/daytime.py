"""Day and night in the person's local time, for the "no data" watch. Pure functions."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from functools import lru_cache

MAX_SPAN_S = 62 * 86400.0  # longer silences are counted over their last 62 days only


@lru_cache(maxsize=16)
def zone(name: str | None) -> dt.tzinfo:
    """An IANA zone (``None``: the system's local zone)."""
    if name is None:
        local = dt.datetime.now().astimezone().tzinfo
        assert local is not None
        return local
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        from gateway.rules.spec import RuleSpecError

        raise RuleSpecError("watch", "timezone", f"{name!r} is not a known time zone") from exc


def _windows(day: dt.date, start: dt.time, end: dt.time, tz: dt.tzinfo) -> tuple[float, float]:
    a = dt.datetime.combine(day, start, tzinfo=tz)
    b_day = day if start < end else day + dt.timedelta(days=1)
    b = dt.datetime.combine(b_day, end, tzinfo=tz)
    return a.timestamp(), b.timestamp()


def daytime_seconds(t0: float, t1: float, start: dt.time, end: dt.time, tz: dt.tzinfo) -> float:
    """Seconds of ``[t0, t1)`` (POSIX times) that fall in the local day ``[start, end)``."""
    if t1 <= t0:
        return 0.0
    t0 = max(t0, t1 - MAX_SPAN_S)
    first = dt.datetime.fromtimestamp(t0, tz).date() - dt.timedelta(days=1)
    last = dt.datetime.fromtimestamp(t1, tz).date()
    total = 0.0
    day = first
    while day <= last:
        a, b = _windows(day, start, end, tz)
        total += max(0.0, min(b, t1) - max(a, t0))
        day += dt.timedelta(days=1)
    return total


def is_day(t: float, start: dt.time, end: dt.time, tz: dt.tzinfo) -> bool:
    local = dt.datetime.fromtimestamp(t, tz).time()
    if start < end:
        return start <= local < end
    return local >= start or local < end
