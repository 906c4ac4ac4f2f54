"""``gateway-sim broker``: a local Mosquitto on a free (or given) loopback port, until Ctrl-C."""

from __future__ import annotations

import argparse
import time

from simulators.broker import Mosquitto


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=0, help="0: a free port")


def run(args: argparse.Namespace) -> int:
    with Mosquitto(port=args.port or None) as broker:
        print(f"broker: mosquitto listening on 127.0.0.1:{broker.port}", flush=True)
        try:
            while broker.proc is not None and broker.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0
