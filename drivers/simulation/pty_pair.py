"""A pseudo-terminal pair that stands in for an RS-485 line in tests and the demo.

The simulator owns the master side; the gateway opens the slave path (``/dev/pts/N``) as
if it were ``/dev/ttyS1``. Both sides are put in raw mode (no echo, no line discipline
translating bytes). A pty ignores the baud rate (bytes arrive in microseconds) and on some
kernels rejects even parity, so buses on a pty are configured with parity N.
"""

from __future__ import annotations

import contextlib
import os
import tty
from dataclasses import dataclass


@dataclass
class PtyPair:
    """An open pty: ``master`` fd for the simulator, ``path`` for the gateway to open."""

    master: int
    slave: int
    path: str

    def close(self) -> None:
        """Close both sides; safe to repeat."""
        for fd in (self.master, self.slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master = self.slave = -1


def open_pty() -> PtyPair:
    """Open a raw, non-blocking pty pair.

    The simulator keeps the slave fd open too, so the line stays configured and the
    master does not see a hang-up while the gateway closes and reopens its side.
    """
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    os.set_blocking(master, False)
    return PtyPair(master, slave, os.ttyname(slave))
