"""What each part of the gateway costs in case a, against the bare loop, in one sitting.

``tcp_fleet.py`` runs one gateway and then one bare loop per invocation; on this shared
2-core box a run moves by ±10 % against the next, which hides a part that costs 5 %. Here
one simulator (from a folder ``tcp_fleet.py --keep`` left) serves round after round of:

* ``bare`` — ``bench/fleet_baseline.py --prime-malloc``, the bare loop of the CPU target;
* ``floor`` — the same loop with ``bench/pipeline_floor.py`` behind it (``--floor``): a
  plain store, MQTT and InfluxDB with no review and no cursors, the yardstick for the
  gateway's own store and sinks;
* ``full`` — the real gateway with the kept configuration (store, MQTT, InfluxDB, review);
* ``noreview`` — the same, its review engine taking no reading;
* ``nosinks`` — no ``mqtt:`` and no ``influxdb:`` section (``nosinks-noreview``: both);
  ``nomqtt``, ``noinflux`` — without one of them;
* ``pollonly`` — no sinks, no review, and the store's ``submit_nowait`` a no-op: polling,
  decoding and building the reading only;

each variant in turn, the same warm-up and window, CPU of the whole process (every thread)
per 1,000 readings finished in the window; the mean of each, and its ratio to the bare
loop's mean, at the end. A variant may name a source tree first (``/tmp/old:full``), which
the gateway then imports instead of this one (``PYTHONPATH``), and ``+EXPERIMENT=ARG`` suffixes
that add ``tcp_fleet.py`` experiments to it (``full+coalesce=2``)::

    python -m bench.tcp_fleet --only a --keep --no-baseline     # prints "kept /tmp/amr-bench-tcp-…"
    python -m bench.fleet_parts /tmp/amr-bench-tcp-… --rounds 3 --variants bare,full,noreview,nosinks-noreview,pollonly

Differences of a part are differences of these means. The variants patch the gateway in its
own process with ``tcp_fleet.py``'s experiment wrapper (``no-review``, ``no-store``, and
``count`` for the readings finished), so they are measurements, not configurations to run.
The bare loop sends the request PDUs the kept configuration compiles to (``plan_pdus``), to
its ports. Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.tcp_fleet import gateway_argv, plan_pdus, proc_cpu_s, proc_status_kb

REPO = Path(__file__).resolve().parent.parent


def variant_config(base: str, name: str) -> str:
    """The kept configuration as variant ``name`` runs it."""
    name = name.split("+", maxsplit=1)[0]
    if "nosinks" in name or "nomqtt" in name or name == "pollonly":
        base = re.sub(r"\nmqtt:.*?(?=\n\S)", "", base, flags=re.S)
    if "nosinks" in name or "noinflux" in name or name == "pollonly":
        base = re.sub(r"\ninfluxdb:.*?(?=\n\S)", "", base, flags=re.S)
    return base


def variant_experiments(name: str, count: Path) -> str:
    """The ``tcp_fleet.py`` experiments (gateway patches) variant ``name`` runs under."""
    name, *extra = name.split("+")
    patches = [f"count:{count}", *(e.replace("=", ":") for e in extra)]
    if "noreview" in name or name == "pollonly":
        patches.append("no-review")
    if name == "pollonly":
        patches.append("no-store")
    return ",".join(patches)


def read_count(path: Path) -> int:
    """Readings the gateway finished so far (0 before its first report)."""
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return 0


def first_port(config: str) -> int:
    """The port of the kept configuration's first bus (meter 1's), for the bare loop."""
    found = re.search(r"\bport: (\d+)", config)
    if found is None:
        raise SystemExit("the kept gw.yaml names no bus port")
    return int(found.group(1))


def run_bare(args: argparse.Namespace, port_base: int, pdus: list[str], floor: bool = False) -> tuple[float, str]:
    """One bare-loop window (``floor``: with bench/pipeline_floor.py behind it): CPU-s per 1,000 reads, and a note."""
    argv = [sys.executable, "-m", "bench.fleet_baseline", "--meters", str(args.meters), "--port-base",
            str(port_base), "--interval", "1", "--phases", "128", "--prime-malloc",
            "--warmup", str(args.warmup), "--window", str(args.window)]
    for pdu in pdus:
        argv += ["--pdu", pdu]
    if floor:
        argv.append("--floor")
    out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=True)
    d = json.loads(out.stdout.strip().splitlines()[-1])
    note = f"{d['reads']} reads, {d['failed']} failed"
    if floor:
        note += (f"; floor: {d['floor_committed']} committed, {d['floor_mqtt_acked']} PUBACKs, "
                 f"{d['floor_influx_posted']} lines posted")
    return d["cpu_s"] / d["reads"] * 1000, note


def run_gateway(args: argparse.Namespace, work: Path, base_config: str, variant: str) -> tuple[float, str]:
    """One gateway window of ``[TREE:]NAME``: CPU-s per 1,000 readings, and a note."""
    tree, _, name = variant.rpartition(":")
    config = work / f"gw-{name}.yaml"
    config.write_text(variant_config(base_config, name))
    subprocess.run(["rm", "-rf", str(work / "data")], check=True)
    count = work / "count"
    count.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=tree or str(REPO))
    argv = [*gateway_argv(variant_experiments(name, count)), "--log-level", "warning", "run", "-c", str(config)]
    with open(work / "gateway.log", "w") as log:
        proc = subprocess.Popen(argv, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(args.warmup)
        if proc.poll() is not None:
            raise SystemExit(f"{variant}: the gateway exited; see {work / 'gateway.log'}")
        t0, c0 = proc_cpu_s(proc.pid), read_count(count)
        time.sleep(args.window)
        t1, c1 = proc_cpu_s(proc.pid), read_count(count)
        hwm = proc_status_kb(proc.pid, "VmHWM")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = max(c1 - c0, 1)
    return (t1 - t0) / done * 1000, f"{done} readings, peak RSS {hwm // 1024} MB"


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print each window, then the means and their ratios to the bare loop."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("keep", type=Path, help="a folder `python -m bench.tcp_fleet --only a --keep` left")
    ap.add_argument("--variants", default="bare,full,noreview,nosinks-noreview,pollonly")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--window", type=float, default=15.0)
    ap.add_argument("--meters", type=int, default=1000, help="the kept case's meters (case a: 1,000)")
    args = ap.parse_args(argv)
    kept = sorted(args.keep.glob("run*/gw.yaml"))
    if not kept or not (args.keep / "sim.yaml").exists():
        raise SystemExit(f"{args.keep} holds no sim.yaml and run*/gw.yaml: give a folder tcp_fleet.py --keep left")
    variants = args.variants.split(",")
    with tempfile.TemporaryDirectory(prefix="amr-fleet-parts-") as folder:
        work = Path(folder)
        base_config = re.sub(r"data_dir: [^}]*", f"data_dir: {work / 'data'}", kept[0].read_text(), count=1)
        pdus = plan_pdus(kept[0])
        port_base = first_port(base_config) - 1
        with open(work / "simulator.log", "w") as log:
            sim = subprocess.Popen([sys.executable, "-m", "gateway.cli", "--log-level", "warning", "simulate",
                                    "-c", str(args.keep / "sim.yaml")], cwd=work, stdout=log, stderr=subprocess.STDOUT)
        try:
            time.sleep(3)
            results: dict[str, list[float]] = {v: [] for v in variants}
            for rnd in range(1, args.rounds + 1):
                for v in variants:
                    if v in ("bare", "floor"):
                        per, note = run_bare(args, port_base, pdus, floor=v == "floor")
                    else:
                        per, note = run_gateway(args, work, base_config, v)
                    results[v].append(per)
                    print(f"round {rnd} {v}: {per:.3f} CPU-s per 1,000 ({note})", flush=True)
        finally:
            sim.send_signal(signal.SIGKILL)
            sim.wait()
    bare = results.get("bare")
    bare_mean = sum(bare) / len(bare) if bare else None
    for v, xs in results.items():
        mean = sum(xs) / len(xs)
        ratio = f"  {mean / bare_mean:.2f} × bare" if bare_mean else ""
        print(f"{v:32s} mean {mean:.3f}  ({' '.join(f'{x:.3f}' for x in xs)}){ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
