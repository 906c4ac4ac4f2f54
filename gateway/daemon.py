"""gatewayd: the daemon. One TaskGroup owns every long-running part; SIGTERM ends in an orderly stop.

Start order: control socket -> outbox (its open, integrity check included, runs beside what follows: a
full store takes seconds to check on an SD card, and presses wait in memory until it is open; a damaged
store is moved aside and replaced, see :mod:`gateway.outbox`) -> devices (each under its own supervisor:
:mod:`gateway.supervisor`) -> uplink (once the outbox is open) -> READY=1. The signal processing is
imported when a device first streams, not before.

Stop (SIGTERM/SIGINT), bounded by :data:`STOP_LIMIT_S` whatever disappears at the same moment (BlueZ and
the system bus, the broker, every serial port): the devices are cancelled (at most
:data:`~gateway.devices.STOP_LIMIT_S`), the outbox commits what is pending, then the uplink says
``offline`` and disconnects and the outbox closes. Everything accepted is committed before the process
exits. Should a part not end in time, the process exits anyway at the limit, its store already
committed; a second SIGTERM or SIGINT exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from drivers.base import ButtonPress, DeviceStatus, DriverContext, Reading, driver_class
from drivers.ble.manager import BleStack
from drivers.reconnect import ConnState
from gateway import messages
from gateway.alarm import SmsFallback, attach_sms_fallback
from gateway.care import CareDesk
from gateway.clock import Clock, ClockEvent, Timeline, wall_of_monotonic
from gateway.commands import Commands
from gateway.config import Config, claims_of, load_config
from gateway.control import ControlServer
from gateway.devices import DeviceManager
from gateway.downlink import Downlink, load_validators
from gateway.errors import CommandRejected, ConfigError, GatewayError, UplinkError
from gateway.loopwatch import LoopWatch
from gateway.messages import Topics, rfc3339_ms
from gateway.outbox import Lane, Outbox
from gateway.pipeline import Pipeline
from gateway.registry import Registry
from gateway.sdnotify import Notifier, watchdog_interval_s
from gateway.summarydesk import SummaryDesk, attach_summary
from gateway.uplink import Uplink, load_material

if TYPE_CHECKING:
    from gateway.dsp.stream import WristStream

log = logging.getLogger(__name__)

VERSION = "0.1.0"
STOP_LIMIT_S = 5.0  # SIGTERM -> exited, at the most (systemd's TimeoutStopSec is a little longer)


class _StopRequested(Exception):
    pass


class Daemon:
    def __init__(self, cfg: Config, *, clock: Callable[[], float] | None = None) -> None:
        self.cfg = cfg
        # the care rules' clock (tests drive hours of silence with it); default: the clock's timeline
        self.clock: Callable[[], float] = clock or time.time
        self._rules_clock_given = clock is not None
        self.timebase = Clock()  # is the wall clock synchronised, did it step (gateway/clock.py)
        self.timeline: Timeline | None = None
        self.started_mono = time.monotonic()  # the uptime: a step of the wall clock does not age the daemon
        self.loopwatch = LoopWatch()  # how late the event loop wakes (gateway/loopwatch.py)
        self._stop = asyncio.Event()
        self.notifier = Notifier()
        self.outbox: Outbox | None = None
        self.uplink: Uplink | None = None
        self.pipeline: Pipeline | None = None
        self.registry: Registry | None = None
        self.devices: DeviceManager | None = None
        self.care: CareDesk | None = None
        self.alarm: SmsFallback | None = None
        self.summary: SummaryDesk | None = None
        self.control: ControlServer | None = None
        self._down_since: float | None = None
        self._deadline: threading.Timer | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    async def reload(self, _args: Mapping[str, Any]) -> dict[str, Any]:
        """Re-read the configuration file and apply what can change without a restart."""
        try:
            new = load_config(self.cfg.path)
        except ConfigError as exc:
            raise CommandRejected("invalid", str(exc)) from None
        old = self.cfg
        applied: list[str] = []
        restart: list[str] = []
        if new.gateway != old.gateway:
            restart.append("gateway (id, data_dir, control_socket)")
        if new.outbox != old.outbox and self.outbox is not None:
            self.outbox.max_bytes = new.outbox.max_bytes
            self.outbox.commit_interval_s = new.outbox.commit_interval_ms / 1000.0
            if self.uplink is not None:
                self.uplink.historical_after_s = new.outbox.historical_after_s
            applied.append("outbox")
        if new.uplink != old.uplink and self.uplink is not None:
            try:
                self.uplink.reconfigure(new.uplink)
            except (UplinkError, ConfigError) as exc:
                raise CommandRejected("invalid", str(exc)) from None
            applied.append("uplink (reconnecting)")
        if self.pipeline is not None:
            self.pipeline.send_waveforms = new.uplink.send_waveforms
        if new.devices != old.devices and self.devices is not None:
            applied += await self.devices.reconfigure(new.devices)
        if new.rules != old.rules:
            restart.append("rules (the care rules keep their open alerts across the restart)")
        if new.alarm != old.alarm:
            restart.append("alarm (the SMS fallback keeps its attempts across the restart)")
        if new.summary != old.summary:
            restart.append("summary (the daily summary keeps its aggregates across the restart)")
        self.cfg = Config(
            path=old.path,
            gateway=old.gateway,
            uplink=new.uplink,
            outbox=new.outbox,
            devices=new.devices,
            rules=old.rules,
            downlink=new.downlink,
            alarm=old.alarm,
            summary=old.summary,
        )
        if self.uplink is not None and isinstance(self.uplink.downlink, Downlink):
            self.uplink.downlink.max_age_s = new.downlink.max_age_s
        log.info("configuration reloaded: %s", ", ".join(applied) or "nothing changed")
        return {"applied": applied, "restart_needed": restart}

    def _remember(self, reading: Reading) -> None:
        """Keep the device registry current: state changes and first sightings only, and after the
        reading has been handed to the outbox (a registry fsync never delays an SOS commit)."""
        if isinstance(reading, DeviceStatus):
            kind, state = "unknown", reading.state.value
        elif isinstance(reading, ButtonPress):
            kind, state = "sos-button", None
        else:
            return
        registry = self.registry
        if registry is not None:
            asyncio.get_running_loop().call_soon(
                functools.partial(registry.note_device, reading.device_id, kind, state=state, at=reading.captured_at)
            )

    def request_stop(self) -> None:
        """Ask for an orderly stop, bounded by :data:`STOP_LIMIT_S`. A second request exits at once."""
        if self._stop.is_set():
            log.warning("second stop request: exiting now")
            _exit_now(1)
        log.info("stop requested")
        self._stop.set()
        # A timer thread, not the event loop: it fires even when a part blocks the loop.
        self._deadline = threading.Timer(STOP_LIMIT_S - 0.5, self._stop_overdue)
        self._deadline.daemon = True
        self._deadline.start()

    def _stop_overdue(self) -> None:
        stuck = [t.get_name() for t in self._tasks if not t.done()]
        log.error("stop did not finish within %.1f s (still running: %s): exiting", STOP_LIMIT_S - 0.5, stuck)
        _exit_now(1)

    async def _wait_stop(self) -> None:
        await self._stop.wait()
        self.notifier.send("STOPPING=1", "STATUS=stopping")
        if self.devices is not None:
            await self.devices.stop_all()  # their last readings ("gateway stopped") reach the outbox
        if self.outbox is not None:
            await self.outbox.flush()  # everything accepted is on disk before anything else can hang
        raise _StopRequested

    async def run(self) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        data_dir = cfg.gateway.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        topics = Topics(cfg.uplink.topic_prefix, cfg.gateway.id)
        self.timebase.sample()
        self.timeline = timeline = Timeline(data_dir / "clock.json", boot_id=self.timebase.boot_id)
        if not self._rules_clock_given:
            self.clock = timeline
        async with (
            Outbox(
                data_dir / "outbox.sqlite3",
                max_bytes=cfg.outbox.max_bytes,
                commit_interval_ms=cfg.outbox.commit_interval_ms,
                timebase=self.timebase,
                time_correction=lambda tc: messages.time_correction(topics, tc, time.time()),
                open_in_run=True,  # the devices listen while a big store is checked (gateway/outbox.py)
            ) as outbox,
            BleStack() as ble,
        ):
            self.outbox = outbox
            self.timebase.listeners.append(self._clock_event)
            if self.timebase.synchronised():  # a restart on a trusted clock: settle this boot's waiting messages
                outbox.request_correction(self.timebase.boot_id, time.time() - self.timebase.boot())
            self.pipeline = pipeline = Pipeline(
                topics,
                outbox,
                dsp_factory=self._dsp_factory,
                send_waveforms=cfg.uplink.send_waveforms,
                drill_time=self._on_timeline,
            )
            self.uplink = uplink = Uplink(
                cfg.uplink,
                cfg.gateway.id,
                outbox,
                status_body=self.status_body,
                historical_after_s=cfg.outbox.historical_after_s,
            )
            self.registry = registry = Registry(data_dir / "registry.json")
            ctx = DriverContext(
                clock=time.time,
                state_dir=data_dir / "devices",
                ble=ble,
                clock_synchronised=self.timebase.synchronised,
            )
            self.devices = devices = DeviceManager(
                pipeline.sink, registry, cfg.devices, ctx, reserved=claims_of((), cfg.alarm)
            )
            devices.on_change.append(pipeline.add_device)
            devices.on_change.append(lambda dev_id, kind: registry.note_device(dev_id, kind))
            pipeline.on_reading(self._remember)
            # The daily summary (gateway/summarydesk.py): None with [summary] enabled = false. It sees the
            # readings after the outbox has them, and the care desk's alerts through its submit.
            self.summary = summary = attach_summary(
                cfg,
                topics,
                pipeline.submit,
                data_dir,
                synchronised=self.timebase.synchronised,
                drill_alerts=lambda: pipeline.drill.drill_alerts,
                offset=lambda: self.timebase.wall() - self.timebase.boot(),
                step_since=self.timebase.step_since,
            )
            care_submit = pipeline.submit if summary is None else summary.tap(pipeline.submit)
            if summary is not None:
                pipeline.on_alert(summary.press_alert)
                pipeline.on_reading(summary.feed)
            self.care = care = CareDesk(
                cfg.rules, topics, care_submit, registry, clock=self.clock, step_since=self.timebase.step_since
            )
            devices.on_change.append(care.add_device)
            devices.on_remove.append(care.remove_device)
            pipeline.on_reading(care.feed)
            pipeline.on_alert(care.sos)
            pipeline.calls = care  # call presses become call requests (issue 14)
            self.commands = commands = Commands(
                status=self.status,
                pipeline=pipeline,
                devices=devices,
                registry=registry,
                alerts=care,
                rules=care,
                clock=self.clock,
            )
            commands.restore()
            pipeline.on_alert(
                lambda alert_id, dev, at: (
                    commands.drills.pressed(alert_id, dev, self._on_timeline(at))
                    if alert_id in pipeline.drill.drill_alerts
                    else None
                )
            )
            uplink.on_alert_delivered.append(lambda msg: commands.drills.delivered(_alert_id(msg.body), self.clock()))
            uplink.downlink = Downlink(
                cfg.gateway.id,
                commands.downlink_handlers(),
                registry,
                clock_synchronised=self.timebase.synchronised,
                max_age_s=cfg.downlink.max_age_s,
                burst=cfg.downlink.rate_burst,
                per_minute=cfg.downlink.rate_per_minute,
            )
            # SMS fallback of SOS alerts (gateway/alarm.py): None without [alarm]; hooks itself to
            # pipeline.on_alert, uplink.on_alert_delivered and the acks of commands.alerts.
            self.alarm = attach_sms_fallback(
                cfg, topics, pipeline, uplink, commands, clock=self.clock, step_since=self.timebase.step_since
            )
            control = {
                "status": commands.status,
                "devices": commands.devices_list,
                "device-add": commands.device_add,
                "device-remove": commands.device_remove,
                "drill": commands.drill,
                "drill-stop": commands.drill_stop,
                "drill-report": commands.drill_report,
                "alert-ack": commands.alert_ack,
                "tail": commands.tail,
                "reload": self.reload,
            }
            if summary is not None:
                control["report"] = summary.report
            self.control = ControlServer(cfg.gateway.socket_path, control, load_validators())
            async with self.control:
                try:
                    async with asyncio.TaskGroup() as tg:
                        # The SOS path first: the outbox and the devices, then the rest.
                        self._tasks.append(tg.create_task(outbox.run(), name="outbox"))
                        devices.start_all()
                        self._tasks.append(tg.create_task(devices.run(), name="devices"))
                        if any(driver_class(spec.kind).streams for spec in devices.specs()):
                            _preload_dsp()
                        self._tasks.append(tg.create_task(self.timebase.run(), name="clock"))
                        self._tasks.append(tg.create_task(timeline.run(), name="timeline"))
                        self._tasks.append(tg.create_task(uplink.run(), name="uplink"))
                        self._tasks.append(tg.create_task(self._watchdog(), name="watchdog"))
                        self._tasks.append(tg.create_task(self.loopwatch.run(), name="loop watch"))
                        self._tasks.append(tg.create_task(care.run(self._watch_inputs), name="care rules"))
                        if self.alarm is not None:
                            self._tasks.append(tg.create_task(self.alarm.run(), name="sms fallback"))
                        if summary is not None:
                            self._tasks.append(tg.create_task(summary.run(), name="daily summary"))
                        self._tasks.append(tg.create_task(self._wait_stop(), name="stop"))
                        n = len(devices.supervisors)
                        self.notifier.send("READY=1", f"STATUS=running, {n} devices")
                        log.info("gateway %s running with %d devices", cfg.gateway.id, n)
                except* _StopRequested:
                    pass
        timeline.save(force=True)
        if self.care is not None:
            self.care.close()  # saves, then closes care.sqlite3
        if self.summary is not None:
            self.summary.close()  # saves, then closes summary.sqlite3
        if self.registry is not None:
            self.registry.close()
        log.info("gateway %s stopped; outbox closed with %d messages waiting", cfg.gateway.id, outbox.depth_total())
        self.notifier.close()
        if self._deadline is not None:
            self._deadline.cancel()

    def _on_timeline(self, wall_t: float) -> float:
        """A wall time (a press's capture) on the rules' timeline, as the care desk puts readings there:
        its age kept, moved by any step since it was read. Arithmetic only: it is on the SOS path."""
        return self.timebase.to_timeline(wall_t, self.clock())

    def _clock_event(self, ev: ClockEvent) -> None:
        """The clock became trustworthy or stepped while trusted: correct this boot's waiting messages."""
        if ev.corrects and self.outbox is not None:
            self.outbox.request_correction(self.timebase.boot_id, ev.offset)
        if ev.corrects and self.summary is not None:
            self.summary.correct(ev.offset)  # the same readings, in the daily summary's aggregate
        if self.uplink is not None:
            self.uplink.request_status()

    def _dsp_factory(self, device_id: str) -> WristStream:
        spec = self.devices.spec(device_id) if self.devices is not None else None
        return dsp_stream(device_id, spec.options if spec is not None else None)

    def _watch_inputs(self) -> tuple[float | None, float | None]:
        """What the care rules watch of the gateway itself: outbox fill and since when the uplink is down."""
        ob, up = self.outbox, self.uplink
        fill = ob.bytes / ob.max_bytes if ob is not None and ob.max_bytes else None
        if up is None or up.state is ConnState.CONNECTED:
            self._down_since = None
        elif self._down_since is None:
            # on the care rules' clock, fixed at the first look (measured on the monotonic clock)
            self._down_since = self.clock() - up.down_for_s()
        return fill, self._down_since

    async def _watchdog(self) -> None:
        interval = watchdog_interval_s()
        while True:
            up = self.uplink.state.value if self.uplink else "?"
            depth = self.outbox.depth_total() if self.outbox else 0
            fields = [f"STATUS=uplink {up}, outbox {depth} waiting"]
            if interval is not None:
                fields.append("WATCHDOG=1")
            self.notifier.send(*fields)
            await asyncio.sleep(interval if interval is not None else 10.0)

    # -- status ---------------------------------------------------------------------------------

    def status_body(self) -> Mapping[str, Any]:
        """What the retained ``status`` message carries besides online/offline."""
        ob = self.outbox
        assert ob is not None
        clk = self.timebase.status()
        return {
            "version": VERSION,
            "stream": ob.stream,
            "stream_first_seq": ob.stream_first_seq,
            "clock": {
                "synchronised": clk["synchronised"],
                "source": clk["source"],
                "steps": clk["steps"],
                "last_step_s": clk["last_step"]["delta_s"] if clk["last_step"] else None,
                "corrections": clk["corrections"],
            },
            "last_seq": ob.next_seq - 1,
            "outbox_depth": {lane.name.lower(): ob.depth[lane] for lane in Lane},
            "evicted_total": ob.counters.evicted_total,
            "evicted_ranges": [list(r) for r in ob.evicted_ranges],
            **({"recovered_from": _at_rfc3339(ob.recovery.status())} if ob.recovery is not None else {}),
        }

    async def status(self) -> dict[str, Any]:
        ob, up, pl = self.outbox, self.uplink, self.pipeline
        assert ob is not None and up is not None and pl is not None
        stats = await ob.stats()
        clk = self.timebase.status()
        dm = self.devices
        supervisors = dm.supervisors if dm is not None else {}
        devices = []
        for info in pl.devices.values():
            sup = supervisors.get(info.id)
            counters = dict(info.counters)
            if sup is not None:
                counters.update(sup.driver_counters())
                counters["bugs"] = sup.bug_count()
                counters["driver_restarts"] = sup.failures
            devices.append(
                {
                    "id": info.id,
                    "kind": info.kind,
                    "state": info.state,
                    "reason": info.reason,
                    "last_seen": _on_wall(info.last_seen),
                    "readings": info.readings,
                    "counters": counters,
                }
            )
        for dev_id, (kind, why) in dm.skipped.items() if dm is not None else ():
            devices.append(
                {
                    "id": dev_id,
                    "kind": kind,
                    "state": "error",
                    "reason": f"stored device no longer valid, not started: {why}",
                    "last_seen": None,
                    "readings": 0,
                    "counters": {},
                }
            )
        return {
            "gateway_id": self.cfg.gateway.id,
            "version": VERSION,
            "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "uplink": {
                "state": up.state.value,
                "broker": f"{self.cfg.uplink.host}:{self.cfg.uplink.port}",
                "tls": self.cfg.uplink.tls,
                "connected_since": _on_wall(up.connected_since),
                "disconnected_since": _on_wall(up.down_since_mono),
                "last_error": str(up.reconnector.last_error) if up.reconnector.last_error else None,
                "published": up.published,
                "acked": up.acked,
                "rejected": up.rejected,
            },
            "outbox": {
                "depth": stats.depth,
                "oldest_age_s": {lane: (None if a is None else round(a, 1)) for lane, a in stats.oldest_age_s.items()},
                "bytes": stats.bytes,
                "max_bytes": stats.max_bytes,
                "last_seq": stats.next_seq - 1,
                "stream": stats.stream,
                "stream_first_seq": stats.stream_first_seq,
                "evicted_total": stats.evicted_total,
                "evicted_ranges": [list(r) for r in stats.evicted_ranges],
                "commit_failures": pl.counters.commit_failures,
                "disk_low": ob.disk_low,
                "disk_free_bytes": ob.disk_free,
                "alerts_retrying": ob.alerts_retrying(),
                "recovered": (None if ob.recovery is None else _at_rfc3339(ob.recovery.detail())),
            },
            "devices": devices,
            "bugs": self.bugs(),
            "loop": self.loopwatch.status(),
            "registry": {"unavailable": self.registry.unavailable if self.registry is not None else None},
            "care": self.care.status() if self.care is not None else None,
            "alarm": self.alarm.status() if self.alarm is not None else None,
            "clock": {
                **clk,
                "synchronised_since": rfc3339_ms(clk["synchronised_since"]) if clk["synchronised_since"] else None,
                "last_step": clk["last_step"] and {**clk["last_step"], "at": rfc3339_ms(clk["last_step"]["at"])},
            },
        }

    def bugs(self) -> dict[str, int]:
        """Errors nobody declared possible, by where they were caught (each logged at ERROR)."""
        downlink = self.uplink.downlink if self.uplink is not None else None
        counts = {
            "devices": self.devices.bugs() if self.devices is not None else 0,
            "pipeline": self.pipeline.bugs.count if self.pipeline is not None else 0,
            "downlink": downlink.bugs.count if isinstance(downlink, Downlink) else 0,
            "control": self.control.bugs.count if self.control is not None else 0,
            "summary": self.summary.bugs.count if self.summary is not None else 0,
            "care": self.care.bugs.count if self.care is not None else 0,
            "clock": self.timebase.bugs.count + (self.timeline.bugs.count if self.timeline is not None else 0),
            "outbox": self.outbox.bugs.count if self.outbox is not None else 0,
            "uplink": self.uplink.reconnector.bugs.count if self.uplink is not None else 0,
            "alarm": self.alarm.bug_count() if self.alarm is not None else 0,
        }
        counts["total"] = sum(counts.values())
        return counts


def _on_wall(t_mono: float | None) -> str | None:
    """A status time kept on the monotonic clock, as RFC 3339 on today's wall clock (None: never)."""
    return None if t_mono is None else rfc3339_ms(wall_of_monotonic(t_mono))


def _alert_id(body: bytes) -> str:
    try:
        value = json.loads(body).get("alert_id")
    except ValueError:
        return ""
    return value if isinstance(value, str) else ""


def _preload_dsp() -> None:
    """Import the signal processing (numpy, scipy: seconds on a Pi) in a background thread, once the
    SOS path is up: imported on the event loop at the first waveform it would stall every device,
    the SOS receiver included, for as long."""

    def load() -> None:
        try:
            importlib.import_module("gateway.dsp.stream")
        except ImportError as exc:  # the first waveform will say so again, in the pipeline's bug log
            log.error("signal processing cannot be loaded: %s", exc)

    threading.Thread(target=load, name="dsp preload", daemon=True).start()


def _at_rfc3339(recovered: dict[str, Any]) -> dict[str, Any]:
    """The damaged store the outbox replaced (gateway.salvage.Recovery), its time as the status gives times."""
    return recovered | {"at": rfc3339_ms(recovered["at"])}


def _exit_now(code: int) -> None:
    """Leave at once: what was accepted is committed already (the outbox commits within its window)."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(code)


# syslog priorities (sd-daemon(3): "<N>" at the start of a line sets its priority in the journal)
JOURNAL_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def dsp_stream(device_id: str, options: object | None) -> WristStream:
    """One DSP stream per device, with what its configuration asks of it: the SpO2 calibration
    (``spo2_calibration``) and the heart rate while moving (``hr_while_moving``). The DSP (numpy) is
    imported here, when a device first streams: never before the SOS path is up."""
    from gateway.dsp.stream import WristStream

    model = getattr(options, "spo2_calibration", None)
    moving = getattr(options, "hr_while_moving", False)
    return WristStream(device_id, calibration=model if isinstance(model, str) else None, motion_hr=moving is True)


class JournalFormatter(logging.Formatter):
    """``<N>logger: message`` with N the syslog priority journald reads (DEBUG 7 ... CRITICAL 2); the
    journal adds time and unit itself."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prio = JOURNAL_PRIORITY.get(record.levelno)
        if prio is None:  # a custom level: the nearest standard one at or below it
            prio = next((p for lvl, p in sorted(JOURNAL_PRIORITY.items(), reverse=True) if record.levelno >= lvl), 7)
        text = super().format(record)
        # every line of a traceback carries the priority too, or journald files it at the default
        return "\n".join(f"<{prio}>{line}" for line in text.split("\n"))


def configure_logging(level: str) -> None:
    """Only gatewayd's entry point configures handlers. Under systemd (JOURNAL_STREAM set) the journal
    adds time and unit, so lines carry only their syslog priority and logger."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gatewayd", description="Homecare edge gateway daemon")
    parser.add_argument("--config", "-c", help="TOML configuration (default /etc/homecare-gateway/gateway.toml)")
    parser.add_argument("--log-level", default=os.environ.get("GATEWAY_LOG_LEVEL", "INFO"))
    parser.add_argument("--check", action="store_true", help="validate the configuration and exit")
    args = parser.parse_args(argv)
    configure_logging(args.log_level.upper())
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"gatewayd: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        try:
            load_material(cfg.uplink)  # the files it names, loaded as the service will load them
        except UplinkError as exc:
            # Not a refusal: this runs as the unit's ExecStartPre, and a gateway without its uplink
            # still commits every reading and texts an SOS; refusing would leave it with neither.
            print(f"gatewayd: warning: {exc}: the uplink stays in error until it loads", file=sys.stderr)
        print(f"gatewayd: {cfg.path}: configuration is valid ({len(cfg.devices)} devices)")
        return 0
    try:
        asyncio.run(Daemon(cfg).run())
    except GatewayError as exc:
        print(f"gatewayd: {exc}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        matched, rest = group.split(GatewayError)
        if rest is not None or matched is None:
            raise
        for err in matched.exceptions:
            print(f"gatewayd: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
