"""Batch layer: recompute every view from a pinned snapshot of the master dataset.

A run has two steps, and a crash between them is harmless:

1. **stage**: read master at its newest version ``V``, deduplicate exactly by
   event id, and overwrite each batch-view table (only this job writes them;
   readers are pinned to older versions, so nothing they read changes);
2. **publish**: append one coverage row naming ``V`` and the view versions
   just written. That single commit is the publication; until it lands, the
   serving layer keeps reading the previous (coverage, view) pair.

The batch job also maintains the tables it writes (:func:`run_batches`): after a run, once
``maintenance.interval`` passed since the coverage table's last maintenance, it compacts and vacuums coverage
and vacuums the batch views, under its lease. On S3 with Delta's ``S3SingleDriverLogStore`` no other
application may commit to them (``core/log_store.py``); there ``batch --every`` also holds its lease for its
whole life, so that ``maintain``, ``batch --rollback`` or a second batch job cannot commit between two runs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lambda_pipeline.batch_layer.recompute import BROADCAST_REPEATS, deduplicate, repeated_ids, require_columns
from lambda_pipeline.core.clock import utc_now
from lambda_pipeline.core.compact_vacuum import Maintained, maintain, maintenance_due
from lambda_pipeline.core.coverage import COVERAGE_SCHEMA, Coverage, latest_coverage
from lambda_pipeline.core.durations import duration_seconds
from lambda_pipeline.core.leases import Lease
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.log_store import arbitrates
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.schedule import repeat
from lambda_pipeline.core.tables import ensure_table, latest_version, require_table, wait_for_table
from lambda_pipeline.core.views import View

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "MASTER_WAIT_SECONDS",
    "StagedBatch",
    "batch_lease",
    "maintain_batch_tables",
    "publish",
    "publish_coverage",
    "run_batch",
    "run_batches",
    "setup_batch_tables",
    "stage_batch",
]


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


def _write_view(view: View, events: DataFrame, path: str) -> None:
    # overwriteSchema: a changed view (a new measure) replaces its table's schema with the new definition's.
    partials = view.partials(events, by_tag=False)
    partials.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path)


def publish(spark: SparkSession, locations: Locations, staged: StagedBatch) -> Coverage:
    """Make a staged batch visible: one append to the coverage table."""
    coverage = Coverage(
        staged.run_id,
        staged.master_version,
        staged.view_versions,
        staged.master_events,
        utc_now(),  # aware: PySpark would read a naive time as the driver's local time
        view_fingerprints=staged.view_fingerprints,
    )
    return publish_coverage(spark, locations, coverage)


def publish_coverage(spark: SparkSession, locations: Locations, coverage: Coverage) -> Coverage:
    """Append ``coverage``'s row, its record in the commit's ``userMetadata`` (readers pin from the log).

    ``published_at`` is aware UTC (Coverage makes it so), so the row holds the same instant whatever the
    driver's time zone.
    """
    row = (coverage.run_id, coverage.master_version, coverage.view_versions, coverage.master_events)
    frame = spark.createDataFrame([(*row, coverage.published_at)], COVERAGE_SCHEMA)
    frame.write.format("delta").mode("append").option("userMetadata", coverage.mark()).save(locations.coverage)
    return coverage


def batch_lease(spark: SparkSession, locations: Locations) -> Lease:
    """The batch job's lease (not taken yet): one batch job at a time per work directory (core/leases.py)."""
    return Lease(spark, locations, "batch", locations.coverage)


def run_batch(
    spark: SparkSession,
    pipeline: Pipeline,
    locations: Locations,
    *,
    force: bool = False,
    lease: Lease | None = None,
) -> tuple[Coverage, StagedBatch | None]:
    """Stage and publish, unless the newest coverage already covers master's newest version.

    Returns the coverage now served and the staged run (``None`` when nothing was to do),
    so re-running a batch job on an unchanged master commits nothing. ``lease``: the batch lease the caller
    holds already (else this run takes it and gives it up).
    """
    master_version = require_table(spark, locations.master)  # ingest creates it
    setup_batch_tables(spark, pipeline, locations)
    # One batch run at a time: a second one refuses to start, naming the first (core/leases.py).
    held = lease
    if lease is None:
        lease = batch_lease(spark, locations).acquire()
    else:
        lease.check()
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
        if held is None:
            lease.release()


def maintain_batch_tables(
    spark: SparkSession,
    pipeline: Pipeline,
    locations: Locations,
    lease: Lease,
    *,
    on_table: Callable[[Maintained], None] = lambda done: None,
) -> list[Maintained] | None:
    """Compact and vacuum coverage and vacuum the batch views if ``maintenance.interval`` passed since the last
    maintenance (:func:`~lambda_pipeline.core.compact_vacuum.maintenance_due`); None when not due.

    The caller holds ``lease``: these are commits of the batch job's (see the module's docstring).
    """
    every = duration_seconds(locations.settings.maintenance.interval)
    if not maintenance_due(spark, locations.coverage, every):
        return None
    tables = ["coverage", *(f"batch.{view.name}" for view in pipeline.views)]
    return maintain(spark, pipeline, locations, only=tables, before_table=lambda name: lease.check(), on_table=on_table)


MASTER_WAIT_SECONDS = 600.0
"""How long a batch job started on a schedule waits for ingest to create master (they often start together)."""


def run_batches(
    spark: SparkSession,
    pipeline: Pipeline,
    locations: Locations,
    *,
    every: float | None = None,
    force: bool = False,
    on_run: Callable[[Coverage, StagedBatch | None], None] = lambda coverage, staged: None,
    on_wait: Callable[[str], None] | None = None,
    on_maintained: Callable[[Maintained], None] = lambda done: None,
) -> None:
    """:func:`run_batch` once, or every ``every`` seconds until interrupted; ``on_run`` hears each result.

    After each run the job maintains its tables when due (:func:`maintain_batch_tables`; ``on_maintained``
    hears each table's report). On a schedule, the job first waits (bounded) for ingest to create master:
    both often start together. On a schedule over a log store that does not arbitrate between drivers, the
    lease is held from the start to the end (see the module's docstring); else it is taken for each run.
    """
    whole_life = None
    if every is not None and not arbitrates(spark, locations.coverage):
        whole_life = batch_lease(spark, locations).acquire()  # a second batch job is refused at once

    def once() -> None:
        lease = whole_life or batch_lease(spark, locations).acquire()
        try:
            on_run(*run_batch(spark, pipeline, locations, force=force, lease=lease))
            maintain_batch_tables(spark, pipeline, locations, lease, on_table=on_maintained)
        finally:
            if lease is not whole_life:
                lease.release()

    try:
        if every is not None:
            wait_for_table(spark, locations.master, timeout=MASTER_WAIT_SECONDS, on_wait=on_wait)
        repeat(every, once)
    finally:
        if whole_life is not None:
            whole_life.release()
