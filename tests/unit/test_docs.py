"""The operator docs keep up with the code: every configuration key, every profile key.

The key lists are the loaders' own constants (``*_KEYS`` in ``gateway/config/*.py`` and the
profile schemas), so adding a key without documenting it fails here. A new ``*_KEYS``
constant that this test does not know how to place fails too, so it cannot slip past.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterable
from pathlib import Path

import pytest

import gateway.config
from drivers.dlt645 import profile_schema as dlt645_schema
from drivers.modbus import profile_schema as modbus_schema
from gateway.profiles import CANONICAL_POINTS

DOCS = Path(__file__).resolve().parents[2] / "docs"
README = DOCS.parent / "README.md"

# constant name -> the documented prefix of its keys (the section path in docs/configuration.md)
PREFIXES = {
    "_TOP_KEYS": "",
    "GATEWAY_KEYS": "gateway.",
    "_BUS_KEYS": "buses[].",
    "_METER_KEYS": "meters[].",
    "_SCHEDULE_KEYS": "schedules.<name>.",
    "_BILLING_KEYS": "billing.<plan>.",
    "_DEMAND_KEYS": "billing.<plan>.demand.",
    "_MQTT_KEYS": "mqtt.",
    "_TLS_KEYS": "mqtt.tls.",
    "_INFLUX_KEYS": "influxdb.",
    "_API_KEYS": "api.",
    "_API_TLS_KEYS": "api.tls.",
    "_STORE_KEYS": "store.",
    "_RETENTION_KEYS": "store.retention.",
    "_REVIEW_KEYS": "review.",
    "_REVIEW_SECTIONS": "review.",  # review.<section>.<key>
    "_OVERRIDE_KEYS": "review.",  # review.overrides.<customers|meters>.<id> takes review's sections
    "CUSTOMER_KEYS": "customers[].",
    "CUSTOMER_METER_KEYS": "customers[].meters[].",
}
LOGGING_KEYS = ("level", "levels")  # gateway/logsetup.py reads them; no constant there


def _flatten(prefix: str, value: object) -> Iterable[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict):  # review sections: section -> {key: field}
                yield f"{prefix}{k}"
                yield from (f"{prefix}{k}.{key}" for key in v)
            else:  # buses: bus type -> keys
                yield from (f"{prefix}{key}" for key in v)
    else:
        assert isinstance(value, tuple)
        yield from (f"{prefix}{key}" for key in value)


def config_keys() -> set[str]:
    """Every configuration key path, from the constants of gateway/config/*.py."""
    keys: set[str] = set()
    for info in pkgutil.iter_modules(gateway.config.__path__):
        module = importlib.import_module(f"gateway.config.{info.name}")
        for name, value in vars(module).items():
            if not re.fullmatch(r"_?[A-Z_]+_(KEYS|SECTIONS)", name):
                continue
            if name not in PREFIXES:
                pytest.fail(f"gateway.config.{info.name}.{name} is a key list this test does not place; "
                            "add it to PREFIXES and document its keys in docs/configuration.md")
            keys.update(_flatten(PREFIXES[name], value))
    keys.update(f"logging.{k}" for k in LOGGING_KEYS)
    return keys


def test_every_configuration_key_is_in_the_configuration_reference() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    keys = config_keys()
    assert len(keys) > 100
    missing = sorted(k for k in keys if f"`{k}`" not in text)
    assert missing == [], f"docs/configuration.md lacks these keys: {missing}"


def test_the_reference_names_no_key_the_loader_does_not_accept() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    keys = config_keys()
    documented = set(re.findall(r"^\| `([^`]+)` \|", text, flags=re.MULTILINE))
    assert documented, "the reference's tables start each row with the key in backticks"
    assert sorted(documented - keys) == []


def test_every_profile_key_and_canonical_point_is_in_the_profile_reference() -> None:
    text = (DOCS / "profiles.md").read_text(encoding="utf-8")
    keys = {*modbus_schema.TOP_KEYS, *modbus_schema._POINT_KEYS, *modbus_schema._DEFAULT_KEYS,
            *dlt645_schema.TOP_KEYS, *dlt645_schema._POINT_KEYS}
    missing = sorted(k for k in keys if f"`{k}`" not in text)
    missing += sorted(f"limits.{k}" for k in modbus_schema._LIMIT_KEYS if f"`limits.{k}`" not in text)
    names = {p for p in CANONICAL_POINTS if f"`{p}`" not in text}
    # the tariff registers are listed as `_t1` … `_t4` after the total
    assert {p for p in names if not re.search(r"_t[1-4]$", p)} == set()
    assert missing == []


@pytest.mark.parametrize("page", ["install.md", "rs485.md", "profiles.md", "configuration.md",
                                  "api.md", "troubleshooting.md"])
def test_each_operator_page_exists_and_the_readme_links_it(page: str) -> None:
    assert (DOCS / page).is_file()
    assert f"docs/{page}" in README.read_text(encoding="utf-8")


def metric_families() -> set[str]:
    """Every Prometheus family name the gateway writes: the ``# TYPE`` lines of the sources
    and the ``("amr_…", …)`` family tables of the modules that write ``prometheus_lines``."""
    names: set[str] = set()
    for path in (DOCS.parent / "gateway").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if "def prometheus_lines" not in text and "# TYPE" not in text:
            continue
        names |= set(re.findall(r"# TYPE (amr_[a-z0-9_]+)", text))
        names |= set(re.findall(r'\(\s*"(amr_[a-z0-9_]+)",', text))
    return names


def test_every_metric_family_is_in_the_api_page() -> None:
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    names = metric_families()
    assert len(names) >= 20 and "amr_bus_read_seconds" in names and "amr_sink_backlog" in names
    missing = sorted(n for n in names if not re.search(rf"`{n}(_bucket)?[`{{]", text))
    assert missing == [], f"docs/api.md (GET /metrics) lacks these metrics: {missing}"
