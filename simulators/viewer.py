"""The cloud side, seen from a terminal: subscribe to ``homecare/v1/#`` and print what arrives.

Every message is checked against the contract's JSON Schema (when ``jsonschema`` is installed) and
``seq`` gaps are reported per stream (:class:`Completeness`, the cloud's check of docs/mqtt-contract.md),
so a developer sees at once what the cloud platform would see.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.contract import schema_for_topic


@dataclass
class _Stream:
    seqs: set[int] = field(default_factory=set)
    first_seq: int = 1
    last_seq: int = 0  # from the latest status of the stream: final once another stream followed
    evicted: list[tuple[int, int]] = field(default_factory=list)


class Completeness:
    """The cloud's completeness check, per gateway and stream (docs/mqtt-contract.md, "Completeness"):
    every seq from the stream's ``stream_first_seq`` to its ``last_seq`` arrived or was evicted. A new
    stream id (a new store: the SD card was replaced) starts its own count; the old stream's last
    ``last_seq`` is final."""

    def __init__(self) -> None:
        self.streams: dict[tuple[str, str], _Stream] = {}
        self.order: list[tuple[str, str]] = []  # streams in the order they were first seen

    def _stream(self, gateway_id: str, stream: str) -> _Stream:
        key = (gateway_id, stream)
        st = self.streams.get(key)
        if st is None:
            st = self.streams[key] = _Stream()
            self.order.append(key)
        return st

    def add(self, doc: dict[str, Any], retained: bool = False) -> None:
        gw, stream = doc.get("gateway_id"), doc.get("stream")
        if not isinstance(gw, str) or not isinstance(stream, str):
            return
        if doc.get("type") == "status":
            if isinstance(doc.get("last_seq"), int):
                st = self._stream(gw, stream)
                st.last_seq = max(st.last_seq, doc["last_seq"])
                st.first_seq = int(doc.get("stream_first_seq", 1))
                st.evicted = [(int(a), int(b)) for a, b in doc.get("evicted_ranges", [])]
            return
        if isinstance(doc.get("seq"), int):
            self._stream(gw, stream).seqs.add(doc["seq"])

    def missing(self, gateway_id: str, stream: str) -> list[int]:
        """Seqs of the stream up to its last known ``last_seq`` neither seen nor evicted."""
        st = self.streams.get((gateway_id, stream))
        if st is None:
            return []
        top = max(st.last_seq, max(st.seqs, default=0))
        return [
            s for s in range(st.first_seq, top + 1) if s not in st.seqs and not any(a <= s <= b for a, b in st.evicted)
        ]


class Viewer:
    """A QoS 1 subscriber that keeps what it saw (tests use it as the "cloud")."""

    def __init__(
        self,
        host: str,
        port: int,
        topic: str = "homecare/v1/#",
        *,
        validate: bool = True,
        session_id: str | None = None,
    ) -> None:
        self.host, self.port, self.topic = host, port, topic
        self.messages: queue.Queue[tuple[float, str, dict[str, Any], bool]] = queue.Queue()
        self.invalid: list[tuple[str, str]] = []
        self.on_message: Callable[[str, dict[str, Any], bool], None] | None = None
        self._validators: dict[str, Any] = {}
        self._validate = validate
        self._lock = threading.Lock()
        # session_id: a persistent session (the broker queues QoS 1 messages while we are away).
        self.session_id = session_id
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=session_id or "", protocol=mqtt.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.connected = threading.Event()

    def _on_connect(self, c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        c.subscribe(self.topic, qos=1)
        self.connected.set()

    def _check(self, topic: str, doc: dict[str, Any]) -> str | None:
        if not self._validate:
            return None
        name = schema_for_topic(topic)
        if name is None:
            return None
        try:
            from gateway.contract import validator
        except ImportError:
            return None
        v = self._validators.get(name)
        if v is None:
            try:
                v = self._validators[name] = validator(name)
            except ImportError:
                self._validate = False
                return None
        errors = [e.message for e in v.iter_errors(doc)]
        return "; ".join(errors) if errors else None

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        ours = schema_for_topic(msg.topic) is not None  # what the gateway publishes (not cmd/ from the cloud)
        try:
            doc = json.loads(msg.payload)
        except (ValueError, RecursionError):  # not JSON, or nested beyond the parser
            if ours:
                with self._lock:
                    self.invalid.append((msg.topic, "not JSON"))
            return
        problem = self._check(msg.topic, doc) if isinstance(doc, dict) else "not an object"
        if problem:
            with self._lock:
                self.invalid.append((msg.topic, problem))
        self.messages.put((time.monotonic(), msg.topic, doc, bool(msg.retain)))
        if self.on_message is not None:
            self.on_message(msg.topic, doc, bool(msg.retain))

    def start(self, timeout_s: float = 10.0) -> None:
        if self.session_id:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            self.client.connect(self.host, self.port, keepalive=30, clean_start=False, properties=props)
        else:
            self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(timeout_s):
            raise RuntimeError(f"viewer could not connect to {self.host}:{self.port}")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Viewer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def describe(topic: str, doc: dict[str, Any]) -> str:
    kind = doc.get("type", "?")
    head = f"seq {doc.get('seq', '-'):>6} {doc.get('captured_at', doc.get('at', ''))}"
    if kind == "alert":
        drill = " DRILL" if doc.get("drill") else ""
        return f"{head}  ALERT {doc.get('kind')} [{doc.get('severity')}]{drill} from {doc.get('device_id')}"
    if kind == "observation":
        return (
            f"{head}  obs   {doc.get('device_id')}: {doc.get('code')} = {doc.get('value')} {doc.get('unit')}"
            f" ({doc.get('method')}, quality {doc.get('quality')})"
        )
    if kind == "device_state":
        reason = f" ({doc['reason']})" if doc.get("reason") else ""
        return f"{head}  state {doc.get('device_id')}: {doc.get('state')}{reason}"
    if kind == "time_correction":
        return (
            f"{head}  TIME CORRECTION boot {doc.get('boot_id')}: add {doc.get('offset_s')} s to seq "
            f"{doc.get('first_seq')}..{doc.get('last_seq')}"
        )
    if kind == "summary":
        partial = " (so far)" if (doc.get("period") or {}).get("partial") else ""
        hr, spo2 = doc.get("heart_rate") or {}, doc.get("spo2") or {}
        return (
            f"{head}  SUMMARY {doc.get('subject')} {doc.get('date')}{partial}: heart rate median {hr.get('median')}"
            f" /min, SpO2 min {spo2.get('min')} %, presses {doc.get('presses')}, alerts {doc.get('alerts')}"
        )
    if kind == "status":
        return f"{'':>6} {doc.get('at', '')}  gateway {doc.get('gateway_id')} {doc.get('state')}"
    return f"{head}  {topic}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--topic", default="homecare/v1/#")


def run(args: argparse.Namespace) -> int:
    last_seq: dict[tuple[str, str], int] = {}

    def show(topic: str, doc: dict[str, Any], retained: bool) -> None:
        line = describe(topic, doc)
        gw, seq, stream = doc.get("gateway_id"), doc.get("seq"), doc.get("stream")
        if isinstance(gw, str) and isinstance(seq, int) and not retained:
            key = (gw, str(stream))
            prev = last_seq.get(key)
            if prev is None and any(k[0] == gw for k in last_seq):
                line += f"   <- new stream {stream}: the gateway's store is new, seq counts from its start"
            elif prev is not None and seq > prev + 1:
                line += f"   <- gap: seq {prev + 1}..{seq - 1} not (yet) seen"
            last_seq[key] = max(seq, prev or 0)
        if doc.get("clock") in ("unsynced", "corrected"):
            line += f"   [clock {doc['clock']}]"
        print(("[retained] " if retained else "") + line, flush=True)

    viewer = Viewer(args.host, args.port, args.topic)
    viewer.on_message = show
    viewer.start()
    print(f"cloud viewer: subscribed to {args.topic} on {args.host}:{args.port}", flush=True)
    try:
        while True:
            time.sleep(1.0)
            while viewer.invalid:
                topic, problem = viewer.invalid.pop(0)
                print(f"!! {topic}: message breaks the contract: {problem}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()
    return 0
