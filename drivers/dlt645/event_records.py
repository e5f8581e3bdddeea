"""A DL/T 645-2007 meter's last event records (上1次事件记录): what a counter rise points at.

The review reads a meter's event counters every poll (``event_<stem>_count``, class 03
``xxxxxx00``) and, when one rises, the previous-1 record of that event (the same DI with
DI0 = 01). :data:`LAYOUTS` says, per event stem, which DI holds that record and which of its
leading fields are read; :func:`decode_record` turns its bytes into a
:class:`~drivers.base.EventRecord` (start, end, the registers kept at the event, as shown on
the meter: secondary values). Fields after the ones listed are ignored, so a meter whose
record is longer (more snapshots) decodes the same.

Layouts (DL/T 645-2007 appendix A, class 03; docs/protocols/dlt645-2007.md §6.7):

* 开表盖 / 开端钮盒 03300D01 / 03300E01: start, end, forward and reverse active total at the
  opening (then reactive quadrants, and the same at the closing: ignored);
* 编程 03300001: start, operator code (4 bytes, skipped); the programmed DIs are ignored;
* 电表清零 03300101: start, operator, forward and reverse active total before the clear;
* 需量清零 03300201: start, operator, forward active maximum demand and its time before;
* 校时 03300401: operator, the time before (start) and after (end) the setting;
* 失压 A/B/C 0301xx01 and 潮流反向 A/B/C 030Exx01: start, end, forward and reverse active
  total at the start. unverified: the standard's voltage-loss and reversal records carry
  many per-phase snapshots and place the end time after those of the start; meters differ.
  Check a real meter's reply before relying on ``end`` from these two.

An end time of zeros or ``EE`` bytes (the event still lasts) is ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Final

from drivers.base import EventRecord
from drivers.dlt645.values import decode_datetime, decode_number, encode_value, parse_format
from gateway.errors import DecodeError

_T: Final = "YYMMDDhhmmss"
_KWH: Final = "XXXXXX.XX"


@dataclass(frozen=True, slots=True)
class RecordLayout:
    """Where one event's last record is and its leading fields: (name, format or byte count).

    Names: ``start``, ``end``, a canonical register (``energy_import_kwh`` …), or ``_skip``
    (an operator code or anything not used: that many bytes are skipped).
    """

    di: int
    fields: tuple[tuple[str, str | int], ...]

    @property
    def size(self) -> int:
        """Bytes the listed fields take (a shorter reply is a decode error)."""
        return sum(f if isinstance(f, int) else parse_format(f).size for _, f in self.fields)


_COVER: Final = (("start", _T), ("end", _T), ("energy_import_kwh", _KWH), ("energy_export_kwh", _KWH))
_PHASE: Final = _COVER

#: Event stem (drivers.base.EVENT_STEMS) → its previous-1 record's DI and leading fields.
LAYOUTS: Final[dict[str, RecordLayout]] = {
    "cover_open": RecordLayout(0x03300D01, _COVER),
    "terminal_cover_open": RecordLayout(0x03300E01, _COVER),
    "programming": RecordLayout(0x03300001, (("start", _T), ("_skip", 4))),
    "meter_clear": RecordLayout(0x03300101, (("start", _T), ("_skip", 4), ("energy_import_kwh", _KWH),
                                             ("energy_export_kwh", _KWH))),
    "demand_clear": RecordLayout(0x03300201, (("start", _T), ("_skip", 4), ("demand_max_kw", "XX.XXXX"),
                                              ("_skip", 5))),
    "time_set": RecordLayout(0x03300401, (("_skip", 4), ("start", _T), ("end", _T))),
    **{f"voltage_loss_l{k}": RecordLayout(0x03010001 | (k << 8), _PHASE) for k in (1, 2, 3)},
    **{f"current_reversal_l{k}": RecordLayout(0x030E0001 | (k << 8), _PHASE) for k in (1, 2, 3)},
}


def _time(data: bytes) -> datetime | None:
    if not data.strip(b"\x00") or not data.strip(b"\xee"):
        return None
    try:
        return decode_datetime(data, _T)
    except DecodeError:
        return None


def decode_record(stem: str, payload: bytes) -> EventRecord:
    """The record of ``stem`` from its previous-1 DI's value bytes (see :data:`LAYOUTS`).

    Raises DecodeError when the reply is shorter than the fields read.
    """
    layout = LAYOUTS[stem]
    if len(payload) < layout.size:
        raise DecodeError(f"the last {stem.replace('_', ' ')} record has {len(payload)} bytes, fewer than the "
                          f"{layout.size} its leading fields take; the meter keeps another layout: leave "
                          f"event_{stem}_count out of the profile or report the meter's reply")
    start: datetime | None = None
    end: datetime | None = None
    registers: dict[str, Decimal] = {}
    at = 0
    for name, fmt in layout.fields:
        size = fmt if isinstance(fmt, int) else parse_format(fmt).size
        chunk = payload[at:at + size]
        at += size
        if name == "_skip" or isinstance(fmt, int):
            continue
        if name in ("start", "end"):
            when = _time(chunk)
            if name == "start":
                start = when
            else:
                end = when
            continue
        try:
            registers[name] = decode_number(chunk, fmt)
        except DecodeError:
            continue            # a register the meter does not keep in this record
    return EventRecord(stem, start, end, registers)


def encode_layout(stem: str, start: datetime, end: datetime | None, registers: dict[str, Decimal]) -> bytes:
    """The record's bytes as a meter sends them (the simulator's side of :func:`decode_record`)."""
    out = bytearray()
    for name, fmt in LAYOUTS[stem].fields:
        if isinstance(fmt, int):
            out += bytes(fmt)
        elif name == "start":
            out += encode_value(start, fmt)
        elif name == "end":
            out += bytes(6) if end is None else encode_value(end, fmt)
        else:
            out += encode_value(registers.get(name, Decimal(0)), fmt, clip=True)
    return bytes(out)


__all__ = ["LAYOUTS", "RecordLayout", "decode_record", "encode_layout"]
