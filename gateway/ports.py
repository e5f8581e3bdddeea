"""A free loopback TCP port, for the simulators of the demo and of billing rehearsals; and
what to tell the user when a port cannot be listened on (:func:`listen_problem`).

It lives in the core so that a feature (``gateway.billing.rehearsal``) can pick ports
without importing the demo, which sits at the top of the layers.

A port taken with ``bind(port 0)`` comes from the kernel's ephemeral range, the same range
outgoing connections take their source ports from: between this function returning and the
simulator binding it, a connection of the gateway (or of anything on the box) may take it, and
the bind fails with "address in use" (seen in a full test run). So ports are drawn at random
*below* the ephemeral range (``net.ipv4.ip_local_port_range``), checked with a bind, and never
handed out twice by one process.
"""

from __future__ import annotations

import errno
import random
import socket
from pathlib import Path

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 20000
_TRIES = 200
_given: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now and that no outgoing connection will take (the
    simulator binds it next); never the same port twice in one process."""
    high = _ephemeral_low() - 1
    if high - _LOWEST >= 1000:
        for _ in range(_TRIES):
            port = random.randint(_LOWEST, high)
            if port in _given:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            _given.add(port)
            return port
    # no room below the ephemeral range (an unusual sysctl): the kernel's choice
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port = int(s.getsockname()[1])
    _given.add(port)
    return port


def listen_problem(host: str, port: int, exc: OSError, setting: str) -> str:
    """One sentence on why ``host:port`` cannot be listened on and what to change.

    ``setting`` is where the user gave the address (``api.listen``, ``--listen``). The
    socket module's own text ("Address already in use (while attempting to bind on address
    ...)") says what happened but not what to do; this says both.
    """
    where = f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return (f"cannot listen on {where}: the host name {host!r} does not resolve; give an address of this "
                f"machine in {setting}, e.g. 127.0.0.1:{port} (0.0.0.0:{port} for every interface)")
    if exc.errno == errno.EADDRINUSE:
        return (f"cannot listen on {where}: another program holds that port (another gateway or demo?); "
                f"stop it, or give another port in {setting}")
    if exc.errno == errno.EADDRNOTAVAIL:
        return (f"cannot listen on {where}: {host} is not an address of this machine; give one of its "
                f"addresses in {setting}, e.g. 127.0.0.1:{port} (0.0.0.0:{port} for every interface)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"cannot listen on {where}: permission denied (ports below 1024 need privileges); give a "
                f"port above 1023 in {setting}")
    return f"cannot listen on {where} ({exc.strerror or exc}); check {setting}"


__all__ = ["free_port", "listen_problem"]
