"""A long-lived server reads the speed partials from the files the log names, and their provenance from the log's
statistics: at every pin it answers exactly what Delta's reader answers, and a commit costs it no Spark job."""

from __future__ import annotations

import pytest
from chispa import assert_df_equality

from lambda_pipeline.batch_layer.job import run_batch
from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.tables import latest_version
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM, PAGE_ACTIVITY
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.serving_layer import speed_frames
from lambda_pipeline.serving_layer.catalog import ServingLayer
from lambda_pipeline.serving_layer.speed_files import SpeedFileIndex
from lambda_pipeline.speed_layer.catch_up import catch_up
from tests.helpers import ingest_once

pytestmark = pytest.mark.integration

VIEW = PAGE_ACTIVITY.name


def _same_at_one_pin(kept: ServingLayer, plain: ServingLayer) -> None:
    pin = kept.take_pin()
    for layer in ("serving", "speed"):
        from_files, from_delta = kept.relation(layer, VIEW, pin), plain.relation(layer, VIEW, pin)
        assert_df_equality(from_files, from_delta, ignore_row_order=True, ignore_nullable=True)
    from_log, from_data = kept.provenance(VIEW, pin).as_dict(), plain.provenance(VIEW, pin).as_dict()
    from_log.pop("freshness_lag_seconds"), from_data.pop("freshness_lag_seconds")
    assert from_log == from_data


def _jobs_of(spark, call) -> int:
    context, group = spark.sparkContext, "test-speed-files-jobs"
    context.setJobGroup(group, "jobs of one call")
    try:
        call()
    finally:
        context.setLocalProperty("spark.jobGroup.id", None)
    return len(context.statusTracker().getJobIdsForGroup(group))


def test_the_server_reads_every_pin_as_delta_does_and_a_commit_costs_its_provenance_no_job(
    spark, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(speed_frames, "FOLD_AT", 2)  # fold often: the block is exercised in a few commits
    settings = load_settings(None, ["ingest.max_files_per_trigger=1", "speed.compact_every=1000"])
    locations = Locations.create(settings, tmp_path / "work")
    locations.ensure_local_dirs()
    generator = ClickstreamGenerator(17, duplicate_fraction=0.1, malformed_fraction=0.05, late_fraction=0.2)
    kept = ServingLayer(spark, CLICKSTREAM, locations, cache_layers=True)
    plain = ServingLayer(spark, CLICKSTREAM, locations, cache_layers=False)

    def ingest(files: int) -> None:
        generator.write(locations.landing, 60 * files, files=files)
        ingest_once(spark, settings, locations)

    ingest(2)
    _same_at_one_pin(kept, plain)
    for _ in range(4):  # one commit at a time: the recent tags, then folds into the block
        ingest(1)
        _same_at_one_pin(kept, plain)
    run_batch(spark, CLICKSTREAM, locations)  # a publication: the block holds covered tags now
    _same_at_one_pin(kept, plain)
    ingest(3)  # ingest purges the covered tags: whole files removed
    _same_at_one_pin(kept, plain)

    ingest(1)
    pin = kept.take_pin()
    assert _jobs_of(spark, lambda: kept.provenance(VIEW, pin)) == 0
    _same_at_one_pin(kept, plain)

    index = kept.relations._indexes[locations.speed_partials(VIEW)]
    resets = index.resets
    catch_up(spark, CLICKSTREAM, locations, rebuild=True)  # `lambda-pipeline speed --rebuild`: every file rewritten
    _same_at_one_pin(kept, plain)
    ingest(1)
    _same_at_one_pin(kept, plain)
    assert index.resets <= resets + 1  # the overwrite is followed from the log, or read anew once


def test_the_index_follows_appends_and_removes_and_starts_over_on_what_it_does_not_follow(spark, tmp_path) -> None:
    from pyspark.sql import functions as F

    path = str(tmp_path / "speed")

    def append(tag: int) -> None:
        rows = spark.range(3).select(F.lit(tag).cast("long").alias("ingest_tag"), F.col("id").alias("events"))
        rows.write.format("delta").mode("append").partitionBy("ingest_tag").save(path)

    def tags(index: SpeedFileIndex, version: int) -> set[int] | None:
        files = index.live(version, table_id)
        return None if files is None else {f.tag for f in files}

    append(1)
    append(2)
    from lambda_pipeline.core.jvm import delta_snapshot

    snapshot = delta_snapshot(spark, path)
    assert snapshot is not None
    table_id = snapshot.table_id
    index = SpeedFileIndex(spark, path)
    assert tags(index, 1) == {1, 2} and index.resets == 1
    spark.sql(f"DELETE FROM delta.`{path}` WHERE ingest_tag = 1")
    append(3)
    assert tags(index, 3) == {2, 3}
    assert tags(index, 1) == {1, 2}  # an older pin still sees what was live then
    assert index.resets == 1
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('lambda.note' = 'x')")  # a metaData action
    assert tags(index, latest_version(spark, path)) == {2, 3} and index.resets == 2
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
    assert tags(index, latest_version(spark, path)) is None  # files may be read only in part: Delta's reader reads
    refused = index.resets
    append(4)
    assert tags(index, latest_version(spark, path)) is None and index.resets == refused  # no listing job per query
    assert index.live(1, "another table's id") is None
