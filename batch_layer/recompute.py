"""The batch layer's transforms, pure: exact dedup of a master snapshot, and the checks on what it holds.

Nothing here reads or writes a table: the job (:mod:`.job`) pins master, applies these, and writes each view.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.views import INGEST_TAG, EventSource

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = ["BROADCAST_REPEATS", "deduplicate", "repeated_ids", "require_columns"]


BROADCAST_REPEATS = 1_000_000
"""Up to this many repeated ids are broadcast: the snapshot is then never shuffled for dedup."""
_FIRST_TAG = "_first_tag"


def repeated_ids(events: DataFrame, source: EventSource, partitions: int | None = None) -> DataFrame:
    """The event ids that occur more than once, each with the smallest ingest tag it came in with.

    Ids are nearly all distinct, so a partial aggregation before the shuffle would reduce nothing:
    shuffle the (id, tag) pairs once, then count.
    """
    pairs = events.select(source.id_column, INGEST_TAG)
    if partitions:
        pairs = pairs.repartition(partitions, source.id_column)
    return (
        pairs.groupBy(source.id_column)
        .agg(F.count(F.lit(1)).alias("_copies"), F.min(INGEST_TAG).alias(_FIRST_TAG))
        .filter(F.col("_copies") > 1)
        .drop("_copies")
    )


def deduplicate(
    events: DataFrame, source: EventSource, repeats: DataFrame | None = None, *, broadcast: bool = False
) -> DataFrame:
    """Exactly one row per event id: the copy with the smallest ingest tag.

    One pass over the events, joined with the (rare) repeated ids. Exact because the
    ingest job writes each id at most once per commit, so the smallest tag names one copy.
    """
    repeats = repeated_ids(events, source) if repeats is None else repeats
    joined = events.join(F.broadcast(repeats) if broadcast else repeats, source.id_column, "left")
    keep = F.col(_FIRST_TAG).isNull() | (F.col(INGEST_TAG) == F.col(_FIRST_TAG))
    return joined.filter(keep).select(*events.columns)


def require_columns(master: DataFrame, pipeline: Pipeline, path: str) -> None:
    """Refuse, saying what to run, when a view reads a source field that master has no column for yet."""
    missing = sorted({column for view in pipeline.views for column in view.reads} - set(master.columns))
    if missing:
        raise LambdaError(
            f"master table {path} has no column {', '.join(repr(c) for c in missing)} that a view reads: the "
            "field was added to the source after these events were ingested. Start ingest once with the new "
            "source definition (it adds the column), or fill past events with 'lambda-pipeline refresh "
            f"--backfill {missing[0]}'."
        )
