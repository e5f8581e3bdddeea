"""What every protocol's simulated meter shares: the load and fault model, and pty lines.

:mod:`drivers.simulation.model` is the deterministic meter (every value a pure function of
simulated time) that each protocol's simulator (``drivers/<protocol>/simulator.py``) serves
in its own framing; :mod:`drivers.simulation.pty_pair` is the pseudo-terminal that stands in
for an RS-485 line; :mod:`drivers.simulation.interface` is the protocol-neutral description of a
meter to simulate and the interface a protocol's simulator offers the fleet that runs it.
Like every driver module, nothing here imports from ``gateway`` beyond its shared types.
"""

from drivers.simulation.model import MeterModel

__all__ = ["MeterModel"]
