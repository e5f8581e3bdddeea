"""The API server: auth (:mod:`gateway.api.auth`), errors, core routes (health, meters, readings, metrics,
OpenAPI).

The server reads the running gateway through :class:`GatewayView` (a Protocol the runtime
satisfies; the API never imports the runtime). Feature routes (billing: intervals,
settlements, KPI; review: events) are :data:`RouteInstaller` functions the composition root
(:mod:`gateway.runtime`) passes to :class:`ApiServer`; each describes its routes in the
OpenAPI document the same way, so ``/openapi.json`` always lists exactly what the server does.

The listening socket is bound by :meth:`ApiServer.bind` before anything is served, so a
port in use fails the build of a runtime (a reload keeps the old one running), and a reload
on the same address takes over the old runtime's socket (:meth:`ApiServer.bind` with
``inherited``): the port is never closed between two runtimes.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any, Protocol, TypeVar

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway import __version__
from gateway.api.auth import ApiAuth, install_token_routes
from gateway.api.httplog import HTTP_LOG
from gateway.api.metrics import MetricsView, metrics_public, metrics_text
from gateway.api.openapi import build_document
from gateway.api.params import BadRequest, int_param, output_format, time_range
from gateway.errors import ConfigError, TransportError
from gateway.lifecycle import ReloadStatus
from gateway.model import iso_utc, to_json
from gateway.polling import MeterRuntime
from gateway.ports import listen_problem
from gateway.readings_export import readings_csv, readings_json, write_csv
from gateway.readpool import QueryTimeout, ReadPool
from gateway.settings import Settings
from gateway.store import Store
from gateway.tls import TlsFileError, server_context

log = logging.getLogger("amr.api")

PUBLIC_PATHS = frozenset({"/api/v1/health"})
LISTEN_BACKLOG = 128
SHUTDOWN_S = 2.0
"""How long a stop lets requests in progress finish (their queries are already stopped);
aiohttp's default of 60 s let a busy API hold SIGTERM for a minute (issue 16 item 6)."""
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class GatewayView(MetricsView, Protocol):
    """What the API reads of one running gateway (:class:`gateway.runtime.Gateway` is one):
    what ``/metrics`` reads (:class:`~gateway.api.metrics.MetricsView`: clock, store, meters,
    workers, sinks, metrics sources) and the rest below."""

    @property
    def settings(self) -> Settings:
        """The settings the runtime was built from."""

    @property
    def started_at(self) -> float:
        """Gateway-clock time the runtime started."""

    @property
    def reload_status(self) -> ReloadStatus:
        """What the last reload did (a failure keeps the previous configuration running)."""

    def require_store(self) -> Store:
        """The open store (raises before it opened)."""


RouteInstaller = Callable[["ApiServer", web.UrlDispatcher], dict[str, Any]]
"""Adds routes to the router and returns their OpenAPI ``paths`` entries."""


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (the first address ``host`` resolves to).

    Raises OSError (EADDRINUSE: the port is in use) at once, so callers fail before they
    start anything.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family = infos[0][0] if infos else socket.AF_INET
    address = infos[0][4][:2] if infos else (host, port)
    return socket.create_server(address, family=family, backlog=LISTEN_BACKLOG)


def json_response(data: object, status: int = 200) -> web.Response:
    """JSON with exact decimals (Decimals become JSON numbers with every digit)."""
    return web.Response(text=to_json(data), status=status, content_type="application/json")


def csv_response(columns: Sequence[str], rows: Iterable[Sequence[object]], filename: str) -> web.Response:
    """A CSV download with a header row."""
    buf = io.StringIO()
    write_csv(buf, columns, rows)
    resp = web.Response(text=buf.getvalue(), content_type="text/csv", charset="utf-8")
    resp.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return resp


def error_response(status: int, message: str) -> web.Response:
    """An error as ``{"error": sentence}``."""
    return web.Response(
        text=json.dumps({"error": message}, ensure_ascii=False),
        status=status,
        content_type="application/json",
    )


class ApiServer:
    """Serves the API on ``api.listen`` inside the gateway's event loop."""

    def __init__(self, gateway: GatewayView, routes: Sequence[RouteInstaller] = (),
                 middlewares: Sequence[Middleware] = ()) -> None:
        """``middlewares`` run after error handling and before the token check (the web
        console's session cookie, :mod:`gateway.web.console`)."""
        self.gateway = gateway
        self.routes = tuple(routes)
        self.middlewares = tuple(middlewares)
        api = gateway.settings.api
        self.host = api.host
        self.port = api.port
        self.auth = ApiAuth.for_settings(gateway.settings)  # token file + api.token (admin); roles
        self.ssl_context: ssl.SSLContext | None = None
        if api.tls is not None:
            try:
                self.ssl_context = server_context(api.tls)
            except TlsFileError as exc:     # changed since the configuration was loaded
                raise ConfigError(f"{exc}; fix the file and start again") from exc
        self._queries: ReadPool | None = None
        self._stopped = False
        self._runner: web.AppRunner | None = None
        self._listener: socket.socket | None = None
        self.app = self.build_app()

    def build_app(self) -> web.Application:
        """The aiohttp application with every route and the OpenAPI document."""
        app = web.Application(middlewares=[self._errors, *self.middlewares, self._auth])
        r = app.router
        paths: dict[str, Any] = {}
        paths.update(install_core_routes(self, r))
        paths.update(install_token_routes(self.auth, r))
        for installer in self.routes:
            paths.update(installer(self, r))
        self.openapi = build_document(paths, __version__)
        r.add_get("/openapi.json", self.openapi_json)
        return app

    @property
    def listener(self) -> socket.socket | None:
        """The bound listening socket (None before :meth:`bind` and after :meth:`stop`)."""
        return self._listener

    def bind(self, inherited: socket.socket | None = None) -> None:
        """Bind the listening socket now, or take over ``inherited`` (a duplicate of it).

        ``inherited`` is the previous runtime's listener on the same address: both serve
        it until the previous runtime stops, so a reload never closes the port. Raises
        :class:`~gateway.errors.TransportError` when the port is in use.
        """
        if self._listener is not None:
            return
        try:
            self._listener = inherited.dup() if inherited is not None else bind_listener(self.host, self.port)
        except OSError as exc:
            raise TransportError(f"the API {listen_problem(self.host, self.port, exc, 'api.listen')}") from exc
        self.port = int(self._listener.getsockname()[1])

    async def start(self) -> None:
        """Open the API's read connections and serve on the listener (bound now unless
        :meth:`bind` ran)."""
        self.bind()
        await self._open_queries()
        assert self._listener is not None
        self._runner = web.AppRunner(self.app, access_log=None, logger=HTTP_LOG, shutdown_timeout=SHUTDOWN_S)
        await self._runner.setup()
        await web.SockSite(self._runner, self._listener, ssl_context=self.ssl_context).start()
        log.info("API on %s://%s:%d%s", "https" if self.ssl_context else "http", self.host, self.port,
                 " (client certificates required)" if self.gateway.settings.api.tls
                 and self.gateway.settings.api.tls.client_ca_file else "")

    @property
    def queries(self) -> ReadPool | None:
        """The API's read connections (None before :meth:`start` and after :meth:`stop`)."""
        return self._queries

    async def _open_queries(self) -> ReadPool:
        if self._stopped:
            raise QueryTimeout("the gateway is stopping; ask again once it runs")
        if self._queries is None:
            api = self.gateway.settings.api
            pool = ReadPool(self.gateway.require_store().path, api.read_connections, api.query_timeout_s)
            await asyncio.to_thread(pool.open)
            self._queries = pool
        return self._queries

    async def query(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on one of the API's own read connections to the store.

        Never on the store's reader, which delivery uses: a slow API query cannot delay a
        sink. Past ``api.query_timeout`` it raises :class:`~gateway.readpool.QueryTimeout`
        (answered 503).
        """
        pool = self._queries if self._queries is not None else await self._open_queries()
        return await pool.run(fn, *args)

    async def stop(self) -> None:
        """Stop serving and close the listener (an inherited socket stays open in its owner).

        The read connections close first: running queries are interrupted and waiting ones
        refused (503), so the handlers end at once and stopping never waits for them.
        """
        self._stopped = True
        if self._queries is not None:
            await self._queries.close()
            self._queries = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def authorized(self, request: web.Request) -> bool:
        """Whether the request carries an accepted bearer token of any role (any bytes in it are just wrong)."""
        return self.auth.identify(request) is not None

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        public = request.path in PUBLIC_PATHS or metrics_public(
            request, self.gateway.settings.api.metrics_public_on_loopback)
        return await self.auth.check(request, handler, public=public)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadRequest:
            raise
        except QueryTimeout as exc:
            resp = error_response(503, str(exc))
            resp.headers["Retry-After"] = "5"
            return resp
        except web.HTTPException as exc:
            if exc.status >= 400 and exc.content_type != "application/json":
                return error_response(exc.status, exc.reason)
            raise
        except Exception:
            log.exception("API error on %s", request.path)
            return error_response(500, "internal error; the gateway log has the details")

    async def openapi_json(self, request: web.Request) -> web.Response:
        """The OpenAPI 3 document describing every route."""
        return web.json_response(self.openapi)

    # helpers for route modules
    def meter_or_404(self, meter_id: str) -> MeterRuntime:
        """The runtime meter, or a 404 naming the known ones."""
        m = self.gateway.meters.get(meter_id)
        if m is None:
            raise web.HTTPNotFound(
                text=json.dumps(
                    {"error": f"no meter {meter_id!r}; GET /api/v1/meters lists the configured ones"}
                ),
                content_type="application/json",
            )
        return m


def install_core_routes(server: ApiServer, r: web.UrlDispatcher) -> dict[str, Any]:
    """health, meters, readings, metrics."""
    gw = server.gateway

    async def health(request: web.Request) -> web.Response:
        store = gw.store
        reload = gw.reload_status
        healthy = store is not None and store.last_error is None and reload.error is None
        summary = {"status": "up" if healthy else "degraded", "version": __version__}
        if not server.authorized(request):     # public: up or degraded, nothing about the site
            return json_response(summary)
        store_state = None
        if store is not None:
            store_state = {
                "path": str(store.path),
                "last_seq": store.last_seq,
                "size_bytes": store.size_bytes,
                "pressure": store.pressure,
                "free_bytes": store.free_bytes,
                "pending": store.pending_readings,
                "dropped": dict(store.dropped),
                "last_error": store.last_error,
            }
        buses = [
            {"id": w.bus.id, "queue": w.queue_depth(), "transactions": w.transactions, "overruns": w.overruns}
            for w in gw.workers.values()
        ]
        return json_response(
            {
                **summary,
                "gateway": gw.settings.gateway.id,
                "time": iso_utc(gw.clock.time()),
                "uptime_s": round(gw.clock.time() - gw.started_at, 3),
                "store": store_state,
                "sinks": [sink.state() for sink in gw.sinks],
                "buses": buses,
                "reload": None if reload.at is None else {
                    "at": iso_utc(reload.at),
                    "ok": reload.error is None,
                    "error": reload.error,
                    "restart_needed": reload.restart_needed,
                },
            }
        )

    async def meters(request: web.Request) -> web.Response:
        fmt = output_format(request)
        rows = []
        for m in gw.meters.values():
            s = m.settings
            st = m.stats
            rate = st.success_rate()
            rows.append(
                {
                    "id": s.id,
                    "customer": s.customer,
                    "bus": s.bus,
                    "address": s.address,
                    "profile": s.profile,
                    "ct_ratio": str(s.ct_ratio),
                    "pt_ratio": str(s.pt_ratio),
                    "multiplier": s.multiplier,
                    "schedules": list(m.plans),
                    "billing": s.billing,
                    "last_read": iso_utc(st.last_read_ts) if st.last_read_ts else None,
                    "last_good": iso_utc(st.last_good_ts) if st.last_good_ts else None,
                    "last_quality": st.last_quality,
                    "last_error": st.last_error,
                    "success_rate": None if rate is None else round(rate, 4),
                    "answering": not m.dead,
                }
            )
        if fmt == "csv":
            cols = [
                "id",
                "customer",
                "bus",
                "address",
                "profile",
                "ct_ratio",
                "pt_ratio",
                "multiplier",
                "billing",
                "last_read",
                "last_good",
                "last_quality",
                "last_error",
                "success_rate",
                "answering",
            ]
            return csv_response(cols, ([row[c] for c in cols] for row in rows), "meters.csv")
        return json_response({"meters": rows})

    async def readings(request: web.Request) -> web.Response:
        meter = server.meter_or_404(request.match_info["id"])
        fmt = output_format(request)
        tz = gw.settings.gateway.timezone
        start, end = time_range(request, tz, gw.clock.time() + 1)
        limit = int_param(request, "limit", 10_000, 1, 100_000)
        schedule = request.query.get("schedule")
        if schedule is not None and schedule not in gw.settings.schedules:
            raise BadRequest(f"no schedule {schedule!r}; defined: {', '.join(gw.settings.schedules)}")
        # selected and rendered on an API read thread: the event loop only sends the bytes
        render = readings_csv if fmt == "csv" else readings_json
        body = await server.query(partial(render, schedule=schedule, limit=limit), meter.id, start, end)
        if fmt == "csv":
            resp = web.Response(body=body, content_type="text/csv", charset="utf-8")
            resp.headers["Content-Disposition"] = f'attachment; filename="{meter.id}-readings.csv"'
            return resp
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=await metrics_text(gw, server.query), content_type="text/plain", charset="utf-8")

    r.add_get("/api/v1/health", health)
    r.add_get("/api/v1/meters", meters)
    r.add_get("/api/v1/meters/{id}/readings", readings)
    r.add_get("/metrics", metrics)
    from gateway.api.openapi import core_paths

    return core_paths()
