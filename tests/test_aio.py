"""drivers.aio: waiting for what one cancelled, and close paths, without losing one's own cancellation.

Python 3.11's ``asyncio.wait_for`` loses the caller's cancellation when the awaited thing finishes in
the same loop step (python/cpython#86296). The first test shows it on this interpreter (so that the ban
in pyproject.toml keeps a reason); the others pin the helpers that replace it."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import pytest

from drivers.aio import cancel_and_wait, settle


async def _event_loop_task(ev: asyncio.Event, rounds: list[int], use_wait_for: bool) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            if use_wait_for:
                await asyncio.wait_for(ev.wait(), 10)  # noqa: TID251 - the behaviour under test
            else:
                async with asyncio.timeout(10):
                    await ev.wait()
        rounds.append(1)
        ev.clear()


async def _cancel_as_the_event_fires(use_wait_for: bool) -> bool:
    """True when the task ended on its cancellation."""
    ev, rounds = asyncio.Event(), []
    task = asyncio.create_task(_event_loop_task(ev, rounds, use_wait_for))
    await asyncio.sleep(0.01)
    ev.set()
    await asyncio.sleep(0)  # the inner wait completes in this step...
    task.cancel()  # ...and the cancellation arrives in the same one
    done, _ = await asyncio.wait({task}, timeout=1.0)
    await cancel_and_wait(task, limit_s=2.0)
    assert task.done()
    return bool(done)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12 rebuilt wait_for on asyncio.timeout")
def test_wait_for_loses_a_cancellation_that_asyncio_timeout_keeps() -> None:
    assert asyncio.run(_cancel_as_the_event_fires(use_wait_for=True)) is False
    assert asyncio.run(_cancel_as_the_event_fires(use_wait_for=False)) is True


def test_cancel_and_wait_cancels_again_a_task_that_swallowed_its_cancellation() -> None:
    async def stubborn(seen: list[str]) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("swallowed")  # as a lost cancellation looks from outside
        await asyncio.sleep(10)

    async def go() -> tuple[list[str], bool, float]:
        seen: list[str] = []
        task = asyncio.create_task(stubborn(seen))
        await asyncio.sleep(0)
        t0 = asyncio.get_running_loop().time()
        await cancel_and_wait(task, limit_s=5.0)
        return seen, task.cancelled(), asyncio.get_running_loop().time() - t0

    seen, cancelled, took = asyncio.run(go())
    assert seen == ["swallowed"] and cancelled
    assert took < 5.0  # ended by the second cancellation, not by the limit


def test_settle_drops_the_expected_errors_raises_others_and_is_bounded() -> None:
    async def fails(exc: BaseException) -> None:
        await asyncio.sleep(0)
        raise exc

    async def go() -> None:
        await settle(fails(EOFError("bus gone")), 1.0, (OSError, EOFError))
        with pytest.raises(ZeroDivisionError):
            await settle(fails(ZeroDivisionError()), 1.0, (OSError, EOFError))
        never = asyncio.get_running_loop().create_future()
        t0 = asyncio.get_running_loop().time()
        await settle(never, 0.1, ())
        assert never.cancelled() and asyncio.get_running_loop().time() - t0 < 1.0

    asyncio.run(go())


def test_settle_lets_the_callers_cancellation_through() -> None:
    async def go() -> str:
        closing = asyncio.create_task(settle(asyncio.sleep(10), 10.0, ()))
        await asyncio.sleep(0.01)
        closing.cancel()
        try:
            await closing
        except asyncio.CancelledError:
            return "cancelled"
        return "carried on"

    assert asyncio.run(go()) == "cancelled"
