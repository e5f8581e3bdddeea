"""Operator corrections of settlements: manual (on-site, 补抄) readings and confirmations.

Pure: each function checks what an operator sent and builds the new settlement version; the
API routes (:mod:`gateway.api.routes_billing`) store it through
:meth:`gateway.billing.capture.BillingCapture.store_correction`, which supersedes the current
version (never rewriting it) and publishes the new one.

* **Manual reading** (quality ``manual``): registers as the meter shows them (before CT×PT),
  the time they were read and a note; who entered it is the API token's name. It belongs to
  the plan boundary given as ``boundary``, or, without one, to the latest boundary at or
  before ``read_at`` when ``read_at`` is less than one day after it (a reading taken later
  needs an explicit ``boundary``). ``read_at`` may be up to the plan's tolerance before the
  boundary, never in the future.
* **Confirmation**: an operator accepts a ``clock_unverified`` or ``estimated`` value with a
  reason; the new version is the same value with ``confirmed`` (by, at, reason), and a
  ``clock_unverified`` stage end then no longer keeps its stage from being complete.

Every problem raises :class:`CorrectionError` with the HTTP status the API answers and a
sentence saying what to send instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Final

from gateway.billing.capture import factor_of, settlement_body
from gateway.billing.cycles import Boundary, last_boundary_at_or_before
from gateway.billing.settlement import NOT_CUMULATIVE, Draft, RegisterValue, Settlement
from gateway.model import iso_utc
from gateway.settings import BillingPlan
from gateway.slots import zone

if TYPE_CHECKING:
    from gateway.polling import MeterRuntime

#: How long after a boundary a manual reading without ``boundary`` is still taken to be its reading.
DEFAULT_WINDOW_S: Final = 86400.0
MAX_NOTE: Final = 2000
#: Largest register value accepted (a meter shows at most 10 integer digits).
MAX_VALUE: Final = Decimal(10) ** 12


class CorrectionError(Exception):
    """A correction the gateway refuses: ``status`` (400, 404, 409) and what to do instead."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class ManualReading:
    """A checked manual reading: raw registers, when read, the boundary it settles, a note."""

    registers: dict[str, Decimal]
    read_at: float
    boundary: Boundary
    note: str | None


def _bad(message: str) -> CorrectionError:
    return CorrectionError(400, message)


def _time(value: object, name: str, tz: str) -> float:
    if not isinstance(value, str):
        raise _bad(f'"{name}" must be an ISO-8601 time such as 2026-12-11T00:05:00+08:00')
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise _bad(f'"{name}" must be an ISO-8601 time such as 2026-12-11T00:05:00+08:00, not {value!r}') from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=zone(tz))
    if not 1971 <= dt.year <= 2200:
        raise _bad(f'"{name}" must lie between 1971 and 2200, not {value!r}')
    return dt.timestamp()


def _registers(value: object, accepted: list[str]) -> dict[str, Decimal]:
    names = ", ".join(accepted)
    if not isinstance(value, dict) or not value:
        raise _bad(f'"registers" must be an object of register → value as the meter shows it; accepted: {names}')
    out: dict[str, Decimal] = {}
    for name, v in value.items():
        if name not in accepted:
            raise _bad(f"unknown register {name!r} for this meter's billing plan; accepted: {names}")
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise _bad(f'register {name!r} must be a number (such as 1234.56), not {v!r}')
        try:
            d = Decimal(str(v).strip())
        except InvalidOperation:
            raise _bad(f'register {name!r} must be a number (such as 1234.56), not {v!r}') from None
        if not d.is_finite() or d < 0 or d >= MAX_VALUE or (isinstance(v, float) and not math.isfinite(v)):
            raise _bad(f"register {name!r} must be a number from 0 to below {MAX_VALUE}, not {v!r}")
        out[name] = d
    return out


def check_time(value: object, name: str, tz: str) -> float:
    """An ISO-8601 request field as epoch seconds (400 naming the field; naive means the gateway's zone)."""
    return _time(value, name, tz)


def check_registers(value: object, accepted: list[str]) -> dict[str, Decimal]:
    """A request's register → value object as exact Decimals (400 naming what is accepted)."""
    return _registers(value, accepted)


def check_manual(doc: object, plan: BillingPlan, tz: str, now: float) -> ManualReading:
    """Check a manual-reading request body (registers, read_at, note, optional boundary)."""
    if not isinstance(doc, dict):
        raise _bad('send a JSON object such as {"registers": {"energy_import_kwh": 1234.56}, '
                   '"read_at": "2026-12-11T09:30:00+08:00", "note": "read on site"}')
    unknown = sorted(set(doc) - {"registers", "read_at", "note", "boundary"})
    if unknown:
        raise _bad(f"unknown field(s) {', '.join(unknown)}; send registers, read_at, note and optionally boundary")
    accepted = [r for r in plan.registers if r not in NOT_CUMULATIVE]
    registers = _registers(doc.get("registers"), accepted)
    if "read_at" not in doc:
        raise _bad('"read_at" is required: when the registers were read on site (ISO-8601)')
    read_at = _time(doc["read_at"], "read_at", tz)
    if read_at > now:
        raise _bad(f'"read_at" {doc["read_at"]} is in the future (the gateway clock says {iso_utc(now)})')
    note = doc.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE):
        raise _bad(f'"note" must be text of at most {MAX_NOTE} characters')
    if doc.get("boundary") is not None:
        at = _time(doc["boundary"], "boundary", tz)
        b = last_boundary_at_or_before(plan, tz, at)
        if b.ts != at:
            nearest = iso_utc(b.ts)
            raise _bad(f'"boundary" {doc["boundary"]} is not a boundary of plan {plan.name} '
                       f"(the latest one before it is {nearest})")
        if b.ts > now:
            raise _bad(f'"boundary" {doc["boundary"]} has not come yet')
        if read_at < b.ts - plan.tolerance_s:
            raise _bad(f'"read_at" is before the boundary {iso_utc(b.ts)} (more than the plan\'s tolerance): '
                       "a reading taken then is not this boundary's")
    else:
        b = last_boundary_at_or_before(plan, tz, read_at + plan.tolerance_s)
        if read_at - b.ts > DEFAULT_WINDOW_S:
            raise _bad(f'"read_at" is more than a day after the last boundary ({iso_utc(b.ts)}); say which '
                       'boundary the reading settles with "boundary"')
    return ManualReading(registers, read_at, b, note)


def manual_body(m: MeterRuntime, plan: BillingPlan, r: ManualReading, who: str) -> dict[str, Any]:
    """The settlement document of a manual reading (values = raw × the register's CT×PT factor)."""
    regs = {}
    for name, raw in r.registers.items():
        point = m.profile.points.get(name)
        unit = point.unit if point is not None and point.unit else ("kvarh" if "kvarh" in name else "kWh")
        regs[name] = RegisterValue(raw, raw * factor_of(m, name), unit)
    draft = Draft("manual", "manual", regs, read_at=r.read_at, reason=r.note)
    return {**settlement_body(m, plan, r.boundary, draft), "entered_by": who, "note": r.note}


def check_confirm(doc: object) -> str:
    """The reason of a confirmation request (400 without one)."""
    reason = doc.get("reason") if isinstance(doc, dict) else None
    if not isinstance(reason, str) or not reason.strip():
        raise _bad('"reason" is required: say why the value is accepted, e.g. {"reason": "meter clock checked on '
                   'site, 10 min fast; register value confirmed"}')
    if len(reason) > MAX_NOTE:
        raise _bad(f'"reason" must be at most {MAX_NOTE} characters')
    return reason.strip()


def confirm_body(s: Settlement, who: str, reason: str, now: float) -> dict[str, Any]:
    """The confirmed version of ``s`` (same value; 409 when it needs no confirmation or is not current)."""
    if s.superseded_by is not None:
        raise CorrectionError(409, f"settlement {s.id} was superseded (by {s.superseded_by}); confirm the current "
                                   "version, as GET /api/v1/meters/{id}/settlements shows it")
    if not s.needs_confirmation():
        why = "it is already confirmed" if s.confirmed is not None else \
            f"it is {s.quality} and not clock_unverified"
        raise CorrectionError(409, f"settlement {s.id} needs no confirmation: {why}")
    body = {k: v for k, v in s.body.items() if k not in ("revision", "supersedes")}
    body["confirmed"] = {"by": who, "at": iso_utc(now), "reason": reason}
    return body


def boundary_of(s: Settlement) -> Boundary:
    """The plan boundary a stored settlement belongs to."""
    return Boundary(s.cycle, s.index, s.boundary)


__all__ = ["DEFAULT_WINDOW_S", "MAX_NOTE", "CorrectionError", "ManualReading", "boundary_of", "check_confirm",
           "check_manual", "check_registers", "check_time", "confirm_body", "manual_body"]
