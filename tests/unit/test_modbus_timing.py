"""Serial timing formulas against the figures in docs/protocols/serial-timing.md."""

from __future__ import annotations

import pytest

from drivers.modbus.timing import char_bits, char_time, plan_cycle_s, read_cycle_s, t15, t35, wire_limit_reads_per_s
from drivers.transport import serial


def test_character_and_silence() -> None:
    assert char_bits("E", 1) == 11 and char_bits("N", 1) == 10 and char_bits("N", 2) == 11
    assert char_time(9600, "E") == pytest.approx(11 / 9600)
    assert t35(9600, "E") == pytest.approx(3.5 * 11 / 9600)
    assert t35(19200, "E") == pytest.approx(3.5 * 11 / 19200)
    assert t35(38400, "E") == 0.00175 and t35(115200, "N") == 0.00175
    assert t15(9600, "E") == pytest.approx(1.5 * 11 / 9600) and t15(38400) == 0.00075
    with pytest.raises(ValueError, match="positive"):
        char_time(0)


def test_the_character_time_is_the_serial_lines_own_with_one_and_a_half_stop_bits_kept() -> None:
    """Modbus timing takes Tc from the transport's char_time (one formula for the line): 8E1.5
    is 11.5 bits, not 11 or 12, in Tc, t1.5, t3.5 and a plan's cycle alike."""
    assert char_bits("E", 1.5) == 11.5 and char_bits("N", 1.5) == 10.5
    for baud, parity, stop in ((9600, "E", 1), (2400, "N", 2), (9600, "E", 1.5), (1200, "O", 1.5)):
        assert char_time(baud, parity, stop) == serial.char_time(baud, parity, stop)
    assert char_time(9600, "E", 1.5) == pytest.approx(11.5 / 9600)
    assert t35(9600, "E", 1.5) == pytest.approx(3.5 * 11.5 / 9600)
    assert t15(9600, "E", 1.5) == pytest.approx(1.5 * 11.5 / 9600)
    assert plan_cycle_s(9600, "E", 1.5, 8, [20]) == pytest.approx((13 + 40) * 11.5 / 9600 + 2 * 3.5 * 11.5 / 9600)
    assert t35(38400, "E", 1.5) == 0.00175                        # fixed timers above 19200 baud
    with pytest.raises(ValueError, match="positive"):           # the line clamps 0 baud; a formula refuses it
        t35(0, "E", 1.5)


def test_cycle_of_the_issue_example() -> None:
    assert read_cycle_s(9600, "E", 20) == pytest.approx(0.06875, abs=1e-6)


@pytest.mark.parametrize(
    ("baud", "td", "row"),
    [
        (2400, 0, (9.1, 3.6, 1.6, 0.8)),
        (9600, 0, (36.4, 14.5, 6.2, 3.4)),
        (9600, 0.010, (26.7, 12.7, 5.9, 3.2)),
        (19200, 0, (72.7, 29.1, 12.5, 6.7)),
        (38400, 0, (119.5, 53.5, 24.0, 13.2)),
        (38400, 0.010, (54.4, 34.9, 19.4, 11.6)),
        (115200, 0, (195.2, 116.8, 61.7, 36.2)),
    ],
)
def test_wire_limit_table(baud: int, td: float, row: tuple[float, ...]) -> None:
    got = tuple(round(wire_limit_reads_per_s(baud, "E", n, td), 1) for n in (2, 20, 60, 120))
    assert got == row
