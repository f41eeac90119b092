"""Kafka as the source, on a real broker on 127.0.0.1: hostile input, loud data loss, a broker restart."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lambda_pipeline.batch_layer.job import run_batch
from lambda_pipeline.cli.kafka_producer import KafkaEventProducer
from lambda_pipeline.core.config import Settings
from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.errors import DataLossError
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.streaming import stop_between_batches
from lambda_pipeline.local_services.kafka_admin import delete_records, offsets
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
from lambda_pipeline.pipelines.generator import HOSTILE_KINDS, ClickstreamGenerator
from lambda_pipeline.pipelines.ingest import start_ingest
from lambda_pipeline.serving_layer.catalog import ServingLayer
from tests.helpers import assert_same_view, by_key, recompute

pytestmark = pytest.mark.integration


def kafka_settings(bootstrap: str, topic: str, *extra: str) -> Settings:
    return load_settings(
        None,
        [
            "ingest.source=kafka",
            f"ingest.kafka.bootstrap_servers={bootstrap}",
            f"ingest.kafka.topic={topic}",
            "ingest.kafka.max_offsets_per_trigger=700",
            "ingest.trigger=200 milliseconds",
            *extra,
        ],
    )


def topic_messages(bootstrap: str, topic: str) -> int:
    return sum(latest - earliest for earliest, latest in offsets(bootstrap, topic).values())


def table_counts(spark, loc: Locations) -> tuple[int, Counter[str]]:
    master = spark.read.format("delta").load(loc.master).count()
    reasons = Counter(
        {
            r.kind: r.n
            for r in spark.read.format("delta")
            .load(loc.quarantine)
            .groupBy(F.regexp_extract("reason", "^[a-z_0-9]+", 0).alias("kind"))
            .agg(F.count("*").alias("n"))
            .collect()
        }
    )
    return master, reasons


def test_hostile_messages_reconcile_with_good_traffic(spark, kafka_broker, kafka_topic, tmp_path: Path) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    settings = kafka_settings(bootstrap, kafka_topic)
    loc = Locations.create(settings, tmp_path / "work")
    generator = ClickstreamGenerator(11)
    producer = KafkaEventProducer(settings.ingest.kafka)
    sent = [producer.produce(generator, 800, hostile_fraction=0.05) for _ in range(3)]
    producer.close()
    start_ingest(spark, CLICKSTREAM, settings, loc, once=True).awaitTermination(300)

    produced = topic_messages(bootstrap, kafka_topic)
    assert produced == sum(s.messages for s in sent)
    master, reasons = table_counts(spark, loc)
    assert master + sum(reasons.values()) == produced  # nothing lost, nothing twice
    ids = spark.read.format("delta").load(loc.master).select("event_id")
    assert ids.distinct().count() == master
    expected_ids = {i for s in sent for i in s.event_ids}
    assert {r.event_id for r in ids.collect()} == expected_ids

    hostile = sum((s.hostile for s in sent), Counter())
    expected = Counter()
    for kind, n in hostile.items():
        if HOSTILE_KINDS[kind] is not None:
            expected[HOSTILE_KINDS[kind]] += n
    for kind in ("invalid_utf8", "oversize", "empty_message", "event_time_out_of_range"):
        assert reasons[kind] == expected[kind], (kind, reasons)
    generated_dups = sum(s.duplicates for s in sent) + hostile["duplicate_id"]
    assert reasons["duplicate"] == generated_dups
    # Additive schema drift is accepted: its events are in master with their known fields.
    assert hostile["schema_drift"] > 0


def test_aged_out_offsets_stop_ingest_loudly(spark, kafka_broker, kafka_topic, tmp_path: Path) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    settings = kafka_settings(bootstrap, kafka_topic, "ingest.kafka.max_offsets_per_trigger=100000")
    loc = Locations.create(settings, tmp_path / "work")
    generator = ClickstreamGenerator(12, duplicate_fraction=0, malformed_fraction=0)
    producer = KafkaEventProducer(settings.ingest.kafka)
    producer.produce(generator, 200)
    producer.flush()
    start_ingest(spark, CLICKSTREAM, settings, loc, once=True).awaitTermination(300)
    producer.produce(generator, 200)
    producer.close()
    # Retention deleting old segments is what delete-records does, deterministically.
    before = offsets(bootstrap, kafka_topic)
    cut = {p: (earliest + latest) // 2 for p, (earliest, latest) in before.items()}
    committed = {p: earliest for p, (earliest, _) in before.items()}  # overwritten below from master
    master = spark.read.format("delta").load(loc.master)
    for row in (
        master.select(F.split("source_file", "/").alias("s"))
        .select(F.col("s")[3].cast("int").alias("p"), F.col("s")[4].cast("long").alias("o"))
        .groupBy("p")
        .agg(F.max("o").alias("o"))
        .collect()
    ):
        committed[row.p] = row.o + 1
    cut = {p: max(cut[p], committed[p] + 10) for p in cut if before[p][1] > committed[p] + 10}
    assert cut, "the second wave must reach every partition it is cut from"
    delete_records(bootstrap, kafka_topic, cut)

    with pytest.raises(DataLossError) as lost:
        start_ingest(spark, CLICKSTREAM, settings, loc, once=True)
    message = str(lost.value)
    for p, offset in cut.items():
        assert f"{kafka_topic}-{p} offsets {committed[p]}..{offset - 1}" in message
    assert "--accept-data-loss" in message
    assert master.count() == 200  # nothing was written

    start_ingest(spark, CLICKSTREAM, settings, loc, once=True, accept_data_loss=True).awaitTermination(300)
    lost_messages = sum(offset - committed[p] for p, offset in cut.items())
    assert spark.read.format("delta").load(loc.master).count() == 400 - lost_messages
    recorded = spark.read.format("delta").load(loc.quarantine).filter("reason LIKE 'data_loss%'").collect()
    assert len(recorded) == len(cut)


def test_broker_restart_mid_stream_loses_and_duplicates_nothing(
    spark, kafka_broker, kafka_topic, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    settings = kafka_settings(bootstrap, kafka_topic)
    loc = Locations.create(settings, tmp_path / "work")
    generator = ClickstreamGenerator(13)
    producer = KafkaEventProducer(settings.ingest.kafka)
    waves = [producer.produce(generator, 500)]
    producer.flush()
    ingest = start_ingest(spark, CLICKSTREAM, settings, loc)
    restarts = 0
    try:
        ingest.processAllAvailable()
        kafka_broker.stop()  # a clean broker shutdown while the stream polls it
        kafka_broker.start()
        waves.append(producer.produce(generator, 500))
        producer.close()
        expected = topic_messages(bootstrap, kafka_topic)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if not ingest.isActive:  # the documented fallback: one restart of the job
                assert restarts == 0, f"ingest died twice: {ingest.exception()}"
                restarts += 1
                ingest = start_ingest(spark, CLICKSTREAM, settings, loc)
            master, reasons = table_counts(spark, loc)
            if master + sum(reasons.values()) >= expected:
                break
            ingest.awaitTermination(2)  # returns early if the query dies; bounded by the deadline
        ingest.processAllAvailable()
    finally:
        stop_between_batches(ingest)
    master, reasons = table_counts(spark, loc)
    assert master + sum(reasons.values()) == expected
    ids = spark.read.format("delta").load(loc.master).select("event_id")
    assert ids.distinct().count() == master == len({i for w in waves for i in w.event_ids})

    run_batch(spark, CLICKSTREAM, loc)
    serving = ServingLayer(spark, CLICKSTREAM, loc)
    serving.take_pin()
    assert_same_view(
        by_key(serving.query("SELECT * FROM serving.page_activity")),
        recompute(spark, loc.master),
        users_tolerance=0.05,
    )


def test_a_broker_that_is_down_when_ingest_restarts_is_one_clear_line(spark, tmp_path: Path) -> None:
    """A Kafka checkpoint that needs offsets, and no broker: the check names the brokers instead of a Java trace."""
    from lambda_pipeline.core.config import KafkaSettings
    from lambda_pipeline.core.errors import EnvironmentProblem
    from lambda_pipeline.ingestion.data_loss import find_data_loss
    from lambda_pipeline.local_services.process import free_port

    checkpoint = tmp_path / "checkpoint"
    (checkpoint / "commits").mkdir(parents=True)
    (checkpoint / "commits" / "0").write_text('v1\n{"nextBatchWatermarkMs":0}\n')
    (checkpoint / "offsets").mkdir()
    (checkpoint / "offsets" / "0").write_text('v1\n{"batchWatermarkMs":0,"batchTimestampMs":0}\n{"clicks":{"0":5}}\n')
    servers = f"127.0.0.1:{free_port()}"  # nothing listens there
    kafka = KafkaSettings(bootstrap_servers=servers, topic="clicks", options={"default.api.timeout.ms": "2000"})
    started = time.monotonic()
    with pytest.raises(EnvironmentProblem) as refused:
        find_data_loss(spark, kafka, str(checkpoint))
    message = str(refused.value)
    assert message.startswith(f"ingest: the Kafka brokers {servers} did not answer within 2s")
    assert "\n" not in message and "Exception" not in message
    assert time.monotonic() - started < 60
