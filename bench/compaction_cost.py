"""What one compaction of master costs, by ``maintenance.compact_target_mb``, as the table grows.

Builds a master table of the clickstream's schema (synthetic rows, raw text included, hashed so that it does
not compress away): ``--old-mb`` of older data already compacted into one file, then ``--small`` appends of
``--rows-per-append`` rows each, as a running ingest leaves them between two maintenance runs. Each
setting then runs the project's own ``maintain`` (compaction and vacuum of master) on its own copy of that
table, ``--repeat`` times, side by side in one session. Reports the seconds of the compaction and of the
vacuum, and the bytes the compaction rewrote.

    .venv/bin/python bench/compaction_cost.py --old-mb 600 --small 200 --targets 1024,128
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from _common import add_common_args, work_directory, write_results

from lambda_pipeline.core.compact_vacuum import maintain
from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.session import get_spark
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM

NAME = "compaction_cost"
_ROW_BYTES = 105
"""Compressed bytes per synthetic master row, measured on the first runs; sizes the old file."""


def _rows(spark: Any, start: int, count: int) -> Any:
    from pyspark.sql import functions as F

    ids = spark.range(start, start + count)
    digest = F.sha2(F.col("id").cast("string"), 256)
    return ids.select(
        F.concat(F.lit("e"), F.col("id")).alias("event_id"),
        F.concat(F.lit("u"), F.col("id") % 5000).alias("user_id"),
        F.concat(F.lit("/p/"), F.col("id") % 40).alias("page"),
        F.timestamp_seconds(1_780_000_000 + F.col("id") / 5000).alias("event_time"),
        (F.col("id") % 9000).alias("duration_ms"),
        (F.col("id") / 20000).cast("long").alias("ingest_tag"),
        F.timestamp_seconds(1_780_000_000 + F.col("id") / 5000).alias("ingested_at"),
        F.lit("kafka:clicks").alias("source_file"),
        F.concat(F.lit('{"event_id":"e'), F.col("id"), F.lit('","digest":"'), digest, F.lit('"}')).alias("raw"),
    )


def _parquet_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.parquet"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-mb", type=int, default=600, help="older data, already one file (default 600)")
    parser.add_argument("--small", type=int, default=200, help="small appends since the last run (default 200)")
    parser.add_argument("--rows-per-append", type=int, default=15000, help="rows per small append (default 15000)")
    parser.add_argument("--targets", default="1024,128", help="compact_target_mb values compared (default 1024,128)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per setting (default 3)")
    add_common_args(parser, NAME)
    args = parser.parse_args(argv)
    targets = [int(t) for t in args.targets.split(",")]
    with work_directory(args, "bench-compaction-") as workdir:
        settings = load_settings(args.config, ["maintenance.retention=1 hour", *args.override])
        spark = get_spark(settings.spark, app_name=f"bench-{NAME}")
        try:
            template = workdir / "template"
            old_rows = args.old_mb * 1024 * 1024 // _ROW_BYTES
            _rows(spark, 0, old_rows).coalesce(1).write.format("delta").save(str(template))
            old_bytes = _parquet_bytes(template)
            for i in range(args.small):
                start = old_rows + i * args.rows_per_append
                _rows(spark, start, args.rows_per_append).coalesce(1).write.format("delta").mode("append").save(
                    str(template)
                )
            total_bytes = _parquet_bytes(template)
            print(
                f"table: one old file of {old_bytes / 1e6:.0f} MB and {args.small} appends "
                f"({(total_bytes - old_bytes) / 1e6:.0f} MB)",
                flush=True,
            )
            runs: dict[int, list[dict[str, float]]] = {t: [] for t in targets}
            for round_ in range(args.repeat):
                for target in targets:  # interleaved, so drift on the machine weighs on every setting alike
                    run_settings = load_settings(
                        args.config, ["maintenance.retention=1 hour", f"maintenance.compact_target_mb={target}"]
                    )
                    locations = Locations.create(run_settings, workdir / f"run-{target}-{round_}")
                    Path(locations.master).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copytree(template, locations.master)
                    (done,) = maintain(spark, CLICKSTREAM, locations, only=["master"])
                    after = _parquet_bytes(Path(locations.master))
                    rewritten = after - total_bytes  # VACUUM keeps the replaced files for the retention
                    runs[target].append(
                        {
                            "compact_s": done.compact_seconds,
                            "vacuum_s": done.vacuum_seconds,
                            "rewritten_mb": rewritten / 1e6,
                            "live_files_after": done.after.live_files,
                        }
                    )
                    print(
                        f"  round {round_ + 1} target {target} MB: compaction {done.compact_seconds:.1f}s, "
                        f"vacuum {done.vacuum_seconds:.1f}s, rewrote {rewritten / 1e6:.0f} MB, "
                        f"live files {done.before.live_files} -> {done.after.live_files}",
                        flush=True,
                    )
                    shutil.rmtree(Path(locations.master).parent, ignore_errors=True)
            medians = {t: {key: statistics.median(r[key] for r in rows) for key in rows[0]} for t, rows in runs.items()}
            base = targets[0]
            for target in targets:
                ratio = medians[target]["compact_s"] / medians[base]["compact_s"]
                print(
                    f"target {target:>5} MB: compaction p50 {medians[target]['compact_s']:.1f}s ({ratio:.2f}x of "
                    f"{base} MB), vacuum p50 {medians[target]['vacuum_s']:.1f}s, "
                    f"rewrote {medians[target]['rewritten_mb']:.0f} MB"
                )
            write_results(
                args.output,
                NAME,
                {
                    "old_mb": old_bytes / 1e6,
                    "small_appends": args.small,
                    "small_mb": (total_bytes - old_bytes) / 1e6,
                    "runs": {str(t): r for t, r in runs.items()},
                    "median": {str(t): m for t, m in medians.items()},
                },
            )
        finally:
            spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
