"""The driver contract's options: every registered kind declares them as a typed dataclass that refuses,
at construction, every value its driver could not run with (drivers.options)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from drivers.base import DRIVERS, DeviceSpec, Driver, driver_class
from drivers.options import DriverOptions, OptionError, press_roles_option, role_of
from gateway.config import ConfigError, load_config
from gateway.daemon import main as gatewayd_main

KINDS = sorted(DRIVERS)
# A value of the right shape for each kind's required options (a BLE address...).
REQUIRED = {"address": "C0:FF:EE:00:00:01"}
BASE_CONFIG = '[gateway]\nid = "gw-t"\ndata_dir = "{data}"\n[uplink]\nhost = "127.0.0.1"\ntls = false\n'


def minimal(kind: str) -> dict[str, Any]:
    """The smallest table the kind accepts."""
    cls = driver_class(kind)
    table: dict[str, Any] = {}
    for f in dataclasses.fields(cls.Options):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            table[f.name] = REQUIRED[f.name]
    if cls.transport == "serial":
        table["port"] = "/dev/serial/by-id/usb-test-if00"
    return table


def refused_cases() -> list[tuple[str, str, Any]]:
    cases = []
    for kind in KINDS:
        for key, value in driver_class(kind).Options.refused_examples():
            cases.append((kind, key, value))
    return cases


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_declares_typed_options_and_facts(kind: str) -> None:
    cls = driver_class(kind)
    assert issubclass(cls, Driver) and cls.kind == kind
    assert cls.Options is not DriverOptions, f"{kind} has no options dataclass of its own"
    assert dataclasses.is_dataclass(cls.Options) and cls.Options.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert cls.summary, f"{kind} has no summary for scan results and docs"
    opts = cls.Options.from_mapping(minimal(kind))
    assert cls.Options.from_mapping(opts.to_mapping()) == opts, "options survive the registry's round trip"
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.x = 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(("kind", "key", "value"), refused_cases())
def test_every_option_refuses_a_bad_value_of_the_right_type(kind: str, key: str, value: Any) -> None:
    cls = driver_class(kind)
    with pytest.raises(OptionError) as info:
        cls.Options.from_mapping({**minimal(kind), key: value})
    assert info.value.key == key and repr(value) in str(info.value) and "expected" in str(info.value)


def test_the_issues_examples_are_refused_where_they_enter() -> None:
    with pytest.raises(OptionError, match="timezone = 'Mars/Base'"):
        DeviceSpec("bp", "serial-bp", "serial", {**minimal("serial-bp"), "timezone": "Mars/Base"})
    with pytest.raises(OptionError, match="address = 'nope'"):
        DeviceSpec("w", "ble-wrist", "ble", {"address": "nope"})
    with pytest.raises(OptionError, match="address is missing"):
        DeviceSpec("w", "ble-wrist", "ble", {})
    with pytest.raises(OptionError, match="silence_timeout_s = -5"):
        DeviceSpec("ox", "serial-cms50", "serial", {**minimal("serial-cms50"), "silence_timeout_s": -5})
    with pytest.raises(OptionError, match="not a known key"):
        DeviceSpec("ox", "serial-cms50", "serial", {**minimal("serial-cms50"), "colour": "blue"})
    with pytest.raises(OptionError, match="true or false"):
        DeviceSpec("rfx", "rfxtrx-sos", "serial", {**minimal("rfxtrx-sos"), "accept_unknown": 1})


def _config_with(tmp_path: Path, kind: str, extra: dict[str, Any]) -> Path:
    def toml(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{toml(k)} = {toml(x)}" for k, x in v.items()) + " }"
        return repr(v)

    table = {**minimal(kind), **extra}
    body = "".join(f"{k} = {toml(v)}\n" for k, v in table.items())
    path = tmp_path / f"{kind}.toml"
    path.write_text(BASE_CONFIG.format(data=tmp_path / "data") + f'[[devices]]\nid = "d1"\nkind = "{kind}"\n{body}')
    return path


@pytest.mark.parametrize(("kind", "key", "value"), refused_cases())
def test_gatewayd_check_refuses_the_same_values_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, key: str, value: Any
) -> None:
    path = _config_with(tmp_path, kind, {key: value})
    with pytest.raises(ConfigError):
        load_config(path)
    assert gatewayd_main(["--check", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"devices[0] (d1).{key} = " in err and str(path) in err, err


@pytest.mark.parametrize("kind", KINDS)
def test_gatewayd_check_accepts_each_kind_with_its_defaults(tmp_path: Path, kind: str) -> None:
    path = _config_with(tmp_path, kind, {})
    assert gatewayd_main(["--check", "--config", str(path)]) == 0


@dataclasses.dataclass(frozen=True)
class _ButtonOptions(DriverOptions):
    roles: dict[str, str] = press_roles_option(("press", "long_press"))


def test_press_roles_map_patterns_and_an_unmapped_pattern_is_an_sos() -> None:
    opts = _ButtonOptions.from_mapping({"roles": {"press": "call", "long_press": "sos"}})
    assert role_of(opts.roles, "press") == "call"
    assert role_of(opts.roles, "long_press") == "sos"
    assert role_of(_ButtonOptions.from_mapping({}).roles, "press") == "sos"  # nothing mapped: SOS
    assert role_of(opts.roles, None) == "sos"  # a device that reports no pattern
    with pytest.raises(OptionError, match="panic"):
        _ButtonOptions.from_mapping({"roles": {"press": "panic"}})
    with pytest.raises(OptionError, match="triple_press"):
        _ButtonOptions.from_mapping({"roles": {"triple_press": "call"}})


@pytest.mark.parametrize("kind", sorted(DRIVERS))
def test_an_integer_too_large_for_a_float_is_refused_naming_the_key(kind: str) -> None:
    """10**400 for a float option (JSON and TOML both give it as an integer): float() raised
    OverflowError, which a device-add replied as an internal error, counted as a bug."""
    cls = driver_class(kind)
    floats = [k for k, t in cls.Options.field_kinds().items() if t == "float"]
    assert floats, "every kind has a float option (its timeouts)"
    for key in floats:
        with pytest.raises(OptionError) as info:
            cls.Options.from_mapping({**minimal(kind), key: 10**400})
        assert info.value.key == key and "401 digits" in str(info.value)
