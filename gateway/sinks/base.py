"""The seam between the delivery loop and a sink, and the small pieces both sides share.

A :class:`Sink` is a *windowed, acknowledging* transport: the runner hands it committed rows
one by one in ``seq`` order (:meth:`Sink.send`, never more than :attr:`Sink.window` rows
unacknowledged), and the sink reports, on the event loop's thread, what became of them
through the :class:`Reporter` it was opened with:

* ``delivered(seqs)`` — the peer acknowledged them (MQTT PUBACK, InfluxDB 2xx);
* ``rejected(seqs, reason)`` — the peer will never take them (InfluxDB 400/422, or a
  single line still too large after splitting): the cursor passes them, they are counted;
* ``broken(error)`` — the connection or the batch failed with a
  :class:`~gateway.errors.SinkError` whose ``action`` says keep or throttle: everything not
  yet acknowledged is resent from the durable cursor on the next session. A peer that
  answers a write with a refusal it may lift (an MQTT 5 PUBACK ≥ 0x80, such as an ACL
  denial) breaks the session with :class:`SinkRefusedError`: refused is never delivered.

MQTT streams (one PUBLISH per row, PUBACKs come back asynchronously); InfluxDB batches
(rows gather into a write of ``batch_size`` lines or ``batch_age`` seconds). Both fit the
same seam, so the cursor rule lives in one place (:class:`AckTracker`): the cursor moves to
the highest seq below which *everything* was delivered or rejected.
"""

from __future__ import annotations

import random
import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from gateway.errors import SinkError
from gateway.store import OutboxRow

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact_credentials(text: str) -> str:
    """``text`` with the user and password of every URL in it replaced by ``***``.

    Sink targets and peer errors are shown in health, metrics and logs; a URL such as
    ``http://user:secret@tsdb:8086`` must never carry its secret there.
    """
    return _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)


class SinkAuthError(SinkError):
    """The peer refused our credentials (MQTT CONNACK 4/5, HTTP 401/403): kept, retried slowly,
    and shown as ``auth_failed`` in health, so an expired token is visible, not silent."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "keep")


class SinkRefusedError(SinkError):
    """The peer answered a write with a refusal that is not final for the data (MQTT 5 PUBACK
    reason code ≥ 0x80: not authorized, topic name invalid, payload format invalid, …):
    nothing is delivered, the cursor stays, the session is dropped and retried with backoff,
    and health shows ``refused`` with the reason until a write goes through again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "keep")


class Reporter(Protocol):
    """What a sink tells the runner; called on the event loop's thread only."""

    def delivered(self, seqs: Iterable[int]) -> None:
        """The peer acknowledged these seqs."""
        ...

    def rejected(self, seqs: Sequence[int], reason: str) -> None:
        """The peer refused these seqs for good; the cursor passes them."""
        ...

    def broken(self, error: SinkError) -> None:
        """The session failed; unacknowledged rows will be resent from the cursor."""
        ...


class Sink(Protocol):
    """A transport to one peer (see the module docstring for the contract)."""

    name: str
    """The cursor's name in the store (``mqtt``, ``influxdb``)."""

    window: int
    """Rows handed over and not yet acknowledged, at most."""

    page: int
    """Rows to read from the store at a time."""

    open_proves_access: bool
    """True when a successful :meth:`open` proves the peer takes our writes (MQTT: CONNACK
    accepted the login). False for InfluxDB, where ``/ping`` answers without a token: after
    ``auth_failed`` or ``throttled`` the sink shows ``connected`` only once a write succeeds.
    After ``refused`` no open proves anything (an MQTT broker accepts the login and still
    denies the topic): the sink shows ``connected`` again only once its cursor moves."""

    probe_first: bool
    """True when each session hands over one row and waits for its acknowledgement before
    filling the window. MQTT: mosquitto 2.0 closes the connection right after a PUBACK that
    refuses a publish, and if more publishes are then unread on its side the close is a TCP
    reset that can discard that PUBACK on ours; with one row in flight the refusal (or the
    first success) is always read. Costs one round trip per session."""

    def target(self) -> str:
        """Where the sink delivers to, for health and logs (no secrets)."""
        ...

    async def open(self, reporter: Reporter) -> None:
        """Connect; raise :class:`SinkError` (keep/throttle) when the peer cannot be used."""
        ...

    def send(self, row: OutboxRow) -> None:
        """Hand over one row (in seq order); never blocks, outcomes go to the reporter."""
        ...

    def flush(self) -> None:
        """Send whatever is buffered now instead of waiting for the batch age."""
        ...

    async def close(self, graceful: bool) -> None:
        """Disconnect; ``graceful`` is a planned stop (MQTT: publish ``offline`` first)."""
        ...


class AckTracker:
    """The contiguous-acknowledgement rule: cursor = highest seq with nothing unacked below.

    Rows are registered with :meth:`sent` in increasing seq order; :meth:`done` marks some
    as delivered or rejected, in any order. Unknown seqs (from an earlier session) are
    ignored, so a late PUBACK can never move the cursor past a row that was not delivered.
    """

    __slots__ = ("_done", "_outstanding", "cursor")

    def __init__(self, cursor: int) -> None:
        self.cursor = cursor
        self._outstanding: deque[int] = deque()
        self._done: set[int] = set()

    def sent(self, seq: int) -> None:
        """Register a row as handed to the sink (seqs must increase)."""
        if self._outstanding and seq <= self._outstanding[-1]:
            raise ValueError(f"seq {seq} sent out of order after {self._outstanding[-1]}")
        self._outstanding.append(seq)

    def done(self, seqs: Iterable[int]) -> int:
        """Mark seqs acknowledged; returns how many were newly marked (the cursor may move)."""
        out = self._outstanding
        if not out:
            return 0
        tail = out[-1]
        marked = 0
        done = self._done
        for s in seqs:
            if not out:
                break                   # all acknowledged: the rest are repeats or unknown
            first = out[0]
            if s == first and not done:
                # the usual acknowledgement: the oldest row, nothing acknowledged ahead of it
                # (PUBACKs come in order, an InfluxDB batch in seq order): the cursor moves at once
                out.popleft()
                self.cursor = s
                marked += 1
            elif first <= s <= tail and s not in done:
                done.add(s)
                marked += 1
        while out and out[0] in self._done:
            s = out.popleft()
            self._done.discard(s)
            self.cursor = s
        return marked

    @property
    def outstanding(self) -> int:
        """Rows sent and not yet covered by the cursor."""
        return len(self._outstanding)

    @property
    def last_sent(self) -> int:
        """The highest seq handed over in this session (the cursor when none is)."""
        return self._outstanding[-1] if self._outstanding else self.cursor


class Backoff:
    """Jittered exponential backoff: ``base × 2ⁿ`` capped at ``cap``, each delay scaled by a
    random factor in [0.5, 1.0) so a fleet of gateways does not reconnect in lockstep after a
    head-end outage."""

    def __init__(self, base: float = 0.5, cap: float = 15.0, rng: Callable[[], float] = random.random) -> None:
        self.base = base
        self.cap = cap
        self._rng = rng
        self._n = 0

    def next(self) -> float:
        """The next delay in seconds (grows until :meth:`reset`)."""
        delay = min(self.cap, self.base * (2.0 ** min(self._n, 30)))
        self._n += 1
        return delay * (0.5 + 0.5 * self._rng())

    def reset(self) -> None:
        """Start again from ``base`` (after a session that worked)."""
        self._n = 0

    @property
    def attempts(self) -> int:
        """Delays handed out since the last reset."""
        return self._n
