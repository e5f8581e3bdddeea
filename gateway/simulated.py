"""Buses the gateway simulates itself (``simulate: true``), and the rule for rehearsing on them.

Why: a billing plan is best rehearsed on the very configuration file that will run the site,
on a clock that passes a month in minutes (``amr-gateway run -c FILE --clock-start ...
--clock-rate ...``). An accelerated clock is only honest when every meter lives on that
clock too, so the rule is:

* a bus marked ``simulate: true`` is served by simulators the gateway starts in its own
  process, on its own clock (TCP buses on their loopback port, serial buses on a
  pseudo-terminal linked at the bus's ``port`` path), seeded from each meter's id exactly as
  ``amr-gateway simulate`` seeds them; a meter is *simulated* when its bus is;
* ``--clock-start``/``--clock-rate`` are accepted only when every configured meter is
  simulated; otherwise ``run`` refuses before anything starts and names the real meters (a
  real meter cannot run faster than real time, and its readings would be stamped with a
  simulated time).

A reload keeps the rule: a new file with a real meter is refused while the clock is
simulated, and a change of the simulated buses or their meters restarts the simulators.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.clock import Clock
    from gateway.settings import Settings
    from gateway.simulator.fleet import SimulatedFleet

log = logging.getLogger("amr.simulated")

SEED = 1
"""The simulators' seed (``amr-gateway simulate``'s default), so ``run`` and ``simulate`` on
one file show the same meters."""

SHOWN = 5
"""Real meters named in the refusal before it says how many more there are."""


def refuse_real_meters(settings: Settings) -> None:
    """Raise a ConfigError naming the real meters (whose bus is not ``simulate: true``), if any.

    Called when ``run`` is given ``--clock-start``/``--clock-rate``; the message says what
    to do either way (mark the bus simulated, or run without the clock options).
    """
    real = settings.real_meters()
    if not real:
        return
    named = ", ".join(f"{m} (bus {settings.meters[m].bus})" for m in real[:SHOWN])
    more = f" and {len(real) - SHOWN} more" if len(real) > SHOWN else ""
    raise ConfigError(
        f"--clock-start/--clock-rate rehearse a billing plan on simulated meters only, and "
        f"{len(real)} configured meter{'s are' if len(real) > 1 else ' is'} real: {named}{more}. "
        "Mark their buses `simulate: true` to rehearse on simulators the gateway starts itself, "
        "or run without the clock options to read the real meters in real time")


def simulated_part(settings: Settings) -> Settings | None:
    """``settings`` cut down to its simulated buses and their meters; None when it has none."""
    if not settings.simulated_buses:
        return None
    buses = {k: b for k, b in settings.buses.items() if k in settings.simulated_buses}
    meters = {k: m for k, m in settings.meters.items() if m.bus in settings.simulated_buses}
    if not meters:
        return None
    profiles = {m.profile: settings.profiles[m.profile] for m in meters.values()}
    return replace(settings, buses=buses, meters=meters, profiles=profiles)


def same_simulation(a: Settings | None, b: Settings | None) -> bool:
    """Whether two simulated parts serve the same meters the same way (no restart needed)."""
    if a is None or b is None:
        return a is b
    return ((a.buses, a.meters, a.profiles, a.gateway.timezone)
            == (b.buses, b.meters, b.profiles, b.gateway.timezone))


class SimulatedBuses:
    """The simulators of a configuration's ``simulate: true`` buses, on the gateway's clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.part: Settings | None = None
        self.fleet: SimulatedFleet | None = None

    async def serve(self, settings: Settings) -> None:
        """Serve the simulated buses of ``settings``; restart the simulators only when they changed."""
        part = simulated_part(settings)
        if self.fleet is not None and same_simulation(self.part, part):
            return
        await self.stop()
        if part is None:
            return
        from gateway.simulator.fleet import SimulatedFleet

        fleet = SimulatedFleet(part, self.clock, seed=SEED)
        await fleet.start()
        self.fleet, self.part = fleet, part
        log.info("simulating %d meter(s) on bus(es) %s (simulate: true); they are not real meters",
                 len(part.meters), ", ".join(part.buses))

    async def stop(self) -> None:
        """Stop every simulator (and remove serial links)."""
        if self.fleet is not None:
            await self.fleet.stop()
        self.fleet, self.part = None, None


__all__ = ["SEED", "SimulatedBuses", "refuse_real_meters", "same_simulation", "simulated_part"]
