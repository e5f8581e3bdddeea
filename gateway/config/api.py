"""The ``api`` section: the HTTP API's listen address and bearer token."""

from __future__ import annotations

from typing import Final

import yaml

from gateway.config.context import LoadContext
from gateway.settings import ApiSettings
from gateway.yamlpos import Invalid, MapView, as_bool, describe, scalar_text

DEFAULT_API_TOKEN_ENV: Final = "AMR_API_TOKEN"
_API_KEYS: Final = ("listen", "token", "token_env", "token_file", "enabled",
                        "metrics_public_on_loopback")


def _listen(node: yaml.Node) -> tuple[str, int]:
    text = scalar_text(node).strip()
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if sep and host and port.isdigit() and 1 <= int(port) <= 65535:
        return host, int(port)
    raise Invalid(f'must be host:port such as "127.0.0.1:8080", not {describe(node)}')


def load_api(ctx: LoadContext, node: yaml.Node | None) -> ApiSettings:
    """The ``api`` section (always present: defaults when the file has none)."""
    m = MapView(ctx.issues, node, "api", _API_KEYS, line=1)
    d = ApiSettings()
    host, port = m.get("listen", _listen, (d.host, d.port))
    return ApiSettings(host=host, port=port,
                       token=ctx.secret(m, "token", env_default=DEFAULT_API_TOKEN_ENV),
                       enabled=m.get("enabled", as_bool, d.enabled),
                       metrics_public_on_loopback=m.get("metrics_public_on_loopback", as_bool,
                                                        d.metrics_public_on_loopback))
