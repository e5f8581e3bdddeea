"""Modbus register numbers written in Modicon notation (4xxxx/3xxxx) and ``address_base``.

Without ``address_base``, a decimal 4xxxx address on function 3 (3xxxx on function 4) is
refused with the fix; ``address_base: modicon`` or ``1`` converts, ``address_base: 0`` takes
the number literally; a hex address is always literal.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.modbus.points import RegisterPoint
from gateway.errors import ConfigError
from gateway.profiles import load_profile


def _load(tmp_path: Path, text: str) -> dict[str, RegisterPoint]:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    points = load_profile(path).points
    assert all(isinstance(p, RegisterPoint) for p in points.values())
    return {k: p for k, p in points.items() if isinstance(p, RegisterPoint)}


def _issues(tmp_path: Path, text: str) -> list[tuple[int | None, str]]:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    return [(i.line, i.message) for i in info.value.issues]


def test_a_modicon_looking_address_without_address_base_is_refused_with_the_fix(tmp_path: Path) -> None:
    text = ("protocol: modbus\npoints:\n  power_kw: {address: 40001, type: f32}\n"
            "  frequency_hz: {address: 30011, function: 4}\n")
    assert _issues(tmp_path, text) == [
        (3, "point power_kw: address 40001 looks like Modicon notation (4xxxx = holding register "
            "xxxx-1): write 0 (or the map's hex address), or set address_base: modicon at the top "
            "of the profile; if the meter really has a register at 40001, set address_base: 0"),
        (4, "point frequency_hz: address 30011 looks like Modicon notation (3xxxx = input register "
            "xxxx-1): write 10 (or the map's hex address), or set address_base: modicon at the top "
            "of the profile; if the meter really has a register at 30011, set address_base: 0"),
    ]


def test_address_base_modicon_converts_by_function_code(tmp_path: Path) -> None:
    points = _load(tmp_path, "protocol: modbus\naddress_base: modicon\npoints:\n"
                             "  power_kw: {address: 40001, type: f32}\n"
                             "  frequency_hz: {address: 30011, function: 4}\n")
    assert (points["power_kw"].address, points["frequency_hz"].address) == (0, 10)


def test_address_base_modicon_refuses_a_number_of_the_other_kind(tmp_path: Path) -> None:
    text = "protocol: modbus\naddress_base: modicon\npoints:\n  power_kw: {address: 30001}\n"
    assert _issues(tmp_path, text) == [
        (4, "point power_kw: address must be a Modicon holding register number 40001-49999 "
            "(address_base: modicon, function 3), not 30001")]


def test_address_base_one_subtracts_one_and_zero_is_literal(tmp_path: Path) -> None:
    one = _load(tmp_path, "protocol: modbus\naddress_base: 1\npoints:\n  power_kw: {address: 1}\n")
    assert one["power_kw"].address == 0
    zero = _load(tmp_path, "protocol: modbus\naddress_base: 0\npoints:\n  power_kw: {address: 40001}\n")
    assert zero["power_kw"].address == 40001


def test_a_hex_address_is_literal_and_a_bad_base_is_named(tmp_path: Path) -> None:
    points = _load(tmp_path, "protocol: modbus\npoints:\n  power_kw: {address: 0x9C41}\n")
    assert points["power_kw"].address == 0x9C41
    assert _issues(tmp_path, "protocol: modbus\naddress_base: 2\npoints:\n  power_kw: {address: 1}\n") \
        == [(2, 'profile: address_base must be 0, 1 or modicon, not "2"')]
