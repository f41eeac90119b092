"""The whole life cycle on a Spark standalone cluster, every table, checkpoint, landing folder and lease on S3.

One test, small data, many applications (the issue's budget: one cluster, not one per point). Each job is a
``spark-submit --master spark://127.0.0.1:<port>`` of the built artifact, with a driver that can import the
project from the zip alone and executors the worker launches in their own JVMs. The S3 server is the local
one (moto, on 127.0.0.1), the broker a real Kafka on 127.0.0.1. The pipeline is a user's own (payments:
epoch-ms times, nested fields, a filter, a hopping window, an all-time view), and each answer is compared with
an independent pandas recompute of the lines produced, so "equal" also means no event lost and none counted
twice.

The phases:

1. file ingest from an S3 landing folder, answered by a query job;
2. Kafka ingest, ``batch --every`` and ``serve`` side by side, queried through the server; a second ingest
   is refused, and ``maintain`` is refused while the jobs that own the tables run (one writer per table);
3. a SIGKILL of the ingest driver, then a restart that takes its lease over at once (same host);
4. a zombie: an ingest driver frozen (SIGSTOP) while a driver of "another host" takes its lease over after
   one lease time; resumed, the zombie stops before its next commit, with a non-zero exit;
5. quiescent: ``maintain``, ``audit``, ``rollback``, then ``refresh`` of a changed view, each its own
   application; the answer equals the recompute after each.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.local_services.process import free_port
from lambda_pipeline.local_services.spark_cluster import LocalCluster
from tests.cluster_support import Submitted, cluster_submit, stop_group
from tests.user_pipeline import (
    KEYS,
    QUERIES,
    assert_view_equals,
    evolved_module,
    expected_views,
    payment_lines,
    write_module,
)

pytestmark = pytest.mark.integration

_LOGS = itertools.count(1)
LEASE_TTL = 20  # seconds: the zombie phase waits one lease time; renewals every ttl/4 must get through a loaded machine


def _keyed(rows: list[dict[str, Any]], view: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    out = {}
    for row in rows:
        values = dict(row)
        out[tuple(values.pop(k) for k in KEYS[view])] = values
    return out


def _wait(what: str, check: Callable[[], bool], timeout: float, *, jobs: tuple[Submitted, ...] = ()) -> None:
    """Poll ``check`` until true, at most ``timeout`` seconds; fail with the jobs' output if one died."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        for job in jobs:
            if job.process.poll() is not None:
                pytest.fail(f"{what}: a job exited ({job.process.returncode}):\n{job.output()[-4000:]}")
        try:
            if check():
                return
        except (AssertionError, OSError, ValueError, LambdaError) as error:  # not there yet: the server answers later
            last = error
        time.sleep(1.0)
    pytest.fail(f"{what}: not within {timeout:.0f}s; last: {last}")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lambda_pipeline.deploy.artifact import build_artifact

    out = tmp_path_factory.mktemp("dist")
    build_artifact(out)
    return out


@pytest.fixture(scope="module")
def jars(dist: Path) -> tuple[list[str], list[str]]:
    """(``--jars``, the nodes' class path): the artifact's own jars travel with each application, as the EMR
    steps pass them (nothing is resolved); the S3 file system's (hadoop-aws and its 690 MB AWS SDK) are
    installed on the node, as EMRFS is on EMR, so that the worker does not copy them into every application."""
    from lambda_pipeline.deploy.artifact import MANIFEST, jar_groups

    groups = json.loads((dist / MANIFEST).read_text())["jars"]
    shipped = [str(dist / jar) for group in ("delta", "kafka") for jar in groups[group]]
    return shipped, [str(jar) for jar in jar_groups(hadoop_aws=True)["hadoop_aws"]]


class Deployment:
    """The jobs of one work directory on the cluster: a config file, a log per application."""

    def __init__(self, cluster, dist, python, jars, folder: Path, config: Path) -> None:
        self.cluster, self.dist, self.python, self.jars, self.folder, self.config = (
            cluster,
            dist,
            python,
            jars,
            folder,
            config,
        )

    def start(self, job: str, *args: str, pipeline: Path | None = None) -> Submitted:
        log = self.folder / f"{next(_LOGS):02d}-{job}.log"
        extra = ["--pipeline", f"{pipeline}:PIPELINE"] if pipeline is not None else []
        jars, node = self.jars
        return cluster_submit(
            self.cluster,
            self.dist,
            self.python,
            jars,
            job,
            *args,
            "--config",
            str(self.config),
            *extra,
            cwd=self.folder,
            log=log,
            executor_class_path=node,
        )

    def run(self, job: str, *args: str, pipeline: Path | None = None, expect: int = 0, timeout: float = 400) -> str:
        submitted = self.start(job, *args, pipeline=pipeline)
        code = submitted.wait(timeout)
        output = submitted.output()
        assert code == expect, f"{job} {' '.join(args)}: exit {code}, expected {expect}:\n{output[-4000:]}"
        return output


def _config(folder: Path, workdir: str, module: Path, s3, cluster: LocalCluster, **ingest: Any) -> Path:
    """A config file as a user writes one: every location on S3, the cluster as ``spark.master``."""
    import yaml

    config = {
        "workdir": workdir,
        "pipeline": f"{module}:PIPELINE",
        "ingest": {"trigger": "1 second", **ingest},
        "batch": {"interval": "20 seconds"},
        # The jobs' own maintenance would run beside the first micro-batches; `maintain` is run on purpose below.
        "maintenance": {"interval": "1 hour"},
        "lease": {"ttl": f"{LEASE_TTL} seconds"},
        "s3": {
            "endpoint": s3.endpoint,
            "path_style_access": True,
            "credentials_provider": "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider",
        },
        "spark": {"master": cluster.master_url, "shuffle_partitions": 2, "log_level": "WARN"},
    }
    path = folder / f"config-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _json_lines(output: str) -> list[dict[str, Any]]:
    """The rows ``query --format json`` printed (one object per line), among the driver's other output."""
    return [json.loads(line) for line in output.splitlines() if line.startswith("{") and line.endswith("}")]


@pytest.fixture()
def bucket(s3_server) -> Iterator[str]:
    name = f"lambda-cluster-{uuid.uuid4().hex[:10]}"
    s3_server.create_bucket(name)
    yield name


def test_the_whole_life_cycle_on_a_cluster_with_every_table_on_s3(
    spark_cluster, s3_server, kafka_broker, kafka_topic, dist, isolated_python, jars, bucket, tmp_path: Path
) -> None:
    import boto3

    from lambda_pipeline.cli.kafka_producer import KafkaEventProducer
    from lambda_pipeline.core.config_loader import load_settings
    from lambda_pipeline.serving_layer.client import Client

    module = write_module(tmp_path / "project")
    now_ms = int(time.time() * 1000)
    waves = [
        payment_lines(n, seed=seed, now_ms=now_ms, first_id=10_000 * seed) for seed, n in ((1, 300), (2, 120), (3, 80))
    ]

    # -- 1. file ingest: landing folder, tables, checkpoint and lease on S3; the speed layer answers ----------
    files = Deployment(spark_cluster, dist, isolated_python, jars, tmp_path, tmp_path / "unused")
    files.config = _config(tmp_path, f"s3a://{bucket}/files", module, s3_server, spark_cluster)
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id="local",
        aws_secret_access_key="local",
        region_name="us-east-1",
    )
    body = ("\n".join(waves[0].lines) + "\n").encode()
    s3.put_object(Bucket=bucket, Key="files/landing/first.jsonl", Body=body)  # whole, as `aws s3 cp` uploads
    files.run("ingest", "--once")
    got = _json_lines(files.run("query", QUERIES["everything"].format(layer="serving"), "--format", "json"))
    assert _keyed(got, "everything") == {(): expected_views(waves[0].events)["everything"][()]}

    # -- 2. Kafka ingest, batch --every and serve, side by side -------------------------------------------------
    topic = kafka_topic
    settings = load_settings(
        None, [f"ingest.kafka.bootstrap_servers={kafka_broker.bootstrap_servers}", f"ingest.kafka.topic={topic}"]
    )
    producer = KafkaEventProducer(settings.ingest.kafka)
    port = free_port()
    kafka = Deployment(spark_cluster, dist, isolated_python, jars, tmp_path, tmp_path / "unused")
    kafka.config = _config(
        tmp_path,
        f"s3a://{bucket}/kafka",
        module,
        s3_server,
        spark_cluster,
        source="kafka",
        kafka={"bootstrap_servers": kafka_broker.bootstrap_servers, "topic": topic, "starting_offsets": "earliest"},
    )
    produced: list[dict[str, Any]] = []

    def produce(wave) -> None:
        producer.send(line.encode() for line in wave.lines)
        producer.flush()
        produced.extend(wave.events)

    client = Client(f"http://127.0.0.1:{port}", timeout=60)

    def serves_everything_produced() -> bool:
        want = expected_views(produced)
        for view, sql in QUERIES.items():
            rows = client.query(sql.format(layer="serving")).table.to_pylist()
            assert_view_equals(f"serving.{view}", _keyed(rows, view), want[view])
        return True

    produce(waves[0])
    ingest = kafka.start("ingest")
    batch = kafka.start("batch", "--every", "20s")
    serve = kafka.start("serve", "--port", str(port))
    running = [ingest, batch, serve]
    try:
        _wait("the server answers the first wave", serves_everything_produced, 600, jobs=(ingest, batch, serve))

        second = kafka.run("ingest", expect=1, timeout=300)  # beside the running one
        assert "another ingest job runs over this work directory" in second, second[-2000:]
        assert "Traceback" not in second
        refused = kafka.run("maintain", expect=1, timeout=300)  # the batch and ingest jobs own the tables
        assert "only one application may write a table" in refused, refused[-2000:]

        # -- 3. SIGKILL of the ingest driver; the restart takes its lease over at once ----------------------
        _wait("a batch published", lambda: "published" in batch.output(), 300, jobs=(ingest, batch, serve))
        ingest.kill()
        produce(waves[1])
        ingest = kafka.start("ingest")
        running.append(ingest)
        _wait(
            "the restarted ingest serves the second wave", serves_everything_produced, 600, jobs=(ingest, batch, serve)
        )

        # -- 4. a zombie: frozen, its lease taken over by another host's driver after one lease time ------------
        zombie = ingest
        os.killpg(zombie.process.pid, signal.SIGSTOP)
        taker = kafka.start("ingest", "--set", "lease.host_id=another-host")
        running.append(taker)
        _wait(
            "the other host's ingest watches the lease", lambda: "watching it for" in taker.output(), 200, jobs=(taker,)
        )
        produce(waves[2])
        _wait("the taker serves the third wave", serves_everything_produced, 600, jobs=(taker, batch, serve))
        os.killpg(zombie.process.pid, signal.SIGCONT)
        code = zombie.wait(180)
        assert code != 0, zombie.output()[-3000:]
        assert "lost its lease" in zombie.output(), zombie.output()[-3000:]
        serves_everything_produced()  # nothing the zombie did after the takeover shows
    finally:
        for job in running:
            stop_group(job.process, signal.SIGTERM)
        producer.close()

    # -- 5. quiescent: maintenance, audit, rollback, refresh of a changed view --------------------------------
    maintained = kafka.run("maintain", "--table", "coverage")  # allowed now: its owner, batch, is stopped
    assert "coverage" in maintained and "vacuumed" in maintained
    audit = kafka.run("audit", "--format", "json")
    assert "publication" in audit
    kafka.run("batch", "--rollback")
    evolved = evolved_module(tmp_path / "v2", "evolving_v2.py", 50_000)
    kafka.run("refresh", "--view", "failed_hourly", pipeline=evolved)
    got = _json_lines(
        kafka.run("query", QUERIES["failed_hourly"].format(layer="serving"), "--format", "json", pipeline=evolved)
    )
    want = expected_views(produced, failed_above_cents=50_000)["failed_hourly"]
    assert_view_equals("refreshed failed_hourly", _keyed(got, "failed_hourly"), want)
