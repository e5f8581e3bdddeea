"""InfluxDB sink: how each HTTP outcome is handled.

No real server can be told to answer 429 with Retry-After, 413, 400, 401 or 500 on demand,
so a small local HTTP server (aiohttp, on a free loopback port) plays a misbehaving
InfluxDB: it answers ``/ping`` like InfluxDB and ``/api/v2/write`` from a script, and
records every line it accepted. The sink under test is the real one, with each writer
(``influxdb.client``: built-in and influxdb-client): the outcomes must not depend on it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from gateway.settings import InfluxClient, InfluxSettings, StoreSettings
from gateway.sinks.base import Backoff
from gateway.sinks.delivery import SinkRunner
from gateway.sinks.influx import InfluxSink
from gateway.store import Store
from tests.servicefixtures import await_until, commit, make_reading

pytestmark = pytest.mark.integration

FAST = StoreSettings(synchronous="NORMAL", commit_interval_s=0.01)

Answer = tuple[int, dict[str, str], str]     # status, headers, body
Script = Callable[[int, list[str]], Answer]  # (request number, lines) → answer


@dataclass
class FakeInflux:
    """The misbehaving server's state: the script, what it was sent, what it accepted."""

    script: Script
    url: str = ""
    requests: list[list[str]] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)

    def accepted_seqs(self) -> list[int]:
        """The seq field of every accepted line, in order."""
        out = []
        for line in self.accepted:
            fields = line.split(" ")[-2]
            out.append(int(next(f for f in fields.split(",") if f.startswith("seq="))[4:-1]))
        return out


OK: Answer = (204, {}, "")


@pytest.fixture(params=["builtin", "influxdb-client"])
def client(request: pytest.FixtureRequest) -> InfluxClient:
    """The ``influxdb.client`` writer under test."""
    name: InfluxClient = request.param
    return name


async def serve(fake: FakeInflux) -> web.AppRunner:
    """Serve ``fake`` on a free loopback port; sets ``fake.url``."""

    async def ping(request: web.Request) -> web.Response:
        return web.Response(status=204, headers={"X-Influxdb-Version": "fake"})

    async def write(request: web.Request) -> web.Response:
        body = (await request.read()).decode()
        lines = [line for line in body.split("\n") if line]
        fake.tokens.append(request.headers.get("Authorization", ""))
        fake.requests.append(lines)
        status, headers, text = fake.script(len(fake.requests), lines)
        if 200 <= status < 300:
            fake.accepted.extend(lines)
        return web.Response(status=status, headers=headers, text=text,
                            content_type="application/json" if text else None)

    app = web.Application()
    app.router.add_get("/ping", ping)
    app.router.add_post("/api/v2/write", write)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}"
    return runner


async def deliver(tmp_path: Path, client: InfluxClient, script: Script, n: int, *, batch_size: int = 10,
                  until: Callable[[SinkRunner], bool] | None = None) -> tuple[FakeInflux, SinkRunner, Store]:
    """Commit ``n`` readings, run the real sink against the scripted server until ``until``
    (default: the cursor reached the end), and return the server, runner and store."""
    fake = FakeInflux(script)
    http = await serve(fake)
    gw = f"t-{uuid.uuid4().hex[:8]}"
    store = await Store.open(tmp_path / "amr.sqlite", FAST, gw)
    await commit(store, [make_reading("m1", ts=time.time() - 100 + i) for i in range(n)])
    settings = InfluxSettings(url=fake.url, org="o", bucket="b", token="secret", batch_size=batch_size,
                              batch_age_s=0.02, timeout_s=5.0, client=client)
    runner = SinkRunner(InfluxSink(settings, gw), store, backoff=Backoff(base=0.02, cap=0.1),
                        auth_retry_min_s=0.05)
    await runner.start()
    try:
        if until is None:
            assert await runner.wait_idle(60), runner.state()
        else:
            await await_until(lambda: until(runner), 60, "the scripted outcome")
    finally:
        await runner.stop()
        await http.cleanup()
    return fake, runner, store


async def test_429_throttles_honouring_retry_after_then_delivers(
    tmp_path: Path, client: InfluxClient, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[float | None] = []

    def script(i: int, lines: list[str]) -> Answer:
        return (429, {"Retry-After": "0.4"}, '{"code":"too many requests","message":"slow down"}') if i <= 2 else OK

    def watch(r: SinkRunner) -> bool:
        if r.status == "throttled" and r.retry_in_s is not None:   # None: reopened, not waiting
            seen.append(r.retry_in_s)
        return r.store.backlog_now(r.name) == 0

    with caplog.at_level("WARNING", logger="amr.sinks"):
        fake, runner, store = await deliver(tmp_path, client, script, 30, until=watch)
    assert seen and set(seen) == {0.4}                    # the server's delay, not our backoff
    assert sorted(fake.accepted_seqs()) == list(range(1, 31))
    assert await store.cursor("influxdb") == 30
    assert runner.failed >= 10                            # the throttled batch was kept and resent
    assert runner.rejected == 0
    throttled = [r.getMessage() for r in caplog.records if "slow down" in r.getMessage()]
    assert throttled and "throttling" in throttled[0]     # the state change was reported with the reason
    assert runner.last_error is None                      # and health no longer shows it once delivering
    assert len(fake.requests) == 2 + 3                    # 2 refused + 3 batches
    await store.close()


async def test_503_with_http_date_retry_after_is_honoured(tmp_path: Path, client: InfluxClient) -> None:
    seen: list[float | None] = []

    def script(i: int, lines: list[str]) -> Answer:
        if i == 1:
            when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 2))
            return 503, {"Retry-After": when}, ""
        return OK

    def throttled(r: SinkRunner) -> bool:
        if r.status == "throttled" and r.retry_in_s is not None:   # None: reopened, not waiting
            seen.append(r.retry_in_s)
        return r.store.backlog_now(r.name) == 0

    fake, _runner, store = await deliver(tmp_path, client, script, 5, until=throttled)
    assert sorted(fake.accepted_seqs()) == [1, 2, 3, 4, 5]
    assert seen and all(s is not None and 0.5 <= s <= 2.0 for s in seen)   # the date, not the backoff (≤ 0.1)
    await store.close()


async def test_413_splits_the_batch_and_a_single_oversized_line_is_rejected(
    tmp_path: Path, client: InfluxClient
) -> None:
    def script(i: int, lines: list[str]) -> Answer:
        if len(lines) > 3:
            return 413, {}, '{"code":"request too large","message":"payload exceeds 3 lines"}'
        if any(",seq=7i " in line or " seq=7i " in line for line in lines) and len(lines) == 1:
            return 413, {}, '{"code":"request too large","message":"this line is too large"}'
        if any("seq=7i" in line for line in lines):
            return 413, {}, '{"code":"request too large","message":"too large"}'
        return OK

    fake, runner, store = await deliver(tmp_path, client, script, 20, batch_size=10)
    assert sorted(fake.accepted_seqs()) == [s for s in range(1, 21) if s != 7]
    assert runner.rejected == 1                          # only the line no split could make fit
    assert await store.cursor("influxdb") == 20          # the cursor passes the rejected line
    sink = runner.sink
    assert isinstance(sink, InfluxSink) and sink.splits >= 2
    await store.close()


async def test_400_rejects_the_batch_logs_once_and_the_cursor_passes(
    tmp_path: Path, client: InfluxClient, caplog: pytest.LogCaptureFixture
) -> None:
    def script(i: int, lines: list[str]) -> Answer:
        if i == 1:
            return 400, {}, '{"code":"invalid","message":"partial write: field type conflict"}'
        return OK

    with caplog.at_level("WARNING", logger="amr.sinks"):
        fake, runner, store = await deliver(tmp_path, client, script, 25, batch_size=10)
    assert sorted(fake.accepted_seqs()) == list(range(11, 26))
    assert runner.rejected == 10 and runner.published == 15
    assert await store.cursor("influxdb") == 25
    logged = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(logged) == 1 and "field type conflict" in logged[0]
    assert runner.state()["state"] == "stopped" and "field type conflict" in (runner.last_error or "")
    await store.close()


async def test_401_keeps_the_readings_reports_once_then_recovers(
    tmp_path: Path, client: InfluxClient, caplog: pytest.LogCaptureFixture
) -> None:
    def script(i: int, lines: list[str]) -> Answer:
        return (401, {}, '{"code":"unauthorized","message":"unauthorized access"}') if i <= 4 else OK

    seen: list[str] = []

    def watch(r: SinkRunner) -> bool:
        seen.append(r.status)
        return r.store.backlog_now(r.name) == 0

    with caplog.at_level("WARNING", logger="amr.sinks"):
        fake, runner, store = await deliver(tmp_path, client, script, 12, batch_size=10, until=watch)
    assert "auth_failed" in seen
    assert sorted(fake.accepted_seqs()) == list(range(1, 13))     # nothing dropped
    assert runner.rejected == 0
    assert sum("refused our credentials" in r.getMessage() for r in caplog.records) == 1
    assert sum("again" in r.getMessage() for r in caplog.records) == 1   # and recovery, once
    assert set(fake.tokens) == {"Token secret"}
    await store.close()


async def test_500_is_retried_with_backoff(tmp_path: Path, client: InfluxClient) -> None:
    def script(i: int, lines: list[str]) -> Answer:
        return (500, {}, '{"code":"internal error","message":"boom"}') if i % 2 == 1 and i < 6 else OK

    fake, runner, store = await deliver(tmp_path, client, script, 30, batch_size=10)
    assert sorted(set(fake.accepted_seqs())) == list(range(1, 31))
    assert runner.rejected == 0 and runner.failed > 0
    await store.close()
