"""What the billing integration tests share: the rehearsal gateway's settings, its clock's
zone, and how they look at settlements (capture state, the API, the export CLI)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from gateway.billing.capture import BillingCapture
from gateway.billing.rehearsal import rehearsal_config_text
from gateway.config import load_settings_from_text
from gateway.ports import free_port
from gateway.runtime import Gateway
from gateway.settings import Settings

SH = ZoneInfo("Asia/Shanghai")
TOKEN = "billing-test-token"
REPO = Path(__file__).resolve().parents[1]


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    """Epoch seconds of a Shanghai wall-clock time (the rehearsal gateway's zone)."""
    return datetime(year, month, day, hour, minute, tzinfo=SH).timestamp()


def shown(name: str, v: Decimal) -> Decimal:
    """A model register as the DL/T 645 meter displays it: maximum demand is XX.XXXX (half-up)."""
    return v.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP) if name == "demand_max_kw" else v


def rehearsal_settings(tmp: Path, **options: Any) -> tuple[Settings, Path]:
    """The rehearsal configuration (``options`` go to ``rehearsal_config_text``), written
    to ``tmp/config.yaml`` for the export CLI, and loaded with the test token."""
    text = rehearsal_config_text(tmp, api_port=free_port(), **options)
    path = tmp / "config.yaml"
    path.write_text(text)
    return load_settings_from_text(text, str(path), tmp, {"AMR_API_TOKEN": TOKEN}), path


def capture_of(gw: Gateway) -> BillingCapture:
    """The gateway's settlement-capture component."""
    assert gw.billing is not None
    return gw.billing


def quality(cap: BillingCapture, meter: str, t: float) -> str | None:
    """The current settlement quality of ``meter`` at boundary ``t`` (None: none yet)."""
    k = cap.current.get((meter, t))
    return None if k is None else k.quality


async def api_get(gw: Gateway, path: str) -> tuple[int, str]:
    """GET from the gateway's API with the test token: status and body."""
    assert gw.api is not None
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http, \
            http.get(f"http://127.0.0.1:{gw.api.port}{path}") as resp:
        return resp.status, await resp.text()


def export(config: Path, *args: str) -> str:
    """``amr-gateway export ARGS -c CONFIG`` as a process; its stdout (it must succeed)."""
    env = dict(os.environ, AMR_API_TOKEN=TOKEN, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "export", *args, "-c", str(config)],
                          cwd=REPO, env=env, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode("utf-8")
