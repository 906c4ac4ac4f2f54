"""Downlink commands against a running gatewayd: valid, malformed, unknown, replayed, oversized, hostile."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.downlink import MALFORMED_BURST, MAX_COMMAND_BYTES, Downlink
from gateway.errors import CommandRejected
from gateway.registry import Registry
from simulators.broker import Mosquitto
from simulators.rfxtrx_sim import RfxtrxSimulator
from tests.helpers import Cloud, Collector, GatewayProcess, gateway_config, rfxtrx_device, until

GW = "gw-test"
BASE = f"homecare/v1/{GW}"


async def handled(dl: Downlink, command: str, payload: bytes) -> tuple[str, dict[str, Any]]:
    """The reply of a message the downlink answers (not one it drops)."""
    outcome = await dl.receive(command, payload)
    assert outcome is not None, "answered, not dropped"
    return outcome


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
    rid, reply = asyncio.run(handled(dl, "status", b'{"request_id": "st-1"}'))
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
        return asyncio.run(handled(dl, command, json.dumps(doc).encode()))[1]

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


def test_a_duplicate_arriving_while_the_first_executes_waits_for_its_reply_and_runs_nothing(tmp_path: Path) -> None:
    """Two device-remove commands with request_id "req-1" at once, the handler awaiting in between: one
    removal, and both get its reply (the second as a replay), never the second a not_found of its own."""
    registry = Registry(tmp_path / "registry.sqlite3")
    devices = {"rfx2"}
    ran: list[str] = []
    release = asyncio.Event()

    async def device_remove(args: Mapping[str, Any]) -> dict[str, Any]:
        ran.append(args["device_id"])
        await release.wait()  # stopping the driver, writing the registry
        if args["device_id"] not in devices:
            raise CommandRejected("not_found", f"no device {args['device_id']}", key="device_id")
        devices.remove(args["device_id"])
        return {"removed": args["device_id"]}

    async def status(_args: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    dl = Downlink(GW, {"device-remove": device_remove, "status": status}, registry)
    rm = json.dumps({"request_id": "req-1", "device_id": "rfx2"}).encode()

    async def go() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
        first = asyncio.create_task(handled(dl, "device-remove", rm))
        await until(lambda: ran, what="the first removal to start")
        second = asyncio.create_task(handled(dl, "device-remove", rm))
        await asyncio.sleep(0.05)
        assert not second.done(), "the duplicate waits for the first's reply"
        # the same id on another command while the first runs: a conflict at once, not a wait
        async with asyncio.timeout(5):
            _, other = await handled(dl, "status", b'{"request_id": "req-1"}')
        release.set()
        (_, r1), (rid2, r2) = await asyncio.gather(first, second)
        assert rid2 == "req-1"
        _, later = await handled(dl, "device-remove", rm)
        return r1, r2, other, later

    try:
        r1, r2, other, later = asyncio.run(go())
        assert r1["ok"] and r1["result"] == {"removed": "rfx2"} and "replayed" not in r1
        assert ran == ["rfx2"], "the handler ran once"
        assert r2["ok"] and r2["replayed"] is True and r2["result"] == r1["result"] and r2["at"] == r1["at"]
        assert other["error"]["code"] == "conflict" and other["error"]["key"] == "request_id"
        assert later["replayed"] is True and later["result"] == r1["result"]
        assert dl.counters.executed == 1 and dl.counters.replayed == 2
        assert registry.get_reply("req-1") == r1
    finally:
        registry.close()


def test_a_duplicate_of_a_command_cancelled_while_it_executes_is_executed_itself(tmp_path: Path) -> None:
    """The first of two duplicates ends without a reply (its task cancelled: the daemon stopping, the
    connection lost): nothing was stored, so the one waiting for it does not wait forever nor replay a
    reply that never was; it executes, as a retry of the cloud would."""
    registry = Registry(tmp_path / "registry.sqlite3")
    ran: list[int] = []
    release = asyncio.Event()

    async def status(_args: Mapping[str, Any]) -> dict[str, Any]:
        ran.append(len(ran))
        await release.wait()
        return {"run": len(ran)}

    dl = Downlink(GW, {"status": status}, registry)
    st = b'{"request_id": "st-9"}'

    async def go() -> dict[str, Any]:
        first = asyncio.create_task(handled(dl, "status", st))
        await until(lambda: ran, what="the first to start")
        second = asyncio.create_task(handled(dl, "status", st))
        await asyncio.sleep(0.05)
        first.cancel()
        await until(lambda: len(ran) == 2, 5, "the duplicate to execute")
        release.set()
        async with asyncio.timeout(5):
            _, reply = await second
        return reply

    try:
        reply = asyncio.run(go())
        assert reply["ok"] and reply["result"] == {"run": 2} and "replayed" not in reply
        assert dl.counters.executed == 1 and dl.counters.replayed == 0
        assert registry.get_reply("st-9") == reply
    finally:
        registry.close()


def test_a_flood_of_malformed_commands_is_replied_within_its_budget_then_dropped_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """15,000 malformed messages of every kind: the first MALFORMED_BURST replied on _invalid, the rest
    dropped without a reply and counted; one WARNING (the first), the rest at DEBUG; the commands'
    own bucket untouched, so the next real command is taken. A minute later the budget has refilled."""
    registry = Registry(tmp_path / "registry.sqlite3")
    mono = [1000.0]

    async def status(_args: Mapping[str, Any]) -> dict[str, Any]:
        return {"up": True}

    dl = Downlink(GW, {"status": status}, registry, rate_clock=lambda: mono[0], burst=1, per_minute=1)
    garbage = [
        b"{not json",
        b"[" * 5000,
        b"[1, 2]",
        b'{"request_id": "../../etc"}',
        b"\xff\xfe",
        b'{"request_id": "x", "pad": "' + b"x" * MAX_COMMAND_BYTES + b'"}',
    ]

    async def flood(n: int) -> list[tuple[str, dict[str, Any]] | None]:
        return [await dl.receive("status", garbage[i % len(garbage)]) for i in range(n)]

    caplog.set_level(logging.DEBUG, logger="gateway.downlink")
    try:
        out = asyncio.run(flood(15_000))
        replied = [o for o in out if o is not None]
        assert len(replied) == MALFORMED_BURST and out[:MALFORMED_BURST] == replied
        assert all(rid == "_invalid" and r["error"]["code"] in ("malformed", "too_large") for rid, r in replied)
        assert dl.counters.dropped == 15_000 - MALFORMED_BURST
        assert sum(dl.counters.rejected.values()) == MALFORMED_BURST
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "further malformed commands at DEBUG" in warnings[0].getMessage()
        assert len(caplog.records) == 15_000, "every one logged, the repeats at DEBUG"

        assert asyncio.run(dl.receive("status", b"{not json")) is None and dl.counters.dropped == 15_000 - 9

        # the flood cost the real commands nothing: the next one is taken (burst 1, untouched)
        caplog.clear()
        _, ok = asyncio.run(handled(dl, "status", b'{"request_id": "st-1"}'))
        assert ok["ok"]
        (info,) = [r for r in caplog.records if r.levelno == logging.INFO and "malformed" in r.getMessage()]
        assert "after 15001 malformed ones (14991 of them dropped" in info.getMessage()

        # a minute later (monotonic) ten more are replied; a new run's first is a WARNING again
        caplog.clear()
        mono[0] += 60.0
        again = asyncio.run(flood(MALFORMED_BURST + 5))
        assert sum(o is not None for o in again) == MALFORMED_BURST
        assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
    finally:
        registry.close()


def test_the_rate_limit_measures_time_on_the_monotonic_clock_not_the_wall_clock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An emptied bucket stays empty when the wall clock steps an hour ahead (an NTP sync after a power
    cut), and refills as usual when it steps back; by default the buckets run on time.monotonic."""
    registry = Registry(tmp_path / "registry.sqlite3")
    wall, mono = [1_790_000_000.0], [500.0]

    async def status(_args: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    dl = Downlink(
        GW, {"status": status}, registry, clock=lambda: wall[0], rate_clock=lambda: mono[0], burst=2, per_minute=1
    )
    n = [0]

    def ask() -> dict[str, Any]:
        n[0] += 1
        return asyncio.run(handled(dl, "status", json.dumps({"request_id": f"st-{n[0]}"}).encode()))[1]

    caplog.set_level(logging.DEBUG, logger="gateway.downlink")
    try:
        assert ask()["ok"] and ask()["ok"]
        assert [ask()["error"]["code"] for _ in range(5)] == ["rate_limited"] * 5
        limited = [r for r in caplog.records if "rate_limited" in r.getMessage()]
        assert [r.levelno for r in limited] == [logging.WARNING] + [logging.DEBUG] * 4, "repeats at DEBUG"
        wall[0] += 3600.0  # the wall clock steps ahead: no refill
        assert ask()["error"]["code"] == "rate_limited"
        mono[0] += 60.0  # a minute of real time: one token
        assert ask()["ok"]
        wall[0] -= 7200.0  # the wall clock steps back: the bucket is not emptied for two hours
        mono[0] += 60.0
        assert ask()["ok"]
        assert ask()["error"]["code"] == "rate_limited"
        default = Downlink(GW, {"status": status}, registry)
        assert default.bucket.clock is time.monotonic and default.malformed_bucket.clock is time.monotonic
    finally:
        registry.close()


def test_a_reply_the_registry_cannot_store_is_still_sent(tmp_path: Path) -> None:
    """The command ran; a registry that cannot be written (a lock, a full disk) costs only its replay
    (logged), not the reply: it was replied as an internal error, counted as a bug."""
    path = tmp_path / "registry.sqlite3"
    registry = Registry(path)

    async def status(_args: Mapping[str, Any]) -> dict[str, Any]:
        return {"up": True}

    dl = Downlink(GW, {"status": status}, registry)
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    try:
        rid, reply = asyncio.run(handled(dl, "status", b'{"request_id": "st-9"}'))
    finally:
        other.execute("ROLLBACK")
        other.close()
        registry.close()
    assert rid == "st-9" and reply["ok"] and reply["result"] == {"up": True} and dl.bugs.count == 0
