"""Shared test helpers: a gatewayd process, configs, certificates, waiting without sleeping blind."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from drivers.reconnect import ConnState
from gateway.clock import Clock, boottime, read_boot_id
from gateway.config import load_config
from gateway.daemon import Daemon
from gateway.outbox import Lane, NewMessage, Outbox
from simulators.viewer import Viewer

REPO = Path(__file__).resolve().parents[1]


def wait_for(pred: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


async def until(pred: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """The asyncio twin of :func:`wait_for`, for tests that run simulators on the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def drain(viewer: Viewer) -> list[tuple[float, str, dict[str, Any], bool]]:
    out = []
    while True:
        try:
            out.append(viewer.messages.get_nowait())
        except queue.Empty:
            return out


class Collector:
    """Everything a viewer received, kept in order.

    The data messages are also sorted into lists (all, and by type) as they arrive, so that the
    predicates tests poll every 20 ms cost what arrived since the last poll, not the whole backlog:
    scanning 100 000 messages per poll stole the GIL from the viewer's network thread (and from a
    daemon running in the test's process) and made the big-backlog tests several times slower."""

    def __init__(self, viewer: Viewer) -> None:
        self.viewer = viewer
        self.items: list[tuple[float, str, dict[str, Any], bool]] = []
        self._data: list[dict[str, Any]] = []
        self._by_type: dict[Any, list[dict[str, Any]]] = {}
        self._seqs: set[int] = set()

    def poll(self) -> list[tuple[float, str, dict[str, Any], bool]]:
        for item in drain(self.viewer):
            self.items.append(item)
            doc, retained = item[2], item[3]
            if "seq" in doc and not retained:
                self._data.append(doc)
                self._by_type.setdefault(doc.get("type"), []).append(doc)
                self._seqs.add(doc["seq"])
        return self.items

    def data(self) -> list[dict[str, Any]]:
        """Non-retained data messages (those with a seq), in order of arrival."""
        self.poll()
        return list(self._data)

    def seqs(self) -> set[int]:
        self.poll()
        return set(self._seqs)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        self.poll()
        return list(self._by_type.get(kind, ()))

    def wait(self, pred: Callable[[Collector], Any], timeout: float = 20.0, what: str = "messages") -> Any:
        return wait_for(lambda: pred(self), timeout, what=what)

    def wait_while_arriving(
        self, pred: Callable[[Collector], Any], stall_s: float = 15.0, what: str = "messages"
    ) -> Any:
        """Wait for ``pred`` as long as messages keep arriving; fail when none came for ``stall_s``. For the
        tail of a big backlog: this subscriber validates every message against the contract, and on a
        loaded machine it reads 20 000 messages well after the broker has taken them (alone here it still
        had 4-9 000 to go when the gateway's drain ended), so a fixed timeout measured the machine, while
        a lost message stops the arrivals."""
        seen, last = -1, time.monotonic()
        while True:
            value = pred(self)
            if value:
                return value
            if len(self.items) != seen:
                seen, last = len(self.items), time.monotonic()
            elif time.monotonic() - last > stall_s:
                raise AssertionError(f"no message for {stall_s} s while waiting for {what} ({seen} received)")
            time.sleep(0.02)


@contextlib.asynccontextmanager
async def daemon_in_process(
    cfg_path: Path, clock: Callable[[], float] | None = None
) -> AsyncIterator[tuple[Daemon, asyncio.Task[None]]]:
    """gatewayd's Daemon on this event loop (for tests that reach into it), until its uplink is
    connected; stopped in order at the end (within 15 s). Yields the daemon and its task."""
    daemon = Daemon(load_config(cfg_path), clock=clock or time.time)
    task = asyncio.create_task(daemon.run())
    try:
        await until(
            lambda: task.done() or (daemon.uplink is not None and daemon.uplink.state is ConnState.CONNECTED),
            what="gateway connected",
        )
        if task.done():
            task.result()
        yield daemon, task
    finally:
        daemon.request_stop()
        async with asyncio.timeout(15):
            await task


@contextlib.contextmanager
def contract_cloud(port: int) -> Iterator[Collector]:
    """The cloud side on the broker at ``port``: a QoS 1 subscriber to homecare/v1/# checking every
    message against the contract's JSON Schemas (asserted at the end)."""
    viewer = Viewer("127.0.0.1", port, session_id=f"cloud-{port}")
    viewer.client.reconnect_delay_set(0.05, 0.5)
    viewer.start()
    try:
        yield Collector(viewer)
    finally:
        viewer.stop()
        assert not viewer.invalid, f"messages broke the contract: {viewer.invalid[:5]}"


class Hands:
    """A wall clock that can step, a boot clock that cannot, and a synchronised verdict, all moved by the
    test (for gateway.clock.Clock and Timeline)."""

    def __init__(self, wall: float = 1_800_000_000.0, boot: float = 100.0) -> None:
        self.w, self.b = wall, boot
        self.synced = False

    def wall(self) -> float:
        return self.w

    def boot(self) -> float:
        return self.b

    def tick(self, s: float) -> None:
        self.w += s
        self.b += s

    def sync(self) -> Any:
        from gateway.clock import SyncVerdict

        return SyncVerdict(self.synced, "test")


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def gateway_config(
    workdir: Path,
    port: int,
    *,
    devices: str = "",
    uplink_extra: str = "",
    tls: bool = False,
    gateway_id: str = "gw-test",
    outbox_extra: str = "",
    extra: str = "",
) -> Path:
    tls_line = "" if tls else "tls = false"
    return write_config(
        workdir / "gateway.toml",
        f"""
[gateway]
id = "{gateway_id}"
data_dir = "{workdir / "data"}"

[uplink]
host = "127.0.0.1"
port = {port}
{tls_line}
keepalive = 10
backoff_base_s = 0.05
backoff_cap_s = 0.5
{uplink_extra}

[outbox]
{outbox_extra}

{extra}

{devices}
""",
    )


def rfxtrx_device(
    link: Path,
    buttons: dict[str, str] | None = None,
    accept_unknown: bool = False,
    *,
    roles: dict[str, str] | None = None,
    extra: str = "",
) -> str:
    """An RFXtrx receiver; ``roles`` (sensor or sensor/command -> sos|call) and ``extra`` lines when given."""
    table = ", ".join(f'"{k}" = "{v}"' for k, v in (buttons or {"a1b2c3": "sos-1"}).items())
    roles_line = "roles = { " + ", ".join(f'"{k}" = "{v}"' for k, v in roles.items()) + " }" if roles else ""
    return f"""
[[devices]]
id = "rfx"
kind = "rfxtrx-sos"
transport = "serial"
port = "{link}"
buttons = {{ {table} }}
accept_unknown = {"true" if accept_unknown else "false"}
{roles_line}
{extra}
"""


def result_validator() -> Any:
    import jsonschema

    path = Path(__file__).resolve().parents[1] / "gateway" / "schemas" / "commands" / "result.json"
    schema = json.loads(path.read_text())
    return jsonschema.Draft7Validator(schema)


class Cloud:
    """The care platform's side of the downlink: publishes commands, collects replies."""

    def __init__(self, port: int, base: str) -> None:
        self.base = base
        self.replies: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.on_message = lambda _c, _u, m: self.replies.put((m.topic, json.loads(m.payload)))
        self.c.connect("127.0.0.1", port)
        self.c.subscribe(f"{self.base}/cmd-result/#", qos=1)
        self.c.loop_start()
        self.validator = result_validator()

    def send(self, name: str, payload: bytes | dict[str, Any]) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.c.publish(f"{self.base}/cmd/{name}", data, qos=1).wait_for_publish(10)

    def reply(self, timeout: float = 15.0) -> tuple[str, dict[str, Any]]:
        topic, doc = self.replies.get(timeout=timeout)
        errors = [e.message for e in self.validator.iter_errors(doc)]
        assert not errors, f"reply breaks the contract: {errors}"
        return topic, doc

    def ask(self, name: str, payload: bytes | dict[str, Any]) -> tuple[str, dict[str, Any]]:
        self.send(name, payload)
        return self.reply()

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@contextlib.contextmanager
def daemon_log_on_failure(config: Path, tail: int = 6000) -> Iterator[None]:
    """A failed assertion inside re-raised with the end of the daemon's log (:class:`GatewayProcess`
    writes it beside ``config``), so that a failure on a CI machine can be read without its temporary
    directory: pytest keeps only the last three."""
    try:
        yield
    except AssertionError as exc:
        log = config.parent / "gatewayd.log"
        text = log.read_text(errors="replace")[-tail:] if log.exists() else "(no log)"
        raise AssertionError(f"{exc}\n--- the end of {log.name} ---\n{text}") from exc


class GatewayProcess:
    """``python -m gateway.daemon`` as a real process, with its stderr kept for assertions."""

    def __init__(self, config: Path, log_level: str = "INFO", env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_level = log_level
        self.env = env or {}  # added to the environment (libfaketime's, for the clock tests)
        self.proc: subprocess.Popen[bytes] | None = None
        self.logfile = config.parent / "gatewayd.log"

    def start(self) -> None:
        # faulthandler: a daemon that does not stop on SIGTERM gets SIGABRT from stop_quietly, which
        # writes every thread's traceback into its log (what a hang was doing)
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1", **self.env)
        self._log = open(self.logfile, "ab")
        self._log_from = self._log.tell()  # this run's log starts here (a restart appends to the same file)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.daemon", "--config", str(self.config), "--log-level", self.log_level],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            cwd=REPO,
            env=env,
        )

    async def running(self, timeout: float = 120.0) -> None:
        """Wait until the daemon says it runs: its start-up (numpy's and scipy's import, the stores) gets a
        budget of its own, so that a test's waits for data count from there (a loaded machine, a clock
        faked by libfaketime)."""

        def started() -> bool:
            return b" running with " in self.logfile.read_bytes()[self._log_from :] or not self.alive()

        await until(started, timeout, "the daemon's start")
        assert self.alive(), f"gatewayd exited at start:\n{self.log()[-3000:]}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 10.0) -> float:
        """SIGTERM; returns seconds until exit."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=timeout)
        self._log.close()
        return time.monotonic() - t0

    def reap(self, timeout: float = 10.0) -> int:
        """Wait for a process that is exiting by itself; its exit code."""
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._log.close()

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def stop_quietly(self) -> None:
        """Stop it whatever its state (a test's ``finally``); its log file is closed in every case."""
        if self.alive():
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.terminate()
            if self.alive():
                assert self.proc is not None
                self.proc.send_signal(signal.SIGABRT)  # the tracebacks of a hang, into the log
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=3)
            if self.alive():
                self.kill()
        if self.proc is not None:
            self._log.close()


def write_outbox_behind(path: Path, behind_s: float, messages: Iterable[tuple[Lane, str, str, float, bool]]) -> None:
    """An outbox written in this boot on a wall clock ``behind_s`` behind today's (it has stepped to the
    truth since, as a Pi's does when a time server first answers): each message (lane, topic, device,
    age in s at the write, of a device's own clock) captured that long before the write, on that clock.
    The body is ``{"msg_id": <n>}``."""
    clock = Clock(wall=lambda: time.time() - behind_s, boot=boottime, boot_id=read_boot_id())
    clock.sample()

    async def write() -> None:
        async with Outbox(path, timebase=clock) as ob:
            runner = asyncio.create_task(ob.run())
            now = clock.wall()
            for n, (lane, topic, device, age_s, device_clock) in enumerate(messages):
                body = json.dumps({"msg_id": str(n)}).encode()
                await ob.put(NewMessage(lane, topic, body, device, now - age_s, device_clock=device_clock))
            runner.cancel()

    asyncio.run(write())


def outbox_meta(data_dir: Path) -> dict[str, int]:
    db = sqlite3.connect(data_dir / "outbox.sqlite3")
    try:
        return dict(db.execute("SELECT key, value FROM meta").fetchall())
    finally:
        db.close()


def status_via_ctl(config: Path, env: dict[str, str] | None = None) -> dict[str, Any] | None:
    """``gatewayctl --json status``, or None while the daemon does not answer (for polling)."""
    out = subprocess.run(
        [sys.executable, "-m", "gateway.ctl", "--config", str(config), "--json", "status"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    if out.returncode != 0:
        return None
    reply: dict[str, Any] = json.loads(out.stdout)
    return reply


# -- certificates -------------------------------------------------------------------------------


def make_pki(directory: Path, *, server_name: str = "localhost", expired: bool = False) -> dict[str, Path]:
    """A test CA, a server certificate for ``server_name`` and 127.0.0.1, and a client certificate."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    not_before = now - dt.timedelta(days=30 if expired else 1)
    not_after = now - dt.timedelta(days=1) if expired else now + dt.timedelta(days=30)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def write_key(k: ec.EllipticCurvePrivateKey, p: Path) -> Path:
        p.write_bytes(
            k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        p.chmod(0o600)
        return p

    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "homecare test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=60))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage: Any, san: list[x509.GeneralName] | None) -> tuple[Any, ec.EllipticCurvePrivateKey]:
        k = key()
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(ca_key, hashes.SHA256()), k

    server, server_key = leaf(
        server_name,
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName(server_name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client, client_key = leaf("gw-test", ExtendedKeyUsageOID.CLIENT_AUTH, None)
    pem = serialization.Encoding.PEM
    paths = {
        "ca": directory / "ca.pem",
        "server_cert": directory / "server.pem",
        "server_key": write_key(server_key, directory / "server.key"),
        "client_cert": directory / "client.pem",
        "client_key": write_key(client_key, directory / "client.key"),
    }
    paths["ca"].write_bytes(ca.public_bytes(pem))
    paths["server_cert"].write_bytes(server.public_bytes(pem))
    paths["client_cert"].write_bytes(client.public_bytes(pem))
    return paths


def iter_lines(text: str) -> Iterator[str]:
    return (line for line in text.splitlines() if line.strip())
