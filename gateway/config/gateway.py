"""The ``gateway`` section: the gateway's id, time zone and data directory."""

from __future__ import annotations

import zoneinfo
from pathlib import Path
from typing import Final

import yaml

from gateway.config.context import LoadContext
from gateway.config.convert import ident
from gateway.settings import GatewaySettings
from gateway.yamlpos import Invalid, MapView, as_text, suggest

GATEWAY_KEYS: Final = ("id", "timezone", "data_dir", "profiles_dir")


def _timezone(node: yaml.Node) -> str:
    name = as_text(node)
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        hint = suggest(name, zoneinfo.available_timezones())
        raise Invalid(f'"{name}" is not a known time zone{hint}; use an IANA name such as '
                      f"Asia/Shanghai or UTC") from None
    return name


def load_gateway(ctx: LoadContext, m: MapView) -> GatewaySettings | None:
    """The ``gateway`` section; None when its id is missing or invalid."""
    gid = m.req("id", ident, "the gateway's name, e.g. sub-110kv-east")
    tz = m.get("timezone", _timezone, "UTC")
    data_dir = ctx.path(m, "data_dir") or Path("/var/lib/amr-gateway")
    return GatewaySettings(id=gid, timezone=tz, data_dir=data_dir) if gid is not None else None
