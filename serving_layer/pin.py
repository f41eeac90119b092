"""The pin: one consistent set of table versions, everything one query reads.

A pin is taken in this order:

1. every speed table's version ``s``, **first**;
2. then the newest coverage ``V`` (and the batch-view versions it names). The speed layer purges tags
   only up to coverages already published, so at ``s`` every tag above ``V`` it has processed is
   still there: no gap, and ``ingest_tag > V`` leaves no double count;
3. then master and quarantine, so that master holds every tag the speed partials and the batch saw.

``--as-of PUBLICATION`` pins the coverage row of that publication and, for every other table, the
newest version committed before that row was: the state served right after the publication. Commit times
are compared in epoch milliseconds inside Spark, so a driver in any time zone picks the same versions;
``--as-of`` with a UTC time names the publication served at that instant.

Versions come from the Delta logs (no Spark job) except for ``--as-of``, which reads the tables' history.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from lambda_pipeline.core.clock import as_utc, epoch_ms, looks_like_time, parse_utc, utc_text
from lambda_pipeline.core.coverage import Coverage, latest_coverage
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.jvm import delta_snapshot
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.tables import NOTHING_INGESTED
from lambda_pipeline.core.views import View

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["Pin", "Pinned", "take_pin"]


@dataclass(frozen=True)
class Pinned:
    """The table versions one view is read at."""

    view: str
    coverage: Coverage
    batch_version: int | None
    """None until a batch including this view is published."""
    speed_version: int | None
    """None until the speed layer has created its table."""


@dataclass(frozen=True)
class Pin:
    """One consistent set of table versions: everything one query reads."""

    coverage: Coverage
    coverage_version: int | None
    master_version: int
    quarantine_version: int | None
    speed_versions: tuple[tuple[str, int | None], ...]
    as_of: str | None = None
    """The publication asked for with ``--as-of``; None for the newest state."""
    table_ids: tuple[tuple[str, str], ...] = ()
    """The Delta table id of each table the pin looked at, by path: a table made anew at a path is another."""

    def __getitem__(self, view: str) -> Pinned:
        return Pinned(view, self.coverage, self.coverage.view_versions.get(view), dict(self.speed_versions)[view])

    def table_id(self, path: str) -> str | None:
        """The id of the table at ``path`` when pinned; None if there was none."""
        return dict(self.table_ids).get(path)

    @functools.cached_property
    def key(self) -> str:
        """Equal for equal pins, and hashable: what an entry that depends on the whole pin is kept under."""
        return json.dumps({**self.as_dict(), "table_ids": dict(self.table_ids)}, sort_keys=True, default=str)

    def as_dict(self) -> dict[str, Any]:
        return {
            "publication": self.coverage.run_id,
            "as_of": self.as_of,
            "covered_master_version": self.coverage.master_version,
            "coverage_table_version": self.coverage_version,
            "master_table_version": self.master_version,
            "quarantine_table_version": self.quarantine_version,
            "batch_view_versions": dict(self.coverage.view_versions),
            "speed_table_versions": dict(self.speed_versions),
        }


def take_pin(spark: SparkSession, locations: Locations, views: Sequence[View], as_of: str | None = None) -> Pin:
    """The newest consistent versions of ``views``' tables, master's and quarantine's; or those of ``as_of``."""
    return _Pinning(spark, locations).as_of(as_of, views) if as_of else _Pinning(spark, locations).newest(views)


class _Pinning:
    """Reads the versions one pin is made of, and notes the id of every table it looks at."""

    def __init__(self, spark: SparkSession, locations: Locations) -> None:
        self.spark, self.locations = spark, locations
        self.ids: dict[str, str] = {}

    def newest(self, views: Sequence[View]) -> Pin:
        loc = self.locations
        speed = tuple((v.name, self._newest(loc.speed_partials(v.name))) for v in views)
        coverage_version = self._newest(loc.coverage)
        coverage = (
            Coverage.none() if coverage_version is None else latest_coverage(self.spark, loc.coverage, coverage_version)
        )
        master = _require(loc.master, self._newest(loc.master))
        quarantine = self._newest(loc.quarantine)
        return Pin(coverage, coverage_version, master, quarantine, speed, table_ids=tuple(sorted(self.ids.items())))

    def as_of(self, publication: str, views: Sequence[View]) -> Pin:
        """The pin served right after ``publication``: its coverage row, every other table as it was then.

        ``publication`` is a run id (or a unique prefix of one), or an ISO 8601 time in UTC (an offset may be
        given): the publication that was served at that instant.
        """
        spark, loc = self.spark, self.locations
        if self._newest(loc.coverage) is None:
            raise LambdaError(f"--as-of {publication}: no batch was published in this work directory yet")
        rows = spark.read.format("delta").load(loc.coverage).collect()
        if looks_like_time(publication):
            run_id = self._served_at(publication)
            matches = [r for r in rows if r.run_id == run_id]
        else:
            matches = [r for r in rows if r.run_id.startswith(publication)]
        if len(matches) != 1:
            newest = sorted(rows, key=lambda r: as_utc(r.published_at))[-5:]
            listed = ", ".join(f"{r.run_id[:8]} ({utc_text(r.published_at)})" for r in reversed(newest))
            why = "matches several publications" if matches else "names no publication"
            if looks_like_time(publication) and not matches:
                why = "is before the first publication"
            raise LambdaError(f"--as-of {publication}: {why}; the newest are: {listed or 'none'}")
        row = matches[0]
        retention = loc.settings.maintenance.retention
        if loc.settings.maintenance.outlived(row.published_at):
            raise LambdaError(
                f"--as-of {publication}: published {utc_text(row.published_at, seconds=False)}, longer ago than "
                f"maintenance.retention ({retention}): VACUUM may have deleted files its pin reads; "
                "raise the retention to keep answering that far back"
            )
        coverage = Coverage(
            row.run_id, int(row.master_version), dict(row.view_versions), int(row.master_events), row.published_at
        )
        coverage_version = self._first_version_with(loc.coverage, row.run_id)
        committed = self._commit_ms(loc.coverage, coverage_version)
        speed = tuple((v.name, self._version_at(loc.speed_partials(v.name), committed)) for v in views)
        master = _require(loc.master, self._version_at(loc.master, committed))
        quarantine = self._version_at(loc.quarantine, committed)
        ids = tuple(sorted(self.ids.items()))
        return Pin(coverage, coverage_version, master, quarantine, speed, as_of=publication, table_ids=ids)

    def _served_at(self, text: str) -> str | None:
        """The run id of the publication served at the UTC time ``text``: the newest coverage at the coverage
        table's newest version committed by then (None when none was)."""
        try:
            moment = parse_utc(text)
        except ValueError:
            raise LambdaError(
                f"--as-of {text}: not a time; give a run id or an ISO 8601 time in UTC, e.g. 2026-12-06T07:41:00Z"
            ) from None
        version = self._version_at(self.locations.coverage, epoch_ms(moment))
        if version is None:
            return None
        found = latest_coverage(self.spark, self.locations.coverage, version)
        return None if found.run_id == "none" else found.run_id

    def _newest(self, path: str) -> int | None:
        """The newest version of the table at ``path`` (None when there is none), from its log."""
        snapshot = delta_snapshot(self.spark, path)
        if snapshot is None:
            return None
        self.ids[path] = snapshot.table_id
        return snapshot.version

    def _first_version_with(self, path: str, run_id: str) -> int:
        """The coverage-table version that appended ``run_id``'s row (a binary search; rows are never removed)."""
        reader = self.spark.read.format("delta")
        lo, hi = 0, _require(path, self._newest(path))
        while lo < hi:
            mid = (lo + hi) // 2
            found = reader.option("versionAsOf", mid).load(path).filter(F.col("run_id") == run_id).limit(1).count()
            lo, hi = (lo, mid) if found else (mid + 1, hi)
        return lo

    def _commit_ms(self, path: str, version: int) -> int:
        """When ``version`` of the table at ``path`` was committed, in ms since the epoch (Delta's history
        ``timestamp``, read in Spark: no Python conversion with the driver's local time zone)."""
        from delta.tables import DeltaTable

        history = DeltaTable.forPath(self.spark, path).history()
        row = history.filter(F.col("version") == version).select(F.unix_millis("timestamp").alias("ms")).first()
        if row is None:
            raise LambdaError(f"{path}: version {version} is no longer in the table's history")
        return int(row.ms)

    def _version_at(self, path: str, ms: int) -> int | None:
        """The newest version of the table at ``path`` committed at or before ``ms`` (epoch ms; None if none
        was), compared in epoch ms, the same whatever the driver's time zone."""
        from delta.tables import DeltaTable

        if self._newest(path) is None:
            return None
        row = (
            DeltaTable.forPath(self.spark, path)
            .history()
            .filter(F.unix_millis("timestamp") <= F.lit(ms))
            .agg(F.max("version").alias("v"))
            .first()
        )
        return None if row is None or row.v is None else int(row.v)


def _require(path: str, version: int | None) -> int:
    if version is None:
        raise LambdaError(f"no Delta table at {path}: {NOTHING_INGESTED}")
    return version
