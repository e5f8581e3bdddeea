"""Review of readings: the ERC-style anomaly rules, their engine, and their export.

``rules`` (pure rules and thresholds), ``engine`` (the gateway extension that runs them and
stores/publishes events), ``db`` (its tables and queries), ``export`` (CSV without a running
gateway). Call :func:`install` once at start-up to register the engine and the
``/api/v1/events`` route.
"""

from __future__ import annotations


def install() -> None:
    """Register the review engine extension and the events API route (idempotent)."""
    from gateway.review.engine import install as _install

    _install()


__all__ = ["install"]
