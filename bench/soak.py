"""Soak and fault loops for the delivery guarantees (issue 16 item 11): benchmarks, not CI.

Two loops, each against real peers: a *private* mosquitto (persistence on, no queue cap)
and a private VictoriaMetrics on free loopback ports (this bench restarts them, so it never
touches the shared ones), the real ``amr-gateway run`` process, and ``amr-gateway
simulate`` serving Modbus TCP meters on loopback. A persistent QoS 1 subscriber
(clean session off, so the broker queues for it across its own restarts) records the seq
and meter of every message the gateway publishes::

    python -m bench.soak soak --meters 1000 --interval 10 --duration 3600   # ≈ 1 h
    python -m bench.soak kill --kills 100                                    # ≈ 6 min

``soak``
    The gateway runs for ``--duration`` seconds; the broker is restarted every
    ``--broker-every`` s (SIGTERM, which saves its sessions) and VictoriaMetrics every
    ``--vm-every`` s (SIGINT). Every ``--sample-every`` s the gateway's resident memory and
    open descriptors are sampled. At the end the gateway is stopped with SIGTERM and its
    store is read. Targets: RSS in the last quarter within ``--rss-growth`` (10 %) of the
    sample after the warm-up; descriptors at the end no more than at the warm-up (beside
    the few a reconnect holds for a moment: ``--fd-slack``); every seq a sink's cursor
    covers arrived (MQTT: every message; VictoriaMetrics: every reading's ``seq`` field);
    no first arrival out of order per meter (duplicates across reconnects are allowed by
    QoS 1 and counted).

``kill``
    ``--kills`` times: start the gateway, SIGKILL it at a random moment
    (``--min-life``…``--max-life`` s after spawn, or with ``--life-after-api`` after its API
    answers, so every kill lands while it polls and commits), run ``PRAGMA integrity_check`` on its
    store, note the highest committed seq. Then one last run (``--final`` s) delivers what
    the killed runs left and stops with SIGTERM. Targets: integrity ``ok`` after every kill;
    every seq committed by any run and covered by the sinks' cursors arrived at the
    subscriber and in VictoriaMetrics; the cursors at the end cover every seq the killed
    runs committed.

A clock stepped by an hour is not played here (it would disturb every other process on
the machine): ``tests/integration/test_clock_step_slots.py`` steps the scheduler's clock.

``--json FILE`` writes the report; the exit status is 1 when a target is missed. Run from
the repository root. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.tcp_fleet import (
    AMR_GATEWAY,
    Procs,
    pick_port_base,
    proc_status_kb,
    raisable_nofile,
    scrape,
    start_simulator,
    units_per_port,
    write_config,
)
from gateway.ports import free_port
from tests.servicefixtures import MosquittoProcess, VictoriaProcess, vm_seqs

GATEWAY_ID = "bench-soak"
MEASUREMENT = "amr_reading"


class SeqSubscriber:
    """A persistent QoS 1 MQTT subscriber that keeps only (meter, seq) of each message.

    A 1-h soak publishes hundreds of thousands of ~1 KB messages: the payloads are not kept.
    ``clean_session=False`` under a fixed client id, so the broker queues QoS 1 messages
    for it while it is away and keeps its session across its own restarts (persistence).
    """

    def __init__(self, host: str, port: int, topic: str) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.arrivals: list[tuple[str, int]] = []
        self.status = 0          # the gateway's retained online/offline messages (no seq)
        self.unparsed = 0
        self.connects = 0
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-soak-sub-{os.getpid()}",
                                  clean_session=False, protocol=paho.MQTTv311)
        self.client.reconnect_delay_set(1, 2)
        self.client.max_inflight_messages_set(1000)
        self.host, self.port, self.topic = host, port, topic

        def on_connect(c: Any, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
            self.connects += 1
            c.subscribe(topic, qos=1)

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            if msg.topic.endswith("/status"):
                self.status += 1
                return
            try:
                doc = json.loads(msg.payload)
                self.arrivals.append((str(doc.get("meter")), int(doc["seq"])))
            except (ValueError, KeyError, TypeError):
                self.unparsed += 1

        self.client.on_connect = on_connect
        self.client.on_message = on_message
        self.client.on_subscribe = lambda *_a: self._subscribed.set()

    def start(self, timeout: float = 10.0) -> None:
        """Connect, subscribe, and wait (bounded) for the SUBACK."""
        self.client.connect(self.host, self.port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            raise SystemExit(f"the subscriber could not subscribe to {self.topic} within {timeout:g} s")

    def stop(self) -> None:
        """Disconnect and stop the network thread."""
        with contextlib.suppress(Exception):
            self.client.disconnect()
        with contextlib.suppress(Exception):
            self.client.loop_stop()


@dataclass
class Arrivals:
    """What the subscriber's arrival list says: seqs seen, duplicates, out-of-order firsts."""

    seqs: set[int] = field(default_factory=set)
    duplicates: int = 0
    inversions: int = 0

    @classmethod
    def of(cls, arrivals: list[tuple[str, int]]) -> Arrivals:
        """Fold the arrivals in order: a seq seen before is a duplicate; a new seq below
        the highest seen for its meter is an inversion."""
        out = cls()
        highest: dict[str, int] = {}
        for meter, seq in arrivals:
            if seq in out.seqs:
                out.duplicates += 1
                continue
            out.seqs.add(seq)
            if seq < highest.get(meter, -1):
                out.inversions += 1
            highest[meter] = max(seq, highest.get(meter, -1))
        return out


def store_facts(db: Path) -> dict[str, Any]:
    """Committed seqs (every kind, and readings apart), the sinks' cursors, integrity."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        rows = conn.execute("SELECT seq, kind FROM outbox").fetchall()
        cursors = dict(conn.execute("SELECT sink, acked_seq FROM sink_cursor").fetchall())
    finally:
        conn.close()
    return {"integrity": integrity, "seqs": {s for s, _ in rows},
            "reading_seqs": {s for s, k in rows if k == "reading"}, "cursors": cursors,
            "max_seq": max((s for s, _ in rows), default=0)}


def open_fds(pid: int) -> int:
    """Open file descriptors of a process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


class Rig:
    """The peers, the simulator, the subscriber and the gateway's configuration."""

    def __init__(self, work: Path, meters: int, interval: float, phases: int) -> None:
        self.work = work
        self.procs = Procs()
        self.broker = MosquittoProcess(work / "mosquitto")
        self.vm = VictoriaProcess(work / "vm")
        self.meters, self.interval, self.phases = meters, interval, phases
        self.config = work / "gw.yaml"
        self.data = work / "data"
        self.api_port = free_port()
        self.sub: SeqSubscriber | None = None

    @property
    def db(self) -> Path:
        """The gateway's store."""
        return self.data / "amr-gateway.sqlite"

    def start(self) -> None:
        """Start the peers, the simulator and the subscriber; write the gateway's configuration."""
        self.broker.start()
        self.vm.start()
        nofile = 2 * self.meters + 1024
        hard = raisable_nofile(nofile)
        units = units_per_port(self.meters, hard)
        sim_cfg, sim_log = self.work / "sim.yaml", self.work / "simulator.log"
        for attempt in range(1, 4):
            # another bench (a parallel test worker) may bind the range between the check and
            # the simulator's bind: then its listeners are visible and the next pick avoids them
            port_base = pick_port_base(-(-self.meters // units), None)
            write_config(sim_cfg, gateway_id="bench-soak-sim", data_dir=self.work / "sim-data", meters=self.meters,
                         interval=1.0, phases=1, port_base=port_base, units=units, api_port=free_port(),
                         sinks=False, commit_ms=None, synchronous=None)
            try:
                start_simulator(self.procs, sim_cfg, sim_log, 180, nofile=nofile)
                break
            except SystemExit:
                if attempt == 3 or b"address already in use" not in sim_log.read_bytes():
                    raise
                sim_log.unlink()
        write_config(self.config, gateway_id=GATEWAY_ID, data_dir=self.data, meters=self.meters,
                     interval=self.interval, phases=self.phases, port_base=port_base, units=units,
                     api_port=self.api_port, sinks=False, commit_ms=None, synchronous=None)
        with open(self.config, "a") as f:
            f.write(f"mqtt: {{host: 127.0.0.1, port: {self.broker.port}}}\n"
                    f"influxdb: {{url: '{self.vm.url}', org: amr, bucket: amr, token: x}}\n")
        self.sub = SeqSubscriber("127.0.0.1", self.broker.port, f"amr/{GATEWAY_ID}/#")
        self.sub.start()

    def gateway(self, log_name: str) -> subprocess.Popen[bytes]:
        """Start ``amr-gateway run`` on the configuration."""
        return self.procs.start([AMR_GATEWAY, "--log-level", "warning", "run", "-c", str(self.config)],
                                self.work / log_name, nofile=4 * self.meters + 1024)

    def wait_api(self, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
        """Wait (bounded) until the gateway's API answers /metrics."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the gateway exited ({proc.returncode}); see {self.work}")
            with contextlib.suppress(OSError):
                scrape(self.api_port)
                return
            time.sleep(0.2)
        raise SystemExit(f"the gateway's API did not answer within {timeout:g} s")

    def drain(self, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, float]:
        """Wait (bounded) until both sinks' backlogs are at most a few messages; their backlogs."""
        deadline = time.monotonic() + timeout
        backlog: dict[str, float] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError):
                sinks = scrape(self.api_port)["sinks"]
                backlog = {s: v.get("backlog", 0.0) for s, v in sinks.items()}
                if backlog and all(b <= max(5, self.meters // 10) for b in backlog.values()):
                    break
            time.sleep(0.5)
        return backlog

    def stop(self) -> None:
        """Stop everything this rig started."""
        if self.sub is not None:
            self.sub.stop()
        self.procs.stop_all()
        self.broker.stop()
        self.vm.stop()


def delivery_report(rig: Rig, facts: dict[str, Any], settle_s: float) -> dict[str, Any]:
    """Which committed seqs the cursors cover and which of them the peers do not hold."""
    assert rig.sub is not None
    mqtt_cursor = facts["cursors"].get("mqtt", 0)
    influx_cursor = facts["cursors"].get("influxdb", 0)
    mqtt_due = {s for s in facts["seqs"] if s <= mqtt_cursor}
    vm_due = {s for s in facts["reading_seqs"] if s <= influx_cursor}
    began = time.monotonic()
    deadline = began + settle_s              # the subscriber may still be taking the last ones, and
    while True:                              # VictoriaMetrics makes the newest points searchable late
        got = Arrivals.of(list(rig.sub.arrivals))
        in_vm = set(vm_seqs(rig.vm.url, MEASUREMENT, GATEWAY_ID))
        if (mqtt_due <= got.seqs and vm_due <= in_vm) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    mqtt_missing = sorted(mqtt_due - got.seqs)
    vm_missing = sorted(vm_due - in_vm)
    return {
        "committed": len(facts["seqs"]), "committed_readings": len(facts["reading_seqs"]),
        "max_seq": facts["max_seq"], "cursors": facts["cursors"],
        "mqtt_covered": len(mqtt_due),
        "mqtt_missing": len(mqtt_missing), "mqtt_missing_first": mqtt_missing[:10],
        "mqtt_duplicates": got.duplicates, "mqtt_inversions": got.inversions, "mqtt_unparsed": rig.sub.unparsed,
        "mqtt_status_messages": rig.sub.status,
        "mqtt_unknown": len(got.seqs - facts["seqs"]),
        "vm_covered": len(vm_due),
        "vm_missing": len(vm_missing), "vm_missing_first": vm_missing[:10],
        "waiting_in_store": sum(1 for s in facts["seqs"] if s > min(mqtt_cursor, influx_cursor)),
        "subscriber_connects": rig.sub.connects,
        "peers_settled_after_s": round(time.monotonic() - began, 1),
    }


def delivery_misses(report: dict[str, Any]) -> list[str]:
    """The delivery targets a report misses."""
    out = []
    if report["mqtt_missing"]:
        out.append(f"{report['mqtt_missing']} seqs the MQTT cursor covers never arrived "
                   f"(first {report['mqtt_missing_first']})")
    if report["vm_missing"]:
        out.append(f"{report['vm_missing']} reading seqs the InfluxDB cursor covers are not in VictoriaMetrics "
                   f"(first {report['vm_missing_first']})")
    if report["mqtt_inversions"]:
        out.append(f"{report['mqtt_inversions']} first arrivals out of order")
    if report["mqtt_unparsed"]:
        out.append(f"{report['mqtt_unparsed']} messages without a seq outside the status topic")
    if report["mqtt_unknown"]:
        out.append(f"{report['mqtt_unknown']} seqs arrived that the store does not hold")
    if not report["mqtt_covered"]:
        out.append("the MQTT cursor covers nothing: nothing was delivered")
    return out


@contextlib.contextmanager
def rig_for(args: argparse.Namespace, phases: int) -> Iterator[Rig]:
    """A started rig in a temporary folder (kept with ``--keep``), stopped on exit or SIGTERM."""
    work = Path(tempfile.mkdtemp(prefix="amr-soak-"))
    rig = Rig(work, args.meters, args.interval, phases)

    def on_term(_sig: int, _frame: Any) -> None:
        raise SystemExit("stopped by SIGTERM")

    signal.signal(signal.SIGTERM, on_term)
    try:
        rig.start()
        yield rig
    finally:
        rig.stop()
        if args.keep:
            print(f"kept {work}", flush=True)
        else:
            subprocess.run(["rm", "-rf", str(work)], check=False)


def soak(args: argparse.Namespace) -> dict[str, Any]:
    """The long run with peer restarts; the report and the targets it misses."""
    samples: list[tuple[float, int, int]] = []
    restarts = {"broker": 0, "vm": 0}
    with rig_for(args, min(128, args.meters)) as rig:
        gw = rig.gateway("gateway.log")
        rig.wait_api(gw)
        t0 = time.monotonic()
        next_broker, next_vm = t0 + args.broker_every, t0 + args.vm_every
        next_sample = t0
        end = t0 + args.duration
        while (now := time.monotonic()) < end:
            if gw.poll() is not None:
                raise SystemExit(f"the gateway exited ({gw.returncode}) during the soak; see {rig.work}")
            if now >= next_sample:
                samples.append((now - t0, proc_status_kb(gw.pid, "VmRSS"), open_fds(gw.pid)))
                next_sample += args.sample_every
            if now >= next_broker:
                rig.broker.stop()
                rig.broker.start()
                restarts["broker"] += 1
                next_broker += args.broker_every
            if now >= next_vm:
                rig.vm.stop()
                rig.vm.start()
                restarts["vm"] += 1
                next_vm += args.vm_every
            time.sleep(max(0.05, min(next_sample, next_broker, next_vm, end) - time.monotonic()))
        backlog = rig.drain(gw, 120)
        rig.procs.stop(gw, 60)
        report = delivery_report(rig, store_facts(rig.db), 60)
    warm = [s for s in samples if s[0] >= args.warmup] or samples
    last_quarter = [s for s in samples if s[0] >= 0.75 * args.duration] or samples[-1:]
    rss0, fd0 = warm[0][1], warm[0][2]
    rss_max = max(s[1] for s in last_quarter)
    report.update({
        "loop": "soak", "meters": args.meters, "interval_s": args.interval, "duration_s": args.duration,
        "restarts": restarts, "backlog_before_stop": backlog,
        "rss_kb_after_warmup": rss0, "rss_kb_max_last_quarter": rss_max,
        "rss_growth": rss_max / rss0 - 1 if rss0 else None,
        "fds_after_warmup": fd0, "fds_at_end": samples[-1][2], "fds_max": max(s[2] for s in samples),
        "samples": samples,
    })
    misses = delivery_misses(report)
    if rss0 and rss_max > rss0 * (1 + args.rss_growth):
        misses.append(f"RSS grew {100 * (rss_max / rss0 - 1):.1f} % (> {100 * args.rss_growth:.0f} %)")
    if samples[-1][2] > fd0 + args.fd_slack:
        misses.append(f"open descriptors grew from {fd0} to {samples[-1][2]}")
    if restarts["broker"] < 1 or restarts["vm"] < 1:
        misses.append("the soak was too short to restart both peers")
    report["misses"] = misses
    return report


def kill_loop(args: argparse.Namespace) -> dict[str, Any]:
    """SIGKILL at random moments, integrity after each, then one run that delivers the rest."""
    rnd = random.Random(args.seed)
    lives: list[float] = []
    bad_integrity: list[tuple[int, str]] = []
    killed_max = 0
    with rig_for(args, min(128, args.meters)) as rig:
        for k in range(args.kills):
            gw = rig.gateway(f"gateway-{k}.log")
            life = rnd.uniform(args.min_life, args.max_life)
            if args.life_after_api:
                rig.wait_api(gw)
            time.sleep(life)
            if gw.poll() is not None:
                raise SystemExit(f"the gateway exited by itself ({gw.returncode}) before kill {k}; see {rig.work}")
            gw.send_signal(signal.SIGKILL)
            gw.wait(30)
            rig.procs.stop(gw)
            lives.append(life)
            if rig.db.exists():
                facts = store_facts(rig.db)
                if facts["integrity"] != "ok":
                    bad_integrity.append((k, str(facts["integrity"])))
                killed_max = max(killed_max, facts["max_seq"])
        gw = rig.gateway("gateway-final.log")
        rig.wait_api(gw)
        time.sleep(args.final)
        backlog = rig.drain(gw, 120)
        rig.procs.stop(gw, 60)
        facts = store_facts(rig.db)
        report = delivery_report(rig, facts, 60)
    lives.sort()
    report.update({
        "loop": "kill", "meters": args.meters, "interval_s": args.interval, "kills": args.kills,
        "life_s": {"min": lives[0], "median": lives[len(lives) // 2], "max": lives[-1]} if lives else {},
        "integrity_failures": bad_integrity, "killed_runs_max_seq": killed_max,
        "final_integrity": facts["integrity"], "backlog_before_stop": backlog,
    })
    misses = delivery_misses(report)
    if bad_integrity or facts["integrity"] != "ok":
        misses.append(f"integrity_check failed after kills {bad_integrity} / at the end: {facts['integrity']}")
    short = {s: c for s, c in facts["cursors"].items() if c < killed_max}
    if short:
        misses.append(f"cursors {short} do not cover seq {killed_max}, the last the killed runs committed")
    report["misses"] = misses
    return report


def main(argv: list[str] | None = None) -> int:
    """Run one loop, print its report, exit 1 on a missed target."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="loop", required=True)
    s = sub.add_parser("soak", help="long run with broker and VictoriaMetrics restarts")
    s.add_argument("--meters", type=int, default=1000)
    s.add_argument("--interval", type=float, default=10.0, help="seconds between a meter's readings")
    s.add_argument("--duration", type=float, default=3600.0)
    s.add_argument("--broker-every", type=float, default=300.0)
    s.add_argument("--vm-every", type=float, default=420.0)
    s.add_argument("--sample-every", type=float, default=30.0)
    s.add_argument("--warmup", type=float, default=None, help="RSS/descriptor reference time (default duration/10)")
    s.add_argument("--rss-growth", type=float, default=0.10)
    s.add_argument("--fd-slack", type=int, default=4)
    k = sub.add_parser("kill", help="SIGKILL at random moments, integrity after each")
    k.add_argument("--meters", type=int, default=50)
    k.add_argument("--interval", type=float, default=1.0)
    k.add_argument("--kills", type=int, default=100)
    k.add_argument("--min-life", type=float, default=0.2)
    k.add_argument("--max-life", type=float, default=4.0)
    k.add_argument("--life-after-api", action="store_true",
                   help="count each life from when the gateway's API answers, not from spawn (a loaded "
                        "machine can spend the whole life importing, and then no killed run commits)")
    k.add_argument("--final", type=float, default=10.0, help="seconds of the last (delivering) run")
    k.add_argument("--seed", type=int, default=None)
    for p in (s, k):
        p.add_argument("--json", type=Path, help="write the report here")
        p.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args(argv)
    if args.loop == "soak" and args.warmup is None:
        args.warmup = args.duration / 10
    if args.meters < 1 or args.interval <= 0:
        ap.error("--meters must be ≥ 1 and --interval > 0")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report = soak(args) if args.loop == "soak" else kill_loop(args)
    report["started"] = started
    shown = {k: v for k, v in report.items() if k != "samples"}
    print(json.dumps(shown, indent=1, default=str), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    for miss in report["misses"]:
        print("MISSED:", miss, flush=True)
    print("all targets met" if not report["misses"] else "TARGETS MISSED", flush=True)
    return 1 if report["misses"] else 0


if __name__ == "__main__":
    sys.exit(main())
