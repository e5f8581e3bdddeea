"""The installed unit under a real systemd: this machine's PID 1 is not systemd, so a minimal
Debian 12 (``packaging/container-rootfs.sh``, cached outside the checkout) is booted with
``systemd-nspawn --boot`` on a throwaway overlay, with no network but its own loopback.

Inside, as docs/install.md tells an operator: ``apt install`` the package (offline: its
dependencies are in the root), ``systemctl enable --now`` with the shipped example
configuration; the unit is active (``Type=notify``: the gateway said READY), the gateway
answers health on the example's port, and ``journalctl -u amr-gateway`` carries its start
line at priority info and its warnings at priority warning, each without a timestamp of its
own; ``systemctl reload`` reloads, or refuses a broken configuration at priority error and
keeps running; a killed gateway is restarted as ``Restart=on-failure``
says; an upgrade to the next release stops the running service and starts the new version;
``systemctl stop`` logs the stop with its reason. Needs root; the first run builds the root
(about two minutes, needs Debian's mirror), later runs take about half a minute.

The same for the ARM boxes' package (``[arm64]``): an arm64 Debian 12 root, booted and run
under qemu's user-mode emulation (binfmt_misc; ``container-rootfs.sh arm64`` installs and
registers it, and fails saying what is missing where it cannot). Every wait is longer
(:attr:`Container.patience`), the emulated processes run at the lowest priority, and the
first run builds the root with debootstrap's second stage emulated (see docs/install.md
section 6 for the times).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.packaging.conftest import REPO, Built, NextRelease, built_for, host_arch, next_release_for
from tests.servicefixtures import stop_process, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(600)]

HOST = host_arch()
# An emulated machine runs Python several times slower: every wait is this many times longer.
EMULATED_PATIENCE = 5.0
# Building the emulated root (once) runs debootstrap's second stage under qemu.
# (about five minutes on a 2-core x86_64, at nice 19; the test itself about two more).
EMULATED_ROOTFS_TIMEOUT = 1800
EMULATED_TIMEOUT = EMULATED_ROOTFS_TIMEOUT + 900
ARCHES = [pytest.param(arch, id=arch, marks=[] if arch == HOST else [pytest.mark.timeout(EMULATED_TIMEOUT)])
          for arch in ("amd64", "arm64")]

ROOTFS_SCRIPT = REPO / "packaging" / "container-rootfs.sh"
UNIT = "amr-gateway.service"
KEEP_CONFIG = ("-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold")
# A line that carries its own date and time (journald adds them: two would be one too many).
OWN_TIMESTAMP = re.compile(r"^\s*\[?\d{4}-\d\d-\d\d[ T]\d\d:\d\d")


@dataclass(frozen=True)
class Container:
    """Runs a command as root inside a booted container (its systemd is ``leader``), in a clean
    environment. ``patience`` scales every wait: 1 natively, more under emulation."""

    leader: int
    patience: float

    def __call__(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``cmd`` inside; fails the test if it runs longer than ``timeout`` (scaled) seconds."""
        return subprocess.run(
            ["nsenter", "--target", str(self.leader), "--all", "--", "/usr/bin/env", "-i",
             "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive", *cmd],
            capture_output=True, text=True, timeout=self.within(timeout), check=False)

    def within(self, seconds: float) -> float:
        """How long to wait inside for what takes at most ``seconds`` natively."""
        return seconds * self.patience


@dataclass(frozen=True)
class Release:
    """The architecture under test, its package and its next release's."""

    arch: str
    built: Built
    next: NextRelease


@pytest.fixture(name="release", params=ARCHES)
def _release(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Release:
    """This machine's packages (the session's), or the packages built for another architecture."""
    arch: str = request.param
    if arch == HOST:
        return Release(arch, request.getfixturevalue("built"), request.getfixturevalue("next_release"))
    built = built_for(tmp_path_factory, arch)
    return Release(arch, built, next_release_for(tmp_path_factory, built))


def init_of(nspawn: int) -> int:
    """The container's systemd (a child of nspawn once nspawn's own helper has exec'd it), or 0."""
    try:
        for child in Path(f"/proc/{nspawn}/task/{nspawn}/children").read_text().split():
            if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                return int(child)
    except OSError:
        pass
    return 0


@pytest.fixture(name="container")
def _container(release: Release, tmp_path: Path) -> Iterator[Container]:
    """A booted Debian 12 of the release's architecture with systemd as PID 1 and both packages
    under /mnt/deb (read-only); yields what runs a command inside as root. Powered off afterwards."""
    assert os.geteuid() == 0, "booting a container needs root: run the suite as root (CI does)"
    emulated = release.arch != HOST
    proc = subprocess.run(["bash", str(ROOTFS_SCRIPT), release.arch], capture_output=True, text=True,
                          timeout=EMULATED_ROOTFS_TIMEOUT if emulated else 420, check=False)
    assert proc.returncode == 0, proc.stderr
    rootfs = proc.stdout.strip().splitlines()[-1]
    patience = EMULATED_PATIENCE if emulated else 1.0
    debs = tmp_path / "debs"
    debs.mkdir()
    for deb in (release.built.deb, release.next.deb):
        shutil.copyfile(deb, debs / deb.name)
    console = tmp_path / "console"
    name = f"amr-test-{uuid.uuid4().hex[:8]}"
    with console.open("w") as out:
        # --keep-unit --register=no: nspawn needs no systemd and no bus on this side.
        # Emulated, the whole container runs at the lowest priority: it takes the cores it can get.
        nspawn = subprocess.Popen(
            [*(["nice", "-n", "19"] if emulated else []),
             "systemd-nspawn", "--quiet", "--directory", rootfs, "--boot", "--register=no", "--keep-unit",
             "--private-network", "--volatile=overlay", "--machine", name, f"--bind-ro={debs}:/mnt/deb"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    inside: Container | None = None
    try:
        wait_until(lambda: init_of(nspawn.pid) or nspawn.poll() is not None, 30 * patience,
                   "the container's systemd", step=0.2, detail=lambda: console.read_text()[-3000:])
        assert nspawn.poll() is None, console.read_text()[-3000:]
        inside = Container(init_of(nspawn.pid), patience)

        def booted() -> str:
            """running or degraded once the boot is over, else ''."""
            state = inside("systemctl", "is-system-running").stdout.strip()
            return state if state in ("running", "degraded") else ""

        state = wait_until(booted, inside.within(60), "the container's boot", step=0.5,
                           detail=lambda: console.read_text()[-3000:])
        assert state == "running", inside("systemctl", "--failed", "--no-pager").stdout + console.read_text()[-3000:]
        assert inside("dpkg", "--print-architecture").stdout.strip() == release.arch      # emulated, if not ours
        yield inside
    finally:
        if inside is not None and emulated:
            # nspawn's SIGTERM sends the container's systemd SIGRTMIN+4 (power off), which qemu
            # delivers as another real-time signal (it keeps some for itself): systemd went to
            # rescue mode. So the emulated one is asked with systemctl instead.
            with contextlib.suppress(subprocess.TimeoutExpired):
                inside("systemctl", "poweroff", "--no-block", timeout=30)
            with contextlib.suppress(subprocess.TimeoutExpired):
                nspawn.wait(inside.within(30))
        stop_process(nspawn, signal.SIGTERM, 30 * patience)   # nspawn asks the container's systemd to power off


def journal(inside: Container) -> list[dict[str, str]]:
    """The unit's journal entries (systemd's and the gateway's), oldest first."""
    proc = inside("journalctl", "-u", UNIT, "-o", "json", "--no-pager")
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def gateway_lines(inside: Container, pid: str) -> list[tuple[str, str]]:
    """(priority, message) of every line the gateway process ``pid`` wrote to the journal."""
    return [(e["PRIORITY"], e["MESSAGE"]) for e in journal(inside) if e.get("_PID") == pid
            and e.get("SYSLOG_IDENTIFIER") == "amr-gateway"]


def show(inside: Container, *props: str) -> dict[str, str]:
    """``systemctl show`` of the unit's properties."""
    out = inside("systemctl", "show", "-p", ",".join(props), UNIT).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def health(inside: Container) -> dict[str, object]:
    """GET /api/v1/health on the example configuration's API address, from inside ({} when it does not answer)."""
    proc = inside("python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                  "'http://127.0.0.1:8080/api/v1/health', timeout=3).read().decode())", timeout=30)
    if proc.returncode != 0:
        return {}
    answer: dict[str, object] = json.loads(proc.stdout)
    return answer


def main_pid_ready(inside: Container) -> str:
    """The unit's main PID once it is active and answers health (waits for a restart)."""
    def ready() -> str:
        p = show(inside, "ActiveState", "MainPID")
        return p["MainPID"] if p["ActiveState"] == "active" and p["MainPID"] != "0" and health(inside) else ""
    pid: str = wait_until(ready, inside.within(60), "the unit active and the gateway answering health", step=0.5,
                          detail=lambda: inside("systemctl", "status", "--no-pager", UNIT).stdout)
    return pid


def test_unit_under_systemd(release: Release, container: Container) -> None:
    inside, built, next_release = container, release.built, release.next
    proc = inside("apt-get", "install", "-y", "-q", f"/mnt/deb/{built.deb.name}", timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = inside("systemctl", "enable", "--now", UNIT)
    assert proc.returncode == 0, proc.stderr
    assert inside("systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"
    pid = main_pid_ready(inside)
    assert inside("systemctl", "is-active", UNIT).stdout.strip() == "active"
    assert health(inside)["status"] == "up"

    lines = gateway_lines(inside, pid)
    started = [p for p, m in lines if m.startswith(f"amr.runtime: amr-gateway {built.version} started: ")]
    assert started == ["6"], lines                                  # info, once
    assert any(p == "4" for p, _ in lines), lines                    # the example's warnings (no token, sinks down)
    assert not [m for _, m in lines if OWN_TIMESTAMP.match(m) or re.match(r"<\d>", m)], lines
    wrong = [e["MESSAGE"] for e in journal(inside) if e["PRIORITY"] in ("0", "1", "2", "3")
             or "mode is different" in e["MESSAGE"]]
    assert not wrong, wrong                                          # nothing wrong with the unit itself

    # systemctl reload: SIGHUP, the same process reloads its configuration
    proc = inside("systemctl", "reload", UNIT)
    assert proc.returncode == 0, proc.stderr + inside("systemctl", "status", "--no-pager", UNIT).stdout
    wait_until(lambda: [m for p, m in gateway_lines(inside, pid)
                        if p == "6" and m.startswith("amr.runtime: configuration reloaded: ")], inside.within(30),
               "the reload line", step=0.5, detail=lambda: gateway_lines(inside, pid))
    assert show(inside, "MainPID")["MainPID"] == pid

    # a broken configuration is refused at reload, at priority error on every line of the
    # message; the running one stays
    assert inside("cp", "-p", "/etc/amr-gateway/config.yaml", "/root/config.yaml").returncode == 0
    assert inside("sh", "-c", "printf 'buses: [\\n' >>/etc/amr-gateway/config.yaml").returncode == 0
    seen = len(gateway_lines(inside, pid))
    assert inside("systemctl", "reload", UNIT).returncode == 0

    def not_info() -> list[tuple[str, str]]:
        """The lines since the reload that are not info, once there are two (the message and its
        error). Not the poller's (``amr.poll``) link-state lines: the example's serial bus, whose
        port this container lacks, says "bus … is down" and "meter … stopped answering"
        (warnings) after the reload before, and those lines may land here (full suite runs on a
        slow host saw each do so); the poller never speaks of a reload."""
        lines = [line for line in gateway_lines(inside, pid)[seen:]
                 if line[0] != "6" and not line[1].startswith("amr.poll: ")]
        return lines if len(lines) > 1 else []

    refused = wait_until(not_info, inside.within(30), "the refused reload", step=0.5,
                         detail=lambda: gateway_lines(inside, pid)[seen:])
    assert refused[0] == ("3", "amr.cli: reload refused, the running configuration stays:"), refused
    assert {p for p, _ in refused} == {"3"}, refused               # the error itself too, not at info
    assert inside("cp", "-p", "/root/config.yaml", "/etc/amr-gateway/config.yaml").returncode == 0
    assert show(inside, "ActiveState", "MainPID") == {"ActiveState": "active", "MainPID": pid}

    # a gateway that dies is started again (Restart=on-failure, RestartSec=5s)
    assert inside("systemctl", "kill", "--kill-whom=main", "--signal=SIGKILL", UNIT).returncode == 0
    restarted = main_pid_ready(inside)
    assert restarted != pid
    assert show(inside, "NRestarts")["NRestarts"] == "1"

    # an upgrade of the running service: prerm stops it, postinst starts the new version
    proc = inside("apt-get", *KEEP_CONFIG, "install", "-y", "-q", f"/mnt/deb/{next_release.deb.name}", timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    upgraded = main_pid_ready(inside)
    assert upgraded != restarted
    assert health(inside)["version"] == next_release.version
    assert ("6", "amr.cli: stopping: SIGTERM") in gateway_lines(inside, restarted)
    assert [p for p, m in gateway_lines(inside, upgraded)
            if m.startswith(f"amr.runtime: amr-gateway {next_release.version} started: ")] == ["6"]

    # systemctl stop: the stop line with its reason, a clean exit
    assert inside("systemctl", "stop", UNIT).returncode == 0
    assert show(inside, "ActiveState", "Result") == {"ActiveState": "inactive", "Result": "success"}
    assert gateway_lines(inside, upgraded)[-2:] == [("6", "amr.cli: stopping: SIGTERM"), ("6", "amr.cli: stopped")]
