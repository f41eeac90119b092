"""The project's S3 log store (``core/project_jars.py``): a reader lists a table's log from a version, with S3's
``start-after``, instead of listing the whole ``_delta_log`` each time, and reads the same table state.

Against the real local S3 server (moto over HTTP), whose request log shows each LIST's query.
"""

from __future__ import annotations

import shutil
import urllib.parse
from pathlib import Path

import pytest
from chispa import assert_df_equality

from lambda_pipeline.core.errors import EnvironmentProblem
from lambda_pipeline.core.jvm import delta_snapshot
from lambda_pipeline.core.log_store import S3A_LOG_STORE_KEY, arbitrates
from lambda_pipeline.core.project_jars import LOG_STORE_CLASS, LOG_STORE_JAR_PREFIX, log_store_jar
from lambda_pipeline.local_services.s3_server import S3Server


def _log_listings(server: S3Server, mark: int, log_prefix: str) -> list[dict[str, list[str]]]:
    return [
        urllib.parse.parse_qs(request.query)
        for request in server.requests().since(mark)
        if request.kind == "LIST" and request.listed_prefix.startswith(log_prefix)
    ]


@pytest.mark.integration
def test_a_reader_lists_the_log_from_a_version_and_reads_the_same_state(
    spark, s3_server: S3Server, s3_bucket: str
) -> None:
    assert spark.sparkContext.getConf().get(S3A_LOG_STORE_KEY) == LOG_STORE_CLASS  # set by the session factory
    path = f"s3a://{s3_bucket}/t"
    assert not arbitrates(spark, path)  # it writes as Delta's single-driver store does: one writer per table
    for start in range(0, 12, 3):  # four commits
        spark.range(start, start + 3).write.format("delta").mode("append").save(path)
    log_prefix = "t/_delta_log/"

    # A reader that has not seen the table (a fresh log, as in another application), with pages of 2 keys so
    # that the listing from version 0 takes several requests; each carries start-after.
    jvm = spark.sparkContext._jvm
    jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    hadoop.set("fs.s3a.paging.maximum", "2")
    try:
        mark = s3_server.requests().mark()
        snapshot = delta_snapshot(spark, path)
        listings = _log_listings(s3_server, mark, log_prefix)
    finally:
        hadoop.unset("fs.s3a.paging.maximum")
    assert snapshot is not None and snapshot.version == 3
    assert len(listings) > 1, listings  # several pages
    assert all(q.get("start-after", [""])[0].startswith(log_prefix) for q in listings), listings
    assert all(q.get("delimiter") == ["/"] for q in listings), listings
    got = spark.read.format("delta").load(path)
    assert_df_equality(got, spark.range(0, 12), ignore_row_order=True, ignore_nullable=True)

    # A refresh lists from the last checkpoint (none here: from version 0), in one request of the default size.
    mark = s3_server.requests().mark()
    assert delta_snapshot(spark, path).version == 3  # type: ignore[union-attr]
    later = _log_listings(s3_server, mark, log_prefix)
    assert len(later) == 1 and later[0].get("start-after") == [f"{log_prefix}00000000000000000000-"], later
    # A missing table is still missing (Delta learns it from the listing's FileNotFoundException).
    assert delta_snapshot(spark, f"s3a://{s3_bucket}/absent") is None


def test_the_artifact_s_hadoop_aws_group_carries_the_compiled_store() -> None:
    import zipfile

    from lambda_pipeline.deploy.artifact import jar_groups

    built = [jar for jar in jar_groups(hadoop_aws=True)["hadoop_aws"] if jar.name.startswith(LOG_STORE_JAR_PREFIX)]
    assert len(built) == 1, built
    with zipfile.ZipFile(built[0]) as jar:
        assert jar.namelist() == [LOG_STORE_CLASS.replace(".", "/") + ".class"]
        assert {info.date_time for info in jar.infolist()} == {(1980, 1, 1, 0, 0, 0)}  # reproducible bytes


def test_without_a_jdk_a_session_keeps_delta_s_store_and_packaging_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LAMBDA_PIPELINE_CACHE", str(tmp_path))  # nothing compiled yet
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert log_store_jar([], required=False) is None
    assert "Delta's own S3 log store is used" in capsys.readouterr().err
    with pytest.raises(EnvironmentProblem, match="install a JDK 17"):
        log_store_jar([], required=True)
