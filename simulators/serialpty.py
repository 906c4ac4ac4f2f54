"""A USB-serial device played on a pseudo-terminal, for simulators and tests.

The gateway sees a real tty (``/dev/pts/N``) through pyserial, exactly as it sees ``/dev/ttyUSB0``; a
stable symlink plays the ``/dev/serial/by-id/...`` path that udev keeps for a USB device. The device
can be unplugged (the master side closes: the gateway's reads fail with EIO, as on a real unplug, and
the by-id link disappears) and plugged back (a new pty, usually another ``/dev/pts/N``, i.e. "another
USB socket", behind the same by-id link). ``alias_path`` lets a test also play the ``ttyUSBn`` name.

Only the radio and the USB socket are fake; everything from the tty up is the real code path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import termios
import tty
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class PtyDevice:
    """One simulated serial device. Use as ``async with PtyDevice(link) as dev:``.

    ``on_bytes`` receives what the gateway writes to the device (commands).
    """

    def __init__(
        self,
        link_path: str | os.PathLike[str],
        on_bytes: Callable[[bytes], None] | None = None,
        *,
        alias_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.link_path = Path(link_path)
        self.alias_path = Path(alias_path) if alias_path is not None else None
        self.on_bytes = on_bytes
        self._master: int | None = None
        self._slave: int | None = None
        self.slave_name: str | None = None
        self.plug_count = 0
        self.bytes_written = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def plugged(self) -> bool:
        return self._master is not None

    async def __aenter__(self) -> PtyDevice:
        self._loop = asyncio.get_running_loop()
        self.plug()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.unplug()

    def plug(self, link_path: str | os.PathLike[str] | None = None) -> None:
        """Create the pty and the stable link(s). Safe to call when already plugged (no-op)."""
        if self._master is not None:
            return
        if link_path is not None:
            self.link_path = Path(link_path)
        master, slave = os.openpty()
        # Raw mode on the slave from the start: no echo of our own output back to us, no line editing.
        tty.setraw(slave, termios.TCSANOW)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.slave_name = os.ttyname(slave)
        for path in (self.link_path, self.alias_path):
            if path is None:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(self.slave_name)
            tmp.replace(path)  # atomic, like udev
        self.plug_count += 1
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        loop.add_reader(master, self._readable)
        log.debug("pty device plugged at %s -> %s", self.link_path, self.slave_name)

    def unplug(self) -> None:
        """Close the device as a yanked cable would. Safe to call twice."""
        if self._master is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._master)
        for path in (self.link_path, self.alias_path):
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None
        log.debug("pty device unplugged from %s", self.link_path)

    def _readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError:
            return  # nobody holds the slave open right now: nothing to read
        if data and self.on_bytes is not None:
            self.on_bytes(data)

    def write(self, data: bytes) -> bool:
        """Send bytes to the gateway. Returns False when unplugged (bytes lost, like a radio frame
        sent while the receiver is unplugged)."""
        if self._master is None:
            return False
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._master, view)
            except BlockingIOError:
                # The gateway is not reading fast enough: the tty buffer is full. A real UART would
                # overrun and lose bytes; we drop the rest and say so.
                log.debug("pty buffer full on %s, dropped %d bytes", self.link_path, len(view))
                return False
            except OSError:
                return False
            self.bytes_written += n
            view = view[n:]
        return True
