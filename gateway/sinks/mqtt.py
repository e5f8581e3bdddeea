"""The MQTT sink: committed messages → QoS 1 PUBLISH → PUBACK → the sink's cursor.

The only module that imports paho-mqtt (2.x, ``CallbackAPIVersion.VERSION2``); paho's
errors and reason codes become :class:`~gateway.errors.SinkError` here.

Topics (``{prefix}`` = ``mqtt.topic_prefix``, default ``amr``)::

    {prefix}/{gateway}/status                   retained: "online" (birth), "offline" (will,
                                                and published on a graceful stop)
    {prefix}/{gateway}/meters/{meter}/reading   kind reading
    {prefix}/{gateway}/meters/{meter}/settlement
    {prefix}/{gateway}/meters/{meter}/event
    {prefix}/{gateway}/customers/{customer}/settlement   kind customer_settlement (customer from the payload)
    {prefix}/{gateway}/kpi                      kind kpi (and any gateway-wide message:
                                                {prefix}/{gateway}/{kind})

The payload is the committed JSON document, byte for byte. In a meter id, the characters
MQTT reserves in a topic level (``/``, ``+``, ``#``) are replaced by ``_``.

MQTT 5 and refused publishes
----------------------------
The sink speaks MQTT 5 unless ``mqtt.protocol: 3.1.1``. Only MQTT 5 lets a broker say that
it did not take a publish: its PUBACK carries a reason code, and one ≥ 0x80 (0x87 not
authorized — what mosquitto 2.x answers for a publish its ACL denies —, 0x90 topic name
invalid, 0x97 quota exceeded, 0x99 payload format invalid, …) means the message went
nowhere. Such a PUBACK is never delivery: the seq is not reported, the session is dropped
(:class:`~gateway.sinks.base.SinkRefusedError`; quota exceeded throttles instead), and the
runner shows ``refused`` with the reason in health, logs it once, and retries from the
unmoved cursor with backoff; once the broker takes the messages (the ACL fixed) every
reading goes out in order. Reason codes below 0x80 are delivery (0x10 "no matching
subscribers" included). Under MQTT 3.1.1 a broker acknowledges a denied publish exactly
like a delivered one and drops it; nothing on the client can tell.

mosquitto 2.0 (checked with 2.0.11) closes the connection right after such a PUBACK, and
when more publishes wait unread on its side that close is a TCP reset, which can discard
the PUBACK before we read it. So every session first waits for the PUBACK of its retained
``online`` birth message (a refused birth fails :meth:`MqttSink.open` with
:class:`~gateway.sinks.base.SinkRefusedError`), then sends one reading and waits for its
PUBACK before it fills the window (``probe_first``): a refusal is always read, at the cost
of two round trips per session. A refusal in the middle of a full window may still arrive
as a plain connection loss; the next session's probe then names it.

The broker's ``Receive Maximum`` (CONNACK, MQTT 5; mosquitto's ``max_inflight_messages``,
20 by default) caps the window for the session: a client that sends more unacknowledged
QoS 1 messages is disconnected.

How paho meets asyncio
----------------------
* One paho ``Client`` **per connection**: connecting (a blocking socket connect, the TLS
  handshake and the CONNECT packet) runs in the default executor; after that the event
  loop drives the client through paho's external-loop API (``loop_read`` when the socket
  is readable, ``loop_write`` when paho has bytes the socket did not take, ``loop_misc``
  once a second for keepalive). No network thread: at 1,000 messages/s paho's thread
  cost a select, a wake-up pipe byte per publish and a GIL hand-over per burst, about a
  tenth of the gateway's CPU. ``reconnect_on_failure=False``: when the connection drops
  the delivery runner decides when to reconnect (jittered exponential backoff) with a
  fresh client. A fresh client means paho never re-sends its own queue behind our back;
  the runner resends from the durable cursor, so what is retransmitted and in what order
  is decided in one place.
* paho's callbacks run on the loop's thread, inside those calls: PUBACK message ids are
  collected and reported once per read burst (not per message), and paho's byte-at-a-time
  reads are served from one ``recv`` per readable socket (``_RecvBuffer``, plain sockets); CONNACK and disconnects
  resolve futures directly. Nothing polls but the keepalive tick. The loss callbacks are
  set only once the loop owns the socket (never on the connecting thread).
* Failure on the loop: anything paho queued but the socket refused (a PUBACK burst, a
  keepalive PINGREQ) gets a writer; an exception out of paho inside those calls breaks the
  session like a dropped link (the runner resends from the cursor) instead of spinning on a
  readable socket; a stop cancelled while it waits for the ``offline`` PUBACK still closes
  the socket and stops the tick.
* **Readings without paho, on a plain socket** (:meth:`_Connection.publish`): the sink
  frames each reading's QoS 1 PUBLISH itself and writes every PUBLISH handed over in one
  pass of the event loop with one ``send``; it splits what the socket returns into packets
  and settles its readings' PUBACKs itself, by the same rule (reason code < 0x80 delivered,
  ≥ 0x80 refused: never delivery), handing every other packet (CONNACK, PINGRESP, the
  status messages' PUBACKs, DISCONNECT) to paho in the order it came. paho's per-message
  path (a message object with its own lock, a packet dict, a ``send`` per message, a
  reason-code and a properties object per PUBACK) was about a sixth of the gateway's CPU
  at 1,000 readings/s. paho still connects, keeps the session alive, publishes the birth
  and ``offline`` messages and disconnects; its bytes and ours never interleave (neither
  writes while the other has bytes half written). Message ids: paho's client numbers its
  two publishes 1 and 2, readings take 3 and up.
* Over TLS, and for the status messages, :meth:`MqttSink.send` calls ``Client.publish``,
  which writes at once while the socket takes it, and records message id → seq; the
  window (``mqtt.inflight``, enforced by the runner) bounds what paho holds, so paho's own
  inflight limit is off (0): paho then never queues, and never walks every in-flight
  message on each PUBACK looking for queued ones (what it does whenever a limit is set).
* The publisher connects with a clean session: after a reconnect the broker holds nothing
  for us, and everything unacknowledged is published again from the store (at-least-once,
  duplicates only across the reconnect; consumers deduplicate on (gateway, seq)).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from gateway.errors import SinkError
from gateway.settings import MqttSettings
from gateway.sinks.base import Reporter, SinkAuthError, SinkRefusedError
from gateway.store import OutboxRow

log = logging.getLogger("amr.sinks.mqtt")

_AUTH_CODES = frozenset({4, 5, 0x86, 0x87})  # v3.1.1 CONNACK 4/5, v5 reason 0x86/0x87
_TOPIC_RESERVED = str.maketrans({"/": "_", "+": "_", "#": "_"})
_QUOTA_EXCEEDED = 0x97
_SESSION_TAKEN_OVER = 0x8E
"""MQTT 5 DISCONNECT reason: another client connected with the same client id."""
_REFUSAL_HINTS = {
    0x87: "check that the broker's ACL lets this client publish under {base}/#",
    0x90: "check mqtt.topic_prefix and the gateway id",
    0x95: "the message is larger than the broker's limit (mosquitto: message_size_limit)",
    0x97: "the broker's quota is exhausted; publishing is slowed down",
    0x99: "the broker does not accept the payload's format",
}


def _customer_of(payload: str) -> str | None:
    """The ``customer`` of a customer settlement message (None when the payload has none)."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    c = doc.get("customer") if isinstance(doc, dict) else None
    return c if isinstance(c, str) and c else None


def topic_level(text: str) -> str:
    """Make ``text`` safe as one topic level (no ``/``, ``+`` or ``#``)."""
    return text.translate(_TOPIC_RESERVED) or "_"


class _Connection:
    """One paho client driven by the event loop: its socket, its acks, CONNACK and loss.

    Everything here runs on the loop's thread. paho's callbacks fire inside
    ``loop_read``/``loop_write``/``loop_misc``, which the loop calls when the socket is
    readable or writable and once a second (keepalive); there is no network thread.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, client: paho.Client, reporter: Reporter,
                 base: str, client_id: str = "") -> None:
        self.loop = loop
        self.client = client
        self.client_id = client_id
        self.reporter = reporter
        self.base = base
        self.connack: asyncio.Future[tuple[int, str]] = loop.create_future()
        self.receive_maximum: int | None = None    # the broker's (MQTT 5 CONNACK), if it says
        self.maximum_packet_size: int | None = None  # likewise: a larger packet ends the session
        self.refusal: str | None = None            # a refused status message, if any
        self.lost_reason = ""
        self.mids: dict[int, int] = {}              # message id → seq (readings)
        self.control: dict[int, asyncio.Future[None]] = {}   # message id → status publish waiter
        self.closing = False
        self.lost = False
        self._acked: list[int] = []
        self._fd: int | None = None
        self._writing = False
        self._rbuf: _RecvBuffer | None = None
        self._misc: asyncio.TimerHandle | None = None
        self.fast = False
        """Readings are framed, written and acknowledged here, not by paho (plain sockets;
        see :meth:`publish`). TLS keeps paho's publish and reads."""
        self._props = b"\x00" if client.protocol == paho.MQTTv5 else b""   # no PUBLISH properties
        self._wbuf = bytearray()        # PUBLISH packets framed here, not yet taken by the socket
        self._wbuf_since = 0.0          # when the socket last refused bytes of it (loop time)
        self._flush_due = False
        self._mid = _FIRST_READING_MID - 1
        self._inbuf = b""               # the start of a packet not yet complete

    # paho's callbacks (on the loop's thread, inside loop_read / loop_write / loop_misc)
    def on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode,
                   properties: Any) -> None:
        if not self.connack.done():
            self.receive_maximum = getattr(properties, "ReceiveMaximum", None)
            self.maximum_packet_size = getattr(properties, "MaximumPacketSize", None)
            self.connack.set_result((int(reason.value), str(reason)))

    def on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode,
                   properties: Any) -> None:
        if reason.value < 0x80:         # MQTT 3.1.1: always 0
            self._acked.append(mid)     # reported once per read burst, not per message
        else:
            self._refused(mid, reason)

    def _refused(self, mid: int, reason: ReasonCode) -> None:
        """A PUBACK ≥ 0x80: the broker did not take the message. It is not delivered; the
        session breaks so the runner retries from the cursor (see the module docstring)."""
        seq = self.mids.pop(mid, None)
        code = int(reason.value)
        hint = _REFUSAL_HINTS.get(code, "the message is kept and retried").format(base=self.base)
        what = f"seq {seq}" if seq is not None else f"the status message on {self.base}/status"
        text = f"the MQTT broker refused {what}: {reason} (reason code 0x{code:02X}); {hint}"
        if seq is None:
            # A status message (birth or offline): nothing of ours waits on it, and readings
            # may still flow. But mosquitto 2.0 closes the connection right after a denied
            # PUBACK: should the session end now, this is why (see _lost).
            waiter = self.control.pop(mid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            self.refusal = text
            log.debug("%s", text)
            return
        self.refuse(SinkError(text, "throttle") if code == _QUOTA_EXCEEDED else SinkRefusedError(text))

    def refuse(self, error: SinkError) -> None:
        """The broker did not (or would not) take a reading: what it took before still counts,
        nothing more is published in this session, and the runner hears why once."""
        self.drain_acks()
        if self.lost:
            return
        self.lost = True
        self.reporter.broken(error)

    def on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode,
                      properties: Any) -> None:
        text = str(reason)
        if int(getattr(reason, "value", 0)) == _SESSION_TAKEN_OVER:
            # not a network failure: two clients take turns evicting each other
            text = (f"another client connected with our client id {self.client_id!r}, so the broker "
                    "dropped this session (session taken over, reason code 0x8E); give every "
                    "gateway its own mqtt.client_id (two gateways with one id evict each other)")
        elif text == "Unspecified error":   # what paho says for a dropped socket
            # mosquitto 2.0 evicts the older of two clients with one id by closing its socket
            # without a reason, so a clash looks like this too: say so, with our id
            text = ("the broker closed the connection or the network failed (if this repeats while "
                    f"the broker is up, another client may be using our client id {self.client_id!r}: "
                    "give every gateway its own mqtt.client_id)")
        self._lost(text)

    def on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self.detach()

    # the socket on the loop -----------------------------------------------------------
    def attach(self) -> None:
        """Watch the connected socket (after ``connect`` returned) and start the keepalive tick.

        The loss callbacks are set here, on the loop, not before ``connect``: paho runs
        ``connect`` in a worker thread and would call them there if writing CONNECT failed.
        """
        self.client.on_disconnect = self.on_disconnect
        self.client.on_socket_close = self.on_socket_close
        sock = self.client.socket()
        if sock is None:
            self._lost("the connection closed before CONNACK")
            return
        self._fd = sock.fileno()
        if not isinstance(sock, ssl.SSLSocket):
            # paho reads a packet a byte at a time: serve it from one recv per readable socket;
            # readings go out and their PUBACKs come in without paho (see publish)
            self._rbuf = _RecvBuffer(self.client)
            setattr(self.client, "_sock_recv", self._rbuf.recv)  # noqa: B010 - shadows paho's method
            self.fast = True
        self.loop.add_reader(self._fd, self._readable)
        self.wrote()
        self._misc = self.loop.call_later(1.0, self._tick)

    def detach(self) -> None:
        """Stop watching the socket (it is being closed) and stop the tick."""
        fd, self._fd = self._fd, None
        if fd is not None:
            self.loop.remove_reader(fd)
            if self._writing:
                self.loop.remove_writer(fd)
        self._writing = False
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None

    def wrote(self) -> None:
        """After publishing: paho wrote what the socket took; watch for room for the rest."""
        if self._fd is not None and not self._writing and (self._wbuf or self.client.want_write()):
            self._writing = True
            self.loop.add_writer(self._fd, self._writable)

    # readings without paho (plain sockets) ----------------------------------------------
    def publish(self, topic: bytes, payload: bytes, seq: int) -> None:
        """Frame one reading as a QoS 1 PUBLISH and queue it; every PUBLISH queued in one pass
        of the event loop goes out in one ``send`` (:meth:`_flush`).

        paho's ``publish`` costs a message object with its own lock, a packet dict and a
        ``send`` per message, and its PUBACK handling a reason-code and a properties object
        per acknowledgement: about a sixth of the gateway's CPU at 1,000 readings/s. The
        packet is MQTT's own (fixed header 0x32, the remaining length, the topic, the
        message id, no properties under MQTT 5, the payload); its PUBACK is read in
        :meth:`_take` with the same reason-code rule as :meth:`on_publish`. ``topic`` is the
        topic with its two-byte length in front. Message ids come from our own counter,
        from :data:`_FIRST_READING_MID` up, skipping any in flight: paho numbers the
        client's only other publishes (birth and ``offline``) 1 and 2.
        """
        mids = self.mids
        mid = self._mid
        for _ in range(65536):
            mid = mid + 1 if mid < 65535 else _FIRST_READING_MID
            if mid not in mids and mid not in self.control:
                break
        self._mid = mid
        props = self._props
        n = len(topic) + 2 + len(props) + len(payload)
        wbuf = self._wbuf
        if not wbuf:
            self._wbuf_since = self.loop.time()
        if n < 128:
            wbuf += bytes((0x32, n))
        elif n < 16384:
            wbuf += bytes((0x32, 0x80 | (n & 0x7F), n >> 7))
        else:
            wbuf.append(0x32)
            wbuf += _remaining_length(n)
        wbuf += topic
        wbuf += mid.to_bytes(2, "big")
        wbuf += props
        wbuf += payload
        mids[mid] = seq
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self._flush)

    def flush(self) -> None:
        """Write what :meth:`publish` queued now (see :meth:`_flush`)."""
        self._flush()

    def _flush(self) -> None:
        """Write what :meth:`publish` queued: one ``send`` for everything, the rest when the
        socket has room. Never while paho has bytes of its own half written (its packets and
        ours must not interleave on the wire)."""
        self._flush_due = False
        if self._fd is None or self.lost or not self._wbuf:
            return
        try:
            if not self.client.want_write():
                self._send_wbuf()
            self.wrote()
        except Exception as exc:
            self._failed("writing", exc)

    def _send_wbuf(self) -> None:
        sock = self.client.socket()
        if sock is None:
            raise ConnectionError("the MQTT socket is closed")
        try:
            n = sock.send(self._wbuf)
        except (BlockingIOError, InterruptedError):
            n = 0
        if n:
            del self._wbuf[:n]
            self._wbuf_since = self.loop.time()

    def _take(self, data: bytes) -> None:
        """Split what the socket gave into MQTT packets: a PUBACK of a reading is settled
        here (reason code < 0x80: delivered; ≥ 0x80: refused, as :meth:`on_publish` rules);
        every other packet (CONNACK, PINGRESP, the PUBACK of a status message, DISCONNECT)
        goes to paho, in the order it came."""
        buf = self._inbuf + data if self._inbuf else data
        end = len(buf)
        pos = 0
        mids = self.mids
        acked: list[int] = []
        rbuf = self._rbuf
        assert rbuf is not None
        while end - pos >= 2:
            # the remaining length: one to four bytes, seven bits each
            rl, shift, i, complete = 0, 0, pos + 1, False
            while i < end and i <= pos + 4:
                b = buf[i]
                i += 1
                rl |= (b & 0x7F) << shift
                if b < 0x80:
                    complete = True
                    break
                shift += 7
            if not complete:
                if i > pos + 4:
                    raise ValueError("malformed MQTT packet from the broker (remaining length over 4 bytes)")
                break                                  # the length itself is not complete yet
            total = i - pos + rl
            if end - pos < total:
                break                                  # the packet is not complete yet
            if buf[pos] == 0x40 and rl >= 2:           # PUBACK
                mid = (buf[i] << 8) | buf[i + 1]
                seq = mids.get(mid)
                if seq is not None:
                    code = buf[i + 2] if rl >= 3 else 0
                    if code < 0x80:
                        del mids[mid]
                        acked.append(seq)
                        pos += total
                        continue
                    if acked:
                        self.reporter.delivered(acked)     # what the broker took before this counts
                        acked = []
                    self._refused(mid, _puback_reason(code))
                    pos += total
                    if self.lost:
                        break
                    continue
            if acked:       # before paho sees the packet: it may end the session
                self.reporter.delivered(acked)
                acked = []
            rbuf.feed(buf[pos:pos + total])
            pos += total
            for _ in range(100):          # paho reads one packet per call at least
                if not rbuf.pending() or self._fd is None:
                    break
                if self.client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
            if self._fd is None:
                break
        self._inbuf = buf[pos:] if pos < end and not self.lost else b""
        if acked:
            self.reporter.delivered(acked)

    def _readable(self) -> None:
        client = self.client
        try:
            rbuf = self._rbuf
            if self.fast and rbuf is not None:
                sock = client.socket()
                if sock is None:
                    return
                try:
                    data = sock.recv(_RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    return
                if not data:               # the broker closed the connection: paho reports it
                    rbuf.feed(b"", closed=True)
                    client.loop_read()
                    return
                self._take(data)
                self.drain_acks()
                self.wrote()
                return
            client.loop_read()
            sock = client.socket()
            # TLS: records already decrypted in the SSL object do not make the socket readable.
            while isinstance(sock, ssl.SSLSocket) and sock.pending():
                client.loop_read()
                sock = client.socket()
            # Nor do bytes already read into our buffer (paho reads as many packets as it has
            # messages in flight; a PINGRESP besides them waits there). Each round consumes one
            # packet at least, or empties the buffer.
            rbuf = self._rbuf
            for _ in range(10_000):
                if rbuf is None or not rbuf.pending() or self._fd is None:
                    break
                client.loop_read()
            self.drain_acks()
            self.wrote()                   # anything paho queued while reading that the socket refused
        except Exception as exc:           # a paho failure must break the session, not leave it stuck
            self._failed("reading", exc)

    def _writable(self) -> None:
        try:
            client = self.client
            if client.want_write():
                client.loop_write()                # paho's own bytes first (they were queued first)
            if self._wbuf and self._fd is not None and not client.want_write():
                self._send_wbuf()
            if self._fd is not None and not self._wbuf and not client.want_write():
                self._writing = False
                self.loop.remove_writer(self._fd)
        except Exception as exc:
            self._failed("writing", exc)

    def _tick(self) -> None:
        self._misc = None
        if self._fd is None:
            return
        try:
            if not self._wbuf:
                self.client.loop_misc()    # PINGREQ when due; a missing PINGRESP drops the link
            elif self.loop.time() - self._wbuf_since > max(1.0, self.client.keepalive):
                # paho's PINGREQ must not cut into our half-written bytes, so it waits; a broker
                # that takes nothing for a whole keepalive is as dead as one that never answers
                raise ConnectionError("the broker took no bytes within the keepalive")
            self.drain_acks()
            self.wrote()                   # a PINGREQ the full socket refused waits for room
        except Exception as exc:
            self._failed("keeping the connection alive", exc)
        if self._fd is not None:
            self._misc = self.loop.call_later(1.0, self._tick)

    def _failed(self, doing: str, exc: Exception) -> None:
        log.warning("MQTT client failed while %s: %r; the session is dropped and resent from the cursor",
                    doing, exc)
        self._lost(f"the MQTT client failed while {doing}: {exc!r}")
        _close_socket(self.client)

    def shut(self) -> None:
        """End the session from our side: no loss is reported, nothing stays on the loop."""
        self.closing = True
        self.detach()
        if self._wbuf:        # a DISCONNECT must not land inside a half-written PUBLISH
            _close_socket(self.client)
        else:
            _dispose(self.client)

    @property
    def pending_bytes(self) -> int:
        """Bytes of readings framed here that the socket has not taken yet."""
        return len(self._wbuf)

    # acknowledgements and loss -----------------------------------------------------------
    def drain_acks(self) -> None:
        """Hand the PUBACKs collected so far to the reporter (one call per burst)."""
        if not self._acked:
            return
        mids, self._acked = self._acked, []
        seqs = []
        for mid in mids:
            seq = self.mids.pop(mid, None)
            if seq is not None:
                seqs.append(seq)
                continue
            waiter = self.control.pop(mid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if seqs:
            self.reporter.delivered(seqs)

    def _lost(self, reason: str) -> None:
        self.drain_acks()   # PUBACKs that arrived before the loss still count
        self.detach()
        if self.lost:
            return
        self.lost = True
        self.lost_reason = reason
        if not self.connack.done():
            self.connack.set_result((-1, reason))
        for waiter in self.control.values():
            if not waiter.done():
                waiter.set_result(None)
        if self.closing:
            return
        if self.refusal is not None:
            self.reporter.broken(SinkRefusedError(f"{self.refusal} (then it closed the connection)"))
        else:
            self.reporter.broken(SinkError(f"lost the connection to the MQTT broker: {reason}", "keep"))


class MqttSink:
    """Publishes committed messages to an MQTT broker (see the module docstring)."""

    name = "mqtt"
    open_proves_access = True
    probe_first = True

    def __init__(self, settings: MqttSettings, gateway_id: str, *, connect_timeout_s: float = 10.0,
                 page: int = 1000) -> None:
        self.settings = settings
        self.gateway_id = gateway_id
        self.window = max(1, settings.inflight)
        self.page = max(page, self.window)
        self.connect_timeout_s = connect_timeout_s
        self.client_id = settings.client_id or f"amr-{gateway_id}"
        self.base = f"{settings.topic_prefix}/{topic_level(gateway_id)}"
        self.status_topic = f"{self.base}/status"
        self._conn: _Connection | None = None
        self._ssl: ssl.SSLContext | None = None
        self._topics: dict[tuple[str | None, str], bytes] = {}   # (meter, kind) → length + topic

    def target(self) -> str:
        """``mqtt://host:port`` or ``mqtts://host:port``."""
        scheme = "mqtts" if self.settings.tls else "mqtt"
        return f"{scheme}://{self.settings.host}:{self.settings.port}"

    def topic_for(self, row: OutboxRow) -> str:
        """The topic a committed message is published on."""
        if row.kind == "customer_settlement":
            customer = _customer_of(row.payload)
            if customer is not None:
                return f"{self.base}/customers/{topic_level(customer)}/settlement"
        if row.meter is not None and row.kind != "kpi":
            return f"{self.base}/meters/{topic_level(row.meter)}/{topic_level(row.kind)}"
        return f"{self.base}/{topic_level(row.kind)}"

    # ------------------------------------------------------------------ connection
    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            s = self.settings
            try:
                ctx = ssl.create_default_context(cafile=s.ca_file)
                if s.cert_file is not None:
                    ctx.load_cert_chain(s.cert_file, s.key_file)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise SinkError(f"cannot set up MQTT TLS from ca_file={s.ca_file!r}, cert_file={s.cert_file!r}: "
                                f"{exc}; check the files and their permissions", "keep") from exc
            if s.tls_insecure:
                ctx.check_hostname = False
            self._ssl = ctx
        return self._ssl

    def _new_client(self, conn_holder: list[_Connection], reporter: Reporter) -> paho.Client:
        s = self.settings
        if s.protocol == "5":   # clean start, session expiry 0 (no properties): as clean_session
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                 protocol=paho.MQTTv5, reconnect_on_failure=False)
        else:
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True,
                                 protocol=paho.MQTTv311, reconnect_on_failure=False)
        paho_log = logging.getLogger("amr.sinks.paho")
        if paho_log.isEnabledFor(logging.DEBUG):
            # paho logs every connection loss at ERROR; our runner logs state changes once.
            client.enable_logger(paho_log)
        client.max_inflight_messages_set(0)     # the runner's window bounds it (module doc)
        client.max_queued_messages_set(0)
        client.connect_timeout = self.connect_timeout_s
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.tls:
            client.tls_set_context(self._ssl_context())
            if s.tls_insecure:
                client.tls_insecure_set(True)
        conn = _Connection(asyncio.get_running_loop(), client, reporter, self.base, self.client_id)
        conn_holder.append(conn)
        client.on_connect = conn.on_connect
        client.on_publish = conn.on_publish
        return client

    async def open(self, reporter: Reporter) -> None:
        """Connect, wait for CONNACK, publish the retained ``online`` birth message."""
        s = self.settings
        holder: list[_Connection] = []
        client = self._new_client(holder, reporter)
        conn = holder[0]
        loop = asyncio.get_running_loop()
        if s.protocol == "5":
            do_connect = functools.partial(client.connect, s.host, s.port, s.keepalive_s, clean_start=True)
        else:
            do_connect = functools.partial(client.connect, s.host, s.port, s.keepalive_s)
        connect = loop.run_in_executor(None, do_connect)
        try:
            rc = await asyncio.shield(connect)
        except asyncio.CancelledError:
            connect.add_done_callback(_dispose_when_connected(client))
            raise
        except (OSError, ssl.SSLError, ValueError) as exc:
            _dispose(client)
            raise SinkError(f"cannot connect to the MQTT broker {s.host}:{s.port}: {_describe(exc)}", "keep") \
                from exc
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:    # the CONNECT could not be written
            _dispose(client)
            raise SinkError(f"cannot connect to the MQTT broker {s.host}:{s.port}: {paho.error_string(rc)}",
                            "keep")
        conn.attach()
        self._conn = conn
        try:
            code, text = await asyncio.wait_for(asyncio.shield(conn.connack), self.connect_timeout_s)
        except TimeoutError:
            await self.close(False)
            raise SinkError(f"the MQTT broker {s.host}:{s.port} did not answer CONNECT within "
                            f"{self.connect_timeout_s:g} s", "keep") from None
        except asyncio.CancelledError:
            conn.shut()
            self._conn = None
            raise
        if code != 0:
            await self.close(False)
            if code in _AUTH_CODES:
                raise SinkAuthError(f"the MQTT broker {s.host}:{s.port} refused the login as "
                                    f"{s.username or '(anonymous)'}: {text}; check mqtt.username and the password")
            raise SinkError(f"the MQTT broker {s.host}:{s.port} refused the connection: {text}", "keep")
        # The broker's Receive Maximum bounds this session's window (the runner reads it after open).
        self.window = max(1, min(s.inflight, conn.receive_maximum or s.inflight))
        info = client.publish(self.status_topic, "online", qos=1, retain=True)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            await self.close(False)
            raise SinkError(f"cannot publish the birth message: {paho.error_string(info.rc)}", "keep")
        # Wait for the birth's PUBACK before any reading goes out: a broker that refuses it
        # (MQTT 5, reason ≥ 0x80) is shown as refused, and mosquitto, which then closes the
        # connection, finds no reading unread (see MqttSink.probe_first).
        birth: asyncio.Future[None] = loop.create_future()
        conn.control[info.mid] = birth
        conn.wrote()
        try:
            await asyncio.wait_for(asyncio.shield(birth), self.connect_timeout_s)
        except TimeoutError:
            await self.close(False)
            raise SinkError(f"the MQTT broker {s.host}:{s.port} did not acknowledge the birth message within "
                            f"{self.connect_timeout_s:g} s", "keep") from None
        except asyncio.CancelledError:
            conn.shut()
            self._conn = None
            raise
        if conn.refusal is not None or conn.lost:
            error = SinkRefusedError(conn.refusal) if conn.refusal is not None else SinkError(
                f"lost the connection to the MQTT broker: {conn.lost_reason}", "keep")
            await self.close(False)
            raise error

    def send(self, row: OutboxRow) -> None:
        """Publish one committed message at QoS 1; its PUBACK reports it delivered."""
        conn = self._conn
        if conn is None or conn.lost:
            return   # the session is broken; the runner resends from the cursor
        payload = row.payload.encode()     # rendered here, once (a compact row keeps no text)
        if conn.maximum_packet_size is not None and self._too_large(conn, row, payload):
            return
        if conn.fast:
            key = (row.meter, row.kind)
            topic = self._topics.get(key)
            if topic is None or row.kind == "customer_settlement":
                name = self.topic_for(row).encode()
                topic = len(name).to_bytes(2, "big") + name
                if row.kind != "customer_settlement":
                    if len(self._topics) >= 65536:
                        self._topics.clear()
                    self._topics[key] = topic
            conn.publish(topic, payload, row.seq)
            return
        info = conn.client.publish(self.topic_for(row), payload, qos=1, retain=False)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            conn.mids[info.mid] = row.seq
            conn.wrote()
        else:
            conn.lost = True
            conn.reporter.broken(SinkError(f"cannot publish to the MQTT broker: {paho.error_string(info.rc)}",
                                           "keep"))

    def _too_large(self, conn: _Connection, row: OutboxRow, payload: bytes) -> bool:
        """True, and the session refused, when ``row``'s PUBLISH exceeds the Maximum Packet
        Size the broker announced in its CONNACK (MQTT 5).

        A broker drops the connection on such a packet (mosquitto: "packet too large")
        without a PUBACK, so sending it would only reconnect in a loop while every reading
        behind it waits; refusing it here keeps the cursor before it, shows ``refused`` in
        health with the setting to change, and the runner retries with backoff.
        """
        limit = conn.maximum_packet_size
        assert limit is not None
        if len(payload) + _LONGEST_PUBLISH_HEAD <= limit:
            return False                # the common case: far below, no topic built
        size = publish_packet_size(len(self.topic_for(row).encode()), len(payload), len(conn._props))
        if size <= limit:
            return False
        conn.refuse(SinkRefusedError(
            f"the MQTT broker's maximum packet size is {limit} bytes and seq {row.seq} needs {size}; "
            "it is kept and retried: raise the broker's limit (mosquitto: max_packet_size) or read "
            "fewer points per reading on this meter's schedule"))
        return True

    def flush(self) -> None:
        """Write the readings framed in this pass of the loop now (they would go out at its
        end anyway); nothing else is buffered here."""
        conn = self._conn
        if conn is not None and conn.pending_bytes:
            conn.flush()

    async def close(self, graceful: bool) -> None:
        """Disconnect; on a graceful stop publish the retained ``offline`` first (bounded wait)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        client = conn.client
        try:
            if graceful and not conn.lost and not conn.pending_bytes:
                info = client.publish(self.status_topic, "offline", qos=1, retain=True)
                if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                    conn.control[info.mid] = waiter
                    conn.wrote()
                    conn.drain_acks()   # the PUBACK may already be in
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(waiter, 5.0)
        finally:   # also when cancelled during that wait: nothing of the session may stay on the loop
            conn.shut()


_RECV_SIZE = 65536
_FIRST_READING_MID = 3
"""Message ids below this are paho's: one client per connection publishes only its birth (1)
and, at a graceful stop, ``offline`` (2) through paho."""


def _puback_reason(code: int) -> ReasonCode:
    """paho's reason-code object for a PUBACK code. paho raises ValueError for a code it has
    no PUBACK name for, such as 0x95 (packet too large: mosquitto's answer to a payload over
    ``message_size_limit``): then the code as paho names it in a DISCONNECT, which keeps its
    value for the health text and hint; a code unknown there too is 0x80, said so."""
    for packet_type in (PacketTypes.PUBACK, PacketTypes.DISCONNECT):
        try:
            return ReasonCode(packet_type, identifier=code)
        except (KeyError, ValueError):
            continue
    log.debug("PUBACK reason code 0x%02X is not one paho knows; taken as 0x80", code)
    return ReasonCode(PacketTypes.PUBACK, identifier=0x80)


_LONGEST_PUBLISH_HEAD: Final = 1 + 4 + 2 + 65535 + 2 + 1
"""A PUBLISH's bytes besides its payload at most: fixed header, a topic of MQTT's longest, packet id, no properties."""


def publish_packet_size(topic_bytes: int, payload_bytes: int, properties_bytes: int) -> int:
    """The whole size of a QoS 1 PUBLISH (fixed header, topic with its length, packet id,
    properties, payload): what a broker's Maximum Packet Size is compared with."""
    n = 2 + topic_bytes + 2 + properties_bytes + payload_bytes
    return 1 + len(_remaining_length(n)) + n


def _remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer (the fixed header's remaining length)."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


class _RecvBuffer:
    """What paho reads, served from one ``recv`` of everything the socket holds.

    paho 2.x reads each packet with three or more ``recv`` calls (the command byte, each
    remaining-length byte, then the rest): three system calls per PUBACK, 1,000 PUBACKs a
    second at 1,000 readings/s. Installed as the client's ``_sock_recv`` for a plain socket
    (TLS keeps paho's own); the connection keeps reading while bytes are buffered.
    """

    __slots__ = ("client", "closed", "data", "fed", "pos")

    def __init__(self, client: paho.Client) -> None:
        self.client = client
        self.data = b""
        self.pos = 0
        self.fed = False
        self.closed = False

    def feed(self, data: bytes, closed: bool = False) -> None:
        """Serve ``data`` (packets the sink read itself and hands to paho); from now on an
        empty buffer is ``BlockingIOError`` (or ``b""`` once ``closed``), never a ``recv``
        of the socket, whose bytes the sink reads itself."""
        self.fed = True
        self.closed = self.closed or closed
        self.data = self.data[self.pos:] + data if self.pos < len(self.data) else data
        self.pos = 0

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes: from the buffer, else from one ``recv`` of the socket
        (``BlockingIOError`` when it has nothing, ``b""`` when the peer closed it)."""
        data, pos = self.data, self.pos
        if pos >= len(data):
            if self.fed:
                if self.closed:
                    return b""
                raise BlockingIOError("nothing fed")
            sock = self.client.socket()
            if sock is None:
                raise ConnectionError("the MQTT socket is closed")
            data = sock.recv(_RECV_SIZE)
            if not data:
                return data
            self.data, pos = data, 0
        end = pos + size
        self.pos = end
        return data[pos:end]

    def pending(self) -> bool:
        """Bytes read from the socket that paho has not taken yet."""
        return self.pos < len(self.data)


def _dispose(client: paho.Client) -> None:
    """Disconnect and close a client's socket (non-blocking: DISCONNECT is written at once when
    the socket takes it, and nothing waits)."""
    with contextlib.suppress(Exception):
        client.disconnect()
    _close_socket(client)


def _close_socket(client: paho.Client) -> None:
    """Close the client's socket if paho has not already."""
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(Exception):
            sock.close()


def _dispose_when_connected(client: paho.Client) -> Callable[[asyncio.Future[Any]], None]:
    """A done-callback for a ``connect`` whose caller was cancelled: close the client, and
    take the connect's own error so asyncio does not log it as never retrieved."""
    def done(fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled():
            fut.exception()
        _dispose(client)
    return done


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running and listening there?)"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc}); check ca_file, the client certificate and the broker's name"
    return str(exc) or type(exc).__name__
