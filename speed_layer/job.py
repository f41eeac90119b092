"""Speed layer: partial states, per ingest tag, for the master commits no batch covers yet.

**One hop.** The ingest micro-batch that appends events to master as tag ``t``
aggregates the same rows into every view's partials, keyed by (keys, window,
``t``), and commits them right after the master commit (:class:`SpeedWriter`).
No second streaming query sits between master and serving. The order is what
keeps the Lambda invariants at every instant:

1. master first: an event is in the master dataset before any layer counts it;
2. then the partials of tag ``t``: until they land, serving simply does not show
   the micro-batch yet (no double count: batch only covers tags it read);
3. a crash between the two replays the micro-batch; the master append is skipped
   (its commit carries the batch id), ``t`` is read back from that commit, and the
   partials are computed from what master holds for ``t``, unless a catch-up wrote
   them already.

**Catch-up** (:func:`catch_up`) recomputes, from master, the partials of the
uncovered tags a speed table lacks: a view added after data exists, or a new
speed table. Ingest runs it before its stream starts; ``lambda-pipeline speed``
runs it (or a full ``--rebuild``) while ingest is stopped.

Speed tables are partitioned by ``ingest_tag``: purging covered tags removes
whole partitions (no file rewritten), and appending a new tag never conflicts
with a purge. No state is kept across micro-batches: a late event is just an
old window in a new tag, counted immediately and absorbed by the next batch.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.streaming import OnceAppender, PhaseTimer
from lambda_pipeline.core.tables import (
    Locations,
    ensure_table,
    latest_coverage,
    partition_columns,
    require_table,
    table_version,
)
from lambda_pipeline.core.views import INGEST_TAG, View

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["SpeedWriter", "catch_up", "purge_covered", "setup_speed_tables", "speed_partials"]

SPEED_PARTITIONING = (INGEST_TAG,)


def speed_partials(events: DataFrame, pipeline: Pipeline, covered_through: int) -> dict[str, DataFrame]:
    """Pure: each view's partial states over the events that coverage does not include."""
    uncovered = events.filter(F.col(INGEST_TAG) > covered_through)
    return {view.name: _partials(view, uncovered) for view in pipeline.views}


def _partials(view: View, events: DataFrame) -> DataFrame:
    # One file per tag and view: a tag's partials are small, and serving reads every uncovered file.
    return view.partials(events, by_tag=True).coalesce(1)


def setup_speed_tables(spark: SparkSession, pipeline: Pipeline, locations: Locations) -> None:
    """The tables speed writes: each view's partials, empty, partitioned by ingest tag."""
    for view in pipeline.views:
        ensure_table(spark, locations.speed_partials(view.name), view.partial_schema(by_tag=True), SPEED_PARTITIONING)


def purge_covered(spark: SparkSession, pipeline: Pipeline, locations: Locations, covered_through: int) -> None:
    """Delete partials whose tag a published batch covers (serving ignores them already)."""
    from delta.tables import DeltaTable

    for view in pipeline.views:
        DeltaTable.forPath(spark, locations.speed_partials(view.name)).delete(F.col(INGEST_TAG) <= covered_through)


def present_tags(spark: SparkSession, path: str, above: int) -> set[int]:
    """The tags above ``above`` that the speed table at ``path`` holds partials for."""
    rows = spark.read.format("delta").load(path).filter(F.col(INGEST_TAG) > above).select(INGEST_TAG).distinct()
    return {int(row[0]) for row in rows.collect()}


@dataclass
class SpeedWriter:
    """The speed half of an ingest micro-batch: partials for its tag, then the purge of covered tags."""

    spark: SparkSession
    pipeline: Pipeline
    locations: Locations
    appender: OnceAppender
    compact_every: int
    purged_through: int = field(default=0)
    """Tags start at 1 (version 0 creates the master table), so nothing is at or below 0."""
    _legacy: list[str] | None = field(default=None, repr=False)

    def covered(self) -> int:
        return latest_coverage(self.spark, self.locations.coverage).master_version

    def write(self, events: DataFrame, tag: int, batch_id: int, timer: PhaseTimer, *, replay: bool) -> None:
        """Append every view's partials of ``events`` (all of tag ``tag``), once per micro-batch.

        ``replay``: the master commit of this micro-batch was already there, so a catch-up may have
        written the tag's partials too; a view that holds the tag is left alone.
        """
        with timer.phase("coverage"):
            covered = self.covered()
        if tag <= covered:  # a batch covered the tag before its partials landed: serving needs none
            return

        def one(view: View) -> None:
            path = self.locations.speed_partials(view.name)
            with timer.phase(f"commit_{view.name}"):
                if replay and tag in present_tags(self.spark, path, tag - 1):
                    return
                self.appender.append(self.spark, _partials(view, events), path, batch_id)

        with ThreadPoolExecutor(max_workers=len(self.pipeline.views)) as pool:
            for future in [pool.submit(one, view) for view in self.pipeline.views]:
                future.result()

    def maintain(self, batch_id: int, timer: PhaseTimer) -> None:
        """Purge once a newer coverage makes partials redundant; compact tables of the old layout."""
        covered = self.covered()
        if covered > self.purged_through:
            with timer.phase("purge"):
                purge_covered(self.spark, self.pipeline, self.locations, covered)
            self.purged_through = covered
        if self.compact_every and batch_id > 0 and batch_id % self.compact_every == 0 and self.legacy():
            from delta.tables import DeltaTable

            with timer.phase("compact"):
                for path in self.legacy():
                    DeltaTable.forPath(self.spark, path).optimize().executeCompaction()

    def legacy(self) -> list[str]:
        """Speed tables laid out before partitioning by tag: their small files need compaction."""
        if self._legacy is None:
            paths = [self.locations.speed_partials(v.name) for v in self.pipeline.views]
            self._legacy = [p for p in paths if partition_columns(self.spark, p) != list(SPEED_PARTITIONING)]
        return self._legacy


def catch_up(spark: SparkSession, pipeline: Pipeline, locations: Locations, *, rebuild: bool = False) -> dict[str, int]:
    """Recompute from master the partials of the uncovered tags each speed table lacks; tags written per view.

    Exact by construction: a tag's partials are one commit, so a table holds all of them or none, and only
    absent tags are computed. ``rebuild`` rewrites every speed table from master in one commit each (also
    moving an old table to the partitioned layout). Never run it beside a running ingest: ingest writes
    the partials of the tags it creates, and a catch-up could compute a tag whose partials are in flight.
    """
    require_table(spark, locations.master)
    covered = latest_coverage(spark, locations.coverage).master_version
    uncovered = spark.read.format("delta").load(locations.master).filter(F.col(INGEST_TAG) > covered)
    written: dict[str, int] = {}
    for view in pipeline.views:
        path = locations.speed_partials(view.name)
        if rebuild and table_version(spark, path) is not None:
            partials = view.partials(uncovered, by_tag=True)
            (
                partials.write.format("delta")
                .mode("overwrite")
                .option("overwriteSchema", "true")
                .option("userMetadata", "speed-rebuild")
                .partitionBy(*SPEED_PARTITIONING)
                .save(path)
            )
            written[view.name] = len(present_tags(spark, path, covered))
            continue
        ensure_table(spark, path, view.partial_schema(by_tag=True), SPEED_PARTITIONING)
        have = present_tags(spark, path, covered)
        missing = uncovered.filter(~F.col(INGEST_TAG).isin(sorted(have))) if have else uncovered
        partials = view.partials(missing, by_tag=True).persist()
        try:
            tags = {int(row[0]) for row in partials.select(INGEST_TAG).distinct().collect()}
            if tags:
                partials.write.format("delta").mode("append").option("userMetadata", "speed-catch-up").save(path)
            written[view.name] = len(tags)
        finally:
            partials.unpersist()
    return written
