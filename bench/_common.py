"""Small helpers shared by the bench scripts (not a test dependency)."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

CLK_TCK = os.sysconf("SC_CLK_TCK")


def waveform_blocks(waveform: Callable[..., Any], arrays: dict[str, Any], fs: float) -> list[Any]:
    """The channels ``arrays`` (name -> 1-D numpy array at ``fs``) as 1 s blocks built by ``waveform``
    (:class:`drivers.base.Waveform`, passed in so that :mod:`bench.dsp_speed_pair` can build a base
    tree's), each channel a tuple of floats as drivers deliver them (the conversion is part of a speed
    bench's measured cost); device ``bench``, from 1.8e9 s."""
    blk = round(fs)
    n = len(next(iter(arrays.values())))
    return [
        waveform(
            "bench", 1.8e9 + i / fs, fs, {k: tuple(a[i : i + blk].tolist()) for k, a in arrays.items()}, first_index=i
        )
        for i in range(0, n, blk)
    ]


def scratch_dir(prefix: str) -> Path:
    """A fresh working directory under /tmp for one bench run, removed when the bench exits (the
    daemon's stores, a broker's files: a soak's outbox WAL alone is 16 MB)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    return tmp


def proc_io(pid: int) -> dict[str, int]:
    """/proc/<pid>/io counters (write_bytes: what reached the block layer)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/io") as fh:
        for line in fh:
            k, _, v = line.partition(":")
            out[k.strip()] = int(v)
    return out


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/<pid>/stat; 10 ms resolution)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def threads_cpu(pid: int) -> dict[str, tuple[float, float, int]]:
    """Per thread of ``pid`` (by name, numbered when repeated): (utime s, stime s, wakeups), where
    wakeups are the voluntary context switches (each time the thread slept and was woken)."""
    out: dict[str, tuple[float, float, int]] = {}
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                head, _, rest = fh.read().rpartition(")")
            with open(f"/proc/{pid}/task/{tid}/status") as fh:
                ctx = next(int(line.split()[1]) for line in fh if line.startswith("voluntary_ctxt_switches"))
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue  # the thread ended
        name = head.partition("(")[2]
        fields = rest.split()
        key, n = name, 1
        while key in out:
            n += 1
            key = f"{name}#{n}"
        out[key] = (int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK, ctx)
    return out


def threads_delta(
    before: dict[str, tuple[float, float, int]], after: dict[str, tuple[float, float, int]], seconds: float
) -> str:
    """What each thread used between two :func:`threads_cpu` readings: % of a core (user+system)
    and wakeups per second."""
    parts = []
    for name, (u1, s1, w1) in after.items():
        u0, s0, w0 = before.get(name, (0.0, 0.0, 0))
        parts.append(
            f"{name}: user {100 * (u1 - u0) / seconds:.2f} % sys {100 * (s1 - s0) / seconds:.2f} % "
            f"wakeups {(w1 - w0) / seconds:.0f}/s"
        )
    return "; ".join(parts)


def memory_mb(pid: int) -> dict[str, float]:
    """RSS and PSS (proportional set size: shared pages divided among the processes that map them)
    from /proc/<pid>/smaps_rollup, and the peak RSS (VmHWM), in MB."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                out[key.lower()] = int(rest.split()[0]) / 1024.0
    out["peak_rss"] = peak_rss_mb(pid)
    return out


def restartable_port() -> int:
    """A free loopback port below the kernel's ephemeral range, for a broker that is stopped and started
    again: while it is down, a port from the ephemeral range can be taken by any outgoing connection
    (even the gateway's own reconnect attempts, which connect to themselves), and it cannot come back."""
    import random
    import socket

    with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
        low = int(fh.read().split()[0])
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1025, low - 10_000), low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class TopicWatch:
    """A QoS 1 subscriber that notes when each message (by ``key(topic, doc)``) first arrived, on this
    process's monotonic clock."""

    def __init__(self, port: int, topic: str, key: Callable[[str, dict[str, Any]], str | None]) -> None:
        self.seen: dict[str, float] = {}
        self.count = 0
        self.cond = threading.Condition()
        self.key = key
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.on_message = self._on
        self.c.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.port = port

    def _on(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        k = self.key(msg.topic, json.loads(msg.payload)) if msg.payload else None
        with self.cond:
            self.count += 1
            if k is not None:
                self.seen.setdefault(k, now)
            self.cond.notify_all()

    def start(self) -> None:
        self.c.connect("127.0.0.1", self.port)
        self.c.loop_start()

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()

    def wait(self, key: str, timeout: float) -> float | None:
        with self.cond:
            self.cond.wait_for(lambda: key in self.seen, timeout)
            return self.seen.get(key)


PEER_QUEUE = 10_000  # published and not yet PUBACKed, at most: MQTT packet ids are 16 bits


def paho_publish(port: int, msgs: Iterable[tuple[str, bytes]], n: int, *, client_id: str = "paho-peer") -> float:
    """Raw paho-mqtt, the peer the gateway's uplink is compared with: publish ``n`` messages at QoS 1
    with 100 in flight (its own loop thread), nothing stored; returns the seconds from the first
    publish to the last PUBACK. At most :data:`PEER_QUEUE` messages wait for their PUBACK: with more
    than 65,535 outstanding, paho gives a new message the packet id of one still queued, which replaces
    it, and that message's PUBACK never comes (the old uplink bench hung at 100,000 messages)."""
    done = threading.Event()
    room = threading.Semaphore(PEER_QUEUE)
    acked = [0]

    def on_publish(_c: object, _u: object, _mid: int, _rc: object, _p: object) -> None:
        acked[0] += 1
        room.release()
        if acked[0] == n:
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(100)
    c.max_queued_messages_set(0)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        time.sleep(0.2)
        t0 = time.perf_counter()
        for topic, payload in msgs:
            room.acquire()
            c.publish(topic, payload, qos=1)
        finished = done.wait(600)
        elapsed = time.perf_counter() - t0
    finally:
        c.disconnect()
        c.loop_stop()
    if not finished:
        raise SystemExit(f"raw paho peer: {acked[0]} of {n} PUBACKs within 600 s")
    return elapsed


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    vs = sorted(values)
    if len(vs) == 1:
        return vs[0]
    return statistics.quantiles(vs, n=100, method="inclusive")[max(0, min(98, int(q) - 1))]


def result_line(**figures: float | int) -> str:
    parts = []
    for k, v in figures.items():
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return "RESULT " + " ".join(parts)


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def cpu_note() -> str:
    return f"{os.cpu_count()} cores"


def fill_outbox(path: Path, mb: int, topic: str = "t/w") -> int:
    """An outbox at ``path`` holding ``mb`` MB of waiting observations (1 kB each, bodies
    ``{"msg_id": "m<i>", ...}``), as a long outage leaves it; returns how many."""
    import asyncio

    from gateway.outbox import Lane, NewMessage, Outbox

    n = mb * 2**20 // 1024

    def msg(i: int) -> NewMessage:
        body = json.dumps({"msg_id": f"m{i}", "pad": "x" * 900}).encode()
        return NewMessage(Lane.OBSERVATION, topic, body, "w", time.time())

    async def fill() -> None:
        async with Outbox(path, max_bytes=(mb + 64) * 2**20) as ob:
            runner = asyncio.create_task(ob.run())
            for k in range(0, n, 20_000):
                await asyncio.gather(*(ob.submit(msg(i)) for i in range(k, min(n, k + 20_000))))
            runner.cancel()

    path.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(fill())
    return n


def drop_page_cache() -> bool:
    """Drop the kernel's page cache (as after a power cut: files are read from the disk); root only."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True
