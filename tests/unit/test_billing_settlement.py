"""Settlement storage rules, stage consumption, reconciliation and interval arithmetic (pure)."""

from __future__ import annotations

import sqlite3
from decimal import Decimal

from gateway.billing import db
from gateway.billing.intervals import End, compute_intervals
from gateway.billing.settlement import Settlement, rank, reconcile, stage_consumption

D = Decimal


def _settlement(idx: int, boundary: float, quality: str, regs: dict[str, str], mult: str = "4000") -> Settlement:
    body = {"quality": quality, "multiplier": D(mult),
            "registers": {k: {"raw": D(v), "value": D(v) * D(mult), "unit": "kWh"} for k, v in regs.items()}}
    return Settlement(idx, "m1", "p", "2026-11", idx, boundary, quality, 0.0, body)


def test_quality_order() -> None:
    order = ["meter_frozen", "actual", "manual", "late", "estimated", "missing"]
    assert [rank(q) for q in order] == sorted((rank(q) for q in order), reverse=True)


def test_only_a_strictly_better_settlement_supersedes_and_history_is_kept() -> None:
    conn = sqlite3.connect(":memory:")
    db.create(conn)
    first = db.insert_if_better(conn, "m1", "p", "2026-12", 0, 100.0, "missing", 1.0, {"quality": "missing"})
    assert first is not None and first.body["revision"] == 1
    assert db.insert_if_better(conn, "m1", "p", "2026-12", 0, 100.0, "missing", 2.0, {"quality": "missing"}) is None
    late = db.insert_if_better(conn, "m1", "p", "2026-12", 0, 100.0, "late", 3.0,
                               {"quality": "late", "registers": {"energy_import_kwh": {"raw": D("1.25")}}})
    assert late is not None and late.body["revision"] == 2 and late.body["supersedes"]["quality"] == "missing"
    # equal or worse never replaces
    assert db.insert_if_better(conn, "m1", "p", "2026-12", 0, 100.0, "late", 4.0, {"quality": "late"}) is None
    assert db.insert_if_better(conn, "m1", "p", "2026-12", 0, 100.0, "estimated", 4.0, {}) is None
    frozen = db.insert_if_better(conn, "m1", "p", "2026-12", 0, 100.0, "meter_frozen", 5.0, {"quality": "meter_frozen"})
    assert frozen is not None
    rows = db.for_meter(conn, "m1", 0, 200)
    assert len(rows) == 1
    head = rows[0]
    assert head.quality == "meter_frozen"
    assert [h.quality for h in head.history] == ["missing", "late"]
    assert head.history[1].body["registers"]["energy_import_kwh"]["raw"] == D("1.25")   # kept, not rewritten
    assert len(db.unpublished(conn)) == 3
    db.set_seq(conn, head.id, 42)
    assert [s.quality for s in db.unpublished(conn)] == ["missing", "late"]


def test_stage_consumption_is_exact_register_difference_times_multiplier() -> None:
    a = _settlement(0, 0.0, "meter_frozen", {"energy_import_kwh": "12345.67", "energy_import_kwh_t1": "100.01",
                                             "demand_max_kw": "1.5"})
    b = _settlement(1, 10.0, "actual", {"energy_import_kwh": "12400.02", "energy_import_kwh_t1": "100.03",
                                        "demand_max_kw": "1.7"})
    st = stage_consumption(1, 0.0, 10.0, a, b, ["energy_import_kwh", "energy_import_kwh_t1", "demand_max_kw"])
    assert st.consumption == {"energy_import_kwh": D("54.35") * 4000, "energy_import_kwh_t1": D("0.02") * 4000}
    assert st.complete and st.flags == ()
    assert (st.start_quality, st.end_quality) == ("meter_frozen", "actual")


def test_missing_end_and_ratio_change_are_flagged_not_priced() -> None:
    a = _settlement(0, 0.0, "actual", {"energy_import_kwh": "1"})
    b = _settlement(1, 10.0, "missing", {})
    st = stage_consumption(1, 0.0, 10.0, a, b, ["energy_import_kwh"])
    assert not st.complete and any("end settlement missing" in f for f in st.flags)
    c = _settlement(1, 10.0, "actual", {"energy_import_kwh": "2"}, mult="6000")
    st = stage_consumption(1, 0.0, 10.0, a, c, ["energy_import_kwh"])
    assert not st.complete and st.consumption == {"energy_import_kwh": None}
    assert any("CT/PT changed" in f for f in st.flags)


def test_reconciliation_passes_when_stages_sum_and_flags_an_incomplete_stage() -> None:
    regs = ["energy_import_kwh"]
    values = ["1.00", "2.50", "4.00", "7.25"]
    s = [_settlement(i, float(i), "actual", {"energy_import_kwh": v}) for i, v in enumerate(values)]
    stages = [stage_consumption(k, float(k - 1), float(k), s[k - 1], s[k], regs) for k in (1, 2, 3)]
    total = stage_consumption(0, 0.0, 3.0, s[0], s[3], regs)
    rec = reconcile(stages, total)
    assert rec.reconciled and rec.stage_sum == rec.cycle_consumption == {"energy_import_kwh": D("6.25") * 4000}
    s[2] = _settlement(2, 2.0, "missing", {})
    stages = [stage_consumption(k, float(k - 1), float(k), s[k - 1], s[k], regs) for k in (1, 2, 3)]
    rec = reconcile(stages, stage_consumption(0, 0.0, 3.0, s[0], s[3], regs))
    assert not rec.reconciled and any("incomplete" in f for f in rec.flags)


def _end(slot: float, v: str) -> End:
    return End(slot, slot + 2, int(slot), {"energy_import_kwh": D(v)}, (D(1), D(1)))


def test_intervals_show_missing_slots_and_one_spans_gap_with_the_whole_difference() -> None:
    grid = [0.0, 900.0, 1800.0, 2700.0, 3600.0, 4500.0]
    nxt = {s: s + 900 for s in grid}
    ends = {0.0: _end(0, "10.00"), 900.0: _end(900, "11.00"),           # then a gap: 1800, 2700, 3600 lost
            4500.0: _end(4500, "16.50"), 5400.0: _end(5400, "17.75")}
    out = compute_intervals(grid, nxt, ends, ends[0.0], ["energy_import_kwh"])
    assert [iv.status for iv in out] == ["complete", "missing", "missing", "missing", "spans_gap", "complete"]
    assert out[0].consumption == {"energy_import_kwh": D("1.00")}
    gap = out[4]
    assert gap.span_start == 900.0 and gap.consumption == {"energy_import_kwh": D("5.50")}
    assert all(iv.consumption["energy_import_kwh"] is None for iv in out[1:4])
    total = sum((iv.consumption["energy_import_kwh"] or D(0) for iv in out), D(0))
    assert total == D("17.75") - D("10.00")                               # nothing invented, nothing lost


def test_interval_before_any_good_reading_is_missing_and_ratio_change_is_not_differenced() -> None:
    out = compute_intervals([0.0], {0.0: 900.0}, {900.0: _end(900, "5")}, None, ["energy_import_kwh"])
    assert out[0].status == "missing" and out[0].note
    other = End(900.0, 902.0, 9, {"energy_import_kwh": D("5")}, (D(40), D(1)))
    out = compute_intervals([0.0], {0.0: 900.0}, {0.0: _end(0, "1"), 900.0: other}, None, ["energy_import_kwh"])
    assert out[0].status == "missing" and "CT/PT" in (out[0].note or "")


def _change(at: float, old: str, new: str, regs: dict[str, str]) -> dict[str, object]:
    return {"at": f"t{at}", "at_epoch": D(repr(at)), "old": {"multiplier": D(old)}, "new": {"multiplier": D(new)},
            "registers": {k: {"raw": D(v), "value_old": D(v) * D(old), "value_new": D(v) * D(new)}
                          for k, v in regs.items()}}


def test_a_ratio_change_inside_a_stage_splits_its_consumption_exactly() -> None:
    names = ["energy_import_kwh", "energy_export_kwh"]
    a = _settlement(0, 0.0, "meter_frozen", {"energy_import_kwh": "1000.01", "energy_export_kwh": "5.00"}, "6000")
    z = _settlement(2, 20.0, "actual", {"energy_import_kwh": "1300.07", "energy_export_kwh": "5.50"}, "12000")
    mid = _settlement(1, 10.0, "actual", {"energy_import_kwh": "1200.00", "energy_export_kwh": "5.20"}, "12000")
    change = _change(4.0, "6000", "12000", {"energy_import_kwh": "1100.03", "energy_export_kwh": "5.10"})
    st = stage_consumption(1, 0.0, 10.0, a, mid, names, [change])
    assert st.consumption == {
        "energy_import_kwh": (D("1100.03") - D("1000.01")) * 6000 + (D("1200.00") - D("1100.03")) * 12000,
        "energy_export_kwh": (D("5.10") - D("5.00")) * 6000 + (D("5.20") - D("5.10")) * 12000,
    }
    assert st.complete and len(st.flags) == 1 and "split at the reading taken at the change" in st.flags[0]
    # the next stage does not see the change; the cycle total splits the same way and reconciles
    st2 = stage_consumption(2, 10.0, 20.0, mid, z, names, [change])
    assert st2.consumption["energy_import_kwh"] == (D("1300.07") - D("1200.00")) * 12000 and st2.flags == ()
    total = stage_consumption(0, 0.0, 20.0, a, z, names, [change])
    rec = reconcile([st, st2], total)
    assert rec.stage_sum == rec.cycle_consumption and not any("stages sum" in f for f in rec.flags)


def test_a_ratio_change_without_a_reading_at_it_stays_withheld_and_flagged() -> None:
    names = ["energy_import_kwh", "energy_export_kwh"]
    a = _settlement(0, 0.0, "meter_frozen", {"energy_import_kwh": "1000.01", "energy_export_kwh": "5.00"}, "6000")
    b = _settlement(1, 10.0, "actual", {"energy_import_kwh": "1200.00", "energy_export_kwh": "5.20"}, "12000")
    unread = _change(4.0, "6000", "12000", {})
    st = stage_consumption(1, 0.0, 10.0, a, b, names, [unread])
    assert st.consumption == {"energy_import_kwh": None, "energy_export_kwh": None} and not st.complete
    assert any("energy_import_kwh: no reading at the CT/PT change" in f for f in st.flags)
    partial = _change(4.0, "6000", "12000", {"energy_import_kwh": "1100.03"})
    st = stage_consumption(1, 0.0, 10.0, a, b, names, [partial])
    assert st.consumption["energy_import_kwh"] is not None and st.consumption["energy_export_kwh"] is None
    assert not st.complete
    # no recorded change at all, or one that does not match the ends' ratios: withheld as before
    for changes in ([], [_change(4.0, "3000", "12000", {"energy_import_kwh": "1100.03"})]):
        st = stage_consumption(1, 0.0, 10.0, a, b, names, changes)
        assert set(st.consumption.values()) == {None} and not st.complete
        assert any("no recorded ratio change explains it" in f for f in st.flags)
    # a change outside the stage does not count
    st = stage_consumption(1, 0.0, 10.0, a, b, names, [_change(12.0, "6000", "12000", {"energy_import_kwh": "1"})])
    assert any("no recorded ratio change explains it" in f for f in st.flags)


def test_a_correction_supersedes_whatever_its_rank_and_only_the_version_it_names() -> None:
    conn = sqlite3.connect(":memory:")
    db.create(conn)
    frozen = db.insert_if_better(conn, "m1", "p", "2026-12", 0, 100.0, "meter_frozen", 1.0, {"quality": "meter_frozen"})
    assert frozen is not None
    # the operator corrected another version than the current one: nothing written
    assert db.insert_correction(conn, "m1", "p", "2026-12", 0, 100.0, "manual", 2.0, {}, None) is None
    assert db.insert_correction(conn, "m1", "p", "2026-12", 0, 100.0, "manual", 2.0, {}, frozen.id + 1) is None
    done = db.insert_correction(conn, "m1", "p", "2026-12", 0, 100.0, "manual", 2.0, {"quality": "manual"}, frozen.id)
    assert done is not None
    previous, row = done
    assert previous is not None and previous.id == frozen.id
    assert row.body["supersedes"] == {"id": frozen.id, "quality": "meter_frozen", "seq": None, "revision": 1}
    assert row.body["revision"] == 2
    # a late live read does not replace a manual one; the meter's own freeze would
    assert db.insert_if_better(conn, "m1", "p", "2026-12", 0, 100.0, "late", 3.0, {"quality": "late"}) is None
    head = db.for_meter(conn, "m1", 0, 200)[0]
    assert head.quality == "manual" and [h.id for h in head.history] == [frozen.id]
    kept = db.by_id(conn, frozen.id)
    assert kept is not None and kept.superseded_by == row.id and kept.quality == "meter_frozen"


def test_unconfirmed_clock_unverified_or_estimated_ends_keep_a_stage_incomplete_until_confirmed() -> None:
    regs = ["energy_import_kwh"]
    a = _settlement(0, 0.0, "actual", {"energy_import_kwh": "100"})
    b = _settlement(1, 10.0, "actual", {"energy_import_kwh": "110"})
    b.body["flags"] = ["clock_unverified"]
    st = stage_consumption(1, 0.0, 10.0, a, b, regs)
    assert not st.complete and st.codes == ("clock_unverified",) and b.needs_confirmation()
    b.body["confirmed"] = {"by": "token:ab12cd34 (clerk)", "at": "2026-12-12T01:00:00.000Z", "reason": "checked"}
    st = stage_consumption(1, 0.0, 10.0, a, b, regs)
    assert st.complete and st.codes == () and not b.needs_confirmation()
    assert any(f.startswith("clock_unverified confirmed: the end") and "(clerk)" in f for f in st.flags)
    assert st.consumption == {"energy_import_kwh": D(10) * 4000}

    e = _settlement(1, 10.0, "estimated", {"energy_import_kwh": "110"})
    st = stage_consumption(1, 0.0, 10.0, a, e, regs)
    assert not st.complete and e.needs_confirmation()
    assert st.consumption == {"energy_import_kwh": D(10) * 4000}          # the value is shown, not final
    e.body["confirmed"] = {"by": "token:ab12cd34 (clerk)", "at": "2026-12-12T01:00:00.000Z", "reason": "agreed"}
    assert stage_consumption(1, 0.0, 10.0, a, e, regs).complete
    assert not _settlement(1, 10.0, "manual", {"energy_import_kwh": "110"}).needs_confirmation()
