"""``lambda-pipeline audit``: how far the speed layer's answer was from the batch's, for the same events.

Between two publications P' and P, the speed layer served the tags in ``(P'.master_version,
P.master_version]``; P then took them over. For each view, window and additive measure (a count or a sum):

- **speed**: the partials of those tags, read from the speed table as it was before it purged them (its
  version just before the first purge of one of those tags, found in its log by version, never by a clock;
  Delta time travel, so within ``maintenance.retention``);
- **batch**: the batch view at P minus the batch view at P' (exact: the batch deduplicates by event id over
  the whole master dataset), so the same events' share of the batch answer;
- **difference** = speed - batch: repeats the speed layer's dedup did not catch (beyond ``dedup_horizon``),
  the only way the layers can differ for the same events.

``--fail-above X`` turns the answer into an exit code for alerting: 3 when the share of events that differ,
``sum |difference| / batch events``, is above X.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from lambda_pipeline.core.clock import as_utc, iso_utc
from lambda_pipeline.core.coverage import Coverage, coverage_history
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.tables import table_version
from lambda_pipeline.core.views import INGEST_TAG, WINDOW_START, View

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["AuditRow", "ViewAudit", "audit"]


@dataclass(frozen=True)
class AuditRow:
    window_start: datetime | None
    """Aware UTC; None for an all-time view."""
    measure: str
    speed: float
    batch: float

    @property
    def difference(self) -> float:
        return self.speed - self.batch


@dataclass(frozen=True)
class ViewAudit:
    """One view over the tags one publication took over from the speed layer."""

    view: str
    publication: str
    previous: str
    tags: tuple[int, int]
    rows: tuple[AuditRow, ...]
    events: float
    """The batch's count of the events in those tags (the first count measure), the share's denominator."""
    note: str = ""

    @property
    def differing(self) -> float:
        counted = [r for r in self.rows if r.measure == self._count_measure]
        return sum(abs(r.difference) for r in counted)

    @property
    def _count_measure(self) -> str:
        return self.rows[0].measure if self.rows else ""

    @property
    def share(self) -> float:
        return self.differing / self.events if self.events else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "publication": self.publication,
            "previous": self.previous,
            "tags": list(self.tags),
            "events": self.events,
            "differing": self.differing,
            "share": self.share,
            "note": self.note,
            "windows": [
                {
                    "window_start": r.window_start and iso_utc(r.window_start),
                    "measure": r.measure,
                    "speed": r.speed,
                    "batch": r.batch,
                }
                for r in self.rows
                if r.difference
            ],
        }


def _additive(view: View) -> list[str]:
    """Count measures first, then sums: the measures whose batch share is a difference of two views."""
    counts = [name for name, a in view.measures.items() if a.kind == "count"]
    return counts + [name for name, a in view.measures.items() if a.kind == "sum"]


def _speed_before_purge(spark: SparkSession, path: str, tags: tuple[int, int]) -> int | None:
    """The speed table's version just before its first purge of a tag in ``(lo, hi]`` (its newest, if none yet).

    Found by versions, never by clocks: among the table's DELETE commits (the purges), the first whose removed
    files hold one of those tags (speed tables are partitioned by tag, so each removed file names its tag).
    """
    from delta.tables import DeltaTable

    from lambda_pipeline.core.deltalog import commits

    newest = table_version(spark, path)
    if newest is None:
        return None
    history = DeltaTable.forPath(spark, path).history().filter(F.col("operation") == "DELETE")
    lo, hi = tags
    for (version,) in history.select("version").orderBy("version").collect():
        for _version, actions in commits(spark, path, int(version), 1):
            for action in actions:
                removed = (action.get("remove") or {}).get("partitionValues") or {}
                tag = removed.get(INGEST_TAG)
                if tag is not None and lo < int(tag) <= hi:
                    return int(version) - 1
    return newest


def _final(view: View, states: DataFrame) -> DataFrame:
    """The view's rows from a table of its partial states (batch view or speed partials)."""
    return view.finalize(states.select(*view.state_column_names()))


def _by_window(frame: DataFrame, measures: list[str]) -> dict[tuple[datetime | None, str], float]:
    """Each measure's total per window; an all-time view is one window, ``None``."""
    window = F.col(WINDOW_START) if WINDOW_START in frame.columns else F.lit(None).cast("timestamp")
    rows = frame.groupBy(window.alias(WINDOW_START)).agg(*[F.sum(m).alias(m) for m in measures]).collect()
    # collect() gives naive local time: the window's instant, made UTC so that every driver prints the same.
    starts = [None if r[WINDOW_START] is None else as_utc(r[WINDOW_START]) for r in rows]
    return {(start, m): float(r[m] or 0) for start, r in zip(starts, rows, strict=True) for m in measures}


def audit(spark: SparkSession, pipeline: Pipeline, locations: Locations, *, last: int = 1) -> list[ViewAudit]:
    """Audit the ``last`` newest publications (each against the one before it), every view."""
    history = [c for c in coverage_history(spark, locations.coverage) if c.restores is None]
    if not history:
        raise LambdaError("audit: no batch was published in this work directory yet; run 'lambda-pipeline batch'")
    reader = spark.read.format("delta")
    out: list[ViewAudit] = []
    pairs = list(zip([Coverage.none(), *history[:-1]], history, strict=True))[-last:]
    for previous, publication in pairs:
        for view in pipeline.views:
            measures = _additive(view)
            if not measures or view.name not in publication.view_versions:
                continue
            lo, hi = previous.covered_for(view.name), publication.master_version
            batch_path, speed_path = locations.batch_view(view.name), locations.speed_partials(view.name)
            now = _final(view, reader.option("versionAsOf", publication.view_versions[view.name]).load(batch_path))
            batch = _by_window(now, measures)
            if view.name in previous.view_versions:
                before = reader.option("versionAsOf", previous.view_versions[view.name]).load(batch_path)
                for key, value in _by_window(_final(view, before), measures).items():
                    batch[key] = batch.get(key, 0.0) - value
            version = _speed_before_purge(spark, speed_path, (lo, hi))
            speed: dict[tuple[datetime | None, str], float] = {}
            note = ""
            if version is not None:
                partials = reader.option("versionAsOf", version).load(speed_path)
                partials = partials.filter((F.col(INGEST_TAG) > lo) & (F.col(INGEST_TAG) <= hi))
                served = {int(r[0]) for r in partials.select(INGEST_TAG).distinct().collect()}
                master = reader.option("versionAsOf", hi).load(locations.master)
                tags = master.filter((F.col(INGEST_TAG) > lo) & (F.col(INGEST_TAG) <= hi))
                expected = {int(r[0]) for r in tags.select(INGEST_TAG).distinct().collect()}
                if served != expected:
                    note = f"speed held {len(served)} of the {len(expected)} tags when the batch took them over"
                speed = _by_window(_final(view, partials), measures)
            keys = sorted(set(batch) | set(speed))
            rows = tuple(AuditRow(w, m, speed.get((w, m), 0.0), batch.get((w, m), 0.0)) for w, m in keys)
            rows = tuple(sorted(rows, key=lambda r: (measures.index(r.measure), r.window_start)))
            events = sum(r.batch for r in rows if r.measure == measures[0])
            out.append(ViewAudit(view.name, publication.run_id, previous.run_id, (lo, hi), rows, events, note))
    return out
