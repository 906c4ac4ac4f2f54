"""The local control API: JSON lines over a Unix socket, for ``gatewayctl``.

One request per line: ``{"cmd": "status", ...}``; one reply per line: ``{"ok": true, "result": ...}``
or ``{"ok": false, "error": "...", "code": "..."}``. The socket is created mode 0660 (owner root or the
service user, group ``homecare``): only those may talk to the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import fastjsonschema

from drivers.reconnect import BugLog
from gateway.errors import CommandRejected

log = logging.getLogger(__name__)

Handler = Callable[[Mapping[str, Any]], Awaitable[Any]]
Validator = Callable[[Any], Any]
# A handler whose result is an async iterator streams: one JSON line per item, then {"ok": true, "end": true}.
MAX_REQUEST_BYTES = 64 * 1024
CONTROL_GROUP = "homecare"


class ControlServer:
    """``validators``: a command's JSON schema (the MQTT contract's, gateway/schemas/commands), for the
    commands the cloud may send too; the request is checked against it as a command of the cloud
    would be (``cmd`` standing for the topic, ``request_id`` for the local socket), so that a bad
    request gets the same specific error locally and from the cloud."""

    def __init__(
        self, path: Path, handlers: Mapping[str, Handler], validators: Mapping[str, Validator] | None = None
    ) -> None:
        self.path = path
        self.handlers = dict(handlers)
        self.validators = dict(validators or {})
        self._server: asyncio.AbstractServer | None = None
        self.requests = 0
        self.bad_requests = 0
        self.bugs = BugLog()

    async def __aenter__(self) -> ControlServer:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o117)
        try:
            self._server = await asyncio.start_unix_server(self._client, path=str(self.path), limit=MAX_REQUEST_BYTES)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)
        with contextlib.suppress(KeyError, PermissionError):
            os.chown(self.path, -1, grp.getgrnam(CONTROL_GROUP).gr_gid)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await self._reply(writer, {"ok": False, "code": "too_large", "error": "request too large"})
                    return
                if not line:
                    return
                reply = await self._handle(line)
                stream = reply.pop("stream", None)
                if stream is None:
                    await self._reply(writer, reply)
                    continue
                try:
                    async for item in stream:
                        await self._reply(writer, {"ok": True, "item": item})
                finally:
                    await stream.aclose()
                await self._reply(writer, {"ok": True, "end": True})
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _handle(self, line: bytes) -> dict[str, Any]:
        self.requests += 1
        try:
            req = json.loads(line)
        except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested beyond the parser
            self.bad_requests += 1
            return {"ok": False, "code": "bad_request", "error": f"not JSON: {_why(exc)}"}
        cmd = req.get("cmd") if isinstance(req, dict) else None
        try:
            if not isinstance(cmd, str):
                raise CommandRejected("bad_request", 'a request is a JSON object with a "cmd" string')
            handler = self.handlers.get(cmd)
            if handler is None:
                raise CommandRejected("unknown_command", f"unknown command {cmd[:64]!r}")
            args = self._validated(cmd, req)
            result = await handler(args)
        except CommandRejected as exc:
            self.bad_requests += 1
            return {"ok": False, "code": exc.code, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a bug in a handler: ERROR with traceback, counted, replied
            self.bugs.report(log, "control", exc, f"{cmd} failed")
            return {"ok": False, "code": "failed", "error": f"internal error: {type(exc).__name__}"}
        if isinstance(result, AsyncIterator):
            return {"ok": True, "stream": result}
        return {"ok": True, "result": result}

    def _validated(self, cmd: str, req: Mapping[str, Any]) -> Mapping[str, Any]:
        validate = self.validators.get(cmd)
        if validate is None:
            return req
        doc = {"request_id": "local", **{k: v for k, v in req.items() if k != "cmd"}}
        try:
            return {"cmd": cmd, **validate(doc)}
        except fastjsonschema.JsonSchemaException as exc:
            raise CommandRejected("invalid", str(exc)) from None

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, reply: Mapping[str, Any]) -> None:
        writer.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
        await writer.drain()


def _why(exc: BaseException) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
