"""An RFXtrx433E receiver on a pty, with 433 MHz panic buttons that can be pressed.

It answers the start-up commands as the real receiver does (reset: silence; get status: a 0x01 status
packet; start receiver: the 0x01/0x07 "Copyright RFXCOM" packet), then sends one Security1 packet per
radio frame. A press sends ``repeats`` frames ``gap_s`` apart, as real pendants do. It can inject line
noise, truncated frames, and be unplugged and plugged back (also behind another pty).

A two-key pendant or security remote is one sensor id sending a different status per key
(:data:`STATUSES`: ``panic``, ``arm_home``, ``disarm`` ...): ``press(sensor, status=STATUSES["arm_home"])``.

Command line (``gateway-sim rfxtrx``): presses on a schedule and commands on stdin
(``press ID [COMMAND]``, ``noise N``, ``truncate``, ``unplug``, ``plug``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sys
from pathlib import Path

from simulators.serialpty import PtyDevice

log = logging.getLogger(__name__)

STATUS_REPLY = bytes(
    # len type sub seq cmnd  rectype fwver  msg3  msg4  msg5  msg6  msg7 msg8 msg9
    [0x0D, 0x01, 0x00, 0x01, 0x02, 0x53, 0x45, 0x10, 0x0C, 0x2F, 0x01, 0x01, 0x00, 0x00]
)
COPYRIGHT_REPLY = bytes([0x14, 0x01, 0x07, 0x02, 0x07]) + b"Copyright RFXCOM"

PANIC = 0x06
SUBTYPE_X10_SECURITY_REMOTE = 0x02
# Security1 statuses the keys of a remote send (RFXtrx SDK), by the command names of the driver's roles
STATUSES = {
    "panic": PANIC,
    "alarm": 0x02,
    "arm_away": 0x09,
    "arm_home": 0x0B,
    "disarm": 0x0D,
    "light1_off": 0x10,
    "light1_on": 0x11,
    "light2_off": 0x12,
    "light2_on": 0x13,
}


def security1_frame(seq: int, sensor_id: int, status: int = PANIC, battery_ok: bool = True, rssi: int = 7) -> bytes:
    """One Security1 packet (type 0x20, length 8) as the receiver sends it."""
    battery = 9 if battery_ok else 0
    return bytes(
        [
            0x08,
            0x20,
            SUBTYPE_X10_SECURITY_REMOTE,
            seq & 0xFF,
            (sensor_id >> 16) & 0xFF,
            (sensor_id >> 8) & 0xFF,
            sensor_id & 0xFF,
            status & 0x7F,
            ((rssi & 0x0F) << 4) | battery,
        ]
    )


class RfxtrxSimulator:
    def __init__(self, link_path: str | os.PathLike[str], *, alias_path: str | None = None) -> None:
        self.dev = PtyDevice(link_path, self._on_command, alias_path=alias_path)
        self.seq = 0
        self.started = False
        self.presses_sent = 0
        self.frames_sent = 0
        self._cmd = bytearray()

    async def __aenter__(self) -> RfxtrxSimulator:
        await self.dev.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.dev.__aexit__(*exc)

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFF
        return self.seq

    def _on_command(self, data: bytes) -> None:
        self._cmd.extend(data)
        while len(self._cmd) >= 14:
            cmd = bytes(self._cmd[:14])
            del self._cmd[:14]
            if cmd[0] != 0x0D or cmd[1] != 0x00:
                self._cmd.clear()  # not an interface command: drop, like the firmware
                return
            command = cmd[4]
            if command == 0x00:  # reset
                self.started = False
            elif command == 0x02:  # get status
                reply = bytearray(STATUS_REPLY)
                reply[3] = self._next_seq()
                self.dev.write(bytes(reply))
            elif command == 0x07:  # start receiver
                self.started = True
                self.dev.write(COPYRIGHT_REPLY)

    def unplug(self) -> None:
        self.started = False
        self._cmd.clear()
        self.dev.unplug()

    def plug(self) -> None:
        self.dev.plug()

    def send_frame(self, frame: bytes) -> bool:
        if not self.started:
            return False  # the radio is not listening until "start receiver"
        sent = self.dev.write(frame)
        self.frames_sent += int(sent)
        return sent

    async def press(self, sensor_id: int, *, repeats: int = 4, gap_s: float = 0.05, status: int = PANIC) -> bool:
        """One press: ``repeats`` radio frames. True when at least one frame reached the line."""
        any_sent = False
        for i in range(repeats):
            any_sent |= self.send_frame(security1_frame(self._next_seq(), sensor_id, status))
            if i + 1 < repeats:
                await asyncio.sleep(gap_s)
        self.presses_sent += int(any_sent)
        return any_sent

    def noise(self, n: int, rng: random.Random | None = None) -> None:
        rng = rng or random.Random()
        self.dev.write(bytes(rng.randrange(256) for _ in range(n)))

    def truncated(self, sensor_id: int) -> None:
        self.dev.write(security1_frame(self._next_seq(), sensor_id)[:5])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--link", required=True, help="stable path to create, e.g. a by-id style symlink")
    parser.add_argument("--button", action="append", default=[], help="hex sensor id of a pendant")
    parser.add_argument("--every", type=float, default=0.0, help="press each button every N seconds")
    parser.add_argument("--repeats", type=int, default=4, help="radio frames per press")


async def _run(args: argparse.Namespace) -> int:
    buttons = [int(b, 16) for b in args.button] or [0xA1B2C3]
    async with RfxtrxSimulator(Path(args.link)) as sim:
        print(f"rfxtrx: receiver at {args.link} -> {sim.dev.slave_name}", flush=True)

        async def schedule() -> None:
            while args.every > 0:
                await asyncio.sleep(args.every)
                for b in buttons:
                    if await sim.press(b, repeats=args.repeats):
                        print(f"rfxtrx: pressed {b:06x}", flush=True)

        async def commands() -> None:
            loop = asyncio.get_running_loop()
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line:
                    await asyncio.Event().wait()  # stdin closed: keep serving the schedule
                words = line.split()
                if not words:
                    continue
                if words[0] == "press":
                    status = STATUSES.get(words[2], PANIC) if len(words) > 2 else PANIC
                    button = int(words[1], 16) if len(words) > 1 else buttons[0]
                    await sim.press(button, repeats=args.repeats, status=status)
                elif words[0] == "noise":
                    sim.noise(int(words[1]) if len(words) > 1 else 16)
                elif words[0] == "truncate":
                    sim.truncated(buttons[0])
                elif words[0] == "unplug":
                    sim.unplug()
                elif words[0] == "plug":
                    sim.plug()
                print(f"rfxtrx: {line.strip()} done", flush=True)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(schedule())
            if sys.stdin is not None and not sys.stdin.isatty():
                tg.create_task(commands())
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO)
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 0
