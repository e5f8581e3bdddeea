"""``amr-gateway run`` as systemd starts it: with stderr the journal stream that
``$JOURNAL_STREAM`` names, every line is ``<N>logger: message`` with no timestamp; a SIGHUP
gives one "configuration reloaded" line; a SIGTERM gives one line saying so before the stop.
Elsewhere, each line has one timestamp. The configuration's per-module levels are in force."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servicefixtures import free_port, stop_process, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONFIG = """\
gateway: {{id: log-test, timezone: UTC, data_dir: {data}}}
buses: []
meters: []
schedules: {{}}
api: {{listen: "127.0.0.1:{port}", token_env: LOG_TEST_TOKEN}}
logging: {{levels: {{amr.api: warning}}}}
"""


def run_until_started_then_sigterm(tmp_path: Path, journal: bool) -> list[str]:
    """Start the gateway with stderr to a file (the journal stream when ``journal``), wait for
    its start line, SIGHUP it and wait for the reload's line, SIGTERM it, and return its
    stderr lines."""
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(data=tmp_path / "data", port=free_port()))
    err_path = tmp_path / "stderr"
    with err_path.open("w") as err:
        env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET")}
        env.update(PYTHONPATH=str(REPO), LOG_TEST_TOKEN="log-test-token")
        if journal:
            st = os.fstat(err.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(config)],
                                env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_until(lambda: "started" in err_path.read_text() or proc.poll() is not None, 60,
                       "the gateway's start line")
            assert proc.poll() is None, err_path.read_text()
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "configuration reloaded" in err_path.read_text() or proc.poll() is not None, 60,
                       "the gateway's reload line")
        finally:
            stop_process(proc, signal.SIGTERM, 30)
    assert proc.returncode == 0, err_path.read_text()
    return err_path.read_text().splitlines()


def test_journal_lines_carry_priorities_and_no_timestamp(tmp_path: Path) -> None:
    lines = run_until_started_then_sigterm(tmp_path, journal=True)
    assert lines and all(re.match(r"^<[0-7]>", line) for line in lines), lines
    assert not any(re.search(r"\d\d:\d\d:\d\d", line.split(": ", 1)[0]) for line in lines), lines
    assert lines[0].startswith("<6>amr.cli: amr-gateway ") and " starting: configuration " in lines[0], lines
    started = [i for i, line in enumerate(lines) if line.startswith("<6>amr.runtime: amr-gateway ")]
    assert len(started) == 1 and " started: 0 buses, 0 meters, store " in lines[started[0]], lines
    assert "<6>amr.cli: stopping: SIGTERM" in lines, lines
    assert lines.index("<6>amr.cli: stopping: SIGTERM") < lines.index("<6>amr.cli: stopped"), lines
    reloaded = [i for i, line in enumerate(lines) if line.startswith("<6>amr.runtime: configuration reloaded")]
    assert len(reloaded) == 1 and lines[reloaded[0]].endswith(": 0 buses, 0 meters"), lines
    assert reloaded[0] < lines.index("<6>amr.cli: stopping: SIGTERM"), lines
    assert sum(" started: " in line for line in lines) == 1, lines   # a reload is not announced as a start
    assert not any("amr.api:" in line for line in lines), lines   # the section's level for amr.api: warning


def test_plain_lines_carry_one_timestamp(tmp_path: Path) -> None:
    lines = run_until_started_then_sigterm(tmp_path, journal=False)
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert lines and all(re.match(rf"^{stamp} (DEBUG|INFO|WARNING|ERROR|CRITICAL)", line) for line in lines), lines
    assert not any(re.search(stamp, line[23:]) for line in lines), lines
    assert any(re.match(rf"^{stamp} INFO +amr.cli: stopping: SIGTERM$", line) for line in lines), lines
