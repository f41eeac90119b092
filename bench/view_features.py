"""What the richer view model costs in a batch recompute, against the same views without the feature.

Over one master snapshot of ``--events`` synthetic events (written once, with ``page_low`` and ``hour_of_day``
columns already holding the values of ``lower(page)`` and ``hour(event_time)``), each case runs the batch
layer's recompute (exact dedup, partial states, overwrite of a Delta table) for one view:

- ``plain``:    keys (page_low, hour_of_day) read from stored columns, tumbling 1 minute;
- ``derived``:  the same keys as derived columns ``lower(page)``, ``hour(event_time)``, plus a filter that
                keeps every row (``duration_ms >= 0``);  target: at most 1.1x ``plain``;
- ``tumbling``: keys (page), tumbling 1 minute;
- ``hopping``:  keys (page), windows of 4 minutes every minute (k = 4);  target: at most 4x ``tumbling``.

Cases rotate order per repetition; medians of ``--repeat`` timed runs after ``--warmup`` untimed ones.
Run with nothing else on the machine:
    .venv/bin/python bench/view_features.py --events 2000000 --repeat 5
Results: a table on stdout and JSON in bench/results/view_features.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import TYPE_CHECKING

from _common import add_common_args, environment, work_directory, write_results

import lambda_pipeline as lp
from lambda_pipeline.batch_layer.recompute import deduplicate
from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.session import get_spark

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

NAME = "view_features"


def _source() -> lp.EventSource:
    from pyspark.sql import types as T

    fields = [("event_id", T.StringType()), ("event_time", T.TimestampType()), ("page", T.StringType()),
              ("user_id", T.StringType()), ("duration_ms", T.LongType()), ("page_low", T.StringType()),
              ("hour_of_day", T.IntegerType())]  # fmt: skip
    return lp.EventSource("bench", T.StructType([T.StructField(n, t) for n, t in fields]), "event_id", "event_time")


def _views(source: lp.EventSource) -> dict[str, lp.View]:
    measures = {"events": lp.count(), "total_ms": lp.sum_of("duration_ms"), "max_ms": lp.max_of("duration_ms")}
    minute = lp.TumblingWindow("event_time", "1 minute")
    return {
        "plain": lp.View("plain", source, keys=("page_low", "hour_of_day"), window=minute, measures=measures),
        "derived": lp.View(
            "derived",
            source,
            keys=("page_key", "hour_key"),
            window=minute,
            measures=measures,
            columns={"page_key": "lower(page)", "hour_key": "hour(event_time)"},
            where="duration_ms >= 0",
        ),
        "tumbling": lp.View("tumbling", source, keys=("page",), window=minute, measures=measures),
        "hopping": lp.View(
            "hopping",
            source,
            keys=("page",),
            window=lp.HoppingWindow("event_time", "4 minutes", "1 minute"),
            measures=measures,
        ),
    }


def _master(spark: SparkSession, events: int, path: str) -> None:
    from pyspark.sql import functions as F

    rows = spark.range(events).select(
        F.concat(F.lit("e"), F.col("id").cast("string")).alias("event_id"),
        F.timestamp_seconds(F.lit(1_796_600_000) + (F.col("id") * 7919) % 86_400).alias("event_time"),
        F.concat(F.lit("/Page/"), (F.col("id") % 20).cast("string")).alias("page"),
        F.concat(F.lit("u"), ((F.col("id") * 31) % 100_000).cast("string")).alias("user_id"),
        ((F.col("id") * 13) % 60_000).alias("duration_ms"),
        F.lit(1).cast("long").alias("ingest_tag"),
    )
    rows = rows.withColumn("page_low", F.lower("page")).withColumn("hour_of_day", F.hour("event_time"))
    rows.write.format("delta").mode("overwrite").save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    add_common_args(parser, NAME)
    args = parser.parse_args()
    settings = load_settings(args.config, args.override)
    spark = get_spark(settings.spark)
    source = _source()
    views = _views(source)
    for view in views.values():
        view.resolve(spark)
    with work_directory(args, "bench-view-features-") as workdir:
        master = str(workdir / "master")
        _master(spark, args.events, master)
        times: dict[str, list[float]] = {name: [] for name in views}
        names = list(views)
        for run in range(args.warmup + args.repeat):
            order = names[run % len(names) :] + names[: run % len(names)]
            for name in order:
                view = views[name]
                snapshot = spark.read.format("delta").load(master)
                started = time.perf_counter()
                states = view.partials(deduplicate(snapshot, source), by_tag=False)
                states.write.format("delta").mode("overwrite").save(str(workdir / name))
                if run >= args.warmup:
                    times[name].append(time.perf_counter() - started)
        medians = {name: statistics.median(values) for name, values in times.items()}
        ratios = {
            "derived_over_plain": medians["derived"] / medians["plain"],
            "hopping_over_tumbling": medians["hopping"] / medians["tumbling"],
            "hopping_k": 4,
        }
        for name, value in medians.items():
            print(f"{name:<9} median {value:6.2f} s  ({', '.join(f'{t:.2f}' for t in times[name])})")
        print(f"derived / plain    = {ratios['derived_over_plain']:.3f}  (target <= 1.1)")
        print(f"hopping / tumbling = {ratios['hopping_over_tumbling']:.3f}  (target <= k = 4)")
        write_results(
            args.output,
            NAME,
            {
                "events": args.events,
                "seconds": times,
                "median_seconds": medians,
                "ratios": ratios,
                "environment": environment(spark, settings),
            },
        )


if __name__ == "__main__":
    main()
