"""The event time as producers send it: ISO 8601 with or without an offset (UTC when absent), epoch
milliseconds, epoch seconds; anything else goes to quarantine with the reason."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

import lambda_pipeline as lp
from lambda_pipeline.ingestion.routing import parse_events

SCHEMA = T.StructType([T.StructField("id", T.StringType()), T.StructField("ts", T.TimestampType())])
TEN_UTC = int(datetime(2026, 12, 7, 10, 0, tzinfo=timezone.utc).timestamp())


@pytest.mark.parametrize(
    ("time_format", "value", "seconds"),
    [
        ("iso8601", '"2026-12-07T10:00:00Z"', TEN_UTC),
        ("iso8601", '"2026-12-07T11:00:00+01:00"', TEN_UTC),
        ("iso8601", '"2026-12-07T10:00:00"', TEN_UTC),  # no offset: UTC, the pinned session time zone
        ("iso8601", '"2026-12-07 10:00:00.250"', TEN_UTC + 0.25),
        ("epoch_millis", str(TEN_UTC * 1000 + 5), TEN_UTC + 0.005),
        ("epoch_seconds", str(TEN_UTC), TEN_UTC),
        ("epoch_seconds", f"{TEN_UTC}.5", TEN_UTC + 0.5),
        ("epoch_seconds", f'"{TEN_UTC}"', TEN_UTC),  # a number sent as a string is still that number
    ],
)
def test_each_time_format_reads_the_same_instant(spark, time_format: str, value: str, seconds: float) -> None:
    source = lp.EventSource("s", SCHEMA, "id", "ts", time_format=time_format)  # type: ignore[arg-type]
    lines = spark.createDataFrame([(f'{{"id": "a", "ts": {value}}}', "f")], "raw string, source_file string")
    row = (
        parse_events(lines, source, now=F.lit(datetime(2026, 12, 7, 12, tzinfo=timezone.utc)))
        .select(F.unix_micros("ts").alias("us"), "reason")
        .first()
    )
    assert row is not None and row.reason is None and row.us == round(seconds * 1_000_000)


@pytest.mark.parametrize(
    ("time_format", "value", "reason"),
    [
        ("iso8601", str(TEN_UTC * 1000), "wrong_type: ts expected timestamp, got"),
        ("epoch_millis", '"2026-12-07T10:00:00Z"', "wrong_type: ts expected timestamp as a number of milliseconds"),
        ("epoch_millis", "9" * 25, "wrong_type: ts expected timestamp as a number of milliseconds"),
        ("epoch_seconds", '"soon"', "wrong_type: ts expected timestamp as a number of seconds since the epoch"),
    ],
)
def test_a_time_in_another_format_is_quarantined_with_the_reason(
    spark, time_format: str, value: str, reason: str
) -> None:
    source = lp.EventSource("s", SCHEMA, "id", "ts", time_format=time_format)  # type: ignore[arg-type]
    lines = spark.createDataFrame([(f'{{"id": "a", "ts": {value}}}', "f")], "raw string, source_file string")
    row = parse_events(lines, source).first()
    assert row is not None and row.reason is not None and row.reason.startswith(reason), row.reason


def test_a_nested_field_given_a_plain_value_is_quarantined(spark) -> None:
    nested = T.StructType(
        [*SCHEMA.fields, T.StructField("device", T.StructType([T.StructField("site", T.StringType())]))]
    )
    source = lp.EventSource("s", nested, "id", "ts")
    raws = [
        '{"id": "a", "ts": "2026-12-07T10:00:00Z", "device": "p3"}',
        '{"id": "b", "ts": "2026-12-07T10:00:00Z", "device": {"site": "p3"}}',
    ]
    lines = spark.createDataFrame([(r, "f") for r in raws], "raw string, source_file string")
    rows = {r.id: r for r in parse_events(lines, source).collect()}
    assert rows["a"].reason.startswith("wrong_type: device expected struct<site:string>, got p3"), rows["a"].reason
    assert rows["b"].reason is None and rows["b"].device.site == "p3"
