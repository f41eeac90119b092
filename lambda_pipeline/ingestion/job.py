"""Ingest: JSON lines from the landing folder or a Kafka topic -> master and quarantine, and the layers' writers.

Each micro-batch is routed (:mod:`.routing`: pure), its valid events become one commit of master tagged with
that commit's version (:mod:`.master`), and the same rows go to every layer writer the job was given
(``core/tag_writers.py``: the speed layer's partials, in the same micro-batch). Lines that are not events go
to quarantine with their raw text, origin and reason: the number of input lines (or Kafka messages) always
equals master rows plus quarantine rows. ``pipelines/ingest.py`` composes the job with the speed layer.

Each line is read once and parsed once: the parsed stream is shuffled once by its dedup key
(:func:`.routing.dedup_key`), and that one exchange feeds both the stateful dedup (which emits the first copy
of each key within the horizon) and the branch that keeps every line, so the dedup's verdict meets every line
in the same micro-batch. Both branches hang off the same streaming source, so they see the same offsets.
"""

from __future__ import annotations

import posixpath
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pyspark.sql import functions as F

from lambda_pipeline.core.config import Settings
from lambda_pipeline.core.deltalog import read_text
from lambda_pipeline.core.durations import duration_seconds
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.jvm import first_copies
from lambda_pipeline.core.leases import Lease, LeaseLost, release_with
from lambda_pipeline.core.literals import with_constant
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.streaming import (
    CheckpointAppId,
    OnceAppender,
    PhaseTimer,
    StoppedMidBatch,
    fail_quietly,
    other_writers,
    stopping,
    with_trigger,
)
from lambda_pipeline.core.tag_writers import IngestContext, TagWriter, TagWriterFactory
from lambda_pipeline.core.views import INGEST_TAG, INGESTED_AT, EventSource
from lambda_pipeline.ingestion.data_loss import check_data_loss, record_data_loss
from lambda_pipeline.ingestion.master import MasterWriter, setup_master_tables
from lambda_pipeline.ingestion.routing import (
    BRANCH,
    DEDUP_KEY,
    DEDUP_ORDER,
    FIRST_COPY,
    REASON,
    VALID_KEY_PREFIX,
    dedup_key,
    parse_events,
    route_batch,
)
from lambda_pipeline.ingestion.sources import file_lines, kafka_lines
from lambda_pipeline.ingestion.upkeep import MasterUpkeep

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

__all__ = ["Dedup", "IngestBatch", "dedup_of", "ingest_stream", "start"]

Dedup = Literal["first_copies", "watermark"]


@dataclass
class IngestBatch:
    """The foreachBatch body: route; the master commit (tagged with its own version), then each layer writer's
    part of that tag; the quarantine commit beside them; then the writers' and master's upkeep."""

    master: MasterWriter
    writers: Sequence[TagWriter]
    upkeep: MasterUpkeep
    lease: Lease | None = None
    """Checked before the micro-batch's commits and before its upkeep: an instance that lost it stops."""
    query_name: str = "ingest"

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        try:
            self._run(batch, batch_id)
        except Exception:
            if stopping(self.query_name):  # cancelled by the stop: the checkpoint replays it at the next start
                fail_quietly(self.master.spark)
                raise StoppedMidBatch(f"ingest micro-batch {batch_id} was interrupted by the stop") from None
            raise

    def _run(self, batch: DataFrame, batch_id: int) -> None:
        timer = PhaseTimer("ingest", batch_id)
        routed = route_batch(batch, self.master.source).persist()
        try:
            with timer.phase("route"):  # the one Spark job that reads, parses, deduplicates and routes
                counts = {bool(ok): n for ok, n in routed.groupBy(F.col(REASON).isNull().alias("ok")).count().collect()}
            self._check_lease()
            writes: list[Callable[[], object]] = []
            if counts.get(True):
                writes.append(lambda: self._fresh(routed.filter(F.col(REASON).isNull()), batch_id, timer))
            if counts.get(False):
                writes.append(lambda: self._quarantined(routed, batch_id, timer))
            # Independent, idempotent commits: small Delta commits are latency-bound, so overlap them.
            with ThreadPoolExecutor(max_workers=2) as pool:
                for future in [pool.submit(write) for write in writes]:
                    future.result()
        finally:
            routed.unpersist()
        self._check_lease()  # the purge and the compaction commit too
        for writer in self.writers:
            writer.maintain(batch_id, timer)
        self.upkeep.after_batch(batch_id, timer)
        timer.report()

    def _fresh(self, valid: DataFrame, batch_id: int, timer: PhaseTimer) -> None:
        with timer.phase("master_commit"):
            tag, written = self.master.append(valid, batch_id)
        # A replay: the layers' parts come from what master holds for the tag.
        events = with_constant(valid, INGEST_TAG, tag) if written else self.master.rows_of(tag)
        for writer in self.writers:
            writer.write(events, tag, batch_id, timer, replay=not written)

    def _quarantined(self, routed: DataFrame, batch_id: int, timer: PhaseTimer) -> None:
        with timer.phase("quarantine_commit"):
            self.master.quarantine(routed, batch_id)

    def _check_lease(self) -> None:
        if self.lease is None:
            return
        try:
            self.lease.check()
        except LeaseLost:
            fail_quietly(self.master.spark)  # the job's run loop says why, in one line
            raise


def ingest_stream(
    spark: SparkSession,
    source: EventSource,
    settings: Settings,
    landing: str,
    *,
    fail_on_data_loss: bool | None = None,
    archive: str | None = None,
    dedup: Dedup = "first_copies",
) -> DataFrame:
    """Every parsed line, marked by the dedup as the first copy of its key within the horizon or not.

    One streaming source, read and parsed once, shuffled once by :func:`dedup_key`: the dedup
    (:func:`~lambda_pipeline.core.jvm.first_copies`) sees every line of a key together and marks each.
    ``dedup="watermark"`` is the dedup of checkpoints started by an earlier release (:func:`dedup_of`).
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
        .withColumn(DEDUP_KEY, dedup_key(source))
    )
    horizon_ms = int(duration_seconds(settings.ingest.dedup_horizon) * 1000)
    if dedup == "first_copies":
        return first_copies(parsed, DEDUP_KEY, VALID_KEY_PREFIX, DEDUP_ORDER, FIRST_COPY, horizon_ms)
    # Spark's own dedup, as earlier releases started it: evicts by scanning its whole state every micro-batch.
    parsed = (
        parsed.withWatermark(INGESTED_AT, settings.ingest.dedup_horizon)
        # No count: the query's shuffle partitions, which the checkpoint fixes and the dedup's state expects.
        .repartition(DEDUP_KEY)
    )
    firsts = parsed.dropDuplicatesWithinWatermark([DEDUP_KEY]).withColumn(BRANCH, F.lit("first"))
    return parsed.withColumn(BRANCH, F.lit("all")).unionByName(firsts)


_OPERATOR_METADATA = ("state", "0", "_metadata", "metadata")
_WATERMARK_DEDUP = "dedupeWithinWatermark"


def dedup_of(spark: SparkSession, checkpoint: str) -> Dedup:
    """The dedup whose state an ingest checkpoint holds: ``watermark`` for one an earlier release started
    (Spark's ``dropDuplicatesWithinWatermark``; its state cannot be carried into the new operator, so the job
    keeps it and resumes exactly), else ``first_copies``."""
    operator = read_text(spark, posixpath.join(checkpoint, *_OPERATOR_METADATA))
    return "watermark" if operator is not None and _WATERMARK_DEDUP in operator else "first_copies"


def start(
    spark: SparkSession,
    pipeline: Pipeline,
    settings: Settings,
    locations: Locations,
    *,
    writers: Sequence[TagWriterFactory] = (),
    once: bool = False,
    accept_data_loss: bool = False,
) -> StreamingQuery:
    """Start the ingest stream, with ``writers`` in its micro-batches (``once``: what is there, then stop).

    Before the stream starts, master and quarantine exist and every writer is prepared (the speed layer
    catches its tables up with master). A Kafka source is first checked for offsets that aged out while ingest
    was down (:mod:`lambda_pipeline.ingestion.data_loss`): the job refuses to skip them unless
    ``accept_data_loss``.
    """
    locations.ensure_dirs(spark)  # the file source needs its landing folder, also on S3
    lease = Lease(spark, locations, "ingest", locations.master).acquire()
    try:
        return _start(
            spark, pipeline, settings, locations, lease, writers, once=once, accept_data_loss=accept_data_loss
        )
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


def _start(
    spark: SparkSession,
    pipeline: Pipeline,
    settings: Settings,
    locations: Locations,
    lease: Lease,
    writers: Sequence[TagWriterFactory],
    *,
    once: bool,
    accept_data_loss: bool,
) -> StreamingQuery:
    checkpoint = locations.checkpoint("ingest")
    appender = OnceAppender(CheckpointAppId("ingest", checkpoint), idempotent=settings.idempotent_writes)
    context = IngestContext(spark, pipeline, settings, locations, appender)
    setup_master_tables(spark, pipeline, locations)
    layers = [make(context) for make in writers]
    for layer in layers:
        layer.prepare()
    _refuse_a_new_checkpoint_over_output(spark, locations, checkpoint)
    dedup = dedup_of(spark, checkpoint)
    if dedup == "watermark":
        print(
            f"lambda-pipeline: ingest: the checkpoint {checkpoint} holds the dedup state of an earlier release "
            "(Spark's dropDuplicatesWithinWatermark), so ingest resumes with that dedup, exactly; its cost per "
            "micro-batch grows with the keys it holds. docs/operations.md, 'Upgrading the dedup', says how to move",
            file=sys.stderr,
            flush=True,
        )
    fail_on_data_loss = None
    if settings.ingest.source == "kafka":
        lost = check_data_loss(spark, settings.ingest.kafka, checkpoint, accept=accept_data_loss)
        if lost:
            record_data_loss(spark, lost, locations.quarantine, checkpoint)
            fail_on_data_loss = False
    body = IngestBatch(
        MasterWriter(spark, pipeline.source, locations, appender, keep_raw=settings.ingest.keep_raw),
        layers,
        MasterUpkeep(
            spark,
            pipeline,
            locations,
            duration_seconds(settings.maintenance.interval),
            duration_seconds(settings.maintenance.ingest_compact_every),
        ),
        lease,
        query_name=f"ingest_{pipeline.name}",
    )
    writer = (
        ingest_stream(
            spark,
            pipeline.source,
            settings,
            locations.landing,
            fail_on_data_loss=fail_on_data_loss,
            archive=locations.landing_archive,
            dedup=dedup,
        )
        .writeStream.queryName(body.query_name)
        .option("checkpointLocation", checkpoint)
        .foreachBatch(body)
    )
    query = with_trigger(writer, settings.ingest.trigger, once=once).start()
    lease.while_active(query)
    release_with(spark, query, lease)
    return query
