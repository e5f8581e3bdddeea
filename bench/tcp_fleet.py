"""The real ``amr-gateway run`` process against 1,000–10,000 simulated Modbus TCP meters.

What runs (all on loopback, all cleaned up on exit, Ctrl-C included):

* **one simulator process**: ``amr-gateway simulate -c sim.yaml`` serving every meter any
  selected case needs, one listening port each (``127.0.0.1:port_base + i`` for meter
  ``m{i}``, unit id 1) — the light asyncio responder of ``drivers/modbus/simulator.py``. Its
  RLIMIT_NOFILE (soft *and* hard) is raised in the child before ``exec`` (``setrlimit`` in
  ``preexec_fn``, what ``prlimit --nofile`` would do): 10,000 listening sockets plus 10,000
  accepted connections do not fit the usual hard limit of 20,000 (needs root or
  CAP_SYS_RESOURCE; the simulator's own start-up then raises its soft limit);
* **the gateway**: ``amr-gateway run -c gw.yaml`` as its own process, one TCP bus (one
  connection) per meter, the full pipeline: SQLite store with group commit (the
  configuration's defaults: ``synchronous=FULL``, ``commit_interval_ms`` 20), MQTT sink to
  mosquitto at 127.0.0.1:1883 (QoS 1), InfluxDB sink (line protocol) to victoria-metrics at
  127.0.0.1:8428 (``scripts/ensure-services.sh`` starts it when absent), HTTP API. The
  gateway raises its own open-file limit at start-up (soft up to its hard limit, which it
  inherits from this process);
* **an MQTT subscriber in this process** (paho, QoS 1, on_message only appends
  ``(time.time(), payload)``; parsing happens after the window);
* **the baseline**: ``bench/fleet_baseline.py`` in its own process, the same reads (same
  meters, same slots, the same request PDUs ``compile_plan`` produced for the gateway's
  point set) by a bare asyncio Modbus TCP loop with no pipeline, run right after the
  gateway in the same invocation against the same simulator.

Schedules: every meter is read every ``interval`` seconds at wall-clock aligned slots.
Meters are spread over ``--phases`` schedules (default 128, a power of two: see
``phase_offsets``) with offsets ``k × interval / phases`` (meter ``m{i}`` in phase
``(i-1) % phases``), as a site spreads its polls; with ``--phases 1`` every meter fires at
the same instant (the worst-case burst: at 1,000 meters even the bare loop's p99 is then
≈ 350 ms, see bench/README.md).

Measured per run, over a window of whole cycles after a warm-up (``t0`` half a phase before
a slot boundary):

* **CPU-s per 1000 readings**: utime + stime of the gateway process and every process it
  started (``tree_cpu_s``) from ``/proc`` at ``t0`` and ``t1``, divided by the readings the
  store committed with a slot in ``[t0, t1)`` (read from the SQLite file after the gateway
  stopped); the **ratio** to the bare loop's figure in the same run is case a's CPU target
  (≤ 1.3, issue 16), and the event loop's (main thread's) share of that CPU is printed;
* **RSS**: ``VmRSS`` at ``t1`` and the peak ``VmHWM`` (the target is checked on the peak);
* **p99 slot → arrival**: time at which the reading reached the subscriber minus its
  ``slot`` (parsed from the payload), over every reading expected in the window (a reading
  that never arrived counts as infinitely late). This is *arrival at a QoS 1 subscriber*,
  not the PUBACK to the gateway: the broker forwards before or after it acknowledges, so
  the two differ by a broker hop either way (sub-millisecond on loopback);
* **poll-start lag**: ``amr_poll_lag_max_seconds`` from ``/metrics`` (the largest over all
  buses since start, so it includes the first connects) and, per reading, ``ts − slot``
  p99 (``ts`` is stamped when the read *finished*, so it is start lag + read time);
* **errors**: non-good readings committed in the window (store), failed polls
  (``amr_reads_total{result="failed"}``), and the sinks' backlog/failed counters;
* the simulator's CPU in the window, and the load average (the machine is shared: re-run
  before trusting a miss).

Cases: ``a`` 1,000 meters at 1 s; ``b`` 10,000 meters at 10 s; ``c`` a headroom sweep at
1 s, 1,000, 1,500, 2,000 … meters (readings/s), up to the first rate where p99 passes
250 ms or the gateway no longer delivers ≥ 99 % of the window's readings.

Exit status: 0 every target met; 1 a target missed or a run invalid (errors, nothing
delivered); 130 interrupted.

Run from the repository root: ``python -m bench.tcp_fleet`` (≈ 8 minutes),
``--quick`` (≈ 3 minutes), ``--only a`` / ``--only b,c``, ``--json FILE``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.settings import StoreSettings
from gateway.store import GROUP_COMMIT_S

_VENV_SCRIPT = Path(sys.executable).with_name("amr-gateway")
# the console script next to this interpreter: a venv's bin need not be on PATH
AMR_GATEWAY = str(_VENV_SCRIPT) if _VENV_SCRIPT.exists() else "amr-gateway"
ROOT = Path(__file__).resolve().parents[1]
# The group-commit window the gateway uses when the bench sets nothing (store.py: GROUP_COMMIT_S,
# or store.commit_interval when shorter; --commit-ms sets store.commit_interval_ms, its older key).
DEFAULT_COMMIT_MS = min(GROUP_COMMIT_S, StoreSettings().commit_interval_s) * 1000
sys.path.insert(0, str(ROOT))

POINTS = ["energy_import_kwh*", "power_kw", "voltage_*"]
API_TOKEN = "bench-tcp-fleet-token"
MQTT = ("127.0.0.1", 1883)
VM = ("127.0.0.1", 8428)
HZ = os.sysconf("SC_CLK_TCK")
P99_HEADROOM_S = 0.250


# ---------------------------------------------------------------------------------------
# Cases and results
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One gateway run (and its baseline) at a fixed fleet size and interval."""

    name: str
    meters: int
    interval_s: float
    warmup_s: float
    window_s: float
    #: targets (None: not checked here)
    cpu_per_1000: float | None = None
    cpu_ratio: float | None = None
    rss_mb: float | None = None
    p99_ms: float | None = None

    @property
    def rate(self) -> float:
        """Readings per second."""
        return self.meters / self.interval_s


@dataclass
class Result:
    """Everything measured in one run."""

    name: str
    meters: int
    interval_s: float
    rate: float
    window_s: float
    phases: int
    load_before: tuple[float, float, float]
    expected: int = 0
    committed: int = 0
    non_good: int = 0
    arrived: int = 0
    cpu_s: float = 0.0
    loop_cpu_s: float = 0.0
    sys_s: float = 0.0          # the gateway process's kernel time in the window
    base_sys_share: float = 0.0  # the bare loop's kernel time ÷ its CPU
    cpu_per_1000: float = 0.0
    rss_mb: float = 0.0
    hwm_mb: float = 0.0
    nofile_soft: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    done_lag_p99_ms: float = 0.0
    poll_lag_max_ms: float = 0.0
    failed_polls: int = 0
    overruns: int = 0
    sinks: dict[str, dict[str, float]] = field(default_factory=dict)
    sim_cpu_s: float = 0.0
    base_cpu_per_1000: float = 0.0
    base_rss_mb: float = 0.0
    base_hwm_mb: float = 0.0
    base_p99_ms: float = 0.0
    base_reads: int = 0
    base_failed: int = 0
    ratio: float = 0.0
    start_s: float = 0.0
    misses: list[str] = field(default_factory=list)


def cases(quick: bool) -> dict[str, list[Run]]:
    """The runs of each case (issue 6 targets)."""
    if quick:
        a = Run("a: 1,000 @ 1 s", 1000, 1.0, 4.0, 8.0, cpu_per_1000=0.50, cpu_ratio=1.3, rss_mb=80,
                p99_ms=50)
        b = Run("b: 10,000 @ 10 s", 10000, 10.0, 12.0, 10.0, rss_mb=200, p99_ms=250)
        rates = [1000, 1500, 2000]
        sweep_w, sweep_win = 3.0, 5.0
    else:
        a = Run("a: 1,000 @ 1 s", 1000, 1.0, 6.0, 20.0, cpu_per_1000=0.50, cpu_ratio=1.3, rss_mb=80,
                p99_ms=50)
        b = Run("b: 10,000 @ 10 s", 10000, 10.0, 22.0, 30.0, rss_mb=200, p99_ms=250)
        rates = [1000, 1500, 2000, 2500, 3000, 4000]
        sweep_w, sweep_win = 4.0, 8.0
    c = [Run(f"c: {r:,} @ 1 s", r, 1.0, sweep_w, sweep_win) for r in rates]
    return {"a": [a], "b": [b], "c": c}


# ---------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _child_setup(nofile: int | None) -> Any:
    """A ``preexec_fn``: die with the bench (PR_SET_PDEATHSIG), optionally raise NOFILE."""

    def setup() -> None:
        _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if nofile is not None:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, nofile), max(hard, nofile)))

    return setup


class Procs:
    """Child processes, stopped (TERM, then KILL) in reverse order on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path, nofile: int | None = None) -> subprocess.Popen[bytes]:
        out = open(log, "wb")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                             preexec_fn=_child_setup(nofile))  # noqa: PLW1509 - no threads yet at start
        out.close()
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait(5)
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self.procs)):
            self.stop(p, 15.0)


def stat_fields(path: str) -> list[str]:
    """The fields of a ``/proc/…/stat`` file after the command name, from field 3 (state)
    on: field N of proc(5) is index N − 3 (the name, in parentheses, may hold spaces)."""
    with open(path) as f:
        text = f.read()
    return text[text.rindex(")") + 2:].split()


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, seconds (fields 14 and 15 of /proc/PID/stat)."""
    fields = stat_fields(f"/proc/{pid}/stat")
    return (int(fields[11]) + int(fields[12])) / HZ


def proc_sys_s(pid: int) -> float:
    """stime of a process alone, seconds (field 15 of /proc/PID/stat): its kernel share."""
    return int(stat_fields(f"/proc/{pid}/stat")[12]) / HZ


def tree_cpu_s(pid: int) -> float:
    """CPU of a process and every process it started: its utime + stime, the cutime + cstime
    of the children it has waited for (fields 16 and 17), and utime + stime of each live
    descendant (found through ``/proc/*/stat`` parent ids). The issue counts "every process
    of the gateway"; today ``run`` starts a child only to parse a large configuration."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parents[int(entry)] = int(stat_fields(f"/proc/{entry}/stat")[1])
    fields = stat_fields(f"/proc/{pid}/stat")
    total = sum(int(x) for x in fields[11:15]) / HZ
    todo, seen = [pid], {pid}
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in seen:
                seen.add(child)
                todo.append(child)
                with contextlib.suppress(OSError, ValueError):
                    total += proc_cpu_s(child)
    return total


def thread_cpu_s(pid: int) -> float:
    """utime + stime of a process's main thread (its event loop), from /proc/PID/task/PID/stat."""
    fields = stat_fields(f"/proc/{pid}/task/{pid}/stat")
    return (int(fields[11]) + int(fields[12])) / HZ


def proc_status_kb(pid: int, name: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def proc_nofile(pid: int) -> int:
    """The soft open-file limit of a process."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return 0


def raisable_nofile(wanted: int) -> int:
    """The hard open-file limit a child can get: ``wanted`` if it may raise it, else the current one."""
    probe = [sys.executable, "-c",
             "import resource as r; s, h = r.getrlimit(r.RLIMIT_NOFILE); "
             f"r.setrlimit(r.RLIMIT_NOFILE, (s, max(h, {wanted})))"]
    if subprocess.run(probe, capture_output=True, timeout=30, check=False).returncode == 0:
        return max(wanted, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def units_per_port(meters: int, hard: int) -> int:
    """Unit ids per simulator port so that its listening sockets and one accepted connection
    per meter fit the open-file limit ``hard`` (1 when it can be raised far enough)."""
    return next((u for u in range(1, 65) if meters + -(-meters // u) + 512 <= hard), 64)


def start_simulator(procs: Procs, config: Path, log: Path, timeout: float,
                    nofile: int | None = None) -> subprocess.Popen[bytes]:
    """Start ``amr-gateway simulate`` on ``config`` and wait (bounded) until it serves."""
    sim = procs.start([AMR_GATEWAY, "--log-level", "warning", "simulate", "-c", str(config)], log, nofile=nofile)
    deadline = time.monotonic() + timeout
    while b"simulating;" not in log.read_bytes():
        if sim.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the simulator did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    return sim


def listening_ports() -> set[int]:
    """TCP ports something listens on (IPv4 and IPv6)."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[3] == "0A":
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def pick_port_base(n: int, wanted: int | None) -> int:
    """A base so that base+1 … base+n are free and below the ephemeral range."""
    busy = listening_ports()
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        eph_lo = int(f.read().split()[0])
    candidates = [wanted] if wanted is not None else list(range(10000, eph_lo - n, 1000))
    for base in candidates:
        if base + n < 65536 and not any(base < p <= base + n for p in busy):
            return base
    raise SystemExit(f"no free range of {n} ports below {eph_lo}; pass --port-base")


def port_open(addr: tuple[str, int]) -> bool:
    """True when something accepts TCP connections at ``addr``."""
    with contextlib.suppress(OSError), socket.create_connection(addr, 1.0):
        return True
    return False


def ensure_services() -> None:
    """mosquitto must answer; victoria-metrics is started by scripts/ensure-services.sh."""
    if port_open(MQTT) and port_open(VM):
        return
    subprocess.run(["bash", str(ROOT / "scripts" / "ensure-services.sh")], timeout=120, check=False)
    for addr, what in ((MQTT, "mosquitto"), (VM, "victoria-metrics")):
        if not port_open(addr):
            raise SystemExit(f"{what} does not answer on {addr[0]}:{addr[1]} (make services)")


# ---------------------------------------------------------------------------------------
# Configuration files
# ---------------------------------------------------------------------------------------


def phase_offsets(interval: float, phases: int) -> list[str]:
    """Offsets ``k × interval / phases`` as exact decimal millisecond texts.

    With a power-of-two ``phases`` every offset is an exact binary fraction: the gateway's
    ``gateway.slots.next_slot`` returns the *same* slot again for an offset such as 10 ms
    (its 1e-9 tolerance is below the float resolution of an epoch, ≈ 2.4e-7 s), and the
    schedule then fires in a tight loop (see bench/README.md). Exact offsets avoid it.
    """
    out = []
    for k in range(phases):
        ms = 1000 * interval * k / phases
        out.append(f"{ms:.10f}".rstrip("0").rstrip("."))
    return out


def write_config(path: Path, *, gateway_id: str, data_dir: Path, meters: int, interval: float, phases: int,
                 port_base: int, units: int, api_port: int, sinks: bool, commit_ms: int | None,
                 synchronous: str | None, influx_client: str | None = None) -> None:
    """A configuration: ``meters`` TCP buses and meters, ``phases`` offset schedules.

    Meter ``m{i}`` is alone on bus ``b{i}`` (its own connection), at port
    ``port_base + (i-1) // units + 1`` with unit id ``(i-1) % units + 1``.
    """
    every = f"{int(interval * 1000)}ms"
    out = [f"gateway: {{id: {gateway_id}, timezone: UTC, data_dir: {data_dir}}}", "buses:"]
    out += [f"  - {{id: b{i}, type: tcp, host: 127.0.0.1, port: {port_base + (i - 1) // units + 1}, "
            f"protocol: modbus-tcp, timeout_ms: 1000}}" for i in range(1, meters + 1)]
    out.append("meters:")
    out += [f"  - {{id: m{i}, customer: C{i}, bus: b{i}, address: {(i - 1) % units + 1}, profile: simulator, "
            f"schedules: [p{(i - 1) % phases}]}}" for i in range(1, meters + 1)]
    out.append("schedules:")
    pts = json.dumps(POINTS)
    out += [f"  p{k}: {{every: {every}, offset: {off}ms, points: {pts}}}"
            for k, off in enumerate(phase_offsets(interval, phases))]
    if sinks:
        out.append(f"mqtt: {{host: {MQTT[0]}, port: {MQTT[1]}}}")
        client = f", client: {influx_client}" if influx_client else ""
        out.append(f"influxdb: {{url: 'http://{VM[0]}:{VM[1]}', org: amr, bucket: amr, token: x{client}}}")
    out.append(f"api: {{listen: '127.0.0.1:{api_port}', token: {API_TOKEN}}}")
    store = []
    if commit_ms is not None:
        store.append(f"commit_interval_ms: {commit_ms}")
    if synchronous is not None:
        store.append(f"synchronous: {synchronous}")
    if store:
        out.append("store: {" + ", ".join(store) + "}")
    path.write_text("\n".join(out) + "\n")


def plan_pdus(config: Path) -> list[str]:
    """The request PDUs the gateway compiles for one meter of ``config`` (hex)."""
    import logging

    logging.disable(logging.WARNING)  # inline-token warnings
    from gateway.config import load_settings
    from gateway.runtime import build_meters

    settings = load_settings(config)
    meter = next(iter(build_meters(settings).values()))
    from drivers.modbus.plan import ReadPlan

    plan, _names = next(iter(meter.plans.values()))
    assert isinstance(plan, ReadPlan), "the fleet's meters speak Modbus TCP"
    return [r.pdu.hex() for r in plan.requests]


# ---------------------------------------------------------------------------------------
# The subscriber
# ---------------------------------------------------------------------------------------


class Subscriber:
    """A QoS 1 paho subscriber that only records (arrival time, payload)."""

    def __init__(self, topic: str) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.topic = topic
        self.got: list[tuple[float, bytes]] = []
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-tcp-sub-{os.getpid()}",
                                  clean_session=True)
        self.client.max_inflight_messages_set(1000)
        now = time.time
        got = self.got

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            got.append((now(), msg.payload))

        def on_connect(c: Any, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
            c.subscribe(topic, qos=1)

        self.client.on_message = on_message
        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()

    def start(self) -> None:
        self.client.connect(*MQTT, keepalive=30)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise SystemExit("the MQTT subscriber was not subscribed within 10 s")

    def take(self) -> list[tuple[float, bytes]]:
        got = self.got[:]
        del self.got[:len(got)]
        return got

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        with contextlib.suppress(Exception):
            self.client.loop_stop()


_SLOT_CACHE: dict[bytes, float] = {}


def iso_epoch(text: bytes) -> float:
    """``2026-11-28T02:45:41.000Z`` → epoch seconds."""
    return datetime.fromisoformat(text.decode().replace("Z", "+00:00")).timestamp()


def parse(payload: bytes) -> tuple[float, float, bool]:
    """(slot, ts, good) of a reading payload."""
    i = payload.index(b'"slot":"') + 8
    s = payload[i:i + 24]
    slot = _SLOT_CACHE.get(s)
    if slot is None:
        slot = _SLOT_CACHE[s] = iso_epoch(s)
    j = payload.index(b'"ts":"', i) + 6
    ts = iso_epoch(payload[j:j + 24])
    k = payload.index(b'"quality":"', j) + 11
    return slot, ts, payload.startswith(b"good", k)


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values``; inf when empty."""
    if not values:
        return math.inf
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


# ---------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------


def http_get(port: int, path: str, timeout: float = 10.0) -> str:
    """GET from the gateway's API with the bench token."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {API_TOKEN}"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body: bytes = resp.read()
    return body.decode()


def scrape(port: int) -> dict[str, Any]:
    """The /metrics figures this bench prints."""
    text = http_get(port, "/metrics", 30.0)
    out: dict[str, Any] = {"poll_lag_max": 0.0, "failed": 0, "overruns": 0, "sinks": {}}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith("amr_poll_lag_max_seconds"):
            out["poll_lag_max"] = max(out["poll_lag_max"], float(value))
        elif name.startswith("amr_reads_total") and 'result="failed"' in name:
            out["failed"] += int(value)
        elif name.startswith("amr_bus_overruns_total"):
            out["overruns"] += int(value)
        elif name.startswith("amr_sink_"):
            metric, _, label = name.partition("{")
            sink = label.split('"')[1]
            out["sinks"].setdefault(sink, {})[metric.removeprefix("amr_sink_")] = float(value)
    return out


EXPERIMENT_WRAPPER = """
import gc, sys, threading
for exp in sys.argv[1].split(","):
    name, _, arg = exp.partition(":")
    if name == "gc-freeze":          # gc.collect(); gc.freeze() ARG seconds after start
        def freeze():
            gc.collect()
            gc.freeze()
        threading.Timer(float(arg or 20), freeze).start()
    elif name == "review-save":      # the review engine saves its states every ARG s
        import gateway.review.engine as engine
        engine.SAVE_EVERY_S = float(arg)
    elif name == "gc-log":           # log every collection slower than ARG ms to stderr
        import time
        limit, began = float(arg or 5) / 1000, [0.0]
        def watch(phase, info):
            if phase == "start":
                began[0] = time.perf_counter()
            elif time.perf_counter() - began[0] > limit:
                print(f"gc gen{info['generation']} {1000 * (time.perf_counter() - began[0]):.1f} ms"
                      f" collected {info['collected']} at {time.time():.3f}",
                      file=sys.stderr, flush=True)
                if info['generation'] == 2 and "gc-refs" in sys.argv[1].split(","):
                    import collections
                    refs = collections.Counter()
                    for o in gc.get_objects(2):
                        refs[type(o).__qualname__] += len(gc.get_referents(o))
                    print("   refs:", refs.most_common(8), file=sys.stderr, flush=True)
        gc.callbacks.append(watch)
    elif name == "gc-refs":          # with gc-log: after a slow full collection, references walked per type
        pass
    elif name == "gc-census":        # ARG s after start: the 25 commonest types the collector still walks
        def census():
            import collections
            kinds = collections.Counter(type(o).__qualname__ for o in gc.get_objects(2))
            print(f"gc census: {sum(kinds.values())} objects in generation 2, frozen {gc.get_freeze_count()}: "
                  + ", ".join(f"{k} {n}" for k, n in kinds.most_common(25)), file=sys.stderr, flush=True)
        threading.Timer(float(arg or 40), census).start()
    elif name == "tracemalloc":      # ARG s after start: live Python memory by allocating line and by file
        import tracemalloc
        tracemalloc.start(1)
        def sizes():
            snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            now, peak = tracemalloc.get_traced_memory()
            out = [f"tracemalloc: {now / 2**20:.1f} MB live, peak {peak / 2**20:.1f} MB"]
            for key in ("filename", "lineno"):
                for st in snap.statistics(key)[:25 if key == "filename" else 70]:
                    out.append(f"  {st.size / 2**20:7.2f} MB {st.count:9d} blocks  {st.traceback[0]}")
            print("\\n".join(out), file=sys.stderr, flush=True)
        threading.Timer(float(arg or 40), sizes).start()
    elif name == "uvloop":           # the gateway's asyncio.run uses uvloop's event loop
        import asyncio, uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    elif name == "coalesce":         # after the first ready event, wait ARG ms and take every event ready by then
        import selectors, time
        quantum = float(arg or 2) / 1000
        select = selectors.EpollSelector.select
        def coalescing(self, timeout=None):
            if timeout is not None and timeout <= quantum:
                return select(self, timeout)
            if not select(self, timeout):
                return []
            time.sleep(quantum)
            return select(self, 0)
        selectors.EpollSelector.select = coalescing
    elif name == "cprofile":         # cProfile of the event-loop thread, dumped to ARG at exit (pstats)
        import atexit, cProfile
        prof = cProfile.Profile()
        prof.enable()
        def dump(path=arg or "/tmp/amr-gateway.prof"):
            prof.disable()
            prof.dump_stats(path)
        atexit.register(dump)
    elif name == "gc-threshold":     # gc.set_threshold(ARG): the young generation's threshold (default 700)
        gc.set_threshold(int(arg), *gc.get_threshold()[1:])
    elif name == "gc-time":          # every 10 s, the collector's passes and seconds so far, per generation, to ARG
        import time
        spent, began = [0.0, 0.0, 0.0], [0.0]
        passes = [0, 0, 0]
        def timed(phase, info):
            if phase == "start":
                began[0] = time.perf_counter()
            else:
                spent[info["generation"]] += time.perf_counter() - began[0]
                passes[info["generation"]] += 1
        gc.callbacks.append(timed)
        def report(path=arg or "/tmp/amr-gateway-gc.txt"):
            with open(path, "a") as f:
                print(f"{time.time():.1f} passes {passes} seconds {[round(s, 4) for s in spent]}", file=f)
            t = threading.Timer(10.0, report)
            t.daemon = True
            t.start()
        report()
    elif name == "review-time":      # the review, build and sink steps in place: thread CPU µs per call, at exit
        # (each timed call adds two clock reads, ~0.4 µs: an outer figure includes its inner timers)
        import atexit, time
        from gateway.review import engine, rules, ruleset
        spent = {}
        def timed(owner, attr, label):
            fn = getattr(owner, attr)
            clock = time.thread_time_ns
            def wrapper(*a, **k):
                t = clock()
                try:
                    return fn(*a, **k)
                finally:
                    c = spent.setdefault(label, [0, 0])
                    c[0] += clock() - t
                    c[1] += 1
            setattr(owner, attr, wrapper)
        timed(engine.ReviewEngine, "observe", "engine.observe")
        timed(engine.ReviewEngine, "evaluate_all", "engine.evaluate_all")
        timed(engine, "observe_reading", "rules.observe_reading")
        timed(engine, "evaluate", "ruleset.evaluate")
        timed(engine, "fold_bus_failure", "bus.fold_bus_failure")
        for rule_name, rule in ruleset.ALL_RULES:     # each rule, wrapped where ALL_RULES finds it
            timed(sys.modules[rule.__module__], rule.__name__, "rule " + rule_name)
        ruleset.ALL_RULES = tuple((n, getattr(sys.modules[r.__module__], r.__name__)) for n, r in ruleset.ALL_RULES)
        timed(rules, "read_failure", "rule read_failure")
        timed(rules, "_interval", "rules._interval")
        timed(rules, "prune_power", "rules.prune_power")
        from gateway import pipeline, polling, store
        timed(pipeline.ReadingBuilder, "build", "pipeline.build")
        timed(polling.BusWorker, "_finish", "polling._finish (observers, store queue)")
        timed(store.Store, "submit_nowait", "store.submit_nowait")
        from gateway.sinks import delivery, influx, mqtt
        timed(mqtt.MqttSink, "send", "mqtt.send (render, frame)")
        timed(mqtt._Connection, "_take", "mqtt._take (PUBACKs)")
        timed(mqtt._Connection, "_flush", "mqtt._flush (send)")
        timed(delivery.SinkRunner, "_acked", "delivery._acked")
        timed(influx.InfluxSink, "send", "influx.send")
        def report():
            for label, (ns, n) in sorted(spent.items()):
                print(f"review-time {label}: {n} calls, {ns / max(n, 1) / 1000:.2f} µs each", file=sys.stderr)
        atexit.register(report)
    elif name == "group":            # the store's group window (GROUP_COMMIT_S) at ARG ms instead of 20
        import gateway.store
        gateway.store.GROUP_COMMIT_S = float(arg) / 1000
    elif name == "no-review":        # the review engine takes no reading (its observer does nothing)
        from gateway.review.engine import ReviewEngine
        ReviewEngine.observe = lambda self, meter, reading: None
    elif name == "no-store":         # readings are not stored (nor sent): polling, decoding and building only
        from gateway.store import Store
        Store.submit_nowait = lambda self, reading, retention="interval": None
    elif name == "count":            # polls finished so far, written to ARG every 0.5 s (no store needed)
        import os, time
        from gateway import polling
        finished = [0]
        finish = polling.BusWorker._finish
        def counted(self, *a, **k):
            finished[0] += 1
            return finish(self, *a, **k)
        polling.BusWorker._finish = counted
        def dump(path=arg):
            while True:
                time.sleep(0.5)
                with open(path + ".tmp", "w") as f:
                    f.write(str(finished[0]))
                os.replace(path + ".tmp", path)
        threading.Thread(target=dump, daemon=True).start()
    else:
        raise SystemExit("unknown experiment " + name)
from gateway.cli import main
sys.exit(main(sys.argv[2:]))
"""

EXPERIMENTS = ("gc-freeze:S", "gc-log:MS", "gc-refs", "gc-census:S", "tracemalloc:S", "review-save:S", "gc-threshold:N",
               "gc-time:FILE",
               "no-review", "no-store", "count:FILE", "review-time", "uvloop", "cprofile:FILE", "coalesce:MS",
               "group:MS")


def gateway_argv(experiments: str | None) -> list[str]:
    """``amr-gateway``, or (experiments) the same CLI behind a wrapper that patches it first."""
    if not experiments:
        return [AMR_GATEWAY]
    return [sys.executable, "-c", EXPERIMENT_WRAPPER, experiments]


def window_bounds(interval: float, phases: int, earliest: float) -> tuple[float, float]:
    """``t0`` half a phase before the first slot boundary after ``earliest``."""
    boundary = math.ceil(earliest / interval) * interval
    t0 = boundary - interval / phases / 2
    if t0 < earliest:
        t0 += interval
    return t0, t0


def sleep_until(t: float) -> None:
    """Sleep to a wall-clock instant."""
    while True:
        d = t - time.time()
        if d <= 0:
            return
        time.sleep(min(d, 1.0))


class Bench:
    """Owns the temp dir, the simulator, the subscriber and the runs."""

    def __init__(self, args: argparse.Namespace, procs: Procs, tmp: Path) -> None:
        self.args = args
        self.procs = procs
        self.tmp = tmp
        self.gateway_id = f"bench-tcp-{os.getpid()}"
        self.sub = Subscriber(f"amr/{self.gateway_id}/meters/+/reading")
        self.sim: subprocess.Popen[bytes] | None = None
        self.port_base = 0
        self.units = 1
        self.runs = 0
        self.api_port = 0
        self.pdus: list[str] = []

    def start(self, max_meters: int) -> None:
        """Pick ports, write the simulator's configuration, start it and the subscriber."""
        a = self.args
        # One listening socket per port plus one accepted connection per meter must fit the
        # simulator's open-file limit. Its hard limit can only be raised with
        # CAP_SYS_RESOURCE; without it, meters share ports by unit id (still one connection each).
        nofile = 2 * max_meters + 1024
        hard = raisable_nofile(nofile)
        self.units = a.units_per_port or units_per_port(max_meters, hard)
        ports = -(-max_meters // self.units)
        self.port_base = pick_port_base(ports, a.port_base)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.api_port = s.getsockname()[1]
        sim_cfg = self.tmp / "sim.yaml"
        write_config(sim_cfg, gateway_id="bench-sim", data_dir=self.tmp / "sim-data", meters=max_meters,
                     interval=1.0, phases=1, port_base=self.port_base, units=self.units, api_port=self.api_port,
                     sinks=False,
                     commit_ms=None, synchronous=None)
        self.pdus = plan_pdus(sim_cfg)
        log = self.tmp / "simulator.log"
        t = time.monotonic()
        self.sim = start_simulator(self.procs, sim_cfg, log, 180, nofile=nofile)
        how = ("raised in the child before exec" if hard >= nofile else
               f"its hard limit cannot be raised here (no CAP_SYS_RESOURCE), so {self.units} unit ids share a port")
        print(f"simulator: {max_meters:,} meters on {ports:,} ports 127.0.0.1:{self.port_base + 1}-"
              f"{self.port_base + ports} ({self.units} unit id(s) per port, one connection per meter), "
              f"up in {time.monotonic() - t:.1f} s, open-file limit {proc_nofile(self.sim.pid):,} ({how}); "
              f"requests per reading: {len(self.pdus)} ({', '.join(self.pdus)})", flush=True)
        self.sub.start()

    def run(self, r: Run) -> Result:
        """One gateway run, then its baseline."""
        a = self.args
        assert self.sim is not None
        res = Result(r.name, r.meters, r.interval_s, r.rate, r.window_s, a.phases, os.getloadavg())
        self.runs += 1
        run_dir = self.tmp / f"run{self.runs}-{r.meters}-{int(r.interval_s)}"
        run_dir.mkdir()
        cfg = run_dir / "gw.yaml"
        write_config(cfg, gateway_id=self.gateway_id, data_dir=run_dir / "data", meters=r.meters,
                     interval=r.interval_s, phases=a.phases, port_base=self.port_base, units=self.units,
                     api_port=self.api_port,
                     sinks=not a.no_sinks, commit_ms=a.commit_ms, synchronous=a.synchronous,
                     influx_client=a.influx_client)
        log = run_dir / "gateway.log"
        t = time.monotonic()
        argv = [*gateway_argv(a.experiment), "--log-level", "warning", "run", "-c", str(cfg)]
        gw = self.procs.start(argv, log)
        deadline = t + 120
        while True:
            if gw.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the gateway did not start:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                http_get(self.api_port, "/api/v1/health", 2.0)
                break
            time.sleep(0.2)
        res.start_s = time.monotonic() - t
        self.sub.take()
        t0, _ = window_bounds(r.interval_s, a.phases, time.time() + r.warmup_s)
        t1 = t0 + r.window_s
        sleep_until(t0)
        c0, s0, m0, k0 = tree_cpu_s(gw.pid), proc_cpu_s(self.sim.pid), thread_cpu_s(gw.pid), proc_sys_s(gw.pid)
        sleep_until(t1)
        c1, s1, m1, k1 = tree_cpu_s(gw.pid), proc_cpu_s(self.sim.pid), thread_cpu_s(gw.pid), proc_sys_s(gw.pid)
        res.rss_mb = proc_status_kb(gw.pid, "VmRSS") / 1024
        res.hwm_mb = proc_status_kb(gw.pid, "VmHWM") / 1024
        res.nofile_soft = proc_nofile(gw.pid)
        res.expected = round(r.window_s / r.interval_s) * r.meters
        # let the window's last readings arrive (bounded)
        grace_end = time.time() + max(2.0, 0.5 * r.interval_s)
        arrivals: list[tuple[float, float, float, bool]] = []
        seen = 0
        while True:
            for arrival, payload in self.sub.take():
                slot, ts, good = parse(payload)
                if t0 - 1e-6 <= slot < t1 - 1e-6:
                    seen += 1
                    arrivals.append((arrival, slot, ts, good))
            if time.time() >= grace_end or seen >= res.expected:
                break
            time.sleep(0.2)
        with contextlib.suppress(Exception):
            m = scrape(self.api_port)
            res.poll_lag_max_ms = 1000 * m["poll_lag_max"]
            res.failed_polls = m["failed"]
            res.overruns = m["overruns"]
            res.sinks = m["sinks"]
        self.procs.stop(gw, 60.0)
        res.cpu_s = c1 - c0
        res.loop_cpu_s = m1 - m0
        res.sys_s = k1 - k0
        res.sim_cpu_s = s1 - s0
        # the store: what was committed with a slot in the window
        db = run_dir / "data" / "amr-gateway.sqlite"
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            res.committed, res.non_good = conn.execute(
                "SELECT count(*), coalesce(sum(quality != 'good'), 0) FROM outbox "
                "WHERE kind = 'reading' AND slot >= ? AND slot < ?", (t0 - 1e-6, t1 - 1e-6)).fetchone()
        res.cpu_per_1000 = 1000 * res.cpu_s / res.committed if res.committed else math.inf
        lat = [arrival - slot for arrival, slot, _ts, _g in arrivals]
        done = [ts - slot for _a, slot, ts, _g in arrivals]
        res.arrived = seen
        lat += [math.inf] * max(0, res.expected - seen)
        res.p50_ms, res.p99_ms = 1000 * pct(lat, 0.50), 1000 * pct(lat, 0.99)
        res.max_ms = 1000 * max(lat) if lat else math.inf
        res.done_lag_p99_ms = 1000 * pct(done, 0.99)
        if not a.no_baseline:
            self.baseline(r, res, run_dir)
        if not a.keep:
            shutil.rmtree(run_dir / "data", ignore_errors=True)
        self.judge(r, res)
        return res

    def baseline(self, r: Run, res: Result, run_dir: Path) -> None:
        """The bare loop over the same meters, slots and requests."""
        argv = [sys.executable, "-m", "bench.fleet_baseline", "--meters", str(r.meters),
                "--port-base", str(self.port_base), "--units-per-port", str(self.units),
                "--interval", str(r.interval_s), "--phases", str(self.args.phases),
                "--warmup", str(min(r.warmup_s, max(3.0, r.interval_s + 1))), "--window", str(r.window_s)]
        for pdu in self.pdus:
            argv += ["--pdu", pdu]
        if self.args.baseline_prime_malloc:
            argv.append("--prime-malloc")
        log = run_dir / "baseline.log"
        p = self.procs.start(argv, log)
        try:
            p.wait(r.warmup_s + r.window_s + r.interval_s + 120)
        except subprocess.TimeoutExpired:
            self.procs.stop(p)
            raise SystemExit("the baseline did not finish in time") from None
        self.procs.stop(p)
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith("{")]
        if p.returncode != 0 or not lines:
            raise SystemExit(f"the baseline failed:\n{log.read_text()[-2000:]}")
        b = json.loads(lines[-1])
        res.base_reads, res.base_failed = b["reads"], b["failed"]
        res.base_cpu_per_1000 = 1000 * b["cpu_s"] / b["reads"] if b["reads"] else math.inf
        res.base_rss_mb, res.base_hwm_mb = b["rss_kb"] / 1024, b["hwm_kb"] / 1024
        res.base_p99_ms = b["lat_p99_ms"]
        res.base_sys_share = b["sys_s"] / b["cpu_s"] if b["cpu_s"] else 0.0
        res.ratio = res.cpu_per_1000 / res.base_cpu_per_1000 if res.base_cpu_per_1000 else math.inf

    @staticmethod
    def judge(r: Run, res: Result) -> None:
        """Record missed targets and invalid runs."""
        if res.committed < 0.99 * res.expected:
            res.misses.append(f"committed {res.committed} of {res.expected} readings")
        if res.non_good:
            res.misses.append(f"{res.non_good} non-good readings")
        if r.cpu_per_1000 is not None and res.cpu_per_1000 > r.cpu_per_1000:
            res.misses.append(f"CPU {res.cpu_per_1000:.3f} > {r.cpu_per_1000} s/1000")
        if r.cpu_ratio is not None and res.ratio and res.ratio > r.cpu_ratio:
            res.misses.append(f"CPU ratio {res.ratio:.2f} > {r.cpu_ratio} × the bare loop")
        if r.rss_mb is not None and res.hwm_mb > r.rss_mb:
            res.misses.append(f"RSS peak {res.hwm_mb:.0f} > {r.rss_mb} MB")
        if r.p99_ms is not None and res.p99_ms > r.p99_ms:
            res.misses.append(f"p99 {res.p99_ms:.0f} > {r.p99_ms} ms")


# ---------------------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------------------

HEADER = (f"{'run':<20} {'rd/s':>6} {'committed':>10} {'bad':>4} {'CPU-s/1k':>8} {'base':>6} {'ratio':>6} "
          f"{'RSS MB':>7} {'peak':>6} {'base':>5} {'p50 ms':>7} {'p99 ms':>7} {'base p99':>8} "
          f"{'done p99':>8} {'lag max':>7} {'sim CPU':>7} {'load1':>5}")


def row(res: Result) -> str:
    """One line of the results table."""
    return (f"{res.name:<20} {res.rate:>6.0f} {res.committed:>10,} {res.non_good:>4} {res.cpu_per_1000:>8.3f} "
            f"{res.base_cpu_per_1000:>6.3f} {res.ratio:>6.2f} {res.rss_mb:>7.1f} {res.hwm_mb:>6.1f} "
            f"{res.base_hwm_mb:>5.0f} {res.p50_ms:>7.1f} {res.p99_ms:>7.1f} {res.base_p99_ms:>8.1f} "
            f"{res.done_lag_p99_ms:>8.1f} {res.poll_lag_max_ms:>7.0f} {100 * res.sim_cpu_s / res.window_s:>6.0f}% "
            f"{res.load_before[0]:>5.2f}")


def detail(res: Result) -> str:
    """Secondary figures of a run."""
    sinks = "; ".join(f"{k}: published {v.get('published_total', 0):,.0f}, backlog {v.get('backlog', 0):,.0f}, "
                      f"failed {v.get('failed_total', 0):,.0f}" for k, v in sorted(res.sinks.items()))
    return (f"    arrived {res.arrived:,}/{res.expected:,}, max {res.max_ms:.0f} ms, failed polls {res.failed_polls}, "
            f"overruns {res.overruns}, gateway up in {res.start_s:.1f} s, open-file limit {res.nofile_soft:,}; "
            f"{sinks}; baseline {res.base_reads:,} reads ({res.base_failed} failed); event loop "
            f"{100 * res.loop_cpu_s / res.cpu_s if res.cpu_s else 0:.0f} % of the gateway's CPU (the rest: "
            f"store, InfluxDB and executor threads); in the kernel: gateway "
            f"{100 * res.sys_s / res.cpu_s if res.cpu_s else 0:.0f} %, bare loop {100 * res.base_sys_share:.0f} %"
            + (f"\n    MISSED: {'; '.join(res.misses)}" if res.misses else ""))


def revision() -> str:
    """The gateway code measured: HEAD, and whether gateway/ or drivers/ differ from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=False).stdout.strip() or "?"
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "gateway", "drivers"], cwd=ROOT,
                           capture_output=True, text=True, check=False).stdout.strip()
    return head + (" + uncommitted changes in gateway/ or drivers/" if dirty else "")


def machine() -> str:
    """CPU model, count, Python, kernel."""
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"{os.cpu_count()} × {model}, Linux {platform.release()}, Python {platform.python_version()}, "
            f"{datetime.now().isoformat(timespec='minutes')}")


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the selected cases; exit 1 on a missed target."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short windows, sweep to 2,000/s (≈ 3 min)")
    ap.add_argument("--only", default="a,b,c", help="cases to run: a, b, c or a comma list (default all)")
    ap.add_argument("--phases", type=int, default=128,
                    help="schedules the meters are spread over (default 128; keep a power of two)")
    ap.add_argument("--rates", help="sweep rates, e.g. 1000,2000,3000 (readings/s at 1 s)")
    ap.add_argument("--commit-ms", type=int,
                    help="store.commit_interval_ms: the commit bound, and the group window when under 20 ms "
                         "(default: the gateway's)")
    ap.add_argument("--synchronous", choices=["FULL", "NORMAL"], help="store.synchronous (default: FULL)")
    ap.add_argument("--influx-client", choices=["builtin", "influxdb-client"],
                    help="influxdb.client, the InfluxDB writer (default: the gateway's)")
    ap.add_argument("--port-base", type=int, help="first simulator port - 1 (default: a free range)")
    ap.add_argument("--units-per-port", type=int,
                    help="meters (unit ids) per simulator port (default: 1 if the open-file limit allows)")
    ap.add_argument("--experiment", metavar="LIST",
                    help="comma list of gateway patches to measure a proposal, not for targets: "
                         f"{', '.join(EXPERIMENTS)}")
    ap.add_argument("--no-baseline", action="store_true", help="skip the bare-loop baseline runs")
    ap.add_argument("--no-sinks", action="store_true",
                    help="no MQTT or InfluxDB sink (what polling, the store and the review cost alone; "
                         "not a target run)")
    ap.add_argument("--baseline-prime-malloc", action="store_true",
                    help="the bare loop frees a 1 MiB block first, so its receive buffers come from the heap "
                         "as the gateway's do (fleet_baseline.prime_malloc)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs, stores)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args(argv)
    selected = [c.strip() for c in args.only.split(",") if c.strip()]
    all_cases = cases(args.quick)
    if bad := [c for c in selected if c not in all_cases]:
        ap.error(f"unknown case(s) {bad}; choose from a, b, c")
    if args.rates:
        all_cases["c"] = [Run(f"c: {int(x):,} @ 1 s", int(x), 1.0, all_cases["c"][0].warmup_s,
                              all_cases["c"][0].window_s) for x in args.rates.split(",")]
    max_meters = max(r.meters for c in selected for r in all_cases[c])

    def on_term(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="amr-bench-tcp-"))
    results: list[Result] = []
    headroom: float | None = None
    try:
        print(f"machine: {machine()}; gateway code {revision()}")
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
              f"(a 2-core box shared with other engineers: re-run before trusting a miss)")
        ensure_services()
        bench = Bench(args, procs, tmp)
        bench.start(max_meters)
        if args.experiment:
            print(f"EXPERIMENT: the gateway runs patched ({args.experiment}); not a target run")
        print(f"phases: meters spread over {args.phases} schedule offsets per interval; store "
              f"commit_interval_ms={args.commit_ms or f'default ({DEFAULT_COMMIT_MS:g})'}, "
              f"synchronous={args.synchronous or 'default (FULL)'}; "
              f"influxdb.client={args.influx_client or 'default'}; bare loop "
              f"{'with --prime-malloc' if args.baseline_prime_malloc else 'as it starts (no --prime-malloc)'}")
        print("p50/p99 = slot → arrival at a QoS 1 subscriber; done p99 = reading ts − slot; lag max = "
              "amr_poll_lag_max_seconds (ms, since start);\n"
              "sim CPU = the simulator's share of one core in the window\n")
        print(HEADER, flush=True)
        for case in selected:
            for r in all_cases[case]:
                res = bench.run(r)
                results.append(res)
                print(row(res), flush=True)
                print(detail(res), flush=True)
                if case == "c":
                    ok = res.p99_ms <= 1000 * P99_HEADROOM_S and res.arrived >= 0.99 * res.expected \
                        and res.non_good == 0
                    if not ok:
                        break
                    headroom = res.rate
        bench.sub.stop()
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    misses = [f"{r.name}: {m}" for r in results if not r.name.startswith("c:") for m in r.misses]
    if "c" in selected:
        top = all_cases["c"][-1].rate
        label = f"{headroom:,.0f}" if headroom is not None else "below the first rate"
        suffix = " (the sweep's top rate: raise --rates)" if headroom == top else ""
        print(f"\nheadroom: {label} readings/s with p99 ≤ {P99_HEADROOM_S * 1000:.0f} ms{suffix} (target ≥ 1,500)")
        if headroom is None or headroom < 1500:
            misses.append(f"headroom {label} < 1,500 readings/s")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "headroom": headroom,
                                         "results": [asdict(r) for r in results]}, indent=2, default=str))
    if misses:
        print("\nTARGETS MISSED:\n  " + "\n  ".join(misses))
        return 1
    print("\nall targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
