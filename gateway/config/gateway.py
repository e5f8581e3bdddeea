"""The ``gateway`` section: the gateway's id, time zone, data directory and clock check command."""

from __future__ import annotations

import shlex
import zoneinfo
from pathlib import Path
from typing import Final

import yaml

from gateway.config.context import LoadContext
from gateway.config.convert import ident
from gateway.settings import GatewaySettings
from gateway.yamlpos import Invalid, MapView, as_text, suggest

GATEWAY_KEYS: Final = ("id", "timezone", "data_dir", "profiles_dir", "clock_check_command")


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
    check = m.opt("clock_check_command", _command)
    return GatewaySettings(id=gid, timezone=tz, data_dir=data_dir,
                           clock_check_command=check) if gid is not None else None


def _command(node: yaml.Node) -> str:
    text = as_text(node).strip()
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise Invalid(f"is not a command line ({exc}); quote it as a shell would") from None
    if not argv:
        raise Invalid('must be a command such as "/usr/local/bin/gps-locked" (exit 0 = clock synchronized)')
    return text
