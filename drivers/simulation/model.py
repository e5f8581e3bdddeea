"""A deterministic meter: every value is a pure function of simulated time.

Why pure: tests and billing checks must be able to compute *the simulator's true register*
at any instant exactly, without replaying history (stage consumption is compared to
register differences at boundaries; DL/T 645 daily freezes are ``values_at(local 00:00)``).
:class:`MeterModel` keeps no state that changes its answers, only caches that make them
cheap (``values_at`` for 10,000 meters per second is a benchmark case).

Load curve
----------
Time is cut into 15-minute slots on UTC epoch multiples of 900 s (every time zone's offset
is a multiple of 15 minutes, so slots are also local quarter hours). Within a slot the
active power is constant; per slot the meter's *secondary* (displayed) import energy
``e`` is an integer number of energy units (1 unit = 1e-8 kWh, always a multiple of 100,
i.e. 1e-6 kWh), derived from:

* a shared industrial two-shift daily shape (:data:`DAILY_SHAPE`, per local hour),
* a per-meter factor (0.7–1.3 × ``base_kw``), a per-meter shift of the shape by 0–3
  slots and a per-meter noise pattern (±6 %) per slot of the day,
* 0.7 × on Saturdays and Sundays, and 0.4 × on public holidays when the model is given a
  holiday calendar (``holidays=CN_HOLIDAYS``: New Year, Spring Festival, Labour Day, National
  Day; off by default so the registers of existing fixtures stay what they are),
* ÷ ``multiplier`` (CT × PT): the meter shows secondary values.

Every weekday therefore has the same slot energies, as does every weekend day (days of a
daylight-saving change have their own structure). This is what makes the cumulative
register closed form: ``E(day n start) = Σ_daytype count(daytype before n) × D(daytype)``.

Registers
---------
Per slot: import ``e``; export ``e × x / 100`` (``x`` = 0–3 %, per meter: a little
back-feed inside a slot); reactive import/export = active × ``k / 100`` with ``k`` the
per-meter tan φ in hundredths (all exact integers). The slot's energy goes to the tariff
register of the slot's local hour (:data:`TARIFF_TABLE`). Within the running slot the
register grows linearly. Each tariff register is quantised *down* to 0.01 (a display
register); the total is the exact sum of the quantised tariffs, so ``total == Σ tariffs``
always and every register is monotonic non-decreasing in ``t``. At ``epoch`` the
registers hold seeded initial values (1,000–26,000 kWh import).

Instantaneous values: ``power_kw`` is the running slot's average net power (exactly
``(e_imp − e_exp) × 4`` units per hour, so energy and power agree exactly),
``power_kw_l1..l3`` a seeded per-meter split summing to the total, ``power_kvar`` =
reactive net power, ``power_factor`` = cos φ; voltages are 220 V nominal (57.7 V secondary
when ``pt > 1``) ± 1.5 % per slot, currents follow from P / (U × PF), frequency 50 Hz ±
0.05. ``demand_max_kw`` is the highest 15-minute import demand in completed slots since
the start of the local calendar month; :meth:`MeterModel.demand_at` gives it with its time
(the end of the first slot that reached it) and :meth:`MeterModel.max_demand` the same over
any period (a settlement-day demand record).

Reactive energy by quadrant (``energy_q1_kvarh`` … ``energy_q4_kvarh``, for the power-factor
adjustment): outside the valley hours the load is lagging with the meter's tan φ (import
reactive → Q1, export → Q2); in the valley hours (tariff 4) capacitor banks over-compensate,
leading with a per-meter 5–15 % (import → Q4, export → Q3). Each is a display register
quantised down to 0.01 kvarh from seeded initial values. The combined reactive registers
``energy_import_kvarh`` / ``energy_export_kvarh`` keep their own definition (all import /
export reactive at tan φ) so existing fixtures keep their values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from itertools import accumulate
from typing import ClassVar, Final
from zoneinfo import ZoneInfo

from drivers.simulation.faults import FaultSet

SLOT_S: Final = 900
UNITS_PER_KWH: Final = 10**8          # 1 unit = 1e-8 kWh
_STEP: Final = 100                    # slot energies are multiples of 1e-6 kWh
_DISPLAY: Final = 10**6               # units per 0.01 kWh (display resolution)
_MASK64: Final = (1 << 64) - 1

#: Tariff by local hour: 1 sharp 尖, 2 peak 峰, 3 flat 平, 4 valley 谷.
#: 00–08 valley · 08–10 flat · 10–11 sharp · 11–12 peak · 12–17 flat · 17–19 peak ·
#: 19–21 sharp · 21–23 flat · 23–24 valley (a typical provincial time-of-use table).
TARIFF_TABLE: Final[tuple[int, ...]] = (
    4, 4, 4, 4, 4, 4, 4, 4,   # 00–08
    3, 3,                     # 08–10
    1,                        # 10–11
    2,                        # 11–12
    3, 3, 3, 3, 3,            # 12–17
    2, 2,                     # 17–19
    1, 1,                     # 19–21
    3, 3,                     # 21–23
    4,                        # 23–24
)

#: Relative load per local hour (industrial, two shifts), multiplied by ``base_kw``.
DAILY_SHAPE: Final[tuple[float, ...]] = (
    0.45, 0.42, 0.40, 0.40, 0.42, 0.48, 0.60, 0.80, 0.95, 1.00, 1.02, 1.00,
    0.85, 0.95, 1.00, 1.00, 0.98, 0.95, 0.90, 0.85, 0.75, 0.65, 0.55, 0.50,
)

ENERGY_POINTS: Final[tuple[str, ...]] = (
    *(f"{base}{suffix}" for base in ("energy_import_kwh", "energy_export_kwh")
      for suffix in ("", "_t1", "_t2", "_t3", "_t4")),
    "energy_import_kvarh", "energy_export_kvarh",
    "energy_q1_kvarh", "energy_q2_kvarh", "energy_q3_kvarh", "energy_q4_kvarh",
)

#: Every point :meth:`MeterModel.values_at` returns.
MODEL_POINTS: Final[tuple[str, ...]] = (
    *ENERGY_POINTS, "demand_max_kw", "power_kw", "power_kw_l1", "power_kw_l2", "power_kw_l3",
    "power_kvar", "power_factor", "voltage_v_l1", "voltage_v_l2", "voltage_v_l3",
    "current_a_l1", "current_a_l2", "current_a_l3", "frequency_hz",
)

_E3: Final = Decimal("0.001")
_E6: Final = Decimal("0.000001")
_IMP_T: Final = tuple(f"energy_import_kwh_t{k}" for k in range(1, 5))
_EXP_T: Final = tuple(f"energy_export_kwh_t{k}" for k in range(1, 5))
_PHASES: Final = ((1, "voltage_v_l1", "current_a_l1"), (2, "voltage_v_l2", "current_a_l2"),
                  (3, "voltage_v_l3", "current_a_l3"))


def mix64(*values: int) -> int:
    """A stable 64-bit hash of integers (splitmix64 chain), identical on every platform."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h


def _unit_interval(h: int) -> float:
    """Map a 64-bit hash to [0, 1)."""
    return (h >> 11) / float(1 << 53)


#: Chinese public holidays 2025–2028 (the week-long ones as the State Council announced or, for
#: later years, as they usually fall): (month, day) ranges by year. unverified for 2027–2028.
CN_HOLIDAYS: Final[frozenset[date]] = frozenset(
    date(y, m, d0) + timedelta(days=k)
    for y, spans in {
        2025: ((1, 1, 1), (1, 28, 8), (5, 1, 5), (10, 1, 8)),
        2026: ((1, 1, 3), (2, 15, 9), (5, 1, 5), (10, 1, 7)),
        2027: ((1, 1, 3), (2, 5, 8), (5, 1, 5), (10, 1, 7)),
        2028: ((1, 1, 3), (1, 25, 8), (5, 1, 5), (10, 1, 7)),
    }.items()
    for m, d0, n in spans
    for k in range(n)
)

_NOISE_BANKS: Final = 256
_noise_bank: dict[tuple[int, bool], tuple[float, ...]] = {}


def _noise(pattern: int, weekend: bool) -> tuple[float, ...]:
    """One of 256 shared per-slot noise patterns (±6 %), so meters build curves cheaply."""
    key = (pattern, weekend)
    row = _noise_bank.get(key)
    if row is None:
        row = _noise_bank[key] = tuple(
            1 + 0.12 * (_unit_interval(mix64(pattern, q, weekend)) - 0.5) for q in range(96))
    return row


def _kwh(units: int) -> Decimal:
    """Units (1e-8 kWh) quantised down to a 0.01 display register."""
    return Decimal(units // _DISPLAY).scaleb(-2)


@dataclass(frozen=True, slots=True)
class _Day:
    """One local calendar day of a zone: where it starts and which quarter hours it has."""

    start: float
    end: float
    qs: tuple[int, ...]        # quarter hour of the local day (0..95) of each slot
    kind: tuple[object, ...]   # day type: (weekend,) or (weekend, qs) for DST days


class _ZoneCalendar:
    """Shared per (time zone, anchor date): day starts, day types and their running counts.

    Day index 0 is the anchor (the local date of a model's epoch). Built lazily in both
    directions; one calendar serves every meter with the same zone and epoch.
    """

    _cache: ClassVar[dict[tuple[str, date, frozenset[date]], _ZoneCalendar]] = {}

    @classmethod
    def get(cls, tz: str, anchor: date, holidays: frozenset[date] = frozenset()) -> _ZoneCalendar:
        """Return the shared calendar for ``tz`` anchored at ``anchor``."""
        key = (tz, anchor, holidays)
        cal = cls._cache.get(key)
        if cal is None:
            cal = cls._cache[key] = cls(tz, anchor, holidays)
        return cal

    def __init__(self, tz: str, anchor: date, holidays: frozenset[date] = frozenset()) -> None:
        self.zone = ZoneInfo(tz)
        self.anchor = anchor
        self.holidays = holidays
        self._days: dict[int, _Day] = {}
        # counts[n] = {kind: number of days of that kind in [0, n)} for n >= 0,
        # and {kind: -number in [n, 0)} for n < 0, so C(n) = Σ counts[n][k] × D(k).
        self._counts_pos: list[dict[tuple[object, ...], int]] = [{}]
        self._counts_neg: list[dict[tuple[object, ...], int]] = [{}]

    def day(self, n: int) -> _Day:
        """The local day with index ``n`` (0 = anchor)."""
        d = self._days.get(n)
        if d is None:
            local = self.anchor + timedelta(days=n)
            start = datetime(local.year, local.month, local.day, tzinfo=self.zone).timestamp()
            nxt = local + timedelta(days=1)
            end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=self.zone).timestamp()
            weekend: bool | str = "holiday" if local in self.holidays else local.weekday() >= 5
            count = round((end - start) / SLOT_S)
            if count == 96:
                qs = tuple(range(96))
                kind: tuple[object, ...] = (weekend,)
            else:
                qs = tuple(self._quarter(start + i * SLOT_S) for i in range(count))
                kind = (weekend, qs)
            d = self._days[n] = _Day(start, end, qs, kind)
        return d

    def _quarter(self, t: float) -> int:
        """Local quarter hour of the day (0..95) at epoch ``t``."""
        lt = datetime.fromtimestamp(t, self.zone)
        return lt.hour * 4 + lt.minute // 15

    def index_of(self, t: float) -> int:
        """Index of the local day containing epoch ``t``."""
        local = datetime.fromtimestamp(t, self.zone).date()
        n = (local - self.anchor).days
        # Guard against a local-midnight edge case in zones with midnight DST changes.
        while t < self.day(n).start:
            n -= 1
        while t >= self.day(n).end:
            n += 1
        return n

    def counts(self, n: int) -> dict[tuple[object, ...], int]:
        """Signed counts of day kinds between the anchor and day ``n`` (see class doc)."""
        if n >= 0:
            pos = self._counts_pos
            while len(pos) <= n:
                i = len(pos) - 1
                c = dict(pos[i])
                k = self.day(i).kind
                c[k] = c.get(k, 0) + 1
                pos.append(c)
            return pos[n]
        neg = self._counts_neg
        while len(neg) <= -n:
            i = len(neg)            # day index -i gets added
            c = dict(neg[i - 1])
            k = self.day(-i).kind
            c[k] = c.get(k, 0) - 1
            neg.append(c)
        return neg[-n]


@dataclass(frozen=True, slots=True)
class _DayCurve:
    """One meter's slot energies for one day type, with per-tariff prefix sums."""

    imp: tuple[int, ...]
    exp: tuple[int, ...]
    tariff: tuple[int, ...]                  # 0..3 (tariff - 1)
    prefix: tuple[tuple[int, ...], ...]      # per register (4 import, 4 export): sums before slot i
    total: tuple[int, ...]                   # 4 import + 4 export sums for the whole day
    prefix_max: tuple[int, ...]              # max import slot energy in slots before slot i
    day_max: int


class MeterModel:
    """A simulated meter whose every register is a pure function of time ``t`` (UTC epoch s).

    ``multiplier`` is the installation's CT × PT: the meter displays secondary-side values
    (primary ÷ multiplier) so the gateway's value = register × CT × PT. Give ``ct`` and
    ``pt`` separately to get secondary voltages (÷ PT) and currents (÷ CT) right; with
    only ``multiplier`` the PT is taken as 1 and the CT as the multiplier.
    """

    def __init__(
        self,
        seed: int,
        *,
        base_kw: float = 40.0,
        multiplier: Decimal = Decimal(1),
        timezone: str = "Asia/Shanghai",
        epoch: float = 1767225600.0,
        ct: Decimal | None = None,
        pt: Decimal | None = None,
        holidays: frozenset[date] = frozenset(),
    ) -> None:
        multiplier = Decimal(multiplier)
        if ct is None and pt is None:
            ct, pt = multiplier, Decimal(1)
        else:
            ct = Decimal(1) if ct is None else Decimal(ct)
            pt = Decimal(1) if pt is None else Decimal(pt)
            if multiplier != 1 and multiplier != ct * pt:
                raise ValueError(
                    f"multiplier {multiplier} disagrees with ct {ct} × pt {pt}; give one or the other")
        if ct <= 0 or pt <= 0:
            raise ValueError("ct and pt must be positive")
        if base_kw < 0:
            raise ValueError("base_kw must not be negative")
        self.seed = int(seed)
        self.base_kw = float(base_kw)
        self.ct = ct
        self.pt = pt
        self.multiplier = ct * pt
        self.timezone = timezone
        self.epoch = float(epoch)
        self._zone = ZoneInfo(timezone)
        anchor = datetime.fromtimestamp(self.epoch, self._zone).date()
        self._cal = _ZoneCalendar.get(timezone, anchor, frozenset(holidays))

        s = self.seed
        self._factor = 0.7 + 0.6 * _unit_interval(mix64(s, 1))
        self._shift = mix64(s, 2) % 4
        self._noise_key = mix64(s, 3) % _NOISE_BANKS
        self._export_pct = mix64(s, 4) % 4                      # 0..3 % back-feed
        self._tan_pct = 20 + mix64(s, 5) % 36                   # tan φ 0.20..0.55
        self._pf = Decimal(1 / math.sqrt(1 + (self._tan_pct / 100) ** 2)).quantize(_E3)
        a = 0.30 + 0.06 * _unit_interval(mix64(s, 6))
        b = 0.30 + 0.06 * _unit_interval(mix64(s, 7))
        self._share = (Decimal(repr(round(a, 4))), Decimal(repr(round(b, 4))))
        self._v_nominal = 220.0 if pt == 1 else 57.735
        self._sec_kw = self.base_kw * self._factor / float(self.multiplier)
        # Initial registers at ``epoch`` (units), per tariff, import then export.
        self._init = tuple(
            ((mix64(s, 10 + k) % 600_000) + 25_000) * _DISPLAY if k < 4
            else (mix64(s, 10 + k) % 50_000) * _DISPLAY
            for k in range(8)
        )
        self._qinit = (
            (mix64(s, 20) % 1_000_000) * _DISPLAY,
            (mix64(s, 21) % 100_000) * _DISPLAY,
        )
        #: Quadrant reactive registers Q1..Q4 at ``epoch`` (units), and the leading tan φ (in
        #: hundredths, 5..15) of the valley hours, when capacitor banks over-compensate.
        self._quad_init = tuple((mix64(s, 22 + k) % 200_000) * _DISPLAY for k in range(4))
        self._cap_pct = 5 + mix64(s, 8) % 11
        self._curves: dict[tuple[object, ...], _DayCurve] = {}
        self._cached_day: tuple[int, _Day, _DayCurve, tuple[int, ...]] | None = None
        self._month_max: dict[int, int] = {}
        self._origin = self._energy_units(self.epoch)
        #: faults switched on (tests, demo): see drivers.simulation.faults
        self.faults = FaultSet()

    # --- public API ----------------------------------------------------------------------

    def tariff_at(self, t: float) -> int:
        """Tariff in force at ``t``: 1 sharp, 2 peak, 3 flat, 4 valley (see TARIFF_TABLE)."""
        return TARIFF_TABLE[datetime.fromtimestamp(t, self._zone).hour]

    def set_fault(self, name: str, t: float, amount: Decimal | float | None = None) -> None:
        """Switch a fault on at simulated time ``t`` (see :mod:`drivers.simulation.faults`)."""
        self.faults.set(name, t, self._healthy_at, amount)

    def clear_fault(self, name: str, t: float) -> None:
        """Switch a fault off at simulated time ``t`` (its event records stay)."""
        self.faults.clear(name, t, self._healthy_at)

    def events_at(self, t: float) -> dict[str, Decimal | str]:
        """The meter's event counters and last records at ``t`` (``event_<stem>_count`` …)."""
        return self.faults.events_at(t, self._zone)

    def values_at(self, t: float) -> dict[str, Decimal]:
        """Every canonical point as the meter shows it (secondary side) at epoch ``t``.

        A pure function of ``t`` while no fault is on; a fault changes it from its start.
        """
        out = self._healthy_at(t)
        if self.faults.on or self.faults.offsets:
            out = self.faults.apply(t, out)
        return out

    def _healthy_at(self, t: float) -> dict[str, Decimal]:
        """The healthy meter's values at ``t`` (no fault applied)."""
        n, day, curve, base = self._day_state(t)
        i = int((t - day.start) // SLOT_S)
        if i >= len(curve.imp):
            i = len(curve.imp) - 1
        frac = (t - day.start - i * SLOT_S) / SLOT_S
        pre = [col[i] for col in curve.prefix]
        tk = curve.tariff[i]
        e_imp = curve.imp[i]
        e_exp = curve.exp[i]
        p_imp = int(e_imp * frac)
        p_exp = int(e_exp * frac)
        origin = self._origin
        init = self._init
        out: dict[str, Decimal] = {}
        total_imp = total_exp = 0
        raw_imp = raw_exp = 0
        val_imp = val_exp = 0
        for k in range(4):
            ui = init[k] + base[k] + pre[k] - origin[k] + (p_imp if k == tk else 0)
            ue = init[4 + k] + base[4 + k] + pre[4 + k] - origin[4 + k] + (p_exp if k == tk else 0)
            raw_imp += ui - init[k]
            raw_exp += ue - init[4 + k]
            if k == 3:
                val_imp, val_exp = ui - init[k], ue - init[4 + k]
            qi = ui // _DISPLAY
            qe = ue // _DISPLAY
            total_imp += qi
            total_exp += qe
            out[_IMP_T[k]] = Decimal(qi).scaleb(-2)
            out[_EXP_T[k]] = Decimal(qe).scaleb(-2)
        out["energy_import_kwh"] = Decimal(total_imp).scaleb(-2)
        out["energy_export_kwh"] = Decimal(total_exp).scaleb(-2)
        tan = self._tan_pct
        out["energy_import_kvarh"] = _kwh(self._qinit[0] + raw_imp * tan // 100)
        out["energy_export_kvarh"] = _kwh(self._qinit[1] + raw_exp * tan // 100)
        # Quadrants: outside the valley hours the load is lagging (import → Q1, export → Q2),
        # in the valley hours leading (import → Q4, export → Q3); see the module docstring.
        cap, quad = self._cap_pct, self._quad_init
        out["energy_q1_kvarh"] = _kwh(quad[0] + (raw_imp - val_imp) * tan // 100)
        out["energy_q2_kvarh"] = _kwh(quad[1] + (raw_exp - val_exp) * tan // 100)
        out["energy_q3_kvarh"] = _kwh(quad[2] + val_exp * cap // 100)
        out["energy_q4_kvarh"] = _kwh(quad[3] + val_imp * cap // 100)
        out["demand_max_kw"] = Decimal(4 * self._demand_units(n, day, curve, i)).scaleb(-8)

        net = e_imp - e_exp
        p = Decimal(4 * net).scaleb(-8)                          # kW, exact
        q = Decimal(4 * net * tan // 100).scaleb(-8)
        p1 = (p * self._share[0]).quantize(_E6)
        p2 = (p * self._share[1]).quantize(_E6)
        p3 = p - p1 - p2
        out["power_kw"] = p
        out["power_kw_l1"] = p1
        out["power_kw_l2"] = p2
        out["power_kw_l3"] = p3
        out["power_kvar"] = q
        pf = self._pf
        out["power_factor"] = pf
        slot = int(t // SLOT_S)
        s = self.seed
        vn = self._v_nominal
        for (ph, vname, iname), pw in zip(_PHASES, (p1, p2, p3), strict=True):
            v = vn * (1 + 0.03 * (_unit_interval(mix64(s, slot, ph)) - 0.5))
            vd = Decimal(repr(round(v, 1)))
            out[vname] = vd
            out[iname] = (abs(pw) * 1000 / (vd * pf)).quantize(_E3)
        f = 50 + 0.1 * (_unit_interval(mix64(s, slot, 9)) - 0.5)
        out["frequency_hz"] = Decimal(repr(round(f, 2)))
        return out

    def max_demand(self, lo: float, hi: float) -> tuple[Decimal, float | None]:
        """The highest 15-minute import demand (kW, secondary) over the slots inside ``[lo, hi)``.

        Returns (kW, epoch of the end of the first slot that reached it); (0, None) when no
        slot lies wholly inside. A later slot replaces the maximum only when strictly greater
        (as a meter does), so the time is the *first* occurrence. This is the meter's true
        demand of a period: a DL/T 645 simulator's current register is
        ``max_demand(last reset, now)`` and its settlement-day record
        ``max_demand(previous reset, reset)``.
        """
        best = 0
        best_end: float | None = None
        if hi <= lo:
            return Decimal(0), None
        first = self._cal.index_of(lo)
        last = self._cal.index_of(max(lo, hi - 1e-6))
        for n in range(first, last + 1):
            day = self._cal.day(n)
            curve = self._curve(day)
            count = len(curve.imp)
            i0 = 0 if lo <= day.start else -int(-(lo - day.start) // SLOT_S)      # first slot starting >= lo
            i1 = count if hi >= day.end else int((hi - day.start) // SLOT_S)       # slots ending <= hi
            if i0 >= i1:
                continue
            if i0 == 0 and i1 == count:
                top = curve.day_max
                if top <= best:
                    continue
                idx = curve.imp.index(top)
            else:
                part = curve.imp[i0:i1]
                top = max(part)
                if top <= best:
                    continue
                idx = i0 + part.index(top)
            best, best_end = top, day.start + (idx + 1) * SLOT_S
        return Decimal(4 * best).scaleb(-8), best_end

    def demand_at(self, t: float) -> tuple[Decimal, float | None]:
        """``demand_max_kw`` of :meth:`values_at` (since the local month start) with its time."""
        lt = datetime.fromtimestamp(t, self._zone)
        month = datetime(lt.year, lt.month, 1, tzinfo=self._zone).timestamp()
        return self.max_demand(month, t)

    def frozen_daily(self, day: date) -> dict[str, Decimal]:
        """The registers a meter freezes at local 00:00 of ``day`` (DL/T 645 daily freeze)."""
        start = datetime(day.year, day.month, day.day, tzinfo=self._zone).timestamp()
        return self.values_at(start)

    def local_midnight(self, day: date) -> float:
        """Epoch seconds of local 00:00 of ``day`` in this meter's time zone."""
        return datetime(day.year, day.month, day.day, tzinfo=self._zone).timestamp()

    # --- internals -----------------------------------------------------------------------

    def _curve(self, day: _Day) -> _DayCurve:
        """This meter's slot energies for the day type of ``day`` (cached per type)."""
        c = self._curves.get(day.kind)
        if c is not None:
            return c
        weekend = bool(day.kind[0])
        level = 0.4 if day.kind[0] == "holiday" else 0.7 if weekend else 1.0
        scale = self._sec_kw * level * 0.25 * UNITS_PER_KWH / _STEP
        shift = self._shift
        noise = _noise(self._noise_key, weekend)
        shape = DAILY_SHAPE
        imp = [round(scale * shape[((q - shift) % 96) // 4] * noise[q]) * _STEP for q in day.qs]
        tariff = [TARIFF_TABLE[q // 4] - 1 for q in day.qs]
        x = self._export_pct
        exp = [e * x // 100 for e in imp]
        cols: list[tuple[int, ...]] = []
        masks = [[1 if tk == k else 0 for tk in tariff] for k in range(4)]
        for src in (imp, exp):
            for mask in masks:
                cols.append(tuple(accumulate(
                    [e * m for e, m in zip(src, mask, strict=True)], initial=0)))
        pmax = tuple(accumulate(imp, max, initial=0))
        c = _DayCurve(tuple(imp), tuple(exp), tuple(tariff), tuple(cols),
                      tuple(col[-1] for col in cols), pmax, pmax[-1])
        self._curves[day.kind] = c
        return c

    def _base(self, n: int) -> tuple[int, ...]:
        """Cumulative per-register units from the anchor day's start to day ``n``'s start."""
        acc = [0] * 8
        for kind, count in self._cal.counts(n).items():
            if not count:
                continue
            tot = self._curve_for_kind(kind).total
            for k in range(8):
                acc[k] += count * tot[k]
        return tuple(acc)

    def _curve_for_kind(self, kind: tuple[object, ...]) -> _DayCurve:
        """The curve of a day kind (built from a representative day if not cached yet)."""
        c = self._curves.get(kind)
        if c is not None:
            return c
        if len(kind) == 1:
            qs: tuple[int, ...] = tuple(range(96))
        else:
            qs = kind[1]  # type: ignore[assignment]
        return self._curve(_Day(0.0, 0.0, qs, kind))

    def _day_state(self, t: float) -> tuple[int, _Day, _DayCurve, tuple[int, ...]]:
        """(day index, day, curve, cumulative base) for ``t``; the last day is cached."""
        st = self._cached_day
        if st is not None and st[1].start <= t < st[1].end:
            return st
        n = self._cal.index_of(t)
        day = self._cal.day(n)
        st = (n, day, self._curve(day), self._base(n))
        self._cached_day = st
        return st

    def _energy_units(self, t: float) -> tuple[int, ...]:
        """Units accumulated per register from the anchor day's start to ``t``."""
        n = self._cal.index_of(t)
        day = self._cal.day(n)
        curve = self._curve(day)
        base = self._base(n)
        i = min(int((t - day.start) // SLOT_S), len(curve.imp) - 1)
        frac = (t - day.start - i * SLOT_S) / SLOT_S
        pre = [col[i] for col in curve.prefix]
        tk = curve.tariff[i]
        out = [base[k] + pre[k] for k in range(8)]
        out[tk] += int(curve.imp[i] * frac)
        out[4 + tk] += int(curve.exp[i] * frac)
        return tuple(out)

    def _demand_units(self, n: int, day: _Day, curve: _DayCurve, i: int) -> int:
        """Highest import slot energy among completed slots since the local month start."""
        before = self._month_max.get(n)
        if before is None:
            local = self._cal.anchor + timedelta(days=n)
            first = n - (local.day - 1)
            before = 0
            for kind in {self._cal.day(m).kind for m in range(first, n)}:
                before = max(before, self._curve_for_kind(kind).day_max)
            if len(self._month_max) > 4:
                self._month_max.clear()
            self._month_max[n] = before
        return max(before, curve.prefix_max[i])
