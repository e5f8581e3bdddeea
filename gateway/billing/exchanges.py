"""Meter exchanges (换表) and operator-entered CT/PT changes: checked requests and their records.

Pure: each function checks what an operator sent against what is already recorded (the meter's
earlier changes, its stored readings around the change) and builds the dated record kept in
``billing_ratio_change`` (:mod:`gateway.billing.db`); the API routes
(:mod:`gateway.api.routes_changes`) store it through
:meth:`gateway.billing.capture.BillingCapture.store_change`, which also raises the review event
(``meter_exchange`` / ``ratio_change``) and the audit entry is written by the route.

* **Exchange** (``kind: exchange``): when (``at``), the old meter's final registers and the new
  meter's initial registers as the meters show them (before CT×PT), one per cumulative register
  of the meter's billing plan; the new meter's serial; its CT and PT ratios (default: the ones in
  force, as usual when only the meter is replaced). Per register the record keeps
  ``value_old`` = old final × the old ratio's factor and ``value_new`` = new initial × the new
  one's, so a stage spanning it is (old final − start) × old + (end − new initial) × new
  (:func:`gateway.billing.settlement.stage_consumption`, code ``exchange``).
* **Ratio change** (``kind: ratio_change``): when, the new CT and/or PT ratio, and the registers
  the meter showed at that moment (required: without them the stage could not be split). The
  record has the shape of the one the gateway takes by itself when it starts under a changed
  configured ratio, so both split stages the same way (code ``ratio_change``).

**The ratio in force** at a time is the new ratio of the latest change at or before it, else the
old ratio of the first change after it, else the configured one (:func:`ratio_in_force`).

**Order.** Changes are entered in time order: one dated at or before the latest recorded change
of the meter is refused (409) — except when that later record is the one the gateway took by
itself at a restart for the same new ratio: the operator's record then gives the change its real
time and registers and ``supersedes`` the automatic one (which stays stored, unused).

Every problem raises :class:`~gateway.billing.corrections.CorrectionError` with the HTTP status
(400 bad request, 409 conflicts with what is recorded) and a sentence saying what to send.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Literal

from gateway.billing.corrections import MAX_NOTE, CorrectionError, check_registers, check_time
from gateway.billing.db import NearReading, effective
from gateway.billing.settlement import NOT_CUMULATIVE
from gateway.config.meters import parse_ratio
from gateway.model import iso_utc
from gateway.multiplier import register_factor
from gateway.settings import BillingPlan

if TYPE_CHECKING:
    from gateway.polling import MeterRuntime

ChangeKind = Literal["exchange", "ratio_change"]
#: Longest new serial accepted.
MAX_SERIAL: Final = 64
_EXCHANGE_FIELDS: Final = frozenset({"at", "old_final", "new_initial", "new_serial", "ct", "pt", "note"})
_RATIO_FIELDS: Final = frozenset({"at", "ct", "pt", "registers", "note"})


def _bad(message: str) -> CorrectionError:
    return CorrectionError(400, message)


@dataclass(frozen=True, slots=True)
class ChangeRequest:
    """A request whose shape is checked: kind, when, the registers and the ratios it names."""

    kind: ChangeKind
    at: float
    #: exchange: old final / new initial; ratio_change: the same registers at the change, twice
    before: dict[str, Decimal]
    after: dict[str, Decimal]
    ct: str | None
    pt: str | None
    new_serial: str | None
    note: str | None

    @property
    def registers(self) -> list[str]:
        """The registers the request gives (the same on both sides)."""
        return [r for r in self.before if r in self.after]


def plan_registers(plan: BillingPlan) -> list[str]:
    """The cumulative registers of a plan: those a change must give (each splits the stage)."""
    return [r for r in plan.registers if r not in NOT_CUMULATIVE]


def _all_registers(value: object, field: str, accepted: list[str], required: list[str]) -> dict[str, Decimal]:
    if value is None:
        raise _bad(f'"{field}" is required: register → value as the meter shows it, for every register of the '
                   f"plan ({', '.join(required)})")
    regs = check_registers(value, accepted)
    missing = [r for r in required if r not in regs]
    if missing:
        raise _bad(f'"{field}" lacks {", ".join(missing)}: give every register of the billing plan, each splits '
                   "the stage")
    return regs


def _ratio_text(value: object, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _bad(f'"{field}" must be a ratio such as "400/5" or a factor such as 80, not {value!r}')
    try:
        ratio = parse_ratio(str(value))
    except ValueError:
        raise _bad(f'"{field}" must be a ratio such as "400/5" or a factor such as 80, not {value!r}') from None
    if ratio.primary < ratio.secondary:
        raise _bad(f'"{field}" {value} is inverted: write primary/secondary, e.g. {ratio.secondary}/{ratio.primary}')
    return str(value).strip()


def check_request(kind: ChangeKind, doc: object, plan: BillingPlan, tz: str, now: float,
                  has: Collection[str] | None = None) -> ChangeRequest:
    """Check the shape of an exchange or ratio-change request body (400 on any problem).

    Every cumulative register of the plan is required, except those the meter's profile does
    not read (``has``: its points; None: all required); any plan register is accepted.
    """
    fields = _EXCHANGE_FIELDS if kind == "exchange" else _RATIO_FIELDS
    if not isinstance(doc, dict):
        example = ('{"at": "2026-12-15T10:30:00+08:00", "old_final": {"energy_import_kwh": 12345.67}, '
                   '"new_initial": {"energy_import_kwh": 0.5}, "new_serial": "3412009876", "note": "..."}'
                   if kind == "exchange" else
                   '{"at": "2026-12-15T10:30:00+08:00", "ct": "400/5", "registers": {"energy_import_kwh": 12345.67}}')
        raise _bad(f"send a JSON object such as {example}")
    unknown = sorted(set(doc) - fields)
    if unknown:
        raise _bad(f"unknown field(s) {', '.join(unknown)}; send {', '.join(sorted(fields))}")
    if "at" not in doc:
        raise _bad('"at" is required: when the change was made (ISO-8601)')
    at = check_time(doc["at"], "at", tz)
    if at > now:
        raise _bad(f'"at" {doc["at"]} is in the future (the gateway clock says {iso_utc(now)}); enter a change once '
                   "it is made")
    accepted = plan_registers(plan)
    required = [r for r in accepted if has is None or r in has] or accepted
    ct, pt = _ratio_text(doc.get("ct"), "ct"), _ratio_text(doc.get("pt"), "pt")
    note = doc.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE):
        raise _bad(f'"note" must be text of at most {MAX_NOTE} characters')
    if kind == "exchange":
        before = _all_registers(doc.get("old_final"), "old_final", accepted, required)
        after = _all_registers(doc.get("new_initial"), "new_initial", accepted, required)
        serial = doc.get("new_serial")
        if not isinstance(serial, str) or not serial.strip() or len(serial) > MAX_SERIAL:
            raise _bad(f'"new_serial" is required: the new meter\'s serial number (text, at most {MAX_SERIAL} '
                       "characters)")
        return ChangeRequest(kind, at, before, after, ct, pt, serial.strip(), note)
    if ct is None and pt is None:
        raise _bad('give the new "ct" and/or "pt" ratio (such as "400/5")')
    regs = _all_registers(doc.get("registers"), "registers", accepted, required)
    return ChangeRequest(kind, at, regs, dict(regs), ct, pt, None, note)


def _epoch(change: dict[str, Any]) -> float:
    return float(change.get("at_epoch", 0))


def _multiplier(side: object) -> Decimal | None:
    m = side.get("multiplier") if isinstance(side, dict) else None
    return None if m is None else Decimal(m)


def ratio_in_force(changes: list[dict[str, Any]], at: float, configured: dict[str, Any]) -> dict[str, Any]:
    """The ratios (``ct``, ``pt`` factors, ``multiplier``) in force at ``at`` (see the module doc)."""
    eff = effective(changes)
    before = [c for c in eff if _epoch(c) <= at]
    if before:
        return dict(before[-1]["new"])
    after = [c for c in eff if _epoch(c) > at]
    if after:
        return dict(after[0]["old"])
    return dict(configured)


def configured_ratio(m: MeterRuntime) -> dict[str, Any]:
    """The meter's configured ratios as a change record's side."""
    ct, pt = m.settings.ct_ratio, m.settings.pt_ratio
    return {"ct": ct.factor, "pt": pt.factor, "multiplier": ct.factor * pt.factor, "ct_ratio": str(ct),
            "pt_ratio": str(pt)}


def _side(text_ct: str | None, text_pt: str | None, base: dict[str, Any]) -> dict[str, Any]:
    ct = parse_ratio(text_ct).factor if text_ct is not None else Decimal(base["ct"])
    pt = parse_ratio(text_pt).factor if text_pt is not None else Decimal(base["pt"])
    side: dict[str, Any] = {"ct": ct, "pt": pt, "multiplier": ct * pt}
    side["ct_ratio"] = text_ct if text_ct is not None else base.get("ct_ratio")
    side["pt_ratio"] = text_pt if text_pt is not None else base.get("pt_ratio")
    return side


def _order(req: ChangeRequest, changes: list[dict[str, Any]], new_multiplier: Decimal) -> int | None:
    """The automatic record this one supersedes, if any; 409 when it is out of order."""
    later = [c for c in effective(changes) if _epoch(c) >= req.at]
    if not later:
        return None
    last = later[-1]
    automatic = last.get("entered_by") is None and last.get("kind", "ratio_change") == "ratio_change"
    if len(later) == 1 and automatic and _multiplier(last.get("new")) == new_multiplier:
        return int(last["id"])
    what = "exchange" if last.get("kind") == "exchange" else "CT/PT change"
    raise CorrectionError(409, f'"at" {iso_utc(req.at)} is not after the previous {what} of this meter, recorded at '
                               f"{last.get('at')} (record {last.get('id')}); changes are entered in time order")


def _bounds(req: ChangeRequest, near: tuple[NearReading | None, NearReading | None]) -> None:
    """409 when the registers contradict the stored readings around the change."""
    before, after = near
    old_name = "old_final" if req.kind == "exchange" else "registers"
    new_name = "new_initial" if req.kind == "exchange" else "registers"
    if before is not None:
        ts, _, vals = before
        for name, v in req.before.items():
            if name in vals and v < vals[name][0]:
                raise CorrectionError(409, f'"{old_name}" {name} {v} is lower than the meter\'s last recorded reading '
                                           f"before the change ({vals[name][0]} at {iso_utc(ts)}); check the value "
                                           "read on the meter")
    if after is not None:
        ts, _, vals = after
        for name, v in req.after.items():
            if name in vals and v > vals[name][0]:
                raise CorrectionError(409, f'"{new_name}" {name} {v} is higher than the reading recorded after the '
                                           f"change ({vals[name][0]} at {iso_utc(ts)}); check the value read on the "
                                           "meter and the time of the change")


def change_body(req: ChangeRequest, m: MeterRuntime, changes: list[dict[str, Any]],
                near: tuple[NearReading | None, NearReading | None], who: str) -> dict[str, Any]:
    """The stored record of a checked request (409 when it conflicts with what is recorded).

    ``changes``: every recorded change of the meter (:func:`gateway.billing.db.all_changes`);
    ``near``: its stored readings just before and after ``req.at`` (:func:`gateway.billing.db.readings_around`).
    """
    old = ratio_in_force(changes, req.at, configured_ratio(m))
    new = _side(req.ct, req.pt, old)
    if req.kind == "ratio_change" and (new["ct"], new["pt"]) == (Decimal(old["ct"]), Decimal(old["pt"])):
        raise _bad(f"the ratio in force at {iso_utc(req.at)} is already CT {old.get('ct_ratio') or old['ct']}, PT "
                   f"{old.get('pt_ratio') or old['pt']}; nothing changes")
    supersedes = _order(req, changes, Decimal(new["multiplier"]))
    if supersedes is not None:
        old = dict(next(c for c in changes if c.get("id") == supersedes)["old"])
        new = _side(req.ct, req.pt, old)
    _bounds(req, near)
    registers: dict[str, dict[str, Any]] = {}
    for name in req.registers:
        point = m.profile.points.get(name)
        unit = point.unit if point is not None and point.unit else ("kvarh" if "kvarh" in name else "kWh")
        f_old = register_factor(m.profile, name, Decimal(old["ct"]), Decimal(old["pt"]))
        f_new = register_factor(m.profile, name, Decimal(new["ct"]), Decimal(new["pt"]))
        raw_old, raw_new = req.before[name], req.after[name]
        if req.kind == "exchange":
            registers[name] = {"raw_old": raw_old, "raw_new": raw_new, "value_old": raw_old * f_old,
                               "value_new": raw_new * f_new, "unit": unit}
        else:
            registers[name] = {"raw": raw_old, "value_old": raw_old * f_old, "value_new": raw_new * f_new,
                               "unit": unit}
    body: dict[str, Any] = {
        "kind": req.kind, "meter": m.id, "at": iso_utc(req.at), "at_epoch": Decimal(repr(req.at)),
        "old": old, "new": new, "read_at": iso_utc(req.at), "registers": registers, "reason": None,
        "entered_by": who, "note": req.note,
    }
    if req.kind == "exchange":
        previous = [c for c in effective(changes) if c.get("kind") == "exchange" and _epoch(c) < req.at]
        body["old_serial"] = previous[-1].get("new_serial") if previous else m.settings.address
        body["new_serial"] = req.new_serial
    if supersedes is not None:
        body["supersedes"] = supersedes
    return body


__all__ = ["ChangeKind", "ChangeRequest", "change_body", "check_request", "configured_ratio", "plan_registers",
           "ratio_in_force"]
