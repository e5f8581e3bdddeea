"""The process's logging: one format on stderr, the noisy libraries quietened.

Used by the command line and by the child process that parses a large configuration
(:mod:`gateway.config_isolated`), so both log in the same format at the same level.
"""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str) -> None:
    """Log to stderr at ``level`` (debug, info, warning, error) in the gateway's format."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


__all__ = ["setup_logging"]
