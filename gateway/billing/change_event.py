"""The review event of a recorded meter change (exchange or CT/PT change), one wording for both paths.

A change recorded by an operator (:mod:`gateway.billing.exchanges`, through the API) and one the
gateway records by itself when it starts under a changed configured ratio
(:mod:`gateway.billing.capture`) raise the same event: ``meter_exchange`` or ``ratio_change``,
keyed by the change's time, with the record as evidence, so a reviewer sees every change of
what multiplies a meter's registers on the worklist.
"""

from __future__ import annotations

from typing import Any


def event_of(body: dict[str, Any], record_id: int) -> tuple[str, str, str, dict[str, object]]:
    """The review event of a stored change: (type, key, message, evidence)."""
    kind = body.get("kind", "ratio_change")
    etype = "meter_exchange" if kind == "exchange" else "ratio_change"
    old, new = body.get("old") or {}, body.get("new") or {}
    if kind == "exchange":
        message = (f"meter {body.get('meter')} exchanged at {body.get('at')}: serial {body.get('old_serial')} → "
                   f"{body.get('new_serial')}, multiplier {old.get('multiplier')} → {new.get('multiplier')}")
    else:
        message = (f"meter {body.get('meter')}: CT/PT changed at {body.get('at')}, multiplier "
                   f"{old.get('multiplier')} → {new.get('multiplier')}")
    evidence: dict[str, object] = {
        "record": record_id, "at": body.get("at"), "old": old, "new": new, "registers": body.get("registers"),
        "entered_by": body.get("entered_by"), "note": body.get("note"), "reason": body.get("reason"),
    }
    if kind == "exchange":
        evidence["old_serial"] = body.get("old_serial")
        evidence["new_serial"] = body.get("new_serial")
    return etype, str(body.get("at")), message, evidence


__all__ = ["event_of"]
