"""Outbox + uplink + pipeline (the real components, in-process) against a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.base import ButtonPress, Measurement
from drivers.reconnect import ConnState, link_state
from gateway.config import UplinkSection
from gateway.messages import Topics
from gateway.outbox import Outbox
from gateway.pipeline import Pipeline
from gateway.uplink import MaterialError, Uplink, load_material
from simulators.broker import Mosquitto, TlsFiles
from simulators.viewer import Viewer
from tests.helpers import Collector, make_pki, until

GW = "gw-test"


def plain(port: int, **kw: Any) -> UplinkSection:
    return UplinkSection(host="127.0.0.1", port=port, tls=False, backoff_base_s=0.05, backoff_cap_s=0.5, **kw)


@contextlib.asynccontextmanager
async def gateway(
    tmp_path: Path, uplink_cfg: UplinkSection, **outbox_kw: Any
) -> AsyncIterator[tuple[Outbox, Uplink, Pipeline]]:
    async with Outbox(tmp_path / "outbox.sqlite3", **outbox_kw) as ob:
        up = Uplink(
            uplink_cfg,
            GW,
            ob,
            status_body=lambda: {
                "last_seq": ob.next_seq - 1,
                "evicted_ranges": [list(r) for r in ob.evicted_ranges],
                "evicted_total": ob.counters.evicted_total,
            },
        )
        pl = Pipeline(Topics("homecare/v1", GW), ob)
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(ob.run()), tg.create_task(up.run())]
            try:
                yield ob, up, pl
            finally:
                for t in tasks:
                    t.cancel()


def hr(device: str, i: int, t0: float) -> Measurement:
    return Measurement(device, "8867-4", 60.0 + i % 40, "/min", t0 + i * 0.01, quality=0.9)


def test_broker_outage_while_presses_and_readings_flow_loses_nothing(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    devices = ["wrist-1", "wrist-2", "cuff-1"]

    async def go() -> tuple[int, int]:
        async with gateway(tmp_path, plain(broker.port)) as (ob, up, pl):
            await until(lambda: up.state is ConnState.CONNECTED, what="first connection")
            t0 = time.time()
            sent = 0
            presses = 0
            for step in range(60):
                for d in devices:
                    for _ in range(10):
                        pl.sink(hr(d, sent, t0))
                        sent += 1
                if step % 10 == 5:
                    pl.sink(ButtonPress("sos-1", time.time(), f"p{step}"))
                    presses += 1
                if step == 15:
                    broker.stop()  # outage: readings and presses keep coming
                if step == 40:
                    broker.start()
                await asyncio.sleep(0.05)
            await until(lambda: ob.depth_total() == 0, 60, "the backlog to drain")
            return sent, presses

    sent, presses = asyncio.run(go())
    try:
        # distinct seqs: QoS 1 duplicates of the outage must not count towards the total
        cloud.wait_while_arriving(lambda c: len(c.seqs()) >= sent + presses, what="every message at the cloud")
    finally:
        got = sorted(cloud.seqs())
        missing = sorted(set(range(1, sent + presses + 1)) - set(got))
        print("received", len(got), "missing", len(missing), missing[:5], missing[-5:])
    data = cloud.data()
    # QoS 1 is at-least-once: a message in flight when the broker went down is sent again. Its
    # duplicate carries the same seq and msg_id, which is how the cloud drops it.
    first: dict[int, dict[str, Any]] = {}
    for d in data:
        if d["seq"] in first:
            assert d["msg_id"] == first[d["seq"]]["msg_id"], "a retry keeps its msg_id"
        else:
            first[d["seq"]] = d
    assert sorted(first) == list(range(1, sent + presses + 1)), "seq contiguous: nothing lost"
    assert len({d["msg_id"] for d in first.values()}) == len(first)
    unique = list(first.values())
    arrival = sorted(first.values(), key=lambda d: data.index(d))
    for dev in devices:
        values = [d["seq"] for d in arrival if d["device_id"] == dev]
        assert values == sorted(values), f"per-device order kept for {dev}"
    alerts = [d for d in unique if d["type"] == "alert"]
    assert len(alerts) == presses and all(a["kind"] == "sos" and a["drill"] is False for a in alerts)


def test_an_alert_overtakes_a_backlog_being_drained(tmp_path: Path, broker: Mosquitto, cloud: Collector) -> None:
    n = 20_000

    async def go() -> None:
        broker.stop()
        async with gateway(tmp_path, plain(broker.port, inflight_window=100)) as (ob, up, pl):
            t0 = time.time()
            for i in range(n):
                pl.sink(hr("wrist-1", i, t0))
            await until(lambda: ob.depth_total() == n, what="backlog committed")
            broker.start()
            await until(lambda: up.acked > 2000, what="the drain to be under way")
            pl.sink(ButtonPress("sos-1", time.time(), "during-drain"))
            await until(lambda: ob.depth_total() == 0, 120, "the drain to finish")

    asyncio.run(go())
    cloud.wait_while_arriving(lambda c: len(c.seqs()) >= n + 1, what="all messages")
    order = cloud.data()
    pos = next(i for i, d in enumerate(order) if d["type"] == "alert")
    behind = len(order) - pos - 1
    assert behind > n // 2, f"the alert should overtake most of the backlog, only {behind} came after it"
    assert sorted({d["seq"] for d in order}) == list(range(1, n + 2))


def test_live_readings_of_a_device_are_not_starved_by_another_devices_backlog(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    n = 20_000

    async def go() -> int:
        broker.stop()
        async with gateway(tmp_path, plain(broker.port, inflight_window=100)) as (ob, up, pl):
            t0 = time.time() - 3600
            for i in range(n):
                pl.sink(hr("wrist-backlog", i, t0))
            await until(lambda: ob.depth_total() == n, what="backlog committed")
            broker.start()
            await until(lambda: up.acked > 1000, what="the drain to be under way")
            live = 0
            while ob.depth_total() > 0 and live < 30:
                pl.sink(hr("wrist-live", live, time.time()))
                live += 1
                await asyncio.sleep(0.02)
            await until(lambda: ob.depth_total() == 0, 120, "the drain to finish")
            return live

    live = asyncio.run(go())
    cloud.wait_while_arriving(lambda c: len(c.seqs()) >= n + live, what="all messages")
    order = cloud.data()
    live_pos = [i for i, d in enumerate(order) if d["device_id"] == "wrist-live"]
    last_backlog = max(i for i, d in enumerate(order) if d["device_id"] == "wrist-backlog")
    assert live >= 5, "the drain was too quick to test anything"
    assert sum(p < last_backlog for p in live_pos) >= live // 2, "live readings went out while the backlog drained"
    for dev in ("wrist-live", "wrist-backlog"):
        seqs = [d["seq"] for d in order if d["device_id"] == dev]
        assert seqs == sorted(seqs), f"per-device order kept for {dev}"
    assert all(not d["historical"] for d in order if d["device_id"] == "wrist-live")
    assert all(d["historical"] for d in order if d["device_id"] == "wrist-backlog")


def test_live_readings_cost_one_store_query_per_commit_not_one_per_lane(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    """Live readings one at a time: each commit wakes the uplink, which asks the store only for what
    can be there (lanes whose every stored message is in flight are not queried)."""
    n = 20

    async def go() -> tuple[int, int]:
        async with gateway(tmp_path, plain(broker.port)) as (ob, up, pl):
            await until(lambda: up.reconnector.state is ConnState.CONNECTED, what="connected")
            await until(lambda: ob.depth_total() == 0, what="nothing waiting")
            f0, c0 = ob.counters.fetches, ob.counters.commits
            for i in range(n):
                pl.sink(hr("wrist", i, time.time()))
                await until(lambda d=i + 1: up.acked >= d, what="the reading acked")
            await until(lambda: ob.depth_total() == 0, what="the last one deleted")
            return ob.counters.fetches - f0, ob.counters.commits - c0

    fetches, commits = asyncio.run(go())
    cloud.wait(lambda c: len(c.seqs()) >= n, 10, "every message")
    # Each reading: one commit adding it (and deleting the one before), one query for its device's
    # lane. Before, every commit that added a message queried four lanes.
    assert commits >= n and fetches <= n + 3, (fetches, commits)


def test_disk_budget_reached_keeps_alerts_and_reports_evictions(
    tmp_path: Path, broker: Mosquitto, cloud: Collector
) -> None:
    async def go() -> int:
        broker.stop()
        async with gateway(tmp_path, plain(broker.port), max_bytes=200_000) as (ob, up, pl):
            t0 = time.time()
            for i in range(3000):
                pl.sink(hr("wrist-1", i, t0))
                if i % 300 == 0:
                    pl.sink(ButtonPress("sos-1", t0 + i, f"p{i}"))
                if i % 500 == 0:
                    await asyncio.sleep(0.06)
            await until(lambda: ob.next_seq > 3010, what="all committed")
            assert ob.counters.evicted_total > 0
            broker.start()
            await until(lambda: ob.depth_total() == 0, 60, "drain")
            await asyncio.sleep(0.3)
            return ob.next_seq - 1

    last = asyncio.run(go())
    cloud.wait(lambda c: any(d.get("type") == "status" and d.get("evicted_total") for _, _, d, _ in c.poll()), 20)
    status = [d for _, _, d, _ in cloud.poll() if d.get("type") == "status" and d.get("state") == "online"][-1]
    evicted = {s for a, b in status["evicted_ranges"] for s in range(a, b + 1)}
    cloud.wait(lambda c: len(c.seqs() | evicted) >= last, 20, "every kept message")
    received = cloud.seqs()
    assert len(cloud.of_type("alert")) == 10, "no alert evicted"
    assert received | evicted == set(range(1, last + 1)), "every seq arrived or was reported evicted"
    assert not received & evicted
    assert status["evicted_total"] == len(evicted)


def test_plaintext_is_refused_unless_tls_is_switched_off(tmp_path: Path, broker: Mosquitto, cloud: Collector) -> None:
    """The broker listens in plaintext; the gateway's default is TLS: nothing may leave in clear."""

    async def go() -> tuple[int, str]:
        cfg = UplinkSection(host="127.0.0.1", port=broker.port, backoff_base_s=0.05, backoff_cap_s=0.2)
        assert cfg.tls is True
        async with gateway(tmp_path, cfg) as (ob, up, pl):
            pl.sink(ButtonPress("sos-1", time.time(), "p1"))
            await until(lambda: up.reconnector.failures >= 3, what="failed TLS attempts")
            return ob.depth_total(), str(up.reconnector.last_error)

    depth, err = asyncio.run(go())
    assert depth == 1, "the alert stays in the outbox"
    assert cloud.of_type("alert") == []
    assert "127.0.0.1" in err


def _tls_broker(tmp_path: Path, require_cert: bool) -> tuple[Mosquitto, dict[str, Path]]:
    pki = make_pki(tmp_path / "pki")
    b = Mosquitto(
        workdir=tmp_path / "tlsbroker",
        tls=TlsFiles(pki["ca"], pki["server_cert"], pki["server_key"], require_certificate=require_cert),
    )
    b.start()
    return b, pki


def _tls_roundtrip(tmp_path: Path, b: Mosquitto, cfg: UplinkSection) -> tuple[int, str | None]:
    async def go() -> tuple[int, str | None]:
        async with gateway(tmp_path, cfg) as (ob, up, pl):
            pl.sink(ButtonPress("sos-1", time.time(), "tls"))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not (ob.depth_total() == 0 and up.acked):
                if up.reconnector.failures >= 3:
                    break
                await asyncio.sleep(0.05)
            err = str(up.reconnector.last_error) if up.reconnector.last_error else None
            return ob.depth_total(), err

    return asyncio.run(go())


def test_tls_with_a_test_ca_delivers_and_an_untrusted_server_is_refused(tmp_path: Path) -> None:
    b, pki = _tls_broker(tmp_path, require_cert=False)
    try:
        trusted = UplinkSection(
            host="localhost", port=b.port, ca_file=pki["ca"], backoff_base_s=0.05, backoff_cap_s=0.2
        )
        depth, err = _tls_roundtrip(tmp_path / "a", b, trusted)
        assert depth == 0 and err is None
        # Same broker, but the gateway trusts only the system store: the test CA is unknown.
        untrusted = UplinkSection(host="localhost", port=b.port, backoff_base_s=0.05, backoff_cap_s=0.2)
        depth, err = _tls_roundtrip(tmp_path / "b", b, untrusted)
        assert depth == 1 and err is not None and "not trusted" in err
        # The right CA, the wrong name: hostname verification is on.
        wrong_name = UplinkSection(
            host="127.0.0.2", port=b.port, ca_file=pki["ca"], backoff_base_s=0.05, backoff_cap_s=0.2
        )
        depth, err = _tls_roundtrip(tmp_path / "c", b, wrong_name)
        assert depth == 1
    finally:
        b.kill()


def test_mutual_tls_against_require_certificate(tmp_path: Path) -> None:
    b, pki = _tls_broker(tmp_path, require_cert=True)
    try:
        without = UplinkSection(
            host="localhost", port=b.port, ca_file=pki["ca"], backoff_base_s=0.05, backoff_cap_s=0.2
        )
        depth, err = _tls_roundtrip(tmp_path / "a", b, without)
        assert depth == 1 and err is not None, "no client certificate: refused"
        with_cert = UplinkSection(
            host="localhost",
            port=b.port,
            ca_file=pki["ca"],
            cert_file=pki["client_cert"],
            key_file=pki["client_key"],
            backoff_base_s=0.05,
            backoff_cap_s=0.2,
        )
        depth, err = _tls_roundtrip(tmp_path / "b", b, with_cert)
        assert depth == 0 and err is None
    finally:
        b.kill()


def test_unloadable_tls_material_puts_the_uplink_in_error_until_it_loads(tmp_path: Path) -> None:
    b, pki = _tls_broker(tmp_path, require_cert=True)
    key = tmp_path / "client.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    cfg = UplinkSection(
        host="localhost",
        port=b.port,
        ca_file=pki["ca"],
        cert_file=pki["client_cert"],
        key_file=key,
        backoff_base_s=0.05,
        backoff_cap_s=0.2,
    )
    with pytest.raises(MaterialError, match="TLS material cannot be loaded"):
        load_material(cfg)  # what gatewayd --check reports
    good_key = Path(pki["client_key"]).read_bytes()

    async def go() -> tuple[ConnState, BaseException | None, int, int]:
        # Constructing the uplink does not raise (the daemon, its devices and SMS fallback start).
        async with gateway(tmp_path / "gw", cfg) as (ob, up, pl):
            up.reconnector.config_retry_s = 0.3
            pl.sink(ButtonPress("sos-1", time.time(), "tls"))
            await until(lambda: up.reconnector.last_error is not None, 10, "the uplink's error")
            state, error, depth = up.state, up.reconnector.last_error, ob.depth_total()
            key.write_bytes(good_key)  # the technician fixes the file
            await until(lambda: ob.depth_total() == 0 and up.acked, 15, "delivery once the key loads")
            return state, error, depth, up.acked

    try:
        state, error, depth, acked = asyncio.run(go())
    finally:
        b.kill()
    # a configuration error: device/state-like "error", retried every config_retry_s
    assert isinstance(error, MaterialError) and link_state(state, error) == ("error", str(error))
    assert depth >= 1 and acked >= 1, "the press waited in the outbox and went out once the key loaded"


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_both_protocol_versions_deliver_with_will_and_birth(
    tmp_path: Path, broker: Mosquitto, cloud: Collector, protocol: str
) -> None:
    async def go() -> None:
        async with gateway(tmp_path, plain(broker.port, protocol=protocol)) as (ob, up, pl):
            pl.sink(hr("wrist-1", 0, time.time()))
            await until(lambda: up.acked >= 1 and ob.depth_total() == 0, what="delivery")

    asyncio.run(go())
    cloud.wait(lambda c: c.of_type("observation"), 10)

    def states() -> list[str]:
        return [d["state"] for _, t, d, _ in cloud.poll() if t.endswith("/status")]

    # the orderly stop's "offline" may still be on its way
    cloud.wait(lambda c: states() and states()[-1] == "offline", 10, "offline status")
    assert states()[0] == "online" and states()[-1] == "offline", states()
    # The retained status seen by a newcomer is the last word: offline.
    late = Viewer("127.0.0.1", broker.port, f"homecare/v1/{GW}/status")
    late.start()
    try:
        _, _, doc, retained = late.messages.get(timeout=10)
        assert retained and doc["state"] == "offline"
    finally:
        late.stop()


def test_username_and_password_from_a_file(tmp_path: Path) -> None:
    b = Mosquitto(workdir=tmp_path / "authbroker", users={"gw-test": "s3cret-from-file"})
    b.start()
    try:
        secret = tmp_path / "mqtt-password"
        secret.write_text("s3cret-from-file\n")  # a trailing newline, as editors leave it
        secret.chmod(0o600)
        good = plain(b.port, username="gw-test", password_file=secret)
        depth, err = _tls_roundtrip(tmp_path / "a", b, good)
        assert depth == 0 and err is None
        wrong = tmp_path / "wrong-password"
        wrong.write_text("guess")
        bad = plain(b.port, username="gw-test", password_file=wrong)
        depth, err = _tls_roundtrip(tmp_path / "b", b, bad)
        assert depth == 1 and err is not None and "refused" in err
    finally:
        b.kill()
