"""Ingest's own upkeep of its tables: it compacts master and quarantine in its micro-batch and vacuums them and
the speed tables beside it.

Ingest tags each master commit with the version it predicts, so no other process may commit to master while
it runs (``core/compact_vacuum.py``): a running ingest maintains the two tables itself. Compaction commits, so
it runs inside the micro-batch, which waits for it; it is kept short by running often, each run rewriting
what came since. The vacuum of master and quarantine commits nothing (its log entries are off), so it runs
in a thread beside the micro-batches.

The speed tables are ingest's too: on S3 with Delta's default log store no other application may commit to
them (``core/log_store.py``). They are vacuumed beside the micro-batches as well, never compacted (one file per
tag, purged by whole partitions), and without log entries too: the thread beside checks no lease, so it must
commit nothing (a zombie's commit could take a version from the instance that took its lease over).
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lambda_pipeline.core.compact_vacuum import INGESTS, maintain
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.streaming import PhaseTimer

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["MasterUpkeep"]


@dataclass
class MasterUpkeep:
    """Compaction every ``compact_every`` seconds (in the micro-batch), vacuum every ``vacuum_every`` (beside)."""

    spark: SparkSession
    pipeline: Pipeline
    locations: Locations
    vacuum_every: float | None = None
    """``maintenance.interval``."""
    compact_every: float | None = None
    """``maintenance.ingest_compact_every``."""
    _vacuumed_at: float = dataclasses.field(default_factory=time.monotonic)
    _compacted_at: float = dataclasses.field(default_factory=time.monotonic)
    _vacuum: threading.Thread | None = None

    def after_batch(self, batch_id: int, timer: PhaseTimer) -> None:
        """Start a vacuum beside the micro-batches when one is due; compact in this micro-batch when due."""
        now = time.monotonic()
        if self.vacuum_every is not None and now - self._vacuumed_at >= self.vacuum_every:
            self._vacuumed_at = now
            self._vacuum_beside(batch_id)
        if self.compact_every is not None and now - self._compacted_at >= self.compact_every:
            with timer.phase("maintain"):
                self._maintain(f"ingest {batch_id}", vacuum=False)
            self._compacted_at = time.monotonic()

    def _maintain(self, who: str, *, compact: bool = True, vacuum: bool = True) -> None:
        """Compact master and quarantine, or vacuum them and the speed tables (no commit); a log line per table."""
        speed = [f"speed.{view.name}" for view in self.pipeline.views] if vacuum else []
        maintain(
            self.spark,
            self.pipeline,
            self.locations,
            only=[*sorted(INGESTS), *speed],
            compact=compact,
            vacuum=vacuum,
            unlogged=True,
            on_table=lambda done: print(f"{who}: maintain {done.describe()}", flush=True),
        )

    def _vacuum_beside(self, batch_id: int) -> None:
        if self._vacuum is not None and self._vacuum.is_alive():
            return  # the previous vacuum still runs: this one would find nothing more to delete

        def run() -> None:
            try:
                self._maintain(f"ingest (beside micro-batch {batch_id})", compact=False)
            except Exception as error:  # a vacuum is retried at the next interval; ingest goes on
                first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                print(
                    f"ingest: the vacuum of its tables failed ({type(error).__name__}: {first}); "
                    "it runs again after maintenance.interval",
                    file=sys.stderr,
                    flush=True,
                )

        self._vacuum = threading.Thread(target=run, name="ingest-vacuum", daemon=True)
        self._vacuum.start()
