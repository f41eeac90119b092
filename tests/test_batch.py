"""The batch layer's exact dedup: one row per event id, the copy with the smallest ingest tag."""

from __future__ import annotations

from datetime import datetime

import pytest
from chispa import assert_df_equality

from lambda_pipeline.batch_layer.recompute import deduplicate, repeated_ids
from lambda_pipeline.pipelines.clickstream import CLICKS

T0 = datetime(2026, 1, 1, 9, 0)


def _rows():
    return [
        ("a", "u1", "/x", T0, 10, 3, T0, "f3", None),
        ("a", "u1", "/x", T0, 10, 1, T0, "f1", None),  # first copy of "a": kept
        ("a", "u1", "/x", T0, 10, 7, T0, "f7", None),
        ("b", "u2", "/y", T0, 20, 2, T0, "f2", None),
        ("c", "u3", "/z", T0, 30, 5, T0, "f5", None),
        ("c", "u9", "/z", T0, 99, 4, T0, "f4", None),  # copies that differ: the smaller tag wins
    ]


@pytest.mark.parametrize("broadcast", [False, True])
def test_keeps_the_earliest_copy_of_each_id(spark, broadcast: bool) -> None:
    events = spark.createDataFrame(_rows(), CLICKS.master_schema)
    repeats = repeated_ids(events, CLICKS)
    assert sorted(map(tuple, repeats.collect())) == [("a", 1), ("c", 4)]
    got = deduplicate(events, CLICKS, repeats, broadcast=broadcast)
    expected = spark.createDataFrame([_rows()[i] for i in (1, 3, 5)], CLICKS.master_schema)
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_without_repeats_every_row_passes(spark) -> None:
    events = spark.createDataFrame([_rows()[i] for i in (1, 3, 4)], CLICKS.master_schema)
    assert repeated_ids(events, CLICKS).count() == 0
    assert_df_equality(deduplicate(events, CLICKS), events, ignore_row_order=True, ignore_nullable=True)
