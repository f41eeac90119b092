"""Ingest: JSON lines from the landing folder or a Kafka topic -> the master dataset, exactly once.

Each micro-batch becomes one commit of the append-only master table; every
event in it carries that commit's version as its ``ingest_tag``, the unit in
which the batch layer states its coverage. A line that does not parse, does
not fit the schema, or repeats an ``event_id`` seen within the dedup horizon
goes to the quarantine table with its raw text, origin and reason: the number of
input lines (or Kafka messages) always equals master rows plus quarantine rows.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql import Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lambda_pipeline.core.config import EventTimePolicy, Settings, duration_seconds
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.streaming import CheckpointAppId, OnceAppender, PhaseTimer, with_trigger
from lambda_pipeline.core.tables import QUARANTINE_SCHEMA, Locations, ensure_table, latest_version
from lambda_pipeline.core.views import INGEST_TAG, INGESTED_AT, SOURCE_FILE, EventSource
from lambda_pipeline.ingestion.batch_input import read_batch_input, read_batch_range
from lambda_pipeline.ingestion.data_loss import check_data_loss, record_data_loss
from lambda_pipeline.ingestion.sources import PRE_REASON, RAW, file_lines, kafka_lines

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

__all__ = ["IngestBatch", "parse_events", "route_batch", "setup_ingest_tables", "start_ingest"]

REASON = "reason"
_CORRUPT = "_corrupt"
_BRANCH = "_branch"
_RAW_EXCERPT = 60


def _typed(column: str, dtype: T.DataType) -> Column:
    raw = F.col(f"_j.{column}")
    if isinstance(dtype, T.StringType):
        return raw
    if isinstance(dtype, T.TimestampType):
        return F.expr(f"try_to_timestamp(`_j`.`{column}`)")
    return F.expr(f"try_cast(`_j`.`{column}` AS {dtype.simpleString()})")


def _event_time_check(source: EventSource, policy: EventTimePolicy, now: Column) -> Column:
    """Reason for an event time outside the plausible range, else null.

    ``now`` is the micro-batch's timestamp, kept in the offset log, so a replayed
    micro-batch judges every event the same way.
    """
    column = F.col(source.time_column)
    latest = now + F.expr(f"INTERVAL {duration_seconds(policy.max_future)} SECONDS")
    earliest = F.to_timestamp(F.lit(policy.earliest))
    return F.when(
        (column > latest) | (column < earliest),
        F.concat(
            F.lit(f"event_time_out_of_range: {source.time_column} "),
            F.date_format(column, "yyyy-MM-dd'T'HH:mm:ss'Z'"),
            F.lit(f" is before {policy.earliest} or more than {policy.max_future} ahead of ingestion"),
        ),
    )


def parse_events(
    lines: DataFrame, source: EventSource, policy: EventTimePolicy | None = None, now: Column | None = None
) -> DataFrame:
    """Parse ``raw`` JSON lines into the source's typed columns plus a ``reason`` (null when valid).

    Pure: usable on a batch DataFrame in tests and inside the ingest stream. Every
    field is first read as text, so a wrong type is reported as such instead of
    silently becoming null. A ``_pre_reason`` column (a message the source could not
    even decode) wins over every other reason. Fields the schema does not know
    (additive schema drift) are ignored: the event is accepted with its known fields.
    """
    policy = policy or EventTimePolicy()
    now = F.current_timestamp() if now is None else now
    if PRE_REASON not in lines.columns:
        lines = lines.withColumn(PRE_REASON, F.lit(None).cast("string"))
    text_schema = T.StructType(
        [T.StructField(f.name, T.StringType(), True) for f in source.schema.fields]
        + [T.StructField(_CORRUPT, T.StringType(), True)]
    )
    json = F.from_json(F.col(RAW), text_schema, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT})
    # Behind a generator, the optimizer cannot inline from_json into every field reference of a
    # filter pushed down from above (which made each line parse about twenty times).
    parsed = lines.select("*", F.explode(F.array(json)).alias("_j"))
    typed = [_typed(f.name, f.dataType).alias(f.name) for f in source.schema.fields]
    checks = [
        F.col(PRE_REASON),
        F.when(F.trim(F.col(RAW)) == "", F.lit("empty_line")),
        F.when(
            F.col("_j").isNull() | F.col(f"_j.{_CORRUPT}").isNotNull(),
            F.lit("malformed_json: not a JSON object"),
        ),
    ]
    for field in source.schema.fields:
        raw = F.col(f"_j.{field.name}")
        if field.name in source.required:
            blank = raw.isNull() | (F.trim(raw) == "")
            checks.append(F.when(blank, F.lit(f"missing_field: {field.name}")))
        checks.append(
            F.when(
                raw.isNotNull() & (F.trim(raw) != "") & _typed(field.name, field.dataType).isNull(),
                F.concat(
                    F.lit(f"wrong_type: {field.name} expected {field.dataType.simpleString()}, got "),
                    F.substring(raw, 1, _RAW_EXCERPT),
                ),
            )
        )
    # Last: only a line that is otherwise valid has an event time to judge.
    with_fields = parsed.select(RAW, SOURCE_FILE, *typed, F.coalesce(*checks).alias(REASON))
    return with_fields.withColumn(
        REASON, F.coalesce(F.col(REASON), _event_time_check(source, policy, now).cast("string"))
    )


def route_batch(batch: DataFrame, source: EventSource) -> DataFrame:
    """Route one ingest micro-batch: ``reason`` null for master, else why it goes to quarantine.

    ``batch`` holds every parsed line (branch ``all``) and, from the stateful
    dedup operator, the event ids seen for the first time within the horizon
    (branch ``first``). One copy of each first-seen id goes to master; the other
    copies are duplicates. Copies are numbered deterministically, so a replayed
    micro-batch routes every line the same way.
    """
    event_id = source.id_column
    lines = batch.filter(F.col(_BRANCH) == "all").drop(_BRANCH)
    firsts = batch.filter(F.col(_BRANCH) == "first").select(event_id, F.lit(True).alias("_first")).distinct()
    # Partitioned by the id alone (valid lines sorted first), so the join below reuses the same shuffle.
    copies = Window.partitionBy(event_id).orderBy(F.col(REASON).isNotNull(), SOURCE_FILE, RAW)
    numbered = lines.withColumn("_copy", F.row_number().over(copies)).join(firsts, event_id, "left")
    duplicate = F.col(REASON).isNull() & ~(F.coalesce(F.col("_first"), F.lit(False)) & (F.col("_copy") == 1))
    return numbered.withColumn(
        REASON,
        F.when(duplicate, F.lit(f"duplicate: {event_id} already ingested within the dedup horizon")).otherwise(
            F.col(REASON)
        ),
    ).drop("_copy", "_first")


def setup_ingest_tables(spark: SparkSession, pipeline: Pipeline, locations: Locations) -> None:
    ensure_table(spark, locations.master, pipeline.source.master_schema)
    ensure_table(spark, locations.quarantine, QUARANTINE_SCHEMA)


@dataclass
class IngestBatch:
    """The foreachBatch body: one master commit (tagged with its own version) and one quarantine commit."""

    spark: SparkSession
    source: EventSource
    settings: Settings
    locations: Locations
    checkpoint: str
    appender: OnceAppender
    fail_on_data_loss: bool | None = None

    def __call__(self, firsts: DataFrame, batch_id: int) -> None:
        timer = PhaseTimer("ingest", batch_id)
        routed = route_batch(self.micro_batch(firsts, batch_id), self.source).persist()
        try:
            with timer.phase("route"):  # the one Spark job that reads, parses, deduplicates and routes
                counts = {bool(ok): n for ok, n in routed.groupBy(F.col(REASON).isNull().alias("ok")).count().collect()}
            if not counts:  # a no-data batch (the watermark moved): nothing to write
                return
            writes: list[Callable[[], object]] = []
            if counts.get(True):

                def master() -> None:
                    with timer.phase("master_commit"):
                        self._append_master(routed.filter(F.col(REASON).isNull()), batch_id)

                writes.append(master)
            if counts.get(False):
                quarantine = routed.filter(F.col(REASON).isNotNull()).select(
                    RAW,
                    SOURCE_FILE,
                    REASON,
                    F.lit(batch_id).cast("long").alias("ingest_batch"),
                    F.col(INGESTED_AT).alias("quarantined_at"),
                )

                def quarantined() -> None:
                    with timer.phase("quarantine_commit"):
                        self.appender.append(self.spark, quarantine, self.locations.quarantine, batch_id)

                writes.append(quarantined)
            # Two independent, idempotent commits: small Delta commits are latency-bound, so overlap them.
            with ThreadPoolExecutor(max_workers=2) as pool:
                for future in [pool.submit(write) for write in writes]:
                    future.result()
        finally:
            routed.unpersist()
            timer.report()

    def micro_batch(self, firsts: DataFrame, batch_id: int) -> DataFrame:
        """Every line of the micro-batch (branch ``all``) beside the dedup's first-seen ids (branch ``first``)."""
        batch = read_batch_range(self.spark, self.checkpoint, batch_id)
        now = F.lit(batch.timestamp_ms / 1000.0).cast("timestamp")
        lines = read_batch_input(
            self.spark, self.settings, self.checkpoint, batch, fail_on_data_loss=self.fail_on_data_loss
        )
        parsed = parse_events(lines, self.source, self.settings.ingest.event_time, now).withColumn(INGESTED_AT, now)
        return parsed.withColumn(_BRANCH, F.lit("all")).unionByName(
            firsts.withColumn(_BRANCH, F.lit("first")), allowMissingColumns=True
        )

    def _append_master(self, events: DataFrame, batch_id: int) -> None:
        # Only this job writes master, so the next commit's version is known before writing.
        before = latest_version(self.spark, self.locations.master)
        tagged = events.withColumn(INGEST_TAG, F.lit(before + 1).cast("long"))
        self.appender.append(
            self.spark, tagged.select(*self.source.master_schema.fieldNames()), self.locations.master, batch_id
        )
        after = latest_version(self.spark, self.locations.master)
        if after not in (before, before + 1):
            raise LambdaError(
                f"master table {self.locations.master} moved from version {before} to {after} during one "
                "ingest commit: another process writes it. Only the ingest job may write the master "
                "dataset; stop the other writer and restart ingest (its checkpoint makes this safe)."
            )


def ingest_stream(
    spark: SparkSession,
    source: EventSource,
    settings: Settings,
    landing: str,
    *,
    fail_on_data_loss: bool | None = None,
) -> DataFrame:
    """The dedup verdicts of the stream: each valid event id seen for the first time within the horizon.

    One streaming source, one linear plan: the lines themselves are re-read per
    micro-batch from the range its offset log recorded (see ``lambda_pipeline.ingestion.batch_input``).
    """
    if settings.ingest.source == "kafka":
        lines = kafka_lines(spark, settings.ingest.kafka, fail_on_data_loss=fail_on_data_loss)
    else:
        lines = file_lines(spark, settings, landing)
    # current_timestamp() is the micro-batch's timestamp, stored in the offset log: a replay sees the same.
    parsed = parse_events(lines, source, settings.ingest.event_time).withColumn(INGESTED_AT, F.current_timestamp())
    return (
        parsed.filter(F.col(REASON).isNull())
        .select(source.id_column, INGESTED_AT)
        .withWatermark(INGESTED_AT, settings.ingest.dedup_horizon)
        .dropDuplicatesWithinWatermark([source.id_column])
        .select(source.id_column)
    )


def start_ingest(
    spark: SparkSession,
    pipeline: Pipeline,
    settings: Settings,
    locations: Locations,
    *,
    once: bool = False,
    accept_data_loss: bool = False,
) -> StreamingQuery:
    """Start the ingest stream (``once``: process what is there, then stop).

    A Kafka source is first checked for offsets that aged out while ingest was down
    (:mod:`lambda_pipeline.ingestion.data_loss`): the job refuses to skip them unless ``accept_data_loss``.
    """
    locations.ensure_dirs(spark)  # the file source needs its landing folder, also on S3
    setup_ingest_tables(spark, pipeline, locations)
    checkpoint = locations.checkpoint("ingest")
    fail_on_data_loss = None
    if settings.ingest.source == "kafka":
        lost = check_data_loss(spark, settings.ingest.kafka, checkpoint, accept=accept_data_loss)
        if lost:
            record_data_loss(spark, lost, locations.quarantine, checkpoint)
            fail_on_data_loss = False
    body = IngestBatch(
        spark,
        pipeline.source,
        settings,
        locations,
        checkpoint,
        OnceAppender(CheckpointAppId("ingest", checkpoint), idempotent=settings.idempotent_writes),
        fail_on_data_loss=fail_on_data_loss,
    )
    writer = (
        ingest_stream(spark, pipeline.source, settings, locations.landing, fail_on_data_loss=fail_on_data_loss)
        .writeStream.queryName(f"ingest_{pipeline.name}")
        .option("checkpointLocation", checkpoint)
        .foreachBatch(body)
    )
    return with_trigger(writer, settings.ingest.trigger, once=once).start()
