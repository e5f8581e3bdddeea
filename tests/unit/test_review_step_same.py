"""display_step (a unit table per exponent, the factor passed in) against the
RegisterValue.step it replaced, kept here verbatim as the reference: for any raw and value
the two give the same Decimal, exponent included (it is shown in the evidence). Pure
functions, so no peer: hypothesis draws the registers.
"""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.review.rules import RegisterValue, display_step, factor_taken, seconds_between


def reference_step(raw: Decimal, value: Decimal) -> Decimal:
    """RegisterValue.step as it was before the unit table (main at c0fcac4), verbatim."""
    exponent = raw.as_tuple().exponent
    unit = Decimal(1).scaleb(exponent) if isinstance(exponent, int) else Decimal("0.01")
    factor = value / raw if raw != 0 else Decimal(1)
    return unit * factor


_DECIMALS = st.decimals(allow_nan=False, allow_infinity=False, min_value=-10**9, max_value=10**9, places=None)
_RAW = st.one_of(st.integers(-10**7, 10**7).map(lambda n: Decimal(n).scaleb(-2)),
                 st.integers(-10**6, 10**6).map(Decimal), st.just(Decimal("0.00")), _DECIMALS)
_FACTOR = st.sampled_from([Decimal(1), Decimal("1.0"), Decimal(40), Decimal("0.5"), Decimal("1200.000")])


@settings(max_examples=400, deadline=None)
@given(raw=_RAW, factor=_FACTOR, value=st.one_of(st.none(), st.just("raw"), _DECIMALS))
def test_display_step_is_the_old_step(raw: Decimal, factor: Decimal, value: Decimal | str | None) -> None:
    """The step energy_interval now computes from the factor it already has, and the step
    property, are the old property's Decimal (value, sign and exponent) for any register,
    also one whose value is its raw itself (a CT × PT of 1: the factor is taken as 1)."""
    v = raw * factor if value is None else raw if value == "raw" else value
    assert isinstance(v, Decimal)
    want = reference_step(raw, v)
    got_property = RegisterValue(raw, v).step
    got_interval = display_step(raw, factor_taken(RegisterValue(raw, v)))
    for got in (got_property, got_interval):
        assert (got, got.as_tuple()) == (want, want.as_tuple())
    assert repr(factor_taken(RegisterValue(raw, v))) == repr(v / raw if raw != 0 else None)


_LENGTHS = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, 900.0, 0.0004, 0.0005, 0.0015, -0.0004, 1.0004999, 899.9996, -1.0]),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=400, deadline=None)
@given(start=st.one_of(st.just(1_796_000_000.004), st.floats(min_value=-1e10, max_value=2e9, allow_nan=False)),
       length=_LENGTHS)
def test_seconds_between_is_the_old_seconds(start: float, length: float) -> None:
    """The interval length from its cache (by difference, then by rounded difference) is the
    Decimal(repr(round(end − start, 3))) energy_interval made every time, sign and exponent
    included, the first time and from the cache."""
    end = start + length
    want = Decimal(repr(round(end - start, 3)))
    for _ in range(2):
        got = seconds_between(start, end)
        assert (str(got), got.as_tuple()) == (str(want), want.as_tuple())
