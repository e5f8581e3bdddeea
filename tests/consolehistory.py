"""A week of history for the demo's store, so the console's pictures show curves and bars.

The README's pictures of the console (``docs/img/console-overview.png`` and ``console-meter.png``, refreshed by running
tests/e2e/test_console_browser.py with ``AMR_CONSOLE_SCREENSHOTS=docs/img``) were taken
seconds after the demo started: a meter page with a few points and no interval bars. Before
such a run, :func:`seed_demo_history` fills the demo's data folder with the readings the
demo would have taken over the past days: the demo's own configuration and meters, each
value from the same deterministic meter model (:class:`drivers.simulation.model.MeterModel`,
the demo's seed) the demo's simulators serve, built into readings by each meter's
:class:`gateway.pipeline.ReadingBuilder` (CT × PT, units, quality) and committed by the
gateway's :class:`gateway.store.Store` (compact rows) — only the bus round trip is left out,
and the realtime schedule is taken every 5 minutes instead of every 10 s.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from gateway.clock import ScaledClock
from gateway.config import load_settings_from_text
from gateway.demo import demo_config_text
from gateway.model import PointResult, Reading
from gateway.runtime import STORE_FILE, build_meters
from gateway.simulator.fleet import SimulatedFleet
from gateway.store import Store

DEMO_SEED = 7
"""The demo's fleet seed (gateway.demo): the same meters show the same values."""
CHUNK = 2000


async def seed_demo_history(data_dir: Path, days: float = 7.0, realtime_step_s: float = 300.0) -> int:
    """Commit ``days`` of the demo's readings, ending now, into the store in ``data_dir`` (an
    existing folder, the demo's ``--data-dir``); return how many."""
    settings = load_settings_from_text(demo_config_text(data_dir), "<demo history>", data_dir, dict(os.environ))
    fleet = SimulatedFleet(settings, ScaledClock(), seed=DEMO_SEED)
    await fleet.start()
    count = 0
    try:
        store = await Store.open(data_dir / STORE_FILE, settings.store, settings.gateway.id)
        try:
            now = time.time()
            for m in build_meters(settings).values():
                model = fleet.model(m.id)
                for sched, (_, names) in m.plans.items():
                    step = max(settings.schedules[sched].every_s, realtime_step_s)
                    slot = (now - days * 86400) // step * step
                    batch: list[Reading] = []
                    while slot < now - step:
                        values = model.values_at(slot)
                        results = {n: PointResult(values[n]) for n in names if n in values}
                        batch.append(m.builder.build(sched, slot, slot + 0.3, results))
                        slot += step
                        if len(batch) >= CHUNK:
                            count += len(await store.append_readings(batch, m.retention[sched]))
                            batch = []
                    count += len(await store.append_readings(batch, m.retention[sched]))
        finally:
            await store.close()
    finally:
        await fleet.stop()
    return count
