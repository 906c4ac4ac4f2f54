"""The daily summary, pure parts: per-minute aggregates, the summary day, the figures, the message.

Sans-I/O (no files, no clock of its own): :mod:`gateway.summarystore` keeps the aggregates on disk and
:mod:`gateway.summarydesk` feeds them from the pipeline and publishes (docs/mqtt-contract.md, "Daily
summary").

**What counts.** Only readings the gateway would act on: values after the DSP (which emits nothing for
a window that fails its signal-quality index), with ``quality`` at or above :data:`MIN_QUALITY` (the
default care rules' ``min_quality``; ``None``, a device that gives none, counts, as in the rules) and
within a physiological range (:data:`RANGES`). The others are counted in ``rejected``.

**The aggregate** is a :class:`MinuteBin` per (subject, device, minute): heart rate and SpO2 count, sum,
min, max and a histogram of values rounded to 1 unit (a few keys per minute), the at-rest heart-rate sum
and count, SpO2 readings below 90 % and 88 %, and the AF screens of the minute (count, burden sum, AF
labels). Beside them every blood-pressure reading, every press and alert (one row each, keyed so a
repeat is not counted twice), and each device's link state and battery when they change. A day is at
most 1440 bins per device, whatever the reading rate: the store's size is bounded by
``retention_days``. Feeding a reading is a few dict operations (O(1)).

**The day** (:class:`Schedule`): the 24 hours ending at the configured local time ``at`` (23 or 25
when the clocks change), labelled with the local date of its last moment (the date it is sent on;
with ``at = 00:00``, the calendar day itself). A family reading the summary at 20:00
sees the evening before, the night and the day, each moment in exactly one summary and the night not
cut at midnight; ``at = 00:00`` gives calendar days.

**The figures** (:func:`compute`), each with how much of the period it rests on (``minutes``, ``share``
of the period up to its end or now):

- heart rate: min, median, max of the readings; ``resting``: the lowest mean heart rate over any
  :data:`RESTING_WINDOW_MIN` minutes with at-rest data in at least :data:`RESTING_MIN_MINUTES` of them
  (the "lowest 30-minute average" definition of consumer wearables, e.g. Garmin's resting heart rate);
  readings marked ``extra["at_rest"] = False`` (moving) never count for it;
- SpO2: min, median, and the time below 90 % and 88 %: per minute, the share of its readings below,
  summed (T90/T88 of oximetry reports, at minute resolution);
- medians come from the 1-unit histograms: the grouped median (the bin of the middle rank, interpolated
  within it), so within 0.5 /min or 0.5 % of the exact median (a bounded approximation, documented);
- blood pressure: every reading (systolic, diastolic, mean arterial pressure when the cuff gives it)
  and the mean of systolic and diastolic;
- AF screening: screened minutes (one screen of the last 2 minutes per minute, gateway/dsp/stream.py),
  burden = the mean AF burden of the screens, episodes = runs of AF-labelled screens, two of them
  closer than :data:`AF_EPISODE_GAP_MIN` minutes being one;
- wear per worn device (the person's `worn`, or a wearable of nobody): the minutes with at least one
  counted heart-rate, SpO2 or AF value; a cuff's readings count for the figures, never as wear;
- presses (``sos``, ``call``, ``drill``), alerts raised by kind (SOS alerts are their presses; drills
  are not alerts), battery last and lowest, and connected time per device.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from drivers import codes
from gateway.messages import msg_id, rfc3339_ms

CODE_AF = "homecare:af-screening"  # gateway.dsp.stream.CODE_AF (not imported: numpy stays out of the daemon)
MIN_QUALITY = 0.5  # as the default care rules' min_quality (gateway/rules/defaults.py)
RANGES: Mapping[str, tuple[float, float]] = {
    codes.HEART_RATE: (25.0, 250.0),
    codes.SPO2: (50.0, 100.0),
    codes.SYSTOLIC: (50.0, 280.0),
    codes.DIASTOLIC: (25.0, 180.0),
    codes.MEAN_ARTERIAL: (30.0, 220.0),
    CODE_AF: (0.0, 1.0),
}
BP_CODES = (codes.SYSTOLIC, codes.DIASTOLIC, codes.MEAN_ARTERIAL)
RESTING_WINDOW_MIN = 30
RESTING_MIN_MINUTES = 24
AF_EPISODE_GAP_MIN = 3  # AF screens at most this many minutes apart are one episode
MAX_LISTED = 48  # blood-pressure readings and AF stretches listed in one summary, at most
SPO2_LOW = (90.0, 88.0)


# -- the day ------------------------------------------------------------------------------------


def local_zone(name: str) -> dt.tzinfo:
    """The zone of an IANA ``name``; "" is the gateway's own zone, with its daylight-saving rules
    (``/etc/localtime``; a fixed offset only when the system has no zone file)."""
    if name:
        return zoneinfo.ZoneInfo(name)
    try:
        with open("/etc/localtime", "rb") as fh:
            return zoneinfo.ZoneInfo.from_file(fh, key=zone_name(""))
    except (OSError, ValueError):
        local = dt.datetime.now().astimezone().tzinfo
        assert local is not None
        return local


def zone_name(name: str) -> str:
    """The IANA name of the zone the summary is stated in ("" -> the system's, when it can tell)."""
    if name:
        return name
    try:
        target = str(Path("/etc/localtime").resolve())
    except OSError:
        return "localtime"
    marker = "/zoneinfo/"
    return target.split(marker, 1)[1] if marker in target else "localtime"


@dataclass(frozen=True, slots=True)
class Schedule:
    """When summary days end: local time of day ``at`` in ``zone``."""

    at: dt.time
    zone: dt.tzinfo
    zone_label: str = "UTC"

    def end(self, date: dt.date) -> float:
        """POSIX time the summary day ``date`` ends (its summary time): ``at`` on that date, or the
        midnight after it when ``at`` is 00:00 (a calendar day is labelled with its own date)."""
        day = date + dt.timedelta(days=1) if self.at == dt.time(0) else date
        return _instant(dt.datetime.combine(day, self.at), self.zone)

    def window(self, date: dt.date) -> tuple[float, float]:
        return self.end(date - dt.timedelta(days=1)), self.end(date)

    def date_of(self, t: float) -> dt.date:
        """The summary day ``t`` belongs to: the date of the first summary time after it."""
        local = dt.datetime.fromtimestamp(t, self.zone)
        date = local.date()
        # compare instants, not wall times: a DST fold makes wall times ambiguous
        if t >= self.end(date):
            date += dt.timedelta(days=1)
        elif t < self.end(date - dt.timedelta(days=1)):
            date -= dt.timedelta(days=1)
        return date


def _instant(local: dt.datetime, zone: dt.tzinfo) -> float:
    """A local wall time as POSIX seconds, read as PEP 495 does with ``fold=0``: a time that happens
    twice (the clocks go back) is its first occurrence; one the clocks skip is read with the offset
    before the change."""
    return local.replace(tzinfo=zone, fold=0).timestamp()


def due_dates(
    schedule: Schedule,
    now: float,
    first_at: float,
    sent: Iterable[dt.date],
    *,
    keep_days: int,
) -> list[dt.date]:
    """The summary days that have ended by ``now`` and were not sent: from the day in progress when
    the store began (``first_at``), at most ``keep_days`` back, oldest first."""
    done = set(sent)
    last = schedule.date_of(now) - dt.timedelta(days=1)
    first = max(schedule.date_of(first_at), last - dt.timedelta(days=keep_days - 1))
    out = []
    d = first
    while d <= last:
        if d not in done:
            out.append(d)
        d += dt.timedelta(days=1)
    return out


# -- per-minute bins ----------------------------------------------------------------------------


@dataclass(slots=True)
class Stat:
    """Count, sum, min, max and a 1-unit histogram of one quantity in one minute."""

    n: int = 0
    total: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf
    hist: dict[int, int] = field(default_factory=dict)

    def add(self, v: float) -> None:
        self.n += 1
        self.total += v
        if v < self.lo:
            self.lo = v
        if v > self.hi:
            self.hi = v
        k = round(v)
        self.hist[k] = self.hist.get(k, 0) + 1

    def merge(self, o: Stat) -> None:
        self.n += o.n
        self.total += o.total
        self.lo = min(self.lo, o.lo)
        self.hi = max(self.hi, o.hi)
        for k, c in o.hist.items():
            self.hist[k] = self.hist.get(k, 0) + c

    def to_list(self) -> list[Any]:
        if not self.n:
            return []
        return [self.n, round(self.total, 3), self.lo, self.hi, [[k, c] for k, c in sorted(self.hist.items())]]

    @classmethod
    def from_list(cls, d: Sequence[Any]) -> Stat:
        if not d:
            return cls()
        n, total, lo, hi, hist = d
        return cls(int(n), float(total), float(lo), float(hi), {int(k): int(c) for k, c in hist})


@dataclass(slots=True)
class MinuteBin:
    """Everything one device gave one subject in one minute."""

    hr: Stat = field(default_factory=Stat)
    rest_n: int = 0
    rest_total: float = 0.0
    spo2: Stat = field(default_factory=Stat)
    below: list[int] = field(default_factory=lambda: [0, 0])  # SpO2 readings below 90 %, below 88 %
    af_n: int = 0
    af_pos: int = 0
    af_burden: float = 0.0
    rejected: list[int] = field(default_factory=lambda: [0, 0])  # readings below MIN_QUALITY, out of RANGES

    def add_hr(self, v: float, at_rest: bool) -> None:
        self.hr.add(v)
        if at_rest:
            self.rest_n += 1
            self.rest_total += v

    def add_spo2(self, v: float) -> None:
        self.spo2.add(v)
        if v < SPO2_LOW[0]:
            self.below[0] += 1
            if v < SPO2_LOW[1]:
                self.below[1] += 1

    def add_af(self, burden: float, af: bool) -> None:
        self.af_n += 1
        self.af_burden += burden
        self.af_pos += int(af)

    def merge(self, o: MinuteBin) -> None:
        self.hr.merge(o.hr)
        self.rest_n += o.rest_n
        self.rest_total += o.rest_total
        self.spo2.merge(o.spo2)
        self.below = [self.below[0] + o.below[0], self.below[1] + o.below[1]]
        self.af_n += o.af_n
        self.af_pos += o.af_pos
        self.af_burden += o.af_burden
        self.rejected = [self.rejected[0] + o.rejected[0], self.rejected[1] + o.rejected[1]]

    @property
    def worn(self) -> bool:
        return bool(self.hr.n or self.spo2.n or self.af_n)

    def dumps(self) -> str:
        doc = [
            self.hr.to_list(),
            [self.rest_n, round(self.rest_total, 3)],
            self.spo2.to_list(),
            self.below,
            [self.af_n, self.af_pos, round(self.af_burden, 4)],
            self.rejected,
        ]
        return json.dumps(doc, separators=(",", ":"), allow_nan=False)

    @classmethod
    def loads(cls, text: str) -> MinuteBin:
        """A stored bin (:meth:`dumps`); :class:`ValueError` for anything else."""
        try:
            hr, rest, spo2, below, af, rejected = json.loads(text)
            return cls(
                Stat.from_list(hr),
                int(rest[0]),
                float(rest[1]),
                Stat.from_list(spo2),
                [int(below[0]), int(below[1])],
                int(af[0]),
                int(af[1]),
                float(af[2]),
                [int(rejected[0]), int(rejected[1])],
            )
        except (TypeError, IndexError, KeyError) as exc:
            raise ValueError(f"not a stored minute: {exc}") from exc


# -- feeding -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Pending:
    """What was fed since the last save, for the store (:meth:`Aggregator.take`)."""

    bins: dict[tuple[str, str, int], MinuteBin] = field(default_factory=dict)  # (subject, device, minute)
    bp: dict[tuple[str, int], list[Any]] = field(default_factory=dict)  # (device, ms) -> [subject, sys, dia, map]
    events: dict[str, tuple[str, Event]] = field(default_factory=dict)  # key -> (subject, event)
    links: list[tuple[str, LinkChange]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.bins or self.bp or self.events or self.links)

    def shifted(self, delta_s: float) -> Pending:
        """The same, ``delta_s`` later: the outbox's correction of an unsynchronised clock applied here
        too. Bins move by whole minutes (a reading keeps its minute when the shift is under 30 s)."""
        k, ms = round(delta_s / 60.0), round(delta_s * 1000.0)
        out = Pending()
        for (subject, device, minute), b in self.bins.items():
            have = out.bins.get((subject, device, minute + k))
            if have is None:
                out.bins[(subject, device, minute + k)] = b
            else:
                have.merge(b)
        out.bp = {(device, t + ms): row for (device, t), row in self.bp.items()}
        out.events = {key: (subject, replace(ev, at=ev.at + delta_s)) for key, (subject, ev) in self.events.items()}
        out.links = [(subject, replace(lc, at=lc.at + delta_s)) for subject, lc in self.links]
        return out


class Aggregator:
    """Readings in, per-minute deltas out. Every method is O(1) per reading: a few dict operations."""

    def __init__(self) -> None:
        self.pending = Pending()
        self.link_state: dict[str, tuple[str, int | None]] = {}  # device -> last (state, battery) stored

    def _bin(self, subject: str, device: str, t: float) -> MinuteBin:
        key = (subject, device, int(t // 60))
        b = self.pending.bins.get(key)
        if b is None:
            b = self.pending.bins[key] = MinuteBin()
        return b

    def measurement(
        self,
        subject: str,
        device: str,
        code: str,
        value: float,
        quality: float | None,
        t: float,
        extra: Mapping[str, Any],
    ) -> None:
        limits = RANGES.get(code)
        if limits is None or not math.isfinite(t):
            return
        if quality is not None and not quality >= MIN_QUALITY:
            self._bin(subject, device, t).rejected[0] += 1
            return
        if not (math.isfinite(value) and limits[0] <= value <= limits[1]):
            self._bin(subject, device, t).rejected[1] += 1
            return
        if code == codes.HEART_RATE:
            self._bin(subject, device, t).add_hr(value, extra.get("at_rest") is not False)
        elif code == codes.SPO2:
            self._bin(subject, device, t).add_spo2(value)
        elif code == CODE_AF:
            self._bin(subject, device, t).add_af(value, extra.get("label") == "af")
        else:
            key = (device, round(t * 1000))
            row = self.pending.bp.get(key)
            if row is None:
                row = self.pending.bp[key] = [subject, None, None, None]
            row[1 + BP_CODES.index(code)] = value

    def event(self, key: str, subject: str, ev: Event) -> None:
        self.pending.events.setdefault(key, (subject, ev))

    def link(self, subject: str, device: str, t: float, state: str, battery: int | None) -> None:
        """A device's state: kept when the state or the battery level changed."""
        last = self.link_state.get(device)
        if last is not None and last[0] == state and (battery is None or battery == last[1]):
            return
        level = battery if battery is not None else (last[1] if last else None)
        self.link_state[device] = (state, level)
        self.pending.links.append((subject, LinkChange(device, t, state, level)))

    def take(self) -> Pending:
        out, self.pending = self.pending, Pending()
        return out

    def restore(self, old: Pending) -> None:
        """Put back what could not be saved, before what came since (the next save tries again)."""
        new, self.pending = self.pending, old
        for key, b in new.bins.items():
            mine = old.bins.get(key)
            if mine is None:
                old.bins[key] = b
            else:
                mine.merge(b)
        for bkey, row in new.bp.items():
            have = old.bp.setdefault(bkey, row)
            if have is not row:
                old.bp[bkey] = [row[0], *(n if n is not None else o for o, n in zip(have[1:], row[1:], strict=True))]
        for ekey, ev in new.events.items():
            old.events.setdefault(ekey, ev)
        old.links.extend(new.links)


# -- what the store gives back for one subject and period -----------------------------------------


@dataclass(frozen=True, slots=True)
class BpReading:
    device_id: str
    at: float
    systolic: float | None
    diastolic: float | None
    mean_arterial: float | None


@dataclass(frozen=True, slots=True)
class Event:
    device_id: str
    at: float
    kind: str  # "press" or "alert"
    name: str  # press: sos, call, drill; alert: its kind


@dataclass(frozen=True, slots=True)
class LinkChange:
    device_id: str
    at: float
    state: str  # connected, disconnected, error, connecting, unknown (the gateway was not running)
    battery: int | None


@dataclass
class DayData:
    """One subject's aggregates for a period (and the link state before it)."""

    bins: list[tuple[int, str, MinuteBin]] = field(default_factory=list)  # (minute, device, bin)
    bp: list[BpReading] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    links: list[LinkChange] = field(default_factory=list)  # ordered by time; may start before the period


# -- the figures ---------------------------------------------------------------------------------


def _median(hist: Mapping[int, int]) -> float | None:
    """The grouped median of a 1-unit histogram (values rounded to the nearest unit): the bin holding the
    middle rank, interpolated within it as if its values were spread evenly. Never further than half a
    unit from the exact median, which lies in the same bin."""
    n = sum(hist.values())
    if n == 0:
        return None
    half = n / 2.0
    below = 0
    for k in sorted(hist):
        c = hist[k]
        if below + c >= half:
            return k - 0.5 + (half - below) / c
        below += c
    raise AssertionError("unreachable: the counts add up to n")


def _r(v: float | None, digits: int = 1) -> float | None:
    return None if v is None or not math.isfinite(v) else round(v, digits)


def _share(minutes: float, period_s: float) -> float:
    return round(min(1.0, minutes * 60.0 / period_s), 4) if period_s > 0 else 0.0


def compute(
    data: DayData,
    start: float,
    end: float,
    until: float,
    *,
    wearables: Iterable[str] = (),
    link_until: float | None = None,
) -> dict[str, Any]:
    """The figures of a summary period [start, end) from its aggregates, as of ``until`` (the end, or
    now for a day in progress). ``wearables``: the worn devices (``worn`` of the person, or a wearable
    of nobody), each listed under ``wear`` (even when not worn at all); a cuff's or a spot oximeter's
    readings count for the figures, never as wear.
    ``link_until``: the last moment the link rows can speak for (the gateway's last sign of life, when
    it is not running); an open connection counts until then."""
    until = min(end, max(start, until))
    period_s = until - start
    by_minute: dict[int, MinuteBin] = {}
    worn_devices = set(wearables)
    wear: dict[str, int] = {}
    for minute, device, b in data.bins:
        if not start <= minute * 60 < until:
            continue
        m = by_minute.get(minute)
        if m is None:
            m = by_minute[minute] = MinuteBin()
        m.merge(b)
        if b.worn and device in worn_devices:
            wear[device] = wear.get(device, 0) + 1
    hr, spo2 = Stat(), Stat()
    hr_minutes = spo2_minutes = af_minutes = 0
    below = [0.0, 0.0]
    rejected = [0, 0]
    af_burden = 0.0
    af_n = 0
    af_minutes_list: list[int] = []
    for minute in sorted(by_minute):
        b = by_minute[minute]
        rejected = [rejected[0] + b.rejected[0], rejected[1] + b.rejected[1]]
        if b.hr.n:
            hr.merge(b.hr)
            hr_minutes += 1
        if b.spo2.n:
            spo2.merge(b.spo2)
            spo2_minutes += 1
            below[0] += b.below[0] / b.spo2.n
            below[1] += b.below[1] / b.spo2.n
        if b.af_n:
            af_minutes += 1
            af_n += b.af_n
            af_burden += b.af_burden
            if b.af_pos:
                af_minutes_list.append(minute)
    stretches = _stretches(af_minutes_list)
    heart = {
        "unit": codes.PER_MIN,
        "min": _r(hr.lo if hr.n else None),
        "median": _r(_median(hr.hist)),
        "max": _r(hr.hi if hr.n else None),
        "resting": _r(resting_hr(by_minute)),
        "readings": hr.n,
        "minutes": hr_minutes,
        "share": _share(hr_minutes, period_s),
    }
    oxygen = {
        "unit": codes.PERCENT,
        "min": _r(spo2.lo if spo2.n else None),
        "median": _r(_median(spo2.hist)),
        "minutes_below_90": round(below[0], 1),
        "minutes_below_88": round(below[1], 1),
        "readings": spo2.n,
        "minutes": spo2_minutes,
        "share": _share(spo2_minutes, period_s),
    }
    bp = sorted((r for r in data.bp if start <= r.at < until), key=lambda r: r.at)
    sys_v = [r.systolic for r in bp if r.systolic is not None]
    dia_v = [r.diastolic for r in bp if r.diastolic is not None]
    pressure = {
        "unit": codes.MMHG,
        "count": len(bp),
        "mean": (
            {"systolic": round(sum(sys_v) / len(sys_v), 1), "diastolic": round(sum(dia_v) / len(dia_v), 1)}
            if sys_v and dia_v
            else None
        ),
        "readings": [
            {
                "at": rfc3339_ms(r.at),
                "device_id": r.device_id,
                "systolic": r.systolic,
                "diastolic": r.diastolic,
                **({"mean_arterial": r.mean_arterial} if r.mean_arterial is not None else {}),
            }
            for r in bp[-MAX_LISTED:]
        ],
    }
    af = {
        "screened_minutes": af_minutes,
        "screened_hours": round(af_minutes / 60.0, 2),
        "share": _share(af_minutes, period_s),
        "burden": round(af_burden / af_n, 4) if af_n else None,
        "episodes": len(stretches),
        "stretches": [{"start": rfc3339_ms(a * 60.0), "end": rfc3339_ms((b + 1) * 60.0)} for a, b in stretches][
            :MAX_LISTED
        ],
    }
    presses = {"sos": 0, "call": 0, "drill": 0}
    alerts: dict[str, int] = {}
    for e in data.events:
        if not start <= e.at < until:
            continue
        if e.kind == "press":
            presses[e.name] = presses.get(e.name, 0) + 1
        elif e.kind == "alert":
            alerts[e.name] = alerts.get(e.name, 0) + 1
    devices = _devices(data.links, start, until, link_until if link_until is not None else until)
    return {
        "heart_rate": heart,
        "spo2": oxygen,
        "blood_pressure": pressure,
        "af": af,
        "wear": [
            {"device_id": d, "minutes": wear.get(d, 0), "share": _share(wear.get(d, 0), period_s)}
            for d in sorted(worn_devices)
        ],
        "presses": presses,
        "alerts": dict(sorted(alerts.items())),
        "devices": [{"device_id": d, **v} for d, v in sorted(devices.items())],
        "rejected": {"low_quality": rejected[0], "implausible": rejected[1]},
    }


def resting_hr(by_minute: Mapping[int, MinuteBin]) -> float | None:
    """The lowest at-rest mean over any :data:`RESTING_WINDOW_MIN` minutes with at-rest data in at
    least :data:`RESTING_MIN_MINUTES` of them (two pointers over the minutes: O(minutes))."""
    minutes = sorted(m for m, b in by_minute.items() if b.rest_n)
    best: float | None = None
    total, n, count = 0.0, 0, 0
    j = 0
    for m in minutes:
        b = by_minute[m]
        total += b.rest_total
        n += b.rest_n
        count += 1
        while minutes[j] <= m - RESTING_WINDOW_MIN:
            old = by_minute[minutes[j]]
            total -= old.rest_total
            n -= old.rest_n
            count -= 1
            j += 1
        if count >= RESTING_MIN_MINUTES and n:
            mean = total / n
            if best is None or mean < best:
                best = mean
    return best


def _stretches(af_minutes: Sequence[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for m in af_minutes:
        if out and m - out[-1][1] <= AF_EPISODE_GAP_MIN:
            out[-1] = (out[-1][0], m)
        else:
            out.append((m, m))
    return out


def _devices(links: Sequence[LinkChange], start: float, until: float, link_until: float) -> dict[str, dict[str, Any]]:
    """Battery last and lowest in the period (the level it began with included) and the time
    connected, per device that had a link state by the period's end."""
    by_dev: dict[str, list[LinkChange]] = {}
    for ch in sorted(links, key=lambda c: c.at):
        if ch.at < until:
            by_dev.setdefault(ch.device_id, []).append(ch)
    out: dict[str, dict[str, Any]] = {}
    period = until - start
    for dev, changes in by_dev.items():
        connected = 0.0
        levels: list[int] = []
        for k, ch in enumerate(changes):
            nxt = changes[k + 1].at if k + 1 < len(changes) else max(ch.at, min(until, link_until))
            a, b = max(ch.at, start), min(nxt, until)
            if ch.state == "connected" and b > a:
                connected += b - a
            if ch.battery is not None:
                if ch.at < start:
                    levels = [ch.battery]  # the level the period began with
                else:
                    levels.append(ch.battery)
        out[dev] = {
            "battery_last": levels[-1] if levels else None,
            "battery_min": min(levels) if levels else None,
            "connected_s": round(connected, 1),
            "connected_share": round(connected / period, 4) if period > 0 else 0.0,
        }
    return out


# -- the message ---------------------------------------------------------------------------------


def summary_msg_id(gateway_id: str, subject: str, date: dt.date, *, partial_until: float | None = None) -> str:
    """Deterministic: the same person and date give the same id (a re-send is a duplicate). A summary
    asked for before its day ended names its cut-off, so it never takes the final one's id."""
    key = date.isoformat() if partial_until is None else f"{date.isoformat()}|partial|{round(partial_until)}"
    return msg_id(gateway_id, "summary", subject, key)


def summary_body(
    *,
    gateway_id: str,
    subject: str,
    person_id: str | None,
    date: dt.date,
    zone: str,
    start: float,
    end: float,
    until: float,
    figures: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``summary`` message body (without seq, historical, clock, stream: the uplink adds them)."""
    partial = until < end
    body: dict[str, Any] = {
        "msg_id": summary_msg_id(gateway_id, subject, date, partial_until=until if partial else None),
        "gateway_id": gateway_id,
        "device_id": subject if person_id is None else gateway_id,
        "type": "summary",
        "captured_at": rfc3339_ms(min(until, end)),
        "person_id": person_id,
        "subject": subject,
        "date": date.isoformat(),
        "timezone": zone,
        "period": {"start": rfc3339_ms(start), "end": rfc3339_ms(end), "partial": partial},
    }
    if partial:
        body["period"]["until"] = rfc3339_ms(until)
    body.update(figures)
    return body


def dumps(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


# -- text for a family member --------------------------------------------------------------------


def _num(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    text = f"{v:.0f}" if abs(v - round(v)) < 0.05 else f"{v:.1f}"
    return f"{text} {unit}".rstrip()


def _when(text: str, zone: dt.tzinfo, fmt: str = "%H:%M") -> str:
    return dt.datetime.fromisoformat(text).astimezone(zone).strftime(fmt)


def _coverage(minutes: int, share: float) -> str:
    return f"(data in {minutes} min, {share * 100:.0f} % of the period)"


def format_text(body: Mapping[str, Any], zone: dt.tzinfo) -> str:
    """The summary as a family member reads it: plain words, units, local times."""
    p = body["period"]
    first = _when(p["start"], zone, "%a %d %b %H:%M")
    last = _when(p.get("until") or p["end"], zone, "%a %d %b %H:%M")
    who = body["person_id"] or f"device {body['subject']}"
    head = f"Daily summary for {who}, {body['date']}: {first} to {last} ({body['timezone']})"
    if p["partial"]:
        head += ", so far"
    lines = [head]
    hr = body["heart_rate"]
    if hr["readings"]:
        lines.append(
            f"Heart rate      {_num(hr['min'])} to {_num(hr['max'], '/min')}, median {_num(hr['median'], '/min')}, "
            f"resting {_num(hr['resting'], '/min')}  {_coverage(hr['minutes'], hr['share'])}"
        )
    else:
        lines.append("Heart rate      no usable readings")
    sp = body["spo2"]
    if sp["readings"]:
        lines.append(
            f"Blood oxygen    lowest {_num(sp['min'], '%')}, median {_num(sp['median'], '%')}; "
            f"{_num(sp['minutes_below_90'])} min below 90 %, {_num(sp['minutes_below_88'])} min below 88 %  "
            f"{_coverage(sp['minutes'], sp['share'])}"
        )
    else:
        lines.append("Blood oxygen    no usable readings")
    bp = body["blood_pressure"]
    if bp["count"]:
        mean = bp["mean"]
        avg = f", average {_num(mean['systolic'])}/{_num(mean['diastolic'])} mm Hg" if mean else ""
        each = ", ".join(f"{_when(r['at'], zone)} {_num(r['systolic'])}/{_num(r['diastolic'])}" for r in bp["readings"])
        lines.append(f"Blood pressure  {bp['count']} reading{'s' if bp['count'] != 1 else ''}{avg}: {each}")
    else:
        lines.append("Blood pressure  no readings")
    af = body["af"]
    if af["screened_minutes"]:
        spans = ", ".join(f"{_when(s['start'], zone)}-{_when(s['end'], zone)}" for s in af["stretches"])
        burden = af["burden"] or 0.0
        text = (
            f"Heart rhythm    screened {af['screened_hours']:.1f} h ({af['share'] * 100:.0f} % of the period); "
            f"possible atrial fibrillation {burden * 100:.0f} % of that time"
        )
        if af["episodes"]:
            text += f", {af['episodes']} episode{'s' if af['episodes'] != 1 else ''}: {spans}"
        lines.append(text)
    else:
        lines.append("Heart rhythm    not screened")
    for w in body["wear"]:
        lines.append(f"Worn            {w['device_id']}: {w['minutes']} min, {w['share'] * 100:.0f} % of the period")
    pr = body["presses"]
    drill = f" (and {pr['drill']} drill)" if pr.get("drill") else ""
    lines.append(f"Buttons         SOS pressed {pr['sos']}, call pressed {pr['call']}{drill}")
    alerts = ", ".join(f"{k} {v}" for k, v in body["alerts"].items()) or "none"
    lines.append(f"Alerts raised   {alerts}")
    for d in body["devices"]:
        bat = (
            f"battery {d['battery_last']} % (lowest {d['battery_min']} %)"
            if d["battery_last"] is not None
            else "battery not reported"
        )
        conn = (
            f", connected {d['connected_share'] * 100:.0f} % of the period" if d["connected_share"] is not None else ""
        )
        lines.append(f"Device          {d['device_id']}: {bat}{conn}")
    rej = body["rejected"]
    if rej["low_quality"] or rej["implausible"]:
        lines.append(
            f"Not counted     {rej['low_quality']} readings of poor signal quality, "
            f"{rej['implausible']} out of the physiological range"
        )
    return "\n".join(lines)


# -- the day drawn (data for gateway.summaryplot) ---------------------------------------------------


def series(data: DayData, start: float, until: float) -> dict[str, Any]:
    """Per-minute means of heart rate and SpO2, the minutes worn, for the day's picture."""
    by_minute: dict[int, MinuteBin] = {}
    for minute, _device, b in data.bins:
        if start <= minute * 60 < until:
            by_minute.setdefault(minute, MinuteBin()).merge(b)
    minutes = sorted(by_minute)
    return {
        "hr": [[m * 60, round(by_minute[m].hr.total / by_minute[m].hr.n, 1)] for m in minutes if by_minute[m].hr.n],
        "spo2": [
            [m * 60, round(by_minute[m].spo2.total / by_minute[m].spo2.n, 1)] for m in minutes if by_minute[m].spo2.n
        ],
        "worn": [m * 60 for m in minutes if by_minute[m].worn],
    }
