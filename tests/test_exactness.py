"""Exactly once across layers, at every instant, while ingest streams (master and speed) and batches publish.

Each probe pins the serving layer (speed version, then coverage) and compares
``serving.page_activity`` with a recompute over exactly the master events the
pinned pair should contain: tags covered by the batch plus the uncovered tags
present in the pinned speed table. Equality means no event counted twice and
none of them missing. At quiescence, serving must equal a full recompute.
"""

from __future__ import annotations

import time

import pytest

from lambda_pipeline.batch_layer.job import run_batch
from lambda_pipeline.core.streaming import stop_between_batches
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.pipelines.ingest import start_ingest
from lambda_pipeline.serving_layer.catalog import ServingLayer
from tests.helpers import assert_same_view, by_key, recompute

pytestmark = pytest.mark.integration


def _probe(spark, serving: ServingLayer, locations) -> int:
    pinned = serving.take_pin()["page_activity"]
    got = by_key(serving.query("SELECT * FROM serving.page_activity", new_pin=False))
    covered = pinned.coverage.master_version
    speed_tags = [
        r.ingest_tag
        for r in spark.read.format("delta")
        .option("versionAsOf", pinned.speed_version)
        .load(locations.speed_partials("page_activity"))
        .filter(f"ingest_tag > {covered}")
        .select("ingest_tag")
        .distinct()
        .collect()
    ]
    in_view = f"ingest_tag <= {covered}" + (
        f" OR ingest_tag IN ({', '.join(map(str, speed_tags))})" if speed_tags else ""
    )
    # Sketches of the same users merged in another order: allow HLL's tiny union error.
    assert_same_view(got, recompute(spark, locations.master, in_view), users_tolerance=0.02)
    return sum(r["events"] for r in got.values())


def test_serving_is_exact_during_streaming_and_converges(spark, settings, locations) -> None:
    generator = ClickstreamGenerator(23, late_fraction=0.2, duplicate_fraction=0.1, malformed_fraction=0.05)
    ingest = start_ingest(spark, CLICKSTREAM, settings, locations)
    serving = ServingLayer(spark, CLICKSTREAM, locations)
    files = []
    visible: list[int] = []
    published = 0
    try:
        deadline = time.monotonic() + 240  # every loop below is bounded in count and in time
        for step in range(10):
            files.append(generator.write_file(locations.landing, 150))
            if step % 3 == 1:
                _, staged = run_batch(spark, CLICKSTREAM, locations)  # publish at an arbitrary moment
                published += staged is not None
            visible.append(_probe(spark, serving, locations))
            assert ingest.exception() is None
            assert time.monotonic() < deadline, "streams too slow for the test's time budget"
        ingest.processAllAvailable()
    finally:
        stop_between_batches(ingest)
    assert published >= 2
    assert visible[-1] > 0 and visible == sorted(visible), "the served count must only grow while ingesting"

    generated = {event_id for f in files for event_id in f.event_ids}
    final = _probe(spark, serving, locations)
    assert final == len(generated)
    assert_same_view(
        by_key(serving.query("SELECT * FROM serving.page_activity", new_pin=False)),
        recompute(spark, locations.master),
        users_tolerance=0.02,
    )
    # A final batch moves everything to the batch layer without changing the answer.
    run_batch(spark, CLICKSTREAM, locations)
    assert _probe(spark, serving, locations) == len(generated)
    share = serving.query(
        "SELECT (SELECT sum(events) FROM batch.page_activity) b, (SELECT count(*) FROM speed.page_activity) s"
    ).first()
    assert share.b == len(generated) and share.s == 0
