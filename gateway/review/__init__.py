"""Review of readings: the ERC-style anomaly rules, their engine, and their export.

``rules`` (pure rules; their thresholds are the ``review:`` settings of
:mod:`gateway.review_thresholds`), ``engine`` (the component that runs them and
stores/publishes events), ``db`` (its tables and queries), ``export`` (CSV without a
running gateway). The composition root (:mod:`gateway.runtime`) builds the engine and
registers its ``/api/v1/events`` route; importing this package registers nothing.
"""
