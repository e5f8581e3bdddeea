"""A bounded memo of values worked out from an object, found again by that object's identity.

Settings objects (profiles, review thresholds, CT and PT Decimals) are shared by many
meters and live until the next reload, and several hot paths derive something from them
once per object instead of once per reading. Keying by ``id()`` keeps the lookup cheap
and never confuses two equal objects that must stay apart (``Decimal("1")`` and
``Decimal("1.0")`` are equal but are written differently). Two rules keep that sound:

* each entry holds its object, so the object cannot be freed (and its id reused by
  another) while its entry lives, and a hit is checked with ``is``;
* the memo is bounded: at ``limit`` entries it starts again empty. A reload builds new
  settings objects, so without a bound every reload would keep the old ones alive.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T")
V = TypeVar("V")


class IdentityMemo(Generic[T, V]):
    """``(object, extra key) → value``, remembered for that very object, at most ``limit`` entries."""

    __slots__ = ("_entries", "limit")

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._entries: dict[tuple[int, Hashable], tuple[T, V]] = {}

    def get(self, obj: T, extra: Hashable = None) -> V | None:
        """The value kept for ``obj`` (and ``extra``), or None."""
        got = self._entries.get((id(obj), extra))
        return got[1] if got is not None and got[0] is obj else None

    def put(self, obj: T, value: V, extra: Hashable = None) -> V:
        """Keep ``value`` for ``obj`` (and ``extra``); returns it."""
        entries = self._entries
        if len(entries) >= self.limit:
            entries.clear()
        entries[(id(obj), extra)] = (obj, value)
        return value

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["IdentityMemo"]
