"""gatewayctl: the technician's CLI.

Talks to the running daemon over its local control socket (``<data_dir>/control.sock``, group
``homecare``); what needs no daemon (``config show|validate|set``, ``outbox export``, ``doctor``,
``devices scan``) works when it is down. ``--json`` on every command.

Exit codes: 0 ok; 1 the daemon refused or a check failed; 2 usage or configuration error; 3 the daemon
is not reachable. ``doctor``: 0 all good, 1 warnings, 2 failures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import os
import socket
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.config import DEFAULT_CONFIG_PATH, Config, load_config
from gateway.errors import ConfigError
from gateway.messages import press_role_of

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NO_DAEMON = 0, 1, 2, 3


class DaemonUnreachable(Exception):
    pass


class Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- talking to the daemon ----------------------------------------------------------------------


@contextlib.contextmanager
def _connect(socket_path: Path, timeout_s: float | None) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout_s)
        try:
            s.connect(str(socket_path))
        except FileNotFoundError:
            raise DaemonUnreachable(f"{socket_path} does not exist: is gatewayd running?") from None
        except PermissionError:
            raise DaemonUnreachable(f"{socket_path}: permission denied (be root or in group 'homecare')") from None
        except ConnectionRefusedError:
            raise DaemonUnreachable(f"{socket_path}: connection refused: gatewayd is not running") from None
        yield s
    finally:
        s.close()


def _lines(s: socket.socket, deadline: float | None = None) -> Iterator[dict[str, Any]]:
    buf = b""
    while True:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            if deadline is not None:
                return
            raise DaemonUnreachable("the daemon did not answer in time") from None
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield json.loads(line)


def request(socket_path: Path, cmd: str, timeout_s: float = 10.0, **params: Any) -> dict[str, Any]:
    """One request, one reply (``{"ok": ..., "result"|"error": ...}``)."""
    with _connect(socket_path, timeout_s) as s:
        s.sendall(json.dumps({"cmd": cmd, **params}).encode() + b"\n")
        for reply in _lines(s):
            return reply
    raise DaemonUnreachable("the daemon closed the connection")


def call(socket_path: Path, cmd: str, timeout_s: float = 10.0, **params: Any) -> Any:
    reply = request(socket_path, cmd, timeout_s, **params)
    if not reply.get("ok"):
        raise Refused(str(reply.get("code", "refused")), str(reply.get("error")))
    return reply.get("result")


def stream(socket_path: Path, cmd: str, deadline: float | None = None, **params: Any) -> Iterator[dict[str, Any]]:
    with _connect(socket_path, 10.0) as s:
        s.sendall(json.dumps({"cmd": cmd, **params}).encode() + b"\n")
        s.settimeout(None)
        for reply in _lines(s, deadline):
            if not reply.get("ok"):
                raise Refused(str(reply.get("code")), str(reply.get("error")))
            if reply.get("end"):
                return
            yield reply["item"]


# -- output -------------------------------------------------------------------------------------


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
    print_outbox(ob)
    if ob.get("stream"):
        print(f"          stream {ob['stream']} from seq {ob['stream_first_seq']}")
    if clk := st.get("clock"):
        sync = "synchronised" if clk["synchronised"] else "NOT synchronised"
        print(f"clock     {sync} ({clk['source']}), {clk['steps']} steps, {clk['corrected_messages']} corrected")
    print("devices")
    print_devices(st["devices"])
    print_calls((st.get("care") or {}).get("calls") or [])
    if why := (st.get("registry") or {}).get("unavailable"):  # gateway/registry.py
        print(f"registry  NOT AVAILABLE ({why}): devices added at run time are not running; restart when fixed")
    if (lp := st.get("loop")) and lp["stalls"]:  # gateway/loopwatch.py
        print(
            f"loop      {lp['stalls']} stalls of {lp['stall_ms']} ms or more (longest {lp['max_lag_ms']:.0f} ms, "
            f"last {_age(lp['last_stall_ago_s'])} ago): something blocked the daemon; see its log"
        )
    bugs = st.get("bugs") or {}
    if bugs.get("total"):
        where = ", ".join(f"{k} {v}" for k, v in bugs.items() if k != "total" and v)
        print(f"bugs      {bugs['total']} ({where}): errors the code did not expect, logged at ERROR; please report")
    if st.get("alarm"):  # the SMS fallback (gateway/alarm.py)
        from gateway.alarm import describe_status

        print("\n".join(describe_status(st["alarm"])))


def print_calls(calls: list[dict[str, Any]]) -> None:
    """Open call requests (presses of ``call`` buttons the care service has not acknowledged yet)."""
    if not calls:
        return
    n = len(calls)
    print(f"calls     {n} open call request{'s' if n != 1 else ''}, waiting for the care service to phone back")
    for c in calls:
        who = f" ({c['person_id']})" if c.get("person_id") and c["person_id"] != "default" else ""
        flags = "".join((", reminded" if c["reminded"] else "", ", DRILL" if c["drill"] else ""))
        presses = f"{c['presses']} press{'es' if c['presses'] != 1 else ''}"
        print(
            f"          {c['alert_id']}  {c['device_id']}{who}: {presses}, first {c['first_press_at']}, "
            f"last {c['last_press_at']}, waiting {_age(c['waiting_s'])}{flags}"
        )


def print_outbox(ob: dict[str, Any]) -> None:
    depth, ages = ob["depth"], ob["oldest_age_s"]
    print(
        f"outbox    {sum(depth.values())} waiting ({ob['bytes'] / 1e6:.1f} of {ob['max_bytes'] / 1e6:.0f} MB), "
        f"last seq {ob['last_seq']}"
    )
    for lane in ("alert", "observation", "state", "bulk"):
        print(f"          {lane:<12} {depth[lane]:>8}   oldest {_age(ages[lane])}")
    ranges = f"  ranges {ob['evicted_ranges']}" if ob["evicted_ranges"] else ""
    print(f"          evicted {ob['evicted_total']}{ranges}")


def print_devices(devices: list[dict[str, Any]]) -> None:
    if not devices:
        print("          (none)")
    for d in devices:
        reason = f" ({d['reason']})" if d.get("reason") and d["state"] != "connected" else ""
        origin = f" [{d['origin']}]" if d.get("origin") else ""
        seen = d.get("last_seen") or "never"
        print(f"          {d['id']:<16} {d.get('kind') or '?':<14} {d['state']}{reason}  last seen {seen}{origin}")


def emit(args: argparse.Namespace, data: Any, human: Any = None) -> None:
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    elif human is not None:
        human()
    else:
        print(data if isinstance(data, str) else json.dumps(data, indent=2, default=str))


def progress(args: argparse.Namespace, text: str) -> None:
    """Progress for anything that takes more than a second: on stderr, so --json stays clean."""
    if sys.stderr.isatty():
        print(f"\r{text}\033[K", end="", file=sys.stderr, flush=True)
    else:
        print(text, file=sys.stderr, flush=True)


# -- commands -----------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace, cfg: Config) -> int:
    st = call(cfg.gateway.socket_path, "status")
    emit(args, st, lambda: print_status(st))
    return EXIT_OK


def cmd_devices(args: argparse.Namespace, cfg: Config) -> int:
    sock = cfg.gateway.socket_path
    action = args.action or "list"
    if action == "list":
        res = call(sock, "devices")
        emit(args, res, lambda: print_devices(res["devices"]))
        return EXIT_OK
    if action == "add":
        options: dict[str, Any] = {}
        for item in args.option or []:
            key, sep, value = item.partition("=")
            if not sep:
                print(f"gatewayctl: --option {item!r}: expected KEY=VALUE", file=sys.stderr)
                return EXIT_USAGE
            import tomllib

            from gateway.tomledit import toml_value

            options[key] = tomllib.loads(f"x = {toml_value(value)}")["x"]
        device = {"id": args.id, "kind": args.kind, "options": options}
        if args.transport:
            device["transport"] = args.transport
        res = call(sock, "device-add", device=device)
        emit(args, res, lambda: print(f"added {res['device']['id']} ({res['device']['kind']})"))
        return EXIT_OK
    if action == "remove":
        res = call(sock, "device-remove", device_id=args.id)
        emit(args, res, lambda: print(f"removed {args.id}"))
        return EXIT_OK
    raise AssertionError(action)


def cmd_kinds(args: argparse.Namespace) -> int:
    """``devices kinds``: the registry's kinds with their facts and options (no daemon needed)."""
    from drivers.base import UnknownDeviceKind, all_kinds, driver_class

    kinds: list[dict[str, Any]] = []
    for kind in sorted(all_kinds()):
        try:
            cls = driver_class(kind)
        except (UnknownDeviceKind, ImportError) as exc:
            kinds.append({"kind": kind, "available": False, "reason": str(exc)})
            continue
        options = [
            {"key": key, "expected": expected, "default": default, "doc": doc}
            for key, expected, default, doc in cls.Options.describe()
        ]
        kinds.append(
            {
                "kind": kind,
                "available": True,
                "transport": cls.transport,
                "summary": cls.summary,
                "measures": list(cls.loinc_codes),
                "options": options,
            }
        )

    def human() -> None:
        for k in kinds:
            if not k["available"]:
                print(f"{k['kind']}: not available here ({k['reason']})")
                continue
            print(f"{k['kind']} ({k['transport']}): {k['summary']}")
            for o in k["options"]:
                default = "required" if o["default"] is None else f"default {o['default']!r}"
                doc = f"; {o['doc']}" if o["doc"] else ""
                print(f"    {o['key']:<20} {o['expected']}, {default}{doc}")

    emit(args, {"kinds": kinds}, human)
    return EXIT_OK


def cmd_radio(args: argparse.Namespace) -> int:
    """``devices scan`` and ``devices pair``: no daemon needed."""
    from gateway.scan import pair, scan

    if args.action == "scan":
        found = scan(seconds=args.seconds, progress=lambda t: progress(args, t))
        emit(args, {"devices": found}, lambda: _print_scan(found))
        return EXIT_OK
    res = pair(args.id, timeout_s=args.seconds, progress=lambda t: progress(args, t))
    emit(args, res, lambda: print(f"{args.id}: paired={res['paired']} {res.get('detail', '')}"))
    return EXIT_OK if res["paired"] else EXIT_REFUSED


def _print_scan(found: list[dict[str, Any]]) -> None:
    if not found:
        print("no supported device found")
    for d in found:
        signal = f"{d['rssi_dbm']} dBm" if d.get("rssi_dbm") is not None else ""
        print(f"{d['transport']:<7} {d['address']:<40} {d.get('kind') or '?':<14} {d.get('name') or '':<20} {signal}")


def cmd_config(args: argparse.Namespace, cfg_path: Path) -> int:
    action = args.action
    if action == "validate":
        path = Path(args.path) if args.path else cfg_path
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            message = str(exc)
            emit(args, {"valid": False, "error": message}, lambda: print(f"invalid: {message}"))
            return EXIT_REFUSED
        emit(
            args,
            {"valid": True, "devices": len(cfg.devices)},
            lambda: print(f"{path}: valid ({len(cfg.devices)} devices)"),
        )
        return EXIT_OK
    cfg = load_config(cfg_path)
    if action == "show":
        shown = _redacted(cfg)
        emit(args, shown)
        return EXIT_OK
    if action == "set":
        from gateway.tomledit import apply

        new, value = apply(cfg_path, args.key, args.value)
        result: dict[str, Any] = {"key": args.key, "value": value, "written": str(cfg_path)}
        try:
            result["reload"] = call(new.gateway.socket_path, "reload", timeout_s=30)
        except DaemonUnreachable:
            result["reload"] = None

        def human() -> None:
            print(f"{args.key} = {value!r} written to {cfg_path}")
            rl = result["reload"]
            if rl is None:
                print("gatewayd is not running: the change applies when it starts")
            else:
                print(f"applied now: {', '.join(rl['applied']) or 'nothing to apply'}")
                if rl["restart_needed"]:
                    print(f"needs a restart (systemctl restart gatewayd): {', '.join(rl['restart_needed'])}")

        emit(args, result, human)
        return EXIT_OK
    raise AssertionError(action)


def _redacted(cfg: Config) -> dict[str, Any]:
    up = cfg.uplink
    return {
        "file": str(cfg.path),
        "gateway": {
            "id": cfg.gateway.id,
            "data_dir": str(cfg.gateway.data_dir),
            "control_socket": str(cfg.gateway.socket_path),
        },
        "uplink": {
            "host": up.host,
            "port": up.port,
            "tls": up.tls,
            "ca_file": _s(up.ca_file),
            "cert_file": _s(up.cert_file),
            "key_file": _s(up.key_file),
            "username": up.username,
            "password_file": _s(up.password_file),
            "keepalive": up.keepalive_s,
            "protocol": up.protocol,
            "inflight_window": up.inflight_window,
            "topic_prefix": up.topic_prefix,
        },
        "outbox": {
            "max_bytes": cfg.outbox.max_bytes,
            "commit_interval_ms": cfg.outbox.commit_interval_ms,
            "historical_after_s": cfg.outbox.historical_after_s,
        },
        "devices": [
            {"id": d.id, "kind": d.kind, "transport": d.transport, **d.options.to_mapping()} for d in cfg.devices
        ],
    }


def _s(p: Path | None) -> str | None:
    return str(p) if p is not None else None


def cmd_tail(args: argparse.Namespace, cfg: Config) -> int:
    deadline = time.monotonic() + args.seconds if args.seconds else None
    try:
        for item in stream(cfg.gateway.socket_path, "tail", deadline):
            if args.json:
                print(json.dumps(item), flush=True)
            else:
                print(_describe(item), flush=True)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _describe(item: dict[str, Any]) -> str:
    head = f"{item['captured_at']}  {item['device_id']:<16}"
    kind = item["type"]
    if kind == "observation":
        q = f" q={item['quality']:.2f}" if item.get("quality") is not None else ""
        return f"{head} {item['code']:<22} {item['value']} {item['unit']} ({item['method']}{q})"
    if kind == "sos":
        return f"{head} SOS PRESS" + (f" ({item['pattern']})" if item.get("pattern") else "")
    if kind == "call":
        return f"{head} CALL PRESS" + (f" ({item['pattern']})" if item.get("pattern") else "")
    if kind == "device_state":
        return f"{head} {item['state']}" + (f" ({item['reason']})" if item.get("reason") else "")
    return f"{head} {kind}"


def cmd_drill(args: argparse.Namespace, cfg: Config) -> int:
    sock = cfg.gateway.socket_path
    if args.stop:
        res = call(sock, "drill-stop")
        emit(args, res, lambda: print("drill stopped"))
        return EXIT_OK
    if not args.button and not args.all_buttons:
        _error(args, "usage", "name the buttons under test (--button ID, repeatable) or say --all-buttons")
        return EXIT_USAGE
    known = {p["alert_id"] for p in call(sock, "drill-report")["presses"]}
    scope: dict[str, Any] = {"buttons": sorted(set(args.button))} if args.button else {"all_buttons": True}
    res = call(sock, "drill", duration_s=int(args.minutes * 60), **scope)
    if not args.wait:
        which = "every button" if args.all_buttons else ", ".join(res["buttons"])
        text = (
            f"drill window open until {res['drill_until']} for {which}: the first press of each is sent with "
            "drill = true; any other press is a real emergency"
        )
        emit(args, res, lambda: print(text))
        return EXIT_OK
    # Wait for a press, its arrival at the broker, and (up to --ack-timeout) the care centre's ack.
    started = time.monotonic()
    press: dict[str, Any] | None = None
    while time.monotonic() - started < args.minutes * 60:
        new = [p for p in call(sock, "drill-report")["presses"] if p["alert_id"] not in known]
        if new:
            press = new[0]
            if press["press_to_broker_ms"] is not None:
                break
        progress(args, f"drill: waiting for a press (SOS or call button)... {time.monotonic() - started:.0f} s")
        time.sleep(0.25)
    if press is None:
        _error(args, "no_press", "no button press during the drill window")
        return EXIT_REFUSED
    ack_deadline = time.monotonic() + args.ack_timeout
    while press["press_to_ack_s"] is None and time.monotonic() < ack_deadline:
        progress(args, f"drill: at the broker after {press['press_to_broker_ms']} ms; waiting for the care centre")
        time.sleep(0.5)
        alert_id = press["alert_id"]
        press = next(p for p in call(sock, "drill-report")["presses"] if p["alert_id"] == alert_id)
    final = press

    def human() -> None:
        what = "call request" if press_role_of(final["alert_id"]) == "call" else "SOS"
        print(f"drill press ({what}) from {final['device_id']} at {final['pressed_at']}")
        print(f"  reached the broker after {final['press_to_broker_ms']} ms")
        ack = final["press_to_ack_s"]
        if ack is not None:
            print(f"  acknowledged by the care centre after {ack} s")
        else:
            print(f"  not acknowledged by the care centre within {args.ack_timeout:g} s")

    emit(args, {"drill": res, "press": final}, human)
    return EXIT_OK


def cmd_outbox(args: argparse.Namespace, cfg: Config) -> int:
    if args.action == "export":
        return _export(args, cfg)
    try:
        st = call(cfg.gateway.socket_path, "status")
        ob = st["outbox"]
    except DaemonUnreachable:
        ob = _read_outbox_stats(cfg)
    emit(args, ob, lambda: print_outbox(ob))
    return EXIT_OK


def _outbox_path(cfg: Config) -> Path:
    path = cfg.gateway.data_dir / "outbox.sqlite3"
    if not path.exists():
        raise ConfigError(f"{path}: no outbox here (is data_dir right?)")
    return path


def _open_ro(cfg: Config) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{_outbox_path(cfg)}?mode=ro", uri=True)


def _read_outbox_stats(cfg: Config) -> dict[str, Any]:
    from gateway.outbox import read_summary

    summary = read_summary(_outbox_path(cfg))
    keys = ("depth", "oldest_age_s", "bytes", "last_seq", "evicted_total", "evicted_ranges")
    return {k: summary[k] for k in keys} | {"max_bytes": cfg.outbox.max_bytes}


def _export(args: argparse.Namespace, cfg: Config) -> int:
    """Undelivered messages as JSON lines (topic, seq, payload), read-only: the daemon may be running."""
    out_path = Path(args.file)
    db = _open_ro(cfg)
    n = 0
    try:
        total = db.execute("SELECT COUNT(*) FROM msg").fetchone()[0]
        # Health data: the file is its creator's alone (0600), whatever the umask.
        fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "w", encoding="utf-8") as fh:
            for seq, topic, body, retain in db.execute("SELECT seq, topic, body, retain FROM msg ORDER BY lane, seq"):
                payload = json.loads(body)
                payload.update(seq=seq, historical=True)
                fh.write(json.dumps({"topic": topic, "retain": bool(retain), "payload": payload}) + "\n")
                n += 1
                if n % 10_000 == 0:
                    progress(args, f"exported {n} of {total} messages")
    except FileExistsError:
        print(f"gatewayctl: {out_path} exists: choose a new file name", file=sys.stderr)
        return EXIT_USAGE
    finally:
        db.close()
    emit(
        args, {"file": str(out_path), "messages": n}, lambda: print(f"exported {n} undelivered messages to {out_path}")
    )
    return EXIT_OK


def cmd_report(args: argparse.Namespace, cfg: Config) -> int:
    """``report``: the daily summary (gateway/summary.py), from the daemon or, when it is not running,
    from its store read-only; ``--send`` publishes it now (through the daemon's outbox)."""
    from gateway.summary import format_text, local_zone
    from gateway.summarystore import STORE_NAME, SummaryStoreError, open_readonly

    params: dict[str, Any] = {"date": args.date, "person": args.person, "send": args.send, "series": bool(args.png)}
    try:
        res = call(cfg.gateway.socket_path, "report", timeout_s=30, **params)
    except Refused as exc:
        if exc.code != "unknown_command":
            raise
        _error(args, "summary_off", "the daemon keeps no daily summary ([summary] enabled = false)")
        return EXIT_REFUSED
    except DaemonUnreachable:
        if args.send:
            raise
        try:
            res = _report_offline(cfg, args, open_readonly(cfg.gateway.data_dir / STORE_NAME))
        except SummaryStoreError as exc:
            _error(args, "no_summary", str(exc))
            return EXIT_REFUSED
    items = res["summaries"]
    if not items:
        _error(args, "no_summary", "no person or device has a summary for that day")
        return EXIT_REFUSED
    zone = local_zone(cfg.summary.timezone)
    if args.png:
        from gateway.summaryplot import PlotUnavailable, draw

        base = Path(args.png)
        try:
            for item in items:
                path = (
                    base
                    if len(items) == 1
                    else base.with_name(f"{base.stem}-{item['summary']['subject']}{base.suffix}")
                )
                draw(item["summary"], item["series"], zone, path)
                progress(args, f"wrote {path}")
        except PlotUnavailable as exc:
            _error(args, "no_matplotlib", str(exc))
            return EXIT_USAGE
    bodies = [item["summary"] for item in items]
    emit(
        args,
        bodies[0] if args.person else bodies,
        lambda: print("\n\n".join(format_text(b, zone) for b in bodies)),
    )
    return EXIT_OK


def _report_offline(cfg: Config, args: argparse.Namespace, store: Any) -> dict[str, Any]:
    from gateway.summarydesk import Subjects, build, schedule_of, subjects_of_day

    try:
        schedule = schedule_of(cfg)
        subjects = Subjects(cfg)
        now = time.time()
        date = dt.date.fromisoformat(args.date) if args.date else schedule.date_of(now)
        names = [args.person] if args.person else subjects_of_day(store, schedule, subjects, date)
        # the gateway is not running: a connection open at its last save counts until then
        alive = store.meta().get("alive_at", now)
        items = [
            build(store, schedule, subjects, n, date, min(now, alive), link_until=alive, with_series=bool(args.png))
            for n in names
        ]
    finally:
        store.close()
    return {"summaries": items}


def cmd_doctor(args: argparse.Namespace, cfg_path: Path) -> int:
    doctor = importlib.import_module("gateway.doctor")

    findings = doctor.run_checks(
        cfg_path, socket_path=Path(args.socket) if args.socket else None, progress=lambda t: progress(args, t)
    )
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr, flush=True)  # the last progress line, gone
    if args.json:
        print(json.dumps(doctor.to_json(findings), indent=2))
    else:
        print(doctor.format_text(findings))
    return int(doctor.exit_code(findings))


# -- main ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatewayctl", description="Homecare gateway technician CLI")
    parser.add_argument("--config", "-c", help=f"gateway configuration (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--socket", help="control socket (default: from the configuration)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="uplink, outbox depth per lane, oldest message age, evictions, devices")

    dev = sub.add_parser("devices", help="list, scan, add, remove, pair devices")
    dsub = dev.add_subparsers(dest="action")
    dsub.add_parser("list", help="configured and seen devices with their state")
    dsub.add_parser("kinds", help="every device kind this gateway supports, with its options")
    scan = dsub.add_parser("scan", help="nearby supported BLE devices and plugged-in serial devices")
    scan.add_argument("--seconds", type=float, default=8.0)
    add = dsub.add_parser("add", help="add a device without editing the configuration file")
    add.add_argument("id")
    add.add_argument("kind")
    add.add_argument("--transport")
    add.add_argument("--option", "-o", action="append", metavar="KEY=VALUE", help="e.g. -o port=/dev/serial/by-id/...")
    rm = dsub.add_parser("remove", help="remove a device added with `devices add` or by the cloud")
    rm.add_argument("id")
    pair = dsub.add_parser("pair", help="pair (bond) with a BLE device, e.g. a blood-pressure cuff")
    pair.add_argument("id", metavar="ADDRESS")
    pair.add_argument("--seconds", type=float, default=30.0)

    conf = sub.add_parser("config", help="show, validate or set the configuration")
    csub = conf.add_subparsers(dest="action", required=True)
    csub.add_parser("show", help="the effective configuration (secrets are file names only)")
    val = csub.add_parser("validate", help="check a configuration file (no daemon needed)")
    val.add_argument("path", nargs="?")
    st = csub.add_parser("set", help="change one key (validated; applied without restart where possible)")
    st.add_argument("key", help="section.key or devices.<id>.<key>")
    st.add_argument("value")

    tail = sub.add_parser("tail", help="live readings and alerts")
    tail.add_argument("--seconds", type=float, default=0.0, help="stop after N seconds")

    drill = sub.add_parser("drill", help="start (or stop) an emergency-call drill window")
    drill.add_argument("--minutes", type=float, default=15.0, help="window length, at most 30 minutes")
    drill.add_argument("--button", action="append", default=[], metavar="ID", help="a button under test (repeat)")
    drill.add_argument("--all-buttons", action="store_true", help="every button is under test")
    drill.add_argument("--stop", action="store_true")
    drill.add_argument("--wait", action="store_true", help="wait for a press and report its press-to-cloud time")
    drill.add_argument("--ack-timeout", type=float, default=60.0, help="seconds to wait for the care centre's ack")

    ob = sub.add_parser("outbox", help="outbox depth per lane, oldest age, evictions; export undelivered")
    osub = ob.add_subparsers(dest="action")
    osub.add_parser("stats")
    exp = osub.add_parser("export", help="write undelivered messages to a file (JSON lines)")
    exp.add_argument("file")

    sub.add_parser("doctor", help="check everything a technician needs, and say what to do")

    rep = sub.add_parser("report", help="the daily summary of a day (default: the day in progress, so far)")
    rep.add_argument("--date", type=_iso_date, help="the day, YYYY-MM-DD (the date its summary time falls on)")
    rep.add_argument("--person", metavar="ID", help="one person (or a device of no person); default: everyone")
    rep.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="the message body (JSON)")
    rep.add_argument("--png", metavar="FILE", help="draw the day (needs the optional extra 'report': matplotlib)")
    rep.add_argument("--send", action="store_true", help="publish it now (a day in progress: marked partial)")
    return parser


def _iso_date(text: str) -> str:
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected YYYY-MM-DD") from None
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg_path = Path(args.config) if args.config else DEFAULT_CONFIG_PATH
    try:
        if args.command == "config":
            return cmd_config(args, cfg_path)
        if args.command == "doctor":
            return cmd_doctor(args, cfg_path)
        if args.command == "devices" and args.action in ("scan", "pair"):
            return cmd_radio(args)
        if args.command == "devices" and args.action == "kinds":
            return cmd_kinds(args)
        cfg = load_config(cfg_path)
        if args.socket:
            cfg = _with_socket(cfg, Path(args.socket))
        handler = {
            "status": cmd_status,
            "devices": cmd_devices,
            "tail": cmd_tail,
            "drill": cmd_drill,
            "outbox": cmd_outbox,
            "report": cmd_report,
        }[args.command]
        return handler(args, cfg)
    except ConfigError as exc:
        _error(args, "config", str(exc))
        return EXIT_USAGE
    except DaemonUnreachable as exc:
        _error(args, "daemon_unreachable", str(exc))
        return EXIT_NO_DAEMON
    except Refused as exc:
        _error(args, exc.code, str(exc))
        return EXIT_REFUSED


def _with_socket(cfg: Config, path: Path) -> Config:
    from dataclasses import replace

    return replace(cfg, gateway=replace(cfg.gateway, control_socket=path))


def _error(args: argparse.Namespace, code: str, message: str) -> None:
    if args.json:
        print(json.dumps({"ok": False, "code": code, "error": message}))
    else:
        print(f"gatewayctl: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
