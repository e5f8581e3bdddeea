"""``amr-gateway demo``: the whole gateway on built-in simulated meters, no file needed.

Nine simulated meters on five kinds of bus — Modbus TCP (three meters, two profiles),
Modbus RTU on a virtual serial line (two meters), DL/T 645-2007 on a virtual serial line
(two meters), DL/T 645 over TCP (one) and DL/T 698.45 on a virtual serial line (one) —
several with CT/PT ratios, a three-stage billing plan, the local store in a temporary
folder, the HTTP API on 127.0.0.1:8080, and MQTT on localhost:1883 whenever a broker
answers (readings spool in the store otherwise).
``--clock-start``/``--clock-rate`` run simulated time faster so a billing boundary passes
in seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from gateway.aio import wait_event
from gateway.clock import ScaledClock
from gateway.errors import TransportError
from gateway.ports import free_port, listen_problem

if TYPE_CHECKING:
    from gateway.model import Reading
    from gateway.polling import MeterRuntime

log = logging.getLogger("amr.demo")

DEMO_CONFIG = """\
# The demo's embedded configuration (ports and serial paths are filled in at start).
gateway:
  id: demo-gateway
  timezone: Asia/Shanghai
  data_dir: {data_dir}
buses:
  - {{id: tcp-c1001, type: tcp, host: 127.0.0.1, port: {port_c1001}, protocol: modbus-tcp, timeout_ms: 1000}}
  - {{id: tcp-c1002, type: tcp, host: 127.0.0.1, port: {port_c1002}, protocol: modbus-tcp, timeout_ms: 1000}}
  - {{id: tcp-c1003, type: tcp, host: 127.0.0.1, port: {port_c1003}, protocol: modbus-tcp, timeout_ms: 1000}}
  - id: rs485-modbus
    type: serial
    port: {tty_modbus}
    protocol: modbus-rtu
    baudrate: 9600
    parity: N          # a virtual (pty) line rejects even parity; real lines use E
    timeout_ms: 500
  - id: rs485-dlt645
    type: serial
    port: {tty_dlt645}
    protocol: dlt645
    baudrate: 2400
    parity: N
    timeout_ms: 800
  - {{id: tcp-dlt645, type: tcp, host: 127.0.0.1, port: {port_dlt645}, protocol: dlt645, timeout_ms: 800}}
  - id: rs485-dlt698
    type: serial
    port: {tty_dlt698}
    protocol: dlt698
    baudrate: 9600
    parity: N
    timeout_ms: 800
meters:
  - {{id: c1001-main, customer: C1001, bus: tcp-c1001, address: 1, profile: simulator,
     ct_ratio: 200/5, pt_ratio: 10000/100, schedules: [realtime, interval], billing: three-stage}}
  - {{id: c1002-main, customer: C1002, bus: tcp-c1002, address: 1, profile: simulator,
     schedules: [realtime, interval], billing: three-stage}}
  - {{id: c1003-sub, customer: C1003, bus: tcp-c1003, address: 1, profile: chint-dtsu666,
     schedules: [realtime, interval]}}
  - {{id: c1004-main, customer: C1004, bus: rs485-modbus, address: 1, profile: simulator,
     ct_ratio: 100/5, schedules: [realtime, interval], billing: three-stage}}
  - {{id: c1005-sub, customer: C1004, bus: rs485-modbus, address: 2, profile: acrel-adl400,
     ct_ratio: 50/5, schedules: [realtime, interval]}}
  - {{id: c2001-main, customer: C2001, bus: rs485-dlt645, address: "000000000001", profile: dlt645-2007,
     ct_ratio: 300/5, pt_ratio: 10000/100, schedules: [realtime, interval], billing: three-stage}}
  - {{id: c2002-main, customer: C2002, bus: rs485-dlt645, address: "000000000002", profile: dlt645-2007,
     ct_ratio: 150/5, pt_ratio: 10000/100, schedules: [realtime, interval], billing: three-stage}}
  - {{id: c2003-main, customer: C2003, bus: tcp-dlt645, address: "000000000003", profile: dlt645-2007,
     ct_ratio: 400/5, pt_ratio: 35000/100, schedules: [realtime, interval], billing: three-stage}}
  - {{id: c3001-main, customer: C3001, bus: rs485-dlt698, address: "000039200933", profile: dlt698-3phase,
     ct_ratio: 200/5, pt_ratio: 10000/100, schedules: [realtime, interval], billing: three-stage}}
schedules:
  realtime: {{every: 10s, points: ["power_*", "voltage_*", "current_*", "power_factor", "frequency_hz"]}}
  interval: {{every: 15m, points: ["energy_*", "demand_*"]}}
billing:
  three-stage: {{cycle_day: 1, stages: [11, 21], at: "00:00", tolerance: 15m}}
mqtt: {{host: {mqtt_host}, port: {mqtt_port}, topic_prefix: amr}}
influxdb: {{enabled: false}}
api: {{listen: "{api_host}:{api_port}"}}
store: {{synchronous: NORMAL, commit_interval_ms: 100}}
"""


#: the points a demo reading line shows, the first one the reading has
SHOWN_POINTS = ("energy_import_kwh", "power_kw")


def reading_line(reading: Reading, tz: str) -> str:
    """One committed-to-be reading as a console line, so a newcomer sees the gateway work."""
    at = datetime.fromtimestamp(reading.slot, ZoneInfo(tz)).strftime("%H:%M:%S")
    shown = ""
    for name in SHOWN_POINTS:
        p = reading.points.get(name)
        if p is not None and p.quality == "good" and p.value is not None:
            shown = f"  {name}={p.value} {p.unit}".rstrip()
            break
    problem = f"  ({reading.error})" if reading.error else ""
    return f"reading {at}  {reading.meter:<12} {reading.schedule:<8} {reading.quality}{shown}{problem}"


def demo_config_text(data_dir: Path, *, api_host: str = "127.0.0.1", api_port: int = 8080,
                     mqtt: tuple[str, int] = ("127.0.0.1", 1883)) -> str:
    """The demo configuration with fresh loopback ports and serial link paths under data_dir."""
    return DEMO_CONFIG.format(
        data_dir=data_dir, port_c1001=free_port(), port_c1002=free_port(), port_c1003=free_port(),
        port_dlt645=free_port(), tty_modbus=data_dir / "ttyMODBUS", tty_dlt645=data_dir / "ttyDLT645",
        tty_dlt698=data_dir / "ttyDLT698",
        mqtt_host=mqtt[0], mqtt_port=mqtt[1], api_host=api_host, api_port=api_port,
    )


def demo_token(data_dir: Path) -> str:
    """A fresh admin token in the demo's token file, for the banner (never logged)."""
    import time

    from gateway.model import iso_utc
    from gateway.tokens import Role, TokenFile

    token, _ = TokenFile(data_dir).add("demo", Role.ADMIN, iso_utc(time.time()))
    return token


async def run_demo(*, clock_start: float | None, clock_rate: float, api_host: str, api_port: int,
                   data_dir: Path | None, mqtt: tuple[str, int], duration: float | None) -> int:
    """Start simulators and the gateway; print where to look; run until Ctrl-C, SIGTERM or
    ``duration``. Without ``data_dir`` the demo works in a temporary folder that it removes
    when it stops, however it stops."""
    temporary = data_dir is None
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="amr-demo-"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):      # from here on a signal stops the demo cleanly
        loop.add_signal_handler(sig, stop.set)
    try:
        return await _run_demo_in(data_dir.resolve(), temporary, stop, clock_start=clock_start,
                                  clock_rate=clock_rate, api_host=api_host, api_port=api_port,
                                  mqtt=mqtt, duration=duration)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if temporary:
            # the demo's own folder (store, token file, config): nothing of it outlives the demo
            shutil.rmtree(data_dir, ignore_errors=True)


def _bind_api(host: str, port: int) -> socket.socket:
    """The API's listening socket on ``--listen``, or a TransportError saying what to change."""
    from gateway.api.server import bind_listener

    try:
        return bind_listener(host, port)
    except OSError as exc:
        raise TransportError(f"the demo's API {listen_problem(host, port, exc, '--listen')}") from exc


async def _run_demo_in(data_dir: Path, temporary: bool, stop: asyncio.Event, *, clock_start: float | None,
                       clock_rate: float, api_host: str, api_port: int, mqtt: tuple[str, int],
                       duration: float | None) -> int:
    """The demo in ``data_dir`` until ``stop`` is set or ``duration`` real seconds pass."""
    from gateway.config import load_settings_from_text
    from gateway.runtime import Gateway
    from gateway.simulator.fleet import SimulatedFleet

    os.makedirs(data_dir, exist_ok=True)
    token = os.environ.get("AMR_API_TOKEN") or demo_token(data_dir)
    env = dict(os.environ, AMR_API_TOKEN=token) if "AMR_API_TOKEN" in os.environ else dict(os.environ)
    text = demo_config_text(data_dir, api_host=api_host, api_port=api_port, mqtt=mqtt)
    # kept beside the store so `amr-gateway export -c DATA_DIR/demo-config.yaml` works afterwards
    (data_dir / "demo-config.yaml").write_text(text)
    settings = load_settings_from_text(text, "<demo>", data_dir, env)
    clock = ScaledClock(clock_start, clock_rate)
    listener = _bind_api(api_host, api_port)     # before anything starts: a taken port is said at once
    try:
        fleet = SimulatedFleet(settings, clock, seed=7)
        await fleet.start()
        gw = Gateway(settings, clock)
        try:
            await gw.prepare(listener=listener)  # the API serves a duplicate of it
            await gw.start()
        except BaseException:
            await fleet.stop()
            raise
    finally:
        listener.close()
    api = f"http://{api_host}:{gw.api.port if gw.api else api_port}"
    tz = settings.gateway.timezone

    # --from the simulated start: export's default window ends at the wall clock's "now", so a
    # demo clock set in the past would otherwise export nothing
    since = clock.now().astimezone(ZoneInfo(tz)).replace(minute=0, second=0, microsecond=0).isoformat(
        timespec="seconds")
    export_hint = (f"amr-gateway export intervals -c {data_dir / 'demo-config.yaml'} --meter c1001-main"
                   f" --from {since}")
    keep = ("\n                    (while the demo runs: its temporary folder is removed when it stops;"
            " --data-dir keeps it)" if temporary else "")

    def show(_meter: MeterRuntime, reading: Reading) -> None:
        print(reading_line(reading, tz), flush=True)

    gw.observers.append(show)
    print(
        f"""
amr-gateway demo is running: {len(settings.meters)} simulated meters on {len(settings.buses)} buses.
  simulated clock : {clock.now().isoformat(timespec='seconds')} at {clock_rate:g}x
  local store     : {gw.store_path}
  API token       : {token}
  health          : curl {api}/api/v1/health
  meters          : curl -H 'Authorization: Bearer {token}' {api}/api/v1/meters
  readings        : curl -H 'Authorization: Bearer {token}' {api}/api/v1/meters/c1001-main/readings
  intervals       : curl -H 'Authorization: Bearer {token}' '{api}/api/v1/meters/c1001-main/intervals?step=15m'
  settlements     : curl -H 'Authorization: Bearer {token}' {api}/api/v1/meters/c2001-main/settlements
  export          : {export_hint}{keep}
  MQTT            : mosquitto_sub -h {mqtt[0]} -p {mqtt[1]} -t 'amr/#' -v   (spooled while no broker answers)
Readings are printed below as they are taken (realtime every 10 s, energy every 15 min).
Press Ctrl-C to stop.
""",
        flush=True,
    )
    try:
        if duration is not None:
            await wait_event(stop, duration)
        else:
            await stop.wait()
    finally:
        print("stopping…", file=sys.stderr, flush=True)
        await gw.stop()
        await fleet.stop()
    return 0
