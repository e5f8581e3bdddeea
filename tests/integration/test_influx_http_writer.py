"""The built-in InfluxDB writer (``gateway.sinks.influx_http``) on the wire, and what it spares
the process.

A small threaded HTTP/1.1 server on a free loopback port records each request and the TCP
connection it came on, and can misbehave on demand (close a keep-alive connection after
answering, drop a request unanswered, never answer, answer over TLS) — the things a real
server cannot be told to do at a chosen moment. The last tests start the real sink in a
subprocess against VictoriaMetrics to show which writer imports ``influxdb_client``.
"""

from __future__ import annotations

import asyncio
import http.client
import http.server
import json
import os
import shutil
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.model import reading_payload
from gateway.settings import GatewaySettings, InfluxSettings, Settings, StoreSettings
from gateway.sinks.delivery import build_sinks
from gateway.sinks.influx import InfluxSink, classify
from gateway.sinks.influx_http import HttpWriter, InfluxHTTPError
from gateway.store import OutboxRow, Store
from tests.servicefixtures import (  # noqa: F401  (fixtures)
    Outcomes,
    _victoria_fixture,
    await_until,
    commit,
    free_port,
    make_reading,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection: int          # which TCP connection (1, 2, …) carried it


@dataclass
class Behaviour:
    """What the server does with the next requests (tests change it between calls)."""

    mode: str = "ok"         # ok | close-after | drop | hang
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    ping_status: int = 204


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.behaviour = Behaviour()
        self.requests: list[Request] = []
        self.connections = 0
        self.closed = threading.Semaphore(0)     # released when a connection's handler ends
        self.release = threading.Event()         # ends "hang"
        self.lock = threading.Lock()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1
            self.number = self.server.connections

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.closed.release()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _record(self) -> Behaviour:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            self.server.requests.append(Request(self.command, self.path, dict(self.headers.items()), body,
                                                self.number))
        return self.server.behaviour

    def _answer(self, status: int, headers: dict[str, str], body: str) -> None:
        data = body.encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def do_GET(self) -> None:
        b = self._record()
        self._answer(b.ping_status if self.path.endswith("/ping") else 404, {}, "")

    def do_POST(self) -> None:
        b = self._record()
        if b.mode == "drop":
            self.close_connection = True         # no answer at all: the peer sees the connection close
            return
        if b.mode == "hang":
            self.server.release.wait(10)
            self.close_connection = True
            return
        self._answer(b.status, b.headers, b.body)
        if b.mode == "close-after":
            self.close_connection = True         # like an idle keep-alive timeout: no Connection: close


@pytest.fixture
def server() -> Iterator[_Server]:
    """The scripted server, serving on a thread; stopped (bounded) after the test."""
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def base_url(srv: _Server, scheme: str = "http") -> str:
    """The server's base URL."""
    return f"{scheme}://127.0.0.1:{srv.server_address[1]}"


def writer_for(url: str, **kw: object) -> HttpWriter:
    """A writer with the test's defaults (token, org with a space, short timeout)."""
    args: dict[str, object] = {"token": "t0ken", "org": "my org", "bucket": "amr", "timeout_s": 5.0}
    args.update(kw)
    return HttpWriter(url, **args)  # type: ignore[arg-type]


def wait_closed(srv: _Server, n: int = 1) -> None:
    """Wait (bounded) until ``n`` server-side connections have ended."""
    for _ in range(n):
        assert srv.closed.acquire(timeout=5), "the server did not close the connection"


# --------------------------------------------------------------------------- the request
def test_write_is_a_v2_write_with_token_content_type_and_utf8_body(server: _Server) -> None:
    w = writer_for(base_url(server))
    body = "amr_reading,meter=Z\u00e4hler\\ 1 energy_import_kwh=1.5,seq=1i 1767225600123"
    w.write(body)
    w.close()
    [req] = server.requests
    assert req.method == "POST"
    assert req.path == "/api/v2/write?org=my+org&bucket=amr&precision=ms"
    assert req.headers["Authorization"] == "Token t0ken"
    assert req.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert req.body == body.encode("utf-8")


def test_no_token_sends_no_authorization_and_a_path_prefix_is_kept(server: _Server) -> None:
    w = writer_for(base_url(server) + "/influx/", token=None)
    w.write("m v=1 1")
    assert w.ping() is True
    w.close()
    assert [r.path for r in server.requests] == ["/influx/api/v2/write?org=my+org&bucket=amr&precision=ms",
                                                 "/influx/ping"]
    assert all("Authorization" not in r.headers for r in server.requests)


def test_ping_is_true_only_for_2xx(server: _Server) -> None:
    w = writer_for(base_url(server))
    assert w.ping() is True
    server.behaviour.ping_status = 404
    assert w.ping() is False
    w.close()
    assert server.requests[0].headers["Authorization"] == "Token t0ken"   # InfluxDB 3 wants it on /ping too
    assert writer_for(f"http://127.0.0.1:{free_port()}").ping() is False  # nothing listening


# --------------------------------------------------------------------------- connections
def test_keep_alive_one_connection_carries_every_request(server: _Server) -> None:
    w = writer_for(base_url(server))
    assert w.ping()
    for i in range(5):
        w.write(f"m v={i} {i}")
    w.close()
    assert len(server.requests) == 6
    assert {r.connection for r in server.requests} == {1}
    assert server.connections == 1 and w.connections == 1


def test_a_dropped_keep_alive_connection_is_reopened_once_and_the_write_lands(server: _Server) -> None:
    w = writer_for(base_url(server))
    server.behaviour.mode = "close-after"
    w.write("m v=1 1")
    wait_closed(server)                  # the server closed the idle connection; the writer does not know
    server.behaviour.mode = "ok"
    w.write("m v=2 2")                   # fails on the dead connection, lands on a new one
    w.close()
    assert [r.body for r in server.requests] == [b"m v=1 1", b"m v=2 2"]
    assert [r.connection for r in server.requests] == [1, 2]
    assert w.connections == 2


def test_a_fresh_connection_that_fails_is_not_retried(server: _Server) -> None:
    w = writer_for(base_url(server))
    w.write("m v=1 1")
    server.behaviour.mode = "drop"
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        w.write("m v=2 2")               # the kept connection, then one fresh one: both dropped
    assert [r.connection for r in server.requests] == [1, 1, 2]
    assert w.connections == 2
    server.behaviour.mode = "ok"
    w.write("m v=3 3")                   # and the writer is usable afterwards
    w.close()
    assert server.requests[-1].connection == 3


def test_refused_raises_at_once(server: _Server) -> None:
    w = writer_for(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ConnectionRefusedError) as info:
        w.write("m v=1 1")
    result = classify(info.value, w.url)
    assert not isinstance(result, str) and result.action == "keep" and "cannot reach" in str(result)
    assert w.connections == 1


def test_timeout_bounds_a_silent_server(server: _Server) -> None:
    w = writer_for(base_url(server), timeout_s=0.3)
    server.behaviour.mode = "hang"
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        w.write("m v=1 1")
    assert time.monotonic() - t0 < 3
    assert len(server.requests) == 1     # a timeout is not a dropped connection: no second try
    w.close()


# --------------------------------------------------------------------------- answers
def test_non_2xx_raises_with_status_reason_body_and_retry_after(server: _Server) -> None:
    w = writer_for(base_url(server))
    server.behaviour.status = 429
    server.behaviour.headers = {"Retry-After": "3"}
    server.behaviour.body = json.dumps({"code": "too many requests", "message": "slow down"})
    with pytest.raises(InfluxHTTPError) as info:
        w.write("m v=1 1")
    exc = info.value
    assert (exc.status, exc.reason, exc.retry_after) == (429, "Too Many Requests", "3")
    assert json.loads(exc.body)["message"] == "slow down"
    result = classify(exc, w.url)
    assert not isinstance(result, str) and result.action == "throttle" and result.retry_after == 3.0
    server.behaviour.status, server.behaviour.headers, server.behaviour.body = 204, {}, ""
    w.write("m v=2 2")                   # the connection survives an error answer
    w.close()
    assert {r.connection for r in server.requests} == {1}


# --------------------------------------------------------------------------- https
@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl CLI) and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


def test_https_verifies_the_server_and_keeps_the_connection(server: _Server, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    trusting = writer_for(base_url(server, "https"), ssl_context=ssl.create_default_context(cafile=str(cert)))
    assert trusting.ping()
    trusting.write("m v=1 1")
    trusting.write("m v=2 2")
    trusting.close()
    assert [r.connection for r in server.requests] == [1, 1, 1]
    default = writer_for(base_url(server, "https"))      # the system's CAs do not know this certificate
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        default.write("m v=3 3")
    result = classify(info.value, default.url)
    assert not isinstance(result, str) and result.action == "keep"
    assert len(server.requests) == 3


# --------------------------------------------------------------------------- the process
PROBE = r"""
import asyncio, json, sys, tempfile, time, uuid
from pathlib import Path

import gateway.cli  # noqa: F401  (what `amr-gateway run` imports)
from gateway.settings import GatewaySettings, InfluxSettings, Settings, StoreSettings
from gateway.sinks.delivery import build_sinks
from gateway.store import Store
from tests.servicefixtures import commit, make_reading


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def main(url: str, client: str) -> dict[str, object]:
    before = "influxdb_client" in sys.modules
    with tempfile.TemporaryDirectory() as tmp:
        gw = f"t-{uuid.uuid4().hex[:8]}"
        settings = Settings(gateway=GatewaySettings(id=gw, data_dir=Path(tmp)), buses={}, meters={},
                            schedules={}, profiles={}, mqtt=None,
                            influxdb=InfluxSettings(url=url, batch_size=10, batch_age_s=0.02, timeout_s=5.0,
                                                    client=client))
        store = await Store.open(Path(tmp) / "amr.sqlite",
                                 StoreSettings(synchronous="NORMAL", commit_interval_s=0.01), gw)
        [runner] = build_sinks(settings, store)
        await runner.start()
        try:
            await commit(store, [make_reading("m1", ts=time.time() - 60 + i) for i in range(5)])
            idle = await runner.wait_idle(30)
            published = runner.published
        finally:
            await runner.stop()
            await store.close()
    return {"before": before, "after": "influxdb_client" in sys.modules, "idle": idle,
            "published": published, "rss_mb": rss_mb()}


print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
"""


def run_probe(url: str, client: str) -> dict[str, object]:
    """Run the real sink (as ``build_sinks`` makes it) in a fresh interpreter; its report."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", PROBE, url, client], cwd=REPO, env=env, check=False,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def test_the_default_gateway_process_never_imports_influxdb_client(victoria_metrics: str) -> None:
    report = run_probe(victoria_metrics, "builtin")
    assert report["idle"] is True and report["published"] == 5
    assert report["before"] is False and report["after"] is False


def test_the_influxdb_client_writer_imports_it_only_when_selected(victoria_metrics: str) -> None:
    report = run_probe(victoria_metrics, "influxdb-client")
    assert report["idle"] is True and report["published"] == 5
    assert report["before"] is False and report["after"] is True   # the probe can see the import


# --------------------------------------------------------------------------- the sink's batching
async def test_the_sink_writes_by_batch_age_not_per_store_commit(server: _Server, tmp_path: Path) -> None:
    """Five store commits 20 ms apart, caught up after each, go out as one write when the
    first row is ``batch_age`` old (the cost that matters at 1,000 readings/s: one HTTP write a
    second, not one per group commit); a stop then writes what is still filling at once."""
    gw = "t-batch"
    settings = Settings(gateway=GatewaySettings(id=gw, data_dir=tmp_path), buses={}, meters={},
                        schedules={}, profiles={}, mqtt=None,
                        influxdb=InfluxSettings(url=base_url(server), batch_size=1000, batch_age_s=5.0,
                                                timeout_s=5.0))
    store = await Store.open(tmp_path / "amr.sqlite", StoreSettings(synchronous="NORMAL", commit_interval_s=0.01),
                             gw)
    [runner] = build_sinks(settings, store)
    sink = runner.sink
    assert isinstance(sink, InfluxSink)
    await runner.start()
    try:
        t0 = time.time() - 60
        for i in range(5):
            await commit(store, [make_reading("m1", ts=t0 + i)])
            await asyncio.sleep(0.02)         # the scenario: rows arrive spread out, inside one batch age
        assert await runner.wait_idle(20), runner.state()
        writes = [r for r in server.requests if r.method == "POST"]
        assert len(writes) == 1, [w.body for w in writes]
        assert writes[0].body.count(b"\n") == 4                  # five lines in the one write
        started = time.monotonic()
        await commit(store, [make_reading("m1", ts=t0 + 10)])
        await await_until(lambda: sink.filling == 1, 5, "the row handed to the filling batch")
    finally:
        await runner.stop()
        await store.close()
    writes = [r for r in server.requests if r.method == "POST"]
    assert len(writes) == 2 and runner.published == 6
    assert time.monotonic() - started < 4.0                     # the stop wrote it, not the batch age (5 s)


async def test_a_row_that_is_no_line_is_rejected_with_its_batch_and_the_rest_written(server: _Server) -> None:
    """A committed payload that cannot become line protocol (not JSON) is reported rejected,
    once for its batch and with the reason; the good rows around it are written in order."""
    sink = InfluxSink(InfluxSettings(url=base_url(server), batch_size=3, batch_age_s=5.0, timeout_s=5.0), "gw")
    seen = Outcomes()
    await sink.open(seen)
    try:
        good = make_reading("m1", ts=1_767_225_600.0)
        for seq, body in ((1, reading_payload(good, "gw", 1)), (2, "not json"), (3, reading_payload(good, "gw", 3))):
            sink.send(OutboxRow(seq, "reading", "m1", 1_767_225_600.0, body))
        await await_until(lambda: len(seen.ok) == 2, 5, "the batch written")
    finally:
        await sink.close(True)
    assert seen.ok == [1, 3] and not seen.errors
    [(seqs, reason)] = seen.bad
    assert seqs == [2] and "cannot express the committed message as line protocol" in reason
    [write] = [r for r in server.requests if r.method == "POST"]
    assert write.body.count(b"\n") == 1 and b"seq=1i" in write.body and b"seq=3i" in write.body
