"""Command-line values checked before a command starts: a bad address, port or number is a
usage error naming the option (exit 2), never a traceback, a raw socket error or a message
dressed as a configuration problem; an export option that does not apply to the export asked
for, or a bad --cycle, is said before the store is looked at."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.cliargs import BadValue, host_port


@pytest.mark.parametrize(("text", "default", "expected"), [
    ("127.0.0.1:8080", None, ("127.0.0.1", 8080)),
    ("localhost:1", None, ("localhost", 1)),
    ("broker.example.net", 1883, ("broker.example.net", 1883)),
    ("[::1]:502", None, ("::1", 502)),
    ("::1", 1883, ("::1", 1883)),
    ("10.0.0.5:65535", None, ("10.0.0.5", 65535)),
])
def test_good_addresses(text: str, default: int | None, expected: tuple[str, int]) -> None:
    assert host_port(text, default) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("127.0.0.1", "must be HOST:PORT"),
    ("127.0.0.1:99999", "use 1-65535"),
    ("127.0.0.1:0", "use 1-65535"),
    ("127.0.0.1:-1", "use 1-65535"),
    ("127.0.0.1:http", "use 1-65535"),
    ("999.1.1.1:8080", "'999.1.1.1' is not an IP address"),
    ("1.2.3:8080", "is not an IP address"),
    (":8080", "has no host"),
    ("bad_host!:8080", "is not a host name or IP address"),
    ("[::1]x", "[IPv6]:PORT"),
])
def test_bad_addresses_say_what_to_write(text: str, message: str) -> None:
    with pytest.raises(BadValue, match=message.replace("[", r"\[").replace("]", r"\]")):
        host_port(text)


@pytest.mark.parametrize(("argv", "message"), [
    (["demo", "--listen", "127.0.0.1"], "argument --listen: must be HOST:PORT such as 127.0.0.1:8080"),
    (["demo", "--listen", "127.0.0.1:99999"], "argument --listen: port '99999' is not a port number"),
    (["demo", "--listen", "999.1.1.1:8080"], "argument --listen: '999.1.1.1' is not an IP address"),
    (["demo", "--mqtt", "127.0.0.1:70000"], "argument --mqtt: port '70000'"),
    (["demo", "--clock-rate", "-1"], "argument --clock-rate: must be a positive number, not -1"),
    (["demo", "--duration", "0"], "argument --duration: must be a positive number, not 0"),
    (["demo", "--clock-rate", "nan"], "argument --clock-rate: must be a positive number, not nan"),
    (["demo", "--clock-start", "yesterday"], "argument --clock-start: must be ISO-8601"),
    (["read", "--tcp", "127.0.0.1:99999", "--unit", "1", "--profile", "simulator"], "argument --tcp: port"),
    (["read", "--tcp", "127.0.0.1:502", "--unit", "1", "--profile", "simulator", "--timeout", "-1"],
     "argument --timeout: must be a positive number"),
    (["scan", "--serial", "/dev/null", "--baud", "-9600"], "argument --baud: must be a positive number, not -9600"),
    (["scan", "--serial", "/dev/null", "--baud", "12345"],
     "argument --baud: must be a standard rate (300, 600, 1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, "
     "115200), not 12345"),
    (["read", "--serial", "/dev/null", "--baud", "7", "--unit", "1", "--profile", "simulator"],
     "argument --baud: must be a standard rate"),
    (["simulate", "-c", "x.yaml", "--clock-rate", "0"], "argument --clock-rate"),
    (["export", "intervals", "-c", "x.yaml", "--step", "7m"],
     "argument --step: must be one of 15m, 30m, 1h, 1d, not '7m'"),
])
def test_bad_values_are_usage_errors_naming_the_option(argv: list[str], message: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"amr-gateway: error: {message}" in err, err
    assert "<config>" not in err and "Traceback" not in err, err


EXPORT_CONFIG = """\
gateway: {{id: g1, timezone: UTC, data_dir: {data}}}
buses: [{{id: tcp-1, type: tcp, host: 127.0.0.1, port: 1502, protocol: modbus-tcp}}]
meters: [{{id: m1, customer: C1, bus: tcp-1, address: 1, profile: simulator}}]
schedules: {{interval: {{every: 15m}}}}
"""


@pytest.mark.parametrize(("argv", "message"), [
    (["settlements", "--cycle", "2026-13"], "--cycle: '2026-13' is not a month: write YYYY-MM"),
    (["settlements", "--cycle", "0001-01"], "--cycle: '0001-01' is not a billing cycle: the year must be between"),
    (["readings", "--cycle", "2026-01"], "--cycle applies to export settlements only, not to export readings"),
    (["readings", "--step", "1h"], "--step applies to export intervals only, not to export readings"),
    (["intervals", "--table", "stages"], "--table applies to export settlements only, not to export intervals"),
    (["intervals", "--from", "2026-02-01", "--to", "2026-01-01"], "--from must be earlier than --to"),
    (["intervals", "--format", "json"], "--format json exports readings only; intervals are exported as CSV"),
])
def test_export_option_errors_come_before_the_store_is_looked_at(
        tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(EXPORT_CONFIG.format(data=tmp_path / "no-store-here"))     # no store: not reached
    output = tmp_path / "out.csv"
    assert main(["export", argv[0], "-c", str(config), "-o", str(output), *argv[1:]]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {message}") and "no local store" not in captured.err, captured.err
    assert captured.out == "" and not output.exists()
