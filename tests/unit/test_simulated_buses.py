"""Which meters are simulated (their bus ``simulate: true``) and the refusal of the rehearsal
clock options when one is real: the rule ``amr-gateway run --clock-start/--clock-rate`` keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_settings_from_text
from gateway.errors import ConfigError
from gateway.settings import Settings
from gateway.simulated import refuse_real_meters, same_simulation, simulated_part

CONFIG = """\
gateway: {{id: sim, timezone: Asia/Shanghai, data_dir: {data}}}
buses:
  - {{id: sim-tcp, type: tcp, host: {host}, port: 15020, protocol: modbus-tcp, simulate: true}}
  - {{id: plant, type: tcp, host: {plant_host}, port: 502, protocol: modbus-tcp{plant}}}
meters:
{meters}
schedules:
  interval: {{every: 15m, points: ["energy_*"]}}
mqtt: {{enabled: false}}
influxdb: {{enabled: false}}
api: {{enabled: false}}
"""


def load(tmp: Path, *, host: str = "127.0.0.1", plant: str = "", plant_host: str = "10.20.0.15",
         real: int = 1) -> Settings:
    meters = ["  - {id: s1, customer: C1, bus: sim-tcp, address: 1, profile: simulator, schedules: [interval]}"]
    meters += [f"  - {{id: r{i}, customer: C{i}, bus: plant, address: {i}, profile: simulator, schedules: [interval]}}"
               for i in range(1, real + 1)]
    text = CONFIG.format(data=tmp, host=host, plant=plant, plant_host=plant_host, meters="\n".join(meters))
    return load_settings_from_text(text, "gateway.yaml", tmp, {})


def test_a_meter_is_simulated_when_its_bus_is(tmp_path: Path) -> None:
    s = load(tmp_path)
    assert s.simulated_buses == {"sim-tcp"}
    assert s.real_meters() == ["r1"]
    part = simulated_part(s)
    assert part is not None and set(part.buses) == {"sim-tcp"} and set(part.meters) == {"s1"}
    assert set(part.profiles) == {"simulator"}
    assert same_simulation(part, simulated_part(load(tmp_path, real=3)))      # real meters do not matter
    everything = load(tmp_path, plant=", simulate: true", plant_host="localhost", real=2)
    assert everything.real_meters() == [] and not same_simulation(part, simulated_part(everything))
    refuse_real_meters(everything)                                            # nothing to refuse


def test_the_refusal_names_the_real_meters_and_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as one:
        refuse_real_meters(load(tmp_path))
    assert str(one.value).endswith(
        "1 configured meter is real: r1 (bus plant). Mark their buses `simulate: true` to rehearse on "
        "simulators the gateway starts itself, or run without the clock options to read the real meters in "
        "real time")
    with pytest.raises(ConfigError) as many:
        refuse_real_meters(load(tmp_path, real=7))
    assert "7 configured meters are real: r1 (bus plant), r2 (bus plant), r3 (bus plant), r4 (bus plant), " \
           "r5 (bus plant) and 2 more." in str(many.value)


def test_a_simulated_tcp_bus_must_be_on_loopback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, host="192.168.1.10")
    (issue,) = err.value.issues
    assert issue.line == 3
    assert issue.message.startswith('bus "sim-tcp": simulate needs a loopback host')
    assert "host must be 127.0.0.1, localhost or ::1, not 192.168.1.10" in issue.message
