"""The ``mqtt`` section: the MQTT sink's broker, topics, credentials and TLS files."""

from __future__ import annotations

from typing import Final

import yaml

from gateway.config.context import LoadContext
from gateway.settings import MqttProtocol, MqttSettings
from gateway.yamlpos import Invalid, MapView, as_bool, as_choice, as_int, as_text, describe

_MQTT_KEYS: Final = ("host", "port", "topic_prefix", "client_id", "keepalive", "username",
                     "password", "password_env", "password_file", "tls", "inflight", "enabled", "protocol")
_TLS_KEYS: Final = ("ca_file", "cert_file", "key_file", "insecure")


def _topic_prefix(node: yaml.Node) -> str:
    text = as_text(node)
    if any(c in text for c in "+#\0") or text.startswith("/") or text.endswith("/"):
        raise Invalid(f'must be topic levels without "+", "#" or a leading or trailing "/", not '
                      f"{describe(node)}")
    return text


def load_mqtt(ctx: LoadContext, node: yaml.Node | None) -> MqttSettings | None:
    """The ``mqtt`` section; None when the file has none (the sink is off)."""
    if node is None:
        return None
    m = MapView(ctx.issues, node, "mqtt", _MQTT_KEYS)
    d = MqttSettings()
    tls, ca, cert, key, insecure = mqtt_tls(ctx, m)
    username = m.opt("username", as_text)
    password = ctx.secret(m, "password")
    if password is not None and username is None:
        ctx.issues.add(m.line, "mqtt: a password is given without a username; add username")
    return MqttSettings(
        host=m.get("host", as_text, d.host), port=m.get("port", as_int(1, 65535), d.port),
        topic_prefix=m.get("topic_prefix", _topic_prefix, d.topic_prefix),
        client_id=m.opt("client_id", as_text),
        keepalive_s=m.get("keepalive", as_int(5, 3600), d.keepalive_s),
        username=username, password=password, tls=tls, ca_file=ca, cert_file=cert,
        key_file=key, tls_insecure=insecure, inflight=m.get("inflight", as_int(1, 65535),
                                                            d.inflight),
        enabled=m.get("enabled", as_bool, d.enabled),
        protocol=_protocol(m.get("protocol", as_choice(_PROTOCOLS), str(d.protocol))))


_PROTOCOLS: Final = ("5", "3.1.1")


def _protocol(text: str) -> MqttProtocol:
    """``mqtt.protocol``: ``5`` (the default: a PUBACK says whether the broker took the
    message) or ``3.1.1`` (for old brokers; a denied publish looks delivered)."""
    return "3.1.1" if text == "3.1.1" else "5"


def mqtt_tls(ctx: LoadContext, m: MapView) -> tuple[bool, str | None, str | None, str | None, bool]:
    """The ``mqtt.tls`` key: a flag, or a mapping of CA, certificate and key files."""
    node = m.node("tls")
    if node is None:
        return False, None, None, None, False
    if isinstance(node, yaml.ScalarNode):
        return m.get("tls", as_bool, False), None, None, None, False
    t = MapView(ctx.issues, node, "mqtt tls", _TLS_KEYS)
    files: dict[str, str | None] = {}
    for key in ("ca_file", "cert_file", "key_file"):
        path = ctx.path(t, key)
        if path is not None and not path.is_file():
            t.bad(key, f"names {path}, which does not exist; create it or fix the path")
        files[key] = str(path) if path is not None else None
    if (files["cert_file"] is None) != (files["key_file"] is None):
        ctx.issues.add(t.line, "mqtt tls: cert_file and key_file go together; give both or "
                       "neither")
    return (True, files["ca_file"], files["cert_file"], files["key_file"],
            t.get("insecure", as_bool, False))
