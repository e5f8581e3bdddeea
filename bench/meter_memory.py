"""Python memory the gateway keeps per meter, part by part (tracemalloc, one process).

Why: ``bench/tcp_fleet.py`` case b (10,000 meters) checks the gateway's peak RSS against
200 MB, and RSS only says *that* it grew. This bench builds what the gateway keeps for each
of ``--meters`` meters of the fleet bench's point set, one part after another, and prints
the bytes each part holds per meter (what it allocated and still holds, by tracemalloc):

* **settings + meter runtimes**: the parsed configuration and ``build_meters`` (plans,
  builders);
* **review state**: each meter's :class:`~gateway.review.rules.MeterState` after
  ``--slots`` readings ``--every`` seconds apart, through ``observe_reading`` and every
  per-reading rule, as the review engine runs them;
* **store shapes**: each meter's reading shape as the store keeps it
  (:func:`~gateway.storecodec.shape_from_spec` under its :data:`~gateway.storecodec.ShapeKey`);
* **line parts**: what the InfluxDB sink keeps per shape to write its lines
  (:func:`~gateway.sinks.lineproto.compact_line`).

The readings themselves are built before the first part and not counted. Run from the
repository root: ``python -m bench.meter_memory --meters 2000``; for another source tree, put
it first on ``PYTHONPATH`` and run this file as a script from a folder with no ``gateway/``
(as ``bench/pipeline_parts.py`` says).
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc
from typing import Any

from bench.pipeline_parts import _config, simulated_replies
from drivers.modbus.driver import _decode_into
from gateway import storecodec
from gateway.config import load_settings_from_text
from gateway.model import PointResult, Reading
from gateway.review.engine import meter_context
from gateway.review.rules import MeterState, observe_reading
from gateway.review.ruleset import evaluate
from gateway.sinks.lineproto import compact_line


def _held() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def main(argv: list[str] | None = None) -> int:
    """Build each part for every meter; print bytes held per meter."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meters", type=int, default=2000)
    ap.add_argument("--slots", type=int, default=6, help="readings per meter through the review")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between a meter's readings")
    args = ap.parse_args(argv)
    from gateway.runtime import build_meters

    tracemalloc.start()
    kept: dict[str, Any] = {}
    spent: dict[str, int] = {}
    base = _held()
    settings = load_settings_from_text(_config(args.meters))
    runtimes = kept["runtimes"] = build_meters(settings)
    spent["settings + meter runtimes"] = _held() - base

    readings: list[Reading] = []
    for per_slot in simulated_replies(runtimes, args.slots, args.every):
        for meter_id, slot, parts in per_slot:
            results: dict[str, PointResult] = {}
            for layout, data in parts:
                _decode_into(results, layout, data)
            readings.append(runtimes[meter_id].builder.build("s", slot, slot + 0.004, results))
    readings.sort(key=lambda r: r.slot)

    base = _held()
    th = {m.id: settings.review.for_meter(m.id, m.customer) for m in settings.meters.values()}
    contexts = {m.id: meter_context(m, "UTC", th[m.id], runtimes[m.id].profile) for m in settings.meters.values()}
    states = kept["states"] = {rt.id: MeterState() for rt in runtimes.values()}
    for r in readings:
        evaluate(states[r.meter], observe_reading(r, args.every, th[r.meter].power_point), contexts[r.meter],
                 th[r.meter])
    del contexts
    spent["review state"] = _held() - base

    base = _held()
    shapes: dict[Any, Any] = {}
    kept["shapes"] = shapes
    shared = getattr(storecodec, "shared_key", lambda key: key)     # (a tree before f6e6323 has none)
    bodies = []
    for r in readings[-args.meters:]:
        key = storecodec.shape_key(r, "bench")
        shape = shapes.get(key)
        if shape is None:
            marks = storecodec.marks_of(r, storecodec.factors_of(key[5], key[6]))
            spec = storecodec.spec_of(key, marks)
            shape = shapes[shared(key)] = storecodec.shape_from_spec(len(shapes) + 1, spec)
        bodies.append((shape, storecodec.encode(r, shape), r.ts))
    spent["store shapes"] = _held() - base - sum(len(b) + 49 for _s, b, _t in bodies) - 8 * len(bodies)

    base = _held()
    lines = [compact_line("amr_reading", shape, seq, ts, body) for seq, (shape, body, ts) in enumerate(bodies)]
    spent["line parts"] = _held() - base - sum(len(x) + 49 for x in lines) - 8 * len(lines)

    print(f"{args.meters} meters, {args.slots} readings each {args.every:g} s apart; bytes held per meter:")
    for part, n in spent.items():
        print(f"  {part:28s} {n / args.meters:8.0f}")
    print(f"  {'all parts':28s} {sum(spent.values()) / args.meters:8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
