"""``lambda-pipeline generate``: the pipeline's events at a steady rate, into the landing folder or the Kafka topic.

The demo generates two waves and stops. A running deployment (the docker-compose demo, a soak by hand)
needs a producer that keeps going at a known rate, with the late, repeated and malformed lines, and on
Kafka the hostile messages, that ingest must sort out, so that every layer has something to show.
What it produces follows the pipeline (:func:`generator_for`): the clickstream demo's events, the IoT
example's readings, or schema-valid events for any other declared source, so a user sees their own views
move before connecting real data.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections import Counter
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Protocol

from lambda_pipeline.core.errors import ConfigError
from lambda_pipeline.core.locations import local_path
from lambda_pipeline.pipelines.clickstream import CLICKS
from lambda_pipeline.pipelines.generator import ClickstreamGenerator, EventGenerator
from lambda_pipeline.pipelines.iot_generator import IotGenerator
from lambda_pipeline.pipelines.synthetic import SyntheticGenerator

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from lambda_pipeline.cli.context import Context
    from lambda_pipeline.core.pipeline import Pipeline

__all__ = ["add_generate_parser", "generator_for", "make_sink", "run_generate"]

DUPLICATE_FRACTION = 0.03
MALFORMED_FRACTION = 0.02

# Kafka gets small bursts (smooth arrival, small micro-batches); the landing folder one file per second,
# since every file is a listing and a task for the ingest stream.
_TICKS_PER_SECOND = {"kafka": 10.0, "files": 1.0}


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction like 0.01, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction within [0, 1), got {text!r}")
    return value


def add_generate_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register the ``generate`` verb; the caller adds the common options (--config, --workdir, --set)."""
    generate = verbs.add_parser(
        "generate",
        help="produce the pipeline's events at a set rate into the landing folder or the Kafka topic",
        description="Runs until stopped (Ctrl-C) or for --seconds. The pipeline decides what is produced: the "
        "clickstream demo's events, the IoT example's readings, or for any other pipeline schema-valid events over "
        "its declared source (keys with skew, times around now). About 5% of the events are late; repeated and "
        "malformed lines are mixed in; --hostile-fraction adds the messages only a broker carries.",
    )
    generate.add_argument(
        "--to",
        choices=("files", "kafka"),
        default=None,
        help="files: the landing folder; kafka: ingest.kafka.topic on ingest.kafka.bootstrap_servers "
        "(default: the config's ingest.source)",
    )
    generate.add_argument("--rate", type=_positive, default=100.0, help="valid events per second (default 100)")
    generate.add_argument("--seconds", type=_positive, default=None, help="stop after this long (default: never)")
    generate.add_argument(
        "--hostile-fraction",
        type=_fraction,
        default=0.0,
        help="kafka only: hostile messages (null, not UTF-8, oversize, ...) per valid event (default 0)",
    )
    generate.add_argument(
        "--duplicate-fraction",
        type=_fraction,
        default=DUPLICATE_FRACTION,
        help=f"repeated lines (an earlier event again, same id) per valid event (default {DUPLICATE_FRACTION:g})",
    )
    generate.add_argument(
        "--malformed-fraction",
        type=_fraction,
        default=MALFORMED_FRACTION,
        help="lines that are not JSON, of a wrong type or missing a required field, per valid event "
        f"(default {MALFORMED_FRACTION:g})",
    )
    generate.add_argument("--seed", type=int, default=None, help="generator seed (default: new each run)")
    generate.add_argument(
        "--report-every", type=_positive, default=10.0, help="seconds between progress lines (default 10)"
    )
    return generate


class _Sink(Protocol):
    where: str

    def send(self, events: int, hostile: int) -> Counter[str]:
        """Write ``events`` valid events (with their bad company) and ``hostile`` messages; counts by kind."""
        ...

    def flush(self) -> None:
        """Return once everything sent is durable; raise if some of it is not."""
        ...


class _KafkaSink:
    """The project's idempotent producer; hostile kinds in turn, so a slow rate still shows every kind."""

    def __init__(self, ctx: Context, generator: EventGenerator) -> None:
        from lambda_pipeline.cli.kafka_producer import KafkaEventProducer

        kafka = ctx.settings.ingest.kafka
        self.generator = generator
        self.producer = KafkaEventProducer(kafka)
        self.kinds = itertools.cycle(generator.hostile_kinds)
        self.where = f"kafka {kafka.bootstrap_servers} topic {self.producer.topic}"

    def send(self, events: int, hostile: int) -> Counter[str]:
        now = datetime.now(timezone.utc)
        values, stats = self.generator.messages(events, now=now)
        counts = Counter(
            events=stats.events, duplicates=stats.duplicates, malformed=sum(stats.malformed.values()), hostile=hostile
        )
        for _ in range(hostile):
            value, event_id = self.generator.hostile_message(next(self.kinds), now)
            values.insert(self.generator.rng.randrange(len(values) + 1), value)
            counts["events"] += event_id is not None  # additive schema drift is a valid event
        counts["messages"] = len(values)
        self.producer.send(values)
        return counts

    def flush(self) -> None:
        self.producer.flush()


class _FileSink:
    """Whole files into the landing folder, never visible half-written, as ingest expects them.

    A landing folder on this machine is written by Python alone; one on ``s3a://``, ``hdfs://`` or another
    Hadoop file system through Spark's (the session factory's session, started here for it).
    """

    def __init__(self, ctx: Context, generator: EventGenerator) -> None:
        self.generator = generator
        self.landing = ctx.locations.landing
        self.spark: SparkSession | None = None
        if local_path(self.landing) is None:
            self.spark = ctx.spark
        else:
            ctx.locations.ensure_local_dirs()
        self.where = f"landing folder {self.landing}"

    def send(self, events: int, hostile: int) -> Counter[str]:
        if events == 0:
            return Counter()
        written = self.generator.write_file(self.landing, events, spark=self.spark)
        return Counter(
            events=written.events,
            duplicates=written.duplicates,
            malformed=sum(written.malformed.values()),
            lines=written.lines,
            files=1,
        )

    def flush(self) -> None:
        """Files are complete once in place under their final name."""


def make_sink(ctx: Context, generator: EventGenerator, to: str) -> _Sink:
    """Where generated events go: the config's Kafka topic (``to == "kafka"``) or its landing folder."""
    return _KafkaSink(ctx, generator) if to == "kafka" else _FileSink(ctx, generator)


def generator_for(
    pipeline: Pipeline,
    seed: int,
    *,
    duplicate_fraction: float = DUPLICATE_FRACTION,
    malformed_fraction: float = MALFORMED_FRACTION,
) -> EventGenerator:
    """The pipeline's generator: the clickstream demo's (with its known truth) and the IoT example's for the
    shipped pipelines of those names, else schema-valid events over the pipeline's declared source."""
    if pipeline.name == "clickstream" and pipeline.source == CLICKS:
        return ClickstreamGenerator(seed, duplicate_fraction=duplicate_fraction, malformed_fraction=malformed_fraction)
    if pipeline.name == "iot" and IotGenerator.fits(pipeline.source):
        return IotGenerator(
            pipeline.source, seed, duplicate_fraction=duplicate_fraction, malformed_fraction=malformed_fraction
        )
    return SyntheticGenerator(
        pipeline.source, seed, duplicate_fraction=duplicate_fraction, malformed_fraction=malformed_fraction
    )


_REPORTED = ("messages", "files", "lines", "duplicates", "malformed", "hostile")


def _summary(counts: Counter[str]) -> str:
    return ", ".join(f"{counts[k]} {k}" for k in _REPORTED if k in counts)


def run_generate(ctx: Context, args: argparse.Namespace) -> int:
    """Produce until stopped or ``--seconds`` elapsed; a progress line every ``--report-every`` seconds."""
    to = args.to or ctx.settings.ingest.source
    if to == "files" and args.hostile_fraction > 0:
        raise ConfigError(
            "--hostile-fraction", None, "needs --to kafka: null, non-UTF-8 and oversize messages exist only on a broker"
        )
    seed = args.seed if args.seed is not None else time.time_ns() % 1_000_000_007
    generator = generator_for(
        ctx.pipeline, seed, duplicate_fraction=args.duplicate_fraction, malformed_fraction=args.malformed_fraction
    )
    sink = make_sink(ctx, generator, to)
    ticks_per_second = _TICKS_PER_SECOND[to]
    print(
        f"generate: {args.rate:g} events/s of pipeline {ctx.pipeline.name} (source {ctx.pipeline.source.name}) "
        f"-> {sink.where} (seed {seed}"
        + (f", hostile fraction {args.hostile_fraction:g}" if args.hostile_fraction else "")
        + (f", for {args.seconds:g}s)" if args.seconds else ", until stopped)"),
        flush=True,
    )
    total: Counter[str] = Counter()
    period: Counter[str] = Counter()
    start = last_report = time.monotonic()
    next_report = args.report_every
    try:
        for tick in itertools.count(1):
            elapsed = tick / ticks_per_second
            if args.seconds is not None and elapsed > args.seconds + 1e-9:
                break
            # Targets from the start, not per tick: fractional rates add up exactly instead of rounding away.
            events = int(args.rate * elapsed) - total["generated"]
            hostile = int(args.rate * args.hostile_fraction * elapsed) - total["hostile"]
            sent = sink.send(events, hostile)
            sent["generated"] = events
            total.update(sent)
            period.update(sent)
            while (delay := start + elapsed - time.monotonic()) > 0:
                time.sleep(delay)  # pacing the producer, not waiting for the pipeline
            if elapsed >= next_report - 1e-9:  # on the tick grid, so jitter never skips a report
                next_report += args.report_every
                sink.flush()  # acknowledged before it is reported
                seconds = time.monotonic() - last_report
                print(
                    f"generate: {period['events']} events in {seconds:.1f}s ({period['events'] / seconds:.0f}/s): "
                    f"{_summary(period)}; {total['events']} events in all",
                    flush=True,
                )
                period.clear()
                last_report = time.monotonic()
    except KeyboardInterrupt:
        pass  # stopping is the normal end of an open-ended run
    sink.flush()
    print(f"generate: stopped after {total['events']} events ({_summary(total)}) -> {sink.where}", flush=True)
    return 0
