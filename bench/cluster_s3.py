"""The local cluster on S3 against local mode on local disk: freshness through the server, batch, S3 requests.

Two deployments get the same Kafka load in the same run, one after the other:

- **local**: each job a ``lambda-pipeline`` process in local mode (``local[2]``), the work directory on local disk;
- **cluster-s3**: each job a ``spark-submit`` of the artifact to the local standalone cluster
  (``LocalCluster``: drivers and executors in their own JVMs), every table, checkpoint and lease on the local S3
  server (moto on 127.0.0.1), as on EMR.

In each: ``ingest`` (Kafka) and ``serve`` run side by side; a producer process sends ``--rate`` valid events per
second (no duplicates, no bad lines, so that counts are exact) in paced bursts for ``--warmup`` + ``--seconds``;
one client polls the server every ``--poll`` seconds with ``SELECT sum(events) FROM serving.page_activity``.
**Freshness** of a burst = the first poll whose total includes it, minus the time it was produced: what a user
polling the server sees. Then ingest stops and ``batch`` runs once: **batch recompute** is the seconds the job
reports for staging and publishing. On S3, the server's request log gives **requests per micro-batch** over the
measured window (requests / micro-batches, from the ingest checkpoint's commits), by kind.

    python bench/cluster_s3.py --rate 500 --seconds 120

It prints the cluster-s3 / local ratios and writes ``bench/results/cluster_s3.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import RESULTS_DIR, summary, write_results
from _kafka_load import ProducerProcess

from lambda_pipeline.core.config_loader import load_settings

S3_ENV = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_REGION": "us-east-1"}
ENV_CREDENTIALS = "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider"
QUERY = "SELECT coalesce(sum(events), 0) AS n FROM serving.page_activity"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500.0, help="valid events/s (default 500)")
    parser.add_argument("--seconds", type=float, default=120.0, help="measured seconds (default 120)")
    parser.add_argument(
        "--warmup", type=float, default=30.0, help="seconds of load before measuring, once the jobs answer (default 30)"
    )
    parser.add_argument("--trigger", default="2 seconds", help="ingest.trigger of both (default '2 seconds')")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between the client's queries (default 1)")
    parser.add_argument("--only", choices=("local", "cluster-s3"), help="run one deployment only")
    parser.add_argument("--output", default=str(RESULTS_DIR / "cluster_s3.json"))
    # What ProducerProcess reads: a clean load, so that a total says exactly which bursts are in.
    parser.set_defaults(
        generator="fast",
        seed=11,
        ticks_per_second=4.0,
        late_fraction=0.0,
        duplicate_fraction=0.0,
        malformed_fraction=0.0,
    )
    return parser.parse_args(argv)


class Deployment:
    """How one deployment starts a job; ``folder`` holds its config and the jobs' logs."""

    def __init__(self, name: str, folder: Path, config: Path, command: Any, env: dict[str, str]) -> None:
        self.name, self.folder, self.config, self._command, self.env = name, folder, config, command, env
        self.jobs: list[subprocess.Popen[bytes]] = []

    def start(self, job: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.folder / f"{len(self.jobs):02d}-{job}.log").open("wb")
        process = subprocess.Popen(
            self._command(job, [*args, "--config", str(self.config)]),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
            env=self.env,
            start_new_session=True,
        )
        self.jobs.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def write_config(folder: Path, workdir: str, kafka: dict[str, Any], trigger: str, extra: dict[str, Any]) -> Path:
    import yaml

    config = {
        "workdir": workdir,
        "ingest": {"source": "kafka", "trigger": trigger, "kafka": kafka},
        "spark": {"shuffle_partitions": 2, "log_level": "WARN"},
        **extra,
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def poll_freshness(
    client: Any,
    producer: ProducerProcess,
    produced_at: float,
    args: argparse.Namespace,
    ingest: Any,
    marks: Any,
    base: int = 0,
) -> dict[str, Any]:
    """Poll the server until the producer finished and every event is visible (bounded); freshness per burst.

    ``marks()`` is called once as the measured window opens and once as the load ends (the S3 request log);
    ``base``: the events the server counted before the load (a preload), left out of every total."""
    measured_from = produced_at + args.warmup
    deadline = time.monotonic() + args.warmup + args.seconds + 300
    seen: list[tuple[float, int]] = []
    query_ms: list[float] = []
    result = None
    window: list[tuple[float, Any]] = []
    while time.monotonic() < deadline:
        if (not window and time.time() >= measured_from) or (len(window) == 1 and producer.poll() is not None):
            window.append((time.time(), marks()))
        if ingest.poll() is not None:
            raise RuntimeError(f"ingest exited ({ingest.returncode}); see its log")
        started = time.time()
        try:
            answer = client.query(QUERY)
            seen.append((time.time(), int(answer.table.column("n")[0].as_py() or 0) - base))
            query_ms.append((time.time() - started) * 1000)
        except Exception:  # the server is not up yet
            pass
        result = result or producer.poll()
        if result is not None and len(window) == 1:
            window.append((time.time(), marks()))
        if result is not None and seen and seen[-1][1] >= result["events"]:
            break
        time.sleep(max(0.0, args.poll - (time.time() - started)))
    if result is None:
        raise RuntimeError("the producer did not finish")
    freshness, missing = freshness_of(seen, result["log"], measured_from)
    return {
        "freshness_s": summary(freshness),
        "bursts_never_seen": missing,
        "query_ms": summary(query_ms),
        "events": result["events"],
        "window": window,
    }


def freshness_of(
    seen: list[tuple[float, int]], log: list[tuple[float, int, int]], measured_from: float
) -> tuple[list[float], int]:
    """Per burst produced from ``measured_from`` on: the first answer whose total includes it, minus when it was
    produced (``log``: the producer's (time, messages, events so far)); and how many bursts no answer showed."""
    freshness, missing = [], 0
    for at, _messages, events in log:
        if at < measured_from:
            continue
        visible = next((when for when, total in seen if total >= events), None)
        if visible is None:
            missing += 1
        else:
            freshness.append(visible - at)
    return freshness, missing


def _await_answer(client: Any, ingest: Any, deadline: float) -> None:
    """Wait (bounded) until ingest has created its tables and the server answers the query."""
    while time.monotonic() < deadline:
        if ingest.poll() is not None:
            raise RuntimeError(f"ingest exited ({ingest.returncode}) before the load started; see its log")
        try:
            client.query(QUERY)
            return
        except Exception:  # not up yet, or no table yet
            time.sleep(1.0)
    raise RuntimeError("the server did not answer within 600 s")


def batch_seconds(output: str) -> float | None:
    """The seconds the batch job reports for its run ("... in 12.3s")."""
    import re

    found = re.findall(r"in (\d+(?:\.\d+)?)s", output)
    return float(found[-1]) if found else None


def run_deployment(
    dep: Deployment, kafka_settings: Any, topic: str, args: argparse.Namespace, s3: Any
) -> dict[str, Any]:
    from lambda_pipeline.local_services.process import free_port
    from lambda_pipeline.serving_layer.client import Client

    port = free_port()
    ingest = dep.start("ingest")
    serve = dep.start("serve", "--port", str(port))
    producer = ProducerProcess(kafka_settings, topic, args, args.rate, dep.name)
    try:
        client = Client(f"http://127.0.0.1:{port}", timeout=60)
        _await_answer(client, ingest, deadline=time.monotonic() + 600)  # the load starts on running jobs
        produced_at = producer.start()
        log = s3.requests() if s3 is not None else None
        result = poll_freshness(client, producer, produced_at, args, ingest, lambda: log.mark() if log else None)
    finally:
        producer.stop()
        dep.stop(ingest)
        dep.stop(serve)
    window = result.pop("window")
    if s3 is not None and len(window) == 2:
        (start, first), (end, last) = window
        log = s3.requests()
        everything, after = log.since(first), log.since(last)
        requests = everything[: len(everything) - len(after)]  # those between the two marks
        result["s3_window"] = {"from": start, "to": end, "requests": len(requests)}
        result["s3_requests"] = dict(Counter(r.kind for r in requests))
        result["s3_requests_by_prefix"] = dict(Counter(_area(r.key or r.listed_prefix) for r in requests))
    started = time.monotonic()
    batch = dep.start("batch")
    code = batch.wait(timeout=900)
    output = (dep.folder / f"{len(dep.jobs) - 1:02d}-batch.log").read_text(errors="replace")
    if code != 0:
        raise RuntimeError(f"batch failed ({code}): {output[-2000:]}")
    result["batch_recompute_s"] = batch_seconds(output)
    result["batch_job_wall_s"] = time.monotonic() - started
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from lambda_pipeline.deploy.artifact import build_artifact, jar_groups
    from lambda_pipeline.local_services.kafka_broker import KafkaBroker
    from lambda_pipeline.local_services.process import free_port
    from lambda_pipeline.local_services.s3_server import S3Server
    from lambda_pipeline.local_services.spark_cluster import LocalCluster

    root = Path(tempfile.mkdtemp(prefix="bench-cluster-s3-"))
    broker = KafkaBroker(root / "kafka", port=free_port())
    broker.start()
    results: dict[str, Any] = {}
    try:
        for name in ("local", "cluster-s3"):
            if args.only and name != args.only:
                continue
            folder = root / name
            folder.mkdir()
            topic = f"bench-{name}-{uuid.uuid4().hex[:6]}"
            broker.create_topic(topic, partitions=2)
            kafka = {"bootstrap_servers": broker.bootstrap_servers, "topic": topic, "starting_offsets": "earliest"}
            settings = load_settings(
                None, [f"ingest.kafka.bootstrap_servers={broker.bootstrap_servers}", f"ingest.kafka.topic={topic}"]
            )
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_SUBMIT_ARGS")}
            if name == "local":
                config = write_config(
                    folder,
                    str(folder / "work"),
                    kafka,
                    args.trigger,
                    {"spark": {"master": "local[2]", "shuffle_partitions": 2, "log_level": "WARN"}},
                )
                dep = Deployment(
                    name,
                    folder,
                    config,
                    lambda job, rest: [sys.executable, "-m", "lambda_pipeline.cli", job, *rest],
                    env,
                )
                print(f"[{name}] running {args.warmup + args.seconds:.0f}s at {args.rate:.0f} events/s", flush=True)
                results[name] = run_deployment(dep, settings.ingest.kafka, topic, args, None)
                continue
            s3 = S3Server(root / "s3", port=free_port(), request_log=True)
            s3.start(timeout=120)
            bucket = "bench-cluster"
            s3.create_bucket(bucket)
            cluster = LocalCluster(root / "cluster", free_port(), free_port(), env=S3_ENV)
            cluster.worker.port, cluster.worker.ui_port = free_port(), free_port()
            cluster.start(timeout=120)
            try:
                dist = root / "dist"
                build_artifact(dist)
                groups = json.loads((dist / "manifest.json").read_text())["jars"]
                project = [str(dist / jar) for group in ("delta", "kafka") for jar in groups[group]]
                node = [str(jar) for jar in jar_groups(hadoop_aws=True)["hadoop_aws"]]
                extra = {
                    "spark": {"master": cluster.master_url, "shuffle_partitions": 2, "log_level": "WARN"},
                    "s3": {
                        "endpoint": s3.endpoint,
                        "path_style_access": True,
                        "credentials_provider": ENV_CREDENTIALS,
                    },
                }
                config = write_config(folder, f"s3a://{bucket}/work", kafka, args.trigger, extra)
                import pyspark

                env.update(S3_ENV, SPARK_HOME=str(Path(pyspark.__file__).parent), PYSPARK_PYTHON=sys.executable)

                def submit(job: str, rest: list[str], c: Any = cluster, d: Path = dist) -> list[str]:
                    return c.submit_command(d, job, rest, jars=project, node_jars=node)  # noqa: B023 - one pass

                dep = Deployment(name, folder, config, submit, env)
                print(f"[{name}] running {args.warmup + args.seconds:.0f}s at {args.rate:.0f} events/s", flush=True)
                results[name] = run_deployment(dep, settings.ingest.kafka, topic, args, s3)
                results[name]["micro_batches"] = micro_batches(s3, bucket, results[name])
            finally:
                cluster.stop()
                s3.stop()
    finally:
        broker.stop()
    ratios = {}
    if "local" in results and "cluster-s3" in results:
        local, remote = results["local"], results["cluster-s3"]
        ratios = {
            "freshness_p50": remote["freshness_s"]["p50"] / local["freshness_s"]["p50"],
            "freshness_p99": remote["freshness_s"]["p99"] / local["freshness_s"]["p99"],
            "batch_recompute": (remote["batch_recompute_s"] or float("nan"))
            / (local["batch_recompute_s"] or float("nan")),
        }
    for name, result in results.items():
        f = result["freshness_s"]
        print(
            f"{name:>11}: freshness p50 {f['p50']:.2f}s p99 {f['p99']:.2f}s (n {f['n']}), query p50 "
            f"{result['query_ms']['p50']:.0f} ms, batch recompute {result['batch_recompute_s']}s"
        )
        if "s3_requests" in result:
            per = result.get("micro_batches") or {}
            print(f"{'':>11}  S3 requests per micro-batch: {per}")
    for key, value in ratios.items():
        print(f"cluster-s3 / local {key}: {value:.2f}x")
    write_results(args.output, "cluster_s3", {"args": vars(args), "results": results, "ratios": ratios})
    return 0


def _area(key: str) -> str:
    """Which part of the work directory a request touched."""
    for area in ("_delta_log", "checkpoints", "_leases", "landing"):
        if area in key:
            return area
    return "data"


def micro_batches(s3: Any, bucket: str, result: dict[str, Any]) -> dict[str, Any]:
    """Requests per micro-batch over the measured window, by kind; the micro-batches from the checkpoint."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        region_name="us-east-1",
        **{"aws_access_key_id": "local", "aws_secret_access_key": "local"},
    )
    commits = client.list_objects_v2(Bucket=bucket, Prefix="work/checkpoints/ingest/commits/").get("Contents", [])
    span = result.get("s3_window")
    if not span:
        return {}
    batches = [c for c in commits if span["from"] <= c["LastModified"].timestamp() <= span["to"]]
    n = max(1, len(batches))
    return {
        "micro_batches": len(batches),
        "per_micro_batch": round(span["requests"] / n, 1),
        "by_kind": {k: round(v / n, 1) for k, v in result["s3_requests"].items()},
        "by_area": {k: round(v / n, 1) for k, v in result["s3_requests_by_prefix"].items()},
    }


if __name__ == "__main__":
    sys.exit(main())
