"""Delta table helpers: two jobs creating the same table at once both go on; any other error stops the job at
once."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from pyspark.sql import types as T

from lambda_pipeline.core.tables import ensure_table, table_version

SCHEMA = T.StructType([T.StructField("id", T.LongType(), False), T.StructField("name", T.StringType(), True)])


def test_jobs_creating_the_same_table_at_once_all_go_on(spark, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="lambda_pipeline.core.tables")
    lost = 0
    for attempt in range(20):  # a race is timing: repeat until the loser's path ran (most attempts race)
        path = str(tmp_path / f"table-{attempt}")
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def create(path: str = path, start: threading.Barrier = start, errors: list[BaseException] = errors) -> None:
            start.wait(timeout=60)
            try:
                ensure_table(spark, path, SCHEMA, properties={"lambda_pipeline.test": "1"})
            except BaseException as error:  # collected for the assertion below
                errors.append(error)

        jobs = [threading.Thread(target=create) for _ in range(2)]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join(timeout=120)
        assert errors == [] and not any(job.is_alive() for job in jobs)
        assert table_version(spark, path) == 0  # one version 0, the loser committed nothing
        lost = sum("created the Delta table at" in record.getMessage() for record in caplog.records)
        if lost:
            break
    assert lost == 1, "no attempt raced: the loser's path was not exercised"


def test_any_other_creation_error_is_raised_at_once(spark, tmp_path: Path) -> None:
    path = str(tmp_path / "table")
    started = time.monotonic()
    with pytest.raises(Exception, match="no_such_column") as raised:
        ensure_table(spark, path, SCHEMA, partition_by=("no_such_column",))
    assert type(raised.value).__name__ != "ProtocolChangedException"
    assert time.monotonic() - started < 30  # no wait for a version 0 (it waited 60 s)
    assert table_version(spark, path) is None


def test_a_location_holding_other_files_is_refused_at_once(spark, tmp_path: Path) -> None:
    """Only a bare ``_delta_log`` folder is another job's half-made table; other files are the user's."""
    path = tmp_path / "table"
    (path / "_delta_log").mkdir(parents=True)
    (path / "part-0.csv").write_text("id,name\n1,a\n")
    started = time.monotonic()
    with pytest.raises(Exception, match=r"DELTA_(CREATE_TABLE_WITH_NON_EMPTY_LOCATION|TABLE_NOT_FOUND)"):
        ensure_table(spark, str(path), SCHEMA)
    assert time.monotonic() - started < 15  # not the creation race's wait (30 s)
