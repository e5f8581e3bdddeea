"""Reload is transactional (issue 16 item 2): the new runtime is built and its API listener
bound before the old one stops; a failure keeps the old one running, is logged and shows in
``/api/v1/health``; settings that need a restart are refused by name.

Real peers: a simulated Modbus TCP meter on loopback, the SQLite store on disk, the API over
HTTP, and (last test) the ``amr-gateway run`` process receiving SIGHUP.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.billing.capture import BillingCapture
from gateway.clock import ScaledClock
from gateway.config import load_settings_from_text
from gateway.ports import free_port
from gateway.runtime import Gateway, reload
from gateway.settings import Settings
from gateway.simulator.fleet import SimulatedFleet
from tests.servicefixtures import await_until, stop_process, wait_until

TOKEN = "reload-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
START = 1_795_939_200.0
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def config_text(tmp: Path, *, meter_port: int, api_port: int, gateway_id: str = "reload-test",
                customer: str = "C1") -> str:
    return f"""\
gateway: {{id: {gateway_id}, timezone: Asia/Shanghai, data_dir: {tmp / 'data'}}}
buses:
  - {{id: lan, type: tcp, host: 127.0.0.1, port: {meter_port}, protocol: modbus-tcp, timeout_ms: 500}}
meters:
  - {{id: m1, customer: {customer}, bus: lan, address: 1, profile: simulator}}
schedules:
  realtime: {{every: 1m, points: ["power_*"], priority: realtime}}
api: {{listen: "127.0.0.1:{api_port}", token: {TOKEN}}}
"""


def settings_of(tmp: Path, **kw: Any) -> Settings:
    return load_settings_from_text(config_text(tmp, **kw), "<test>", tmp, {})


@contextmanager
def port_in_use() -> Iterator[int]:
    """A loopback port another program listens on (this test, standing in for it)."""
    with socket.create_server(("127.0.0.1", 0)) as other:
        yield int(other.getsockname()[1])


async def health(port: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{port}/api/v1/health", headers=AUTH) as resp:
        assert resp.status == 200
        doc: dict[str, Any] = await resp.json()
        return doc


class Site:
    """A running in-process gateway on one simulated meter, and the knobs to reload it."""

    def __init__(self, tmp: Path, gw: Gateway, meter_port: int, api_port: int) -> None:
        self.tmp = tmp
        self.gw = gw
        self.meter_port = meter_port
        self.api_port = api_port

    def settings(self, **kw: Any) -> Settings:
        args: dict[str, Any] = {"meter_port": self.meter_port, "api_port": self.api_port} | kw
        return settings_of(self.tmp, **args)

    def reads_ok(self, gw: Gateway | None = None) -> int:
        return (gw or self.gw).meters["m1"].stats.reads_ok


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    meter_port, api_port = free_port(), free_port()
    settings = settings_of(tmp_path, meter_port=meter_port, api_port=api_port)
    clock = ScaledClock(START, 60.0)
    fleet = SimulatedFleet(settings, clock, seed=3)
    await fleet.start()
    gw = Gateway(settings, clock, enable_sinks=False)
    s = Site(tmp_path, gw, meter_port, api_port)
    try:
        await gw.start()
        await await_until(lambda: s.reads_ok() >= 1, 20.0, "the first good read")
        yield s
    finally:
        await s.gw.stop()
        await fleet.stop()


async def test_an_api_port_in_use_keeps_the_running_gateway_and_health_says_why(site: Site) -> None:
    with port_in_use() as busy:
        running = await reload(site.gw, site.settings(api_port=busy))
    assert running is site.gw                               # the old runtime was never stopped
    assert not site.gw.stopped.is_set()
    doc = await health(site.api_port)                       # still served on the old port
    assert doc["status"] == "degraded"
    assert doc["reload"]["ok"] is False
    assert f"127.0.0.1:{busy}" in doc["reload"]["error"] and "api.listen" in doc["reload"]["error"]
    before = site.reads_ok()
    await await_until(lambda: site.reads_ok() > before, 20.0, "polling to go on after the failed reload")


async def test_a_changed_gateway_id_is_refused_naming_the_setting(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("ERROR", logger="amr.runtime"):
        running = await reload(site.gw, site.settings(gateway_id="another-gateway"))
    assert running is site.gw and not site.gw.stopped.is_set()
    doc = await health(site.api_port)
    assert doc["status"] == "degraded"
    assert doc["reload"]["restart_needed"] == ["gateway.id"]
    assert "gateway.id" in doc["reload"]["error"] and "restart" in doc["reload"]["error"]
    assert any("gateway.id" in r.getMessage() for r in caplog.records)


async def test_a_good_reload_takes_over_the_port_without_a_gap_and_clears_the_error(site: Site) -> None:
    with port_in_use() as busy:
        assert await reload(site.gw, site.settings(api_port=busy)) is site.gw   # a failed one first
    answered: list[int] = []
    refused: list[str] = []
    stop = asyncio.Event()

    async def poll_health() -> None:
        async with aiohttp.ClientSession() as http:
            for _ in range(2000):                            # bounded; ends when the reload is done
                if stop.is_set():
                    return
                try:
                    async with http.get(f"http://127.0.0.1:{site.api_port}/api/v1/health") as resp:
                        answered.append(resp.status)
                except aiohttp.ClientConnectionError as exc:
                    refused.append(str(exc))
                await asyncio.sleep(0)                       # no pause: ask again at once

    poller = asyncio.create_task(poll_health())
    old = site.gw
    await await_until(lambda: answered, 10.0, "the health poller's first answer", detail=lambda: refused)
    new = await reload(old, site.settings(customer="C9"))
    stop.set()
    await poller
    site.gw = new
    assert new is not old and old.stopped.is_set() and not new.stopped.is_set()
    assert new.store is old.store                            # one store, never two writers
    assert refused == [] and answered and set(answered) == {200}
    assert new.api is not None and new.api.port == site.api_port
    doc = await health(site.api_port)
    assert doc["status"] == "up" and doc["reload"]["ok"] is True and doc["reload"]["error"] is None
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{site.api_port}/api/v1/meters", headers=AUTH) as resp:
        meters = (await resp.json())["meters"]
    assert [m["customer"] for m in meters] == ["C9"]         # the new configuration is in force
    await await_until(lambda: site.reads_ok(new) >= 1, 20.0, "the reloaded runtime to poll")


async def test_a_runtime_that_fails_to_start_after_the_swap_gives_way_to_the_previous_settings(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No real peer makes a feature fail at start on demand (it takes a failing disk at that
    # very moment), so the settlement capture of the new configuration is made to raise.
    real_start = BillingCapture.start

    async def start(self: BillingCapture) -> None:
        if self.gw.settings.meters["m1"].customer == "C9":
            raise RuntimeError("the capture tables cannot be written")
        await real_start(self)

    monkeypatch.setattr(BillingCapture, "start", start)
    old = site.gw
    back = await reload(old, site.settings(customer="C9"))
    site.gw = back
    assert back is not old and old.stopped.is_set() and not back.stopped.is_set()
    assert back.settings is old.settings and back.store is old.store
    doc = await health(site.api_port)
    assert doc["status"] == "degraded" and "the capture tables cannot be written" in doc["reload"]["error"]
    assert doc["reload"]["error"].startswith("reload failed at start, the previous configuration runs again")
    await await_until(lambda: site.reads_ok(back) >= 1, 20.0, "the previous configuration to poll again")


def http_health(port: int) -> dict[str, Any] | None:
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/health", headers=AUTH)
        with urllib.request.urlopen(req, timeout=2) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
            return doc
    except OSError:
        return None


def test_sighup_with_an_api_port_in_use_keeps_the_process_serving(tmp_path: Path) -> None:
    meter_port, api_port = free_port(), free_port()       # no meter answers: reads fail, that is fine here
    cfg = tmp_path / "site.yaml"
    cfg.write_text(config_text(tmp_path, meter_port=meter_port, api_port=api_port))
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(cfg)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        wait_until(lambda: http_health(api_port) is not None, 30.0, "the gateway's API")
        with port_in_use() as busy:
            cfg.write_text(config_text(tmp_path, meter_port=meter_port, api_port=busy))
            proc.send_signal(signal.SIGHUP)

            def refused() -> bool:
                doc = http_health(api_port)
                return doc is not None and doc["reload"] is not None and doc["reload"]["ok"] is False

            wait_until(refused, 30.0, "health to report the failed reload")
        assert proc.poll() is None                          # the process did not exit
        doc = http_health(api_port)
        assert doc is not None and doc["status"] == "degraded" and str(busy) in doc["reload"]["error"]
        assert "another program holds that port" in doc["reload"]["error"], doc["reload"]
    finally:
        stop_process(proc, signal.SIGTERM, 20.0)
    assert proc.returncode == 0
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert "reload failed, the running configuration stays" in err and f"127.0.0.1:{busy}" in err
