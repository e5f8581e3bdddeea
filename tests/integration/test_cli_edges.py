"""The command line at its edges, as a real process: a reader that closes the pipe early
(``| head``) ends the command quietly with exit 0; a port another program holds is one
sentence saying what to do, not a raw socket error; a bad argument value found by the
command itself is not dressed as a configuration file's problem; Ctrl-C ending a command
early exits 130, and ``scan`` still prints the meters it had found (and a bad ``--range`` is
said before the port is opened); ``demo`` removes its
temporary folder however it ends (its end, SIGTERM, Ctrl-C); `read` with a profile of
another protocol says so before it sends anything."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.ports import free_port
from gateway.settings import StoreSettings
from gateway.store import Store
from tests.servicefixtures import commit, make_reading, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONFIG = """\
gateway: {{id: g1, timezone: UTC, data_dir: {data}}}
buses: [{{id: tcp-1, type: tcp, host: 127.0.0.1, port: 1502, protocol: modbus-tcp}}]
meters: [{{id: m1, customer: C1, bus: tcp-1, address: 1, profile: simulator, schedules: [interval]}}]
schedules: {{interval: {{every: 15m, points: ["energy_*"]}}}}
"""


@contextlib.contextmanager
def _sigint_heard() -> Iterator[None]:
    """SIGINT not ignored while a child starts, so the child has it at its default, as a
    command typed at a terminal does. A suite started in the background by a shell without
    job control (``cmd &``) ignores SIGINT, every child inherits that, and the Ctrl-C tests
    below then see a scan that never hears its Ctrl-C (a full suite run started that way
    failed them twice). A handler, unlike "ignore", is not inherited across exec."""
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def cli(*argv: str, stdout: int, stderr: int) -> subprocess.Popen[bytes]:
    """``amr-gateway ARGV`` from this checkout as a child process."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with _sigint_heard():
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", *argv], env=env, stdout=stdout,
                                stderr=stderr)


async def test_closed_pipe_ends_export_quietly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    store = await Store.open(data / "amr-gateway.sqlite", StoreSettings(), "g1")
    try:
        now = time.time()
        await commit(store, [make_reading("m1", ts=now - 60 * i) for i in range(2000)])   # ~300 kB of CSV
    finally:
        await store.close()
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(data=data))
    proc = cli("export", "readings", "-c", str(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()                  # the reader is gone before the first row is written
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(60) == 0, err
    assert err == "", err


def test_simulator_port_in_use_says_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = tmp_path / "gateway.yaml"
        config.write_text(CONFIG.format(data=tmp_path / "data").replace("port: 1502", f"port: {port}"))
        proc = cli("simulate", "-c", str(config), "--duration", "30", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, err_bytes = proc.communicate(timeout=60)
    err = err_bytes.decode()
    assert proc.returncode == 1, err
    assert err.startswith("error: cannot listen ("), err
    assert f"{port}" in err and "another program holds that port; stop it or choose another port" in err, err
    assert "Traceback" not in err, err


@pytest.mark.parametrize(("argv", "message"), [
    (["export", "settlements", "--cycle", "2026-13"], "--cycle: '2026-13' is not a month: write YYYY-MM"),
    (["export", "readings", "--from", "yesterday"], "--from must be ISO-8601 such as"),
])
async def test_argument_errors_carry_no_config_prefix(tmp_path: Path, argv: list[str], message: str) -> None:
    (tmp_path / "data").mkdir()
    await (await Store.open(tmp_path / "data" / "amr-gateway.sqlite", StoreSettings(), "g1")).close()
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(data=tmp_path / "data"))
    proc = cli(*argv[:2], "-c", str(config), *argv[2:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _out, err_bytes = proc.communicate(timeout=60)
    err = err_bytes.decode()
    assert proc.returncode == 2, err
    assert err.startswith(f"error: {message}"), err
    assert "<config>" not in err, err


def test_ctrl_c_during_scan_exits_130(tmp_path: Path) -> None:
    # A TCP listener that accepts and never answers: a Modbus gateway whose meters are all
    # silent, so the scan is still waiting on its first unit ids when SIGINT comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(30)
        port = silent.getsockname()[1]
        proc = cli("scan", "--tcp", f"127.0.0.1:{port}", "--timeout", "5", "--range", "1-247",
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        conn, _ = silent.accept()              # the scan is connected and has asked (bounded by the timeout)
        with conn:
            proc.send_signal(signal.SIGINT)
            _out, err_bytes = proc.communicate(timeout=30)
    err = err_bytes.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err


@pytest.mark.parametrize(("argv", "message"), [
    (["--serial", "/dev/amr-no-such-port", "--range", "0-5"],
     "error: --range '0-5' is outside 1-247, the unit ids of modbus-rtu"),
    (["--serial", "/dev/amr-no-such-port", "--range", "-5"], "error: --range must look like 1-247 or 1,5,9"),
    (["--tcp", "127.0.0.1:1", "--range", "0-256"],
     "error: --range '0-256' is outside 0-255, the unit ids of modbus-tcp"),
    (["--serial", "/dev/amr-no-such-port", "--protocol", "dlt645", "--range", "12x"],
     "error: DL/T 645 address '12x' is not valid"),
    (["--serial", "/dev/amr-no-such-port", "--protocol", "dlt698", "--range", "5-1"],
     "error: address range 5-1 is empty"),
])
def test_scan_range_is_checked_before_the_bus_is_opened(argv: list[str], message: str) -> None:
    # a port that does not exist and a TCP port nothing listens on would fail differently
    # (exit 1, naming the port): the range is found wrong first
    proc = cli("scan", *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err_bytes = proc.communicate(timeout=60)
    err = err_bytes.decode()
    assert proc.returncode == 2, err
    assert err.startswith(message), err
    assert "amr-no-such-port" not in err and "connection refused" not in err and out == b"", err


SIM_CONFIG = """\
gateway: {{id: g1, timezone: UTC, data_dir: {data}}}
buses: [{{id: rtu, type: serial, port: {tty}, protocol: modbus-rtu, baudrate: 9600, parity: N}}]
meters:
  - {{id: m1, customer: C1, bus: rtu, address: 1, profile: simulator, schedules: [interval]}}
  - {{id: m2, customer: C1, bus: rtu, address: 2, profile: simulator, schedules: [interval]}}
schedules: {{interval: {{every: 15m, points: ["energy_*"]}}}}
"""


def test_ctrl_c_during_scan_prints_what_was_found_and_exits_130(tmp_path: Path) -> None:
    # Units 1 and 2 answer on a simulated RTU line; 3-10 are silent (3 s each), so the scan
    # is waiting on unit 3 when SIGINT comes, with two meters found.
    tty = tmp_path / "ttyRTU"
    config = tmp_path / "gateway.yaml"
    config.write_text(SIM_CONFIG.format(data=tmp_path / "data", tty=tty))
    sim = cli("simulate", "-c", str(config), "--duration", "120", stdout=subprocess.DEVNULL,
              stderr=subprocess.DEVNULL)
    try:
        wait_until(tty.exists, 30, "the simulated line")
        proc = cli("scan", "--serial", str(tty), "--baud", "9600", "--parity", "N", "--range", "1-10",
                   "--timeout", "3", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        os.set_blocking(proc.stderr.fileno(), False)
        progress = bytearray()

        def probed_two() -> bool:
            chunk = proc.stderr.read() if proc.stderr is not None else None
            progress.extend(chunk or b"")
            return b" 2/10" in progress
        wait_until(probed_two, 30, "units 1 and 2 probed", detail=lambda: bytes(progress))
        proc.send_signal(signal.SIGINT)
        out, err_rest = proc.communicate(timeout=30)
    finally:
        sim.terminate()
        sim.wait(30)
    err = (bytes(progress) + (err_rest or b"")).decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert "interrupted: the scan was stopped; 2 unit ids found so far" in err, err
    assert out.decode().splitlines() == ["unit id", "-" * 12, "1", "2"]


def test_simulate_warns_that_a_pty_may_refuse_parity_e(tmp_path: Path) -> None:
    # Linux pseudo-terminals refuse PARENB with EINVAL on some kernels (seen here on a second
    # open), so a simulated line with the Modbus default parity E is warned of at start.
    lines = {}
    for parity in ("E", "N"):
        config = tmp_path / f"gateway-{parity}.yaml"
        config.write_text(SIM_CONFIG.format(data=tmp_path / "data", tty=tmp_path / f"tty{parity}")
                          .replace("parity: N", f"parity: {parity}"))
        proc = cli("simulate", "-c", str(config), "--duration", "1", stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        lines[parity] = [line for line in err.decode().splitlines() if "WARNING" in line]
    assert len(lines["E"]) == 1, lines
    assert lines["E"][0].endswith(
        f"bus rtu: parity E on a simulated line: a pseudo-terminal may refuse even or odd parity (EINVAL) when "
        f"the gateway or `amr-gateway read` opens {tmp_path / 'ttyE'}; set parity: N on this bus while it is "
        "simulated"), lines
    assert lines["N"] == [], lines


@pytest.mark.parametrize("end", ["duration", "SIGTERM", "SIGINT"])
def test_demo_removes_its_temporary_folder_however_it_ends(tmp_path: Path, end: str) -> None:
    tmp = tmp_path / "tmp"              # the demo's temporary folder is made under TMPDIR
    tmp.mkdir()
    argv = ["demo", "--listen", f"127.0.0.1:{free_port()}", "--mqtt", f"127.0.0.1:{free_port()}"]
    if end == "duration":
        argv += ["--duration", "3"]
    env = dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(tmp))
    env.pop("AMR_API_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    seen: list[str] = []
    store = None
    for line in proc.stdout:            # bounded: the banner comes within seconds, then the demo ends or is signalled
        seen.append(line)
        if "local store" in line:
            store = Path(line.split(":", 1)[1].strip())
        if "Press Ctrl-C to stop." in line:
            break
    assert store is not None and store.is_relative_to(tmp), "".join(seen)
    assert any(tmp.iterdir()), "the demo made no temporary folder"
    if end != "duration":
        proc.send_signal(signal.SIGTERM if end == "SIGTERM" else signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert list(tmp.iterdir()) == [], "the demo left its temporary folder behind"


def test_demo_listen_on_a_held_port_says_so_starts_nothing_and_cleans_up(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(tmp))
        proc = subprocess.run([sys.executable, "-m", "gateway.cli", "demo", "--listen", f"127.0.0.1:{port}",
                               "--mqtt", f"127.0.0.1:{free_port()}", "--duration", "30"],
                              env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"error: the demo's API cannot listen on 127.0.0.1:{port}: another program holds that port (another "
        "gateway or demo?); stop it, or give another port in --listen"), proc.stderr
    assert "simulated on" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr  # nothing started
    assert list(tmp.iterdir()) == [], "the demo left its temporary folder behind"


@pytest.mark.parametrize(("argv", "message"), [
    (["--tcp", "127.0.0.1:1", "--unit", "1", "--profile", "dlt645-2007"],
     "error: --profile dlt645-2007 is a dlt645 profile, but this read speaks modbus-tcp, which reads "
     "modbus profiles; give a modbus profile, or --protocol dlt645"),
    (["--serial", "/dev/null", "--protocol", "dlt645", "--address", "123456789012", "--profile", "simulator"],
     "error: --profile simulator is a modbus profile, but this read speaks dlt645, which reads dlt645 "
     "profiles; give a dlt645 profile, or --protocol modbus"),
])
def test_read_with_another_protocols_profile_says_so_before_sending(argv: list[str], message: str) -> None:
    # port 1 and /dev/null would fail differently (refused, not a tty): the mismatch is found first
    proc = cli("read", *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err_bytes = proc.communicate(timeout=60)
    err = err_bytes.decode()
    assert proc.returncode == 2, err
    assert err.startswith(message), err
    assert out == b""


def test_demo_banner_export_hint_exports_the_demo_with_a_clock_in_the_past(tmp_path: Path) -> None:
    # The simulated clock starts months before the wall clock: export's default window (the
    # 24 h before now) would hold nothing; the hint's --from must reach the demo's data.
    data = tmp_path / "demo"
    argv = ["demo", "--listen", f"127.0.0.1:{free_port()}", "--mqtt", f"127.0.0.1:{free_port()}",
            "--clock-start", "2026-01-05T08:00:00+08:00", "--clock-rate", "900", "--duration", "6",
            "--data-dir", str(data)]
    proc = cli(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err.decode()
    hint = next(line for line in out.decode().splitlines() if line.strip().startswith("export"))
    command = hint.split(":", 1)[1].split()
    assert command[:3] == ["amr-gateway", "export", "intervals"], hint
    assert "--from" in command and command[command.index("--from") + 1].startswith("2026-01-05T08:00:00"), hint
    export = cli(*command[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rows, export_err = export.communicate(timeout=60)
    assert export.returncode == 0, export_err.decode()
    lines = rows.decode().splitlines()
    assert len(lines) >= 2 and all("c1001-main" in line for line in lines[1:]), rows.decode()[:500]


def test_read_of_a_missing_serial_port_names_the_option_and_takes_an_address_with_leading_zeros(
        tmp_path: Path) -> None:
    """An ad hoc read's address is text as typed (not YAML: 000000000001 needs no quotes), and
    a serial port that does not exist is named with where it came from (--serial too)."""
    missing = tmp_path / "ttyUSB9"
    proc = cli("read", "--serial", str(missing), "--protocol", "dlt645", "--address", "000000000001",
               "--profile", "dlt645-2007", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err_bytes = proc.communicate(timeout=60)
    err = err_bytes.decode()
    assert proc.returncode != 0 and out == b"", err
    assert "must be quoted" not in err, err
    assert f"serial port {missing} does not exist" in err and "--serial" in err, err
