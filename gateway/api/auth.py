"""Who a request is and whether its role may use the route; the admin token routes.

Every route needs a bearer token except the public ones the server names (a minimal
health). A token is either one from the token file in ``gateway.data_dir``
(:mod:`gateway.tokens`, managed by ``amr-gateway token add|list|revoke`` or the admin routes
below), or the single token configured as ``api.token`` / ``api.token_file`` /
``AMR_API_TOKEN``, which is kept for existing installations and counts as ``admin``.

Routes declare the role they need with :func:`requires`; an undeclared route needs
``reader`` for GET/HEAD/OPTIONS and ``operator`` for any other method, so a new write route
is operator-only even if its author forgets to say so. Missing or wrong tokens (any bytes)
get 401, a role too low gets 403 naming the role needed; the handler finds the caller as
``request[IDENTITY]`` (:class:`gateway.tokens.Identity`) for the audit log.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from gateway.api.openapi import ERROR, error_responses
from gateway.api.params import BadRequest
from gateway.audit import AuditLog
from gateway.model import iso_utc
from gateway.settings import Settings
from gateway.tokens import Identity, Role, TokenError, TokenFile, TokenRecord

log = logging.getLogger("amr.api.auth")

IDENTITY: Final = web.RequestKey("amr.identity", Identity)
CONFIGURED_ID: Final = "config"
_ROLE_ATTR: Final = "_amr_required_role"
_READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def requires(role: Role) -> Callable[[Handler], Handler]:
    """A route handler that needs ``role`` (e.g. ``requires(Role.OPERATOR)(record_exchange)``).

    Returns a new handler carrying the requirement; the original is left unmarked, so one
    function may serve several routes with different roles.
    """

    def mark(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            return await handler(request)

        setattr(guarded, _ROLE_ATTR, role)
        return guarded

    return mark


def required_role(request: web.Request) -> Role:
    """The role the matched route needs (its :func:`requires`, else by method)."""
    declared = getattr(request.match_info.handler, _ROLE_ATTR, None)
    if isinstance(declared, Role):
        return declared
    return Role.READER if request.method in _READ_METHODS else Role.OPERATOR


def _unauthorized(message: str, challenge: str) -> web.Response:
    resp = web.Response(text=json.dumps({"error": message}), status=401, content_type="application/json")
    resp.headers["WWW-Authenticate"] = challenge
    return resp


class ApiAuth:
    """Identifies bearer tokens and enforces route roles (the API server's auth middleware)."""

    def __init__(self, tokens: TokenFile, configured: str | None, audit: AuditLog) -> None:
        self.tokens = tokens
        self.audit = audit
        self._configured = configured.encode("utf-8", "surrogateescape") if configured else None
        self._warned_load_error: str | None = None
        self.last_used: dict[str, float] = {}   # token id -> when this process last accepted it

    @classmethod
    def for_settings(cls, settings: Settings) -> ApiAuth:
        """The auth of a gateway: its data_dir's token file and audit log, plus ``api.token``."""
        data_dir: Path = settings.gateway.data_dir
        auth = cls(TokenFile(data_dir), settings.api.token, AuditLog.in_dir(data_dir))
        active = any(r.active for r in auth.tokens.current().values())
        if auth.tokens.load_error is not None:
            log.error("%s; only api.token (if configured) is accepted until it is fixed", auth.tokens.load_error)
            auth._warned_load_error = auth.tokens.load_error
        elif auth._configured is None and not active:
            log.warning("no API tokens yet: every route but health answers 401; add one with "
                        "`amr-gateway token add --role reader --name NAME -c CONFIG` (the gateway "
                        "picks it up without a restart)")
        return auth

    def identify(self, request: web.Request) -> Identity | None:
        """Who the request's bearer token belongs to, or None (no, malformed, wrong or revoked token)."""
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return None
        try:
            presented = given.strip().encode("utf-8", "surrogateescape")
        except UnicodeError:
            return None
        return self.identify_token(presented)

    def identify_token(self, presented: bytes) -> Identity | None:
        """Who a presented token (any bytes) belongs to, or None.

        The bearer header's check, and the one a sign-in form (the web console) uses before
        it keeps the identity in a session.
        """
        if self._configured is not None and hmac.compare_digest(presented, self._configured):
            return Identity(CONFIGURED_ID, "api.token", Role.ADMIN)
        identity = self.tokens.identify(presented)
        if self.tokens.load_error is not None and self.tokens.load_error != self._warned_load_error:
            log.error("%s; only api.token (if configured) is accepted until it is fixed", self.tokens.load_error)
        self._warned_load_error = self.tokens.load_error
        if identity is not None:
            self.last_used[identity.id] = time.time()
        return identity

    async def check(self, request: web.Request, handler: Handler, public: bool) -> web.StreamResponse:
        """Run ``handler`` if the request may use the route (``public`` routes always), else 401/403."""
        if public:
            return await handler(request)
        if not request.headers.get("Authorization", "").lower().startswith("bearer "):
            return _unauthorized("this route needs 'Authorization: Bearer <token>'; make a token with "
                                 "`amr-gateway token add --role reader --name NAME`", "Bearer")
        identity = self.identify(request)
        if identity is None:
            return _unauthorized("the bearer token is wrong or revoked; `amr-gateway token list` shows the "
                                 "active tokens", 'Bearer error="invalid_token"')
        needed = required_role(request)
        if identity.role < needed:
            article = "an" if needed.label[0] in "aeiou" else "a"
            message = (f"this route needs the {needed.label} role; token {identity.id} ({identity.name}) has the "
                       f"{identity.role.label} role; use {article} {needed.label} token "
                       f"(`amr-gateway token add --role {needed.label}`)")
            return web.Response(text=json.dumps({"error": message}), status=403, content_type="application/json")
        request[IDENTITY] = identity
        return await handler(request)


async def audit_write(auth: ApiAuth, request: web.Request, action: str, subject: str | None, before: object,
                      after: object) -> None:
    """Append a write made through the API to the audit log, as the request's caller.

    What every write route calls once its change is done (``meter.exchange``,
    ``meter.ratio_change``, ``reading.manual``, ``event.acknowledge`` ...); the fsync runs
    in a thread so the event loop keeps serving.
    """
    await asyncio.to_thread(auth.audit.append, caller(request).actor, action, subject, before, after)


def caller(request: web.Request) -> Identity:
    """The identity the auth middleware found for this request."""
    return request[IDENTITY]


def public_record(record: TokenRecord) -> dict[str, Any]:
    """A token record as shown to people: no salt, no hash."""
    shown = asdict(record)
    del shown["salt"], shown["sha256"]
    return shown


def install_token_routes(auth: ApiAuth, r: web.UrlDispatcher) -> dict[str, Any]:
    """``/api/v1/tokens``: list, add and revoke tokens (admin), audited like the CLI."""

    @requires(Role.ADMIN)
    async def list_tokens(request: web.Request) -> web.Response:
        records = await asyncio.to_thread(auth.tokens.records)
        used = dict(auth.last_used)
        return web.json_response({"tokens": [
            {**public_record(t), "last_used": iso_utc(used[t.id]) if t.id in used else None} for t in records]})

    @requires(Role.ADMIN)
    async def add_token(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest('send JSON such as {"name": "billing-import", "role": "reader"}') from None
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or \
                not isinstance(body.get("role"), str):
            raise BadRequest('send JSON with "name" and "role" (reader, operator or admin)')
        try:
            role = Role.parse(body["role"])
            token, record = await asyncio.to_thread(auth.tokens.add, body["name"], role, iso_utc(time.time()))
        except TokenError as exc:
            raise BadRequest(str(exc)) from None
        await audit_write(auth, request, "token.add", record.id, None, public_record(record))
        return web.json_response({**public_record(record), "token": token}, status=201)

    @requires(Role.ADMIN)
    async def revoke_token(request: web.Request) -> web.Response:
        ident = request.match_info["id"]
        if ident not in auth.tokens.current():
            raise web.HTTPNotFound(text=json.dumps({"error": f"no token with id {ident!r}; GET /api/v1/tokens "
                                                             "lists them"}), content_type="application/json")
        try:
            before, after = await asyncio.to_thread(auth.tokens.revoke, ident, iso_utc(time.time()))
        except TokenError as exc:
            raise web.HTTPConflict(text=json.dumps({"error": str(exc)}), content_type="application/json") from None
        await audit_write(auth, request, "token.revoke", after.id, public_record(before), public_record(after))
        return web.json_response(public_record(after))

    r.add_get("/api/v1/tokens", list_tokens)
    r.add_post("/api/v1/tokens", add_token)
    r.add_delete("/api/v1/tokens/{id}", revoke_token)
    return _token_paths()


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _token_paths() -> dict[str, Any]:
    """The OpenAPI ``paths`` entries of the token routes."""
    record: dict[str, Any] = {"type": "object", "properties": {
        **{k: {"type": "string"} for k in ("id", "name", "role", "created")},
        "revoked": {"type": "string", "nullable": True}}}
    made = {**record, "properties": {**record["properties"], "token": {"type": "string"}}}
    used = {**record, "properties": {**record["properties"], "last_used": {
        "type": "string", "nullable": True, "description": "last accepted since this gateway started"}}}
    listing = {"type": "object", "properties": {"tokens": {"type": "array", "items": used}}}
    new = {"type": "object", "required": ["name", "role"],
           "properties": {"name": {"type": "string"},
                          "role": {"type": "string", "enum": [r.label for r in Role]}}}
    token_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{8}$"}}
    errors = error_responses(400, 401, 403, 404)
    return {
        "/api/v1/tokens": {
            "get": {"summary": "API tokens (admin): ids, names, roles, created, revoked, last used; never the "
                               "secret",
                    "responses": {"200": _json(listing, "the tokens"), **errors}},
            "post": {"summary": "Add a token (admin, audited); the response holds the token, shown only once",
                     "requestBody": {"content": {"application/json": {"schema": new}}},
                     "responses": {"201": _json(made, "the new token, with its secret"), **errors}},
        },
        "/api/v1/tokens/{id}": {
            "delete": {"summary": "Revoke a token (admin, audited); a running gateway refuses it at once",
                       "parameters": [token_id],
                       "responses": {"200": _json(record, "the revoked token"),
                                     "409": _json(ERROR, "the token was already revoked"), **errors}},
        },
    }

__all__ = ["IDENTITY", "ApiAuth", "audit_write", "caller", "install_token_routes", "public_record", "required_role",
           "requires"]
