"""``bench/fleet_baseline.py --prime-malloc``: receive-sized blocks come from the heap.

The bare loop of ``bench/tcp_fleet.py`` is the yardstick of issue 16's CPU ratio; without
priming, each of its 256 KiB receive buffers is a fresh memory map (bench/README.md, "The
bare loop's kernel time"). glibc's ``mallinfo2().hblks`` counts the blocks held as maps, so
a fresh interpreter tells both states apart without tracing system calls.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import fleet_baseline

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import ctypes, sys
from bench import fleet_baseline

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "prime":
    fleet_baseline.prime_malloc()
before = libc.mallinfo2().hblks
block = bytearray(256 * 1024)      # what asyncio's recv(256 KiB) asks of malloc
print(libc.mallinfo2().hblks - before)
"""


def _maps_made(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True)
    return int(out.stdout.strip())


def test_a_receive_buffer_is_a_memory_map_until_malloc_is_primed() -> None:
    assert _maps_made("as-started") == 1      # the state the bare loop measured in by default
    assert _maps_made("prime") == 0           # the gateway's state, and the bare loop's with --prime-malloc


def test_floor_refuses_a_plan_it_cannot_read(capsys: pytest.CaptureFixture[str]) -> None:
    """``--floor`` turns the registers of tcp_fleet.py's three requests into its nine values;
    another plan is refused before any connection, saying what it expects."""
    with pytest.raises(SystemExit) as exit_:
        fleet_baseline.main(["--meters", "1", "--port-base", "10000", "--interval", "1",
                             "--pdu", "030000000a", "--floor"])
    assert exit_.value.code == 2
    assert "requests of (10, 2, 3) registers; these --pdu ask for (10,)" in capsys.readouterr().err
