"""BLE blood-pressure cuff: the Blood Pressure Service (Omron, A&D and others), bonded.

On every connection the driver
1. pairs when not bonded yet (BPS characteristics need an encrypted link); a cuff that lost its keys
   (reset by the user) fails authentication: the old bond is removed and the next connection pairs
   again;
2. subscribes to Blood Pressure Measurement (indications: a live measurement, or on older cuffs every
   stored one), Intermediate Cuff Pressure (counted only) and, when the cuff has them, the BPS 1.1
   Blood Pressure Record and the Record Access Control Point;
3. sets the cuff's clock through Current Time (local time of ``timezone``) when the cuff lets it be
   written, so that the times of later records are right;
4. asks for the stored records it has not fetched yet (RACP "report records with sequence number >=
   next"), and waits for the RACP response.

Every record is emitted once: a ledger (``state_path``, kept in the gateway's data directory)
remembers each record by its cuff timestamp and sequence number, and each measurement by its
timestamp and values (a live indication and the same measurement later fetched as a stored record
are one reading). Readings keep the cuff's capture time, so a record measured hours ago reaches the
cloud as ``historical``; their ``source_id`` is the record's identity, so a re-send has the same
msg_id.

A measurement without a timestamp (the field is optional in the Blood Pressure Measurement, and has
no sequence number) has nothing but its values to be known by, and the same values come again on
another day: it is never written to the ledger. Only its second copy on the same connection is a
repeat: the live indication and the same measurement as a stored record (whose sequence number is
ledgered as usual) arriving within one record transfer (``racp_timeout_s``) of each other. Two
copies through the same characteristic are two measurements (a cuff uploading its memory), and a
cuff that repeats one on a later connection gives a second reading, timed at its arrival: a
duplicate is the safe side, a reading dropped as one is not.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from bleak import BleakClient

from drivers import codes, plausible
from drivers.base import DeviceSpec, DriverContext, Measurement, ReadingSink, device_zone
from drivers.ble import gatt
from drivers.ble.driver import BleDriver, BleOptions
from drivers.ble.stack import BLEAK_FAILURES, NotBonded, ProcedureFailed, classify
from drivers.options import DriverOptions, option, state_path_option, timezone_option
from drivers.serial.cms50 import FetchLedger

log = logging.getLogger(__name__)

LOINC_SYSTOLIC = codes.SYSTOLIC
LOINC_DIASTOLIC = codes.DIASTOLIC
LOINC_MEAN = codes.MEAN_ARTERIAL
LOINC_PULSE = codes.HEART_RATE
UNIT_PRESSURE = codes.MMHG
UNIT_PER_MIN = codes.PER_MIN


def cuff_time(m: gatt.BloodPressureMeasurement) -> dt.datetime | None:
    """The measurement's time on the cuff's clock; None when it has none (or not a whole date)."""
    return m.timestamp.as_datetime() if m.timestamp is not None else None


def measurement_key(m: gatt.BloodPressureMeasurement) -> str:
    """Identity of a measurement by its cuff timestamp and values (without a timestamp, by its
    values alone: not an identity across time, see the module's docstring)."""
    ts = cuff_time(m)
    when = ts.strftime("%Y%m%dT%H%M%S") if ts is not None else "no-time"
    return f"bps:{when}:{m.systolic}/{m.diastolic}/{m.pulse_rate}:{m.user_id}"


_UNSTAMPED_PREFIX = "bps:no-time:"
_RECORD_KEY = re.compile(r"rec:([0-9]{1,5}):.*")


def record_key(rec: gatt.BloodPressureRecord) -> str:
    """Identity of a stored record by its sequence number and cuff timestamp."""
    m = rec.measurement
    ts = m.timestamp.as_datetime() if m is not None and m.timestamp is not None else None
    when = ts.strftime("%Y%m%dT%H%M%S") if ts is not None else "no-time"
    return f"rec:{rec.sequence}:{when}"


def plausible_pressure(m: gatt.BloodPressureMeasurement) -> bool:
    """Systolic and diastolic (mmHg) inside the plausibility windows (drivers/plausible.py)."""
    systolic, diastolic = m.in_mmhg(m.systolic), m.in_mmhg(m.diastolic)
    return systolic is not None and diastolic is not None and plausible.blood_pressure_ok(systolic, diastolic)


def plausible_pulse(m: gatt.BloodPressureMeasurement) -> bool:
    """A pulse the cuff measured (0 is its "no value")."""
    return m.pulse_rate is not None and m.pulse_rate != 0 and plausible.pulse_ok(m.pulse_rate)


def bp_measurements(
    device_id: str,
    m: gatt.BloodPressureMeasurement,
    *,
    tz: dt.tzinfo,
    now: float,
    source_id: str,
    extra: Mapping[str, Any],
) -> list[Measurement]:
    """The observations of one cuff measurement, in mmHg, at the cuff's capture time (``now`` when
    it has no timestamp)."""
    ts = m.timestamp.as_datetime() if m.timestamp is not None else None
    at = ts.replace(tzinfo=tz).timestamp() if ts is not None else now
    facts: dict[str, Any] = dict(extra)
    if m.status:
        facts["status"] = sorted(m.status)
    if m.user_id is not None and m.user_id != 0xFF:
        facts["user_id"] = m.user_id
    out: list[Measurement] = []
    for code, value in (
        (LOINC_SYSTOLIC, m.in_mmhg(m.systolic)),
        (LOINC_DIASTOLIC, m.in_mmhg(m.diastolic)),
        (LOINC_MEAN, m.in_mmhg(m.mean_arterial_pressure)),
    ):
        if value is not None:
            out.append(Measurement(device_id, code, value, UNIT_PRESSURE, at, extra=facts, source_id=source_id))
    if m.pulse_rate is not None and plausible_pulse(m):
        out.append(
            Measurement(device_id, LOINC_PULSE, m.pulse_rate, UNIT_PER_MIN, at, extra=facts, source_id=source_id)
        )
    return out


@dataclass(frozen=True)  # no slots: frozen+slots subclasses break super() on 3.11
class BpCuffOptions(BleOptions):
    timezone: str = timezone_option()
    set_clock: bool = option(True, doc="write Current Time on connect (only from a synchronised clock)")
    state_path: str = state_path_option()
    racp_timeout_s: float = option(30.0, lo=1, hi=600, unit="seconds", doc="one record transfer")


class BpCuffDriver(BleDriver):
    """Options: the BLE keys, ``timezone`` (IANA name of the cuff's clock; default the gateway's),
    ``set_clock`` (write Current Time on connect, default true), ``state_path`` (ledger of records
    emitted; set by the gateway), ``racp_timeout_s`` (one record transfer, default 30)."""

    kind: ClassVar[str] = "ble-bp-cuff"
    priority: ClassVar[int] = 1
    pair: ClassVar[bool] = True
    Options: ClassVar[type[DriverOptions]] = BpCuffOptions
    summary: ClassVar[str] = "Bluetooth LE blood-pressure cuff (Blood Pressure service, stored records)"
    ble_services: ClassVar[tuple[str, ...]] = (gatt.BLOOD_PRESSURE_SERVICE.lower(),)
    silence_warn_s: ClassVar[float | None] = 3 * 24 * 3600.0
    loinc_codes: ClassVar[tuple[str, ...]] = (codes.SYSTOLIC, codes.DIASTOLIC, codes.MEAN_ARTERIAL, codes.HEART_RATE)

    def __init__(self, spec: DeviceSpec, sink: ReadingSink, ctx: DriverContext) -> None:
        super().__init__(spec, sink, ctx)
        opts = spec.options
        assert isinstance(opts, BpCuffOptions)
        self.set_clock = opts.set_clock
        self.racp_timeout_s = opts.racp_timeout_s
        self.ledger = FetchLedger(self.state_path(opts.state_path), max_entries=4096, owner=self.device_id)
        self.ledger.load()
        # Earlier versions ledgered timestamp-less measurements by value: such an entry would drop
        # every later reading with the same values.
        for key in [k for k in self.ledger.done if k.startswith(_UNSTAMPED_PREFIX)]:
            del self.ledger.done[key]
        self.tz: dt.tzinfo = device_zone(opts.timezone)
        self.records_emitted = 0
        self.measurements_emitted = 0
        self._racp: asyncio.Queue[gatt.RacpResponse] = asyncio.Queue()
        self._unpair_next = False
        # Timestamp-less measurements of this connection not yet paired with their other copy:
        # key -> [(path "live" or "record", monotonic arrival)].
        self._unpaired: dict[str, list[tuple[str, float]]] = {}

    def counters(self) -> Mapping[str, int]:
        merged = dict(super().counters())
        merged["records_emitted"] = self.records_emitted
        merged["measurements_emitted"] = self.measurements_emitted
        return merged

    async def _session(self) -> None:
        if self._unpair_next:
            await self._forget_bond()
        try:
            await super()._session()
        except NotBonded:
            # The cuff no longer knows our keys (or refused them): pair again from scratch next time.
            self._unpair_next = True
            raise

    async def _forget_bond(self) -> None:
        sighting = await self.find()
        client = BleakClient(sighting.device)
        try:
            async with asyncio.timeout(10.0):
                await client.unpair()
            log.info("device %s: removed the old bond, pairing again", self.device_id)
            self.count("bonds_removed")
        except BLEAK_FAILURES as exc:
            log.debug("device %s: remove bond: %s", self.device_id, classify(exc, "unpair"))
        self._unpair_next = False

    async def setup(self, client: BleakClient) -> None:
        self._racp = asyncio.Queue()
        self._unpaired = {}  # a new connection: nothing of the last one is a copy of what comes now
        await self.subscribe(client, gatt.BLOOD_PRESSURE_MEASUREMENT, self.on_measurement)
        await self.subscribe(client, gatt.INTERMEDIATE_CUFF_PRESSURE, lambda _data: self.count("cuff_pressures"))
        await self.read_battery(client)
        if self.set_clock:
            await self._set_clock(client)
        has_records = await self.subscribe(client, gatt.BLOOD_PRESSURE_RECORD, self.on_record)
        has_racp = has_records and await self.subscribe(client, gatt.RECORD_ACCESS_CONTROL_POINT, self.on_racp)
        if has_racp:
            await self.fetch(client)

    async def _set_clock(self, client: BleakClient) -> None:
        char = client.services.get_characteristic(gatt.CURRENT_TIME)
        if char is None or not {"write", "write-without-response"} & set(char.properties):
            return
        if not self.ctx.clock_synchronised():
            # The gateway's own clock may be a guess (a Pi after a power cut): never pass it on.
            self.count("clock_set_skipped")
            log.debug("device %s: clock not set: the gateway's clock is not synchronised", self.device_id)
            return
        value = gatt.encode_current_time(dt.datetime.now(self.tz).replace(tzinfo=None))
        try:
            await client.write_gatt_char(char, value, response="write" in char.properties)
        except BLEAK_FAILURES as exc:
            self.count("clock_set_failures")
            log.debug("device %s: set clock: %s", self.device_id, classify(exc, "write current time"))
            return
        self.count("clock_sets")

    def _next_sequence(self) -> int | None:
        # A regex, not int() of a split: a damaged or hand-edited ledger entry must not fail every
        # connection with a ValueError.
        seqs = [int(m.group(1)) for k in self.ledger.done if (m := _RECORD_KEY.fullmatch(k))]
        return max(seqs) + 1 if seqs else None

    async def fetch(self, client: BleakClient) -> None:
        """Ask for the records not fetched yet and wait until the cuff says it sent them all."""
        first = self._next_sequence()
        request = (
            gatt.racp_request(gatt.RacpOp.REPORT_STORED_RECORDS, gatt.RacpOperator.ALL_RECORDS)
            if first is None or first > 0xFFFF
            else gatt.racp_report_from_sequence(first)
        )
        before = self.records_emitted
        await client.write_gatt_char(gatt.RECORD_ACCESS_CONTROL_POINT, request, response=True)
        try:
            async with asyncio.timeout(self.racp_timeout_s):
                while True:
                    reply = await self._racp.get()
                    if (
                        isinstance(reply, gatt.RacpResponseCode)
                        and reply.request_op == gatt.RacpOp.REPORT_STORED_RECORDS
                    ):
                        break
        except TimeoutError:
            raise ProcedureFailed(f"{self.address}: no RACP response in {self.racp_timeout_s:.0f} s") from None
        finally:
            self.ledger.save()
        if reply.status not in ("success", "no_records_found"):
            self.count("racp_errors")
            log.warning("device %s: record transfer refused: %s", self.device_id, reply.status)
        new = self.records_emitted - before
        if new:
            log.info("device %s: %d stored blood-pressure records fetched", self.device_id, new)

    # -- notifications ----------------------------------------------------------------------------

    def on_racp(self, data: bytes) -> None:
        try:
            self._racp.put_nowait(gatt.decode_racp_response(data))
        except gatt.GattDecodeError as exc:
            self.bad_value(exc)

    def on_record(self, data: bytes) -> None:
        try:
            rec = gatt.decode_blood_pressure_record(data)
        except gatt.GattDecodeError as exc:
            self.bad_value(exc)
            return
        if rec.measurement is None:
            self.count("unsupported_records")  # segmented or another record type
            return
        rkey, mkey = record_key(rec), measurement_key(rec.measurement)
        stamped = cuff_time(rec.measurement) is not None
        if self.ledger.emitted(rkey) or (
            self.ledger.emitted(mkey) if stamped else self._copy_on_this_connection(mkey, "record")
        ):
            self.count("duplicate_records")
            self.ledger.mark(rkey, 1, save=False)
            return
        self._emit(rec.measurement, mkey, {"stored": True, "sequence": rec.sequence})
        self.ledger.mark(rkey, 1, save=False)
        self.records_emitted += 1

    def on_measurement(self, data: bytes) -> None:
        try:
            m = gatt.decode_blood_pressure_measurement(data)
        except gatt.GattDecodeError as exc:
            self.bad_value(exc)
            return
        key = measurement_key(m)
        stamped = cuff_time(m) is not None
        if self.ledger.emitted(key) if stamped else self._copy_on_this_connection(key, "live"):
            self.count("duplicate_measurements")
            return
        self._emit(m, key, {})
        if stamped:
            self.ledger.save()

    def _copy_on_this_connection(self, key: str, path: str) -> bool:
        """Whether a timestamp-less measurement arriving through ``path`` is the other copy of one
        that came through the other path on this connection, within one record transfer. Each copy
        pairs with one other at most: two stored records with the same values stay two readings even
        when a live indication had them too."""
        now = time.monotonic()
        waiting = [(p, t) for p, t in self._unpaired.get(key, []) if now - t <= self.racp_timeout_s]
        for i, (p, _t) in enumerate(waiting):
            if p != path:
                del waiting[i]
                self._unpaired[key] = waiting
                return True
        self._unpaired[key] = [*waiting, (path, now)]
        return False

    def _emit(self, m: gatt.BloodPressureMeasurement, key: str, extra: Mapping[str, Any]) -> None:
        if not plausible_pressure(m):
            # A pair no cuff measures (0/0 mmHg, diastolic above systolic: drivers/plausible.py): counted,
            # and marked below like any measurement handled, so a stored copy is not emitted either.
            self.count("out_of_range")
        else:
            if m.pulse_rate not in (None, 0) and not plausible_pulse(m):
                self.count("out_of_range")  # the pressures go, the pulse does not
            for reading in bp_measurements(self.device_id, m, tz=self.tz, now=self.clock(), source_id=key, extra=extra):
                self.sink(reading)
        if cuff_time(m) is not None:  # a key by value alone must not hold back another day's reading
            self.ledger.mark(key, 1, save=False)
        self.measurements_emitted += 1
