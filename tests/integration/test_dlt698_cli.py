"""``amr-gateway scan --protocol dlt698`` as a user runs it: real processes, a simulated line.

``simulate`` serves a configuration's DL/T 698.45 meters (one alone on a pty linked at the
serial bus's path, two on a TCP port); ``scan`` finds them by the wildcard read and by an
address range and prints each meter's address, clock offset and first energy reading. The
energy is checked against the meter model the simulator runs (the same seed and load), so
a wrong scaler or register fails.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.simulation.model import MeterModel
from gateway.config import load_settings
from gateway.ports import free_port
from gateway.simulator.fleet import base_kw_for, meter_seed
from tests.servicefixtures import run_cli, simulating

pytestmark = pytest.mark.integration

TZ = "Asia/Shanghai"
SEED = 1                      # `simulate`'s default --seed


def write_config(tmp: Path, tcp_port: int) -> Path:
    cfg = tmp / "site.yaml"
    cfg.write_text(f"""\
gateway: {{id: dlt698-cli-test, timezone: {TZ}, data_dir: {tmp / 'data'}}}
buses:
  - {{id: line, type: serial, port: {tmp / 'tty698'}, protocol: dlt698, baudrate: 9600, parity: N,
     timeout_ms: 1000}}
  - {{id: lan, type: tcp, host: 127.0.0.1, port: {tcp_port}, protocol: dlt698, timeout_ms: 1000}}
meters:
  - {{id: alone, customer: C1, bus: line, address: "000039200933", profile: dlt698-3phase, ct_ratio: 200/5}}
  - {{id: first, customer: C2, bus: lan, address: "000000000002", profile: dlt698-3phase}}
  - {{id: second, customer: C2, bus: lan, address: "000000000004", profile: dlt698-3phase}}
schedules:
  interval: {{every: 15m, points: ["energy_*"]}}
""")
    return cfg


run = run_cli


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    port = free_port()
    cfg = write_config(tmp_path, port)
    with simulating(cfg):
        yield cfg, port


ROW = re.compile(r"^(\d{12})\s+([+-]\d+) s\s+(\d+\.\d{2}) kWh\s*$")


def rows(stdout: str) -> dict[str, tuple[int, Decimal]]:
    """address → (clock offset s, energy kWh) from scan's table."""
    out = {}
    for line in stdout.splitlines():
        m = ROW.match(line)
        if m:
            out[m[1]] = (int(m[2]), Decimal(m[3]))
    return out


def model_energy_bounds(cfg: Path, meter_id: str, t0: float, t1: float) -> tuple[Decimal, Decimal]:
    settings = load_settings(cfg)
    meter = settings.meters[meter_id]
    model = MeterModel(meter_seed(SEED, meter_id), base_kw=base_kw_for(meter, SEED), multiplier=meter.multiplier,
                       timezone=TZ)
    lo, hi = model.values_at(t0)["energy_import_kwh"], model.values_at(t1)["energy_import_kwh"]
    return lo.quantize(Decimal("0.01")) - Decimal("0.01"), hi.quantize(Decimal("0.01")) + Decimal("0.01")


def test_scan_reports_address_clock_offset_and_first_energy(site: tuple[Path, int], tmp_path: Path) -> None:
    cfg, port = site
    t0 = time.time()
    alone = run("scan", "--serial", str(tmp_path / "tty698"), "--baud", "9600", "--parity", "N",
                "--protocol", "dlt698", "--timezone", TZ, "--timeout", "1")
    t1 = time.time()
    assert alone.returncode == 0, alone.stderr
    assert "clock offset" in alone.stdout and "energy_import_kwh" in alone.stdout, alone.stdout
    found = rows(alone.stdout)
    assert list(found) == ["000039200933"], alone.stdout
    offset, kwh = found["000039200933"]
    assert -2 <= offset <= 2                           # the simulated clock runs at real time, no offset
    lo, hi = model_energy_bounds(cfg, "alone", t0, t1)
    assert lo <= kwh <= hi, (kwh, lo, hi)

    t0 = time.time()
    ranged = run("scan", "--tcp", f"127.0.0.1:{port}", "--protocol", "dlt698", "--timezone", TZ,
                 "--range", "000000000001-000000000005", "--timeout", "0.5")
    t1 = time.time()
    assert ranged.returncode == 0, ranged.stderr
    found = rows(ranged.stdout)
    assert list(found) == ["000000000002", "000000000004"], ranged.stdout
    for address, meter_id in (("000000000002", "first"), ("000000000004", "second")):
        offset, kwh = found[address]
        assert -2 <= offset <= 2
        lo, hi = model_energy_bounds(cfg, meter_id, t0, t1)
        assert lo <= kwh <= hi, (meter_id, kwh, lo, hi)
    assert found["000000000002"][1] != found["000000000004"][1]     # each meter's own register


def test_scan_with_a_bad_time_zone_is_one_sentence(site: tuple[Path, int]) -> None:
    _, port = site
    res = run("scan", "--tcp", f"127.0.0.1:{port}", "--protocol", "dlt698", "--timezone", "Mars/Olympus",
              "--range", "000000000002", "--timeout", "0.5")
    assert res.returncode == 2 and "time zone" in res.stderr and "Traceback" not in res.stderr
