"""CPU per device and memory of gatewayd with every device kind at its real rate (issue 15, items 4 and 1).

A real ``gatewayd`` (broker on loopback, connected) with, at their real rates:

- a BLE wrist monitor through the virtual BlueZ (private dbus-daemon): raw PPG at 100 Hz (red, IR,
  green) with its 3-axis accelerometer (frame format 2) when the virtual device has one (``--no-accel``
  leaves it out; the first line and ``wrist_accel`` in RESULT say which ran), as many samples per
  notification as the virtual device sends by default (``--ppg-per-frame N`` to change it), heart rate
  with RR and SpO2 every second; the gateway's DSP computes HR, SpO2 and the AF screen from the PPG;
- a CMS50 oximeter on a pty, 60 frames/s;
- a BLE blood-pressure cuff that takes a reading a minute (advertises, the gateway connects, fetches it);
- an RFXtrx SOS receiver on a pty, idle.

Runs: the receiver alone (the daemon's idle cost), wrist alone, oximeter alone (each ``--single-s``),
then everything for ``--minutes``; each run also prints gatewayd's CPU and wakeups (voluntary context
switches) per thread, from ``/proc/PID/task``. A device's CPU per hour is its run's CPU rate minus the idle rate;
the cuff's is what the full run has beyond idle + wrist + oximeter (small, so noisy). At the end of the
full run: RSS and PSS (``/proc/PID/smaps_rollup``) of gatewayd, and where its memory goes (modules
by RSS at import, ``-X importtime``'s slowest imports).

    nice -n 10 .venv/bin/python bench/device_cpu.py [--minutes 5] [--single-s 45]
    nice -n 10 .venv/bin/python bench/device_cpu.py --tracemalloc --minutes 2   # the Python heap by file
    nice -n 10 .venv/bin/python bench/device_cpu.py --profile --kinds oximeter --minutes 1  # where CPU goes
    nice -n 10 .venv/bin/python bench/device_cpu.py --pyspy --kinds wrist --minutes 1  # all threads, py-spy

Ends with ``RESULT total_core_pct=... wrist_cpu_s_per_h=... oximeter_cpu_s_per_h=... cuff_cpu_s_per_h=...
idle_cpu_s_per_h=... wrist_accel=0|1 wrist_parse_cpu_s_per_h=... wrist_dsp_cpu_s_per_h=... pss_mb=... rss_mb=...``
(the last two: the wrist's notification decoding and its DSP, measured in-process).
The machine has 2 cores shared with other work: CPU figures are noisy, run twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import cpu_s, memory_mb, result_line, scratch_dir, threads_cpu, threads_delta
from simulators.bluez.peripherals import BpCuff, SosPendant, WristMonitor
from simulators.broker import Mosquitto
from simulators.cms50_sim import Cms50Simulator
from simulators.rfxtrx_sim import RfxtrxSimulator
from tests.ble.util import virtual_bluez
from tests.helpers import REPO, GatewayProcess, gateway_config, rfxtrx_device, status_via_ctl, wait_for

WRIST = "C0:FF:EE:00:00:01"
CUFF = "C0:FF:EE:00:00:02"
KINDS = ("wrist", "oximeter", "cuff")


RFX_LINK = "usb-RFXCOM_RFXtrx433_CPU-if00-port0"
CMS50_LINK = "ttyUSB-cms50"
PENDANT = "C0:FF:EE:00:00:03"


def devices_toml(tmp: Path, kinds: tuple[str, ...]) -> str:
    """The RFXtrx receiver and the devices of ``kinds`` (wrist, oximeter, cuff, pendant)."""
    table = {
        "oximeter": ("oxi", "serial-cms50", f'port = "{tmp / CMS50_LINK}"\ndownload_stored = false'),
        "wrist": ("wrist", "ble-wrist", f'transport = "ble"\naddress = "{WRIST}"'),
        "cuff": ("cuff", "ble-bp-cuff", f'transport = "ble"\naddress = "{CUFF}"\ntimezone = "UTC"'),
        "pendant": ("sos-ble", "ble-sos", f'transport = "ble"\naddress = "{PENDANT}"'),
    }
    out = rfxtrx_device(tmp / RFX_LINK, accept_unknown=True)
    for kind in kinds:
        dev_id, driver, lines = table[kind]
        out += f'\n[[devices]]\nid = "{dev_id}"\nkind = "{driver}"\n{lines}\n'
    return out


@dataclass
class Devices:
    rfx: RfxtrxSimulator
    cuff: BpCuff | None
    pendant: SosPendant | None


@contextlib.asynccontextmanager
async def simulators(
    tmp: Path, kinds: tuple[str, ...], *, wrist: Mapping[str, Any] | None = None
) -> AsyncIterator[Devices]:
    """The simulators behind :func:`devices_toml`: ptys, and the virtual BlueZ on a private bus
    (this process's environment then points at it, so a gatewayd started inside uses it).
    ``wrist``: keyword arguments of the virtual wrist monitor (default :func:`wrist_options`)."""
    async with contextlib.AsyncExitStack() as stack:
        rfx = await stack.enter_async_context(RfxtrxSimulator(tmp / RFX_LINK))
        if "oximeter" in kinds:
            await stack.enter_async_context(Cms50Simulator(tmp / CMS50_LINK))
        cuff = BpCuff(CUFF) if "cuff" in kinds else None
        pendant = SosPendant(PENDANT) if "pendant" in kinds else None
        wm = WristMonitor(WRIST, **(wrist_options() if wrist is None else wrist)) if "wrist" in kinds else None
        ble = [p for p in (wm, cuff, pendant) if p is not None]
        if ble:
            await stack.enter_async_context(virtual_bluez(ble))
        yield Devices(rfx, cuff, pendant)


def wrist_accel_supported() -> bool:
    """Whether the virtual wrist monitor can put its accelerometer in the PPG frames (format 2)."""
    return "accel" in inspect.signature(WristMonitor).parameters


def wrist_options(*, accel: bool = True, ppg_per_frame: int | None = None) -> dict[str, Any]:
    """The wrist monitor as the issue asks for it: raw PPG at 100 Hz with the accelerometer when the
    virtual device has one; ``ppg_per_frame`` samples per notification (default: the device's)."""
    kw: dict[str, Any] = {"ppg_rate_hz": 100.0}
    if accel and wrist_accel_supported():
        kw["accel"] = True
    if ppg_per_frame is not None:
        kw["ppg_per_frame"] = ppg_per_frame
    return kw


TRACEMALLOC_HOOK = """
import atexit, os, tracemalloc

def _dump():
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    with open(os.environ["BENCH_TRACEMALLOC_OUT"], "w") as fh:
        stats = snap.statistics("filename")
        fh.write(f"total {sum(s.size for s in stats) / 1e6:.1f} MB in {sum(s.count for s in stats)} blocks\\n")
        for s in stats[:25]:
            fh.write(f"{s.size / 1e6:8.2f} MB {s.count:8d} blocks  {s.traceback[0].filename}\\n")

if os.environ.get("BENCH_TRACEMALLOC_OUT"):
    tracemalloc.start(1)
    atexit.register(_dump)

if os.environ.get("BENCH_PROFILE_OUT"):
    import cProfile, io, pstats

    _prof = cProfile.Profile()
    _prof.enable()

    def _dump_profile():
        _prof.disable()
        out = io.StringIO()
        pstats.Stats(_prof, stream=out).sort_stats("tottime").print_stats(25)
        with open(os.environ["BENCH_PROFILE_OUT"], "w") as fh:
            fh.write(out.getvalue())

    atexit.register(_dump_profile)
"""


async def measure(
    tmp: Path,
    port: int,
    kinds: tuple[str, ...],
    seconds: float,
    *,
    trace: str | None = None,
    wrist: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """CPU rate (s per s) of gatewayd over ``seconds`` once every device of ``kinds`` delivers.
    ``trace`` ("tracemalloc" or "profile"): gatewayd runs under tracemalloc or cProfile (a
    sitecustomize hook) and writes its Python heap by file, or its functions by own time, to
    ``<trace>.txt`` at its orderly stop."""
    work = tmp / "-".join(kinds or ("idle",))
    work.mkdir()
    config = gateway_config(work, port, gateway_id="gw-cpu", devices=devices_toml(work, kinds))
    async with simulators(work, kinds, wrist=wrist) as sims:
        cuff = sims.cuff
        gw = GatewayProcess(config, log_level="WARNING")
        saved = dict(os.environ)
        if trace in ("tracemalloc", "profile"):
            (work / "hook").mkdir()
            (work / "hook" / "sitecustomize.py").write_text(TRACEMALLOC_HOOK)
            os.environ["PYTHONPATH"] = str(work / "hook")
            os.environ[f"BENCH_{trace.upper()}_OUT"] = str(work / f"{trace}.txt")
        try:
            gw.start()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        try:
            want = {"wrist": "wrist", "oximeter": "oxi"}

            def delivering() -> bool:
                st = status_via_ctl(config)
                if not st:
                    return False
                seen = {d["id"]: d["readings"] for d in st["devices"]}
                return all(seen.get(want[k], 0) > 0 for k in kinds if k in want)

            await asyncio.to_thread(wait_for, delivering, 90, 0.5, "the devices to deliver")
            await asyncio.sleep(10)  # DSP windows filled, start-up done
            c0, t0, th0 = cpu_s(gw.pid), time.monotonic(), threads_cpu(gw.pid)
            spy = pyspy_start(gw.pid, seconds, work / "pyspy.txt") if trace == "pyspy" else None
            next_cuff = t0
            while (now := time.monotonic()) < t0 + seconds:
                if cuff is not None and now >= next_cuff:
                    await cuff.measure()
                    next_cuff += 60.0
                await asyncio.sleep(min(1.0, t0 + seconds - now))
            c1, t1, th1 = cpu_s(gw.pid), time.monotonic(), threads_cpu(gw.pid)
            print(f"  {'+'.join(kinds) or 'receiver alone'} by thread: {threads_delta(th0, th1, t1 - t0)}", flush=True)
            if spy is not None:
                await asyncio.to_thread(spy.wait, 60)
            mem = memory_mb(gw.pid)
            if cuff is not None:
                st = await asyncio.to_thread(status_via_ctl, config) or {}
                mem["cuff_readings"] = float(
                    next((d["readings"] for d in st.get("devices", []) if d["id"] == "cuff"), 0)
                )
            gw.terminate(30)
        finally:
            gw.stop_quietly()
    if "Traceback" in gw.log():
        raise SystemExit(f"gatewayd logged a traceback, see {gw.logfile}")
    return {"rate": (c1 - c0) / (t1 - t0), **mem}


def pyspy_start(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy (``pip install py-spy``) sampling every thread of ``pid`` for ``seconds``, collapsed
    stacks to ``out`` (idle threads left out: what is sampled is what runs)."""
    exe = Path(sys.executable).with_name("py-spy")
    cmd = [str(exe), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100"]
    cmd += ["--format", "raw", "--threads", "--nonblocking", "--output", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pyspy_summary(path: Path, n: int = 30) -> str:
    """Collapsed stacks -> samples by function (own and inclusive) and by file, as text."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    by_file: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        k = int(count)
        total += k
        frames = stack.split(";")[1:]  # the first is the thread
        if not frames:
            continue
        own[frames[-1]] = own.get(frames[-1], 0) + k
        leaf_file = frames[-1].rpartition("(")[2].split(":")[0]
        by_file[leaf_file] = by_file.get(leaf_file, 0) + k
        for f in set(frames):
            incl[f] = incl.get(f, 0) + k
    lines = [f"{total} samples"]
    for title, table in (("own", own), ("inclusive", incl), ("own by file", by_file)):
        lines.append(f"-- {title}")
        for name, k in sorted(table.items(), key=lambda r: -r[1])[:n]:
            lines.append(f"{100 * k / max(total, 1):6.1f} %  {name}")
    return "\n".join(lines)


def wrist_path_costs(seconds: int = 120, fs: float = 100.0) -> dict[str, float]:
    """In-process CPU (no I/O, no event loop) of what gatewayd does with a wrist's raw PPG, on the
    virtual device's signal: decoding one-sample notifications and assembling them into blocks
    (drivers.ble), and the DSP on those blocks (gateway.dsp). CPU s per hour of streaming."""
    from drivers.ble import gatt
    from drivers.ble.wrist import PpgAssembler
    from gateway.dsp.stream import WristStream
    from simulators.bluez.physiology import make_source

    src = make_source(fs)
    n = int(seconds * fs)
    frames = [gatt.encode_ppg_frame(i, fs, src.samples(i, 1)) for i in range(n)]
    assembler = PpgAssembler("wrist")
    t0 = time.process_time()
    blocks = [w for i, f in enumerate(frames) for w in assembler.feed(gatt.decode_ppg_frame(f), (i + 1) / fs)]
    parse = time.process_time() - t0
    stream = WristStream("wrist")
    t0 = time.process_time()
    for w in blocks:
        stream.push_waveform(w)
    dsp = time.process_time() - t0
    return {"parse": parse / seconds * 3600, "dsp": dsp / seconds * 3600, "per_frame_us": parse / n * 1e6}


IMPORTS = ("numpy", "scipy.signal", "gateway.dsp.stream", "bleak", "dbus_fast", "paho.mqtt.client")


def import_costs() -> list[tuple[str, float]]:
    """RSS (MB) each package adds when imported first in a fresh interpreter, and then gateway.daemon."""
    code = (
        "import sys, importlib\n"
        "def rss():\n"
        "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) / 1024\n"
        "base = rss()\n"
        "for name in sys.argv[1:]:\n"
        "    before = rss(); importlib.import_module(name); print(name, round(rss() - before, 1))\n"
        "print('interpreter', round(base, 1))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *IMPORTS, "gateway.daemon"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    rows = []
    for line in out.stdout.splitlines():
        name, _, mb = line.rpartition(" ")
        rows.append((name, float(mb)))
    return rows


def import_time_by_package(n: int = 8) -> list[tuple[str, float]]:
    """``-X importtime`` of gateway.daemon: the modules' own import times summed by top-level package, ms."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import gateway.daemon"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    by_package: dict[str, float] = {}
    for line in out.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[0].startswith("import time:") and parts[1].strip().isdigit():
            own_us = int(parts[0].removeprefix("import time:").strip())
            root = parts[2].strip().split(".")[0]
            by_package[root] = by_package.get(root, 0.0) + own_us / 1000.0
    return sorted(by_package.items(), key=lambda r: -r[1])[:n]


def wrist_of(args: argparse.Namespace) -> dict[str, Any]:
    return wrist_options(accel=not args.no_accel, ppg_per_frame=args.ppg_per_frame)


def wrist_line(args: argparse.Namespace) -> str:
    kw = wrist_of(args)
    accel = "with accelerometer (PPG frame format 2)" if kw.get("accel") else "without accelerometer"
    if not args.no_accel and not wrist_accel_supported():
        accel += " (the virtual wrist monitor has none in this tree)"
    per = kw.get("ppg_per_frame", inspect.signature(WristMonitor).parameters["ppg_per_frame"].default)
    return f"wrist: raw PPG at {kw['ppg_rate_hz']:g} Hz, {per} sample(s) per notification, {accel}"


async def traced(args: argparse.Namespace) -> int:
    tmp = scratch_dir("bench-cpu-")
    print(wrist_line(args), flush=True)
    trace = "tracemalloc" if args.tracemalloc else "pyspy" if args.pyspy else "profile"
    kinds = tuple(args.kinds.split(",")) if args.kinds else KINDS
    with Mosquitto(workdir=tmp / "broker") as broker:
        full = await measure(tmp, broker.port, kinds, args.minutes * 60, trace=trace, wrist=wrist_of(args))
    what = {
        "tracemalloc": "its Python heap by file",
        "profile": "its functions by own time",
        "pyspy": "samples of every thread by function",
    }[trace]
    print(f"gatewayd under {trace}, devices {'+'.join(kinds)}, {args.minutes:g} min; {what}:")
    out = tmp / "-".join(kinds) / f"{trace}.txt"
    print(pyspy_summary(out) if trace == "pyspy" else out.read_text())
    mem = {"pss_mb": round(full["pss"], 1), "rss_mb": round(full["rss"], 1)}
    print(result_line(**mem, core_pct=round(full["rate"] * 100, 2)))
    return 0


async def run(args: argparse.Namespace) -> int:
    if args.tracemalloc or args.profile or args.pyspy:
        return await traced(args)
    tmp = scratch_dir("bench-cpu-")
    print(wrist_line(args), flush=True)
    broker = Mosquitto(workdir=tmp / "broker")
    broker.start()
    try:
        rates: dict[tuple[str, ...], dict[str, float]] = {}
        for kinds in ((), ("wrist",), ("oximeter",)):
            rates[kinds] = await measure(tmp, broker.port, kinds, args.single_s, wrist=wrist_of(args))
            print(f"{'+'.join(kinds) or 'receiver alone'}: {rates[kinds]['rate'] * 100:.2f} % of a core", flush=True)
        full = await measure(tmp, broker.port, KINDS, args.minutes * 60, wrist=wrist_of(args))
        print(f"everything for {args.minutes:g} min: {full['rate'] * 100:.2f} % of a core", flush=True)
    finally:
        broker.stop()
    idle = rates[()]["rate"]
    wrist = (rates[("wrist",)]["rate"] - idle) * 3600
    oxi = (rates[("oximeter",)]["rate"] - idle) * 3600
    cuff = (full["rate"] - idle) * 3600 - wrist - oxi
    print(f"idle (receiver only): {idle * 3600:.1f} CPU s/h; wrist {wrist:.1f}, oximeter {oxi:.1f}, cuff {cuff:.1f}")
    print(f"cuff readings fetched during the full run: {full.get('cuff_readings', 0):.0f}")
    print(
        f"gatewayd memory after {args.minutes:g} min with all devices: RSS {full['rss']:.1f} MB, "
        f"PSS {full['pss']:.1f} MB, peak RSS {full['peak_rss']:.1f} MB"
    )
    print("RSS added by importing (fresh interpreter, in this order):")
    for name, mb in import_costs():
        print(f"  {name:22s} {mb:6.1f} MB")
    print("import gateway.daemon: own import time by package")
    for name, ms in import_time_by_package():
        print(f"  {name:22s} {ms:7.1f} ms")
    path = wrist_path_costs()
    print(
        f"wrist path in-process (no I/O): decode + assemble {path['parse']:.1f} CPU s/h "
        f"({path['per_frame_us']:.1f} us a notification), DSP {path['dsp']:.1f} CPU s/h; the rest of "
        f"{wrist:.1f} is the notifications' transport (BlueZ, event loop wakeups) and the readings' way out"
    )
    print("machine: 2 cores shared with other agents; CPU figures are noisy")
    print(
        result_line(
            total_core_pct=round(full["rate"] * 100, 2),
            wrist_cpu_s_per_h=round(wrist, 1),
            oximeter_cpu_s_per_h=round(oxi, 1),
            cuff_cpu_s_per_h=round(cuff, 1),
            idle_cpu_s_per_h=round(idle * 3600, 1),
            wrist_accel=int(bool(wrist_of(args).get("accel"))),
            wrist_parse_cpu_s_per_h=round(path["parse"], 1),
            wrist_dsp_cpu_s_per_h=round(path["dsp"], 1),
            pss_mb=round(full["pss"], 1),
            rss_mb=round(full["rss"], 1),
        )
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="the run with every device (memory read at its end)")
    ap.add_argument("--single-s", type=float, default=45.0, help="each single-device run, seconds")
    ap.add_argument(
        "--tracemalloc", action="store_true", help="one run (--kinds), gatewayd under tracemalloc: its heap by file"
    )
    ap.add_argument("--profile", action="store_true", help="one run (--kinds), gatewayd under cProfile")
    ap.add_argument(
        "--pyspy", action="store_true", help="one run (--kinds), gatewayd sampled by py-spy (pip install py-spy)"
    )
    ap.add_argument("--no-accel", action="store_true", help="the wrist's PPG frames without the accelerometer")
    ap.add_argument(
        "--ppg-per-frame", type=int, default=None, help="PPG samples per wrist notification (default: the device's)"
    )
    ap.add_argument("--kinds", default="", help="with --tracemalloc/--profile/--pyspy: e.g. oximeter,wrist")
    return asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
