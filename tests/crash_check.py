"""The end-to-end crash check: produce to Kafka while ingest (master + speed) is SIGKILLed, then reconcile.

Shared by ``tests/test_kafka_crash.py`` (a few dozen kills in CI) and ``bench/crash_loop.py``
(hundreds, for the record). After the crash phase the pipeline is quiesced without crashes and
every guarantee is checked against the topic itself, the ground truth of what was produced.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from lambda_pipeline.batch_layer.job import run_batch
from lambda_pipeline.cli.kafka_producer import KafkaEventProducer
from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.local_services.kafka_admin import offsets
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM, PAGE_ACTIVITY
from lambda_pipeline.pipelines.generator import ClickstreamGenerator, GeneratedMessages
from lambda_pipeline.pipelines.ingest import start_ingest
from lambda_pipeline.serving_layer.catalog import ServingLayer
from tests.chaos import ChaosReport, run_chaos

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["CrashRun", "crash_overrides", "crash_run"]


def crash_overrides(bootstrap: str, topic: str, *extra: str) -> list[str]:
    """Small micro-batches and fast triggers: many commits, so many distinct crash points."""
    return [
        "ingest.source=kafka",
        f"ingest.kafka.bootstrap_servers={bootstrap}",
        f"ingest.kafka.topic={topic}",
        "ingest.kafka.max_offsets_per_trigger=400",
        "ingest.trigger=300 milliseconds",
        "speed.compact_every=7",
        "spark.log_level=ERROR",
        "spark.conf.spark.ui.enabled=false",
        *extra,
    ]


@dataclass
class CrashRun:
    report: ChaosReport
    loc: Locations
    sent: list[GeneratedMessages] = field(default_factory=list)
    produced: int = 0
    master: int = 0
    distinct_ids: int = 0
    quarantine: int = 0
    duplicate_reason: int = 0
    missing_ids: int = 0
    unexpected_ids: int = 0
    view_mismatches: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return (
            self.master + self.quarantine == self.produced
            and self.distinct_ids == self.master
            and self.duplicate_reason == sum(s.duplicates for s in self.sent)
            and not self.missing_ids
            and not self.unexpected_ids
            and not self.view_mismatches
        )

    def summary(self) -> dict:
        r = self.report
        return {
            "kills": r.total,
            "by_process": r.kills,
            "on_commit_kills": r.on_commit_kills,
            "startup_kills": r.startup_kills,
            "median_ready_seconds": r.median_ready(),
            "seconds": round(r.seconds, 1),
            "produced": self.produced,
            "master": self.master,
            "quarantine": self.quarantine,
            "distinct_ids": self.distinct_ids,
            "missing_ids": self.missing_ids,
            "unexpected_ids": self.unexpected_ids,
            "view_mismatches": self.view_mismatches[:5],
            "exact": self.exact,
        }


def _produce_during(settings, stop: threading.Event, seed: int, sent: list, per_second: int, limit: float) -> None:
    """Produce a burst a second until ``stop`` (bounded by ``limit`` seconds)."""
    producer = KafkaEventProducer(settings.ingest.kafka)
    generator = ClickstreamGenerator(seed)
    for _ in range(int(limit)):
        if stop.is_set():
            break
        sent.append(producer.produce(generator, per_second))
        stop.wait(1.0)  # pacing: one burst a second
    producer.close()


def _view(spark: SparkSession, frame) -> dict:
    return {(r.page, r.window_start): r.asDict() for r in frame.collect()}


def _compare(got: dict, expected: dict) -> list[str]:
    """Exact measures must match; the approximate distinct count only within 5 %."""
    problems = [f"window {k} only in one side" for k in sorted(set(got) ^ set(expected), key=str)[:5]]
    for key, row in expected.items():
        other = got.get(key)
        if other is None:
            continue
        for measure in ("events", "total_duration_ms", "max_duration_ms"):
            if other[measure] != row[measure]:
                problems.append(f"{key} {measure}: served {other[measure]} != recomputed {row[measure]}")
        if abs(other["unique_users"] - row["unique_users"]) > 0.05 * max(1, row["unique_users"]):
            problems.append(f"{key} unique_users: served {other['unique_users']} vs {row['unique_users']}")
    return problems


def crash_run(
    spark: SparkSession,
    bootstrap: str,
    topic: str,
    workdir: Path,
    kills: int,
    *extra: str,
    on_commit: float = 0.3,
    per_second: int = 150,
    seed: int | None = None,
    deadline_seconds: float = 1800.0,
    only: str | None = None,
    uptime: tuple[float, float] = (1.0, 8.0),
) -> CrashRun:
    """Crash phase (``kills`` SIGKILLs while producing), quiesce, then reconcile against the topic.

    ``uptime`` bounds a random kill's delay after the job is up: a few 300 ms micro-batches, so kills
    land mid-batch, between batches and in the commit window, while restarts (15-20 s of JVM start-up
    on 2 cores) stay the larger part of the run.
    """
    sets = crash_overrides(bootstrap, topic, *extra)
    settings = load_settings(None, sets)
    loc = Locations.create(settings, workdir)
    sent: list[GeneratedMessages] = []
    stop = threading.Event()
    seed = kills if seed is None else seed
    producer = threading.Thread(
        target=_produce_during, args=(settings, stop, seed, sent, per_second, deadline_seconds), daemon=True
    )
    producer.start()
    try:
        report = run_chaos(
            workdir,
            sets,
            kills=kills,
            seed=seed,
            on_commit_fraction=on_commit,
            output_logs={
                "ingest": [
                    Path(loc.master) / "_delta_log",  # the kill lands between the master and the speed commit
                    Path(loc.speed_partials(PAGE_ACTIVITY.name)) / "_delta_log",
                ]
            },
            deadline_seconds=deadline_seconds,
            only=only,
            uptime=uptime,
        )
    finally:
        stop.set()
        producer.join(timeout=120)
    # Quiesce: catch up without crashes, then check everything against the topic. The backlog goes in one
    # micro-batch: the crash phase's small ones exist to multiply crash points, not to pace a catch-up.
    catch_up = load_settings(None, [*sets, "ingest.kafka.max_offsets_per_trigger=1000000"])
    start_ingest(spark, CLICKSTREAM, catch_up, loc, once=True).awaitTermination(900)
    run = CrashRun(report, loc, sent)
    run.produced = sum(latest - earliest for earliest, latest in offsets(bootstrap, topic).values())
    master = spark.read.format("delta").load(loc.master)
    quarantine = spark.read.format("delta").load(loc.quarantine)
    run.master, run.quarantine = master.count(), quarantine.count()
    run.distinct_ids = master.select("event_id").distinct().count()
    run.duplicate_reason = quarantine.filter(F.col("reason").startswith("duplicate")).count()
    generated = {i for s in sent for i in s.event_ids}
    stored = {r.event_id for r in master.select("event_id").distinct().collect()}
    run.missing_ids, run.unexpected_ids = len(generated - stored), len(stored - generated)

    from lambda_pipeline.batch_layer.recompute import deduplicate
    from lambda_pipeline.pipelines.clickstream import CLICKS

    def recomputed() -> dict:
        events = deduplicate(spark.read.format("delta").load(loc.master), CLICKS)
        return _view(spark, PAGE_ACTIVITY.finalize(PAGE_ACTIVITY.partials(events, by_tag=False)))

    serving = ServingLayer(spark, CLICKSTREAM, loc)
    serving.take_pin()  # before any batch: speed partials alone
    run.view_mismatches += _compare(_view(spark, serving.query("SELECT * FROM serving.page_activity")), recomputed())
    run_batch(spark, CLICKSTREAM, loc)
    serving.take_pin()  # batch at the new coverage
    run.view_mismatches += _compare(_view(spark, serving.query("SELECT * FROM serving.page_activity")), recomputed())
    return run
