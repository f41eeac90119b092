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

from lambda_pipeline.core.coverage import Coverage, latest_coverage
from lambda_pipeline.core.deltalog import commits
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.streaming import OnceAppender, PhaseTimer
from lambda_pipeline.core.tables import (
    FINGERPRINT_PROPERTY,
    ensure_table,
    partition_columns,
    require_table,
    set_table_property,
    table_property,
    table_version,
)
from lambda_pipeline.core.views import INGEST_TAG, View

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "SpeedWriter",
    "catch_up",
    "changed_views",
    "needs_catch_up",
    "present_tags",
    "purge_covered",
    "setup_speed_tables",
]

SPEED_PARTITIONING = (INGEST_TAG,)


def _partials(view: View, events: DataFrame) -> DataFrame:
    # One file per tag and view: a tag's partials are small, and serving reads every uncovered file.
    return view.partials(events, by_tag=True).coalesce(1)


def setup_speed_tables(spark: SparkSession, pipeline: Pipeline, locations: Locations) -> None:
    """The tables speed writes: each view's partials, empty, partitioned by ingest tag."""
    for view in pipeline.views:
        path = locations.speed_partials(view.name)
        stamp = {FINGERPRINT_PROPERTY: view.fingerprint}
        ensure_table(spark, path, view.partial_schema(by_tag=True), SPEED_PARTITIONING, stamp)


def purge_covered(spark: SparkSession, pipeline: Pipeline, locations: Locations, coverage: Coverage) -> None:
    """Delete partials whose tag the published batch view covers (serving ignores them already)."""
    from delta.tables import DeltaTable

    for view in pipeline.views:
        covered = coverage.covered_for(view.name)
        if covered > 0:
            DeltaTable.forPath(spark, locations.speed_partials(view.name)).delete(F.col(INGEST_TAG) <= covered)


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

    def coverage(self) -> Coverage:
        return latest_coverage(self.spark, self.locations.coverage)

    def write(self, events: DataFrame, tag: int, batch_id: int, timer: PhaseTimer, *, replay: bool) -> None:
        """Append every view's partials of ``events`` (all of tag ``tag``), once per micro-batch.

        ``replay``: the master commit of this micro-batch was already there, so a catch-up may have
        written the tag's partials too; a view that holds the tag is left alone.
        """
        with timer.phase("coverage"):
            coverage = self.coverage()

        def one(view: View) -> None:
            if tag <= coverage.covered_for(view.name):  # a batch covered the tag first: serving needs none
                return
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
        coverage = self.coverage()
        if coverage.master_version > self.purged_through:
            with timer.phase("purge"):
                purge_covered(self.spark, self.pipeline, self.locations, coverage)
            self.purged_through = coverage.master_version
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


def _has_newest_tag(spark: SparkSession, path: str, tag: int, *, scan: int = 20) -> bool:
    """Whether one of the newest commits of the speed table at ``path`` added partials of ``tag``.

    Reads commit files only (no Spark job). Ingest writes a tag's partials before it writes the next tag,
    so once a table holds master's newest tag it holds every tag before it.
    """
    newest = table_version(spark, path)
    if newest is None:
        return False
    for _version, actions in commits(spark, path, newest, scan):
        for action in actions:
            values = (action.get("add") or {}).get("partitionValues") or {}
            if values.get(INGEST_TAG) == str(tag):
                return True
    return False


def needs_catch_up(spark: SparkSession, pipeline: Pipeline, locations: Locations) -> list[str]:
    """The views whose speed table may lack uncovered tags: none on a restart after a clean stop.

    Checks only master's newest tag, in the commit files; a view that has it has every tag before it.
    """
    newest = table_version(spark, locations.master) or 0
    coverage = latest_coverage(spark, locations.coverage)
    return [
        view.name
        for view in pipeline.views
        if newest > coverage.covered_for(view.name)
        and not _has_newest_tag(spark, locations.speed_partials(view.name), newest)
    ]


def catch_up(
    spark: SparkSession,
    pipeline: Pipeline,
    locations: Locations,
    *,
    rebuild: bool = False,
    only: list[str] | None = None,
    coverage: Coverage | None = None,
) -> dict[str, int]:
    """Recompute from master the partials of the uncovered tags each speed table lacks; tags written per view.

    Exact by construction: a tag's partials are one commit, so a table holds all of them or none, and only
    absent tags are computed. ``rebuild`` rewrites every speed table from master in one commit each (also
    moving an old table to the partitioned layout). ``only`` limits the work to those views (see
    :func:`needs_catch_up`). ``coverage``: the tags above which partials are needed (default: the newest
    publication; a rollback passes the one it is about to serve again). Never run it beside a running ingest:
    ingest writes the partials of the tags it creates, and a catch-up could compute a tag in flight.
    """
    require_table(spark, locations.master)
    coverage = coverage or latest_coverage(spark, locations.coverage)
    master = spark.read.format("delta").load(locations.master)
    written: dict[str, int] = {}
    for view in pipeline.views:
        if only is not None and view.name not in only:
            continue
        covered = coverage.covered_for(view.name)
        uncovered = master.filter(F.col(INGEST_TAG) > covered)
        path = locations.speed_partials(view.name)
        stamp = {FINGERPRINT_PROPERTY: view.fingerprint}
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
            set_table_property(spark, path, FINGERPRINT_PROPERTY, view.fingerprint)
            continue
        ensure_table(spark, path, view.partial_schema(by_tag=True), SPEED_PARTITIONING, stamp)
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
        set_table_property(spark, path, FINGERPRINT_PROPERTY, view.fingerprint)
    return written


def changed_views(spark: SparkSession, pipeline: Pipeline, locations: Locations) -> list[str]:
    """The views whose speed table holds partials of another definition (its fingerprint differs)."""
    changed = []
    for view in pipeline.views:
        stamped = table_property(spark, locations.speed_partials(view.name), FINGERPRINT_PROPERTY)
        if stamped is not None and stamped != view.fingerprint:
            changed.append(view.name)
    return changed
