"""The Kafka benchmark's two phases on one rate: the noop baseline and the real pipeline."""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _kafka_load import ProducerProcess, make_generator
from _kafka_measure import (
    Checkpoint,
    CheckpointBatch,
    lag_fields,
    producer_summary,
    spark_jobs,
    throughput,
    topic_timestamps,
    weighted_summary,
)
from _observer import (
    LATENCIES,
    DeltaLog,
    PhaseBreakdown,
    PollLoop,
    SpeedVisibility,
    check_queries,
    commit_time,
    latencies,
    progress_details,
    stop_queries,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import StreamingQuery

    from lambda_pipeline.core.config import KafkaSettings, Settings
    from lambda_pipeline.core.locations import Locations

BUCKET = 1000  # offsets per bucket of the range join (noop freshness)


@dataclass
class Phase:
    """What a phase needs: the session, its settings (own topic) and folders."""

    spark: SparkSession
    settings: Settings
    topic: str
    workdir: Path
    args: argparse.Namespace
    rate: float
    broker: Any
    queries: list[StreamingQuery] = field(default_factory=list)

    @property
    def kafka(self) -> KafkaSettings:
        return self.settings.ingest.kafka

    @property
    def timeout(self) -> float:
        return self.args.timeout if self.args.timeout is not None else self.args.warmup + self.args.seconds + 180.0


def topic_lag(phase: Phase, checkpoint: Checkpoint) -> tuple[int, int]:
    """(topic latest offsets summed, messages the query committed); latest is -1 if the broker did not answer."""
    from lambda_pipeline.local_services.kafka_admin import offsets

    try:
        latest = sum(hi for _, hi in offsets(phase.kafka.bootstrap_servers, phase.topic, timeout=5).values())
    except Exception:  # only reporting
        latest = -1
    return latest, checkpoint.committed_total()


def live_line(phase: Phase, started: float, checkpoint: Checkpoint, base: int, extra: str = "") -> str:
    latest, done = topic_lag(phase, checkpoint)
    return (
        f"  +{time.monotonic() - started:5.0f}s: topic {latest - base:,} msgs, committed {done - base:,}, "
        f"lag {latest - done:,}{extra}"
    )


def run_noop(phase: Phase) -> dict[str, Any]:
    """The baseline: same Kafka options, decode and parse as ingest, into the noop sink, same trigger."""
    from lambda_pipeline.ingestion.routing import parse_events
    from lambda_pipeline.ingestion.sources import kafka_lines
    from lambda_pipeline.pipelines.clickstream import CLICKSTREAM

    spark, settings, args = phase.spark, phase.settings, phase.args
    checkpoint_dir = phase.workdir / "checkpoint"
    parsed = parse_events(kafka_lines(spark, phase.kafka), CLICKSTREAM.source, settings.ingest.event_time)
    query = (
        parsed.writeStream.format("noop")
        .queryName(f"noop_{int(phase.rate)}")
        .option("checkpointLocation", str(checkpoint_dir))
        .trigger(processingTime=settings.ingest.trigger)
        .start()
    )
    phase.queries.append(query)
    checkpoint = Checkpoint(str(checkpoint_dir), phase.topic)
    producer = ProducerProcess(phase.kafka, phase.topic, args, phase.rate, "n")
    try:
        started_wall = producer.start()
        loop = PollLoop(phase.timeout, 0.1)
        print(f"  noop query started; producing for {args.warmup:g}s warm-up + {args.seconds:g}s measured", flush=True)
        produced, drained_at, end_lag = None, None, (-1, 0)
        for now in loop:
            check_queries([query])
            if produced is None and (produced := producer.poll()) is not None:
                end_lag = topic_lag(phase, checkpoint)
            if produced is not None and checkpoint.committed_total() >= produced["messages"]:
                drained_at = time.time()
                break
            if loop.report_due(now):
                print(live_line(phase, loop.started, checkpoint, 0), flush=True)
        if produced is None:
            raise RuntimeError(f"the producer did not finish within {phase.timeout:.0f}s")
        details = progress_details(query)
        owners = {str(query.runId): "noop"}
        until = time.time()
    finally:
        producer.stop()
        stop_queries([query])
        phase.queries.remove(query)

    batches = checkpoint.batches()
    fresh, matched, before_window = noop_freshness(phase, batches, produced["start"] + args.warmup)
    result = {
        "topic": phase.topic,
        "producer": producer_summary(produced),
        "throughput": {**throughput(produced, batches, args.warmup, 0, drained_at), **lag_fields(end_lag, 0)},
        "freshness_seconds": {"visible": weighted_summary(fresh)},
        "messages_measured": sum(n for _, n in fresh),
        "messages_warmup": before_window,
        "messages_not_committed": produced["messages"] - matched,
        "batches": len(batches),
        "stream": details,
        "timed_out": loop.timed_out,
    }
    if args.spark_jobs:
        result["spark_jobs"] = spark_jobs(spark, started_wall, until, owners)
    return result


def noop_freshness(phase: Phase, batches: list[CheckpointBatch], t0: float) -> tuple[list[tuple[float, int]], int, int]:
    """Freshness per message produced from ``t0`` on, as (seconds, count); messages matched; those before ``t0``.

    A message's freshness: the commit time of the micro-batch holding its offset - its Kafka timestamp.
    """
    from pyspark.sql import functions as F

    rows = [
        (b.batch_id, p, b.start.get(p, 0), end, k)
        for b in batches
        for p, end in b.end.items()
        if end > b.start.get(p, 0)
        for k in range(b.start.get(p, 0) // BUCKET, (end - 1) // BUCKET + 1)
    ]
    fresh: list[tuple[float, int]] = []
    matched = before_window = 0
    if not rows:
        return fresh, matched, before_window
    ranges = phase.spark.createDataFrame(rows, "batch long, partition int, lo long, hi long, bucket long")
    messages = topic_timestamps(phase.spark, phase.kafka, phase.topic).withColumn(
        "bucket", F.floor(F.col("offset") / BUCKET).cast("long")
    )
    joined = messages.join(F.broadcast(ranges), ["partition", "bucket"]).where(
        (F.col("offset") >= F.col("lo")) & (F.col("offset") < F.col("hi"))
    )
    committed_at = {b.batch_id: b.committed_at for b in batches}
    for r in joined.groupBy("batch", "ts").count().collect():
        matched += r["count"]
        if r["ts"] / 1000.0 < t0:
            before_window += r["count"]
        else:
            fresh.append((committed_at[r["batch"]] - r["ts"] / 1000.0, r["count"]))
    return fresh, matched, before_window


def seed_coverage(phase: Phase, loc: Locations) -> tuple[int, int]:
    """One second of the rate, ingested once, and one published batch: (coverage master version, seed messages)."""
    from lambda_pipeline.batch_layer.job import run_batch
    from lambda_pipeline.cli.kafka_producer import KafkaEventProducer
    from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
    from lambda_pipeline.pipelines.ingest import start_ingest

    args = phase.args
    t0 = time.perf_counter()
    seeder = KafkaEventProducer(phase.kafka, phase.topic)
    fractions = (args.late_fraction, args.duplicate_fraction, args.malformed_fraction)
    values, _ = make_generator(args.generator, args.seed, "s", fractions).batch(max(1, round(phase.rate)))
    seeder.send(values)
    seeder.close()
    t1 = time.perf_counter()
    start_ingest(phase.spark, CLICKSTREAM, phase.settings, loc, once=True).awaitTermination(phase.timeout)
    t2 = time.perf_counter()
    coverage, _ = run_batch(phase.spark, CLICKSTREAM, loc)
    print(
        f"  seed of {len(values):,} messages produced in {t1 - t0:.1f}s, ingested once in {t2 - t1:.1f}s, batch "
        f"published (coverage = master version {coverage.master_version}) in {time.perf_counter() - t2:.1f}s",
        flush=True,
    )
    return coverage.master_version, len(values)


def run_pipeline(phase: Phase) -> dict[str, Any]:
    """The real jobs: seed + batch first, then ingest (master + speed, one hop) streaming while the producer runs."""
    from lambda_pipeline.core.locations import Locations
    from lambda_pipeline.core.tables import latest_version
    from lambda_pipeline.pipelines.clickstream import CLICKSTREAM, PAGE_ACTIVITY
    from lambda_pipeline.pipelines.ingest import start_ingest

    spark, settings, args = phase.spark, phase.settings, phase.args
    loc = Locations.create(settings, phase.workdir)
    loc.ensure_local_dirs()
    covered, seed_messages = seed_coverage(phase, loc)

    speed_table = loc.speed_partials(PAGE_ACTIVITY.name)
    phase.queries.append(start_ingest(spark, CLICKSTREAM, settings, loc))
    speed = SpeedVisibility(spark, speed_table, covered, log_only=True)
    master_log = DeltaLog(loc.master, latest_version(spark, loc.master))
    checkpoint = Checkpoint(loc.checkpoint("ingest"), phase.topic)
    producer = ProducerProcess(phase.kafka, phase.topic, args, phase.rate, "p")
    breakdown = PhaseBreakdown().attach()
    try:
        started_wall = producer.start()
        loop = PollLoop(phase.timeout, args.poll_ms / 1000.0)
        print(
            f"  ingest and speed started; producing for {args.warmup:g}s warm-up + {args.seconds:g}s measured",
            flush=True,
        )
        produced, drained_at, visible_at, end_lag = None, None, None, (-1, 0)
        for now in loop:
            check_queries(phase.queries)
            speed.poll()
            master_log.poll()
            if produced is None and (produced := producer.poll()) is not None:
                end_lag = topic_lag(phase, checkpoint)
            if produced is not None:
                if drained_at is None and checkpoint.committed_total() >= seed_messages + produced["messages"]:
                    drained_at = time.time()
                if drained_at is not None:
                    master_log.poll()
                    newest = master_log.version
                    if speed.newest_tag >= newest or all(t in speed.seen for t in range(covered + 1, newest + 1)):
                        visible_at = time.time()
                        break
            if loop.report_due(now):
                extra = f", master v{master_log.version}, newest visible tag {speed.newest_tag}"
                print(live_line(phase, loop.started, checkpoint, seed_messages, extra), flush=True)
        if produced is None:
            raise RuntimeError(f"the producer did not finish within {phase.timeout:.0f}s")
        streams = {q.name: progress_details(q) for q in phase.queries}
        owners = {str(q.runId): q.name for q in phase.queries}
        until = time.time()
    finally:
        producer.stop()
        stop_queries(phase.queries)
        phase.queries.clear()
        breakdown.detach()

    events = event_latencies(phase, loc, speed, produced["start"] + args.warmup)
    stats = {k: weighted_summary(v) for k, v in events.pop("samples").items()}
    rows_by_tag = events.pop("rows_by_tag")
    batches = checkpoint.batches()
    flow = {
        **throughput(produced, batches, args.warmup, seed_messages, drained_at),
        **lag_fields(end_lag, seed_messages),
    }
    w0, w1 = flow["window"]
    commit_times = {v.version: v.committed_at for v in master_log.versions}
    rows_in_window = sum(n for tag, n in rows_by_tag.items() if w0 < (commit_times.get(tag) or math.inf) <= w1)
    flow["master_rows_per_s"] = rows_in_window / flow["window_seconds"]

    result = {
        "topic": phase.topic,
        "coverage_master_version": covered,
        "seed_messages": seed_messages,
        "producer": producer_summary(produced),
        "throughput": flow,
        "freshness_seconds": stats,
        "events_measured": stats["visible"]["n"],
        **events,
        "ingest_commits": len([t for t in rows_by_tag if t > covered]),
        "speed_versions": len(speed.log.versions),
        "check": serving_check(phase, loc, seed_messages + produced["messages"]),
        "streams": streams,
        "inside_add_batch_ms": breakdown.summary(),
        "poller": speed.stats("spark_queries"),
        "timed_out": loop.timed_out,
        "visible_after_last_burst_seconds": (visible_at - flow["window"][1]) if visible_at else None,
    }
    if args.spark_jobs:
        result["spark_jobs"] = spark_jobs(spark, started_wall, until, owners)
    return result


def event_latencies(phase: Phase, loc: Locations, speed: SpeedVisibility, t_measure: float) -> dict[str, Any]:
    """``latencies`` of every master event above the coverage produced from ``t_measure`` on, as (value, count).

    The produce time is the event's Kafka timestamp, joined to master on (partition, offset) of its
    ``source_file``. Also the event counts: before ``t_measure``, never visible, without a timestamp; rows per tag.
    """
    from pyspark.sql import functions as F

    master = (
        phase.spark.read.format("delta")
        .load(loc.master)
        .where(F.col("ingest_tag") > speed.covered)
        .select(
            "ingest_tag",
            F.element_at(F.split("source_file", "/"), -2).cast("int").alias("partition"),
            F.element_at(F.split("source_file", "/"), -1).cast("long").alias("offset"),
        )
    )
    joined = master.join(topic_timestamps(phase.spark, phase.kafka, phase.topic), ["partition", "offset"], "left")
    master_commit: dict[int, float | None] = {}
    samples: dict[str, list[tuple[float, int]]] = {k: [] for k in LATENCIES}
    rows_by_tag: dict[int, int] = {}
    unmatched = warmup_events = not_visible = 0
    for r in joined.groupBy("ingest_tag", "ts").count().collect():
        tag, n = int(r["ingest_tag"]), int(r["count"])
        rows_by_tag[tag] = rows_by_tag.get(tag, 0) + n
        if r["ts"] is None:
            unmatched += n
            continue
        ts = r["ts"] / 1000.0
        if ts < t_measure:
            warmup_events += n
            continue
        if tag not in master_commit:
            master_commit[tag] = commit_time(loc.master, tag)
        seen = speed.seen.get(tag)
        if seen is None:
            not_visible += n
        for key, value in latencies(ts, seen, master_commit[tag]).items():
            if value is not None:
                samples[key].append((value, n))
    return {
        "samples": samples,
        "rows_by_tag": rows_by_tag,
        "events_warmup": warmup_events,
        "events_not_visible": not_visible,
        "master_rows_without_kafka_timestamp": unmatched,
    }


def serving_check(phase: Phase, loc: Locations, topic_messages: int) -> dict[str, Any]:
    """Topic = master + quarantine, and the serving view holds every master event once (batch + speed)."""
    from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
    from lambda_pipeline.serving_layer.catalog import ServingLayer

    spark = phase.spark
    quarantined = spark.read.format("delta").load(loc.quarantine).count()
    served = (
        ServingLayer(spark, CLICKSTREAM, loc)
        .query("SELECT coalesce(sum(events), 0) AS n FROM serving.page_activity")
        .first()["n"]
    )
    master_rows = spark.read.format("delta").load(loc.master).count()
    return {
        "topic_messages": topic_messages,
        "master_rows": master_rows,
        "quarantine_rows": quarantined,
        "reconciles": master_rows + quarantined == topic_messages,
        "serving_page_activity_events": int(served),
        "serving_equals_master": int(served) == master_rows,
    }
