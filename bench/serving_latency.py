"""Serving query latency: the merged view (batch + speed) vs the batch view alone, and the cost of re-pinning.

Prepares a work directory through the real pipeline: ``--events`` valid events from the generator, of which
``--batch-share`` land first (in ``--batch-files`` files), are ingested (``start_ingest(once=True)``) and
covered by a published batch (``run_batch``); the rest land in ``--speed-files`` files, are ingested one
file per micro-batch (one master commit, i.e. one ingest tag, each, and one speed commit of that tag,
so the speed table has several small commits
as it would in a running deployment).

Then, on one warm session, with one pin taken by ``ServingLayer.take_pin()``:

(a) ``merged``    -- ``SELECT page, sum(events) FROM serving.page_activity GROUP BY page``, collected;
(b) ``batch``     -- the same over ``batch.page_activity``;
(c) ``take_pin``  -- ``ServingLayer.take_pin()``: take a new pin at the newest versions;
plus, for context:
(d) ``speed``     -- the same query over ``speed.page_activity``;
(e) ``query_api`` -- ``ServingLayer.query(sql)`` for (a): read-only check + new pin + query, collected.

(a), (b) and (d) run through the guard at that one pin (``query(sql, new_pin=False)``), so re-pinning is
measured only in (c) and (e). Each case runs
``--warmup`` times untimed, then ``--queries`` times timed, the order of the cases rotating per round.
Reported: p50/p95 (and min/mean/max) in milliseconds per case and the ratio merged/batch.

Run (full size, done later):
    .venv/bin/python bench/serving_latency.py --events 200000 --queries 30
Small smoke test:
    .venv/bin/python bench/serving_latency.py --events 20000 --queries 10
Results: a table on stdout and JSON in bench/results/serving_latency.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _common import add_common_args, environment, summary, write_results

from lambda_pipeline.batch_layer.job import run_batch
from lambda_pipeline.core.config import Settings
from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.session import get_spark
from lambda_pipeline.core.tables import latest_version, sql_path
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM, PAGE_ACTIVITY
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.pipelines.ingest import start_ingest
from lambda_pipeline.serving_layer.catalog import ServingLayer

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

NAME = "serving_latency"
QUERY = "SELECT page, sum(events) AS events FROM {view} GROUP BY page"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="valid events in total (default 200000)")
    parser.add_argument(
        "--batch-share", type=float, default=0.8, help="share of the events covered by the batch layer (default 0.8)"
    )
    parser.add_argument("--batch-files", type=int, default=4, help="files of the batch-covered part (default 4)")
    parser.add_argument(
        "--speed-files", type=int, default=5, help="files of the speed part, one ingest commit each (default 5)"
    )
    parser.add_argument("--queries", type=int, default=30, help="timed runs of each case (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs of each case first (default 3)")
    parser.add_argument("--seed", type=int, default=11, help="generator seed (default 11)")
    add_common_args(parser, NAME)
    args = parser.parse_args(argv)
    if args.events < 100 or not 0.0 < args.batch_share < 1.0:
        parser.error("--events must be >= 100 and --batch-share within (0, 1)")
    if args.batch_files < 1 or args.speed_files < 1 or args.queries < 1 or args.warmup < 0:
        parser.error("--batch-files, --speed-files, --queries must be >= 1 and --warmup >= 0")
    return args


# ---- preparation -----------------------------------------------------------------------------------------


def prepare(spark: SparkSession, settings: Settings, loc: Locations, args: argparse.Namespace) -> dict[str, Any]:
    """Batch-covered part, then a speed part in several ingest commits and speed micro-batches."""
    generator = ClickstreamGenerator(args.seed)
    batch_events = round(args.events * args.batch_share)
    speed_events = args.events - batch_events
    t0 = time.perf_counter()

    generator.write(loc.landing, batch_events, files=args.batch_files)
    start_ingest(spark, CLICKSTREAM, settings, loc, once=True).awaitTermination()
    coverage, _ = run_batch(spark, CLICKSTREAM, loc)
    print(
        f"  batch part: {batch_events:,} events ingested, coverage = master version {coverage.master_version} "
        f"(+{time.perf_counter() - t0:.0f}s)",
        flush=True,
    )

    # One landing file per ingest micro-batch (= one master commit, one tag, one speed commit):
    # maxFilesPerTrigger is a read option, so changing it between runs keeps the checkpoints valid.
    one_by_one = load_settings(args.config, [*args.override, "ingest.max_files_per_trigger=1"])
    generator.write(loc.landing, speed_events, files=args.speed_files)
    start_ingest(spark, CLICKSTREAM, one_by_one, loc, once=True).awaitTermination()
    speed_table = loc.speed_partials(PAGE_ACTIVITY.name)
    speed_files = spark.sql(f"DESCRIBE DETAIL {sql_path(speed_table)}").first()
    info = {
        "batch_events": batch_events,
        "speed_events": speed_events,
        "coverage_master_version": coverage.master_version,
        "master_version": latest_version(spark, loc.master),
        "speed_table_version": latest_version(spark, speed_table),
        "speed_table_files": int(speed_files.numFiles),
        "batch_view_files": int(
            spark.sql(f"DESCRIBE DETAIL {sql_path(loc.batch_view(PAGE_ACTIVITY.name))}").first().numFiles
        ),
        "prepare_seconds": time.perf_counter() - t0,
    }
    print(
        f"  speed part: {speed_events:,} events in master versions {coverage.master_version + 1}.."
        f"{info['master_version']}, speed table version {info['speed_table_version']} "
        f"({info['speed_table_files']} files) (+{info['prepare_seconds']:.0f}s)",
        flush=True,
    )
    return info


# ---- timing ------------------------------------------------------------------------------------------------


def open_workdir(args: argparse.Namespace, prefix: str) -> tuple[bool, Path, Settings, Locations]:
    """(whether the work directory is this run's own, its path, the settings, the locations), created."""
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix=prefix)) if own_workdir else Path(args.workdir)
    settings = load_settings(args.config, args.override)
    loc = Locations.create(settings, workdir)
    loc.ensure_local_dirs()
    print(f"work directory: {loc.workdir}", flush=True)
    return own_workdir, workdir, settings, loc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    own_workdir, workdir, settings, loc = open_workdir(args, "bench-serving-")
    spark = get_spark(settings.spark, app_name=f"bench-{NAME}")
    try:
        print("preparing the work directory:", flush=True)
        prepared = prepare(spark, settings, loc, args)

        serving = ServingLayer(spark, CLICKSTREAM, loc)
        serving.take_pin()
        view = PAGE_ACTIVITY.name
        sql = {layer: QUERY.format(view=f"{layer}.{view}") for layer in ("serving", "batch", "speed")}
        cases: dict[str, tuple[str, Callable[[], object]]] = {
            "merged": (sql["serving"], lambda: serving.query(sql["serving"], new_pin=False).collect()),
            "batch": (sql["batch"], lambda: serving.query(sql["batch"], new_pin=False).collect()),
            "take_pin": ("ServingLayer.take_pin()", serving.take_pin),
            "speed": (sql["speed"], lambda: serving.query(sql["speed"], new_pin=False).collect()),
            "query_api": (f"ServingLayer.query({sql['serving']!r})", lambda: serving.query(sql["serving"]).collect()),
        }
        names = list(cases)
        for _ in range(args.warmup):
            for n in names:
                cases[n][1]()
        seconds: dict[str, list[float]] = {n: [] for n in names}
        for i in range(args.queries):
            shift = i % len(names)
            for n in names[shift:] + names[:shift]:
                t = time.perf_counter()
                cases[n][1]()
                seconds[n].append(time.perf_counter() - t)

        # Sanity: the merged view counts every master event once (batch + speed, no overlap).
        totals = {
            layer: int(serving.query(f"SELECT coalesce(sum(events), 0) FROM {layer}.{view}").first()[0])
            for layer in ("serving", "batch", "speed")
        }
        master_rows = int(spark.sql(f"SELECT count(*) FROM {sql_path(loc.master)}").first()[0])
        ok = totals["serving"] == totals["batch"] + totals["speed"] == master_rows
        pinned = serving.take_pin()[view]

        stats = {n: summary(s, 1000.0) for n, s in seconds.items()}
        ratios = {
            "merged/batch_p50": stats["merged"]["p50"] / stats["batch"]["p50"],
            "merged/batch_p95": stats["merged"]["p95"] / stats["batch"]["p95"],
        }
        print()
        print(
            f"Serving latency over {args.events:,} events ({prepared['batch_events']:,} batch-covered, "
            f"{prepared['speed_events']:,} in speed), {args.queries} timed runs per case "
            f"after {args.warmup} warm-up(s):"
        )
        header = f"{'case':<10} {'p50 ms':>9} {'p95 ms':>9} {'min ms':>9} {'mean ms':>9} {'max ms':>9}  what"
        print(header)
        print("-" * len(header))
        for n in names:
            s = stats[n]
            what = cases[n][0]
            print(
                f"{n:<10} {s['p50']:>9.1f} {s['p95']:>9.1f} {s['min']:>9.1f} {s['mean']:>9.1f} {s['max']:>9.1f}  "
                f"{what[:70]}"
            )
        print()
        print(f"merged/batch: p50 {ratios['merged/batch_p50']:.2f}x, p95 {ratios['merged/batch_p95']:.2f}x")
        print(
            f"pinned: coverage master version {pinned.coverage.master_version}, batch view version "
            f"{pinned.batch_version}, speed table version {pinned.speed_version} "
            f"({prepared['speed_table_files']} speed files, {prepared['batch_view_files']} batch-view files)"
        )
        print(
            f"totals check: {'OK' if ok else 'MISMATCH'} (serving {totals['serving']:,} = batch "
            f"{totals['batch']:,} + speed {totals['speed']:,}; master rows {master_rows:,})"
        )

        out = {
            "parameters": {
                "events": args.events,
                "batch_share": args.batch_share,
                "batch_files": args.batch_files,
                "speed_files": args.speed_files,
                "queries": args.queries,
                "warmup": args.warmup,
                "seed": args.seed,
                "overrides": args.override,
                "workdir": loc.workdir,
            },
            "environment": environment(spark, settings),
            "prepared": prepared,
            "pinned": {
                "coverage_master_version": pinned.coverage.master_version,
                "batch_version": pinned.batch_version,
                "speed_version": pinned.speed_version,
            },
            "cases": {n: {"what": cases[n][0], "ms": stats[n], "seconds": seconds[n]} for n in names},
            "ratios": ratios,
            "totals_check": {"ok": ok, **totals, "master_rows": master_rows},
        }
        write_results(args.output, NAME, out)
        return 0 if ok else 1
    finally:
        spark.stop()
        if own_workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
