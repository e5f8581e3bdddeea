"""IdentityMemo: values found again by their object's identity, never by equality, and
bounded, so the settings objects a reload replaced are not kept alive by the caches built
on it (the builder's tables, the factor texts, the review's rule plans)."""

from __future__ import annotations

import dataclasses
import gc
from decimal import Decimal

from gateway.config import SHIPPED_PROFILES_DIR
from gateway.identity_memo import IdentityMemo
from gateway.pipeline import ReadingBuilder
from gateway.profiles import load_profile
from gateway.settings import MeterSettings, Profile


def test_a_value_is_found_for_that_very_object_and_its_extra_key_only() -> None:
    memo: IdentityMemo[Decimal, str] = IdentityMemo()
    one, one_point_zero = Decimal("1"), Decimal("1.0")
    assert one == one_point_zero
    memo.put(one, "1")
    assert memo.get(one) == "1"
    assert memo.get(one_point_zero) is None          # equal, but another object
    memo.put(one, "1 at 15 min", 900.0)
    assert memo.get(one, 900.0) == "1 at 15 min" and memo.get(one) == "1" and memo.get(one, 60.0) is None


def test_the_memo_starts_again_empty_at_its_limit() -> None:
    memo: IdentityMemo[object, int] = IdentityMemo(limit=3)
    objs = [object() for _ in range(4)]
    for k, o in enumerate(objs[:3]):
        memo.put(o, k)
    assert [memo.get(o) for o in objs[:3]] == [0, 1, 2] and len(memo) == 3
    memo.put(objs[3], 3)
    assert len(memo) == 1 and memo.get(objs[3]) == 3 and memo.get(objs[0]) is None


def test_profiles_replaced_by_reloads_are_not_kept_alive_by_the_builder_tables() -> None:
    base = load_profile(SHIPPED_PROFILES_DIR / "simulator.yaml")
    meter = MeterSettings(id="m1", customer="C1", bus="b1", address="1", profile="simulator")
    made = 5000                                     # more than the memo keeps (4096)
    for k in range(made):                           # each reload loads its profiles afresh
        ReadingBuilder(meter, dataclasses.replace(base, name=f"reload-probe-{k}"))
    gc.collect()
    alive = sum(1 for o in gc.get_objects() if isinstance(o, Profile) and o.name.startswith("reload-probe-"))
    assert 0 < alive <= 4096 < made
