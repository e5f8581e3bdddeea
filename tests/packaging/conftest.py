"""Builds what users install, once per test session: the Debian package (``make deb``'s
script) and, inside it, the project's wheel with every dependency's wheel; and, for the
upgrade test, the package of a later release built from a copy of the checkout.

Built outside the checkout (a session temp dir), so nothing here is satisfied by the
working tree. Building downloads the dependencies' wheels from the package index (as
``make deb`` does); installing them afterwards never needs the network.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Built:
    """The package and the wheels it carries."""

    deb: Path
    wheels: Path          # the project's wheel and its dependencies' wheels
    version: str


def host_arch() -> str:
    """This machine's Debian architecture (the package ``make deb`` builds by default); from its
    machine type where there is no dpkg, so that collecting the tests never needs one."""
    try:
        return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        machine = platform.machine()
        return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def build_deb(out: Path, *args: str, tree: Path = REPO, **env: str) -> Path:
    """``scripts/build-deb.sh *args`` of ``tree`` into ``out``/dist (building in ``out``/build),
    with ``env`` added to the environment; the package's path."""
    full = dict(os.environ, PYTHON=sys.executable, BUILD_DIR=str(out / "build"), DIST_DIR=str(out / "dist"), **env)
    proc = subprocess.run(["bash", str(tree / "scripts" / "build-deb.sh"), *args], cwd=tree, env=full,
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, f"build-deb.sh failed:\n{proc.stderr[-3000:]}"
    deb = Path(proc.stdout.strip().splitlines()[-1])
    deb = deb if deb.is_absolute() else tree / deb
    assert deb.is_file() and deb.parent == out / "dist", deb
    return deb


def build_package(out: Path, arch: str) -> Built:
    """The package for ``arch`` (amd64 or arm64: the wheels for that machine), built in ``out``."""
    deb = build_deb(out, arch)
    wheels = out / "build" / arch / "root" / "usr" / "lib" / "amr-gateway" / "wheels"
    version = deb.name.split("_")[1]
    assert deb.name == f"amr-gateway_{version}_{arch}.deb", deb
    assert list(wheels.glob(f"amr_gateway-{version}-*.whl")), sorted(p.name for p in wheels.iterdir())
    return Built(deb=deb, wheels=wheels, version=version)


T = TypeVar("T")


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], T]) -> T:
    """``build(directory)`` once per test run, however many pytest-xdist workers ask for it.

    The first worker to ask builds into ``name`` under the run's shared temporary directory
    while holding a lock there; the others wait for it and unpickle what it returned (the
    paths it built). A failed build records no result, so each later asker clears what it
    left and tries, and fails, for itself. Without workers this is ``build`` into a session
    temp dir.
    """
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out, done = shared / name, shared / f"{name}.pickle"
    with (shared / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            made: T = pickle.loads(done.read_bytes())
            return made
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        made = build(out)
        done.write_bytes(pickle.dumps(made))
        return made


def built_for(tmp_path_factory: pytest.TempPathFactory, arch: str) -> Built:
    """The package for ``arch``, built once per test run (:func:`once_per_run`)."""
    return once_per_run(tmp_path_factory, f"deb-{arch}", lambda out: build_package(out, arch))


def next_release_for(tmp_path_factory: pytest.TempPathFactory, built: Built) -> NextRelease:
    """The next release of ``built`` (its architecture), built once per test run."""
    arch = built.deb.stem.rsplit("_", 1)[1]
    return once_per_run(tmp_path_factory, f"next-release-{arch}", lambda out: build_next_release(built, out))


@pytest.fixture(name="built", scope="session")
def _built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """``scripts/build-deb.sh`` for this machine's architecture, into a temp dir."""
    return built_for(tmp_path_factory, host_arch())


@dataclass(frozen=True)
class NextRelease:
    """The package of a later release: a higher version whose example configuration changed."""

    deb: Path
    version: str
    example: str          # its /etc/amr-gateway/config.yaml as shipped


def next_version(version: str) -> str:
    """The version after ``version`` (its last release number plus one: 0.1.0 -> 0.1.1)."""
    release = re.match(r"\d+(?:\.\d+)*", version)
    assert release, version
    *head, last = release.group().split(".")
    return ".".join([*head, str(int(last) + 1)])


def build_next_release(built: Built, out: Path) -> NextRelease:
    """``scripts/build-deb.sh`` run in a copy of this checkout as the next release would be:
    ``AMR_DEB_VERSION`` one higher, and a line added to the example configuration (so the
    conffile changed between the two packages, the case in which dpkg would ask the operator).
    The dependencies' wheels come from ``built`` (``AMR_DEB_WHEELS_FROM``), as does the
    architecture: no index, seconds."""
    tree = out / "tree"
    shutil.copytree(REPO, tree, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "node_modules"))
    version = next_version(built.version)
    example_path = tree / "config" / "gateway.example.yaml"
    example = example_path.read_text() + f"# (amr-gateway {version}: the example configuration gained this line)\n"
    example_path.write_text(example)
    arch = built.deb.stem.rsplit("_", 1)[1]
    deb = build_deb(out, arch, tree=tree, AMR_DEB_VERSION=version, AMR_DEB_WHEELS_FROM=str(built.deb))
    assert deb.name == f"amr-gateway_{version}_{arch}.deb", deb
    return NextRelease(deb=deb, version=version, example=example)


@pytest.fixture(name="next_release", scope="session")
def _next_release(built: Built, tmp_path_factory: pytest.TempPathFactory) -> NextRelease:
    """The next release of this machine's package (:func:`build_next_release`)."""
    return next_release_for(tmp_path_factory, built)
