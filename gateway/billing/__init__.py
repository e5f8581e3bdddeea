"""Billing: staged settlement readings, stage consumption, interval data and read KPIs.

Modules: ``cycles`` (pure boundary arithmetic), ``settlement`` (qualities, stage
consumption, reconciliation), ``db`` (tables and queries), ``capture`` (the gateway
extension that takes settlements at each boundary and annotates readings), ``intervals``
(per-slot consumption from register differences), ``kpi`` (read completeness), ``view``
(a meter's cycle as the API and the export show it). Call :func:`install` once at start-up
to register the capture extension and the ``/api/v1`` billing routes.
"""

from __future__ import annotations

_INSTALLED = False


def install() -> None:
    """Register the settlement-capture extension and the billing API routes (idempotent)."""
    global _INSTALLED  # noqa: PLW0603 - a one-shot registration guard
    if _INSTALLED:
        return
    from gateway.api.routes_billing import install as install_routes
    from gateway.billing.capture import factory
    from gateway.runtime import register_extension

    register_extension(factory)
    install_routes()
    _INSTALLED = True


__all__ = ["install"]
