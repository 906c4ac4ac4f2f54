"""One device's supervisor: whatever escapes its driver stays that device's failure.

A driver's ``run()`` is meant to return only when cancelled (it reconnects by itself). When it raises
anyway, or returns, the supervisor reports the device as ``error`` with the reason (a
``device/{id}/state`` message), logs the failure (a bug at ERROR with its traceback, rate limited by
:class:`~drivers.reconnect.BugLog`), counts it, waits a capped, jittered backoff and starts a fresh
driver. Nothing of it reaches the daemon's TaskGroup: the outbox, the uplink, the care rules and every
other device carry on, and above all the SOS path.

Only a cancellation of the supervisor's own task (the gateway stopping, the device removed:
``Task.cancelling() > 0``) stops it. A ``CancelledError`` raised out of a driver while nobody cancelled
the task (a library leaking a cancelled future of its own, as bleak can on a D-Bus timeout) is a failure
of that driver like any other: re-raised, the device would end for good, unreported (a TaskGroup
ignores a child that ends cancelled).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from drivers.aio import cancelling
from drivers.base import DeviceSpec, DeviceStatus, Driver, DriverContext, LinkState, ReadingSink, driver_class
from drivers.reconnect import Backoff, BugLog, ErrorClass, classify, describe

log = logging.getLogger(__name__)

RESTART_BASE_S = 1.0
RESTART_CAP_S = 300.0  # a driver that keeps failing is retried every 5 minutes at most
STABLE_AFTER_S = 60.0  # a driver that ran this long before failing starts again from the base delay


class DriverReturned(Exception):
    """A driver's ``run()`` returned without being cancelled: it stopped serving its device."""


class DeviceSupervisor:
    """Runs one device's driver until cancelled; see the module docstring."""

    def __init__(
        self,
        spec: DeviceSpec,
        sink: ReadingSink,
        ctx: DriverContext,
        *,
        backoff: Backoff | None = None,
        on_driver: Callable[[Driver], None] | None = None,
    ) -> None:
        self.spec = spec
        self.sink = sink
        self.ctx = ctx
        self.backoff = backoff or Backoff(base_s=RESTART_BASE_S, cap_s=RESTART_CAP_S)
        self.on_driver = on_driver
        self.driver: Driver | None = None
        self.failures = 0
        self.bugs = BugLog()
        self.last_error: str | None = None

    @property
    def device_id(self) -> str:
        return self.spec.id

    def bug_count(self) -> int:
        """Bugs of this device: those that escaped the driver and those its reconnector caught."""
        inner = getattr(getattr(self.driver, "reconnector", None), "bugs", None)
        return self.bugs.count + (inner.count if isinstance(inner, BugLog) else 0)

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                driver = driver_class(self.spec.kind)(self.spec, self.sink, self.ctx)
                self.driver = driver
                if self.on_driver is not None:
                    self.on_driver(driver)
                await driver.run()
                error: BaseException = DriverReturned(f"the {self.spec.kind} driver stopped by itself")
            except asyncio.CancelledError as exc:
                if cancelling():
                    raise  # the gateway stopping, or this device removed
                # Nobody cancelled this task: a library leaked a cancelled future of its own (bleak on a
                # D-Bus timeout, hbldh/bleak-retry-connector#109). Re-raised, it would end this device for
                # good (a TaskGroup ignores a child that ends cancelled): it is the driver's failure.
                error = exc
            except Exception as exc:
                if cancelling():
                    raise asyncio.CancelledError from exc
                error = exc
            if time.monotonic() - started >= STABLE_AFTER_S:
                self.backoff.reset()
            self._failed(error)
            await asyncio.sleep(self.backoff.next_delay())

    def _failed(self, error: BaseException) -> None:
        self.failures += 1
        kind = classify(error)
        if kind is ErrorClass.BUG or isinstance(error, DriverReturned):
            self.bugs.report(log, f"device {self.device_id}", error, "driver failed")
            reason = f"driver failed: {describe(error)}"
        else:
            level = logging.WARNING if self.failures == 1 else logging.DEBUG
            log.log(level, "device %s: driver stopped: %s", self.device_id, error)
            reason = f"driver stopped: {error}"
        self.last_error = reason
        counters = self.driver_counters()
        counters["bugs"] = self.bug_count()
        counters["driver_restarts"] = self.failures
        status = DeviceStatus(
            device_id=self.device_id,
            captured_at=self.ctx.clock(),
            state=LinkState.ERROR,
            reason=reason,
            counters=counters,
        )
        try:
            self.sink(status)
        except Exception as exc:  # noqa: BLE001 - raised here, it would end every device's TaskGroup
            self.bugs.report(log, f"device {self.device_id}", exc, "error state not reported")

    def driver_counters(self) -> dict[str, int]:
        if self.driver is None:
            return {}
        try:
            return dict(self.driver.counters())
        except Exception as exc:  # noqa: BLE001 - a broken driver's counters must not break its supervisor
            self.bugs.report(log, f"device {self.device_id}", exc, "counters failed")
            return {}
