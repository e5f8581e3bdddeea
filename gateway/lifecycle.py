"""The one lifecycle every long-lived part of the gateway follows, and how reload uses it.

A :class:`Component` (a review engine, the settlement capture, a sink runner, the API) has
two steps: :meth:`Component.start` once, :meth:`Component.stop` once. There is no
"reconfigure in place": **reload rebuilds**. On SIGHUP the composition root
(:mod:`gateway.runtime`) builds a whole new runtime from the new settings and binds its
listeners while the old one still runs; only then does it stop the old components and
start the new ones. A component therefore never has to handle a change of its own
settings, and a failed reload leaves the old runtime untouched.

:class:`ReloadStatus` is what the last reload did, kept across reloads so the API's health
can say that the running configuration is not the one on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class Component(Protocol):
    """A part of a running gateway with background work: started once, stopped once."""

    async def start(self) -> None:
        """Begin the component's work (tables created, tasks started)."""

    async def stop(self) -> None:
        """End it, bounded in time, leaving nothing running; safe after a failed start."""


class MetricsSource(Protocol):
    """A component that adds lines to ``/metrics``."""

    def prometheus_lines(self) -> list[str]:
        """Prometheus text-format lines (HELP, TYPE and samples)."""


@dataclass(slots=True)
class ReloadStatus:
    """The outcome of the last reload: ``error`` is None when it succeeded (or none was asked).

    ``restart_needed`` names the settings that differ from the running ones but cannot be
    changed by a reload (the process must be restarted for them).
    """

    at: float | None = None
    error: str | None = None
    restart_needed: list[str] = field(default_factory=list)

    def failed(self, at: float, error: str, restart_needed: list[str] | None = None) -> None:
        """Record a refused or failed reload (the previous configuration keeps running)."""
        self.at = at
        self.error = error
        self.restart_needed = list(restart_needed or [])

    def succeeded(self, at: float) -> None:
        """Record a reload that replaced the running configuration."""
        self.at = at
        self.error = None
        self.restart_needed = []


__all__ = ["Component", "MetricsSource", "ReloadStatus"]
