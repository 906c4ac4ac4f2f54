"""gatewayd: the daemon. One TaskGroup owns every long-running part; SIGTERM ends in an orderly stop.

Start order: outbox (open, integrity check) -> control socket -> uplink -> drivers -> READY=1.
Stop order (SIGTERM/SIGINT, safe to request twice): drivers and uplink are cancelled (the uplink says
``offline`` and disconnects), then the outbox commits what is pending and closes. Everything accepted is
committed before the process exits.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from drivers.base import DeviceStatus, Reading, SosPress, driver_class
from drivers.reconnect import ConnState
from gateway import messages
from gateway.care import CareDesk
from gateway.clock import Clock, ClockEvent, Timeline
from gateway.commands import Commands
from gateway.config import Config, load_config
from gateway.control import ControlServer
from gateway.devices import DeviceManager
from gateway.downlink import Downlink
from gateway.dsp.stream import WristStream
from gateway.errors import CommandRejected, ConfigError, GatewayError, UplinkError
from gateway.messages import Topics, rfc3339_ms
from gateway.outbox import Lane, Outbox
from gateway.pipeline import Pipeline
from gateway.registry import Registry
from gateway.sdnotify import Notifier, watchdog_interval_s
from gateway.uplink import Uplink

log = logging.getLogger(__name__)

VERSION = "0.1.0"


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
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self.notifier = Notifier()
        self.outbox: Outbox | None = None
        self.uplink: Uplink | None = None
        self.pipeline: Pipeline | None = None
        self.registry: Registry | None = None
        self.devices: DeviceManager | None = None
        self.care: CareDesk | None = None
        self._down_since: float | None = None

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
        self.cfg = Config(
            path=old.path,
            gateway=old.gateway,
            uplink=new.uplink,
            outbox=new.outbox,
            devices=new.devices,
            rules=old.rules,
        )
        log.info("configuration reloaded: %s", ", ".join(applied) or "nothing changed")
        return {"applied": applied, "restart_needed": restart}

    def _remember(self, reading: Reading) -> None:
        """Keep the device registry current: state changes and first sightings only, and after the
        reading has been handed to the outbox (a registry fsync never delays an SOS commit)."""
        if isinstance(reading, DeviceStatus):
            kind, state = "unknown", reading.state.value
        elif isinstance(reading, SosPress):
            kind, state = "sos-button", None
        else:
            return
        registry = self.registry
        if registry is not None:
            asyncio.get_running_loop().call_soon(
                functools.partial(registry.note_device, reading.device_id, kind, state=state, at=reading.captured_at)
            )

    def request_stop(self) -> None:
        """Ask for an orderly stop. Safe to call any number of times."""
        if not self._stop.is_set():
            log.info("stop requested")
            self._stop.set()

    async def _wait_stop(self) -> None:
        await self._stop.wait()
        self.notifier.send("STOPPING=1", "STATUS=stopping")
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
        async with Outbox(
            data_dir / "outbox.sqlite3",
            max_bytes=cfg.outbox.max_bytes,
            commit_interval_ms=cfg.outbox.commit_interval_ms,
            timebase=self.timebase,
            time_correction=lambda tc: messages.time_correction(topics, tc, time.time()),
        ) as outbox:
            self.outbox = outbox
            self.timebase.listeners.append(self._clock_event)
            if self.timebase.synchronised():  # a restart on a trusted clock: settle this boot's waiting messages
                outbox.request_correction(self.timebase.boot_id, time.time() - self.timebase.boot())
            self.pipeline = pipeline = Pipeline(
                topics, outbox, dsp_factory=self._dsp_factory, send_waveforms=cfg.uplink.send_waveforms
            )
            self.uplink = uplink = Uplink(
                cfg.uplink,
                cfg.gateway.id,
                outbox,
                status_body=self.status_body,
                historical_after_s=cfg.outbox.historical_after_s,
            )
            self.registry = registry = Registry(data_dir / "registry.json")
            self.devices = devices = DeviceManager(pipeline.sink, registry, cfg.devices, data_dir / "devices")
            devices.on_change.append(pipeline.add_device)
            devices.on_change.append(lambda dev_id, kind: registry.note_device(dev_id, kind))
            pipeline.on_reading(self._remember)
            self.care = care = CareDesk(cfg.rules, topics, pipeline.submit, registry, clock=self.clock)
            devices.on_change.append(care.add_device)
            devices.on_remove.append(care.remove_device)
            pipeline.on_reading(care.feed)
            pipeline.on_alert(care.sos)
            self.commands = commands = Commands(
                status=self.status, pipeline=pipeline, devices=devices, registry=registry, alerts=care, rules=care
            )
            commands.restore()
            pipeline.on_alert(
                lambda alert_id, dev, at: commands.drills.pressed(alert_id, dev, at) if pipeline.in_drill(at) else None
            )
            uplink.on_alert_delivered.append(lambda msg: commands.drills.delivered(_alert_id(msg.body), time.time()))
            uplink.downlink = Downlink(cfg.gateway.id, commands.downlink_handlers(), registry)
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
            async with ControlServer(cfg.gateway.socket_path, control):
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(outbox.run(), name="outbox")
                        tg.create_task(self.timebase.run(), name="clock")
                        tg.create_task(timeline.run(), name="timeline")
                        tg.create_task(uplink.run(), name="uplink")
                        devices.start_all(tg)
                        tg.create_task(self._watchdog(), name="watchdog")
                        tg.create_task(care.run(self._watch_inputs), name="care rules")
                        tg.create_task(self._wait_stop(), name="stop")
                        n = len(devices.drivers)
                        self.notifier.send("READY=1", f"STATUS=running, {n} devices")
                        log.info("gateway %s running with %d devices", cfg.gateway.id, n)
                except* _StopRequested:
                    pass
        timeline.save(force=True)
        if self.care is not None:
            self.care.save()
        if self.registry is not None:
            self.registry.close()
        log.info("gateway %s stopped; outbox closed with %d messages waiting", cfg.gateway.id, outbox.depth_total())
        self.notifier.close()

    def _clock_event(self, ev: ClockEvent) -> None:
        """The clock became trustworthy or stepped while trusted: correct this boot's waiting messages."""
        if ev.corrects and self.outbox is not None:
            self.outbox.request_correction(self.timebase.boot_id, ev.offset)
        if self.uplink is not None:
            self.uplink.request_status()

    def _dsp_factory(self, device_id: str) -> WristStream:
        """One DSP stream per device, with the SpO2 calibration its configuration names."""
        drv = self.devices.drivers.get(device_id) if self.devices is not None else None
        model = drv.spec.options.get("spo2_calibration") if drv is not None else None
        return WristStream(device_id, calibration=model if isinstance(model, str) else None)

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
        }

    async def status(self) -> dict[str, Any]:
        ob, up, pl = self.outbox, self.uplink, self.pipeline
        assert ob is not None and up is not None and pl is not None
        stats = await ob.stats()
        now = time.time()
        clk = self.timebase.status()
        drivers = self.devices.drivers if self.devices is not None else {}
        devices = []
        for info in pl.devices.values():
            drv = drivers.get(info.id)
            devices.append(
                {
                    "id": info.id,
                    "kind": info.kind,
                    "state": info.state,
                    "reason": info.reason,
                    "last_seen": rfc3339_ms(info.last_seen) if info.last_seen else None,
                    "readings": info.readings,
                    "counters": dict(drv.counters()) if drv is not None else info.counters,
                }
            )
        return {
            "gateway_id": self.cfg.gateway.id,
            "version": VERSION,
            "uptime_s": round(now - self.started_at, 1),
            "uplink": {
                "state": up.state.value,
                "broker": f"{self.cfg.uplink.host}:{self.cfg.uplink.port}",
                "tls": self.cfg.uplink.tls,
                "connected_since": rfc3339_ms(up.connected_since) if up.connected_since else None,
                "disconnected_since": rfc3339_ms(up.disconnected_since) if up.disconnected_since else None,
                "last_error": str(up.reconnector.last_error) if up.reconnector.last_error else None,
                "published": up.published,
                "acked": up.acked,
                "rejected": up.rejected,
            },
            "outbox": {
                "depth": stats.depth,
                "oldest_age_s": {
                    lane: (round(now - t, 1) if t is not None else None) for lane, t in stats.oldest_captured_at.items()
                },
                "bytes": stats.bytes,
                "max_bytes": stats.max_bytes,
                "last_seq": stats.next_seq - 1,
                "stream": stats.stream,
                "stream_first_seq": stats.stream_first_seq,
                "evicted_total": stats.evicted_total,
                "evicted_ranges": [list(r) for r in stats.evicted_ranges],
                "commit_failures": pl.counters.commit_failures,
            },
            "devices": devices,
            "care": self.care.status() if self.care is not None else None,
            "clock": {
                **clk,
                "synchronised_since": rfc3339_ms(clk["synchronised_since"]) if clk["synchronised_since"] else None,
                "last_step": clk["last_step"] and {**clk["last_step"], "at": rfc3339_ms(clk["last_step"]["at"])},
            },
        }


def _alert_id(body: bytes) -> str:
    try:
        value = json.loads(body).get("alert_id")
    except ValueError:
        return ""
    return value if isinstance(value, str) else ""


def configure_logging(level: str) -> None:
    """Only gatewayd's entry point configures handlers. Under systemd (JOURNAL_STREAM set) the journal
    adds time and unit, so lines carry only level and logger."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(logging.Formatter("<%(levelno)d>%(name)s: %(message)s"))
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
        for spec in cfg.devices:
            driver_class(spec.kind)
    except ConfigError as exc:
        print(f"gatewayd: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.check:
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
