"""A PUBLISH the broker refuses in its PUBACK (MQTT 5 reason code >= 0x80) is sent again on the same
connection after a backoff. The refusal comes from a real Mosquitto: its ACL denies the topic (PUBACK
0x87 not authorized), then a rewritten ACL, reloaded on SIGHUP without dropping clients, allows it."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.base import ButtonPress
from drivers.reconnect import ConnState
from gateway import uplink
from gateway.outbox import Lane, StoredMessage
from simulators.broker import Mosquitto
from tests.helpers import Collector, contract_cloud, until
from tests.test_uplink import GW, gateway, hr, plain

BASE = f"homecare/v1/{GW}"
# Anonymous clients (the gateway and the cloud's viewer) read everything; the gateway may write its
# status and the observations of wrist-1 only: its alerts and wrist-2's readings are refused.
ACL_DENYING = f"topic read homecare/v1/#\ntopic write {BASE}/status\ntopic write {BASE}/obs/wrist-1\n"
ACL_ALLOWING = f"topic read homecare/v1/#\ntopic write {BASE}/#\n"


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(workdir=tmp_path / "aclbroker", acl=ACL_DENYING)
    b.start()
    try:
        yield b
    finally:
        b.kill()


@pytest.fixture
def acl_cloud(acl_broker: Mosquitto) -> Iterator[Collector]:
    with contract_cloud(acl_broker.port) as collector:
        yield collector


def test_a_refused_alert_is_sent_again_on_the_same_connection(
    tmp_path: Path, acl_broker: Mosquitto, acl_cloud: Collector
) -> None:
    """The audit's bug: the refused alert stayed in the outbox, the per-connection cursor past it, so it
    went again only after a reconnect (days away, maybe). Now it goes again on this connection; the
    refusals do not loop, and other lanes and devices flow meanwhile."""
    refusing_s = 4.0

    async def go() -> dict[str, Any]:
        async with gateway(tmp_path, plain(acl_broker.port)) as (ob, up, pl):
            await until(lambda: up.state is ConnState.CONNECTED, what="connected")
            since, connects = up.connected_since, up.reconnector.connects
            t0, m0 = time.time(), time.monotonic()
            pl.sink(ButtonPress("sos-1", t0, "refused-press"))
            for i in range(5):
                pl.sink(hr("wrist-2", i, t0))  # refused: this device's topic is denied
            await until(lambda: up.rejected >= 6, 10, "the alert and wrist-2's readings refused")
            rejected_first = up.rejected
            # Meanwhile another device's readings go through on the same connection.
            for i in range(5):
                pl.sink(hr("wrist-1", i, t0))
            await until(lambda: up.acked >= 5, 10, "wrist-1's readings delivered")
            await asyncio.sleep(refusing_s)  # the broker keeps refusing
            held = {lane.name: ob.depth[lane] for lane in Lane}
            rejected_while_refusing, refusing_for = up.rejected, time.monotonic() - m0
            acl_broker.set_acl(ACL_ALLOWING)
            await until(lambda: ob.depth_total() == 0, 30, "the refused messages delivered")
            return {
                "held": held,
                "rejected_first": rejected_first,
                "rejected_while_refusing": rejected_while_refusing,
                "refusing_for": refusing_for,
                "same_connection": (up.connected_since, up.reconnector.connects) == (since, connects),
                "failures": up.reconnector.failures,
            }

    r = asyncio.run(go())
    assert r["held"]["ALERT"] == 1 and r["held"]["OBSERVATION"] == 5, "refused messages stay in the outbox"
    assert r["same_connection"] and r["failures"] == 0, "delivered without a reconnect"
    # Backoff, not a loop: the k-th retry comes at least 1 + 2 + ... + 2**(k-1) = 2**k - 1 s after the
    # first refusal (the waits' lower bounds, which a slow machine only lengthens), for each of the 6.
    retries = math.floor(math.log2(r["refusing_for"] + 1))
    assert r["rejected_while_refusing"] - r["rejected_first"] <= 6 * retries, r
    acl_cloud.wait(lambda c: c.of_type("alert"), 10, "the alert at the cloud")
    alert = acl_cloud.of_type("alert")[0]
    assert alert["kind"] == "sos" and alert["drill"] is False
    acl_cloud.wait(lambda c: len(c.of_type("observation")) >= 10, 10, "every reading at the cloud")
    obs = acl_cloud.of_type("observation")
    wrist2 = [d["seq"] for d in obs if d["device_id"] == "wrist-2"]
    assert len(set(wrist2)) == 5 and wrist2 == sorted(wrist2), "wrist-2's readings, in order"
    first_wrist2 = next(i for i, d in enumerate(obs) if d["device_id"] == "wrist-2")
    assert sum(d["device_id"] == "wrist-1" for d in obs[:first_wrist2]) == 5, "wrist-1 did not wait for wrist-2"


def _msg(seq: int, lane: Lane = Lane.ALERT, device: str = "sos-1") -> StoredMessage:
    return StoredMessage(seq, lane, f"t/{device}", b"{}", device, 0.0, False)


def test_refusals_back_off_per_lane_and_device_and_give_way_at_the_cap() -> None:
    """The bookkeeping the pump consults: when a refused message goes again, and which lane (or
    observation device) takes no new messages meanwhile."""
    book = uplink.Refusals(hold_max=3, rng=random.Random(1))
    now = 100.0
    waits = []
    for _ in range(8):  # the same alert refused again and again: the wait doubles up to the cap
        wait = book.refused(_msg(1), now)
        waits.append(wait)
        assert book.due(Lane.ALERT, now) == []
        now += wait
        assert book.due(Lane.ALERT, now) == [((Lane.ALERT, ""), [1])]
        book.taken((Lane.ALERT, ""), [1])
    assert 1.0 <= waits[0] <= 2.0 and 2.0 <= waits[1] <= 4.0
    assert all(uplink.RETRY_CAP_S / 2 <= w <= uplink.RETRY_CAP_S for w in waits[-2:])
    assert not book.holds_back((Lane.ALERT, "")), "new alerts never wait for a refused one"
    assert book.accepted(_msg(1), now) and book.waiting_in(Lane.ALERT) == 0 and not book.keys

    # A second refusal while the first waits joins its retry, without doubling the wait.
    book.refused(_msg(10, Lane.OBSERVATION, "wrist-2"), now)
    due = book.keys[(Lane.OBSERVATION, "wrist-2")].due
    assert book.next_due(now) == due and book.next_due(due) is None
    book.refused(_msg(11, Lane.OBSERVATION, "wrist-2"), now + 0.5)
    assert book.keys[(Lane.OBSERVATION, "wrist-2")].due == due and book.waiting_in(Lane.OBSERVATION) == 2
    assert book.holds_back((Lane.OBSERVATION, "wrist-2")) and not book.holds_back((Lane.OBSERVATION, "wrist-1"))
    # The broker accepts one of them again: the other goes at once, and the backoff starts over.
    book.taken((Lane.OBSERVATION, "wrist-2"), [10])
    assert book.accepted(_msg(10, Lane.OBSERVATION, "wrist-2"), now + 1)
    assert book.due(Lane.OBSERVATION, now + 1) == [((Lane.OBSERVATION, "wrist-2"), [11])]
    assert not book.accepted(_msg(12, Lane.OBSERVATION, "wrist-2"), now + 1), "never refused"

    # One bulk message refused for good holds its lane back until its backoff reaches the cap, then only
    # itself (retried every minute or so); hold_max refused ones hold the lane back for good.
    key = (Lane.BULK, "")
    for _ in range(uplink.RETRY_GIVE_WAY_AFTER):
        assert book.holds_back(key) or not book.keys.get(key)
        now += book.refused(_msg(20, Lane.BULK, "cuff"), now)
        book.taken(key, [20])
    assert not book.holds_back(key)
    book.refused(_msg(21, Lane.BULK, "cuff"), now)
    book.refused(_msg(22, Lane.BULK, "cuff-2"), now)
    assert book.holds_back(key), "three refused: hold_max"
    book.forget(key, {20, 21, 22})  # gone from the store (evicted)
    assert key not in book.keys and not book.holds_back(key)
