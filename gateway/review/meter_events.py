"""The meter's own event records: any counter increase is a review event, with the record.

A meter counts its events (DL/T 645-2007 class 03: 开表盖 03300D00, 开端钮盒 03300E00,
编程 03300000, 电表清零 03300100, 需量清零 03300200, 校时 03300400, 失压 per phase 0301xx00,
潮流反向 030Exx00; DL/T 698.45 event objects) and keeps its last records. A profile maps
them to the canonical points ``event_<stem>_count`` and ``event_<stem>_<field>`` (``start``,
``end``, registers at the event …, see :data:`METER_EVENT_KINDS`). This rule compares each
counter with the last one seen:

* an increase raises ``<type>`` (key: the stem, so each phase's voltage loss is its own
  condition) with the counter before and after, and every ``event_<stem>_*`` point of the
  reading — the last record's start and end times and the registers in it;
* the first counter seen is a baseline (what happened before the gateway watched is not
  news); a counter that falls (the meter was cleared) becomes the new baseline;
* the condition clears after ``clear_after_normal_cycles`` readings without a further
  increase, and — when the record has an end time field — only once it is filled in (the
  cover is closed again, the voltage is back).
"""

from __future__ import annotations

from gateway.review.rules import (
    EnergyInterval,
    MeterContext,
    MeterState,
    Observation,
    RuleEvent,
    is_raised,
    iso,
    normal_cycle,
    raise_condition,
)
from gateway.review_thresholds import METER_EVENT_KINDS, ReviewThresholds

_NO_END = ("", "0", "None", "000000000000")
#: each event kind's counter point, named once rather than formatted for every reading
_COUNT_POINT: dict[str, str] = {stem: f"event_{stem}_count" for stem in METER_EVENT_KINDS}


def _record(obs: Observation, stem: str) -> dict[str, object]:
    prefix = f"event_{stem}_"
    return {k[len(prefix):]: v for k, v in obs.records.items() if k.startswith(prefix)}


def meter_events(
    state: MeterState, obs: Observation, iv: EnergyInterval | None, ctx: MeterContext, th: ReviewThresholds
) -> list[RuleEvent]:
    """Raise on every event counter increase, with the meter's last record of that event.

    Runs on every reading, so the record and evidence are built only when an event may come
    of it (the counter rose, or it is unchanged while its condition is raised)."""
    out: list[RuleEvent] = []
    values = obs.values
    if not values:
        return out              # no counter read (no numeric value at all): nothing to compare
    for stem in th.meter_event_kinds:
        count = values.get(_COUNT_POINT.get(stem) or f"event_{stem}_count")
        if count is None:
            continue
        etype = METER_EVENT_KINDS[stem]
        before = state.counters.get(stem)
        if before != count:
            state.counters[stem] = count
            state.dirty = True
        if before is None or count < before:
            continue
        if count == before and not is_raised(state, etype, stem):
            continue            # unchanged and nothing raised: neither branch below acts
        record = _record(obs, stem)
        ev: dict[str, object] = {
            "event": stem, "counter_before": before, "counter_after": count, "increase": count - before,
            "read_at": iso(obs.ts), "record": record,
            "record_start": record.get("start"), "record_end": record.get("end"),
        }
        if count > before:
            raise_condition(state, out, etype, stem, obs.ts,
                            f"meter {obs.meter} recorded {count - before} new {stem.replace('_', ' ')} "
                            f"event(s) (counter {before} → {count}), last from {record.get('start', '?')}",
                            ev)
        elif is_raised(state, etype, stem):
            ended = "end" not in record or str(record["end"]) not in _NO_END
            if ended:
                normal_cycle(state, out, etype, stem, obs.ts, th.clear_after_normal_cycles,
                             f"meter {obs.meter}: no new {stem.replace('_', ' ')} event"
                             + (f"; the last ended {record['end']}" if "end" in record else ""), ev)
    return out


__all__ = ["meter_events"]
