"""Cost of one ingest micro-batch at a fixed size: where a micro-batch of N messages spends its time.

Freshness at a rate is about 1.5 micro-batches, and a micro-batch's duration is a fixed cost plus a cost per
row; this script measures both parts without a producer competing for the cores. It fills a topic of the
project's broker up front (``--messages``, the Kafka benchmark's cheap generator and mix), then runs the real
ingest job (one hop: master, speed partials, quarantine) with ``maxOffsetsPerTrigger = --per-batch`` and a
100 ms trigger, so every micro-batch has the same size, and stops after ``--batches`` micro-batches with data.

Per micro-batch it records the query progress (``durationMs`` by phase; the dedup operator's state rows and its
update, removal and commit times) and the ingest body's own phases (``PhaseTimer``: route, master commit,
speed commit, quarantine commit), and prints the medians after ``--skip`` warm-up micro-batches. ``--sizes``
runs several batch sizes in turn, each on a fresh topic and work directory, in one Spark session: the slope
between sizes is the per-row cost, the intercept the fixed cost. ``--spark-conf KEY=VALUE`` changes a Spark
setting for the whole run (an A/B needs two runs, one after the other, on the otherwise idle machine).

    .venv/bin/python bench/microbatch_cost.py --sizes 10000,100000 --messages 1000000 --batches 12
    .venv/bin/python bench/microbatch_cost.py --per-batch 10000 \\
        --spark-conf spark.sql.streaming.stateStore.rocksdb.trackTotalNumberOfRows=false

Results: a table per size on stdout, JSON in bench/results/microbatch_cost.json (every micro-batch included).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import add_common_args, add_generator_args, environment, generator_mix, percentile, write_results
from _kafka_load import FastMessages, fill_topic
from _observer import STATE_FIELDS, PhaseBreakdown

NAME = "microbatch_cost"
RUN_LIMIT_SECONDS = 900.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-batch", type=int, default=10_000, help="messages per micro-batch (10000)")
    parser.add_argument("--sizes", default=None, help="comma-separated batch sizes, each run in turn")
    parser.add_argument(
        "--messages", type=int, default=None, help="messages in the topic (default: per-batch x (batches + 2))"
    )
    parser.add_argument("--batches", type=int, default=20, help="micro-batches with data to run (20)")
    parser.add_argument("--skip", type=int, default=3, help="warm-up micro-batches left out of the medians (3)")
    parser.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE", help="Spark setting")
    add_generator_args(parser)
    add_common_args(parser, NAME)
    args = parser.parse_args(argv)
    try:
        args.size_list = [int(s) for s in args.sizes.split(",") if s.strip()] if args.sizes else [args.per_batch]
    except ValueError:
        parser.error(f"--sizes expects whole numbers separated by commas, got {args.sizes!r}")
    if not args.size_list or min(args.size_list) <= 0 or args.batches <= args.skip or args.skip < 0:
        parser.error("sizes must be > 0 and --batches greater than --skip >= 0")
    if any("=" not in item for item in args.spark_conf):
        parser.error("--spark-conf takes KEY=VALUE")
    return args


def median(values: list[float]) -> float:
    return percentile(values, 50)


def run_size(spark: Any, broker: Any, size: int, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Ingest a pre-filled topic in micro-batches of ``size`` messages; the per-batch records and medians."""
    from lambda_pipeline.core.config_loader import load_settings
    from lambda_pipeline.core.jvm import codegen_totals
    from lambda_pipeline.core.locations import Locations
    from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
    from lambda_pipeline.pipelines.ingest import start_ingest

    topic = f"cost-{size}"
    broker.create_topic(topic, partitions=2)
    settings = load_settings(
        args.config,
        [
            "ingest.source=kafka",
            f"ingest.kafka.bootstrap_servers={broker.bootstrap_servers}",
            f"ingest.kafka.topic={topic}",
            "ingest.trigger=100 milliseconds",
            f"ingest.kafka.max_offsets_per_trigger={size}",
            *args.override,
        ],
    )
    generator = FastMessages(args.seed, "m", args.late_fraction, args.duplicate_fraction, args.malformed_fraction)
    sent, _ = fill_topic(settings.ingest.kafka, topic, args.messages or size * (args.batches + 2), generator)
    locations = Locations.create(settings, workdir)
    locations.ensure_local_dirs()
    breakdown = PhaseBreakdown(counters=lambda: codegen_totals(spark)).attach()
    compiled_before = codegen_totals(spark)
    query = start_ingest(spark, CLICKSTREAM, settings, locations)
    deadline = time.monotonic() + RUN_LIMIT_SECONDS
    try:
        while query.isActive and time.monotonic() < deadline:
            if len([p for p in query.recentProgress if p["numInputRows"] > 0]) >= args.batches:
                break
            query.awaitTermination(0.5)  # bounded: returns after 0.5 s while the query runs
    finally:
        query.stop()
        breakdown.detach()
    if query.exception() is not None:
        raise RuntimeError(f"ingest failed: {query.exception()}")
    compiled_after = codegen_totals(spark)
    batches = []
    for progress in [p for p in query.recentProgress if p["numInputRows"] > 0]:
        state = (progress.get("stateOperators") or [{}])[0]
        batches.append(
            {
                "batch_id": progress["batchId"],
                "rows": progress["numInputRows"],
                "duration_ms": dict(progress["durationMs"]),
                "state": {k: state.get(k) for k in STATE_FIELDS},
            }
        )
    phases = [p for job, p in breakdown.records if job == "ingest"]
    measured, measured_phases = batches[args.skip :], phases[args.skip :]
    result = {
        "per_batch": size,
        "messages_in_topic": sent,
        "measured": len(measured),
        # Whole-stage codegen compilations (Janino) over the whole run, warm-up micro-batches included.
        "codegen": {k: compiled_after[k] - compiled_before[k] for k in compiled_after},
        "batches": batches,
        "phases_ms": phases,
        "median": {
            "rows": median([b["rows"] for b in measured]),
            "duration_ms": {
                k: median([b["duration_ms"].get(k, 0) for b in measured])
                for k in sorted({k for b in measured for k in b["duration_ms"]})
            },
            "state": {k: median([b["state"][k] or 0 for b in measured]) for k in STATE_FIELDS},
            "phases_ms": {
                k: median([p[k] for p in measured_phases if k in p])
                for k in sorted({k for p in measured_phases for k in p})
            },
        },
    }
    print_size(result)
    return result


def print_size(result: dict[str, Any]) -> None:
    med = result["median"]
    trigger = med["duration_ms"].get("triggerExecution", float("nan"))
    print(f"\n=== {result['per_batch']:,} messages per micro-batch (medians of {result['measured']} micro-batches) ===")
    print(f"trigger {trigger:,.0f} ms -> {med['rows'] / max(trigger, 1) * 1000:,.0f} rows/s")
    print("progress:", ", ".join(f"{k} {v:,.0f}" for k, v in med["duration_ms"].items() if k != "triggerExecution"))
    print("dedup state:", ", ".join(f"{k} {v:,.0f}" for k, v in med["state"].items()))
    codegen = result["codegen"]
    phases = med["phases_ms"]
    print(
        f"codegen: {codegen['codegen_compilations']:,.0f} compilations, {codegen['codegen_compile_ms']:,.0f} ms"
        f" (whole run); per micro-batch cycle (median): {phases.get('codegen_compilations', float('nan')):,.1f}"
        f" compilations, {phases.get('codegen_compile_ms', float('nan')):,.0f} ms"
    )
    body = {k: v for k, v in phases.items() if not k.startswith("codegen_")}
    print("inside the body:", ", ".join(f"{k} {v:,.0f}" for k, v in body.items()))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from lambda_pipeline.core.config_loader import load_settings
    from lambda_pipeline.core.jvm_packages import KAFKA_COORDINATE
    from lambda_pipeline.core.session import get_spark
    from lambda_pipeline.local_services.kafka_broker import KafkaBroker
    from lambda_pipeline.local_services.process import free_port

    own = args.workdir is None
    root = Path(tempfile.mkdtemp(prefix="bench-cost-")) if own else Path(args.workdir).resolve()
    broker = KafkaBroker(root / "kafka", port=free_port())
    spark = None
    try:
        broker.start()
        base = load_settings(args.config, ["ingest.source=kafka", *args.override])
        extra = dict(item.split("=", 1) for item in args.spark_conf)
        spark = get_spark(base.spark, app_name=f"bench-{NAME}", extra_conf=extra, packages=(KAFKA_COORDINATE,))
        runs = [run_size(spark, broker, size, root / f"size-{size}", args) for size in args.size_list]
        write_results(
            args.output,
            NAME,
            {
                "parameters": {"sizes": args.size_list, "batches": args.batches, "skip": args.skip},
                "spark_conf": extra,
                "overrides": args.override,
                "generator_mix": generator_mix(args),
                "environment": environment(spark, base),
                "runs": runs,
            },
        )
        return 0
    finally:
        if spark is not None:
            spark.stop()
        broker.stop(timeout=30)
        if own and not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
