"""Catching the speed tables up with master: the partials of the uncovered tags a speed table lacks.

A view added after data exists, a view whose definition changed, or a speed table that lost a tag (a crash
between the master commit and the speed commit, with the catch-up run before the replay) gets its partials
recomputed from master. Ingest runs this before its stream starts (:class:`.writer.SpeedWriter.prepare`);
``lambda-pipeline speed`` runs it, or a full ``--rebuild``, while ingest is stopped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from lambda_pipeline.core.coverage import Coverage, latest_coverage
from lambda_pipeline.core.deltalog import commits
from lambda_pipeline.core.leases import Lease
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.tables import (
    FINGERPRINT_PROPERTY,
    ensure_table,
    require_table,
    set_table_properties,
    set_table_property,
    table_property,
    table_version,
)
from lambda_pipeline.core.views import INGEST_TAG
from lambda_pipeline.speed_layer.partials import SPEED_PARTITIONING, uncovered

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "catch_up",
    "changed_views",
    "needs_catch_up",
    "present_tags",
    "purge_covered",
    "run_catch_up",
    "setup_speed_tables",
]


def setup_speed_tables(spark: SparkSession, pipeline: Pipeline, locations: Locations) -> None:
    """The tables speed writes: each view's partials, empty, partitioned by ingest tag; each with the log
    properties of ``maintenance`` (set on tables made without them too)."""
    log = locations.settings.maintenance.log_properties()
    for view in pipeline.views:
        path = locations.speed_partials(view.name)
        stamp = {FINGERPRINT_PROPERTY: view.fingerprint, **log}
        ensure_table(spark, path, view.partial_schema(by_tag=True), SPEED_PARTITIONING, stamp)
        set_table_properties(spark, path, log)


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
        events = uncovered(master, covered)
        path = locations.speed_partials(view.name)
        stamp = {FINGERPRINT_PROPERTY: view.fingerprint, **locations.settings.maintenance.log_properties()}
        if rebuild and table_version(spark, path) is not None:
            partials = view.partials(events, by_tag=True)
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
        missing = events.filter(~F.col(INGEST_TAG).isin(sorted(have))) if have else events
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


def run_catch_up(
    spark: SparkSession, pipeline: Pipeline, locations: Locations, *, rebuild: bool = False
) -> dict[str, int]:
    """:func:`catch_up` (or a ``rebuild``) as the ``speed`` verb runs it: holding ingest's lease.

    The speed tables are ingest's: a catch-up beside a running ingest could compute a tag in flight, so it
    refuses to start while ingest runs, naming it.
    """
    lease = Lease(spark, locations, "ingest", locations.master).acquire()
    try:
        return catch_up(spark, pipeline, locations, rebuild=rebuild)
    finally:
        lease.release()
