"""docs/configuration.md states each key's default; these tests hold it to what the loader
gives a configuration that leaves the key out.

``test_docs.py`` checks that every key is documented; this checks the "default" column:
the whole ``review`` section mechanically (its YAML key → field table is the loader's own),
and the other sections' single-valued defaults through the table below. A default written
as a rule ("9600 Modbus RTU, 2400 dlt645", "every schedule") is not compared here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.config import load_settings_from_text
from gateway.config.review import _REVIEW_SECTIONS
from gateway.review_thresholds import ReviewThresholds
from gateway.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

# every section present with nothing set, so each key takes its default
CONFIG = """\
gateway: {id: g1}
buses:
  - {id: s, type: serial, port: /dev/ttyS1, protocol: modbus-rtu}
meters: [{id: m1, customer: C1, bus: s, address: 1, profile: simulator, billing: p}]
schedules: {a: {every: 15m}}
billing: {p: {}}
mqtt: {}
influxdb: {token_env: INFLUX_TOKEN}
customers: [{id: C1, meters: [{meter: m1, role: main}]}]
"""

_UNITS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600), "d": Decimal(86400),
          "MB": Decimal(10) ** 6, "GB": Decimal(10) ** 9, "MiB": Decimal(2) ** 20}


def documented_defaults() -> dict[str, str]:
    """Key → the text of its "default" cell, for every table row of the reference."""
    out: dict[str, str] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        out[cells[0].strip("`")] = cells[2]
    return out


def doc_value(cell: str) -> object:
    """A default cell as a value: ``none…`` → None, numbers and durations/sizes → Decimal
    (seconds, bytes), ``true``/``false`` → bool, ``[a, b]`` → tuple, else the text."""
    text = cell.replace("`", "").strip().strip('"')
    if text == "" or text.startswith("none"):
        return None
    if text in ("true", "false"):
        return text == "true"
    if text.startswith("[") and text.endswith("]"):
        return tuple(doc_value(part) for part in text[1:-1].split(","))
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return Decimal(text)
    unit = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|MB|GB|MiB)", text)
    if unit:
        return Decimal(unit[1]) * _UNITS[unit[2]]
    return text


def code_value(value: object) -> object:
    """A loaded default in the same terms as :func:`doc_value`."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float | Decimal):
        return Decimal(str(value))
    if isinstance(value, tuple):
        return tuple(code_value(v) for v in value)
    if isinstance(value, str) and re.fullmatch(r"\d+", value):
        return Decimal(value)       # mqtt.protocol "5"
    return value


def _times(factor: int, get: Callable[[Settings], float]) -> Callable[[Settings], Decimal]:
    return lambda s: Decimal(str(get(s))) * factor


# key → how to read its default off loaded Settings
LOADED: dict[str, Callable[[Settings], object]] = {
    "gateway.timezone": lambda s: s.gateway.timezone,
    "gateway.data_dir": lambda s: str(s.gateway.data_dir),
    "buses[].parity": lambda s: s.buses["s"].parity,
    "buses[].stopbits": lambda s: s.buses["s"].stopbits,
    "buses[].bytesize": lambda s: s.buses["s"].bytesize,
    "buses[].retries": lambda s: s.buses["s"].retries,
    "buses[].allow_writes": lambda s: s.buses["s"].allow_writes,
    "buses[].concurrency": lambda s: s.buses["s"].concurrency,
    "buses[].dead_backoff_s": lambda s: s.buses["s"].dead_backoff_s,
    "buses[].simulate": lambda s: "s" in s.simulated_buses,
    "meters[].ct_ratio": lambda s: s.meters["m1"].ct_ratio.factor,
    "meters[].pt_ratio": lambda s: s.meters["m1"].pt_ratio.factor,
    "meters[].rated_voltage_v": lambda s: s.meters["m1"].rated_voltage_v,
    "meters[].rated_current_a": lambda s: s.meters["m1"].rated_current_a,
    "schedules.<name>.aligned": lambda s: s.schedules["a"].aligned,
    "schedules.<name>.offset": lambda s: s.schedules["a"].offset_s,
    "billing.<plan>.cycle_day": lambda s: s.billing["p"].cycle_day,
    "billing.<plan>.at": lambda s: s.billing["p"].at.strftime("%H:%M"),
    "billing.<plan>.tolerance": lambda s: s.billing["p"].tolerance_s,
    "billing.<plan>.max_meter_offset": lambda s: s.billing["p"].max_meter_offset_s,
    "billing.<plan>.allow_estimated": lambda s: s.billing["p"].allow_estimated,
    "billing.<plan>.demand.method": lambda s: s.billing["p"].demand.method,
    "billing.<plan>.demand.window_minutes": lambda s: Decimal(str(s.billing["p"].demand.window_s)) / 60,
    "customers[].name": lambda s: s.customers["C1"].name,
    "customers[].contract_capacity_kva": lambda s: s.customers["C1"].contract_capacity_kva,
    "customers[].tariff": lambda s: s.customers["C1"].tariff,
    "customers[].power_factor_class": lambda s: s.customers["C1"].power_factor_class,
    "mqtt.host": lambda s: s.mqtt.host if s.mqtt else None,
    "mqtt.port": lambda s: s.mqtt.port if s.mqtt else None,
    "mqtt.topic_prefix": lambda s: s.mqtt.topic_prefix if s.mqtt else None,
    "mqtt.keepalive": lambda s: s.mqtt.keepalive_s if s.mqtt else None,
    "mqtt.username": lambda s: s.mqtt.username if s.mqtt else "?",
    "mqtt.tls.insecure": lambda s: s.mqtt.tls_insecure if s.mqtt else None,
    "mqtt.inflight": lambda s: s.mqtt.inflight if s.mqtt else None,
    "mqtt.protocol": lambda s: s.mqtt.protocol if s.mqtt else None,
    "mqtt.enabled": lambda s: s.mqtt.enabled if s.mqtt else None,
    "influxdb.url": lambda s: s.influxdb.url if s.influxdb else None,
    "influxdb.org": lambda s: s.influxdb.org if s.influxdb else None,
    "influxdb.bucket": lambda s: s.influxdb.bucket if s.influxdb else None,
    "influxdb.measurement": lambda s: s.influxdb.measurement if s.influxdb else None,
    "influxdb.batch_size": lambda s: s.influxdb.batch_size if s.influxdb else None,
    "influxdb.batch_age_ms": _times(1000, lambda s: s.influxdb.batch_age_s if s.influxdb else 0),
    "influxdb.timeout_ms": _times(1000, lambda s: s.influxdb.timeout_s if s.influxdb else 0),
    "influxdb.client": lambda s: s.influxdb.client if s.influxdb else None,
    "influxdb.enabled": lambda s: s.influxdb.enabled if s.influxdb else None,
    "api.listen": lambda s: f"{s.api.host}:{s.api.port}",
    "api.enabled": lambda s: s.api.enabled,
    "api.read_connections": lambda s: s.api.read_connections,
    "api.query_timeout": lambda s: s.api.query_timeout_s,
    "api.metrics_public_on_loopback": lambda s: s.api.metrics_public_on_loopback,
    "store.synchronous": lambda s: s.store.synchronous,
    "store.commit_interval": lambda s: s.store.commit_interval_s,
    "store.min_free": lambda s: s.store.min_free_bytes,
    "store.max_pending": lambda s: s.store.max_pending,
    "store.retention.realtime_days": lambda s: s.store.retention_realtime_days,
    "store.retention.interval_days": lambda s: s.store.retention_interval_days,
}

# review keys whose default is written as a rule or a list abbreviated with "…"
REVIEW_NOT_COMPARED = {"review.meter_events.kinds", "review.low_power_factor.tariff_class"}


@pytest.fixture(name="loaded", scope="module")
def _loaded() -> Settings:
    return load_settings_from_text(CONFIG, env={"INFLUX_TOKEN": "t", "AMR_API_TOKEN": "t"})


@pytest.mark.parametrize("key", sorted(LOADED))
def test_documented_default_is_the_loaders(key: str, loaded: Settings) -> None:
    docs = documented_defaults()
    assert key in docs, f"docs/configuration.md has no row for {key}"
    assert doc_value(docs[key]) == code_value(LOADED[key](loaded)), (key, docs[key])


def test_every_review_default_is_the_loaders() -> None:
    docs = documented_defaults()
    defaults = ReviewThresholds()
    compared = 0
    for section, keys in _REVIEW_SECTIONS.items():
        for key, field_name in keys.items():
            doc_key = f"review.{section}.{key}"
            if doc_key in REVIEW_NOT_COMPARED:
                continue
            assert doc_key in docs, f"docs/configuration.md has no row for {doc_key}"
            assert doc_value(docs[doc_key]) == code_value(getattr(defaults, field_name)), (doc_key, docs[doc_key])
            compared += 1
    for key in ("enabled", "clear_after_normal_cycles"):
        assert doc_value(docs[f"review.{key}"]) == code_value(getattr(defaults, key)), key
    assert compared > 40


def test_the_meter_event_kinds_default_names_every_kind() -> None:
    cell = documented_defaults()["review.meter_events.kinds"]
    for kind in ReviewThresholds().meter_event_kinds:
        base = re.sub(r"_l[123]$", "", kind)
        assert base in cell, (kind, cell)
        if kind != base:        # a per-phase kind is written "<base>_l1…l3"
            assert f"{base}_l1…l3" in cell, (kind, cell)
