"""A bus that goes down and comes back is logged once each way, not once per failed poll.

The gateway polls a simulated Modbus TCP meter every simulated second; the simulator is
stopped (every poll then fails to connect) for many polls and started again on the same
port. The silent meter is probed every 2 simulated seconds (``dead_backoff_s``), not backed
off to the default minute, so the polls fail and recover within a few real seconds. The log
must hold exactly one "bus … is down" line and one "bus … is up again" line, whatever the
number of failed polls in between (and the first answer after start is not a change worth a
line: start has its own).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from drivers.modbus.simulator import ModbusSimulator, SimMeterSpec
from gateway.clock import ScaledClock
from gateway.config import SHIPPED_PROFILES_DIR, load_settings_from_text
from gateway.ports import free_port
from gateway.profiles import find_profile
from gateway.runtime import Gateway
from tests.servicefixtures import StillClock, await_until

pytestmark = pytest.mark.integration

TZ = "UTC"
CONFIG = """\
gateway: {{id: link-test, timezone: UTC, data_dir: {data}}}
buses: [{{id: lan, type: tcp, host: 127.0.0.1, port: {port}, protocol: modbus-tcp, timeout_ms: 300,
          retries: 0, dead_backoff_s: 2}}]
meters: [{{id: m1, customer: C1, bus: lan, address: 1, profile: simulator, schedules: [rt]}}]
schedules: {{rt: {{every: 1s, points: ["voltage_*"]}}}}
"""


async def test_bus_down_and_up_are_one_line_each(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    settings = load_settings_from_text(CONFIG.format(data=tmp_path / "data", port=port), "<test>",
                                       tmp_path, {})
    spec = SimMeterSpec(id="m1", protocol="modbus-tcp", unit=1, port=port,
                        profile=find_profile("simulator", [SHIPPED_PROFILES_DIR]))
    clock = ScaledClock(None, 10.0)           # a 1 s slot every 0.1 real seconds
    gw = Gateway(settings, clock, enable_api=False, enable_sinks=False)
    poller = None
    with caplog.at_level(logging.INFO, logger="amr.poll"):
        async with ModbusSimulator([spec], StillClock(1_780_000_000.0, TZ), TZ):
            await gw.start()
            try:
                poller = gw.workers["lan"]
                await await_until(lambda: poller.link_up is True, 20, "the first answer",
                                  detail=lambda: (gw.meters["m1"].stats, caplog.text[-2000:]))
                ok_before = gw.meters["m1"].stats.reads_ok
            except BaseException:
                await gw.stop()
                raise
        stopped = False
        try:
            # the simulator is gone: every poll fails to connect
            await await_until(lambda: gw.meters["m1"].stats.reads_failed >= 4, 30,
                              "four failed polls with the simulator stopped",
                              detail=lambda: gw.meters["m1"].stats)
            assert poller.link_up is False
            async with ModbusSimulator([spec], StillClock(1_780_000_000.0, TZ), TZ):
                await await_until(lambda: gw.meters["m1"].stats.reads_ok > ok_before, 60,
                                  "a good read after the simulator is back",
                                  detail=lambda: gw.meters["m1"].stats)
                # stopped while the meter still answers: a poll between the simulator's end and
                # the gateway's would log a third change, which is not the test's scenario
                await gw.stop()
                stopped = True
        finally:
            if not stopped:
                await gw.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "amr.poll" and "bus lan" in r.getMessage()]
    down = [m for m in lines if m.startswith("bus lan is down:")]
    up = [m for m in lines if m == "bus lan is up again: meters answer"]
    assert len(down) == 1, lines
    assert len(up) == 1, lines
    assert lines.index(down[0]) < lines.index(up[0])
