"""When a meter's event counter rises, its last event record is read in the same poll.

A profile maps a meter's event counters as points (``event_<stem>_count``: the DL/T 645-2007
class 03 counts, the DL/T 698.45 class 7 current counts, a Modbus meter's alarm counters).
Reading every record every poll would cost a transaction per event kind per meter; reading
none leaves the review without the strongest evidence of tampering (when the cover was
opened, when it was closed, the registers then). So the bus worker
(:mod:`gateway.polling`) follows the design rule of docs/billing-rules.md §2: after a good
read, each counter is compared with the last one seen, and for every counter that rose —
and every record read earlier whose event had not ended yet (a cover still open) — the
meter's last record is fetched through the protocol's
:class:`~drivers.base.EventRecordReader` capability. The record joins the reading as points:

* ``event_<stem>_start`` / ``event_<stem>_end``: meter-local ISO times (``""`` while it lasts);
* ``event_<stem>_<register>``: the registers the meter kept in the record, as it shows them
  (secondary values: the record is evidence, not a billing value).

The first counter seen is a baseline and fetches nothing (the review treats it the same
way); after a restart the baseline is the review's memory of the counters, handed over at
the engine's start, so a rise during the downtime still fetches its record. A record that
cannot be read (timeout, refused) costs the reading nothing: the counter is still reported,
and the record is tried again at the next poll.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from drivers.base import EventRecord, EventRecordReader
from gateway.errors import AmrError
from gateway.model import PointResult

log = logging.getLogger("amr.poll")

_PREFIX = "event_"
_COUNT = "_count"


@dataclass(slots=True)
class EventWatch:
    """One meter's event counters as last seen, and the records to fetch (again) next poll."""

    counts: dict[str, int] = field(default_factory=dict)
    #: stems whose record is wanted at the next poll (it rose, or its event had not ended)
    pending: set[str] = field(default_factory=set)


def risen(watch: EventWatch, results: MutableMapping[str, PointResult]) -> list[str]:
    """Update ``watch`` with the counters in ``results``; the stems whose record to read now."""
    for name, res in results.items():
        if not (name.startswith(_PREFIX) and name.endswith(_COUNT)) or res.quality != "good" or res.raw is None:
            continue
        try:
            n = int(Decimal(str(res.raw)))
        except (InvalidOperation, ValueError):
            continue
        stem = name[len(_PREFIX):-len(_COUNT)]
        before = watch.counts.get(stem)
        watch.counts[stem] = n
        if before is not None and n > before:
            watch.pending.add(stem)
        elif before is not None and n < before:
            watch.pending.discard(stem)     # cleared meter: a new baseline
    return sorted(s for s in watch.pending if s in watch.counts)


def record_points(record: EventRecord) -> dict[str, PointResult]:
    """The points a record adds to the reading (see the module docstring)."""
    prefix = f"{_PREFIX}{record.event}_"
    out: dict[str, PointResult] = {
        prefix + "start": PointResult("" if record.start is None else record.start.isoformat(timespec="seconds")),
    }
    if record.end is not None or _lasting(record.event):    # an instant (programming) has no end
        out[prefix + "end"] = PointResult("" if record.end is None else record.end.isoformat(timespec="seconds"))
    for reg, value in record.registers.items():
        out[prefix + reg] = PointResult(value)
    return out


async def add_event_records(
    watch: EventWatch, reader: EventRecordReader, meter: str, address: str,
    results: MutableMapping[str, PointResult], timeout: float,
) -> None:
    """Read the last record of every counter that rose (or whose event lasts) into ``results``."""
    for stem in risen(watch, results):
        try:
            record = await reader.read_event_record(address, stem, timeout)
        except AmrError as exc:
            log.info("meter %s: the last %s record could not be read (%s); trying again next poll",
                     meter, stem.replace("_", " "), exc)
            continue
        if record is None:
            watch.pending.discard(stem)
            continue
        results.update(record_points(record))
        # a record with an end time field still empty: the event lasts, read it again next poll
        if record.end is None and record.start is not None and _lasting(stem):
            continue
        watch.pending.discard(stem)


def _lasting(stem: str) -> bool:
    """Events that last (a cover stays open, a voltage stays lost) rather than happen at an instant."""
    return stem.startswith(("cover_open", "terminal_cover_open", "voltage_loss", "current_reversal"))


__all__ = ["EventWatch", "add_event_records", "record_points", "risen"]
