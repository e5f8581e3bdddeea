"""Meter event records: the DL/T 645 record layouts and the poller's read-on-rise rule."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal as D

import pytest

from drivers.base import EventRecord
from drivers.dlt645.event_records import LAYOUTS, decode_record, encode_layout
from gateway.errors import DecodeError, ReadTimeout
from gateway.event_polling import EventWatch, add_event_records, record_points, risen
from gateway.model import PointResult

T0 = datetime(2026, 12, 3, 10, 15, 0)
T1 = datetime(2026, 12, 3, 11, 0, 30)


@pytest.mark.parametrize("stem", sorted(LAYOUTS))
def test_every_layout_round_trips_start_end_and_registers(stem: str) -> None:
    regs = {"energy_import_kwh": D("1234.56"), "energy_export_kwh": D("7.89"), "demand_max_kw": D("12.3456")}
    payload = encode_layout(stem, T0, T1, regs)
    assert len(payload) == LAYOUTS[stem].size
    rec = decode_record(stem, payload + b"\x33" * 20)        # a longer record decodes the same
    assert rec.event == stem and rec.start == T0
    names = {n for n, _ in LAYOUTS[stem].fields}
    assert rec.end == (T1 if "end" in names else None)
    assert rec.registers == {n: v for n, v in regs.items() if n in names}


def test_an_open_record_has_no_end_and_a_short_reply_is_refused() -> None:
    rec = decode_record("cover_open", encode_layout("cover_open", T0, None, {}))
    assert rec.start == T0 and rec.end is None
    assert LAYOUTS["voltage_loss_l2"].di == 0x03010201 and LAYOUTS["current_reversal_l3"].di == 0x030E0301
    with pytest.raises(DecodeError, match="fewer than"):
        decode_record("cover_open", b"\x00" * 5)


def _counts(**kw: int) -> dict[str, PointResult]:
    return {f"event_{k}_count": PointResult(D(v)) for k, v in kw.items()}


def test_the_first_count_is_a_baseline_and_a_rise_asks_for_the_record() -> None:
    w = EventWatch()
    assert risen(w, _counts(cover_open=1, programming=3)) == []
    assert risen(w, _counts(cover_open=2, programming=3)) == ["cover_open"]
    w.pending.clear()
    assert risen(w, _counts(cover_open=0, programming=3)) == []          # cleared: a new baseline


class _Reader:
    def __init__(self, records: dict[str, EventRecord | None], fail: bool = False) -> None:
        self.records, self.fail = records, fail
        self.asked: list[str] = []

    async def read_event_record(self, address: str, event: str, timeout: float) -> EventRecord | None:
        self.asked.append(event)
        if self.fail:
            raise ReadTimeout("no answer")
        return self.records.get(event)


async def test_a_lasting_event_is_read_again_until_it_ends_and_an_instant_once() -> None:
    w = EventWatch()
    await add_event_records(w, _Reader({}), "m", "1", _counts(cover_open=1, programming=1), 1.0)
    reader = _Reader({"cover_open": EventRecord("cover_open", T0, None, {"energy_import_kwh": D("5.00")}),
                      "programming": EventRecord("programming", T0, None, {})})
    results = _counts(cover_open=2, programming=2)
    await add_event_records(w, reader, "m", "1", results, 1.0)
    assert results["event_cover_open_start"].raw == "2026-12-03T10:15:00"
    assert results["event_cover_open_end"].raw == ""
    assert results["event_cover_open_energy_import_kwh"].raw == D("5.00")
    assert "event_programming_end" not in results                  # an instant has no end
    assert w.pending == {"cover_open"}                             # still open: read again
    reader.records["cover_open"] = EventRecord("cover_open", T0, T1, {})
    results = _counts(cover_open=2, programming=2)
    await add_event_records(w, reader, "m", "1", results, 1.0)
    assert results["event_cover_open_end"].raw == "2026-12-03T11:00:30" and w.pending == set()
    assert reader.asked == ["cover_open", "programming", "cover_open"]


async def test_a_record_that_cannot_be_read_is_tried_again_and_costs_the_reading_nothing() -> None:
    w = EventWatch()
    await add_event_records(w, _Reader({}), "m", "1", _counts(meter_clear=0), 1.0)
    results = _counts(meter_clear=1)
    await add_event_records(w, _Reader({}, fail=True), "m", "1", results, 1.0)
    assert set(results) == {"event_meter_clear_count"} and w.pending == {"meter_clear"}
    assert record_points(EventRecord("meter_clear", None, None, {}))["event_meter_clear_start"].raw == ""
