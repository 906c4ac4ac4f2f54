"""Typed, validated options of a device kind.

Each kind declares its options as a frozen dataclass derived from :class:`DriverOptions`, every field
declared with :func:`option` (its default, unit, range, choices or check written once, here). Building
one validates every value, so a :class:`~drivers.base.DeviceSpec` that exists is one its driver accepts:
the configuration file, ``gatewayd --check``, ``gatewayctl config validate``, ``cmd/device-add``,
reload and the start-up of stored devices all build it, and a driver's constructor and ``run()`` never
raise for an option.

:meth:`DriverOptions.from_mapping` reads a TOML/JSON table (types checked, booleans kept apart from
numbers, unknown keys refused); :class:`OptionError` names the key, the value and what was expected.
:meth:`DriverOptions.refused_examples` gives, for each option that can be wrong while of the right type,
one such value: the conformance suite sends every one of them, so a new kind is checked for free.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
import zoneinfo
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self, TypeAlias

_MISSING: Any = dataclasses.MISSING


class OptionError(ValueError):
    """One option value is wrong: ``key``, ``value`` and ``expected`` make the one-line message."""

    def __init__(self, key: str, value: object, expected: str, *, missing: bool = False, unknown: bool = False):
        self.key, self.value, self.expected = key, value, expected
        self.missing, self.unknown = missing, unknown
        if missing:
            text = f"{key} is missing: expected {expected}"
        elif unknown:
            text = f"{key} is not a known key: expected one of {expected}"
        else:
            text = f"{key} = {value!r}: expected {expected}"
        super().__init__(text)


Check = Callable[[Any], str | None]
"""A value check: ``None`` when the value is fine, else what was expected (``"an IANA time zone"``)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """How one option is checked: a range (numbers), choices, a pattern or a check function, and one
    value of the right type the rule refuses (for the conformance suite; ``None``: none exists, e.g.
    a boolean)."""

    lo: float | None = None
    hi: float | None = None
    unit: str = ""
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    pattern: re.Pattern[str] | None = None
    describe: str = ""  # what the pattern or check expects, in words
    check: Check | None = None
    refused: Any = None

    def expected(self, kind: str) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(self.choice_list())
        if self.describe:
            return self.describe
        unit = f" {self.unit}" if self.unit else ""
        noun = "an integer" if kind == "int" else "a number"
        if self.lo is not None and self.hi is not None:
            return f"{noun} {self.lo:g}..{self.hi:g}{unit}"
        if self.lo is not None:
            return f"{noun} >= {self.lo:g}{unit}"
        if self.hi is not None:
            return f"{noun} <= {self.hi:g}{unit}"
        return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(kind, kind)

    def choice_list(self) -> tuple[str, ...]:
        c = self.choices
        return c() if callable(c) else (c or ())

    def problem(self, value: Any, kind: str) -> str | None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                return self.expected(kind)
            if self.lo is not None and value < self.lo:
                return self.expected(kind)
            if self.hi is not None and value > self.hi:
                return self.expected(kind)
        if self.choices is not None and value not in self.choice_list():
            return self.expected(kind)
        if self.pattern is not None and isinstance(value, str) and not self.pattern.fullmatch(value):
            return self.expected(kind)
        if self.check is not None:
            return self.check(value)
        return None

    def example(self, kind: str, default: Any) -> Any:
        """A value of the right type this rule refuses, or ``None``."""
        if self.refused is not None:
            return self.refused
        if kind in ("int", "float"):
            step: float = 1 if kind == "int" else 0.5
            if self.lo is not None:
                v = self.lo - step
                return int(v) if kind == "int" else float(v)
            if self.hi is not None:
                v = self.hi + step
                return int(v) if kind == "int" else float(v)
        if kind == "str" and self.choices is not None:
            return "no-such-choice"
        return None


def option(
    default: Any = _MISSING,
    *,
    lo: float | None = None,
    hi: float | None = None,
    unit: str = "",
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None,
    pattern: str | None = None,
    describe: str = "",
    check: Check | None = None,
    refused: Any = None,
    doc: str = "",
) -> Any:
    """A field of an options dataclass with its rule (``default`` omitted: the key is required)."""
    rule = Rule(
        lo=lo,
        hi=hi,
        unit=unit,
        choices=choices,
        pattern=re.compile(pattern) if pattern is not None else None,
        describe=describe,
        check=check,
        refused=refused,
    )
    meta = {"rule": rule, "doc": doc}
    if isinstance(default, (dict, list)):
        frozen = dict(default) if isinstance(default, dict) else tuple(default)
        return field(default_factory=lambda: frozen.copy() if isinstance(frozen, dict) else frozen, metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------
# Checks shared by several kinds


def valid_zone(value: Any) -> str | None:
    """An IANA time zone name, or "" for the gateway's own zone."""
    if value == "":
        return None
    try:
        zoneinfo.ZoneInfo(str(value))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return 'an IANA time zone such as "Asia/Shanghai", or "" for the gateway\'s'
    return None


def absolute_path_or_empty(value: Any) -> str | None:
    text = str(value)
    if text == "":
        return None
    if not text.startswith("/") or len(text) > 4096 or any(ord(c) < 32 for c in text):
        return "an absolute path, or empty"
    return None


DEVICE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
"""Device ids (and gateway and person ids): they become MQTT topic levels and file names."""

_TYPE_NAMES = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}


def _kind_of(tp: Any) -> str:
    if tp is bool:
        return "bool"
    if tp is int:
        return "int"
    if tp is float:
        return "float"
    if tp is str:
        return "str"
    origin = typing.get_origin(tp)
    if origin in (dict, Mapping) or tp is dict:
        return "table"
    raise TypeError(f"unsupported option type {tp!r}")


@dataclass(frozen=True)  # no slots: frozen+slots subclasses break super() on 3.11
class DriverOptions:
    """Base of every kind's options. Subclasses add fields made with :func:`option` and may override
    :meth:`check_together` for rules that span several fields."""

    _kinds: ClassVar[dict[type, dict[str, str]]] = {}

    def __post_init__(self) -> None:
        kinds = self.field_kinds()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = kinds[f.name]
            if not _type_ok(value, kind):
                raise OptionError(f.name, value, _expected_type(f, kind))
            if kind == "float" and isinstance(value, int):
                try:
                    value = float(value)
                except OverflowError:  # 10**400: a clear refusal, not an internal error of the command
                    digits = f"an integer of {len(str(abs(value)))} digits"
                    raise OptionError(f.name, digits, "a number a float can hold (up to about 1.8e308)") from None
                object.__setattr__(self, f.name, value)
            rule: Rule | None = f.metadata.get("rule")
            if rule is None:
                continue
            if kind == "table":
                for k, v in value.items():
                    if not isinstance(k, str) or not isinstance(v, str):
                        raise OptionError(f.name, value, rule.describe or "a table of strings")
            problem = rule.problem(value, kind)
            if problem is not None:
                raise OptionError(f.name, value, problem)
        self.check_together()

    def check_together(self) -> None:
        """Rules across fields; raise :class:`OptionError` naming the key to change."""

    def claims(self) -> dict[str, str]:
        """What the device holds for itself, that no other device may also name: ``{claim: option
        key}`` (a serial port, a BLE address). Two devices on one serial port fight for its exclusive
        lock after every replug, and one writes its protocol to the other's device (an SOS receiver)."""
        return {}

    # -- reading a table ---------------------------------------------------------------------------

    @classmethod
    def field_kinds(cls) -> dict[str, str]:
        kinds = DriverOptions._kinds.get(cls)
        if kinds is None:
            hints = typing.get_type_hints(cls)
            kinds = {f.name: _kind_of(hints[f.name]) for f in dataclasses.fields(cls)}
            DriverOptions._kinds[cls] = kinds
        return kinds

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Self:
        """Options from a configuration table; every key checked, unknown keys refused."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in raw:
            if key not in names:
                raise OptionError(key, raw[key], ", ".join(sorted(names)), unknown=True)
        kinds = cls.field_kinds()
        for f in dataclasses.fields(cls):
            if f.name not in raw and f.default is _MISSING and f.default_factory is _MISSING:
                raise OptionError(f.name, None, _expected(f, kinds[f.name]), missing=True)
        try:
            return cls(**dict(raw))
        except TypeError as exc:  # a dataclass signature mismatch the checks above did not catch
            raise OptionError("options", dict(raw), f"valid options ({exc})") from None

    def to_mapping(self) -> dict[str, Any]:
        """The options as a configuration table (for the registry of devices added at run time)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = dict(value) if isinstance(value, Mapping) else value
        return out

    @classmethod
    def refused_examples(cls) -> Iterator[tuple[str, Any]]:
        """For each option that can be wrong while of the right type: ``(key, a value it refuses)``."""
        kinds = cls.field_kinds()
        for f in dataclasses.fields(cls):
            rule: Rule | None = f.metadata.get("rule")
            if rule is None:
                continue
            default = f.default if f.default is not _MISSING else None
            example = rule.example(kinds[f.name], default)
            if example is not None:
                yield f.name, example

    @classmethod
    def describe(cls) -> Iterator[tuple[str, str, Any, str]]:
        """``(key, expected, default, doc)`` for each option, for docs and ``gatewayctl``."""
        kinds = cls.field_kinds()
        for f in dataclasses.fields(cls):
            if f.default is not _MISSING:
                default: Any = f.default
            elif f.default_factory is not _MISSING:
                default = f.default_factory()  # type: ignore[operator]
            else:
                default = None
            yield f.name, _expected(f, kinds[f.name]), default, str(f.metadata.get("doc", ""))


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, int)
    if kind == "float":
        return isinstance(value, (int, float))
    if kind == "str":
        return isinstance(value, str)
    return isinstance(value, Mapping)


def _expected_type(f: dataclasses.Field[Any], kind: str) -> str:
    """What a value of the wrong type was expected to be: the type, and the rule when it says more."""
    rule: Rule | None = f.metadata.get("rule")
    if kind == "table":
        return rule.describe if rule is not None and rule.describe else "a table"
    name = _TYPE_NAMES[kind]
    if rule is None:
        return name
    detail = rule.expected(kind)
    return detail if detail.startswith(name) else f"{name} ({detail})"


def _expected(f: dataclasses.Field[Any], kind: str) -> str:
    rule: Rule | None = f.metadata.get("rule")
    if rule is None:
        return _TYPE_NAMES.get(kind, "a table")
    return rule.expected(kind) if kind != "table" else (rule.describe or "a table")


def timezone_option() -> Any:
    """``timezone``: the IANA zone of a device's own clock ("" = the gateway's)."""
    return option(
        "",
        check=valid_zone,
        describe='an IANA time zone, or "" for the gateway\'s',
        refused="Mars/Base",
        doc="the zone of the device's own clock",
    )


def state_path_option() -> Any:
    """``state_path``: where a driver keeps its state; "" = the gateway's data directory (the usual)."""
    return option(
        "",
        check=absolute_path_or_empty,
        describe="an absolute path, or empty",
        refused="relative/state.json",
        doc="set by the gateway (its data directory)",
    )


# ---------------------------------------------------------------------------------------------
# Buttons: what a press asks for, and how a button was pressed

ButtonRole: TypeAlias = Literal["sos", "call"]
"""What a press asks for: ``sos`` an emergency (the care centre; critical), ``call`` the "health
butler" (the service centre's staff phone back for an everyday need; not an emergency)."""

BUTTON_ROLES: tuple[ButtonRole, ...] = ("sos", "call")

PRESS_PATTERNS: tuple[str, ...] = (
    "press",
    "double_press",
    "triple_press",
    "long_press",
    "long_double_press",
    "long_triple_press",
    "hold_press",
)
"""How a button was pressed, for devices that report it (BTHome's button events use these names)."""


def _roles_table(patterns: tuple[str, ...]) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, dict):
            return "a table"
        for pattern, role in value.items():
            if pattern not in patterns:
                return f"press patterns among {', '.join(patterns)} (not {pattern!r})"
            if role not in BUTTON_ROLES:
                return f"roles {' or '.join(BUTTON_ROLES)} (not {role!r} for {pattern})"
        return None

    return check


def press_roles_option(patterns: tuple[str, ...] = PRESS_PATTERNS) -> Any:
    """``roles``: press pattern -> role, e.g. ``{ long_press = "sos", press = "call" }``.

    A role is never guessed: a pattern the table does not list is an SOS (the safe side), so an empty
    table (the default) makes every press an SOS."""
    return option(
        {},
        check=_roles_table(patterns),
        describe='a table of press pattern -> "sos" or "call"',
        refused={"press": "panic"},
        doc="press pattern -> role (sos or call); a pattern not listed is an SOS",
    )


def role_of(roles: Mapping[str, str], pattern: str | None) -> ButtonRole:
    """The role of a press: the table's, or ``sos`` for a pattern it does not list (or no pattern)."""
    return "call" if pattern is not None and roles.get(pattern) == "call" else "sos"
