"""End-to-end freshness: from a file landing to its events being visible in ``serving.page_activity``.

Runs the real pipeline in one Spark session: a seed file is ingested and a batch is published first (so
coverage exists), then the ingest job runs as a streaming query with a processing-time trigger; each of
its micro-batches writes master and the speed partials of its tag (the one hop). (``ingest.trigger``
defaults to 500 ms here; change them, or any other setting, with
``--override KEY=VALUE``). A producer thread writes JSON-lines files into the landing folder at ``--rate``
valid events per second, ``--files-per-second`` files per second, for ``--warmup`` seconds (not measured)
plus ``--seconds`` seconds (measured).

A file's events are visible in ``serving.page_activity`` once the speed-partials table holds partials for
the ingest tag of its events (no batch runs during the measurement, so the coverage stays at the seed
commit, and ``ServingLayer.take_pin()`` pins the newest speed version). The main thread polls
``latest_version`` of the speed table every ``--poll-ms``; for each new version that adds data it reads the
new ingest tags present at that version (one small Spark query) and records, per tag, the version's commit
time (mtime of its file in ``_delta_log``) and the time the poller saw it. Files are mapped to tags through
the master table (``source_file`` -> ``ingest_tag``). The observer (``SpeedVisibility``, ``latencies``) is in
bench/_observer.py, shared with bench/kafka_freshness.py. Per file:

- ``visible``  = commit time of the first speed version holding its tag - ``written_at`` (the headline);
- ``observed`` = time the poller saw that version - ``written_at`` (adds polling delay and poller cost);
- ``ingest``   = commit time of its master commit - ``written_at``; ``speed`` = ``visible`` - ``ingest``.

It does not include the cost of re-pinning the serving views (``take_pin()``) or of the query itself: see
bench/serving_latency.py. The poller's Spark queries share the 2 cores with the pipeline. Every wait is
bounded by ``--timeout``; both queries are stopped with ``query.stop()`` at the end.

Run (full size, done later):
    .venv/bin/python bench/freshness.py --rate 2000 --seconds 60
Small smoke test:
    .venv/bin/python bench/freshness.py --seconds 20
Results: a table on stdout and JSON in bench/results/freshness.json.
"""

from __future__ import annotations

import argparse
import math
import posixpath
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _common import add_common_args, add_generator_args, environment, generator_mix, summary, write_results
from _observer import (
    LATENCIES,
    PollLoop,
    SpeedVisibility,
    check_queries,
    commit_time,
    latencies,
    print_latencies,
    progress_stats,
    stop_queries,
)

from lambda_pipeline.batch_layer.job import run_batch
from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.session import get_spark
from lambda_pipeline.core.tables import sql_path
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM, PAGE_ACTIVITY
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.pipelines.ingest import start_ingest

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import StreamingQuery

    from lambda_pipeline.core.config import Settings

NAME = "freshness"
DEFAULT_OVERRIDES = ("ingest.trigger=500 milliseconds",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000.0, help="valid events per second (default 2000)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured production time (default 60)")
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="production time before the measured part, not measured (default 5)"
    )
    parser.add_argument("--files-per-second", type=float, default=2.0, help="files written per second (default 2)")
    parser.add_argument("--poll-ms", type=float, default=100.0, help="poll interval of the speed table (default 100)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="overall limit in seconds once streaming starts (default: warmup + seconds + 120)",
    )
    add_generator_args(parser)
    add_common_args(parser, NAME, f", applied after the defaults {list(DEFAULT_OVERRIDES)}")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.files_per_second <= 0 or args.warmup < 0 or args.poll_ms <= 0:
        parser.error("--rate, --seconds, --files-per-second and --poll-ms must be > 0, --warmup >= 0")
    return args


# ---- producer ------------------------------------------------------------------------------------------


@dataclass
class Produced:
    name: str
    events: int
    lines: int
    written_at: float
    warmup: bool


class Producer(threading.Thread):
    """Writes files at a fixed pace (bounded in count); stops early when ``stop`` is set."""

    def __init__(
        self,
        generator: ClickstreamGenerator,
        landing: str,
        rate: float,
        seconds: float,
        warmup: float,
        files_per_second: float,
        stop: threading.Event,
    ) -> None:
        super().__init__(name="producer", daemon=True)
        self.generator, self.landing, self.stop = generator, landing, stop
        self.interval = 1.0 / files_per_second
        self.per_file = max(1, round(rate * self.interval))
        self.warm_ticks = round(warmup * files_per_second)
        self.ticks = self.warm_ticks + max(1, round(seconds * files_per_second))
        self.files: list[Produced] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            start = time.monotonic()
            for tick in range(self.ticks):
                if self.stop.is_set():
                    break
                f = self.generator.write_file(self.landing, self.per_file)
                self.files.append(Produced(f.path.name, f.events, f.lines, f.written_at, tick < self.warm_ticks))
                delay = start + (tick + 1) * self.interval - time.monotonic()
                if delay > 0:
                    self.stop.wait(delay)
        except BaseException as exc:  # reported by the main thread
            self.error = exc


# ---- files and their tags ------------------------------------------------------------------------------------


def file_tags(spark: SparkSession, master: str, covered_through: int) -> dict[str, int]:
    """File name -> ingest tag of its events, for everything ingested after the coverage."""
    rows = spark.sql(
        f"SELECT source_file, min(ingest_tag) AS tag FROM {sql_path(master)} "
        f"WHERE ingest_tag > {covered_through} GROUP BY source_file"
    ).collect()
    return {posixpath.basename(str(r.source_file)): int(r.tag) for r in rows}


def watch(
    spark: SparkSession,
    loc: Locations,
    queries: list[StreamingQuery],
    speed: SpeedVisibility,
    producer: Producer,
    loop: PollLoop,
) -> dict[str, int]:
    """Poll until every file written is visible (or the loop times out); file name -> ingest tag."""
    mapping: dict[str, int] = {}
    next_mapping = 0.0
    for now in loop:
        if producer.error is not None:
            raise RuntimeError(f"producer failed: {producer.error!r}") from producer.error
        check_queries(queries)
        speed.poll()
        if not producer.is_alive() and now >= next_mapping:
            mapping = file_tags(spark, loc.master, speed.covered)
            next_mapping = time.monotonic() + 1.0
            if all(mapping.get(f.name) in speed.seen for f in producer.files):
                break
        if loop.report_due(now):
            print(
                f"  +{now - loop.started:5.0f}s: {len(producer.files)} files written, speed version "
                f"{speed.log.version}, newest visible tag {speed.newest_tag}",
                flush=True,
            )
    return mapping


def file_records(
    files: list[Produced], mapping: dict[str, int], speed: SpeedVisibility, master: str
) -> list[dict[str, Any]]:
    """Per file: its tag, the first speed version holding it and the ``latencies`` from ``written_at``."""
    master_commit: dict[int, float | None] = {}
    records: list[dict[str, Any]] = []
    for f in files:
        tag = mapping.get(f.name)
        seen = speed.seen.get(tag) if tag is not None else None
        if tag is not None and tag not in master_commit:
            master_commit[tag] = commit_time(master, tag)
        m_time = master_commit.get(tag) if tag is not None else None
        records.append(
            {
                "file": f.name,
                "events": f.events,
                "lines": f.lines,
                "warmup": f.warmup,
                "written_at": f.written_at,
                "tag": tag,
                "speed_version": seen.speed_version if seen else None,
                **latencies(f.written_at, seen, m_time),
            }
        )
    return records


# ---- main --------------------------------------------------------------------------------------------------


def print_summary(out: dict[str, Any], args: argparse.Namespace, settings: Settings) -> None:
    measured, produced, poller = out["files_written_measured"], out["produced"], out["poller"]
    print()
    print(
        f"Freshness (file written -> its events visible in serving.page_activity), "
        f"{out['files_measured']}/{measured} measured files (+{out['files_written_warmup']} warm-up files):"
    )
    print_latencies(out["latency_seconds"], "written_at")
    print()
    print(
        f"produced: {produced['events']:,} events ({produced['lines']:,} lines) in {measured} files over "
        f"{produced['span_seconds']:.1f}s = {produced['events'] / produced['span_seconds']:,.0f} events/s "
        f"(target {args.rate:g}); {produced['ingest_commits']} ingest commits for them"
    )
    print(
        f"trigger: ingest {settings.ingest.trigger!r} (max {settings.ingest.max_files_per_trigger} files), "
        "one hop (master and speed partials in each micro-batch)"
    )
    for name, s in out["streams"].items():
        print(
            f"  {name:<18} {s['batches_with_data']:4d} batches with data, trigger p50 "
            f"{s['trigger_ms_p50']:.0f} ms, p95 {s['trigger_ms_p95']:.0f} ms, max {s['trigger_ms_max']:.0f} ms"
        )
    print(
        f"poller: {poller['polls']} polls, {poller['tag_queries']} tag queries, poll p50 {poller['poll_ms_p50']:.0f} "
        f"ms, p95 {poller['poll_ms_p95']:.0f} ms"
    )
    if out["timed_out"]:
        print(
            f"WARNING: timed out after {out['parameters']['timeout']:.0f}s; "
            f"{measured - out['files_measured']} files never became visible"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="bench-fresh-")) if own_workdir else Path(args.workdir)
    overrides = [*DEFAULT_OVERRIDES, *args.override]
    settings = load_settings(args.config, overrides)
    loc = Locations.create(settings, workdir)
    loc.ensure_local_dirs()
    print(f"work directory: {loc.workdir}", flush=True)
    print(f"trigger: ingest {settings.ingest.trigger!r} (one hop: master and speed in each micro-batch)", flush=True)
    spark = get_spark(
        settings.spark, app_name=f"bench-{NAME}", extra_conf={"spark.sql.streaming.numRecentProgressUpdates": "10000"}
    )
    generator = ClickstreamGenerator(
        args.seed,
        late_fraction=args.late_fraction,
        duplicate_fraction=args.duplicate_fraction,
        malformed_fraction=args.malformed_fraction,
    )
    queries: list[StreamingQuery] = []
    stop = threading.Event()
    producer: Producer | None = None
    try:
        # Coverage first: a seed file ingested once and one published batch.
        t0 = time.perf_counter()
        generator.write_file(loc.landing, max(1, round(args.rate)))
        start_ingest(spark, CLICKSTREAM, settings, loc, once=True).awaitTermination()
        coverage, _ = run_batch(spark, CLICKSTREAM, loc)
        covered = coverage.master_version
        print(
            f"seed ingested and batch published (coverage = master version {covered}) "
            f"in {time.perf_counter() - t0:.1f}s",
            flush=True,
        )

        speed_table = loc.speed_partials(PAGE_ACTIVITY.name)
        queries.append(start_ingest(spark, CLICKSTREAM, settings, loc))
        speed = SpeedVisibility(spark, speed_table, covered, log_only=False)
        producer = Producer(generator, loc.landing, args.rate, args.seconds, args.warmup, args.files_per_second, stop)
        timeout = args.timeout if args.timeout is not None else args.warmup + args.seconds + 120.0
        loop = PollLoop(timeout, args.poll_ms / 1000.0)
        producer.start()
        print(
            f"streaming started; producing {producer.per_file} events/file, {args.files_per_second:g} files/s "
            f"for {args.warmup:g}s warm-up + {args.seconds:g}s measured",
            flush=True,
        )
        mapping = watch(spark, loc, queries, speed, producer, loop)
        drained_after = loop.elapsed()
        stop.set()
        producer.join(timeout=30)
        if not mapping or loop.timed_out:
            mapping = file_tags(spark, loc.master, covered)

        records = file_records(producer.files, mapping, speed, loc.master)
        measured = [r for r in records if not r["warmup"]]
        done = [r for r in measured if r["visible"] is not None]
        stats = {k: summary([r[k] for r in done if r[k] is not None]) for k in LATENCIES}
        produced_events = sum(r["events"] for r in measured)
        produced_lines = sum(r["lines"] for r in measured)
        span = (measured[-1]["written_at"] - measured[0]["written_at"] + producer.interval) if measured else math.nan
        tags_per_file = len({r["tag"] for r in measured if r["tag"] is not None})

        out = {
            "parameters": {
                "rate": args.rate,
                "seconds": args.seconds,
                "warmup": args.warmup,
                "files_per_second": args.files_per_second,
                "events_per_file": producer.per_file,
                "poll_ms": args.poll_ms,
                "timeout": timeout,
                "overrides": overrides,
                "workdir": loc.workdir,
                "generator": generator_mix(args),
            },
            "settings": {
                "ingest_trigger": settings.ingest.trigger,
                "ingest_max_files_per_trigger": settings.ingest.max_files_per_trigger,
            },
            "environment": environment(spark, settings),
            "coverage_master_version": covered,
            "latency_seconds": stats,
            "files_measured": len(done),
            "files_written_measured": len(measured),
            "files_written_warmup": len(records) - len(measured),
            "timed_out": loop.timed_out,
            "drained_after_seconds": drained_after,
            "produced": {
                "events": produced_events,
                "lines": produced_lines,
                "span_seconds": span,
                "events_per_second": produced_events / span if span else math.nan,
                "ingest_commits": tags_per_file,
            },
            "streams": {q.name: progress_stats(q) for q in queries},
            "poller": speed.stats("tag_queries"),
            "tags": {str(t): asdict(s) for t, s in sorted(speed.seen.items())},
            "files": records,
        }
        print_summary(out, args, settings)
        write_results(args.output, NAME, out)
        return 1 if loop.timed_out or not done else 0
    finally:
        stop.set()
        if producer is not None and producer.is_alive():
            producer.join(timeout=30)
        stop_queries(queries)
        spark.stop()
        if own_workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
