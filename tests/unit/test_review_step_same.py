"""display_step (a unit table per exponent, the factor passed in) against the
RegisterValue.step it replaced, kept here verbatim as the reference: for any raw and value
the two give the same Decimal, exponent included (it is shown in the evidence). Pure
functions, so no peer: hypothesis draws the registers.
"""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.review.rules import RegisterValue, display_step, factor_taken


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
@given(raw=_RAW, factor=_FACTOR, value=st.one_of(st.none(), _DECIMALS))
def test_display_step_is_the_old_step(raw: Decimal, factor: Decimal, value: Decimal | None) -> None:
    """The step energy_interval now computes from the factor it already has, and the step
    property, are the old property's Decimal (value, sign and exponent) for any register."""
    v = raw * factor if value is None else value
    want = reference_step(raw, v)
    got_property = RegisterValue(raw, v).step
    got_interval = display_step(raw, factor_taken(RegisterValue(raw, v)))
    for got in (got_property, got_interval):
        assert (got, got.as_tuple()) == (want, want.as_tuple())
