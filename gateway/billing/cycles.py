"""Billing-cycle arithmetic: pure functions from a plan and a time zone to boundary instants.

Vocabulary
----------
* A **cycle** is named ``YYYY-MM``: the cycle that *starts* on ``cycle_day`` of that month
  at ``at`` local time (the reading day, 抄表例日). It ends where the next cycle starts.
* **Boundaries** of a cycle: its start (index 0), then one per stage day (index 1..n, in
  the order they occur after the start), then the cycle end (index n+1, which is also the
  next cycle's index 0). ``stages: [11, 21]`` with ``cycle_day: 1`` gives the 1st, 11th,
  21st and next 1st: three stages.
* **Stage** k (1-based) runs from boundary k-1 to boundary k.

Stage days after the start day fall in the start month, earlier ones in the next month
(``cycle_day: 25, stages: [5, 15]``: the 25th, the 5th and 15th of the next month, the next
25th). A day a month does not have (29–31; the configuration allows only 1–28 today, so
this is a guard) falls on that month's last day. Every instant is computed in the plan's
time zone at ``at`` (a wall-clock time that does not exist on a daylight-saving day takes
Python's ``fold=0`` reading), never by adding seconds, so a boundary is always the local
wall-clock time billing agreed on.

Each boundary is stored once per meter and identified by its instant; :class:`Boundary`
also carries the cycle and index it *opens* (a cycle end is stored as the next cycle's
index 0).
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from typing import Final

from gateway.settings import BillingPlan
from gateway.slots import zone

CYCLE_RE: Final = re.compile(r"^(\d{4})-(\d{2})$")
MAX_BOUNDARIES: Final = 10_000     # bound on any boundary listing (≈ 250 years of 3-stage cycles)


@dataclass(frozen=True, slots=True)
class Boundary:
    """One stage boundary: the instant, the cycle it opens a stage in, and that stage's index.

    ``index`` 0 is a cycle start; ``index`` k ≥ 1 opens stage k+1 of ``cycle``.
    """

    cycle: str
    index: int
    ts: float

    @property
    def stage(self) -> int:
        """The (1-based) stage that begins at this boundary."""
        return self.index + 1


@dataclass(frozen=True, slots=True)
class Cycle:
    """A billing cycle of a plan: its label and every boundary from start to end inclusive."""

    label: str
    boundaries: tuple[float, ...]     # start, stage boundaries…, end

    @property
    def start(self) -> float:
        """The cycle's first instant."""
        return self.boundaries[0]

    @property
    def end(self) -> float:
        """The next cycle's start (exclusive end of this one)."""
        return self.boundaries[-1]

    @property
    def stages(self) -> int:
        """How many stages the cycle has."""
        return len(self.boundaries) - 1

    def stage_at(self, t: float) -> int:
        """The 1-based stage containing ``t`` (``start <= t < end`` is the caller's promise)."""
        for k in range(1, len(self.boundaries)):
            if t < self.boundaries[k]:
                return k
        return self.stages

    def boundary(self, index: int) -> Boundary:
        """Boundary ``index`` (0..stages) as stored: the end is the next cycle's index 0."""
        if index == self.stages:
            return Boundary(next_label(self.label), 0, self.end)
        return Boundary(self.label, index, self.boundaries[index])


class CycleError(ValueError):
    """A cycle label that is not ``YYYY-MM``."""


def parse_label(label: str) -> tuple[int, int]:
    """``"2026-11"`` → (2026, 11); raises :class:`CycleError` with a sentence otherwise."""
    m = CYCLE_RE.match(label.strip())
    if m is None:
        raise CycleError(f"a billing cycle is written YYYY-MM, such as 2026-11, not {label!r}")
    year, month = int(m.group(1)), int(m.group(2))
    if not 1 <= month <= 12:
        raise CycleError(f"{label!r} is not a month: write YYYY-MM with a month from 01 to 12")
    if not 1900 <= year <= 9998:
        raise CycleError(f"{label!r} is not a billing cycle: the year must be between 1900 and 9998, "
                         "such as 2026-11")
    return year, month


def label_of(year: int, month: int) -> str:
    """(2026, 11) → ``"2026-11"``."""
    return f"{year:04d}-{month:02d}"


def next_label(label: str) -> str:
    """The cycle after ``label``."""
    y, m = parse_label(label)
    return label_of(y + (m == 12), m % 12 + 1)


def prev_label(label: str) -> str:
    """The cycle before ``label``."""
    y, m = parse_label(label)
    return label_of(y - (m == 1), (m - 2) % 12 + 1)


def day_in_month(year: int, month: int, day: int) -> date:
    """``day`` of that month, or the month's last day when it has fewer days."""
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


def _local(d: date, plan: BillingPlan, tz: str) -> float:
    return datetime(d.year, d.month, d.day, plan.at.hour, plan.at.minute, plan.at.second,
                    tzinfo=zone(tz)).timestamp()


@lru_cache(maxsize=4096)
def _cycle_cached(plan: BillingPlan, label: str, tz: str) -> Cycle:
    y, m = parse_label(label)
    start_day = day_in_month(y, m, plan.cycle_day)
    ny, nm = (y + (m == 12), m % 12 + 1)
    days: list[date] = [start_day]
    for d in plan.stages:
        on = day_in_month(y, m, d) if d > plan.cycle_day else day_in_month(ny, nm, d)
        if days[-1] < on:
            days.append(on)
    end_day = day_in_month(ny, nm, plan.cycle_day)
    if days[-1] < end_day:
        days.append(end_day)
    return Cycle(label, tuple(_local(d, plan, tz) for d in days))


def cycle(plan: BillingPlan, label: str, tz: str) -> Cycle:
    """The cycle ``label`` (``YYYY-MM``) of ``plan`` in time zone ``tz``."""
    return _cycle_cached(plan, label, tz)


def cycle_at(plan: BillingPlan, t: float, tz: str) -> Cycle:
    """The cycle containing instant ``t`` (``start <= t < end``)."""
    local = datetime.fromtimestamp(t, zone(tz))
    label = label_of(local.year, local.month)
    c = cycle(plan, label, tz)
    for _ in range(3):
        if t < c.start:
            c = cycle(plan, prev_label(c.label), tz)
        elif t >= c.end:
            c = cycle(plan, next_label(c.label), tz)
        else:
            break
    return c


def boundaries_between(plan: BillingPlan, tz: str, after: float, upto: float) -> list[Boundary]:
    """Every boundary with ``after < ts <= upto``, oldest first (at most MAX_BOUNDARIES)."""
    out: list[Boundary] = []
    if upto <= after:
        return out
    c = cycle_at(plan, after, tz)
    while len(out) < MAX_BOUNDARIES:
        for i in range(c.stages):
            ts = c.boundaries[i]
            if ts > upto:
                return out
            if ts > after:
                out.append(Boundary(c.label, i, ts))
        c = cycle(plan, next_label(c.label), tz)
    return out


def last_boundary_at_or_before(plan: BillingPlan, tz: str, t: float) -> Boundary:
    """The latest boundary not after ``t`` (the start of the stage containing ``t``)."""
    c = cycle_at(plan, t, tz)
    k = c.stage_at(t)
    return Boundary(c.label, k - 1, c.boundaries[k - 1])


def next_boundary_after(plan: BillingPlan, tz: str, t: float) -> Boundary:
    """The first boundary strictly after ``t``."""
    c = cycle_at(plan, t, tz)
    k = c.stage_at(t)
    return c.boundary(k)


def local_date_of(ts: float, tz: str) -> date:
    """The local calendar date of instant ``ts``."""
    return datetime.fromtimestamp(ts, zone(tz)).date()


__all__ = [
    "Boundary",
    "Cycle",
    "CycleError",
    "boundaries_between",
    "cycle",
    "cycle_at",
    "day_in_month",
    "label_of",
    "last_boundary_at_or_before",
    "local_date_of",
    "next_boundary_after",
    "next_label",
    "parse_label",
    "prev_label",
]
