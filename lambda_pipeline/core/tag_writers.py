"""What a layer writes inside an ingest micro-batch: the interface between ingestion and the layers it feeds.

Ingest appends each micro-batch to master as one commit, whose version is the events' ingest tag. A layer
that keeps partial states per tag (the speed layer) writes them in the same micro-batch, right after the
master commit, from the same rows (the one hop, docs/architecture.md). Ingestion knows only this interface;
``pipelines/ingest.py`` hands it the layers' writers, so that no layer imports another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from lambda_pipeline.core.config import Settings
    from lambda_pipeline.core.locations import Locations
    from lambda_pipeline.core.pipeline import Pipeline
    from lambda_pipeline.core.streaming import OnceAppender, PhaseTimer

__all__ = ["IngestContext", "TagWriter", "TagWriterFactory"]


@dataclass(frozen=True)
class IngestContext:
    """What a writer shares with the ingest job that runs it."""

    spark: SparkSession
    pipeline: Pipeline
    settings: Settings
    locations: Locations
    appender: OnceAppender
    """Ingest's exactly-once appender: a write marked with the micro-batch id happens once across replays."""


class TagWriter(Protocol):
    """A layer's part of the ingest job. Ingest calls, in this order:

    - :meth:`prepare` once, after master exists and before the stream starts (create tables, catch up);
    - :meth:`write` in each micro-batch with valid events, after their master commit;
    - :meth:`maintain` at the end of each micro-batch, after every commit of it.
    """

    def prepare(self) -> None: ...

    def write(self, events: DataFrame, tag: int, batch_id: int, timer: PhaseTimer, *, replay: bool) -> None:
        """Write what ``events`` (all of tag ``tag``) add to this layer, once per micro-batch.

        ``replay``: the master commit of this micro-batch was already there (a replay after a crash), so
        ``events`` are read back from master and an earlier attempt may have written this layer's part.
        """
        ...

    def maintain(self, batch_id: int, timer: PhaseTimer) -> None: ...


TagWriterFactory = Callable[[IngestContext], TagWriter]
"""How the composition hands a layer's writer to ingest: built once the job's context exists."""
