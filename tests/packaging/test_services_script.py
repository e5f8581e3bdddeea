"""``scripts/ensure-services.sh``: starts the peers that do not answer at the addresses
``AMR_TEST_MQTT`` and ``AMR_TEST_INFLUX_URL`` name (the variables servicefixtures reads),
as unprivileged users when run as root, and ``stop RECORD`` stops exactly what its
``start RECORD`` started, so ``make test`` leaves nothing of its own running.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging.conftest import REPO
from tests.servicefixtures import free_port, port_open, vm_healthy

pytestmark = [pytest.mark.integration]

SCRIPT = REPO / "scripts" / "ensure-services.sh"


def owner(pid: int) -> str:
    """The user name a process runs as."""
    return pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name


@pytest.fixture(name="state_dir")
def _state_dir() -> Iterator[Path]:
    """A directory the services' own users can reach (pytest's tmp_path sits under a 0700 one)."""
    with tempfile.TemporaryDirectory(prefix="amr-services-test-") as d:
        Path(d).chmod(0o755)
        yield Path(d)


def test_start_on_the_named_addresses_then_stop_only_what_it_started(state_dir: Path) -> None:
    tmp_path = state_dir
    mqtt_port, vm_port = free_port(), free_port()
    env = dict(os.environ, AMR_TEST_MQTT=f"127.0.0.1:{mqtt_port}",
               AMR_TEST_INFLUX_URL=f"http://127.0.0.1:{vm_port}",
               AMR_SERVICES_DIR=str(tmp_path), AMR_VM_DATA=str(tmp_path / "vm"))
    record = tmp_path / "started"
    try:
        start = subprocess.run(["bash", str(SCRIPT), "start", str(record)], env=env, capture_output=True,
                               text=True, timeout=90, check=False)
        assert start.returncode == 0, start.stderr
        assert port_open("127.0.0.1", mqtt_port) and vm_healthy(f"http://127.0.0.1:{vm_port}")
        pids = dict(line.split() for line in record.read_text().splitlines())
        assert set(pids) == {"mosquitto", "victoria-metrics"}, pids
        if os.geteuid() == 0:
            assert owner(int(pids["victoria-metrics"])) != "root"
            assert owner(int(pids["mosquitto"])) != "root"

        # a second start finds both answering: it starts nothing and records nothing
        again_record = tmp_path / "again"
        again = subprocess.run(["bash", str(SCRIPT), "start", str(again_record)], env=env,
                               capture_output=True, text=True, timeout=90, check=False)
        assert again.returncode == 0 and not again_record.exists(), again.stderr
        subprocess.run(["bash", str(SCRIPT), "stop", str(again_record)], env=env, timeout=60, check=True)
        assert port_open("127.0.0.1", mqtt_port) and vm_healthy(f"http://127.0.0.1:{vm_port}")
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(record)], env=env, capture_output=True, timeout=90,
                       check=False)
    assert not port_open("127.0.0.1", mqtt_port)
    assert not vm_healthy(f"http://127.0.0.1:{vm_port}")
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists(), pid
