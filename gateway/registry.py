"""The small device registry and settings: TinyDB, written atomically.

TinyDB rewrites its whole JSON file on every write; its default storage truncates the file and writes in
place, so a power cut mid-write leaves an empty or torn file. :class:`AtomicJSONStorage` writes a temp file
in the same directory, fsyncs it, renames it over the old one and fsyncs the directory: after a power cut
the file is either the old or the new version, never a mix. Readings never go here (the outbox is for
them); only a few hundred small documents: devices seen, their kind and last state, settings.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tinydb import Query, TinyDB
from tinydb.storages import Storage

from gateway.errors import GatewayError


class RegistryError(GatewayError):
    pass


class AtomicJSONStorage(Storage):
    """Atomic writes, and reads from memory: this process is the file's only writer, so what it wrote
    last is what the file holds. TinyDB reads the whole file for every query; parsing it each time made
    a known device's lookup (every SOS press, every link change) cost O(devices seen): 16 ms of CPU at
    3,000 pendants, and a new device's insert parsed it twice more before writing it."""

    def __init__(self, path: str | os.PathLike[str], **_: Any) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, dict[str, Any]] | None = None

    def read(self) -> dict[str, dict[str, Any]] | None:
        if self._cache is None:
            self._cache = self._read_file()
        return self._cache

    def _read_file(self) -> dict[str, dict[str, Any]] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        if not text.strip():
            return None
        try:
            data: dict[str, dict[str, Any]] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{self.path}: registry is not valid JSON: {exc}") from exc
        return data

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        # TinyDB changes documents of the dict read() gave it before it writes: until this write is
        # on disk, memory is ahead of the file, so a failed write sends the next read to the file.
        self._cache = None
        payload = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        dirfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
        self._cache = data

    def close(self) -> None:
        pass


class Registry:
    """Devices the gateway knows, with kind, first/last seen and last link state."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.db = TinyDB(path, storage=AtomicJSONStorage)
        self.devices = self.db.table("devices")
        self.settings = self.db.table("settings")
        self.replies = self.db.table("command_replies")
        self.managed = self.db.table("managed_devices")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def note_device(self, device_id: str, kind: str, *, state: str | None = None, at: float | None = None) -> None:
        """Record a device and its state. Writes only when something changed (not per reading)."""
        q = Query()
        now = at if at is not None else time.time()
        current = self.devices.get(q.id == device_id)
        if current is None:
            self.devices.insert({"id": device_id, "kind": kind, "first_seen": now, "state": state, "state_at": now})
            return
        assert isinstance(current, Mapping)
        changes: dict[str, Any] = {}
        if kind != "unknown" and current.get("kind") != kind:
            changes["kind"] = kind
        if state is not None and current.get("state") != state:
            changes.update(state=state, state_at=now)
        if changes:
            self.devices.update(changes, q.id == device_id)

    def device(self, device_id: str) -> dict[str, Any] | None:
        doc = self.devices.get(Query().id == device_id)
        return dict(doc) if isinstance(doc, Mapping) else None

    def all_devices(self) -> list[dict[str, Any]]:
        return [dict(d) for d in self.devices.all()]

    # -- downlink idempotency: the reply of every request id, the latest MAX_REPLIES kept ---------

    MAX_REPLIES = 1000

    def get_reply(self, request_id: str) -> dict[str, Any] | None:
        doc = self.replies.get(Query().request_id == request_id)
        return dict(doc["reply"]) if isinstance(doc, Mapping) else None

    def put_reply(self, request_id: str, reply: Mapping[str, Any]) -> None:
        self.replies.upsert({"request_id": request_id, "reply": dict(reply)}, Query().request_id == request_id)
        if len(self.replies) > self.MAX_REPLIES:
            oldest = sorted(doc.doc_id for doc in self.replies.all())[: len(self.replies) - self.MAX_REPLIES]
            self.replies.remove(doc_ids=oldest)

    # -- devices added at run time (gatewayctl or the cloud), on top of the configuration file ----

    def managed_devices(self) -> list[dict[str, Any]]:
        return [dict(d) for d in self.managed.all()]

    def add_managed(self, spec: Mapping[str, Any]) -> None:
        self.managed.upsert(dict(spec), Query().id == spec["id"])

    def remove_managed(self, device_id: str) -> bool:
        return bool(self.managed.remove(Query().id == device_id))

    def set(self, key: str, value: Any) -> None:
        self.settings.upsert({"key": key, "value": value}, Query().key == key)

    def get(self, key: str, default: Any = None) -> Any:
        doc = self.settings.get(Query().key == key)
        return doc["value"] if isinstance(doc, Mapping) else default

    def delete(self, key: str) -> None:
        self.settings.remove(Query().key == key)
