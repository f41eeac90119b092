"""UTC everywhere: a driver in another time zone writes the same instants and picks the same commits.

The law is checked on real jobs: batches published by drivers in Tokyo and Los Angeles, then ``audit``,
``query --as-of`` and ``batch --rollback`` run by drivers in other zones, each a subprocess with its own
``TZ``, against what this (UTC) process computes. The helper's rules are checked in process, with ``TZ``
changed for a moment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lambda_pipeline.core.clock import as_utc, epoch_ms, iso_utc, looks_like_time, parse_utc, utc_text
from lambda_pipeline.core.config import MaintenanceSettings
from lambda_pipeline.core.coverage import Coverage, coverage_history, latest_coverage
from lambda_pipeline.maintenance.audit import audit
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.serving_layer.catalog import ServingLayer
from tests.helpers import ingest_once

ROOT = Path(__file__).resolve().parents[1]
LOS_ANGELES, TOKYO = "America/Los_Angeles", "Asia/Tokyo"


@pytest.fixture()
def zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """``zone(name)`` sets this process's local time zone; the machine's comes back after the test."""

    def set_zone(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


def test_a_naive_time_is_local_and_an_aware_one_keeps_its_instant(zone) -> None:
    zone(LOS_ANGELES)
    assert as_utc(datetime(2026, 12, 7, 4, 0)) == datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
    instant = datetime(2026, 12, 7, 21, 0, tzinfo=timezone(timedelta(hours=9)))
    assert as_utc(instant) == datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
    assert epoch_ms(datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=1234)) == 1234
    assert iso_utc(instant) == "2026-12-07T12:00:00.000Z" and utc_text(instant) == "2026-12-07 12:00:00Z"


def test_a_time_typed_without_an_offset_is_utc_on_any_machine(zone) -> None:
    zone(TOKYO)
    assert parse_utc("2026-12-06T07:41:00") == datetime(2026, 12, 6, 7, 41, tzinfo=timezone.utc)
    assert parse_utc("2026-12-06 07:41:00.5Z") == datetime(2026, 12, 6, 7, 41, 0, 500000, tzinfo=timezone.utc)
    assert parse_utc("2026-12-06T16:41+09:00") == datetime(2026, 12, 6, 7, 41, tzinfo=timezone.utc)
    assert parse_utc("2026-12-06") == datetime(2026, 12, 6, tzinfo=timezone.utc)
    assert not looks_like_time("3f2a9c1e") and not looks_like_time("20261206")
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        parse_utc("yesterday")


def test_a_mark_written_in_one_zone_is_the_same_instant_in_another(zone) -> None:
    zone(LOS_ANGELES)
    written = Coverage("run", 3, {"v": 2}, 10, datetime.now())  # naive: the writer's local time
    mark = written.mark()
    zone(TOKYO)
    read = Coverage.from_mark(mark)
    assert read == written and read is not None
    assert read.published_at.utcoffset() == timedelta(0)
    assert abs(read.published_at - datetime.now(timezone.utc)) < timedelta(minutes=5)
    # Just published, seen from another zone: not older than the shortest retention.
    assert not MaintenanceSettings(retention="1 hour").outlived(read.published_at)


def test_a_mark_written_before_times_had_an_offset_is_read_as_local_time(zone) -> None:
    old = Coverage("run", 3, {"v": 2}, 10, datetime(2026, 1, 1, tzinfo=timezone.utc)).mark()
    old = old.replace("2026-01-01T00:00:00+00:00", "2026-01-01T09:30:00")  # as datetime.now().isoformat() was
    zone(TOKYO)
    read = Coverage.from_mark(old)
    assert read is not None and read.published_at == datetime(2026, 1, 1, 0, 30, tzinfo=timezone.utc)


# ---- real jobs in other time zones ------------------------------------------------------------------------


def _cli(zone_name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``lambda-pipeline ARGS`` run by a driver whose local time zone is ``zone_name``."""
    return subprocess.run(
        [sys.executable, "-m", "lambda_pipeline.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TZ": zone_name},
        check=False,
    )


def _ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _commits(spark, path: str) -> dict[int, tuple[int, Coverage | None]]:
    """Per coverage-table version: Delta's commit time (epoch ms) and the publication its mark records."""
    rows = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").select(
        "version", F.unix_millis("timestamp").alias("ms"), "userMetadata"
    )
    return {int(r.version): (int(r.ms), Coverage.from_mark(r.userMetadata or "")) for r in rows.collect()}


def _assert_published_at_is_the_commit_instant(spark, path: str) -> None:
    """Every publication's time, in its mark and in its row, is the true instant of its commit."""
    table = {r.run_id: epoch_ms(r.published_at) for r in spark.read.format("delta").load(path).collect()}
    marked = [(ms, c) for ms, c in _commits(spark, path).values() if c is not None]
    assert marked and set(table) == {c.run_id for _, c in marked}
    for committed, coverage in marked:
        for published in (epoch_ms(coverage.published_at), table[coverage.run_id]):
            # published_at is taken just before the commit; a zone error would be hours off.
            assert -2_000 <= committed - published <= 60_000, (coverage.run_id, committed, published)


@pytest.mark.integration
def test_drivers_in_other_time_zones_pick_the_same_commits(spark, settings, locations) -> None:
    workdir = ["--workdir", locations.workdir]
    generator = ClickstreamGenerator(25, duplicate_fraction=0.0)
    generator.write(locations.landing, 120, files=1)
    ingest_once(spark, settings, locations)
    _ok(_cli(TOKYO, "batch", *workdir))
    generator.write(locations.landing, 80, files=1)
    ingest_once(spark, settings, locations)  # purges the tags the first publication covers
    _ok(_cli(LOS_ANGELES, "batch", *workdir))
    generator.write(locations.landing, 40, files=1)
    ingest_once(spark, settings, locations)  # purges the tags the second publication covers

    first, second = coverage_history(spark, locations.coverage)
    _assert_published_at_is_the_commit_instant(spark, locations.coverage)

    # audit: each publication's speed table before the purge, found the same way by a driver in Tokyo.
    here = [one.as_dict() for one in audit(spark, CLICKSTREAM, locations, last=2)]
    there = _ok(_cli(TOKYO, "audit", "--last", "2", "--format", "json", *workdir))
    assert [json.loads(line) for line in there.stdout.splitlines()] == here
    assert [one["publication"] for one in here] == [first.run_id, second.run_id]
    assert all(one["note"] == "" for one in here), here  # speed held every tag when the batch took it over

    # --as-of a UTC time (no offset) between the two publications: the first, from Los Angeles as from here.
    commits = _commits(spark, locations.coverage)
    (first_version,) = [v for v, (_, c) in commits.items() if c is not None and c.run_id == first.run_id]
    (second_ms,) = [ms for ms, c in commits.values() if c is not None and c.run_id == second.run_id]
    between = datetime.fromtimestamp((commits[first_version][0] + second_ms) / 2000, timezone.utc)
    as_of = between.replace(tzinfo=None).isoformat(timespec="milliseconds")
    sql = "SELECT coalesce(sum(events), 0) AS n FROM serving.page_activity"
    pin_here = ServingLayer(spark, CLICKSTREAM, locations).answer(sql, as_of=as_of).pin.as_dict()
    assert pin_here["publication"] == first.run_id and pin_here["coverage_table_version"] == first_version
    there = _ok(_cli(LOS_ANGELES, "query", sql, "--as-of", as_of, "--provenance", "--local", *workdir))
    (printed,) = [json.loads(line)["pin"] for line in there.stderr.splitlines() if line.startswith('{"pin"')]
    assert printed == pin_here

    # rollback from Tokyo, with the shortest retention: the second publication (made in Los Angeles) is
    # seconds old, not hours, so it is not refused; the row it writes holds the true instant.
    there = _ok(_cli(TOKYO, "batch", "--rollback", "--set", "maintenance.retention=1 hour", *workdir))
    assert f"serves again {first.run_id[:8]}" in there.stdout
    restored = latest_coverage(spark, locations.coverage)
    assert restored.restores == first.run_id and restored.published_at > second.published_at
    _assert_published_at_is_the_commit_instant(spark, locations.coverage)
