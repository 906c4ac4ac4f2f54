"""Per-device streaming DSP: sliding windows over a wrist monitor's PPG and RR stream -> observations.

The daemon's pipeline creates one :class:`WristStream` per device (``WristStream(device_id)``) and hands
it every :class:`~drivers.base.Waveform` and :class:`~drivers.base.BeatIntervals` of that device, on the
event loop; the stream returns the gateway-computed :class:`~drivers.base.Measurement` objects
(``method="gateway"``) to publish. Values the device computed itself are not touched here: the drivers
emit them as ``method="device"`` readings.

Cadence (documented in docs/dsp.md):

- **Heart rate** (LOINC 8867-4, ``/min``) and **SpO2** (LOINC 59408-5, ``%``, only when the waveform has
  ``red`` and ``ir`` channels): every :data:`HOP_S` = 5 s of contiguous signal, over the last
  :data:`WINDOW_S` = 10 s. Nothing is emitted for a window that fails the signal-quality index, with
  one exception: a still window (under :data:`~gateway.dsp.quality.MAX_MOTION_G`) of a device that sends
  ``accel_x/y/z``, refused for its beats' sake (:data:`~gateway.dsp.quality.BEAT_REASONS`), is analysed
  again with the motion cancelled (:func:`~gateway.dsp.motion.rate_motion_cancelled`: a still wrist on
  a moving body, whose motion makes beats of its own, and only when the accelerometer shows motion to
  cancel); a value found so is emitted with ``extra["motion_cancelled"] = True`` and
  ``extra["at_rest"] = False`` (counted ``motion-cancelled``), and its beats feed no AF screen.
- **Heart rate while moving** (only with ``motion_hr=True``, off by default until it meets its accuracy
  goal, see docs/dsp.md; and only when the waveform has ``accel_x``/``accel_y``/``accel_z``): every
  :data:`~gateway.dsp.motion.HOP_S` = 2 s over the last :data:`~gateway.dsp.motion.WINDOW_S` = 8 s, the
  accelerometer-aided spectral tracker (:mod:`gateway.dsp.motion`) runs on a window that moves more than
  :data:`~gateway.dsp.quality.MAX_MOTION_G`, and on a still one when the time-domain path refused its own
  last window for the beats' sake (:data:`~gateway.dsp.quality.BEAT_REASONS`: their shape, count,
  spacing or rate, or motion), so that a still spell (the hands on a bike's handlebars) gets values and
  keeps the track; a still window is tracked only while the track is confirmed (a time-domain or moving
  value within :data:`~gateway.dsp.motion.TRACK_MEMORY_S`) and when it holds a periodic line at all
  (:func:`~gateway.dsp.motion.significant_lines`). A window, moving or still, is answered only when a
  periodic line stands out within one Fourier bin of the tracked rate in that window
  (:func:`~gateway.dsp.motion.line_at`; counted ``no-line-at-rate`` otherwise) and the confidence
  reaches its threshold: it emits the heart rate with ``extra["method"] = "spectral"``,
  ``quality`` = the confidence. At rest the time-domain value
  (``extra["method"] = "time"``) comes first and re-centres the tracker; a refusal about the sensor (a
  flat line, perfusion out of limits) is not overridden.
- **AF screening** (``homecare:af-screening``, unit ``1``, value = AF burden 0..1, ``extra`` = label,
  burden, window_s, n_intervals): every :data:`AF_HOP_S` = 60 s of stream time, over the beat intervals
  of the last :data:`AF_WINDOW_S` = 120 s: the device's own RR intervals when it sent any in that window
  (screened as a recording: a burst of them is a short one), otherwise, or when they are too few for a
  label, the beats found in the PPG. For those the screen is told the time the window spans
  (``span_s``: 120 s, or the time since the cadence started), so that the time without a usable beat
  counts as unknown: a label needs half of it covered by plausible intervals
  (:data:`~gateway.dsp.af.MIN_QUALITY`). The cadence starts again with the first data after more than
  a window without any, and when the clock goes back (beats timed after the new time are dropped). A
  window :func:`~gateway.dsp.af.screen_af` calls ``"insufficient"`` emits nothing.

Channels: ``pleth`` (an oximeter's upright pleth, e.g. the CMS50 at 60 Hz) or raw optical intensities
``ir``/``red``/``green`` (a BLE wrist monitor; a pulse is a dip). Heart rate uses ``pleth``, else ``ir``,
else ``green``. Optional accelerometer channels ``accel_x``/``accel_y``/``accel_z`` (g, raw with gravity, same rate)
feed the motion check, and then HR/SpO2 carry ``extra["at_rest"]`` (:mod:`gateway.dsp.activity`: ENMO
below the sedentary cut-point, and no activity in the last ``rest_settle_s``); without them readings
are unmarked.

Gaps: a block whose ``first_index`` is up to :data:`MAX_BRIDGE_S` after the previous block's end (a few
samples lost over the radio) is joined to it by linear interpolation (``counters.bridged``; the beat
chain breaks there); a longer jump, a jump back (a reconnection, a device restart), or a change of rate
or channel set restarts the window; beat intervals never span
such a gap or an unusable window (the chain of beats restarts, and screen_af sees a NaN interval there).
The motion path's heart-rate track survives a restart (its rate change is bounded by the time that
passed; it starts afresh after 60 s, when time goes back, or at a new sample rate).

Cost: per 5 s hop one 10 s analysis (band-pass, peak detection, SQI, ratio of ratios); per 60 s one
AF screen of ~150 intervals: well under a millisecond per second of signal (bench/dsp_speed.py).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from drivers import codes
from drivers.base import BeatIntervals, Measurement, Waveform
from gateway.dsp.activity import REST_SETTLE_S, RestTracker
from gateway.dsp.af import AfResult, screen_af
from gateway.dsp.heart import MIN_FS, analyse, refused
from gateway.dsp.motion import HOP_S as MOTION_HOP_S
from gateway.dsp.motion import WINDOW_S as MOTION_WINDOW_S
from gateway.dsp.motion import MotionHrTracker, rate_motion_cancelled
from gateway.dsp.quality import BEAT_REASONS, MAX_MOTION_G, clip01, motion_level
from gateway.dsp.spo2 import Calibration, calibration_for, spo2_from

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

LOINC_HR = codes.HEART_RATE
LOINC_SPO2 = codes.SPO2
CODE_AF = "homecare:af-screening"

WINDOW_S = 10.0
HOP_S = 5.0
AF_WINDOW_S = 120.0
AF_HOP_S = 60.0
EDGE_S = 1.0  # beats this close to a window's edges are taken from the next/previous window instead
SAME_BEAT_S = 0.2  # a beat re-detected in an overlapping window lands within this of its first time
MAX_FS = 2000.0
# A gap shorter than one beat at 60 /min loses at most one beat: bridged by interpolation instead of
# restarting the window (which would cost a whole window of values for a few lost samples).
MAX_BRIDGE_S = 1.0
ACCEL = ("accel_x", "accel_y", "accel_z")
OPTICAL = ("ir", "red", "green")


@dataclass
class StreamCounters:
    windows: int = 0
    unusable_windows: int = 0
    gaps: int = 0
    bridged: int = 0
    motion_windows: int = 0
    rejected_blocks: int = 0
    hr_emitted: int = 0
    spo2_emitted: int = 0
    af_emitted: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class WristStream:
    """Sliding-window DSP for one device. Not thread-safe; cheap per call (see module docstring)."""

    def __init__(
        self,
        device_id: str,
        *,
        calibration: str | Calibration | None = None,
        window_s: float = WINDOW_S,
        hop_s: float = HOP_S,
        af_window_s: float = AF_WINDOW_S,
        af_hop_s: float = AF_HOP_S,
        motion_hr: bool = False,
        rest_settle_s: float = REST_SETTLE_S,
    ) -> None:
        self.device_id = device_id
        self.calibration = calibration_for(calibration)
        self.window_s, self.hop_s = window_s, hop_s
        self.af_window_s, self.af_hop_s = af_window_s, af_hop_s
        self.counters = StreamCounters()
        # waveform state
        self._fs = 0.0
        self._names: tuple[str, ...] = ()
        self._next_index: int | None = None
        self._t0 = 0.0  # time of the buffer's first sample
        self._buf: dict[str, FloatArray] = {}
        self._since_hop = 0  # samples since the last analysis
        # beats found in the PPG: absolute times; the chain breaks at gaps and bad windows
        self._last_beat: float | None = None
        self._ppg_rr: deque[tuple[float, float]] = deque()  # (end time, interval s or NaN)
        # device RR intervals
        self._dev_rr: deque[tuple[float, float]] = deque()
        self._dev_last: float | None = None
        self._af_next: float | None = None  # stream time of the next AF screen
        self._af_since = 0.0  # stream time the AF cadence (re)started: a screen spans no more than since then
        self._af_last: float | None = None  # stream time of the last data (a sample block, device RR)
        # accelerometer-aided heart rate while moving
        # off by default: on the wrist exercise recordings it is not yet accurate enough (docs/dsp.md)
        self.motion_hr = motion_hr
        self._tracker = MotionHrTracker()
        self._since_motion_hop = 0
        # the reasons the time-domain path refused its last window: () when it answered, None when no
        # window was analysed since a restart; the spectral path answers a still window only after a
        # refusal for the beats' sake (quality.BEAT_REASONS), not the sensor's
        self._time_refusal: tuple[str, ...] | None = None
        # at rest or not, from the accelerometer (gateway.dsp.activity); survives gaps and restarts
        self._rest = RestTracker(settle_s=rest_settle_s)
        self._verdict: tuple[bool, float] | None = None  # the last at-rest verdict and its window's end

    # -- waveform -------------------------------------------------------------------------------

    def push_waveform(self, w: Waveform) -> list[Measurement]:
        block = self._accept(w)
        if block is None:
            return []
        n = len(next(iter(block.values())))
        if self._next_index is not None and (w.fs != self._fs or tuple(sorted(block)) != self._names):
            self._restart("gap")
        elif self._next_index is not None and w.first_index != self._next_index:
            lost = w.first_index - self._next_index
            if 0 < lost <= MAX_BRIDGE_S * self._fs and self._buf and all(len(b) for b in self._buf.values()):
                self._bridge(block, lost)
            else:
                self._restart("gap")
        if self._next_index is None:
            self._fs, self._names = float(w.fs), tuple(sorted(block))
            self._t0 = float(w.captured_at)
            self._buf = {k: np.zeros(0) for k in block}
        cap = round(max(self.window_s, MOTION_WINDOW_S) * self._fs)
        for k, v in block.items():
            b = np.concatenate((self._buf[k], v))
            if len(b) > cap:
                self._t0 += (len(b) - cap) / self._fs if k == self._names[0] else 0.0
                b = b[len(b) - cap :]
            self._buf[k] = b
        self._next_index = w.first_index + n
        self._since_hop += n
        self._since_motion_hop += n
        out: list[Measurement] = []
        hop, motion_hop = round(self.hop_s * self._fs), round(MOTION_HOP_S * self._fs)
        have = len(self._buf[self._names[0]])
        # a hop's remainder carries over (modulo, not reset): blocks that do not divide the hop (102 samples
        # at 102.4 Hz) would otherwise stretch every hop to a whole number of blocks (2 s to 3 s)
        if have >= round(self.window_s * self._fs) and self._since_hop >= hop:
            self._since_hop %= hop
            out.extend(self._analyse())
        if (
            self.motion_hr
            and all(a in self._buf for a in ACCEL)
            and have >= round(MOTION_WINDOW_S * self._fs)
            and self._since_motion_hop >= motion_hop
        ):
            self._since_motion_hop %= motion_hop
            out.extend(self._analyse_motion())
        t_end = self._t0 + len(self._buf[self._names[0]]) / self._fs
        out.extend(self._maybe_af(t_end))
        return out

    def _accept(self, w: Waveform) -> dict[str, FloatArray] | None:
        """The block's usable channels as arrays, or None (counted) when it cannot be used at all."""
        why = None
        if not (isinstance(w.fs, (int, float)) and math.isfinite(w.fs) and MIN_FS <= w.fs <= MAX_FS):
            why = "bad-rate"
        elif not math.isfinite(w.captured_at):
            why = "bad-time"
        block: dict[str, FloatArray] = {}
        if why is None:
            block = _channels(w.channels)
            if not block or not ({"pleth", *OPTICAL} & block.keys()):
                why = "no-ppg-channel"
            elif len({len(v) for v in block.values()}) != 1 or len(next(iter(block.values()))) == 0:
                why = "ragged-channels"
        if why is not None:
            self.counters.rejected_blocks += 1
            self._count(why)
            log.debug("device %s: waveform block rejected (%s)", self.device_id, why)
            return None
        return block

    def _bridge(self, block: dict[str, FloatArray], lost: int) -> None:
        """Fill ``lost`` samples between the buffer's last sample and the block's first, per channel."""
        self.counters.bridged += 1
        log.debug("device %s: %d samples lost, bridged", self.device_id, lost)
        ramp = np.arange(1, lost + 1, dtype=np.float64) / (lost + 1)
        for k, v in block.items():
            last, first = float(self._buf[k][-1]), float(v[0])
            if math.isfinite(last) and math.isfinite(first):
                fill = last + (first - last) * ramp
            else:  # nothing to interpolate from: the windows over it are refused as not finite anyway
                fill = np.full(lost, math.nan)
            self._buf[k] = np.concatenate((self._buf[k], fill))
        self._since_hop += lost
        self._since_motion_hop += lost
        self._break_chain()

    def _restart(self, why: str) -> None:
        self.counters.gaps += 1
        log.debug("device %s: waveform %s, window restarts", self.device_id, why)
        self._next_index = None
        self._buf = {}
        self._since_hop = 0
        self._since_motion_hop = 0
        # the heart-rate track survives the restart: the tracker bounds the rate's change by the time
        # that passed (a radio drop of a few seconds costs a window of values, not the track), starts
        # afresh after 60 s or when time goes back, and resets itself on a new sample rate
        self._time_refusal = None
        self._break_chain()

    def _break_chain(self) -> None:
        if self._last_beat is not None:
            self._ppg_rr.append((self._last_beat, math.nan))
        self._last_beat = None

    def _count(self, why: str) -> None:
        self.counters.reasons[why] = self.counters.reasons.get(why, 0) + 1

    def _window(self, seconds: float) -> tuple[dict[str, FloatArray], float, float]:
        """The last ``seconds`` of every channel, and the window's start and end times."""
        n = round(seconds * self._fs)
        have = len(self._buf[self._names[0]])
        t_end = self._t0 + have / self._fs
        return {k: v[-n:] for k, v in self._buf.items()}, t_end - min(n, have) / self._fs, t_end

    def _ppg_source(self, buf: Mapping[str, FloatArray]) -> tuple[FloatArray, bool]:
        if "pleth" in buf:
            return buf["pleth"], False
        return (buf["ir"] if "ir" in buf else buf["green"]), True

    def _analyse_motion(self) -> list[Measurement]:
        buf, _, t_end = self._window(MOTION_WINDOW_S)
        src, _ = self._ppg_source(buf)
        acc = np.column_stack([buf[a] for a in ACCEL])
        mg = motion_level(acc)
        still = not mg > MAX_MOTION_G
        if still:
            why = self._time_refusal
            if not (why and BEAT_REASONS.issuperset(why)):
                # at rest the time-domain path answers and re-centres the track (seed), when it can;
                # when the sensor sees no pulse there is nothing to track either
                return []
            if not self._tracker.confirmed(t_end, self._fs):
                # a still window never starts a track, nor feeds one that nothing confirmed lately
                self._count("track-unconfirmed")
                return []
        # A still window the time-domain path refused is tracked (and answered) here: a still spell
        # between moving ones (the hands on the handlebars) neither freezes the track nor restarts it.
        # There the accelerometer's spectra are its own noise and the track's margin alone would let noise
        # through, so the window must hold a significant periodic line at the tracked rate; its values do
        # not confirm the track (only a time-domain value or a moving window's does), so a still spell is
        # answered for at most TRACK_MEMORY_S
        m = self._tracker.update(src, acc, self._fs, t_end, motion_g=mg, test_line=still)
        self.counters.motion_windows += 1
        at_rest = self._note_rest(self._rest.update(acc, self._fs, t_end), t_end)
        if m.refused is not None:
            self._count(m.refused)
            return []
        assert m.bpm is not None  # a MotionHr has a value or the reason it has none
        if not still:
            self._tracker.confirm(t_end)
        self.counters.hr_emitted += 1
        extra: dict[str, Any] = {"window_s": MOTION_WINDOW_S, "method": "spectral"}
        if at_rest is not None:
            extra["at_rest"] = at_rest
        return [self._m(LOINC_HR, m.bpm, "/min", t_end, m.confidence, extra)]

    def _analyse(self) -> list[Measurement]:
        fs = self._fs
        buf, t_start, t_end = self._window(self.window_s)
        self.counters.windows += 1
        motion = None
        if all(a in buf for a in ACCEL):
            motion = np.column_stack([buf[a] for a in ACCEL])
        elif "accel" in buf:
            motion = buf["accel"]
        src, inverted = self._ppg_source(buf)
        mg = motion_level(motion) if motion is not None else None
        if mg is not None and not mg <= MAX_MOTION_G:
            # the SQI refuses a window moving this much whatever else it finds (and SpO2 with it): not
            # analysed, which halves the cost of a moving wrist (the motion path answers, when on)
            hr, y = refused("motion", motion_g=mg)
        else:
            hr, y = analyse(src, fs, inverted=inverted, motion=motion, motion_g=mg, check_perfusion=inverted)
        out: list[Measurement] = []
        extra: dict[str, Any] = {"window_s": self.window_s}
        if motion is not None:
            extra["method"] = "time"
            at_rest = self._note_rest(self._rest.update(motion, fs, t_end) if motion.ndim == 2 else None, t_end)
            if at_rest is None:
                self._count("activity-unknown")
            else:
                extra["at_rest"] = at_rest
        self._time_refusal = hr.sqi.reasons if hr.bpm is None else ()
        rescued = None
        if (
            hr.bpm is None
            and motion is not None
            and motion.ndim == 2
            and mg is not None
            and mg <= MAX_MOTION_G  # a moving window is the motion path's (when on)
            and hr.sqi.reasons
            and BEAT_REASONS.issuperset(hr.sqi.reasons)
        ):
            # a still window whose beats the time-domain path refused: the motion of a body under a still
            # wrist (pedalling) makes beats of its own there; with it cancelled the same estimator may find
            # the pulse's (docs/dsp.md, "The rest path on a still wrist of a moving body")
            rescued = rate_motion_cancelled(src, motion, fs, inverted=inverted)
        if hr.bpm is None:
            for r in hr.sqi.reasons:
                self._count(r)
            log.debug("device %s: window unusable (%s)", self.device_id, ",".join(hr.sqi.reasons))
            # no beats for the AF screen from it, cancelled or not: those of a cancelled window were never
            # checked for that (docs/dsp.md, "The rest path on a still wrist of a moving body")
            self._break_chain()
            if rescued is None or rescued.bpm is None:
                self.counters.unusable_windows += 1
            else:
                self._time_refusal = ()
                self._count("motion-cancelled")
                self._tracker.seed(rescued.bpm, t_end, fs)
                # the body moves (that is what was cancelled), however still the wrist: not a resting
                # value for the rest_only rules nor the summary's resting rate
                marked = extra | {"motion_cancelled": True, "at_rest": False}
                out.append(self._m(LOINC_HR, rescued.bpm, "/min", t_end, rescued.quality, marked))
                self.counters.hr_emitted += 1
        else:
            self._take_beats(hr.beat_times_s + t_start, t_start, t_end)
            if motion is not None and motion.ndim == 2:
                self._tracker.seed(hr.bpm, t_end, fs)
            out.append(self._m(LOINC_HR, hr.bpm, "/min", t_end, hr.quality, extra))
            self.counters.hr_emitted += 1
        if "red" in buf and "ir" in buf and inverted and src is buf["ir"]:
            sp = spo2_from(buf["red"], buf["ir"], fs, self.calibration, hr, y, motion=motion)
            if sp.percent is not None:
                out.append(self._m(LOINC_SPO2, sp.percent, "%", t_end, sp.quality, extra))
                self.counters.spo2_emitted += 1
            elif hr.bpm is not None:
                for r in sp.sqi.reasons:
                    self._count(r)
        return out

    def _note_rest(self, verdict: bool | None, t_end: float) -> bool | None:
        if verdict is not None:
            self._verdict = (verdict, t_end)
        return verdict

    def at_rest(self, t: float) -> bool | None:
        """The accelerometer's at-rest verdict for time ``t`` (the readings' clock): that of the last
        analysed window if it ended within one hop-and-window (:data:`WINDOW_S` + :data:`HOP_S`) of
        ``t``, else ``None``. For marking the heart rate a device computed itself (``method="device"``),
        which the stream does not see, with the same verdict as the gateway's own."""
        if self._verdict is None:
            return None
        verdict, at = self._verdict
        return verdict if abs(t - at) <= self.window_s + self.hop_s else None

    def _take_beats(self, beats: FloatArray, t_start: float, t_end: float) -> None:
        inner = beats[(beats >= t_start + EDGE_S) & (beats <= t_end - EDGE_S)]
        last = self._last_beat
        if last is not None and (len(inner) == 0 or inner[0] - last > 2.5 + SAME_BEAT_S):
            self._break_chain()  # the windows do not join up: no interval across the hole
            last = None
        for b in inner.tolist():
            if last is not None and b <= last + SAME_BEAT_S:
                continue
            if last is not None:
                self._ppg_rr.append((b, b - last))
            last = b
        self._last_beat = last
        self._trim(self._ppg_rr, t_end)

    def beat_intervals(self, source: str = "ppg") -> list[tuple[float, float]]:
        """The held beat intervals as ``(end time, seconds)`` (NaN marks a break in the chain), from the
        PPG (``"ppg"``) or the device (``"device"``): the last ``af_window_s`` of them (plots, debugging)."""
        return list(self._ppg_rr if source == "ppg" else self._dev_rr)

    # -- RR intervals ---------------------------------------------------------------------------

    def push_rr(self, b: BeatIntervals) -> list[Measurement]:
        try:
            rr = np.asarray(b.rr_s, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            rr = np.zeros(0)
        t_last = float(b.captured_at)
        if len(rr) == 0 or not math.isfinite(t_last):
            self.counters.rejected_blocks += 1
            self._count("bad-rr")
            return []
        with np.errstate(invalid="ignore"):
            # not a beat interval (negative, absurd): an artefact, kept as NaN so screen_af sees the break
            rr = np.where(np.isfinite(rr) & (rr > 0.0) & (rr < 60.0), rr, math.nan)
        ends = t_last - np.concatenate((np.cumsum(rr[::-1])[::-1][1:], [0.0]))
        if not np.all(np.isfinite(ends)):
            ends = np.full(len(rr), t_last)
        first_start = float(ends[0] - rr[0]) if math.isfinite(rr[0]) else t_last
        if self._dev_last is not None and (first_start - self._dev_last > 2.5 or first_start < self._dev_last - 2.5):
            self._dev_rr.append((self._dev_last, math.nan))  # a gap (or a clock jump) between notifications
        for e, r in zip(ends.tolist(), rr.tolist(), strict=True):
            self._dev_rr.append((e, r))
        self._dev_last = t_last
        self._trim(self._dev_rr, t_last)
        return self._maybe_af(t_last)

    # -- AF ---------------------------------------------------------------------------------------

    def _trim(self, q: deque[tuple[float, float]], now: float) -> None:
        while q and q[0][0] < now - self.af_window_s:
            q.popleft()

    def _restart_af(self, now: float) -> None:
        """The AF cadence starts again at ``now`` (the stream's first data, the clock gone back, or data
        again after more than a window without any): the next screen spans the time since then. Beats
        timed after ``now`` (the clock went back) are dropped, and the chains start again."""
        self._af_next, self._af_since = now + self.af_hop_s, now
        for q in (self._ppg_rr, self._dev_rr):
            # the data just pushed (timed now) may already follow the old ones: keep what is not after now
            kept = [e for e in q if e[0] <= now]
            q.clear()
            q.extend(kept)
        if self._last_beat is not None and not self._last_beat <= now:
            self._last_beat = None
        if self._dev_last is not None and not self._dev_last <= now:
            self._dev_last = None

    def _screen(self, source: str, now: float) -> AfResult | None:
        """The AF screen of the window's intervals from ``source``, None when there are none. The device's
        RR is a measurement where it has any: its bursts are screened as recordings of their own. The
        PPG's beats come only from windows that the heart-rate gate passed, and a body that moves can
        pass it with missed and misplaced beats: there the time without usable beats is of unknown rhythm
        and counts against the screen's quality (``span_s``: the window, or the time since the cadence
        started)."""
        q = self._dev_rr if source == "device" else self._ppg_rr
        rr = np.fromiter((r for _, r in q), dtype=np.float64, count=len(q))
        if not np.isfinite(rr).any():
            return None
        if source == "device":
            return screen_af(rr)
        return screen_af(rr, span_s=min(self.af_window_s, now - self._af_since))

    def _maybe_af(self, now: float) -> list[Measurement]:
        last, self._af_last = self._af_last, now
        if self._af_next is None or (last is not None and now - last > self.af_window_s):
            self._restart_af(now)  # the first data, or data again after more than a window without any
            return []
        if now < self._af_next:
            if now < self._af_next - 2 * self.af_hop_s:  # the clock went back: restart the cadence
                self._restart_af(now)
            return []
        self._af_next = now + self.af_hop_s
        self._trim(self._dev_rr, now)
        self._trim(self._ppg_rr, now)
        # the device's RR when it sent any in the window; the PPG's beats when it sent none, or too few
        # for a label (a device that includes RR in some of its notifications only)
        source, res = "device", self._screen("device", now)
        if res is None or res.label == "insufficient":
            ppg = self._screen("ppg", now)
            if ppg is not None and (res is None or ppg.label != "insufficient"):
                source, res = "ppg", ppg
        if res is None:
            return []
        if res.label == "insufficient":
            self._count("af-insufficient")
            return []
        self.counters.af_emitted += 1
        extra = {
            "label": res.label,
            "burden": round(res.burden, 4),
            "window_s": self.af_window_s,
            "n_intervals": int(res.n_valid),
            "source": source,
        }
        return [self._m(CODE_AF, res.burden, "1", now, res.quality, extra)]

    def _m(self, code: str, value: float, unit: str, t: float, quality: float, extra: Mapping[str, Any]) -> Measurement:
        return Measurement(
            device_id=self.device_id,
            code=code,
            value=round(float(value), 2) if code != CODE_AF else float(value),
            unit=unit,
            captured_at=t,
            method="gateway",
            quality=round(clip01(float(quality)), 3),
            extra=dict(extra),
        )


def _channels(channels: Mapping[str, Sequence[float]]) -> dict[str, FloatArray]:
    out: dict[str, FloatArray] = {}
    for k, v in channels.items():
        if k not in ("pleth", "accel", *OPTICAL, *ACCEL):
            continue
        try:
            a = np.asarray(v, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            continue
        out[k] = a
    return out
