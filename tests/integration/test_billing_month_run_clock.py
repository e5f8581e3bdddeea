"""``amr-gateway run -c FILE --clock-start/--clock-rate``: a billing plan rehearsed on a real
configuration file, accepted only when every meter is simulated (its bus ``simulate: true``).

Real process, real peers: the gateway is started as a process from a configuration file
with a Modbus TCP bus, a Modbus RTU serial bus and a DL/T 645 TCP bus, all ``simulate:
true``; the gateway serves them itself (TCP on loopback, the serial bus on a pty linked at
its ``port`` path) on its own accelerated clock. Checked through its HTTP API:

* the 2026-12-11 00:00 boundary passes seconds after the start at 600× (the clock starts 40
  simulated minutes ahead of it: starting takes about a real second, ten minutes at 600×), and the DL/T 645
  meter's settlement is ``meter_frozen`` with exactly the registers its model (seeded from
  the meter id, as ``amr-gateway simulate`` seeds it) froze at that boundary — so the
  simulators run on the gateway's simulated clock; the Modbus meters are ``actual``;
* SIGTERM stops it with exit 0 and the serial link is removed.

And refused, before anything starts (no store is created), with exit 2 and a message naming
each real meter and its bus, when one bus is not simulated.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from datetime import date, datetime
from pathlib import Path
from typing import Any

from drivers.simulation.model import MeterModel
from gateway.config import load_settings_from_text
from gateway.model import loads_exact, parse_iso
from gateway.ports import free_port
from gateway.simulated import SEED
from gateway.simulator.fleet import base_kw_for, meter_seed
from tests.billingkit import SH
from tests.servicefixtures import stop_process, wait_until

REPO = Path(__file__).resolve().parents[2]
TOKEN = "rehearsal-run-token"
B = datetime(2026, 12, 11, tzinfo=SH).timestamp()

CONFIG = """\
gateway: {{id: rehearsal-run, timezone: Asia/Shanghai, data_dir: {data}, clock_check_command: "true"}}
buses:
  - {{id: tcp-m1, type: tcp, host: 127.0.0.1, port: {p1}, protocol: modbus-tcp, timeout_ms: 500, simulate: true}}
  - {{id: rs485-m2, type: serial, port: {tty}, protocol: modbus-rtu, baudrate: 9600, parity: N, timeout_ms: 500,
     simulate: true}}
  - {{id: tcp-d1, type: tcp, host: 127.0.0.1, port: {p2}, protocol: dlt645, timeout_ms: 500, simulate: {sim_d1}}}
meters:
  - {{id: m1, customer: C1, bus: tcp-m1, address: 1, profile: simulator, ct_ratio: 200/5, schedules: [interval],
     billing: plan}}
  - {{id: m2, customer: C2, bus: rs485-m2, address: 7, profile: simulator, schedules: [interval], billing: plan}}
  - {{id: d1, customer: C3, bus: tcp-d1, address: "000000000031", profile: dlt645-2007, ct_ratio: 300/5,
     pt_ratio: 10000/100, schedules: [interval], billing: plan}}
schedules:
  interval: {{every: 15m, points: ["energy_*"]}}
billing:
  plan: {{cycle_day: 1, stages: [11, 21], at: "00:00", tolerance: 15m, registers: [energy_import_kwh]}}
mqtt: {{enabled: false}}
influxdb: {{enabled: false}}
api: {{listen: "127.0.0.1:{api}", token_env: REHEARSAL_TOKEN}}
store: {{synchronous: NORMAL, commit_interval_ms: 20}}
"""


def write_config(tmp: Path, *, d1_simulated: bool) -> tuple[Path, int, str]:
    """The configuration file (``d1``'s bus simulated or not); its path, API port and text."""
    api = free_port()
    text = CONFIG.format(data=tmp / "data", p1=free_port(), p2=free_port(), tty=tmp / "ttyRTU", api=api,
                         sim_d1="true" if d1_simulated else "false")
    path = tmp / "gateway.yaml"
    path.write_text(text)
    return path, api, text


def gateway(config: Path, err: Path, *options: str) -> subprocess.Popen[bytes]:
    """``amr-gateway run -c CONFIG OPTIONS`` as a process, stderr to ``err``."""
    env = dict(os.environ, PYTHONPATH=str(REPO), REHEARSAL_TOKEN=TOKEN)
    env.pop("NOTIFY_SOCKET", None)
    with err.open("w") as stream:
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(config), *options],
                                env=env, stdout=subprocess.DEVNULL, stderr=stream, cwd=REPO)


def get(api: int, path: str) -> Any:
    """GET from the API with the token; the decoded body (exact decimals), None while it does not answer."""
    request = urllib.request.Request(f"http://127.0.0.1:{api}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return loads_exact(resp.read().decode())
    except OSError:
        return None


def settled_at_b(api: int, meter: str) -> dict[str, Any] | None:
    """``meter``'s settlement at the 12-11 boundary once it is not missing, else None."""
    doc = get(api, f"/api/v1/meters/{meter}/settlements?cycle=2026-12")
    if not doc:
        return None
    for s in doc["settlements"]:
        if parse_iso(s["boundary"]) == B and s["quality"] not in (None, "missing"):
            return dict(s)
    return None


def test_run_rehearses_on_a_config_whose_meters_are_all_simulated(tmp_path: Path) -> None:
    config, api, text = write_config(tmp_path, d1_simulated=True)
    settings = load_settings_from_text(text, str(config), tmp_path, {"REHEARSAL_TOKEN": TOKEN})
    assert settings.simulated_buses == {"tcp-m1", "rs485-m2", "tcp-d1"} and settings.real_meters() == []
    err = tmp_path / "stderr"
    proc = gateway(config, err, "--clock-start", "2026-12-10T23:20:00+08:00", "--clock-rate", "600")
    try:
        got = wait_until(lambda: proc.poll() is None and all(settled_at_b(api, m) for m in ("m1", "m2", "d1"))
                         and {m: settled_at_b(api, m) for m in ("m1", "m2", "d1")}, 60.0,
                         "the 12-11 boundary settled for every meter", detail=lambda: err.read_text()[-2000:])
        assert (tmp_path / "ttyRTU").is_symlink()
    finally:
        stop_process(proc, signal.SIGTERM, 30)
    log = err.read_text()
    assert proc.returncode == 0, log
    assert "rehearsal: the clock starts at 2026-12-10T15:20:00+00:00 and runs 600x real time" in log
    assert not (tmp_path / "ttyRTU").exists()          # the simulated serial line is taken down

    d1 = got["d1"]
    assert d1["quality"] == "meter_frozen" and parse_iso(d1["frozen_at"]) == B
    ms = settings.meters["d1"]
    model = MeterModel(meter_seed(SEED, "d1"), base_kw=base_kw_for(ms, SEED), multiplier=ms.multiplier,
                       timezone="Asia/Shanghai")
    frozen = model.frozen_daily(date(2026, 12, 11))["energy_import_kwh"]
    assert d1["registers"]["energy_import_kwh"]["raw"] == frozen
    assert d1["registers"]["energy_import_kwh"]["value"] == frozen * 6000
    for m in ("m1", "m2"):
        assert got[m]["quality"] == "actual", got[m]
        assert B <= parse_iso(got[m]["read_at"]) <= B + 900


def test_run_refuses_the_clock_options_when_a_meter_is_real(tmp_path: Path) -> None:
    config, _api, _text = write_config(tmp_path, d1_simulated=False)
    for options in (["--clock-rate", "600"], ["--clock-start", "2026-12-10T23:56:00+08:00"]):
        err = tmp_path / "stderr"
        proc = gateway(config, err, *options)
        try:
            proc.wait(60)
        finally:
            stop_process(proc, signal.SIGKILL, 5)
        message = err.read_text()
        assert proc.returncode == 2, message
        assert ("--clock-start/--clock-rate rehearse a billing plan on simulated meters only, and 1 configured "
                "meter is real: d1 (bus tcp-d1)") in message
        assert "simulate: true" in message and "Traceback" not in message
        assert not (tmp_path / "data").exists()          # refused before anything started
        assert not (tmp_path / "ttyRTU").exists()


def test_a_rehearsal_reload_keeps_the_rule_and_restarts_changed_simulators(tmp_path: Path) -> None:
    """SIGHUP during a rehearsal: a file that brings in a real meter is refused (the rehearsal
    runs on), a file with one more simulated meter is taken and that meter is served."""
    config, api, text = write_config(tmp_path, d1_simulated=True)
    err = tmp_path / "stderr"
    proc = gateway(config, err, "--clock-start", "2026-12-10T23:20:00+08:00", "--clock-rate", "600")

    def last_good(meter: str) -> str | None:
        doc = get(api, "/api/v1/meters")
        rows = {m["id"]: m for m in doc["meters"]} if doc else {}
        return rows[meter]["last_good"] if meter in rows else None

    def reload_state() -> Any:
        doc = get(api, "/api/v1/health")
        return doc["reload"] if doc else None

    try:
        wait_until(lambda: proc.poll() is None and last_good("d1"), 60.0, "d1 read once",
                   detail=lambda: err.read_text()[-2000:])
        real = text.replace("protocol: dlt645, timeout_ms: 500, simulate: true}", "protocol: dlt645, timeout_ms: 500}")
        assert real != text
        config.write_text(real)                                                     # d1's bus becomes real
        proc.send_signal(signal.SIGHUP)
        refused = wait_until(lambda: (r := reload_state()) and r["ok"] is False and r, 30.0, "the reload refused")
        assert "1 configured meter is real: d1 (bus tcp-d1)" in refused["error"], refused
        assert proc.poll() is None
        m3 = "  - {id: m3, customer: C4, bus: tcp-m1, address: 2, profile: simulator, schedules: [interval]}\n"
        more = text.replace("meters:\n", "meters:\n" + m3, 1)
        config.write_text(more)
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: (r := reload_state()) and r["ok"] is True, 30.0, "the reload taken")
        wait_until(lambda: last_good("m3"), 60.0, "the new simulated meter m3 read",
                   detail=lambda: err.read_text()[-2000:])
    finally:
        stop_process(proc, signal.SIGTERM, 30)
    assert proc.returncode == 0, err.read_text()
    assert "simulating 4 meter(s)" in err.read_text()
