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
