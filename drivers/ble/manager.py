"""The gateway's Bluetooth LE stack as one object the daemon builds, enters and owns (as Home
Assistant's habluetooth manager is): one shared scanner hub and one connection budget per adapter.

``async with BleStack() as ble:`` the hubs' scanner and BlueZ-watch tasks run in the stack's own
TaskGroup; leaving it stops them (bounded) and releases bleak's shared BlueZ connection of the event
loop. A BLE driver reaches it through its :class:`~drivers.base.DriverContext` (``ctx.ble``), never
through globals. bleak itself is imported only when a hub is first asked for, so a gateway without
Bluetooth devices never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from drivers.aio import cancel_and_wait
from drivers.reconnect import BugLog

if TYPE_CHECKING:
    from drivers.ble.stack import ConnectionBudget, ScanHub

log = logging.getLogger(__name__)

CLOSE_LIMIT_S = 2.0  # releasing bleak's BlueZ connection at stop, at most


class BleStack:
    def __init__(self) -> None:
        self.hubs: dict[str, ScanHub] = {}
        self.budgets: dict[str, ConnectionBudget] = {}
        self.bugs = BugLog()
        self._exit = contextlib.AsyncExitStack()
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> bool:
        return self._tg is not None

    async def __aenter__(self) -> BleStack:
        self._tg = await self._exit.enter_async_context(asyncio.TaskGroup())
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await cancel_and_wait(*self._tasks, limit_s=CLOSE_LIMIT_S)
            await self._exit.aclose()
        finally:
            self._tg = None
            if self.hubs:
                from drivers.ble.stack import close_bleak

                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_LIMIT_S):
                        await close_bleak()

    def hub(self, adapter: str = "", *, watchdog_s: float = 30.0) -> ScanHub:
        """The one scanner hub of ``adapter`` ("" = the default adapter)."""
        from drivers.ble.stack import ScanHub

        hub = self.hubs.get(adapter)
        if hub is None:
            hub = self.hubs[adapter] = ScanHub(adapter, watchdog_s=watchdog_s, spawn=self.spawn)
        else:
            hub.watchdog_s = min(hub.watchdog_s, watchdog_s)
        return hub

    def budget(self, adapter: str, limit: int) -> ConnectionBudget:
        """The one connection budget of ``adapter`` (the first device to ask sets its limit)."""
        from drivers.ble.stack import ConnectionBudget

        key = adapter or "default"
        budget = self.budgets.get(key)
        if budget is None:
            budget = self.budgets[key] = ConnectionBudget(key, limit)
        elif budget.limit != limit:
            log.debug("adapter %s: connection budget stays %d (a device asked for %d)", key, budget.limit, limit)
        return budget

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run a hub's task in the stack's TaskGroup. A bug in it is logged at ERROR and counted; it
        never cancels the daemon (a TaskGroup cancels its owner when a child fails)."""
        if self._tg is None:
            coro.close()
            raise RuntimeError("the BLE stack is not running (use it inside `async with BleStack()`)")
        task = self._tg.create_task(self._guarded(coro, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guarded(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        try:
            await coro
        except Exception as exc:  # noqa: BLE001 - reported as the bug it is; the stack's owner carries on
            self.bugs.report(log, name, exc, "stopped by a bug")
