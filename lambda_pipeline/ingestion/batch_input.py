"""The exact input of one ingest micro-batch, read back from the query's own checkpoint.

Why: the ingest stream must keep a single streaming source. The dedup operator
(``dropDuplicatesWithinWatermark``) drops repeated ids, yet quarantine must keep
them, so the job needs every line of the micro-batch *and* the dedup's verdict.
Reading the source twice in one query (a self-union) makes Spark plan two sources
that each pick their own end offset: a message arriving between the two picks
lands in different micro-batches of the two branches and is misrouted. Instead,
the stream carries only the dedup verdicts, and each micro-batch re-reads its
input from the range its offset log recorded before it ran (Spark's write-ahead
log): the same bytes on a first run and on any replay.

The formats read here are Spark's checkpoint formats (``offsets/<batch>``, the
file source log ``sources/0/<batch>[.compact]``, the Kafka initial offsets
``sources/0/0``); they are stable across Spark 3 and 4.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from lambda_pipeline.core.config import Settings
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.streaming import json_lines, read_text
from lambda_pipeline.core.views import SOURCE_FILE
from lambda_pipeline.ingestion.sources import PRE_REASON, RAW, decode_messages, kafka_source_options

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["BatchRange", "read_batch_input", "read_batch_range"]


@dataclass(frozen=True)
class BatchRange:
    """What one micro-batch read: its timestamp, and its start and end offsets (Kafka) or files."""

    batch_id: int
    timestamp_ms: int
    start: dict[str, dict[str, int]] | None
    end: Any


def _offset_entry(spark: SparkSession, checkpoint: str, batch_id: int) -> tuple[int, Any] | None:
    text = read_text(spark, posixpath.join(checkpoint, "offsets", str(batch_id)))
    if text is None:
        return None
    metadata, *sources = json_lines(text)
    if len(sources) != 1:
        raise LambdaError(
            f"ingest checkpoint {checkpoint} has {len(sources)} sources in batch {batch_id}; this version of the "
            "ingest job reads one source. Start ingest on a new checkpoint (a new work directory) and re-ingest."
        )
    return int(metadata["batchTimestampMs"]), sources[0]


def read_batch_range(spark: SparkSession, checkpoint: str, batch_id: int) -> BatchRange:
    """The range micro-batch ``batch_id`` covers, from the offset log written before it ran."""
    entry = _offset_entry(spark, checkpoint, batch_id)
    if entry is None:
        raise LambdaError(f"ingest checkpoint {checkpoint} has no offset log entry for micro-batch {batch_id}")
    timestamp_ms, end = entry
    start = None
    if batch_id > 0:
        previous = _offset_entry(spark, checkpoint, batch_id - 1)
        start = previous[1] if previous is not None else None
    if start is None and isinstance(end, dict) and "logOffset" not in end:
        text = read_text(spark, posixpath.join(checkpoint, "sources", "0", "0"))
        objects = json_lines(text) if text else []
        start = objects[0] if objects else None
    return BatchRange(batch_id, timestamp_ms, start, end)


def _batch_files(spark: SparkSession, checkpoint: str, batch_id: int) -> list[str]:
    log = posixpath.join(checkpoint, "sources", "0")
    text = read_text(spark, posixpath.join(log, str(batch_id)))
    if text is None:
        text = read_text(spark, posixpath.join(log, f"{batch_id}.compact")) or ""
    return [e["path"] for e in json_lines(text) if e and int(e.get("batchId", batch_id)) == batch_id]


def _kafka_bounds(start: dict[str, dict[str, int]] | None, end: dict[str, dict[str, int]]) -> tuple[str, str]:
    """startingOffsets/endingOffsets JSON: a partition new since the last batch starts at its earliest (-2)."""
    starting = {
        topic: {p: (start or {}).get(topic, {}).get(p, -2) for p in partitions} for topic, partitions in end.items()
    }
    return json.dumps(starting), json.dumps(end)


def read_batch_input(
    spark: SparkSession,
    settings: Settings,
    checkpoint: str,
    batch: BatchRange,
    *,
    fail_on_data_loss: bool | None = None,
) -> DataFrame:
    """The lines of one micro-batch as a static DataFrame: ``raw``, ``source_file``, ``_pre_reason``."""
    if settings.ingest.source == "kafka":
        starting, ending = _kafka_bounds(batch.start, batch.end)
        reader = spark.read.format("kafka")
        options = kafka_source_options(settings.ingest.kafka, fail_on_data_loss=fail_on_data_loss)
        for key in ("subscribe", "subscribePattern", "startingOffsets", "maxOffsetsPerTrigger", "minPartitions"):
            options.pop(key, None)
        # The exact partitions of the range: a pattern could match a topic created since.
        options["assign"] = json.dumps({topic: [int(p) for p in parts] for topic, parts in batch.end.items()})
        for key, value in {**options, "startingOffsets": starting, "endingOffsets": ending}.items():
            reader = reader.option(key, value)
        return decode_messages(reader.load(), settings.ingest.kafka.max_message_bytes)
    files = _batch_files(spark, checkpoint, batch.batch_id)
    if not files:
        raise LambdaError(
            f"ingest checkpoint {checkpoint}: the file source log lists no file for batch {batch.batch_id}"
        )
    return (
        spark.read.format("text")
        .load(files)
        .select(
            F.col("value").alias(RAW),
            F.col("_metadata.file_path").alias(SOURCE_FILE),
            F.lit(None).cast("string").alias(PRE_REASON),
        )
    )
