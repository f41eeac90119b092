"""End-to-end freshness: from a file landing to its events being visible in ``serving.page_activity``.

Runs the real pipeline in one Spark session: a seed file is ingested and a batch is published first (so
coverage exists), then the ingest and speed jobs run as streaming queries with processing-time triggers
(``ingest.trigger`` and ``speed.trigger`` default to 500 ms here; change them, or any other setting, with
``--override KEY=VALUE``). A producer thread writes JSON-lines files into the landing folder at ``--rate``
valid events per second, ``--files-per-second`` files per second, for ``--warmup`` seconds (not measured)
plus ``--seconds`` seconds (measured).

A file's events are visible in ``serving.page_activity`` once the speed-partials table holds partials for
the ingest tag of its events (no batch runs during the measurement, so the coverage stays at the seed
commit, and ``ServingLayer.refresh()`` pins the newest speed version). The main thread polls
``latest_version`` of the speed table every ``--poll-ms``; for each new version that adds data it reads the
new ingest tags present at that version (one small Spark query) and records, per tag, the version's commit
time (mtime of its file in ``_delta_log``) and the time the poller saw it. Files are mapped to tags through
the master table (``source_file`` -> ``ingest_tag``). Per file:

- ``visible``  = commit time of the first speed version holding its tag - ``written_at`` (the headline);
- ``observed`` = time the poller saw that version - ``written_at`` (adds polling delay and poller cost);
- ``ingest``   = commit time of its master commit - ``written_at``; ``speed`` = ``visible`` - ``ingest``.

It does not include the cost of re-pinning the serving views (``refresh()``) or of the query itself: see
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
import json
import math
import posixpath
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _common import add_common_args, environment, percentile, summary, write_results

from lambda_pipeline.batch_layer.job import run_batch
from lambda_pipeline.core.config import load_settings
from lambda_pipeline.core.session import get_spark
from lambda_pipeline.core.tables import Locations, latest_version, sql_path
from lambda_pipeline.ingestion.job import start_ingest
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM, PAGE_ACTIVITY
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.speed_layer.job import start_speed

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import StreamingQuery

NAME = "freshness"
DEFAULT_OVERRIDES = ("ingest.trigger=500 milliseconds", "speed.trigger=500 milliseconds")


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
    parser.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    parser.add_argument("--late-fraction", type=float, default=0.05)
    parser.add_argument("--duplicate-fraction", type=float, default=0.03)
    parser.add_argument("--malformed-fraction", type=float, default=0.02)
    add_common_args(parser, NAME, f", applied after the defaults {list(DEFAULT_OVERRIDES)}")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.files_per_second <= 0 or args.warmup < 0 or args.poll_ms <= 0:
        parser.error("--rate, --seconds, --files-per-second and --poll-ms must be > 0, --warmup >= 0")
    return args


# ---- Delta log: commit timestamps ----------------------------------------------------------------------


@dataclass(frozen=True)
class Commit:
    millis: int | None
    adds_data: bool
    operation: str


def read_commit(table: str, version: int) -> Commit | None:
    """Commit time and kind of one version, from its file in the table's ``_delta_log`` (local tables only)."""
    path = Path(table.removeprefix("file:")) / "_delta_log" / f"{version:020d}.json"
    try:
        text = path.read_text(encoding="utf-8")
        mtime_ms = int(path.stat().st_mtime * 1000)
    except OSError:
        return None
    adds_data, operation = False, ""
    for line in text.splitlines():
        if not line.strip():
            continue
        action = json.loads(line)
        if "commitInfo" in action:
            operation = str(action["commitInfo"].get("operation", ""))
        elif "add" in action and action["add"].get("dataChange", True):
            adds_data = True
    # The log file's mtime is when the commit became readable; commitInfo.timestamp is taken a few ms
    # before the file is written.
    return Commit(mtime_ms, adds_data, operation)


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


# ---- visibility tracking ---------------------------------------------------------------------------------


@dataclass
class TagSeen:
    speed_version: int
    commit_time: float | None
    observed_at: float


class SpeedTracker:
    """First speed-table version (and its commit time) holding each ingest tag above the coverage."""

    def __init__(self, spark: SparkSession, speed_table: str, covered_through: int) -> None:
        self.spark, self.table = spark, speed_table
        self.version = latest_version(spark, speed_table)
        self.max_tag = covered_through
        self.seen: dict[int, TagSeen] = {}
        self.polls = 0
        self.queries = 0
        self.poll_seconds: list[float] = []

    def poll(self) -> None:
        t0 = time.perf_counter()
        newest = latest_version(self.spark, self.table)
        observed = time.time()
        self.polls += 1
        for version in range(self.version + 1, newest + 1):
            commit = read_commit(self.table, version)
            if commit is not None and not commit.adds_data:
                continue  # OPTIMIZE and other rewrites add no rows
            self.queries += 1
            rows = self.spark.sql(
                f"SELECT DISTINCT ingest_tag FROM {sql_path(self.table)} VERSION AS OF {version} "
                f"WHERE ingest_tag > {self.max_tag}"
            ).collect()
            commit_time = commit.millis / 1000.0 if commit is not None and commit.millis is not None else None
            for row in rows:
                tag = int(row[0])
                self.seen.setdefault(tag, TagSeen(version, commit_time, observed))
            if rows:
                self.max_tag = max(self.max_tag, *(int(r[0]) for r in rows))
        self.version = newest
        self.poll_seconds.append(time.perf_counter() - t0)


def file_tags(spark: SparkSession, master: str, covered_through: int) -> dict[str, int]:
    """File name -> ingest tag of its events, for everything ingested after the coverage."""
    rows = spark.sql(
        f"SELECT source_file, min(ingest_tag) AS tag FROM {sql_path(master)} "
        f"WHERE ingest_tag > {covered_through} GROUP BY source_file"
    ).collect()
    return {posixpath.basename(str(r.source_file)): int(r.tag) for r in rows}


def stop_when_idle(queries: list[StreamingQuery], limit: float) -> None:
    """Stop each query between micro-batches if it gets idle within ``limit`` seconds, else stop it anyway.

    Stopping a query in the middle of a micro-batch interrupts its Spark jobs, which works but fills the
    log with interrupt traces (Spark 4.2 can even hit a StackOverflowError while classifying them).
    """
    deadline = time.monotonic() + limit
    for q in queries:
        while q.isActive and time.monotonic() < deadline:
            status = q.status
            if not status.get("isTriggerActive") and not status.get("isDataAvailable"):
                break
            time.sleep(0.05)
        q.stop()


def check_queries(queries: list[StreamingQuery]) -> None:
    for q in queries:
        if not q.isActive:
            error = q.exception()
            raise RuntimeError(f"streaming query {q.name} stopped: {error}")


def progress_stats(query: StreamingQuery) -> dict[str, Any]:
    """Micro-batches that had input: count, rows and trigger durations (from recentProgress)."""
    durations: list[float] = []
    rows: list[float] = []
    parts: dict[str, list[float]] = {}
    batches = 0
    for p in query.recentProgress:
        data = json.loads(p.json) if hasattr(p, "json") else dict(p)
        batches += 1
        if int(data.get("numInputRows", 0)) > 0:
            rows.append(float(data["numInputRows"]))
            timing = data.get("durationMs", {})
            durations.append(float(timing.get("triggerExecution", math.nan)))
            for key, value in timing.items():
                parts.setdefault(key, []).append(float(value))
    return {
        "progress_reports": batches,
        "batches_with_data": len(rows),
        "duration_ms_p50_by_phase": {k: percentile(v, 50) for k, v in sorted(parts.items())},
        "input_rows_median": statistics.median(rows) if rows else math.nan,
        "trigger_ms_p50": percentile(durations, 50),
        "trigger_ms_p95": percentile(durations, 95),
        "trigger_ms_max": max(durations) if durations else math.nan,
    }


# ---- main --------------------------------------------------------------------------------------------------


def fmt(value: float) -> str:
    return "    n/a" if value is None or math.isnan(value) else f"{value:7.2f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="bench-fresh-")) if own_workdir else Path(args.workdir)
    overrides = [*DEFAULT_OVERRIDES, *args.override]
    settings = load_settings(args.config, overrides)
    loc = Locations.create(settings, workdir)
    loc.ensure_local_dirs()
    print(f"work directory: {loc.workdir}", flush=True)
    print(f"triggers: ingest {settings.ingest.trigger!r}, speed {settings.speed.trigger!r}", flush=True)
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
        queries.append(start_speed(spark, CLICKSTREAM, settings, loc))
        queries.append(start_ingest(spark, CLICKSTREAM, settings, loc))
        tracker = SpeedTracker(spark, speed_table, covered)
        producer = Producer(generator, loc.landing, args.rate, args.seconds, args.warmup, args.files_per_second, stop)
        timeout = args.timeout if args.timeout is not None else args.warmup + args.seconds + 120.0
        started = time.monotonic()
        deadline = started + timeout
        producer.start()
        print(
            f"streaming started; producing {producer.per_file} events/file, {args.files_per_second:g} files/s "
            f"for {args.warmup:g}s warm-up + {args.seconds:g}s measured",
            flush=True,
        )

        mapping: dict[str, int] = {}
        next_mapping = 0.0
        next_report = started + 10.0
        timed_out = False
        poll = args.poll_ms / 1000.0
        while True:
            loop_start = time.monotonic()
            if loop_start > deadline:
                timed_out = True
                break
            if producer.error is not None:
                raise RuntimeError(f"producer failed: {producer.error!r}") from producer.error
            check_queries(queries)
            tracker.poll()
            if not producer.is_alive() and loop_start >= next_mapping:
                mapping = file_tags(spark, loc.master, covered)
                next_mapping = time.monotonic() + 1.0
                pending = [f for f in producer.files if mapping.get(f.name) not in tracker.seen]
                if not pending:
                    break
            if loop_start >= next_report:
                print(
                    f"  +{loop_start - started:5.0f}s: {len(producer.files)} files written, speed version "
                    f"{tracker.version}, newest visible tag {tracker.max_tag}",
                    flush=True,
                )
                next_report = loop_start + 10.0
            rest = poll - (time.monotonic() - loop_start)
            if rest > 0:
                time.sleep(rest)
        drained_after = time.monotonic() - started
        stop.set()
        producer.join(timeout=30)
        if not mapping or timed_out:
            mapping = file_tags(spark, loc.master, covered)

        # Per-file latencies.
        master_commit: dict[int, float | None] = {}
        records: list[dict[str, Any]] = []
        for f in producer.files:
            tag = mapping.get(f.name)
            seen = tracker.seen.get(tag) if tag is not None else None
            if tag is not None and tag not in master_commit:
                commit = read_commit(loc.master, tag)
                master_commit[tag] = commit.millis / 1000.0 if commit and commit.millis is not None else None
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
                    "visible": (seen.commit_time - f.written_at) if seen and seen.commit_time is not None else None,
                    "observed": (seen.observed_at - f.written_at) if seen else None,
                    "ingest": (m_time - f.written_at) if m_time is not None else None,
                    "speed": (seen.commit_time - m_time) if seen and seen.commit_time is not None and m_time else None,
                }
            )
        measured = [r for r in records if not r["warmup"]]
        done = [r for r in measured if r["visible"] is not None]
        keys = ("visible", "observed", "ingest", "speed")
        stats = {k: summary([r[k] for r in done if r[k] is not None]) for k in keys}
        produced_events = sum(r["events"] for r in measured)
        produced_lines = sum(r["lines"] for r in measured)
        span = (measured[-1]["written_at"] - measured[0]["written_at"] + producer.interval) if measured else math.nan
        tags_per_file = len({r["tag"] for r in measured if r["tag"] is not None})
        streams = {q.name: progress_stats(q) for q in queries}

        print()
        print(
            f"Freshness (file written -> its events visible in serving.page_activity), "
            f"{len(done)}/{len(measured)} measured files (+{len(records) - len(measured)} warm-up files):"
        )
        header = f"{'latency, seconds':<44} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}"
        print(header)
        print("-" * len(header))
        labels = {
            "visible": "visible (speed commit - written_at)",
            "observed": "observed by poller - written_at",
            "ingest": "  ingest part (master commit - written_at)",
            "speed": "  speed part (speed commit - master commit)",
        }
        for key, label in labels.items():
            s = stats[key]
            print(f"{label:<44} {fmt(s['p50'])} {fmt(s['p95'])} {fmt(s['p99'])} {fmt(s['max'])}")
        print()
        print(
            f"produced: {produced_events:,} events ({produced_lines:,} lines) in {len(measured)} files over "
            f"{span:.1f}s = {produced_events / span:,.0f} events/s (target {args.rate:g}); "
            f"{tags_per_file} ingest commits for them"
        )
        print(
            f"triggers: ingest {settings.ingest.trigger!r} (max {settings.ingest.max_files_per_trigger} files), "
            f"speed {settings.speed.trigger!r}, speed compact_every {settings.speed.compact_every}"
        )
        for name, s in streams.items():
            print(
                f"  {name:<18} {s['batches_with_data']:4d} batches with data, trigger p50 "
                f"{s['trigger_ms_p50']:.0f} ms, p95 {s['trigger_ms_p95']:.0f} ms, max {s['trigger_ms_max']:.0f} ms"
            )
        poll_p50, poll_p95 = (percentile(tracker.poll_seconds, q) * 1000 for q in (50, 95))
        print(
            f"poller: {tracker.polls} polls, {tracker.queries} tag queries, poll p50 {poll_p50:.0f} ms, "
            f"p95 {poll_p95:.0f} ms"
        )
        if timed_out:
            print(f"WARNING: timed out after {timeout:.0f}s; {len(measured) - len(done)} files never became visible")

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
                "generator": {
                    "seed": args.seed,
                    "late_fraction": args.late_fraction,
                    "duplicate_fraction": args.duplicate_fraction,
                    "malformed_fraction": args.malformed_fraction,
                },
            },
            "settings": {
                "ingest_trigger": settings.ingest.trigger,
                "ingest_max_files_per_trigger": settings.ingest.max_files_per_trigger,
                "speed_trigger": settings.speed.trigger,
                "speed_max_files_per_trigger": settings.speed.max_files_per_trigger,
                "speed_compact_every": settings.speed.compact_every,
            },
            "environment": environment(spark, settings),
            "coverage_master_version": covered,
            "latency_seconds": stats,
            "files_measured": len(done),
            "files_written_measured": len(measured),
            "files_written_warmup": len(records) - len(measured),
            "timed_out": timed_out,
            "drained_after_seconds": drained_after,
            "produced": {
                "events": produced_events,
                "lines": produced_lines,
                "span_seconds": span,
                "events_per_second": produced_events / span if span else math.nan,
                "ingest_commits": tags_per_file,
            },
            "streams": streams,
            "poller": {
                "polls": tracker.polls,
                "tag_queries": tracker.queries,
                "poll_ms_p50": poll_p50,
                "poll_ms_p95": poll_p95,
            },
            "tags": {str(t): asdict(s) for t, s in sorted(tracker.seen.items())},
            "files": records,
        }
        write_results(args.output, NAME, out)
        return 1 if timed_out or not done else 0
    finally:
        stop.set()
        if producer is not None and producer.is_alive():
            producer.join(timeout=30)
        try:
            stop_when_idle(queries, 60.0)
        except Exception as exc:  # stop the rest regardless
            print(f"stopping the queries: {exc}", file=sys.stderr)
            for q in queries:
                if q.isActive:
                    q.stop()
        spark.stop()
        if own_workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
