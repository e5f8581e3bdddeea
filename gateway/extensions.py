"""Every optional component of the gateway, registered in one place.

Importing this module registers the extensions (built for every :class:`gateway.runtime.Gateway`
at start) and their API routes: billing (settlement capture, intervals, settlements, KPI)
and review (anomaly events) when that package is present. The runtime imports it once;
registration is idempotent, so importing it again changes nothing.
"""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger("amr.extensions")

#: Packages whose ``install()`` registers an extension and its routes, in start order.
EXTENSION_PACKAGES: tuple[str, ...] = ("gateway.billing", "gateway.review")


def install_all() -> list[str]:
    """Install every extension package that is present; returns the names installed."""
    done: list[str] = []
    for name in EXTENSION_PACKAGES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            log.debug("extension %s is not available", name)
            continue
        install = getattr(module, "install", None)
        if callable(install):
            install()
            done.append(name)
    return done


INSTALLED: list[str] = install_all()

__all__ = ["EXTENSION_PACKAGES", "INSTALLED", "install_all"]
