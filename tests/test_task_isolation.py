"""The daemon's own long-running parts: a bug in one is that part's, never the daemon's.

An exception out of one task of the daemon's TaskGroup cancels every other: the outbox, the devices, the
uplink and the SMS fallback, and the daemon exits (systemd restarts it into the same failure when the bad
state is persisted). The care rules' tick, the clock (its sampling and each of its listeners) and the
rules' timeline are guarded as the daily summary and the SMS fallback are: the bug is logged at ERROR with
its traceback (rate limited), counted in the status's ``bugs``, and the part carries on.

The daemon runs in the test's event loop (the code gatewayd runs) with a real Mosquitto and the RFXtrx
receiver on a pty; the fault is injected into the real part.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.reconnect import ConnState
from gateway.config import load_config
from gateway.daemon import Daemon
from gateway.rules import RuleEngine
from simulators.broker import Mosquitto
from simulators.rfxtrx_sim import RfxtrxSimulator
from tests.helpers import Collector, gateway_config, rfxtrx_device, until

RULES = "\n[rules]\ntick_s = 0.1\n"


@contextlib.asynccontextmanager
async def running(cfg_path: Path) -> AsyncIterator[tuple[Daemon, asyncio.Task[None]]]:
    daemon = Daemon(load_config(cfg_path))
    task = asyncio.create_task(daemon.run())
    try:
        await until(
            lambda: task.done() or (daemon.uplink is not None and daemon.uplink.state is ConnState.CONNECTED),
            what="gateway connected",
        )
        if task.done():
            task.result()
        yield daemon, task
    finally:
        daemon.request_stop()
        async with asyncio.timeout(15):
            await task


def sos_alerts(cloud: Collector) -> list[dict[str, Any]]:
    return [a for a in cloud.of_type("alert") if a["kind"] == "sos"]


def errors(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.ERROR and text in r.getMessage()]


def test_a_bug_in_the_care_rules_tick_is_theirs_and_an_sos_is_still_sent(
    tmp_path: Path,
    broker: Mosquitto,
    cloud: Collector,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    link = tmp_path / "rfx"
    cfg = gateway_config(tmp_path, broker.port, devices=rfxtrx_device(link) + RULES)

    def broken_tick(self: RuleEngine, now: float) -> list[Any]:
        raise KeyError("person-gone")  # the audit's injected fault

    monkeypatch.setattr(RuleEngine, "tick", broken_tick)

    async def go() -> dict[str, Any]:
        async with RfxtrxSimulator(link) as sim, running(cfg) as (daemon, task):
            care = daemon.care
            assert care is not None
            await until(lambda: task.done() or care.bugs.count >= 5, 10, "several failed ticks")
            assert not task.done(), "the daemon carries on"
            await sim.press(0xA1B2C3)
            await until(lambda: sos_alerts(cloud), 20, "the SOS at the cloud while the care rules fail")
            assert not task.done()
            assert care.engine.open_alerts(), "the care desk still tracks the press (for its reminders)"
            return await daemon.status()

    with caplog.at_level(logging.ERROR):
        status = asyncio.run(go())
    assert status["bugs"]["care"] >= 5 and status["bugs"]["total"] >= status["bugs"]["care"]
    logged = errors(caplog, "care rules: tick failed: KeyError")
    assert len(logged) == 1, "the first at ERROR, its repeats rate limited"
    assert logged[0].exc_info is not None, "with its traceback"
