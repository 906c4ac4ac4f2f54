"""What can still be read of a damaged outbox file (sans daemon: a file in, rows out).

The outbox (:mod:`gateway.outbox`) moves a store SQLite calls damaged (SQLITE_CORRUPT, SQLITE_NOTADB, a
failed ``quick_check``) aside and starts a fresh one, so that a worn SD card never stops the daemon, and
with it the SOS path. The messages of the damaged file were accepted and not yet delivered: this module
reads them back, best effort, for the outbox to commit again in its new stream (same ``msg_id``, a new
``seq``):

- the alerts first, through the lane index (:meth:`DamagedStore.alerts`); should the index be unreadable,
  they come with the rest;
- then every message in ``seq`` order through the table itself (``NOT INDEXED``: a damaged index costs
  nothing here), :data:`BATCH` rows at a time (:meth:`DamagedStore.rows_after`). Where SQLite cannot read
  on, the reader steps over (1, 2, 4, ... seqs past the last row it read, until a read works again) and
  notes the seq range it could not read (:attr:`DamagedStore.unreadable`);
- a row that SQLite returns but that is not a message (a lane that does not exist, a body that is not a
  JSON object, a column of the wrong type: damage SQLite did not notice) is not sent; it is counted
  (:attr:`DamagedStore.invalid`).

The file is opened read-only and never changed: it stays beside the new store for a person to look at
(``gatewayctl doctor`` names it).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.clock import ClockState
from gateway.statedb import is_damage

BATCH = 500  # rows per read (and per commit into the new store)
MAX_LOOKUPS = 100_000  # seqs of a stretch stepped over that are looked up one by one (each fails fast)
_COLUMNS = "seq, lane, device, topic, body, captured, retain, boot, mono, clock, shift"
_MAX_SEQ = (1 << 62) - 1
# ``seq >= n`` rather than ``seq > n - 1``: SQLite seeks the key itself, so a seek to the first row of a leaf
# never lands in the damaged leaf before it (whose last key is n - 1)
_PROBE = "SELECT seq FROM msg NOT INDEXED WHERE seq >= ? ORDER BY seq LIMIT 1"
_CLOCK_STATES = frozenset(int(c) for c in ClockState)


@dataclass(frozen=True, slots=True)
class SalvagedRow:
    """A message of the damaged store, as it was stored (its times and clock state included)."""

    seq: int  # in the damaged store's stream
    lane: int
    device: str
    topic: str
    body: bytes
    captured: float
    retain: bool
    boot: str | None
    mono: float | None
    clock: int
    shift: float


class StoreUnavailable(Exception):
    """The damaged file cannot be opened now, for a reason that is not its damage: try again later."""


class DamagedStore:
    """A damaged outbox file opened read-only. Every method returns what it could read and never raises
    :class:`sqlite3.Error`; what it could not read is in :attr:`unreadable` and :attr:`invalid`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.unreadable: list[tuple[int, int]] = []  # seq ranges stepped over (some seqs may never have been)
        self.invalid = 0  # rows read that were not messages
        self.db: sqlite3.Connection | None = None
        try:
            # timeout 0: no busy wait, on the thread that commits the SOS presses
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=0)
            self.db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            self.close()
            if not is_damage(exc):
                # Not its damage (an I/O error, a lock: seen as SQLITE_IOERR_SHORT_READ when the file is
                # opened the moment the store that used it closed): the salvage tries again later. It
                # used to be read as "nothing to read", and the salvage ended with nothing salvaged and
                # nothing reported lost.
                raise StoreUnavailable(f"{path}: cannot be opened now: {exc}") from exc
            # not a database at all (its header is gone): nothing to read (the caller reports it all lost)
        stream = self._value("SELECT value FROM info WHERE key = 'stream'")
        self.stream = stream if isinstance(stream, str) else None  # the damaged store's stream id
        next_seq = self._value("SELECT value FROM meta WHERE key = 'next_seq'")
        top = self._value("SELECT MAX(seq) FROM msg NOT INDEXED")
        tops = [v for v in (top, next_seq - 1 if isinstance(next_seq, int) else None) if isinstance(v, int)]
        self.last_seq: int | None = max(tops) if tops else None  # the highest seq it may hold

    def _value(self, sql: str) -> str | int | None:
        if self.db is None:
            return None
        try:
            row = self.db.execute(sql).fetchone()
        except sqlite3.Error:
            return None
        value = row[0] if row else None
        return value if isinstance(value, str | int) else None

    def alerts(self) -> list[SalvagedRow] | None:
        """Every alert (lane 0), through the lane index; None when it cannot be read whole (the alerts
        then come with the rest, from the table)."""
        if self.db is None:
            return None
        try:
            rows = self.db.execute(
                f"SELECT {_COLUMNS} FROM msg INDEXED BY msg_lane_seq WHERE lane = 0 ORDER BY lane, seq"
            ).fetchall()
        except sqlite3.Error:
            return None
        out = [r for r in map(self._row, rows) if r is not None]
        return out if len(out) == len(rows) and all(r.lane == 0 for r in out) else None

    def rows_after(self, seq: int, limit: int = BATCH) -> tuple[list[SalvagedRow], int | None]:
        """Up to ``limit`` messages with a seq above ``seq``, in seq order, and the cursor to go on from
        (None: nothing more can be read). Unreadable stretches are stepped over and noted."""
        if self.db is None:
            return [], None
        got: list[SalvagedRow] = []
        last, n = seq, 0
        try:
            cur = self.db.execute(
                f"SELECT {_COLUMNS} FROM msg NOT INDEXED WHERE seq >= ? ORDER BY seq LIMIT ?", (seq + 1, limit)
            )
            for raw in cur:
                n += 1
                last = int(raw[0])  # the rowid: an integer, increasing
                row = self._row(raw)
                if row is not None:
                    got.append(row)
        except sqlite3.Error:
            more, cursor = self._step_over(last)
            return got + more, cursor
        return got, (last if n == limit else None)

    def _step_over(self, last: int) -> tuple[list[SalvagedRow], int | None]:
        """A read past ``last`` failed: the next cursor from which SQLite reads on (None: none up to the
        highest seq the store may hold), and the rows of the stretch stepped over that a seek of their own
        still reads (a scan fails where a damaged page is on its way; a lookup of a row beside it need
        not). The seqs of the stretch that none reads are noted unreadable."""
        end = self.last_seq if self.last_seq is not None else _MAX_SEQ
        step, failed = 1, last  # the last cursor that failed (the read past ``last`` did)
        found: int | None = None
        while last + step <= end:
            probe = last + step
            if not self._readable_from(probe + 1):
                failed, step = probe, step * 2
                continue
            # the first cursor that reads lies in (failed, probe]: halve it (the doubling overshoots)
            while probe - failed > 1:
                mid = (failed + probe) // 2
                if self._readable_from(mid + 1):
                    probe = mid
                else:
                    failed = mid
            found = probe
            break
        hi = found if found is not None else (end if end > last else last)
        rows = self._lookups(last + 1, hi)
        return rows, found

    def _lookups(self, lo: int, hi: int) -> list[SalvagedRow]:
        """Each seq of ``lo..hi`` by a lookup of its own (at most :data:`MAX_LOOKUPS` of them); the rest
        are noted unreadable."""
        assert self.db is not None
        rows: list[SalvagedRow] = []
        if hi - lo + 1 > MAX_LOOKUPS:
            self._note(lo, hi)
            return rows
        for seq in range(lo, hi + 1):
            try:
                raw = self.db.execute(f"SELECT {_COLUMNS} FROM msg WHERE seq = ?", (seq,)).fetchone()
            except sqlite3.Error:
                self._note(seq, seq)
                continue
            row = self._row(raw) if raw is not None else None
            if row is not None:
                rows.append(row)
            elif raw is None:
                self._note(seq, seq)  # not read: perhaps never there (delivered), perhaps lost
        return rows

    def _readable_from(self, seq: int) -> bool:
        assert self.db is not None
        try:
            self.db.execute(_PROBE, (seq,)).fetchall()
        except sqlite3.Error:
            return False
        return True

    def _note(self, lo: int, hi: int) -> None:
        if self.unreadable and self.unreadable[-1][1] + 1 >= lo:
            self.unreadable[-1] = (self.unreadable[-1][0], max(hi, self.unreadable[-1][1]))
        else:
            self.unreadable.append((lo, hi))

    def _row(self, raw: tuple[Any, ...]) -> SalvagedRow | None:
        seq, lane, device, topic, body, captured, retain, boot, mono, clock, shift = raw
        if isinstance(body, str):
            body = body.encode()
        ok = (
            isinstance(seq, int)
            and isinstance(lane, int)
            and 0 <= lane <= 3
            and isinstance(device, str)
            and isinstance(topic, str)
            and isinstance(body, bytes)
            and isinstance(captured, int | float)
            and isinstance(retain, int)
            and (boot is None or isinstance(boot, str))
            and (mono is None or isinstance(mono, int | float))
            and isinstance(clock, int)
            and clock in _CLOCK_STATES
            and isinstance(shift, int | float)
        )
        if ok:
            try:
                ok = isinstance(json.loads(body), dict)
            except (ValueError, UnicodeDecodeError):
                ok = False
        if not ok:
            self.invalid += 1
            return None
        return SalvagedRow(
            seq=seq,
            lane=lane,
            device=device,
            topic=topic,
            body=body,
            captured=float(captured),
            retain=bool(retain),
            boot=boot,
            mono=None if mono is None else float(mono),
            clock=clock,
            shift=float(shift),
        )

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


MAX_RANGES = 64  # unreadable seq ranges kept in the record (the latest)


@dataclass
class Recovery:
    """The record of one damaged store and its salvage, kept in the new store (``info.recovery``) so a
    restart goes on where the salvage was, and published in the gateway's status."""

    aside: str  # where the damaged file is now
    at: float  # wall time it was found damaged
    reason: str  # SQLite's words
    old_stream: str | None = None
    old_last_seq: int | None = None
    alert_seqs: list[int] | None = None  # the alerts the index pass gave (few): the table pass skips these
    started: bool = False  # the alert pass is done; the table pass goes on from ``cursor``
    cursor: int = 0  # in the damaged store's seqs
    salvaged: int = 0  # messages committed again in the new store
    refused: int = 0  # messages read back that the new store refused (its own commit failed)
    invalid: int = 0
    unreadable: list[tuple[int, int]] | None = None
    done: bool = False
    error: str | None = None  # why the salvage could not go on (the file vanished, a bug)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Recovery:
        """Raises ValueError for a record that is not one."""
        try:
            d = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"not a recovery record: {exc}") from exc
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: Any) -> Recovery:
        """Raises ValueError for a record that is not one."""
        try:
            rec = cls(**d)
            rec.unreadable = [(int(a), int(b)) for a, b in rec.unreadable or []]
            if not (isinstance(rec.aside, str) and isinstance(rec.cursor, int) and isinstance(rec.salvaged, int)):
                raise TypeError("wrong types")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a recovery record: {exc}") from exc
        return rec

    def note_unreadable(self, ranges: list[tuple[int, int]]) -> None:
        self.unreadable = ([*(self.unreadable or []), *ranges])[-MAX_RANGES:]

    def detail(self) -> dict[str, Any]:
        """What ``gatewayctl status`` and ``doctor`` say of it: the status's, where the file is, what stopped it."""
        return self.status() | {"aside": self.aside, "error": self.error}

    def status(self) -> dict[str, Any]:
        """What the gateway's status says of it (docs/mqtt-contract.md, ``recovered_from``)."""
        return {
            "stream": self.old_stream,
            "last_seq": self.old_last_seq,
            "at": self.at,
            "salvaged": self.salvaged,
            "unreadable_ranges": [list(r) for r in self.unreadable or []],
            "invalid": self.invalid,
            "refused": self.refused,
            "done": self.done,
        }
