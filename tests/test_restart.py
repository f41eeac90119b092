"""Crashes and restarts: replayed micro-batches write nothing twice; an unpublished batch is never served."""

from __future__ import annotations

from pathlib import Path

import pytest
from chispa import assert_df_equality

from lambda_pipeline.batch_layer.job import publish, run_batch, stage_batch
from lambda_pipeline.core.tables import latest_coverage, latest_version
from lambda_pipeline.ingestion.job import start_ingest
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.serving_layer.catalog import ServingLayer
from lambda_pipeline.speed_layer.job import start_speed
from tests.helpers import assert_same_view, by_key, recompute

pytestmark = pytest.mark.integration


def _forget_last_commit(checkpoint: str) -> int:
    """Leave the checkpoint as a crash after the sink's write but before the commit log entry."""
    commits = sorted(Path(checkpoint, "commits").glob("[0-9]*"), key=lambda p: int(p.name))
    commits[-1].unlink()
    commits[-1].with_name(f".{commits[-1].name}.crc").unlink(missing_ok=True)
    return int(commits[-1].name)


def _sorted_rows(spark, path):
    return spark.read.format("delta").load(path).drop("unique_users__hll")


def test_replayed_speed_and_ingest_batches_write_nothing_twice(spark, settings, locations) -> None:
    generator = ClickstreamGenerator(5, duplicate_fraction=0.1)
    generator.write(locations.landing, 400, files=2)
    start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()
    start_speed(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()
    partials = locations.speed_partials("page_activity")
    before_speed = _sorted_rows(spark, partials).collect()
    before_master = spark.read.format("delta").load(locations.master).count()
    master_version = latest_version(spark, locations.master)

    replayed = [_forget_last_commit(locations.checkpoint("speed")), _forget_last_commit(locations.checkpoint("ingest"))]
    start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()
    start_speed(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()

    assert all(
        Path(locations.checkpoint(j), "commits", str(b)).exists()
        for j, b in zip(("speed", "ingest"), replayed, strict=True)
    ), "the batches were not replayed"
    assert spark.read.format("delta").load(locations.master).count() == before_master
    assert latest_version(spark, locations.master) == master_version
    assert_df_equality(
        _sorted_rows(spark, partials),
        spark.createDataFrame(before_speed, _sorted_rows(spark, partials).schema),
        ignore_row_order=True,
    )


def test_speed_restarted_between_micro_batches_converges(spark, settings, locations) -> None:
    generator = ClickstreamGenerator(9, late_fraction=0.3)
    serving = ServingLayer(spark, CLICKSTREAM, locations)
    for _ in range(3):
        generator.write(locations.landing, 200, files=1)
        start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()
        start_speed(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()  # stop, then restart
    serving.refresh()
    assert_same_view(
        by_key(serving.query("SELECT * FROM serving.page_activity", refresh=False)),
        recompute(spark, locations.master),
        users_tolerance=0.0,
    )


def test_batch_killed_before_publishing_leaves_previous_view_served(spark, settings, locations) -> None:
    generator = ClickstreamGenerator(13)
    generator.write(locations.landing, 300, files=1)
    start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()
    published, _ = run_batch(spark, CLICKSTREAM, locations)
    serving = ServingLayer(spark, CLICKSTREAM, locations)
    serving.refresh()
    served_before = by_key(serving.query("SELECT * FROM batch.page_activity", refresh=False))

    generator.write(locations.landing, 300, files=1)
    start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()
    staged = stage_batch(spark, CLICKSTREAM, locations)  # the crash: views written, coverage not appended
    batch_table = locations.batch_view("page_activity")
    assert (
        latest_version(spark, batch_table)
        == staged.view_versions["page_activity"]
        > published.view_versions["page_activity"]
    )

    pinned = serving.refresh()["page_activity"]
    assert (
        pinned.coverage.run_id == published.run_id and pinned.batch_version == published.view_versions["page_activity"]
    )
    assert by_key(serving.query("SELECT * FROM batch.page_activity", refresh=False)) == served_before
    # Nothing is lost meanwhile: the speed layer serves what the unpublished batch would have covered.
    start_speed(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()
    serving.refresh()
    assert_same_view(
        by_key(serving.query("SELECT * FROM serving.page_activity", refresh=False)),
        recompute(spark, locations.master),
        users_tolerance=0.02,
    )
    # Publishing the staged run later is the atomic switch.
    publish(spark, locations, staged)
    assert latest_coverage(spark, locations.coverage).run_id == staged.run_id
