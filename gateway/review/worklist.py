"""The reviewer's worklist: every raised event is an item, ``open`` → ``acknowledged`` → ``closed``.

Pure state machine (no I/O); :mod:`gateway.review.db` stores items, the engine publishes
and audits each change, the API exposes ``POST /api/v1/events/{id}/ack`` and ``/close``.

* ``open``: raised, nobody has looked at it yet (an event without a stored item is open);
* ``acknowledged``: an operator took it (who, when, an optional note); acknowledging again
  is refused (the first acknowledgement stands; a note belongs to it);
* ``closed``: the condition cleared (closed by ``rule``, naming the clearing event) or an
  operator closed it with a reason (a known cause, a meter replaced ...). A closed item
  stays closed: the rule does not reopen it, a condition that comes back is a new event.

Cleared events are not items: they close the item of the event they clear.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Final, Literal

from gateway.errors import AmrError
from gateway.model import iso_utc

WorkState = Literal["open", "acknowledged", "closed"]
WORK_STATES: Final = ("open", "acknowledged", "closed")
RULE_ACTOR: Final = "rule"

#: How urgent each event type is for a reviewer: ``high`` can change a bill or shows
#: tampering, ``medium`` needs a look before billing, ``low`` is housekeeping.
SEVERITY: Final[dict[str, str]] = {
    **dict.fromkeys(("register_decrease", "meter_stopped", "meter_fast", "reverse_energy", "cover_open",
                     "terminal_cover_open", "meter_clear", "current_reversal", "bus_failure"), "high"),
    **dict.fromkeys(("read_failure", "phase_loss", "voltage_loss", "zero_consumption", "consumption_jump",
                     "demand_over_contract", "tariff_sum_mismatch", "programming", "demand_clear", "clock_set",
                     "stage_change", "cycle_change", "freeze_mismatch"), "medium"),
    **dict.fromkeys(("clock_deviation", "low_power_factor"), "low"),
}
SEVERITIES: Final = ("high", "medium", "low")


def severity(event_type: str) -> str:
    """The severity of an event type (``medium`` for one this table does not know)."""
    return SEVERITY.get(event_type, "medium")


class WorklistError(AmrError):
    """A worklist change that the item's state does not allow (the API answers 409)."""


@dataclass(frozen=True, slots=True)
class WorkItem:
    """The worklist state of one raised event."""

    event_id: int
    state: WorkState = "open"
    acknowledged_by: str | None = None
    acknowledged_at: float | None = None
    note: str | None = None
    closed_by: str | None = None
    closed_at: float | None = None
    reason: str | None = None
    cleared_by_event: int | None = None

    def doc(self) -> dict[str, object]:
        """The item as the API and MQTT show it (times ISO-8601 UTC)."""
        d = asdict(self)
        for k in ("acknowledged_at", "closed_at"):
            v = d[k]
            d[k] = None if v is None else iso_utc(float(v))
        return d


def acknowledge(item: WorkItem, who: str, at: float, note: str | None) -> WorkItem:
    """``open`` → ``acknowledged`` by ``who`` at ``at`` with an optional note."""
    if item.state == "closed":
        raise WorklistError(f"event {item.event_id} is closed ({item.reason}); nothing to acknowledge")
    if item.state == "acknowledged":
        raise WorklistError(f"event {item.event_id} was already acknowledged by {item.acknowledged_by} at "
                            f"{iso_utc(item.acknowledged_at or 0)}")
    return replace(item, state="acknowledged", acknowledged_by=who, acknowledged_at=at, note=note)


def close(item: WorkItem, who: str, at: float, reason: str) -> WorkItem:
    """``open`` or ``acknowledged`` → ``closed`` by an operator, with the reason."""
    if not reason.strip():
        raise WorklistError("closing an event needs a reason (what was found, what was done)")
    if item.state == "closed":
        raise WorklistError(f"event {item.event_id} is already closed by {item.closed_by} ({item.reason})")
    return replace(item, state="closed", closed_by=who, closed_at=at, reason=reason)


def close_cleared(item: WorkItem, at: float, cleared_event: int) -> WorkItem | None:
    """Close an item because its condition cleared (None: it was already closed)."""
    if item.state == "closed":
        return None
    return replace(item, state="closed", closed_by=RULE_ACTOR, closed_at=at, reason="condition cleared",
                   cleared_by_event=cleared_event)
