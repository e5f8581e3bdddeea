"""Modbus driver: TCP, RTU on a serial port, RTU framed over TCP.

Entry points: :func:`drivers.modbus.driver.create_driver` (one driver per bus),
:func:`drivers.modbus.plan.compile_plan` (once per meter and schedule, at configuration
load) and :mod:`drivers.modbus.decode`. Transactions: :mod:`drivers.modbus.link` (RTU and
MBAP framing on the shared pipes of :mod:`drivers.transport`; why not pymodbus's clients:
see that module's docstring).

The gateway core reaches this package only through :mod:`drivers.modbus.descriptor` (found
by :mod:`drivers.registry`). This package module imports nothing itself, so loading the
descriptor or the profile schema does not pull in the transports; ``create_driver`` and
``compile_plan`` are resolved lazily for convenience.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """Lazy access to ``create_driver``, ``ModbusDriver`` and ``compile_plan``."""
    if name in ("create_driver", "ModbusDriver"):
        from drivers.modbus import driver

        return getattr(driver, name)
    if name == "compile_plan":
        from drivers.modbus import plan

        return plan.compile_plan
    raise AttributeError(name)
