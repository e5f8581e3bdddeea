"""Billing: staged settlement readings, stage consumption, interval data and read KPIs.

Modules: ``cycles`` (pure boundary arithmetic), ``settlement`` (qualities, stage
consumption, reconciliation), ``db`` (tables and queries), ``capture`` (the component
that takes settlements at each boundary and annotates readings), ``intervals``
(per-slot consumption from register differences), ``kpi`` (read completeness), ``view``
(a meter's cycle as the API and the export show it). The composition root
(:mod:`gateway.runtime`) builds the capture component and registers the billing routes;
importing this package registers nothing.
"""
