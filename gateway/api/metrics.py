"""The ``/metrics`` exposition: Prometheus text-format lines for the running gateway.

Reads, buses (transactions, queue, overruns, lag, read latency histogram), per-meter
last good read, store, feature components (:class:`gateway.lifecycle.MetricsSource`) and
sinks (counters, backlog, age of the oldest undelivered message). Every family has its
``# HELP`` and ``# TYPE`` lines.

Also the loopback rule: with ``api.metrics_public_on_loopback`` a scraper on the same
machine (peer 127.0.0.0/8 or ::1) reads ``/metrics`` without a token
(:func:`metrics_public`).
"""

from __future__ import annotations

import ipaddress
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, Protocol

from aiohttp import web

from gateway.clock import Clock
from gateway.lifecycle import MetricsSource
from gateway.polling import BusWorker, MeterRuntime
from gateway.sinks.delivery import SinkRunner
from gateway.sinks.delivery import prometheus_lines as sink_lines
from gateway.store import Store

METRICS_PATH: Final = "/metrics"
_PRESSURE_LEVEL: Final = {"ok": 0, "near_cap": 1, "full": 2}


class MetricsView(Protocol):
    """What the exposition reads of a running gateway (the API's ``GatewayView`` is one)."""

    @property
    def clock(self) -> Clock:
        """The gateway's clock (ages are measured on it)."""

    @property
    def store(self) -> Store | None:
        """The open store (None before it opened)."""

    @property
    def meters(self) -> Mapping[str, MeterRuntime]:
        """Every configured meter with its statistics."""

    @property
    def workers(self) -> Mapping[str, BusWorker]:
        """One worker per bus."""

    @property
    def sinks(self) -> Sequence[SinkRunner]:
        """The delivery runners (empty when sinks are off)."""

    def metrics_sources(self) -> Sequence[MetricsSource]:
        """Components that add their own lines (review, ...)."""


def label(value: str) -> str:
    """A label value escaped for the text format (backslash, double quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _bound(le: float) -> str:
    return "+Inf" if le == float("inf") else repr(le)


def metrics_public(request: web.Request, public_on_loopback: bool) -> bool:
    """Whether ``request`` may read ``/metrics`` without a token.

    Only when the configuration says so (``api.metrics_public_on_loopback``) and the TCP
    peer itself is a loopback address (127.0.0.0/8, ::1, or IPv4-mapped 127.x): the
    socket's peer, never a header a proxy or client could set.
    """
    if not public_on_loopback or request.path != METRICS_PATH:
        return False
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if not isinstance(peer, tuple) or not peer:
        return False              # a Unix socket or an unknown peer: the token is needed
    try:
        address = ipaddress.ip_address(str(peer[0]).partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _oldest_ts_after(conn: sqlite3.Connection, seq: int) -> float | None:
    """The ts of the first message after ``seq`` (a primary-key range seek, not a scan)."""
    row = conn.execute("SELECT ts FROM outbox WHERE seq > ? ORDER BY seq LIMIT 1", (seq,)).fetchone()
    return None if row is None else float(row[0])


Query = Callable[..., Awaitable[Any]]
"""Runs ``fn(conn, *args)`` on a read connection: the API's own (``ApiServer.query``), never
the store reader delivery uses."""


async def oldest_undelivered_ages(gw: MetricsView, query: Query) -> dict[str, float]:
    """Sink name → seconds since the ts of its oldest undelivered message (0 with no backlog).

    The oldest undelivered message is the first one after the sink's acknowledged cursor
    (seq order is commit order), found with one primary-key seek through ``query``.
    """
    store = gw.store
    if store is None or not gw.sinks:
        return {}
    now = gw.clock.time()
    ages: dict[str, float] = {}
    for runner in gw.sinks:
        backlog = runner.backlog()
        ts = None if backlog == 0 else await query(_oldest_ts_after, store.last_seq - backlog)
        ages[runner.name] = 0.0 if ts is None else max(0.0, now - ts)
    return ages


def prometheus_lines(gw: MetricsView, sink_ages: Mapping[str, float] | None = None) -> list[str]:
    """Prometheus text-format lines for reads, buses, meters, store and sinks."""
    out = [
        "# HELP amr_reads_total Meter polls by result.",
        "# TYPE amr_reads_total counter",
    ]
    for m in gw.meters.values():
        st = m.stats
        out.append(f'amr_reads_total{{meter="{m.id}",result="ok"}} {st.reads_ok}')
        out.append(f'amr_reads_total{{meter="{m.id}",result="failed"}} {st.reads_failed}')
        out.append(f'amr_reads_total{{meter="{m.id}",result="skipped"}} {st.reads_skipped}')
    out += _meter_lines(gw)
    out += [
        "# HELP amr_bus_transactions_total Transactions per bus.",
        "# TYPE amr_bus_transactions_total counter",
    ]
    out += [f'amr_bus_transactions_total{{bus="{w.bus.id}"}} {w.transactions}' for w in gw.workers.values()]
    out += ["# HELP amr_bus_queue_depth Jobs waiting per bus.", "# TYPE amr_bus_queue_depth gauge"]
    out += [f'amr_bus_queue_depth{{bus="{w.bus.id}"}} {w.queue_depth()}' for w in gw.workers.values()]
    out += [
        "# HELP amr_bus_overruns_total Polls skipped because the previous one was still queued.",
        "# TYPE amr_bus_overruns_total counter",
    ]
    out += [f'amr_bus_overruns_total{{bus="{w.bus.id}"}} {w.overruns}' for w in gw.workers.values()]
    out += [
        "# HELP amr_poll_lag_max_seconds Largest delay from slot to poll start.",
        "# TYPE amr_poll_lag_max_seconds gauge",
    ]
    out += [f'amr_poll_lag_max_seconds{{bus="{w.bus.id}"}} {w.poll_lag_max:.6f}' for w in gw.workers.values()]
    out += _read_latency_lines(gw)
    store = gw.store
    if store is not None:
        out += _store_lines(store)
    for source in gw.metrics_sources():
        out += source.prometheus_lines()
    if gw.sinks:
        out += sink_lines(gw.sinks)
        if sink_ages is not None:
            out += [
                "# HELP amr_sink_oldest_undelivered_age_seconds Age of the oldest message the sink has not "
                "delivered (0 with no backlog).",
                "# TYPE amr_sink_oldest_undelivered_age_seconds gauge",
            ]
            out += [f'amr_sink_oldest_undelivered_age_seconds{{sink="{label(name)}"}} {age:.3f}'
                    for name, age in sink_ages.items()]
    return out


async def metrics_text(gw: MetricsView, query: Query) -> str:
    """The whole ``/metrics`` body (``query``: see :data:`Query`)."""
    ages = await oldest_undelivered_ages(gw, query)
    return "\n".join(prometheus_lines(gw, ages)) + "\n"


def _meter_lines(gw: MetricsView) -> list[str]:
    out = [
        "# HELP amr_meter_last_good_read_timestamp_seconds Unix time of the meter's last good read "
        "(absent before the first).",
        "# TYPE amr_meter_last_good_read_timestamp_seconds gauge",
    ]
    for m in gw.meters.values():
        ts = m.stats.last_good_ts
        if ts is not None:
            out.append(f'amr_meter_last_good_read_timestamp_seconds{{meter="{label(m.id)}",'
                       f'bus="{label(m.settings.bus)}"}} {ts:.3f}')
    return out


def _read_latency_lines(gw: MetricsView) -> list[str]:
    out = [
        "# HELP amr_bus_read_seconds Duration of each bus transaction (a read attempt or an action).",
        "# TYPE amr_bus_read_seconds histogram",
    ]
    for w in gw.workers.values():
        bus = label(w.bus.id)
        hist = w.read_latency
        out += [f'amr_bus_read_seconds_bucket{{bus="{bus}",le="{_bound(le)}"}} {n}' for le, n in hist.cumulative()]
        out.append(f'amr_bus_read_seconds_sum{{bus="{bus}"}} {hist.sum:.6f}')
        out.append(f'amr_bus_read_seconds_count{{bus="{bus}"}} {hist.count}')
    return out


def _store_lines(store: Store) -> list[str]:
    return [
        "# HELP amr_store_last_seq Highest committed seq.",
        "# TYPE amr_store_last_seq counter",
        f"amr_store_last_seq {store.last_seq}",
        "# HELP amr_store_size_bytes Local store size on disk.",
        "# TYPE amr_store_size_bytes gauge",
        f"amr_store_size_bytes {store.size_bytes}",
        "# HELP amr_store_pressure 0 ok, 1 near the cap, 2 full.",
        "# TYPE amr_store_pressure gauge",
        f"amr_store_pressure {_PRESSURE_LEVEL[store.pressure]}",
        "# HELP amr_store_pending_readings Readings held in memory, not yet committed.",
        "# TYPE amr_store_pending_readings gauge",
        f"amr_store_pending_readings {store.pending_readings}",
        "# HELP amr_store_dropped_total Readings dropped uncommitted (store.max_pending full), by retention.",
        "# TYPE amr_store_dropped_total counter",
        *(f'amr_store_dropped_total{{retention="{k}"}} {v}' for k, v in store.dropped.items()),
        "# HELP amr_store_free_bytes Free space on the store's filesystem.",
        "# TYPE amr_store_free_bytes gauge",
        f"amr_store_free_bytes {store.free_bytes if store.free_bytes is not None else 'NaN'}",
        "# HELP amr_store_commit_failures_total Failed group commits.",
        "# TYPE amr_store_commit_failures_total counter",
        f"amr_store_commit_failures_total {store.commit_failures}",
    ]
