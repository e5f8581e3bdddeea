"""The Debian package as an operator installs it, on this machine (needs root and dpkg;
without them the test fails, never skips: CI's machine has both).

Install with apt from the built file, check what postinst set up, ``systemd-analyze
verify`` the installed unit, run the unit's ``ExecStart`` as user ``amr`` against a
simulated meter on loopback until a reading is good, stop it with SIGTERM, upgrade to
the next release's package (a higher version, its example configuration changed: the
edited configuration, the store and its readings, the user are kept, the venv runs the
new version, without a question from dpkg), downgrade back the same way, remove (keeps
configuration and data), purge (nothing left). A lock serialises runs of this test on a
shared machine.
"""

from __future__ import annotations

import fcntl
import grp
import json
import os
import pwd
import shlex
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging.conftest import REPO, Built, NextRelease
from tests.servicefixtures import free_port, stop_process, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(300)]

UNIT = Path("/lib/systemd/system/amr-gateway.service")
CONFIG = Path("/etc/amr-gateway/config.yaml")
STATE = Path("/var/lib/amr-gateway")
VENV = Path("/opt/amr-gateway")
LAUNCHER = Path("/usr/bin/amr-gateway")
LEFT_BY_PURGE = (UNIT, CONFIG, CONFIG.parent, STATE, VENV, LAUNCHER, Path("/usr/lib/amr-gateway"),
                 Path("/usr/share/doc/amr-gateway"),
                 Path("/etc/systemd/system/multi-user.target.wants/amr-gateway.service"))
LOCK = Path("/tmp/amr-gateway-deb-test.lock")
APT_ENV = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
APT_GET = ("apt-get", "-o", "DPkg::Lock::Timeout=120", "-y", "-q")   # waits for another apt or dpkg run
# What docs/install.md tells an operator who upgrades unattended: keep an edited conffile
# without asking (confold), take the package's one where it was not edited (confdef).
KEEP_CONFIG = ("-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold")

LOOPBACK_CONFIG = """\
# Written by tests/packaging/test_deb.py: one simulated meter on loopback, no delivery.
gateway: {{id: deb-test, timezone: UTC}}
buses:
  - {{id: tcp-1, type: tcp, host: 127.0.0.1, port: {meter_port}, protocol: modbus-tcp, timeout_ms: 1000}}
meters:
  - {{id: m1, customer: C1, bus: tcp-1, address: 1, profile: simulator, schedules: [realtime]}}
schedules:
  realtime: {{every: 2s, points: ["power_*"]}}
api: {{listen: "127.0.0.1:{api_port}", token_env: AMR_API_TOKEN}}
"""


def run(*cmd: str, timeout: float = 180, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output, never raise on its exit code."""
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env, check=False)


def installed() -> bool:
    """Whether dpkg knows amr-gateway as installed (or half-installed / config-files)."""
    return run("dpkg-query", "-W", "-f=${Status}", "amr-gateway").stdout.strip() not in ("", "unknown ok not-installed")


def as_amr(*cmd: str) -> list[str]:
    """``cmd`` as the unit runs it: user and group amr, with amr's supplementary groups."""
    return ["setpriv", "--reuid=amr", "--regid=amr", "--init-groups", "--", *cmd]


def unit_commands(unit_text: str) -> dict[str, list[str]]:
    """``ExecStartPre``/``ExecStart`` of a unit file, split like systemd splits them."""
    found: dict[str, list[str]] = {}
    for line in unit_text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("ExecStartPre", "ExecStart"):
            found[key] = shlex.split(value)
    return found


@pytest.fixture(name="machine")
def _machine() -> Iterator[None]:
    """Root, dpkg and apt present; one run at a time; the package purged before and after."""
    assert os.geteuid() == 0, "the Debian package test installs a package: run the suite as root (CI does)"
    for tool in ("dpkg", "dpkg-deb", "apt-get", "systemd-analyze", "setpriv"):
        assert run("sh", "-c", f"command -v {tool}").returncode == 0, f"{tool} is missing"
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if installed():
                run("dpkg", "--purge", "amr-gateway")
            yield
        finally:
            if installed():
                run("dpkg", "--purge", "amr-gateway")


def api_meters(port: int) -> list[dict[str, object]]:
    """The running gateway's /api/v1/meters ([] while it does not answer yet)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/meters",
                                 headers={"Authorization": "Bearer deb-test"})
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            meters: list[dict[str, object]] = json.loads(resp.read())["meters"]
            return meters
    except OSError:
        return []


def readings_csv(config: Path = CONFIG) -> str:
    """Every reading in the installed gateway's store, as the installed command exports them."""
    proc = run(*as_amr(LAUNCHER.as_posix(), "export", "readings", "-c", str(config), "--format", "csv"),
               env={"PATH": "/usr/bin:/bin", "AMR_API_TOKEN": "deb-test"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_install_run_upgrade_downgrade_remove_purge(built: Built, next_release: NextRelease, machine: None,
                                                    tmp_path: Path) -> None:
    deb = str(built.deb)
    proc = run(*APT_GET, "install", deb, env=APT_ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # what postinst set up
    amr = pwd.getpwnam("amr")
    assert "amr" in grp.getgrnam("dialout").gr_mem
    assert CONFIG.read_text() == (REPO / "config" / "gateway.example.yaml").read_text()
    assert CONFIG.stat().st_gid == amr.pw_gid and CONFIG.stat().st_mode & 0o007 == 0
    assert "/etc/amr-gateway/config.yaml" in run("dpkg-query", "-W", "-f=${Conffiles}", "amr-gateway").stdout
    assert STATE.stat().st_uid == amr.pw_uid
    assert LAUNCHER.resolve() == VENV / "bin" / "amr-gateway"
    base = run(str(VENV / "bin" / "python"), "-c", "import sys; print(sys.base_prefix, sys.version_info[:2])").stdout
    assert base.split()[0] == "/usr", base          # Debian's python3, not this machine's pyenv
    assert not list((VENV / "bin").glob("pip*")), "the venv is built with the bundled pip, not ensurepip's"
    assert "python3-venv" not in run("dpkg-query", "-W", "-f=${Depends}", "amr-gateway").stdout
    assert UNIT.read_text() == (REPO / "systemd" / "amr-gateway.service").read_text()

    verify = run("systemd-analyze", "verify", str(UNIT))
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr

    commands = unit_commands(UNIT.read_text())
    check = run(*as_amr(*commands["ExecStartPre"]))      # the shipped example validates as amr
    assert check.returncode == 0, check.stdout + check.stderr

    # run ExecStart as amr against a simulated meter on loopback
    api_port = free_port()
    CONFIG.write_text(LOOPBACK_CONFIG.format(meter_port=free_port(), api_port=api_port))
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "AMR_API_TOKEN": "deb-test"}
    sim = subprocess.Popen(as_amr(LAUNCHER.as_posix(), "simulate", "-c", str(CONFIG), "--duration", "120"),
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gateway = None
    err_path = tmp_path / "journal"
    with err_path.open("w") as journal:
        st = os.fstat(journal.fileno())      # as under systemd: stderr is the stream JOURNAL_STREAM names
        try:
            gateway = subprocess.Popen(as_amr(*commands["ExecStart"]), stdout=subprocess.DEVNULL, stderr=journal,
                                       env=dict(env, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}"))
            wait_until(lambda: any(m.get("last_good") for m in api_meters(api_port)) or gateway.poll() is not None,
                       60, "a good reading from the installed gateway")
            assert gateway.poll() is None, err_path.read_text()
        finally:
            stop_process(gateway, signal.SIGTERM, 30)
            stop_process(sim, signal.SIGTERM, 10)
    assert gateway is not None
    err = err_path.read_text()
    assert gateway.returncode == 0, err
    assert "Traceback" not in err, err
    assert all(line.startswith(("<6>", "<4>", "<3>")) for line in err.splitlines()), err   # journal priorities
    assert "<6>amr.cli: stopping: SIGTERM" in err.splitlines(), err
    store_files = {p.name: p.stat().st_uid for p in STATE.iterdir()}
    assert store_files and set(store_files.values()) == {amr.pw_uid}, store_files

    # the next release over it: a real upgrade (old prerm upgrade, new postinst configure)
    edited = CONFIG.read_text()
    readings = readings_csv()
    assert len(readings.splitlines()) > 1, readings         # a header and the readings taken above
    (VENV / "left-by-the-old-version").write_text("")
    proc = run(*APT_GET, *KEEP_CONFIG, "install", str(next_release.deb), env=APT_ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "already a member" not in proc.stderr, proc.stderr     # postinst adds amr to dialout once
    assert run("dpkg-query", "-W", "-f=${Version}", "amr-gateway").stdout == next_release.version
    assert CONFIG.read_text() == edited                      # the edit is kept, without a question
    assert Path(f"{CONFIG}.dpkg-dist").read_text() == next_release.example   # the new example beside it
    assert CONFIG.stat().st_gid == amr.pw_gid and CONFIG.stat().st_mode & 0o007 == 0
    assert {p.name for p in STATE.iterdir()} >= set(store_files)
    assert not (VENV / "left-by-the-old-version").exists()
    assert run(LAUNCHER.as_posix(), "--version").stdout.strip() == f"amr-gateway {next_release.version}"
    assert pwd.getpwnam("amr").pw_uid == amr.pw_uid and "amr" in grp.getgrnam("dialout").gr_mem
    assert readings_csv() == readings                        # the new version reads the old store

    # and back: a downgrade keeps them the same way
    proc = run(*APT_GET, *KEEP_CONFIG, "--allow-downgrades", "install", deb, env=APT_ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert run("dpkg-query", "-W", "-f=${Version}", "amr-gateway").stdout == built.version
    assert CONFIG.read_text() == edited
    assert run(LAUNCHER.as_posix(), "--version").stdout.strip() == f"amr-gateway {built.version}"
    assert readings_csv() == readings

    # remove keeps configuration and data
    proc = run(*APT_GET, "remove", "amr-gateway", env=APT_ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert CONFIG.read_text() == edited
    assert {p.name for p in STATE.iterdir()} >= set(store_files)
    assert not VENV.exists() and not LAUNCHER.exists() and not UNIT.exists()

    # purge removes everything
    proc = run(*APT_GET, "purge", "amr-gateway", env=APT_ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    left = [str(p) for p in LEFT_BY_PURGE if p.exists() or p.is_symlink()]
    assert not left, left
    assert not installed()
    with pytest.raises(KeyError):
        pwd.getpwnam("amr")
    with pytest.raises(KeyError):
        grp.getgrnam("amr")
