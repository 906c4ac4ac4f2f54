"""Emergency-call drills that cannot hide an emergency (sans-I/O).

A drill window names the buttons being tested (every button only when the command says so
explicitly). In the window, the *first* press of each named button is the drill press (``drill: true``);
any further press of that button, and every press of a button not named, is real (``drill: false``):
a care centre that checks ``drill`` before dispatching help never ignores a real call. The window
closes when every named button has pressed, or at its end (at most :data:`MAX_DRILL_S`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MAX_DRILL_S = 1800  # 30 minutes at most
DEFAULT_DRILL_S = 900


@dataclass
class DrillWindow:
    until: float = 0.0  # when the window ends, on the caller's clock (the daemon's timeline; 0: none open)
    started: float = 0.0
    buttons: frozenset[str] | None = None  # the buttons under test; None: every button (said explicitly)
    pressed: set[str] = field(default_factory=set)  # named buttons whose drill press came
    drill_alerts: dict[str, str] = field(default_factory=dict)  # alert id -> button, of drill presses

    def open(self, now: float, duration_s: float, buttons: Iterable[str] | None) -> None:
        """Open a window; ``buttons`` None means every button (the caller checked it was explicit)."""
        self.started = now
        self.until = now + min(float(duration_s), MAX_DRILL_S)
        self.buttons = frozenset(buttons) if buttons is not None else None
        self.pressed = set()

    def close(self) -> None:
        self.until = 0.0
        self.buttons = None
        self.pressed = set()

    def active(self, now: float) -> bool:
        return self.started <= now < self.until

    def judge(self, alert_id: str, button: str, at: float) -> bool:
        """Is this press the drill press of its button? Never raises (it is on the SOS path)."""
        if not self.active(at) or button in self.pressed:
            return False
        if self.buttons is not None and button not in self.buttons:
            return False
        self.pressed.add(button)
        self.drill_alerts[alert_id] = button
        while len(self.drill_alerts) > 1000:
            self.drill_alerts.pop(next(iter(self.drill_alerts)))
        if self.buttons is not None and self.pressed >= self.buttons:
            self.until = at  # every named button has pressed: the drill is over
        return True

    def waiting_for(self) -> list[str] | None:
        """Named buttons that have not pressed yet (None: every button is under test)."""
        if self.buttons is None:
            return None
        return sorted(self.buttons - self.pressed)

    # -- persistence (the registry keeps the window across a restart) ---------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "until": self.until,
            "started": self.started,
            "buttons": sorted(self.buttons) if self.buttons is not None else None,
            "pressed": sorted(self.pressed),
        }

    @classmethod
    def from_json(cls, raw: Any) -> DrillWindow:
        """A stored window; anything unreadable is no window (a drill is never opened by accident), and a
        window longer than :data:`MAX_DRILL_S` ends that long after its start. A window stored by a
        release that kept it on the wall clock, read on a timeline that lags the wall clock, starts in
        the future and is no window until then: the daemon restores only a window active now
        (``gateway.commands.Commands.restore``), so a drill is never restored late."""
        if not isinstance(raw, dict):
            return cls()
        until, started, buttons, pressed = raw.get("until"), raw.get("started"), raw.get("buttons"), raw.get("pressed")
        if not isinstance(until, (int, float)) or not isinstance(started, (int, float)):
            return cls()
        if buttons is not None and not (isinstance(buttons, list) and all(isinstance(b, str) for b in buttons)):
            return cls()
        if not (isinstance(pressed, list) and all(isinstance(b, str) for b in pressed)):
            return cls()
        until = min(float(until), float(started) + MAX_DRILL_S)
        return cls(until, float(started), frozenset(buttons) if buttons is not None else None, set(pressed))
