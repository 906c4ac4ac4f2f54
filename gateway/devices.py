"""Device drivers at run time: started from the configuration at boot, added and removed later by
gatewayctl or the cloud. Each driver runs as a task of the daemon's TaskGroup; removing a device cancels
its task. Devices added at run time are kept in the registry so they survive a restart; devices of the
configuration file can only be changed in the file.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from drivers.base import DeviceSpec, Driver, ReadingSink, driver_class
from gateway.config import parse_device
from gateway.errors import CommandRejected, ConfigError
from gateway.registry import Registry

log = logging.getLogger(__name__)


class DeviceManager:
    def __init__(
        self,
        sink: ReadingSink,
        registry: Registry,
        configured: tuple[DeviceSpec, ...],
        state_dir: Path | None = None,
    ) -> None:
        self.sink = sink
        self.state_dir = state_dir  # where drivers keep what they must remember (records fetched...)
        self.registry = registry
        self.configured = {spec.id: spec for spec in configured}
        self.drivers: dict[str, Driver] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self.on_change: list[Any] = []  # (device_id, kind) when a driver starts
        self.on_remove: list[Any] = []  # (device_id) when a device is gone for good

    def specs(self) -> list[DeviceSpec]:
        return [d.spec for d in self.drivers.values()]

    def origin(self, device_id: str) -> str:
        return "config" if device_id in self.configured else "managed"

    def start_all(self, tg: asyncio.TaskGroup) -> None:
        self._tg = tg
        for spec in self.configured.values():
            self._start(spec)
        for raw in self.registry.managed_devices():
            if raw["id"] in self.configured:
                continue
            try:
                spec = self.validate(raw)
            except CommandRejected as exc:
                log.warning("device %s: stored device no longer valid, not started: %s", raw.get("id"), exc.reason)
                continue
            self._start(spec)

    def _start(self, spec: DeviceSpec) -> None:
        assert self._tg is not None
        cls = driver_class(spec.kind)
        if "state_path" in cls.options_schema and not spec.options.get("state_path") and self.state_dir is not None:
            # Drivers that remember state across restarts keep it in the gateway's own data directory.
            self.state_dir.mkdir(parents=True, exist_ok=True)
            options = {**spec.options, "state_path": str(self.state_dir / f"{spec.id}.json")}
            spec = DeviceSpec(spec.id, spec.kind, spec.transport, options)
        driver = cls(spec, self.sink, time.time)
        self.drivers[spec.id] = driver
        self.tasks[spec.id] = self._tg.create_task(driver.run(), name=f"device {spec.id}")
        for cb in self.on_change:
            cb(spec.id, spec.kind)

    def validate(self, raw: Mapping[str, Any]) -> DeviceSpec:
        """A device table as the configuration file would have it, checked by the same code."""
        table = {k: v for k, v in raw.items() if k != "options"}
        table.update(raw.get("options") or {})
        try:
            return parse_device(Path("<device>"), 0, table, set())
        except ConfigError as exc:
            raise CommandRejected("invalid", str(exc).removeprefix("<device>: ")) from None

    def add(self, raw: Mapping[str, Any]) -> DeviceSpec:
        if any(key.endswith("_path") for key in (raw.get("options") or {})):
            # Where a driver keeps files is the gateway's decision, never a command's.
            raise CommandRejected("invalid", "file paths of a device (…_path options) are set by the gateway")
        spec = self.validate(raw)
        if spec.id in self.drivers:
            raise CommandRejected("conflict", f"device {spec.id} exists already")
        self.registry.add_managed(
            {"id": spec.id, "kind": spec.kind, "transport": spec.transport, "options": dict(spec.options)}
        )
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
                    for cb in self.on_remove:
                        cb(dev_id)
        previous = self.configured
        self.configured = new
        for dev_id, spec in new.items():
            if previous.get(dev_id) != spec:
                if dev_id in self.drivers:  # was a run-time device: the file takes it over
                    await self._stop(dev_id)
                    self.registry.remove_managed(dev_id)
                self._start(spec)
                if dev_id not in previous:
                    changed.append(f"started {dev_id}")
        return changed

    async def _stop(self, device_id: str) -> None:
        task = self.tasks.pop(device_id, None)
        self.drivers.pop(device_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def remove(self, device_id: str) -> None:
        if device_id in self.configured:
            raise CommandRejected("conflict", f"device {device_id} is defined in the configuration file: edit it there")
        if device_id not in self.tasks:
            raise CommandRejected("not_found", f"no device {device_id}")
        await self._stop(device_id)
        self.registry.remove_managed(device_id)
        for cb in self.on_remove:
            cb(device_id)
        log.info("device %s: removed", device_id)
