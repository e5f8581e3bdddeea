"""End to end: a reading is committed within ``store.commit_interval`` of its poll, with
nothing after it (issue 14 item 5).

The real ``amr-gateway run`` polls one simulated Modbus TCP meter (``amr-gateway
simulate``) on a 15-minute schedule whose offset puts the first slot a few seconds after
start, so there is exactly one poll and no later append to push it out. Two seconds after
that poll the gateway is SIGKILLed; a restarted gateway serves the reading from its store.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_delivery_e2e import GatewayProcess, start_simulator
from tests.servicefixtures import free_port, stop_process, wait_until

pytestmark = pytest.mark.slow

LEAD_S = 10
"""How long after the config is written the slot falls: room for the gateway to start."""
TOKEN = "sigkill-token"


def write_config(tmp: Path, gw: str, api_port: int) -> tuple[Path, float]:
    """One simulated meter on a 15-minute schedule; returns the config and its first slot."""
    slot = float(int(time.time()) + LEAD_S)
    cfg = tmp / "site.yaml"
    cfg.write_text(f"""\
gateway: {{id: {gw}, timezone: UTC, data_dir: {tmp / 'data'}}}
buses:
  - {{id: lan, type: tcp, host: 127.0.0.1, port: {free_port()}, protocol: modbus-tcp, timeout_ms: 500}}
meters:
  - {{id: m1, customer: C1, bus: lan, address: 1, profile: simulator}}
schedules:
  quarter: {{every: 15m, offset: {int(slot) % 900}s, points: ["energy_*"]}}
api: {{listen: "127.0.0.1:{api_port}", token: {TOKEN}}}
""")
    return cfg, slot


def api_get(port: int, path: str) -> Any:
    """GET an API path with the token (raises on any failure)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def last_read(port: int) -> str | None:
    """m1's last read time as the running gateway reports it (None before its poll)."""
    try:
        meters = api_get(port, "/api/v1/meters")["meters"]
    except (OSError, ValueError):
        return None
    value: str | None = meters[0]["last_read"]
    return value


def test_a_single_poll_survives_sigkill_two_seconds_later(tmp_path: Path) -> None:
    gw = f"sigkill-{uuid.uuid4().hex[:6]}"
    api_port = free_port()
    cfg, slot = write_config(tmp_path, gw, api_port)
    sim = start_simulator(cfg, tmp_path / "sim.log")
    gateway = GatewayProcess(cfg, tmp_path / "gw.log", api_port)
    try:
        gateway.start()
        assert time.time() < slot, f"the gateway took more than {LEAD_S} s to start; the slot passed"
        wait_until(lambda: last_read(api_port) is not None, LEAD_S + 30, "the single poll")
        time.sleep(2.0)      # the scenario itself: the kill comes 2 s after the poll, no later append
        gateway.kill()
        gateway.start()      # restart: the store is recovered from its WAL
        readings = api_get(api_port, "/api/v1/meters/m1/readings")["readings"]
        assert [(r["meter"], r["schedule"], r["seq"]) for r in readings] == [("m1", "quarter", 1)], readings
        assert readings[0]["quality"] == "good"
        assert readings[0]["points"]["energy_import_kwh"]["raw"] is not None
        store = api_get(api_port, "/api/v1/health")["store"]                # the new store fields
        assert (store["pending"], store["dropped"]) == (0, {"realtime": 0, "interval": 0, "keep": 0})
        assert store["free_bytes"] > 0 and store["pressure"] == "ok"
        req = urllib.request.Request(f"http://127.0.0.1:{api_port}/metrics",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            metrics = r.read().decode()
        assert 'amr_store_dropped_total{retention="realtime"} 0' in metrics
        assert "amr_store_pending_readings 0" in metrics
    finally:
        gateway.stop()
        stop_process(sim, signal.SIGTERM, 15)
