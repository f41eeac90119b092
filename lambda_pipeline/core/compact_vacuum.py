"""Table maintenance for runs of weeks: compaction and vacuum of every table, without failing a writer.

Which Delta operations, on which tables, by whom, and why none can make a writer fail:

- **Master and quarantine are maintained by ingest itself**: ingest tags each master commit with the version
  it predicts for it, so no other process may commit to master while ingest runs. It compacts them between
  two micro-batches every ``maintenance.ingest_compact_every`` (a compaction is a commit), and vacuums them
  every ``maintenance.interval`` in a thread beside its micro-batches: their VACUUM runs with Delta's
  ``vacuum.logging.enabled`` off, so it writes no ``VACUUM START`` / ``END`` commit and cannot move a
  version. ``maintain`` compacts them only when asked (``--table master``) and only while ingest is stopped
  (it takes ingest's lease).
- **OPTIMIZE** (bin-packing, ``executeCompaction``) on master, quarantine and the coverage table, once one
  holds ``maintenance.compact_min_files`` files: their writers only append, and a blind append and a
  compaction (``dataChange=false``) never conflict. Not on a batch view (each batch run overwrites it whole,
  and an overwrite concurrent with a compaction would conflict), nor on a speed table of the partitioned
  layout (ingest writes one file per tag already; the purge of covered tags deletes whole partitions, which
  would conflict with a compaction that rewrote them).
  Compaction writes files of up to ``maintenance.compact_target_mb`` and rewrites only the files under a
  quarter of it (:data:`SMALL_FILE_SHARE`; Delta's ``optimize.minFileSize``): what the micro-batches wrote
  since the last run, never a file an earlier run wrote of that size or more. Delta's default of 1 GB made
  every run rewrite the whole table until it passed 1 GB; the target alone as the threshold still rewrote
  each run's last, partly filled file and every earlier append larger than the micro-batches (a backlog's).
  Ingest pauses for its compaction, so a run costs what came since: about 1 s per 30 MB on 2 cores.
- **VACUUM** on every table with ``maintenance.retention``: it deletes only data files that left the table
  more than that long ago, so no reader pinned within the retention loses a file. Its log entries
  (``VACUUM START`` / ``END``, not written for master and quarantine) carry no data action and conflict with
  no commit.

**Who maintains what.** Each table is maintained by the job that writes it (:func:`owner_of`): ingest compacts
and vacuums master and quarantine and vacuums its speed tables (``ingestion/upkeep.py``; its vacuums write no
log entries); the batch job compacts and vacuums coverage and vacuums the batch views after a run, once
``maintenance.interval`` passed since the last maintenance the coverage table's log records
(:func:`maintenance_due`), checking its lease before each table. On S3 with Delta's ``S3SingleDriverLogStore``
that is the only way: no second application may commit to a table (``core/log_store.py``), and ``maintain``
refuses while the owner runs. Elsewhere ``maintain`` may also run beside them.

The retention rule: it must outlast the longest batch run (a run reads master at one version from start to
publication), the longest query (``serve.query_timeout``) and any ``--as-of`` you want to keep answering.
Settings refuse less than 1 hour or less than the query timeout; the serving layer refuses an ``--as-of``
older than the retention with a message that says so.

Delta's own log clean-up keeps each ``_delta_log`` bounded (``MaintenanceSettings.log_properties``; ingest sets
them on master, quarantine and the speed tables at each start, old tables included): at every
``maintenance.log_checkpoint_interval``-th commit it removes the log files older than
``delta.logRetentionDuration`` = ``maintenance.retention`` (Delta rounds the cut-off down to a whole day), and
keeps the checkpoint before the cut-off, so every version within the retention stays readable. The retention
is the project's floor for time travel: a pin, ``--as-of``, ``audit`` and a batch run's ``versionAsOf`` read
no older version. The once-only marks of ingest are read from the newest commits, well inside that.

What a compaction needs (how many live files, their size) comes from the table's Delta snapshot. The files
on disk are listed (recursively: thousands of LIST requests on S3 for a large table) only around a vacuum,
the one step that changes them beyond the log: never in ingest's micro-batch, which only compacts.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from lambda_pipeline.core.durations import duration_seconds
from lambda_pipeline.core.jvm import HadoopPath, delta_snapshot
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.tables import table_version

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "COMPACTED",
    "INGESTS",
    "MAINTENANCE_OPERATIONS",
    "Maintained",
    "TableFiles",
    "maintain",
    "maintenance_due",
    "owner_of",
    "table_files",
    "tables_of",
]

_DELTA_DEFAULT_RETENTION_HOURS = 168.0
_VACUUM_LOGGING = "spark.databricks.delta.vacuum.logging.enabled"
_RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"


@dataclass(frozen=True)
class TableFiles:
    """What a table holds: files in its newest version (from its snapshot), and on disk (data and log) when
    the disk was listed."""

    live_files: int
    live_bytes: int
    disk_files: int | None = None
    disk_bytes: int | None = None
    log_files: int | None = None
    log_bytes: int | None = None


@dataclass(frozen=True)
class Maintained:
    """One table's maintenance: what it did and the files before and after."""

    table: str
    path: str
    compacted: bool
    vacuumed: bool
    before: TableFiles
    after: TableFiles
    seconds: float
    compact_seconds: float = 0.0
    vacuum_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for a log: what was done, the files before and after, and where the time went."""
        b, a = self.before, self.after
        did = [name for name, done in (("compacted", self.compacted), ("vacuumed", self.vacuumed)) if done]
        what = ", ".join(did) or "left as it was"
        if a.disk_files is None or a.disk_bytes is None:
            disk = f"({a.live_bytes / 1e6:.1f} MB)"  # not listed: see the module's docstring
        else:
            disk = f"on disk {b.disk_files} -> {a.disk_files} ({a.disk_bytes / 1e6:.1f} MB), log {a.log_files} files"
        return (
            f"{self.table:<24} {what:<20} live files {b.live_files} -> {a.live_files}, {disk}, {self.seconds:.1f}s "
            f"(compaction {self.compact_seconds:.1f}s, vacuum {self.vacuum_seconds:.1f}s)"
        )


def tables_of(pipeline: Pipeline, locations: Locations) -> dict[str, str]:
    """Every table of a deployment by a short name: ``master``, ``quarantine``, ``coverage``, ``batch.<view>``,
    ``speed.<view>``."""
    tables = {"master": locations.master, "quarantine": locations.quarantine, "coverage": locations.coverage}
    for view in pipeline.views:
        tables[f"batch.{view.name}"] = locations.batch_view(view.name)
        tables[f"speed.{view.name}"] = locations.speed_partials(view.name)
    return tables


def table_files(spark: SparkSession, path: str, *, disk: bool = True) -> TableFiles | None:
    """The files of the table at ``path`` (None when there is no table), from its snapshot and, with ``disk``,
    from a recursive listing of the file system (see the module's docstring for when that is worth its cost)."""
    snapshot = delta_snapshot(spark, path)
    if snapshot is None:
        return None
    live = TableFiles(live_files=snapshot.live_files, live_bytes=snapshot.live_bytes)
    if not disk:
        return live
    root = HadoopPath(spark, path)
    (files, size), (log_files, log_size) = root.content(), root.child("_delta_log").content()
    return dataclasses.replace(
        live, disk_files=files - log_files, disk_bytes=size - log_size, log_files=log_files, log_bytes=log_size
    )


SMALL_FILE_SHARE = 4
"""A file under ``compact_target_mb / SMALL_FILE_SHARE`` is compacted; a larger one is left alone for good."""

COMPACTED = frozenset({"master", "quarantine", "coverage"})
"""The tables whose writers only append (see the module's docstring)."""
INGESTS = frozenset({"master", "quarantine"})
"""The tables only ingest may commit to while it runs: it maintains them itself."""


def owner_of(table: str) -> str:
    """The job that writes the table named ``table`` (a name of :func:`tables_of`): ``ingest`` writes master,
    quarantine and the speed tables, ``batch`` the batch views and coverage."""
    return "ingest" if table in INGESTS or table.startswith("speed.") else "batch"


MAINTENANCE_OPERATIONS = frozenset({"OPTIMIZE", "VACUUM END"})
"""The operations a maintenance run commits to a table other than master and quarantine (its vacuum is logged)."""


def maintenance_due(spark: SparkSession, path: str, every: float, *, scan: int = 200) -> bool:
    """Whether the table at ``path`` was last maintained ``every`` seconds ago or more, by its log.

    The newest maintenance commit among the newest ``scan`` ones counts, else the table's creation (version 0);
    none of them within ``scan``: due. Read from the log, so a job started on a schedule (one run per process)
    keeps the interval too. The times are the committing drivers' clocks: the owner's, one job's.
    """
    from lambda_pipeline.core.deltalog import commits

    newest = table_version(spark, path)
    if newest is None:
        return False
    for version, actions in commits(spark, path, newest, scan):
        info: dict[str, Any] = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
        if version == 0 or info.get("operation") in MAINTENANCE_OPERATIONS:
            stamp = info.get("timestamp")
            return not isinstance(stamp, int) or time.time() - stamp / 1000.0 >= every
    return True


def _without_vacuum_log(spark: SparkSession) -> SparkSession:
    """A session of the same Spark context whose VACUUM writes no ``VACUUM START`` / ``END`` commit.

    The setting stays out of the caller's session: another thread of the process may vacuum another table
    with it at the same moment (ingest vacuums beside its micro-batches; the demo runs every job in one).
    """
    quiet = spark.newSession()
    quiet.conf.set(_VACUUM_LOGGING, "false")
    quiet.conf.set(_RETENTION_CHECK, "false")  # the settings enforce this project's own floor
    return quiet


def maintain(
    spark: SparkSession,
    pipeline: Pipeline,
    locations: Locations,
    *,
    only: list[str] | None = None,
    compact: bool = True,
    vacuum: bool = True,
    unlogged: bool = False,
    before_table: Callable[[str], None] | None = None,
    on_table: Any = None,
) -> list[Maintained]:
    """Compact and vacuum the tables named in ``only`` (by default every table but master and quarantine,
    which ingest maintains); one report per table. ``compact=False`` or ``vacuum=False`` leaves that step out
    (ingest compacts in its micro-batch and vacuums beside it: see the module's docstring). ``unlogged``:
    every vacuum without its log entries, so that a vacuum commits nothing (ingest's, beside its
    micro-batches, which checks no lease). ``before_table`` hears each table's name before its first commit
    (a job checks its lease there).

    Safe beside running ingest, batch and serving for the default tables (see the module's docstring). The
    caller of master's or quarantine's maintenance holds ingest's lease. A table that does not exist yet is
    skipped. The files on disk are listed only when vacuuming: a compaction reads its table's snapshot only.
    """
    from delta.tables import DeltaTable

    settings = locations.settings.maintenance
    retention_hours = duration_seconds(settings.retention) / 3600.0
    if retention_hours < _DELTA_DEFAULT_RETENTION_HOURS:
        # Delta refuses a retention under 7 days unless told; the settings enforce this project's own floor.
        spark.conf.set(_RETENTION_CHECK, "false")
    target = settings.compact_target_mb * 1024 * 1024
    spark.conf.set("spark.databricks.delta.optimize.minFileSize", str(target // SMALL_FILE_SHARE))  # others stay
    spark.conf.set("spark.databricks.delta.optimize.maxFileSize", str(target))
    # Logged on the other tables whatever the log store's default: maintenance_due reads it from the log.
    spark.conf.set(_VACUUM_LOGGING, "true")
    tables = tables_of(pipeline, locations)
    unknown = sorted(set(only or []) - set(tables))
    if unknown:
        from lambda_pipeline.core.errors import LambdaError

        raise LambdaError(f"maintain --table {', '.join(unknown)}: no such table; the tables are: {', '.join(tables)}")
    done: list[Maintained] = []
    quiet: SparkSession | None = None  # one session without vacuum log entries, for master and quarantine
    for name, path in tables.items():
        if (only and name not in only) or (not only and name in INGESTS):
            continue
        started = time.perf_counter()
        before = table_files(spark, path, disk=vacuum)
        if before is None:
            continue
        if before_table is not None:
            before_table(name)
        table = DeltaTable.forPath(spark, path)
        compacted = compact and name in COMPACTED and before.live_files >= settings.compact_min_files
        mark = time.perf_counter()
        if compacted:
            table.optimize().executeCompaction()
        compact_seconds, mark = time.perf_counter() - mark, time.perf_counter()
        if vacuum:
            # No commit on master or quarantine: ingest predicts master's versions (see the module's docstring).
            if name in INGESTS or unlogged:
                quiet = quiet or _without_vacuum_log(spark)
                DeltaTable.forPath(quiet, path).vacuum(retention_hours)
            else:
                table.vacuum(retention_hours)
        vacuum_seconds = time.perf_counter() - mark
        # nothing done: nothing changed
        after = table_files(spark, path, disk=vacuum) if compacted or vacuum else before
        assert after is not None
        seconds = time.perf_counter() - started
        report = Maintained(name, path, compacted, vacuum, before, after, seconds, compact_seconds, vacuum_seconds)
        if on_table is not None:
            on_table(report)
        done.append(report)
    return done
