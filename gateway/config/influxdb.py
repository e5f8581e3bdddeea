"""The ``influxdb`` section: the InfluxDB line-protocol sink."""

from __future__ import annotations

import re
from typing import Final, cast, get_args

import yaml

from gateway.config.context import LoadContext
from gateway.settings import InfluxClient, InfluxSettings
from gateway.yamlpos import Invalid, MapView, as_bool, as_choice, as_float, as_int, as_text, describe

_INFLUX_KEYS: Final = ("url", "org", "bucket", "token", "token_env", "token_file", "measurement",
                       "batch_size", "batch_age_ms", "timeout_ms", "enabled", "client")


def _url(node: yaml.Node) -> str:
    text = as_text(node).strip()
    if not re.match(r"^https?://[^/\s]+", text):
        raise Invalid(f'must be an http:// or https:// URL such as "http://127.0.0.1:8086", not '
                      f"{describe(node)}")
    return text


def load_influxdb(ctx: LoadContext, node: yaml.Node | None) -> InfluxSettings | None:
    """The ``influxdb`` section; None when the file has none (the sink is off)."""
    if node is None:
        return None
    m = MapView(ctx.issues, node, "influxdb", _INFLUX_KEYS)
    d = InfluxSettings()
    default_client: str = d.client
    client = m.get("client", as_choice(get_args(InfluxClient)), default_client)
    return InfluxSettings(
        url=m.get("url", _url, d.url), org=m.get("org", as_text, d.org),
        bucket=m.get("bucket", as_text, d.bucket), token=ctx.secret(m, "token"),
        measurement=m.get("measurement", as_text, d.measurement),
        batch_size=m.get("batch_size", as_int(1, 100000), d.batch_size),
        batch_age_s=m.get("batch_age_ms", as_float(1, 600000), d.batch_age_s * 1000) / 1000,
        timeout_s=m.get("timeout_ms", as_float(1, 600000), d.timeout_s * 1000) / 1000,
        enabled=m.get("enabled", as_bool, d.enabled),
        client=cast(InfluxClient, client))
