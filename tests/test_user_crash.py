"""Exactly once through SIGKILLs with a user's pipeline: ingest of the payments pipeline (a file outside the
package, referenced with ``--set pipeline=...``) killed at random points and restarted on a real broker. Then
master and quarantine reconcile with the topic, and every view equals a pandas recompute of what was sent.

One run with a few kills: the whole crash suite runs with clickstream (tests/test_kafka_crash.py)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lambda_pipeline.batch_layer.job import run_batch
from lambda_pipeline.cli.kafka_producer import KafkaEventProducer
from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.local_services.kafka_admin import offsets
from lambda_pipeline.pipelines.ingest import start_ingest
from lambda_pipeline.pipelines.registry import load_pipeline
from lambda_pipeline.serving_layer.catalog import ServingLayer
from tests.chaos import run_chaos
from tests.crash_check import crash_overrides
from tests.user_pipeline import QUERIES, Lines, assert_view_equals, expected_views, payment_lines, rows_of, write_module

pytestmark = [pytest.mark.integration, pytest.mark.crash]

KILLS = int(os.environ.get("LAMBDA_PIPELINE_USER_CRASH_KILLS", "4"))


def test_a_user_pipeline_through_sigkills_loses_and_duplicates_nothing(
    spark, kafka_broker, kafka_topic, tmp_path: Path
) -> None:
    module = write_module(tmp_path / "project", "crash_payments.py")
    ref = f"{module}:PIPELINE"
    sets = crash_overrides(kafka_broker.bootstrap_servers, kafka_topic, f"pipeline={ref}")
    settings = load_settings(None, sets)
    workdir = tmp_path / "work"
    loc = Locations.create(settings, workdir)
    pipeline = load_pipeline(ref).check(spark)

    sent: list[Lines] = []
    stop = threading.Event()

    def produce() -> None:
        producer = KafkaEventProducer(settings.ingest.kafka)
        for burst in range(900):  # a burst a second, bounded
            if stop.is_set():
                break
            lines = payment_lines(120, seed=burst, now_ms=int(time.time() * 1000), first_id=burst * 1000)
            producer.send(line.encode() for line in lines.lines)
            sent.append(lines)
            stop.wait(1.0)
        producer.close()

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        report = run_chaos(
            workdir,
            sets,
            kills=KILLS,
            seed=KILLS,
            on_commit_fraction=0.3,
            output_logs={
                "ingest": [Path(loc.master) / "_delta_log", Path(loc.speed_partials("failed_hourly")) / "_delta_log"]
            },
            deadline_seconds=900,
            uptime=(1.0, 8.0),
        )
    finally:
        stop.set()
        thread.join(timeout=120)
    assert report.total >= KILLS and not report.early_exits, report

    catch_up = load_settings(None, [*sets, "ingest.kafka.max_offsets_per_trigger=1000000"])
    start_ingest(spark, pipeline, catch_up, loc, once=True).awaitTermination(900)
    produced = sum(
        latest - earliest for earliest, latest in offsets(kafka_broker.bootstrap_servers, kafka_topic).values()
    )
    master = spark.read.format("delta").load(loc.master)
    quarantine = spark.read.format("delta").load(loc.quarantine)
    assert produced == sum(len(s.lines) for s in sent)
    assert master.count() + quarantine.count() == produced  # nothing lost, nothing twice
    assert master.select("payment_id").distinct().count() == master.count()
    events = [e for s in sent for e in s.events]
    assert {r.payment_id for r in master.select("payment_id").collect()} == {e["payment_id"] for e in events}

    serving = ServingLayer(spark, pipeline, loc)
    want = expected_views(events)
    for phase in ("speed only", "after a batch"):
        if phase == "after a batch":
            run_batch(spark, pipeline, loc)
        serving.take_pin()
        for view, sql in QUERIES.items():
            assert_view_equals(
                f"{phase}: {view}", rows_of(serving.query(sql.format(layer="serving")).collect(), view), want[view]
            )
    assert quarantine.filter(F.col("reason").startswith("duplicate")).count() == sum(s.repeats for s in sent)
