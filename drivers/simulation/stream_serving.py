"""Serving a simulated meter line over a TCP connection, shared by every protocol's simulator.

A simulated line answers a growing receive buffer with ``(delay, reply)`` pairs (it consumes
what it used from the buffer); this module runs that exchange on one accepted connection, so
each protocol's simulator keeps only its framing and its meters.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterable

#: A line's answer to its receive buffer: replies, each after its delay in seconds.
LineAnswer = Callable[[bytearray], Iterable[tuple[float, bytes]]]

#: What ``asyncio.start_server`` calls for each accepted connection.
ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[object, object, None]]


def connection_handler(answer: LineAnswer, tasks: set[asyncio.Task[object]],
                       writers: set[asyncio.StreamWriter]) -> ConnectionHandler:
    """A connection handler that feeds the bytes it receives to ``answer`` and writes its replies.

    ``tasks`` and ``writers`` are the simulator's own sets, so that its ``stop`` can cancel the
    handlers and close the connections it accepted.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            tasks.add(task)
        writers.add(writer)
        buf = bytearray()
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                buf += data
                for delay, reply in answer(buf):
                    if delay > 0:
                        await asyncio.sleep(delay)
                    writer.write(reply)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return handle


async def close_connections(servers: list[asyncio.Server], writers: set[asyncio.StreamWriter],
                            tasks: set[asyncio.Task[object]]) -> None:
    """Close what :func:`connection_handler` and ``asyncio.start_server`` opened: the accepted
    connections, their handlers (cancelled after 2 s) and the listening servers; empties the
    three collections so the simulator can start again."""
    for w in list(writers):
        w.close()
    pending = {t for t in tasks if not t.done()}
    if pending:
        _, late = await asyncio.wait(pending, timeout=2.0)
        for t in late:
            t.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    tasks.clear()
    for server in servers:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()
    servers.clear()
    writers.clear()
