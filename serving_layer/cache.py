"""What the serving layer keeps between queries: one object, one lock, a stated key per entry, a bound.

Every entry sits in a *slot*, what it is (``("batch states", "page_activity")``, ``("relation", "serving",
"page_activity")``), under a *key*, what it depends on: a Delta table's path, id and version (the id tells a
table made anew at the same path from the old one), or the pin. An entry answers only while the key asked
for equals its key; another key replaces it, so a slot never holds two versions. The slots are bounded: past
``max_slots`` the least recently used one is dropped.

Persisted DataFrames are unpersisted when replaced or dropped. A query still running on one recomputes what
it misses from the same pinned Delta versions, so answers never change.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = ["ServingCache"]

T = TypeVar("T")


@dataclass(frozen=True)
class _Entry:
    key: Hashable
    value: Any
    persisted: bool


class ServingCache:
    """Slots of values keyed by what they depend on, at most ``max_slots`` of them. Thread-safe."""

    def __init__(self, max_slots: int) -> None:
        if max_slots < 1:
            raise ValueError(f"max_slots must be at least 1, got {max_slots}")
        self.max_slots = max_slots
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def value(self, slot: Hashable, key: Hashable, build: Callable[[], T]) -> T:
        """The value in ``slot`` if it was built for ``key``; else ``build()``, kept there in place of the old."""
        return cast(T, self._get(slot, key, build, persist=False))

    def frame(self, slot: Hashable, key: Hashable, build: Callable[[], DataFrame]) -> DataFrame:
        """:meth:`value` for a DataFrame kept in memory: ``build()`` is persisted, and unpersisted when replaced."""
        frame: DataFrame = self._get(slot, key, build, persist=True)
        return frame

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _get(self, slot: Hashable, key: Hashable, build: Callable[[], Any], *, persist: bool) -> Any:
        with self._lock:
            entry = self._entries.get(slot)
            if entry is not None and entry.key == key:
                self._entries.move_to_end(slot)
                return entry.value
        # Built outside the lock: a build may read a table's log, or ask this cache for another slot.
        value = build()
        if persist:
            value = value.persist()
        released: list[_Entry] = []
        with self._lock:
            entry = self._entries.get(slot)
            if entry is not None and entry.key == key:  # another thread built it meanwhile: keep one
                self._entries.move_to_end(slot)
                released.append(_Entry(key, value, persist))
                value = entry.value
            else:
                if entry is not None:
                    released.append(entry)
                self._entries[slot] = _Entry(key, value, persist)
                self._entries.move_to_end(slot)
                while len(self._entries) > self.max_slots:
                    released.append(self._entries.popitem(last=False)[1])
        for old in released:
            if old.persisted:
                old.value.unpersist()
        return value
