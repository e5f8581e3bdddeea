"""The ``store`` section: durability, commit bound, storage cap, free-space floor, memory
bound for uncommitted readings and retention of the local store."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final, Literal, cast

import yaml

from gateway.config.context import LoadContext
from gateway.config.convert import duration
from gateway.settings import StoreSettings
from gateway.yamlpos import Invalid, MapView, as_choice, as_float, as_int, describe, scalar_text

_STORE_KEYS: Final = ("synchronous", "commit_interval", "commit_interval_ms", "max_size", "min_free",
                      "max_pending", "retention")
_RETENTION_KEYS: Final = ("realtime_days", "interval_days")
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?$", re.IGNORECASE)
_SIZE_UNITS: Final = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
                      "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _size(node: yaml.Node) -> int:
    text = scalar_text(node).strip()
    m = _SIZE_RE.match(text)
    if m is None:
        raise Invalid(f'must be a size such as "500MB" or "2GB", not {describe(node)}')
    value = int(Decimal(m.group(1)) * _SIZE_UNITS[(m.group(2) or "B").lower()])
    if value < 10**6:
        raise Invalid(f"must be at least 1MB, not {describe(node)}")
    return value


def load_store(ctx: LoadContext, node: yaml.Node | None) -> StoreSettings:
    """The ``store`` section (always present: defaults when the file has none)."""
    m = MapView(ctx.issues, node, "store", _STORE_KEYS, line=1)
    d = StoreSettings()
    r = MapView(ctx.issues, m.node("retention"), "store retention", _RETENTION_KEYS, line=m.line)
    default_sync: str = d.synchronous
    sync = m.get("synchronous", as_choice(("NORMAL", "FULL"), fold_case=True), default_sync)
    # commit_interval (a duration) is the promised bound (docs/delivery.md §1); commit_interval_ms, its older
    # spelling in milliseconds, is still read (gateway/store.py says what it does).
    interval = m.opt("commit_interval", duration(Decimal("0.001"), Decimal(60)))
    legacy_ms = m.opt("commit_interval_ms", as_float(1, 60000))
    if interval is not None and legacy_ms is not None:
        m.bad("commit_interval_ms", "is the older spelling of commit_interval; keep only commit_interval")
    commit_s = float(interval) if interval is not None else (
        legacy_ms / 1000 if legacy_ms is not None else d.commit_interval_s)
    return StoreSettings(
        synchronous=cast(Literal["NORMAL", "FULL"], sync),
        commit_interval_s=commit_s,
        max_bytes=m.opt("max_size", _size),
        min_free_bytes=m.get("min_free", _size, d.min_free_bytes),
        max_pending=m.get("max_pending", as_int(100, 10_000_000), d.max_pending),
        retention_realtime_days=r.get("realtime_days", as_float(0.01, 36500),
                                      d.retention_realtime_days),
        retention_interval_days=r.get("interval_days", as_float(0.01, 36500),
                                      d.retention_interval_days))
