"""``gateway-sim ble``: a private D-Bus, the virtual BlueZ on it and simulated BLE devices.

Run it, then point bleak (the gateway, ``gatewayctl devices scan``...) at it::

    gateway-sim ble                      # wrist monitor, cuff with 3 stored records, SOS pendant
    export DBUS_SYSTEM_BUS_ADDRESS=...   # the line it prints

Command it from another shell (faults, presses, measurements; see simulators/bluez/control.py)::

    gateway-sim ble --control /tmp/hc-ble-XXXX/control.sock press C0:FF:EE:00:00:03
    gateway-sim ble --control ... link_drop C0:FF:EE:00:00:01
    gateway-sim ble --control ... connect_fail C0:FF:EE:00:00:02 error=abort count=2
    gateway-sim ble --control ... restart down_s=3 graceful=false
    gateway-sim ble --control ... status
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_WRIST = "C0:FF:EE:00:00:01"
DEFAULT_CUFF = "C0:FF:EE:00:00:02"
DEFAULT_SOS = "C0:FF:EE:00:00:03"
DEFAULT_SOS_NOTIFY = "C0:FF:EE:00:00:04"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Virtual BlueZ on a private D-Bus with simulated BLE devices (or a command to a running one)."
    # dest "op": gateway-sim's own subcommand is ``args.command`` (the same name made `gateway-sim ble` fail)
    parser.add_argument(
        "op", nargs="*", metavar="COMMAND", help="with --control: OP [ADDRESS] [key=value ...] for a running simulator"
    )
    parser.add_argument("--control", help="control socket of a running simulator (default $BLE_SIM_CONTROL)")
    parser.add_argument("--workdir", help="directory for the bus and control sockets (default: a new one in /tmp)")
    parser.add_argument("--adapters", type=int, default=1, help="number of adapters (hci0, hci1...)")
    parser.add_argument("--max-connections", type=int, default=5, help="connection slots per adapter")
    parser.add_argument("--wrist", action="append", metavar="ADDRESS", help="a wrist monitor (repeatable)")
    parser.add_argument("--cuff", action="append", metavar="ADDRESS", help="a blood-pressure cuff (repeatable)")
    parser.add_argument("--sos", action="append", metavar="ADDRESS", help="an advertising SOS pendant (repeatable)")
    parser.add_argument(
        "--sos-notify", action="append", metavar="ADDRESS", help="an SOS pendant that needs a connection"
    )
    parser.add_argument("--bthome", action="append", metavar="ADDRESS", help="a BTHome v2 button (repeatable)")
    parser.add_argument(
        "--bthome-key", metavar="HEX", help="BTHome buttons encrypt with this bind key (32 hex digits; default: none)"
    )
    parser.add_argument("--records", type=int, default=3, help="records stored on each cuff at start")
    parser.add_argument(
        "--cuff-legacy", action="store_true", help="cuffs without RACP (indicate all records on subscribe)"
    )
    parser.add_argument(
        "--cuff-always-advertise",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cuffs advertise all the time (off: only for a minute after a measurement or 'wake')",
    )
    parser.add_argument("--ppg-rate", type=float, default=100.0, help="wrist PPG sample rate, Hz")
    parser.add_argument("--ppg-per-frame", type=int, default=1, help="PPG samples per notification")
    parser.add_argument("--hr", type=float, default=68.0, help="wrist heart rate, /min")
    parser.add_argument("--spo2", type=float, default=97.0, help="wrist SpO2, %%")
    parser.add_argument("--af", action="store_true", help="wrist: irregularly irregular beats (atrial fibrillation)")
    parser.add_argument(
        "--wrist-accel",
        action="store_true",
        help="wrist: 3-axis acceleration and activity flag in the PPG frames (format 2); 'set walking=true'",
    )
    parser.add_argument(
        "--temporary-timeout", type=float, default=30.0, help="seconds before an unseen device is forgotten"
    )
    parser.add_argument("--page-timeout", type=float, default=5.0, help="seconds a Connect waits for an absent device")
    parser.add_argument("--supervision-timeout", type=float, default=1.0, help="seconds before a silent link drops")
    parser.add_argument("--log-level", default="WARNING")


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _send(args: argparse.Namespace) -> int:
    from simulators.bluez.control import ControlClient

    path = args.control or os.environ.get("BLE_SIM_CONTROL")
    if not path:
        print("gateway-sim ble: --control PATH (or BLE_SIM_CONTROL) names the simulator to command", file=sys.stderr)
        return 2
    op, *rest = args.op
    request: dict[str, Any] = {}
    for item in rest:
        if "=" in item:
            key, _, value = item.partition("=")
            request[key] = _value(value)
        elif "device" not in request:
            request["device"] = item
        else:
            print(f"gateway-sim ble: unexpected argument {item!r}", file=sys.stderr)
            return 2
    try:
        result = ControlClient(path).call(op, **request)
    except (OSError, RuntimeError) as exc:
        print(f"gateway-sim ble: {op}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def build_peripherals(args: argparse.Namespace) -> list[Any]:
    from simulators.bluez.peripherals import BpCuff, SosPendant, WristMonitor

    wrists = args.wrist or []
    cuffs = args.cuff or []
    soses = args.sos or []
    sos_notify = args.sos_notify or []
    bthomes = getattr(args, "bthome", None) or []
    if not (wrists or cuffs or soses or sos_notify or bthomes):
        wrists, cuffs, soses = [DEFAULT_WRIST], [DEFAULT_CUFF], [DEFAULT_SOS]
    out: list[Any] = []
    for i, addr in enumerate(wrists):
        out.append(
            WristMonitor(
                addr,
                f"HC Wrist {i + 1}" if len(wrists) > 1 else "HC Wrist",
                ppg_rate_hz=args.ppg_rate,
                ppg_per_frame=args.ppg_per_frame,
                hr_bpm=args.hr,
                spo2_pct=args.spo2,
                af=args.af,
                seed=i + 1,
                accel=args.wrist_accel,
            )
        )
    for i, addr in enumerate(cuffs):
        out.append(
            BpCuff(
                addr,
                f"HC Cuff {i + 1}" if len(cuffs) > 1 else "HC Cuff",
                records=args.records,
                racp=not args.cuff_legacy,
                always_advertise=args.cuff_always_advertise,
                seed=i + 3,
            )
        )
    for addr in soses:
        out.append(SosPendant(addr))
    for addr in sos_notify:
        out.append(SosPendant(addr, "HC SOS-N", notify=True))
    if bthomes:
        from simulators.bluez.bthome import BthomeButton

        key = bytes.fromhex(args.bthome_key) if getattr(args, "bthome_key", None) else None
        out += [BthomeButton(addr, key=key) for addr in bthomes]
    return out


async def serve(args: argparse.Namespace, workdir: Path, ready: Any = None) -> None:
    from simulators.bluez.bus import PrivateBus
    from simulators.bluez.control import ControlServer
    from simulators.bluez.core import VirtualBlueZ

    bus = PrivateBus(workdir)
    bus.start()
    try:
        sim = VirtualBlueZ(
            bus.address,
            build_peripherals(args),
            adapters=args.adapters,
            max_connections=args.max_connections,
            temporary_timeout_s=args.temporary_timeout,
            page_timeout_s=args.page_timeout,
            supervision_timeout_s=args.supervision_timeout,
        )
        await sim.start()
        control = ControlServer(sim, workdir / "control.sock")
        await control.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"DBUS_SYSTEM_BUS_ADDRESS={bus.address}")
        print(f"BLE_SIM_CONTROL={control.path}")
        for p in sim.peripherals.values():
            print(f"device {p.kind} {p.address} {json.dumps(p.name)}")
        print("ready", flush=True)
        if ready is not None:
            ready()
        try:
            await stop.wait()
        finally:
            await control.stop()
            await sim.stop()
    finally:
        bus.stop()


def run(args: argparse.Namespace) -> int:
    if args.op:
        return _send(args)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    own_dir = args.workdir is None
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="hc-ble-", dir="/tmp"))
    try:
        asyncio.run(serve(args, workdir))
    except KeyboardInterrupt:
        pass
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway-sim ble")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
