"""Builds what users install, once per test session: the Debian package (``make deb``'s
script) and, inside it, the project's wheel with every dependency's wheel.

Built outside the checkout (a session temp dir), so nothing here is satisfied by the
working tree. Building downloads the dependencies' wheels from the package index (as
``make deb`` does); installing them afterwards never needs the network.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Built:
    """The package and the wheels it carries."""

    deb: Path
    wheels: Path          # the project's wheel and its dependencies' wheels
    version: str


@pytest.fixture(name="built", scope="session")
def _built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """``scripts/build-deb.sh`` for this machine's architecture, into a temp dir."""
    out = tmp_path_factory.mktemp("deb")
    env = dict(os.environ, PYTHON=sys.executable, BUILD_DIR=str(out / "build"), DIST_DIR=str(out / "dist"))
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build-deb.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, f"build-deb.sh failed:\n{proc.stderr[-3000:]}"
    deb = Path(proc.stdout.strip().splitlines()[-1])
    deb = deb if deb.is_absolute() else REPO / deb
    assert deb.is_file() and deb.parent == out / "dist", deb
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
    wheels = out / "build" / arch / "root" / "usr" / "lib" / "amr-gateway" / "wheels"
    version = deb.name.split("_")[1]
    assert list(wheels.glob(f"amr_gateway-{version}-*.whl")), sorted(p.name for p in wheels.iterdir())
    return Built(deb=deb, wheels=wheels, version=version)
