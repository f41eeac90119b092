"""The coverage record: what a published batch covers, the record that ties the batch and speed layers together.

The batch job publishes one with each run (as a row of the coverage table and as the ``userMetadata`` of
that commit); speed and serving read the newest to know which ingest tags the batch views already count.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from pyspark.sql import types as T

from lambda_pipeline.core.clock import as_utc
from lambda_pipeline.core.tables import snapshot_identity, table_version

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["COVERAGE_SCHEMA", "Coverage", "coverage_history", "latest_coverage"]

COVERAGE_SCHEMA = T.StructType(
    [
        T.StructField("run_id", T.StringType(), False),
        T.StructField("master_version", T.LongType(), False),
        T.StructField("view_versions", T.MapType(T.StringType(), T.LongType(), False), False),
        T.StructField("master_events", T.LongType(), False),
        T.StructField("published_at", T.TimestampType(), False),
    ]
)


@dataclass(frozen=True)
class Coverage:
    """What a published batch covers: every master commit up to ``master_version``.

    ``view_versions`` pins the batch-view table version published with it, so a
    reader that takes one coverage row reads a consistent (coverage, view) pair.

    ``published_at`` is always an aware UTC instant: a naive value given is read as this process's local
    time (what PySpark's ``collect`` returns), see :func:`lambda_pipeline.core.clock.as_utc`.
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "published_at", as_utc(self.published_at))

    def covered_for(self, view: str) -> int:
        """The tags the batch view of ``view`` includes: none for a view this run did not compute.

        A view added after the last batch has no batch table yet, so its speed partials must cover every
        tag, also those the other views' batch covers.
        """
        return self.master_version if view in self.view_versions else 0

    @staticmethod
    def none() -> Coverage:
        """Before the first batch: nothing is covered (master version 0 is the empty table)."""
        return Coverage("none", 0, {}, 0, datetime.fromtimestamp(0, timezone.utc))

    def mark(self) -> str:
        """The record as the ``userMetadata`` of the commit that appends its row: readers pin from the log.

        ``published_at`` is written with its offset (``+00:00``), so any driver reads the same instant.
        """
        record = {**asdict(self), "published_at": self.published_at.isoformat()}
        return COVERAGE_MARK + json.dumps(record, sort_keys=True)

    @staticmethod
    def from_mark(mark: str) -> Coverage | None:
        """The record a publishing commit carries, or None for any other commit.

        A record written before times carried an offset holds the publishing driver's naive local time: it is
        read as the local time of this process, as it always was (right when both drivers share a zone).
        """
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


class _RecordCache:
    """The newest coverage record per ``(table path, table id, table version)``, the least recently used
    dropped past ``size`` entries.

    The record at a version never changes, so an entry never goes stale; the table id is in the key because
    a coverage table deleted and created again at the same path counts its versions from 0 again. Speed and
    serving ask at every micro-batch and query, mostly for the newest version of one or two tables: a few
    hundred entries cover any process, where an unbounded dict grew by one per publication read.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._records: OrderedDict[tuple[str, str, int], Coverage] = OrderedDict()
        self._lock = threading.Lock()  # the demo runs its jobs in threads of one process

    def get(self, key: tuple[str, str, int]) -> Coverage | None:
        with self._lock:
            record = self._records.get(key)
            if record is not None:
                self._records.move_to_end(key)
            return record

    def put(self, key: tuple[str, str, int], record: Coverage) -> None:
        with self._lock:
            self._records[key] = record
            self._records.move_to_end(key)
            while len(self._records) > self._size:
                self._records.popitem(last=False)


_coverage_cache = _RecordCache(size=256)


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
    identity = snapshot_identity(spark, path)
    if identity is None:  # no batch has run yet: the batch job creates the table with its first run
        return Coverage.none()
    newest, table_id = identity
    version = newest if version is None else version
    key = (path, table_id, version)
    cached = _coverage_cache.get(key)
    if cached is not None:
        return cached
    result = _coverage_from_log(spark, path, version)
    if result is not None:
        _coverage_cache.put(key, result)
        return result
    coverage: DataFrame = spark.read.format("delta").option("versionAsOf", version).load(path)
    # The newest publication is the newest row: one batch publishes at a time, and a rollback re-publishes an
    # older coverage with a newer time. collect() gives published_at as naive local time; Coverage makes it UTC.
    row = coverage.orderBy(coverage.published_at.desc()).first()
    result = (
        Coverage.none()
        if row is None
        else Coverage(
            row.run_id, int(row.master_version), dict(row.view_versions), int(row.master_events), row.published_at
        )
    )
    _coverage_cache.put(key, result)
    return result
