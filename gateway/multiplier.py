"""The CT×PT rule and the audit of ratio changes: the one place both live.

Which points a ratio multiplies (terminal practice): voltage × PT,
current × CT, power, demand and energy × CT × PT, power factor and frequency never — and
only for points the profile marks ``side: secondary`` (a meter showing primary values has
the ratios applied inside it already). The reading pipeline (:mod:`gateway.pipeline`) and
billing (:mod:`gateway.billing.capture`) both take their factors from here, so a reading's
``value`` and a settlement register's ``value`` are always the same product.

The audit: a CT or PT ratio changed in the configuration is an audited event, never a
silent rewrite. At start (:func:`audit_ratios`, called by the runtime before any poll)
each meter's configured ratios are compared with those of the previous start (kept in the
store's ``meta`` table as ``ratio:<meter>``); a change of CT×PT factors is recorded once in
the store's ``audit`` table (``kind = "ratio_change"``, the old and new factors, ``ts`` =
the start, also kept as ``meta.ratio_audit_at``). Billing reads that record
(:func:`last_ratio_change`, :func:`last_audit_at`) to take the reading at a change of this
start and keep its ``billing_ratio_change`` record; a meter's readings carry the factors
they were taken under (``multiplier`` in ``amr.reading.v1``), so no other history is kept.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Final, Literal

from gateway.model import loads_exact, to_json
from gateway.settings import MeterSettings, Profile

if TYPE_CHECKING:
    from gateway.store import Store

log = logging.getLogger("amr.multiplier")

Scaling = Literal["ctpt", "ct", "pt", "none"]
"""Which ratio a point takes: CT × PT, CT only, PT only, or none."""

RATIO_CHANGE: Final = "ratio_change"
"""The ``audit.kind`` of a CT/PT change."""

_ONE: Final = Decimal(1)
_META_PREFIX: Final = "ratio:"
_AUDITED_AT_KEY: Final = "ratio_audit_at"
_META_RE: Final = re.compile(r"ct=([^;]+);pt=(.+)")


def scaling_for(point: str) -> Scaling:
    """Which ratio a canonical point takes when the meter shows secondary values."""
    if point.startswith(("energy_", "power_kw", "power_kvar", "power_kva")) or point == "demand_max_kw":
        return "ctpt"
    if point.startswith("voltage_"):
        return "pt"
    if point.startswith("current_"):
        return "ct"
    return "none"


def point_factor(point: str, secondary: bool, ct: Decimal, pt: Decimal) -> Decimal:
    """The factor a point's raw value is multiplied by: 1 unless the meter shows it secondary."""
    if not secondary:
        return _ONE
    kind = scaling_for(point)
    if kind == "ctpt":
        return ct * pt
    if kind == "ct":
        return ct
    if kind == "pt":
        return pt
    return _ONE


def profile_factors(profile: Profile, ct: Decimal, pt: Decimal) -> dict[str, Decimal]:
    """The factor of every point of a profile under the CT and PT factors ``ct`` and ``pt``."""
    return {name: point_factor(name, point.side == "secondary", ct, pt)
            for name, point in profile.points.items()}


def register_factor(profile: Profile, register: str, ct: Decimal, pt: Decimal) -> Decimal:
    """The factor of a billing register; one the profile does not list counts as secondary.

    A meter's freeze blocks hold registers the profile may not list (reactive energy,
    maximum demand); they are in the meter's own units, on the side its energy registers
    are, and a meter with secondary registers is the common case on CT/PT-connected lines.
    """
    point = profile.points.get(register)
    secondary = point is None or point.side == "secondary"
    return point_factor(register, secondary, ct, pt)


@dataclass(frozen=True, slots=True)
class RatioChange:
    """One audited CT/PT change of a meter: when the gateway started under it, old and new factors."""

    meter: str
    at: float
    old_ct: Decimal
    old_pt: Decimal
    new_ct: Decimal
    new_pt: Decimal

    @property
    def old_multiplier(self) -> Decimal:
        """CT × PT before the change."""
        return self.old_ct * self.old_pt

    @property
    def new_multiplier(self) -> Decimal:
        """CT × PT after the change."""
        return self.new_ct * self.new_pt

    def detail(self) -> dict[str, object]:
        """The ``audit.detail`` document."""
        return {"old": {"ct": self.old_ct, "pt": self.old_pt, "multiplier": self.old_multiplier},
                "new": {"ct": self.new_ct, "pt": self.new_pt, "multiplier": self.new_multiplier}}


def ratio_text(meter: MeterSettings) -> str:
    """How a meter's configured ratios are remembered between starts (``ct=200/5;pt=10000/100``)."""
    return f"ct={meter.ct_ratio};pt={meter.pt_ratio}"


def _factor_of(ratio: str) -> Decimal | None:
    primary, _, secondary = ratio.partition("/")
    try:
        value = Decimal(primary) / (Decimal(secondary) if secondary else _ONE)
    except (InvalidOperation, ArithmeticError):
        return None
    return value if value.is_finite() and value > 0 else None


def _factors_of(text: str) -> tuple[Decimal, Decimal] | None:
    """The (CT, PT) factors of a remembered ``ratio_text``; None when it cannot be read."""
    m = _META_RE.fullmatch(text)
    if m is None:
        return None
    ct, pt = _factor_of(m.group(1)), _factor_of(m.group(2))
    return None if ct is None or pt is None else (ct, pt)


def _remembered(conn: sqlite3.Connection) -> dict[str, str]:
    rows = conn.execute("SELECT key, value FROM meta WHERE key LIKE 'ratio:%'").fetchall()
    return {k[len(_META_PREFIX):]: v for k, v in rows}


def _record(conn: sqlite3.Connection, at: float, remember: list[tuple[str, str]],
            changes: list[RatioChange]) -> None:
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (_AUDITED_AT_KEY, repr(at)))
    for meter, text in remember:
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (_META_PREFIX + meter, text))
    for c in changes:
        conn.execute("INSERT INTO audit(ts, meter, kind, detail) VALUES (?,?,?,?)",
                     (c.at, c.meter, RATIO_CHANGE, to_json(c.detail())))


async def audit_ratios(store: Store, meters: Iterable[MeterSettings], at: float) -> list[RatioChange]:
    """Record every meter's CT/PT change since the previous start, once; return the changes.

    ``at`` is the start; it is remembered as the last audit (:func:`last_audit_at`), so a
    reader can tell the changes of this start from those of an earlier one.

    A meter seen for the first time is remembered without a change. A ratio written
    differently with the same factor (``200/5`` → ``400/10``) is remembered, not audited:
    the multiplier did not change.
    """
    known = await store.read(_remembered)
    remember: list[tuple[str, str]] = []
    changes: list[tuple[RatioChange, str]] = []
    for m in meters:
        text = ratio_text(m)
        old_text = known.get(m.id)
        if old_text == text:
            continue
        remember.append((m.id, text))
        old = _factors_of(old_text) if old_text is not None else None
        new = (m.ct_ratio.factor, m.pt_ratio.factor)
        if old is not None and old != new:
            changes.append((RatioChange(m.id, at, old[0], old[1], new[0], new[1]), text))
    await store.write(_record, at, remember, [c for c, _ in changes])
    for c, text in changes:
        log.warning("meter %s: CT/PT changed from %s to %s (CT×PT %s → %s, audited)", c.meter,
                    known[c.meter], text, c.old_multiplier, c.new_multiplier)
    return [c for c, _ in changes]


def last_audit_at(conn: sqlite3.Connection) -> float | None:
    """When the ratios were last audited (the latest start), or None (never)."""
    row = conn.execute("SELECT value FROM meta WHERE key=?", (_AUDITED_AT_KEY,)).fetchone()
    return None if row is None else float(row[0])


def last_ratio_change(conn: sqlite3.Connection, meter: str) -> RatioChange | None:
    """The latest audited CT/PT change of ``meter``, or None (none, or one an older gateway wrote)."""
    row = conn.execute("SELECT ts, detail FROM audit WHERE meter=? AND kind=? ORDER BY ts DESC, id DESC LIMIT 1",
                       (meter, RATIO_CHANGE)).fetchone()
    if row is None:
        return None
    doc = loads_exact(row[1])
    old = doc.get("old") if isinstance(doc, dict) else None
    new = doc.get("new") if isinstance(doc, dict) else None
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None        # an audit row of an older gateway (no factors): nothing to price
    return RatioChange(meter, float(row[0]), Decimal(old["ct"]), Decimal(old["pt"]), Decimal(new["ct"]),
                       Decimal(new["pt"]))


__all__ = [
    "RATIO_CHANGE",
    "RatioChange",
    "Scaling",
    "audit_ratios",
    "last_audit_at",
    "last_ratio_change",
    "point_factor",
    "profile_factors",
    "ratio_text",
    "register_factor",
    "scaling_for",
]
