"""The real gatewayd on a wall clock the test moves while it runs (libfaketime), issue 13.

libfaketime (LD_PRELOAD) fakes the daemon's wall clock from a file it re-reads at every call
(``FAKETIME_TIMESTAMP_FILE`` with ``FAKETIME_NO_CACHE=1``); the monotonic and boot clocks stay real
(``FAKETIME_DONT_FAKE_MONOTONIC=1``), as on a Raspberry Pi whose wall clock steps. The kernel's
synchronised verdict says nothing about a faked clock, so the daemon reads it from a file the test
writes (``GATEWAY_CLOCK_SYNC_FILE``, gateway/clock.py). Mosquitto, the simulators and the test's own
"cloud" run on the true clock.
"""

from __future__ import annotations

import asyncio
import glob
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from gateway.clock import SYNC_FILE_ENV
from gateway.config import load_config
from gateway.ctl import call as ctl_call
from gateway.messages import parse_rfc3339
from simulators.broker import Mosquitto
from simulators.cms50_sim import Cms50Simulator
from simulators.rfxtrx_sim import RfxtrxSimulator
from simulators.viewer import Completeness
from tests import test_care
from tests.helpers import (
    Cloud,
    Collector,
    GatewayProcess,
    daemon_log_on_failure,
    gateway_config,
    rfxtrx_device,
    status_via_ctl,
    until,
)

# The synchronised build (libfaketimeMT, same Debian package): the daemon reads the clock from several
# threads, and the plain build parses the re-read timestamp file in a static buffer another thread may
# overwrite meanwhile, so a thread now and then got the real time (libfaketime issue #151, PR #547).
LIBFAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
SPO2 = "59408-5"


class FakedClock:
    """The daemon's wall clock: the true time plus ``offset`` seconds, and the synchronised verdict."""

    def __init__(self, directory: Path, offset: float, synced: bool) -> None:
        assert LIBFAKETIME, "libfaketime is missing: ./dev.sh bootstrap installs it (apt package libfaketime)"
        self.offset_file = directory / "faketime"
        self.sync_file = directory / "clock-sync"
        self.set(offset, synced)

    def set(self, offset: float, synced: bool) -> None:
        self.offset_file.write_text(f"{offset:+.0f}\n")
        self.sync_file.write_text("synced\n" if synced else "unsynced\n")

    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": LIBFAKETIME[0],
            "FAKETIME_TIMESTAMP_FILE": str(self.offset_file),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            # OpenBLAS's thread pool, started by numpy's import in the daemon's loader thread, brings
            # condition variables that libfaketime 0.9.10 tracks in a table of its own (its wrappers of
            # pthread_cond_init/timedwait, libfaketime issues #245 and #419): under it, gatewayd now and
            # then crashed at start-up (SIGSEGV in an idle thread while numpy loaded) or stalled after
            # "running". The pool does nothing for the daemon's 28 x 28 solves; one thread means no pool.
            "OPENBLAS_NUM_THREADS": "1",
            SYNC_FILE_ENV: str(self.sync_file),
        }


# The care tests' oximeter and rules, with a short hold and watch limits far beyond the test's length
# (a step forwards by days would cross them if it counted).
RULES = test_care.RULES.replace("hold_s = 4", "hold_s = 3").replace(
    "tick_s = 0.1",
    "tick_s = 0.2\nno_data_day_s = 600\nuplink_down_s = 600\n"
    'reminder_min_severity = "medium"\nreminder_interval_s = 600',
)


def t(doc: dict[str, Any], key: str = "captured_at") -> float:
    return parse_rfc3339(doc[key])


def test_a_step_to_the_truth_corrects_waiting_messages_and_sends_a_time_correction_for_the_others(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    oxi, rfx = tmp_path / "oxi", tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_CLK-if00-port0"
    cfg = gateway_config(tmp_path, broker.port, devices=test_care.oximeter(oxi) + rfxtrx_device(rfx))
    clock = FakedClock(tmp_path, -7200, synced=False)
    gw = GatewayProcess(cfg, env=clock.env())
    presses: dict[str, float] = {}

    async def go() -> None:
        async with Cms50Simulator(oxi, spo2=97, seed=3), RfxtrxSimulator(rfx) as radio:
            gw.start()
            try:
                await gw.running()
                await until(lambda: len(cloud.of_type("observation")) >= 4, 30, "readings while reachable")
                presses["online"] = time.time()
                await radio.press(0xA1B2C3, repeats=2, gap_s=0.03)
                await until(lambda: cloud.of_type("alert"), 20, "the first SOS")
                broker.stop()
                await asyncio.sleep(2.5)
                presses["offline"] = time.time()
                await radio.press(0xA1B2C3, repeats=2, gap_s=0.03)
                await asyncio.sleep(2.0)
                presses["step"] = time.time()
                clock.set(0, synced=True)  # the time server answers: the clock steps to the truth
                await asyncio.sleep(2.5)
                broker.start()
                await until(lambda: cloud.of_type("time_correction"), 30, "the time-correction")
                await until(lambda: len(cloud.of_type("alert")) >= 2, 30, "the second SOS")
                await asyncio.sleep(1.5)
                st = status_via_ctl(cfg)
                assert st is not None and st["clock"]["synchronised"] and st["clock"]["corrections"] >= 1
                # the status's times and durations on today's clock: not two hours longer, or older
                assert st["uptime_s"] < 600, st["uptime_s"]
                button = next(d for d in st["devices"] if d["id"] == "sos-1")
                assert presses["offline"] - 1 < parse_rfc3339(button["last_seen"]) < presses["step"] + 1, button
                gw.terminate()
            finally:
                gw.stop_quietly()

    with daemon_log_on_failure(cfg):
        asyncio.run(go())
    data = cloud.data()
    assert "Traceback" not in gw.log()
    streams = {d["stream"] for d in data}
    assert len(streams) == 1
    unsynced = [d for d in data if d["clock"] == "unsynced"]
    corrected = [d for d in data if d["clock"] == "corrected"]
    assert unsynced and corrected
    for d in unsynced:  # sent while the broker was reachable, two hours behind
        assert abs(t(d) + 7200 - presses["online"]) < 60, json.dumps(d)
    for d in corrected:  # waiting at the step: the true time, captured between the outage and the step
        assert presses["online"] - 5 < t(d) < presses["step"] + 3, d
    # as the contract's consumer does: a QoS 1 redelivery (the broker stopped before its PUBACK
    # reached the gateway) is the same msg_id again, dropped
    sos = list({a["msg_id"]: a for a in cloud.of_type("alert")}.values())
    offline = [a for a in sos if a["clock"] == "corrected"]
    # the press's true time, give or take the daemon's reaction on a loaded machine (not two hours off)
    alerts = [(a["kind"], a["state"], a["captured_at"], a["seq"]) for a in sos]
    assert len(offline) == 1 and abs(t(offline[0]) - presses["offline"]) < 5.0, (alerts, presses)
    tcs = list({d["msg_id"]: d for d in cloud.of_type("time_correction")}.values())
    assert len(tcs) == 1, "one time-correction for the boot"
    tc = tcs[0]
    assert abs(tc["offset_s"] - 7200) < 1.0 and tc["clock"] == "synced" and tc["stream"] in streams
    for d in unsynced:
        assert tc["first_seq"] <= d["seq"] <= tc["last_seq"], f"seq {d['seq']} left without a correction"
    online = [a for a in sos if a["clock"] == "unsynced"]
    assert len(online) == 1 and abs(t(online[0]) + tc["offset_s"] - presses["online"]) < 5.0, (alerts, presses)
    by_id: dict[str, set[str]] = {}
    for d in data:
        by_id.setdefault(d["msg_id"], set()).add(str(d["seq"]))
    assert all(len(s) == 1 for s in by_id.values()), "a resent message keeps its msg_id and seq"


def test_after_a_restart_30_min_behind_the_last_reading_a_desaturation_raises_spo2_low(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    oxi = tmp_path / "oxi"
    cfg = gateway_config(tmp_path, broker.port, devices=test_care.oximeter(oxi) + RULES)
    clock = FakedClock(tmp_path, 0, synced=True)

    async def go() -> None:
        async with Cms50Simulator(oxi, spo2=97, seed=4) as sim:
            gw = GatewayProcess(cfg, env=clock.env())
            gw.start()
            try:
                await gw.running()
                await until(lambda: len(cloud.of_type("observation")) >= 3, 30, "normal readings")
                gw.terminate()
            finally:
                gw.stop_quietly()
            clock.set(-1800, synced=False)  # the restart finds the clock half an hour behind
            sim.spo2 = 84
            gw = GatewayProcess(cfg, env=clock.env())
            gw.start()
            try:
                await gw.running()
                await until(lambda: [a for a in cloud.of_type("alert") if a["kind"] == "spo2_low"], 40, "spo2_low")
                st = status_via_ctl(cfg)
                assert st is not None and st["care"]["counters"]["out_of_order"] == 0
                gw.terminate()
            finally:
                gw.stop_quietly()

    with daemon_log_on_failure(cfg):
        asyncio.run(go())
    alert = next(a for a in cloud.of_type("alert") if a["kind"] == "spo2_low")
    assert alert["clock"] == "unsynced" and alert["state"] == "raised"
    assert abs(t(alert) + 1800 - time.time()) < 60, "the alert carries the (unsynced) wall clock's time"


def test_a_step_forwards_by_days_raises_no_no_data_uplink_down_or_escalation(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    oxi = tmp_path / "oxi"
    cfg = gateway_config(tmp_path, broker.port, devices=test_care.oximeter(oxi) + RULES)
    clock = FakedClock(tmp_path, 0, synced=False)
    gw = GatewayProcess(cfg, env=clock.env())

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        async with Cms50Simulator(oxi, spo2=97, seed=5):
            gw.start()
            try:
                await gw.running()
                await until(lambda: len(cloud.of_type("observation")) >= 4, 30, "readings")
                broker.stop()
                await asyncio.sleep(1.5)
                clock.set(3 * 86400, synced=False)  # three days ahead, while the uplink is down
                await asyncio.sleep(4.0)
                down = status_via_ctl(cfg)
                broker.start()
                await until(lambda: any(t(d) > time.time() + 86400 for d in cloud.data()), 30, "readings after")
                await asyncio.sleep(2.0)
                st = status_via_ctl(cfg)
                assert st is not None and down is not None
                gw.terminate()
                return st, down
            finally:
                gw.stop_quietly()

    with daemon_log_on_failure(cfg):
        st, down = asyncio.run(go())
    assert cloud.of_type("alert") == [], "a step forwards fires nothing by itself"
    # nor does it age the daemon, its waiting readings or its devices in the status (doctor reads them)
    waited = down["outbox"]["oldest_age_s"]["observation"]
    assert waited is not None and waited < 120 and down["uptime_s"] < 600, (waited, down["uptime_s"])
    # a sanity check only: its readings after the step were read on the stepped clock (the receive time
    # against the capture time is checked on the button of the first test)
    oximeter = next(d for d in down["devices"] if d["kind"] == "serial-cms50")
    assert abs(parse_rfc3339(oximeter["last_seen"]) - (time.time() + 3 * 86400)) < 120, oximeter
    counters = st["care"]["counters"]
    assert (counters["raised"], counters["escalated"], counters["reminders"]) == (0, 0, 0)
    assert st["clock"]["steps"] >= 1 and st["clock"]["last_step"]["delta_s"] > 86400


def test_a_new_store_is_a_new_stream_with_seq_from_1_and_nothing_missing_but_what_stayed_on_the_old_one(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    rfx = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_NEW-if00-port0"
    cfg = gateway_config(tmp_path, broker.port, devices=rfxtrx_device(rfx))
    check = Completeness()
    cloud.viewer.on_message = lambda _topic, doc, retained: check.add(doc, retained)

    left: list[list[int]] = []  # seqs still in the store when the gateway stopped (committed at the stop)

    async def run_once(presses: int) -> None:
        async with RfxtrxSimulator(rfx) as radio:
            gw = GatewayProcess(cfg)
            gw.start()
            try:
                await gw.running()
                await until(lambda: radio.started, 20, "the receiver")
                for i in range(presses):
                    await radio.press(0xA1B2C3 + i, repeats=1, gap_s=0.03)
                    await asyncio.sleep(0.2)
                await until(lambda: (status_via_ctl(cfg) or {}).get("outbox", {}).get("depth", {}).get("alert") == 0)
                gw.terminate()
            finally:
                gw.stop_quietly()
        db = sqlite3.connect(tmp_path / "data" / "outbox.sqlite3")
        left.append([r[0] for r in db.execute("SELECT seq FROM msg ORDER BY seq")])
        db.close()

    async def go() -> None:
        await run_once(3)
        for f in (tmp_path / "data").glob("outbox.sqlite3*"):
            f.unlink()  # the SD card was replaced: a new, empty store
        await run_once(2)

    with daemon_log_on_failure(cfg):
        asyncio.run(go())
    time.sleep(0.5)
    data = cloud.data()
    streams = list(dict.fromkeys(d["stream"] for d in data))
    assert len(streams) == 2, "a new store is a new stream"
    for stream, stayed in zip(streams, left, strict=True):
        seqs = sorted(d["seq"] for d in data if d["stream"] == stream)
        last = check.streams[("gw-test", stream)].last_seq
        assert seqs[0] == 1 and seqs == list(range(1, len(seqs) + 1)), (stream, seqs)
        assert len(seqs) <= last <= len(seqs) + len(stayed), "last_seq counts every committed message it knew"
        # The completeness check per stream misses exactly what never left the store and the stop's status
        # counted (on the old card, lost with it); nothing of the other stream is taken for a gap.
        assert check.missing("gw-test", stream) == [s for s in stayed if s <= last]
    old = [d["msg_id"] for d in data if d["stream"] == streams[0] and d["seq"] == 1]
    new = [d["msg_id"] for d in data if d["stream"] == streams[1] and d["seq"] == 1]
    assert old != new, "seq 1 of each stream is a different message: the stream tells them apart"


def test_a_step_between_a_drill_press_and_its_ack_adds_nothing_to_the_drill_reports_latency(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    """The drill log times a press to the broker and to the care centre's ack on the daemon's timeline:
    the wall clock stepping 2 h ahead between the press and the ack (a first NTP sync in the middle of a
    drill; not synchronised, so the ack is not refused as stale) leaves press_to_ack_s at seconds."""
    rfx = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_DRL-if00-port0"
    cfg = gateway_config(tmp_path, broker.port, devices=rfxtrx_device(rfx))
    clock = FakedClock(tmp_path, 0, synced=False)
    gw = GatewayProcess(cfg, env=clock.env())
    socket_path = load_config(cfg).gateway.socket_path
    downlink = Cloud(broker.port, "homecare/v1/gw-test")

    async def go() -> dict[str, Any]:
        async with RfxtrxSimulator(rfx) as radio:
            gw.start()
            try:
                await gw.running()
                await until(lambda: radio.started, 20, "the receiver")
                await asyncio.to_thread(ctl_call, socket_path, "drill", duration_s=600, buttons=["sos-1"])
                await radio.press(0xA1B2C3, repeats=2, gap_s=0.03)
                (sos,) = await until(lambda: cloud.of_type("alert"), 20, "the drill SOS")
                assert sos["drill"] is True
                clock.set(7200, synced=False)
                await asyncio.sleep(1.5)  # the daemon's clock watch sees the step
                _, ack = await asyncio.to_thread(
                    downlink.ask, "alert-ack", {"request_id": "ack-1", "alert_id": sos["alert_id"]}
                )
                assert ack["ok"] is True, ack
                report: dict[str, Any] = await asyncio.to_thread(ctl_call, socket_path, "drill-report")
                gw.terminate()
                return report
            finally:
                gw.stop_quietly()
                downlink.close()

    with daemon_log_on_failure(cfg):
        report = asyncio.run(go())
    (timed,) = report["presses"]
    assert 0 < timed["press_to_broker_ms"] < 10_000 and 0 < timed["press_to_ack_s"] < 60, timed
