"""HTTP hardening of the API (issue 16 item 9), against the gateway's real API over TCP.

* a bearer token of any bytes is a 401, never a 500;
* a request aiohttp cannot parse is a 400, logged as one line without traceback, at most
  once a minute per client;
* unauthenticated ``/api/v1/health`` says only up/degraded and the version; the details
  need the token;
* a URL's user and password never appear in health;
* a sink's ``last_error`` clears when it delivers again (a private mosquitto started late).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.api.httplog import MalformedRequestLog
from gateway.config import load_settings_from_text
from gateway.ports import free_port
from gateway.runtime import Gateway
from gateway.sinks.base import redact_credentials
from tests.servicefixtures import MosquittoProcess, await_until

TOKEN = "hardening-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

pytestmark = pytest.mark.integration


class Api:
    """A running gateway (no meter answers; it does not matter here) and its API port."""

    def __init__(self, gw: Gateway, port: int, mqtt_port: int) -> None:
        self.gw = gw
        self.port = port
        self.mqtt_port = mqtt_port

    async def raw(self, request: bytes) -> tuple[int, bytes]:
        """Send raw bytes as one HTTP request; the status code and body of the answer."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(request)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            body = await asyncio.wait_for(reader.readexactly(length), 10.0) if length else b""
            return int(head.split(b" ", 2)[1]), body
        finally:
            writer.close()
            await writer.wait_closed()

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{self.port}{path}", headers=headers or {}) as resp:
            return resp.status, json.loads(await resp.text())


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    port, mqtt_port = free_port(), free_port()
    text = f"""\
gateway: {{id: hardening, timezone: Asia/Shanghai, data_dir: {tmp_path / 'data'}}}
buses:
  - {{id: lan, type: tcp, host: 127.0.0.1, port: {free_port()}, protocol: modbus-tcp, timeout_ms: 200}}
meters:
  - {{id: m1, customer: C1, bus: lan, address: 1, profile: simulator}}
schedules:
  interval: {{every: 15m, points: ["energy_*"]}}
mqtt: {{host: 127.0.0.1, port: {mqtt_port}}}
influxdb: {{url: "http://reader:s3cr3t@127.0.0.1:{free_port()}", org: o, bucket: b, token: t}}
api: {{listen: "127.0.0.1:{port}", token: {TOKEN}}}
"""
    settings = load_settings_from_text(text, "<test>", tmp_path, {})
    gw = Gateway(settings)
    await gw.start()
    try:
        yield Api(gw, port, mqtt_port)
    finally:
        await gw.stop()


async def test_a_token_of_any_bytes_is_a_401(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    tokens = [b"\xff\xfe\xfd", b"\x80" * 3, "\u00e9t\u00e9".encode(), b"\xed\xa0\x80", b"x" * 4000,
              TOKEN.encode() + b"\xff"]
    with caplog.at_level("ERROR", logger="amr.api"):
        for token in tokens:
            status, body = await api.raw(b"GET /api/v1/meters HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
                                         b"Authorization: Bearer " + token + b"\r\n\r\n")
            assert status == 401, token
            assert "token" in json.loads(body)["error"]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert (await api.get("/api/v1/meters", AUTH))[0] == 200      # the right one still works


async def test_malformed_requests_are_400_and_logged_once_without_traceback(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    bad = b"GET /api/v1/meters HTTP/1.1\r\nHost: gw\r\nContent-Length: many\r\n\r\n"
    with caplog.at_level("DEBUG", logger="amr.api.http"):
        for _ in range(5):
            status, _ = await api.raw(bad)
            assert status == 400
    lines = [r for r in caplog.records if r.name == "amr.api.http"]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].exc_info is None and lines[0].levelno == logging.WARNING
    assert "malformed HTTP request from 127.0.0.1" in lines[0].getMessage()


def test_the_malformed_request_log_lets_one_line_a_minute_per_client() -> None:
    # the limiter on its own, with an injected clock (the API test above covers the wiring)
    now = [1000.0]
    limiter = MalformedRequestLog(every_s=60.0, now=lambda: now[0])

    def record(client: str) -> logging.LogRecord:
        from aiohttp.http_exceptions import BadHttpMessage

        exc = BadHttpMessage("bad header")
        return logging.LogRecord("amr.api.http", logging.ERROR, __file__, 1, "Error handling request from %s",
                                 (client,), (BadHttpMessage, exc, None))

    assert limiter.filter(record("10.0.0.1"))
    assert not limiter.filter(record("10.0.0.1"))
    assert limiter.filter(record("10.0.0.2"))                        # another client has its own minute
    now[0] += 61.0
    again = record("10.0.0.1")
    assert limiter.filter(again)
    assert "1 more from this client not logged" in again.getMessage() and again.exc_info is None
    other = logging.LogRecord("amr.api.http", logging.ERROR, __file__, 1, "something else", (), None)
    assert limiter.filter(other) and other.msg == "something else"   # other records pass unchanged


async def test_health_without_a_token_says_only_up_or_degraded_and_the_version(api: Api) -> None:
    status, public = await api.get("/api/v1/health")
    assert status == 200 and set(public) == {"status", "version"}
    assert public["status"] in ("up", "degraded")
    _, wrong = await api.get("/api/v1/health", {"Authorization": "Bearer nope"})
    assert set(wrong) == {"status", "version"}
    _, full = await api.get("/api/v1/health", AUTH)
    assert full["gateway"] == "hardening" and "store" in full and "sinks" in full


async def test_credentials_in_urls_are_never_shown(api: Api) -> None:
    def influx() -> dict[str, Any]:
        return next(s.state() for s in api.gw.sinks if s.name == "influxdb")

    await await_until(lambda: influx()["last_error"] is not None, 20.0, "the InfluxDB sink to fail")
    _, full = await api.get("/api/v1/health", AUTH)
    text = json.dumps(full)
    assert "s3cr3t" not in text and "reader:" not in text
    assert "http://***@127.0.0.1" in text
    assert redact_credentials("x http://u:p@h:1/a and mqtts://a@b") == "x http://***@h:1/a and mqtts://***@b"


async def test_a_sink_last_error_clears_when_it_delivers_again(api: Api, tmp_path: Path) -> None:
    def mqtt() -> dict[str, Any]:
        return next(s.state() for s in api.gw.sinks if s.name == "mqtt")

    await await_until(lambda: mqtt()["last_error"] is not None, 20.0, "the MQTT sink to fail (no broker yet)")
    broker = MosquittoProcess(tmp_path / "mosquitto", port=api.mqtt_port)
    broker.start()
    try:
        await await_until(lambda: mqtt()["state"] == "connected", 30.0, "the MQTT sink to connect")
        assert mqtt()["last_error"] is None
        _, full = await api.get("/api/v1/health", AUTH)
        assert next(s for s in full["sinks"] if s["name"] == "mqtt")["last_error"] is None
    finally:
        broker.stop()
