"""Meter profiles: every shipped profile loads; broken profiles give exact, line-precise issues."""

from __future__ import annotations

import os
import re
from decimal import Decimal
from pathlib import Path

import pytest

import gateway.profiles
from drivers.dlt645.points import DiPoint
from drivers.dlt698.catalogue import OadPoint
from drivers.modbus.points import RegisterPoint
from drivers.simulation.model import ENERGY_POINTS, MODEL_POINTS
from gateway.config import SHIPPED_PROFILES_DIR, profile_search_dirs
from gateway.errors import ConfigError
from gateway.profiles import (
    CANONICAL_POINTS,
    available_profiles,
    find_profile,
    load_profile,
    shipped_profile_dirs,
)
from gateway.settings import Profile

SHIPPED = sorted(SHIPPED_PROFILES_DIR.glob("*.yaml"))


def _modbus(profile: Profile) -> dict[str, RegisterPoint]:
    points = {k: p for k, p in profile.points.items() if isinstance(p, RegisterPoint)}
    assert len(points) == len(profile.points)
    return points


def test_the_required_profiles_are_shipped() -> None:
    names = {p.stem for p in SHIPPED}
    assert {"simulator", "chint-dtsu666", "eastron-sdm630", "schneider-iem3000",
            "acrel-adl400"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_profile_loads(path: Path) -> None:
    profile = load_profile(path)
    assert profile.name == path.stem
    assert profile.points
    assert profile.source == str(path)
    kinds = {type(p) for p in profile.points.values()}
    assert kinds == {{"modbus": RegisterPoint, "dlt645": DiPoint, "dlt698": OadPoint}[profile.protocol]}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_profile_names_its_source_in_the_header(path: Path) -> None:
    header = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    assert any("source" in line.lower() for line in header), "header comment must state the source"


def test_simulator_profile_covers_the_model_exactly_in_one_request() -> None:
    profile = find_profile("simulator", [SHIPPED_PROFILES_DIR])
    points = _modbus(profile)
    assert set(MODEL_POINTS) <= set(points)
    for name in ENERGY_POINTS:
        p = points[name]
        assert (p.type, p.scale, p.side, p.function) == ("u32", Decimal("0.01"), "secondary", 3)
    for name in ("power_kw", "voltage_v_l1", "current_a_l3", "demand_max_kw", "power_kvar"):
        assert points[name].side == "secondary"
    first = min(p.address for p in points.values())
    last = max(p.address + p.width - 1 for p in points.values())
    assert first == 0 and last - first + 1 <= profile.limits.max_registers_per_request


def test_scales_are_exact_decimals() -> None:
    chint = _modbus(load_profile(SHIPPED_PROFILES_DIR / "chint-dtsu666.yaml"))
    assert chint["voltage_v_l1"].scale == Decimal("0.1")
    assert str(chint["power_kw"].scale) == "0.0001"
    iem = _modbus(load_profile(SHIPPED_PROFILES_DIR / "schneider-iem3000.yaml"))
    assert (iem["energy_import_kwh"].type, iem["energy_import_kwh"].scale) == ("i64", Decimal("0.001"))
    sdm = _modbus(load_profile(SHIPPED_PROFILES_DIR / "eastron-sdm630.yaml"))
    assert {p.function for p in sdm.values()} == {4}
    acrel = _modbus(load_profile(SHIPPED_PROFILES_DIR / "acrel-adl400.yaml"))
    assert acrel["energy_import_kwh"].side == "secondary" and acrel["energy_import_kwh"].address == 0x0A


def test_dlt645_profile_points_become_di_points(tmp_path: Path) -> None:
    path = tmp_path / "m645.yaml"
    path.write_text(
        "protocol: dlt645\n"
        "points:\n"
        '  energy_import_kwh_t2: {di: "00010200", format: XXXXXX.XX, unit: kWh, block: "0001FF00", '
        "index: 2}\n"
        '  power_kw: {di: "02030000", format: XX.XXXX, side: primary}\n'
    )
    profile = load_profile(path)
    assert profile.name == "m645" and profile.protocol == "dlt645"
    assert profile.points["energy_import_kwh_t2"] == DiPoint(
        name="energy_import_kwh_t2", di=0x00010200, fmt="XXXXXX.XX", unit="kWh", side="secondary",
        block=0x0001FF00, index=2)
    assert profile.points["power_kw"] == DiPoint(name="power_kw", di=0x02030000, fmt="XX.XXXX",
                                                 unit="kW", side="primary")


def test_modbus_defaults_apply_and_points_override(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "name: m\nprotocol: modbus\n"
        "limits: {max_registers_per_request: 60, gap_fill: 0, pause_between_requests_ms: 20, "
        "one_request_per_point: true}\n"
        "defaults: {function: 4, type: i32, word_order: little, side: secondary, scale: 0.01}\n"
        "points:\n"
        "  energy_import_kwh: {address: 0x10}\n"
        "  x_vendor_thing: {address: 20, type: u16, scale: 1, unit: imp, side: primary, "
        "byte_order: little}\n"
    )
    profile = load_profile(path)
    assert (profile.limits.max_registers_per_request, profile.limits.gap_fill,
            profile.limits.pause_between_requests_ms, profile.limits.one_request_per_point) \
        == (60, 0, 20.0, True)
    assert profile.points["energy_import_kwh"] == RegisterPoint(
        name="energy_import_kwh", function=4, address=16, type="i32", word_order="little",
        byte_order="big", scale=Decimal("0.01"), unit="kWh", side="secondary")
    extra = profile.points["x_vendor_thing"]
    assert isinstance(extra, RegisterPoint)
    assert (extra.address, extra.type, extra.unit, extra.byte_order) == (20, "u16", "imp", "little")


BROKEN: list[tuple[str, str, list[tuple[int, str]]]] = [
    ("wrong_name", "name: other\nprotocol: modbus\npoints:\n  power_kw: {address: 1, type: f32}\n",
     [(1, 'profile: name "other" differs from the file name "p"; make them the same, because meters '
          "name a profile by its file name")]),
    ("unknown_protocol", "protocol: iec62056\npoints: {}\n",
     [(1, "profile: protocol must be one of modbus, dlt645, dlt698, not \"iec62056\"")]),
    ("no_points", "protocol: modbus\n",
     [(1, 'profile: the required key "points" is missing; add it (a mapping of point name to '
          "register)")]),
    ("unknown_point_key", "protocol: modbus\npoints:\n  power_kw: {address: 1, type: f32, "
     "wordorder: little}\n",
     [(3, 'point power_kw: unknown key "wordorder" (did you mean "word_order"?); accepted keys are '
          "address, byte_order, capacity, function, scale, side, type, unit, word_order")]),
    ("bad_limits", "protocol: modbus\nlimits: {max_registers_per_request: 126}\npoints:\n"
     "  power_kw: {address: 1, type: f32}\n",
     [(2, "profile limits: max_registers_per_request must be between 1 and 125, not 126")]),
    ("register_past_end", "protocol: modbus\npoints:\n  energy_import_kwh: {address: 0xFFFF, "
     "type: u32}\n",
     [(3, "point energy_import_kwh: address 0xffff leaves no room for the 2 registers of a u32; fix "
          "the address or the type")]),
    ("unquoted_di", "protocol: dlt645\npoints:\n  energy_import_kwh: {di: 00010000, format: "
     "XXXXXX.XX}\n",
     [(3, 'point energy_import_kwh: di must be a quoted hex string such as "00010000", not '
          '"00010000" (unquoted, YAML may read it as a number)')]),
    ("short_quoted_di", "protocol: dlt645\npoints:\n  energy_import_kwh: {di: \"0001000\", format: "
     "XXXXXX.XX}\n",
     [(3, 'point energy_import_kwh: di must be 8 hex digits (DL/T 645-2007) or 4 (DL/T 645-1997) '
          'such as "00010000", not "0001000"')]),
    ("bad_format_and_index", "protocol: dlt645\npoints:\n  power_kw:\n    di: \"02030000\"\n"
     "    format: XX.XXXXX\n    index: 1\n",
     [(5, "point power_kw: format must be a DL/T 645 value format, one of XXXXXX.XX, XX.XXXX, XXX.X, "
          "XXX.XXX, X.XXX, XX.XX, XXX, NN, NNNN, NNNNNN, XXXXXX, NNNNNNNNNNNN, YYMMDDhhmmss, "
          "YYMMDDhhmm, YYMMDDWW, hhmmss, DDhh, MMDDhhmm (± in front makes a number signed), not "
          '"XX.XXXXX"'),
      (6, "point power_kw: index only applies to a block; add block or remove index")]),
    ("limits_on_dlt645", "protocol: dlt645\nlimits: {gap_fill: 1}\npoints:\n"
     "  power_kw: {di: \"02030000\", format: XX.XXXX}\n",
     [(2, 'profile: unknown key "limits"; accepted keys are defaults, description, name, points, '
          "protocol")]),
    ("not_a_mapping", "protocol: modbus\npoints:\n  power_kw: 0x10\n",
     [(3, 'point power_kw must be a mapping of keys to values, not "0x10"')]),
]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in BROKEN],
                         ids=[n for n, _, _ in BROKEN])
def test_broken_profile_reports_exact_messages(tmp_path: Path, text: str,
                                               expected: list[tuple[int, str]]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert [(i.file, i.line, i.message) for i in info.value.issues] == \
        [(str(path), line, message) for line, message in expected]


def test_overlap_with_a_wide_point_is_found_past_its_neighbour(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("protocol: modbus\npoints:\n"
                    "  energy_import_kwh: {address: 0, type: u64}\n"
                    "  power_kw: {address: 1, type: u16}\n"
                    "  power_kvar: {address: 3, type: u16}\n"
                    "  frequency_hz: {address: 3, type: u16, function: 4}\n")
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert [(i.line, i.message) for i in info.value.issues] == [
        (4, "profile: point power_kw (registers 0x0001-0x0001) overlaps point energy_import_kwh "
            "(0x0000-0x0003); fix one of the addresses or types"),
        (5, "profile: point power_kvar (registers 0x0003-0x0003) overlaps point energy_import_kwh "
            "(0x0000-0x0003); fix one of the addresses or types"),
    ]


def test_find_profile_lists_what_exists_when_missing(tmp_path: Path) -> None:
    (tmp_path / "alpha.yaml").write_text("protocol: modbus\npoints:\n  power_kw: {address: 1}\n")
    with pytest.raises(ConfigError) as info:
        find_profile("beta", [tmp_path])
    [issue] = info.value.issues
    assert issue.message == f'profile "beta" was not found in {tmp_path}; use one of alpha'
    assert find_profile("alpha", [tmp_path]).points["power_kw"] == RegisterPoint(
        name="power_kw", function=3, address=1, type="u16", unit="kW")


def test_path_like_profile_names_are_never_looked_up(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.yaml").write_text("protocol: modbus\npoints:\n  power_kw: {address: 1}\n")
    with pytest.raises(ConfigError):
        find_profile("sub/x", [tmp_path])


def test_canonical_points_match_the_spec_list() -> None:
    assert len(CANONICAL_POINTS) == 32
    assert CANONICAL_POINTS[0] == "energy_import_kwh" and CANONICAL_POINTS[-5] == "meter_clock"
    assert CANONICAL_POINTS[-4:] == tuple(f"energy_q{q}_kvarh" for q in range(1, 5))


def test_config_profiles_link_to_the_protocol_packages_own_profiles() -> None:
    """config/profiles/ (the place the README names) holds links to drivers/<protocol>/profiles/*.yaml."""
    repo = SHIPPED_PROFILES_DIR.parent.parent
    packaged = sorted((repo / "drivers").glob("*/profiles/*.yaml"))
    assert {p.name for p in packaged} == {p.name for p in SHIPPED}
    for path in SHIPPED:
        assert path.is_symlink(), f"{path} must be a relative link into drivers/<protocol>/profiles/"
        assert not Path(os.readlink(path)).is_absolute()
        assert path.resolve().parent.parent.parent == repo / "drivers"


def test_an_installed_wheel_without_config_finds_profiles_in_the_packages(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A wheel has no config/: the profile search falls back to drivers/<protocol>/profiles/."""
    monkeypatch.setattr(gateway.profiles, "REPO_PROFILES_DIR", tmp_path / "absent")
    dirs = shipped_profile_dirs()
    assert [d.relative_to(d.parent.parent.parent) for d in dirs] == [
        Path("drivers/dlt645/profiles"), Path("drivers/dlt698/profiles"), Path("drivers/modbus/profiles")]
    assert available_profiles(dirs) == sorted(p.stem for p in SHIPPED)
    assert find_profile("dlt645-2007", profile_search_dirs(tmp_path)).protocol == "dlt645"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_profile_headers_cite_only_files_in_this_repository(path: Path) -> None:
    """A file of this project named in a header exists (others are cited by their project)."""
    repo = SHIPPED_PROFILES_DIR.parent.parent
    header = "\n".join(line for line in path.read_text(encoding="utf-8").splitlines()
                       if line.startswith("#"))
    cited = re.findall(r"(?:\.\./|\b(?:drivers|gateway|tests|config|bench|docs|reference)/)[\w./-]*\w", header)
    missing = [c for c in cited if not (repo / c).exists()]
    assert not missing, f"{path.name} cites files not in the repository: {missing}"
