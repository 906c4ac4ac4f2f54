"""A real Mosquitto on a free loopback port, for the demo, the tests and the benchmarks.

It can be stopped, killed and restarted on the same port (the broker-outage tests), with plaintext,
TLS or mutual-TLS listeners. Nothing here is a fake broker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from simulators.procs import die_with_parent

CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class BrokerNotInstalled(RuntimeError):
    pass


def find_mosquitto() -> str:
    for name in CANDIDATES:
        path = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
        if path:
            return path
    raise BrokerNotInstalled("mosquitto is not installed (Debian: apt-get install mosquitto)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path
    require_certificate: bool = False


class Mosquitto:
    def __init__(
        self,
        *,
        port: int | None = None,
        tls: TlsFiles | None = None,
        workdir: str | os.PathLike[str] | None = None,
        max_inflight: int = 0,
        verbose: bool = False,
        persistence: bool = False,
        users: dict[str, str] | None = None,
        die_with_parent: bool = False,
        acl: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.die_with_parent = die_with_parent  # the demo's broker ends with the demo, however it ends
        self.tls = tls
        self._own_workdir = workdir is None  # made here: removed when the broker is left (``with``)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="mosquitto-"))
        self.max_inflight = max_inflight
        self.verbose = verbose
        # With persistence, an orderly stop (SIGTERM) saves sessions and their queued QoS 1 messages, so a
        # persistent subscriber (the "cloud") misses nothing across a broker restart.
        self.persistence = persistence
        self.users = users  # username -> password: anonymous access off
        self.acl = acl  # the text of an acl_file (topic read/write rules); set_acl() rewrites and reloads it
        self.proc: subprocess.Popen[bytes] | None = None
        self.binary = find_mosquitto()

    @property
    def conf_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    def _write_conf(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if self.users else 'true'}",
            "persistence true" if self.persistence else "persistence false",
            f"persistence_location {self.workdir}/",
            f"max_inflight_messages {self.max_inflight}",
            "max_queued_messages 1000000",
            "max_queued_bytes 0",
            "set_tcp_nodelay true",
            # Started as root, mosquitto would switch to user "mosquitto" and could not write its
            # persistence file into our work dir.
            *(["user root"] if os.geteuid() == 0 else []),
            "log_dest stderr" if self.verbose else "log_dest none",
        ]
        if self.users:
            pwfile = self.workdir / "passwd"
            pwfile.write_text("")
            pwfile.chmod(0o600)
            tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
            for user, password in self.users.items():
                subprocess.run([tool, "-b", str(pwfile), user, password], check=True, capture_output=True)
            lines.append(f"password_file {pwfile}")
        if self.acl is not None:
            self.acl_path.write_text(self.acl)
            lines.append(f"acl_file {self.acl_path}")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.cert}",
                f"keyfile {self.tls.key}",
                f"require_certificate {'true' if self.tls.require_certificate else 'false'}",
            ]
        self.conf_path.write_text("\n".join(lines) + "\n")

    @property
    def acl_path(self) -> Path:
        return self.workdir / "acl"

    def set_acl(self, acl: str) -> None:
        """Rewrite the ACL and have the running broker reload it (SIGHUP: clients stay connected)."""
        assert self.proc is not None and self.acl is not None, "a broker started with an acl"
        self.acl = acl
        self.acl_path.write_text(acl)
        self.proc.send_signal(signal.SIGHUP)

    def start(self, timeout_s: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self._write_conf()
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=None if self.verbose else subprocess.DEVNULL,
            preexec_fn=die_with_parent if self.die_with_parent else None,
            # a broker that dies with its parent is stopped by it, not by the terminal's Ctrl-C
            process_group=0 if self.die_with_parent else None,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode} (port {self.port} taken?)")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout_s} s")

    def stop(self) -> None:
        """Orderly stop (SIGTERM). Safe to call twice."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def _end(self, sig: int) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
