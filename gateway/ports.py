"""A free loopback TCP port, for the simulators of the demo and of billing rehearsals.

It lives in the core so that a feature (``gateway.billing.rehearsal``) can pick ports
without importing the demo, which sits at the top of the layers.
"""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the simulator binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


__all__ = ["free_port"]
