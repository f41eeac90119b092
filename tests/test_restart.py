"""Crashes and restarts: replayed micro-batches write nothing twice; an unpublished batch is never served."""

from __future__ import annotations

from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.errors import StreamingQueryException

from lambda_pipeline.batch_layer.job import publish, run_batch, stage_batch
from lambda_pipeline.batch_layer.recompute import deduplicate
from lambda_pipeline.core.coverage import latest_coverage
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.tables import latest_version, table_version
from lambda_pipeline.core.views import TumblingWindow, View, count, max_of
from lambda_pipeline.pipelines.clickstream import CLICKS, CLICKSTREAM
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.pipelines.ingest import start_ingest
from lambda_pipeline.serving_layer.catalog import ServingLayer
from lambda_pipeline.speed_layer.catch_up import present_tags
from lambda_pipeline.speed_layer.writer import SpeedWriter
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


def _served_equals_recompute(spark, serving, locations, tag_filter: str = "true", tolerance: float = 0.02) -> None:
    """serving.page_activity, freshly pinned, against a recompute over the master events ``tag_filter`` picks."""
    serving.take_pin()
    assert_same_view(
        by_key(serving.query("SELECT * FROM serving.page_activity", new_pin=False)),
        recompute(spark, locations.master, tag_filter),
        users_tolerance=tolerance,
    )


def test_a_replayed_ingest_batch_writes_nothing_twice(spark, settings, locations) -> None:
    generator = ClickstreamGenerator(5, duplicate_fraction=0.1)
    generator.write(locations.landing, 400, files=2)
    start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()
    partials = locations.speed_partials("page_activity")
    before_speed = _sorted_rows(spark, partials).collect()
    before_master = spark.read.format("delta").load(locations.master).count()
    master_version = latest_version(spark, locations.master)
    speed_version = latest_version(spark, partials)

    replayed = _forget_last_commit(locations.checkpoint("ingest"))
    start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()

    assert Path(locations.checkpoint("ingest"), "commits", str(replayed)).exists(), "the batch was not replayed"
    assert spark.read.format("delta").load(locations.master).count() == before_master
    assert latest_version(spark, locations.master) == master_version
    assert latest_version(spark, partials) == speed_version
    assert_df_equality(
        _sorted_rows(spark, partials),
        spark.createDataFrame(before_speed, _sorted_rows(spark, partials).schema),
        ignore_row_order=True,
    )


PAGE_VISITS = View(
    "page_visits",
    source=CLICKS,
    keys=("page",),
    window=TumblingWindow("event_time", "5 minutes"),
    measures={"visits": count(), "longest_ms": max_of("duration_ms")},
)
WITH_VISITS = Pipeline(name="clickstream", source=CLICKS, views=(*CLICKSTREAM.views, PAGE_VISITS))


class _CrashAfterMaster(Exception):
    pass


def test_a_crash_between_the_master_and_the_speed_commit_leaves_no_gap_and_no_double_count(
    spark, settings, locations, monkeypatch
) -> None:
    """The one hop's two commits: master landed, the speed partials of its tag did not; then a restart."""
    generator = ClickstreamGenerator(17, duplicate_fraction=0.1, late_fraction=0.2)
    generator.write(locations.landing, 300, files=1)
    start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()
    run_batch(spark, CLICKSTREAM, locations)
    generator.write(locations.landing, 300, files=1)

    def crash(self, *args, **kwargs) -> None:
        raise _CrashAfterMaster("killed after the master commit")

    with monkeypatch.context() as patched:
        patched.setattr(SpeedWriter, "write", crash)
        query = start_ingest(spark, CLICKSTREAM, settings, locations, once=True)
        with pytest.raises(StreamingQueryException, match="killed after the master commit"):
            query.awaitTermination()
    tag = latest_version(spark, locations.master)
    partials = locations.speed_partials("page_activity")
    assert tag not in present_tags(spark, partials, 0), "the crash must land between the two commits"
    serving = ServingLayer(spark, CLICKSTREAM, locations)
    # Meanwhile serving shows the events of the commits that completed, each once: the new tag is not there yet.
    _served_equals_recompute(spark, serving, locations, f"ingest_tag < {tag}")

    start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()  # the restart
    assert latest_version(spark, locations.master) == tag, "the replay must not append master again"
    assert tag in present_tags(spark, partials, 0)
    _served_equals_recompute(spark, serving, locations)


def test_ingest_restarted_between_micro_batches_converges(spark, settings, locations) -> None:
    generator = ClickstreamGenerator(9, late_fraction=0.3)
    serving = ServingLayer(spark, CLICKSTREAM, locations)
    for _ in range(3):
        generator.write(locations.landing, 200, files=1)
        start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()  # stop, then restart
    _served_equals_recompute(spark, serving, locations, tolerance=0.0)


def test_a_view_added_after_data_exists_is_caught_up_from_master(spark, settings, locations) -> None:
    """Ingest restarted with one more view: its partials cover every tag, the other view's covered ones too."""
    generator = ClickstreamGenerator(21, late_fraction=0.2, duplicate_fraction=0.1)
    generator.write(locations.landing, 300, files=1)
    start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()
    run_batch(spark, CLICKSTREAM, locations)  # covers tag 1, for page_activity only
    generator.write(locations.landing, 300, files=1)
    start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()
    assert table_version(spark, locations.speed_partials(PAGE_VISITS.name)) is None

    generator.write(locations.landing, 200, files=1)
    start_ingest(spark, WITH_VISITS, settings, locations, once=True).awaitTermination()
    assert present_tags(spark, locations.speed_partials(PAGE_VISITS.name), 0) == {1, 2, 3}
    serving = ServingLayer(spark, WITH_VISITS, locations)
    _served_equals_recompute(spark, serving, locations)
    master = deduplicate(spark.read.format("delta").load(locations.master), CLICKS)
    expected = PAGE_VISITS.finalize(PAGE_VISITS.partials(master, by_tag=False))
    got = serving.query("SELECT * FROM serving.page_visits", new_pin=False)
    assert_df_equality(got, expected, ignore_row_order=True, ignore_column_order=True, ignore_nullable=True)
    assert latest_coverage(spark, locations.coverage).covered_for(PAGE_VISITS.name) == 0


def test_batch_killed_before_publishing_leaves_previous_view_served(spark, settings, locations) -> None:
    generator = ClickstreamGenerator(13)
    generator.write(locations.landing, 300, files=1)
    start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()
    published, _ = run_batch(spark, CLICKSTREAM, locations)
    serving = ServingLayer(spark, CLICKSTREAM, locations)
    serving.take_pin()
    served_before = by_key(serving.query("SELECT * FROM batch.page_activity", new_pin=False))

    generator.write(locations.landing, 300, files=1)
    start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()
    staged = stage_batch(spark, CLICKSTREAM, locations)  # the crash: views written, coverage not appended
    batch_table = locations.batch_view("page_activity")
    assert (
        latest_version(spark, batch_table)
        == staged.view_versions["page_activity"]
        > published.view_versions["page_activity"]
    )

    pinned = serving.take_pin()["page_activity"]
    assert (
        pinned.coverage.run_id == published.run_id and pinned.batch_version == published.view_versions["page_activity"]
    )
    assert by_key(serving.query("SELECT * FROM batch.page_activity", new_pin=False)) == served_before
    # Nothing is lost meanwhile: the speed layer serves what the unpublished batch would have covered.
    _served_equals_recompute(spark, serving, locations)
    # Publishing the staged run later is the atomic switch.
    publish(spark, locations, staged)
    assert latest_coverage(spark, locations.coverage).run_id == staged.run_id
