"""What the billing integration tests share: the rehearsal gateway's settings, its clock's
zone, and how they look at settlements (capture state, the API, the export CLI)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import aiohttp

from gateway.billing.capture import BillingCapture
from gateway.billing.rehearsal import HoldingClock, rehearsal_config_text
from gateway.clock import Clock
from gateway.config import load_settings_from_text
from gateway.model import Reading, iso_utc, loads_exact
from gateway.polling import MeterRuntime
from gateway.ports import free_port
from gateway.runtime import Gateway
from gateway.settings import Settings
from tests.servicefixtures import await_until

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


class Service(Protocol):
    """Anything started and stopped around a gateway run (a meter simulator)."""

    async def start(self) -> object:
        """Start serving."""
        ...

    async def stop(self) -> object:
        """Stop serving."""
        ...


@contextlib.asynccontextmanager
async def gateway_with(settings: Settings, clock: Clock, *services: Service) -> AsyncIterator[Gateway]:
    """Start ``services`` (the simulated meters), then a gateway on ``clock`` without sinks
    or API; stop the gateway and then the services however the block ends. The gateway
    stays readable after the block (its ``store_path``)."""
    started: list[Service] = []
    try:
        for service in services:
            await service.start()
            started.append(service)
        gw = Gateway(settings, clock, enable_sinks=False, enable_api=False)
        try:
            await gw.start()
            yield gw
        finally:
            await gw.stop()
    finally:
        for service in started:
            await service.stop()


class SlotSteps:
    """Runs a :class:`HoldingClock` slot by slot: held at every poll slot until each meter's
    reading of that slot is in, then on to the next.

    On an accelerated clock a read takes simulated time (at 20,000x, a 50 ms stall of a loaded
    host is 1,000 simulated seconds, more than a 15-minute slot): registers sampled early in
    one read and late in the next, stamped when each read ended, make a rule that relates
    energy to time (``meter_fast``) see what no meter did. Held, a read samples and is stamped
    at its slot's instant, whatever the host's load; the wait is on the readings themselves.
    """

    def __init__(self, clock: HoldingClock, meters: tuple[str, ...], every_s: float = 900.0) -> None:
        self.clock = clock
        self.meters = meters
        self.every_s = every_s
        self.read: set[tuple[str, float]] = set()

    def watch(self, gw: Gateway) -> None:
        """Count the readings of ``gw`` (call it for every gateway started on the clock)."""
        gw.observers.append(self._seen)

    def _seen(self, meter: MeterRuntime, reading: Reading) -> None:
        self.read.add((meter.id, reading.slot))

    async def read_at(self, slot: float, timeout: float = 30.0) -> None:
        """Wait (bounded) until every meter's reading of ``slot`` is in."""
        await await_until(lambda: all((m, slot) in self.read for m in self.meters), timeout,
                          f"every meter read at the slot {iso_utc(slot)}",
                          detail=lambda: sorted(m for m in self.meters if (m, slot) not in self.read))

    async def run_to(self, target: float, timeout: float = 30.0) -> None:
        """From where the clock is, run it slot by slot to ``target``: returns held there with
        every meter's reading of ``target`` in (a hold the clock stands at is released at once:
        its readings are the caller's business)."""
        while True:
            held = self.clock.holding
            if held is None:
                held = await await_until(lambda: self.clock.holding, timeout, "the clock held at a slot")
                assert held is not None
                await self.read_at(held, timeout)
            if held >= target:
                assert held == target, (iso_utc(held), iso_utc(target))
                return
            self.clock.add_hold(min(held + self.every_s, target))
            self.clock.release()


def capture_of(gw: Gateway) -> BillingCapture:
    """The gateway's settlement-capture component."""
    assert gw.billing is not None
    return gw.billing


def quality(cap: BillingCapture, meter: str, t: float) -> str | None:
    """The current settlement quality of ``meter`` at boundary ``t`` (None: none yet)."""
    k = cap.current.get((meter, t))
    return None if k is None else k.quality


def qualities_at(cap: BillingCapture, boundary: float) -> dict[str, str]:
    """The current settlement quality of every meter captured at ``boundary``."""
    return {m: k.quality for (m, b), k in cap.current.items() if b == boundary}


def settled_at(cap: BillingCapture, boundary: float, meters: tuple[str, ...]) -> dict[str, str] | None:
    """:func:`qualities_at` once none of ``meters`` is still without a settlement (or
    ``missing``) at ``boundary``; None before (a predicate for ``await_until``)."""
    got = qualities_at(cap, boundary)
    return got if all(got.get(m) not in (None, "missing") for m in meters) else None


async def await_settled(cap: BillingCapture, boundary: float, meters: tuple[str, ...],
                        timeout: float = 30.0) -> dict[str, str]:
    """Wait (bounded) until every one of ``meters`` is settled at ``boundary``; the
    qualities then. On timeout the failure shows the qualities captured so far."""
    got = await await_until(lambda: settled_at(cap, boundary, meters), timeout,
                            f"{', '.join(meters)} settled at {boundary}",
                            detail=lambda: qualities_at(cap, boundary))
    assert got is not None
    return got


def settlement_bodies(store_path: Path, boundary: float) -> dict[str, Any]:
    """The current (not superseded) settlement document of every meter at ``boundary``,
    read from the gateway's SQLite store after it stopped."""
    conn = sqlite3.connect(store_path)
    try:
        return {m: loads_exact(body) for m, body in conn.execute(
            "SELECT meter, body FROM billing_settlement WHERE boundary=? AND superseded_by IS NULL",
            (boundary,))}
    finally:
        conn.close()


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
