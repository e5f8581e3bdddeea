"""Logging of malformed HTTP requests: one short line per client per minute, no traceback.

aiohttp answers a request it cannot parse with 400 and logs "Error handling request" with a
full traceback through the server's logger — a flood any client controls. The API server
gives aiohttp the logger :data:`HTTP_LOG`, whose :class:`MalformedRequestLog` filter turns
those records into one warning sentence without traceback and lets through at most one per
client address every ``every_s`` seconds (counting the ones it held back). Every other
record passes unchanged.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from aiohttp.http_exceptions import HttpProcessingError

EVERY_S: Final = 60.0
CLIENTS_KEPT: Final = 4096      # bounded memory under a spray of client addresses


class MalformedRequestLog(logging.Filter):
    """Rate-limits and shortens aiohttp's records of requests it could not parse."""

    def __init__(self, every_s: float = EVERY_S, now: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s = every_s
        self._now = now
        self._last: OrderedDict[str, float] = OrderedDict()
        self._held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """False to drop the record; rewrites a kept one into one warning line."""
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        client = str(args[0]) if args else "an unknown client"
        now = self._now()
        last = self._last.get(client)
        if last is not None and now - last < self.every_s:
            self._held[client] = self._held.get(client, 0) + 1
            return False
        self._last[client] = now
        self._last.move_to_end(client)
        while len(self._last) > CLIENTS_KEPT:
            gone, _ = self._last.popitem(last=False)
            self._held.pop(gone, None)
        held = self._held.pop(client, 0)
        record.msg = "malformed HTTP request from %s answered 400: %s%s"
        record.args = (client, exc.message or type(exc).__name__,
                       f" ({held} more from this client not logged)" if held else "")
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


#: The logger the API server hands to aiohttp for its own errors.
HTTP_LOG: Final = logging.getLogger("amr.api.http")
HTTP_LOG.addFilter(MalformedRequestLog())

__all__ = ["HTTP_LOG", "MalformedRequestLog"]
