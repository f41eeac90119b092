"""The serving layer: read-only SQL, catalog views per layer, provenance, and the CLI over them."""

from __future__ import annotations

import json

import pytest

from lambda_pipeline.cli.main import main
from lambda_pipeline.core.errors import LambdaError, ReadOnlyViolation
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.serving_layer.catalog import ServingLayer
from lambda_pipeline.serving_layer.guard import check_read_only
from tests.helpers import batch_then_speed


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO serving.page_activity SELECT * FROM serving.page_activity",
        "WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a",
        "DELETE FROM master.master_events WHERE true",
        "UPDATE t SET a = 1",
        "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE",
        "CREATE TABLE x (a INT)",
        "DROP VIEW serving.page_activity",
        "SET spark.sql.shuffle.partitions=1",
        "CACHE TABLE serving.page_activity",
        "INSERT OVERWRITE DIRECTORY '/tmp/x' SELECT 1",
    ],
)
def test_writes_and_ddl_are_refused(spark, sql: str) -> None:
    with pytest.raises(ReadOnlyViolation, match="read-only"):
        check_read_only(spark, sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "WITH a AS (SELECT 1 AS x) SELECT x FROM a",
        "SHOW TABLES IN serving",
        "DESCRIBE serving.page_activity",
        "EXPLAIN SELECT 1",
        "VALUES (1)",
    ],
)
def test_queries_pass_the_check(spark, sql: str) -> None:
    check_read_only(spark, sql)


def test_unparsable_sql_is_a_clear_error(spark) -> None:
    with pytest.raises(ReadOnlyViolation, match="does not parse"):
        check_read_only(spark, "SELEC oops")


def test_query_before_any_ingest_says_what_to_run(spark, locations) -> None:
    with pytest.raises(LambdaError, match="run 'lambda-pipeline ingest'"):
        ServingLayer(spark, CLICKSTREAM, locations).query("SELECT 1")


@pytest.mark.integration
def test_layers_provenance_and_cli_query(spark, settings, locations, capsys) -> None:
    generator = ClickstreamGenerator(3, malformed_fraction=0.0, duplicate_fraction=0.0)
    batch_then_speed(spark, settings, locations, generator, batch=(300, 1), speed=(120, 1))

    serving = ServingLayer(spark, CLICKSTREAM, locations)
    totals = serving.query(
        "SELECT (SELECT sum(events) FROM batch.page_activity) b, (SELECT sum(events) FROM speed.page_activity) s, "
        "(SELECT sum(events) FROM serving.page_activity) m, (SELECT count(*) FROM master.master_events) n"
    ).first()
    assert (totals.b, totals.s, totals.m, totals.n) == (300, 120, 420, 420)

    prov = serving.provenance("page_activity")
    assert prov.covered_master_version == 1 and prov.uncovered_tags == (2, 2)
    assert prov.freshness_lag_seconds is not None and 0 <= prov.freshness_lag_seconds < 600

    base = ["--workdir", locations.workdir, "--set", "ingest.trigger=200 milliseconds"]
    assert main(["query", "SELECT sum(events) AS n FROM serving.page_activity", "--format", "json", *base]) == 0
    assert json.loads(capsys.readouterr().out.strip()) == {"n": 420}
    assert (
        main(
            [
                "query",
                "SELECT page, sum(events) AS n FROM speed.page_activity GROUP BY page ORDER BY page",
                "--format",
                "csv",
                "--provenance",
                *base,
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    assert out.out.splitlines()[0] == "page,n" and sum(int(r.split(",")[1]) for r in out.out.splitlines()[1:]) == 120
    assert json.loads(out.err.strip().splitlines()[-1])["provenance"]["covered_master_version"] == 1
    assert main(["query", "DROP TABLE master.master_events", *base]) == 2
    assert "read-only" in capsys.readouterr().err
