"""Downlink commands against a running gatewayd: valid, malformed, unknown, replayed, oversized, hostile."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.downlink import Downlink
from gateway.registry import Registry
from simulators.broker import Mosquitto
from simulators.rfxtrx_sim import RfxtrxSimulator
from tests.helpers import Cloud, Collector, GatewayProcess, gateway_config, rfxtrx_device, until

GW = "gw-test"
BASE = f"homecare/v1/{GW}"


def test_every_downlink_command_and_every_way_to_get_it_wrong(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    link = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_DL-if00-port0"
    link2 = tmp_path / "dev" / "usb-RFXCOM_RFXtrx433_DL2-if00-port0"
    config = gateway_config(tmp_path, broker.port, devices=rfxtrx_device(link))
    gw = GatewayProcess(config)
    platform = Cloud(broker.port, BASE)

    async def go() -> None:
        async with RfxtrxSimulator(link) as sim, RfxtrxSimulator(link2) as sim2:
            gw.start()
            try:
                await until(lambda: sim.started, what="daemon up")
                await until(lambda: any(t.endswith("/status") for _, t, _, _ in cloud.poll()), what="online")
                await asyncio.sleep(0.3)  # the daemon subscribes to cmd/+ right after its birth message

                # status
                topic, r = await asyncio.to_thread(platform.ask, "status", {"request_id": "st-1"})
                assert topic == f"{BASE}/cmd-result/st-1" and r["ok"] and r["result"]["uplink"]["state"] == "connected"

                # a drill names its buttons; then the first press of the named button is the drill press
                _, r = await asyncio.to_thread(platform.ask, "drill", {"request_id": "dr-0", "duration_s": 60})
                assert not r["ok"] and r["error"]["key"] == "buttons", "a drill of every button must be said"
                drill = {"request_id": "dr-1", "duration_s": 60, "buttons": ["sos-1"]}
                _, r = await asyncio.to_thread(platform.ask, "drill", drill)
                assert r["ok"] and r["result"]["duration_s"] == 60
                await sim.press(0xA1B2C3)
                alert = await until(lambda: cloud.of_type("alert"), what="drill alert")
                assert alert[0]["drill"] is True

                # ack that alert; acking again is fine; an unknown alert is not
                alert_id = alert[0]["alert_id"]
                _, r = await asyncio.to_thread(platform.ask, "alert-ack", {"request_id": "ack-1", "alert_id": alert_id})
                assert r["ok"] and r["result"]["acknowledged"]
                _, r = await asyncio.to_thread(platform.ask, "alert-ack", {"request_id": "ack-2", "alert_id": alert_id})
                assert r["ok"]
                _, r = await asyncio.to_thread(platform.ask, "alert-ack", {"request_id": "ack-3", "alert_id": "nope"})
                assert not r["ok"] and r["error"]["code"] == "not_found"

                # device-add from the cloud starts a driver; replaying the request does not add twice
                add = {
                    "request_id": "add-1",
                    "device": {
                        "id": "rfx2",
                        "kind": "rfxtrx-sos",
                        "options": {"port": str(link2), "accept_unknown": True},
                    },
                }
                _, r = await asyncio.to_thread(platform.ask, "device-add", add)
                assert r["ok"], r
                await until(lambda: sim2.started, what="the cloud-added receiver to start")
                _, r2 = await asyncio.to_thread(platform.ask, "device-add", add)
                assert r2["replayed"] is True and r2["ok"] and r2["result"] == r["result"]
                _, r = await asyncio.to_thread(platform.ask, "device-add", {**add, "request_id": "add-2"})
                assert r["error"]["code"] == "conflict"
                # a device that is not what it claims is refused by the config validator
                bad = {"request_id": "add-3", "device": {"id": "x1", "kind": "rfxtrx-sos", "options": {"port": 5}}}
                _, r = await asyncio.to_thread(platform.ask, "device-add", bad)
                assert r["error"]["code"] == "invalid" and "port" in r["error"]["reason"]
                # a hostile path is accepted as configuration but never opened as anything but a tty
                evil = {
                    "request_id": "add-4",
                    "device": {"id": "evil", "kind": "rfxtrx-sos", "options": {"port": "/etc/passwd"}},
                }
                _, r = await asyncio.to_thread(platform.ask, "device-add", evil)
                assert r["ok"]
                state = await until(
                    lambda: [d for d in cloud.of_type("device_state") if d["device_id"] == "evil"],
                    what="the evil device's state",
                )
                assert state[-1]["state"] == "error" and "not a serial device" in state[-1]["reason"]

                # device-remove: cloud-added ones only
                _, r = await asyncio.to_thread(
                    platform.ask, "device-remove", {"request_id": "rm-1", "device_id": "rfx2"}
                )
                assert r["ok"]
                _, r = await asyncio.to_thread(
                    platform.ask, "device-remove", {"request_id": "rm-2", "device_id": "rfx"}
                )
                assert r["error"]["code"] == "conflict"
                _, r = await asyncio.to_thread(platform.ask, "device-remove", {"request_id": "rm-3", "device_id": "zz"})
                assert r["error"]["code"] == "not_found"

                # malformed, unknown, invalid, oversized, hostile ids
                topic, r = await asyncio.to_thread(platform.ask, "status", b"{not json")
                assert topic.endswith("/cmd-result/_invalid") and r["error"]["code"] == "malformed"
                topic, r = await asyncio.to_thread(platform.ask, "status", {"request_id": "../../etc"})
                assert topic.endswith("/cmd-result/_invalid") and r["error"]["code"] == "malformed"
                topic, r = await asyncio.to_thread(platform.ask, "status", {"request_id": "st-2\n"})
                assert topic.endswith("/cmd-result/_invalid") and r["error"]["code"] == "malformed"
                # nested beyond the JSON parser's recursion limit: a reply, not a dead task
                topic, r = await asyncio.to_thread(platform.ask, "status", b"[" * 5000)
                assert topic.endswith("/cmd-result/_invalid") and r["error"]["code"] == "malformed"
                assert "nested" in r["error"]["reason"]
                _, r = await asyncio.to_thread(platform.ask, "reboot", {"request_id": "u-1"})
                assert r["error"]["code"] == "unknown_command"
                v1 = {"request_id": "v-1", "duration_s": 99999, "all_buttons": True}
                _, r = await asyncio.to_thread(platform.ask, "drill", v1)
                assert r["error"]["code"] == "invalid" and "duration_s" in r["error"]["reason"]
                _, r = await asyncio.to_thread(platform.ask, "status", {"request_id": "v-2", "shell": "rm -rf /"})
                assert r["error"]["code"] == "invalid"
                big = json.dumps({"request_id": "big-1", "pad": "x" * 20_000}).encode()
                topic, r = await asyncio.to_thread(platform.ask, "status", big)
                assert r["error"]["code"] == "too_large"
                # far larger: the broker never sends it (MQTT 5 Maximum Packet Size), so the daemon never
                # holds it; the next command is answered first, and the connection stays up
                await asyncio.to_thread(platform.send, "status", b'{"request_id": "huge-1", "p": "' + b"x" * 2_000_000)
                topic, r = await asyncio.to_thread(platform.ask, "status", {"request_id": "after-huge"})
                assert topic == f"{BASE}/cmd-result/after-huge" and r["ok"]
                assert r["result"]["uplink"]["state"] == "connected"

                # rate limit: a flood is cut, and the daemon keeps serving
                for i in range(40):
                    await asyncio.to_thread(platform.send, "status", {"request_id": f"flood-{i}"})
                codes = []
                for _ in range(40):
                    _, r = await asyncio.to_thread(platform.reply)
                    codes.append(r["ok"] or r["error"]["code"])
                assert "rate_limited" in codes and True in codes
                assert gw.alive()
                # SOS presses still go through after all that
                await asyncio.sleep(1.1)
                await sim.press(0xA1B2C3)
                alerts = await until(lambda: cloud.of_type("alert")[1:] and cloud.of_type("alert"), what="press 2")
                assert alerts[-1]["drill"] is False, "a second press of the drill button is real"
            finally:
                gw.stop_quietly()

    try:
        asyncio.run(go())
    finally:
        platform.close()
    assert "Traceback" not in gw.log() and "never retrieved" not in gw.log()


def test_a_fault_outside_the_handler_is_replied_and_counted(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.sqlite3")
    registry.close()  # every read and write of the replies now fails (as a lost disk would)

    async def status(_args: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    dl = Downlink(GW, {"status": status}, registry)
    rid, reply = asyncio.run(dl.handle("status", b'{"request_id": "st-1"}'))
    assert rid == "_invalid" and reply["ok"] is False and reply["error"]["code"] == "failed"
    assert dl.bugs.count == 1 and dl.counters.rejected == {"failed": 1}


@pytest.mark.parametrize("name", ["status", "drill", "alert-ack", "device-add", "device-remove", "rules-update"])
def test_command_schemas_are_valid_draft7_and_reject_extra_fields(name: str) -> None:
    import jsonschema

    path = Path(__file__).resolve().parents[1] / "gateway" / "schemas" / "commands" / f"{name}.json"
    schema = json.loads(path.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    v = jsonschema.Draft7Validator(schema)
    assert list(v.iter_errors({"request_id": "r1", "unexpected": 1}))
    assert list(v.iter_errors({"request_id": "bad id with spaces"}))


def test_a_used_request_id_on_another_command_and_a_command_from_the_future_are_refused(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.sqlite3")
    drills: list[Mapping[str, Any]] = []
    now = 1_790_000_000.0

    async def status(_args: Mapping[str, Any]) -> dict[str, Any]:
        return {"up": True}

    async def drill(args: Mapping[str, Any]) -> dict[str, Any]:
        drills.append(args)
        return {"duration_s": 60}

    dl = Downlink(GW, {"status": status, "drill": drill}, registry, clock=lambda: now, clock_synchronised=lambda: True)

    def ask(command: str, doc: dict[str, Any]) -> dict[str, Any]:
        return asyncio.run(dl.handle(command, json.dumps(doc).encode()))[1]

    try:
        assert ask("status", {"request_id": "r-1"})["ok"]
        replay = ask("status", {"request_id": "r-1"})
        assert replay["ok"] and replay["replayed"] is True
        # the same id on another command is not that command's replay: no drill, and said so
        other = ask("drill", {"request_id": "r-1", "all_buttons": True})
        assert other["ok"] is False and other["error"]["code"] == "conflict" and other["error"]["key"] == "request_id"
        assert drills == [] and ask("status", {"request_id": "r-1"})["result"] == {"up": True}
        # a sent_at far ahead of a synchronised clock would never expire
        ahead = ask("drill", {"request_id": "r-2", "all_buttons": True, "sent_at": "2099-01-01T00:00:00Z"})
        assert ahead["error"]["code"] == "invalid" and ahead["error"]["key"] == "sent_at" and drills == []
        soon = dt.datetime.fromtimestamp(now + 60, dt.UTC).isoformat().replace("+00:00", "Z")
        assert ask("drill", {"request_id": "r-3", "all_buttons": True, "sent_at": soon})["ok"], "a skew is fine"
        assert len(drills) == 1
    finally:
        registry.close()
