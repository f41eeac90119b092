"""Exactly once through SIGKILLs: ingest and speed killed at random points and restarted, on a real broker.

The control run switches idempotent commits off and kills right after a data commit: it must
show duplicates, which proves the main run's checks can see them.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from batch_layer.job import run_batch
from ingestion.job import start_ingest
from lambda_core.config import load_settings
from lambda_core.tables import Locations
from local_services.chaos import run_chaos
from local_services.kafka_broker import offsets
from pipelines.clickstream import CLICKSTREAM
from pipelines.generator import ClickstreamGenerator
from pipelines.kafka_producer import KafkaEventProducer
from serving_layer.catalog import ServingLayer
from speed_layer.job import start_speed
from tests.helpers import assert_same_view, by_key, recompute

pytestmark = pytest.mark.integration

KILLS = int(os.environ.get("LAMBDA_PIPELINE_CRASH_KILLS", "20"))


def overrides(bootstrap: str, topic: str, *extra: str) -> list[str]:
    return [
        "ingest.source=kafka",
        f"ingest.kafka.bootstrap_servers={bootstrap}",
        f"ingest.kafka.topic={topic}",
        "ingest.kafka.max_offsets_per_trigger=400",
        "ingest.trigger=300 milliseconds",
        "speed.trigger=300 milliseconds",
        "speed.compact_every=7",
        "spark.log_level=ERROR",
        "spark.conf.spark.ui.enabled=false",
        *extra,
    ]


def produce_during(settings, seconds: float, stop: threading.Event, seed: int) -> list:
    """Produce in the background while the processes crash (bounded by ``seconds``)."""
    producer = KafkaEventProducer(settings.ingest.kafka)
    generator = ClickstreamGenerator(seed)
    sent = []
    for _ in range(int(seconds)):
        if stop.is_set():
            break
        sent.append(producer.produce(generator, 150))
        stop.wait(1.0)  # pacing: one burst a second
    producer.close()
    return sent


def crash_run(
    spark, bootstrap: str, topic: str, workdir: Path, kills: int, *extra: str, on_commit: float = 0.4
) -> dict:
    sets = overrides(bootstrap, topic, *extra)
    settings = load_settings(None, sets)
    loc = Locations.create(settings, workdir)
    sent: list = []
    stop = threading.Event()
    producer = threading.Thread(target=lambda: sent.extend(produce_during(settings, 600, stop, seed=kills)))
    producer.start()
    try:
        report = run_chaos(
            workdir,
            sets,
            kills=kills,
            seed=kills,
            uptime=(2.0, 12.0),
            on_commit_fraction=on_commit,
            output_logs={
                "ingest": Path(loc.master) / "_delta_log",
                "speed": Path(loc.speed_partials("page_activity")) / "_delta_log",
            },
            deadline_seconds=900,
        )
    finally:
        stop.set()
        producer.join(timeout=120)
    # Quiesce: catch up without crashes, publish a batch, let speed purge what it covers.
    start_ingest(spark, CLICKSTREAM, settings, loc, once=True).awaitTermination(600)
    start_speed(spark, CLICKSTREAM, settings, loc, once=True).awaitTermination(600)
    produced = sum(latest - earliest for earliest, latest in offsets(bootstrap, topic).values())
    master = spark.read.format("delta").load(loc.master)
    quarantine = spark.read.format("delta").load(loc.quarantine)
    return {
        "report": report,
        "loc": loc,
        "sent": sent,
        "produced": produced,
        "master": master.count(),
        "distinct_ids": master.select("event_id").distinct().count(),
        "quarantine": quarantine.count(),
        "duplicate_reason": quarantine.filter(F.col("reason").startswith("duplicate")).count(),
    }


def test_sigkill_crashes_lose_and_duplicate_nothing(spark, kafka_broker, kafka_topic, tmp_path: Path) -> None:
    run = crash_run(spark, kafka_broker.bootstrap_servers, kafka_topic, tmp_path / "work", KILLS)
    report, loc = run["report"], run["loc"]
    assert report.total >= KILLS, report
    assert report.kills["ingest"] > 0 and report.kills["speed"] > 0, report
    assert run["produced"] == sum(s.messages for s in run["sent"])
    assert run["master"] + run["quarantine"] == run["produced"], run
    assert run["distinct_ids"] == run["master"], "an event is in master twice"
    assert run["duplicate_reason"] == sum(s.duplicates for s in run["sent"])
    generated = {i for s in run["sent"] for i in s.event_ids}
    assert {r.event_id for r in spark.read.format("delta").load(loc.master).select("event_id").collect()} == generated

    serving = ServingLayer(spark, CLICKSTREAM, loc)
    serving.refresh()  # speed only: everything since the (empty) coverage
    expected = recompute(spark, loc.master)
    assert_same_view(by_key(serving.query("SELECT * FROM serving.page_activity")), expected, users_tolerance=0.05)
    run_batch(spark, CLICKSTREAM, loc)
    serving.refresh()  # batch at the new coverage, speed beyond it
    assert_same_view(by_key(serving.query("SELECT * FROM serving.page_activity")), expected, users_tolerance=0.05)
    print(
        f"crash run: {report.total} kills ({report.kills}, {report.on_commit_kills} on commit) in {report.seconds:.0f}s"
    )


def test_control_without_idempotent_commits_shows_duplicates(spark, kafka_broker, kafka_topic, tmp_path) -> None:
    """Same harness, idempotent commits off: kills right after a commit must leave rows twice."""
    run = crash_run(
        spark,
        kafka_broker.bootstrap_servers,
        kafka_topic,
        tmp_path / "work",
        6,
        "idempotent_writes=false",
        on_commit=1.0,
    )
    assert run["report"].on_commit_kills > 0
    twice = run["master"] + run["quarantine"] - run["produced"]
    assert twice > 0 or run["distinct_ids"] < run["master"], f"the control run showed no duplicate: {run}"
