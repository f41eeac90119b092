"""Merge laws: the view over all events equals the merge of the view over any split of them.

This is what makes the serving layer exact: batch and speed compute partial
states of disjoint event sets, and serving merges them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambda_pipeline.core.views import (
    TumblingWindow,
    View,
    approx_distinct,
    approx_quantile,
    avg_of,
    count,
    max_of,
    min_of,
    sum_of,
)
from lambda_pipeline.pipelines.clickstream import CLICKS

VIEW = View(
    "laws",
    CLICKS,
    ("page",),
    TumblingWindow("event_time", "1 minute"),
    {
        "n": count(),
        "total": sum_of("duration_ms"),
        "shortest": min_of("duration_ms"),
        "longest": max_of("duration_ms"),
        "mean": avg_of("duration_ms"),
        "users": approx_distinct("user_id"),
        "p90": approx_quantile("duration_ms", 0.9),
    },
)
EXACT = ("n", "total", "shortest", "longest")
BASE = datetime(2026, 3, 1, 12, 0, 0)

event = st.tuples(
    st.sampled_from(["/a", "/b", "/c"]),
    st.integers(0, 40),  # user
    st.integers(0, 299),  # seconds after BASE: five windows
    st.integers(-1000, 100_000),  # duration
    st.integers(0, 3),  # which part of the split
)


def _rows(events: list[tuple]) -> list[tuple]:
    return [
        (f"e{i}", f"u{user}", page, BASE + timedelta(seconds=sec), dur, part + 1, BASE, "f", None)
        for i, (page, user, sec, dur, part) in enumerate(events)
    ]


def _by_key(frame) -> dict:
    return {(r.page, r.window_start): r.asDict() for r in frame.collect()}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(event, min_size=1, max_size=60))
def test_merge_of_split_equals_whole(spark, events: list[tuple]) -> None:
    frame = spark.createDataFrame(_rows(events), CLICKS.master_schema)
    whole = _by_key(VIEW.finalize(VIEW.partials(frame, by_tag=False)))
    # Split by ingest tag, the way batch and speed split the events: partial states per part, then merge.
    split = _by_key(VIEW.finalize(VIEW.partials(frame, by_tag=True)))
    assert whole.keys() == split.keys()
    for key, expected in whole.items():
        got = split[key]
        for measure in EXACT:
            assert got[measure] == expected[measure], (key, measure)
        assert got["mean"] == pytest.approx(expected["mean"], rel=1e-12)
        # HLL below its coupon threshold is exact; the union must not lose or add a user.
        assert got["users"] == expected["users"], key
        # KLL with k=200 keeps every value of sets this small: the quantile is exact.
        assert got["p90"] == pytest.approx(expected["p90"]), key


def test_merge_is_associative_over_three_way_split(spark) -> None:
    """Merging states that were themselves merged gives the same answer (re-publication safety)."""
    rows = _rows([("/a", u % 7, u % 60, u * 13, u % 3) for u in range(200)])
    frame = spark.createDataFrame(rows, CLICKS.master_schema)
    states = VIEW.partials(frame, by_tag=True)
    direct = _by_key(VIEW.finalize(states))
    parts = [VIEW.partials(frame.filter(f"ingest_tag = {t}"), by_tag=False) for t in (1, 2, 3)]
    nested = _by_key(VIEW.finalize(parts[0].unionByName(parts[1]).unionByName(parts[2])))
    assert direct == nested
