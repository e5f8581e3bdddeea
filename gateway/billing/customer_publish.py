"""The MQTT customer settlement: ``{prefix}/{gateway}/customers/{customer}/settlement``.

When a meter's settlement is stored and published (a boundary read, a catch-up, a manual
reading, a confirmation), every customer that meter belongs to (any role) is recomputed for
that cycle (:func:`gateway.billing.customers.customer_view`) and, when the customer's stage
results changed since the last message for that customer and cycle, a new
``amr.customer_settlement.v1`` message is committed to the outbox (kind
``customer_settlement``, no meter) and delivered like every other message: at least once, in
``seq`` order, not retained (the retained topic of a gateway is only its ``status``; a
consumer that needs the current state asks ``GET /api/v1/customers/{id}/settlements``).

"Changed" compares everything in the message but ``seq`` and ``trigger``; after a restart the
first settlement of a customer publishes its state again (at-least-once; consumers
deduplicate on (gateway, seq) and may compare ``stages``).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any, Final

from gateway.billing.customers import CUSTOMER_SETTLEMENT_SCHEMA, customer_plan, customer_view, customers_of
from gateway.billing.settlement import Settlement
from gateway.model import iso_utc, to_json

if TYPE_CHECKING:
    from gateway.core import Core

log = logging.getLogger("gateway.billing")

KIND: Final = "customer_settlement"


def message_body(gateway_id: str, doc: dict[str, Any]) -> dict[str, Any]:
    """The ``amr.customer_settlement.v1`` document of a customer view (without each meter's cycle)."""
    return {
        "schema": CUSTOMER_SETTLEMENT_SCHEMA,
        "gateway": gateway_id,
        "customer": doc["customer"],
        "name": doc.get("name"),
        "tariff": doc.get("tariff"),
        "contract_capacity_kva": doc.get("contract_capacity_kva"),
        "plan": doc.get("plan"),
        "cycle": doc["cycle"],
        "start": doc.get("start"),
        "end": doc.get("end"),
        "meters": doc.get("meters"),
        "stages": doc.get("stages"),
        "cycle_total": doc.get("cycle_total"),
        "reconciled": doc.get("reconciled"),
        "flags": doc.get("flags"),
    }


class CustomerPublisher:
    """Commits a customer settlement message when a meter settlement changes its customer's result."""

    def __init__(self, core: Core) -> None:
        self.gw = core
        self._digest: dict[tuple[str, str], str] = {}
        self.published = 0

    async def settlement_published(self, row: Settlement) -> None:
        """Recompute and publish the customers of ``row.meter`` for ``row.cycle`` (errors are logged, not raised)."""
        settings = self.gw.settings
        for c in customers_of(settings).values():
            if not any(cm.meter == row.meter for cm in c.meters) or customer_plan(settings, c) is None:
                continue
            try:
                now = self.gw.clock.time()
                doc = await self.gw.store.read(customer_view, settings, c, row.cycle, now)
                body = message_body(settings.gateway.id, doc)
                digest = hashlib.sha256(to_json(body).encode()).hexdigest()
                if self._digest.get((c.id, row.cycle)) == digest:
                    continue
                body["trigger"] = {"meter": row.meter, "settlement_id": row.id, "boundary": iso_utc(row.boundary),
                                   "quality": row.quality}
                await self.gw.store.append_message(KIND, None, row.boundary, body)
                self._digest[(c.id, row.cycle)] = digest
                self.published += 1
            except Exception:
                log.exception("customer %s settlement for %s could not be published (it is published again with "
                              "the next settlement of its meters)", c.id, row.cycle)


__all__ = ["KIND", "CustomerPublisher", "message_body"]
