"""What the review fault and false-alarm tests share: readings made from the simulator's
load model (what a meter on the wire would show, multiplied as the gateway does), and a
small fleet that runs them through the pure rules and the bus folding on simulated time.

No sockets here, on purpose: a 30-day, 50-meter fleet read every 15 minutes is 144,000
readings, which the rules judge in seconds but a socket round trip per point would turn into
hours. The wire path of the same model (the DL/T 645 simulator serving faults and event
counters to the running gateway) is tested in tests/integration/test_review_faults_live.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from drivers.simulation.model import MeterModel
from gateway.model import PointValue, Reading
from gateway.review.bus import bus_key, fold_bus_failure
from gateway.review.rules import MeterContext, MeterState, RuleEvent, observe_reading
from gateway.review.ruleset import evaluate
from gateway.review_thresholds import ReviewThresholds

TZ = "Asia/Shanghai"
ZONE = ZoneInfo(TZ)
QUARTER = 900.0
#: 2026-09-01 00:00 +08:00 (a Tuesday): the fleet's models start here
EPOCH = datetime(2026, 9, 1, tzinfo=ZONE).timestamp()


def reading_from_model(meter: str, model: MeterModel, t: float, *, bus: str = "rs1", customer: str = "C1",
                       with_clock: bool = True) -> Reading:
    """The reading a gateway makes of ``model`` at ``t``: secondary points × CT × PT, clock, event counters."""
    v = model.values_at(t)
    ct, pt = model.ct, model.pt
    points: dict[str, PointValue] = {}
    for name, raw in v.items():
        if name.startswith(("energy_", "power_kw", "power_kvar", "demand_")):
            value = raw * ct * pt
        elif name.startswith("voltage_"):
            value = raw * pt
        elif name.startswith("current_"):
            value = raw * ct
        else:
            value = raw
        points[name] = PointValue(raw, value, "")
    for name, raw in model.events_at(t).items():
        points[name] = PointValue(raw, raw, "")
    if with_clock:
        shown = datetime.fromtimestamp(t + model.faults.clock_offset_s(t), ZONE).replace(tzinfo=None)
        points["meter_clock"] = PointValue(shown.isoformat(timespec="seconds"), None, "")
    return Reading(meter=meter, customer=customer, bus=bus, schedule="interval", slot=t, ts=t + 2.0,
                   points=points, ct=ct, pt=pt)


def failed_reading(meter: str, t: float, *, bus: str = "rs1", customer: str = "C1") -> Reading:
    """A poll the meter did not answer."""
    return Reading(meter=meter, customer=customer, bus=bus, schedule="interval", slot=t, ts=t + 2.0,
                   points={}, quality="timeout", error="no reply within 1 s")


@dataclass
class Fleet:
    """Meters on buses, judged reading by reading as the engine does (rules, then the bus fold)."""

    models: dict[str, MeterModel]
    buses: dict[str, list[str]]
    thresholds: ReviewThresholds = field(default_factory=ReviewThresholds)
    customers: dict[str, str] = field(default_factory=dict)
    states: dict[str, MeterState] = field(default_factory=dict)
    events: list[tuple[str, RuleEvent]] = field(default_factory=list)
    _per_meter: dict[str, tuple[ReviewThresholds, MeterContext]] = field(default_factory=dict)

    def poll(self, t: float, silent: Iterable[str] = ()) -> list[tuple[str, RuleEvent]]:
        """Read every meter once at slot ``t`` (``silent`` ones fail); the events decided."""
        mute = set(silent)
        out: list[tuple[str, RuleEvent]] = []
        for bus, meters in self.buses.items():
            for meter in meters:
                model = self.models[meter]
                customer = self.customers.get(meter, "C1")
                if meter in mute or model.faults.is_on("silent", t):
                    reading = failed_reading(meter, t, bus=bus, customer=customer)
                else:
                    reading = reading_from_model(meter, model, t, bus=bus, customer=customer)
                th, ctx = self._judged_by(meter, customer)
                obs = observe_reading(reading, QUARTER, th.power_point)
                st = self.states.setdefault(meter, MeterState())
                events, errors = evaluate(st, obs, ctx, th)
                assert not errors, errors
                key = bus_key(bus)
                mine, bus_events = fold_bus_failure(bus, self.states.setdefault(key, MeterState()), meters,
                                                    self.states, obs, events, th)
                out += [(meter, e) for e in mine] + [(key, e) for e in bus_events]
        self.events += out
        return out

    def _judged_by(self, meter: str, customer: str) -> tuple[ReviewThresholds, MeterContext]:
        """The meter's thresholds (its customer's and its own overrides applied) and context,
        made once per meter as the engine makes them at start."""
        got = self._per_meter.get(meter)
        if got is None:
            got = self._per_meter[meter] = (self.thresholds.for_meter(meter, customer),
                                            MeterContext(tz=TZ, identity=f"{meter}|sim"))
        return got

    def run(self, start: float, end: float, step: float = QUARTER) -> list[tuple[str, RuleEvent]]:
        """Poll every ``step`` from ``start`` (inclusive) to ``end`` (exclusive)."""
        out: list[tuple[str, RuleEvent]] = []
        t = start
        while t < end:
            out += self.poll(t)
            t += step
        return out


def days(n: float) -> float:
    """Seconds in ``n`` days."""
    return n * 86400.0


def hours(n: float) -> float:
    """Seconds in ``n`` hours."""
    return n * 3600.0


def local_day(d: int) -> float:
    """Epoch of local midnight ``d`` days after EPOCH (holidays and DST kept out of the arithmetic)."""
    return (datetime.fromtimestamp(EPOCH, ZONE) + timedelta(days=d)).timestamp()


def decimal(x: str) -> Decimal:
    """A Decimal (short name for tables)."""
    return Decimal(x)
