"""``lambda-pipeline batch --rollback``: serve the publication before the current one again.

The batch-view tables keep their earlier versions (Delta time travel) until VACUUM removes the files, so an
earlier publication is a coverage row away. Exact at every instant, in this order:

1. the speed partials of the tags the earlier publication does not cover are recomputed from master where
   the speed layer had purged them (they are covered by the current publication, so serving ignores them
   until step 2);
2. one append to the coverage table: the earlier publication's master version and view versions under a new
   run id, with ``restores`` naming it (provenance shows it).

The next batch run moves forward as usual (its coverage is newer than the restored one). Both leases are
held: no batch publishes and no ingest commits meanwhile, so run it while ingest is stopped.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import TYPE_CHECKING

from lambda_pipeline.batch_layer.job import publish_coverage
from lambda_pipeline.core.clock import utc_now, utc_text
from lambda_pipeline.core.coverage import Coverage, coverage_history, latest_coverage
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.leases import Lease
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.speed_layer.catch_up import catch_up

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["previous_publication", "rollback"]


def previous_publication(history: list[Coverage], current: Coverage) -> tuple[Coverage, Coverage]:
    """(the publication ``current`` replaced, the original publication ``current`` serves).

    A rollback of a rollback goes one further back: ``current`` stands for the publication it restores.
    """
    originals = [c for c in history if c.restores is None]
    base_id = current.restores or current.run_id
    at = next((i for i, c in enumerate(originals) if c.run_id == base_id), None)
    if at is None:
        raise LambdaError(f"batch --rollback: publication {base_id[:8]} is not in the coverage table's log")
    if at == 0:
        raise LambdaError(f"batch --rollback: publication {base_id[:8]} is the first one; there is none before it")
    return originals[at - 1], originals[at]


def rollback(spark: SparkSession, pipeline: Pipeline, locations: Locations) -> Coverage:
    """Publish the publication before the current one again (see the module's docstring)."""
    current = latest_coverage(spark, locations.coverage)
    if current.run_id == "none":
        raise LambdaError("batch --rollback: nothing was published in this work directory yet")
    target, base = previous_publication(coverage_history(spark, locations.coverage), current)
    retention = locations.settings.maintenance.retention
    # The publication after the target overwrote the batch views: VACUUM may delete the target's files once
    # that is older than the retention.
    if locations.settings.maintenance.outlived(base.published_at):
        raise LambdaError(
            f"batch --rollback: publication {target.run_id[:8]}'s batch views were replaced on "
            f"{utc_text(base.published_at, seconds=False)}, longer ago than maintenance.retention ({retention}): "
            "VACUUM may have deleted their files. Run a batch instead"
        )
    missing = sorted(set(target.view_versions) ^ {v.name for v in pipeline.views})
    if missing:
        raise LambdaError(
            f"batch --rollback: publication {target.run_id[:8]} was made with other views ({', '.join(missing)} "
            "differ); it cannot be served by this pipeline's definition"
        )
    changed = sorted(
        view.name
        for view in pipeline.views
        if target.view_fingerprints.get(view.name, view.fingerprint) != view.fingerprint
    )
    if changed:
        raise LambdaError(
            f"batch --rollback: publication {target.run_id[:8]} computed {', '.join(changed)} with an earlier "
            "definition; serving would refuse it. Run a batch instead"
        )
    ingest = Lease(spark, locations, "ingest", locations.master).acquire()
    try:
        batch = Lease(spark, locations, "batch", locations.coverage).acquire()
        try:
            restored = replace(target, run_id=uuid.uuid4().hex, published_at=utc_now(), restores=target.run_id)
            catch_up(spark, pipeline, locations, coverage=restored)
            return publish_coverage(spark, locations, restored)
        finally:
            batch.release()
    finally:
        ingest.release()
