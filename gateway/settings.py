"""Typed, frozen configuration objects: what ``gateway.config`` parses YAML into.

Everything downstream (scheduler, drivers, sinks, billing, API) reads these and never the
raw YAML. All checks happen at load (``gateway.config.load_settings``); no network at load.
Durations are seconds (float), ratios exact Decimals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Literal

from drivers.base import NO_PLAN_OPTIONS, BusParams, PlanOptions, PointDef
from gateway.logsetup import LoggingSettings
from gateway.review_thresholds import ReviewThresholds

SchedulePriority = Literal["settlement", "interval", "realtime"]
InfluxClient = Literal["builtin", "influxdb-client"]
MqttProtocol = Literal["5", "3.1.1"]
"""``influxdb.client``: the standard-library writer (default, no influxdb_client import) or
the official influxdb-client library."""
PRIORITY_ORDER: dict[str, int] = {"settlement": 0, "interval": 1, "realtime": 2}


@lru_cache(maxsize=4096)
def _ratio_factor(primary: str, secondary: str) -> Decimal:
    """primary ÷ secondary of a ratio written so: one Decimal object for every ratio written
    alike (keyed by text: 200/5 and 200.0/5 give the equal but differently written factors
    40 and 40.0; a Decimal's text reads back as the same Decimal)."""
    return Decimal(primary) / Decimal(secondary)


@dataclass(frozen=True, slots=True)
class Ratio:
    """A CT or PT ratio such as ``200/5`` (factor 40) or ``10000/100`` (factor 100)."""

    primary: Decimal = Decimal(1)
    secondary: Decimal = Decimal(1)

    @property
    def factor(self) -> Decimal:
        """primary ÷ secondary, exact: one Decimal object for every ratio written alike, so
        10,000 meters on a handful of CTs keep a handful of factors (the store recognises
        a factor's text by the object: gateway.storecodec._FACTOR_TEXTS)."""
        return _ratio_factor(str(self.primary), str(self.secondary))

    def __str__(self) -> str:
        return f"{self.primary}/{self.secondary}"


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """The ``gateway`` section."""

    id: str
    timezone: str = "UTC"
    data_dir: Path = Path("/var/lib/amr-gateway")
    #: Command whose exit status 0 says the gateway clock is synchronized (GPS / B-code boxes);
    #: None: the kernel's NTP state (gateway.billing.clockstate).
    clock_check_command: str | None = None


BusSettings = BusParams
"""One bus (a serial line or one TCP endpoint): the drivers' :class:`drivers.base.BusParams`,
so a driver is built from the configuration's own object and drivers never import settings."""


@dataclass(frozen=True, slots=True)
class Profile:
    """A meter profile: canonical point name → the protocol's point, plus device quirks.

    ``protocol`` is the protocol family (a package in ``drivers/``); ``limits`` its plan
    options (Modbus request limits, ...), passed to its plan compiler untouched.
    """

    name: str
    protocol: str
    points: Mapping[str, PointDef]
    limits: PlanOptions = NO_PLAN_OPTIONS
    description: str = ""
    source: str = ""


@dataclass(frozen=True, slots=True)
class MeterSettings:
    """One meter on one bus."""

    id: str
    customer: str
    bus: str
    address: str                     # as the protocol's descriptor normalised it
    profile: str
    ct_ratio: Ratio = Ratio()
    pt_ratio: Ratio = Ratio()
    schedules: tuple[str, ...] = ()
    billing: str | None = None
    protocol: str | None = None   # per-meter override: a protocol of the bus's family (drivers.registry)
    rated_voltage_v: Decimal | None = None
    rated_current_a: Decimal | None = None

    @property
    def multiplier(self) -> Decimal:
        """CT factor × PT factor (倍率)."""
        return self.ct_ratio.factor * self.pt_ratio.factor


@dataclass(frozen=True, slots=True)
class ScheduleSettings:
    """A polling schedule: every ``every_s`` seconds, on wall-clock boundaries when aligned."""

    name: str
    every_s: float
    points: tuple[str, ...] = ("*",)   # glob patterns over canonical point names
    aligned: bool = True
    priority: SchedulePriority = "interval"
    offset_s: float = 0.0


@dataclass(frozen=True, slots=True)
class DemandSettings:
    """A plan's ``demand`` key: how maximum demand is computed where the meter gives none.

    ``method`` ``block``: aligned windows of ``window_s``; ``sliding``: windows of ``window_s``
    ending every ``slide_s`` (None: the meter's shortest energy read interval).
    """

    method: Literal["block", "sliding"] = "block"
    window_s: float = 900.0
    slide_s: float | None = None


@dataclass(frozen=True, slots=True)
class BillingPlan:
    """A billing plan: cycle start day, stage boundary days, boundary time, tolerance."""

    name: str
    cycle_day: int = 1
    stages: tuple[int, ...] = ()
    at: time = time(0, 0)
    tolerance_s: float = 900.0
    allow_estimated: bool = False
    #: A meter clock further than this from the gateway's at a boundary read: ``clock_unverified``.
    max_meter_offset_s: float = 300.0
    registers: tuple[str, ...] = (
        "energy_import_kwh", "energy_import_kwh_t1", "energy_import_kwh_t2",
        "energy_import_kwh_t3", "energy_import_kwh_t4",
        "energy_export_kwh", "energy_export_kwh_t1", "energy_export_kwh_t2",
        "energy_export_kwh_t3", "energy_export_kwh_t4",
        "energy_import_kvarh", "energy_export_kvarh", "demand_max_kw",
        "energy_q1_kvarh", "energy_q2_kvarh", "energy_q3_kvarh", "energy_q4_kvarh",
    )
    #: Maximum demand computed from interval readings (two-part tariff, gateway.billing.demand).
    demand: DemandSettings = DemandSettings()


CustomerRole = Literal["main", "sub", "deduct"]
TariffType = Literal["single", "two_part"]
#: The sign a role takes when ``sign`` is not written: main and sub add, deduct subtracts.
DEFAULT_SIGN: dict[str, int] = {"main": 1, "sub": 1, "deduct": -1}


@dataclass(frozen=True, slots=True)
class CustomerMeter:
    """One meter of a customer (户号) with its role and the sign its consumption takes in the bill."""

    meter: str
    role: CustomerRole = "main"
    sign: int = 1


@dataclass(frozen=True, slots=True)
class CustomerSettings:
    """A customer (户号): who is billed, on which tariff, for the signed sum of which meters.

    ``derived`` is True for a customer the loader made from the meters' ``customer`` fields
    (a configuration without a ``customers`` section, or a meter no customer lists).
    """

    id: str
    name: str | None = None
    contract_capacity_kva: Decimal | None = None
    tariff: TariffType = "single"
    meters: tuple[CustomerMeter, ...] = ()
    derived: bool = False
    #: 力调 power-factor class (a name of ``review_thresholds.POWER_FACTOR_CLASSES``), None: not set
    power_factor_class: str | None = None


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """The ``mqtt`` section (a sink)."""

    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = "amr"
    client_id: str | None = None
    keepalive_s: int = 30
    username: str | None = None
    password: str | None = None       # resolved from password_env / password_file at load
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    inflight: int = 100
    enabled: bool = True
    protocol: MqttProtocol = "5"      # 3.1.1 cannot tell a denied publish from a delivered one


@dataclass(frozen=True, slots=True)
class InfluxSettings:
    """The ``influxdb`` section (a sink)."""

    url: str = "http://127.0.0.1:8086"
    org: str = "amr"
    bucket: str = "amr"
    token: str | None = None          # resolved from token_env / token_file at load
    measurement: str = "amr_reading"
    batch_size: int = 1000
    batch_age_s: float = 1.0
    timeout_s: float = 10.0
    enabled: bool = True
    client: InfluxClient = "builtin"  # the HTTP writer: see gateway.sinks.influx


@dataclass(frozen=True, slots=True)
class ApiTlsSettings:
    """``api.tls``: serve the API over HTTPS with this certificate and key.

    With ``client_ca_file`` every client must present a certificate signed by that CA
    (mutual TLS); without it any client that trusts the server's certificate may connect.
    """

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """The ``api`` section: listen address, bearer token, TLS and the query limits."""

    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None          # resolved from token_file or AMR_API_TOKEN at load
    enabled: bool = True
    tls: ApiTlsSettings | None = None
    read_connections: int = 2         # the API's own read-only SQLite connections
    query_timeout_s: float = 10.0     # a query running (or waiting) longer is a 503
    metrics_public_on_loopback: bool = False  # /metrics without a token from 127.0.0.0/8 and ::1


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """The ``store`` section: durability, storage cap and retention."""

    synchronous: Literal["NORMAL", "FULL"] = "FULL"
    commit_interval_s: float = 1.0    # a reading is committed within this (store.commit_interval)
    max_bytes: int | None = None
    min_free_bytes: int = 32_000_000  # below this much free disk space the store is "full"
    max_pending: int = 20_000         # readings held in memory while commits fail, at most
    retention_realtime_days: float = 14
    retention_interval_days: float = 400


@dataclass(frozen=True, slots=True)
class Settings:
    """A whole, validated configuration."""

    gateway: GatewaySettings
    buses: dict[str, BusSettings]
    meters: dict[str, MeterSettings]
    schedules: dict[str, ScheduleSettings]
    profiles: dict[str, Profile]
    billing: dict[str, BillingPlan] = field(default_factory=dict)
    mqtt: MqttSettings | None = None
    influxdb: InfluxSettings | None = None
    api: ApiSettings = field(default_factory=ApiSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    review: ReviewThresholds = field(default_factory=ReviewThresholds)
    source: Path | None = None
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    #: customer id → customer (the ``customers`` section, or one derived per meter ``customer``)
    customers: dict[str, CustomerSettings] = field(default_factory=dict)
    #: buses marked ``simulate: true``: the gateway serves their meters with its own simulators
    #: (gateway/simulated.py), so ``run --clock-start/--clock-rate`` may rehearse on them
    simulated_buses: frozenset[str] = frozenset()

    def real_meters(self) -> list[str]:
        """Ids of the meters on buses that are not simulated (real meters), in config order."""
        return [m.id for m in self.meters.values() if m.bus not in self.simulated_buses]
