"""``make deb ARCH=arm64``: the package for the ARM boxes carries only pure-Python wheels
and CPython 3.11 aarch64 wheels, the same distributions as this machine's package, and
pip can install amr-gateway from them alone for an aarch64 Debian 12 (resolved here with
``--dry-run``, in a second; ``test_systemd_unit.py``'s ``[arm64]`` case installs and runs
the package in an emulated arm64 Debian 12)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.packaging.conftest import Built, built_for

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(300)]

AARCH64_TAGS = [f"{tag}_aarch64" for tag in ("manylinux2014", "manylinux_2_17", "manylinux_2_28", "manylinux_2_36")]


def distribution(wheel: str) -> str:
    """A wheel file's distribution name, normalised."""
    return wheel.split("-", maxsplit=1)[0].lower().replace("_", "-")


def test_arm64_package_holds_aarch64_wheels_that_install_offline(built: Built, tmp_path: Path,
                                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    deb = built_for(tmp_path_factory, "arm64").deb     # scripts/build-deb.sh arm64, once per run
    assert deb.name == f"amr-gateway_{built.version}_arm64.deb", deb
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Architecture", "Version"], capture_output=True,
                            text=True, check=True).stdout
    assert fields.split() == ["Architecture:", "arm64", "Version:", built.version], fields

    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, timeout=120)
    wheels = root / "usr" / "lib" / "amr-gateway" / "wheels"
    names = sorted(p.name for p in wheels.glob("*.whl"))
    binary = [n for n in names if not n.endswith("-none-any.whl")]
    assert binary, names                  # aiohttp, PyYAML, ... are compiled
    assert all("-cp311-cp311-" in n and "aarch64" in n and "x86_64" not in n for n in binary), binary
    assert {distribution(n) for n in names} == {distribution(p.name) for p in built.wheels.glob("*.whl")}

    platforms = [arg for tag in AARCH64_TAGS for arg in ("--platform", tag)]
    dry = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed", "--no-index",
         "--disable-pip-version-check", "--find-links", str(wheels), "--only-binary=:all:", *platforms,
         "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--target", str(tmp_path / "t"),
         f"amr-gateway=={built.version}"], capture_output=True, text=True, timeout=180, check=False)
    assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-2000:]
    assert f"amr-gateway-{built.version}" in dry.stdout and "aiohttp-" in dry.stdout, dry.stdout[-2000:]
