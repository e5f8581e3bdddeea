"""``bench/soak.py`` end to end, in miniature: the loops of issue 16 item 11 run and judge.

The hour-long soak and the 100-kill loop are benchmarks (bench/README.md gives their
figures); here each runs for seconds against its own private mosquitto and VictoriaMetrics
on free loopback ports, so the tool that produced those figures keeps working and its
report says what it saw: peers restarted, seqs delivered, integrity after each kill.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *args: str, timeout: float) -> dict[str, Any]:
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "bench.soak", *args, "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "all targets met" in done.stdout
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def test_a_short_soak_restarts_both_peers_and_loses_nothing(tmp_path: Path) -> None:
    report = _run(tmp_path, "soak", "--meters", "10", "--interval", "1", "--duration", "20",
                  "--broker-every", "6", "--vm-every", "9", "--sample-every", "1", timeout=240)
    assert report["restarts"]["broker"] >= 3 and report["restarts"]["vm"] >= 2
    assert report["subscriber_connects"] >= 2           # the subscriber came back after each broker restart
    assert report["mqtt_status_messages"] >= 1 and report["mqtt_unparsed"] == 0   # birth/will apart from readings
    assert report["mqtt_covered"] >= 100 and report["vm_covered"] >= 100
    assert report["mqtt_missing"] == 0 and report["vm_missing"] == 0 and report["mqtt_inversions"] == 0
    assert len(report["samples"]) >= 15 and report["fds_at_end"] <= report["fds_after_warmup"] + 4


def test_a_short_kill_loop_checks_integrity_and_delivers_what_the_killed_runs_committed(tmp_path: Path) -> None:
    report = _run(tmp_path, "kill", "--meters", "5", "--kills", "3", "--min-life", "1.5", "--max-life", "3",
                  "--life-after-api", "--final", "4", "--seed", "7", timeout=240)
    assert report["kills"] == 3 and report["integrity_failures"] == [] and report["final_integrity"] == "ok"
    assert report["killed_runs_max_seq"] > 0            # the killed runs committed something
    assert all(c >= report["killed_runs_max_seq"] for c in report["cursors"].values())
    assert report["mqtt_missing"] == 0 and report["vm_missing"] == 0
