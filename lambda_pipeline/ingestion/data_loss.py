"""Loud data loss: Kafka offsets the ingest job still needed but the topic no longer holds.

Retention deletes old segments whether or not a consumer read them. If ingest was
down longer than the topic's retention, the next offsets it needs are gone. Spark
can skip them silently (``failOnDataLoss=false``); this project never does by
default. Before the stream starts, the offsets the checkpoint needs are compared
with what the topic still has, and the job stops with the exact partitions and
offset ranges that are lost. ``--accept-data-loss`` resumes knowingly: each lost
range is recorded in quarantine (reason ``data_loss``), exactly once, and ingest
continues from the earliest offsets the topic still has.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from lambda_pipeline.core.clock import utc_now
from lambda_pipeline.core.config import KafkaSettings
from lambda_pipeline.core.errors import DataLossError, EnvironmentProblem
from lambda_pipeline.core.jvm import HadoopPath, java_exception_names, kafka_offsets
from lambda_pipeline.core.streaming import CheckpointAppId, OnceAppender, json_lines, read_text
from lambda_pipeline.core.tables import QUARANTINE_SCHEMA
from lambda_pipeline.ingestion.sources import kafka_source_options

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

OFFSETS_TIMEOUT_MS = 30_000
"""How long the check waits for the brokers (``default.api.timeout.ms``; a Kafka option of the config wins)."""

__all__ = ["LostRange", "check_data_loss", "find_data_loss", "is_data_loss_failure", "record_data_loss"]


@dataclass(frozen=True)
class LostRange:
    """Offsets ``[first, end)`` of one partition, needed by ingest and no longer in the topic."""

    topic: str
    partition: int
    first: int
    end: int
    why: str

    @property
    def messages(self) -> int:
        return max(0, self.end - self.first)

    def describe(self) -> str:
        return (
            f"{self.topic}-{self.partition} offsets {self.first}..{self.end - 1} ({self.messages} messages, {self.why})"
        )


def _last_committed_batch(spark: SparkSession, checkpoint: str) -> int | None:
    names = HadoopPath(spark, posixpath.join(checkpoint, "commits")).names()
    ids = [int(name) for name in names or () if name.isdigit()]
    return max(ids) if ids else None


def needed_offsets(spark: SparkSession, checkpoint: str) -> dict[str, dict[int, int]] | None:
    """The next offset of each partition the checkpoint will read, or None for a new checkpoint."""
    batch = _last_committed_batch(spark, checkpoint)
    if batch is None:
        return None
    text = read_text(spark, posixpath.join(checkpoint, "offsets", str(batch)))
    objects = json_lines(text or "")
    if len(objects) < 2 or not isinstance(objects[1], dict) or "logOffset" in objects[1]:
        return None  # not a Kafka checkpoint
    return {topic: {int(p): int(o) for p, o in parts.items()} for topic, parts in objects[1].items()}


def topic_offsets(
    spark: SparkSession, kafka: KafkaSettings, partitions: dict[str, list[int]]
) -> dict[tuple[str, int], tuple[int, int]]:
    """(earliest, latest) offset of each partition, through the JVM Kafka client Spark itself uses.

    The same client and the same ``kafka.*`` options as the stream, so SASL/SSL/MSK IAM work alike.
    """
    properties = {
        key[len("kafka.") :]: value for key, value in kafka_source_options(kafka).items() if key.startswith("kafka.")
    }
    properties.setdefault("default.api.timeout.ms", str(OFFSETS_TIMEOUT_MS))
    try:
        return kafka_offsets(spark, properties, partitions)
    except Exception as error:
        if "TimeoutException" not in java_exception_names(error):
            raise
        seconds = int(properties["default.api.timeout.ms"]) / 1000
        raise EnvironmentProblem(
            f"ingest: the Kafka brokers {kafka.bootstrap_servers} did not answer within {seconds:g}s, so the offsets "
            "ingest still needs could not be checked against the topic; is Kafka up and reachable from here "
            "(lambda-pipeline kafka status, for the project's own broker)? Start ingest again once it answers"
        ) from None


def find_data_loss(spark: SparkSession, kafka: KafkaSettings, checkpoint: str) -> list[LostRange]:
    """Ranges the checkpoint still needs that the topic no longer holds (empty for a new checkpoint)."""
    needed = needed_offsets(spark, checkpoint)
    if not needed:
        return []
    available = topic_offsets(spark, kafka, {t: list(parts) for t, parts in needed.items()})
    lost = []
    for topic, parts in needed.items():
        for partition, offset in parts.items():
            if (topic, partition) not in available:
                lost.append(LostRange(topic, partition, offset, offset, "the partition no longer exists"))
                continue
            earliest, latest = available[(topic, partition)]
            if earliest > offset:
                lost.append(LostRange(topic, partition, offset, earliest, "aged out of the topic's retention"))
            elif latest < offset:
                why = f"the partition now ends at {latest}: the topic was deleted and re-created"
                lost.append(LostRange(topic, partition, latest, offset, why))
    return lost


def data_loss_message(lost: list[LostRange], checkpoint: str) -> str:
    ranges = "; ".join(r.describe() for r in lost)
    total = sum(r.messages for r in lost)
    return (
        f"Kafka data that ingest still needed is gone: {ranges} ({total} messages in all; checkpoint {checkpoint}). "
        "Nothing was written. To resume knowingly, run 'lambda-pipeline ingest --accept-data-loss': the lost "
        "ranges are recorded in the quarantine table (reason data_loss) and ingest continues from the earliest "
        "offsets the topic still has. To prevent it, keep the topic's retention.ms longer than any ingest outage."
    )


def is_data_loss_failure(exc: BaseException) -> bool:
    """Whether a failed query stopped on Spark's Kafka data-loss check (offsets gone while it ran)."""
    text = str(exc)
    return "failOnDataLoss" in text or "Some data may have been lost" in text or "data may have been missed" in text


def check_data_loss(spark: SparkSession, kafka: KafkaSettings, checkpoint: str, *, accept: bool) -> list[LostRange]:
    """Raise :class:`DataLossError` for lost ranges unless ``accept``; return them either way."""
    lost = find_data_loss(spark, kafka, checkpoint)
    if lost and not accept:
        raise DataLossError(data_loss_message(lost, checkpoint))
    return lost


def record_data_loss(spark: SparkSession, lost: list[LostRange], quarantine: str, checkpoint: str) -> None:
    """One quarantine row per accepted lost range; idempotent for the same checkpoint position."""
    if not lost:
        return
    now = utc_now()  # aware: PySpark reads a naive time as the driver's local time
    batch = _last_committed_batch(spark, checkpoint)
    rows = [
        (
            json.dumps(asdict(r)),
            f"kafka://{r.topic}/{r.partition}/{r.first}-{r.end - 1}",
            f"data_loss: {r.messages} messages, {r.why}; accepted with --accept-data-loss",
            -1,
            now,
        )
        for r in lost
    ]
    frame = spark.createDataFrame(rows, QUARANTINE_SCHEMA)
    appender = OnceAppender(CheckpointAppId("ingest-data-loss", checkpoint))
    appender.append(spark, frame, quarantine, (batch or 0) + 1)
