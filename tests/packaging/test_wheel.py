"""The wheel as a user installs it: a fresh venv in a temp dir, outside the checkout, from
the wheels the Debian package carries (``--no-index``): ``validate`` accepts every shipped
example configuration (profiles found inside the installed package, not in the checkout),
and ``demo`` runs, prints good readings and serves the web console's packaged files.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.packaging.conftest import REPO, Built, once_per_run
from tests.servicefixtures import free_port, stop_process, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(300)]

EXAMPLES = sorted((REPO / "config").glob("*.yaml"))


def clean_env() -> dict[str, str]:
    """The environment without anything pointing into the checkout or at a venv."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PIP_")}


@pytest.fixture(name="venv", scope="session")
def _venv(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel and its dependencies installed offline (once per run)."""
    return once_per_run(tmp_path_factory, "wheel-venv", lambda root: make_venv(built, root))


def make_venv(built: Built, root: Path) -> Path:
    """A venv in ``root`` with ``built``'s wheel installed from its wheels alone."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=clean_env())
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--isolated", "--quiet", "--no-index",
         "--disable-pip-version-check", "--find-links", str(built.wheels), f"amr-gateway=={built.version}"],
        cwd=root, env=clean_env(), capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    return venv


def test_installed_package_is_not_the_checkout_and_ships_every_profile(venv: Path) -> None:
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import gateway; print(gateway.__file__)"],
                         cwd=venv.parent, env=clean_env(), capture_output=True, text=True, check=True).stdout
    site = Path(out.strip()).parent.parent
    assert site.is_relative_to(venv), out
    installed = sorted(p.name for p in site.glob("*/**/profiles/*.yaml"))
    shipped = sorted(p.name for p in (REPO / "config" / "profiles").glob("*.yaml"))
    assert shipped and installed == shipped, installed


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_validate_accepts_every_shipped_example(venv: Path, example: Path, tmp_path: Path) -> None:
    config = tmp_path / example.name        # alone in a temp dir: no profiles/ beside it
    shutil.copyfile(example, config)
    proc = subprocess.run([str(venv / "bin" / "amr-gateway"), "validate", "-c", str(config)],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK:"), proc.stdout


def test_demo_prints_good_readings_and_serves_the_console(venv: Path, tmp_path: Path) -> None:
    env = dict(clean_env(), AMR_API_TOKEN="wheel-test")
    api = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [str(venv / "bin" / "amr-gateway"), "demo", "--listen", api,
         "--data-dir", str(tmp_path / "demo"), "--mqtt", f"127.0.0.1:{free_port()}", "--duration", "90"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    try:
        # the first realtime slot is at most 10 s away; a loaded machine gets generous time
        wait_until(lambda: any(" good  power_kw=" in line for line in lines) or proc.poll() is not None,
                   60, "a good reading on the demo's console")
        assert proc.poll() is None, "".join(lines)
        # the console as the installed package serves it: the page and every packaged file,
        # byte for byte what the checkout has (a file left out of the wheel is a 404)
        static = REPO / "gateway" / "web" / "static"
        with urllib.request.urlopen(f"http://{api}/", timeout=10) as resp:
            assert resp.read() == (static / "index.html").read_bytes()
        for f in sorted(static.iterdir()):
            with urllib.request.urlopen(f"http://{api}/console/static/{f.name}", timeout=10) as resp:
                assert resp.read() == f.read_bytes(), f.name
    finally:
        stop_process(proc, signal.SIGINT, 30)
        reader.join(10)
        proc.stdout.close()
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    assert any(" good  power_kw=" in line for line in out.splitlines()), out
