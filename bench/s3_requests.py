"""S3 requests per ingest micro-batch, per upkeep compaction and per dashboard refresh: at the start, and again
after an hour's worth of commits. Counted by the local S3 server itself, from its request log.

Runs against the project's local S3 server (moto, started here with its request log) with the work directory
in a bucket (``s3a://``), the clickstream pipeline, a files source and ``--trigger`` (1 s). Each phase:

1. ingest runs (in this process) and takes ``--batches`` landing files, one per micro-batch
   (``ingest.max_files_per_trigger=1``); the requests it makes meanwhile, divided by the micro-batches, by kind
   (LIST, HEAD, GET, PUT, POST, DELETE) and by prefix (``_delta_log``, table data, streaming checkpoints, leases,
   landing). This script's own uploads of the landing files are left out of the counts.
2. ingest stops; one compaction of master and quarantine as ingest's upkeep runs it inside a micro-batch
   (``maintain(..., only=INGESTS, vacuum=False)``); then, for comparison, the recursive listing of master that the
   ``maintain`` verb's report (with a vacuum) makes, which the micro-batch path no longer does.
3. one refresh of the dashboard: ``GET /dashboard/data`` on the query server (``lambda-pipeline serve``'s, run
   here on a thread), at a fresh pin, right after another one, as on a page left open (the rate chart reads each
   master commit file once).

Between the phases, ``--commits`` commits (default 3,600: an hour at one micro-batch a second) are added to each
table ingest writes (master, quarantine, the speed tables), cheaply: written straight to the bucket as Delta
commit files (a copy of the table's newest ``commitInfo``, no data action), each with a stand-in for the
checksum file Delta writes beside a commit, one for a checkpoint every ``maintenance.log_checkpoint_interval``
commits, and one data object, as a compaction leaves the replaced files behind until a vacuum. The prefixes
then hold as many keys as an hour of real micro-batches leaves; the measured micro-batches that follow are
real ingest micro-batches. Their count is placed so that the first real commit after them is a checkpoint.
Delta's own reading of the log is what is measured: listings grow with the keys under ``_delta_log``
(S3 answers at most 1,000 keys a LIST; ``fs.s3a.paging.maximum`` is set to that, as on AWS).

    .venv/bin/python bench/s3_requests.py                 # 3,600 commits
    .venv/bin/python bench/s3_requests.py --commits 600   # a shorter run

Prints each count and the later/first ratio; the target is a ratio of at most 1.2 per micro-batch.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import http.client
import json
import posixpath
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, write_results

from lambda_pipeline.core.compact_vacuum import INGESTS, maintain, table_files
from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.deltalog import json_lines, read_text
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.tables import table_version
from lambda_pipeline.local_services.s3_server import S3Request, S3Server, free_port
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.serving_layer.server import DASHBOARD_CACHE_SECONDS

NAME = "s3_requests"
BUCKET = "bench-s3-requests"
_SIMPLE_PROVIDER = "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
KINDS = ("LIST", "HEAD", "GET", "PUT", "POST", "DELETE")


def _prefix_of(request: S3Request, work: str) -> str:
    """Which part of the work directory a request touches."""
    key = request.listed_prefix if request.kind == "LIST" else request.key
    if not key.startswith(work + "/"):
        return "other"
    rest = key[len(work) + 1 :]
    if "/_delta_log" in "/" + rest:
        return "_delta_log"
    if rest.startswith("warehouse/_leases"):
        return "leases"
    if rest.startswith("warehouse/"):
        return "data"
    if rest.startswith("checkpoints/"):
        return "checkpoints"
    if rest.startswith("landing"):
        return "landing"
    return "other"


def _counts(requests: list[S3Request], work: str, per: float) -> dict[str, Any]:
    by_kind = collections.Counter(r.kind for r in requests)
    by_prefix = collections.Counter(_prefix_of(r, work) for r in requests)
    return {
        "total": round(len(requests) / per, 2),
        "by_kind": {k: round(by_kind.get(k, 0) / per, 2) for k in KINDS if by_kind.get(k)},
        "by_prefix": {k: round(v / per, 2) for k, v in sorted(by_prefix.items())},
    }


class _Uploader:
    """PUTs straight to the server (unsigned, as moto accepts), several connections at once."""

    def __init__(self, server: S3Server, threads: int = 4) -> None:
        self.port = server.port
        self._local = threading.local()
        self.pool = concurrent.futures.ThreadPoolExecutor(threads)

    def _connection(self) -> http.client.HTTPConnection:
        if not hasattr(self._local, "conn"):
            self._local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn: http.client.HTTPConnection = self._local.conn
        return conn

    def put(self, key: str, body: bytes) -> None:
        conn = self._connection()
        conn.request("PUT", f"/{BUCKET}/{key}", body=body, headers={"Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"PUT {key}: HTTP {response.status}")

    def put_all(self, items: list[tuple[str, bytes]]) -> None:
        for future in [self.pool.submit(self.put, key, body) for key, body in items]:
            future.result()


def _add_commits(spark: Any, uploader: _Uploader, table: str, count: int, interval: int) -> int:
    """``count`` (or a few more) commits on the Delta table at ``table``, written straight to the bucket (see
    the module's docstring); the number written."""
    key = table.split(f"s3a://{BUCKET}/", 1)[1]
    newest = table_version(spark, table)
    assert newest is not None, table
    text = read_text(spark, posixpath.join(table, "_delta_log", f"{newest:020d}.json"))
    assert text is not None
    info = next(a["commitInfo"] for a in json_lines(text) if a and "commitInfo" in a)
    count += (-(newest + count + 1)) % interval  # the next real commit is a checkpoint
    now_ms = int(time.time() * 1000)
    items: list[tuple[str, bytes]] = []
    for i in range(1, count + 1):
        version = newest + i
        commit = {**info, "timestamp": now_ms - (count - i), "engineInfo": "bench-s3-requests filler"}
        if "inCommitTimestamp" in info:
            commit["inCommitTimestamp"] = commit["timestamp"]
        items.append((f"{key}/_delta_log/{version:020d}.json", (json.dumps({"commitInfo": commit}) + "\n").encode()))
        if i < count:  # never for the newest: Delta reads the checksum of the version it updates from
            items.append((f"{key}/_delta_log/{version:020d}.crc.filler", b"{}"))
        if version % interval == 0:
            items.append((f"{key}/_delta_log/{version:020d}.checkpoint.parquet.filler", b"PAR1"))
        items.append((f"{key}/filler/part-{version:08d}.snappy.parquet", b"PAR1"))
    uploader.put_all(items)
    return count


def _landing_files(generator: ClickstreamGenerator, work: str, count: int, events: int) -> list[tuple[str, bytes]]:
    files = []
    for _ in range(count):
        lines, _stats = generator.lines(events)
        name = f"clicks-{generator.seed:x}-{time.time_ns()}.jsonl"
        files.append((f"{work}/landing/{name}", ("\n".join(lines) + "\n").encode()))
    return files


def _batches_with_input(query: Any) -> set[int]:
    return {int(p["batchId"]) for p in query.recentProgress if p.get("numInputRows", 0) > 0}


def _ingest_phase(
    spark: Any,
    settings: Any,
    locations: Locations,
    server: S3Server,
    uploader: _Uploader,
    generator: ClickstreamGenerator,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Ingest ``--warmup`` then ``--batches`` files, one a micro-batch; the requests of the latter."""
    from lambda_pipeline.pipelines.ingest import start_ingest

    work = "work"
    query = start_ingest(spark, CLICKSTREAM, settings, locations)
    log = server.requests()
    try:

        def feed(count: int) -> None:
            seen = _batches_with_input(query)
            uploader.put_all(_landing_files(generator, work, count, args.events))
            deadline = time.monotonic() + args.timeout
            while len(_batches_with_input(query) - seen) < count:
                if query.exception() is not None:
                    raise RuntimeError(f"ingest failed: {query.exception()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ingest took {count} files in more than {args.timeout:.0f}s")
                time.sleep(0.2)  # polling the query's progress, bounded by the deadline
            while query.status["isTriggerActive"]:  # let the last micro-batch finish its commits
                time.sleep(0.05)

        feed(args.warmup)
        mark, started = log.mark(), time.monotonic()
        feed(args.batches)
        seconds = time.monotonic() - started
        requests = [r for r in log.since(mark) if not (r.method == "PUT" and r.key.startswith(f"{work}/landing/"))]
    finally:
        query.stop()
    counted = _counts(requests, work, args.batches)
    counted["seconds_per_batch"] = round(seconds / args.batches, 2)
    return counted


def _phase(
    label: str, spark: Any, settings: Any, locations: Locations, server: S3Server, service: str, **kw: Any
) -> dict[str, Any]:
    """One phase (see the module's docstring): a micro-batch, a compaction, the report's listing, a refresh."""
    log = server.requests()
    work = "work"
    result: dict[str, Any] = {"micro_batch": _ingest_phase(spark, settings, locations, server, **kw)}
    mark = log.mark()
    reports = maintain(spark, CLICKSTREAM, locations, only=sorted(INGESTS), vacuum=False)
    result["upkeep_compaction"] = {
        **_counts(log.since(mark), work, 1),
        "compacted": [r.table for r in reports if r.compacted],
    }
    mark = log.mark()
    disk = table_files(spark, locations.master, disk=True)
    result["maintain_report_listing"] = {**_counts(log.since(mark), work, 1), "disk_files": disk and disk.disk_files}
    # An open page refreshes every few seconds: the measured refresh follows one that read what came before it
    # (the rate chart reads each master commit once), as on a page left open.
    with urllib.request.urlopen(f"{service}/dashboard/data", timeout=600) as response:
        response.read()
    time.sleep(DASHBOARD_CACHE_SECONDS + 0.5)  # the server answers from its cache within that time
    mark = log.mark()
    with urllib.request.urlopen(f"{service}/dashboard/data", timeout=600) as response:
        response.read()
    result["dashboard_refresh"] = _counts(log.since(mark), work, 1)
    mb = result["micro_batch"]
    print(
        f"{label}: per micro-batch {mb['total']} requests {mb['by_kind']} {mb['by_prefix']}; "
        f"upkeep compaction {result['upkeep_compaction']['total']}; "
        f"maintain report listing {result['maintain_report_listing']['total']}; "
        f"dashboard refresh {result['dashboard_refresh']['total']}",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=3600, help="commits added per table between the phases")
    parser.add_argument("--batches", type=int, default=10, help="micro-batches measured per phase (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="micro-batches before the measured ones (default 3)")
    parser.add_argument("--events", type=int, default=100, help="events per landing file (default 100)")
    parser.add_argument("--trigger", default="1 second", help="ingest.trigger (default 1 second)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds a phase's ingest may take")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output", default=str(RESULTS_DIR / f"{NAME}.json"), help="JSON results file")
    args = parser.parse_args(argv)

    from lambda_pipeline.core.jvm_packages import hadoop_aws_coordinate
    from lambda_pipeline.core.session import get_spark
    from lambda_pipeline.serving_layer.server import QueryServer

    server = S3Server(Path(tempfile.mkdtemp(prefix="bench-s3-")), port=free_port(), request_log=True)
    server.start(timeout=120)
    try:
        server.create_bucket(BUCKET)
        overrides = [
            f"s3.endpoint={server.endpoint}",
            "s3.path_style_access=true",
            f"s3.credentials_provider={_SIMPLE_PROVIDER}",
            f"ingest.trigger={args.trigger}",
            "ingest.max_files_per_trigger=1",
            "maintenance.compact_min_files=4",
            "maintenance.ingest_compact_every=24 hours",  # measured on its own, between the phases
            "maintenance.interval=24 hours",
            "serve.port=0",
            *args.override,
        ]
        settings = load_settings(None, overrides)
        locations = Locations.create(settings, f"s3a://{BUCKET}/work")
        extra = {
            **settings.maintenance.table_defaults(),
            **settings.s3.spark_conf(),
            "spark.hadoop.fs.s3a.paging.maximum": "1000",  # as many keys a LIST as S3 answers
            "spark.hadoop.fs.s3a.access.key": "local-moto",  # moto checks no credential; s3a signs with these
            "spark.hadoop.fs.s3a.secret.key": "local-moto",
        }
        spark = get_spark(
            settings.spark, app_name=f"bench-{NAME}", extra_conf=extra, packages=(hadoop_aws_coordinate(),)
        )
        uploader = _Uploader(server)
        generator = ClickstreamGenerator(11, late_fraction=0.05, duplicate_fraction=0.0, malformed_fraction=0.05)
        from lambda_pipeline.batch_layer.job import run_batch
        from lambda_pipeline.pipelines.ingest import start_ingest

        # Tables and one published batch, so that the dashboard reads every layer.
        uploader.put_all(_landing_files(generator, "work", 2, args.events))
        start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()
        run_batch(spark, CLICKSTREAM, locations)
        query_server = QueryServer(spark, CLICKSTREAM, locations, settings.serve).start()
        kw = {"uploader": uploader, "generator": generator, "args": args, "service": query_server.url}
        try:
            first = _phase("start", spark, settings, locations, server, **kw)
            interval = settings.maintenance.log_checkpoint_interval
            tables = [
                locations.master,
                locations.quarantine,
                *(locations.speed_partials(v.name) for v in CLICKSTREAM.views),
            ]
            started = time.monotonic()
            added = {
                posixpath.relpath(t, locations.warehouse): _add_commits(spark, uploader, t, args.commits, interval)
                for t in tables
            }
            print(f"added commits {added} in {time.monotonic() - started:.0f}s", flush=True)
            later = _phase(f"after {args.commits} commits", spark, settings, locations, server, **kw)
        finally:
            query_server.stop()
            spark.stop()
    finally:
        server.stop()

    ratios = {
        what: round(later[what]["total"] / first[what]["total"], 3) if first[what]["total"] else None
        for what in ("micro_batch", "upkeep_compaction", "maintain_report_listing", "dashboard_refresh")
    }
    for what, ratio in ratios.items():
        print(f"{what:<24} first {first[what]['total']:>8} later {later[what]['total']:>8}  later/first {ratio}x")
    verdict = ratios["micro_batch"] is not None and ratios["micro_batch"] <= 1.2
    print(f"target: micro-batch later/first <= 1.2: {'met' if verdict else 'NOT met'}")
    write_results(
        args.output,
        NAME,
        {
            "commits_added": args.commits,
            "checkpoint_interval": settings.maintenance.log_checkpoint_interval,
            "batches_measured": args.batches,
            "trigger": args.trigger,
            "first": first,
            "later": later,
            "later_over_first": ratios,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
