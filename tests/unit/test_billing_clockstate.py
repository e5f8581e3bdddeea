"""The gateway clock's state (kernel NTP status, a check command) and the clock verdict on a
settlement read. The verdict tests inject the clock state: the kernel's NTP state cannot be
set by a test."""

from __future__ import annotations

from decimal import Decimal

from gateway.billing.capture import clock_verdict
from gateway.billing.clockstate import (
    MAXERROR_UNSYNC_US,
    STA_UNSYNC,
    GatewayClockState,
    clock_state_source,
    command_clock_state,
    kernel_clock_state,
    kernel_verdict,
    read_kernel_clock_state,
    simulated_clock_state,
)
from gateway.billing.settlement import Draft, RegisterValue
from gateway.settings import BillingPlan

SYNCED = GatewayClockState(True, "injected", "test: synchronized")
UNSYNCED = GatewayClockState(False, "injected", "test: STA_UNSYNC")
PLAN = BillingPlan("p", max_meter_offset_s=300.0)
REGS = {"energy_import_kwh": RegisterValue(Decimal(1), Decimal(1), "kWh")}


def test_kernel_verdict_reads_sta_unsync_and_maxerror() -> None:
    assert kernel_verdict(0x2001, 250_000)                       # PLL | nano, small maxerror
    assert not kernel_verdict(0x2001 | STA_UNSYNC, 250_000)
    assert not kernel_verdict(0x2001, MAXERROR_UNSYNC_US)         # the kernel's "undisciplined" maxerror


def test_the_kernel_state_is_read_and_consistent() -> None:
    st = read_kernel_clock_state()
    assert st.source == "kernel"
    if st.synchronized is not None:                              # adjtimex readable (it is, read-only, on Linux)
        assert st.maxerror_s is not None and st.maxerror_s >= 0
        assert st.synchronized == ("STA_UNSYNC" not in st.detail and st.maxerror_s < 16)


async def test_the_configured_source() -> None:
    assert (await clock_state_source(None, system_clock=False)()).source == "simulated"
    assert clock_state_source(None, system_clock=True) is kernel_clock_state
    assert (await simulated_clock_state()).synchronized is True
    ok = await command_clock_state("true")()
    bad = await command_clock_state("sh -c 'echo no GPS lock; exit 3'")()
    gone = await command_clock_state("/nonexistent/gps-locked")()
    assert (ok.synchronized, ok.source) == (True, "command")
    assert bad.synchronized is False and "exited 3: no GPS lock" in bad.detail
    assert gone.synchronized is None and "could not run" in gone.detail


def test_clock_verdict() -> None:
    live = Draft("actual", "live_read", REGS, read_at=0.0, meter_clock="2026-12-11T00:00:05",
                 meter_offset_s=Decimal("5.000"))
    ok = clock_verdict(live, SYNCED, PLAN)
    assert ok.flags == () and ok.gateway_clock == SYNCED.doc() and ok.reason is None

    unsynced = clock_verdict(live, UNSYNCED, PLAN)
    assert unsynced.flags == ("clock_unverified",)
    assert unsynced.reason == "clock_unverified: the gateway clock is not synchronized (test: STA_UNSYNC)"

    unknown = clock_verdict(live, GatewayClockState(None, "injected", "?"), PLAN)
    assert unknown.flags == ("clock_unverified",) and "of unknown state" in (unknown.reason or "")

    skewed = clock_verdict(Draft("meter_frozen", "daily_freeze", REGS, meter_offset_s=Decimal("-300.5")),
                           SYNCED, PLAN)
    assert skewed.flags == ("clock_unverified",) and "-300.5 s off" in (skewed.reason or "")
    edge = clock_verdict(Draft("meter_frozen", "daily_freeze", REGS, meter_offset_s=Decimal("300")), SYNCED, PLAN)
    assert edge.flags == ()

    unread = clock_verdict(Draft("late", "live_read", REGS, flags=("meter_clock_unread",)), SYNCED, PLAN)
    assert unread.flags == ("clock_unverified",) and "could not be read" in (unread.reason or "")

    missing = Draft("missing", "none", {})
    assert clock_verdict(missing, UNSYNCED, PLAN) is missing
