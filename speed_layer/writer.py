"""The speed layer's part of each ingest micro-batch: every view's partials of the tag master just took.

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

from lambda_pipeline.core.coverage import Coverage, latest_coverage
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.streaming import OnceAppender, PhaseTimer
from lambda_pipeline.core.tables import partition_columns
from lambda_pipeline.core.tag_writers import IngestContext
from lambda_pipeline.core.views import View
from lambda_pipeline.speed_layer.catch_up import (
    catch_up,
    changed_views,
    needs_catch_up,
    present_tags,
    purge_covered,
    setup_speed_tables,
)
from lambda_pipeline.speed_layer.partials import SPEED_PARTITIONING, tag_partials

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["SpeedWriter"]


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

    @classmethod
    def for_ingest(cls, context: IngestContext) -> SpeedWriter:
        """The writer an ingest job runs in its micro-batches (a ``TagWriterFactory``)."""
        return cls(
            context.spark,
            context.pipeline,
            context.locations,
            context.appender,
            context.settings.speed.compact_every,
        )

    def prepare(self) -> None:
        """Before ingest's stream starts: every speed table exists and holds the partials of every uncovered tag.

        A view whose definition changed gets its partials recomputed with the new one; a view added since
        (or one a crash left a tag behind) gets the tags it lacks.
        """
        lagging = needs_catch_up(self.spark, self.pipeline, self.locations)  # before creating new views' tables
        changed = changed_views(self.spark, self.pipeline, self.locations)
        setup_speed_tables(self.spark, self.pipeline, self.locations)
        if changed:
            catch_up(self.spark, self.pipeline, self.locations, rebuild=True, only=changed)
        lagging = [view for view in lagging if view not in changed]
        if lagging:
            catch_up(self.spark, self.pipeline, self.locations, only=lagging)

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
                self.appender.append(self.spark, tag_partials(view, events), path, batch_id)

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
