"""Billing tables in the gateway's SQLite store, and the queries on them.

Plain functions of a ``sqlite3.Connection`` so the running gateway (through
:meth:`gateway.store.Store.write` / :meth:`~gateway.store.Store.read`) and ``amr-gateway
export`` (a read-only connection, no gateway) run the same SQL.

Schema (created idempotently)::

    billing_settlement(
        id INTEGER PRIMARY KEY,
        meter TEXT, plan TEXT, cycle TEXT,   cycle whose stage this boundary opens (YYYY-MM)
        idx INTEGER,                         0 = cycle start, k = start of stage k+1
        boundary REAL,                       the boundary instant (UTC epoch s)
        quality TEXT, rank INTEGER,          see gateway.billing.settlement
        created REAL,                        when stored (gateway clock)
        body TEXT,                           the amr.settlement.v1 document without seq (exact JSON)
        seq INTEGER,                         outbox seq once appended (NULL: not yet published)
        superseded_by INTEGER)               id of the better settlement; NULL for the current one
      unique (meter, boundary) where superseded_by IS NULL: one current settlement per boundary
    billing_ratio_change(id INTEGER PRIMARY KEY, meter TEXT, at REAL, body TEXT)
      a dated change of what the meter's registers are priced with: ``kind`` ratio_change (a
      CT/PT change, taken automatically when the gateway starts under a new configured ratio —
      see gateway.billing.capture — or entered by an operator) or exchange (换表, see
      gateway.billing.exchanges): when, old and new ratios, and per register the value under
      the old ratio (``value_old``: at the change, or the old meter's final register) and under
      the new one (``value_new``: at the change, or the new meter's initial register);
      registers {} when the meter could not be read then. An operator's record of the same
      change as an automatic one names it (``supersedes``: its id), and an automatic record of
      a change an operator already entered names that one (``explained_by``); such a named
      record stays, but only the other one splits stages (:func:`ratio_changes`)
    billing_meter(meter TEXT, plan TEXT, since REAL, PRIMARY KEY (meter, plan))
      when the gateway first saw the meter on the plan: boundaries after it are caught up

Invariants: rows are never deleted or their values changed; a row only gains its ``seq``
and, when a strictly better one or an operator's correction arrives, its ``superseded_by``. A settlement row is written
*before* its outbox message; a row whose ``seq`` is still NULL after a crash is published at
the next start (:func:`unpublished`), so every stored settlement reaches MQTT.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from gateway.billing.settlement import Settlement, rank
from gateway.model import loads_exact, parse_iso, to_json
from gateway.storecodec import PAYLOAD_SQL

SCHEMA = """
CREATE TABLE IF NOT EXISTS billing_settlement (
    id INTEGER PRIMARY KEY,
    meter TEXT NOT NULL,
    plan TEXT NOT NULL,
    cycle TEXT NOT NULL,
    idx INTEGER NOT NULL,
    boundary REAL NOT NULL,
    quality TEXT NOT NULL,
    rank INTEGER NOT NULL,
    created REAL NOT NULL,
    body TEXT NOT NULL,
    seq INTEGER,
    superseded_by INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS billing_settlement_current
    ON billing_settlement(meter, boundary) WHERE superseded_by IS NULL;
CREATE INDEX IF NOT EXISTS billing_settlement_meter_boundary ON billing_settlement(meter, boundary);
CREATE TABLE IF NOT EXISTS billing_ratio_change (
    id INTEGER PRIMARY KEY,
    meter TEXT NOT NULL,
    at REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS billing_ratio_change_meter_at ON billing_ratio_change(meter, at);
CREATE TABLE IF NOT EXISTS billing_meter (
    meter TEXT NOT NULL,
    plan TEXT NOT NULL,
    since REAL NOT NULL,
    PRIMARY KEY (meter, plan)
);
"""

_COLS = "id, meter, plan, cycle, idx, boundary, quality, created, body, seq, superseded_by"


def create(conn: sqlite3.Connection) -> None:
    """Create the billing tables if they do not exist (inside the caller's transaction)."""
    for stmt in SCHEMA.split(";"):
        if stmt.strip():
            conn.execute(stmt)


def table_exists(conn: sqlite3.Connection) -> bool:
    """True when this store has billing tables (an export of a store that never billed)."""
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='billing_settlement'"
    ).fetchone()
    return row is not None


def _row(r: tuple[Any, ...]) -> Settlement:
    body = loads_exact(r[8])
    assert isinstance(body, dict)
    return Settlement(
        id=int(r[0]), meter=r[1], plan=r[2], cycle=r[3], index=int(r[4]), boundary=float(r[5]),
        quality=r[6], created=float(r[7]), body=body, seq=None if r[9] is None else int(r[9]),
        superseded_by=None if r[10] is None else int(r[10]),
    )


def insert_if_better(
    conn: sqlite3.Connection, meter: str, plan: str, cycle: str, idx: int, boundary: float,
    quality: str, created: float, body: dict[str, Any],
) -> Settlement | None:
    """Store a settlement when it is strictly better than the current one; else None.

    The current row (if any) is marked superseded by the new one; its values stay.
    Runs inside the caller's transaction (``Store.write``).
    """
    cur = conn.execute(
        f"SELECT {_COLS} FROM billing_settlement WHERE meter=? AND boundary=? AND superseded_by IS NULL",
        (meter, boundary),
    ).fetchone()
    previous = _row(cur) if cur is not None else None
    if previous is not None and rank(previous.quality) >= rank(quality):
        return None
    return _insert_version(conn, previous, meter, plan, cycle, idx, boundary, quality, created, body)


def insert_correction(
    conn: sqlite3.Connection, meter: str, plan: str, cycle: str, idx: int, boundary: float,
    quality: str, created: float, body: dict[str, Any], expected: int | None,
) -> tuple[Settlement | None, Settlement] | None:
    """Store an operator's correction as the new current version, whatever its rank.

    ``expected``: the id of the current row the operator corrected (None: there must be none);
    None is returned, nothing written, when the current row is another one by now (a capture or
    another correction came first). Else (the superseded row or None, the new row).
    """
    cur = conn.execute(
        f"SELECT {_COLS} FROM billing_settlement WHERE meter=? AND boundary=? AND superseded_by IS NULL",
        (meter, boundary),
    ).fetchone()
    previous = _row(cur) if cur is not None else None
    if (None if previous is None else previous.id) != expected:
        return None
    return previous, _insert_version(conn, previous, meter, plan, cycle, idx, boundary, quality, created, body)


def current_at(conn: sqlite3.Connection, meter: str, boundary: float) -> Settlement | None:
    """The current settlement of one meter at one boundary, or None."""
    cur = conn.execute(
        f"SELECT {_COLS} FROM billing_settlement WHERE meter=? AND boundary=? AND superseded_by IS NULL",
        (meter, boundary),
    ).fetchone()
    return _row(cur) if cur is not None else None


def by_id(conn: sqlite3.Connection, settlement_id: int) -> Settlement | None:
    """One settlement row (current or superseded) by its id, or None."""
    if not table_exists(conn):
        return None
    cur = conn.execute(f"SELECT {_COLS} FROM billing_settlement WHERE id=?", (settlement_id,)).fetchone()
    return _row(cur) if cur is not None else None


def _insert_version(
    conn: sqlite3.Connection, previous: Settlement | None, meter: str, plan: str, cycle: str, idx: int,
    boundary: float, quality: str, created: float, body: dict[str, Any],
) -> Settlement:
    """Insert ``body`` as the next revision after ``previous`` (marked superseded, its values kept)."""
    revision = 1
    if previous is not None:
        revision = int(previous.body.get("revision", 1)) + 1
        body = {**body, "supersedes": {"id": previous.id, "quality": previous.quality, "seq": previous.seq,
                                       "revision": previous.body.get("revision", 1)}}
    body = {**body, "revision": revision}
    if previous is not None:   # step aside first: one current row per boundary (unique index)
        conn.execute("UPDATE billing_settlement SET superseded_by=-1 WHERE id=?", (previous.id,))
    new_id = conn.execute(
        "INSERT INTO billing_settlement(meter, plan, cycle, idx, boundary, quality, rank, created, body)"
        " VALUES (?,?,?,?,?,?,?,?,?)",
        (meter, plan, cycle, idx, boundary, quality, rank(quality), created, to_json(body)),
    ).lastrowid
    assert new_id is not None
    if previous is not None:
        conn.execute("UPDATE billing_settlement SET superseded_by=? WHERE id=?", (new_id, previous.id))
    return Settlement(int(new_id), meter, plan, cycle, idx, boundary, quality, created, body)


def set_seq(conn: sqlite3.Connection, settlement_id: int, seq: int) -> None:
    """Record the outbox seq a settlement was published with."""
    conn.execute("UPDATE billing_settlement SET seq=? WHERE id=?", (seq, settlement_id))


def unpublished(conn: sqlite3.Connection) -> list[Settlement]:
    """Settlements stored but not yet appended to the outbox (a crash in between)."""
    rows = conn.execute(f"SELECT {_COLS} FROM billing_settlement WHERE seq IS NULL ORDER BY id").fetchall()
    return [_row(r) for r in rows]


def current_since(conn: sqlite3.Connection, since: float) -> list[Settlement]:
    """Current settlements of every meter with ``boundary >= since`` (the capture's memory)."""
    rows = conn.execute(
        f"SELECT {_COLS} FROM billing_settlement WHERE superseded_by IS NULL AND boundary >= ? ORDER BY boundary",
        (since,),
    ).fetchall()
    return [_row(r) for r in rows]


def for_meter(conn: sqlite3.Connection, meter: str, lo: float, hi: float) -> list[Settlement]:
    """Every settlement (current with its history attached) of one meter, ``lo <= boundary <= hi``."""
    rows = conn.execute(
        f"SELECT {_COLS} FROM billing_settlement WHERE meter=? AND boundary>=? AND boundary<=? ORDER BY boundary, id",
        (meter, lo, hi),
    ).fetchall()
    return attach_history(_row(r) for r in rows)


def for_meters(conn: sqlite3.Connection, meter: str | None, lo: float, hi: float) -> list[Settlement]:
    """Like :func:`for_meter` for one meter or (``None``) all, ordered by meter then boundary."""
    if meter is not None:
        return for_meter(conn, meter, lo, hi)
    rows = conn.execute(
        f"SELECT {_COLS} FROM billing_settlement WHERE boundary>=? AND boundary<=? ORDER BY meter, boundary, id",
        (lo, hi),
    ).fetchall()
    return attach_history(_row(r) for r in rows)


def attach_history(rows: Iterable[Settlement]) -> list[Settlement]:
    """Current settlements, each with the rows it superseded (oldest first) in ``history``."""
    by_key: dict[tuple[str, float], list[Settlement]] = {}
    for s in rows:
        by_key.setdefault((s.meter, s.boundary), []).append(s)
    out: list[Settlement] = []
    for group in by_key.values():
        current = [s for s in group if s.superseded_by is None]
        head = current[-1] if current else group[-1]
        head.history = [s for s in group if s is not head]
        out.append(head)
    out.sort(key=lambda s: (s.meter, s.boundary))
    return out


def insert_ratio_change(conn: sqlite3.Connection, meter: str, at: float, body: dict[str, Any]) -> int:
    """Record an audited CT/PT change (never updated or deleted afterwards)."""
    rid = conn.execute("INSERT INTO billing_ratio_change(meter, at, body) VALUES (?,?,?)",
                       (meter, at, to_json(body))).lastrowid
    assert rid is not None
    return int(rid)


def ratio_change_recorded(conn: sqlite3.Connection, meter: str, at: float) -> bool:
    """Whether billing has kept the CT/PT change of ``meter`` audited at ``at`` (its own record: one
    an operator entered for the same instant does not count)."""
    for (body,) in conn.execute("SELECT body FROM billing_ratio_change WHERE meter=? AND at=?", (meter, at)):
        doc = loads_exact(body)
        if isinstance(doc, dict) and doc.get("entered_by") is None:
            return True
    return False


def all_changes(conn: sqlite3.Connection, meter: str) -> list[dict[str, Any]]:
    """Every recorded change of a meter (CT/PT changes and exchanges, with ``id``), oldest first.

    Includes the records another one stands in for (``supersedes`` / ``explained_by``).
    """
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='billing_ratio_change'").fetchone() \
            is None:
        return []
    out: list[dict[str, Any]] = []
    for rid, body in conn.execute("SELECT id, body FROM billing_ratio_change WHERE meter=? ORDER BY at, id",
                                  (meter,)):
        doc = loads_exact(body)
        assert isinstance(doc, dict)
        out.append({**doc, "id": int(rid)})
    return out


def effective(changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The changes that split stages: those no other record stands in for."""
    replaced = {int(c["supersedes"]) for c in changes if c.get("supersedes") is not None}
    return [c for c in changes if c.get("explained_by") is None and int(c.get("id", 0)) not in replaced]


def ratio_changes(conn: sqlite3.Connection, meter: str, lo: float, hi: float) -> list[dict[str, Any]]:
    """The effective CT/PT changes and exchanges of a meter with ``lo <= at < hi``, oldest first."""
    return [c for c in effective(all_changes(conn, meter)) if lo <= float(c.get("at_epoch", 0)) < hi]


#: One good reading's plan registers: (ts, seq, register → (raw, value, unit)).
NearReading = tuple[float, int, dict[str, tuple[Decimal, Decimal, str]]]


def readings_around(conn: sqlite3.Connection, meter: str, at: float, registers: list[str],
                    lookback: int, strictly_after: bool = False) -> tuple[NearReading | None, NearReading | None]:
    """The nearest good stored readings of ``meter`` carrying any of ``registers``: at or before
    ``at`` and at or after it (``strictly_after``: after it), each None when none is found among
    ``lookback`` rows."""

    def first(rows: list[tuple[str]]) -> NearReading | None:
        for (payload,) in rows:
            doc = loads_exact(payload)
            if not isinstance(doc, dict):
                continue
            pts = doc.get("points") or {}
            vals: dict[str, tuple[Decimal, Decimal, str]] = {}
            for name in registers:
                p = pts.get(name)
                if isinstance(p, dict) and p.get("quality") == "good" and isinstance(p.get("raw"), Decimal) \
                        and isinstance(p.get("value"), Decimal):
                    vals[name] = (p["raw"], p["value"], str(p.get("unit", "")))
            if vals:
                return parse_iso(str(doc["ts"])), int(doc["seq"]), vals
        return None

    before = conn.execute(
        f"SELECT {PAYLOAD_SQL} FROM outbox WHERE meter=? AND kind='reading' AND quality='good' AND ts<=? "
        "ORDER BY ts DESC LIMIT ?", (meter, at, lookback)).fetchall()
    after = conn.execute(
        f"SELECT {PAYLOAD_SQL} FROM outbox WHERE meter=? AND kind='reading' AND quality='good' AND "
        + ("ts>? " if strictly_after else "ts>=? ") + "ORDER BY ts LIMIT ?", (meter, at, lookback)).fetchall()
    return first(before), first(after)


def meters_since(conn: sqlite3.Connection) -> dict[tuple[str, str], float]:
    """(meter, plan) → when the gateway first saw the meter on that plan."""
    return {(m, p): float(s) for m, p, s in conn.execute("SELECT meter, plan, since FROM billing_meter")}


def remember_meters(conn: sqlite3.Connection, rows: list[tuple[str, str, float]]) -> None:
    """Record first sightings (existing ones are kept)."""
    conn.executemany("INSERT OR IGNORE INTO billing_meter(meter, plan, since) VALUES (?,?,?)", rows)


def settled_boundaries(conn: sqlite3.Connection, lo: float, hi: float) -> dict[str, list[tuple[float, str]]]:
    """meter → [(boundary, current quality)] for ``lo <= boundary < hi`` (for the KPI)."""
    out: dict[str, list[tuple[float, str]]] = {}
    for m, b, q in conn.execute(
        "SELECT meter, boundary, quality FROM billing_settlement WHERE superseded_by IS NULL "
        "AND boundary>=? AND boundary<?", (lo, hi),
    ):
        out.setdefault(m, []).append((float(b), q))
    return out


__all__ = [
    "SCHEMA",
    "all_changes",
    "attach_history",
    "by_id",
    "create",
    "current_at",
    "current_since",
    "effective",
    "for_meter",
    "for_meters",
    "insert_correction",
    "insert_if_better",
    "insert_ratio_change",
    "meters_since",
    "ratio_change_recorded",
    "ratio_changes",
    "readings_around",
    "remember_meters",
    "set_seq",
    "settled_boundaries",
    "table_exists",
    "unpublished",
]
