"""The simulated Bluetooth LE devices: a wrist monitor, a blood-pressure cuff and an SOS pendant (two
variants). Each is a GATT database plus the behaviour of the real kind of device:

- wrist monitor: Heart Rate Service with RR intervals (1 Hz), Pulse Oximeter Service (PLX continuous,
  1 Hz), Battery, Device Information and the raw PPG service of docs/ble.md streaming red/IR/green
  frames from :mod:`simulators.bluez.physiology` at ``ppg_rate_hz``; the sensor's sample counter runs
  whether or not anyone listens, as a real sensor's does. With ``accel=True`` the frames are format 2:
  3-axis acceleration and the device's activity flag (walking on command: ``set walking=true``);
- blood-pressure cuff: Blood Pressure Service with indications, Intermediate Cuff Pressure, stored
  records (BPS 1.1 Blood Pressure Record + Record Access Control Point, or, with ``racp=False``, the
  older behaviour of indicating every stored measurement when the collector subscribes), Current
  Time Service for its clock, bonding required; it advertises only for ``adv_window_s`` after a
  measurement or a press of its Bluetooth button (``always_advertise`` for demos);
- SOS pendant: a press counter in its manufacturer data, idle advertising and a burst after a press;
  the ``notify`` variant is a pendant that needs a connection and notifies the press.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import math
import random
import time
from dataclasses import dataclass
from typing import Any

from simulators.bluez import profiles
from simulators.bluez.core import Peripheral
from simulators.bluez.gattdb import AttError, Characteristic, Service
from simulators.bluez.physiology import WristMotion, make_source


def u16(short: int) -> str:
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


_VENDOR = "-3e85-4d92-9610-86a2c84b5daa"
RAW_PPG_SERVICE = "79310001" + _VENDOR
RAW_PPG_FRAME = "79310002" + _VENDOR
RAW_PPG_FEATURE = "79310003" + _VENDOR
SOS_SERVICE = "79310010" + _VENDOR
SOS_PRESS = "79310011" + _VENDOR
SOS_COMPANY_ID = 0xFFFF


def _device_information(maker: str, model: str) -> Service:
    return Service(
        u16(0x180A),
        [
            Characteristic(u16(0x2A29), ["read"], maker.encode()),
            Characteristic(u16(0x2A24), ["read"], model.encode()),
        ],
    )


class _Tasks:
    """Tasks a peripheral runs while connected."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []

    def start(self, coro: Any, name: str) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(coro, name=name))

    def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        self.tasks.clear()


# --------------------------------------------------------------------------------------------------
# Wrist monitor
# --------------------------------------------------------------------------------------------------


class WristMonitor(Peripheral):
    kind = "wrist"

    def __init__(
        self,
        address: str,
        name: str = "HC Wrist",
        *,
        ppg_rate_hz: float = 100.0,
        ppg_per_frame: int = 1,
        hr_bpm: float = 68.0,
        spo2_pct: float = 97.0,
        af: bool = False,
        battery: int = 87,
        seed: int = 1,
        accel: bool = False,
        **kw: Any,
    ) -> None:
        self.ppg_rate_hz = ppg_rate_hz
        # accelerometer and activity flag in the PPG frames (format 2), walking on command
        self.motion = WristMotion(ppg_rate_hz) if accel else None
        self.ppg_per_frame = ppg_per_frame
        self.battery = battery
        self.source = make_source(ppg_rate_hz, hr_bpm=hr_bpm, spo2_pct=spo2_pct, af=af, seed=seed)
        self.boot = time.monotonic()
        self.running = _Tasks()
        self.frames_sent = 0
        self.frames_unsent = 0  # a frame was due while subscribed but could not be delivered
        self.first_counter_sent: int | None = None
        self.last_counter_sent: int | None = None
        super().__init__(address, name, **kw)

    def build_gatt(self) -> list[Service]:
        self.hrm = Characteristic(u16(0x2A37), ["notify"])
        self.plx = Characteristic(u16(0x2A5F), ["notify"])
        self.batt = Characteristic(u16(0x2A19), ["read", "notify"], read=lambda: bytes([self.battery]))
        self.ppg = Characteristic(RAW_PPG_FRAME, ["notify"], acquirable=True)
        return [
            Service(u16(0x180D), [self.hrm, Characteristic(u16(0x2A38), ["read"], b"\x02")]),
            Service(u16(0x1822), [self.plx, Characteristic(u16(0x2A60), ["read"], profiles.plx_features())]),
            Service(u16(0x180F), [self.batt]),
            Service(
                RAW_PPG_SERVICE,
                [
                    self.ppg,
                    Characteristic(
                        RAW_PPG_FEATURE,
                        ["read"],
                        read=lambda: profiles.ppg_feature(
                            self.ppg_rate_hz, self.ppg_per_frame, self.motion is not None
                        ),
                    ),
                ],
            ),
            _device_information("Homecare Sim", "WRIST-1"),
        ]

    def service_uuids(self) -> list[str]:
        return [u16(0x180D), u16(0x1822)]

    def now(self) -> float:
        return time.monotonic() - self.boot

    def on_connected(self) -> None:
        self.running.start(self._hr_loop(), f"hr {self.address}")
        self.running.start(self._plx_loop(), f"plx {self.address}")
        self.running.start(self._ppg_loop(), f"ppg {self.address}")

    def on_disconnected(self) -> None:
        self.running.stop()

    async def _hr_loop(self) -> None:
        last = self.now()
        while True:
            await asyncio.sleep(1.0)
            t = self.now()
            beats = self.source.beats_between(last - 2.0, t)
            new = [b for b in beats if b >= last]
            rr = [b - a for a, b in itertools.pairwise(beats) if b >= last]
            last = t
            if new or rr:
                await self.notify(self.hrm, profiles.heart_rate_measurement(round(self.source.heart_rate(t)), rr))

    async def _plx_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            t = self.now()
            await self.notify(
                self.plx, profiles.plx_continuous(round(self.source.spo2(t)), round(self.source.heart_rate(t)))
            )

    async def _ppg_loop(self) -> None:
        fs, n = self.ppg_rate_hz, self.ppg_per_frame
        counter = math.ceil(self.now() * fs / n) * n
        while True:
            due = self.boot + (counter + n) / fs
            delay = due - time.monotonic()
            # behind (or asked for more than the bus carries): still yield, so the bus and signals are served
            await asyncio.sleep(max(0.0, delay))
            if self.ppg.subscribed:
                samples = self.source.samples(counter, n)
                if self.motion is None:
                    frame = profiles.ppg_frame(counter, fs, samples)
                else:
                    samples = self.motion.apply(counter, n, samples)
                    frame = profiles.ppg_frame(counter, fs, samples, self.motion.at_rest(counter / fs))
                if await self.notify(self.ppg, frame):
                    self.frames_sent += 1
                    if self.first_counter_sent is None:
                        self.first_counter_sent = counter
                    self.last_counter_sent = counter
                else:
                    self.frames_unsent += 1
            counter += n

    def status(self) -> dict[str, Any]:
        return {
            "ppg_rate_hz": self.ppg_rate_hz,
            "ppg_per_frame": self.ppg_per_frame,
            "frames_sent": self.frames_sent,
            "frames_unsent": self.frames_unsent,
            "first_counter_sent": self.first_counter_sent,
            "last_counter_sent": self.last_counter_sent,
            "battery": self.battery,
            "walking": self.motion.walking if self.motion is not None else None,
        }

    async def command(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if op == "set":
            if "battery" in args:
                self.battery = int(args["battery"])
                await self.notify(self.batt, bytes([self.battery]))
            if "ppg_rate_hz" in args or "ppg_per_frame" in args:
                if self.link is not None:
                    raise ValueError("change the PPG rate while the wrist monitor is not connected")
                self.ppg_rate_hz = float(args.get("ppg_rate_hz", self.ppg_rate_hz))
                self.ppg_per_frame = int(args.get("ppg_per_frame", self.ppg_per_frame))
                self.source.fs = self.ppg_rate_hz
                if self.motion is not None:
                    self.motion.fs = self.ppg_rate_hz
            if self.motion is None and ("walking" in args or "rest_settle_s" in args):
                raise ValueError("this wrist monitor has no accelerometer (start it with --wrist-accel)")
            if self.motion is not None:
                if "rest_settle_s" in args:
                    self.motion.rest_settle_s = float(args["rest_settle_s"])
                if "walking" in args:
                    self.motion.set_walking(bool(args["walking"]), self.now())
            for key, attr in (("hr_bpm", "hr_bpm"), ("spo2_pct", "spo2_pct"), ("af", "af")):
                if key in args and hasattr(self.source, attr):
                    setattr(self.source, attr, args[key])
            return {"ok": True}
        if op == "reset_counters":
            self.frames_sent = self.frames_unsent = 0
            self.first_counter_sent = self.last_counter_sent = None
            return {"ok": True}
        return await super().command(op, args)


# --------------------------------------------------------------------------------------------------
# Blood-pressure cuff
# --------------------------------------------------------------------------------------------------


@dataclass
class StoredRecord:
    seq: int
    taken: dt.datetime  # the cuff's clock (naive local time)
    systolic: int
    diastolic: int
    pulse: int
    user_id: int
    sent: int = 0  # how many times it went over the air as a record

    def measurement(self) -> bytes:
        mean = round(self.diastolic + (self.systolic - self.diastolic) / 3)
        return profiles.blood_pressure_measurement(
            self.systolic,
            self.diastolic,
            mean,
            timestamp=self.taken,
            pulse=self.pulse,
            user_id=self.user_id,
            status=0,
        )


class BpCuff(Peripheral):
    kind = "cuff"

    RACP_REPORT, RACP_DELETE, RACP_ABORT, RACP_COUNT = 0x01, 0x02, 0x03, 0x04

    def __init__(
        self,
        address: str,
        name: str = "HC Cuff",
        *,
        records: int = 0,
        racp: bool = True,
        clock_offset_s: float = 0.0,
        always_advertise: bool = False,
        adv_window_s: float = 60.0,
        user_id: int = 1,
        seed: int = 3,
        **kw: Any,
    ) -> None:
        self.racp_supported = racp
        self.clock_offset_s = clock_offset_s
        self.always_advertise = always_advertise
        self.adv_window_s = adv_window_s
        self.adv_until = 0.0
        self.user_id = user_id
        self.rng = random.Random(seed)
        self.records: list[StoredRecord] = []
        self.next_seq = 0
        self.battery = 64
        self.live_sent = 0
        self.clock_set_count = 0
        self._procedure: asyncio.Task[None] | None = None
        super().__init__(address, name, **kw)
        self.require_bond = True
        for i in range(records):
            self.store(minutes_ago=(records - i) * 60)

    def build_gatt(self) -> list[Service]:
        self.bpm = Characteristic(u16(0x2A35), ["indicate"], secure=True, on_subscribe=self._bpm_subscribed)
        self.icp = Characteristic(u16(0x2A36), ["notify"], secure=True)
        self.record_char = Characteristic(u16(0x2B36), ["indicate"], secure=True)
        self.racp = Characteristic(u16(0x2A52), ["write", "indicate"], secure=True, write=self._racp_write)
        self.cts = Characteristic(
            u16(0x2A2B), ["read", "write", "notify"], read=self._read_time, write=self._write_time
        )
        bps = [self.bpm, self.icp, Characteristic(u16(0x2A49), ["read"], profiles.blood_pressure_feature())]
        if self.racp_supported:
            bps += [self.record_char, self.racp]
        return [
            Service(u16(0x1810), bps),
            Service(u16(0x1805), [self.cts]),
            Service(u16(0x180F), [Characteristic(u16(0x2A19), ["read", "notify"], read=lambda: bytes([self.battery]))]),
            _device_information("Homecare Sim", "CUFF-1"),
        ]

    def service_uuids(self) -> list[str]:
        return [u16(0x1810)]

    def advertising(self) -> bool:
        return self.link is None and (self.always_advertise or time.monotonic() < self.adv_until)

    def clock(self) -> dt.datetime:
        return (dt.datetime.now() + dt.timedelta(seconds=self.clock_offset_s)).replace(microsecond=0)

    def _read_time(self) -> bytes:
        return profiles.current_time(self.clock())

    def _write_time(self, value: bytes) -> None:
        try:
            new = profiles.parse_current_time(value)
        except ValueError as exc:
            raise AttError(AttError.VALUE_NOT_ALLOWED, str(exc)) from None
        self.clock_offset_s = (new - dt.datetime.now()).total_seconds()
        self.clock_set_count += 1

    def store(
        self,
        *,
        minutes_ago: float = 0.0,
        systolic: int | None = None,
        diastolic: int | None = None,
        pulse: int | None = None,
    ) -> StoredRecord:
        sys_ = systolic if systolic is not None else self.rng.randint(112, 148)
        dia = diastolic if diastolic is not None else self.rng.randint(68, 92)
        rec = StoredRecord(
            seq=self.next_seq,
            taken=self.clock() - dt.timedelta(minutes=minutes_ago),
            systolic=sys_,
            diastolic=min(dia, sys_ - 10),
            pulse=pulse if pulse is not None else self.rng.randint(58, 88),
            user_id=self.user_id,
        )
        self.next_seq = (self.next_seq + 1) & 0xFFFF
        self.records.append(rec)
        return rec

    async def measure(self, **values: Any) -> StoredRecord:
        """The user takes a measurement: inflation (intermediate pressures), result, stored."""
        if self.link is not None and self.icp.subscribed:
            for pressure in (40, 90, 140, 170, 120):
                await self.notify(self.icp, profiles.intermediate_cuff_pressure(pressure))
                await asyncio.sleep(0.05)
        rec = self.store(**values)
        if self.link is not None and self.bpm.subscribed:
            if await self.notify(self.bpm, rec.measurement()):
                self.live_sent += 1
        else:
            self.adv_until = time.monotonic() + self.adv_window_s
            self.wake()
        return rec

    def _bpm_subscribed(self, on: bool) -> None:
        if on and not self.racp_supported:
            # Older cuffs: every stored measurement is indicated once the collector subscribes.
            asyncio.get_running_loop().create_task(self._send_all_legacy())

    async def _send_all_legacy(self) -> None:
        for rec in list(self.records):
            await asyncio.sleep(0.02)
            if not await self.notify(self.bpm, rec.measurement()):
                return
            rec.sent += 1

    def _select(self, operator: int, operand: bytes) -> list[StoredRecord]:
        if operator == 0x01:  # all
            return list(self.records)
        if operator in (0x05, 0x06):  # first / last
            if not self.records:
                return []
            return [self.records[0] if operator == 0x05 else self.records[-1]]
        if operator in (0x02, 0x03, 0x04):
            if not operand or operand[0] != 0x01:
                raise _RacpError(0x09)  # operand not supported (only sequence number filters)
            need = 3 if operator != 0x04 else 5
            if len(operand) != need:
                raise _RacpError(0x05)  # invalid operand
            a = int.from_bytes(operand[1:3], "little")
            if operator == 0x02:
                return [r for r in self.records if r.seq <= a]
            if operator == 0x03:
                return [r for r in self.records if r.seq >= a]
            b = int.from_bytes(operand[3:5], "little")
            return [r for r in self.records if a <= r.seq <= b]
        raise _RacpError(0x04)  # operator not supported

    async def _racp_write(self, value: bytes) -> None:
        if not self.racp.subscribed:
            raise AttError(AttError.CCCD_IMPROPERLY_CONFIGURED)
        if len(value) < 2:
            raise AttError(AttError.INVALID_ATTRIBUTE_LENGTH)
        op, operator, operand = value[0], value[1], value[2:]
        if op == self.RACP_ABORT:
            if self._procedure is not None:
                self._procedure.cancel()
                self._procedure = None
            self._respond_later(op, 0x01)
            return
        if self._procedure is not None and not self._procedure.done():
            raise AttError(AttError.PROCEDURE_IN_PROGRESS)
        self._procedure = asyncio.get_running_loop().create_task(self._racp_procedure(op, operator, operand))

    def _respond_later(self, op: int, code: int) -> None:
        asyncio.get_running_loop().create_task(self.notify(self.racp, profiles.racp_response(op, code)))

    async def _racp_procedure(self, op: int, operator: int, operand: bytes) -> None:
        await asyncio.sleep(0.01)  # the write response goes first
        try:
            selected = self._select(operator, operand)
        except _RacpError as exc:
            await self.notify(self.racp, profiles.racp_response(op, exc.code))
            return
        if op == self.RACP_COUNT:
            await self.notify(self.racp, profiles.racp_number_of_records(len(selected)))
            return
        if op == self.RACP_DELETE:
            keep = {id(r) for r in selected}
            self.records = [r for r in self.records if id(r) not in keep]
            await self.notify(self.racp, profiles.racp_response(op, 0x01))
            return
        if op != self.RACP_REPORT:
            await self.notify(self.racp, profiles.racp_response(op, 0x02))
            return
        if not selected:
            await self.notify(self.racp, profiles.racp_response(op, 0x06))
            return
        for i, rec in enumerate(selected):
            if self.faults.drop_after_records is not None and i == self.faults.drop_after_records:
                self.faults.drop_after_records = None
                if self.sim is not None:
                    await self.sim.drop_link(self.address)
                return
            await asyncio.sleep(0.01)
            if not await self.notify(self.record_char, profiles.blood_pressure_record(rec.seq, rec.measurement())):
                return
            rec.sent += 1
        await self.notify(self.racp, profiles.racp_response(op, 0x01))

    def on_disconnected(self) -> None:
        if self._procedure is not None:
            self._procedure.cancel()
            self._procedure = None

    def status(self) -> dict[str, Any]:
        return {
            "records": [
                {
                    "seq": r.seq,
                    "taken": r.taken.isoformat(),
                    "systolic": r.systolic,
                    "diastolic": r.diastolic,
                    "pulse": r.pulse,
                    "sent": r.sent,
                }
                for r in self.records
            ],
            "live_sent": self.live_sent,
            "clock_offset_s": round(self.clock_offset_s, 3),
            "clock_set_count": self.clock_set_count,
            "advertising": self.advertising(),
        }

    async def command(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if op == "measure":
            rec = await self.measure(**{k: int(args[k]) for k in ("systolic", "diastolic", "pulse") if k in args})
            return {"seq": rec.seq, "taken": rec.taken.isoformat()}
        if op == "add_records":
            recs = [self.store(minutes_ago=float(args.get("minutes_ago", 0))) for _ in range(int(args.get("count", 1)))]
            self.adv_until = time.monotonic() + self.adv_window_s
            self.wake()
            return {"seqs": [r.seq for r in recs]}
        if op == "wake":
            self.adv_until = time.monotonic() + float(args.get("seconds", self.adv_window_s))
            self.wake()
            return {"ok": True}
        if op == "set":
            if "clock_offset_s" in args:
                self.clock_offset_s = float(args["clock_offset_s"])
            if "pairable" in args:
                self.pairable = bool(args["pairable"])
            if "always_advertise" in args:
                self.always_advertise = bool(args["always_advertise"])
            return {"ok": True}
        return await super().command(op, args)


class _RacpError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# --------------------------------------------------------------------------------------------------
# SOS pendant
# --------------------------------------------------------------------------------------------------


class SosPendant(Peripheral):
    kind = "sos"

    def __init__(
        self,
        address: str,
        name: str = "HC SOS",
        *,
        notify: bool = False,
        battery: int = 95,
        idle_interval_s: float = 1.0,
        burst_interval_s: float = 0.03,
        burst_s: float = 3.0,
        alarm_s: float = 30.0,
        **kw: Any,
    ) -> None:
        self.notify_variant = notify
        self.battery = battery
        self.counter = 0
        self.pattern: str | None = None  # how the latest press was made: format 1.1 once set
        self.last_press = -math.inf
        self.idle_interval_s = idle_interval_s
        self.burst_interval_s = burst_interval_s
        self.burst_s = burst_s
        self.alarm_s = alarm_s
        self.presses: list[dict[str, Any]] = []
        super().__init__(address, name, adv_interval_s=idle_interval_s, **kw)
        self.kind = "sos-notify" if notify else "sos"
        self.connectable = notify

    def build_gatt(self) -> list[Service]:
        self.press_char = Characteristic(SOS_PRESS, ["read", "notify"], read=self._state)
        if not getattr(self, "notify_variant", False):
            return []
        return [
            Service(SOS_SERVICE, [self.press_char]),
            Service(u16(0x180F), [Characteristic(u16(0x2A19), ["read"], read=lambda: bytes([self.battery]))]),
            _device_information("Homecare Sim", "SOS-N1"),
        ]

    def _alarm(self) -> bool:
        return time.monotonic() - self.last_press < self.alarm_s

    def _state(self) -> bytes:
        return profiles.sos_state(self.counter, self._alarm(), self.battery, self.battery < 20, self.pattern)

    def advertising(self) -> bool:
        return self.link is None if self.notify_variant else True

    def adv_interval(self) -> float:
        if time.monotonic() - self.last_press < self.burst_s:
            return self.burst_interval_s
        return self.idle_interval_s

    def service_uuids(self) -> list[str]:
        return [SOS_SERVICE] if self.notify_variant else []

    def manufacturer_data(self) -> dict[int, bytes]:
        if self.notify_variant:
            return {}
        return {SOS_COMPANY_ID: self._state()}

    async def press(self, pattern: str | None = None) -> dict[str, Any]:
        """One press; ``pattern`` (``press``, ``double_press``, ``long_press`` ...) makes the pendant
        send format 1.1 (the latest press's pattern) from now on."""
        if pattern is not None and pattern not in profiles.BUTTON_EVENT_CODES:
            raise ValueError(f"pattern {pattern!r}: expected one of {', '.join(profiles.BUTTON_EVENT_CODES)}")
        self.counter = (self.counter + 1) & 0xFFFF
        if pattern is not None:
            self.pattern = pattern
        self.last_press = time.monotonic()
        info = {"counter": self.counter, "pattern": pattern, "pressed_at": time.time(), "pressed_mono": self.last_press}
        self.presses.append(info)
        self.wake()
        if self.notify_variant and self.link is not None:
            await self.notify(self.press_char, self._state())
        return info

    def status(self) -> dict[str, Any]:
        return {"counter": self.counter, "alarm": self._alarm(), "battery": self.battery}

    async def command(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if op == "press":
            pattern = args.get("pattern")
            return await self.press(None if pattern is None else str(pattern))
        if op == "battery_change":
            # A new battery: the counter starts again from 0.
            self.counter = 0
            self.last_press = -math.inf
            self.battery = 100
            return {"ok": True}
        if op == "set":
            if "battery" in args:
                self.battery = int(args["battery"])
            return {"ok": True}
        return await super().command(op, args)
