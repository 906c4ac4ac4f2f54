"""Care rules end to end (issue 6): simulators -> drivers -> pipeline -> rules -> outbox -> Mosquitto ->
the cloud's subscriber, which checks every message against the contract's schemas.

The daemon runs in the test's event loop (the same code gatewayd runs) so that the care rules' clock can
be injected: hours of silence are a clock step, not a sleep. Everything else is real: ptys with the
device simulators, the SQLite outbox, paho-mqtt and a Mosquitto on a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from drivers.reconnect import ConnState
from gateway.config import load_config
from gateway.daemon import Daemon
from simulators.broker import Mosquitto
from simulators.cms50_sim import Cms50Simulator
from simulators.rfxtrx_sim import RfxtrxSimulator
from tests.helpers import Collector, daemon_in_process, gateway_config, rfxtrx_device, until


class Clock:
    """Wall clock plus a step the test controls."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@contextlib.asynccontextmanager
async def running(cfg_path: Path, clock: Clock | None = None) -> AsyncIterator[Daemon]:
    async with daemon_in_process(cfg_path, clock) as (daemon, _task):
        yield daemon


def oximeter(link: Path) -> str:
    return f"""
[[devices]]
id = "oxi"
kind = "serial-cms50"
port = "{link}"
report_every_s = 1.0
download_stored = false
"""


RULES = """
[rules]
timezone = "UTC"
day_start = 00:00:00
day_end = 23:59:59
tick_s = 0.1

[[rules.person]]
id = "anna"
devices = ["oxi"]
worn = ["oxi"]

[[rules.person.rule]]
id = "spo2-low"
base = "spo2-low"
hold_s = 4
clear_hold_s = 3
"""


def alerts(cloud: Collector, kind: str | None = None) -> list[dict[str, Any]]:
    return [a for a in cloud.of_type("alert") if kind is None or a["kind"] == kind]


def spo2_obs(cloud: Collector) -> list[dict[str, Any]]:
    return [o for o in cloud.of_type("observation") if o["code"] == "59408-5"]


def test_desaturation_raises_one_alert_escalates_and_clears_after_recovery(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    link = tmp_path / "oxi"
    cfg = gateway_config(tmp_path, broker.port, devices=oximeter(link) + RULES)

    async def go() -> None:
        async with Cms50Simulator(link, spo2=97, seed=1) as sim, running(cfg):
            await until(lambda: spo2_obs(cloud), what="first SpO2 reading")
            sim.spo2 = 88  # below 90 %: a desaturation
            await until(lambda: alerts(cloud, "spo2_low"), timeout=30, what="spo2_low raised")
            n_low = len(spo2_obs(cloud))
            await until(lambda: len(spo2_obs(cloud)) >= n_low + 4, what="more low readings")
            sim.spo2 = 83  # below the severe limit: the same alert escalates
            await until(lambda: any(a["state"] == "escalated" for a in alerts(cloud)), timeout=30, what="escalation")
            sim.spo2 = 97
            await until(lambda: any(a["state"] == "cleared" for a in alerts(cloud)), timeout=30, what="clear")
            await asyncio.sleep(1.0)

    asyncio.run(go())
    found = alerts(cloud, "spo2_low")
    # One condition, one alert: many low readings, exactly one raised/escalated/cleared, in that order.
    assert [a["state"] for a in sorted(found, key=lambda a: a["seq"])] == ["raised", "escalated", "cleared"]
    assert len({a["alert_id"] for a in found}) == 1
    raised, escalated, cleared = sorted(found, key=lambda a: a["seq"])
    assert raised["severity"] == "medium" and escalated["severity"] == "high"
    assert raised["person_id"] == "anna" and raised["device_id"] == "oxi" and raised["drill"] is False
    assert raised["readings"] and all(r["value"] < 90 for r in raised["readings"])
    assert all(r["code"] == "59408-5" for r in raised["readings"])
    # Real times: the condition started with the first low reading, before the hold completed.
    assert raised["started_at"] <= raised["captured_at"] <= escalated["captured_at"] <= cleared["captured_at"]
    assert raised["rule"]["hold_s"] == 4


def test_a_dip_shorter_than_the_hold_raises_nothing(tmp_path: Path, broker: Mosquitto, cloud: Collector) -> None:
    link = tmp_path / "oxi"
    rules = RULES.replace("hold_s = 4", "hold_s = 8")
    cfg = gateway_config(tmp_path, broker.port, devices=oximeter(link) + rules)

    async def go() -> None:
        async with Cms50Simulator(link, spo2=97, seed=2) as sim, running(cfg) as daemon:
            await until(lambda: spo2_obs(cloud), what="first SpO2 reading")
            sim.spo2 = 86
            await until(lambda: any(o["value"] == 86 for o in spo2_obs(cloud)), what="the dip reaches the cloud")
            await asyncio.sleep(2.0)
            sim.spo2 = 97
            await until(lambda: spo2_obs(cloud)[-1]["value"] == 97, what="recovery")
            await asyncio.sleep(10.0)  # longer than the hold: a late raise would show now
            assert daemon.care is not None and daemon.care.engine.counters().readings > 5

    asyncio.run(go())
    assert any(o["value"] == 86 for o in spo2_obs(cloud))
    assert alerts(cloud) == []


def test_no_data_from_a_worn_device_alerts_at_the_configured_time_and_clears_on_data(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    link = tmp_path / "oxi"
    cfg = gateway_config(tmp_path, broker.port, devices=oximeter(link) + RULES)
    clock = Clock()

    async def go() -> None:
        async with Cms50Simulator(link, spo2=97, seed=3) as sim, running(cfg, clock):
            await until(lambda: spo2_obs(cloud), what="first SpO2 reading")
            sim.unplug()  # the wristband stops sending
            await asyncio.sleep(1.0)
            clock.offset += 7200 - 60  # a minute short of the default 2 h: nothing yet
            await asyncio.sleep(1.0)
            assert not alerts(cloud, "no_data")
            clock.offset += 120
            await until(lambda: alerts(cloud, "no_data"), timeout=10, what="no_data alert")
            sim.plug()
            await until(
                lambda: any(a["state"] == "cleared" for a in alerts(cloud, "no_data")), timeout=20, what="no_data clear"
            )

    asyncio.run(go())
    no_data = sorted(alerts(cloud, "no_data"), key=lambda a: a["seq"])
    assert [a["state"] for a in no_data] == ["raised", "cleared"]
    assert no_data[0]["severity"] == "medium" and no_data[0]["device_id"] == "oxi"
    assert no_data[0]["detail"]["silent_s"] >= 7200


def _cmd(broker: Mosquitto, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """Send one downlink command as the cloud does and wait for its reply."""
    got: list[dict[str, Any]] = []
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda _c, _u, msg: got.append(json.loads(msg.payload))
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", broker.port)
    client.subscribe(f"homecare/v1/gw-test/cmd-result/{body['request_id']}", qos=1)
    client.loop_start()
    try:
        assert subscribed.wait(10), "no SUBACK from the broker"  # the reply cannot pass us by
        client.publish(f"homecare/v1/gw-test/cmd/{name}", json.dumps(body), qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        client.loop_stop()
        client.disconnect()
    assert got, f"no reply to {name}"
    return got[0]


def test_sos_reminders_until_the_care_centre_acks_and_drill_presses_are_marked(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    link = tmp_path / "rfx"
    rules = "\n[rules]\ntick_s = 0.1\nreminder_interval_s = 300\n"
    cfg = gateway_config(tmp_path, broker.port, devices=rfxtrx_device(link) + rules)
    clock = Clock()

    async def go() -> None:
        async with RfxtrxSimulator(link) as sim, running(cfg, clock) as daemon:
            assert daemon.care is not None
            care = daemon.care
            await asyncio.sleep(0.5)
            await sim.press(0xA1B2C3)
            await until(lambda: alerts(cloud, "sos"), what="SOS at the cloud")
            sos = alerts(cloud, "sos")[0]
            assert sos["drill"] is False
            assert [a.alert_id for a in care.engine.open_alerts()] == [sos["alert_id"]]
            clock.offset += 301
            await until(lambda: care.engine.counters().reminders == 1, what="first reminder")
            reply = await asyncio.to_thread(
                _cmd, broker, "alert-ack", {"request_id": "ack-1", "alert_id": sos["alert_id"]}
            )
            assert reply["ok"] is True
            clock.offset += 3600
            await asyncio.sleep(0.5)
            assert care.engine.counters().reminders == 1  # the ack stopped them
            assert care.engine.open_alerts() == ()
            # a drill: the next press is a rehearsal
            reply = await asyncio.to_thread(
                _cmd, broker, "drill", {"request_id": "drill-1", "duration_s": 60, "all_buttons": True}
            )
            assert reply["ok"] is True
            await asyncio.sleep(1.2)  # a new press (the button's repeat filter is 1 s)
            await sim.press(0xA1B2C3)
            await until(lambda: len(alerts(cloud, "sos")) == 2, what="drill press at the cloud")

    asyncio.run(go())
    first, drill = sorted(alerts(cloud, "sos"), key=lambda a: a["seq"])
    assert first["drill"] is False and drill["drill"] is True


def test_cloud_rules_update_applies_survives_a_restart_and_bad_rules_are_rejected(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    link = tmp_path / "oxi"
    cfg = gateway_config(tmp_path, broker.port, devices=oximeter(link) + RULES)

    async def go() -> None:
        async with Cms50Simulator(link, spo2=93, seed=4) as sim:
            async with running(cfg) as daemon:
                await until(lambda: spo2_obs(cloud), what="first SpO2 reading")
                bad = await asyncio.to_thread(
                    _cmd,
                    broker,
                    "rules-update",
                    {"request_id": "r-bad", "person_id": "anna", "rules": [{"base": "spo2-low", "threshold": "x"}]},
                )
                assert bad["ok"] is False and bad["error"]["code"] == "invalid"
                assert "threshold" in bad["error"]["reason"]
                good = await asyncio.to_thread(
                    _cmd,
                    broker,
                    "rules-update",
                    {
                        "request_id": "r-1",
                        "person_id": "anna",
                        "rules": [
                            {"id": "spo2-low", "base": "spo2-low", "threshold": 94, "hold_s": 3, "clear_hold_s": 3}
                        ],
                    },
                )
                assert good["ok"] is True and good["result"]["rules"] == ["spo2-low"]
                # 93 % was normal for the old rule and is low for the new one
                await until(lambda: alerts(cloud, "spo2_low"), timeout=30, what="alert under the cloud's rule")
                assert daemon.care is not None
                open_ids = [a.alert_id for a in daemon.care.engine.open_alerts()]
            # restart: the cloud's rule and the open alert are still there, and nothing is raised twice
            async with running(cfg) as daemon:
                assert daemon.care is not None
                assert [r.threshold for r in daemon.care.engine.rules_for("anna")[0].conditions] == [94.0]
                assert [a.alert_id for a in daemon.care.engine.open_alerts()] == open_ids
                n = len(spo2_obs(cloud))
                await until(lambda: len(spo2_obs(cloud)) >= n + 5, what="readings after the restart")
                sim.spo2 = 97
                await until(lambda: any(a["state"] == "cleared" for a in alerts(cloud)), timeout=30, what="clear")

    asyncio.run(go())
    states = [a["state"] for a in sorted(alerts(cloud, "spo2_low"), key=lambda a: a["seq"])]
    assert states == ["raised", "cleared"]


async def _prefill(data_dir: Path, n: int) -> None:
    """A backlog of ``n`` observations already committed, as after a long outage."""
    from drivers.base import Measurement
    from gateway.messages import Topics, observation
    from gateway.outbox import Outbox

    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    topics = Topics("homecare/v1", "gw-test")
    t0 = time.time() - 3600
    async with Outbox(data_dir / "outbox.sqlite3") as ob:
        runner = asyncio.create_task(ob.run())
        futs = []
        for i in range(n):
            m = Measurement(f"wrist-{i % 4}", "8867-4", 60.0 + i % 40, "/min", t0 + i * 0.02, quality=0.9)
            futs.append(ob.submit(observation(topics, m)))
            if i % 5000 == 4999:
                await asyncio.gather(*futs)
                futs = []
        await asyncio.gather(*futs)
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


def test_sos_during_a_100k_backlog_reaches_the_cloud_first(tmp_path: Path, broker: Mosquitto, cloud: Collector) -> None:
    n = 100_000
    link = tmp_path / "rfx"
    cfg = gateway_config(tmp_path, broker.port, devices=rfxtrx_device(link), uplink_extra="inflight_window = 100")

    async def go() -> tuple[float, float]:
        await _prefill(tmp_path / "data", n)
        broker.stop()  # the gateway starts offline with its backlog
        daemon = Daemon(load_config(cfg))
        task = asyncio.create_task(daemon.run())
        try:
            async with RfxtrxSimulator(link) as sim:
                await until(lambda: daemon.devices is not None and daemon.outbox is not None, what="daemon up")
                await asyncio.sleep(1.0)
                await sim.press(0xA1B2C3)  # offline: committed, waits with the backlog
                await until(lambda: daemon.outbox is not None and daemon.outbox.depth[0] == 1, what="SOS committed")
                broker.start()
                await until(lambda: len(cloud.data()) > 2000, timeout=60, what="drain under way")
                await asyncio.sleep(1.2)
                assert daemon.uplink is not None
                acked: list[float] = []
                daemon.uplink.on_alert_delivered.append(lambda _msg: acked.append(time.monotonic()))
                pressed = time.monotonic()
                await sim.press(0xA1B2C3)  # a second press in the middle of the drain
                await until(lambda: acked, timeout=30, what="second SOS at the broker (PUBACK)")
                await until(lambda: len(alerts(cloud, "sos")) == 2, timeout=60, what="second SOS at the cloud")
                behind = n - len(cloud.of_type("observation"))
                assert behind > 10_000, f"the drain was nearly over ({behind} left): the test proves nothing"
                return pressed, acked[0]
        finally:
            daemon.request_stop()
            async with asyncio.timeout(15):
                await task

    pressed, at_broker = asyncio.run(go())
    data = cloud.data()
    assert len({d["seq"] for d in data}) == len(data)  # no duplicates
    assert len(alerts(cloud, "sos")) == 2
    # The press made while offline is the first thing the cloud gets when the link returns ...
    assert data[0]["type"] == "alert" and data[0]["kind"] == "sos" and data[0]["historical"] in (True, False)
    # ... and the press made during the drain overtakes what is still waiting.
    second = next(i for i, d in enumerate(data) if d["type"] == "alert" and d is not data[0])
    print(f"SOS during a {n}-message drain: press-to-PUBACK {1000 * (at_broker - pressed):.1f} ms, position {second}")


# -- the realistic generator (simulators/ppg.py) through the gateway's DSP and rules -------------------
#
# A wrist monitor's raw PPG reaches the pipeline as Waveform blocks (what the BLE wrist driver emits). The
# recordings below are fed at many times real time with their true capture times (minutes of signal in a
# second or two), through the same pipeline.sink the drivers use: DSP -> rules -> outbox -> broker.

WRIST_RULES = """
[rules]
tick_s = 0.1
"""


async def _feed_recording(daemon: Daemon, rec: Any, device_id: str, *, block_s: float = 1.0) -> None:
    from drivers.base import Waveform

    assert daemon.pipeline is not None
    n_block = round(block_s * rec.fs)
    t0 = time.time() - len(rec) / rec.fs - 5.0
    for i in range(0, len(rec) - n_block + 1, n_block):
        daemon.pipeline.sink(
            Waveform(
                device_id=device_id,
                captured_at=t0 + i / rec.fs,
                fs=rec.fs,
                channels={
                    "ir": rec.ir[i : i + n_block].tolist(),
                    "red": rec.red[i : i + n_block].tolist(),
                    "green": rec.green[i : i + n_block].tolist(),
                },
                first_index=i,
            )
        )
        if i % (n_block * 20) == 0:
            await asyncio.sleep(0)  # let the outbox and uplink run


def _gateway_obs(cloud: Collector, code: str) -> list[dict[str, Any]]:
    return [o for o in cloud.of_type("observation") if o["code"] == code and o["method"] == "gateway"]


def test_generator_desaturation_raises_one_alert_and_clears_and_artefacts_raise_none(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    from simulators.ppg import Desaturation, generate

    cfg = gateway_config(tmp_path, broker.port, devices=WRIST_RULES)
    # 6 min: a 2-minute desaturation to 84 % in the middle, with the default rule (below 90 % for 60 s)
    desat = generate(360, fs=100.0, hr_bpm=72, seed=11, desaturations=[Desaturation(90, 84, 20, 120, 20)])
    # 4 min at a normal heart rate with violent motion for 2 minutes: a naive peak count reads nonsense
    shaken = generate(240, fs=100.0, hr_bpm=70, seed=12, motion=[(60, 180)], motion_level=6.0)

    async def go() -> None:
        async with running(cfg) as daemon:
            await _feed_recording(daemon, desat, "wrist-a")
            await until(
                lambda: any(a["state"] == "cleared" for a in alerts(cloud, "spo2_low")), timeout=30, what="clear"
            )
            await _feed_recording(daemon, shaken, "wrist-b")
            await until(lambda: len(_gateway_obs(cloud, "8867-4")) > 60, what="heart rates of both recordings")
            await asyncio.sleep(1.0)

    asyncio.run(go())
    spo2 = [a for a in alerts(cloud, "spo2_low") if a["device_id"] == "wrist-a"]
    states = [a["state"] for a in sorted(spo2, key=lambda a: a["seq"])]
    assert states[0] == "raised" and states[-1] == "cleared" and states.count("raised") == 1
    assert set(states) <= {"raised", "escalated", "cleared"} and len({a["alert_id"] for a in spo2}) == 1
    lows = [o for o in _gateway_obs(cloud, "59408-5") if o["device_id"] == "wrist-a" and o["value"] < 90]
    assert len(lows) >= 10, "the desaturation was seen by the gateway's own SpO2"
    # nothing at all for the shaken wristband: its artefacts gave no value or low-quality values only
    assert [a for a in alerts(cloud) if a["device_id"] == "wrist-b"] == []
    shaken_hr = [o for o in _gateway_obs(cloud, "8867-4") if o["device_id"] == "wrist-b"]
    assert shaken_hr and all(abs(o["value"] - 70) < 10 or o["quality"] < 0.5 for o in shaken_hr)


def test_generator_af_episode_raises_a_followup_alert_with_its_burden(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    from simulators.ppg import generate

    rules = (
        WRIST_RULES
        + """
[[rules.person]]
id = "default"

[[rules.person.rule]]
id = "af-followup"
base = "af-followup"
window_s = 600
"""
    )
    cfg = gateway_config(tmp_path, broker.port, devices=rules)
    # 15 min: sinus, then 10 min of AF (the default rule looks at an hour; this person's at 10 minutes)
    rec = generate(900, fs=100.0, hr_bpm=75, seed=21, af_episodes=[(240, 900)])

    async def go() -> None:
        async with running(cfg) as daemon:
            await _feed_recording(daemon, rec, "wrist-c")
            await until(lambda: alerts(cloud, "af_followup"), timeout=30, what="AF follow-up alert")
            accepted = daemon.pipeline.counters.accepted if daemon.pipeline else 0
            await until(lambda: len(cloud.of_type("observation")) >= accepted - 10, what="the rest")

    asyncio.run(go())
    af = alerts(cloud, "af_followup")
    assert len(af) == 1 and af[0]["state"] == "raised" and af[0]["severity"] == "low"
    assert af[0]["detail"]["window_s"] == 600 and af[0]["detail"]["mean"] >= 0.1
    screens = [o for o in cloud.of_type("observation") if o["code"] == "homecare:af-screening"]
    assert screens and max(o["value"] for o in screens) > 0.5  # the burden the stream measured
    assert any(o["extra"]["label"] == "af" for o in screens)


def test_uplink_down_for_long_is_raised_locally_and_reported_first_when_back(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    cfg = gateway_config(tmp_path, broker.port, devices=WRIST_RULES)
    clock = Clock()

    async def go() -> None:
        async with running(cfg, clock) as daemon:
            assert daemon.care is not None
            care = daemon.care
            broker.stop()
            await until(lambda: daemon.uplink is not None and daemon.uplink.state is not ConnState.CONNECTED)
            clock.offset += 1700  # under the default 30 min: nothing yet
            await asyncio.sleep(0.5)
            assert not [a for a in care.engine.open_alerts() if a.kind == "uplink_down"]
            clock.offset += 200
            await until(lambda: [a for a in care.engine.open_alerts() if a.kind == "uplink_down"], what="raised")
            broker.start()
            await until(
                lambda: [a for a in alerts(cloud, "uplink_down") if a["state"] == "cleared"], timeout=30, what="clear"
            )

    asyncio.run(go())
    down = sorted(alerts(cloud, "uplink_down"), key=lambda a: a["seq"])
    assert [a["state"] for a in down] == ["raised", "cleared"]
    assert down[0]["device_id"] == "gw-test" and down[0]["detail"]["down_s"] >= 1800
    assert cloud.data()[0]["kind"] == "uplink_down"  # what happened offline is the first thing the cloud hears


def test_raw_waveforms_reach_the_bulk_lane_only_when_asked(tmp_path: Path, broker: Mosquitto, cloud: Collector) -> None:
    from simulators.ppg import generate

    rec = generate(30, fs=100.0, hr_bpm=66, seed=5)
    for send in (False, True):
        work = tmp_path / str(send)
        work.mkdir()
        extra = "send_waveforms = true" if send else ""
        cfg = gateway_config(
            work, broker.port, devices=WRIST_RULES, gateway_id=f"gw-{send}".lower(), uplink_extra=extra
        )

        async def go(cfg: Path = cfg) -> None:
            async with running(cfg) as daemon:
                await _feed_recording(daemon, rec, "wrist-w")
                await until(lambda d=daemon: d.outbox is not None and d.outbox.depth_total() == 0, what="all sent")
                await asyncio.sleep(0.5)

        asyncio.run(go())
    waves = cloud.of_type("waveform")
    assert waves and {w["gateway_id"] for w in waves} == {"gw-true"}
    assert sum(len(w["channels"]["ir"]) for w in waves) == len(rec)  # every sample, once
    assert [w["first_index"] for w in waves] == sorted(w["first_index"] for w in waves)
    # the readings computed from them are sent either way
    assert {o["gateway_id"] for o in _gateway_obs(cloud, "8867-4")} == {"gw-false", "gw-true"}
