"""Where ingest reads lines from: the landing folder or a Kafka topic.

Both sources give the same three columns: ``raw`` (the text of one event),
``source_file`` (where it came from: a file path, or ``kafka://topic/partition/offset``)
and ``_pre_reason`` (why the message cannot even be parsed, else null). A Kafka
message is bytes: a null value, a message above ``max_message_bytes`` or bytes that
are not UTF-8 are quarantined here, whole, without ever reaching the JSON parser.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from lambda_pipeline.core.config import KafkaSettings, Settings
from lambda_pipeline.core.views import RAW, SOURCE_FILE

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["PRE_REASON", "RAW", "decode_messages", "file_lines", "kafka_lines", "kafka_source_options"]

PRE_REASON = "_pre_reason"
BASE64_PREFIX = "base64:"


# Spark's file source skips, silently, a file whose modification time is older than ``maxFileAge`` before the
# newest file it has seen, and ``mv`` keeps a file's time: no age makes a file too old to ingest here.
NO_MAX_FILE_AGE = "36500d"


def file_lines(spark: SparkSession, settings: Settings, landing: str, archive: str | None = None) -> DataFrame:
    """JSON-lines files of the landing folder, one row per line.

    ``ingest.landing_cleanup``: Spark's file source moves (``archive``, to ``archive``) or deletes each file
    once the micro-batch that read it has committed, never before; the folder it lists stays small.
    """
    cleanup = settings.ingest.landing_cleanup
    reader = (
        spark.readStream.format("text")
        .option("maxFilesPerTrigger", settings.ingest.max_files_per_trigger)
        .option("maxFileAge", NO_MAX_FILE_AGE)
        .option("cleanSource", cleanup)
    )
    if cleanup == "archive":
        if archive is None:
            raise ValueError("ingest.landing_cleanup=archive needs the archive folder")
        reader = reader.option("sourceArchiveDir", archive)
    return reader.load(landing).select(
        F.col("value").alias(RAW),
        F.col("_metadata.file_path").alias(SOURCE_FILE),
        F.lit(None).cast("string").alias(PRE_REASON),
    )


def kafka_source_options(kafka: KafkaSettings, *, fail_on_data_loss: bool | None = None) -> dict[str, str]:
    """Options of Spark's ``kafka`` source; ``options`` of the config pass through as ``kafka.<name>``."""
    options = {
        "kafka.bootstrap.servers": kafka.bootstrap_servers,
        "startingOffsets": kafka.starting_offsets,
        "failOnDataLoss": str(kafka.fail_on_data_loss if fail_on_data_loss is None else fail_on_data_loss).lower(),
        "includeHeaders": "false",
    }
    if kafka.topic is not None:
        options["subscribe"] = kafka.topic
    else:
        options["subscribePattern"] = str(kafka.subscribe_pattern)
    if kafka.max_offsets_per_trigger is not None:
        options["maxOffsetsPerTrigger"] = str(kafka.max_offsets_per_trigger)
    if kafka.min_partitions is not None:
        options["minPartitions"] = str(kafka.min_partitions)
    options.update({f"kafka.{key}": value for key, value in kafka.resolved_options().items()})
    return options


def decode_messages(messages: DataFrame, max_message_bytes: int) -> DataFrame:
    """Kafka rows (``value`` bytes, ``topic``, ``partition``, ``offset``) -> ``raw``, ``source_file``, ``_pre_reason``.

    Pure, so the tests run it on batch DataFrames. Nothing is dropped: a message
    that is not text keeps its bytes in ``raw`` as ``base64:...``.
    """
    value = F.col("value")
    size = F.octet_length(value)
    text = value.cast("string")
    valid_utf8 = F.is_valid_utf8(text)
    reason = (
        F.when(value.isNull(), F.lit("empty_message: null value (a tombstone or a producer bug)"))
        .when(
            size > max_message_bytes,
            F.concat(
                F.lit("oversize: "),
                size.cast("string"),
                F.lit(f" bytes > ingest.kafka.max_message_bytes = {max_message_bytes}"),
            ),
        )
        .when(~valid_utf8, F.lit(f"invalid_utf8: not UTF-8 text; raw holds the bytes as {BASE64_PREFIX}<base64>"))
    )
    raw = (
        F.when(value.isNull(), F.lit(""))
        .when(valid_utf8, text)
        .otherwise(F.concat(F.lit(BASE64_PREFIX), F.base64(value)))
    )
    where = F.concat(
        F.lit("kafka://"),
        F.col("topic"),
        F.lit("/"),
        F.col("partition").cast("string"),
        F.lit("/"),
        F.col("offset").cast("string"),
    )
    return messages.select(raw.alias(RAW), where.alias(SOURCE_FILE), reason.alias(PRE_REASON))


def kafka_lines(spark: SparkSession, kafka: KafkaSettings, *, fail_on_data_loss: bool | None = None) -> DataFrame:
    """Messages of the configured topic (or pattern), decoded into lines."""
    reader = spark.readStream.format("kafka")
    for key, value in kafka_source_options(kafka, fail_on_data_loss=fail_on_data_loss).items():
        reader = reader.option(key, value)
    return decode_messages(reader.load(), kafka.max_message_bytes)
