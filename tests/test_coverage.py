"""The coverage record: the cache of records read stays bounded."""

from __future__ import annotations

from datetime import datetime

from lambda_pipeline.core.coverage import Coverage, _RecordCache


def test_the_coverage_cache_keeps_the_records_used_last() -> None:
    cache = _RecordCache(size=2)
    first, second, third = (Coverage(f"run-{n}", n, {}, 0, datetime(2026, 1, 1)) for n in (1, 2, 3))
    cache.put(("coverage", "table-id", 1), first)
    cache.put(("coverage", "table-id", 2), second)
    assert cache.get(("coverage", "table-id", 1)) is first  # used last now
    cache.put(("coverage", "table-id", 3), third)
    assert cache.get(("coverage", "table-id", 2)) is None
    assert cache.get(("coverage", "table-id", 1)) is first and cache.get(("coverage", "table-id", 3)) is third
    assert cache.get(("coverage", "other-table-id", 1)) is None  # a table created again at the same path
