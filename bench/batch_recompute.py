"""Batch recompute throughput: the project's batch layer vs hand-written PySpark over the same snapshot.

Builds a master Delta table of ``--events`` synthetic clicks directly with Spark (one append commit, the
project's master schema, about 1% of rows repeating an earlier ``event_id`` with another ``ingest_tag``,
20 pages, 100k users, event times spread over one day, ingest tags spread over about 100 values), then
times, in one Spark session and over the same pinned snapshot (``versionAsOf V``):

(a) ``project``      -- ``batch_layer.job.stage_batch``: exact dedup by event id (repeated ids + first tag, one join)
                        and the ``page_activity`` partial states (count, sum, max, HLL sketch) overwritten
                        into the batch-view Delta table;
(b) ``hand_dedup``   -- ``dropDuplicates(["event_id"])`` then ``groupBy(page, window(event_time, 1 minute))``
                        with count, sum(duration_ms), max(duration_ms), approx_count_distinct(user_id),
                        overwritten into another Delta table;
(c) ``hand_nodedup`` -- the same group-by without dedup (reference: the cost of the aggregation alone).

Each case runs ``--warmup`` times untimed, then ``--repeat`` times timed; the order of the cases rotates
from one repetition to the next so that no case always runs first or last. Reported: best and median
seconds, input events per second (rows of the snapshot, duplicates included), and the time ratios
(a)/(b) and (a)/(c) (above 1 = the project's batch job is slower).

Note the two dedups are not identical in meaning: the project keeps the copy with the smallest ingest tag
(deterministic), ``dropDuplicates`` keeps an arbitrary copy; here the copies of an event differ only in
ingest columns, so the aggregates agree. The project stores an HLL sketch per group (mergeable), the
hand-written job a final ``approx_count_distinct`` estimate.

Run (full size, done later):
    .venv/bin/python bench/batch_recompute.py --events 10000000 --repeat 3
Small smoke test:
    .venv/bin/python bench/batch_recompute.py --events 200000 --repeat 1
Spark settings can be overridden like the CLI's --set, e.g. ``--override spark.conf.spark.driver.memory=4g``.
Results: a table on stdout and JSON in bench/results/batch_recompute.json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _common import add_common_args, environment, write_results

from lambda_pipeline.batch_layer.job import stage_batch
from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.session import get_spark
from lambda_pipeline.core.tables import ensure_table, latest_version
from lambda_pipeline.pipelines.clickstream import CLICKS, CLICKSTREAM, PAGE_ACTIVITY
from lambda_pipeline.pipelines.generator import PAGES

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

NAME = "batch_recompute"
BASE_TIME_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY_MS = 86_400_000
USERS = 100_000
TAGS = 100
DUPLICATE_EVERY = 100  # one row in 100 repeats an earlier event id


@dataclass
class CaseResult:
    name: str
    description: str
    seconds: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="rows of the master table (default 10M)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each case (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each case first (default 1)")
    parser.add_argument(
        "--files",
        type=int,
        default=None,
        help="data files of the master table (default: one per 500k rows, at least 2)",
    )
    add_common_args(parser, NAME)
    args = parser.parse_args(argv)
    if args.events < 1000:
        parser.error("--events must be at least 1000")
    if args.repeat < 1 or args.warmup < 0:
        parser.error("--repeat must be >= 1 and --warmup >= 0")
    return args


# ---- the master table ------------------------------------------------------------------------------


def synthetic_master(spark: SparkSession, events: int, files: int) -> DataFrame:
    """``events`` rows in the master schema; rows with id % 100 == 99 repeat the event of another row.

    Every column but the ingest ones derives from the event key, so the copies of an event are identical
    in everything the view aggregates; the copy carries the ingest tag of its own row.
    """
    from pyspark.sql import functions as F

    shift = (events // 2 // DUPLICATE_EVERY) * DUPLICATE_EVERY + 1  # lands on a row with id % 100 == 0
    key = F.expr(
        f"CASE WHEN id % {DUPLICATE_EVERY} = {DUPLICATE_EVERY - 1} THEN pmod(id + {shift}, {events}) ELSE id END"
    )
    pages = ", ".join(f"'{p}'" for p in PAGES)

    def h(salt: str) -> str:
        return f"xxhash64(key, '{salt}')"

    frame = (
        spark.range(0, events, 1, files)
        .withColumn("key", key)
        .withColumn("tag", F.expr(f"(id * {TAGS}) div {events} + 1"))
        .select(
            F.expr(
                f"concat(lpad(hex(pmod({h('id')}, 281474976710656)), 12, '0'), '-', lpad(cast(key AS string), 10, '0'))"
            ).alias("event_id"),
            F.expr(f"concat('u', lpad(cast(pmod({h('user')}, {USERS}) AS string), 6, '0'))").alias("user_id"),
            F.expr(f"element_at(array({pages}), cast(pmod({h('page')}, {len(PAGES)}) + 1 AS int))").alias("page"),
            F.expr(f"timestamp_millis({BASE_TIME_MS} + pmod({h('time')}, {DAY_MS}))").alias("event_time"),
            F.expr(f"50 + pmod({h('duration')}, 119950)").alias("duration_ms"),
            F.col("tag").alias("ingest_tag"),
            F.expr(f"timestamp_millis({BASE_TIME_MS + DAY_MS} + tag * 60000)").alias("ingested_at"),
            F.expr("concat('file:/bench/landing/clicks-', lpad(cast(tag AS string), 6, '0'), '.jsonl')").alias(
                "source_file"
            ),
        )
    )
    # The line as it came in, which master keeps for backfills: never read by a view (columns are pruned).
    frame = frame.withColumn("raw", F.to_json(F.struct(*CLICKS.schema.fieldNames())))
    schema = CLICKS.master_schema
    return frame.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])


def build_master(spark: SparkSession, loc: Locations, events: int, files: int) -> int:
    """Create the master table (version 0, empty) and append the synthetic events as one commit."""
    ensure_table(spark, loc.master, CLICKS.master_schema)
    synthetic_master(spark, events, files).write.format("delta").mode("append").save(loc.master)
    return latest_version(spark, loc.master)


# ---- the cases -------------------------------------------------------------------------------------


def handwritten(spark: SparkSession, master: str, version: int, out: str, *, dedup: bool) -> None:
    from pyspark.sql import functions as F

    events = spark.read.format("delta").option("versionAsOf", version).load(master)
    if dedup:
        events = events.dropDuplicates(["event_id"])
    (
        events.groupBy("page", F.window("event_time", "1 minute").alias("w"))
        .agg(
            F.count(F.lit(1)).alias("events"),
            F.sum("duration_ms").alias("total_duration_ms"),
            F.max("duration_ms").alias("max_duration_ms"),
            F.approx_count_distinct("user_id").alias("unique_users"),
        )
        .select(
            "page",
            F.col("w.start").alias("window_start"),
            F.col("w.end").alias("window_end"),
            "events",
            "total_duration_ms",
            "max_duration_ms",
            "unique_users",
        )
        .write.format("delta")
        .mode("overwrite")
        .save(out)
    )


def make_cases(spark: SparkSession, loc: Locations, version: int) -> dict[str, tuple[str, Callable[[], None]]]:
    dedup_out = f"{loc.warehouse}/bench/hand_dedup"
    nodedup_out = f"{loc.warehouse}/bench/hand_nodedup"
    return {
        "project": (
            "stage_batch(): exact dedup + page_activity partials -> batch view",
            lambda: stage_batch(spark, CLICKSTREAM, loc, master_version=version),
        ),
        "hand_dedup": (
            "dropDuplicates(event_id) + groupBy(page, 1-min window) -> Delta",
            lambda: handwritten(spark, loc.master, version, dedup_out, dedup=True),
        ),
        "hand_nodedup": (
            "groupBy(page, 1-min window), no dedup (reference) -> Delta",
            lambda: handwritten(spark, loc.master, version, nodedup_out, dedup=False),
        ),
    }


def check_outputs(spark: SparkSession, loc: Locations, events: int) -> dict[str, Any]:
    """Cheap sanity check over the (small) outputs: both dedups count the same events and groups."""
    from pyspark.sql import functions as F

    def totals(path: str) -> tuple[int, int]:
        row = spark.read.format("delta").load(path).agg(F.sum("events"), F.count(F.lit(1))).first()
        return int(row[0] or 0), int(row[1])

    # The batch view holds partial states; its "events" state is count(1) per group, summable as is.
    project_events, project_groups = totals(loc.batch_view(PAGE_ACTIVITY.name))
    dedup_events, dedup_groups = totals(f"{loc.warehouse}/bench/hand_dedup")
    nodedup_events, nodedup_groups = totals(f"{loc.warehouse}/bench/hand_nodedup")
    ok = project_events == dedup_events and project_groups == dedup_groups and nodedup_events == events
    return {
        "ok": ok,
        "project_events": project_events,
        "project_groups": project_groups,
        "hand_dedup_events": dedup_events,
        "hand_dedup_groups": dedup_groups,
        "hand_nodedup_events": nodedup_events,
        "hand_nodedup_groups": nodedup_groups,
        "duplicate_rows": events - dedup_events,
    }


# ---- reporting ---------------------------------------------------------------------------------------


def print_table(results: dict[str, CaseResult], events: int) -> None:
    header = f"{'case':<14} {'best s':>9} {'median s':>9} {'best ev/s':>12} {'median ev/s':>12}  description"
    print(header)
    print("-" * len(header))
    for r in results.values():
        print(
            f"{r.name:<14} {r.best:>9.2f} {r.median:>9.2f} {events / r.best:>12,.0f} {events / r.median:>12,.0f}"
            f"  {r.description}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="bench-batch-")) if own_workdir else Path(args.workdir)
    files = args.files or max(2, -(-args.events // 500_000))
    settings = load_settings(args.config, args.override)
    loc = Locations.create(settings, workdir)
    loc.ensure_local_dirs()
    print(f"work directory: {loc.workdir}", flush=True)
    spark = get_spark(settings.spark, app_name=f"bench-{NAME}")
    try:
        t0 = time.perf_counter()
        version = build_master(spark, loc, args.events, files)
        build_seconds = time.perf_counter() - t0
        print(
            f"master: {args.events:,} rows in {files} files, version {version}, built in {build_seconds:.1f}s",
            flush=True,
        )

        cases = make_cases(spark, loc, version)
        names = list(cases)
        results = {n: CaseResult(n, cases[n][0]) for n in names}
        for i in range(args.warmup):
            for n in names:
                t = time.perf_counter()
                cases[n][1]()
                print(f"  warmup {i + 1}: {n:<13} {time.perf_counter() - t:7.2f}s", flush=True)
        runs: list[dict[str, Any]] = []
        for i in range(args.repeat):
            shift = i % len(names)
            order = names[shift:] + names[:shift]
            for n in order:
                t = time.perf_counter()
                cases[n][1]()
                seconds = time.perf_counter() - t
                results[n].seconds.append(seconds)
                runs.append({"repeat": i + 1, "case": n, "seconds": seconds})
                print(f"  run {i + 1}/{args.repeat}: {n:<13} {seconds:7.2f}s", flush=True)

        check = check_outputs(spark, loc, args.events)
        a, b, c = results["project"], results["hand_dedup"], results["hand_nodedup"]
        ratios = {
            "project/hand_dedup_best": a.best / b.best,
            "project/hand_dedup_median": a.median / b.median,
            "project/hand_nodedup_best": a.best / c.best,
            "project/hand_nodedup_median": a.median / c.median,
        }
        print()
        print(
            f"Batch recompute over {args.events:,} master rows (snapshot version {version}), "
            f"{args.repeat} timed run(s) per case after {args.warmup} warm-up(s):"
        )
        print_table(results, args.events)
        print()
        print("time ratios (>1 = project slower):")
        for k, v in ratios.items():
            print(f"  {k:<30} {v:6.2f}x")
        print(
            f"output check: {'OK' if check['ok'] else 'MISMATCH'} "
            f"(project {check['project_events']:,} events / {check['project_groups']:,} groups; "
            f"hand dedup {check['hand_dedup_events']:,} / {check['hand_dedup_groups']:,}; "
            f"no dedup {check['hand_nodedup_events']:,}; duplicate rows {check['duplicate_rows']:,})"
        )

        out = {
            "parameters": {
                "events": args.events,
                "files": files,
                "repeat": args.repeat,
                "warmup": args.warmup,
                "overrides": args.override,
                "workdir": loc.workdir,
            },
            "environment": environment(spark, settings),
            "master": {
                "version": version,
                "build_seconds": build_seconds,
                "pages": len(PAGES),
                "users": USERS,
                "tags": TAGS,
                "duplicate_every": DUPLICATE_EVERY,
            },
            "cases": {
                n: {
                    **asdict(r),
                    "best": r.best,
                    "median": r.median,
                    "events_per_second_best": args.events / r.best,
                    "events_per_second_median": args.events / r.median,
                }
                for n, r in results.items()
            },
            "ratios": ratios,
            "runs": runs,
            "output_check": check,
        }
        write_results(args.output, NAME, out)
        return 0 if check["ok"] else 1
    finally:
        spark.stop()
        if own_workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
