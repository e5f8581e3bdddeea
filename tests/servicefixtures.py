"""Real peers for the delivery tests: mosquitto and VictoriaMetrics on loopback.

Two kinds of peer:

* the **shared services** that ``scripts/ensure-services.sh`` starts (mosquitto on
  127.0.0.1:1883, VictoriaMetrics on 127.0.0.1:8428; ``AMR_TEST_MQTT`` and
  ``AMR_TEST_INFLUX_URL`` move them, for the script and the tests alike). The fixtures ``mosquitto`` and
  ``victoria_metrics`` check they answer and **fail** the test loudly when they do not
  (never skip: a delivery test that silently does not run proves nothing);
* **private instances** (:class:`MosquittoProcess`, :class:`VictoriaProcess`) on a free
  loopback port in a temporary directory, for the tests that stop and restart a peer.

Also: :class:`Subscriber` (an independent MQTT consumer, QoS 1, optionally a persistent
session) and :func:`vm_export` (what the TSDB really holds).

**Waiting**: :func:`wait_until` (sync) and :func:`await_until` (async) are the tests' one
wait helper: poll a condition, bounded in time, and fail naming what was awaited. A test
waits for the event it needs, never for a guessed duration; a sleep that *is* the scenario
(time passing on purpose) says so in a comment.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from zoneinfo import ZoneInfo

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from drivers.dlt645.simulator import Dlt645Simulator, SimDlt645Spec
from gateway.errors import SinkError
from gateway.model import PointValue, Reading
from gateway.ports import free_port
from gateway.settings import BusSettings
from gateway.store import Store

# One variable per shared service, read by scripts/ensure-services.sh as well.
_MQTT_HOST, _, _MQTT_PORT = os.environ.get("AMR_TEST_MQTT", "127.0.0.1:1883").rpartition(":")
MOSQUITTO_HOST = _MQTT_HOST or "127.0.0.1"
MOSQUITTO_PORT = int(_MQTT_PORT)
VM_URL = os.environ.get("AMR_TEST_INFLUX_URL", "http://127.0.0.1:8428").rstrip("/")
T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]
#: ``amr-gateway`` from this checkout (run with :func:`cli_env`).
CLI = (sys.executable, "-m", "gateway.cli")
START_HINT = "run `bash scripts/ensure-services.sh start` (as root) or `make services` first"


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _timed_out(timeout: float, what: str, detail: Callable[[], object] | None) -> NoReturn:
    seen = f" (at the deadline: {detail()})" if detail is not None else ""
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}{seen}")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, *, step: float = 0.05,
               detail: Callable[[], object] | None = None) -> T:
    """The tests' one way to wait for something to happen (sync side; see :func:`await_until`).

    Checks ``predicate()`` for at most ``timeout`` seconds (and once more at the deadline)
    and returns its first truthy value; otherwise fails the test with "timed out after …
    waiting for ``what``", plus ``detail()`` — what the test saw — when given. Never a bare
    sleep: the wait ends as soon as the condition holds. The checks come every ``step`` real
    seconds, the first few sooner (:func:`check_delays`): most waits are over within
    milliseconds, and a suite of hundreds of them should not pay a whole step for each.
    """
    deadline = time.monotonic() + timeout
    for delay in check_delays(step):
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            _timed_out(timeout, what, detail)
        time.sleep(delay)
    raise AssertionError("unreachable: check_delays never ends")


def check_delays(step: float) -> Iterator[float]:
    """The pauses between a wait's checks: ``step``/16, doubling up to ``step``, then
    ``step`` for ever (a predicate that costs something, such as a command in a container,
    is called only four times more than at a fixed ``step``)."""
    delay = step / 16
    while delay < step:
        yield delay
        delay *= 2
    while True:
        yield step


async def await_until(predicate: Callable[[], T], timeout: float, what: str, *, step: float = 0.05,
                      detail: Callable[[], object] | None = None) -> T:
    """:func:`wait_until` for async tests: the same semantics, and it sleeps without blocking
    the event loop (so the code under test runs while the test waits)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for delay in check_delays(step):
        value = predicate()
        if value:
            return value
        if loop.time() >= deadline:
            _timed_out(timeout, what, detail)
        await asyncio.sleep(delay)
    raise AssertionError("unreachable: check_delays never ends")


class StillClock:
    """A clock that stands still (tests move ``t`` by hand; sleeps advance it at once), so
    every value a simulator serves is exactly predictable."""

    rate = 1.0

    def __init__(self, t: float, timezone: str = "UTC") -> None:
        self.t = t
        self.zone = ZoneInfo(timezone)

    def time(self) -> float:
        """The standing time."""
        return self.t

    def now(self) -> datetime:
        """The standing time in the clock's zone."""
        return datetime.fromtimestamp(self.t, self.zone)

    async def sleep_until(self, epoch: float) -> None:
        """Move to ``epoch`` (never back)."""
        self.t = max(self.t, epoch)

    async def sleep(self, seconds: float) -> None:
        """Move on ``seconds``."""
        self.t += seconds


@contextlib.asynccontextmanager
async def still_dlt645_simulator(
    specs: list[SimDlt645Spec], at: float, timezone: str
) -> AsyncIterator[Dlt645Simulator]:
    """A started DL/T 645 simulator whose clock stands at ``at`` (stopped on the way out)."""
    simulator = Dlt645Simulator(specs, clock=StillClock(at, timezone), timezone=timezone)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


def dlt645_bus(simulator: Dlt645Simulator, meter_id: str, bus_id: str = "sim-dlt645",
               **overrides: object) -> BusSettings:
    """A BusSettings that reaches ``meter_id`` of ``simulator`` (pty: 2400 baud parity N; or TCP)."""
    ep = simulator.endpoint(meter_id)
    base: dict[str, object] = {"id": bus_id, "protocol": simulator.spec(meter_id).protocol}
    if ep.kind == "pty":
        base.update(type="serial", port=ep.path, baudrate=2400, parity="N")
    else:
        base.update(type="tcp", host=ep.host, tcp_port=ep.port)
    base.update(overrides)
    return BusSettings(**base)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- shared services
@dataclass(frozen=True)

class Broker:
    """Where an MQTT broker listens."""

    host: str
    port: int


@pytest.fixture(name="mosquitto", scope="session")
def _mosquitto_fixture() -> Broker:
    """The shared mosquitto on 127.0.0.1:1883; fails (not skips) when it does not answer."""
    if not port_open(MOSQUITTO_HOST, MOSQUITTO_PORT):
        pytest.fail(f"mosquitto does not answer on {MOSQUITTO_HOST}:{MOSQUITTO_PORT}; {START_HINT}")
    return Broker(MOSQUITTO_HOST, MOSQUITTO_PORT)


@pytest.fixture(name="victoria_metrics", scope="session")
def _victoria_fixture() -> str:
    """The shared VictoriaMetrics base URL; fails (not skips) when it does not answer."""
    try:
        with urllib.request.urlopen(f"{VM_URL}/health", timeout=3) as resp:
            ok = resp.status == 200
    except (OSError, urllib.error.URLError):
        ok = False
    if not ok:
        pytest.fail(f"VictoriaMetrics does not answer at {VM_URL}; {START_HINT}")
    return VM_URL


# --------------------------------------------------------------------------- private instances
def _binary(name: str, *candidates: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for c in candidates:
        if Path(c).exists():
            return c
    pytest.fail(f"{name} is not installed; {START_HINT} (it installs the Debian package)")


class MosquittoProcess:
    """A private mosquitto on a free loopback port, with persistence, that can be stopped.

    ``max_queued_messages 0`` (no limit) so a persistent subscriber that is away during a
    replay loses nothing to the broker's default queue cap of 1000; persistence so a
    restart keeps persistent sessions and their queued messages.
    """

    def __init__(self, workdir: Path, port: int | None = None, extra_conf: str = "") -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.host = "127.0.0.1"
        self.binary = _binary("mosquitto", "/usr/sbin/mosquitto")
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"user {getpass.getuser()}\n"   # as root, mosquitto would switch to "mosquitto" and lose the tmp dir
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 0\n"
            "max_inflight_messages 100\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n" + extra_conf
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "mosquitto.log"

    @property
    def broker(self) -> Broker:
        """This broker's address."""
        return Broker(self.host, self.port)

    def start(self, timeout: float = 10.0) -> None:
        """Start it and wait (bounded) until it accepts connections."""
        if self.proc is not None and self.proc.poll() is None:
            return
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=logf, stderr=logf)
        proc = self.proc

        def listening() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"mosquitto exited at start ({proc.returncode}): {self.log.read_text()[-2000:]}")
            return port_open(self.host, self.port, 0.2)

        wait_until(listening, timeout, f"mosquitto listening on {self.port}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop it gracefully (SIGTERM: it saves its persistence file) and wait."""
        stop_process(self.proc, signal.SIGTERM, timeout)
        self.proc = None


class VictoriaProcess:
    """A private VictoriaMetrics on a free loopback port with its own data directory."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.binary = _binary("victoria-metrics", "/usr/bin/victoria-metrics")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "vm.log"

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        """Start it and wait (bounded) until /health answers."""
        if self.proc is not None and self.proc.poll() is None:
            return
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [self.binary, f"-httpListenAddr=127.0.0.1:{self.port}",
                 f"-storageDataPath={self.workdir / 'data'}", "-retentionPeriod=100y",
                 "-loggerLevel=ERROR", "-search.disableCache"],
                stdout=logf, stderr=logf,
            )
        proc = self.proc

        def healthy() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"victoria-metrics exited at start: {self.log.read_text()[-2000:]}")
            return vm_healthy(self.url)

        wait_until(healthy, timeout, f"victoria-metrics answering /health on {self.port}", step=0.1)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop it gracefully (SIGINT flushes its data) and wait."""
        stop_process(self.proc, signal.SIGINT, timeout)
        self.proc = None


@pytest.fixture
def private_mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """A started private mosquitto, stopped after the test."""
    m = MosquittoProcess(tmp_path / "mosquitto")
    m.start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def private_victoria(tmp_path: Path) -> Iterator[VictoriaProcess]:
    """A started private VictoriaMetrics, stopped after the test."""
    v = VictoriaProcess(tmp_path / "vm")
    v.start()
    try:
        yield v
    finally:
        v.stop()


# --------------------------------------------------------------------------- VictoriaMetrics reads
def vm_healthy(url: str) -> bool:
    """True when VictoriaMetrics answers /health."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def vm_export(url: str, match: str) -> list[dict[str, Any]]:
    """Every series matching ``match`` (a series selector) with all its samples, after a flush."""
    with contextlib.suppress(OSError, urllib.error.URLError):
        urllib.request.urlopen(f"{url}/internal/force_flush", timeout=10).close()
    data = urllib.parse.urlencode({"match[]": match}).encode()
    with urllib.request.urlopen(f"{url}/api/v1/export", data=data, timeout=30) as resp:
        text = resp.read().decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def vm_seqs(url: str, measurement: str, gateway: str) -> dict[int, dict[str, Any]]:
    """seq → {labels, timestamp} from the ``<measurement>_seq`` series of one gateway."""
    out: dict[int, dict[str, Any]] = {}
    for series in vm_export(url, f'{{__name__="{measurement}_seq",gateway="{gateway}"}}'):
        for value, ts in zip(series["values"], series["timestamps"], strict=True):
            out[int(value)] = {"labels": series["metric"], "ts_ms": ts}
    return out


# --------------------------------------------------------------------------- MQTT consumer
@dataclass(frozen=True)
class Message:
    """One received MQTT message."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool = False
    """The broker's DUP flag: a QoS 1 redelivery *by the broker* (e.g. of what was in flight
    to a persistent subscriber when it restarted), not a resend by the publisher."""

    def json(self) -> Any:
        """The payload parsed as JSON."""
        return json.loads(self.payload)


class Outcomes:
    """A reporter that records what the sink reports (the runner's part, for one session):
    delivered seqs in ``ok``, rejected batches with their reason in ``bad``, broken sessions
    in ``errors``."""

    def __init__(self) -> None:
        self.ok: list[int] = []
        self.bad: list[tuple[list[int], str]] = []
        self.errors: list[SinkError] = []

    def delivered(self, seqs: Iterable[int]) -> None:
        self.ok.extend(seqs)

    def rejected(self, seqs: Sequence[int], reason: str) -> None:
        self.bad.append((list(seqs), reason))

    def broken(self, error: SinkError) -> None:
        self.errors.append(error)


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One MQTT control packet: its first header byte and everything after the length."""
    header = (await reader.readexactly(1))[0]
    length = 0
    for shift in range(0, 28, 7):                  # remaining length: at most four bytes
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
    return header, await reader.readexactly(length)


class MuteBroker:
    """A local TCP server that plays a broker mosquitto never is: it answers CONNECT with an
    accepted CONNACK (MQTT 5 or 3.1.1, as the client asked), acknowledges the first ``acks``
    PUBLISH packets (by default 1: the sink's birth message, which the sink waits for), and
    then reads and ignores everything — no PUBACK, no PINGRESP.

    ``async with MuteBroker() as broker:`` listens on a free loopback port (``broker.port``);
    ``connections`` counts sessions, ``received`` is set once anything follows the CONNECT.
    On exit every connection is closed and awaited, so no stream is left for the collector.
    """

    def __init__(self, acks: int = 1) -> None:
        self.acks = acks
        self.connections = 0
        self.received = asyncio.Event()
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        _, connect = await _read_packet(reader)
        level = connect[6]                         # after the protocol name b"\x00\x04MQTT"
        # CONNACK accepted (MQTT 5 adds an empty property list)
        writer.write(b"\x20\x03\x00\x00\x00" if level == 5 else b"\x20\x02\x00\x00")
        await writer.drain()
        for _ in range(self.acks):                 # the birth message first
            header, publish = await _read_packet(reader)
            self.received.set()
            if header & 0xF6 == 0x32:              # PUBLISH at QoS 1: PUBACK it
                topic_len = int.from_bytes(publish[:2], "big")
                writer.write(b"\x40\x02" + publish[2 + topic_len:4 + topic_len])
                await writer.drain()
        while await reader.read(65536):
            self.received.set()
        writer.close()

    async def __aenter__(self) -> MuteBroker:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()
        await self._server.wait_closed()


class Subscriber:
    """An independent MQTT consumer (paho in its own thread): QoS 1, reconnects by itself.

    ``persistent=True`` connects with clean_session=False under a fixed client id, so the
    broker keeps the subscription and queues QoS 1 messages while it is away.
    """

    def __init__(self, broker: Broker, topic: str, client_id: str, *, persistent: bool = False) -> None:
        self.broker = broker
        self.topic = topic
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.connects = 0
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=not persistent, protocol=paho.MQTTv311)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connects += 1
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), bool(msg.dup)))

    def start(self, timeout: float = 10.0) -> Subscriber:
        """Connect, subscribe, and wait (bounded) for the SUBACK."""
        self.client.connect(self.broker.host, self.broker.port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            pytest.fail(f"subscriber could not subscribe to {self.topic} within {timeout:g} s")
        return self

    def stop(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()

    def snapshot(self) -> list[Message]:
        """The messages received so far, in arrival order."""
        with self._lock:
            return list(self.messages)

    def received(self, predicate: Callable[[list[Message]], bool]) -> list[Message] | None:
        """The messages so far when ``predicate(messages)`` holds, else None: the condition
        to hand :func:`await_until`/:func:`wait_until`, which then return the messages."""
        msgs = self.snapshot()
        return msgs if predicate(msgs) else None

    def summary(self) -> str:
        """How many messages arrived (the ``detail`` of a wait on this subscriber)."""
        return f"{len(self.snapshot())} messages received on {self.topic}"

    def seqs(self, suffix: str = "/reading", *, broker_redeliveries: bool = True) -> list[int]:
        """The ``seq`` of every message whose topic ends with ``suffix``, in arrival order
        (status messages and retained copies left out; with ``broker_redeliveries=False``
        also the broker's own DUP redeliveries, to see what the publisher sent)."""
        return [m.json()["seq"] for m in self.snapshot()
                if m.topic.endswith(suffix) and not m.topic.endswith("/status") and not m.retain
                and (broker_redeliveries or not m.dup)]


# --------------------------------------------------------------------------- readings
def make_reading(meter: str = "m1", ts: float | None = None, kwh: str = "1234.5", *,
                 customer: str = "C0001", bus: str = "rs485-1", failed_point: bool = False) -> Reading:
    """A small reading: an exact energy register, a power value, optionally a failed point."""
    t = time.time() if ts is None else ts
    points = {
        "energy_import_kwh": PointValue(Decimal(kwh), Decimal(kwh) * 40, "kWh"),
        "power_kw": PointValue(Decimal("2.5"), Decimal("100.0"), "kW"),
    }
    if failed_point:
        points["voltage_v_l1"] = PointValue(None, None, "V", "timeout", "no reply within 800 ms")
    return Reading(meter=meter, customer=customer, bus=bus, schedule="interval", slot=t - t % 60, ts=t,
                   points=points, ct=Decimal(40))


async def commit(store: Store, readings: list[Reading]) -> list[int]:
    """Commit readings now (submit each, then flush: no group-commit wait) and return their seqs."""
    futures = [store.submit(r) for r in readings]
    await store.flush()
    return [seq for f in futures for seq in await f]


def stop_process(proc: subprocess.Popen[Any] | None, sig: int, timeout: float) -> None:
    """Send ``sig`` and wait (bounded); kill what does not stop in time."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def cli_env() -> dict[str, str]:
    """The environment for :data:`CLI` processes: this one, with the checkout importable."""
    return dict(os.environ, PYTHONPATH=str(REPO))


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``amr-gateway ARGS`` as a process (bounded by ``timeout``): its exit code and output."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=cli_env(), check=False)


@contextlib.contextmanager
def simulating(config: Path, duration_s: int = 90, ready_s: float = 30.0) -> Iterator[subprocess.Popen[str]]:
    """``amr-gateway simulate -c CONFIG`` as a real peer for the CLI tests: yields the process
    once it says it is simulating (fails with its output if it does not within ``ready_s``),
    and terminates it however the block ends. ``duration_s`` bounds it should a test hang."""
    proc = subprocess.Popen([*CLI, "simulate", "-c", str(config), "--duration", str(duration_s)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env())
    assert proc.stdout is not None
    try:
        lines: list[str] = []
        deadline = time.monotonic() + ready_s
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "simulating" in line:
                break
        assert any("simulating" in ln for ln in lines), "".join(lines)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        proc.stdout.close()


def sink_drop_site(cfg: Path, gateway_id: str, data_dir: Path, sink_yaml: str) -> Path:
    """Write a one-meter site configuration at ``cfg`` whose only sink is ``sink_yaml`` (a
    top-level line such as ``mqtt: {host: 127.0.0.1, enabled: false}``): what
    ``amr-gateway sink drop`` reads to find the store and the configured sinks."""
    cfg.write_text(f"""\
gateway: {{id: {gateway_id}, timezone: UTC, data_dir: {data_dir}}}
buses:
  - {{id: lan, type: tcp, host: 127.0.0.1, port: 1502, protocol: modbus-tcp}}
meters:
  - {{id: m1, customer: C1, bus: lan, address: 1, profile: simulator}}
schedules:
  quarter: {{every: 15m}}
{sink_yaml}
""")
    return cfg


def run_sink_drop(cfg: Path, name: str) -> subprocess.CompletedProcess[str]:
    """``amr-gateway sink drop NAME -c CFG`` as a user runs it: a process of its own on the
    checkout's code; its exit status and output are the caller's to check."""
    return subprocess.run([sys.executable, "-m", "gateway.cli", "sink", "drop", name, "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), check=False)
