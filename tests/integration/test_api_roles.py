"""API tokens and roles on the real API: the gateway's own aiohttp server on a free loopback
port, tokens made by ``amr-gateway token`` as a real process, the token file and the audit log
on disk. No meters answer here (the demo configuration without its simulators): the routes
under test do not need them."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.api.auth import ApiAuth, requires
from gateway.audit import AUDIT_FILE, AuditLog, verify
from gateway.config import load_settings_from_text
from gateway.demo import demo_config_text, free_port
from gateway.runtime import Gateway, reload
from gateway.tokens import TOKEN_FILE, Role, TokenFile

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONFIGURED = "configured-legacy-token"


def token_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "token", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), check=False)


def add_token(data_dir: Path, role: str, name: str) -> str:
    done = token_cli("add", "--role", role, "--name", name, "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.startswith("amr_") and "\n" not in token
    return token


def gateway_for(data_dir: Path, configured: str | None = None) -> Gateway:
    text = demo_config_text(data_dir, api_port=free_port(), mqtt=("127.0.0.1", free_port()))
    env = {"AMR_API_TOKEN": configured} if configured else {}
    return Gateway(load_settings_from_text(text, "<test>", data_dir, env), enable_sinks=False)


async def call(port: int, method: str, path: str, token: str | None, body: object = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as http, \
            http.request(method, f"http://127.0.0.1:{port}{path}", headers=headers, json=body) as resp:
        return resp.status, await resp.json(content_type=None)


def raw_status(port: int, authorization: bytes) -> int:
    """The status for a request whose Authorization header holds exactly these bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /api/v1/meters HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + authorization
                  + b"\r\nConnection: close\r\n\r\n")
        reply = b""
        while b"\r\n" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    return int(reply.split(b" ", 2)[1])


async def test_role_matrix_token_routes_and_bad_tokens_on_the_live_api(tmp_path: Path) -> None:
    reader = add_token(tmp_path, "reader", "dashboard")
    operator = add_token(tmp_path, "operator", "billing-clerk")
    admin = add_token(tmp_path, "admin", "ops")
    gw = gateway_for(tmp_path, CONFIGURED)
    await gw.start()
    try:
        assert gw.api is not None
        port = gw.api.port
        for token in (reader, operator, admin, CONFIGURED):        # every role reads
            status, body = await call(port, "GET", "/api/v1/meters", token)
            assert status == 200 and body["meters"], (token[:12], body)
        new = {"name": "import", "role": "reader"}
        for token, role in ((reader, "reader"), (operator, "operator")):   # below admin: 403, nothing made
            status, body = await call(port, "POST", "/api/v1/tokens", token, new)
            assert status == 403, body
            assert "needs the admin role" in body["error"] and f"has the {role} role" in body["error"]
            status, body = await call(port, "GET", "/api/v1/tokens", token)
            assert status == 403 and "needs the admin role" in body["error"]
        assert len(TokenFile(tmp_path).records()) == 3

        status, made = await call(port, "POST", "/api/v1/tokens", admin, new)
        assert status == 201 and made["role"] == "reader" and made["token"].startswith(f"amr_{made['id']}_")
        status, body = await call(port, "GET", "/api/v1/meters", made["token"])       # works at once
        assert status == 200
        status, body = await call(port, "POST", "/api/v1/tokens", CONFIGURED, {"name": "x", "role": "boss"})
        assert status == 400 and "reader, operator, admin" in body["error"]          # api.token is admin
        status, listed = await call(port, "GET", "/api/v1/tokens", CONFIGURED)
        assert status == 200 and [t["name"] for t in listed["tokens"]] == ["dashboard", "billing-clerk", "ops",
                                                                             "import"]
        assert all(set(t) == {"id", "name", "role", "created", "revoked", "last_used"} for t in listed["tokens"])
        assert [t["last_used"] is not None for t in listed["tokens"]] == [True, True, True, True]

        status, body = await call(port, "DELETE", f"/api/v1/tokens/{made['id']}", admin)
        assert status == 200 and body["revoked"]
        status, body = await call(port, "GET", "/api/v1/meters", made["token"])
        assert status == 401 and "wrong or revoked" in body["error"]
        status, body = await call(port, "DELETE", "/api/v1/tokens/00000000", admin)
        assert status == 404 and "no token" in body["error"]

        status, body = await call(port, "GET", "/api/v1/meters", None)
        assert status == 401 and "Authorization: Bearer" in body["error"]
        status, body = await call(port, "GET", "/api/v1/health", None)
        assert status == 200 and body["status"] in ("up", "degraded")
        secret = admin.split("_", 2)[2].encode()
        bad = [b"Bearer " + bytes(range(0x80, 0x100)), b"Bearer \xff\xfe\xfd", b"Bearer amr_" + b"\xe9" * 8 + b"_x",
               b"Bearer amr_" + admin[4:12].encode() + b"_" + secret[:-1] + b"\xff",
               b"Bearer amr_" + admin[4:12].encode() + b"_" + secret + b"x", b"Bearer amr_zzzzzzzz_abc",
               b"Bearer " + CONFIGURED.encode() + b"\xc3", "Bearer 令牌".encode(), b"Basic " + admin.encode(),
               b"Bearer " + bytes(range(0x21, 0x7f))]
        statuses = await asyncio.gather(*(asyncio.to_thread(raw_status, port, value) for value in bad))
        assert statuses == [401] * len(bad)
        assert await asyncio.to_thread(raw_status, port, b"Bearer " + admin.encode()) == 200

        entries = [json.loads(line) for line in (tmp_path / AUDIT_FILE).read_text().splitlines()]
        admin_id = admin[4:12]
        assert [(e["actor"], e["action"], e["subject"]) for e in entries[3:]] == [
            (f"token:{admin_id} (ops)", "token.add", made["id"]),
            (f"token:{admin_id} (ops)", "token.revoke", made["id"])]
        assert entries[4]["before"]["revoked"] is None and entries[4]["after"]["revoked"]
        assert verify(tmp_path / AUDIT_FILE).intact
    finally:
        await gw.stop()


async def test_token_cli_hashed_private_and_revocation_reaches_a_running_gateway(tmp_path: Path) -> None:
    cfg = tmp_path / "site.yaml"
    cfg.write_text(demo_config_text(tmp_path / "data", api_port=free_port(), mqtt=("127.0.0.1", free_port())))
    made = token_cli("add", "--role", "operator", "--name", "clerk", "-c", str(cfg))
    assert made.returncode == 0, made.stderr
    clerk = made.stdout.strip()
    keep = add_token(tmp_path / "data", "reader", "dashboard")
    path = tmp_path / "data" / TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = path.read_text()
    for token in (clerk, keep):
        assert token not in stored and token.split("_", 2)[2] not in stored       # hashed, never the secret
    listed = token_cli("list", "-c", str(cfg))
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert [(r[0], r[1], r[-1]) for r in rows] == [(clerk[4:12], "operator", "clerk"),
                                                    (keep[4:12], "reader", "dashboard")]
    assert clerk not in listed.stdout and clerk.split("_", 2)[2] not in listed.stdout

    gw = gateway_for(tmp_path / "data")            # no api.token: the token file alone
    await gw.start()
    try:
        assert gw.api is not None and (await call(gw.api.port, "GET", "/api/v1/meters", clerk))[0] == 200
        gw = await reload(gw, gw.settings)             # tokens are stable across a reload (new runtime)
        assert gw.api is not None
        port = gw.api.port
        assert (await call(port, "GET", "/api/v1/meters", clerk))[0] == 200
        revoked = await asyncio.to_thread(token_cli, "revoke", clerk[4:12], "--data-dir", str(tmp_path / "data"))
        assert revoked.returncode == 0 and "revoked" in revoked.stdout, revoked.stderr
        status, body = await call(port, "GET", "/api/v1/meters", clerk)          # no restart, no reload
        assert status == 401 and "wrong or revoked" in body["error"]
        assert (await call(port, "GET", "/api/v1/meters", keep))[0] == 200
        late = await asyncio.to_thread(add_token, tmp_path / "data", "reader", "late")
        assert (await call(port, "GET", "/api/v1/meters", late))[0] == 200       # added while running
    finally:
        await gw.stop()

    again = token_cli("revoke", clerk[4:12], "--data-dir", str(tmp_path / "data"))
    assert again.returncode == 1 and "already revoked" in again.stderr
    unknown = token_cli("revoke", "ffffffff", "--data-dir", str(tmp_path / "data"))
    assert unknown.returncode == 1 and "no token with id 'ffffffff'" in unknown.stderr
    no_role = token_cli("add", "--role", "root", "--name", "x", "--data-dir", str(tmp_path / "data"))
    assert no_role.returncode == 2
    listed = token_cli("list", "--data-dir", str(tmp_path / "data"))
    assert [line.split()[3] != "-" for line in listed.stdout.splitlines()[1:]] == [True, False, False]
    entries = [json.loads(line) for line in (tmp_path / "data" / AUDIT_FILE).read_text().splitlines()]
    assert [(e["action"], e["subject"]) for e in entries] == [
        ("token.add", clerk[4:12]), ("token.add", keep[4:12]), ("token.revoke", clerk[4:12]),
        ("token.add", late[4:12])]
    assert all(e["actor"].startswith("cli:") for e in entries)
    assert verify(tmp_path / "data" / AUDIT_FILE).intact


async def test_routes_declare_their_role_and_writes_default_to_operator(tmp_path: Path) -> None:
    """The auth middleware on a small aiohttp app of its own, because no operator route exists
    yet in the API (the billing writes will declare ``requires(Role.OPERATOR)`` like ``/o``)."""
    tokens = TokenFile(tmp_path)
    minted = {role: tokens.add(role.label, role, "2026-12-06T00:00:00Z")[0] for role in Role}
    auth = ApiAuth(tokens, None, AuditLog.in_dir(tmp_path))

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        return await auth.check(request, handler, public=False)

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[check])
    app.router.add_get("/r", ok)                               # undeclared GET: reader
    app.router.add_post("/w", ok)                              # undeclared write: operator
    app.router.add_post("/o", requires(Role.OPERATOR)(ok))
    app.router.add_delete("/a", requires(Role.ADMIN)(ok))
    app.router.add_get("/ar", requires(Role.ADMIN)(ok))        # a GET may need more than reader
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    try:
        expected = {
            Role.READER: {"GET /r": 200, "POST /w": 403, "POST /o": 403, "DELETE /a": 403, "GET /ar": 403},
            Role.OPERATOR: {"GET /r": 200, "POST /w": 200, "POST /o": 200, "DELETE /a": 403, "GET /ar": 403},
            Role.ADMIN: {"GET /r": 200, "POST /w": 200, "POST /o": 200, "DELETE /a": 200, "GET /ar": 200},
        }
        for role, routes in expected.items():
            for route, want in routes.items():
                method, path = route.split()
                status, body = await call(server.port or 0, method, path, minted[role])
                assert status == want, (role, route, body)
                if want == 403:
                    assert "needs the" in body["error"] and f"has the {role.label} role" in body["error"]
        status, body = await call(server.port or 0, "POST", "/o", "amr_00000000_nope")
        assert status == 401
        (tmp_path / TOKEN_FILE).write_text('{"version": 1, "tokens": [{"id": ')   # damaged: refuse, never guess
        status, body = await call(server.port or 0, "GET", "/r", minted[Role.ADMIN])
        assert status == 401 and tokens.load_error is not None and "malformed" in tokens.load_error
    finally:
        await server.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can run as root and hand files to another user")
def test_token_add_as_root_hands_the_files_to_the_state_directory_owner(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 65534, 65534)                       # the gateway's user (here: nobody) owns data_dir
    add_token(data, "reader", "dashboard")
    for name in (TOKEN_FILE, f"{TOKEN_FILE}.lock", AUDIT_FILE):
        st = (data / name).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o600), name
