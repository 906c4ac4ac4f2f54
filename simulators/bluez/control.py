"""The virtual BlueZ's control channel: JSON lines over a Unix socket.

One request per line, one reply per line: ``{"op": "press", "device": "C0:FF:EE:00:00:03"}`` ->
``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": "..."}``. Operations:

=====================  ===========================================================================
``status``             adapters, devices, counters, stored cuff records
``press``              SOS pendant: one press (``device``); ``pattern`` (``press``, ``double_press``,
                       ``long_press`` ...) makes it send format 1.1 (the latest press's pattern);
                       BTHome button: one ``event`` (the same names, default ``press``)
``measure``            cuff: the user takes a measurement (``systolic``, ``diastolic``, ``pulse``
                       optional); indicated live when connected, stored and advertised otherwise
``add_records``        cuff: ``count`` measurements stored while nobody was connected
``wake``               cuff: press its Bluetooth button (advertise for ``seconds``)
``set``                device settings: wrist ``battery``/``hr_bpm``/``spo2_pct``/``af``/
                       ``ppg_rate_hz``/``ppg_per_frame`` (and with ``--wrist-accel``: ``walking``,
                       ``rest_settle_s``); cuff ``clock_offset_s``/``pairable``/
                       ``always_advertise``; pendant ``battery``; BTHome ``battery``/``key`` (hex)
``battery_change``     SOS pendant: new battery, press counter back to 0
``garbage``            BTHome button: malformed advertisements for ``seconds``
``reset_counters``     wrist: forget the PPG frame counters
``link_drop``          drop the device's link now
``connect_fail``       the next ``count`` Connect calls fail: ``error`` = ``abort``
                       (le-connection-abort-by-local) or ``inprogress`` (org.bluez.Error.InProgress)
``slow_discovery``     the next ``count`` connections resolve services after ``delay_s``
``out_of_range``       the device goes silent (and its link drops after the supervision timeout);
                       back after ``duration_s`` when given
``in_range``           the device is back
``drop_during_fetch``  cuff: the link drops after ``after_records`` stored records were sent
``forget_bond``        the peripheral loses its bonding keys (a reset by the user)
``power_off``          adapter ``adapter`` (default hci0) off, back on after ``duration_s`` if given
``power_on``           adapter on
``restart``            bluetoothd restarts: gone for ``down_s``; ``graceful`` false = crash
=====================  ===========================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from pathlib import Path
from typing import Any

from simulators.bluez.core import VirtualBlueZ


class ControlServer:
    def __init__(self, sim: VirtualBlueZ, path: Path) -> None:
        self.sim = sim
        self.path = Path(path)
        self._server: asyncio.AbstractServer | None = None
        self._bg: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        if self.path.exists():
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._client, path=str(self.path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._bg):
            t.cancel()
        await asyncio.gather(*self._bg, return_exceptions=True)

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError("a request is a JSON object")
                    result = await self.handle(request)
                    reply: dict[str, Any] = {"ok": True, "result": result}
                except (ValueError, KeyError, TypeError) as exc:
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def handle(self, req: dict[str, Any]) -> Any:
        sim = self.sim
        op = str(req.get("op", ""))
        device = req.get("device")
        if op == "status":
            return sim.status()
        if op == "link_drop":
            return {"dropped": await sim.drop_link(str(device))}
        if op == "connect_fail":
            kind = str(req.get("error", "abort"))
            if kind not in ("abort", "inprogress"):
                raise ValueError("error must be abort or inprogress")
            sim.peripheral(str(device)).faults.connect += [kind] * int(req.get("count", 1))
            return {"armed": int(req.get("count", 1))}
        if op == "slow_discovery":
            p = sim.peripheral(str(device))
            p.faults.discovery_delay_s += [float(req.get("delay_s", 5.0))] * int(req.get("count", 1))
            return {"armed": int(req.get("count", 1))}
        if op == "out_of_range":
            duration = req.get("duration_s")
            await sim.out_of_range(str(device), None if duration is None else float(duration))
            return {"ok": True}
        if op == "in_range":
            sim.in_range(str(device))
            return {"ok": True}
        if op == "drop_during_fetch":
            sim.peripheral(str(device)).faults.drop_after_records = int(req.get("after_records", 1))
            return {"ok": True}
        if op == "forget_bond":
            sim.peripheral(str(device)).bonds.clear()
            return {"ok": True}
        if op == "power_off":
            a = sim.adapter(str(req.get("adapter", "hci0")))
            duration = req.get("duration_s")
            if duration is None:
                sim.set_powered(a, False)
            else:
                self._background(sim.power_cycle(a.name, float(duration)))
                await asyncio.sleep(0)
            return {"ok": True}
        if op == "power_on":
            sim.set_powered(sim.adapter(str(req.get("adapter", "hci0"))), True)
            return {"ok": True}
        if op == "restart":
            self._background(sim.restart(float(req.get("down_s", 2.0)), bool(req.get("graceful", True))))
            await asyncio.sleep(0)
            return {"ok": True}
        if device is None:
            raise ValueError(f"unknown operation {op!r} (or it needs a device)")
        args = {k: v for k, v in req.items() if k not in ("op", "device")}
        return await sim.peripheral(str(device)).command(op, args)


class ControlClient:
    """Blocking client (scripts, the CLI)."""

    def __init__(self, path: str | Path, timeout_s: float = 10.0) -> None:
        self.path = str(path)
        self.timeout_s = timeout_s

    def call(self, op: str, **args: Any) -> Any:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout_s)
            s.connect(self.path)
            s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("the virtual BlueZ closed the control connection")
                buf += chunk
        reply = json.loads(buf)
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error", "failed"))
        return reply.get("result")


class AsyncControlClient:
    """asyncio client (tests and benches that run bleak on the same loop)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    async def call(self, op: str, **args: Any) -> Any:
        reader, writer = await asyncio.open_unix_connection(self.path)
        try:
            writer.write(json.dumps({"op": op, **args}).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        if not line:
            raise ConnectionError("the virtual BlueZ closed the control connection")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error", "failed"))
        return reply.get("result")
