"""A view compiles into every layer from one declaration, or fails when declared."""

from __future__ import annotations

from datetime import datetime

import pytest
from chispa import assert_df_equality
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import SparkSession
from pyspark.sql import types as T

from lambda_pipeline.core.errors import ViewDefinitionError
from lambda_pipeline.core.views import (
    INGEST_TAG,
    INGESTED_AT_MAX,
    Aggregate,
    EventSource,
    HoppingWindow,
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
from lambda_pipeline.pipelines.clickstream import CLICKS, PAGE_ACTIVITY

MINUTE = TumblingWindow("event_time", "1 minute")


def test_unknown_column_fails_at_definition() -> None:
    with pytest.raises(ViewDefinitionError, match=r"sum\(durations\) names an unknown column"):
        View("v", CLICKS, ("page",), MINUTE, {"total": sum_of("durations")})


def test_non_mergeable_aggregate_fails_with_a_hint() -> None:
    with pytest.raises(ViewDefinitionError, match=r"not a mergeable aggregate.*approx_quantile"):
        View("v", CLICKS, ("page",), MINUTE, {"p50": "median"})  # type: ignore[dict-item]


def test_type_mismatch_key_and_window_errors() -> None:
    with pytest.raises(ViewDefinitionError, match="needs a column of type"):
        View("v", CLICKS, ("page",), MINUTE, {"total": sum_of("page")})
    with pytest.raises(ViewDefinitionError, match="key 'site'"):
        View("v", CLICKS, ("site",), MINUTE, {"n": count()})
    with pytest.raises(ViewDefinitionError, match="must be a timestamp"):
        View("v", CLICKS, ("page",), TumblingWindow("page", "1 minute"), {"n": count()})
    with pytest.raises(ViewDefinitionError, match="whole number of seconds"):
        TumblingWindow("event_time", "500 ms")


def test_declaration_compiles_to_state_and_merge_sql() -> None:
    assert PAGE_ACTIVITY.partial_sql() == [
        "count(1) AS `events`",
        "sum(`duration_ms`) AS `total_duration_ms`",
        "max(`duration_ms`) AS `max_duration_ms`",
        "hll_sketch_agg(`user_id`, 12) AS `unique_users__hll`",
    ]
    assert PAGE_ACTIVITY.merge_sql()[3] == (
        "coalesce(hll_sketch_estimate(hll_union_agg(`unique_users__hll`, false)), 0) AS `unique_users`"
    )
    view = View("v", CLICKS, ("page",), MINUTE, {"mean": avg_of("duration_ms")})
    assert view.merge_sql() == ["try_divide(sum(`mean__sum`), sum(`mean__count`)) AS `mean`"]


def _events(spark):
    rows = [
        ("e1", "u1", "/a", datetime(2026, 1, 1, 10, 0, 5), 100, 1, datetime(2026, 1, 1, 10, 1), "f", None),
        ("e2", "u2", "/a", datetime(2026, 1, 1, 10, 0, 50), 300, 2, datetime(2026, 1, 1, 10, 2), "f", None),
        ("e3", "u1", "/a", datetime(2026, 1, 1, 10, 1, 1), 50, 2, datetime(2026, 1, 1, 10, 2), "f", None),
        ("e4", "u3", "/b", datetime(2026, 1, 1, 10, 0, 0), 7, 2, datetime(2026, 1, 1, 10, 2), "f", None),
    ]
    return spark.createDataFrame(rows, CLICKS.master_schema)


def test_batch_and_speed_compile_from_the_same_declaration(spark) -> None:
    view = View("v", CLICKS, ("page",), MINUTE, {"n": count(), "longest": max_of("duration_ms")})
    events = _events(spark)
    batch = view.partials(events, by_tag=False)
    speed = view.partials(events, by_tag=True)
    assert INGEST_TAG not in batch.columns and INGESTED_AT_MAX not in batch.columns
    assert {INGEST_TAG, INGESTED_AT_MAX} <= set(speed.columns)
    assert speed.count() == 4  # the /a 10:00 window splits by tag into two partial rows
    schema = T.StructType(
        [
            T.StructField("page", T.StringType()),
            T.StructField("window_start", T.TimestampType()),
            T.StructField("window_end", T.TimestampType()),
            T.StructField("n", T.LongType()),
            T.StructField("longest", T.LongType()),
        ]
    )
    expected = spark.createDataFrame(
        [
            ("/a", datetime(2026, 1, 1, 10, 0), datetime(2026, 1, 1, 10, 1), 2, 300),
            ("/a", datetime(2026, 1, 1, 10, 1), datetime(2026, 1, 1, 10, 2), 1, 50),
            ("/b", datetime(2026, 1, 1, 10, 0), datetime(2026, 1, 1, 10, 1), 1, 7),
        ],
        schema,
    )
    for states in (batch, speed):
        assert_df_equality(view.finalize(states), expected, ignore_row_order=True, ignore_nullable=True)


def test_distinct_users_merge_across_layers(spark) -> None:
    view = View("v", CLICKS, ("page",), MINUTE, {"users": approx_distinct("user_id")})
    events = _events(spark).filter("page = '/a'")
    merged = view.finalize(view.partials(events, by_tag=True)).orderBy("window_start").collect()
    assert [r.users for r in merged] == [2, 1]


# ---- the partial-state schema follows from the declaration ------------------------------------------

_COLUMN_TYPES = (
    T.ByteType(),
    T.ShortType(),
    T.IntegerType(),
    T.LongType(),
    T.FloatType(),
    T.DoubleType(),
    T.DecimalType(10, 2),
    T.DecimalType(38, 4),
    T.DecimalType(30, 0),
    T.StringType(),
    T.DateType(),
    T.TimestampType(),
    T.TimestampNTZType(),
    T.BinaryType(),
)
_AGGREGATES = (
    count,
    sum_of,
    min_of,
    max_of,
    avg_of,
    approx_distinct,
    lambda column: approx_quantile(column, 0.9),
)


@st.composite
def _views(draw: st.DrawFn) -> View:
    """A view over a random source: random column types and nullability, random keys and measures."""
    types = draw(st.lists(st.sampled_from(_COLUMN_TYPES), min_size=1, max_size=6))
    nullable = draw(st.lists(st.booleans(), min_size=len(types) + 2, max_size=len(types) + 2))
    fields = [T.StructField("id", T.StringType(), nullable[0]), T.StructField("t", T.TimestampType(), nullable[1])]
    fields += [T.StructField(f"c{i}", dtype, nullable[i + 2]) for i, dtype in enumerate(types)]
    source = EventSource("s", T.StructType(fields), "id", "t")
    columns = [f"c{i}" for i in range(len(types))]
    keys = draw(st.lists(st.sampled_from(["id", *columns]), unique=True, max_size=2))
    measures: dict[str, Aggregate] = {}
    for i, (make, column) in enumerate(
        draw(st.lists(st.tuples(st.sampled_from(_AGGREGATES), st.sampled_from(columns)), min_size=1, max_size=8))
    ):
        aggregate = make() if make is count else make(column)
        try:
            if aggregate.column is not None:
                aggregate.check_input("m", source.column_type(aggregate.column))
        except ViewDefinitionError:
            continue  # not defined over that column's type (sum of strings...)
        measures[f"m{i}"] = aggregate
    if not measures:
        measures["n"] = count()
    window = draw(st.sampled_from([TumblingWindow("t", "1 minute"), HoppingWindow("t", "2 minutes", "1 minute"), None]))
    return View("v", source, tuple(keys), window, measures)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(view=_views(), by_tag=st.booleans())
def test_partial_schema_is_what_spark_computes(spark: SparkSession, view: View, by_tag: bool) -> None:
    """Law: the schema the view model declares equals the one Spark gives the partials, types and
    nullability alike, for every aggregate over every column type it accepts."""
    empty = spark.createDataFrame([], view.source.master_schema)
    assert view.partial_schema(by_tag=by_tag) == view.partials(empty, by_tag=by_tag).schema


@pytest.mark.parametrize("nullable", [True, False])
def test_partial_schema_for_every_aggregate_and_column_type(spark: SparkSession, nullable: bool) -> None:
    """The same law, exhaustively: one view holding every aggregate over every column type it accepts."""
    fields = [T.StructField("id", T.StringType(), nullable), T.StructField("t", T.TimestampType(), nullable)]
    fields += [T.StructField(f"c{i}", dtype, nullable) for i, dtype in enumerate(_COLUMN_TYPES)]
    source = EventSource("s", T.StructType(fields), "id", "t")
    measures: dict[str, Aggregate] = {"n": count()}
    for i in range(len(_COLUMN_TYPES)):
        for j, make in enumerate(_AGGREGATES[1:]):
            aggregate = make(f"c{i}")
            if aggregate.accepts and isinstance(_COLUMN_TYPES[i], aggregate.accepts):
                measures[f"m{i}_{j}"] = aggregate
    view = View("v", source, ("id", "c9"), TumblingWindow("t", "1 minute"), measures)
    assert len(measures) > 50
    empty = spark.createDataFrame([], source.master_schema)
    for by_tag in (False, True):
        assert view.partial_schema(by_tag=by_tag) == view.partials(empty, by_tag=by_tag).schema
