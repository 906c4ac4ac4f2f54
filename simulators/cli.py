"""gateway-sim: device simulators, a local broker, the cloud viewer and the demo.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their subcommand runs, so a missing optional stack (D-Bus for the BLE
simulator) never breaks the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("simulators.demo", "broker + simulators + gatewayd + cloud viewer, all local"),
    "viewer": ("simulators.viewer", "print what the cloud receives, checked against the contract"),
    "broker": ("simulators.broker_cli", "run a local Mosquitto on a free loopback port"),
    "rfxtrx": ("simulators.rfxtrx_sim", "RFXtrx433E receiver with SOS pendants on a pty"),
    "ble": ("simulators.bluez.cli", "virtual BlueZ on a private D-Bus with simulated BLE devices"),
    "cms50": ("simulators.cms50_sim", "Contec CMS50D+ pulse oximeter on a pty"),
    "bp": ("simulators.bp_sim", "serial blood-pressure monitor on a pty"),
    "modem": ("simulators.modem_sim", "cellular modem (AT commands, SMS) on a pty"),
}


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="gateway-sim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = args_in[0] if args_in and args_in[0] in SUBCOMMANDS else None
    modules = {}
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == wanted:
            try:
                modules[name] = importlib.import_module(module_name)
            except ImportError as exc:
                print(f"gateway-sim {name}: not available: {exc}", file=sys.stderr)
                return 2
            modules[name].add_arguments(p)
    args = parser.parse_args(args_in)
    result: int = modules[args.command].run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
