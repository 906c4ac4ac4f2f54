"""The gateway's clock: is the wall clock synchronised, did it step, and a timeline that never jumps.

A Raspberry Pi has no battery clock: after a power cut it runs on the time fake-hwclock or timesyncd
saved last until a time server answers, then steps. This module tells the daemon what its clock is
worth (docs/mqtt-contract.md, "Time"):

- :class:`ClockCore` (sans-I/O): samples of (wall clock, ``CLOCK_BOOTTIME``, synchronised verdict) in,
  events out: ``synchronised`` (the first trustworthy moment), ``step`` (the wall clock moved against
  the boot clock by more than :data:`STEP_THRESHOLD_S`, either way), ``lost`` (no longer synchronised).
  A correction is due on ``synchronised`` and on a ``step`` while synchronised
  (:attr:`ClockEvent.corrects`): the outbox then rewrites the capture times of this boot's waiting
  messages from their boot-clock capture time plus the measured offset.
- :class:`Clock`: the core with its readers (injectable): the verdict from the kernel (``adjtimex``,
  read-only, as ``timedatectl`` does) or systemd-timesyncd's flag file, the wall clock, the boot clock
  and the boot id. :meth:`Clock.stamp` gives each committed message its boot id, boot-clock capture time
  and ``clock`` state; :meth:`Clock.synchronised` is what drivers ask before they set a device's clock.
  A capture time is a wall-clock time read before the stamp, by a driver or a signal window: the clock
  may have stepped in between, so it is turned into boot-clock time with the offset of the wall clock
  that read it (the clock remembers its last few offsets, one per step), never blindly with today's.
- :class:`Timeline`: the care rules' time axis: the boot clock plus an anchor, carried across restarts
  (``clock.json`` in the data directory), so a step of the wall clock either way never moves it.

The synchronised verdict can be read from a file instead (:data:`SYNC_FILE_ENV`): for test rigs that run
the daemon under libfaketime, where the kernel's verdict says nothing about the faked clock. It is named
in ``status`` (``clock.source``) and logged at WARNING, so it is never on silently.
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers.reconnect import BugLog

log = logging.getLogger(__name__)

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")
SYNC_FILE_ENV = "GATEWAY_CLOCK_SYNC_FILE"  # test rigs: a file saying "synced" or "unsynced"
STEP_THRESHOLD_S = 1.0  # NTP slews at most 0.5 ms/s: a change of the wall-boot offset beyond this is a step
CORRECT_TOLERANCE_S = 0.25  # a waiting message whose time is off by less than this is left as it is
WATCH_INTERVAL_S = 1.0
TIMELINE_SAVE_S = 60.0  # the timeline is saved this often (and at stop)
TIMELINE_CHECK_S = TIMELINE_SAVE_S / 4  # ...looked at this often
TIMELINE_MARGIN_S = TIMELINE_SAVE_S + TIMELINE_CHECK_S  # a new boot starts this far past the last save
# A capture time may lie this far past its stamp (times extrapolated from an anchor, re-anchored beyond 1 s:
# drivers/serial/cms50.py) or before the sample that began its offset's era; beyond that, an offset that puts
# the capture in the future or before its era's step did not read it.
CAPTURE_SLACK_S = 2.0
ERAS_KEPT = 16  # offsets of the wall clock remembered for stamps (one per step seen, the oldest forgotten)


class ClockState(enum.IntEnum):
    """The ``clock`` field of a data message (stored as an integer in the outbox)."""

    UNSYNCED = 0  # captured on an unsynchronised clock, sent before any correction was possible
    SYNCED = 1  # captured on a synchronised clock
    CORRECTED = 2  # captured unsynchronised (or before a step), corrected at the gateway before sending
    DEVICE = 3  # stamped by the device's own clock (stored records): the gateway does not correct it

    @property
    def wire(self) -> str:
        return self.name.lower()


# -- readers ----------------------------------------------------------------------------------------


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> (Linux), padding included
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


TIME_ERROR = 5
STA_UNSYNC = 0x0040


def kernel_clock_synchronised() -> tuple[bool, int] | None:
    """The kernel's NTP state via ``adjtimex`` (read-only: modes = 0), as ``timedatectl`` reads it:
    (synchronised, max error in microseconds), or None when it cannot be asked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        tx = _Timex()
        state = int(libc.adjtimex(ctypes.byref(tx)))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != TIME_ERROR and not (tx.status & STA_UNSYNC), int(tx.maxerror)


@dataclass(frozen=True, slots=True)
class SyncVerdict:
    synchronised: bool
    source: str  # "adjtimex", "timesyncd-flag", "file:<path>", "none"
    max_error_ms: float | None = None


SyncReader = Callable[[], SyncVerdict]


def system_sync(timesync_flag: Path = TIMESYNC_FLAG) -> SyncVerdict:
    """The kernel's verdict; when it says no (or cannot be asked), timesyncd's flag file."""
    kernel = kernel_clock_synchronised()
    if kernel is not None and kernel[0]:
        return SyncVerdict(True, "adjtimex", round(kernel[1] / 1000, 1))
    if timesync_flag.exists():
        return SyncVerdict(True, "timesyncd-flag")
    return SyncVerdict(False, "adjtimex" if kernel is not None else "none")


def file_sync(path: Path) -> SyncReader:
    """A verdict read from ``path`` at every sample: ``synced`` (or ``1``) is synchronised; anything
    else, or no file, is not (test rigs; see :data:`SYNC_FILE_ENV`)."""

    def read() -> SyncVerdict:
        try:
            text = path.read_text().strip().lower()
        except OSError:
            text = ""
        return SyncVerdict(text in ("synced", "1", "yes"), f"file:{path}")

    return read


def default_sync_reader() -> SyncReader:
    env = os.environ.get(SYNC_FILE_ENV)
    if env:
        log.warning(
            "clock: the synchronised verdict is read from %s (%s is set): a test rig, not a field unit",
            env,
            SYNC_FILE_ENV,
        )
        return file_sync(Path(env))
    return system_sync


def read_boot_id(path: Path = BOOT_ID_PATH) -> str:
    """The kernel's random id of this boot (changes at every boot); "" when the system has none."""
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def boottime() -> float:
    """Seconds since boot, suspend included, never stepped (CLOCK_BOOTTIME; monotonic elsewhere)."""
    clock_id = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return time.clock_gettime(clock_id)


def wall_of_monotonic(t_mono: float) -> float:
    """The moment ``t_mono`` of ``time.monotonic()`` on today's wall clock: for status fields that say
    when something happened (a device last heard, a connection made), kept on the monotonic clock so
    that a step of the wall clock between then and now does not make them hours old or in the future."""
    return time.time() - (time.monotonic() - t_mono)


def _name_of(listener: Callable[..., object]) -> str:
    return getattr(listener, "__qualname__", None) or repr(listener)


# -- the core -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    wall: float  # POSIX seconds
    boot: float  # boot clock, seconds
    synchronised: bool


@dataclass(frozen=True, slots=True)
class ClockEvent:
    kind: str  # "synchronised", "step", "lost"
    wall: float
    offset: float  # wall - boot clock after the event
    delta_s: float = 0.0  # the step (positive: the wall clock moved forwards)
    synchronised: bool = False

    @property
    def corrects(self) -> bool:
        """A correction of waiting messages is due: the clock just became trustworthy, or stepped
        while trusted."""
        return self.kind == "synchronised" or (self.kind == "step" and self.synchronised)


class ClockCore:
    """Sans-I/O: :meth:`observe` samples in order, get events. Steps are changes of the wall clock's
    offset against the boot clock by more than ``step_threshold_s`` between two samples."""

    def __init__(self, *, step_threshold_s: float = STEP_THRESHOLD_S) -> None:
        self.step_threshold_s = step_threshold_s
        self.synchronised = False
        self.offset: float | None = None  # wall - boot clock at the last sample
        self.synchronised_since: float | None = None
        self.steps = 0
        self.last_step: ClockEvent | None = None

    def observe(self, s: Sample) -> list[ClockEvent]:
        out: list[ClockEvent] = []
        offset = s.wall - s.boot
        if self.offset is not None and abs(offset - self.offset) > self.step_threshold_s:
            ev = ClockEvent("step", s.wall, offset, offset - self.offset, self.synchronised and s.synchronised)
            self.steps += 1
            self.last_step = ev
            out.append(ev)
        self.offset = offset
        if s.synchronised and not self.synchronised:
            self.synchronised, self.synchronised_since = True, s.wall
            out.append(ClockEvent("synchronised", s.wall, offset, synchronised=True))
        elif not s.synchronised and self.synchronised:
            self.synchronised, self.synchronised_since = False, None
            out.append(ClockEvent("lost", s.wall, offset))
        return out


# -- the component --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stamp:
    boot_id: str
    boot_s: float  # boot-clock capture time
    state: ClockState  # UNSYNCED also when read before a step the clock has seen since: it needs a correction


@dataclass(slots=True)
class _Era:
    """A stretch of the boot clock over which the wall clock kept its offset (no step in it)."""

    offset: float  # wall - boot clock, at its last sample
    after: float  # it began after this boot-clock time (the sample before its step; -inf for the first)


class Clock:
    """The core with its readers. Use :meth:`sample` once before stamping (the daemon does it at start),
    then run :meth:`run` in the daemon's TaskGroup."""

    def __init__(
        self,
        *,
        sync: SyncReader | None = None,
        wall: Callable[[], float] = time.time,
        boot: Callable[[], float] = boottime,
        boot_id: str | None = None,
        interval_s: float = WATCH_INTERVAL_S,
        step_threshold_s: float = STEP_THRESHOLD_S,
    ) -> None:
        self.sync = sync or default_sync_reader()
        self.wall = wall
        self.boot = boot
        self.boot_id = read_boot_id() if boot_id is None else boot_id
        self.interval_s = interval_s
        self.core = ClockCore(step_threshold_s=step_threshold_s)
        self.verdict = SyncVerdict(False, "none")
        self.listeners: list[Callable[[ClockEvent], None]] = []
        self.corrections = 0  # corrections applied (outbox rewrites)
        self.bugs = BugLog()  # failed samples and listeners (gateway status: bugs.clock)
        self.corrected_messages = 0
        self._eras: list[_Era] = []  # oldest first
        self._sampled_boot = -math.inf  # the boot clock at the last sample

    def synchronised(self) -> bool:
        """Is the wall clock trustworthy now? Drivers set a device's clock only when it is."""
        return self.core.synchronised

    def offset(self) -> float | None:
        """Wall - boot clock at the last sample (None before the first)."""
        return self.core.offset

    def sample(self) -> list[ClockEvent]:
        self.verdict = self.sync()
        s = Sample(self.wall(), self.boot(), self.verdict.synchronised)
        events = self.core.observe(s)
        if not self._eras or any(ev.kind == "step" for ev in events):
            self._eras = [*self._eras, _Era(s.wall - s.boot, self._sampled_boot)][-ERAS_KEPT:]
        else:
            self._eras[-1].offset = s.wall - s.boot  # NTP's slew, followed
        self._sampled_boot = s.boot
        for ev in events:
            if ev.kind == "step":
                log.warning(
                    "clock: the wall clock stepped by %+.3f s%s",
                    ev.delta_s,
                    "" if self.core.synchronised else " (not synchronised)",
                )
            elif ev.kind == "synchronised":
                log.info("clock: synchronised (%s)", self.verdict.source)
            else:
                log.warning("clock: no longer synchronised (%s)", self.verdict.source)
            for listener in self.listeners:
                # each on its own: one listener's bug neither stops the clock nor keeps the event from
                # the others (the outbox's correction among them)
                try:
                    listener(ev)
                except Exception as exc:  # noqa: BLE001 - a listener's bug is the listener's (docstring)
                    self.bugs.report(log, "clock", exc, f"{ev.kind} listener {_name_of(listener)} failed")
        return events

    def stamp(self, captured_at: float, *, device_clock: bool = False) -> Stamp:
        """Boot id, boot-clock capture time and clock state of something captured at ``captured_at``
        on the wall clock (a moment ago, or earlier: the age is kept, on the clock that read it).

        The wall clock may have stepped between the capture and now (a reading whose time was read just
        before the step, a signal window that began before it): the capture is put on the boot clock
        with the offset of the era that read it, not with today's, which would move it by the step and
        a correction with it. Read before a step the clock has seen, it is UNSYNCED: it needs a
        correction even on a synchronised clock (the outbox asks for one)."""
        now_wall, now_boot = self.wall(), self.boot()
        if device_clock:  # the device's own clock: only its age on ours matters (never corrected)
            return Stamp(self.boot_id, now_boot - (now_wall - captured_at), ClockState.DEVICE)
        offset, stepped_since = self._capture_offset(captured_at, now_wall, now_boot)
        state = ClockState.SYNCED if self.core.synchronised and not stepped_since else ClockState.UNSYNCED
        return Stamp(self.boot_id, captured_at - offset, state)

    def step_since(self, captured_at: float) -> float:
        """How far the wall clock has stepped since it read ``captured_at`` (s; 0 for a time read since
        its last step): what moves a capture onto today's wall clock, for the parts that place readings
        by it (the rules' timeline, the daily summary), as :meth:`stamp` places them on the boot clock.
        Not for a device's own clock (its times are no reading of ours)."""
        now_wall, now_boot = self.wall(), self.boot()
        offset, _ = self._capture_offset(captured_at, now_wall, now_boot)
        step = (now_wall - now_boot) - offset
        return step if abs(step) > self.core.step_threshold_s else 0.0  # NTP's slew since the last sample: none

    def to_timeline(self, captured_at: float, timeline_now: float) -> float:
        """``captured_at`` (read on this wall clock) on a :class:`Timeline` that reads ``timeline_now``:
        its age kept, and moved by any step since it was read (:meth:`step_since`)."""
        return captured_at + self.step_since(captured_at) + timeline_now - self.wall()

    def _capture_offset(self, captured_at: float, now_wall: float, now_boot: float) -> tuple[float, bool]:
        """The offset (wall - boot clock) of the wall clock that read ``captured_at``, newest era first:
        the first under which the capture falls between its era's step and now (give or take
        :data:`CAPTURE_SLACK_S`); and whether the clock stepped since that era's last sample. Steps smaller
        than the slack are not told apart (the newest wins); a time no era explains gets today's offset."""
        current = now_wall - now_boot
        latest = now_boot + CAPTURE_SLACK_S
        eras = self._eras
        if not eras or abs(current - eras[-1].offset) > self.core.step_threshold_s:
            # a step since the last sample, not seen yet: the capture was read after it, or before
            if self._sampled_boot - CAPTURE_SLACK_S <= captured_at - current <= latest:
                return current, False
        for k in range(len(eras) - 1, -1, -1):
            era = eras[k]
            if era.after - CAPTURE_SLACK_S <= captured_at - era.offset <= latest:
                return era.offset, k < len(eras) - 1
        return current, False

    async def run(self) -> None:
        """Sample every ``interval_s`` until cancelled. Never raises: the daemon's TaskGroup holds the
        SOS path. A failed sample (a reader's bug) is logged at ERROR with its traceback (rate limited),
        counted in ``bugs``, and the next sample tries again."""
        while True:
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 - the clock never stops the daemon (docstring)
                self.bugs.report(log, "clock", exc, "sample failed")
            await asyncio.sleep(self.interval_s)

    def status(self) -> dict[str, Any]:
        c = self.core
        step = c.last_step
        return {
            "synchronised": c.synchronised,
            "source": self.verdict.source,
            "max_error_ms": self.verdict.max_error_ms,
            "synchronised_since": c.synchronised_since,
            "boot_id": self.boot_id,
            "steps": c.steps,
            "last_step": None if step is None else {"at": step.wall, "delta_s": round(step.delta_s, 3)},
            "corrections": self.corrections,
            "corrected_messages": self.corrected_messages,
        }


# -- the rules' timeline ----------------------------------------------------------------------------


class Timeline:
    """A time axis for holds, windows and watches that never jumps: ``boot clock + anchor``, in POSIX-like
    seconds (equal to the wall clock when nothing stepped).

    Carried across restarts in ``path``: in the same boot it continues exactly; after a new boot it
    starts at the later of the wall clock and the last saved point plus :data:`TIMELINE_MARGIN_S` (the
    longest it can have run unsaved), so a clock behind the last reading never makes readings look
    older than it, and a clock days ahead only counts as time when it is the truth."""

    def __init__(
        self,
        path: Path | None,
        *,
        boot_id: str | None = None,
        wall: Callable[[], float] = time.time,
        boot: Callable[[], float] = boottime,
    ) -> None:
        self.path = path
        self.boot_id = read_boot_id() if boot_id is None else boot_id
        self.wall = wall
        self.boot = boot
        self._last_save = -math.inf
        self.bugs = BugLog()  # failed saves (gateway status: bugs.clock)
        now_wall, now_boot = wall(), boot()
        start = now_wall
        saved = self._load()
        if saved is not None:
            t, saved_boot_id, saved_boot = saved
            if saved_boot_id == self.boot_id and saved_boot <= now_boot:
                start = t + (now_boot - saved_boot)
            else:
                start = max(now_wall, t + TIMELINE_MARGIN_S)
        self.anchor = start - now_boot

    def _load(self) -> tuple[float, str, float] | None:
        if self.path is None:
            return None
        try:
            d = json.loads(self.path.read_text())
            t, bid, b = float(d["t"]), str(d["boot_id"]), float(d["boot_s"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("clock: timeline file %s unusable, starting from the wall clock: %s", self.path, exc)
            return None
        return (t, bid, b) if math.isfinite(t) and math.isfinite(b) else None

    def now(self) -> float:
        return self.boot() + self.anchor

    def __call__(self) -> float:
        return self.now()

    def save(self, *, force: bool = False) -> None:
        """Write the current point (atomically); at most every :data:`TIMELINE_SAVE_S` unless forced."""
        b = self.boot()
        if self.path is None or (not force and b - self._last_save < TIMELINE_SAVE_S):
            return
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"t": b + self.anchor, "boot_id": self.boot_id, "boot_s": b}))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("clock: cannot save the timeline to %s: %s", self.path, exc)
            return
        self._last_save = b

    async def run(self) -> None:
        """Save every :data:`TIMELINE_SAVE_S` until cancelled. Never raises (a bug is logged at ERROR with
        its traceback, rate limited, counted in ``bugs``, and the next check tries again)."""
        while True:
            try:
                self.save()
            except Exception as exc:  # noqa: BLE001 - the timeline never stops the daemon (docstring)
                self.bugs.report(log, "clock", exc, "timeline save failed")
            await asyncio.sleep(TIMELINE_CHECK_S)
