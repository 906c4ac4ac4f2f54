"""The reconnection component: backoff with full jitter and a cap, states, error classes."""

from __future__ import annotations

import asyncio
import random

import pytest

from drivers.base import DeviceConfigError, TransientDeviceError
from drivers.reconnect import Backoff, ConnState, ErrorClass, Reconnector, classify


def test_full_jitter_stays_under_an_exponential_ceiling_and_the_cap() -> None:
    b = Backoff(base_s=0.5, cap_s=8.0, rng=random.Random(1))
    ceilings = []
    for _ in range(12):
        ceiling = b.ceiling()
        delay = b.next_delay()
        assert 0.0 <= delay <= ceiling
        ceilings.append(ceiling)
    assert ceilings[:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert max(ceilings) == 8.0
    b.reset()
    assert b.ceiling() == 0.5


def test_jitter_spreads_a_fleet_instead_of_lockstep() -> None:
    # 1,000 gateways losing the broker at once: their 6th retry is spread over the whole window.
    delays = []
    for i in range(1000):
        b = Backoff(base_s=1.0, cap_s=30.0, rng=random.Random(i))
        for _ in range(5):
            b.next_delay()
        delays.append(b.next_delay())
    assert min(delays) < 3.0 and max(delays) > 27.0
    buckets = [0] * 10
    for d in delays:
        buckets[min(9, int(d / 3.0))] += 1
    assert max(buckets) < 200, f"not spread evenly: {buckets}"


def test_errors_are_classified_by_type() -> None:
    assert classify(TransientDeviceError("x")) is ErrorClass.TRANSIENT
    assert classify(ConnectionResetError()) is ErrorClass.TRANSIENT
    assert classify(DeviceConfigError("x")) is ErrorClass.CONFIGURATION
    assert classify(PermissionError()) is ErrorClass.CONFIGURATION


def test_reconnector_states_backoff_and_config_retry() -> None:
    slept: list[float] = []
    states: list[tuple[ConnState, type[BaseException] | None]] = []
    script = [TransientDeviceError("gone"), TransientDeviceError("gone"), DeviceConfigError("bad"), "ok", "stop"]
    now = [0.0]

    async def fake_sleep(d: float) -> None:
        slept.append(d)
        now[0] += d

    async def go() -> Reconnector:
        rc: Reconnector

        async def session() -> None:
            step = script.pop(0)
            if isinstance(step, BaseException):
                raise step
            if step == "ok":
                rc.mark_connected()
                now[0] += 100.0  # a connection that held: backoff resets
                raise TransientDeviceError("dropped")
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # the gateway stopping (a CancelledError nobody asked for is a bug, not a stop)
            await asyncio.sleep(0)

        rc = Reconnector(
            "t",
            session,
            backoff=Backoff(base_s=1.0, cap_s=4.0, rng=random.Random(3)),
            config_retry_s=30.0,
            stable_after_s=10.0,
            on_state=lambda s, e: states.append((s, type(e) if e else None)),
            clock=lambda: now[0],
            sleep=fake_sleep,
        )
        with pytest.raises(asyncio.CancelledError):
            await rc.run()
        return rc

    rc = asyncio.run(go())
    assert slept[2] == 30.0, "configuration errors wait the slow fixed delay"
    assert slept[0] <= 1.0 and slept[1] <= 2.0
    assert slept[3] <= 1.0, "backoff reset after a connection that held"
    assert rc.connects == 1 and rc.unexpected_disconnects == 1 and rc.failures == 4
    seen = [s for s, _ in states]
    assert ConnState.CONNECTED in seen and seen[-1] is ConnState.STOPPED
    assert (ConnState.BACKOFF, DeviceConfigError) in states
