"""BLE wrist monitor: Heart Rate Service with RR intervals, Pulse Oximeter Service (PLX continuous),
Battery, and the vendor-neutral raw PPG service of docs/ble.md.

- Heart Rate Measurement -> :class:`~drivers.base.BeatIntervals` for every notification that carries
  RR intervals (the DSP's AF screening wants every beat), and a heart-rate
  :class:`~drivers.base.Measurement` (``method="device"``) at most every ``report_every_s``;
  a value sent while the sensor reports no skin contact is dropped and counted.
- PLX Continuous -> an SpO2 Measurement at most every ``report_every_s``; values whose status says
  they are unusable (sensor off, calibrating, demonstration data...) are dropped and counted. Its
  pulse rate is reported only by a device without the Heart Rate Service.
- Raw PPG frames -> :class:`~drivers.base.Waveform` blocks of ``ppg_block_s`` with channels
  ``red``/``ir``/``green`` (those the device sends) and, from format-2 frames with acceleration,
  ``accel_x``/``accel_y``/``accel_z`` in g; ``fs`` from the frame and ``first_index`` the device's sample
  counter (unwrapped past 2**32), so the DSP sees gaps instead of guessing. The assembly is the pure
  :class:`PpgAssembler`.
- The device's own activity flag (format-2 frames, docs/ble.md) is passed through as ``extra["at_rest"]``
  on the heart-rate values the device computed (Heart Rate Measurement, PLX pulse rate) while it is
  fresh (:data:`ACTIVITY_MAX_AGE_S`); a device that does not report one leaves them unmarked. The
  gateway's own heart rate gets ``at_rest`` from the acceleration, in the DSP (docs/dsp.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bleak import BleakClient

from drivers import codes, plausible
from drivers.base import BeatIntervals, DeviceSpec, DriverContext, Measurement, ReadingSink, Waveform
from drivers.ble import gatt
from drivers.ble.driver import BleDriver, BleOptions
from drivers.options import DriverOptions, option

log = logging.getLogger(__name__)

LOINC_HEART_RATE = codes.HEART_RATE
LOINC_SPO2 = codes.SPO2
UNIT_PER_MIN = codes.PER_MIN
UNIT_PERCENT = codes.PERCENT


def known_calibration(value: Any) -> str | None:
    """One of the SpO2 calibrations the gateway's DSP knows (docs/dsp.md), in any case; the DSP is
    imported only when a wrist monitor's options are checked."""
    from gateway.dsp.spo2 import CALIBRATIONS

    if str(value).lower() in CALIBRATIONS:
        return None
    return "one of " + ", ".join(sorted(CALIBRATIONS))


@dataclass(frozen=True)  # no slots: frozen+slots subclasses break super() on 3.11
class WristOptions(BleOptions):
    report_every_s: float = option(5.0, lo=0, hi=3600, unit="seconds", doc="heart rate and SpO2 at most this often")
    ppg: bool = option(True, doc="stream raw PPG")
    ppg_block_s: float = option(1.0, lo=0.1, hi=10, unit="seconds", doc="samples per Waveform")
    # SpO2 calibration of the gateway's ratio-of-ratios estimate from raw PPG: a model name of
    # gateway.dsp.spo2.CALIBRATIONS (docs/dsp.md); the device's own SpO2 is passed through as is.
    spo2_calibration: str = option(
        "default",
        check=known_calibration,
        describe="a calibration of gateway.dsp.spo2 (docs/dsp.md)",
        refused="no-such-model",
        doc="SpO2 calibration model",
    )
    # the accelerometer-aided spectral tracker of gateway.dsp.motion: off, a moving window gives no
    # heart rate (docs/dsp.md has its accuracy on the wrist exercise recordings, short of its goal)
    hr_while_moving: bool = option(False, doc="heart rate while the wrist moves (needs frame format 2)")


_WRAP = 1 << 32
MG_TO_G = 1e-3  # format-2 acceleration samples are in mg
# The activity flag of the last PPG frame describes the device's state at that frame; frames come
# many times a second, so a flag older than this means the stream stopped (not "still at rest").
ACTIVITY_MAX_AGE_S = 5.0


@dataclass
class PpgStats:
    frames: int = 0
    samples: int = 0
    blocks: int = 0
    gap_samples: int = 0  # samples the device counted that never arrived, while connected
    stale_frames: int = 0  # frames older than what was already received (dropped)
    restarts: int = 0  # the device's counter started again (reboot)


@dataclass
class PpgAssembler:
    """Raw PPG frames -> Waveform blocks (pure: arrival times are given by the caller).

    Samples are timed from an anchor (arrival time of a frame minus its duration), by their index at
    ``fs``; the anchor moves when arrivals drift from the sample clock by more than
    ``max_drift_s`` (a stall, a gap, the device's clock running fast or slow).
    """

    device_id: str
    block_s: float = 1.0
    max_drift_s: float = 1.0
    stats: PpgStats = field(default_factory=PpgStats)
    _expected: int | None = None  # unwrapped index of the next sample
    _fs: float | None = None
    _anchor: tuple[float, int] | None = None  # (time, index)
    _start: int = 0
    _names: tuple[str, ...] = ()
    _buf: dict[str, list[float]] = field(default_factory=dict)
    _in_session: bool = False
    _stale_run: int = 0

    def new_session(self) -> None:
        """The link (re)started: the device's counter jumped meanwhile, which is not a loss."""
        self._in_session = False

    def feed(self, frame: gatt.PpgFrame, arrival: float) -> list[Waveform]:
        out: list[Waveform] = []
        n = frame.n_samples
        names = tuple(frame.channels)
        if self._expected is None:
            index = frame.counter
        else:
            delta = (frame.counter - self._expected) % _WRAP
            if delta >= _WRAP // 2:
                delta -= _WRAP
            if delta < 0 and self._in_session and self._stale_run < 3:
                self._stale_run += 1
                self.stats.stale_frames += 1
                return out
            if delta < 0:
                # The counter went back for good (the device restarted): a new series.
                self.stats.restarts += 1
                self._anchor = None
            elif delta > 0 and self._in_session:
                self.stats.gap_samples += delta
            index = self._expected + delta
        self._stale_run = 0
        if index != self._expected or frame.sample_rate_hz != self._fs or names != self._names:
            out += self.flush()
            self._start = index
            if frame.sample_rate_hz != self._fs:
                self._anchor = None
            self._fs, self._names = frame.sample_rate_hz, names
        fs = frame.sample_rate_hz
        first_t = arrival - n / fs
        if self._anchor is None or abs(self._time(index) - first_t) > self.max_drift_s:
            out += self.flush()
            self._start = index
            self._anchor = (first_t, index)
        if not self._buf:
            self._start = index
        for name in names:
            scale = MG_TO_G if name in gatt.PPG_ACCEL_CHANNELS else 1.0
            self._buf.setdefault(name, []).extend(float(v) * scale for v in frame.channels[name])
        self._expected = index + n
        self._in_session = True
        self.stats.frames += 1
        self.stats.samples += n
        if self._expected - self._start >= max(1, round(self.block_s * fs)):
            out += self.flush()
        return out

    def _time(self, index: int) -> float:
        assert self._anchor is not None and self._fs is not None
        t0, i0 = self._anchor
        return t0 + (index - i0) / self._fs

    def flush(self) -> list[Waveform]:
        if not self._buf or self._fs is None or self._anchor is None:
            self._buf = {}
            return []
        w = Waveform(
            device_id=self.device_id,
            captured_at=self._time(self._start),
            fs=self._fs,
            channels={k: tuple(v) for k, v in self._buf.items()},
            first_index=self._start,
        )
        self._buf = {}
        self._start = self._expected if self._expected is not None else 0
        self.stats.blocks += 1
        return [w]


class RateLimiter:
    """At most one value per ``every_s`` per key (the latest value wins when due)."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}

    def due(self, key: str, now: float) -> bool:
        last = self._last.get(key)
        # ``now`` before the last value: the wall clock stepped back; due, or silent for the step
        if last is not None and 0 <= now - last < self.every_s:
            return False
        self._last[key] = now
        return True


class WristMonitorDriver(BleDriver):
    """Options: the BLE keys (``address``...), ``report_every_s`` (heart rate and SpO2 observations,
    default 5), ``ppg`` (stream raw PPG, default true), ``ppg_block_s`` (samples per Waveform, in
    seconds, default 1)."""

    kind: ClassVar[str] = "ble-wrist"
    priority: ClassVar[int] = 2
    wearable: ClassVar[bool] = True  # worn all day: the care rules watch it for "no data"
    Options: ClassVar[type[DriverOptions]] = WristOptions
    summary: ClassVar[str] = "Bluetooth LE wrist monitor (heart rate, SpO2, raw PPG)"
    ble_services: ClassVar[tuple[str, ...]] = (
        gatt.HEART_RATE_SERVICE.lower(),
        gatt.PULSE_OXIMETER_SERVICE.lower(),
        gatt.RAW_PPG_SERVICE.lower(),
    )
    silence_warn_s: ClassVar[float | None] = 3600.0
    streams: ClassVar[bool] = True
    loinc_codes: ClassVar[tuple[str, ...]] = (codes.HEART_RATE, codes.SPO2)

    def __init__(self, spec: DeviceSpec, sink: ReadingSink, ctx: DriverContext) -> None:
        super().__init__(spec, sink, ctx)
        opts = spec.options
        assert isinstance(opts, WristOptions)
        self.limiter = RateLimiter(opts.report_every_s)
        self.ppg_enabled = opts.ppg
        self.ppg = PpgAssembler(self.device_id, block_s=opts.ppg_block_s)
        self.has_hrs = False
        self._activity: tuple[bool, float] | None = None  # (the device's at_rest flag, when received)

    def counters(self) -> Mapping[str, int]:
        merged = dict(super().counters())
        s = self.ppg.stats
        merged.update(
            ppg_frames=s.frames,
            ppg_gap_samples=s.gap_samples,
            ppg_stale_frames=s.stale_frames,
            ppg_restarts=s.restarts,
        )
        return merged

    async def setup(self, client: BleakClient) -> None:
        self.ppg.new_session()
        self.has_hrs = await self.subscribe(client, gatt.HEART_RATE_MEASUREMENT, self.on_heart_rate)
        has_plx = await self.subscribe(client, gatt.PLX_CONTINUOUS, self.on_plx)
        await self.read_battery(client)
        has_ppg = self.ppg_enabled and await self.subscribe(client, gatt.RAW_PPG_FRAME, self.on_ppg)
        log.debug("device %s: heart rate %s, PLX %s, raw PPG %s", self.device_id, self.has_hrs, has_plx, bool(has_ppg))

    async def teardown(self) -> None:
        for w in self.ppg.flush():
            self.sink(w)

    def on_heart_rate(self, data: bytes) -> None:
        try:
            hrm = gatt.decode_heart_rate_measurement(data)
        except gatt.GattDecodeError as exc:
            self.bad_value(exc)
            return
        now = self.clock()
        if hrm.sensor_contact is False:
            self.count("no_contact")
            return
        if hrm.rr_intervals_s:
            self.sink(BeatIntervals(self.device_id, now, hrm.rr_intervals_s))
        hr = self._plausible(float(hrm.heart_rate), plausible.pulse_ok)
        if hr is not None and self.limiter.due("hr", now):
            self.sink(Measurement(self.device_id, LOINC_HEART_RATE, hr, UNIT_PER_MIN, now, extra=self.activity(now)))

    def on_plx(self, data: bytes) -> None:
        try:
            plx = gatt.decode_plx_continuous(data)
        except gatt.GattDecodeError as exc:
            self.bad_value(exc)
            return
        if plx.status & gatt.PLX_UNUSABLE:
            self.count("unusable_values")
            return
        now = self.clock()
        extra: dict[str, Any] = {}
        if plx.pulse_amplitude_index is not None:
            extra["pulse_amplitude_index"] = plx.pulse_amplitude_index
        spo2 = self._plausible(plx.spo2, plausible.spo2_ok)
        pr = self._plausible(plx.pulse_rate, plausible.pulse_ok)
        if spo2 is not None and self.limiter.due("spo2", now):
            self.sink(Measurement(self.device_id, LOINC_SPO2, spo2, UNIT_PERCENT, now, extra=extra))
        if not self.has_hrs and pr is not None and self.limiter.due("pr", now):
            self.sink(Measurement(self.device_id, LOINC_HEART_RATE, pr, UNIT_PER_MIN, now, extra=self.activity(now)))

    def _plausible(self, value: float | None, ok: Callable[[float], bool]) -> float | None:
        """``value`` if a body can give it; 0 (the device's "no value") and the rest (counted as
        ``out_of_range``, drivers/plausible.py) are None."""
        if value is None or value == 0:
            return None
        if not ok(value):
            self.count("out_of_range")
            return None
        return value

    def activity(self, now: float) -> dict[str, Any]:
        """``{"at_rest": flag}`` from the device's last activity flag if it is fresh, else ``{}``."""
        if self._activity is None:
            return {}
        flag, at = self._activity
        return {"at_rest": flag} if 0 <= now - at <= ACTIVITY_MAX_AGE_S else {}

    def on_ppg(self, data: bytes) -> None:
        try:
            frame = gatt.decode_ppg_frame(data)
        except gatt.GattDecodeError as exc:
            self.bad_value(exc)
            return
        now = self.clock()
        if frame.at_rest is not None:
            self._activity = (frame.at_rest, now)
        for w in self.ppg.feed(frame, now):
            self.sink(w)
