"""A user's own pipeline, from a folder outside the package, through every layer: ingest from files and from
Kafka, batch, then more events for the speed layer only. Every view equals a pandas recompute of the input
lines, before and after the batch, in the batch, speed and merged relations."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from lambda_pipeline.batch_layer.job import run_batch
from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.pipelines.ingest import start_ingest
from lambda_pipeline.pipelines.registry import load_pipeline
from lambda_pipeline.serving_layer.catalog import ServingLayer
from tests.user_pipeline import (
    QUERIES,
    assert_view_equals,
    expected_views,
    payment_lines,
    rows_of,
    write_lines,
    write_module,
)

pytestmark = pytest.mark.integration


def _check(serving: ServingLayer, events: list[dict[str, Any]], layer: str = "serving") -> None:
    want = expected_views(events)
    for view, sql in QUERIES.items():
        got = rows_of(serving.query(sql.format(layer=layer)).collect(), view)
        assert_view_equals(f"{layer}.{view}", got, want[view])


def _run(spark, pipeline: Pipeline, settings, loc: Locations, deliver) -> None:
    now_ms = int(time.time() * 1000)
    first = payment_lines(400, seed=1, now_ms=now_ms)
    second = payment_lines(150, seed=2, now_ms=now_ms, first_id=10_000)
    serving = ServingLayer(spark, pipeline, loc)

    deliver(first.lines, "first")
    start_ingest(spark, pipeline, settings, loc, once=True).awaitTermination(300)
    _check(serving, first.events)  # before any batch: the speed layer alone
    run_batch(spark, pipeline, loc)
    _check(serving, first.events)
    _check(serving, first.events, layer="batch")

    deliver(second.lines, "second")
    start_ingest(spark, pipeline, settings, loc, once=True).awaitTermination(300)
    _check(serving, first.events + second.events)  # batch and speed merged
    _check(serving, second.events, layer="speed")


def test_a_user_pipeline_from_files_equals_a_pandas_recompute(spark, tmp_path: Path) -> None:
    module = write_module(tmp_path / "project")
    pipeline = load_pipeline(f"{module}:PIPELINE").check(spark)
    settings = load_settings(None, ["ingest.trigger=200 milliseconds"])
    loc = Locations.create(settings, tmp_path / "work")
    loc.ensure_local_dirs()
    _run(spark, pipeline, settings, loc, lambda lines, name: write_lines(Path(loc.landing), lines, f"{name}.jsonl"))


def test_a_user_pipeline_from_kafka_equals_a_pandas_recompute(spark, kafka_broker, kafka_topic, tmp_path: Path) -> None:
    from lambda_pipeline.cli.kafka_producer import KafkaEventProducer

    module = write_module(tmp_path / "project", "kafka_payments.py")
    pipeline = load_pipeline(f"{module}:PIPELINE").check(spark)
    settings = load_settings(
        None,
        [
            "ingest.source=kafka",
            f"ingest.kafka.bootstrap_servers={kafka_broker.bootstrap_servers}",
            f"ingest.kafka.topic={kafka_topic}",
            "ingest.trigger=200 milliseconds",
        ],
    )
    loc = Locations.create(settings, tmp_path / "work")
    loc.ensure_local_dirs()
    producer = KafkaEventProducer(settings.ingest.kafka)

    def deliver(lines: list[str], _name: str) -> None:
        producer.send(line.encode() for line in lines)
        producer.flush()

    try:
        _run(spark, pipeline, settings, loc, deliver)
    finally:
        producer.close()


def test_a_user_view_changed_is_refused_until_refreshed_then_equals_the_recompute(spark, tmp_path: Path) -> None:
    from lambda_pipeline.core.errors import LambdaError
    from lambda_pipeline.maintenance.refresh import refresh
    from tests.user_pipeline import evolved_module

    before = load_pipeline(f"{write_module(tmp_path / 'v1', 'evolving_v1.py')}:PIPELINE").check(spark)
    after = load_pipeline(f"{evolved_module(tmp_path / 'v2', 'evolving_v2.py', 50_000)}:PIPELINE").check(spark)
    assert before.view("failed_hourly").fingerprint != after.view("failed_hourly").fingerprint
    assert before.view("country_hopping").fingerprint == after.view("country_hopping").fingerprint
    settings = load_settings(None, ["ingest.trigger=200 milliseconds"])
    loc = Locations.create(settings, tmp_path / "work")
    loc.ensure_local_dirs()
    now_ms = int(time.time() * 1000)
    lines = payment_lines(300, seed=5, now_ms=now_ms)
    write_lines(Path(loc.landing), lines.lines, "one.jsonl")
    start_ingest(spark, before, settings, loc, once=True).awaitTermination(300)
    run_batch(spark, before, loc)

    changed = ServingLayer(spark, after, loc)
    with pytest.raises(
        LambdaError, match=r"serving\.failed_hourly: the .*definition changed.*refresh --view failed_hourly"
    ):
        changed.query("SELECT * FROM serving.failed_hourly").collect()
    hopping = rows_of(changed.query(QUERIES["country_hopping"].format(layer="serving")).collect(), "country_hopping")
    assert_view_equals("unchanged view", hopping, expected_views(lines.events)["country_hopping"])

    refresh(spark, after, loc, "failed_hourly")
    got = rows_of(changed.query(QUERIES["failed_hourly"].format(layer="serving")).collect(), "failed_hourly")
    assert_view_equals("refreshed", got, expected_views(lines.events, failed_above_cents=50_000)["failed_hourly"])


def test_the_iot_example_runs_end_to_end(spark, tmp_path: Path) -> None:
    """The second shipped example, from its own generator: nested fields, epoch-ms times, a filter, an
    all-time view; each view agrees with master."""
    from pyspark.sql import functions as F

    from lambda_pipeline.pipelines.iot import IOT, OVERHEAT_CELSIUS
    from lambda_pipeline.pipelines.iot_generator import IotGenerator

    pipeline = IOT.check(spark)
    settings = load_settings(None, ["ingest.trigger=200 milliseconds"])
    loc = Locations.create(settings, tmp_path / "work")
    loc.ensure_local_dirs()
    written = IotGenerator(pipeline.source, seed=3, overheat_probability=0.01).write_file(loc.landing, 600)
    start_ingest(spark, pipeline, settings, loc, once=True).awaitTermination(300)
    run_batch(spark, pipeline, loc)
    serving = ServingLayer(spark, pipeline, loc)
    master = spark.read.format("delta").load(loc.master)
    assert master.count() == written.events
    totals = serving.query("SELECT sum(readings) AS n, count(*) AS devices FROM serving.device_totals").first()
    assert totals is not None and totals.n == written.events
    assert totals.devices == master.select("device.id").distinct().count()
    hot = serving.query("SELECT coalesce(sum(readings), 0) AS n FROM serving.device_overheating").first()
    assert hot is not None and hot.n == master.filter(F.col("metrics.temperature_c") > OVERHEAT_CELSIUS).count() > 0
    sites = serving.query(
        "SELECT sum(readings) AS n, max(p95_temperature) AS p95 FROM serving.site_temperature"
    ).first()
    assert sites is not None and sites.n == written.events and sites.p95 is not None
