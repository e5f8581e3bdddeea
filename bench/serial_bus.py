"""The gateway's real bus worker on an emulated RS-485 bus: share of the wire limit it uses.

For each case this starts a :class:`bench.emulator.BusEmulator` with 10 meters (8E1 timing,
pty at parity N) and drives it with the gateway's own stack, in this process:
``gateway.polling.BusWorker`` → the real driver from ``drivers.registry`` (Modbus
RTU lean link, DL/T 645 driver, DL/T 698.45 driver) → ``ReadingBuilder`` → a counting sink in place of the store.

The bus is kept saturated: every meter has one poll queued at all times (an observer
re-queues a meter's poll as soon as its reading is finished), so the worker runs
back-to-back transactions and the achieved rate can be compared with the wire's physical
limit (:mod:`bench.wire`). The scheduler is not in the loop: it would cap the rate at the
configured interval, which is not what is measured here.

Printed per case: achieved reads/s ÷ wire limit, t3.5 violations and collisions (counted by
the emulator), the silence the master left after replies (p50; t3.5 is the floor), CPU-s
per 1000 reads of this process (driver + worker + pipeline), and whether the emulator kept
time (its reply-byte lateness). Every reading's first value is checked against the
emulator's deterministic register/DI contents.

Dead-meter variants: one of the 10 meters never answers, for 60 s; the healthy meters'
reads/s is divided by the all-healthy run's reads/s measured earlier in the same
invocation.

Bus settings are the gateway's defaults (``BusSettings``: timeout 1 s, 1 retry, dead-meter
backoff) except what a pty forces: parity N, and therefore an explicit ``inter_frame_s``
equal to the 8E1 t3.5 (the driver would otherwise compute t3.5 from 10-bit characters,
shorter than the 11-bit t3.5 the emulator enforces at ≤ 19200 baud). ``--timeout``,
``--retries`` and ``--dlt645-gap`` override them for experiments.

Exit status: 0 every target met; 1 a target missed; 2 no target missed but a run was not
trustworthy (emulator lateness: repeat on a quieter machine).

Run: ``python -m bench.serial_bus`` (≈ 5 minutes), ``--quick`` for a smoke run, ``--only TEXT``
for the cases whose name contains TEXT (``--only dlt698``: the DL/T 698.45 cases).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal

from bench.baseline import Window
from bench.emulator import BusEmulator, EmulatorStats, dlt645_value, dlt698_energy, modbus_register_value
from bench.wire import dlt645_reads_per_s, dlt698_reads_per_s, modbus_reads_per_s, t35
from drivers.dlt645.points import DiPoint
from drivers.dlt698.catalogue import BY_NAME as DLT698_POINTS
from drivers.dlt698.catalogue import OadPoint
from drivers.modbus.points import ModbusLimits, RegisterPoint
from drivers.registry import create_driver
from gateway.clock import SystemClock
from gateway.model import Reading
from gateway.pipeline import ReadingBuilder
from gateway.polling import BusWorker, MeterRuntime
from gateway.profiles import compile_meter_plan
from gateway.settings import BusSettings, MeterSettings, Profile

SCHEDULE = "bench"
N_METERS = 10
MODBUS_UNITS: tuple[int, ...] = tuple(range(1, N_METERS + 1))
DLT645_METERS: tuple[str, ...] = tuple(f"{i:012d}" for i in range(1, N_METERS + 1))
#: DL/T 698.45: forward active energy, total and tariffs 1-4, in one GET-Request-NormalList.
DLT698_LIST = ("energy_import_kwh", *(f"energy_import_kwh_t{t}" for t in range(1, 5)))
DI_SINGLE = 0x00010000
DI_BLOCK = 0x0001FF00
DEAD_INDEX = N_METERS - 1  # the last meter is the dead one in dead variants


# ---------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SerialCase:
    """One benchmark run of the gateway's bus worker against an emulated bus."""

    name: str
    protocol: Literal["modbus", "dlt645", "dlt698"]
    baud: int
    registers: int = 0
    block: bool = False
    td_s: float = 0.0
    dead: bool = False
    #: Minimum ratio: of the wire limit, or (dead variants) of ``reference``'s reads/s.
    target: float | None = None
    #: Name of the all-healthy case a dead variant is compared with.
    reference: str = ""
    duration_s: float = 12.0
    warmup_s: float = 1.5

    @property
    def wire_limit(self) -> float:
        """Reads per second the wire allows (8E1)."""
        if self.protocol == "modbus":
            return modbus_reads_per_s(self.baud, self.registers, self.td_s)
        if self.protocol == "dlt698":
            return dlt698_reads_per_s(self.baud, len(DLT698_LIST), td_s=self.td_s)
        return dlt645_reads_per_s(self.baud, 20 if self.block else 4, self.td_s)


def serial_cases(quick: bool = False, full: bool = False) -> list[SerialCase]:
    """The matrix of issue 6 (targets from its table) and the DL/T 698.45 cases of issue 20."""
    cases = [
        SerialCase("modbus 9600 20r Td0", "modbus", 9600, 20, target=0.97),
        SerialCase("modbus 9600 20r Td10", "modbus", 9600, 20, td_s=0.010, target=0.97),
        SerialCase("modbus 38400 2r Td0", "modbus", 38400, 2, target=0.92),
        SerialCase("modbus 38400 2r Td10", "modbus", 38400, 2, td_s=0.010, target=0.92),
    ]
    if full:
        cases += [
            SerialCase("modbus 9600 2r Td0", "modbus", 9600, 2),
            SerialCase("modbus 38400 20r Td0", "modbus", 38400, 20),
        ]
    cases += [
        SerialCase("dlt645 2400 single Td20", "dlt645", 2400, td_s=0.020, target=0.98),
        SerialCase("dlt645 2400 block Td20", "dlt645", 2400, block=True, td_s=0.020, target=0.98),
        SerialCase(
            "modbus 9600 20r Td0 1 dead",
            "modbus",
            9600,
            20,
            dead=True,
            target=0.95,
            reference="modbus 9600 20r Td0",
            duration_s=60.0,
            warmup_s=0.0,
        ),
        SerialCase(
            "dlt645 2400 single Td20 1 dead",
            "dlt645",
            2400,
            td_s=0.020,
            dead=True,
            target=0.95,
            reference="dlt645 2400 single Td20",
            duration_s=60.0,
            warmup_s=0.0,
        ),
        SerialCase("dlt698 9600 list5 Td20", "dlt698", 9600, td_s=0.020, target=0.98),
        SerialCase(
            "dlt698 9600 list5 Td20 1 dead",
            "dlt698",
            9600,
            td_s=0.020,
            dead=True,
            target=0.95,
            reference="dlt698 9600 list5 Td20",
            duration_s=60.0,
            warmup_s=0.0,
        ),
    ]
    if quick:
        cases = [replace(c, duration_s=min(c.duration_s, 4.0), warmup_s=min(c.warmup_s, 0.5)) for c in cases]
    return cases


# ---------------------------------------------------------------------------------------
# Building the gateway's objects for the emulated bus
# ---------------------------------------------------------------------------------------


def _profile(case: SerialCase) -> Profile:
    if case.protocol == "dlt698":
        oads: dict[str, OadPoint] = {n: DLT698_POINTS[n] for n in DLT698_LIST}
        return Profile("bench-dlt698", "dlt698", dict(oads))
    if case.protocol == "modbus":
        points: dict[str, RegisterPoint | DiPoint] = {
            f"reg_{a:03d}": RegisterPoint(name=f"reg_{a:03d}", function=3, address=a, type="u32")
            for a in range(0, case.registers, 2)
        }
        return Profile("bench-modbus", "modbus", points, ModbusLimits())
    if not case.block:
        single = DiPoint("energy_import_kwh", DI_SINGLE, "XXXXXX.XX", unit="kWh")
        return Profile("bench-dlt645", "dlt645", {single.name: single})
    names = ["energy_import_kwh", *(f"energy_import_kwh_t{t}" for t in range(1, 5))]
    block = {
        n: DiPoint(n, 0x00010000 | (i << 8), "XXXXXX.XX", unit="kWh", block=DI_BLOCK, index=i)
        for i, n in enumerate(names)
    }
    return Profile("bench-dlt645-block", "dlt645", dict(block))


# The reply timeouts a site engineer configures for these lines: 200 ms on a Modbus bus (the
# issue's reference scenario: "a 0.2 s timeout and 1 retry"), 500 ms on DL/T 645 (the
# standard's longest turnaround Td). The gateway's own default (1 s) suits unknown lines.
BENCH_TIMEOUT_S = {"modbus": 0.2, "dlt645": 0.5, "dlt698": 0.5}
BUS_PROTOCOL = {"modbus": "modbus-rtu", "dlt645": "dlt645", "dlt698": "dlt698"}


def _bus(case: SerialCase, path: str, timeout_s: float | None, retries: int | None, gap: float | None) -> BusSettings:
    defaults = BusSettings(id="bench", type="serial", protocol="modbus-rtu")
    # Modbus: the 8E1 t3.5 (the pty forces parity N, the emulated wire is 8E1).
    # DL/T 645 and 698.45: None keeps the driver's own default pause.
    inter_frame = t35(case.baud) if case.protocol == "modbus" else gap
    return BusSettings(
        id="bench",
        type="serial",
        protocol=BUS_PROTOCOL[case.protocol],
        port=path,
        baudrate=case.baud,
        parity="N",
        timeout_s=BENCH_TIMEOUT_S[case.protocol] if timeout_s is None else timeout_s,
        retries=defaults.retries if retries is None else retries,
        inter_frame_s=inter_frame,
    )


def _meters(case: SerialCase, bus: BusSettings) -> list[MeterRuntime]:
    profile = _profile(case)
    addresses = [str(u) for u in MODBUS_UNITS] if case.protocol == "modbus" else list(DLT645_METERS)
    out = []
    names = list(profile.points)
    for i, address in enumerate(addresses):
        settings = MeterSettings(
            id=f"m{i + 1:02d}",
            customer="bench",
            bus=bus.id,
            address=address,
            profile=profile.name,
            schedules=(SCHEDULE,),
        )
        plan = compile_meter_plan(bus, settings, profile, names)
        out.append(
            MeterRuntime(
                settings, profile, ReadingBuilder(settings, profile), {SCHEDULE: (plan, names)}, {SCHEDULE: "interval"}
            )
        )
    return out


def _expected_first_value(case: SerialCase, address: str) -> Decimal:
    """The value the emulator holds for the first point of the profile."""
    if case.protocol == "modbus":
        unit = int(address)
        return Decimal((modbus_register_value(unit, 3, 0) << 16) | modbus_register_value(unit, 3, 1))
    if case.protocol == "dlt698":
        return Decimal(dlt698_energy(address, 1)).scaleb(-2)
    raw = dlt645_value(address, DI_SINGLE)
    assert raw is not None
    return Decimal(raw[::-1].hex()) / 100


class CountingSink:
    """Stands in for the store: counts what the worker submits."""

    def __init__(self) -> None:
        """Start at zero."""
        self.submitted = 0

    def submit_nowait(self, reading: Reading, retention: str = "interval") -> None:
        """Count a reading (the :class:`gateway.polling.ReadingSink` protocol)."""
        self.submitted += 1


# ---------------------------------------------------------------------------------------
# Running a case
# ---------------------------------------------------------------------------------------


@dataclass
class SerialResult:
    """What a case measured."""

    case: SerialCase
    reads: int
    healthy_reads: int
    failed: int
    wrong_values: int
    elapsed_s: float
    reads_per_s: float
    healthy_reads_per_s: float
    ratio: float
    cpu_s_per_1000: float
    t35_violations: int
    collisions: int
    silence_p50_ms: float
    lateness_p99_ms: float
    lost_fraction: float
    trustworthy: bool
    scheduling: str
    reference_reads_per_s: float | None = None
    per_meter: dict[str, int] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        """True/False against the target; None when the case has none."""
        if self.case.target is None:
            return None
        ok = self.ratio >= self.case.target and self.wrong_values == 0
        if self.case.protocol == "modbus":
            ok = ok and self.t35_violations == 0
        return ok

    def row(self) -> str:
        """One line of the results table."""
        c = self.case
        target = "" if c.target is None else f"≥{c.target:.2f}"
        met = {None: "", True: "met", False: "MISSED"}[self.met]
        basis = "healthy" if c.dead else "wire"
        return (
            f"{c.name:<32} {self.reads_per_s:8.2f} {c.wire_limit:8.2f} {self.ratio:7.3f} {basis:>7} "
            f"{self.t35_violations:5d} {self.collisions:5d} {self.failed:5d} {self.silence_p50_ms:7.3f} "
            f"{self.cpu_s_per_1000:7.3f} {self.lateness_p99_ms:7.3f} {'yes' if self.trustworthy else 'NO':>5} "
            f"{target:>6} {met}"
        )


HEADER = (
    f"{'case':<32} {'reads/s':>8} {'limit':>8} {'ratio':>7} {'of':>7} {'viol':>5} {'coll':>5} "
    f"{'fail':>5} {'sil p50':>7} {'cpu/1k':>7} {'lat p99':>7} {'trust':>5} {'target':>6}"
)


async def _drive(case: SerialCase, bus: BusSettings, emu: BusEmulator) -> tuple[Window, int, int]:
    """Run the worker until the window closes; return it, wrong values, healthy reads."""
    meters = _meters(case, bus)
    dead_id = meters[DEAD_INDEX].id if case.dead else ""
    window = Window(emu, case.warmup_s, case.duration_s)
    closed = asyncio.Event()
    clock = SystemClock()
    sink = CountingSink()
    counters = {"wrong": 0, "healthy": 0}
    expected = {m.id: _expected_first_value(case, m.settings.address) for m in meters}
    first_point = next(iter(meters[0].profile.points))
    worker: BusWorker | None = None

    def observe(meter: MeterRuntime, reading: Reading) -> None:
        ok = reading.quality == "good"
        if ok:
            point = reading.points.get(first_point)
            if point is None or point.raw != expected[meter.id]:
                counters["wrong"] += 1
        was_open = window.phase == "open"
        if not window.done(ok, meter.id):
            closed.set()
            return
        if was_open and ok and meter.id != dead_id:
            counters["healthy"] += 1
        assert worker is not None
        worker.poll(meter, SCHEDULE, clock.time())

    worker = BusWorker(bus, create_driver(bus), sink, clock, shared=True, observers=[observe])
    task = asyncio.create_task(worker.run(), name="bench-bus-worker")
    now = clock.time()
    for meter in meters:
        worker.poll(meter, SCHEDULE, now)
    closing = asyncio.create_task(closed.wait(), name="bench-window-closed")
    try:
        # A worker that dies (a bug, not a meter failure) ends the case at once, with its error.
        await asyncio.wait({task, closing}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
            raise RuntimeError("the bus worker stopped before the measurement window closed")
    finally:
        closing.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return window, counters["wrong"], counters["healthy"]


def run_case(
    case: SerialCase,
    *,
    timeout_s: float | None = None,
    retries: int | None = None,
    gap: float | None = None,
    references: dict[str, float] | None = None,
) -> SerialResult:
    """Start an emulator for ``case``, run the gateway's bus worker on it, return the result."""
    slaves: Sequence[int | str] = MODBUS_UNITS if case.protocol == "modbus" else DLT645_METERS
    dead = [slaves[DEAD_INDEX]] if case.dead else []
    emu = BusEmulator(case.protocol, case.baud, slaves=slaves, td_s=case.td_s, dead=dead)
    path = emu.start()
    try:
        bus = _bus(case, path, timeout_s, retries, gap)
        budget = case.warmup_s + case.duration_s + 120.0
        window, wrong, healthy = asyncio.run(asyncio.wait_for(_drive(case, bus, emu), budget))
        stats = emu.stop()
    finally:
        emu.kill()
    return _summarise(case, window, stats, wrong, healthy, references or {})


def _summarise(
    case: SerialCase, window: Window, stats: EmulatorStats, wrong: int, healthy: int, references: dict[str, float]
) -> SerialResult:
    elapsed = window.elapsed_s
    healthy_rate = healthy / elapsed if elapsed > 0 else 0.0
    reference = references.get(case.reference) if case.dead else None
    if case.dead:
        ratio = healthy_rate / reference if reference else float("nan")
    else:
        ratio = window.reads_per_s / case.wire_limit
    return SerialResult(
        case=case,
        reads=window.ok,
        healthy_reads=healthy,
        failed=window.errors,
        wrong_values=wrong,
        elapsed_s=elapsed,
        reads_per_s=window.reads_per_s,
        healthy_reads_per_s=healthy_rate,
        ratio=ratio,
        cpu_s_per_1000=1000 * window.cpu_s / window.ok if window.ok else float("nan"),
        t35_violations=stats.t35_violations,
        collisions=stats.collisions,
        silence_p50_ms=stats.silence_after_reply.p50 * 1e3,
        lateness_p99_ms=stats.lateness.p99 * 1e3,
        lost_fraction=stats.lost_fraction,
        trustworthy=stats.trustworthy(),
        scheduling=stats.scheduling,
        reference_reads_per_s=reference,
        per_meter=dict(window.per_slave),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the serial benchmark matrix; print the table; exit by the targets (module doc)."""
    ap = argparse.ArgumentParser(description="The gateway's bus worker on an emulated RS-485 bus (issue 6).")
    ap.add_argument("--quick", action="store_true", help="4 s per case (smoke run; dead variants too)")
    ap.add_argument("--full", action="store_true", help="also 9600/2 regs and 38400/20 regs (no target)")
    ap.add_argument("--only", default="", help="run cases whose name contains this text (and their references)")
    ap.add_argument("--timeout", type=float, default=None, help="override the bus timeout_s (default: gateway's)")
    ap.add_argument("--retries", type=int, default=None, help="override the bus retries (default: gateway's)")
    ap.add_argument(
        "--dlt645-gap", type=float, default=None, help="override inter_frame_s on DL/T 645 and 698.45 buses"
    )
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cases = serial_cases(args.quick, args.full)
    if args.only:
        wanted = {c.name for c in cases if args.only in c.name}
        wanted |= {c.reference for c in cases if c.name in wanted and c.reference}
        cases = [c for c in cases if c.name in wanted]
    started = time.monotonic()
    print(
        f"# serial bus benchmark: {len(cases)} cases, {N_METERS} emulated meters per bus, 8E1 timing, "
        f"gateway bus worker + real drivers; {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
    )
    print(HEADER, flush=True)
    results: list[SerialResult] = []
    references: dict[str, float] = {}
    for case in cases:
        result = run_case(
            case, timeout_s=args.timeout, retries=args.retries, gap=args.dlt645_gap, references=references
        )
        references[case.name] = result.reads_per_s
        results.append(result)
        print(result.row(), flush=True)
    print(
        f"# total {time.monotonic() - started:.0f} s; emulator scheduling: {results[0].scheduling if results else '-'}"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump([_jsonable(r) for r in results], fh, indent=2)
    missed = [r.case.name for r in results if r.met is False]
    untrusted = [r.case.name for r in results if not r.trustworthy]
    if missed:
        print(f"# targets missed: {', '.join(missed)}", file=sys.stderr)
        return 1
    if untrusted:
        print(f"# emulator lateness too high, repeat: {', '.join(untrusted)}", file=sys.stderr)
        return 2
    return 0


def _jsonable(result: SerialResult) -> dict[str, Any]:
    data = asdict(result)
    data["met"] = result.met
    return data


if __name__ == "__main__":
    sys.exit(main())
