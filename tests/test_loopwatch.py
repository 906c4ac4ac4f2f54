"""The event-loop watch (gateway/loopwatch.py): a callback that blocks the loop is seen and counted, a
loop that only sleeps is not."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from gateway.loopwatch import LoopWatch


def test_a_callback_that_blocks_the_loop_past_the_watch_s_wakeup_is_a_stall(caplog: pytest.LogCaptureFixture) -> None:
    watch = LoopWatch(interval_s=0.05, stall_s=0.2)

    async def go() -> None:
        task = asyncio.create_task(watch.run())
        await asyncio.sleep(0.2)
        quiet = (watch.stalls, watch.max_lag_s)
        for _ in range(2):
            time.sleep(0.6)  # noqa: ASYNC251 - the blocking call on the loop under test: the watch wakes late
            await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert quiet[0] == 0 and quiet[1] < 0.2, "a loop that only sleeps has no stall"

    with caplog.at_level(logging.DEBUG, logger="gateway.loopwatch"):
        asyncio.run(go())
    st = watch.status()
    assert watch.stalls == 2 and st["stalls"] == 2
    assert 500 <= st["max_lag_ms"] < 5000 and st["last_stall_ms"] >= 500, st
    levels = [r.levelno for r in caplog.records if r.name == "gateway.loopwatch"]
    assert levels == [logging.WARNING, logging.DEBUG], "the first stall at WARNING, repeats at DEBUG"


def test_a_lateness_under_the_stall_threshold_is_only_the_longest_lag() -> None:
    watch = LoopWatch(stall_s=0.25)
    watch.note(0.1)
    watch.note(0.02)
    assert watch.stalls == 0 and watch.status()["max_lag_ms"] == 100.0 and watch.status()["last_stall_ms"] is None
