"""Simulated meters for tests, the demo and benchmarks.

:mod:`gateway.simulator.model` is the deterministic meter (every value a pure function of
simulated time); :mod:`gateway.simulator.modbus_server` serves such meters over Modbus TCP
and Modbus RTU on a pty. Protocol servers for DL/T 645 live beside them.
"""

from gateway.simulator.model import MeterModel

__all__ = ["MeterModel"]
