"""The seam between the gateway core and a protocol driver: the types both sides share.

One driver instance owns one bus connection (a serial port, or one TCP endpoint). The
core's bus worker calls it one transaction at a time on serial buses. A driver raises the
errors of :mod:`gateway.errors` (``ReadTimeout``, ``FrameError``, ``DeviceException``,
``TransportError``) for a whole-read failure, and returns per-point ``PointResult`` with a
non-good quality when only some points failed. It never returns ``None`` to mean failure,
and it never swallows ``asyncio.CancelledError``.

What lives here and why it is drivers-side: drivers may import from ``gateway`` only the
shared types (``gateway.errors``, ``gateway.model``, ``gateway.clock``), so the bus
parameters a driver is built from (:class:`BusParams`; ``gateway.settings.BusSettings`` is
this class) and the small Protocols the core talks to are defined here, below both.

Capabilities are small Protocols, one per thing a meter can be asked beyond its points:
:class:`FreezeRecordReader` (settlement-day and daily freeze records),
:class:`ClockSetter` (broadcast time sync), :class:`EventCounterReader` and
:class:`EventRecordReader` (the meter's event counters and last event records). Reading a
meter's clock is not a capability of its own: it is the ``meter_clock`` point of a profile. A protocol
declares which of them it offers in its descriptor (:mod:`drivers.registry`); the core asks
the registry for a typed view of a driver, never ``hasattr``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from decimal import Decimal
from typing import Final, Literal, Protocol

from gateway.model import PointResult

BusType = Literal["serial", "tcp"]
"""What a bus is physically: an RS-485 serial line, or one TCP endpoint."""

Parity = Literal["N", "E", "O"]


@dataclass(frozen=True, slots=True)
class BusParams:
    """One bus: a serial line, or one TCP endpoint (itself a bus when it is a serial server).

    ``protocol`` is one of the names a protocol package serves (see :mod:`drivers.registry`);
    the configuration loader has checked it against the installed protocols. A protocol
    whose descriptor allows it may run ``concurrency`` transactions at once on a TCP bus;
    every other bus runs one transaction at a time (RS-485 is half-duplex with one master).
    """

    id: str
    type: BusType
    protocol: str
    port: str | None = None          # serial device path
    baudrate: int = 9600
    parity: Parity = "E"
    stopbits: int = 1
    bytesize: int = 8
    host: str | None = None          # tcp
    tcp_port: int | None = None      # tcp ("port" in YAML)
    timeout_s: float = 1.0
    retries: int = 1
    inter_frame_s: float | None = None   # None: protocol default (e.g. t3.5 on an RTU line)
    allow_writes: bool = False           # broadcast time sync etc.
    concurrency: int = 1
    dead_backoff_s: float = 60.0         # how long a dead meter is skipped between probes


class PointDef(Protocol):
    """What the core reads of a protocol's point definition (a register, a DI, an OAD ...).

    ``side`` is ``secondary`` when the meter reports the value before the CT/PT ratio, so
    the gateway multiplies it; ``unit`` is the canonical unit the value is in.
    """

    @property
    def name(self) -> str:
        """The canonical point name (``energy_import_kwh``) or a vendor extra (``x_*``)."""
        ...

    @property
    def unit(self) -> str:
        """The value's unit ("" for timestamps and power factor)."""
        ...

    @property
    def side(self) -> Literal["secondary", "primary"]:
        """Whether the CT/PT multiplier still applies (``secondary``) or not."""
        ...


class PlanOptions(Protocol):
    """A profile's protocol-specific plan settings (Modbus request limits, ...); opaque to the core."""


@dataclass(frozen=True, slots=True)
class NoPlanOptions:
    """The plan options of a profile whose protocol takes none (each compiler's defaults).

    Every instance equals every other, so settings compare equal after a pickle round trip.
    """


NO_PLAN_OPTIONS: Final = NoPlanOptions()
"""The one :class:`NoPlanOptions` instance."""


class ReadPlan(Protocol):
    """A compiled read plan: what the core may ask of any protocol's plan.

    Each protocol compiles its own concrete plan (pure, once at load) and its driver accepts
    only its own plans; the core only carries them from the compiler to the driver.
    """

    @property
    def request_count(self) -> int:
        """How many requests one execution costs (bounds the bus worker's outer deadline)."""
        ...


class MeterDriver(Protocol):
    """A protocol driver bound to one bus connection: the "read points" capability."""

    async def open(self) -> None:
        """Open the port/socket; safe to call again when already open."""
        ...

    async def close(self) -> None:
        """Close the port/socket; safe to repeat and safe after a failed open."""
        ...

    async def read(self, address: str, plan: ReadPlan, timeout: float) -> dict[str, PointResult]:
        """Execute a compiled read plan against the meter at ``address``.

        ``plan`` must come from the same protocol's compiler (a ConfigError otherwise).
        ``timeout`` is the per-request reply timeout in seconds. Retries are the caller's.
        """
        ...

    async def probe(self, address: str, timeout: float) -> bool:
        """Return True when something answers at ``address`` (used by ``scan``)."""
        ...


#: how a :class:`ChainedReader` reports a read: the results, or the error it failed with; both
#: None when the read could not go on without waiting (then it is the caller's to repeat)
ReadDone = Callable[["dict[str, PointResult] | None", "Exception | None"], None]


class ChainedReader(Protocol):
    """Capability: a read driven by the connection's own callbacks, no task per request.

    At a thousand meters a second the task wake-ups between a plan's requests cost more
    than decoding the replies; a driver that can chain its requests offers this beside
    :meth:`MeterDriver.read`, which stays the general way.
    """

    def start_read(self, address: str, plan: ReadPlan, timeout: float, done: ReadDone) -> bool:
        """Start reading ``plan`` at ``address``; False (nothing sent) when it cannot start at
        once. Once started, ``done`` is called exactly once (reply, error, timeout or close)."""
        ...


class FreezeRecordReader(Protocol):
    """Capability: the meter keeps freeze records (settlement-day and daily) to read back."""

    async def read_settlement(
        self, address: str, n: int = 1, timeout: float = 1.0, *, tz: tzinfo | None = None,
        stamps: dict[str, datetime] | None = None,
    ) -> tuple[datetime | None, dict[str, Decimal]]:
        """The registers frozen at the n-th previous settlement day, with that instant.

        ``stamps`` (when given) receives times that go with values: the period's maximum-demand
        time (``demand_max_kw``) and the start of the period it is over (``demand_period_start``).
        """
        ...

    async def read_daily_freeze(
        self, address: str, day: date, timeout: float = 1.0, *, tz: tzinfo | None = None,
        points: Collection[str] | None = None, stamps: dict[str, datetime] | None = None,
    ) -> tuple[datetime, dict[str, Decimal]]:
        """The daily freeze the meter took at the start of ``day``, with its freeze time."""
        ...


class ClockSetter(Protocol):
    """Capability: the meters of a bus can be told the time (a broadcast, no reply)."""

    async def broadcast_time_sync(self, local_time: datetime) -> None:
        """Set every meter's clock on the bus to ``local_time`` (meter local time)."""
        ...


#: The event stems a meter's counters and records are named by (``event_<stem>_count``,
#: ``event_<stem>_start`` ... as profile points, and in :class:`EventCounterReader`): what the
#: review's meter-event rule watches (DL/T 645-2007 class 03, DL/T 698.45 event objects).
EVENT_STEMS: Final = (
    "cover_open", "terminal_cover_open", "programming", "meter_clear", "demand_clear", "time_set",
    "voltage_loss_l1", "voltage_loss_l2", "voltage_loss_l3", "current_reversal", "power_down",
    "current_reversal_l1", "current_reversal_l2", "current_reversal_l3",
)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A meter's last record of one event: when it began and ended, and the registers it kept."""

    event: str                       # a stem of EVENT_STEMS
    start: datetime | None           # meter local time, as recorded
    end: datetime | None             # None while the event lasts (a cover still open)
    registers: dict[str, Decimal]    # canonical names (energy_import_kwh ...) at the event, as shown


class EventCounterReader(Protocol):
    """Capability: the meter counts events (cover open, programming, clear, clock set ...).

    How the gateway uses it (design rule, docs/billing-rules.md §2): read the counters every
    cycle; fetch the last record (:class:`EventRecordReader`) only when a counter increased.
    The review turns each increase into an event carrying that record
    (``gateway.review.meter_events``).
    """

    async def read_event_counters(self, address: str, timeout: float) -> dict[str, int]:
        """``event_<stem>_count`` (stems of :data:`EVENT_STEMS` the meter keeps) → how many times."""
        ...


class EventRecordReader(Protocol):
    """Capability: the meter keeps the last record of each event it counts."""

    async def read_event_record(self, address: str, event: str, timeout: float) -> EventRecord | None:
        """The last record of ``event`` (a stem of :data:`EVENT_STEMS`), or None when the meter keeps none."""
        ...
