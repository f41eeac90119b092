"""Speed layer: partial states, per ingest tag, for the master commits no batch covers yet.

A Structured Streaming query over the master table (append-only, so a plain
Delta streaming source). Each micro-batch:

1. reads the newest coverage ``V`` and keeps the events with ``ingest_tag > V``;
2. appends each view's partial states, keyed by (keys, window, ingest_tag), to
   that view's speed table through ``OnceAppender``, so a replayed
   micro-batch writes nothing twice;
3. deletes the partials a newer coverage made redundant (it is the only writer
   of its tables, so appends and purges never conflict), and compacts now and then.

No state is kept across micro-batches: a late event is just an old window in a
new tag, counted immediately and absorbed by the next batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from lambda_pipeline.core.config import Settings
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.streaming import CheckpointAppId, OnceAppender, PhaseTimer, with_trigger
from lambda_pipeline.core.tables import Locations, ensure_table, latest_coverage, require_table
from lambda_pipeline.core.views import INGEST_TAG

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

__all__ = ["SpeedBatch", "purge_covered", "setup_speed_tables", "speed_partials", "start_speed"]


def speed_partials(events: DataFrame, pipeline: Pipeline, covered_through: int) -> dict[str, DataFrame]:
    """Pure: each view's partial states over the events that coverage does not include."""
    uncovered = events.filter(F.col(INGEST_TAG) > covered_through)
    return {view.name: view.partials(uncovered, by_tag=True) for view in pipeline.views}


def setup_speed_tables(spark: SparkSession, pipeline: Pipeline, locations: Locations) -> None:
    """The tables speed writes: each view's partials, empty."""
    for view in pipeline.views:
        ensure_table(spark, locations.speed_partials(view.name), view.partial_schema(by_tag=True))


def purge_covered(spark: SparkSession, pipeline: Pipeline, locations: Locations, covered_through: int) -> None:
    """Delete partials whose tag a published batch covers (serving ignores them already)."""
    from delta.tables import DeltaTable

    for view in pipeline.views:
        DeltaTable.forPath(spark, locations.speed_partials(view.name)).delete(F.col(INGEST_TAG) <= covered_through)


@dataclass
class SpeedBatch:
    """The foreachBatch body of the speed query."""

    spark: SparkSession
    pipeline: Pipeline
    locations: Locations
    appender: OnceAppender
    compact_every: int
    purged_through: int = field(default=0)
    """Tags start at 1 (version 0 creates the master table), so nothing is at or below 0."""

    def __call__(self, events: DataFrame, batch_id: int) -> None:
        timer = PhaseTimer("speed", batch_id)
        with timer.phase("coverage"):
            covered = latest_coverage(self.spark, self.locations.coverage).master_version
        uncovered = events.filter(F.col(INGEST_TAG) > covered).persist()
        try:
            with timer.phase("read"):
                rows = uncovered.count()  # fills the cache every view then reads; no empty commits
            if rows:
                for name, partials in speed_partials(uncovered, self.pipeline, covered).items():
                    with timer.phase(f"commit_{name}"):
                        self.appender.append(self.spark, partials, self.locations.speed_partials(name), batch_id)
        finally:
            uncovered.unpersist()
        if covered > self.purged_through:
            with timer.phase("purge"):
                purge_covered(self.spark, self.pipeline, self.locations, covered)
            self.purged_through = covered
        if self.compact_every and batch_id > 0 and batch_id % self.compact_every == 0:
            with timer.phase("compact"):
                self.compact()
        timer.report()

    def compact(self) -> None:
        """Every micro-batch adds small files; serving reads slow down with them."""
        from delta.tables import DeltaTable

        for view in self.pipeline.views:
            DeltaTable.forPath(self.spark, self.locations.speed_partials(view.name)).optimize().executeCompaction()


def start_speed(
    spark: SparkSession, pipeline: Pipeline, settings: Settings, locations: Locations, *, once: bool = False
) -> StreamingQuery:
    """Start the speed stream (``once``: catch up with master, then stop).

    Master is ingest's table and coverage batch's: speed creates neither. Master must be there (see
    :func:`~lambda_pipeline.core.tables.wait_for_table`); a missing coverage means no batch ran yet.
    """
    require_table(spark, locations.master)
    setup_speed_tables(spark, pipeline, locations)
    checkpoint = locations.checkpoint("speed")
    # Used only when the checkpoint is new: nothing at or below the coverage needs reading.
    start = latest_coverage(spark, locations.coverage).master_version
    body = SpeedBatch(
        spark,
        pipeline,
        locations,
        OnceAppender(CheckpointAppId("speed", checkpoint), idempotent=settings.idempotent_writes),
        settings.speed.compact_every,
    )
    writer = (
        spark.readStream.format("delta")
        .option("startingVersion", start)
        .option("maxFilesPerTrigger", settings.speed.max_files_per_trigger)
        .load(locations.master)
        .writeStream.queryName(f"speed_{pipeline.name}")
        .option("checkpointLocation", checkpoint)
        .foreachBatch(body)
    )
    return with_trigger(writer, settings.speed.trigger, once=once).start()
