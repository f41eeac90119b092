"""View evolution: a changed view is never merged with states of its old definition; refresh recomputes it."""

from __future__ import annotations

import pytest

from lambda_pipeline.batch_layer.job import run_batch
from lambda_pipeline.batch_layer.recompute import deduplicate
from lambda_pipeline.cli.main import main
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.views import TumblingWindow, View, count, max_of
from lambda_pipeline.maintenance.refresh import refresh
from lambda_pipeline.pipelines.clickstream import CLICKS, PAGE_ACTIVITY
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.pipelines.ingest import start_ingest
from lambda_pipeline.serving_layer.catalog import ServingLayer
from tests.helpers import PAGE_VISITS

pytestmark = pytest.mark.integration

BEFORE = Pipeline(name="evolving", source=CLICKS, views=(PAGE_ACTIVITY, PAGE_VISITS))
# The same view name with one more measure: another definition, another fingerprint.
PAGE_ACTIVITY_V2 = View(
    name="page_activity",
    source=CLICKS,
    keys=PAGE_ACTIVITY.keys,
    window=PAGE_ACTIVITY.window,
    measures={**PAGE_ACTIVITY.measures, "longest_ms": max_of("duration_ms")},
)
AFTER = Pipeline(name="evolving", source=CLICKS, views=(PAGE_ACTIVITY_V2, PAGE_VISITS))
WITH_NEW = Pipeline(
    name="evolving",
    source=CLICKS,
    views=(
        *AFTER.views,
        View(
            name="page_minutes",
            source=CLICKS,
            keys=(),
            window=TumblingWindow("event_time", "1 minute"),
            measures={"clicks": count()},
        ),
    ),
)
V2_QUERY = "SELECT sum(events) AS events, max(longest_ms) AS longest FROM serving.page_activity"


def _ingest(spark, pipeline, settings, locations) -> None:
    start_ingest(spark, pipeline, settings, locations, once=True).awaitTermination()


def test_a_changed_view_is_refused_until_refreshed_and_then_equals_a_recompute(spark, settings, locations) -> None:
    assert PAGE_ACTIVITY_V2.fingerprint != PAGE_ACTIVITY.fingerprint
    assert PAGE_VISITS.fingerprint == AFTER.view("page_visits").fingerprint
    generator = ClickstreamGenerator(19, duplicate_fraction=0.0)
    generator.write(locations.landing, 120, files=1)
    _ingest(spark, BEFORE, settings, locations)
    run_batch(spark, BEFORE, locations)
    generator.write(locations.landing, 40, files=1)
    _ingest(spark, BEFORE, settings, locations)

    changed = ServingLayer(spark, AFTER, locations)
    for layer, why in (
        ("serving", "definition changed"),
        ("batch", "definition changed"),
        ("speed", "another definition"),
    ):
        with pytest.raises(LambdaError, match=rf"{layer}\.page_activity: the .*{why}.*refresh --view page_activity"):
            changed.query(f"SELECT count(*) FROM {layer}.page_activity").collect()
    visits = changed.query("SELECT sum(visits) AS n FROM serving.page_visits").first()
    assert visits is not None and visits.n == 160  # the unchanged view stays served

    # A view added with no states computed yet says so too.
    with pytest.raises(LambdaError, match=r"page_minutes: the view is new and not computed yet"):
        ServingLayer(spark, WITH_NEW, locations).query("SELECT * FROM serving.page_minutes").collect()

    # Ingest, restarted with the new definition, recomputes the speed half; the batch half stays refused.
    generator.write(locations.landing, 20, files=1)
    _ingest(spark, AFTER, settings, locations)
    speed = changed.query("SELECT sum(events) AS n FROM speed.page_activity").first()
    assert speed is not None and speed.n == 60
    with pytest.raises(LambdaError, match="definition changed"):
        changed.query(V2_QUERY).collect()

    refresh(spark, AFTER, locations, "page_activity")
    got = changed.query(V2_QUERY).first()
    master = spark.read.format("delta").load(locations.master)
    expected = PAGE_ACTIVITY_V2.finalize(PAGE_ACTIVITY_V2.partials(deduplicate(master, CLICKS), by_tag=False))
    want = expected.agg({"events": "sum", "longest_ms": "max"}).first()
    assert got is not None and want is not None
    assert (got.events, got.longest) == (want["sum(events)"], want["max(longest_ms)"]) and got.events == 180

    with pytest.raises(LambdaError, match="no such view"):
        refresh(spark, AFTER, locations, "nope")
    assert main(["refresh", "--view", "nope", "--workdir", locations.workdir]) == 1
