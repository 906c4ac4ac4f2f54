"""How late the daemon's event loop wakes: every part runs on it, the SOS path too, so a callback that
blocks it (a slow fsync on a worn SD card, a long computation, a bug) delays every press and reading
behind it. :class:`LoopWatch` sleeps :data:`INTERVAL_S` at a time and measures, on the loop's monotonic
clock, how much later than asked it woke: that lateness is the longest any callback could have waited
during the sleep's last moment. A lateness of :data:`STALL_S` or more is a stall: counted, the first one
logged at WARNING and the rest at DEBUG. ``gatewayctl status`` shows ``loop``; ``bench/soak.py`` reports
the longest one of a run.

It sees a stall only when it overlaps the moment the watch was due to wake, so a stall shorter than
:data:`INTERVAL_S` may go unseen: the figures are a lower bound, cheap enough (one wakeup a second) to run
always.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

INTERVAL_S = 1.0  # one wakeup a second (bench/wakeup_floor.py: a few tens of microseconds each)
# A quarter of a second: well above a Pi's normal scheduling jitter (milliseconds), and the delay a
# person pressing SOS would not notice; a longer one is worth a line in the log.
STALL_S = 0.25


class LoopWatch:
    """Run :meth:`run` in the daemon's TaskGroup; :meth:`status` for ``gatewayctl status``."""

    def __init__(self, *, interval_s: float = INTERVAL_S, stall_s: float = STALL_S) -> None:
        self.interval_s = interval_s
        self.stall_s = stall_s
        self.max_lag_s = 0.0
        self.stalls = 0
        self.last_stall_s: float | None = None
        self.last_stall_mono: float | None = None  # time.monotonic() when the last stall ended

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.note(loop.time() - due)

    def note(self, lag_s: float) -> None:
        """One wakeup ``lag_s`` late."""
        self.max_lag_s = max(self.max_lag_s, lag_s)
        if lag_s < self.stall_s:
            return
        self.stalls += 1
        self.last_stall_s, self.last_stall_mono = lag_s, time.monotonic()
        level = logging.WARNING if self.stalls == 1 else logging.DEBUG
        log.log(
            level,
            "event loop: blocked for at least %.0f ms (every device and the SOS path waited; stall %d, "
            "later ones at DEBUG)",
            lag_s * 1000,
            self.stalls,
        )

    def status(self) -> dict[str, Any]:
        ago = None if self.last_stall_mono is None else round(time.monotonic() - self.last_stall_mono, 1)
        return {
            "max_lag_ms": round(self.max_lag_s * 1000, 1),
            "stalls": self.stalls,
            "stall_ms": round(self.stall_s * 1000),
            "last_stall_ms": None if self.last_stall_s is None else round(self.last_stall_s * 1000, 1),
            "last_stall_ago_s": ago,
        }
