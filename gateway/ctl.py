"""gatewayctl: the technician's CLI. Talks to the running daemon over its local control socket.

Exit codes: 0 ok; 1 the daemon answered with an error; 2 usage or configuration error; 3 the daemon is
not running (or the socket is not reachable by this user).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path
from typing import Any

from gateway.config import DEFAULT_CONFIG_PATH, load_config
from gateway.errors import ConfigError

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NO_DAEMON = 0, 1, 2, 3


class DaemonUnreachable(Exception):
    pass


def request(socket_path: Path, cmd: str, timeout_s: float = 10.0, **params: Any) -> dict[str, Any]:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(str(socket_path))
            s.sendall(json.dumps({"cmd": cmd, **params}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except FileNotFoundError:
        raise DaemonUnreachable(f"{socket_path} does not exist: is gatewayd running?") from None
    except PermissionError:
        raise DaemonUnreachable(f"{socket_path}: permission denied (be root or in group 'homecare')") from None
    except ConnectionRefusedError:
        raise DaemonUnreachable(f"{socket_path}: connection refused: gatewayd is not running") from None
    except TimeoutError:
        raise DaemonUnreachable(f"{socket_path}: no answer in {timeout_s:g} s") from None
    reply: dict[str, Any] = json.loads(buf)
    return reply


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def print_status(st: dict[str, Any]) -> None:
    up, ob = st["uplink"], st["outbox"]
    print(f"gateway   {st['gateway_id']}  (version {st['version']}, up {_age(st['uptime_s'])})")
    since = up["connected_since"] or up["disconnected_since"] or "-"
    print(f"uplink    {up['state']}  broker {up['broker']}  TLS {'on' if up['tls'] else 'OFF'}  since {since}")
    if up["last_error"] and up["state"] != "connected":
        print(f"          last error: {up['last_error']}")
    print(f"          published {up['published']}, acknowledged {up['acked']}, refused {up['rejected']}")
    depth = ob["depth"]
    ages = ob["oldest_age_s"]
    print(
        f"outbox    {sum(depth.values())} waiting ({ob['bytes'] / 1e6:.1f} of {ob['max_bytes'] / 1e6:.0f} MB), "
        f"last seq {ob['last_seq']}"
    )
    for lane in ("alert", "observation", "state", "bulk"):
        print(f"          {lane:<12} {depth[lane]:>8}   oldest {_age(ages[lane])}")
    print(
        f"          evicted {ob['evicted_total']}"
        + (f"  ranges {ob['evicted_ranges']}" if ob["evicted_ranges"] else "")
    )
    print("devices")
    if not st["devices"]:
        print("          (none configured)")
    for d in st["devices"]:
        reason = f" ({d['reason']})" if d["reason"] and d["state"] != "connected" else ""
        print(f"          {d['id']:<16} {d['kind']:<14} {d['state']}{reason}  last seen {d['last_seen'] or 'never'}")


def socket_path_from(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    cfg = load_config(args.config or DEFAULT_CONFIG_PATH)
    return cfg.gateway.socket_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gatewayctl", description="Homecare gateway technician CLI")
    parser.add_argument("--config", "-c", help=f"gateway configuration (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--socket", help="control socket (default: from the configuration)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="uplink state, outbox depth per lane, oldest message age, evictions, devices")
    args = parser.parse_args(argv)
    try:
        path = socket_path_from(args)
        reply = request(path, args.command)
    except ConfigError as exc:
        print(f"gatewayctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DaemonUnreachable as exc:
        if args.json:
            print(json.dumps({"ok": False, "code": "daemon_unreachable", "error": str(exc)}))
        else:
            print(f"gatewayctl: {exc}", file=sys.stderr)
        return EXIT_NO_DAEMON
    if args.json:
        print(json.dumps(reply, indent=2))
        return EXIT_OK if reply.get("ok") else EXIT_REFUSED
    if not reply.get("ok"):
        print(f"gatewayctl: {reply.get('error')}", file=sys.stderr)
        return EXIT_REFUSED
    print_status(reply["result"])
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
