"""batch ⊕ uncovered speed on plain DataFrames: the serving layer's merge, apart from any table or pin."""

from __future__ import annotations

from datetime import datetime

import pytest
from chispa import assert_df_equality
from pyspark.sql import types as T

from lambda_pipeline.core.views import TumblingWindow, View, count, max_of, sum_of
from lambda_pipeline.pipelines.clickstream import CLICKS
from lambda_pipeline.serving_layer.merge import merge, states, uncovered

VISITS = View(
    name="visits",
    source=CLICKS,
    keys=("page",),
    window=TumblingWindow("event_time", "1 minute"),
    measures={"events": count(), "total_ms": sum_of("duration_ms"), "longest_ms": max_of("duration_ms")},
)

W0, W0_END = datetime(2026, 1, 1, 12, 0), datetime(2026, 1, 1, 12, 1)
W1, W1_END = datetime(2026, 1, 1, 12, 1), datetime(2026, 1, 1, 12, 2)
SEEN = datetime(2026, 1, 1, 12, 5)

SERVED = T.StructType(
    [
        T.StructField("page", T.StringType(), True),
        T.StructField("window_start", T.TimestampType(), True),
        T.StructField("window_end", T.TimestampType(), True),
        T.StructField("events", T.LongType(), False),
        T.StructField("total_ms", T.LongType(), True),
        T.StructField("longest_ms", T.LongType(), True),
    ]
)


@pytest.fixture()
def batch_view(spark):
    """States of every tag up to the coverage (tags 1..3): as the batch layer publishes them."""
    rows = [("/a", W0, W0_END, 5, 500, 200), ("/b", W0, W0_END, 2, 30, 20)]
    return spark.createDataFrame(rows, VISITS.partial_schema(by_tag=False))


@pytest.fixture()
def speed_partials(spark):
    """States per ingest tag: tags 2 and 3 are covered by the batch view too, 4 and 5 are not."""
    rows = [
        ("/a", W0, W0_END, 2, 3, 300, 150, SEEN),  # covered: already in the batch view
        ("/b", W0, W0_END, 3, 1, 10, 10, SEEN),  # covered
        ("/a", W0, W0_END, 4, 1, 900, 900, SEEN),  # the batch view's window, a newer tag
        ("/a", W1, W1_END, 4, 2, 40, 25, SEEN),
        ("/c", W1, W1_END, 5, 1, 7, 7, SEEN),
    ]
    return spark.createDataFrame(rows, VISITS.partial_schema(by_tag=True))


def test_uncovered_keeps_only_the_tags_above_the_coverage(spark, speed_partials) -> None:
    expected = spark.createDataFrame(
        [
            ("/a", W0, W0_END, 4, 1, 900, 900, SEEN),
            ("/a", W1, W1_END, 4, 2, 40, 25, SEEN),
            ("/c", W1, W1_END, 5, 1, 7, 7, SEEN),
        ],
        VISITS.partial_schema(by_tag=True),
    )
    assert_df_equality(uncovered(speed_partials, covered=3), expected, ignore_row_order=True)
    assert_df_equality(uncovered(speed_partials, covered=0), speed_partials, ignore_row_order=True)


def test_states_drop_what_only_one_layer_has(spark, speed_partials) -> None:
    assert states(VISITS, speed_partials).columns == [
        "page",
        "window_start",
        "window_end",
        "events",
        "total_ms",
        "longest_ms",
    ]


def test_merge_counts_each_event_once(spark, batch_view, speed_partials) -> None:
    served = merge(VISITS, states(VISITS, batch_view), states(VISITS, uncovered(speed_partials, covered=3)))
    expected = spark.createDataFrame(
        [
            ("/a", W0, W0_END, 6, 1400, 900),  # 5 from the batch view + 1 of tag 4; the max from tag 4
            ("/b", W0, W0_END, 2, 30, 20),  # the batch view alone: tag 3 is covered
            ("/a", W1, W1_END, 2, 40, 25),  # speed alone
            ("/c", W1, W1_END, 1, 7, 7),
        ],
        SERVED,
    )
    assert_df_equality(served, expected, ignore_row_order=True)


def test_merge_of_one_empty_layer_is_the_other_layer(spark, batch_view) -> None:
    no_speed = spark.createDataFrame([], VISITS.partial_schema(by_tag=True))
    served = merge(VISITS, states(VISITS, batch_view), states(VISITS, uncovered(no_speed, covered=3)))
    expected = spark.createDataFrame([("/a", W0, W0_END, 5, 500, 200), ("/b", W0, W0_END, 2, 30, 20)], SERVED)
    assert_df_equality(served, expected, ignore_row_order=True)
