"""Helpers shared by the streaming jobs: triggers, idempotent-write ids, running a query."""

from __future__ import annotations

import json
import posixpath
import signal
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import DataStreamWriter, StreamingQuery

__all__ = ["CheckpointAppId", "idempotent_append", "run_until_stopped", "stop_between_batches", "with_trigger"]


def with_trigger(writer: DataStreamWriter, interval: str, *, once: bool) -> DataStreamWriter:
    """``availableNow`` for one catch-up run, otherwise a processing-time trigger."""
    return writer.trigger(availableNow=True) if once else writer.trigger(processingTime=interval)


class CheckpointAppId:
    """The ``txnAppId`` of a foreachBatch writer, derived from its checkpoint's query id.

    Batch ids restart at 0 with a new checkpoint; an app id that did not change
    with it would make Delta silently skip the new query's first writes.
    """

    def __init__(self, prefix: str, checkpoint: str) -> None:
        self.prefix, self.checkpoint, self._value = prefix, checkpoint, None

    def get(self, spark: SparkSession) -> str:
        if self._value is None:
            text = "\n".join(r.value for r in spark.read.text(posixpath.join(self.checkpoint, "metadata")).collect())
            self._value = f"{self.prefix}-{json.loads(text)['id']}"
        return self._value


def idempotent_append(frame: DataFrame, path: str, app_id: str, batch_id: int, *, idempotent: bool = True) -> None:
    """Append once per (app id, batch id): a replayed micro-batch is skipped by Delta itself.

    ``idempotent=False`` writes a plain append: only the crash tests' control run uses it.
    """
    writer = frame.write.format("delta").mode("append")
    if idempotent:
        writer = writer.option("txnAppId", app_id).option("txnVersion", batch_id)
    writer.save(path)


def stop_between_batches(query: StreamingQuery, timeout: float = 60.0) -> None:
    """Stop a query when no micro-batch is running (bounded wait), then stop it regardless.

    Interrupting a running micro-batch is safe for the data (the checkpoint and
    idempotent commits replay it), but Spark can fail noisily while unwinding it.
    """
    deadline = time.monotonic() + timeout
    while query.isActive and query.status.get("isTriggerActive") and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the query's own status, bounded by the deadline
    if query.isActive:
        query.stop()


def run_until_stopped(queries: list[StreamingQuery], *, once: bool) -> None:
    """Wait for the queries; on SIGINT/SIGTERM stop them between micro-batches."""
    if once:
        for query in queries:
            query.awaitTermination()
        return
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.is_set() and all(q.isActive for q in queries):
            stop.wait(1.0)
        for query in queries:
            stop_between_batches(query)
        for query in queries:
            if query.exception() is not None:
                raise query.exception()  # type: ignore[misc]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
