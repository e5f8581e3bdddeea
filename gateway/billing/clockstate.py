"""Whether the gateway's own clock can be trusted at a settlement boundary.

A boundary reading is only as good as the clock that says it was taken at the boundary. The
gateway asks, at every settlement attempt, one of:

* the **kernel's NTP state** (the default): ``adjtimex(2)`` read-only (``modes = 0``), as
  chrony, ntpd and systemd-timesyncd leave it. The clock is synchronized when the
  ``STA_UNSYNC`` status bit is clear and the kernel's ``maxerror`` is below 16 s (the
  kernel raises it to 16 s when no daemon disciplines the clock);
* a **command** (``gateway.clock_check_command``) for boxes whose time comes from GPS or an
  IRIG-B (B-code) receiver the kernel does not know about: exit status 0 means synchronized,
  anything else (or a command that cannot run or takes more than 10 s) means not.

Tests inject a :data:`ClockStateSource` of their own: the kernel's NTP state cannot be set by
a test (it needs CAP_SYS_TIME and would change the machine's clock discipline).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

STA_UNSYNC: Final = 0x0040
"""``adjtimex`` status bit: the clock is not synchronized (include/uapi/linux/timex.h)."""
MAXERROR_UNSYNC_US: Final = 16_000_000
"""``maxerror`` the kernel reports for an undisciplined clock (NTP_PHASE_LIMIT, µs)."""
COMMAND_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class GatewayClockState:
    """The gateway clock's state at one moment: synchronized (None: could not tell), how we know."""

    synchronized: bool | None
    source: str                      # kernel | command | simulated | injected
    detail: str = ""
    maxerror_s: Decimal | None = None

    def doc(self) -> dict[str, object]:
        """JSON-ready form (stored with every settlement reading)."""
        out: dict[str, object] = {"synchronized": self.synchronized, "source": self.source, "detail": self.detail}
        if self.maxerror_s is not None:
            out["maxerror_s"] = self.maxerror_s
        return out


ClockStateSource = Callable[[], Awaitable[GatewayClockState]]
"""Where the capture asks for the gateway clock's state (the kernel, a command, or a test)."""


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """``struct timex`` of Linux (include/uapi/linux/timex.h), with its trailing padding."""

    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
        ("time", _Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long), ("shift", ctypes.c_int), ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int), ("_pad", ctypes.c_int * 11),
    ]


def kernel_verdict(status: int, maxerror_us: int) -> bool:
    """Synchronized by the kernel's NTP status word and maximum error (pure)."""
    return not status & STA_UNSYNC and maxerror_us < MAXERROR_UNSYNC_US


def read_kernel_clock_state() -> GatewayClockState:
    """The kernel's NTP state through ``adjtimex`` (read only); unknown when it cannot be read."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()
        tx.modes = 0
        rc = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError) as exc:
        return GatewayClockState(None, "kernel", f"adjtimex unavailable: {exc}")
    if rc < 0:
        return GatewayClockState(None, "kernel", f"adjtimex failed (errno {ctypes.get_errno()})")
    ok = kernel_verdict(int(tx.status), int(tx.maxerror))
    maxerror = Decimal(int(tx.maxerror)) / Decimal(1_000_000)
    detail = (f"kernel NTP status 0x{int(tx.status):04x}"
              f"{' (STA_UNSYNC)' if tx.status & STA_UNSYNC else ''}, maxerror {maxerror} s")
    return GatewayClockState(ok, "kernel", detail, maxerror)


async def kernel_clock_state() -> GatewayClockState:
    """:func:`read_kernel_clock_state` as a :data:`ClockStateSource`."""
    return read_kernel_clock_state()


def command_clock_state(command: str) -> ClockStateSource:
    """A source that runs ``command`` (no shell; split like a shell would): exit 0 = synchronized."""
    argv = shlex.split(command)

    async def check() -> GatewayClockState:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT)
        except OSError as exc:
            return GatewayClockState(None, "command", f"{command!r} could not run: {exc}")
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return GatewayClockState(None, "command", f"{command!r} took more than {COMMAND_TIMEOUT_S:g} s")
        text = out.decode("utf-8", "replace").strip()[:200]
        rc = proc.returncode
        return GatewayClockState(rc == 0, "command", f"{command!r} exited {rc}" + (f": {text}" if text else ""))

    return check


async def simulated_clock_state() -> GatewayClockState:
    """The state of a simulated (rehearsal, test) clock: it *is* the time, so synchronized."""
    return GatewayClockState(True, "simulated", "the gateway runs on a simulated clock")


def clock_state_source(command: str | None, system_clock: bool) -> ClockStateSource:
    """The configured source: the command when ``gateway.clock_check_command`` is set, else the
    kernel when the gateway runs on the system clock, else :func:`simulated_clock_state` (the
    kernel's NTP state says nothing about a rehearsal's accelerated clock)."""
    if command:
        return command_clock_state(command)
    return kernel_clock_state if system_clock else simulated_clock_state


__all__ = [
    "MAXERROR_UNSYNC_US",
    "STA_UNSYNC",
    "ClockStateSource",
    "GatewayClockState",
    "clock_state_source",
    "command_clock_state",
    "kernel_clock_state",
    "kernel_verdict",
    "read_kernel_clock_state",
    "simulated_clock_state",
]
