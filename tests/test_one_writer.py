"""One writing application per Delta table where the log store does not arbitrate between drivers (S3).

Delta's default S3 log store lets two drivers both write commit N (one is lost): there the batch job holds
its lease for its whole life and maintains its own tables, and ``maintain`` refuses while an owner runs.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import pytest

from lambda_pipeline.batch_layer.job import batch_lease, run_batches
from lambda_pipeline.core.compact_vacuum import Maintained, maintenance_due, owner_of
from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.coverage import Coverage
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.leases import Holder, Lease, LeaseLost
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.log_store import SINGLE_DRIVER_STORE, arbitrates, arbitrates_with, log_store_class
from lambda_pipeline.core.project_jars import LOG_STORE_CLASS
from lambda_pipeline.core.tables import table_version
from lambda_pipeline.maintenance.maintain import owners_to_stop, run_maintenance
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from tests.helpers import ingest_once

DYNAMO = "io.delta.storage.S3DynamoDBLogStore"
LEGACY_DEFAULT = "org.apache.spark.sql.delta.storage.S3SingleDriverLogStore"
S3A_STORE, ANY_STORE = "spark.delta.logStore.s3a.impl", "spark.delta.logStore.class"


@pytest.mark.parametrize(
    ("path", "conf", "expected"),
    [
        ("s3a://bucket/work/warehouse/batch/_coverage", {}, False),
        ("s3://bucket/t", {}, False),
        ("S3N://bucket/t", {}, False),
        ("/home/me/work/warehouse/master/master_events", {}, True),
        ("file:///tmp/t", {}, True),
        ("hdfs://namenode:8020/t", {}, True),
        ("abfss://c@account.dfs.core.windows.net/t", {}, True),
        ("s3a://bucket/t", {"spark.delta.logStore.s3a.impl": DYNAMO}, True),
        ("s3a://bucket/t", {"delta.logStore.s3a.impl": DYNAMO}, True),
        ("s3a://bucket/t", {"spark.delta.logStore.class": DYNAMO}, True),
        ("s3a://bucket/t", {"spark.delta.logStore.s3.impl": DYNAMO}, False),  # another scheme's store
        ("s3a://bucket/t", {"spark.delta.logStore.s3a.impl": SINGLE_DRIVER_STORE}, False),
        ("s3a://bucket/t", {S3A_STORE: LOG_STORE_CLASS}, False),  # ours only lists differently (core/project_jars.py)
        ("s3a://bucket/t", {S3A_STORE: LEGACY_DEFAULT}, False),
        # the per-scheme key wins over the class for every scheme, as in Delta
        ("s3a://bucket/t", {S3A_STORE: SINGLE_DRIVER_STORE, ANY_STORE: DYNAMO}, False),
    ],
)
def test_the_log_store_of_a_path_arbitrates_except_delta_s_default_on_s3(
    path: str, conf: dict[str, str], expected: bool
) -> None:
    assert arbitrates_with(conf.get, path) is expected
    assert (log_store_class(conf.get, path) is None) is not path.lower().startswith(("s3:", "s3a:", "s3n:"))


def test_each_table_has_one_owner() -> None:
    owners = {name: owner_of(name) for name in ("master", "quarantine", "speed.v", "coverage", "batch.v")}
    assert owners == {
        "master": "ingest",
        "quarantine": "ingest",
        "speed.v": "ingest",
        "coverage": "batch",
        "batch.v": "batch",
    }


def _hand_over(lease: Lease, *, released: bool) -> None:
    """The next record of ``lease``: another host's instance took it (or, ``released``, gave it up)."""
    now = datetime.now(timezone.utc).isoformat()
    record = json.dumps(asdict(Holder("another-host", 1, uuid.uuid4().hex, now, now, released=released)))
    while True:  # the holder's renewal may take a number first: the next one, then
        newest = lease.newest()
        if lease.records.create((newest[0] if newest else 0) + 1, record):
            return


class Enough(Exception):
    """Raised by a test's ``on_run`` to stop ``batch --every`` (as Ctrl-C would)."""


@pytest.mark.integration
def test_on_s3_batch_every_holds_its_lease_for_life_and_maintain_waits_for_it(spark, s3_bucket: str) -> None:
    settings = load_settings(None, ["speed.compact_every=0"])
    loc = Locations.create(settings, f"s3a://{s3_bucket}/work")
    local = Locations.create(settings, "/tmp/not-used")
    assert owners_to_stop(spark, CLICKSTREAM, local, None) == {}  # an arbitrating store: maintain beside the jobs
    assert owners_to_stop(spark, CLICKSTREAM, local, ["master"]) == {"ingest": "master"}
    assert owners_to_stop(spark, CLICKSTREAM, loc, None) == {"batch": "coverage", "ingest": "speed.page_activity"}
    spark.conf.set("spark.delta.logStore.s3a.impl", DYNAMO)  # no Delta call until it is unset again
    try:
        assert arbitrates(spark, loc.coverage) and owners_to_stop(spark, CLICKSTREAM, loc, None) == {}
    finally:
        spark.conf.unset("spark.delta.logStore.s3a.impl")
    assert not arbitrates(spark, loc.coverage)

    ClickstreamGenerator(7, duplicate_fraction=0.0).write(loc.landing, 50, files=1, spark=spark)
    ingest_once(spark, settings, loc)
    lease = batch_lease(spark, loc)
    tokens: list[str] = []
    refusals: list[str] = []

    def each_run(coverage: Coverage, staged: object) -> None:
        holder = lease.current()
        assert holder is not None
        if not tokens:  # beside a running batch --every, maintain refuses with one line
            try:
                run_maintenance(spark, CLICKSTREAM, loc, tables=["coverage"])
            except LambdaError as refused:
                refusals.append(str(refused))
        tokens.append(holder.token)
        if len(tokens) == 2:
            raise Enough

    with pytest.raises(Enough):
        run_batches(spark, CLICKSTREAM, loc, every=0.05, on_run=each_run)
    assert len(tokens) == 2 and tokens[0] == tokens[1], "one lease from the first run to the last"
    (refusal,) = refusals
    assert refusal.startswith(f"maintain: {loc.coverage} is written by the batch job, which runs (lease held by ")
    assert "S3SingleDriverLogStore only one application may write a table" in refusal and "docs/s3.md" in refusal
    assert lease.current() is None, "batch --every gives its lease up when it stops"

    # A zombie: another instance took the lease over while this batch --every slept between two runs.
    versions: list[int | None] = []

    def taken_over(coverage: Coverage, staged: object) -> None:
        versions.append(table_version(spark, loc.coverage))
        _hand_over(lease, released=False)

    lost = r"this batch job lost its lease: process 1 on another-host \(since .*\) took it over"
    with pytest.raises(LeaseLost, match=lost):
        run_batches(spark, CLICKSTREAM, loc, every=0.05, force=True, on_run=taken_over)
    assert versions == [table_version(spark, loc.coverage)], "the zombie stopped before its next commit"
    _hand_over(lease, released=True)  # the other instance stops

    done: list[Maintained] = []
    run_maintenance(spark, CLICKSTREAM, loc, tables=["coverage"], on_table=done.append)
    assert [(d.table, d.vacuumed) for d in done] == [("coverage", True)]
    assert lease.current() is None
    batch_lease(spark, loc).acquire().release()  # and the batch job may start again


@pytest.mark.integration
def test_batch_every_maintains_its_own_tables_once_the_interval_passed(spark, tmp_path: Path) -> None:
    overrides = ["maintenance.interval=1 second", "maintenance.compact_min_files=2"]
    settings = load_settings(None, overrides)
    loc = Locations.create(settings, tmp_path / "work")
    loc.ensure_local_dirs()
    ClickstreamGenerator(11, duplicate_fraction=0.0).write(loc.landing, 50, files=1)
    ingest_once(spark, settings, loc)
    maintained: list[Maintained] = []
    deadline = time.monotonic() + 300

    def each_run(coverage: Coverage, staged: object) -> None:
        assert time.monotonic() < deadline, f"coverage not compacted within 300 s: {maintained}"
        if any(m.table == "coverage" and m.compacted for m in maintained):
            raise Enough

    # --force: every run publishes, one more coverage file each; maintenance follows each run a second apart.
    with pytest.raises(Enough):
        run_batches(spark, CLICKSTREAM, loc, every=0.2, force=True, on_run=each_run, on_maintained=maintained.append)
    assert {m.table for m in maintained} == {"coverage", "batch.page_activity"}
    assert all(m.vacuumed for m in maintained)
    compacted = next(m for m in maintained if m.table == "coverage" and m.compacted)
    assert compacted.after.live_files == 1 < compacted.before.live_files
    assert not maintenance_due(spark, loc.coverage, 3600.0), "the log records when the batch job maintained"
    assert maintenance_due(spark, loc.coverage, 0.0)
    assert batch_lease(spark, loc).current() is None
