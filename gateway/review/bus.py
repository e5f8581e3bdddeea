"""``bus_failure``: every meter of a bus failing at once is one bus event, not N.

Pure, like the rules: :func:`fold_bus_failure` takes the events one meter's reading raised
and the rule memory of every meter on its bus, and returns the events to emit instead.

* When a meter's ``read_failure`` is raised while every other meter of its bus (a bus of at
  least ``bus_failure_min_meters``) is failing too — its consecutive failures count is not
  zero — the bus's condition ``bus_failure`` is raised once (in the bus's own state,
  ``bus:<id>``) naming every meter, and that meter's ``read_failure`` is suppressed: it is
  taken out of the meter's conditions, so no ``read_recovered`` follows either.
* While the bus event is raised every further ``read_failure`` of its meters is suppressed.
* The first meter of the bus that answers again clears ``bus_failure`` (the bus works).
  The other meters of the failure start counting their failed polls afresh, and while the
  poller has not tried them again (a reading "not polled": the dead-meter backoff) their
  ``read_failure`` stays suppressed: a line that came back is not N meter failures either.
  A meter that still does not answer when it is tried raises its own ``read_failure``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway.review.rules import MeterState, Observation, RuleEvent, iso, normal_cycle, raise_condition
from gateway.review_thresholds import ReviewThresholds


def bus_key(bus: str) -> str:
    """The state (and event ``meter`` field) of a bus: ``bus:<id>``."""
    return f"bus:{bus}"


def fold_bus_failure(
    bus: str, bus_state: MeterState, meters: Sequence[str], states: Mapping[str, MeterState],
    obs: Observation, events: list[RuleEvent], th: ReviewThresholds,
) -> tuple[list[RuleEvent], list[RuleEvent]]:
    """(the meter's events to emit, the bus's events to emit) after one reading of ``obs.meter``."""
    bus_events: list[RuleEvent] = []
    raised = ("bus_failure", "") in bus_state.active
    grace = bus_state.grace
    if not obs.failed:
        if grace:
            grace.discard(obs.meter)
        if raised:
            cond = bus_state.active[("bus_failure", "")]
            normal_cycle(bus_state, bus_events, "bus_failure", "", obs.ts, 1,
                         f"bus {bus} answers again (meter {obs.meter})",
                         {"bus": bus, "answered": obs.meter, "answered_at": iso(obs.ts),
                          "meters": cond.evidence.get("meters", [])})
            for m in meters:
                st = states.get(m)
                if m != obs.meter and st is not None and st.failures > 0:
                    st.failures = 0
                    st.first_failure_ts = None
                    if bus_state.grace is None:
                        bus_state.grace = set()
                    bus_state.grace.add(m)
        return events, bus_events
    mine = [e for e in events if e.type == "read_failure" and e.state == "raised"]
    if grace and obs.meter in grace:
        if (obs.error or "").startswith("not polled"):       # skipped by the poller, not tried
            states[obs.meter].active.pop(("read_failure", ""), None)
            return [e for e in events if e not in mine], bus_events
        grace.discard(obs.meter)
    if not mine or len(meters) < th.bus_failure_min_meters:
        return events, bus_events
    failing = [m for m in meters if (st := states.get(m)) is not None and st.failures > 0]
    if not raised and len(failing) < len(meters):
        return events, bus_events
    me = states[obs.meter]
    me.active.pop(("read_failure", ""), None)
    if not raised:
        first = [states[m].first_failure_ts for m in meters]
        since = min(t for t in first if t is not None)
        raise_condition(
            bus_state, bus_events, "bus_failure", "", obs.ts,
            f"every meter of bus {bus} ({len(meters)}) fails since {iso(since)}: {', '.join(meters)}",
            {
                "bus": bus, "meters": list(meters), "first_failure": iso(since),
                "failures": {m: states[m].failures for m in meters},
                "last_errors": {m: states[m].last_error for m in meters},
                "min_meters": th.bus_failure_min_meters,
                "suppressed": "read_failure of these meters",
            },
        )
    return [e for e in events if e not in mine], bus_events
