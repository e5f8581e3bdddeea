"""The seam between the gateway core and a protocol driver.

One driver instance owns one bus connection (a serial port, or one TCP endpoint). The
core's bus worker calls it one transaction at a time on serial buses. A driver raises the
errors of :mod:`gateway.errors` (``ReadTimeout``, ``FrameError``, ``DeviceException``,
``TransportError``) for a whole-read failure, and returns per-point ``PointResult`` with a
non-good quality when only some points failed. It never returns ``None`` to mean failure,
and it never swallows ``asyncio.CancelledError``.
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.model import PointResult


class MeterDriver(Protocol):
    """A protocol driver bound to one bus connection."""

    async def open(self) -> None:
        """Open the port/socket; safe to call again when already open."""
        ...

    async def close(self) -> None:
        """Close the port/socket; safe to repeat and safe after a failed open."""
        ...

    async def read(self, address: str, plan: Any, timeout: float) -> dict[str, PointResult]:
        """Execute a compiled read plan against the meter at ``address``.

        ``timeout`` is the per-request reply timeout in seconds. Retries are the caller's.
        """
        ...

    async def probe(self, address: str, timeout: float) -> bool:
        """Return True when something answers at ``address`` (used by ``scan``)."""
        ...
