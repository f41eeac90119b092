"""Ingest: JSON lines from the landing folder or a Kafka topic -> master, quarantine and speed, exactly once.

Each micro-batch becomes one commit of the append-only master table; every
event in it carries that commit's version as its ``ingest_tag``, the unit in
which the batch layer states its coverage. The same rows then become the speed
partials of every view under that tag, in the same micro-batch (the one hop, see
:mod:`lambda_pipeline.speed_layer.job`). A line that does not parse, does not fit
the schema, or repeats an ``event_id`` seen within the dedup horizon goes to the
quarantine table with its raw text, origin and reason: the number of input lines
(or Kafka messages) always equals master rows plus quarantine rows.

Each line is read once and parsed once: the parsed stream is shuffled once by
its dedup key (:func:`dedup_key`), and that one exchange feeds both the stateful
dedup (which emits the first copy of each key within the horizon) and the branch
that keeps every line, so the dedup's verdict meets every line in the same micro-batch. Both branches
hang off the same streaming source, so they see the same offsets.
"""

from __future__ import annotations

import dataclasses
import posixpath
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql import Window
from pyspark.sql import functions as F

from lambda_pipeline.core.compact_vacuum import INGESTS, maintain
from lambda_pipeline.core.config import EventTimePolicy, Settings
from lambda_pipeline.core.deltalog import read_text
from lambda_pipeline.core.durations import duration_seconds
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.leases import Lease, LeaseLost, release_with
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.parsing import CORRUPT, text_schema, typed_value
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.streaming import (
    CheckpointAppId,
    OnceAppender,
    PhaseTimer,
    fail_quietly,
    other_writers,
    with_trigger,
)
from lambda_pipeline.core.tables import QUARANTINE_SCHEMA, add_missing_columns, ensure_table, latest_version
from lambda_pipeline.core.views import INGEST_TAG, INGESTED_AT, RAW, SOURCE_FILE, EventSource
from lambda_pipeline.ingestion.data_loss import check_data_loss, record_data_loss
from lambda_pipeline.ingestion.sources import PRE_REASON, file_lines, kafka_lines
from lambda_pipeline.speed_layer.job import (
    SpeedWriter,
    catch_up,
    changed_views,
    needs_catch_up,
    setup_speed_tables,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

__all__ = ["IngestBatch", "parse_events", "route_batch", "setup_ingest_tables", "start_ingest"]

REASON = "reason"
_BRANCH = "_branch"
_KEY = "_dedup_key"
_RAW_EXCERPT = 60


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
    schema = text_schema(list(source.schema.fields))
    json = F.from_json(F.col(RAW), schema, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT})
    # Behind a generator, the optimizer cannot inline from_json into every field reference of a
    # filter pushed down from above (which made each line parse about twenty times).
    parsed = lines.select("*", F.explode(F.array(json)).alias("_j"))
    typed = [typed_value(F.col(f"_j.{f.name}"), f.dataType).alias(f.name) for f in source.schema.fields]
    checks = [
        F.col(PRE_REASON),
        F.when(F.trim(F.col(RAW)) == "", F.lit("empty_line")),
        F.when(
            F.col("_j").isNull() | F.col(f"_j.{CORRUPT}").isNotNull(),
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
                raw.isNotNull() & (F.trim(raw) != "") & typed_value(raw, field.dataType).isNull(),
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


def dedup_key(source: EventSource) -> Column:
    """What the stateful dedup compares: ``v<event id>`` for a valid line, ``x<hash of the line>`` otherwise.

    Every line goes through the dedup (a filter in front of it would be pushed below the shared shuffle
    and split it in two); the prefixes keep an invalid line from ever matching a valid id.
    """
    valid = F.concat(F.lit("v"), F.col(source.id_column))
    invalid = F.concat(F.lit("x"), F.xxhash64(F.col(SOURCE_FILE), F.col(RAW)).cast("string"))
    return F.when(F.col(REASON).isNull(), valid).otherwise(invalid)


def route_batch(batch: DataFrame, source: EventSource) -> DataFrame:
    """Route one ingest micro-batch: ``reason`` null for master, else why it goes to quarantine.

    ``batch`` holds every parsed line (branch ``all``) and, from the stateful
    dedup operator, the lines whose key was seen for the first time within the
    horizon (branch ``first``). One copy of each first-seen valid id goes to
    master; the other copies are duplicates. Copies are numbered
    deterministically, so a replayed micro-batch routes every line the same way.
    Both branches arrive partitioned by the dedup key, so this needs no shuffle, and one
    window over each key finds the verdict and numbers the copies (a join would read the
    micro-batch twice: Spark recomputes it, source read and stateful dedup included, per scan).
    """
    # One window over each key's rows, no self-join: Spark recomputes the micro-batch for each scan of it.
    # The dedup's row (branch "first") sorts after the key's lines, so numbering the lines is unaffected.
    ordered = Window.partitionBy(_KEY).orderBy(F.col(_BRANCH) == "first", F.col(REASON).isNotNull(), SOURCE_FILE, RAW)
    whole_key = ordered.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    first_seen = F.max(((F.col(_BRANCH) == "first") & F.col(REASON).isNull()).cast("int")).over(whole_key)
    numbered = (
        batch.withColumn("_copy", F.row_number().over(ordered))
        .withColumn("_first", first_seen == 1)
        .filter(F.col(_BRANCH) == "all")
        .drop(_BRANCH)
    )
    duplicate = F.col(REASON).isNull() & ~(F.col("_first") & (F.col("_copy") == 1))
    return numbered.withColumn(
        REASON,
        F.when(duplicate, F.lit(f"duplicate: {source.id_column} already ingested within the dedup horizon")).otherwise(
            F.col(REASON)
        ),
    ).drop("_copy", "_first", _KEY)


def setup_ingest_tables(spark: SparkSession, pipeline: Pipeline, locations: Locations) -> None:
    """The tables ingest writes: master, quarantine and every view's speed partials."""
    ensure_table(spark, locations.master, pipeline.source.master_schema)
    # A field added to the source since: a column of master from now on (``refresh --backfill`` fills the past).
    add_missing_columns(spark, locations.master, pipeline.source.master_schema)
    ensure_table(spark, locations.quarantine, QUARANTINE_SCHEMA)
    setup_speed_tables(spark, pipeline, locations)


@dataclass
class IngestBatch:
    """The foreachBatch body: the master commit (tagged with its own version), then the speed partials of
    that tag; the quarantine commit beside them."""

    spark: SparkSession
    source: EventSource
    locations: Locations
    appender: OnceAppender
    speed: SpeedWriter
    lease: Lease | None = None
    """Checked before the micro-batch's commits and before its maintenance: an instance that lost it stops."""
    maintain_every: float | None = None
    """Seconds between this job's own vacuums of master and quarantine (``maintenance.interval``), in a thread
    beside its micro-batches: no other process may commit to them while it runs (core/compact_vacuum.py)."""
    compact_every: float | None = None
    """Seconds between its compactions of them (``maintenance.ingest_compact_every``): the micro-batch waits
    for one, so it is kept short by running often (each rewrites what came since, core/compact_vacuum.py)."""
    keep_raw: bool = True
    """Whether master keeps each event's raw text (``ingest.keep_raw``): what a backfill reads."""
    _maintained_at: float = dataclasses.field(default_factory=time.monotonic)
    _compacted_at: float = dataclasses.field(default_factory=time.monotonic)
    _vacuum: threading.Thread | None = None

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        timer = PhaseTimer("ingest", batch_id)
        routed = route_batch(batch, self.source).persist()
        try:
            with timer.phase("route"):  # the one Spark job that reads, parses, deduplicates and routes
                counts = {bool(ok): n for ok, n in routed.groupBy(F.col(REASON).isNull().alias("ok")).count().collect()}
            self._check_lease()
            writes: list[Callable[[], object]] = []
            if counts.get(True):

                def fresh() -> None:
                    valid = routed.filter(F.col(REASON).isNull())
                    with timer.phase("master_commit"):
                        tag, written = self._append_master(valid, batch_id)
                    if written:
                        events = valid.withColumn(INGEST_TAG, F.lit(tag).cast("long"))
                    else:  # a replay: the partials come from what master holds for the tag
                        events = self._master_rows(tag)
                    self.speed.write(events, tag, batch_id, timer, replay=not written)

                writes.append(fresh)
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
            # Independent, idempotent commits: small Delta commits are latency-bound, so overlap them.
            with ThreadPoolExecutor(max_workers=2) as pool:
                for future in [pool.submit(write) for write in writes]:
                    future.result()
        finally:
            routed.unpersist()
        self._check_lease()  # the purge and the compaction commit too
        self.speed.maintain(batch_id, timer)
        self._maintain(batch_id, timer)
        timer.report()

    def _check_lease(self) -> None:
        if self.lease is None:
            return
        try:
            self.lease.check()
        except LeaseLost:
            fail_quietly(self.spark)  # the job's run loop says why, in one line
            raise

    def _maintain(self, batch_id: int, timer: PhaseTimer) -> None:
        """Compact master and quarantine every ``compact_every`` (the micro-batch waits); start their vacuum
        every ``maintain_every`` in a thread beside the micro-batches (it commits nothing)."""
        now = time.monotonic()
        if self.maintain_every is not None and now - self._maintained_at >= self.maintain_every:
            self._maintained_at = now
            self._vacuum_beside(batch_id)
        if self.compact_every is not None and now - self._compacted_at >= self.compact_every:
            with timer.phase("maintain"):
                self._maintain_ingests(f"ingest {batch_id}", vacuum=False)
            self._compacted_at = time.monotonic()

    def _maintain_ingests(self, who: str, *, compact: bool = True, vacuum: bool = True) -> None:
        """Maintain master and quarantine, a log line per table."""
        maintain(
            self.spark,
            self.speed.pipeline,
            self.locations,
            only=sorted(INGESTS),
            compact=compact,
            vacuum=vacuum,
            on_table=lambda done: print(f"{who}: maintain {done.describe()}", flush=True),
        )

    def _vacuum_beside(self, batch_id: int) -> None:
        if self._vacuum is not None and self._vacuum.is_alive():
            return  # the previous vacuum still runs: this one would find nothing more to delete

        def run() -> None:
            try:
                self._maintain_ingests(f"ingest (beside micro-batch {batch_id})", compact=False)
            except Exception as error:  # a vacuum is retried at the next interval; ingest goes on
                first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                print(
                    f"ingest: the vacuum of master and quarantine failed ({type(error).__name__}: {first}); "
                    "it runs again after maintenance.interval",
                    file=sys.stderr,
                    flush=True,
                )

        self._vacuum = threading.Thread(target=run, name="ingest-vacuum", daemon=True)
        self._vacuum.start()

    def _append_master(self, events: DataFrame, batch_id: int) -> tuple[int, bool]:
        """Append the micro-batch's events to master once: (their ingest tag, whether this call wrote them)."""
        # Only this job writes master, so the next commit's version is known before writing.
        before = latest_version(self.spark, self.locations.master)
        tagged = events.withColumn(INGEST_TAG, F.lit(before + 1).cast("long"))
        if not self.keep_raw:
            tagged = tagged.withColumn(RAW, F.lit(None).cast("string"))
        path = self.locations.master
        if not self.appender.append(self.spark, tagged.select(*self.source.master_schema.fieldNames()), path, batch_id):
            version = self.appender.version_of(self.spark, path, batch_id)
            if version is None:
                raise LambdaError(
                    f"ingest micro-batch {batch_id} is marked as written to {path}, but no commit among the newest "
                    "holds it; the table's log was cleaned up under a running ingest. Restart ingest."
                )
            return version, False
        after = latest_version(self.spark, path)
        if after != before + 1:
            raise LambdaError(
                f"master table {path} moved from version {before} to {after} during one "
                "ingest commit: another process writes it. Only the ingest job may write the master "
                "dataset; stop the other writer and restart ingest (its checkpoint makes this safe)."
            )
        return before + 1, True

    def _master_rows(self, tag: int) -> DataFrame:
        master = self.spark.read.format("delta").load(self.locations.master)
        return master.filter(F.col(INGEST_TAG) == tag)


def ingest_stream(
    spark: SparkSession,
    source: EventSource,
    settings: Settings,
    landing: str,
    *,
    fail_on_data_loss: bool | None = None,
    archive: str | None = None,
) -> DataFrame:
    """Every parsed line (branch ``all``) beside the dedup's first copies (branch ``first``), per micro-batch.

    One streaming source, read and parsed once: both branches start from the same shuffle by
    :func:`dedup_key`, which Spark plans once and reuses (the stateful dedup needs that partitioning).
    """
    if settings.ingest.source == "kafka":
        lines = kafka_lines(spark, settings.ingest.kafka, fail_on_data_loss=fail_on_data_loss)
    else:
        lines = file_lines(spark, settings, landing, archive)
    # current_timestamp() is the micro-batch's timestamp, stored in the offset log: a replay sees the same.
    now = F.current_timestamp()
    parsed = (
        parse_events(lines, source, settings.ingest.event_time, now)
        .withColumn(INGESTED_AT, now)
        .withColumn(_KEY, dedup_key(source))
        .withWatermark(INGESTED_AT, settings.ingest.dedup_horizon)
        # No count: the query's shuffle partitions, which the checkpoint fixes and the dedup's state expects.
        .repartition(_KEY)
    )
    firsts = parsed.dropDuplicatesWithinWatermark([_KEY]).withColumn(_BRANCH, F.lit("first"))
    return parsed.withColumn(_BRANCH, F.lit("all")).unionByName(firsts)


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

    Before the stream starts, every speed table is caught up with master (:func:`catch_up`): a view added
    since the last run gets the partials of the uncovered tags. A Kafka source is first checked for offsets
    that aged out while ingest was down (:mod:`lambda_pipeline.ingestion.data_loss`): the job refuses to
    skip them unless ``accept_data_loss``.
    """
    locations.ensure_dirs(spark)  # the file source needs its landing folder, also on S3
    lease = Lease(spark, locations, "ingest", locations.master).acquire()
    try:
        return _start_ingest(spark, pipeline, settings, locations, lease, once=once, accept_data_loss=accept_data_loss)
    except BaseException:
        lease.release()
        raise


def _refuse_a_new_checkpoint_over_output(spark: SparkSession, locations: Locations, checkpoint: str) -> None:
    """Stop, saying what to do, when ingest would start on a new checkpoint over a master it already wrote.

    A new checkpoint reads the landing folder or the topic from the start again with an empty dedup state:
    every event still there would reach master a second time under a new tag, and the speed layer would count
    it twice until a batch covers it. Nothing is exact to resume from, so the job does not start.
    """
    if read_text(spark, posixpath.join(checkpoint, "metadata")) is not None:
        return  # the checkpoint has started before: Spark resumes from it
    earlier = other_writers(spark, locations.master, "ingest-", None)
    if earlier:
        raise LambdaError(
            f"ingest: the checkpoint {checkpoint} is new, but master already holds micro-batches of another "
            f"checkpoint ({earlier[0]}): starting here would read the input again from its start and count "
            "those events twice. Put the old checkpoint folder back (it was deleted or moved, or the "
            "'checkpoints' setting changed), or start over in a new work directory"
        )


def _start_ingest(
    spark: SparkSession,
    pipeline: Pipeline,
    settings: Settings,
    locations: Locations,
    lease: Lease,
    *,
    once: bool,
    accept_data_loss: bool,
) -> StreamingQuery:
    lagging = needs_catch_up(spark, pipeline, locations)  # before creating the speed tables of new views
    changed = changed_views(spark, pipeline, locations)
    setup_ingest_tables(spark, pipeline, locations)
    if changed:  # a view's definition changed: its partials are recomputed from master with the new one
        catch_up(spark, pipeline, locations, rebuild=True, only=changed)
    lagging = [view for view in lagging if view not in changed]
    if lagging:
        catch_up(spark, pipeline, locations, only=lagging)
    checkpoint = locations.checkpoint("ingest")
    _refuse_a_new_checkpoint_over_output(spark, locations, checkpoint)
    fail_on_data_loss = None
    if settings.ingest.source == "kafka":
        lost = check_data_loss(spark, settings.ingest.kafka, checkpoint, accept=accept_data_loss)
        if lost:
            record_data_loss(spark, lost, locations.quarantine, checkpoint)
            fail_on_data_loss = False
    appender = OnceAppender(CheckpointAppId("ingest", checkpoint), idempotent=settings.idempotent_writes)
    body = IngestBatch(
        spark,
        pipeline.source,
        locations,
        appender,
        SpeedWriter(spark, pipeline, locations, appender, settings.speed.compact_every),
        lease,
        duration_seconds(settings.maintenance.interval),
        duration_seconds(settings.maintenance.ingest_compact_every),
        keep_raw=settings.ingest.keep_raw,
    )
    writer = (
        ingest_stream(
            spark,
            pipeline.source,
            settings,
            locations.landing,
            fail_on_data_loss=fail_on_data_loss,
            archive=locations.landing_archive,
        )
        .writeStream.queryName(f"ingest_{pipeline.name}")
        .option("checkpointLocation", checkpoint)
        .foreachBatch(body)
    )
    query = with_trigger(writer, settings.ingest.trigger, once=once).start()
    lease.while_active(query)
    release_with(spark, query, lease)
    return query
