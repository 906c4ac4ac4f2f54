"""Care rules and alerts (issue 6): the pure core.

- :mod:`gateway.rules.spec`: typed, validated rule specs (:class:`RuleSpec`, :class:`Condition`) and
  the watch settings (:class:`WatchSettings`); :class:`RuleSpecError` for every bad spec.
- :mod:`gateway.rules.defaults`: the default rules with their clinical sources.
- :mod:`gateway.rules.engine`: :class:`RuleEngine`: readings and ticks in, :class:`AlertEvent` out.
- :mod:`gateway.rules.timeline`: readings onto the rules' timeline (it never jumps), events back.

No I/O, no asyncio, no clock of its own: every call carries its time. See docs/rules.md.
"""

from gateway.rules.defaults import DEFAULT_RULES, DEFAULTS_BY_ID
from gateway.rules.engine import (
    AlertEvent,
    EngineCounters,
    EventState,
    OpenAlert,
    ReadingRef,
    RuleEngine,
    SnapshotError,
)
from gateway.rules.spec import (
    SEVERITIES,
    WATCH_KINDS,
    Condition,
    RuleSpec,
    RuleSpecError,
    Severity,
    WatchSettings,
    rule_from_dict,
    rules_from_list,
    severity_rank,
)
from gateway.rules.timeline import event_on_wall, reading_on_timeline

__all__ = [
    "DEFAULTS_BY_ID",
    "DEFAULT_RULES",
    "SEVERITIES",
    "WATCH_KINDS",
    "AlertEvent",
    "Condition",
    "EngineCounters",
    "EventState",
    "OpenAlert",
    "ReadingRef",
    "RuleEngine",
    "RuleSpec",
    "RuleSpecError",
    "Severity",
    "SnapshotError",
    "WatchSettings",
    "event_on_wall",
    "reading_on_timeline",
    "rule_from_dict",
    "rules_from_list",
    "severity_rank",
]
