"""The demo pipeline: clickstream events and the ``page_activity`` view, declared once."""

from __future__ import annotations

from pyspark.sql import types as T

from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.views import EventSource, TumblingWindow, View, approx_distinct, count, max_of, sum_of

__all__ = ["CLICKS", "CLICKSTREAM", "PAGE_ACTIVITY"]

CLICKS = EventSource(
    name="clicks",
    schema=T.StructType(
        [
            T.StructField("event_id", T.StringType(), True),
            T.StructField("user_id", T.StringType(), True),
            T.StructField("page", T.StringType(), True),
            T.StructField("event_time", T.TimestampType(), True),
            T.StructField("duration_ms", T.LongType(), True),
        ]
    ),
    id_column="event_id",
    time_column="event_time",
    required=("event_id", "user_id", "page", "event_time", "duration_ms"),
)

PAGE_ACTIVITY = View(
    name="page_activity",
    source=CLICKS,
    keys=("page",),
    window=TumblingWindow("event_time", "1 minute"),
    measures={
        "events": count(),
        "total_duration_ms": sum_of("duration_ms"),
        "max_duration_ms": max_of("duration_ms"),
        "unique_users": approx_distinct("user_id"),
    },
    description="Per page and 1-minute event-time window: events, time spent, longest visit, distinct users.",
)

CLICKSTREAM = Pipeline(name="clickstream", source=CLICKS, views=(PAGE_ACTIVITY,))
