"""The console's HTTP side against a running gateway: files, sign-in, cookie, CSRF, sign-out.

A real :class:`gateway.runtime.Gateway` with its API on a free loopback port (its meters'
simulators are not started: these tests are about the session, not the readings).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.billing.rehearsal import rehearsal_config_text
from gateway.config import load_settings_from_text
from gateway.ports import free_port
from gateway.runtime import Gateway
from gateway.tokens import Role, TokenFile

pytestmark = pytest.mark.integration

TOKEN = "console-test-token"


@pytest.fixture
async def base(tmp_path: Path) -> AsyncIterator[str]:
    text = rehearsal_config_text(tmp_path, api_port=free_port(), timeout_ms=100)
    settings = load_settings_from_text(text, "<console-test>", tmp_path, {"AMR_API_TOKEN": TOKEN})
    gw = Gateway(settings, enable_sinks=False)
    await gw.start()
    try:
        assert gw.api is not None
        yield f"http://127.0.0.1:{gw.api.port}"
    finally:
        await gw.stop()


async def test_console_files_are_served_without_a_token(base: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            assert "/console/static/console.js" in await resp.text()
            assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        async with http.get(base + "/console/static/strings-zh-CN.json") as resp:
            assert resp.status == 200 and (await resp.json())["signin.title"] == "登录"
        async with http.get(base + "/console/static/nope.js") as resp:
            assert resp.status == 404
        async with http.get(base + "/console/static/..%2Fconsole.py") as resp:
            assert resp.status == 404
        async with http.get(base + "/api/v1/meters") as resp:    # the API still needs a token
            assert resp.status == 401


async def test_sign_in_cookie_csrf_and_sign_out(base: str) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(base + "/console/signin", json={"token": "wrong"}) as resp:
            assert resp.status == 401
        async with http.post(base + "/console/signin", data=b"not json") as resp:
            assert resp.status == 400
        async with http.get(base + "/console/session") as resp:
            assert resp.status == 401
        async with http.post(base + "/console/signin", json={"token": TOKEN}) as resp:
            assert resp.status == 200
            body = await resp.json()
            cookie = resp.headers["Set-Cookie"]
        assert body["role"] == "admin" and len(body["csrf"]) >= 40      # api.token counts as admin
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert TOKEN not in cookie
        async with http.get(base + "/console/session") as resp:
            assert resp.status == 200 and (await resp.json())["csrf"] == body["csrf"]
        # the cookie stands for the token on GETs under /api/v1, health included
        async with http.get(base + "/api/v1/meters") as resp:
            assert resp.status == 200 and len((await resp.json())["meters"]) == 4
        async with http.get(base + "/api/v1/health") as resp:
            assert "store" in await resp.json()
        # not beyond /api/v1
        async with http.get(base + "/metrics") as resp:
            assert resp.status == 401
        # a write through the cookie needs the CSRF header: without it 403 before any route
        async with http.post(base + "/api/v1/meters") as resp:
            assert resp.status == 403 and "X-CSRF-Token" in (await resp.json())["error"]
        async with http.post(base + "/api/v1/meters", headers={"X-CSRF-Token": "forged"}) as resp:
            assert resp.status == 403
        async with http.post(base + "/api/v1/meters", headers={"X-CSRF-Token": body["csrf"]}) as resp:
            assert resp.status == 405          # past the CSRF and token checks: the route has no POST
        async with http.post(base + "/console/signout") as resp:
            assert resp.status == 403          # sign-out is a write too
        async with http.post(base + "/console/signout", headers={"X-CSRF-Token": body["csrf"]}) as resp:
            assert resp.status == 200 and (await resp.json())["signed_out"] is True
            assert "amr_session=" in resp.headers["Set-Cookie"]
        async with http.get(base + "/api/v1/meters") as resp:
            assert resp.status == 401
        async with http.get(base + "/console/session") as resp:
            assert resp.status == 401


async def test_an_old_cookie_is_refused_after_sign_out(base: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(base + "/console/signin", json={"token": TOKEN}) as resp:
            sid = resp.cookies["amr_session"].value
            csrf = (await resp.json())["csrf"]
        async with http.post(base + "/console/signout", headers={"X-CSRF-Token": csrf},
                             cookies={"amr_session": sid}) as resp:
            assert resp.status == 200
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/api/v1/meters", cookies={"amr_session": sid}) as resp:
            assert resp.status == 401
        # a bearer token still works as before, with or without a stale cookie
        async with http.get(base + "/api/v1/meters", headers={"Authorization": f"Bearer {TOKEN}"},
                            cookies={"amr_session": sid}) as resp:
            assert resp.status == 200


async def test_a_session_has_its_tokens_role(tmp_path: Path) -> None:
    """A reader token signs in as reader: it reads through the cookie, its writes are refused (403),
    and revoking the token ends what the session can do at once."""
    text = rehearsal_config_text(tmp_path, api_port=free_port(), timeout_ms=100)
    settings = load_settings_from_text(text, "<console-test>", tmp_path, {"AMR_API_TOKEN": TOKEN})
    tokens = TokenFile(settings.gateway.data_dir)
    reader, record = tokens.add("console-reader", Role.READER, "2026-12-06T00:00:00Z")
    gw = Gateway(settings, enable_sinks=False)
    await gw.start()
    try:
        assert gw.api is not None
        base = f"http://127.0.0.1:{gw.api.port}"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.post(base + "/console/signin", json={"token": reader}) as resp:
                assert resp.status == 200
                body = await resp.json()
            assert body["role"] == "reader"
            async with http.get(base + "/api/v1/meters") as resp:
                assert resp.status == 200
            async with http.post(base + "/api/v1/tokens", json={"name": "x", "role": "admin"},
                                 headers={"X-CSRF-Token": body["csrf"]}) as resp:
                assert resp.status == 403 and "admin role" in (await resp.json())["error"]
            tokens.revoke(record.id, "2026-12-06T00:01:00Z")
            async with http.get(base + "/api/v1/meters") as resp:
                assert resp.status == 401
    finally:
        await gw.stop()


async def test_console_data_routes_answer_the_overview_latest_values_and_series(base: str) -> None:
    """The overview lists every configured meter with customer and bus and every bus with its
    meters (no meter answers here: their simulators are not started, so nothing is 'up'); the
    latest and series routes answer for a meter and refuse bad parameters and unknown meters."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.get(base + "/api/v1/console/overview") as resp:
            assert resp.status == 200
            doc = await resp.json()
        assert {m["id"]: (m["customer"], m["bus"]) for m in doc["meters"]} == {
            "m1": ("C1", "tcp-m1"), "m2": ("C2", "tcp-m2"), "d1": ("C3", "tcp-d1"), "d2": ("C4", "tcp-d2")}
        assert {b["id"]: b["meters"] for b in doc["buses"]} == {"tcp-m1": 1, "tcp-m2": 1, "tcp-d1": 1, "tcp-d2": 1}
        assert all(b["state"] != "up" for b in doc["buses"])
        # TCP buses: no wire of the gateway's to fill, so no wire limit and no share of it
        assert all(b["wire_limit_per_s"] is None and b["wire_ratio"] is None and "busy_share" in b
                   for b in doc["buses"])
        assert doc["timezone"] == "Asia/Shanghai" and doc["time"].endswith("Z")
        async with http.get(base + "/api/v1/console/meters/m1/latest") as resp:
            assert resp.status == 200
            assert (await resp.json())["points"] == {}           # nothing read yet: nothing made up
        async with http.get(base + "/api/v1/console/meters/m1/series?points=power_kw,power_kw_l1") as resp:
            assert resp.status == 200
            series = await resp.json()
            assert series["series"] == {"power_kw": [], "power_kw_l1": []} and series["buckets"] == 600
        for bad in ("series?points=DROP%20TABLE", "series?buckets=0", "series?buckets=5000",
                    "series?from=2026-12-02&to=2026-12-01", "latest?scan=0"):
            async with http.get(base + "/api/v1/console/meters/m1/" + bad) as resp:
                assert resp.status == 400, bad
                assert (await resp.json())["error"]
        async with http.get(base + "/api/v1/console/meters/nope/series") as resp:
            assert resp.status == 404
    async with aiohttp.ClientSession() as http, http.get(base + "/api/v1/console/overview") as resp:
        assert resp.status == 401
