"""The cloud contract's JSON Schemas, shipped in the package (gateway/schemas/*.json).

:func:`schema_for_topic` maps a topic to its schema; :func:`validator` builds a validator when the
``jsonschema`` package is installed (tests, the demo viewer); the daemon itself does not need it.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

SCHEMAS = ("common", "observation", "alert", "device_state", "waveform", "status", "time_correction", "summary")


@cache
def load_schema(name: str) -> dict[str, Any]:
    text = resources.files("gateway").joinpath("schemas", f"{name}.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def schema_for_topic(topic: str) -> str | None:
    """``homecare/v1/gw/obs/d1`` -> ``observation``; None for topics outside the uplink contract."""
    parts = topic.split("/")
    if len(parts) < 4:
        return None
    rest = parts[3:]
    if rest == ["status"]:
        return "status"
    if rest == ["alert"]:
        return "alert"
    if rest == ["time-correction"]:
        return "time_correction"
    if len(rest) == 2 and rest[0] == "obs":
        return "observation"
    if len(rest) == 2 and rest[0] == "summary":
        return "summary"
    if len(rest) == 2 and rest[0] == "bulk":
        return "waveform"
    if len(rest) == 3 and rest[0] == "device" and rest[2] == "state":
        return "device_state"
    return None


def validator(name: str) -> Any:
    """A jsonschema validator for one message schema, resolving the shared ``common.json``."""
    import jsonschema
    from referencing import Registry, Resource

    registry: Registry[Any] = Registry().with_resources(
        (load_schema(n)["$id"], Resource.from_contents(load_schema(n))) for n in SCHEMAS
    )
    cls = jsonschema.validators.validator_for(load_schema(name))
    return cls(load_schema(name), registry=registry, format_checker=cls.FORMAT_CHECKER)
