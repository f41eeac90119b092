"""The floor under each ingest commit: one Delta append of a cached frame, and what its optional parts cost.

An ingest micro-batch makes three Delta commits (master, speed partials, quarantine). This script appends a
cached frame shaped like a master micro-batch (``--rows`` events with their raw text) and a small one (20 rows,
a quarantine's size) to fresh tables, ``--appends`` times each, with Delta's defaults and with each optional
part turned off: the per-file statistics (``spark.databricks.delta.stats.collect``) and the ``.crc`` checksum
(``spark.databricks.delta.writeChecksumFile.enabled``). The variants take turns at every round, so warm-up and
noise fall on all of them alike. Every tenth commit of a table also writes a log checkpoint: the median leaves
those out, the mean and the maximum show them.

    .venv/bin/python bench/delta_append_cost.py --appends 40

It prints the medians and ratios to the defaults, and writes ``bench/results/delta_append_cost.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import add_common_args, environment, write_results

NAME = "delta_append_cost"
VARIANTS: dict[str, dict[str, str]] = {
    "defaults": {},
    "no statistics": {"spark.databricks.delta.stats.collect": "false"},
    "no checksum": {"spark.databricks.delta.writeChecksumFile.enabled": "false"},
    "neither": {
        "spark.databricks.delta.stats.collect": "false",
        "spark.databricks.delta.writeChecksumFile.enabled": "false",
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appends", type=int, default=40, help="appends per variant and frame (40)")
    parser.add_argument("--skip", type=int, default=5, help="first appends left out (5)")
    parser.add_argument("--rows", type=int, default=10_000, help="rows of the master-like frame (10000)")
    add_common_args(parser, NAME)
    args = parser.parse_args(argv)
    if args.appends <= args.skip or args.skip < 0:
        parser.error("--appends must exceed --skip >= 0")
    return args


def master_like(spark: Any, rows: int) -> Any:
    """A frame with master's columns and a raw text per event, as one ingest micro-batch writes."""
    from pyspark.sql import functions as F

    event = F.concat(F.lit("e"), F.col("id").cast("string"))
    raw = F.concat(F.lit('{"event_id":"'), event, F.lit('","user_id":"u1","page":"/p/1","event_type":"view"}'))
    return spark.range(rows).select(
        event.alias("event_id"),
        (F.col("id") % 997).cast("string").alias("user_id"),
        F.concat(F.lit("/p/"), (F.col("id") % 50).cast("string")).alias("page"),
        F.lit("view").alias("event_type"),
        F.current_timestamp().alias("event_time"),
        F.lit(7).cast("long").alias("ingest_tag"),
        F.current_timestamp().alias("ingested_at"),
        F.lit("kafka:topic:0").alias("source_file"),
        raw.alias("raw"),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from lambda_pipeline.core.config_loader import load_settings
    from lambda_pipeline.core.session import get_spark

    settings = load_settings(args.config, args.override)
    spark = get_spark(settings.spark, app_name=NAME)
    big = master_like(spark, args.rows).coalesce(1).persist()
    small = big.limit(20).persist()
    frames = {f"{args.rows} rows": big, "20 rows": small}
    for frame in frames.values():
        frame.count()
    times: dict[tuple[str, str], list[float]] = {(v, f): [] for v in VARIANTS for f in frames}
    with tempfile.TemporaryDirectory(prefix="lp-append-cost-") as root:
        for _ in range(args.appends):
            for variant, frame_name in times:
                conf = VARIANTS[variant]
                for key, value in conf.items():
                    spark.conf.set(key, value)
                started = time.perf_counter()
                table = f"{root}/{variant.replace(' ', '_')}_{frame_name.replace(' ', '_')}"
                frames[frame_name].write.format("delta").mode("append").save(table)
                times[(variant, frame_name)].append((time.perf_counter() - started) * 1000)
                for key in conf:
                    spark.conf.unset(key)
    rows = []
    for (variant, frame_name), values in times.items():
        kept = values[args.skip :]
        rows.append(
            {
                "variant": variant,
                "frame": frame_name,
                "median_ms": round(statistics.median(kept), 1),
                "mean_ms": round(statistics.mean(kept), 1),
                "max_ms": round(max(kept), 1),
            }
        )
    for row in rows:
        base = next(r for r in rows if r["variant"] == "defaults" and r["frame"] == row["frame"])
        row["median_over_defaults"] = round(row["median_ms"] / base["median_ms"], 2)
        print(
            f"{row['frame']:>12} {row['variant']:>14}: median {row['median_ms']:6.0f} ms "
            f"({row['median_over_defaults']:.2f}x), mean {row['mean_ms']:6.0f}, max {row['max_ms']:6.0f}"
        )
    write_results(
        args.output, NAME, {"appends": args.appends, "results": rows, "environment": environment(spark, settings)}
    )
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
