"""Kafka freshness and throughput: from a message produced to its event visible in ``serving.page_activity``.

For each rate (``--rate``, or every rate of ``--rates`` / ``--find-max``) the script runs two phases, one after
the other, on a local Kafka broker (``local_services.kafka_broker.KafkaBroker``, temp dir, free port, stopped at
the end) and in one Spark session (``get_spark(..., packages=(KAFKA_COORDINATE,))``):

1. **noop baseline**: a streaming query reading a fresh topic with the ingest job's own Kafka options and parse
   (``parse_events(kafka_lines(...))``, i.e. ``decode_messages`` + JSON parse + checks) into the ``noop`` sink,
   with the ingest trigger. It costs what reading and parsing cost, without the dedup shuffle and state, the
   routing and the Delta commits (master, speed partials, quarantine).
2. **pipeline**: the real jobs on another fresh topic. A seed (one second of the rate) is ingested once and a
   batch is published first (so coverage exists; no batch runs during the measurement), then ``start_ingest``
   runs with a processing-time trigger; each micro-batch commits master, then the speed partials of its tag
   (the one hop).

Both phases get the same load: a producer in a **separate process** (``multiprocessing``, spawn; it never shares
the driver's GIL with py4j) sends ``--rate`` valid events per second, plus ~3 % duplicates and ~2 % malformed
lines, for ``--warmup`` (not measured) + ``--seconds`` (measured) seconds, in ``--ticks-per-second`` paced bursts
through the project's idempotent producer (``KafkaEventProducer.send``: acks=all, lz4, linger 5 ms). Pacing is
done here (a deadline schedule with ``time.sleep``; ``KafkaEventProducer.run_at_rate`` paces with
``poll(delay)``, which returns at the first delivery report, so it runs ahead of its rate). By default the
messages come from a cheap template generator (``--generator fast``, same JSON shape and mix as
``ClickstreamGenerator``, ~3 us per message); ``--generator project`` uses ``ClickstreamGenerator.messages``
(~16 us per message to generate, ~28 us with the send: at 10k events/s ~0.3 of one core, and one process
tops out near 35k messages/s on an idle core). The producer's CPU seconds are reported: on a 2-core machine
the load generator is part of the load.

Freshness per message (the headline, per **event** of master, over the events produced in the measured window):

- produce time = the Kafka message timestamp (CreateTime, set by librdkafka when ``produce()`` is called; read
  back at the end with a batch ``spark.read.format("kafka")``, joined to master on (partition, offset), parsed
  from ``source_file = kafka://topic/partition/offset``);
- ``ingest``  = commit time of the master version = its ``ingest_tag`` (mtime of ``_delta_log/<v>.json``) minus
  the produce time;
- ``visible`` = commit time of the first speed-partials version holding that tag minus the produce time; from
  that version on, ``ServingLayer.take_pin()`` shows the event in ``serving.page_activity`` (coverage stays at
  the seed batch). ``speed`` = ``visible`` - ``ingest``; ``observed`` = when the poller saw the speed version.

The poller reads the speed and master ``_delta_log`` directories directly every ``--poll-ms`` (the tags of a
speed version come from the ``ingest_tag`` min/max statistics of its added files; a Spark query only when a
file has no statistics), so the measurement adds no Spark job to the 2 cores. It does not include re-pinning
the serving views or running the query (see bench/serving_latency.py). For the noop baseline, ``visible`` is
the commit time of the micro-batch holding the offset (mtime of ``commits/<batch>`` in its checkpoint; the
offset ranges come from ``offsets/<batch>``).

Throughput, over the measured window [producer start + warm-up, last burst]:

- input rate = messages sent per second (and valid events per second);
- processed rate = messages the query committed per second (ingest checkpoint: ``commits/<n>`` mtime and the
  end offsets of ``offsets/<n>``, i.e. master + quarantine rows), and master rows per second (rows per tag by
  master commit time);
- lag = messages sent - messages committed, computed on a 0.25 s grid from the two logs: ``lag mid`` is its
  maximum over the middle 20 % of the window, ``lag end`` over the last 20 % (the peak of the saw-tooth, so the
  trigger phase does not decide); ``drain`` is the time from the last burst until everything is committed.
- kept up = processed >= 0.97 x input **and** lag end <= lag mid + one second of input.

Micro-batch durations (``durationMs`` of ``recentProgress``, batches with data) are printed per query and
phase; ``--spark-jobs`` adds the Spark jobs of the run (UI REST API) grouped by name: where the ingest
micro-batch spends its time. Every wait is bounded (``--timeout`` per phase, producer start 120 s, query stop
60 s). ``--find-max`` runs 10k, 20k, 30k, 40k events/s (or ``--rates``) and stops after the first rate the
pipeline does not keep up with.

Settings: ``ingest.source=kafka``, both triggers 500 ms and ``ingest.kafka.max_offsets_per_trigger`` 200000
by default; ``--partitions``, ``--ingest-trigger``, ``--max-offsets-per-trigger`` set
them, and ``--override KEY=VALUE`` (applied last) any other setting, e.g.
``--override spark.shuffle_partitions=4`` or ``--override spark.conf.spark.driver.memory=4g``.

Code: the load in bench/_kafka_load.py, the phases in bench/_kafka_phases.py, checkpoints, throughput and Spark
jobs in bench/_kafka_measure.py, the tables in bench/_kafka_report.py; the observer (Delta log, tag visibility,
latencies, poll loop) in bench/_observer.py, shared with bench/freshness.py.

Run (full size, done later):
    .venv/bin/python bench/kafka_freshness.py --rate 10000 --seconds 300 --warmup 30
    .venv/bin/python bench/kafka_freshness.py --find-max --seconds 300 --warmup 30
Small smoke tests:
    .venv/bin/python bench/kafka_freshness.py --rate 2000 --seconds 30 --warmup 10
    .venv/bin/python bench/kafka_freshness.py --rates 2000,4000 --seconds 30
Results: tables on stdout and JSON in bench/results/kafka_freshness.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import add_common_args, add_generator_args, environment, generator_mix, write_results
from _kafka_phases import Phase, run_noop, run_pipeline
from _kafka_report import print_max_table, print_rate
from _observer import stop_queries

NAME = "kafka_freshness"
DEFAULT_OVERRIDES = (
    "ingest.source=kafka",
    "ingest.trigger=500 milliseconds",
)
FIND_MAX_RATES = (10_000.0, 20_000.0, 30_000.0, 40_000.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=10_000.0, help="valid events per second (default 10000)")
    parser.add_argument(
        "--rates", default=None, help="comma-separated rates, each run in turn (e.g. 10000,20000,30000,40000)"
    )
    parser.add_argument(
        "--find-max",
        action="store_true",
        help=f"run --rates (default {','.join(f'{r:.0f}' for r in FIND_MAX_RATES)}) and stop after the first "
        "rate the pipeline does not keep up with",
    )
    parser.add_argument("--seconds", type=float, default=300.0, help="measured production time per phase (300)")
    parser.add_argument("--warmup", type=float, default=30.0, help="production before the measured part (30)")
    parser.add_argument("--partitions", type=int, default=2, help="partitions of each topic (default 2)")
    parser.add_argument("--ingest-trigger", default=None, help="ingest (and noop) trigger (default 500 milliseconds)")
    parser.add_argument("--speed-trigger", default=None, help=argparse.SUPPRESS)  # no speed stream since the one hop
    parser.add_argument(
        "--max-offsets-per-trigger",
        type=int,
        default=None,
        help="ingest.kafka.max_offsets_per_trigger (config: 200000)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the noop baseline phase")
    parser.add_argument(
        "--generator",
        choices=("fast", "project"),
        default="fast",
        help="message generator of the producer process: a cheap template one (default) or ClickstreamGenerator",
    )
    parser.add_argument("--ticks-per-second", type=float, default=20.0, help="producer bursts per second (20)")
    parser.add_argument("--poll-ms", type=float, default=100.0, help="poll interval of the Delta logs (100)")
    parser.add_argument(
        "--timeout", type=float, default=None, help="limit per phase once producing (default warmup + seconds + 180)"
    )
    parser.add_argument("--spark-jobs", action="store_true", help="report Spark jobs by name (UI REST API)")
    add_generator_args(parser)
    add_common_args(
        parser,
        NAME,
        f", applied after the defaults {list(DEFAULT_OVERRIDES)} and the options above "
        "(ingest.kafka.bootstrap_servers and .topic are set by the script)",
    )
    args = parser.parse_args(argv)
    if args.rates:
        try:
            args.rate_list = [float(r) for r in args.rates.split(",") if r.strip()]
        except ValueError:
            parser.error(f"--rates expects numbers separated by commas, got {args.rates!r}")
    elif args.find_max:
        args.rate_list = list(FIND_MAX_RATES)
    else:
        args.rate_list = [args.rate]
    if not args.rate_list or any(r <= 0 for r in args.rate_list):
        parser.error("rates must be > 0")
    if args.seconds <= 0 or args.warmup < 0 or args.poll_ms <= 0 or args.partitions <= 0 or args.ticks_per_second <= 0:
        parser.error("--seconds, --poll-ms, --partitions and --ticks-per-second must be > 0, --warmup >= 0")
    return args


def phase_overrides(args: argparse.Namespace) -> list[str]:
    out = [*DEFAULT_OVERRIDES, f"ingest.kafka.partitions={args.partitions}"]
    if args.ingest_trigger:
        out.append(f"ingest.trigger={args.ingest_trigger}")
    if args.max_offsets_per_trigger:
        out.append(f"ingest.kafka.max_offsets_per_trigger={args.max_offsets_per_trigger}")
    return [*out, *args.override]


# ---- main --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from lambda_pipeline.core.config_loader import load_settings
    from lambda_pipeline.core.jvm_packages import KAFKA_COORDINATE
    from lambda_pipeline.core.session import get_spark
    from lambda_pipeline.local_services.kafka_broker import KafkaBroker
    from lambda_pipeline.local_services.process import free_port

    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="bench-kafka-")) if own_workdir else Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    overrides = phase_overrides(args)
    base_settings = load_settings(args.config, overrides)  # validates the overrides before anything starts
    print(f"work directory: {workdir}", flush=True)
    broker = KafkaBroker(workdir / "kafka", port=free_port())
    spark = None
    runs: list[dict[str, Any]] = []
    failed = False
    try:
        t0 = time.perf_counter()
        broker.start()
        print(f"Kafka broker on {broker.bootstrap_servers} (started in {time.perf_counter() - t0:.1f}s)", flush=True)
        spark = get_spark(
            base_settings.spark,
            app_name=f"bench-{NAME}",
            extra_conf={
                "spark.sql.streaming.numRecentProgressUpdates": "100000",
                "spark.ui.retainedJobs": "100000",
                # The lag and the noop's freshness come from the checkpoint's offset and commit files: keep them
                # all (Spark keeps the newest 100 by default, fewer than a 300 s noop phase makes).
                "spark.sql.streaming.minBatchesToRetain": "100000",
            },
            packages=(KAFKA_COORDINATE,),
        )
        k = base_settings.ingest.kafka
        print(
            f"settings: ingest.trigger {base_settings.ingest.trigger!r}, "
            f"topic partitions {args.partitions}, max_offsets_per_trigger {k.max_offsets_per_trigger}, "
            f"min_partitions {k.min_partitions}, shuffle partitions {spark.conf.get('spark.sql.shuffle.partitions')}, "
            f"speed.compact_every {base_settings.speed.compact_every}, spark.master {base_settings.spark.master}; "
            f"overrides {overrides}",
            flush=True,
        )
        print(
            f"producer: separate process, generator {args.generator!r}, {args.ticks_per_second:g} bursts/s", flush=True
        )
        for rate in args.rate_list:
            run: dict[str, Any] = {"rate": rate, "load_average_before": os.getloadavg()}
            if run["load_average_before"][0] > (os.cpu_count() or 1) * 0.5:
                print(
                    f"WARNING: load average {run['load_average_before'][0]:.1f} on {os.cpu_count()} cores before this "
                    "rate: other processes compete for the CPU and the figures will be pessimistic",
                    flush=True,
                )
            for kind in ("noop", "pipeline"):
                if kind == "noop" and args.no_baseline:
                    continue
                topic = f"bench-{kind}-{int(rate)}"
                broker.create_topic(topic, partitions=args.partitions)
                settings = load_settings(
                    args.config,
                    [
                        *overrides,
                        f"ingest.kafka.bootstrap_servers={broker.bootstrap_servers}",
                        f"ingest.kafka.topic={topic}",
                    ],
                )
                phase = Phase(spark, settings, topic, workdir / f"rate-{int(rate)}" / kind, args, rate, broker)
                print(f"[{rate:,.0f} events/s] {kind} phase on topic {topic}", flush=True)
                try:
                    run[kind] = run_noop(phase) if kind == "noop" else run_pipeline(phase)
                finally:
                    stop_queries(phase.queries)
                    if not args.keep:
                        try:
                            broker.delete_topic(topic)
                        except Exception as exc:  # disk space only
                            print(f"  (could not delete topic {topic}: {exc})", file=sys.stderr)
                        shutil.rmtree(phase.workdir, ignore_errors=True)
            run["ratios"] = print_rate(rate, run.get("noop"), run.get("pipeline"))
            runs.append(run)
            pipe = run.get("pipeline")
            if pipe is not None and (pipe["timed_out"] or not pipe["events_measured"]):
                failed = True
            if args.find_max and pipe is not None and not pipe["throughput"]["kept_up"]:
                print(f"--find-max: the pipeline did not keep up with {rate:,.0f} events/s; stopping here")
                break
        if len(runs) > 1 or args.find_max:
            print_max_table(runs)
        kept = [r["rate"] for r in runs if r.get("pipeline") and r["pipeline"]["throughput"]["kept_up"]]
        out = {
            "parameters": {
                "rates": args.rate_list,
                "seconds": args.seconds,
                "warmup": args.warmup,
                "partitions": args.partitions,
                "generator": args.generator,
                "ticks_per_second": args.ticks_per_second,
                "baseline": not args.no_baseline,
                "poll_ms": args.poll_ms,
                "overrides": overrides,
                "workdir": str(workdir),
                "generator_mix": generator_mix(args),
            },
            "settings": base_settings.model_dump(mode="json", exclude={"ingest": {"kafka": {"options"}}}),
            "environment": environment(spark, base_settings),
            "highest_rate_kept_up": max(kept) if kept else None,
            "runs": runs,
        }
        write_results(args.output, NAME, out)
        return 1 if failed or not runs else 0
    finally:
        if spark is not None:
            for q in spark.streams.active:
                q.stop()
            spark.stop()
        broker.stop(timeout=30)
        if own_workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
