"""Review rules reviewers of large customers apply before billing (docs/billing-rules.md §6).

===================== ==============================================================
event                 raised when
===================== ==============================================================
zero_consumption      the judged register stood still for ``zero_window_s`` while the
                      meter answers, and the customer was active before (mean use over
                      up to ``zero_history_days`` ≥ ``zero_active_floor_kwh_per_day``, and
                      at that rate the window would show ``zero_min_display_steps`` steps)
reverse_energy        on a consumer meter the export register advanced, over a window of
                      ``reverse_window_s``, more than ``reverse_min_kwh`` and more than
                      ``reverse_fraction_of_import`` × the import plus two display steps
tariff_sum_mismatch   |Σ tariff registers − total| > display step × number of tariffs ×
                      ``tariff_sum_steps_per_tariff`` (import and export separately); where
                      the profile states the total's capacity, the difference is taken
                      modulo it (a 6-digit total that rolled over, or a tariff register
                      that did, still agrees with its tariffs)
demand_over_contract  maximum demand > contract capacity × ``demand_contract_factor``
low_power_factor      a period's ΔkWh ÷ √(ΔkWh² + Δkvarh²) below the customer's reference (a
                      period runs on until ΔkWh is ``low_pf_min_display_steps`` steps)
===================== ==============================================================

Same shape as :mod:`gateway.review.rules` (pure, one event per condition, exact numbers, a
clear when the condition ends); the thresholds a customer or meter overrides reach these
functions already resolved (:meth:`ReviewThresholds.for_meter`).
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Final

from gateway.review.rules import (
    EnergyInterval,
    MeterContext,
    MeterState,
    Observation,
    RegisterValue,
    RuleEvent,
    is_raised,
    iso,
    normal_cycle,
    raise_condition,
)
from gateway.review_thresholds import ReviewThresholds

_ZERO: Final = Decimal(0)
_DAY_S: Final = 86400.0
_TARIFFS: Final = ("_t1", "_t2", "_t3", "_t4")
_TARIFF_NAMES: Final = tuple((total, tuple(total + t for t in _TARIFFS))
                             for total in ("energy_import_kwh", "energy_export_kwh"))
_STEPS: dict[int, Decimal] = {}


def _raw_step(reg: RegisterValue) -> Decimal:
    """One display step of the register as shown (0.01 for XXXXXX.XX)."""
    exponent = reg.raw.as_tuple().exponent
    if not isinstance(exponent, int):
        return Decimal("0.01")
    step = _STEPS.get(exponent)
    if step is None:
        step = Decimal(1).scaleb(exponent)
        if len(_STEPS) < 64:
            _STEPS[exponent] = step
    return step


def _secs(a: float, b: float) -> Decimal:
    return Decimal(repr(round(b - a, 3)))


def zero_consumption(
    state: MeterState, obs: Observation, iv: EnergyInterval | None, ctx: MeterContext, th: ReviewThresholds
) -> list[RuleEvent]:
    """An active customer consumes nothing over the window while the meter answers.

    Activity is the mean daily use before the standstill began, from daily marks of the
    judged register, so a long standstill never argues itself inactive.
    """
    out: list[RuleEvent] = []
    name = th.energy_register
    reg = obs.registers.get(name)
    if reg is None:
        return out
    marks = state.day_marks
    if not marks or obs.ts - marks[-1][0] >= _DAY_S:
        marks.append((obs.ts, reg.value))
        horizon = obs.ts - (th.zero_history_days + th.zero_window_s / _DAY_S + 1) * _DAY_S
        while len(marks) > 2 and marks[0][0] < horizon:
            marks.pop(0)
        state.dirty = True
    if iv is None or iv.delta < 0:
        return out
    if iv.delta > 0:
        if ("zero_consumption", name) in state.active:      # is_raised, inline (hot)
            normal_cycle(state, out, "zero_consumption", name, obs.ts, 1,
                         f"meter {obs.meter} consumes again ({iv.delta} kWh since {iso(iv.start.ts)})",
                         {"register": name, **iv.evidence()})
        return out
    ref = state.stopped_ref or iv.start
    still_s = obs.ts - ref.ts
    if still_s + 1e-6 < th.zero_window_s:
        return out
    before = [(t, v) for t, v in marks if t <= ref.ts + 1e-6]
    if len(before) < 2:
        return out
    start = next(((t, v) for t, v in before if ref.ts - t <= th.zero_history_days * _DAY_S), before[-2])
    days = Decimal(repr(round((ref.ts - start[0]) / _DAY_S, 4)))
    if days < 1:
        return out
    used = ref.reg.value - start[1]
    per_day = used / days
    expected = per_day * Decimal(repr(th.zero_window_s)) / Decimal(86400)
    if per_day < th.zero_active_floor_kwh_per_day or expected < th.zero_min_display_steps * reg.step:
        return out
    raise_condition(
        state, out, "zero_consumption", name, obs.ts,
        f"meter {obs.meter} answers but {name} stayed at {reg.value} for {round(still_s / 3600, 1)} h; "
        f"the customer used {per_day:.1f} kWh/day before",
        {
            "register": name, "register_value": reg.value, "unchanged_since": iso(ref.ts),
            "unchanged_s": _secs(ref.ts, obs.ts), "window_s": Decimal(repr(th.zero_window_s)),
            "history_from": iso(start[0]), "history_register_from": start[1],
            "history_register_to": ref.reg.value, "history_days": days,
            "history_kwh_per_day": per_day.quantize(Decimal("0.001")),
            "active_floor_kwh_per_day": th.zero_active_floor_kwh_per_day,
            "register_step": reg.step, "min_display_steps": th.zero_min_display_steps,
            "arithmetic": "history_kwh_per_day = (history_register_to − history_register_from) ÷ history_days",
        },
    )
    return out


def reverse_energy(
    state: MeterState, obs: Observation, iv: EnergyInterval | None, ctx: MeterContext, th: ReviewThresholds
) -> list[RuleEvent]:
    """Reverse active energy advancing on a consumer meter, judged per window."""
    out: list[RuleEvent] = []
    imp = obs.registers.get("energy_import_kwh")
    exp = obs.registers.get("energy_export_kwh")
    if not th.consumer or imp is None or exp is None:
        return out
    ref = state.reverse_ref
    if ref is None or obs.ts < ref[0] or exp.value < ref[2] or imp.value < ref[1]:
        state.reverse_ref = (obs.ts, imp.value, exp.value)
        state.dirty = True
        return out
    if obs.ts - ref[0] + 1e-6 < th.reverse_window_s:
        return out
    d_imp = imp.value - ref[1]
    d_exp = exp.value - ref[2]
    limit = max(th.reverse_min_kwh, th.reverse_fraction_of_import * d_imp + 2 * exp.step)
    ev: dict[str, object] = {
        "register": "energy_export_kwh", "from": iso(ref[0]), "to": iso(obs.ts),
        "export_from": ref[2], "export_to": exp.value, "export_kwh": d_exp,
        "import_from": ref[1], "import_to": imp.value, "import_kwh": d_imp,
        "min_kwh": th.reverse_min_kwh, "fraction_of_import": th.reverse_fraction_of_import,
        "register_step": exp.step, "limit_kwh": limit,
        "arithmetic": "limit_kwh = max(min_kwh, fraction_of_import × import_kwh + 2 × register_step)",
    }
    state.reverse_ref = (obs.ts, imp.value, exp.value)
    state.dirty = True
    if d_exp > limit:
        raise_condition(state, out, "reverse_energy", "", obs.ts,
                        f"consumer meter {obs.meter} exported {d_exp} kWh from {iso(ref[0])} "
                        f"(import {d_imp} kWh; limit {limit:.2f} kWh)", ev)
    else:
        normal_cycle(state, out, "reverse_energy", "", obs.ts, th.clear_after_normal_cycles,
                     f"meter {obs.meter} no longer exports beyond {limit:.2f} kWh per window", ev)
    return out


def tariff_sum_mismatch(
    state: MeterState, obs: Observation, iv: EnergyInterval | None, ctx: MeterContext, th: ReviewThresholds
) -> list[RuleEvent]:
    """Σ tariff registers differs from the total by more than rounding explains.

    Runs on every reading, so the evidence is built only when an event may come of it
    (a mismatch, or a raised condition counting normal readings).
    """
    out: list[RuleEvent] = []
    registers = obs.registers
    active = state.active
    for total_name, tariff_names in _TARIFF_NAMES:
        total = registers.get(total_name)
        if total is None:
            continue
        psum = _ZERO
        tariffs = 0
        for n in tariff_names:          # Σ in tariff order from 0, as sum() adds
            p = registers.get(n)
            if p is not None:
                psum = psum + p.raw
                tariffs += 1
        if not tariffs:
            continue
        diff = total.raw - psum
        raised = ("tariff_sum_mismatch", total_name) in active      # is_raised, inline: every reading
        if not diff and not raised and th.tariff_sum_steps_per_tariff >= 0:
            continue            # the parts add up exactly: within any tolerance, no step needed
        present = [p for n in tariff_names if (p := registers.get(n)) is not None]
        step = max(_raw_step(r) for r in (total, *present))
        tolerance = step * len(present) * th.tariff_sum_steps_per_tariff
        modulus = ctx.capacities.get(total_name)
        if modulus is not None:
            # the registers wrap at 10^digits: a total past 999999.99 shows Σ tariffs − 10^6
            diff -= modulus * (diff / modulus).to_integral_value(ROUND_HALF_EVEN)
        mismatch = abs(diff) > tolerance
        if not mismatch and not raised:
            continue
        ev: dict[str, object] = {
            "register": total_name, "total_raw": total.raw, "tariffs_raw": {
                n: p.raw for n in tariff_names if (p := registers.get(n)) is not None},
            "sum_raw": psum, "difference_raw": diff, "register_step_raw": step, "tariffs": len(present),
            "steps_per_tariff": th.tariff_sum_steps_per_tariff, "tolerance_raw": tolerance,
            "arithmetic": "tolerance_raw = register_step_raw × tariffs × steps_per_tariff",
        }
        if modulus is not None:
            ev["capacity_raw"] = modulus
        if mismatch:
            raise_condition(state, out, "tariff_sum_mismatch", total_name, obs.ts,
                            f"meter {obs.meter}: tariff registers sum to {psum}, total {total_name} "
                            f"shows {total.raw} (difference {diff}, tolerance {tolerance})", ev)
        else:
            normal_cycle(state, out, "tariff_sum_mismatch", total_name, obs.ts, th.clear_after_normal_cycles,
                         f"meter {obs.meter}'s tariff registers add up to {total_name} again", ev)
    return out


def demand_over_contract(
    state: MeterState, obs: Observation, iv: EnergyInterval | None, ctx: MeterContext, th: ReviewThresholds
) -> list[RuleEvent]:
    """Maximum demand above contract capacity × factor (needs ``contract_kw``)."""
    out: list[RuleEvent] = []
    demand = obs.values.get(th.demand_point)
    if th.contract_kw is None or demand is None:
        return out
    limit = th.contract_kw * th.demand_contract_factor
    ev: dict[str, object] = {
        "demand_point": th.demand_point, "demand_kw": demand, "contract_kw": th.contract_kw,
        "factor": th.demand_contract_factor, "limit_kw": limit, "read_at": iso(obs.ts),
        "arithmetic": "limit_kw = contract_kw × factor",
    }
    if demand > limit:
        raise_condition(state, out, "demand_over_contract", "", obs.ts,
                        f"meter {obs.meter}'s maximum demand {demand} kW is above the contract "
                        f"{th.contract_kw} kW × {th.demand_contract_factor}", ev)
    elif is_raised(state, "demand_over_contract", ""):
        normal_cycle(state, out, "demand_over_contract", "", obs.ts, th.clear_after_normal_cycles,
                     f"meter {obs.meter}'s maximum demand {demand} kW is within the contract again", ev)
    return out


def low_power_factor(
    state: MeterState, obs: Observation, iv: EnergyInterval | None, ctx: MeterContext, th: ReviewThresholds
) -> list[RuleEvent]:
    """A period's power factor (from energies) below the customer's reference."""
    out: list[RuleEvent] = []
    if th.power_factor_reference is None:
        return out
    p = obs.registers.get(th.energy_register)
    q = obs.registers.get(th.reactive_register)
    if p is None or q is None:
        return out
    ref = state.pf_ref
    if ref is None or obs.ts < ref[0] or p.value < ref[1] or q.value < ref[2]:
        state.pf_ref = (obs.ts, p.value, q.value)
        state.dirty = True
        return out
    if obs.ts - ref[0] + 1e-6 < th.low_pf_period_s:
        return out
    dp, dq = p.value - ref[1], q.value - ref[2]
    if dp < th.low_pf_min_kwh or dp < th.low_pf_min_display_steps * p.step:
        return out          # too little energy yet for the registers' rounding: the period runs on
    state.pf_ref = (obs.ts, p.value, q.value)
    state.dirty = True
    pf = (dp / (dp * dp + dq * dq).sqrt()).quantize(Decimal("0.0001"))
    ev: dict[str, object] = {
        "from": iso(ref[0]), "to": iso(obs.ts), "active_kwh": dp, "reactive_kvarh": dq,
        "power_factor": pf, "reference": th.power_factor_reference, "min_kwh": th.low_pf_min_kwh,
        "arithmetic": "power_factor = active_kwh ÷ √(active_kwh² + reactive_kvarh²)",
    }
    if pf < th.power_factor_reference:
        raise_condition(state, out, "low_power_factor", "", obs.ts,
                        f"meter {obs.meter}'s power factor from {iso(ref[0])} was {pf}, below the "
                        f"reference {th.power_factor_reference}", ev)
    else:
        normal_cycle(state, out, "low_power_factor", "", obs.ts, 1,
                     f"meter {obs.meter}'s power factor is {pf} again (reference {th.power_factor_reference})", ev)
    return out
