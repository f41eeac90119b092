"""``lambda-pipeline maintain``: compact and vacuum the tables, once or on a schedule.

Each table is written, and maintained, by one job (``core/compact_vacuum.py``, :func:`owner_of`): ingest
writes master, quarantine and the speed tables, the batch job the batch views and coverage. ``maintain`` is a
further application that commits to them, so before each run it takes the lease of every owner it must not
run beside, and refuses with one line while that owner runs:

- **master and quarantine**, on every store: ingest tags each master commit with the version it predicts, so
  no other process may commit to them while ingest runs;
- **every table**, where Delta's log store does not arbitrate between drivers (S3 with Delta's default
  ``S3SingleDriverLogStore``, ``core/log_store.py``): two applications committing to one table can both
  write the same version, and one commit is lost. There ``batch --every`` and ingest maintain their own
  tables, and ``maintain`` is for a deployment whose jobs are stopped.

Elsewhere (local disk, HDFS, S3 with a log store that arbitrates) compaction and vacuum never make a job's
commit fail, and ``maintain`` runs beside the jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from lambda_pipeline.core.compact_vacuum import INGESTS, Maintained, maintain, owner_of, tables_of
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.leases import Lease, LeaseHeld
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.log_store import arbitrates, log_store_class
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.schedule import repeat

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["owners_to_stop", "run_maintenance"]


def owners_to_stop(
    spark: SparkSession, pipeline: Pipeline, locations: Locations, tables: Sequence[str] | None
) -> dict[str, str]:
    """The jobs that must not run while ``maintain`` maintains ``tables`` (default: every table but master and
    quarantine), each with the first of its tables that requires it (see the module's docstring)."""
    every = tables_of(pipeline, locations)
    chosen = [name for name in every if (name in tables if tables else name not in INGESTS)]
    owners: dict[str, str] = {}
    for name in chosen:
        if name in INGESTS or not arbitrates(spark, every[name]):
            owners.setdefault(owner_of(name), name)
    return owners


def _refusal(spark: SparkSession, lease: Lease, table: str, path: str, held: LeaseHeld) -> str:
    if table in INGESTS and arbitrates(spark, path):
        return (
            f"maintain --table {table}: {held}. A running ingest maintains master and quarantine itself, every "
            "maintenance.interval"
        )
    holder = lease.current()
    who = holder.describe() if holder is not None else "an instance whose record is unreadable"
    store = (log_store_class(lambda key: spark.conf.get(key, None), path) or "").rsplit(".", 1)[-1]
    return (
        f"maintain: {path} is written by the {lease.job} job, which runs (lease held by {who}, "
        f"{lease.records.where}); on S3 with Delta's {store} only one application may write a table: "
        "batch --every and ingest maintain their own tables every maintenance.interval; run maintain only while "
        "they are stopped, or configure a log store that arbitrates (docs/s3.md)"
    )


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
    """Maintain ``tables`` (default: every table but master and quarantine) once, or every ``every`` seconds
    until interrupted, each run holding the leases of :func:`owners_to_stop`."""
    paths = tables_of(pipeline, locations)

    def once() -> None:
        leases: list[Lease] = []
        try:
            for job, table in sorted(owners_to_stop(spark, pipeline, locations, tables).items()):
                lease = Lease(spark, locations, job, locations.master if job == "ingest" else locations.coverage)
                try:
                    leases.append(lease.acquire())
                except LeaseHeld as held:
                    raise LambdaError(_refusal(spark, lease, table, paths[table], held)) from None
            for lease in leases:
                lease.check()
            on_run(maintain(spark, pipeline, locations, only=list(tables) if tables else None, on_table=on_table))
        finally:
            for lease in reversed(leases):
                lease.release()

    repeat(every, once)
