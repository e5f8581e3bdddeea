"""``amr-gateway export readings|intervals|settlements|events``: CSV from the local store.

No running gateway is needed: the configuration names the store (``data_dir``), which is
opened **read-only** (SQLite ``mode=ro``; WAL lets a running gateway keep writing beside
it). The columns and rows are those of the API's ``?format=csv`` for the same data
(``/meters/{id}/readings``, ``/intervals``, ``/settlements``, ``/events``), computed by the
same functions (readings: :mod:`gateway.readings_export`, which also holds the CSV dialect),
so an export and an API download agree byte for byte. Without ``--meter`` every meter is
exported (settlements: every meter on a billing plan), one after another.

``--format json`` (readings only) writes JSON Lines: per meter the API's readings document
(``/meters/{id}/readings`` without ``format=csv``), so ``--meter`` with ``--format json``
prints exactly the API's body and a newline.

``--from``/``--to`` take ISO-8601 (a date alone is local midnight, no offset means the
gateway's timezone); default: the 24 hours before now. ``--cycle YYYY-MM`` picks the
settlement cycle (default: every cycle that overlaps the time range); ``--table stages`` writes
the stage consumption, one row per stage with the tariff columns, instead of the settlement
revisions (both ends' qualities, completeness, the reconciliation flag and the stage's flags:
the API's ``/settlements?format=csv&table=stages``); ``--table customers`` writes every
customer's settlement, the API's ``GET /api/v1/settlements`` for billing import (columns:
:mod:`gateway.billing.csvcolumns`, ``csv_version`` 2). "Now" is the later of
the wall clock and the newest stored message, so a store written on an accelerated demo
clock exports whole.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from gateway.errors import ConfigError
from gateway.model import to_json
from gateway.readings_export import (
    READING_CSV_COLUMNS,
    csv_writer,
    iter_readings,
    reading_csv_rows,
    readings_document,
    select_readings,
    write_rows,
)
from gateway.settings import Settings
from gateway.slots import zone
from gateway.storecodec import register

MAX_CYCLES = 24


def parse_when(text: str, name: str, tz: str) -> float:
    """ISO-8601 → epoch seconds (a date alone is local midnight; no offset means ``tz``)."""
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{name} must be ISO-8601 such as 2026-11-01T00:00:00+08:00 or 2026-11-01, "
                          f"not {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=zone(tz))
    return dt.timestamp()


def open_readonly(path: Path) -> sqlite3.Connection:
    """The store at ``path``, read-only; a clear error when it is not there."""
    if not path.exists():
        raise ConfigError(f"no local store at {path}; check data_dir in the configuration "
                          "(the gateway creates the store when it first runs)")
    return register(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0))   # renders compact readings


def _now(conn: sqlite3.Connection) -> float:
    row = conn.execute("SELECT max(ts) FROM outbox").fetchone()
    newest = float(row[0]) if row and row[0] is not None else 0.0
    return max(time.time(), newest + 1.0)


def _meters(settings: Settings, meter: str | None) -> list[str]:
    if meter is None:
        return list(settings.meters)
    if meter not in settings.meters:
        raise ConfigError(f"no meter {meter!r} in the configuration; known: {', '.join(settings.meters)}")
    return [meter]


def export_readings(conn: sqlite3.Connection, meters: list[str], start: float, end: float, out: TextIO) -> int:
    """Raw readings, one row per point: the API's readings CSV (gateway.readings_export), meter after meter."""
    w = csv_writer(out)
    w.writerow(READING_CSV_COLUMNS)
    return sum(write_rows(w, reading_csv_rows(iter_readings(conn, m, start, end))) for m in meters)


def export_readings_json(conn: sqlite3.Connection, meters: list[str], start: float, end: float,
                         out: TextIO) -> int:
    """Readings as JSON Lines: per meter the API's ``/meters/{id}/readings`` document; how many readings."""
    n = 0
    for m in meters:
        docs = select_readings(conn, m, start, end)
        out.write(to_json(readings_document(m, start, end, docs)) + "\n")
        n += len(docs)
    return n


def export_intervals(conn: sqlite3.Connection, settings: Settings, meters: list[str], start: float, end: float,
                     step_text: str, out: TextIO) -> int:
    """Interval consumption (the API's intervals CSV; register columns are the union)."""
    from gateway.billing import intervals as iv

    now = _now(conn)
    results: list[tuple[str, list[str], list[iv.Interval]]] = []
    columns: list[str] = []
    for m in meters:
        ms = settings.meters[m]
        try:
            step = iv.check_step(settings, ms, step_text)
        except iv.StepError as exc:
            if len(meters) == 1:
                raise ConfigError(str(exc)) from None
            continue
        regs, items = iv.intervals_from_db(conn, settings, ms, start, end, step, now)
        results.append((m, regs, items))
        columns.extend(r for r in regs if r not in columns)
    w = csv_writer(out)
    w.writerow([*iv.CSV_FIXED, *columns])
    n = 0
    for m, regs, items in results:
        for row in iv.csv_rows(m, regs, items):
            by = dict(zip(regs, row[len(iv.CSV_FIXED):], strict=True))
            n += write_rows(w, [[*row[: len(iv.CSV_FIXED)], *(by.get(c) for c in columns)]])
    return n


def export_settlements(conn: sqlite3.Connection, settings: Settings, meters: list[str], start: float, end: float,
                       cycle_label: str | None, out: TextIO, table: str = "settlements") -> int:
    """Settlements with history, or (``table="stages"``) stage consumption, for a cycle or the cycles in range.

    The rows are the API's ``/meters/{id}/settlements?format=csv`` (``&table=stages``) for the
    same meter and cycle, from the same :func:`gateway.billing.view.cycle_view`; ``table="customers"``
    writes every customer's settlement as ``GET /api/v1/settlements`` does (``meters`` not used).
    """
    from gateway.billing import view
    from gateway.billing.cycles import CycleError, cycle_at, next_label, parse_label

    if table not in ("settlements", "stages", "customers"):
        raise ConfigError(f"--table must be settlements, stages or customers, not {table!r}")
    tz = settings.gateway.timezone
    now = _now(conn)
    w = csv_writer(out)
    w.writerow(view.SETTLEMENT_CSV if table == "settlements" else view.STAGE_CSV)
    rows_of = view.stage_csv_rows if table == "stages" else view.settlement_csv_rows
    n = 0
    if cycle_label is not None:
        try:
            parse_label(cycle_label)
        except CycleError as exc:
            raise ConfigError(f"--cycle: {exc}") from None
    if table == "customers":
        return _export_customers(conn, settings, start, end, cycle_label, now, w)
    for m in meters:
        ms = settings.meters[m]
        plan = settings.billing.get(ms.billing) if ms.billing else None
        if plan is None:
            continue
        if cycle_label is not None:
            labels = [cycle_label]
        else:
            labels = [cycle_at(plan, start, tz).label]
            last = cycle_at(plan, max(start, end - 1e-3), tz).label
            while labels[-1] != last and len(labels) < MAX_CYCLES:
                labels.append(next_label(labels[-1]))
        for label in labels:
            doc = view.cycle_view(conn, m, plan, label, tz, now, settings)
            n += write_rows(w, rows_of(doc))
    return n


def _export_customers(conn: sqlite3.Connection, settings: Settings, start: float, end: float,
                      cycle_label: str | None, now: float, w: Any) -> int:
    """Every customer's settlement (the API's ``GET /api/v1/settlements`` CSV) for a cycle or the cycles in range."""
    from gateway.billing.customers import customer_csv_rows, customer_plan, customer_view, customers_of
    from gateway.billing.cycles import cycle_at, next_label

    tz = settings.gateway.timezone
    chosen = [(c, p) for c in customers_of(settings).values() if (p := customer_plan(settings, c)) is not None]
    if not chosen:
        return 0
    if cycle_label is not None:
        labels = [cycle_label]
    else:
        plan = chosen[0][1]
        labels = [cycle_at(plan, start, tz).label]
        last = cycle_at(plan, max(start, end - 1e-3), tz).label
        while labels[-1] != last and len(labels) < MAX_CYCLES:
            labels.append(next_label(labels[-1]))
    return sum(write_rows(w, customer_csv_rows(customer_view(conn, settings, c, label, now)))
               for label in labels for c, _ in chosen)


#: option → the one ``export`` kind it applies to (given with another, it would be ignored)
_ONLY_FOR = {"step": ("--step", "intervals"), "cycle": ("--cycle", "settlements"),
             "table": ("--table", "settlements")}


def check_options(args: argparse.Namespace) -> None:
    """The options' own problems, before the configuration or the store is opened (so a bad
    ``--cycle`` is said as such even where no store exists yet, and no CSV header or output
    file is written first): an option of another kind of export (``--step`` on readings,
    which would be ignored), ``--format json`` on anything but readings, a ``--cycle`` that is
    not a month."""
    from gateway.billing.cycles import CycleError, parse_label

    given = vars(args)
    for name, (option, kind) in _ONLY_FOR.items():
        if given.get(name) is not None and args.what != kind:
            raise ConfigError(f"{option} applies to export {kind} only, not to export {args.what}")
    if given.get("format", "csv") == "json" and args.what != "readings":
        raise ConfigError(f"--format json exports readings only; {args.what} are exported as CSV")
    if given.get("cycle") is not None:
        try:
            parse_label(given["cycle"])
        except CycleError as exc:
            raise ConfigError(f"--cycle: {exc}") from None


async def export_csv(args: argparse.Namespace) -> int:
    """Entry point of ``amr-gateway export`` (see the module docstring); returns the exit code."""
    from gateway.config import load_settings
    from gateway.runtime import STORE_FILE

    check_options(args)
    settings = load_settings(args.config)
    tz = settings.gateway.timezone
    db_path = settings.gateway.data_dir / STORE_FILE
    meters = _meters(settings, args.meter)
    end = parse_when(args.end, "--to", tz) if args.end else None
    start = parse_when(args.start, "--from", tz) if args.start else None
    if start is not None and end is not None and start >= end:
        raise ConfigError("--from must be earlier than --to")
    output: Path | None = args.output

    if args.what == "events":
        try:
            from gateway.review.export import export_events
        except ImportError:
            raise ConfigError("this build has no review events to export") from None
        await export_events(db_path, args.meter, start, end, output if output is not None else sys.stdout)
        return 0

    def run() -> int:
        conn = open_readonly(db_path)
        try:
            hi = end if end is not None else _now(conn)
            lo = start if start is not None else hi - 86400.0
            if lo >= hi:
                raise ConfigError("--from must be earlier than --to")
            out: TextIO
            if output is None:
                out = sys.stdout
                return _dispatch(conn, settings, args, meters, lo, hi, out)
            with output.open("w", encoding="utf-8", newline="") as out:
                return _dispatch(conn, settings, args, meters, lo, hi, out)
        finally:
            conn.close()

    rows = await asyncio.get_running_loop().run_in_executor(None, run)
    unit = "readings" if args.what == "readings" and getattr(args, "format", None) == "json" else "rows"
    print(f"{rows} {unit} written" + (f" to {output}" if output is not None else ""), file=sys.stderr)
    return 0


def _dispatch(conn: sqlite3.Connection, settings: Settings, args: argparse.Namespace, meters: list[str],
              lo: float, hi: float, out: TextIO) -> int:
    if args.what == "readings":
        if getattr(args, "format", None) == "json":
            return export_readings_json(conn, meters, lo, hi, out)
        return export_readings(conn, meters, lo, hi, out)
    if args.what == "intervals":
        return export_intervals(conn, settings, meters, lo, hi, args.step or "15m", out)
    if args.what == "settlements":
        return export_settlements(conn, settings, meters, lo, hi, args.cycle, out,
                                  getattr(args, "table", None) or "settlements")
    raise ConfigError(f"cannot export {args.what!r}; choose readings, intervals, settlements or events")


__all__ = ["check_options", "export_csv", "export_intervals", "export_readings", "export_readings_json",
           "export_settlements", "open_readonly", "parse_when"]
