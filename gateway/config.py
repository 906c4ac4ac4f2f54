"""Typed configuration, validated in one place, every default and unit written down once.

One TOML file (default ``/etc/homecare-gateway/gateway.toml``); ``config/gateway.example.toml``
documents every key. :func:`load_config` raises :class:`~gateway.errors.ConfigError` whose message is
one line naming the file, the key, the value and what was expected.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.base import DeviceSpec, UnknownDeviceKind, all_kinds, driver_class
from drivers.options import DEVICE_ID_RE, OptionError, valid_zone
from drivers.serial.at import NUMBER_RE
from drivers.serial.modem import ModemOptions
from gateway.errors import ConfigError
from gateway.rules import DEFAULTS_BY_ID, RuleSpec, RuleSpecError, WatchSettings, rules_from_list

DEFAULT_CONFIG_PATH = Path("/etc/homecare-gateway/gateway.toml")
ID_RE = re.compile("^" + DEVICE_ID_RE.pattern + "$")
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class GatewaySection:
    id: str
    data_dir: Path = Path("/var/lib/homecare-gateway")
    # Unix socket of the local control API (gatewayctl).
    control_socket: Path | None = None  # default: <data_dir>/control.sock

    @property
    def socket_path(self) -> Path:
        return self.control_socket or self.data_dir / "control.sock"


@dataclass(frozen=True, slots=True)
class UplinkSection:
    host: str
    port: int = 8883  # 8883 with TLS, 1883 without (applied when `port` is absent)
    tls: bool = True
    ca_file: Path | None = None  # None: the system's trust store
    cert_file: Path | None = None  # client certificate for mutual TLS
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None  # a file readable by the service only
    keepalive_s: int = 60
    protocol: str = "5"  # "5" or "3.1.1"
    client_id: str | None = None  # default: the gateway id
    inflight_window: int = 200  # messages awaiting PUBACK at most
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 120.0
    topic_prefix: str = "homecare/v1"
    # Also send raw waveforms (PPG/pleth blocks) on bulk/{device_id}, the lowest lane, evicted first.
    send_waveforms: bool = False


@dataclass(frozen=True, slots=True)
class OutboxSection:
    max_bytes: int = 256 * MIB
    commit_interval_ms: int = 50  # group commit: accepted readings are on disk within this window
    historical_after_s: float = 60.0  # sent later than this after capture => "historical": true


@dataclass(frozen=True, slots=True)
class DownlinkSection:
    # A command whose sent_at is older than this by a synchronised clock is refused as "expired".
    max_age_s: float = 300.0
    # Token bucket against command floods: this many at once, refilled at rate_per_minute.
    rate_burst: int = 20
    rate_per_minute: float = 20.0


@dataclass(frozen=True, slots=True)
class PersonSection:
    """One person of the home: their devices, which of them are worn, and their own rules (``None``:
    the default rules of gateway/rules/defaults.py). See docs/rules.md."""

    id: str
    devices: tuple[str, ...] = ()
    worn: tuple[str, ...] = ()
    rules: tuple[RuleSpec, ...] | None = None
    buttons: tuple[str, ...] = ()  # those of ``devices`` that are buttons of a receiver (Driver.buttons_of)


@dataclass(frozen=True, slots=True)
class RulesSection:
    """``[rules]``: the watch settings (every default in :class:`gateway.rules.WatchSettings`) and the
    people with their devices and rules (``[[rules.person]]``)."""

    watch: WatchSettings = field(default_factory=WatchSettings)
    persons: tuple[PersonSection, ...] = ()
    tick_s: float = 5.0  # how often the watch limits and reminders are evaluated

    def person_of(self, device_id: str) -> PersonSection | None:
        for p in self.persons:
            if device_id in p.devices:
                return p
        return None


@dataclass(frozen=True, slots=True)
class AlarmSection:
    """``[alarm]``: the SMS fallback of SOS alerts (gateway/alarm.py, docs/alarm-fallback.md). Off
    (``enabled`` false) without the section; ``modem`` is the ``[alarm.modem]`` table."""

    enabled: bool = False
    sms_after_s: float = 30.0  # an SOS without PUBACK this long after the press goes by SMS
    calls: bool = False  # call requests (presses of "call" buttons) go by SMS too, the same way
    care_centre: tuple[str, ...] = ()  # numbers, in the order they are tried, before the guardians
    guardians: tuple[str, ...] = ()
    language: str = "zh"  # the shipped template: "zh" or "en"
    template: str | None = None  # own text with {drill}{person}{button}{time}{gateway}
    names: tuple[tuple[str, str], ...] = ()  # person or button id -> the name the text uses
    person: str = ""  # the name of the person when no [[rules.person]] owns the button
    timezone: str = ""  # of the time in the text ("" = the gateway's)
    max_attempts: int = 3  # SMS the network accepted without a delivery report, per recipient
    retry_base_s: float = 30.0
    retry_cap_s: float = 600.0
    retry_for_s: float = 6 * 3600.0  # stop trying a recipient this long after the press
    report_timeout_s: float = 300.0  # an accepted SMS without delivery report by then counts as failed
    unavailable_after_s: float = 3600.0  # modem_unavailable watch alert after this long unable to send
    modem: ModemOptions | None = None

    @property
    def recipients(self) -> tuple[str, ...]:
        return self.care_centre + self.guardians


@dataclass(frozen=True, slots=True)
class SummarySection:
    """``[summary]``: the daily summary per person (gateway/summary.py, docs/mqtt-contract.md "Daily
    summary"). On by default: the day is the 24 hours ending at ``at`` local time, labelled with the
    local date of its last moment."""

    enabled: bool = True
    at: dt.time = dt.time(20, 0)  # local time of day the summary is published
    timezone: str = ""  # IANA name of the home's zone ("" = the gateway's)
    retention_days: int = 14  # days of aggregates kept in summary.sqlite3 (bounded size)


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    gateway: GatewaySection
    uplink: UplinkSection
    outbox: OutboxSection = field(default_factory=OutboxSection)
    devices: tuple[DeviceSpec, ...] = ()
    rules: RulesSection = field(default_factory=RulesSection)
    downlink: DownlinkSection = field(default_factory=DownlinkSection)
    alarm: AlarmSection = field(default_factory=AlarmSection)
    summary: SummarySection = field(default_factory=SummarySection)


# ---------------------------------------------------------------------------------------------
# validation helpers


class _Reader:
    """Reads one table, checking types; every error names file, key, value and what was expected."""

    def __init__(self, file: Path, prefix: str, table: Mapping[str, Any]) -> None:
        self.file, self.prefix, self.table = file, prefix, table
        self.used: set[str] = set()

    def fail(self, key: str, value: object, expected: str) -> ConfigError:
        where = f"{self.prefix}.{key}" if self.prefix else key
        return ConfigError(f"{self.file}: {where} = {value!r}: expected {expected}", key=key)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any, expected: str) -> Any:
        self.used.add(key)
        if key not in self.table:
            if default is _REQUIRED:
                where = f"{self.prefix}.{key}" if self.prefix else key
                raise ConfigError(f"{self.file}: {where} is missing: expected {expected}", key=key)
            return default
        value = self.table[key]
        # TOML booleans are ints in Python: keep them apart.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(key, value, expected)
        if not isinstance(value, kind):
            raise self.fail(key, value, expected)
        return value

    def str_(self, key: str, default: Any = None, pattern: re.Pattern[str] | None = None) -> Any:
        value = self.get(key, str, default, "a string" if pattern is None else f"text matching {pattern.pattern}")
        if isinstance(value, str) and pattern is not None and not pattern.fullmatch(value):
            raise self.fail(key, value, f"text matching {pattern.pattern}")
        return value

    def int_(self, key: str, default: Any, lo: int, hi: int, unit: str = "") -> Any:
        unit_text = f" {unit}" if unit else ""
        value = self.get(key, int, default, f"an integer {lo}..{hi}{unit_text}")
        if isinstance(value, int) and not lo <= value <= hi:
            raise self.fail(key, value, f"an integer {lo}..{hi}{unit_text}")
        return value

    def float_(self, key: str, default: Any, lo: float, hi: float, unit: str) -> Any:
        value = self.get(key, (int, float), default, f"a number {lo:g}..{hi:g} {unit}")
        if isinstance(value, (int, float)) and not lo <= value <= hi:
            raise self.fail(key, value, f"a number {lo:g}..{hi:g} {unit}")
        return float(value) if value is not None else None

    def bool_(self, key: str, default: Any) -> Any:
        return self.get(key, bool, default, "true or false")

    def zone(self, key: str) -> str:
        """An IANA time zone name, or "" for the gateway's (drivers.options.valid_zone)."""
        value = self.str_(key, "")
        problem = valid_zone(value)
        if problem:
            raise self.fail(key, value, problem)
        return str(value)

    def path(self, key: str, default: Any = None, must_exist: bool = False) -> Path | None:
        value = self.get(key, str, default, "a file path")
        if value is None:
            return None
        path = Path(value)
        if not path.is_absolute():
            path = (self.file.parent / path).resolve()
        if must_exist and not path.is_file():
            raise self.fail(key, value, "an existing readable file")
        return path

    def finish(self) -> None:
        for key in self.table:
            if key not in self.used:
                where = f"{self.prefix}.{key}" if self.prefix else key
                known = ", ".join(sorted(self.used))
                raise ConfigError(f"{self.file}: {where} is not a known key: expected one of {known}")


_REQUIRED = object()


def _table(file: Path, doc: Mapping[str, Any], name: str, required: bool) -> Mapping[str, Any]:
    value = doc.get(name)
    if value is None:
        if required:
            raise ConfigError(f"{file}: [{name}] is missing: expected a table")
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{file}: {name} = {value!r}: expected a table [{name}]")
    return value


def parse_config(doc: Mapping[str, Any], file: Path) -> Config:
    top = _Reader(file, "", doc)
    for name in ("gateway", "uplink", "outbox", "devices", "rules", "downlink", "alarm", "summary"):
        top.used.add(name)
    top.finish()

    g = _Reader(file, "gateway", _table(file, doc, "gateway", True))
    gw = GatewaySection(
        id=g.str_("id", _REQUIRED, ID_RE),
        data_dir=Path(g.str_("data_dir", "/var/lib/homecare-gateway")),
        control_socket=g.path("control_socket"),
    )
    g.finish()

    u = _Reader(file, "uplink", _table(file, doc, "uplink", True))
    tls = u.bool_("tls", True)
    protocol = u.str_("protocol", "5")
    if protocol not in ("5", "3.1.1"):
        raise u.fail("protocol", protocol, '"5" or "3.1.1"')
    uplink = UplinkSection(
        host=u.str_("host", _REQUIRED),
        port=u.int_("port", 8883 if tls else 1883, 1, 65535),
        tls=tls,
        ca_file=u.path("ca_file", must_exist=True),
        cert_file=u.path("cert_file", must_exist=True),
        key_file=u.path("key_file", must_exist=True),
        username=u.str_("username"),
        password_file=u.path("password_file", must_exist=True),
        keepalive_s=u.int_("keepalive", 60, 5, 3600, "seconds"),
        protocol=protocol,
        client_id=u.str_("client_id"),
        inflight_window=u.int_("inflight_window", 200, 1, 65535, "messages"),
        backoff_base_s=u.float_("backoff_base_s", 1.0, 0.01, 600, "seconds"),
        backoff_cap_s=u.float_("backoff_cap_s", 120.0, 0.1, 3600, "seconds"),
        topic_prefix=u.str_("topic_prefix", "homecare/v1", re.compile(r"^[A-Za-z0-9_/.-]+[^/]$")),
        send_waveforms=u.bool_("send_waveforms", False),
    )
    if (uplink.cert_file is None) != (uplink.key_file is None):
        key = "cert_file" if uplink.cert_file is None else "key_file"
        raise u.fail(key, None, "both cert_file and key_file for mutual TLS, or neither")
    if not tls and (uplink.ca_file or uplink.cert_file):
        raise u.fail("tls", False, "true when ca_file/cert_file are set")
    u.finish()

    o = _Reader(file, "outbox", _table(file, doc, "outbox", False))
    outbox = OutboxSection(
        max_bytes=o.int_("max_bytes", 256 * MIB, MIB, 1 << 40, "bytes"),
        commit_interval_ms=o.int_("commit_interval_ms", 50, 1, 50, "ms"),
        historical_after_s=o.float_("historical_after_s", 60.0, 1, 86400, "seconds"),
    )
    o.finish()

    raw_devices = doc.get("devices", [])
    if not isinstance(raw_devices, list):
        raise ConfigError(f"{file}: devices = {raw_devices!r}: expected an array of tables [[devices]]")
    devices = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_devices):
        if not isinstance(raw, dict):
            raise ConfigError(f"{file}: devices[{i}] = {raw!r}: expected a table [[devices]]")
        devices.append(parse_device(file, i, raw, seen))
    buttons = {b for spec in devices for b in driver_class(spec.kind).buttons_of(spec.options)} - seen
    rules = parse_rules(file, _table(file, doc, "rules", False), seen, buttons)
    dl = _Reader(file, "downlink", _table(file, doc, "downlink", False))
    downlink = DownlinkSection(
        max_age_s=dl.float_("max_age_s", 300.0, 10, 86400, "seconds"),
        rate_burst=dl.int_("rate_burst", 20, 1, 10000, "commands"),
        rate_per_minute=dl.float_("rate_per_minute", 20.0, 0.1, 100000, "commands per minute"),
    )
    dl.finish()
    config = Config(
        path=file,
        gateway=gw,
        uplink=uplink,
        outbox=outbox,
        devices=tuple(devices),
        rules=rules,
        downlink=downlink,
        alarm=parse_alarm(file, doc),
        summary=parse_summary(file, _table(file, doc, "summary", False)),
    )
    _check_claims(file, devices, config.alarm)
    return config


def _check_claims(file: Path, devices: list[DeviceSpec], alarm: AlarmSection) -> None:
    """No two devices (nor a device and the SMS modem) on one serial port or BLE address."""
    held = claims_of((), alarm)
    for i, spec in enumerate(devices):
        clash = claim_conflict(spec, held)
        if clash is not None:
            key, claim, owner = clash
            raise ConfigError(
                f"{file}: devices[{i}] ({spec.id}).{key} = {getattr(spec.options, key)!r}: expected one no other "
                f"device uses ({claim} is {owner}'s)",
                key=key,
            )
        held.update(claims_of((spec,), None))


def claims_of(specs: tuple[DeviceSpec, ...] | list[DeviceSpec], alarm: AlarmSection | None) -> dict[str, str]:
    """What the devices and the SMS modem hold (:meth:`drivers.options.DriverOptions.claims`): claim ->
    who holds it ("device rfx", "the SMS modem")."""
    held = {claim: f"device {spec.id}" for spec in specs for claim in spec.options.claims()}
    if alarm is not None and alarm.modem is not None:
        held.update({claim: "the SMS modem" for claim in alarm.modem.claims()})
    return held


def claim_conflict(spec: DeviceSpec, held: Mapping[str, str]) -> tuple[str, str, str] | None:
    """(option key, claim, its holder) of the first thing ``spec`` would take that is held already."""
    for claim, key in spec.options.claims().items():
        owner = held.get(claim)
        if owner is not None and owner != f"device {spec.id}":
            return key, claim, owner
    return None


def parse_summary(file: Path, table: Mapping[str, Any]) -> SummarySection:
    """``[summary]`` (gateway/summary.py)."""
    s = _Reader(file, "summary", table)
    at = s.get("at", (str, dt.time), "20:00", "a local time of day such as 20:00")
    try:
        at_time = at if isinstance(at, dt.time) else dt.time.fromisoformat(at)
    except ValueError:
        raise s.fail("at", at, "a local time of day such as 20:00") from None
    if at_time.tzinfo is not None or at_time.microsecond:
        raise s.fail("at", at, "a local time of day such as 20:00 (no zone, whole seconds)")
    section = SummarySection(
        enabled=s.bool_("enabled", True),
        at=at_time,
        timezone=s.zone("timezone"),
        retention_days=s.int_("retention_days", 14, 2, 366, "days"),
    )
    s.finish()
    return section


def parse_alarm(file: Path, doc: Mapping[str, Any]) -> AlarmSection:
    """``[alarm]`` and ``[alarm.modem]`` (docs/alarm-fallback.md)."""
    if "alarm" not in doc:
        return AlarmSection()
    a = _Reader(file, "alarm", _table(file, doc, "alarm", False))
    numbers: dict[str, tuple[str, ...]] = {}
    for key in ("care_centre", "guardians"):
        value = a.get(key, list, [], "an array of phone numbers")
        for number in value:
            if not isinstance(number, str) or not NUMBER_RE.fullmatch(number):
                # the number itself stays out of the message: it is personal data
                raise a.fail(key, "[...]", "an array of phone numbers (digits with an optional leading +)")
        numbers[key] = tuple(value)
    language = a.str_("language", "zh")
    if language not in ("zh", "en"):
        raise a.fail("language", language, '"zh" or "en"')
    # Names of people stay out of the messages (personal data): the key at fault is named instead.
    names = a.get("names", object, {}, "a table of id = name")
    if not isinstance(names, dict):
        raise a.fail("names", "[...]", "a table of id = name")
    for key, name in names.items():
        if not isinstance(name, str):
            raise a.fail(f"names.{key}", "[...]", "a name (a string)")
    template = a.str_("template")
    if template is not None:
        from gateway.alarm import check_template

        problem = check_template(template)
        if problem:
            raise a.fail("template", "[...]", problem)
    timezone = a.zone("timezone")
    section = AlarmSection(
        enabled=a.bool_("enabled", True),
        sms_after_s=a.float_("sms_after_s", 30.0, 0, 3600, "seconds"),
        calls=a.bool_("calls", False),
        care_centre=numbers["care_centre"],
        guardians=numbers["guardians"],
        language=language,
        template=template,
        names=tuple(sorted((str(k), str(v)) for k, v in names.items())),
        person=a.str_("person", ""),
        timezone=timezone,
        max_attempts=a.int_("max_attempts", 3, 1, 20, "attempts"),
        retry_base_s=a.float_("retry_base_s", 30.0, 0.1, 3600, "seconds"),
        retry_cap_s=a.float_("retry_cap_s", 600.0, 0.1, 86400, "seconds"),
        retry_for_s=a.float_("retry_for_s", 6 * 3600.0, 1, 7 * 86400, "seconds"),
        report_timeout_s=a.float_("report_timeout_s", 300.0, 0.1, 86400, "seconds"),
        unavailable_after_s=a.float_("unavailable_after_s", 3600.0, 1, 7 * 86400, "seconds"),
        modem=_parse_modem(file, a),
    )
    a.finish()
    if section.enabled and not section.recipients:
        raise a.fail("care_centre", [], "at least one number in care_centre or guardians")
    if section.enabled and section.modem is None:
        raise ConfigError(f"{file}: [alarm.modem] is missing: expected a table with port (or usb_vid + usb_pid)")
    return section


def _parse_modem(file: Path, a: _Reader) -> ModemOptions | None:
    """``[alarm.modem]``: read by the same rules as a device's options (drivers.options)."""
    raw = a.get("modem", dict, None, "a table [alarm.modem]")
    if raw is None:
        return None
    table = dict(raw)
    m = _Reader(file, "alarm.modem", table)
    if "pin_file" in table:
        pin = m.path("pin_file", must_exist=True)  # relative to the configuration file
        table["pin_file"] = str(pin) if pin is not None else ""
    try:
        return ModemOptions.from_mapping(table)
    except OptionError as exc:
        raise ConfigError(f"{file}: alarm.modem.{exc}", key=exc.key) from None


_WATCH_FIELDS = {f for f in WatchSettings.__dataclass_fields__}


def _time_of_day(file: Path, key: str, value: object) -> dt.time:
    if isinstance(value, dt.time):
        return value
    if isinstance(value, str):
        try:
            return dt.time.fromisoformat(value)
        except ValueError:
            pass
    raise ConfigError(f"{file}: rules.{key} = {value!r}: expected a local time of day such as 07:00:00")


def parse_rules(
    file: Path, table: Mapping[str, Any], device_ids: set[str], button_ids: set[str] | None = None
) -> RulesSection:
    """``[rules]``; ``device_ids``: the configured devices; ``button_ids``: the buttons receivers hear
    for others (a radio receiver's table), which a person's ``devices`` may list too."""
    button_ids = button_ids or set()
    """``[rules]`` and ``[[rules.person]]`` (docs/rules.md); the rule engine's own validation
    (:class:`RuleSpecError`) becomes a one-line :class:`ConfigError` naming the key."""
    r = _Reader(file, "rules", table)
    tick_s = r.float_("tick_s", 5.0, 0.1, 60, "seconds")
    raw_persons = r.get("person", list, [], "an array of tables [[rules.person]]")
    watch_args: dict[str, Any] = {}
    for key, value in table.items():
        if key in ("tick_s", "person"):
            continue
        if key not in _WATCH_FIELDS:
            known = ", ".join(sorted(_WATCH_FIELDS | {"tick_s", "person"}))
            raise ConfigError(f"{file}: rules.{key} is not a known key: expected one of {known}")
        r.used.add(key)
        watch_args[key] = _time_of_day(file, key, value) if key in ("day_start", "day_end") else value
    r.finish()
    try:
        watch = WatchSettings(**watch_args)
    except RuleSpecError as exc:
        raise ConfigError(f"{file}: [rules] {exc.reason}") from None
    except TypeError as exc:
        raise ConfigError(f"{file}: [rules]: {exc}") from None
    persons: list[PersonSection] = []
    owner: dict[str, str] = {}
    for i, raw in enumerate(raw_persons):
        if not isinstance(raw, dict):
            raise ConfigError(f"{file}: rules.person[{i}] = {raw!r}: expected a table [[rules.person]]")
        p = _Reader(file, f"rules.person[{i}]", raw)
        pid = p.str_("id", _REQUIRED, ID_RE)
        p.prefix = f"rules.person[{i}] ({pid})"
        devs = _id_list(p, "devices")
        worn = _id_list(p, "worn")
        for d in devs:
            if d not in device_ids and d not in button_ids:
                raise p.fail("devices", d, "ids of configured [[devices]] or of the buttons their receivers hear")
            if d in owner:
                raise p.fail("devices", d, f"a device of one person only (it is {owner[d]}'s)")
            owner[d] = pid
        for d in worn:
            if d not in devs:
                raise p.fail("worn", d, "ids listed in this person's devices")
        raw_rules = p.get("rule", list, None, "an array of tables [[rules.person.rule]]")
        p.finish()
        specs: tuple[RuleSpec, ...] | None = None
        if raw_rules is not None:
            try:
                specs = rules_from_list(raw_rules, bases=DEFAULTS_BY_ID)
            except RuleSpecError as exc:
                raise ConfigError(f"{file}: rules.person[{i}] ({pid}).rule: {exc.reason}") from None
        persons.append(PersonSection(pid, devs, worn, specs, tuple(d for d in devs if d in button_ids)))
    if len({p.id for p in persons}) != len(persons):
        raise ConfigError(f"{file}: rules.person: two persons with the same id: expected unique ids")
    return RulesSection(watch=watch, persons=tuple(persons), tick_s=tick_s)


def _id_list(r: _Reader, key: str) -> tuple[str, ...]:
    value = r.get(key, list, [], "an array of device ids")
    if not all(isinstance(v, str) for v in value):
        raise r.fail(key, value, "an array of device ids")
    return tuple(value)


def parse_device(file: Path, i: int, raw: Mapping[str, Any], seen: set[str], prefix: str | None = None) -> DeviceSpec:
    """One [[devices]] table (also used for devices added at run time, with ``prefix`` "": errors
    then name the bare key). Every option is checked by the kind's options dataclass."""
    d = _Reader(file, f"devices[{i}]" if prefix is None else prefix, raw)
    dev_id = d.str_("id", _REQUIRED, ID_RE)
    if dev_id in seen:
        raise d.fail("id", dev_id, "an id not used by another device")
    seen.add(dev_id)
    if prefix is None:
        d.prefix = f"devices[{i}] ({dev_id})"
    kind = d.str_("kind", _REQUIRED)
    try:
        cls = driver_class(kind)
    except UnknownDeviceKind:
        raise d.fail("kind", kind, "one of " + ", ".join(sorted(all_kinds()))) from None
    except ImportError as exc:
        raise d.fail("kind", kind, f"a driver whose libraries are installed ({exc})") from None
    transport = d.str_("transport", cls.transport)
    if transport != cls.transport:
        raise d.fail("transport", transport, f'"{cls.transport}" for kind {kind}')
    raw_options = {k: v for k, v in raw.items() if k not in ("id", "kind", "transport")}
    try:
        options = cls.Options.from_mapping(raw_options)
    except OptionError as exc:
        where = f"{d.prefix}.{exc}" if d.prefix else str(exc)
        raise ConfigError(f"{file}: {where}", key=exc.key) from None
    return DeviceSpec(id=dev_id, kind=kind, transport=transport, options=options)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    file = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        with open(file, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such file (use --config to name another)") from None
    except PermissionError:
        raise ConfigError(f"{file}: not readable by this user") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    return parse_config(doc, file)


def read_secret(path: Path) -> str:
    """A password from a file, stripped of its trailing newline."""
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read secret: {exc.strerror}") from None
