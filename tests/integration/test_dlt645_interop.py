"""Interoperability: our driver against an independent DL/T 645 meter server.

The peer is the PyPI ``dlt645`` 3.2.0 package's ``MeterServerService`` over TCP on a free
loopback port (it runs its own threads). Known quirk (docs/protocols/dlt645-2007.md §11 #7): it compares the
request address with ``set_address`` in the wrong order, so meter 123456789012 is
configured as ``129078563412`` (the digits as they travel). Its DI table has no block DIs,
so this also exercises the fallback from blocks to single DIs against a foreign peer.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
from dlt645 import MeterServerService

from drivers.dlt645 import catalogue
from drivers.dlt645.discovery import find_single_meter
from drivers.dlt645.driver import Dlt645Driver
from drivers.dlt645.plan import compile_plan
from gateway.settings import BusSettings

pytestmark = pytest.mark.integration

ADDR = "123456789012"


@pytest.fixture(scope="module")
def peer() -> Iterator[int]:
    svc = MeterServerService.new_tcp_server("127.0.0.1", 0, timeout=1.0)
    svc.set_address("129078563412")
    assert svc.set_00(0x00010000, 12345.67)
    assert svc.set_00(0x00010100, 1111.11)
    assert svc.set_00(0x00010400, 8000.02)
    assert svc.set_00(0x00020000, 42.5)
    assert svc.set_02(0x02010100, 220.5)
    assert svc.set_02(0x02020100, -5.125)
    assert svc.set_02(0x02030000, 1.2345)
    assert svc.set_02(0x02800002, 50.01)
    assert svc.start()
    try:
        yield int(svc.server.port)
    finally:
        svc.stop()


def driver(port: int) -> Dlt645Driver:
    bus = BusSettings(id="interop", type="tcp", protocol="dlt645", host="127.0.0.1", tcp_port=port)
    return Dlt645Driver(bus, response_delay=0.2)


async def test_energy_read_with_block_fallback(peer: int) -> None:
    d = driver(peer)
    try:
        points = [p for p in catalogue.CANONICAL_2007 if p.name.startswith("energy_")]
        out = await d.read(ADDR, compile_plan(points), 1.0)
        assert out["energy_import_kwh"].raw == Decimal("12345.67")
        assert out["energy_import_kwh_t1"].raw == Decimal("1111.11")
        assert out["energy_import_kwh_t4"].raw == Decimal("8000.02")
        assert out["energy_export_kwh"].raw == Decimal("42.50")
        assert all(r.quality == "good" for r in out.values())
        assert 0x0001FF00 in d.unsupported_blocks(ADDR)
    finally:
        await d.close()


async def test_instantaneous_read(peer: int) -> None:
    d = driver(peer)
    try:
        names = {"voltage_v_l1", "current_a_l1", "power_kw", "frequency_hz"}
        points = [p for p in catalogue.CANONICAL_2007 if p.name in names]
        out = await d.read(ADDR, compile_plan(points), 1.0)
        assert out["voltage_v_l1"].raw == Decimal("220.5")
        assert out["current_a_l1"].raw == Decimal("-5.125")   # sign bit, encoded by the peer
        assert out["power_kw"].raw == Decimal("1.2345")
        assert out["frequency_hz"].raw == Decimal("50.01")
    finally:
        await d.close()


async def test_wildcard_read_address(peer: int) -> None:
    d = driver(peer)
    try:
        assert await find_single_meter(d, 1.0) == ADDR
    finally:
        await d.close()
