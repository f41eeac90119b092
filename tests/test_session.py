"""The session factory and a session already running in the process: it applies what a running session can
take, and says in one line what only a new JVM could."""

from __future__ import annotations

from lambda_pipeline.core.config import S3Settings, SparkSettings
from lambda_pipeline.core.jvm_packages import KAFKA_COORDINATE
from lambda_pipeline.core.session import get_spark

# What the session-scoped fixture asked for (tests/conftest.py), less its temporary warehouse.
FIXTURE = SparkSettings(master="local[2]", shuffle_partitions=2, log_level="ERROR", conf={"spark.ui.enabled": "false"})
RUNTIME = (
    "spark.sql.shuffle.partitions",
    "spark.databricks.delta.snapshotPartitions",
    "spark.sql.sources.parallelPartitionDiscovery.parallelism",
    "spark.sql.adaptive.enabled",
)


def test_the_running_session_is_returned_quietly_when_nothing_differs(spark, capsys) -> None:
    # As the CLI asks inside a test: the S3 defaults (Hadoop's own) and a subset of the fixture's packages.
    again = get_spark(FIXTURE, extra_conf=S3Settings().spark_conf(), packages=(KAFKA_COORDINATE,))
    assert again.sparkContext is spark.sparkContext
    assert capsys.readouterr().err == ""


def test_runtime_settings_apply_to_the_running_session(spark, capsys) -> None:
    before = {key: spark.conf.get(key) for key in RUNTIME}
    try:
        again = get_spark(
            FIXTURE.model_copy(update={"shuffle_partitions": 3, "conf": {"spark.sql.adaptive.enabled": "false"}})
        )
        assert {key: again.conf.get(key) for key in RUNTIME} == {
            "spark.sql.shuffle.partitions": "3",
            "spark.databricks.delta.snapshotPartitions": "3",
            "spark.sql.sources.parallelPartitionDiscovery.parallelism": "12",
            "spark.sql.adaptive.enabled": "false",
        }
        assert capsys.readouterr().err == ""
    finally:
        for key, value in before.items():
            spark.conf.set(key, value)


def test_settings_only_a_new_jvm_could_take_are_named_in_one_line(spark, capsys) -> None:
    warehouse = spark.conf.get("spark.sql.warehouse.dir")
    asked = FIXTURE.model_copy(
        update={
            "master": "local[1]",
            "conf": {"spark.driver.memory": "3g", "spark.sql.warehouse.dir": "/elsewhere", "spark.ui.enabled": "false"},
        }
    )
    endpoint = {"spark.hadoop.fs.s3a.endpoint": "http://127.0.0.1:1"}
    again = get_spark(asked, extra_conf=endpoint, packages=("org.example:nowhere:1.0",))
    assert again.sparkContext is spark.sparkContext
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("lambda-pipeline: reusing the Spark session already running here; "), line
    named = ("spark.master (local[1]; it runs local[2])", "package org.example:nowhere:1.0", "spark.driver.memory")
    for part in (*named, "spark.sql.warehouse.dir", "spark.hadoop.fs.s3a.endpoint"):
        assert part in line, part
    assert "3g" not in line and "/elsewhere" not in line and "127.0.0.1:1" not in line  # a value may be a secret
    assert "spark.ui.enabled" not in line  # the same as the running session's
    assert spark.conf.get("spark.sql.warehouse.dir") == warehouse
