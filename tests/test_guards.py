"""Guards for runs of weeks: one live instance per job, a zombie commits nothing, a new checkpoint is refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict

import pytest

from lambda_pipeline.batch_layer.job import run_batch
from lambda_pipeline.cli.main import main
from lambda_pipeline.core.config import LeaseSettings
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.leases import Holder, Lease, LeaseHeld, LeaseLost
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.streaming import stop_between_batches
from lambda_pipeline.core.tables import table_version
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.pipelines.ingest import start_ingest
from lambda_pipeline.serving_layer.catalog import ServingLayer
from tests.helpers import ingest_once

pytestmark = pytest.mark.integration

SUM = "SELECT coalesce(sum(events), 0) AS n FROM serving.page_activity"


def _wait(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.05)  # polling a condition, bounded by the deadline


def test_a_second_ingest_or_catch_up_refuses_while_one_runs_and_starts_once_it_stopped(
    spark, settings, locations, capsys
) -> None:
    ClickstreamGenerator(3).write(locations.landing, 100, files=1)
    running = start_ingest(spark, CLICKSTREAM, settings, locations)
    try:
        _wait(lambda: table_version(spark, locations.master) is not None, "the first ingest creates master")
        with pytest.raises(
            LeaseHeld, match=rf"another ingest job runs over this work directory: process {os.getpid()}"
        ):
            start_ingest(spark, CLICKSTREAM, settings, locations, once=True)
        assert main(["speed", "--workdir", locations.workdir]) == 1  # the catch-up never runs beside ingest
        assert "another ingest job runs" in capsys.readouterr().err
    finally:
        stop_between_batches(running)
    lease = Lease(spark, locations, "ingest", locations.master)
    _wait(lambda: lease.current() is None, "the stopped ingest gives its lease up")
    ingest_once(spark, settings, locations)


def test_an_ingest_in_another_process_is_named_and_refused(spark, settings, locations) -> None:
    ClickstreamGenerator(4).write(locations.landing, 50, files=1)
    env = {**os.environ, "LAMBDA_PIPELINE_SET": "ingest.trigger='200 milliseconds'"}
    other = subprocess.Popen(
        [sys.executable, "-m", "lambda_pipeline.cli", "ingest", "--workdir", locations.workdir],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    lease = Lease(spark, locations, "ingest", locations.master)
    try:
        _wait(
            lambda: (h := lease.current()) is not None and h.pid == other.pid, "the other process takes the lease", 180
        )
        with pytest.raises(LeaseHeld, match=rf"process {other.pid} on "):
            start_ingest(spark, CLICKSTREAM, settings, locations, once=True)
    finally:
        other.send_signal(signal.SIGINT)  # stops between micro-batches, as on Ctrl-C
        try:
            other.wait(timeout=120)
        except subprocess.TimeoutExpired:
            other.kill()
            other.wait(timeout=60)
    ingest_once(spark, settings, locations)  # its process gone, the lease is free


def test_two_batch_runs_never_overlap(spark, settings, locations) -> None:
    ClickstreamGenerator(5).write(locations.landing, 3000, files=2)
    ingest_once(spark, settings, locations)
    lease = Lease(spark, locations, "batch", locations.coverage)
    failures: list[BaseException] = []

    def first() -> None:
        try:
            run_batch(spark, CLICKSTREAM, locations, force=True)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    worker = threading.Thread(target=first, daemon=True)
    worker.start()
    try:
        _wait(lambda: lease.current() is not None, "the first batch run takes the lease")
        with pytest.raises(LeaseHeld, match="another batch job runs over this work directory"):
            run_batch(spark, CLICKSTREAM, locations, force=True)
    finally:
        worker.join(timeout=300)
    assert not failures and not worker.is_alive()
    assert lease.current() is None  # released after publishing
    _, staged = run_batch(spark, CLICKSTREAM, locations, force=True)
    assert staged is not None


def test_an_instance_that_lost_its_lease_commits_nothing(spark, settings, locations, capsys) -> None:
    ClickstreamGenerator(6).write(locations.landing, 40, files=1)
    ingest_once(spark, settings, locations)
    locations = Locations(locations.workdir, settings.model_copy(update={"lease": LeaseSettings(ttl="6 seconds")}))
    lease = Lease(spark, locations, "batch", locations.coverage).acquire()
    try:
        lease.check()
        # A second instance on another host took the lease over: it created the record after this one's.
        elsewhere = Holder("another-host", 4242, "t0k3n", "2026-12-06T00:00:00+00:00", "2026-12-06T00:00:01+00:00")
        newest = lease.newest()
        assert newest is not None
        assert lease.records.create(newest[0] + 1, json.dumps(asdict(elsewhere)))
        with pytest.raises(LeaseLost, match="lost its lease: process 4242 on another-host"):
            lease.check()
    finally:
        lease.release()
    assert lease.current() == elsewhere, "a lost lease is not released over its new holder"
    # A batch started now watches the holder elsewhere for the lease time; it never renews, so it is taken over.
    capsys.readouterr()
    _, staged = run_batch(spark, CLICKSTREAM, locations)
    watched = "held by process 4242 on another-host (since 2026-12-06T00:00:00+00:00), not on this host"
    assert watched in capsys.readouterr().err
    assert staged is not None
    assert Lease(spark, locations, "batch", locations.coverage).current() is None


def test_a_deleted_ingest_checkpoint_is_refused_and_nothing_is_counted_twice(spark, settings, locations) -> None:
    generator = ClickstreamGenerator(7, duplicate_fraction=0.0)
    generator.write(locations.landing, 120, files=1)
    ingest_once(spark, settings, locations)
    serving = ServingLayer(spark, CLICKSTREAM, locations)
    before = serving.query(SUM).first().n
    master_version = table_version(spark, locations.master)
    shutil.rmtree(locations.checkpoint("ingest"))
    generator.write(locations.landing, 30, files=1)
    with pytest.raises(LambdaError, match=r"checkpoint .* is new, but master already holds micro-batches"):
        start_ingest(spark, CLICKSTREAM, settings, locations, once=True)
    assert table_version(spark, locations.master) == master_version
    assert serving.query(SUM).first().n == before
    assert Lease(spark, locations, "ingest", locations.master).current() is None  # a refused start holds nothing


def test_a_holder_renewing_never_loses_its_lease_to_its_own_renewal(spark, settings, locations) -> None:
    """A check, or another instance's read, while the holder renews still sees the holder.

    A renewal creates the next record, then notes it as its own: a check in between reads a record that is
    not the one the holder last noted, and must still know it for its own. A lease time of 1 s renews every
    250 ms, so checks fall across many renewals.
    """
    lease = Lease(spark, locations, "ingest", locations.master, ttl=1.0).acquire()
    other = Lease(spark, locations, "ingest", locations.master)  # what a second instance reads
    try:
        first = lease.newest()
        deadline = time.monotonic() + 2.5  # ten renewals
        for _ in range(100_000):  # bounded in count and time
            lease.check()
            held = other.current()
            assert held is not None and held.token == lease.holder.token
            if time.monotonic() > deadline:
                break
        last = lease.newest()
        assert first is not None and last is not None and last[0] - first[0] >= 4, "it hardly renewed meanwhile"
    finally:
        lease.release()
    assert other.current() is None
