"""The console's own data routes: one overview document, a meter's latest values, downsampled series.

They live under ``/api/v1/console/`` and go through the API's bearer check like every other
route (a session cookie stands for its token, :mod:`gateway.web.console`); any role may read
them. They are in the OpenAPI document (:func:`console_paths`).

* ``GET /api/v1/console/overview`` — everything the overview page shows in one answer, from
  memory only (no store query), so it stays fast with thousands of meters: the meters (as
  ``/api/v1/meters`` plus the meter clock's last offset), the buses (state, requests per
  second, failed reads, the wire limit of a serial line and the share of it in use
  (:func:`bus_wire_limit`), the share of time the bus was busy) and the gateway
  clock's state (NTP or the configured check, refreshed in the background at most every
  :data:`CLOCK_REFRESH_S`).
* ``GET /api/v1/console/meters/{id}/latest`` — the newest good value of every point of a
  meter (registers per tariff, demand, power factor, per-phase values), each with its time.
* ``GET /api/v1/console/meters/{id}/series?points=&from=&to=&buckets=`` — good values of
  some numeric points, downsampled on the server (:mod:`gateway.web.downsample`).
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from drivers import registry
from drivers.base import BusParams, ReadPlan
from gateway.api.openapi import FROM, METER_ID, TO, error_responses
from gateway.api.params import BadRequest, int_param, time_range
from gateway.api.server import json_response
from gateway.billing.clockstate import ClockStateSource, GatewayClockState
from gateway.model import Reading, iso_utc, loads_exact
from gateway.polling import MeterRuntime
from gateway.review.rules import parse_meter_clock
from gateway.storecodec import PAYLOAD_SQL, points_sql
from gateway.web.downsample import MAX_BUCKETS, Bucket, downsample

if TYPE_CHECKING:
    from gateway.api.server import ApiServer

PREFIX: Final = "/api/v1/console"
CLOCK_REFRESH_S: Final = 30.0
"""The gateway clock's state is asked again at most this often (a check command may be slow)."""
RATE_WINDOW_S: Final = 5.0
"""A bus's requests per second and busy share are measured over at least this long."""
LATEST_SCAN: Final = 20
"""How many of a meter's newest good readings per schedule :func:`latest_points` looks through."""
MAX_SCAN: Final = 1000
MAX_SERIES_POINTS: Final = 8
POINT_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
DEFAULT_BUCKETS: Final = 600


@dataclass(slots=True)
class _BusSample:
    mono: float
    transactions: int
    busy_s: float
    rate: float | None = None
    busy: float | None = None


class ConsoleData:
    """State the data routes keep between requests: bus samples, meter clock offsets, clock state."""

    def __init__(self, clock_state: ClockStateSource | None = None,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.clock_state = clock_state
        self.tz = "UTC"      # the gateway's timezone (a meter clock without an offset is local time)
        self._mono = mono
        self._buses: dict[str, _BusSample] = {}
        self.offsets: dict[str, tuple[float, float]] = {}   # meter -> (offset s, gateway time)
        self._clock: GatewayClockState | None = None
        self._clock_at = -1e18
        self._clock_task: asyncio.Task[None] | None = None
        self._limits: dict[str, tuple[tuple[BusParams, tuple[tuple[str, ReadPlan, float], ...]], float | None]] = {}

    def observe(self, meter: MeterRuntime, reading: Reading) -> None:
        """A reading observer: keep the meter clock's offset when the reading carries ``meter_clock``."""
        p = reading.points.get("meter_clock")
        if p is None or p.raw is None or reading.quality != "good":
            return
        t = parse_meter_clock(str(p.raw), self.tz)
        if t is not None:
            self.offsets[reading.meter] = (round(t - reading.ts, 1), reading.ts)

    def clock(self) -> dict[str, object] | None:
        """The gateway clock's last known state; starts a refresh in the background when stale."""
        if self.clock_state is not None and self._mono() - self._clock_at > CLOCK_REFRESH_S and (
                self._clock_task is None or self._clock_task.done()):
            self._clock_at = self._mono()
            self._clock_task = asyncio.get_running_loop().create_task(self._refresh_clock(self.clock_state))
        return None if self._clock is None else self._clock.doc()

    async def _refresh_clock(self, source: ClockStateSource) -> None:
        try:
            self._clock = await source()
        except Exception as exc:   # a broken check is shown as "could not tell", never a crash
            self._clock = GatewayClockState(None, "error", str(exc))

    def wire_limit(self, bus: BusParams, meters: list[MeterRuntime], every: dict[str, float]) -> float | None:
        """:func:`bus_wire_limit` of the bus's meters' plans, each weighted by how often its
        schedule runs (``every``: schedule → seconds); kept until the meters or plans change."""
        mix = tuple((registry.meter_protocol(bus, m.settings.protocol), plan, 1.0 / every[sched])
                    for m in meters for sched, (plan, _) in m.plans.items() if every.get(sched, 0) > 0)
        have = self._limits.get(bus.id)
        if have is None or have[0] != (bus, mix):      # the same plan objects compare by identity: cheap
            have = self._limits[bus.id] = ((bus, mix), bus_wire_limit(bus, mix))
        return have[1]

    def bus_rows(self, server: ApiServer) -> list[dict[str, object]]:
        """Each bus: state, meters, requests/s, failed reads, its wire limit and the share of it
        in use, the share of time in transactions, queue, overruns."""
        gw = server.gateway
        now = self._mono()
        by_bus: dict[str, list[MeterRuntime]] = {}
        for m in gw.meters.values():
            by_bus.setdefault(m.settings.bus, []).append(m)
        every = {name: sc.every_s for name, sc in gw.settings.schedules.items()}
        rows: list[dict[str, object]] = []
        for bus_id, w in gw.workers.items():
            meters = by_bus.get(bus_id, [])
            busy_s = w.read_latency.sum
            prev = self._buses.get(bus_id)
            if prev is None:
                prev = self._buses[bus_id] = _BusSample(now, w.transactions, busy_s)
            elif now - prev.mono >= RATE_WINDOW_S:
                span = now - prev.mono
                concurrency = max(1, w.bus.concurrency) if w.bus.type == "tcp" else 1
                self._buses[bus_id] = _BusSample(
                    now, w.transactions, busy_s, round((w.transactions - prev.transactions) / span, 2),
                    round(min(1.0, (busy_s - prev.busy_s) / span / concurrency), 3))
                prev = self._buses[bus_id]
            dead = sum(1 for m in meters if m.dead)
            read = sum(1 for m in meters if m.stats.last_read_ts is not None)
            state = ("idle" if read == 0 else "down" if meters and dead == len(meters)
                     else "degraded" if dead else "up")
            limit = self.wire_limit(w.bus, meters, every)
            rows.append({
                "id": bus_id, "type": w.bus.type, "state": state, "meters": len(meters),
                "answering": len(meters) - dead, "requests_per_s": prev.rate,
                "failures": sum(m.stats.reads_failed for m in meters),
                "wire_limit_per_s": None if limit is None else round(limit, 2),
                "wire_ratio": None if limit is None or prev.rate is None else round(prev.rate / limit, 3),
                "busy_share": prev.busy, "queue": w.queue_depth(), "overruns": w.overruns,
            })
        return rows


def bus_wire_limit(bus: BusParams, mix: Iterable[tuple[str, ReadPlan, float]]) -> float | None:
    """The most reads per second the serial line ``bus`` can carry with its mix of reads.

    ``mix`` holds each (protocol, plan, executions per second) the bus's meters poll: a read
    of ``plan`` occupies the line at least :func:`drivers.registry.wire_time` seconds (its
    requests and replies at the line's baud rate and framing, the silences and turnaround
    its protocol owes), so the bus's reads, in this mix, cannot come faster than the total
    rate over the total wire time: Σ rate ÷ Σ (rate × time). None on a TCP bus, for a bus
    with nothing to poll, or when a protocol cannot time its plans.
    """
    if bus.type != "serial":
        return None
    rate = busy = 0.0
    for protocol, plan, per_s in mix:
        t = registry.wire_time(protocol, bus, plan)
        if t is None:
            return None
        rate += per_s
        busy += per_s * t
    return None if busy <= 0 else rate / busy


def meter_row(m: MeterRuntime, offsets: dict[str, tuple[float, float]]) -> dict[str, object]:
    """One meter's overview row (the fields of ``/api/v1/meters`` the console shows, plus clock offset)."""
    st = m.stats
    rate = st.success_rate()
    off = offsets.get(m.id)
    return {
        "id": m.id, "customer": m.settings.customer, "bus": m.settings.bus, "billing": m.settings.billing,
        "last_good": iso_utc(st.last_good_ts) if st.last_good_ts else None,
        "last_quality": st.last_quality, "last_error": st.last_error,
        "success_rate": None if rate is None else round(rate, 4),
        "failures": st.reads_failed, "answering": not m.dead,
        "clock_offset_s": None if off is None else off[0],
    }


_LATEST: Final = (f"SELECT {PAYLOAD_SQL} FROM outbox WHERE meter=? AND kind='reading' AND quality='good' "
                  "AND schedule=? ORDER BY slot DESC, seq DESC LIMIT ?")


def latest_points(conn: sqlite3.Connection, meter: str, schedules: list[str],
                  scan: int = LATEST_SCAN) -> dict[str, dict[str, Any]]:
    """The newest good value of every point among the meter's ``scan`` newest good readings of
    each schedule (a realtime schedule's many readings never hide the registers an interval
    schedule reads)."""
    found: dict[str, dict[str, Any]] = {}
    for sched in schedules:
        for (payload,) in conn.execute(_LATEST, (meter, sched, scan)):
            doc = loads_exact(payload)
            assert isinstance(doc, dict)
            for name, p in (doc.get("points") or {}).items():
                if not isinstance(p, dict) or p.get("quality", "good") != "good" or p.get("value") is None:
                    continue
                have = found.get(name)
                if have is None or str(doc.get("ts")) > str(have["ts"]):
                    found[name] = {"value": p.get("value"), "unit": p.get("unit"), "ts": doc.get("ts"),
                                   "schedule": sched}
    return found


def point_values(conn: sqlite3.Connection, meter: str, points: list[str], start: float, end: float) -> dict[
        str, list[tuple[float, float]]]:
    """Per point, (read time, value) of every good reading of ``meter`` (slot in range) that has it as a number.

    One pass over the readings for all the points: one ``json_extract`` column per point, which
    SQLite answers from one parse of each row's requested values (its JSON parse cache), taken
    from the compact row without rendering the whole message (:func:`gateway.storecodec.points_sql`).
    """
    lists: list[list[tuple[float, float]]] = [[] for _ in points]
    cols = ", ".join(f"json_extract(doc, ?{k + 1})" for k in range(len(points)))
    n = len(points)
    # the requested values of each reading, taken from its compact row once (points_sql)
    sql = (f"WITH d AS MATERIALIZED (SELECT ts, slot, seq, {points_sql(f'?{n + 4}')} AS doc FROM outbox "
           f"WHERE meter=?{n + 1} AND kind='reading' AND quality='good' AND slot>=?{n + 2} AND slot<?{n + 3}) "
           f"SELECT ts, {cols} FROM d ORDER BY slot, seq")
    args = (*(f'$.points."{p}".value' for p in points), meter, start, end, json.dumps(points))
    for row in conn.execute(sql, args):
        ts = row[0]
        for k in range(n):
            v = row[k + 1]
            if v is None:
                continue
            if type(v) is not float:
                if type(v) is int:
                    v = float(v)
                elif isinstance(v, str):
                    try:
                        v = float(v)
                    except ValueError:
                        continue
                else:
                    continue
            lists[k].append((ts, v))
    return dict(zip(points, lists, strict=True))


def bucket_values(conn: sqlite3.Connection, meter: str, points: list[str], start: float, end: float,
                  buckets: int) -> dict[str, list[Bucket]]:
    """Per point, the buckets of :func:`gateway.web.downsample.downsample`, aggregated by SQLite.

    The same buckets (index ``min(buckets − 1, ⌊(ts − start) ÷ width⌋)``, read time in range,
    empty buckets absent) with count, min, max and mean computed in SQL over one parse of each
    row's requested values (:func:`gateway.storecodec.points_sql`: a few numbers, not the
    whole message), so a year of readings never crosses into Python as messages. The time of a
    bucket's extreme is known when the bucket holds one value (its read time), else None.
    """
    n = len(points)
    width = (end - start) / buckets
    inner = ", ".join(f"json_extract(doc, ?{k + 1}) AS v{k}" for k in range(n))
    outer = ", ".join(f"count(v{k}), min(v{k}), max(v{k}), avg(v{k}), min(CASE WHEN v{k} IS NOT NULL THEN ts END)"
                      for k in range(n))
    # MATERIALIZED: the requested values of each reading are taken from its compact row once
    # (points_sql), and parsed once, not once per aggregate that names them
    sql = (f"WITH d AS MATERIALIZED (SELECT ts, {points_sql(f'?{n + 7}')} AS doc FROM outbox WHERE meter=?{n + 4} "
           f"AND kind='reading' AND quality='good' AND slot>=?{n + 5} AND slot<?{n + 6} AND ts>=?{n + 5} "
           f"AND ts<?{n + 6}), "
           f"r AS MATERIALIZED (SELECT min(?{n + 1}, CAST((ts - ?{n + 2}) / ?{n + 3} AS INTEGER)) AS b, ts, "
           f"{inner} FROM d) SELECT b, {outer} FROM r GROUP BY b ORDER BY b")
    args = (*(f'$.points."{p}".value' for p in points), buckets - 1, start, width, meter, start, end,
            json.dumps(points))
    out: dict[str, list[Bucket]] = {p: [] for p in points}
    for row in conn.execute(sql, args):
        b0 = start + int(row[0]) * width
        for k, p in enumerate(points):
            count, lo, hi, avg, first = row[1 + 5 * k: 6 + 5 * k]
            if not count or not all(isinstance(x, int | float) for x in (lo, hi, avg)):
                continue            # empty, or a point that is not a number (such as meter_clock)
            at = float(first) if count == 1 else None
            out[p].append(Bucket(b0, b0 + width, int(count), float(lo), at, float(hi), at, float(avg)))
    return out


def reading_count(conn: sqlite3.Connection, meter: str, start: float, end: float) -> int:
    """Good readings of ``meter`` with a slot in range (an index lookup: no payload is read)."""
    row = conn.execute("SELECT count(*) FROM outbox WHERE meter=? AND kind='reading' AND quality='good' "
                       "AND slot>=? AND slot<?", (meter, start, end)).fetchone()
    return int(row[0])


def series_values(conn: sqlite3.Connection, meter: str, points: list[str], start: float, end: float,
                  buckets: int) -> dict[str, list[Bucket]]:
    """Per point, the downsampled buckets of the range: raw points when the readings are few
    enough (:func:`point_values` + :func:`downsample`), else aggregated in SQL (:func:`bucket_values`)."""
    if reading_count(conn, meter, start, end) <= buckets:
        return {p: downsample(v, start, end, buckets) for p, v in point_values(conn, meter, points, start, end).items()}
    return bucket_values(conn, meter, points, start, end, buckets)


def bucket_doc(b: Bucket) -> dict[str, object]:
    """One bucket as JSON (times ISO-8601 UTC; ``min_ts``/``max_ts`` only when known)."""
    doc: dict[str, object] = {"start": iso_utc(b.start), "end": iso_utc(b.end), "count": b.count, "min": b.min,
                              "max": b.max, "avg": round(b.avg, 6)}
    if b.min_ts is not None and b.max_ts is not None:
        doc["min_ts"] = iso_utc(b.min_ts)
        doc["max_ts"] = iso_utc(b.max_ts)
    return doc


def series_doc(meter: str, series: dict[str, list[Bucket]], start: float, end: float, buckets: int) -> dict[str, Any]:
    """The series document: per point, its buckets and how many values they hold."""
    return {"meter": meter, "from": iso_utc(start), "to": iso_utc(end), "buckets": buckets,
            "points": {p: sum(b.count for b in v) for p, v in series.items()},
            "series": {p: [bucket_doc(b) for b in v] for p, v in series.items()}}


def parse_points(text: str | None) -> list[str]:
    """``points`` query parameter: comma-separated point names (default ``power_kw``)."""
    if text is None:
        return ["power_kw"]
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names or len(names) > MAX_SERIES_POINTS or any(not POINT_RE.match(p) for p in names):
        raise BadRequest(f"'points' must be 1 to {MAX_SERIES_POINTS} point names (lower case, digits, _), "
                         f"comma-separated, such as power_kw,power_kw_l1; not {text!r}")
    return list(dict.fromkeys(names))


def install_data_routes(server: ApiServer, r: web.UrlDispatcher, data: ConsoleData) -> dict[str, Any]:
    """Add the console's data routes; return their OpenAPI ``paths``."""
    gw = server.gateway
    data.tz = gw.settings.gateway.timezone

    async def overview(request: web.Request) -> web.Response:
        return json_response({
            "gateway": gw.settings.gateway.id,
            "time": iso_utc(gw.clock.time()),
            "timezone": gw.settings.gateway.timezone,
            "clock": data.clock(),
            "buses": data.bus_rows(server),
            "meters": [meter_row(m, data.offsets) for m in gw.meters.values()],
        })

    async def latest(request: web.Request) -> web.Response:
        m = server.meter_or_404(request.match_info["id"])
        scan = int_param(request, "scan", LATEST_SCAN, 1, MAX_SCAN)
        pts = await server.query(latest_points, m.id, list(m.plans), scan)
        return json_response({"meter": m.id, "time": iso_utc(gw.clock.time()), "row": meter_row(m, data.offsets),
                              "billing": m.settings.billing, "points": pts})

    async def series(request: web.Request) -> web.Response:
        m = server.meter_or_404(request.match_info["id"])
        points = parse_points(request.query.get("points"))
        start, end = time_range(request, gw.settings.gateway.timezone, gw.clock.time() + 1)
        buckets = int_param(request, "buckets", DEFAULT_BUCKETS, 1, MAX_BUCKETS)
        got = await server.query(series_values, m.id, points, start, end, buckets)
        return json_response(series_doc(m.id, got, start, end, buckets))

    r.add_get(PREFIX + "/overview", overview)
    r.add_get(PREFIX + "/meters/{id}/latest", latest)
    r.add_get(PREFIX + "/meters/{id}/series", series)
    return console_paths()


def console_paths() -> dict[str, Any]:
    """The OpenAPI entries of the console's data routes."""
    num = {"type": "number", "nullable": True}
    nstr = {"type": "string", "nullable": True}
    bucket = {"type": "object", "required": ["start", "end", "count", "min", "max", "avg"], "properties": {
        "start": {"type": "string"}, "end": {"type": "string"}, "count": {"type": "integer"},
        "min": {"type": "number"}, "min_ts": {"type": "string"}, "max": {"type": "number"},
        "max_ts": {"type": "string"}, "avg": {"type": "number"}}}
    row = {"type": "object", "required": ["id", "bus"], "properties": {
        "id": {"type": "string"}, "customer": nstr, "bus": {"type": "string"}, "billing": nstr, "last_good": nstr,
        "last_quality": nstr, "last_error": nstr, "success_rate": num, "failures": {"type": "integer"},
        "answering": {"type": "boolean"},
        "clock_offset_s": {**num, "description": "meter clock − gateway clock at its last read (s)"}}}
    bus = {"type": "object", "required": ["id", "state"], "properties": {
        "id": {"type": "string"}, "type": {"type": "string"},
        "state": {"type": "string", "enum": ["idle", "up", "degraded", "down"]},
        "meters": {"type": "integer"}, "answering": {"type": "integer"},
        "requests_per_s": num, "failures": {"type": "integer"},
        "wire_limit_per_s": {**num, "description": "the most reads per second the serial line can carry with "
                                                   "its meters' plans (baud rate, framing, protocol, request and "
                                                   "reply sizes); null on TCP"},
        "wire_ratio": {**num, "description": "requests_per_s ÷ wire_limit_per_s; null on TCP"},
        "busy_share": {**num, "description": "share of the time the bus spent in transactions (0–1; per "
                                             "concurrent slot on TCP)"},
        "queue": {"type": "integer"}, "overruns": {"type": "integer"}}}

    def ok(schema: dict[str, Any], text: str) -> dict[str, Any]:
        return {"200": {"description": text, "content": {"application/json": {"schema": schema}}}}

    return {
        PREFIX + "/overview": {"get": {
            "summary": "The console's overview in one answer: meters, buses, the gateway clock's state",
            "responses": {**ok({"type": "object", "required": ["meters", "buses"], "properties": {
                "gateway": {"type": "string"}, "time": {"type": "string"}, "timezone": {"type": "string"},
                "clock": {"type": "object", "nullable": True},
                "buses": {"type": "array", "items": bus}, "meters": {"type": "array", "items": row}}},
                "Overview"), **error_responses(401)},
        }},
        PREFIX + "/meters/{id}/latest": {"get": {
            "summary": "The newest good value of each point of one meter, with its time",
            "parameters": [METER_ID, {"name": "scan", "in": "query", "required": False,
                                      "description": "newest good readings of each schedule looked through",
                                      "schema": {"type": "integer", "minimum": 1, "maximum": MAX_SCAN,
                                                 "default": LATEST_SCAN}}],
            "responses": {**ok({"type": "object", "required": ["meter", "points"], "properties": {
                "meter": {"type": "string"}, "time": {"type": "string"}, "row": row,
                "billing": nstr, "points": {"type": "object", "additionalProperties": {"type": "object"}}}},
                "Latest values"), **error_responses(400, 401, 404)},
        }},
        PREFIX + "/meters/{id}/series": {"get": {
            "summary": "Good values of numeric points over a range, downsampled to at most 'buckets' buckets "
                       "(min, max with their times, mean, count); raw points when they are fewer",
            "parameters": [METER_ID, FROM, TO,
                           {"name": "points", "in": "query", "required": False,
                            "description": "comma-separated point names (default power_kw)",
                            "schema": {"type": "string"}},
                           {"name": "buckets", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_BUCKETS,
                                       "default": DEFAULT_BUCKETS}}],
            "responses": {**ok({"type": "object", "required": ["meter", "series"], "properties": {
                "meter": {"type": "string"}, "from": {"type": "string"}, "to": {"type": "string"},
                "buckets": {"type": "integer"}, "points": {"type": "object"},
                "series": {"type": "object", "additionalProperties": {"type": "array", "items": bucket}}}},
                "Series"), **error_responses(400, 401, 404)},
        }},
    }


__all__ = ["CLOCK_REFRESH_S", "ConsoleData", "bus_wire_limit", "console_paths", "install_data_routes", "latest_points",
           "meter_row", "parse_points", "point_values", "series_doc", "series_values"]
