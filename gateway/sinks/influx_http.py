"""A lean InfluxDB v2 writer over the standard library: ``/ping`` and ``/api/v2/write``.

Why not influxdb-client: the sink only POSTs a line-protocol string and asks ``/ping``;
importing ``influxdb_client`` costs the process ~15 MB RSS and ~540 modules (0.3 s), which
a substation box with thousands of meters cannot spare (issue 6). This module is the
default writer (``influxdb.client: builtin``); the official client stays selectable.

What it does, and nothing more:

* one keep-alive ``http.client`` connection (http or https; https verifies the server
  against the system's CA store), opened on first use, reopened automatically after the
  server closes it (``Connection: close``);
* a request that fails because the *reused* keep-alive connection was dropped by the peer
  (reset, broken pipe, closed without an answer) is sent once more on a fresh connection —
  safe for writes, since rewriting a point is harmless; a fresh connection failing is an
  error for the caller;
* ``timeout_s`` bounds the connect and every socket read/write;
* a non-2xx answer raises :class:`InfluxHTTPError` (status, reason, body, ``Retry-After``);
  transport failures raise ``OSError`` or ``http.client.HTTPException`` unchanged.

Synchronous by design: the sink runs it on its one private thread. Not thread-safe.
Never imports ``influxdb_client``.
"""

from __future__ import annotations

import http.client
import ssl
from typing import Final
from urllib.parse import urlencode, urlsplit

__all__ = ["HttpWriter", "InfluxHTTPError"]

_DROPPED: Final = (http.client.RemoteDisconnected, http.client.BadStatusLine, ConnectionResetError,
                   ConnectionAbortedError, BrokenPipeError)
"""What a keep-alive connection the peer closed while idle looks like on the next request."""

_MAX_ERROR_BODY: Final = 64 * 1024
"""An error answer's body is read up to this many bytes (the reason is in the first few)."""


class InfluxHTTPError(Exception):
    """The server answered a request with a non-2xx status.

    Carries what :func:`gateway.sinks.influx.classify` needs to decide reject / keep /
    throttle / split: the status, the reason phrase, the body text (InfluxDB puts a JSON
    ``{"code", "message"}`` there) and the raw ``Retry-After`` header.
    """

    def __init__(self, status: int, reason: str = "", body: str = "", retry_after: str | None = None) -> None:
        super().__init__(f"HTTP {status} {reason}".rstrip() + (f": {body[:200]}" if body else ""))
        self.status = status
        self.reason = reason
        self.body = body
        self.retry_after = retry_after


class HttpWriter:
    """Writes line protocol to one InfluxDB v2-compatible server over one keep-alive connection.

    ``url`` is the server's base URL (``http://host:8086``, optionally with a path prefix for
    a reverse proxy); ``token`` is sent as ``Authorization: Token …`` when given.
    """

    def __init__(self, url: str, *, token: str | None, org: str, bucket: str, timeout_s: float,
                 precision: str = "ms", ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {url!r}")
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)   # explicit: a bare IPv6 host has colons
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout_s
        self._ssl = ssl_context
        self._write_path = f"{self._prefix}/api/v2/write?" + urlencode(
            {"org": org, "bucket": bucket, "precision": precision})
        self._headers: dict[str, str] = {"User-Agent": "amr-gateway", "Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Token {token}"
        self._conn: http.client.HTTPConnection | None = None
        self._used = False      # the open connection has carried a request (a keep-alive reuse may find it dropped)
        self.connections = 0    # connections opened so far (for tests and diagnostics)

    # ------------------------------------------------------------------ requests
    def ping(self) -> bool:
        """True when ``GET /ping`` answers 2xx (InfluxDB and VictoriaMetrics answer 204).

        Any failure — refused, timeout, non-2xx — is False, as with influxdb-client's
        ``ping``: the caller only needs to know whether the server is there.
        """
        try:
            status, _reason, _headers, _body = self._request("GET", f"{self._prefix}/ping", None)
        except (OSError, http.client.HTTPException):
            self.close()
            return False
        return 200 <= status < 300

    def write(self, body: str) -> None:
        """POST ``body`` (line protocol, ms precision) to ``/api/v2/write``.

        Returns on 2xx; raises :class:`InfluxHTTPError` on any other status, ``OSError`` or
        ``http.client.HTTPException`` when the server cannot be reached or the answer breaks off.
        """
        try:
            status, reason, headers, text = self._request(
                "POST", self._write_path, body.encode("utf-8"),
                {"Content-Type": "text/plain; charset=utf-8"})
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if not 200 <= status < 300:
            raise InfluxHTTPError(status, reason, text, headers.get("Retry-After"))

    def close(self) -> None:
        """Close the connection (the next request opens a new one)."""
        conn, self._conn = self._conn, None
        self._used = False
        if conn is not None:
            conn.close()

    # ------------------------------------------------------------------ internals
    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                context = self._ssl if self._ssl is not None else ssl.create_default_context()
                self._ssl = context
                self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout,
                                                         context=context)
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._used = False
            self.connections += 1
        return self._conn

    def _request(self, method: str, path: str, body: bytes | None,
                 extra: dict[str, str] | None = None) -> tuple[int, str, http.client.HTTPMessage, str]:
        """One request with one retry when a reused keep-alive connection turns out dropped."""
        headers = dict(self._headers)
        if extra:
            headers.update(extra)
        for attempt in (1, 2):
            conn = self._connection()
            reused = self._used
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
            except _DROPPED:
                self.close()
                if attempt == 1 and reused:
                    continue
                raise
            self._used = True
            ok = 200 <= resp.status < 300
            data = resp.read() if ok else resp.read(_MAX_ERROR_BODY)
            if resp.will_close or not resp.isclosed():
                self.close()    # the server's Connection: close, or an error body's unread rest
            return resp.status, resp.reason or "", resp.headers, data.decode("utf-8", "replace")
        raise AssertionError("unreachable")  # pragma: no cover
