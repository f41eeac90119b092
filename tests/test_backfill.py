"""Backfill: a field added to the source later is filled for past events from the raw text master keeps."""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from chispa import assert_df_equality
from delta.tables import DeltaTable
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lambda_pipeline.batch_layer.job import run_batch
from lambda_pipeline.batch_layer.recompute import deduplicate
from lambda_pipeline.cli.main import main
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.tables import add_missing_columns, ensure_table
from lambda_pipeline.core.views import EventSource, View, count, sum_of
from lambda_pipeline.maintenance.refresh import refresh
from lambda_pipeline.pipelines.clickstream import CLICKS, PAGE_ACTIVITY
from lambda_pipeline.pipelines.ingest import start_ingest
from lambda_pipeline.serving_layer.catalog import ServingLayer

pytestmark = pytest.mark.integration

BEFORE = Pipeline(name="backfilled", source=CLICKS, views=(PAGE_ACTIVITY,))
# The same source with two fields declared later: the producers sent them all along.
CLICKS_V2 = EventSource(
    name=CLICKS.name,
    schema=T.StructType(
        [
            *CLICKS.schema.fields,
            T.StructField("referrer", T.StringType(), True),
            T.StructField("scroll_pct", T.IntegerType(), True),
        ]
    ),
    id_column=CLICKS.id_column,
    time_column=CLICKS.time_column,
    required=CLICKS.required,
)
REFERRERS = View(
    name="referrers",
    source=CLICKS_V2,
    keys=("referrer",),
    window=PAGE_ACTIVITY.window,
    measures={"events": count(), "scrolled": sum_of("scroll_pct")},
)
AFTER = Pipeline(
    name="backfilled",
    source=CLICKS_V2,
    views=(dataclasses.replace(PAGE_ACTIVITY, source=CLICKS_V2), REFERRERS),
)
QUERY = "SELECT referrer, sum(events) AS events, sum(scrolled) AS scrolled FROM serving.referrers GROUP BY referrer"


def _event(n: int, start: datetime) -> dict[str, object]:
    record: dict[str, object] = {
        "event_id": f"e{n}",
        "user_id": f"u{n % 5}",
        "page": f"/p{n % 3}",
        "event_time": (start + timedelta(seconds=n)).isoformat().replace("+00:00", "Z"),
        "duration_ms": 100 + n,
    }
    if n % 4:  # one event in four never had a referrer
        record["referrer"] = f"r{n % 2}"
    record["scroll_pct"] = "lots" if n % 10 == 7 else n % 100
    return record


def _land(landing: str, name: str, events: list[dict[str, object]]) -> None:
    hidden = Path(landing) / f".{name}"
    hidden.write_text("".join(json.dumps(e) + "\n" for e in events))
    os.replace(hidden, Path(landing) / name)  # the file source never sees a half-written file


def _ingest(spark, pipeline, settings, locations) -> None:
    start_ingest(spark, pipeline, settings, locations, once=True).awaitTermination()


def _expected(spark, events: list[dict[str, object]]):
    """What serving must answer, from the events as they were sent (not from master)."""
    rows = [
        (
            e.get("referrer"),
            1,
            e["scroll_pct"] if isinstance(e["scroll_pct"], int) else None,
        )
        for e in events
    ]
    frame = spark.createDataFrame(rows, "referrer string, events long, scrolled long")
    return frame.groupBy("referrer").agg(F.sum("events").alias("events"), F.sum("scrolled").alias("scrolled"))


def test_a_field_added_later_is_filled_from_raw_text_and_served_exactly(spark, settings, locations) -> None:
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=30)
    sent = [_event(n, start) for n in range(80)]
    _land(locations.landing, "a.jsonl", sent[:50])
    _ingest(spark, BEFORE, settings, locations)
    run_batch(spark, BEFORE, locations)
    _land(locations.landing, "b.jsonl", sent[50:])  # uncovered: served by the speed layer
    _ingest(spark, BEFORE, settings, locations)

    # The master written under the old source has no column for the new fields: a batch says what to run.
    with pytest.raises(LambdaError, match=r"no column 'referrer', 'scroll_pct'.*refresh --backfill referrer"):
        run_batch(spark, AFTER, locations, force=True)
    with pytest.raises(LambdaError, match="referrers: the view is new and not computed yet"):
        ServingLayer(spark, AFTER, locations).query(QUERY).collect()

    done = refresh(spark, AFTER, locations, backfill=["referrer", "scroll_pct"])
    assert done.views == ("referrers",)  # page_activity reads neither field: left as it is
    report = done.backfill
    assert report is not None and report.master_version is not None
    assert report.filled == {"referrer": 60, "scroll_pct": 72}
    assert report.absent == {"referrer": 20, "scroll_pct": 0}
    assert report.unreadable == {"referrer": 0, "scroll_pct": 8}
    assert report.without_raw == 0
    history = DeltaTable.forPath(spark, locations.master).history(5).collect()
    assert any(
        h.operation == "UPDATE" and h.userMetadata == "lambda-pipeline backfill: referrer, scroll_pct" for h in history
    )

    serving = ServingLayer(spark, AFTER, locations)
    assert_df_equality(serving.query(QUERY), _expected(spark, sent), ignore_row_order=True, ignore_nullable=True)

    # Ingest with the new source fills the fields itself; serving stays exact across both kinds of events.
    # A new event whose value does not fit goes to quarantine, as for any declared field (a past one kept null).
    more = [_event(n, start) for n in range(80, 100)]
    _land(locations.landing, "c.jsonl", more)
    _ingest(spark, AFTER, settings, locations)
    accepted = [e for e in more if isinstance(e["scroll_pct"], int)]
    assert len(accepted) == 18
    expected = _expected(spark, sent + accepted)
    assert_df_equality(serving.query(QUERY), expected, ignore_row_order=True, ignore_nullable=True)
    quarantine = spark.read.format("delta").load(locations.quarantine)
    assert quarantine.filter(F.col("reason").startswith("wrong_type: scroll_pct expected int")).count() == 2
    master = spark.read.format("delta").load(locations.master)
    recomputed = REFERRERS.finalize(REFERRERS.partials(deduplicate(master, CLICKS_V2), by_tag=False))
    assert_df_equality(
        recomputed.groupBy("referrer").agg(F.sum("events").alias("events"), F.sum("scrolled").alias("scrolled")),
        expected,
        ignore_row_order=True,
        ignore_nullable=True,
    )

    # A second backfill finds nothing left to fill, and commits nothing to master.
    again = refresh(spark, AFTER, locations, backfill=["referrer"])
    assert again.backfill is not None and again.backfill.master_version is None
    assert again.backfill.filled == {"referrer": 0} and again.backfill.absent == {"referrer": 25}


def test_events_ingested_before_master_kept_raw_text_are_counted_not_guessed(spark, settings, locations) -> None:
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=30)
    _land(locations.landing, "a.jsonl", [_event(n, start) for n in range(1, 9)])
    _ingest(spark, BEFORE, settings, locations)
    # As a master written before this version holds them: no raw text.
    DeltaTable.forPath(spark, locations.master).update(F.col("event_id").isin("e1", "e2"), {"raw": F.lit(None)})
    # And events ingested with the raw text switched off.
    _land(locations.landing, "b.jsonl", [_event(n, start) for n in range(9, 12)])
    _ingest(
        spark,
        BEFORE,
        settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"keep_raw": False})}),
        locations,
    )
    report = refresh(spark, AFTER, locations, backfill=["referrer"]).backfill
    assert report is not None
    assert (report.filled, report.absent, report.without_raw) == ({"referrer": 4}, {"referrer": 2}, 5)
    assert any("5 events have no raw text in master" in line for line in report.lines())


def test_bad_backfill_requests_are_refused_with_what_to_do(spark, settings, locations, tmp_path: Path) -> None:
    with pytest.raises(LambdaError, match=r"source 'clicks' has no such field.*fields are: event_id"):
        refresh(spark, AFTER, locations, backfill=["nope"])
    with pytest.raises(LambdaError, match="name a view"):
        refresh(spark, AFTER, locations)
    assert main(["refresh", "--backfill", "nope", "--workdir", locations.workdir]) == 1

    table = str(tmp_path / "typed")
    ensure_table(spark, table, T.StructType([T.StructField("n", T.IntegerType(), True)]))
    widened = T.StructType([T.StructField("n", T.StringType(), True), T.StructField("m", T.LongType(), True)])
    with pytest.raises(LambdaError, match=r"'n' is int there, string now.*under a new name"):
        add_missing_columns(spark, table, widened)
    added = add_missing_columns(spark, table, T.StructType([*widened.fields[1:], T.StructField("n", T.IntegerType())]))
    assert added == ["m"] and spark.read.format("delta").load(table).columns == ["n", "m"]
