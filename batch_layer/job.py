"""Batch layer: recompute every view from a pinned snapshot of the master dataset.

A run has two steps, and a crash between them is harmless:

1. **stage**: read master at its newest version ``V``, deduplicate exactly by
   event id, and overwrite each batch-view table (only this job writes them;
   readers are pinned to older versions, so nothing they read changes);
2. **publish**: append one coverage row naming ``V`` and the view versions
   just written. That single commit is the publication; until it lands, the
   serving layer keeps reading the previous (coverage, view) pair.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from lambda_pipeline.core.coverage import COVERAGE_SCHEMA, Coverage, latest_coverage
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.leases import Lease
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.tables import ensure_table, latest_version, require_table
from lambda_pipeline.core.views import INGEST_TAG, EventSource, View

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "StagedBatch",
    "deduplicate",
    "publish",
    "require_columns",
    "run_batch",
    "setup_batch_tables",
    "stage_batch",
]


BROADCAST_REPEATS = 1_000_000
"""Up to this many repeated ids are broadcast: the snapshot is then never shuffled for dedup."""
_FIRST_TAG = "_first_tag"


def repeated_ids(events: DataFrame, source: EventSource, partitions: int | None = None) -> DataFrame:
    """The event ids that occur more than once, each with the smallest ingest tag it came in with.

    Ids are nearly all distinct, so a partial aggregation before the shuffle would reduce nothing:
    shuffle the (id, tag) pairs once, then count.
    """
    pairs = events.select(source.id_column, INGEST_TAG)
    if partitions:
        pairs = pairs.repartition(partitions, source.id_column)
    return (
        pairs.groupBy(source.id_column)
        .agg(F.count(F.lit(1)).alias("_copies"), F.min(INGEST_TAG).alias(_FIRST_TAG))
        .filter(F.col("_copies") > 1)
        .drop("_copies")
    )


def deduplicate(
    events: DataFrame, source: EventSource, repeats: DataFrame | None = None, *, broadcast: bool = False
) -> DataFrame:
    """Exactly one row per event id: the copy with the smallest ingest tag.

    One pass over the events, joined with the (rare) repeated ids. Exact because the
    ingest job writes each id at most once per commit, so the smallest tag names one copy.
    """
    repeats = repeated_ids(events, source) if repeats is None else repeats
    joined = events.join(F.broadcast(repeats) if broadcast else repeats, source.id_column, "left")
    keep = F.col(_FIRST_TAG).isNull() | (F.col(INGEST_TAG) == F.col(_FIRST_TAG))
    return joined.filter(keep).select(*events.columns)


def setup_batch_tables(spark: SparkSession, pipeline: Pipeline, locations: Locations) -> None:
    """The tables batch writes: coverage, and each batch view empty (version 0 = nothing covered yet)."""
    ensure_table(spark, locations.coverage, COVERAGE_SCHEMA)
    for view in pipeline.views:
        ensure_table(spark, locations.batch_view(view.name), view.partial_schema(by_tag=False))


@dataclass(frozen=True)
class StagedBatch:
    """Batch views written but not yet published."""

    run_id: str
    master_version: int
    view_versions: dict[str, int]
    master_events: int
    seconds: float
    view_fingerprints: dict[str, str] = field(default_factory=dict)


def stage_batch(
    spark: SparkSession, pipeline: Pipeline, locations: Locations, *, master_version: int | None = None
) -> StagedBatch:
    """Recompute every view at one master version and write the batch-view tables."""
    started = time.perf_counter()
    version = latest_version(spark, locations.master) if master_version is None else master_version
    snapshot = spark.read.format("delta").option("versionAsOf", version).load(locations.master)
    require_columns(snapshot, pipeline, locations.master)
    # Settle the repeated ids first (one pass over the id column): usually there are none, and the
    # views then read the snapshot as it is, with no join and no shuffle of whole rows.
    partitions = 4 * spark.sparkContext.defaultParallelism
    repeats = repeated_ids(snapshot, pipeline.source, partitions).persist()
    try:
        repeat_count = repeats.count()
        events = (
            snapshot
            if repeat_count == 0
            else deduplicate(snapshot, pipeline.source, repeats, broadcast=repeat_count <= BROADCAST_REPEATS)
        )
        versions: dict[str, int] = {}
        for view in pipeline.views:
            path = locations.batch_view(view.name)
            _write_view(view, events, path)
            versions[view.name] = latest_version(spark, path)
    finally:
        repeats.unpersist()
    master_events = snapshot.count()  # answered from Delta's file statistics
    fingerprints = {view.name: view.fingerprint for view in pipeline.views}
    seconds = time.perf_counter() - started
    return StagedBatch(uuid.uuid4().hex, version, versions, master_events, seconds, fingerprints)


def require_columns(master: DataFrame, pipeline: Pipeline, path: str) -> None:
    """Refuse, saying what to run, when a view reads a source field that master has no column for yet."""
    missing = sorted({column for view in pipeline.views for column in view.reads} - set(master.columns))
    if missing:
        raise LambdaError(
            f"master table {path} has no column {', '.join(repr(c) for c in missing)} that a view reads: the "
            "field was added to the source after these events were ingested. Start ingest once with the new "
            "source definition (it adds the column), or fill past events with 'lambda-pipeline refresh "
            f"--backfill {missing[0]}'."
        )


def _write_view(view: View, events: DataFrame, path: str) -> None:
    # overwriteSchema: a changed view (a new measure) replaces its table's schema with the new definition's.
    partials = view.partials(events, by_tag=False)
    partials.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path)


def publish(spark: SparkSession, locations: Locations, staged: StagedBatch) -> Coverage:
    """Make a staged batch visible: one append to the coverage table."""
    published_at = datetime.now()  # naive local time: how PySpark reads and writes timestamps
    coverage = Coverage(
        staged.run_id,
        staged.master_version,
        staged.view_versions,
        staged.master_events,
        published_at,
        view_fingerprints=staged.view_fingerprints,
    )
    return publish_coverage(spark, locations, coverage)


def publish_coverage(spark: SparkSession, locations: Locations, coverage: Coverage) -> Coverage:
    """Append ``coverage``'s row, its record in the commit's ``userMetadata`` (readers pin from the log)."""
    row = (coverage.run_id, coverage.master_version, coverage.view_versions, coverage.master_events)
    frame = spark.createDataFrame([(*row, coverage.published_at)], COVERAGE_SCHEMA)
    frame.write.format("delta").mode("append").option("userMetadata", coverage.mark()).save(locations.coverage)
    return coverage


def run_batch(
    spark: SparkSession, pipeline: Pipeline, locations: Locations, *, force: bool = False
) -> tuple[Coverage, StagedBatch | None]:
    """Stage and publish, unless the newest coverage already covers master's newest version.

    Returns the coverage now served and the staged run (``None`` when nothing was to do),
    so re-running a batch job on an unchanged master commits nothing.
    """
    master_version = require_table(spark, locations.master)  # ingest creates it
    setup_batch_tables(spark, pipeline, locations)
    # One batch run at a time: a second one refuses to start, naming the first (core/leases.py).
    lease = Lease(spark, locations, "batch", locations.coverage).acquire()
    try:
        current = latest_coverage(spark, locations.coverage)
        if (
            not force
            and current.master_version >= master_version
            and all(v.name in current.view_versions for v in pipeline.views)
        ):
            return current, None
        staged = stage_batch(spark, pipeline, locations, master_version=master_version)
        lease.check()  # a run that lost its lease while staging publishes nothing
        return publish(spark, locations, staged), staged
    finally:
        lease.release()
