"""Exactly once through SIGKILLs: ingest (master + speed) killed at random points and restarted, on a real broker.

The control run switches idempotent commits off and kills right after a data commit: it must
show duplicates, which proves the main run's checks can see them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.crash_check import crash_run

pytestmark = [pytest.mark.integration, pytest.mark.crash]

# One process takes every kill now (ingest writes master and speed), one after the other: 12 of them
# is more ingest kills than the 10 of the two-process era, at a few minutes of CI.
KILLS = int(os.environ.get("LAMBDA_PIPELINE_CRASH_KILLS", "12"))


def test_sigkill_crashes_lose_and_duplicate_nothing(spark, kafka_broker, kafka_topic, tmp_path: Path) -> None:
    run = crash_run(spark, kafka_broker.bootstrap_servers, kafka_topic, tmp_path / "work", KILLS)
    summary = run.summary()
    print(f"crash run: {summary}")
    assert run.report.total >= KILLS, summary
    assert run.report.kills["ingest"] >= KILLS, summary
    assert not run.report.early_exits, summary
    assert run.report.on_commit_kills > 0, summary
    assert run.produced == sum(s.messages for s in run.sent), summary
    assert run.master + run.quarantine == run.produced, summary
    assert run.distinct_ids == run.master, f"an event is in master twice: {summary}"
    assert run.duplicate_reason == sum(s.duplicates for s in run.sent), summary
    assert run.missing_ids == 0 and run.unexpected_ids == 0, summary
    assert not run.view_mismatches, summary
    assert run.exact


def test_control_without_idempotent_commits_shows_duplicates(spark, kafka_broker, kafka_topic, tmp_path) -> None:
    """Same harness, idempotent commits off, every kill right after a data commit: rows must repeat."""
    run = crash_run(
        spark,
        kafka_broker.bootstrap_servers,
        kafka_topic,
        tmp_path / "work",
        3,
        "idempotent_writes=false",
        on_commit=1.0,
        only="ingest",
    )
    summary = run.summary()
    print(f"control run: {summary}")
    assert run.report.on_commit_kills > 0, summary
    assert not run.exact, f"the control run showed no duplicate: {summary}"
    assert run.master + run.quarantine > run.produced or run.distinct_ids < run.master or run.view_mismatches
