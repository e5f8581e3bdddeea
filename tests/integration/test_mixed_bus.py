"""A mixed RS-485 bus (issue 20): a DL/T 645 and a DL/T 698.45 meter on one pair, one gateway.

The gateway opens one serial line (a pty) for a ``dlt645`` bus whose second meter says
``protocol: dlt698``; the bus keeps one byte pipe and reads each meter in its own framing
(:func:`drivers.registry.create_bus_drivers`). Each protocol's simulator serves its meter on
a pty of its own, and :class:`drivers.simulation.rs485_hub.Rs485Hub` joins them the way the
pair does (what the master sends reaches every meter, what a meter sends reaches the master),
as ``amr-gateway simulate`` does for a mixed bus. The gateway, the drivers, the pipe and both
meters are the real ones. Values are checked against each meter's model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.dlt645.simulator import Dlt645Simulator, SimDlt645Spec
from drivers.dlt698.simulator import Dlt698Simulator, SimDlt698Spec
from drivers.simulation.rs485_hub import Rs485Hub
from gateway.clock import ScaledClock
from gateway.config import load_settings_from_text
from gateway.model import Reading
from gateway.polling import MeterRuntime
from gateway.runtime import Gateway
from tests.servicefixtures import await_until, run_cli, simulating

pytestmark = pytest.mark.integration

TZ = "Asia/Shanghai"
START = 1_795_939_200.0 + 8 * 3600 + 50   # 2026-11-28 16:00:50 +08:00, just before a slot
RATE = 30.0                              # a 1-minute slot every 2 s


def config(tmp: Path, line: str) -> str:
    return f"""\
gateway: {{id: mixed-bus, timezone: {TZ}, data_dir: {tmp}}}
buses:
  - {{id: rs485-mixed, type: serial, port: {line}, protocol: dlt645, baudrate: 9600, parity: N, timeout_ms: 500}}
meters:
  - {{id: m645, customer: C1, bus: rs485-mixed, address: "123456789012", profile: dlt645-2007, schedules: [all]}}
  - {{id: m698, customer: C2, bus: rs485-mixed, address: "000039200933", protocol: dlt698,
     profile: dlt698-3phase, schedules: [all]}}
schedules:
  all: {{every: 1m, points: ["energy_import_kwh", "voltage_v_l1", "power_kw"]}}
api: {{enabled: false}}
"""


@pytest.fixture
async def line(tmp_path: Path) -> AsyncIterator[tuple[ScaledClock, Dlt645Simulator, Dlt698Simulator, str]]:
    clock = ScaledClock(START, RATE)
    sim645 = Dlt645Simulator([SimDlt645Spec("m645", "123456789012", transport="pty", seed=21)], clock=clock,
                             timezone=TZ)
    sim698 = Dlt698Simulator([SimDlt698Spec("m698", "000039200933", transport="pty", seed=22)], clock=clock,
                             timezone=TZ)
    await sim645.start()
    await sim698.start()
    hub = Rs485Hub([str(sim645.serves_at("m645")), str(sim698.serves_at("m698"))])
    try:
        yield clock, sim645, sim698, hub.start()
    finally:
        hub.stop()
        await sim698.stop()
        await sim645.stop()


async def test_a_dlt645_and_a_dlt698_meter_on_one_pair_both_read_good_in_one_gateway(
    tmp_path: Path, line: tuple[ScaledClock, Dlt645Simulator, Dlt698Simulator, str]
) -> None:
    clock, sim645, sim698, path = line
    settings = load_settings_from_text(config(tmp_path, path), "<test>", tmp_path, {})
    assert settings.meters["m698"].protocol == "dlt698"
    got: dict[str, list[Reading]] = {"m645": [], "m698": []}

    def observe(_meter: MeterRuntime, reading: Reading) -> None:
        got[reading.meter].append(reading)

    gw = Gateway(settings, clock, enable_api=False, enable_sinks=False)
    gw.observers.append(observe)
    await gw.start()
    try:
        await await_until(lambda: all(len(r) >= 2 for r in got.values()), 60, "two readings of each meter")
    finally:
        await gw.stop()
    worker = gw.workers["rs485-mixed"]
    assert type(worker.driver_for(gw.meters["m645"])).__name__ == "Dlt645Driver"
    assert type(worker.driver_for(gw.meters["m698"])).__name__ == "Dlt698Driver"
    for meter_id, sim in (("m645", sim645), ("m698", sim698)):
        model = sim.model(meter_id)
        for reading in got[meter_id]:
            assert reading.quality == "good", (meter_id, reading.error)
            assert {n: p.quality for n, p in reading.points.items()} == dict.fromkeys(
                ("energy_import_kwh", "voltage_v_l1", "power_kw"), "good"), meter_id
            raw = reading.points["energy_import_kwh"].raw
            assert isinstance(raw, Decimal)
            lo = model.values_at(reading.slot)["energy_import_kwh"] - Decimal("0.01")
            hi = model.values_at(reading.ts + 0.5)["energy_import_kwh"] + Decimal("0.01")
            assert lo <= raw <= hi, (meter_id, raw, lo, hi)
            volts = reading.points["voltage_v_l1"].raw
            assert isinstance(volts, Decimal) and 150 < volts < 300, (meter_id, volts)
    # each meter answered in its own framing, on the one line
    assert sim698.requests("m698") and all(a[:2] == b"\x05\x02" for a in sim698.requests("m698"))
    assert sim645.requests("m645")


def test_simulate_serves_a_mixed_bus_and_read_reads_each_meter_in_its_protocol(tmp_path: Path) -> None:
    """``amr-gateway simulate`` joins both protocols' meters on the bus's one pty (its hub),
    and ``amr-gateway read`` reads each through the line's pipe in its own protocol."""
    cfg = tmp_path / "site.yaml"
    cfg.write_text(config(tmp_path, str(tmp_path / "ttyMIXED")).replace("api: {enabled: false}\n", ""))
    with simulating(cfg, duration_s=60):
        for meter_id, point in (("m645", "energy_import_kwh_t4"), ("m698", "energy_q4_kvarh")):
            res = run_cli("read", "-c", str(cfg), "--meter", meter_id)
            assert res.returncode == 0, (meter_id, res.stdout, res.stderr)
            rows = {ln.split()[0]: ln for ln in res.stdout.splitlines() if ln.strip()}
            assert rows[point].rstrip().endswith("good"), (meter_id, rows[point])
            assert rows["voltage_v_l1"].rstrip().endswith("good"), (meter_id, res.stdout)
