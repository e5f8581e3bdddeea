"""Serves the console's files at ``/`` and signs browsers in with an API token.

Routes (outside the bearer-token check, which :meth:`Console.middleware` skips for them):

* ``GET /`` — the console page; ``GET /console/static/{name}`` — its scripts, styles and
  string tables, read from ``gateway/web/static/`` (packaged in the wheel).
* ``POST /console/signin`` ``{"token": "..."}`` — checks the token with the API's own check
  and answers ``{"role", "csrf"}`` with a session cookie (random id, ``HttpOnly``,
  ``SameSite=Strict``); the token stays in the gateway's memory (:mod:`gateway.web.sessions`).
* ``GET /console/session`` — the signed-in session's role and CSRF token (401 without one).
* ``POST /console/signout`` — ends the session and clears the cookie (needs the CSRF header).

A request under ``/api/v1/`` without an ``Authorization`` header but with a live session
cookie is served as if it carried the session's token, so the API's own check decides (and
the role is the token's); a write (any method but GET/HEAD/OPTIONS) must also carry the
session's CSRF token in ``X-CSRF-Token`` or it gets 403. Bearer requests are untouched.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, Final

from aiohttp import web
from multidict import CIMultiDict

from gateway.api.server import ApiServer, error_response
from gateway.billing.clockstate import ClockStateSource
from gateway.web.data import ConsoleData, install_data_routes
from gateway.web.sessions import Session, SessionStore, csrf_matches

COOKIE: Final = "amr_session"
CSRF_HEADER: Final = "X-CSRF-Token"
API_PREFIX: Final = "/api/v1/"
CONSOLE_PREFIX: Final = "/console/"
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_TOKEN_CHARS: Final = 4096
CONTENT_TYPES: Final = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".svg": "image/svg+xml",
}
SECURITY_HEADERS: Final = {
    # everything from this origin only: the console must work without internet and must not
    # leak anything to another host
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def static_files() -> dict[str, Traversable]:
    """The console's packaged files by name (``gateway/web/static/*``)."""
    folder = resources.files("gateway.web").joinpath("static")
    return {p.name: p for p in folder.iterdir() if p.is_file() and p.name.rsplit(".", 1)[-1] in
            {s.lstrip(".") for s in CONTENT_TYPES}}


def _file_response(item: Traversable) -> web.Response:
    suffix = "." + item.name.rsplit(".", 1)[-1]
    resp = web.Response(body=item.read_bytes(), content_type=CONTENT_TYPES[suffix], charset="utf-8")
    resp.headers.update(SECURITY_HEADERS)
    return resp


class Console:
    """The console's routes and its session middleware for one API server.

    Built by the composition root (:mod:`gateway.runtime`), which passes :meth:`install` as
    a route installer and :meth:`middleware` as a middleware to :class:`ApiServer`.
    """

    def __init__(self, sessions: SessionStore | None = None, clock_state: ClockStateSource | None = None) -> None:
        self.sessions = sessions if sessions is not None else SessionStore()
        #: the data routes' state; the composition root adds :meth:`ConsoleData.observe` to the
        #: reading observers (meter clock offsets) and passes the billing capture's clock check
        self.data = ConsoleData(clock_state)
        self._server: ApiServer | None = None
        self._files = static_files()

    def role_of(self, token: str) -> str | None:
        """The role of ``token`` by the API's own check, or None when the API refuses it.

        :meth:`gateway.api.auth.ApiAuth.identify_token`: a token of the token file with its
        role, or the configured ``api.token`` (admin).
        """
        assert self._server is not None
        try:
            presented = token.encode("utf-8", "surrogateescape")
        except UnicodeError:
            return None
        identity = self._server.auth.identify_token(presented)
        return None if identity is None else identity.role.label

    def session_of(self, request: web.Request) -> Session | None:
        """The live session the request's cookie names, or None."""
        return self.sessions.get(request.cookies.get(COOKIE))

    def install(self, server: ApiServer, r: web.UrlDispatcher) -> dict[str, Any]:
        """Add the console's routes (a :data:`gateway.api.server.RouteInstaller`).

        The page, its files and sign-in are not part of the JSON API and add nothing to the
        OpenAPI document; the data routes under ``/api/v1/console/`` (:mod:`gateway.web.data`)
        are API routes and return their entries.
        """
        self._server = server
        r.add_get("/", self.index)
        r.add_get(CONSOLE_PREFIX + "static/{name}", self.static)
        r.add_get(CONSOLE_PREFIX + "session", self.session_info)
        r.add_post(CONSOLE_PREFIX + "signin", self.signin)
        r.add_post(CONSOLE_PREFIX + "signout", self.signout)
        return install_data_routes(server, r, self.data)

    async def index(self, request: web.Request) -> web.Response:
        """The console page."""
        return _file_response(self._files["index.html"])

    async def static(self, request: web.Request) -> web.Response:
        """One of the console's packaged files (404 for any other name)."""
        item = self._files.get(request.match_info["name"])
        if item is None:
            return error_response(404, "no such console file; open / for the console")
        return _file_response(item)

    async def session_info(self, request: web.Request) -> web.Response:
        """The signed-in session's role and CSRF token."""
        session = self.session_of(request)
        if session is None:
            return error_response(401, "not signed in; sign in with an API token")
        return web.json_response({"role": session.role, "csrf": session.csrf})

    async def signin(self, request: web.Request) -> web.Response:
        """Check the token and start a session (the cookie is HttpOnly, SameSite=Strict)."""
        try:
            body = await request.json()
        except (ValueError, UnicodeError):
            body = None
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token.strip() or len(token) > MAX_TOKEN_CHARS:
            return error_response(400, 'send JSON such as {"token": "<API token>"}')
        token = token.strip()
        role = self.role_of(token)
        if role is None:
            return error_response(401, "the token is wrong or revoked; use an API token of this gateway")
        self.sessions.end(request.cookies.get(COOKIE))
        session = self.sessions.create(token, role)
        resp = web.json_response({"role": session.role, "csrf": session.csrf})
        resp.set_cookie(COOKIE, session.id, httponly=True, samesite="Strict", path="/")
        return resp

    async def signout(self, request: web.Request) -> web.Response:
        """End the session and clear its cookie."""
        session = self.session_of(request)
        if session is not None and not csrf_matches(session, request.headers.get(CSRF_HEADER)):
            return error_response(403, f"sign-out needs the session's {CSRF_HEADER} header")
        self.sessions.end(None if session is None else session.id)
        resp = web.json_response({"signed_out": session is not None})
        resp.del_cookie(COOKIE, path="/")
        return resp

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Console routes skip the bearer check; a session cookie stands for its token on the API."""
        path = request.path
        if path == "/" or path.startswith(CONSOLE_PREFIX):
            return await request.match_info.handler(request)
        if "Authorization" in request.headers or not path.startswith(API_PREFIX):
            return await handler(request)
        session = self.session_of(request)
        if session is None:
            return await handler(request)
        if request.method not in SAFE_METHODS and not csrf_matches(session, request.headers.get(CSRF_HEADER)):
            return error_response(403, f"a write from the console needs the session's {CSRF_HEADER} header; "
                                       "reload the console")
        headers = CIMultiDict(request.headers)
        headers["Authorization"] = f"Bearer {session.token}"
        return await handler(request.clone(headers=headers))


def load_strings(language: str) -> dict[str, str]:
    """One language's string table (``strings-<language>.json``) as packaged."""
    data = json.loads(resources.files("gateway.web").joinpath("static", f"strings-{language}.json").read_text("utf-8"))
    assert isinstance(data, dict)
    return {str(k): str(v) for k, v in data.items()}
