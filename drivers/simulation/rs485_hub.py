"""One simulated RS-485 pair joining several simulators' lines: a mixed bus on one pty.

Each protocol's simulator serves its meters on a pty of its own. On a real pair every
meter hears what the master sends and the master hears every meter; :class:`Rs485Hub`
plays that pair: it opens a pty for the master (the gateway opens its path as the bus's
port) and the simulators' ptys as a meter would sit on the wire, copies the master's bytes
to every line and every line's bytes to the master. A meter ignores frames of a protocol it
does not speak, as it would on site, so DL/T 645 and DL/T 698.45 meters share the pair.
Bytes are copied as they come (no wire timing: the simulators' ptys have none either).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import Sequence

from drivers.simulation.pty_pair import PtyPair, open_pty


class Rs485Hub:
    """The pair joining a master's pty and the simulators' ``lines`` (pty paths)."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = tuple(lines)
        self.master: PtyPair | None = None
        self._fds: list[int] = []

    @property
    def path(self) -> str:
        """The pty path the gateway opens (after :meth:`start`)."""
        if self.master is None:
            raise RuntimeError("start the hub first")
        return self.master.path

    def start(self) -> str:
        """Open the master's pty and the lines; return the master's path (idempotent)."""
        if self.master is not None:
            return self.master.path
        loop = asyncio.get_running_loop()
        self.master = open_pty()
        try:
            for line in self.lines:
                fd = os.open(line, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
                self._fds.append(fd)
                tty.setraw(fd)
                loop.add_reader(fd, self._from_line, fd)
            loop.add_reader(self.master.master, self._from_master)
        except BaseException:
            self.stop()
            raise
        return self.master.path

    def _from_master(self) -> None:
        if self.master is None:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            data = os.read(self.master.master, 4096)
            for fd in self._fds:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.write(fd, data)

    def _from_line(self, fd: int) -> None:
        if self.master is None:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.master.master, os.read(fd, 4096))

    def stop(self) -> None:
        """Close the pair; safe to repeat."""
        loop = asyncio.get_running_loop()
        for fd in self._fds:
            with contextlib.suppress(Exception):
                loop.remove_reader(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        if self.master is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(self.master.master)
            self.master.close()
            self.master = None
