"""Device drivers at run time: started from the configuration at boot, added and removed later by
gatewayctl or the cloud.

Each device runs under its own :class:`~gateway.supervisor.DeviceSupervisor`, all of them owned by this
manager's TaskGroup (:meth:`DeviceManager.run`): a driver that fails is that device's ``error`` state,
never the daemon's. A device's options are validated completely (its kind's options dataclass) before
anything is stored or started, so a value its driver would refuse is refused with a reply naming the
key. Devices added at run time are kept in the registry so they survive a restart; one that no longer
validates at start (a kind removed, a rule tightened) is reported and skipped, never fatal. Devices of
the configuration file can only be changed in the file.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from drivers.aio import cancel_and_wait
from drivers.base import DeviceSpec, Driver, DriverContext, ReadingSink
from drivers.reconnect import BugLog
from gateway.config import claim_conflict, claims_of, parse_device
from gateway.errors import CommandRejected, ConfigError
from gateway.registry import Registry, RegistryError
from gateway.supervisor import DeviceSupervisor

log = logging.getLogger(__name__)

STOP_LIMIT_S = 2.0  # a driver that has not ended this long after its cancellation is left behind


class DeviceManager:
    def __init__(
        self,
        sink: ReadingSink,
        registry: Registry,
        configured: tuple[DeviceSpec, ...],
        ctx: DriverContext,
        *,
        reserved: Mapping[str, str] | None = None,
    ) -> None:
        self.sink = sink
        self.ctx = ctx
        self.registry = registry
        self.configured = {spec.id: spec for spec in configured}
        self.supervisors: dict[str, DeviceSupervisor] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.skipped: dict[str, tuple[str, str]] = {}  # stored devices that no longer validate: id -> (kind, why)
        self._tg: asyncio.TaskGroup | None = None
        self._pending: list[DeviceSpec] = []
        self.on_change: list[Callable[[str, str], Any]] = []  # (device_id, kind) when a device starts
        self.on_remove: list[Callable[[str], Any]] = []  # (device_id) when a device is gone for good
        self.bug_log = BugLog()  # bugs of the on_change / on_remove listeners (counted in bugs())
        # what other parts hold (the SMS modem's port): claim -> holder (gateway.config.claims_of)
        self.reserved = dict(reserved or {})

    # -- what runs ----------------------------------------------------------------------------------

    @property
    def drivers(self) -> dict[str, Driver]:
        """The current driver of each device (a supervisor builds a new one after a failure)."""
        return {dev_id: sup.driver for dev_id, sup in self.supervisors.items() if sup.driver is not None}

    def specs(self) -> list[DeviceSpec]:
        return [sup.spec for sup in self.supervisors.values()]

    def spec(self, device_id: str) -> DeviceSpec | None:
        sup = self.supervisors.get(device_id)
        return sup.spec if sup is not None else None

    def origin(self, device_id: str) -> str:
        return "config" if device_id in self.configured else "managed"

    def bugs(self) -> int:
        return self.bug_log.count + sum(sup.bug_count() for sup in self.supervisors.values())

    def _tell(self, listeners: list[Callable[..., Any]], *args: str) -> None:
        """Call each listener; a bug in one is counted and logged, and neither stops the others nor the
        device (the devices start inside the daemon's TaskGroup: an exception here would end it)."""
        for cb in listeners:
            try:
                cb(*args)
            except Exception as exc:  # noqa: BLE001 - a listener's bug must not stop the devices; counted
                self.bug_log.report(log, f"device {args[0]}", exc, "device listener failed")

    # -- running ------------------------------------------------------------------------------------

    def start_all(self) -> None:
        """Queue the configured and stored devices; :meth:`run` starts them."""
        for spec in self.configured.values():
            self._start(spec)
        for raw in self.registry.managed_devices():
            dev_id = str(raw.get("id"))
            if dev_id in self.configured:
                continue
            try:
                spec = self.validate(raw)
                self._check_claims(spec)
            except CommandRejected as exc:
                self.skipped[dev_id] = (str(raw.get("kind")), exc.reason)
                log.error("device %s: stored device no longer valid, not started: %s", dev_id, exc.reason)
                continue
            self._start(spec)

    async def run(self) -> None:
        """Own every device's supervisor until cancelled."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            pending, self._pending = self._pending, []
            for spec in pending:
                self._launch(spec)
            try:
                await asyncio.Event().wait()
            finally:
                self._tg = None
                await self.stop_all()

    async def stop_all(self, limit_s: float = STOP_LIMIT_S) -> None:
        """Cancel every device and wait for them, at most ``limit_s``; safe to call twice."""
        tasks = list(self.tasks.values())
        await cancel_and_wait(*tasks, limit_s=limit_s)

    def _start(self, spec: DeviceSpec) -> None:
        sup = DeviceSupervisor(spec, self.sink, self.ctx)
        self.supervisors[spec.id] = sup
        if self._tg is None:
            self._pending.append(spec)
        else:
            self._launch(spec)
        self._tell(self.on_change, spec.id, spec.kind)

    def _launch(self, spec: DeviceSpec) -> None:
        assert self._tg is not None
        sup = self.supervisors[spec.id]
        self.tasks[spec.id] = self._tg.create_task(sup.run(), name=f"device {spec.id}")

    # -- changes --------------------------------------------------------------------------------------

    def validate(self, raw: Mapping[str, Any]) -> DeviceSpec:
        """A device table as the configuration file would have it (options nested under ``options``
        or flat), checked by the same code; the reason names the key."""
        table = {k: v for k, v in raw.items() if k != "options"}
        options = raw.get("options") or {}
        if not isinstance(options, Mapping):
            raise CommandRejected("invalid", f"options = {options!r}: expected a table", key="options")
        for key in ("id", "kind", "transport"):
            if key in options:  # it would override the checked top-level value
                raise CommandRejected("invalid", f"options.{key}: not an option (give {key} beside options)", key=key)
        table.update(options)
        try:
            return parse_device(Path("<device>"), 0, table, set(), prefix="")
        except ConfigError as exc:
            reason = str(exc).removeprefix("<device>: ")
            raise CommandRejected("invalid", reason, key=exc.key) from None

    def add(self, raw: Mapping[str, Any]) -> DeviceSpec:
        paths = [key for key in (raw.get("options") or {}) if str(key).endswith("_path")]
        if paths:
            # Where a driver keeps files is the gateway's decision, never a command's.
            raise CommandRejected(
                "invalid", f"{paths[0]}: file paths of a device (…_path options) are set by the gateway", key=paths[0]
            )
        spec = self.validate(raw)
        if spec.id in self.supervisors:
            raise CommandRejected("conflict", f"device {spec.id} exists already")
        self._check_claims(spec)
        # Stored first: a device that runs but is not stored would be gone after the next restart.
        try:
            self.registry.add_managed(
                {"id": spec.id, "kind": spec.kind, "transport": spec.transport, "options": spec.options.to_mapping()}
            )
        except RegistryError as exc:
            raise CommandRejected("unavailable", f"device {spec.id} not added: it could not be stored ({exc})") from exc
        self._start(spec)
        log.info("device %s: added (%s)", spec.id, spec.kind)
        return spec

    async def reconfigure(self, specs: tuple[DeviceSpec, ...]) -> list[str]:
        """Apply a new configuration file's devices: stop removed ones, start new ones, restart changed
        ones. Devices added at run time are left alone. Returns what changed, for the reply."""
        new = {spec.id: spec for spec in specs}
        changed = []
        for dev_id, old in list(self.configured.items()):
            if new.get(dev_id) != old:
                await self._stop(dev_id)
                changed.append(f"stopped {dev_id}" if dev_id not in new else f"restarted {dev_id}")
                if dev_id not in new:
                    self._tell(self.on_remove, dev_id)
        previous = self.configured
        self.configured = new
        for dev_id, spec in new.items():
            if previous.get(dev_id) != spec:
                if dev_id in self.supervisors:  # was a run-time device: the file takes it over
                    await self._stop(dev_id)
                    self._forget_managed(dev_id)
                self._start(spec)
                if dev_id not in previous:
                    changed.append(f"started {dev_id}")
        return changed

    async def _stop(self, device_id: str) -> None:
        task = self.tasks.pop(device_id, None)
        self.supervisors.pop(device_id, None)
        self._pending = [s for s in self._pending if s.id != device_id]
        if task is not None:
            await cancel_and_wait(task, limit_s=STOP_LIMIT_S)

    async def remove(self, device_id: str) -> None:
        if device_id in self.configured:
            raise CommandRejected("conflict", f"device {device_id} is defined in the configuration file: edit it there")
        if device_id not in self.supervisors:
            if device_id in self.skipped and self._unstore(device_id):
                del self.skipped[device_id]
                log.info("device %s: removed (it was not running: %s)", device_id, "no longer valid")
                return
            raise CommandRejected("not_found", f"no device {device_id}")
        # Unstored first: a device stopped but still stored would come back at the next restart.
        self._unstore(device_id)
        await self._stop(device_id)
        self._tell(self.on_remove, device_id)
        log.info("device %s: removed", device_id)

    def _check_claims(self, spec: DeviceSpec) -> None:
        """Refuse a device that would take a serial port or BLE address another device (or the SMS
        modem) holds: the cloud must not be able to take the SOS receiver's port."""
        held = {**self.reserved, **claims_of(self.specs(), None)}
        clash = claim_conflict(spec, held)
        if clash is not None:
            key, claim, owner = clash
            raise CommandRejected("conflict", f"{key}: {claim} is used by {owner}", key=key)

    def _unstore(self, device_id: str) -> bool:
        """Remove a run-time device from the registry (True if it was there), or refuse the removal."""
        try:
            return self.registry.remove_managed(device_id)
        except RegistryError as exc:
            raise CommandRejected(
                "unavailable", f"device {device_id} not removed: the registry could not be written ({exc})"
            ) from exc

    def _forget_managed(self, device_id: str) -> None:
        """The configuration file took a run-time device over: its stored copy goes. Should the write
        fail, the file's device still wins at the next start (a stored device with a configured id is
        skipped), so it is only logged."""
        try:
            self.registry.remove_managed(device_id)
        except RegistryError as exc:
            log.warning("device %s: its stored run-time copy could not be removed: %s", device_id, exc)
