"""The serial benchmark still drives the gateway's real bus worker (bench/serial_bus.py).

The benchmark is not part of the suite, so an interface change in ``gateway.polling`` once
broke it silently (the worker died on the bench's sink and the case hung until its budget).
This runs one short case end to end on an emulated bus and checks what it counted, not how
fast: the figures themselves belong to ``python -m bench.serial_bus``.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(ROOT))

from bench.serial_bus import run_case, serial_cases  # noqa: E402


def test_a_short_modbus_case_reads_every_meter_with_the_values_the_emulator_serves() -> None:
    case = next(c for c in serial_cases(quick=True) if c.protocol == "modbus" and c.baud == 38400 and not c.dead)
    result = run_case(replace(case, warmup_s=0.3, duration_s=1.0))
    assert result.reads > 10
    assert result.wrong_values == 0
    assert result.collisions == 0
    assert len(result.per_meter) == 10, result.per_meter


def test_a_short_dlt698_case_reads_every_meter_with_the_values_the_emulator_serves() -> None:
    case = next(c for c in serial_cases(quick=True) if c.protocol == "dlt698" and not c.dead)
    result = run_case(replace(case, warmup_s=0.3, duration_s=1.5))
    assert result.reads >= 5
    assert result.wrong_values == 0 and result.failed == 0
    assert result.collisions == 0
