"""Interval data: per-slot consumption from cumulative register differences at aligned slots.

Each interval ``[s, next(s))`` on the step's grid (15m/30m/1h/1d, aligned in the gateway's
time zone) is:

``complete``
    both ends have a good reading: consumption = value(end) − value(start) per register,
    where value is the register after CT×PT as stored with the reading.
``missing``
    its end has no good reading. Nothing is filled in: no value, no interpolation.
``spans_gap``
    its end has a good reading but its start has none; the interval carries the whole
    difference back to the last good slot before it (``span_start``). The consumption is
    real (a register difference) but known only across several slots, which the missing
    intervals before it show.

Ends are the readings of the meter's *energy schedules* (those whose points include energy
registers) taken at grid slots; a reading stands for its slot (``slot``), and ``ts`` is
when it was read. Two ends taken under different CT/PT (a ratio change) are never
differenced: that interval is ``missing`` with a note.

The SQL helpers take a ``sqlite3.Connection`` so the API (on the store's reader thread) and
``amr-gateway export`` (read-only, no gateway) compute the same intervals.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final, Literal

from gateway.model import iso_utc, loads_exact, parse_iso
from gateway.pipeline import select_points
from gateway.settings import MeterSettings, Settings
from gateway.slots import format_duration, next_slot, slot_at_or_before, slots_between
from gateway.storecodec import PAYLOAD_SQL

IntervalStatus = Literal["complete", "missing", "spans_gap"]
STEPS: Final[dict[str, float]] = {"15m": 900.0, "30m": 1800.0, "1h": 3600.0, "1d": 86400.0}
LOOKBACK_ROWS: Final = 2000          # rows scanned backwards for the last good end before a range
MAX_READINGS: Final = 200_000


@dataclass(frozen=True, slots=True)
class End:
    """A good reading at a grid slot: the register values (after CT×PT) that bound intervals."""

    slot: float
    ts: float
    seq: int
    values: dict[str, Decimal]
    multiplier: tuple[Decimal, Decimal] | None = None


@dataclass(frozen=True, slots=True)
class Interval:
    """One interval of the grid with its status and (when known) consumption per register."""

    start: float
    end: float
    status: IntervalStatus
    consumption: dict[str, Decimal | None] = field(default_factory=dict)
    span_start: float | None = None
    note: str | None = None

    def doc(self) -> dict[str, object]:
        """JSON-ready form (times ISO-8601 UTC)."""
        return {
            "start": iso_utc(self.start),
            "end": iso_utc(self.end),
            "status": self.status,
            "span_start": None if self.span_start is None else iso_utc(self.span_start),
            "consumption": dict(self.consumption),
            "note": self.note,
        }


def compute_intervals(
    grid: list[float], next_of: Mapping[float, float], ends: Mapping[float, End], before: End | None,
    registers: list[str],
) -> list[Interval]:
    """Intervals for the grid slots ``grid`` (each ends at ``next_of[slot]``); pure.

    ``ends`` maps grid slots to good readings; ``before`` is the latest good end at or
    before ``grid[0]`` (it may be ``grid[0]`` itself), so a gap that began before the range
    still gets its ``spans_gap`` interval.
    """
    out: list[Interval] = []
    last_good = before
    for s in grid:
        e = next_of[s]
        end_pt = ends.get(e)
        start_pt = ends.get(s)
        if start_pt is not None:
            last_good = start_pt
        if end_pt is None:
            out.append(Interval(s, e, "missing", dict.fromkeys(registers)))
            continue
        if last_good is None:
            out.append(Interval(s, e, "missing", dict.fromkeys(registers),
                                note="no good reading before this interval's end to difference against"))
        elif last_good.multiplier != end_pt.multiplier:
            out.append(Interval(s, e, "missing", dict.fromkeys(registers),
                                note="CT/PT changed between the two readings; the difference is not consumption"))
        else:
            cons: dict[str, Decimal | None] = {}
            for r in registers:
                a = last_good.values.get(r)
                b = end_pt.values.get(r)
                cons[r] = None if a is None or b is None else b - a
            if last_good.slot == s:
                out.append(Interval(s, e, "complete", cons))
            else:
                out.append(Interval(s, e, "spans_gap", cons, span_start=last_good.slot))
        last_good = end_pt
    return out


def energy_schedules(settings: Settings, meter: MeterSettings) -> tuple[list[str], list[str], float | None]:
    """(schedules whose points include energy registers, those registers, shortest period)."""
    profile = settings.profiles[meter.profile]
    names = list(profile.points)
    scheds: list[str] = []
    regs: list[str] = []
    every: float | None = None
    for sname in meter.schedules:
        sched = settings.schedules.get(sname)
        if sched is None:
            continue
        chosen = [n for n in select_points(names, sched.points) if n.startswith("energy_")]
        if not chosen:
            continue
        scheds.append(sname)
        regs.extend(n for n in chosen if n not in regs)
        every = sched.every_s if every is None else min(every, sched.every_s)
    return scheds, regs, every


class StepError(ValueError):
    """A step the meter's schedules cannot give (the message is a sentence for a 400)."""


def check_step(settings: Settings, meter: MeterSettings, step_text: str) -> float:
    """The step in seconds, or :class:`StepError` saying why it cannot be served."""
    step = STEPS.get(step_text)
    if step is None:
        raise StepError(f"'step' must be one of {', '.join(STEPS)}, not {step_text!r}")
    scheds, _, _ = energy_schedules(settings, meter)
    if not scheds:
        raise StepError(f"meter {meter.id} has no schedule that reads energy registers, so it has no interval data")
    for sname in scheds:
        sched = settings.schedules[sname]
        if sched.aligned and sched.offset_s == 0 and step % sched.every_s == 0:
            return step
    periods = ", ".join(format_duration(settings.schedules[s].every_s) for s in scheds)
    raise StepError(f"step {step_text} does not fall on meter {meter.id}'s energy reads (every {periods}); "
                    "ask for a step that is a multiple of the read interval")


def grid_for(start: float, end: float, step: float, tz: str, now: float) -> tuple[list[float], dict[float, float]]:
    """Grid slots with ``start <= slot < end`` whose interval has ended by ``now``."""
    grid: list[float] = []
    nxt: dict[float, float] = {}
    for s in slots_between(start, end, step, tz):
        e = next_slot(s, step, tz)
        if e > now:
            break
        grid.append(s)
        nxt[s] = e
    return grid, nxt


def _end_of(slot: float, payload: str, registers: list[str]) -> End | None:
    doc = loads_exact(payload)
    if not isinstance(doc, dict) or doc.get("quality") != "good":
        return None
    points = doc.get("points") or {}
    values: dict[str, Decimal] = {}
    for r in registers:
        p = points.get(r)
        if isinstance(p, dict) and p.get("quality") == "good" and isinstance(p.get("value"), Decimal):
            values[r] = p["value"]
    if not values:
        return None
    mult = doc.get("multiplier") or {}
    m = (Decimal(mult.get("ct", 1)), Decimal(mult.get("pt", 1))) if isinstance(mult, dict) else None
    return End(slot, parse_iso(str(doc["ts"])), int(doc["seq"]), values, m)


def _sched_clause(schedules: list[str]) -> str:
    return ",".join("?" for _ in schedules)


def load_ends(
    conn: sqlite3.Connection, meter: str, schedules: list[str], registers: list[str],
    grid_slots: Iterable[float], lo: float, hi: float,
) -> dict[float, End]:
    """Good readings of the energy schedules at the given slots (``lo <= slot <= hi``)."""
    wanted = set(grid_slots)
    out: dict[float, End] = {}
    if not schedules or not wanted:
        return out
    cur = conn.execute(
        f"SELECT slot, {PAYLOAD_SQL} FROM outbox WHERE meter=? AND kind='reading' AND slot>=? AND slot<=? "
        f"AND quality='good' AND schedule IN ({_sched_clause(schedules)}) ORDER BY slot, seq LIMIT ?",
        (meter, lo, hi, *schedules, MAX_READINGS),
    )
    for slot, payload in cur:
        s = float(slot)
        if s in wanted and s not in out:
            end = _end_of(s, payload, registers)
            if end is not None:
                out[s] = end
    return out


def load_before(
    conn: sqlite3.Connection, meter: str, schedules: list[str], registers: list[str], at: float,
    step: float, tz: str,
) -> End | None:
    """The latest good grid reading with ``slot <= at`` (bounded look-back)."""
    if not schedules:
        return None
    cur = conn.execute(
        f"SELECT slot, {PAYLOAD_SQL} FROM outbox WHERE meter=? AND kind='reading' AND slot<=? "
        f"AND quality='good' AND schedule IN ({_sched_clause(schedules)}) ORDER BY slot DESC, seq LIMIT ?",
        (meter, at, *schedules, LOOKBACK_ROWS),
    )
    for slot, payload in cur:
        s = float(slot)
        if slot_at_or_before(s, step, tz) != s:
            continue
        end = _end_of(s, payload, registers)
        if end is not None:
            return end
    return None


def intervals_from_db(
    conn: sqlite3.Connection, settings: Settings, meter: MeterSettings, start: float, end: float,
    step: float, now: float,
) -> tuple[list[str], list[Interval]]:
    """(registers, intervals) of one meter for ``start <= slot < end``, from the store."""
    tz = settings.gateway.timezone
    scheds, regs, _ = energy_schedules(settings, meter)
    grid, nxt = grid_for(start, end, step, tz, now)
    if not grid:
        return regs, []
    edges = set(grid) | set(nxt.values())
    ends = load_ends(conn, meter.id, scheds, regs, edges, grid[0], max(nxt.values()))
    before = ends.get(grid[0]) or load_before(conn, meter.id, scheds, regs, grid[0], step, tz)
    return regs, compute_intervals(grid, nxt, ends, before, regs)


CSV_FIXED: Final = ("meter", "start", "end", "status", "span_start")


def csv_rows(meter: str, registers: list[str], intervals: list[Interval]) -> Iterable[list[object]]:
    """Rows for the intervals CSV: fixed columns, then one column per register."""
    for iv in intervals:
        yield [meter, iso_utc(iv.start), iso_utc(iv.end), iv.status,
               None if iv.span_start is None else iso_utc(iv.span_start),
               *(iv.consumption.get(r) for r in registers)]


__all__ = [
    "CSV_FIXED",
    "STEPS",
    "End",
    "Interval",
    "StepError",
    "check_step",
    "compute_intervals",
    "csv_rows",
    "energy_schedules",
    "grid_for",
    "intervals_from_db",
    "load_before",
    "load_ends",
]
