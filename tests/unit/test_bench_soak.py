"""``bench/soak.py``'s verdicts: what counts as a duplicate, an inversion and a miss.

The soak and kill loops report "0 lost, in order" for issue 16 item 11; these checks keep
that verdict honest: a loop whose peers lost a seq, or delivered one out of order, must
say so.
"""

from __future__ import annotations

from typing import Any

from bench.soak import Arrivals, delivery_misses


def test_a_redelivered_seq_is_a_duplicate_and_a_late_first_arrival_an_inversion() -> None:
    got = Arrivals.of([("m1", 1), ("m2", 2), ("m1", 3), ("m1", 1), ("m2", 5), ("m2", 4), ("m1", 6)])
    assert got.seqs == {1, 2, 3, 4, 5, 6}
    assert got.duplicates == 1      # m1's seq 1 again: QoS 1 allows it
    assert got.inversions == 1      # m2's 4 first arrived after its 5


def test_seqs_of_different_meters_may_interleave_in_any_order() -> None:
    got = Arrivals.of([("m1", 5), ("m2", 1), ("m3", 3), ("m2", 2)])
    assert (got.duplicates, got.inversions) == (0, 0)


def _report(**changes: Any) -> dict[str, Any]:
    report: dict[str, Any] = {"mqtt_missing": 0, "mqtt_missing_first": [], "vm_missing": 0, "vm_missing_first": [],
                              "mqtt_inversions": 0, "mqtt_unknown": 0, "mqtt_unparsed": 0, "mqtt_covered": 10}
    report.update(changes)
    return report


def test_a_clean_report_misses_nothing() -> None:
    assert delivery_misses(_report()) == []


def test_every_kind_of_loss_or_disorder_is_a_miss() -> None:
    assert "never arrived" in delivery_misses(_report(mqtt_missing=2, mqtt_missing_first=[7, 9]))[0]
    assert "VictoriaMetrics" in delivery_misses(_report(vm_missing=1, vm_missing_first=[3]))[0]
    assert "out of order" in delivery_misses(_report(mqtt_inversions=1))[0]
    assert "does not hold" in delivery_misses(_report(mqtt_unknown=1))[0]
    assert "nothing was delivered" in delivery_misses(_report(mqtt_covered=0))[0]
    assert "without a seq" in delivery_misses(_report(mqtt_unparsed=1))[0]
