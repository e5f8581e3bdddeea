"""DL/T 698.45 APDUs for reading meters: GET requests and responses (``docs/protocols/dlt698-45.md`` §3).

Layouts (after the service tag and form byte; all integers big-endian)::

    05 01 PIID OAD TimeTag                               GET-Request-Normal
    05 02 PIID n OAD×n TimeTag                           GET-Request-NormalList
    05 03 PIID OAD RSD RCSD TimeTag                      GET-Request-Record
    85 01 PIID-ACD OAD Get-Result FollowReport TimeTag   GET-Response-Normal
    85 02 PIID-ACD n (OAD Get-Result)×n Follow TimeTag   GET-Response-NormalList
    85 03 PIID-ACD OAD RCSD Record-Result Follow TimeTag GET-Response-Record
    EE PIID-ACD type FollowReport TimeTag                ERROR-Response (medium; both
                                                         trailing fields may be missing)
    10 00 len APDU 01 len RN                             SECURITY-Request, plain text + RN
    90 00 len APDU [01 00 len MAC]                       SECURITY-Response, plain text (+ MAC)

    Get-Result     00 DAR | 01 Data
    Record-Result  00 DAR | 01 m row×m, a row = one Data per RCSD column (no count)
    RSD            00 all | 01 OAD Data (equal) | 02 OAD start end interval | 09 n (n-th last)
    RCSD           n CSD×n, CSD = 00 OAD | 01 ROAD (OAD, m, OAD×m)
    TimeTag        00 absent | 01 date_time_s(7, no tag) TI(3)         (present: medium)
    FollowReport   00 absent | 01 then 01 n (OAD Get-Result)×n | 02 n (OAD RCSD Record-Result)×n
                   (present: medium, from library code only)

The parsers raise :class:`~gateway.errors.FrameError` for anything malformed or not a GET
(trailing bytes included: they are never ignored) and nothing else; a DAR inside a result is
data (:class:`Dar`), which the driver turns into a per-point device exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

from drivers.dlt698.axdr import NULL, Data, DataType, DateTimeS, Reader, Ti, encode_count, encode_data, oad_text
from gateway.errors import FrameError

GET_REQUEST: Final = 0x05
GET_RESPONSE: Final = 0x85
SECURITY_REQUEST: Final = 0x10
SECURITY_RESPONSE: Final = 0x90
ERROR_RESPONSE: Final = 0xEE

NORMAL: Final = 1
NORMAL_LIST: Final = 2
RECORD: Final = 3

#: OAD of a freeze record's freeze time column and record number column.
FREEZE_TIME_OAD: Final = 0x20210200
FREEZE_NUMBER_OAD: Final = 0x20230200

#: DAR codes (wenyl ``DARType.java`` and rs ``dar.rs``, identical).
DAR_NAMES: Final[dict[int, str]] = {
    0: "success", 1: "hardware failure", 2: "temporarily unavailable", 3: "read/write denied",
    4: "object undefined", 5: "interface class mismatch", 6: "object does not exist",
    7: "type mismatch", 8: "out of range", 9: "data block unavailable",
    10: "split transfer cancelled", 11: "not in split transfer", 12: "block write cancelled",
    13: "no block write state", 14: "invalid block number", 15: "password error or unauthorised",
    16: "baud rate cannot change", 17: "year zone count exceeded", 18: "day period count exceeded",
    19: "tariff count exceeded", 20: "security mismatch", 21: "duplicate top-up",
    22: "ESAM verification failed", 23: "security authentication failed",
    24: "customer number mismatch", 25: "top-up count error", 26: "purchase over hoarding limit",
    27: "address abnormal", 28: "symmetric decryption error", 29: "asymmetric decryption error",
    30: "signature error", 31: "meter suspended", 32: "invalid time tag", 33: "request timeout",
    34: "ESAM P1P2 wrong", 35: "ESAM LC wrong", 36: "comparison failed", 255: "other",
}

#: ERROR-Response types (medium: lib vector ``EE 03 02 00 00``).
ERROR_TYPES: Final[dict[int, str]] = {1: "APDU cannot be parsed", 2: "service not supported", 255: "other"}


def dar_name(code: int) -> str:
    """The meaning of a DAR code (``6`` → ``object does not exist``)."""
    return DAR_NAMES.get(code, f"unknown DAR {code}")


@dataclass(frozen=True, slots=True)
class Dar:
    """A data access result that is not a value: the meter refused this OAD."""

    code: int

    @property
    def name(self) -> str:
        """Its meaning."""
        return dar_name(self.code)


Result: TypeAlias = Data | Dar


@dataclass(frozen=True, slots=True)
class TimeTag:
    """A time tag: when the request was sent and how long it stays valid."""

    sent: DateTimeS
    delay: Ti


# --- selectors ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SelectAll:
    """RSD method 0: every record."""


@dataclass(frozen=True, slots=True)
class SelectEqual:
    """RSD method 1: the records whose column ``oad`` equals ``value``."""

    oad: int
    value: Data


@dataclass(frozen=True, slots=True)
class SelectRange:
    """RSD method 2: start ≤ column ``oad`` < end (end exclusive, medium), every ``interval``."""

    oad: int
    start: Data
    end: Data
    interval: Data = NULL


@dataclass(frozen=True, slots=True)
class SelectLast:
    """RSD method 9: the n-th most recent record (1 = the last)."""

    n: int


Rsd: TypeAlias = SelectAll | SelectEqual | SelectRange | SelectLast


def by_freeze_time(when: DateTimeS) -> SelectEqual:
    """The freeze record stamped ``when`` (RSD 1 on ``20210200``)."""
    return SelectEqual(FREEZE_TIME_OAD, Data(DataType.DATE_TIME_S, when))


@dataclass(frozen=True, slots=True)
class Csd:
    """A column: an OAD, or a ROAD (``columns`` set) whose value is an array."""

    oad: int
    columns: tuple[int, ...] | None = None


# --- requests -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GetNormal:
    """GET-Request-Normal: one OAD."""

    piid: int
    oad: int
    time_tag: TimeTag | None = None


@dataclass(frozen=True, slots=True)
class GetNormalList:
    """GET-Request-NormalList: several OADs in one request."""

    piid: int
    oads: tuple[int, ...]
    time_tag: TimeTag | None = None


@dataclass(frozen=True, slots=True)
class GetRecord:
    """GET-Request-Record: rows of a record table (freezes, events) chosen by ``rsd``."""

    piid: int
    oad: int
    rsd: Rsd
    rcsd: tuple[Csd, ...]
    time_tag: TimeTag | None = None


GetRequest: TypeAlias = GetNormal | GetNormalList | GetRecord


# --- responses ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordResult:
    """One record-type result: the OAD, its columns and the rows (or a DAR)."""

    oad: int
    rcsd: tuple[Csd, ...]
    rows: tuple[tuple[Data, ...], ...] | Dar


@dataclass(frozen=True, slots=True)
class FollowReport:
    """Results the meter piggy-backs on a reply (events): attribute or record results."""

    normal: tuple[tuple[int, Result], ...] = ()
    records: tuple[RecordResult, ...] = ()


@dataclass(frozen=True, slots=True)
class GetResponseNormal:
    """GET-Response-Normal."""

    piid_acd: int
    oad: int
    result: Result
    follow: FollowReport | None = None
    time_tag: TimeTag | None = None


@dataclass(frozen=True, slots=True)
class GetResponseNormalList:
    """GET-Response-NormalList: one (OAD, result) per requested OAD, in order."""

    piid_acd: int
    results: tuple[tuple[int, Result], ...]
    follow: FollowReport | None = None
    time_tag: TimeTag | None = None


@dataclass(frozen=True, slots=True)
class GetResponseRecord:
    """GET-Response-Record."""

    piid_acd: int
    record: RecordResult
    follow: FollowReport | None = None
    time_tag: TimeTag | None = None


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """ERROR-Response: the meter could not take the request at all."""

    piid_acd: int
    error: int
    follow: FollowReport | None = None
    time_tag: TimeTag | None = None
    short: bool = False        # sent without the FollowReport and TimeTag bytes

    @property
    def name(self) -> str:
        """Its meaning."""
        return ERROR_TYPES.get(self.error, f"error type {self.error}")


GetResponse: TypeAlias = GetResponseNormal | GetResponseNormalList | GetResponseRecord | ErrorResponse


# --- encoders -------------------------------------------------------------------------------

def _u8(v: int, what: str) -> bytes:
    if not 0 <= v <= 0xFF:
        raise ValueError(f"{what} is one byte (0..255), got {v}")
    return bytes([v])


def _oad(v: int) -> bytes:
    if not 0 <= v <= 0xFFFFFFFF:
        raise ValueError(f"an OAD is 4 bytes, got {v:#x}")
    return v.to_bytes(4, "big")


def encode_time_tag(tag: TimeTag | None) -> bytes:
    """``00`` or ``01`` + date_time_s + TI (no type tags)."""
    if tag is None:
        return b"\x00"
    return b"\x01" + tag.sent.encode() + tag.delay.encode()


def encode_rsd(rsd: Rsd) -> bytes:
    """A row selector."""
    if isinstance(rsd, SelectAll):
        return b"\x00"
    if isinstance(rsd, SelectEqual):
        return b"\x01" + _oad(rsd.oad) + encode_data(rsd.value)
    if isinstance(rsd, SelectRange):
        return b"\x02" + _oad(rsd.oad) + encode_data(rsd.start) + encode_data(rsd.end) + encode_data(rsd.interval)
    return b"\x09" + _u8(rsd.n, "the record number n")


def encode_rcsd(rcsd: tuple[Csd, ...]) -> bytes:
    """Column selectors: count, then ``00 OAD`` or ``01 ROAD`` each."""
    out = bytearray(encode_count(len(rcsd)))
    for c in rcsd:
        if c.columns is None:
            out += b"\x00" + _oad(c.oad)
        else:
            out += b"\x01" + _oad(c.oad) + encode_count(len(c.columns)) + b"".join(_oad(x) for x in c.columns)
    return bytes(out)


def encode_request(req: GetRequest) -> bytes:
    """The APDU of a GET request."""
    piid = _u8(req.piid, "PIID")
    if isinstance(req, GetNormal):
        body = bytes([GET_REQUEST, NORMAL]) + piid + _oad(req.oad)
    elif isinstance(req, GetNormalList):
        if not req.oads:
            raise ValueError("a NormalList request names at least one OAD")
        body = bytes([GET_REQUEST, NORMAL_LIST]) + piid + encode_count(len(req.oads))
        body += b"".join(_oad(o) for o in req.oads)
    else:
        body = bytes([GET_REQUEST, RECORD]) + piid + _oad(req.oad) + encode_rsd(req.rsd) + encode_rcsd(req.rcsd)
    return body + encode_time_tag(req.time_tag)


def _encode_result(result: Result) -> bytes:
    if isinstance(result, Dar):
        return b"\x00" + _u8(result.code, "a DAR")
    return b"\x01" + encode_data(result)


def _encode_record(rec: RecordResult) -> bytes:
    out = _oad(rec.oad) + encode_rcsd(rec.rcsd)
    if isinstance(rec.rows, Dar):
        return out + b"\x00" + _u8(rec.rows.code, "a DAR")
    body = bytearray(out + b"\x01" + encode_count(len(rec.rows)))
    for row in rec.rows:
        if len(row) != len(rec.rcsd):
            raise ValueError(f"a row has {len(row)} values for {len(rec.rcsd)} columns")
        body += b"".join(encode_data(d) for d in row)
    return bytes(body)


def _encode_follow(follow: FollowReport | None) -> bytes:
    if follow is None:
        return b"\x00"
    if follow.records:
        return b"\x01\x02" + encode_count(len(follow.records)) + b"".join(_encode_record(r) for r in follow.records)
    return (b"\x01\x01" + encode_count(len(follow.normal))
            + b"".join(_oad(o) + _encode_result(r) for o, r in follow.normal))


def encode_response(resp: GetResponse) -> bytes:
    """The APDU of a GET response (or ERROR-Response)."""
    piid = _u8(resp.piid_acd, "PIID-ACD")
    if isinstance(resp, ErrorResponse):
        head = bytes([ERROR_RESPONSE]) + piid + _u8(resp.error, "the error type")
        return head if resp.short else head + _encode_follow(resp.follow) + encode_time_tag(resp.time_tag)
    if isinstance(resp, GetResponseNormal):
        body = bytes([GET_RESPONSE, NORMAL]) + piid + _oad(resp.oad) + _encode_result(resp.result)
    elif isinstance(resp, GetResponseNormalList):
        body = bytes([GET_RESPONSE, NORMAL_LIST]) + piid + encode_count(len(resp.results))
        body += b"".join(_oad(o) + _encode_result(r) for o, r in resp.results)
    else:
        body = bytes([GET_RESPONSE, RECORD]) + piid + _encode_record(resp.record)
    return body + _encode_follow(resp.follow) + encode_time_tag(resp.time_tag)


def wrap_security_plain(apdu: bytes, rn: bytes) -> bytes:
    """SECURITY-Request in plain text with a random number (R7): ``10 00 len APDU 01 len RN``."""
    return b"\x10\x00" + encode_count(len(apdu)) + apdu + b"\x01" + encode_count(len(rn)) + rn


def wrap_security_response(apdu: bytes, mac: bytes | None = None) -> bytes:
    """SECURITY-Response in plain text, with a MAC when given (the simulator's side)."""
    tail = b"\x00" if mac is None else b"\x01\x00" + encode_count(len(mac)) + mac
    return b"\x90\x00" + encode_count(len(apdu)) + apdu + tail


@dataclass(frozen=True, slots=True)
class SecurityUnwrapped:
    """What a SECURITY wrapper carried: the plain APDU (or a DAR) and the check bytes."""

    apdu: bytes | None
    dar: Dar | None
    check: bytes


def unwrap_security(apdu: bytes) -> SecurityUnwrapped:
    """Open a plain-text SECURITY-Request/-Response; the MAC/RN is returned, not checked
    (that needs the meter's ESAM keys). Ciphertext raises :class:`FrameError`."""
    r = Reader(apdu)
    tag = r.u8()
    if tag not in (SECURITY_REQUEST, SECURITY_RESPONSE):
        raise FrameError(f"service {tag:02X} is not a SECURITY wrapper")
    choice = r.u8()
    if choice == 1:
        raise FrameError("the meter answered in ciphertext: reading it needs the meter's keys (ESAM)")
    if choice == 2 and tag == SECURITY_RESPONSE:
        dar = Dar(r.u8())
        inner = None
    elif choice == 0:
        inner, dar = r.take(r.count()), None
    else:
        raise FrameError(f"unknown SECURITY application-data choice {choice}")
    check = r.take(r.remaining)
    return SecurityUnwrapped(inner, dar, check)


# --- parsers ----------------------------------------------------------------------------------


def _time_tag(r: Reader) -> TimeTag | None:
    flag = r.u8()
    if flag == 0:
        return None
    if flag != 1:
        raise FrameError(f"TimeTag flag {flag:02X} is neither 00 nor 01")
    raw = r.take(7)
    sent = DateTimeS(int.from_bytes(raw[:2], "big"), *raw[2:])
    unit = r.u8()
    return TimeTag(sent, Ti(unit, r.uint(2)))


def _rsd(r: Reader) -> Rsd:
    method = r.u8()
    if method == 0:
        return SelectAll()
    if method == 1:
        return SelectEqual(r.oad(), r.data())
    if method == 2:
        return SelectRange(r.oad(), r.data(), r.data(), r.data())
    if method == 9:
        return SelectLast(r.u8())
    raise FrameError(f"row selector method {method} is not supported (0, 1, 2 and 9 are)")


def _rcsd(r: Reader) -> tuple[Csd, ...]:
    n = r.count()
    if n > r.remaining:
        raise FrameError(f"{n} columns cannot fit the {r.remaining} bytes left")
    out = []
    for _ in range(n):
        choice = r.u8()
        if choice == 0:
            out.append(Csd(r.oad()))
        elif choice == 1:
            oad = r.oad()
            m = r.count()
            if 4 * m > r.remaining:
                raise FrameError(f"a ROAD of {m} columns cannot fit the {r.remaining} bytes left")
            out.append(Csd(oad, tuple(r.oad() for _ in range(m))))
        else:
            raise FrameError(f"column selector choice {choice} is neither 00 (OAD) nor 01 (ROAD)")
    return tuple(out)


def _result(r: Reader) -> Result:
    choice = r.u8()
    if choice == 0:
        return Dar(r.u8())
    if choice == 1:
        return r.data()
    raise FrameError(f"Get-Result choice {choice} is neither 00 (DAR) nor 01 (Data)")


def _record(r: Reader) -> RecordResult:
    oad = r.oad()
    rcsd = _rcsd(r)
    choice = r.u8()
    if choice == 0:
        return RecordResult(oad, rcsd, Dar(r.u8()))
    if choice != 1:
        raise FrameError(f"Record-Result choice {choice} is neither 00 (DAR) nor 01 (records)")
    m = r.count()
    if m and not rcsd:
        raise FrameError("records without columns cannot be decoded")
    if m * len(rcsd) > r.remaining:
        raise FrameError(f"{m} records cannot fit the {r.remaining} bytes left")
    rows = tuple(tuple(r.data() for _ in rcsd) for _ in range(m))
    return RecordResult(oad, rcsd, rows)


def _follow(r: Reader) -> FollowReport | None:
    flag = r.u8()
    if flag == 0:
        return None
    if flag != 1:
        raise FrameError(f"FollowReport flag {flag:02X} is neither 00 nor 01")
    choice = r.u8()
    n = r.count()
    if n > r.remaining:
        raise FrameError(f"a FollowReport of {n} results cannot fit the {r.remaining} bytes left")
    if choice == 1:
        return FollowReport(normal=tuple((r.oad(), _result(r)) for _ in range(n)))
    if choice == 2:
        return FollowReport(records=tuple(_record(r) for _ in range(n)))
    raise FrameError(f"FollowReport choice {choice} is neither 01 nor 02")


def parse_request(apdu: bytes) -> GetRequest:
    """Parse a GET request APDU (the meter side); :class:`FrameError` when not one."""
    r = Reader(apdu)
    tag, form, piid = r.u8(), r.u8(), r.u8()
    if tag != GET_REQUEST:
        raise FrameError(f"service {tag:02X} is not a GET request")
    req: GetRequest
    if form == NORMAL:
        req = GetNormal(piid, r.oad())
    elif form == NORMAL_LIST:
        n = r.count()
        if n == 0 or 4 * n > r.remaining:
            raise FrameError(f"a NormalList of {n} OADs does not fit the request")
        req = GetNormalList(piid, tuple(r.oad() for _ in range(n)))
    elif form == RECORD:
        oad = r.oad()
        rsd = _rsd(r)
        req = GetRecord(piid, oad, rsd, _rcsd(r))
    else:
        raise FrameError(f"GET form {form} is not supported (1 Normal, 2 NormalList, 3 Record are)")
    tt = _time_tag(r)
    r.end("the GET request")
    if tt is None:
        return req
    if isinstance(req, GetNormal):
        return GetNormal(req.piid, req.oad, tt)
    if isinstance(req, GetNormalList):
        return GetNormalList(req.piid, req.oads, tt)
    return GetRecord(req.piid, req.oad, req.rsd, req.rcsd, tt)


def parse_response(apdu: bytes) -> GetResponse:
    """Parse a GET response APDU (or ERROR-Response); :class:`FrameError` when not one.

    A plain-text SECURITY-Response is opened first (its MAC is not checked).
    """
    if apdu[:1] == bytes([SECURITY_RESPONSE]):
        opened = unwrap_security(apdu)
        if opened.apdu is None:
            raise FrameError(
                f"the meter refused the secured request: DAR {opened.dar.code if opened.dar else '?'} "
                f"({opened.dar.name if opened.dar else '?'})"
            )
        apdu = opened.apdu
        if apdu[:1] == bytes([SECURITY_RESPONSE]):
            raise FrameError("a SECURITY-Response nested in another one")
    r = Reader(apdu)
    tag = r.u8()
    if tag == ERROR_RESPONSE:
        piid, err = r.u8(), r.u8()
        if not r.remaining:
            return ErrorResponse(piid, err, short=True)
        # lib's vector (EE 03 02 00 00) has FollowReport and TimeTag after the type.
        error = ErrorResponse(piid, err, _follow(r), _time_tag(r))
        r.end("the ERROR-Response")
        return error
    if tag != GET_RESPONSE:
        raise FrameError(f"service {tag:02X} is not a GET response; the meter answered something else")
    form, piid = r.u8(), r.u8()
    resp: GetResponse
    if form == NORMAL:
        oad = r.oad()
        resp = GetResponseNormal(piid, oad, _result(r), _follow(r), _time_tag(r))
    elif form == NORMAL_LIST:
        n = r.count()
        if 5 * n > r.remaining:
            raise FrameError(f"a NormalList reply of {n} results cannot fit the {r.remaining} bytes left")
        results = tuple((r.oad(), _result(r)) for _ in range(n))
        resp = GetResponseNormalList(piid, results, _follow(r), _time_tag(r))
    elif form == RECORD:
        rec = _record(r)
        resp = GetResponseRecord(piid, rec, _follow(r), _time_tag(r))
    else:
        raise FrameError(f"GET response form {form} is not supported (1, 2 and 3 are)")
    r.end(f"the GET response for {_what(resp)}")
    return resp


def _what(resp: GetResponse) -> str:
    if isinstance(resp, GetResponseNormal):
        return f"OAD {oad_text(resp.oad)}"
    if isinstance(resp, GetResponseRecord):
        return f"OAD {oad_text(resp.record.oad)}"
    return "the list"
