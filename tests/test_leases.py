"""Leases on local disk and on S3 (the local S3 server): renewal, takeover, races and a holder that fails.

Every test runs on both file systems. A second host is simulated with ``lease.host_id``: every process here
runs on one machine, so without it the path of a holder on another host would never run. The lease times
are a few seconds, not the 60 s default, to keep the suite short.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from lambda_pipeline.core import deltalog
from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.leases import Lease, LeaseHeld
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.tables import table_version
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.pipelines.ingest import start_ingest
from tests.fault_proxy import FaultProxy

pytestmark = pytest.mark.integration

RECORD = re.compile(r"^\d{12}\.json$")
ENV_PROVIDER = "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider"


@dataclass
class Place:
    """A work directory on one file system, and how a job in another process reaches it."""

    kind: str
    workdir: str
    job_settings: list[str] = field(default_factory=list)
    job_env: dict[str, str] = field(default_factory=dict)
    list_leases: Callable[[], list[str]] = list
    """Names under ``warehouse/_leases/ingest/`` as the file system itself lists them (not through the lease)."""
    fail_leases: Callable[[], None] = lambda: None
    """From now on every request of the job in another process to its lease records fails."""

    def locations(self, *overrides: str) -> Locations:
        settings = load_settings(None, [*self.job_settings, *overrides])
        return Locations.create(settings, self.workdir)

    def ingest(self, log: Path, *overrides: str) -> subprocess.Popen[bytes]:
        """``lambda-pipeline ingest`` in its own process, as a user starts it."""
        sets = [arg for o in [*self.job_settings, *overrides] for arg in ("--set", o)]
        command = [sys.executable, "-m", "lambda_pipeline.cli", "ingest", "--workdir", self.workdir, *sets]
        with log.open("wb") as out:
            return subprocess.Popen(command, env={**os.environ, **self.job_env}, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture(params=["local", "s3"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    fast = ["ingest.trigger='300 milliseconds'"]
    if request.param == "local":
        workdir = tmp_path / "work"
        leases = workdir / "warehouse" / "_leases" / "ingest"

        def block_local() -> None:
            shutil.move(leases, leases.with_name("ingest.moved"))
            leases.write_text("a file where the lease's folder was: every lease request fails\n")

        yield Place("local", str(workdir), fast, {}, lambda: sorted(os.listdir(leases)), block_local)
        return
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    proxy = FaultProxy(server.endpoint).start()
    prefix = "work/warehouse/_leases/ingest/"

    def block_s3() -> None:
        proxy.refuse = lambda method, target: "/_leases/" in target

    s3 = [f"s3.endpoint={proxy.endpoint}", "s3.path_style_access=true", f"s3.credentials_provider={ENV_PROVIDER}"]
    env = {"AWS_ACCESS_KEY_ID": "local-moto", "AWS_SECRET_ACCESS_KEY": "local-moto"}
    try:
        yield Place(
            "s3",
            f"s3a://{bucket}/work",
            [*fast, *s3],
            env,
            lambda: sorted(k.removeprefix(prefix) for k in server.list_keys(bucket, prefix)),
            block_s3,
        )
    finally:
        proxy.stop()


def _wait(condition: Callable[[], object], what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.1)  # polling a condition, bounded by the deadline


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        process.send_signal(sig)
    process.wait(timeout=120)  # reaped: a zombie still counts as a running process


def _holder_runs(spark, loc: Locations, process: subprocess.Popen[bytes], log: Path) -> None:
    """The job in ``process`` holds the ingest lease and committed a micro-batch to master."""
    lease = Lease(spark, loc, "ingest", loc.master)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the job exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        holder = lease.current()
        return holder is not None and holder.pid == process.pid and (table_version(spark, loc.master) or 0) >= 1

    _wait(ready, "the job in the other process holds the lease and commits")


def _killed_holder(spark, place: Place, loc: Locations, log: Path, *overrides: str) -> subprocess.Popen[bytes]:
    """An ``ingest`` in its own process that took the lease and committed, then was SIGKILLed (and reaped)."""
    holder = place.ingest(log, *overrides)
    try:
        _holder_runs(spark, loc, holder, log)
    finally:
        _stop(holder)
    return holder


def _only_records(place: Place) -> None:
    names = place.list_leases()
    assert names and all(RECORD.match(n) for n in names), f"not only lease records: {names}"
    assert len(names) <= 3, f"old records are not cleaned up: {names}"


def test_renewals_keep_the_record_fresh_and_a_second_host_is_refused(spark, place: Place) -> None:
    ttl = 6.0
    loc = place.locations()
    lease = Lease(spark, loc, "ingest", loc.master, ttl=ttl).acquire()
    try:
        seen: list[tuple[float, int]] = []
        deadline = time.monotonic() + 3 * ttl
        for _ in range(500):  # bounded in count and time: three lease times of watching
            newest = lease.newest()
            assert newest is not None and newest[1] is not None and newest[1].token == lease.holder.token
            if not seen or seen[-1][1] != newest[0]:
                seen.append((time.monotonic(), newest[0]))
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)  # sampling the record, bounded by the loop
        gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(seen)]
        assert len(seen) >= 9, f"renewed {len(seen) - 1} times in {3 * ttl:.0f}s (every {ttl / 4:g}s expected)"
        assert max(gaps) < ttl / 2, f"a renewal came {max(gaps):.2f}s after the one before"
        _only_records(place)
        # Another host sees the record change within the lease time, so its start is refused, not a takeover.
        started = time.monotonic()
        with pytest.raises(LeaseHeld, match=r"renewed its lease while this start watched it"):
            Lease(spark, loc, "ingest", loc.master, ttl=ttl, host="another-host").acquire()
        assert time.monotonic() - started < ttl
        lease.check()
    finally:
        lease.release()
    assert lease.current() is None
    _only_records(place)


def test_two_acquires_at_the_same_moment_exactly_one_wins(spark, place: Place) -> None:
    loc = place.locations()
    for round_ in range(4):
        contenders = [Lease(spark, loc, "ingest", loc.master, ttl=3.0, host=f"host-{n}") for n in "ab"]
        barrier = threading.Barrier(len(contenders))
        outcomes: dict[str, str] = {}

        def take(lease: Lease, barrier: threading.Barrier, outcomes: dict[str, str]) -> None:
            barrier.wait(timeout=30)
            try:
                lease.acquire()
                outcomes[lease.host] = "won"
            except LeaseHeld as held:
                outcomes[lease.host] = f"refused: {held}"

        threads = [threading.Thread(target=take, args=(lease, barrier, outcomes)) for lease in contenders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        winners = [lease for lease in contenders if outcomes.get(lease.host) == "won"]
        assert len(winners) == 1, f"round {round_}: {outcomes}"
        assert winners[0].current() is not None and winners[0].current().token == winners[0].holder.token
        winners[0].release()
    _only_records(place)


def test_a_killed_ingest_starts_again_at_once_on_its_host(spark, place: Place, tmp_path: Path, capfd) -> None:
    """The reported failure on S3: a SIGKILLed ingest could not start again (its rename hit the old record)."""
    ttl = "12 seconds"  # long enough that a loaded machine never lapses the in-process restart's lease
    loc = place.locations(f"lease.ttl='{ttl}'")
    generator = ClickstreamGenerator(61)
    generator.write(loc.landing, 200, files=1, spark=spark)
    first = _killed_holder(spark, place, loc, tmp_path / "ingest.log", f"lease.ttl='{ttl}'")
    killed = Lease(spark, loc, "ingest", loc.master).current()
    assert killed is not None and killed.pid == first.pid  # the record still names the killed process
    generator.write(loc.landing, 100, files=1, spark=spark)
    capfd.readouterr()
    started = time.monotonic()
    start_ingest(spark, CLICKSTREAM, loc.settings, loc, once=True).awaitTermination()
    assert "watching it for" not in capfd.readouterr().err  # same host, process gone: taken over at once
    assert time.monotonic() - started < 120
    events = spark.read.format("delta").load(loc.master).count()
    assert events == 300
    after = Lease(spark, loc, "ingest", loc.master)
    _wait(lambda: after.current() is None, "the finished ingest releases its lease", 60)
    _only_records(place)


def test_a_killed_holder_on_another_host_is_taken_over_after_the_lease_time(
    spark, place: Place, tmp_path: Path
) -> None:
    ttl = 8.0
    loc = place.locations(f"lease.ttl='{ttl:g} seconds'")
    ClickstreamGenerator(62).write(loc.landing, 100, files=1, spark=spark)
    _killed_holder(spark, place, loc, tmp_path / "ingest.log", f"lease.ttl='{ttl:g} seconds'", "lease.host_id=host-a")
    taker = Lease(spark, loc, "ingest", loc.master)  # this host, not host-a: it watches the record first
    assert taker.ttl == ttl and taker.host != "host-a"
    started = time.monotonic()
    taker.acquire()
    try:
        waited = time.monotonic() - started
        assert ttl <= waited < ttl + 15, f"took {waited:.1f}s with a lease time of {ttl:g}s"
        properties = spark.sql(f"SHOW TBLPROPERTIES delta.`{loc.master}`").collect()
        fence = {r.key: r.value for r in properties}.get("lambda_pipeline.lease.ingest")
        assert fence == taker.holder.token  # the takeover fenced the old holder's commits in flight
    finally:
        taker.release()
    _only_records(place)


def _newest_record(records: list[str]) -> dict[str, object]:
    return max((json.loads(text) for text in records), key=lambda r: str(r["renewed"]))


def test_a_holder_whose_renewals_fail_stops_committing_and_exits_non_zero(spark, place: Place, tmp_path: Path) -> None:
    ttl = 8.0
    loc = place.locations(f"lease.ttl='{ttl:g} seconds'")
    generator = ClickstreamGenerator(63)
    generator.write(loc.landing, 100, files=1, spark=spark)
    log = tmp_path / "ingest.log"
    job = place.ingest(log, f"lease.ttl='{ttl:g} seconds'")
    try:
        _holder_runs(spark, loc, job, log)
        place.fail_leases()
        deadline = time.monotonic() + 120
        while job.poll() is None and time.monotonic() < deadline:  # events keep coming: it would commit them
            generator.write(loc.landing, 20, files=1, spark=spark)
            time.sleep(0.5)  # pacing the producer, bounded by the deadline
        assert job.poll() is not None, "the job still runs 120 s after its lease records became unreachable"
    finally:
        _stop(job)
    output = log.read_text()
    print(output[-2500:])  # shown with -s: what an operator sees
    assert job.returncode != 0
    assert "lease: renewing the ingest lease" in output and "failed" in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "this ingest job lost its lease" in errors[0], output[-3000:]
    assert "Traceback" not in output and "ERROR MicroBatchExecution" not in output, "a stack trace buries the line"
    # The holder's newest record, read past the fault (this test's own requests reach the records).
    if place.kind == "local":
        moved = Path(loc.warehouse) / "_leases" / "ingest.moved"
        records = [p.read_text() for p in moved.glob("*.json")]
    else:
        store = Lease(spark, loc, "ingest", loc.master).records
        records = [store.read(n) or "{}" for n in store.numbers()]
    last_renewal = datetime.fromisoformat(str(_newest_record(records)["renewed"])).timestamp()
    newest = table_version(spark, loc.master)
    assert newest is not None
    commits = [
        action["commitInfo"]["timestamp"] / 1000
        for _, actions in deltalog.commits(spark, loc.master, newest, scan=1000)
        for action in actions
        if "commitInfo" in action
    ]
    assert max(commits) < last_renewal + ttl, (
        f"a commit {max(commits) - last_renewal:.1f}s after the last renewal: another host could have taken "
        f"the lease over {ttl:g}s after it"
    )
