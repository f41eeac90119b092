"""Provenance: where an answer about one view comes from (the publication, the uncovered tags) and how fresh it is."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from lambda_pipeline.core.clock import as_utc, iso_utc, utc_now
from lambda_pipeline.core.views import INGEST_TAG, INGESTED_AT_MAX, WINDOW_START
from lambda_pipeline.serving_layer.pin import Pin

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = ["Provenance", "provenance_at", "with_freshness_lag"]


@dataclass(frozen=True)
class Provenance:
    """Where an answer about one view comes from and how fresh it is. Its times are aware UTC."""

    view: str
    covered_master_version: int
    batch_run_id: str
    batch_published_at: datetime | None
    batch_view_version: int | None
    speed_table_version: int | None
    master_table_version: int
    uncovered_tags: tuple[int, int] | None
    newest_event_window: datetime | None
    newest_ingested_at: datetime | None
    freshness_lag_seconds: float | None
    batch_restores: str | None = None
    """Set when the publication served is a rollback: the run id of the earlier one it serves again."""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = iso_utc(value)
        return out


def provenance_at(view_name: str, pin: Pin, batch_states: DataFrame, uncovered_partials: DataFrame) -> Provenance:
    """The provenance of ``view_name`` at ``pin``, from the view's pinned batch states and uncovered speed
    partials (two small Spark jobs); its freshness lag is left for :func:`with_freshness_lag`, at the time of asking."""
    windowed = WINDOW_START in batch_states.columns  # an all-time view has no windows
    newest = F.max(WINDOW_START) if windowed else F.lit(None).cast("timestamp")
    stats = uncovered_partials.agg(
        F.min(INGEST_TAG).alias("lo"),
        F.max(INGEST_TAG).alias("hi"),
        F.max(INGESTED_AT_MAX).alias("newest"),
        newest.alias("newest_window"),
    ).first()
    batch_window = batch_states.agg(newest.alias("w")).first()
    assert stats is not None and batch_window is not None
    cov = pin.coverage
    newest_window = max((w for w in (stats.newest_window, batch_window.w) if w is not None), default=None)
    return Provenance(
        view=view_name,
        covered_master_version=cov.master_version,
        batch_run_id=cov.run_id,
        batch_published_at=cov.published_at if cov.run_id != "none" else None,
        batch_view_version=cov.view_versions.get(view_name),
        speed_table_version=pin[view_name].speed_version,
        master_table_version=pin.master_version,
        uncovered_tags=(int(stats.lo), int(stats.hi)) if stats.lo is not None else None,
        # collect() gives naive local times: made UTC, so that every driver reports the same instants.
        newest_event_window=None if newest_window is None else as_utc(newest_window),
        newest_ingested_at=None if stats.newest is None else as_utc(stats.newest),
        freshness_lag_seconds=None,
        batch_restores=cov.restores,
    )


def with_freshness_lag(known: Provenance) -> Provenance:
    """``known`` with its freshness lag as of now: the age of the newest ingested event it serves."""
    lag = None
    if known.newest_ingested_at is not None:
        lag = (utc_now() - as_utc(known.newest_ingested_at)).total_seconds()
    return replace(known, freshness_lag_seconds=lag)
