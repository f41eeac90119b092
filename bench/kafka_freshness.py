"""Kafka freshness and throughput: from a message produced to its event visible in ``serving.page_activity``.

For each rate (``--rate``, or every rate of ``--rates`` / ``--find-max``) the script runs two phases, one after
the other, on a local Kafka broker (``local_services.kafka_broker.KafkaBroker``, temp dir, free port, stopped at
the end) and in one Spark session (``get_spark(..., packages=(KAFKA_COORDINATE,))``):

1. **noop baseline**: a streaming query reading a fresh topic with the ingest job's own Kafka options and parse
   (``parse_events(kafka_lines(...))``, i.e. ``decode_messages`` + JSON parse + checks) into the ``noop`` sink,
   with the ingest trigger. It costs what reading and parsing cost, without the dedup state, the second read of
   the micro-batch, the routing, the Delta commits and the speed layer.
2. **pipeline**: the real jobs on another fresh topic. A seed (one second of the rate) is ingested once and a
   batch is published first (so coverage exists; no batch runs during the measurement), then ``start_ingest``
   and ``start_speed`` run with processing-time triggers.

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
  that version on, ``ServingLayer.refresh()`` shows the event in ``serving.page_activity`` (coverage stays at
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
by default; ``--partitions``, ``--ingest-trigger``, ``--speed-trigger``, ``--max-offsets-per-trigger`` set
them, and ``--override KEY=VALUE`` (applied last) any other setting, e.g.
``--override spark.shuffle_partitions=4`` or ``--override spark.conf.spark.driver.memory=4g``.

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
import bisect
import itertools
import json
import math
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _common import (
    add_common_args,
    add_generator_args,
    environment,
    generator_mix,
    percentile,
    summary,
    write_results,
)
from _observer import (
    LATENCIES,
    DeltaLog,
    PollLoop,
    SpeedVisibility,
    check_queries,
    commit_time,
    fmt,
    latencies,
    print_latencies,
    progress_details,
    stop_queries,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

    from lambda_pipeline.core.config import KafkaSettings, Settings
    from lambda_pipeline.core.tables import Locations

NAME = "kafka_freshness"
DEFAULT_OVERRIDES = (
    "ingest.source=kafka",
    "ingest.trigger=500 milliseconds",
    "speed.trigger=500 milliseconds",
)
FIND_MAX_RATES = (10_000.0, 20_000.0, 30_000.0, 40_000.0)
KEPT_UP_RATIO = 0.97
LAG_GRID_SECONDS = 0.25
BUCKET = 1000  # offsets per bucket of the range join (noop freshness)


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
    parser.add_argument("--speed-trigger", default=None, help="speed trigger (default 500 milliseconds)")
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
    if args.speed_trigger:
        out.append(f"speed.trigger={args.speed_trigger}")
    if args.max_offsets_per_trigger:
        out.append(f"ingest.kafka.max_offsets_per_trigger={args.max_offsets_per_trigger}")
    return [*out, *args.override]


# ---- load generation (runs in the producer process) -------------------------------------------------------


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FastMessages:
    """Clickstream messages shaped like ``ClickstreamGenerator``'s (same fields, late/duplicate/malformed mix).

    Per burst it formats a handful of event-time strings once, then each message is one ``bytes`` format:
    about 2 us per message instead of ~25 us, so the load generator leaves the cores to the pipeline.
    Ids are unique per (seed, process label); a duplicate is an exact resend of a recent message.
    """

    VALID = b'{"event_id":"%s-%010d","user_id":"u%05d","page":"%s","event_time":"%s","duration_ms":%d}'
    WRONG_TYPE = b'{"event_id":"%s-%010d","user_id":"u%05d","page":"%s","event_time":"%s","duration_ms":"a minute"}'
    NO_USER = b'{"event_id":"%s-%010d","page":"%s","event_time":"%s","duration_ms":%d}'
    BAD_TIME = b'{"event_id":"%s-%010d","user_id":"u%05d","page":"%s","event_time":"yesterday","duration_ms":%d}'

    def __init__(
        self, seed: int, label: str, late: float, duplicate: float, malformed: float, users: int = 2000
    ) -> None:
        from lambda_pipeline.pipelines.generator import PAGES

        self.rng = random.Random(f"{seed}-{label}")
        self.prefix = f"{seed:x}{label}".encode()
        self.pages = [p.encode() for p in PAGES]
        self.late, self.dup, self.bad, self.users = late, duplicate, malformed, users
        self.counter = 0
        self.recent: deque[bytes] = deque(maxlen=200)

    def _malformed(self, kind: int, event: tuple[Any, ...], line: bytes) -> bytes:
        if kind == 0:  # truncated_json
            return line[: len(line) // 2]
        if kind == 1:  # wrong_type
            return self.WRONG_TYPE % event[:5]
        if kind == 2:  # missing_field (user_id)
            return self.NO_USER % (event[0], event[1], event[3], event[4], event[5])
        if kind == 3:  # bad_time
            return self.BAD_TIME % (*event[:4], event[5])
        if kind == 4:  # not_an_object
            return b'["%s-%010d","%s"]' % (event[0], event[1], event[3])
        return b""  # empty_line

    def batch(self, events: int) -> tuple[list[bytes | None], int]:
        """``events`` valid events plus their duplicates and malformed company; (messages, valid events)."""
        rng, now = self.rng.random, time.time()
        fresh = [_iso(now - 5.0 * rng()).encode() for _ in range(8)]
        late = [_iso(now - 120.0 - 1680.0 * rng()).encode() for _ in range(4)]
        pages, npages, users = self.pages, len(self.pages), self.users
        out: list[bytes | None] = []
        for _ in range(events):
            self.counter += 1
            times = late if rng() < self.late else fresh
            event = (
                self.prefix,
                self.counter,
                int(rng() * users),
                pages[int(rng() * npages)],
                times[int(rng() * len(times))],
                50 + int(rng() * 119_950),
            )
            line = self.VALID % event
            out.append(line)
            self.recent.append(line)
            if rng() < self.dup:
                out.append(self.recent[int(rng() * len(self.recent))])
            if rng() < self.bad:
                self.counter += 1
                out.append(self._malformed(int(rng() * 6), (self.prefix, self.counter, *event[2:]), line))
        return out, events


class ProjectMessages:
    """``ClickstreamGenerator.messages``: the project's generator, ~25 us of Python per message."""

    def __init__(self, seed: int, label: str, late: float, duplicate: float, malformed: float) -> None:
        from lambda_pipeline.pipelines.generator import ClickstreamGenerator

        salt = sum(label.encode()) * 7919
        self.gen = ClickstreamGenerator(
            seed + salt, late_fraction=late, duplicate_fraction=duplicate, malformed_fraction=malformed
        )

    def batch(self, events: int) -> tuple[list[bytes | None], int]:
        values, stats = self.gen.messages(events)
        return values, stats.events


def make_generator(kind: str, seed: int, label: str, fractions: tuple[float, float, float]) -> Any:
    cls = FastMessages if kind == "fast" else ProjectMessages
    return cls(seed, label, *fractions)


def produce_worker(
    kafka: KafkaSettings,
    topic: str,
    kind: str,
    seed: int,
    label: str,
    fractions: tuple[float, float, float],
    rate: float,
    seconds: float,
    ticks_per_second: float,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    """Producer process: paced bursts on a deadline schedule; reports (time, messages, events) per burst."""
    try:
        from lambda_pipeline.local_services.kafka_producer import KafkaEventProducer

        producer = KafkaEventProducer(kafka, topic)
        generator = make_generator(kind, seed, label, fractions)
        ready.set()
        if not go.wait(120):
            results.put({"ok": False, "error": "never told to start"})
            return
        interval = 1.0 / ticks_per_second
        ticks = max(1, round(seconds * ticks_per_second))
        cpu0, start_wall, start = time.process_time(), time.time(), time.monotonic()
        messages = events = late_ticks = 0
        log: list[tuple[float, int, int]] = []
        for tick in range(ticks):
            due = round(rate * interval * (tick + 1)) - events  # the schedule, not the count of ticks, sets the rate
            values, valid = generator.batch(due)
            producer.send(values)
            messages += len(values)
            events += valid
            log.append((time.time(), messages, events))
            delay = start + (tick + 1) * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                late_ticks += 1
        producer.flush(120)
        results.put(
            {
                "ok": True,
                "start": start_wall,
                "log": log,
                "messages": messages,
                "events": events,
                "acked": producer.stats.acked,
                "late_ticks": late_ticks,
                "ticks": ticks,
                "cpu_seconds": time.process_time() - cpu0,
                "wall_seconds": time.time() - start_wall,
            }
        )
    except BaseException as exc:  # reported by the parent
        results.put({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


class ProducerProcess:
    """The producer child: started ready (connected), then told to go; every wait bounded."""

    def __init__(self, kafka: KafkaSettings, topic: str, args: argparse.Namespace, rate: float, label: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.ready, self.go, self.results = ctx.Event(), ctx.Event(), ctx.Queue()
        fractions = (args.late_fraction, args.duplicate_fraction, args.malformed_fraction)
        self.seconds = args.warmup + args.seconds
        self.proc = ctx.Process(
            target=produce_worker,
            name=f"producer-{label}",
            args=(
                kafka,
                topic,
                args.generator,
                args.seed,
                label,
                fractions,
                rate,
                self.seconds,
                args.ticks_per_second,
                self.ready,
                self.go,
                self.results,
            ),
            daemon=True,
        )
        self.result: dict[str, Any] | None = None

    def start(self) -> float:
        self.proc.start()
        deadline = time.monotonic() + 120
        while not self.ready.wait(0.5):
            self._check_early()
            if time.monotonic() > deadline:
                raise RuntimeError("the producer process did not get ready within 120 s")
        self.go.set()
        return time.time()

    def _check_early(self) -> None:
        if not self.proc.is_alive():
            raise RuntimeError(f"producer process exited early: {self.poll() or self.proc.exitcode}")

    def poll(self) -> dict[str, Any] | None:
        """The result once the producer finished (non-blocking)."""
        if self.result is None:
            try:
                self.result = self.results.get_nowait()
            except Exception:  # queue.Empty
                return None
            if not self.result.get("ok"):
                raise RuntimeError(f"producer failed: {self.result.get('error')}")
        return self.result

    def stop(self) -> None:
        self.go.set()
        if self.proc.is_alive():
            self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.terminate()  # our own child, by its handle
            self.proc.join(timeout=10)


# ---- the query's checkpoint, read from the local file system -------------------------------------------------


def _read_json_lines(path: Path) -> list[Any] | None:
    from lambda_pipeline.ingestion.batch_input import json_lines

    try:
        return json_lines(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@dataclass
class CheckpointBatch:
    batch_id: int
    start: dict[int, int]
    end: dict[int, int]
    committed_at: float

    @property
    def messages(self) -> int:
        return sum(self.end.values()) - sum(self.start.get(p, 0) for p in self.end)


class Checkpoint:
    """Committed micro-batches of a Kafka streaming query (one source), from its checkpoint folder."""

    def __init__(self, path: str, topic: str) -> None:
        self.dir, self.topic = Path(path.removeprefix("file:")), topic

    def _offsets(self, name: str) -> dict[int, int] | None:
        entries = _read_json_lines(self.dir / "offsets" / name)
        if not entries or len(entries) < 2 or not isinstance(entries[-1], dict):
            return None
        return {int(p): int(o) for p, o in entries[-1].get(self.topic, {}).items()}

    def committed_ids(self) -> list[int]:
        try:
            return sorted(int(n) for n in os.listdir(self.dir / "commits") if n.isdigit())
        except FileNotFoundError:
            return []

    def committed_total(self) -> int:
        """Messages committed so far: the sum of the end offsets of the newest committed micro-batch."""
        ids = self.committed_ids()
        end = self._offsets(str(ids[-1])) if ids else None
        return sum(end.values()) if end else 0

    def batches(self) -> list[CheckpointBatch]:
        out = []
        initial_entries = _read_json_lines(self.dir / "sources" / "0" / "0") or []
        initial = initial_entries[0] if initial_entries and isinstance(initial_entries[0], dict) else {}
        previous: dict[int, int] = {int(p): int(o) for p, o in initial.get(self.topic, {}).items()}
        for batch_id in self.committed_ids():
            end = self._offsets(str(batch_id))
            if end is None:
                continue
            start = self._offsets(str(batch_id - 1)) if batch_id > 0 else previous
            start = {p: o for p, o in (start or previous).items() if o >= 0}
            try:
                committed_at = (self.dir / "commits" / str(batch_id)).stat().st_mtime
            except OSError:
                continue
            out.append(CheckpointBatch(batch_id, start, end, committed_at))
        return out


# ---- analysis helpers -------------------------------------------------------------------------------------


def weighted_summary(pairs: list[tuple[float, int]], scale: float = 1.0) -> dict[str, float | int]:
    """``summary`` of values given as (value, count) pairs: the same percentiles as on the expanded list."""
    data = sorted((v * scale, n) for v, n in pairs if n > 0)
    if not data:
        return summary([])
    cumulative = list(itertools.accumulate(n for _, n in data))
    total = cumulative[-1]

    def at(index: int) -> float:
        return data[bisect.bisect_right(cumulative, index)][0]

    def q(p: float) -> float:
        pos = (total - 1) * p / 100.0
        lo, hi = math.floor(pos), math.ceil(pos)
        a, b = at(lo), at(hi)
        return a + (b - a) * (pos - lo)

    return {
        "n": total,
        "p50": q(50),
        "p95": q(95),
        "p99": q(99),
        "min": data[0][0],
        "mean": sum(v * n for v, n in data) / total,
        "max": data[-1][0],
    }


class Steps:
    """A step function given as (time, value) points sorted by time; 0 before the first point."""

    def __init__(self, points: list[tuple[float, int]]) -> None:
        self.times, self.values = [p[0] for p in points], [p[1] for p in points]

    def __call__(self, t: float) -> int:
        i = bisect.bisect_right(self.times, t)
        return self.values[i - 1] if i else 0


def topic_timestamps(spark: SparkSession, kafka: KafkaSettings, topic: str) -> DataFrame:
    """(partition, offset, ts) of every message of ``topic``: ts = its Kafka timestamp (CreateTime) in ms."""
    from pyspark.sql import functions as F

    reader = (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", kafka.bootstrap_servers)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("endingOffsets", "latest")
    )
    for key, value in kafka.resolved_options().items():
        reader = reader.option(f"kafka.{key}", value)
    return reader.load().select(
        F.col("partition").cast("int").alias("partition"),
        F.col("offset"),
        F.unix_millis("timestamp").alias("ts"),
        F.col("timestampType").alias("ts_type"),
    )


def spark_jobs(spark: SparkSession, since: float, until: float, owners: dict[str, str]) -> dict[str, Any]:
    """Spark jobs submitted in [since, until] (UI REST API), grouped by owner and name; the raw list too.

    The owner is the streaming query whose run id is the job group; jobs started from other threads (the
    ingest job's parallel writes run in a thread pool, the poller, Delta's background snapshot work) have
    no group and show as ``other``.
    """
    import urllib.request

    url = spark.sparkContext.uiWebUrl
    if not url:
        return {}
    app = spark.sparkContext.applicationId
    try:
        with urllib.request.urlopen(f"{url}/api/v1/applications/{app}/jobs", timeout=30) as response:
            jobs = json.loads(response.read())
    except OSError as exc:
        print(f"  (Spark UI REST API not reachable: {exc})", file=sys.stderr)
        return {}

    def stamp(text: str | None) -> float | None:
        if not text:
            return None
        return datetime.strptime(text.replace("GMT", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()

    raw, groups = [], {}
    for job in jobs:
        submitted, completed = stamp(job.get("submissionTime")), stamp(job.get("completionTime"))
        if submitted is None or completed is None or not since <= submitted <= until:
            continue
        owner = owners.get(str(job.get("jobGroup")), "other")
        description = str(job.get("description") or "")
        batch = next((ln.split("=", 1)[1].strip() for ln in description.splitlines() if ln.startswith("batch =")), None)
        raw.append(
            {
                "id": job.get("jobId"),
                "owner": owner,
                "batch": int(batch) if batch and batch.isdigit() else None,
                "name": str(job.get("name", "?")),
                "description": " | ".join(ln for ln in description.splitlines() if "runId =" not in ln)[:200],
                "submitted": submitted,
                "seconds": completed - submitted,
                "tasks": job.get("numTasks"),
                "stages": len(job.get("stageIds", [])),
            }
        )
        # Delta's own jobs say what they are in the description; the name is a meaningless call site there.
        kind = raw[-1]["name"]
        if "Compute snapshot" in description:
            kind = "Delta: compute snapshot (state reconstruction)"
        elif "Delta:" in description:
            kind = description[description.index("Delta:") :].splitlines()[0][:60]
        raw[-1]["kind"] = kind
        groups.setdefault((owner, kind), []).append(completed - submitted)
    summary_rows = [
        {
            "owner": owner,
            "name": name,
            "jobs": len(v),
            "total_s": sum(v),
            "p50_ms": percentile(v, 50) * 1000,
            "max_ms": max(v) * 1000,
        }
        for (owner, name), v in groups.items()
    ]
    return {
        "by_owner_and_name": sorted(summary_rows, key=lambda g: -g["total_s"]),
        "jobs": sorted(raw, key=lambda j: j["submitted"]),
    }


# ---- throughput from the producer log and the query's checkpoint ---------------------------------------------


def throughput(
    produced: dict[str, Any], batches: list[CheckpointBatch], warmup: float, base: int, drained_at: float | None
) -> dict[str, Any]:
    """Input and processed rates, lag and kept-up verdict over the measured window (see the docstring)."""
    log = produced["log"]
    sent = Steps([(t, m) for t, m, _ in log])
    events = Steps([(t, e) for t, _, e in log])
    t0, t1 = produced["start"] + warmup, log[-1][0]
    if t1 <= t0:  # no measured window (warmup >= run): use the whole run
        t0 = produced["start"]
    span = t1 - t0
    committed = Steps(sorted((b.committed_at, sum(b.end.values()) - base) for b in batches))
    input_msgs = (sent(t1) - sent(t0)) / span
    input_events = (events(t1) - events(t0)) / span
    processed = (committed(t1) - committed(t0)) / span
    grid = [t0 + i * LAG_GRID_SECONDS for i in range(int(span / LAG_GRID_SECONDS) + 1)]
    lag = [(t, sent(t) - committed(t)) for t in grid]

    def peak(lo: float, hi: float) -> float:
        values = [v for t, v in lag if t0 + lo * span <= t <= t0 + hi * span]
        return float(max(values)) if values else math.nan

    lag_mid, lag_end = peak(0.4, 0.6), peak(0.8, 1.0)
    ratio = processed / input_msgs if input_msgs else math.nan
    growing = lag_end > lag_mid + input_msgs * 1.0
    kept_up = ratio >= KEPT_UP_RATIO and not growing
    reasons = []
    if ratio < KEPT_UP_RATIO:
        reasons.append(f"processed {ratio:.1%} of input")
    if growing:
        reasons.append(f"lag grew from {lag_mid:,.0f} to {lag_end:,.0f}")
    return {
        "window": [t0, t1],
        "window_seconds": span,
        "input_msgs_per_s": input_msgs,
        "input_events_per_s": input_events,
        "processed_msgs_per_s": processed,
        "processed_ratio": ratio,
        "lag_mid_msgs": lag_mid,
        "lag_end_msgs": lag_end,
        "lag_at_last_burst_msgs": float(lag[-1][1]) if lag else math.nan,
        "lag_max_msgs": float(max((v for _, v in lag), default=math.nan)),
        "drain_seconds": (drained_at - t1) if drained_at is not None else None,
        "kept_up": kept_up,
        "not_kept_up_because": "; ".join(reasons),
        "lag_curve": [(round(t - t0, 2), v) for t, v in lag[:: max(1, round(1 / LAG_GRID_SECONDS))]],
    }


def lag_fields(end_lag: tuple[int, int], base: int) -> dict[str, Any]:
    """The lag as the broker sees it once the producer has flushed: topic latest offsets - committed."""
    latest, committed = end_lag
    return {
        "topic_messages_at_end": latest - base if latest >= 0 else None,
        "committed_at_end": committed - base,
        "lag_at_end_topic_msgs": latest - committed if latest >= 0 else None,
    }


def producer_summary(produced: dict[str, Any]) -> dict[str, Any]:
    return {
        "messages": produced["messages"],
        "events": produced["events"],
        "acked": produced["acked"],
        "seconds": produced["wall_seconds"],
        "cpu_seconds": produced["cpu_seconds"],
        "cpu_share_of_one_core": produced["cpu_seconds"] / produced["wall_seconds"] if produced["wall_seconds"] else 0,
        "late_bursts": produced["late_ticks"],
        "bursts": produced["ticks"],
    }


# ---- the two phases ----------------------------------------------------------------------------------------------


@dataclass
class Phase:
    """What a phase needs: the session, its settings (own topic) and folders."""

    spark: SparkSession
    settings: Settings
    topic: str
    workdir: Path
    args: argparse.Namespace
    rate: float
    broker: Any
    queries: list[StreamingQuery] = field(default_factory=list)

    @property
    def kafka(self) -> KafkaSettings:
        return self.settings.ingest.kafka

    @property
    def timeout(self) -> float:
        return self.args.timeout if self.args.timeout is not None else self.args.warmup + self.args.seconds + 180.0


def topic_lag(phase: Phase, checkpoint: Checkpoint) -> tuple[int, int]:
    """(topic latest offsets summed, messages the query committed); latest is -1 if the broker did not answer."""
    from lambda_pipeline.local_services.kafka_broker import offsets

    try:
        latest = sum(hi for _, hi in offsets(phase.kafka.bootstrap_servers, phase.topic, timeout=5).values())
    except Exception:  # only reporting
        latest = -1
    return latest, checkpoint.committed_total()


def live_line(phase: Phase, started: float, checkpoint: Checkpoint, base: int, extra: str = "") -> str:
    latest, done = topic_lag(phase, checkpoint)
    return (
        f"  +{time.monotonic() - started:5.0f}s: topic {latest - base:,} msgs, committed {done - base:,}, "
        f"lag {latest - done:,}{extra}"
    )


def run_noop(phase: Phase) -> dict[str, Any]:
    """The baseline: same Kafka options, decode and parse as ingest, into the noop sink, same trigger."""
    from lambda_pipeline.ingestion.job import parse_events
    from lambda_pipeline.ingestion.sources import kafka_lines
    from lambda_pipeline.pipelines.clickstream import CLICKSTREAM

    spark, settings, args = phase.spark, phase.settings, phase.args
    checkpoint_dir = phase.workdir / "checkpoint"
    parsed = parse_events(kafka_lines(spark, phase.kafka), CLICKSTREAM.source, settings.ingest.event_time)
    query = (
        parsed.writeStream.format("noop")
        .queryName(f"noop_{int(phase.rate)}")
        .option("checkpointLocation", str(checkpoint_dir))
        .trigger(processingTime=settings.ingest.trigger)
        .start()
    )
    phase.queries.append(query)
    checkpoint = Checkpoint(str(checkpoint_dir), phase.topic)
    producer = ProducerProcess(phase.kafka, phase.topic, args, phase.rate, "n")
    try:
        started_wall = producer.start()
        loop = PollLoop(phase.timeout, 0.1)
        print(f"  noop query started; producing for {args.warmup:g}s warm-up + {args.seconds:g}s measured", flush=True)
        produced, drained_at, end_lag = None, None, (-1, 0)
        for now in loop:
            check_queries([query])
            if produced is None and (produced := producer.poll()) is not None:
                end_lag = topic_lag(phase, checkpoint)
            if produced is not None and checkpoint.committed_total() >= produced["messages"]:
                drained_at = time.time()
                break
            if loop.report_due(now):
                print(live_line(phase, loop.started, checkpoint, 0), flush=True)
        if produced is None:
            raise RuntimeError(f"the producer did not finish within {phase.timeout:.0f}s")
        details = progress_details(query)
        owners = {str(query.runId): "noop"}
        until = time.time()
    finally:
        producer.stop()
        stop_queries([query])
        phase.queries.remove(query)

    batches = checkpoint.batches()
    fresh, matched, before_window = noop_freshness(phase, batches, produced["start"] + args.warmup)
    result = {
        "topic": phase.topic,
        "producer": producer_summary(produced),
        "throughput": {**throughput(produced, batches, args.warmup, 0, drained_at), **lag_fields(end_lag, 0)},
        "freshness_seconds": {"visible": weighted_summary(fresh)},
        "messages_measured": sum(n for _, n in fresh),
        "messages_warmup": before_window,
        "messages_not_committed": produced["messages"] - matched,
        "batches": len(batches),
        "stream": details,
        "timed_out": loop.timed_out,
    }
    if args.spark_jobs:
        result["spark_jobs"] = spark_jobs(spark, started_wall, until, owners)
    return result


def noop_freshness(phase: Phase, batches: list[CheckpointBatch], t0: float) -> tuple[list[tuple[float, int]], int, int]:
    """Freshness per message produced from ``t0`` on, as (seconds, count); messages matched; those before ``t0``.

    A message's freshness: the commit time of the micro-batch holding its offset - its Kafka timestamp.
    """
    from pyspark.sql import functions as F

    rows = [
        (b.batch_id, p, b.start.get(p, 0), end, k)
        for b in batches
        for p, end in b.end.items()
        if end > b.start.get(p, 0)
        for k in range(b.start.get(p, 0) // BUCKET, (end - 1) // BUCKET + 1)
    ]
    fresh: list[tuple[float, int]] = []
    matched = before_window = 0
    if not rows:
        return fresh, matched, before_window
    ranges = phase.spark.createDataFrame(rows, "batch long, partition int, lo long, hi long, bucket long")
    messages = topic_timestamps(phase.spark, phase.kafka, phase.topic).withColumn(
        "bucket", F.floor(F.col("offset") / BUCKET).cast("long")
    )
    joined = messages.join(F.broadcast(ranges), ["partition", "bucket"]).where(
        (F.col("offset") >= F.col("lo")) & (F.col("offset") < F.col("hi"))
    )
    committed_at = {b.batch_id: b.committed_at for b in batches}
    for r in joined.groupBy("batch", "ts").count().collect():
        matched += r["count"]
        if r["ts"] / 1000.0 < t0:
            before_window += r["count"]
        else:
            fresh.append((committed_at[r["batch"]] - r["ts"] / 1000.0, r["count"]))
    return fresh, matched, before_window


def seed_coverage(phase: Phase, loc: Locations) -> tuple[int, int]:
    """One second of the rate, ingested once, and one published batch: (coverage master version, seed messages)."""
    from lambda_pipeline.batch_layer.job import run_batch
    from lambda_pipeline.ingestion.job import start_ingest
    from lambda_pipeline.local_services.kafka_producer import KafkaEventProducer
    from lambda_pipeline.pipelines.clickstream import CLICKSTREAM

    args = phase.args
    t0 = time.perf_counter()
    seeder = KafkaEventProducer(phase.kafka, phase.topic)
    fractions = (args.late_fraction, args.duplicate_fraction, args.malformed_fraction)
    values, _ = make_generator(args.generator, args.seed, "s", fractions).batch(max(1, round(phase.rate)))
    seeder.send(values)
    seeder.close()
    t1 = time.perf_counter()
    start_ingest(phase.spark, CLICKSTREAM, phase.settings, loc, once=True).awaitTermination(phase.timeout)
    t2 = time.perf_counter()
    coverage, _ = run_batch(phase.spark, CLICKSTREAM, loc)
    print(
        f"  seed of {len(values):,} messages produced in {t1 - t0:.1f}s, ingested once in {t2 - t1:.1f}s, batch "
        f"published (coverage = master version {coverage.master_version}) in {time.perf_counter() - t2:.1f}s",
        flush=True,
    )
    return coverage.master_version, len(values)


def run_pipeline(phase: Phase) -> dict[str, Any]:
    """The real jobs: seed + batch first, then ingest and speed streaming while the producer runs."""
    from lambda_pipeline.core.tables import Locations, latest_version
    from lambda_pipeline.ingestion.job import start_ingest
    from lambda_pipeline.pipelines.clickstream import CLICKSTREAM, PAGE_ACTIVITY
    from lambda_pipeline.speed_layer.job import start_speed

    spark, settings, args = phase.spark, phase.settings, phase.args
    loc = Locations.create(settings, phase.workdir)
    loc.ensure_local_dirs()
    covered, seed_messages = seed_coverage(phase, loc)

    speed_table = loc.speed_partials(PAGE_ACTIVITY.name)
    phase.queries.append(start_speed(spark, CLICKSTREAM, settings, loc))
    phase.queries.append(start_ingest(spark, CLICKSTREAM, settings, loc))
    speed = SpeedVisibility(spark, speed_table, covered, log_only=True)
    master_log = DeltaLog(loc.master, latest_version(spark, loc.master))
    checkpoint = Checkpoint(loc.checkpoint("ingest"), phase.topic)
    producer = ProducerProcess(phase.kafka, phase.topic, args, phase.rate, "p")
    try:
        started_wall = producer.start()
        loop = PollLoop(phase.timeout, args.poll_ms / 1000.0)
        print(
            f"  ingest and speed started; producing for {args.warmup:g}s warm-up + {args.seconds:g}s measured",
            flush=True,
        )
        produced, drained_at, visible_at, end_lag = None, None, None, (-1, 0)
        for now in loop:
            check_queries(phase.queries)
            speed.poll()
            master_log.poll()
            if produced is None and (produced := producer.poll()) is not None:
                end_lag = topic_lag(phase, checkpoint)
            if produced is not None:
                if drained_at is None and checkpoint.committed_total() >= seed_messages + produced["messages"]:
                    drained_at = time.time()
                if drained_at is not None:
                    master_log.poll()
                    newest = master_log.version
                    if speed.newest_tag >= newest or all(t in speed.seen for t in range(covered + 1, newest + 1)):
                        visible_at = time.time()
                        break
            if loop.report_due(now):
                extra = f", master v{master_log.version}, newest visible tag {speed.newest_tag}"
                print(live_line(phase, loop.started, checkpoint, seed_messages, extra), flush=True)
        if produced is None:
            raise RuntimeError(f"the producer did not finish within {phase.timeout:.0f}s")
        streams = {q.name: progress_details(q) for q in phase.queries}
        owners = {str(q.runId): q.name for q in phase.queries}
        until = time.time()
    finally:
        producer.stop()
        stop_queries(phase.queries)
        phase.queries.clear()

    events = event_latencies(phase, loc, speed, produced["start"] + args.warmup)
    stats = {k: weighted_summary(v) for k, v in events.pop("samples").items()}
    rows_by_tag = events.pop("rows_by_tag")
    batches = checkpoint.batches()
    flow = {
        **throughput(produced, batches, args.warmup, seed_messages, drained_at),
        **lag_fields(end_lag, seed_messages),
    }
    w0, w1 = flow["window"]
    commit_times = {v.version: v.committed_at for v in master_log.versions}
    rows_in_window = sum(n for tag, n in rows_by_tag.items() if w0 < (commit_times.get(tag) or math.inf) <= w1)
    flow["master_rows_per_s"] = rows_in_window / flow["window_seconds"]

    result = {
        "topic": phase.topic,
        "coverage_master_version": covered,
        "seed_messages": seed_messages,
        "producer": producer_summary(produced),
        "throughput": flow,
        "freshness_seconds": stats,
        "events_measured": stats["visible"]["n"],
        **events,
        "ingest_commits": len([t for t in rows_by_tag if t > covered]),
        "speed_versions": len(speed.log.versions),
        "check": serving_check(phase, loc, seed_messages + produced["messages"]),
        "streams": streams,
        "poller": speed.stats("spark_queries"),
        "timed_out": loop.timed_out,
        "visible_after_last_burst_seconds": (visible_at - flow["window"][1]) if visible_at else None,
    }
    if args.spark_jobs:
        result["spark_jobs"] = spark_jobs(spark, started_wall, until, owners)
    return result


def event_latencies(phase: Phase, loc: Locations, speed: SpeedVisibility, t_measure: float) -> dict[str, Any]:
    """``latencies`` of every master event above the coverage produced from ``t_measure`` on, as (value, count).

    The produce time is the event's Kafka timestamp, joined to master on (partition, offset) of its
    ``source_file``. Also the event counts: before ``t_measure``, never visible, without a timestamp; rows per tag.
    """
    from pyspark.sql import functions as F

    master = (
        phase.spark.read.format("delta")
        .load(loc.master)
        .where(F.col("ingest_tag") > speed.covered)
        .select(
            "ingest_tag",
            F.element_at(F.split("source_file", "/"), -2).cast("int").alias("partition"),
            F.element_at(F.split("source_file", "/"), -1).cast("long").alias("offset"),
        )
    )
    joined = master.join(topic_timestamps(phase.spark, phase.kafka, phase.topic), ["partition", "offset"], "left")
    master_commit: dict[int, float | None] = {}
    samples: dict[str, list[tuple[float, int]]] = {k: [] for k in LATENCIES}
    rows_by_tag: dict[int, int] = {}
    unmatched = warmup_events = not_visible = 0
    for r in joined.groupBy("ingest_tag", "ts").count().collect():
        tag, n = int(r["ingest_tag"]), int(r["count"])
        rows_by_tag[tag] = rows_by_tag.get(tag, 0) + n
        if r["ts"] is None:
            unmatched += n
            continue
        ts = r["ts"] / 1000.0
        if ts < t_measure:
            warmup_events += n
            continue
        if tag not in master_commit:
            master_commit[tag] = commit_time(loc.master, tag)
        seen = speed.seen.get(tag)
        if seen is None:
            not_visible += n
        for key, value in latencies(ts, seen, master_commit[tag]).items():
            if value is not None:
                samples[key].append((value, n))
    return {
        "samples": samples,
        "rows_by_tag": rows_by_tag,
        "events_warmup": warmup_events,
        "events_not_visible": not_visible,
        "master_rows_without_kafka_timestamp": unmatched,
    }


def serving_check(phase: Phase, loc: Locations, topic_messages: int) -> dict[str, Any]:
    """Topic = master + quarantine, and the serving view holds every master event once (batch + speed)."""
    from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
    from lambda_pipeline.serving_layer.catalog import ServingLayer

    spark = phase.spark
    quarantined = spark.read.format("delta").load(loc.quarantine).count()
    served = (
        ServingLayer(spark, CLICKSTREAM, loc)
        .query("SELECT coalesce(sum(events), 0) AS n FROM serving.page_activity")
        .first()["n"]
    )
    master_rows = spark.read.format("delta").load(loc.master).count()
    return {
        "topic_messages": topic_messages,
        "master_rows": master_rows,
        "quarantine_rows": quarantined,
        "reconciles": master_rows + quarantined == topic_messages,
        "serving_page_activity_events": int(served),
        "serving_equals_master": int(served) == master_rows,
    }


# ---- printing ------------------------------------------------------------------------------------------------


# (label, ratio key, path in a phase's result, digits); "batch" is the noop stream, or the pipeline's ingest stream.
RATE_ROWS: tuple[tuple[str, str, tuple[str, ...], int], ...] = (
    *(
        (f"freshness {q}, s (produce -> visible)", f"visible_{q}", ("freshness_seconds", "visible", q), 2)
        for q in ("p50", "p95", "p99", "max")
    ),
    ("input, msgs/s", "input", ("throughput", "input_msgs_per_s"), 0),
    ("processed (committed), msgs/s", "processed", ("throughput", "processed_msgs_per_s"), 0),
    ("lag mid / end (peak), msgs", "lag_mid", ("throughput", "lag_mid_msgs"), 0),
    ("", "lag_end", ("throughput", "lag_end_msgs"), 0),
    ("lag when the producer ended (topic)", "lag_end_topic", ("throughput", "lag_at_end_topic_msgs"), 0),
    ("drain after last burst, s", "drain", ("throughput", "drain_seconds"), 2),
    *(
        (f"micro-batch {q}, ms (noop vs ingest)", f"batch_ms_{q}", ("batch", "trigger_ms", q), 0)
        for q in ("p50", "p95", "max")
    ),
    ("rows per micro-batch, median", "rows_per_batch", ("batch", "input_rows_median"), 0),
    ("producer CPU, share of one core", "producer_cpu", ("producer", "cpu_share_of_one_core"), 2),
)


def _get(node: Any, path: tuple[str, ...]) -> Any:
    for p in path:
        node = node.get(p) if isinstance(node, dict) else None
    return node


def _stream_line(name: str, st: dict[str, Any]) -> str:
    phases = ", ".join(
        f"{k} {v:.0f}" for k, v in st["duration_ms_p50_by_phase"].items() if k != "triggerExecution" and v >= 1
    )
    return (
        f"  {name:<18} {st['batches_with_data']:4d} batches, trigger p50 {st['trigger_ms']['p50']:.0f} ms, "
        f"p95 {st['trigger_ms']['p95']:.0f} ms; p50 by phase (ms): {phases}"
    )


def print_rate(rate: float, noop: dict[str, Any] | None, pipe: dict[str, Any] | None) -> dict[str, Any]:
    """The side-by-side table of one rate; returns the ratios."""
    print()
    print(f"=== {rate:,.0f} events/s ===")
    header = f"{'':<40} {'noop':>11} {'pipeline':>11} {'ratio':>8}"
    print(header)
    print("-" * len(header))
    ingest = next((v for k, v in ((pipe or {}).get("streams") or {}).items() if k.startswith("ingest")), None)
    sides = ({**(noop or {}), "batch": _get(noop, ("stream",))}, {**(pipe or {}), "batch": ingest})
    ratios: dict[str, Any] = {}
    for label, key, path, digits in RATE_ROWS:
        a, b = (_get(side, path) for side in sides)
        ratio = b / a if isinstance(a, int | float) and isinstance(b, int | float) and a and not math.isnan(a) else None
        ratios[key] = ratio
        print(f"{label:<40} {fmt(a, 11, digits)} {fmt(b, 11, digits)} {fmt(ratio, 8)}")
    for name, res in (("noop", noop), ("pipeline", pipe)):
        if res is None:
            continue
        flow = res["throughput"]
        verdict = "kept up" if flow["kept_up"] else f"DID NOT keep up ({flow['not_kept_up_because']})"
        print(
            f"{name}: {verdict}; {flow['input_events_per_s']:,.0f} valid events/s sent over "
            f"{flow['window_seconds']:.1f}s" + (", TIMED OUT" if res.get("timed_out") else "")
        )
    if pipe is not None:
        print()
        print(
            f"pipeline freshness over {pipe['events_measured']:,} events ({pipe['events_warmup']:,} warm-up, "
            f"{pipe['events_not_visible']:,} never visible), seconds:"
        )
        print_latencies(pipe["freshness_seconds"], "Kafka timestamp", "timestamp")
        flow = pipe["throughput"]
        print(
            f"master rows committed: {flow['master_rows_per_s']:,.0f}/s; {pipe['ingest_commits']} ingest commits, "
            f"{pipe['speed_versions']} speed versions"
        )
        c = pipe["check"]
        print(
            f"check: topic {c['topic_messages']:,} = master {c['master_rows']:,} + quarantine "
            f"{c['quarantine_rows']:,}: {c['reconciles']}; serving.page_activity events "
            f"{c['serving_page_activity_events']:,} = master rows: {c['serving_equals_master']}"
        )
        for name, st in pipe["streams"].items():
            print(_stream_line(name, st))
    if noop is not None:
        print(_stream_line("noop", noop["stream"]))
    for name, res in (("noop", noop), ("pipeline", pipe)):
        jobs = ((res or {}).get("spark_jobs") or {}).get("by_owner_and_name")
        if jobs:
            print(f"Spark jobs during the {name} phase, by total time (owner: the query whose job group it is):")
            for g in jobs[:15]:
                print(
                    f"  {g['owner'][:18]:<18} {g['jobs']:5d} x {g['name'][:60]:<60} total {g['total_s']:7.1f}s, "
                    f"p50 {g['p50_ms']:6.0f} ms"
                )
    return ratios


def print_max_table(runs: list[dict[str, Any]]) -> None:
    print()
    print("Highest sustainable rate (pipeline, then the noop baseline in brackets); lag in messages:")
    header = (
        f"{'target/s':>9} {'input msgs/s':>13} {'processed/s':>12} {'master rows/s':>14} {'lag mid':>9} "
        f"{'lag end':>9} {'lag @end':>9} {'drain s':>8} {'fresh p50':>10} {'fresh p99':>10}  kept up"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        for label, res in ((f"{run['rate']:,.0f}", run.get("pipeline")), ("[noop]", run.get("noop"))):
            if res is None:
                continue
            f, fresh = res["throughput"], res["freshness_seconds"]["visible"]
            rows = fmt(f.get("master_rows_per_s"), 14, 0) if "master_rows_per_s" in f else f"{'':>14}"
            print(
                f"{label:>9} {f['input_msgs_per_s']:>13,.0f} {f['processed_msgs_per_s']:>12,.0f} {rows} "
                f"{fmt(f['lag_mid_msgs'], 9, 0)} {fmt(f['lag_end_msgs'], 9, 0)} "
                f"{fmt(f['lag_at_end_topic_msgs'], 9, 0)} {fmt(f['drain_seconds'], 8, 1)} "
                f"{fmt(fresh['p50'], 10)} {fmt(fresh['p99'], 10)}  {'yes' if f['kept_up'] else 'NO'}"
            )
    print(
        "lag mid / lag end: peak of (sent - committed) over the middle / last 20 % of the window; lag @end: topic "
        "latest offsets - committed when the producer finished"
    )


# ---- main --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from lambda_pipeline.core.config import load_settings
    from lambda_pipeline.core.session import KAFKA_COORDINATE, get_spark
    from lambda_pipeline.local_services.kafka_broker import KafkaBroker, free_port

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
            extra_conf={"spark.sql.streaming.numRecentProgressUpdates": "100000", "spark.ui.retainedJobs": "100000"},
            packages=(KAFKA_COORDINATE,),
        )
        k = base_settings.ingest.kafka
        print(
            f"settings: ingest.trigger {base_settings.ingest.trigger!r}, "
            f"speed.trigger {base_settings.speed.trigger!r}, "
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
