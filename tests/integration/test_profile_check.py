"""``amr-gateway profile check FILE`` as a user runs it: a real process, exit 0 or 2.

A valid profile prints its verdict and the register plan after merging (function code,
first register, count, points); a broken one prints every issue at its file and line and
exits 2. Every shipped profile passes the check.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import SHIPPED_PROFILES_DIR
from gateway.profilecheck import describe_check, plan_profile
from gateway.profiles import load_profile

CLI = [sys.executable, "-m", "gateway.cli"]


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "profile", "check", str(path)], capture_output=True, text=True,
                          timeout=60, check=False)


def test_a_valid_profile_prints_its_merged_register_plan(tmp_path: Path) -> None:
    path = tmp_path / "my-meter.yaml"
    path.write_text("protocol: modbus\nlimits: {gap_fill: 2}\ndefaults: {type: f32}\npoints:\n"
                    "  voltage_v_l1: {address: 0x0000}\n"
                    "  voltage_v_l2: {address: 0x0002}\n"
                    "  current_a_l1: {address: 0x0006}\n"
                    "  frequency_hz: {address: 0x0100, function: 4}\n")
    res = _check(path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f'{path}: valid modbus profile "my-meter" with 4 points'
    assert lines[1] == "plan (modbus-rtu): 2 requests, 10 registers per read"
    assert lines[2].split() == ["#", "function", "start", "count", "points"]
    # the gap of 2 registers between l2 and the current is read through (gap_fill: 2)
    assert lines[3].split() == ["1", "3", "0", "(0x0000)", "8",
                                "voltage_v_l1@0,", "voltage_v_l2@2,", "current_a_l1@6"]
    assert lines[4].split() == ["2", "4", "256", "(0x0100)", "2", "frequency_hz@256"]


def test_a_broken_profile_exits_2_with_each_issue_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("protocol: modbus\npoints:\n  power_kw: {address: 40001, type: f32}\n"
                    "  voltage_v_l1: {address: 10, typ: f32}\n")
    res = _check(path)
    assert res.returncode == 2
    assert res.stdout == ""
    errors = res.stderr.splitlines()
    assert len(errors) == 2, res.stderr
    assert errors[0].startswith(f"error: {path}:3: point power_kw: address 40001 looks like Modicon")
    assert errors[1].startswith(f"error: {path}:4: point voltage_v_l1: unknown key \"typ\"")
    missing = _check(tmp_path / "absent.yaml")
    assert missing.returncode == 2 and "cannot read the profile" in missing.stderr


def test_a_dlt645_profile_plans_one_request_per_data_identifier(tmp_path: Path) -> None:
    path = tmp_path / "m645.yaml"
    path.write_text('protocol: dlt645\npoints:\n  energy_import_kwh: {di: "00010000", format: XXXXXX.XX}\n'
                    '  power_kw: {di: "02030000", format: XX.XXXX}\n')
    res = _check(path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[1:] == [
        "plan (dlt645): 2 requests (data identifiers)",
        "#  DI        points",
        "1  00010000  energy_import_kwh",
        "2  02030000  power_kw",
    ]


@pytest.mark.parametrize("path", sorted(SHIPPED_PROFILES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_profile_passes_the_check(path: Path) -> None:
    profile = load_profile(path)
    protocol, plan = plan_profile(profile)
    lines = describe_check(profile, protocol, plan)
    assert lines[0].startswith(f"{path}: valid {profile.protocol} profile")
    assert plan.request_count >= 1 and len(lines) == 3 + plan.request_count
