"""Moving readings and alert events between the wall clock and the rules' timeline (pure).

The engine judges holds, windows and watches on a timeline that never jumps (:class:`gateway.clock.Timeline`):
a reading enters it at ``captured_at + shift`` (``shift`` = timeline now - wall clock now, so its age is
kept), and an event leaves it at ``time - shift`` with the shift of the moment it leaves, which is the
corrected wall time when the clock has since become synchronised. A step of the wall clock changes the
shift by the step, so readings keep arriving in order and silence is never counted twice.
"""

from __future__ import annotations

import dataclasses

from drivers.base import Reading
from gateway.rules.engine import AlertEvent


def reading_on_timeline(reading: Reading, shift: float, now: float | None = None) -> Reading:
    """``reading`` with its capture time moved onto the timeline, and never later than ``now`` (the
    timeline's present): a reading stamped by a device's own clock (a cuff's or an oximeter's stored
    records) that runs ahead of the gateway's (a Pi behind after a power cut) would otherwise sit in
    the future, and every live reading after it would count as out of order."""
    at = reading.captured_at + shift
    if now is not None and at > now:
        at = now
    if at == reading.captured_at:
        return reading
    return dataclasses.replace(reading, captured_at=at)


def event_on_wall(ev: AlertEvent, shift: float) -> AlertEvent:
    """``ev`` with its times (transition, start, readings) moved back onto the wall clock."""
    if shift == 0.0:
        return ev
    return dataclasses.replace(
        ev,
        started_at=ev.started_at - shift,
        at=ev.at - shift,
        readings=tuple(dataclasses.replace(r, captured_at=r.captured_at - shift) for r in ev.readings),
    )
