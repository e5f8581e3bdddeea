"""The worklist state machine: open → acknowledged → closed, and what each state refuses."""

from __future__ import annotations

import pytest

from gateway.review.rules import EVENT_TYPES
from gateway.review.worklist import SEVERITY, WorkItem, WorklistError, acknowledge, close, close_cleared, severity

T = 1_795_881_600.0


def test_open_acknowledged_closed_with_who_when_note_and_reason() -> None:
    item = WorkItem(7)
    assert item.state == "open"
    acked = acknowledge(item, "token:ab12 (wang)", T, "on it")
    assert (acked.state, acked.acknowledged_by, acked.acknowledged_at, acked.note) == (
        "acknowledged", "token:ab12 (wang)", T, "on it")
    done = close(acked, "token:ab12 (wang)", T + 60, "CT wiring fixed on site")
    assert (done.state, done.closed_by, done.reason, done.acknowledged_by) == (
        "closed", "token:ab12 (wang)", "CT wiring fixed on site", "token:ab12 (wang)")
    assert done.doc()["closed_at"] == "2026-11-28T16:01:00.000Z"


def test_what_each_state_refuses() -> None:
    acked = acknowledge(WorkItem(1), "a", T, None)
    with pytest.raises(WorklistError, match="already acknowledged"):
        acknowledge(acked, "b", T, None)
    with pytest.raises(WorklistError, match="needs a reason"):
        close(acked, "a", T, "  ")
    closed = close(WorkItem(2), "a", T, "duplicate of 1")           # open can be closed directly
    with pytest.raises(WorklistError, match="already closed"):
        close(closed, "a", T, "again")
    with pytest.raises(WorklistError, match="is closed"):
        acknowledge(closed, "a", T, None)
    assert close_cleared(closed, T, 9) is None                       # the rule never reopens or re-closes


def test_the_rule_closes_open_and_acknowledged_items_naming_the_clearing_event() -> None:
    for item in (WorkItem(3), acknowledge(WorkItem(3), "a", T, "n")):
        done = close_cleared(item, T + 5, 4)
        assert done is not None
        assert (done.state, done.closed_by, done.reason, done.cleared_by_event) == (
            "closed", "rule", "condition cleared", 4)


def test_every_event_type_has_a_severity() -> None:
    raised_types = [t for t in EVENT_TYPES if t != "read_recovered"]
    assert [t for t in raised_types if t not in SEVERITY] == []
    assert severity("register_decrease") == "high" and severity("low_power_factor") == "low"
