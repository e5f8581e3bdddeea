"""``amr-gateway demo`` as a newcomer runs it: a real process, its API, a clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from decimal import Decimal
from pathlib import Path

from gateway.ports import free_port
from tests.servicefixtures import wait_until

REPO = Path(__file__).resolve().parents[2]


def get(url: str, token: str | None = None) -> dict[str, object]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=5) as resp:
        data: dict[str, object] = json.loads(resp.read())
        return data


def test_demo_serves_readings_for_every_meter_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    token = "demo-test-token"
    env = dict(os.environ, AMR_API_TOKEN=token, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        # as a newcomer runs it: real time (no --clock-rate), readings within the first 10-second slot
        [sys.executable, "-m", "gateway.cli", "demo", "--listen", f"127.0.0.1:{port}",
         "--data-dir", str(tmp_path), "--mqtt", f"127.0.0.1:{free_port()}", "--duration", "90"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        seen: list[dict[str, object]] = []

        def every_meter_read() -> list[dict[str, object]] | None:
            try:
                seen[:] = get(f"{base}/api/v1/meters", token)["meters"]  # type: ignore[index]
            except OSError:
                return None
            return list(seen) if len(seen) >= 6 and all(m["last_good"] for m in seen) else None

        meters = wait_until(every_meter_read, 60, "a good reading of every demo meter", step=1.0,
                            detail=lambda: seen)
        assert len(meters) >= 6 and all(m["last_good"] for m in meters), meters
        health = get(f"{base}/api/v1/health", token)
        assert health["status"] == "up" and health["gateway"] == "demo-gateway"
        assert set(get(f"{base}/api/v1/health")) == {"status", "version"}   # without the token: no details
        for m in meters:
            # last_good is set when the meter answers; its reading is committed a moment later
            # (the store's commit interval, longer on a loaded machine): wait for the stored row
            def stored(meter_id: str = str(m["id"])) -> dict[str, object] | None:
                found = get(f"{base}/api/v1/meters/{meter_id}/readings", token)
                return found if found["count"] else None

            docs = wait_until(stored, 20, f"a stored reading of {m['id']}", step=0.5)
            assert docs["count"], m["id"]
            qualities = [d["quality"] for d in docs["readings"]]  # type: ignore[attr-defined]
            # a loaded CI machine may time out a poll now and then; a value must never be wrong
            assert "good" in qualities and not {"invalid", "crc_error", "exception"} & set(qualities), m["id"]
        # the DL/T 698.45 meter (issue 20): good voltages and power, value = raw x CT x PT (200/5 x 10000/100)
        assert "c3001-main" in {m["id"] for m in meters}
        docs = get(f"{base}/api/v1/meters/c3001-main/readings", token)
        realtime = [d for d in docs["readings"]  # type: ignore[attr-defined]
                    if d["quality"] == "good" and "power_kw" in d["points"]]
        assert realtime, docs
        points = realtime[-1]["points"]
        assert 200 < Decimal(str(points["voltage_v_l1"]["raw"])) < 250, points
        assert Decimal(str(points["power_kw"]["value"])) == Decimal(str(points["power_kw"]["raw"])) * 4000, points
        try:
            get(f"{base}/api/v1/meters")
            raise AssertionError("the meters route must need a token")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert "amr-gateway demo is running" in out
    shown = [line for line in out.splitlines() if line.startswith("reading ")]
    assert {line.split()[2] for line in shown} >= {str(m["id"]) for m in meters}   # every meter on the console
    assert any(" good  power_kw=" in line for line in shown), shown[:5]
