"""The control socket (gateway/control.py) on a real Unix socket: whatever a client sends, it gets a
reply on the same connection, and a fault of a handler is counted, not a dead connection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.control import ControlServer
from gateway.downlink import load_validators


async def _ask(path: Path, lines: list[bytes]) -> list[dict[str, Any]]:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 20)
    try:
        out = []
        for line in lines:
            writer.write(line + b"\n")
            await writer.drain()
            async with asyncio.timeout(5):
                out.append(json.loads(await reader.readline()))
        return out
    finally:
        writer.close()
        await writer.wait_closed()


def test_every_request_gets_a_specific_reply_on_the_same_connection(tmp_path: Path) -> None:
    acked: list[str] = []

    async def alert_ack(args: Mapping[str, Any]) -> dict[str, Any]:
        acked.append(args["alert_id"])
        return {"acknowledged": True}

    async def broken(_args: Mapping[str, Any]) -> dict[str, Any]:
        return {"n": 1 // 0}

    async def go() -> tuple[ControlServer, list[dict[str, Any]]]:
        server = ControlServer(tmp_path / "control.sock", {"alert-ack": alert_ack, "status": broken}, load_validators())
        async with server:
            replies = await _ask(
                server.path,
                [
                    b"[" * 5000,  # nested beyond the parser
                    b'{"cmd": "\xff"}',  # not UTF-8
                    b'["alert-ack"]',
                    b'{"cmd": "alert-ack"}',  # its argument missing: the cloud's schema says which
                    b'{"cmd": "alert-ack", "alert_id": 7}',
                    b'{"cmd": "status"}',  # a bug in the handler
                    b'{"cmd": "reboot"}',
                    b'{"cmd": "alert-ack", "alert_id": "a-1"}',  # and the connection still serves
                ],
            )
        return server, replies

    server, replies = asyncio.run(go())
    codes = [r["ok"] or r["code"] for r in replies]
    assert codes == [
        "bad_request",
        "bad_request",
        "bad_request",
        "invalid",
        "invalid",
        "failed",
        "unknown_command",
        True,
    ]
    assert "nested" in replies[0]["error"] and "alert_id" in replies[3]["error"]
    assert replies[5]["error"] == "internal error: ZeroDivisionError"
    assert acked == ["a-1"]
    assert (server.requests, server.bad_requests, server.bugs.count) == (8, 6, 1)
