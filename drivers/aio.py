"""Waiting for tasks one has cancelled, without swallowing one's own cancellation.

The project does not use ``asyncio.wait_for`` (ruff bans it): on Python 3.11, the Python of Debian 12
and Raspberry Pi OS, it swallows the caller's cancellation when the awaited thing finishes in the same
loop step (python/cpython#86296, fixed by 3.12's rewrite on ``asyncio.timeout``). A loop waiting on an
event with it, cancelled just as the event is set, carries on for ever, and whoever awaits it after the
cancel hangs. ``async with asyncio.timeout(s):`` is exact on 3.11; :func:`settle` is for close paths.

``task.cancel(); with suppress(CancelledError): await task`` is a classic trap: when the *caller* is
cancelled while it waits (the gateway stopping), the suppress eats that cancellation too, and the
caller carries on (a reconnect loop reconnects, a stop never ends). :func:`cancel_and_wait` waits with
:func:`asyncio.wait`, which never raises the children's errors and lets the caller's cancellation through.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger(__name__)


RECANCEL_S = 0.25  # a task still running this long after its cancellation is cancelled again


async def cancel_and_wait(*futures: asyncio.Future[Any], limit_s: float = 10.0) -> None:
    """Cancel ``futures`` and wait until each has ended (at most ``limit_s``), retrieving their
    outcome so that none is reported as never retrieved. The caller's own cancellation propagates.

    A task that swallowed its cancellation (Python 3.11's ``asyncio.wait_for`` does when its inner
    awaitable finishes in the same step, as bleak's calls on a vanishing bus do) is cancelled again
    every :data:`RECANCEL_S`, so one lost cancellation cannot keep a stop waiting."""
    pending = {f for f in futures if f is not None}
    everything = list(pending)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while pending:
        for f in pending:
            f.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_S, left))
    for f in pending:
        log.error("%s did not end within %.0f s of being cancelled", _name(f), limit_s)
    for f in everything:
        if f.done() and not f.cancelled():
            f.exception()


def _name(f: asyncio.Future[Any]) -> str:
    return f.get_name() if isinstance(f, asyncio.Task) else repr(f)


def cancelling() -> bool:
    """True when the current task has been asked to stop (``Task.cancelling()``): a loop that caught
    an ordinary error must then end instead of retrying, whatever the error says."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def settle(awaitable: Awaitable[Any], limit_s: float, expected: tuple[type[BaseException], ...]) -> None:
    """Wait at most ``limit_s`` for ``awaitable`` on a close path (a bus disconnecting): its
    ``expected`` errors and its own cancellation are the thing being closed, not news, and are dropped;
    any other error is raised (a bug). What is still running after ``limit_s`` is cancelled. The
    caller's cancellation propagates."""
    fut = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({fut}, timeout=limit_s)
    if not done:
        await cancel_and_wait(fut, limit_s=1.0)
    elif not fut.cancelled():
        exc = fut.exception()
        if exc is not None and not isinstance(exc, expected):
            raise exc
