"""The ``api`` section: the HTTP API's listen address, bearer token, TLS and query limits."""

from __future__ import annotations

from decimal import Decimal
from typing import Final

import yaml

from gateway.config.context import LoadContext
from gateway.config.convert import duration
from gateway.settings import ApiSettings, ApiTlsSettings
from gateway.tls import TlsFileError, server_context
from gateway.yamlpos import Invalid, MapView, as_bool, as_int, as_text, describe, scalar_text

DEFAULT_API_TOKEN_ENV: Final = "AMR_API_TOKEN"
_API_KEYS: Final = ("listen", "token", "token_env", "token_file", "enabled", "tls",
                    "read_connections", "query_timeout")
_API_TLS_KEYS: Final = ("cert_file", "key_file", "client_ca_file")


def _listen(node: yaml.Node) -> tuple[str, int]:
    text = scalar_text(node).strip()
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if sep and host and port.isdigit() and 1 <= int(port) <= 65535:
        return host, int(port)
    raise Invalid(f'must be host:port such as "127.0.0.1:8080", not {describe(node)}')


def load_tls(ctx: LoadContext, node: yaml.Node | None) -> ApiTlsSettings | None:
    """``api.tls`` (None when absent): the files must exist and load, or an issue names the one
    that does not."""
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")):
        return None
    m = MapView(ctx.issues, node, "api.tls", _API_TLS_KEYS)
    if not m.ok:
        return None
    hint = "the path of a PEM file, or remove api.tls to serve plain HTTP"
    m.req("cert_file", as_text, hint)
    m.req("key_file", as_text, hint)
    cert, key = ctx.path(m, "cert_file"), ctx.path(m, "key_file")
    if cert is None or key is None:
        return None
    tls = ApiTlsSettings(cert_file=cert, key_file=key, client_ca_file=ctx.path(m, "client_ca_file"))
    try:
        server_context(tls)
    except TlsFileError as exc:
        m.bad(exc.key, f"names {exc.path}, which {exc.reason}")
        return None
    return tls


def load_api(ctx: LoadContext, node: yaml.Node | None) -> ApiSettings:
    """The ``api`` section (always present: defaults when the file has none)."""
    m = MapView(ctx.issues, node, "api", _API_KEYS, line=1)
    d = ApiSettings()
    host, port = m.get("listen", _listen, (d.host, d.port))
    return ApiSettings(host=host, port=port,
                       token=ctx.secret(m, "token", env_default=DEFAULT_API_TOKEN_ENV),
                       enabled=m.get("enabled", as_bool, d.enabled),
                       tls=load_tls(ctx, m.node("tls")),
                       read_connections=m.get("read_connections", as_int(1, 16), d.read_connections),
                       query_timeout_s=float(m.get("query_timeout", duration(Decimal("0.1"), Decimal(3600)),
                                                   Decimal(str(d.query_timeout_s)))))
