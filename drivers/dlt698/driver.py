"""The DL/T 698.45 driver: read plans, freeze records, events and the address over a byte pipe.

One driver owns one bus (an RS-485 port or a TCP endpoint, :mod:`drivers.transport`). Each
request is a frame to the meter's single address (FE×4 wake-up, client address
:data:`CLIENT`, a PIID that counts 0–63), and its reply is found by
:class:`~drivers.dlt698.matching.Dlt698Matcher`. What comes back:

* a read plan (:meth:`Dlt698Driver.read`): one GET-Request-NormalList per batch of OADs;
  per point ``good`` with the scaled value, ``exception`` for a DAR (code and meaning in the
  reason: the meter refused that object, never a value), ``invalid`` for a value that is not
  one (null, wrong type, impossible date). A whole request that fails: the first one raises
  (ReadTimeout, FrameError, DeviceException for an ERROR-Response); a later one marks its
  points ``timeout`` / ``crc_error`` / ``exception`` and the read goes on;
* a meter that refuses NormalList — a DAR for every OAD of a list whose first OAD it gives
  as a single GET-Request-Normal, an ERROR-Response to the list, or silence to the list while
  it answers a single GET — is read one OAD per GET-Request-Normal from then on (for the
  driver's life), logged once per meter. Silence is told from a dead meter without an extra
  request: after a meter that never answered a list is silent to one, its next read (the bus
  worker's retry, or a later poll) asks a single GET in its place; silence to that ends the
  read as a list's would, an answer is followed by the list, and silence to the list then
  is a refusal;
* freeze records (:meth:`read_settlement` 5005 by n-th last, :meth:`read_daily_freeze`
  5004 by freeze time — the record is asked for by its time, so a gap in the meter's log
  can never shift a value to the wrong day, and the returned time is the meter's);
* event records (:meth:`read_events`: the last n rows of an event table) and event counts
  (:meth:`read_event_counters`);
* the address of the single meter on a line (:meth:`read_address`, wildcard read of 4001).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Sequence
from datetime import date, datetime, tzinfo
from decimal import Decimal
from typing import Final, cast

from drivers.base import BusParams, ReadPlan
from drivers.dlt698.apdu import (
    Csd,
    Dar,
    ErrorResponse,
    GetNormal,
    GetNormalList,
    GetRecord,
    GetRequest,
    GetResponse,
    GetResponseNormal,
    GetResponseNormalList,
    GetResponseRecord,
    Result,
    SelectLast,
    by_freeze_time,
    encode_request,
    parse_response,
)
from drivers.dlt698.axdr import Data, DateTimeS, oad_text
from drivers.dlt698.catalogue import (
    ADDRESS_OAD,
    CANONICAL,
    EVENT_COLUMNS,
    EVENTS,
    FREEZE_COLUMNS,
    FREEZES,
    EventRecord,
    event_record,
    freeze_points,
)
from drivers.dlt698.frame import C_REQUEST, ServerAddress, encode_frame
from drivers.dlt698.matching import Dlt698Matcher
from drivers.dlt698.plan import Dlt698Plan
from drivers.transport.pipe import BytePipe
from gateway.errors import (
    ConfigError,
    DecodeError,
    DeviceException,
    FrameError,
    ReadTimeout,
    quality_for,
)
from gateway.model import PointResult, Quality

log = logging.getLogger("amr.dlt698")

CLIENT: Final = 0x00
PREAMBLE: Final = 4
#: Bytes of a long reply: once its first byte arrived, the reply window grows by their time
#: on the line (the first byte itself must come within the bus's timeout).
REPLY_BUDGET: Final = 600
#: Slack for inter-byte gaps and the OS (no public 698.45 timing figure; DL/T 645's).
REPLY_MARGIN_S: Final = 0.05


def _pipe(bus: BusParams) -> BytePipe:
    from drivers.transport.serial import serial_pipe
    from drivers.transport.tcp import tcp_pipe

    if bus.type == "serial":
        if not bus.port:
            raise ConfigError(f"bus {bus.id}: a serial bus needs 'port'")
        gap = bus.inter_frame_s if bus.inter_frame_s is not None else 0.0
        return serial_pipe(bus.port, bus.baudrate, bus.parity, bus.stopbits, bus.bytesize, silence_s=gap)
    if not bus.host or not bus.tcp_port:
        raise ConfigError(f"bus {bus.id}: a tcp bus needs 'host' and 'port'")
    return tcp_pipe(bus.host, bus.tcp_port, silence_s=bus.inter_frame_s or 0.0)


class Dlt698Driver:
    """A DL/T 698.45 master on one bus (see the module doc)."""

    def __init__(self, bus: BusParams, *, pipe: BytePipe | None = None, client: int = CLIENT) -> None:
        if bus.protocol != "dlt698":
            raise ConfigError(f"bus {bus.id}: protocol {bus.protocol!r} is not DL/T 698.45")
        self.bus = bus
        self.client = client
        self._pipe = pipe if pipe is not None else _pipe(bus)
        self._piid = 0
        #: the address of the meter that sent the last reply (a wildcard read's answer)
        self.last_server = ServerAddress.wildcard()
        self._lock = asyncio.Lock()
        #: meters (address text) read one OAD per request: they refused NormalList
        self.singles: set[str] = set()
        #: meters that answered a NormalList with data on this driver
        self._lists_ok: set[str] = set()
        #: meters whose last NormalList went unanswered and that never answered one
        self._list_silent: set[str] = set()
        bits = 1 + bus.bytesize + (0 if bus.parity == "N" else 1) + bus.stopbits
        self._char_s = bits / max(1, bus.baudrate) if bus.type == "serial" else 0.0

    # --- MeterDriver -------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the port or connection (idempotent)."""
        await self._pipe.open()

    async def close(self) -> None:
        """Close the port or connection (idempotent, safe after a failed open)."""
        await self._pipe.close()

    async def read(self, address: str, plan: ReadPlan, timeout: float) -> dict[str, PointResult]:
        """Read every point of ``plan`` from the meter at ``address`` (one pass, no retries)."""
        if not isinstance(plan, Dlt698Plan):
            raise ConfigError("the DL/T 698.45 driver needs a plan from drivers.dlt698.plan.compile_plan")
        server = ServerAddress.single(address)
        if server.text in self.singles:
            got = await self._read_singles(server, _oads(plan), timeout)
        else:
            got = await self._read_lists(server, plan, timeout)
        out: dict[str, PointResult] = {}
        for p in plan.points:
            r = got.get(p.oad)
            if r is None:
                out[p.name] = PointResult(None, "invalid", f"the meter left OAD {oad_text(p.oad)} out of its reply")
            elif isinstance(r, Exception):
                out[p.name] = PointResult(None, cast(Quality, quality_for(r)), str(r))
            elif isinstance(r, Dar):
                out[p.name] = PointResult(None, "exception",
                                          f"DAR {r.code} ({r.name}) for OAD {oad_text(p.oad)}")
            else:
                try:
                    out[p.name] = PointResult(p.value(r))
                except DecodeError as exc:
                    out[p.name] = PointResult(None, "invalid", f"OAD {oad_text(p.oad)}: {exc}")
        return out

    async def _read_lists(self, server: ServerAddress, plan: Dlt698Plan,
                          timeout: float) -> dict[int, Result | Exception]:
        """Each batch in one NormalList; a refusal of the first falls back to single reads."""
        got: dict[int, Result | Exception] = {}
        key = server.text
        checked = False
        if key in self._list_silent:
            # its last list went unanswered and it never answered one: this read asks a single
            # GET instead (silence ends the read at one request's cost, as a list's would); if
            # it answers, the list that follows tells whether it refuses lists
            self._list_silent.discard(key)
            await self.get(server, GetNormal(0, plan.batches[0][0]), timeout)
            checked = True
        for k, batch in enumerate(plan.batches):
            try:
                resp = await self.get(server, GetNormalList(0, batch), timeout)
            except (ReadTimeout, FrameError, DeviceException) as exc:
                if k > 0:
                    got.update({oad: exc for oad in batch})
                    continue
                if isinstance(exc, ReadTimeout) and key not in self._lists_ok:
                    if checked:
                        self._use_singles(key, "was silent to")
                        return await self._read_singles(server, _oads(plan), timeout)
                    self._list_silent.add(key)
                elif isinstance(exc, DeviceException) and await self._refuses_lists(
                        server, batch[0], timeout, "answered with an ERROR-Response"):
                    return await self._read_singles(server, _oads(plan), timeout)
                raise
            if not isinstance(resp, GetResponseNormalList):
                raise FrameError(f"meter {server.text} answered a NormalList request with another form")
            results = dict(resp.results)
            if k == 0 and server.text not in self._lists_ok:
                data = any(isinstance(r, Data) for r in results.values())
                if not data and len(batch) > 1 and await self._refuses_lists(
                        server, batch[0], timeout, "gave a DAR for every OAD of"):
                    return await self._read_singles(server, _oads(plan), timeout)
                self._lists_ok.add(server.text)       # it answered a list in its own right
            got.update(results)
        return got

    async def _refuses_lists(self, server: ServerAddress, oad: int, timeout: float, how: str) -> bool:
        """True, and the meter is read one OAD per request from now on, when a single GET of
        ``oad`` gives data after it ``how`` a NormalList (a DAR list, an ERROR-Response)."""
        key = server.text
        if key in self._lists_ok:
            return False
        try:
            resp = await self.get(server, GetNormal(0, oad), timeout)
        except (ReadTimeout, FrameError, DeviceException):
            return False
        if not isinstance(resp, GetResponseNormal) or not isinstance(resp.result, Data):
            self._lists_ok.add(key)   # the DARs are the meter's own: it lacks those objects
            return False
        self._use_singles(key, how)
        return True

    def _use_singles(self, key: str, how: str) -> None:
        self.singles.add(key)
        log.warning("meter %s on bus %s %s a GET-Request-NormalList but answers single GET-Request-Normal: "
                    "reading it one OAD per request from now on (slower; a firmware update may add lists)",
                    key, self.bus.id, how)

    async def _read_singles(self, server: ServerAddress, oads: Sequence[int],
                            timeout: float) -> dict[int, Result | Exception]:
        """One GET-Request-Normal per OAD (a meter that refused NormalList)."""
        got: dict[int, Result | Exception] = {}
        for k, oad in enumerate(dict.fromkeys(oads)):
            try:
                resp = await self.get(server, GetNormal(0, oad), timeout)
            except (ReadTimeout, FrameError, DeviceException) as exc:
                if k == 0:
                    raise
                got[oad] = exc
                continue
            if not isinstance(resp, GetResponseNormal):
                raise FrameError(f"meter {server.text} answered a GET-Request-Normal with another form")
            got[oad] = resp.result
        return got

    async def probe(self, address: str, timeout: float) -> bool:
        """True when a meter answers at ``address`` (a read of its communication address)."""
        try:
            await self.get(ServerAddress.single(address), GetNormal(0, ADDRESS_OAD), timeout)
        except (ReadTimeout, FrameError):
            return False
        except DeviceException:
            return True
        return True

    # --- requests ----------------------------------------------------------------------------

    def _next_piid(self) -> int:
        self._piid = (self._piid + 1) % 64
        return self._piid

    async def get(self, server: ServerAddress, req: GetRequest, timeout: float) -> GetResponse:
        """Send one GET (its PIID replaced by the driver's counter) and return the response.

        An ERROR-Response raises DeviceException; a malformed reply FrameError; silence
        ReadTimeout.
        """
        async with self._lock:
            piid = self._next_piid()
            if isinstance(req, GetNormal):
                req = GetNormal(piid, req.oad)
            elif isinstance(req, GetNormalList):
                req = GetNormalList(piid, req.oads)
            else:
                req = GetRecord(piid, req.oad, req.rsd, req.rcsd)
            what = _describe(req)
            wire = encode_frame(C_REQUEST, server, self.client, encode_request(req), preamble=PREAMBLE)
            match = Dlt698Matcher(server, self.client, piid, what, self._pipe.describe)
            reply_s = REPLY_MARGIN_S + REPLY_BUDGET * self._char_s
            await self._pipe.exchange(wire, match, timeout, reply_s=reply_s)
            frame = match.frame
            assert frame is not None
            resp = parse_response(frame.apdu)
            if isinstance(resp, ErrorResponse):
                raise DeviceException(resp.error, resp.name,
                                      f"meter {frame.server.text} could not take {what}: {resp.name}")
            self.last_server = frame.server
            return resp

    async def _rows(self, address: str, req: GetRecord, timeout: float) -> list[dict[int, Data]]:
        resp = await self.get(ServerAddress.single(address), req, timeout)
        if not isinstance(resp, GetResponseRecord):
            raise FrameError(f"meter {address} answered a record request with another form")
        rows = resp.record.rows
        if isinstance(rows, Dar):
            raise DeviceException(rows.code, rows.name, f"meter {address} refused records of "
                                  f"{oad_text(req.oad)}: DAR {rows.code} ({rows.name})")
        cols = [c.oad for c in resp.record.rcsd]
        return [dict(zip(cols, row, strict=True)) for row in rows]

    # --- freezes (FreezeRecordReader) ---------------------------------------------------------

    async def read_settlement(self, address: str, n: int = 1, timeout: float = 1.0, *,
                              tz: tzinfo | None = None,
                              stamps: dict[str, datetime] | None = None) -> tuple[datetime | None, dict[str, Decimal]]:
        """The registers of the n-th last settlement-day freeze (5005) and its freeze time.

        ``stamps`` is accepted for the FreezeRecordReader interface; no demand time is read here.
        """
        if not 1 <= n <= 255:
            raise ValueError("settlement freezes go back 1..255")
        req = GetRecord(0, FREEZES["settlement"], SelectLast(n), tuple(Csd(c) for c in FREEZE_COLUMNS))
        rows = await self._rows(address, req, timeout)
        if not rows:
            raise DeviceException(6, "object does not exist", f"meter {address} has no settlement freeze -{n}")
        return _freeze(rows[0], tz)

    async def read_daily_freeze(
        self, address: str, day: date, timeout: float = 1.0, *, tz: tzinfo | None = None,
        points: Collection[str] | None = None, stamps: dict[str, datetime] | None = None,
    ) -> tuple[datetime, dict[str, Decimal]]:
        """The day freeze (5004) stamped 00:00 of ``day``, asked for by its freeze time.

        ``points`` limits the values returned; the demand's time (meter local, naive) goes into
        ``stamps`` (``demand_max_kw`` and ``demand_max_kw_at``) when a dict is given.
        """
        when = DateTimeS(day.year, day.month, day.day, 0, 0, 0)
        req = GetRecord(0, FREEZES["day"], by_freeze_time(when), tuple(Csd(c) for c in FREEZE_COLUMNS))
        rows = await self._rows(address, req, timeout)
        if not rows:
            raise DeviceException(6, "object does not exist",
                                  f"meter {address}: its day freeze log has no record for {day}")
        frozen, values = _freeze(rows[0], tz)
        if frozen is None:
            raise DecodeError(f"meter {address} sent a day freeze without its freeze time")
        if stamps is not None:
            at = freeze_points(rows[0]).get("demand_max_kw_at")
            if isinstance(at, str):
                # meter local and naive, as the DL/T 645 driver gives it
                stamps["demand_max_kw"] = stamps["demand_max_kw_at"] = datetime.fromisoformat(at)
        if points is not None:
            values = {k: v for k, v in values.items() if k in points}
        return frozen, values

    # --- events and address ------------------------------------------------------------------

    async def read_events(self, address: str, event: str, n: int = 1, timeout: float = 1.0) -> list[EventRecord]:
        """The last ``n`` records of an event table (:data:`~drivers.dlt698.catalogue.EVENTS`), newest first."""
        table = EVENTS.get(event)
        if table is None:
            raise ConfigError(f"unknown DL/T 698.45 event {event!r}; use one of {', '.join(EVENTS)}")
        out: list[EventRecord] = []
        for k in range(1, n + 1):
            req = GetRecord(0, table.oad, SelectLast(k), tuple(Csd(c) for c in EVENT_COLUMNS))
            rows = await self._rows(address, req, timeout)
            if not rows:
                break
            out.append(event_record(rows[0]))
        return out

    async def read_event_counters(self, address: str, timeout: float) -> dict[str, int]:
        """Event name (``event_*_count``) → records the meter holds (class 7 attribute 4, one
        NormalList); an event the meter does not keep is left out."""
        points = [p for p in CANONICAL if p.name.startswith("event_")]
        resp = await self.get(ServerAddress.single(address), GetNormalList(0, tuple(p.oad for p in points)), timeout)
        if not isinstance(resp, GetResponseNormalList):
            raise FrameError(f"meter {address} answered a NormalList request with another form")
        got = dict(resp.results)
        out: dict[str, int] = {}
        for p in points:
            r = got.get(p.oad)
            if isinstance(r, Data) and isinstance(r.value, int) and not isinstance(r.value, bool):
                out[p.name] = r.value
        return out

    async def read_address(self, timeout: float = 1.0) -> str:
        """The address of the single meter on the line (wildcard read of 40010200, docs/protocols/dlt698-45.md §6)."""
        resp = await self.get(ServerAddress.wildcard(), GetNormal(0, ADDRESS_OAD), timeout)
        if isinstance(resp, GetResponseNormal) and isinstance(resp.result, Data):
            value = resp.result.value
            if isinstance(value, bytes):
                return value.hex().upper()
        return self.last_server.text


def _freeze(row: dict[int, Data], tz: tzinfo | None) -> tuple[datetime | None, dict[str, Decimal]]:
    raw = freeze_points(row)
    when: datetime | None = None
    stamp = raw.get("freeze_time")
    if isinstance(stamp, str):
        when = datetime.fromisoformat(stamp)
        if tz is not None:
            when = when.replace(tzinfo=tz)
    values = {k: v for k, v in raw.items() if isinstance(v, Decimal)}
    return when, values


def _oads(plan: Dlt698Plan) -> list[int]:
    return [oad for batch in plan.batches for oad in batch]


def _describe(req: GetRequest) -> str:
    if isinstance(req, GetNormal):
        return f"GET {oad_text(req.oad)}"
    if isinstance(req, GetNormalList):
        return f"GET list of {len(req.oads)} OADs ({oad_text(req.oads[0])} …)"
    return f"GET records of {oad_text(req.oad)}"


def create_driver(bus: BusParams) -> Dlt698Driver:
    """The driver for a ``dlt698`` bus (serial port or TCP serial server)."""
    return Dlt698Driver(bus)
