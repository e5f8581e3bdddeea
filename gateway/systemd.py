"""systemd integration: ``Type=notify`` readiness and the watchdog, over the notify socket.

A few lines over ``$NOTIFY_SOCKET`` instead of a dependency; silent when not under systemd.
"""

from __future__ import annotations

import asyncio
import os
import socket


def notify(message: str) -> bool:
    """Send one sd_notify message (READY=1, STOPPING=1, WATCHDOG=1, ...); False when not under systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


async def watchdog_loop() -> None:
    """Ping the watchdog at half of ``$WATCHDOG_USEC`` while the event loop is alive."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return
    interval = max(0.5, int(usec) / 2_000_000)
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
