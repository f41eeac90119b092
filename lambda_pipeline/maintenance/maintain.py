"""``lambda-pipeline maintain``: compact and vacuum the tables, once or on a schedule, beside running jobs.

Compaction and vacuum never conflict with the jobs' commits (``core/compact_vacuum.py``), except on master and
quarantine: ingest tags each master commit with the version it predicts, so no other process may commit to
them while ingest runs. A running ingest maintains those two itself; naming them here takes ingest's lease,
which refuses while ingest runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from lambda_pipeline.core.compact_vacuum import INGESTS, Maintained, maintain
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.leases import Lease, LeaseHeld
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.schedule import repeat

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["run_maintenance"]


def run_maintenance(
    spark: SparkSession,
    pipeline: Pipeline,
    locations: Locations,
    *,
    tables: Sequence[str] | None = None,
    every: float | None = None,
    on_table: Callable[[Maintained], None] = lambda done: None,
    on_run: Callable[[list[Maintained]], None] = lambda done: None,
) -> None:
    """Maintain ``tables`` (default: every table) once, or every ``every`` seconds until interrupted."""
    ingests = sorted(set(tables or []) & INGESTS)

    def once() -> None:
        lease = None
        if ingests:  # only while ingest is stopped: it tags master commits with the versions it predicts
            try:
                lease = Lease(spark, locations, "ingest", locations.master).acquire()
            except LeaseHeld as held:
                raise LambdaError(
                    f"maintain --table {' --table '.join(ingests)}: {held}. A running ingest maintains master and "
                    "quarantine itself, every maintenance.interval"
                ) from None
        try:
            on_run(maintain(spark, pipeline, locations, only=list(tables) if tables else None, on_table=on_table))
        finally:
            if lease is not None:
                lease.release()

    repeat(every, once)
