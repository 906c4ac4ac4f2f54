"""The MQTT uplink: paho-mqtt driven by the asyncio loop (no paho thread), fed only by the outbox.

- MQTT 5 (default) or 3.1.1; TLS on by default with server verification (system trust store or
  ``ca_file``); mutual TLS with ``cert_file``/``key_file``; password read from a file.
- Will and birth on ``status`` (retained): the broker publishes ``offline`` if we vanish.
- One connection = one fresh paho client (so paho never replays its own RAM queue: the outbox is the
  only buffer), run under :class:`drivers.reconnect.Reconnector`: exponential backoff with full jitter,
  capped, so a fleet does not reconnect in lockstep after a broker restart.
- A bounded in-flight window: at most ``inflight_window`` observation/state/bulk messages await their
  PUBACK, plus a small reserve that only alerts may use, so a live alert overtakes a backlog being
  drained. Lanes are served alert > observation > device state > bulk; state and bulk keep a small
  share of the window so they are never starved.
- A message is deleted from the outbox only when its PUBACK arrives (with a success reason code).
  One the broker refuses in its PUBACK (MQTT 5 reason code >= 0x80) is sent again on the same
  connection after a backoff (:class:`Refusals`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from drivers.base import DeviceConfigError, TransientDeviceError
from drivers.reconnect import Backoff, ConnState, Reconnector
from gateway.config import UplinkSection, read_secret
from gateway.downlink import MAX_COMMAND_BYTES, Downlink
from gateway.errors import ConfigError, UplinkError
from gateway.messages import Topics, corrected_body
from gateway.outbox import Lane, Outbox, StoredMessage, wire_payload

log = logging.getLogger(__name__)

ALERT_RESERVE = 32  # in-flight slots only alerts may use
MIN_SHARE_DIVISOR = 10  # state and bulk each keep window/10 slots when they have messages
CONNECT_TIMEOUT_S = 20.0
HANDSHAKE_TIMEOUT_S = 10.0  # the TLS handshake (paho's own is the keepalive: 60 s by default)
# The largest packet the broker may send us (MQTT 5): a command (MAX_COMMAND_BYTES) with its topic,
# properties and header, with room to spare; the broker drops larger ones for this client.
MAX_INCOMING_PACKET = 4 * MAX_COMMAND_BYTES
# A message refused in its PUBACK goes again on the same connection after a wait drawn from
# [ceiling/2, ceiling], the ceiling doubling from RETRY_BASE_S to RETRY_CAP_S (see Refusals).
RETRY_BASE_S = 2.0
RETRY_CAP_S = 60.0
# After this many refusals in a row (its wait is at the cap by then, about 1 to 2 minutes in), a
# refused message no longer holds back the new messages of its lane or device (see Refusals).
RETRY_GIVE_WAY_AFTER = 6


class _ClosingSSLSocket(ssl.SSLSocket):
    """paho leaves the socket open when the TLS handshake fails; close it there (no fd leak on a
    gateway that retries an untrusted broker for months). paho gives the handshake the keepalive as
    its timeout (60 s by default, up to an hour): it is bounded here by :data:`HANDSHAKE_TIMEOUT_S`."""

    def do_handshake(self, block: bool = False) -> None:
        before = self.gettimeout()
        self.settimeout(HANDSHAKE_TIMEOUT_S if before is None else min(before, HANDSHAKE_TIMEOUT_S))
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise
        self.settimeout(before)


async def _connect_in_thread(connect: Callable[[], object], client: mqtt.Client) -> None:
    """``connect()`` (paho's, blocking: DNS, TCP, the TLS handshake) on a thread of its own that nothing
    waits for when the daemon stops: in the default executor, ``asyncio.run`` joined it at the end, so a
    stop during a slow handshake took as long as the handshake. Cancelled meanwhile, the connection it
    makes later is closed on that thread, so no half-made client lingers with the gateway's client id."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    abandoned = threading.Event()

    def settle(exc: BaseException | None) -> None:
        if done.cancelled():
            return
        if exc is None:
            done.set_result(None)
        else:
            done.set_exception(exc)

    def run() -> None:
        error: BaseException | None = None
        try:
            connect()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task, which classifies it
            error = exc
        if abandoned.is_set():
            _close_quietly(client)
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name="uplink connect", daemon=True).start()
    try:
        await done
    except asyncio.CancelledError:
        abandoned.set()
        raise


class BrokerUnavailable(TransientDeviceError):
    """TCP/TLS/MQTT connection failed or dropped; retry with backoff."""


class BrokerRefused(TransientDeviceError):
    """CONNACK with an error (bad credentials, not authorised): retried slowly."""


class MaterialError(UplinkError, DeviceConfigError):
    """The TLS key, certificates or password file cannot be loaded: the uplink is in ``error`` and
    tries again every ``config_retry_s`` (a fixed file is picked up), while the rest of the gateway,
    the SMS fallback of SOS above all, carries on."""


RefusalKey = tuple[Lane, str]


def refusal_key(msg: StoredMessage) -> RefusalKey:
    """What a refusal holds back: the lane, or for observations (fetched per device) the device."""
    return (msg.lane, msg.device_id if msg.lane is Lane.OBSERVATION else "")


@dataclass
class KeyRefusals:
    seqs: set[int] = field(default_factory=set)  # refused on this connection and not accepted since
    waiting: set[int] = field(default_factory=set)  # of those, the ones not sent again yet
    attempt: int = 0  # refusals in a row (a retry round refused counts once)
    due: float = 0.0  # time.monotonic() when the waiting ones go again


class Refusals:
    """The messages the broker refused in a PUBACK on this connection, until it accepts them.

    Every failure reason code is retried, with backoff: the transient ones (0x97 quota exceeded, 0x89
    server busy, 0x80 unspecified, 0x83 implementation specific) pass, and the lasting ones (0x87 not
    authorized, an ACL) end when someone fixes the broker's configuration, which then takes the message
    without the gateway having to reconnect. The outbox keeps a refused message anyway; a retry a
    minute costs the broker little. Without this the per-connection cursor had moved past it, and it
    went again only after a reconnect, days later maybe: an SOS too.

    Per key (:func:`refusal_key`) one backoff: the first refusal waits 1-2 s, each retry round refused
    doubles the ceiling up to :data:`RETRY_CAP_S`; a refusal while others wait joins their round. A
    refused message that the broker then accepts restarts the backoff and sends the others at once.

    While a key has refused messages it takes no new ones (:meth:`holds_back`), so a broker that refuses
    everything is not sent the whole backlog, only a window of retries per backoff period. Two
    exceptions: alerts (a new alert always goes at once; the waiting ones keep their slots in the alert
    lane's room, which bounds them), and a key whose backoff has reached the cap
    (:data:`RETRY_GIVE_WAY_AFTER` rounds) with fewer than ``hold_max`` refused: a message refused for
    good delays its lane or device by a minute or two, it does not stop it.
    """

    def __init__(self, hold_max: int, rng: random.Random | None = None) -> None:
        self.hold_max = max(1, hold_max)
        self.rng = rng or random.Random()
        self.keys: dict[RefusalKey, KeyRefusals] = {}

    def refused(self, msg: StoredMessage, now: float) -> float:
        """``msg`` refused at ``now``; returns the seconds until it goes again."""
        st = self.keys.setdefault(refusal_key(msg), KeyRefusals())
        st.seqs.add(msg.seq)
        st.waiting.add(msg.seq)
        if st.due > now:
            return st.due - now  # its key's round is scheduled already: it joins it
        st.attempt += 1
        ceiling = min(RETRY_CAP_S, RETRY_BASE_S * 2.0 ** min(st.attempt - 1, 30))
        wait = self.rng.uniform(ceiling / 2, ceiling)
        st.due = now + wait
        return wait

    def accepted(self, msg: StoredMessage, now: float) -> bool:
        """``msg`` accepted; True when it had been refused."""
        key = refusal_key(msg)
        st = self.keys.get(key)
        if st is None or msg.seq not in st.seqs:
            return False
        st.seqs.discard(msg.seq)
        st.waiting.discard(msg.seq)
        if st.seqs:
            st.attempt, st.due = 0, now  # the broker takes them again: the waiting ones go now
        else:
            del self.keys[key]
        return True

    def due(self, lane: Lane, now: float) -> list[tuple[RefusalKey, list[int]]]:
        """The keys of ``lane`` whose round is due, with their waiting seqs, oldest first."""
        return sorted(
            (
                (key, sorted(st.waiting))
                for key, st in self.keys.items()
                if key[0] is lane and st.waiting and st.due <= now
            ),
            key=lambda item: item[1][0],
        )

    def taken(self, key: RefusalKey, seqs: Iterable[int]) -> None:
        """``seqs`` are sent again (or are no longer stored): no longer waiting."""
        st = self.keys.get(key)
        if st is not None:
            st.waiting.difference_update(seqs)

    def forget(self, key: RefusalKey, seqs: Iterable[int]) -> None:
        """``seqs`` are no longer in the outbox (evicted while they waited): nothing to retry."""
        st = self.keys.get(key)
        if st is not None:
            st.seqs.difference_update(seqs)
            st.waiting.difference_update(seqs)
            if not st.seqs:
                del self.keys[key]

    def holds_back(self, key: RefusalKey) -> bool:
        """``key`` takes no new messages now."""
        st = self.keys.get(key)
        if st is None or key[0] is Lane.ALERT:
            return False
        return st.attempt < RETRY_GIVE_WAY_AFTER or len(st.seqs) >= self.hold_max

    def waiting_in(self, lane: Lane) -> int:
        return sum(len(st.waiting) for key, st in self.keys.items() if key[0] is lane)

    def next_due(self, now: float) -> float | None:
        """When the next round of waiting messages is due after ``now``, or None."""
        return min((st.due for st in self.keys.values() if st.waiting and st.due > now), default=None)


def load_material(cfg: UplinkSection) -> tuple[str | None, ssl.SSLContext | None]:
    """The password and TLS context of ``cfg``, or :class:`MaterialError` saying which file failed.
    Also what ``gatewayd --check`` runs: a configuration that names unloadable files is not valid."""
    try:
        password = read_secret(cfg.password_file) if cfg.password_file else None
    except ConfigError as exc:
        raise MaterialError(str(exc)) from exc
    if not cfg.tls:
        return password, None
    try:
        return password, tls_context(cfg)
    except (OSError, ssl.SSLError) as exc:
        raise MaterialError(f"TLS material cannot be loaded: {exc}") from exc


def tls_context(cfg: UplinkSection, *, verify: bool = True) -> ssl.SSLContext:
    """The uplink's TLS client context (TLS 1.2 at least, the configured CA and client certificate);
    ``verify=False`` only for ``doctor``, to read the certificate of a broker that fails verification.
    Raises :class:`OSError` or :class:`ssl.SSLError` for a file that cannot be loaded."""
    if verify:
        ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.sslsocket_class = _ClosingSSLSocket
    if cfg.cert_file and cfg.key_file:
        ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file))
    return ctx


class Uplink:
    def __init__(
        self,
        cfg: UplinkSection,
        gateway_id: str,
        outbox: Outbox,
        *,
        status_body: Callable[[], Mapping[str, Any]] | None = None,
        historical_after_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.gateway_id = gateway_id
        self.outbox = outbox
        self.topics = Topics(cfg.topic_prefix, gateway_id)
        self.status_body = status_body or (lambda: {})
        self.historical_after_s = historical_after_s
        self.clock = clock
        self.window = cfg.inflight_window
        self.min_share = max(1, self.window // MIN_SHARE_DIVISOR)
        # Loaded by the first session (and again by each one until it loads): a key the service cannot
        # read puts the uplink in error, it does not stop the daemon (nor its SMS fallback).
        self._material: tuple[str | None, ssl.SSLContext | None] | None = None
        self.reconnector = Reconnector(
            "uplink",
            self._session,
            backoff=Backoff(base_s=cfg.backoff_base_s, cap_s=cfg.backoff_cap_s),
            config_retry_s=max(cfg.backoff_cap_s, 30.0),
            on_state=self._on_state,
        )
        self._reconnect_now = False
        self._reconnect_why = "new settings"
        self.on_alert_delivered: list[Callable[[StoredMessage], None]] = []  # PUBACK of an alert
        self.downlink: Downlink | None = None  # set by the daemon: commands on cmd/+
        self._command_tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._status_due = asyncio.Event()
        self.published = 0
        self.acked = 0
        self.rejected = 0
        # Reason codes already logged at WARNING per topic refused (repeats go to DEBUG), until accepted.
        self._refusing: dict[str, set[int]] = {}
        # time.monotonic() when the connection was made, and when it went down (None while connected):
        # for durations, and for the status's times (clock.wall_of_monotonic), which a step never moves
        self.connected_since: float | None = None
        self.down_since_mono: float | None = time.monotonic()
        self._new_data = True
        outbox.on_commit(self._on_commit)
        outbox.on_evict(lambda _ranges: self.request_status())
        outbox.on_recovered(self.request_status)  # the status's recovered_from says how much came back
        outbox.on_replaced(self._store_replaced)

    # -- public --------------------------------------------------------------------------------

    @property
    def state(self) -> ConnState:
        return self.reconnector.state

    async def run(self) -> None:
        await self.outbox.opened()  # its stream and seqs are what the status says on connecting
        await self.reconnector.run()

    def reconfigure(self, cfg: UplinkSection) -> None:
        """New broker settings (``gatewayctl config set``): checked first, then the current connection
        ends in order and the next one uses them."""
        material = load_material(cfg)  # refused before anything changes
        self.cfg = cfg
        self._material = material
        self.topics = Topics(cfg.topic_prefix, self.gateway_id)
        self.window = cfg.inflight_window
        self.min_share = max(1, self.window // MIN_SHARE_DIVISOR)
        self.reconnector.backoff.base_s, self.reconnector.backoff.cap_s = cfg.backoff_base_s, cfg.backoff_cap_s
        self._reconnect_why = "new settings"
        self._reconnect_now = True
        self._wake.set()

    def _store_replaced(self) -> None:
        """The outbox replaced a damaged store while running: this session's in-flight counts and
        cursors are of the old one; the next session starts from the fresh store."""
        self._reconnect_why = "the outbox store was replaced"
        self._reconnect_now = True
        self._wake.set()

    def request_status(self) -> None:
        self._status_due.set()
        self._wake.set()

    def _on_state(self, state: ConnState, error: BaseException | None) -> None:
        if state is ConnState.CONNECTED:
            self.connected_since, self.down_since_mono = time.monotonic(), None
        elif self.connected_since is not None:
            self.connected_since, self.down_since_mono = None, time.monotonic()

    def down_for_s(self) -> float:
        """Seconds since the uplink went down (0 while connected), on the monotonic clock."""
        return 0.0 if self.down_since_mono is None else max(0.0, time.monotonic() - self.down_since_mono)

    # -- set-up --------------------------------------------------------------------------------

    def _status_payload(self, online: bool, *, full: bool | None = None) -> bytes:
        """``full``: with the daemon's body (last_seq, stream...): online, and the orderly stop's offline
        (its last_seq is what the cloud's completeness check counts to); never the will."""
        body: dict[str, Any] = {
            "gateway_id": self.gateway_id,
            "type": "status",
            "state": "online" if online else "offline",
            "at": _now_rfc3339(),
        }
        if online if full is None else full:
            body.update(self.status_body())
        return json.dumps(body, separators=(",", ":")).encode()

    def _make_client(self) -> mqtt.Client:
        cfg = self.cfg
        if self._material is None:
            self._material = load_material(cfg)
        password, ssl_context = self._material
        v5 = cfg.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or self.gateway_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else True,
        )
        if ssl_context is not None:
            client.tls_set_context(ssl_context)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, password)
        client.will_set(self.topics.status, self._status_payload(False), qos=1, retain=True)
        # We never publish beyond our window, so paho's queue stays empty.
        client.max_inflight_messages_set(self.window + ALERT_RESERVE + 8)
        client.max_queued_messages_set(0)
        return client

    # -- one connection ------------------------------------------------------------------------

    async def _session(self) -> None:
        loop = asyncio.get_running_loop()
        client = self._make_client()
        connack: asyncio.Future[ReasonCode] = loop.create_future()
        gone: asyncio.Future[str] = loop.create_future()
        inflight: dict[int, StoredMessage] = {}
        lane_inflight = [0, 0, 0, 0]
        refusals = Refusals(hold_max=self.min_share)
        fds: dict[str, int] = {}

        loop_thread = threading.get_ident()

        def call(fn: Callable[..., Any], *args: Any) -> None:
            # paho calls these from connect() in the executor thread, and from loop_read/loop_write
            # in the loop thread: only the former must hop.
            if threading.get_ident() == loop_thread:
                fn(*args)
            else:
                loop.call_soon_threadsafe(fn, *args)

        def on_socket_open(c: mqtt.Client, _ud: Any, sock: Any) -> None:
            fds["fd"] = sock.fileno()
            call(loop.add_reader, fds["fd"], c.loop_read)

        def on_socket_close(_c: mqtt.Client, _ud: Any, _sock: Any) -> None:
            fd = fds.pop("fd", None)
            if fd is not None:
                call(_unwatch, loop, fd)

        def on_socket_register_write(c: mqtt.Client, _ud: Any, _sock: Any) -> None:
            if "fd" in fds:
                call(loop.add_writer, fds["fd"], c.loop_write)

        def on_socket_unregister_write(_c: mqtt.Client, _ud: Any, _sock: Any) -> None:
            if "fd" in fds:
                call(loop.remove_writer, fds["fd"])

        def on_connect(_c: mqtt.Client, _ud: Any, _flags: Any, rc: ReasonCode, _p: Properties | None) -> None:
            if not connack.done():
                connack.set_result(rc)

        def on_disconnect(_c: mqtt.Client, _ud: Any, _flags: Any, rc: ReasonCode, _p: Properties | None) -> None:
            if not gone.done():
                gone.set_result(str(rc))
            self._wake.set()

        def on_publish(_c: mqtt.Client, _ud: Any, mid: int, rc: ReasonCode, _p: Properties | None) -> None:
            msg = inflight.pop(mid, None)
            if msg is None:
                return  # birth/status
            lane_inflight[msg.lane] -= 1
            if rc.is_failure:
                # The broker refused this message (ACL, quota...): it stays in the outbox and goes again
                # on this connection after a backoff (Refusals says why every reason code is retried).
                self.rejected += 1
                wait = refusals.refused(msg, time.monotonic())
                codes = self._refusing.setdefault(msg.topic, set())
                log.log(
                    logging.DEBUG if rc.value in codes else logging.WARNING,
                    "uplink: broker refused seq %d on %s: %s (0x%02x), sending it again in %.0f s",
                    msg.seq,
                    msg.topic,
                    rc,
                    rc.value,
                    wait,
                )
                codes.add(rc.value)
            else:
                if refusals.accepted(msg, time.monotonic()) and msg.topic in self._refusing:
                    del self._refusing[msg.topic]  # a new refusal is worth a warning again
                    log.info("uplink: broker accepted seq %d on %s after refusing it", msg.seq, msg.topic)
                self.acked += 1
                self.outbox.ack((msg.seq,))
                if msg.lane is Lane.ALERT:
                    for cb in self.on_alert_delivered:
                        cb(msg)
            self._wake.set()

        def on_message(c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
            if self.downlink is None or not msg.topic.startswith(cmd_prefix):
                return
            task = loop.create_task(self._command(c, gone, msg.topic[len(cmd_prefix) :], bytes(msg.payload)))
            self._command_tasks.add(task)
            task.add_done_callback(self._command_tasks.discard)

        cmd_prefix = f"{self.topics.base}/cmd/"
        client.on_message = on_message
        client.on_socket_open = on_socket_open
        client.on_socket_close = on_socket_close
        client.on_socket_register_write = on_socket_register_write
        client.on_socket_unregister_write = on_socket_unregister_write
        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish

        if self.cfg.protocol == "5":
            # MQTT 5 Maximum Packet Size (3.1.2.11.4): the broker drops what is larger instead of sending
            # it, so a huge publish on cmd/ never has to be held in memory here before the size check.
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho is untyped here
            props.MaximumPacketSize = MAX_INCOMING_PACKET
            connect = functools.partial(
                client.connect,
                self.cfg.host,
                self.cfg.port,
                keepalive=self.cfg.keepalive_s,
                clean_start=True,
                properties=props,
            )
        else:
            connect = functools.partial(client.connect, self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        misc: asyncio.Task[None] | None = None
        try:
            try:
                await _connect_in_thread(connect, client)
            except ssl.SSLCertVerificationError as exc:
                raise BrokerUnavailable(
                    f"TLS certificate of {self.cfg.host} not trusted: {exc.verify_message}"
                ) from exc
            except (TimeoutError, OSError, ssl.SSLError) as exc:
                raise BrokerUnavailable(f"cannot reach {self.cfg.host}:{self.cfg.port}: {exc}") from exc
            misc = asyncio.create_task(_loop_misc(client, gone))
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    waiters: set[asyncio.Future[Any]] = {connack, gone}
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            except TimeoutError:
                raise BrokerUnavailable(f"no CONNACK from {self.cfg.host} in {CONNECT_TIMEOUT_S:g} s") from None
            if not connack.done():
                raise BrokerUnavailable(f"connection to {self.cfg.host} closed before CONNACK: {gone.result()}")
            rc = connack.result()
            if rc.is_failure:
                raise BrokerRefused(f"broker {self.cfg.host} refused the connection: {rc}")
            client.publish(self.topics.status, self._status_payload(True), qos=1, retain=True)
            if self.downlink is not None:
                client.subscribe(f"{self.topics.base}/cmd/+", qos=1)
            self.reconnector.mark_connected()
            log.info(
                "uplink: connected to %s:%d (TLS %s)", self.cfg.host, self.cfg.port, "on" if self.cfg.tls else "off"
            )
            await self._pump(client, gone, inflight, lane_inflight, refusals)
        finally:
            if misc is not None:
                misc.cancel()
            if not gone.done():
                # Orderly stop (cancelled): say offline ourselves, then disconnect cleanly.
                try:
                    client.publish(self.topics.status, self._status_payload(False, full=True), qos=1, retain=True)
                    client.disconnect()
                    client.loop_write()
                except (OSError, ValueError):
                    log.debug("uplink: clean disconnect failed", exc_info=True)
            fd = fds.pop("fd", None)
            if fd is not None:
                _unwatch(loop, fd)
            _close_quietly(client)

    async def _command(self, client: mqtt.Client, gone: asyncio.Future[str], name: str, payload: bytes) -> None:
        assert self.downlink is not None
        outcome = await self.downlink.receive(name, payload)
        if outcome is None:
            return  # malformed, past its budget: dropped without a reply (gateway/downlink.py)
        request_id, reply = outcome
        if gone.done():
            return  # the connection is gone: the cloud retries, and the replay gets the stored reply
        body = json.dumps(reply, separators=(",", ":"), default=str).encode()
        client.publish(f"{self.topics.base}/cmd-result/{request_id}", body, qos=1)

    def _on_commit(self) -> None:
        self._new_data = True
        self._wake.set()

    async def _pump(
        self,
        client: mqtt.Client,
        gone: asyncio.Future[str],
        inflight: dict[int, StoredMessage],
        lane_inflight: list[int],
        refusals: Refusals,
    ) -> None:
        cursor = [0, 0, 0, 0]  # highest seq fetched per lane in this session
        exhausted = [False, False, False, False]  # nothing more in the lane at the last look
        last_status = time.monotonic()  # the birth message was just sent
        refill_at = max(1, self.window // 4)  # after acks, refill once this many slots are free

        dev_cursor: dict[str, int] = {}  # highest observation seq fetched per device
        dev_exhausted: set[str] = set()
        rotation = [0]

        def send(rows: list[StoredMessage], lane: Lane) -> None:
            t_now = self.clock()
            for msg in rows:
                historical = self.outbox.age_s(msg, t_now) > self.historical_after_s
                try:
                    body = corrected_body(msg)
                except ValueError as exc:  # a stored body the gateway did not write: send it as it is
                    log.warning("uplink: seq %d: times not corrected: %s", msg.seq, exc)
                    body = msg.body
                payload = wire_payload(msg, historical, body)
                info = client.publish(msg.topic, payload, qos=1, retain=msg.retain)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    raise BrokerUnavailable(f"publish failed: {mqtt.error_string(info.rc)}")
                self.outbox.note_sent(msg)
                inflight[info.mid] = msg
                lane_inflight[lane] += 1
                cursor[lane] = max(cursor[lane], msg.seq)  # a retry is behind it
            self.published += len(rows)

        def all_in_flight(lane: Lane) -> bool:
            """Every message stored in ``lane`` is in flight or waits to be sent again after a refusal
            (or there is none): nothing to fetch, and no round trip to the outbox's thread to learn it
            (most commits add to one lane only)."""
            if self.outbox.depth[lane] <= lane_inflight[lane] + refusals.waiting_in(lane):
                exhausted[lane] = True
            return exhausted[lane]

        async def retry(lane: Lane, room: int) -> int:
            """Send again, up to ``room``, the refused messages of ``lane`` whose backoff is over: read
            from the outbox again (a time correction may have rewritten them, an eviction removed them).
            Returns how many were sent."""
            sent = 0
            for key, seqs in refusals.due(lane, time.monotonic()):
                if sent >= room or gone.done():
                    break
                seqs = seqs[: room - sent]
                refusals.taken(key, seqs)
                # Every stored message of the key between the two is fetched: the refused ones, those
                # in flight or acked since (a window's worth at most).
                lo, hi = seqs[0], seqs[-1]
                if lane is Lane.OBSERVATION:
                    rows = await self.outbox.fetch_device(lane, key[1], lo - 1, hi - lo + 1)
                else:
                    rows = await self.outbox.fetch(lane, lo - 1, hi - lo + 1)
                wanted = set(seqs)
                rows = [r for r in rows if r.seq in wanted]
                refusals.forget(key, wanted - {r.seq for r in rows})
                if gone.done():
                    break
                send(rows, lane)
                sent += len(rows)
            return sent

        def retry_ready() -> bool:
            """A refused message is due and its lane has room (then the next pass sends one)."""
            now = time.monotonic()
            return any(
                refusals.due(lane, now)
                and (self.window + (ALERT_RESERVE if lane is Lane.ALERT else 0) - len(inflight)) > 0
                for lane in Lane
            )

        async def take(lane: Lane, room: int) -> None:
            room -= await retry(lane, room)
            if lane is Lane.ALERT:
                room -= refusals.waiting_in(lane)  # their slots are kept for their retry
            elif refusals.holds_back((lane, "")):
                return
            if room <= 0 or all_in_flight(lane):
                return
            rows = await self.outbox.fetch(lane, cursor[lane], room)
            exhausted[lane] = len(rows) < room
            if not gone.done():
                send(rows, lane)

        async def take_fair(room: int) -> None:
            """Observations: round-robin over devices, FIFO within each device. A device's live readings
            wait only for its own backlog, never for another device's."""
            lane = Lane.OBSERVATION
            room -= await retry(lane, room)
            if room <= 0 or all_in_flight(lane):
                return
            devices = [d for d in self.outbox.pending_devices(lane) if d not in dev_exhausted]
            if not devices:
                exhausted[lane] = True
                return
            # A device whose refused readings wait is not exhausted: it takes more once they go.
            devices = [d for d in devices if not refusals.holds_back((lane, d))]
            if not devices:
                return
            rotation[0] = (rotation[0] + 1) % len(devices)
            devices = devices[rotation[0] :] + devices[: rotation[0]]
            share = max(1, room // len(devices))
            for device in devices:
                if room <= 0 or gone.done():
                    return
                want = min(share, room)
                rows = await self.outbox.fetch_device(lane, device, dev_cursor.get(device, 0), want)
                if len(rows) < want:
                    dev_exhausted.add(device)
                if rows:
                    dev_cursor[device] = rows[-1].seq
                    if not gone.done():
                        send(rows, lane)
                    room -= len(rows)

        self._new_data = True
        while True:
            if gone.done():
                raise BrokerUnavailable(f"connection lost: {gone.result()}")
            if self._reconnect_now:
                self._reconnect_now = False
                log.info("uplink: %s: reconnecting", self._reconnect_why)
                return  # an expected end: the session disconnects cleanly and the next one starts
            self._wake.clear()
            if self._new_data:
                self._new_data = False
                exhausted = [False, False, False, False]
                dev_exhausted.clear()
            now = time.monotonic()
            if self._status_due.is_set() or now - last_status > 60.0:
                self._status_due.clear()
                last_status = now
                client.publish(self.topics.status, self._status_payload(True), qos=1, retain=True)

            # Alerts first, always, into the window plus their reserve.
            await take(Lane.ALERT, self.window + ALERT_RESERVE - len(inflight))
            # State and bulk keep a small share so a long observation backlog never starves them.
            for lane in (Lane.STATE, Lane.BULK):
                await take(lane, min(self.min_share - lane_inflight[lane], self.window - len(inflight)))
            await take_fair(self.window - len(inflight))
            for lane in (Lane.STATE, Lane.BULK):
                await take(lane, self.window - len(inflight))

            # Sleep until a commit, a disconnect, enough acks to be worth a refill, or a refused
            # message's backoff is over.
            while True:
                if self._wake.is_set() and (
                    self._new_data
                    or self._reconnect_now
                    or gone.done()
                    or self._status_due.is_set()
                    or self.window - len(inflight) >= refill_at
                    or not inflight
                ):
                    break
                if retry_ready():
                    break
                self._wake.clear()
                now = time.monotonic()
                due = refusals.next_due(now)
                if due is None:
                    await self._wake.wait()  # (a refused message due but without room waits for an ack)
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(due - now):
                            await self._wake.wait()


async def _loop_misc(client: mqtt.Client, gone: asyncio.Future[str]) -> None:
    """paho's keep-alive and timeouts, once a second."""
    while not gone.done():
        client.loop_misc()
        await asyncio.sleep(1.0)


def _unwatch(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    loop.remove_reader(fd)
    loop.remove_writer(fd)


def _close_quietly(client: mqtt.Client) -> None:
    sock = client.socket()
    if sock is not None:
        try:
            sock.close()
        except OSError:
            log.debug("uplink: socket close failed", exc_info=True)


def _now_rfc3339() -> str:
    from gateway.messages import rfc3339_ms

    return rfc3339_ms(time.time())
