"""Property tests of the receive paths: Modbus RTU, Modbus TCP and DL/T 645 on the shared pipes.

Hypothesis builds what a bad line or a confused peer can send in answer to one request —
noise, a reply from another unit or address, a late reply for another transaction or DI,
our own echo, a frame too short or too long, a corrupted checksum — in any order, cut into
any chunks, with or without the right reply among them. The properties:

* nothing but the taxonomy's errors (:class:`~gateway.errors.AmrError`) escapes;
* a reply is returned only when it is the right one, with exactly its payload: a frame for
  another unit, address or transaction is never attributed to the request;
* when the right reply arrived whole (and nothing before it legitimately answered the
  request), it is returned;
* whatever happened, the next exchange on the same pipe gets its own reply (stale and late
  bytes are drained, not prefixed to it).

The channel under the pipe is a scripted fake (a real port or socket cannot deliver chosen
bytes at chosen chunk boundaries: a pty and TCP coalesce writes); everything above it is
the real code. Each chunk is handed over on its own loop turn, all in the same loop
iteration, so no silence timer separates them. The Modbus TCP truncation case against a
real socket is in ``tests/integration/test_modbus_driver.py``.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from drivers.dlt645.codec import Request, address_to_wire, di_bytes, encode_frame, read_request
from drivers.dlt645.matching import Dlt645Matcher
from drivers.modbus.frames import mbap_frame, rtu_frame
from drivers.modbus.link import RtuLink, TcpLink
from drivers.modbus.plan import ReadRequest
from drivers.transport.pipe import ExchangePipe, Feed, LineTiming, Lost
from gateway.errors import AmrError, DeviceException, ReadTimeout

PROPS = settings(max_examples=120, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow])
TIMEOUT = 0.02
PAUSE = 0.005


def paused(before: bytes, after: bytes, sizes: list[int], pause: bool) -> list[bytes | None]:
    """``before`` then ``after`` in chunks, with a pause between them when asked."""
    return [*chunked(before, sizes), *([None] if pause else []), *chunked(after, sizes)]


def chunked(stream: bytes, cuts: list[int]) -> list[bytes | None]:
    """``stream`` cut at the given sizes (the rest in one last chunk)."""
    out: list[bytes | None] = []
    pos = 0
    for size in cuts:
        if pos >= len(stream):
            break
        out.append(stream[pos:pos + size])
        pos += size
    if pos < len(stream):
        out.append(stream[pos:])
    return out


@dataclass
class ScriptedChannel:
    """A pipe channel that answers the n-th write with ``script[n](request)`` in chunks."""

    script: list[Callable[[bytes], list[bytes | None]]]
    writes: list[bytes] = field(default_factory=list)
    _feed: Feed | None = None

    @property
    def describe(self) -> str:
        return "scripted line"

    async def open(self, feed: Feed, lost: Lost) -> None:
        self._feed = feed

    def write(self, data: bytes) -> None:
        chunks = self.script[len(self.writes)](data) if len(self.writes) < len(self.script) else []
        self.writes.append(data)
        loop = asyncio.get_running_loop()
        feed = self._feed
        assert feed is not None
        delay = 0.0
        for chunk in chunks:
            if chunk is None:                  # a pause longer than the garbage silence (2 ms)
                delay = PAUSE
            elif delay:
                loop.call_later(delay, lambda c=chunk: feed(c, time.monotonic()))
            else:
                loop.call_soon(feed, chunk, time.monotonic())

    def close(self) -> None:
        self._feed = None


cuts = st.lists(st.integers(min_value=1, max_value=12), max_size=12)
noise = st.binary(min_size=1, max_size=24)

# --- Modbus RTU --------------------------------------------------------------------------------


def read_of(function: int, count: int) -> ReadRequest:
    return ReadRequest(function, 0, count, (), struct.pack(">BHH", function, 0, count))


def rtu_reply(unit: int, function: int, data: bytes) -> bytes:
    return rtu_frame(unit, bytes((function, len(data))) + data)


Parts = list[tuple[str, bytes]]
RtuCase = tuple[int, int, int, bytes, Parts, Parts, bool, list[int], bool]


@st.composite
def rtu_case(draw: st.DrawFn) -> RtuCase:
    unit = draw(st.integers(1, 247))
    function = draw(st.sampled_from([3, 4]))
    count = draw(st.integers(1, 8))
    data = draw(st.binary(min_size=2 * count, max_size=2 * count))
    right = rtu_reply(unit, function, data)
    other_unit = draw(st.integers(1, 247).filter(lambda u: u != unit))
    part = st.one_of(
        noise.map(lambda b: ("noise", b)),
        st.just(("foreign", rtu_reply(other_unit, function, data))),
        st.just(("foreign", rtu_frame(other_unit, bytes((function | 0x80, 2))))),
        st.integers(1, len(right) - 1).map(lambda k: ("short", right[:k])),
        st.binary(min_size=2 * count + 2, max_size=2 * count + 8).map(
            lambda d: ("long", rtu_reply(unit, function, d))),
        st.just(("bad_crc", right[:-1] + bytes(((right[-1] + 1) & 0xFF,)))),
    )
    before = draw(st.lists(part, max_size=4))
    include = draw(st.booleans())
    after = draw(st.lists(part, max_size=2))
    return unit, function, count, data, before, [*([("right", right)] if include else []), *after], \
        include, draw(cuts), draw(st.booleans())


@PROPS
@given(rtu_case())
def test_rtu_receive_path_never_attributes_a_foreign_frame(case: RtuCase) -> None:
    unit, function, count, data, before, rest, include, sizes, pause = case
    parts = [*before, *rest]
    follow = bytes(range(2 * count))

    async def run() -> None:
        channel = ScriptedChannel([
            lambda req: paused(b"".join(b for _, b in before), b"".join(b for _, b in rest), sizes, pause),
            lambda req: [rtu_reply(unit, function, follow)]])
        link = RtuLink(ExchangePipe(channel, LineTiming()))
        try:
            got: bytes | None = await link.transact(unit, read_of(function, count), TIMEOUT)
        except AmrError:
            got = None
        assert got is None or got == data, "a payload other than the right reply's was returned"
        # Bytes that cannot become a frame, followed by silence, are a FrameError by design.
        garbled_pause = pause and any(kind in ("noise", "short", "bad_crc") for kind, _ in before)
        if include and not garbled_pause:
            assert got == data, f"the right reply was in the stream but not returned: {parts}"
        second = await link.transact(unit, read_of(function, count), TIMEOUT)
        assert second == follow, "the next exchange did not get its own reply"
        await link.close()

    asyncio.run(run())


# --- Modbus TCP --------------------------------------------------------------------------------


class ScriptedTcpTransport(asyncio.Transport):
    """Stands in for the socket under a TaggedTcpPipe: answers each write from a script."""

    def __init__(self, proto: asyncio.Protocol,
                 script: list[Callable[[int], list[bytes]]], writes: list[int]) -> None:
        super().__init__()
        self.proto = proto
        self.script = script
        self.writes = writes
        self.closed = False
        #: chunks scripted so far, and handed to the protocol so far
        self.scheduled = 0
        self.delivered = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        tid = struct.unpack_from(">H", bytes(data))[0]
        n = len(self.writes)
        self.writes.append(tid)
        chunks = self.script[n](tid) if n < len(self.script) else []
        loop = asyncio.get_running_loop()
        self.scheduled += len(chunks)
        for chunk in chunks:
            loop.call_soon(self._deliver, chunk)

    def _deliver(self, chunk: bytes) -> None:
        self.delivered += 1
        if not self.closed:
            self.proto.data_received(chunk)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.proto.connection_lost(None)


def adu(tid: int, unit: int, pdu: bytes) -> bytes:
    return mbap_frame(tid, unit, pdu)


TcpCase = tuple[int, int, int, bytes, list[tuple[str, int, bytes]], str, list[int]]


@st.composite
def tcp_case(draw: st.DrawFn) -> TcpCase:
    unit = draw(st.integers(0, 255))
    function = draw(st.sampled_from([3, 4]))
    count = draw(st.integers(1, 8))
    data = draw(st.binary(min_size=2 * count, max_size=2 * count))
    good = bytes((function, 2 * count)) + data
    # (kind, offset of the frame's transaction id from the request's, PDU)
    other_tid = st.integers(1, 0xFFFF)
    part = st.one_of(
        other_tid.map(lambda d: ("late", d, good)),
        other_tid.map(lambda d: ("late_short", d, good[:-1])),
        st.just(("wrong_unit", 0, good)),
        st.binary(min_size=2 * count + 2, max_size=2 * count + 8).map(
            lambda d: ("long", 0, bytes((function, len(d))) + d)),
        st.just(("bad_header", 0, b"")),
    )
    parts = draw(st.lists(part, max_size=4))
    if draw(st.booleans()):
        parts.append(("right", 0, good))
    # after it all: nothing, bytes that cannot be a header, or the start of a reply that never ends
    trailer = draw(st.sampled_from(["none", "noise", "short"]))
    return unit, function, count, data, parts, trailer, draw(cuts)


def tcp_stream(case: TcpCase, tid: int) -> bytes:
    """What the peer sends in answer to request ``tid``: the case's parts, then its trailer."""
    unit, function, count, data, parts, trailer, _sizes = case
    out = b""
    for kind, d, pdu in parts:
        if kind in ("late", "late_short"):
            out += adu((tid + d) & 0xFFFF, unit, pdu)
        elif kind == "wrong_unit":
            out += adu(tid, (unit + 1) & 0xFF, pdu)
        elif kind == "bad_header":
            out += struct.pack(">HHHB", tid, 7, 3, unit) + b"\x03\x00"
        else:                                # right, long: this request's id
            out += adu(tid, unit, pdu)
    if trailer == "noise":
        out += b"\xff" * 9
    elif trailer == "short":
        out += adu(tid, unit, bytes((function, 2 * count)) + data)[:-1]
    return out


@PROPS
@given(tcp_case())
def test_modbus_tcp_receive_path_matches_by_transaction_id(case: TcpCase) -> None:
    unit, function, count, data, parts, _trailer, sizes = case
    follow = bytes(range(2 * count))

    def stream_for(tid: int) -> bytes:
        return tcp_stream(case, tid)

    async def run() -> None:
        link = TcpLink("scripted", 502, 1.0)
        writes: list[int] = []
        script: list[Callable[[int], list[bytes]]] = [
            lambda tid: chunked(stream_for(tid), sizes),
            lambda tid: [adu(tid, unit, bytes((function, 2 * count)) + follow)],
        ]

        def attach() -> None:
            link.pipe.connection_made(ScriptedTcpTransport(link.pipe, script, writes))

        attach()
        try:
            got: bytes | None = await link.transact(unit, read_of(function, count), TIMEOUT)
        except AmrError:
            got = None
        assert got is None or got == data, "a payload other than the right reply's was returned"
        kinds = [k for k, _, _ in parts]
        if "right" in kinds and not {"wrong_unit", "long", "bad_header"} & set(kinds):
            assert got == data, f"the right reply was in the stream but not returned: {parts}"
        if link.pipe._transport is None:      # the stream was reset: reconnect as open() would
            attach()
        second = await link.transact(unit, read_of(function, count), TIMEOUT)
        assert second == follow, "the next exchange did not get its own reply"
        await link.close()

    asyncio.run(run())


async def _transact(link: TcpLink, unit: int, request: ReadRequest) -> bytes | type[Exception]:
    """One exchange by ``transact``: the payload, or the class of the error it ended with."""
    try:
        return await link.transact(unit, request, TIMEOUT)
    except AmrError as exc:
        return type(exc)


def _outcome(outcome: bytes | Exception) -> bytes | type[Exception]:
    return type(outcome) if isinstance(outcome, Exception) else outcome


@PROPS
@given(tcp_case())
def test_modbus_tcp_callback_exchange_ends_as_transact_does(case: TcpCase) -> None:
    """``send_now`` (what a chained read sends with) gets exactly the outcome ``transact`` gets
    from the same bytes. The next request, sent from within its callback as a chained read
    sends it, is refused (False, nothing written) exactly while the stream is closed or has
    bytes to drain (then ``transact`` drains first), and never gets another frame's payload:
    when every byte of the first answer had arrived by then, it gets its own reply.

    Bytes that arrive only after the next request went out (the callback sends it before the
    rest of the scripted chunks come in) may spoil it: stray bytes end it with an error (it
    is retried), and a stray frame carrying its very transaction id is its reply as far as
    any Modbus TCP master can tell. So the example leaves out a stray frame with the *next*
    id (a real peer's late reply carries an earlier one)."""
    unit, function, count, _data, parts, _trailer, sizes = case
    assume(all(d != 1 for kind, d, _ in parts if kind in ("late", "late_short")))
    follow = bytes(range(2 * count))
    request = read_of(function, count)

    def stream_for(tid: int) -> bytes:
        return tcp_stream(case, tid)

    async def one(chained: bool) -> bytes | type[Exception]:
        link = TcpLink("scripted", 502, 1.0)
        writes: list[int] = []
        script: list[Callable[[int], list[bytes]]] = [
            lambda tid: chunked(stream_for(tid), sizes),
            lambda tid: [adu(tid, unit, bytes((function, 2 * count)) + follow)],
        ]
        wire: list[ScriptedTcpTransport] = []

        def attach() -> None:
            wire.append(ScriptedTcpTransport(link.pipe, script, writes))
            link.pipe.connection_made(wire[-1])

        attach()
        if not chained:
            got = await _transact(link, unit, request)
            if link.pipe._transport is None:  # the stream was reset: reconnect as open() would
                attach()
            second = await _transact(link, unit, request)
            assert second == follow, "the next exchange did not get its own reply"
            await link.close()
            return got
        loop = asyncio.get_running_loop()
        first: asyncio.Future[bytes | Exception] = loop.create_future()
        then: asyncio.Future[bytes | Exception] = loop.create_future()
        sent_from_callback: list[bool] = []
        all_in: list[bool] = []

        def on_first(outcome: bytes | Exception) -> None:
            first.set_result(outcome)
            all_in.append(wire[0].delivered == wire[0].scheduled)
            clean = link.pipe._transport is not None and not link.pipe._dirty
            sent = link.send_now(unit, request, TIMEOUT, then.set_result)
            sent_from_callback.append(sent)
            assert sent == clean, f"send_now said {sent} on a {'clean' if clean else 'dirty or closed'} stream"
            if not sent:
                assert len(writes) == 1, "a refused send_now wrote to the stream"

        assert link.send_now(unit, request, TIMEOUT, on_first), "a clean idle connection refused a request"
        got = _outcome(await first)
        if sent_from_callback == [True]:
            second = _outcome(await then)
        else:
            if link.pipe._transport is None:
                attach()
            second = await _transact(link, unit, request)
        if all_in == [True]:
            assert second == follow, "the next exchange did not get its own reply"
        else:
            assert second == follow or (isinstance(second, type) and issubclass(second, AmrError)), \
                "the next exchange got another frame's payload"
        await link.close()
        return got

    assert asyncio.run(one(True)) == asyncio.run(one(False))


# --- DL/T 645 ----------------------------------------------------------------------------------

ADDR = "123456789012"
OTHER = "000000000077"
DI = 0x00010000


def dlt_reply(address: str, di: int, payload: bytes, *, control: int = 0x91, pre: int = 0) -> bytes:
    return encode_frame(address_to_wire(address), control, di_bytes(di) + payload, preamble=pre)


@st.composite
def dlt_case(draw: st.DrawFn) -> tuple[bytes, Parts, Parts, bool, list[int], bool]:
    payload = draw(st.binary(min_size=4, max_size=40))
    pre = draw(st.integers(0, 4))
    right = dlt_reply(ADDR, DI, payload, pre=pre)
    request = read_request(ADDR, DI).encode(4)
    part = st.one_of(
        noise.map(lambda b: ("noise", b)),
        st.just(("echo", request)),
        st.just(("foreign", dlt_reply(OTHER, DI, payload))),
        st.just(("late", dlt_reply(ADDR, 0x00020000, payload))),
        st.integers(1, len(right) - 1).map(lambda k: ("short", right[:k])),
        st.binary(min_size=100, max_size=180).map(lambda d: ("long", dlt_reply(OTHER, DI, d))),
        st.just(("bad_sum", right[:-2] + bytes(((right[-2] + 1) & 0xFF,)) + right[-1:])),
        st.just(("refusal_other", encode_frame(address_to_wire(OTHER), 0xD1, b"\x02", preamble=0))),
    )
    before = draw(st.lists(part, max_size=4))
    include = draw(st.booleans())
    after = draw(st.lists(part, max_size=2))
    return payload, before, [*([("right", right)] if include else []), *after], include, draw(cuts), \
        draw(st.booleans())


async def dlt_exchange(pipe: ExchangePipe, req: Request) -> bytes:
    matcher = Dlt645Matcher(req, f"DI {DI:08X}", pipe.describe)
    await pipe.exchange(req.encode(4), matcher, TIMEOUT)
    if matcher.refusal is not None:
        raise matcher.refusal
    assert matcher.reply is not None
    return matcher.reply.payload


@PROPS
@given(dlt_case())
def test_dlt645_receive_path_never_attributes_a_foreign_frame(
        case: tuple[bytes, Parts, Parts, bool, list[int], bool]) -> None:
    payload, before, rest, include, sizes, pause = case
    parts = [*before, *rest]
    follow = b"\x11\x22\x33\x44"

    async def run() -> None:
        channel = ScriptedChannel([
            lambda req: paused(b"".join(b for _, b in before), b"".join(b for _, b in rest), sizes, pause),
            lambda req: [dlt_reply(ADDR, DI, follow, pre=4)]])
        pipe = ExchangePipe(channel, LineTiming())
        req = read_request(ADDR, DI)
        try:
            got: bytes | None = await dlt_exchange(pipe, req)
        except AmrError:
            got = None
        assert got is None or got == payload, "a payload other than the right reply's was returned"
        if include:                          # DL/T 645 frames end by length: no garbage rule
            assert got == payload, f"the right reply was in the stream but not returned: {parts}"
        assert await dlt_exchange(pipe, req) == follow, "the next exchange did not get its own reply"
        await pipe.close()

    asyncio.run(run())


# --- what the matchers say when only foreign frames came -------------------------------------


def test_only_foreign_frames_are_a_wrong_address_error_not_a_reply() -> None:
    from gateway.errors import WrongAddressError

    async def run() -> None:
        rtu = RtuLink(ExchangePipe(ScriptedChannel([lambda req: [rtu_reply(9, 3, b"\x00\x01")]]), LineTiming()))
        with pytest.raises(WrongAddressError, match="unit 9 arrived while unit 5 was asked"):
            await rtu.transact(5, read_of(3, 1), TIMEOUT)
        assert rtu.pipe.stats["skipped_frames"] == 1   # type: ignore[attr-defined]
        pipe = ExchangePipe(ScriptedChannel([lambda req: [dlt_reply(OTHER, DI, b"\x01\x02\x03\x04")]]),
                            LineTiming())
        with pytest.raises(WrongAddressError, match=OTHER):
            await dlt_exchange(pipe, read_request(ADDR, DI))
        silent = ExchangePipe(ScriptedChannel([]), LineTiming())
        with pytest.raises(ReadTimeout):
            await dlt_exchange(silent, read_request(ADDR, DI))
        refused = ExchangePipe(ScriptedChannel(
            [lambda req: [encode_frame(address_to_wire(ADDR), 0xD1, b"\x02", preamble=0)]]), LineTiming())
        with pytest.raises(DeviceException):
            await dlt_exchange(refused, read_request(ADDR, DI))

    asyncio.run(run())


def test_concurrent_exchanges_on_one_pipe_take_turns() -> None:
    """Two callers on one pipe (a misbehaving caller: the bus worker serialises): each gets
    its own reply, and the second request is written only after the first reply came."""
    replies = {5: b"\x00\x05", 6: b"\x00\x06"}
    order: list[int] = []

    def answer(req: bytes) -> list[bytes | None]:
        order.append(req[0])
        return [rtu_reply(req[0], 3, replies[req[0]])]

    async def run() -> None:
        link = RtuLink(ExchangePipe(ScriptedChannel([answer, answer]), LineTiming()))
        async with asyncio.timeout(5):       # a lost caller would wait forever
            a, b = await asyncio.gather(link.transact(5, read_of(3, 1), 1.0),
                                        link.transact(6, read_of(3, 1), 1.0))
        assert (a, b) == (replies[5], replies[6])
        assert order == [5, 6]
        await link.close()

    asyncio.run(run())
