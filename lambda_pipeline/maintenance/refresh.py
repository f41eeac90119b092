"""``lambda-pipeline refresh --view NAME``: recompute one view from master after its definition changed.

Serving refuses a view whose batch view or speed partials were computed with another definition (their
fingerprints differ from the view's), and a new view whose states are not computed yet; the other views stay
served throughout. A refresh recomputes the view's speed partials from master for every uncovered tag (one
overwrite of its speed table, holding ingest's lease: ingest must be stopped), then runs a batch, which
publishes every view with the current definitions. From then on the view is served again, exactly.

Ingest does the speed half by itself when it starts and finds a changed view; the next batch does the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lambda_pipeline.batch_layer.job import run_batch
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.leases import Lease
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.tables import Coverage, Locations, require_table
from lambda_pipeline.speed_layer.job import catch_up

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["refresh"]


def refresh(spark: SparkSession, pipeline: Pipeline, locations: Locations, view_name: str) -> Coverage:
    """Recompute ``view_name`` (speed, then a batch publishing every view); the coverage now served."""
    names = [v.name for v in pipeline.views]
    if view_name not in names:
        raise LambdaError(f"refresh --view {view_name}: no such view; the views are: {', '.join(names)}")
    require_table(spark, locations.master)
    lease = Lease(spark, locations, "ingest", locations.master).acquire()
    try:
        catch_up(spark, pipeline, locations, rebuild=True, only=[view_name])
    finally:
        lease.release()
    coverage, _ = run_batch(spark, pipeline, locations, force=True)
    return coverage
