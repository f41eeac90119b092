"""Delta table helpers every layer uses: create a table once, ask the log for its version and properties
without a Spark job, wait for a table another job creates, add columns.

Also the quarantine table's schema, which ingest writes and the operators' verbs read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyspark.sql import types as T

from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.jvm import HadoopPath, delta_snapshot

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "FINGERPRINT_PROPERTY",
    "NOTHING_INGESTED",
    "QUARANTINE_SCHEMA",
    "add_missing_columns",
    "ensure_table",
    "latest_version",
    "partition_columns",
    "require_table",
    "set_table_properties",
    "set_table_property",
    "snapshot_identity",
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


def sql_path(path: str) -> str:
    """A path quoted for ``delta.`path``` in SQL."""
    return "delta.`" + path.replace("`", "``") + "`"


CREATION_RACE_WAIT = 30.0
"""Seconds a job that lost the race to create a table waits to see the winner's version 0. The wait ends as
soon as version 0 is there: it lasts this long only when the winner died between making the log's folder and
committing."""

_CREATION_RACE_CONDITIONS = frozenset({"DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION", "DELTA_TABLE_NOT_FOUND"})
"""Delta's errors for a creation that met another job's half-made table: its ``_delta_log`` folder is there
(so the location "is not empty"), its version 0 not yet (so the table "doesn't exist")."""

_log = logging.getLogger(__name__)


def ensure_table(
    spark: SparkSession,
    path: str,
    schema: T.StructType,
    partition_by: tuple[str, ...] = (),
    properties: dict[str, str] | None = None,
) -> None:
    """Create the Delta table at ``path`` if absent (version 0, empty, with ``properties``).

    Two jobs starting together (ingest and speed both ensure master) race to write version 0. The loser fails
    in one of three ways, all harmless once the winner's version 0 is there, which the loser waits for
    (:data:`CREATION_RACE_WAIT`): its commit meets the winner's (Delta's ``ProtocolChangedException``: version
    0 carries the protocol), or it finds the winner's ``_delta_log`` folder before the winner's commit
    (:data:`_CREATION_RACE_CONDITIONS`). Any other error is raised at once. The wait asks the log itself:
    ``DeltaTable.isDeltaTable`` answers from the snapshot this JVM cached before the winner committed, so it
    would stay false.
    """
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
    except Exception as error:
        if not _lost_creation_race(spark, path, error):
            raise
        deadline = time.monotonic() + CREATION_RACE_WAIT
        while table_version(spark, path) is None:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # the winner's version 0, bounded by the deadline
        _log.info("another job created the Delta table at %s first; using its version 0", path)


def _lost_creation_race(spark: SparkSession, path: str, error: Exception) -> bool:
    """Whether ``error`` is how a creation fails when another job creates the same table at the same time.

    The two "half-made table" errors count only when the location holds nothing but a ``_delta_log`` folder:
    a location with other files is a user's mistake, reported at once.
    """
    from delta.exceptions import ProtocolChangedException

    if isinstance(error, ProtocolChangedException):
        return True
    condition = getattr(error, "getCondition", lambda: None)()
    if condition not in _CREATION_RACE_CONDITIONS:
        return False
    names = HadoopPath(spark, path).names()
    return names is not None and set(names) <= {"_delta_log"}


def table_version(spark: SparkSession, path: str) -> int | None:
    """The newest version in the Delta log at ``path``, freshly listed; None when nothing is committed.

    One look at the log (no Spark job), and never the stale answer of a snapshot this JVM cached.
    """
    identity = snapshot_identity(spark, path)
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
    identity = snapshot_identity(spark, path)
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


def set_table_properties(spark: SparkSession, path: str, properties: dict[str, str]) -> list[str]:
    """Give the table at ``path`` the ``properties`` it lacks or holds other values of, in one metadata commit
    (none when all are there); the keys set. Only the table's one writer may call it (it commits)."""
    snapshot = delta_snapshot(spark, path)
    if snapshot is None:
        raise LambdaError(f"no Delta table at {path}")
    changed = {key: value for key, value in properties.items() if snapshot.property(key) != value}
    if changed:
        listed = ", ".join(f"'{key}' = '{value}'" for key, value in changed.items())
        spark.sql(f"ALTER TABLE {sql_path(path)} SET TBLPROPERTIES ({listed})")
    return sorted(changed)


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


def snapshot_identity(spark: SparkSession, path: str) -> tuple[int, str] | None:
    """(newest version, table id), or None when no table is there: the id tells a re-created table
    from the old one."""
    snapshot = delta_snapshot(spark, path)
    return None if snapshot is None else (snapshot.version, snapshot.table_id)
