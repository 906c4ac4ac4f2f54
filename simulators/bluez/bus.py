"""A private ``dbus-daemon`` for the virtual BlueZ: its own socket, a generated configuration that lets
anyone own any name (it stands in for the system bus, where only bluetoothd may own ``org.bluez``),
and nothing shared with the machine's real buses."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from xml.sax.saxutils import escape

CONFIG_TEMPLATE = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <!-- Private stand-in for the system bus of the virtual BlueZ (gateway-sim ble). -->
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
  </policy>
  <!-- Raw PPG at a few hundred notifications per second must never hit a bus limit first. -->
  <limit name="max_incoming_bytes">133169152</limit>
  <limit name="max_outgoing_bytes">133169152</limit>
  <limit name="max_message_size">33554432</limit>
  <limit name="max_replies_per_connection">50000</limit>
  <limit name="reply_timeout">60000</limit>
</busconfig>
"""


class BusError(RuntimeError):
    """The private bus could not be started."""


def dbus_daemon_path() -> str:
    found = shutil.which("dbus-daemon") or ("/usr/bin/dbus-daemon" if os.path.exists("/usr/bin/dbus-daemon") else None)
    if found is None:
        raise BusError("dbus-daemon is not installed (Debian: apt-get install dbus-daemon)")
    return found


class PrivateBus:
    """``with PrivateBus(workdir) as bus: bus.address`` -> ``unix:path=<workdir>/bus.sock``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.socket = self.workdir / "bus.sock"
        self.config = self.workdir / "bus.conf"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"unix:path={self.socket}"

    def start(self, timeout_s: float = 10.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # sun_path holds 108 bytes: a deep temporary directory would not fit.
        if len(str(self.socket)) > 100:
            raise BusError(f"socket path too long for a Unix socket: {self.socket}")
        if self.socket.exists():
            self.socket.unlink()
        self.config.write_text(CONFIG_TEMPLATE.format(socket=escape(str(self.socket))))
        self.proc = subprocess.Popen(
            [dbus_daemon_path(), f"--config-file={self.config}", "--nofork", "--nopidfile", "--nosyslog"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout_s
        # The socket file appears before dbus-daemon listens on it: ready means a connect succeeds.
        while not self._accepts():
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise BusError(f"dbus-daemon exited with {self.proc.returncode}: {err.strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise BusError("dbus-daemon did not listen on its socket in time")
            time.sleep(0.01)

    def _accepts(self) -> bool:
        if not self.socket.exists():
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        return True

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def __enter__(self) -> PrivateBus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
