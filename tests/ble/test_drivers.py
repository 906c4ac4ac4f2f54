"""BLE drivers through real bleak, real dbus-fast and a real dbus-daemon with the virtual BlueZ:
discovery, the wrist monitor's 100 Hz raw PPG stream, every injected fault followed by recovery,
pairing and stored cuff records fetched exactly once, SOS presses."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from drivers.base import BeatIntervals, ButtonPress, LinkState, Measurement, Waveform
from drivers.ble import gatt
from drivers.ble.cuff import BpCuffDriver
from drivers.ble.manager import BleStack
from drivers.ble.stack import ConnectionBudget, ScanHub, Sighting
from drivers.ble.wrist import WristMonitorDriver
from simulators.bluez.peripherals import BpCuff, SosPendant, WristMonitor
from tests.ble.util import Readings, make_driver, running, virtual_bluez
from tests.helpers import until

WRIST = "C0:FF:EE:00:00:01"
CUFF = "C0:FF:EE:00:00:02"
SOS = "C0:FF:EE:00:00:03"
SOS_N = "C0:FF:EE:00:00:04"


def test_discovery_reports_every_device_with_its_advertisement() -> None:
    async def go() -> dict[str, Sighting]:
        seen: dict[str, Sighting] = {}
        peripherals = [WristMonitor(WRIST), BpCuff(CUFF, always_advertise=True), SosPendant(SOS)]
        async with virtual_bluez(peripherals), BleStack() as ble:
            hub = ble.hub("")
            async with hub.watch("*", lambda s: seen.__setitem__(s.device.address, s)):
                await until(lambda: len(seen) == 3, 10, "three devices")
                assert hub.scanning and hub.stats.scanner_starts == 1
        return seen

    seen = asyncio.run(go())
    assert seen[WRIST].adv.local_name == "HC Wrist"
    assert gatt.HEART_RATE_SERVICE in seen[WRIST].adv.service_uuids
    assert gatt.BLOOD_PRESSURE_SERVICE in seen[CUFF].adv.service_uuids
    state = gatt.decode_sos_state(seen[SOS].adv.manufacturer_data[gatt.SOS_COMPANY_ID])
    assert (state.press_counter, state.alarm_active, state.battery_percent) == (0, False, 95)
    assert all(-80 < s.adv.rssi < -50 for s in seen.values())


def test_the_scanner_stops_when_its_stop_meets_a_restart_in_the_same_step() -> None:
    """A restart of discovery (the adapter's PropertiesChanged sets it) and the last user's exit in the
    same loop step. With asyncio.wait_for, Python 3.11 lost the exit's cancellation (cpython#86296): the
    scanner restarted discovery and ran on, and the exit, like the daemon's stop, waited for ever. A
    peripheral's advertising loop in the virtual BlueZ had the same race with its stop."""

    async def go() -> tuple[int, bool]:
        pendant = SosPendant(SOS)
        async with virtual_bluez([pendant]) as sim, BleStack() as ble:
            hub = ble.hub("")
            async with asyncio.timeout(20):  # the old code never got past the watch's exit
                async with hub.watch("*"):
                    await until(lambda: hub.scanning and hub.last(SOS) is not None, 10, "scanning")
                    hub._restart.set()  # what _adapter_changed does
                    await asyncio.sleep(0)  # the scanner's wait completes in this step...
                # ...and the exit cancels it in the same one
                starts = hub.stats.scanner_starts
                await asyncio.sleep(1.0)  # a scanner that carried on would start again within its backoff
                pendant.wake()
                await asyncio.sleep(0)
                await sim.stop()  # the advertising loop: the same race, on the simulator's side
                return hub.stats.scanner_starts - starts, hub.scanning

    restarted, scanning = asyncio.run(go())
    assert restarted == 0 and not scanning


def test_wrist_monitor_streams_100hz_ppg_without_loss_or_reordering() -> None:
    wrist = WristMonitor(WRIST, ppg_rate_hz=100.0, ppg_per_frame=1)
    readings = Readings()
    drv = make_driver("ble-wrist", "wrist-1", WRIST, readings, report_every_s=2.0)
    assert isinstance(drv, WristMonitorDriver)
    duration = 20.0

    async def go() -> float:
        async with virtual_bluez([wrist]) as sim:
            async with running(drv):
                await until(lambda: wrist.frames_sent > 0, 15, "the PPG stream")
                t0, n0 = time.monotonic(), wrist.frames_sent
                await asyncio.sleep(duration)
                rate = (wrist.frames_sent - n0) / (time.monotonic() - t0)
            assert sim.status()["devices"][0]["counters"]["connects"] == 1
        return rate

    rate = asyncio.run(go())
    print(f"\nwrist PPG: {rate:.1f} notifications/s over {duration:.0f} s, {wrist.frames_sent} frames")
    blocks: list[Waveform] = readings.of(Waveform, "wrist-1")
    samples = sum(len(w.channels["ir"]) for w in blocks)
    # Every notification from the first sent to the last received is in a Waveform, once, in order;
    # only those still on the bus when the driver was cancelled may be missing at the end.
    assert blocks[0].first_index == wrist.first_counter_sent
    assert samples == blocks[-1].first_index + len(blocks[-1].channels["ir"]) - blocks[0].first_index
    assert 0 <= wrist.frames_sent - samples <= 3, (wrist.frames_sent, samples)
    for a, b in itertools.pairwise(blocks):
        assert b.first_index == a.first_index + len(a.channels["ir"]), "contiguous, in order"
    assert drv.ppg.stats.gap_samples == 0 and drv.ppg.stats.stale_frames == 0
    # The values are the sensor's, sample for sample (checked on a few blocks).
    for w in blocks[:: max(1, len(blocks) // 5)]:
        expect = wrist.source.samples(w.first_index, len(w.channels["ir"]))
        assert {k: list(map(int, v)) for k, v in w.channels.items()} == expect
    assert all(w.fs == 100.0 for w in blocks)
    assert rate > 90.0
    hr = [m for m in readings.of(Measurement, "wrist-1") if m.code == "8867-4"]
    spo2 = [m for m in readings.of(Measurement, "wrist-1") if m.code == "59408-5"]
    assert len(hr) >= 5 and all(55 <= m.value <= 85 and m.method == "device" for m in hr)
    assert len(spo2) >= 5 and all(95 <= m.value <= 99 for m in spo2)
    rr = [x for b in readings.of(BeatIntervals, "wrist-1") for x in b.rr_s]
    assert len(rr) >= 15 and all(0.6 < x < 1.2 for x in rr)
    status = readings.states("wrist-1")
    assert status[0].state is LinkState.CONNECTED and status[0].battery_percent == 87
    assert status[0].rssi_dbm is not None


FAULTS = ["link_drop", "abort", "inprogress", "slow_discovery", "out_of_range", "power_off", "restart", "crash"]


@pytest.mark.parametrize("fault", FAULTS)
def test_wrist_monitor_recovers_from_fault(fault: str) -> None:
    wrist = WristMonitor(WRIST)
    readings = Readings()
    drv = make_driver("ble-wrist", "wrist-1", WRIST, readings)

    async def go() -> tuple[float, float]:
        async with virtual_bluez([wrist], supervision_timeout_s=0.5) as sim:
            async with running(drv):
                await until(lambda: readings.connected_at("wrist-1"), 20, "first connection")
                await until(lambda: wrist.frames_sent > 50, 10, "PPG flowing")
                p = sim.peripheral(WRIST)
                t_fault = time.monotonic()
                reachable = t_fault
                if fault == "link_drop":
                    await sim.drop_link(WRIST)
                elif fault in ("abort", "inprogress"):
                    p.faults.connect += [fault] * 2
                    await sim.drop_link(WRIST)
                elif fault == "slow_discovery":
                    p.faults.discovery_delay_s.append(4.0)
                    await sim.drop_link(WRIST)
                elif fault == "out_of_range":
                    await sim.out_of_range(WRIST)
                    await asyncio.sleep(3.0)
                    reachable = time.monotonic()
                    sim.in_range(WRIST)
                elif fault == "power_off":
                    a = sim.adapter("hci0")
                    sim.set_powered(a, False)
                    await asyncio.sleep(2.0)
                    reachable = time.monotonic()
                    sim.set_powered(a, True)
                elif fault in ("restart", "crash"):
                    await sim.restart(down_s=1.0, graceful=fault == "restart")
                    reachable = time.monotonic()
                frames_before = len(readings.of(Waveform, "wrist-1"))
                back = await until(lambda: readings.connected_at("wrist-1", after=t_fault), 40, "reconnection")
                await until(lambda: len(readings.of(Waveform, "wrist-1")) > frames_before + 2, 10, "PPG again")
                counters = dict(p.counters)
                if fault == "power_off":
                    # the adapter coming back restarts discovery itself: the watchdog is not what found it
                    assert drv.hub is not None
                    assert drv.hub.stats.adapter_restarts >= 1 and drv.hub.stats.watchdog_restarts == 0
        print(f"\nfault {fault}: reconnected {back - reachable:.2f} s after the device was reachable, {counters}")
        return back - reachable, back - t_fault

    recovered_s, _ = asyncio.run(go())
    assert recovered_s < 30.0
    states = [s.state for s in readings.states("wrist-1")]
    assert LinkState.DISCONNECTED in states and states[-1] is LinkState.DISCONNECTED  # stopped at the end
    assert drv.reconnector.connects >= 2
    if fault in ("abort", "inprogress"):
        key = "connect_aborted" if fault == "abort" else "connect_inprogress"
        assert wrist.counters.get(key) == 2


def test_cuff_pairs_sets_its_clock_from_a_synchronised_one_and_fetches_stored_records_exactly_once(
    tmp_path: Path,
) -> None:
    cuff = BpCuff(CUFF, records=3, always_advertise=True, clock_offset_s=-3600.0)
    readings = Readings()
    state = tmp_path / "cuff.json"

    def driver(synchronised: bool = True) -> BpCuffDriver:
        d = make_driver(
            "ble-bp-cuff", "cuff-1", CUFF, readings, synchronised=synchronised, state_path=str(state), timezone="UTC"
        )
        assert isinstance(d, BpCuffDriver)
        return d

    def records_seen() -> collections.Counter[str]:
        return collections.Counter(
            m.source_id for m in readings.of(Measurement, "cuff-1") if m.code == "8480-6" and m.source_id
        )

    async def go() -> dict[str, Any]:
        async with virtual_bluez([cuff], supervision_timeout_s=0.5) as sim:
            drv = driver()
            async with running(drv):
                await until(lambda: drv.records_emitted == 3, 20, "the stored records")
                await until(lambda: readings.connected_at("cuff-1"), 5, "connected")
                status = sim.status()["devices"][0]
                assert status["paired_on"] == ["hci0"] and status["bonds"] == ["00:1A:7D:DA:71:00"]
                assert cuff.clock_set_count == 1 and abs(cuff.clock_offset_s) < 5

                # Outage: the cuff is taken away, two measurements are stored on it meanwhile.
                await sim.out_of_range(CUFF)
                await until(lambda: cuff.link is None, 5, "link down")
                for _ in range(2):
                    cuff.store()
                t_back = time.monotonic()
                sim.in_range(CUFF)
                await until(lambda: drv.records_emitted == 5, 30, "the records stored during the outage")
                print(f"\ncuff: records fetched {time.monotonic() - t_back:.2f} s after it was back")

                # A live measurement while connected: emitted once, and not again as a stored record.
                await cuff.measure(systolic=151, diastolic=97, pulse=88)
                await until(lambda: drv.measurements_emitted == 6, 10, "the live measurement")

                # The link drops in the middle of a transfer: the rest comes on the next connection.
                for _ in range(4):
                    cuff.store()
                cuff.faults.drop_after_records = 2
                await sim.drop_link(CUFF)
                await until(lambda: drv.records_emitted == 9, 30, "the records after a cut transfer")

                # The cuff forgets its bond (reset by the user): the gateway pairs again.
                cuff.bonds.clear()
                await sim.drop_link(CUFF)
                await until(lambda: cuff.counters.get("pairings", 0) == 2, 40, "pairing again")
                await until(lambda: cuff.link is not None and drv.client is not None, 20, "connected again")
            # A restarted gateway (same ledger) fetches nothing twice; its clock is not synchronised
            # (a Pi after a power cut): the cuff's clock is left alone.
            sets_before = cuff.clock_set_count
            again = driver(synchronised=False)
            async with running(again):
                await until(lambda: again.reconnector.connects == 1 and again.client is not None, 30, "reconnected")
                await asyncio.sleep(0.5)
            assert cuff.clock_set_count == sets_before and again.counters()["clock_set_skipped"] == 1
            return {"again": again.records_emitted, "sent": [r.sent for r in cuff.records], "counters": cuff.counters}

    result = asyncio.run(go())
    print(f"cuff counters {result['counters']}, times each record went over the air {result['sent']}")
    seen = records_seen()
    assert len(seen) == 10 and set(seen.values()) == {1}, "each of the 10 measurements emitted exactly once"
    assert result["again"] == 0
    # Readings keep the cuff's capture time: the first stored record was taken ~3 h ago.
    stored = sorted((m for m in readings.of(Measurement, "cuff-1") if m.code == "8480-6"), key=lambda m: m.captured_at)
    assert time.time() - stored[0].captured_at > 2.5 * 3600
    assert stored[0].extra["stored"] is True and "sequence" in stored[0].extra
    live = [m for m in stored if m.value == 151.0]
    assert len(live) == 1 and abs(live[0].captured_at - time.time()) < 120  # the clock was set first
    codes = {m.code for m in readings.of(Measurement, "cuff-1")}
    assert codes == {"8480-6", "8462-4", "8478-0", "8867-4"}


def test_sos_pendant_presses_repeats_missed_adverts_and_battery_change(tmp_path: Path) -> None:
    pendant = SosPendant(SOS)
    readings = Readings()
    drv = make_driver("ble-sos", "sos-1", SOS, readings, state_path=str(tmp_path / "sos.json"))

    async def go() -> list[float]:
        latencies = []
        async with virtual_bluez([pendant]) as sim:
            async with running(drv):
                await until(lambda: readings.connected_at("sos-1"), 10, "the pendant heard")
                for i in range(3):
                    info = await pendant.press()
                    await until(lambda i=i: len(readings.of(ButtonPress)) == i + 1, 5, f"press {i}")
                    latencies.append(readings.items[-1][0] - info["pressed_mono"])
                    await asyncio.sleep(0.4)  # the burst of repeated adverts
                await asyncio.sleep(1.0)
                assert len(readings.of(ButtonPress)) == 3, "repeated advertisements are the same press"
                # Three presses while out of earshot: one alert saying three.
                await sim.out_of_range(SOS)
                for _ in range(3):
                    await pendant.press()
                sim.in_range(SOS)
                await until(lambda: len(readings.of(ButtonPress)) == 4, 5, "the missed presses")
                # New battery: the counter starts again; the next press is a new series.
                await pendant.command("battery_change", {})
                await asyncio.sleep(1.5)
                await pendant.press()
                await until(lambda: len(readings.of(ButtonPress)) == 5, 5, "press after the battery change")
        return latencies

    latencies = asyncio.run(go())
    print(f"\nSOS advert -> driver: {[round(x * 1000, 1) for x in latencies]} ms")
    presses: list[ButtonPress] = readings.of(ButtonPress)
    assert [p.extra["presses"] for p in presses] == [1, 1, 1, 3, 1]
    assert len({p.press_id for p in presses}) == 5
    assert presses[3].press_id.endswith("-6") and presses[4].press_id.endswith("-1")
    assert presses[4].press_id.split("-")[0] != presses[0].press_id.split("-")[0]
    assert drv.counters()["repeats"] > 0


def test_sos_pendant_with_a_connection_notifies_and_catches_up_after_a_drop(tmp_path: Path) -> None:
    pendant = SosPendant(SOS_N, "HC SOS-N", notify=True)
    readings = Readings()
    drv = make_driver("ble-sos-notify", "sos-n", SOS_N, readings, state_path=str(tmp_path / "sos.json"))

    async def go() -> None:
        async with virtual_bluez([pendant]) as sim:
            async with running(drv):
                await until(lambda: readings.connected_at("sos-n"), 15, "connected")
                await pendant.press()
                await until(lambda: len(readings.of(ButtonPress)) == 1, 5, "notified press")
                await sim.out_of_range(SOS_N)
                await until(lambda: pendant.link is None, 5, "link down")
                await pendant.press()  # pressed while the link is down
                sim.in_range(SOS_N)
                await until(lambda: len(readings.of(ButtonPress)) == 2, 30, "the press read on reconnect")

    asyncio.run(go())
    presses: list[ButtonPress] = readings.of(ButtonPress)
    assert [p.extra["via"] for p in presses] == ["notification", "reconnect"]
    assert presses[0].press_id != presses[1].press_id


def test_scanner_watchdog_restarts_discovery_when_nothing_is_heard() -> None:
    async def go() -> tuple[int, int]:
        async with virtual_bluez([SosPendant(SOS)]) as sim:
            hub = ScanHub(watchdog_s=1.0)
            heard: list[float] = []
            async with hub.watch(SOS, lambda s: heard.append(s.at)):
                await until(lambda: heard, 10, "an advertisement")
                await sim.out_of_range(SOS)
                await until(lambda: hub.stats.watchdog_restarts >= 1, 10, "a watchdog restart")
                sim.in_range(SOS)
                n = len(heard)
                await until(lambda: len(heard) > n, 10, "advertisements after the restart")
                return hub.stats.watchdog_restarts, hub.stats.scanner_starts

    restarts, starts = asyncio.run(go())
    assert restarts >= 1 and starts >= 2


def test_connection_budget_serves_waiters_by_priority() -> None:
    async def go() -> list[str]:
        budget = ConnectionBudget("hci9", 1)
        order: list[str] = []

        async def user(name: str, priority: int, hold: float) -> None:
            async with budget.slot(name, priority):
                order.append(name)
                await asyncio.sleep(hold)

        first = asyncio.create_task(user("wrist", 2, 0.2))
        await asyncio.sleep(0.05)
        later = [asyncio.create_task(user(n, p, 0.01)) for n, p in (("wrist-2", 2), ("cuff", 1), ("sos", 0))]
        await asyncio.sleep(0.01)
        assert budget.in_use == 1 and budget.waiting() == 3
        await asyncio.gather(first, *later)
        return order

    assert asyncio.run(go()) == ["wrist", "sos", "cuff", "wrist-2"]


def test_cuff_record_identity_is_its_timestamp_and_sequence() -> None:
    from drivers.ble.cuff import measurement_key, record_key

    t = dt.datetime(2026, 3, 1, 7, 15, 0)
    payload = bytes.fromhex("1e")[:0]
    meas = gatt.decode_blood_pressure_measurement(
        bytes([0x0A])
        + (120).to_bytes(2, "little")
        + (80).to_bytes(2, "little")
        + (93).to_bytes(2, "little")
        + gatt.DateTime.from_datetime(t).encode()
        + bytes([1])
    )
    rec = gatt.BloodPressureRecord(7, gatt.BLOOD_PRESSURE_MEASUREMENT, True, True, 0, payload, meas)
    assert record_key(rec) == "rec:7:20260301T071500"
    assert measurement_key(meas) == "bps:20260301T071500:120.0/80.0/None:1"
