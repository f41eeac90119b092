"""``lambda-pipeline refresh``: recompute views from master after a view's definition or the source changed.

``--view NAME``: serving refuses a view whose batch view or speed partials were computed with another
definition (their fingerprints differ from the view's), and a new view whose states are not computed yet; the
other views stay served throughout. A refresh recomputes the view's speed partials from master for every
uncovered tag (one overwrite of its speed table, holding ingest's lease: ingest must be stopped), then runs a
batch, which publishes every view with the current definitions. From then on the view is served again, exactly.

``--backfill FIELD``: a field added to the source later is filled for past events from the raw text master keeps
(:mod:`lambda_pipeline.maintenance.backfill`), then every view that reads it is recomputed the same way.

Ingest does the speed half of a changed view by itself when it starts; the next batch does the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lambda_pipeline.batch_layer.job import run_batch
from lambda_pipeline.core.coverage import Coverage
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.leases import Lease
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.tables import require_table
from lambda_pipeline.maintenance.backfill import BackfillReport, check_fields, fill_fields
from lambda_pipeline.speed_layer.catch_up import catch_up

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["Refreshed", "refresh"]


@dataclass(frozen=True)
class Refreshed:
    """What a refresh did: the views recomputed, the backfill's counts, the coverage now served."""

    views: tuple[str, ...]
    backfill: BackfillReport | None
    coverage: Coverage


def refresh(
    spark: SparkSession,
    pipeline: Pipeline,
    locations: Locations,
    view_name: str | None = None,
    *,
    backfill: Sequence[str] = (),
) -> Refreshed:
    """Backfill ``backfill``'s fields, recompute ``view_name`` and the views reading them, publish a batch."""
    names = [v.name for v in pipeline.views]
    if view_name is not None and view_name not in names:
        raise LambdaError(f"refresh --view {view_name}: no such view; the views are: {', '.join(names)}")
    if view_name is None and not backfill:
        raise LambdaError("refresh: name a view (--view NAME) or a field to backfill (--backfill FIELD)")
    fields = list(dict.fromkeys(backfill))
    check_fields(pipeline.source, fields)
    views = [v.name for v in pipeline.views if v.name == view_name or (fields and v.reads.intersection(fields))]
    require_table(spark, locations.master)
    lease = Lease(spark, locations, "ingest", locations.master).acquire()
    try:
        report = fill_fields(spark, pipeline.source, locations.master, fields) if fields else None
        if views:
            catch_up(spark, pipeline, locations, rebuild=True, only=views)
    finally:
        lease.release()
    coverage, _ = run_batch(spark, pipeline, locations, force=True)
    return Refreshed(tuple(views), report, coverage)
