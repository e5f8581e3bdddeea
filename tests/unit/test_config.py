"""Configuration loading: the example, every broken case's exact messages, defaults, secrets.

Broken cases live in ``tests/unit/config_cases/<case>/`` as ``gateway.yaml`` (plus any
profile or secret files the case needs) and ``expected.txt``: one ``file:line: message`` per
issue, in the order reported. Paths in messages are written as ``<case>`` (the case folder)
and ``<shipped>`` (the repository's ``config/profiles``), and the list of available profiles
as ``<profiles>``, so the expectations do not depend on where the checkout lives or on
which profiles have been added since.
"""

from __future__ import annotations

import logging
import os
from datetime import time
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.config import (
    SHIPPED_PROFILES_DIR,
    load_settings,
    load_settings_from_text,
    parse_duration,
    parse_ratio,
    profile_search_dirs,
    validate_command,
)
from gateway.errors import ConfigError
from gateway.profiles import available_profiles
from gateway.settings import Ratio

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "gateway.example.yaml"
CASES = Path(__file__).resolve().parent / "config_cases"
CASE_NAMES = sorted(p.name for p in CASES.iterdir() if (p / "gateway.yaml").is_file())


def _normalised(exc: ConfigError, case: Path) -> list[str]:
    profiles = ", ".join(available_profiles(profile_search_dirs(case)))
    out = []
    for issue in exc.issues:
        message = (issue.message.replace(profiles, "<profiles>")
                   .replace(str(SHIPPED_PROFILES_DIR), "<shipped>")
                   .replace(str(case), "<case>"))
        out.append(f"{os.path.relpath(issue.file, case)}:{issue.line}: {message}")
    return out


def test_there_are_at_least_ten_broken_cases() -> None:
    assert len(CASE_NAMES) >= 10


@pytest.mark.parametrize("case", CASE_NAMES)
def test_broken_case_reports_exact_messages_and_lines(case: str) -> None:
    folder = CASES / case
    expected = (folder / "expected.txt").read_text(encoding="utf-8").splitlines()
    with pytest.raises(ConfigError) as info:
        load_settings(folder / "gateway.yaml", env={})
    assert _normalised(info.value, folder) == expected
    assert all(issue.line is not None for issue in info.value.issues)


# --- the example ---------------------------------------------------------------------------


def test_example_configuration_loads() -> None:
    s = load_settings(EXAMPLE, env={})
    assert s.gateway.id == "sub-110kv-east"
    assert s.gateway.timezone == "Asia/Shanghai"
    assert s.source == EXAMPLE
    assert set(s.buses) == {"rs485-1", "rs485-2", "plant-lan", "feeder-7-server"}
    assert len(s.meters) == 6
    main = s.meters["c0001-main"]
    assert main.address == "000012345678"
    assert main.multiplier == Decimal(4000)
    assert main.schedules == ("realtime", "interval")
    assert main.billing == "three-stage"
    # A meter without schedules is polled on every schedule.
    assert s.meters["c0006-main"].schedules == ("realtime", "interval")
    assert s.meters["c0003-sub"].address == "11"
    assert set(s.profiles) == {"dlt645-2007", "acrel-adl400", "eastron-sdm630", "schneider-iem3000",
                               "chint-dtsu666"}
    assert s.buses["plant-lan"].tcp_port == 502
    assert s.buses["feeder-7-server"].timeout_s == pytest.approx(1.2)
    assert s.schedules["realtime"].priority == "realtime"
    assert s.schedules["interval"].priority == "interval"
    assert s.billing["three-stage"].stages == (11, 21)
    assert s.store.max_bytes == 2 * 10**9
    assert s.api.token is None


def test_validate_command_prints_summary_for_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert validate_command(EXAMPLE) == 0
    assert capsys.readouterr().out.strip() == "OK: 4 buses, 6 meters, 2 schedules"


def test_validate_command_prints_every_issue_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    path = CASES / "serial_settings" / "gateway.yaml"
    assert validate_command(path) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 5
    assert err[0] == (f"{path}:8: bus \"rs485-1\": baudrate 9601 is not a standard rate; use one of "
                      "300, 600, 1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200")


def test_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    [issue] = info.value.issues
    assert issue.file == str(path)
    assert "cannot read the configuration" in issue.message


@pytest.mark.parametrize(("text", "line", "message"), [
    ("", 1, "the file is empty; write the settings as a YAML mapping"),
    ("- a\n- b\n", 1, "the configuration must be a mapping of keys to values, not a list"),
    ("gateway: {id: x}\nbuses: []\nmeters: []\nmeter: []\n", 4,
     'the configuration: unknown key "meter" (did you mean "meters"?); accepted keys are api, billing, '
     "buses, customers, gateway, influxdb, logging, meters, mqtt, profiles_dir, review, schedules, store"),
])
def test_whole_file_problems(text: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings_from_text(text, "inline.yaml", env={})
    assert [(i.file, i.line, i.message) for i in info.value.issues] == [("inline.yaml", line, message)]


# --- defaults ---------------------------------------------------------------------------------

MINIMAL = """\
gateway: {id: gw1}
buses:
  - {id: mb, type: serial, port: /dev/ttyS1, protocol: modbus-rtu}
  - {id: d7, type: serial, port: /dev/ttyS2, protocol: dlt645}
  - {id: d9, type: serial, port: /dev/ttyS3, protocol: dlt645-1997}
  - {id: lan, type: tcp, host: 10.0.0.1, protocol: modbus-tcp}
meters:
  - {id: m1, customer: C1, bus: mb, address: 7, profile: simulator}
schedules:
  fast: {every: 4m}
  slow: {every: 5m}
  odd: {every: 1h30m, aligned: false, offset: 30s}
billing:
  plan: {}
"""


def test_defaults(tmp_path: Path) -> None:
    s = load_settings_from_text(MINIMAL, "gw.yaml", tmp_path, env={})
    mb, d7, d9, lan = (s.buses[k] for k in ("mb", "d7", "d9", "lan"))
    assert (mb.baudrate, mb.parity, mb.stopbits, mb.bytesize, mb.timeout_s) == (9600, "E", 1, 8, 1.0)
    assert (d7.baudrate, d7.timeout_s) == (2400, 1.5)
    assert d9.baudrate == 1200
    assert (lan.tcp_port, lan.concurrency, lan.port) == (502, 1, None)
    assert (mb.retries, mb.inter_frame_s, mb.allow_writes, mb.dead_backoff_s) == (1, None, False, 60.0)
    assert s.schedules["fast"].priority == "realtime"
    assert s.schedules["slow"].priority == "interval"
    assert s.schedules["slow"].points == ("*",)
    odd = s.schedules["odd"]
    assert (odd.every_s, odd.aligned, odd.offset_s) == (5400.0, False, 30.0)
    plan = s.billing["plan"]
    assert (plan.cycle_day, plan.stages, plan.at, plan.tolerance_s) == (1, (), time(0, 0), 900.0)
    m1 = s.meters["m1"]
    assert (m1.address, m1.ct_ratio, m1.pt_ratio, m1.billing) == ("7", Ratio(), Ratio(), None)
    assert m1.schedules == ("fast", "slow", "odd")
    assert s.mqtt is None and s.influxdb is None
    assert (s.api.host, s.api.port, s.api.enabled) == ("127.0.0.1", 8080, True)
    assert s.store.synchronous == "FULL" and s.store.max_bytes is None
    assert s.gateway.timezone == "UTC"
    assert s.gateway.data_dir == Path("/var/lib/amr-gateway")
    assert s.profiles["simulator"].protocol == "modbus"


def test_relative_data_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "gw.yaml"
    path.parent.mkdir()
    path.write_text("gateway: {id: gw1, data_dir: data}\nbuses: []\nmeters: []\n")
    assert load_settings(path, env={}).gateway.data_dir == tmp_path / "etc" / "data"


def test_ratios_and_unquoted_times_keep_their_exact_text(tmp_path: Path) -> None:
    text = MINIMAL.replace("address: 7,", "address: 7, ct_ratio: 200/5, pt_ratio: 10000/100,") \
        .replace("plan: {}", "plan: {cycle_day: 21, stages: [1, 11], at: 12:30, tolerance: 1h}")
    s = load_settings_from_text(text, "gw.yaml", tmp_path, env={})
    assert s.meters["m1"].multiplier == Decimal(4000)
    plan = s.billing["plan"]
    assert (plan.at, plan.stages, plan.tolerance_s) == (time(12, 30), (1, 11), 3600.0)


# --- secrets --------------------------------------------------------------------------------

SECRETS = """\
gateway: {id: gw1}
buses: []
meters: []
mqtt: {username: gw, password_env: MQTT_PW}
influxdb: {token_file: secrets/influx.token}
api: {listen: "0.0.0.0:9000"}
"""


def test_secrets_from_env_and_file(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "influx.token").write_text("  s3cr3t-token\n")
    s = load_settings_from_text(SECRETS, "gw.yaml", tmp_path,
                                env={"MQTT_PW": "pw!", "AMR_API_TOKEN": "api-tok"})
    assert s.mqtt is not None and s.mqtt.password == "pw!" and s.mqtt.username == "gw"
    assert s.influxdb is not None and s.influxdb.token == "s3cr3t-token"
    assert (s.api.host, s.api.port, s.api.token) == ("0.0.0.0", 9000, "api-tok")


def test_secret_problems_name_the_variable_and_the_file(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "influx.token").write_text("\n")
    with pytest.raises(ConfigError) as info:
        load_settings_from_text(SECRETS, "gw.yaml", tmp_path, env={})
    token = tmp_path / "secrets" / "influx.token"
    assert [(i.line, i.message) for i in info.value.issues] == [
        (4, 'mqtt: password_env names the environment variable "MQTT_PW", which is not set or empty; '
            "set it or use password_file"),
        (5, f"influxdb: token_file names {token}, which is empty; put the token in it"),
    ]


def test_api_token_file_and_custom_env(tmp_path: Path) -> None:
    (tmp_path / "api.token").write_text("file-token\n")
    base = "gateway: {id: gw1}\nbuses: []\nmeters: []\n"
    s = load_settings_from_text(base + "api: {token_file: api.token}\n", "gw.yaml", tmp_path,
                                env={"AMR_API_TOKEN": "ignored"})
    assert s.api.token == "file-token"
    s = load_settings_from_text(base + "api: {token_env: MY_TOKEN}\n", "gw.yaml", tmp_path,
                                env={"MY_TOKEN": "mine", "AMR_API_TOKEN": "ignored"})
    assert s.api.token == "mine"


def test_inline_secret_is_accepted_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = "gateway: {id: gw1}\nbuses: []\nmeters: []\napi: {token: inline-tok}\n"
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        s = load_settings_from_text(text, "gw.yaml", tmp_path, env={})
    assert s.api.token == "inline-tok"
    assert "token is written inline" in caplog.text


def test_mqtt_tls_files_are_resolved_and_checked(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    text = ("gateway: {id: gw1}\nbuses: []\nmeters: []\n"
            "mqtt: {tls: {ca_file: ca.pem, cert_file: client.pem}}\n")
    with pytest.raises(ConfigError) as info:
        load_settings_from_text(text, "gw.yaml", tmp_path, env={})
    assert [i.message for i in info.value.issues] == [
        f"mqtt tls: cert_file names {tmp_path / 'client.pem'}, which does not exist; create it or "
        "fix the path",
        "mqtt tls: cert_file and key_file go together; give both or neither",
    ]
    ok = text.replace(", cert_file: client.pem", "")
    mqtt = load_settings_from_text(ok, "gw.yaml", tmp_path, env={}).mqtt
    assert mqtt is not None and mqtt.tls and mqtt.ca_file == str(tmp_path / "ca.pem")


def test_mqtt_protocol_is_5_by_default_and_3_1_1_on_request(tmp_path: Path) -> None:
    base = "gateway: {id: gw1}\nbuses: []\nmeters: []\n"
    default = load_settings_from_text(base + "mqtt: {host: 127.0.0.1}\n", "gw.yaml", tmp_path, env={}).mqtt
    assert default is not None and default.protocol == "5"
    for written, expected in (("3.1.1", "3.1.1"), ("5", "5"), ('"5"', "5")):
        mqtt = load_settings_from_text(base + f"mqtt: {{protocol: {written}}}\n", "gw.yaml", tmp_path, env={}).mqtt
        assert mqtt is not None and mqtt.protocol == expected
    with pytest.raises(ConfigError) as info:
        load_settings_from_text(base + "mqtt: {protocol: 3.1}\n", "gw.yaml", tmp_path, env={})
    assert "must be one of 5, 3.1.1" in info.value.issues[0].message


# --- profile lookup -------------------------------------------------------------------------


def _profile(name: str, description: str) -> str:
    return (f"name: {name}\nprotocol: modbus\ndescription: {description}\n"
            "points:\n  energy_import_kwh: {address: 0, type: u32, scale: 0.01}\n")


def test_profile_lookup_order(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "simulator.yaml").write_text(_profile("simulator", "beside the config"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "simulator.yaml").write_text(_profile("simulator", "profiles_dir"))
    s = load_settings_from_text(MINIMAL, "gw.yaml", tmp_path, env={})
    assert s.profiles["simulator"].description == "beside the config"
    s = load_settings_from_text("profiles_dir: mine\n" + MINIMAL, "gw.yaml", tmp_path, env={})
    assert s.profiles["simulator"].description == "profiles_dir"
    (tmp_path / "profiles" / "simulator.yaml").unlink()
    s = load_settings_from_text(MINIMAL, "gw.yaml", tmp_path, env={})
    assert s.profiles["simulator"].source == str(SHIPPED_PROFILES_DIR / "simulator.yaml")


# --- helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("15m", Decimal(900)), ("1h", Decimal(3600)), ("30s", Decimal(30)), ("1d", Decimal(86400)),
    ("1h30m", Decimal(5400)), ("500ms", Decimal("0.5")),
])
def test_parse_duration(text: str, seconds: Decimal) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "15", "m", "15 minutes", "1h-5m", "1.5.0s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("text", "factor"), [
    ("200/5", Decimal(40)), ("40", Decimal(40)), ("10000/100", Decimal(100)), ("1.5", Decimal("1.5")),
])
def test_parse_ratio(text: str, factor: Decimal) -> None:
    assert parse_ratio(text).factor == factor


@pytest.mark.parametrize("text", ["200/0", "0", "abc", "200:5", "1/2/3", "/5", "-40"])
def test_parse_ratio_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ratio(text)


def test_duplicate_meter_id_is_found_even_when_the_first_is_otherwise_broken(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "  - {id: m1, customer: C1, bus: mb, address: 7, profile: simulator}\n",
        "  - {id: m1, customer: C1, bus: mb, address: 999, profile: simulator}\n"
        "  - {id: m1, customer: C2, bus: mb, address: 8, profile: simulator}\n")
    with pytest.raises(ConfigError) as info:
        load_settings_from_text(text, "gw.yaml", tmp_path, env={})
    assert [(i.line, i.message) for i in info.value.issues] == [
        (8, 'meter "m1": address must be a Modbus unit id between 1 and 247, not "999"'),
        (9, 'meter id "m1" is already used on line 8; give each meter a unique id'),
    ]


def test_missing_gateway_section_is_reported_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings_from_text("buses: []\nmeters: []\n", "gw.yaml", env={})
    assert [(i.line, i.message) for i in info.value.issues] == [
        (1, 'the configuration: the required key "gateway" is missing; add it (with at least id)'),
    ]


def test_relative_config_path_resolves_profiles_and_data_dir(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc" / "profiles").mkdir(parents=True)
    (tmp_path / "etc" / "profiles" / "simulator.yaml").write_text(_profile("simulator", "local"))
    (tmp_path / "etc" / "gw.yaml").write_text(MINIMAL.replace("{id: gw1}", "{id: gw1, data_dir: db}"))
    monkeypatch.chdir(tmp_path)
    s = load_settings(Path("etc/gw.yaml"), env={})
    assert s.profiles["simulator"].description == "local"
    assert s.gateway.data_dir == tmp_path / "etc" / "db"
    assert profile_search_dirs(Path("etc"))[0] == tmp_path / "etc" / "profiles"


# --- influxdb.client ------------------------------------------------------------------------

INFLUX_BASE = "gateway: {id: gw1}\nbuses: []\nmeters: []\ninfluxdb:\n  url: http://127.0.0.1:8086\n"


def test_influxdb_client_defaults_to_builtin_and_accepts_influxdb_client() -> None:
    s = load_settings_from_text(INFLUX_BASE, "gw.yaml", env={})
    assert s.influxdb is not None and s.influxdb.client == "builtin"
    s = load_settings_from_text(INFLUX_BASE + "  client: influxdb-client\n", "gw.yaml", env={})
    assert s.influxdb is not None and s.influxdb.client == "influxdb-client"


def test_influxdb_client_bad_value_names_its_line_and_the_choices() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings_from_text(INFLUX_BASE + "  token: x\n  client: influxdb_client\n", "gw.yaml", env={})
    assert [(i.line, i.message) for i in info.value.issues] == [
        (7, 'influxdb: client must be one of builtin, influxdb-client, not "influxdb_client" '
            '(did you mean "influxdb-client"?)'),
    ]


def test_two_names_of_one_serial_device_are_one_port(tmp_path: Path) -> None:
    # a /dev/serial/by-id link and the ttyUSB it points at: one adapter, one RS-485 line
    device = tmp_path / "ttyUSB0"
    device.touch()
    by_id = tmp_path / "usb-FTDI_FT232R_A10K1234-if00-port0"
    by_id.symlink_to(device)
    text = (f"gateway: {{id: g1}}\nbuses:\n"
            f"  - {{id: rs485-1, type: serial, port: {device}, protocol: modbus-rtu}}\n"
            f"  - {{id: rs485-2, type: serial, port: {by_id}, protocol: dlt645}}\n"
            "meters: []\nschedules: {interval: {every: 15m}}\n")
    with pytest.raises(ConfigError) as err:
        load_settings_from_text(text, name="g.yaml", env={})
    assert [(i.line, i.message) for i in err.value.issues] == [
        (4, f'bus "rs485-2": port {by_id} is a link to {device}, the port of bus "rs485-1" '
            '(line 3); bus "rs485-1" and bus "rs485-2" cannot share one serial line: give each bus its own '
            "port, or put all the meters of that line on one bus")]
    # simulated buses are taken as written: their links are the simulator's own
    simulated = text.replace("protocol: modbus-rtu}", "protocol: modbus-rtu, simulate: true}").replace(
        "protocol: dlt645}", "protocol: dlt645, simulate: true}")
    assert set(load_settings_from_text(simulated, name="g.yaml", env={}).buses) == {"rs485-1", "rs485-2"}
