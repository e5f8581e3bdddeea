"""The review tables in the gateway's store, and the queries the engine, API and export share.

Schema (created idempotently, beside the store's own tables)
------------------------------------------------------------
::

    review_event(id INTEGER PRIMARY KEY,   the engine's event id (also in the MQTT body)
                 meter, type, key,         key: register, phase, or '' (one condition)
                 state,                    raised | cleared
                 ts REAL,                  the reading time that decided (UTC epoch s)
                 raised_id INTEGER,        cleared rows: the id of the event they clear
                 seq INTEGER,              the outbox seq it was published with
                 message TEXT,             one sentence for the reviewer
                 evidence TEXT)            JSON, every number exact
    review_state(meter PRIMARY KEY, ts, state)   per-meter rule memory (last registers…)
    review_interval(meter, slot, seconds, kwh)   interval consumption history (jump rule)
    review_work(event_id PRIMARY KEY, state,     the worklist item of a raised event
                acknowledged_by, acknowledged_at, note, closed_by, closed_at, reason,
                cleared_by_event)           (no row: open; see gateway.review.worklist)

Why publish first, then insert: ``Store.append_message`` commits the outbox row in its own
transaction. Should the process die between the two, :func:`reconcile` copies the outbox
row (which carries every field) into ``review_event`` at the next start, so the table and
what consumers received never disagree.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from gateway.model import iso_utc, loads_exact, parse_iso, to_json
from gateway.review.worklist import WorkItem

EVENT_SCHEMA: Final = "amr.event.v1"
#: a worklist state change (acknowledged, closed), published on the same topic as the event
EVENT_STATE_SCHEMA: Final = "amr.event_state.v1"

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS review_event (
    id INTEGER PRIMARY KEY,
    meter TEXT NOT NULL,
    type TEXT NOT NULL,
    key TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    ts REAL NOT NULL,
    raised_id INTEGER,
    seq INTEGER,
    message TEXT NOT NULL,
    evidence TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS review_event_ts ON review_event(ts);
CREATE INDEX IF NOT EXISTS review_event_meter_ts ON review_event(meter, ts);
CREATE INDEX IF NOT EXISTS review_event_raised ON review_event(raised_id);
CREATE TABLE IF NOT EXISTS review_state (meter TEXT PRIMARY KEY, ts REAL NOT NULL, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS review_interval (
    meter TEXT NOT NULL,
    slot REAL NOT NULL,
    seconds REAL NOT NULL,
    kwh TEXT NOT NULL,
    PRIMARY KEY (meter, slot, seconds)
);
CREATE TABLE IF NOT EXISTS review_work (
    event_id INTEGER PRIMARY KEY,
    state TEXT NOT NULL,
    acknowledged_by TEXT,
    acknowledged_at REAL,
    note TEXT,
    closed_by TEXT,
    closed_at REAL,
    reason TEXT,
    cleared_by_event INTEGER
);
CREATE INDEX IF NOT EXISTS review_work_state ON review_work(state);
"""

CSV_COLUMNS: Final = ("id", "seq", "ts", "meter", "type", "state", "key", "raised_id", "message", "evidence")


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One row of ``review_event``."""

    id: int
    meter: str
    type: str
    key: str
    state: str
    ts: float
    raised_id: int | None
    seq: int | None
    message: str
    evidence: dict[str, Any]

    def to_dict(self) -> dict[str, object]:
        """The event as the API and MQTT show it (``ts`` ISO-8601 UTC)."""
        return {
            "id": self.id,
            "seq": self.seq,
            "meter": self.meter,
            "type": self.type,
            "state": self.state,
            "key": self.key,
            "ts": iso_utc(self.ts),
            "raised_id": self.raised_id,
            "message": self.message,
            "evidence": self.evidence,
        }

    def csv_row(self) -> list[object]:
        """The event as a CSV row in :data:`CSV_COLUMNS` order (evidence as exact JSON)."""
        return [self.id, self.seq, iso_utc(self.ts), self.meter, self.type, self.state, self.key,
                self.raised_id, self.message, to_json(self.evidence)]


def create(conn: sqlite3.Connection) -> None:
    """Create the review tables if missing (run inside the store's write transaction)."""
    for stmt in SCHEMA.split(";"):
        if stmt.strip():
            conn.execute(stmt)


def insert_event(conn: sqlite3.Connection, ev: StoredEvent) -> None:
    """Insert one event row (ignored if its id is already there, e.g. after a reconcile)."""
    conn.execute(
        "INSERT OR IGNORE INTO review_event(id, meter, type, key, state, ts, raised_id, seq, message, evidence)"
        " VALUES (?,?,?,?,?,?,?,?,?,?)",
        (ev.id, ev.meter, ev.type, ev.key, ev.state, ev.ts, ev.raised_id, ev.seq, ev.message,
         to_json(ev.evidence)),
    )


def _row(row: Sequence[Any]) -> StoredEvent:
    evidence = loads_exact(row[9])
    return StoredEvent(
        id=int(row[0]), meter=str(row[1]), type=str(row[2]), key=str(row[3]), state=str(row[4]),
        ts=float(row[5]), raised_id=None if row[6] is None else int(row[6]),
        seq=None if row[7] is None else int(row[7]), message=str(row[8]),
        evidence=evidence if isinstance(evidence, dict) else {"value": evidence},
    )


_COLS: Final = "id, meter, type, key, state, ts, raised_id, seq, message, evidence"


def table_exists(conn: sqlite3.Connection) -> bool:
    """True once a review engine has created its tables in this store."""
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='review_event'").fetchone()
    return row is not None


def select_events(
    conn: sqlite3.Connection, start: float, end: float, meter: str | None = None,
    types: Iterable[str] | None = None, state: str | None = None, after_id: int | None = None,
    limit: int = 10_000,
) -> list[StoredEvent]:
    """Events with ``start <= ts < end``, filtered, oldest first (then by id)."""
    if not table_exists(conn):
        return []
    sql = f"SELECT {_COLS} FROM review_event WHERE ts >= ? AND ts < ?"
    args: list[Any] = [start, end]
    if meter is not None:
        sql += " AND meter = ?"
        args.append(meter)
    tlist = list(types) if types is not None else []
    if tlist:
        sql += f" AND type IN ({','.join('?' * len(tlist))})"
        args += tlist
    if state is not None:
        sql += " AND state = ?"
        args.append(state)
    if after_id is not None:
        sql += " AND id > ?"
        args.append(after_id)
    sql += " ORDER BY ts, id LIMIT ?"
    args.append(limit)
    return [_row(r) for r in conn.execute(sql, args)]


def open_events(conn: sqlite3.Connection) -> list[StoredEvent]:
    """Raised events no cleared event refers to (the conditions still in force)."""
    cur = conn.execute(
        f"SELECT {_COLS} FROM review_event r WHERE state = 'raised' AND NOT EXISTS "
        "(SELECT 1 FROM review_event c WHERE c.raised_id = r.id) ORDER BY id"
    )
    return [_row(r) for r in cur]


def max_event_id(conn: sqlite3.Connection) -> int:
    """The highest event id used so far (0 when none)."""
    row = conn.execute("SELECT max(id) FROM review_event").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def reconcile(conn: sqlite3.Connection) -> int:
    """Copy published events missing from ``review_event`` (a crash between the two writes).

    Only outbox rows after the last seq the table knows are looked at, so this is cheap
    after the first start. Returns how many rows were recovered.
    """
    row = conn.execute("SELECT max(seq) FROM review_event").fetchone()
    after = int(row[0]) if row and row[0] is not None else 0
    n = 0
    for seq, payload in conn.execute(
        "SELECT seq, payload FROM outbox WHERE seq > ? AND kind = 'event' ORDER BY seq", (after,)
    ).fetchall():
        doc = loads_exact(payload)
        if not isinstance(doc, dict) or doc.get("schema") != EVENT_SCHEMA or "id" not in doc:
            continue
        raised = doc.get("raised_id")
        evidence = doc.get("evidence")
        ev = StoredEvent(
            id=int(doc["id"]), meter=str(doc.get("meter")), type=str(doc.get("type")),
            key=str(doc.get("key") or ""), state=str(doc.get("state")), ts=parse_iso(str(doc["ts"])),
            raised_id=None if raised is None else int(raised), seq=int(seq),
            message=str(doc.get("message") or ""),
            evidence=evidence if isinstance(evidence, dict) else {},
        )
        before = conn.total_changes
        insert_event(conn, ev)
        n += conn.total_changes - before
    return n


def load_states(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """Every meter's persisted rule state document."""
    out: dict[str, dict[str, Any]] = {}
    for meter, text in conn.execute("SELECT meter, state FROM review_state"):
        doc = loads_exact(text)
        if isinstance(doc, dict):
            out[str(meter)] = doc
    return out


def save_states(conn: sqlite3.Connection, ts: float, states: dict[str, dict[str, object]],
                intervals: list[tuple[str, float, float, Decimal]]) -> None:
    """Upsert state documents and append interval history (one transaction)."""
    conn.executemany(
        "INSERT INTO review_state(meter, ts, state) VALUES (?,?,?) "
        "ON CONFLICT(meter) DO UPDATE SET ts=excluded.ts, state=excluded.state",
        [(m, ts, to_json(doc)) for m, doc in states.items()],
    )
    conn.executemany(
        "INSERT OR IGNORE INTO review_interval(meter, slot, seconds, kwh) VALUES (?,?,?,?)",
        [(m, slot, secs, format(kwh, "f")) for m, slot, secs, kwh in intervals],
    )


def load_intervals(conn: sqlite3.Connection, since: float) -> list[tuple[str, float, float, Decimal]]:
    """Interval history from ``since`` on, oldest first."""
    cur = conn.execute(
        "SELECT meter, slot, seconds, kwh FROM review_interval WHERE slot >= ? ORDER BY slot", (since,)
    )
    return [(str(m), float(s), float(sec), Decimal(k)) for m, s, sec, k in cur]


def purge_intervals(conn: sqlite3.Connection, before: float) -> int:
    """Drop interval history older than ``before`` (the jump rule never looks that far)."""
    return conn.execute("DELETE FROM review_interval WHERE slot < ?", (before,)).rowcount


_WORK_COLS: Final = ("event_id, state, acknowledged_by, acknowledged_at, note, closed_by, closed_at, reason, "
                     "cleared_by_event")


def _work(row: Sequence[Any] | None, event_id: int) -> WorkItem:
    if row is None:
        return WorkItem(event_id)
    return WorkItem(int(row[0]), row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8])


def get_event(conn: sqlite3.Connection, event_id: int) -> tuple[StoredEvent, WorkItem] | None:
    """One event and its worklist item (None: no such event)."""
    if not table_exists(conn):
        return None
    row = conn.execute(f"SELECT {_COLS} FROM review_event WHERE id = ?", (event_id,)).fetchone()
    if row is None:
        return None
    work = conn.execute(f"SELECT {_WORK_COLS} FROM review_work WHERE event_id = ?", (event_id,)).fetchone()
    return _row(row), _work(work, event_id)


def save_work(conn: sqlite3.Connection, item: WorkItem) -> None:
    """Store a worklist item (insert or replace)."""
    conn.execute(
        f"INSERT OR REPLACE INTO review_work({_WORK_COLS}) VALUES (?,?,?,?,?,?,?,?,?)",
        (item.event_id, item.state, item.acknowledged_by, item.acknowledged_at, item.note, item.closed_by,
         item.closed_at, item.reason, item.cleared_by_event),
    )


def work_items(conn: sqlite3.Connection, ids: Iterable[int]) -> dict[int, WorkItem]:
    """The worklist items of these raised events (open ones included)."""
    wanted = list(ids)
    out = {i: WorkItem(i) for i in wanted}
    if not wanted or not table_exists(conn):
        return out
    for start in range(0, len(wanted), 500):
        chunk = wanted[start:start + 500]
        for row in conn.execute(f"SELECT {_WORK_COLS} FROM review_work WHERE event_id IN "
                                f"({','.join('?' * len(chunk))})", chunk):
            out[int(row[0])] = _work(row, int(row[0]))
    return out


def select_worklist(
    conn: sqlite3.Connection, start: float, end: float, meters: Sequence[str] | None, types: Iterable[str] | None,
    states: Sequence[str], after_id: int | None, limit: int,
) -> list[StoredEvent]:
    """Raised events with ``start <= ts < end`` whose worklist state is in ``states``, by id."""
    if not table_exists(conn):
        return []
    sql = (f"SELECT {', '.join('r.' + c.strip() for c in _COLS.split(','))} FROM review_event r "
           "LEFT JOIN review_work w ON w.event_id = r.id "
           "WHERE r.state = 'raised' AND r.ts >= ? AND r.ts < ?")
    args: list[Any] = [start, end]
    if meters is not None:
        sql += f" AND r.meter IN ({','.join('?' * len(meters))})"
        args += list(meters)
    tlist = list(types) if types is not None else []
    if tlist:
        sql += f" AND r.type IN ({','.join('?' * len(tlist))})"
        args += tlist
    sql += f" AND coalesce(w.state, 'open') IN ({','.join('?' * len(states))})"
    args += list(states)
    if after_id is not None:
        sql += " AND r.id > ?"
        args.append(after_id)
    sql += " ORDER BY r.id LIMIT ?"
    args.append(limit)
    return [_row(r) for r in conn.execute(sql, args)]
