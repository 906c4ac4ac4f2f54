"""Call requests end to end (issue 14): a two-key RFXtrx pendant (panic = SOS, arm home = call) on a
real pty, the real gatewayd, a real Mosquitto and the cloud's schema-checking subscriber.

A call press is an alert of kind ``call`` (medium) in the alert lane; further presses while it is open
update the same alert id with a higher ``presses``; it is reminded once after ``rules.call_reminder_s``
while an SOS beside it keeps its own cadence; it survives a restart (care.sqlite3); ``cmd/alert-ack``
closes it, and the next press opens a new one.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from drivers.base import ButtonPress
from gateway.contract import validator
from gateway.messages import Topics
from gateway.outbox import Lane, NewMessage, Outbox, StoredMessage
from gateway.pipeline import Pipeline
from simulators.broker import Mosquitto
from simulators.rfxtrx_sim import STATUSES, RfxtrxSimulator
from tests.helpers import REPO, Cloud, Collector, GatewayProcess, gateway_config, rfxtrx_device, until

PENDANT = 0xA1B2C3
# what the uplink adds when it sends (gateway.outbox.wire_payload)
WIRE = {"seq": 1, "historical": False, "clock": "synced", "stream": "s-1"}


def pendant(link: Path) -> str:
    """The two-key pendant: panic = SOS (unmapped), arm home = call."""
    return rfxtrx_device(
        link, {"a1b2c3": "pendant-anna"}, roles={"a1b2c3/arm_home": "call"}, extra="repeat_window_s = 0.3"
    )


RULES = """
[rules]
tick_s = 0.1
reminder_interval_s = 1
call_reminder_s = 2
"""


def alerts(cloud: Collector, kind: str) -> list[dict[str, Any]]:
    return sorted((a for a in cloud.of_type("alert") if a["kind"] == kind), key=lambda a: a["seq"])


async def status(config: Path, human: bool = False) -> Any:
    args = [sys.executable, "-m", "gateway.ctl", "--config", str(config), *([] if human else ["--json"]), "status"]
    out = await asyncio.to_thread(subprocess.run, args, capture_output=True, text=True, timeout=30, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return out.stdout if human else json.loads(out.stdout)


def reminders_of(gw: GatewayProcess, alert_id: str) -> int:
    return sum("still not acknowledged" in line and alert_id in line for line in gw.log().splitlines())


def test_call_presses_coalesce_remind_once_survive_a_restart_and_close_on_ack(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    link = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_CALL-if00-port0"
    config = gateway_config(tmp_path, broker.port, devices=pendant(link) + RULES)
    gw = GatewayProcess(config)
    downlink = Cloud(broker.port, "homecare/v1/gw-test")

    async def press(sim: RfxtrxSimulator, key: str) -> None:
        await asyncio.sleep(0.4)  # beyond the repeat window: a new press
        await sim.press(PENDANT, repeats=3, gap_s=0.02, status=STATUSES[key])

    async def go() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with RfxtrxSimulator(link) as sim:
            gw.start()
            try:
                await until(lambda: sim.started, 20, "the daemon to start the receiver")
                await press(sim, "arm_home")
                await until(lambda: alerts(cloud, "call"), 20, "the call request at the cloud")
                await press(sim, "arm_home")
                await until(lambda: len(alerts(cloud, "call")) == 2, 20, "the second press at the cloud")
                await press(sim, "panic")
                await until(lambda: alerts(cloud, "sos"), 20, "the SOS at the cloud")
                call_id = alerts(cloud, "call")[0]["alert_id"]
                sos_id = alerts(cloud, "sos")[0]["alert_id"]
                # one reminder of the call (after 2 s), while the SOS is reminded every second
                await until(lambda: reminders_of(gw, sos_id) >= 4, 20, "SOS reminders")
                seen["call_reminders"] = reminders_of(gw, call_id)
                seen["status"] = await status(config)
                seen["human"] = await status(config, human=True)
                # a restart keeps the open request, and the next press still adds to it
                gw.terminate()
                sim.started = False
                gw.start()
                await until(lambda: sim.started, 20, "the daemon to start the receiver again")
                seen["restarted"] = await status(config)
                await press(sim, "arm_home")
                await until(lambda: len(alerts(cloud, "call")) == 3, 20, "the third press at the cloud")
                _, reply = await asyncio.to_thread(
                    downlink.ask, "alert-ack", {"request_id": "ack-call-1", "alert_id": call_id}
                )
                seen["ack"] = reply
                await until(lambda: "acknowledged by the care centre" in gw.log(), 10, "the ack in the log")
                seen["after_ack"] = await status(config)
                await press(sim, "arm_home")
                await until(lambda: len(alerts(cloud, "call")) == 4, 20, "a new request at the cloud")
                gw.terminate()
            finally:
                gw.stop_quietly()
                downlink.close()
        return seen

    seen = asyncio.run(go())
    calls, (sos,) = alerts(cloud, "call"), alerts(cloud, "sos")
    first, second, third, fresh = calls
    assert (first["severity"], first["state"], first["presses"], first["drill"]) == ("medium", "raised", 1, False)
    assert first["device_id"] == "pendant-anna" and first["extra"]["radio_status"] == "arm_home"
    assert first["alert_id"] == second["alert_id"] == third["alert_id"] != fresh["alert_id"]
    assert [c["presses"] for c in calls] == [1, 2, 3, 1]
    assert len({c["msg_id"] for c in calls}) == 4 and len({c["press_id"] for c in calls}) == 4
    assert second["started_at"] == first["captured_at"] and second["captured_at"] > first["captured_at"]
    # the SOS is its own alert, unchanged: critical, raised once
    assert (sos["severity"], sos["state"], sos["device_id"]) == ("critical", "raised", "pendant-anna")
    assert sos["alert_id"].startswith("sos-") and "presses" not in sos

    assert seen["call_reminders"] == 1
    (open_call,) = seen["status"]["care"]["calls"]
    assert (open_call["alert_id"], open_call["presses"], open_call["reminded"]) == (first["alert_id"], 2, True)
    assert "1 open call request" in seen["human"] and first["alert_id"] in seen["human"]
    (restored,) = seen["restarted"]["care"]["calls"]
    assert (restored["alert_id"], restored["presses"]) == (first["alert_id"], 2)
    assert seen["ack"]["ok"] is True
    assert seen["after_ack"]["care"]["calls"] == []
    kinds = {a["kind"] for a in seen["after_ack"]["care"]["open_alerts"]}
    assert kinds == {"sos"}, "the SOS waits for its own ack"


class _BrokenDesk:
    """A care desk with a bug (test-only, like tests/test_fault_isolation.py's faulty driver)."""

    def call(self, press: ButtonPress, drill: bool) -> tuple[str, NewMessage]:
        raise KeyError("a bug in the care desk")


def test_a_call_press_is_committed_even_when_the_care_desk_fails(tmp_path: Path) -> None:
    async def go() -> tuple[list[StoredMessage], Pipeline]:
        async with Outbox(tmp_path / "outbox.sqlite3") as outbox:
            runner = asyncio.create_task(outbox.run())
            pipeline = Pipeline(Topics("homecare/v1", "gw-1"), outbox)
            pipeline.calls = _BrokenDesk()
            heard: list[str] = []
            pipeline.on_alert(lambda alert_id, _dev, _at: heard.append(alert_id))
            pipeline.sink(ButtonPress("call-1", time.time(), "p1", role="call", pattern="press"))
            await until(lambda: pipeline.counters.accepted == 1, 10, "the press committed")
            stored = await outbox.fetch(Lane.ALERT, 0, 10)
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            assert heard == ["call-call-1-p1"]
            return stored, pipeline

    stored, pipeline = asyncio.run(go())
    (msg,) = stored
    body = json.loads(msg.body)
    assert (body["kind"], body["severity"], body["presses"]) == ("call", "medium", 1)
    assert body["alert_id"] == "call-call-1-p1"
    assert body["pattern"] == "press" and body["drill"] is False
    errors = [e.message for e in validator("alert").iter_errors({**body, **WIRE})]
    assert not errors, errors
    assert pipeline.bugs.count == 1 and pipeline.counters.call_presses == 1


def test_the_contract_knows_every_press_pattern_a_driver_may_send() -> None:
    from drivers.ble.gatt import SOS_PATTERNS
    from drivers.options import PRESS_PATTERNS
    from gateway.contract import load_schema

    assert tuple(load_schema("alert")["properties"]["pattern"]["enum"]) == PRESS_PATTERNS
    assert set(SOS_PATTERNS.values()) == set(PRESS_PATTERNS)
