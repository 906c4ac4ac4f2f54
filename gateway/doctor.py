"""``gatewayctl doctor``: every check a technician needs, each answered in a sentence with what to do.

Each check gives a :class:`Finding`: an ``id`` (stable, documented in ``docs/troubleshooting.md``), a
status (``ok``, ``warn``, ``fail``, ``skip``), a sentence saying what is the case and, when something is
wrong, what to do about it. Facts go in ``details`` (JSON-able; never a physiological value).

Most checks need no daemon: the configuration, BlueZ on the system bus (``DBUS_SYSTEM_BUS_ADDRESS`` is
honoured), serial device permissions, the broker's DNS name, TCP port and TLS handshake (with the
certificate the broker presents), the configured certificate files, the clock, the disk, and the outbox
(read-only). When the daemon answers on its control socket its view is used for the devices and the
uplink; when it does not, devices are judged from the registry and the outbox.

The outbox is opened read-only and the broker only sees a TLS handshake (no MQTT session), so running
the doctor next to a running daemon disturbs nothing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import datetime as dt
import enum
import functools
import grp
import math
import os
import pwd
import shutil
import socket
import sqlite3
import ssl
import stat
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.base import DeviceConfigError, UnknownDeviceKind, driver_class
from drivers.serial.port import PortMissing, SerialOptions, resolve_port
from gateway.clock import kernel_clock_synchronised
from gateway.config import Config, load_config
from gateway.errors import ConfigError
from gateway.outbox import read_summary
from gateway.registry import DB_NAME, read_devices
from gateway.uplink import tls_context

Progress = Callable[[str], None]

NET_TIMEOUT_S = 5.0
CERT_WARN_DAYS = 21  # a certificate with fewer days left is a warning: time to get the next one
OUTBOX_FULL_FRACTION = 0.95  # at or above: the budget is used up and the oldest readings are being dropped
OUTBOX_HIGH_FRACTION = 0.80
ALERT_WAITING_FAIL_S = 120.0  # an alert (SOS) undelivered for longer than this is a failure
OBSERVATION_WAITING_WARN_S = 3600.0
DISK_MIN_FREE_BYTES = 64 * 1024 * 1024
SERVICE_USER = "homecare-gateway"
CONTROL_GROUP = "homecare"


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Finding:
    id: str
    status: Status
    message: str  # what is the case, in words a technician understands
    action: str = ""  # what to do about it ("" when nothing needs doing)
    details: Mapping[str, Any] = field(default_factory=dict)


def silence_warn_s(kind: str) -> float | None:
    """How long a device of ``kind`` may stay silent before it counts as "not seen recently" (a fact
    of its driver class: ``Driver.silence_warn_s``); None for kinds that send only on an event (an SOS
    pendant behind a radio receiver), whose link state is what counts."""
    try:
        return driver_class(kind).silence_warn_s
    except (UnknownDeviceKind, ImportError):
        return None


def _ok(fid: str, message: str, **details: Any) -> Finding:
    return Finding(fid, Status.OK, message, "", details)


def _warn(fid: str, message: str, action: str, **details: Any) -> Finding:
    return Finding(fid, Status.WARN, message, action, details)


def _fail(fid: str, message: str, action: str, **details: Any) -> Finding:
    return Finding(fid, Status.FAIL, message, action, details)


def _skip(fid: str, message: str, **details: Any) -> Finding:
    return Finding(fid, Status.SKIP, message, "", details)


# -- the run ------------------------------------------------------------------------------------


def run_checks(cfg_path: Path, socket_path: Path | None, progress: Progress) -> list[Finding]:
    """All checks, in the order a technician reads them."""
    findings: list[Finding] = []
    progress(f"reading the configuration {cfg_path}...")
    cfg: Config | None = None
    try:
        cfg = load_config(cfg_path)
        findings.append(
            _ok("config", f"The configuration {cfg_path} is valid ({len(cfg.devices)} devices).", file=str(cfg_path))
        )
    except ConfigError as exc:
        findings.append(
            _fail(
                "config",
                f"The configuration is not usable: {exc}",
                f"Fix the line named above (`gatewayctl config validate {cfg_path}` checks it again); "
                "config/gateway.example.toml documents every key.",
                file=str(cfg_path),
            )
        )
    sock = socket_path or (cfg.gateway.socket_path if cfg is not None else None)
    progress("asking the daemon for its status...")
    daemon_finding, status = check_daemon(sock)
    findings.append(daemon_finding)
    progress("checking the clock...")
    findings.append(check_clock())
    if cfg is None:
        for fid in ("disk", "outbox", "bluez", "broker", "devices"):
            findings.append(_skip(fid, "Not checked: the configuration is not usable."))
        return findings
    findings.append(check_disk(cfg))
    progress("checking the outbox (integrity check)...")
    findings.append(check_outbox(cfg, status))
    findings.extend(check_secrets(cfg))
    progress("checking Bluetooth (BlueZ on the system bus)...")
    findings.append(check_bluez(cfg))
    findings.extend(check_serial(cfg))
    findings.extend(check_certificates(cfg))
    findings.extend(check_broker(cfg, progress))
    findings.extend(check_devices(cfg, status))
    findings.extend(check_modem(cfg, status))
    return findings


def exit_code(findings: Sequence[Finding]) -> int:
    """0 all good, 1 warnings, 2 failures."""
    statuses = {f.status for f in findings}
    if Status.FAIL in statuses:
        return 2
    if Status.WARN in statuses:
        return 1
    return 0


def to_json(findings: Sequence[Finding]) -> dict[str, Any]:
    counts = {s.value: sum(1 for f in findings if f.status is s) for s in Status}
    return {
        "exit_code": exit_code(findings),
        "counts": counts,
        "findings": [
            {"id": f.id, "status": f.status.value, "message": f.message, "action": f.action, "details": dict(f.details)}
            for f in findings
        ],
    }


_LABEL = {Status.OK: "ok", Status.WARN: "WARN", Status.FAIL: "FAIL", Status.SKIP: "skip"}


def format_text(findings: Sequence[Finding]) -> str:
    width = max((len(f.id) for f in findings), default=10)
    lines = []
    for f in findings:
        lines.append(f"{_LABEL[f.status]:<5} {f.id:<{width}}  {f.message}")
        if f.action:
            lines.append(f"{'':<5} {'':<{width}}  -> {f.action}")
    c = to_json(findings)["counts"]
    verdict = {0: "all good", 1: "warnings: see above", 2: "failures: see above"}[exit_code(findings)]
    lines.append("")
    lines.append(f"{c['ok']} ok, {c['warn']} warnings, {c['fail']} failures, {c['skip']} skipped: {verdict}")
    return "\n".join(lines)


# -- daemon -------------------------------------------------------------------------------------


def check_daemon(sock: Path | None) -> tuple[Finding, dict[str, Any] | None]:
    from gateway.ctl import DaemonUnreachable, Refused, call

    if sock is None:
        return _skip("daemon", "Not checked: no control socket known (the configuration is not usable)."), None
    try:
        status = call(sock, "status", timeout_s=NET_TIMEOUT_S)
    except DaemonUnreachable as exc:
        denied = "permission denied" in str(exc)
        action = (
            "Run the doctor as root (sudo) or from a user in the group 'homecare'."
            if denied
            else "Start it: `sudo systemctl start gatewayd`; if it stops again, read why with "
            "`journalctl -u gatewayd -n 50`."
        )
        return _fail("daemon", f"The gateway daemon does not answer ({exc}).", action, socket=str(sock)), None
    except (Refused, OSError, ValueError) as exc:
        return _fail(
            "daemon",
            f"The gateway daemon answered but not with its status ({exc}).",
            "Restart it (`sudo systemctl restart gatewayd`) and report the journal (`journalctl -u gatewayd`).",
            socket=str(sock),
        ), None
    if not isinstance(status, dict):
        return _fail("daemon", "The daemon's status reply is not understood.", "Update gatewayctl and gatewayd."), None
    up = status.get("uplink", {})
    details = {
        "socket": str(sock),
        "uptime_s": status.get("uptime_s"),
        "version": status.get("version"),
        "uplink_state": up.get("state"),
        "uplink_last_error": up.get("last_error"),
    }
    uptime = _human_age(status.get("uptime_s"))
    stalled, loop = "", status.get("loop")
    if isinstance(loop, dict) and loop.get("stalls"):  # gateway/loopwatch.py
        details["loop"] = loop
        stalled = (
            f" Its event loop was blocked {loop['stalls']} times for {loop.get('stall_ms')} ms or more (longest "
            f"{loop.get('max_lag_ms')} ms, the last {_human_age(loop.get('last_stall_ago_s'))} ago): every device "
            "and the SOS path waited meanwhile."
        )
    stall_action = (
        " For the blocked event loop: look in `journalctl -u gatewayd` at the line 'event loop: blocked' and the "
        "lines just before it (a device, a slow SD card); report it with the journal."
    )
    if up.get("state") == "connected":
        said = f"The gateway daemon is running (up {uptime}) and connected to the broker {up.get('broker')}."
        if not stalled:
            return _ok("daemon", said, **details), status
        return _warn("daemon", said + stalled, stall_action.strip(), **details), status
    err = f" (last error: {up['last_error']})" if up.get("last_error") else ""
    return _warn(
        "daemon",
        f"The gateway daemon is running (up {uptime}) but is not connected to the broker {up.get('broker')}: "
        f"{up.get('state')}{err}. Readings wait in the outbox.{stalled}",
        "See the broker.* and cert.* findings below for the cause." + (stall_action if stalled else ""),
        **details,
    ), status


# -- clock ----------------------------------------------------------------------------------------


def check_clock(timesync_flag: Path = Path("/run/systemd/timesync/synchronized")) -> Finding:
    now = dt.datetime.now(dt.UTC)
    if now.year < 2025:
        return _fail(
            "clock",
            f"The clock says {now:%Y-%m-%d %H:%M} UTC, which cannot be right: readings would carry wrong times "
            "and certificates look invalid.",
            "Connect the gateway to the network so it can set its clock (a Raspberry Pi has no battery clock); "
            "check `timedatectl` and `systemctl status systemd-timesyncd`.",
        )
    kernel = kernel_clock_synchronised()
    if kernel is not None:
        synced, maxerror_us = kernel
        how = "the kernel's NTP flag, read with adjtimex as timedatectl does"
        if synced:
            return _ok(
                "clock",
                f"The clock is synchronised (decided from {how}; max error {maxerror_us / 1000:.0f} ms).",
                method="adjtimex",
                max_error_ms=round(maxerror_us / 1000, 1),
            )
        if timesync_flag.exists():
            return _ok(
                "clock",
                f"The clock was synchronised by systemd-timesyncd ({timesync_flag} exists), though the kernel "
                "flag is not set yet.",
                method="timesyncd-flag",
            )
        return _warn(
            "clock",
            f"The clock is not synchronised with a time server (decided from {how}). Reading times may drift.",
            'Check the network, then `timedatectl` ("System clock synchronized: yes") and '
            "`systemctl status systemd-timesyncd`; on a network that blocks NTP (UDP 123) set an allowed "
            "server in /etc/systemd/timesyncd.conf.",
            method="adjtimex",
        )
    if timesync_flag.exists():
        return _ok("clock", f"The clock is synchronised (systemd-timesyncd: {timesync_flag} exists).", method="flag")
    try:
        out = subprocess.run(
            ["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=NET_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        out = None
    if out is not None and out.returncode == 0 and out.stdout.strip() in ("yes", "no"):
        if out.stdout.strip() == "yes":
            return _ok("clock", "The clock is synchronised (timedatectl says so).", method="timedatectl")
        return _warn(
            "clock",
            "The clock is not synchronised with a time server (timedatectl says so).",
            "Check the network and `systemctl status systemd-timesyncd`.",
            method="timedatectl",
        )
    return _warn(
        "clock",
        "Whether the clock is synchronised cannot be told (no adjtimex, no timesyncd flag, no timedatectl).",
        "Check by hand with `date` against a phone; install systemd-timesyncd or chrony.",
        method="none",
    )


# -- disk and outbox ------------------------------------------------------------------------------


def _existing_parent(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _outbox_bytes(cfg: Config) -> int:
    db_path = cfg.gateway.data_dir / "outbox.sqlite3"
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += (db_path.parent / (db_path.name + suffix)).stat().st_size
        except OSError:
            pass
    return total


def check_disk(cfg: Config) -> Finding:
    where = _existing_parent(cfg.gateway.data_dir)
    try:
        usage = shutil.disk_usage(where)
    except OSError as exc:
        return _fail("disk", f"The disk space of {where} cannot be read: {exc.strerror}.", "Check the SD card.")
    room_needed = max(0, cfg.outbox.max_bytes - _outbox_bytes(cfg))
    details = {"path": str(where), "free_bytes": usage.free, "total_bytes": usage.total, "outbox_room": room_needed}
    free = f"{usage.free / 1e6:.0f} MB free of {usage.total / 1e6:.0f} MB"
    if usage.free < DISK_MIN_FREE_BYTES:
        return _fail(
            "disk",
            f"The disk holding {cfg.gateway.data_dir} is nearly full ({free}): readings cannot be stored much longer.",
            "Free space (`sudo journalctl --vacuum-size=50M`, `sudo apt-get clean`, remove old files) or use a "
            "larger SD card.",
            **details,
        )
    if usage.free < room_needed:
        return _warn(
            "disk",
            f"The disk holding {cfg.gateway.data_dir} has {free}, less than the outbox may still grow to "
            f"(outbox.max_bytes = {cfg.outbox.max_bytes / 1e6:.0f} MB): during a long network outage the disk "
            "fills before the outbox starts dropping the oldest readings by rule.",
            "Free space, or lower outbox.max_bytes (`gatewayctl config set outbox.max_bytes ...`).",
            **details,
        )
    return _ok("disk", f"The disk holding {cfg.gateway.data_dir} has {free}.", **details)


def read_outbox(path: Path, max_bytes: int) -> dict[str, Any]:
    """Depth, ages, size and evictions of an outbox file, read-only; ``integrity`` from ``quick_check``."""
    return read_summary(path, timeout_s=NET_TIMEOUT_S, integrity=True) | {"max_bytes": max_bytes}


def check_outbox(cfg: Config, status: Mapping[str, Any] | None) -> Finding:
    path = cfg.gateway.data_dir / "outbox.sqlite3"
    if not path.exists():
        if status is not None:
            return _fail("outbox", f"The daemon runs but its outbox {path} is missing.", "Restart the daemon.")
        return _warn(
            "outbox",
            f"There is no outbox at {path} yet: the daemon has never run with this data_dir.",
            "Start the daemon (`sudo systemctl start gatewayd`); if it was running before, check gateway.data_dir.",
            path=str(path),
        )
    try:
        ob = read_outbox(path, cfg.outbox.max_bytes)
    except sqlite3.Error as exc:
        return _fail(
            "outbox",
            f"The outbox {path} cannot be opened: {exc}.",
            "Check the file's owner (the service user) and the SD card (`dmesg | grep -i mmc`); keep a copy of the "
            "file before anything else.",
            path=str(path),
        )
    if status is not None and isinstance(status.get("outbox"), dict):
        live = status["outbox"]
        ob.update(
            depth=live.get("depth", ob["depth"]),
            oldest_age_s=live.get("oldest_age_s", ob["oldest_age_s"]),
            bytes=live.get("bytes", ob["bytes"]),
            evicted_total=live.get("evicted_total", ob["evicted_total"]),
        )
    details = {k: ob[k] for k in ("integrity", "depth", "oldest_age_s", "bytes", "max_bytes", "evicted_total")}
    details["path"] = str(path)
    if ob["integrity"] != "ok":
        return _fail(
            "outbox",
            f"The outbox {path} failed its integrity check ({ob['integrity']}): the SD card may be failing.",
            "Carry out what is waiting (`gatewayctl outbox export FILE`), then replace the SD card.",
            **details,
        )
    waiting = sum(ob["depth"].values())
    used = ob["bytes"] / ob["max_bytes"] if ob["max_bytes"] else 0.0
    budget = f"{ob['bytes'] / 1e6:.1f} of {ob['max_bytes'] / 1e6:.0f} MB"
    alert_age = ob["oldest_age_s"].get("alert")
    obs_age = ob["oldest_age_s"].get("observation")
    summary = f"{waiting} messages wait for delivery ({budget} of the outbox's disk budget used)"
    if used >= OUTBOX_FULL_FRACTION:
        return _fail(
            "outbox",
            f"The outbox is full: {summary}. The oldest readings are being dropped by rule to make room "
            f"({ob['evicted_total']} evicted so far; SOS alerts are never dropped).",
            "Restore the connection to the broker first (see daemon, broker.* and cert.*); to keep what waits, "
            "carry it out with `gatewayctl outbox export FILE`; if the disk allows, raise outbox.max_bytes.",
            **details,
        )
    if alert_age is not None and alert_age > ALERT_WAITING_FAIL_S:
        return _fail(
            "outbox",
            f"An SOS alert has waited {_human_age(alert_age)} without reaching the care platform; {summary}.",
            "Restore the connection to the broker now (see daemon, broker.* and cert.*) and call the care centre "
            "to tell them.",
            **details,
        )
    rec = ob.get("recovered")
    if isinstance(rec, dict):
        lost = sum(b - a + 1 for a, b in rec["unreadable_ranges"])
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(rec["at"]))
        progress = "were sent again" if rec["done"] else "are being sent again"
        return _warn(
            "outbox",
            f"The outbox was found damaged on {when} and replaced by a fresh one: {rec['salvaged']} of its messages "
            f"{progress}, {lost} seqs could not be read; the damaged file is kept at {rec['aside']}. The SD card "
            f"may be failing; {summary}.",
            "Replace the SD card soon (`dmesg | grep -i mmc` shows its errors); the damaged file may be deleted "
            "once it has been looked at.",
            **details,
            recovered=rec,
        )
    if used >= OUTBOX_HIGH_FRACTION:
        return _warn(
            "outbox",
            f"The outbox is nearly full: {summary}. When full, the oldest readings are dropped by rule.",
            "Restore the connection to the broker (see daemon, broker.* and cert.*).",
            **details,
        )
    if obs_age is not None and obs_age > OBSERVATION_WAITING_WARN_S:
        return _warn(
            "outbox",
            f"Readings have waited {_human_age(obs_age)} for delivery; {summary}.",
            "Check the connection to the broker (see daemon, broker.* and cert.*).",
            **details,
        )
    if ob["evicted_total"]:
        return _warn(
            "outbox",
            f"The outbox is healthy now ({summary}), but {ob['evicted_total']} older readings were dropped by rule "
            "during an earlier long outage (the care platform was told which).",
            "Nothing to do now; if this repeats, find why the connection was down so long.",
            **details,
        )
    return _ok("outbox", f"The outbox is healthy: {summary}; nothing was ever dropped.", **details)


# -- secrets and certificates ---------------------------------------------------------------------


def _device_secrets(cfg: Config) -> list[tuple[str, Path, Callable[[], None]]]:
    """(config key, path, content check) of every secret file a device's options name."""
    out: list[tuple[str, Path, Callable[[], None]]] = []
    for i, dev in enumerate(cfg.devices):
        try:
            cls = driver_class(dev.kind)
        except UnknownDeviceKind:
            continue
        for name in cls.secret_options:
            value = getattr(dev.options, name, "")
            if isinstance(value, str) and value:
                out.append(
                    (
                        f"devices[{i}] ({dev.id}).{name}",
                        Path(value),
                        functools.partial(cls.check_secret, name, Path(value)),
                    )
                )
    return out


def check_secrets(cfg: Config) -> list[Finding]:
    out = []
    modem = cfg.alarm.modem
    files: list[tuple[str, Path | None, Callable[[], None] | None]] = [
        ("uplink.key_file", cfg.uplink.key_file, None),
        ("uplink.password_file", cfg.uplink.password_file, None),
        ("alarm.modem.pin_file", Path(modem.pin_file) if modem is not None and modem.pin_file else None, None),
        *_device_secrets(cfg),
    ]
    for key, path, content in files:
        if path is None:
            continue
        try:
            st = path.stat()
        except OSError as exc:
            out.append(_fail("secrets", f"{key} {path} cannot be read: {exc.strerror}.", "Put the file back."))
            continue
        mode = stat.S_IMODE(st.st_mode)
        group = _group_name(st.st_gid)
        who = (
            "every user on the gateway"
            if mode & 0o007
            else f"the group {group}"
            if mode & 0o070 and group not in _SECRET_GROUPS
            else None
        )
        if who is not None:
            out.append(
                _fail(
                    "secrets",
                    f"The secret {key} ({path}) can be read by {who} (mode {mode:04o}).",
                    f"`sudo chmod 0640 {path}; sudo chown root:{SERVICE_USER} {path}`.",
                    path=str(path),
                    mode=f"{mode:04o}",
                    group=group,
                )
            )
        if content is not None:
            try:
                content()
            except DeviceConfigError as exc:
                out.append(_fail("secrets", f"{key}: {exc}.", "Write the device's key into the file again."))
    if not out and any(path is not None for _, path, _ in files):
        out.append(_ok("secrets", "The secret files are readable by their owner and group only."))
    return out


# The groups a secret may be readable by: the service's own (install.sh) and root's. Group homecare
# (the technicians) reads the configuration, not its secrets.
_SECRET_GROUPS = (SERVICE_USER, "root")


@dataclass(frozen=True, slots=True)
class CertInfo:
    subject: str
    not_before: dt.datetime
    not_after: dt.datetime


def _der(data: bytes, pos: int) -> tuple[int, int, int]:
    """One DER TLV at ``pos``: (tag, content start, content end)."""
    tag = data[pos]
    length = data[pos + 1]
    start = pos + 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[start : start + n], "big")
        start += n
    end = start + length
    if end > len(data):
        raise ValueError("truncated DER")
    return tag, start, end


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    pos = start
    while pos < end:
        tag, s, e = _der(data, pos)
        out.append((tag, s, e))
        pos = e
    return out


def _der_time(tag: int, raw: bytes) -> dt.datetime:
    text = raw.decode("ascii").rstrip("Z")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSS
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    return dt.datetime.strptime(text[:14], "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC)


CN_OID = bytes([0x55, 0x04, 0x03])


def parse_certificate(der: bytes) -> CertInfo:
    """Subject common name and validity of an X.509 certificate (DER), with no dependency."""
    _, s, e = _der(der, 0)
    _tbs, ts, te = _children(der, s, e)[0]
    fields = _children(der, ts, te)
    if fields and fields[0][0] == 0xA0:  # explicit version
        fields = fields[1:]
    _serial, _sigalg, _issuer, validity, subject = fields[:5]
    (t1, a1, b1), (t2, a2, b2) = _children(der, validity[1], validity[2])[:2]
    cn = ""
    for _set, ss, se in _children(der, subject[1], subject[2]):
        for _seq, qs, qe in _children(der, ss, se):
            parts = _children(der, qs, qe)
            if len(parts) == 2 and der[parts[0][1] : parts[0][2]] == CN_OID:
                cn = der[parts[1][1] : parts[1][2]].decode("utf-8", "replace")
    return CertInfo(cn, _der_time(t1, der[a1:b1]), _der_time(t2, der[a2:b2]))


def read_pem_certificates(path: Path) -> list[CertInfo]:
    text = path.read_text(encoding="ascii", errors="replace")
    out = []
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    pos = 0
    while (i := text.find(begin, pos)) >= 0:
        j = text.find(end, i)
        if j < 0:
            break
        out.append(parse_certificate(base64.b64decode("".join(text[i + len(begin) : j].split()))))
        pos = j + len(end)
    return out


_CERT_ACTION = {
    "ca": "Install the care platform's current CA certificate at {path} (ask the platform operator), then "
    "`sudo systemctl restart gatewayd`.",
    "client": "Install a new client certificate and key from the care platform at {path} (ask the platform "
    "operator), then `sudo systemctl restart gatewayd`.",
    "server": "The broker's certificate is the care platform's to renew: call the platform operator and give them "
    "this line. Readings wait safely in the outbox meanwhile.",
}
_CERT_WHAT = {"ca": "CA certificate", "client": "gateway's client certificate", "server": "broker's certificate"}


def judge_certificate(which: str, cert: CertInfo, path: str, now: dt.datetime | None = None) -> Finding:
    now = now or dt.datetime.now(dt.UTC)
    fid = f"cert.{which}"
    what = f"The {_CERT_WHAT[which]} ({cert.subject or 'no name'})"
    days = (cert.not_after - now).total_seconds() / 86400
    details = {
        "subject": cert.subject,
        "not_before": cert.not_before.isoformat(),
        "not_after": cert.not_after.isoformat(),
        "days_left": math.floor(days),
        "source": path,
    }
    action = _CERT_ACTION[which].format(path=path)
    if cert.not_after <= now:
        return _fail(fid, f"{what} expired on {cert.not_after:%Y-%m-%d} ({_days_ago(-days)}).", action, **details)
    if cert.not_before > now:
        return _fail(
            fid,
            f"{what} is not valid before {cert.not_before:%Y-%m-%d %H:%M} UTC: the gateway's clock is probably wrong.",
            "Fix the clock first (see the clock finding).",
            **details,
        )
    if days < CERT_WARN_DAYS:
        return _warn(
            fid,
            f"{what} expires in {int(days)} days, on {cert.not_after:%Y-%m-%d}.",
            action.replace("Install", "Plan"),
            **details,
        )
    return _ok(fid, f"{what} is valid for {int(days)} more days (until {cert.not_after:%Y-%m-%d}).", **details)


def check_certificates(cfg: Config) -> list[Finding]:
    out = []
    for which, path in (("ca", cfg.uplink.ca_file), ("client", cfg.uplink.cert_file)):
        if path is None or not cfg.uplink.tls:
            continue
        try:
            certs = read_pem_certificates(path)
        except OSError as exc:
            out.append(_fail(f"cert.{which}", f"{path} cannot be read: {exc.strerror}.", "Put the file back."))
            continue
        except (ValueError, IndexError, binascii.Error):
            certs = []
        if not certs:
            out.append(
                _fail(
                    f"cert.{which}",
                    f"{path} holds no readable PEM certificate.",
                    _CERT_ACTION[which].format(path=path),
                )
            )
            continue
        # a bundle: the first to expire is the one that matters (for a client chain: the leaf first)
        cert = certs[0] if which == "client" else min(certs, key=lambda c: c.not_after)
        out.append(judge_certificate(which, cert, str(path)))
    return out


# -- broker ---------------------------------------------------------------------------------------


def _resolve(host: str, port: int) -> list[str]:
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        fut = pool.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
        infos = fut.result(timeout=NET_TIMEOUT_S * 2)
    finally:
        pool.shutdown(wait=False)
    seen: list[str] = []
    for info in infos:
        addr = str(info[4][0])
        if addr not in seen:
            seen.append(addr)
    return seen


def _handshake(cfg: Config, address: str, verify: bool) -> tuple[bytes | None, str | None, str]:
    """(server certificate DER, TLS version, what happened after the handshake)."""
    ctx = tls_context(cfg.uplink, verify=verify)
    with socket.create_connection((address, cfg.uplink.port), timeout=NET_TIMEOUT_S) as raw:
        with ctx.wrap_socket(raw, server_hostname=cfg.uplink.host) as tls:
            der = tls.getpeercert(binary_form=True)
            version = tls.version()
            # TLS 1.3: a refused client certificate arrives as an alert after the handshake.
            tls.settimeout(0.5)
            try:
                after = "closed" if tls.recv(1) == b"" else "data"
            except TimeoutError:
                after = "open"
            return der, version, after


_TLS_REASONS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": (
        "The broker requires a client certificate and the gateway has none configured.",
        "Set uplink.cert_file and uplink.key_file to the certificate and key the care platform issued.",
    ),
    "SSLV3_ALERT_BAD_CERTIFICATE": (
        "The broker refused the gateway's client certificate.",
        "Ask the care platform whether this gateway's certificate is registered (and not revoked); install the "
        "one they issued.",
    ),
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": (
        "The broker refused the gateway's client certificate as expired.",
        "Install a new client certificate from the care platform.",
    ),
    "WRONG_VERSION_NUMBER": (
        "The broker's port does not speak TLS (probably a plain MQTT port).",
        "Use the broker's TLS port (usually 8883) in uplink.port.",
    ),
}


def check_broker(cfg: Config, progress: Progress) -> list[Finding]:
    up = cfg.uplink
    target = f"{up.host}:{up.port}"
    progress(f"looking up the broker {up.host}...")
    try:
        addresses = _resolve(up.host, up.port)
    except (OSError, concurrent.futures.TimeoutError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "no answer in time"
        return [
            _fail(
                "broker.dns",
                f"The broker's name {up.host} cannot be looked up ({why}).",
                "Check the network (is the router on, is the cable/Wi-Fi connected: `ip addr`), then DNS "
                "(`getent hosts " + up.host + "`); check uplink.host for typing mistakes.",
                host=up.host,
            )
        ]
    out = [_ok("broker.dns", f"The broker's name {up.host} resolves to {', '.join(addresses)}.", addresses=addresses)]
    progress(f"connecting to the broker {target}...")
    reached: str | None = None
    errors = []
    for address in addresses:
        try:
            with socket.create_connection((address, up.port), timeout=NET_TIMEOUT_S):
                reached = address
                break
        except OSError as exc:
            errors.append(f"{address}: {exc.strerror or type(exc).__name__}")
    if reached is None:
        out.append(
            _fail(
                "broker.tcp",
                f"The broker {target} cannot be reached ({'; '.join(errors)}).",
                "If the error is 'Connection refused' the broker (or its port) is down or wrong: check uplink.port "
                "and ask the care platform; if it timed out, a firewall or the home router blocks outgoing port "
                f"{up.port}.",
                errors=errors,
            )
        )
        return out
    out.append(_ok("broker.tcp", f"The broker {target} accepts connections (at {reached}).", address=reached))
    if not up.tls:
        out.append(
            _warn(
                "broker.tls",
                "TLS is switched off (uplink.tls = false): health data would cross the network unencrypted.",
                "Only for a test bench: set uplink.tls = true and the broker's TLS port for a home.",
            )
        )
        return out
    progress(f"TLS handshake with the broker {target}...")
    try:
        der, version, after = _handshake(cfg, reached, verify=True)
    except ssl.SSLCertVerificationError as exc:
        out.append(_verify_failure(cfg, exc))
        out.extend(_server_cert_unverified(cfg, reached))
        return out
    except ssl.SSLError as exc:
        reason = str(exc.reason or "")
        message, action = _TLS_REASONS.get(
            reason,
            (
                f"The TLS handshake with the broker failed: {exc}.",
                "Check uplink.port, the CA and client certificate with the care platform.",
            ),
        )
        out.append(_fail("broker.tls", message, action, reason=reason))
        out.extend(_server_cert_unverified(cfg, reached))
        return out
    except OSError as exc:
        out.append(
            _fail(
                "broker.tls",
                f"The broker {target} closed the connection during the TLS handshake ({exc}).",
                "Check uplink.port is the broker's TLS port, and the client certificate with the care platform.",
            )
        )
        return out
    if after == "closed":
        out.append(
            _warn(
                "broker.tls",
                f"The TLS handshake with {target} succeeded ({version}) but the broker closed the connection right "
                "after: it may refuse the gateway's client certificate.",
                "Ask the care platform whether this gateway's certificate is registered.",
                version=version,
            )
        )
    else:
        mutual = " with the gateway's client certificate" if up.cert_file else ""
        out.append(
            _ok(
                "broker.tls",
                f"The TLS handshake with {target} succeeds ({version}{mutual}); the broker's certificate is trusted "
                f"and issued for {up.host}.",
                version=version,
            )
        )
    if der:
        out.append(judge_certificate("server", parse_certificate(der), f"presented by {target}"))
    return out


def _verify_failure(cfg: Config, exc: ssl.SSLCertVerificationError) -> Finding:
    up = cfg.uplink
    code = exc.verify_code
    detail = str(exc.verify_message)
    trust = f"the CA in {up.ca_file}" if up.ca_file else "the system's trusted CAs"
    if code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
        message = "The broker presents an expired certificate, so the gateway refuses to connect."
        action = _CERT_ACTION["server"]
    elif code == 9:  # X509_V_ERR_CERT_NOT_YET_VALID
        message = "The broker's certificate is not valid yet: the gateway's clock is probably wrong."
        action = "Fix the clock first (see the clock finding)."
    elif code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
        message = f"The broker's certificate is not issued for the name {up.host}."
        action = "Check uplink.host: use the exact broker name the care platform gave (not an IP address)."
    elif code in (18, 19, 20, 21):
        message = f"The broker's certificate is not signed by {trust}."
        action = "Install the care platform's CA certificate and set uplink.ca_file to it."
    else:
        message = f"The broker's certificate is refused: {detail}."
        action = "Give this line to the care platform operator."
    return _fail("broker.tls", message, action, verify_code=code, verify_message=detail)


def _server_cert_unverified(cfg: Config, address: str) -> list[Finding]:
    """The certificate the broker presents, fetched without verification, only to describe it."""
    try:
        der, _, _ = _handshake(cfg, address, verify=False)
    except (OSError, ssl.SSLError):
        return []
    if not der:
        return []
    try:
        cert = parse_certificate(der)
    except (ValueError, IndexError):
        return []
    return [judge_certificate("server", cert, f"presented by {cfg.uplink.host}:{cfg.uplink.port}")]


# -- Bluetooth --------------------------------------------------------------------------------------


def _system_bus_address() -> str:
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or "unix:path=/run/dbus/system_bus_socket"


async def _bluez_state(address: str) -> dict[str, Any]:
    from dbus_fast import BusType, Message, MessageType
    from dbus_fast.aio import MessageBus

    async with asyncio.timeout(NET_TIMEOUT_S):
        bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
    try:
        async with asyncio.timeout(NET_TIMEOUT_S):
            reply = await bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member="NameHasOwner",
                    signature="s",
                    body=["org.bluez"],
                )
            )
        if reply is None or reply.message_type == MessageType.ERROR or not reply.body[0]:
            return {"running": False}
        async with asyncio.timeout(NET_TIMEOUT_S):
            reply = await bus.call(
                Message(
                    destination="org.bluez",
                    path="/",
                    interface="org.freedesktop.DBus.ObjectManager",
                    member="GetManagedObjects",
                )
            )
        if reply is None or reply.message_type == MessageType.ERROR:
            error = reply.error_name if reply is not None else "no reply"
            return {"running": True, "error": str(error), "adapters": []}
        adapters = []
        for path, ifaces in reply.body[0].items():
            props = ifaces.get("org.bluez.Adapter1")
            if props is None:
                continue
            adapters.append(
                {
                    "name": str(path).rsplit("/", 1)[-1],
                    "address": props["Address"].value if "Address" in props else None,
                    "powered": bool(props["Powered"].value) if "Powered" in props else False,
                }
            )
        return {"running": True, "adapters": sorted(adapters, key=lambda a: a["name"])}
    finally:
        bus.disconnect()


def check_bluez(cfg: Config) -> Finding:
    ble = [d.id for d in cfg.devices if d.transport == "ble"]
    needed = bool(ble)
    mk = _fail if needed else _warn
    why = (
        f"the configured Bluetooth devices ({', '.join(ble)}) cannot be read"
        if needed
        else "no Bluetooth device is configured yet, but none can be paired"
    )
    address = _system_bus_address()
    try:
        from dbus_fast.errors import AuthError, DBusFastError
    except ImportError:
        return mk("bluez", f"The D-Bus library (dbus-fast) is missing: {why}.", "Reinstall the gateway package.")
    try:
        state = asyncio.run(_bluez_state(address))
    except AuthError as exc:
        return mk(
            "bluez",
            f"The D-Bus system bus ({address}) refused the doctor ({exc}): {why}.",
            "Run the doctor as root (sudo), or check the D-Bus policy for the 'bluetooth' group.",
            bus=address,
        )
    except (OSError, TimeoutError, EOFError, DBusFastError) as exc:
        return mk(
            "bluez",
            f"The D-Bus system bus ({address}) cannot be reached ({exc or type(exc).__name__}): {why}.",
            "`sudo systemctl status dbus`; a reboot usually brings it back.",
            bus=address,
        )
    if not state["running"]:
        return mk(
            "bluez",
            f"The Bluetooth service (BlueZ, bluetoothd) is not running: {why}.",
            "`sudo systemctl enable --now bluetooth`; if it fails, `journalctl -u bluetooth -n 30`.",
            bus=address,
        )
    adapters = state.get("adapters", [])
    if not adapters:
        return mk(
            "bluez",
            f"BlueZ is running but there is no Bluetooth adapter: {why}.",
            "On a Raspberry Pi check that /boot/firmware/config.txt has no `dtoverlay=disable-bt` and that "
            "`rfkill list` shows Bluetooth not blocked (`sudo rfkill unblock bluetooth`); with a USB dongle, "
            "check it is plugged in (`lsusb`). Then reboot.",
            bus=address,
            adapters=[],
        )
    powered = [a for a in adapters if a["powered"]]
    names = ", ".join(f"{a['name']} ({a['address']})" for a in adapters)
    if not powered:
        return mk(
            "bluez",
            f"The Bluetooth adapter {names} is powered off: {why}.",
            "`sudo rfkill unblock bluetooth` then `bluetoothctl power on`; if it turns off again, check "
            "/etc/bluetooth/main.conf has AutoEnable=true.",
            bus=address,
            adapters=adapters,
        )
    return _ok(
        "bluez",
        f"BlueZ is running and the Bluetooth adapter {', '.join(a['name'] for a in powered)} is powered on.",
        bus=address,
        adapters=adapters,
    )


# -- serial ---------------------------------------------------------------------------------------


def service_identity(cfg: Config) -> tuple[str, set[int]]:
    """Who the daemon runs as: the service user when it exists, else the owner of data_dir, else us."""
    entry: pwd.struct_passwd | None = None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        try:
            entry = pwd.getpwuid(cfg.gateway.data_dir.stat().st_uid)
        except (KeyError, OSError):
            entry = None
    if entry is None:
        return str(os.getuid()), set(os.getgroups()) | {os.getgid()}
    groups = {g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem} | {entry.pw_gid}
    if entry.pw_name == SERVICE_USER:
        # the unit adds these to the service (SupplementaryGroups=)
        for name in ("dialout",):
            try:
                groups.add(grp.getgrnam(name).gr_gid)
            except KeyError:
                pass
    return entry.pw_name, groups


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def check_serial(cfg: Config) -> list[Finding]:
    out = []
    user: str | None = None
    groups: set[int] = set()
    for spec in cfg.devices:
        if spec.transport != "serial":
            continue
        if user is None:
            user, groups = service_identity(cfg)
        fid = f"serial.{spec.id}"
        opts = spec.options
        if not isinstance(opts, SerialOptions):
            continue
        try:
            port = resolve_port(opts.identity())
            st = Path(port).stat()
        except (PortMissing, FileNotFoundError, DeviceConfigError) as exc:
            out.append(
                _fail(
                    fid,
                    f"The serial port of {spec.id} ({spec.kind}) is not there ({exc}): the device or its USB adapter "
                    "is not plugged in, or the configured port is wrong.",
                    "Plug it in; `gatewayctl devices scan` lists the serial devices present with their "
                    "/dev/serial/by-id path to put in the configuration.",
                    port=opts.port,
                )
            )
            continue
        except PermissionError:
            out.append(_fail(fid, f"{port} cannot be looked at by this user.", "Run the doctor with sudo."))
            continue
        real = os.path.realpath(port)
        if not stat.S_ISCHR(st.st_mode):
            out.append(
                _fail(
                    fid,
                    f"{port} of {spec.id} is not a serial device.",
                    "Point the device's port at /dev/serial/by-id/...",
                )
            )
            continue
        mode = stat.S_IMODE(st.st_mode)
        group = _group_name(st.st_gid)
        details = {"port": port, "device": real, "mode": f"{mode:04o}", "group": group, "user": user}
        can = (mode & 0o006) == 0o006 or ((mode & 0o060) == 0o060 and st.st_gid in groups)
        if user in ("root", "0") or (user == _owner_name(st.st_uid) and (mode & 0o600) == 0o600):
            can = True
        if can:
            out.append(
                _ok(fid, f"The serial port {port} ({real}) of {spec.id} is there and {user} may open it.", **details)
            )
        else:
            out.append(
                _fail(
                    fid,
                    f"The serial port {port} ({real}) of {spec.id} belongs to group {group} (mode {mode:04o}) and the "
                    f"service user {user} is not in that group, so the gateway cannot open it.",
                    f"`sudo usermod -aG {group} {user}` then `sudo systemctl restart gatewayd` (serial ports need the "
                    "group dialout on Raspberry Pi OS).",
                    **details,
                )
            )
    return out


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# -- devices --------------------------------------------------------------------------------------


def check_devices(cfg: Config, status: Mapping[str, Any] | None) -> list[Finding]:
    now = time.time()
    known: dict[str, dict[str, Any]] = {d.id: {"id": d.id, "kind": d.kind, "origin": "config"} for d in cfg.devices}
    source = "the daemon"
    if status is not None:
        for d in status.get("devices", []):
            entry = known.setdefault(str(d["id"]), {"id": d["id"], "kind": d.get("kind")})
            entry.update(state=d.get("state"), reason=d.get("reason"), last_seen=_parse_time(d.get("last_seen")))
    else:
        source = "the registry and the outbox (the daemon is not running)"
        registry = read_devices(cfg.gateway.data_dir / DB_NAME)
        for doc in registry:
            found = known.get(str(doc.get("id")))
            if found is not None:
                found.update(state=doc.get("state"), state_at=doc.get("state_at"))
        last_age: dict[str, float] = {}
        try:
            last_age = read_outbox(cfg.gateway.data_dir / "outbox.sqlite3", cfg.outbox.max_bytes)["last_age_s"]
        except sqlite3.Error:
            pass
        for dev, age in last_age.items():  # its latest waiting message (this boot's aged on the boot clock)
            if dev in known:
                known[dev]["last_seen"] = now - age
    out = []
    for dev_id, d in known.items():
        fid = f"device.{dev_id}"
        kind = str(d.get("kind"))
        state = d.get("state")
        last = d.get("last_seen")
        seen = f"last reading {_human_age(now - last)} ago" if last else "no reading yet"
        details = {"kind": kind, "state": state, "last_seen_age_s": round(now - last, 1) if last else None}
        details["source"] = "daemon" if status is not None else "registry+outbox"
        silence = silence_warn_s(kind)
        if state is None and status is None and not last:
            out.append(
                _skip(fid, f"{dev_id} ({kind}): not known from {source}; start the daemon to see it.", **details)
            )
        elif state not in (None, "connected"):
            reason = f" ({d['reason']})" if d.get("reason") else ""
            when = f" since {_human_age(now - d['state_at'])}" if d.get("state_at") else ""
            out.append(
                _warn(
                    fid,
                    f"{dev_id} ({kind}) is {state}{reason}{when}; {seen} (from {source}).",
                    "Check it is switched on, charged and within a few metres of the gateway (Bluetooth), or "
                    "plugged in (serial); see the serial.* and bluez findings.",
                    **details,
                )
            )
        elif silence is not None and (not last or now - last > silence):
            out.append(
                _warn(
                    fid,
                    f"{dev_id} ({kind}) is connected but has not sent a reading recently ({seen}, from {source}).",
                    "Check the person wears or uses it; take a test measurement and watch `gatewayctl tail`.",
                    **details,
                )
            )
        else:
            link = "connected" if state == "connected" else "known"
            out.append(_ok(fid, f"{dev_id} ({kind}) is {link}; {seen} (from {source}).", **details))
    return out


def _parse_time(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _days_ago(days: float) -> str:
    n = int(days)
    return "today" if n == 0 else ("yesterday" if n == 1 else f"{n} days ago")


def _human_age(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


# -- the SMS fallback's modem (gateway/alarm.py, docs/alarm-fallback.md) -------------------------------

MODEM_WEAK_CSQ = 10  # below: -93 dBm or weaker, SMS may fail at busy hours
_SIM_ACTIONS = {
    "missing": "Insert the SIM card (power the modem off first) and check it sits right.",
    "pin_required": "Put the SIM's PIN in a file readable by the service and name it in [alarm.modem] pin_file.",
    "wrong_pin": "The SIM refused the PIN of pin_file: correct the file, then restart gatewayd (it is not retried).",
    "puk_required": "The SIM is locked: unlock it with its PUK in a phone, then put it back.",
    "failure": "The modem reports a SIM failure: try another SIM.",
}


def check_modem(cfg: Config, status: Mapping[str, Any] | None) -> list[Finding]:
    """The second path of an SOS: is the modem there, with a SIM, registered, with signal? Nothing to
    say when no SMS fallback is configured (it is optional)."""
    if not cfg.alarm.enabled or cfg.alarm.modem is None:
        return []
    return [_judge_modem(cfg, status)]


def _judge_modem(cfg: Config, status: Mapping[str, Any] | None) -> Finding:
    assert cfg.alarm.modem is not None
    alarm = status.get("alarm") if status is not None else None
    if alarm is None:
        try:
            path = resolve_port(cfg.alarm.modem.identity())
        except PortMissing as exc:
            return _fail("modem", f"The SMS modem is not there: {exc}.", "Plug the modem in (its AT port).")
        return _warn(
            "modem",
            f"The SMS modem is plugged in at {path}; its SIM and network are not known while gatewayd is not running.",
            "Start gatewayd and run the doctor again.",
            port=path,
        )
    m = alarm["modem"]
    facts = {k: m.get(k) for k in ("sim", "registration", "operator", "csq", "dbm", "last_sms_at", "last_error")}
    if not m["present"]:
        return _fail(
            "modem", "The SMS modem does not answer: an SOS has no second path.", "Plug the modem in.", **facts
        )
    if m["sim"] != "ready":
        action = _SIM_ACTIONS.get(m["sim"], "Check the SIM card.")
        return _fail("modem", f"The SMS modem cannot send: SIM {m['sim'].replace('_', ' ')}.", action, **facts)
    if m["registration"] not in ("home", "roaming"):
        return _fail(
            "modem",
            f"The SMS modem is not registered on a network ({m['registration']}).",
            "Check the antenna, the coverage at this spot and that the SIM is active (not expired, SMS allowed).",
            **facts,
        )
    last = m.get("last_sms_at") or "never"
    if m.get("csq") is not None and m["csq"] < MODEM_WEAK_CSQ:
        return _warn(
            "modem",
            f"The SMS modem is on {m['operator']} with a weak signal ({m['dbm']} dBm); last SMS {last}.",
            "Move the modem or its antenna (a USB extension cable helps) and check again.",
            **facts,
        )
    return _ok("modem", f"The SMS modem is ready on {m['operator']} ({m['dbm']} dBm); last SMS {last}.", **facts)
