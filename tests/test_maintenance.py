"""Maintenance beside running jobs: compaction and vacuum fail no commit, and serving stays exact."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from lambda_pipeline.batch_layer.job import run_batch
from lambda_pipeline.cli.main import main
from lambda_pipeline.core.compact_vacuum import maintain, table_files
from lambda_pipeline.core.config import MaintenanceSettings
from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.errors import ConfigError
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.local_services.s3_server import S3Request
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.serving_layer.catalog import ServingLayer
from tests.helpers import LayersAtWork, events_at, ingest_once

SUM = "SELECT coalesce(sum(events), 0) AS n FROM serving.page_activity"


def test_a_retention_shorter_than_an_hour_or_than_a_query_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 1 hour"):
        MaintenanceSettings(retention="30 minutes")
    with pytest.raises(ConfigError, match=r"longer than serve\.query_timeout \(3 hours\): a running query") as error:
        load_settings(None, ["maintenance.retention=2 hours", "serve.query_timeout=3 hours"])
    assert "got {" not in str(error.value)


@pytest.mark.integration
def test_maintenance_beside_ingest_and_batch_fails_no_commit_and_keeps_serving_exact(spark, tmp_path, capsys) -> None:
    # Ingest maintains master and quarantine itself, here after every micro-batch at least a second apart.
    overrides = [
        "ingest.trigger=200 milliseconds",
        "maintenance.compact_min_files=3",
        "maintenance.interval=1 second",
        "maintenance.ingest_compact_every=1 second",
    ]
    settings = load_settings(None, overrides)
    locations = Locations.create(settings, tmp_path / "work")
    locations.ensure_local_dirs()
    generator = ClickstreamGenerator(23, duplicate_fraction=0.0)
    for _ in range(4):  # small commits: four files in master and in quarantine
        generator.write(locations.landing, 60, files=1)
        ingest_once(spark, settings, locations)
    run_batch(spark, CLICKSTREAM, locations)
    serving = ServingLayer(spark, CLICKSTREAM, locations)
    probes: list[tuple[dict, int]] = []
    layers = LayersAtWork(spark, settings, locations, generator, events=40)
    deadline = time.monotonic() + 600
    try:
        rounds = 0
        while (not layers.done.is_set() or rounds < 2) and time.monotonic() < deadline and rounds < 6:
            reports = maintain(spark, CLICKSTREAM, locations)
            assert {r.table for r in reports} == {"coverage", "batch.page_activity", "speed.page_activity"}
            answer = serving.answer(SUM)
            probes.append((answer.pin.as_dict(), answer.frame.first().n))
            rounds += 1
    finally:
        layers.join(timeout=max(1.0, deadline - time.monotonic()))
    for pin, n in probes:  # each answer is what its pin holds: no event lost or counted twice
        assert n == events_at(spark, locations, "page_activity", pin), pin

    # Compacted by ingest itself: master holds fewer files than the commits that wrote it.
    after = table_files(spark, locations.master)
    from delta.tables import DeltaTable

    history = DeltaTable.forPath(spark, locations.master).history().collect()
    writes = sum(1 for r in history if r.operation == "WRITE")
    assert after is not None and writes >= 8 and after.live_files < writes / 2, (after, writes)
    operations = {r.operation for r in history}
    assert "OPTIMIZE" in operations and not {"VACUUM START", "VACUUM END"} & operations, operations
    out = capsys.readouterr().out
    assert "ingest (beside micro-batch" in out and "vacuumed" in out, "ingest vacuums beside its micro-batches"
    beside = [line for line in out.splitlines() if line.startswith("ingest (beside micro-batch")]
    assert any("maintain speed.page_activity" in line and "vacuumed" in line for line in beside), beside
    # At rest, serving equals the whole master dataset.
    run_batch(spark, CLICKSTREAM, locations)
    total = spark.read.format("delta").load(locations.master).count()
    assert serving.query(SUM).first().n == total

    # Committed landing files were archived by ingest (the newest micro-batch's wait for the next one).
    archived = list((tmp_path / "work" / "landing-archive").rglob("*.jsonl"))
    assert len(archived) >= 6 and len(list((tmp_path / "work" / "landing").glob("*.jsonl"))) <= 2

    # The command line: one table, by name (master only while ingest is stopped); an unknown name says which exist.
    assert main(["maintain", "--table", "master", "--table", "coverage", "--workdir", locations.workdir]) == 0
    assert main(["maintain", "--table", "nope", "--workdir", locations.workdir]) == 1


@pytest.mark.integration
@pytest.mark.parametrize(
    ("target_mb", "big_stays"),
    [
        (1, True),  # the big file is over the target
        (6, True),  # under the target, over a quarter of it (1.5 MB): what an earlier run or a backlog wrote
        (1024, False),  # under a quarter of the target: a small file, packed with the others
    ],
)
def test_compaction_leaves_files_of_the_target_size_alone_and_packs_the_small_ones(
    spark, tmp_path, target_mb, big_stays
) -> None:
    """Each run rewrites what came since, not the whole table (Delta's default rewrites every file under 1 GB)."""
    from pathlib import Path

    from pyspark.sql import functions as F

    overrides = [f"maintenance.compact_target_mb={target_mb}", "maintenance.compact_min_files=3"]
    locations = Locations.create(load_settings(None, overrides), tmp_path / "work")
    coverage = locations.coverage  # a table maintain compacts by default; any rows do for the file layout
    big = spark.range(60_000).select(F.sha2(F.col("id").cast("string"), 256).alias("text"))  # about 2.5 MB
    big.coalesce(1).write.format("delta").save(coverage)
    for i in range(6):
        small = spark.range(i * 10, i * 10 + 10).select(F.col("id").cast("string").alias("text"))
        small.write.format("delta").mode("append").save(coverage)

    def files() -> set[str]:
        return set(spark.read.format("delta").load(coverage).inputFiles())

    (big_file,) = [f for f in files() if Path(f.removeprefix("file:")).stat().st_size > 1 << 20]
    (done,) = maintain(spark, CLICKSTREAM, locations, only=["coverage"])
    assert done.compacted and done.after.live_files == (2 if big_stays else 1), done.describe()
    assert (big_file in files()) == big_stays, "only a file under a quarter of the target is rewritten"
    assert spark.read.format("delta").load(coverage).count() == 60_060


@pytest.mark.integration
def test_the_vacuum_of_master_commits_nothing_and_deletes_what_expired(spark, tmp_path) -> None:
    """Ingest vacuums master beside its micro-batches, which predict master's versions: no commit may slip in."""
    from lambda_pipeline.core.compact_vacuum import _without_vacuum_log
    from lambda_pipeline.core.tables import table_version

    settings = load_settings(None, ["maintenance.compact_min_files=3"])
    locations = Locations.create(settings, tmp_path / "work")
    locations.ensure_local_dirs()
    generator = ClickstreamGenerator(5)
    for _ in range(3):
        generator.write(locations.landing, 30, files=1)
        ingest_once(spark, settings, locations)
    (compacted,) = maintain(spark, CLICKSTREAM, locations, only=["master"], vacuum=False)
    assert compacted.compacted and compacted.after.live_files == 1, compacted.describe()
    version = table_version(spark, locations.master)

    (vacuumed,) = maintain(spark, CLICKSTREAM, locations, only=["master"], compact=False)
    assert vacuumed.vacuumed and not vacuumed.compacted, vacuumed.describe()
    assert table_version(spark, locations.master) == version, "no VACUUM START / END commit"
    # What the compaction removed is deleted once past the retention (here none), still without a commit.
    from delta.tables import DeltaTable

    DeltaTable.forPath(_without_vacuum_log(spark), locations.master).vacuum(0.0)
    after = table_files(spark, locations.master)
    # The compaction's report lists no disk (it runs in ingest's micro-batch); the vacuum's does.
    assert after is not None and after.disk_files == 1 < (vacuumed.after.disk_files or 0), (after, vacuumed.after)
    assert table_version(spark, locations.master) == version
    # Other tables keep their log entries.
    run_batch(spark, CLICKSTREAM, locations)
    before = table_version(spark, locations.coverage)
    assert [r.table for r in maintain(spark, CLICKSTREAM, locations, only=["coverage"])] == ["coverage"]
    assert table_version(spark, locations.coverage) == before + 2


def _recursive_listings(requests: list[S3Request], table_key: str) -> list[S3Request]:
    """The LIST requests under ``table_key`` without a delimiter: S3A's recursive listings."""
    under = [r for r in requests if r.kind == "LIST" and r.listed_prefix.startswith(table_key)]
    return [r for r in under if "delimiter" not in r.query]


@pytest.mark.integration
def test_ingest_compaction_on_s3_reads_the_snapshot_and_lists_no_table(spark, s3_server, s3_bucket) -> None:
    from lambda_pipeline.ingestion.upkeep import MasterUpkeep

    overrides = ["maintenance.compact_min_files=3", "maintenance.ingest_compact_every=1 hour"]
    settings = load_settings(None, [*overrides, "ingest.max_files_per_trigger=1"])
    locations = Locations.create(settings, f"s3a://{s3_bucket}/work")
    generator = ClickstreamGenerator(29, duplicate_fraction=0.0)
    generator.write(locations.landing, 120, files=3, spark=spark)
    ingest_once(spark, settings, locations)  # three micro-batches: three files in master, enough to compact
    master_key = locations.master.split(f"s3a://{s3_bucket}/", 1)[1]
    before = table_files(spark, locations.master, disk=False)
    assert before is not None and before.live_files >= 3 and before.disk_files is None

    log = s3_server.requests()
    mark = log.mark()
    upkeep = MasterUpkeep(spark, CLICKSTREAM, locations, compact_every=0.0)  # due at once, as in a micro-batch
    from lambda_pipeline.core.streaming import PhaseTimer

    upkeep.after_batch(0, PhaseTimer("ingest", 0))
    during = log.since(mark)
    after = table_files(spark, locations.master, disk=False)
    assert after is not None and after.live_files == 1, after  # it did compact
    assert any(r.kind == "PUT" and r.key.startswith(master_key) for r in during)
    assert not _recursive_listings(during, master_key), _recursive_listings(during, master_key)

    # The detector works: the maintain verb's report (with a vacuum) lists the table's files recursively.
    mark = log.mark()
    (report,) = maintain(spark, CLICKSTREAM, locations, only=["master"], compact=False)
    assert report.after.disk_files is not None and report.after.disk_files >= 4
    assert _recursive_listings(log.since(mark), master_key)


def test_master_quarantine_and_speed_tables_get_the_log_properties_new_or_not(spark, tmp_path) -> None:
    from lambda_pipeline.core.tables import QUARANTINE_SCHEMA, ensure_table, table_property
    from lambda_pipeline.ingestion.master import setup_master_tables
    from lambda_pipeline.speed_layer.catch_up import setup_speed_tables

    settings = load_settings(None, ["maintenance.retention=2 hours", "maintenance.log_checkpoint_interval=20"])
    expected = {
        "delta.logRetentionDuration": "interval 7200 seconds",
        "delta.deletedFileRetentionDuration": "interval 7200 seconds",
        "delta.checkpointInterval": "20",
        "delta.enableExpiredLogCleanup": "true",
    }
    assert settings.maintenance.log_properties() == expected
    fresh = Locations.create(settings, tmp_path / "fresh")
    old = Locations.create(settings, tmp_path / "old")
    # Tables an older release made, without the properties.
    ensure_table(spark, old.master, CLICKSTREAM.source.master_schema)
    ensure_table(spark, old.quarantine, QUARANTINE_SCHEMA)
    view = CLICKSTREAM.views[0]
    ensure_table(spark, old.speed_partials(view.name), view.partial_schema(by_tag=True), ("ingest_tag",))
    for locations in (fresh, old):
        setup_master_tables(spark, CLICKSTREAM, locations)
        setup_speed_tables(spark, CLICKSTREAM, locations)
        for path in (locations.master, locations.quarantine, locations.speed_partials(view.name)):
            got = {key: table_property(spark, path, key) for key in expected}
            assert got == expected, (path, got)
    from lambda_pipeline.core.tables import table_version

    settled = table_version(spark, old.master)
    setup_master_tables(spark, CLICKSTREAM, old)  # a restart: nothing left to set, no commit
    assert table_version(spark, old.master) == settled
    with pytest.raises(ConfigError, match="log_checkpoint_interval"):
        load_settings(None, ["maintenance.log_checkpoint_interval=0"])
