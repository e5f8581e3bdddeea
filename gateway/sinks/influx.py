"""The InfluxDB sink: committed messages → line protocol → v2 write API → the sink's cursor.

What a line looks like (measurement, tags, fields, timestamp) is in
:mod:`gateway.sinks.lineproto`. The HTTP itself is done by a *writer*
(:class:`InfluxWriter`), chosen by ``influxdb.client``:

* ``builtin`` (default): :class:`gateway.sinks.influx_http.HttpWriter`, the standard
  library's ``http.client`` on one keep-alive connection. It keeps ``influxdb_client``
  (~15 MB RSS, ~540 modules) out of the process entirely.
* ``influxdb-client``: :class:`ClientWriter`, the official client's synchronous write API.
  ``influxdb_client`` is imported only when this writer is created; its ``ApiException``
  and urllib3's transport errors are converted to what the built-in writer raises, so
  everything below behaves the same with either writer. This is the only module that
  imports influxdb-client.

Errors become :class:`~gateway.errors.SinkError` here (:func:`classify`).

Batching: rows gather into a batch that is written when it holds ``batch_size`` lines or
its first row is ``batch_age`` seconds old, whichever comes first; one write is in flight
at a time (seq order per sink), while the next batch fills. Each row becomes its line as it
is handed over (a few microseconds on the loop, spread out; a compact reading's line is
made from its stored values, :func:`~gateway.sinks.lineproto.compact_line`, never from
its JSON message), so the writer thread only
joins and sends: a thousand-line batch formatted on that thread would hold the GIL in 5 ms
slices against the loop and the MQTT thread just when readings arrive. The write runs
synchronously on one private thread: it never blocks the event loop, costs one thread for
the whole sink, and keeps ``aiohttp`` sessions out of the sink's life cycle.

HTTP outcomes, as well-kept InfluxDB outputs map them (Telegraf's ``influxdb_v2``), the same
with either writer:

=========  ============================================================================
2xx        delivered: the cursor moves past the batch
400, 422   rejected: the server will never take these lines (bad line, type conflict,
           outside retention). Logged once per batch with the server's reason, counted
           in ``rejected``; the cursor passes them
401, 403   kept: state ``auth_failed``, logged once on the change; retried slowly
413        too large: the batch is split in half and each half written (recursively);
           a single line still too large is rejected
429, 503   throttled: retried after the server's ``Retry-After`` (seconds or HTTP date),
           or after the jittered backoff when it gives none
other      kept: retried with jittered exponential backoff (5xx, timeouts, refused)
=========  ============================================================================

A retry re-reads the batch from the store (the durable cursor), so nothing lives only in
memory; rewriting a point that already landed is harmless (same series, same timestamp).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http.client
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.aio import wait_event
from gateway.errors import SinkError
from gateway.settings import InfluxSettings
from gateway.sinks.base import Reporter, SinkAuthError
from gateway.sinks.influx_http import HttpWriter, InfluxHTTPError
from gateway.sinks.lineproto import LineError, compact_line, row_line
from gateway.store import OutboxRow

log = logging.getLogger("amr.sinks.influx")


@dataclass(slots=True)
class WriteOutcome:
    """What became of one batch: delivered seqs, rejected groups, and the error that stopped it."""

    delivered: list[int] = field(default_factory=list)
    rejected: list[tuple[list[int], str]] = field(default_factory=list)
    error: SinkError | None = None


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` header: delta seconds or an HTTP date; None when absent/invalid."""
    if value is None:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _reason(exc: InfluxHTTPError) -> str:
    text = exc.body.strip()
    with contextlib.suppress(ValueError, TypeError):
        doc = json.loads(text)
        if isinstance(doc, dict) and isinstance(doc.get("message"), str):
            text = doc["message"]
    text = " ".join(text.split())[:300]
    return f"HTTP {exc.status} {exc.reason or ''}".rstrip() + (f": {text}" if text else "")


def classify(exc: BaseException, url: str) -> SinkError | str:
    """Translate a write failure: a :class:`SinkError` to retry, or a rejection reason (str).

    ``exc`` is what a writer raises: :class:`InfluxHTTPError` for a non-2xx answer, ``OSError``
    or ``http.client.HTTPException`` when the server cannot be reached (both writers).
    """
    if isinstance(exc, InfluxHTTPError):
        status = exc.status
        reason = _reason(exc)
        if status in (400, 422):
            return reason
        if status in (401, 403):
            return SinkAuthError(f"InfluxDB at {url} refused the token ({reason}); check influxdb.token")
        if status in (429, 503):
            retry = retry_after_seconds(exc.retry_after)
            return SinkError(f"InfluxDB at {url} is throttling writes ({reason})", "throttle", retry)
        return SinkError(f"InfluxDB at {url} failed the write ({reason})", "keep")
    if isinstance(exc, OSError | http.client.HTTPException):
        return SinkError(f"cannot reach InfluxDB at {url}: {exc}", "keep")
    return SinkError(f"writing to InfluxDB at {url} failed: {exc}", "keep")


# ---------------------------------------------------------------------- writers
class InfluxWriter(Protocol):
    """What the sink needs from an HTTP writer; both writers implement it.

    Called only from the sink's private thread, one call at a time. ``write`` raises
    :class:`InfluxHTTPError` for a non-2xx answer and ``OSError`` /
    ``http.client.HTTPException`` for transport failures, so :func:`classify` and the 413
    split work the same whichever writer is configured.
    """

    def ping(self) -> bool:
        """True when the server answers ``/ping`` (any failure is False)."""
        ...

    def write(self, body: str) -> None:
        """Write line protocol (ms precision) to the configured org and bucket."""
        ...

    def close(self) -> None:
        """Release the connection(s)."""
        ...


class ClientWriter:
    """:class:`InfluxWriter` over influxdb-client's SYNCHRONOUS write API (``influxdb.client:
    influxdb-client``), for sites that want the official client.

    ``influxdb_client`` is imported here, at construction, and nowhere else; its errors are
    converted by :func:`client_error`.
    """

    def __init__(self, settings: InfluxSettings) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS
        from influxdb_client.domain.write_precision import WritePrecision

        s = settings
        self._bucket = s.bucket
        self._org = s.org
        self._precision = WritePrecision.MS
        self._client = InfluxDBClient(url=s.url, token=s.token or "", org=s.org,
                                      timeout=int(s.timeout_s * 1000), enable_gzip=False)
        self._api = self._client.write_api(write_options=SYNCHRONOUS)

    def ping(self) -> bool:
        """The client's ``ping`` (False on any failure)."""
        return bool(self._client.ping())

    def write(self, body: str) -> None:
        """Write through the client; its exceptions become the built-in writer's."""
        try:
            self._api.write(bucket=self._bucket, org=self._org, record=body,
                            write_precision=self._precision)  # type: ignore[arg-type]
        except Exception as exc:
            converted = client_error(exc)
            if converted is exc:
                raise
            raise converted from exc

    def close(self) -> None:
        """Close the client's connection pool (its ``close`` is untyped upstream)."""
        self._client.close()  # type: ignore[no-untyped-call]


def client_error(exc: BaseException) -> BaseException:
    """An influxdb-client failure as the built-in writer would raise it.

    ``ApiException`` → :class:`InfluxHTTPError` (status, reason, body, ``Retry-After``);
    urllib3's transport errors → ``ConnectionError`` with the same text; anything else is
    returned unchanged. Only called once influxdb-client is loaded.
    """
    import urllib3.exceptions
    from influxdb_client.rest import ApiException

    if isinstance(exc, ApiException):
        body: Any = exc.body
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        headers: Any = exc.headers or {}
        value = headers.get("Retry-After") if hasattr(headers, "get") else None
        return InfluxHTTPError(int(exc.status or 0), str(exc.reason or ""), str(body or ""),
                               value if isinstance(value, str) else None)
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return ConnectionError(str(exc))
    return exc


def make_writer(settings: InfluxSettings) -> InfluxWriter:
    """The writer ``influxdb.client`` names: built-in (default) or influxdb-client."""
    if settings.client == "influxdb-client":
        return ClientWriter(settings)
    return HttpWriter(settings.url, token=settings.token, org=settings.org, bucket=settings.bucket,
                      timeout_s=settings.timeout_s)


class InfluxSink:
    """Writes committed messages to an InfluxDB v2 write endpoint (see the module docstring)."""

    name = "influxdb"
    open_proves_access = False
    probe_first = False

    def __init__(self, settings: InfluxSettings, gateway_id: str) -> None:
        self.settings = settings
        self.gateway_id = gateway_id
        self.batch_size = max(1, settings.batch_size)
        self.window = 2 * self.batch_size     # one batch in flight, one filling
        self.page = self.batch_size
        self._client: InfluxWriter | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._batch: list[tuple[int, str | None]] = []   # (seq, line); None: not expressible
        self._bad_reason = ""
        self._first_at = 0.0
        self._flush_requested = False
        self._kick = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.splits = 0

    def target(self) -> str:
        """The write URL's base and bucket."""
        return f"{self.settings.url} (bucket {self.settings.bucket})"

    # ------------------------------------------------------------------ session
    async def open(self, reporter: Reporter) -> None:
        """Create the writer and check the server answers ``/ping``; start the batch writer.

        The writer is created on the sink's thread: with ``influxdb.client: influxdb-client``
        that is where the client library gets imported, off the event loop.
        """
        s = self.settings
        self._batch = []
        self._flush_requested = False
        self._kick = asyncio.Event()
        executor = ThreadPoolExecutor(1, thread_name_prefix="amr-influx")
        self._executor = executor
        loop = asyncio.get_running_loop()
        client = await loop.run_in_executor(executor, make_writer, s)
        self._client = client
        alive = await loop.run_in_executor(executor, client.ping)
        if not alive:
            raise SinkError(f"cannot reach InfluxDB at {s.url} (no answer to /ping)", "keep")
        self._writer = asyncio.create_task(self._write_loop(reporter), name="sink-influxdb-writer")

    def send(self, row: OutboxRow) -> None:
        """Add the row's line to the filling batch; a full batch is written at once."""
        if not self._batch:
            self._first_at = time.monotonic()
            self._kick.set()
        line = None
        shape = row.shape
        try:
            if shape is not None:      # a compact reading: its line straight from the stored values
                line = compact_line(self.settings.measurement, shape, row.seq, row.ts, row.body)
            else:
                line = row_line(self.settings.measurement, row.kind, row.meter, row.ts, row.payload, row.seq)
        except (LineError, ValueError, ArithmeticError) as exc:
            self._bad_reason = f"cannot express the committed message as line protocol: {exc}"
        self._batch.append((row.seq, line))
        if len(self._batch) >= self.batch_size:
            self._kick.set()

    @property
    def filling(self) -> int:
        """Rows in the batch that is filling (not yet handed to the writer thread)."""
        return len(self._batch)

    def flush(self) -> None:
        """Write the filling batch now instead of waiting for its age."""
        if self._batch:
            self._flush_requested = True
            self._kick.set()

    async def close(self, graceful: bool) -> None:
        """Stop the batch task, close the writer off the loop (an in-flight write may finish first)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        client, self._client = self._client, None
        self._batch = []
        executor, self._executor = self._executor, None
        if executor is not None:
            if client is not None:
                executor.submit(client.close)
            executor.shutdown(wait=False)
        elif client is not None:
            client.close()

    # ------------------------------------------------------------------ batches
    async def _write_loop(self, reporter: Reporter) -> None:
        loop = asyncio.get_running_loop()
        age = max(0.0, self.settings.batch_age_s)
        while True:
            if not self._batch:
                self._kick.clear()
                await self._kick.wait()
                continue
            while len(self._batch) < self.batch_size and not self._flush_requested:
                remaining = self._first_at + age - time.monotonic()
                if remaining <= 0:
                    break
                self._kick.clear()
                await wait_event(self._kick, remaining)
            rows = self._batch[: self.batch_size]
            self._batch = self._batch[self.batch_size:]
            self._first_at = time.monotonic()
            if not self._batch:
                self._flush_requested = False
            executor = self._executor
            if executor is None:
                return
            outcome = await loop.run_in_executor(executor, self._write_rows, rows)
            if outcome.delivered:
                reporter.delivered(outcome.delivered)
            for seqs, reason in outcome.rejected:
                reporter.rejected(seqs, reason)
            if outcome.error is not None:
                reporter.broken(outcome.error)
                return

    def _write_rows(self, rows: list[tuple[int, str | None]]) -> WriteOutcome:
        """Runs on the sink's thread: write the batch's lines, splitting on 413."""
        outcome = WriteOutcome()
        lines = [(seq, line) for seq, line in rows if line is not None]
        bad = [seq for seq, line in rows if line is None]
        if bad:
            outcome.rejected.append((bad, self._bad_reason))
        if lines:
            self._write_lines(lines, outcome)
        return outcome

    def _write_lines(self, lines: list[tuple[int, str]], outcome: WriteOutcome) -> None:
        client = self._client
        if client is None:
            outcome.error = SinkError("the InfluxDB sink is closed", "keep")
            return
        try:
            client.write("\n".join(line for _, line in lines))
        except Exception as exc:
            if isinstance(exc, InfluxHTTPError) and exc.status == 413:
                if len(lines) == 1:
                    outcome.rejected.append(([lines[0][0]], f"{_reason(exc)} (a single line is too large)"))
                    return
                self.splits += 1
                half = len(lines) // 2
                self._write_lines(lines[:half], outcome)
                if outcome.error is None:
                    self._write_lines(lines[half:], outcome)
                return
            result = classify(exc, self.settings.url)
            if isinstance(result, str):
                outcome.rejected.append(([seq for seq, _ in lines], result))
            else:
                outcome.error = result
            return
        outcome.delivered.extend(seq for seq, _ in lines)
