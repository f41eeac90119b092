"""Provenance: where an answer about one view comes from (the publication, the uncovered tags) and how fresh it is."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from lambda_pipeline.core.clock import as_utc, iso_utc, utc_now
from lambda_pipeline.core.views import INGEST_TAG, INGESTED_AT_MAX, WINDOW_START
from lambda_pipeline.serving_layer.pin import Pin
from lambda_pipeline.serving_layer.speed_files import SpeedFile

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = ["Provenance", "newest_window", "provenance_at", "provenance_of_files", "with_freshness_lag"]


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
    assert stats is not None
    tags = (int(stats.lo), int(stats.hi)) if stats.lo is not None else None
    # collect() gives naive local times: made UTC, so that every driver reports the same instants.
    speed_window, ingested = (None if t is None else as_utc(t) for t in (stats.newest_window, stats.newest))
    return _provenance(view_name, pin, tags, ingested, speed_window, newest_window(batch_states))


def provenance_of_files(
    view_name: str, pin: Pin, files: list[SpeedFile], batch_window: datetime | None
) -> Provenance | None:
    """:func:`provenance_at` from the speed table's live files and their statistics (no Spark job), given the
    batch states' newest window; None if a file has no statistics."""
    held = [f for f in files if f.tag > pin.coverage.covered_for(view_name) and f.rows != 0]
    if any(f.rows is None for f in held):
        return None
    tags = (min(f.tag for f in held), max(f.tag for f in held)) if held else None
    ingested = max((f.newest_ingested_at for f in held if f.newest_ingested_at), default=None)
    speed_window = max((f.newest_window for f in held if f.newest_window), default=None)
    return _provenance(view_name, pin, tags, ingested, speed_window, batch_window)


def newest_window(batch_states: DataFrame) -> datetime | None:
    """The newest window the batch states hold (one small Spark job); None for an all-time view or no states."""
    if WINDOW_START not in batch_states.columns:
        return None
    row = batch_states.agg(F.max(WINDOW_START).alias("w")).first()
    return None if row is None or row.w is None else as_utc(row.w)


def _provenance(
    view_name: str,
    pin: Pin,
    tags: tuple[int, int] | None,
    newest_ingested_at: datetime | None,
    speed_window: datetime | None,
    batch_window: datetime | None,
) -> Provenance:
    cov = pin.coverage
    return Provenance(
        view=view_name,
        covered_master_version=cov.master_version,
        batch_run_id=cov.run_id,
        batch_published_at=cov.published_at if cov.run_id != "none" else None,
        batch_view_version=cov.view_versions.get(view_name),
        speed_table_version=pin[view_name].speed_version,
        master_table_version=pin.master_version,
        uncovered_tags=tags,
        newest_event_window=max((w for w in (speed_window, batch_window) if w is not None), default=None),
        newest_ingested_at=newest_ingested_at,
        freshness_lag_seconds=None,
        batch_restores=cov.restores,
    )


def with_freshness_lag(known: Provenance) -> Provenance:
    """``known`` with its freshness lag as of now: the age of the newest ingested event it serves."""
    lag = None
    if known.newest_ingested_at is not None:
        lag = (utc_now() - as_utc(known.newest_ingested_at)).total_seconds()
    return replace(known, freshness_lag_seconds=lag)
