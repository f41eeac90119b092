"""Which files of a speed table hold which ingest tags, followed from the table's Delta log.

Why: after each ingest commit a query pins a new speed version. Read through Delta at that version, the speed
table costs a Spark job to rebuild its file list ("Filtering files for query") and a new read of every uncovered
tag, and the provenance two more jobs; all of it on the cores ingest needs. The log already says what changed:
the commit adds one file per view and tag, with its row count and the maximum of every column in its
statistics. :class:`SpeedFileIndex` reads each new commit file once (no Spark job) and answers, for any version
it follows, the live files and their tags; the serving layer then reads only the new tag's file, and takes the
speed half of the provenance from the statistics.

Only what the speed layer writes is followed: appends and removes of whole files under ``ingest_tag=<t>/``.
Anything else (a deletion vector, column mapping, a schema or protocol change, a commit file gone, an
unknown action) makes :meth:`SpeedFileIndex.live` answer None, and the caller reads through Delta as before.
"""

from __future__ import annotations

import json
import posixpath
import threading
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from lambda_pipeline.core.deltalog import commit
from lambda_pipeline.core.jvm import delta_files_at
from lambda_pipeline.core.views import INGEST_TAG, INGESTED_AT_MAX, WINDOW_START

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["SpeedFile", "SpeedFileIndex"]

TOMBSTONE_VERSIONS = 200
"""Removed files are remembered this many versions, so that a pin that old is still answered exactly."""

RETRY_AFTER_VERSIONS = 100
"""After a table was found unfollowable, the versions answered None before its file list is read again: a table
with deletion vectors costs one listing job per this many commits, not one per query."""

_IGNORED_ACTIONS = frozenset({"commitInfo", "txn", "cdc", "domainMetadata"})
"""Actions that do not change which data files are live."""


@dataclass(frozen=True)
class SpeedFile:
    """One data file of a speed table, as its add action describes it."""

    path: str
    """As in the log: relative to the table, URL-encoded."""
    tag: int
    added: int
    """The version that added it (the index's first version for a file already live there)."""
    removed: int | None
    rows: int | None
    """From the file's statistics; None without statistics."""
    newest_window: datetime | None
    newest_ingested_at: datetime | None

    def live_at(self, version: int) -> bool:
        return self.added <= version and (self.removed is None or self.removed > version)

    @staticmethod
    def absolute_path(table: str, path: str) -> str:
        """A log path made absolute: the log holds it relative to the table and URL-encoded."""
        return posixpath.join(table, unquote(path))


class SpeedFileIndex:
    """The live files of one speed table at the versions a reader pins, from its log. Thread-safe.

    ``live(version, table_id)`` advances through the commit files up to ``version`` (one small file read each),
    or starts over with one Spark job (the table's file list at ``version``) at the first call, when the table
    was made anew, or after anything it does not follow.
    """

    def __init__(self, spark: SparkSession, table: str) -> None:
        self.spark, self.table = spark, table
        self._lock = threading.Lock()
        self._table_id: str | None = None
        self._first = 0
        """The oldest version answered exactly (files removed before it are forgotten)."""
        self._version: int | None = None
        self._files: dict[str, SpeedFile] = {}
        self._refused: tuple[str, int] | None = None
        """(table id, version) of the last listing found unfollowable."""
        self.resets = 0
        """How many times the index started over (one Spark job each): what the tests and benchmarks watch."""

    def live(self, version: int, table_id: str | None) -> list[SpeedFile] | None:
        """The files live at ``version`` of the table whose id is ``table_id``; None if the log holds anything
        this index does not follow (read through Delta instead)."""
        if table_id is None:
            return None
        with self._lock:
            refused_at = self._refused[1] if self._refused is not None and self._refused[0] == table_id else None
            if refused_at is not None and refused_at <= version < refused_at + RETRY_AFTER_VERSIONS:
                return None
            stale = self._version is None or table_id != self._table_id or version < self._first
            behind = not stale and version > self._version_or(-1) and not self._advance(version)
            if (stale or behind) and not self._reset(version, table_id):
                return None
            return [f for f in self._files.values() if f.live_at(version)]

    def _version_or(self, default: int) -> int:
        return default if self._version is None else self._version

    def _reset(self, version: int, table_id: str) -> bool:
        self.resets += 1
        self._version, self._files = None, {}
        found_id, configuration, listing = delta_files_at(self.spark, self.table, version)
        files: dict[str, SpeedFile] = {}
        if found_id == table_id and _plain(configuration):
            for row in listing.select("path", "partitionValues", "stats", "deletionVector").collect():
                described = _described(row.path, row.partitionValues, row.stats, row.deletionVector, version)
                if described is None:
                    break
                files[described.path] = described
            else:
                self._table_id, self._first, self._version, self._files = table_id, version, version, files
                self._refused = None
                return True
        if found_id == table_id:
            self._refused = (table_id, version)
        return False

    def _advance(self, to: int) -> bool:
        """Apply the commits after the index's version up to ``to``; False on anything not followed."""
        for version in range(self._version_or(-1) + 1, to + 1):
            actions = commit(self.spark, self.table, version)
            if actions is None or not self._apply(version, actions):
                return False
            self._version = version
        self._forget_before(to - TOMBSTONE_VERSIONS)
        return True

    def _apply(self, version: int, actions: list[Any]) -> bool:
        for action in actions:
            kind = next(iter(action), None)
            if kind in _IGNORED_ACTIONS:
                continue
            body: dict[str, Any] = action[kind] if kind else {}
            if kind == "add":
                path, partition, stats, vector = (
                    body.get(k) for k in ("path", "partitionValues", "stats", "deletionVector")
                )
                described = _described(path, partition, stats, vector, version)
                if described is None:
                    return False
                self._files[described.path] = described
            elif kind == "remove":
                known = self._files.get(str(body.get("path")))
                if known is None:
                    return False
                self._files[known.path] = replace(known, removed=version)
            else:  # metaData, protocol, checkpoint or anything newer: start over from Delta's own listing
                return False
        return True

    def _forget_before(self, version: int) -> None:
        gone = [f.path for f in self._files.values() if f.removed is not None and f.removed <= version]
        for path in gone:
            self._first = max(self._first, self._files.pop(path).removed or 0)


def _plain(configuration: dict[str, str]) -> bool:
    """A table whose files are read as Parquet by column name, whole: no column mapping, no deletion vectors."""
    mapping = configuration.get("delta.columnMapping.mode", "none").lower()
    return mapping == "none" and configuration.get("delta.enableDeletionVectors", "false").lower() != "true"


def _described(path: Any, partition: Any, stats: Any, deletion_vector: Any, version: int) -> SpeedFile | None:
    """A data file from its add action; None when it is not a whole file under its ``ingest_tag=<t>/`` folder."""
    tag_text = (partition or {}).get(INGEST_TAG)
    if not isinstance(path, str) or tag_text is None or deletion_vector is not None:
        return None
    if not path.startswith(f"{INGEST_TAG}={tag_text}/"):  # Delta's random prefixes, or a file elsewhere
        return None
    rows = newest_window = newest_ingested = None
    if stats:
        parsed = json.loads(stats)
        rows = parsed.get("numRecords")
        maxima = parsed.get("maxValues") or {}
        newest_window, newest_ingested = _time(maxima.get(WINDOW_START)), _time(maxima.get(INGESTED_AT_MAX))
        if newest_ingested is None and rows:  # statistics without the column: the provenance reads the data
            rows = None
    return SpeedFile(path, int(tag_text), version, None, rows, newest_window, newest_ingested)


def _time(text: Any) -> datetime | None:
    return datetime.fromisoformat(text) if isinstance(text, str) else None
