"""The walk over one configuration file: top-level keys, each section in order, then Settings."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import yaml

from gateway.config.api import load_api
from gateway.config.billing import load_billing
from gateway.config.buses import load_buses
from gateway.config.context import LoadContext, peek_text
from gateway.config.customers import load_customers, review_with_customers, unknown_override_customers
from gateway.config.gateway import GATEWAY_KEYS, load_gateway
from gateway.config.influxdb import load_influxdb
from gateway.config.meters import load_meters
from gateway.config.mqtt import load_mqtt
from gateway.config.profile_dirs import profile_search_dirs
from gateway.config.review import load_review
from gateway.config.schedules import load_schedules
from gateway.config.store import load_store
from gateway.errors import ConfigError, ConfigIssue
from gateway.logsetup import load_logging
from gateway.settings import Settings
from gateway.yamlpos import MapView, as_text, compose

log = logging.getLogger("gateway.config")

_TOP_KEYS: Final = ("gateway", "buses", "meters", "schedules", "billing", "mqtt", "influxdb", "api",
                    "store", "review", "profiles_dir", "logging", "customers")


def run(ctx: LoadContext, root: yaml.Node, source: Path | None) -> Settings | None:
    """Every section in order; the Settings, or None when an issue was recorded in ``ctx``."""
    top = MapView(ctx.issues, root, "the configuration", _TOP_KEYS)
    if not top.ok:
        return None
    gateway_node = top.node("gateway")
    gw_map = MapView(ctx.issues, gateway_node, "gateway", GATEWAY_KEYS, line=1)
    if gateway_node is None:
        top.req("gateway", as_text, "with at least id")
        gw = None
    else:
        gw = load_gateway(ctx, gw_map)
    profiles_dir = ctx.path(top, "profiles_dir")
    if "profiles_dir" in gw_map:
        if profiles_dir is not None:
            ctx.issues.add(gw_map.key_line("profiles_dir"),
                           "gateway: profiles_dir is also given at the top level; keep one")
        profiles_dir = ctx.path(gw_map, "profiles_dir")
    buses = load_buses(ctx, top)
    schedules = load_schedules(ctx, top)
    billing = load_billing(ctx, top)
    search = profile_search_dirs(ctx.base_dir, profiles_dir)
    meters, profiles = load_meters(ctx, top, buses, schedules, billing, search)
    mqtt = load_mqtt(ctx, top.node("mqtt"))
    influx = load_influxdb(ctx, top.node("influxdb"))
    api = load_api(ctx, top.node("api"))
    store = load_store(ctx, top.node("store"))
    review = load_review(ctx, top.node("review"))
    listed = top.node("meters")
    declared = {t for node in (listed.value if isinstance(listed, yaml.SequenceNode) else [])
                if (t := peek_text(node, "id"))}
    customers = load_customers(ctx, top, meters, declared)
    if review is not None:
        for sentence in unknown_override_customers(review, customers):
            log.warning("%s", sentence)
        review = review_with_customers(review, customers)
    logging_settings = load_logging(ctx.issues, top.node("logging"))
    if ctx.issues or ctx.profile_issues or gw is None or review is None:
        return None
    return Settings(gateway=gw, buses={k: v.settings for k, v in buses.items()}, meters=meters,
                    schedules=schedules, profiles=profiles, billing=billing, mqtt=mqtt,
                    influxdb=influx, api=api, store=store, review=review, source=source,
                    logging=logging_settings, customers=customers)


def load(text: str, file: str, base_dir: Path, env: Mapping[str, str] | None,
         source: Path | None) -> Settings:
    """Parse and validate configuration ``text``; raise ConfigError with every issue found."""
    ctx = LoadContext(file, Path(os.path.abspath(base_dir)), os.environ if env is None else env)
    root = compose(text, ctx.issues)
    settings = run(ctx, root, source) if root is not None else None
    issues = ctx.issues.items + ctx.profile_issues
    if settings is None or issues:
        if not issues:  # pragma: no cover - run() returns None only with an issue recorded
            issues = [ConfigIssue(file, None, "the configuration is invalid")]
        issues.sort(key=lambda i: (i.file != file, i.file, i.line or 0))
        raise ConfigError(issues)
    return settings
