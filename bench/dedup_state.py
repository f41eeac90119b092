"""The ingest dedup's time per micro-batch against the keys it holds: Spark's dropDuplicatesWithinWatermark (the
earlier dedup) beside the project's TTL dedup (``FirstCopies.java``), at 1 M, 5 M and 10 M keys.

Each dedup runs as ingest runs it (the same session settings: RocksDB state store, changelog checkpointing, no
no-data micro-batches; the same key and columns; the same 15-minute horizon by default) on Spark's
``rate-micro-batch`` source, which gives exactly ``--rows`` new event ids per micro-batch (10,000 events/s at a
2-second trigger is 20,000), into Spark's ``noop`` sink: only the read and the dedup are measured, nothing is
written. The state is preloaded, not waited for: the query restarts on its checkpoint with ``--preload-rows`` a
micro-batch until it holds the next mark's keys (within the horizon, so nothing expires), then runs
``--batches`` micro-batches of ``--rows``, and the medians after ``--skip`` of them are reported: the micro-batch
(``triggerExecution``), its ``addBatch``, the state operator's update, removal (eviction) and commit times, the
bytes RocksDB read through iterators (a scan of the state), and the keys it holds (``numRowsTotal``: stopping a
query cancels the micro-batch after the last counted one, which the next start replays, so a mark is reached
give or take one preload micro-batch).

    .venv/bin/python bench/dedup_state.py                       # 1 M, 5 M, 10 M keys; both dedups
    .venv/bin/python bench/dedup_state.py --marks 1000000 --only first_copies

Prints a table and, per dedup, the 10 M / 1 M ratio of the micro-batch time (target: flat within ±20 %);
writes ``bench/results/dedup_state.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import add_common_args, environment, work_directory, write_results

NAME = "dedup_state"
DEDUPS = ("watermark", "first_copies")
BATCH_LIMIT_SECONDS = 600.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--marks", default="1000000,5000000,10000000", help="keys held at each measurement")
    parser.add_argument("--rows", type=int, default=20_000, help="new event ids per measured micro-batch (20000)")
    parser.add_argument("--preload-rows", type=int, default=1_000_000, help="event ids per preload micro-batch")
    parser.add_argument("--batches", type=int, default=8, help="measured micro-batches per mark (8)")
    parser.add_argument("--skip", type=int, default=2, help="of which left out of the medians (2)")
    parser.add_argument("--horizon", default="15 minutes", help="ingest.dedup_horizon (default 15 minutes)")
    parser.add_argument("--only", choices=DEDUPS, help="run one dedup only")
    add_common_args(parser, NAME)
    args = parser.parse_args(argv)
    args.mark_list = sorted(int(m) for m in args.marks.split(",") if m.strip())
    if not args.mark_list or args.batches <= args.skip:
        parser.error("--marks needs at least one count, and --batches must exceed --skip")
    return args


def dedup_frame(spark: Any, dedup: str, rows_per_batch: int, prefix: str, horizon: str) -> Any:
    """The ingest dedup over ``rows_per_batch`` new ids a micro-batch, with ingest's key and columns."""
    from pyspark.sql import functions as F

    from lambda_pipeline.core.durations import duration_seconds
    from lambda_pipeline.core.jvm import first_copies
    from lambda_pipeline.core.views import INGESTED_AT, RAW, SOURCE_FILE
    from lambda_pipeline.ingestion.routing import (
        BRANCH,
        DEDUP_KEY,
        DEDUP_ORDER,
        FIRST_COPY,
        REASON,
        VALID_KEY_PREFIX,
    )

    lines = (
        spark.readStream.format("rate-micro-batch")
        .option("rowsPerBatch", rows_per_batch)
        .option("numPartitions", 2)
        .load()
        .select(
            F.concat(F.lit(f'{{"event_id": "{prefix}'), F.col("value").cast("string"), F.lit('"}')).alias(RAW),
            F.lit("bench").alias(SOURCE_FILE),
            F.lit(None).cast("string").alias(REASON),
            F.concat(F.lit(f"{VALID_KEY_PREFIX}{prefix}"), F.col("value").cast("string")).alias(DEDUP_KEY),
            F.current_timestamp().alias(INGESTED_AT),
        )
    )
    if dedup == "first_copies":
        horizon_ms = int(duration_seconds(horizon) * 1000)
        return first_copies(lines, DEDUP_KEY, VALID_KEY_PREFIX, DEDUP_ORDER, FIRST_COPY, horizon_ms)
    keyed = lines.withWatermark(INGESTED_AT, horizon).repartition(DEDUP_KEY)
    firsts = keyed.dropDuplicatesWithinWatermark([DEDUP_KEY]).withColumn(BRANCH, F.lit("first"))
    return keyed.withColumn(BRANCH, F.lit("all")).unionByName(firsts)


def run_batches(spark: Any, frame: Any, checkpoint: Path, batches: int) -> list[dict[str, Any]]:
    """Run ``batches`` micro-batches on ``checkpoint``, then stop; each one's progress."""
    query = (
        frame.writeStream.format("noop")
        .option("checkpointLocation", str(checkpoint))
        .trigger(processingTime="0 seconds")
    )
    started = query.start()
    progress: list[dict[str, Any]] = []
    seen: set[int] = set()
    deadline = time.monotonic() + BATCH_LIMIT_SECONDS * max(1, batches)
    try:
        while len(progress) < batches:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{batches} micro-batches took over {BATCH_LIMIT_SECONDS * batches:.0f}s")
            if started.exception() is not None:
                raise RuntimeError(f"the query failed: {started.exception()}")
            for item in started.recentProgress:
                if item["batchId"] not in seen and item.get("numInputRows", 0) > 0:
                    seen.add(item["batchId"])
                    progress.append(item)
            started.awaitTermination(0.5)  # bounded wait for the next micro-batch
    finally:
        started.stop()
    return progress[:batches]


def measured(progress: list[dict[str, Any]], skip: int) -> dict[str, Any]:
    def median(values: list[float]) -> float:
        return float(statistics.median(values)) if values else float("nan")

    kept = progress[skip:]
    state = [p["stateOperators"][0] if p.get("stateOperators") else {} for p in kept]
    return {
        "micro_batch_ms": median([p["durationMs"]["triggerExecution"] for p in kept]),
        "add_batch_ms": median([p["durationMs"].get("addBatch", 0) for p in kept]),
        "state_update_ms": median([s.get("allUpdatesTimeMs", 0) for s in state]),
        "state_removal_ms": median([s.get("allRemovalsTimeMs", 0) for s in state]),
        "state_commit_ms": median([s.get("commitTimeMs", 0) for s in state]),
        "keys_held": int(median([s.get("numRowsTotal", 0) for s in state])),
        "bytes_read_by_iterator": median(
            [s.get("customMetrics", {}).get("rocksdbTotalBytesReadThroughIterator", 0) for s in state]
        ),
        "rows_per_batch": kept[-1]["numInputRows"] if kept else None,
        "batches": [
            {"batch": p["batchId"], "ms": p["durationMs"]["triggerExecution"], "state": s}
            for p, s in zip(kept, state, strict=True)
        ],
    }


def run_dedup(spark: Any, dedup: str, args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    checkpoint = workdir / f"checkpoint-{dedup}"
    held, results = 0, []
    for number, mark in enumerate(args.mark_list):
        preload = mark - held
        batches = -(-preload // args.preload_rows) if preload > 0 else 0
        started = time.perf_counter()
        if batches:  # each restart reads ids of its own prefix: new keys whatever the source's offsets
            frame = dedup_frame(spark, dedup, args.preload_rows, f"p{number}-", args.horizon)
            run_batches(spark, frame, checkpoint, batches)
            held += batches * args.preload_rows
        preloaded = time.perf_counter() - started
        frame = dedup_frame(spark, dedup, args.rows, f"m{number}-", args.horizon)
        progress = run_batches(spark, frame, checkpoint, args.batches)
        held += args.batches * args.rows
        result = {
            "dedup": dedup,
            "keys_held": mark,
            "preload_seconds": round(preloaded, 1),
            **measured(progress, args.skip),
        }
        print(
            f"{dedup:>12} {result['keys_held']:>11,} keys: micro-batch {result['micro_batch_ms']:7.0f} ms "
            f"(state update {result['state_update_ms']:.0f}, removal {result['state_removal_ms']:.0f}, "
            f"commit {result['state_commit_ms']:.0f}; {result['bytes_read_by_iterator'] / 2**20:.0f} MB read by "
            f"iterator); preload {preloaded:.0f}s",
            flush=True,
        )
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    from lambda_pipeline.core.config_loader import load_settings
    from lambda_pipeline.core.session import get_spark

    args = parse_args(argv)
    settings = load_settings(args.config, args.override)
    spark = get_spark(settings.spark, app_name="bench-dedup-state")
    spark.sparkContext.setLogLevel("OFF")  # stopping a query after its last counted micro-batch cancels the next
    rows: list[dict[str, Any]] = []
    with work_directory(args, "bench-dedup-") as workdir:
        for dedup in [args.only] if args.only else DEDUPS:
            rows += run_dedup(spark, dedup, args, workdir)
    ratios = {}
    for dedup in DEDUPS:
        mine = [r for r in rows if r["dedup"] == dedup]
        if len(mine) >= 2:
            ratios[dedup] = round(mine[-1]["micro_batch_ms"] / mine[0]["micro_batch_ms"], 2)
            flat = abs(ratios[dedup] - 1) <= 0.2
            print(
                f"{dedup}: micro-batch at {mine[-1]['keys_held']:,} / at {mine[0]['keys_held']:,} keys = "
                f"{ratios[dedup]}x ({'flat within 20%' if flat else 'not flat'})"
            )
    write_results(
        args.output,
        NAME,
        {
            "rows_per_batch": args.rows,
            "horizon": args.horizon,
            "marks": args.mark_list,
            "results": rows,
            "last_over_first": ratios,
            "environment": environment(spark, settings),
        },
    )
    print(f"results written to {args.output}")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
