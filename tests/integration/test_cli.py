"""The ``amr-gateway`` commands as a user runs them: real processes, real simulated meters.

``simulate`` serves the meters of a configuration (Modbus TCP on loopback, Modbus RTU and
DL/T 645 on ptys linked at the configured serial paths); ``read`` and ``scan`` then talk to
them exactly as on site.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.ports import free_port
from tests.servicefixtures import REPO, run_cli, simulating


def write_config(tmp: Path) -> Path:
    cfg = tmp / "site.yaml"
    cfg.write_text(f"""\
gateway: {{id: cli-test, timezone: Asia/Shanghai, data_dir: {tmp / 'data'}}}
buses:
  - {{id: lan, type: tcp, host: 127.0.0.1, port: {free_port()}, protocol: modbus-tcp, timeout_ms: 500}}
  - {{id: rtu, type: serial, port: {tmp / 'ttyRTU'}, protocol: modbus-rtu, baudrate: 9600, parity: N,
     timeout_ms: 300}}
  - {{id: dlt, type: serial, port: {tmp / 'tty645'}, protocol: dlt645, baudrate: 2400, parity: N,
     timeout_ms: 800}}
meters:
  - {{id: m-tcp, customer: C1, bus: lan, address: 1, profile: simulator, ct_ratio: 200/5}}
  - {{id: m-rtu-3, customer: C2, bus: rtu, address: 3, profile: simulator}}
  - {{id: m-rtu-7, customer: C2, bus: rtu, address: 7, profile: eastron-sdm630}}
  - {{id: m-645, customer: C3, bus: dlt, address: "123456789012", profile: dlt645-2007,
     ct_ratio: 300/5, pt_ratio: 10000/100}}
schedules:
  interval: {{every: 15m, points: ["energy_*"]}}
api: {{listen: "127.0.0.1:{free_port()}", token: cli-test-token}}
""")
    return cfg


run = run_cli


@pytest.fixture
def simulated_site(tmp_path: Path) -> Iterator[Path]:
    cfg = write_config(tmp_path)
    with simulating(cfg):
        yield cfg


def test_validate_example_and_broken(tmp_path: Path) -> None:
    ok = run("validate", "-c", str(REPO / "config" / "gateway.example.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK")
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway: {id: x}\nbuses: []\nmeters:\n  - {id: m1, bus: nowhere, address: 1, profile: simulator}\n")
    res = run("validate", "-c", str(bad))
    assert res.returncode == 2
    assert f"{bad}:4:" in res.stderr and "nowhere" in res.stderr
    assert "Traceback" not in res.stderr


def test_read_modbus_tcp_rtu_and_dlt645_from_config(simulated_site: Path) -> None:
    tcp = run("read", "-c", str(simulated_site), "--meter", "m-tcp")
    assert tcp.returncode == 0, tcp.stderr
    assert "energy_import_kwh" in tcp.stdout and "good" in tcp.stdout
    rtu = run("read", "-c", str(simulated_site), "--meter", "m-rtu-7")
    assert rtu.returncode == 0, rtu.stderr
    assert "voltage_v_l1" in rtu.stdout
    dlt = run("read", "-c", str(simulated_site), "--meter", "m-645")
    assert dlt.returncode == 0, dlt.stderr
    assert "energy_import_kwh_t4" in dlt.stdout and "good" in dlt.stdout


def test_read_ad_hoc_and_scan(simulated_site: Path, tmp_path: Path) -> None:
    port = simulated_site.read_text().split("port: ", 1)[1].split(",", 1)[0]
    adhoc = run("read", "--tcp", f"127.0.0.1:{port}", "--unit", "1", "--profile", "simulator")
    assert adhoc.returncode == 0, adhoc.stderr
    scan_modbus = run("scan", "--serial", str(tmp_path / "ttyRTU"), "--baud", "9600", "--parity", "N",
                      "--protocol", "modbus-rtu", "--range", "1-8", "--timeout", "0.2")
    assert scan_modbus.returncode == 0, scan_modbus.stderr
    found = scan_modbus.stdout.split()
    assert "3" in found and "7" in found and "5" not in found
    scan_645 = run("scan", "--serial", str(tmp_path / "tty645"), "--baud", "2400", "--parity", "N",
                   "--protocol", "dlt645", "--timeout", "1")
    assert scan_645.returncode == 0, scan_645.stderr
    assert "123456789012" in scan_645.stdout


def test_bad_usage_is_one_sentence_exit_2() -> None:
    res = run("read", "--tcp", "nonsense", "--unit", "1", "--profile", "simulator")
    assert res.returncode == 2
    assert "HOST:PORT" in res.stderr and "Traceback" not in res.stderr
    res = run("demo", "--clock-start", "yesterday")
    assert res.returncode == 2 and "ISO-8601" in res.stderr
