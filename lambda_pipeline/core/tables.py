"""Where every table and checkpoint lives, and the record that ties the layers together.

The layers never import each other: they meet here, through table locations,
the coverage record and the quarantine schema.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pyspark.sql import types as T

from lambda_pipeline.core.config import Settings
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.jvm import HadoopPath, delta_snapshot

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "COVERAGE_SCHEMA",
    "FINGERPRINT_PROPERTY",
    "NOTHING_INGESTED",
    "QUARANTINE_SCHEMA",
    "Coverage",
    "Locations",
    "coverage_history",
    "ensure_table",
    "latest_coverage",
    "latest_version",
    "partition_columns",
    "require_table",
    "set_table_property",
    "sql_path",
    "table_property",
    "table_version",
    "wait_for_table",
]

NOTHING_INGESTED = (
    "nothing was ingested in this work directory yet; "
    "run 'lambda-pipeline ingest' (or 'demo') with the same --workdir and --config first"
)
"""Why a job that reads the master dataset cannot start: the one message every reader gives."""

QUARANTINE_SCHEMA = T.StructType(
    [
        T.StructField("raw", T.StringType(), True),
        T.StructField("source_file", T.StringType(), True),
        T.StructField("reason", T.StringType(), False),
        T.StructField("ingest_batch", T.LongType(), False),
        T.StructField("quarantined_at", T.TimestampType(), False),
    ]
)

COVERAGE_SCHEMA = T.StructType(
    [
        T.StructField("run_id", T.StringType(), False),
        T.StructField("master_version", T.LongType(), False),
        T.StructField("view_versions", T.MapType(T.StringType(), T.LongType(), False), False),
        T.StructField("master_events", T.LongType(), False),
        T.StructField("published_at", T.TimestampType(), False),
    ]
)


def _is_uri(root: str) -> bool:
    return "://" in root


@dataclass(frozen=True)
class Locations:
    """Every path of a deployment, derived from the work directory and the config."""

    workdir: str
    settings: Settings

    @classmethod
    def create(cls, settings: Settings, workdir: str | Path | None = None) -> Locations:
        root = str(workdir) if workdir is not None else settings.workdir
        if not _is_uri(root):
            root = str(Path(root).expanduser().resolve())
        return cls(root, settings)

    def _under(self, *parts: str) -> str:
        first = parts[0]
        if _is_uri(first) or posixpath.isabs(first):
            return posixpath.join(*parts)
        return posixpath.join(self.workdir, *parts)

    @property
    def landing(self) -> str:
        return self._under(self.settings.ingest.landing_dir)

    @property
    def landing_archive(self) -> str:
        """Where ingest moves landing files once committed (``ingest.landing_cleanup: archive``)."""
        return self._under(self.settings.ingest.landing_archive)

    @property
    def warehouse(self) -> str:
        return self._under(self.settings.warehouse)

    @property
    def master(self) -> str:
        return posixpath.join(self.warehouse, "master", self.settings.tables.master)

    @property
    def quarantine(self) -> str:
        return posixpath.join(self.warehouse, "master", self.settings.tables.quarantine)

    @property
    def coverage(self) -> str:
        return posixpath.join(self.warehouse, "batch", f"_{self.settings.tables.coverage}")

    def batch_view(self, view: str) -> str:
        return posixpath.join(self.warehouse, "batch", view)

    def speed_partials(self, view: str) -> str:
        return posixpath.join(self.warehouse, "speed", view)

    def checkpoint(self, job: str) -> str:
        return posixpath.join(self._under(self.settings.checkpoints), job)

    @property
    def roots(self) -> tuple[str, ...]:
        """Every root a job touches: the work directory, landing folder, warehouse and checkpoints."""
        return (self.workdir, self.landing, self.warehouse, self._under(self.settings.checkpoints))

    @property
    def needs_s3a(self) -> bool:
        """Whether any root is on ``s3a://``, so Spark needs hadoop-aws on its classpath."""
        return any(root.startswith("s3a://") for root in self.roots)

    def s3a_buckets(self) -> tuple[str, ...]:
        """The buckets the ``s3a://`` roots name, in order, once each."""
        buckets = (urlsplit(root).netloc for root in self.roots if root.startswith("s3a://"))
        return tuple(dict.fromkeys(b for b in buckets if b))

    def ensure_local_dirs(self) -> None:
        for path in (self.landing, self.warehouse):
            if not _is_uri(path):
                Path(path).mkdir(parents=True, exist_ok=True)

    def ensure_dirs(self, spark: SparkSession) -> None:
        """Like :meth:`ensure_local_dirs`, and URI folders through Hadoop's file system.

        Spark's file stream source refuses a landing folder that does not exist; on S3 a "folder" exists
        once an object is under it, so an empty landing needs S3A's directory marker.
        """
        self.ensure_local_dirs()
        for path in (self.landing, self.warehouse):
            if _is_uri(path):
                folder = HadoopPath(spark, path)
                if not folder.exists():
                    folder.mkdirs()


def sql_path(path: str) -> str:
    """A path quoted for ``delta.`path``` in SQL."""
    return "delta.`" + path.replace("`", "``") + "`"


def ensure_table(
    spark: SparkSession,
    path: str,
    schema: T.StructType,
    partition_by: tuple[str, ...] = (),
    properties: dict[str, str] | None = None,
) -> None:
    """Create the Delta table at ``path`` if absent (version 0, empty, with ``properties``).

    Two jobs starting together (ingest and speed both ensure master) race to write version 0; the
    loser's ``ProtocolChangedException`` is harmless once the winner's version 0 is there. The wait asks
    the log itself: ``DeltaTable.isDeltaTable`` answers from the snapshot this JVM cached before the
    winner committed, so it would stay false.
    """
    import time

    from delta.tables import DeltaTable

    if table_version(spark, path) is not None:
        return
    builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(schema)
    if partition_by:
        builder = builder.partitionedBy(*partition_by)
    for key, value in (properties or {}).items():
        builder = builder.property(key, value)
    try:
        builder.execute()
    except Exception:
        deadline = time.monotonic() + 60
        while table_version(spark, path) is None:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # waiting for the other writer's version 0, bounded by the deadline


def table_version(spark: SparkSession, path: str) -> int | None:
    """The newest version in the Delta log at ``path``, freshly listed; None when nothing is committed.

    One look at the log (no Spark job), and never the stale answer of a snapshot this JVM cached.
    """
    identity = _snapshot_identity(spark, path)
    return None if identity is None else identity[0]


def require_table(spark: SparkSession, path: str, why: str = NOTHING_INGESTED) -> int:
    """The newest version of a table this job reads but another job creates; a clear error if absent."""
    version = table_version(spark, path)
    if version is None:
        raise LambdaError(f"no Delta table at {path}: {why}")
    return version


def wait_for_table(
    spark: SparkSession,
    path: str,
    *,
    timeout: float,
    why: str = NOTHING_INGESTED,
    on_wait: Callable[[str], None] | None = None,
    poll: float = 1.0,
) -> int:
    """:func:`require_table`, for a long-running job started together with the one that creates the table.

    ``on_wait`` hears once that the job is waiting and for what; after ``timeout`` seconds the error of
    :func:`require_table` is raised.
    """
    import time

    deadline = time.monotonic() + timeout
    version = table_version(spark, path)
    if version is None and timeout > 0 and on_wait is not None:
        on_wait(f"waiting up to {timeout:.0f}s for the Delta table at {path} (ingest creates it)")
    while version is None and time.monotonic() < deadline:
        time.sleep(poll)  # polling another process's commit, bounded by the deadline
        version = table_version(spark, path)
    return require_table(spark, path, why) if version is None else version


def latest_version(spark: SparkSession, path: str) -> int:
    """The newest committed version of a Delta table.

    Asks the Delta log for its current snapshot (tens of milliseconds) rather
    than ``history()``, which runs a Spark job over the commit files.
    """
    identity = _snapshot_identity(spark, path)
    if identity is None:
        raise LambdaError(f"no Delta table at {path}")
    return identity[0]


def partition_columns(spark: SparkSession, path: str) -> list[str]:
    """The partition columns of the Delta table at ``path`` (empty when absent or unpartitioned)."""
    snapshot = delta_snapshot(spark, path)
    return [] if snapshot is None else snapshot.partition_columns


FINGERPRINT_PROPERTY = "lambda_pipeline.fingerprint"
"""The table property holding the ``View.fingerprint`` a speed table's partials were computed with."""


def table_property(spark: SparkSession, path: str, key: str) -> str | None:
    """A table property of the newest version (no Spark job), or None (no table, or not set)."""
    snapshot = delta_snapshot(spark, path)
    return None if snapshot is None else snapshot.property(key)


def set_table_property(spark: SparkSession, path: str, key: str, value: str) -> None:
    """One metadata commit; a no-op when the property already holds ``value``."""
    if table_property(spark, path, key) != value:
        spark.sql(f"ALTER TABLE {sql_path(path)} SET TBLPROPERTIES ('{key}' = '{value}')")


def add_missing_columns(spark: SparkSession, path: str, schema: T.StructType) -> list[str]:
    """Add to the table at ``path`` the columns of ``schema`` it lacks (one metadata commit); their names.

    A field added to a source later: past rows hold null until a backfill fills them. A column whose type
    changed is refused, since its past values could not be read as the new type.
    """
    current = {f.name: f.dataType for f in spark.read.format("delta").load(path).schema.fields}
    changed = [f for f in schema.fields if f.name in current and current[f.name] != f.dataType]
    if changed:
        listed = ", ".join(
            f"'{f.name}' is {current[f.name].simpleString()} there, {f.dataType.simpleString()} now" for f in changed
        )
        raise LambdaError(
            f"table {path}: {listed}. A column's type cannot change in place: add a field under a new name "
            "(and backfill it with 'lambda-pipeline refresh --backfill NAME'), or ingest into a new work directory."
        )
    missing = [f for f in schema.fields if f.name not in current]
    if missing:
        columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in missing)
        spark.sql(f"ALTER TABLE {sql_path(path)} ADD COLUMNS ({columns})")
    return [f.name for f in missing]


def _snapshot_identity(spark: SparkSession, path: str) -> tuple[int, str] | None:
    """(newest version, table id), or None when no table is there: the id tells a re-created table
    from the old one."""
    snapshot = delta_snapshot(spark, path)
    return None if snapshot is None else (snapshot.version, snapshot.table_id)


@dataclass(frozen=True)
class Coverage:
    """What a published batch covers: every master commit up to ``master_version``.

    ``view_versions`` pins the batch-view table version published with it, so a
    reader that takes one coverage row reads a consistent (coverage, view) pair.
    """

    run_id: str
    master_version: int
    view_versions: dict[str, int]
    master_events: int
    published_at: datetime
    restores: str | None = None
    """Set on a rollback: the run id of the earlier publication this one serves again."""
    view_fingerprints: dict[str, str] = field(default_factory=dict)
    """Each batch view's definition (``View.fingerprint``) as computed; empty for publications made before."""

    def covered_for(self, view: str) -> int:
        """The tags the batch view of ``view`` includes: none for a view this run did not compute.

        A view added after the last batch has no batch table yet, so its speed partials must cover every
        tag, also those the other views' batch covers.
        """
        return self.master_version if view in self.view_versions else 0

    @staticmethod
    def none() -> Coverage:
        """Before the first batch: nothing is covered (master version 0 is the empty table)."""
        return Coverage("none", 0, {}, 0, datetime.fromtimestamp(0))

    def mark(self) -> str:
        """The record as the ``userMetadata`` of the commit that appends its row: readers pin from the log."""
        record = {**asdict(self), "published_at": self.published_at.isoformat()}
        return COVERAGE_MARK + json.dumps(record, sort_keys=True)

    @staticmethod
    def from_mark(mark: str) -> Coverage | None:
        """The record a publishing commit carries, or None for any other commit."""
        if not mark.startswith(COVERAGE_MARK):
            return None
        record = json.loads(mark[len(COVERAGE_MARK) :])
        return Coverage(
            str(record["run_id"]),
            int(record["master_version"]),
            {str(k): int(v) for k, v in record["view_versions"].items()},
            int(record["master_events"]),
            datetime.fromisoformat(record["published_at"]),
            record.get("restores"),
            {str(k): str(v) for k, v in (record.get("view_fingerprints") or {}).items()},
        )


COVERAGE_MARK = "lambda-pipeline-coverage:"
COVERAGE_SCAN = 100
"""Commits of the coverage table read back for the newest record before reading the table with Spark."""


_coverage_cache: dict[tuple[str, str, int], Coverage] = {}


def _coverage_from_log(spark: SparkSession, path: str, version: int) -> Coverage | None:
    """The newest record at ``version`` from the publishing commits' marks (no Spark job); None when no
    marked commit is among the newest (a table published before the marks, or cleaned up by log retention)."""
    from lambda_pipeline.core.deltalog import commits

    for _version, actions in commits(spark, path, version, COVERAGE_SCAN):
        for action in actions:
            found = Coverage.from_mark((action.get("commitInfo") or {}).get("userMetadata") or "")
            if found is not None:
                return found
    return None


def coverage_history(spark: SparkSession, path: str, *, scan: int = 1000) -> list[Coverage]:
    """Every publication the coverage table's newest ``scan`` commits record, oldest first (from the log)."""
    from lambda_pipeline.core.deltalog import commits

    newest = table_version(spark, path)
    found: list[Coverage] = []
    for _version, actions in commits(spark, path, newest if newest is not None else -1, scan):
        for action in actions:
            record = Coverage.from_mark((action.get("commitInfo") or {}).get("userMetadata") or "")
            if record is not None:
                found.append(record)
    return found[::-1]


def latest_coverage(spark: SparkSession, path: str, version: int | None = None) -> Coverage:
    """The newest coverage record (as of a table version, if given).

    Read on every speed micro-batch, so the answer is cached by table version:
    an unchanged coverage table costs one look at the Delta log.
    """
    identity = _snapshot_identity(spark, path)
    if identity is None:  # no batch has run yet: the batch job creates the table with its first run
        return Coverage.none()
    newest, table_id = identity
    version = newest if version is None else version
    cached = _coverage_cache.get((path, table_id, version))
    if cached is not None:
        return cached
    result = _coverage_from_log(spark, path, version)
    if result is not None:
        _coverage_cache[(path, table_id, version)] = result
        return result
    coverage: DataFrame = spark.read.format("delta").option("versionAsOf", version).load(path)
    # The newest publication is the newest row: one batch publishes at a time, and a rollback re-publishes an
    # older coverage with a newer time.
    row = coverage.orderBy(coverage.published_at.desc()).first()
    result = (
        Coverage.none()
        if row is None
        else Coverage(
            row.run_id, int(row.master_version), dict(row.view_versions), int(row.master_events), row.published_at
        )
    )
    _coverage_cache[(path, table_id, version)] = result
    return result
