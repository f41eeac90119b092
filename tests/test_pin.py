"""One pin per query: two views and master read at one consistent set of versions, and ``--as-of``."""

from __future__ import annotations

import json
import threading
import time

import pytest

from lambda_pipeline.batch_layer.job import publish, run_batch, stage_batch
from lambda_pipeline.cli.main import main
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.pipelines.clickstream import CLICKS, CLICKSTREAM, PAGE_ACTIVITY
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.pipelines.ingest import start_ingest
from lambda_pipeline.serving_layer.catalog import ServingLayer
from lambda_pipeline.serving_layer.pin import Pin
from tests.helpers import PAGE_VISITS, events_at

pytestmark = pytest.mark.integration

TWO_VIEWS = Pipeline(name="two_views", source=CLICKS, views=(PAGE_ACTIVITY, PAGE_VISITS))

JOINED = (
    "SELECT (SELECT coalesce(sum(events), 0) FROM serving.page_activity) AS activity, "
    "(SELECT coalesce(sum(visits), 0) FROM serving.page_visits) AS visits, "
    "(SELECT count(*) FROM master.master_events) AS master_rows, "
    "(SELECT count(*) FROM serving.page_activity a JOIN serving.page_visits v ON a.page = v.page) AS joined"
)


def test_two_views_and_master_in_one_query_read_one_pin_while_batches_publish(spark, settings, locations) -> None:
    generator = ClickstreamGenerator(31, malformed_fraction=0.0, duplicate_fraction=0.0, late_fraction=0.0)
    generator.write(locations.landing, 200, files=1)
    start_ingest(spark, TWO_VIEWS, settings, locations, once=True).awaitTermination()
    run_batch(spark, TWO_VIEWS, locations)
    failures: list[BaseException] = []

    def layers_at_work() -> None:  # ingest, speed and batch keep committing while the queries run
        try:
            for _ in range(4):
                generator.write(locations.landing, 150, files=1)
                start_ingest(spark, TWO_VIEWS, settings, locations, once=True).awaitTermination()
                run_batch(spark, TWO_VIEWS, locations)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    worker = threading.Thread(target=layers_at_work, daemon=True)
    serving = ServingLayer(spark, TWO_VIEWS, locations)
    answers: list[tuple[Pin, tuple[int, ...]]] = []
    worker.start()
    deadline = time.monotonic() + 600
    try:
        while worker.is_alive() and time.monotonic() < deadline and len(answers) < 40:
            answer = serving.answer(JOINED)
            row = answer.frame.first()
            answers.append((answer.pin, (row.activity, row.visits, row.master_rows, row.joined)))
    finally:  # never leave the layers running into the next test
        worker.join(timeout=max(1.0, deadline - time.monotonic()))
    assert not failures, failures
    assert not worker.is_alive(), "the layers did not finish within the deadline"
    pins = {json.dumps(pin.as_dict(), sort_keys=True, default=str) for pin, _ in answers}
    assert len(pins) >= 2, "the queries never saw the layers move"
    for pin, (activity, visits, master_rows, joined) in answers:
        assert activity == events_at(spark, locations, PAGE_ACTIVITY.name, pin.as_dict()), pin
        assert visits == events_at(spark, locations, PAGE_VISITS.name, pin.as_dict()), pin
        master = spark.read.format("delta").option("versionAsOf", pin.master_version).load(locations.master)
        assert master_rows == master.count(), pin
        assert joined > 0


def test_as_of_an_earlier_publication_reanswers_what_was_served_then(spark, settings, locations, capsys) -> None:
    generator = ClickstreamGenerator(37, malformed_fraction=0.0, duplicate_fraction=0.0, late_fraction=0.0)
    for events in (200, 100):
        generator.write(locations.landing, events, files=1)
        start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()
    first = publish(spark, locations, stage_batch(spark, CLICKSTREAM, locations, master_version=1))
    sql = (
        "SELECT page, sum(events) AS events, (SELECT count(*) FROM master.master_events) AS master_rows "
        "FROM serving.page_activity GROUP BY page ORDER BY page"
    )
    serving = ServingLayer(spark, CLICKSTREAM, locations)
    then = serving.answer(sql)
    served_then = [r.asDict() for r in then.frame.collect()]
    assert sum(r["events"] for r in served_then) == 300 and then.pin[PAGE_ACTIVITY.name].speed_version is not None

    # Newer commits everywhere: speed purges what the first publication covered, newer batches publish.
    for events in (100, 50):
        generator.write(locations.landing, events, files=1)
        start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()
        run_batch(spark, CLICKSTREAM, locations)
    assert sum(r.events for r in serving.query(sql).collect()) == 450

    again = serving.answer(sql, as_of=first.run_id[:8])
    assert [r.asDict() for r in again.frame.collect()] == served_then
    assert again.pin.as_dict() | {"as_of": None} == then.pin.as_dict()

    base = ["--workdir", locations.workdir, "--format", "json"]
    assert main(["query", sql, "--as-of", first.run_id, "--provenance", *base]) == 0
    out = capsys.readouterr()
    assert [json.loads(line) for line in out.out.splitlines()] == json.loads(json.dumps(served_then, default=str))
    pin = json.loads(out.err.strip().splitlines()[0])["pin"]
    assert pin["publication"] == first.run_id and pin["as_of"] == first.run_id
    assert main(["query", sql, "--as-of", "feedbeef", *base]) == 1
    assert "names no publication" in capsys.readouterr().err


def test_a_pin_reads_the_coverage_from_the_publishing_commit_and_only_the_views_a_statement_reads(
    spark, settings, locations
) -> None:
    from lambda_pipeline.core.clock import as_utc
    from lambda_pipeline.core.coverage import _coverage_from_log
    from lambda_pipeline.core.tables import table_version

    generator = ClickstreamGenerator(41, malformed_fraction=0.0, duplicate_fraction=0.0, late_fraction=0.0)
    for events in (120, 80):
        generator.write(locations.landing, events, files=1)
        start_ingest(spark, TWO_VIEWS, settings, locations, once=True).awaitTermination()
        run_batch(spark, TWO_VIEWS, locations)
    newest = table_version(spark, locations.coverage)
    assert newest is not None
    for version in range(1, newest + 1):
        table = spark.read.format("delta").option("versionAsOf", version).load(locations.coverage)
        row = table.orderBy(table.master_version.desc(), table.published_at.desc()).first()
        logged = _coverage_from_log(spark, locations.coverage, version)
        assert logged is not None and row is not None
        assert (logged.run_id, logged.master_version, logged.view_versions) == (
            row.run_id,
            row.master_version,
            dict(row.view_versions),
        )
        # collect() gives naive local time; the record holds the same instant, aware, in UTC.
        assert (logged.master_events, logged.published_at) == (row.master_events, as_utc(row.published_at))

    serving = ServingLayer(spark, TWO_VIEWS, locations)
    answer = serving.answer("SELECT sum(visits) AS n FROM serving.page_visits")
    assert [name for name, _ in answer.pin.speed_versions] == [PAGE_VISITS.name]
    assert answer.frame.first().n == 200
    assert [p.view for p in serving.provenances(answer)] == [PAGE_VISITS.name]
    everything = serving.answer("SELECT count(*) AS n FROM master.master_events")
    assert {name for name, _ in everything.pin.speed_versions} == {v.name for v in TWO_VIEWS.views}
