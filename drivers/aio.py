"""Waiting for tasks one has cancelled, without swallowing one's own cancellation.

``task.cancel(); with suppress(CancelledError): await task`` is a classic trap: when the *caller* is
cancelled while it waits (the gateway stopping), the suppress eats that cancellation too, and the
caller carries on (a reconnect loop reconnects, a stop never ends). :func:`cancel_and_wait` waits with
:func:`asyncio.wait`, which never raises the children's errors and lets the caller's cancellation through.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(*futures: asyncio.Future[Any], limit_s: float | None = 10.0) -> None:
    """Cancel ``futures`` and wait until each has ended (at most ``limit_s``), retrieving their
    outcome so that none is reported as never retrieved. The caller's own cancellation propagates."""
    pending = [f for f in futures if f is not None]
    for f in pending:
        f.cancel()
    if not pending:
        return
    _, stuck = await asyncio.wait(pending, timeout=limit_s)
    for f in stuck:
        log.error("%s did not end within %.0f s of being cancelled", _name(f), limit_s or 0)
    for f in pending:
        if f.done() and not f.cancelled():
            f.exception()


def _name(f: asyncio.Future[Any]) -> str:
    return f.get_name() if isinstance(f, asyncio.Task) else repr(f)


def cancelling() -> bool:
    """True when the current task has been asked to stop (``Task.cancelling()``): a loop that caught
    an ordinary error must then end instead of retrying, whatever the error says."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
