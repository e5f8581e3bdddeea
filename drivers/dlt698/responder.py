"""The meter side of DL/T 698.45 GET, pure: request bytes in, reply bytes out.

The simulator wraps this with I/O, load and faults; tests use it as the peer the driver
talks to. A :class:`MeterState` holds what a meter knows:

* ``registers``: attribute values by OAD with index 0 (``00100200`` → array of energy);
  a request with index n gets element n; ``40000200`` and ``40010200`` come from
  ``clock`` and ``address`` unless a register overrides them;
* ``records``: record tables by OAD (``50040200`` day freeze, ``301B0200`` cover open …),
  rows oldest first, each row a mapping column OAD (index 0) → Data;
* ``unknown_dar``: the DAR for an OAD the meter lacks (6 "object does not exist" by
  default; lib's meter answers 4, real meters are **unverified**: 4 or 6);
* ``secured``: object identifiers readable only through a SECURITY request: a plain GET of
  one gets DAR 20 "security mismatch" (the **unverified** behaviour, made explicit);
* ``lists``: how the meter takes a GET-Request-NormalList: ``answer``; or it refuses it, as
  some older or simpler meters may (**unverified**: which of these a real one does), with
  ``dar`` (DAR 3 "read/write denied" for every OAD), ``error`` (ERROR-Response type 2) or
  ``silent`` (no reply); single GETs are answered in every mode.

Behaviour (a test covers each line):

* frames from a meter, other meters' addresses, group and broadcast addresses get no reply
  (a GET cannot be answered by every meter on a bus at once); a wildcard address that
  matches gets a reply from the meter's own single address, as in frame R1 (docs/protocols/dlt698-45.md §7);
* the client address and the PIID are echoed; a time tag in the request is echoed;
* GET-Normal/NormalList answer Data or a DAR per OAD; GET-Record selects rows with RSD
  0 (all), 1 (equal), 2 (start ≤ value < end; the interval is not applied), 9 (n-th last;
  beyond the table: zero rows, not an error); a column the rows do not carry is ``null``;
* a SECURITY-Request in plain text is answered in a plain SECURITY-Response with a dummy
  4-byte MAC (no ESAM); ciphertext and every other service get ERROR-Response type 2,
  an APDU that does not parse gets type 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from drivers.dlt698.apdu import (
    SECURITY_REQUEST,
    Csd,
    Dar,
    ErrorResponse,
    GetNormal,
    GetNormalList,
    GetRecord,
    GetResponse,
    GetResponseNormal,
    GetResponseNormalList,
    GetResponseRecord,
    RecordResult,
    Result,
    SelectAll,
    SelectEqual,
    SelectLast,
    SelectRange,
    encode_response,
    parse_request,
    unwrap_security,
    wrap_security_response,
)
from drivers.dlt698.axdr import NULL, Data, DataType, DateTime, DateTimeS, array, date_time_s
from drivers.dlt698.catalogue import ADDRESS_OAD, CLOCK_OAD
from drivers.dlt698.frame import C_RESPONSE, FUNC_USER_DATA, AddressType, Frame, ServerAddress, encode_frame, scan
from gateway.errors import FrameError

DAR_SECURITY_MISMATCH = 20
ERROR_UNPARSABLE = 1
ERROR_UNSUPPORTED = 2
DUMMY_MAC = b"\x00\x00\x00\x00"
DAR_DENIED = 3

ListMode = Literal["answer", "dar", "error", "silent"]

Row = Mapping[int, Data]


@dataclass(slots=True)
class MeterState:
    """What one simulated meter knows (see the module docstring)."""

    address: ServerAddress
    clock: datetime
    registers: dict[int, Data] = field(default_factory=dict)
    records: dict[int, Sequence[Row]] = field(default_factory=dict)
    unknown_dar: int = 6
    secured: frozenset[int] = frozenset()
    lists: ListMode = "answer"


def _value(state: MeterState, oad: int, secured: bool) -> Result:
    base, index = oad & 0xFFFFFF00, oad & 0xFF
    if (oad >> 16) in state.secured and not secured:
        return Dar(DAR_SECURITY_MISMATCH)
    value = state.registers.get(base)
    if value is None and base == CLOCK_OAD:
        value = date_time_s(state.clock)
    if value is None and base == ADDRESS_OAD:
        value = Data(DataType.OCTET_STRING, bytes(reversed(state.address.wire)))
    if value is None:
        return Dar(state.unknown_dar)
    if index == 0:
        return value
    if value.type not in (DataType.ARRAY, DataType.STRUCTURE) or not isinstance(value.value, tuple):
        return Dar(state.unknown_dar)
    if index > len(value.value):
        return Dar(state.unknown_dar)
    return value.value[index - 1]


def _column(row: Row, csd: Csd) -> Data:
    def one(oad: int) -> Data:
        d = row.get(oad & 0xFFFFFF00)
        if d is None:
            return NULL
        index = oad & 0xFF
        if index == 0:
            return d
        if isinstance(d.value, tuple) and index <= len(d.value):
            return d.value[index - 1]
        return NULL

    if csd.columns is None:
        return one(csd.oad)
    return array(*(one(c) for c in csd.columns))


def _key(d: Data) -> tuple[int, ...] | None:
    """An ordering key for range selection: times by their fields, integers by value."""
    v = d.value
    if isinstance(v, DateTimeS):
        return (v.year, v.month, v.day, v.hour, v.minute, v.second)
    if isinstance(v, DateTime):
        return (v.year, v.month, v.day, v.hour, v.minute, v.second, v.milliseconds)
    if isinstance(v, int) and not isinstance(v, bool):
        return (v,)
    return None


def _select(rows: Sequence[Row], req: GetRecord) -> list[Row]:
    rsd = req.rsd
    if isinstance(rsd, SelectAll):
        return list(rows)
    if isinstance(rsd, SelectLast):
        return [rows[-rsd.n]] if 1 <= rsd.n <= len(rows) else []
    if isinstance(rsd, SelectEqual):
        return [r for r in rows if _column(r, Csd(rsd.oad)) == rsd.value]
    assert isinstance(rsd, SelectRange)
    lo, hi = _key(rsd.start), _key(rsd.end)
    out = []
    for r in rows:
        k = _key(_column(r, Csd(rsd.oad)))
        if k is not None and lo is not None and hi is not None and lo <= k < hi:
            out.append(r)
    return out


def _record(state: MeterState, req: GetRecord, secured: bool) -> RecordResult:
    if (req.oad >> 16) in state.secured and not secured:
        return RecordResult(req.oad, req.rcsd, Dar(DAR_SECURITY_MISMATCH))
    rows = state.records.get(req.oad)
    if rows is None:
        return RecordResult(req.oad, req.rcsd, Dar(state.unknown_dar))
    chosen = _select(rows, req)
    return RecordResult(req.oad, req.rcsd, tuple(tuple(_column(r, c) for c in req.rcsd) for r in chosen))


def answer(apdu: bytes, state: MeterState, *, secured: bool = False) -> bytes:
    """The reply APDU to one request APDU."""
    if apdu[:1] == bytes([SECURITY_REQUEST]):
        if secured:
            return encode_response(ErrorResponse(apdu[2] if len(apdu) > 2 else 0, ERROR_UNSUPPORTED))
        try:
            opened = unwrap_security(apdu)
        except FrameError:
            return encode_response(ErrorResponse(0, ERROR_UNSUPPORTED))
        if opened.apdu is None:
            return encode_response(ErrorResponse(0, ERROR_UNSUPPORTED))
        return wrap_security_response(answer(opened.apdu, state, secured=True), DUMMY_MAC)
    piid = apdu[2] & 0xBF if len(apdu) > 2 else 0
    if apdu[:1] != b"\x05":
        return encode_response(ErrorResponse(apdu[1] & 0xBF if len(apdu) > 1 else 0, ERROR_UNSUPPORTED))
    try:
        req = parse_request(apdu)
    except FrameError:
        return encode_response(ErrorResponse(piid, ERROR_UNPARSABLE))
    piid = req.piid & 0xBF
    resp: GetResponse
    if isinstance(req, GetNormal):
        resp = GetResponseNormal(piid, req.oad, _value(state, req.oad, secured), time_tag=req.time_tag)
    elif isinstance(req, GetNormalList):
        if state.lists == "error":
            return encode_response(ErrorResponse(piid, ERROR_UNSUPPORTED))
        if state.lists == "dar":
            return encode_response(GetResponseNormalList(piid, tuple((o, Dar(DAR_DENIED)) for o in req.oads),
                                                         time_tag=req.time_tag))
        results = tuple((o, _value(state, o, secured)) for o in req.oads)
        resp = GetResponseNormalList(piid, results, time_tag=req.time_tag)
    else:
        resp = GetResponseRecord(piid, _record(state, req, secured), time_tag=req.time_tag)
    return encode_response(resp)


def respond(frame: Frame, state: MeterState, *, preamble: int = 0) -> bytes | None:
    """The reply frame's bytes to one decoded request frame, or None (not for this meter)."""
    if frame.from_server or frame.split or frame.function != FUNC_USER_DATA:
        return None
    if frame.server.kind in (AddressType.GROUP, AddressType.BROADCAST):
        return None
    if not frame.server.reaches(state.address):
        return None
    if state.lists == "silent" and frame.apdu[:2] == b"\x05\x02":
        return None
    reply = answer(frame.apdu, state)
    return encode_frame(C_RESPONSE, state.address, frame.client, reply, preamble=preamble)


def reply_to(request: bytes, state: MeterState, *, preamble: int = 0) -> bytes | None:
    """Request bytes in, reply bytes out: the first frame in ``request`` answered, or None."""
    found = scan(request)
    if found.frame is None:
        return None
    return respond(found.frame, state, preamble=preamble)
